//! EDICT (Wallace et al. 2022) and DDIM, on latents held in f64 on the host.
//!
//! The sampler sees no tensor library: it calls a [`NoisePredictor`] `ε(latent, t)` (the
//! classifier-free-guided UNet, bound to one prompt) and does every step's arithmetic in f64.
//! EDICT's inverse expands errors by 1/p² per step, so this split — networks in f32/f16 on the
//! device, coupling in f64 here — is what makes the round trip exact to f64 rounding, given a
//! deterministic predictor. Equations: shared/docs/EDICT.md.

use crate::error::{PipelineError, Result};
use crate::schedule::Step;

/// The classifier-free-guided noise prediction for one latent at one timestep.
/// Async because browsers can only read GPU results asynchronously.
#[allow(async_fn_in_trait)]
pub trait NoisePredictor {
    async fn predict(&mut self, latent: &[f64], t: usize) -> Result<Vec<f64>>;
}

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

/// The coupled latents (x, y); both start as the image latent.
#[derive(Debug, Clone, PartialEq)]
pub struct Pair {
    pub x: Vec<f64>,
    pub y: Vec<f64>,
}

/// `out = a·u + b·e`
fn axpby(a: f64, u: &[f64], b: f64, e: &[f64]) -> Vec<f64> {
    u.iter().zip(e).map(|(u, e)| a * u + b * e).collect()
}

/// `out = (v − b·e) / a`, the exact inverse of [`axpby`].
fn undo(a: f64, v: &[f64], b: f64, e: &[f64]) -> Vec<f64> {
    v.iter().zip(e).map(|(v, e)| (v - b * e) / a).collect()
}

fn check_finite(v: &[f64], stage: &'static str, step: &Step) -> Result<()> {
    if v.iter().all(|x| x.is_finite()) {
        Ok(())
    } else {
        Err(PipelineError::NonFinite {
            stage,
            step: step.index,
            timestep: step.t,
        })
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

    /// One coupled denoising step at `step.t`.
    async fn denoise_step(&self, pair: &mut Pair, step: &Step, eps: &mut impl NoisePredictor) -> Result<()> {
        let (a, b, p) = (step.a, step.b, self.mix);
        let x_first = self.x_first(step);
        let (u, v) = if x_first { (&mut pair.x, &mut pair.y) } else { (&mut pair.y, &mut pair.x) };
        // u ← a·u + b·ε(v);  v ← a·v + b·ε(u_new)
        *u = axpby(a, u, b, &eps.predict(v, step.t).await?);
        *v = axpby(a, v, b, &eps.predict(u, step.t).await?);
        // mixing, always x then y (y uses the new x)
        pair.x = axpby(p, &pair.x, 1.0 - p, &pair.y);
        pair.y = axpby(p, &pair.y, 1.0 - p, &pair.x);
        check_finite(&pair.x, "denoise", step)?;
        check_finite(&pair.y, "denoise", step)
    }

    /// The exact inverse of [`Self::denoise_step`] at the same timestep.
    async fn invert_step(&self, pair: &mut Pair, step: &Step, eps: &mut impl NoisePredictor) -> Result<()> {
        let (a, b, p) = (step.a, step.b, self.mix);
        // undo mixing: y first (it was mixed last), then x
        pair.y = undo(p, &pair.y, 1.0 - p, &pair.x);
        pair.x = undo(p, &pair.x, 1.0 - p, &pair.y);
        let x_first = self.x_first(step);
        let (u, v) = if x_first { (&mut pair.x, &mut pair.y) } else { (&mut pair.y, &mut pair.x) };
        // undo the updates in reverse order: v was updated from u, then u from v
        *v = undo(a, v, b, &eps.predict(u, step.t).await?);
        *u = undo(a, u, b, &eps.predict(v, step.t).await?);
        check_finite(&pair.x, "invert", step)?;
        check_finite(&pair.y, "invert", step)
    }

    /// Inverts the image latent `z` to the noise pair at the first step of `steps`
    /// (`steps` in denoising order, as [`crate::schedule::Schedule::steps`] gives them).
    pub async fn invert(&self, z: &[f64], steps: &[Step], eps: &mut impl NoisePredictor) -> Result<Pair> {
        let mut pair = Pair {
            x: z.to_vec(),
            y: z.to_vec(),
        };
        for step in steps.iter().rev() {
            self.invert_step(&mut pair, step, eps).await?;
        }
        Ok(pair)
    }

    /// Denoises a noise pair through `steps`; the authors decode `x`.
    pub async fn denoise(&self, mut pair: Pair, steps: &[Step], eps: &mut impl NoisePredictor) -> Result<Pair> {
        for step in steps {
            self.denoise_step(&mut pair, step, eps).await?;
        }
        Ok(pair)
    }
}

/// Plain DDIM inversion, the paper's baseline: one chain, with ε taken at the latent being
/// inverted (the true ε at the noisier latent is unknown), so the round trip is approximate.
pub async fn ddim_invert(z: &[f64], steps: &[Step], eps: &mut impl NoisePredictor) -> Result<Vec<f64>> {
    let mut x = z.to_vec();
    for step in steps.iter().rev() {
        let e = eps.predict(&x, step.t).await?;
        x = undo(step.a, &x, step.b, &e);
        check_finite(&x, "invert", step)?;
    }
    Ok(x)
}

/// Plain DDIM denoising of one latent.
pub async fn ddim_denoise(mut x: Vec<f64>, steps: &[Step], eps: &mut impl NoisePredictor) -> Result<Vec<f64>> {
    for step in steps {
        let e = eps.predict(&x, step.t).await?;
        x = axpby(step.a, &x, step.b, &e);
        check_finite(&x, "denoise", step)?;
    }
    Ok(x)
}

/// `‖a − b‖ / ‖b‖`
pub fn relative_error(a: &[f64], b: &[f64]) -> f64 {
    let num: f64 = a.iter().zip(b).map(|(x, y)| (x - y) * (x - y)).sum();
    let den: f64 = b.iter().map(|y| y * y).sum();
    (num / den).sqrt()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schedule::Schedule;

    /// A deterministic, nonlinear predictor that depends on the latent and the timestep, so a
    /// wrong ε (wrong latent, wrong order, wrong t) breaks the round trip.
    struct Analytic {
        calls: usize,
    }

    impl NoisePredictor for Analytic {
        async fn predict(&mut self, latent: &[f64], t: usize) -> Result<Vec<f64>> {
            self.calls += 1;
            let s = t as f64 / 1000.0;
            let mean = latent.iter().sum::<f64>() / latent.len() as f64;
            Ok(latent
                .iter()
                .enumerate()
                .map(|(i, v)| (v * (1.0 + s)).sin() + 0.3 * (i as f64 * 0.1 + s).cos() + 0.2 * mean * v)
                .collect())
        }
    }

    fn latent() -> Vec<f64> {
        (0..64).map(|i| ((i * 37 % 17) as f64 - 8.0) / 5.0).collect()
    }

    fn run<F: std::future::Future>(f: F) -> F::Output {
        pollster::block_on(f)
    }

    #[test]
    fn edict_round_trip_is_exact_for_any_step_count() {
        let sched = Schedule::default();
        let z = latent();
        for leapfrog in [true, false] {
            for n in [1, 2, 7, 10, 35, 50] {
                for strength in [0.3, 0.7, 0.8, 1.0] {
                    let Ok(steps) = sched.steps(n, strength, 0) else {
                        continue; // e.g. 1 step at strength 0.3 runs nothing
                    };
                    let e = Edict { mix: 0.93, leapfrog };
                    let mut eps = Analytic { calls: 0 };
                    let pair = run(e.invert(&z, &steps, &mut eps)).unwrap();
                    assert_eq!(eps.calls, 2 * steps.len());
                    let back = run(e.denoise(pair.clone(), &steps, &mut eps)).unwrap();
                    let err = relative_error(&back.x, &z).max(relative_error(&back.y, &z));
                    assert!(
                        err <= 1e-12,
                        "n={n} s={strength} leapfrog={leapfrog}: round trip {err:e}"
                    );
                    // the inverted pair really moved away from z (a lone t = 0 step is the identity)
                    if steps[0].t > 0 {
                        assert!(relative_error(&pair.x, &z) > 1e-3);
                    }
                }
            }
        }
    }

    #[test]
    fn denoising_with_the_other_parity_does_not_round_trip() {
        // A port that takes the parity from the inversion loop's own counter (the diffusers
        // community pipeline) inverts with the other parity for one step-count parity; this
        // is what that costs, so the round-trip tests above can tell.
        let sched = Schedule::default();
        let z = latent();
        let steps = sched.steps(50, 0.7, 0).unwrap();
        assert_eq!(steps.len(), 35);
        let e = Edict::default();
        let mut eps = Analytic { calls: 0 };
        let pair = run(e.invert(&z, &steps, &mut eps)).unwrap();
        let buggy: Vec<Step> = steps.iter().map(|s| Step { index: s.index + 1, ..*s }).collect();
        let bad = run(e.denoise(pair.clone(), &buggy, &mut eps)).unwrap();
        assert!(relative_error(&bad.x, &z) > 1e-6);
        let good = run(e.denoise(pair, &steps, &mut eps)).unwrap();
        assert!(relative_error(&good.x, &z) < 1e-12);
    }

    #[test]
    fn ddim_round_trip_is_only_approximate() {
        let sched = Schedule::default();
        let z = latent();
        let steps = sched.steps(10, 0.8, 0).unwrap();
        let mut eps = Analytic { calls: 0 };
        let noise = run(ddim_invert(&z, &steps, &mut eps)).unwrap();
        let back = run(ddim_denoise(noise, &steps, &mut eps)).unwrap();
        assert!(relative_error(&back, &z) > 1e-6);
    }

    #[test]
    fn mix_is_validated() {
        assert!(Edict { mix: 0.5, leapfrog: true }.validate().is_err());
        assert!(Edict { mix: 1.01, leapfrog: true }.validate().is_err());
        assert!(Edict { mix: f64::NAN, leapfrog: true }.validate().is_err());
        assert!(Edict { mix: 0.8, leapfrog: true }.validate().unwrap().is_some());
        assert!(Edict { mix: 0.93, leapfrog: true }.validate().unwrap().is_none());
    }

    #[test]
    fn non_finite_latents_name_the_step() {
        struct Bad;
        impl NoisePredictor for Bad {
            async fn predict(&mut self, latent: &[f64], t: usize) -> Result<Vec<f64>> {
                Ok(vec![if t < 500 { f64::NAN } else { 0.0 }; latent.len()])
            }
        }
        let steps = Schedule::default().steps(10, 1.0, 0).unwrap();
        let err = run(Edict::default().denoise(Pair { x: latent(), y: latent() }, &steps, &mut Bad)).unwrap_err();
        match err {
            PipelineError::NonFinite { step, timestep, .. } => assert_eq!((step, timestep), (5, 400)),
            e => panic!("{e}"),
        }
    }
}
