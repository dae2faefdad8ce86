//! `edict bench`'s timing runs: the UNet, one profiled UNet call, the VAE, a full edit, and the
//! process's peak memory.

use std::time::Instant;

use anyhow::Result;
use burn::tensor::{Tensor, TensorCreationOptions, TensorData};
use edict_pipeline::editor::{Editor, Quiet};
use edict_pipeline::settings::Settings;
use edict_sd::device::profile::Breakdown;
use edict_sd::model::StableDiffusion;
use edict_sd::models::unet_2d::{Cond, TextTime};

use super::BenchArgs;

/// What [`run`] measured.
pub struct Measurements {
    /// The UNet's input shape: batch 2, the latent's channels and sides.
    pub latent: [usize; 4],
    /// Median seconds of one batch-2 UNet call.
    pub unet: f64,
    /// One more UNet call with the device synced around every instrumented step.
    pub parts: Breakdown,
    /// Median seconds of one VAE encode and of one decode.
    pub encode: f64,
    pub decode: f64,
    /// The full edit, unless `--no-edit`.
    pub edit: Option<EditRun>,
    /// The process's peak resident set size in MiB, where the platform says.
    pub peak_rss_mib: Option<f64>,
}

/// The timed edit: seconds (encode and decode included), UNet calls, and the pipeline's
/// warm-up calls among them.
#[derive(Clone, Copy)]
pub struct EditRun {
    pub seconds: f64,
    pub unet_calls: usize,
    pub warm_up_calls: usize,
}

/// Times `ed`'s networks at `a.size`² pixels and, unless `--no-edit`, one edit with `settings`.
pub fn run(ed: &mut Editor, a: &BenchArgs, settings: &Settings) -> Result<Measurements> {
    let c = &ed.model.configs;
    let size = a.size as usize;
    let latent = [2, c.unet.in_channels, size / c.vae.downscale(), size / c.vae.downscale()];
    let options = TensorCreationOptions::new(ed.device.clone()).with_dtype(a.precision.dtype());
    let upload = |values: Vec<f32>, shape: [usize; 4]| -> Tensor<4> {
        Tensor::from_data(TensorData::new(values, shape), options.clone())
    };
    let x = upload(pattern(latent.iter().product()), latent);
    let pixels = pattern(3 * size * size);
    let vae_options = TensorCreationOptions::new(ed.device.clone()).with_dtype(ed.vae_dtype());
    let image = Tensor::from_data(TensorData::new(pixels.clone(), [1, 3, size, size]), vae_options.clone());
    let (uncond, _) = ed.embed("", true)?;
    let (cond, _) = ed.embed("a photo of a cat", false)?;
    let context = Tensor::cat(vec![uncond.context, cond.context], 0);
    let pooled = uncond.pooled.zip(cond.pooled).map(|(u, c)| Tensor::cat(vec![u, c], 0));
    let text_time = pooled.as_ref().map(|pooled| TextTime { pooled, time_ids: StableDiffusion::time_ids(size, size) });
    let cond = Cond { context: &context, text_time };

    // every timed call ends by reading one output value back to the host, which waits for the
    // queued GPU work (a whole-tensor sum would also do, but with atomics and a kernel of its own)
    let unet = timed(a.iters, || {
        let out = ed.model.unet.forward(x.clone(), 500.0, cond);
        sync(out)
    })?;
    // one more call with the device synced around every instrumented step, to see where it goes
    let (_, parts) = edict_sd::device::profile::record(&ed.device, || ed.model.unet.forward(x.clone(), 500.0, cond))?;
    let encode = timed(a.iters, || {
        let (mean, logvar) = ed.model.vae.encode(image.clone());
        sync(mean)?;
        sync(logvar)
    })?;
    let z = Tensor::from_data(TensorData::new(pattern(latent[1..].iter().product()), [1, latent[1], latent[2], latent[3]]), vae_options);
    let decode = timed(a.iters, || sync(ed.model.vae.decode(z.clone())))?;

    let edit = if a.no_edit {
        None
    } else {
        let (calls, warm_ups) = (ed.unet_calls, ed.warm_up_calls);
        let t = Instant::now();
        let z = pollster::block_on(ed.encode(pixels, size, size, None))?;
        let inv = pollster::block_on(ed.invert(&z, "a photo of a cat", settings, &mut Quiet))?;
        let pair = pollster::block_on(ed.denoise(&inv, "a photo of a dog", "edit", &mut Quiet))?;
        pollster::block_on(ed.decode(&edict_pipeline::editor::Latent { values: pair.x_f64(), shape: z.shape }))?;
        Some(EditRun {
            seconds: t.elapsed().as_secs_f64(),
            unet_calls: ed.unet_calls - calls,
            warm_up_calls: ed.warm_up_calls - warm_ups,
        })
    };

    Ok(Measurements { latent, unet, parts, encode, decode, edit, peak_rss_mib: peak_rss_mib() })
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
