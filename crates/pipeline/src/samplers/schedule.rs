//! The DDIM schedule of SD 1.x and 2.x as the EDICT authors use it (see docs/edict.md).

use crate::error::{PipelineError, Result};

/// Training steps of SD's noise schedule.
pub const TRAIN_STEPS: usize = 1000;

/// ᾱ_t for t = 0..1000: scaled_linear betas `linspace(√0.00085, √0.012, 1000)²`, in f64.
#[derive(Debug, Clone)]
pub struct Schedule {
    pub alphas_cumprod: Vec<f64>,
}

impl Default for Schedule {
    fn default() -> Self {
        Self::scaled_linear(0.00085, 0.012)
    }
}

/// One timestep of a run with its DDIM coefficients: `x_prev = a·x + b·ε`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Step {
    /// Timestep fed to the UNet.
    pub t: usize,
    /// Position in denoising order (0 = the noisiest step run); fixes the leapfrog parity.
    pub index: usize,
    pub a: f64,
    pub b: f64,
    /// ᾱ_t, what the two-step samplers build their coefficients from.
    pub alpha_bar: f64,
}

impl Schedule {
    pub fn scaled_linear(beta_start: f64, beta_end: f64) -> Self {
        let (s, e) = (beta_start.sqrt(), beta_end.sqrt());
        let n = TRAIN_STEPS as f64 - 1.0;
        let mut prod = 1.0;
        let alphas_cumprod = (0..TRAIN_STEPS)
            .map(|i| {
                let beta = (s + (e - s) * i as f64 / n).powi(2);
                prod *= 1.0 - beta;
                prod
            })
            .collect();
        Self { alphas_cumprod }
    }

    /// The steps a run of `steps` inference steps at `strength` takes, in denoising order.
    /// Timesteps are `(1000 / steps)·k + offset` for k = steps−1 … 0; strength keeps the last
    /// `floor(steps·strength)` of them. The ᾱ before t = 0 is ᾱ_0 (`set_alpha_to_one = false`).
    pub fn steps(&self, steps: usize, strength: f64, offset: usize) -> Result<Vec<Step>> {
        if steps == 0 || steps + offset > TRAIN_STEPS {
            return Err(PipelineError::Invalid(format!(
                "steps must be between 1 and {} (got {steps}{})",
                TRAIN_STEPS - offset,
                if offset > 0 { format!(" with steps_offset {offset}") } else { String::new() }
            )));
        }
        if !(strength > 0.0 && strength <= 1.0) {
            return Err(PipelineError::Invalid(format!(
                "strength must be in (0, 1], got {strength}"
            )));
        }
        let ratio = TRAIN_STEPS / steps;
        let run = (steps as f64 * strength).floor() as usize;
        if run == 0 {
            return Err(PipelineError::Invalid(format!(
                "strength {strength} × {steps} steps runs no step; raise either"
            )));
        }
        let ac = &self.alphas_cumprod;
        Ok((0..run)
            .rev()
            .enumerate()
            .map(|(index, k)| {
                let t = k * ratio + offset;
                let at = ac[t];
                let ap = t.checked_sub(ratio).map_or(ac[0], |p| ac[p]);
                Step {
                    t,
                    index,
                    a: (ap / at).sqrt(),
                    b: (1.0 - ap).sqrt() - (ap * (1.0 - at) / at).sqrt(),
                    alpha_bar: at,
                }
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn alphas_match_diffusers_scaled_linear() {
        // numpy float64 of the same formula; torch's float32 agrees to 1e-6
        let s = Schedule::default();
        assert!((s.alphas_cumprod[0] - 0.99915).abs() < 1e-14);
        assert!((s.alphas_cumprod[499] - 0.27766965045646763).abs() < 1e-13);
        assert!((s.alphas_cumprod[999] - 0.004660098513077238).abs() < 1e-14);
    }

    #[test]
    fn timesteps_and_strength() {
        let s = Schedule::default();
        let all: Vec<usize> = s.steps(50, 1.0, 0).unwrap().iter().map(|x| x.t).collect();
        assert_eq!(all.len(), 50);
        assert_eq!((all[0], all[1], all[49]), (980, 960, 0));
        let part = s.steps(50, 0.7, 0).unwrap();
        assert_eq!(part.len(), 35);
        assert_eq!(part[0].t, 680);
        assert_eq!(part[0].index, 0);
        let last = part.last().unwrap();
        assert_eq!(last.t, 0);
        // t = 0 steps to ᾱ_0 itself: a = 1, b = 0
        assert!((last.a - 1.0).abs() < 1e-15 && last.b.abs() < 1e-15);
        assert_eq!(s.steps(50, 1.0, 1).unwrap()[0].t, 981);
        assert!(s.steps(0, 1.0, 0).is_err());
        assert!(s.steps(10, 0.0, 0).is_err());
        assert!(s.steps(10, 1.5, 0).is_err());
        assert!(s.steps(10, 0.05, 0).is_err());
        assert!(s.steps(10, f64::NAN, 0).is_err());
    }
}
