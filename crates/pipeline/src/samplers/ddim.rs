//! DDIM, the paper's inexact baseline: one chain in f64.

use super::schedule::Step;
use super::{NoisePredictor, axpby, check_finite, undo};
use crate::error::Result;

/// Plain DDIM inversion, the paper's baseline: one chain, with ε taken at the latent being
/// inverted (the true ε at the noisier latent is unknown), so the round trip is approximate.
pub async fn ddim_invert(z: &[f64], steps: &[Step], eps: &mut impl NoisePredictor) -> Result<Vec<f64>> {
    let mut x = z.to_vec();
    for step in steps.iter().rev() {
        let e = eps.predict(std::slice::from_ref(&x), step.t).await?;
        x = undo(step.a, &x, step.b, &e[0]);
        check_finite(x.iter().copied(), "invert", step)?;
    }
    Ok(x)
}

/// Plain DDIM denoising of several chains, batched in each network call.
pub async fn ddim_denoise(mut xs: Vec<Vec<f64>>, steps: &[Step], eps: &mut impl NoisePredictor) -> Result<Vec<Vec<f64>>> {
    for step in steps {
        let e = eps.predict(&xs, step.t).await?;
        for (x, e) in xs.iter_mut().zip(&e) {
            *x = axpby(step.a, x, step.b, e);
            check_finite(x.iter().copied(), "denoise", step)?;
        }
    }
    Ok(xs)
}
