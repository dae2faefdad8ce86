//! diffusers `resnet`: `ResnetBlock2D`, `Downsample2D`, `Upsample2D`.

use burn::module::Module;
use burn::nn::conv::Conv2d;
use burn::nn::{GroupNorm, Linear, PaddingConfig2d};
use burn::tensor::Tensor;
use burn::tensor::module::interpolate;
use burn::tensor::ops::{InterpolateMode, InterpolateOptions};

use crate::Result;
use crate::layers::bands::Bands;
use crate::layers::nn::{ConvSpec, conv_forward, conv2d, group_norm, group_norm_silu, linear, linear_params, norm_params};
use crate::checkpoint::weights::VarBuilder;

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

/// The shape of one `ResnetBlock2D`.
#[derive(Debug, Clone, Copy)]
pub struct ResnetConfig {
    pub c_in: usize,
    pub c_out: usize,
    /// The time embedding's width; `None` in the VAE, which has none.
    pub temb_channels: Option<usize>,
    pub groups: usize,
    pub eps: f64,
}

impl ResnetConfig {
    /// Parameters of the block [`ResnetBlock2D::load`] builds.
    pub fn parameters(&self) -> u64 {
        let &ResnetConfig { c_in, c_out, temb_channels, .. } = self;
        norm_params(c_in)
            + ConvSpec::k3(c_in, c_out).parameters()
            + temb_channels.map_or(0, |t| linear_params(t, c_out, true))
            + norm_params(c_out)
            + ConvSpec::k3(c_out, c_out).parameters()
            + if c_in != c_out { ConvSpec::k1(c_in, c_out).parameters() } else { 0 }
    }
}

impl ResnetBlock2D {
    pub fn load(vb: &VarBuilder, c: ResnetConfig) -> Result<Self> {
        let ResnetConfig { c_in, c_out, temb_channels, groups, eps } = c;
        Ok(Self {
            norm1: group_norm(&vb.pp("norm1"), groups, c_in, eps)?,
            conv1: conv2d(&vb.pp("conv1"), ConvSpec::k3(c_in, c_out))?,
            time_emb_proj: temb_channels
                .map(|t| linear(&vb.pp("time_emb_proj"), t, c_out, true))
                .transpose()?,
            norm2: group_norm(&vb.pp("norm2"), groups, c_out, eps)?,
            conv2: conv2d(&vb.pp("conv2"), ConvSpec::k3(c_out, c_out))?,
            conv_shortcut: (c_in != c_out)
                .then(|| conv2d(&vb.pp("conv_shortcut"), ConvSpec::k1(c_in, c_out)))
                .transpose()?,
        })
    }

    /// `temb` is the already-activated time embedding `silu(emb)`, `[b, temb_channels]`.
    pub fn forward(&self, x: Tensor<4>, temb: Option<&Tensor<2>>) -> Tensor<4> {
        let mut h = conv_forward(&self.conv1, group_norm_silu(&self.norm1, x.clone()));
        if let (Some(proj), Some(t)) = (&self.time_emb_proj, temb) {
            h = h + proj.forward(t.clone()).unsqueeze_dims::<4>(&[2, 3]);
        }
        let h = conv_forward(&self.conv2, group_norm_silu(&self.norm2, h));
        let skip = match &self.conv_shortcut {
            Some(c) => conv_forward(c, x),
            None => x,
        };
        skip + h
    }

    /// [`Self::forward`] without time embedding (the VAE's), on banded activations.
    pub fn forward_bands(&self, x: Bands) -> Bands {
        let h = x.clone().group_norm_silu(&self.norm1).conv(&self.conv1);
        let h = h.group_norm_silu(&self.norm2).conv(&self.conv2);
        let skip = match &self.conv_shortcut {
            Some(c) => x.conv(c),
            None => x,
        };
        skip.add(h)
    }
}

/// Stride-2 3×3 conv. The VAE pads only bottom/right (`padding=0` plus `F.pad(0,1,0,1)`).
#[derive(Module, Debug)]
pub struct Downsample2D {
    pub conv: Conv2d,
}

impl Downsample2D {
    pub fn load(vb: &VarBuilder, channels: usize, asymmetric_pad: bool) -> Result<Self> {
        let mut conv = conv2d(&vb.pp("conv"), ConvSpec::halving(channels))?;
        if asymmetric_pad {
            conv.padding = PaddingConfig2d::Explicit(0, 0, 1, 1);
        }
        Ok(Self { conv })
    }

    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        conv_forward(&self.conv, x)
    }

    pub fn forward_bands(&self, x: Bands) -> Bands {
        x.conv(&self.conv)
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
            conv: conv2d(&vb.pp("conv"), ConvSpec::k3(channels, channels))?,
        })
    }

    pub fn forward(&self, x: Tensor<4>, size: Option<[usize; 2]>) -> Tensor<4> {
        let [_, _, h, w] = x.dims();
        let size = size.unwrap_or([h * 2, w * 2]);
        let up = interpolate(
            x,
            InterpolateOptions::new(InterpolateMode::Nearest).with_output_size(size),
        );
        conv_forward(&self.conv, up)
    }

    /// 2× upsampling and the conv on banded activations (the VAE decoder's).
    pub fn forward_bands(&self, x: Bands) -> Bands {
        x.upsample2x().conv(&self.conv)
    }
}
