//! Burn's layers built from checkpoint tensors: PyTorch layouts in, Burn layouts out.

use burn::module::Param;
use burn::nn::conv::Conv2d;
use burn::nn::{
    Embedding, GroupNorm, LayerNorm, LayerNormConfig, Linear, PaddingConfig2d,
};

use crate::Result;
use crate::weights::VarBuilder;

/// `torch.nn.Linear`: stored `[out, in]`, Burn keeps `[in, out]`, so transpose on the host.
pub fn linear(vb: &VarBuilder, d_in: usize, d_out: usize, bias: bool) -> Result<Linear> {
    let w = vb.host_f32("weight", &[d_out, d_in])?;
    let mut t = vec![0f32; w.len()];
    for o in 0..d_out {
        for i in 0..d_in {
            t[i * d_out + o] = w[o * d_in + i];
        }
    }
    let bias = if bias {
        Some(Param::from_tensor(vb.get("bias", [d_out])?))
    } else {
        None
    };
    Ok(Linear {
        weight: Param::from_tensor(vb.tensor(t, [d_in, d_out])),
        bias,
    })
}

/// `torch.nn.Conv2d` with square kernel, symmetric padding and a bias.
pub fn conv2d(
    vb: &VarBuilder,
    c_in: usize,
    c_out: usize,
    kernel: usize,
    stride: usize,
    padding: usize,
) -> Result<Conv2d> {
    Ok(Conv2d {
        weight: Param::from_tensor(vb.get("weight", [c_out, c_in, kernel, kernel])?),
        bias: Some(Param::from_tensor(vb.get("bias", [c_out])?)),
        stride: [stride, stride],
        kernel_size: [kernel, kernel],
        dilation: [1, 1],
        groups: 1,
        padding: PaddingConfig2d::Explicit(padding, padding, padding, padding),
    })
}

pub fn group_norm(vb: &VarBuilder, groups: usize, channels: usize, eps: f64) -> Result<GroupNorm> {
    Ok(GroupNorm {
        gamma: Some(Param::from_tensor(vb.get("weight", [channels])?)),
        beta: Some(Param::from_tensor(vb.get("bias", [channels])?)),
        num_groups: groups,
        num_channels: channels,
        epsilon: eps,
        affine: true,
    })
}

pub fn layer_norm(vb: &VarBuilder, d: usize, eps: f64) -> Result<LayerNorm> {
    let mut ln = LayerNormConfig::new(d)
        .with_epsilon(eps)
        .init(vb.device());
    ln.gamma = Param::from_tensor(vb.get("weight", [d])?);
    ln.beta = Some(Param::from_tensor(vb.get("bias", [d])?));
    Ok(ln)
}

pub fn embedding(vb: &VarBuilder, n: usize, d: usize) -> Result<Embedding> {
    Ok(Embedding {
        weight: Param::from_tensor(vb.get("weight", [n, d])?),
    })
}
