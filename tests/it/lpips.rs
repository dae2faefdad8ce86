//! LPIPS (torchmetrics' `LearnedPerceptualImagePatchSimilarity(net_type='squeeze')`, PIE-Bench's
//! background LPIPS) on a random-weight SqueezeNet 1.1 (tests/fixtures/tiny-lpips, made by
//! tests/reference/make_lpips.py), against torchmetrics in float64, on CPU and wgpu.

use edict_pipeline::eval::pie_bench::{Mask, background_lpips};
use edict_pipeline::io::image_io::Rgb;
use edict_sd::models::lpips::Lpips;

use crate::common::*;

fn rgb(r: &Ref) -> Rgb {
    let (h, w) = (r.shape[0], r.shape[1]);
    Rgb { width: w, height: h, data: r.values.iter().map(|&v| v as u8).collect() }
}

/// `[3, h, w]` planes as PIE-Bench feeds LPIPS: `u8 / 255` (times a mask) in f32, then `2x − 1`.
fn planes(img: &Rgb, keep: &dyn Fn(usize) -> f32) -> Vec<f32> {
    let n = img.width * img.height;
    (0..3).flat_map(|c| (0..n).map(move |i| (img.data[i * 3 + c] as f32 / 255.0 * keep(i)) * 2.0 - 1.0)).collect()
}

/// Each pair's value and its 7 layer terms within 1e-4 relative of torchmetrics in float64: square,
/// non-square (96×80), masked as PIE-Bench masks the background, and 70×58, where the ceil-mode
/// pools round up.
#[test]
fn lpips_matches_torchmetrics() {
    let r = reference("lpips.safetensors");
    for (backend, device) in devices() {
        let net = Lpips::from_folder(&fixtures().join("tiny-lpips"), &device).unwrap();
        for pair in ["pair_a", "pair_b", "pair_c", "pair_d"] {
            let (a, b) = (rgb(&r[&format!("{pair}/img0")]), rgb(&r[&format!("{pair}/img1")]));
            let mask = r.get(&format!("{pair}/mask")).map(|m| m.values.clone());
            let keep = |i: usize| mask.as_ref().map_or(1.0, |m| m[i] as f32);
            let (value, layers) = pollster::block_on(net.distance(&planes(&a, &keep), &planes(&b, &keep), a.height, a.width)).unwrap();
            let want = r[&format!("{pair}/lpips64")].values[0];
            let err = (value - want).abs() / want;
            eprintln!("{backend} {pair}: LPIPS {value} vs {want}, relative error {err:e}");
            assert!(err < 1e-4, "{backend} {pair}: relative error {err:e}");
            let want_layers = &r[&format!("{pair}/layers64")].values;
            for (k, (&ours, &want)) in layers.iter().zip(want_layers).enumerate() {
                assert!((ours - want).abs() <= 1e-4 * want.abs().max(1e-6), "{backend} {pair} layer {k}: {ours} vs {want}");
            }
            // the benchmark's own path: 1 − mask keeps the unedited part
            if let Some(m) = &mask {
                let edited = Mask { side: a.width, data: m.iter().map(|&v| (v == 0.0) as u8).collect() };
                let bg = pollster::block_on(background_lpips(&net, &a, &b, &edited)).unwrap();
                assert_eq!(bg, value, "{backend}: background_lpips feeds the masked images as above");
                let all = Mask { side: a.width, data: vec![1; a.width * a.height] };
                assert!(pollster::block_on(background_lpips(&net, &a, &b, &all)).unwrap().is_nan(), "no unedited part: NaN");
            }
        }
    }
}

/// Other nets' configs, missing weights and images too small are refused in one line.
#[test]
fn lpips_refuses_what_it_cannot_compute() {
    let dir = std::env::temp_dir().join(format!("edict-lpips-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("config.json"), r#"{"net_type": "alex"}"#).unwrap();
    let device = burn::tensor::Device::flex();
    let e = Lpips::from_folder(&dir, &device).err().unwrap().to_string();
    assert!(e.contains("net_type `alex`") && e.contains("only LPIPS on SqueezeNet"), "{e}");
    std::fs::write(dir.join("config.json"), r#"{"net_type": "squeeze"}"#).unwrap();
    let e = Lpips::from_folder(&dir, &device).err().unwrap().to_string();
    assert!(e.contains("lpips-squeeze.safetensors"), "{e}");
    std::fs::remove_dir_all(&dir).unwrap();
    let net = Lpips::from_folder(&fixtures().join("tiny-lpips"), &device).unwrap();
    let e = pollster::block_on(net.distance(&[0.0; 12], &[0.0; 12], 2, 2)).unwrap_err().to_string();
    assert!(e.contains("at least 3×3"), "{e}");
    let e = pollster::block_on(net.distance(&[0.0; 27], &[0.0; 26], 3, 3)).unwrap_err().to_string();
    assert!(e.contains("two 3×3×3 images"), "{e}");
}
