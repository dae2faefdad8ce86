//! Where the weights come from: a local diffusers folder, a single-file checkpoint, or a
//! Hugging Face model id fetched once into the standard HF cache.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use edict_sd::model::{ModelFiles, Precision, weight_candidates};

pub const DEFAULT_MODEL: &str = "stable-diffusion-v1-5/stable-diffusion-v1-5";

/// The text files of a diffusers repository this program reads; the weights are chosen by
/// [`weight_candidates`].
const REPO_TEXT_FILES: [&str; 8] = [
    "text_encoder/config.json",
    "unet/config.json",
    "vae/config.json",
    "tokenizer/vocab.json",
    "tokenizer/merges.txt",
    "tokenizer/special_tokens_map.json",
    "tokenizer/tokenizer_config.json",
    "scheduler/scheduler_config.json",
];

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

/// Returns the snapshot folder of `id` in the HF cache, downloading missing files: the text
/// files, and for each network the first of its [`weight_candidates`] the repository has.
fn fetch(id: &str, precision: Precision) -> Result<PathBuf> {
    let cache = hf_hub::Cache::from_env();
    let cached = cache.model(id.to_string());
    let mut api = None;
    let mut get = |f: &str| -> Result<PathBuf> {
        if let Some(p) = cached.get(f) {
            return Ok(p);
        }
        let repo = match &api {
            Some(r) => r,
            None => {
                eprintln!("downloading {id} into the Hugging Face cache ({})", cache.path().display());
                let built = hf_hub::api::sync::ApiBuilder::from_env().with_progress(true).build()?;
                api.insert(built.model(id.to_string()))
            }
        };
        Ok(repo.get(f)?)
    };
    let failed = |f: &str| {
        format!(
            "cannot fetch {f} of {id} from the Hugging Face hub (no network, or a gated repo?); \
             download the model elsewhere and pass --model with a local diffusers folder \
             or a single .safetensors file"
        )
    };
    let mut snapshot = None;
    let mut found = |f: &str, local: PathBuf| {
        // files live at <snapshot>/<f>
        let depth = Path::new(f).components().count();
        snapshot = snapshot.take().or(local.ancestors().nth(depth).map(Path::to_path_buf));
    };
    for f in REPO_TEXT_FILES {
        found(f, get(f).with_context(|| failed(f))?);
    }
    for component in ["text_encoder", "unet", "vae"] {
        let candidates = weight_candidates(component, precision);
        let (f, local) = candidates
            .iter()
            .find_map(|f| get(f).ok().map(|p| (f, p)))
            .with_context(|| failed(&candidates.join(" or ")))?;
        found(f, local);
    }
    snapshot.context("empty file list")
}
