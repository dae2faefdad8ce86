//! Stable Diffusion 1.x and 2.x networks on Burn: the CLIP tokenizer and text encoder, the UNet and
//! the VAE, with weights loaded from diffusers folders and single-file checkpoints.
//!
//! - [`models`]: one file per diffusers/transformers module, field names equal to checkpoint
//!   keys, configs read from the model folder's `config.json`;
//! - [`layers`]: the building blocks the models share (Burn modules built from checkpoint
//!   tensors, banded convolutions, the CPU and GPU backends' own kernels) and the one buffer budget
//!   they all cut to;
//! - [`checkpoint`]: which files make a model and how their tensors are read;
//! - [`tokenizer`]: CLIP's BPE tokenizer; [`config`], [`model`]: a whole model's configs and
//!   networks; [`device`]: backends, device errors and profiling.

pub mod checkpoint;
pub mod config;
pub mod device;
pub mod error;
pub mod layers;
pub mod model;
pub mod models;
pub mod scheduler;
pub mod tokenizer;

pub use error::{Result, SdError};
