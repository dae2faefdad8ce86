//! PIE-Bench evaluation: the benchmark's background metrics and CLIP scores against its own
//! evaluation code (tests/reference/make_pie.py: torchmetrics on (source, edited) pairs stored in
//! tests/fixtures/pie-bench), and `edict eval-edit` end to end on the tiny model with sharding,
//! merging and resuming.


use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use burn::tensor::Device;
use crate::common::*;
use edict_pipeline::io::image_io::{self, Rgb};
use edict_pipeline::eval::pie_bench::{self, ClipScorer, Mask};
use serde_json::Value;

fn pie() -> PathBuf {
    fixtures().join("pie-bench")
}

fn rgb(path: &Path) -> Rgb {
    image_io::from_rgb(&image_io::decode(&std::fs::read(path).unwrap()).unwrap())
}

/// A reference number of pie.json: a float, or "nan".
fn num(v: &Value) -> f64 {
    v.as_f64().unwrap_or_else(|| {
        assert_eq!(v, "nan");
        f64::NAN
    })
}

fn close(ours: f64, want: f64, tol: f64) -> bool {
    (ours.is_nan() && want.is_nan()) || (ours - want).abs() <= tol
}

#[test]
fn metrics_match_the_benchmark_script() {
    let reference: Value = serde_json::from_str(&std::fs::read_to_string(fixtures().join("reference/pie.json")).unwrap()).unwrap();
    let entries = pie_bench::parse_mapping(&std::fs::read_to_string(pie().join("mapping_file.json")).unwrap()).unwrap();
    let device = Device::flex();
    let (model, processor, tokenizer) = edict_sd::models::clip_score::load_folder(&fixtures().join("tiny-clip"), &device).unwrap();
    let clip = ClipScorer { model, processor, tokenizer, device };
    let want = reference["entries"].as_array().unwrap();
    assert_eq!(entries.len(), want.len());
    let (mut worst_bg, mut worst_clip) = ([0f64; 3], 0f64);
    for (e, r) in entries.iter().zip(want) {
        assert_eq!(e.id, r["id"]);
        assert_eq!((e.source_prompt.as_str(), e.target_prompt.as_str()), (r["source_prompt"].as_str().unwrap(), r["target_prompt"].as_str().unwrap()));
        let mask = Mask::decode(&e.mask).unwrap();
        let runs: Vec<usize> = r["mask_runs"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as usize).collect();
        assert_eq!(mask.runs(), runs, "{}: decoded mask", e.id);
        assert_eq!(mask.edited() as u64, r["mask_sum"].as_u64().unwrap());

        let source = rgb(&pie().join("annotation_images").join(&e.image_path));
        let edited = rgb(&pie().join("edited").join(&e.image_path));
        let bg = pie_bench::background(&source, &edited, &mask).unwrap();
        let (psnr, mse, ssim) = (num(&r["psnr"]), num(&r["mse"]), num(&r["ssim"]));
        eprintln!(
            "{}: PSNR {:.6} vs {psnr:.6}, MSE {:e} vs {mse:e}, SSIM {:.7} vs {ssim:.7} (windows inside the image only: {:.7})",
            e.id, bg.psnr, bg.mse, bg.ssim, num(&r["ssim_valid"])
        );
        // torchmetrics computes in f32
        assert!(close(bg.psnr, psnr, 1e-4) && close(bg.mse, mse, 1e-6 * mse.abs().max(1e-12)) && close(bg.ssim, ssim, 1e-5), "{}: {bg:?}", e.id);
        if !psnr.is_nan() {
            for (w, d) in worst_bg.iter_mut().zip([(bg.psnr - psnr).abs(), (bg.mse - mse).abs() / mse, (bg.ssim - ssim).abs()]) {
                *w = w.max(d);
            }
        }

        let text = pollster::block_on(clip.text(&e.target_prompt)).unwrap();
        let whole = pollster::block_on(clip.score(&edited, &text)).unwrap();
        let part = pollster::block_on(clip.score(&pie_bench::masked(&edited, &mask), &text)).unwrap();
        let (w_whole, w_part) = (num(&r["clip_whole"]), num(&r["clip_edited"]));
        eprintln!("{}: CLIP whole {whole:.4} vs {w_whole:.4}, edited part {part:.4} vs {w_part:.4}", e.id);
        worst_clip = worst_clip.max((whole - w_whole).abs()).max((part - w_part).abs());
    }
    eprintln!("worst: PSNR {:.1e} dB, MSE {:.1e} relative, SSIM {:.1e}; CLIP {worst_clip:.1e}", worst_bg[0], worst_bg[1], worst_bg[2]);
    // measured: PSNR 2.3e-6 dB, MSE 1.5e-7, SSIM 1.7e-6 (f32 in torchmetrics), CLIP 1.3e-5; the
    // SSIM of windows inside the image only (torchmetrics before 1.5) is 9e-4 and 5e-3 away
    assert!(worst_clip <= 1e-3, "CLIP scores {worst_clip} off");
}

fn edict(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_edict")).args(args).output().expect("runs edict")
}

/// A DINO folder of a 2-block, 16-wide ViT at DINO's 224² and patch 8 (smooth arbitrary values):
/// the structure distance's plumbing; its numbers are checked on ViT-B/8 in `dino.rs`.
fn tiny_dino() -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("tiny-dino");
    if dir.join("dino-vitb8.safetensors").exists() {
        return dir;
    }
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("config.json"), r#"{"patch_size": 8, "embed_dim": 16, "depth": 2, "num_heads": 2, "image_size": 224}"#).unwrap();
    let mut tensors: Vec<(String, Vec<usize>)> = vec![
        ("cls_token".into(), vec![1, 1, 16]),
        ("pos_embed".into(), vec![1, 785, 16]),
        ("patch_embed.proj.weight".into(), vec![16, 3, 8, 8]),
        ("patch_embed.proj.bias".into(), vec![16]),
    ];
    for b in 0..2 {
        for (k, shape) in [("norm1.weight", vec![16]), ("norm1.bias", vec![16]), ("attn.qkv.weight", vec![48, 16]), ("attn.qkv.bias", vec![48]), ("attn.proj.weight", vec![16, 16]), ("attn.proj.bias", vec![16]), ("norm2.weight", vec![16]), ("norm2.bias", vec![16]), ("mlp.fc1.weight", vec![64, 16]), ("mlp.fc1.bias", vec![64]), ("mlp.fc2.weight", vec![16, 64]), ("mlp.fc2.bias", vec![16])] {
            tensors.push((format!("blocks.{b}.{k}"), shape));
        }
    }
    let bytes: Vec<Vec<u8>> = (tensors.iter().enumerate())
        .map(|(t, (_, shape))| (0..shape.iter().product::<usize>()).flat_map(|i| (0.02 * ((i * 37 + t * 11) as f32).sin()).to_le_bytes()).collect())
        .collect();
    let views: Vec<(&str, safetensors::tensor::TensorView)> = (tensors.iter().zip(&bytes))
        .map(|((k, shape), b)| (k.as_str(), safetensors::tensor::TensorView::new(safetensors::Dtype::F32, shape.clone(), b).unwrap()))
        .collect();
    safetensors::serialize_to_file(views, None, &dir.join("dino-vitb8.safetensors")).unwrap();
    dir
}

/// `eval-edit` on the tiny model at 64² (512² costs ~4 s per UNet call of the tiny model on CPU).
fn eval_edit(out: &Path, more: &[&str]) -> Output {
    let tiny = tiny_sd();
    let clip = fixtures().join("tiny-clip");
    let data = pie();
    let mut args = vec!["eval-edit", "--backend", "cpu", "--steps", "4", "--strength", "0.5", "--size", "64"];
    args.extend(more);
    let mut c = Command::new(env!("CARGO_BIN_EXE_edict"));
    c.args(&args).arg("--model").arg(&tiny).arg("--clip").arg(&clip).arg("--data").arg(&data).arg("--out").arg(out);
    c.arg("--lpips").arg(fixtures().join("tiny-lpips")).arg("--dino").arg(tiny_dino());
    c.output().expect("runs edict")
}

fn ok(o: Output) -> String {
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    assert!(o.status.success(), "edict failed:\n{err}");
    err
}

fn failed(o: Output) -> String {
    assert!(!o.status.success(), "edict should have failed");
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn json(dir: &Path) -> Value {
    serde_json::from_slice(&std::fs::read(dir.join("results.json")).unwrap()).unwrap()
}

/// results.json without the times, which differ between runs.
fn timeless(mut v: Value) -> Value {
    for key in ["images", "mean"] {
        for r in v[key].as_array_mut().unwrap() {
            r.as_object_mut().unwrap().remove("seconds");
        }
    }
    v
}

#[test]
fn eval_edit_runs_the_benchmark_shards_merge_and_resume() {
    let root = Path::new(env!("CARGO_TARGET_TMPDIR")).join("eval-edit");
    let _ = std::fs::remove_dir_all(&root);
    let dir = |name: &str| root.join(name);

    ok(eval_edit(&dir("full"), &["--quiet"]));
    let full = json(&dir("full"));
    let rows = full["images"].as_array().unwrap();
    assert_eq!(rows.len(), 3 * 3, "3 entries × (EDICT, DDIM, img2img)");
    let ids: Vec<&str> = rows.iter().map(|r| r["id"].as_str().unwrap()).collect();
    assert_eq!(ids[..4], ["000000000000", "000000000000", "000000000000", "000000000001"]);
    for r in rows {
        // 4 steps × strength 0.5 = 2 steps: EDICT 2 calls per step each way, DDIM 1, img2img denoises only
        let evals = match r["method"].as_str().unwrap() {
            "edict" => 8,
            "ddim" => 4,
            "img2img" => 2,
            other => panic!("method {other}"),
        };
        assert_eq!(r["unet_evals"], evals);
        assert!(!r["source_prompt"].as_str().unwrap().contains('['), "brackets stripped");
        let whole = r["clip_whole"].as_f64().unwrap();
        assert!((0.0..=100.0).contains(&whole));
        // the whole image's structure, whatever the mask
        assert!(r["structure_distance"].as_f64().is_some_and(|d| d.is_finite() && d >= 0.0), "{r}");
        if r["id"] == "000000000002" {
            // the mask is the whole image: no background, and the edited part is the image
            assert!(r["psnr"].is_null() && r["lpips"].is_null() && r["mse"].is_null() && r["ssim"].is_null(), "{r}");
            assert_eq!(r["clip_edited"], r["clip_whole"]);
        } else {
            let (psnr, ssim, lpips) = (r["psnr"].as_f64().unwrap(), r["ssim"].as_f64().unwrap(), r["lpips"].as_f64().unwrap());
            assert!(psnr > 5.0 && psnr.is_finite() && ssim > 0.0 && ssim < 1.0 && lpips > 0.0 && lpips.is_finite(), "{r}");
        }
    }
    for m in full["mean"].as_array().unwrap() {
        assert_eq!((m["images"].as_u64(), m["nan"]["psnr"].as_u64(), m["nan"]["lpips"].as_u64(), m["nan"]["clip_edited"].as_u64()), (Some(3), Some(1), Some(1), Some(0)));
        // the background mean is over the two images that have one (JSON numbers parse to within an ulp)
        let method = m["method"].as_str().unwrap();
        let psnrs: Vec<f64> = rows.iter().filter(|r| r["method"] == method).filter_map(|r| r["psnr"].as_f64()).collect();
        assert!((m["psnr"].as_f64().unwrap() - (psnrs[0] + psnrs[1]) / 2.0).abs() < 1e-12, "{m}");
    }
    let csv = std::fs::read_to_string(dir("full").join("results.csv")).unwrap();
    assert_eq!(csv.lines().next().unwrap(), "id,method,editing_type_id,structure_distance,psnr,lpips,mse,ssim,clip_whole,clip_edited,unet_evals,seconds,source_prompt,target_prompt");
    let row = csv.lines().nth(7).unwrap();
    assert!(row.starts_with("\"000000000002\",edict,\"2\",") && row.contains(",NaN,NaN,NaN,NaN,"), "{csv}");
    let md = std::fs::read_to_string(dir("full").join("results.md")).unwrap();
    for want in ["| method | Structure ×10³ ↓ | PSNR ↑ | LPIPS ×10³ ↓ | MSE ×10⁴ ↓ | SSIM ×10² ↑ | CLIP whole ↑ | CLIP edited ↑ |", "LPIPS on SqueezeNet `", "key self-similarities `", "| EDICT |", "| DDIM |", "| img2img |", "Excluded as NaN: 1 of 3 images", "not the benchmark's 512²",
        "| DDIM + P2P (published) | 69.43 | 17.87 | 208.80 | 219.88 | 71.14 | 25.01 | 22.44 | – | – |"] {
        assert!(md.contains(want), "results.md lacks {want}:\n{md}");
    }

    // two shards (0/2: entries 0 and 2, 1/2: entry 1), merged in either order, equal the whole run
    ok(eval_edit(&dir("s1"), &["--quiet", "--shard", "1/2"]));
    ok(eval_edit(&dir("s0"), &["--quiet", "--shard", "0/2"]));
    assert_eq!(json(&dir("s0"))["images"].as_array().unwrap().len(), 6);
    let merge = |out: &str, parts: &[&str]| {
        let mut args = vec!["eval-merge", "--out"];
        let out = dir(out);
        let parts: Vec<PathBuf> = parts.iter().map(|p| dir(p)).collect();
        args.push(out.to_str().unwrap());
        args.extend(parts.iter().map(|p| p.to_str().unwrap()));
        edict(&args)
    };
    ok(merge("merged", &["s1", "s0"]));
    assert_eq!(timeless(json(&dir("merged"))), timeless(full.clone()));
    let no_seconds = |d: &str| -> Vec<String> {
        let text = std::fs::read_to_string(dir(d).join("results.csv")).unwrap();
        text.lines().map(|l| l.split(',').enumerate().filter(|(i, _)| *i != 11).map(|(_, f)| f).collect::<Vec<_>>().join(",")).collect()
    };
    assert_eq!(no_seconds("merged"), no_seconds("full"));
    assert!(failed(merge("m2", &["s0"])).contains("shard 1/2 missing"));
    assert!(failed(merge("m3", &["s0", "s0", "s1"])).contains("are both shard 0/2"));
    assert!(failed(merge("m4", &["full"])).contains("is not a shard"));
    assert!(failed(eval_edit(&dir("bad"), &["--shard", "2/2"])).contains("numbered from 0"));

    // resume: the last entry's rows dropped, as if the run had been killed before writing them
    let resumed = dir("resumed");
    std::fs::create_dir_all(&resumed).unwrap();
    let kept: Vec<&str> = csv.lines().take(1 + 6).collect();
    std::fs::write(resumed.join("results.csv"), kept.join("\n") + "\n").unwrap();
    std::fs::copy(dir("full").join("results.json"), resumed.join("results.json")).unwrap();
    let log = ok(eval_edit(&resumed, &["--resume"]));
    assert!(log.contains("[1/1] 000000000002:") && !log.contains("000000000000:"), "{log}");
    let again = std::fs::read_to_string(resumed.join("results.csv")).unwrap();
    assert_eq!(again.lines().take(7).collect::<Vec<_>>(), kept, "finished rows are kept as they were (times included)");
    assert_eq!(timeless(json(&resumed)), timeless(full.clone()));
    // nothing left to do
    let log = ok(eval_edit(&resumed, &["--resume"]));
    assert!(!log.contains("[1/"), "{log}");
    // other settings, or no --resume/--force, are refused before any work
    let e = failed(eval_edit(&resumed, &["--resume", "--seed", "7"]));
    assert!(e.contains("other settings (seed: 0 vs 7)"), "{e}");
    assert!(failed(eval_edit(&resumed, &["--quiet"])).contains("--force"));
}
