//! `edict eval` on the tiny fixture model with real photos (scikit-image's public-domain / CC0
//! samples, see tests/fixtures/photos/PROVENANCE.md): EDICT round-trips the latent exactly, DDIM
//! does not, and the CSV, JSON and Markdown reports are written.


use std::process::Command;

use crate::common::*;

#[test]
fn eval_writes_the_reconstruction_table() {
    let out = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("eval");
    let status = Command::new(env!("CARGO_BIN_EXE_edict"))
        .args(["eval", "--backend", "cpu", "--quiet", "--force", "--steps", "10", "--width", "64", "--height", "64"])
        .arg("--model")
        .arg(tiny_sd())
        .arg("--images")
        .arg(fixtures().join("photos"))
        .arg("--out")
        .arg(&out)
        .status()
        .expect("runs edict");
    assert!(status.success());

    let json: serde_json::Value = serde_json::from_slice(&std::fs::read(out.join("results.json")).unwrap()).unwrap();
    let rows = json["images"].as_array().unwrap();
    assert_eq!(rows.len(), 3 * 3, "3 photos × (VAE, EDICT, DDIM)");
    for r in rows {
        let err = r["latent_rel_err"].as_f64();
        match r["method"].as_str().unwrap() {
            "vae" => assert!(err.is_none()),
            "edict" => {
                assert!(err.unwrap() <= 1e-10, "{}: EDICT latent error {:e}", r["image"], err.unwrap());
                assert_eq!(r["unet_evals"], 4 * 10);
            }
            "ddim" => assert!(err.unwrap() > 1e-3, "{}: DDIM latent error {:e}", r["image"], err.unwrap()),
            other => panic!("unexpected method {other}"),
        }
        assert!(r["mse"].as_f64().unwrap() >= 0.0 && r["ssim"].as_f64().unwrap() <= 1.0);
        assert!(!r["prompt"].as_str().unwrap().is_empty(), "captions.json supplies the prompts");
    }
    let methods: Vec<&str> = json["mean"].as_array().unwrap().iter().map(|m| m["method"].as_str().unwrap()).collect();
    assert_eq!(methods, ["vae", "edict", "ddim"]);
    // EDICT decodes the very latent the VAE-only row decodes
    let mean = |m: usize, k: &str| json["mean"][m][k].as_f64().unwrap();
    assert!((mean(0, "mse") - mean(1, "mse")).abs() < 1e-9);

    let csv = std::fs::read_to_string(out.join("results.csv")).unwrap();
    let mut lines = csv.lines();
    assert_eq!(
        lines.next().unwrap(),
        "image,method,width,height,mse,psnr,ssim,latent_rel_err,unet_evals,seconds,prompt"
    );
    assert_eq!(lines.count(), 9);

    let md = std::fs::read_to_string(out.join("results.md")).unwrap();
    for row in ["| VAE only |", "| EDICT |", "| DDIM |", "| method | MSE ↓ | PSNR (dB) ↑ | SSIM ↑ |"] {
        assert!(md.contains(row), "results.md lacks {row}:\n{md}");
    }

    // two shards merged equal the whole run (times aside)
    let run = |shard: &str, dir: &str| {
        let status = Command::new(env!("CARGO_BIN_EXE_edict"))
            .args(["eval", "--backend", "cpu", "--quiet", "--force", "--steps", "10", "--width", "64", "--height", "64", "--shard", shard])
            .arg("--model")
            .arg(tiny_sd())
            .arg("--images")
            .arg(fixtures().join("photos"))
            .arg("--out")
            .arg(out.with_file_name(dir))
            .status()
            .unwrap();
        assert!(status.success());
    };
    run("0/2", "eval-0");
    run("1/2", "eval-1");
    let merged = out.with_file_name("eval-merged");
    let status = Command::new(env!("CARGO_BIN_EXE_edict"))
        .args(["eval-merge", "--force", "--out"])
        .args([&merged, &out.with_file_name("eval-1"), &out.with_file_name("eval-0")])
        .status()
        .unwrap();
    assert!(status.success());
    let timeless = |dir: &std::path::Path| {
        let mut v: serde_json::Value = serde_json::from_slice(&std::fs::read(dir.join("results.json")).unwrap()).unwrap();
        for key in ["images", "mean"] {
            v[key].as_array_mut().unwrap().iter_mut().for_each(|r| drop(r.as_object_mut().unwrap().remove("seconds")));
        }
        v
    };
    assert_eq!(timeless(&merged), timeless(&out));

    // without --force the existing reports are an error, before any work
    let refused = Command::new(env!("CARGO_BIN_EXE_edict"))
        .args(["eval", "--backend", "cpu", "--quiet"])
        .arg("--model")
        .arg(tiny_sd())
        .arg("--images")
        .arg(fixtures().join("photos"))
        .arg("--out")
        .arg(&out)
        .output()
        .unwrap();
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("--force"));
}
