//! `edict generate`: an image from a prompt (DDIM from seeded noise).

use std::path::PathBuf;
use std::time::Instant;

use anyhow::Result;
use clap::Args;
use edict_pipeline::image_io::Size;
use edict_pipeline::pipeline::Settings;

use super::{PreviewArgs, ModelArgs, check_output, open, save_png};

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
    let native = s.editor.model.configs.default_long_side();
    let (width, height) = (a.width.unwrap_or(native), a.height.unwrap_or(native));
    Size::exact(width, height)?;
    s.check_memory(width as usize, height as usize)?;
    let settings = Settings {
        steps: a.steps,
        strength: 1.0,
        guidance: a.guidance,
        negative: a.negative.clone(),
        ..Settings::default()
    };
    let mut obs = s.bars.observer().preview_to(a.preview.preview.as_deref());
    let latent = pollster::block_on(s.editor.generate(&a.prompt, width as usize, height as usize, a.seed, &settings, &mut obs))?;
    save_png(&mut s, &latent, &a.out)?;
    s.bars.note(&format!("wrote {} in {:.1}s", a.out.display(), t.elapsed().as_secs_f64()));
    Ok(())
}
