//! Building blocks the networks share: Burn modules made from checkpoint tensors ([`nn`]), convolutions
//! and norms over row bands of a large activation ([`bands`]), and the backends' own kernels for
//! convolutions and GroupNorm ([`cpu_kernels`], [`gpu_kernels`]). Every activation buffer is cut to
//! [`MAX_BUFFER_ELEMENTS`].

pub mod bands;
#[cfg(all(feature = "cpu", not(target_arch = "wasm32")))]
pub mod cpu_kernels;
pub mod gpu_kernels;
pub mod nn;

/// Most elements of any one activation buffer: 2^24 = 64 MiB in f32, half of WebGPU's
/// default 128 MiB storage-buffer binding limit (GroupNorm widens f16 to f32, doubling a
/// buffer). Attention scores, the UNet's feed-forward and the VAE's full-resolution
/// activations are cut to fit. A fixed number, not the adapter's limit, so that every backend
/// cuts the same way and computes the same.
pub const MAX_BUFFER_ELEMENTS: usize = 1 << 24;
