//! The output folder of `eval` and `eval-edit`, and those commands as many processes:
//! `--shard I/N` keeps every N-th item of the sorted list, `--resume` skips the items an output
//! folder already holds (its results are rewritten after every item), and `edict eval-merge`
//! (in [`super::eval_merge`]) joins the shards' folders into one table. The results' CSV is the
//! record both read back: its numbers print in Rust's shortest round-trip form, so resumed and
//! merged tables hold the very values of an uninterrupted run.

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use anyhow::{Context, Result, bail};
use clap::Args;
use serde_json::{Value, json};

use super::{check_output, write};

/// The files of an output folder: the rows, the settings with means and rows, the table.
pub const FILES: [&str; 3] = ["results.csv", "results.json", "results.md"];

/// `I/N`: shard I of N, numbered from 0 (Slurm's `$SLURM_ARRAY_TASK_ID` with `--array=0-(N-1)`,
/// Kubernetes' `$JOB_COMPLETION_INDEX`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shard {
    pub index: usize,
    pub count: usize,
}

impl FromStr for Shard {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        let bad = || format!("`{s}`: expected I/N with 0 ≤ I < N (shards are numbered from 0: 0/4, 1/4, 2/4, 3/4)");
        let (i, n) = s.split_once('/').ok_or_else(bad)?;
        let (index, count) = (i.trim().parse().map_err(|_| bad())?, n.trim().parse().map_err(|_| bad())?);
        if index >= count {
            return Err(bad());
        }
        Ok(Self { index, count })
    }
}

impl fmt::Display for Shard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.index, self.count)
    }
}

#[derive(Args)]
pub struct ShardArgs {
    /// I/N: only the items at positions I, I+N, I+2N, … of the sorted list (numbered from 0:
    /// 0/4 … 3/4), e.g. one task of a job array; `edict eval-merge` joins the shards' folders.
    #[arg(long)]
    pub shard: Option<Shard>,
    /// Keep the rows already in --out (rewritten after every item) and run only the items
    /// missing there; the settings must be the same.
    #[arg(long, conflicts_with = "force")]
    pub resume: bool,
}

impl ShardArgs {
    /// This shard's part of the sorted list.
    pub fn select<T>(&self, items: Vec<T>) -> Vec<T> {
        match self.shard {
            Some(s) => items.into_iter().skip(s.index).step_by(s.count).collect(),
            None => items,
        }
    }

    /// The settings' `shard` entry: `"I/N"`, or null for the whole list.
    pub fn setting(&self) -> Value {
        self.shard.map(|s| s.to_string()).into()
    }
}

/// One row of `eval`'s or `eval-edit`'s results: one item (image) under one method.
pub trait Row: Sized {
    /// The command writing these rows, recorded in the settings as `command`.
    const COMMAND: &'static str;
    const CSV_HEADER: &'static str;
    /// The item the row belongs to (an image file, a PIE-Bench id); an item's rows are adjacent.
    fn item(&self) -> &str;
    fn method(&self) -> &'static str;
    /// The row's CSV fields, free text already [`quote`]d.
    fn to_csv(&self) -> Vec<String>;
    fn from_csv(fields: &[String]) -> Result<Self>;
    /// results.json's `mean` and `images`.
    fn json(rows: &[Self]) -> (Value, Value);
    /// results.md, from the settings and all rows.
    fn markdown(settings: &Value, rows: &[Self]) -> String;
}

/// A field for [`Row::to_csv`]: quoted, quotes doubled (RFC 4180).
pub fn quote(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\"\""))
}

/// The methods of `rows`, in the order they first appear.
pub fn methods_in_order<R: Row>(rows: &[R]) -> Vec<&'static str> {
    let mut order = Vec::new();
    for r in rows {
        if !order.contains(&r.method()) {
            order.push(r.method());
        }
    }
    order
}

/// The one of `known` that a CSV field names.
/// A method's row label in the Markdown tables.
pub fn method_label(method: &str) -> &str {
    match method {
        "vae" => "VAE only",
        "edict" => "EDICT",
        "bdia" => "BDIA",
        "belm" => "O-BELM",
        "ddim" => "DDIM",
        other => other,
    }
}

pub fn method_named(field: &str, known: &[&'static str]) -> Result<&'static str> {
    known.iter().copied().find(|m| *m == field).with_context(|| format!("unknown method `{field}`"))
}

/// Parses a number written by [`Row::to_csv`] (`inf`, `NaN` included).
pub fn number<T: FromStr>(field: &str, what: &str) -> Result<T> {
    field.parse().map_err(|_| anyhow::anyhow!("`{field}` is not a valid {what}"))
}

/// A command's output folder while it runs.
pub struct Results<R: Row> {
    dir: PathBuf,
    settings: Value,
    rows: Vec<R>,
}

impl<R: Row> Results<R> {
    /// Opens `dir` (created if missing) for a run with `settings`. With `resume`, keeps the rows
    /// already there if they were made with the same settings; otherwise starts an empty table,
    /// refusing to overwrite one unless `force`. Called before any long work.
    pub fn open(dir: &Path, settings: Value, resume: bool, force: bool) -> Result<Self> {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        let mut out = Self { dir: dir.to_path_buf(), settings, rows: Vec::new() };
        if resume && dir.join(FILES[0]).exists() {
            let (saved, rows) = read::<R>(dir)?;
            if let Some(diff) = differences(&saved, &out.settings, "") {
                bail!(
                    "--resume: {} holds results made with other settings ({diff}); use another --out, or --force to start over",
                    dir.display()
                );
            }
            out.rows = rows;
            return Ok(out);
        }
        if !resume {
            for f in FILES {
                check_output(&dir.join(f), force)?;
            }
        }
        out.write()?;
        Ok(out)
    }

    pub fn has(&self, item: &str) -> bool {
        self.rows.iter().any(|r| r.item() == item)
    }

    pub fn rows(&self) -> &[R] {
        &self.rows
    }

    /// Adds one item's rows and rewrites the files.
    pub fn add(&mut self, rows: Vec<R>) -> Result<()> {
        self.rows.extend(rows);
        self.write()
    }

    fn write(&self) -> Result<()> {
        write_results(&self.dir, &self.settings, &self.rows)
    }
}

pub(super) fn write_results<R: Row>(dir: &Path, settings: &Value, rows: &[R]) -> Result<()> {
    let mut csv = format!("{}\n", R::CSV_HEADER);
    for r in rows {
        csv += &r.to_csv().join(",");
        csv.push('\n');
    }
    let (mean, images) = R::json(rows);
    let json = serde_json::to_string_pretty(&json!({ "settings": settings, "mean": mean, "images": images }))?;
    for (f, text) in FILES.iter().zip([csv, json, R::markdown(settings, rows)]) {
        // written beside, then renamed: a run killed meanwhile leaves the previous whole file
        let tmp = dir.join(format!("{f}.tmp"));
        write(&tmp, text.as_bytes())?;
        std::fs::rename(&tmp, dir.join(f)).with_context(|| format!("cannot write {}", dir.join(f).display()))?;
    }
    Ok(())
}

pub(super) fn read_settings(dir: &Path) -> Result<Value> {
    let path = dir.join(FILES[1]);
    let text = std::fs::read_to_string(&path).with_context(|| format!("cannot read {}", path.display()))?;
    let v: Value = serde_json::from_str(&text).with_context(|| format!("{} is not valid JSON", path.display()))?;
    match v.get("settings") {
        Some(s) if s["command"].is_string() => Ok(s.clone()),
        _ => bail!("{} has no settings.command: not written by `edict eval` or `edict eval-edit`", path.display()),
    }
}

/// The settings and the rows of an output folder.
pub(super) fn read<R: Row>(dir: &Path) -> Result<(Value, Vec<R>)> {
    let settings = read_settings(dir)?;
    if settings["command"] != R::COMMAND {
        bail!("{} holds results of `edict {}`, not of `edict {}`", dir.display(), settings["command"].as_str().unwrap_or("?"), R::COMMAND);
    }
    let path = dir.join(FILES[0]);
    let text = std::fs::read_to_string(&path).with_context(|| format!("cannot read {}", path.display()))?;
    let mut records = parse_csv(&text).with_context(|| path.display().to_string())?.into_iter();
    let header = records.next().unwrap_or_default().join(",");
    if header != R::CSV_HEADER {
        bail!("{}: the header is `{header}`, expected `{}`", path.display(), R::CSV_HEADER);
    }
    let rows = records
        .enumerate()
        .map(|(i, fields)| R::from_csv(&fields).with_context(|| format!("{} line {}", path.display(), i + 2)))
        .collect::<Result<_>>()?;
    Ok((settings, rows))
}

/// RFC 4180 records: fields separated by commas, quoted fields may hold commas, newlines and
/// doubled quotes.
fn parse_csv(text: &str) -> Result<Vec<Vec<String>>> {
    let (mut records, mut record, mut field) = (Vec::new(), Vec::new(), String::new());
    let mut chars = text.chars().peekable();
    let mut quoted = false;
    while let Some(c) = chars.next() {
        match (quoted, c) {
            (true, '"') if chars.peek() == Some(&'"') => {
                chars.next();
                field.push('"');
            }
            (true, '"') => quoted = false,
            (true, c) => field.push(c),
            (false, '"') if field.is_empty() => quoted = true,
            (false, ',') => record.push(std::mem::take(&mut field)),
            (false, '\n') => {
                record.push(std::mem::take(&mut field));
                records.push(std::mem::take(&mut record));
            }
            (false, c) => field.push(c),
        }
    }
    if quoted {
        bail!("a quoted field does not end");
    }
    if !field.is_empty() || !record.is_empty() {
        record.push(field);
        records.push(record);
    }
    Ok(records)
}

/// The settings that differ between `a` and `b` (except `ignore`), as `key: a vs b, …`.
pub(super) fn differences(a: &Value, b: &Value, ignore: &str) -> Option<String> {
    let (empty, null) = (serde_json::Map::new(), Value::Null);
    let (ma, mb) = (a.as_object().unwrap_or(&empty), b.as_object().unwrap_or(&empty));
    let keys: std::collections::BTreeSet<&String> = ma.keys().chain(mb.keys()).collect();
    let diffs: Vec<String> = keys
        .into_iter()
        .filter(|k| k.as_str() != ignore)
        .filter_map(|k| {
            let (x, y) = (ma.get(k).unwrap_or(&null), mb.get(k).unwrap_or(&null));
            (x != y).then(|| format!("{k}: {x} vs {y}"))
        })
        .collect();
    (!diffs.is_empty()).then(|| diffs.join(", "))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shards_parse_and_split() {
        assert_eq!("1/4".parse::<Shard>().unwrap(), Shard { index: 1, count: 4 });
        for bad in ["4/4", "1", "a/4", "0/0", "-1/4"] {
            assert!(bad.parse::<Shard>().unwrap_err().contains("numbered from 0"), "{bad}");
        }
        let args = |s: &str| ShardArgs { shard: Some(s.parse().unwrap()), resume: false };
        assert_eq!(args("1/3").select((0..8).collect()), [1, 4, 7]);
        assert_eq!(args("2/3").select((0..8).collect()), [2, 5]);
        assert_eq!(ShardArgs { shard: None, resume: false }.select(vec![5, 6]), [5, 6]);
    }

    #[test]
    fn csv_records_round_trip() {
        let text = "a,b,c\n\"x, \"\"y\"\"\",2,\n\"multi\nline\",NaN,inf";
        let r = parse_csv(text).unwrap();
        assert_eq!(r, [vec!["a", "b", "c"], vec!["x, \"y\"", "2", ""], vec!["multi\nline", "NaN", "inf"]]);
        assert_eq!(parse_csv(&format!("{}\n", quote("x, \"y\""))).unwrap()[0][0], "x, \"y\"");
        assert!(number::<f64>("NaN", "number").unwrap().is_nan() && number::<f64>("inf", "number").unwrap().is_infinite());
        assert!(parse_csv("\"open").is_err());
    }

    #[test]
    fn settings_differences_name_the_keys() {
        let a = json!({"steps": 10, "shard": "0/2", "model": "m"});
        let b = json!({"steps": 20, "shard": "1/2", "model": "m"});
        assert_eq!(differences(&a, &b, "shard").unwrap(), "steps: 10 vs 20");
        assert_eq!(differences(&a, &a, ""), None);
    }
}
