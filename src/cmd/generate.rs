//! `edict generate`: an image from a prompt (DDIM from seeded noise).

use std::path::PathBuf;
use std::time::Instant;

use anyhow::Result;
use clap::Args;
use edict_pipeline::io::image_io::Size;
use edict_pipeline::ops;
use edict_pipeline::settings::Settings;

use super::{ModelArgs, PreviewArgs, check_output, open, write_png};

#[derive(Args)]
pub struct GenerateArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    #[command(flatten)]
    pub preview: PreviewArgs,
    #[arg(long)]
    pub prompt: String,
    #[arg(long)]
    pub out: PathBuf,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    #[arg(long, default_value_t = 50)]
    pub steps: usize,
    #[arg(long, default_value_t = 7.5)]
    pub guidance: f64,
    #[arg(long, default_value = "")]
    pub negative: String,
    /// Default: the model's native size (512 for SD 1.x and 2.x-base, 768 for SD 2.x).
    #[arg(long)]
    pub width: Option<u32>,
    #[arg(long)]
    pub height: Option<u32>,
    #[arg(long)]
    pub force: bool,
}

pub fn generate(a: GenerateArgs) -> Result<()> {
    check_output(&a.out, a.force)?;
    // typed sizes are checked before the model loads
    Size::exact(a.width.unwrap_or(512), a.height.unwrap_or(512))?;
    let t = Instant::now();
    let mut s = open(&a.model)?;
    a.preview.load_decoder(&mut s)?;
    let settings = Settings {
        steps: a.steps,
        guidance: a.guidance,
        negative: a.negative.clone(),
        ..Settings::default()
    };
    let mut obs = s.bars.observer().preview_to(a.preview.preview.as_deref());
    let rgb = pollster::block_on(ops::generate(&mut s.editor, &a.prompt, (a.width, a.height), a.seed, &settings, &mut obs))?;
    write_png(&a.out, &rgb)?;
    s.bars.note(&format!("wrote {} in {:.1}s", a.out.display(), t.elapsed().as_secs_f64()));
    Ok(())
}
