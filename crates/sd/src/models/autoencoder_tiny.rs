//! diffusers `AutoencoderTiny`: TAESD (madebyollin/taesd for SD 1.x and 2.x, madebyollin/taesdxl
//! for SDXL), a 2.4 M-parameter convolutional autoencoder of SD's latent space. Its decoder turns
//! a latent into an image that looks like the VAE's in a fraction of the time: live previews.

use burn::nn::conv::Conv2d;
use burn::tensor::{DType, Device, Tensor};
use burn::tensor::activation::{relu, tanh};
use burn::tensor::module::interpolate;
use burn::tensor::ops::{InterpolateMode, InterpolateOptions};
use serde::Deserialize;

use crate::checkpoint::weights::{VarBuilder, WeightFile};
use crate::layers::nn::{ConvSpec, conv2d, conv_forward};
use crate::{Result, SdError};

/// The files of a TAESD folder (madebyollin/taesd's layout), besides [`WEIGHTS`].
pub const CONFIG: &str = "config.json";
/// The weight file of a TAESD folder.
pub const WEIGHTS: &str = "diffusion_pytorch_model.safetensors";

/// The Hugging Face repository of the TAESD for SDXL (`sdxl`) or for SD 1.x and 2.x, which
/// share a latent space.
pub fn hub_id(sdxl: bool) -> &'static str {
    if sdxl { "madebyollin/taesdxl" } else { "madebyollin/taesd" }
}

/// `config.json` of an `AutoencoderTiny`; a field the file leaves out takes diffusers' default,
/// which is TAESD's.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default)]
pub struct TinyConfig {
    pub in_channels: usize,
    pub out_channels: usize,
    pub encoder_block_out_channels: Vec<usize>,
    pub decoder_block_out_channels: Vec<usize>,
    pub act_fn: String,
    pub upsample_fn: String,
    pub latent_channels: usize,
    pub upsampling_scaling_factor: usize,
    pub num_encoder_blocks: Vec<usize>,
    pub num_decoder_blocks: Vec<usize>,
    pub scaling_factor: f64,
    pub shift_factor: f64,
}

impl Default for TinyConfig {
    fn default() -> Self {
        Self {
            in_channels: 3,
            out_channels: 3,
            encoder_block_out_channels: vec![64; 4],
            decoder_block_out_channels: vec![64; 4],
            act_fn: "relu".into(),
            upsample_fn: "nearest".into(),
            latent_channels: 4,
            upsampling_scaling_factor: 2,
            num_encoder_blocks: vec![1, 3, 3, 3],
            num_decoder_blocks: vec![3, 3, 3, 1],
            scaling_factor: 1.0,
            shift_factor: 0.0,
        }
    }
}

impl TinyConfig {
    /// Parses and checks `text` (from `path`, named in errors): what differs from TAESD's
    /// architecture in a way this port does not build is refused.
    pub fn from_json(text: &str, path: &str) -> Result<Self> {
        let c: Self = serde_json::from_str(text).map_err(|e| SdError::Config { path: path.into(), reason: e.to_string() })?;
        let bad = |what: String| Err(SdError::Config { path: path.into(), reason: format!("{what} (not a TAESD AutoencoderTiny this program builds)") });
        if c.act_fn != "relu" || c.upsample_fn != "nearest" || c.upsampling_scaling_factor != 2 {
            return bad(format!("act_fn {:?}, upsample_fn {:?}, upsampling_scaling_factor {}; TAESD's are relu, nearest, 2", c.act_fn, c.upsample_fn, c.upsampling_scaling_factor));
        }
        let levels = |channels: &[usize], blocks: &[usize]| !channels.is_empty() && channels.len() == blocks.len() && channels.iter().all(|&ch| ch == channels[0] && ch > 0);
        if !levels(&c.encoder_block_out_channels, &c.num_encoder_blocks) || !levels(&c.decoder_block_out_channels, &c.num_decoder_blocks) {
            return bad("the block lists must be non-empty, of one length per side, with one channel count per side".into());
        }
        if c.scaling_factor != 1.0 || c.shift_factor != 0.0 {
            return bad(format!("scaling_factor {} and shift_factor {}: SD's TAESD reads the UNet's latents as they are (1 and 0)", c.scaling_factor, c.shift_factor));
        }
        if c.in_channels == 0 || c.out_channels == 0 || c.latent_channels == 0 {
            return bad("zero channels".into());
        }
        Ok(c)
    }

    /// How many times smaller the latent is than the image on each side.
    pub fn downscale(&self) -> usize {
        1 << (self.num_encoder_blocks.len() - 1)
    }
}

/// `AutoencoderTinyBlock`: three 3×3 convs with ReLUs between, plus the input (through a 1×1
/// conv when the channels change), then a ReLU.
struct TinyBlock {
    convs: [Conv2d; 3],
    skip: Option<Conv2d>,
}

impl TinyBlock {
    fn load(vb: &VarBuilder, c_in: usize, c_out: usize) -> Result<Self> {
        let conv = |i: usize, c_in| conv2d(&vb.pp("conv").pp(i), ConvSpec::k3(c_in, c_out));
        Ok(Self {
            convs: [conv(0, c_in)?, conv(2, c_out)?, conv(4, c_out)?],
            skip: (c_in != c_out).then(|| conv2d(&vb.pp("skip"), ConvSpec::k1(c_in, c_out).without_bias())).transpose()?,
        })
    }

    fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let [a, b, c] = &self.convs;
        let h = conv_forward(c, relu(conv_forward(b, relu(conv_forward(a, x.clone())))));
        let skip = match &self.skip {
            Some(s) => conv_forward(s, x),
            None => x,
        };
        relu(h + skip)
    }
}

/// One entry of diffusers' `nn.Sequential` `layers` (its index is the checkpoint key's).
#[allow(clippy::large_enum_variant)] // a few dozen, built once: their size does not matter
enum Layer {
    Conv(Conv2d),
    Relu,
    Block(TinyBlock),
    Upsample,
}

fn run(layers: &[Layer], mut x: Tensor<4>) -> Tensor<4> {
    for l in layers {
        x = match l {
            Layer::Conv(c) => conv_forward(c, x),
            Layer::Relu => relu(x),
            Layer::Block(b) => b.forward(x),
            Layer::Upsample => {
                let [_, _, h, w] = x.dims();
                interpolate(x, InterpolateOptions::new(InterpolateMode::Nearest).with_output_size([2 * h, 2 * w]))
            }
        };
    }
    x
}

/// Builds `layers.{i}` in order, numbering them as the `nn.Sequential` does.
struct Layers {
    vb: VarBuilder,
    out: Vec<Layer>,
}

impl Layers {
    fn new(vb: &VarBuilder) -> Self {
        Self { vb: vb.pp("layers"), out: Vec::new() }
    }

    fn conv(&mut self, s: ConvSpec) -> Result<()> {
        let c = conv2d(&self.vb.pp(self.out.len()), s)?;
        self.out.push(Layer::Conv(c));
        Ok(())
    }

    fn blocks(&mut self, n: usize, channels: usize) -> Result<()> {
        for _ in 0..n {
            let b = TinyBlock::load(&self.vb.pp(self.out.len()), channels, channels)?;
            self.out.push(Layer::Block(b));
        }
        Ok(())
    }
}

/// diffusers' `AutoencoderTiny` (encoder and decoder).
pub struct AutoencoderTiny {
    encoder: Vec<Layer>,
    decoder: Vec<Layer>,
    pub config: TinyConfig,
}

impl AutoencoderTiny {
    pub fn load(vb: &VarBuilder, c: &TinyConfig) -> Result<Self> {
        // EncoderTiny: a conv in, then per level a stride-2 conv (none at the first) and blocks
        let mut e = Layers::new(&vb.pp("encoder"));
        for (i, (&ch, &n)) in c.encoder_block_out_channels.iter().zip(&c.num_encoder_blocks).enumerate() {
            e.conv(if i == 0 { ConvSpec::k3(c.in_channels, ch) } else { ConvSpec::halving(ch).without_bias() })?;
            e.blocks(n, ch)?;
        }
        let last = *c.encoder_block_out_channels.last().expect("checked non-empty");
        e.conv(ConvSpec::k3(last, c.latent_channels))?;

        // DecoderTiny: a conv and ReLU, then per level blocks, 2× upsampling and a conv (the
        // last level: no upsampling, a conv to the image with a bias)
        let mut d = Layers::new(&vb.pp("decoder"));
        let first = c.decoder_block_out_channels[0];
        d.conv(ConvSpec::k3(c.latent_channels, first))?;
        d.out.push(Layer::Relu);
        let levels = c.num_decoder_blocks.len();
        for (i, (&ch, &n)) in c.decoder_block_out_channels.iter().zip(&c.num_decoder_blocks).enumerate() {
            d.blocks(n, ch)?;
            if i + 1 < levels {
                d.out.push(Layer::Upsample);
                d.conv(ConvSpec::k3(ch, ch).without_bias())?;
            } else {
                d.conv(ConvSpec::k3(ch, c.out_channels))?;
            }
        }
        Ok(Self { encoder: e.out, decoder: d.out, config: c.clone() })
    }

    /// From a folder's `config.json` (`config`, read from `config_name`) and its weights
    /// (`diffusion_pytorch_model.safetensors`), in f32; weights of other layers are an error
    /// naming them.
    pub fn from_files(config: &str, config_name: &str, weights: WeightFile, device: &Device) -> Result<Self> {
        let c = TinyConfig::from_json(config, config_name)?;
        let name = weights.name().to_string();
        let vb = VarBuilder::from_files([weights], device, DType::F32);
        let model = Self::load(&vb, &c)?;
        let unused = vb.unused_keys();
        if let Some(first) = unused.first() {
            return Err(SdError::Config {
                path: name,
                reason: format!("{} tensors this AutoencoderTiny does not have, e.g. `{first}` (not a TAESD weight file?)", unused.len()),
            });
        }
        Ok(model)
    }

    /// [`Self::from_files`] from a folder holding `config.json` and `diffusion_pytorch_model.safetensors`.
    #[cfg(not(target_arch = "wasm32"))]
    pub fn from_folder(dir: &std::path::Path, device: &Device) -> Result<Self> {
        let path = dir.join(CONFIG);
        let config = std::fs::read_to_string(&path).map_err(|source| SdError::Io { path: path.clone(), source })?;
        let weights = WeightFile::open(&dir.join(WEIGHTS))?;
        Self::from_files(&config, &path.display().to_string(), weights, device)
    }

    /// The latent of `image` in [−1, 1], at the scale the UNet works in.
    pub fn encode(&self, image: Tensor<4>) -> Tensor<4> {
        run(&self.encoder, (image + 1.0) / 2.0)
    }

    /// The image in about [−1, 1] of a latent at the UNet's scale.
    pub fn decode(&self, latent: Tensor<4>) -> Tensor<4> {
        // the decoder's input clamp: tanh(x / 3) · 3
        let x = tanh(latent / 3.0) * 3.0;
        run(&self.decoder, x) * 2.0 - 1.0
    }
}
