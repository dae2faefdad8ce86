//! `edict bench`'s output: one JSON object (`--json`) or lines of text, with the adapter, the
//! autotune decisions and the configs' buffer sizes beside the measurements.

use anyhow::Result;
use edict_sd::config::SdConfigs;
use edict_sd::device::backend::Backend;
use serde_json::json;

use super::BenchArgs;
use super::measure::{EditRun, Measurements};

/// Prints what `bench` measured for the model `model_name` (loaded in `load_s` seconds) with
/// `configs`, as `a.json` asks.
pub fn print(a: &BenchArgs, configs: &SdConfigs, model_name: &str, load_s: f64, m: &Measurements) -> Result<()> {
    let (backend, precision) = (a.backend, a.precision);
    let size = a.size as usize;
    let Measurements { latent, unet, ref parts, encode, decode, edit, peak_rss_mib: peak } = *m;
    let adapter = match backend {
        Backend::Wgpu => Some(edict_sd::device::backend::adapter_report()?),
        Backend::Cpu => None,
    };
    let tuned = autotune_report(backend)?;
    let footprint = configs.footprint(precision, size, size);
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
        "edit_s": edit.map(|e| e.seconds),
        "edit_unet_calls": edit.map(|e| e.unet_calls),
        // the pipeline's warm-up calls within the edit (gpu-tuned on wgpu: one per call shape)
        "edit_warm_up_calls": edit.map(|e| e.warm_up_calls),
        "edit_method": a.method,
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
    if let Some(EditRun { seconds: s, unet_calls: calls, warm_up_calls: warm_ups }) = edit {
        let warm_ups = if warm_ups > 0 { format!(" + {warm_ups} warm-up") } else { String::new() };
        println!("{:<11} {s:.2} s ({} steps, strength {}, {calls}{warm_ups} UNet calls, encode and decode included)", format!("{} edit", a.method), a.steps, a.strength);
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
