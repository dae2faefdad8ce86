//! `edict reconstruct`: invert and denoise with the same prompt, and report how exact the round trip is.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::Result;
use clap::Args;
use edict_pipeline::image_io::{self};
use edict_pipeline::pipeline::Method;

use super::{PreviewArgs, ImageArgs, ModelArgs, SampleArgs, check_output, encode_image, open, read_image, save_png, write};

#[derive(Args)]
pub struct ReconstructArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    #[command(flatten)]
    pub preview: PreviewArgs,
    #[command(flatten)]
    pub sample: SampleArgs,
    #[command(flatten)]
    pub image: ImageArgs,
    #[arg(long)]
    pub prompt: String,
    #[arg(long)]
    pub out: PathBuf,
    /// edict or ddim (the inexact baseline).
    #[arg(long, default_value = "edict")]
    pub method: Method,
    /// Write a JSON report (latent_rel_err, mse, psnr, ssim, unet_evals, seconds).
    #[arg(long)]
    pub report: Option<PathBuf>,
    #[arg(long)]
    pub force: bool,
}

pub fn reconstruct(a: ReconstructArgs) -> Result<()> {
    check_output(&a.out, a.force)?;
    if let Some(p) = &a.report {
        check_output(p, a.force)?;
    }
    let t = Instant::now();
    let photo = read_image(&a.image)?;
    let mut s = open(&a.model)?;
    let (latent, input) = encode_image(&mut s, photo, a.image.seed)?;
    let input = &input;
    let method = a.method;
    let mut obs = s.bars.observer().preview_to(a.preview.preview.as_deref());
    let rec = pollster::block_on(s.editor.reconstruct(&latent, &a.prompt, &a.sample.settings(), method, &mut obs))?;
    let rgb = save_png(&mut s, &rec.latent, &a.out)?;
    let q = edict_pipeline::metrics::compare(&image_io::from_rgb(input), &rgb)?;
    let seconds = t.elapsed().as_secs_f64();
    if let Some(p) = &a.report {
        let report = serde_json::json!({
            "method": method.to_string(),
            "latent_rel_err": rec.latent_rel_err,
            "mse": q.mse, "psnr": q.psnr, "ssim": q.ssim,
            "unet_evals": rec.unet_evals,
            "seconds": seconds,
        });
        write(p, serde_json::to_string_pretty(&report)?.as_bytes())?;
    }
    s.bars.note(&format!(
        "latent round trip {:.2e}, PSNR {:.2} dB, SSIM {:.4}; wrote {} in {seconds:.1}s",
        rec.latent_rel_err,
        q.psnr,
        q.ssim,
        a.out.display()
    ));
    Ok(())
}

