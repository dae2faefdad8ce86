//! `edict eval-merge`: the output folders of `eval` or `eval-edit` shards (`--shard I/N`, see
//! [`super::results`]) joined into the one table the run without `--shard` writes.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use clap::Args;
use serde_json::Value;

use super::results::{FILES, Row, Shard, differences, read, read_settings, write_results};
use super::{check_output, eval, eval_edit};

#[derive(Args)]
pub struct MergeArgs {
    /// The shards' output folders (each with results.csv and results.json).
    #[arg(required = true)]
    dirs: Vec<PathBuf>,
    /// Folder (created if missing) for the joined results.csv, results.json and results.md.
    #[arg(long)]
    out: PathBuf,
    /// Overwrite existing result files.
    #[arg(long)]
    force: bool,
}

/// `edict eval-merge`: the shards of one `eval` or `eval-edit` run as one table, as the run
/// without `--shard` writes it.
pub fn eval_merge(a: MergeArgs) -> Result<()> {
    let first = read_settings(&a.dirs[0])?;
    match first["command"].as_str() {
        Some(eval::EvalRow::COMMAND) => merge::<eval::EvalRow>(&a),
        Some(eval_edit::EditRow::COMMAND) => merge::<eval_edit::EditRow>(&a),
        other => bail!("{}: results of `{}`, which eval-merge does not know (eval, eval-edit)", a.dirs[0].display(), other.unwrap_or("?")),
    }
}

fn merge<R: Row>(a: &MergeArgs) -> Result<()> {
    let parts: Vec<(&PathBuf, Value, Vec<R>)> = a.dirs.iter().map(|d| read::<R>(d).map(|(s, r)| (d, s, r))).collect::<Result<_>>()?;
    let (dir0, settings0) = (parts[0].0, &parts[0].1);
    for (dir, settings, _) in &parts[1..] {
        if let Some(diff) = differences(settings0, settings, "shard") {
            bail!("{} and {} were run with different settings ({diff})", dir0.display(), dir.display());
        }
    }
    let shard = |dir: &Path, s: &Value| -> Result<Shard> {
        let text = s["shard"].as_str().with_context(|| format!("{} is not a shard (run without --shard): nothing to merge", dir.display()))?;
        text.parse::<Shard>().map_err(|e| anyhow::anyhow!("{}: shard {e}", dir.display()))
    };
    let n = shard(dir0, settings0)?.count;
    let total = settings0["count"].as_u64().with_context(|| format!("{}: settings.count is missing", dir0.display()))? as usize;
    let mut seen: Vec<Option<&PathBuf>> = vec![None; n];
    let mut owner: HashMap<&str, &PathBuf> = HashMap::new();
    for (dir, settings, rows) in &parts {
        let s = shard(dir, settings)?;
        if s.count != n {
            bail!("{} is shard {s}, {} is one of {n}: shards of different splits", dir.display(), dir0.display());
        }
        if let Some(prev) = seen[s.index].replace(*dir) {
            bail!("{} and {} are both shard {s}", prev.display(), dir.display());
        }
        let mut items = 0;
        for r in rows {
            match owner.insert(r.item(), *dir) {
                Some(other) if other != *dir => bail!("{} is in both {} and {}", r.item(), other.display(), dir.display()),
                Some(_) => {}
                None => items += 1,
            }
        }
        let expected = total.saturating_sub(s.index).div_ceil(n);
        if items != expected {
            bail!("{} (shard {s}) holds {items} of its {expected} items: finish it with --resume", dir.display());
        }
    }
    let missing: Vec<String> = (0..n).filter(|&i| seen[i].is_none()).map(|i| format!("{i}/{n}")).collect();
    if !missing.is_empty() {
        bail!("shard{} {} missing", if missing.len() > 1 { "s" } else { "" }, missing.join(", "));
    }
    let mut settings = settings0.clone();
    settings["shard"] = Value::Null;
    // the unsharded run's order: items sorted, each item's rows as they were written
    let mut by_item: BTreeMap<String, Vec<R>> = BTreeMap::new();
    for (_, _, rows) in parts {
        for r in rows {
            by_item.entry(r.item().to_string()).or_default().push(r);
        }
    }
    let rows: Vec<R> = by_item.into_values().flatten().collect();
    std::fs::create_dir_all(&a.out).with_context(|| format!("cannot create {}", a.out.display()))?;
    for f in FILES {
        check_output(&a.out.join(f), a.force)?;
    }
    write_results(&a.out, &settings, &rows)?;
    eprintln!("{}\nmerged {n} shards, {total} items: wrote {}", R::markdown(&settings, &rows), a.out.join("results.{csv,json,md}").display());
    Ok(())
}
