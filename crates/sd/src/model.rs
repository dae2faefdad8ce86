//! A whole SD 1.x, 2.x or XL model: tokenizers, text encoders, UNet and VAE, assembled one
//! network at a time from a diffusers folder, a single-file checkpoint, or (in browsers) files
//! the user handed over as bytes, with the fingerprint that ties a saved inversion to its
//! weights; and the prompt conditioning diffusers' pipelines compute with them.

use std::rc::Rc;

use burn::tensor::{Device, Tensor};

use crate::checkpoint::files::{ModelFiles, WeightSource};
use crate::checkpoint::lora::{Lora, Merges};
use crate::checkpoint::single_file::{Part, is_single_file, map_key, map_legacy_vae_key};
use crate::checkpoint::stream::WeightStream;
use crate::checkpoint::weights::{VarBuilder, WeightFile};
use crate::config::{Precision, SdConfigs};
use crate::models::clip_text::{ClipTextModel, text_model_key};
use crate::models::unet_2d::UNet2DConditionModel;
use crate::models::vae::AutoencoderKL;
use crate::tokenizer::{ClipTokenizer, Tokens};
use crate::{Result, SdError};

pub struct StableDiffusion {
    pub tokenizer: ClipTokenizer,
    pub text_encoder: ClipTextModel,
    /// SDXL's second tokenizer and text encoder (`tokenizer_2`, `text_encoder_2`).
    pub tokenizer_2: Option<ClipTokenizer>,
    pub text_encoder_2: Option<ClipTextModel>,
    pub unet: UNet2DConditionModel,
    pub vae: AutoencoderKL,
    pub configs: SdConfigs,
    /// Keys found in the files that no network uses (worth a warning, never an error).
    pub unused_keys: Vec<String>,
    /// Identifies the weights a saved inversion depends on; see [`fingerprint`].
    pub fingerprint: String,
}

/// A prompt's conditioning, as diffusers' pipelines compute it ([`StableDiffusion::encode_prompt`]).
#[derive(Debug, Clone)]
pub struct TextEmbedding {
    /// What the UNet attends to: `[1, 77, cross_attention_dim]`.
    pub context: Tensor<3>,
    /// SDXL's pooled embedding, `[1, projection]`; `None` for SD 1.x and 2.x.
    pub pooled: Option<Tensor<2>>,
}

impl StableDiffusion {
    pub fn load(files: ModelFiles, device: &Device, precision: Precision) -> Result<Self> {
        let mut model = ModelAssembly::new(files.configs, files.tokenizer, files.tokenizer_2, device, precision)?;
        model.set_loras(files.loras)?;
        let builders = match files.weights {
            WeightSource::Diffusers(parts) => parts.into_iter().map(|(part, file)| (part, model.builder(part, file))).collect(),
            WeightSource::SingleFile(file) => {
                if !is_single_file(file.keys()) {
                    return Err(SdError::Safetensors {
                        path: file.name().to_string(),
                        reason: "not an SD single-file checkpoint (no `model.diffusion_model.*` keys)".into(),
                    });
                }
                // One parse of the header per network; the bytes stay mapped once per view.
                let layout = model.configs.layout();
                let shared = Rc::new(file);
                let view = |part: Part| {
                    VarBuilder::from_files_mapped([shared.clone()], device, model.dtype(part), move |k| {
                        map_key(k, layout).and_then(|(q, key)| (q == part).then_some(key))
                    })
                };
                model.configs.parts().iter().map(|&part| (part, view(part))).collect::<Vec<_>>()
            }
        };
        // every LoRA layer is found and checked in every network before any network loads
        let builders = builders.into_iter().map(|(part, vb)| Ok((part, model.merged(part, vb)?))).collect::<Result<Vec<_>>>()?;
        for (part, vb) in builders {
            model.add_from(part, &vb)?;
        }
        model.finish()
    }

    /// The architecture of `configs` with seeded random weights and the embedded CLIP
    /// tokenizer: runs without a download (benchmarks), produces noise.
    pub fn random(configs: SdConfigs, device: &Device, precision: Precision, seed: u64) -> Result<Self> {
        let mut model = ModelAssembly::new(configs, ClipTokenizer::embedded()?, None, device, precision)?;
        for &part in model.configs.parts() {
            let vb = VarBuilder::random(seed, device, model.dtype(part));
            model.add_from(part, &vb)?;
        }
        model.finish()
    }

    /// diffusers' `encode_prompt` for one prompt: SD 1.x and 2.x take the text encoder's last
    /// hidden state; SDXL both encoders' penultimate hidden states side by side (each on its own
    /// tokenizer's ids) and `text_encoder_2`'s pooled projection. A `negative` prompt (the one
    /// guidance steers away from) that is empty is all zeros, embedding and pooled, under SDXL's
    /// `force_zeros_for_empty_prompt`, as diffusers' SDXL pipeline makes it when given none. The
    /// first tokenizer's tokens come back (truncation, prompt-to-prompt alignment).
    pub fn encode_prompt(&self, prompt: &str, negative: bool) -> Result<(TextEmbedding, Tokens)> {
        let tokens = self.tokenizer.encode(prompt)?;
        let embedding = match (&self.tokenizer_2, &self.text_encoder_2) {
            (Some(tok_2), Some(te_2)) => {
                let (first, _) = self.text_encoder.forward_penultimate(&tokens.ids)?;
                let (second, pooled) = te_2.forward_penultimate(&tok_2.encode(prompt)?.ids)?;
                let e = TextEmbedding { context: Tensor::cat(vec![first, second], 2), pooled };
                if negative && prompt.is_empty() && self.configs.force_zeros_for_empty_prompt {
                    TextEmbedding { context: e.context.zeros_like(), pooled: e.pooled.map(|p| p.zeros_like()) }
                } else {
                    e
                }
            }
            _ => TextEmbedding { context: self.text_encoder.forward(&tokens.ids)?, pooled: None },
        };
        Ok((embedding, tokens))
    }

    /// SDXL's size conditioning of a `height`×`width` image, uncropped: diffusers' `add_time_ids`
    /// (original size, crop top-left, target size).
    pub fn time_ids(height: usize, width: usize) -> [f64; 6] {
        let (h, w) = (height as f64, width as f64);
        [h, w, 0.0, 0.0, h, w]
    }
}

/// A model built one network at a time: each network's weights go to the device as its file
/// is added, so a caller that drops each file afterwards (the browser, whose heap must not hold
/// all files at once) never holds more than one.
pub struct ModelAssembly {
    configs: SdConfigs,
    tokenizer: ClipTokenizer,
    tokenizer_2: Option<ClipTokenizer>,
    device: Device,
    precision: Precision,
    text_encoder: Option<ClipTextModel>,
    text_encoder_2: Option<ClipTextModel>,
    unet: Option<UNet2DConditionModel>,
    vae: Option<AutoencoderKL>,
    /// Per network ([`Part`] order): the fingerprint's probe tensors, as [`fingerprint`] hashes them.
    probes: [Option<Vec<u8>>; 4],
    unused_keys: Vec<String>,
    /// LoRAs merged into each network as it loads ([`Self::set_loras`]).
    loras: Vec<Rc<Lora>>,
}

impl ModelAssembly {
    /// An SDXL model without a `tokenizer_2` gets the first tokenizer padding with `!`, as
    /// SDXL's `tokenizer_2` does.
    pub fn new(
        configs: SdConfigs,
        tokenizer: ClipTokenizer,
        tokenizer_2: Option<ClipTokenizer>,
        device: &Device,
        precision: Precision,
    ) -> Result<Self> {
        configs.check()?;
        let tokenizer_2 = match tokenizer_2 {
            Some(t) => Some(t).filter(|_| configs.is_sdxl()),
            None if configs.is_sdxl() => Some(tokenizer.clone().with_pad("!")?),
            None => None,
        };
        Ok(Self {
            configs,
            tokenizer,
            tokenizer_2,
            device: device.clone(),
            precision,
            text_encoder: None,
            text_encoder_2: None,
            unet: None,
            vae: None,
            probes: [None, None, None, None],
            unused_keys: Vec::new(),
            loras: Vec::new(),
        })
    }

    /// The configs the model is assembled with.
    pub fn configs(&self) -> &SdConfigs {
        &self.configs
    }

    /// The dtype `part` runs in (the VAE's may be upcast, [`SdConfigs::vae_precision`]).
    fn dtype(&self, part: Part) -> burn::tensor::DType {
        match part {
            Part::Vae => self.configs.vae_precision(self.precision).dtype(),
            _ => self.precision.dtype(),
        }
    }

    /// Merges `loras` (in order) into the networks added after this; a LoRA made for another
    /// model family is refused here, before any weights are read.
    pub fn set_loras(&mut self, loras: Vec<Rc<Lora>>) -> Result<()> {
        if self.probes.iter().any(Option::is_some) {
            return Err(SdError::Invalid("LoRAs must be given before any network is loaded".into()));
        }
        for lora in &loras {
            lora.check_fits(&self.configs)?;
        }
        self.loras = loras;
        Ok(())
    }

    /// Loads one network from its diffusers weight file (consumed: its bytes are freed here).
    pub fn add(&mut self, part: Part, file: WeightFile) -> Result<()> {
        let vb = self.weights(part, file)?;
        self.add_from(part, &vb)
    }

    /// The weights `part` is built from: its diffusers file, under the keys the network reads,
    /// with the LoRAs merged as they are read.
    pub fn weights(&self, part: Part, file: WeightFile) -> Result<VarBuilder> {
        self.merged(part, self.builder(part, file))
    }

    /// The weights of one network's diffusers file, under the keys the network reads.
    fn builder(&self, part: Part, file: WeightFile) -> VarBuilder {
        let dtype = self.dtype(part);
        match part {
            Part::TextEncoder | Part::TextEncoder2 => {
                VarBuilder::from_files_mapped([file], &self.device, dtype, |k| Some(text_model_key(k)))
            }
            Part::Unet => VarBuilder::from_files([file], &self.device, dtype),
            Part::Vae => VarBuilder::from_files_mapped([file], &self.device, dtype, |k| Some(map_legacy_vae_key(k))),
        }
    }

    /// `vb` with the LoRAs' layers of `part` merged in as they are read.
    fn merged(&self, part: Part, vb: VarBuilder) -> Result<VarBuilder> {
        if self.loras.is_empty() {
            return Ok(vb);
        }
        let merges = Merges::resolve(&self.loras, part, self.configs.layout(), &vb.shapes())?;
        vb.with_merges(merges)
    }

    /// A receiver for `part`'s diffusers weight file named `name`, read as its bytes arrive
    /// (the page: no whole file in wasm memory), then given to [`Self::add_stream`].
    pub fn stream(&self, part: Part, name: &str) -> WeightStream {
        let map: fn(&str) -> String = match part {
            Part::TextEncoder | Part::TextEncoder2 => text_model_key,
            Part::Unet => |k| k.to_string(),
            Part::Vae => map_legacy_vae_key,
        };
        let stream = WeightStream::new(name, &self.device, self.dtype(part), map);
        if self.loras.is_empty() { stream } else { stream.with_loras(self.loras.clone(), part, self.configs.layout()) }
    }

    /// Loads one network from its streamed weight file (an error when the file ended early).
    pub fn add_stream(&mut self, part: Part, stream: WeightStream) -> Result<()> {
        let vb = VarBuilder::from_stream(stream.finish()?, &self.device, self.dtype(part));
        self.add_from(part, &vb)
    }

    fn add_from(&mut self, part: Part, vb: &VarBuilder) -> Result<()> {
        let c = &self.configs;
        match (part, &c.clip_2) {
            (Part::TextEncoder, _) => self.text_encoder = Some(ClipTextModel::load(vb, &c.clip)?),
            (Part::TextEncoder2, Some(c2)) => self.text_encoder_2 = Some(ClipTextModel::load_with_projection(vb, c2)?),
            (Part::TextEncoder2, None) => {
                return Err(SdError::Invalid("text_encoder_2 weights were given for a model that has one text encoder".into()));
            }
            (Part::Unet, _) => self.unet = Some(UNet2DConditionModel::load(vb, &c.unet)?),
            (Part::Vae, _) => self.vae = Some(AutoencoderKL::load(vb, &c.vae)?),
        }
        self.probes[part as usize] = Some(fingerprint_probes(c, part, vb)?);
        self.unused_keys.extend(vb.unused_keys().into_iter().map(|k| format!("{}: {k}", part.folder())));
        Ok(())
    }

    /// The whole model; an error names a network no file was added for.
    pub fn finish(self) -> Result<StableDiffusion> {
        let missing = |part: Part| SdError::Invalid(format!("no weights were given for the {}", part.folder()));
        let probes = (self.configs.parts().iter())
            .map(|&part| self.probes[part as usize].as_ref().ok_or_else(|| missing(part)))
            .collect::<Result<Vec<_>>>()?;
        let fingerprint = fingerprint(&self.configs, &probes, &self.loras);
        Ok(StableDiffusion {
            tokenizer: self.tokenizer,
            text_encoder: self.text_encoder.ok_or_else(|| missing(Part::TextEncoder))?,
            tokenizer_2: self.tokenizer_2,
            text_encoder_2: self.text_encoder_2,
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
    let d2 = c.clip_2.as_ref().map_or(0, |c| c.hidden_size);
    let probes = match part {
        Part::TextEncoder => vec![
            ("text_model.final_layer_norm.weight", vec![d]),
            ("text_model.final_layer_norm.bias", vec![d]),
        ],
        Part::TextEncoder2 => vec![("text_model.final_layer_norm.weight", vec![d2])],
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
/// ([`fingerprint_probes`], in [`Part`] order), the VAE scaling factor and each LoRA's content
/// and scale, in order (merging in another order rounds differently).
fn fingerprint(c: &SdConfigs, probes: &[&Vec<u8>], loras: &[Rc<Lora>]) -> String {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    h.update(b"edict-model/1");
    h.update(c.vae.scaling_factor.to_le_bytes());
    for p in probes {
        h.update(p);
    }
    for lora in loras {
        h.update(lora.identity());
    }
    h.finalize()[..8].iter().map(|b| format!("{b:02x}")).collect()
}
