//! SDXL on the tiny SDXL-shaped fixture (tests/fixtures/tiny-sdxl, made by
//! tests/reference/make_sdxl.py: two text encoders, the second projected and padded with "!",
//! the `text_time` UNet with per-block transformer depths, the VAE at scaling 0.13025 with
//! `force_upcast`, fp16 files only) against transformers/diffusers' `StableDiffusionXLPipeline`
//! and a float64 run of the authors' EDICT with SDXL conditioning.

use burn::tensor::{DType, Device, Tensor};
use edict_pipeline::editor::{Editor, Latent, Quiet};
use edict_pipeline::prompt_edit::{EditSpec, P2p};
use edict_pipeline::samplers::{hi, relative_error};
use edict_pipeline::settings::{Method, Settings};
use edict_sd::checkpoint::files::ModelFiles;
use edict_sd::config::{Precision, SdConfigs};
use edict_sd::device::backend::Backend;
use edict_sd::model::StableDiffusion;
use edict_sd::models::unet_2d::{Cond, TextTime};

use crate::common::*;

const PROMPTS: [&str; 3] = ["", "a photo of a cat", "a photo of a dog"];

fn tiny_sdxl() -> std::path::PathBuf {
    fixtures().join("tiny-sdxl")
}

fn load(device: &Device, precision: Precision) -> StableDiffusion {
    let files = ModelFiles::from_folder(&tiny_sdxl(), precision).expect("fixture folder");
    StableDiffusion::load(files, device, precision).expect("fixture model loads")
}

fn ids(r: &Ref) -> Vec<u32> {
    r.values.iter().map(|&v| v as u32).collect()
}

fn check(what: &str, ours: &[f64], want: &[f64], bound: f64) {
    let err = max_abs_diff(ours, want);
    eprintln!("{what}: max abs error {err:e}");
    assert!(err <= bound, "{what}: max abs error {err:e}");
}

#[test]
fn configs_and_tokenizers_are_sdxls() {
    let sd = load(&Device::flex(), Precision::F16);
    let c = &sd.configs;
    assert!(c.is_sdxl() && c.force_zeros_for_empty_prompt);
    assert_eq!(c.unet.text_time().map(|d| (d.pooled, d.time)), Some((20, 8)));
    assert_eq!(c.vae.scaling_factor, 0.13025);
    assert_eq!(sd.tokenizer.pad_id(), 49407);
    assert_eq!(sd.tokenizer_2.as_ref().unwrap().pad_id(), 0, "tokenizer_2 pads with `!`");
    assert!(sd.unused_keys.is_empty(), "{:?}", sd.unused_keys);
    // force_upcast: the VAE runs in f32 while the rest runs in f16
    assert_eq!(c.vae_precision(Precision::F16), Precision::F32);
    assert_eq!(sd.vae.quant_conv.weight.val().dtype(), DType::F32);
    assert_eq!(sd.unet.conv_in.weight.val().dtype(), DType::F16);
}

/// Each network and the pipeline's conditioning against transformers and diffusers.
#[test]
fn networks_and_conditioning_match_diffusers() {
    let r = reference("sdxl_networks.safetensors");
    for (backend, device) in devices() {
        let sd = load(&device, Precision::F32);
        let tok_2 = sd.tokenizer_2.as_ref().unwrap();
        let te_2 = sd.text_encoder_2.as_ref().unwrap();
        for (i, prompt) in PROMPTS.into_iter().enumerate() {
            let (ids1, ids2) = (ids(&r[&format!("ids1_{i}")]), ids(&r[&format!("ids2_{i}")]));
            assert_eq!(sd.tokenizer.encode(prompt).unwrap().ids, ids1, "{prompt:?}: tokenizer");
            assert_eq!(tok_2.encode(prompt).unwrap().ids, ids2, "{prompt:?}: tokenizer_2");
            let (pen1, none) = sd.text_encoder.forward_penultimate(&ids1).unwrap();
            assert!(none.is_none());
            check(&format!("{backend} te1 penultimate {i}"), &host(pen1), &r[&format!("te1_penultimate_{i}")].values, 1e-4);
            check(&format!("{backend} te1 last {i}"), &host(sd.text_encoder.forward(&ids1).unwrap()), &r[&format!("te1_last_{i}")].values, 1e-4);
            let (pen2, pooled) = te_2.forward_penultimate(&ids2).unwrap();
            check(&format!("{backend} te2 penultimate {i}"), &host(pen2), &r[&format!("te2_penultimate_{i}")].values, 1e-4);
            check(&format!("{backend} te2 pooled {i}"), &host(pooled.unwrap()), &r[&format!("te2_pooled_{i}")].values, 1e-4);
        }
        // encode_prompt: the prompt, the empty negative (zeros), a given negative
        let encode = |p: &str, negative: bool| {
            let (e, _) = sd.encode_prompt(p, negative).unwrap();
            (host(e.context), host(e.pooled.unwrap()))
        };
        let cases = [
            ("a photo of a cat", false, "prompt_embeds", "pooled_prompt_embeds"),
            ("", true, "negative_prompt_embeds", "negative_pooled_prompt_embeds"),
            ("a photo of a dog", true, "neg2_prompt_embeds", "neg2_pooled_prompt_embeds"),
        ];
        for (prompt, negative, embeds, pooled) in cases {
            let (e, p) = encode(prompt, negative);
            check(&format!("{backend} encode_prompt {embeds}"), &e, &r[embeds].values, 1e-4);
            check(&format!("{backend} encode_prompt {pooled}"), &p, &r[pooled].values, 1e-4);
        }
        assert!(encode("", true).0.iter().all(|&v| v == 0.0), "force_zeros: an empty negative is zeros");
        assert!(encode("", false).0.iter().any(|&v| v != 0.0), "an empty prompt that is not the negative is encoded");
        let time_ids = StableDiffusion::time_ids(64, 48);
        assert_eq!(time_ids.to_vec(), r["add_time_ids_64x48"].values, "add_time_ids (height, width order)");

        let (s, c) = (&r["sample"].shape, &r["encoder_hidden_states"].shape);
        let ctx: Tensor<3> = upload(&r["encoder_hidden_states"].values, [c[0], c[1], c[2]], &device);
        let pooled: Tensor<2> = upload(&r["text_embeds"].values, [2, r["text_embeds"].shape[1]], &device);
        for t in [981, 1] {
            let x = upload(&r["sample"].values, [s[0], s[1], s[2], s[3]], &device);
            let cond = Cond { context: &ctx, text_time: Some(TextTime { pooled: &pooled, time_ids }) };
            let want = &r[&format!("unet_out_t{t}")].values;
            check(&format!("{backend} sdxl unet t={t}"), &host(sd.unet.forward(x, t as f64, cond)), want, 1e-4 * max_abs(want));
        }
        let image = &r["image"];
        let (mean, _) = sd.vae.encode(upload(&image.values, [1, 3, 64, 64], &device));
        check(&format!("{backend} sdxl vae posterior mean"), &host(mean.clone()), &r["posterior_mean"].values, 1e-4);
        check(&format!("{backend} sdxl vae decode"), &host(sd.vae.decode(mean)), &r["decoded"].values, 1e-3);
    }
}

/// Invert and edit with SDXL conditioning (zeros for the empty negative, pooled embeddings, the
/// image's size) against the float64 reference; the round trip is bit-exact, and a
/// prompt-to-prompt edit back to the source prompt (three rows per UNet call) returns the latent
/// bit for bit too.
#[test]
fn edict_matches_the_float64_reference() {
    let r = reference("sdxl_edict.safetensors");
    let image = &reference("sdxl_networks.safetensors")["image"];
    let (src, tgt) = ("a photo of a cat", "a photo of a dog");
    for (backend, device) in devices() {
        let mut ed = Editor::new(load(&device, Precision::F32), device.clone());
        let pixels = image.values.iter().map(|&v| v as f32).collect();
        let z: Latent = pollster::block_on(ed.encode(pixels, 64, 64, None)).unwrap();
        assert!(relative_error(&z.values, &r["latent"].values) < 1e-5);
        let s = Settings { steps: 10, strength: 0.8, ..Settings::default() };
        let inv = pollster::block_on(ed.invert(&z, src, &s, &mut Quiet)).unwrap();
        for (name, ours) in [("inv_x", &inv.pair.x), ("inv_y", &inv.pair.y)] {
            let err = relative_error(&hi(ours), &r[name].values);
            eprintln!("{backend} sdxl {name}: relative error vs float64 reference {err:e}");
            assert!(err < 5e-3, "{backend} {name}: {err:e}");
        }
        let edit = pollster::block_on(ed.denoise(&inv, tgt, "edit", &mut Quiet)).unwrap();
        let err = relative_error(&edit.x_f64(), &r["edit_x"].values);
        eprintln!("{backend} sdxl edit_x: relative error vs float64 reference {err:e}");
        assert!(err < 5e-3, "{backend} edit_x: {err:e}");
        let scale = ed.model.configs.vae.scaling_factor;
        let unscaled: Vec<f64> = edit.x_f64().iter().map(|v| v / scale).collect();
        let decoded = host(ed.model.vae.decode(upload(&unscaled, inv.latent.shape, &device)));
        let p = psnr(&decoded, &r["edit_image"].values);
        eprintln!("{backend} sdxl edited image vs reference: PSNR {p:.1} dB");
        assert!(p >= 35.0, "{backend}: edited image PSNR {p:.1} dB");
        let rec = pollster::block_on(ed.reconstruct(&z, src, &s, &mut Quiet)).unwrap();
        assert!(rec.latent.values == z.values, "{backend}: round trip {:e}", rec.latent_rel_err);
        if backend == Backend::Cpu {
            let back = EditSpec { p2p: Some(P2p::default()), ..EditSpec::to(src) };
            let pair = pollster::block_on(ed.edit(&inv, &back, "edit", &mut Quiet)).unwrap().remove(0);
            assert!(pair.x_f64() == z.values, "P2P back to the source prompt: {:e}", relative_error(&pair.x_f64(), &z.values));
            // two targets in one batch give each target's single-target result
            let both = EditSpec { targets: vec![tgt.into(), "a photo of a fox".into()], p2p: Some(P2p::default()), ..EditSpec::default() };
            let pairs = pollster::block_on(ed.edit(&inv, &both, "edit", &mut Quiet)).unwrap();
            for (t, pair) in both.targets.iter().zip(&pairs) {
                let one = EditSpec { targets: vec![t.clone()], ..both.clone() };
                let alone = pollster::block_on(ed.edit(&inv, &one, "edit", &mut Quiet)).unwrap().remove(0);
                assert!(alone.x_f64() == pair.x_f64(), "{t}: batched and alone differ");
            }
            for method in [Method::Bdia, Method::Belm] {
                let rec = pollster::block_on(ed.reconstruct(&z, src, &Settings { method, ..s.clone() }, &mut Quiet)).unwrap();
                assert!(rec.latent.values == z.values, "{method}: round trip {:e}", rec.latent_rel_err);
            }
        }
    }
}

/// f16 networks with the VAE upcast (`force_upcast`): the latent is the f32 VAE's bit for bit,
/// the round trip exact; a VAE whose config says it is f16-safe runs in f16.
#[test]
fn f16_runs_the_vae_upcast_and_round_trips() {
    let device = Device::flex();
    let image = &reference("sdxl_networks.safetensors")["image"];
    let pixels: Vec<f32> = image.values.iter().map(|&v| v as f32).collect();
    let mut f32_ed = Editor::new(load(&device, Precision::F32), device.clone());
    let z32 = pollster::block_on(f32_ed.encode(pixels.clone(), 64, 64, None)).unwrap();
    let mut ed = Editor::new(load(&device, Precision::F16), device.clone());
    let z = pollster::block_on(ed.encode(pixels.clone(), 64, 64, None)).unwrap();
    assert!(z.values == z32.values, "the upcast VAE is the f32 VAE");
    let s = Settings { steps: 6, strength: 0.8, ..Settings::default() };
    let rec = pollster::block_on(ed.reconstruct(&z, "a photo of a cat", &s, &mut Quiet)).unwrap();
    assert!(rec.latent.values == z.values, "f16 round trip {:e}", rec.latent_rel_err);

    let dir = std::env::temp_dir().join(format!("edict-sdxl-fp16-vae-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    copy_dir(&tiny_sdxl(), &dir);
    let config = dir.join("vae/config.json");
    let text = std::fs::read_to_string(&config).unwrap().replace("\"force_upcast\": true", "\"force_upcast\": false");
    std::fs::write(&config, text).unwrap();
    let files = ModelFiles::from_folder(&dir, Precision::F16).unwrap();
    let sd = StableDiffusion::load(files, &device, Precision::F16).unwrap();
    assert_eq!(sd.vae.quant_conv.weight.val().dtype(), DType::F16);
    std::fs::remove_dir_all(&dir).unwrap();
}

/// SGM's single file (written by the fixture script, checked there with diffusers' single-file
/// converters) equals the folder bit for bit; without `--config` its keys say SDXL.
#[test]
fn single_file_checkpoint_equals_the_folder() {
    let device = Device::flex();
    let path = fixtures().join("tiny-sdxl.safetensors");
    let files = ModelFiles::from_single_file(&path, Some(&tiny_sdxl())).unwrap();
    let single = StableDiffusion::load(files, &device, Precision::F32).unwrap();
    assert!(single.unused_keys.is_empty(), "{:?}", single.unused_keys);
    let folder = load(&device, Precision::F32);
    assert_eq!(single.fingerprint, folder.fingerprint);
    for p in PROMPTS {
        let (a, b) = (single.encode_prompt(p, false).unwrap().0, folder.encode_prompt(p, false).unwrap().0);
        assert_eq!(host(a.context), host(b.context), "{p:?}");
        assert_eq!(host(a.pooled.unwrap()), host(b.pooled.unwrap()), "{p:?}");
    }
    let r = reference("sdxl_networks.safetensors");
    let (s, c) = (&r["sample"].shape, &r["encoder_hidden_states"].shape);
    let run = |sd: &StableDiffusion| {
        let x = upload(&r["sample"].values, [s[0], s[1], s[2], s[3]], &device);
        let ctx: Tensor<3> = upload(&r["encoder_hidden_states"].values, [c[0], c[1], c[2]], &device);
        let pooled: Tensor<2> = upload(&r["text_embeds"].values, [2, r["text_embeds"].shape[1]], &device);
        let cond = Cond { context: &ctx, text_time: Some(TextTime { pooled: &pooled, time_ids: StableDiffusion::time_ids(64, 48) }) };
        host(sd.unet.forward(x, 981.0, cond))
    };
    assert_eq!(run(&single), run(&folder));
    let image = upload(&r["image"].values, [1, 3, 64, 64], &device);
    assert_eq!(host(single.vae.encode(image.clone()).0), host(folder.vae.encode(image).0));

    let files = ModelFiles::from_single_file(&path, None).unwrap();
    assert_eq!(files.configs, SdConfigs::sdxl());
    assert!(files.tokenizer_2.is_none(), "the second tokenizer is the first padding with `!`");
}

/// A refiner folder (`text_encoder_2/` only) is refused by name before any weight is read.
#[test]
fn refiner_folder_is_refused() {
    let dir = std::env::temp_dir().join(format!("edict-sdxl-refiner-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    copy_dir(&tiny_sdxl(), &dir);
    std::fs::remove_dir_all(dir.join("text_encoder")).unwrap();
    let e = ModelFiles::from_folder(&dir, Precision::F32).err().expect("refused").to_string();
    assert!(e.contains("SDXL refiner") && e.contains("not supported"), "{e}");
    std::fs::remove_dir_all(&dir).unwrap();
}
