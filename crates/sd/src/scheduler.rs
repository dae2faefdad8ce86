//! `scheduler/scheduler_config.json`: the noise schedule the networks were trained with and what
//! the UNet predicts. The sampler runs its own DDIM steps on this schedule.

use serde::Deserialize;

use crate::error::parse_config;
use crate::{Result, SdError};

/// What the UNet's output is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Prediction {
    /// The noise ε (SD 1.x, SD 2.x base).
    #[default]
    Epsilon,
    /// The velocity v = √ᾱ·ε − √(1−ᾱ)·x₀ (SD 2.x at 768²).
    V,
}

impl std::str::FromStr for Prediction {
    type Err = SdError;
    /// diffusers' `prediction_type` names, and the CLI's short `v`.
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "epsilon" => Ok(Self::Epsilon),
            "v_prediction" | "v" => Ok(Self::V),
            _ => Err(SdError::Invalid(format!(
                "prediction type `{s}` is not supported: expected epsilon or v_prediction"
            ))),
        }
    }
}

impl std::fmt::Display for Prediction {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Epsilon => "epsilon",
            Self::V => "v_prediction",
        })
    }
}

/// The fields of a diffusers scheduler config the sampler depends on.
#[derive(Debug, Clone, PartialEq)]
pub struct SchedulerConfig {
    pub beta_start: f64,
    pub beta_end: f64,
    pub prediction: Prediction,
}

impl Default for SchedulerConfig {
    /// SD 1.x and 2.x: scaled-linear betas from 0.00085 to 0.012, ε prediction.
    fn default() -> Self {
        Self {
            beta_start: 0.00085,
            beta_end: 0.012,
            prediction: Prediction::Epsilon,
        }
    }
}

#[derive(Deserialize)]
struct Raw {
    #[serde(default = "thousand")]
    num_train_timesteps: usize,
    #[serde(default = "beta_start")]
    beta_start: f64,
    #[serde(default = "beta_end")]
    beta_end: f64,
    #[serde(default = "scaled_linear")]
    beta_schedule: String,
    #[serde(default = "epsilon")]
    prediction_type: String,
}

fn thousand() -> usize {
    1000
}
fn beta_start() -> f64 {
    SchedulerConfig::default().beta_start
}
fn beta_end() -> f64 {
    SchedulerConfig::default().beta_end
}
fn scaled_linear() -> String {
    "scaled_linear".into()
}
fn epsilon() -> String {
    "epsilon".into()
}

impl SchedulerConfig {
    /// Parses `scheduler_config.json` (any diffusers scheduler class: they share these fields),
    /// refusing what the sampler cannot run.
    pub fn from_json(text: &str, path: &str) -> Result<Self> {
        let r: Raw = parse_config(text, path)?;
        let bad = |reason: String| SdError::config(path, reason);
        if r.num_train_timesteps != 1000 {
            return Err(bad(format!(
                "num_train_timesteps {} is not supported (Stable Diffusion trains with 1000)",
                r.num_train_timesteps
            )));
        }
        if r.beta_schedule != "scaled_linear" {
            return Err(bad(format!(
                "beta_schedule `{}` is not supported (Stable Diffusion uses scaled_linear)",
                r.beta_schedule
            )));
        }
        if !(r.beta_start > 0.0 && r.beta_start < r.beta_end && r.beta_end < 1.0) {
            return Err(bad(format!("betas {} … {} are not an increasing range in (0, 1)", r.beta_start, r.beta_end)));
        }
        let prediction = r.prediction_type.parse().map_err(|e: SdError| bad(e.to_string()))?;
        Ok(Self {
            beta_start: r.beta_start,
            beta_end: r.beta_end,
            prediction,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_sd_configs_and_refuses_what_it_cannot_run() {
        let sd15 = r#"{"_class_name": "PNDMScheduler", "beta_end": 0.012, "beta_schedule": "scaled_linear",
            "beta_start": 0.00085, "num_train_timesteps": 1000, "skip_prk_steps": true, "steps_offset": 1}"#;
        assert_eq!(SchedulerConfig::from_json(sd15, "s").unwrap(), SchedulerConfig::default());
        let sd21 = r#"{"_class_name": "DDIMScheduler", "beta_end": 0.012, "beta_schedule": "scaled_linear",
            "beta_start": 0.00085, "prediction_type": "v_prediction", "num_train_timesteps": 1000}"#;
        assert_eq!(SchedulerConfig::from_json(sd21, "s").unwrap().prediction, Prediction::V);
        let sample = r#"{"prediction_type": "sample"}"#;
        let e = SchedulerConfig::from_json(sample, "s/scheduler_config.json").unwrap_err().to_string();
        assert!(e.contains("prediction type `sample` is not supported") && e.contains("scheduler_config.json"), "{e}");
        let linear = r#"{"beta_schedule": "linear"}"#;
        assert!(SchedulerConfig::from_json(linear, "s").unwrap_err().to_string().contains("beta_schedule `linear`"));
    }
}
