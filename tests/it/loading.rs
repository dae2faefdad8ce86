//! Bad model files: each fails with a clear error that names the file and the problem.


use std::collections::HashMap;
use std::path::Path;

use burn::tensor::Device;
use crate::common::*;
use edict_sd::checkpoint::files::ModelFiles;
use edict_sd::config::Precision;
use edict_sd::model::StableDiffusion;
use safetensors::tensor::Dtype;

fn err(m: &Model) -> String {
    match m.load() {
        Ok(_) => panic!("loading should fail"),
        Err(e) => e.to_string(),
    }
}

const TE: &str = "text_encoder/model.safetensors";
const KEY: &str = "text_model.encoder.layers.1.mlp.fc1.weight";

#[test]
fn missing_key_is_named() {
    let m = Model::copy("missing");
    m.rewrite(TE, |t| t.retain(|(k, ..)| k != KEY));
    let e = err(&m);
    assert!(e.contains(KEY) && e.contains("missing"), "{e}");
    assert!(e.contains("model.safetensors"), "{e}");
}

#[test]
fn wrong_shape_is_named() {
    let m = Model::copy("shape");
    m.rewrite(TE, |t| {
        let e = t.iter_mut().find(|(k, ..)| k == KEY).unwrap();
        e.2 = vec![e.2[1], e.2[0]]; // transposed: same bytes, wrong shape
    });
    let e = err(&m);
    assert!(e.contains(KEY) && e.contains("shape"), "{e}");
}

#[test]
fn integer_weights_are_refused() {
    let m = Model::copy("dtype");
    m.rewrite(TE, |t| {
        let e = t.iter_mut().find(|(k, ..)| k == KEY).unwrap();
        e.1 = Dtype::I32; // 4-byte ints where f32 is expected
    });
    let e = err(&m);
    assert!(e.contains(KEY) && e.contains("dtype"), "{e}");
}

#[test]
fn unexpected_keys_are_listed_not_fatal() {
    let m = Model::copy("extra");
    m.rewrite(TE, |t| t.push(("text_model.surprise".into(), Dtype::F32, vec![1], vec![0; 4])));
    let sd = m.load().expect("extra keys are tolerated");
    assert_eq!(sd.unused_keys, vec!["text_encoder: text_model.surprise".to_string()]);
}

#[test]
fn broken_files_are_clear_errors() {
    let m = Model::copy("broken");
    let path = m.file(TE);
    let good = std::fs::read(&path).unwrap();
    let header_len = u64::from_le_bytes(good[..8].try_into().unwrap()) as usize;
    let mut cases: Vec<(&str, Vec<u8>)> = vec![
        ("truncated", good[..good.len() / 2].to_vec()),
        ("empty", Vec::new()),
        ("random bytes", (0..4096u32).map(|i| (i.wrapping_mul(2654435761) >> 13) as u8).collect()),
    ];
    let mut huge = good.clone();
    huge[..8].copy_from_slice(&(good.len() as u64 * 4).to_le_bytes());
    cases.push(("header length beyond the file", huge));
    // shift one tensor's offsets so two tensors overlap
    let header = String::from_utf8(good[8..8 + header_len].to_vec()).unwrap();
    let mut meta: HashMap<String, serde_json::Value> = serde_json::from_str(&header).unwrap();
    let entry = meta.get_mut(KEY).unwrap();
    let off = entry["data_offsets"].as_array().unwrap().clone();
    let (a, b) = (off[0].as_u64().unwrap(), off[1].as_u64().unwrap());
    entry["data_offsets"] = serde_json::json!([a.saturating_sub(64), b.saturating_sub(64)]);
    let mut h = serde_json::to_string(&meta).unwrap().into_bytes();
    while h.len() < header_len {
        h.push(b' ');
    }
    let mut overlap = (h.len() as u64).to_le_bytes().to_vec();
    overlap.extend(h);
    overlap.extend(&good[8 + header_len..]);
    cases.push(("overlapping offsets", overlap));
    for (what, bytes) in cases {
        std::fs::write(&path, &bytes).unwrap();
        let e = err(&m);
        assert!(e.contains("model.safetensors") && e.contains("safetensors"), "{what}: {e}");
    }
}

#[test]
fn pickles_are_refused_with_how_to_convert() {
    let m = Model::copy("pickle");
    std::fs::remove_file(m.file(TE)).unwrap();
    std::fs::write(m.file("text_encoder/pytorch_model.bin"), b"PK\x03\x04").unwrap();
    std::fs::rename(m.file("text_encoder/pytorch_model.bin"), m.file("text_encoder/model.bin")).unwrap();
    let e = err(&m);
    assert!(e.contains("pickle") && e.contains("safetensors"), "{e}");
    let e = ModelFiles::from_single_file(&m.file("text_encoder/model.bin"), None).err().unwrap().to_string();
    assert!(e.contains("never loaded"), "{e}");
}

#[test]
fn folders_and_configs_are_checked() {
    let m = Model::copy("folder");
    std::fs::remove_dir_all(m.file("unet")).unwrap();
    let e = err(&m);
    assert!(e.contains("`unet/` is missing"), "{e}");

    let m = Model::copy("config");
    std::fs::write(m.file("vae/config.json"), b"{ not json").unwrap();
    let e = err(&m);
    assert!(e.contains("vae/config.json"), "{e}");

    // a config that disagrees with the weights: the first mismatching weight is named
    let m = Model::copy("inconsistent");
    let p = m.file("text_encoder/config.json");
    let c = std::fs::read_to_string(&p).unwrap().replace("\"intermediate_size\": 64", "\"intermediate_size\": 48");
    std::fs::write(&p, c).unwrap();
    let e = err(&m);
    assert!(e.contains("mlp.fc1.weight") && e.contains("shape"), "{e}");

    let m = Model::copy("heads");
    let p = m.file("unet/config.json");
    let c = std::fs::read_to_string(&p).unwrap().replace("\"attention_head_dim\": 2", "\"attention_head_dim\": 3");
    std::fs::write(&p, c).unwrap();
    let e = err(&m);
    assert!(e.contains("heads"), "{e}");

    assert!(ModelFiles::from_folder(Path::new("/no/such/folder"), Precision::F32).is_err());
}

/// Networks that cannot work together are refused in one line before any weight is read.
#[test]
fn mismatched_configurations_are_refused() {
    let edit = |name: &str, file: &str, from: &str, to: &str| {
        let m = Model::copy(name);
        let p = m.file(file);
        let c = std::fs::read_to_string(&p).unwrap();
        assert!(c.contains(from), "{file} has no `{from}`");
        std::fs::write(&p, c.replace(from, to)).unwrap();
        err(&m)
    };
    let e = edit("inpaint", "unet/config.json", "\"in_channels\": 4", "\"in_channels\": 9");
    assert!(e.contains("takes 9 and gives 4 channels") && e.contains("inpainting"), "{e}");
    let e = edit("pix2pix", "unet/config.json", "\"in_channels\": 4", "\"in_channels\": 8");
    assert!(e.contains("instruct-pix2pix"), "{e}");
    let e = edit("cross", "unet/config.json", "\"cross_attention_dim\": 32", "\"cross_attention_dim\": 48");
    assert!(e.contains("48-wide text embeddings, but the text encoder gives 32"), "{e}");
    let e = edit("sample", "scheduler/scheduler_config.json", "\"epsilon\"", "\"sample\"");
    assert!(e.contains("prediction type `sample` is not supported") && e.contains("scheduler_config.json"), "{e}");
    assert!(!e.contains('\n'), "one line: {e}");
}

#[test]
fn single_file_that_is_not_sd_is_refused() {
    let e = ModelFiles::from_single_file(&tiny_sd().join(TE), None)
        .and_then(|f| StableDiffusion::load(f, &Device::flex(), Precision::F32))
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("not an SD single-file checkpoint"), "{e}");
}

/// At SD1.5's 4096 tokens (batch 2 × 8 heads) attention runs in query chunks; the result must
/// equal a float64 computation of the unchunked formula.
#[test]
fn chunked_attention_matches_the_formula_at_4096_tokens() {
    use edict_sd::models::attention::{MAX_SCORE_ELEMENTS, scaled_dot_product};
    let (b, h, n, d) = (2, 8, 4096, 4);
    assert!(b * h * n * n > MAX_SCORE_ELEMENTS, "this shape must need chunking");
    let device = Device::flex();
    let noise = |seed: u64| -> Vec<f64> {
        (0..b * h * n * d)
            .map(|i| (((i as u64 + 1).wrapping_mul(seed).wrapping_mul(0x9E3779B97F4A7C15) >> 40) as f64 / (1u64 << 24) as f64 - 0.5) * 2.0)
            .collect()
    };
    let (q, k, v) = (noise(3), noise(5), noise(7));
    let out = host(scaled_dot_product(
        upload(&q, [b, h, n, d], &device),
        upload(&k, [b, h, n, d], &device),
        upload(&v, [b, h, n, d], &device),
        false,
        false,
        None,
    ));
    // check rows in the first, a middle and the last chunk of one (batch, head)
    let (bi, hi) = (1, 5);
    let base = (bi * h + hi) * n * d;
    for row in [0, 511, 512, 2049, 4095] {
        let want = attention_row(&q, &k, &v, base, row, n, d);
        for (c, (got, want)) in out[base + row * d..][..d].iter().zip(want).enumerate() {
            assert!((got - want).abs() < 1e-5, "row {row} ch {c}: {got} vs {want}");
        }
    }
}

/// One model has one fingerprint in all its forms (f32 folder, fp16 variant, f16 single file);
/// any change to the weights an inversion depends on changes it, a decoder-only change does not.
#[test]
fn fingerprint_names_the_weights_not_their_form() {
    let load = |files: ModelFiles, p: Precision| StableDiffusion::load(files, &Device::flex(), p).unwrap().fingerprint;
    let base = load(ModelFiles::from_folder(&tiny_sd(), Precision::F32).unwrap(), Precision::F32);
    assert_eq!(base.len(), 16);
    assert!(base.chars().all(|c| c.is_ascii_hexdigit()), "{base}");
    assert_eq!(load(ModelFiles::from_folder(&tiny_sd(), Precision::F16).unwrap(), Precision::F16), base);
    let single = ModelFiles::from_single_file(&fixtures().join("tiny-sd.safetensors"), Some(&tiny_sd())).unwrap();
    assert_eq!(load(single, Precision::F32), base);

    let m = Model::copy("fingerprint");
    m.perturb("vae/diffusion_pytorch_model.safetensors", "decoder.conv_out.weight");
    assert_eq!(m.load().unwrap().fingerprint, base, "decoder-only change");
    for (file, key) in [
        ("unet/diffusion_pytorch_model.safetensors", "conv_out.weight"),
        ("text_encoder/model.safetensors", "text_model.final_layer_norm.bias"),
        ("vae/diffusion_pytorch_model.safetensors", "quant_conv.weight"),
    ] {
        let m = Model::copy(&format!("fingerprint-{key}"));
        m.perturb(file, key);
        assert_ne!(m.load().unwrap().fingerprint, base, "{key} changed");
    }
}

/// The parameter counts `footprint` works out from the configs equal the tensors in the tiny
/// SD 1.x, 2.x and XL folders' files, and SD 1.5's published sizes (UNet 859,520,964, VAE
/// 83,653,863, text encoder 123,060,480 with its 37,945,344-value token table).
#[test]
fn footprint_counts_the_weights_from_the_configs() {
    let count = |path: &Path| -> u64 {
        let bytes = std::fs::read(path).unwrap();
        let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
        let floats = st.tensors().into_iter().filter(|(_, t)| matches!(t.dtype(), Dtype::F32 | Dtype::F16));
        floats.map(|(_, t)| t.shape().iter().product::<usize>() as u64).sum()
    };
    for (folder, fp16) in [(tiny_sd(), false), (fixtures().join("tiny-sd2"), true), (fixtures().join("tiny-sdxl"), true)] {
        let files = ModelFiles::from_folder(&folder, Precision::F16).unwrap();
        let c = &files.configs;
        let file = |part: &str, name: &str| {
            let name = if fp16 { name.replace(".safetensors", ".fp16.safetensors") } else { name.to_string() };
            count(&folder.join(part).join(name))
        };
        let text = file("text_encoder", "model.safetensors");
        let unet = file("unet", "diffusion_pytorch_model.safetensors");
        let vae = file("vae", "diffusion_pytorch_model.safetensors");
        let (mut host, device) = c.clip.parameters();
        assert_eq!((host + device, c.unet.parameters(), c.vae.parameters()), (text, unet, vae), "{}", folder.display());
        let mut device_parameters = text - host + unet + vae;
        if let Some(c2) = &c.clip_2 {
            let (host_2, device_2) = c2.parameters();
            assert_eq!(host_2 + device_2 + c2.projection_parameters(), file("text_encoder_2", "model.safetensors"));
            host += host_2;
            device_parameters += device_2 + c2.projection_parameters();
        }
        let f = c.footprint(Precision::F32, 64, 64);
        assert_eq!((f.host_parameters, f.device_parameters), (host, device_parameters));
        assert_eq!(f.weight_bytes, 4 * f.device_parameters);
    }
    let sd15 = edict_sd::config::SdConfigs::sd15();
    assert_eq!(sd15.unet.parameters(), 859_520_964);
    assert_eq!(sd15.vae.parameters(), 83_653_863);
    assert_eq!(sd15.clip.parameters(), (37_945_344, 123_060_480 - 37_945_344));
    // the largest buffer at 512² in f32: the up path's [1280, 2560, 3, 3] conv weight (112 MiB),
    // under WebGPU's default 128 MiB; activations are cut to 64 MiB
    let f = sd15.footprint(Precision::F32, 512, 512);
    assert_eq!(f.largest_buffer_bytes, 1280 * 2560 * 9 * 4);
    assert_eq!((f.device_parameters, f.weight_bytes, f.activation_bytes), (1_028_289_963, 4 * 1_028_289_963, 4 * 256 * 512 * 512 * 4));
    assert_eq!(sd15.footprint(Precision::F16, 512, 512).largest_buffer_bytes, 1280 * 2560 * 9 * 2);
}

/// A folder's weight files received in pieces, as the page reads them (the header, then each
/// tensor to the device as its bytes arrive, matrices kept there only and transposed there), give
/// the model the whole files give: the same fingerprint, every key used, and the same outputs up
/// to rounding, on both backends; a file cut short is an error that names it.
#[test]
fn streamed_weight_files_give_the_whole_files_model() {
    use edict_sd::checkpoint::files::WeightSource;
    use edict_sd::checkpoint::lora::Lora;
    use edict_sd::model::ModelAssembly;
    use edict_sd::models::unet_2d::{Cond, TextTime};
    let close = |what: &str, a: Vec<f64>, b: Vec<f64>| {
        let (err, scale) = (max_abs_diff(&a, &b), max_abs(&b));
        assert!(err <= 1e-5 * scale.max(1.0), "{what}: streamed differs by {err:e} (scale {scale})");
    };
    for (backend, device) in devices() {
        let (sd, xl) = (tiny_sd(), fixtures().join("tiny-sdxl"));
        // and with a LoRA, which the stream merges as tensors arrive (the whole files as they are read)
        for (dir, lora) in [(&sd, None), (&xl, None), (&sd, Some("sd-peft.safetensors")), (&xl, Some("sdxl-kohya.safetensors"))] {
            let p = Precision::F32;
            let loras = || lora.map(|f| std::rc::Rc::new(Lora::open(&fixtures().join("lora").join(f), 0.8).unwrap())).into_iter().collect::<Vec<_>>();
            let whole_files = ModelFiles { loras: loras(), ..ModelFiles::from_folder(dir, p).unwrap() };
            let whole = StableDiffusion::load(whole_files, &device, p).unwrap();
            let ModelFiles { configs, tokenizer, tokenizer_2, weights, .. } = ModelFiles::from_folder(dir, p).unwrap();
            let WeightSource::Diffusers(files) = weights else { unreachable!("a folder") };
            let mut model = ModelAssembly::new(configs, tokenizer, tokenizer_2, &device, p).unwrap();
            model.set_loras(loras()).unwrap();
            for (part, file) in files {
                let bytes = std::fs::read(file.name()).unwrap();
                let mut s = model.stream(part, file.name());
                for piece in bytes.chunks(4099) {
                    s.push(piece).unwrap();
                }
                if part == edict_sd::checkpoint::single_file::Part::Unet {
                    let mut cut = model.stream(part, file.name());
                    cut.push(&bytes[..bytes.len() / 2]).unwrap();
                    let e = model.add_stream(part, cut).unwrap_err().to_string();
                    assert!(e.starts_with(file.name()) && e.contains("the file ended after"), "{e}");
                }
                model.add_stream(part, s).unwrap();
            }
            let streamed = model.finish().unwrap();
            let what = format!("{backend} {} LoRA {lora:?}", dir.display());
            assert_eq!(streamed.fingerprint, whole.fingerprint, "{what}");
            assert!(streamed.unused_keys.is_empty(), "{what}: {:?}", streamed.unused_keys);
            let embed = |sd: &StableDiffusion| sd.encode_prompt("a photo of a cat", false).unwrap().0;
            let (a, b) = (embed(&streamed), embed(&whole));
            close(&format!("{what} text"), host(a.context.clone()), host(b.context.clone()));
            let x = upload(&(0..2 * 4 * 8 * 8).map(|i| ((i * 37 % 101) as f64 / 50.0) - 1.0).collect::<Vec<_>>(), [2, 4, 8, 8], &device);
            let run = |sd: &StableDiffusion, e: &edict_sd::model::TextEmbedding| {
                let ctx = burn::tensor::Tensor::cat(vec![e.context.clone(), e.context.clone()], 0);
                let pooled = e.pooled.as_ref().map(|p| burn::tensor::Tensor::cat(vec![p.clone(), p.clone()], 0));
                let text_time = pooled.as_ref().map(|pooled| TextTime { pooled, time_ids: StableDiffusion::time_ids(64, 64) });
                host(sd.unet.forward(x.clone(), 981.0, Cond { context: &ctx, text_time }))
            };
            close(&format!("{what} unet"), run(&streamed, &a), run(&whole, &b));
            let image = upload(&reference("vae.safetensors")["image"].values, [1, 3, 64, 64], &device);
            close(&format!("{what} vae"), host(streamed.vae.encode(image.clone()).0), host(whole.vae.encode(image).0));
        }
    }
}
