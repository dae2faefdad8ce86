//! A whole SD 1.x or 2.x model: tokenizer, text encoder, UNet and VAE, assembled one network at
//! a time from a diffusers folder, a single-file checkpoint, or (in browsers) files the user
//! handed over as bytes, with the fingerprint that ties a saved inversion to its weights.

use burn::tensor::Device;

use crate::checkpoint::files::{ModelFiles, WeightSource};
use crate::checkpoint::single_file::{Part, is_single_file, map_key, map_legacy_vae_key};
use crate::checkpoint::weights::{VarBuilder, WeightFile};
use crate::config::{Precision, SdConfigs};
use crate::models::clip_text::{ClipTextModel, text_model_key};
use crate::models::unet_2d::UNet2DConditionModel;
use crate::models::vae::AutoencoderKL;
use crate::tokenizer::ClipTokenizer;
use crate::{Result, SdError};

pub struct StableDiffusion {
    pub tokenizer: ClipTokenizer,
    pub text_encoder: ClipTextModel,
    pub unet: UNet2DConditionModel,
    pub vae: AutoencoderKL,
    pub configs: SdConfigs,
    /// Keys found in the files that no network uses (worth a warning, never an error).
    pub unused_keys: Vec<String>,
    /// Identifies the weights a saved inversion depends on; see [`fingerprint`].
    pub fingerprint: String,
}

impl StableDiffusion {
    pub fn load(files: ModelFiles, device: &Device, precision: Precision) -> Result<Self> {
        let mut model = ModelAssembly::new(files.configs, files.tokenizer, device, precision)?;
        match files.weights {
            WeightSource::Diffusers {
                text_encoder,
                unet,
                vae,
            } => {
                model.add(Part::TextEncoder, text_encoder)?;
                model.add(Part::Unet, unet)?;
                model.add(Part::Vae, vae)?;
            }
            WeightSource::SingleFile(file) => {
                if !is_single_file(file.keys()) {
                    return Err(SdError::Safetensors {
                        path: file.name().to_string(),
                        reason: "not an SD single-file checkpoint (no `model.diffusion_model.*` keys)".into(),
                    });
                }
                // One parse of the header per network; the bytes stay mapped once per view.
                let layout = model.configs.layout();
                let shared = std::rc::Rc::new(file);
                for part in Part::ALL {
                    let f = shared.clone();
                    let vb = VarBuilder::from_files_mapped([f], device, precision.dtype(), move |k| {
                        map_key(k, layout).and_then(|(q, key)| (q == part).then_some(key))
                    });
                    model.add_from(part, &vb)?;
                }
            }
        }
        model.finish()
    }

    /// The architecture of `configs` with seeded random weights and the embedded CLIP
    /// tokenizer: runs without a download (benchmarks), produces noise.
    pub fn random(configs: SdConfigs, device: &Device, precision: Precision, seed: u64) -> Result<Self> {
        let mut model = ModelAssembly::new(configs, ClipTokenizer::embedded()?, device, precision)?;
        let vb = VarBuilder::random(seed, device, precision.dtype());
        for part in Part::ALL {
            model.add_from(part, &vb)?;
        }
        model.finish()
    }
}

/// A model built one network at a time: each network's weights go to the device as its file
/// is added, so a caller that drops each file afterwards (the browser, whose heap must not hold
/// all files at once) never holds more than one.
pub struct ModelAssembly {
    configs: SdConfigs,
    tokenizer: ClipTokenizer,
    device: Device,
    precision: Precision,
    text_encoder: Option<ClipTextModel>,
    unet: Option<UNet2DConditionModel>,
    vae: Option<AutoencoderKL>,
    /// Per network: the fingerprint's probe tensors, as [`fingerprint`] hashes them.
    probes: [Option<Vec<u8>>; 3],
    unused_keys: Vec<String>,
}

impl ModelAssembly {
    pub fn new(configs: SdConfigs, tokenizer: ClipTokenizer, device: &Device, precision: Precision) -> Result<Self> {
        configs.check()?;
        Ok(Self {
            configs,
            tokenizer,
            device: device.clone(),
            precision,
            text_encoder: None,
            unet: None,
            vae: None,
            probes: [None, None, None],
            unused_keys: Vec::new(),
        })
    }

    /// Loads one network from its diffusers weight file (consumed: its bytes are freed here).
    pub fn add(&mut self, part: Part, file: WeightFile) -> Result<()> {
        let dtype = self.precision.dtype();
        let vb = match part {
            Part::TextEncoder => VarBuilder::from_files_mapped([file], &self.device, dtype, |k| Some(text_model_key(k))),
            Part::Unet => VarBuilder::from_files([file], &self.device, dtype),
            Part::Vae => VarBuilder::from_files_mapped([file], &self.device, dtype, |k| Some(map_legacy_vae_key(k))),
        };
        self.add_from(part, &vb)
    }

    fn add_from(&mut self, part: Part, vb: &VarBuilder) -> Result<()> {
        let c = &self.configs;
        match part {
            Part::TextEncoder => self.text_encoder = Some(ClipTextModel::load(vb, &c.clip)?),
            Part::Unet => self.unet = Some(UNet2DConditionModel::load(vb, &c.unet)?),
            Part::Vae => self.vae = Some(AutoencoderKL::load(vb, &c.vae)?),
        }
        self.probes[part as usize] = Some(fingerprint_probes(c, part, vb)?);
        self.unused_keys.extend(vb.unused_keys().into_iter().map(|k| format!("{}: {k}", part.folder())));
        Ok(())
    }

    /// The whole model; an error names a network no file was added for.
    pub fn finish(self) -> Result<StableDiffusion> {
        let missing = |part: Part| SdError::Invalid(format!("no weights were given for the {}", part.folder()));
        let probe = |part: Part| self.probes[part as usize].as_ref().ok_or_else(|| missing(part));
        let fingerprint = fingerprint(&self.configs, [probe(Part::TextEncoder)?, probe(Part::Unet)?, probe(Part::Vae)?]);
        Ok(StableDiffusion {
            tokenizer: self.tokenizer,
            text_encoder: self.text_encoder.ok_or_else(|| missing(Part::TextEncoder))?,
            unet: self.unet.ok_or_else(|| missing(Part::Unet))?,
            vae: self.vae.ok_or_else(|| missing(Part::Vae))?,
            configs: self.configs,
            unused_keys: self.unused_keys,
            fingerprint,
        })
    }
}

/// A few tensors of `part` as f16 bytes, each after its key: what [`fingerprint`] hashes.
/// Rounding to f16 makes a model's f32 and fp16 files (and its folder and single-file forms)
/// agree; the VAE's probe is in its encoder, so a decoder-only VAE swap keeps the fingerprint.
fn fingerprint_probes(c: &SdConfigs, part: Part, vb: &VarBuilder) -> Result<Vec<u8>> {
    let (d, c0, l) = (c.clip.hidden_size, c.unet.block_out_channels[0], c.vae.latent_channels);
    let probes = match part {
        Part::TextEncoder => vec![
            ("text_model.final_layer_norm.weight", vec![d]),
            ("text_model.final_layer_norm.bias", vec![d]),
        ],
        Part::Unet => vec![
            ("conv_in.weight", vec![c0, c.unet.in_channels, 3, 3]),
            ("conv_out.weight", vec![c.unet.out_channels, c0, 3, 3]),
        ],
        Part::Vae => vec![("quant_conv.weight", vec![2 * l, 2 * l, 1, 1])],
    };
    let mut bytes = Vec::new();
    for (key, shape) in probes {
        bytes.extend(key.as_bytes());
        bytes.extend(vb.host_f32(key, &shape)?.iter().flat_map(|&v| half::f16::from_f32(v).to_le_bytes()));
    }
    Ok(bytes)
}

/// Identifies the weights a saved inversion depends on: a hash of the networks' probe tensors
/// ([`fingerprint_probes`]) and the VAE scaling factor.
fn fingerprint(c: &SdConfigs, probes: [&Vec<u8>; 3]) -> String {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    h.update(b"edict-model/1");
    h.update(c.vae.scaling_factor.to_le_bytes());
    for p in probes {
        h.update(p);
    }
    h.finalize()[..8].iter().map(|b| format!("{b:02x}")).collect()
}
