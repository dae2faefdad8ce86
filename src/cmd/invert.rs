//! `edict invert`: invert a photo (EDICT, BDIA, O-BELM or DDIM) and save the inversion.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::Result;
use clap::Args;
use edict_pipeline::io::latents;

use super::{PhotoArgs, check_output, write};

#[derive(Args)]
pub struct InvertArgs {
    #[command(flatten)]
    pub photo: PhotoArgs,
    #[arg(long)]
    pub save_latents: PathBuf,
    #[arg(long)]
    pub force: bool,
}

pub fn invert(a: InvertArgs) -> Result<()> {
    check_output(&a.save_latents, a.force)?;
    let t = Instant::now();
    let (mut s, photo) = a.photo.open()?;
    let mut obs = s.bars.observer().preview_to(a.photo.preview.preview.as_deref());
    let inv = pollster::block_on(s.editor.invert(&photo.latent, &a.photo.prompt, &a.photo.sample, &mut obs))?;
    write(&a.save_latents, &latents::to_bytes(&inv, &s.origin())?)?;
    s.bars.note(&format!("wrote {} in {:.1}s", a.save_latents.display(), t.elapsed().as_secs_f64()));
    Ok(())
}

