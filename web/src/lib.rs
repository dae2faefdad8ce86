//! The browser face of the pipeline (wasm-bindgen): WebGPU device init, a model from files the
//! page hands over as bytes (fetched, cached or picked by the page's JS), and `invert`, `edit`,
//! `reconstruct` over `edict_pipeline::editor::Editor` — a thin shell, like the CLI.
//!
//! Everything is wasm32-only: natively this crate is empty, so a native workspace build never
//! enables burn's `webgpu` feature.
#![cfg(target_arch = "wasm32")]

mod model;
mod session;

use std::sync::atomic::{AtomicUsize, Ordering};

use burn::tensor::wgpu::wgpu;
use burn::tensor::{Device, DeviceKind};
use edict_pipeline::editor::{MemoryLimit, SWIFTSHADER_HEAP_BYTES};
use edict_sd::config::{Precision, SdConfigs};
use wasm_bindgen::prelude::*;

pub use model::ModelBuilder;
pub use session::{Output, Session, default_options};

/// Panics are bugs (every user error is a `JsError`); at least say where in the console.
#[wasm_bindgen(start)]
pub fn start() {
    console_error_panic_hook::set_once();
}

/// Why WebGPU lost a device, once it has.
#[derive(Clone, Default)]
pub(crate) struct Lost(std::sync::Arc<std::sync::OnceLock<String>>);

impl Lost {
    pub(crate) fn get(&self) -> Option<&String> {
        self.0.get()
    }
}

pub(crate) fn js_err(e: impl std::fmt::Display) -> JsError {
    JsError::new(&e.to_string())
}

/// The weight files `component` may have in a diffusers folder, in the order the CLI tries
/// them for `precision` ("f16" or "f32"): the page fetches or picks by this one rule.
#[wasm_bindgen(js_name = weightCandidates)]
pub fn weight_candidates(component: &str, precision: &str) -> Result<Vec<String>, JsError> {
    Ok(edict_sd::checkpoint::files::weight_candidates(component, precision.parse().map_err(js_err)?))
}

/// The WebGPU device burn runs on, with what the page needs to know about it.
#[wasm_bindgen]
pub struct Gpu {
    device: Device,
    /// Set when WebGPU reports this device lost.
    lost: Lost,
    shader_f16: bool,
    limits: wgpu::Limits,
    info: wgpu::AdapterInfo,
    /// The adapter's name: wgpu's, else the page's from WebGPU's `GPUAdapterInfo`.
    adapter: String,
}

/// Acquires a WebGPU device. burn (cubecl) requests every feature the adapter has and its
/// maximum limits, so the model gets the largest buffers the adapter allows; `Gpu.check` then
/// says whether they suffice. After a device is lost, call again for a new one: a runtime
/// cannot be initialised twice, so each later call registers another device selector (in
/// browsers every selector but the low-power one asks for the high-performance adapter).
/// `adapter` names the adapter as the page reads it from WebGPU's `GPUAdapterInfo` (wgpu leaves
/// the name empty in browsers): it tells SwiftShader apart ([`Gpu::memory_limit`]).
#[wasm_bindgen(js_name = initGpu)]
pub async fn init_gpu(adapter: String) -> Result<Gpu, JsError> {
    static INITS: AtomicUsize = AtomicUsize::new(0);
    let mut options = Device::wgpu_options();
    match INITS.fetch_add(1, Ordering::Relaxed) {
        0 => {}
        n => options = options.device_kind(DeviceKind::DiscreteGpu(n)),
    }
    let (device, setup) = options
        .init_with_setup_async()
        .await
        .map_err(|e| JsError::new(&format!("WebGPU device: {e}")))?;
    // In browsers this adds a handler to GPUDevice.lost next to cubecl's own.
    let lost = Lost::default();
    let flag = lost.clone();
    setup.device.set_device_lost_callback(move |_, message| {
        let _ = flag.0.set(if message.is_empty() { "destroyed".into() } else { message });
    });
    let info = setup.adapter.get_info();
    Ok(Gpu {
        device,
        lost,
        shader_f16: setup.device.features().contains(wgpu::Features::SHADER_F16),
        limits: setup.device.limits(),
        adapter: if info.name.is_empty() { adapter } else { info.name.clone() },
        info,
    })
}

#[wasm_bindgen]
impl Gpu {
    /// Whether f16 networks can run here (WGSL `enable f16`).
    #[wasm_bindgen(getter, js_name = shaderF16)]
    pub fn shader_f16(&self) -> bool {
        self.shader_f16
    }

    /// Adapter, features and limits as JSON, for the page to show.
    pub fn info(&self) -> String {
        let l = &self.limits;
        serde_json::json!({
            "adapter": self.adapter,
            "vendor": self.info.vendor,
            "device": self.info.device,
            "driver": self.info.driver,
            "backend": format!("{:?}", self.info.backend),
            "shader_f16": self.shader_f16,
            "max_buffer_size": l.max_buffer_size,
            "max_storage_buffer_binding_size": l.max_storage_buffer_binding_size,
            "max_storage_buffers_per_shader_stage": l.max_storage_buffers_per_shader_stage,
        })
        .to_string()
    }
}

impl Gpu {
    /// The precision the networks run in: f16 with shader-f16, else f32; `requested` ("f16",
    /// "f32", or "" for automatic) overrides, and f16 without shader-f16 is an error.
    pub(crate) fn precision(&self, requested: &str) -> Result<Precision, JsError> {
        match requested {
            "" | "auto" => Ok(if self.shader_f16 { Precision::F16 } else { Precision::F32 }),
            p => {
                let p: Precision = p.parse().map_err(js_err)?;
                if p == Precision::F16 && !self.shader_f16 {
                    return Err(JsError::new(
                        "this GPU adapter has no shader-f16 feature, so f16 networks cannot run here; use f32",
                    ));
                }
                Ok(p)
            }
        }
    }

    /// The bound on image sizes this adapter cannot report itself: SwiftShader (Chromium's
    /// software WebGPU) keeps buffers on the GPU process's heap, which dies when it is full.
    pub(crate) fn memory_limit(&self, weight_bytes: u64) -> Option<MemoryLimit> {
        let i = &self.info;
        let named = [&self.adapter, &i.driver, &i.driver_info].iter().any(|s| s.to_lowercase().contains("swiftshader"));
        named.then_some(MemoryLimit::SwiftShader { weights: weight_bytes })
    }

    /// What the model needs at its native image size, as a sentence for the page; an error
    /// when its largest buffer exceeds the adapter's limits or, on SwiftShader, its weights
    /// leave no room for a 64×64 image (before anything is downloaded).
    pub(crate) fn check_limits(&self, c: &SdConfigs, precision: Precision) -> Result<String, JsError> {
        let side = c.default_long_side() as usize;
        let f = c.footprint(precision, side, side);
        let have = self.limits.max_storage_buffer_binding_size.min(self.limits.max_buffer_size);
        let mib = |b: u64| b >> 20;
        if f.largest_buffer_bytes > have {
            return Err(JsError::new(&format!(
                "GPU limits too small: this model needs storage buffers of {} MiB in {precision}, the adapter \
                 allows {} MiB (maxStorageBufferBindingSize {}, maxBufferSize {})",
                mib(f.largest_buffer_bytes),
                mib(have),
                self.limits.max_storage_buffer_binding_size,
                self.limits.max_buffer_size
            )));
        }
        let gb = |b: u64| b as f64 / 1e9;
        let gib = |b: u64| b as f64 / (1u64 << 30) as f64;
        let heap = match self.memory_limit(f.weight_bytes) {
            None => String::new(),
            Some(limit) => match limit.largest_square(&c.vae, c.vae_precision(precision).element_bytes()) {
                Some(fits) => format!(
                    " On SwiftShader (software WebGPU) all buffers share a {:.1} GiB heap, which images above about {fits}×{fits} overflow.",
                    gib(SWIFTSHADER_HEAP_BYTES)
                ),
                None => {
                    return Err(JsError::new(&format!(
                        "this model's weights take {:.1} GiB in {precision}, which leaves no room for images on the \
                         {:.1} GiB heap SwiftShader (software WebGPU) keeps all buffers on; use a GPU",
                        gib(f.weight_bytes),
                        gib(SWIFTSHADER_HEAP_BYTES)
                    )));
                }
            },
        };
        Ok(format!(
            "This model needs about {:.1} GB of GPU memory in {precision}: {:.1} GB of weights ({:.1} M values) \
             and at least {:.1} GB more while the VAE works on a {side}×{side} image. Its largest buffer is \
             {} MiB; this adapter allows {} MiB.{heap}",
            gb(f.weight_bytes + f.activation_bytes),
            gb(f.weight_bytes),
            f.device_parameters as f64 / 1e6,
            gb(f.activation_bytes),
            mib(f.largest_buffer_bytes),
            mib(have)
        ))
    }
}
