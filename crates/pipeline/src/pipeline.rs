//! The editing pipeline both the CLI and the browser drive: image → latent, prompt → embedding
//! (cached), invert → noise pair, edit/reconstruct → latent → image. Async so browsers can read
//! GPU results; native code blocks on it with `pollster`.

use burn::tensor::{DType, Device, Int, Tensor, TensorCreationOptions, TensorData};
use edict_sd::models::attention_control::AttentionControl;
use edict_sd::model::StableDiffusion;
use edict_sd::scheduler::Prediction;
use edict_sd::models::vae::VaeConfig;

use crate::error::{PipelineError, Result};
pub use crate::image_io::Rgb;
use crate::preview;
use crate::prompt_edit::{EditSpec, P2p, align_tokens, token_weights};
use crate::sampler::{Edict, NoisePredictor, Pair, ddim_denoise, ddim_invert, relative_error};
use crate::schedule::{Schedule, Step};

/// Prompt embeddings kept on the device: an edit needs three (source, target, negative); `eval`
/// over thousands of captions must not keep them all.
pub const EMBEDDING_CACHE: usize = 8;

/// Sampling settings; defaults are the EDICT authors' (`EDICT_editing`).
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    pub steps: usize,
    pub strength: f64,
    pub mix: f64,
    pub guidance: f64,
    /// Replaces "" as the unconditional prompt of classifier-free guidance.
    pub negative: String,
    pub leapfrog: bool,
    /// 0 as the authors run it; 1 reproduces diffusers' SD scheduler config.
    pub steps_offset: usize,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            steps: 50,
            strength: 0.8,
            mix: 0.93,
            guidance: 3.0,
            negative: String::new(),
            leapfrog: true,
            steps_offset: 0,
        }
    }
}

impl Settings {
    /// Checks every knob; returns the steps to run and any warning for the user.
    pub fn validate(&self, schedule: &Schedule) -> Result<(Vec<Step>, Vec<String>)> {
        if !self.guidance.is_finite() || self.guidance < 0.0 {
            return Err(PipelineError::Invalid(format!(
                "guidance must be a finite number ≥ 0, got {}",
                self.guidance
            )));
        }
        let warning = self.edict().validate()?;
        let steps = schedule.steps(self.steps, self.strength, self.steps_offset)?;
        Ok((steps, warning.into_iter().collect()))
    }

    pub fn edict(&self) -> Edict {
        Edict {
            mix: self.mix,
            leapfrog: self.leapfrog,
        }
    }
}

/// Which inversion to run: EDICT (exact) or DDIM (the one-chain baseline).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Method {
    #[default]
    Edict,
    Ddim,
}

impl std::str::FromStr for Method {
    type Err = PipelineError;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "edict" => Ok(Self::Edict),
            "ddim" => Ok(Self::Ddim),
            _ => Err(PipelineError::Invalid(format!("method `{s}`: expected edict or ddim"))),
        }
    }
}

impl Method {
    /// The method's name in files, reports and on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Self::Edict => "edict",
            Self::Ddim => "ddim",
        }
    }
}

impl std::fmt::Display for Method {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// One UNet evaluation done (batch of 2 with guidance), in a named stage.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Progress {
    pub stage: &'static str,
    pub done: usize,
    pub total: usize,
}

/// Receives progress, warnings and previews, and can cancel between UNet evaluations.
pub trait Observer {
    fn progress(&mut self, _p: Progress) {}
    /// Something the user should know: the output may not be what was asked (a prompt cut at
    /// 77 tokens, a risky setting). Each pass over the steps says its warnings again (reconstruct
    /// has two), so an observer that shows them shows each text once.
    fn warn(&mut self, _message: &str) {}
    fn cancelled(&self) -> bool {
        false
    }
    /// Whether to compute [`Self::preview`] images (a cheap projection, but not free).
    fn wants_preview(&self) -> bool {
        false
    }
    /// After each UNet evaluation (`p` says which): the denoised image it predicts (x̂₀), one
    /// tile per chain side by side, from a fixed linear map of the latent (see [`preview`]);
    /// 1/8 of the size.
    fn preview(&mut self, _p: Progress, _image: &Rgb) {}
}

/// Observes nothing.
pub struct Quiet;
impl Observer for Quiet {}

impl<F: FnMut(Progress)> Observer for F {
    fn progress(&mut self, p: Progress) {
        self(p)
    }
}

/// An image latent (already multiplied by the VAE scaling factor) with its shape.
#[derive(Debug, Clone, PartialEq)]
pub struct Latent {
    pub values: Vec<f64>,
    /// `[1, channels, h/8, w/8]`
    pub shape: [usize; 4],
}

/// The inverted noise: a pair for EDICT, one chain (`x == y`) for DDIM.
#[derive(Debug, Clone, PartialEq)]
pub struct Inversion {
    pub pair: Pair,
    pub latent: Latent,
    pub prompt: String,
    pub settings: Settings,
    pub method: Method,
}

/// Result of invert-then-denoise with the same prompt.
#[derive(Debug, Clone)]
pub struct Reconstruction {
    pub latent: Latent,
    /// `‖denoise(invert(z)) − z‖ / ‖z‖`
    pub latent_rel_err: f64,
    pub unet_evals: usize,
}

pub struct Editor {
    pub model: StableDiffusion,
    pub device: Device,
    pub schedule: Schedule,
    /// The last [`EMBEDDING_CACHE`] prompts' embeddings, least recently used first.
    embeddings: Vec<(String, Tensor<3>)>,
    /// UNet calls made so far (each a batch of 2 under guidance), warm-up calls not counted.
    pub unet_calls: usize,
    /// Run each new UNet call shape once, discarded, before the first call whose result is kept:
    /// every kernel that shape needs is then compiled and, where kernels are picked by timing
    /// (`gpu-tuned` on wgpu, [`edict_sd::device::backend::tunes_kernels`]), tuned, so no kept result comes
    /// from a kernel chosen part-way through an edit. On by default exactly there.
    pub warm_up: bool,
    /// The call shapes warmed so far: batch shape and the attention controls' kind.
    warmed: Vec<WarmShape>,
    /// Warm-up calls made so far.
    pub warm_up_calls: usize,
}

/// What decides a UNet call's kernels: the batch shape, and which attention controls run
/// (they add operations to the graph).
type WarmShape = ([usize; 4], Option<[bool; 3]>);

async fn read_f64<const D: usize>(t: Tensor<D>) -> Result<Vec<f64>> {
    Ok(edict_sd::device::backend::read(t).await?.into_iter().map(f64::from).collect())
}

impl Editor {
    pub fn new(model: StableDiffusion, device: Device) -> Self {
        let sc = &model.configs.scheduler;
        Self {
            schedule: Schedule::scaled_linear(sc.beta_start, sc.beta_end),
            model,
            warm_up: edict_sd::device::backend::tunes_kernels(&device),
            device,
            embeddings: Vec::new(),
            unet_calls: 0,
            warmed: Vec::new(),
            warm_up_calls: 0,
        }
    }

    fn dtype(&self) -> DType {
        self.model.unet.conv_in.weight.val().dtype()
    }

    fn upload<const D: usize>(&self, values: Vec<f32>, shape: [usize; D]) -> Tensor<D> {
        Tensor::from_data(
            TensorData::new(values, shape),
            TensorCreationOptions::new(self.device.clone()).with_dtype(self.dtype()),
        )
    }

    /// The text embedding of `prompt` (`[1, 77, d]`), computed once per prompt while it stays
    /// among the last [`EMBEDDING_CACHE`] used.
    pub fn embed(&mut self, prompt: &str) -> Result<(Tensor<3>, Option<String>)> {
        let tokens = self.model.tokenizer.encode(prompt)?;
        let warning = tokens.truncated.then(|| {
            format!(
                "prompt is longer than 77 tokens; dropped: \"{}\"",
                tokens.dropped.trim()
            )
        });
        // most recently used last
        if let Some(i) = self.embeddings.iter().position(|(p, _)| p == prompt) {
            let hit = self.embeddings.remove(i);
            let e = hit.1.clone();
            self.embeddings.push(hit);
            return Ok((e, warning));
        }
        let e = self.model.text_encoder.forward(&tokens.ids)?;
        if self.embeddings.len() == EMBEDDING_CACHE {
            self.embeddings.remove(0);
        }
        self.embeddings.push((prompt.to_string(), e.clone()));
        Ok((e, warning))
    }

    /// Encodes an image (pixels in [−1, 1], `[1, 3, h, w]` row-major f32) to the posterior mean
    /// times the scaling factor. `sample_seed` draws from the posterior instead.
    pub async fn encode(&mut self, pixels: Vec<f32>, h: usize, w: usize, sample_seed: Option<u64>) -> Result<Latent> {
        let down = self.model.configs.vae.downscale();
        if h == 0 || w == 0 || h % down != 0 || w % down != 0 {
            return Err(PipelineError::Invalid(format!(
                "image size {w}×{h} must be a positive multiple of {down}"
            )));
        }
        let img = self.upload(pixels, [1, 3, h, w]);
        let (mean, logvar) = self.model.vae.encode(img);
        let shape = mean.dims();
        let mut values = read_f64(mean).await?;
        if let Some(seed) = sample_seed {
            let logvar = read_f64(logvar).await?;
            let mut rng = SplitMix(seed);
            for (m, lv) in values.iter_mut().zip(logvar) {
                *m += (0.5 * lv).exp() * rng.normal();
            }
        }
        let scale = self.model.configs.vae.scaling_factor;
        values.iter_mut().for_each(|v| *v *= scale);
        Ok(Latent { values, shape })
    }

    /// Decodes a latent (scaled, as the sampler holds it) to 8-bit RGB.
    pub async fn decode(&mut self, latent: &Latent) -> Result<Rgb> {
        let scale = self.model.configs.vae.scaling_factor;
        let z = latent.values.iter().map(|v| (v / scale) as f32).collect();
        let img = self.model.vae.decode(self.upload(z, latent.shape));
        let [_, _, h, w] = img.dims();
        let v = read_f64(img).await?;
        let mut data = vec![0u8; h * w * 3];
        for c in 0..3 {
            for i in 0..h * w {
                let x = ((v[c * h * w + i] + 1.0) * 127.5).round().clamp(0.0, 255.0);
                data[i * 3 + c] = x as u8;
            }
        }
        Ok(Rgb {
            width: w,
            height: h,
            data,
        })
    }

    /// Validates `s` and builds the guided noise predictor of `spec`'s targets (the inversion's
    /// prompt is `source`) on latents of `shape`; returns the steps to run and the predictor, and
    /// tells `obs` any warnings.
    #[allow(clippy::too_many_arguments)]
    fn guided<'a>(
        &'a mut self,
        source: &str,
        spec: &EditSpec,
        s: &Settings,
        method: Method,
        stage: &'static str,
        shape: [usize; 4],
        obs: &'a mut dyn Observer,
    ) -> Result<(Vec<Step>, Guided<'a>)> {
        spec.validate()?;
        let (steps, mut warnings) = s.validate(&self.schedule)?;
        let mut embed = |ed: &mut Self, prompt: &str| -> Result<Tensor<3>> {
            let (e, w) = ed.embed(prompt)?;
            if let Some(w) = w.filter(|w| !warnings.contains(w)) {
                warnings.push(w);
            }
            Ok(e)
        };
        // one unit of rows per target: [uncond] (unless guidance is 1), [source] (P2P), target
        // guidance 1 is the conditional prediction alone: skip the unconditional branch
        let uncond = s.guidance != 1.0;
        let mut shared = Vec::new();
        if uncond {
            shared.push(embed(self, &s.negative)?);
        }
        if spec.p2p.is_some() {
            shared.push(embed(self, source)?);
        }
        let mut rows = Vec::new();
        for t in &spec.targets {
            rows.extend(shared.iter().cloned());
            rows.push(embed(self, t)?);
        }
        let context = Tensor::cat(rows, 0);
        let steering = self.steering(source, spec)?;
        let total = evals_per_pass(method, steps.len());
        for w in &warnings {
            obs.warn(w);
        }
        Ok((
            steps,
            Guided {
                editor: self,
                context,
                uncond,
                steering,
                guidance: s.guidance,
                shape,
                stage,
                done: 0,
                total,
                obs,
            },
        ))
    }

    /// Checks an edit before any long work: its settings and that every weighted word is in a
    /// target prompt (the inversion would otherwise run first).
    pub fn check_edit(&self, spec: &EditSpec) -> Result<()> {
        spec.validate()?;
        self.token_controls(spec, None).map(drop)
    }

    /// Per target: its word weights, and with `source` its token alignment (mask, index).
    #[allow(clippy::type_complexity)]
    fn token_controls(&self, spec: &EditSpec, source: Option<&str>) -> Result<(Vec<Vec<f32>>, Option<(Vec<Vec<f32>>, Vec<Vec<i64>>)>)> {
        let tok = &self.model.tokenizer;
        let targets: Vec<Vec<u32>> = spec.targets.iter().map(|t| Ok(tok.encode(t)?.ids)).collect::<Result<_>>()?;
        let weights = targets.iter().map(|t| token_weights(tok, t, &spec.reweight, &targets)).collect::<Result<_>>()?;
        let aligned = match source {
            Some(s) => {
                let src = tok.encode(s)?.ids;
                Some(targets.iter().map(|t| align_tokens(&src, t)).unzip())
            }
            None => None,
        };
        Ok((weights, aligned))
    }

    /// The attention control `spec` asks for, as device tensors over the 77 keys.
    fn steering(&self, source: &str, spec: &EditSpec) -> Result<Option<Steering>> {
        if spec.p2p.is_none() && spec.reweight.is_empty() {
            return Ok(None);
        }
        let (weights, aligned) = self.token_controls(spec, spec.p2p.is_some().then_some(source))?;
        let (k, n) = (weights.len(), weights[0].len());
        let rows = |v: Vec<Vec<f32>>| self.upload(v.concat(), [k, 1, 1, n]);
        let tokens = aligned.map(|(mask, index)| {
            let index = Tensor::<4, Int>::from_data(TensorData::new(index.concat(), [k, 1, 1, n]), &self.device);
            (rows(mask), index)
        });
        Ok(Some(Steering {
            p2p: spec.p2p,
            tokens,
            weights: (!spec.reweight.is_empty()).then(|| rows(weights)),
        }))
    }

    /// Inverts `latent` under `prompt`: EDICT's noise pair (or DDIM's single chain).
    pub async fn invert(
        &mut self,
        latent: &Latent,
        prompt: &str,
        s: &Settings,
        method: Method,
        obs: &mut dyn Observer,
    ) -> Result<Inversion> {
        let (steps, mut eps) = self.guided(prompt, &EditSpec::to(prompt), s, method, "invert", latent.shape, obs)?;
        let pair = match method {
            Method::Edict => s.edict().invert(&latent.values, &steps, &mut eps).await?,
            Method::Ddim => {
                Pair::of(&ddim_invert(&latent.values, &steps, &mut eps).await?)
            }
        };
        Ok(Inversion {
            pair,
            latent: latent.clone(),
            prompt: prompt.to_string(),
            settings: s.clone(),
            method,
        })
    }

    /// Denoises an inversion under `prompt` (the target of an edit, or the source prompt to
    /// reconstruct); returns the pair, whose x the authors decode.
    pub async fn denoise(
        &mut self,
        inv: &Inversion,
        prompt: &str,
        stage: &'static str,
        obs: &mut dyn Observer,
    ) -> Result<Pair> {
        Ok(self.edit(inv, &EditSpec::to(prompt), stage, obs).await?.remove(0))
    }

    /// Denoises an inversion into each of `spec`'s targets, all in each UNet call, with its
    /// prompt-to-prompt and word-weight controls; one pair per target.
    pub async fn edit(
        &mut self,
        inv: &Inversion,
        spec: &EditSpec,
        stage: &'static str,
        obs: &mut dyn Observer,
    ) -> Result<Vec<Pair>> {
        let s = &inv.settings;
        let (steps, mut eps) = self.guided(&inv.prompt, spec, s, inv.method, stage, inv.latent.shape, obs)?;
        let k = spec.targets.len();
        let pairs = match inv.method {
            Method::Edict => s.edict().denoise(vec![inv.pair.clone(); k], &steps, &mut eps).await?,
            Method::Ddim => {
                let xs = ddim_denoise(vec![inv.pair.x_f64(); k], &steps, &mut eps).await?;
                xs.iter().map(|x| Pair::of(x)).collect()
            }
        };
        Ok(pairs)
    }

    /// Invert then denoise with the same prompt; EDICT returns `z` bit for bit.
    pub async fn reconstruct(
        &mut self,
        latent: &Latent,
        prompt: &str,
        s: &Settings,
        method: Method,
        obs: &mut dyn Observer,
    ) -> Result<Reconstruction> {
        let before = self.unet_calls;
        let inv = self.invert(latent, prompt, s, method, obs).await?;
        let pair = self.denoise(&inv, prompt, "reconstruct", obs).await?;
        let values = pair.x_f64();
        let latent_rel_err = relative_error(&values, &latent.values);
        Ok(Reconstruction {
            latent: Latent {
                values,
                shape: latent.shape,
            },
            latent_rel_err,
            unet_evals: self.unet_calls - before,
        })
    }
}

impl Editor {
    /// Text-to-image: DDIM from seeded Gaussian noise through all `s.steps` steps.
    pub async fn generate(
        &mut self,
        prompt: &str,
        width: usize,
        height: usize,
        seed: u64,
        s: &Settings,
        obs: &mut dyn Observer,
    ) -> Result<Latent> {
        let down = self.model.configs.vae.downscale();
        if width == 0 || height == 0 || width % down != 0 || height % down != 0 {
            return Err(PipelineError::Invalid(format!(
                "size {width}×{height} must be a positive multiple of {down}"
            )));
        }
        crate::image_io::check_pixels(width as u64, height as u64)?;
        let s = Settings { strength: 1.0, ..s.clone() };
        let shape = [1, self.model.configs.vae.latent_channels, height / down, width / down];
        // one DDIM chain: one UNet call per step
        let (steps, mut eps) = self.guided(prompt, &EditSpec::to(prompt), &s, Method::Ddim, "generate", shape, obs)?;
        let mut rng = SplitMix(seed);
        let noise = (0..shape.iter().product::<usize>()).map(|_| rng.normal()).collect();
        let values = ddim_denoise(vec![noise], &steps, &mut eps).await?.remove(0);
        Ok(Latent { values, shape })
    }
}

impl Editor {
    /// Plain img2img (SDEdit), the edit baseline without inversion: `latent` noised to the first
    /// timestep of the run `s` describes, `x_t = √ᾱ_t·z + √(1−ᾱ_t)·ε` with seeded Gaussian ε
    /// (diffusers' img2img), then denoised by DDIM under `prompt`.
    pub async fn img2img(&mut self, latent: &Latent, prompt: &str, s: &Settings, seed: u64, obs: &mut dyn Observer) -> Result<Latent> {
        let (steps, _) = s.validate(&self.schedule)?;
        let at = self.schedule.alphas_cumprod[steps[0].t];
        let mut rng = SplitMix(seed);
        let noisy = latent.values.iter().map(|z| at.sqrt() * z + (1.0 - at).sqrt() * rng.normal()).collect();
        let (steps, mut eps) = self.guided(prompt, &EditSpec::to(prompt), s, Method::Ddim, "img2img", latent.shape, obs)?;
        let values = ddim_denoise(vec![noisy], &steps, &mut eps).await?.remove(0);
        Ok(Latent { values, shape: latent.shape })
    }
}

/// Refuses an image size whose VAE activations cannot fit in `available` bytes (the CPU
/// backend's free memory), rather than run for minutes and be killed by the OS.
pub fn check_memory(vae: &VaeConfig, width: usize, height: usize, element_bytes: usize, available: u64) -> Result<()> {
    let need = vae.activation_bytes(width, height, element_bytes);
    if need > available {
        let gib = |b: u64| b as f64 / (1u64 << 30) as f64;
        return Err(PipelineError::Invalid(format!(
            "a {width}×{height} image needs at least {:.1} GiB of memory in the VAE, but {:.1} GiB is \
             available; use a smaller size or a GPU",
            gib(need),
            gib(available)
        )));
    }
    Ok(())
}

fn evals_per_pass(method: Method, steps: usize) -> usize {
    match method {
        Method::Edict => 2 * steps,
        Method::Ddim => steps,
    }
}

/// Prompt-to-prompt windows and word weights, ready for the UNet.
struct Steering {
    p2p: Option<P2p>,
    /// `[k, 1, 1, 77]` mask and aligned source index per target (P2P)
    tokens: Option<(Tensor<4>, Tensor<4, Int>)>,
    /// `[k, 1, 1, 77]` word weights per target
    weights: Option<Tensor<4>>,
}

impl Steering {
    /// The control of one UNet call at timestep `t` on units of `unit` rows.
    fn at(&self, t: usize, unit: usize) -> AttentionControl {
        let inject = |w: fn(&P2p) -> &crate::prompt_edit::Window| self.p2p.as_ref().is_some_and(|p| w(p).contains(t));
        AttentionControl {
            unit,
            inject_self: inject(|p| &p.self_attn),
            inject_tokens: self.tokens.clone().filter(|_| inject(|p| &p.tokens)),
            weights: self.weights.clone(),
        }
    }
}

/// ε = ε_u + g·(ε_c − ε_u) for each of k latents, from one UNet call whose batch holds one unit
/// of rows per latent: unconditional (unless guidance is 1), source (P2P), the target.
struct Guided<'a> {
    editor: &'a mut Editor,
    /// `[unit · k, 77, d]` in the row order above
    context: Tensor<3>,
    uncond: bool,
    steering: Option<Steering>,
    guidance: f64,
    shape: [usize; 4],
    stage: &'static str,
    done: usize,
    total: usize,
    obs: &'a mut dyn Observer,
}

impl NoisePredictor for Guided<'_> {
    async fn predict(&mut self, latents: &[Vec<f64>], t: usize) -> Result<Vec<Vec<f64>>> {
        if self.obs.cancelled() {
            return Err(PipelineError::Cancelled);
        }
        let k = latents.len();
        let unit = self.context.dims()[0] / k;
        let [_, c, h, w] = self.shape;
        let x: Vec<f32> = latents.iter().flat_map(|l| std::iter::repeat_n(l, unit)).flatten().map(|&v| v as f32).collect();
        let x = self.editor.upload(x, [k * unit, c, h, w]);
        let control = self.steering.as_ref().map(|s| s.at(t, unit));
        let call = |editor: &Editor, x: Tensor<4>| match &control {
            None => editor.model.unet.forward(x, t as f64, &self.context),
            Some(ctl) => editor.model.unet.forward_steered(x, t as f64, &self.context, ctl),
        };
        let shape: WarmShape = (x.dims(), control.as_ref().map(|c| [c.inject_self, c.inject_tokens.is_some(), c.weights.is_some()]));
        if self.editor.warm_up && !self.editor.warmed.contains(&shape) {
            // the same call, its result read (so the device has run it) and dropped
            read_f64(call(self.editor, x.clone())).await?;
            self.editor.warmed.push(shape);
            self.editor.warm_up_calls += 1;
        }
        let v = read_f64(call(self.editor, x)).await?;
        self.editor.unet_calls += 1;
        self.done += 1;
        let progress = Progress {
            stage: self.stage,
            done: self.done,
            total: self.total,
        };
        self.obs.progress(progress);
        let n = latents[0].len();
        let row = |r: usize| &v[r * n..(r + 1) * n];
        let g = self.guidance;
        let at = self.editor.schedule.alphas_cumprod[t];
        let (sa, sb) = (at.sqrt(), (1.0 - at).sqrt());
        let eps: Vec<Vec<f64>> = (0..k)
            .map(|i| {
                let cond = row(i * unit + unit - 1);
                let guided: Vec<f64> = if self.uncond {
                    row(i * unit).iter().zip(cond).map(|(u, c)| u + g * (c - u)).collect()
                } else {
                    cond.to_vec()
                };
                match self.editor.model.configs.scheduler.prediction {
                    Prediction::Epsilon => guided,
                    // v = √ᾱ·ε − √(1−ᾱ)·x₀ and x_t = √ᾱ·x₀ + √(1−ᾱ)·ε give ε = √ᾱ·v + √(1−ᾱ)·x_t;
                    // affine in v, so guiding v and converting equals converting each branch
                    Prediction::V => guided.iter().zip(&latents[i]).map(|(v, x)| sa * v + sb * x).collect(),
                }
            })
            .collect();
        if self.obs.wants_preview() {
            // x̂₀ = (x_t − √(1−ᾱ)·ε) / √ᾱ
            let x0: Vec<Vec<f64>> = latents
                .iter()
                .zip(&eps)
                .map(|(x, e)| x.iter().zip(e).map(|(x, e)| (x - sb * e) / sa).collect())
                .collect();
            if let Some(image) = preview::latents_to_rgb(&x0, self.shape) {
                self.obs.preview(progress, &image);
            }
        }
        Ok(eps)
    }
}

/// A tiny seeded normal generator for posterior sampling: reproducible on every platform.
struct SplitMix(u64);

impl SplitMix {
    fn next_f64(&mut self) -> f64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        ((z >> 11) as f64 + 0.5) / (1u64 << 53) as f64
    }

    /// Box–Muller.
    fn normal(&mut self) -> f64 {
        let (u1, u2) = (self.next_f64(), self.next_f64());
        (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_check_uses_the_widest_full_resolution_block() {
        let sd = VaeConfig::sd15();
        // 4 tensors × 256 channels × 4 bytes at 1024²: 4 GiB
        assert_eq!(sd.activation_bytes(1024, 1024, 4), 4 << 30);
        assert_eq!(sd.activation_bytes(1024, 1024, 2), 2 << 30);
        assert!(check_memory(&sd, 1024, 1024, 4, 5 << 30).is_ok());
        let err = check_memory(&sd, 1024, 1024, 4, 3 << 30).unwrap_err().to_string();
        assert!(err.starts_with("a 1024×1024 image needs at least 4.0 GiB of memory in the VAE, but 3.0 GiB"), "{err}");
    }
}
