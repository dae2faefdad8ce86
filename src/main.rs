//! `edict`: real-image editing with EDICT on Stable Diffusion v1.x — a thin shell over the
//! pipeline in `edict-pipeline`.

mod bench;
mod eval;
mod model_source;
mod progress;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result, bail};
use clap::parser::ValueSource;
use clap::{ArgMatches, Args, CommandFactory, FromArgMatches, Parser, Subcommand};
use edict_pipeline::image_io::{self, Size};
use edict_pipeline::latents;
use edict_pipeline::pipeline::{self, Editor, Inversion, Latent, Method, Settings};
use edict_sd::backend::{Backend, device};
use edict_sd::model::{Precision, StableDiffusion};
use edict_sd::scheduler::Prediction;
use edict_sd::tokenizer::ClipTokenizer;

use crate::progress::Bars;

#[derive(Parser)]
#[command(name = "edict", version, about = "Real-image editing with EDICT (exact diffusion inversion) on Stable Diffusion v1.x")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Invert a photo under a source prompt, then denoise it under a target prompt.
    Edit(EditArgs),
    /// Invert a photo to EDICT's noise pair and save it (edit it later with --from-latents).
    Invert(InvertArgs),
    /// Invert and denoise with the same prompt; reports how exact the round trip is.
    Reconstruct(ReconstructArgs),
    /// Generate an image from a prompt (DDIM from seeded noise).
    Generate(GenerateArgs),
    /// Reconstruct a folder of photos with each method; writes MSE, PSNR, SSIM (CSV, JSON, Markdown).
    Eval(eval::EvalArgs),
    /// Time the UNet, the VAE and a full edit on one backend; report peak memory.
    Bench(bench::BenchArgs),
    /// Print the 77 CLIP token ids of a prompt as a JSON array.
    Tokenize {
        text: String,
        /// A model folder whose tokenizer/ to use instead of the embedded CLIP vocabulary.
        #[arg(long)]
        model: Option<PathBuf>,
    },
}

#[derive(Args)]
struct ModelArgs {
    /// Hugging Face model id, local diffusers folder, or single-file .safetensors checkpoint.
    #[arg(long, default_value = model_source::DEFAULT_MODEL)]
    model: String,
    /// For a single-file checkpoint: a diffusers folder whose configs describe it (default SD1.5's).
    #[arg(long)]
    config: Option<PathBuf>,
    /// What the UNet predicts, overriding the scheduler config (a single file has none):
    /// epsilon (SD 1.x, 2.x-base) or v (SD 2.x at 768²).
    #[arg(long)]
    prediction: Option<Prediction>,
    /// wgpu (Vulkan / Metal / DX12) or cpu.
    #[arg(long, default_value = "wgpu")]
    backend: Backend,
    /// f32 or f16: what the networks run in.
    #[arg(long, default_value = "f32")]
    precision: Precision,
    /// No progress bars or summary.
    #[arg(long)]
    quiet: bool,
}

#[derive(Args)]
struct SampleArgs {
    #[arg(long, default_value_t = 50)]
    steps: usize,
    /// Fraction of the schedule to invert and re-denoise, in (0, 1].
    #[arg(long, default_value_t = 0.8)]
    strength: f64,
    /// EDICT's mixing weight p, in (0.5, 1].
    #[arg(long, default_value_t = 0.93)]
    mix: f64,
    /// Classifier-free guidance scale.
    #[arg(long, default_value_t = 3.0)]
    guidance: f64,
    /// Negative prompt (replaces "" as the unconditional prompt).
    #[arg(long, default_value = "")]
    negative: String,
    /// Turn off leapfrog (alternating which latent moves first).
    #[arg(long)]
    no_leapfrog: bool,
    /// Timestep offset: 0 as the EDICT authors run, 1 as diffusers' SD scheduler config.
    #[arg(long, default_value_t = 0)]
    steps_offset: usize,
}

impl SampleArgs {
    fn settings(&self) -> Settings {
        Settings {
            steps: self.steps,
            strength: self.strength,
            mix: self.mix,
            guidance: self.guidance,
            negative: self.negative.clone(),
            leapfrog: !self.no_leapfrog,
            steps_offset: self.steps_offset,
        }
    }
}

#[derive(Args)]
struct ImageArgs {
    /// Input photo (any format the image crate reads).
    #[arg(long)]
    image: Option<PathBuf>,
    /// Exact width (multiple of 8); default: long side 512, sides rounded down to multiples of 64.
    #[arg(long, requires = "height")]
    width: Option<u32>,
    #[arg(long, requires = "width")]
    height: Option<u32>,
    /// Sample the VAE posterior with this seed instead of taking its mean.
    #[arg(long)]
    seed: Option<u64>,
}

#[derive(Args)]
struct EditArgs {
    #[command(flatten)]
    model: ModelArgs,
    #[command(flatten)]
    sample: SampleArgs,
    #[command(flatten)]
    image: ImageArgs,
    /// Prompt describing the photo as it is.
    #[arg(long, required_unless_present = "from_latents")]
    source: Option<String>,
    /// Prompt describing the edited photo.
    #[arg(long)]
    target: String,
    #[arg(long)]
    out: PathBuf,
    /// Also save the inverted pair here.
    #[arg(long)]
    save_latents: Option<PathBuf>,
    /// Skip inversion: edit a pair saved by `invert` or `edit --save-latents`.
    #[arg(long, conflicts_with_all = ["source", "save_latents"])]
    from_latents: Option<PathBuf>,
    /// Overwrite existing output files.
    #[arg(long)]
    force: bool,
}

#[derive(Args)]
struct InvertArgs {
    #[command(flatten)]
    model: ModelArgs,
    #[command(flatten)]
    sample: SampleArgs,
    #[command(flatten)]
    image: ImageArgs,
    #[arg(long)]
    prompt: String,
    #[arg(long)]
    save_latents: PathBuf,
    #[arg(long)]
    force: bool,
}

#[derive(Args)]
struct ReconstructArgs {
    #[command(flatten)]
    model: ModelArgs,
    #[command(flatten)]
    sample: SampleArgs,
    #[command(flatten)]
    image: ImageArgs,
    #[arg(long)]
    prompt: String,
    #[arg(long)]
    out: PathBuf,
    /// edict or ddim (the inexact baseline).
    #[arg(long, default_value = "edict")]
    method: Method,
    /// Write a JSON report (latent_rel_err, mse, psnr, ssim, unet_evals, seconds).
    #[arg(long)]
    report: Option<PathBuf>,
    #[arg(long)]
    force: bool,
}

#[derive(Args)]
struct GenerateArgs {
    #[command(flatten)]
    model: ModelArgs,
    #[arg(long)]
    prompt: String,
    #[arg(long)]
    out: PathBuf,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    #[arg(long, default_value_t = 50)]
    steps: usize,
    #[arg(long, default_value_t = 7.5)]
    guidance: f64,
    #[arg(long, default_value = "")]
    negative: String,
    /// Default: the model's native size (512 for SD 1.x and 2.x-base, 768 for SD 2.x).
    #[arg(long)]
    width: Option<u32>,
    #[arg(long)]
    height: Option<u32>,
    #[arg(long)]
    force: bool,
}

fn main() {
    let matches = Cli::command().get_matches();
    let cli = Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    let typed = matches.subcommand().map(|(_, m)| typed(m)).unwrap_or_default();
    if let Err(e) = run(cli, &typed) {
        eprintln!("error: {}", one_line(&e));
        if std::env::var("RUST_BACKTRACE").is_ok_and(|v| !v.is_empty() && v != "0") {
            eprintln!("{}", e.backtrace());
        }
        std::process::exit(1);
    }
}

/// The outermost message and the root cause, on one line (library errors often repeat their
/// whole chain in each layer's message).
fn one_line(e: &anyhow::Error) -> String {
    let top = e.to_string();
    let root = e.root_cause().to_string();
    let msg = if top.contains(&root) { top } else { format!("{top}: {root}") };
    msg.replace('\n', " ")
}

/// The ids of the arguments typed on the command line, to tell a choice from a default.
fn typed(m: &ArgMatches) -> BTreeSet<String> {
    m.ids()
        .filter(|id| m.value_source(id.as_str()) == Some(ValueSource::CommandLine))
        .map(|id| id.to_string())
        .collect()
}

fn run(cli: Cli, typed: &BTreeSet<String>) -> Result<()> {
    match cli.cmd {
        Cmd::Tokenize { text, model } => tokenize(&text, model.as_deref()),
        Cmd::Edit(a) => edit(a, typed),
        Cmd::Invert(a) => invert(a),
        Cmd::Reconstruct(a) => reconstruct(a),
        Cmd::Generate(a) => generate(a),
        Cmd::Eval(a) => eval::eval(a),
        Cmd::Bench(a) => bench::bench(a),
    }
}

fn tokenize(text: &str, model: Option<&Path>) -> Result<()> {
    let tok = match model {
        Some(dir) => ClipTokenizer::from_folder(&dir.join("tokenizer"))?,
        None => ClipTokenizer::embedded()?,
    };
    let t = tok.encode(text)?;
    if t.truncated {
        eprintln!("warning: prompt is longer than 77 tokens; dropped: \"{}\"", t.dropped.trim());
    }
    println!("{}", serde_json::to_string(&t.ids)?);
    Ok(())
}

/// Refuses to overwrite unless `--force`; checks the folder exists before any long work.
fn check_output(path: &Path, force: bool) -> Result<()> {
    if path.exists() && !force {
        bail!("{} exists; pass --force to overwrite it", path.display());
    }
    let dir = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    if !dir.is_dir() {
        bail!("cannot write {}: folder {} does not exist", path.display(), dir.display());
    }
    Ok(())
}

fn write(path: &Path, bytes: &[u8]) -> Result<()> {
    std::fs::write(path, bytes).with_context(|| format!("cannot write {}", path.display()))
}

struct Session {
    editor: Editor,
    model_name: String,
    backend: Backend,
    precision: Precision,
    bars: Bars,
}

impl Session {
    fn origin(&self) -> latents::Origin {
        latents::Origin::of(&self.model_name, &self.editor.model)
    }

    /// On the CPU, refuses an image size whose VAE activations cannot fit in the memory left
    /// (GPU allocations that fail are reported by the device as an error).
    fn check_memory(&self, width: usize, height: usize) -> Result<()> {
        if self.backend != Backend::Cpu {
            return Ok(());
        }
        let Some(available) = available_memory() else {
            return Ok(());
        };
        let bytes = self.precision.element_bytes();
        Ok(pipeline::check_memory(&self.editor.model.configs.vae, width, height, bytes, available)?)
    }
}

fn open(m: &ModelArgs) -> Result<Session> {
    let bars = Bars::new(m.quiet);
    let (precision, backend) = (m.precision, m.backend);
    let mut files = model_source::resolve(&m.model, m.config.as_deref(), precision)?;
    if let Some(p) = m.prediction {
        files.configs.scheduler.prediction = p;
    }
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
    bars.note(&format!("loaded {} (fingerprint {}) on {backend} ({:.1}s)", m.model, model.fingerprint, t.elapsed().as_secs_f64()));
    Ok(Session {
        editor: Editor::new(model, dev),
        model_name: m.model.clone(),
        backend,
        precision,
        bars,
    })
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
fn read_image(a: &ImageArgs) -> Result<(image::RgbImage, Size)> {
    let path = a.image.as_ref().context("--image is required")?;
    let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    let img = image_io::decode(&bytes).with_context(|| format!("{}", path.display()))?;
    Ok((img, image_size(a)?))
}

/// Sizes the photo for the model and encodes it to its latent; returns the sized photo too.
fn encode_image(s: &mut Session, (img, size): (image::RgbImage, Size), seed: Option<u64>) -> Result<(Latent, image::RgbImage)> {
    let (img, what) = image_io::fit(img, size, s.editor.model.configs.default_long_side())?;
    s.bars.note(&format!("image: {what}"));
    let (w, h) = img.dimensions();
    s.check_memory(w as usize, h as usize)?;
    let latent = pollster::block_on(s.editor.encode(image_io::to_pixels(&img), h as usize, w as usize, seed))?;
    Ok((latent, img))
}

fn warn_all(s: &Session, warnings: &[String]) {
    for w in warnings {
        s.bars.warn(w);
    }
}

fn save_png(s: &mut Session, latent: &Latent, out: &Path) -> Result<edict_pipeline::pipeline::Rgb> {
    let rgb = pollster::block_on(s.editor.decode(latent))?;
    write(out, &image_io::encode_png(&rgb)?)?;
    Ok(rgb)
}

fn edit(a: EditArgs, typed: &BTreeSet<String>) -> Result<()> {
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
fn check_latents_args(a: &EditArgs, typed: &BTreeSet<String>, inv: &Inversion, down: usize, path: &str) -> Result<()> {
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

fn invert(a: InvertArgs) -> Result<()> {
    check_output(&a.save_latents, a.force)?;
    let t = Instant::now();
    let photo = read_image(&a.image)?;
    let mut s = open(&a.model)?;
    let (latent, _) = encode_image(&mut s, photo, a.image.seed)?;
    let mut obs = s.bars.observer();
    let (inv, w) = pollster::block_on(s.editor.invert(&latent, &a.prompt, &a.sample.settings(), Method::Edict, &mut obs))?;
    drop(obs);
    warn_all(&s, &w);
    write(&a.save_latents, &latents::to_bytes(&inv, &s.origin())?)?;
    s.bars.note(&format!("wrote {} in {:.1}s", a.save_latents.display(), t.elapsed().as_secs_f64()));
    Ok(())
}

fn reconstruct(a: ReconstructArgs) -> Result<()> {
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
    let mut obs = s.bars.observer();
    let (rec, w) = pollster::block_on(s.editor.reconstruct(&latent, &a.prompt, &a.sample.settings(), method, &mut obs))?;
    drop(obs);
    warn_all(&s, &w);
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

fn generate(a: GenerateArgs) -> Result<()> {
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
    let mut obs = s.bars.observer();
    let (latent, w) = pollster::block_on(s.editor.generate(&a.prompt, width as usize, height as usize, a.seed, &settings, &mut obs))?;
    drop(obs);
    warn_all(&s, &w);
    save_png(&mut s, &latent, &a.out)?;
    s.bars.note(&format!("wrote {} in {:.1}s", a.out.display(), t.elapsed().as_secs_f64()));
    Ok(())
}
