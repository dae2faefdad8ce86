//! `edict reconstruct`: invert and denoise with the same prompt, and report how exact the round trip is.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::Result;
use clap::Args;
use edict_pipeline::ops;

use super::{PhotoArgs, check_output, write, write_png};

#[derive(Args)]
pub struct ReconstructArgs {
    #[command(flatten)]
    pub photo: PhotoArgs,
    #[arg(long)]
    pub out: PathBuf,
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
    let (mut s, photo) = a.photo.open()?;
    let p = &a.photo;
    let mut obs = s.bars.observer().preview_to(p.preview.preview.as_deref());
    let (rgb, q) = pollster::block_on(ops::reconstruct(&mut s.editor, &photo, &p.prompt, &p.sample, &mut obs))?;
    write_png(&a.out, &rgb)?;
    let seconds = t.elapsed().as_secs_f64();
    if let Some(p) = &a.report {
        let mut report = serde_json::to_value(&q)?;
        report["seconds"] = seconds.into();
        write(p, serde_json::to_string_pretty(&report)?.as_bytes())?;
    }
    s.bars.note(&format!(
        "latent round trip {:.2e}, PSNR {:.2} dB, SSIM {:.4}; wrote {} in {seconds:.1}s",
        q.latent_rel_err,
        q.psnr,
        q.ssim,
        a.out.display()
    ));
    Ok(())
}

