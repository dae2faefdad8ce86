//! The sampler settings, declared once: the CLI's flags (clap, feature `cli`), the page's options
//! (serde) and a latents file's metadata ([`Settings::to_strings`]) are all made from the fields
//! below, with the defaults in [`DEFAULTS`].

use serde::{Deserialize, Serialize};

use crate::error::{PipelineError, Result};
use crate::samplers::Sampler;
use crate::samplers::edict::Edict;
use crate::samplers::schedule::{Schedule, Step};
use crate::samplers::two_step::TwoStep;

/// Sampling settings; defaults are the EDICT authors' (`EDICT_editing`), γ the BDIA authors'.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "cli", derive(clap::Args))]
#[serde(default, deny_unknown_fields)]
pub struct Settings {
    /// The sampler: edict, bdia or belm (exact), or ddim (the inexact baseline).
    #[cfg_attr(feature = "cli", arg(long, default_value_t = DEFAULTS.method))]
    pub method: Method,
    /// DDIM steps of the whole schedule.
    #[cfg_attr(feature = "cli", arg(long, default_value_t = DEFAULTS.steps))]
    pub steps: usize,
    /// Fraction of the schedule to invert and re-denoise, in (0, 1].
    #[cfg_attr(feature = "cli", arg(long, default_value_t = DEFAULTS.strength))]
    pub strength: f64,
    /// EDICT's mixing weight p, in (0.5, 1].
    #[cfg_attr(feature = "cli", arg(long, default_value_t = DEFAULTS.mix))]
    pub mix: f64,
    /// BDIA's weight γ on the noisier latent, > 0.
    #[cfg_attr(feature = "cli", arg(long, default_value_t = DEFAULTS.gamma))]
    pub gamma: f64,
    /// Classifier-free guidance scale.
    #[cfg_attr(feature = "cli", arg(long, default_value_t = DEFAULTS.guidance))]
    pub guidance: f64,
    /// Negative prompt (replaces "" as the unconditional prompt).
    #[cfg_attr(feature = "cli", arg(long, default_value_t = DEFAULTS.negative))]
    pub negative: String,
    /// Leapfrog: alternate which latent moves first (`--no-leapfrog` turns it off).
    #[cfg_attr(feature = "cli", arg(long = "no-leapfrog", action = clap::ArgAction::SetFalse))]
    pub leapfrog: bool,
    /// Timestep offset: 0 as the EDICT authors run, 1 as diffusers' SD scheduler config.
    #[cfg_attr(feature = "cli", arg(long, default_value_t = DEFAULTS.steps_offset))]
    pub steps_offset: usize,
}

/// The EDICT authors' settings.
pub const DEFAULTS: Settings = Settings {
    method: Method::Edict,
    steps: 50,
    strength: 0.8,
    mix: 0.93,
    // the BDIA authors' editing scripts (zituitui/BELM, scripts/image_editing.py)
    gamma: 0.96,
    guidance: 3.0,
    negative: String::new(),
    leapfrog: true,
    steps_offset: 0,
};

impl Default for Settings {
    fn default() -> Self {
        DEFAULTS
    }
}

impl Settings {
    /// Checks every knob; returns the steps to run and any warning for the user.
    pub fn validate(&self, schedule: &Schedule) -> Result<(Vec<Step>, Vec<String>)> {
        if !self.guidance.is_finite() || self.guidance < 0.0 {
            return Err(PipelineError::Invalid(format!(
                "guidance must be a finite number ≥ 0, got {}",
                self.guidance
            )));
        }
        let sampler = self.sampler();
        let mut warnings = Vec::new();
        match sampler {
            Sampler::Edict(e) => warnings.extend(e.validate()?),
            Sampler::TwoStep(m) => m.validate()?,
            Sampler::Ddim => {}
        }
        let steps = schedule.steps(self.steps, self.strength, self.steps_offset)?;
        if matches!(sampler, Sampler::TwoStep(_)) && steps.len() < 2 {
            return Err(PipelineError::Invalid(format!(
                "{} needs at least 2 steps to run (steps × strength = {} × {} runs {}): it denoises from a pair of levels",
                self.method,
                self.steps,
                self.strength,
                steps.len()
            )));
        }
        Ok((steps, warnings))
    }

    /// The sampler these settings choose, with its knobs.
    pub fn sampler(&self) -> Sampler {
        match self.method {
            Method::Edict => Sampler::Edict(Edict { mix: self.mix, leapfrog: self.leapfrog }),
            Method::Bdia => Sampler::TwoStep(TwoStep::Bdia { gamma: self.gamma }),
            Method::Belm => Sampler::TwoStep(TwoStep::Belm),
            Method::Ddim => Sampler::Ddim,
        }
    }

    /// Each setting as (name, text): strings as they are, numbers and booleans as JSON writes
    /// them. What a latents file's metadata holds.
    pub fn to_strings(&self) -> Vec<(String, String)> {
        let serde_json::Value::Object(fields) = serde_json::to_value(self).unwrap_or_default() else {
            return Vec::new();
        };
        fields
            .into_iter()
            .map(|(k, v)| match v {
                serde_json::Value::String(s) => (k, s),
                v => (k, v.to_string()),
            })
            .collect()
    }

    /// The inverse of [`Self::to_strings`]: `get(name)` gives each setting's text. The error
    /// names the setting that is missing or unreadable.
    pub fn from_strings(get: impl Fn(&str) -> Option<String>) -> std::result::Result<Self, String> {
        let Ok(serde_json::Value::Object(defaults)) = serde_json::to_value(DEFAULTS) else {
            return Err("settings are not a JSON object".into());
        };
        let mut fields = serde_json::Map::new();
        for (k, default) in defaults {
            let text = get(&k).ok_or_else(|| format!("metadata lacks `{k}`"))?;
            // numbers parsed by Rust (correctly rounded; serde_json's float parser is not)
            let value = match default {
                serde_json::Value::String(_) => Some(serde_json::Value::String(text.clone())),
                serde_json::Value::Bool(_) => text.parse::<bool>().ok().map(Into::into),
                serde_json::Value::Number(n) if n.is_u64() => text.parse::<u64>().ok().map(Into::into),
                _ => text.parse::<f64>().ok().and_then(serde_json::Number::from_f64).map(Into::into),
            };
            let value = value.ok_or_else(|| format!("metadata `{k}` = `{text}` is not a valid {k}"))?;
            fields.insert(k, value);
        }
        serde_json::from_value(serde_json::Value::Object(fields)).map_err(|e| format!("metadata: {e}"))
    }
}

/// Which sampler inverts and denoises: EDICT, BDIA or O-BELM (exact), or DDIM (the one-chain
/// baseline).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Method {
    #[default]
    Edict,
    Bdia,
    Belm,
    Ddim,
}

impl Method {
    pub const ALL: [Method; 4] = [Self::Edict, Self::Bdia, Self::Belm, Self::Ddim];

    /// The method's name in files, reports and on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Self::Edict => "edict",
            Self::Bdia => "bdia",
            Self::Belm => "belm",
            Self::Ddim => "ddim",
        }
    }
}

impl std::str::FromStr for Method {
    type Err = PipelineError;
    fn from_str(s: &str) -> Result<Self> {
        Self::ALL
            .into_iter()
            .find(|m| m.name() == s)
            .ok_or_else(|| PipelineError::Invalid(format!("method `{s}`: expected edict, bdia, belm or ddim")))
    }
}

impl std::fmt::Display for Method {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_round_trip_through_strings() {
        let s = Settings { steps: 7, strength: 1.0, negative: "1".into(), leapfrog: false, ..DEFAULTS };
        let texts = s.to_strings();
        let get = |k: &str| texts.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
        assert_eq!(Settings::from_strings(get).unwrap(), s);
        // one entry per field, under the field's name
        let names: Vec<&str> = texts.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(names.len(), 9);
        assert!(
            ["method", "steps", "strength", "mix", "gamma", "guidance", "negative", "leapfrog", "steps_offset"]
                .iter()
                .all(|k| names.contains(k))
        );
        // the method by its name
        let belm = Settings { method: Method::Belm, gamma: 0.5, ..s.clone() };
        let texts = belm.to_strings();
        assert!(texts.contains(&("method".into(), "belm".into())) && texts.contains(&("gamma".into(), "0.5".into())));
        let get_belm = |k: &str| texts.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
        assert_eq!(Settings::from_strings(get_belm).unwrap(), belm);
        // a number written by hand reads back; a bad one is named
        let old = |k: &str| Some(if k == "strength" { "1".to_string() } else { get(k).unwrap() });
        assert_eq!(Settings::from_strings(old).unwrap().strength, 1.0);
        let bad = |k: &str| Some(if k == "steps" { "x".to_string() } else { get(k).unwrap() });
        assert_eq!(Settings::from_strings(bad).unwrap_err(), "metadata `steps` = `x` is not a valid steps");
        let missing = |k: &str| (k != "mix").then(|| get(k).unwrap());
        assert_eq!(Settings::from_strings(missing).unwrap_err(), "metadata lacks `mix`");
    }

    #[test]
    fn methods_parse_by_name_and_two_step_ones_need_two_levels() {
        for m in Method::ALL {
            assert_eq!(m.name().parse::<Method>().unwrap(), m);
        }
        assert_eq!("o-belm".parse::<Method>().unwrap_err().to_string(), "method `o-belm`: expected edict, bdia, belm or ddim");
        let sched = Schedule::default();
        let one = Settings { method: Method::Belm, steps: 10, strength: 0.1, ..DEFAULTS };
        let e = one.validate(&sched).unwrap_err().to_string();
        assert!(e.contains("belm needs at least 2 steps to run"), "{e}");
        assert!(Settings { method: Method::Edict, ..one }.validate(&sched).is_ok());
        let bad = Settings { method: Method::Bdia, gamma: 0.0, ..DEFAULTS };
        assert!(bad.validate(&sched).unwrap_err().to_string().contains("gamma"));
        // γ only matters to BDIA, the mix only to EDICT
        assert!(Settings { gamma: 0.0, ..DEFAULTS }.validate(&sched).is_ok());
        assert!(Settings { method: Method::Belm, mix: 0.2, ..DEFAULTS }.validate(&sched).is_ok());
    }

    #[test]
    fn partial_options_take_the_defaults_and_unknown_ones_are_refused() {
        let s: Settings = serde_json::from_str(r#"{"steps": 4, "method": "bdia"}"#).unwrap();
        assert_eq!(s, Settings { steps: 4, method: Method::Bdia, ..DEFAULTS });
        let e = serde_json::from_str::<Settings>(r#"{"method": "sdedit"}"#).unwrap_err().to_string();
        assert!(e.contains("unknown variant `sdedit`"), "{e}");
        let e = serde_json::from_str::<Settings>(r#"{"stpes": 4}"#).unwrap_err().to_string();
        assert!(e.contains("unknown field `stpes`"), "{e}");
    }
}
