//! Device failures on wgpu (lavapipe where there is no GPU) become errors a user can act on,
//! not panics: an allocation the device cannot hold, and a device lost mid-work.

use burn::tensor::wgpu::wgpu;
use burn::tensor::{Device, DeviceKind, Tensor};
use edict_sd::SdError;
use edict_sd::device::backend::{Backend, device, read};

fn sum(t: Tensor<1>) -> Result<f32, SdError> {
    Ok(pollster::block_on(read(t.sum()))?[0])
}

#[test]
fn out_of_memory_is_an_error_and_the_device_stays_usable() {
    let dev = device(Backend::Wgpu).unwrap();
    // A 4 GiB result: beyond lavapipe's buffer limit (and WebGPU's usual one). A device that
    // holds it must return it intact; the error, where there is one, must say out of memory.
    let n = 1usize << 30;
    let huge: Tensor<1> = Tensor::ones([n], &dev);
    match pollster::block_on(read(huge * 2.0)) {
        Ok(values) => assert!(values.iter().all(|&v| v == 2.0)),
        Err(err) => {
            assert!(matches!(err, SdError::OutOfMemory { bytes } if bytes >= 4 << 30), "{err}");
            assert!(err.to_string().starts_with("out of GPU memory: a buffer of 4.0 GiB"), "{err}");
        }
    }
    assert_eq!(sum(Tensor::ones([16], &dev)).unwrap(), 16.0);
}

#[test]
fn a_lost_device_is_named() {
    // A runtime of its own (lavapipe is a CPU-type adapter), so the shared device stays healthy.
    let (dev, setup): (Device, _) = [DeviceKind::Cpu, DeviceKind::IntegratedGpu(0), DeviceKind::DiscreteGpu(0)]
        .into_iter()
        .find_map(|k| Device::wgpu_options().device_kind(k).init_with_setup().ok())
        .expect("a second wgpu adapter registration");
    assert_eq!(sum(Tensor::ones([8], &dev)).unwrap(), 8.0);
    // wgpu reports a loss at its next poll, as with a driver reset
    setup.device.destroy();
    let _ = setup.device.poll(wgpu::PollType::Poll);
    let err = sum(Tensor::ones([8], &dev) * 3.0).unwrap_err();
    assert!(matches!(err, SdError::DeviceLost(_)), "{err}");
    assert!(err.to_string().contains("GPU device was lost"), "{err}");
}
