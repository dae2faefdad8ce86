//! The `edict` binary end to end on the tiny fixture model (CPU backend).


use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use crate::common::*;

fn command(args: &[&str]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_edict"));
    c.args(args).env_remove("RUST_BACKTRACE");
    c
}

fn edict(args: &[&str]) -> Output {
    command(args).output().expect("edict runs")
}

/// Runs `edict` with the Hugging Face cache at `hf_home` and the hub unreachable.
fn edict_offline(args: &[&str], hf_home: &str) -> Output {
    command(args).env("HF_HOME", hf_home).env("HF_ENDPOINT", "http://127.0.0.1:9").output().expect("edict runs")
}

fn ok(args: &[&str]) -> Output {
    let out = edict(args);
    assert!(out.status.success(), "edict {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    out
}

/// Runs a command that must fail as the README promises (exit code 1, the error as the last
/// line of stderr and on that line alone); returns that line.
fn fails(args: &[&str]) -> String {
    let out = edict(args);
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    assert_eq!(out.status.code(), Some(1), "edict {args:?} should fail with exit code 1: {err}");
    assert!(!err.contains("panicked"), "edict {args:?} panicked: {err}");
    let last = err.lines().last().unwrap_or_default().to_string();
    assert!(last.starts_with("error: "), "edict {args:?}: {err}");
    assert_eq!(err.lines().filter(|l| l.starts_with("error")).count(), 1, "edict {args:?}: {err}");
    last
}

struct Tmp(PathBuf);

impl Tmp {
    fn new(name: &str) -> Self {
        let p = std::env::temp_dir().join(format!("edict-cli-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        Self(p)
    }
    fn path(&self, f: &str) -> String {
        self.0.join(f).display().to_string()
    }
}

impl Drop for Tmp {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The reference test image (a smooth pattern in [-1, 1]) as a w×h PNG.
fn write_photo(path: &str, w: u32, h: u32) {
    let img = &reference("vae.safetensors")["image"].values;
    let photo = image::RgbImage::from_fn(w, h, |x, y| {
        let (i, j) = ((y % 64) as usize, (x % 64) as usize);
        image::Rgb(std::array::from_fn(|c| ((img[c * 4096 + i * 64 + j] + 1.0) * 127.5).round() as u8))
    });
    photo.save(path).unwrap();
}

fn model() -> String {
    tiny_sd().display().to_string()
}

fn common_args<'a>(m: &'a str, steps: &'a str) -> Vec<&'a str> {
    vec!["--model", m, "--backend", "cpu", "--steps", steps, "--quiet"]
}

fn dims(path: &str) -> (u32, u32) {
    image::image_dimensions(path).unwrap()
}

#[test]
fn tokenize_prints_77_ids_and_warns_on_truncation() {
    let out = ok(&["tokenize", "a photo of a cat"]);
    let ids: Vec<u32> = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(ids.len(), 77);
    assert_eq!(&ids[..7], &[49406, 320, 1125, 539, 320, 2368, 49407]);
    assert!(ids[7..].iter().all(|&i| i == 49407));
    let long = "cat ".repeat(100);
    let out = ok(&["tokenize", &long]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("longer than 77 tokens"));
}

#[test]
fn edit_from_latents_reproduces_edit_exactly() {
    let t = Tmp::new("edit");
    let m = model();
    write_photo(&t.path("in.png"), 64, 64);
    let (inp, out1, out2, noise, noise2) = (t.path("in.png"), t.path("out1.png"), t.path("out2.png"), t.path("n.safetensors"), t.path("n2.safetensors"));
    let base = common_args(&m, "10");
    let with = |extra: &[&str]| -> Vec<String> {
        let mut v: Vec<String> = base.iter().map(|s| s.to_string()).collect();
        v.extend(["--strength", "0.5", "--width", "64", "--height", "64"].map(String::from));
        v.extend(extra.iter().map(|s| s.to_string()));
        v
    };
    let run = |v: Vec<String>| ok(&v.iter().map(String::as_str).collect::<Vec<_>>());
    let mut e = vec!["edit".to_string()];
    e.extend(with(&["--image", &inp, "--source", "a photo of a cat", "--target", "a photo of a dog", "--out", &out1, "--save-latents", &noise]));
    run(e);
    assert_eq!(dims(&out1), (64, 64));
    let mut e = vec!["edit".to_string()];
    e.extend(with(&["--from-latents", &noise, "--target", "a photo of a dog", "--out", &out2]));
    run(e);
    let (a1, a2) = (image::open(&out1).unwrap().to_rgb8(), image::open(&out2).unwrap().to_rgb8());
    assert!(a1 == a2, "--from-latents must reproduce edit exactly");
    // invert alone writes the same inversion
    let mut i = vec!["invert".to_string()];
    i.extend(with(&["--image", &inp, "--prompt", "a photo of a cat", "--save-latents", &noise2]));
    run(i);
    let read = |p: &str| edict_pipeline::io::latents::from_bytes(&std::fs::read(p).unwrap(), p).unwrap();
    assert!(read(&noise) == read(&noise2), "invert and edit --save-latents differ");
    // existing outputs are not overwritten without --force
    let mut i = vec!["invert".to_string()];
    i.extend(with(&["--image", &inp, "--prompt", "a photo of a cat", "--save-latents", &noise2]));
    let err = fails(&i.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(err.contains("--force"), "{err}");
}

/// A saved inversion is refused, with the reason, by another model and by arguments that
/// contradict it (another size, other settings, a photo).
#[test]
fn from_latents_refuses_what_it_cannot_reproduce() {
    let t = Tmp::new("latents");
    let m = model();
    write_photo(&t.path("in.png"), 64, 64);
    let (inp, noise, out) = (t.path("in.png"), t.path("n.safetensors"), t.path("out.png"));
    ok(&["invert", "--model", &m, "--backend", "cpu", "--quiet", "--steps", "4", "--width", "64", "--height", "64", "--image", &inp, "--prompt", "a cat", "--save-latents", &noise]);
    let edit = |model: &str, extra: &[&str]| {
        let mut a = vec!["edit", "--model", model, "--backend", "cpu", "--quiet", "--from-latents", &noise, "--target", "a dog", "--out", &out];
        a.extend(extra);
        fails(&a)
    };
    let cases: [(&[&str], &str); 7] = [
        (&["--steps", "5"], "--steps 5 differs from the 4"),
        (&["--guidance", "7.5"], "--guidance 7.5 differs"),
        (&["--method", "belm"], "--method belm differs from the edict"),
        (&["--gamma", "0.5"], "--gamma 0.5 differs from the 0.96"),
        (&["--no-leapfrog"], "--no-leapfrog true differs"),
        (&["--width", "128", "--height", "64"], "holds a 64×64 inversion"),
        (&["--image", &inp], "already holds the inverted photo"),
    ];
    for (extra, want) in cases {
        let err = edit(&m, extra);
        assert!(err.contains(want), "{extra:?}: {err}");
    }
    let other = Model::copy("cli-other");
    other.perturb("unet/diffusion_pytorch_model.safetensors", "conv_out.weight");
    let err = edit(&other.0.display().to_string(), &[]);
    assert!(err.contains("fingerprint") && err.contains("invert the photo again"), "{err}");
    assert!(!Path::new(&out).exists());
    // typed values equal to the saved ones are fine
    ok(&["edit", "--model", &m, "--backend", "cpu", "--quiet", "--from-latents", &noise, "--target", "a dog", "--out", &out, "--steps", "4", "--width", "64", "--height", "64"]);
}

/// `--lora` changes the edit; a latents file inverted with a LoRA reproduces the edit with it
/// and is refused without it, naming the LoRA.
#[test]
fn lora_changes_the_edit_and_binds_its_latents() {
    let t = Tmp::new("lora");
    let m = model();
    write_photo(&t.path("in.png"), 64, 64);
    let lora = format!("{}:0.7", fixtures().join("lora/sd-kohya.safetensors").display());
    let (inp, noise) = (t.path("in.png"), t.path("n.safetensors"));
    let edit = |out: &str, extra: &[&str]| {
        let mut a = vec!["edit", "--model", &m, "--backend", "cpu", "--quiet", "--steps", "4", "--target", "a photo of a dog", "--out", out];
        a.extend(extra);
        a.iter().map(|s| s.to_string()).collect::<Vec<_>>()
    };
    let run = |a: Vec<String>| ok(&a.iter().map(String::as_str).collect::<Vec<_>>());
    let photo = ["--image", &inp, "--width", "64", "--height", "64", "--source", "a photo of a cat"];
    run(edit(&t.path("plain.png"), &photo));
    run(edit(&t.path("lora.png"), &[&photo[..], &["--lora", &lora, "--save-latents", &noise]].concat()));
    let png = |f: &str| image::open(t.path(f)).unwrap().to_rgb8();
    assert!(png("plain.png") != png("lora.png"), "--lora changed nothing");
    run(edit(&t.path("again.png"), &["--from-latents", &noise, "--lora", &lora]));
    assert!(png("again.png") == png("lora.png"), "the latents file must reproduce the LoRA edit exactly");
    let a = edit(&t.path("without.png"), &["--from-latents", &noise]);
    let err = fails(&a.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(err.contains("fingerprint") && err.contains("+ LoRA") && err.contains("sd-kohya.safetensors:0.7"), "{err}");
}

fn report(t: &Tmp, m: &str, method: &str) -> serde_json::Value {
    let (inp, out, rep) = (t.path("in.png"), t.path(&format!("{method}.png")), t.path(&format!("{method}.json")));
    let mut a = vec!["reconstruct"];
    a.extend(common_args(m, "10"));
    a.extend(["--strength", "0.8", "--width", "64", "--height", "64", "--image", &inp, "--prompt", "a photo of a cat", "--out", &out, "--method", method, "--report", &rep]);
    ok(&a);
    assert_eq!(dims(&out), (64, 64));
    serde_json::from_slice(&std::fs::read(&rep).unwrap()).unwrap()
}

#[test]
fn reconstruct_reports_exact_edict_bdia_belm_and_inexact_ddim() {
    let t = Tmp::new("recon");
    let m = model();
    write_photo(&t.path("in.png"), 64, 64);
    let edict = report(&t, &m, "edict");
    let ddim = report(&t, &m, "ddim");
    for method in ["bdia", "belm"] {
        let r = report(&t, &m, method);
        assert_eq!((r["method"].as_str(), r["latent_rel_err"].as_f64()), (Some(method), Some(0.0)), "{r}");
        // 8 levels: 8 calls to invert, 7 to denoise, against EDICT's 32
        assert_eq!(r["unet_evals"].as_u64(), Some(8 + 7));
        assert!(r["unet_evals"].as_f64().unwrap() <= 0.55 * edict["unet_evals"].as_f64().unwrap());
    }
    for k in ["latent_rel_err", "mse", "psnr", "ssim", "unet_evals", "seconds"] {
        assert!(edict.get(k).is_some(), "report lacks {k}: {edict}");
    }
    let (e, d) = (edict["latent_rel_err"].as_f64().unwrap(), ddim["latent_rel_err"].as_f64().unwrap());
    assert_eq!(e, 0.0, "EDICT round trip {e:e}");
    assert!(d > 1e-3, "DDIM {d:e} should be far from exact");
    assert_eq!(edict["unet_evals"].as_u64(), Some(4 * 8));
    assert_eq!(ddim["unet_evals"].as_u64(), Some(2 * 8));
}

#[test]
fn generate_is_reproducible_and_sized() {
    let t = Tmp::new("gen");
    let m = model();
    let run = |out: &str, seed: &str| {
        let mut a = vec!["generate"];
        a.extend(common_args(&m, "4"));
        a.extend(["--prompt", "a photo of a cat", "--out", out, "--seed", seed, "--width", "64", "--height", "128"]);
        ok(&a);
    };
    let (a, b, c) = (t.path("a.png"), t.path("b.png"), t.path("c.png"));
    run(&a, "7");
    run(&b, "7");
    run(&c, "8");
    assert_eq!(dims(&a), (64, 128));
    assert!(std::fs::read(&a).unwrap() == std::fs::read(&b).unwrap(), "same seed, different images");
    assert!(std::fs::read(&a).unwrap() != std::fs::read(&c).unwrap(), "different seeds, same image");
}

#[test]
fn image_size_rule_crops_to_multiples_of_64() {
    let t = Tmp::new("size");
    let m = model();
    write_photo(&t.path("wide.png"), 200, 90); // → 512×230 → crop 512×192
    let (inp, out) = (t.path("wide.png"), t.path("out.png"));
    let mut a = vec!["reconstruct"];
    a.extend(common_args(&m, "1"));
    a.extend(["--strength", "1", "--image", &inp, "--prompt", "", "--out", &out]);
    ok(&a);
    assert_eq!(dims(&out), (512, 192));
}

#[test]
fn bad_input_is_one_clear_line() {
    let t = Tmp::new("bad");
    let m = model();
    write_photo(&t.path("in.png"), 64, 64);
    std::fs::write(t.path("empty.png"), b"").unwrap();
    std::fs::write(t.path("text.png"), b"hello").unwrap();
    let (inp, out, empty, text) = (t.path("in.png"), t.path("out.png"), t.path("empty.png"), t.path("text.png"));
    let xl_lora = fixtures().join("lora/sdxl-kohya.safetensors").display().to_string();
    let edit = |extra: &[&str]| -> String {
        let mut a = vec!["edit", "--backend", "cpu", "--quiet", "--source", "a", "--target", "b"];
        if !extra.contains(&"--model") {
            a.extend(["--model", &m]);
        }
        a.extend(extra);
        fails(&a)
    };
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (vec!["--image", "/nonexistent.png", "--out", &out], "cannot read"),
        (vec!["--image", &empty, "--out", &out], "empty"),
        (vec!["--image", &text, "--out", &out], "image"),
        (vec!["--image", &inp, "--out", "/nonexistent-dir/x.png"], "does not exist"),
        (vec!["--image", &inp, "--out", &out, "--strength", "0"], "strength"),
        (vec!["--image", &inp, "--out", &out, "--strength", "1.5"], "strength"),
        (vec!["--image", &inp, "--out", &out, "--steps", "0"], "steps"),
        (vec!["--image", &inp, "--out", &out, "--steps", "5000"], "steps"),
        (vec!["--image", &inp, "--out", &out, "--mix", "0.4"], "mix"),
        (vec!["--image", &inp, "--out", &out, "--method", "o-belm"], "method `o-belm`: expected edict, bdia, belm or ddim"),
        (vec!["--image", &inp, "--out", &out, "--method", "bdia", "--gamma", "0"], "gamma must be a finite number > 0"),
        (vec!["--image", &inp, "--out", &out, "--method", "bdia", "--gamma", "inf"], "gamma must be a finite number > 0"),
        (vec!["--image", &inp, "--out", &out, "--method", "belm", "--steps", "10", "--strength", "0.1"], "belm needs at least 2 steps"),
        (vec!["--image", &inp, "--out", &out, "--guidance", "NaN"], "guidance"),
        (vec!["--image", &inp, "--out", &out, "--guidance=-1"], "guidance"),
        (vec!["--image", &inp, "--out", &out, "--width", "100", "--height", "64"], "multiples of 8"),
        (vec!["--image", &inp, "--out", &out, "--width", "16384", "--height", "16384"], "mpixel limit"),
        (vec!["--image", &inp, "--out", &out, "--model", "/no/such/model"], "model"),
        (vec!["--image", &inp, "--out", &out, "--lora", "/no/such/style.safetensors"], "/no/such/style.safetensors"),
        (vec!["--image", &inp, "--out", &out, "--lora", "style.safetensors:strong"], "`strong` is not a lora scale"),
        (vec!["--image", &inp, "--out", &out, "--lora", &xl_lora], "another stable diffusion family"),
    ];
    for (extra, want) in cases {
        let err = edit(&extra);
        assert!(err.to_lowercase().contains(want), "{extra:?}: {err}");
    }
    let err = fails(&["generate", "--model", &m, "--backend", "cpu", "--quiet", "--prompt", "a", "--out", &out, "--width", "65536", "--height", "2048"]);
    assert!(err.contains("Mpixel limit"), "{err}");
    assert!(!Path::new(&out).exists());
}

/// With no network, a model id that is not in the HF cache fails with a message saying how to
/// point at local files.
#[test]
fn unreachable_hub_says_how_to_use_local_files() {
    let t = Tmp::new("hub");
    write_photo(&t.path("in.png"), 64, 64);
    let (inp, out) = (t.path("in.png"), t.path("out.png"));
    let out = edict_offline(
        &["edit", "--model", "nobody/no-such-model", "--backend", "cpu", "--quiet", "--image", &inp, "--source", "a", "--target", "b", "--out", &out],
        &t.path("hf"),
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("local diffusers folder"), "{err}");
}

/// An SD 2.x folder (v-prediction, pad token "!") edits and round-trips through the CLI;
/// `--prediction` overrides the scheduler config.
#[test]
fn sd2_folder_runs_end_to_end() {
    let t = Tmp::new("sd2");
    let m = fixtures().join("tiny-sd2").display().to_string();
    let inp = t.path("in.png");
    write_photo(&inp, 64, 64);
    let (rep, rec) = (t.path("r.json"), t.path("r.png"));
    let mut a = vec!["reconstruct"];
    a.extend(common_args(&m, "4"));
    a.extend(["--strength", "0.5", "--image", &inp, "--prompt", "a photo of a cat", "--out", &rec, "--report", &rep]);
    ok(&a);
    // the auto size rule: long side max(512, sample_size × 8) = 512 for this model
    assert_eq!(dims(&rec), (512, 512));
    let r: serde_json::Value = serde_json::from_slice(&std::fs::read(&rep).unwrap()).unwrap();
    assert_eq!(r["latent_rel_err"].as_f64(), Some(0.0), "{r}");
    let edit = |out: &str, extra: &[&str]| {
        let mut a = vec!["edit"];
        a.extend(common_args(&m, "4"));
        a.extend(["--strength", "0.5", "--width", "64", "--height", "64", "--image", &inp]);
        a.extend(["--source", "a photo of a cat", "--target", "a photo of a dog", "--out", out]);
        a.extend(extra);
        ok(&a);
        std::fs::read(out).unwrap()
    };
    let v = edit(&t.path("v.png"), &[]);
    assert_eq!(v, edit(&t.path("v2.png"), &["--prediction", "v"]));
    assert_ne!(v, edit(&t.path("eps.png"), &["--prediction", "epsilon"]), "--prediction epsilon changed nothing");
    // a usage error, reported by the argument parser
    let out = edict(&["edit", "--model", &m, "--prediction", "sample", "--image", &inp, "--source", "a", "--target", "b", "--out", &t.path("x.png")]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("prediction type `sample` is not supported"), "{err}");
}

/// An SDXL folder edits and round-trips through the CLI with each sampler; its SGM single file
/// (read with the folder's configs) edits a saved inversion to the same image bit for bit.
#[test]
fn sdxl_folder_and_single_file_run_end_to_end() {
    let t = Tmp::new("sdxl");
    let m = fixtures().join("tiny-sdxl").display().to_string();
    let single = fixtures().join("tiny-sdxl.safetensors").display().to_string();
    let inp = t.path("in.png");
    write_photo(&inp, 64, 64);
    let size = ["--strength", "0.5", "--width", "64", "--height", "64"];
    let rec = t.path("r.png");
    for method in ["edict", "belm"] {
        let rep = t.path(&format!("{method}.json"));
        let mut a = vec!["reconstruct"];
        a.extend(common_args(&m, "4"));
        a.extend(size);
        a.extend(["--method", method, "--image", &inp, "--prompt", "a photo of a cat", "--out", &rec, "--report", &rep, "--force"]);
        ok(&a);
        let r: serde_json::Value = serde_json::from_slice(&std::fs::read(&rep).unwrap()).unwrap();
        assert_eq!(r["latent_rel_err"].as_f64(), Some(0.0), "{method}: {r}");
    }
    let (out, noise, again) = (t.path("e.png"), t.path("n.safetensors"), t.path("e2.png"));
    let mut a = vec!["edit"];
    a.extend(common_args(&m, "4"));
    a.extend(size);
    a.extend(["--image", &inp, "--source", "a photo of a cat", "--target", "a photo of a dog", "--out", &out, "--save-latents", &noise]);
    ok(&a);
    let mut a = vec!["edit"];
    a.extend(common_args(&single, "4"));
    a.extend(size);
    a.extend(["--config", &m, "--from-latents", &noise, "--target", "a photo of a dog", "--out", &again]);
    ok(&a);
    assert!(std::fs::read(&out).unwrap() == std::fs::read(&again).unwrap(), "the single file's edit differs from the folder's");
}

/// An SDXL hub id already in the Hugging Face cache loads from it with no network (the second text
/// encoder and tokenizer included; `--precision f16` takes the fp16 variant files) and edits as
/// its folder does, bit for bit.
#[test]
fn sdxl_hub_id_loads_from_the_hf_cache() {
    let t = Tmp::new("sdxl-hub");
    let folder = fixtures().join("tiny-sdxl");
    // the cache's layout: hub/models--{org}--{name}/refs/main names the snapshot holding the files
    let repo = Path::new(&t.path("hf")).join("hub/models--test--tiny-sdxl");
    std::fs::create_dir_all(repo.join("refs")).unwrap();
    std::fs::write(repo.join("refs/main"), "0123abcd").unwrap();
    copy_dir(&folder, &repo.join("snapshots/0123abcd"));
    let inp = t.path("in.png");
    write_photo(&inp, 64, 64);
    let edit = |model: &str, out: &str| {
        let out = edict_offline(
            &[
                "edit", "--model", model, "--precision", "f16", "--backend", "cpu", "--steps", "4", "--strength", "0.5", "--width", "64", "--height", "64",
                "--image", &inp, "--source", "a photo of a cat", "--target", "a photo of a dog", "--out", out,
            ],
            &t.path("hf"),
        );
        let err = String::from_utf8_lossy(&out.stderr).to_string();
        assert!(out.status.success(), "{model}: {err}");
        err
    };
    let (a, b) = (t.path("folder.png"), t.path("hub.png"));
    edit(&folder.display().to_string(), &a);
    let err = edit("test/tiny-sdxl", &b);
    assert!(!err.contains("downloading"), "every file should come from the cache: {err}");
    assert!(std::fs::read(&a).unwrap() == std::fs::read(&b).unwrap(), "the hub id's edit differs from the folder's");
}

/// Several targets with prompt-to-prompt, word weights and a live preview, from a photo and from
/// saved latents (same images); the controls' mistakes are one clear line each.
#[test]
fn edit_with_p2p_several_targets_and_preview() {
    let t = Tmp::new("p2p");
    let m = model();
    write_photo(&t.path("in.png"), 64, 64);
    let (inp, noise, preview) = (t.path("in.png"), t.path("n.safetensors"), t.path("preview.png"));
    let (pattern, dir) = (t.path("e-{i}.png"), t.path("from-latents"));
    std::fs::create_dir(&dir).unwrap();
    let controls = ["--target", "a photo of a dog", "--target", "a photo of a fluffy cat", "--p2p", "--p2p-tokens", "0.2:0.6", "--reweight", "fluffy=2"];
    let mut a = vec!["edit"];
    a.extend(common_args(&m, "10"));
    a.extend(["--strength", "0.5", "--width", "64", "--height", "64", "--image", &inp, "--source", "a photo of a cat", "--save-latents", &noise, "--out", &pattern, "--preview", &preview]);
    a.extend(controls);
    ok(&a);
    // 64×64 photo: the preview has one 8×8 tile per target
    assert_eq!(dims(&preview), (16, 8));
    let mut a = vec!["edit"];
    a.extend(common_args(&m, "10"));
    a.extend(["--strength", "0.5", "--from-latents", &noise, "--out", &dir]);
    a.extend(controls);
    ok(&a);
    for i in 1..=2 {
        let from_photo = image::open(t.path(&format!("e-{i}.png"))).unwrap().to_rgb8();
        let from_latents = image::open(format!("{dir}/target-{i}.png")).unwrap().to_rgb8();
        assert_eq!(from_photo.dimensions(), (64, 64));
        assert!(from_photo == from_latents, "target {i}: --from-latents differs");
    }
    let one = image::open(t.path("e-1.png")).unwrap().to_rgb8();
    let two = image::open(t.path("e-2.png")).unwrap().to_rgb8();
    assert!(one != two);
    // the weight syntax in a target is --reweight on the same tokens, bit for bit
    let syntax = t.path("syntax-{i}.png");
    let taesd = fixtures().join("tiny-taesd").display().to_string();
    let taesd_arg = format!("taesd={taesd}");
    let mut a = vec!["edit"];
    a.extend(common_args(&m, "10"));
    a.extend(["--strength", "0.5", "--from-latents", &noise, "--out", &syntax, "--preview", &preview, "--preview-decoder", &taesd_arg]);
    a.extend(["--target", "a photo of a dog", "--target", "a photo of a (fluffy:2) cat", "--p2p", "--p2p-tokens", "0.2:0.6"]);
    ok(&a);
    for i in 1..=2 {
        let weighted = image::open(t.path(&format!("syntax-{i}.png"))).unwrap().to_rgb8();
        let reweighted = image::open(format!("{dir}/target-{i}.png")).unwrap().to_rgb8();
        assert!(weighted == reweighted, "target {i}: (fluffy:2) differs from --reweight fluffy=2");
    }
    // TAESD decodes the preview at full size, a 64×64 tile per target
    assert_eq!(dims(&preview), (128, 64));

    let edit = |extra: &[&str]| -> String {
        let mut a = vec!["edit", "--model", &m, "--backend", "cpu", "--quiet", "--from-latents", &noise];
        a.extend(extra);
        fails(&a)
    };
    let out = t.path("x.png");
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (vec!["--target", "a", "--target", "b", "--out", &out], "there are 2 targets"),
        (vec!["--target", "a dog", "--out", &out, "--reweight", "zebra=2"], "\"zebra\" is not in the target prompt"),
        (vec!["--target", "a (dog", "--out", &out], "the `(` at character 3 is never closed"),
        (vec!["--target", "a (dog:1.5x)", "--out", &out], "the weight `1.5x` of the `(` at character 3 is not a number"),
        (vec!["--target", "a (dog)s", "--out", &out], "must start and end between words"),
    ];
    for (extra, want) in cases {
        let err = edit(&extra);
        assert!(err.contains(want), "{extra:?}: {err}");
    }
    // malformed values and a window without --p2p are usage errors, named by clap, on one line
    // that says where the arguments are explained
    let usage: Vec<(Vec<&str>, &str)> = vec![
        (vec!["--reweight", "dog"], "expected WORD=WEIGHT"),
        (vec!["--reweight", "dog=-1"], "≥ 0"),
        (vec!["--p2p", "--p2p-self", "0.9:0.1"], "window `0.9:0.1`"),
        (vec!["--p2p-tokens", "0:1"], "--p2p"),
        (vec!["--preview", "p.png", "--preview-decoder", "vae"], "expected taesd or taesd=FOLDER|HUB_ID"),
        (vec!["--preview-decoder", "taesd"], "--preview"),
        (vec!["--no-such-flag"], "--no-such-flag"),
    ];
    for (extra, want) in usage {
        let mut a = vec!["edit", "--model", &m, "--from-latents", &noise, "--target", "a dog", "--out", &out];
        a.extend(&extra);
        let err = fails(&a);
        assert!(err.contains(want) && err.ends_with("(see `edict edit --help`)"), "{extra:?}: {err}");
    }
    // no subcommand is an error too; help and version are not
    assert!(fails(&[]).contains("a subcommand is required"));
    for flag in ["--help", "--version"] {
        let out = ok(&[flag]);
        assert!(!out.stdout.is_empty() && out.stderr.is_empty(), "{flag}");
    }
}

/// Warnings reach the user through the observer, once each although reconstruct's two passes
/// both raise them, and even with --quiet.
#[test]
fn warnings_are_shown_once() {
    let t = Tmp::new("warn");
    let m = model();
    write_photo(&t.path("in.png"), 64, 64);
    let (long, inp, out_png) = ("cat ".repeat(100), t.path("in.png"), t.path("out.png"));
    let mut a = vec!["reconstruct"];
    a.extend(common_args(&m, "4"));
    a.extend(["--width", "64", "--height", "64", "--mix", "0.85", "--image", &inp, "--prompt", &long, "--out", &out_png]);
    let err = String::from_utf8_lossy(&ok(&a).stderr).to_string();
    let count = |s: &str| err.lines().filter(|l| l.starts_with("warning: ") && l.contains(s)).count();
    assert_eq!(count("mix 0.85 < 0.9"), 1, "{err}");
    assert_eq!(count("longer than 77 tokens"), 1, "{err}");
}
