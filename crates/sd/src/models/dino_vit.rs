//! DINO's Vision Transformer (facebookresearch/dino `vision_transformer.py`), as PIE-Bench's
//! structure distance uses `dino_vitb8`: the keys of the last block's attention, whose
//! self-similarity describes an image's structure (Tumanyan et al., *Splicing ViT Features*).
//! Field names are DINO's state dict's (`blocks.N.attn.qkv.weight`, …), the file
//! `scripts/convert_metric_weights.py dino` writes; the blocks are CLIP's encoder layers (the same
//! pre-norm block: fused q/k/v with bias, exact GELU), built from DINO's names.

use burn::nn::conv::Conv2d;
use burn::tensor::{Device, Tensor};
use serde::Deserialize;

use crate::checkpoint::weights::VarBuilder;
#[cfg(not(target_arch = "wasm32"))]
use crate::error::parse_config;
use crate::layers::nn::{ConvSpec, conv2d, conv_forward, fused_qkv, layer_norm, linear};
use crate::models::clip_text::{ClipAttention, ClipEncoderLayer};
use crate::{Result, SdError};

/// The folder's files: [`DinoVit::from_folder`] reads them.
pub const CONFIG: &str = "config.json";
pub const WEIGHTS: &str = "dino-vitb8.safetensors";

/// DINO's LayerNorm epsilon (`partial(nn.LayerNorm, eps=1e-6)`).
const EPS: f64 = 1e-6;

/// `config.json`: the architecture (`vit_base(patch_size=8)` for PIE-Bench).
#[derive(Debug, Clone, Copy, Deserialize, PartialEq)]
pub struct DinoConfig {
    pub patch_size: usize,
    pub embed_dim: usize,
    pub depth: usize,
    pub num_heads: usize,
    /// The square side the position embeddings were trained at (DINO's `img_size`, 224).
    #[serde(default = "default_image_size")]
    pub image_size: usize,
}

fn default_image_size() -> usize {
    224
}

impl DinoConfig {
    /// DINO ViT-B/8, PIE-Bench's.
    pub fn vit_b8() -> Self {
        Self { patch_size: 8, embed_dim: 768, depth: 12, num_heads: 12, image_size: 224 }
    }

    /// Tokens: the patches of an `image_size`² image and the class token.
    pub fn tokens(&self) -> usize {
        (self.image_size / self.patch_size).pow(2) + 1
    }
}

pub struct DinoVit {
    patch_embed: Conv2d,
    cls_token: Tensor<3>,
    pos_embed: Tensor<3>,
    blocks: Vec<ClipEncoderLayer>,
    config: DinoConfig,
    device: Device,
}

impl DinoVit {
    pub fn load(vb: &VarBuilder, c: DinoConfig) -> Result<Self> {
        let (d, p) = (c.embed_dim, c.patch_size);
        if c.num_heads == 0 || !d.is_multiple_of(c.num_heads) || p == 0 || !c.image_size.is_multiple_of(p) || c.depth == 0 {
            return Err(SdError::Invalid(format!("a DINO ViT with {c:?} cannot be built")));
        }
        let patch_embed = conv2d(&vb.pp("patch_embed").pp("proj"), ConvSpec { c_in: 3, c_out: d, kernel: p, stride: p, padding: 0, bias: true })?;
        let blocks = (0..c.depth).map(|i| block(&vb.pp("blocks").pp(i), d, c.num_heads)).collect::<Result<_>>()?;
        Ok(Self {
            patch_embed,
            cls_token: vb.get("cls_token", [1, 1, d])?,
            pos_embed: vb.get("pos_embed", [1, c.tokens(), d])?,
            blocks,
            config: c,
            device: vb.device().clone(),
        })
    }

    /// The network of a folder holding [`CONFIG`] and [`WEIGHTS`], in f32.
    #[cfg(not(target_arch = "wasm32"))]
    pub fn from_folder(dir: &std::path::Path, device: &Device) -> Result<Self> {
        let path = dir.join(CONFIG);
        let text = std::fs::read_to_string(&path).map_err(|source| SdError::Io { path: path.clone(), source })?;
        let config: DinoConfig = parse_config(&text, &path.display().to_string())?;
        let weights = crate::checkpoint::weights::WeightFile::open(&dir.join(WEIGHTS))?;
        Self::load(&VarBuilder::from_files([weights], device, burn::tensor::DType::F32), config)
    }

    pub fn config(&self) -> DinoConfig {
        self.config
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    /// The last block's attention keys, all heads side by side (`[tokens, embed_dim]`, the class
    /// token first), of an `image_size`² image `x` (`[1, 3, S, S]`): the position embeddings are
    /// used as trained, which `interpolate_pos_encoding` does at that size.
    pub fn last_keys(&self, x: Tensor<4>) -> Result<Tensor<2>> {
        let [_, _, h, w] = x.dims();
        let s = self.config.image_size;
        if (h, w) != (s, s) {
            return Err(SdError::Invalid(format!("the DINO ViT takes {s}×{s} images, got {w}×{h}")));
        }
        let d = self.config.embed_dim;
        let patches = conv_forward(&self.patch_embed, x).reshape([1, d, self.config.tokens() - 1]).swap_dims(1, 2);
        let mut x = Tensor::cat(vec![self.cls_token.clone(), patches], 1) + self.pos_embed.clone();
        let (last, rest) = self.blocks.split_last().expect("depth > 0, checked at load");
        for b in rest {
            x = b.forward(x);
        }
        let keys = last.self_attn.k_proj.forward(last.layer_norm1.forward(x));
        Ok(keys.reshape([self.config.tokens(), d]))
    }
}

/// DINO's `Block` (`norm1`, `attn.qkv`, `attn.proj`, `norm2`, `mlp.fc1`, `mlp.fc2`) as CLIP's
/// encoder layer.
fn block(vb: &VarBuilder, d: usize, heads: usize) -> Result<ClipEncoderLayer> {
    let attn = vb.pp("attn");
    let [q_proj, k_proj, v_proj] = fused_qkv(&attn.pp("qkv"), d)?;
    Ok(ClipEncoderLayer {
        layer_norm1: layer_norm(&vb.pp("norm1"), d, EPS)?,
        self_attn: ClipAttention { q_proj, k_proj, v_proj, out_proj: linear(&attn.pp("proj"), d, d, true)?, heads, causal: false },
        layer_norm2: layer_norm(&vb.pp("norm2"), d, EPS)?,
        fc1: linear(&vb.pp("mlp").pp("fc1"), d, 4 * d, true)?,
        fc2: linear(&vb.pp("mlp").pp("fc2"), 4 * d, d, true)?,
        quick_gelu: false,
    })
}

/// Cosine similarity of every pair of rows of `keys` (`[n, d]`), as PIE-Bench's
/// `attn_cosine_sim`: `x·yᵀ / max(‖x‖·‖y‖, 1e-8)`.
pub fn self_similarity(keys: Tensor<2>) -> Tensor<2> {
    let norms = keys.clone().powi_scalar(2).sum_dim(1).sqrt();
    let factor = norms.clone().matmul(norms.transpose()).clamp_min(1e-8);
    keys.clone().matmul(keys.transpose()) / factor
}
