//! Which files make a model: the weight file each diffusers component is read from (one rule for
//! folders on disk, hub downloads and the page), a folder's or a single file's [`ModelFiles`].

use std::rc::Rc;

use crate::checkpoint::lora::Lora;
use crate::checkpoint::single_file::Part;
use crate::checkpoint::weights::{WeightFile, is_pickle_name};
use crate::config::{Precision, SdConfigs};
use crate::tokenizer::ClipTokenizer;
use crate::{Result, SdError};

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
        "text_encoder" | "text_encoder_2" => ["model", "diffusion_pytorch_model"],
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

/// Weights for each network, in whichever files hold them.
pub struct ModelFiles {
    pub configs: SdConfigs,
    pub tokenizer: ClipTokenizer,
    /// SDXL's `tokenizer_2/` when the folder has one.
    pub tokenizer_2: Option<ClipTokenizer>,
    /// Either one file per network (diffusers layout) or a single checkpoint holding them all.
    pub weights: WeightSource,
    /// LoRA files merged into the weights as they load, in this order.
    pub loras: Vec<Rc<Lora>>,
}

pub enum WeightSource {
    /// One file per network, in [`SdConfigs::parts`] order.
    Diffusers(Vec<(Part, WeightFile)>),
    SingleFile(WeightFile),
}

#[cfg(not(target_arch = "wasm32"))]
mod native {
    use std::path::{Path, PathBuf};

    use super::*;
    use crate::checkpoint::weights::read_optional;
    use crate::config::folder_configs;

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

    /// The tokenizer in a diffusers folder's `sub/` (`tokenizer`, `tokenizer_2`), if any.
    fn folder_tokenizer(dir: &Path, sub: &str) -> Result<Option<ClipTokenizer>> {
        let tok_dir = dir.join(sub);
        ClipTokenizer::from_folder_files(|name| read_optional(&tok_dir.join(name)))
    }

    /// A folder's tokenizers: `tokenizer/` (else the embedded CLIP vocabulary) and `tokenizer_2/`.
    fn folder_tokenizers(dir: &Path) -> Result<(ClipTokenizer, Option<ClipTokenizer>)> {
        let first = folder_tokenizer(dir, "tokenizer")?.map_or_else(ClipTokenizer::embedded, Ok)?;
        Ok((first, folder_tokenizer(dir, "tokenizer_2")?))
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
            let (tokenizer, tokenizer_2) = folder_tokenizers(dir)?;
            let open = |part: Part| -> Result<(Part, WeightFile)> {
                component(dir, part.folder())?;
                Ok((part, WeightFile::open(&weight_file(dir, part.folder(), precision)?)?))
            };
            let weights = configs.parts().iter().map(|&p| open(p)).collect::<Result<_>>()?;
            Ok(Self { configs, tokenizer, tokenizer_2, weights: WeightSource::Diffusers(weights), loras: Vec::new() })
        }

        /// An original single-file checkpoint, read with the configs and tokenizer of the
        /// diffusers folder `config`, else [`SdConfigs::for_single_file`]'s.
        pub fn from_single_file(path: &Path, config: Option<&Path>) -> Result<Self> {
            let file = WeightFile::open(path)?;
            let (configs, (tokenizer, tokenizer_2)) = match config {
                Some(dir) => (folder_configs(dir)?, folder_tokenizers(dir)?),
                None => {
                    let (configs, tokenizer) = SdConfigs::for_single_file(&file)?;
                    (configs, (tokenizer, None))
                }
            };
            Ok(Self {
                configs,
                tokenizer,
                tokenizer_2,
                weights: WeightSource::SingleFile(file),
                loras: Vec::new(),
            })
        }
    }
}

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
