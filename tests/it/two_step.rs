//! BDIA and O-BELM on the tiny fixture model: agreement with the float64 run of the authors'
//! loops (tests/reference/make_two_step.py), exactness with f32 networks, and the UNet calls they
//! save against EDICT. On the CPU backend: the sampler runs on the host whatever the backend, and
//! exactness.rs runs both methods on wgpu too.

use burn::tensor::Device;
use crate::common::*;
use edict_pipeline::editor::{Editor, Latent, Quiet, Rgb};
use edict_pipeline::eval::metrics;
use edict_pipeline::samplers::{hi, relative_error};
use edict_pipeline::settings::{Method, Settings};
use edict_sd::checkpoint::files::ModelFiles;
use edict_sd::config::Precision;
use edict_sd::model::StableDiffusion;

const TWO_STEP: [Method; 2] = [Method::Bdia, Method::Belm];

fn editor(device: &Device) -> Editor {
    let files = ModelFiles::from_folder(&tiny_sd(), Precision::F32).unwrap();
    Editor::new(StableDiffusion::load(files, device, Precision::F32).unwrap(), device.clone())
}

fn settings(method: Method, strength: f64) -> Settings {
    Settings { method, steps: 10, strength, ..Settings::default() }
}

/// The reference's image latent (the VAE's agreement is the networks tests' business).
fn latent() -> Latent {
    Latent { values: reference("edict.safetensors")["latent"].values.clone(), shape: [1, 4, 8, 8] }
}

/// A float image in [−1, 1] (`[1, 3, h, w]`) as 8-bit RGB, rounded as the decoder rounds.
fn to_rgb(v: &[f64], side: usize) -> Rgb {
    let mut data = vec![0u8; side * side * 3];
    for c in 0..3 {
        for i in 0..side * side {
            data[i * 3 + c] = ((v[c * side * side + i] + 1.0) * 127.5).round().clamp(0.0, 255.0) as u8;
        }
    }
    Rgb { width: side, height: side, data }
}

/// Inverted pair and edited latent within 5e-4 relative of the float64 reference (a tenth of
/// EDICT's tolerance; measured: ≤ 3.2e-5), for 8 and 7 levels; the edited image decoded at
/// ≥ 35 dB PSNR against the reference's decoding.
#[test]
fn matches_the_float64_reference() {
    let r = reference("two_step.safetensors");
    let z = latent();
    let mut ed = editor(&Device::flex());
    for method in TWO_STEP {
        for (run, strength) in [(0, 0.8), (1, 0.7)] {
            let key = |k: &str| format!("{method}_run{run}_{k}");
            let inv = pollster::block_on(ed.invert(&z, "a photo of a cat", &settings(method, strength), &mut Quiet)).unwrap();
            let edit = pollster::block_on(ed.denoise(&inv, "a photo of a dog", "edit", &mut Quiet)).unwrap();
            for (name, ours) in [("inv_x", hi(&inv.pair.x)), ("inv_y", hi(&inv.pair.y)), ("edit", edit.x_f64())] {
                let err = relative_error(&ours, &r[&key(name)].values);
                eprintln!("{method} run {run} {name}: relative error vs float64 reference {err:e}");
                assert!(err < 5e-4, "{method} run {run} {name}: {err:e}");
            }
            if run == 0 {
                let ours = pollster::block_on(ed.decode(&Latent { values: edit.x_f64(), shape: z.shape })).unwrap();
                let q = metrics::compare(&ours, &to_rgb(&r[&key("edit_image")].values, 64)).unwrap();
                eprintln!("{method}: edited image PSNR {:.2} dB vs the reference", q.psnr);
                assert!(q.psnr >= 35.0, "{method}: edited image PSNR {:.2} dB", q.psnr);
            }
        }
    }
}

/// With f32 networks and double-double levels the round trip is bit-exact, at run + (run − 1)
/// UNet calls: ≤ 0.55× EDICT's 4·run.
#[test]
fn round_trip_is_exact_at_about_half_edicts_calls() {
    let z = latent();
    let mut ed = editor(&Device::flex());
    let edict = pollster::block_on(ed.reconstruct(&z, "a photo of a cat", &settings(Method::Edict, 0.8), &mut Quiet)).unwrap();
    for method in TWO_STEP {
        for strength in [0.8, 0.7] {
            let run = (10.0 * strength) as usize;
            let rec = pollster::block_on(ed.reconstruct(&z, "a photo of a cat", &settings(method, strength), &mut Quiet)).unwrap();
            eprintln!("{method} {run} levels: latent round trip {:e}", rec.latent_rel_err);
            assert!(rec.latent.values == z.values, "{method} {run} levels: round trip {:e}", rec.latent_rel_err);
            assert_eq!(rec.unet_evals, 2 * run - 1);
            let ratio = rec.unet_evals as f64 / edict.unet_evals as f64;
            assert!(strength != 0.8 || ratio <= 0.55, "{method} makes {ratio:.2}× EDICT's UNet calls");
        }
    }
}

/// Progress counts each pass's calls: run to invert, run − 1 to denoise.
#[test]
fn progress_counts_one_call_per_level() {
    use edict_pipeline::editor::Progress;
    let mut ed = editor(&Device::flex());
    let mut seen: Vec<Progress> = Vec::new();
    let mut obs = |p: Progress| seen.push(p);
    pollster::block_on(ed.reconstruct(&latent(), "a photo of a cat", &settings(Method::Bdia, 0.8), &mut obs)).unwrap();
    let last = |stage: &str| seen.iter().rfind(|p| p.stage == stage).copied();
    assert_eq!(last("invert"), Some(Progress { stage: "invert", done: 8, total: 8 }));
    assert_eq!(last("reconstruct"), Some(Progress { stage: "reconstruct", done: 7, total: 7 }));
}
