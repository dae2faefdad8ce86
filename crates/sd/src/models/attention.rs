//! diffusers `attention_processor.Attention` (the UNet's, and the VAE mid-block's with its own group norm) and `attention.BasicTransformerBlock`, plus the
//! scaled-dot-product attention they share with CLIP.

use burn::module::Module;
use burn::nn::{GroupNorm, LayerNorm, Linear};
use burn::tensor::activation::{gelu, softmax};
use burn::tensor::module::attention;
use burn::tensor::ops::AttentionModuleOptions;
use std::ops::Range;

use burn::tensor::{Bool, DType, Tensor};

use crate::Result;
use crate::models::attention_control::AttentionControl;
use crate::device::profile::{Kind, step};
use crate::layers::MAX_BUFFER_ELEMENTS;
use crate::layers::nn::{group_norm, layer_norm, linear, linear_params, norm_params};
use crate::checkpoint::weights::VarBuilder;

/// Most attention-score elements one kernel may hold at once (the activation budget,
/// [`MAX_BUFFER_ELEMENTS`]).
pub const MAX_SCORE_ELEMENTS: usize = MAX_BUFFER_ELEMENTS;

/// Most score elements of ONE batch row per kernel. The query chunk length is set by this
/// alone, never by the batch size: a matmul's rounding can depend on its row count, and EDICT
/// needs each row's output bit-identical whether it runs in a batch of 2 (inversion), 3
/// (prompt-to-prompt) or 2·k (k targets). SD1.5 at 512×512 (8 heads × 4096²) runs 128 queries
/// per chunk; up to 4 rows share a kernel.
pub const MAX_ROW_SCORE_ELEMENTS: usize = MAX_SCORE_ELEMENTS / 4;

/// How attention runs: heads, whether later keys are hidden (CLIP), and whether scores and
/// softmax are computed in f32 when the network runs in f16 (`upcast_attention`, SD 2.1).
#[derive(Debug, Clone, Copy, Default)]
pub struct Attend {
    pub heads: usize,
    pub causal: bool,
    pub upcast: bool,
}

/// Rewrites attention probabilities `[rows, heads, queries, keys]` before they weight the values
/// (prompt-to-prompt editing, [`AttentionControl`]). The batch is made of units of `unit` rows
/// that must be seen together (a target row and its source); `apply` gets whole units, with the
/// range of unit indices they are.
#[derive(Clone, Copy)]
pub struct Control<'a> {
    pub unit: usize,
    pub apply: &'a dyn Fn(Tensor<4>, Range<usize>) -> Tensor<4>,
}

/// Whether attention runs as Burn's fused attention op (flash kernels, picked per device by
/// autotune) rather than as separate matmul and softmax kernels: only where kernels are tuned
/// (`gpu-tuned` on a GPU; its decisions are persisted and warmed up like every other op's), only
/// in f16, and not for causal attention (CLIP's: chunks would need the mask's offset), `upcast`
/// (autotune may pick Burn's unfused candidate, whose scores stay in f16) or when the
/// probabilities must be seen (`control`). Not in f32 either: on GPUs with cooperative matrices the
/// fastest flash kernel multiplies f16 tiles whatever the inputs are. In f16 the flash kernels
/// accumulate scores and softmax statistics in f32 and use no atomics, so repeats stay
/// bit-identical.
pub fn fuses_attention(device: &burn::tensor::Device, dtype: DType, causal: bool, upcast: bool, controlled: bool) -> bool {
    crate::device::backend::tunes_kernels(device) && dtype == DType::F16 && !(causal || upcast || controlled)
}

/// `softmax(q kᵀ / √d) v` on `[batch, heads, tokens, head_dim]`, in query chunks whose length
/// depends only on one row's shape (see [`MAX_ROW_SCORE_ELEMENTS`]) and in groups of batch rows
/// small enough that no score buffer exceeds [`MAX_SCORE_ELEMENTS`]. `causal` hides later keys
/// (CLIP). Plain matmul + softmax kernels: deterministic, and identical natively and in browsers;
/// or, where [`fuses_attention`], Burn's fused op on the same chunks (they keep the scores its
/// autotune benchmarks its unfused candidate with within the same budget).
pub fn scaled_dot_product(
    q: Tensor<4>,
    k: Tensor<4>,
    v: Tensor<4>,
    causal: bool,
    upcast: bool,
    control: Option<Control>,
) -> Tensor<4> {
    let [b, h, n_q, d] = q.dims();
    let n_k = k.dims()[2];
    let scale = 1.0 / (d as f64).sqrt();
    let dtype = q.dtype();
    let fused = fuses_attention(&q.device(), dtype, causal, upcast, control.is_some());
    let up = upcast && dtype == DType::F16;
    let (q, k) = if up { (q.cast(DType::F32), k.cast(DType::F32)) } else { (q, k) };
    let chunk = (MAX_ROW_SCORE_ELEMENTS / (h * n_k).max(1)).clamp(1, n_q.max(1));
    let unit = control.map_or(1, |s| s.unit);
    let units = b / unit;
    let per_kernel = (MAX_SCORE_ELEMENTS / (unit * h * chunk * n_k).max(1)).clamp(1, units.max(1));
    let mut groups = Vec::with_capacity(units.div_ceil(per_kernel));
    let mut u0 = 0;
    while u0 < units {
        let g = per_kernel.min(units - u0);
        let rows = |t: &Tensor<4>| if g == units { t.clone() } else { t.clone().narrow(0, u0 * unit, g * unit) };
        let (qg, kg, vg) = (rows(&q), rows(&k), rows(&v));
        let mut outs = Vec::with_capacity(n_q.div_ceil(chunk));
        let mut start = 0;
        while start < n_q {
            let len = chunk.min(n_q - start);
            let qc = if len == n_q { qg.clone() } else { qg.clone().narrow(2, start, len) };
            outs.push(if fused {
                // default scale 1/√d, no mask: causal attention is never fused
                attention(qc, kg.clone(), vg.clone(), None, None, AttentionModuleOptions::default())
            } else {
                let mut scores = qc.matmul(kg.clone().swap_dims(2, 3)).mul_scalar(scale);
                if causal {
                    // true where key j lies after query start+i
                    let mask = Tensor::<2, Bool>::tril_mask([len, n_k], start as i64, &scores.device());
                    scores = scores.mask_fill(mask.unsqueeze::<4>().expand([g * unit, h, len, n_k]), f32::NEG_INFINITY);
                }
                let mut probs = softmax(scores, 3);
                if let Some(s) = control {
                    probs = (s.apply)(probs, u0..u0 + g);
                }
                let probs = if up { probs.cast(dtype) } else { probs };
                probs.matmul(vg.clone())
            });
            start += len;
        }
        groups.push(Tensor::cat(outs, 2));
        u0 += g;
    }
    Tensor::cat(groups, 0)
}

/// `[b, n, heads·d] → [b, heads, n, d]`
pub fn split_heads(x: Tensor<3>, heads: usize) -> Tensor<4> {
    let [b, n, c] = x.dims();
    x.reshape([b, n, heads, c / heads]).swap_dims(1, 2)
}

/// `[b, heads, n, d] → [b, n, heads·d]`
pub fn merge_heads(x: Tensor<4>) -> Tensor<3> {
    let [b, h, n, d] = x.dims();
    x.swap_dims(1, 2).reshape([b, n, h * d])
}

/// Multi-head attention through four projections: queries from `x`, keys and values from
/// `context` (`x` itself for self-attention). Shared by the UNet, the VAE and CLIP, whose
/// checkpoints only name the projections differently.
pub fn project_attend(
    [q, k, v, out]: [&Linear; 4],
    x: Tensor<3>,
    context: Option<Tensor<3>>,
    how: Attend,
    control: Option<Control>,
) -> Tensor<3> {
    let device = x.device();
    let ctx = context.unwrap_or_else(|| x.clone());
    let [q, k, v] = step(Kind::Matmul, &device, || [q.forward(x), k.forward(ctx.clone()), v.forward(ctx)]);
    let [q, k, v] = [q, k, v].map(|t| split_heads(t, how.heads));
    let o = step(Kind::Attention, &device, || scaled_dot_product(q, k, v, how.causal, how.upcast, control));
    step(Kind::Matmul, &device, || out.forward(merge_heads(o)))
}

/// diffusers `Attention`: `to_q`, `to_k`, `to_v` (no bias in the UNet, bias in the VAE) and
/// `to_out.0`; keys and values come from `context` for cross-attention.
#[derive(Module, Debug)]
pub struct Attention {
    pub to_q: Linear,
    pub to_k: Linear,
    pub to_v: Linear,
    pub to_out: Linear,
    pub heads: usize,
    pub upcast: bool,
}

impl Attention {
    /// The UNet's attention: `heads` heads over `query_dim` channels, keys and values from
    /// `context_dim`-wide tokens; no q/k/v biases.
    pub fn load(vb: &VarBuilder, query_dim: usize, context_dim: usize, heads: usize, upcast: bool) -> Result<Self> {
        let inner = query_dim;
        Ok(Self {
            to_q: linear(&vb.pp("to_q"), query_dim, inner, false)?,
            to_k: linear(&vb.pp("to_k"), context_dim, inner, false)?,
            to_v: linear(&vb.pp("to_v"), context_dim, inner, false)?,
            to_out: linear(&vb.pp("to_out.0"), inner, query_dim, true)?,
            heads,
            upcast,
        })
    }

    /// `x: [b, n, query_dim]`, `context: [b, m, context_dim]` (None = self-attention);
    /// `ctl` controls self- or cross-attention accordingly.
    pub fn forward(&self, x: Tensor<3>, context: Option<Tensor<3>>, ctl: &AttentionControl) -> Tensor<3> {
        let p = [&self.to_q, &self.to_k, &self.to_v, &self.to_out];
        let how = Attend { heads: self.heads, causal: false, upcast: self.upcast };
        let apply: &dyn Fn(Tensor<4>, Range<usize>) -> Tensor<4> =
            if context.is_some() { &|p, units| ctl.control_cross(p, units) } else { &|p, units| ctl.control_self(p, units) };
        project_attend(p, x, context, how, (ctl.unit > 0).then_some(Control { unit: ctl.unit, apply }))
    }
}

/// diffusers `GEGLU` feed-forward: `net.0.proj` doubles as value and gate, `net.2` projects back.
#[derive(Module, Debug)]
pub struct FeedForward {
    pub proj: Linear,
    pub out: Linear,
}

impl FeedForward {
    pub fn load(vb: &VarBuilder, dim: usize) -> Result<Self> {
        let inner = dim * 4;
        Ok(Self {
            proj: linear(&vb.pp("net.0.proj"), dim, inner * 2, true)?,
            out: linear(&vb.pp("net.2"), inner, dim, true)?,
        })
    }

    /// In pieces whose `[rows, tokens, 8·dim]` projection stays within [`MAX_BUFFER_ELEMENTS`]
    /// (SD 1.5 at 512² needs 10.5 M elements per batch row): whole rows, grouped, while a row
    /// fits; else token chunks whose length depends only on the row's shape, so that a row's
    /// result never depends on the batch (see [`MAX_ROW_SCORE_ELEMENTS`]).
    pub fn forward(&self, x: Tensor<3>) -> Tensor<3> {
        let device = x.device();
        step(Kind::Matmul, &device, || self.forward_pieces(x))
    }

    fn forward_pieces(&self, x: Tensor<3>) -> Tensor<3> {
        let [b, n, _] = x.dims();
        let wide = self.proj.weight.dims()[1];
        let tokens = (MAX_BUFFER_ELEMENTS / wide).clamp(1, n.max(1));
        let rows = if tokens < n { 1 } else { (MAX_BUFFER_ELEMENTS / (n * wide).max(1)).clamp(1, b.max(1)) };
        if rows >= b && tokens >= n {
            return self.geglu(x);
        }
        let pieces = (0..b).step_by(rows).map(|r| {
            let x = x.clone().narrow(0, r, rows.min(b - r));
            let chunks: Vec<_> = (0..n).step_by(tokens).map(|t| self.geglu(x.clone().narrow(1, t, tokens.min(n - t)))).collect();
            Tensor::cat(chunks, 1)
        });
        Tensor::cat(pieces.collect(), 0)
    }

    fn geglu(&self, x: Tensor<3>) -> Tensor<3> {
        let hg = self.proj.forward(x);
        let inner = hg.dims()[2] / 2;
        let (h, gate) = (hg.clone().narrow(2, 0, inner), hg.narrow(2, inner, inner));
        self.out.forward(h * gelu(gate))
    }
}

/// diffusers `BasicTransformerBlock`: pre-LN self-attention, cross-attention, GEGLU MLP.
#[derive(Module, Debug)]
pub struct BasicTransformerBlock {
    pub norm1: LayerNorm,
    pub attn1: Attention,
    pub norm2: LayerNorm,
    pub attn2: Attention,
    pub norm3: LayerNorm,
    pub ff: FeedForward,
}

impl BasicTransformerBlock {
    pub fn load(vb: &VarBuilder, dim: usize, heads: usize, t: &TransformerConfig) -> Result<Self> {
        Ok(Self {
            norm1: layer_norm(&vb.pp("norm1"), dim, 1e-5)?,
            attn1: Attention::load(&vb.pp("attn1"), dim, dim, heads, t.upcast)?,
            norm2: layer_norm(&vb.pp("norm2"), dim, 1e-5)?,
            attn2: Attention::load(&vb.pp("attn2"), dim, t.context_dim, heads, t.upcast)?,
            norm3: layer_norm(&vb.pp("norm3"), dim, 1e-5)?,
            ff: FeedForward::load(&vb.pp("ff"), dim)?,
        })
    }

    pub fn forward(&self, x: Tensor<3>, context: Tensor<3>, ctl: &AttentionControl) -> Tensor<3> {
        let device = x.device();
        let norm = |ln: &LayerNorm, x: Tensor<3>| step(Kind::Norm, &device, || ln.forward(x));
        let x = self.attn1.forward(norm(&self.norm1, x.clone()), None, ctl) + x;
        let x = self.attn2.forward(norm(&self.norm2, x.clone()), Some(context), ctl) + x;
        self.ff.forward(norm(&self.norm3, x.clone())) + x
    }
}

/// diffusers `Transformer2DModel` for SD: GroupNorm, `proj_in` (1×1 conv, or linear when
/// `use_linear_projection`), transformer blocks over the h·w tokens, `proj_out`, residual.
#[derive(Module, Debug)]
pub struct Transformer2DModel {
    pub norm: GroupNorm,
    /// A 1×1 convolution and a linear layer are the same map on channels: SD1.x stores conv
    /// weights `[C, C, 1, 1]`, SD2.x linear `[C, C]`, and the loader reads both as `[C, C]`.
    pub proj_in: Linear,
    pub transformer_blocks: Vec<BasicTransformerBlock>,
    pub proj_out: Linear,
}

/// What every `Transformer2DModel` of a UNet shares (their depth is per block:
/// `transformer_layers_per_block`).
#[derive(Debug, Clone, Copy)]
pub struct TransformerConfig {
    /// `cross_attention_dim`: the text embeddings' width
    pub context_dim: usize,
    /// `norm_num_groups`
    pub groups: usize,
    /// `upcast_attention`
    pub upcast: bool,
}

impl TransformerConfig {
    /// Parameters of one `Transformer2DModel` of `layers` blocks over `c` channels (heads do
    /// not change them).
    pub fn parameters(&self, c: usize, layers: usize) -> u64 {
        let attention = |ctx: usize| linear_params(c, c, false) + 2 * linear_params(ctx, c, false) + linear_params(c, c, true);
        let block = 3 * norm_params(c)
            + attention(c)
            + attention(self.context_dim)
            + linear_params(c, 8 * c, true)
            + linear_params(4 * c, c, true);
        norm_params(c) + 2 * linear_params(c, c, true) + layers as u64 * block
    }
}

/// Parameters of the VAE mid-block's attention over `c` channels.
pub fn vae_attention_parameters(c: usize) -> u64 {
    norm_params(c) + 4 * linear_params(c, c, true)
}

impl Transformer2DModel {
    pub fn load(vb: &VarBuilder, channels: usize, heads: usize, layers: usize, t: &TransformerConfig) -> Result<Self> {
        Ok(Self {
            norm: group_norm(&vb.pp("norm"), t.groups, channels, 1e-6)?,
            proj_in: linear(&vb.pp("proj_in"), channels, channels, true)?,
            transformer_blocks: (0..layers)
                .map(|i| BasicTransformerBlock::load(&vb.pp("transformer_blocks").pp(i), channels, heads, t))
                .collect::<Result<_>>()?,
            proj_out: linear(&vb.pp("proj_out"), channels, channels, true)?,
        })
    }

    pub fn forward(&self, x: Tensor<4>, context: Tensor<3>, ctl: &AttentionControl) -> Tensor<4> {
        let [b, c, h, w] = x.dims();
        let residual = x.clone();
        let device = x.device();
        let tokens = step(Kind::Norm, &device, || self.norm.forward(x)).reshape([b, c, h * w]).swap_dims(1, 2);
        let mut t = self.proj_in.forward(tokens);
        for block in &self.transformer_blocks {
            t = block.forward(t, context.clone(), ctl);
        }
        let t = self.proj_out.forward(t);
        t.swap_dims(1, 2).reshape([b, c, h, w]) + residual
    }
}

/// The VAE mid-block's single-head spatial self-attention with its own GroupNorm and residual.
#[derive(Module, Debug)]
pub struct VaeAttention {
    pub group_norm: GroupNorm,
    pub to_q: Linear,
    pub to_k: Linear,
    pub to_v: Linear,
    pub to_out: Linear,
}

impl VaeAttention {
    pub fn load(vb: &VarBuilder, c: usize, groups: usize) -> Result<Self> {
        Ok(Self {
            group_norm: group_norm(&vb.pp("group_norm"), groups, c, 1e-6)?,
            to_q: linear(&vb.pp("to_q"), c, c, true)?,
            to_k: linear(&vb.pp("to_k"), c, c, true)?,
            to_v: linear(&vb.pp("to_v"), c, c, true)?,
            to_out: linear(&vb.pp("to_out.0"), c, c, true)?,
        })
    }

    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let [b, c, h, w] = x.dims();
        let device = x.device();
        let t = step(Kind::Norm, &device, || self.group_norm.forward(x.clone())).reshape([b, c, h * w]).swap_dims(1, 2);
        let p = [&self.to_q, &self.to_k, &self.to_v, &self.to_out];
        let o = project_attend(p, t, None, Attend { heads: 1, ..Attend::default() }, None);
        o.swap_dims(1, 2).reshape([b, c, h, w]) + x
    }
}
