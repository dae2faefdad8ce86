//! diffusers `resnet`: `ResnetBlock2D`, `Downsample2D`, `Upsample2D`.

use burn::module::Module;
use burn::nn::conv::Conv2d;
use burn::nn::{GroupNorm, Linear, PaddingConfig2d};
use burn::tensor::Tensor;
use burn::tensor::activation::silu;
use burn::tensor::module::interpolate;
use burn::tensor::ops::{InterpolateMode, InterpolateOptions};

use crate::Result;
use crate::nn::{conv2d, group_norm, linear};
use crate::weights::VarBuilder;

/// GroupNorm, SiLU, 3×3 conv, plus the projected time embedding (UNet only), twice; a 1×1
/// `conv_shortcut` when the channel count changes.
#[derive(Module, Debug)]
pub struct ResnetBlock2D {
    pub norm1: GroupNorm,
    pub conv1: Conv2d,
    pub time_emb_proj: Option<Linear>,
    pub norm2: GroupNorm,
    pub conv2: Conv2d,
    pub conv_shortcut: Option<Conv2d>,
}

impl ResnetBlock2D {
    /// `temb_channels` is `None` in the VAE.
    pub fn load(
        vb: &VarBuilder,
        c_in: usize,
        c_out: usize,
        temb_channels: Option<usize>,
        groups: usize,
        eps: f64,
    ) -> Result<Self> {
        Ok(Self {
            norm1: group_norm(&vb.pp("norm1"), groups, c_in, eps)?,
            conv1: conv2d(&vb.pp("conv1"), c_in, c_out, 3, 1, 1)?,
            time_emb_proj: temb_channels
                .map(|t| linear(&vb.pp("time_emb_proj"), t, c_out, true))
                .transpose()?,
            norm2: group_norm(&vb.pp("norm2"), groups, c_out, eps)?,
            conv2: conv2d(&vb.pp("conv2"), c_out, c_out, 3, 1, 1)?,
            conv_shortcut: (c_in != c_out)
                .then(|| conv2d(&vb.pp("conv_shortcut"), c_in, c_out, 1, 1, 0))
                .transpose()?,
        })
    }

    /// `temb` is the already-activated time embedding `silu(emb)`, `[b, temb_channels]`.
    pub fn forward(&self, x: Tensor<4>, temb: Option<&Tensor<2>>) -> Tensor<4> {
        let mut h = self.conv1.forward(silu(self.norm1.forward(x.clone())));
        if let (Some(proj), Some(t)) = (&self.time_emb_proj, temb) {
            h = h + proj.forward(t.clone()).unsqueeze_dims::<4>(&[2, 3]);
        }
        let h = self.conv2.forward(silu(self.norm2.forward(h)));
        let skip = match &self.conv_shortcut {
            Some(c) => c.forward(x),
            None => x,
        };
        skip + h
    }
}

/// Stride-2 3×3 conv. The VAE pads only bottom/right (`padding=0` plus `F.pad(0,1,0,1)`).
#[derive(Module, Debug)]
pub struct Downsample2D {
    pub conv: Conv2d,
}

impl Downsample2D {
    pub fn load(vb: &VarBuilder, channels: usize, asymmetric_pad: bool) -> Result<Self> {
        let mut conv = conv2d(&vb.pp("conv"), channels, channels, 3, 2, 1)?;
        if asymmetric_pad {
            conv.padding = PaddingConfig2d::Explicit(0, 0, 1, 1);
        }
        Ok(Self { conv })
    }

    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        self.conv.forward(x)
    }
}

/// Nearest-neighbour upsampling (to `size`, default 2×) followed by a 3×3 conv.
#[derive(Module, Debug)]
pub struct Upsample2D {
    pub conv: Conv2d,
}

impl Upsample2D {
    pub fn load(vb: &VarBuilder, channels: usize) -> Result<Self> {
        Ok(Self {
            conv: conv2d(&vb.pp("conv"), channels, channels, 3, 1, 1)?,
        })
    }

    pub fn forward(&self, x: Tensor<4>, size: Option<[usize; 2]>) -> Tensor<4> {
        let [_, _, h, w] = x.dims();
        let size = size.unwrap_or([h * 2, w * 2]);
        let up = interpolate(
            x,
            InterpolateOptions::new(InterpolateMode::Nearest).with_output_size(size),
        );
        self.conv.forward(up)
    }
}
