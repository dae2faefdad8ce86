//! Shared helpers of the integration tests: fixture paths, reference tensors, devices.
#![allow(dead_code)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use burn::tensor::{Device, Tensor};
use edict_sd::SdError;
use edict_sd::device::backend::{Backend, device};
use edict_sd::checkpoint::files::ModelFiles;
use edict_sd::config::Precision;
use edict_sd::model::StableDiffusion;
use safetensors::tensor::TensorView;
use safetensors::{Dtype, SafeTensors};

/// The checkout's root. `cargo test` names it when it runs the tests; the compile-time value is
/// only a fallback, because a build cache shared between clones keeps the path of whichever
/// clone compiled the binary.
pub fn root() -> PathBuf {
    std::env::var_os("CARGO_MANIFEST_DIR").map_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")), PathBuf::from)
}

pub fn fixtures() -> PathBuf {
    root().join("tests/fixtures")
}

pub fn tiny_sd() -> PathBuf {
    fixtures().join("tiny-sd")
}

/// A reference tensor as f64 with its shape.
pub struct Ref {
    pub values: Vec<f64>,
    pub shape: Vec<usize>,
}

/// Reads every tensor of a reference file as f64 (f32, f64, i64 and u8 are stored there).
pub fn reference(name: &str) -> HashMap<String, Ref> {
    let path = fixtures().join("reference").join(name);
    let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let st = SafeTensors::deserialize(&bytes).expect("reference file parses");
    st.tensors()
        .into_iter()
        .map(|(k, v)| {
            let d = v.data();
            let values = match v.dtype() {
                Dtype::F32 => d.chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().unwrap()) as f64).collect(),
                Dtype::F64 => d.chunks_exact(8).map(|c| f64::from_le_bytes(c.try_into().unwrap())).collect(),
                Dtype::I64 => d.chunks_exact(8).map(|c| i64::from_le_bytes(c.try_into().unwrap()) as f64).collect(),
                Dtype::U8 => d.iter().map(|&b| b as f64).collect(),
                other => panic!("{k}: unexpected dtype {other:?}"),
            };
            (k, Ref { values, shape: v.shape().to_vec() })
        })
        .collect()
}

/// The CPU backend and wgpu (lavapipe where there is no GPU).
pub fn devices() -> Vec<(Backend, Device)> {
    [Backend::Cpu, Backend::Wgpu]
        .into_iter()
        .map(|b| (b, device(b).unwrap_or_else(|e| panic!("{b}: {e}"))))
        .collect()
}

pub fn host<const D: usize>(t: Tensor<D>) -> Vec<f64> {
    t.into_data().iter::<f64>().collect()
}

pub fn upload<const D: usize>(values: &[f64], shape: [usize; D], device: &Device) -> Tensor<D> {
    let v: Vec<f32> = values.iter().map(|&x| x as f32).collect();
    Tensor::from_data(burn::tensor::TensorData::new(v, shape), device)
}

pub fn max_abs_diff(a: &[f64], b: &[f64]) -> f64 {
    assert_eq!(a.len(), b.len(), "length mismatch");
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f64::max)
}

/// PSNR of two images in [−1, 1] (peak-to-peak 2), in dB.
pub fn psnr(a: &[f64], b: &[f64]) -> f64 {
    let mse = a.iter().zip(b).map(|(x, y)| (x - y) * (x - y)).sum::<f64>() / a.len() as f64;
    10.0 * (4.0 / mse).log10()
}

pub fn max_abs(a: &[f64]) -> f64 {
    a.iter().map(|x| x.abs()).fold(0.0, f64::max)
}

/// One query row of `softmax(q kᵀ / √d) v` in float64, for the (batch, head) whose values start
/// at `base` in row-major `[…, n, d]` q, k and v.
pub fn attention_row(q: &[f64], k: &[f64], v: &[f64], base: usize, row: usize, n: usize, d: usize) -> Vec<f64> {
    let qr = &q[base + row * d..][..d];
    let scores: Vec<f64> = (0..n).map(|j| (0..d).map(|c| qr[c] * k[base + j * d + c]).sum::<f64>() / (d as f64).sqrt()).collect();
    let m = scores.iter().cloned().fold(f64::MIN, f64::max);
    let w: Vec<f64> = scores.iter().map(|s| (s - m).exp()).collect();
    let z: f64 = w.iter().sum();
    (0..d).map(|c| (0..n).map(|j| w[j] * v[base + j * d + c]).sum::<f64>() / z).collect()
}

/// A model loaded in f16 against a reference file's `out_t981` for `sample` and
/// `encoder_hidden_states`, inputs cast to f16: (max abs error, output scale).
pub fn unet_f16_error(sd: &StableDiffusion, r: &HashMap<String, Ref>, device: &Device) -> (f64, f64) {
    let s = &r["sample"].shape;
    let c = &r["encoder_hidden_states"].shape;
    let x = upload(&r["sample"].values, [s[0], s[1], s[2], s[3]], device).cast(burn::tensor::DType::F16);
    let ctx: Tensor<3> = upload(&r["encoder_hidden_states"].values, [c[0], c[1], c[2]], device).cast(burn::tensor::DType::F16);
    let want = &r["out_t981"].values;
    (max_abs_diff(&host(sd.unet.forward(x, 981.0, &ctx)), want), max_abs(want))
}

/// A copy of the fixture folder that a test may break.
pub struct Model(pub PathBuf);

impl Model {
    pub fn copy(name: &str) -> Self {
        let dst = std::env::temp_dir().join(format!("edict-model-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dst);
        copy_dir(&tiny_sd(), &dst);
        Self(dst)
    }
    pub fn file(&self, rel: &str) -> PathBuf {
        self.0.join(rel)
    }
    pub fn load(&self) -> Result<StableDiffusion, SdError> {
        let files = ModelFiles::from_folder(&self.0, Precision::F32)?;
        StableDiffusion::load(files, &Device::flex(), Precision::F32)
    }
    /// Rewrites one safetensors file with `edit` applied to its tensors.
    pub fn rewrite(&self, rel: &str, edit: impl FnOnce(&mut Vec<(String, Dtype, Vec<usize>, Vec<u8>)>)) {
        let path = self.file(rel);
        let bytes = std::fs::read(&path).unwrap();
        let st = SafeTensors::deserialize(&bytes).unwrap();
        let mut t: Vec<_> = st
            .tensors()
            .into_iter()
            .map(|(k, v)| (k, v.dtype(), v.shape().to_vec(), v.data().to_vec()))
            .collect();
        edit(&mut t);
        let views: Vec<_> = t
            .iter()
            .map(|(k, d, s, b)| (k.clone(), TensorView::new(*d, s.clone(), b).unwrap()))
            .collect();
        safetensors::serialize_to_file(views, None, &path).unwrap();
    }
    /// Changes the first value of the f32 tensor `key` by 1%, as a fine-tune would.
    pub fn perturb(&self, rel: &str, key: &str) {
        self.rewrite(rel, |t| {
            let (_, dtype, _, bytes) = t.iter_mut().find(|(k, ..)| k == key).expect("key in fixture");
            assert_eq!(*dtype, Dtype::F32);
            let v = f32::from_le_bytes(bytes[..4].try_into().unwrap());
            bytes[..4].copy_from_slice(&(v * 1.01 + 0.01).to_le_bytes());
        });
    }
}

impl Drop for Model {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

pub fn copy_dir(src: &Path, dst: &Path) {
    std::fs::create_dir_all(dst).unwrap();
    for e in std::fs::read_dir(src).unwrap() {
        let e = e.unwrap();
        let to = dst.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &to);
        } else {
            std::fs::copy(e.path(), to).unwrap();
        }
    }
}
