//! PIE-Bench's structure distance: torchvision's antialiased resize, DINO ViT-B/8's last-layer
//! keys and their self-similarity, against tests/reference/make_dino.py (DINO's architecture via
//! timm, checked there against DINO's own code). The ViT's weights are the seeded random values
//! `VarBuilder::random` makes, which the script regenerates bit for bit, so no 86 M-value file
//! is committed.

use burn::tensor::{DType, Device, Tensor, TensorData};
use edict_pipeline::eval::pie_bench::{STRUCTURE_SIDE, resize_bilinear_aa, structure_distance};
use edict_pipeline::io::image_io::Rgb;
use edict_sd::checkpoint::weights::VarBuilder;
use edict_sd::models::dino_vit::{DinoConfig, DinoVit, self_similarity};

use crate::common::*;

const SEED: u64 = 7;

fn net(device: &Device) -> DinoVit {
    DinoVit::load(&VarBuilder::random(SEED, device, DType::F32), DinoConfig::vit_b8()).unwrap()
}

fn rgb(r: &Ref) -> Rgb {
    Rgb { width: r.shape[1], height: r.shape[0], data: r.values.iter().map(|&v| v as u8).collect() }
}

/// `[3, h, w]` planes of an image's first `rows` rows, as 0–255 floats.
fn planes(img: &Rgb, rows: usize) -> Vec<f32> {
    let n = img.width * rows;
    (0..3).flat_map(|c| (0..n).map(move |i| img.data[i * 3 + c] as f32)).collect()
}

fn rel(ours: &[f64], want: &[f64]) -> f64 {
    max_abs_diff(ours, want) / max_abs(want)
}

/// The weights the script computed with are the ones `VarBuilder::random` hands out.
#[test]
fn random_weights_are_the_scripts() {
    let r = reference("dino.safetensors");
    let vb = VarBuilder::random(SEED, &Device::flex(), DType::F32);
    let shapes: [(&str, &[usize]); 9] = [
        ("cls_token", &[1, 1, 768]),
        ("pos_embed", &[1, 785, 768]),
        ("patch_embed.proj.weight", &[768, 3, 8, 8]),
        ("patch_embed.proj.bias", &[768]),
        ("blocks.0.norm1.weight", &[768]),
        ("blocks.0.norm1.bias", &[768]),
        ("blocks.3.mlp.fc1.bias", &[3072]),
        ("blocks.11.attn.qkv.weight", &[2304, 768]),
        ("norm.weight", &[768]),
    ];
    for (key, shape) in shapes {
        let ours: Vec<f64> = vb.host_f32(key, shape).unwrap()[..8].iter().map(|&v| v as f64).collect();
        assert_eq!(ours, r[&format!("generator/{key}")].values, "{key}");
    }
}

/// torchvision's `Resize(224, max_size=480)` on float tensors, bit for bit: shrinking (256² and
/// 240×256, two scales) and enlarging (96²).
#[test]
fn resize_is_torchvisions() {
    let r = reference("dino.safetensors");
    let (a, b) = (rgb(&r["pair_a/img0"]), rgb(&r["pair_b/img0"]));
    let cases = [(&a, 240, 224, 238, "resize/nonsquare_out"), (&b, 96, 224, 224, "resize/up_out")];
    for (img, rows, oh, ow, key) in cases {
        let ours: Vec<f64> = resize_bilinear_aa(&planes(img, rows), 3, rows, img.width, oh, ow).into_iter().map(f64::from).collect();
        let want = &r[key].values;
        eprintln!("{key}: max abs difference {:e}", max_abs_diff(&ours, want));
        assert_eq!(&ours, want, "{key}");
    }
    // with ImageNet's normalisation of 0–255 values, as the metric feeds the ViT
    let ours = resize_bilinear_aa(&planes(&a, 256), 3, 256, 256, STRUCTURE_SIDE, STRUCTURE_SIDE);
    let (mean, std) = ([0.485f32, 0.456, 0.406], [0.229f32, 0.224, 0.225]);
    let ours: Vec<f64> = ours.chunks(STRUCTURE_SIDE * STRUCTURE_SIDE).enumerate().flat_map(|(c, p)| p.iter().map(move |v| ((v - mean[c]) / std[c]) as f64)).collect();
    assert_eq!(ours, r["pair_a/resized0"].values, "pair_a/resized0");
}

/// The ViT on an O(1) input (where every block matters; the benchmark's 0–255 input drowns them
/// in the patch embedding): the last block's keys and their self-similarity within 1e-4 of the
/// float64 reference, on the CPU. (The layers are CLIP's, tested on wgpu in `clip.rs`; a ViT-B/8
/// on lavapipe costs a minute of the CI run: set EDICT_DINO_WGPU=1 to add it.)
#[test]
fn keys_and_self_similarity_match_dino() {
    let r = reference("dino.safetensors");
    let unit: Vec<f32> = r["pair_a/resized0"].values.iter().map(|&v| (v as f32 / 255.0) - 2.0).collect();
    let wgpu = std::env::var_os("EDICT_DINO_WGPU").is_some();
    for (backend, device) in devices().into_iter().filter(|(b, _)| wgpu || *b == edict_sd::device::backend::Backend::Cpu) {
        let net = net(&device);
        let x = Tensor::<4>::from_data(TensorData::new(unit.clone(), [1, 3, 224, 224]), &device);
        let keys = net.last_keys(x).unwrap();
        let head = host(keys.clone().slice([0..4, 0..768]));
        let sim = host(self_similarity(keys).slice([0..4, 0..785]));
        let (ek, es) = (rel(&head, &r["unit/keys_head64"].values), rel(&sim, &r["unit/sim_rows64"].values));
        eprintln!("{backend}: keys {ek:e}, self-similarity {es:e} (relative to the largest value)");
        assert!(ek < 1e-4 && es < 1e-4, "{backend}: keys {ek:e}, self-similarity {es:e}");
    }
}

/// The structure distance of both pairs, end to end from the uint8 images, within 1e-4 of the
/// float64 reference (CPU).
#[test]
fn structure_distance_matches_the_benchmark() {
    let r = reference("dino.safetensors");
    let device = Device::flex();
    let net = net(&device);
    for pair in ["pair_a", "pair_b"] {
        let (a, b) = (rgb(&r[&format!("{pair}/img0")]), rgb(&r[&format!("{pair}/img1")]));
        let ours = pollster::block_on(structure_distance(&net, &a, &b)).unwrap();
        let want = r[&format!("{pair}/distance64")].values[0];
        let err = (ours - want).abs() / want;
        eprintln!("{pair}: structure distance {ours} vs {want}, relative error {err:e}");
        assert!(err < 1e-4, "{pair}: relative error {err:e}");
    }
    let a = rgb(&r["pair_a/img0"]);
    let wide = Rgb { width: 128, height: 512, data: a.data.clone() };
    let e = pollster::block_on(structure_distance(&net, &wide, &wide)).unwrap_err().to_string();
    assert!(e.contains("needs square images, got 128×512"), "{e}");
    let small = Rgb { width: 128, height: 128, data: a.data[..128 * 128 * 3].to_vec() };
    let e = pollster::block_on(structure_distance(&net, &a, &small)).unwrap_err().to_string();
    assert!(e.contains("two images of one size"), "{e}");
}
