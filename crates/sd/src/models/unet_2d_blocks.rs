//! diffusers `unet_2d_blocks`: the UNet's down/mid/up blocks and the VAE's encoder/decoder blocks.

use burn::module::Module;
use burn::tensor::Tensor;

use crate::Result;
use crate::models::attention::{Transformer2DModel, TransformerConfig, VaeAttention, vae_attention_parameters};
use crate::models::attention_control::AttentionControl;
use crate::layers::bands::Bands;
use crate::layers::nn::ConvSpec;
use crate::models::resnet::{Downsample2D, ResnetBlock2D, ResnetConfig, Upsample2D};
use crate::checkpoint::weights::VarBuilder;

/// Settings shared by every block of one UNet.
#[derive(Debug, Clone, Copy)]
pub struct BlockSettings {
    pub temb_channels: usize,
    pub groups: usize,
    pub eps: f64,
    pub transformer: TransformerConfig,
}

impl BlockSettings {
    fn resnet(&self, c_in: usize, c_out: usize) -> ResnetConfig {
        ResnetConfig {
            c_in,
            c_out,
            temb_channels: Some(self.temb_channels),
            groups: self.groups,
            eps: self.eps,
        }
    }
}

/// What a UNet down or up block holds besides its resnets: `CrossAttnDownBlock2D` /
/// `CrossAttnUpBlock2D` have a transformer of `layers` blocks after each resnet,
/// `DownBlock2D` / `UpBlock2D` none.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BlockKind {
    CrossAttn { heads: usize, layers: usize },
    Plain,
}

/// The shape of one UNet down block.
#[derive(Debug, Clone, Copy)]
pub struct DownBlockConfig {
    pub c_in: usize,
    pub c_out: usize,
    pub layers: usize,
    pub kind: BlockKind,
    pub add_downsample: bool,
}

/// The shape of one UNet up block: `c_prev` comes from the block below, `c_in` is the width of
/// the down block's output its last resnet takes as a skip.
#[derive(Debug, Clone, Copy)]
pub struct UpBlockConfig {
    pub c_in: usize,
    pub c_prev: usize,
    pub c_out: usize,
    pub layers: usize,
    pub kind: BlockKind,
    pub add_upsample: bool,
}

/// The shape of one VAE encoder or decoder block (resnets, then a 2× resample).
#[derive(Debug, Clone, Copy)]
pub struct VaeBlockConfig {
    pub c_in: usize,
    pub c_out: usize,
    pub layers: usize,
    pub resample: bool,
    pub groups: usize,
}

impl BlockKind {
    fn transformer_parameters(&self, c: usize, s: &BlockSettings) -> u64 {
        match self {
            BlockKind::CrossAttn { layers, .. } => s.transformer.parameters(c, *layers),
            BlockKind::Plain => 0,
        }
    }
}

impl DownBlockConfig {
    /// Parameters of the block [`DownBlock::load`] builds.
    pub fn parameters(&self, s: &BlockSettings) -> u64 {
        let per_layer = |j: usize| {
            let c = if j == 0 { self.c_in } else { self.c_out };
            s.resnet(c, self.c_out).parameters() + self.kind.transformer_parameters(self.c_out, s)
        };
        (0..self.layers).map(per_layer).sum::<u64>()
            + if self.add_downsample { ConvSpec::halving(self.c_out).parameters() } else { 0 }
    }
}

impl UpBlockConfig {
    /// Parameters of the block [`UpBlock::load`] builds.
    pub fn parameters(&self, s: &BlockSettings) -> u64 {
        let per_layer = |j: usize| {
            let (c, skip) = self.resnet_inputs(j);
            s.resnet(c + skip, self.c_out).parameters() + self.kind.transformer_parameters(self.c_out, s)
        };
        (0..self.layers).map(per_layer).sum::<u64>()
            + if self.add_upsample { ConvSpec::k3(self.c_out, self.c_out).parameters() } else { 0 }
    }

    /// Resnet `j`'s input width and the width of the skip state it concatenates.
    pub fn resnet_inputs(&self, j: usize) -> (usize, usize) {
        let skip = if j == self.layers - 1 { self.c_in } else { self.c_out };
        (if j == 0 { self.c_prev } else { self.c_out }, skip)
    }
}

/// Parameters of the UNet's mid block over `c` channels with a transformer of `layers` blocks.
pub fn mid_block_cross_attn_parameters(c: usize, layers: usize, s: &BlockSettings) -> u64 {
    2 * s.resnet(c, c).parameters() + s.transformer.parameters(c, layers)
}

impl VaeBlockConfig {
    /// Parameters of a VAE encoder or decoder block (resnets, then a resample conv).
    pub fn parameters(&self) -> u64 {
        let resnets: u64 = (0..self.layers).map(|j| self.resnet(j).parameters()).sum();
        resnets + if self.resample { ConvSpec::k3(self.c_out, self.c_out).parameters() } else { 0 }
    }

    /// Resnet `j`: the first maps `c_in → c_out`.
    fn resnet(&self, j: usize) -> ResnetConfig {
        let c_in = if j == 0 { self.c_in } else { self.c_out };
        ResnetConfig { c_in, c_out: self.c_out, temb_channels: None, groups: self.groups, eps: 1e-6 }
    }
}

/// Parameters of the VAE's mid block over `c` channels.
pub fn vae_mid_block_parameters(c: usize, groups: usize) -> u64 {
    let b = VaeBlockConfig { c_in: c, c_out: c, layers: 2, resample: false, groups };
    b.parameters() + vae_attention_parameters(c)
}

/// `CrossAttnDownBlock2D` (with attentions) or `DownBlock2D` (without).
#[derive(Module, Debug)]
pub struct DownBlock {
    pub resnets: Vec<ResnetBlock2D>,
    pub attentions: Vec<Transformer2DModel>,
    pub downsampler: Option<Downsample2D>,
}

impl DownBlock {
    pub fn load(vb: &VarBuilder, b: DownBlockConfig, s: &BlockSettings) -> Result<Self> {
        let DownBlockConfig { c_in, c_out, layers, kind, add_downsample } = b;
        let mut resnets = Vec::with_capacity(layers);
        let mut attentions = Vec::new();
        for j in 0..layers {
            let c = if j == 0 { c_in } else { c_out };
            let r = vb.pp("resnets").pp(j);
            resnets.push(ResnetBlock2D::load(&r, s.resnet(c, c_out))?);
            if let BlockKind::CrossAttn { heads, layers: depth } = kind {
                let a = vb.pp("attentions").pp(j);
                attentions.push(Transformer2DModel::load(&a, c_out, heads, depth, &s.transformer)?);
            }
        }
        let downsampler = add_downsample
            .then(|| Downsample2D::load(&vb.pp("downsamplers.0"), c_out, false))
            .transpose()?;
        Ok(Self {
            resnets,
            attentions,
            downsampler,
        })
    }

    /// Returns the block output and the states the up path concatenates back in.
    pub fn forward(
        &self,
        mut x: Tensor<4>,
        temb: &Tensor<2>,
        context: &Tensor<3>,
        ctl: &AttentionControl,
    ) -> (Tensor<4>, Vec<Tensor<4>>) {
        let mut states = Vec::with_capacity(self.resnets.len() + 1);
        for (j, resnet) in self.resnets.iter().enumerate() {
            x = resnet.forward(x, Some(temb));
            if let Some(attn) = self.attentions.get(j) {
                x = attn.forward(x, context.clone(), ctl);
            }
            states.push(x.clone());
        }
        if let Some(d) = &self.downsampler {
            x = d.forward(x);
            states.push(x.clone());
        }
        (x, states)
    }
}

/// `UNetMidBlock2DCrossAttn`: resnet, then (transformer, resnet) pairs.
#[derive(Module, Debug)]
pub struct MidBlockCrossAttn {
    pub resnets: Vec<ResnetBlock2D>,
    pub attentions: Vec<Transformer2DModel>,
}

impl MidBlockCrossAttn {
    pub fn load(vb: &VarBuilder, c: usize, heads: usize, layers: usize, s: &BlockSettings) -> Result<Self> {
        Ok(Self {
            resnets: (0..2)
                .map(|j| {
                    ResnetBlock2D::load(&vb.pp("resnets").pp(j), s.resnet(c, c))
                })
                .collect::<Result<_>>()?,
            attentions: vec![Transformer2DModel::load(&vb.pp("attentions.0"), c, heads, layers, &s.transformer)?],
        })
    }

    pub fn forward(&self, x: Tensor<4>, temb: &Tensor<2>, context: &Tensor<3>, ctl: &AttentionControl) -> Tensor<4> {
        let mut x = self.resnets[0].forward(x, Some(temb));
        for (attn, resnet) in self.attentions.iter().zip(&self.resnets[1..]) {
            x = resnet.forward(attn.forward(x, context.clone(), ctl), Some(temb));
        }
        x
    }
}

/// `CrossAttnUpBlock2D` (with attentions) or `UpBlock2D` (without): each resnet first
/// concatenates one skip state from the down path.
#[derive(Module, Debug)]
pub struct UpBlock {
    pub resnets: Vec<ResnetBlock2D>,
    pub attentions: Vec<Transformer2DModel>,
    pub upsampler: Option<Upsample2D>,
}

impl UpBlock {
    pub fn load(vb: &VarBuilder, b: UpBlockConfig, s: &BlockSettings) -> Result<Self> {
        let UpBlockConfig { c_out, layers, kind, add_upsample, .. } = b;
        let mut resnets = Vec::with_capacity(layers);
        let mut attentions = Vec::new();
        for j in 0..layers {
            let (c, skip) = b.resnet_inputs(j);
            let r = vb.pp("resnets").pp(j);
            resnets.push(ResnetBlock2D::load(&r, s.resnet(c + skip, c_out))?);
            if let BlockKind::CrossAttn { heads, layers: depth } = kind {
                let a = vb.pp("attentions").pp(j);
                attentions.push(Transformer2DModel::load(&a, c_out, heads, depth, &s.transformer)?);
            }
        }
        let upsampler = add_upsample
            .then(|| Upsample2D::load(&vb.pp("upsamplers.0"), c_out))
            .transpose()?;
        Ok(Self {
            resnets,
            attentions,
            upsampler,
        })
    }

    /// `skips` is popped from the back; `up_size` is the spatial size of the next skip state
    /// (so odd sizes round-trip like diffusers' `upsample_size`).
    pub fn forward(
        &self,
        mut x: Tensor<4>,
        skips: &mut Vec<Tensor<4>>,
        temb: &Tensor<2>,
        context: &Tensor<3>,
        ctl: &AttentionControl,
    ) -> Tensor<4> {
        // the down path pushed one skip state per up-block resnet; take ours, newest first
        let mine = skips.split_off(skips.len().saturating_sub(self.resnets.len()));
        for (j, (resnet, skip)) in self.resnets.iter().zip(mine.into_iter().rev()).enumerate() {
            x = resnet.forward(Tensor::cat(vec![x, skip], 1), Some(temb));
            if let Some(attn) = self.attentions.get(j) {
                x = attn.forward(x, context.clone(), ctl);
            }
        }
        if let Some(u) = &self.upsampler {
            let size = skips.last().map(|s| {
                let [_, _, h, w] = s.dims();
                [h, w]
            });
            x = u.forward(x, size);
        }
        x
    }
}

/// The VAE blocks' chain of resnets without time embedding: the first maps `c_in → c_out`.
fn vae_resnets(vb: &VarBuilder, b: &VaeBlockConfig) -> Result<Vec<ResnetBlock2D>> {
    (0..b.layers).map(|j| ResnetBlock2D::load(&vb.pp("resnets").pp(j), b.resnet(j))).collect()
}

fn run_resnets(resnets: &[ResnetBlock2D], x: Bands) -> Bands {
    resnets.iter().fold(x, |x, r| r.forward_bands(x))
}

/// VAE `DownEncoderBlock2D`: resnets without time embedding, then an asymmetric-pad downsample.
#[derive(Module, Debug)]
pub struct DownEncoderBlock2D {
    pub resnets: Vec<ResnetBlock2D>,
    pub downsampler: Option<Downsample2D>,
}

impl DownEncoderBlock2D {
    pub fn load(vb: &VarBuilder, b: VaeBlockConfig) -> Result<Self> {
        Ok(Self {
            resnets: vae_resnets(vb, &b)?,
            downsampler: b
                .resample
                .then(|| Downsample2D::load(&vb.pp("downsamplers.0"), b.c_out, true))
                .transpose()?,
        })
    }

    pub fn forward(&self, x: Bands) -> Bands {
        let x = run_resnets(&self.resnets, x);
        match &self.downsampler {
            Some(d) => d.forward_bands(x),
            None => x,
        }
    }
}

/// VAE `UpDecoderBlock2D`: resnets without time embedding or skips, then a 2× upsample.
#[derive(Module, Debug)]
pub struct UpDecoderBlock2D {
    pub resnets: Vec<ResnetBlock2D>,
    pub upsampler: Option<Upsample2D>,
}

impl UpDecoderBlock2D {
    pub fn load(vb: &VarBuilder, b: VaeBlockConfig) -> Result<Self> {
        Ok(Self {
            resnets: vae_resnets(vb, &b)?,
            upsampler: b
                .resample
                .then(|| Upsample2D::load(&vb.pp("upsamplers.0"), b.c_out))
                .transpose()?,
        })
    }

    pub fn forward(&self, x: Bands) -> Bands {
        let x = run_resnets(&self.resnets, x);
        match &self.upsampler {
            Some(u) => u.forward_bands(x),
            None => x,
        }
    }
}

/// VAE `UNetMidBlock2D`: resnet, self-attention, resnet.
#[derive(Module, Debug)]
pub struct MidBlock2D {
    pub resnets: Vec<ResnetBlock2D>,
    pub attentions: Vec<VaeAttention>,
}

impl MidBlock2D {
    pub fn load(vb: &VarBuilder, c: usize, groups: usize) -> Result<Self> {
        Ok(Self {
            resnets: vae_resnets(vb, &VaeBlockConfig { c_in: c, c_out: c, layers: 2, resample: false, groups })?,
            attentions: vec![VaeAttention::load(&vb.pp("attentions.0"), c, groups)?],
        })
    }

    pub fn forward(&self, x: Bands) -> Bands {
        let mut x = self.resnets[0].forward_bands(x);
        for (attn, resnet) in self.attentions.iter().zip(&self.resnets[1..]) {
            x = resnet.forward_bands(x.whole(|x| attn.forward(x)));
        }
        x
    }
}
