//! `edict edit`: invert a photo under a source prompt and denoise it under one or more target
//! prompts (optionally with prompt-to-prompt control and word weights), or edit a saved inversion.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result, bail};
use clap::Args;
use clap::Command;
use edict_pipeline::editor::Inversion;
use edict_pipeline::io::latents;
use edict_pipeline::ops;
use edict_pipeline::prompt_edit::EditControls;
use edict_pipeline::settings::Settings;

use super::{ImageArgs, ModelArgs, PreviewArgs, check_output, check_settings, encode_image, open, read_image, write, write_png};

#[derive(Args)]
pub struct EditArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    #[command(flatten)]
    pub sample: Settings,
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
    #[command(flatten)]
    pub controls: EditControls,
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
    let spec = a.controls.spec(a.target.clone())?;
    check_settings(&a.sample)?;
    let t = Instant::now();
    let photo = if a.from_latents.is_none() { Some(read_image(&a.image)?) } else { None };
    let mut s = open(&a.model)?;
    s.editor.check_edit(&spec)?;
    a.preview.load_decoder(&mut s)?;
    let preview = a.preview.preview.as_deref();
    let inv: Inversion = match &a.from_latents {
        Some(path) => {
            let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
            let shown = path.display().to_string();
            let inv = ops::read_latents(&s.editor, &bytes, &shown, &s.model_name)?;
            check_latents_args(&a, typed, &inv, s.editor.model.configs.vae.downscale(), &shown)?;
            inv
        }
        None => {
            let photo = encode_image(&mut s, photo.context("--image is required")?, a.image.seed)?;
            let source = a.source.as_deref().unwrap_or_default();
            let mut obs = s.bars.observer().preview_to(preview);
            let inv = pollster::block_on(s.editor.invert(&photo.latent, source, &a.sample, &mut obs))?;
            if let Some(p) = &a.save_latents {
                write(p, &latents::to_bytes(&inv, &s.origin())?)?;
            }
            inv
        }
    };
    let mut obs = s.bars.observer().preview_to(preview);
    let images = pollster::block_on(ops::edit(&mut s.editor, &inv, &spec, &mut obs))?;
    for (rgb, out) in images.iter().zip(&outs) {
        write_png(out, rgb)?;
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
    // each setting typed on the command line must equal the saved one
    let saved = inv.settings.to_strings();
    let given = a.sample.to_strings();
    let args = Settings::augment_args(Command::new("edit"));
    for ((id, saved), (_, given)) in saved.iter().zip(&given) {
        let Some(arg) = args.get_arguments().find(|arg| arg.get_id() == id.as_str()) else { continue };
        if typed.contains(id) && saved != given {
            // a flag that turns a setting off shows the flag's value
            let off = matches!(arg.get_action(), clap::ArgAction::SetFalse);
            let shown = |v: &String| if off { (v == "false").to_string() } else { v.clone() };
            let flag = arg.get_long().unwrap_or(id);
            bail!(
                "--{flag} {} differs from the {} {path} was inverted with; a saved pair is denoised with its own settings (leave --{flag} out)",
                shown(given),
                shown(saved)
            );
        }
    }
    Ok(())
}

