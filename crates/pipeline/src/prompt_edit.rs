//! What an edit denoises into, beyond the prompt: the EDICT authors' prompt-to-prompt controls
//! (attention injection windows, token alignment) and word weights. Pure rules on prompts and
//! token ids; [`crate::editor`] puts them on the device as the UNet's `AttentionControl`s.
//!
//! One vocabulary throughout: prompt-to-prompt ([`P2p`]: its injection windows) and word
//! weights ([`Reweight`]) are an edit's *attention controls*; [`EditControls`] is how a user asks
//! for them (the CLI's flags, the page's options), [`EditSpec`] an edit with them.

use std::str::FromStr;

use serde::{Deserialize, Serialize};

use edict_sd::tokenizer::{BOS, ClipTokenizer, EOS};

use crate::difflib::{Tag, opcodes};
use crate::error::{PipelineError, Result};
use crate::prompt_weights::{self, Piece};

/// The timesteps `t` with `start ≤ t/1000 ≤ end` at which an injection runs; `START:END` as text.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Window {
    pub start: f64,
    pub end: f64,
}

impl Window {
    /// Every step (the authors' default).
    pub const ALWAYS: Window = Window { start: 0.0, end: 1.0 };

    pub fn contains(&self, t: usize) -> bool {
        let s = t as f64 / 1000.0;
        self.start <= s && s <= self.end
    }

    /// Checks `0 ≤ start ≤ end ≤ 1`; `what` names the setting in the error.
    pub fn validate(&self, what: &str) -> Result<()> {
        if (0.0..=1.0).contains(&self.start) && (0.0..=1.0).contains(&self.end) && self.start <= self.end {
            Ok(())
        } else {
            Err(PipelineError::Invalid(format!(
                "{what} window {}:{} must satisfy 0 ≤ start ≤ end ≤ 1 (fractions of the 1000 training timesteps)",
                self.start, self.end
            )))
        }
    }
}

impl FromStr for Window {
    type Err = PipelineError;
    /// `START:END`, e.g. `0.2:0.8`.
    fn from_str(s: &str) -> Result<Self> {
        let bad = || PipelineError::Invalid(format!("window `{s}`: expected START:END with numbers in [0, 1], e.g. 0.2:1"));
        let (a, b) = s.split_once(':').ok_or_else(bad)?;
        let w = Window {
            start: a.trim().parse().map_err(|_| bad())?,
            end: b.trim().parse().map_err(|_| bad())?,
        };
        w.validate("a").map_err(|_| bad())?;
        Ok(w)
    }
}

impl std::fmt::Display for Window {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.start, self.end)
    }
}

impl TryFrom<String> for Window {
    type Error = PipelineError;
    fn try_from(s: String) -> Result<Self> {
        s.parse()
    }
}

impl From<Window> for String {
    fn from(w: Window) -> Self {
        w.to_string()
    }
}

/// Prompt-to-prompt: in the target pass, cross-attention takes the source pass's probabilities
/// for aligned tokens while `tokens` contains t, self-attention takes them whole while
/// `self_attn` contains t.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct P2p {
    pub tokens: Window,
    pub self_attn: Window,
}

impl Default for P2p {
    fn default() -> Self {
        Self {
            tokens: Window::ALWAYS,
            self_attn: Window::ALWAYS,
        }
    }
}

/// A word and the factor its tokens' cross-attention probabilities are multiplied by; `WORD=W`
/// as text.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Reweight {
    pub word: String,
    pub weight: f64,
}

impl FromStr for Reweight {
    type Err = PipelineError;
    /// `WORD=W`, e.g. `fluffy=2` or `"red car=0.5"`; the weight is finite and ≥ 0.
    fn from_str(s: &str) -> Result<Self> {
        let (word, w) = s
            .rsplit_once('=')
            .ok_or_else(|| PipelineError::Invalid(format!("reweight `{s}`: expected WORD=WEIGHT, e.g. fluffy=2")))?;
        let word = word.trim();
        if word.is_empty() {
            return Err(PipelineError::Invalid(format!("reweight `{s}`: the word is empty")));
        }
        let weight: f64 = w
            .trim()
            .parse()
            .map_err(|_| PipelineError::Invalid(format!("reweight `{s}`: `{w}` is not a number")))?;
        if !weight.is_finite() || weight < 0.0 {
            return Err(PipelineError::Invalid(format!("reweight `{s}`: the weight must be finite and ≥ 0")));
        }
        Ok(Self { word: word.to_string(), weight })
    }
}

impl std::fmt::Display for Reweight {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}={}", self.word, self.weight)
    }
}

impl TryFrom<String> for Reweight {
    type Error = PipelineError;
    fn try_from(s: String) -> Result<Self> {
        s.parse()
    }
}

impl From<Reweight> for String {
    fn from(r: Reweight) -> Self {
        r.to_string()
    }
}

/// The attention controls a user asks for, as the CLI's flags (feature `cli`) and the page's
/// options (serde; missing fields take these defaults, unknown ones are refused).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "cli", derive(clap::Args))]
#[serde(default, deny_unknown_fields)]
pub struct EditControls {
    /// Prompt-to-prompt: the target pass takes the source pass's attention (aligned words in
    /// cross-attention, all of self-attention) during the windows below. 3 UNet rows per call instead of 2.
    #[cfg_attr(feature = "cli", arg(long))]
    pub p2p: bool,
    /// Window START:END of t/1000 in which cross-attention is injected.
    #[cfg_attr(feature = "cli", arg(long, requires = "p2p", default_value_t = Window::ALWAYS))]
    pub p2p_tokens: Window,
    /// Window START:END of t/1000 in which self-attention is injected.
    #[cfg_attr(feature = "cli", arg(long, requires = "p2p", default_value_t = Window::ALWAYS))]
    pub p2p_self: Window,
    /// WORD=W: multiply the target's cross-attention on WORD's tokens by W (repeatable).
    #[cfg_attr(feature = "cli", arg(long))]
    pub reweight: Vec<Reweight>,
}

impl Default for EditControls {
    fn default() -> Self {
        let p2p = P2p::default();
        Self {
            p2p: false,
            p2p_tokens: p2p.tokens,
            p2p_self: p2p.self_attn,
            reweight: Vec::new(),
        }
    }
}

impl EditControls {
    /// The edit into `targets` with these controls, checked; the targets may weigh words in
    /// the usual syntax ([`crate::prompt_weights`]).
    pub fn spec(&self, targets: Vec<String>) -> Result<EditSpec> {
        let weighted = targets.iter().map(|t| prompt_weights::parse(t)).collect::<Result<Vec<_>>>()?;
        let spec = EditSpec {
            targets: weighted.iter().map(|p| prompt_weights::plain_text(p)).collect(),
            weighted,
            p2p: self.p2p.then_some(P2p { tokens: self.p2p_tokens, self_attn: self.p2p_self }),
            reweight: self.reweight.clone(),
        };
        spec.validate()?;
        Ok(spec)
    }
}

/// What to denoise an inversion into: one or more target prompts (denoised together, one result
/// each), optionally with prompt-to-prompt injection from the inversion's prompt and word weights.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct EditSpec {
    /// The target prompts as the model reads them.
    pub targets: Vec<String>,
    /// Per target, its text in weighted pieces when written in the weight syntax; empty for
    /// plain targets.
    pub weighted: Vec<Vec<Piece>>,
    pub p2p: Option<P2p>,
    pub reweight: Vec<Reweight>,
}

impl EditSpec {
    /// A plain edit (or a reconstruction) under one prompt.
    pub fn to(prompt: &str) -> Self {
        Self {
            targets: vec![prompt.to_string()],
            ..Self::default()
        }
    }

    /// Whether any target weighs its tokens: word weights or the prompt syntax.
    pub fn has_weights(&self) -> bool {
        !self.reweight.is_empty() || self.weighted.iter().flatten().any(|p| p.weight != 1.0)
    }

    pub fn validate(&self) -> Result<()> {
        if self.targets.is_empty() {
            return Err(PipelineError::Invalid("an edit needs at least one target prompt".into()));
        }
        if !self.weighted.is_empty() && self.weighted.len() != self.targets.len() {
            return Err(PipelineError::Invalid(format!(
                "{} weighted prompts for {} targets",
                self.weighted.len(),
                self.targets.len()
            )));
        }
        if let Some(p) = &self.p2p {
            p.tokens.validate("--p2p-tokens")?;
            p.self_attn.validate("--p2p-self")?;
        }
        Ok(())
    }
}

/// The authors' token alignment of padded source and target ids: for each target position in an
/// `equal` opcode, or a `replace` of equal length, mask 1 and the aligned source position;
/// elsewhere mask 0 and index 0.
pub fn align_tokens(source: &[u32], target: &[u32]) -> (Vec<f32>, Vec<i64>) {
    let mut mask = vec![0.0; target.len()];
    let mut index = vec![0; target.len()];
    for o in opcodes(source, target) {
        if o.tag == Tag::Equal || (o.tag == Tag::Replace && o.a1 - o.a0 == o.b1 - o.b0) {
            for (b, a) in (o.b0..o.b1).zip(o.a0..o.a1) {
                mask[b] = 1.0;
                index[b] = a as i64;
            }
        }
    }
    (mask, index)
}

/// Per-position weights for `target` ids: its `pieces`' weights (1 without), then `weight` at
/// every occurrence of a reweighted word's token sequence (the word tokenized alone, without
/// start and end tokens). Errors name a word found in none of `all_targets`.
pub fn token_weights(
    tokenizer: &ClipTokenizer,
    target: &[u32],
    pieces: &[Piece],
    reweight: &[Reweight],
    all_targets: &[Vec<u32>],
) -> Result<Vec<f32>> {
    let mut weights = if pieces.is_empty() { vec![1.0f32; target.len()] } else { prompt_weights::piece_weights(tokenizer, pieces, target)? };
    for r in reweight {
        let ids = tokenizer.encode(&r.word)?.ids;
        let word: Vec<u32> = ids.iter().copied().filter(|&id| id != BOS).take_while(|&id| id != EOS).collect();
        if word.is_empty() || !all_targets.iter().any(|t| t.windows(word.len()).any(|w| w == word)) {
            return Err(PipelineError::Invalid(format!(
                "word weight {}={}: \"{}\" is not in the target prompt{}",
                r.word,
                r.weight,
                r.word,
                if all_targets.len() > 1 { "s" } else { "" }
            )));
        }
        for start in 0..=target.len().saturating_sub(word.len()) {
            if target[start..start + word.len()] == word[..] {
                weights[start..start + word.len()].iter_mut().for_each(|w| *w = r.weight as f32);
            }
        }
    }
    Ok(weights)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_parse_and_include_both_ends() {
        let w: Window = "0.2:0.6".parse().unwrap();
        assert!(w.contains(200) && w.contains(600) && w.contains(400));
        assert!(!w.contains(199) && !w.contains(601));
        for bad in ["0.5", "a:1", "0.7:0.2", "-0.1:1", "0:1.5", "nan:1"] {
            let e = bad.parse::<Window>().unwrap_err().to_string();
            assert!(e.contains(bad), "{e}");
        }
    }

    #[test]
    fn reweights_parse_with_clear_errors() {
        let r: Reweight = "red car=0.5".parse().unwrap();
        assert_eq!((r.word.as_str(), r.weight), ("red car", 0.5));
        for (bad, says) in [("fluffy", "WORD=WEIGHT"), ("=2", "empty"), ("x=big", "not a number"), ("x=inf", "finite"), ("x=-1", "≥ 0")] {
            let e = bad.parse::<Reweight>().unwrap_err().to_string();
            assert!(e.contains(says), "{bad}: {e}");
        }
    }

    #[test]
    fn word_weights_cover_every_occurrence_and_name_missing_words() {
        let tok = ClipTokenizer::embedded().unwrap();
        let target = tok.encode("a cat and a fluffy cat").unwrap().ids;
        let r = |s: &str| s.parse::<Reweight>().unwrap();
        let w = token_weights(&tok, &target, &[], &[r("cat=2")], std::slice::from_ref(&target)).unwrap();
        // BOS a cat and a fluffy cat EOS …
        assert_eq!(&w[..8], &[1.0, 1.0, 2.0, 1.0, 1.0, 1.0, 2.0, 1.0]);
        assert!(w[8..].iter().all(|&w| w == 1.0));
        let e = token_weights(&tok, &target, &[], &[r("dog=2")], &[target.clone()]).unwrap_err().to_string();
        assert!(e.contains("\"dog\" is not in the target prompt"), "{e}");
    }
}
