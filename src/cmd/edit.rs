//! `edict edit`: invert a photo under a source prompt and denoise it under a target prompt, or edit a saved inversion.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use clap::Args;
use edict_pipeline::latents;
use edict_pipeline::pipeline::{Inversion, Latent, Method};

use super::{ImageArgs, ModelArgs, SampleArgs, check_output, encode_image, open, read_image, save_png, warn_all, write};

#[derive(Args)]
pub struct EditArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    #[command(flatten)]
    pub sample: SampleArgs,
    #[command(flatten)]
    pub image: ImageArgs,
    /// Prompt describing the photo as it is.
    #[arg(long, required_unless_present = "from_latents")]
    pub source: Option<String>,
    /// Prompt describing the edited photo.
    #[arg(long)]
    pub target: String,
    #[arg(long)]
    pub out: PathBuf,
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
    check_output(&a.out, a.force)?;
    if let Some(p) = &a.save_latents {
        check_output(p, a.force)?;
    }
    let t = Instant::now();
    let photo = if a.from_latents.is_none() { Some(read_image(&a.image)?) } else { None };
    let mut s = open(&a.model)?;
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
            let mut obs = s.bars.observer();
            let (inv, w) = pollster::block_on(s.editor.invert(&latent, source, &a.sample.settings(), Method::Edict, &mut obs))?;
            drop(obs);
            warn_all(&s, &w);
            if let Some(p) = &a.save_latents {
                write(p, &latents::to_bytes(&inv, &s.origin())?)?;
            }
            inv
        }
    };
    let mut obs = s.bars.observer();
    let (pair, w) = pollster::block_on(s.editor.denoise(&inv, &a.target, "edit", &mut obs))?;
    drop(obs);
    warn_all(&s, &w);
    let rgb = save_png(&mut s, &Latent { values: pair.x_f64(), shape: inv.latent.shape }, &a.out)?;
    s.bars.note(&format!(
        "wrote {} ({}×{}) in {:.1}s, {} UNet calls",
        a.out.display(),
        rgb.width,
        rgb.height,
        t.elapsed().as_secs_f64(),
        s.editor.unet_calls
    ));
    Ok(())
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

