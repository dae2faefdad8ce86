//! Shared helpers of the integration tests: fixture paths, reference tensors, devices.
#![allow(dead_code)]

use std::collections::HashMap;
use std::path::PathBuf;

use burn::tensor::{Device, Tensor};
use edict_sd::backend::{Backend, device};
use safetensors::{Dtype, SafeTensors};

pub fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

pub fn tiny_sd() -> PathBuf {
    fixtures().join("tiny-sd")
}

/// A reference tensor as f64 with its shape.
pub struct Ref {
    pub values: Vec<f64>,
    pub shape: Vec<usize>,
}

/// Reads every tensor of a reference file as f64 (f32, f64 and i64 are stored there).
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

pub fn max_abs(a: &[f64]) -> f64 {
    a.iter().map(|x| x.abs()).fold(0.0, f64::max)
}
