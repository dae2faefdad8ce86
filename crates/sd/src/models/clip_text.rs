//! transformers `CLIPTextModel`: the text encoder of SD 1.x (ViT-L/14's text tower), SD 2.x
//! (OpenCLIP ViT-H's) and SDXL's first; and `CLIPTextModelWithProjection`, SDXL's second
//! (OpenCLIP ViT-bigG's), whose pooled state is projected.

use burn::module::Module;
use burn::nn::{Embedding, LayerNorm, Linear};
use burn::tensor::activation::{gelu, sigmoid};
use burn::tensor::{Int, Tensor, TensorCreationOptions, TensorData};
use serde::Deserialize;
use serde::de::IgnoredAny;

use crate::models::attention::{Attend, project_attend};
use crate::layers::nn::{embedding, fused_qkv, layer_norm, linear, linear_in_out, linear_params, norm_params};
use crate::models::clip_score::pooled_position;
use crate::checkpoint::weights::VarBuilder;
use crate::error::parse_config_requiring;
use crate::{Result, SdError};

/// A CLIP text tower's config: SD's `text_encoder/config.json` (the fields the forward pass
/// needs), and the `text_config` of a `CLIPModel`'s `config.json` (the CLIP score's, in
/// [`crate::models::clip_score`]). A field a `text_config` leaves out takes transformers'
/// `CLIPTextConfig` default; SD's file must give all but `hidden_act`, `layer_norm_eps` and
/// `eos_token_id` ([`ClipConfig::from_json`]).
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default)]
pub struct ClipConfig {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub max_position_embeddings: usize,
    pub hidden_act: String,
    pub layer_norm_eps: f64,
    /// Where a `CLIPModel` pools the prompt, see [`crate::models::clip_score::pooled_position`];
    /// SD's text encoder gives every token's state and does not read it.
    pub eos_token_id: u32,
    /// Width of `text_projection` (a `CLIPTextModelWithProjection`'s: SDXL's `text_encoder_2`).
    pub projection_dim: usize,
}

/// transformers' `CLIPTextConfig` defaults.
impl Default for ClipConfig {
    fn default() -> Self {
        Self {
            vocab_size: 49408,
            hidden_size: 512,
            intermediate_size: 2048,
            num_hidden_layers: 12,
            num_attention_heads: 8,
            max_position_embeddings: 77,
            hidden_act: "quick_gelu".into(),
            layer_norm_eps: 1e-5,
            eos_token_id: 49407,
            projection_dim: 512,
        }
    }
}

/// The fields of SD's `text_encoder/config.json` that have no default, in [`ClipConfig`]'s order
/// (serde names the first one missing).
#[derive(Deserialize)]
#[allow(dead_code)] // only their presence is checked
struct Required {
    vocab_size: IgnoredAny,
    hidden_size: IgnoredAny,
    intermediate_size: IgnoredAny,
    num_hidden_layers: IgnoredAny,
    num_attention_heads: IgnoredAny,
    max_position_embeddings: IgnoredAny,
}

impl ClipConfig {
    /// SD1.x's text encoder (openai/clip-vit-large-patch14), with its config's legacy
    /// `eos_token_id` 2.
    pub fn sd15() -> Self {
        Self {
            vocab_size: 49408,
            hidden_size: 768,
            intermediate_size: 3072,
            num_hidden_layers: 12,
            num_attention_heads: 12,
            max_position_embeddings: 77,
            eos_token_id: 2,
            ..Self::default()
        }
    }

    /// SDXL's `text_encoder_2` (OpenCLIP ViT-bigG/14's text tower, all 32 layers, projected).
    pub fn sdxl_2() -> Self {
        Self {
            hidden_size: 1280,
            intermediate_size: 5120,
            num_hidden_layers: 32,
            num_attention_heads: 20,
            hidden_act: "gelu".into(),
            projection_dim: 1280,
            ..Self::sd15()
        }
    }

    /// Parameters of `text_projection` (no bias).
    pub fn projection_parameters(&self) -> u64 {
        linear_params(self.hidden_size, self.projection_dim, false)
    }

    /// Parameters of the text encoder: the token table (kept on the host) and the rest (on the
    /// device).
    pub fn parameters(&self) -> (u64, u64) {
        let (d, i) = (self.hidden_size, self.intermediate_size);
        let layer = 2 * norm_params(d) + 4 * linear_params(d, d, true) + linear_params(d, i, true) + linear_params(i, d, true);
        let device = (self.max_position_embeddings * d) as u64 + self.num_hidden_layers as u64 * layer + norm_params(d);
        ((self.vocab_size * d) as u64, device)
    }

    /// Reads SD's `text_encoder/config.json`.
    pub fn from_json(text: &str, path: &str) -> Result<Self> {
        let c: Self = parse_config_requiring::<Self, Required>(text, path)?;
        let bad = |reason: String| SdError::config(path, reason);
        if c.num_attention_heads == 0 || c.hidden_size % c.num_attention_heads != 0 {
            return Err(bad(format!(
                "hidden_size {} is not divisible by num_attention_heads {}",
                c.hidden_size, c.num_attention_heads
            )));
        }
        if !matches!(c.hidden_act.as_str(), "quick_gelu" | "gelu") {
            return Err(bad(format!("unsupported hidden_act `{}`", c.hidden_act)));
        }
        Ok(c)
    }
}

#[derive(Module, Debug)]
pub struct ClipAttention {
    pub q_proj: Linear,
    pub k_proj: Linear,
    pub v_proj: Linear,
    pub out_proj: Linear,
    pub heads: usize,
    /// Text tower: each token sees only earlier ones; the vision tower (`clip_score`) sees all.
    pub causal: bool,
}

impl ClipAttention {
    fn forward(&self, x: Tensor<3>) -> Tensor<3> {
        let p = [&self.q_proj, &self.k_proj, &self.v_proj, &self.out_proj];
        project_attend(p, x, None, Attend { heads: self.heads, causal: self.causal, upcast: false }, None)
    }
}

#[derive(Module, Debug)]
pub struct ClipEncoderLayer {
    pub layer_norm1: LayerNorm,
    pub self_attn: ClipAttention,
    pub layer_norm2: LayerNorm,
    pub fc1: Linear,
    pub fc2: Linear,
    pub quick_gelu: bool,
}

/// The shape of a CLIP tower's encoder layers.
#[derive(Debug, Clone, Copy)]
pub struct LayerShape {
    pub hidden: usize,
    pub intermediate: usize,
    pub heads: usize,
    pub eps: f64,
    pub quick_gelu: bool,
    /// Text: each token sees only earlier ones; vision: every patch sees every other.
    pub causal: bool,
}

impl LayerShape {
    /// From a tower's config fields; `hidden_act` "quick_gelu" (OpenAI's CLIP) or "gelu" (OpenCLIP).
    pub fn new(hidden: usize, intermediate: usize, heads: usize, eps: f64, hidden_act: &str, causal: bool) -> Self {
        Self { hidden, intermediate, heads, eps, quick_gelu: hidden_act == "quick_gelu", causal }
    }
}

impl ClipEncoderLayer {
    pub fn load(vb: &VarBuilder, s: &LayerShape) -> Result<Self> {
        let d = s.hidden;
        let a = vb.pp("self_attn");
        // SD 2.x single files keep OpenCLIP's fused q/k/v projection
        let [q_proj, k_proj, v_proj] = if a.contains("in_proj.weight") {
            fused_qkv(&a.pp("in_proj"), d)?
        } else {
            [linear(&a.pp("q_proj"), d, d, true)?, linear(&a.pp("k_proj"), d, d, true)?, linear(&a.pp("v_proj"), d, d, true)?]
        };
        Ok(Self {
            layer_norm1: layer_norm(&vb.pp("layer_norm1"), d, s.eps)?,
            self_attn: ClipAttention {
                q_proj,
                k_proj,
                v_proj,
                out_proj: linear(&a.pp("out_proj"), d, d, true)?,
                heads: s.heads,
                causal: s.causal,
            },
            layer_norm2: layer_norm(&vb.pp("layer_norm2"), d, s.eps)?,
            fc1: linear(&vb.pp("mlp.fc1"), d, s.intermediate, true)?,
            fc2: linear(&vb.pp("mlp.fc2"), s.intermediate, d, true)?,
            quick_gelu: s.quick_gelu,
        })
    }

    pub fn forward(&self, x: Tensor<3>) -> Tensor<3> {
        let x = self.self_attn.forward(self.layer_norm1.forward(x.clone())) + x;
        let h = self.fc1.forward(self.layer_norm2.forward(x.clone()));
        let h = if self.quick_gelu {
            h.clone() * sigmoid(h.mul_scalar(1.702))
        } else {
            gelu(h)
        };
        self.fc2.forward(h) + x
    }
}

#[derive(Module, Debug)]
pub struct ClipTextModel {
    /// `[vocab, hidden]`, kept on the host: in f32 the table (SD 1.5: 49408 × 768 × 4 bytes =
    /// 145 MiB) exceeds WebGPU's default 128 MiB buffer binding limit, and a prompt needs 77
    /// of its rows, which go to the device.
    #[module(skip)]
    pub token_embedding: Vec<f32>,
    pub position_embedding: Embedding,
    pub layers: Vec<ClipEncoderLayer>,
    pub final_layer_norm: LayerNorm,
    /// `CLIPTextModelWithProjection`'s projection of the pooled state (SDXL's `text_encoder_2`).
    pub text_projection: Option<Linear>,
    pub vocab_size: usize,
    pub max_positions: usize,
    /// Where the pooled state is read ([`pooled_position`]).
    pub eos_token_id: u32,
}

/// The key a `CLIPTextModel` file's `key` is loaded under. transformers 5 saves the model
/// without its `text_model.` prefix (`encoder.layers.0.…`, `embeddings.…`,
/// `final_layer_norm.…`); both layouts load, as they do in transformers.
pub fn text_model_key(key: &str) -> String {
    let bare = ["embeddings.", "encoder.", "final_layer_norm."];
    if bare.iter().any(|p| key.starts_with(p)) {
        format!("text_model.{key}")
    } else {
        key.to_string()
    }
}

impl ClipTextModel {
    /// Loads from transformers keys (`text_model.embeddings.token_embedding.weight`, …;
    /// see [`text_model_key`] for the newer layout).
    pub fn load(vb: &VarBuilder, c: &ClipConfig) -> Result<Self> {
        let vb = vb.pp("text_model");
        let d = c.hidden_size;
        let eps = c.layer_norm_eps;
        let shape = LayerShape::new(d, c.intermediate_size, c.num_attention_heads, eps, &c.hidden_act, true);
        let layers = (0..c.num_hidden_layers)
            .map(|i| ClipEncoderLayer::load(&vb.pp("encoder.layers").pp(i), &shape))
            .collect::<Result<_>>()?;
        Ok(Self {
            token_embedding: vb.pp("embeddings.token_embedding").host_f32("weight", &[c.vocab_size, d])?,
            position_embedding: embedding(
                &vb.pp("embeddings.position_embedding"),
                c.max_position_embeddings,
                d,
            )?,
            layers,
            final_layer_norm: layer_norm(&vb.pp("final_layer_norm"), d, eps)?,
            text_projection: None,
            vocab_size: c.vocab_size,
            max_positions: c.max_position_embeddings,
            eos_token_id: c.eos_token_id,
        })
    }

    /// A `CLIPTextModelWithProjection`: [`Self::load`] and `text_projection` (transformers'
    /// `text_projection.weight`, `[projection, hidden]`; or OpenCLIP's `text_projection`,
    /// `[hidden, projection]`, as SDXL single files keep it).
    pub fn load_with_projection(vb: &VarBuilder, c: &ClipConfig) -> Result<Self> {
        let (d, p) = (c.hidden_size, c.projection_dim);
        let text_projection = if vb.contains("text_projection.weight") {
            linear(&vb.pp("text_projection"), d, p, false)?
        } else {
            linear_in_out(vb, "text_projection", d, p)?
        };
        Ok(Self { text_projection: Some(text_projection), ..Self::load(vb, c)? })
    }

    /// `last_hidden_state` for one sequence of token ids: `[1, len, hidden]`.
    pub fn forward(&self, ids: &[u32]) -> Result<Tensor<3>> {
        let x = self.layers.iter().fold(self.embed(ids)?, |x, layer| layer.forward(x));
        Ok(self.final_layer_norm.forward(x))
    }

    /// What SDXL reads of a prompt's ids: `hidden_states[-2]`, the penultimate layer's output
    /// (`[1, len, hidden]`, no final norm), and with a projection the pooled embedding
    /// `text_embeds` (`[1, projection]`: the final-normed state at [`pooled_position`],
    /// projected).
    pub fn forward_penultimate(&self, ids: &[u32]) -> Result<(Tensor<3>, Option<Tensor<2>>)> {
        let (last, before) = self.layers.split_last().ok_or_else(|| SdError::Invalid("a text encoder without layers".into()))?;
        let penultimate = before.iter().fold(self.embed(ids)?, |x, layer| layer.forward(x));
        let pooled = match &self.text_projection {
            Some(projection) => {
                let x = self.final_layer_norm.forward(last.forward(penultimate.clone()));
                let d = x.dims()[2];
                let state = x.narrow(1, pooled_position(ids, self.eos_token_id), 1).reshape([1, d]);
                Some(projection.forward(state))
            }
            None => None,
        };
        Ok((penultimate, pooled))
    }

    /// Token and position embeddings of `ids`, checked: `[1, len, hidden]`.
    fn embed(&self, ids: &[u32]) -> Result<Tensor<3>> {
        if ids.is_empty() || ids.len() > self.max_positions {
            return Err(SdError::Invalid(format!(
                "text encoder takes 1..={} token ids, got {}",
                self.max_positions,
                ids.len()
            )));
        }
        if let Some(bad) = ids.iter().find(|&&i| i as usize >= self.vocab_size) {
            return Err(SdError::Invalid(format!(
                "token id {bad} is outside the vocabulary of {}",
                self.vocab_size
            )));
        }
        let table = self.position_embedding.weight.val();
        let (device, dtype, d) = (table.device(), table.dtype(), table.dims()[1]);
        let n = ids.len();
        let rows: Vec<f32> = ids.iter().flat_map(|&i| &self.token_embedding[i as usize * d..(i as usize + 1) * d]).copied().collect();
        let tok = Tensor::<3>::from_data(
            TensorData::new(rows, [1, n, d]),
            TensorCreationOptions::new(device.clone()).with_dtype(dtype),
        );
        let pos = Tensor::<2, Int>::from_data(
            TensorData::new((0..n as i64).collect::<Vec<_>>(), [1, n]),
            &device,
        );
        Ok(tok + self.position_embedding.forward(pos))
    }
}
