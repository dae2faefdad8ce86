//! `edict eval-edit`: PIE-Bench over a folder in its own format (`mapping_file.json`,
//! `annotation_images/`): every image edited by EDICT and by the DDIM and img2img baselines, and
//! scored as the benchmark's evaluation code does it ([`edict_pipeline::eval::pie_bench`]), written as
//! CSV, JSON and a Markdown table.

use std::fmt::Write as _;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use clap::Args;
use edict_pipeline::io::image_io::{self, Rgb, Size};
use edict_pipeline::eval::pie_bench::{self, Background, ClipScorer, Entry, Mask};
use edict_pipeline::editor::Latent;
use edict_pipeline::settings::{DEFAULTS, Method, Settings};
use edict_pipeline::prompt_edit::{EditSpec, P2p};
use edict_sd::models::clip_score;
use edict_sd::models::dino_vit::DinoVit;
use edict_sd::models::lpips::Lpips;
use serde_json::{Value, json};

use super::results::{Results, Row, ShardArgs, method_label, method_named, methods_in_order, number, quote};
use super::{ModelArgs, eval_settings, open, unique};
use crate::model_source;

/// torchmetrics' `CLIPScore` default, which PIE-Bench uses.
const DEFAULT_CLIP: &str = "openai/clip-vit-large-patch14";

/// How an image is edited into the target prompt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EditMethod {
    /// Invert under the source prompt, denoise under the target (EDICT, BDIA, O-BELM or DDIM).
    Inverted(Method),
    /// Noise the latent to the strength and denoise under the target, no inversion.
    Img2img,
}

impl FromStr for EditMethod {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "img2img" => Ok(Self::Img2img),
            _ => s.parse().map(Self::Inverted).map_err(|_| format!("method `{s}`: expected edict, bdia, belm, ddim or img2img")),
        }
    }
}

impl EditMethod {
    fn name(self) -> &'static str {
        match self {
            Self::Inverted(m) => m.name(),
            Self::Img2img => "img2img",
        }
    }
}

#[derive(Args)]
pub struct EvalEditArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// PIE-Bench folder: mapping_file.json and annotation_images/ (PnPInversion's `data/`).
    #[arg(long)]
    data: PathBuf,
    /// The CLIP model of the CLIP scores: a Hugging Face id or a local transformers `CLIPModel`
    /// folder (config.json, model.safetensors, preprocessor_config.json, vocab.json, merges.txt).
    #[arg(long, default_value = DEFAULT_CLIP)]
    clip: String,
    /// The LPIPS network of the background LPIPS (torchmetrics' SqueezeNet LPIPS, as PIE-Bench):
    /// a folder or Hugging Face id with config.json and lpips-squeeze.safetensors, as
    /// `scripts/convert_metric_weights.py lpips` writes them. Without it that column stays empty.
    #[arg(long)]
    lpips: Option<String>,
    /// DINO ViT-B/8 for the structure distance (as PIE-Bench): a folder or Hugging Face id with
    /// config.json and dino-vitb8.safetensors, as `scripts/convert_metric_weights.py dino` writes
    /// them. Without it that column stays empty.
    #[arg(long)]
    dino: Option<String>,
    /// Comma-separated: edict, bdia, belm, ddim, img2img.
    #[arg(long, value_delimiter = ',', default_value = "edict,ddim,img2img")]
    methods: Vec<EditMethod>,
    /// Only these editing_type_id values (PIE-Bench's categories 0–9), comma-separated.
    #[arg(long, value_delimiter = ',')]
    categories: Vec<String>,
    #[arg(long, default_value_t = 50)]
    steps: usize,
    /// Fraction of the schedule to invert and re-denoise (img2img: to noise), in (0, 1].
    #[arg(long, default_value_t = 0.8)]
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
    /// Prompt-to-prompt attention control (the EDICT authors', default windows) for the
    /// inverting methods: PnPInversion's "edict+p2p" row.
    #[arg(long)]
    p2p: bool,
    /// Side at which images are edited and scored. The benchmark's is 512; a smaller one resizes
    /// each image (Lanczos) and mask (nearest), for quick runs only.
    #[arg(long, default_value_t = 512)]
    size: u32,
    /// Seed of img2img's noise (the same for every image).
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Evaluate only the first N entries (by id, after --categories; before --shard).
    #[arg(long)]
    limit: Option<usize>,
    #[command(flatten)]
    shard: ShardArgs,
    /// Output folder (created if missing) for results.csv, results.json and results.md,
    /// rewritten after every image.
    #[arg(long, default_value = "eval-edit")]
    out: PathBuf,
    /// Overwrite existing result files.
    #[arg(long)]
    force: bool,
}

pub fn eval_edit(a: EvalEditArgs) -> Result<()> {
    let methods = unique(&a.methods);
    if methods.is_empty() {
        bail!("--methods needs at least one of edict, bdia, belm, ddim, img2img");
    }
    let entries = read_entries(&a)?;
    let size = Size::exact(a.size, a.size)?;
    let inverted: Vec<Method> = methods.iter().map(|m| match m {
        EditMethod::Inverted(m) => *m,
        EditMethod::Img2img => Method::Ddim,
    }).collect();
    let settings = eval_settings(a.steps, a.strength, a.mix, a.gamma, a.guidance, &inverted)?;
    let p2p = a.p2p.then(P2p::default);

    let info = json!({
        "command": EditRow::COMMAND,
        "model": a.model.model,
        "clip": a.clip,
        "lpips": a.lpips,
        "dino": a.dino,
        "data": a.data.display().to_string(),
        "categories": a.categories,
        "count": entries.len(),
        "shard": a.shard.setting(),
        "methods": methods.iter().map(|m| m.name()).collect::<Vec<_>>(),
        "steps": a.steps,
        "strength": a.strength,
        "mix": a.mix,
        "gamma": a.gamma,
        "guidance": a.guidance,
        "p2p": a.p2p,
        "size": a.size,
        "seed": a.seed,
        "backend": a.model.backend.to_string(),
        "precision": a.model.precision.to_string(),
    });
    // a wrong --clip fails before the output folder is touched
    let clip_dir = model_source::resolve_clip(&a.clip)?;
    let lpips_dir = a.lpips.as_deref().map(model_source::resolve_lpips).transpose()?;
    let dino_dir = a.dino.as_deref().map(model_source::resolve_dino).transpose()?;
    let mut results = Results::<EditRow>::open(&a.out, info, a.shard.resume, a.force)?;
    let todo: Vec<Entry> = a.shard.select(entries).into_iter().filter(|e| !results.has(&e.id)).collect();

    let mut s = open(&a.model)?;
    let (model, processor, tokenizer) = clip_score::load_folder(&clip_dir, &s.editor.device).with_context(|| format!("CLIP model {}", a.clip))?;
    let clip = ClipScorer { model, processor, tokenizer, device: s.editor.device.clone() };
    let lpips = (lpips_dir.as_deref())
        .map(|dir| Lpips::from_folder(dir, &s.editor.device).with_context(|| format!("LPIPS network {}", a.lpips.as_deref().unwrap_or_default())))
        .transpose()?;
    let dino = (dino_dir.as_deref())
        .map(|dir| DinoVit::from_folder(dir, &s.editor.device).with_context(|| format!("DINO model {}", a.dino.as_deref().unwrap_or_default())))
        .transpose()?;
    let scorers = Scorers { clip: &clip, lpips: lpips.as_ref(), dino: dino.as_ref() };
    for (i, e) in todo.iter().enumerate() {
        let path = a.data.join("annotation_images").join(&e.image_path);
        let bytes = std::fs::read(&path).with_context(|| format!("entry {}: cannot read {}", e.id, path.display()))?;
        // as the benchmark's scripts read it (Pillow), so that its metrics are theirs
        let img = image_io::decode_like_pil(&bytes).with_context(|| path.display().to_string())?;
        if img.dimensions() != (pie_bench::SIDE as u32, pie_bench::SIDE as u32) {
            let (w, h) = img.dimensions();
            bail!("entry {}: {} is {w}×{h}; PIE-Bench's images and masks are {side}×{side}", e.id, path.display(), side = pie_bench::SIDE);
        }
        let (img, _) = image_io::fit(img, size, a.size)?;
        let mask = Mask::decode(&e.mask).with_context(|| format!("entry {}", e.id))?.resized(a.size as usize);
        let source = image_io::from_rgb(&img);
        let target = Target {
            entry: e,
            text: pollster::block_on(clip.text(&e.target_prompt))?,
            structure: dino.as_ref().map(|net| pie_bench::Structure::of(net, &source)).transpose()?,
            source,
            mask,
        };
        let latent = pollster::block_on(s.editor.encode(image_io::to_pixels(&img), a.size as usize, a.size as usize, None))?;

        let mut rows = Vec::new();
        let mut line = format!("[{}/{}] {}:", i + 1, todo.len(), e.id);
        for &method in &methods {
            // the encode is shared: a method's seconds are its edit, decode and scores
            let (t, before) = (Instant::now(), s.editor.unet_calls);
            let mut obs = s.bars.observer();
            let edited = match method {
                EditMethod::Inverted(m) => {
                    let inv = pollster::block_on(s.editor.invert(&latent, &e.source_prompt, &Settings { method: m, ..settings.clone() }, &mut obs))?;
                    let spec = EditSpec { p2p, ..EditSpec::to(&e.target_prompt) };
                    let pair = pollster::block_on(s.editor.edit(&inv, &spec, "edit", &mut obs))?.remove(0);
                    Latent { values: pair.x_f64(), shape: latent.shape }
                }
                EditMethod::Img2img => pollster::block_on(s.editor.img2img(&latent, &e.target_prompt, &settings, a.seed, &mut obs))?,
            };
            let out = pollster::block_on(s.editor.decode(&edited))?;
            let row = score(&scorers, &target, method.name(), &out)?;
            write!(line, " {} {:.2} dB, CLIP {:.2}/{:.2};", method.name(), row.bg.psnr, row.clip_whole, row.clip_edited)?;
            rows.push(EditRow { unet_evals: s.editor.unet_calls - before, seconds: t.elapsed().as_secs_f64(), ..row });
        }
        results.add(rows)?;
        s.bars.note(line.trim_end_matches(';'));
    }
    let m = EditRow::markdown(&Value::Null, results.rows());
    s.bars.note(&format!("{}\nwrote {}", m.trim_start(), a.out.join("results.{csv,json,md}").display()));
    Ok(())
}

/// The mapping file's entries, sorted by id, of the chosen categories, at most `--limit`.
fn read_entries(a: &EvalEditArgs) -> Result<Vec<Entry>> {
    let path = a.data.join("mapping_file.json");
    let text = std::fs::read_to_string(&path).with_context(|| format!("cannot read {} (--data is PIE-Bench's folder, with mapping_file.json and annotation_images/)", path.display()))?;
    let mut entries = pie_bench::parse_mapping(&text).with_context(|| path.display().to_string())?;
    if !a.categories.is_empty() {
        entries.retain(|e| a.categories.contains(&e.editing_type_id));
    }
    entries.truncate(a.limit.unwrap_or(usize::MAX));
    if entries.is_empty() {
        bail!("{} has no entries{}", path.display(), if a.categories.is_empty() { "" } else { " in the chosen --categories" });
    }
    Ok(entries)
}

/// The metric networks: CLIP, and LPIPS and DINO when given.
struct Scorers<'a> {
    clip: &'a ClipScorer,
    lpips: Option<&'a Lpips>,
    dino: Option<&'a DinoVit>,
}

/// What each method's edit of one entry is scored against, computed once per entry.
struct Target<'a> {
    entry: &'a Entry,
    source: Rgb,
    mask: Mask,
    /// the target prompt's CLIP embedding
    text: Vec<f32>,
    /// the source's side of the structure distance, with `--dino`
    structure: Option<pie_bench::Structure>,
}

/// One edited image's row (without its cost): background metrics against the source, CLIP
/// scores of the whole image and of the edited part (NaN when the mask is empty).
fn score(scorers: &Scorers, target: &Target, method: &'static str, out: &Rgb) -> Result<EditRow> {
    let Target { entry: e, source, mask, text, structure } = target;
    let clip = scorers.clip;
    let lpips = match scorers.lpips {
        Some(net) => pollster::block_on(pie_bench::background_lpips(net, source, out, mask))?,
        None => f64::NAN,
    };
    let structure = match (scorers.dino, structure) {
        (Some(net), Some(from)) => pollster::block_on(from.distance(net, out))?,
        _ => f64::NAN,
    };
    let clip_edited = match mask.edited() {
        0 => f64::NAN,
        _ => pollster::block_on(clip.score(&pie_bench::masked(out, mask), text))?,
    };
    Ok(EditRow {
        id: e.id.clone(),
        method,
        editing_type_id: e.editing_type_id.clone(),
        structure,
        bg: pie_bench::background(source, out, mask)?,
        lpips,
        clip_whole: pollster::block_on(clip.score(out, text))?,
        clip_edited,
        unet_evals: 0,
        seconds: 0.0,
        source_prompt: e.source_prompt.clone(),
        target_prompt: e.target_prompt.clone(),
    })
}

/// Rows of PnPInversion's Table 1, in its seven columns and units.
const PUBLISHED: [(&str, [f64; 7]); 3] = [
    ("DDIM + P2P", [69.43, 17.87, 208.80, 219.88, 71.14, 25.01, 22.44]),
    ("Null-text inversion + P2P", [13.44, 27.03, 60.67, 35.86, 84.11, 24.75, 21.86]),
    ("PnP Inversion + P2P", [11.65, 27.22, 54.55, 32.86, 84.76, 25.02, 22.10]),
];

/// One PIE-Bench entry edited by one method.
pub struct EditRow {
    id: String,
    method: &'static str,
    editing_type_id: String,
    /// structure distance (whole image), NaN without `--dino`
    structure: f64,
    bg: Background,
    /// background LPIPS, NaN without `--lpips`
    lpips: f64,
    clip_whole: f64,
    clip_edited: f64,
    unet_evals: usize,
    seconds: f64,
    source_prompt: String,
    target_prompt: String,
}

const METHODS: [&str; 5] = ["edict", "bdia", "belm", "ddim", "img2img"];
/// PIE-Bench's seven columns, in its table's order.
const METRICS: [&str; 7] = ["structure_distance", "psnr", "lpips", "mse", "ssim", "clip_whole", "clip_edited"];

impl EditRow {
    fn metrics(&self) -> [f64; 7] {
        [self.structure, self.bg.psnr, self.lpips, self.bg.mse, self.bg.ssim, self.clip_whole, self.clip_edited]
    }
}

/// Means over one method's images, each metric over its non-NaN values (`nan` counts the others).
struct Mean {
    method: &'static str,
    images: usize,
    values: [f64; 7],
    nan: [usize; 7],
    unet_evals: f64,
    seconds: f64,
}

fn means(rows: &[EditRow]) -> Vec<Mean> {
    methods_in_order(rows)
        .into_iter()
        .map(|method| {
            let r: Vec<&EditRow> = rows.iter().filter(|r| r.method == method).collect();
            let n = r.len() as f64;
            let column = |k: usize| r.iter().map(move |x| x.metrics()[k]).filter(|v| !v.is_nan());
            Mean {
                method,
                images: r.len(),
                values: std::array::from_fn(|k| column(k).sum::<f64>() / column(k).count() as f64),
                nan: std::array::from_fn(|k| r.len() - column(k).count()),
                unet_evals: r.iter().map(|x| x.unet_evals as f64).sum::<f64>() / n,
                seconds: r.iter().map(|x| x.seconds).sum::<f64>() / n,
            }
        })
        .collect()
}

impl Row for EditRow {
    const COMMAND: &'static str = "eval-edit";
    const CSV_HEADER: &'static str = "id,method,editing_type_id,structure_distance,psnr,lpips,mse,ssim,clip_whole,clip_edited,unet_evals,seconds,source_prompt,target_prompt";

    fn item(&self) -> &str {
        &self.id
    }

    fn method(&self) -> &'static str {
        self.method
    }

    fn to_csv(&self) -> Vec<String> {
        let mut f = vec![quote(&self.id), self.method.to_string(), quote(&self.editing_type_id)];
        f.extend(self.metrics().map(|v| v.to_string()));
        f.extend([self.unet_evals.to_string(), format!("{:.3}", self.seconds), quote(&self.source_prompt), quote(&self.target_prompt)]);
        f
    }

    fn from_csv(f: &[String]) -> Result<Self> {
        let [id, method, category, structure, psnr, lpips, mse, ssim, whole, edited, evals, seconds, source, target] = f else {
            bail!("{} fields, expected 14", f.len());
        };
        Ok(Self {
            id: id.clone(),
            method: method_named(method, &METHODS)?,
            editing_type_id: category.clone(),
            structure: number(structure, "structure distance")?,
            bg: Background { psnr: number(psnr, "PSNR")?, mse: number(mse, "MSE")?, ssim: number(ssim, "SSIM")? },
            lpips: number(lpips, "LPIPS")?,
            clip_whole: number(whole, "CLIP score")?,
            clip_edited: number(edited, "CLIP score")?,
            unet_evals: number(evals, "UNet count")?,
            seconds: number(seconds, "time")?,
            source_prompt: source.clone(),
            target_prompt: target.clone(),
        })
    }

    fn json(rows: &[Self]) -> (Value, Value) {
        // NaN (no unedited part, or nothing edited) is written as null
        let metrics = |v: [f64; 7]| -> serde_json::Map<String, Value> { METRICS.iter().zip(v).map(|(k, v)| (k.to_string(), json!(v))).collect() };
        let images = rows
            .iter()
            .map(|r| {
                let mut o = metrics(r.metrics());
                o.extend([
                    ("id".into(), json!(r.id)),
                    ("method".into(), json!(r.method)),
                    ("editing_type_id".into(), json!(r.editing_type_id)),
                    ("unet_evals".into(), json!(r.unet_evals)),
                    ("seconds".into(), json!(r.seconds)),
                    ("source_prompt".into(), json!(r.source_prompt)),
                    ("target_prompt".into(), json!(r.target_prompt)),
                ]);
                Value::Object(o)
            })
            .collect();
        let means = means(rows)
            .iter()
            .map(|m| {
                let mut o = metrics(m.values);
                let nan: serde_json::Map<String, Value> = METRICS.iter().zip(m.nan).map(|(k, n)| (k.to_string(), json!(n))).collect();
                o.extend([
                    ("method".into(), json!(m.method)),
                    ("images".into(), json!(m.images)),
                    ("nan".into(), Value::Object(nan)),
                    ("unet_evals".into(), json!(m.unet_evals)),
                    ("seconds".into(), json!(m.seconds)),
                ]);
                Value::Object(o)
            })
            .collect();
        (means, images)
    }

    fn markdown(s: &Value, rows: &[Self]) -> String {
        // which network computed a column, or that none did
        let given = |net: &Value, flag: &str| match net.as_str() {
            Some(net) => format!(" `{net}`"),
            None => format!(": not computed, no `{flag}` given"),
        };
        let means = means(rows);
        let p2p = if s["p2p"] == true { " + P2P" } else { "" };
        let mut t = String::new();
        if !s.is_null() {
            let n = means.first().map_or(0, |m| m.images);
            t += &format!(
                "# PIE-Bench editing: {n} images from {}\n\nModel `{}`, CLIP `{}`, {} steps, strength {}, p = {}, guidance {}, {}²{}. \
                 As PnPInversion's evaluation computes them: the structure distance of the whole image (MSE of DINO ViT-B/8's \
                 last-layer key self-similarities{}), PSNR, LPIPS, MSE and SSIM of the unedited part (both images in [0, 1] \
                 times 1 − mask; data range 1; torchmetrics, LPIPS on SqueezeNet{}), CLIP score 100·max(cos, 0) of the whole \
                 edited image and of its edited part against the target prompt; means over images, NaN rows excluded.\n\n",
                s["data"].as_str().unwrap_or_default(),
                s["model"].as_str().unwrap_or_default(),
                s["clip"].as_str().unwrap_or_default(),
                s["steps"],
                s["strength"],
                s["mix"],
                s["guidance"],
                s["size"],
                if s["size"] == 512 { "" } else { " (not the benchmark's 512²)" },
                given(&s["dino"], "--dino"),
                given(&s["lpips"], "--lpips"),
            );
        }
        t += "| method | Structure ×10³ ↓ | PSNR ↑ | LPIPS ×10³ ↓ | MSE ×10⁴ ↓ | SSIM ×10² ↑ | CLIP whole ↑ | CLIP edited ↑ | UNet calls | s / image |\n";
        t += "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |\n";
        // in the benchmark's units; "–" where no image has a value
        let cell = |v: f64, unit: f64| if v.is_nan() { "–".to_string() } else { format!("{:.2}", v * unit) };
        for m in &means {
            // P2P applies to the inverting methods, not img2img
            let label = if m.method == "img2img" { m.method.to_string() } else { format!("{}{p2p}", method_label(m.method)) };
            let [structure, psnr, lpips, mse, ssim, whole, edited] = m.values;
            t += &format!(
                "| {label} | {} | {} | {} | {} | {} | {} | {} | {:.0} | {:.2} |\n",
                cell(structure, 1e3),
                cell(psnr, 1.0),
                cell(lpips, 1e3),
                cell(mse, 1e4),
                cell(ssim, 1e2),
                cell(whole, 1.0),
                cell(edited, 1.0),
                m.unet_evals,
                m.seconds
            );
        }
        if !s.is_null() {
            for (label, values) in PUBLISHED {
                let v = values.map(|v| format!("{v:.2}"));
                t += &format!("| {label} (published) | {} | – | – |\n", v.join(" | "));
            }
            t += "\n(published): rows of PnPInversion's Table 1 as its authors print them (Ju et al., ICLR 2024; \
                  github.com/cure-lab/PnPInversion, `scripts/compare_direct_inversion_with_other_inversion_techniques.png`): \
                  Stable Diffusion 1.4, PIE-Bench's 700 images, their prompt-to-prompt code and settings; not run here, for scale. \
                  EDICT is not in that table.\n";
        }
        if let Some(m) = means.first().filter(|m| m.nan.iter().any(|&n| n > 0)) {
            t += &format!(
                "\nExcluded as NaN: {} of {} images from the background metrics (the mask leaves no unedited part), {} from CLIP edited (empty mask).\n",
                m.nan[1], m.images, m.nan[6]
            );
        }
        t
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(method: &'static str, psnr: f64, clip_edited: f64) -> EditRow {
        EditRow {
            id: "1".into(),
            method,
            editing_type_id: "0".into(),
            structure: 0.0625,
            bg: Background { psnr, mse: 0.5, ssim: 0.25 },
            // NaN with the other background metrics (a mask with no unedited part)
            lpips: if psnr.is_nan() { f64::NAN } else { 0.125 },
            clip_whole: 20.0,
            clip_edited,
            unet_evals: 8,
            seconds: 1.5,
            source_prompt: "a \"cat\", sitting".into(),
            target_prompt: "a dog".into(),
        }
    }

    #[test]
    fn means_exclude_nan_and_rows_round_trip() {
        let rows = [row("edict", 30.0, 10.0), row("ddim", 20.0, 1.0), row("edict", f64::NAN, f64::NAN), row("edict", f64::INFINITY, 5.0)];
        let m = means(&rows);
        assert_eq!((m[0].method, m[0].images, m[0].nan), ("edict", 3, [0, 1, 1, 0, 0, 0, 1]));
        assert_eq!((m[0].values[0], m[0].values[1], m[0].values[2], m[0].values[6], m[0].values[5]), (0.0625, f64::INFINITY, 0.125, 7.5, 20.0));
        assert_eq!((m[1].method, m[1].values[1]), ("ddim", 20.0));
        for r in &rows {
            let fields: Vec<String> = r.to_csv();
            let back = EditRow::from_csv(&fields.iter().map(|f| f.trim_matches('"').replace("\"\"", "\"")).collect::<Vec<_>>()).unwrap();
            assert_eq!(back.to_csv(), fields);
        }
        let md = EditRow::markdown(&Value::Null, &rows);
        assert!(md.contains("| EDICT | 62.50 | inf | 125.00 | 5000.00 | 25.00 | 20.00 | 7.50 | 8 | 1.50 |"), "{md}");
        assert!(md.contains("Excluded as NaN: 1 of 3 images"), "{md}");
        // without --lpips or --dino their columns have no value
        let md = EditRow::markdown(&Value::Null, &[EditRow { lpips: f64::NAN, structure: f64::NAN, ..row("ddim", 20.0, 1.0) }]);
        assert!(md.contains("| DDIM | – | 20.00 | – | 5000.00 |"), "{md}");
        assert!("edict".parse::<EditMethod>().is_ok() && "img2img".parse::<EditMethod>().is_ok());
        assert!("sdedit".parse::<EditMethod>().unwrap_err().contains("edict, bdia, belm, ddim or img2img"));
    }
}
