//! What a Stable Diffusion model is, before any weight is read: the networks' and the
//! scheduler's configs (from a folder's `config.json` files or a preset), what they need on a
//! device, the checks that they fit together, and the precision the networks run in.

use burn::tensor::DType;

use crate::checkpoint::single_file::{Layout, Part, is_sd2, is_sdxl};
use crate::checkpoint::weights::WeightFile;
use crate::layers::MAX_BUFFER_ELEMENTS;
use crate::models::clip_text::ClipConfig;
use crate::models::unet_2d::{PerBlock, UNetConfig};
use crate::models::vae::VaeConfig;
use crate::scheduler::{Prediction, SchedulerConfig};
use crate::tokenizer::ClipTokenizer;
use crate::{Result, SdError};

/// What a model needs on a device ([`SdConfigs::footprint`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Footprint {
    /// Values kept on the host: the text encoder's token table.
    pub host_parameters: u64,
    /// Values of the three networks on the device.
    pub device_parameters: u64,
    /// Their bytes in the chosen precision.
    pub weight_bytes: u64,
    /// The largest single buffer, a weight or an activation (activations are cut to
    /// [`MAX_BUFFER_ELEMENTS`]): what the adapter's `maxStorageBufferBindingSize` must allow.
    pub largest_buffer_bytes: u64,
    /// A lower bound on the activations the VAE holds at once at this size
    /// ([`VaeConfig::activation_bytes`]).
    pub activation_bytes: u64,
}

/// Numeric precision of the networks on the device. The sampler stays in f64 on the host.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Precision {
    #[default]
    F32,
    F16,
}

impl Precision {
    /// Bytes per network value on the device.
    pub fn element_bytes(self) -> usize {
        match self {
            Precision::F32 => 4,
            Precision::F16 => 2,
        }
    }

    pub fn dtype(self) -> DType {
        match self {
            Precision::F32 => DType::F32,
            Precision::F16 => DType::F16,
        }
    }
}

impl std::fmt::Display for Precision {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::F32 => "f32",
            Self::F16 => "f16",
        })
    }
}

impl std::str::FromStr for Precision {
    type Err = SdError;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "f32" => Ok(Self::F32),
            "f16" => Ok(Self::F16),
            _ => Err(SdError::Invalid(format!("precision `{s}`: expected f32 or f16"))),
        }
    }
}

/// The networks' configs and the scheduler's.
#[derive(Debug, Clone, PartialEq)]
pub struct SdConfigs {
    pub clip: ClipConfig,
    /// SDXL's second text encoder (`text_encoder_2`, projected); `None` for SD 1.x and 2.x.
    pub clip_2: Option<ClipConfig>,
    pub unet: UNetConfig,
    pub vae: VaeConfig,
    pub scheduler: SchedulerConfig,
    /// SDXL (`model_index.json`, true in SDXL base): an empty negative prompt's embedding and
    /// pooled embedding are zeros, not the encoders' output for "".
    pub force_zeros_for_empty_prompt: bool,
}

impl SdConfigs {
    /// SD v1.5, the configs single-file checkpoints are read with by default.
    pub fn sd15() -> Self {
        Self {
            clip: ClipConfig::sd15(),
            clip_2: None,
            unet: UNetConfig::sd15(),
            vae: VaeConfig::sd15(),
            scheduler: SchedulerConfig::default(),
            force_zeros_for_empty_prompt: false,
        }
    }

    /// SDXL base 1.0 (1024², ε-prediction), the configs SDXL single-file checkpoints are read
    /// with by default: CLIP ViT-L and OpenCLIP ViT-bigG text towers side by side (768 + 1280 =
    /// 2048-wide context), the `text_time` UNet, SD's VAE retrained (scaling 0.13025, upcast).
    pub fn sdxl() -> Self {
        Self {
            clip_2: Some(ClipConfig::sdxl_2()),
            unet: UNetConfig::sdxl(),
            vae: VaeConfig::sdxl(),
            force_zeros_for_empty_prompt: true,
            ..Self::sd15()
        }
    }

    /// Whether this is an SDXL model (two text encoders, the `text_time` UNet).
    pub fn is_sdxl(&self) -> bool {
        self.clip_2.is_some()
    }

    /// The networks this model has, in loading order.
    pub fn parts(&self) -> &'static [Part] {
        if self.is_sdxl() { &Part::ALL } else { &Part::ALL[..3] }
    }

    /// Values in `part`'s weight file (the text encoders' token tables included).
    pub fn part_parameters(&self, part: Part) -> u64 {
        let clip = |c: &ClipConfig| {
            let (host, device) = c.parameters();
            host + device
        };
        match (part, &self.clip_2) {
            (Part::TextEncoder, _) => clip(&self.clip),
            (Part::TextEncoder2, Some(c)) => clip(c) + c.projection_parameters(),
            (Part::TextEncoder2, None) => 0,
            (Part::Unet, _) => self.unet.parameters(),
            (Part::Vae, _) => self.vae.parameters(),
        }
    }

    /// The precision the VAE runs in: SDXL pipelines run a `force_upcast` VAE in f32 (SDXL's
    /// overflows in f16); everything else runs in the model's.
    pub fn vae_precision(&self, precision: Precision) -> Precision {
        if self.is_sdxl() && self.vae.force_upcast { Precision::F32 } else { precision }
    }

    /// SD 2.1 (768², v-prediction), the configs SD 2.x single-file checkpoints are read with by
    /// default: OpenCLIP ViT-H's text tower (23 of its 24 layers), 64-wide attention heads,
    /// linear projections, upcast attention.
    pub fn sd21() -> Self {
        let sd15 = Self::sd15();
        Self {
            clip: ClipConfig {
                hidden_size: 1024,
                intermediate_size: 4096,
                num_hidden_layers: 23,
                num_attention_heads: 16,
                hidden_act: "gelu".into(),
                ..sd15.clip
            },
            unet: UNetConfig {
                attention_head_dim: PerBlock::Each(vec![5, 10, 20, 20]),
                cross_attention_dim: 1024,
                use_linear_projection: true,
                upcast_attention: true,
                sample_size: 96,
                ..sd15.unet
            },
            scheduler: SchedulerConfig {
                prediction: Prediction::V,
                ..SchedulerConfig::default()
            },
            ..sd15
        }
    }

    /// What a single-file checkpoint is read with when no configs are given: SDXL base's when
    /// it has SGM's two text encoders, SD 2.1's when its text encoder is OpenCLIP's, else SD
    /// 1.5's; the embedded CLIP vocabulary, padded as that family pads (SDXL's second
    /// tokenizer with `!`, [`ModelAssembly::new`](crate::model::ModelAssembly::new)).
    pub fn for_single_file(file: &WeightFile) -> Result<(Self, ClipTokenizer)> {
        Ok(if is_sdxl(file.keys()) {
            (Self::sdxl(), ClipTokenizer::embedded()?)
        } else if is_sd2(file.keys()) {
            (Self::sd21(), ClipTokenizer::embedded()?.with_pad("!")?)
        } else {
            (Self::sd15(), ClipTokenizer::embedded()?)
        })
    }

    /// The configs of a diffusers folder named `folder`, each file read through `read` (a path
    /// relative to the folder; `None` when absent), so folders on disk and files handed over
    /// by a browser follow one rule. The scheduler config is optional (SD's defaults).
    pub fn from_folder_files(read: impl Fn(&str) -> Result<Option<String>>, folder: &str) -> Result<Self> {
        let required = |component: &str| -> Result<(String, String)> {
            let path = format!("{component}/config.json");
            let text = read(&path)?.ok_or_else(|| {
                SdError::config(folder, format!("not a complete diffusers model folder: `{component}/` is missing"))
            })?;
            Ok((text, format!("{folder}/{path}")))
        };
        let optional = |path: &str| -> Result<Option<(String, String)>> { Ok(read(path)?.map(|t| (t, format!("{folder}/{path}")))) };
        let clip_2 = optional("text_encoder_2/config.json")?;
        if clip_2.is_some() && read("text_encoder/config.json")?.is_none() {
            return Err(SdError::config(
                folder,
                "an SDXL refiner (one text encoder, conditioned on aesthetic scores) is not supported; use an SDXL base model",
            ));
        }
        let (t, p) = required("text_encoder")?;
        let clip = ClipConfig::from_json(&t, &p)?;
        let clip_2 = clip_2.map(|(t, p)| ClipConfig::from_json(&t, &p)).transpose()?;
        let (t, p) = required("unet")?;
        let unet = UNetConfig::from_json(&t, &p)?;
        let (t, p) = required("vae")?;
        let vae = VaeConfig::from_json(&t, &p)?;
        let scheduler = match optional("scheduler/scheduler_config.json")? {
            Some((t, p)) => SchedulerConfig::from_json(&t, &p)?,
            None => SchedulerConfig::default(),
        };
        // diffusers' StableDiffusionXLPipeline defaults it to true
        let force_zeros_for_empty_prompt = clip_2.is_some()
            && match optional("model_index.json")? {
                Some((t, p)) => crate::error::parse_config::<ModelIndex>(&t, &p)?.force_zeros_for_empty_prompt,
                None => true,
            };
        Ok(Self { clip, clip_2, unet, vae, scheduler, force_zeros_for_empty_prompt })
    }

    /// The long side images get by default: the UNet's native size (`sample_size` latents times
    /// the VAE's downscale: 512 for SD 1.x and 2.x-base, 768 for SD 2.x, 1024 for SDXL), and at
    /// least 512.
    pub fn default_long_side(&self) -> u32 {
        ((self.unet.sample_size * self.vae.downscale()) as u32).max(512)
    }

    /// What running these networks on a `width`×`height` image takes on a device, from the
    /// configs alone (before any weight is read).
    pub fn footprint(&self, precision: Precision, width: usize, height: usize) -> Footprint {
        let bytes = precision.element_bytes() as u64;
        let vae_bytes = self.vae_precision(precision).element_bytes() as u64;
        let (mut host_parameters, clip) = self.clip.parameters();
        let mut device_parameters = clip + self.unet.parameters();
        let mut largest_weight = vec![self.unet.largest_weight(), self.vae.largest_weight()];
        for c in std::iter::once(&self.clip).chain(&self.clip_2) {
            largest_weight.extend([c.hidden_size * c.intermediate_size, c.max_position_embeddings * c.hidden_size]);
        }
        if let Some(c) = &self.clip_2 {
            let (host, device) = c.parameters();
            host_parameters += host;
            device_parameters += device + c.projection_parameters();
        }
        // the widest full-resolution VAE activation and the UNet's first-level feed-forward
        // projection (batch 2), as cut to MAX_BUFFER_ELEMENTS
        let down = self.vae.downscale().max(1);
        let tokens = (width / down) * (height / down);
        let c0 = self.unet.block_out_channels.first().copied().unwrap_or(0);
        let widest_vae = self.vae.block_out_channels.iter().take(2).copied().max().unwrap_or(0);
        let activation = (widest_vae * width * height).max(2 * tokens * 8 * c0).min(MAX_BUFFER_ELEMENTS);
        let largest = largest_weight.into_iter().max().unwrap_or(0).max(activation);
        let vae_parameters = self.vae.parameters();
        Footprint {
            host_parameters,
            device_parameters: device_parameters + vae_parameters,
            weight_bytes: device_parameters * bytes + vae_parameters * vae_bytes,
            largest_buffer_bytes: largest as u64 * bytes.max(vae_bytes),
            activation_bytes: self.vae.activation_bytes(width, height, vae_bytes as usize),
        }
    }

    /// Refuses networks that cannot work together, before any weight is read: a UNet whose
    /// input is not the VAE's latent (inpainting, instruct-pix2pix) or whose cross-attention
    /// width is not the text encoder's.
    pub fn check(&self) -> Result<()> {
        let (u, l) = (&self.unet, self.vae.latent_channels);
        if u.in_channels != l || u.out_channels != l {
            let kind = match u.in_channels {
                9 => " (an inpainting UNet: it also takes a mask and a masked image)",
                8 => " (an instruct-pix2pix UNet: it also takes the image's latent)",
                _ => "",
            };
            return Err(SdError::Invalid(format!(
                "the UNet takes {} and gives {} channels, but the VAE's latents have {l}{kind}; \
                 only text-to-image UNets can be inverted",
                u.in_channels, u.out_channels
            )));
        }
        let text_width = self.clip.hidden_size + self.clip_2.as_ref().map_or(0, |c| c.hidden_size);
        if u.cross_attention_dim != text_width {
            let encoders = if self.is_sdxl() { "text encoders give" } else { "text encoder gives" };
            return Err(SdError::Invalid(format!(
                "the UNet attends to {}-wide text embeddings, but the {encoders} {text_width}: they come \
                 from different models",
                u.cross_attention_dim
            )));
        }
        match (u.text_time(), &self.clip_2) {
            (None, None) => Ok(()),
            (Some(d), Some(c)) if d.pooled == c.projection_dim => Ok(()),
            // five size numbers and an aesthetic score in place of six: 2560 = 1280 + 5·256
            (Some(d), Some(c)) if d.pooled + d.time == c.projection_dim => Err(SdError::Invalid(
                "an SDXL refiner UNet (conditioned on aesthetic scores) is not supported; use an SDXL base model".into(),
            )),
            (Some(d), Some(c)) => Err(SdError::Invalid(format!(
                "the UNet takes a {}-wide pooled text embedding, but text_encoder_2 projects to {}",
                d.pooled, c.projection_dim
            ))),
            (Some(_), None) => Err(SdError::Invalid("an SDXL UNet (addition_embed_type text_time) needs text_encoder_2".into())),
            (None, Some(_)) => Err(SdError::Invalid("text_encoder_2 is given, but the UNet takes no pooled text embedding".into())),
        }
    }

    pub(crate) fn layout(&self) -> Layout {
        Layout {
            unet_layers_per_block: self.unet.layers_per_block,
            vae_blocks: self.vae.block_out_channels.len(),
            text_layers: self.clip.num_hidden_layers,
            text_2_layers: self.clip_2.as_ref().map_or(0, |c| c.num_hidden_layers),
        }
    }
}

/// The field of a pipeline's `model_index.json` the conditioning depends on.
#[derive(serde::Deserialize)]
struct ModelIndex {
    #[serde(default = "yes")]
    force_zeros_for_empty_prompt: bool,
}

fn yes() -> bool {
    true
}

/// Reads the configs of a diffusers folder on disk.
#[cfg(not(target_arch = "wasm32"))]
/// Reads the configs of a diffusers folder.
pub fn folder_configs(dir: &std::path::Path) -> Result<SdConfigs> {
    let read = |rel: &str| {
        let path = dir.join(rel);
        crate::checkpoint::weights::read_optional(&path)?
            .map(|b| String::from_utf8(b).map_err(|e| SdError::config(&path.display().to_string(), e.to_string())))
            .transpose()
    };
    SdConfigs::from_folder_files(read, &dir.display().to_string())
}

#[cfg(test)]
mod tests {
    use serde_json::{Value, json};

    use super::*;

    /// `value` without `key`, as a config file's text.
    fn without(value: &Value, key: &str) -> String {
        let mut v = value.clone();
        v.as_object_mut().unwrap().remove(key);
        v.to_string()
    }

    /// A field a config leaves out takes SD 1.5's value (the VAE's `layers_per_block` diffusers'
    /// 1); the fields with no default are still required, named as serde names a missing field.
    #[test]
    fn missing_fields_take_sd15_values_and_required_ones_are_named() {
        let sd15 = SdConfigs::sd15();
        let (u, v, c) = (&sd15.unet, &sd15.vae, &sd15.clip);
        let unet = json!({
            "block_out_channels": u.block_out_channels,
            "down_block_types": u.down_block_types,
            "up_block_types": u.up_block_types,
            "cross_attention_dim": u.cross_attention_dim,
        });
        assert_eq!(&UNetConfig::from_json(&unet.to_string(), "u").unwrap(), u);
        let vae = json!({ "block_out_channels": v.block_out_channels });
        assert_eq!(VaeConfig::from_json(&vae.to_string(), "v").unwrap(), VaeConfig { layers_per_block: 1, ..v.clone() });
        let clip = json!({
            "vocab_size": c.vocab_size,
            "hidden_size": c.hidden_size,
            "intermediate_size": c.intermediate_size,
            "num_hidden_layers": c.num_hidden_layers,
            "num_attention_heads": c.num_attention_heads,
            "max_position_embeddings": c.max_position_embeddings,
            "eos_token_id": c.eos_token_id,
        });
        assert_eq!(&ClipConfig::from_json(&clip.to_string(), "c").unwrap(), c);

        let parse: [(&Value, fn(&str) -> Result<()>); 3] = [
            (&unet, |t| UNetConfig::from_json(t, "f").map(drop)),
            (&vae, |t| VaeConfig::from_json(t, "f").map(drop)),
            (&clip, |t| ClipConfig::from_json(t, "f").map(drop)),
        ];
        for (config, parse) in parse {
            for key in config.as_object().unwrap().keys().filter(|k| *k != "eos_token_id") {
                let text = without(config, key);
                let e = parse(&text).unwrap_err().to_string();
                assert_eq!(e, format!("f: missing field `{key}` at line 1 column {}", text.len()));
            }
        }
        // as serde_json::from_str orders its errors: a bad value before a missing field, a
        // missing field before trailing characters
        let e = UNetConfig::from_json(r#"{"in_channels": "4"}"#, "f").unwrap_err().to_string();
        assert!(e.contains("invalid type: string \"4\", expected usize at line 1 column 19"), "{e}");
        let e = VaeConfig::from_json("{} x", "f").unwrap_err().to_string();
        assert!(e.contains("missing field `block_out_channels` at line 1 column 2"), "{e}");
        let e = VaeConfig::from_json(&format!("{vae} x"), "f").unwrap_err().to_string();
        assert!(e.contains("trailing characters"), "{e}");
    }

    /// SDXL base's published sizes (diffusers' `num_parameters()` of each network).
    #[test]
    fn sdxl_preset_has_the_published_sizes() {
        let c = SdConfigs::sdxl();
        c.check().unwrap();
        let sizes = [(Part::Unet, 2_567_463_684), (Part::TextEncoder, 123_060_480), (Part::TextEncoder2, 694_659_840), (Part::Vae, 83_653_863)];
        for (part, published) in sizes {
            assert_eq!(c.part_parameters(part), published, "{part:?}");
        }
        assert_eq!(c.default_long_side(), 1024);
        // f16 weights with the VAE upcast to f32
        let f = c.footprint(Precision::F16, 1024, 1024);
        let te = 123_060_480 + 694_659_840 - (49408 * 768 + 49408 * 1280);
        assert_eq!(f.weight_bytes, 2 * (te + 2_567_463_684) + 4 * 83_653_863);
    }

    /// A refiner's UNet (aesthetic score in place of the sixth size number) is refused by name.
    #[test]
    fn sdxl_refiner_unet_is_refused() {
        let mut c = SdConfigs::sdxl();
        c.unet.projection_class_embeddings_input_dim = Some(1280 + 5 * 256);
        let e = c.check().unwrap_err().to_string();
        assert!(e.contains("SDXL refiner"), "{e}");
    }
}
