//! The browser face of the pipeline (wasm-bindgen). The full WebGPU editor lands with the
//! browser issue; for now the page can tokenize prompts with the same tokenizer as the CLI.

use wasm_bindgen::prelude::*;

/// The 77 CLIP token ids of `text`, as `edict tokenize` prints them.
#[wasm_bindgen]
pub fn tokenize(text: &str) -> Result<Vec<u32>, JsError> {
    let tok = edict_sd::tokenizer::ClipTokenizer::embedded().map_err(|e| JsError::new(&e.to_string()))?;
    Ok(tok.encode(text).map_err(|e| JsError::new(&e.to_string()))?.ids)
}
