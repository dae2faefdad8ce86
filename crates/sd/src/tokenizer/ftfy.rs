//! The slow CLIP tokenizer's text clean-up: a port of the parts of ftfy 6.3.1's `fix_text` that
//! transformers' `CLIPTokenizer` applies (see the module above for the whole rule).

use std::collections::HashMap;
use std::io::Read;

use tokenizers::NormalizedString;

use crate::{Result, SdError};

/// ftfy 6.3.1's HTML entity and character width tables, see `assets/gen_ftfy_tables.py`.
static FTFY_TABLES_GZ: &[u8] = include_bytes!("../../assets/ftfy_tables.txt.gz");

/// The slow `CLIPTokenizer`'s text clean-up, `whitespace_clean(ftfy.fix_text(text)).lower()` with
/// ftfy 6.3.1's default settings, less the mojibake repair (`fix_encoding`).
#[derive(Debug, Clone)]
pub(super) struct TextCleaner {
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
    pub(super) fn new() -> Result<Self> {
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
    pub(super) fn clean(&self, text: &str) -> String {
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
