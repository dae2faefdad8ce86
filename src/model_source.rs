//! Where the weights come from: a local diffusers folder, a single-file checkpoint, or a
//! Hugging Face model id fetched once into the standard HF cache.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use edict_sd::models::{autoencoder_tiny, clip_score, dino_vit, lpips};
use edict_sd::checkpoint::files::{ModelFiles, weight_candidates};
use edict_sd::config::Precision;
use edict_sd::models::unet_2d::UNetConfig;

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

/// The text files an SDXL repository adds (its UNet's config says `text_time`).
const SDXL_TEXT_FILES: [&str; 6] = [
    "model_index.json",
    "text_encoder_2/config.json",
    "tokenizer_2/vocab.json",
    "tokenizer_2/merges.txt",
    "tokenizer_2/special_tokens_map.json",
    "tokenizer_2/tokenizer_config.json",
];

pub fn resolve(model: &str, config: Option<&Path>, precision: Precision) -> Result<ModelFiles> {
    let path = Path::new(model);
    if path.is_dir() {
        return Ok(ModelFiles::from_folder(path, precision)?);
    }
    if path.is_file() {
        return Ok(ModelFiles::from_single_file(path, config)?);
    }
    check_hub_id(model, "file")?;
    let dir = fetch(model, precision)?;
    Ok(ModelFiles::from_folder(&dir, precision)?)
}

/// The folder of a transformers `CLIPModel` for CLIP scores: `model` itself, or the HF-cache
/// snapshot of a hub id with its [`clip_score::FOLDER_FILES`] (downloaded once).
pub fn resolve_clip(model: &str) -> Result<PathBuf> {
    resolve_folder(model, &clip_score::FOLDER_FILES, "--clip")
}

/// The folder of the LPIPS network (`--lpips`; `scripts/convert_metric_weights.py lpips` writes
/// one), as [`resolve_clip`].
pub fn resolve_lpips(model: &str) -> Result<PathBuf> {
    resolve_folder(model, &[lpips::CONFIG, lpips::WEIGHTS], "--lpips")
}

/// The folder of DINO ViT-B/8 (`--dino`; `scripts/convert_metric_weights.py dino` writes one),
/// as [`resolve_clip`].
pub fn resolve_dino(model: &str) -> Result<PathBuf> {
    resolve_folder(model, &[dino_vit::CONFIG, dino_vit::WEIGHTS], "--dino")
}

/// The folder of a TAESD `AutoencoderTiny` (`--preview-decoder`), as [`resolve_clip`].
pub fn resolve_taesd(model: &str) -> Result<PathBuf> {
    resolve_folder(model, &[autoencoder_tiny::CONFIG, autoencoder_tiny::WEIGHTS], "--preview-decoder taesd=FOLDER")
}

/// `model` when it is a folder, else the HF-cache snapshot of hub id `model` holding `files`
/// (at its root; downloaded once). `flag` is how the user passes a folder instead.
fn resolve_folder(model: &str, files: &[&str], flag: &str) -> Result<PathBuf> {
    let path = Path::new(model);
    if path.is_dir() {
        return Ok(path.to_path_buf());
    }
    check_hub_id(model, "")?;
    let mut hub = Hub::new(model);
    let mut dir = None;
    for f in files {
        let local = hub.get(f).with_context(|| {
            format!("cannot fetch {f} of {model} from the Hugging Face hub (no network?); download the repository elsewhere and pass {flag} with its folder")
        })?;
        dir = local.parent().map(Path::to_path_buf);
    }
    dir.context("empty file list")
}

fn check_hub_id(model: &str, or_file: &str) -> Result<()> {
    let looks_like_id = model.split('/').count() == 2 && !model.starts_with('.') && !model.contains('\\');
    if !looks_like_id {
        let what = if or_file.is_empty() { "an existing folder".to_string() } else { format!("an existing folder or {or_file}") };
        bail!("model `{model}` is neither {what} nor a Hugging Face id (owner/name)");
    }
    Ok(())
}

/// A Hugging Face repository's files: from the standard HF cache, else downloaded into it.
struct Hub {
    id: String,
    cache: hf_hub::Cache,
    api: Option<hf_hub::api::sync::ApiRepo>,
}

impl Hub {
    fn new(id: &str) -> Self {
        Self { id: id.to_string(), cache: hf_hub::Cache::from_env(), api: None }
    }

    fn get(&mut self, f: &str) -> Result<PathBuf> {
        if let Some(p) = self.cache.model(self.id.clone()).get(f) {
            return Ok(p);
        }
        let repo = match &self.api {
            Some(r) => r,
            None => {
                eprintln!("downloading {} into the Hugging Face cache ({})", self.id, self.cache.path().display());
                let built = hf_hub::api::sync::ApiBuilder::from_env().with_progress(true).build()?;
                self.api.insert(built.model(self.id.clone()))
            }
        };
        Ok(repo.get(f)?)
    }
}

/// Returns the snapshot folder of `id` in the HF cache, downloading missing files: the text
/// files, and for each network the first of its [`weight_candidates`] the repository has.
fn fetch(id: &str, precision: Precision) -> Result<PathBuf> {
    let mut hub = Hub::new(id);
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
    let mut unet_config = None;
    for f in REPO_TEXT_FILES {
        let local = hub.get(f).with_context(|| failed(f))?;
        if f == "unet/config.json" {
            unet_config = Some(local.clone());
        }
        found(f, local);
    }
    let unet_config = unet_config.context("unet/config.json")?;
    let text = std::fs::read_to_string(&unet_config).with_context(|| unet_config.display().to_string())?;
    let sdxl = UNetConfig::from_json(&text, &unet_config.display().to_string())?.text_time().is_some();
    let mut components = vec!["text_encoder", "unet", "vae"];
    if sdxl {
        for f in SDXL_TEXT_FILES {
            found(f, hub.get(f).with_context(|| failed(f))?);
        }
        components.push("text_encoder_2");
    }
    for component in components {
        let candidates = weight_candidates(component, precision);
        let (f, local) = candidates
            .iter()
            .find_map(|f| hub.get(f).ok().map(|p| (f, p)))
            .with_context(|| failed(&candidates.join(" or ")))?;
        found(f, local);
    }
    snapshot.context("empty file list")
}
