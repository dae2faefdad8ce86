//! The integration tests, one module per area, in one test crate so that Burn, wgpu and the
//! pipeline are linked once (see docs/testing.md). Run one area with `cargo test --test it AREA::`.

mod common;

mod cli;
mod clip;
mod device_errors;
mod dino;
mod edict;
mod eval;
mod eval_edit;
mod exactness;
mod images;
mod loading;
mod lora;
mod lpips;
mod networks;
mod p2p;
mod sd2;
mod sdxl;
mod taesd;
mod two_step;
