//! transformers `CLIPModel` (text and vision towers with their projections) and
//! `CLIPImageProcessor`: the CLIP score editing benchmarks report (torchmetrics' `CLIPScore` with
//! openai/clip-vit-large-patch14), `100 · max(cos(image embedding, text embedding), 0)`.
//!
//! Field names follow transformers, so a `CLIPModel` checkpoint's keys load as they are; the
//! encoder layers are the text encoder's ([`crate::models::clip_text`]), without the causal mask.

use burn::module::{Module, Param};
use burn::nn::conv::Conv2d;
use burn::nn::{Embedding, LayerNorm, Linear, PaddingConfig2d};
use burn::tensor::{Device, Tensor, TensorData};
use image::{Rgb, RgbImage};
use image::imageops;
use serde::Deserialize;

use crate::models::clip_text::{ClipConfig, ClipEncoderLayer, ClipTextModel, LayerShape};
use crate::error::parse_config;
use crate::layers::nn::{embedding, layer_norm, linear};
use crate::checkpoint::weights::VarBuilder;
use crate::{Result, SdError};

/// `vision_config` of a `CLIPModel`'s `config.json`; absent fields take `CLIPVisionConfig`'s defaults.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default)]
pub struct ClipVisionConfig {
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub num_channels: usize,
    pub image_size: usize,
    pub patch_size: usize,
    pub hidden_act: String,
    pub layer_norm_eps: f64,
}

impl Default for ClipVisionConfig {
    fn default() -> Self {
        Self {
            hidden_size: 768,
            intermediate_size: 3072,
            num_hidden_layers: 12,
            num_attention_heads: 12,
            num_channels: 3,
            image_size: 224,
            patch_size: 32,
            hidden_act: "quick_gelu".into(),
            layer_norm_eps: 1e-5,
        }
    }
}

impl ClipVisionConfig {
    /// Patches plus the class token.
    pub fn num_positions(&self) -> usize {
        (self.image_size / self.patch_size).pow(2) + 1
    }
}

/// A `CLIPModel`'s `config.json` (`CLIPConfig`). Both towers must be present; their fields, and
/// `projection_dim`, default as in transformers.
#[derive(Debug, Clone, Deserialize, PartialEq)]
pub struct ClipModelConfig {
    /// Absent fields take transformers' `CLIPTextConfig` defaults.
    pub text_config: ClipConfig,
    pub vision_config: ClipVisionConfig,
    #[serde(default = "projection_dim")]
    pub projection_dim: usize,
}

fn projection_dim() -> usize {
    512
}

impl ClipModelConfig {
    pub fn from_json(text: &str, path: &str) -> Result<Self> {
        let c: Self = parse_config(text, path)?;
        let bad = |reason: String| Err(SdError::config(path, reason));
        let (t, v) = (&c.text_config, &c.vision_config);
        for (tower, hidden, heads, act) in [
            ("text_config", t.hidden_size, t.num_attention_heads, &t.hidden_act),
            ("vision_config", v.hidden_size, v.num_attention_heads, &v.hidden_act),
        ] {
            if hidden == 0 || heads == 0 || hidden % heads != 0 {
                return bad(format!("{tower}: hidden_size {hidden} is not a positive multiple of num_attention_heads {heads}"));
            }
            if !matches!(act.as_str(), "quick_gelu" | "gelu") {
                return bad(format!("{tower}: unsupported hidden_act `{act}`"));
            }
        }
        if t.vocab_size == 0 || t.max_position_embeddings == 0 {
            return bad("text_config: vocab_size and max_position_embeddings must be positive".into());
        }
        if v.num_channels != 3 {
            return bad(format!("vision_config: num_channels {} (only RGB images are supported)", v.num_channels));
        }
        if v.patch_size == 0 || v.patch_size > v.image_size {
            return bad(format!("vision_config: patch_size {} does not fit image_size {}", v.patch_size, v.image_size));
        }
        if c.projection_dim == 0 {
            return bad("projection_dim must be positive".into());
        }
        Ok(c)
    }
}

/// transformers `CLIPVisionEmbeddings`: patches by a strided conv, a learnt class token first,
/// learnt positions.
#[derive(Module, Debug)]
pub struct ClipVisionEmbeddings {
    pub patch_embedding: Conv2d,
    pub class_embedding: Param<Tensor<1>>,
    pub position_embedding: Embedding,
}

/// transformers `CLIPVisionTransformer`: its output is the pooled (class-token) state.
#[derive(Module, Debug)]
pub struct ClipVisionTransformer {
    pub embeddings: ClipVisionEmbeddings,
    pub pre_layrnorm: LayerNorm,
    pub layers: Vec<ClipEncoderLayer>,
    pub post_layernorm: LayerNorm,
    pub image_size: usize,
}

impl ClipVisionTransformer {
    /// Loads `vision_model.*` of a `CLIPModel` checkpoint (`vb` at `vision_model`).
    pub fn load(vb: &VarBuilder, c: &ClipVisionConfig) -> Result<Self> {
        let (d, p, eps) = (c.hidden_size, c.patch_size, c.layer_norm_eps);
        let e = vb.pp("embeddings");
        let shape = LayerShape::new(d, c.intermediate_size, c.num_attention_heads, eps, &c.hidden_act, false);
        let layers = (0..c.num_hidden_layers)
            .map(|i| ClipEncoderLayer::load(&vb.pp("encoder.layers").pp(i), &shape))
            .collect::<Result<_>>()?;
        Ok(Self {
            embeddings: ClipVisionEmbeddings {
                patch_embedding: Conv2d {
                    weight: Param::from_tensor(e.get("patch_embedding.weight", [d, c.num_channels, p, p])?),
                    bias: None,
                    stride: [p, p],
                    kernel_size: [p, p],
                    dilation: [1, 1],
                    groups: 1,
                    padding: PaddingConfig2d::Valid,
                },
                class_embedding: Param::from_tensor(e.get("class_embedding", [d])?),
                position_embedding: embedding(&e.pp("position_embedding"), c.num_positions(), d)?,
            },
            pre_layrnorm: layer_norm(&vb.pp("pre_layrnorm"), d, eps)?,
            layers,
            post_layernorm: layer_norm(&vb.pp("post_layernorm"), d, eps)?,
            image_size: c.image_size,
        })
    }

    /// `pooler_output` (`post_layernorm` of the class token) for `pixel_values` `[n, 3, s, s]`,
    /// `s` the configured `image_size`: `[n, hidden]`.
    pub fn forward(&self, pixel_values: Tensor<4>) -> Result<Tensor<2>> {
        let [n, c, h, w] = pixel_values.dims();
        let s = self.image_size;
        if n == 0 || c != 3 || h != s || w != s {
            return Err(SdError::Invalid(format!(
                "the CLIP vision tower takes pixel values [n, 3, {s}, {s}], got [{n}, {c}, {h}, {w}]"
            )));
        }
        let table = self.embeddings.position_embedding.weight.val();
        let [positions, d] = table.dims();
        let patches = self.embeddings.patch_embedding.forward(pixel_values.cast(table.dtype()));
        let patches = patches.flatten::<3>(2, 3).swap_dims(1, 2);
        let class = self.embeddings.class_embedding.val().reshape([1, 1, d]).expand([n, 1, d]);
        let x = Tensor::cat(vec![class, patches], 1) + table.unsqueeze::<3>().expand([n, positions, d]);
        let mut x = self.pre_layrnorm.forward(x);
        for layer in &self.layers {
            x = layer.forward(x);
        }
        Ok(self.post_layernorm.forward(x.narrow(1, 0, 1).reshape([n, d])))
    }
}

/// transformers `CLIPModel`: both towers and their bias-free projections into the shared
/// embedding space.
#[derive(Module, Debug)]
pub struct ClipModel {
    pub text_model: ClipTextModel,
    pub vision_model: ClipVisionTransformer,
    pub text_projection: Linear,
    pub visual_projection: Linear,
    /// `exp(logit_scale)` scales `CLIPModel`'s logits; the CLIP score is the plain cosine.
    pub logit_scale: f32,
    pub eos_token_id: u32,
}

impl ClipModel {
    /// Loads a `CLIPModel` checkpoint: `text_model.*`, `vision_model.*`, `text_projection.weight`,
    /// `visual_projection.weight`, `logit_scale`.
    pub fn load(vb: &VarBuilder, c: &ClipModelConfig) -> Result<Self> {
        let (t, v, proj) = (&c.text_config, &c.vision_config, c.projection_dim);
        Ok(Self {
            text_model: ClipTextModel::load(vb, t)?,
            vision_model: ClipVisionTransformer::load(&vb.pp("vision_model"), v)?,
            text_projection: linear(&vb.pp("text_projection"), t.hidden_size, proj, false)?,
            visual_projection: linear(&vb.pp("visual_projection"), v.hidden_size, proj, false)?,
            logit_scale: vb.host_f32("logit_scale", &[])?[0],
            eos_token_id: t.eos_token_id,
        })
    }

    /// `get_image_features`: the projected class token, `[n, projection_dim]`, for pixel values
    /// as [`ClipImageProcessor`] makes them.
    pub fn image_embeds(&self, pixel_values: Tensor<4>) -> Result<Tensor<2>> {
        Ok(self.visual_projection.forward(self.vision_model.forward(pixel_values)?))
    }

    /// `get_text_features` of one prompt's ids (`BOS … EOS`, padded or not: the mask is causal,
    /// so padding after the pooled token changes nothing): `[1, projection_dim]`.
    pub fn text_embeds(&self, ids: &[u32]) -> Result<Tensor<2>> {
        let hidden = self.text_model.forward(ids)?;
        let d = hidden.dims()[2];
        let pooled = hidden.narrow(1, pooled_position(ids, self.eos_token_id), 1).reshape([1, d]);
        Ok(self.text_projection.forward(pooled))
    }
}

/// The token whose state transformers 4.57's `CLIPTextTransformer` pools: with the legacy
/// `eos_token_id` 2 (openai's configs, written before transformers#24773) the first largest id
/// (`<|endoftext|>`, 49407, outranks every other token); otherwise the first `eos_token_id`, or
/// position 0 when there is none (torch's `argmax` of an all-zero mask).
pub fn pooled_position(ids: &[u32], eos_token_id: u32) -> usize {
    if eos_token_id == 2 {
        // `max_by_key` would return the last maximum; torch's argmax returns the first
        ids.iter().enumerate().fold((0, 0), |best, (i, &id)| if id > best.1 { (i, id) } else { best }).0
    } else {
        ids.iter().position(|&id| id == eos_token_id).unwrap_or(0)
    }
}

/// torchmetrics' CLIP score of one image–text pair, `100 · max(cos(image_embed, text_embed), 0)`,
/// computed in f64. (torchmetrics averages the cosines of a batch before clamping; PIE-Bench
/// scores one image at a time, where the two agree.)
pub fn clip_score(image_embed: &[f32], text_embed: &[f32]) -> Result<f64> {
    if image_embed.len() != text_embed.len() || image_embed.is_empty() {
        return Err(SdError::Invalid(format!(
            "CLIP score of a {}-wide image embedding and a {}-wide text embedding",
            image_embed.len(),
            text_embed.len()
        )));
    }
    let dot = |a: &[f32], b: &[f32]| a.iter().zip(b).map(|(&x, &y)| x as f64 * y as f64).sum::<f64>();
    let norms = dot(image_embed, image_embed).sqrt() * dot(text_embed, text_embed).sqrt();
    let cos = dot(image_embed, text_embed) / norms;
    if !cos.is_finite() {
        return Err(SdError::Invalid("CLIP score of a zero or non-finite embedding".into()));
    }
    Ok(100.0 * cos.max(0.0))
}

/// openai/clip-vit-large-patch14's `image_mean` and `image_std` (`OPENAI_CLIP_MEAN`/`_STD`).
pub const OPENAI_CLIP_MEAN: [f64; 3] = [0.48145466, 0.4578275, 0.40821073];
pub const OPENAI_CLIP_STD: [f64; 3] = [0.26862954, 0.26130258, 0.27577711];

/// How an image is resized before the crop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resize {
    /// The shorter side becomes this, the longer keeps the aspect ratio (rounded down).
    ShortestEdge(u32),
    Exact { height: u32, width: u32 },
}

/// transformers' (slow, PIL-based) `CLIPImageProcessor`: bicubic resize, centre crop, rescale,
/// normalise. The default is openai/clip-vit-large-patch14's: shortest edge 224, crop 224×224,
/// `1/255`, [`OPENAI_CLIP_MEAN`], [`OPENAI_CLIP_STD`].
///
/// The resize is the `image` crate's Catmull-Rom filter, PIL's bicubic kernel (a = -0.5, support
/// widened by the scale when shrinking), one axis at a time in PIL's order; PIL's fixed-point
/// weights still put a few pixels one 8-bit level off transformers' `pixel_values`.
#[derive(Debug, Clone, PartialEq)]
pub struct ClipImageProcessor {
    pub resize: Option<Resize>,
    /// `[height, width]`
    pub center_crop: Option<[u32; 2]>,
    pub rescale_factor: Option<f64>,
    /// Per-channel mean and std, as f32 (numpy computes the normalisation in f32).
    pub normalize: Option<([f32; 3], [f32; 3])>,
}

impl Default for ClipImageProcessor {
    fn default() -> Self {
        Self {
            resize: Some(Resize::ShortestEdge(224)),
            center_crop: Some([224, 224]),
            rescale_factor: Some(1.0 / 255.0),
            normalize: Some((OPENAI_CLIP_MEAN.map(|m| m as f32), OPENAI_CLIP_STD.map(|s| s as f32))),
        }
    }
}

/// `size`/`crop_size` of a processor config: an int (old files: shortest edge for `size`, a
/// square for `crop_size`) or a dict.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
enum SizeField {
    Int(u32),
    Dict { shortest_edge: Option<u32>, height: Option<u32>, width: Option<u32> },
}

/// `preprocessor_config.json` as written, absent fields taking `CLIPImageProcessor`'s defaults.
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
struct ProcessorFile {
    do_resize: bool,
    size: SizeField,
    resample: u32,
    do_center_crop: bool,
    crop_size: SizeField,
    do_rescale: bool,
    rescale_factor: f64,
    do_normalize: bool,
    image_mean: Vec<f64>,
    image_std: Vec<f64>,
}

impl Default for ProcessorFile {
    fn default() -> Self {
        Self {
            do_resize: true,
            size: SizeField::Int(224),
            resample: PIL_BICUBIC,
            do_center_crop: true,
            crop_size: SizeField::Int(224),
            do_rescale: true,
            rescale_factor: 1.0 / 255.0,
            do_normalize: true,
            image_mean: OPENAI_CLIP_MEAN.to_vec(),
            image_std: OPENAI_CLIP_STD.to_vec(),
        }
    }
}

/// `PIL.Image.Resampling.BICUBIC`
const PIL_BICUBIC: u32 = 3;

/// Most pixels a resize may produce, the CLI's cap on image sizes.
const MAX_RESIZED_PIXELS: u64 = 1 << 26;

impl ClipImageProcessor {
    /// Reads a `preprocessor_config.json`; what it does not say is as in [`Self::default`].
    pub fn from_json(text: &str, path: &str) -> Result<Self> {
        let f: ProcessorFile = parse_config(text, path)?;
        let bad = |reason: String| SdError::config(path, reason);
        let positive = |n: Option<u32>, what: &str| n.filter(|&n| n > 0).ok_or_else(|| bad(format!("{what} must be a positive size")));
        let resize = if f.do_resize {
            if f.resample != PIL_BICUBIC {
                return Err(bad(format!("resample {}: only 3 (bicubic) is supported", f.resample)));
            }
            Some(match f.size {
                SizeField::Int(n) | SizeField::Dict { shortest_edge: Some(n), .. } => Resize::ShortestEdge(positive(Some(n), "size")?),
                SizeField::Dict { height, width, .. } => Resize::Exact { height: positive(height, "size.height")?, width: positive(width, "size.width")? },
            })
        } else {
            None
        };
        let center_crop = if f.do_center_crop {
            Some(match f.crop_size {
                SizeField::Int(n) => [positive(Some(n), "crop_size")?; 2],
                SizeField::Dict { height, width, .. } => [positive(height, "crop_size.height")?, positive(width, "crop_size.width")?],
            })
        } else {
            None
        };
        let rescale_factor = f.do_rescale.then_some(f.rescale_factor);
        if rescale_factor.is_some_and(|r| !r.is_finite()) {
            return Err(bad("rescale_factor must be finite".into()));
        }
        let normalize = if f.do_normalize {
            let three = |v: &[f64], what: &str| -> Result<[f32; 3]> {
                <[f64; 3]>::try_from(v).map(|a| a.map(|x| x as f32)).map_err(|_| bad(format!("{what} needs 3 values (RGB), got {}", v.len())))
            };
            let (mean, std) = (three(&f.image_mean, "image_mean")?, three(&f.image_std, "image_std")?);
            if std.iter().any(|&s| s == 0.0 || !s.is_finite()) || mean.iter().any(|m| !m.is_finite()) {
                return Err(bad("image_mean/image_std must be finite and image_std non-zero".into()));
            }
            Some((mean, std))
        } else {
            None
        };
        Ok(Self { resize, center_crop, rescale_factor, normalize })
    }

    /// `pixel_values` of one image: `[3, height, width]` values, channel-major, and `[height, width]`.
    pub fn preprocess(&self, image: &RgbImage) -> Result<(Vec<f32>, [usize; 2])> {
        let (w, h) = image.dimensions();
        if w == 0 || h == 0 {
            return Err(SdError::Invalid(format!("cannot preprocess an empty {w}×{h} image")));
        }
        let resized = match self.resize {
            None => None,
            Some(r) => {
                let (rw, rh) = match r {
                    // transformers: `int(size * long / short)`, rounded down
                    Resize::ShortestEdge(s) => {
                        let long = (s as u64 * w.max(h) as u64) as f64 / w.min(h) as f64;
                        if w <= h { (s, long as u32) } else { (long as u32, s) }
                    }
                    Resize::Exact { height, width } => (width, height),
                };
                // a sliver of an image would come out huge (PIL would try all the same)
                if rw as u64 * rh as u64 > MAX_RESIZED_PIXELS {
                    return Err(SdError::Invalid(format!("a {w}×{h} image would be resized to {rw}×{rh}, more than 64 Mpixel")));
                }
                Some(resize_bicubic_like_pil(image, rw, rh))
            }
        };
        let image = resized.as_ref().unwrap_or(image);
        let cropped = self.center_crop.map(|[ch, cw]| center_crop(image, ch, cw));
        let image = cropped.as_ref().unwrap_or(image);
        let (w, h) = (image.width() as usize, image.height() as usize);
        let mut values = vec![0f32; 3 * h * w];
        for (x, y, px) in image.enumerate_pixels() {
            for c in 0..3 {
                // numpy: `u8.astype(float64) * factor` cast to f32, then `(x - mean) / std` in f32
                let v = match self.rescale_factor {
                    Some(r) => (px[c] as f64 * r) as f32,
                    None => px[c] as f32,
                };
                let v = match self.normalize {
                    Some((mean, std)) => (v - mean[c]) / std[c],
                    None => v,
                };
                values[(c * h + y as usize) * w + x as usize] = v;
            }
        }
        Ok((values, [h, w]))
    }

    /// The vision tower's input for a batch of images, `[n, 3, height, width]`; every image must
    /// come out the same size (they do when the processor crops).
    pub fn pixel_values(&self, images: &[RgbImage], device: &Device) -> Result<Tensor<4>> {
        let mut all = Vec::new();
        let mut size = None;
        for image in images {
            let (values, hw) = self.preprocess(image)?;
            match size {
                Some(first) if first != hw => {
                    return Err(SdError::Invalid(format!("images preprocess to different sizes: {first:?} and {hw:?}")));
                }
                _ => size = Some(hw),
            }
            all.extend(values);
        }
        let [h, w] = size.ok_or_else(|| SdError::Invalid("no images to preprocess".into()))?;
        Ok(Tensor::from_data(TensorData::new(all, [images.len(), 3, h, w]), device))
    }
}

/// Pillow's `image.resize((width, height), BICUBIC, reducing_gap=None)` of an 8-bit RGB image
/// (what CLIPImageProcessor calls), bit for bit: along rows, then along columns (each axis only
/// when its size changes), every output pixel a sum of input pixels times 22-bit fixed-point
/// weights of the a = −0.5 cubic (widened by the scale when shrinking; normalised in f64), rounded
/// and clamped to 8 bits after each pass. The `image` crate's cubic filter (f32) leaves about
/// 0.1% of the values one level away; fast_image_resize's (Pillow-SIMD's 16-bit weights) about
/// a fifth, up to 6 levels (tests/it/images.rs's photos).
pub fn resize_bicubic_like_pil(image: &RgbImage, width: u32, height: u32) -> RgbImage {
    let (w, h) = image.dimensions();
    let rows = (width != w).then(|| {
        let taps = pil_bicubic_taps(w, width);
        RgbImage::from_fn(width, h, |x, y| {
            let (first, k) = &taps[x as usize];
            Rgb(pil_sum(k, |i| image.get_pixel(first + i, y).0))
        })
    });
    if height == h {
        return rows.unwrap_or_else(|| image.clone());
    }
    let rows = rows.as_ref().unwrap_or(image);
    let taps = pil_bicubic_taps(h, height);
    RgbImage::from_fn(width, height, |x, y| {
        let (first, k) = &taps[y as usize];
        Rgb(pil_sum(k, |i| rows.get_pixel(x, first + i).0))
    })
}

/// Pillow's `PRECISION_BITS` (32 − 8 − 2): weights are scaled by 2²² and rounded.
const PIL_PRECISION_BITS: u32 = 22;

/// Pillow's `precompute_coeffs` + `normalize_coeffs_8bpc` for its bicubic filter: per output
/// pixel, the first input index and the fixed-point weights of the inputs from there on.
fn pil_bicubic_taps(in_size: u32, out_size: u32) -> Vec<(u32, Vec<i32>)> {
    let cubic = |x: f64| {
        const A: f64 = -0.5;
        let x = x.abs();
        if x < 1.0 {
            ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0
        } else if x < 2.0 {
            (((x - 5.0) * x + 8.0) * x - 4.0) * A
        } else {
            0.0
        }
    };
    let scale = in_size as f64 / out_size as f64;
    let filter_scale = scale.max(1.0);
    let support = 2.0 * filter_scale;
    // Pillow multiplies by the reciprocal (dividing would round differently)
    let inv = 1.0 / filter_scale;
    let one = (1u32 << PIL_PRECISION_BITS) as f64;
    (0..out_size)
        .map(|o| {
            let center = (o as f64 + 0.5) * scale;
            // C's truncating (int) casts, as Pillow rounds the window's ends
            let first = ((center - support + 0.5) as i64).max(0);
            let end = ((center + support + 0.5) as i64).min(in_size as i64);
            let weights: Vec<f64> = (first..end).map(|i| cubic((i as f64 - center + 0.5) * inv)).collect();
            let total: f64 = weights.iter().sum();
            let fixed = weights
                .iter()
                .map(|&v| {
                    let v = if total != 0.0 { v / total } else { v };
                    (if v < 0.0 { -0.5 + v * one } else { 0.5 + v * one }) as i32
                })
                .collect();
            (first as u32, fixed)
        })
        .collect()
}

/// One output pixel of a Pillow pass: Σ pixel·weight from ½ (rounding), shifted back and clamped.
fn pil_sum(k: &[i32], pixel: impl Fn(u32) -> [u8; 3]) -> [u8; 3] {
    let mut acc = [1i32 << (PIL_PRECISION_BITS - 1); 3];
    for (i, &w) in k.iter().enumerate() {
        let p = pixel(i as u32);
        for c in 0..3 {
            acc[c] += p[c] as i32 * w;
        }
    }
    acc.map(|v| (v >> PIL_PRECISION_BITS).clamp(0, 255) as u8)
}

/// transformers' `center_crop`: the middle `height × width` (offsets rounded down); an image
/// smaller than the crop is first centred on black (offsets rounded up), as transformers pads.
fn center_crop(image: &RgbImage, height: u32, width: u32) -> RgbImage {
    let (w, h) = image.dimensions();
    let (cw, ch) = (w.max(width), h.max(height));
    let mut canvas = RgbImage::new(cw, ch);
    imageops::replace(&mut canvas, image, (cw - w).div_ceil(2) as i64, (ch - h).div_ceil(2) as i64);
    imageops::crop_imm(&canvas, (cw - width) / 2, (ch - height) / 2, width, height).to_image()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pooling_follows_transformers() {
        let ids = [49406, 320, 1125, 49407, 49407, 49407];
        assert_eq!(pooled_position(&ids, 2), 3);
        assert_eq!(pooled_position(&ids, 49407), 3);
        // an added token (id above 49407) moves the legacy argmax, not the eos rule
        let added = [49406, 49408, 49407];
        assert_eq!((pooled_position(&added, 2), pooled_position(&added, 49407)), (1, 2));
        // truncated without EOS: the largest id / position 0
        assert_eq!((pooled_position(&[49406, 7, 9], 2), pooled_position(&[49406, 7, 9], 49407)), (0, 0));
    }

    #[test]
    fn processor_configs_in_both_layouts() {
        let openai = r#"{"crop_size": 224, "do_center_crop": true, "do_normalize": true, "do_resize": true,
            "feature_extractor_type": "CLIPFeatureExtractor", "image_mean": [0.48145466, 0.4578275, 0.40821073],
            "image_std": [0.26862954, 0.26130258, 0.27577711], "resample": 3, "size": 224}"#;
        assert_eq!(ClipImageProcessor::from_json(openai, "p").unwrap(), ClipImageProcessor::default());
        let dicts = r#"{"size": {"shortest_edge": 224}, "crop_size": {"height": 224, "width": 224}}"#;
        assert_eq!(ClipImageProcessor::from_json(dicts, "p").unwrap(), ClipImageProcessor::default());
        let exact = ClipImageProcessor::from_json(r#"{"size": {"height": 5, "width": 7}, "do_center_crop": false}"#, "p").unwrap();
        assert_eq!((exact.resize, exact.center_crop), (Some(Resize::Exact { height: 5, width: 7 }), None));
        for (bad, says) in [
            (r#"{"resample": 2}"#, "bicubic"),
            (r#"{"size": 0}"#, "positive"),
            (r#"{"crop_size": {"shortest_edge": 4}}"#, "crop_size.height"),
            (r#"{"image_std": [0.5, 0.5]}"#, "3 values"),
            (r#"{"size": "big"}"#, "p: "),
        ] {
            let e = ClipImageProcessor::from_json(bad, "p").unwrap_err().to_string();
            assert!(e.starts_with("p: ") && e.contains(says), "{bad}: {e}");
        }
    }

    #[test]
    fn center_crop_pads_like_transformers() {
        // a 3×1 image cropped to 2 wide, 4 high: centred on black at row ceil(3/2) = 2, then the
        // left 2 columns ((3 - 2) / 2 = 0); transformers' `center_crop` gives the same
        let image = RgbImage::from_fn(3, 1, |x, _| image::Rgb([x as u8 + 1; 3]));
        let out = center_crop(&image, 4, 2);
        let rows: Vec<Vec<u8>> = (0..4).map(|y| (0..2).map(|x| out.get_pixel(x, y)[0]).collect()).collect();
        assert_eq!(rows, [[0, 0], [0, 0], [1, 2], [0, 0]]);
    }

    #[test]
    fn scores_clamp_negative_cosines() {
        assert!((clip_score(&[1.0, 0.0], &[1.0, 1.0]).unwrap() - 100.0 / 2f64.sqrt()).abs() < 1e-12);
        assert_eq!(clip_score(&[1.0, 0.0], &[-1.0, 0.5]).unwrap(), 0.0);
        assert!(clip_score(&[1.0], &[1.0, 0.0]).is_err());
        assert!(clip_score(&[0.0, 0.0], &[1.0, 0.0]).is_err());
    }
}

/// The files of a transformers `CLIPModel` folder (a hub snapshot of openai/clip-vit-large-patch14
/// has them all) that [`load_folder`] reads.
pub const FOLDER_FILES: [&str; 5] = ["config.json", "model.safetensors", "preprocessor_config.json", "vocab.json", "merges.txt"];

/// Loads a transformers `CLIPModel` folder ([`FOLDER_FILES`]; the weights only as safetensors)
/// in f32: the model, its image processor and its tokenizer.
#[cfg(not(target_arch = "wasm32"))]
pub fn load_folder(dir: &std::path::Path, device: &Device) -> Result<(ClipModel, ClipImageProcessor, crate::tokenizer::ClipTokenizer)> {
    let text = |name: &str| -> Result<(String, String)> {
        let path = dir.join(name);
        let read = std::fs::read_to_string(&path).map_err(|source| SdError::Io { path: path.clone(), source })?;
        Ok((read, path.display().to_string()))
    };
    let (config, path) = text("config.json")?;
    let config = ClipModelConfig::from_json(&config, &path)?;
    let (processor, path) = text("preprocessor_config.json")?;
    let processor = ClipImageProcessor::from_json(&processor, &path)?;
    let weights = crate::checkpoint::weights::WeightFile::open(&dir.join("model.safetensors"))?;
    let vb = VarBuilder::from_files([weights], device, burn::tensor::DType::F32);
    let model = ClipModel::load(&vb, &config)?;
    Ok((model, processor, crate::tokenizer::ClipTokenizer::from_folder(dir)?))
}
