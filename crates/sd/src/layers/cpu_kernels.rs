//! Kernels for the CPU backend where flex's generic ones cost SD the most: convolutions and
//! GroupNorm+SiLU. Each takes its input by value and hands it back as `Err` where it does not
//! apply (another backend or dtype), and the caller uses Burn's op.
//!
//! **Convolutions.** SD's 3×3 and 1×1 convolutions as a few large GEMMs over the NCHW tensor
//! itself: no im2col buffer and no channels-last copy, which flex's conv builds on every call.
//! With the input padded to width `wp`, output pixel `(y, x)` of a 3×3 conv is
//! `Σ_(dy, dx) W[:, :, dy, dx] · P[:, (y + dy)·wp + x + dx]`: for each of the 9 taps the whole
//! output is one `[c_out, c_in] × [c_in, h·wp]` product whose right-hand side is the padded
//! input shifted by `dy·wp + dx` (the two columns per row past the image are computed and
//! dropped). Each tap's `[c_out, c_in]` matrix is contiguous in the tap-major weights the models
//! load ([`tap_major_weight`]); the gemm crate (the one flex uses) reads the padded input in
//! place. Its threads split the output, never the sum over `c_in`, so every value is summed in
//! the same order whatever the thread count.

use std::cell::RefCell;

use burn::backend::Flex;
use burn::backend::flex::{FlexTensor, Layout};
use burn::nn::GroupNorm;
use burn::tensor::{DType, Device, Shape, Tensor, TensorData};
use burn_std::Bytes;
use rayon::prelude::*;

thread_local! {
    /// The padded input and the wide output of one image, kept between calls.
    static SCRATCH: RefCell<(Vec<f32>, Vec<f32>)> = const { RefCell::new((Vec::new(), Vec::new())) };
}

/// `x` `[b, c_in, h, w]` convolved with `weight` `[c_out, c_in, k, k]` (k = 1 or 3, stride 1),
/// plus `bias`, with `pad` = `[top, bottom, left, right]` zero rows/columns; `Err(x)` where this
/// path does not apply (another backend, f16, another kernel or stride), and the caller uses
/// Burn's conv. Input and parameters are read in place (see [`host`]).
pub fn conv2d(x: Tensor<4>, weight: &Tensor<4>, bias: Option<&Tensor<1>>, stride: [usize; 2], pad: [usize; 4]) -> Result<Tensor<4>, Tensor<4>> {
    let [c_out, c_in, k, kw] = weight.dims();
    let device = x.device();
    let all_f32 = x.dtype() == DType::F32 && weight.dtype() == DType::F32 && bias.is_none_or(|b| b.dtype() == DType::F32);
    if stride != [1, 1] || k != kw || !(k == 1 || k == 3) || !all_f32 || device != Device::flex() {
        return Err(x);
    }
    let [b, _, h, w] = x.dims();
    let [top, bottom, left, right] = pad;
    let (hp, wp) = (h + top + bottom, w + left + right);
    if hp < k || wp < k {
        return Err(x);
    }
    let (h_out, w_out) = (hp - k + 1, wp - k + 1);

    let (input, bias) = (host(x), bias.map(|b| host(b.clone())));
    let (input, bias) = (f32s(&input), bias.as_ref().map(f32s));
    let weight = weight.clone().try_into_primitive::<Flex>().expect("device checked to be flex before reading");
    let relaid;
    let weight = match tap_major_in_place(&weight, [c_out, c_in, k, kw]) {
        Some(w) => w,
        None => {
            relaid = relay_taps(f32s(&host_of(weight)), k * k);
            &relaid
        }
    };

    let plane = hp * wp;
    // outputs over the padded width; the last valid one is (h_out − 1)·wp + w_out − 1
    let n = (h_out - 1) * wp + w_out;
    let wide = h_out * wp;
    let parallelism = if c_out * c_in * n >= 192 * 192 * 192 { gemm::Parallelism::Rayon(0) } else { gemm::Parallelism::None };
    let mut out = Vec::with_capacity(b * c_out * h_out * w_out);
    SCRATCH.with_borrow_mut(|(padded, out_wide)| {
        // reused between calls: fresh buffers of this size cost more in page faults than in FLOPs
        padded.resize(c_in * plane, 0.0);
        out_wide.resize(c_out * wide, 0.0);
        for item in input.chunks_exact(c_in * h * w) {
            padded.fill(0.0);
            for (src, dst) in item.chunks_exact(h * w).zip(padded.chunks_exact_mut(plane)) {
                for (y, row) in src.chunks_exact(w).enumerate() {
                    let at = (y + top) * wp + left;
                    dst[at..at + w].copy_from_slice(row);
                }
            }
            if let Some(bias) = bias {
                for (row, &v) in out_wide.chunks_exact_mut(wide).zip(bias) {
                    row.fill(v);
                }
            }
            for t in 0..k * k {
                let (dy, dx) = (t / k, t % k);
                // SAFETY: out_wide is c_out rows of `wide` ≥ n values; lhs reads
                // weight[t][co][ci] for co < c_out, ci < c_in; rhs reads
                // padded[ci·plane + shift + j] for j < n, and
                // shift + n − 1 = (h_out − 1 + dy)·wp + w_out − 1 + dx < hp·wp.
                unsafe {
                    gemm::gemm(
                        c_out,
                        n,
                        c_in,
                        out_wide.as_mut_ptr(),
                        1,
                        wide as isize,
                        bias.is_some() || t > 0,
                        weight.as_ptr().add(t * c_out * c_in),
                        1,
                        c_in as isize,
                        padded.as_ptr().add(dy * wp + dx),
                        1,
                        plane as isize,
                        1.0,
                        1.0,
                        false,
                        false,
                        false,
                        parallelism,
                    );
                }
            }
            for row in out_wide.chunks_exact(wp) {
                out.extend_from_slice(&row[..w_out]);
            }
        }
    });
    Ok(Tensor::from_data(TensorData::new(out, [b, c_out, h_out, w_out]), &device))
}

/// A conv weight `[c_out, c_in, k, k]` from its checkpoint values, stored tap-major
/// (`[k·k, c_out, c_in]` in memory) behind a strided view of the checkpoint's shape: what
/// [`conv2d`] reads in place (gemm packs the checkpoint layout, taps innermost, with stride-9
/// scalar reads), and still an ordinary tensor to Burn's ops, which honour strides.
pub fn tap_major_weight(values: Vec<f32>, shape: [usize; 4]) -> Tensor<4> {
    let [c_out, c_in, kh, kw] = shape;
    let relaid = relay_taps(&values, kh * kw);
    let strides = vec![c_in as isize, 1, (kw * c_out * c_in) as isize, (c_out * c_in) as isize];
    let layout = Layout::new(Shape::from(shape.to_vec()), strides, 0);
    Tensor::from_primitive::<Flex>(FlexTensor::new(Bytes::from_elems(relaid), layout, DType::F32))
}

/// `[c_out, c_in, taps]` values as `[taps, c_out, c_in]`.
fn relay_taps(values: &[f32], taps: usize) -> Vec<f32> {
    let plane = values.len() / taps;
    let mut t = vec![0f32; values.len()];
    for (r, w) in values.chunks_exact(taps).enumerate() {
        for (tap, &v) in w.iter().enumerate() {
            t[tap * plane + r] = v;
        }
    }
    t
}

/// The tap-major values of `w` `[c_out, c_in, kh, kw]` where its storage already holds them: a
/// weight made by [`tap_major_weight`], or any contiguous 1×1 weight.
fn tap_major_in_place(w: &FlexTensor, [c_out, c_in, kh, kw]: [usize; 4]) -> Option<&[f32]> {
    let l = w.layout();
    let tap_strides = [c_in as isize, 1, (kw * c_out * c_in) as isize, (c_out * c_in) as isize];
    let laid_out = l.start_offset() == 0 && (l.strides() == tap_strides || kh * kw == 1 && l.is_contiguous());
    let n = c_out * c_in * kh * kw;
    (w.dtype() == DType::F32 && laid_out && w.bytes().len() >= 4 * n).then(|| &w.storage::<f32>()[..n])
}

/// `silu(gn(x))` in one pass per group, the groups split over threads (flex runs GroupNorm as a
/// chain of single-threaded element-wise ops and SiLU as a scalar `exp` per value). Each
/// group's statistics are summed in f64 in a fixed order, so the result does not depend on the
/// thread count.
pub fn group_norm_silu(x: Tensor<4>, gn: &GroupNorm) -> Result<Tensor<4>, Tensor<4>> {
    let device = x.device();
    if x.dtype() != DType::F32 || device != Device::flex() {
        return Err(x);
    }
    let (Some(gamma), Some(beta)) = (&gn.gamma, &gn.beta) else { return Err(x) };
    let (gamma, beta) = (gamma.val(), beta.val());
    if gamma.dtype() != DType::F32 || beta.dtype() != DType::F32 {
        return Err(x);
    }
    let [b, c, h, w] = x.dims();
    let g = gn.num_groups;
    let (input, gamma, beta) = (host(x), host(gamma), host(beta));
    let (input, gamma, beta) = (f32s(&input), f32s(&gamma), f32s(&beta));
    let per_group = c / g * h * w;
    let mut out = vec![0f32; b * c * h * w];
    out.par_chunks_mut(per_group).zip(input.par_chunks(per_group)).enumerate().for_each(|(i, (out, x))| {
        let n = x.len() as f64;
        let mean = lane_sum(x, |v| v) / n;
        let var = lane_sum(x, |v| (v - mean) * (v - mean)) / n;
        let inv = 1.0 / (var + gn.epsilon).sqrt();
        let first = i % g * (c / g);
        for (ch, (out, x)) in out.chunks_exact_mut(h * w).zip(x.chunks_exact(h * w)).enumerate() {
            let scale = (gamma[first + ch] as f64 * inv) as f32;
            let shift = (beta[first + ch] as f64 - mean * gamma[first + ch] as f64 * inv) as f32;
            for (o, &v) in out.iter_mut().zip(x) {
                let y = v * scale + shift;
                *o = y / (1.0 + (-y).exp());
            }
        }
    });
    Ok(Tensor::from_data(TensorData::new(out, [b, c, h, w]), &device))
}

/// `Σ f(x)` in f64 over 8 interleaved lanes added up at the end: vectorisable (one running sum
/// is a chain of dependent adds) and still one fixed order.
fn lane_sum(x: &[f32], f: impl Fn(f64) -> f64) -> f64 {
    let mut lanes = [0f64; 8];
    let chunks = x.chunks_exact(8);
    let rest = chunks.remainder();
    for c in chunks {
        for (l, &v) in lanes.iter_mut().zip(c) {
            *l += f(v as f64);
        }
    }
    lanes.iter().sum::<f64>() + rest.iter().map(|&v| f(v as f64)).sum::<f64>()
}

/// `t`'s flex storage, shared rather than copied: parameters (tens of MB per conv in the VAE)
/// and activations the caller still holds are read where they are. Only a strided view is
/// copied, into a contiguous tensor.
fn host<const D: usize>(t: Tensor<D>) -> FlexTensor {
    host_of(t.try_into_primitive::<Flex>().expect("device checked to be flex before reading"))
}

/// `t` itself where it is contiguous, else a contiguous copy.
fn host_of(t: FlexTensor) -> FlexTensor {
    if t.as_slice::<f32>().is_some() { t } else { t.to_contiguous() }
}

/// The values of a contiguous f32 flex tensor (its dtype checked by the caller).
fn f32s(t: &FlexTensor) -> &[f32] {
    t.as_slice::<f32>().expect("dtype checked and layout made contiguous before reading")
}

#[cfg(test)]
mod tests {
    use burn::tensor::module::conv2d as burn_conv2d;
    use burn::tensor::ops::ConvOptions;

    use super::*;

    fn tensor<const D: usize>(shape: [usize; D], seed: usize) -> Tensor<D> {
        let n = shape.iter().product::<usize>();
        let values: Vec<f32> = (0..n).map(|i| ((i * 7919 + seed * 104729) % 1999) as f32 / 999.5 - 1.0).collect();
        Tensor::from_data(TensorData::new(values, shape), &Device::flex())
    }

    /// Against Burn's own conv (im2col), for every padding the VAE's bands use.
    #[test]
    fn equals_burns_convolution() {
        for (k, pad) in [(3, [1, 1, 1, 1]), (3, [0, 1, 1, 1]), (3, [1, 0, 1, 1]), (3, [0, 0, 1, 1]), (1, [0, 0, 0, 0])] {
            let x = tensor([2, 5, 7, 6], 1);
            let w = tensor([4, 5, k, k], 2);
            let b = tensor([4], 3);
            let ours = conv2d(x.clone(), &w, Some(&b), [1, 1], pad).expect("applies to a stride-1 f32 conv on flex");
            // the same weight stored tap-major, as the models hold it: read in place by ours,
            // through its strides by Burn's
            let relaid = tap_major_weight(w.clone().into_data().try_to_vec::<f32>().unwrap(), [4, 5, k, k]);
            let in_place = conv2d(x.clone(), &relaid, Some(&b), [1, 1], pad).expect("applies to a stride-1 f32 conv on flex");
            assert_eq!(in_place.into_data(), ours.clone().into_data(), "k {k}, pad {pad:?}: tap-major weight differs");
            let options = ConvOptions::new_with_padding([1, 1], [(pad[0], pad[1]), (pad[2], pad[3])], [1, 1], 1);
            let burns = burn_conv2d(x.clone(), relaid, Some(b.clone()), options.clone());
            let want = burn_conv2d(x, w, Some(b), options);
            assert_eq!(burns.into_data(), want.clone().into_data(), "k {k}, pad {pad:?}: Burn's conv reads the tap-major weight differently");
            assert_eq!(ours.dims(), want.dims(), "k {k}, pad {pad:?}");
            let (a, e) = (ours.into_data().try_to_vec::<f32>().unwrap(), want.into_data().try_to_vec::<f32>().unwrap());
            let err = a.iter().zip(&e).map(|(a, e)| (a - e).abs()).fold(0f32, f32::max);
            assert!(err < 1e-5, "k {k}, pad {pad:?}: max abs difference {err}");
        }
        // strided convs are left to Burn
        assert!(conv2d(tensor([1, 2, 4, 4], 1), &tensor([2, 2, 3, 3], 2), None, [2, 2], [0, 1, 0, 1]).is_err());
    }

    /// Against Burn's GroupNorm followed by SiLU.
    #[test]
    fn group_norm_silu_equals_burns() {
        use burn::nn::GroupNormConfig;
        use burn::module::Param;
        let x = tensor([2, 8, 5, 3], 4);
        let mut gn = GroupNormConfig::new(4, 8).with_epsilon(1e-6).init(&Device::flex());
        gn.gamma = Some(Param::from_tensor(tensor([8], 5)));
        gn.beta = Some(Param::from_tensor(tensor([8], 6)));
        let ours = group_norm_silu(x.clone(), &gn).expect("applies to f32 on flex");
        let want = burn::tensor::activation::silu(gn.forward(x));
        let (a, e) = (ours.into_data().try_to_vec::<f32>().unwrap(), want.into_data().try_to_vec::<f32>().unwrap());
        let err = a.iter().zip(&e).map(|(a, e)| (a - e).abs()).fold(0f32, f32::max);
        assert!(err < 1e-5, "max abs difference {err}");
    }
}
