//! The [`Editor`]: a model on a device and what it does with it — image → latent, prompt →
//! embedding (cached), invert → noise pair, edit/reconstruct → latent → image ([`guidance`]: the
//! guided UNet calls; [`noise`]: generate and img2img). Async so browsers can read GPU results;
//! native code blocks on it with `pollster`. [`crate::ops`] builds the user-facing operations on it.

mod guidance;
mod noise;

use burn::tensor::{DType, Device, Tensor, TensorCreationOptions, TensorData};
use edict_sd::model::{StableDiffusion, TextEmbedding};
use edict_sd::models::autoencoder_tiny::AutoencoderTiny;
use edict_sd::models::vae::VaeConfig;

use crate::error::{PipelineError, Result};
pub use crate::io::image_io::Rgb;
use crate::prompt_edit::EditSpec;
use crate::samplers::{Pair, relative_error};
use crate::samplers::schedule::Schedule;
use crate::settings::Settings;
use noise::SplitMix;

/// Prompt embeddings kept on the device: an edit needs three (source, target, negative); `eval`
/// over thousands of captions must not keep them all.
pub const EMBEDDING_CACHE: usize = 8;

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
    /// tile per chain side by side, from a fixed linear map of the latent (see [`crate::io::preview`];
    /// 1/8 of the size), or decoded by the preview decoder (TAESD; full size).
    fn preview(&mut self, _p: Progress, _image: &Rgb) {}
    /// Before and after the VAE encodes or decodes (stage `encode` or `decode`, 0 then 1 of 1).
    fn vae(&mut self, _p: Progress) {}
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

/// The inverted noise, made by the sampler `settings` choose: EDICT's pair, the two-step
/// samplers' top two levels (x below y), DDIM's one chain (`x == y`).
#[derive(Debug, Clone, PartialEq)]
pub struct Inversion {
    pub pair: Pair,
    pub latent: Latent,
    pub prompt: String,
    pub settings: Settings,
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
    /// The last [`EMBEDDING_CACHE`] prompts' embeddings (by prompt and whether it is the
    /// negative one), least recently used first.
    embeddings: Vec<((String, bool), TextEmbedding)>,
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
    /// What bounds image-sized steps' memory where overrunning it would not fail cleanly, read
    /// before each of them ([`Self::check_fits_memory`]).
    pub memory: Option<MemoryLimit>,
    /// Decodes the live previews instead of the linear latent→RGB map ([`Self::set_preview_decoder`]).
    preview_decoder: Option<AutoencoderTiny>,
}

/// What decides a UNet call's kernels: the batch shape, and which attention controls run
/// (they add operations to the graph).
type WarmShape = ([usize; 4], Option<[bool; 3]>);

async fn read_f64<const D: usize>(t: Tensor<D>) -> Result<Vec<f64>> {
    Ok(edict_sd::device::backend::read(t).await?.into_iter().map(f64::from).collect())
}

/// `[k, 3, h, w]` images in [−1, 1] as one 8-bit RGB image, the k side by side.
async fn images_side_by_side(img: Tensor<4>) -> Result<Rgb> {
    let [k, _, h, w] = img.dims();
    let v = read_f64(img).await?;
    let width = k * w;
    let mut data = vec![0u8; width * h * 3];
    for (tile, chw) in v.chunks_exact(3 * h * w).enumerate() {
        for c in 0..3 {
            for i in 0..h * w {
                let x = ((chw[c * h * w + i] + 1.0) * 127.5).round().clamp(0.0, 255.0);
                data[((i / w) * width + tile * w + i % w) * 3 + c] = x as u8;
            }
        }
    }
    Ok(Rgb { width, height: h, data })
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
            memory: None,
            preview_decoder: None,
        }
    }

    /// Previews decoded by `tiny` (TAESD) from now on: images that look like the VAE's, at full
    /// size, for a few small convolutions per UNet call. Refused when its latent space cannot be
    /// the model's (channels, downscale).
    pub fn set_preview_decoder(&mut self, tiny: AutoencoderTiny) -> Result<()> {
        let vae = &self.model.configs.vae;
        let c = &tiny.config;
        if c.latent_channels != vae.latent_channels || c.downscale() != vae.downscale() || c.out_channels != 3 {
            return Err(PipelineError::Invalid(format!(
                "the preview decoder takes {} latent channels at 1/{} size to {} colours; this model's VAE has {} at 1/{} (use madebyollin/taesd for SD 1.x/2.x, madebyollin/taesdxl for SDXL)",
                c.latent_channels,
                c.downscale(),
                c.out_channels,
                vae.latent_channels,
                vae.downscale()
            )));
        }
        self.preview_decoder = Some(tiny);
        Ok(())
    }

    /// Back to the linear latent→RGB previews.
    pub fn clear_preview_decoder(&mut self) {
        self.preview_decoder = None;
    }

    /// Refuses a `width`×`height` image whose VAE activations cannot fit in what
    /// [`Self::memory`] leaves ([`check_memory`]); elsewhere GPU allocations that fail are
    /// reported by the device instead.
    pub fn check_fits_memory(&self, width: usize, height: usize) -> Result<()> {
        match self.memory.and_then(|m| m.available()) {
            Some((available, held)) => check_memory(&self.model.configs.vae, width, height, self.vae_dtype().size(), available, &held),
            None => Ok(()),
        }
    }

    fn dtype(&self) -> DType {
        self.model.unet.conv_in.weight.val().dtype()
    }

    /// The VAE's dtype: the UNet's, or f32 for an upcast SDXL VAE.
    pub fn vae_dtype(&self) -> DType {
        self.model.vae.quant_conv.weight.val().dtype()
    }

    fn upload<const D: usize>(&self, values: Vec<f32>, shape: [usize; D]) -> Tensor<D> {
        self.upload_as(values, shape, self.dtype())
    }

    fn upload_as<const D: usize>(&self, values: Vec<f32>, shape: [usize; D], dtype: DType) -> Tensor<D> {
        Tensor::from_data(TensorData::new(values, shape), TensorCreationOptions::new(self.device.clone()).with_dtype(dtype))
    }

    /// The conditioning of `prompt` ([`StableDiffusion::encode_prompt`]; `negative`: the
    /// prompt guidance steers away from), computed once per prompt while it stays among the
    /// last [`EMBEDDING_CACHE`] used; and the warning of a prompt cut at 77 tokens.
    pub fn embed(&mut self, prompt: &str, negative: bool) -> Result<(TextEmbedding, Option<String>)> {
        let key = (prompt.to_string(), negative);
        let cached = self.embeddings.iter().position(|(k, _)| *k == key).map(|i| self.embeddings.remove(i).1);
        let (e, tokens) = match cached {
            Some(e) => (e, self.model.tokenizer.encode(prompt)?),
            None => self.model.encode_prompt(prompt, negative)?,
        };
        let warning = tokens.truncated.then(|| {
            format!(
                "prompt is longer than 77 tokens; dropped: \"{}\"",
                tokens.dropped.trim()
            )
        });
        // most recently used last
        if self.embeddings.len() == EMBEDDING_CACHE {
            self.embeddings.remove(0);
        }
        self.embeddings.push((key, e.clone()));
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
        let img = self.upload_as(pixels, [1, 3, h, w], self.vae_dtype());
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
        let img = self.model.vae.decode(self.upload_as(z, latent.shape, self.vae_dtype()));
        images_side_by_side(img).await
    }

    /// The preview decoder's images of `latents` (each `shape`, at the UNet's scale), side by
    /// side; `None` without a preview decoder.
    async fn preview_decoded(&self, latents: &[Vec<f64>], shape: [usize; 4]) -> Result<Option<Rgb>> {
        let Some(tiny) = &self.preview_decoder else { return Ok(None) };
        let [_, c, h, w] = shape;
        let z = latents.iter().flatten().map(|&v| v as f32).collect();
        let img = tiny.decode(self.upload_as(z, [latents.len(), c, h, w], DType::F32));
        images_side_by_side(img).await.map(Some)
    }

    /// Inverts `latent` under `prompt` with the sampler `s` chooses.
    pub async fn invert(&mut self, latent: &Latent, prompt: &str, s: &Settings, obs: &mut dyn Observer) -> Result<Inversion> {
        let (steps, mut eps) = self.guided(prompt, &EditSpec::to(prompt), s, true, "invert", latent.shape, obs)?;
        let pair = s.sampler().invert(&latent.values, &steps, &mut eps).await?;
        Ok(Inversion {
            pair,
            latent: latent.clone(),
            prompt: prompt.to_string(),
            settings: s.clone(),
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
        let (steps, mut eps) = self.guided(&inv.prompt, spec, s, false, stage, inv.latent.shape, obs)?;
        s.sampler().denoise(vec![inv.pair.clone(); spec.targets.len()], &steps, &mut eps).await
    }

    /// Invert then denoise with the same prompt; the exact samplers return `z` bit for bit.
    pub async fn reconstruct(&mut self, latent: &Latent, prompt: &str, s: &Settings, obs: &mut dyn Observer) -> Result<Reconstruction> {
        let before = self.unet_calls;
        let inv = self.invert(latent, prompt, s, obs).await?;
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

/// Buffers SwiftShader holds before Chromium's GPU process dies. They live on that process's
/// PartitionAlloc heap: 16 GiB of address space, each buffer above about 1 MiB reserved in 2 MiB
/// steps, so 64 MiB weight packs (`edict_sd::checkpoint::stream::PACK_BYTES`) fill it at
/// 16 GiB × 64/66 (a probe page fitted 15.6 GiB of 50 MiB buffers, Chromium 156).
pub const SWIFTSHADER_HEAP_BYTES: u64 = (16 << 30) / 66 * 64;

/// What bounds the memory of image-sized steps where running past it fails badly.
#[derive(Debug, Clone, Copy)]
pub enum MemoryLimit {
    /// The host's memory (the CPU backend; the OS kills the process that exhausts it): what can
    /// still be allocated, read each time.
    Host(fn() -> Option<u64>),
    /// SwiftShader's heap ([`SWIFTSHADER_HEAP_BYTES`]), of which the weights hold `weights`
    /// bytes; overrunning it kills the browser's GPU process.
    SwiftShader { weights: u64 },
}

impl MemoryLimit {
    /// Bytes image-sized steps can still take, and what holds the rest, for the error.
    pub fn available(&self) -> Option<(u64, String)> {
        match *self {
            Self::Host(free) => free().map(|b| (b, String::new())),
            Self::SwiftShader { weights } => Some((
                SWIFTSHADER_HEAP_BYTES.saturating_sub(weights),
                format!(
                    " (SwiftShader, the browser's software WebGPU, keeps all buffers on a {:.1} GiB heap and the \
                     weights take {:.1} GiB)",
                    gib(SWIFTSHADER_HEAP_BYTES),
                    gib(weights)
                ),
            )),
        }
    }

    /// The largest square image side, a multiple of 64, whose VAE activations in
    /// `element_bytes` fit ([`check_memory`]); `None` when not even 64×64 does.
    pub fn largest_square(&self, vae: &VaeConfig, element_bytes: usize) -> Option<usize> {
        let (available, _) = self.available()?;
        let per_pixel = vae.activation_bytes(1, 1, element_bytes).max(1);
        let side = ((available / per_pixel) as f64).sqrt() as usize / 64 * 64;
        (side > 0).then_some(side)
    }
}

fn gib(bytes: u64) -> f64 {
    bytes as f64 / (1u64 << 30) as f64
}

/// Refuses an image size whose VAE activations cannot fit in `available` bytes (`held`: what
/// takes the rest, said in the error), rather than run for minutes and be killed.
pub fn check_memory(vae: &VaeConfig, width: usize, height: usize, element_bytes: usize, available: u64, held: &str) -> Result<()> {
    let need = vae.activation_bytes(width, height, element_bytes);
    if need > available {
        return Err(PipelineError::Invalid(format!(
            "a {width}×{height} image needs at least {:.1} GiB of memory in the VAE, but {:.1} GiB is \
             available{held}; use a smaller size or a GPU",
            gib(need),
            gib(available)
        )));
    }
    Ok(())
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
        assert!(check_memory(&sd, 1024, 1024, 4, 5 << 30, "").is_ok());
        let err = check_memory(&sd, 1024, 1024, 4, 3 << 30, "").unwrap_err().to_string();
        assert!(err.starts_with("a 1024×1024 image needs at least 4.0 GiB of memory in the VAE, but 3.0 GiB"), "{err}");
    }

    /// SDXL in f32 (SwiftShader has no shader-f16) on SwiftShader's heap: its weights on the
    /// device leave room for 832² images, not its native 1024².
    #[test]
    fn swiftshader_heap_holds_sdxl_f32_up_to_832() {
        let sdxl = edict_sd::config::SdConfigs::sdxl();
        let weights = sdxl.footprint(edict_sd::config::Precision::F32, 1024, 1024).weight_bytes;
        let limit = MemoryLimit::SwiftShader { weights };
        let (available, held) = limit.available().unwrap();
        assert_eq!(SWIFTSHADER_HEAP_BYTES, 16_659_267_072);
        assert_eq!(available, SWIFTSHADER_HEAP_BYTES - weights);
        assert_eq!(limit.largest_square(&sdxl.vae, 4), Some(832));
        assert!(check_memory(&sdxl.vae, 832, 832, 4, available, &held).is_ok());
        let err = check_memory(&sdxl.vae, 1024, 1024, 4, available, &held).unwrap_err().to_string();
        assert_eq!(
            err,
            "a 1024×1024 image needs at least 4.0 GiB of memory in the VAE, but 3.0 GiB is available (SwiftShader, \
             the browser's software WebGPU, keeps all buffers on a 15.5 GiB heap and the weights take 12.5 GiB); \
             use a smaller size or a GPU"
        );
        // weights past the heap leave nothing, not an underflow
        assert_eq!(MemoryLimit::SwiftShader { weights: 20 << 30 }.largest_square(&sdxl.vae, 4), None);
    }
}
