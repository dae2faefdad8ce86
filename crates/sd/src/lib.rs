//! Stable Diffusion 1.x and 2.x networks on Burn: the CLIP tokenizer and text encoder, the UNet and the
//! VAE, with weights loaded from diffusers folders and single-file checkpoints.
//!
//! One file per diffusers module, field names equal to checkpoint keys, configs read from the
//! model folder's `config.json`.

pub mod attention;
pub mod attention_control;
pub mod backend;
pub mod bands;
pub mod clip;
pub mod clip_model;
#[cfg(all(feature = "cpu", not(target_arch = "wasm32")))]
pub mod cpu_kernels;
pub mod embeddings;
pub mod error;
pub mod gpu_kernels;
pub mod model;
pub mod nn;
pub mod profile;
pub mod resnet;
pub mod scheduler;
pub mod single_file;
pub mod tokenizer;
pub mod unet_2d;
pub mod unet_2d_blocks;
pub mod vae;
pub mod weights;

pub use error::{Result, SdError};
