//! The CLIP byte-pair-encoding tokenizer of Stable Diffusion 1.x and 2.x.
//!
//! The ids are those of transformers 4's Python ("slow") `CLIPTokenizer` with `ftfy` installed,
//! which is what SD pipelines (diffusers) used:
//!
//! 1. the prompt is split on the literal special tokens `<|startoftext|>` / `<|endoftext|>`
//!    (case-sensitive), which become their ids;
//! 2. every other piece is cleaned as the slow tokenizer does, `whitespace_clean(ftfy.fix_text(piece))
//!    .lower()`: HTML entities decoded (unless the line holds a `<`), C1 controls read as
//!    windows-1252, Latin ligatures and full-/half-width forms expanded, curly quotes made
//!    straight, line breaks unified, terminal escapes and control characters removed, NFC,
//!    whitespace runs collapsed, Unicode lowercase (with a word-final `σ` → `ς`);
//! 3. the cleaned text goes through the pipeline of HF's `CLIPTokenizerFast` (`tokenizers` crate):
//!    NFC, whitespace runs to one space, lowercase (no-ops by then); CLIP's split regex (the special
//!    tokens again, so `<|ENDOFTEXT|>` is the special token too, the English contractions `'s 't 're
//!    've 'm 'll 'd`, runs of letters, single digits, runs of other non-space characters;
//!    whitespace dropped); GPT-2's byte-to-unicode mapping; BPE with the end-of-word suffix `</w>`
//!    and unknown token `<|endoftext|>`.
//!
//! Not reproduced: ftfy's mojibake repair (`fix_encoding`, e.g. `cafÃ©` → `café`); such text is
//! tokenized as written, as the fast tokenizer does.
//!
//! [`ClipTokenizer::encode`] then gives exactly [`MAX_LEN`] ids, as SD feeds them to the text
//! encoder: `BOS`, at most 75 prompt tokens, `EOS`, padded with the folder's pad token (`EOS` in
//! SD 1.x, `!` in SD 2.x).
//!
//! The vocabulary is compiled in: [`ClipTokenizer::embedded`] derives the 49 408 tokens and 48 894
//! merges from OpenAI's `bpe_simple_vocab_16e6.txt.gz` (see `assets/PROVENANCE.md`) the same way
//! transformers' `vocab.json` and `merges.txt` were derived from it. A model folder's own
//! `tokenizer/vocab.json` and `merges.txt` can be used instead.

use std::collections::HashMap;
use std::io::Read;

use tokenizers::models::bpe::{BPE, Vocab};
use tokenizers::normalizers::replace::ReplacePattern;
use tokenizers::normalizers::{Lowercase, NFC, Replace, Sequence as NormalizerSequence};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::sequence::Sequence as PreTokenizerSequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::{
    AddedToken, NormalizerWrapper, PreTokenizerWrapper, SplitDelimiterBehavior, Tokenizer,
};

use crate::{Result, SdError};

mod ftfy;
use ftfy::TextCleaner;

/// Number of ids SD's text encoders take: `BOS`, up to 75 prompt tokens, `EOS`, padding.
pub const MAX_LEN: usize = 77;
/// Id of `<|startoftext|>` in the CLIP vocabulary.
pub const BOS: u32 = 49406;
/// Id of `<|endoftext|>` in the CLIP vocabulary; also the padding id of SD v1.x.
pub const EOS: u32 = 49407;

const BOS_TOKEN: &str = "<|startoftext|>";
const EOS_TOKEN: &str = "<|endoftext|>";
const END_OF_WORD: &str = "</w>";
/// CLIP's pre-tokenization regex, as in transformers' `CLIPTokenizer`.
const SPLIT_REGEX: &str =
    r"<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+";
/// Merges CLIP uses out of the file: `lines[1 .. 49152 - 256 - 2 + 1]`.
const CLIP_MERGES: usize = 49152 - 256 - 2;

/// `bpe_simple_vocab_16e6.txt.gz` from OpenCLIP / OpenAI CLIP (MIT), see `assets/PROVENANCE.md`.
static EMBEDDED_BPE_GZ: &[u8] = include_bytes!("../../assets/bpe_simple_vocab_16e6.txt.gz");

/// A tokenized prompt, ready for the text encoder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tokens {
    /// Always [`MAX_LEN`] ids: `BOS`, the prompt's tokens, `EOS`, then the pad token.
    pub ids: Vec<u32>,
    /// Whether the prompt had more than `MAX_LEN - 2` tokens and was cut.
    pub truncated: bool,
    /// The part of the prompt that was cut off, from the first dropped token to the end, as the
    /// tokenizer saw it (cleaned up and lowercased), for a warning; empty when nothing was cut.
    pub dropped: String,
}

/// CLIP's BPE tokenizer (SD 1.x; 2.x pads with another token, [`ClipTokenizer::with_pad`]), see
/// the [module documentation](self).
#[derive(Debug, Clone)]
pub struct ClipTokenizer {
    inner: Tokenizer,
    cleaner: TextCleaner,
    bos: u32,
    eos: u32,
    pad: u32,
}

impl ClipTokenizer {
    /// The bundled CLIP vocabulary (the one of `openai/clip-vit-large-patch14`, which every SD 1.x
    /// and 2.x model uses).
    pub fn embedded() -> Result<Self> {
        let mut text = String::new();
        flate2::read::GzDecoder::new(EMBEDDED_BPE_GZ)
            .read_to_string(&mut text)
            .map_err(|e| {
                SdError::Tokenizer(format!("cannot decompress the bundled vocabulary: {e}"))
            })?;
        let lines: Vec<&str> = text.split('\n').collect();
        let merge_lines = lines
            .get(1..=CLIP_MERGES)
            .ok_or_else(|| SdError::Tokenizer("the bundled vocabulary is too short".into()))?;
        let merges = parse_merges(merge_lines.iter().copied())?;

        // transformers' vocab.json: the 256 byte symbols in GPT-2 order, the same with `</w>`, every
        // merge's result, then the two special tokens.
        let symbols = byte_symbols_in_vocab_order();
        let mut tokens: Vec<String> = Vec::with_capacity(2 * 256 + merges.len() + 2);
        tokens.extend(symbols.iter().map(|c| c.to_string()));
        tokens.extend(symbols.iter().map(|c| format!("{c}{END_OF_WORD}")));
        tokens.extend(merges.iter().map(|(a, b)| format!("{a}{b}")));
        tokens.push(BOS_TOKEN.to_string());
        tokens.push(EOS_TOKEN.to_string());
        let vocab: Vocab = tokens.into_iter().zip(0u32..).collect();
        Self::build(vocab, merges)
    }

    /// The tokenizer of a model folder, from the contents of its `tokenizer/vocab.json` and
    /// `tokenizer/merges.txt` (bytes, so that this works without a file system too).
    pub fn from_vocab_merges(vocab_json: &[u8], merges_txt: &[u8]) -> Result<Self> {
        let vocab: Vocab = serde_json::from_slice::<HashMap<String, u32>>(vocab_json)
            .map_err(|e| SdError::Tokenizer(format!("vocab.json: {e}")))?
            .into_iter()
            .collect();
        let merges_txt = std::str::from_utf8(merges_txt)
            .map_err(|e| SdError::Tokenizer(format!("merges.txt is not UTF-8: {e}")))?;
        // As `tokenizers` reads merges.txt: an optional `#version` header, then one pair a line.
        let merges = parse_merges(
            merges_txt
                .lines()
                .filter(|l| !l.starts_with("#version") && !l.trim().is_empty()),
        )?;
        Self::build(vocab, merges)
    }

    /// The tokenizer of a diffusers model's `tokenizer/` folder, its files read through `read`
    /// (a file name in that folder; `None` when absent): `vocab.json`, `merges.txt` and the pad
    /// token of `special_tokens_map.json` or `tokenizer_config.json` (SD 2.x pads with `!`).
    /// `None` when the folder has no vocabulary.
    pub fn from_folder_files(read: impl Fn(&str) -> Result<Option<Vec<u8>>>) -> Result<Option<Self>> {
        let (Some(vocab), Some(merges)) = (read("vocab.json")?, read("merges.txt")?) else {
            return Ok(None);
        };
        let tok = Self::from_vocab_merges(&vocab, &merges)?;
        for name in ["special_tokens_map.json", "tokenizer_config.json"] {
            if let Some(pad) = read(name)?.map(|b| pad_token(&b, name)).transpose()?.flatten() {
                return tok.with_pad(&pad).map(Some).map_err(|e| SdError::Tokenizer(format!("{name}: {e}")));
            }
        }
        Ok(Some(tok))
    }

    /// The same tokenizer padding with `token` (SD 2.x: `!`).
    pub fn with_pad(mut self, token: &str) -> Result<Self> {
        self.pad = self
            .inner
            .token_to_id(token)
            .ok_or_else(|| SdError::Tokenizer(format!("the pad token `{token}` is not in the vocabulary")))?;
        Ok(self)
    }

    /// The tokenizer in `dir` (a diffusers model's `tokenizer/` folder), see
    /// [`Self::from_folder_files`]; its vocabulary is required.
    #[cfg(not(target_arch = "wasm32"))]
    pub fn from_folder(dir: &std::path::Path) -> Result<Self> {
        Self::from_folder_files(|name| crate::checkpoint::weights::read_optional(&dir.join(name)))?.ok_or_else(|| SdError::Io {
            path: dir.to_path_buf(),
            source: std::io::Error::new(std::io::ErrorKind::NotFound, "no vocab.json and merges.txt here"),
        })
    }

    /// The id the prompt is padded with after `EOS`: `EOS` itself unless the folder names
    /// another pad token.
    pub fn pad_id(&self) -> u32 {
        self.pad
    }

    /// Tokenizes `text` into exactly [`MAX_LEN`] ids: `BOS`, the tokens, `EOS`, padding. A
    /// prompt of more than `MAX_LEN - 2` tokens is cut, keeping `EOS` last; [`Tokens::truncated`]
    /// and [`Tokens::dropped`] tell.
    pub fn encode(&self, text: &str) -> Result<Tokens> {
        // The slow tokenizer cleans the text between special-token literals piece by piece; the
        // pieces are joined with spaces so that no word runs across a literal.
        let mut pieces = Vec::new();
        let mut rest = text;
        while let Some((at, literal)) = next_special_literal(rest) {
            pieces.push(self.cleaner.clean(&rest[..at]));
            pieces.push(literal.to_string());
            rest = &rest[at + literal.len()..];
        }
        pieces.push(self.cleaner.clean(rest));
        pieces.retain(|p| !p.is_empty());
        let text = pieces.join(" ");

        let encoding = self
            .inner
            .encode(text.as_str(), false)
            .map_err(|e| SdError::Tokenizer(e.to_string()))?;
        let content = encoding.get_ids();
        let room = MAX_LEN - 2;
        let truncated = content.len() > room;
        let dropped = if truncated {
            let start = encoding.get_offsets().get(room).map_or(text.len(), |o| o.0);
            tail_from(&text, start).trim().to_string()
        } else {
            String::new()
        };
        let mut ids = Vec::with_capacity(MAX_LEN);
        ids.push(self.bos);
        ids.extend_from_slice(&content[..content.len().min(room)]);
        ids.push(self.eos);
        ids.resize(MAX_LEN, self.pad);
        Ok(Tokens {
            ids,
            truncated,
            dropped,
        })
    }

    fn build(vocab: Vocab, merges: Vec<(String, String)>) -> Result<Self> {
        let err =
            |what: &str, e: &dyn std::fmt::Display| SdError::Tokenizer(format!("{what}: {e}"));
        let id = |token: &str| {
            vocab
                .get(token)
                .copied()
                .ok_or_else(|| SdError::Tokenizer(format!("vocab.json has no `{token}`")))
        };
        let (bos, eos) = (id(BOS_TOKEN)?, id(EOS_TOKEN)?);
        let model = BPE::builder()
            .vocab_and_merges(vocab, merges)
            .continuing_subword_prefix(String::new())
            .end_of_word_suffix(END_OF_WORD.to_string())
            .unk_token(EOS_TOKEN.to_string())
            .fuse_unk(false)
            .build()
            .map_err(|e| err("BPE", &e))?;

        let normalizer = NormalizerSequence::new(vec![
            NormalizerWrapper::NFC(NFC),
            NormalizerWrapper::Replace(
                Replace::new(ReplacePattern::Regex(r"\s+".into()), " ")
                    .map_err(|e| err("normalizer", &e))?,
            ),
            NormalizerWrapper::Lowercase(Lowercase),
        ]);
        let split = Split::new(
            SplitPattern::Regex(SPLIT_REGEX.into()),
            SplitDelimiterBehavior::Removed,
            true,
        )
        .map_err(|e| err("pre-tokenizer", &e))?;
        // `use_regex: true` as transformers builds it; it changes nothing after CLIP's split.
        let pre_tokenizer = PreTokenizerSequence::new(vec![
            PreTokenizerWrapper::Split(split),
            PreTokenizerWrapper::ByteLevel(ByteLevel::new(false, true, true)),
        ]);

        let mut inner = Tokenizer::new(model);
        inner
            .with_normalizer(Some(normalizer))
            .with_pre_tokenizer(Some(pre_tokenizer));
        // `normalized`: matched after lowercasing, so `<|EndOfText|>` is the special token too,
        // as in the original Python CLIPTokenizer (whose BPE cache maps both strings to themselves).
        inner.add_special_tokens(&[
            AddedToken::from(BOS_TOKEN, true).normalized(true),
            AddedToken::from(EOS_TOKEN, true).normalized(true),
        ]);
        Ok(Self {
            inner,
            cleaner: TextCleaner::new()?,
            bos,
            eos,
            pad: eos,
        })
    }
}

/// The `pad_token` of a transformers tokenizer file: a string, or an object with `content`.
fn pad_token(json: &[u8], name: &str) -> Result<Option<String>> {
    let v: serde_json::Value =
        serde_json::from_slice(json).map_err(|e| SdError::Tokenizer(format!("{name}: {e}")))?;
    Ok(match &v["pad_token"] {
        serde_json::Value::String(s) => Some(s.clone()),
        serde_json::Value::Object(o) => o.get("content").and_then(|c| c.as_str()).map(str::to_string),
        _ => None,
    })
}

/// The first `<|startoftext|>` or `<|endoftext|>` in `text`: its byte offset and the literal.
fn next_special_literal(text: &str) -> Option<(usize, &'static str)> {
    [BOS_TOKEN, EOS_TOKEN]
        .into_iter()
        .filter_map(|literal| text.find(literal).map(|at| (at, literal)))
        .min()
}

/// Splits merge lines `a b` into pairs.
fn parse_merges<'a>(lines: impl Iterator<Item = &'a str>) -> Result<Vec<(String, String)>> {
    lines
        .enumerate()
        .map(|(i, line)| {
            let mut parts = line.split_whitespace();
            match (parts.next(), parts.next(), parts.next()) {
                (Some(a), Some(b), None) => Ok((a.to_string(), b.to_string())),
                _ => Err(SdError::Tokenizer(format!(
                    "merge {} is not a pair of tokens: {line:?}",
                    i + 1
                ))),
            }
        })
        .collect()
}

/// GPT-2's `bytes_to_unicode()` values in its insertion order: the printable bytes `!`..=`~`,
/// `¡`..=`¬`, `®`..=`ÿ` as themselves, then the remaining bytes in order as U+0100, U+0101, ….
fn byte_symbols_in_vocab_order() -> Vec<char> {
    let printable = |b: u32| {
        (0x21..=0x7e).contains(&b) || (0xa1..=0xac).contains(&b) || (0xae..=0xff).contains(&b)
    };
    let mut symbols: Vec<char> = (0u32..256)
        .filter(|&b| printable(b))
        .filter_map(char::from_u32)
        .collect();
    symbols.extend(
        (0u32..256)
            .filter(|&b| !printable(b))
            .zip(0u32..)
            .filter_map(|(_, n)| char::from_u32(256 + n)),
    );
    symbols
}

/// `text[start..]`, moving `start` back to a character boundary if it is inside one.
fn tail_from(text: &str, start: usize) -> &str {
    let mut start = start.min(text.len());
    while !text.is_char_boundary(start) {
        start -= 1;
    }
    &text[start..]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_symbols() {
        let s = byte_symbols_in_vocab_order();
        assert_eq!(s.len(), 256);
        assert_eq!(s[0], '!');
        assert_eq!(s[187], 'ÿ');
        assert_eq!(s[188], '\u{100}');
        assert_eq!(s[255], '\u{143}');
        let unique: std::collections::HashSet<_> = s.iter().collect();
        assert_eq!(unique.len(), 256);
    }

    #[test]
    fn tail_on_char_boundary() {
        assert_eq!(tail_from("aé", 2), "é");
        assert_eq!(tail_from("aé", 99), "");
    }
}
