//! Picks the compute device at run time: wgpu (Vulkan/Metal/DX12 natively, WebGPU in browsers)
//! or the CPU (burn's flex backend).

#[cfg(not(target_arch = "wasm32"))]
use burn::tensor::Device;

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
        Backend::Wgpu => {
            static WGPU: std::sync::OnceLock<std::result::Result<Device, String>> = std::sync::OnceLock::new();
            WGPU.get_or_init(|| Device::wgpu_options().init().map_err(|e| e.to_string()))
                .clone()
                .map_err(|e| {
                    SdError::Device(format!(
                        "no usable GPU adapter through wgpu ({e}); install a Vulkan/Metal/DX12 driver \
                         (Mesa's lavapipe works without a GPU) or use --backend cpu"
                    ))
                })
        }
        #[allow(unreachable_patterns)]
        other => Err(SdError::Device(format!("this build has no `{other}` backend"))),
    }
}
