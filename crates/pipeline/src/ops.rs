//! The operations the CLI and the page offer, each over one [`Editor`]: a photo in, images and
//! typed reports out. The shells around them only read arguments or JS values, and write files
//! or hand bytes back.

use image::RgbImage;
use serde::Serialize;

use crate::editor::{Editor, Inversion, Latent, Observer, Progress, Rgb};
use crate::error::{PipelineError, Result};
use crate::io::image_io::{self, Size};
use crate::io::latents;
use crate::eval::metrics;
use crate::prompt_edit::EditSpec;
use crate::settings::{Method, Settings};

/// A photo sized for the model, and its latent.
pub struct Photo {
    /// The photo as sized: the "before" image reconstructions are compared with.
    pub image: Rgb,
    /// What sizing did, in a sentence.
    pub sizing: String,
    pub latent: Latent,
}

/// Sizes a decoded photo for the model (`size`, else the model's native long side) and encodes
/// it; `seed` samples the VAE posterior instead of taking its mean.
pub async fn encode_photo(ed: &mut Editor, img: RgbImage, size: Size, seed: Option<u64>, obs: &mut dyn Observer) -> Result<Photo> {
    let long_side = ed.model.configs.default_long_side();
    let (w, h) = image_io::fitting(img.dimensions(), size, long_side)?.size;
    ed.check_fits_memory(w as usize, h as usize)?;
    let (img, sizing) = image_io::fit(img, size, long_side)?;
    let (w, h) = (w as usize, h as usize);
    obs.vae(Progress { stage: "encode", done: 0, total: 1 });
    let latent = ed.encode(image_io::to_pixels(&img), h, w, seed).await?;
    obs.vae(Progress { stage: "encode", done: 1, total: 1 });
    Ok(Photo { image: image_io::from_rgb(&img), sizing, latent })
}

/// Decodes a latent to an image, unless the observer has cancelled.
pub async fn decode(ed: &mut Editor, latent: &Latent, obs: &mut dyn Observer) -> Result<Rgb> {
    if obs.cancelled() {
        return Err(PipelineError::Cancelled);
    }
    obs.vae(Progress { stage: "decode", done: 0, total: 1 });
    let rgb = ed.decode(latent).await?;
    obs.vae(Progress { stage: "decode", done: 1, total: 1 });
    Ok(rgb)
}

/// Reads a latents file (`shown` names it in errors) and checks that this model can edit it:
/// the weights that inverted it, and an image size that fits in memory.
pub fn read_latents(ed: &Editor, bytes: &[u8], shown: &str, model_name: &str) -> Result<Inversion> {
    let (inv, origin) = latents::from_bytes(bytes, shown)?;
    latents::check_fits(&inv, &origin, &ed.model, model_name, shown)?;
    let down = ed.model.configs.vae.downscale();
    ed.check_fits_memory(inv.latent.shape[3] * down, inv.latent.shape[2] * down)?;
    Ok(inv)
}

/// Denoises an inversion into each of `spec`'s targets (all in each UNet call) and decodes each:
/// one image per target, in order.
pub async fn edit(ed: &mut Editor, inv: &Inversion, spec: &EditSpec, obs: &mut dyn Observer) -> Result<Vec<Rgb>> {
    let pairs = ed.edit(inv, spec, "edit", obs).await?;
    let mut images = Vec::with_capacity(pairs.len());
    for pair in pairs {
        images.push(decode(ed, &Latent { values: pair.x_f64(), shape: inv.latent.shape }, obs).await?);
    }
    Ok(images)
}

/// How exact a reconstruction is: the latent round trip and the decoded image against the photo.
#[derive(Debug, Clone, Serialize)]
pub struct ReconstructReport {
    pub method: Method,
    /// `‖denoise(invert(z)) − z‖ / ‖z‖`: 0 for the exact samplers.
    pub latent_rel_err: f64,
    pub mse: f64,
    pub psnr: f64,
    pub ssim: f64,
    /// UNet calls made (each a batch of 2 under guidance).
    pub unet_evals: usize,
}

/// Inverts the photo and denoises it with the same prompt; the reconstructed image and its report.
pub async fn reconstruct(
    ed: &mut Editor,
    photo: &Photo,
    prompt: &str,
    s: &Settings,
    obs: &mut dyn Observer,
) -> Result<(Rgb, ReconstructReport)> {
    let rec = ed.reconstruct(&photo.latent, prompt, s, obs).await?;
    let rgb = decode(ed, &rec.latent, obs).await?;
    let q = metrics::compare(&photo.image, &rgb)?;
    let report = ReconstructReport {
        method: s.method,
        latent_rel_err: rec.latent_rel_err,
        mse: q.mse,
        psnr: q.psnr,
        ssim: q.ssim,
        unet_evals: rec.unet_evals,
    };
    Ok((rgb, report))
}

/// An image from a prompt: DDIM from seeded noise at `width`×`height` (default: the model's
/// native size).
pub async fn generate(
    ed: &mut Editor,
    prompt: &str,
    size: (Option<u32>, Option<u32>),
    seed: u64,
    s: &Settings,
    obs: &mut dyn Observer,
) -> Result<Rgb> {
    let native = ed.model.configs.default_long_side();
    let (width, height) = (size.0.unwrap_or(native), size.1.unwrap_or(native));
    Size::exact(width, height)?;
    ed.check_fits_memory(width as usize, height as usize)?;
    let latent = ed.generate(prompt, width as usize, height as usize, seed, s, obs).await?;
    decode(ed, &latent, obs).await
}
