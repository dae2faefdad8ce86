//! `edict bench`: UNet evaluations per second at batch 2 (classifier-free guidance), VAE encode
//! and decode times, a full EDICT edit's time and the process's peak memory, on one backend.

use std::time::Instant;

use anyhow::{Result, bail};
use burn::tensor::{Tensor, TensorCreationOptions, TensorData};
use clap::Args;
use edict_pipeline::editor::{Editor, Quiet};
use edict_pipeline::settings::{Method, Settings};
use edict_sd::device::backend::{Backend, device};
use edict_sd::config::{Precision, SdConfigs, folder_configs};
use edict_sd::model::StableDiffusion;
use serde_json::json;

use super::{ModelArgs, open};
use crate::model_source;

#[derive(Args)]
pub struct BenchArgs {
    /// Weights to load: Hugging Face id, diffusers folder or single-file checkpoint
    /// (default SD v1.5 from the hub, unless --config is given).
    #[arg(long, conflicts_with = "config")]
    model: Option<String>,
    /// Build this architecture with seeded random weights instead (no download): `sd15`, or a
    /// diffusers folder whose configs to use.
    #[arg(long)]
    config: Option<String>,
    /// wgpu or cpu.
    #[arg(long, default_value = "wgpu")]
    backend: Backend,
    /// f32 or f16.
    #[arg(long, default_value = "f32")]
    precision: Precision,
    /// Image side in pixels (square; multiple of 8); the latent is side/8.
    #[arg(long, default_value_t = 512)]
    size: u32,
    /// Timed repetitions of each UNet and VAE measurement, after one untimed warm-up.
    #[arg(long, default_value_t = 5)]
    iters: usize,
    /// Steps of the timed edit.
    #[arg(long, default_value_t = 50)]
    steps: usize,
    /// Strength of the timed edit.
    #[arg(long, default_value_t = 0.8)]
    strength: f64,
    /// Skip the full edit.
    #[arg(long)]
    no_edit: bool,
    /// Print one JSON object instead of text.
    #[arg(long)]
    json: bool,
}

pub fn bench(a: BenchArgs) -> Result<()> {
    if a.size == 0 || a.size % 8 != 0 {
        bail!("--size must be a positive multiple of 8, got {}", a.size);
    }
    if a.iters == 0 {
        bail!("--iters must be at least 1");
    }
    let settings = Settings {
        steps: a.steps,
        strength: a.strength,
        ..Settings::default()
    };
    if !a.no_edit {
        settings.validate(&edict_pipeline::samplers::schedule::Schedule::default())?;
    }
    let (backend, precision) = (a.backend, a.precision);

    let t = Instant::now();
    let (mut ed, model_name) = match &a.config {
        Some(c) => {
            let configs = match c.as_str() {
                "sd15" => SdConfigs::sd15(),
                dir => folder_configs(std::path::Path::new(dir))?,
            };
            let dev = device(backend)?;
            let model = StableDiffusion::random(configs, &dev, precision, 0)?;
            (Editor::new(model, dev), format!("random weights, {c} architecture"))
        }
        None => {
            let model = a.model.clone().unwrap_or_else(|| model_source::DEFAULT_MODEL.to_string());
            let args = ModelArgs {
                model: model.clone(),
                config: None,
                prediction: None,
                backend: a.backend,
                precision: a.precision,
                quiet: true,
            };
            (open(&args)?.editor, model)
        }
    };
    let load_s = t.elapsed().as_secs_f64();

    let c = ed.model.configs.clone();
    let size = a.size as usize;
    let latent = [2, c.unet.in_channels, size / c.vae.downscale(), size / c.vae.downscale()];
    let options = TensorCreationOptions::new(ed.device.clone()).with_dtype(precision.dtype());
    let upload = |values: Vec<f32>, shape: [usize; 4]| -> Tensor<4> {
        Tensor::from_data(TensorData::new(values, shape), options.clone())
    };
    let x = upload(pattern(latent.iter().product()), latent);
    let pixels = pattern(3 * size * size);
    let image = upload(pixels.clone(), [1, 3, size, size]);
    let (uncond, _) = ed.embed("")?;
    let (cond, _) = ed.embed("a photo of a cat")?;
    let context = Tensor::cat(vec![uncond, cond], 0);

    // every timed call ends by reading one output value back to the host, which waits for the
    // queued GPU work (a whole-tensor sum would also do, but with atomics and a kernel of its own)
    let unet = timed(a.iters, || {
        let out = ed.model.unet.forward(x.clone(), 500.0, &context);
        sync(out)
    })?;
    // one more call with the device synced around every instrumented step, to see where it goes
    let (_, parts) = edict_sd::device::profile::record(&ed.device, || ed.model.unet.forward(x.clone(), 500.0, &context))?;
    let encode = timed(a.iters, || {
        let (mean, logvar) = ed.model.vae.encode(image.clone());
        sync(mean)?;
        sync(logvar)
    })?;
    let z = upload(pattern(latent[1..].iter().product()), [1, latent[1], latent[2], latent[3]]);
    let decode = timed(a.iters, || sync(ed.model.vae.decode(z.clone())))?;

    let edit = if a.no_edit {
        None
    } else {
        let (calls, warm_ups) = (ed.unet_calls, ed.warm_up_calls);
        let t = Instant::now();
        let z = pollster::block_on(ed.encode(pixels, size, size, None))?;
        let inv = pollster::block_on(ed.invert(&z, "a photo of a cat", &settings, Method::Edict, &mut Quiet))?;
        let pair = pollster::block_on(ed.denoise(&inv, "a photo of a dog", "edit", &mut Quiet))?;
        pollster::block_on(ed.decode(&edict_pipeline::editor::Latent { values: pair.x_f64(), shape: z.shape }))?;
        Some((t.elapsed().as_secs_f64(), ed.unet_calls - calls, ed.warm_up_calls - warm_ups))
    };

    let peak = peak_rss_mib();
    let adapter = match backend {
        Backend::Wgpu => Some(edict_sd::device::backend::adapter_report()?),
        Backend::Cpu => None,
    };
    let tuned = autotune_report(backend)?;
    let footprint = c.footprint(precision, size, size);
    let mib = |b: u64| b as f64 / (1u64 << 20) as f64;
    let report = json!({
        "model": model_name,
        "backend": backend.to_string(),
        "precision": precision.to_string(),
        // the CPU kernels' threads (RAYON_NUM_THREADS, else every core); none on a GPU
        "threads": (backend == Backend::Cpu).then(rayon::current_num_threads),
        "adapter": adapter,
        // compile-time kernel selection: autotune+fusion (`gpu-tuned`), SPIR-V (`vulkan`), MSL (`metal`)
        "features": { "gpu_tuned": cfg!(feature = "gpu-tuned"), "vulkan": cfg!(feature = "vulkan"), "metal": cfg!(feature = "metal") },
        // the kernel cache's autotune decisions (gpu-tuned on wgpu; this run's and earlier ones')
        "autotune": tuned.as_ref().map(|(all, _)| all),
        "size": size,
        "unet_input": latent,
        "iters": a.iters,
        "load_s": load_s,
        "unet_batch2_s": unet,
        "unet_evals_per_s": 1.0 / unet,
        // seconds per kind of step in one call synced around each step, and that call's time
        "unet_parts_s": parts.kinds.iter().map(|(k, s)| (k.name(), *s)).chain([("other", parts.other()), ("total", parts.total)])
            .map(|(k, s)| (k.to_string(), json!(s))).collect::<serde_json::Map<_, _>>(),
        "vae_encode_s": encode,
        "vae_decode_s": decode,
        "edit_s": edit.map(|e| e.0),
        "edit_unet_calls": edit.map(|e| e.1),
        // the pipeline's warm-up calls within the edit (gpu-tuned on wgpu: one per call shape)
        "edit_warm_up_calls": edit.map(|e| e.2),
        "edit_steps": a.steps,
        "edit_strength": a.strength,
        "peak_rss_mib": peak,
        // from the configs: weights on the device, and the largest single buffer (a weight, or an
        // activation cut to edict_sd::layers::MAX_BUFFER_ELEMENTS)
        "device_weights_mib": mib(footprint.weight_bytes),
        "largest_buffer_mib": mib(footprint.largest_buffer_bytes),
    });
    if a.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(());
    }
    let threads = report["threads"].as_u64().map(|n| format!(", {n} threads")).unwrap_or_default();
    println!("model       {model_name} on {backend} ({precision}{threads}), {size}×{size} pixels, load {load_s:.1}s");
    if let Some(r) = &adapter {
        let yes = |b: bool| if b { "yes" } else { "no" };
        println!(
            "adapter     {} ({}, {}, {}), compiler {}, shader-f16 {}, subgroups {}, cooperative matrices {}, \
             largest binding {:.0} MiB, autotune+fusion {}",
            r.adapter,
            r.kind,
            r.api,
            r.driver,
            r.compiler,
            yes(r.shader_f16),
            yes(r.subgroups),
            r.cooperative_matrix_configs,
            mib(r.max_binding),
            yes(cfg!(feature = "gpu-tuned"))
        );
    }
    for line in tuned.iter().flat_map(|(_, lines)| lines) {
        println!("autotune    {line}");
    }
    println!("UNet        {:.3} s per batch-2 call {latent:?} = {:.3} evaluations/s", unet, 1.0 / unet);
    let share = |s: f64| format!("{s:.3} s ({:.0}%)", 100.0 * s / parts.total);
    let kinds: Vec<String> = parts.kinds.iter().map(|(k, s)| format!("{} {}", k.name(), share(*s))).collect();
    println!(
        "UNet parts  {}, other {} of one {:.3} s call synced around each step",
        kinds.join(", "),
        share(parts.other()),
        parts.total
    );
    println!("VAE         encode {encode:.3} s, decode {decode:.3} s");
    if let Some((s, calls, warm_ups)) = edit {
        let warm_ups = if warm_ups > 0 { format!(" + {warm_ups} warm-up") } else { String::new() };
        println!("EDICT edit  {s:.2} s ({} steps, strength {}, {calls}{warm_ups} UNet calls, encode and decode included)", a.steps, a.strength);
    }
    println!(
        "buffers     {:.0} MiB of weights on the device, the largest buffer {:.1} MiB (from the configs)",
        mib(footprint.weight_bytes),
        mib(footprint.largest_buffer_bytes)
    );
    match peak {
        Some(m) => println!("peak memory {m:.0} MiB resident on the host (VmHWM; GPU memory is not included)"),
        None => println!("peak memory unknown on this platform (read from /proc/self/status on Linux)"),
    }
    Ok(())
}

/// With autotune compiled in and on wgpu: every decision in the kernel cache (JSON), and one line
/// per tuned operation with how often each kernel won.
#[cfg(feature = "gpu-tuned")]
fn autotune_report(backend: Backend) -> Result<Option<(serde_json::Value, Vec<String>)>> {
    use std::collections::BTreeMap;
    if backend != Backend::Wgpu {
        return Ok(None);
    }
    let all = edict_sd::device::backend::tune_decisions()?;
    // per operation, how many keys each kernel won
    let mut ops: BTreeMap<&str, BTreeMap<&str, usize>> = BTreeMap::new();
    for d in &all {
        *ops.entry(&d.op).or_default().entry(&d.winner).or_default() += 1;
    }
    let mut lines: Vec<String> = ops
        .into_iter()
        .map(|(op, wins)| {
            let keys: usize = wins.values().sum();
            let mut wins: Vec<(&str, usize)> = wins.into_iter().collect();
            // most wins first; a stable sort keeps ties in name order
            wins.sort_by(|a, b| b.1.cmp(&a.1));
            let wins: Vec<String> = wins.iter().map(|(w, n)| format!("{w} ×{n}")).collect();
            format!("{op}: {keys} keys, {}", wins.join(", "))
        })
        .collect();
    lines.insert(0, format!("{} decisions in {} (this run's and earlier ones')", all.len(), edict_sd::device::backend::kernel_cache_dir().display()));
    Ok(Some((serde_json::to_value(&all)?, lines)))
}

#[cfg(not(feature = "gpu-tuned"))]
fn autotune_report(_: Backend) -> Result<Option<(serde_json::Value, Vec<String>)>> {
    Ok(None)
}

/// Median seconds of `iters` runs of `f`, after one untimed warm-up (kernel compilation,
/// autotuning, allocator growth).
fn timed(iters: usize, mut f: impl FnMut() -> Result<()>) -> Result<f64> {
    f()?;
    let mut s = (0..iters)
        .map(|_| {
            let t = Instant::now();
            f()?;
            Ok(t.elapsed().as_secs_f64())
        })
        .collect::<Result<Vec<f64>>>()?;
    s.sort_by(f64::total_cmp);
    Ok(s[s.len() / 2])
}

/// Waits for the queued work behind `t` by reading its first value back; device failures
/// become errors.
fn sync(t: Tensor<4>) -> Result<()> {
    pollster::block_on(edict_sd::device::backend::read(t.slice([0..1, 0..1, 0..1, 0..1])))?;
    Ok(())
}

/// A smooth deterministic input in [−1, 1] (the values do not change the speed).
fn pattern(n: usize) -> Vec<f32> {
    (0..n).map(|i| (i as f32 * 0.001).sin()).collect()
}

/// The process's peak resident set size (Linux `VmHWM`), in MiB.
fn peak_rss_mib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let kib: f64 = status.lines().find_map(|l| l.strip_prefix("VmHWM:"))?.trim().trim_end_matches("kB").trim().parse().ok()?;
    Some(kib / 1024.0)
}
