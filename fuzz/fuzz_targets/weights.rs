//! The safetensors / single-file weight loading path: bytes → `WeightFile` (header and offsets
//! validated) → `VarBuilder` (diffusers keys, or single-file keys through `map_key`) → a small
//! CLIP text encoder built from it. Any `Err` is fine; a panic, an abort or running out of
//! memory is a bug.
#![no_main]

use std::rc::Rc;

use burn::tensor::{DType, Device};
use edict_sd::models::clip_text::{ClipConfig, ClipTextModel};
use edict_sd::checkpoint::single_file::{Layout, Part, is_single_file, map_key, map_legacy_vae_key};
use edict_sd::checkpoint::weights::{Bytes, VarBuilder, WeightFile};
use libfuzzer_sys::fuzz_target;
use safetensors::SafeTensors;

/// A text encoder small enough to build on every input: hidden 8, one layer, 16 tokens,
/// 77 positions (the seeds in `corpus/weights` hold exactly these tensors).
fn tiny_clip() -> ClipConfig {
    ClipConfig {
        vocab_size: 16,
        hidden_size: 8,
        intermediate_size: 16,
        num_hidden_layers: 1,
        num_attention_heads: 2,
        max_position_embeddings: 77,
        ..ClipConfig::default()
    }
}

const LAYOUTS: [Layout; 3] = [
    // SD v1.x
    Layout { unet_layers_per_block: 2, vae_blocks: 4, text_layers: 12, text_2_layers: 0 },
    // the tiny CLIP above (one layer), also as SDXL's second encoder
    Layout { unet_layers_per_block: 1, vae_blocks: 2, text_layers: 1, text_2_layers: 1 },
    // degenerate: no layers, no blocks
    Layout { unet_layers_per_block: 0, vae_blocks: 0, text_layers: 0, text_2_layers: 0 },
];

fn build(vb: &VarBuilder) {
    let Ok(model) = ClipTextModel::load(vb, &tiny_clip()) else {
        return;
    };
    let _ = vb.unused_keys();
    // The weights are whatever the input holds (NaN, inf, …): running must still not panic.
    let out = model.forward(&[0, 1, 15, 7]);
    assert!(out.is_ok(), "forward on valid ids failed: {:?}", out.err());
    assert!(model.forward(&[16]).is_err(), "an id outside the vocabulary was accepted");
    assert!(model.forward(&[]).is_err());
}

fuzz_target!(|data: &[u8]| {
    let Ok(file) = WeightFile::from_bytes("fuzz.safetensors", Bytes::Owned(data.to_vec())) else {
        return;
    };
    // from_bytes accepted the header, so the safetensors crate must too, with the same keys.
    let (_, meta) = SafeTensors::read_metadata(data).expect("WeightFile accepted a bad header");
    let infos = meta.tensors();
    let mut keys: Vec<String> = file.keys().map(str::to_string).collect();
    keys.sort();
    let mut meta_keys: Vec<String> = infos.keys().cloned().collect();
    meta_keys.sort();
    assert_eq!(keys, meta_keys);

    let device = Device::flex();
    let file = Rc::new(file);

    // Every tensor, read at its stored shape, then at that shape without trailing 1s: values
    // or a clean error (unsupported dtype).
    let vb = VarBuilder::from_files([file.clone()], &device, DType::F32);
    for (key, info) in &infos {
        let n: usize = info.shape.iter().product();
        if let Ok(v) = vb.host_f32(key, &info.shape) {
            assert_eq!(v.len(), n, "{key}: wrong number of values");
        }
        let mut trimmed = info.shape.as_slice();
        while trimmed.last() == Some(&1) {
            trimmed = &trimmed[..trimmed.len() - 1];
        }
        if let Ok(v) = vb.host_f32(key, trimmed) {
            assert_eq!(v.len(), n, "{key}: wrong number of values (trimmed shape)");
        }
        // a shape that cannot match is an error, never a panic
        let mut wrong = info.shape.clone();
        wrong.push(2);
        assert!(vb.host_f32(key, &wrong).is_err());
        let _ = map_legacy_vae_key(key);
    }
    assert!(vb.host_f32("no such key", &[1]).is_err());

    // The diffusers layout: keys are already `text_model.*`.
    build(&vb);

    // The single-file layout, as `StableDiffusion::load` builds it.
    if is_single_file(file.keys()) {
        for layout in LAYOUTS {
            for k in &keys {
                let _ = map_key(k, layout);
            }
        }
        let layout = LAYOUTS[0];
        for dtype in [DType::F32, DType::F16] {
            let te = VarBuilder::from_files_mapped([file.clone()], &device, dtype, move |k| {
                map_key(k, layout).and_then(|(part, key)| (part == Part::TextEncoder).then_some(key))
            });
            build(&te);
        }
    } else {
        for k in keys.iter().take(64) {
            let _ = map_key(k, LAYOUTS[0]);
        }
    }
});
