//! Prompt-to-prompt editing, word weights, several targets and the preview, against the float64
//! reference of the EDICT authors' semantics (tests/reference/make_p2p.py) on the tiny model.


use burn::tensor::Device;
use crate::common::*;
use edict_sd::device::backend::Backend;
use edict_pipeline::difflib::opcodes;
use edict_pipeline::eval::metrics;
use edict_pipeline::editor::{Editor, Inversion, Latent, Observer, Progress, Quiet, Rgb};
use edict_pipeline::settings::{Method, Settings};
use edict_pipeline::prompt_edit::{EditSpec, P2p, Reweight, Window, align_tokens, token_weights};
use edict_pipeline::samplers::{Pair, hi, relative_error};
use edict_sd::checkpoint::files::ModelFiles;
use edict_sd::config::Precision;
use edict_sd::model::StableDiffusion;
use serde_json::Value;

fn editor(device: &Device) -> Editor {
    let files = ModelFiles::from_folder(&tiny_sd(), Precision::F32).unwrap();
    Editor::new(StableDiffusion::load(files, device, Precision::F32).unwrap(), device.clone())
}

fn settings() -> Settings {
    Settings {
        steps: 10,
        strength: 0.8,
        ..Settings::default()
    }
}

const SOURCE: &str = "a photo of a cat";

/// The reference's inverted pair (run 0 of edict.safetensors) as an inversion to edit.
fn reference_inversion() -> Inversion {
    let r = reference("edict.safetensors");
    let lift = |k: &str| r[k].values.iter().map(|&v| v.into()).collect();
    Inversion {
        pair: Pair { x: lift("run0_inv_x"), y: lift("run0_inv_y") },
        latent: Latent { values: r["latent"].values.clone(), shape: [1, 4, 8, 8] },
        prompt: SOURCE.into(),
        settings: settings(),
    }
}

fn window(v: &Value) -> Window {
    Window { start: v[0].as_f64().unwrap(), end: v[1].as_f64().unwrap() }
}

/// The edit a reference case describes.
fn spec(case: &Value) -> EditSpec {
    EditSpec {
        targets: vec![case["target"].as_str().unwrap().into()],
        weighted: Vec::new(),
        p2p: case["p2p"].as_bool().unwrap().then(|| P2p { tokens: window(&case["tokens"]), self_attn: window(&case["self"]) }),
        reweight: case["reweight"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| Reweight { word: r[0].as_str().unwrap().into(), weight: r[1].as_f64().unwrap() })
            .collect(),
    }
}

fn cases() -> Vec<Value> {
    let path = fixtures().join("reference/p2p.json");
    let meta: Value = serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap();
    meta["cases"].as_array().unwrap().clone()
}

/// The reference image `[1, 3, h, w]` in [−1, 1] as 8-bit RGB, rounded as `Editor::decode` does.
fn to_rgb(values: &[f64], h: usize, w: usize) -> Rgb {
    let mut data = vec![0u8; h * w * 3];
    for c in 0..3 {
        for i in 0..h * w {
            data[i * 3 + c] = ((values[c * h * w + i] + 1.0) * 127.5).round().clamp(0.0, 255.0) as u8;
        }
    }
    Rgb { width: w, height: h, data }
}

fn ids(v: &[f64]) -> Vec<u32> {
    v.iter().map(|&x| x as u32).collect()
}

/// Our alignment and word weights equal the reference's for each case.
#[test]
fn controls_match_the_reference_tensors() {
    let r = reference("p2p.safetensors");
    let ed = editor(&Device::flex());
    let tok = &ed.model.tokenizer;
    let source = tok.encode(SOURCE).unwrap().ids;
    assert_eq!(source, ids(&r["source_ids"].values));
    for case in cases() {
        let name = case["name"].as_str().unwrap();
        let s = spec(&case);
        let target = tok.encode(&s.targets[0]).unwrap().ids;
        assert_eq!(target, ids(&r[&format!("{name}_target_ids")].values), "{name}");
        let (mask, index) = align_tokens(&source, &target);
        let want: Vec<f32> = r[&format!("{name}_mask")].values.iter().map(|&v| v as f32).collect();
        assert_eq!(mask, want, "{name} mask");
        let want: Vec<i64> = r[&format!("{name}_index")].values.iter().map(|&v| v as i64).collect();
        assert_eq!(index, want, "{name} index");
        let w = token_weights(tok, &target, &[], &s.reweight, std::slice::from_ref(&target)).unwrap();
        let want: Vec<f32> = r[&format!("{name}_weights")].values.iter().map(|&v| v as f32).collect();
        assert_eq!(w, want, "{name} weights");
    }
}

/// Each case's edited pair within 5e-3 of the float64 reference and its image ≥ 35 dB, on the
/// CPU and on wgpu; P2P moves the result far from the plain edit (so a no-op control fails).
#[test]
fn edits_match_the_float64_reference() {
    let r = reference("p2p.safetensors");
    let plain = reference("edict.safetensors");
    let inv = reference_inversion();
    for (backend, device) in devices() {
        let mut ed = editor(&device);
        for case in cases() {
            let name = case["name"].as_str().unwrap();
            let pairs = pollster::block_on(ed.edit(&inv, &spec(&case), "edit", &mut Quiet)).unwrap();
            let (x, y) = (hi(&pairs[0].x), hi(&pairs[0].y));
            let ex = relative_error(&x, &r[&format!("{name}_edit_x")].values);
            let ey = relative_error(&y, &r[&format!("{name}_edit_y")].values);
            let rgb = pollster::block_on(ed.decode(&Latent { values: x.clone(), shape: [1, 4, 8, 8] })).unwrap();
            let psnr = metrics::compare(&rgb, &to_rgb(&r[&format!("{name}_image")].values, 64, 64)).unwrap().psnr;
            let vs_plain = relative_error(&x, &plain["run0_edit_x"].values);
            eprintln!("{backend} {name}: edit x {ex:.2e}, y {ey:.2e}, image {psnr:.1} dB; vs plain edit {vs_plain:.3}");
            assert!(ex <= 5e-3 && ey <= 5e-3, "{backend} {name}: x {ex:e}, y {ey:e}");
            assert!(psnr >= 35.0, "{backend} {name}: {psnr} dB");
            assert!(vs_plain > 0.1, "{backend} {name}: only {vs_plain:e} from the plain edit");
        }
    }
}

/// With target = source, P2P injects every probability the target pass computes: the edit
/// returns the photo's latent exactly, like plain EDICT.
#[test]
fn p2p_with_the_source_prompt_round_trips_exactly() {
    for (backend, device) in devices() {
        let mut ed = editor(&device);
        let z = Latent { values: reference("edict.safetensors")["latent"].values.clone(), shape: [1, 4, 8, 8] };
        // the two-step samplers on the CPU only: the controls they pass through are the same
        let methods: &[Method] = if backend == Backend::Cpu { &[Method::Edict, Method::Bdia, Method::Belm] } else { &[Method::Edict] };
        for &method in methods {
            let inv = pollster::block_on(ed.invert(&z, SOURCE, &Settings { method, ..settings() }, &mut Quiet)).unwrap();
            let spec = EditSpec { p2p: Some(P2p::default()), ..EditSpec::to(SOURCE) };
            let pairs = pollster::block_on(ed.edit(&inv, &spec, "edit", &mut Quiet)).unwrap();
            let err = relative_error(&pairs[0].x_f64(), &z.values);
            eprintln!("{backend} {method}: P2P target = source round trip {err:e}");
            assert!(pairs[0].x_f64() == z.values, "{backend} {method}: {err:e}");
        }
    }
}

/// Several targets in one batch (P2P and word weights on) equal the same edits run one by one,
/// bit for bit, with one UNet call per half step for all of them.
#[test]
fn several_targets_equal_one_by_one() {
    let inv = reference_inversion();
    for (backend, device) in devices() {
        let mut ed = editor(&device);
        let targets = ["a photo of a dog", "a watercolor photo of a fluffy cat", "a photo of a cat"];
        let spec = EditSpec {
            targets: targets.map(String::from).to_vec(),
            weighted: Vec::new(),
            p2p: Some(P2p { tokens: Window { start: 0.2, end: 0.6 }, self_attn: Window::ALWAYS }),
            reweight: vec!["fluffy=2".parse().unwrap()],
        };
        let before = ed.unet_calls;
        let together = pollster::block_on(ed.edit(&inv, &spec, "edit", &mut Quiet)).unwrap();
        assert_eq!(ed.unet_calls - before, 2 * 8);
        for (i, t) in targets.iter().enumerate() {
            // a word weight only touches the targets that have the word
            let reweight = if t.contains("fluffy") { spec.reweight.clone() } else { vec![] };
            let one = EditSpec { targets: vec![t.to_string()], reweight, ..spec.clone() };
            let alone = pollster::block_on(ed.edit(&inv, &one, "edit", &mut Quiet)).unwrap();
            assert!(alone[0] == together[i], "{backend} target {i}: {:e}", relative_error(&alone[0].x_f64(), &together[i].x_f64()));
        }
        assert!(together[0] != together[1]);
    }
}

/// Missing words and bad windows are refused with errors that name them.
#[test]
fn bad_controls_are_clear_errors() {
    let mut ed = editor(&Device::flex());
    let inv = reference_inversion();
    let mut run = |spec: EditSpec| pollster::block_on(ed.edit(&inv, &spec, "edit", &mut Quiet)).unwrap_err().to_string();
    let e = run(EditSpec { reweight: vec!["zebra=2".parse().unwrap()], ..EditSpec::to("a photo of a dog") });
    assert!(e.contains("\"zebra\" is not in the target prompt"), "{e}");
    let bad = Window { start: 0.8, end: 0.2 };
    let e = run(EditSpec { p2p: Some(P2p { tokens: bad, ..P2p::default() }), ..EditSpec::to("a photo of a dog") });
    assert!(e.contains("--p2p-tokens window 0.8:0.2"), "{e}");
    let e = run(EditSpec { targets: vec![], ..EditSpec::default() });
    assert!(e.contains("at least one target"), "{e}");
}

/// The preview arrives after every UNet call, 1/8 size, one tile per target.
#[test]
fn preview_follows_every_unet_call() {
    struct Previews(Vec<(&'static str, usize, usize)>);
    impl Observer for Previews {
        fn wants_preview(&self) -> bool {
            true
        }
        fn preview(&mut self, p: Progress, image: &Rgb) {
            assert_eq!(p.done, self.0.len() + 1);
            self.0.push((p.stage, image.width, image.height));
        }
    }
    let mut ed = editor(&Device::flex());
    let inv = reference_inversion();
    let mut obs = Previews(Vec::new());
    let spec = EditSpec { targets: vec!["a photo of a dog".into(), "a photo of a cow".into()], ..EditSpec::default() };
    pollster::block_on(ed.edit(&inv, &spec, "edit", &mut obs)).unwrap();
    assert_eq!(obs.0.len(), 16);
    assert!(obs.0.iter().all(|&p| p == ("edit", 16, 8)), "{:?}", obs.0[0]);
}

/// The token alignment equals Python's `difflib.SequenceMatcher(None, a, b).get_opcodes()` on
/// prompt pairs (through our tokenizer) and on random sequences, autojunk included.
#[test]
fn token_alignment_matches_python_difflib() {
    let path = fixtures().join("reference/difflib.json");
    let d: Value = serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap();
    let list = |v: &Value| -> Vec<u32> { v.as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as u32).collect() };
    let ops = |a: &[u32], b: &[u32]| -> Value {
        opcodes(a, b).iter().map(|o| serde_json::json!([o.tag.name(), o.a0, o.a1, o.b0, o.b1])).collect()
    };
    let tok = editor(&Device::flex()).model.tokenizer;
    let pairs = d["prompt_pairs"].as_array().unwrap();
    for p in pairs {
        let (a, b) = (list(&p["source_ids"]), list(&p["target_ids"]));
        assert_eq!(tok.encode(p["source"].as_str().unwrap()).unwrap().ids, a);
        assert_eq!(tok.encode(p["target"].as_str().unwrap()).unwrap().ids, b);
        assert_eq!(ops(&a, &b), p["opcodes"], "{} → {}", p["source"], p["target"]);
        let (mask, index) = align_tokens(&a, &b);
        assert_eq!(mask.iter().map(|&m| m as u64).collect::<Vec<_>>(), list(&p["mask"]).iter().map(|&m| m as u64).collect::<Vec<_>>());
        assert_eq!(index.iter().map(|&i| i as u32).collect::<Vec<_>>(), list(&p["index"]));
    }
    let seqs = d["sequences"].as_array().unwrap();
    for (i, s) in seqs.iter().enumerate() {
        let (a, b) = (list(&s["a"]), list(&s["b"]));
        assert_eq!(ops(&a, &b), s["opcodes"], "sequence pair {i} (lengths {}, {})", a.len(), b.len());
    }
    eprintln!("{} prompt pairs and {} sequence pairs agree with difflib", pairs.len(), seqs.len());
}

/// Every row of a UNet call is bit-identical whatever else shares its batch, also where
/// attention runs in query chunks (a 64×64 latent: 4096 tokens): batch 2 (inversion), 3 (P2P)
/// and 6 (two P2P targets). The exact round trips above depend on it at full size.
#[test]
fn unet_rows_do_not_depend_on_the_batch() {
    use burn::tensor::{Distribution, Tensor};
    let r = reference("unet.safetensors");
    for (backend, device) in devices() {
        let sd = editor(&device).model;
        let x = Tensor::<4>::random([2, 4, 64, 64], Distribution::Normal(0.0, 1.0), &device);
        let ctx: Tensor<3> = upload(&r["encoder_hidden_states"].values, [2, 77, 32], &device);
        let two = host(sd.unet.forward(x.clone(), 981.0, &ctx));
        for n in [3, 6] {
            let rows: Vec<usize> = (0..n).map(|i| i % 2).collect();
            let pick = |t: &Tensor<4>| Tensor::cat(rows.iter().map(|&i| t.clone().narrow(0, i, 1)).collect(), 0);
            let ctx_n = Tensor::cat(rows.iter().map(|&i| ctx.clone().narrow(0, i, 1)).collect(), 0);
            let out = host(sd.unet.forward(pick(&x), 981.0, &ctx_n));
            let per = two.len() / 2;
            for (j, &i) in rows.iter().enumerate() {
                assert!(out[j * per..(j + 1) * per] == two[i * per..(i + 1) * per], "{backend}: batch {n} row {j} differs");
            }
        }
    }
}
