//! Prompt-to-prompt control of the UNet's attention probabilities, as the EDICT authors run it
//! (salesforce/EDICT `edict_functions.py`, adapted from bloc97's CrossAttentionControl; the
//! diffusers community `pipeline_prompt2prompt` has the same idea as processors).
//!
//! One UNet call holds one UNIT of rows per edit target: `[uncond,] [source,] target`. The last
//! row of each unit is controlled; when attention is injected, the row before it is its source (the
//! same latent under the source prompt), so both passes run in one forward and each layer's source
//! probabilities are at hand for the target. Every operation is per unit and per query row, so
//! attention may split the batch into whole units and the queries into chunks.

use std::ops::Range;

use burn::tensor::{Int, Tensor};

/// How one UNet call controls attention. The default controls nothing.
#[derive(Debug, Clone, Default)]
pub struct AttentionControl {
    /// Rows per unit (0: no control).
    pub unit: usize,
    /// Self-attention (`attn1`): the controlled rows take their sources' probabilities.
    pub inject_self: bool,
    /// Cross-attention (`attn2`): per unit, a `[units, 1, 1, keys]` 0/1 mask and the aligned
    /// source key of each target key; masked keys take the source's probability of that key.
    pub inject_tokens: Option<(Tensor<4>, Tensor<4, Int>)>,
    /// Cross-attention: `[units, 1, 1, keys]` column weights of the controlled rows' probabilities,
    /// applied after injection, without renormalising.
    pub weights: Option<Tensor<4>>,
}

/// `[g·r, h, n, m]` probabilities of `g` units of `r` rows: the rows before the last of each unit
/// (none when `r` is 1), the last rows' sources (the row before; the last row itself when `r` is
/// 1), and the last rows, the targets, as `[g, h, n, m]`.
fn split(probs: Tensor<4>, r: usize) -> (Option<Tensor<5>>, Tensor<4>, Tensor<4>) {
    let [b, h, n, m] = probs.dims();
    let g = b / r;
    let p = probs.reshape([g, r, h, n, m]);
    let row = |i: usize| p.clone().narrow(1, i, 1).reshape([g, h, n, m]);
    let rest = (r > 1).then(|| p.clone().narrow(1, 0, r - 1));
    (rest, row(r.saturating_sub(2)), row(r - 1))
}

/// Puts controlled target rows back after the rest of their units.
fn join(rest: Option<Tensor<5>>, targets: Tensor<4>) -> Tensor<4> {
    let [g, h, n, m] = targets.dims();
    let Some(rest) = rest else { return targets };
    let r = rest.dims()[1] + 1;
    Tensor::cat(vec![rest, targets.reshape([g, 1, h, n, m])], 1).reshape([g * r, h, n, m])
}

impl AttentionControl {
    /// Self-attention probabilities of the units `units` after controls.
    pub fn control_self(&self, probs: Tensor<4>, _units: Range<usize>) -> Tensor<4> {
        if self.unit < 2 || !self.inject_self {
            return probs;
        }
        let (rest, sources, _) = split(probs, self.unit);
        join(rest, sources)
    }

    /// Cross-attention probabilities of the units `units` after controls.
    pub fn control_cross(&self, probs: Tensor<4>, units: Range<usize>) -> Tensor<4> {
        if self.unit == 0 || (self.inject_tokens.is_none() && self.weights.is_none()) {
            return probs;
        }
        let dtype = probs.dtype();
        let (rest, sources, mut targets) = split(probs, self.unit);
        let [g, h, n, m] = targets.dims();
        let mine = |t: &Tensor<4>| t.clone().narrow(0, units.start, g);
        if let Some((mask, index)) = &self.inject_tokens {
            let aligned = sources.gather(3, index.clone().narrow(0, units.start, g).expand([g, h, n, m]));
            let mask = mine(mask).cast(dtype);
            // mask ∈ {0, 1}, so each key is exactly the target's or the aligned source's value
            targets = targets * mask.clone().neg().add_scalar(1.0) + aligned * mask;
        }
        if let Some(w) = &self.weights {
            targets = targets * mine(w).cast(dtype);
        }
        join(rest, targets)
    }
}
