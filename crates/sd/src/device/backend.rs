//! Picks the compute device at run time: wgpu (Vulkan/Metal/DX12 natively, WebGPU in browsers)
//! or the CPU (burn's flex backend).

#[cfg(not(target_arch = "wasm32"))]
use burn::tensor::Device;
use burn::tensor::{DataError, Tensor};
use burn_std::{AccessError, ExecutionError};

use crate::{Result, SdError};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Backend {
    #[default]
    Wgpu,
    Cpu,
}

impl std::str::FromStr for Backend {
    type Err = SdError;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "wgpu" => Ok(Self::Wgpu),
            "cpu" => Ok(Self::Cpu),
            _ => Err(SdError::Invalid(format!("backend `{s}`: expected wgpu or cpu"))),
        }
    }
}

impl std::fmt::Display for Backend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Wgpu => "wgpu",
            Self::Cpu => "cpu",
        })
    }
}

/// Initialises the backend's device eagerly, so a missing GPU is a clear error now rather than
/// a panic at the first tensor. wgpu's runtime initialises once per process; later calls share it.
#[cfg(not(target_arch = "wasm32"))]
pub fn device(backend: Backend) -> Result<Device> {
    match backend {
        #[cfg(feature = "cpu")]
        Backend::Cpu => Ok(Device::flex()),
        #[cfg(feature = "wgpu")]
        Backend::Wgpu => wgpu_device().map(|(device, _)| device.clone()),
        #[allow(unreachable_patterns)]
        other => Err(SdError::Device(format!("this build has no `{other}` backend"))),
    }
}

/// Whether kernels on `device` are picked by timing candidates (autotune: a `gpu-tuned` build on
/// wgpu). The pipeline then runs each new UNet shape once before the calls it keeps, so that no
/// kept result comes from a kernel chosen part-way (see `Editor::warm_up`).
pub fn tunes_kernels(device: &burn::tensor::Device) -> bool {
    cfg!(feature = "gpu-tuned") && !is_cpu(device)
}

/// Whether `device` is the CPU backend's (flex); every other device is a GPU backend's.
pub fn is_cpu(device: &burn::tensor::Device) -> bool {
    #[cfg(feature = "cpu")]
    return *device == burn::tensor::Device::flex();
    #[cfg(not(feature = "cpu"))]
    {
        let _ = device;
        false
    }
}

/// What the wgpu device runs on, as `edict bench` reports it: the adapter, its graphics
/// API and driver, the shader compiler cubecl picked for it, and the features the fast kernels
/// depend on.
#[cfg(all(feature = "wgpu", not(target_arch = "wasm32")))]
#[derive(Debug, Clone, serde::Serialize)]
pub struct AdapterReport {
    pub adapter: String,
    /// wgpu's device type: `DiscreteGpu`, `IntegratedGpu`, `VirtualGpu`, `Cpu` (a software
    /// driver such as lavapipe or SwiftShader) or `Other`
    pub kind: String,
    pub api: String,
    pub driver: String,
    /// `wgpu<wgsl>`, `wgpu<spirv>` (built with `vulkan`) or `wgpu<msl>` (built with `metal`)
    pub compiler: &'static str,
    pub shader_f16: bool,
    pub subgroups: bool,
    /// cooperative-matrix (tensor-core) shapes the compiler can use; 0 on WGSL
    pub cooperative_matrix_configs: usize,
    /// the largest storage buffer binding, in bytes
    pub max_binding: u64,
}

/// The wgpu device's report; initialises the device like `device(Backend::Wgpu)`.
#[cfg(all(feature = "wgpu", not(target_arch = "wasm32")))]
pub fn adapter_report() -> Result<AdapterReport> {
    wgpu_device().map(|(_, report)| report.clone())
}

/// Where a `gpu-tuned` build keeps its autotune decisions: `EDICT_KERNEL_CACHE`, else
/// `$XDG_CACHE_HOME/edict/kernels`, else `~/.cache/edict/kernels`.
#[cfg(all(feature = "gpu-tuned", not(target_arch = "wasm32")))]
pub fn kernel_cache_dir() -> std::path::PathBuf {
    let var = |name| std::env::var_os(name).filter(|v| !v.is_empty()).map(std::path::PathBuf::from);
    var("EDICT_KERNEL_CACHE").unwrap_or_else(|| {
        let cache = var("XDG_CACHE_HOME").or_else(|| var("HOME").map(|h| h.join(".cache"))).unwrap_or_else(std::env::temp_dir);
        cache.join("edict").join("kernels")
    })
}

/// One autotune decision in the kernel cache: the candidate that runs for one operation's key.
#[cfg(all(feature = "gpu-tuned", not(target_arch = "wasm32")))]
#[derive(Debug, Clone, serde::Serialize)]
pub struct TuneDecision {
    /// the tuned operation as cubecl names its table, e.g. `burn_cubecl-kernel-matmul-tune-base`
    pub op: String,
    /// what the decision is keyed on (shapes, dtypes, layouts), as cubecl stores it
    pub key: serde_json::Value,
    pub winner: String,
    /// the winner's median time when it was tuned
    pub median_s: Option<f64>,
}

/// The autotune decisions the kernel cache holds for the wgpu device's shader compiler, from
/// this process and earlier ones; initialises the device like `device(Backend::Wgpu)`.
#[cfg(all(feature = "gpu-tuned", not(target_arch = "wasm32")))]
pub fn tune_decisions() -> Result<Vec<TuneDecision>> {
    use cubecl_environment::persistence::{namespaces, open};
    use cubecl_runtime::tune::{PersistentCacheKey, PersistentCacheValue};
    let compiler = wgpu_device()?.1.compiler;
    let mut decisions = Vec::new();
    // tables are named autotune/<cubecl version>/<device id, ending in the compiler>/<op>
    for table in namespaces().into_iter().filter(|n| n.starts_with("autotune/")) {
        let Some((device, op)) = table.rsplit_once('/') else { continue };
        if !device.ends_with(compiler) {
            continue;
        }
        open(&table).scan(&mut |key, value| {
            let key = ciborium::from_reader::<PersistentCacheKey<ciborium::Value>, _>(key);
            let Ok(value) = ciborium::from_reader::<PersistentCacheValue, _>(value) else { return };
            let winner = value.results.iter().filter_map(|r| r.outcome.as_ref().ok()).find(|o| o.index == value.fastest_index);
            decisions.push(TuneDecision {
                op: op.to_string(),
                key: key.ok().and_then(|k| serde_json::to_value(k.key).ok()).unwrap_or_default(),
                winner: winner.map_or_else(|| format!("candidate {}", value.fastest_index), |o| o.name.clone()),
                median_s: winner.map(|o| o.computation.median.as_secs_f64()),
            });
        });
    }
    Ok(decisions)
}

#[cfg(all(feature = "wgpu", not(target_arch = "wasm32")))]
fn wgpu_device() -> Result<&'static (Device, AdapterReport)> {
    use cubecl_runtime::runtime::Runtime;
    use cubecl_wgpu::{WgpuBackend, WgpuDevice, WgpuDeviceKind, WgpuRuntime, wgpu};
    static WGPU: std::sync::OnceLock<std::result::Result<(Device, AdapterReport), String>> = std::sync::OnceLock::new();
    WGPU.get_or_init(|| {
        // autotune decisions on disk, read back by later processes (cubecl would otherwise keep
        // them under the nearest Cargo workspace's target/). Loading cubecl's configuration sets
        // its own root, so it is loaded first.
        #[cfg(feature = "gpu-tuned")]
        {
            use cubecl_environment::config::RuntimeConfig;
            let _ = cubecl_runtime::config::CubeClRuntimeConfig::get();
            cubecl_environment::environment::set_root(kernel_cache_dir());
        }
        let (device, setup) = Device::wgpu_options().init_with_setup().map_err(|e| {
            format!(
                "no usable GPU adapter through wgpu ({e}); install a Vulkan/Metal/DX12 driver \
                 (Mesa's lavapipe works without a GPU) or use --backend cpu"
            )
        })?;
        let info = setup.adapter.get_info();
        let features = setup.adapter.features();
        // the device `wgpu_options()` initialises by default
        let client = <WgpuRuntime as Runtime>::client(&WgpuDevice::new(WgpuDeviceKind::DefaultDevice).on(WgpuBackend::Auto));
        let report = AdapterReport {
            adapter: info.name,
            kind: format!("{:?}", info.device_type),
            api: format!("{:?}", info.backend),
            driver: format!("{} {}", info.driver, info.driver_info).trim().to_string(),
            compiler: client.name(),
            shader_f16: features.contains(wgpu::Features::SHADER_F16),
            subgroups: features.contains(wgpu::Features::SUBGROUP),
            cooperative_matrix_configs: client.features().matmul.cmma.len(),
            max_binding: setup.device.limits().max_storage_buffer_binding_size,
        };
        check_compiler(&report)?;
        Ok((device, report))
    })
    .as_ref()
    .map_err(|e| SdError::Device(e.clone()))
}

/// SPIR-V (a `vulkan` build) is refused on software Vulkan drivers: Mesa's lavapipe 22.3 crashes
/// (a segfault, which no error handling can catch) compiling cubecl's SPIR-V matmul, and cubecl
/// offers no way to ask for WGSL on a Vulkan adapter once SPIR-V is compiled in. A CPU driver
/// loses nothing by it: SPIR-V is there for cooperative matrices, which such drivers lack.
#[cfg(all(feature = "wgpu", not(target_arch = "wasm32")))]
fn check_compiler(report: &AdapterReport) -> std::result::Result<(), String> {
    if report.compiler == "wgpu<spirv>" && report.kind == "Cpu" {
        return Err(format!(
            "the wgpu adapter is `{}` ({}), a software Vulkan driver, and this build compiles SPIR-V \
             (cargo feature `vulkan`), which crashes Mesa's lavapipe; use a build without `vulkan` \
             (it compiles WGSL) or --backend cpu",
            report.adapter, report.driver
        ));
    }
    Ok(())
}

/// Reads a tensor's values back to the host as f32. Device failures surface here, at the sync
/// point or when the lazily read bytes arrive (cubecl reports both instead of panicking), and
/// become errors a user can act on.
pub async fn read<const D: usize>(t: Tensor<D>) -> Result<Vec<f32>> {
    let data = t.into_data_async().await.map_err(execution_error)?;
    data.try_into_vec_as::<f32>().map_err(|e| match e {
        DataError::StorageAccess(AccessError::Read(reason)) => {
            let lost = reason.starts_with("The device is poisoned");
            classify(&reason, lost)
        }
        other => SdError::Device(other.to_string()),
    })
}

/// Names a failed device sync: out of memory, a lost device, or another device error.
pub fn execution_error(e: ExecutionError) -> SdError {
    match e {
        ExecutionError::DevicePoisoned { reason } => classify(&reason, true),
        ExecutionError::WithContext { reason } | ExecutionError::Generic { reason, .. } => classify(&reason, false),
    }
}

fn classify(reason: &str, lost: bool) -> SdError {
    if lost {
        let cause = reason.split_once("Caused by:").map_or(reason, |(_, c)| c);
        return SdError::DeviceLost(causes(cause));
    }
    match allocation_failure(reason) {
        Some(bytes) => SdError::OutOfMemory { bytes },
        None => SdError::Device(causes(reason)),
    }
}

/// The size of a failed allocation, from cubecl's `IoError::BufferTooBig` ("can't allocate
/// buffer of size: N") or `IoError::OutOfMemory` ("out of device memory allocating N bytes").
fn allocation_failure(reason: &str) -> Option<u64> {
    ["can't allocate buffer of size: ", "out of device memory allocating "].iter().find_map(|marker| {
        let rest = &reason[reason.find(marker)? + marker.len()..];
        rest.split(|c: char| !c.is_ascii_digit()).next()?.parse().ok()
    })
}

/// A multi-line "Caused by:" chain with backtraces, as one line of its causes.
fn causes(reason: &str) -> String {
    let line: Vec<&str> = reason
        .lines()
        .map(str::trim)
        .take_while(|l| !l.starts_with("Backtrace") && !l.starts_with("No backtrace") && !l.starts_with("Asked at"))
        .filter(|l| !l.is_empty() && *l != "Caused by:")
        .collect();
    let mut s = line.join(": ");
    if s.chars().count() > 300 {
        s = s.chars().take(300).collect::<String>() + "…";
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[cfg(all(feature = "wgpu", not(target_arch = "wasm32")))]
    #[test]
    fn spirv_is_refused_on_software_drivers_only() {
        use cubecl_wgpu::wgpu::DeviceType;
        let report = |kind: DeviceType, compiler| AdapterReport {
            adapter: "llvmpipe (LLVM 15.0.6, 256 bits)".into(),
            kind: format!("{kind:?}"),
            api: "Vulkan".into(),
            driver: "llvmpipe Mesa 22.3.6".into(),
            compiler,
            shader_f16: false,
            subgroups: true,
            cooperative_matrix_configs: 0,
            max_binding: 1 << 27,
        };
        let refused = check_compiler(&report(DeviceType::Cpu, "wgpu<spirv>")).unwrap_err();
        assert!(refused.contains("`llvmpipe (LLVM 15.0.6, 256 bits)`") && refused.contains("build without `vulkan`"), "{refused}");
        assert!(check_compiler(&report(DeviceType::Cpu, "wgpu<wgsl>")).is_ok());
        assert!(check_compiler(&report(DeviceType::DiscreteGpu, "wgpu<spirv>")).is_ok());
    }

    #[test]
    fn device_failures_are_named() {
        let oom = ExecutionError::WithContext {
            reason: "Several failures at once\nCaused by:\n  An IO error happened\nCaused by:\n  can't allocate buffer of size: 4294967296\nNo backtrace available".into(),
        };
        assert_eq!(execution_error(oom).to_string().split(';').next().unwrap(), "out of GPU memory: a buffer of 4.0 GiB could not be allocated");
        let oom = ExecutionError::WithContext { reason: "out of device memory allocating 3000000 bytes\n".into() };
        assert!(matches!(execution_error(oom), SdError::OutOfMemory { bytes: 3000000 }));
        let lost = ExecutionError::DevicePoisoned { reason: "Destroyed: Device dropped.".into() };
        assert!(execution_error(lost).to_string().starts_with("the GPU device was lost (Destroyed: Device dropped.)"));
        let other = ExecutionError::WithContext { reason: "A launch error happened\nCaused by:\n  WGSL compilation failed\nBacktrace:\nframe 1".into() };
        assert_eq!(execution_error(other).to_string(), "device: A launch error happened: WGSL compilation failed");
    }
}
