//! Preference objectives (DPO and its variants, SFT, fDPO) as pure candle
//! functions of summed log-probabilities, with TRL's metric names.
//!
//! Training on a preference pair needs, for the chosen and the rejected
//! response, the log-probability of the response under the policy πθ and
//! under the reference model πref (the base model with adapters disabled).
//! Everything here starts from those numbers, summed over the response's
//! tokens ([`sequence_logps`]) or over each segment of it
//! ([`segment_logps`]), so the objectives are small, exactly testable
//! functions and the reference log-probs can be precomputed once per
//! dataset. Gradients flow through the policy log-probs: the functions use
//! candle operations only, and the reference log-probs and reward gaps are
//! treated as constants (detached).
//!
//! With `h = (log πθ(y_c) − log πθ(y_r)) − (log πref(y_c) − log πref(y_r))`
//! for a pair, β = [`ObjectiveConfig::beta`] and ε =
//! [`ObjectiveConfig::label_smoothing`], the per-pair losses follow TRL's
//! `DPOTrainer.dpo_loss` (TRL 0.x), averaged over the batch:
//!
//! | [`Objective`] | loss | source |
//! |---|---|---|
//! | `dpo` (TRL `sigmoid`) | `−(1−ε)·log σ(βh) − ε·log σ(−βh)` (ε = 0: plain DPO; ε > 0: conservative DPO) | Rafailov et al. 2023, "Direct Preference Optimization" (arXiv 2305.18290), Eq. 7 |
//! | `ipo` | `(h − 1/(2β))²` on per-token **average** log-probs | Azar et al. 2023, "A General Theoretical Paradigm to Understand Learning from Human Preferences" (arXiv 2310.12036), Eq. 17 |
//! | `hinge` | `relu(1 − βh)` | SLiC / RSO (Zhao et al. 2023; Liu et al. 2023), as in TRL |
//! | `robust` | `(−(1−ε)·log σ(βh) + ε·log σ(−βh)) / (1 − 2ε)` | Chowdhury et al. 2024, "Provably Robust DPO" (arXiv 2403.00409) |
//! | `sft` | `−Σ log πθ(chosen tokens) / #chosen tokens` | SPR's ablation baseline |
//! | `fdpo` | see below | SpatialReasoner-R1 (arXiv 2506.21656) |
//!
//! **IPO** uses the average log-prob per token, as TRL 0.x does
//! (`average_log_prob=loss_type == "ipo"`) and as the IPO paper's target
//! margin `1/(2β)` assumes (a sum over hundreds of tokens would make the
//! squared loss scale with the response length). We divide the summed
//! log-probs by the token counts in [`PairLogps`] before the formula, and the
//! reward and log-prob metrics of an IPO run are per-token averages too.
//! (Later TRL rewrites dropped the averaging; this is a deliberate choice.)
//!
//! **SFT** is normalised per token over the whole batch: the summed
//! log-likelihood of all chosen tokens divided by their number, which is
//! what a causal LM's cross-entropy (`F.cross_entropy` over the masked
//! tokens, TRL's `sft` loss type) computes. Long responses weigh more than
//! short ones, as in ordinary fine-tuning, and the loss is comparable across
//! batches with different lengths. It uses no reference model; the reward
//! metrics are still computed from whatever reference log-probs are given
//! (zeros are fine) so a dashboard can plot them for every objective.
//!
//! **fDPO** (SpatialReasoner-R1) splits each response into segments s (for
//! example description vs reasoning, or text vs box tokens). Per segment,
//! `F_s = [log πθ/πref](chosen_s) − [log πθ/πref](rejected_s)`, each term
//! summed over the segment's tokens. From the pair's per-segment reward gaps
//! ΔR_s (chosen minus rejected), `w_s = softmax_s(λ_f·ΔR_s)` and
//! `β_s = β·[1 + α(2·w_s − 1)]`; the loss is one sigmoid over the combined
//! margin, `L = −log σ(Σ_s β_s·F_s)`. Paper's best: α = 0.3, λ_f = 0.6.
//! Segments whose rewards separate the pair more get a larger β_s, that is
//! a stronger push away from the reference. With α = 0 it is DPO on the
//! summed log-probs; with two segments and equal gaps too (w_s = ½). With S
//! segments and equal gaps it is DPO with β·[1 + α(2/S − 1)].
//! Its reward metrics use the segment β_s: `rewards/chosen` is the mean of
//! `Σ_s β_s·[log πθ/πref](chosen_s)`, so `rewards/margins` is the mean of
//! the margin inside the sigmoid.
//!
//! Metrics ([`Metrics`]) carry TRL's names and meanings: `rewards/chosen`
//! = mean β·(log πθ − log πref)(chosen), `rewards/rejected` likewise,
//! `rewards/margins` their mean difference, `rewards/accuracies` the share
//! of pairs whose chosen reward is strictly larger, `logps/chosen` and
//! `logps/rejected` the mean policy log-probs.
//!
//! The numbers are checked against `scripts/objectives/reference.py` (plain
//! PyTorch, float64, TRL's formulas) through
//! `src/train/testdata/objectives_reference.json`.

use candle_core::{DType, Tensor, D};
use serde::{Deserialize, Serialize};

pub use crate::core::runs::config::{Objective, ObjectiveConfig, UnknownObjective};

/// Errors from the objectives and the log-prob helpers.
#[derive(Debug, thiserror::Error)]
pub enum ObjectiveError {
    /// A tensor operation failed (device, dtype or shape inside candle).
    #[error("tensor operation failed: {0}")]
    Candle(#[from] candle_core::Error),
    /// A configuration value is out of range.
    #[error("invalid objective configuration: {0}")]
    Config(String),
    /// An input tensor has the wrong shape.
    #[error("`{name}` has shape {got:?}, expected {expected}")]
    Shape {
        /// Which input.
        name: &'static str,
        /// Its shape.
        got: Vec<usize>,
        /// What was expected, in words.
        expected: String,
    },
    /// An input holds values the function cannot use.
    #[error("invalid input `{name}`: {message}")]
    Input {
        /// Which input.
        name: &'static str,
        /// What is wrong.
        message: String,
    },
}

/// Result type of this module.
pub type Result<T> = std::result::Result<T, ObjectiveError>;

/// Summed log-probs of a batch of pairs under the policy and the reference,
/// with the number of tokens summed.
///
/// Every tensor has the same float dtype and the same shape: `[batch]`
/// (one sum per response) or `[batch, n_segments]` (one sum per segment, as
/// [`segment_logps`] returns; sequence-level objectives add the segments up).
/// The token counts are floats of the same dtype; they are used by IPO
/// (averages) and SFT (per-token normalisation) and ignored otherwise.
#[derive(Clone, Debug)]
pub struct PairLogps {
    /// Σ log πθ over the chosen response's tokens (carries gradients).
    pub policy_chosen: Tensor,
    /// Σ log πθ over the rejected response's tokens (carries gradients).
    pub policy_rejected: Tensor,
    /// Σ log πref over the chosen response's tokens (treated as constant).
    pub reference_chosen: Tensor,
    /// Σ log πref over the rejected response's tokens (treated as constant).
    pub reference_rejected: Tensor,
    /// Number of chosen tokens summed.
    pub chosen_tokens: Tensor,
    /// Number of rejected tokens summed.
    pub rejected_tokens: Tensor,
}

impl PairLogps {
    /// Builds the inputs from the policy and reference sums of the chosen
    /// and rejected responses (token counts taken from the policy sums).
    pub fn from_sums(
        policy_chosen: LogpSums,
        policy_rejected: LogpSums,
        reference_chosen: &Tensor,
        reference_rejected: &Tensor,
    ) -> Self {
        Self {
            policy_chosen: policy_chosen.sum,
            policy_rejected: policy_rejected.sum,
            reference_chosen: reference_chosen.clone(),
            reference_rejected: reference_rejected.clone(),
            chosen_tokens: policy_chosen.tokens,
            rejected_tokens: policy_rejected.tokens,
        }
    }

    fn fields(&self) -> [(&'static str, &Tensor); 6] {
        [
            ("policy_chosen", &self.policy_chosen),
            ("policy_rejected", &self.policy_rejected),
            ("reference_chosen", &self.reference_chosen),
            ("reference_rejected", &self.reference_rejected),
            ("chosen_tokens", &self.chosen_tokens),
            ("rejected_tokens", &self.rejected_tokens),
        ]
    }

    /// Checks that all six tensors share one float dtype and one shape,
    /// `[batch]` or `[batch, n_segments]` with both sizes > 0, and returns
    /// that shape.
    pub fn check(&self) -> Result<Vec<usize>> {
        let shape = self.policy_chosen.dims().to_vec();
        let dtype = self.policy_chosen.dtype();
        if !dtype.is_float() {
            return Err(ObjectiveError::Input {
                name: "policy_chosen",
                message: format!("dtype {dtype:?} is not a float type"),
            });
        }
        if !(1..=2).contains(&shape.len()) || shape.contains(&0) {
            return Err(ObjectiveError::Shape {
                name: "policy_chosen",
                got: shape,
                expected: "[batch] or [batch, n_segments], non-empty".into(),
            });
        }
        for (name, t) in self.fields() {
            if t.dims() != shape.as_slice() {
                return Err(ObjectiveError::Shape {
                    name,
                    got: t.dims().to_vec(),
                    expected: format!("{shape:?} (the shape of policy_chosen)"),
                });
            }
            if t.dtype() != dtype {
                return Err(ObjectiveError::Input {
                    name,
                    message: format!(
                        "dtype {:?} differs from policy_chosen's {dtype:?}",
                        t.dtype()
                    ),
                });
            }
        }
        Ok(shape)
    }

    /// Number of pairs in the batch.
    pub fn batch_size(&self) -> usize {
        self.policy_chosen.dims().first().copied().unwrap_or(0)
    }

    /// The per-response sums: segments added up when the tensors are
    /// `[batch, n_segments]`, a copy when they are `[batch]`.
    pub fn sum_segments(&self) -> Result<PairLogps> {
        if self.policy_chosen.rank() == 1 {
            return Ok(self.clone());
        }
        let s = |t: &Tensor| t.sum(D::Minus1);
        Ok(PairLogps {
            policy_chosen: s(&self.policy_chosen)?,
            policy_rejected: s(&self.policy_rejected)?,
            reference_chosen: s(&self.reference_chosen)?,
            reference_rejected: s(&self.reference_rejected)?,
            chosen_tokens: s(&self.chosen_tokens)?,
            rejected_tokens: s(&self.rejected_tokens)?,
        })
    }
}

/// A batch's training metrics under TRL's names (batch means).
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Metrics {
    /// The loss.
    pub loss: f64,
    /// Mean implicit reward of the chosen responses, β·(log πθ − log πref).
    #[serde(rename = "rewards/chosen")]
    pub rewards_chosen: f64,
    /// Mean implicit reward of the rejected responses.
    #[serde(rename = "rewards/rejected")]
    pub rewards_rejected: f64,
    /// Mean of chosen minus rejected reward.
    #[serde(rename = "rewards/margins")]
    pub rewards_margins: f64,
    /// Share of pairs whose chosen reward is strictly larger.
    #[serde(rename = "rewards/accuracies")]
    pub rewards_accuracies: f64,
    /// Mean policy log-prob of the chosen responses.
    #[serde(rename = "logps/chosen")]
    pub logps_chosen: f64,
    /// Mean policy log-prob of the rejected responses.
    #[serde(rename = "logps/rejected")]
    pub logps_rejected: f64,
}

impl Metrics {
    /// The TRL metric names, in the order of [`Metrics::values`].
    pub const NAMES: [&'static str; 7] = [
        "loss",
        "rewards/chosen",
        "rewards/rejected",
        "rewards/margins",
        "rewards/accuracies",
        "logps/chosen",
        "logps/rejected",
    ];

    /// The values, in the order of [`Metrics::NAMES`].
    pub fn values(&self) -> [f64; 7] {
        [
            self.loss,
            self.rewards_chosen,
            self.rewards_rejected,
            self.rewards_margins,
            self.rewards_accuracies,
            self.logps_chosen,
            self.logps_rejected,
        ]
    }

    /// `(name, value)` pairs, for logging.
    pub fn named(&self) -> [(&'static str, f64); 7] {
        let v = self.values();
        std::array::from_fn(|i| (Self::NAMES[i], v[i]))
    }

    /// The value of a metric by its TRL name.
    pub fn get(&self, name: &str) -> Option<f64> {
        self.named()
            .into_iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v)
    }

    /// Batch means from per-pair values `[batch]` (copied to the host once).
    fn from_tensors(
        loss: &Tensor,
        chosen_rewards: &Tensor,
        rejected_rewards: &Tensor,
        logps_chosen: &Tensor,
        logps_rejected: &Tensor,
    ) -> Result<Self> {
        let rows = Tensor::stack(
            &[
                chosen_rewards,
                rejected_rewards,
                logps_chosen,
                logps_rejected,
            ],
            0,
        )?
        .detach()
        .to_dtype(DType::F64)?
        .to_vec2::<f64>()?;
        let loss = loss.detach().to_dtype(DType::F64)?.to_scalar::<f64>()?;
        let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len().max(1) as f64;
        let (cr, rr) = (&rows[0], &rows[1]);
        let n = cr.len().max(1) as f64;
        let margins: Vec<f64> = cr.iter().zip(rr).map(|(c, r)| c - r).collect();
        let wins = cr.iter().zip(rr).filter(|(c, r)| c > r).count() as f64;
        Ok(Self {
            loss,
            rewards_chosen: mean(cr),
            rewards_rejected: mean(rr),
            rewards_margins: mean(&margins),
            rewards_accuracies: wins / n,
            logps_chosen: mean(&rows[2]),
            logps_rejected: mean(&rows[3]),
        })
    }
}

/// What [`compute`] returns.
#[derive(Clone, Debug)]
pub struct ObjectiveOutput {
    /// The scalar loss, differentiable with respect to the policy log-probs.
    pub loss: Tensor,
    /// The batch's metrics (host values).
    pub metrics: Metrics,
    /// fDPO only: the segment temperatures β_s, `[batch, n_segments]`.
    pub segment_betas: Option<Tensor>,
}

/// Computes `cfg.objective`'s loss and metrics for a batch.
///
/// `logps` may be per response (`[batch]`) or per segment
/// (`[batch, n_segments]`); fDPO needs the latter plus `reward_gaps` of the
/// same shape (ΔR_s = reward of the chosen segment minus reward of the
/// rejected one; any dtype, treated as constant). The other objectives add
/// the segments up and ignore `reward_gaps`.
pub fn compute(
    cfg: &ObjectiveConfig,
    logps: &PairLogps,
    reward_gaps: Option<&Tensor>,
) -> Result<ObjectiveOutput> {
    cfg.validate()
        .map_err(|e| ObjectiveError::Config(e.message))?;
    let shape = logps.check()?;
    match cfg.objective {
        Objective::Fdpo => {
            let gaps = reward_gaps.ok_or(ObjectiveError::Input {
                name: "reward_gaps",
                message: "fdpo needs per-segment reward gaps".into(),
            })?;
            if shape.len() != 2 {
                return Err(ObjectiveError::Shape {
                    name: "policy_chosen",
                    got: shape,
                    expected: "[batch, n_segments] for fdpo".into(),
                });
            }
            if gaps.dims() != shape.as_slice() {
                return Err(ObjectiveError::Shape {
                    name: "reward_gaps",
                    got: gaps.dims().to_vec(),
                    expected: format!("{shape:?} (the shape of the log-probs)"),
                });
            }
            fdpo(cfg, logps, gaps)
        }
        _ => sequence_objective(cfg, &logps.sum_segments()?),
    }
}

/// Numerically stable `log σ(x)`, element-wise, differentiable everywhere
/// (the gradient at 0 is ½, as it should be).
///
/// `log σ(x) = min(x, 0) − log(1 + e^{−|x|})`; both pieces are selected with
/// `where_cond` rather than built from `relu`/`abs`, whose one-sided
/// derivatives at 0 would give a wrong gradient at exactly zero margin —
/// the very first DPO step, where the policy equals the reference.
pub fn log_sigmoid(x: &Tensor) -> Result<Tensor> {
    let nonneg = x.ge(0.0)?;
    let zeros = x.zeros_like()?;
    let min_x0 = nonneg.where_cond(&zeros, x)?;
    let abs_x = nonneg.where_cond(x, &x.neg()?)?;
    let softplus_neg_abs = abs_x.neg()?.exp()?.affine(1.0, 1.0)?.log()?;
    Ok(min_x0.sub(&softplus_neg_abs)?)
}

/// fDPO's segment temperatures `β_s = β·[1 + α(2·w_s − 1)]` with
/// `w_s = softmax_s(λ_f·ΔR_s)`, for reward gaps `[batch, n_segments]`
/// (result in the gaps' dtype; no gradient flows into the gaps).
pub fn fdpo_segment_betas(cfg: &ObjectiveConfig, reward_gaps: &Tensor) -> Result<Tensor> {
    let scaled = reward_gaps.detach().affine(cfg.fdpo_lambda, 0.0)?;
    let w = candle_nn::ops::softmax(&scaled, D::Minus1)?;
    // β[1 + α(2w − 1)] = 2αβ·w + β(1 − α)
    Ok(w.affine(
        2.0 * cfg.fdpo_alpha * cfg.beta,
        cfg.beta * (1.0 - cfg.fdpo_alpha),
    )?)
}

/// The sequence-level objectives on `[batch]` inputs.
fn sequence_objective(cfg: &ObjectiveConfig, l: &PairLogps) -> Result<ObjectiveOutput> {
    let beta = cfg.beta;
    let eps = cfg.label_smoothing;
    let (pc, pr, rc, rr) = if cfg.objective == Objective::Ipo {
        // Per-token averages (TRL 0.x: average_log_prob for IPO). Empty
        // responses count as one token so nothing divides by zero.
        let nc = l.chosen_tokens.detach().maximum(1.0)?;
        let nr = l.rejected_tokens.detach().maximum(1.0)?;
        (
            l.policy_chosen.div(&nc)?,
            l.policy_rejected.div(&nr)?,
            l.reference_chosen.detach().div(&nc)?,
            l.reference_rejected.detach().div(&nr)?,
        )
    } else {
        (
            l.policy_chosen.clone(),
            l.policy_rejected.clone(),
            l.reference_chosen.detach(),
            l.reference_rejected.detach(),
        )
    };
    let h = pc.sub(&pr)?.sub(&rc.sub(&rr)?)?;
    let z = h.affine(beta, 0.0)?;
    let loss = match cfg.objective {
        Objective::Dpo => {
            let clean = log_sigmoid(&z)?.affine(-(1.0 - eps), 0.0)?;
            let flipped = log_sigmoid(&z.neg()?)?.affine(-eps, 0.0)?;
            clean.add(&flipped)?.mean_all()?
        }
        Objective::Robust => {
            let clean = log_sigmoid(&z)?.affine(-(1.0 - eps), 0.0)?;
            let flipped = log_sigmoid(&z.neg()?)?.affine(eps, 0.0)?;
            clean
                .add(&flipped)?
                .affine(1.0 / (1.0 - 2.0 * eps), 0.0)?
                .mean_all()?
        }
        Objective::Hinge => z.affine(-1.0, 1.0)?.relu()?.mean_all()?,
        Objective::Ipo => h.affine(1.0, -1.0 / (2.0 * beta))?.sqr()?.mean_all()?,
        Objective::Sft => {
            let tokens = l.chosen_tokens.detach().sum_all()?.maximum(1.0)?;
            pc.sum_all()?.neg()?.div(&tokens)?
        }
        Objective::Fdpo => {
            return Err(ObjectiveError::Input {
                name: "policy_chosen",
                message: "fdpo is computed per segment".into(),
            })
        }
    };
    let chosen_rewards = pc.detach().sub(&rc)?.affine(beta, 0.0)?;
    let rejected_rewards = pr.detach().sub(&rr)?.affine(beta, 0.0)?;
    let metrics = Metrics::from_tensors(&loss, &chosen_rewards, &rejected_rewards, &pc, &pr)?;
    Ok(ObjectiveOutput {
        loss,
        metrics,
        segment_betas: None,
    })
}

/// fDPO on `[batch, n_segments]` inputs.
fn fdpo(cfg: &ObjectiveConfig, l: &PairLogps, reward_gaps: &Tensor) -> Result<ObjectiveOutput> {
    let dtype = l.policy_chosen.dtype();
    let betas = fdpo_segment_betas(cfg, &reward_gaps.to_dtype(dtype)?)?;
    let chosen_ratio = l.policy_chosen.sub(&l.reference_chosen.detach())?;
    let rejected_ratio = l.policy_rejected.sub(&l.reference_rejected.detach())?;
    let f = chosen_ratio.sub(&rejected_ratio)?;
    let margin = betas.mul(&f)?.sum(D::Minus1)?;
    let loss = log_sigmoid(&margin)?.neg()?.mean_all()?;
    let chosen_rewards = betas.mul(&chosen_ratio.detach())?.sum(D::Minus1)?;
    let rejected_rewards = betas.mul(&rejected_ratio.detach())?.sum(D::Minus1)?;
    let logps_chosen = l.policy_chosen.detach().sum(D::Minus1)?;
    let logps_rejected = l.policy_rejected.detach().sum(D::Minus1)?;
    let metrics = Metrics::from_tensors(
        &loss,
        &chosen_rewards,
        &rejected_rewards,
        &logps_chosen,
        &logps_rejected,
    )?;
    Ok(ObjectiveOutput {
        loss,
        metrics,
        segment_betas: Some(betas),
    })
}

/// Summed log-probs and the number of tokens summed, from
/// [`sequence_logps`] (`[batch]`) or [`segment_logps`]
/// (`[batch, n_segments]`). `tokens` has the logits' dtype.
#[derive(Clone, Debug)]
pub struct LogpSums {
    /// Σ log p(label) over the counted tokens (differentiable in the logits).
    pub sum: Tensor,
    /// How many tokens were counted.
    pub tokens: Tensor,
}

/// Per-token log-probs of the labels, `[batch, T − 1]`, zero where the loss
/// mask is 0.
///
/// Shift convention (causal LM, as TRL's `_get_batch_logps`): the logits at
/// position t predict the token at t + 1, so entry t of the result is
/// `log softmax(logits[:, t])[labels[:, t + 1]]`, counted when
/// `loss_mask[:, t + 1] != 0`. `labels` are the input ids (`[batch, T]`,
/// u8/u32/i64; masked positions may hold anything, e.g. −100), `loss_mask`
/// is `[batch, T]` of any dtype, nonzero for the response tokens to score,
/// and `logits` is `[batch, T, vocab]`. Computed as the gathered logit minus
/// the log-sum-exp over the vocabulary, without materialising the full
/// log-softmax.
pub fn token_logps(logits: &Tensor, labels: &Tensor, loss_mask: &Tensor) -> Result<Tensor> {
    let (b, t, v) = logits.dims3()?;
    if t < 2 {
        return Err(ObjectiveError::Shape {
            name: "logits",
            got: logits.dims().to_vec(),
            expected: "[batch, T >= 2, vocab]".into(),
        });
    }
    for (name, x) in [("labels", labels), ("loss_mask", loss_mask)] {
        if x.dims() != [b, t] {
            return Err(ObjectiveError::Shape {
                name,
                got: x.dims().to_vec(),
                expected: format!("[{b}, {t}] (batch and length of the logits)"),
            });
        }
    }
    let keep = shifted(loss_mask)?.to_dtype(DType::F32)?.ne(0f32)?;
    let targets = masked_ids(&shifted(labels)?, &keep, v, "labels")?;
    // The last position predicts nothing: pad its target with id 0 so that
    // gather and log-sum-exp run on the logits as they are (no [B, T−1, V]
    // copy), then drop that position.
    let targets = Tensor::cat(&[&targets, &targets.narrow(1, 0, 1)?.zeros_like()?], 1)?;
    let logits = logits.contiguous()?;
    let picked = logits.gather(&targets.unsqueeze(2)?, 2)?.squeeze(2)?;
    let lse = logits.log_sum_exp(2)?;
    let per_token = picked.sub(&lse)?.narrow(1, 0, t - 1)?;
    Ok(keep.where_cond(&per_token, &per_token.zeros_like()?)?)
}

/// Per-sequence summed log-probs of the masked label tokens, `[batch]`
/// (see [`token_logps`] for the shift convention).
pub fn sequence_logps(logits: &Tensor, labels: &Tensor, loss_mask: &Tensor) -> Result<LogpSums> {
    let per_token = token_logps(logits, labels, loss_mask)?;
    let keep = shifted(loss_mask)?
        .to_dtype(DType::F32)?
        .ne(0f32)?
        .to_dtype(per_token.dtype())?;
    Ok(LogpSums {
        sum: per_token.sum(1)?,
        tokens: keep.sum(1)?,
    })
}

/// Per-segment summed log-probs, `[batch, n_segments]`.
///
/// `segment_ids` (`[batch, T]`, integer) give each label token's segment in
/// `0..n_segments`, aligned with `labels` (the id at t + 1 belongs to the
/// prediction made at t, like the mask). Masked positions may hold any id.
/// Summing the result over segments gives [`sequence_logps`].
pub fn segment_logps(
    logits: &Tensor,
    labels: &Tensor,
    loss_mask: &Tensor,
    segment_ids: &Tensor,
    n_segments: usize,
) -> Result<LogpSums> {
    if n_segments == 0 {
        return Err(ObjectiveError::Input {
            name: "n_segments",
            message: "must be at least 1".into(),
        });
    }
    if segment_ids.dims() != labels.dims() {
        return Err(ObjectiveError::Shape {
            name: "segment_ids",
            got: segment_ids.dims().to_vec(),
            expected: format!("{:?} (the shape of labels)", labels.dims()),
        });
    }
    let per_token = token_logps(logits, labels, loss_mask)?;
    let dtype = per_token.dtype();
    let keep = shifted(loss_mask)?.to_dtype(DType::F32)?.ne(0f32)?;
    let seg = masked_ids(&shifted(segment_ids)?, &keep, n_segments, "segment_ids")?;
    let classes =
        Tensor::arange(0u32, n_segments as u32, seg.device())?.reshape((1, 1, n_segments))?;
    // one_hot[b, t, s] = 1 when token t is in segment s and counted.
    let one_hot = seg
        .unsqueeze(2)?
        .broadcast_eq(&classes)?
        .to_dtype(dtype)?
        .broadcast_mul(&keep.to_dtype(dtype)?.unsqueeze(2)?)?;
    let sum = per_token.unsqueeze(2)?.broadcast_mul(&one_hot)?.sum(1)?;
    let tokens = one_hot.sum(1)?;
    Ok(LogpSums { sum, tokens })
}

/// Per-segment summed log-probs, `[batch, n_segments]`, from the final
/// hidden states `[batch, T, H]`, running the output `head` (`[N, H]` →
/// `[N, vocab]`) only at the positions that predict a counted label.
///
/// Same result as [`segment_logps`] (or, with `segments = None`, one
/// segment: [`sequence_logps`]) on `head(hidden)`, with the same shift
/// convention, without computing the `(T × vocab)` logits of the prompt,
/// image and padding positions: in preference training the prompt (576
/// image tokens on LLaVA-1.5) is most of the sequence, and the vocabulary
/// product and its log-sum-exp are the largest single cost after the
/// layers. `segments` is `(segment_ids, n_segments)` as in
/// [`segment_logps`].
pub fn response_logps(
    hidden: &Tensor,
    head: impl Fn(&Tensor) -> candle_core::Result<Tensor>,
    labels: &Tensor,
    loss_mask: &Tensor,
    segments: Option<(&Tensor, usize)>,
) -> Result<LogpSums> {
    let (b, t, h) = hidden.dims3()?;
    let n_seg = segments.map_or(1, |(_, n)| n);
    if n_seg == 0 {
        return Err(ObjectiveError::Input {
            name: "n_segments",
            message: "must be at least 1".into(),
        });
    }
    let mut checks = vec![("labels", labels), ("loss_mask", loss_mask)];
    if let Some((ids, _)) = segments {
        checks.push(("segment_ids", ids));
    }
    for (name, x) in checks {
        if x.dims() != [b, t] {
            return Err(ObjectiveError::Shape {
                name,
                got: x.dims().to_vec(),
                expected: format!("[{b}, {t}] (batch and length of the hidden states)"),
            });
        }
    }
    let mask = loss_mask.to_dtype(DType::F32)?.to_vec2::<f32>()?;
    let ids = labels.to_dtype(DType::I64)?.to_vec2::<i64>()?;
    let segs = match segments {
        Some((s, _)) => Some(s.to_dtype(DType::I64)?.to_vec2::<i64>()?),
        None => None,
    };
    let bad = |name: &'static str, x: i64, limit: &str| ObjectiveError::Input {
        name,
        message: format!("id {x} is outside 0..{limit}"),
    };
    let (mut positions, mut targets, mut slots) = (Vec::new(), Vec::new(), Vec::new());
    for r in 0..b {
        for p in 1..t {
            if mask[r][p] == 0.0 {
                continue;
            }
            let id = ids[r][p];
            if id < 0 || id > u32::MAX as i64 {
                return Err(bad("labels", id, "vocab"));
            }
            let s = segs.as_ref().map_or(0, |s| s[r][p]);
            if s < 0 || s >= n_seg as i64 {
                return Err(bad("segment_ids", s, &n_seg.to_string()));
            }
            positions.push((r * t + p - 1) as u32);
            targets.push(id as u32);
            slots.push(r * n_seg + s as usize);
        }
    }
    let device = hidden.device();
    let n = positions.len();
    if n == 0 {
        let zeros = Tensor::zeros((b, n_seg), hidden.dtype(), device)?;
        return Ok(LogpSums {
            sum: zeros.clone(),
            tokens: zeros,
        });
    }
    let rows = hidden
        .reshape((b * t, h))?
        .index_select(&Tensor::from_vec(positions, n, device)?, 0)?;
    let logits = head(&rows)?;
    let vocab = logits.dim(1)?;
    if let Some(&id) = targets.iter().find(|&&id| id as usize >= vocab) {
        return Err(bad("labels", i64::from(id), &vocab.to_string()));
    }
    let picked = logits
        .gather(&Tensor::from_vec(targets, (n, 1), device)?, 1)?
        .squeeze(1)?;
    let per_token = picked.sub(&logits.log_sum_exp(1)?)?;
    // one_hot[row · S + segment, k] = 1 for the k-th counted token.
    let mut one_hot = vec![0f32; b * n_seg * n];
    for (k, &slot) in slots.iter().enumerate() {
        one_hot[slot * n + k] = 1.0;
    }
    let one_hot = Tensor::from_vec(one_hot, (b * n_seg, n), device)?.to_dtype(per_token.dtype())?;
    let sum = one_hot
        .matmul(&per_token.unsqueeze(1)?)?
        .reshape((b, n_seg))?;
    let tokens = one_hot.sum(1)?.reshape((b, n_seg))?;
    Ok(LogpSums { sum, tokens })
}

/// Positions 1..T of a `[batch, T]` tensor (what the logits at 0..T−1 predict).
fn shifted(x: &Tensor) -> Result<Tensor> {
    let t = x.dim(1)?;
    Ok(x.narrow(1, 1, t - 1)?.contiguous()?)
}

/// Integer ids as u32 with masked positions set to 0, after checking that
/// every counted id lies in `0..limit`.
fn masked_ids(ids: &Tensor, keep: &Tensor, limit: usize, name: &'static str) -> Result<Tensor> {
    let dtype = ids.dtype();
    if !matches!(dtype, DType::U8 | DType::U32 | DType::I64) {
        return Err(ObjectiveError::Input {
            name,
            message: format!("dtype {dtype:?} is not an integer id type (u8, u32, i64)"),
        });
    }
    let zeroed = keep.where_cond(
        &ids.to_dtype(DType::I64)?,
        &ids.to_dtype(DType::I64)?.zeros_like()?,
    )?;
    let flat = zeroed.flatten_all()?.to_vec1::<i64>()?;
    if let Some(bad) = flat.iter().find(|&&x| x < 0 || x as u64 >= limit as u64) {
        return Err(ObjectiveError::Input {
            name,
            message: format!("id {bad} at a counted position is outside 0..{limit}"),
        });
    }
    Ok(zeroed.to_dtype(DType::U32)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    #[test]
    fn token_segments_feed_segment_logps() {
        use crate::core::grounded::BoxFormat;
        use crate::core::segment::{GroundedSegmenter, Segmenter};
        const T: u32 = GroundedSegmenter::TEXT;
        const B: u32 = GroundedSegmenter::BOX;
        // prompt token, then the response "a [1, 2, 3, 4]" as 3 tokens.
        let text = "a [1, 2, 3, 4]";
        let ids = GroundedSegmenter::new(BoxFormat::Ferret)
            .token_segments(text, &[(0, 1), (1, 3), (3, 14)])
            .unwrap();
        assert_eq!(ids, [T, B, B]);
        let dev = Device::Cpu;
        let seg: Vec<u32> = std::iter::once(0).chain(ids).collect();
        let seg = Tensor::new(seg.as_slice(), &dev)
            .unwrap()
            .unsqueeze(0)
            .unwrap();
        let labels = Tensor::new(&[[5u32, 1, 2, 3]], &dev).unwrap();
        let mask = Tensor::new(&[[0u8, 1, 1, 1]], &dev).unwrap();
        let logits = Tensor::arange(0f32, 24.0, &dev)
            .unwrap()
            .reshape((1, 4, 6))
            .unwrap()
            .sin()
            .unwrap();
        let per_seg = segment_logps(&logits, &labels, &mask, &seg, 2).unwrap();
        let whole = sequence_logps(&logits, &labels, &mask).unwrap();
        let parts: Vec<f32> = per_seg.sum.flatten_all().unwrap().to_vec1().unwrap();
        let total: Vec<f32> = whole.sum.to_vec1().unwrap();
        assert!((parts[0] + parts[1] - total[0]).abs() < 1e-5);
        assert_eq!(
            per_seg
                .tokens
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap(),
            [1.0, 2.0]
        );
    }

    #[test]
    fn metrics_carry_trl_names() {
        let m = Metrics {
            loss: 1.0,
            rewards_margins: 0.5,
            ..Metrics::default()
        };
        let v = serde_json::to_value(m).unwrap();
        assert_eq!(v["rewards/margins"], 0.5);
        assert_eq!(m.get("loss"), Some(1.0));
    }

    #[test]
    fn response_logps_match_the_full_logits_path_with_gradients() {
        let dev = Device::Cpu;
        let (b, t, h, v) = (3usize, 7usize, 5usize, 11usize);
        let hidden = Var::from_tensor(&Tensor::randn(0f32, 1.0, (b, t, h), &dev).unwrap()).unwrap();
        let w = Tensor::randn(0f32, 1.0, (v, h), &dev).unwrap();
        let head = |x: &Tensor| x.broadcast_matmul(&w.t()?);
        let labels: Vec<u32> = (0..b * t).map(|i| (i * 7 % v) as u32).collect();
        let labels = Tensor::from_vec(labels, (b, t), &dev).unwrap();
        let mask: Vec<f32> = (0..b * t)
            .map(|i| {
                if i % t >= 2 + i / t && i % t != 5 {
                    1.0
                } else {
                    0.0
                }
            })
            .collect();
        let mask = Tensor::from_vec(mask, (b, t), &dev).unwrap();
        let segs: Vec<u32> = (0..b * t).map(|i| (i % 2) as u32).collect();
        let segs = Tensor::from_vec(segs, (b, t), &dev).unwrap();
        let logits = head(hidden.as_tensor()).unwrap();
        for segments in [None, Some((&segs, 2))] {
            let full = match segments {
                Some((s, n)) => segment_logps(&logits, &labels, &mask, s, n).unwrap(),
                None => {
                    let l = sequence_logps(&logits, &labels, &mask).unwrap();
                    LogpSums {
                        sum: l.sum.unsqueeze(1).unwrap(),
                        tokens: l.tokens.unsqueeze(1).unwrap(),
                    }
                }
            };
            let fast = response_logps(hidden.as_tensor(), head, &labels, &mask, segments).unwrap();
            let a = full.sum.to_vec2::<f32>().unwrap();
            let c = fast.sum.to_vec2::<f32>().unwrap();
            for (x, y) in a.iter().flatten().zip(c.iter().flatten()) {
                assert!((x - y).abs() < 1e-4, "{a:?} vs {c:?}");
            }
            assert_eq!(
                full.tokens.to_vec2::<f32>().unwrap(),
                fast.tokens.to_vec2::<f32>().unwrap()
            );
            let g1 = full.sum.sum_all().unwrap().backward().unwrap();
            let g2 = fast.sum.sum_all().unwrap().backward().unwrap();
            let d = (g1.get(hidden.as_tensor()).unwrap() - g2.get(hidden.as_tensor()).unwrap())
                .unwrap()
                .abs()
                .unwrap()
                .max_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap();
            assert!(d < 1e-4, "gradients differ by {d}");
        }
        let bad = Tensor::full(99u32, (b, t), &dev).unwrap();
        assert!(response_logps(hidden.as_tensor(), head, &bad, &mask, None).is_err());
    }

    use proptest::prelude::*;
    use serde::Deserialize;
    use std::collections::BTreeMap;

    const REFERENCE: &str = include_str!("testdata/objectives_reference.json");
    const TOL: f64 = 1e-5;

    #[derive(Deserialize)]
    struct Reference {
        cases: Vec<Case>,
        logps_from_logits: LogitsCase,
    }

    #[derive(Deserialize)]
    struct Case {
        name: String,
        config: ObjectiveConfig,
        inputs: BTreeMap<String, serde_json::Value>,
        expected: BTreeMap<String, f64>,
        grad: BTreeMap<String, serde_json::Value>,
        segment_betas: Option<Vec<Vec<f64>>>,
    }

    #[derive(Deserialize)]
    struct LogitsCase {
        logits: Vec<Vec<Vec<f64>>>,
        labels: Vec<Vec<u32>>,
        loss_mask: Vec<Vec<u8>>,
        segment_ids: Vec<Vec<u32>>,
        n_segments: usize,
        sequence_sum: Vec<f64>,
        sequence_tokens: Vec<f64>,
        segment_sum: Vec<Vec<f64>>,
        segment_tokens: Vec<Vec<f64>>,
    }

    fn reference() -> Reference {
        serde_json::from_str(REFERENCE).expect("reference JSON parses")
    }

    /// A `[n]` or `[n, m]` tensor from a JSON array.
    fn json_tensor(v: &serde_json::Value, dtype: DType) -> Tensor {
        let rows = v.as_array().expect("array");
        let t = if rows.first().is_some_and(|r| r.is_array()) {
            let m: Vec<Vec<f64>> = serde_json::from_value(v.clone()).expect("2-D array");
            let (n, k) = (m.len(), m[0].len());
            let flat: Vec<f64> = m.into_iter().flatten().collect();
            Tensor::from_vec(flat, (n, k), &Device::Cpu).unwrap()
        } else {
            let x: Vec<f64> = serde_json::from_value(v.clone()).expect("1-D array");
            Tensor::new(x, &Device::Cpu).unwrap()
        };
        t.to_dtype(dtype).unwrap()
    }

    fn flat(t: &Tensor) -> Vec<f64> {
        t.to_dtype(DType::F64)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap()
    }

    fn max_abs_diff(a: &[f64], b: &[f64]) -> f64 {
        assert_eq!(a.len(), b.len());
        a.iter()
            .zip(b)
            .map(|(x, y)| (x - y).abs())
            .fold(0.0, f64::max)
    }

    /// Pair inputs whose policy tensors are `Var`s (returned for gradients).
    fn pair(inputs: &BTreeMap<String, serde_json::Value>, dtype: DType) -> (PairLogps, Var, Var) {
        let t = |k: &str| json_tensor(&inputs[k], dtype);
        let pc = Var::from_tensor(&t("policy_chosen")).unwrap();
        let pr = Var::from_tensor(&t("policy_rejected")).unwrap();
        let logps = PairLogps {
            policy_chosen: pc.as_tensor().clone(),
            policy_rejected: pr.as_tensor().clone(),
            reference_chosen: t("reference_chosen"),
            reference_rejected: t("reference_rejected"),
            chosen_tokens: t("chosen_tokens"),
            rejected_tokens: t("rejected_tokens"),
        };
        (logps, pc, pr)
    }

    /// A `[rows, N]` f64 tensor.
    fn mat<const N: usize>(rows: &[[f64; N]]) -> Tensor {
        Tensor::from_vec(rows.concat(), (rows.len(), N), &Device::Cpu).unwrap()
    }

    fn seq(values: &[f64]) -> Tensor {
        Tensor::new(values, &Device::Cpu).unwrap()
    }

    fn seq_pair(pc: &[f64], pr: &[f64], rc: &[f64], rr: &[f64]) -> PairLogps {
        let ones = vec![1.0; pc.len()];
        PairLogps {
            policy_chosen: seq(pc),
            policy_rejected: seq(pr),
            reference_chosen: seq(rc),
            reference_rejected: seq(rr),
            chosen_tokens: seq(&ones),
            rejected_tokens: seq(&ones),
        }
    }

    fn loss_of(cfg: &ObjectiveConfig, l: &PairLogps, gaps: Option<&Tensor>) -> f64 {
        compute(cfg, l, gaps).unwrap().metrics.loss
    }

    #[test]
    fn matches_pytorch_reference_for_every_objective() {
        let r = reference();
        let objectives: std::collections::BTreeSet<_> =
            r.cases.iter().map(|c| c.config.objective).collect();
        assert_eq!(
            objectives.len(),
            Objective::ALL.len(),
            "every objective has a case"
        );
        for dtype in [DType::F64, DType::F32] {
            let (mut worst_metric, mut worst_grad) = (0.0f64, 0.0f64);
            for case in &r.cases {
                let (logps, pc, pr) = pair(&case.inputs, dtype);
                let gaps = case
                    .inputs
                    .get("reward_gaps")
                    .map(|g| json_tensor(g, dtype));
                let out = compute(&case.config, &logps, gaps.as_ref()).unwrap();
                assert_eq!(case.expected.len(), Metrics::NAMES.len());
                for (name, want) in &case.expected {
                    let got = out.metrics.get(name).unwrap();
                    let err = (got - want).abs();
                    worst_metric = worst_metric.max(err);
                    assert!(
                        err <= TOL,
                        "{} {dtype:?} {name}: {got} vs {want}",
                        case.name
                    );
                }
                if let Some(want) = &case.segment_betas {
                    let got = flat(out.segment_betas.as_ref().unwrap());
                    let want: Vec<f64> = want.iter().flatten().copied().collect();
                    assert!(max_abs_diff(&got, &want) <= TOL, "{} betas", case.name);
                }
                let grads = out.loss.backward().unwrap();
                for (name, var) in [("policy_chosen", &pc), ("policy_rejected", &pr)] {
                    let want = flat(&json_tensor(&case.grad[name], DType::F64));
                    let got = grads
                        .get(var.as_tensor())
                        .map(flat)
                        .unwrap_or_else(|| vec![0.0; want.len()]);
                    let err = max_abs_diff(&got, &want);
                    worst_grad = worst_grad.max(err);
                    assert!(
                        err <= TOL,
                        "{} {dtype:?} d/d{name}: {got:?} vs {want:?}",
                        case.name
                    );
                }
            }
            eprintln!(
                "{dtype:?}: max |metric err| {worst_metric:.2e}, max |grad err| {worst_grad:.2e}"
            );
        }
    }

    #[test]
    fn logps_from_logits_match_pytorch_reference() {
        let c = reference().logps_from_logits;
        let (b, t, v) = (c.logits.len(), c.logits[0].len(), c.logits[0][0].len());
        let dev = Device::Cpu;
        let logits: Vec<f64> = c.logits.iter().flatten().flatten().copied().collect();
        let labels: Vec<u32> = c.labels.iter().flatten().copied().collect();
        let mask: Vec<u8> = c.loss_mask.iter().flatten().copied().collect();
        let segs: Vec<u32> = c.segment_ids.iter().flatten().copied().collect();
        let labels = Tensor::from_vec(labels, (b, t), &dev).unwrap();
        let mask = Tensor::from_vec(mask, (b, t), &dev).unwrap();
        let segs = Tensor::from_vec(segs, (b, t), &dev).unwrap();
        for dtype in [DType::F64, DType::F32] {
            let logits = Tensor::from_vec(logits.clone(), (b, t, v), &dev)
                .unwrap()
                .to_dtype(dtype)
                .unwrap();
            let s = sequence_logps(&logits, &labels, &mask).unwrap();
            assert!(max_abs_diff(&flat(&s.sum), &c.sequence_sum) <= TOL);
            assert_eq!(flat(&s.tokens), c.sequence_tokens);
            let g = segment_logps(&logits, &labels, &mask, &segs, c.n_segments).unwrap();
            assert_eq!(g.sum.dims(), [b, c.n_segments]);
            let want: Vec<f64> = c.segment_sum.iter().flatten().copied().collect();
            assert!(
                max_abs_diff(&flat(&g.sum), &want) <= TOL,
                "{:?}",
                flat(&g.sum)
            );
            let want: Vec<f64> = c.segment_tokens.iter().flatten().copied().collect();
            assert_eq!(flat(&g.tokens), want);
        }
    }

    #[test]
    fn dpo_at_zero_margin_is_ln2_with_half_gradient() {
        let beta = 0.1;
        let pc = Var::new(&[-5.0f64, -9.0], &Device::Cpu).unwrap();
        let pr = Var::new(&[-6.0f64, -3.0], &Device::Cpu).unwrap();
        // Policy equals reference: the first step of a LoRA run.
        let l = PairLogps {
            policy_chosen: pc.as_tensor().clone(),
            policy_rejected: pr.as_tensor().clone(),
            reference_chosen: seq(&[-5.0, -9.0]),
            reference_rejected: seq(&[-6.0, -3.0]),
            chosen_tokens: seq(&[3.0, 4.0]),
            rejected_tokens: seq(&[3.0, 4.0]),
        };
        let out = compute(&ObjectiveConfig::default(), &l, None).unwrap();
        assert!((out.metrics.loss - std::f64::consts::LN_2).abs() < 1e-12);
        assert_eq!(out.metrics.rewards_margins, 0.0);
        assert_eq!(out.metrics.rewards_accuracies, 0.0, "a tie is not a win");
        let grads = out.loss.backward().unwrap();
        // dL/dπc = −β·σ(0)/B = −β/4, dL/dπr = +β/4.
        for (var, sign) in [(&pc, -1.0), (&pr, 1.0)] {
            for g in flat(grads.get(var.as_tensor()).unwrap()) {
                assert!((g - sign * beta / 4.0).abs() < 1e-12, "{g}");
            }
        }
    }

    #[test]
    fn dpo_gradient_matches_analytic_formula() {
        let beta = 0.3;
        let cfg = ObjectiveConfig {
            beta,
            ..ObjectiveConfig::default()
        };
        let (pcv, prv) = ([-4.0, -11.0, -2.5], [-7.0, -10.0, -8.0]);
        let (rc, rr) = ([-5.0, -10.5, -3.0], [-6.5, -10.25, -7.0]);
        let pc = Var::new(&pcv, &Device::Cpu).unwrap();
        let pr = Var::new(&prv, &Device::Cpu).unwrap();
        let mut l = seq_pair(&pcv, &prv, &rc, &rr);
        l.policy_chosen = pc.as_tensor().clone();
        l.policy_rejected = pr.as_tensor().clone();
        let grads = compute(&cfg, &l, None).unwrap().loss.backward().unwrap();
        let gc = flat(grads.get(pc.as_tensor()).unwrap());
        let gr = flat(grads.get(pr.as_tensor()).unwrap());
        for i in 0..3 {
            let h = (pcv[i] - prv[i]) - (rc[i] - rr[i]);
            let s = 1.0 / (1.0 + (beta * h).exp()); // σ(−βh)
            assert!((gc[i] + beta * s / 3.0).abs() < 1e-12);
            assert!((gr[i] - beta * s / 3.0).abs() < 1e-12);
        }
    }

    fn seg_pair(pc: &[[f64; 2]], pr: &[[f64; 2]], rc: &[[f64; 2]], rr: &[[f64; 2]]) -> PairLogps {
        let t = |x: &[[f64; 2]]| mat(x);
        let ones = vec![[1.0; 2]; pc.len()];
        PairLogps {
            policy_chosen: t(pc),
            policy_rejected: t(pr),
            reference_chosen: t(rc),
            reference_rejected: t(rr),
            chosen_tokens: t(&ones),
            rejected_tokens: t(&ones),
        }
    }

    fn example_segments() -> PairLogps {
        seg_pair(
            &[[-8.0, -4.5], [-20.0, -10.25], [-5.0, -2.0]],
            &[[-9.5, -3.0], [-18.0, -12.0], [-6.5, -2.5]],
            &[[-8.5, -4.0], [-19.5, -11.0], [-5.25, -2.25]],
            &[[-9.0, -3.5], [-19.0, -11.5], [-6.0, -2.75]],
        )
    }

    #[test]
    fn fdpo_with_alpha_zero_is_dpo_on_segment_sums() {
        let l = example_segments();
        let gaps = Tensor::new(&[[0.0f64, 0.6], [0.35, -0.2], [1.5, 0.9]], &Device::Cpu).unwrap();
        let fdpo = ObjectiveConfig {
            fdpo_alpha: 0.0,
            ..ObjectiveConfig::new(Objective::Fdpo)
        };
        let dpo = ObjectiveConfig::new(Objective::Dpo);
        let a = compute(&fdpo, &l, Some(&gaps)).unwrap().metrics;
        let b = compute(&dpo, &l.sum_segments().unwrap(), None)
            .unwrap()
            .metrics;
        assert!(
            max_abs_diff(&a.values(), &b.values()) < 1e-12,
            "{a:?} vs {b:?}"
        );
        // DPO on per-segment inputs sums the segments itself.
        let c = compute(&dpo, &l, Some(&gaps)).unwrap().metrics;
        assert!(max_abs_diff(&b.values(), &c.values()) < 1e-12);
    }

    #[test]
    fn fdpo_with_equal_gaps_is_dpo() {
        let l = example_segments();
        let gaps = Tensor::new(&[[0.4f64, 0.4], [-1.0, -1.0], [0.0, 0.0]], &Device::Cpu).unwrap();
        let fdpo = ObjectiveConfig::new(Objective::Fdpo);
        let out = compute(&fdpo, &l, Some(&gaps)).unwrap();
        for b in flat(out.segment_betas.as_ref().unwrap()) {
            assert!((b - 0.1).abs() < 1e-15);
        }
        let dpo = compute(&ObjectiveConfig::default(), &l, None)
            .unwrap()
            .metrics;
        assert!(max_abs_diff(&out.metrics.values(), &dpo.values()) < 1e-12);
    }

    #[test]
    fn fdpo_with_equal_gaps_over_three_segments_rescales_beta() {
        // w_s = 1/3, so β_s = β·(1 + α(2/3 − 1)) for every segment.
        let t = |x: &[[f64; 3]]| mat(x);
        let l = PairLogps {
            policy_chosen: t(&[[-3.0, -5.5, -1.0], [-7.25, -2.0, -4.0]]),
            policy_rejected: t(&[[-4.0, -5.0, -2.5], [-6.0, -3.5, -4.75]]),
            reference_chosen: t(&[[-3.5, -5.0, -1.5], [-7.0, -2.5, -4.25]]),
            reference_rejected: t(&[[-3.75, -5.25, -2.0], [-6.5, -3.0, -4.5]]),
            chosen_tokens: t(&[[1.0; 3]; 2]),
            rejected_tokens: t(&[[1.0; 3]; 2]),
        };
        let gaps = t(&[[0.7; 3], [-0.2; 3]]);
        let cfg = ObjectiveConfig::new(Objective::Fdpo);
        let beta = cfg.beta * (1.0 + cfg.fdpo_alpha * (2.0 / 3.0 - 1.0));
        let a = compute(&cfg, &l, Some(&gaps)).unwrap().metrics;
        let dpo = ObjectiveConfig {
            beta,
            ..ObjectiveConfig::default()
        };
        let b = compute(&dpo, &l, None).unwrap().metrics;
        assert!(max_abs_diff(&a.values(), &b.values()) < 1e-12);
    }

    #[test]
    fn fdpo_weights_the_segment_with_the_larger_gap() {
        let cfg = ObjectiveConfig::new(Objective::Fdpo);
        let gaps = Tensor::new(&[[0.0f64, 1.0]], &Device::Cpu).unwrap();
        let b = flat(&fdpo_segment_betas(&cfg, &gaps).unwrap());
        let w1 = 1.0 / (1.0 + (-0.6f64).exp());
        assert!((b[1] - 0.1 * (1.0 + 0.3 * (2.0 * w1 - 1.0))).abs() < 1e-12);
        assert!((b[0] - 0.1 * (1.0 + 0.3 * (1.0 - 2.0 * w1))).abs() < 1e-12);
        assert!(
            (b[0] + b[1] - 0.2).abs() < 1e-12,
            "two segments keep Σβ_s = 2β"
        );
    }

    #[test]
    fn fdpo_gradient_matches_finite_differences() {
        let cfg = ObjectiveConfig {
            fdpo_alpha: 0.5,
            fdpo_lambda: 1.5,
            ..ObjectiveConfig::new(Objective::Fdpo)
        };
        let gaps = Tensor::new(&[[0.2f64, -0.3], [1.0, 0.5], [0.0, 0.9]], &Device::Cpu).unwrap();
        let base = example_segments();
        let pc = Var::from_tensor(&base.policy_chosen).unwrap();
        let mut l = base.clone();
        l.policy_chosen = pc.as_tensor().clone();
        let grads = compute(&cfg, &l, Some(&gaps))
            .unwrap()
            .loss
            .backward()
            .unwrap();
        let analytic = flat(grads.get(pc.as_tensor()).unwrap());
        let values = flat(&base.policy_chosen);
        let h = 1e-6;
        for (i, g) in analytic.iter().enumerate() {
            let at = |delta: f64| {
                let mut v = values.clone();
                v[i] += delta;
                let mut l = base.clone();
                l.policy_chosen = Tensor::from_vec(v, (3, 2), &Device::Cpu).unwrap();
                loss_of(&cfg, &l, Some(&gaps))
            };
            let numeric = (at(h) - at(-h)) / (2.0 * h);
            assert!((numeric - g).abs() < 1e-8, "entry {i}: {numeric} vs {g}");
        }
    }

    #[test]
    fn variants_reduce_to_their_closed_forms() {
        let l = seq_pair(&[-2.0], &[-4.0], &[-3.0], &[-3.0]); // h = 2
        let z: f64 = 0.1 * 2.0;
        let ls = |x: f64| -(1.0 + (-x).exp()).ln();
        let cfg = |objective, label_smoothing| ObjectiveConfig {
            objective,
            label_smoothing,
            ..ObjectiveConfig::default()
        };
        let close = |a: f64, b: f64| assert!((a - b).abs() < 1e-12, "{a} vs {b}");
        close(loss_of(&cfg(Objective::Dpo, 0.0), &l, None), -ls(z));
        close(
            loss_of(&cfg(Objective::Dpo, 0.2), &l, None),
            -0.8 * ls(z) - 0.2 * ls(-z),
        );
        close(loss_of(&cfg(Objective::Robust, 0.0), &l, None), -ls(z));
        close(
            loss_of(&cfg(Objective::Robust, 0.2), &l, None),
            (-0.8 * ls(z) + 0.2 * ls(-z)) / 0.6,
        );
        close(loss_of(&cfg(Objective::Hinge, 0.0), &l, None), 0.8);
        close(
            loss_of(&cfg(Objective::Ipo, 0.0), &l, None),
            (2.0f64 - 5.0).powi(2),
        );
        close(loss_of(&cfg(Objective::Sft, 0.0), &l, None), 2.0);
        // Hinge saturates beyond βh = 1.
        let far = seq_pair(&[0.0], &[-30.0], &[0.0], &[0.0]);
        close(loss_of(&cfg(Objective::Hinge, 0.0), &far, None), 0.0);
    }

    #[test]
    fn ipo_averages_per_token_and_sft_normalises_over_the_batch() {
        let mut l = seq_pair(
            &[-10.0, -4.0],
            &[-20.0, -9.0],
            &[-12.0, -5.0],
            &[-16.0, -6.0],
        );
        l.chosen_tokens = seq(&[5.0, 2.0]);
        l.rejected_tokens = seq(&[4.0, 3.0]);
        let ipo = compute(&ObjectiveConfig::new(Objective::Ipo), &l, None)
            .unwrap()
            .metrics;
        let h = [(-2.0 + 5.0) - (-2.4 + 4.0), (-2.0 + 3.0) - (-2.5 + 2.0)];
        let want = h.iter().map(|h| (h - 5.0f64).powi(2)).sum::<f64>() / 2.0;
        assert!((ipo.loss - want).abs() < 1e-12);
        assert!(
            (ipo.logps_chosen - (-2.0)).abs() < 1e-12,
            "IPO logs per-token averages"
        );
        let sft = compute(&ObjectiveConfig::new(Objective::Sft), &l, None)
            .unwrap()
            .metrics;
        assert!((sft.loss - 14.0 / 7.0).abs() < 1e-12);
        // Empty responses do not divide by zero.
        l.chosen_tokens = seq(&[0.0, 0.0]);
        l.rejected_tokens = seq(&[0.0, 0.0]);
        for o in [Objective::Ipo, Objective::Sft] {
            assert!(loss_of(&ObjectiveConfig::new(o), &l, None).is_finite());
        }
    }

    #[test]
    fn log_sigmoid_is_stable_and_has_the_right_gradient() {
        let xs = [-1e4, -50.0, -1.0, 0.0, 1.0, 50.0, 1e4];
        for dtype in [DType::F32, DType::F64] {
            let x = Var::from_tensor(&seq(&xs).to_dtype(dtype).unwrap()).unwrap();
            let y = log_sigmoid(x.as_tensor()).unwrap();
            let grads = y.sum_all().unwrap().backward().unwrap();
            let g = flat(grads.get(x.as_tensor()).unwrap());
            for ((x, y), g) in xs.iter().zip(flat(&y)).zip(g) {
                let want = x.min(0.0) - (-x.abs()).exp().ln_1p();
                let sig_neg = 1.0 / (1.0 + x.exp());
                assert!(
                    (y - want).abs() <= 1e-6 * want.abs().max(1.0),
                    "{x}: {y} vs {want}"
                );
                assert!((g - sig_neg).abs() < 1e-6, "{x}: d = {g} vs {sig_neg}");
            }
        }
    }

    #[test]
    fn gradients_flow_from_loss_to_logits() {
        let dev = Device::Cpu;
        let logits = Var::from_tensor(
            &Tensor::new(
                &[[
                    [0.5f64, -1.0, 2.0],
                    [0.0, 1.0, -0.5],
                    [1.5, 0.25, 0.0],
                    [-1.0, 0.0, 1.0],
                ]],
                &dev,
            )
            .unwrap(),
        )
        .unwrap();
        let labels = Tensor::new(&[[0u32, 2, 1, 0]], &dev).unwrap();
        let mask = Tensor::new(&[[0u8, 1, 1, 1]], &dev).unwrap();
        let segs = Tensor::new(&[[0u32, 0, 1, 1]], &dev).unwrap();
        let sum_of = |l: &Tensor| {
            let s = segment_logps(l, &labels, &mask, &segs, 2).unwrap().sum;
            s.narrow(1, 1, 1).unwrap().sum_all().unwrap()
        };
        let grads = sum_of(logits.as_tensor()).backward().unwrap();
        let g = flat(grads.get(logits.as_tensor()).unwrap());
        let base = flat(logits.as_tensor());
        let h = 1e-6;
        for i in 0..base.len() {
            let at = |d: f64| {
                let mut v = base.clone();
                v[i] += d;
                let t = Tensor::from_vec(v, (1, 4, 3), &dev).unwrap();
                sum_of(&t).to_scalar::<f64>().unwrap()
            };
            let numeric = (at(h) - at(-h)) / (2.0 * h);
            assert!(
                (numeric - g[i]).abs() < 1e-7,
                "logit {i}: {numeric} vs {}",
                g[i]
            );
        }
        // Segment 1 holds labels 1 and 0 predicted at positions 1 and 2;
        // position 0 (predicting a segment-0 token) and the last position
        // (predicts nothing) get no gradient.
        assert!(g[..3].iter().chain(&g[9..]).all(|x| *x == 0.0));
    }

    #[test]
    fn masked_labels_may_hold_ignore_ids() {
        let dev = Device::Cpu;
        let logits = Tensor::zeros((1, 3, 4), DType::F32, &dev).unwrap();
        let labels = Tensor::new(&[[-100i64, 3, -100]], &dev).unwrap();
        let mask = Tensor::new(&[[0f32, 1.0, 0.0]], &dev).unwrap();
        let s = sequence_logps(&logits, &labels, &mask).unwrap();
        assert!((flat(&s.sum)[0] + 4f64.ln()).abs() < 1e-6);
        assert_eq!(flat(&s.tokens), [1.0]);
        let unmasked = Tensor::new(&[[0f32, 1.0, 1.0]], &dev).unwrap();
        let err = sequence_logps(&logits, &labels, &unmasked).unwrap_err();
        assert!(err.to_string().contains("-100"), "{err}");
        let big = Tensor::new(&[[0u32, 4, 0]], &dev).unwrap();
        assert!(sequence_logps(&logits, &big, &mask).is_err());
        let segs = Tensor::new(&[[0u32, 2, 0]], &dev).unwrap();
        assert!(segment_logps(&logits, &labels, &mask, &segs, 2).is_err());
    }

    #[test]
    fn bad_inputs_are_errors_not_panics() {
        let l = seq_pair(&[-1.0, -2.0], &[-3.0, -1.0], &[-1.0, -2.0], &[-3.0, -1.0]);
        let fdpo = ObjectiveConfig::new(Objective::Fdpo);
        assert!(compute(&fdpo, &l, None).is_err(), "fdpo needs gaps");
        let gaps = Tensor::zeros((2, 2), DType::F64, &Device::Cpu).unwrap();
        assert!(
            compute(&fdpo, &l, Some(&gaps)).is_err(),
            "fdpo needs segments"
        );
        let s = example_segments();
        let wrong = Tensor::zeros((3, 3), DType::F64, &Device::Cpu).unwrap();
        assert!(compute(&fdpo, &s, Some(&wrong)).is_err());
        let mut short = l.clone();
        short.reference_rejected = seq(&[0.0]);
        let err = compute(&ObjectiveConfig::default(), &short, None).unwrap_err();
        assert!(err.to_string().contains("reference_rejected"), "{err}");
        let mut mixed = l.clone();
        mixed.chosen_tokens = mixed.chosen_tokens.to_dtype(DType::F32).unwrap();
        assert!(compute(&ObjectiveConfig::default(), &mixed, None).is_err());
        let logits = Tensor::zeros((1, 1, 4), DType::F32, &Device::Cpu).unwrap();
        let one = Tensor::zeros((1, 1), DType::U32, &Device::Cpu).unwrap();
        assert!(
            sequence_logps(&logits, &one, &one).is_err(),
            "T = 1 predicts nothing"
        );
    }

    proptest! {
        #[test]
        fn losses_are_finite_for_finite_inputs(
            values in proptest::collection::vec(-500.0f32..0.0, 24),
            gaps in proptest::collection::vec(-10.0f32..10.0, 6),
            tokens in proptest::collection::vec(0.0f32..64.0, 12),
            beta in 0.01f64..5.0,
            eps in 0.0f64..0.45,
            alpha in 0.0f64..=1.0,
            lambda in -5.0f64..5.0,
        ) {
            let t = |i: usize| Tensor::from_slice(&values[i * 6..(i + 1) * 6], (3, 2), &Device::Cpu).unwrap();
            let n = |i: usize| Tensor::from_slice(&tokens[i * 6..(i + 1) * 6], (3, 2), &Device::Cpu).unwrap().round().unwrap();
            let l = PairLogps {
                policy_chosen: t(0),
                policy_rejected: t(1),
                reference_chosen: t(2),
                reference_rejected: t(3),
                chosen_tokens: n(0),
                rejected_tokens: n(1),
            };
            let gaps = Tensor::from_slice(&gaps, (3, 2), &Device::Cpu).unwrap();
            for objective in Objective::ALL {
                let label_smoothing = if objective.uses_label_smoothing() { eps } else { 0.0 };
                let cfg = ObjectiveConfig { objective, beta, label_smoothing, fdpo_alpha: alpha, fdpo_lambda: lambda };
                let out = compute(&cfg, &l, Some(&gaps)).unwrap();
                for (name, v) in out.metrics.named() {
                    prop_assert!(v.is_finite(), "{objective} {name} = {v}");
                }
                prop_assert!((0.0..=1.0).contains(&out.metrics.rewards_accuracies));
                if objective != Objective::Robust {
                    prop_assert!(out.metrics.loss >= 0.0, "{objective}: {}", out.metrics.loss);
                }
            }
        }
    }
}
