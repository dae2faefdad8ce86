//! The editing pipeline both the CLI and the browser drive: image → latent, prompt → embedding
//! (cached), invert → noise pair, edit/reconstruct → latent → image. Async so browsers can read
//! GPU results; native code blocks on it with `pollster`.

use burn::tensor::{DType, Device, Tensor, TensorCreationOptions, TensorData};
use edict_sd::model::StableDiffusion;
use edict_sd::scheduler::Prediction;
use edict_sd::vae::VaeConfig;

use crate::error::{PipelineError, Result};
pub use crate::image_io::Rgb;
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

/// Receives progress and can cancel between UNet evaluations.
pub trait Observer {
    fn progress(&mut self, _p: Progress) {}
    fn cancelled(&self) -> bool {
        false
    }
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
    /// UNet calls made so far (each a batch of 2 under guidance).
    pub unet_calls: usize,
}

async fn read_f64<const D: usize>(t: Tensor<D>) -> Result<Vec<f64>> {
    Ok(edict_sd::backend::read(t).await?.into_iter().map(f64::from).collect())
}

impl Editor {
    pub fn new(model: StableDiffusion, device: Device) -> Self {
        let sc = &model.configs.scheduler;
        Self {
            schedule: Schedule::scaled_linear(sc.beta_start, sc.beta_end),
            model,
            device,
            embeddings: Vec::new(),
            unet_calls: 0,
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

    /// Validates `s` and builds the guided noise predictor for `prompt` on latents of `shape`;
    /// returns the steps to run, the predictor and any warnings for the user.
    fn guided<'a>(
        &'a mut self,
        prompt: &str,
        s: &Settings,
        method: Method,
        stage: &'static str,
        shape: [usize; 4],
        obs: &'a mut dyn Observer,
    ) -> Result<(Vec<Step>, Guided<'a>, Vec<String>)> {
        let (steps, mut warnings) = s.validate(&self.schedule)?;
        let (cond, w) = self.embed(prompt)?;
        warnings.extend(w);
        // guidance 1 is the conditional prediction alone: skip the unconditional branch
        let context = if s.guidance == 1.0 {
            cond
        } else {
            let (u, w) = self.embed(&s.negative)?;
            warnings.extend(w);
            Tensor::cat(vec![u, cond], 0)
        };
        let total = evals_per_pass(method, steps.len());
        Ok((
            steps,
            Guided {
                editor: self,
                context,
                guidance: s.guidance,
                shape,
                stage,
                done: 0,
                total,
                obs,
            },
            warnings,
        ))
    }

    /// Inverts `latent` under `prompt`: EDICT's noise pair (or DDIM's single chain).
    pub async fn invert(
        &mut self,
        latent: &Latent,
        prompt: &str,
        s: &Settings,
        method: Method,
        obs: &mut dyn Observer,
    ) -> Result<(Inversion, Vec<String>)> {
        let (steps, mut eps, warnings) = self.guided(prompt, s, method, "invert", latent.shape, obs)?;
        let pair = match method {
            Method::Edict => s.edict().invert(&latent.values, &steps, &mut eps).await?,
            Method::Ddim => {
                Pair::of(&ddim_invert(&latent.values, &steps, &mut eps).await?)
            }
        };
        Ok((
            Inversion {
                pair,
                latent: latent.clone(),
                prompt: prompt.to_string(),
                settings: s.clone(),
                method,
            },
            warnings,
        ))
    }

    /// Denoises an inversion under `prompt` (the target of an edit, or the source prompt to
    /// reconstruct); returns the latent the authors decode (x).
    pub async fn denoise(
        &mut self,
        inv: &Inversion,
        prompt: &str,
        stage: &'static str,
        obs: &mut dyn Observer,
    ) -> Result<(Pair, Vec<String>)> {
        let s = &inv.settings;
        let (steps, mut eps, warnings) = self.guided(prompt, s, inv.method, stage, inv.latent.shape, obs)?;
        let pair = match inv.method {
            Method::Edict => s.edict().denoise(inv.pair.clone(), &steps, &mut eps).await?,
            Method::Ddim => {
                Pair::of(&ddim_denoise(inv.pair.x_f64(), &steps, &mut eps).await?)
            }
        };
        Ok((pair, warnings))
    }

    /// Invert then denoise with the same prompt; EDICT returns `z` bit for bit.
    pub async fn reconstruct(
        &mut self,
        latent: &Latent,
        prompt: &str,
        s: &Settings,
        method: Method,
        obs: &mut dyn Observer,
    ) -> Result<(Reconstruction, Vec<String>)> {
        let before = self.unet_calls;
        let (inv, mut warnings) = self.invert(latent, prompt, s, method, obs).await?;
        let (pair, w) = self.denoise(&inv, prompt, "reconstruct", obs).await?;
        // the same prompt and settings warn the same way twice; say it once
        for w in w {
            if !warnings.contains(&w) {
                warnings.push(w);
            }
        }
        let values = pair.x_f64();
        let latent_rel_err = relative_error(&values, &latent.values);
        Ok((
            Reconstruction {
                latent: Latent {
                    values,
                    shape: latent.shape,
                },
                latent_rel_err,
                unet_evals: self.unet_calls - before,
            },
            warnings,
        ))
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
    ) -> Result<(Latent, Vec<String>)> {
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
        let (steps, mut eps, warnings) = self.guided(prompt, &s, Method::Ddim, "generate", shape, obs)?;
        let mut rng = SplitMix(seed);
        let noise = (0..shape.iter().product::<usize>()).map(|_| rng.normal()).collect();
        let values = ddim_denoise(noise, &steps, &mut eps).await?;
        Ok((Latent { values, shape }, warnings))
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

/// ε = ε_u + g·(ε_c − ε_u), from one UNet call on a batch of 2 (uncond, cond).
struct Guided<'a> {
    editor: &'a mut Editor,
    /// `[2, 77, d]` (uncond, cond), or `[1, 77, d]` when guidance is 1.
    context: Tensor<3>,
    guidance: f64,
    shape: [usize; 4],
    stage: &'static str,
    done: usize,
    total: usize,
    obs: &'a mut dyn Observer,
}

impl NoisePredictor for Guided<'_> {
    async fn predict(&mut self, latent: &[f64], t: usize) -> Result<Vec<f64>> {
        if self.obs.cancelled() {
            return Err(PipelineError::Cancelled);
        }
        let batch = self.context.dims()[0];
        let [_, c, h, w] = self.shape;
        let x: Vec<f32> = latent.iter().map(|&v| v as f32).collect();
        let x = self.editor.upload(x, [1, c, h, w]).repeat_dim(0, batch);
        let out = self.editor.model.unet.forward(x, t as f64, &self.context);
        let v = read_f64(out).await?;
        self.editor.unet_calls += 1;
        self.done += 1;
        self.obs.progress(Progress {
            stage: self.stage,
            done: self.done,
            total: self.total,
        });
        let guided = if batch == 1 {
            v
        } else {
            let (u, cnd) = v.split_at(latent.len());
            let g = self.guidance;
            u.iter().zip(cnd).map(|(u, c)| u + g * (c - u)).collect()
        };
        Ok(match self.editor.model.configs.scheduler.prediction {
            Prediction::Epsilon => guided,
            // v = √ᾱ·ε − √(1−ᾱ)·x₀ and x_t = √ᾱ·x₀ + √(1−ᾱ)·ε give ε = √ᾱ·v + √(1−ᾱ)·x_t; affine
            // in v, so guiding v and converting equals converting each branch
            Prediction::V => {
                let at = self.editor.schedule.alphas_cumprod[t];
                let (sa, sb) = (at.sqrt(), (1.0 - at).sqrt());
                guided.iter().zip(latent).map(|(v, x)| sa * v + sb * x).collect()
            }
        })
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
