//! What starts from seeded Gaussian noise: text-to-image, img2img (SDEdit), and the noise itself.

use super::{Editor, Latent, Observer};
use crate::error::{PipelineError, Result};
use crate::prompt_edit::EditSpec;
use crate::samplers::ddim::ddim_denoise;
use crate::settings::{Method, Settings};

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
        crate::io::image_io::check_pixels(width as u64, height as u64)?;
        let s = Settings { strength: 1.0, method: Method::Ddim, ..s.clone() };
        let shape = [1, self.model.configs.vae.latent_channels, height / down, width / down];
        // one DDIM chain: one UNet call per step
        let (steps, mut eps) = self.guided(prompt, &EditSpec::to(prompt), &s, false, "generate", shape, obs)?;
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
        let s = &Settings { method: Method::Ddim, ..s.clone() };
        let (steps, _) = s.validate(&self.schedule)?;
        let at = self.schedule.alphas_cumprod[steps[0].t];
        let mut rng = SplitMix(seed);
        let noisy = latent.values.iter().map(|z| at.sqrt() * z + (1.0 - at).sqrt() * rng.normal()).collect();
        let (steps, mut eps) = self.guided(prompt, &EditSpec::to(prompt), s, false, "img2img", latent.shape, obs)?;
        let values = ddim_denoise(vec![noisy], &steps, &mut eps).await?.remove(0);
        Ok(Latent { values, shape: latent.shape })
    }
}

/// A tiny seeded normal generator for posterior sampling: reproducible on every platform.
pub(super) struct SplitMix(pub(super) u64);

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
    pub(super) fn normal(&mut self) -> f64 {
        let (u1, u2) = (self.next_f64(), self.next_f64());
        (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
    }
}
