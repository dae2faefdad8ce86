//! Where the weights come from: a local diffusers folder, a single-file checkpoint, or a
//! Hugging Face model id fetched once into the standard HF cache.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use edict_sd::model::{ModelFiles, Precision};

pub const DEFAULT_MODEL: &str = "stable-diffusion-v1-5/stable-diffusion-v1-5";

/// The files of a diffusers repository this program reads (weights: f16 variant or full).
fn repo_files(precision: Precision) -> Vec<String> {
    let variant = match precision {
        Precision::F16 => ".fp16",
        Precision::F32 => "",
    };
    let mut files: Vec<String> = [
        "text_encoder/config.json",
        "unet/config.json",
        "vae/config.json",
        "tokenizer/vocab.json",
        "tokenizer/merges.txt",
        "tokenizer/special_tokens_map.json",
        "tokenizer/tokenizer_config.json",
        "scheduler/scheduler_config.json",
    ]
    .map(String::from)
    .to_vec();
    files.push(format!("text_encoder/model{variant}.safetensors"));
    files.push(format!("unet/diffusion_pytorch_model{variant}.safetensors"));
    files.push(format!("vae/diffusion_pytorch_model{variant}.safetensors"));
    files
}

pub fn resolve(model: &str, config: Option<&Path>, precision: Precision) -> Result<ModelFiles> {
    let path = Path::new(model);
    if path.is_dir() {
        return Ok(ModelFiles::from_folder(path, precision)?);
    }
    if path.is_file() {
        return Ok(ModelFiles::from_single_file(path, config)?);
    }
    let looks_like_id = model.split('/').count() == 2 && !model.starts_with('.') && !model.contains('\\');
    if !looks_like_id {
        bail!("model `{model}` is neither an existing folder or file nor a Hugging Face id (owner/name)");
    }
    let dir = fetch(model, precision)?;
    Ok(ModelFiles::from_folder(&dir, precision)?)
}

/// Returns the snapshot folder of `id` in the HF cache, downloading missing files.
fn fetch(id: &str, precision: Precision) -> Result<PathBuf> {
    let cache = hf_hub::Cache::from_env();
    let cached = cache.model(id.to_string());
    let files = repo_files(precision);
    let mut snapshot = None;
    let mut api = None;
    for f in &files {
        let local = match cached.get(f) {
            Some(p) => p,
            None => {
                let repo = match &api {
                    Some(r) => r,
                    None => {
                        eprintln!("downloading {id} into the Hugging Face cache ({})", cache.path().display());
                        let built = hf_hub::api::sync::ApiBuilder::from_env().with_progress(true).build()?;
                        api.insert(built.model(id.to_string()))
                    }
                };
                repo.get(f).with_context(|| {
                    format!(
                        "cannot fetch {f} of {id} from the Hugging Face hub (no network, or a gated repo?); \
                         download the model elsewhere and pass --model with a local diffusers folder \
                         or a single .safetensors file"
                    )
                })?
            }
        };
        // files live at <snapshot>/<f>
        let depth = Path::new(f).components().count();
        let root = local.ancestors().nth(depth).map(Path::to_path_buf);
        snapshot = snapshot.or(root);
    }
    snapshot.context("empty file list")
}
