//! Errors of the editing pipeline: each names what the user can fix.

use edict_sd::SdError;

#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    #[error(transparent)]
    Model(#[from] SdError),
    #[error("{0}")]
    Invalid(String),
    #[error("{stage}: latents became non-finite at step {step} (timestep {timestep}); try fewer steps, a higher mix or a lower guidance")]
    NonFinite {
        stage: &'static str,
        step: usize,
        timestep: usize,
    },
    #[error("cancelled")]
    Cancelled,
    #[error("image: {0}")]
    Image(String),
    #[error("latents file {path}: {reason}")]
    Latents { path: String, reason: String },
}

pub type Result<T, E = PipelineError> = std::result::Result<T, E>;
