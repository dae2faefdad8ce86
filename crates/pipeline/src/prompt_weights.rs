//! Prompt weights in the syntax of AUTOMATIC1111's web UI (`parse_prompt_attention`), for target
//! prompts: `(text)` multiplies its words' weight by 1.1, `((text))` by 1.1², `[text]` divides by
//! 1.1, `(text:1.3)` multiplies by 1.3, `\(`, `\)`, `\[`, `\]`, `\\` are the literal characters.
//! Nesting multiplies. Unlike the web UI, unbalanced brackets and malformed weights are errors
//! rather than read some other way. The weights become per-token cross-attention weights, the
//! same ones `--reweight` sets ([`crate::prompt_edit::token_weights`]).

use edict_sd::tokenizer::{BOS, ClipTokenizer, EOS};

use crate::error::{PipelineError, Result};

/// What `(text)` multiplies by, and `[text]` divides by.
const BRACKET: f64 = 1.1;

/// A run of a prompt's text under one weight.
#[derive(Debug, Clone, PartialEq)]
pub struct Piece {
    pub text: String,
    pub weight: f64,
}

/// The text a model reads from `pieces`.
pub fn plain_text(pieces: &[Piece]) -> String {
    pieces.iter().map(|p| p.text.as_str()).collect()
}

/// Splits `prompt` into runs of text and their weights; consecutive runs of one weight are
/// joined, empty ones dropped. A prompt without brackets or backslashes is one piece of weight 1
/// (or none, when empty).
pub fn parse(prompt: &str) -> Result<Vec<Piece>> {
    let bad = |what: String| PipelineError::Invalid(format!("prompt \"{prompt}\": {what}"));
    let mut pieces: Vec<Piece> = Vec::new();
    let mut text = String::new();
    // open brackets: which, its character position (1-based, for errors), the first piece inside
    let mut open: Vec<(char, usize, usize)> = Vec::new();
    let flush = |text: &mut String, pieces: &mut Vec<Piece>| {
        if !text.is_empty() {
            pieces.push(Piece { text: std::mem::take(text), weight: 1.0 });
        }
    };
    let chars: Vec<(usize, char)> = prompt.char_indices().collect();
    let mut i = 0;
    while i < chars.len() {
        let (at, c) = chars[i];
        let position = i + 1;
        match c {
            '\\' => match chars.get(i + 1) {
                Some(&(_, e @ ('(' | ')' | '[' | ']' | '\\'))) => {
                    text.push(e);
                    i += 1;
                }
                _ => text.push('\\'),
            },
            '(' | '[' => {
                flush(&mut text, &mut pieces);
                open.push((c, position, pieces.len()));
            }
            ')' | ']' => {
                flush(&mut text, &mut pieces);
                let want = if c == ')' { '(' } else { '[' };
                let Some((which, from, first)) = open.pop() else {
                    return Err(bad(format!("`{c}` at character {position} closes nothing (write `\\{c}` for the character)")));
                };
                if which != want {
                    return Err(bad(format!("`{c}` at character {position} closes the `{which}` at character {from}")));
                }
                let factor = if c == ')' { BRACKET } else { 1.0 / BRACKET };
                pieces[first..].iter_mut().for_each(|p| p.weight *= factor);
            }
            ':' if matches!(open.last(), Some(('(', ..))) => {
                let rest = &prompt[at + 1..];
                let close = rest.find(['(', ')', '[', ']']);
                let number = close.filter(|&k| rest[k..].starts_with(')')).map(|k| rest[..k].trim());
                // a colon followed by a weight-like word is a weight; any other is text
                let weight_like = |s: &str| s.is_empty() || s.starts_with(|c: char| c.is_ascii_digit() || matches!(c, '.' | '+' | '-'));
                match number {
                    Some(n) if weight_like(n) => {
                        let (_, from, first) = open.pop().expect("a `(` is open");
                        let w: f64 = n.parse().map_err(|_| {
                            bad(format!("the weight `{n}` of the `(` at character {from} is not a number, e.g. (word:1.3)"))
                        })?;
                        if !w.is_finite() || w < 0.0 {
                            return Err(bad(format!("the weight `{n}` of the `(` at character {from} must be finite and ≥ 0")));
                        }
                        flush(&mut text, &mut pieces);
                        pieces[first..].iter_mut().for_each(|p| p.weight *= w);
                        // past the number and its `)`
                        let end = at + 1 + close.expect("a `)` follows");
                        i = chars.partition_point(|&(b, _)| b <= end);
                        continue;
                    }
                    _ => text.push(':'),
                }
            }
            ':' if matches!(open.last(), Some(('[', ..))) => {
                let (_, from, _) = open.last().expect("a `[` is open");
                return Err(bad(format!(
                    "the `:` at character {position} in the `[` at character {from}: the web UI's prompt editing [from:to:when] is not supported"
                )));
            }
            c => text.push(c),
        }
        i += 1;
    }
    if let Some((which, from, _)) = open.pop() {
        let close = if which == '(' { ')' } else { ']' };
        return Err(bad(format!("the `{which}` at character {from} is never closed (a `{close}` is missing, or write `\\{which}` for the character)")));
    }
    flush(&mut text, &mut pieces);
    let mut joined: Vec<Piece> = Vec::with_capacity(pieces.len());
    for p in pieces {
        match joined.last_mut() {
            Some(last) if last.weight == p.weight => last.text.push_str(&p.text),
            _ => joined.push(p),
        }
    }
    Ok(joined)
}

/// Per-position weights for `pieces`' text tokenized as a whole (`ids`, [`ClipTokenizer::encode`]'s
/// 77): each piece tokenized alone gives its positions. A weighted piece must start and end
/// between words, where its tokens alone are the whole prompt's (`(cat)s` is refused: alone
/// `cat` is a different token than within `cats`).
pub fn piece_weights(tokenizer: &ClipTokenizer, pieces: &[Piece], ids: &[u32]) -> Result<Vec<f32>> {
    let content = |ids: &[u32]| -> Vec<u32> { ids.iter().copied().skip_while(|&id| id == BOS).take_while(|&id| id != EOS).collect() };
    let whole = content(ids);
    let mut weights = vec![1.0f32; ids.len()];
    let mut at = 0;
    for p in pieces {
        if at >= whole.len() {
            break;
        }
        let own = content(&tokenizer.encode(&p.text)?.ids);
        let n = own.len().min(whole.len() - at);
        if own[..n] != whole[at..at + n] {
            return Err(PipelineError::Invalid(format!(
                "prompt \"{}\": the weighted text \"{}\" must start and end between words (tokenized alone it differs from its place in the prompt)",
                plain_text(pieces),
                p.text
            )));
        }
        // position 0 is BOS
        weights[1 + at..1 + at + n].iter_mut().for_each(|w| *w = p.weight as f32);
        at += n;
    }
    Ok(weights)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(text: &str, weight: f64) -> Piece {
        Piece { text: text.into(), weight }
    }

    #[test]
    fn the_syntax_gives_the_web_uis_weights() {
        let cases: &[(&str, &[Piece])] = &[
            ("a photo of a cat", &[p("a photo of a cat", 1.0)]),
            ("", &[]),
            ("a (cat)", &[p("a ", 1.0), p("cat", 1.1)]),
            ("a ((cat))", &[p("a ", 1.0), p("cat", 1.1 * 1.1)]),
            ("a [cat]", &[p("a ", 1.0), p("cat", 1.0 / 1.1)]),
            ("a (cat:1.3) on a mat", &[p("a ", 1.0), p("cat", 1.3), p(" on a mat", 1.0)]),
            ("a ( red cat : 0.5 )", &[p("a ", 1.0), p(" red cat ", 0.5)]),
            ("(a (red:2) cat:1.5)", &[p("a ", 1.5), p("red", 3.0), p(" cat", 1.5)]),
            ("[(cat)]", &[p("cat", 1.1 * (1.0 / 1.1))]),
            ("(cat:0)", &[p("cat", 0.0)]),
            ("a \\(cat\\) \\[x\\] \\\\ a\\b", &[p("a (cat) [x] \\ a\\b", 1.0)]),
            ("(style: watercolor) cat", &[p("style: watercolor", 1.1), p(" cat", 1.0)]),
            ("time: noon", &[p("time: noon", 1.0)]),
            ("(a)(b)", &[p("ab", 1.1)]),
            ("(x:.5)", &[p("x", 0.5)]),
        ];
        for (prompt, want) in cases {
            assert_eq!(parse(prompt).unwrap(), *want, "{prompt}");
        }
    }

    #[test]
    fn malformed_prompts_are_errors_that_say_where() {
        for (bad, says) in [
            ("a (cat", "`(` at character 3 is never closed"),
            ("a [cat", "`[` at character 3 is never closed"),
            ("a cat)", "`)` at character 6 closes nothing"),
            ("a (cat]", "`]` at character 7 closes the `(` at character 3"),
            ("(cat:1.2.3)", "`1.2.3` of the `(` at character 1 is not a number"),
            ("(cat:)", "`` of the `(` at character 1 is not a number"),
            ("(cat:-1)", "must be finite and ≥ 0"),
            ("(cat:1e999)", "must be finite and ≥ 0"),
            ("[cat:dog:0.5]", "`:` at character 5 in the `[` at character 1: the web UI's prompt editing"),
        ] {
            let e = parse(bad).unwrap_err().to_string();
            assert!(e.contains(says) && e.contains(bad), "{bad}: {e}");
        }
    }

    #[test]
    fn weights_land_on_the_pieces_tokens() {
        let tok = ClipTokenizer::embedded().unwrap();
        let weigh = |prompt: &str| {
            let pieces = parse(prompt).unwrap();
            piece_weights(&tok, &pieces, &tok.encode(&plain_text(&pieces)).unwrap().ids)
        };
        // BOS a red car , fluffy cat EOS
        let w = weigh("a (red car:2), [fluffy] cat").unwrap();
        let f = (1.0 / 1.1) as f32;
        assert_eq!(&w[..8], &[1.0, 1.0, 2.0, 2.0, 1.0, f, 1.0, 1.0]);
        assert!(w[8..].iter().all(|&w| w == 1.0));
        // a plain prompt weighs every position 1
        assert!(weigh("a photo of a cat").unwrap().iter().all(|&w| w == 1.0));
        let e = weigh("a (cat)s").unwrap_err().to_string();
        assert!(e.contains("\"cat\" must start and end between words"), "{e}");
        // past the 75 tokens the encoder sees, nothing is weighed
        let long = format!("{} (cat:2)", "a ".repeat(80));
        assert!(weigh(&long).unwrap().iter().all(|&w| w == 1.0));
    }
}
