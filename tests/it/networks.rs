//! The three SD networks against diffusers/transformers reference outputs on the tiny fixture
//! model (tests/reference/make_fixtures.py), on the CPU backend and on wgpu.


use burn::tensor::{Device, Tensor};
use crate::common::*;
use edict_sd::layers::MAX_BUFFER_ELEMENTS;
use edict_sd::checkpoint::files::ModelFiles;
use edict_sd::config::Precision;
use edict_sd::model::StableDiffusion;

fn load(device: &Device, precision: Precision) -> StableDiffusion {
    let files = ModelFiles::from_folder(&tiny_sd(), precision).expect("fixture folder");
    StableDiffusion::load(files, device, precision).expect("fixture model loads")
}

fn load_single_file(device: &Device) -> StableDiffusion {
    let files = ModelFiles::from_single_file(&fixtures().join("tiny-sd.safetensors"), Some(&tiny_sd())).unwrap();
    StableDiffusion::load(files, device, Precision::F32).expect("single file loads")
}

fn text_ids(r: &std::collections::HashMap<String, Ref>, i: usize) -> Vec<u32> {
    r[&format!("ids_{i}")].values.iter().map(|&v| v as u32).collect()
}

#[test]
fn text_encoder_matches_transformers() {
    let r = reference("text_encoder.safetensors");
    for (backend, device) in devices() {
        let sd = load(&device, Precision::F32);
        assert!(sd.unused_keys.is_empty(), "{:?}", sd.unused_keys);
        for i in 0..4 {
            let ids = text_ids(&r, i);
            let out = host(sd.text_encoder.forward(&ids).unwrap());
            let err = max_abs_diff(&out, &r[&format!("hidden_{i}")].values);
            eprintln!("{backend} text encoder prompt {i}: max abs error {err:e}");
            assert!(err <= 1e-4, "{backend} prompt {i}: max abs error {err:e}");
        }
    }
}

/// transformers 5 saves `CLIPTextModel` without the `text_model.` prefix: such a folder loads
/// and matches transformers as well.
#[test]
fn text_encoder_saved_without_the_text_model_prefix() {
    let r = reference("text_encoder.safetensors");
    let m = Model::copy("transformers5");
    m.rewrite("text_encoder/model.safetensors", |t| {
        for (k, ..) in t.iter_mut() {
            *k = k.strip_prefix("text_model.").expect("fixture has the old layout").to_string();
        }
    });
    let sd = m.load().unwrap();
    assert!(sd.unused_keys.is_empty(), "{:?}", sd.unused_keys);
    for i in 0..4 {
        let out = host(sd.text_encoder.forward(&text_ids(&r, i)).unwrap());
        let err = max_abs_diff(&out, &r[&format!("hidden_{i}")].values);
        assert!(err <= 1e-4, "prompt {i}: max abs error {err:e}");
    }
    assert_eq!(sd.fingerprint, load(&Device::flex(), Precision::F32).fingerprint);
}

fn unet_case(sd: &StableDiffusion, r: &std::collections::HashMap<String, Ref>, device: &Device, wide: bool, t: usize) -> (Vec<f64>, Vec<f64>) {
    let (x, ctx, out) = if wide {
        ("sample_wide", "encoder_hidden_states_wide", format!("out_wide_t{t}"))
    } else {
        ("sample", "encoder_hidden_states", format!("out_t{t}"))
    };
    let s = &r[x].shape;
    let x = upload(&r[x].values, [s[0], s[1], s[2], s[3]], device);
    let c = &r[ctx].shape;
    let ctx: Tensor<3> = upload(&r[ctx].values, [c[0], c[1], c[2]], device);
    (host(sd.unet.forward(x, t as f64, &ctx)), r[&out].values.clone())
}

#[test]
fn unet_matches_diffusers() {
    let r = reference("unet.safetensors");
    for (backend, device) in devices() {
        let sd = load(&device, Precision::F32);
        for (wide, t) in [(false, 981), (false, 1), (true, 981)] {
            let (ours, want) = unet_case(&sd, &r, &device, wide, t);
            let err = max_abs_diff(&ours, &want);
            let scale = max_abs(&want);
            eprintln!("{backend} unet t={t} wide={wide}: max abs error {err:e}, scale {scale:.3}");
            assert!(err <= 1e-4 * scale, "{backend} t={t} wide={wide}: max abs error {err:e} (scale {scale})");
        }
    }
}

/// Also with activations cut into row bands of 1000 elements (one row each) and of 3000 (2 to 11
/// rows, odd counts included, which meet the encoder's stride-2 bottom-padded downsampling):
/// how full-size images keep every buffer under WebGPU's 128 MiB limit.
#[test]
fn vae_matches_diffusers() {
    let r = reference("vae.safetensors");
    for (backend, device) in devices() {
        let mut sd = load(&device, Precision::F32);
        for limit in [MAX_BUFFER_ELEMENTS, 1000, 3000] {
            sd.vae.band_elements = limit;
            let image = upload(&r["image"].values, [1, 3, 64, 64], &device);
            let (mean, logvar) = sd.vae.encode(image);
            for (name, ours) in [("posterior_mean", host(mean)), ("posterior_logvar", host(logvar))] {
                let want = &r[name].values;
                let err = max_abs_diff(&ours, want);
                eprintln!("{backend} vae {name}, bands of {limit}: max abs error {err:e}, scale {:.3}", max_abs(want));
                assert!(err <= 1e-4 * max_abs(want), "{backend} {name}, bands of {limit}: max abs error {err:e}");
            }
            let latent = upload(&r["latent"].values, [1, 4, 8, 8], &device);
            let want = &r["decoded"].values;
            let err = max_abs_diff(&host(sd.vae.decode(latent)), want);
            eprintln!("{backend} vae decode, bands of {limit}: max abs error {err:e}, scale {:.3}", max_abs(want));
            assert!(err <= 1e-4 * max_abs(want), "{backend} decode, bands of {limit}: max abs error {err:e}");
        }
    }
}

#[test]
fn single_file_checkpoint_equals_the_folder() {
    let r = reference("unet.safetensors");
    let te = reference("text_encoder.safetensors");
    let device = burn::tensor::Device::flex();
    let folder = load(&device, Precision::F32);
    let single = load_single_file(&device);
    // real checkpoints carry position_ids, betas, … which are ignored (listed, not loaded)
    assert!(single.unused_keys.iter().all(|k| !k.starts_with("unet:") || k.contains("betas") || k.contains("alphas")), "{:?}", single.unused_keys);
    let a = unet_case(&folder, &r, &device, false, 981).0;
    let b = unet_case(&single, &r, &device, false, 981).0;
    assert_eq!(a, b, "UNet outputs differ");
    let ids = text_ids(&te, 1);
    assert_eq!(host(folder.text_encoder.forward(&ids).unwrap()), host(single.text_encoder.forward(&ids).unwrap()));
    let latent = upload(&reference("vae.safetensors")["latent"].values, [1, 4, 8, 8], &device);
    assert_eq!(host(folder.vae.decode(latent.clone())), host(single.vae.decode(latent)));
}

#[test]
fn unet_is_bit_identical_across_calls() {
    let r = reference("unet.safetensors");
    for (backend, device) in devices() {
        let sd = load(&device, Precision::F32);
        let first = unet_case(&sd, &r, &device, false, 981).0; // warm-up: kernels compiled
        for _ in 0..3 {
            assert_eq!(unet_case(&sd, &r, &device, false, 981).0, first, "{backend}: UNet not deterministic");
        }
    }
}

/// With autotune compiled in, the kernel cache holds a UNet call's decisions, each readable with
/// its key, winner and time (what `edict bench` lists).
#[cfg(feature = "gpu-tuned")]
#[test]
fn tune_decisions_are_readable() {
    let r = reference("unet.safetensors");
    let device = edict_sd::device::backend::device(edict_sd::device::backend::Backend::Wgpu).unwrap();
    unet_case(&load(&device, Precision::F32), &r, &device, false, 981);
    let all = edict_sd::device::backend::tune_decisions().unwrap();
    let matmuls: Vec<_> = all.iter().filter(|d| d.op.contains("matmul")).collect();
    assert!(!matmuls.is_empty(), "no matmul decisions among {} decisions", all.len());
    for d in matmuls {
        assert!(d.key.is_object() && d.median_s.is_some() && !d.winner.starts_with("candidate "), "{d:?}");
    }
}

/// `edict bench`'s breakdown: a recorded call computes the same bits as a plain one, every kind
/// of step is seen, and the kinds add up to no more than the call.
#[test]
fn recorded_unet_call_is_unchanged_and_sees_every_kind() {
    let r = reference("unet.safetensors");
    for (backend, device) in devices() {
        let sd = load(&device, Precision::F32);
        let plain = unet_case(&sd, &r, &device, false, 981).0;
        let (recorded, parts) = edict_sd::device::profile::record(&device, || unet_case(&sd, &r, &device, false, 981).0).unwrap();
        assert_eq!(recorded, plain, "{backend}: recording changed the UNet's output");
        use edict_sd::device::profile::Kind;
        for kind in [Kind::Conv, Kind::Attention, Kind::Matmul, Kind::Norm] {
            assert!(parts.kinds.get(&kind).is_some_and(|s| *s > 0.0), "{backend}: no time for {kind:?}: {parts:?}");
        }
        assert!(parts.kinds.values().sum::<f64>() <= parts.total, "{backend}: kinds exceed the call: {parts:?}");
    }
}

/// The CPU backend's threaded kernels (rayon) split work by thread count: the bits must not
/// depend on it, or an inversion made on one machine would not reproduce on another.
#[test]
fn cpu_results_do_not_depend_on_the_thread_count() {
    let r = reference("unet.safetensors");
    let device = Device::flex();
    let sd = load(&device, Precision::F32);
    // a 16×16 latent decodes to 128²: the VAE's convolutions are large enough to be threaded
    let latent: Vec<f64> = (0..4 * 16 * 16).map(|i| (i * 37 % 101) as f64 / 50.0 - 1.0).collect();
    let run = || {
        let unet = unet_case(&sd, &r, &device, true, 981).0;
        let vae = host(sd.vae.decode(upload(&latent, [1, 4, 16, 16], &device)));
        (unet, vae)
    };
    let mut first = None;
    for threads in [1, 2, 3, 4] {
        let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
        let out = pool.install(run);
        match &first {
            None => first = Some(out),
            Some(f) => {
                assert!(out.0 == f.0, "UNet output with {threads} threads differs from 1 thread");
                assert!(out.1 == f.1, "VAE decode with {threads} threads differs from 1 thread");
            }
        }
    }
}

/// f16 weights kept in f16 on the device: a looser, documented bound (2% of the output scale).
/// On wgpu (lavapipe has shader-f16) the convolutions run as im2col + matmul in f16 too.
#[test]
fn unet_in_f16_is_close() {
    let r = reference("unet.safetensors");
    for (backend, device) in devices() {
        let sd = load(&device, Precision::F16);
        let (err, scale) = unet_f16_error(&sd, &r, &device);
        eprintln!("{backend} unet f16: max abs error {err:e}, scale {scale:.3}");
        assert!(err <= 2e-2 * scale, "{backend}: f16 max abs error {err:e}");
    }
}

/// Attention in f16 at an SD-like shape that runs in two query chunks (SD 1.5's head size, 1024
/// tokens: a 64² image's first level) against a float64 computation of the formula on the same
/// f16 inputs, and bit-identical when repeated. In a `gpu-tuned` build on wgpu this is Burn's
/// fused op with autotune (`fuses_attention`); elsewhere the matmul + softmax kernels.
#[test]
fn attention_in_f16_matches_the_formula() {
    use burn::tensor::DType;
    use edict_sd::models::attention::{fuses_attention, scaled_dot_product};
    let (b, h, n, d) = (2, 8, 1024, 40);
    // multiples of 1/64 in [-1.5, 1.5]: exact in f16
    let noise = |seed: usize| -> Vec<f64> { (0..b * h * n * d).map(|i| ((i * seed + i / 7) % 193) as f64 / 64.0 - 1.5).collect() };
    let (q, k, v) = (noise(31), noise(57), noise(89));
    for (backend, device) in devices() {
        let fused = fuses_attention(&device, DType::F16, false, false, false);
        assert_eq!(fused, cfg!(feature = "gpu-tuned") && backend == edict_sd::device::backend::Backend::Wgpu);
        let f16 = |x: &[f64]| upload(x, [b, h, n, d], &device).cast(DType::F16);
        let run = || host(scaled_dot_product(f16(&q), f16(&k), f16(&v), false, false, None));
        let out = run();
        assert!(out == run(), "{backend}: f16 attention (fused: {fused}) not bit-identical when repeated");
        let mut err: f64 = 0.0;
        // rows in both chunks of a few (batch, head) pairs
        for (bi, hi) in [(0, 0), (1, 5)] {
            let base = (bi * h + hi) * n * d;
            for row in [0, 300, 511, 512, 1023] {
                let want = attention_row(&q, &k, &v, base, row, n, d);
                err = err.max(max_abs_diff(&out[base + row * d..][..d], &want));
            }
        }
        eprintln!("{backend} attention in f16 (fused: {fused}): max abs error {err:e}");
        // f16 rounds scores of up to 6 by ~3e-3 (unfused) and probabilities by 2^-11 relative:
        // a few 1e-5 on these averages of values within ±1.5; a wrong chunk or scale is ~1e-2
        assert!(err <= 1e-4, "{backend}: f16 attention (fused: {fused}) max abs error {err:e}");
    }
}

/// SD 1.5's text encoder in f32 runs on an adapter with WebGPU's default limits (lavapipe has
/// them: 128 MiB per storage buffer): its 145 MiB token table stays on the host.
#[test]
fn sd15_text_encoder_in_f32_fits_default_gpu_limits() {
    use edict_sd::models::clip_text::{ClipConfig, ClipTextModel};
    let device = edict_sd::device::backend::device(edict_sd::device::backend::Backend::Wgpu).unwrap();
    let vb = edict_sd::checkpoint::weights::VarBuilder::random(7, &device, burn::tensor::DType::F32);
    let te = ClipTextModel::load(&vb, &ClipConfig::sd15()).unwrap();
    let ids: Vec<u32> = (0..77).map(|i| if i == 0 { 49406 } else { 49407 - i % 2 }).collect();
    let out = pollster::block_on(edict_sd::device::backend::read(te.forward(&ids).unwrap())).unwrap();
    assert_eq!(out.len(), 77 * 768);
    assert!(out.iter().all(|v| v.is_finite()));
}

/// The UNet's feed-forward cuts a projection over [`MAX_BUFFER_ELEMENTS`] into batch rows and,
/// past one row, token chunks: the pieces line up with the plain computation of single tokens,
/// and a row's bits do not depend on the batch it runs in.
#[test]
fn feed_forward_in_pieces_equals_the_whole() {
    use burn::nn::LinearConfig;
    use burn::tensor::Distribution;
    use edict_sd::models::attention::FeedForward;
    for (backend, device) in devices() {
        let dim = 16;
        let ff = FeedForward {
            proj: LinearConfig::new(dim, 8 * dim).init(&device),
            out: LinearConfig::new(4 * dim, dim).init(&device),
        };
        // one row's projection just over the budget: two token chunks per row
        let n = MAX_BUFFER_ELEMENTS / (8 * dim) + 1000;
        let x = Tensor::<3>::random([2, n, dim], Distribution::Normal(0.0, 1.0), &device);
        let both = host(ff.forward(x.clone()));
        let second = host(ff.forward(x.clone().narrow(0, 1, 1)));
        assert!(both[n * dim..] == second[..], "{backend}: a row differs with the batch");
        for t in [0, n - 1001, n - 1000, n - 1] {
            let alone = host(ff.forward(x.clone().narrow(0, 1, 1).narrow(1, t, 1)));
            let err = max_abs_diff(&second[t * dim..(t + 1) * dim], &alone);
            assert!(err <= 1e-5 * max_abs(&alone), "{backend}: token {t} is {err:e} from its plain computation");
        }
    }
}
