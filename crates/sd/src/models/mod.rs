//! The networks, one file per diffusers (or transformers) module.

pub mod attention;
pub mod attention_control;
pub mod autoencoder_tiny;
pub mod clip_score;
pub mod clip_text;
pub mod dino_vit;
pub mod embeddings;
pub mod lpips;
pub mod resnet;
pub mod unet_2d;
pub mod unet_2d_blocks;
pub mod vae;
