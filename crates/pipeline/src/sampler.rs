//! EDICT (Wallace et al. 2022) and DDIM, on latents held on the host.
//!
//! The sampler sees no tensor library: it calls a [`NoisePredictor`] `ε(latent, t)` (the
//! classifier-free-guided UNet, bound to one prompt) and does every step's arithmetic itself.
//! EDICT's inverse undoes each step exactly only if every network call sees bit-identical
//! inputs both ways. The coupled pair is therefore held in double-double (≈106-bit
//! significand): the inverse recovers each latent to ~1e-32 relative, so its rounding to the
//! network's f32 input (and to f64 at the end) matches the forward pass, even through the
//! large gains of the denoising dynamics that defeat f64 coupling (docs/exactness.md).
//! DDIM, the inexact baseline, stays in f64. Equations: docs/edict.md.

use std::ops::{Add, Div, Mul, Sub};

use twofloat::TwoFloat;

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

/// The coupled latents (x, y) in double-double; both start as the image latent.
#[derive(Debug, Clone, PartialEq)]
pub struct Pair {
    pub x: Vec<TwoFloat>,
    pub y: Vec<TwoFloat>,
}

impl Pair {
    /// Both latents equal to `z` (also DDIM's one chain).
    pub fn of(z: &[f64]) -> Self {
        let z = dd(z);
        Self { x: z.clone(), y: z }
    }

    /// `x` rounded to f64: the latent the authors decode.
    pub fn x_f64(&self) -> Vec<f64> {
        hi(&self.x)
    }
}

/// Lifts f64 values to double-double (exactly).
fn dd(v: &[f64]) -> Vec<TwoFloat> {
    v.iter().map(|&v| TwoFloat::from(v)).collect()
}

/// Rounds double-doubles to the nearest f64 (the high parts: they are normalised).
pub fn hi(v: &[TwoFloat]) -> Vec<f64> {
    v.iter().map(TwoFloat::hi).collect()
}

/// What the steps need of a number: f64 for DDIM, double-double for EDICT's pair.
trait Real: Copy + Add<Output = Self> + Sub<Output = Self> + Mul<f64, Output = Self> + Div<f64, Output = Self> {}
impl<T: Copy + Add<Output = T> + Sub<Output = T> + Mul<f64, Output = T> + Div<f64, Output = T>> Real for T {}

/// `out = a·u + b·e`; in double-double with `e` lifted from f64, `b·e` is exact.
fn axpby<T: Real>(a: f64, u: &[T], b: f64, e: &[T]) -> Vec<T> {
    u.iter().zip(e).map(|(&u, &e)| u * a + e * b).collect()
}

/// `out = (v − b·e) / a`, the inverse of [`axpby`] (to ~2⁻¹⁰⁴ relative in double-double).
fn undo<T: Real>(a: f64, v: &[T], b: f64, e: &[T]) -> Vec<T> {
    v.iter().zip(e).map(|(&v, &e)| (v - e * b) / a).collect()
}

/// ε at `latent` rounded to f64 (the network sees it in f32 anyway), lifted back for the coupling.
async fn predict(eps: &mut impl NoisePredictor, latent: &[TwoFloat], t: usize) -> Result<Vec<TwoFloat>> {
    Ok(dd(&eps.predict(&hi(latent), t).await?))
}

fn check_finite(v: impl IntoIterator<Item = f64>, stage: &'static str, step: &Step) -> Result<()> {
    if v.into_iter().all(f64::is_finite) {
        Ok(())
    } else {
        Err(PipelineError::NonFinite {
            stage,
            step: step.index,
            timestep: step.t,
        })
    }
}

fn check_pair(pair: &Pair, stage: &'static str, step: &Step) -> Result<()> {
    let parts = pair.x.iter().chain(&pair.y).flat_map(|d| [d.hi(), d.lo()]);
    check_finite(parts, stage, step)
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
        *u = axpby(a, u, b, &predict(eps, v, step.t).await?);
        *v = axpby(a, v, b, &predict(eps, u, step.t).await?);
        // mixing, always x then y (y uses the new x)
        pair.x = axpby(p, &pair.x, 1.0 - p, &pair.y);
        pair.y = axpby(p, &pair.y, 1.0 - p, &pair.x);
        check_pair(pair, "denoise", step)
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
        *v = undo(a, v, b, &predict(eps, u, step.t).await?);
        *u = undo(a, u, b, &predict(eps, v, step.t).await?);
        check_pair(pair, "invert", step)
    }

    /// Inverts the image latent `z` to the noise pair at the first step of `steps`
    /// (`steps` in denoising order, as [`crate::schedule::Schedule::steps`] gives them).
    pub async fn invert(&self, z: &[f64], steps: &[Step], eps: &mut impl NoisePredictor) -> Result<Pair> {
        let mut pair = Pair::of(z);
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
        check_finite(x.iter().copied(), "invert", step)?;
    }
    Ok(x)
}

/// Plain DDIM denoising of one latent.
pub async fn ddim_denoise(mut x: Vec<f64>, steps: &[Step], eps: &mut impl NoisePredictor) -> Result<Vec<f64>> {
    for step in steps {
        let e = eps.predict(&x, step.t).await?;
        x = axpby(step.a, &x, step.b, &e);
        check_finite(x.iter().copied(), "denoise", step)?;
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

    /// Bit-equal, except that an exact zero may come back as a remnant of double-double
    /// rounding (~1e-33 here): the relative error of a sum that cancels to 0 is unbounded.
    fn exact(back: &[f64], z: &[f64]) -> bool {
        back.iter().zip(z).all(|(b, z)| b == z || (*z == 0.0 && b.abs() < 1e-30))
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
                    // bit for bit: the predictor sees every input exactly as in inversion
                    assert!(
                        exact(&back.x_f64(), &z) && exact(&hi(&back.y), &z),
                        "n={n} s={strength} leapfrog={leapfrog}: round trip {:e}",
                        relative_error(&back.x_f64(), &z).max(relative_error(&hi(&back.y), &z))
                    );
                    // the inverted pair really moved away from z (a lone t = 0 step is the identity)
                    if steps[0].t > 0 {
                        assert!(relative_error(&pair.x_f64(), &z) > 1e-3);
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
        assert!(relative_error(&bad.x_f64(), &z) > 1e-6);
        let good = run(e.denoise(pair, &steps, &mut eps)).unwrap();
        assert!(exact(&good.x_f64(), &z));
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
        let err = run(Edict::default().denoise(Pair::of(&latent()), &steps, &mut Bad)).unwrap_err();
        match err {
            PipelineError::NonFinite { step, timestep, .. } => assert_eq!((step, timestep), (5, 400)),
            e => panic!("{e}"),
        }
    }
}
