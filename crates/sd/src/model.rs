//! A whole SD 1.x or 2.x model: tokenizer, text encoder, UNet and VAE, from a diffusers folder, a
//! single-file checkpoint, or (in browsers) files the user handed over as bytes.

use burn::tensor::{DType, Device};

use crate::clip::{ClipConfig, ClipTextModel, text_model_key};
use crate::nn::MAX_BUFFER_ELEMENTS;
use crate::scheduler::{Prediction, SchedulerConfig};
use crate::single_file::{Layout, Part, is_sd2, is_single_file, map_key, map_legacy_vae_key};
use crate::tokenizer::ClipTokenizer;
use crate::unet_2d::{PerBlock, UNet2DConditionModel, UNetConfig};
use crate::vae::{AutoencoderKL, VaeConfig};
use crate::weights::{VarBuilder, WeightFile, is_pickle_name};
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

/// The weight files a diffusers folder's `component` may have, in the order they are tried:
/// the precision's variant first (`.fp16.safetensors` in f16), then the other, each with the
/// stem its library saves first (`model` for transformers' text encoder,
/// `diffusion_pytorch_model` for diffusers' networks), then the other stem. One rule for
/// folders on disk, hub downloads and the page.
pub fn weight_candidates(component: &str, precision: Precision) -> Vec<String> {
    let variants = match precision {
        Precision::F16 => [".fp16.safetensors", ".safetensors"],
        Precision::F32 => [".safetensors", ".fp16.safetensors"],
    };
    let stems = match component {
        "text_encoder" => ["model", "diffusion_pytorch_model"],
        _ => ["diffusion_pytorch_model", "model"],
    };
    variants.iter().flat_map(|v| stems.map(|s| format!("{component}/{s}{v}"))).collect()
}

/// Picks `component`'s weight file among `present` (paths relative to the folder `folder`) by
/// [`weight_candidates`]; a pickle file where the weights should be is refused by name.
pub fn select_weight_file<'a>(
    component: &str,
    precision: Precision,
    present: impl IntoIterator<Item = &'a str> + Clone,
    folder: &str,
) -> Result<String> {
    for c in weight_candidates(component, precision) {
        if present.clone().into_iter().any(|p| p == c) {
            return Ok(c);
        }
    }
    let prefix = format!("{component}/");
    if let Some(p) = present.into_iter().find(|p| p.starts_with(&prefix) && is_pickle_name(p)) {
        return Err(SdError::Pickle {
            path: format!("{folder}/{p}"),
        });
    }
    Err(SdError::Config {
        path: format!("{folder}/{component}"),
        reason: "no diffusion_pytorch_model.safetensors or model.safetensors here".into(),
    })
}

/// The three networks' configs and the scheduler's.
#[derive(Debug, Clone, PartialEq)]
pub struct SdConfigs {
    pub clip: ClipConfig,
    pub unet: UNetConfig,
    pub vae: VaeConfig,
    pub scheduler: SchedulerConfig,
}

impl SdConfigs {
    /// SD v1.5, the configs single-file checkpoints are read with by default.
    pub fn sd15() -> Self {
        Self {
            clip: ClipConfig::sd15(),
            unet: UNetConfig::sd15(),
            vae: VaeConfig::sd15(),
            scheduler: SchedulerConfig::default(),
        }
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
            vae: sd15.vae,
            scheduler: SchedulerConfig {
                prediction: Prediction::V,
                ..SchedulerConfig::default()
            },
        }
    }

    /// What a single-file checkpoint is read with when no configs are given: SD 2.1's when its
    /// text encoder is OpenCLIP's, else SD 1.5's; the embedded CLIP vocabulary, padded as
    /// that family pads.
    pub fn for_single_file(file: &WeightFile) -> Result<(Self, ClipTokenizer)> {
        Ok(if is_sd2(file.keys()) {
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
        let (t, p) = required("text_encoder")?;
        let clip = ClipConfig::from_json(&t, &p)?;
        let (t, p) = required("unet")?;
        let unet = UNetConfig::from_json(&t, &p)?;
        let (t, p) = required("vae")?;
        let vae = VaeConfig::from_json(&t, &p)?;
        let sched = "scheduler/scheduler_config.json";
        let scheduler = match read(sched)? {
            Some(t) => SchedulerConfig::from_json(&t, &format!("{folder}/{sched}"))?,
            None => SchedulerConfig::default(),
        };
        Ok(Self { clip, unet, vae, scheduler })
    }

    /// The long side images get by default: the UNet's native size (`sample_size` latents times
    /// the VAE's downscale: 512 for SD 1.x and 2.x-base, 768 for SD 2.x), and at least 512.
    pub fn default_long_side(&self) -> u32 {
        ((self.unet.sample_size * self.vae.downscale()) as u32).max(512)
    }

    /// What running these networks on a `width`×`height` image takes on a device, from the
    /// configs alone (before any weight is read).
    pub fn footprint(&self, precision: Precision, width: usize, height: usize) -> Footprint {
        let bytes = precision.element_bytes() as u64;
        let (clip_host, clip) = self.clip.parameters();
        let device_parameters = clip + self.unet.parameters() + self.vae.parameters();
        let c = &self.clip;
        let largest_weight = [
            c.hidden_size * c.intermediate_size,
            c.max_position_embeddings * c.hidden_size,
            self.unet.largest_weight(),
            self.vae.largest_weight(),
        ];
        // the widest full-resolution VAE activation and the UNet's first-level feed-forward
        // projection (batch 2), as cut to MAX_BUFFER_ELEMENTS
        let down = self.vae.downscale().max(1);
        let tokens = (width / down) * (height / down);
        let c0 = self.unet.block_out_channels.first().copied().unwrap_or(0);
        let widest_vae = self.vae.block_out_channels.iter().take(2).copied().max().unwrap_or(0);
        let activation = (widest_vae * width * height).max(2 * tokens * 8 * c0).min(MAX_BUFFER_ELEMENTS);
        let largest = largest_weight.into_iter().max().unwrap_or(0).max(activation);
        Footprint {
            host_parameters: clip_host,
            device_parameters,
            weight_bytes: device_parameters * bytes,
            largest_buffer_bytes: largest as u64 * bytes,
            activation_bytes: self.vae.activation_bytes(width, height, bytes as usize),
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
        if u.cross_attention_dim != self.clip.hidden_size {
            return Err(SdError::Invalid(format!(
                "the UNet attends to {}-wide text embeddings, but the text encoder gives {}: they come \
                 from different models",
                u.cross_attention_dim, self.clip.hidden_size
            )));
        }
        Ok(())
    }

    fn layout(&self) -> Layout {
        Layout {
            unet_layers_per_block: self.unet.layers_per_block,
            vae_blocks: self.vae.block_out_channels.len(),
            text_layers: self.clip.num_hidden_layers,
        }
    }
}

/// Weights for each network, in whichever files hold them.
pub struct ModelFiles {
    pub configs: SdConfigs,
    pub tokenizer: ClipTokenizer,
    /// Either one file per network (diffusers layout) or a single checkpoint holding all three.
    pub weights: WeightSource,
}

pub enum WeightSource {
    Diffusers {
        text_encoder: WeightFile,
        unet: WeightFile,
        vae: WeightFile,
    },
    SingleFile(WeightFile),
}

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

#[cfg(not(target_arch = "wasm32"))]
mod native {
    use std::path::{Path, PathBuf};

    use super::*;
    use crate::weights::read_optional;

    fn component(dir: &Path, name: &str) -> Result<PathBuf> {
        let p = dir.join(name);
        if p.is_dir() {
            Ok(p)
        } else {
            Err(SdError::Config {
                path: dir.display().to_string(),
                reason: format!("not a complete diffusers model folder: `{name}/` is missing"),
            })
        }
    }

    /// The weight file of one component by [`select_weight_file`].
    fn weight_file(dir: &Path, component: &str, precision: Precision) -> Result<PathBuf> {
        let sub = dir.join(component);
        let io = |source| SdError::Io { path: sub.clone(), source };
        let names: Vec<String> = std::fs::read_dir(&sub)
            .map_err(io)?
            .filter_map(|e| e.ok()?.file_name().into_string().ok())
            .map(|n| format!("{component}/{n}"))
            .collect();
        let rel = select_weight_file(component, precision, names.iter().map(String::as_str), &dir.display().to_string())?;
        Ok(dir.join(rel))
    }

    /// The tokenizer of a diffusers folder (`tokenizer/`), else the embedded CLIP vocabulary.
    fn folder_tokenizer(dir: &Path) -> Result<ClipTokenizer> {
        let tok_dir = dir.join("tokenizer");
        ClipTokenizer::from_folder_files(|name| read_optional(&tok_dir.join(name)))?.map_or_else(ClipTokenizer::embedded, Ok)
    }

    /// Reads the configs of a diffusers folder.
    pub fn folder_configs(dir: &Path) -> Result<SdConfigs> {
        let read = |rel: &str| {
            let path = dir.join(rel);
            read_optional(&path)?
                .map(|b| String::from_utf8(b).map_err(|e| SdError::config(&path.display().to_string(), e.to_string())))
                .transpose()
        };
        SdConfigs::from_folder_files(read, &dir.display().to_string())
    }

    impl ModelFiles {
        /// A diffusers folder: `text_encoder/`, `unet/`, `vae/` (and `tokenizer/`, else the
        /// embedded CLIP vocabulary).
        pub fn from_folder(dir: &Path, precision: Precision) -> Result<Self> {
            if !dir.is_dir() {
                return Err(SdError::Io {
                    path: dir.to_path_buf(),
                    source: std::io::Error::new(std::io::ErrorKind::NotFound, "model folder not found"),
                });
            }
            let configs = folder_configs(dir)?;
            let tokenizer = folder_tokenizer(dir)?;
            let open = |name: &str| -> Result<WeightFile> {
                component(dir, name)?;
                WeightFile::open(&weight_file(dir, name, precision)?)
            };
            Ok(Self {
                configs,
                tokenizer,
                weights: WeightSource::Diffusers {
                    text_encoder: open("text_encoder")?,
                    unet: open("unet")?,
                    vae: open("vae")?,
                },
            })
        }

        /// An original single-file checkpoint, read with the configs and tokenizer of the
        /// diffusers folder `config`, else [`SdConfigs::for_single_file`]'s.
        pub fn from_single_file(path: &Path, config: Option<&Path>) -> Result<Self> {
            let file = WeightFile::open(path)?;
            let (configs, tokenizer) = match config {
                Some(dir) => (folder_configs(dir)?, folder_tokenizer(dir)?),
                None => SdConfigs::for_single_file(&file)?,
            };
            Ok(Self {
                configs,
                tokenizer,
                weights: WeightSource::SingleFile(file),
            })
        }
    }
}

#[cfg(not(target_arch = "wasm32"))]
pub use native::folder_configs;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weight_files_follow_one_rule() {
        assert_eq!(
            weight_candidates("unet", Precision::F16),
            [
                "unet/diffusion_pytorch_model.fp16.safetensors",
                "unet/model.fp16.safetensors",
                "unet/diffusion_pytorch_model.safetensors",
                "unet/model.safetensors"
            ]
        );
        assert_eq!(weight_candidates("text_encoder", Precision::F32)[0], "text_encoder/model.safetensors");
        let both = ["unet/config.json", "unet/diffusion_pytorch_model.fp16.safetensors", "unet/diffusion_pytorch_model.safetensors"];
        let pick = |p| select_weight_file("unet", p, both, "m").unwrap();
        assert_eq!(pick(Precision::F32), "unet/diffusion_pytorch_model.safetensors");
        assert_eq!(pick(Precision::F16), "unet/diffusion_pytorch_model.fp16.safetensors");
        // the other variant when the precision's is missing
        let only16 = ["unet/diffusion_pytorch_model.fp16.safetensors"];
        assert_eq!(select_weight_file("unet", Precision::F32, only16, "m").unwrap(), only16[0]);
        let pickle = ["text_encoder/config.json", "text_encoder/pytorch_model.bin"];
        let e = select_weight_file("text_encoder", Precision::F32, pickle, "m").unwrap_err().to_string();
        assert!(e.contains("m/text_encoder/pytorch_model.bin"), "{e}");
        let e = select_weight_file("vae", Precision::F32, ["vae/config.json"], "m").unwrap_err().to_string();
        assert!(e.contains("m/vae") && e.contains("no diffusion_pytorch_model.safetensors"), "{e}");
    }
}
