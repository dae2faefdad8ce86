//! Micro-benchmarks of the network pieces on small shapes, so regressions show:
//! `cargo bench --bench networks` (add `-- cpu` or `-- wgpu` to run one backend).
//!
//! Every timed call ends by reading a value back to the host, so queued GPU work is counted;
//! each benchmark runs once untimed first (kernel compilation, autotuning).

use burn::nn::GroupNormConfig;
use burn::tensor::{Device, Distribution, Tensor};
use divan::Bencher;
use edict_sd::models::attention::scaled_dot_product;
use edict_sd::device::backend::{Backend, device};
use edict_sd::checkpoint::files::ModelFiles;
use edict_sd::config::Precision;
use edict_sd::model::StableDiffusion;

const BACKENDS: [Backend; 2] = [Backend::Cpu, Backend::Wgpu];

fn main() {
    divan::main();
}

fn dev(backend: Backend) -> Device {
    device(backend).unwrap_or_else(|e| panic!("{backend}: {e}"))
}

fn normal<const D: usize>(shape: [usize; D], dev: &Device) -> Tensor<D> {
    Tensor::random(shape, Distribution::Normal(0.0, 1.0), dev)
}

/// The first value on the host: waits for the queued work (`into_data` alone does not, its bytes
/// are read lazily), without a whole-tensor reduction.
fn read<const D: usize>(t: Tensor<D>) -> Vec<f32> {
    t.flatten::<1>(0, D - 1).slice([0..1]).into_data().try_to_vec::<f32>().expect("f32 output")
}

/// Self-attention at SD's 16×16 level: batch 2 (guidance), 8 heads, 256 tokens of width 40.
#[divan::bench(args = BACKENDS)]
fn attention(bencher: Bencher, backend: Backend) {
    let dev = dev(backend);
    let [q, k, v] = [0; 3].map(|_| normal([2, 8, 256, 40], &dev));
    let run = || read(scaled_dot_product(q.clone(), k.clone(), v.clone(), false, false, None));
    run();
    bencher.bench_local(run);
}

/// 3×3 convolution, 128 → 128 channels on 16×16, batch 2, as the networks run it
/// (`edict_sd::layers::nn::conv_forward`: the CPU kernels, or im2col + matmul on wgpu) ...
#[divan::bench(args = BACKENDS)]
fn conv3x3(bencher: Bencher, backend: Backend) {
    let (conv, x) = conv_case(backend);
    let run = || read(edict_sd::layers::nn::conv_forward(&conv, x.clone()));
    run();
    bencher.bench_local(run);
}

/// ... and as Burn's own conv2d runs it, the baseline.
#[divan::bench(args = BACKENDS)]
fn conv3x3_burn(bencher: Bencher, backend: Backend) {
    let (conv, x) = conv_case(backend);
    let run = || read(conv.forward(x.clone()));
    run();
    bencher.bench_local(run);
}

/// The conv as the models load it (`edict_sd::layers::nn::conv2d`: tap-major weights on the CPU backend).
fn conv_case(backend: Backend) -> (burn::nn::conv::Conv2d, Tensor<4>) {
    let dev = dev(backend);
    let vb = edict_sd::checkpoint::weights::VarBuilder::random(0, &dev, burn::tensor::DType::F32);
    let conv = edict_sd::layers::nn::conv2d(&vb, edict_sd::layers::nn::ConvSpec::k3(128, 128)).expect("random weights");
    (conv, normal([2, 128, 16, 16], &dev))
}

/// GroupNorm, 32 groups over 320 channels on 16×16, batch 2.
#[divan::bench(args = BACKENDS)]
fn group_norm(bencher: Bencher, backend: Backend) {
    let dev = dev(backend);
    let norm = GroupNormConfig::new(32, 320).init(&dev);
    let x = normal([2, 320, 16, 16], &dev);
    let run = || read(norm.forward(x.clone()));
    run();
    bencher.bench_local(run);
}

/// One UNet call of the tiny fixture model (SD1.x block layout) on a batch-2 8×8 latent.
#[divan::bench(args = BACKENDS, sample_count = 20)]
fn unet_tiny(bencher: Bencher, backend: Backend) {
    let dev = dev(backend);
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tiny-sd");
    let files = ModelFiles::from_folder(&dir, Precision::F32).expect("tiny fixture model");
    let model = StableDiffusion::load(files, &dev, Precision::F32).expect("loads");
    let x = normal([2, 4, 8, 8], &dev);
    let context = normal([2, 77, model.configs.unet.cross_attention_dim], &dev);
    let run = || read(model.unet.forward(x.clone(), 500.0, &context));
    run();
    bencher.bench_local(run);
}
