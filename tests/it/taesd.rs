//! TAESD (diffusers `AutoencoderTiny`) against diffusers on the tiny seeded fixture
//! (tests/reference/make_taesd.py), CPU and wgpu, and what a TAESD folder may not hold.

use std::path::PathBuf;

use burn::tensor::Device;
use crate::common::*;
use edict_sd::checkpoint::weights::WeightFile;
use edict_sd::models::autoencoder_tiny::{AutoencoderTiny, TinyConfig};
use safetensors::tensor::TensorView;
use safetensors::{Dtype, SafeTensors};

fn tiny_taesd() -> PathBuf {
    fixtures().join("tiny-taesd")
}

fn shape4(s: &[usize]) -> [usize; 4] {
    s.try_into().expect("4-D")
}

#[test]
fn encoder_and_decoder_match_diffusers() {
    let r = reference("taesd.safetensors");
    for (backend, device) in devices() {
        let tiny = AutoencoderTiny::from_folder(&tiny_taesd(), &device).unwrap();
        for (input, want, run) in [
            ("image", "encoded", &(|t| tiny.encode(t)) as &dyn Fn(_) -> _),
            ("latents", "decoded", &|t| tiny.decode(t)),
        ] {
            let x = upload(&r[input].values, shape4(&r[input].shape), &device);
            let y = run(x);
            assert_eq!(y.dims().to_vec(), r[want].shape, "{backend} {want}");
            let err = max_abs_diff(&host(y), &r[want].values) / max_abs(&r[want].values);
            println!("{backend} {want}: max error {err:.2e} of the largest value");
            assert!(err <= 1e-4, "{backend} {want}: {err:e}");
        }
    }
}

#[test]
fn what_is_not_taesd_is_refused_with_the_reason() {
    let config = std::fs::read_to_string(tiny_taesd().join("config.json")).unwrap();
    for (from, to, says) in [
        ("\"act_fn\": \"relu\"", "\"act_fn\": \"silu\"", "act_fn \"silu\""),
        ("\"scaling_factor\": 1.0", "\"scaling_factor\": 0.5", "scaling_factor 0.5"),
        ("\"num_decoder_blocks\": [\n    1,", "\"num_decoder_blocks\": [\n", "one length per side"),
    ] {
        assert!(config.contains(from), "{from}");
        let e = TinyConfig::from_json(&config.replacen(from, to, 1), "x/config.json").unwrap_err().to_string();
        assert!(e.starts_with("x/config.json: ") && e.contains(says), "{e}");
    }
    // weights of another network: its keys are named
    let sd_vae = WeightFile::open(&tiny_sd().join("vae/diffusion_pytorch_model.safetensors")).unwrap();
    let e = AutoencoderTiny::from_files(&config, "config.json", sd_vae, &Device::flex()).err().unwrap().to_string();
    assert!(e.contains("missing weight `encoder.layers.0.weight`"), "{e}");
    // TAESD's weights and one more tensor: it is named
    let bytes = std::fs::read(tiny_taesd().join("diffusion_pytorch_model.safetensors")).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let extra = [0u8; 4];
    let mut views: Vec<(String, TensorView)> = st.tensors();
    views.push(("decoder.layers.99.weight".into(), TensorView::new(Dtype::F32, vec![1], &extra).unwrap()));
    let dir = std::env::temp_dir().join(format!("edict-taesd-extra-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("config.json"), &config).unwrap();
    safetensors::serialize_to_file(views, None, &dir.join("diffusion_pytorch_model.safetensors")).unwrap();
    let e = AutoencoderTiny::from_folder(&dir, &Device::flex()).err().unwrap().to_string();
    let _ = std::fs::remove_dir_all(&dir);
    assert!(e.contains("1 tensors this AutoencoderTiny does not have, e.g. `decoder.layers.99.weight`"), "{e}");
}
