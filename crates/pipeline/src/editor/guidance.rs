//! Guided UNet calls: classifier-free guidance over the prompts of an edit, its attention
//! controls (prompt-to-prompt windows, word weights) put on the device, progress, previews and
//! the warm-up pass, behind the sampler's [`NoisePredictor`].

use burn::tensor::{Int, Tensor, TensorData};
use edict_sd::model::{StableDiffusion, TextEmbedding};
use edict_sd::models::attention_control::AttentionControl;
use edict_sd::models::unet_2d::{Cond, TextTime};
use edict_sd::scheduler::Prediction;

use super::{Editor, Observer, Progress, WarmShape, read_f64};
use crate::error::{PipelineError, Result};
use crate::io::preview;
use crate::prompt_edit::{EditSpec, P2p, Window, align_tokens, token_weights};
use crate::samplers::NoisePredictor;
use crate::samplers::schedule::Step;
use crate::settings::Settings;

impl Editor {
    /// Validates `s` and builds the guided noise predictor of `spec`'s targets (the inversion's
    /// prompt is `source`) on latents of `shape` for one pass (`inverting` or denoising) of
    /// `s`'s sampler; returns the steps to run and the predictor, and tells `obs` any warnings.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn guided<'a>(
        &'a mut self,
        source: &str,
        spec: &EditSpec,
        s: &Settings,
        inverting: bool,
        stage: &'static str,
        shape: [usize; 4],
        obs: &'a mut dyn Observer,
    ) -> Result<(Vec<Step>, Guided<'a>)> {
        spec.validate()?;
        let (steps, mut warnings) = s.validate(&self.schedule)?;
        let mut embed = |ed: &mut Self, prompt: &str, negative: bool| -> Result<TextEmbedding> {
            let (e, w) = ed.embed(prompt, negative)?;
            if let Some(w) = w.filter(|w| !warnings.contains(w)) {
                warnings.push(w);
            }
            Ok(e)
        };
        // one unit of rows per target: [uncond] (unless guidance is 1), [source] (P2P), target
        // guidance 1 is the conditional prediction alone: skip the unconditional branch
        let uncond = s.guidance != 1.0;
        let mut shared = Vec::new();
        if uncond {
            shared.push(embed(self, &s.negative, true)?);
        }
        if spec.p2p.is_some() {
            shared.push(embed(self, source, false)?);
        }
        let mut rows = Vec::new();
        for t in &spec.targets {
            rows.extend(shared.iter().cloned());
            rows.push(embed(self, t, false)?);
        }
        let context = Tensor::cat(rows.iter().map(|e| e.context.clone()).collect(), 0);
        let pooled = rows.iter().map(|e| e.pooled.clone()).collect::<Option<Vec<_>>>().map(|p| Tensor::cat(p, 0));
        let down = self.model.configs.vae.downscale();
        let time_ids = StableDiffusion::time_ids(shape[2] * down, shape[3] * down);
        let controls = self.controls(source, spec)?;
        let total = s.sampler().calls(steps.len(), inverting);
        for w in &warnings {
            obs.warn(w);
        }
        Ok((
            steps,
            Guided {
                editor: self,
                context,
                pooled,
                time_ids,
                uncond,
                controls,
                guidance: s.guidance,
                shape,
                stage,
                done: 0,
                total,
                obs,
            },
        ))
    }

    /// Checks an edit before any long work: its settings and that every weighted word is in a
    /// target prompt (the inversion would otherwise run first).
    pub fn check_edit(&self, spec: &EditSpec) -> Result<()> {
        spec.validate()?;
        self.token_controls(spec, None).map(drop)
    }

    /// Per target: its word weights, and with `source` its token alignment (mask, index).
    #[allow(clippy::type_complexity)]
    fn token_controls(&self, spec: &EditSpec, source: Option<&str>) -> Result<(Vec<Vec<f32>>, Option<(Vec<Vec<f32>>, Vec<Vec<i64>>)>)> {
        let tok = &self.model.tokenizer;
        let targets: Vec<Vec<u32>> = spec.targets.iter().map(|t| Ok(tok.encode(t)?.ids)).collect::<Result<_>>()?;
        let weights = targets
            .iter()
            .enumerate()
            .map(|(i, t)| token_weights(tok, t, spec.weighted.get(i).map_or(&[], |p| p), &spec.reweight, &targets))
            .collect::<Result<_>>()?;
        let aligned = match source {
            Some(s) => {
                let src = tok.encode(s)?.ids;
                Some(targets.iter().map(|t| align_tokens(&src, t)).unzip())
            }
            None => None,
        };
        Ok((weights, aligned))
    }

    /// The attention control `spec` asks for, as device tensors over the 77 keys.
    fn controls(&self, source: &str, spec: &EditSpec) -> Result<Option<Controls>> {
        if spec.p2p.is_none() && !spec.has_weights() {
            return Ok(None);
        }
        let (weights, aligned) = self.token_controls(spec, spec.p2p.is_some().then_some(source))?;
        let (k, n) = (weights.len(), weights[0].len());
        let rows = |v: Vec<Vec<f32>>| self.upload(v.concat(), [k, 1, 1, n]);
        let tokens = aligned.map(|(mask, index)| {
            let index = Tensor::<4, Int>::from_data(TensorData::new(index.concat(), [k, 1, 1, n]), &self.device);
            (rows(mask), index)
        });
        Ok(Some(Controls {
            p2p: spec.p2p,
            tokens,
            weights: spec.has_weights().then(|| rows(weights)),
        }))
    }
}

/// Prompt-to-prompt windows and word weights, ready for the UNet.
struct Controls {
    p2p: Option<P2p>,
    /// `[k, 1, 1, 77]` mask and aligned source index per target (P2P)
    tokens: Option<(Tensor<4>, Tensor<4, Int>)>,
    /// `[k, 1, 1, 77]` word weights per target
    weights: Option<Tensor<4>>,
}

impl Controls {
    /// The control of one UNet call at timestep `t` on units of `unit` rows.
    fn at(&self, t: usize, unit: usize) -> AttentionControl {
        let inject = |w: fn(&P2p) -> &Window| self.p2p.as_ref().is_some_and(|p| w(p).contains(t));
        AttentionControl {
            unit,
            inject_self: inject(|p| &p.self_attn),
            inject_tokens: self.tokens.clone().filter(|_| inject(|p| &p.tokens)),
            weights: self.weights.clone(),
        }
    }
}

/// ε = ε_u + g·(ε_c − ε_u) for each of k latents, from one UNet call whose batch holds one unit
/// of rows per latent: unconditional (unless guidance is 1), source (P2P), the target.
pub(super) struct Guided<'a> {
    editor: &'a mut Editor,
    /// `[unit · k, 77, d]` in the row order above
    context: Tensor<3>,
    /// SDXL: `[unit · k, pooled]` in the same order, and the image's size conditioning
    pooled: Option<Tensor<2>>,
    time_ids: [f64; 6],
    uncond: bool,
    controls: Option<Controls>,
    guidance: f64,
    shape: [usize; 4],
    stage: &'static str,
    done: usize,
    total: usize,
    obs: &'a mut dyn Observer,
}

impl NoisePredictor for Guided<'_> {
    async fn predict(&mut self, latents: &[Vec<f64>], t: usize) -> Result<Vec<Vec<f64>>> {
        if self.obs.cancelled() {
            return Err(PipelineError::Cancelled);
        }
        let k = latents.len();
        let unit = self.context.dims()[0] / k;
        let [_, c, h, w] = self.shape;
        let x: Vec<f32> = latents.iter().flat_map(|l| std::iter::repeat_n(l, unit)).flatten().map(|&v| v as f32).collect();
        let x = self.editor.upload(x, [k * unit, c, h, w]);
        let control = self.controls.as_ref().map(|s| s.at(t, unit));
        let text_time = self.pooled.as_ref().map(|pooled| TextTime { pooled, time_ids: self.time_ids });
        let cond = Cond { context: &self.context, text_time };
        let call = |editor: &Editor, x: Tensor<4>| match &control {
            None => editor.model.unet.forward(x, t as f64, cond),
            Some(ctl) => editor.model.unet.forward_controlled(x, t as f64, cond, ctl),
        };
        let shape: WarmShape = (x.dims(), control.as_ref().map(|c| [c.inject_self, c.inject_tokens.is_some(), c.weights.is_some()]));
        if self.editor.warm_up && !self.editor.warmed.contains(&shape) {
            // the same call, its result read (so the device has run it) and dropped
            read_f64(call(self.editor, x.clone())).await?;
            self.editor.warmed.push(shape);
            self.editor.warm_up_calls += 1;
        }
        let v = read_f64(call(self.editor, x)).await?;
        self.editor.unet_calls += 1;
        self.done += 1;
        let progress = Progress {
            stage: self.stage,
            done: self.done,
            total: self.total,
        };
        self.obs.progress(progress);
        let n = latents[0].len();
        let row = |r: usize| &v[r * n..(r + 1) * n];
        let g = self.guidance;
        let at = self.editor.schedule.alphas_cumprod[t];
        let (sa, sb) = (at.sqrt(), (1.0 - at).sqrt());
        let eps: Vec<Vec<f64>> = (0..k)
            .map(|i| {
                let cond = row(i * unit + unit - 1);
                let guided: Vec<f64> = if self.uncond {
                    row(i * unit).iter().zip(cond).map(|(u, c)| u + g * (c - u)).collect()
                } else {
                    cond.to_vec()
                };
                match self.editor.model.configs.scheduler.prediction {
                    Prediction::Epsilon => guided,
                    // v = √ᾱ·ε − √(1−ᾱ)·x₀ and x_t = √ᾱ·x₀ + √(1−ᾱ)·ε give ε = √ᾱ·v + √(1−ᾱ)·x_t;
                    // affine in v, so guiding v and converting equals converting each branch
                    Prediction::V => guided.iter().zip(&latents[i]).map(|(v, x)| sa * v + sb * x).collect(),
                }
            })
            .collect();
        if self.obs.wants_preview() {
            // x̂₀ = (x_t − √(1−ᾱ)·ε) / √ᾱ
            let x0: Vec<Vec<f64>> = latents
                .iter()
                .zip(&eps)
                .map(|(x, e)| x.iter().zip(e).map(|(x, e)| (x - sb * e) / sa).collect())
                .collect();
            let image = match self.editor.preview_decoded(&x0, self.shape).await? {
                Some(decoded) => Some(decoded),
                None => {
                    let map = if self.editor.model.configs.is_sdxl() { &preview::SDXL } else { &preview::SD };
                    preview::latents_to_rgb(&x0, self.shape, map)
                }
            };
            if let Some(image) = image {
                self.obs.preview(progress, &image);
            }
        }
        Ok(eps)
    }
}

