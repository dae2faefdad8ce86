//! The CLIP byte-pair-encoding tokenizer of Stable Diffusion v1.x.
//!
//! The ids are those of transformers 4's Python ("slow") `CLIPTokenizer` with `ftfy` installed,
//! which is what SD v1.x pipelines (diffusers) used:
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
    AddedToken, NormalizedString, NormalizerWrapper, PreTokenizerWrapper, SplitDelimiterBehavior,
    Tokenizer,
};

use crate::{Result, SdError};

/// Number of ids the SD v1.x text encoder takes: `BOS`, up to 75 prompt tokens, `EOS`, padding.
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
static EMBEDDED_BPE_GZ: &[u8] = include_bytes!("../assets/bpe_simple_vocab_16e6.txt.gz");
/// ftfy 6.3.1's HTML entity and character width tables, see `assets/gen_ftfy_tables.py`.
static FTFY_TABLES_GZ: &[u8] = include_bytes!("../assets/ftfy_tables.txt.gz");

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

/// CLIP's BPE tokenizer (SD v1.x), see the [module documentation](self).
#[derive(Debug, Clone)]
pub struct ClipTokenizer {
    inner: Tokenizer,
    cleaner: TextCleaner,
    bos: u32,
    eos: u32,
    pad: u32,
}

impl ClipTokenizer {
    /// The bundled CLIP vocabulary (the one of `openai/clip-vit-large-patch14`, which every SD v1.x
    /// model uses).
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
        Self::from_folder_files(|name| crate::weights::read_optional(&dir.join(name)))?.ok_or_else(|| SdError::Io {
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

/// The slow `CLIPTokenizer`'s text clean-up, `whitespace_clean(ftfy.fix_text(text)).lower()` with
/// ftfy 6.3.1's default settings, less the mojibake repair (`fix_encoding`).
#[derive(Debug, Clone)]
struct TextCleaner {
    /// `&name;` → text (`ftfy.chardata.HTML_ENTITIES`).
    entities: HashMap<String, String>,
    /// Full- and half-width forms → normal width (`ftfy.chardata.WIDTH_MAP`).
    width: HashMap<char, String>,
    /// `ftfy.chardata.HTML_ENTITY_RE`.
    entity_re: regex::Regex,
    /// `ftfy.fixes.ANSI_RE`.
    ansi_re: regex::Regex,
    /// Python's `\s+` (the characters where the two differ are removed as controls before).
    spaces_re: regex::Regex,
}

impl TextCleaner {
    fn new() -> Result<Self> {
        let bad = |what: &str| SdError::Tokenizer(format!("the bundled ftfy tables: {what}"));
        let mut text = String::new();
        flate2::read::GzDecoder::new(FTFY_TABLES_GZ)
            .read_to_string(&mut text)
            .map_err(|e| bad(&e.to_string()))?;
        let code_points = |s: &str| -> Result<String> {
            s.split(' ')
                .map(|h| {
                    u32::from_str_radix(h, 16)
                        .ok()
                        .and_then(char::from_u32)
                        .ok_or_else(|| bad(h))
                })
                .collect()
        };
        let (mut entities, mut width) = (HashMap::new(), HashMap::new());
        for line in text.lines() {
            let (key, value) = line.split_once('\t').ok_or_else(|| bad(line))?;
            match key.split_once(' ') {
                Some(("E", name)) => {
                    entities.insert(name.to_string(), code_points(value)?);
                }
                Some(("W", cp)) => {
                    let c = code_points(cp)?.chars().next().ok_or_else(|| bad(line))?;
                    width.insert(c, code_points(value)?);
                }
                _ => return Err(bad(line)),
            }
        }
        let re = |pattern: &str| regex::Regex::new(pattern).map_err(|e| bad(&e.to_string()));
        Ok(Self {
            entities,
            width,
            entity_re: re(r"&#?[0-9A-Za-z]{1,24};")?,
            ansi_re: re(r"\x1b\[((?:\d|;)*)([a-zA-Z])")?,
            spaces_re: re(r"\s+")?,
        })
    }

    /// `whitespace_clean(ftfy.fix_text(text)).lower()`.
    fn clean(&self, text: &str) -> String {
        let fixed = self.fix_text(text);
        self.spaces_re
            .replace_all(&fixed, " ")
            .trim()
            .to_lowercase()
    }

    /// `ftfy.fix_text`: line by line; once a line holds a `<`, HTML is no longer unescaped.
    fn fix_text(&self, text: &str) -> String {
        let mut unescape_html = true;
        let mut out = String::with_capacity(text.len());
        for line in text.split_inclusive('\n') {
            unescape_html &= !line.contains('<');
            out.push_str(&self.fix_segment(line, unescape_html));
        }
        out
    }

    /// `ftfy.fix_and_explain` on one line: the fixers in ftfy's order until nothing changes.
    fn fix_segment(&self, segment: &str, unescape_html: bool) -> String {
        let mut text = segment.to_string();
        loop {
            let before = text.clone();
            if unescape_html {
                text = self.unescape_html(&text);
            }
            // (fix_encoding: not reproduced.)
            text = text.chars().map(c1_as_windows_1252).collect();
            text = text
                .chars()
                .fold(String::with_capacity(text.len()), |mut s, c| {
                    match latin_ligature(c) {
                        Some(expanded) => s.push_str(expanded),
                        None => match self.width.get(&c) {
                            Some(normal) => s.push_str(normal),
                            None => s.push(c),
                        },
                    }
                    s
                });
            text = text
                .chars()
                .map(|c| match c {
                    '\u{2bc}' | '\u{2018}'..='\u{201b}' => '\'',
                    '\u{201c}'..='\u{201f}' => '"',
                    c => c,
                })
                .collect();
            text = text
                .replace("\r\n", "\n")
                .replace(['\r', '\u{2028}', '\u{2029}', '\u{85}'], "\n");
            text = self.ansi_re.replace_all(&text, "").into_owned();
            text.retain(|c| !is_ftfy_control(c));
            let mut normalized = NormalizedString::from(text.as_str());
            normalized.nfc();
            text = normalized.get().to_string();
            if text == before {
                return text;
            }
        }
    }

    /// `ftfy.fixes.unescape_html`.
    fn unescape_html(&self, text: &str) -> String {
        self.entity_re
            .replace_all(text, |m: &regex::Captures| {
                let entity = &m[0];
                if let Some(text) = self.entities.get(entity) {
                    text.clone()
                } else if let Some(number) = entity.strip_prefix("&#") {
                    // ftfy keeps the entity when the result holds a `;` (`&#59;` included).
                    numeric_char_ref(&number[..number.len() - 1])
                        .filter(|text| !text.contains(';'))
                        .unwrap_or_else(|| entity.to_string())
                } else {
                    entity.to_string()
                }
            })
            .into_owned()
    }
}

/// What python's `html.unescape` makes of `&#<digits>;` / `&#x<hex>;` (`digits` without `&#` and
/// `;`), or `None` where it leaves the text as it is.
fn numeric_char_ref(digits: &str) -> Option<String> {
    let (radix, digits) = match digits.strip_prefix(['x', 'X']) {
        Some(hex) => (16, hex),
        None => (10, digits),
    };
    if digits.is_empty() || !digits.chars().all(|c| c.is_digit(radix)) {
        return None;
    }
    // At most 23 digits: no overflow in u128.
    let n = u128::from_str_radix(digits, radix).ok()?;
    let n = u32::try_from(n).unwrap_or(u32::MAX);
    Some(match n {
        0 => "\u{fffd}".to_string(),
        0x0d => "\r".to_string(),
        0x80..=0x9f => c1_as_windows_1252(char::from_u32(n)?).to_string(),
        0xd800..=0xdfff | 0x110000.. => "\u{fffd}".to_string(),
        0x01..=0x08 | 0x0b | 0x0e..=0x1f | 0x7f | 0xfdd0..=0xfdef => String::new(),
        n if n & 0xfffe == 0xfffe => String::new(),
        n => char::from_u32(n)?.to_string(),
    })
}

/// A C1 control character read as the windows-1252 byte it would be (`ftfy.fixes.fix_c1_controls`,
/// "sloppy" windows-1252: the five undefined bytes stay as they are).
fn c1_as_windows_1252(c: char) -> char {
    const HIGH: [char; 32] = [
        '€', '\u{81}', '‚', 'ƒ', '„', '…', '†', '‡', 'ˆ', '‰', 'Š', '‹', 'Œ', '\u{8d}', 'Ž',
        '\u{8f}', '\u{90}', '‘', '’', '“', '”', '•', '–', '—', '˜', '™', 'š', '›', 'œ', '\u{9d}',
        'ž', 'Ÿ',
    ];
    match c {
        '\u{80}'..='\u{9f}' => HIGH[c as usize - 0x80],
        c => c,
    }
}

/// `ftfy.chardata.LIGATURES`.
fn latin_ligature(c: char) -> Option<&'static str> {
    Some(match c {
        'Ĳ' => "IJ",
        'ĳ' => "ij",
        'ŉ' => "\u{2bc}n",
        'Ǳ' => "DZ",
        'ǲ' => "Dz",
        'ǳ' => "dz",
        'Ǆ' => "DŽ",
        'ǅ' => "Dž",
        'ǆ' => "dž",
        'Ǉ' => "LJ",
        'ǈ' => "Lj",
        'ǉ' => "lj",
        'Ǌ' => "NJ",
        'ǋ' => "Nj",
        'ǌ' => "nj",
        'ﬀ' => "ff",
        'ﬁ' => "fi",
        'ﬂ' => "fl",
        'ﬃ' => "ffi",
        'ﬄ' => "ffl",
        'ﬅ' => "ſt",
        'ﬆ' => "st",
        _ => return None,
    })
}

/// `ftfy.chardata.CONTROL_CHARS`: the characters `remove_control_chars` deletes.
fn is_ftfy_control(c: char) -> bool {
    matches!(
        c,
        '\u{0}'..='\u{8}'
            | '\u{b}'
            | '\u{e}'..='\u{1f}'
            | '\u{7f}'
            | '\u{206a}'..='\u{206f}'
            | '\u{feff}'
            | '\u{fff9}'..='\u{fffc}'
    )
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
    fn numeric_entities_as_python_html_unescape() {
        let r = |s: &str| numeric_char_ref(s);
        assert_eq!(r("39").as_deref(), Some("'"));
        assert_eq!(r("x27").as_deref(), Some("'"));
        assert_eq!(r("X1F431").as_deref(), Some("\u{1f431}"));
        assert_eq!(r("0").as_deref(), Some("\u{fffd}"));
        assert_eq!(r("150").as_deref(), Some("\u{2013}"));
        assert_eq!(r("7").as_deref(), Some(""));
        assert_eq!(r("65535").as_deref(), Some(""));
        assert_eq!(r("55296").as_deref(), Some("\u{fffd}"));
        assert_eq!(r("99999999999999999999999").as_deref(), Some("\u{fffd}"));
        assert_eq!(r("12a"), None);
        assert_eq!(r("x"), None);
    }

    #[test]
    fn cleanup_as_slow_tokenizer() {
        let c = TextCleaner::new().unwrap();
        assert_eq!(
            c.clean("  Don\u{2019}t\r\n\u{201c}STOP\u{201d}  "),
            "don't \"stop\""
        );
        assert_eq!(c.clean("&lt;3 &#59; &semi; &NTILDE;"), "<3 &#59; ; ñ");
        assert_eq!(c.clean("a<b &amp;\nc &amp;"), "a<b &amp; c &amp;");
        assert_eq!(c.clean("\u{85}x \u{132}"), "\u{2026}x ij");
        assert_eq!(c.clean("ΣΊΣΥΦΟΣ"), "σίσυφος");
    }

    #[test]
    fn tail_on_char_boundary() {
        assert_eq!(tail_from("aé", 2), "é");
        assert_eq!(tail_from("aé", 99), "");
    }
}
