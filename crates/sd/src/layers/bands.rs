//! Full-resolution VAE activations as horizontal bands, so that no buffer exceeds a size limit.
//!
//! SD's VAE decoder holds 256 channels at 512×512 (256 MiB in f32) and its encoder 128 channels
//! at the image's size (288 MiB at 768² in f32), more than WebGPU's default 128 MiB
//! storage-buffer binding limit. A tensor is kept as row bands `[b, c, rows, w]` of at most
//! `limit` elements each ([`crate::layers::MAX_BUFFER_ELEMENTS`]): convolutions read each band with its halo rows from its neighbours,
//! GroupNorm gathers its statistics over all bands before normalising each, and elementwise
//! steps run band by band. A tensor that fits in one band runs the plain layers, so small
//! images compute exactly as before.

use burn::nn::GroupNorm;
use burn::nn::conv::Conv2d;
use burn::tensor::activation::silu;
use burn::tensor::module::interpolate;
use burn::tensor::ops::{ConvOptions, InterpolateMode, InterpolateOptions};
use burn::tensor::{DType, Tensor};

use crate::layers::nn::{conv2d_with, conv_forward, conv_padding, group_norm_silu};

/// A `[b, c, h, w]` tensor as consecutive row bands (dimension 2).
#[derive(Debug, Clone)]
pub struct Bands {
    parts: Vec<Tensor<4>>,
    limit: usize,
}

impl Bands {
    /// `x` in bands of at most `limit` elements.
    pub fn new(x: Tensor<4>, limit: usize) -> Self {
        let [b, c, _, w] = x.dims();
        Self { parts: vec![x], limit }.split(rows_within(limit, b * c * w))
    }

    /// The whole tensor (for latent-sized activations and the image, which fit).
    pub fn join(self) -> Tensor<4> {
        let mut parts = self.parts;
        if parts.len() == 1 { parts.remove(0) } else { Tensor::cat(parts, 2) }
    }

    pub fn len(&self) -> usize {
        self.parts.len()
    }

    pub fn is_empty(&self) -> bool {
        self.parts.is_empty()
    }

    /// `[b, c, h, w]` of the whole tensor.
    pub fn dims(&self) -> [usize; 4] {
        let [b, c, _, w] = self.parts[0].dims();
        [b, c, self.parts.iter().map(|p| p.dims()[2]).sum(), w]
    }

    fn starts(&self) -> Vec<usize> {
        let mut r = 0;
        self.parts
            .iter()
            .map(|p| {
                let start = r;
                r += p.dims()[2];
                start
            })
            .collect()
    }

    /// The same rows in bands of at most `rows` rows (views of the current bands).
    fn split(self, rows: usize) -> Self {
        let limit = self.limit;
        let parts = self
            .parts
            .into_iter()
            .flat_map(|p| {
                let h = p.dims()[2];
                if h <= rows {
                    return vec![p];
                }
                (0..h).step_by(rows).map(|r| p.clone().narrow(2, r, rows.min(h - r))).collect()
            })
            .collect();
        Self { parts, limit }
    }

    /// Rows `r0..r1` (within the tensor) as one tensor.
    fn rows(&self, r0: usize, r1: usize) -> Tensor<4> {
        let mut out = Vec::new();
        for (p, s) in self.parts.iter().zip(self.starts()) {
            let h = p.dims()[2];
            let (a, b) = (r0.max(s), r1.min(s + h));
            if a < b {
                out.push(if b - a == h { p.clone() } else { p.clone().narrow(2, a - s, b - a) });
            }
        }
        if out.len() == 1 { out.remove(0) } else { Tensor::cat(out, 2) }
    }

    /// `f` on the whole tensor (attention at the latent's size), banded again.
    pub fn whole(self, f: impl FnOnce(Tensor<4>) -> Tensor<4>) -> Self {
        let limit = self.limit;
        Self::new(f(self.join()), limit)
    }

    /// Applies `f` to each band; `growth` is how many times more elements a band's output has.
    pub fn map(self, growth: usize, f: impl Fn(Tensor<4>) -> Tensor<4>) -> Self {
        let [b, c, _, w] = self.dims();
        let limit = self.limit;
        let parts = self.split(rows_within(limit, b * c * w * growth)).parts.into_iter().map(f).collect();
        Self { parts, limit }
    }

    /// `self + other`, band by band (`other` is cut at `self`'s band boundaries).
    pub fn add(self, other: Self) -> Self {
        let limit = self.limit;
        let starts = self.starts();
        let parts = self
            .parts
            .into_iter()
            .zip(starts)
            .map(|(p, s)| {
                let h = p.dims()[2];
                p + other.rows(s, s + h)
            })
            .collect();
        Self { parts, limit }
    }

    /// A convolution (any kernel, stride and padding): each output band reads its input rows,
    /// halo included, with the conv's vertical padding applied only at the tensor's edges.
    pub fn conv(self, conv: &Conv2d) -> Self {
        let [b, c_in, h, w] = self.dims();
        let [(top, bottom), (left, right)] = conv_padding(conv);
        let [k, kw] = conv.kernel_size;
        let [s, sw] = conv.stride;
        let c_out = conv.weight.dims()[0];
        let h_out = (h + top + bottom - k) / s + 1;
        let w_out = (w + left + right - kw) / sw + 1;
        let fits_out = b * c_out * h_out * w_out <= self.limit;
        if self.parts.len() == 1 && fits_out {
            let limit = self.limit;
            return Self { parts: vec![conv_forward(conv, self.join())], limit };
        }
        // an output band of `rows` rows reads (rows − 1)·s + k input rows
        let out_rows = rows_within(self.limit, b * c_out * w_out);
        let in_rows = (rows_within(self.limit, b * c_in * w).saturating_sub(k) / s + 1).max(1);
        let rows = out_rows.min(in_rows);
        let weight = conv.weight.val();
        let bias = conv.bias.as_ref().map(|b| b.val());
        let parts = (0..h_out)
            .step_by(rows)
            .map(|o0| {
                let o1 = (o0 + rows).min(h_out);
                // input rows o0·s − top … (o1 − 1)·s − top + k, padded where they leave the tensor
                let want0 = (o0 * s) as isize - top as isize;
                let want1 = ((o1 - 1) * s + k) as isize - top as isize;
                let (r0, r1) = (want0.max(0) as usize, (want1 as usize).min(h));
                let pad = ((r0 as isize - want0) as usize, (want1 - r1 as isize) as usize);
                let options = ConvOptions::new_with_padding([s, sw], [pad, (left, right)], conv.dilation, conv.groups);
                conv2d_with(self.rows(r0, r1), weight.clone(), bias.clone(), options)
            })
            .collect();
        Self { parts, limit: self.limit }
    }

    /// GroupNorm (statistics over all bands, in f32 for f16 input like Burn's), then SiLU.
    pub fn group_norm_silu(self, gn: &GroupNorm) -> Self {
        if self.parts.len() == 1 {
            return self.map(1, |x| group_norm_silu(gn, x));
        }
        let [_, c, h, w] = self.dims();
        let g = gn.num_groups;
        let wide = |x: &Tensor<4>| {
            let [b, c, h, w] = x.dims();
            let x = x.clone().reshape([b, g, c / g * h * w]);
            if x.dtype() == DType::F16 { x.cast(DType::F32) } else { x }
        };
        let n = (c / g * h * w) as f64;
        let sum = |f: &dyn Fn(Tensor<3>) -> Tensor<3>| {
            let mut parts = self.parts.iter().map(|p| f(wide(p)).sum_dim(2));
            let first = parts.next().expect("bands are never empty");
            parts.fold(first, |a, s| a + s).div_scalar(n)
        };
        let mean = sum(&|x| x);
        let var = sum(&|x| (x - mean.clone()).square());
        let inv = var.add_scalar(gn.epsilon).sqrt();
        let shape = [1, c, 1, 1];
        let (gamma, beta) = (gn.gamma.as_ref().map(|p| p.val().reshape(shape)), gn.beta.as_ref().map(|p| p.val().reshape(shape)));
        self.map(1, |x| {
            let dims = x.dims();
            let dtype = x.dtype();
            let mut y = ((wide(&x) - mean.clone()) / inv.clone()).cast(dtype).reshape(dims);
            if let (Some(g), Some(be)) = (&gamma, &beta) {
                y = y * g.clone() + be.clone();
            }
            silu(y)
        })
    }

    /// Nearest-neighbour 2× upsampling, band by band (a band's rows double).
    pub fn upsample2x(self) -> Self {
        self.map(4, |x| {
            let [_, _, h, w] = x.dims();
            interpolate(x, InterpolateOptions::new(InterpolateMode::Nearest).with_output_size([2 * h, 2 * w]))
        })
    }
}

/// Rows of `row_elements` each that fit in `limit` elements (at least one).
fn rows_within(limit: usize, row_elements: usize) -> usize {
    (limit / row_elements.max(1)).max(1)
}
