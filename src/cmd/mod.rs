//! The `edict` subcommands, one module each, over what they share: the argument groups for
//! the model, the sampler and the photo, and the session a command works in.

pub mod bench;
pub mod edit;
pub mod eval;
pub mod eval_edit;
pub mod eval_merge;
pub mod generate;
pub mod invert;
pub mod reconstruct;
pub mod results;
pub mod tokenize;

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result, bail};
use clap::Args;
use edict_pipeline::io::image_io::{self, Size};
use edict_pipeline::io::latents;
use edict_pipeline::editor::{Editor, MemoryLimit, Quiet, Rgb};
use edict_pipeline::ops::{self, Photo};
use edict_pipeline::settings::{Method, Settings};
use edict_sd::device::backend::{Backend, device};
use edict_sd::checkpoint::lora::Lora;
use edict_sd::config::Precision;
use edict_sd::model::StableDiffusion;
use edict_sd::models::autoencoder_tiny::{self, AutoencoderTiny};
use edict_sd::scheduler::Prediction;

use crate::model_source;
use crate::progress::Bars;

#[derive(Args)]
pub struct ModelArgs {
    /// Hugging Face model id, local diffusers folder, or single-file .safetensors checkpoint.
    #[arg(long, default_value = model_source::DEFAULT_MODEL)]
    pub model: String,
    /// For a single-file checkpoint: a diffusers folder whose configs describe it (default: SDXL
    /// base's, SD 2.1's or SD 1.5's, as its keys say).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// What the UNet predicts, overriding the scheduler config (a single file has none):
    /// epsilon (SD 1.x, 2.x-base) or v (SD 2.x at 768²).
    #[arg(long)]
    pub prediction: Option<Prediction>,
    /// wgpu (Vulkan / Metal / DX12) or cpu.
    #[arg(long, default_value = "wgpu")]
    pub backend: Backend,
    /// f32 or f16: what the networks run in.
    #[arg(long, default_value = "f32")]
    pub precision: Precision,
    /// A LoRA .safetensors file (kohya-ss or diffusers/PEFT) merged into the weights as they
    /// load, at SCALE (default 1.0); repeat to merge several, in order.
    #[arg(long, value_name = "FILE[:SCALE]", value_parser = parse_lora)]
    pub lora: Vec<LoraArg>,
    /// No progress bars or summary.
    #[arg(long)]
    pub quiet: bool,
}

/// `--lora FILE[:SCALE]`.
#[derive(Debug, Clone, PartialEq)]
pub struct LoraArg {
    pub path: PathBuf,
    pub scale: f32,
}

/// `FILE[:SCALE]`: a suffix after the last `:` is the scale when it is a number (a path may hold
/// `:` itself, `C:\…`); after a `.safetensors` name it must be one.
fn parse_lora(s: &str) -> std::result::Result<LoraArg, String> {
    let whole = LoraArg { path: PathBuf::from(s), scale: 1.0 };
    let Some((path, scale)) = s.rsplit_once(':') else { return Ok(whole) };
    match scale.parse::<f32>() {
        Ok(v) if v.is_finite() && !path.is_empty() => Ok(LoraArg { path: PathBuf::from(path), scale: v }),
        _ if path.to_ascii_lowercase().ends_with(".safetensors") => Err(format!("`{scale}` is not a LoRA scale (a number, e.g. {path}:0.8)")),
        _ => Ok(whole),
    }
}

impl ModelArgs {
    /// The model with its LoRAs, as results and latents files record it.
    pub fn name(&self) -> String {
        let loras: String = self.lora.iter().map(|l| format!(" + LoRA {}:{}", l.path.display(), l.scale)).collect();
        format!("{}{loras}", self.model)
    }

    /// The model `--model` names, with its `--lora` files read (before the model, so a bad
    /// LoRA fails fast).
    fn files(&self) -> Result<edict_sd::checkpoint::files::ModelFiles> {
        let loras = (self.lora.iter())
            .map(|l| Lora::open(&l.path, l.scale).map(std::rc::Rc::new))
            .collect::<std::result::Result<Vec<_>, _>>()?;
        let mut files = model_source::resolve(&self.model, self.config.as_deref(), self.precision)?;
        files.loras = loras;
        if let Some(p) = self.prediction {
            files.configs.scheduler.prediction = p;
        }
        Ok(files)
    }
}

#[derive(Args)]
pub struct ImageArgs {
    /// Input photo (any format the image crate reads).
    #[arg(long)]
    pub image: Option<PathBuf>,
    /// Exact width (multiple of 8); default: long side 512, sides rounded down to multiples of 64.
    #[arg(long, requires = "height")]
    pub width: Option<u32>,
    #[arg(long, requires = "width")]
    pub height: Option<u32>,
    /// Sample the VAE posterior with this seed instead of taking its mean.
    #[arg(long)]
    pub seed: Option<u64>,
}

#[derive(Args)]
pub struct PreviewArgs {
    /// Rewrite this PNG after every UNet call with the image being predicted (1/8 size, a fast
    /// approximation without the VAE; one tile per target).
    #[arg(long)]
    pub preview: Option<PathBuf>,
    /// Decode the preview with TAESD instead (full size, looks like the result): `taesd` takes
    /// madebyollin/taesd (SD 1.x/2.x) or madebyollin/taesdxl (SDXL); `taesd=FOLDER|HUB_ID` another.
    #[arg(long, requires = "preview", value_name = "taesd[=FOLDER|HUB_ID]", value_parser = parse_preview_decoder)]
    pub preview_decoder: Option<PreviewDecoder>,
}

/// `--preview-decoder`: TAESD from the family's default repository or a given folder or hub id.
#[derive(Debug, Clone, PartialEq)]
pub enum PreviewDecoder {
    Taesd(Option<String>),
}

fn parse_preview_decoder(s: &str) -> std::result::Result<PreviewDecoder, String> {
    match s.split_once('=') {
        None if s == "taesd" => Ok(PreviewDecoder::Taesd(None)),
        Some(("taesd", at)) if !at.is_empty() => Ok(PreviewDecoder::Taesd(Some(at.to_string()))),
        _ => Err(format!("`{s}`: expected taesd or taesd=FOLDER|HUB_ID")),
    }
}

impl PreviewArgs {
    /// Loads the preview decoder asked for onto the session's device (after [`open`]).
    pub fn load_decoder(&self, s: &mut Session) -> Result<()> {
        let Some(PreviewDecoder::Taesd(at)) = &self.preview_decoder else { return Ok(()) };
        let id = at.as_deref().unwrap_or_else(|| autoencoder_tiny::hub_id(s.editor.model.configs.is_sdxl()));
        let dir = model_source::resolve_taesd(id)?;
        let tiny = AutoencoderTiny::from_folder(&dir, &s.editor.device).with_context(|| format!("preview decoder {id}"))?;
        s.editor.set_preview_decoder(tiny)?;
        s.bars.note(&format!("previews decoded by {id}"));
        Ok(())
    }
}

/// What inverting a photo under a prompt takes (`invert`, `reconstruct`).
#[derive(Args)]
pub struct PhotoArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    #[command(flatten)]
    pub preview: PreviewArgs,
    #[command(flatten)]
    pub sample: Settings,
    #[command(flatten)]
    pub image: ImageArgs,
    /// Prompt describing the photo.
    #[arg(long)]
    pub prompt: String,
}

impl PhotoArgs {
    /// Checks the settings and reads the photo (before the model loads, so bad input fails
    /// fast), opens the model and encodes the photo.
    pub fn open(&self) -> Result<(Session, Photo)> {
        check_settings(&self.sample)?;
        let photo = read_image(&self.image)?;
        let mut s = open(&self.model)?;
        self.preview.load_decoder(&mut s)?;
        let photo = encode_image(&mut s, photo, self.image.seed)?;
        Ok((s, photo))
    }
}

/// The sampler settings of `eval` and `eval-edit` (the others at their defaults), checked for
/// each of `methods` before any work; the method is set per run.
pub fn eval_settings(steps: usize, strength: f64, mix: f64, gamma: f64, guidance: f64, methods: &[Method]) -> Result<Settings> {
    let settings = Settings { steps, strength, mix, gamma, guidance, ..Settings::default() };
    for &method in methods {
        check_settings(&Settings { method, ..settings.clone() })?;
    }
    Ok(settings)
}

/// Refuses settings the sampler would refuse, before the model loads (the steps do not depend
/// on the model's noise schedule, only on the counts and the strength).
pub fn check_settings(s: &Settings) -> Result<()> {
    s.validate(&edict_pipeline::samplers::schedule::Schedule::default())?;
    Ok(())
}

/// `list` without repeats, in order (`--methods edict,edict`).
pub fn unique<T: PartialEq + Copy>(list: &[T]) -> Vec<T> {
    let mut out = Vec::new();
    for &x in list {
        if !out.contains(&x) {
            out.push(x);
        }
    }
    out
}

/// Refuses to overwrite unless `--force`; checks the folder exists before any long work.
pub fn check_output(path: &Path, force: bool) -> Result<()> {
    if path.exists() && !force {
        bail!("{} exists; pass --force to overwrite it", path.display());
    }
    let dir = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    if !dir.is_dir() {
        bail!("cannot write {}: folder {} does not exist", path.display(), dir.display());
    }
    Ok(())
}

pub fn write(path: &Path, bytes: &[u8]) -> Result<()> {
    std::fs::write(path, bytes).with_context(|| format!("cannot write {}", path.display()))
}

pub struct Session {
    pub editor: Editor,
    pub model_name: String,
    pub bars: Bars,
}

impl Session {
    fn origin(&self) -> latents::Origin {
        latents::Origin::of(&self.model_name, &self.editor.model)
    }
}

pub fn open(m: &ModelArgs) -> Result<Session> {
    let bars = Bars::new(m.quiet);
    let (precision, backend) = (m.precision, m.backend);
    let files = m.files()?;
    let dev = device(backend)?;
    let t = Instant::now();
    let model = StableDiffusion::load(files, &dev, precision)?;
    if !model.unused_keys.is_empty() {
        bars.warn(&format!(
            "{} weights in the files were not used (e.g. {})",
            model.unused_keys.len(),
            model.unused_keys[0]
        ));
    }
    let model_name = m.name();
    bars.note(&format!("loaded {model_name} (fingerprint {}) on {backend} ({:.1}s)", model.fingerprint, t.elapsed().as_secs_f64()));
    let mut editor = Editor::new(model, dev);
    // on the CPU, images too large for the memory left are refused (GPUs report failed allocations)
    editor.memory = (backend == Backend::Cpu).then_some(MemoryLimit::Host(available_memory));
    Ok(Session { editor, model_name, bars })
}

/// Linux's estimate of the memory that can be allocated without swapping (`MemAvailable`).
fn available_memory() -> Option<u64> {
    let info = std::fs::read_to_string("/proc/meminfo").ok()?;
    let kib = info.lines().find_map(|l| l.strip_prefix("MemAvailable:"))?.trim().strip_suffix("kB")?;
    Some(kib.trim().parse::<u64>().ok()? * 1024)
}

fn image_size(a: &ImageArgs) -> Result<Size> {
    Ok(match (a.width, a.height) {
        (Some(w), Some(h)) => Size::exact(w, h)?,
        _ => Size::Auto,
    })
}

/// Reads and decodes the photo before any model loads, so a bad image fails fast; it is sized
/// once the model's default size is known.
pub fn read_image(a: &ImageArgs) -> Result<(image::RgbImage, Size)> {
    let path = a.image.as_ref().context("--image is required")?;
    let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    let img = image_io::decode(&bytes).with_context(|| format!("{}", path.display()))?;
    Ok((img, image_size(a)?))
}

/// Sizes the photo for the model and encodes it to its latent.
pub fn encode_image(s: &mut Session, (img, size): (image::RgbImage, Size), seed: Option<u64>) -> Result<Photo> {
    let photo = pollster::block_on(ops::encode_photo(&mut s.editor, img, size, seed, &mut Quiet))?;
    s.bars.note(&format!("image: {}", photo.sizing));
    Ok(photo)
}

pub fn write_png(out: &Path, rgb: &Rgb) -> Result<()> {
    write(out, &image_io::encode_png(rgb)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lora_scale_follows_the_last_colon() {
        let arg = |p: &str, scale| LoraArg { path: PathBuf::from(p), scale };
        assert_eq!(parse_lora("style.safetensors"), Ok(arg("style.safetensors", 1.0)));
        assert_eq!(parse_lora("style.safetensors:0.6"), Ok(arg("style.safetensors", 0.6)));
        assert_eq!(parse_lora("C:\\loras\\a.safetensors:-1"), Ok(arg("C:\\loras\\a.safetensors", -1.0)));
        assert_eq!(parse_lora("C:\\loras\\a.safetensors"), Ok(arg("C:\\loras\\a.safetensors", 1.0)));
        assert!(parse_lora("style.safetensors:strong").unwrap_err().contains("`strong` is not a LoRA scale"));
        assert!(parse_lora("style.safetensors:inf").is_err());
    }
}
