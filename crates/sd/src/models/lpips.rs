//! torchmetrics' `LearnedPerceptualImagePatchSimilarity(net_type='squeeze')`: LPIPS v0.1 on
//! torchvision's SqueezeNet 1.1 features, the background LPIPS PIE-Bench reports. Field names
//! follow torchmetrics' `_LPIPS` state dict (`net.slices.S.I.*`, `linK.model.1.weight`), the
//! file `scripts/convert_metric_weights.py lpips` writes from the upstream pickles.

use burn::nn::conv::Conv2d;
use burn::tensor::module::max_pool2d;
use burn::tensor::ops::MaxPoolOptions;
use burn::tensor::{Device, Tensor, TensorData};
#[cfg(not(target_arch = "wasm32"))]
use serde::Deserialize;

use crate::checkpoint::weights::VarBuilder;
#[cfg(not(target_arch = "wasm32"))]
use crate::error::parse_config;
use crate::layers::nn::{ConvSpec, conv2d, conv_forward};
use crate::{Result, SdError};

/// The folder's files: [`Lpips::from_folder`] reads them.
pub const CONFIG: &str = "config.json";
pub const WEIGHTS: &str = "lpips-squeeze.safetensors";

/// `config.json`: which backbone the heads were trained on; only SqueezeNet is PIE-Bench's.
#[cfg(not(target_arch = "wasm32"))]
#[derive(Debug, Deserialize)]
struct LpipsConfig {
    net_type: String,
}

/// torchvision's `Fire` module: a 1×1 squeeze, then 1×1 and 3×3 expansions side by side.
struct Fire {
    squeeze: Conv2d,
    expand1x1: Conv2d,
    expand3x3: Conv2d,
}

impl Fire {
    fn load(vb: &VarBuilder, c_in: usize, squeeze: usize, expand: usize) -> Result<Self> {
        Ok(Self {
            squeeze: conv2d(&vb.pp("squeeze"), ConvSpec::k1(c_in, squeeze))?,
            expand1x1: conv2d(&vb.pp("expand1x1"), ConvSpec::k1(squeeze, expand))?,
            expand3x3: conv2d(&vb.pp("expand3x3"), ConvSpec::k3(squeeze, expand))?,
        })
    }

    fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let s = burn::tensor::activation::relu(conv_forward(&self.squeeze, x));
        let a = burn::tensor::activation::relu(conv_forward(&self.expand1x1, s.clone()));
        let b = burn::tensor::activation::relu(conv_forward(&self.expand3x3, s));
        Tensor::cat(vec![a, b], 1)
    }
}

/// A Fire module's `(c_in, squeeze, expand)` channels.
type FireSpec = (usize, usize, usize);

/// SqueezeNet 1.1's features after the first convolution (slice 0, `features[0..2]`), in
/// torchmetrics' slices 1 to 6: each Fire's index in `features`, its channels, and whether a
/// `MaxPool2d(3, stride=2, ceil_mode=True)` (the index before it) comes first.
const SLICES: [&[(usize, FireSpec, bool)]; 6] = [
    &[(3, (64, 16, 64), true), (4, (128, 16, 64), false)],
    &[(6, (128, 32, 128), true), (7, (256, 32, 128), false)],
    &[(9, (256, 48, 192), true)],
    &[(10, (384, 48, 192), false)],
    &[(11, (384, 64, 256), false)],
    &[(12, (512, 64, 256), false)],
];

/// Channels of each slice's output.
const CHANNELS: [usize; 7] = [64, 128, 256, 384, 384, 512, 512];

/// LPIPS' input scaling (`ScalingLayer`): `(x − shift) / scale` per channel.
const SHIFT: [f32; 3] = [-0.030, -0.088, -0.188];
const SCALE: [f32; 3] = [0.458, 0.448, 0.450];

pub struct Lpips {
    /// `features[0]`, 3×3 stride 2 without padding (its ReLU is `features[1]`)
    conv0: Conv2d,
    /// slices 1 to 6: each Fire, pooled first when `true`
    slices: Vec<Vec<(Fire, bool)>>,
    /// `linK.model.1.weight` (`[1, C, 1, 1]`, no bias) as `[1, C, 1, 1]` tensors.
    lins: Vec<Tensor<4>>,
    device: Device,
}

impl Lpips {
    pub fn load(vb: &VarBuilder) -> Result<Self> {
        let net = vb.pp("net").pp("slices");
        let conv0 = conv2d(&net.pp(0).pp(0), ConvSpec { stride: 2, padding: 0, ..ConvSpec::k3(3, 64) })?;
        let slices = (SLICES.iter().enumerate())
            .map(|(s, fires)| {
                (fires.iter())
                    .map(|&(i, (c_in, squeeze, expand), pool)| Ok((Fire::load(&net.pp(s + 1).pp(i), c_in, squeeze, expand)?, pool)))
                    .collect::<Result<Vec<_>>>()
            })
            .collect::<Result<_>>()?;
        let lins = (CHANNELS.iter().enumerate())
            .map(|(k, &c)| vb.pp(format!("lin{k}")).pp("model").pp(1).get("weight", [1, c, 1, 1]))
            .collect::<Result<_>>()?;
        Ok(Self { conv0, slices, lins, device: vb.device().clone() })
    }

    /// The network of a folder holding [`CONFIG`] and [`WEIGHTS`], in f32.
    #[cfg(not(target_arch = "wasm32"))]
    pub fn from_folder(dir: &std::path::Path, device: &Device) -> Result<Self> {
        let path = dir.join(CONFIG);
        let text = std::fs::read_to_string(&path).map_err(|source| SdError::Io { path: path.clone(), source })?;
        let config: LpipsConfig = parse_config(&text, &path.display().to_string())?;
        if config.net_type != "squeeze" {
            return Err(SdError::Config {
                path: path.display().to_string(),
                reason: format!("net_type `{}`: only LPIPS on SqueezeNet (`squeeze`, PIE-Bench's) is supported", config.net_type),
            });
        }
        let weights = crate::checkpoint::weights::WeightFile::open(&dir.join(WEIGHTS))?;
        Self::load(&VarBuilder::from_files([weights], device, burn::tensor::DType::F32))
    }

    /// The 7 slices' outputs for `x` (`[N, 3, H, W]`, already scaled).
    fn features(&self, x: Tensor<4>) -> Vec<Tensor<4>> {
        let pool = MaxPoolOptions::new([3, 3]).with_stride([2, 2]).with_ceil_mode(true);
        let mut x = burn::tensor::activation::relu(conv_forward(&self.conv0, x));
        let mut out = vec![x.clone()];
        for slice in &self.slices {
            for (fire, pooled) in slice {
                if *pooled {
                    x = max_pool2d(x, pool.clone());
                }
                x = fire.forward(x);
            }
            out.push(x.clone());
        }
        out
    }

    /// LPIPS between two `h`×`w` RGB images given as `[3, h, w]` planes in [−1, 1] (torchmetrics'
    /// `normalize=False` input): the 7 layers' spatially averaged, head-weighted squared
    /// differences of channel-normalised features, summed. Also each layer's term.
    pub async fn distance(&self, a: &[f32], b: &[f32], h: usize, w: usize) -> Result<(f64, [f64; 7])> {
        if a.len() != 3 * h * w || b.len() != a.len() {
            return Err(SdError::Invalid(format!("LPIPS needs two 3×{h}×{w} images, got {} and {} values", a.len(), b.len())));
        }
        // the first convolution and three stride-2 pools leave at least one position
        if h < 3 || w < 3 {
            return Err(SdError::Invalid(format!("LPIPS needs images of at least 3×3 pixels, got {w}×{h}")));
        }
        let pixels = [a, b].concat();
        let x = Tensor::<4>::from_data(TensorData::new(pixels, [2, 3, h, w]), &self.device);
        let shift = Tensor::<1>::from_floats(SHIFT, &self.device).reshape([1, 3, 1, 1]);
        let scale = Tensor::<1>::from_floats(SCALE, &self.device).reshape([1, 3, 1, 1]);
        let x = (x - shift) / scale;
        let mut terms = [0f64; 7];
        for (k, (f, lin)) in self.features(x).into_iter().zip(&self.lins).enumerate() {
            // `_normalize_tensor`: eps inside the square root
            let norm = (f.clone().powi_scalar(2).sum_dim(1) + 1e-8).sqrt();
            let f = f / norm;
            let [_, c, fh, fw] = f.dims();
            let f0 = f.clone().slice([0..1, 0..c, 0..fh, 0..fw]);
            let f1 = f.slice([1..2, 0..c, 0..fh, 0..fw]);
            let weighted = ((f0 - f1).powi_scalar(2) * lin.clone()).sum_dim(1);
            let values = crate::device::backend::read(weighted).await?;
            terms[k] = values.iter().map(|&v| v as f64).sum::<f64>() / values.len() as f64;
        }
        Ok((terms.iter().sum(), terms))
    }
}
