//! LoRA files (tests/fixtures/lora, made by tests/reference/make_lora.py) merged into the tiny
//! SD 1.x and SDXL fixtures, against diffusers' `load_lora_weights` + `fuse_lora` on the same
//! files: kohya-ss (SDXL with SGM names) and diffusers/PEFT formats.

use std::rc::Rc;

use burn::tensor::{Device, Tensor};
use edict_pipeline::editor::{Editor, Quiet};
use edict_pipeline::io::latents;
use edict_pipeline::samplers::hi;
use edict_pipeline::settings::Settings;
use edict_sd::checkpoint::files::{ModelFiles, WeightSource};
use edict_sd::checkpoint::lora::Lora;
use edict_sd::config::Precision;
use edict_sd::model::{ModelAssembly, StableDiffusion};
use edict_sd::models::unet_2d::{Cond, TextTime};

use crate::common::*;

/// (case in lora.json, model fixture, LoRA file, scale)
const CASES: [(&str, &str, &str, f32); 4] = [
    ("sd-kohya", "tiny-sd", "sd-kohya.safetensors", 0.7),
    ("sd-peft", "tiny-sd", "sd-peft.safetensors", 0.7),
    ("sdxl-kohya", "tiny-sdxl", "sdxl-kohya.safetensors", 1.0),
    ("sdxl-peft", "tiny-sdxl", "sdxl-peft.safetensors", 1.0),
];

fn lora(file: &str, scale: f32) -> Rc<Lora> {
    Rc::new(Lora::open(&fixtures().join("lora").join(file), scale).unwrap_or_else(|e| panic!("{file}: {e}")))
}

fn files(model: &str, loras: Vec<Rc<Lora>>) -> ModelFiles {
    let path = fixtures().join(model);
    let mut files = if model.ends_with(".safetensors") {
        let config = fixtures().join(model.trim_end_matches(".safetensors"));
        ModelFiles::from_single_file(&path, Some(&config)).unwrap()
    } else {
        ModelFiles::from_folder(&path, Precision::F32).unwrap()
    };
    files.loras = loras;
    files
}

fn load(model: &str, loras: Vec<Rc<Lora>>) -> Result<StableDiffusion, edict_sd::SdError> {
    StableDiffusion::load(files(model, loras), &Device::flex(), Precision::F32)
}

/// Exactly the weights diffusers changed are merged, and those stored in the reference (one of
/// each kind of layer) equal diffusers' fused values.
#[test]
fn merged_weights_match_diffusers_fuse_lora() {
    let r = reference("lora.safetensors");
    let meta: serde_json::Value = serde_json::from_slice(&std::fs::read(fixtures().join("reference/lora.json")).unwrap()).unwrap();
    for (case, model, file, scale) in CASES {
        let spec = &meta["cases"][case];
        let ref_case = spec["reference_case"].as_str().unwrap();
        let ModelFiles { configs, tokenizer, tokenizer_2, weights: WeightSource::Diffusers(parts), .. } = files(model, vec![]) else {
            panic!("a folder")
        };
        let mut assembly = ModelAssembly::new(configs, tokenizer, tokenizer_2, &Device::flex(), Precision::F32).unwrap();
        assembly.set_loras(vec![lora(file, scale)]).unwrap();
        for (part, weights) in parts {
            let folder = part.folder();
            let vb = assembly.weights(part, weights).unwrap();
            let changed: Vec<&str> = spec["networks"][folder]["changed_keys"].as_array().map_or(vec![], |a| a.iter().map(|k| k.as_str().unwrap()).collect());
            assert_eq!(vb.merges().keys(), changed, "{case} {folder}: the merged weights are not the ones diffusers changes");
            let prefix = format!("{ref_case}/{folder}/");
            let mut checked = 0;
            for (key, want) in r.iter().filter_map(|(k, v)| Some((k.strip_prefix(&prefix)?, v))) {
                let ours: Vec<f64> = vb.host_f32(key, &want.shape).unwrap().into_iter().map(f64::from).collect();
                let err = max_abs_diff(&ours, &want.values) / max_abs(&want.values);
                assert!(err < 1e-6, "{case} {key}: relative error {err:e}");
                checked += 1;
            }
            assert_eq!(checked > 0, !changed.is_empty(), "{case} {folder}: reference weights checked");
        }
    }
}

/// The SDXL UNet's output at the reference inputs (`sdxl_networks.safetensors`).
fn sdxl_unet(sd: &StableDiffusion) -> Vec<f64> {
    let (r, device) = (reference("sdxl_networks.safetensors"), Device::flex());
    let (s, c) = (&r["sample"].shape, &r["encoder_hidden_states"].shape);
    let x = upload(&r["sample"].values, [s[0], s[1], s[2], s[3]], &device);
    let ctx: Tensor<3> = upload(&r["encoder_hidden_states"].values, [c[0], c[1], c[2]], &device);
    let pooled: Tensor<2> = upload(&r["text_embeds"].values, [2, r["text_embeds"].shape[1]], &device);
    let cond = Cond { context: &ctx, text_time: Some(TextTime { pooled: &pooled, time_ids: StableDiffusion::time_ids(64, 48) }) };
    host(sd.unet.forward(x, 981.0, cond))
}

/// SGM's single file with the SDXL LoRA equals the folder with it, bit for bit: its UNet keys
/// map through the single-file mapping and its second text encoder's q, k and v land in the
/// rows of OpenCLIP's fused `in_proj`.
#[test]
fn single_file_with_lora_equals_the_folder_with_it() {
    let with = || vec![lora("sdxl-kohya.safetensors", 1.0)];
    let (folder, single) = (load("tiny-sdxl", with()).unwrap(), load("tiny-sdxl.safetensors", with()).unwrap());
    let plain = load("tiny-sdxl", vec![]).unwrap();
    let prompt = |sd: &StableDiffusion| {
        let e = sd.encode_prompt("a photo of a cat", false).unwrap().0;
        (host(e.context), host(e.pooled.unwrap()))
    };
    assert_eq!(prompt(&single), prompt(&folder));
    assert_ne!(prompt(&folder).1, prompt(&plain).1, "the second text encoder's LoRA changed nothing");
    assert_eq!(sdxl_unet(&single), sdxl_unet(&folder));
    assert_ne!(sdxl_unet(&folder), sdxl_unet(&plain));
    assert_eq!(single.fingerprint, folder.fingerprint);
}

/// A LoRA changes the edit and keeps the round trip exact; the fingerprint names the LoRA, its
/// scale and the order, so a latents file inverted with one refuses a model without it.
#[test]
fn edits_change_round_trips_stay_exact_and_fingerprints_tell() {
    let device = Device::flex();
    let editor = |loras| Editor::new(load("tiny-sd", loras).unwrap(), device.clone());
    let (mut plain, mut styled) = (editor(vec![]), editor(vec![lora("sd-kohya.safetensors", 0.7)]));
    let img = &reference("vae.safetensors")["image"];
    let pixels: Vec<f32> = img.values.iter().map(|&v| v as f32).collect();
    let s = Settings { steps: 6, strength: 0.8, ..Settings::default() };
    let mut edits = Vec::new();
    for ed in [&mut plain, &mut styled] {
        let z = pollster::block_on(ed.encode(pixels.clone(), 64, 64, None)).unwrap();
        let rec = pollster::block_on(ed.reconstruct(&z, "a photo of a cat", &s, &mut Quiet)).unwrap();
        assert!(rec.latent.values == z.values, "round trip {:e}", rec.latent_rel_err);
        let inv = pollster::block_on(ed.invert(&z, "a photo of a cat", &s, &mut Quiet)).unwrap();
        edits.push((pollster::block_on(ed.denoise(&inv, "a photo of a dog", "edit", &mut Quiet)).unwrap().x, inv));
    }
    assert_ne!(hi(&edits[0].0), hi(&edits[1].0), "the LoRA did not change the edit");

    let fp = |loras| load("tiny-sd", loras).unwrap().fingerprint;
    let (kohya, peft) = (|s| lora("sd-kohya.safetensors", s), |s| lora("sd-peft.safetensors", s));
    let all = [
        fp(vec![]),
        fp(vec![kohya(0.7)]),
        fp(vec![kohya(0.6)]),
        fp(vec![peft(0.7)]),
        fp(vec![kohya(0.7), peft(0.7)]),
        fp(vec![peft(0.7), kohya(0.7)]),
    ];
    for (i, a) in all.iter().enumerate() {
        assert!(all[i + 1..].iter().all(|b| a != b), "fingerprints must differ: {all:?}");
    }
    assert_eq!(all[1], styled.model.fingerprint);
    let origin = latents::Origin::of("tiny-sd + LoRA sd-kohya.safetensors:0.7", &styled.model);
    let e = latents::check_fits(&edits[1].1, &origin, &plain.model, "tiny-sd", "n.safetensors").unwrap_err().to_string();
    assert!(e.contains("fingerprint") && e.contains("LoRA sd-kohya") && !e.contains('\n'), "{e}");
}

/// A safetensors file of f32 tensors, with PEFT's `lora_adapter_metadata` when given.
fn safetensors(tensors: &[(String, Vec<usize>, Vec<f32>)], adapter: Option<&str>) -> Vec<u8> {
    let bytes: Vec<Vec<u8>> = tensors.iter().map(|(_, _, v)| v.iter().flat_map(|x| x.to_le_bytes()).collect()).collect();
    let views: Vec<(&str, safetensors::tensor::TensorView)> = tensors
        .iter()
        .zip(&bytes)
        .map(|((k, shape, _), b)| (k.as_str(), safetensors::tensor::TensorView::new(safetensors::Dtype::F32, shape.clone(), b).unwrap()))
        .collect();
    let metadata = adapter.map(|a| std::collections::HashMap::from([("lora_adapter_metadata".to_string(), a.to_string())]));
    safetensors::serialize(views, metadata).unwrap()
}

/// Bad LoRA files and LoRAs for another family are refused in one line naming the problem,
/// before any network loads.
#[test]
fn bad_loras_are_one_clear_line() {
    let one_line = |e: String, want: &[&str]| {
        assert!(!e.contains('\n') && want.iter().all(|w| e.contains(w)), "{e} (want {want:?})");
    };
    // another family: SD 1.x's LoRA on SDXL and SD 2.x (widths), SDXL's on SD 1.x (a second text encoder)
    let e = load("tiny-sdxl", vec![lora("sd-kohya.safetensors", 1.0)]).err().unwrap().to_string();
    one_line(e, &["sd-kohya.safetensors", "take 32 features", "another Stable Diffusion family"]);
    let e = load("tiny-sd2", vec![lora("sd-peft.safetensors", 1.0)]).err().unwrap().to_string();
    one_line(e, &["sd-peft.safetensors", "this model's take 48"]);
    let e = load("tiny-sd", vec![lora("sdxl-kohya.safetensors", 1.0)]).err().unwrap().to_string();
    one_line(e, &["text_encoder_2 layers", "does not have"]);

    let good = std::fs::read(fixtures().join("lora/sd-peft.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&good).unwrap();
    let mut tensors: Vec<(String, Vec<usize>, Vec<f32>)> = st
        .tensors()
        .into_iter()
        .map(|(k, v)| (k, v.shape().to_vec(), v.data().chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect()))
        .collect();
    tensors.sort_by(|a, b| a.0.cmp(&b.0));
    let q = "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q";
    let with = |extra: &[(&str, Vec<usize>)]| {
        let mut t = tensors.clone();
        t.extend(extra.iter().map(|(k, s)| (k.to_string(), s.clone(), vec![0.01; s.iter().product()])));
        safetensors(&t, None)
    };
    let read = |bytes: &[u8]| Lora::from_bytes("bad.safetensors", bytes, 1.0).map(Rc::new);
    let loaded = |bytes: &[u8]| read(bytes).and_then(|l| load("tiny-sd", vec![l])).err().expect("refused").to_string();
    let cases: Vec<(Vec<u8>, Vec<&str>)> = vec![
        (good[..good.len() / 2].to_vec(), vec!["bad.safetensors", "not a valid safetensors file"]),
        (b"not a safetensors file at all".to_vec(), vec!["not a valid safetensors file"]),
        (with(&[("unet.down_blocks.0.nowhere.lora_A.weight", vec![4, 16]), ("unet.down_blocks.0.nowhere.lora_B.weight", vec![16, 4])]), vec!["`unet.down_blocks.0.nowhere`: matches no layer of the unet"]),
        (with(&[("lora_unet_mid_block_attentions_0_to_nothing.lora_down.weight", vec![4, 32]), ("lora_unet_mid_block_attentions_0_to_nothing.lora_up.weight", vec![32, 4])]), vec!["`lora_unet_mid_block_attentions_0_to_nothing`: matches no layer"]),
        (with(&[("unet.a.lora_A.weight", vec![4, 16])]), vec!["`unet.a` needs both its down (A) and up (B) weights"]),
        (with(&[("unet.a.dora_scale", vec![16])]), vec!["DoRA weights are not supported"]),
        (with(&[("model.diffusion_model.out.2.weight", vec![4])]), vec!["is not a LoRA weight"]),
        (with(&[("vae.encoder.conv_in.lora_A.weight", vec![4, 3]), ("vae.encoder.conv_in.lora_B.weight", vec![8, 4])]), vec!["`vae.encoder.conv_in` names no network"]),
        (with(&[("unet.a.lora_A.weight", vec![4, 16]), ("unet.a.lora_B.weight", vec![16, 3])]), vec!["not a rank-r pair"]),
        (with(&[("unet.a.lora_A.weight", vec![4, 16]), ("unet.a.lora_B.weight", vec![16, 4]), ("unet.a.alpha", vec![2])]), vec!["expected a finite scalar"]),
    ];
    for (bytes, want) in cases {
        one_line(loaded(&bytes), &want);
    }
    // the right names with the wrong shape: the layer's and the LoRA's shapes are named
    let mut t = tensors.clone();
    for (_, shape, v) in t.iter_mut().filter(|(k, _, _)| k.starts_with(&format!("{q}.lora_A"))) {
        *shape = vec![4, 8];
        v.truncate(32);
    }
    one_line(loaded(&safetensors(&t, None)), &[q, "the model's `down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q.weight` is [16, 16]"]);
    // PEFT metadata PEFT would not accept
    for (adapter, want) in [(r#"{"unet.alpha_pattern": {"(": 2}}"#, "alpha_pattern `(` is not a regular expression"), (r#"{"unet.lora_alpha": "high"}"#, "`lora_alpha` is not a finite number"), ("{", "bad lora_adapter_metadata")] {
        one_line(loaded(&safetensors(&tensors, Some(adapter))), &[want]);
    }
    // a pickle by name, and a scale that is not a number
    one_line(Lora::open(std::path::Path::new("style.ckpt"), 1.0).err().unwrap().to_string(), &["style.ckpt"]);
    one_line(Lora::from_bytes("x", &good, f32::NAN).err().unwrap().to_string(), &["not a finite number"]);
}
