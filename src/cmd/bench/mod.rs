//! `edict bench`: UNet evaluations per second at batch 2 (classifier-free guidance), VAE encode
//! and decode times, a full edit's time (EDICT, BDIA, O-BELM or DDIM) and the process's peak memory, on one backend.
//! The timing runs are in [`measure`], the text or JSON output in [`report`].

mod measure;
mod report;

use std::time::Instant;

use anyhow::{Result, bail};
use clap::Args;
use edict_pipeline::editor::Editor;
use edict_pipeline::settings::{DEFAULTS, Method, Settings};
use edict_sd::device::backend::{Backend, device};
use edict_sd::config::{Precision, SdConfigs, folder_configs};
use edict_sd::model::StableDiffusion;

use super::{ModelArgs, check_settings, open};
use crate::model_source;

#[derive(Args)]
pub struct BenchArgs {
    /// Weights to load: Hugging Face id, diffusers folder or single-file checkpoint
    /// (default SD v1.5 from the hub, unless --config is given).
    #[arg(long, conflicts_with = "config")]
    model: Option<String>,
    /// Build this architecture with seeded random weights instead (no download): `sd15`,
    /// `sd21`, `sdxl`, or a diffusers folder whose configs to use.
    #[arg(long)]
    config: Option<String>,
    /// wgpu or cpu.
    #[arg(long, default_value = "wgpu")]
    backend: Backend,
    /// f32 or f16.
    #[arg(long, default_value = "f32")]
    precision: Precision,
    /// Image side in pixels (square; multiple of 8); the latent is side/8.
    #[arg(long, default_value_t = 512)]
    size: u32,
    /// Timed repetitions of each UNet and VAE measurement, after one untimed warm-up.
    #[arg(long, default_value_t = 5)]
    iters: usize,
    /// Steps of the timed edit.
    #[arg(long, default_value_t = 50)]
    steps: usize,
    /// Strength of the timed edit.
    #[arg(long, default_value_t = 0.8)]
    strength: f64,
    /// Sampler of the timed edit: edict, bdia, belm or ddim.
    #[arg(long, default_value_t = DEFAULTS.method)]
    method: Method,
    /// Skip the full edit.
    #[arg(long)]
    no_edit: bool,
    /// Print one JSON object instead of text.
    #[arg(long)]
    json: bool,
}

pub fn bench(a: BenchArgs) -> Result<()> {
    if a.size == 0 || a.size % 8 != 0 {
        bail!("--size must be a positive multiple of 8, got {}", a.size);
    }
    if a.iters == 0 {
        bail!("--iters must be at least 1");
    }
    let settings = Settings {
        steps: a.steps,
        strength: a.strength,
        method: a.method,
        ..Settings::default()
    };
    if !a.no_edit {
        check_settings(&settings)?;
    }

    let t = Instant::now();
    let (mut ed, model_name) = load(&a)?;
    let load_s = t.elapsed().as_secs_f64();

    let configs = ed.model.configs.clone();
    let m = measure::run(&mut ed, &a, &settings)?;
    report::print(&a, &configs, &model_name, load_s, &m)
}

/// The model to time, and its name in the report: seeded random weights for `--config`, else
/// the weights of `--model` (SD 1.5's by default).
fn load(a: &BenchArgs) -> Result<(Editor, String)> {
    Ok(match &a.config {
        Some(c) => {
            let configs = match c.as_str() {
                "sd15" => SdConfigs::sd15(),
                "sd21" => SdConfigs::sd21(),
                "sdxl" => SdConfigs::sdxl(),
                dir => folder_configs(std::path::Path::new(dir))?,
            };
            let dev = device(a.backend)?;
            let model = StableDiffusion::random(configs, &dev, a.precision, 0)?;
            (Editor::new(model, dev), format!("random weights, {c} architecture"))
        }
        None => {
            let model = a.model.clone().unwrap_or_else(|| model_source::DEFAULT_MODEL.to_string());
            let args = ModelArgs {
                model: model.clone(),
                config: None,
                prediction: None,
                backend: a.backend,
                precision: a.precision,
                lora: Vec::new(),
                quiet: true,
            };
            (open(&args)?.editor, model)
        }
    })
}
