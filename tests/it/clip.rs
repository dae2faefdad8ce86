//! The CLIP model (both towers), `CLIPImageProcessor` and the CLIP score against transformers and
//! torchmetrics on the tiny fixture `CLIPModel` (tests/reference/make_clip.py), CPU and wgpu.


use std::collections::HashMap;
use std::path::PathBuf;

use burn::tensor::{DType, Device, Tensor};
use crate::common::*;
use edict_sd::SdError;
use edict_sd::models::clip_score::{ClipImageProcessor, ClipModel, ClipModelConfig, clip_score};
use edict_sd::tokenizer::ClipTokenizer;
use edict_sd::checkpoint::weights::{VarBuilder, WeightFile};
use image::RgbImage;
use safetensors::SafeTensors;
use safetensors::tensor::TensorView;

fn tiny_clip() -> PathBuf {
    fixtures().join("tiny-clip")
}

fn read(rel: &str) -> String {
    std::fs::read_to_string(tiny_clip().join(rel)).unwrap()
}

fn config() -> ClipModelConfig {
    ClipModelConfig::from_json(&read("config.json"), "config.json").unwrap()
}

fn processor() -> ClipImageProcessor {
    ClipImageProcessor::from_json(&read("preprocessor_config.json"), "preprocessor_config.json").unwrap()
}

fn load_from(weights: &std::path::Path, config: &ClipModelConfig, device: &Device) -> Result<(ClipModel, VarBuilder), SdError> {
    let vb = VarBuilder::from_files([WeightFile::open(weights)?], device, DType::F32);
    Ok((ClipModel::load(&vb, config)?, vb))
}

fn load_error(weights: &std::path::Path, config: &ClipModelConfig) -> String {
    match load_from(weights, config, &Device::flex()) {
        Ok(_) => panic!("{} loaded with {config:?}", weights.display()),
        Err(e) => e.to_string(),
    }
}

fn load(device: &Device) -> ClipModel {
    let (model, vb) = load_from(&tiny_clip().join("model.safetensors"), &config(), device).unwrap();
    assert!(vb.unused_keys().is_empty(), "checkpoint keys not loaded: {:?}", vb.unused_keys());
    model
}

/// `reference/clip.json`: the photos (file and PIL crop box), prompts and torchmetrics' scores.
fn meta() -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(fixtures().join("reference/clip.json")).unwrap()).unwrap()
}

fn photos() -> Vec<RgbImage> {
    meta()["images"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            let path = fixtures().join("photos").join(e["file"].as_str().unwrap());
            let b: Vec<u32> = e["box"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as u32).collect();
            let img = image::open(path).unwrap().to_rgb8();
            image::imageops::crop_imm(&img, b[0], b[1], b[2] - b[0], b[3] - b[1]).to_image()
        })
        .collect()
}

fn prompts() -> Vec<String> {
    meta()["prompts"].as_array().unwrap().iter().map(|p| p.as_str().unwrap().to_string()).collect()
}

fn pixel_values(r: &HashMap<String, Ref>, i: usize, device: &Device) -> Tensor<4> {
    let s = &r[&format!("pixel_values_{i}")].shape;
    upload(&r[&format!("pixel_values_{i}")].values, [s[0], s[1], s[2], s[3]], device)
}

/// Our tokenizer's ids (padded to 77) for prompt `j`, checked against the processor's (unpadded).
fn ids(r: &HashMap<String, Ref>, j: usize, prompt: &str) -> Vec<u32> {
    let tok = ClipTokenizer::from_folder(&tiny_clip()).unwrap();
    let ids = tok.encode(prompt).unwrap().ids;
    let want: Vec<u32> = r[&format!("ids_{j}")].values.iter().map(|&v| v as u32).collect();
    assert_eq!(ids[..want.len()], want[..], "prompt {j} tokenizes differently");
    ids
}

/// Bicubic in the `image` crate (one axis at a time, as PIL) vs PIL: the same kernel and 8-bit
/// rounding between the passes, but PIL's weights are fixed-point, so a value near a rounding
/// tie can land one 8-bit level off; nothing else (crop offsets, rescale, normalisation) may
/// differ. Compared in levels, (pixel value · std + mean) · 255: all within 1 level, at most 1%
/// of them off. (The fixture's three images match exactly; photos resized from 512², 640×480,
/// 300×533 and 150×100 to 224 put 0.0007–0.43% of the values one level off.)
#[test]
fn preprocessing_matches_clip_image_processor() {
    let r = reference("clip.safetensors");
    let p = processor();
    let (mean, std) = p.normalize.unwrap();
    for (i, photo) in photos().iter().enumerate() {
        let (ours, hw) = p.preprocess(photo).unwrap();
        let want = &r[&format!("pixel_values_{i}")];
        assert_eq!(want.shape, [1, 3, hw[0], hw[1]], "image {i}: size");
        let plane = hw[0] * hw[1];
        let level = |v: f64, c: usize| (v * std[c] as f64 + mean[c] as f64) * 255.0;
        let diffs: Vec<f64> = ours.iter().zip(&want.values).enumerate().map(|(k, (&a, &b))| (level(a as f64, k / plane) - level(b, k / plane)).abs()).collect();
        let worst = diffs.iter().copied().fold(0.0, f64::max);
        let off = diffs.iter().filter(|&&d| d > 0.5).count() as f64 / diffs.len() as f64;
        let max_abs = max_abs_diff(&ours.iter().map(|&v| v as f64).collect::<Vec<_>>(), &want.values);
        eprintln!("image {i} {}×{} → {hw:?}: max level error {worst:.3}, {:.2}% of values one level off; max abs error {max_abs:e}", photo.width(), photo.height(), off * 100.0);
        assert!(worst < 1.0 + 1e-3, "image {i}: a value is {worst} 8-bit levels off");
        assert!(off <= 0.01, "image {i}: {:.2}% of the values are one level off", off * 100.0);
    }
}

#[test]
fn embeddings_match_transformers() {
    let r = reference("clip.safetensors");
    for (backend, device) in devices() {
        let model = load(&device);
        let n = photos().len();
        let mut batch = Vec::new();
        for i in 0..n {
            let want = &r[&format!("image_embeds_{i}")].values;
            let ours = host(model.image_embeds(pixel_values(&r, i, &device)).unwrap());
            let err = max_abs_diff(&ours, want);
            eprintln!("{backend} image {i}: max abs error {err:e}, scale {:.3}", max_abs(want));
            assert!(err <= 1e-4 * max_abs(want), "{backend} image {i}: max abs error {err:e}");
            batch.push(pixel_values(&r, i, &device));
        }
        let together = host(model.image_embeds(Tensor::cat(batch, 0)).unwrap());
        let want: Vec<f64> = (0..n).flat_map(|i| r[&format!("image_embeds_{i}")].values.clone()).collect();
        assert!(max_abs_diff(&together, &want) <= 1e-4 * max_abs(&want), "{backend}: batch of {n} images");
        for (j, prompt) in prompts().iter().enumerate() {
            let want = &r[&format!("text_embeds_{j}")].values;
            let ours = host(model.text_embeds(&ids(&r, j, prompt)).unwrap());
            let err = max_abs_diff(&ours, want);
            eprintln!("{backend} prompt {j}: max abs error {err:e}, scale {:.3}", max_abs(want));
            assert!(err <= 1e-4 * max_abs(want), "{backend} prompt {j} {prompt:?}: max abs error {err:e}");
        }
    }
}

/// The fixture's `eos_token_id` is openai's legacy 2 (pooled at the largest id); with the
/// current rule (the first `eos_token_id`) the CLIP tokenizer's prompts pool at the same place.
#[test]
fn text_pooling_rules_agree_on_tokenizer_output() {
    let r = reference("clip.safetensors");
    let device = Device::flex();
    let mut c = config();
    assert_eq!(c.text_config.eos_token_id, 2);
    c.text_config.eos_token_id = edict_sd::tokenizer::EOS;
    let (model, _) = load_from(&tiny_clip().join("model.safetensors"), &c, &device).unwrap();
    let ids = ids(&r, 0, &prompts()[0]);
    assert_eq!(host(model.text_embeds(&ids).unwrap()), host(load(&device).text_embeds(&ids).unwrap()));
}

/// CLIP scores `100 · max(cos, 0)` against torchmetrics' `clip_score` (PIE-Bench's call: one
/// uint8 image, one prompt), from transformers' pixel values and end to end from the photos.
#[test]
fn clip_scores_match_torchmetrics() {
    let r = reference("clip.safetensors");
    let want = &r["scores"];
    let (n_img, n_txt) = (want.shape[0], want.shape[1]);
    let p = processor();
    for (backend, device) in devices() {
        let model = load(&device);
        let texts: Vec<Vec<f32>> = prompts().iter().enumerate().map(|(j, s)| f32s(model.text_embeds(&ids(&r, j, s)).unwrap())).collect();
        let photos = photos();
        let (mut worst_ref, mut worst_e2e) = (0f64, 0f64);
        for i in 0..n_img {
            let from_ref = f32s(model.image_embeds(pixel_values(&r, i, &device)).unwrap());
            let from_png = f32s(model.image_embeds(p.pixel_values(&photos[i..=i], &device).unwrap()).unwrap());
            for (j, text) in texts.iter().enumerate() {
                let w = want.values[i * n_txt + j];
                worst_ref = worst_ref.max((clip_score(&from_ref, text).unwrap() - w).abs());
                worst_e2e = worst_e2e.max((clip_score(&from_png, text).unwrap() - w).abs());
            }
        }
        eprintln!("{backend} CLIP scores ({n_img}×{n_txt}, {} clamped to 0): max error {worst_ref:.2e} from transformers' pixel values, {worst_e2e:.2e} from the photos", want.values.iter().filter(|&&s| s == 0.0).count());
        assert!(worst_ref <= 0.05 && worst_e2e <= 0.05, "{backend}: score errors {worst_ref}, {worst_e2e}");
    }
}

fn f32s(t: Tensor<2>) -> Vec<f32> {
    host(t).into_iter().map(|v| v as f32).collect()
}

#[test]
fn bad_configs_are_clear_errors() {
    let error = |edit: &dyn Fn(&mut serde_json::Value)| {
        let mut v: serde_json::Value = serde_json::from_str(&read("config.json")).unwrap();
        edit(&mut v);
        let e = ClipModelConfig::from_json(&v.to_string(), "tiny-clip/config.json").unwrap_err().to_string();
        assert!(e.starts_with("tiny-clip/config.json: "), "{e}");
        e
    };
    let e = error(&|v| drop(v.as_object_mut().unwrap().remove("vision_config")));
    assert!(e.contains("missing field `vision_config`"), "{e}");
    for (field, value, says) in [
        ("/vision_config/num_attention_heads", serde_json::json!(5), "vision_config: hidden_size 32 is not a positive multiple of num_attention_heads 5"),
        ("/text_config/hidden_act", "relu".into(), "text_config: unsupported hidden_act `relu`"),
        ("/vision_config/patch_size", 64.into(), "patch_size 64 does not fit image_size 32"),
        ("/vision_config/image_size", "big".into(), "invalid type"),
    ] {
        let e = error(&|v| *v.pointer_mut(field).unwrap() = value.clone());
        assert!(e.contains(says), "{e}");
    }
    // a config that does not fit the weights: the shape error names the tensor
    let mut c = config();
    c.projection_dim = 8;
    let e = load_error(&tiny_clip().join("model.safetensors"), &c);
    assert!(e.contains("`text_projection.weight` has shape [16, 8], expected [8, 8]"), "{e}");
}

#[test]
fn a_missing_tensor_and_bad_inputs_are_clear_errors() {
    let bytes = std::fs::read(tiny_clip().join("model.safetensors")).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let kept: Vec<(String, TensorView)> = st.tensors().into_iter().filter(|(k, _)| k != "vision_model.post_layernorm.bias").collect();
    let path = std::env::temp_dir().join(format!("edict-clip-missing-{}.safetensors", std::process::id()));
    safetensors::serialize_to_file(kept, None, &path).unwrap();
    let e = load_error(&path, &config());
    let _ = std::fs::remove_file(&path);
    assert!(e.ends_with("missing weight `vision_model.post_layernorm.bias`"), "{e}");

    let device = Device::flex();
    let model = load(&device);
    let wrong = Tensor::<4>::zeros([1, 3, 32, 24], &device);
    let e = model.image_embeds(wrong).unwrap_err().to_string();
    assert_eq!(e, "the CLIP vision tower takes pixel values [n, 3, 32, 32], got [1, 3, 32, 24]");
    assert!(model.text_embeds(&[]).is_err() && model.text_embeds(&[49406, 60000]).is_err());
    // without the centre crop, images of different shapes cannot be one batch
    let p = ClipImageProcessor { center_crop: None, ..processor() };
    let e = p.pixel_values(&photos()[..2], &device).unwrap_err().to_string();
    assert!(e.contains("different sizes"), "{e}");
    assert!(processor().preprocess(&RgbImage::new(0, 4)).is_err());
    let e = ClipImageProcessor::default().preprocess(&RgbImage::new(1, 300_000)).unwrap_err().to_string();
    assert_eq!(e, "a 1×300000 image would be resized to 224×67200000, more than 64 Mpixel");
}
