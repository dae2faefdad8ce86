//! EDICT, BDIA and O-BELM round trips are exact to the bit over a matrix of photos, sizes, step
//! counts, strengths and guidance scales — including cases where coupling in f64 is not (the
//! coffee photo at 128², 10 steps, strength 0.7, guidance 4: 1.2e-6 with f64 coupling, as a
//! PyTorch run of the same algorithm also gives). A latents file keeps that exactness in another
//! process.


use burn::tensor::Device;
use crate::common::*;
use edict_pipeline::io::image_io::{self, Size};
use edict_pipeline::io::latents::{self, Origin};
use edict_pipeline::editor::{Editor, Latent, Quiet};
use edict_pipeline::settings::{Method, Settings};
use edict_sd::device::backend::Backend;
use edict_sd::checkpoint::files::ModelFiles;
use edict_sd::config::Precision;
use edict_sd::model::StableDiffusion;

const PHOTOS: [&str; 3] = ["coffee.png", "chelsea.png", "astronaut.png"];
const PROMPT: &str = "a photo";

fn editor(device: &Device, precision: Precision) -> Editor {
    let files = ModelFiles::from_folder(&tiny_sd(), precision).unwrap();
    Editor::new(StableDiffusion::load(files, device, precision).unwrap(), device.clone())
}

fn photo_latent(ed: &mut Editor, photo: &str, size: u32) -> Latent {
    let bytes = std::fs::read(fixtures().join("photos").join(photo)).unwrap();
    let (img, _) = image_io::fit(image_io::decode(&bytes).unwrap(), Size::exact(size, size).unwrap(), 512).unwrap();
    pollster::block_on(ed.encode(image_io::to_pixels(&img), size as usize, size as usize, None)).unwrap()
}

const EXACT: [Method; 3] = [Method::Edict, Method::Bdia, Method::Belm];

#[derive(Clone, Copy, Debug)]
struct Case {
    method: Method,
    steps: usize,
    strength: f64,
    guidance: f64,
}

impl Case {
    fn settings(&self) -> Settings {
        Settings {
            method: self.method,
            steps: self.steps,
            strength: self.strength,
            guidance: self.guidance,
            ..Settings::default()
        }
    }

    /// The same case with another method.
    fn with(self, method: Method) -> Self {
        Self { method, ..self }
    }
}

/// The case f64 coupling misses.
const HARD: Case = Case { method: Method::Edict, steps: 10, strength: 0.7, guidance: 4.0 };

/// Runs every case on every photo at each of its sizes; panics listing the cases that were not
/// bit-exact.
fn sweep(backend: Backend, precision: Precision, cases: &[(u32, Case)]) {
    let device = edict_sd::device::backend::device(backend).unwrap();
    let mut ed = editor(&device, precision);
    let (mut runs, mut errors) = (0, Vec::new());
    let mut sizes: Vec<u32> = cases.iter().map(|c| c.0).collect();
    sizes.sort();
    sizes.dedup();
    for photo in PHOTOS {
        for &size in &sizes {
            let z = photo_latent(&mut ed, photo, size);
            for (_, c) in cases.iter().filter(|c| c.0 == size) {
                let rec = pollster::block_on(ed.reconstruct(&z, PROMPT, &c.settings(), &mut Quiet)).unwrap();
                runs += 1;
                if rec.latent.values != z.values {
                    errors.push(format!("{photo} {size}² {c:?}: {:e}", rec.latent_rel_err));
                }
            }
        }
    }
    eprintln!("{backend} {precision:?}: {} of {runs} round trips bit-exact", runs - errors.len());
    assert!(errors.is_empty(), "{backend} {precision:?}: not bit-exact:\n{}", errors.join("\n"));
}

/// Odd and even inverted-step counts (floor(steps × strength): 3 … 10), with and without
/// guidance, and one long run (25 levels): exactness holds step by step, so a long run adds
/// little but time.
fn matrix(method: Method) -> Vec<Case> {
    let mut cases = vec![Case { method, steps: 25, strength: 1.0, guidance: 3.0 }];
    for steps in [7, 8, 10] {
        for strength in [0.5, 0.7, 1.0] {
            for guidance in [1.0, 3.0, 7.5] {
                cases.push(Case { method, steps, strength, guidance });
            }
        }
    }
    cases
}

/// EDICT over the matrix at 64² and 128²; BDIA and O-BELM (half the calls) over it at 64², and
/// the hard case at 128².
#[test]
fn round_trips_are_bit_exact_on_cpu() {
    let mut cases: Vec<(u32, Case)> = Vec::new();
    for size in [64, 128] {
        for method in EXACT {
            if size == 64 || method == Method::Edict {
                cases.extend(matrix(method).into_iter().map(|c| (size, c)));
            }
            cases.push((size, HARD.with(method)));
        }
    }
    sweep(Backend::Cpu, Precision::F32, &cases);
}

/// EDICT at 128²; BDIA and O-BELM, whose exactness does not depend on the size, and guidance 3
/// at 64² (lavapipe makes every call count; long runs are the CPU sweep's).
#[test]
fn round_trips_are_bit_exact_on_wgpu() {
    let cases = [
        (64, HARD.with(Method::Bdia)),
        (64, Case { method: Method::Belm, steps: 8, strength: 1.0, guidance: 7.5 }),
        (64, Case { method: Method::Edict, steps: 10, strength: 0.5, guidance: 3.0 }),
        (128, HARD),
        (128, Case { method: Method::Edict, steps: 8, strength: 1.0, guidance: 7.5 }),
    ];
    sweep(Backend::Wgpu, Precision::F32, &cases);
}

/// The networks in f16 (the GPU backends' f16 convolutions; with `gpu-tuned`, fused attention):
/// less accurate, and still exact to the bit.
#[test]
fn round_trips_are_bit_exact_in_f16() {
    let cases = [(64, HARD.with(Method::Bdia)), (64, HARD.with(Method::Belm)), (128, HARD)];
    for backend in [Backend::Cpu, Backend::Wgpu] {
        sweep(backend, Precision::F16, &cases);
    }
}

/// Inverts with each exact method, saves the latents files, and has a fresh process (this test
/// binary again) load them and denoise with the source prompt: the latent comes back bit for bit.
#[test]
fn latents_file_round_trips_exactly_across_processes_on_cpu() {
    across_processes(Backend::Cpu, "latents_file_round_trips_exactly_across_processes_on_cpu");
}

/// On wgpu with `gpu-tuned` the child runs the kernels the parent's autotune chose, read back
/// from the kernel cache.
#[test]
fn latents_file_round_trips_exactly_across_processes_on_wgpu() {
    across_processes(Backend::Wgpu, "latents_file_round_trips_exactly_across_processes_on_wgpu");
}

/// `test` is the calling test's name: the child is that test again, with the file's path set.
fn across_processes(backend: Backend, test: &str) {
    const CHILD: &str = "EDICT_TEST_LATENTS_FILE";
    let device = edict_sd::device::backend::device(backend).unwrap();
    let mut ed = editor(&device, Precision::F32);
    let origin = Origin::of("tiny-sd", &ed.model);
    let file = |dir: &std::path::Path, m: Method| dir.join(format!("coffee-{m}.safetensors"));
    if let Ok(dir) = std::env::var(CHILD) {
        // the child: load, check, denoise, write x as f64 bytes; the method comes from the file
        for m in EXACT {
            let path = file(dir.as_ref(), m);
            let shown = path.display().to_string();
            let (inv, from) = latents::from_bytes(&std::fs::read(&path).unwrap(), &shown).unwrap();
            latents::check_fits(&inv, &from, &ed.model, "tiny-sd", &shown).unwrap();
            assert_eq!(inv.settings.method, m);
            let pair = pollster::block_on(ed.denoise(&inv, &inv.prompt, "reconstruct", &mut Quiet)).unwrap();
            let out: Vec<u8> = pair.x_f64().iter().flat_map(|v| v.to_le_bytes()).collect();
            std::fs::write(format!("{shown}.x"), out).unwrap();
        }
        return;
    }
    let z = photo_latent(&mut ed, "coffee.png", 128);
    let dir = std::env::temp_dir().join(format!("edict-exactness-{backend}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    for m in EXACT {
        let inv = pollster::block_on(ed.invert(&z, PROMPT, &HARD.with(m).settings(), &mut Quiet)).unwrap();
        std::fs::write(file(&dir, m), latents::to_bytes(&inv, &origin).unwrap()).unwrap();
    }
    // libtest names a test by its path below the crate root
    let name = format!("{}::{test}", module_path!().split_once("::").map_or("", |(_, m)| m));
    let child = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["--exact", &name, "--nocapture"])
        .env(CHILD, &dir)
        .output()
        .unwrap();
    assert!(
        child.status.success(),
        "the child process failed:\n{}{}",
        String::from_utf8_lossy(&child.stdout),
        String::from_utf8_lossy(&child.stderr)
    );
    for m in EXACT {
        let result = format!("{}.x", file(&dir, m).display());
        let back: Vec<f64> = std::fs::read(&result)
            .unwrap_or_else(|e| panic!("the child ({name}) wrote no {result} ({e}):\n{}", String::from_utf8_lossy(&child.stdout)))
            .chunks_exact(8)
            .map(|c| f64::from_le_bytes(c.try_into().unwrap()))
            .collect();
        let err = edict_pipeline::samplers::relative_error(&back, &z.values);
        assert!(back == z.values, "{backend} {m}: round trip through the file: {err:e}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// The warm-up pass (on by default where autotune picks kernels) runs each call shape once before
/// the calls whose results are kept, and changes no bit of them.
#[test]
fn warm_up_runs_each_call_shape_once_and_changes_no_bit() {
    for (backend, device) in devices() {
        let mut cold = editor(&device, Precision::F32);
        assert_eq!(cold.warm_up, cfg!(feature = "gpu-tuned") && backend == Backend::Wgpu, "{backend}");
        cold.warm_up = false;
        let mut warm = editor(&device, Precision::F32);
        warm.warm_up = true;
        let z = photo_latent(&mut cold, "chelsea.png", 64);
        // batch 2 (guidance), then batch 1 (guidance 1), then batch 2 again
        for guidance in [3.0, 1.0, 7.5] {
            let s = Case { method: Method::Edict, steps: 4, strength: 1.0, guidance }.settings();
            let a = pollster::block_on(cold.reconstruct(&z, PROMPT, &s, &mut Quiet)).unwrap();
            let b = pollster::block_on(warm.reconstruct(&z, PROMPT, &s, &mut Quiet)).unwrap();
            assert!(a.latent.values == b.latent.values, "{backend}, guidance {guidance}: the warm-up changed the result");
        }
        assert_eq!((cold.warm_up_calls, warm.warm_up_calls), (0, 2), "{backend}");
        assert_eq!(cold.unet_calls, warm.unet_calls, "{backend}: warm-up calls are not counted as the edit's");
    }
}
