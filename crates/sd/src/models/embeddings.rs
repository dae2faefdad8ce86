//! diffusers `embeddings`: the sinusoidal timestep embedding and its MLP.

use burn::module::Module;
use burn::nn::Linear;
use burn::tensor::Tensor;
use burn::tensor::activation::silu;

use crate::Result;
use crate::layers::nn::linear;
use crate::checkpoint::weights::VarBuilder;

/// `get_timestep_embedding` for one timestep, computed on the host in f32 the way diffusers
/// does (`exp(-ln(10000)·k / (half − shift))`, then `t·freq`), so the first layer sees the same
/// numbers as PyTorch. `flip_sin_to_cos` puts cos first, as SD does.
pub fn timestep_embedding(t: f64, dim: usize, flip_sin_to_cos: bool, freq_shift: f64) -> Vec<f32> {
    let half = dim / 2;
    let scale = -(10000f64.ln()) as f32;
    let denom = (half as f64 - freq_shift) as f32;
    let args: Vec<f32> = (0..half)
        .map(|k| {
            let freq = ((scale * k as f32 / denom) as f64).exp() as f32;
            t as f32 * freq
        })
        .collect();
    let sin = args.iter().map(|&a| (a as f64).sin() as f32);
    let cos = args.iter().map(|&a| (a as f64).cos() as f32);
    let mut v: Vec<f32> = if flip_sin_to_cos { cos.chain(sin).collect() } else { sin.chain(cos).collect() };
    v.resize(dim, 0.0); // odd dims are zero-padded, as in diffusers
    v
}

/// diffusers `TimestepEmbedding`: `linear_1`, SiLU, `linear_2`.
#[derive(Module, Debug)]
pub struct TimestepEmbedding {
    pub linear_1: Linear,
    pub linear_2: Linear,
}

impl TimestepEmbedding {
    pub fn load(vb: &VarBuilder, d_in: usize, d_out: usize) -> Result<Self> {
        Ok(Self {
            linear_1: linear(&vb.pp("linear_1"), d_in, d_out, true)?,
            linear_2: linear(&vb.pp("linear_2"), d_out, d_out, true)?,
        })
    }

    pub fn forward(&self, x: Tensor<2>) -> Tensor<2> {
        self.linear_2.forward(silu(self.linear_1.forward(x)))
    }
}
