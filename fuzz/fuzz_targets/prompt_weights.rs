//! The prompt-weight syntax: any target prompt (the input, read as UTF-8 with replacement
//! characters) through `prompt_weights::parse`, and accepted ones through `piece_weights` with
//! the bundled tokenizer, as an edit does. Any `Err` is fine; a panic is a bug.
#![no_main]

use edict_pipeline::prompt_weights::{parse, piece_weights, plain_text};
use edict_sd::tokenizer::{ClipTokenizer, MAX_LEN};
use libfuzzer_sys::fuzz_target;

thread_local! {
    static TOKENIZER: ClipTokenizer = ClipTokenizer::embedded().expect("bundled vocabulary");
}

fuzz_target!(|data: &[u8]| {
    let prompt = String::from_utf8_lossy(data);
    let Ok(pieces) = parse(&prompt) else {
        return;
    };
    for (i, p) in pieces.iter().enumerate() {
        assert!(!p.text.is_empty() && p.weight.is_finite() && p.weight >= 0.0, "{p:?}");
        assert!(i == 0 || pieces[i - 1].weight != p.weight, "runs of one weight are joined");
    }
    let text = plain_text(&pieces);
    if !prompt.contains(['(', ')', '[', ']', '\\']) {
        assert_eq!(text, prompt, "a prompt without the syntax reads as written");
    }
    TOKENIZER.with(|t| {
        let ids = t.encode(&text).expect("the bundled tokenizer refused a prompt").ids;
        if let Ok(w) = piece_weights(t, &pieces, &ids) {
            assert_eq!(w.len(), MAX_LEN);
        }
    });
});
