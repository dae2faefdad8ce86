//! A model from named byte arrays: the page adds each file it fetched or the user picked, under
//! its path in a diffusers folder (`unet/config.json`, `unet/diffusion_pytorch_model.fp16.safetensors`,
//! …) or a single checkpoint (`sd15.safetensors`), then builds a `Session` on the GPU.
//!
//! A folder streams: once its configs and tokenizer are in, `begin` checks the GPU's limits, and
//! each weight file is then received in pieces (`add_chunk`, `finish_file`): every tensor goes to
//! the GPU as its bytes arrive ([`WeightStream`]), so wasm memory never holds a whole weight file
//! (SDXL's fp16 UNet is 5.1 GB; wasm32 has 4 GiB), and the network is built when its file ends.

use std::collections::BTreeMap;
use std::rc::Rc;

use edict_pipeline::editor::Editor;
use edict_sd::SdError;
use edict_sd::checkpoint::files::{ModelFiles, WeightSource, select_weight_file};
use edict_sd::checkpoint::lora::Lora;
use edict_sd::config::{Precision, SdConfigs};
use edict_sd::model::{ModelAssembly, StableDiffusion};
use edict_sd::checkpoint::single_file::Part;
use edict_sd::checkpoint::stream::WeightStream;
use edict_sd::tokenizer::ClipTokenizer;
use edict_sd::checkpoint::weights::{Bytes, WeightFile, is_pickle_name, looks_like_pickle};
use wasm_bindgen::prelude::*;

use crate::session::Session;
use crate::{Gpu, js_err};

#[wasm_bindgen]
pub struct ModelBuilder {
    name: String,
    files: BTreeMap<String, Vec<u8>>,
    /// Started by `begin`: the networks built so far and their precision.
    assembly: Option<(ModelAssembly, Precision)>,
    /// Weight files being received, by path.
    streams: BTreeMap<String, (Part, WeightStream)>,
    /// LoRA files to merge, in the order they were added.
    loras: Vec<Rc<Lora>>,
}

#[wasm_bindgen]
impl ModelBuilder {
    /// `name` is recorded in latents files (as the CLI records `--model`).
    #[wasm_bindgen(constructor)]
    pub fn new(name: String) -> Self {
        Self {
            name,
            files: BTreeMap::new(),
            assembly: None,
            streams: BTreeMap::new(),
            loras: Vec::new(),
        }
    }

    /// Adds a LoRA file (kohya-ss or diffusers/PEFT safetensors) merged into the weights at
    /// `scale` as they load; before `begin`. Read and checked here, so a bad file fails at once.
    #[wasm_bindgen(js_name = addLora)]
    pub fn add_lora(&mut self, name: String, bytes: Vec<u8>, scale: f32) -> Result<(), JsError> {
        if self.assembly.is_some() {
            return Err(JsError::new("LoRAs must be added before the model's weights"));
        }
        if is_pickle_name(&name) || looks_like_pickle(&bytes) {
            return Err(js_err(SdError::Pickle { path: name }));
        }
        self.loras.push(Rc::new(Lora::from_bytes(&name, &bytes, scale).map_err(js_err)?));
        Ok(())
    }

    /// Adds one file; `path` is relative to the model folder. The bytes are copied into wasm
    /// memory, so the page can drop its copy right after. After `begin`, a network's weight file
    /// (`unet/….safetensors`) is built on the GPU here, as `add_chunk` and `finish_file` would.
    pub fn add(&mut self, path: String, bytes: Vec<u8>) -> Result<(), JsError> {
        let path = path.trim_start_matches("./").to_string();
        if self.assembly.is_some() && network_of(&path).is_some() {
            self.add_chunk(path.clone(), bytes)?;
            return self.finish_file(path);
        }
        self.files.insert(path, bytes);
        Ok(())
    }

    /// The next bytes of a network's weight file, after `begin`: each tensor they complete goes
    /// to the GPU and its bytes are freed.
    #[wasm_bindgen(js_name = addChunk)]
    pub fn add_chunk(&mut self, path: String, bytes: Vec<u8>) -> Result<(), JsError> {
        let path = path.trim_start_matches("./").to_string();
        let (Some((assembly, _)), Some(part)) = (&self.assembly, network_of(&path)) else {
            return Err(JsError::new(&format!("{path}: not a network's weight file of a model being streamed")));
        };
        if !self.streams.contains_key(&path) {
            if is_pickle_name(&path) || looks_like_pickle(&bytes) {
                return Err(js_err(SdError::Pickle { path }));
            }
            self.streams.insert(path.clone(), (part, assembly.stream(part, &path)));
        }
        let (_, stream) = self.streams.get_mut(&path).expect("inserted above");
        stream.push(&bytes).map_err(js_err)
    }

    /// Forgets what `add_chunk` received of `path` (the download starts over).
    #[wasm_bindgen(js_name = restartFile)]
    pub fn restart_file(&mut self, path: String) {
        self.streams.remove(path.trim_start_matches("./"));
    }

    /// Ends a weight file received with `add_chunk`: builds its network on the GPU (an error when
    /// the file ended before all its tensors).
    #[wasm_bindgen(js_name = finishFile)]
    pub fn finish_file(&mut self, path: String) -> Result<(), JsError> {
        let path = path.trim_start_matches("./");
        let (Some((assembly, _)), Some((part, stream))) = (&mut self.assembly, self.streams.remove(path)) else {
            return Err(JsError::new(&format!("{path}: no bytes of it were received")));
        };
        assembly.add_stream(part, stream).map_err(js_err)
    }

    /// Starts streaming a diffusers folder onto `gpu` in `precision` ("auto", "f16" or "f32"):
    /// needs the three networks' `config.json` (and the tokenizer files, else the embedded CLIP
    /// vocabulary); refuses a model whose buffers exceed the adapter's limits before any weights
    /// are downloaded. Returns what the model needs (GPU memory, largest buffer), for the page
    /// to say.
    pub fn begin(&mut self, gpu: &Gpu, precision: &str) -> Result<String, JsError> {
        let precision = gpu.precision(precision)?;
        let configs = self.configs().map_err(js_err)?;
        let needs = gpu.check_limits(&configs, precision)?;
        let (tokenizer, tokenizer_2) = self.tokenizers().map_err(js_err)?;
        let mut assembly = ModelAssembly::new(configs, tokenizer, tokenizer_2, &gpu.device, precision).map_err(js_err)?;
        assembly.set_loras(std::mem::take(&mut self.loras)).map_err(js_err)?;
        self.assembly = Some((assembly, precision));
        Ok(needs)
    }

    /// Loads the networks onto `gpu` in `precision` ("auto", "f16" or "f32"), consuming the
    /// files; after `begin`, finishes the streamed model (in the precision `begin` was given).
    pub fn build(self, gpu: &Gpu, precision: &str) -> Result<Session, JsError> {
        let name = self.name.clone();
        let (model, precision) = match self.assembly {
            Some((assembly, precision)) => (assembly.finish().map_err(js_err)?, precision),
            None => {
                let precision = gpu.precision(precision)?;
                let files = self.into_model_files(precision).map_err(js_err)?;
                gpu.check_limits(&files.configs, precision)?;
                (StableDiffusion::load(files, &gpu.device, precision).map_err(js_err)?, precision)
            }
        };
        let warning = model.unused_keys.first().map(|k| {
            format!("{} weights in the files were not used (e.g. {k})", model.unused_keys.len())
        });
        let side = model.configs.default_long_side() as usize;
        let weight_bytes = model.configs.footprint(precision, side, side).weight_bytes;
        let mut editor = Editor::new(model, gpu.device.clone());
        editor.memory = gpu.memory_limit(weight_bytes);
        Ok(Session::new(editor, gpu.lost.clone(), name, precision, warning))
    }
}

/// The network whose weights `path` holds in a diffusers folder, if it is a weight file.
fn network_of(path: &str) -> Option<Part> {
    let (folder, file) = path.split_once('/')?;
    Part::ALL.into_iter().find(|p| p.folder() == folder).filter(|_| is_weights(file))
}

/// A weight file from its bytes, refusing pickles by name or content.
fn weight_file(path: &str, bytes: Vec<u8>) -> Result<WeightFile, SdError> {
    if is_pickle_name(path) || looks_like_pickle(&bytes) {
        return Err(SdError::Pickle { path: path.to_string() });
    }
    WeightFile::from_bytes(path, Bytes::Owned(bytes))
}

impl ModelBuilder {
    fn into_model_files(mut self, precision: Precision) -> Result<ModelFiles, SdError> {
        let single: Vec<String> = self
            .files
            .keys()
            .filter(|p| !p.contains('/') && is_weights(p))
            .cloned()
            .collect();
        // SD 1.x and 2.x have the first three networks; SDXL's configs ask for the fourth
        let has_components = Part::ALL[..3].iter().all(|p| self.files.contains_key(&format!("{}/config.json", p.folder())));
        let (weights, configs, (tokenizer, tokenizer_2)) = match single.as_slice() {
            // a single-file checkpoint, read with the folder's configs if they came along
            [path] => {
                let file = self.weight_file(path)?;
                let (configs, tokenizers) = if has_components {
                    (self.configs()?, self.tokenizers()?)
                } else {
                    let (configs, tokenizer) = SdConfigs::for_single_file(&file)?;
                    (configs, (tokenizer, None))
                };
                (WeightSource::SingleFile(file), configs, tokenizers)
            }
            [] if has_components => {
                let configs = self.configs()?;
                let tokenizers = self.tokenizers()?;
                let mut take = |part: Part| -> Result<(Part, WeightFile), SdError> {
                    let path = self.weight_path(part.folder(), precision)?;
                    Ok((part, self.weight_file(&path)?))
                };
                let weights = configs.parts().iter().map(|&p| take(p)).collect::<Result<_, _>>()?;
                (WeightSource::Diffusers(weights), configs, tokenizers)
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
            tokenizer_2,
            weights,
            loras: std::mem::take(&mut self.loras),
        })
    }

    fn text(&self, path: &str) -> Result<&str, SdError> {
        std::str::from_utf8(&self.files[path]).map_err(|e| SdError::Config {
            path: path.to_string(),
            reason: e.to_string(),
        })
    }

    /// The folder's tokenizer (else the embedded CLIP vocabulary) and SDXL's `tokenizer_2`.
    fn tokenizers(&self) -> Result<(ClipTokenizer, Option<ClipTokenizer>), SdError> {
        let folder = |sub: &str| ClipTokenizer::from_folder_files(|name| Ok(self.files.get(&format!("{sub}/{name}")).cloned()));
        Ok((folder("tokenizer")?.map_or_else(ClipTokenizer::embedded, Ok)?, folder("tokenizer_2")?))
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
        weight_file(path, self.files.remove(path).unwrap_or_default())
    }
}

fn is_weights(path: &str) -> bool {
    path.ends_with(".safetensors") || is_pickle_name(path)
}
