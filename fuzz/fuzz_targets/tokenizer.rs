//! The CLIP tokenizer: any prompt (the input, read as UTF-8 with replacement characters)
//! through the bundled vocabulary; and, when the input holds NUL bytes, a model folder's own
//! `vocab.json` NUL `merges.txt` NUL prompt. Any `Err` is fine; a panic is a bug.
#![no_main]

use edict_sd::tokenizer::{BOS, ClipTokenizer, EOS, MAX_LEN};
use libfuzzer_sys::fuzz_target;

thread_local! {
    static EMBEDDED: ClipTokenizer = ClipTokenizer::embedded().expect("bundled vocabulary");
}

fuzz_target!(|data: &[u8]| {
    let prompt = String::from_utf8_lossy(data);
    EMBEDDED.with(|t| {
        let tokens = t.encode(&prompt).expect("the bundled tokenizer refused a prompt");
        assert_eq!(tokens.ids.len(), MAX_LEN);
        assert_eq!(tokens.ids[0], BOS);
        assert_eq!(tokens.ids[MAX_LEN - 1], EOS);
        if !tokens.truncated {
            assert!(tokens.dropped.is_empty());
        }
    });

    let mut parts = data.splitn(3, |&b| b == 0);
    let (Some(vocab), Some(merges)) = (parts.next(), parts.next()) else {
        return;
    };
    let prompt = String::from_utf8_lossy(parts.next().unwrap_or(b"a photo of a cat"));
    if let Ok(t) = ClipTokenizer::from_vocab_merges(vocab, merges) {
        if let Ok(tokens) = t.encode(&prompt) {
            assert_eq!(tokens.ids.len(), MAX_LEN);
        }
    }
});
