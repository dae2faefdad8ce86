//! The samplers, on latents held on the host: EDICT ([`edict`], exact, two network calls per
//! step), BDIA and O-BELM ([`two_step`], exact, one call per step) and DDIM ([`ddim`], the
//! inexact baseline), over the DDIM [`schedule`]; [`Sampler`] is the one the settings choose.
//!
//! A sampler sees no tensor library: it calls a [`NoisePredictor`] `ε(latent, t)` (the
//! classifier-free-guided UNet, bound to one prompt) and does every step's arithmetic itself.
//! EDICT's inverse undoes each step exactly only if every network call sees bit-identical
//! inputs both ways. The coupled pair is therefore held in double-double (≈106-bit
//! significand): the inverse recovers each latent to ~1e-32 relative, so its rounding to the
//! network's f32 input (and to f64 at the end) matches the forward pass, even through the
//! large gains of the denoising dynamics that defeat f64 coupling (docs/exactness.md).
//! The two-step samplers hold their pair of levels the same way. DDIM stays in f64.
//! Equations: docs/edict.md, docs/samplers.md.

pub mod ddim;
pub mod edict;
pub mod schedule;
pub mod two_step;

use std::ops::{Add, Div, Mul, Sub};

use twofloat::TwoFloat;

use crate::error::{PipelineError, Result};
use ddim::{ddim_denoise, ddim_invert};
use edict::Edict;
use schedule::Step;
use two_step::TwoStep;

/// A sampler with its knobs, as the settings choose it ([`crate::settings::Settings::sampler`]).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Sampler {
    Edict(Edict),
    TwoStep(TwoStep),
    Ddim,
}

impl Sampler {
    /// Inverts the image latent `z` through `steps` (denoising order) to the state denoising
    /// starts from: EDICT's pair, the two-step samplers' top two levels, DDIM's chain (x = y).
    pub async fn invert(&self, z: &[f64], steps: &[Step], eps: &mut impl NoisePredictor) -> Result<Pair> {
        match self {
            Self::Edict(e) => e.invert(z, steps, eps).await,
            Self::TwoStep(m) => m.invert(z, steps, eps).await,
            Self::Ddim => Ok(Pair::of(&ddim_invert(z, steps, eps).await?)),
        }
    }

    /// Denoises inverted states, all in each network call; each result's `x` is the image latent.
    pub async fn denoise(&self, pairs: Vec<Pair>, steps: &[Step], eps: &mut impl NoisePredictor) -> Result<Vec<Pair>> {
        match self {
            Self::Edict(e) => e.denoise(pairs, steps, eps).await,
            Self::TwoStep(m) => m.denoise(pairs, steps, eps).await,
            Self::Ddim => {
                let xs = ddim_denoise(pairs.iter().map(Pair::x_f64).collect(), steps, eps).await?;
                Ok(xs.iter().map(|x| Pair::of(x)).collect())
            }
        }
    }

    /// Network calls (each batching every chain) of one pass over `run` steps.
    pub fn calls(&self, run: usize, inverting: bool) -> usize {
        match self {
            Self::Edict(_) => 2 * run,
            Self::TwoStep(_) if inverting => run,
            Self::TwoStep(_) => run - 1,
            Self::Ddim => run,
        }
    }
}

/// The classifier-free-guided noise prediction at one timestep for each of several latents,
/// one per chain sampled together (several edit targets share each network call).
/// Async because browsers can only read GPU results asynchronously.
#[allow(async_fn_in_trait)]
pub trait NoisePredictor {
    async fn predict(&mut self, latents: &[Vec<f64>], t: usize) -> Result<Vec<Vec<f64>>>;
}

/// Two latents in double-double: EDICT's coupled pair (both start as the image latent), or the
/// two-step samplers' two newest levels (x the less noisy one).
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

    /// `x` rounded to f64: the latent the authors decode ([`finished`]).
    pub fn x_f64(&self) -> Vec<f64> {
        finished(&self.x)
    }

    /// `(u, v)`: the latent that moves first at a step, and the other.
    pub(crate) fn uv(&mut self, x_first: bool) -> (&mut Vec<TwoFloat>, &mut Vec<TwoFloat>) {
        if x_first { (&mut self.x, &mut self.y) } else { (&mut self.y, &mut self.x) }
    }
}

/// Lifts f64 values to double-double (exactly).
pub(crate) fn dd(v: &[f64]) -> Vec<TwoFloat> {
    v.iter().map(|&v| TwoFloat::from(v)).collect()
}

/// Rounds double-doubles to the nearest f64 (the high parts: they are normalised).
pub fn hi(v: &[TwoFloat]) -> Vec<f64> {
    v.iter().map(TwoFloat::hi).collect()
}

/// A finished latent rounded to f64, with values under f64's precision at the latent's scale
/// (ε times its largest magnitude) set to 0. What is left there of an exact zero in z (f16
/// latents hold some) is the double-double rounding of terms that cancelled, ~1e-33 (≈2⁻¹⁰⁶ of
/// them, times the dynamics' gain); a nonzero value that small would not come back to the bit
/// anyway, its last bit being far below that remnant. Only for results: network inputs stay
/// [`hi`], because both directions must round values that agree only up to the remnant alike.
pub(crate) fn finished(v: &[TwoFloat]) -> Vec<f64> {
    let x = hi(v);
    let floor = x.iter().fold(0.0, |m: f64, v| m.max(v.abs())) * f64::EPSILON;
    x.into_iter().map(|v| if v.abs() < floor { 0.0 } else { v }).collect()
}

/// What the steps need of a number: f64 for DDIM, double-double for EDICT's pair.
pub(crate) trait Real: Copy + Add<Output = Self> + Sub<Output = Self> + Mul<f64, Output = Self> + Div<f64, Output = Self> {}
impl<T: Copy + Add<Output = T> + Sub<Output = T> + Mul<f64, Output = T> + Div<f64, Output = T>> Real for T {}

/// `out = a·u + b·e`; in double-double with `e` lifted from f64, `b·e` is exact.
pub(crate) fn axpby<T: Real>(a: f64, u: &[T], b: f64, e: &[T]) -> Vec<T> {
    u.iter().zip(e).map(|(&u, &e)| u * a + e * b).collect()
}

/// `out = (v − b·e) / a`, the inverse of [`axpby`] (to ~2⁻¹⁰⁴ relative in double-double).
pub(crate) fn undo<T: Real>(a: f64, v: &[T], b: f64, e: &[T]) -> Vec<T> {
    v.iter().zip(e).map(|(&v, &e)| (v - e * b) / a).collect()
}

/// ε at each latent rounded to f64 (the network sees it in f32 anyway), lifted back for the coupling.
pub(crate) async fn predict(eps: &mut impl NoisePredictor, latents: Vec<Vec<f64>>, t: usize) -> Result<Vec<Vec<TwoFloat>>> {
    Ok(eps.predict(&latents, t).await?.iter().map(|e| dd(e)).collect())
}

pub(crate) fn check_finite(v: impl IntoIterator<Item = f64>, stage: &'static str, step: &Step) -> Result<()> {
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

pub(crate) fn check_pair(pair: &Pair, stage: &'static str, step: &Step) -> Result<()> {
    let parts = pair.x.iter().chain(&pair.y).flat_map(|d| [d.hi(), d.lo()]);
    check_finite(parts, stage, step)
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
    use super::schedule::Schedule;

    /// A deterministic, nonlinear predictor that depends on the latent and the timestep, so a
    /// wrong ε (wrong latent, wrong order, wrong t) breaks the round trip.
    struct Analytic {
        calls: usize,
    }

    impl Analytic {
        fn one(latent: &[f64], t: usize) -> Vec<f64> {
            let s = t as f64 / 1000.0;
            let mean = latent.iter().sum::<f64>() / latent.len() as f64;
            latent
                .iter()
                .enumerate()
                .map(|(i, v)| (v * (1.0 + s)).sin() + 0.3 * (i as f64 * 0.1 + s).cos() + 0.2 * mean * v)
                .collect()
        }
    }

    impl NoisePredictor for Analytic {
        async fn predict(&mut self, latents: &[Vec<f64>], t: usize) -> Result<Vec<Vec<f64>>> {
            self.calls += 1;
            Ok(latents.iter().map(|l| Self::one(l, t)).collect())
        }
    }

    pub(super) fn latent() -> Vec<f64> {
        (0..64).map(|i| ((i * 37 % 17) as f64 - 8.0) / 5.0).collect()
    }

    pub(super) fn run<F: std::future::Future>(f: F) -> F::Output {
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
                    let back = run(e.denoise(vec![pair.clone()], &steps, &mut eps)).unwrap().remove(0);
                    // bit for bit: the predictor sees every input exactly as in inversion
                    // z has exact zeros: without `finished` they come back as ~1e-33
                    assert!(
                        back.x_f64() == z && finished(&back.y) == z,
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
        let bad = run(e.denoise(vec![pair.clone()], &buggy, &mut eps)).unwrap().remove(0);
        assert!(relative_error(&bad.x_f64(), &z) > 1e-6);
        let good = run(e.denoise(vec![pair], &steps, &mut eps)).unwrap().remove(0);
        assert!(good.x_f64() == z);
    }

    #[test]
    fn pairs_denoised_together_equal_pairs_denoised_alone() {
        let steps = Schedule::default().steps(10, 0.8, 0).unwrap();
        let e = Edict::default();
        let mut eps = Analytic { calls: 0 };
        let a = run(e.invert(&latent(), &steps, &mut eps)).unwrap();
        let b = run(e.invert(&latent().iter().map(|v| v * 0.5).collect::<Vec<_>>(), &steps, &mut eps)).unwrap();
        eps.calls = 0;
        let both = run(e.denoise(vec![a.clone(), b.clone()], &steps, &mut eps)).unwrap();
        // one call per half step for both pairs
        assert_eq!(eps.calls, 2 * steps.len());
        let alone = [a, b].map(|p| run(e.denoise(vec![p], &steps, &mut eps)).unwrap().remove(0));
        assert_eq!(both, alone);
        assert_ne!(both[0], both[1]);
    }

    #[test]
    fn ddim_round_trip_is_only_approximate() {
        let sched = Schedule::default();
        let z = latent();
        let steps = sched.steps(10, 0.8, 0).unwrap();
        let mut eps = Analytic { calls: 0 };
        let noise = run(ddim_invert(&z, &steps, &mut eps)).unwrap();
        let back = run(ddim_denoise(vec![noise], &steps, &mut eps)).unwrap();
        assert!(relative_error(&back[0], &z) > 1e-6);
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
            async fn predict(&mut self, latents: &[Vec<f64>], t: usize) -> Result<Vec<Vec<f64>>> {
                Ok(latents.iter().map(|l| vec![if t < 500 { f64::NAN } else { 0.0 }; l.len()]).collect())
            }
        }
        let steps = Schedule::default().steps(10, 1.0, 0).unwrap();
        let err = run(Edict::default().denoise(vec![Pair::of(&latent())], &steps, &mut Bad)).unwrap_err();
        match err {
            PipelineError::NonFinite { step, timestep, .. } => assert_eq!((step, timestep), (5, 400)),
            e => panic!("{e}"),
        }
    }
}
