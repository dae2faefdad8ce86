//! A model from named byte arrays: the page adds each file it fetched or the user picked, under
//! its path in a diffusers folder (`unet/config.json`, `unet/diffusion_pytorch_model.fp16.safetensors`,
//! …) or a single checkpoint (`sd15.safetensors`), then builds a `Session` on the GPU.

use std::collections::BTreeMap;

use edict_pipeline::pipeline::Editor;
use edict_sd::SdError;
use edict_sd::model::{ModelFiles, Precision, SdConfigs, StableDiffusion, WeightSource, select_weight_file};
use edict_sd::tokenizer::ClipTokenizer;
use edict_sd::weights::{Bytes, WeightFile, is_pickle_name, looks_like_pickle};
use wasm_bindgen::prelude::*;

use crate::session::Session;
use crate::{Gpu, js_err};

const COMPONENTS: [&str; 3] = ["text_encoder", "unet", "vae"];

#[wasm_bindgen]
pub struct ModelBuilder {
    name: String,
    files: BTreeMap<String, Vec<u8>>,
}

#[wasm_bindgen]
impl ModelBuilder {
    /// `name` is recorded in latents files (as the CLI records `--model`).
    #[wasm_bindgen(constructor)]
    pub fn new(name: String) -> Self {
        Self {
            name,
            files: BTreeMap::new(),
        }
    }

    /// Adds one file; `path` is relative to the model folder. The bytes are copied into wasm
    /// memory, so the page can drop its copy right after.
    pub fn add(&mut self, path: String, bytes: Vec<u8>) {
        self.files.insert(path.trim_start_matches("./").to_string(), bytes);
    }

    /// Loads the networks onto `gpu` in `precision` ("auto", "f16" or "f32"), consuming the files.
    pub fn build(self, gpu: &Gpu, precision: &str) -> Result<Session, JsError> {
        let precision = gpu.precision(precision)?;
        let name = self.name.clone();
        let files = self.into_model_files(precision).map_err(js_err)?;
        gpu.check_limits(&files.configs, precision)?;
        let model = StableDiffusion::load(files, &gpu.device, precision).map_err(js_err)?;
        let warning = model.unused_keys.first().map(|k| {
            format!("{} weights in the files were not used (e.g. {k})", model.unused_keys.len())
        });
        Ok(Session::new(Editor::new(model, gpu.device.clone()), gpu.lost.clone(), name, precision, warning))
    }
}

impl ModelBuilder {
    fn into_model_files(mut self, precision: Precision) -> Result<ModelFiles, SdError> {
        let single: Vec<String> = self
            .files
            .keys()
            .filter(|p| !p.contains('/') && is_weights(p))
            .cloned()
            .collect();
        let has_components = COMPONENTS.iter().all(|c| self.files.contains_key(&format!("{c}/config.json")));
        let read = |name: &str| Ok(self.files.get(&format!("tokenizer/{name}")).cloned());
        let folder_tokenizer = ClipTokenizer::from_folder_files(read)?;
        let (weights, configs, tokenizer) = match single.as_slice() {
            // a single-file checkpoint, read with the folder's configs if they came along
            [path] => {
                let file = self.weight_file(path)?;
                let (configs, tokenizer) = if has_components {
                    (self.configs()?, folder_tokenizer.map_or_else(ClipTokenizer::embedded, Ok)?)
                } else {
                    SdConfigs::for_single_file(&file)?
                };
                (WeightSource::SingleFile(file), configs, tokenizer)
            }
            [] if has_components => {
                let configs = self.configs()?;
                let mut take = |c: &str| -> Result<WeightFile, SdError> {
                    let path = self.weight_path(c, precision)?;
                    self.weight_file(&path)
                };
                let weights = WeightSource::Diffusers {
                    text_encoder: take("text_encoder")?,
                    unet: take("unet")?,
                    vae: take("vae")?,
                };
                (weights, configs, folder_tokenizer.map_or_else(ClipTokenizer::embedded, Ok)?)
            }
            [] => {
                return Err(SdError::Config {
                    path: self.name.clone(),
                    reason: "neither a diffusers folder (text_encoder/, unet/, vae/ with config.json) \
                             nor a single .safetensors checkpoint"
                        .into(),
                });
            }
            _ => {
                return Err(SdError::Invalid(format!(
                    "several checkpoints given ({}); pick one",
                    single.join(", ")
                )));
            }
        };
        Ok(ModelFiles {
            configs,
            tokenizer,
            weights,
        })
    }

    fn text(&self, path: &str) -> Result<&str, SdError> {
        std::str::from_utf8(&self.files[path]).map_err(|e| SdError::Config {
            path: path.to_string(),
            reason: e.to_string(),
        })
    }

    fn configs(&self) -> Result<SdConfigs, SdError> {
        let read = |path: &str| self.files.contains_key(path).then(|| self.text(path).map(str::to_string)).transpose();
        SdConfigs::from_folder_files(read, &self.name)
    }

    /// The component's weight file by the CLI's rule ([`select_weight_file`]).
    fn weight_path(&self, component: &str, precision: Precision) -> Result<String, SdError> {
        select_weight_file(component, precision, self.files.keys().map(String::as_str), &self.name)
    }

    fn weight_file(&mut self, path: &str) -> Result<WeightFile, SdError> {
        let bytes = self.files.remove(path).unwrap_or_default();
        if is_pickle_name(path) || looks_like_pickle(&bytes) {
            return Err(SdError::Pickle { path: path.to_string() });
        }
        WeightFile::from_bytes(path, Bytes::Owned(bytes))
    }
}

fn is_weights(path: &str) -> bool {
    path.ends_with(".safetensors") || is_pickle_name(path)
}
