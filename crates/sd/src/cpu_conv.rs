//! SD's 3×3 and 1×1 convolutions on the CPU backend as a few large GEMMs over the NCHW tensor
//! itself: no im2col buffer and no channels-last copy, which flex's conv builds on every call.
//!
//! With the input padded to width `wp`, output pixel `(y, x)` of a 3×3 conv is
//! `Σ_(dy, dx) W[:, :, dy, dx] · P[:, (y + dy)·wp + x + dx]`: for each of the 9 taps the whole
//! output is one `[c_out, c_in] × [c_in, h·wp]` product whose right-hand side is the padded
//! input shifted by `dy·wp + dx` (the two columns per row past the image are computed and
//! dropped). The gemm crate (the one flex uses) packs both operands itself, so the weights are
//! read in their checkpoint layout through strides. Its threads split the output, never the
//! sum over `c_in`, so every value is summed in the same order whatever the thread count.

use burn::tensor::{DType, Device, Tensor, TensorData};

/// `x` `[b, c_in, h, w]` convolved with `weight` `[c_out, c_in, k, k]` (k = 1 or 3, stride 1),
/// plus `bias`, with `pad` = `[top, bottom, left, right]` zero rows/columns; `None` where this
/// path does not apply (another backend, f16, another kernel or stride), and the caller uses
/// Burn's conv.
pub fn conv2d(x: &Tensor<4>, weight: &Tensor<4>, bias: Option<&Tensor<1>>, stride: [usize; 2], pad: [usize; 4]) -> Option<Tensor<4>> {
    let [c_out, c_in, k, kw] = weight.dims();
    let device = x.device();
    if stride != [1, 1] || k != kw || !(k == 1 || k == 3) || x.dtype() != DType::F32 || device != Device::flex() {
        return None;
    }
    let [b, _, h, w] = x.dims();
    let [top, bottom, left, right] = pad;
    let (hp, wp) = (h + top + bottom, w + left + right);
    if hp < k || wp < k {
        return None;
    }
    let (h_out, w_out) = (hp - k + 1, wp - k + 1);

    let input = x.clone().into_data();
    let input = input.as_slice::<f32>().ok()?;
    let weight = weight.clone().into_data();
    let weight = weight.as_slice::<f32>().ok()?;
    let bias = bias.map(|b| b.clone().into_data());
    let bias = match &bias {
        Some(b) => Some(b.as_slice::<f32>().ok()?),
        None => None,
    };

    let plane = hp * wp;
    let padded = if pad == [0; 4] {
        std::borrow::Cow::Borrowed(input)
    } else {
        let mut p = vec![0f32; b * c_in * plane];
        for (src, dst) in input.chunks_exact(h * w).zip(p.chunks_exact_mut(plane)) {
            for (y, row) in src.chunks_exact(w).enumerate() {
                let at = (y + top) * wp + left;
                dst[at..at + w].copy_from_slice(row);
            }
        }
        std::borrow::Cow::Owned(p)
    };

    // outputs over the padded width; the last valid one is (h_out − 1)·wp + w_out − 1
    let n = (h_out - 1) * wp + w_out;
    let wide = h_out * wp;
    let mut out_wide = vec![0f32; b * c_out * wide];
    let parallelism = if c_out * c_in * n >= 192 * 192 * 192 { gemm::Parallelism::Rayon(0) } else { gemm::Parallelism::None };
    for (src, dst) in padded.chunks_exact(c_in * plane).zip(out_wide.chunks_exact_mut(c_out * wide)) {
        if let Some(bias) = bias {
            for (row, &v) in dst.chunks_exact_mut(wide).zip(bias) {
                row.fill(v);
            }
        }
        for t in 0..k * k {
            let (dy, dx) = (t / k, t % k);
            // SAFETY: dst is c_out rows of `wide` ≥ n values; lhs reads weight[co][ci][t] for
            // co < c_out, ci < c_in; rhs reads src[ci·plane + shift + j] for j < n, and
            // shift + n − 1 = (h_out − 1 + dy)·wp + w_out − 1 + dx < hp·wp.
            unsafe {
                gemm::gemm(
                    c_out,
                    n,
                    c_in,
                    dst.as_mut_ptr(),
                    1,
                    wide as isize,
                    bias.is_some() || t > 0,
                    weight.as_ptr().add(t),
                    (k * k) as isize,
                    (c_in * k * k) as isize,
                    src.as_ptr().add(dy * wp + dx),
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
    }

    let out = if wp == w_out {
        out_wide
    } else {
        let mut out = Vec::with_capacity(b * c_out * h_out * w_out);
        for row in out_wide.chunks_exact(wp) {
            out.extend_from_slice(&row[..w_out]);
        }
        out
    };
    Some(Tensor::from_data(TensorData::new(out, [b, c_out, h_out, w_out]), &device))
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
            let ours = conv2d(&x, &w, Some(&b), [1, 1], pad).expect("applies to a stride-1 f32 conv on flex");
            let options = ConvOptions::new_with_padding([1, 1], [(pad[0], pad[1]), (pad[2], pad[3])], [1, 1], 1);
            let want = burn_conv2d(x, w, Some(b), options);
            assert_eq!(ours.dims(), want.dims(), "k {k}, pad {pad:?}");
            let (a, e) = (ours.into_data().try_to_vec::<f32>().unwrap(), want.into_data().try_to_vec::<f32>().unwrap());
            let err = a.iter().zip(&e).map(|(a, e)| (a - e).abs()).fold(0f32, f32::max);
            assert!(err < 1e-5, "k {k}, pad {pad:?}: max abs difference {err}");
        }
        // strided convs are left to Burn
        assert!(conv2d(&tensor([1, 2, 4, 4], 1), &tensor([2, 2, 3, 3], 2), None, [2, 2], [0, 1, 0, 1]).is_none());
    }
}
