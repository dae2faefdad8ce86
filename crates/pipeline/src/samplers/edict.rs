//! EDICT (Wallace et al. 2022): two coupled latents, each step's updates and mixing in
//! double-double so that the inverse reproduces every network input to the bit.

use super::schedule::Step;
use super::{NoisePredictor, Pair, axpby, check_pair, hi, predict, undo};
use crate::error::{PipelineError, Result};

/// EDICT's knobs: mixing weight p and leapfrog (alternating which latent moves first).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Edict {
    pub mix: f64,
    pub leapfrog: bool,
}

impl Default for Edict {
    fn default() -> Self {
        Self {
            mix: 0.93,
            leapfrog: true,
        }
    }
}

impl Edict {
    /// Validates p: it must be in (0.5, 1]; below ~0.9 inversion diverges even in f64,
    /// which the returned warning says.
    pub fn validate(&self) -> Result<Option<String>> {
        if !(self.mix > 0.5 && self.mix <= 1.0) {
            return Err(PipelineError::Invalid(format!(
                "mix must be in (0.5, 1], got {}",
                self.mix
            )));
        }
        Ok((self.mix < 0.9).then(|| {
            format!(
                "mix {} < 0.9: EDICT's inversion amplifies errors by 1/p² per step and may diverge",
                self.mix
            )
        }))
    }

    /// Leapfrog: x moves first at even denoising positions, y at odd ones. The parity belongs
    /// to the step's position in DENOISING order, so inversion (which walks the steps in
    /// reverse) uses the same parity at the same timestep, for any number of steps.
    fn x_first(&self, step: &Step) -> bool {
        !self.leapfrog || step.index % 2 == 0
    }

    /// One coupled denoising step at `step.t`, for every pair (their network calls batched).
    async fn denoise_step(&self, pairs: &mut [Pair], step: &Step, eps: &mut impl NoisePredictor) -> Result<()> {
        let (a, b, p) = (step.a, step.b, self.mix);
        let x_first = self.x_first(step);
        // u ← a·u + b·ε(v)
        let e = predict(eps, pairs.iter_mut().map(|q| hi(q.uv(x_first).1)).collect(), step.t).await?;
        for (q, e) in pairs.iter_mut().zip(&e) {
            let (u, _) = q.uv(x_first);
            *u = axpby(a, u, b, e);
        }
        // v ← a·v + b·ε(u_new)
        let e = predict(eps, pairs.iter_mut().map(|q| hi(q.uv(x_first).0)).collect(), step.t).await?;
        for (q, e) in pairs.iter_mut().zip(&e) {
            let (_, v) = q.uv(x_first);
            *v = axpby(a, v, b, e);
        }
        for q in pairs {
            // mixing, always x then y (y uses the new x)
            q.x = axpby(p, &q.x, 1.0 - p, &q.y);
            q.y = axpby(p, &q.y, 1.0 - p, &q.x);
            check_pair(q, "denoise", step)?;
        }
        Ok(())
    }

    /// The exact inverse of [`Self::denoise_step`] at the same timestep.
    async fn invert_step(&self, pair: &mut Pair, step: &Step, eps: &mut impl NoisePredictor) -> Result<()> {
        let (a, b, p) = (step.a, step.b, self.mix);
        // undo mixing: y first (it was mixed last), then x
        pair.y = undo(p, &pair.y, 1.0 - p, &pair.x);
        pair.x = undo(p, &pair.x, 1.0 - p, &pair.y);
        let (u, v) = pair.uv(self.x_first(step));
        // undo the updates in reverse order: v was updated from u, then u from v
        *v = undo(a, v, b, &predict(eps, vec![hi(u)], step.t).await?[0]);
        *u = undo(a, u, b, &predict(eps, vec![hi(v)], step.t).await?[0]);
        check_pair(pair, "invert", step)
    }

    /// Inverts the image latent `z` to the noise pair at the first step of `steps`
    /// (`steps` in denoising order, as [`crate::samplers::schedule::Schedule::steps`] gives them).
    pub async fn invert(&self, z: &[f64], steps: &[Step], eps: &mut impl NoisePredictor) -> Result<Pair> {
        let mut pair = Pair::of(z);
        for step in steps.iter().rev() {
            self.invert_step(&mut pair, step, eps).await?;
        }
        Ok(pair)
    }

    /// Denoises noise pairs through `steps`, all pairs in each network call (the predictor's
    /// i-th latent belongs to the i-th pair); the authors decode `x`.
    pub async fn denoise(&self, mut pairs: Vec<Pair>, steps: &[Step], eps: &mut impl NoisePredictor) -> Result<Vec<Pair>> {
        for step in steps {
            self.denoise_step(&mut pairs, step, eps).await?;
        }
        Ok(pairs)
    }
}
