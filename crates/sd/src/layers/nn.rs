//! Burn's layers built from checkpoint tensors: PyTorch layouts in, Burn layouts out.
//!
//! Layers are assembled from their parameters rather than through Burn's `Config::init`, which
//! would first draw random weights (860 M of them for SD's UNet) only to overwrite them;
//! `LayerNorm`, whose epsilon is private, is the exception: its init allocates `d` ones.

use burn::module::Param;
use burn::nn::conv::Conv2d;
use burn::nn::{
    Embedding, GroupNorm, LayerNorm, LayerNormConfig, Linear, PaddingConfig2d,
};
use burn::tensor::Tensor;
use burn::tensor::ops::ConvOptions;

use crate::Result;
use crate::device::profile::{Kind, step};
use crate::checkpoint::weights::VarBuilder;

/// `torch.nn.Linear`: stored `[out, in]`, Burn keeps `[in, out]`, so transpose on the host; a
/// streamed weight (on the device only) is taken transposed there.
pub fn linear(vb: &VarBuilder, d_in: usize, d_out: usize, bias: bool) -> Result<Linear> {
    if vb.on_device_only("weight") {
        let weight = vb.get::<2>("weight", [d_out, d_in])?.transpose();
        let bias = if bias { Some(Param::from_tensor(vb.get("bias", [d_out])?)) } else { None };
        return Ok(Linear { weight: Param::from_tensor(weight), bias });
    }
    let w = vb.host_f32("weight", &[d_out, d_in])?;
    let b = if bias { Some(vb.host_f32("bias", &[d_out])?) } else { None };
    Ok(linear_from(vb, &w, b, d_in, d_out))
}

/// A bias-free linear map stored `[in, out]` under `name` (OpenCLIP's `x @ proj` projections),
/// Burn's own layout.
pub fn linear_in_out(vb: &VarBuilder, name: &str, d_in: usize, d_out: usize) -> Result<Linear> {
    Ok(Linear { weight: Param::from_tensor(vb.get(name, [d_in, d_out])?), bias: None })
}

/// q, k and v of width `d` from one fused projection (`in_proj`, `[3d, d]`, OpenCLIP).
pub fn fused_qkv(vb: &VarBuilder, d: usize) -> Result<[Linear; 3]> {
    let w = vb.host_f32("weight", &[3 * d, d])?;
    let b = vb.host_f32("bias", &[3 * d])?;
    let part = |i: usize| linear_from(vb, &w[i * d * d..(i + 1) * d * d], Some(b[i * d..(i + 1) * d].to_vec()), d, d);
    Ok([part(0), part(1), part(2)])
}

/// A Burn `Linear` from a PyTorch-layout `[out, in]` weight and an optional bias.
fn linear_from(vb: &VarBuilder, w: &[f32], bias: Option<Vec<f32>>, d_in: usize, d_out: usize) -> Linear {
    let mut t = vec![0f32; w.len()];
    for o in 0..d_out {
        for i in 0..d_in {
            t[i * d_out + o] = w[o * d_in + i];
        }
    }
    Linear {
        weight: Param::from_tensor(vb.tensor(t, [d_in, d_out])),
        bias: bias.map(|b| Param::from_tensor(vb.tensor(b, [d_out]))),
    }
}

/// Parameters of a `torch.nn.Linear` (`[out, in]` weight, optional bias).
pub fn linear_params(d_in: usize, d_out: usize, bias: bool) -> u64 {
    (d_in * d_out + if bias { d_out } else { 0 }) as u64
}

/// Parameters of a GroupNorm or LayerNorm over `c` channels (weight and bias).
pub fn norm_params(c: usize) -> u64 {
    2 * c as u64
}

/// A `torch.nn.Conv2d` as SD stores them: square kernel, symmetric padding, a bias unless
/// [`ConvSpec::without_bias`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConvSpec {
    pub c_in: usize,
    pub c_out: usize,
    pub kernel: usize,
    pub stride: usize,
    pub padding: usize,
    pub bias: bool,
}

impl ConvSpec {
    /// 3×3, stride 1, padding 1: keeps the spatial size.
    pub fn k3(c_in: usize, c_out: usize) -> Self {
        Self { c_in, c_out, kernel: 3, stride: 1, padding: 1, bias: true }
    }

    /// 1×1: a linear map on each pixel's channels.
    pub fn k1(c_in: usize, c_out: usize) -> Self {
        Self { c_in, c_out, kernel: 1, stride: 1, padding: 0, bias: true }
    }

    /// 3×3 with stride 2 and padding 1: halves the spatial size.
    pub fn halving(channels: usize) -> Self {
        Self { stride: 2, ..Self::k3(channels, channels) }
    }

    /// The same conv with no bias (`bias=False`).
    pub fn without_bias(self) -> Self {
        Self { bias: false, ..self }
    }

    /// Weight and bias elements.
    pub fn parameters(&self) -> u64 {
        (self.c_out * self.c_in * self.kernel * self.kernel + if self.bias { self.c_out } else { 0 }) as u64
    }
}

/// The conv `s` describes, from `weight` `[c_out, c_in, k, k]` and `bias` `[c_out]`.
pub fn conv2d(vb: &VarBuilder, s: ConvSpec) -> Result<Conv2d> {
    let ConvSpec { c_in, c_out, kernel, stride, padding, bias } = s;
    let shape = [c_out, c_in, kernel, kernel];
    #[cfg(all(feature = "cpu", not(target_arch = "wasm32")))]
    // 3×3 stride-1 weights tap-major on the CPU backend, the layout its GEMM conv reads in place
    let weight = if stride == 1
        && kernel == 3
        && vb.device() == &burn::tensor::Device::flex()
        && vb.dtype() == burn::tensor::DType::F32
        && !vb.on_device_only("weight")
    {
        crate::layers::cpu_kernels::tap_major_weight(vb.host_f32("weight", &shape)?, shape)
    } else {
        vb.get("weight", shape)?
    };
    #[cfg(not(all(feature = "cpu", not(target_arch = "wasm32"))))]
    let weight = vb.get("weight", shape)?;
    Ok(Conv2d {
        weight: Param::from_tensor(weight),
        bias: if bias { Some(Param::from_tensor(vb.get("bias", [c_out])?)) } else { None },
        stride: [stride, stride],
        kernel_size: [kernel, kernel],
        dilation: [1, 1],
        groups: 1,
        padding: PaddingConfig2d::Explicit(padding, padding, padding, padding),
    })
}

/// `conv` applied to `x` (see [`conv2d_with`]).
pub fn conv_forward(conv: &Conv2d, x: Tensor<4>) -> Tensor<4> {
    let options = ConvOptions::new_with_padding(conv.stride, conv_padding(conv), conv.dilation, conv.groups);
    conv2d_with(x, conv.weight.val(), conv.bias.as_ref().map(|b| b.val()), options)
}

/// Burn's functional `conv2d`, except for SD's 3×3 and 1×1 stride-1 convolutions: on the CPU
/// backend in f32 GEMMs on the NCHW tensor ([`crate::layers::cpu_kernels`]; flex's own conv copies the
/// input to channels-last and builds im2col tiles on every call), on the GPU backends in f32 and
/// f16 im2col + matmul ([`crate::layers::gpu_kernels`]; Burn's conv there is untiled).
pub fn conv2d_with(x: Tensor<4>, weight: Tensor<4>, bias: Option<Tensor<1>>, options: ConvOptions<2>) -> Tensor<4> {
    let device = x.device();
    step(Kind::Conv, &device, || conv2d_any(x, weight, bias, options))
}

fn conv2d_any(x: Tensor<4>, weight: Tensor<4>, bias: Option<Tensor<1>>, options: ConvOptions<2>) -> Tensor<4> {
    #[cfg(all(feature = "cpu", not(target_arch = "wasm32")))]
    let x = if options.dilation == [1, 1] && options.groups == 1 {
        let [(top, bottom), (left, right)] = options.padding;
        match crate::layers::cpu_kernels::conv2d(x, &weight, bias.as_ref(), options.stride, [top, bottom, left, right]) {
            Ok(y) => return y,
            Err(back) => back,
        }
    } else {
        x
    };
    let x = match crate::layers::gpu_kernels::conv2d(x, &weight, bias.as_ref(), &options) {
        Ok(y) => return y,
        Err(back) => back,
    };
    burn::tensor::module::conv2d(x, weight, bias, options)
}

/// `silu(gn(x))`: one fused pass on the CPU backend ([`crate::layers::cpu_kernels`]), Burn's ops elsewhere.
pub fn group_norm_silu(gn: &GroupNorm, x: Tensor<4>) -> Tensor<4> {
    let device = x.device();
    step(Kind::Norm, &device, || group_norm_silu_any(gn, x))
}

fn group_norm_silu_any(gn: &GroupNorm, x: Tensor<4>) -> Tensor<4> {
    #[cfg(all(feature = "cpu", not(target_arch = "wasm32")))]
    let x = match crate::layers::cpu_kernels::group_norm_silu(x, gn) {
        Ok(y) => return y,
        Err(back) => back,
    };
    burn::tensor::activation::silu(gn.forward(x))
}

/// `[(top, bottom), (left, right)]` padding of `conv`.
pub fn conv_padding(conv: &Conv2d) -> [(usize, usize); 2] {
    match conv.padding {
        PaddingConfig2d::Explicit(top, left, bottom, right) => [(top, bottom), (left, right)],
        PaddingConfig2d::Valid => [(0, 0), (0, 0)],
        // `conv2d` above builds every conv with explicit padding
        PaddingConfig2d::Same => unreachable!("SD's convolutions have explicit padding"),
    }
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
