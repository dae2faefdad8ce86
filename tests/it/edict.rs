//! EDICT on the tiny fixture model: exactness with f32 networks, and agreement with the Python
//! reference that runs the authors' algorithm with every network in float64.


use burn::tensor::Device;
use crate::common::*;
use edict_pipeline::editor::{Editor, Latent, Quiet};
use edict_pipeline::settings::{Method, Settings};
use edict_pipeline::samplers::{hi, relative_error};
use edict_sd::checkpoint::files::ModelFiles;
use edict_sd::config::Precision;
use edict_sd::model::StableDiffusion;

fn editor(device: &Device) -> Editor {
    let files = ModelFiles::from_folder(&tiny_sd(), Precision::F32).unwrap();
    Editor::new(StableDiffusion::load(files, device, Precision::F32).unwrap(), device.clone())
}

fn settings(strength: f64) -> Settings {
    Settings {
        steps: 10,
        strength,
        ..Settings::default()
    }
}

fn image_latent(ed: &mut Editor) -> Latent {
    let img = &reference("vae.safetensors")["image"];
    let pixels = img.values.iter().map(|&v| v as f32).collect();
    pollster::block_on(ed.encode(pixels, 64, 64, None)).unwrap()
}

/// Inverted pair and edited latents within 5e-3 relative of the float64 reference, for an even
/// (8) and an odd (7) number of inverted steps.
#[test]
fn matches_the_float64_reference() {
    let r = reference("edict.safetensors");
    for (backend, device) in devices() {
        let mut ed = editor(&device);
        let z = image_latent(&mut ed);
        let err = relative_error(&z.values, &r["latent"].values);
        assert!(err < 1e-5, "{backend}: image latent differs by {err:e}");
        for (run, strength) in [(0, 0.8), (1, 0.7)] {
            let s = settings(strength);
            let inv = pollster::block_on(ed.invert(&z, "a photo of a cat", &s, &mut Quiet)).unwrap();
            for (name, ours) in [("inv_x", &inv.pair.x), ("inv_y", &inv.pair.y)] {
                let err = relative_error(&hi(ours), &r[&format!("run{run}_{name}")].values);
                eprintln!("{backend} run {run} {name}: relative error vs float64 reference {err:e}");
                assert!(err < 5e-3, "{backend} run {run} {name}: {err:e}");
            }
            let edit = pollster::block_on(ed.denoise(&inv, "a photo of a dog", "edit", &mut Quiet)).unwrap();
            for (name, ours) in [("edit_x", &edit.x), ("edit_y", &edit.y)] {
                let err = relative_error(&hi(ours), &r[&format!("run{run}_{name}")].values);
                eprintln!("{backend} run {run} {name}: relative error vs float64 reference {err:e}");
                assert!(err < 5e-3, "{backend} run {run} {name}: {err:e}");
            }
        }
    }
}

/// With f32 networks and double-double coupling the round trip is bit-exact; DDIM's is not.
#[test]
fn round_trip_is_exact_with_f32_networks() {
    for (backend, device) in devices() {
        let mut ed = editor(&device);
        let z = image_latent(&mut ed);
        for strength in [0.8, 0.7] {
            let s = settings(strength);
            let inverted_steps = (10.0 * strength) as usize;
            let before = ed.unet_calls;
            let rec = pollster::block_on(ed.reconstruct(&z, "a photo of a cat", &s, &mut Quiet)).unwrap();
            eprintln!("{backend} {inverted_steps} steps: EDICT latent round trip {:e}", rec.latent_rel_err);
            assert!(rec.latent.values == z.values, "{backend} {inverted_steps} steps: EDICT round trip {:e}", rec.latent_rel_err);
            // 2 batched UNet calls (4 latent evaluations) per coupled step, per pass
            assert_eq!(ed.unet_calls - before, 2 * 2 * inverted_steps);
            assert_eq!(rec.unet_evals, 4 * inverted_steps);
        }
        let ddim = pollster::block_on(ed.reconstruct(&z, "a photo of a cat", &Settings { method: Method::Ddim, ..settings(0.8) }, &mut Quiet)).unwrap();
        eprintln!("{backend}: DDIM latent round trip {:e}", ddim.latent_rel_err);
        assert!(ddim.latent_rel_err > 1e-3, "DDIM should not be exact: {:e}", ddim.latent_rel_err);
        assert_eq!(ddim.unet_evals, 2 * 8);
    }
}

/// Guidance 1 skips the unconditional branch: batch 1, same result as the guided formula.
#[test]
fn guidance_one_runs_batch_one() {
    let device = Device::flex();
    let mut ed = editor(&device);
    let z = image_latent(&mut ed);
    let s = Settings { guidance: 1.0, ..settings(0.3) };
    let rec = pollster::block_on(ed.reconstruct(&z, "a photo of a cat", &s, &mut Quiet)).unwrap();
    assert!(rec.latent.values == z.values, "round trip {:e}", rec.latent_rel_err);
}

/// Cancellation stops between UNet calls; progress names the stage and counts calls.
#[test]
fn progress_and_cancellation() {
    use edict_pipeline::PipelineError;
    use edict_pipeline::editor::{Observer, Progress};
    struct CancelAfter(Vec<Progress>, usize);
    impl Observer for CancelAfter {
        fn progress(&mut self, p: Progress) {
            self.0.push(p);
        }
        fn cancelled(&self) -> bool {
            self.0.len() >= self.1
        }
    }
    let device = Device::flex();
    let mut ed = editor(&device);
    let z = image_latent(&mut ed);
    let mut obs = CancelAfter(Vec::new(), 3);
    let err = pollster::block_on(ed.invert(&z, "a photo of a cat", &settings(0.8), &mut obs)).unwrap_err();
    assert!(matches!(err, PipelineError::Cancelled), "{err}");
    assert_eq!(obs.0.len(), 3);
    assert_eq!(obs.0[2], Progress { stage: "invert", done: 3, total: 16 });
}
