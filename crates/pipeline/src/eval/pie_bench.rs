//! PIE-Bench (Ju et al., *Direct Inversion*, ICLR 2024) as its own evaluation code computes it
//! (cure-lab/PnPInversion `evaluation/evaluate.py`, `evaluation/matrics_calculator.py`): the
//! `mapping_file.json` entries, the run-length-encoded edit masks, the background metrics of the
//! unedited part (PSNR, MSE, SSIM, LPIPS), the structure distance and the CLIP scores of the
//! whole edited image and of its edited part.

use std::collections::BTreeMap;

use burn::tensor::{Device, Tensor, TensorData};
use edict_sd::models::clip_score::{ClipImageProcessor, ClipModel, clip_score};
use edict_sd::models::dino_vit::{DinoVit, self_similarity};
use edict_sd::models::lpips::Lpips;
use edict_sd::tokenizer::ClipTokenizer;
use image::RgbImage;
use serde::Deserialize;

use crate::error::{PipelineError, Result};
use crate::io::image_io::Rgb;
use crate::eval::metrics::{Border, ssim_channel};

/// The side of PIE-Bench's images and masks.
pub const SIDE: usize = 512;

/// One `mapping_file.json` entry, its prompts without the brackets that mark edited words.
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    pub id: String,
    /// Relative to the benchmark's `annotation_images/` folder.
    pub image_path: String,
    pub source_prompt: String,
    pub target_prompt: String,
    pub editing_instruction: String,
    pub editing_type_id: String,
    pub blended_word: String,
    /// Flat (start, length) pairs over the row-major 512×512 image.
    pub mask: Vec<i64>,
}

#[derive(Deserialize)]
struct RawEntry {
    image_path: String,
    original_prompt: String,
    editing_prompt: String,
    #[serde(default)]
    editing_instruction: String,
    editing_type_id: String,
    #[serde(default)]
    blended_word: String,
    mask: Vec<i64>,
}

/// The entries of a `mapping_file.json` (`{id: {image_path, original_prompt, …}}`), sorted by id.
pub fn parse_mapping(text: &str) -> Result<Vec<Entry>> {
    let raw: BTreeMap<String, RawEntry> =
        serde_json::from_str(text).map_err(|e| PipelineError::Invalid(format!("not a PIE-Bench mapping file: {e}")))?;
    raw.into_iter()
        .map(|(id, r)| {
            if !r.mask.len().is_multiple_of(2) {
                return Err(PipelineError::Invalid(format!("entry {id}: the mask has an odd number of values ({}); it is (start, length) pairs", r.mask.len())));
            }
            if !stays_inside(&r.image_path) {
                return Err(PipelineError::Invalid(format!(
                    "entry {id}: image_path \"{}\" is not a relative path inside annotation_images/ (absolute, empty, or with `..`)",
                    r.image_path
                )));
            }
            Ok(Entry {
                id,
                image_path: r.image_path,
                source_prompt: strip_brackets(&r.original_prompt),
                target_prompt: strip_brackets(&r.editing_prompt),
                editing_instruction: r.editing_instruction,
                editing_type_id: r.editing_type_id,
                blended_word: r.blended_word,
                mask: r.mask,
            })
        })
        .collect()
}

/// Whether `path`, joined to a folder, names something inside it: relative, not empty, and
/// made of plain names only (no `..`, no root or drive). A benchmark folder never reaches outside
/// itself.
fn stays_inside(path: &str) -> bool {
    use std::path::{Component, Path};
    let p = Path::new(path);
    p.components().next().is_some() && p.components().all(|c| matches!(c, Component::Normal(_) | Component::CurDir))
}

/// `evaluate.py`: `prompt.replace("[", "").replace("]", "")`.
pub fn strip_brackets(prompt: &str) -> String {
    prompt.replace(['[', ']'], "")
}

/// A 0/1 edit mask, row-major; 1 = edited.
#[derive(Debug, Clone, PartialEq)]
pub struct Mask {
    pub side: usize,
    pub data: Vec<u8>,
}

impl Mask {
    /// `evaluate.py`'s `mask_decode` at 512×512: each (start, length) run set to 1, clipped at
    /// the end of the image (a run starting past it sets nothing), then the four 1-pixel borders
    /// set to 1 ("to avoid annotation errors in boundary").
    pub fn decode(rle: &[i64]) -> Result<Self> {
        if !rle.len().is_multiple_of(2) {
            return Err(PipelineError::Invalid(format!("a mask has an odd number of values ({})", rle.len())));
        }
        let n = (SIDE * SIDE) as i64;
        let mut data = vec![0u8; SIDE * SIDE];
        for run in rle.chunks_exact(2) {
            let start = run[0];
            if start < 0 {
                // numpy would index from the end; no PIE-Bench mask does this
                return Err(PipelineError::Invalid(format!("a mask run starts at {start}")));
            }
            let len = run[1].min(n - start.min(n));
            if len > 0 {
                data[start as usize..(start + len) as usize].fill(1);
            }
        }
        Ok(Self::with_borders(SIDE, data))
    }

    fn with_borders(side: usize, mut data: Vec<u8>) -> Self {
        for i in 0..side {
            for p in [i, (side - 1) * side + i, i * side, i * side + side - 1] {
                data[p] = 1;
            }
        }
        Self { side, data }
    }

    /// The mask at another side (for runs below the benchmark's 512): nearest pixel centres, the
    /// borders set again as `mask_decode` does.
    pub fn resized(&self, side: usize) -> Self {
        if side == self.side {
            return self.clone();
        }
        let src = |i: usize| ((i as f64 + 0.5) * self.side as f64 / side as f64) as usize;
        let data = (0..side * side).map(|p| self.data[src(p / side) * self.side + src(p % side)]).collect();
        Self::with_borders(side, data)
    }

    /// Pixels edited (the mask's sum).
    pub fn edited(&self) -> usize {
        self.data.iter().map(|&v| v as usize).sum()
    }

    /// Row-major (start, length) runs of the 1s, merged: a canonical form to compare masks by.
    pub fn runs(&self) -> Vec<usize> {
        let mut out = Vec::new();
        let mut start = None;
        for (i, &v) in self.data.iter().chain([&0]).enumerate() {
            match (v, start) {
                (1, None) => start = Some(i),
                (0, Some(s)) => {
                    out.extend([s, i - s]);
                    start = None;
                }
                _ => {}
            }
        }
        out
    }
}

/// The unedited part's PSNR (dB), MSE and SSIM; NaN where the mask leaves no unedited pixel
/// (`evaluate.py` returns "nan").
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Background {
    pub psnr: f64,
    pub mse: f64,
    pub ssim: f64,
}

/// `calculate_{psnr,mse,ssim}(src, tgt, 1 − mask, 1 − mask)`: both images in [0, 1]
/// (`u8 / 255`), multiplied by 1 − mask, compared over the whole image and all 3 channels with
/// a data range of 1 — torchmetrics' `PeakSignalNoiseRatio(data_range=1.0)`,
/// `MeanSquaredError()`, `StructuralSimilarityIndexMeasure(data_range=1.0)` (1.9.0: Gaussian
/// window over the reflect-padded image, see [`Border::Reflect`]). Computed in f64; torchmetrics
/// works in f32.
pub fn background(source: &Rgb, edited: &Rgb, mask: &Mask) -> Result<Background> {
    let (w, h) = (source.width, source.height);
    if (edited.width, edited.height) != (w, h) || (mask.side, mask.side) != (w, h) {
        return Err(PipelineError::Invalid(format!(
            "background metrics need equal sizes: source {w}×{h}, edited {}×{}, mask {}²",
            edited.width, edited.height, mask.side
        )));
    }
    if mask.edited() == w * h {
        return Ok(Background { psnr: f64::NAN, mse: f64::NAN, ssim: f64::NAN });
    }
    let planes = |img: &Rgb| -> [Vec<f64>; 3] {
        std::array::from_fn(|c| (0..w * h).map(|i| img.data[i * 3 + c] as f64 / 255.0 * (1 - mask.data[i]) as f64).collect())
    };
    let (a, b) = (planes(source), planes(edited));
    let n = (w * h * 3) as f64;
    let mse = a.iter().zip(&b).flat_map(|(x, y)| x.iter().zip(y)).map(|(x, y)| (x - y).powi(2)).sum::<f64>() / n;
    let ssim = a.iter().zip(&b).map(|(x, y)| ssim_channel(x, y, w, h, 1.0, Border::Reflect)).sum::<f64>() / 3.0;
    Ok(Background { psnr: 10.0 * (1.0 / mse).log10(), mse, ssim })
}

/// `calculate_lpips(src, tgt, 1 − mask, 1 − mask)`: torchmetrics' LPIPS (SqueezeNet) of the
/// unedited part, both images in [0, 1] (`u8 / 255`) times 1 − mask, fed as `2x − 1`; NaN where
/// the mask leaves no unedited pixel, as for [`background`]. Sizes as [`background`] checks them.
pub async fn background_lpips(net: &Lpips, source: &Rgb, edited: &Rgb, mask: &Mask) -> Result<f64> {
    let (w, h) = (source.width, source.height);
    if mask.edited() == w * h {
        return Ok(f64::NAN);
    }
    // [3, h, w] planes, computed in f32 as numpy does
    let planes = |img: &Rgb| -> Vec<f32> {
        (0..3).flat_map(|c| (0..w * h).map(move |i| (img.data[i * 3 + c] as f32 / 255.0 * (1 - mask.data[i]) as f32) * 2.0 - 1.0)).collect()
    };
    Ok(net.distance(&planes(source), &planes(edited), h, w).await?.0)
}

/// The side PIE-Bench's structure distance resizes to (`Resize(224, max_size=480)`; square
/// images come out 224×224).
pub const STRUCTURE_SIDE: usize = 224;

/// ImageNet's channel statistics (`transforms.Normalize`), which the structure distance applies
/// to 0–255 values, as the benchmark's code does.
const IMAGENET_MEAN: [f32; 3] = [0.485, 0.456, 0.406];
const IMAGENET_STD: [f32; 3] = [0.229, 0.224, 0.225];

/// `calculate_structure_distance(src, tgt)`, the whole image (PIE-Bench's table's column): each
/// image as 0–255 floats (not divided by 255), resized to 224² ([`resize_bilinear_aa`]),
/// normalised with ImageNet's mean and std, then the MSE between the two self-similarity
/// matrices of DINO ViT-B/8's last-layer keys. Square images only (PIE-Bench's are): a
/// non-square one would need DINO's interpolated position embeddings.
pub async fn structure_distance(net: &DinoVit, source: &Rgb, edited: &Rgb) -> Result<f64> {
    same_size((source.width, source.height), edited)?;
    Structure::of(net, source)?.distance(net, edited).await
}

/// A source image's side of [`structure_distance`], computed once and compared with each
/// method's edit of it.
pub struct Structure {
    sim: Tensor<2>,
    size: (usize, usize),
}

impl Structure {
    /// The source's self-similarity matrix.
    pub fn of(net: &DinoVit, source: &Rgb) -> Result<Self> {
        let size = (source.width, source.height);
        if size.0 != size.1 {
            return Err(PipelineError::Invalid(format!("the structure distance needs square images, got {}×{}", size.0, size.1)));
        }
        Ok(Self { sim: self_similarity_of(net, source)?, size })
    }

    /// The distance from the source to `edited`, an image of the source's size.
    pub async fn distance(&self, net: &DinoVit, edited: &Rgb) -> Result<f64> {
        same_size(self.size, edited)?;
        let b = self_similarity_of(net, edited)?;
        // row sums, then their sum on the host: a whole-tensor sum on the GPU uses atomics, whose
        // order (and rounding) varies from run to run
        let rows = edict_sd::device::backend::read((self.sim.clone() - b).powi_scalar(2).sum_dim(1)).await?;
        Ok(rows.iter().map(|&v| v as f64).sum::<f64>() / (rows.len() * rows.len()) as f64)
    }
}

/// Refuses an edit whose size is not the source's.
fn same_size(source: (usize, usize), edited: &Rgb) -> Result<()> {
    if (edited.width, edited.height) != source {
        return Err(PipelineError::Invalid(format!(
            "the structure distance needs two images of one size, got {}×{} and {}×{}",
            source.0, source.1, edited.width, edited.height
        )));
    }
    Ok(())
}

/// DINO's key self-similarity of a square image, preprocessed as the benchmark does.
fn self_similarity_of(net: &DinoVit, img: &Rgb) -> Result<Tensor<2>> {
    let (w, h, side) = (img.width, img.height, STRUCTURE_SIDE);
    let planes: Vec<f32> = (0..3).flat_map(|c| (0..w * h).map(move |i| img.data[i * 3 + c] as f32)).collect();
    let mut x = resize_bilinear_aa(&planes, 3, h, w, side, side);
    for (c, plane) in x.chunks_mut(side * side).enumerate() {
        plane.iter_mut().for_each(|v| *v = (*v - IMAGENET_MEAN[c]) / IMAGENET_STD[c]);
    }
    let x = Tensor::<4>::from_data(TensorData::new(x, [1, 3, side, side]), net.device());
    Ok(self_similarity(net.last_keys(x)?))
}

/// torch's `interpolate(mode="bilinear", align_corners=False, antialias=True)` (what torchvision's
/// `Resize` does to tensors) of `c` planes from `h`×`w` to `oh`×`ow`: along each axis PIL's
/// triangle filter, widened by the scale when shrinking, weights normalised per output pixel;
/// along rows first, then along columns, in f32 with each tap fused (`fma(src, w, acc)`, as
/// ATen's vectorised kernel accumulates).
pub fn resize_bilinear_aa(planes: &[f32], c: usize, h: usize, w: usize, oh: usize, ow: usize) -> Vec<f32> {
    let (across, down) = (aa_weights(w, ow), aa_weights(h, oh));
    let mut rows = vec![0f32; c * h * ow];
    for (src, dst) in planes.chunks(w).zip(rows.chunks_mut(ow)) {
        for (o, (start, weights)) in dst.iter_mut().zip(&across) {
            *o = weights.iter().zip(&src[*start..]).fold(0.0, |acc, (wt, v)| v.mul_add(*wt, acc));
        }
    }
    let mut out = vec![0f32; c * oh * ow];
    for (src, dst) in rows.chunks(h * ow).zip(out.chunks_mut(oh * ow)) {
        for (y, (start, weights)) in down.iter().enumerate() {
            for x in 0..ow {
                dst[y * ow + x] = weights.iter().enumerate().fold(0.0, |acc, (j, wt)| src[(start + j) * ow + x].mul_add(*wt, acc));
            }
        }
    }
    out
}

/// Each output position's first input index and weights along an axis of `n` → `m` values
/// (ATen's `_compute_indices_min_size_weights_aa`, bilinear filter).
fn aa_weights(n: usize, m: usize) -> Vec<(usize, Vec<f32>)> {
    let scale = n as f32 / m as f32;
    let (support, invscale) = if scale >= 1.0 { (scale, 1.0 / scale) } else { (1.0, 1.0) };
    (0..m)
        .map(|i| {
            let center = scale * (i as f32 + 0.5);
            let lo = ((center - support + 0.5) as isize).max(0) as usize;
            let hi = ((center + support + 0.5) as usize).min(n);
            let raw: Vec<f32> = (lo..hi).map(|j| (1.0 - ((j as f32 - center + 0.5) * invscale).abs()).max(0.0)).collect();
            let total: f32 = raw.iter().sum();
            (lo, raw.iter().map(|w| if total != 0.0 { w / total } else { *w }).collect())
        })
        .collect()
}

/// `np.uint8(img * mask)`: the edited part, black elsewhere.
pub fn masked(img: &Rgb, mask: &Mask) -> Rgb {
    let data = img.data.iter().enumerate().map(|(i, &v)| v * mask.data[i / 3]).collect();
    Rgb { data, ..img.clone() }
}

/// torchmetrics' `CLIPScore` as PIE-Bench calls it: one uint8 image and one prompt per call,
/// `100 · max(cos, 0)` (see [`edict_sd::models::clip_score`]).
pub struct ClipScorer {
    pub model: ClipModel,
    pub processor: ClipImageProcessor,
    pub tokenizer: ClipTokenizer,
    pub device: Device,
}

impl ClipScorer {
    /// The projected text embedding of a prompt (tokenized as SD's CLIP tokenizer does: cut at
    /// 77 tokens with `<|endoftext|>` kept; PIE-Bench's prompts are far shorter).
    pub async fn text(&self, prompt: &str) -> Result<Vec<f32>> {
        let ids = self.tokenizer.encode(prompt)?.ids;
        Ok(edict_sd::device::backend::read(self.model.text_embeds(&ids)?).await?)
    }

    pub async fn score(&self, image: &Rgb, text: &[f32]) -> Result<f64> {
        let img = RgbImage::from_raw(image.width as u32, image.height as u32, image.data.clone())
            .ok_or_else(|| PipelineError::Image("pixel buffer does not match its size".into()))?;
        let pixels = self.processor.pixel_values(&[img], &self.device)?;
        let embed = edict_sd::device::backend::read(self.model.image_embeds(pixels)?).await?;
        Ok(clip_score(&embed, text)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mapping_entries_are_sorted_and_stripped() {
        let text = r#"{"2": {"image_path": "b.jpg", "original_prompt": "a [cat]", "editing_prompt": "a [dog] [ ]", "editing_type_id": "1", "mask": [0, 3]},
                       "10": {"image_path": "a.jpg", "original_prompt": "x", "editing_prompt": "y", "editing_instruction": "i", "editing_type_id": "0", "blended_word": "x y", "mask": []}}"#;
        let e = parse_mapping(text).unwrap();
        assert_eq!((e[0].id.as_str(), e[1].id.as_str()), ("10", "2"));
        assert_eq!((e[1].source_prompt.as_str(), e[1].target_prompt.as_str()), ("a cat", "a dog  "));
        assert!(parse_mapping(r#"{"1": {"image_path": "a", "original_prompt": "", "editing_prompt": "", "editing_type_id": "0", "mask": [1]}}"#).unwrap_err().to_string().contains("odd"));
        assert!(parse_mapping("[]").unwrap_err().to_string().contains("not a PIE-Bench mapping file"));
        // paths that would leave annotation_images/ are refused, naming the entry
        let entry = |path: &str| format!(r#"{{"7": {{"image_path": {path:?}, "original_prompt": "", "editing_prompt": "", "editing_type_id": "0", "mask": []}}}}"#);
        for bad in ["../x.jpg", "0_random/../../x.jpg", "/etc/passwd", "", "a/./../../b.jpg"] {
            let e = parse_mapping(&entry(bad)).unwrap_err().to_string();
            assert!(e.contains("entry 7: image_path") && e.contains("inside annotation_images/"), "{bad}: {e}");
        }
        for good in ["0_random_140/000000000000.jpg", "./a.jpg", "x..y.jpg"] {
            assert_eq!(parse_mapping(&entry(good)).unwrap()[0].image_path, good);
        }
    }

    #[test]
    fn masks_decode_clip_and_resize() {
        let n = (SIDE * SIDE) as i64;
        // a run clipped at the end, one past the end, an empty one
        let m = Mask::decode(&[SIDE as i64 * 3 + 10, 5, n - SIDE as i64 - 2, 600, n + 5, 10, 7, 0]).unwrap();
        let ones: Vec<usize> = (0..SIDE * SIDE).filter(|&i| m.data[i] == 1).collect();
        let border = 4 * SIDE - 4;
        assert_eq!(ones.len(), border + 5 + 1, "5 inside, 1 of the clipped run off the border");
        assert!(ones.contains(&(SIDE * 3 + 12)) && ones.contains(&(SIDE * SIDE - SIDE - 2)));
        assert_eq!(m.runs()[..4], [0, SIDE + 1, 2 * SIDE - 1, 2]);
        assert!(Mask::decode(&[-1, 3]).is_err() && Mask::decode(&[1]).is_err());
        // 512 → 4: pixel centres 64, 192, 320, 448; borders forced
        let mut block = vec![0i64; 0];
        for y in 150..250 {
            block.extend([y * SIDE as i64 + 150, 100]);
        }
        let small = Mask::decode(&block).unwrap().resized(4);
        assert_eq!(small.data, [1, 1, 1, 1, 1, 1, 0, 1, 1, 0, 0, 1, 1, 1, 1, 1].map(|v: i32| v as u8));
        let small = Mask::decode(&block).unwrap().resized(8);
        // centres 32, 96, 160, 224, …: rows/columns 2 and 3 are inside 150..250
        assert_eq!(small.data[2 * 8 + 2..2 * 8 + 5], [1, 1, 0]);
        // extreme runs: an error or a clipped run, never an overflow
        assert!(Mask::decode(&[i64::MIN, 5]).unwrap_err().to_string().contains("starts at"));
        assert_eq!(Mask::decode(&[i64::MAX, i64::MAX]).unwrap().edited(), 4 * SIDE - 4);
        assert_eq!(Mask::decode(&[0, i64::MAX]).unwrap().edited(), SIDE * SIDE);
    }

    #[test]
    fn background_of_known_images() {
        let side = 16;
        let mut mask = Mask::with_borders(side, vec![0; side * side]);
        let img = |v: u8| Rgb { width: side, height: side, data: vec![v; side * side * 3] };
        // the 14×14 inside differs by 10 levels; the (edited) borders are ignored
        let (a, mut b) = (img(100), img(110));
        b.data.iter_mut().enumerate().filter(|(i, _)| mask.data[i / 3] == 1).for_each(|(_, v)| *v = 0);
        let q = background(&a, &b, &mask).unwrap();
        let mse = (10.0f64 / 255.0).powi(2) * 196.0 / 256.0;
        assert!((q.mse - mse).abs() < 1e-15 && (q.psnr - 10.0 * (1.0 / mse).log10()).abs() < 1e-9);
        assert!(q.ssim < 1.0 && q.ssim > 0.5);
        assert!((background(&a, &a, &mask).unwrap().ssim - 1.0).abs() < 1e-12);
        mask.data.fill(1);
        assert!(background(&a, &b, &mask).unwrap().psnr.is_nan());
        assert!(background(&a, &img(0), &Mask::with_borders(8, vec![0; 64])).is_err());
        let m = masked(&img(110), &Mask::with_borders(side, vec![0; side * side]));
        assert_eq!((m.data[0], m.data[(side + 1) * 3]), (110, 0));
    }
}
