//! diffusers `UNet2DConditionModel` for SD 1.x, 2.x and XL (its `text_time` additional embedding).

use burn::module::Module;
use burn::nn::GroupNorm;
use burn::nn::conv::Conv2d;
use burn::tensor::{Tensor, TensorCreationOptions, TensorData};
use burn::tensor::activation::silu;
use serde::Deserialize;
use serde::de::IgnoredAny;

use crate::models::attention::TransformerConfig;
use crate::models::attention_control::AttentionControl;
use crate::models::embeddings::{TimestepEmbedding, timestep_embedding};
use crate::layers::nn::{ConvSpec, conv_forward, conv2d, group_norm, group_norm_silu, linear_params, norm_params};
use crate::models::unet_2d_blocks::{
    BlockKind, BlockSettings, DownBlock, DownBlockConfig, MidBlockCrossAttn, UpBlock, UpBlockConfig, mid_block_cross_attn_parameters,
};
use crate::checkpoint::weights::VarBuilder;
use crate::error::parse_config_requiring;
use crate::{Result, SdError};

/// An int or a per-block list in diffusers configs.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(untagged)]
pub enum PerBlock {
    One(usize),
    Each(Vec<usize>),
}

impl PerBlock {
    fn expand(&self, n: usize) -> Option<Vec<usize>> {
        match self {
            PerBlock::One(v) => Some(vec![*v; n]),
            PerBlock::Each(v) if v.len() == n => Some(v.clone()),
            PerBlock::Each(_) => None,
        }
    }
}

/// `unet/config.json`: the fields an SD 1.x, 2.x or XL UNet needs. A field the file leaves out takes
/// SD 1.5's value ([`UNetConfig::sd15`]), except the block channels and types and the
/// cross-attention width, which [`UNetConfig::from_json`] requires.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default)]
pub struct UNetConfig {
    pub in_channels: usize,
    pub out_channels: usize,
    pub block_out_channels: Vec<usize>,
    pub down_block_types: Vec<String>,
    pub up_block_types: Vec<String>,
    pub layers_per_block: usize,
    /// In SD configs this is the number of heads, not their width (a diffusers naming quirk).
    pub attention_head_dim: PerBlock,
    pub num_attention_heads: Option<PerBlock>,
    pub cross_attention_dim: usize,
    pub norm_num_groups: usize,
    pub norm_eps: f64,
    pub flip_sin_to_cos: bool,
    pub freq_shift: f64,
    pub use_linear_projection: bool,
    /// Attention scores and softmax in f32 when the networks run in f16 (SD 2.1); SDXL's
    /// config says `null`, diffusers' false.
    #[serde(deserialize_with = "null_as_default")]
    pub upcast_attention: bool,
    /// Transformer blocks per `Transformer2DModel`, per down block (SDXL: [1, 2, 10]); the mid
    /// block takes the last entry, the up blocks the list reversed.
    pub transformer_layers_per_block: PerBlock,
    pub sample_size: usize,
    /// `text_time` (SDXL): a pooled text embedding and six size numbers are embedded and added
    /// to the timestep's embedding ([`TextTime`]); `null` otherwise.
    pub addition_embed_type: Option<String>,
    /// Width of each size number's sinusoidal embedding (SDXL: 256).
    pub addition_time_embed_dim: Option<usize>,
    /// Input width of `add_embedding`: the pooled embedding's plus six size embeddings (SDXL:
    /// 1280 + 6·256 = 2816).
    pub projection_class_embeddings_input_dim: Option<usize>,
}

/// `null` in a config reads as the field's default.
fn null_as_default<'de, D: serde::Deserializer<'de>, T: Default + Deserialize<'de>>(d: D) -> std::result::Result<T, D::Error> {
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

/// The widths of SDXL's additional embedding (`addition_embed_type: text_time`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TextTimeDims {
    /// The pooled text embedding's width (SDXL: `text_encoder_2`'s projection, 1280).
    pub pooled: usize,
    /// Each size number's sinusoidal embedding width (256).
    pub time: usize,
}

/// The size numbers SDXL's UNet is conditioned on, in diffusers' order.
pub const TIME_IDS: usize = 6;

impl Default for UNetConfig {
    fn default() -> Self {
        Self::sd15()
    }
}

/// The fields of `unet/config.json` that have no default, in [`UNetConfig`]'s order (serde names
/// the first one missing).
#[derive(Deserialize)]
#[allow(dead_code)] // only their presence is checked
struct Required {
    block_out_channels: IgnoredAny,
    down_block_types: IgnoredAny,
    up_block_types: IgnoredAny,
    cross_attention_dim: IgnoredAny,
}

impl UNetConfig {
    /// SD v1.5's UNet.
    pub fn sd15() -> Self {
        let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect();
        Self {
            in_channels: 4,
            out_channels: 4,
            block_out_channels: vec![320, 640, 1280, 1280],
            down_block_types: s(&["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"]),
            up_block_types: s(&["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"]),
            layers_per_block: 2,
            attention_head_dim: PerBlock::One(8),
            num_attention_heads: None,
            cross_attention_dim: 768,
            norm_num_groups: 32,
            norm_eps: 1e-5,
            flip_sin_to_cos: true,
            freq_shift: 0.0,
            use_linear_projection: false,
            upcast_attention: false,
            transformer_layers_per_block: PerBlock::One(1),
            sample_size: 64,
            addition_embed_type: None,
            addition_time_embed_dim: None,
            projection_class_embeddings_input_dim: None,
        }
    }

    /// SDXL base's UNet (stabilityai/stable-diffusion-xl-base-1.0).
    pub fn sdxl() -> Self {
        let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect();
        Self {
            block_out_channels: vec![320, 640, 1280],
            down_block_types: s(&["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"]),
            up_block_types: s(&["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"]),
            attention_head_dim: PerBlock::Each(vec![5, 10, 20]),
            cross_attention_dim: 2048,
            use_linear_projection: true,
            transformer_layers_per_block: PerBlock::Each(vec![1, 2, 10]),
            sample_size: 128,
            addition_embed_type: Some("text_time".into()),
            addition_time_embed_dim: Some(256),
            projection_class_embeddings_input_dim: Some(2816),
            ..Self::sd15()
        }
    }

    /// The additional embedding's widths when `addition_embed_type` is `text_time` (SDXL).
    pub fn text_time(&self) -> Option<TextTimeDims> {
        if self.addition_embed_type.as_deref() != Some("text_time") {
            return None;
        }
        let time = self.addition_time_embed_dim?;
        let pooled = self.projection_class_embeddings_input_dim?.checked_sub(TIME_IDS * time)?;
        Some(TextTimeDims { pooled, time })
    }

    pub fn from_json(text: &str, path: &str) -> Result<Self> {
        let c: Self = parse_config_requiring::<Self, Required>(text, path)?;
        c.validate().map_err(|reason| SdError::config(path, reason))?;
        Ok(c)
    }

    fn validate(&self) -> std::result::Result<(), String> {
        let n = self.block_out_channels.len();
        if n == 0 || self.down_block_types.len() != n || self.up_block_types.len() != n {
            return Err(format!(
                "{n} block_out_channels but {} down and {} up block types",
                self.down_block_types.len(),
                self.up_block_types.len()
            ));
        }
        for t in &self.down_block_types {
            if !matches!(t.as_str(), "CrossAttnDownBlock2D" | "DownBlock2D") {
                return Err(format!("unsupported down block type `{t}`"));
            }
        }
        for t in &self.up_block_types {
            if !matches!(t.as_str(), "CrossAttnUpBlock2D" | "UpBlock2D") {
                return Err(format!("unsupported up block type `{t}`"));
            }
        }
        let heads = self.heads().ok_or("attention heads list does not match the block count")?;
        for (&c, &h) in self.block_out_channels.iter().zip(&heads) {
            if h == 0 || c % h != 0 {
                return Err(format!("{c} channels cannot split into {h} heads"));
            }
            if self.norm_num_groups == 0 || c % self.norm_num_groups != 0 {
                return Err(format!("{c} channels cannot split into {} groups", self.norm_num_groups));
            }
        }
        if self.layers_per_block == 0 {
            return Err("layers_per_block must be at least 1".into());
        }
        match self.transformer_layers_per_block.expand(n) {
            Some(l) if l.iter().all(|&l| l > 0) => {}
            _ => return Err(format!("transformer_layers_per_block must be one count ≥ 1 or one per block ({n})")),
        }
        match self.addition_embed_type.as_deref() {
            None => {}
            Some("text_time") if self.text_time().is_some_and(|d| d.time > 0 && d.pooled > 0) => {}
            Some("text_time") => {
                return Err(format!(
                    "addition_embed_type text_time needs addition_time_embed_dim and a projection_class_embeddings_input_dim \
                     above {TIME_IDS} of them"
                ));
            }
            Some(other) => return Err(format!("unsupported addition_embed_type `{other}` (only SDXL's text_time)")),
        }
        Ok(())
    }

    /// The blocks' shapes (of a validated config).
    fn blocks(&self) -> Blocks {
        let ch = &self.block_out_channels;
        let n = ch.len();
        let heads = self.heads().unwrap_or_default();
        let depth = self.transformer_layers_per_block.expand(n).unwrap_or_default();
        let settings = BlockSettings {
            temb_channels: ch[0] * 4,
            groups: self.norm_num_groups,
            eps: self.norm_eps,
            transformer: TransformerConfig {
                context_dim: self.cross_attention_dim,
                groups: self.norm_num_groups,
                upcast: self.upcast_attention,
            },
        };
        let down = (self.down_block_types.iter().enumerate())
            .map(|(i, kind)| DownBlockConfig {
                c_in: ch[i.saturating_sub(1)],
                c_out: ch[i],
                layers: self.layers_per_block,
                kind: block_kind(kind, "CrossAttnDownBlock2D", heads[i], depth[i]),
                add_downsample: i + 1 < n,
            })
            .collect();
        let rev: Vec<usize> = ch.iter().rev().copied().collect();
        let up = (self.up_block_types.iter().enumerate())
            .map(|(i, kind)| UpBlockConfig {
                c_in: rev[(i + 1).min(n - 1)],
                c_prev: rev[i.saturating_sub(1)],
                c_out: rev[i],
                layers: self.layers_per_block + 1,
                kind: block_kind(kind, "CrossAttnUpBlock2D", heads[n - 1 - i], depth[n - 1 - i]),
                add_upsample: i + 1 < n,
            })
            .collect();
        Blocks { settings, down, up, mid: (heads[n - 1], depth[n - 1]) }
    }

    /// Parameters of the UNet [`UNet2DConditionModel::load`] builds (0 for an invalid config).
    pub fn parameters(&self) -> u64 {
        if self.validate().is_err() {
            return 0;
        }
        let Blocks { settings: s, down, up, mid } = self.blocks();
        let (c0, c_last) = (self.block_out_channels[0], *self.block_out_channels.last().unwrap_or(&0));
        let add_embedding = self.projection_class_embeddings_input_dim.filter(|_| self.text_time().is_some());
        ConvSpec::k3(self.in_channels, c0).parameters()
            + linear_params(c0, 4 * c0, true)
            + linear_params(4 * c0, 4 * c0, true)
            + add_embedding.map_or(0, |d| linear_params(d, 4 * c0, true) + linear_params(4 * c0, 4 * c0, true))
            + down.iter().map(|b| b.parameters(&s)).sum::<u64>()
            + mid_block_cross_attn_parameters(c_last, mid.1, &s)
            + up.iter().map(|b| b.parameters(&s)).sum::<u64>()
            + norm_params(c0)
            + ConvSpec::k3(c0, self.out_channels).parameters()
    }

    /// Elements of the largest weight: an up block's first 3×3 conv, which takes the skip
    /// state concatenated (2560 → 1280 channels in SD), or a feed-forward projection.
    pub fn largest_weight(&self) -> usize {
        if self.validate().is_err() {
            return 0;
        }
        let conv = self.blocks().up.iter().flat_map(|b| (0..b.layers).map(|j| b.resnet_inputs(j)).map(|(c, skip)| (c + skip) * b.c_out * 9)).max();
        let ff = self.block_out_channels.iter().map(|&c| 8 * c * c).max();
        conv.max(ff).unwrap_or(0)
    }

    /// Heads per block: `num_attention_heads`, else `attention_head_dim` (diffusers' rule).
    pub fn heads(&self) -> Option<Vec<usize>> {
        let n = self.block_out_channels.len();
        self.num_attention_heads
            .as_ref()
            .unwrap_or(&self.attention_head_dim)
            .expand(n)
    }
}

/// The shapes of a UNet's blocks.
struct Blocks {
    settings: BlockSettings,
    down: Vec<DownBlockConfig>,
    up: Vec<UpBlockConfig>,
    /// The mid block's transformer: the last block's heads and depth
    mid: (usize, usize),
}

/// A block type of the config (already validated to be one of SD's) as its kind.
fn block_kind(block_type: &str, cross_attn: &str, heads: usize, layers: usize) -> BlockKind {
    if block_type == cross_attn { BlockKind::CrossAttn { heads, layers } } else { BlockKind::Plain }
}

/// What the UNet is conditioned on besides the timestep. A `&Tensor<3>` converts to the text
/// context alone (SD 1.x and 2.x).
#[derive(Clone, Copy)]
pub struct Cond<'a> {
    /// `[b, tokens, cross_attention_dim]`
    pub context: &'a Tensor<3>,
    /// SDXL's additional conditioning; required by a `text_time` UNet, ignored by others.
    pub text_time: Option<TextTime<'a>>,
}

/// SDXL's additional conditioning: each row's pooled text embedding and the six size numbers
/// the whole batch shares (original height and width, crop top and left, target height and
/// width: diffusers' `add_time_ids`).
#[derive(Clone, Copy)]
pub struct TextTime<'a> {
    /// `[b, pooled]`
    pub pooled: &'a Tensor<2>,
    pub time_ids: [f64; TIME_IDS],
}

impl<'a> From<&'a Tensor<3>> for Cond<'a> {
    fn from(context: &'a Tensor<3>) -> Self {
        Self { context, text_time: None }
    }
}

#[derive(Module, Debug)]
pub struct UNet2DConditionModel {
    pub conv_in: Conv2d,
    pub time_embedding: TimestepEmbedding,
    pub down_blocks: Vec<DownBlock>,
    pub mid_block: MidBlockCrossAttn,
    pub up_blocks: Vec<UpBlock>,
    pub conv_norm_out: GroupNorm,
    pub conv_out: Conv2d,
    /// SDXL's `add_embedding`: pooled text and size embeddings → the timestep embedding's width.
    pub add_embedding: Option<TimestepEmbedding>,
    pub time_channels: usize,
    /// Each size number's sinusoidal width (SDXL's `addition_time_embed_dim`; 0 without).
    pub addition_time_embed_dim: usize,
    pub flip_sin_to_cos: bool,
    pub freq_shift: f64,
}

impl UNet2DConditionModel {
    pub fn load(vb: &VarBuilder, c: &UNetConfig) -> Result<Self> {
        c.validate().map_err(|reason| SdError::config("unet config", reason))?;
        let Blocks { settings: s, down, up, mid } = c.blocks();
        let ch = &c.block_out_channels;
        let n = ch.len();
        let c0 = ch[0];
        let temb = c0 * 4;
        let down_blocks = (down.into_iter().enumerate())
            .map(|(i, b)| DownBlock::load(&vb.pp("down_blocks").pp(i), b, &s))
            .collect::<Result<_>>()?;
        let mid_block = MidBlockCrossAttn::load(&vb.pp("mid_block"), ch[n - 1], mid.0, mid.1, &s)?;
        let up_blocks = (up.into_iter().enumerate())
            .map(|(i, b)| UpBlock::load(&vb.pp("up_blocks").pp(i), b, &s))
            .collect::<Result<_>>()?;
        Ok(Self {
            conv_in: conv2d(&vb.pp("conv_in"), ConvSpec::k3(c.in_channels, c0))?,
            time_embedding: TimestepEmbedding::load(&vb.pp("time_embedding"), c0, temb)?,
            down_blocks,
            mid_block,
            up_blocks,
            conv_norm_out: group_norm(&vb.pp("conv_norm_out"), c.norm_num_groups, c0, c.norm_eps)?,
            conv_out: conv2d(&vb.pp("conv_out"), ConvSpec::k3(c0, c.out_channels))?,
            add_embedding: match (c.text_time(), c.projection_class_embeddings_input_dim) {
                (Some(_), Some(d)) => Some(TimestepEmbedding::load(&vb.pp("add_embedding"), d, temb)?),
                _ => None,
            },
            time_channels: c0,
            addition_time_embed_dim: c.text_time().map_or(0, |d| d.time),
            flip_sin_to_cos: c.flip_sin_to_cos,
            freq_shift: c.freq_shift,
        })
    }

    /// Noise prediction for `x: [b, 4, h, w]` at one timestep for the whole batch, conditioned
    /// on `cond` (a `&Tensor<3>` context `[b, tokens, cross_attention_dim]` for SD 1.x and 2.x).
    ///
    /// # Panics
    /// When a `text_time` UNet (SDXL) is given no [`TextTime`].
    pub fn forward<'a>(&self, x: Tensor<4>, timestep: f64, cond: impl Into<Cond<'a>>) -> Tensor<4> {
        self.forward_controlled(x, timestep, cond, &AttentionControl::default())
    }

    /// [`Self::forward`] with prompt-to-prompt control of the attention layers.
    pub fn forward_controlled<'a>(&self, x: Tensor<4>, timestep: f64, cond: impl Into<Cond<'a>>, ctl: &AttentionControl) -> Tensor<4> {
        let Cond { context, text_time } = cond.into();
        let b = x.dims()[0];
        let row = |values: Vec<f32>| {
            let n = values.len();
            Tensor::<2>::from_data(TensorData::new(values, [1, n]), TensorCreationOptions::new(x.device()).with_dtype(x.dtype()))
                .repeat_dim(0, b)
        };
        let emb = timestep_embedding(timestep, self.time_channels, self.flip_sin_to_cos, self.freq_shift);
        let mut temb = self.time_embedding.forward(row(emb));
        if let Some(add) = &self.add_embedding {
            let tt = text_time.expect("an SDXL UNet needs its pooled text embedding and size conditioning");
            // diffusers' `add_time_proj`: each size number's sinusoid, side by side after the pooled text
            let sizes = tt.time_ids.iter().flat_map(|&v| timestep_embedding(v, self.addition_time_embed_dim, self.flip_sin_to_cos, self.freq_shift)).collect();
            temb = temb + add.forward(Tensor::cat(vec![tt.pooled.clone(), row(sizes)], 1));
        }
        let temb = silu(temb);

        let mut h = conv_forward(&self.conv_in, x);
        let mut skips = vec![h.clone()];
        for block in &self.down_blocks {
            let (out, states) = block.forward(h, &temb, context, ctl);
            h = out;
            skips.extend(states);
        }
        h = self.mid_block.forward(h, &temb, context, ctl);
        for block in &self.up_blocks {
            h = block.forward(h, &mut skips, &temb, context, ctl);
        }
        conv_forward(&self.conv_out, group_norm_silu(&self.conv_norm_out, h))
    }
}
