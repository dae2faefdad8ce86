//! A live preview without the VAE: SD latents map to RGB almost linearly, so a fixed 4×3
//! matrix and a bias turn a 1/8-size latent into a recognisable 1/8-size image in microseconds.
//! The coefficients are ComfyUI's (`comfy/latent_formats.py`, classes `SD15` and `SDXL`,
//! `latent_rgb_factors` and `latent_rgb_factors_bias`), fitted on latents as the UNet sees them
//! (times the scaling factor); SD 2.x shares SD 1.x's VAE and so its latent space, SDXL's VAE
//! was retrained and has its own.

use crate::io::image_io::Rgb;

/// `factors[latent channel][r, g, b]` and a bias per colour; the result is in [−1, 1] like the
/// VAE's output.
pub struct LatentRgb {
    factors: [[f64; 3]; 4],
    bias: [f64; 3],
}

/// SD 1.x and 2.x latents.
pub const SD: LatentRgb = LatentRgb {
    factors: [
        [0.3512, 0.2297, 0.3227],
        [0.3250, 0.4974, 0.2350],
        [-0.2829, 0.1762, 0.2721],
        [-0.2120, -0.2616, -0.7177],
    ],
    bias: [0.0; 3],
};

/// SDXL latents.
pub const SDXL: LatentRgb = LatentRgb {
    factors: [
        [0.3651, 0.4232, 0.4341],
        [-0.2533, -0.0042, 0.1068],
        [0.1076, 0.1111, -0.0362],
        [-0.3165, -0.2492, -0.2188],
    ],
    bias: [0.1084, -0.0175, -0.0011],
};

/// The latents (each `[1, 4, h, w]` as `shape` says, scaled as the UNet sees them) as one image,
/// side by side, through `map`. `None` for latents without 4 channels, which no map describes.
pub fn latents_to_rgb(latents: &[Vec<f64>], shape: [usize; 4], map: &LatentRgb) -> Option<Rgb> {
    let [_, c, h, w] = shape;
    if c != map.factors.len() || latents.is_empty() {
        return None;
    }
    let width = w * latents.len();
    let mut data = vec![0u8; width * h * 3];
    for (tile, z) in latents.iter().enumerate() {
        for y in 0..h {
            for x in 0..w {
                let px = &mut data[((y * width) + tile * w + x) * 3..][..3];
                for (ch, out) in px.iter_mut().enumerate() {
                    let v: f64 = map.bias[ch] + (0..c).map(|l| z[(l * h + y) * w + x] * map.factors[l][ch]).sum::<f64>();
                    *out = ((v + 1.0) * 127.5).round().clamp(0.0, 255.0) as u8;
                }
            }
        }
    }
    Some(Rgb { width, height: h, data })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tiles_side_by_side_through_the_matrix() {
        // latent 1: channel 0 = 1 everywhere; latent 2: channel 3 = −1 everywhere
        let shape = [1, 4, 2, 3];
        let n = 2 * 3;
        let mut a = vec![0.0; 4 * n];
        a[..n].fill(1.0);
        let mut b = vec![0.0; 4 * n];
        b[3 * n..].fill(-1.0);
        let img = latents_to_rgb(&[a.clone(), b], shape, &SD).unwrap();
        assert_eq!((img.width, img.height), (6, 2));
        let px = |x: usize, y: usize| &img.data[(y * 6 + x) * 3..][..3];
        let expect = |rgb: [f64; 3]| rgb.map(|v| ((v + 1.0) * 127.5).round() as u8);
        assert_eq!(px(0, 0), expect([0.3512, 0.2297, 0.3227]));
        assert_eq!(px(2, 1), expect([0.3512, 0.2297, 0.3227]));
        assert_eq!(px(3, 0), expect([0.2120, 0.2616, 0.7177]));
        assert_eq!(px(5, 1), expect([0.2120, 0.2616, 0.7177]));
        assert!(latents_to_rgb(&[vec![0.0; 8]], [1, 8, 1, 1], &SD).is_none());
        // SDXL's map has a bias
        let img = latents_to_rgb(&[a], shape, &SDXL).unwrap();
        assert_eq!(&img.data[..3], &expect([0.3651 + 0.1084, 0.4232 - 0.0175, 0.4341 - 0.0011]));
    }
}
