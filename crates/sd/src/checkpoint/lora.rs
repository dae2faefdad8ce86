//! LoRA files, merged into the weights as they load (diffusers' `load_lora_weights` +
//! `fuse_lora`): `W + scale · (alpha / rank) · up · down` for every layer a file names. The
//! networks, their speed and exact inversion are those of the merged model.
//!
//! Two formats, told apart by their keys:
//! - kohya-ss (sd-scripts, most files on model sites): `lora_unet_<path>` and `lora_te_<path>`
//!   (`lora_te1_`, `lora_te2_` for SDXL's two text encoders), the module path with `.` written
//!   `_`, as `.lora_down.weight`, `.lora_up.weight` and a scalar `.alpha`. SD 1.x/2.x files
//!   name the UNet's modules as diffusers does, SDXL files as Stability's SGM code does
//!   (`input_blocks_4_1_…`). Convolutions (LoCon) are included.
//! - diffusers/PEFT: `unet.<path>.lora_A.weight`, `.lora_B.weight` (`text_encoder.`,
//!   `text_encoder_2.`), with `lora_alpha` in the file's `lora_adapter_metadata` (else
//!   `.alpha` keys, else alpha = rank).

use std::collections::{BTreeMap, HashMap};
use std::rc::Rc;

use safetensors::SafeTensors;

use crate::checkpoint::single_file::{Layout, Part, map_unet};
use crate::checkpoint::weights::decode;
use crate::config::SdConfigs;
use crate::{Result, SdError};

/// One LoRA file, decoded, with the strength it is applied at.
pub struct Lora {
    name: String,
    scale: f32,
    /// SHA-256 of the file's bytes (the model fingerprint includes it).
    hash: [u8; 32],
    modules: Vec<Module>,
}

/// Where a module's layer is, as the file names it.
#[derive(Debug, Clone, PartialEq)]
enum Path {
    /// kohya: the path with `.` written `_` (diffusers names, or SGM's for SDXL's UNet)
    Kohya(String),
    /// diffusers/PEFT: the diffusers module path
    Dotted(String),
}

/// One adapted layer: `down` is `[rank, in, (kh, kw)]`, `up` is `[out, rank, (1, 1)]`.
struct Module {
    part: Part,
    /// the name in the file, for errors
    name: String,
    path: Path,
    down: Vec<f32>,
    down_shape: Vec<usize>,
    up: Vec<f32>,
    /// `alpha / rank`
    ratio: f32,
}

impl Module {
    fn rank(&self) -> usize {
        self.down_shape[0]
    }
    fn out_features(&self) -> usize {
        self.up.len() / self.rank()
    }
    fn in_features(&self) -> usize {
        self.down.len() / self.rank()
    }
}

/// Which of a module's tensors a key holds.
#[derive(Debug)]
enum Role {
    Down,
    Up,
    Alpha,
}

/// The module a key belongs to and its role; `Err` says why the key is not read.
fn split_key(key: &str) -> std::result::Result<(&str, Role), String> {
    let suffixes = [
        (".lora_down.weight", Role::Down),
        (".lora_up.weight", Role::Up),
        (".lora_A.weight", Role::Down),
        (".lora_B.weight", Role::Up),
        (".lora.down.weight", Role::Down),
        (".lora.up.weight", Role::Up),
        (".alpha", Role::Alpha),
    ];
    for (suffix, role) in suffixes {
        if let Some(module) = key.strip_suffix(suffix) {
            return Ok((module, role));
        }
    }
    let unsupported = [
        ("dora_scale", "DoRA"),
        ("lora_magnitude_vector", "DoRA"),
        ("hada_", "LyCORIS LoHa"),
        ("lokr_", "LyCORIS LoKr"),
        ("lora_mid", "LoCon with a Tucker mid weight"),
    ];
    match unsupported.iter().find(|(pat, _)| key.contains(pat)) {
        Some((_, what)) => Err(format!("`{key}`: {what} weights are not supported (plain LoRA and LoCon are)")),
        None => Err(format!("`{key}` is not a LoRA weight (`.lora_down`/`.lora_up`/`.alpha` or `.lora_A`/`.lora_B`)")),
    }
}

/// The network and path of a module name.
fn split_module(module: &str) -> Option<(Part, Path)> {
    let kohya = [
        ("lora_unet_", Part::Unet),
        ("lora_te_", Part::TextEncoder),
        ("lora_te1_", Part::TextEncoder),
        ("lora_te2_", Part::TextEncoder2),
    ];
    for (prefix, part) in kohya {
        if let Some(rest) = module.strip_prefix(prefix) {
            return Some((part, Path::Kohya(rest.to_string())));
        }
    }
    let diffusers = [("unet.", Part::Unet), ("text_encoder.", Part::TextEncoder), ("text_encoder_2.", Part::TextEncoder2)];
    let (prefix, part) = diffusers.iter().find(|(p, _)| module.starts_with(p))?;
    Some((*part, Path::Dotted(module[prefix.len()..].to_string())))
}

/// PEFT's adapter settings per network, from the file's `lora_adapter_metadata` (diffusers
/// writes `unet.lora_alpha`, `unet.alpha_pattern`, `unet.use_rslora`, …).
#[derive(Default)]
struct PeftConfig {
    alpha: Option<f32>,
    alpha_pattern: Vec<(regex::Regex, f32)>,
    rslora: bool,
}

impl PeftConfig {
    fn from_metadata(meta: &serde_json::Value, part: Part) -> std::result::Result<Self, String> {
        let get = |k: &str| meta.get(format!("{}.{k}", part.folder()));
        let number = |v: &serde_json::Value, what: &str| {
            v.as_f64().map(|a| a as f32).filter(|a| a.is_finite()).ok_or_else(|| format!("lora_adapter_metadata: {what} is not a finite number"))
        };
        let alpha = get("lora_alpha").map(|v| number(v, "`lora_alpha`")).transpose()?;
        let mut alpha_pattern = Vec::new();
        if let Some(p) = get("alpha_pattern").and_then(|v| v.as_object()) {
            for (pattern, a) in p {
                // PEFT's rule: the pattern matches the module path's end, after a `.`
                let re = regex::Regex::new(&format!(r"(^|.*\.)(?:{pattern})$")).map_err(|_| format!("lora_adapter_metadata: alpha_pattern `{pattern}` is not a regular expression"))?;
                alpha_pattern.push((re, number(a, &format!("alpha_pattern `{pattern}`"))?));
            }
        }
        let rslora = get("use_rslora").and_then(|v| v.as_bool()).unwrap_or(false);
        Ok(Self { alpha, alpha_pattern, rslora })
    }

    /// `alpha / rank` (PEFT's `scaling`), `None` without an alpha.
    fn ratio(&self, path: &str, rank: usize) -> Option<f32> {
        let alpha = self.alpha_pattern.iter().find(|(re, _)| re.is_match(path)).map(|(_, a)| *a).or(self.alpha)?;
        Some(if self.rslora { alpha / (rank as f32).sqrt() } else { alpha / rank as f32 })
    }
}

impl Lora {
    /// Reads a LoRA safetensors file; `name` is what errors call it.
    pub fn from_bytes(name: &str, bytes: &[u8], scale: f32) -> Result<Self> {
        let bad = |reason: String| SdError::Lora { file: name.to_string(), reason };
        if !scale.is_finite() {
            return Err(bad(format!("the scale {scale} is not a finite number")));
        }
        let (_, meta) = SafeTensors::read_metadata(bytes).map_err(|e| bad(format!("not a valid safetensors file: {e}")))?;
        let st = SafeTensors::deserialize(bytes).map_err(|e| bad(format!("not a valid safetensors file: {e}")))?;
        let adapter: serde_json::Value = match meta.metadata().as_ref().and_then(|m| m.get("lora_adapter_metadata")) {
            Some(raw) => serde_json::from_str(raw).map_err(|e| bad(format!("bad lora_adapter_metadata: {e}")))?,
            None => serde_json::Value::Null,
        };
        // module name -> (down, up, alpha) as (shape, values)
        type Tensor = (Vec<usize>, Vec<f32>);
        let mut parts: BTreeMap<String, [Option<Tensor>; 3]> = BTreeMap::new();
        for (key, view) in st.tensors() {
            let (module, role) = split_key(&key).map_err(bad)?;
            let values = decode(view.dtype(), view.data())
                .ok_or_else(|| bad(format!("`{key}` has dtype {:?}, expected f32, f16 or bf16", view.dtype())))?;
            parts.entry(module.to_string()).or_default()[role as usize] = Some((view.shape().to_vec(), values));
        }
        if parts.is_empty() {
            return Err(bad("the file holds no LoRA weights".into()));
        }
        let peft = Part::ALL.map(|p| PeftConfig::from_metadata(&adapter, p));
        let mut modules = Vec::new();
        for (module, [down, up, alpha]) in parts {
            let (part, path) = split_module(&module).ok_or_else(|| {
                bad(format!("`{module}` names no network (kohya `lora_unet_`/`lora_te_`/`lora_te1_`/`lora_te2_` or diffusers `unet.`/`text_encoder.`/`text_encoder_2.`)"))
            })?;
            let (Some((down_shape, down)), Some((up_shape, up))) = (down, up) else {
                return Err(bad(format!("`{module}` needs both its down (A) and up (B) weights")));
            };
            let rank = down_shape.first().copied().unwrap_or(0);
            let fits = rank > 0
                && (2..=4).contains(&down_shape.len())
                && up_shape.len() == down_shape.len()
                && up_shape[1] == rank
                && up_shape[2..].iter().all(|&d| d == 1)
                && !down.is_empty()
                && !up.is_empty();
            if !fits {
                return Err(bad(format!("`{module}`: down {down_shape:?} and up {up_shape:?} are not a rank-r pair ([r, in, …] and [out, r, 1, …])")));
            }
            // without an alpha, alpha = rank (kohya's and PEFT's default)
            let ratio = match alpha {
                Some((_, a)) if a.len() == 1 && a[0].is_finite() => a[0] / rank as f32,
                Some((shape, a)) => return Err(bad(format!("`{module}.alpha` is {a:?} of shape {shape:?}, expected a finite scalar"))),
                None => match &path {
                    Path::Dotted(p) => peft[part as usize].as_ref().map_err(|e| bad(e.clone()))?.ratio(p, rank).unwrap_or(1.0),
                    Path::Kohya(_) => 1.0,
                },
            };
            modules.push(Module { part, name: module, path, down, down_shape, up, ratio });
        }
        use sha2::{Digest, Sha256};
        Ok(Self { name: name.to_string(), scale, hash: Sha256::digest(bytes).into(), modules })
    }

    /// Reads a LoRA file (pickle files are refused by name).
    #[cfg(not(target_arch = "wasm32"))]
    pub fn open(path: &std::path::Path, scale: f32) -> Result<Self> {
        crate::checkpoint::weights::check_not_pickle(path)?;
        let bytes = std::fs::read(path).map_err(|source| SdError::Io { path: path.to_path_buf(), source })?;
        Self::from_bytes(&path.display().to_string(), &bytes, scale)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn scale(&self) -> f32 {
        self.scale
    }

    /// What the model fingerprint hashes for this LoRA: its content and scale.
    pub(crate) fn identity(&self) -> Vec<u8> {
        [&b"lora"[..], &self.hash, &self.scale.to_le_bytes()].concat()
    }

    /// Refuses a LoRA made for another model family before any network loads: a network the
    /// model lacks, or a cross-attention or text width that differs from the model's.
    pub fn check_fits(&self, configs: &SdConfigs) -> Result<()> {
        let bad = |reason: String| Err(SdError::Lora { file: self.name.clone(), reason: format!("{reason} (a LoRA for another Stable Diffusion family?)") });
        if let Some(m) = self.modules.iter().find(|m| !configs.parts().contains(&m.part)) {
            return bad(format!("it has {} layers (`{}`), which this model does not have", m.part.folder(), m.name));
        }
        for m in &self.modules {
            let path = match &m.path {
                Path::Kohya(p) => p.replace('_', "."),
                Path::Dotted(p) => p.clone(),
            };
            let width = match m.part {
                Part::Unet if path.ends_with("attn2.to.k") || path.ends_with("attn2.to_k") => Some(("UNet cross-attention", configs.unet.cross_attention_dim)),
                Part::TextEncoder if path.ends_with("q.proj") || path.ends_with("q_proj") => Some(("text encoder", configs.clip.hidden_size)),
                _ => None,
            };
            if let Some((what, expected)) = width
                && m.in_features() != expected
            {
                return bad(format!("its {what} layers take {} features (`{}`), this model's take {expected}", m.in_features(), m.name));
            }
        }
        Ok(())
    }
}

/// The LoRA changes to one network's weights, by the key the network reads them under.
#[derive(Default, Clone)]
pub struct Merges {
    deltas: HashMap<String, Vec<Delta>>,
}

/// One module's change: added at `row` (non-zero for q, k or v inside a fused `in_proj`).
#[derive(Clone)]
struct Delta {
    lora: Rc<Lora>,
    module: usize,
    row: usize,
}

/// SGM's multi-word names, so a kohya SDXL UNet path can be written back with its dots.
const SGM_WORDS: [&str; 16] = [
    "input_blocks", "middle_block", "output_blocks", "time_embed", "label_emb", "in_layers", "out_layers",
    "emb_layers", "skip_connection", "transformer_blocks", "proj_in", "proj_out", "to_q", "to_k", "to_v", "to_out",
];

/// `input_blocks_4_1_transformer_blocks_0_attn1_to_q` → `input_blocks.4.1.transformer_blocks.0.attn1.to_q`.
fn sgm_dotted(path: &str) -> String {
    let mut out = String::new();
    let mut rest = path;
    while !rest.is_empty() {
        let word = SGM_WORDS
            .iter()
            .find(|w| rest.starts_with(*w) && matches!(rest.as_bytes().get(w.len()), None | Some(b'_')))
            .map_or_else(|| rest.split('_').next().unwrap_or(rest), |w| *w);
        if !out.is_empty() {
            out.push('.');
        }
        out.push_str(word);
        rest = rest[word.len()..].strip_prefix('_').unwrap_or(&rest[word.len()..]);
    }
    out
}

impl Merges {
    /// Finds the layer of every module of `loras` for `part` among `shapes` (the network's keys,
    /// as it reads them, and their stored shapes); a module that matches no layer, or whose
    /// shape disagrees, is an error naming it.
    pub fn resolve(loras: &[Rc<Lora>], part: Part, layout: Layout, shapes: &HashMap<String, Vec<usize>>) -> Result<Self> {
        let mut merges = Self::default();
        if loras.is_empty() {
            return Ok(merges);
        }
        // kohya writes a module's path with `_` for `.`; q, k and v inside a fused `in_proj`
        // keep their own names
        let mut kohya: HashMap<String, String> = HashMap::new();
        for m in shapes.keys().filter_map(|k| k.strip_suffix(".weight")) {
            let fused = m.strip_suffix(".in_proj").map(|attn| ["q_proj", "k_proj", "v_proj"].map(|p| format!("{attn}.{p}")));
            for m in fused.into_iter().flatten().chain([m.to_string()]) {
                kohya.insert(m.replace('.', "_"), m);
            }
        }
        for lora in loras {
            for (i, m) in lora.modules.iter().enumerate().filter(|(_, m)| m.part == part) {
                let bad = |reason: String| SdError::Lora { file: lora.name.clone(), reason: format!("`{}`: {reason}", m.name) };
                let module = match &m.path {
                    Path::Dotted(p) => Some(p.clone()),
                    Path::Kohya(p) => kohya.get(p).cloned().or_else(|| {
                        let sgm = map_unet(&format!("{}.weight", sgm_dotted(p)), layout.unet_layers_per_block)?;
                        (part == Part::Unet).then(|| sgm.strip_suffix(".weight").map(str::to_string)).flatten()
                    }),
                };
                let (key, row) = module
                    .and_then(|module| target(&module, shapes))
                    .ok_or_else(|| bad(format!("matches no layer of the {}", part.folder())))?;
                let shape = &shapes[&key];
                let (rows, cols): (usize, usize) = (shape.first().copied().unwrap_or(0), shape.iter().skip(1).product());
                let kernel_fits = shape.len() <= 2 || m.down_shape.len() <= 2 || shape[2..] == m.down_shape[2..];
                if row + m.out_features() > rows || cols != m.in_features() || !kernel_fits {
                    return Err(bad(format!(
                        "its layer is [{}, {:?}], the model's `{key}` is {shape:?}",
                        m.out_features(),
                        &m.down_shape[1..]
                    )));
                }
                merges.deltas.entry(key).or_default().push(Delta { lora: lora.clone(), module: i, row });
            }
        }
        Ok(merges)
    }

    /// The keys of the weights the LoRAs change, sorted.
    pub fn keys(&self) -> Vec<&str> {
        let mut keys: Vec<&str> = self.deltas.keys().map(String::as_str).collect();
        keys.sort_unstable();
        keys
    }

    /// Adds the changes to `key`'s weight to its `values` (f32, the stored layout).
    pub fn apply(&self, key: &str, values: &mut [f32]) {
        for d in self.deltas.get(key).into_iter().flatten() {
            let m = &d.lora.modules[d.module];
            let (out, rank, cols) = (m.out_features(), m.rank(), m.in_features());
            let c = &mut values[d.row * cols..(d.row + out) * cols];
            // SAFETY: `up` is out×rank, `down` rank×cols, `c` out×cols, all row-major and
            // contiguous (lengths checked by `resolve` and `from_bytes`).
            unsafe {
                matrixmultiply::sgemm(
                    out,
                    rank,
                    cols,
                    d.lora.scale * m.ratio,
                    m.up.as_ptr(),
                    rank as isize,
                    1,
                    m.down.as_ptr(),
                    cols as isize,
                    1,
                    1.0,
                    c.as_mut_ptr(),
                    cols as isize,
                    1,
                );
            }
        }
    }
}

/// The weight key a module path adapts and the row it starts at: `<path>.weight`, or for q, k
/// or v of OpenCLIP's fused `in_proj` (single-file SD 2.x and SDXL text encoders) that
/// matrix's first, second or third block of rows.
fn target(module: &str, shapes: &HashMap<String, Vec<usize>>) -> Option<(String, usize)> {
    let key = format!("{module}.weight");
    if shapes.contains_key(&key) {
        return Some((key, 0));
    }
    let (attn, proj) = module.rsplit_once('.')?;
    let block = ["q_proj", "k_proj", "v_proj"].iter().position(|p| *p == proj)?;
    let fused = format!("{attn}.in_proj.weight");
    let rows = shapes.get(&fused)?.first()? / 3;
    Some((fused, block * rows))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sgm_paths_get_their_dots_back() {
        assert_eq!(sgm_dotted("input_blocks_4_1_transformer_blocks_0_attn1_to_q"), "input_blocks.4.1.transformer_blocks.0.attn1.to_q");
        assert_eq!(sgm_dotted("output_blocks_2_0_skip_connection"), "output_blocks.2.0.skip_connection");
        assert_eq!(sgm_dotted("middle_block_1_transformer_blocks_0_ff_net_0_proj"), "middle_block.1.transformer_blocks.0.ff.net.0.proj");
        assert_eq!(sgm_dotted("label_emb_0_0"), "label_emb.0.0");
        assert_eq!(sgm_dotted("input_blocks_1_0_emb_layers_1"), "input_blocks.1.0.emb_layers.1");
        assert_eq!(sgm_dotted("output_blocks_5_2_conv"), "output_blocks.5.2.conv");
    }

    #[test]
    fn keys_split_into_module_and_role() {
        assert!(matches!(split_key("lora_unet_a_b.lora_down.weight"), Ok(("lora_unet_a_b", Role::Down))));
        assert!(matches!(split_key("unet.a.b.lora_B.weight"), Ok(("unet.a.b", Role::Up))));
        assert!(matches!(split_key("lora_te_x.alpha"), Ok(("lora_te_x", Role::Alpha))));
        assert!(split_key("lora_unet_a.hada_w1_a").unwrap_err().contains("LoHa"));
        assert!(split_key("lora_unet_a.dora_scale").unwrap_err().contains("DoRA"));
        assert!(split_key("model.diffusion_model.x.weight").unwrap_err().contains("not a LoRA weight"));
    }

    #[test]
    fn fused_in_proj_takes_q_k_v_rows() {
        let shapes = HashMap::from([("enc.self_attn.in_proj.weight".to_string(), vec![12, 4])]);
        assert_eq!(target("enc.self_attn.k_proj", &shapes), Some(("enc.self_attn.in_proj.weight".into(), 4)));
        assert_eq!(target("enc.self_attn.out_proj", &shapes), None);
    }
}
