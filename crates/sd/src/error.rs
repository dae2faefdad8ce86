//! One error type for everything a user's files or input can get wrong.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum SdError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: not a valid safetensors file: {reason}")]
    Safetensors { path: String, reason: String },
    #[error("{file}: missing weight `{key}`")]
    MissingKey { file: String, key: String },
    #[error("{file}: weight `{key}` has shape {found:?}, expected {expected:?}")]
    Shape {
        file: String,
        key: String,
        expected: Vec<usize>,
        found: Vec<usize>,
    },
    #[error("{file}: weight `{key}` has dtype {dtype}, expected a float tensor (f32, f16 or bf16)")]
    Dtype {
        file: String,
        key: String,
        dtype: String,
    },
    #[error("{path}: {reason}")]
    Config { path: String, reason: String },
    #[error(
        "{path}: pickle checkpoints (.ckpt/.bin/.pt) are never loaded, since unpickling runs arbitrary code; \
         convert it to .safetensors first (e.g. `python -c \"import torch, safetensors.torch as s; \
         s.save_file(torch.load('{path}', weights_only=True)['state_dict'], 'model.safetensors')\"`)"
    )]
    Pickle { path: String },
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    #[error("{0}")]
    Invalid(String),
    #[error("LoRA {file}: {reason}")]
    Lora { file: String, reason: String },
    #[error("device: {0}")]
    Device(String),
    #[error(
        "out of GPU memory: a buffer of {} could not be allocated; use a smaller image, f16 precision \
         or the CPU backend",
        gib(*bytes)
    )]
    OutOfMemory { bytes: u64 },
    #[error("the GPU device was lost ({0}); nothing more can run on it, so start again on a new device")]
    DeviceLost(String),
}

fn gib(bytes: u64) -> String {
    if bytes >= 1 << 30 {
        format!("{:.1} GiB", bytes as f64 / (1u64 << 30) as f64)
    } else {
        format!("{} MiB", bytes.div_ceil(1 << 20))
    }
}

pub type Result<T, E = SdError> = std::result::Result<T, E>;

impl SdError {
    pub(crate) fn config(path: &str, reason: impl Into<String>) -> Self {
        SdError::Config {
            path: path.into(),
            reason: reason.into(),
        }
    }
}

/// Parses a model folder's `config.json`, naming the file on failure.
pub(crate) fn parse_config<T: serde::de::DeserializeOwned>(text: &str, path: &str) -> Result<T> {
    serde_json::from_str(text).map_err(|e| SdError::config(path, e.to_string()))
}

/// [`parse_config`] for a config whose struct has `#[serde(default)]` but whose fields in `R`
/// have no default: a file without one is refused with serde's "missing field" error, in the
/// order plain `serde_json::from_str` gives its errors (the values' first, then the missing
/// field, then trailing characters).
pub(crate) fn parse_config_requiring<T, R>(text: &str, path: &str) -> Result<T>
where
    T: serde::de::DeserializeOwned,
    R: serde::de::DeserializeOwned,
{
    let err = |e: serde_json::Error| SdError::config(path, e.to_string());
    let mut de = serde_json::Deserializer::from_str(text);
    let config = T::deserialize(&mut de).map_err(err)?;
    // only an object names its fields; an array (serde's fields in order) that gives them all
    // reads as before
    if text.trim_start().starts_with('{') {
        R::deserialize(&mut serde_json::Deserializer::from_str(text)).map_err(err)?;
    }
    de.end().map_err(err)?;
    Ok(config)
}
