//! The latents file: an inversion saved as safetensors (`x`, `y`, `latent`, all f64
//! `[1, 4, h/8, w/8]`, and `x_lo`, `y_lo`: the low parts of the double-double pair, so the
//! pair reloads bit for bit) with its prompt and settings (the method and its knobs among them)
//! in the metadata, so one inversion can be edited many times, natively or in a browser. Files
//! without the low parts load with them zero (the pair rounded to f64: still an inversion, no
//! longer guaranteed exact). The file names the model that inverted it by its fingerprint, so it
//! is never denoised by weights that cannot reproduce the photo.

use std::collections::HashMap;

use edict_sd::model::StableDiffusion;

use safetensors::tensor::{Dtype, SafeTensors, TensorView};

use crate::error::{PipelineError, Result};
use crate::editor::{Inversion, Latent};
use crate::settings::{DEFAULTS, Settings};
use crate::samplers::{Pair, hi};
use twofloat::TwoFloat;

const FORMAT: &str = "edict-latents/3";
/// The format before BDIA: no `gamma` (every such file is EDICT's or DDIM's, which ignore it).
const FORMAT_2: &str = "edict-latents/2";

/// The model a saved inversion was made with: the name the user gave it and its
/// [`StableDiffusion::fingerprint`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    pub model: String,
    pub fingerprint: String,
}

impl Origin {
    pub fn of(name: &str, model: &StableDiffusion) -> Self {
        Self {
            model: name.to_string(),
            fingerprint: model.fingerprint.clone(),
        }
    }
}

fn f64_bytes(v: &[f64]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

/// Serialises an inversion made by the model `origin` names.
pub fn to_bytes(inv: &Inversion, origin: &Origin) -> Result<Vec<u8>> {
    let shape = inv.latent.shape.to_vec();
    let mut meta: HashMap<String, String> = [
        ("format", FORMAT.to_string()),
        ("model", origin.model.clone()),
        ("fingerprint", origin.fingerprint.clone()),
        ("prompt", inv.prompt.clone()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    meta.extend(inv.settings.to_strings());
    let lo = |v: &[TwoFloat]| v.iter().map(TwoFloat::lo).collect::<Vec<_>>();
    let data = [
        ("x", f64_bytes(&hi(&inv.pair.x))),
        ("x_lo", f64_bytes(&lo(&inv.pair.x))),
        ("y", f64_bytes(&hi(&inv.pair.y))),
        ("y_lo", f64_bytes(&lo(&inv.pair.y))),
        ("latent", f64_bytes(&inv.latent.values)),
    ];
    let views = data
        .iter()
        .map(|(k, b)| {
            TensorView::new(Dtype::F64, shape.clone(), b)
                .map(|v| (*k, v))
                .map_err(|e| PipelineError::Invalid(e.to_string()))
        })
        .collect::<Result<Vec<_>>>()?;
    safetensors::serialize(views, Some(meta)).map_err(|e| PipelineError::Invalid(e.to_string()))
}

/// Reads a latents file; returns the inversion and the model that made it.
pub fn from_bytes(bytes: &[u8], path: &str) -> Result<(Inversion, Origin)> {
    let bad = |reason: String| PipelineError::Latents {
        path: path.to_string(),
        reason,
    };
    let (_, meta) = SafeTensors::read_metadata(bytes).map_err(|e| bad(e.to_string()))?;
    let st = SafeTensors::deserialize(bytes).map_err(|e| bad(e.to_string()))?;
    let m = meta
        .metadata()
        .clone()
        .ok_or_else(|| bad("no metadata: not written by `edict invert`".into()))?;
    let format = m.get("format").cloned().unwrap_or_default();
    match format.as_str() {
        FORMAT | FORMAT_2 => {}
        "edict-latents/1" => {
            return Err(bad(
                "written by an earlier edict that did not record the model's fingerprint; invert the photo again".into(),
            ));
        }
        _ => return Err(bad(format!("not an {FORMAT} file"))),
    }
    let get = |k: &str| m.get(k).cloned().ok_or_else(|| bad(format!("metadata lacks `{k}`")));
    let tensor = |k: &str| -> Result<(Vec<f64>, Vec<usize>)> {
        let t = st.tensor(k).map_err(|_| bad(format!("missing tensor `{k}`")))?;
        if t.dtype() != Dtype::F64 {
            return Err(bad(format!("tensor `{k}` is {:?}, expected F64", t.dtype())));
        }
        let v = t
            .data()
            .chunks_exact(8)
            .map(|c| f64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]))
            .collect();
        Ok((v, t.shape().to_vec()))
    };
    let (x, shape) = tensor("x")?;
    let (y, sy) = tensor("y")?;
    let (latent, sl) = tensor("latent")?;
    let shape: [usize; 4] = shape
        .clone()
        .try_into()
        .map_err(|_| bad(format!("tensors must be [1, c, h, w], got {shape:?}")))?;
    if sy != shape || sl != shape {
        return Err(bad("x, y and latent differ in shape".into()));
    }
    if !x.iter().chain(&y).chain(&latent).all(|v| v.is_finite()) {
        return Err(bad("holds non-finite values".into()));
    }
    // the low parts, where the file has them
    let pair_half = |k: &str, hi: Vec<f64>| -> Result<Vec<TwoFloat>> {
        let k_lo = format!("{k}_lo");
        if !st.names().contains(&k_lo.as_str()) {
            return Ok(hi.into_iter().map(TwoFloat::from).collect());
        }
        let (lo, s) = tensor(&k_lo)?;
        if s != shape {
            return Err(bad(format!("`{k_lo}` differs in shape from `{k}`")));
        }
        hi.into_iter()
            .zip(lo)
            .map(|(h, l)| TwoFloat::try_from((h, l)))
            .collect::<std::result::Result<_, _>>()
            .map_err(|_| bad(format!("`{k_lo}` is not the low part of `{k}` (non-finite or overlapping)")))
    };
    let pair = Pair {
        x: pair_half("x", x)?,
        y: pair_half("y", y)?,
    };
    let settings = Settings::from_strings(|k| match m.get(k) {
        None if k == "gamma" && format == FORMAT_2 => Some(DEFAULTS.gamma.to_string()),
        v => v.cloned(),
    })
    .map_err(bad)?;
    Ok((
        Inversion {
            pair,
            latent: Latent {
                values: latent,
                shape,
            },
            prompt: get("prompt")?,
            settings,
        },
        Origin {
            model: get("model")?,
            fingerprint: get("fingerprint")?,
        },
    ))
}

/// Refuses a saved inversion that `model` cannot edit, saying why: another model's weights
/// (the pair only denoises back to the photo under the weights that inverted it) or latents
/// of a shape this model's VAE does not produce.
pub fn check_fits(inv: &Inversion, origin: &Origin, model: &StableDiffusion, model_name: &str, path: &str) -> Result<()> {
    let bad = |reason: String| PipelineError::Latents {
        path: path.to_string(),
        reason,
    };
    let c = model.configs.vae.latent_channels;
    let [n, ch, h, w] = inv.latent.shape;
    if n != 1 || ch != c || h == 0 || w == 0 {
        return Err(bad(format!(
            "holds latents of shape {:?}, but {model_name} works on [1, {c}, h, w]",
            inv.latent.shape
        )));
    }
    let down = model.configs.vae.downscale() as u64;
    crate::io::image_io::check_pixels(w as u64 * down, h as u64 * down).map_err(|e| bad(e.to_string()))?;
    if origin.fingerprint != model.fingerprint {
        return Err(bad(format!(
            "inverted with {} (fingerprint {}), but {model_name} (fingerprint {}) is loaded; an EDICT \
             pair only denoises back to the photo under the weights that inverted it: edit with that \
             model, or invert the photo again with this one",
            origin.model, origin.fingerprint, model.fingerprint
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inv() -> Inversion {
        let n = 4 * 2 * 3;
        Inversion {
            // values whose low parts are not zero
            pair: Pair {
                x: (0..n).map(|i| TwoFloat::new_div(i as f64, 10.0)).collect(),
                y: (0..n).map(|i| TwoFloat::new_div(-(i as f64), 3.0)).collect(),
            },
            latent: Latent {
                values: vec![1.0 / 7.0; n],
                shape: [1, 4, 2, 3],
            },
            prompt: "a cat, \"quoted\"".into(),
            settings: Settings {
                method: crate::settings::Method::Bdia,
                steps: 7,
                strength: 0.7,
                gamma: 0.9,
                ..Settings::default()
            },
        }
    }

    fn origin() -> Origin {
        Origin {
            model: "tiny".into(),
            fingerprint: "0123456789abcdef".into(),
        }
    }

    #[test]
    fn round_trips_bit_exactly() {
        let bytes = to_bytes(&inv(), &origin()).unwrap();
        let (back, from) = from_bytes(&bytes, "t").unwrap();
        assert_eq!(back, inv());
        assert_eq!(from, origin());
    }

    /// Rewrites the file's tensors through `edit`, keeping its metadata.
    fn rewrite(bytes: &[u8], edit: impl FnOnce(&mut Vec<(String, Vec<u8>)>)) -> Vec<u8> {
        let (_, meta) = SafeTensors::read_metadata(bytes).unwrap();
        let st = SafeTensors::deserialize(bytes).unwrap();
        let shape = st.tensor("x").unwrap().shape().to_vec();
        let mut t: Vec<_> = st.tensors().into_iter().map(|(k, v)| (k, v.data().to_vec())).collect();
        edit(&mut t);
        let views = t.iter().map(|(k, b)| (k.clone(), TensorView::new(Dtype::F64, shape.clone(), b).unwrap()));
        safetensors::serialize(views, meta.metadata().clone()).unwrap()
    }

    #[test]
    fn files_from_before_bdia_load_with_the_default_gamma() {
        let edict = Inversion { settings: Settings { method: crate::settings::Method::Edict, ..inv().settings }, ..inv() };
        let bytes = to_bytes(&edict, &origin()).unwrap();
        let (_, meta) = SafeTensors::read_metadata(&bytes).unwrap();
        let mut m = meta.metadata().clone().unwrap();
        m.remove("gamma");
        let st = SafeTensors::deserialize(&bytes).unwrap();
        let views = || st.tensors().into_iter().map(|(k, v)| (k, TensorView::new(v.dtype(), v.shape().to_vec(), v.data()).unwrap()));
        let missing = safetensors::serialize(views(), Some(m.clone())).unwrap();
        let err = from_bytes(&missing, "t").unwrap_err().to_string();
        assert!(err.contains("metadata lacks `gamma`"), "{err}");
        m.insert("format".into(), FORMAT_2.into());
        let old = safetensors::serialize(views(), Some(m)).unwrap();
        let (back, _) = from_bytes(&old, "t").unwrap();
        assert_eq!(back.settings, Settings { gamma: DEFAULTS.gamma, ..edict.settings });
    }

    #[test]
    fn files_without_low_parts_load_rounded() {
        let bytes = to_bytes(&inv(), &origin()).unwrap();
        let old = rewrite(&bytes, |t| t.retain(|(k, _)| !k.ends_with("_lo")));
        let (back, _) = from_bytes(&old, "t").unwrap();
        let expect = inv();
        assert_eq!(hi(&back.pair.x), hi(&expect.pair.x));
        assert!(back.pair.x.iter().chain(&back.pair.y).all(|d| d.lo() == 0.0));
        assert_ne!(back.pair, expect.pair, "the fixture's low parts are not all zero");
    }

    #[test]
    fn low_parts_must_belong_to_their_high_parts() {
        let bytes = to_bytes(&inv(), &origin()).unwrap();
        // a low part as large as its high part is no double-double
        let bad = rewrite(&bytes, |t| {
            let x = t.iter().find(|(k, _)| k == "x").unwrap().1.clone();
            t.iter_mut().find(|(k, _)| k == "x_lo").unwrap().1 = x;
        });
        let err = from_bytes(&bad, "t").unwrap_err().to_string();
        assert!(err.contains("`x_lo` is not the low part of `x`"), "{err}");
    }

    #[test]
    fn rejects_foreign_and_broken_files() {
        let bytes = to_bytes(&inv(), &origin()).unwrap();
        assert!(from_bytes(&bytes[..bytes.len() - 8], "t").is_err());
        assert!(from_bytes(b"garbage", "t").is_err());
        let plain = safetensors::serialize(
            [("x", TensorView::new(Dtype::F64, vec![1], &[0u8; 8]).unwrap())],
            None,
        )
        .unwrap();
        let err = from_bytes(&plain, "t").unwrap_err().to_string();
        assert!(err.contains("metadata"), "{err}");
        // a file from before fingerprints: which model made it is unknown
        let mut old = bytes.clone();
        let at = old.windows(FORMAT.len()).position(|w| w == FORMAT.as_bytes()).unwrap();
        old[at..at + FORMAT.len()].copy_from_slice(b"edict-latents/1");
        let err = from_bytes(&old, "t").unwrap_err().to_string();
        assert!(err.contains("invert the photo again"), "{err}");
    }
}
