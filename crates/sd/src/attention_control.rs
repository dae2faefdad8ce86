//! Prompt-to-prompt control of the UNet's attention probabilities, as the EDICT authors run it
//! (salesforce/EDICT `edict_functions.py`, adapted from bloc97's CrossAttentionControl; the
//! diffusers community `pipeline_prompt2prompt` has the same idea as processors).
//!
//! One UNet call holds the rows to steer at the END of its batch; when attention is injected, the
//! rows just before them are their sources (the same latents under the source prompt), so both
//! passes run in one forward and each layer's source probabilities are at hand for the target.
//! Every operation is per query row, so attention's query chunking is unaffected.

use burn::tensor::{Int, Tensor};

/// How one UNet call steers attention. The default steers nothing.
#[derive(Debug, Clone, Default)]
pub struct AttentionControl {
    /// The steered rows: the last `edits` of the batch (0: no control).
    pub edits: usize,
    /// Self-attention (`attn1`): the steered rows take their sources' probabilities.
    pub inject_self: bool,
    /// Cross-attention (`attn2`): `[edits, 1, 1, keys]` 0/1 mask and the aligned source key of
    /// each target key; masked keys take the source's probabilities of their aligned key.
    pub inject_tokens: Option<(Tensor<4>, Tensor<4, Int>)>,
    /// Cross-attention: `[edits, 1, 1, keys]` column weights of the steered rows' probabilities,
    /// applied after injection, without renormalising.
    pub weights: Option<Tensor<4>>,
}

impl AttentionControl {
    /// Self-attention probabilities `[b, heads, queries, keys]` after steering.
    pub fn steer_self(&self, probs: Tensor<4>) -> Tensor<4> {
        if self.edits == 0 || !self.inject_self {
            return probs;
        }
        let b = probs.dims()[0];
        let sources = probs.clone().narrow(0, b - 2 * self.edits, self.edits);
        Tensor::cat(vec![probs.narrow(0, 0, b - self.edits), sources], 0)
    }

    /// Cross-attention probabilities `[b, heads, queries, keys]` after steering.
    pub fn steer_cross(&self, probs: Tensor<4>) -> Tensor<4> {
        if self.edits == 0 || (self.inject_tokens.is_none() && self.weights.is_none()) {
            return probs;
        }
        let [b, h, n, m] = probs.dims();
        let k = self.edits;
        let dtype = probs.dtype();
        let mut edited = probs.clone().narrow(0, b - k, k);
        if let Some((mask, index)) = &self.inject_tokens {
            let source = probs.clone().narrow(0, b - 2 * k, k).gather(3, index.clone().expand([k, h, n, m]));
            let mask = mask.clone().cast(dtype);
            // mask ∈ {0, 1}, so each key is exactly the target's or the aligned source's value
            edited = edited * mask.clone().neg().add_scalar(1.0) + source * mask;
        }
        if let Some(w) = &self.weights {
            edited = edited * w.clone().cast(dtype);
        }
        Tensor::cat(vec![probs.narrow(0, 0, b - k), edited], 0)
    }
}
