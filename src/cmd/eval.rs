//! `edict eval`: reconstruction quality over a folder of photos, as in the EDICT paper's Table 1
//! (VAE only, DDIM, EDICT), written as CSV, JSON and a Markdown table.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result, bail};
use clap::Args;
use edict_pipeline::io::image_io::{self, Size};
use edict_pipeline::eval::metrics::{self, Quality};
use edict_pipeline::settings::{DEFAULTS, Method, Settings};
use serde_json::{Value, json};

use super::results::{Results, Row, ShardArgs, method_label, method_named, methods_in_order, number, quote};
use super::{ModelArgs, eval_settings, open, unique};

#[derive(Args)]
pub struct EvalArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// Folder of photos: every file with an image extension, in name order.
    #[arg(long)]
    images: PathBuf,
    /// Captions used as prompts: a JSON object {"file name": "caption"}, or COCO's
    /// captions_*.json (first caption of each image). Default: IMAGES/captions.json if present.
    #[arg(long)]
    captions: Option<PathBuf>,
    /// Prompt for images without a caption.
    #[arg(long, default_value = "")]
    prompt: String,
    /// Comma-separated: edict, bdia, belm, ddim.
    #[arg(long, value_delimiter = ',', default_value = "edict,ddim")]
    methods: Vec<Method>,
    #[arg(long, default_value_t = 50)]
    steps: usize,
    /// Fraction of the schedule to invert and re-denoise, in (0, 1].
    #[arg(long, default_value_t = 1.0)]
    strength: f64,
    /// EDICT's mixing weight p, in (0.5, 1].
    #[arg(long, default_value_t = 0.93)]
    mix: f64,
    /// BDIA's weight γ, > 0.
    #[arg(long, default_value_t = DEFAULTS.gamma)]
    gamma: f64,
    /// Classifier-free guidance scale.
    #[arg(long, default_value_t = 3.0)]
    guidance: f64,
    /// Exact size (multiples of 8); default: long side 512, sides cropped to multiples of 64.
    #[arg(long, requires = "height")]
    width: Option<u32>,
    #[arg(long, requires = "width")]
    height: Option<u32>,
    /// Evaluate only the first N images (before --shard splits them).
    #[arg(long)]
    limit: Option<usize>,
    #[command(flatten)]
    shard: ShardArgs,
    /// Output folder (created if missing) for results.csv, results.json and results.md,
    /// rewritten after every image.
    #[arg(long, default_value = "eval")]
    out: PathBuf,
    /// Overwrite existing result files.
    #[arg(long)]
    force: bool,
}

const IMAGE_EXTENSIONS: [&str; 9] = ["png", "jpg", "jpeg", "webp", "bmp", "gif", "tif", "tiff", "jfif"];

/// One image under one method; `latent_rel_err` is `None` for the VAE-only row.
pub struct EvalRow {
    image: String,
    method: &'static str,
    width: u32,
    height: u32,
    prompt: String,
    q: Quality,
    latent_rel_err: Option<f64>,
    unet_evals: usize,
    seconds: f64,
}

pub fn eval(a: EvalArgs) -> Result<()> {
    if a.methods.is_empty() {
        bail!("--methods needs at least one of edict, bdia, belm, ddim");
    }
    let images = list_images(&a.images, a.limit)?;
    let captions = read_captions(&a)?;
    let size = match (a.width, a.height) {
        (Some(w), Some(h)) => Size::exact(w, h)?,
        _ => Size::Auto,
    };
    let methods = unique(&a.methods);
    let settings = eval_settings(a.steps, a.strength, a.mix, a.gamma, a.guidance, &methods)?;

    let info = json!({
        "command": EvalRow::COMMAND,
        "model": a.model.model,
        "images": a.images.display().to_string(),
        "captions": a.captions.as_ref().map(|p| p.display().to_string()),
        "prompt": a.prompt,
        "count": images.len(),
        "shard": a.shard.setting(),
        "methods": methods.iter().map(|m| m.name()).collect::<Vec<_>>(),
        "steps": a.steps,
        "strength": a.strength,
        "mix": a.mix,
        "gamma": a.gamma,
        "guidance": a.guidance,
        "width": a.width,
        "height": a.height,
        "backend": a.model.backend.to_string(),
        "precision": a.model.precision.to_string(),
    });
    let mut results = Results::<EvalRow>::open(&a.out, info, a.shard.resume, a.force)?;
    let file_name = |path: &Path| path.file_name().unwrap_or_default().to_string_lossy().into_owned();
    let todo: Vec<PathBuf> = a.shard.select(images).into_iter().filter(|p| !results.has(&file_name(p))).collect();

    let mut s = open(&a.model)?;
    for (i, path) in todo.iter().enumerate() {
        let name = file_name(path);
        let prompt = captions.get(&name).cloned().unwrap_or_else(|| a.prompt.clone());
        let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
        let img = image_io::decode(&bytes).with_context(|| path.display().to_string())?;
        let long_side = s.editor.model.configs.default_long_side();
        let (img, _) = image_io::fit(img, size, long_side).with_context(|| path.display().to_string())?;
        let (w, h) = img.dimensions();
        let input = image_io::from_rgb(&img);
        let mut rows = Vec::new();
        let row = |method, q, latent_rel_err, unet_evals, seconds| EvalRow {
            image: name.clone(),
            method,
            width: w,
            height: h,
            prompt: prompt.clone(),
            q,
            latent_rel_err,
            unet_evals,
            seconds,
        };

        let t = Instant::now();
        let latent = pollster::block_on(s.editor.encode(image_io::to_pixels(&img), h as usize, w as usize, None))?;
        let vae = pollster::block_on(s.editor.decode(&latent))?;
        let q = metrics::compare(&input, &vae)?;
        rows.push(row("vae", q, None, 0, t.elapsed().as_secs_f64()));
        let mut line = format!("[{}/{}] {name} {w}×{h}: VAE {:.2} dB", i + 1, todo.len(), q.psnr);

        for &method in &methods {
            // the encode is shared: a method's seconds are invert + denoise + decode
            let t = Instant::now();
            let mut obs = s.bars.observer();
            let rec = pollster::block_on(s.editor.reconstruct(&latent, &prompt, &Settings { method, ..settings.clone() }, &mut obs))?;
            let out = pollster::block_on(s.editor.decode(&rec.latent))?;
            let q = metrics::compare(&input, &out)?;
            let label = method.name();
            rows.push(row(label, q, Some(rec.latent_rel_err), rec.unet_evals, t.elapsed().as_secs_f64()));
            write!(line, ", {label} {:.2} dB (latent {:.1e})", q.psnr, rec.latent_rel_err)?;
        }
        results.add(rows)?;
        s.bars.note(&line);
    }
    s.bars.note(&format!("{}\nwrote {}", markdown_table(&means(results.rows())), a.out.join("results.{csv,json,md}").display()));
    Ok(())
}

fn list_images(dir: &Path, limit: Option<usize>) -> Result<Vec<PathBuf>> {
    let entries = std::fs::read_dir(dir).with_context(|| format!("cannot read folder {}", dir.display()))?;
    let mut images = Vec::new();
    for e in entries {
        let p = e.with_context(|| format!("cannot read folder {}", dir.display()))?.path();
        let ext = p.extension().and_then(|e| e.to_str()).map(str::to_ascii_lowercase);
        if p.is_file() && ext.is_some_and(|e| IMAGE_EXTENSIONS.contains(&e.as_str())) {
            images.push(p);
        }
    }
    images.sort();
    images.truncate(limit.unwrap_or(usize::MAX));
    if images.is_empty() {
        bail!("no images ({}) in {}", IMAGE_EXTENSIONS.join(", "), dir.display());
    }
    Ok(images)
}

/// File name → caption, from `--captions` or `IMAGES/captions.json`.
fn read_captions(a: &EvalArgs) -> Result<HashMap<String, String>> {
    let path = match &a.captions {
        Some(p) => p.clone(),
        None => match a.images.join("captions.json") {
            p if p.is_file() => p,
            _ => return Ok(HashMap::new()),
        },
    };
    let text = std::fs::read_to_string(&path).with_context(|| format!("cannot read {}", path.display()))?;
    let v: Value = serde_json::from_str(&text).with_context(|| format!("{} is not valid JSON", path.display()))?;
    parse_captions(&v).with_context(|| format!("{}", path.display()))
}

fn parse_captions(v: &Value) -> Result<HashMap<String, String>> {
    let mut out = HashMap::new();
    // COCO: {"images": [{"id", "file_name"}], "annotations": [{"image_id", "caption"}]}
    if let (Some(images), Some(anns)) = (v["images"].as_array(), v["annotations"].as_array()) {
        let names: HashMap<u64, &str> = images
            .iter()
            .filter_map(|i| Some((i["id"].as_u64()?, i["file_name"].as_str()?)))
            .collect();
        for a in anns {
            let (Some(id), Some(caption)) = (a["image_id"].as_u64(), a["caption"].as_str()) else {
                bail!("a COCO annotation lacks image_id or caption: {a}");
            };
            if let Some(name) = names.get(&id) {
                out.entry(name.to_string()).or_insert_with(|| caption.trim().to_string());
            }
        }
        return Ok(out);
    }
    let Some(map) = v.as_object() else {
        bail!("expected a JSON object {{\"file name\": \"caption\"}} or COCO captions");
    };
    for (k, c) in map {
        let Some(c) = c.as_str() else {
            bail!("the caption of {k} is not a string");
        };
        out.insert(k.clone(), c.to_string());
    }
    Ok(out)
}

/// Means over images of one method.
struct Mean {
    method: String,
    mse: f64,
    psnr: f64,
    ssim: f64,
    latent_rel_err: Option<f64>,
    seconds: f64,
}

impl Mean {
    fn of(method: &str, rows: &[EvalRow]) -> Self {
        let r: Vec<&EvalRow> = rows.iter().filter(|r| r.method == method).collect();
        let avg = |f: &dyn Fn(&EvalRow) -> f64| r.iter().map(|x| f(x)).sum::<f64>() / r.len() as f64;
        Self {
            method: method.to_string(),
            mse: avg(&|x| x.q.mse),
            psnr: avg(&|x| x.q.psnr),
            ssim: avg(&|x| x.q.ssim),
            latent_rel_err: (method != "vae").then(|| avg(&|x| x.latent_rel_err.unwrap_or(f64::NAN))),
            seconds: avg(&|x| x.seconds),
        }
    }
}

/// One mean per method, in the order the rows name them.
fn means(rows: &[EvalRow]) -> Vec<Mean> {
    methods_in_order(rows).into_iter().map(|m| Mean::of(m, rows)).collect()
}

const METHODS: [&str; 5] = ["vae", "edict", "bdia", "belm", "ddim"];

impl Row for EvalRow {
    const COMMAND: &'static str = "eval";
    const CSV_HEADER: &'static str = "image,method,width,height,mse,psnr,ssim,latent_rel_err,unet_evals,seconds,prompt";

    fn item(&self) -> &str {
        &self.image
    }

    fn method(&self) -> &'static str {
        self.method
    }

    fn to_csv(&self) -> Vec<String> {
        vec![
            quote(&self.image),
            self.method.to_string(),
            self.width.to_string(),
            self.height.to_string(),
            format!("{:e}", self.q.mse),
            self.q.psnr.to_string(),
            self.q.ssim.to_string(),
            self.latent_rel_err.map(|e| format!("{e:e}")).unwrap_or_default(),
            self.unet_evals.to_string(),
            format!("{:.3}", self.seconds),
            quote(&self.prompt),
        ]
    }

    fn from_csv(f: &[String]) -> Result<Self> {
        let [image, method, width, height, mse, psnr, ssim, err, evals, seconds, prompt] = f else {
            bail!("{} fields, expected 11", f.len());
        };
        Ok(Self {
            method: method_named(method, &METHODS)?,
            image: image.clone(),
            width: number(width, "width")?,
            height: number(height, "height")?,
            prompt: prompt.clone(),
            q: Quality { mse: number(mse, "MSE")?, psnr: number(psnr, "PSNR")?, ssim: number(ssim, "SSIM")? },
            latent_rel_err: if err.is_empty() { None } else { Some(number(err, "latent error")?) },
            unet_evals: number(evals, "UNet count")?,
            seconds: number(seconds, "time")?,
        })
    }

    fn json(rows: &[Self]) -> (Value, Value) {
        let images = rows
            .iter()
            .map(|r| {
                json!({
                    "image": r.image, "method": r.method, "width": r.width, "height": r.height,
                    "prompt": r.prompt, "mse": r.q.mse, "psnr": r.q.psnr, "ssim": r.q.ssim,
                    "latent_rel_err": r.latent_rel_err, "unet_evals": r.unet_evals, "seconds": r.seconds,
                })
            })
            .collect();
        let means = means(rows)
            .iter()
            .map(|m| {
                json!({
                    "method": m.method, "mse": m.mse, "psnr": m.psnr, "ssim": m.ssim,
                    "latent_rel_err": m.latent_rel_err, "seconds": m.seconds,
                })
            })
            .collect();
        (means, images)
    }

    fn markdown(s: &Value, rows: &[Self]) -> String {
        let n = rows.iter().filter(|r| r.method == "vae").count();
        format!(
            "# Reconstruction: {n} images from {}\n\nModel `{}`, {} steps, strength {}, p = {}, guidance {}. \
             MSE on pixels in [−1, 1], PSNR for a range of 2, SSIM (11×11 Gaussian window), \
             latent error ‖z′ − z‖/‖z‖; means over images.\n\n{}",
            s["images"].as_str().unwrap_or_default(),
            s["model"].as_str().unwrap_or_default(),
            s["steps"],
            s["strength"],
            s["mix"],
            s["guidance"],
            markdown_table(&means(rows))
        )
    }
}

fn markdown_table(means: &[Mean]) -> String {
    let mut t = String::from("| method | MSE ↓ | PSNR (dB) ↑ | SSIM ↑ | latent error | s / image |\n");
    t += "| --- | ---: | ---: | ---: | ---: | ---: |\n";
    for m in means {
        let label = method_label(&m.method);
        let err = m.latent_rel_err.map(|e| format!("{e:.1e}")).unwrap_or_else(|| "—".into());
        t += &format!("| {label} | {:.4} | {:.2} | {:.4} | {err} | {:.2} |\n", m.mse, m.psnr, m.ssim, m.seconds);
    }
    t
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn captions_from_a_map_and_from_coco() {
        let m = parse_captions(&json!({"a.png": "a cat"})).unwrap();
        assert_eq!(m["a.png"], "a cat");
        let coco = json!({
            "images": [{"id": 7, "file_name": "000007.jpg"}],
            "annotations": [{"image_id": 7, "caption": " a dog. "}, {"image_id": 7, "caption": "second"}],
        });
        assert_eq!(parse_captions(&coco).unwrap()["000007.jpg"], "a dog.");
        assert!(parse_captions(&json!({"a.png": 3})).is_err());
        assert!(parse_captions(&json!([1, 2])).is_err());
    }
}
