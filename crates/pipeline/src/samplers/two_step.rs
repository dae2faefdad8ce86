//! BDIA (Zhang, Lewis & Kleijn, ECCV 2024) and O-BELM (Wang et al., NeurIPS 2024): exact
//! inversion with one network call per step. Both relate three consecutive noise levels through
//! one prediction at the middle one (docs/samplers.md):
//!
//! ```text
//! x_{i−1} = A_i·x_{i+1} + B_i·x_i + C_i·ε(x_i, L_i)          denoising
//! x_{i+1} = (x_{i−1} − B_i·x_i − C_i·ε(x_i, L_i)) / A_i       inversion, its exact inverse
//! ```
//!
//! Level L_0 is the clean latent (ᾱ = 1); L_j, j = 1..run, is the j-th smallest timestep run
//! (the DDIM timesteps and strength rule EDICT uses). The state is the pair of the two newest
//! levels, in double-double like EDICT's, so the inverse reproduces every network input to the bit.

use super::schedule::Step;
use super::{NoisePredictor, Pair, axpby, check_pair, hi, predict};
use crate::error::{PipelineError, Result};

/// Which two-step relation.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum TwoStep {
    /// BDIA with its weight γ on the noisier latent (A_i = γ).
    Bdia { gamma: f64 },
    /// O-BELM: the bidirectional explicit linear two-step relation of least local error.
    Belm,
}

/// √ᾱ and √(1 − ᾱ) of one level.
#[derive(Debug, Clone, Copy)]
struct Level {
    alpha: f64,
    sigma: f64,
}

impl Level {
    fn of(alpha_bar: f64) -> Self {
        Self { alpha: alpha_bar.sqrt(), sigma: (1.0 - alpha_bar).sqrt() }
    }

    /// σ/α, the "time" in which O-BELM's relation is a linear multi-step formula.
    fn ratio(self) -> f64 {
        self.sigma / self.alpha
    }
}

/// L_0 = the clean latent, then the levels of `steps` (denoising order) from the least noisy up.
fn levels(steps: &[Step]) -> Vec<Level> {
    std::iter::once(Level::of(1.0)).chain(steps.iter().rev().map(|s| Level::of(s.alpha_bar))).collect()
}

/// The step (timestep) of level `j` ≥ 1.
fn step_of(steps: &[Step], j: usize) -> &Step {
    &steps[steps.len() - j]
}

impl TwoStep {
    /// γ must be a positive number: inversion divides by it.
    pub fn validate(&self) -> Result<()> {
        match *self {
            Self::Bdia { gamma } if !(gamma.is_finite() && gamma > 0.0) => {
                Err(PipelineError::Invalid(format!("gamma must be a finite number > 0, got {gamma}")))
            }
            _ => Ok(()),
        }
    }

    /// (A_i, B_i, C_i) of the relation centred on level `i` (1 ≤ i < run).
    fn coefficients(&self, l: &[Level], i: usize) -> (f64, f64, f64) {
        let (below, at, above) = (l[i - 1], l[i], l[i + 1]);
        match *self {
            // DDIM from i to i−1, minus γ times the DDIM step from i to i+1 that x_{i+1} replaces
            Self::Bdia { gamma } => (
                gamma,
                below.alpha / at.alpha - gamma * above.alpha / at.alpha,
                (below.sigma - at.sigma * below.alpha / at.alpha) - gamma * (above.sigma - at.sigma * above.alpha / at.alpha),
            ),
            // h_i = σ_i/α_i − σ_{i−1}/α_{i−1}, h_{i+1} = σ_{i+1}/α_{i+1} − σ_i/α_i
            Self::Belm => {
                let (h, h_up) = (at.ratio() - below.ratio(), above.ratio() - at.ratio());
                (
                    (h * h) / (h_up * h_up) * (below.alpha / above.alpha),
                    (h_up * h_up - h * h) / (h_up * h_up) * (below.alpha / at.alpha),
                    -(h * (h + h_up) / h_up) * below.alpha,
                )
            }
        }
    }

    /// Inverts the image latent `z` to the pair (x = x_{run−1}, y = x_run): a DDIM step to L_1,
    /// then the inversion relation; one network call per level.
    pub async fn invert(&self, z: &[f64], steps: &[Step], eps: &mut impl NoisePredictor) -> Result<Pair> {
        let l = levels(steps);
        let mut pair = Pair::of(z);
        // x_1 = (α_1/α_0)·x_0 + (σ_1 − σ_0·α_1/α_0)·ε(x_0, L_1)
        let first = step_of(steps, 1);
        let e = predict(eps, vec![hi(&pair.x)], first.t).await?.remove(0);
        let r = l[1].alpha / l[0].alpha;
        pair.y = axpby(r, &pair.x, l[1].sigma - l[0].sigma * r, &e);
        check_pair(&pair, "invert", first)?;
        for i in 1..steps.len() {
            let step = step_of(steps, i);
            let (a, b, c) = self.coefficients(&l, i);
            let e = predict(eps, vec![hi(&pair.y)], step.t).await?.remove(0);
            let up = pair.x.iter().zip(&pair.y).zip(&e).map(|((&below, &at), &e)| (below - at * b - e * c) / a).collect();
            // the pair moves up a level: (x_{i−1}, x_i) → (x_i, x_{i+1})
            pair.x = std::mem::replace(&mut pair.y, up);
            check_pair(&pair, "invert", step)?;
        }
        Ok(pair)
    }

    /// Denoises pairs from (x_{run−1}, x_run) to x_0 (in `x`), all pairs in each network call;
    /// one call per level below the top.
    pub async fn denoise(&self, mut pairs: Vec<Pair>, steps: &[Step], eps: &mut impl NoisePredictor) -> Result<Vec<Pair>> {
        let l = levels(steps);
        for i in (1..steps.len()).rev() {
            let step = step_of(steps, i);
            let (a, b, c) = self.coefficients(&l, i);
            let e = predict(eps, pairs.iter().map(|q| hi(&q.x)).collect(), step.t).await?;
            for (q, e) in pairs.iter_mut().zip(&e) {
                let down = q.y.iter().zip(&q.x).zip(e).map(|((&above, &at), &e)| above * a + at * b + e * c).collect();
                // the pair moves down a level: (x_i, x_{i+1}) → (x_{i−1}, x_i)
                q.y = std::mem::replace(&mut q.x, down);
                check_pair(q, "denoise", step)?;
            }
        }
        Ok(pairs)
    }
}

#[cfg(test)]
mod tests {
    use super::super::schedule::Schedule;
    use super::super::tests::{latent, run};
    use super::super::{dd, finished, relative_error};
    use super::*;

    /// Like the EDICT tests' predictor (nonlinear in the latent, its mean and t), but bounded:
    /// inversion divides by A_i (1/γ per level for BDIA, up to ~100 near the clean end for
    /// O-BELM), so the inverted levels grow, and an unbounded ε would overflow.
    struct Analytic {
        calls: usize,
    }

    impl NoisePredictor for Analytic {
        async fn predict(&mut self, latents: &[Vec<f64>], t: usize) -> Result<Vec<Vec<f64>>> {
            self.calls += 1;
            let s = t as f64 / 1000.0;
            Ok(latents
                .iter()
                .map(|l| {
                    let mean = l.iter().sum::<f64>() / l.len() as f64;
                    l.iter().enumerate().map(|(i, v)| (v * (1.0 + s)).sin() + 0.3 * (i as f64 * 0.1 + s).cos() + 0.2 * mean.tanh() * v.cos()).collect()
                })
                .collect())
        }
    }

    const METHODS: [TwoStep; 3] = [TwoStep::Bdia { gamma: 0.96 }, TwoStep::Bdia { gamma: 0.5 }, TwoStep::Belm];

    #[test]
    fn round_trip_is_exact_for_any_step_count_and_strength() {
        let sched = Schedule::default();
        let z = latent();
        for m in METHODS {
            for n in [1, 2, 3, 7, 10, 35, 50] {
                for strength in [0.3, 0.5, 0.7, 0.8, 1.0] {
                    let Ok(steps) = sched.steps(n, strength, 0) else { continue };
                    let mut eps = Analytic { calls: 0 };
                    let pair = run(m.invert(&z, &steps, &mut eps)).unwrap();
                    assert_eq!(eps.calls, steps.len(), "one call per level");
                    let back = run(m.denoise(vec![pair.clone()], &steps, &mut eps)).unwrap().remove(0);
                    assert_eq!(eps.calls, 2 * steps.len() - 1, "one call per level below the top");
                    assert!(
                        back.x_f64() == z,
                        "{m:?} n={n} s={strength}: round trip {:e}",
                        relative_error(&back.x_f64(), &z)
                    );
                    // the denoising ends where the inversion started: (x_0, x_1)
                    assert!(finished(&back.x) == z);
                    if steps.len() > 1 {
                        assert!(relative_error(&hi(&pair.y), &z) > 1e-3, "{m:?} n={n} s={strength}: the pair did not move");
                    }
                }
            }
        }
    }

    /// For data that is one point x₀, the exact ε is (x − α·x₀)/σ, and every level of the ODE's
    /// solution is α·x₀ + σ·ε₀. Both relations are exact on it (BDIA: DDIM steps are; O-BELM: it
    /// integrates x/α linearly in σ/α), so denoising from the true top two levels returns x₀ —
    /// to rounding, and only if every coefficient is right.
    #[test]
    fn one_point_data_is_integrated_exactly() {
        let sched = Schedule::default();
        let x0 = latent();
        let e0: Vec<f64> = (0..x0.len()).map(|i| ((i * 13 % 7) as f64 - 3.0) / 2.0).collect();
        struct Exact<'a>(&'a [f64], &'a Schedule);
        impl NoisePredictor for Exact<'_> {
            async fn predict(&mut self, latents: &[Vec<f64>], t: usize) -> Result<Vec<Vec<f64>>> {
                let ab = self.1.alphas_cumprod[t];
                Ok(latents.iter().map(|x| x.iter().zip(self.0).map(|(x, x0)| (x - ab.sqrt() * x0) / (1.0 - ab).sqrt()).collect()).collect())
            }
        }
        let at = |ab: f64| -> Vec<f64> { x0.iter().zip(&e0).map(|(x, e)| ab.sqrt() * x + (1.0 - ab).sqrt() * e).collect() };
        let steps = sched.steps(20, 0.9, 0).unwrap();
        let (top, below) = (steps[0].alpha_bar, steps[1].alpha_bar);
        for m in METHODS {
            // denoising from the true pair returns x₀
            let pair = Pair { x: dd(&at(below)), y: dd(&at(top)) };
            let back = run(m.denoise(vec![pair], &steps, &mut Exact(&x0, &sched))).unwrap().remove(0);
            let err = relative_error(&back.x_f64(), &x0);
            assert!(err < 1e-12, "{m:?}: denoised x₀ off by {err:e}");
        }
        // the check sees one coefficient off by 1e-6: the relation applied by hand, C perturbed
        let l = levels(&steps);
        let mut eps = Exact(&x0, &sched);
        for m in METHODS {
            let (mut x, mut y) = (at(below), at(top));
            for i in (1..steps.len()).rev() {
                let (a, b, c) = m.coefficients(&l, i);
                let e = run(eps.predict(std::slice::from_ref(&x), step_of(&steps, i).t)).unwrap().remove(0);
                let down: Vec<f64> = y.iter().zip(&x).zip(&e).map(|((y, x), e)| a * y + b * x + c * (1.0 + 1e-6) * e).collect();
                y = std::mem::replace(&mut x, down);
            }
            let err = relative_error(&x, &x0);
            assert!(err > 1e-9, "{m:?}: a perturbed C gives {err:e}");
        }
    }

    /// The coefficients equal the authors' own forms (zituitui/BELM, samplers/BDIA.py and
    /// BELM.py), written here as they are there: denoising in `intermediate_to_latent`, the
    /// inversion's (1/A, −B/A, −C/A) in `latent_to_intermediate`.
    #[test]
    fn coefficients_are_the_authors() {
        let steps = Schedule::default().steps(50, 0.8, 0).unwrap();
        let l = levels(&steps);
        let close = |a: f64, b: f64| (a - b).abs() <= 1e-12 * b.abs().max(1.0);
        for i in 1..steps.len() {
            // their names: p = the noisier level, t = the middle one, s = the less noisy one
            let (s, t, p) = (l[i - 1], l[i], l[i + 1]);
            for gamma in [0.96, 0.5] {
                let (a, b, c) = TwoStep::Bdia { gamma }.coefficients(&l, i);
                let coef_xt = s.alpha / t.alpha - gamma * p.alpha / t.alpha;
                let coef_eps = (s.sigma - t.sigma * s.alpha / t.alpha) - gamma * (p.sigma - t.sigma * p.alpha / t.alpha);
                assert!(close(a, gamma) && close(b, coef_xt) && close(c, coef_eps), "BDIA denoising at {i}");
                // inversion, their i = our i+1: coef_x_i_minus_2 = 1/γ, …
                let inv_b = p.alpha / t.alpha - (1.0 / gamma) * (s.alpha / t.alpha);
                let inv_c = (p.sigma - (p.alpha / t.alpha) * t.sigma) - (1.0 / gamma) * (s.sigma - (s.alpha / t.alpha) * t.sigma);
                assert!(close(1.0 / a, 1.0 / gamma) && close(-b / a, inv_b) && close(-c / a, inv_c), "BDIA inversion at {i}");
            }
            let (a, b, c) = TwoStep::Belm.coefficients(&l, i);
            let (t_p, t_t, t_s) = (p.ratio(), t.ratio(), s.ratio());
            let (d1, d2, d3) = (t_t - t_p, t_s - t_t, t_s - t_p);
            let coef_1 = d2 * d3 * s.alpha / d1;
            let coef_2 = (d2 / d1).powi(2) * (s.alpha / p.alpha);
            let coef_3 = (d1 - d2) * d3 / (d1 * d1) * (s.alpha / t.alpha);
            assert!(close(a, coef_2) && close(b, coef_3) && close(c, coef_1), "O-BELM denoising at {i}");
            let (h_i, h_im1) = (t_p - t_t, t_t - t_s);
            let inv_a = (p.alpha / s.alpha) * h_i.powi(2) / h_im1.powi(2);
            let inv_b = (p.alpha / t.alpha) * (h_im1.powi(2) - h_i.powi(2)) / h_im1.powi(2);
            let inv_c = p.alpha * (h_im1 + h_i) * h_i / h_im1;
            assert!(close(1.0 / a, inv_a) && close(-b / a, inv_b) && close(-c / a, inv_c), "O-BELM inversion at {i}");
        }
    }

    #[test]
    fn pairs_denoised_together_equal_pairs_denoised_alone() {
        let steps = Schedule::default().steps(10, 0.8, 0).unwrap();
        let m = TwoStep::Belm;
        let mut eps = Analytic { calls: 0 };
        let a = run(m.invert(&latent(), &steps, &mut eps)).unwrap();
        let b = run(m.invert(&latent().iter().map(|v| v * 0.5).collect::<Vec<_>>(), &steps, &mut eps)).unwrap();
        eps.calls = 0;
        let both = run(m.denoise(vec![a.clone(), b.clone()], &steps, &mut eps)).unwrap();
        assert_eq!(eps.calls, steps.len() - 1);
        let alone = [a, b].map(|p| run(m.denoise(vec![p], &steps, &mut eps)).unwrap().remove(0));
        assert_eq!(both, alone);
    }

    #[test]
    fn gamma_is_validated() {
        for gamma in [0.0, -0.5, f64::NAN, f64::INFINITY] {
            let e = TwoStep::Bdia { gamma }.validate().unwrap_err().to_string();
            assert!(e.contains("gamma must be a finite number > 0"), "{e}");
        }
        assert!(TwoStep::Bdia { gamma: 0.96 }.validate().is_ok() && TwoStep::Belm.validate().is_ok());
    }
}
