//! `edict tokenize`: the 77 CLIP token ids of a prompt.

use std::path::Path;

use anyhow::Result;
use edict_sd::tokenizer::ClipTokenizer;

/// Prints the ids as a JSON array; warns when the prompt was cut.
pub fn tokenize(text: &str, model: Option<&Path>) -> Result<()> {
    let tok = match model {
        Some(dir) => ClipTokenizer::from_folder(&dir.join("tokenizer"))?,
        None => ClipTokenizer::embedded()?,
    };
    let t = tok.encode(text)?;
    if t.truncated {
        eprintln!("warning: prompt is longer than 77 tokens; dropped: \"{}\"", t.dropped.trim());
    }
    println!("{}", serde_json::to_string(&t.ids)?);
    Ok(())
}

