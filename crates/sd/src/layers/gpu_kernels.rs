//! Convolutions as GEMMs on the GPU backends (wgpu natively, WebGPU in the browser).
//!
//! Burn's conv2d on WGSL is `Direct`: one thread per output value, each reading its whole
//! receptive field from global memory, no tiling (autotune has no other candidate there: its
//! implicit-GEMM kernels need cooperative matrices). SD's 3×3 and 1×1 stride-1 convolutions are
//! instead written as im2col + Burn's matmul, which is tiled (and autotuned where that is compiled
//! in): the `k·k` shifted views of the input are stacked into a `[b, c_in·k·k, pixels]` matrix
//! and multiplied by the weight as `[c_out, c_in·k·k]`. The matrix is built in row chunks of at
//! most [`MAX_BUFFER_ELEMENTS`], so no buffer passes WebGPU's binding limit (one im2col matrix of
//! the VAE's 512² activations would be over 1 GB). Each output value is one dot product in a
//! fixed order, so the same input gives the same bits on every call.

use burn::tensor::ops::{ConvOptions, PadMode};
use burn::tensor::{DType, Tensor};

use crate::layers::MAX_BUFFER_ELEMENTS;

/// Outputs with fewer pixels than this run Burn's direct conv, which was faster there on
/// lavapipe (`[2, 1280, 4, 4]`: 0.14 s direct, 0.25 s as GEMM; `[2, 640, 8, 8]`: 0.12 s vs 0.07 s).
const MIN_PIXELS: usize = 64;

/// `x` `[b, c_in, h, w]` convolved with `weight` `[c_out, c_in, k, k]` plus `bias` as im2col +
/// matmul, in f32 or f16 (input and weight alike); `Err(x)` where that does not apply (the CPU
/// backend, other dtypes, another kernel size, stride, dilation or groups, small outputs), and the
/// caller uses Burn's conv.
pub fn conv2d(x: Tensor<4>, weight: &Tensor<4>, bias: Option<&Tensor<1>>, options: &ConvOptions<2>) -> Result<Tensor<4>, Tensor<4>> {
    conv2d_in_chunks(x, weight, bias, options, MAX_BUFFER_ELEMENTS)
}

/// [`conv2d`] with im2col chunks of at most `limit` elements (one output row at least).
fn conv2d_in_chunks(x: Tensor<4>, weight: &Tensor<4>, bias: Option<&Tensor<1>>, options: &ConvOptions<2>, limit: usize) -> Result<Tensor<4>, Tensor<4>> {
    let [c_out, c_in, k, kw] = weight.dims();
    let [b, _, h, w] = x.dims();
    let [(top, bottom), (left, right)] = options.padding;
    let (hp, wp) = (h + top + bottom, w + left + right);
    let plain = options.stride == [1, 1] && options.dilation == [1, 1] && options.groups == 1;
    let cpu = crate::device::backend::is_cpu(&x.device());
    let float = matches!(x.dtype(), DType::F32 | DType::F16) && weight.dtype() == x.dtype();
    if !plain || cpu || k != kw || !(k == 1 || k == 3) || !float || hp < k || wp < k {
        return Err(x);
    }
    let (h_out, w_out) = (hp - k + 1, wp - k + 1);
    if h_out * w_out < MIN_PIXELS {
        return Err(x);
    }
    let taps = k * k;
    let rows_per_chunk = (limit / (b * w_out * (c_in * taps).max(c_out))).clamp(1, h_out);
    let weight = weight.clone().reshape([1, c_out, c_in * taps]);
    let bias = bias.map(|bias| bias.clone().reshape([1, c_out, 1]));
    let chunks: Vec<Tensor<4>> = (0..h_out)
        .step_by(rows_per_chunk)
        .map(|o0| {
            let o1 = (o0 + rows_per_chunk).min(h_out);
            // output rows o0..o1 read padded rows o0..o1+k−1, i.e. input rows shifted by `top`
            let (first, last) = (o0 as isize - top as isize, (o1 + k - 1) as isize - top as isize);
            let (r0, r1) = (first.max(0) as usize, (last as usize).min(h));
            let pad_top = (-first).max(0) as usize;
            let pad_bottom = (last - h as isize).max(0) as usize;
            let rows = x.clone().slice([0..b, 0..c_in, r0..r1, 0..w]);
            let rows = if pad_top + pad_bottom + left + right > 0 {
                rows.pad([(0, 0), (0, 0), (pad_top, pad_bottom), (left, right)], PadMode::Constant(0.0))
            } else {
                rows
            };
            let n = o1 - o0;
            let shifted: Vec<Tensor<4>> = (0..taps)
                .map(|t| rows.clone().slice([0..b, 0..c_in, t / k..t / k + n, t % k..t % k + w_out]).reshape([b, c_in, 1, n * w_out]))
                .collect();
            // [b, c_in, k·k, pixels] → [b, c_in·k·k, pixels]: the weight's `[c_in, k, k]` order
            let columns = if taps == 1 { shifted.into_iter().next().expect("one tap") } else { Tensor::cat(shifted, 2) };
            let y = weight.clone().matmul(columns.reshape([b, c_in * taps, n * w_out]));
            let y = match &bias {
                Some(bias) => y + bias.clone(),
                None => y,
            };
            y.reshape([b, c_out, n, w_out])
        })
        .collect();
    Ok(if chunks.len() == 1 { chunks.into_iter().next().expect("one chunk") } else { Tensor::cat(chunks, 2) })
}

#[cfg(all(test, feature = "wgpu"))]
mod tests {
    use burn::tensor::module::conv2d as burn_conv2d;
    use burn::tensor::{Device, TensorData};

    use super::*;
    use crate::device::backend::{Backend, device};

    fn tensor<const D: usize>(shape: [usize; D], seed: usize, device: &Device) -> Tensor<D> {
        let n = shape.iter().product::<usize>();
        let values: Vec<f32> = (0..n).map(|i| ((i * 7919 + seed * 104729) % 1999) as f32 / 999.5 - 1.0).collect();
        Tensor::from_data(TensorData::new(values, shape), device)
    }

    fn values(t: Tensor<4>) -> Vec<f32> {
        t.into_data().try_to_vec::<f32>().unwrap()
    }

    /// Against Burn's direct conv on the same device, for every padding the VAE's bands use, in
    /// one chunk and in chunks of one to three output rows; repeated calls give the same bits.
    #[test]
    fn equals_burns_convolution() {
        let device = device(Backend::Wgpu).unwrap();
        for (k, pad) in [(3, [1, 1, 1, 1]), (3, [0, 1, 1, 1]), (3, [1, 0, 1, 1]), (3, [0, 0, 1, 1]), (1, [0, 0, 0, 0])] {
            let x = tensor([2, 5, 11, 9], 1, &device);
            let w = tensor([4, 5, k, k], 2, &device);
            let b = tensor([4], 3, &device);
            let options = ConvOptions::new_with_padding([1, 1], [(pad[0], pad[1]), (pad[2], pad[3])], [1, 1], 1);
            let want = values(burn_conv2d(x.clone(), w.clone(), Some(b.clone()), options.clone()));
            let scale = want.iter().fold(0f32, |m, v| m.max(v.abs()));
            // 2·9·45 = 810 elements per output row of 3×3 im2col: chunks of 1, 2 and 3 rows, and one
            for limit in [810, 1700, 2500, usize::MAX] {
                let run = || values(conv2d_in_chunks(x.clone(), &w, Some(&b), &options, limit).expect("applies to a stride-1 f32 conv"));
                let got = run();
                assert_eq!(got.len(), want.len());
                let err = got.iter().zip(&want).fold(0f32, |m, (a, b)| m.max((a - b).abs()));
                assert!(err <= 1e-6 * scale, "k {k}, pad {pad:?}, limit {limit}: max error {err} against Burn's conv (scale {scale})");
                assert_eq!(run(), got, "k {k}, pad {pad:?}, limit {limit}: a second call differs");
            }
        }
    }

    /// In f16, against the exact (f32) conv of the same f16 values: within a few f16 roundings of
    /// the output scale, no worse than Burn's direct f16 conv, and the same bits on a second call.
    #[test]
    fn f16_is_as_close_as_burns() {
        let device = device(Backend::Wgpu).unwrap();
        let half = |t: Tensor<4>| t.cast(DType::F16);
        let (x, w) = (half(tensor([2, 64, 12, 12], 1, &device)), half(tensor([32, 64, 3, 3], 2, &device)));
        let b = tensor([32], 3, &device).cast(DType::F16);
        let options = ConvOptions::new([1, 1], [1, 1], [1, 1], 1);
        let f32_of = |t: Tensor<4>| values(t.cast(DType::F32));
        let exact = f32_of(burn_conv2d(x.clone().cast(DType::F32), w.clone().cast(DType::F32), Some(b.clone().cast(DType::F32)), options.clone()));
        let scale = exact.iter().fold(0f32, |m, v| m.max(v.abs()));
        let err = |got: &[f32]| got.iter().zip(&exact).fold(0f32, |m, (a, b)| m.max((a - b).abs()));
        let run = || f32_of(conv2d(x.clone(), &w, Some(&b), &options).expect("applies to a stride-1 f16 conv"));
        let ours = run();
        let burns = err(&f32_of(burn_conv2d(x.clone(), w.clone(), Some(b.clone()), options.clone())));
        eprintln!("f16 conv, max error: im2col + matmul {}, Burn's direct {burns}, scale {scale}", err(&ours));
        assert!(err(&ours) <= 4e-3 * scale, "f16 max error {} (scale {scale})", err(&ours));
        assert!(err(&ours) <= burns.max(1e-3 * scale), "f16 max error {} against Burn's direct conv's {burns}", err(&ours));
        assert_eq!(run(), ours, "a second f16 call differs");
    }

    /// Strided convs, mixed dtypes and outputs under `MIN_PIXELS` are left to Burn.
    #[test]
    fn declines_what_it_does_not_cover() {
        let device = device(Backend::Wgpu).unwrap();
        let w = tensor([4, 5, 3, 3], 2, &device);
        let strided = ConvOptions::new([2, 2], [1, 1], [1, 1], 1);
        assert!(conv2d(tensor([1, 5, 16, 16], 1, &device), &w, None, &strided).is_err());
        let same = ConvOptions::new([1, 1], [1, 1], [1, 1], 1);
        assert!(conv2d(tensor([1, 5, 7, 7], 1, &device), &w, None, &same).is_err());
        let half = tensor([1, 5, 16, 16], 1, &device).cast(DType::F16);
        assert!(conv2d(half, &w, None, &same).is_err());
    }
}
