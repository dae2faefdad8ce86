//! diffusers `AutoencoderKL`: image ⇄ latent for SD 1.x, 2.x and XL.

use burn::module::Module;
use burn::nn::conv::Conv2d;
use burn::nn::GroupNorm;
use burn::tensor::Tensor;
use serde::Deserialize;
use serde::de::IgnoredAny;

use crate::layers::bands::Bands;
use crate::layers::MAX_BUFFER_ELEMENTS;
use crate::layers::nn::{ConvSpec, conv2d, group_norm, norm_params};
use crate::models::unet_2d_blocks::{DownEncoderBlock2D, MidBlock2D, UpDecoderBlock2D, VaeBlockConfig, vae_mid_block_parameters};
use crate::checkpoint::weights::VarBuilder;
use crate::error::parse_config_requiring;
use crate::{Result, SdError};

/// `vae/config.json`. A field the file leaves out takes SD 1.5's value ([`VaeConfig::sd15`]),
/// except `layers_per_block`, which takes diffusers' default, and `block_out_channels`, which
/// [`VaeConfig::from_json`] requires.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default)]
pub struct VaeConfig {
    pub in_channels: usize,
    pub out_channels: usize,
    pub block_out_channels: Vec<usize>,
    /// Missing: 1, diffusers' `AutoencoderKL` default (SD's VAE has 2 and says so).
    #[serde(default = "diffusers_layers_per_block")]
    pub layers_per_block: usize,
    pub latent_channels: usize,
    pub norm_num_groups: usize,
    pub scaling_factor: f64,
    /// Whether the VAE must run in f32 when the model runs in f16 (diffusers' default: true).
    /// SDXL's VAE overflows in f16; SDXL pipelines obey it (SD 1.x/2.x pipelines do not), and
    /// f16-safe replacements (madebyollin/sdxl-vae-fp16-fix) say false.
    pub force_upcast: bool,
}

impl Default for VaeConfig {
    fn default() -> Self {
        Self::sd15()
    }
}

fn diffusers_layers_per_block() -> usize {
    1
}

/// The field of `vae/config.json` that has no default.
#[derive(Deserialize)]
#[allow(dead_code)] // only its presence is checked
struct Required {
    block_out_channels: IgnoredAny,
}

impl VaeConfig {
    /// SD v1.5's VAE.
    pub fn sd15() -> Self {
        Self {
            in_channels: 3,
            out_channels: 3,
            block_out_channels: vec![128, 256, 512, 512],
            layers_per_block: 2,
            latent_channels: 4,
            norm_num_groups: 32,
            scaling_factor: 0.18215,
            force_upcast: true,
        }
    }

    /// SDXL's VAE: SD's architecture, retrained, with its own scaling factor.
    pub fn sdxl() -> Self {
        Self { scaling_factor: 0.13025, ..Self::sd15() }
    }

    pub fn from_json(text: &str, path: &str) -> Result<Self> {
        let c: Self = parse_config_requiring::<Self, Required>(text, path)?;
        let bad = |reason: String| SdError::config(path, reason);
        if c.block_out_channels.is_empty() || c.layers_per_block == 0 {
            return Err(bad("needs block_out_channels and layers_per_block ≥ 1".into()));
        }
        if let Some(ch) = c
            .block_out_channels
            .iter()
            .find(|&&ch| c.norm_num_groups == 0 || ch % c.norm_num_groups != 0)
        {
            return Err(bad(format!("{ch} channels cannot split into {} groups", c.norm_num_groups)));
        }
        if !(c.scaling_factor.is_finite() && c.scaling_factor > 0.0) {
            return Err(bad(format!("scaling_factor {} must be positive", c.scaling_factor)));
        }
        Ok(c)
    }

    /// Pixels per latent cell along each side: 2^(blocks − 1) (8 for SD).
    pub fn downscale(&self) -> usize {
        1 << (self.block_out_channels.len() - 1)
    }

    /// The encoder's and the decoder's blocks.
    fn blocks(&self) -> (Vec<VaeBlockConfig>, Vec<VaeBlockConfig>) {
        let ch = &self.block_out_channels;
        let n = ch.len();
        let block = |i: usize, c_in: usize, c_out: usize, layers: usize| VaeBlockConfig {
            c_in,
            c_out,
            layers,
            resample: i + 1 < n,
            groups: self.norm_num_groups,
        };
        let down = (0..n).map(|i| block(i, ch[i.saturating_sub(1)], ch[i], self.layers_per_block)).collect();
        let rev: Vec<usize> = ch.iter().rev().copied().collect();
        let up = (0..n).map(|i| block(i, rev[i.saturating_sub(1)], rev[i], self.layers_per_block + 1)).collect();
        (down, up)
    }

    /// Elements of the largest weight: a 3×3 conv of the widest block.
    pub fn largest_weight(&self) -> usize {
        self.block_out_channels.iter().map(|&c| c * c * 9).max().unwrap_or(0)
    }

    /// Parameters of the VAE [`AutoencoderKL::load`] builds.
    pub fn parameters(&self) -> u64 {
        let ch = &self.block_out_channels;
        let (Some(&c0), Some(&c_last)) = (ch.first(), ch.last()) else { return 0 };
        let (l, g) = (self.latent_channels, self.norm_num_groups);
        let (down, up) = self.blocks();
        let encoder = ConvSpec::k3(self.in_channels, c0).parameters()
            + down.iter().map(VaeBlockConfig::parameters).sum::<u64>()
            + vae_mid_block_parameters(c_last, g)
            + norm_params(c_last)
            + ConvSpec::k3(c_last, 2 * l).parameters();
        let decoder = ConvSpec::k3(l, c_last).parameters()
            + vae_mid_block_parameters(c_last, g)
            + up.iter().map(VaeBlockConfig::parameters).sum::<u64>()
            + norm_params(c0)
            + ConvSpec::k3(c0, self.out_channels).parameters();
        encoder + decoder + ConvSpec::k1(2 * l, 2 * l).parameters() + ConvSpec::k1(l, l).parameters()
    }

    /// A lower bound on the bytes of activations encoding or decoding a `width`×`height` image
    /// holds at once: four full-resolution tensors of the widest full-resolution block (the
    /// decoder's last upsampler output: 256 channels for SD, 1 GiB at 1024² in f32). Measured
    /// on the CPU backend: 4.7 such tensors at the peak.
    pub fn activation_bytes(&self, width: usize, height: usize, element_bytes: usize) -> u64 {
        let c = self.block_out_channels.iter().take(2).copied().max().unwrap_or(0);
        4 * (c * element_bytes) as u64 * width as u64 * height as u64
    }
}

#[derive(Module, Debug)]
pub struct Encoder {
    pub conv_in: Conv2d,
    pub down_blocks: Vec<DownEncoderBlock2D>,
    pub mid_block: MidBlock2D,
    pub conv_norm_out: GroupNorm,
    pub conv_out: Conv2d,
}

#[derive(Module, Debug)]
pub struct Decoder {
    pub conv_in: Conv2d,
    pub mid_block: MidBlock2D,
    pub up_blocks: Vec<UpDecoderBlock2D>,
    pub conv_norm_out: GroupNorm,
    pub conv_out: Conv2d,
}

#[derive(Module, Debug)]
pub struct AutoencoderKL {
    pub encoder: Encoder,
    pub quant_conv: Conv2d,
    pub post_quant_conv: Conv2d,
    pub decoder: Decoder,
    pub latent_channels: usize,
    /// Most elements of one activation buffer ([`MAX_BUFFER_ELEMENTS`]; tests lower it to
    /// exercise the banded path on small images).
    pub band_elements: usize,
}

impl AutoencoderKL {
    pub fn load(vb: &VarBuilder, c: &VaeConfig) -> Result<Self> {
        let ch = &c.block_out_channels;
        let n = ch.len();
        let g = c.norm_num_groups;
        let l = c.latent_channels;
        let e = vb.pp("encoder");
        let (down, up) = c.blocks();
        let down_blocks = (down.into_iter().enumerate())
            .map(|(i, b)| DownEncoderBlock2D::load(&e.pp("down_blocks").pp(i), b))
            .collect::<Result<_>>()?;
        let encoder = Encoder {
            conv_in: conv2d(&e.pp("conv_in"), ConvSpec::k3(c.in_channels, ch[0]))?,
            down_blocks,
            mid_block: MidBlock2D::load(&e.pp("mid_block"), ch[n - 1], g)?,
            conv_norm_out: group_norm(&e.pp("conv_norm_out"), g, ch[n - 1], 1e-6)?,
            conv_out: conv2d(&e.pp("conv_out"), ConvSpec::k3(ch[n - 1], 2 * l))?,
        };
        let d = vb.pp("decoder");
        let up_blocks = (up.into_iter().enumerate())
            .map(|(i, b)| UpDecoderBlock2D::load(&d.pp("up_blocks").pp(i), b))
            .collect::<Result<_>>()?;
        let decoder = Decoder {
            conv_in: conv2d(&d.pp("conv_in"), ConvSpec::k3(l, ch[n - 1]))?,
            mid_block: MidBlock2D::load(&d.pp("mid_block"), ch[n - 1], g)?,
            up_blocks,
            conv_norm_out: group_norm(&d.pp("conv_norm_out"), g, ch[0], 1e-6)?,
            conv_out: conv2d(&d.pp("conv_out"), ConvSpec::k3(ch[0], c.out_channels))?,
        };
        Ok(Self {
            encoder,
            quant_conv: conv2d(&vb.pp("quant_conv"), ConvSpec::k1(2 * l, 2 * l))?,
            post_quant_conv: conv2d(&vb.pp("post_quant_conv"), ConvSpec::k1(l, l))?,
            decoder,
            latent_channels: l,
            band_elements: MAX_BUFFER_ELEMENTS,
        })
    }

    /// Posterior mean and log-variance (clamped to [−30, 20] like diffusers) of `image` in [−1, 1].
    pub fn encode(&self, image: Tensor<4>) -> (Tensor<4>, Tensor<4>) {
        let e = &self.encoder;
        let mut h = Bands::new(image, self.band_elements).conv(&e.conv_in);
        for block in &e.down_blocks {
            h = block.forward(h);
        }
        let h = e.mid_block.forward(h).group_norm_silu(&e.conv_norm_out).conv(&e.conv_out);
        let moments = self.quant_conv.forward(h.join());
        let mean = moments.clone().narrow(1, 0, self.latent_channels);
        let logvar = moments
            .narrow(1, self.latent_channels, self.latent_channels)
            .clamp(-30.0, 20.0);
        (mean, logvar)
    }

    /// Image in about [−1, 1] from an (unscaled) latent.
    pub fn decode(&self, latent: Tensor<4>) -> Tensor<4> {
        let d = &self.decoder;
        let h = Bands::new(self.post_quant_conv.forward(latent), self.band_elements).conv(&d.conv_in);
        let mut h = d.mid_block.forward(h);
        for block in &d.up_blocks {
            h = block.forward(h);
        }
        h.group_norm_silu(&d.conv_norm_out).conv(&d.conv_out).join()
    }
}
