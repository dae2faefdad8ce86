//! `edict`: real-image editing with EDICT on Stable Diffusion 1.x and 2.x — a thin shell over
//! the pipeline in `edict-pipeline`, one module per subcommand in `cmd/`.

mod cmd;
mod model_source;
mod progress;

use std::collections::BTreeSet;
use std::path::PathBuf;

use anyhow::Result;
use clap::parser::ValueSource;
use clap::error::ErrorKind;
use clap::{ArgMatches, CommandFactory, FromArgMatches, Parser, Subcommand};

use crate::cmd::{bench, edit, eval, eval_edit, eval_merge, generate, invert, reconstruct, tokenize};

#[derive(Parser)]
#[command(name = "edict", version, about = "Real-image editing with EDICT (exact diffusion inversion) on Stable Diffusion 1.x and 2.x")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Invert a photo under a source prompt, then denoise it under a target prompt.
    Edit(edit::EditArgs),
    /// Invert a photo to EDICT's noise pair and save it (edit it later with --from-latents).
    Invert(invert::InvertArgs),
    /// Invert and denoise with the same prompt; reports how exact the round trip is.
    Reconstruct(reconstruct::ReconstructArgs),
    /// Generate an image from a prompt (DDIM from seeded noise).
    Generate(generate::GenerateArgs),
    /// Reconstruct a folder of photos with each method; writes MSE, PSNR, SSIM (CSV, JSON, Markdown).
    Eval(eval::EvalArgs),
    /// Edit the images of a PIE-Bench folder with each method; writes the benchmark's background
    /// PSNR, MSE, SSIM and CLIP scores (CSV, JSON, Markdown).
    EvalEdit(eval_edit::EvalEditArgs),
    /// Join the output folders of `eval` or `eval-edit` shards (--shard I/N) into one table.
    EvalMerge(eval_merge::MergeArgs),
    /// Time the UNet, the VAE and a full edit on one backend; report peak memory.
    Bench(bench::BenchArgs),
    /// Print the 77 CLIP token ids of a prompt as a JSON array.
    Tokenize {
        text: String,
        /// A model folder whose tokenizer/ to use instead of the embedded CLIP vocabulary.
        #[arg(long)]
        model: Option<PathBuf>,
    },
}

// The CPU backend allocates a fresh buffer per operation; glibc's malloc maps large ones from
// the kernel and unmaps them on free, so every op pays page faults and page zeroing (~10% of a
// UNet call). mimalloc keeps and reuses them.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// The contract scripts rely on: success exits 0; every failure, a rejected command line
/// included, prints one line `error: …` on stderr and exits 1. `--help` and `--version` print to
/// stdout and exit 0.
fn main() {
    let parsed = Cli::command().try_get_matches().and_then(|m| Ok((Cli::from_arg_matches(&m)?, m)));
    let (cli, matches) = match parsed {
        Ok(p) => p,
        Err(e) if matches!(e.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion) => e.exit(),
        Err(e) => fail(&usage_error(&e)),
    };
    let typed = matches.subcommand().map(|(_, m)| typed(m)).unwrap_or_default();
    if let Err(e) = run(cli, &typed) {
        if std::env::var("RUST_BACKTRACE").is_ok_and(|v| !v.is_empty() && v != "0") {
            eprintln!("{}", e.backtrace());
        }
        fail(&one_line(&e));
    }
}

fn fail(message: &str) -> ! {
    eprintln!("error: {message}");
    std::process::exit(1);
}

/// clap's message on one line, with the command whose `--help` explains the arguments.
fn usage_error(e: &clap::Error) -> String {
    let cli = Cli::command();
    let sub = std::env::args().skip(1).find(|a| cli.get_subcommands().any(|c| c.get_name() == a));
    let command = sub.map_or_else(|| "edict".to_string(), |s| format!("edict {s}"));
    let first = match e.kind() {
        ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand | ErrorKind::MissingSubcommand => "a subcommand is required".to_string(),
        // the message is the rendering's first paragraph (a list of missing arguments included)
        _ => {
            let text = e.render().to_string();
            let message: Vec<&str> = text.lines().take_while(|l| !l.trim().is_empty()).map(str::trim).collect();
            message.join(" ").trim_start_matches("error: ").to_string()
        }
    };
    format!("{first} (see `{command} --help`)")
}

/// The outermost message and the root cause, on one line (library errors often repeat their
/// whole chain in each layer's message).
fn one_line(e: &anyhow::Error) -> String {
    let top = e.to_string();
    let root = e.root_cause().to_string();
    let msg = if top.contains(&root) { top } else { format!("{top}: {root}") };
    msg.replace('\n', " ")
}

/// The ids of the arguments typed on the command line, to tell a choice from a default.
fn typed(m: &ArgMatches) -> BTreeSet<String> {
    m.ids()
        .filter(|id| m.value_source(id.as_str()) == Some(ValueSource::CommandLine))
        .map(|id| id.to_string())
        .collect()
}

fn run(cli: Cli, typed: &BTreeSet<String>) -> Result<()> {
    match cli.cmd {
        Cmd::Tokenize { text, model } => tokenize::tokenize(&text, model.as_deref()),
        Cmd::Edit(a) => edit::edit(a, typed),
        Cmd::Invert(a) => invert::invert(a),
        Cmd::Reconstruct(a) => reconstruct::reconstruct(a),
        Cmd::Generate(a) => generate::generate(a),
        Cmd::Eval(a) => eval::eval(a),
        Cmd::EvalEdit(a) => eval_edit::eval_edit(a),
        Cmd::EvalMerge(a) => eval_merge::eval_merge(a),
        Cmd::Bench(a) => bench::bench(a),
    }
}

