//! `edict edit`: invert a photo under a source prompt and denoise it under one or more target
//! prompts (optionally with prompt-to-prompt control and word weights), or edit a saved inversion.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result, bail};
use clap::Args;
use edict_pipeline::latents;
use edict_pipeline::pipeline::{Inversion, Latent, Method};
use edict_pipeline::prompt_edit::{EditSpec, P2p, Reweight, Window};

use super::{ImageArgs, ModelArgs, PreviewArgs, SampleArgs, check_output, encode_image, open, read_image, save_png, write};

#[derive(Args)]
pub struct EditArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    #[command(flatten)]
    pub sample: SampleArgs,
    #[command(flatten)]
    pub image: ImageArgs,
    #[command(flatten)]
    pub preview: PreviewArgs,
    /// Prompt describing the photo as it is.
    #[arg(long, required_unless_present = "from_latents")]
    pub source: Option<String>,
    /// Prompt describing the edited photo; repeat for several edits of one inversion, denoised
    /// together (one UNet call per step for all of them).
    #[arg(long, required = true)]
    pub target: Vec<String>,
    /// The edited image: a .png file for one target; for several, a pattern with {i} (1, 2, … in
    /// the order of --target) or an existing folder (target-1.png, target-2.png, …).
    #[arg(long)]
    pub out: PathBuf,
    /// Prompt-to-prompt: the target pass takes the source pass's attention (aligned words in
    /// cross-attention, all of self-attention) during the windows below. 3 UNet rows per call instead of 2.
    #[arg(long)]
    pub p2p: bool,
    /// Window START:END of t/1000 in which cross-attention is injected.
    #[arg(long, requires = "p2p", default_value = "0:1")]
    pub p2p_tokens: Window,
    /// Window START:END of t/1000 in which self-attention is injected.
    #[arg(long, requires = "p2p", default_value = "0:1")]
    pub p2p_self: Window,
    /// WORD=W: multiply the target's cross-attention on WORD's tokens by W (repeatable).
    #[arg(long)]
    pub reweight: Vec<Reweight>,
    /// Also save the inverted pair here.
    #[arg(long)]
    pub save_latents: Option<PathBuf>,
    /// Skip inversion: edit a pair saved by `invert` or `edit --save-latents`.
    #[arg(long, conflicts_with_all = ["source", "save_latents"])]
    pub from_latents: Option<PathBuf>,
    /// Overwrite existing output files.
    #[arg(long)]
    pub force: bool,
}

pub fn edit(a: EditArgs, typed: &BTreeSet<String>) -> Result<()> {
    let outs = output_paths(&a.out, a.target.len())?;
    for out in &outs {
        check_output(out, a.force)?;
    }
    if let Some(p) = &a.save_latents {
        check_output(p, a.force)?;
    }
    let spec = EditSpec {
        targets: a.target.clone(),
        p2p: a.p2p.then_some(P2p { tokens: a.p2p_tokens, self_attn: a.p2p_self }),
        reweight: a.reweight.clone(),
    };
    spec.validate()?;
    let t = Instant::now();
    let photo = if a.from_latents.is_none() { Some(read_image(&a.image)?) } else { None };
    let mut s = open(&a.model)?;
    s.editor.check_edit(&spec)?;
    let preview = a.preview.preview.as_deref();
    let inv: Inversion = match &a.from_latents {
        Some(path) => {
            let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
            let shown = path.display().to_string();
            let (inv, origin) = latents::from_bytes(&bytes, &shown)?;
            latents::check_fits(&inv, &origin, &s.editor.model, &s.model_name, &shown)?;
            let down = s.editor.model.configs.vae.downscale();
            check_latents_args(&a, typed, &inv, down, &shown)?;
            s.check_memory(inv.latent.shape[3] * down, inv.latent.shape[2] * down)?;
            inv
        }
        None => {
            let photo = photo.context("--image is required")?;
            let (latent, _) = encode_image(&mut s, photo, a.image.seed)?;
            let source = a.source.as_deref().unwrap_or_default();
            let mut obs = s.bars.observer().preview_to(preview);
            let inv = pollster::block_on(s.editor.invert(&latent, source, &a.sample.settings(), Method::Edict, &mut obs))?;
            if let Some(p) = &a.save_latents {
                write(p, &latents::to_bytes(&inv, &s.origin())?)?;
            }
            inv
        }
    };
    let mut obs = s.bars.observer().preview_to(preview);
    let pairs = pollster::block_on(s.editor.edit(&inv, &spec, "edit", &mut obs))?;
    for (pair, out) in pairs.iter().zip(&outs) {
        let rgb = save_png(&mut s, &Latent { values: pair.x_f64(), shape: inv.latent.shape }, out)?;
        s.bars.note(&format!("wrote {} ({}×{})", out.display(), rgb.width, rgb.height));
    }
    s.bars.note(&format!("done in {:.1}s, {} UNet calls", t.elapsed().as_secs_f64(), s.editor.unet_calls));
    Ok(())
}

/// Where each of `n` targets' images goes: `out` itself for one target (unless it is a folder),
/// `{i}` replaced by 1…n in a pattern, or `target-{i}.png` inside an existing folder.
pub fn output_paths(out: &Path, n: usize) -> Result<Vec<PathBuf>> {
    let text = out.to_string_lossy();
    if text.contains("{i}") {
        return Ok((1..=n).map(|i| PathBuf::from(text.replace("{i}", &i.to_string()))).collect());
    }
    if out.is_dir() {
        return Ok((1..=n).map(|i| out.join(format!("target-{i}.png"))).collect());
    }
    if n > 1 {
        bail!(
            "--out {} names one file, but there are {n} targets; give a pattern with {{i}} (e.g. edit-{{i}}.png) or an existing folder",
            out.display()
        );
    }
    Ok(vec![out.to_path_buf()])
}

/// Arguments typed next to `--from-latents` must agree with the saved inversion, which fixes
/// the photo, its size and the sampler settings; a silently ignored choice would mislead.
pub fn check_latents_args(a: &EditArgs, typed: &BTreeSet<String>, inv: &Inversion, down: usize, path: &str) -> Result<()> {
    for id in ["image", "seed"] {
        if typed.contains(id) {
            bail!("--{id} does not apply with --from-latents: {path} already holds the inverted photo");
        }
    }
    let [_, _, h, w] = inv.latent.shape;
    let (fw, fh) = (w * down, h * down);
    if let (Some(ww), Some(hh)) = (a.image.width, a.image.height)
        && (ww as usize, hh as usize) != (fw, fh)
    {
        bail!(
            "{path} holds a {fw}×{fh} inversion, but --width {ww} --height {hh} asks for another size; \
             a saved pair is edited at the size it was inverted at"
        );
    }
    let (f, g) = (&inv.settings, a.sample.settings());
    let pairs = [
        ("steps", f.steps.to_string(), g.steps.to_string()),
        ("strength", f.strength.to_string(), g.strength.to_string()),
        ("mix", f.mix.to_string(), g.mix.to_string()),
        ("guidance", f.guidance.to_string(), g.guidance.to_string()),
        ("negative", format!("{:?}", f.negative), format!("{:?}", g.negative)),
        ("no_leapfrog", (!f.leapfrog).to_string(), (!g.leapfrog).to_string()),
        ("steps_offset", f.steps_offset.to_string(), g.steps_offset.to_string()),
    ];
    for (id, saved, given) in pairs {
        if typed.contains(id) && saved != given {
            let flag = id.replace('_', "-");
            bail!("--{flag} {given} differs from the {saved} {path} was inverted with; a saved pair is denoised with its own settings (leave --{flag} out)");
        }
    }
    Ok(())
}

