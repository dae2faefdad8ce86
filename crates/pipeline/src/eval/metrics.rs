//! Reconstruction quality as the EDICT paper reports it: MSE on pixels in [−1, 1], PSNR, SSIM.

use crate::error::{PipelineError, Result};
use crate::io::image_io::Rgb;

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Quality {
    pub mse: f64,
    /// dB, for a data range of 2 (pixels in [−1, 1]); infinite for identical images.
    pub psnr: f64,
    pub ssim: f64,
}

fn channels(img: &Rgb) -> [Vec<f64>; 3] {
    std::array::from_fn(|c| img.data.iter().skip(c).step_by(3).map(|&v| v as f64 / 127.5 - 1.0).collect())
}

pub fn compare(a: &Rgb, b: &Rgb) -> Result<Quality> {
    if (a.width, a.height) != (b.width, b.height) {
        return Err(PipelineError::Invalid(format!(
            "images differ in size: {}×{} vs {}×{}",
            a.width, a.height, b.width, b.height
        )));
    }
    let (ca, cb) = (channels(a), channels(b));
    let n = (a.width * a.height * 3) as f64;
    let mse = ca.iter().zip(&cb).flat_map(|(x, y)| x.iter().zip(y)).map(|(x, y)| (x - y).powi(2)).sum::<f64>() / n;
    let psnr = 10.0 * (4.0 / mse).log10();
    let ssim = ca.iter().zip(&cb).map(|(x, y)| ssim_channel(x, y, a.width, a.height, 2.0, Border::Valid)).sum::<f64>() / 3.0;
    Ok(Quality { mse, psnr, ssim })
}

/// Which window positions SSIM averages over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Border {
    /// Windows inside the image only (Wang et al.'s MATLAB code, scikit-image; what the EDICT
    /// paper's reconstruction numbers use).
    Valid,
    /// Every pixel, the image reflect-padded by the window radius (torch's `reflect`: the edge
    /// pixel is not repeated): torchmetrics' `StructuralSimilarityIndexMeasure` since
    /// Lightning-AI/torchmetrics#2721 (1.5, 2024), the one PIE-Bench's script calls today.
    Reflect,
}

/// Wang et al. (2004) SSIM of one channel (`w × h`, row-major): 11×11 Gaussian window
/// (σ = 1.5), K1 = 0.01, K2 = 0.03, for a data range of `range`, variances clamped at 0 (as
/// torchmetrics), averaged over the positions `border` selects.
pub fn ssim_channel(x: &[f64], y: &[f64], w: usize, h: usize, range: f64, border: Border) -> f64 {
    const R: usize = 5;
    let g: Vec<f64> = {
        let v: Vec<f64> = (0..=2 * R).map(|i| (-((i as f64 - R as f64).powi(2)) / (2.0 * 1.5 * 1.5)).exp()).collect();
        let s: f64 = v.iter().sum();
        v.into_iter().map(|e| e / s).collect()
    };
    let c = ((0.01 * range).powi(2), (0.03 * range).powi(2));
    if w <= 2 * R || h <= 2 * R {
        // too small for the window: fall back to global statistics
        return ssim_from(mean(x), mean(y), var(x, x), var(y, y), var(x, y), c);
    }
    // output (ow × oh) position (i, j) sees input columns i − off … i − off + 2R (reflected)
    let (ow, oh, off) = match border {
        Border::Valid => (w - 2 * R, h - 2 * R, 0),
        Border::Reflect => (w, h, R),
    };
    let at = |i: usize, n: usize| -> usize {
        let i = i as isize - off as isize;
        let n = n as isize;
        (if i < 0 { -i } else if i >= n { 2 * (n - 1) - i } else { i }) as usize
    };
    let blur = |img: &[f64]| -> Vec<f64> {
        let mut rows = vec![0.0; ow * h];
        for yy in 0..h {
            for xx in 0..ow {
                rows[yy * ow + xx] = (0..=2 * R).map(|k| g[k] * img[yy * w + at(xx + k, w)]).sum();
            }
        }
        let mut out = vec![0.0; ow * oh];
        for yy in 0..oh {
            for xx in 0..ow {
                out[yy * ow + xx] = (0..=2 * R).map(|k| g[k] * rows[at(yy + k, h) * ow + xx]).sum();
            }
        }
        out
    };
    let prod = |a: &[f64], b: &[f64]| a.iter().zip(b).map(|(p, q)| p * q).collect::<Vec<_>>();
    let (mx, my) = (blur(x), blur(y));
    let (sxx, syy, sxy) = (blur(&prod(x, x)), blur(&prod(y, y)), blur(&prod(x, y)));
    let vals: Vec<f64> = (0..mx.len())
        .map(|i| ssim_from(mx[i], my[i], sxx[i] - mx[i] * mx[i], syy[i] - my[i] * my[i], sxy[i] - mx[i] * my[i], c))
        .collect();
    mean(&vals)
}

fn ssim_from(mx: f64, my: f64, vx: f64, vy: f64, cxy: f64, (c1, c2): (f64, f64)) -> f64 {
    let (vx, vy) = (vx.max(0.0), vy.max(0.0));
    ((2.0 * mx * my + c1) * (2.0 * cxy + c2)) / ((mx * mx + my * my + c1) * (vx + vy + c2))
}

fn mean(v: &[f64]) -> f64 {
    v.iter().sum::<f64>() / v.len() as f64
}

fn var(a: &[f64], b: &[f64]) -> f64 {
    let (ma, mb) = (mean(a), mean(b));
    a.iter().zip(b).map(|(x, y)| (x - ma) * (y - mb)).sum::<f64>() / a.len() as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    fn img(w: usize, h: usize, f: impl Fn(usize, usize, usize) -> u8) -> Rgb {
        let mut data = Vec::with_capacity(w * h * 3);
        for y in 0..h {
            for x in 0..w {
                for c in 0..3 {
                    data.push(f(x, y, c));
                }
            }
        }
        Rgb { width: w, height: h, data }
    }

    #[test]
    fn identical_and_different_images() {
        let a = img(32, 32, |x, y, c| ((x * 7 + y * 3 + c * 50) % 256) as u8);
        let q = compare(&a, &a).unwrap();
        assert_eq!(q.mse, 0.0);
        assert!(q.psnr.is_infinite());
        assert!((q.ssim - 1.0).abs() < 1e-12);
        // a constant offset of 10 levels: mse = (10/127.5)², psnr = 10·log10(4/mse)
        let flat = img(32, 32, |_, _, _| 100);
        let brighter = img(32, 32, |_, _, _| 110);
        let q = compare(&flat, &brighter).unwrap();
        let mse = (10.0f64 / 127.5).powi(2);
        assert!((q.mse - mse).abs() < 1e-15);
        assert!((q.psnr - 10.0 * (4.0 / mse).log10()).abs() < 1e-9);
        assert!(q.ssim < 1.0 && q.ssim > 0.9);
        assert!(compare(&flat, &img(16, 32, |_, _, _| 0)).is_err());
    }
}
