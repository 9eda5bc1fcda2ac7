//! Batched autoregressive decoding over the Llama decoder, kept out of the
//! model as candle keeps it (`LogitsProcessor`): the model gives logits,
//! a [`Sampler`] per sequence picks tokens.
//!
//! Prompts of different lengths decode together: they are left-padded
//! (the attention mask marks padding with 0, and positions come from the
//! mask, as transformers' `generate` computes them), prefilled in one
//! forward that fills the KV cache, then extended one token per step for
//! every row. A row that finished keeps decoding a dummy token until all
//! rows finish, which never changes the other rows.
//!
//! Every row has its own sampler and its own seeded random stream, so a
//! sequence's tokens do not depend on which other sequences share its
//! batch (up to floating-point summation order, which padding can change
//! in the last bits). Greedy picks the first highest logit, as
//! `torch.argmax`.

use candle_core::{DType, Tensor};

use super::llama::{KvCache, Llama};
use super::lora::AdapterMode;
use super::{ModelError, Result};
use crate::core::rng::SplitMix64;

/// How the next token is chosen.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Sampling {
    /// Highest-probability token (first on ties, like `torch.argmax`).
    Greedy,
    /// Softmax at `temperature`, restricted to the smallest set of tokens
    /// whose probability reaches `top_p` (nucleus sampling), drawn from a
    /// generator seeded with `seed`.
    TopP {
        /// Softmax temperature (> 0).
        temperature: f64,
        /// Nucleus mass in `(0, 1]`.
        top_p: f64,
        /// Seed of the sampling stream.
        seed: u64,
    },
}

impl Sampling {
    /// Checks the parameters.
    pub fn validate(&self) -> Result<()> {
        if let Sampling::TopP {
            temperature, top_p, ..
        } = *self
        {
            if !(temperature > 0.0 && temperature.is_finite() && top_p > 0.0 && top_p <= 1.0) {
                return Err(ModelError::Input(format!(
                    "sampling needs temperature > 0 and top_p in (0, 1], got {temperature} and {top_p}"
                )));
            }
        }
        Ok(())
    }

    /// The same settings with another seed (greedy is unchanged).
    pub fn with_seed(self, seed: u64) -> Sampling {
        match self {
            Sampling::Greedy => Sampling::Greedy,
            Sampling::TopP {
                temperature, top_p, ..
            } => Sampling::TopP {
                temperature,
                top_p,
                seed,
            },
        }
    }
}

/// Generation settings.
#[derive(Debug, Clone, PartialEq)]
pub struct GenerationConfig {
    /// Most tokens generated per sequence.
    pub max_new_tokens: usize,
    /// Token choice. With [`Sampling::TopP`], row `i` of a batch draws
    /// from its own stream seeded by [`row_seed`]`(seed, i)`; pass
    /// samplers to [`generate`] to seed rows yourself.
    pub sampling: Sampling,
    /// Tokens that end a sequence (not included in the output).
    pub eos_token_ids: Vec<u32>,
    /// End-of-sequence tokens are not picked before this many tokens
    /// (transformers' `min_new_tokens`; benchmarks use it to decode a
    /// fixed length).
    pub min_new_tokens: usize,
}

impl GenerationConfig {
    /// Greedy decoding of at most `max_new_tokens`, ending at `eos`.
    pub fn greedy(max_new_tokens: usize, eos: &[u32]) -> Self {
        Self {
            max_new_tokens,
            sampling: Sampling::Greedy,
            eos_token_ids: eos.to_vec(),
            min_new_tokens: 0,
        }
    }
}

/// Why a sequence stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FinishReason {
    /// An end-of-sequence token was produced.
    Eos,
    /// `max_new_tokens` was reached.
    Length,
}

/// One generated sequence.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Generated {
    /// New tokens, without the end-of-sequence token.
    pub tokens: Vec<u32>,
    /// Why it stopped.
    pub finish: FinishReason,
}

/// The seed of row `row` of a batch sampled with `seed`.
pub fn row_seed(seed: u64, row: usize) -> u64 {
    SplitMix64::for_stream(seed, row as u64).next_u64()
}

/// Picks one sequence's tokens from its logits (a `LogitsProcessor`).
#[derive(Debug, Clone)]
pub struct Sampler {
    sampling: Sampling,
    rng: SplitMix64,
}

impl Sampler {
    /// A sampler drawing from the stream of `sampling`'s seed.
    pub fn new(sampling: Sampling) -> Self {
        let seed = match sampling {
            Sampling::TopP { seed, .. } => seed,
            Sampling::Greedy => 0,
        };
        Self {
            sampling,
            rng: SplitMix64::new(seed),
        }
    }

    /// The next token from one row of logits.
    pub fn pick(&mut self, logits: &[f32]) -> u32 {
        match self.sampling {
            Sampling::Greedy => argmax(logits),
            Sampling::TopP {
                temperature, top_p, ..
            } => top_p_pick(logits, temperature, top_p, &mut self.rng),
        }
    }
}

fn top_p_pick(logits: &[f32], temperature: f64, top_p: f64, rng: &mut SplitMix64) -> u32 {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mut probs: Vec<(u32, f64)> = logits
        .iter()
        .enumerate()
        .map(|(i, l)| (i as u32, (((*l - max) as f64) / temperature).exp()))
        .collect();
    let sum: f64 = probs.iter().map(|(_, p)| p).sum();
    probs.iter_mut().for_each(|(_, p)| *p /= sum);
    // Descending probability, ties by lower id: deterministic.
    probs.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
    let mut kept = 0;
    let mut mass = 0.0;
    for (_, p) in &probs {
        kept += 1;
        mass += p;
        if mass >= top_p {
            break;
        }
    }
    let probs = &probs[..kept.max(1)];
    let total: f64 = probs.iter().map(|(_, p)| p).sum();
    let mut u = rng.next_f32() as f64 * total;
    for (id, p) in probs {
        if u < *p {
            return *id;
        }
        u -= p;
    }
    probs.last().map(|(id, _)| *id).unwrap_or(0)
}

fn argmax(xs: &[f32]) -> u32 {
    let mut best = 0usize;
    for (i, v) in xs.iter().enumerate() {
        if *v > xs[best] {
            best = i;
        }
    }
    best as u32
}

/// What [`generate`] calls between steps.
pub trait DecodeObserver {
    /// `new_tokens` tokens were just produced by unfinished rows.
    fn on_step(&mut self, _new_tokens: usize) {}
    /// Whether to abandon the batch now ([`ModelError::Cancelled`]).
    fn cancelled(&self) -> bool {
        false
    }
}

/// An observer that watches nothing.
pub struct Quiet;

impl DecodeObserver for Quiet {}

/// Generates continuations of a batch of prompts given as embeddings
/// `(b, t, hidden)`, left-padded (mask `(b, t)`, 1 = real token, `None` =
/// no padding) so every row ends at its last real token. `samplers` gives
/// each row its sampler; `None` makes them from `cfg.sampling`, row `i`
/// seeded with [`row_seed`]. Adapters are used when enabled, detached.
pub fn generate(
    lm: &Llama,
    embeds: &Tensor,
    attention_mask: Option<&Tensor>,
    cfg: &GenerationConfig,
    samplers: Option<Vec<Sampler>>,
    observer: &mut dyn DecodeObserver,
) -> Result<Vec<Generated>> {
    let (b, t, _) = embeds.dims3()?;
    cfg.sampling.validate()?;
    let mut mask: Vec<Vec<f32>> = match attention_mask {
        Some(m) => m.to_dtype(DType::F32)?.to_vec2::<f32>()?,
        None => vec![vec![1.0; t]; b],
    };
    if mask.len() != b || mask.iter().any(|r| r.len() != t) {
        return Err(ModelError::Input(format!(
            "attention mask does not match the {b}×{t} prompt batch"
        )));
    }
    if mask.iter().any(|r| r.last().copied().unwrap_or(0.0) == 0.0) {
        return Err(ModelError::Input(
            "generation needs left-padded prompts: the last position of every row must be a real token"
                .into(),
        ));
    }
    let mut samplers = match samplers {
        Some(s) if s.len() == b => s,
        Some(s) => {
            return Err(ModelError::Input(format!(
                "{} samplers for a batch of {b}",
                s.len()
            )))
        }
        None => (0..b)
            .map(|i| {
                let seed = match cfg.sampling {
                    Sampling::TopP { seed, .. } => row_seed(seed, i),
                    Sampling::Greedy => 0,
                };
                Sampler::new(cfg.sampling.with_seed(seed))
            })
            .collect(),
    };
    let mode = if lm.adapters_enabled() {
        AdapterMode::Infer
    } else {
        AdapterMode::Off
    };
    let mut out: Vec<Generated> = (0..b)
        .map(|_| Generated {
            tokens: Vec::new(),
            finish: FinishReason::Length,
        })
        .collect();
    let mut done = vec![false; b];
    let mut cache = KvCache::with_capacity(lm.num_layers(), t + cfg.max_new_tokens);
    let mut step_embeds = embeds.clone();
    for produced in 0..cfg.max_new_tokens {
        if observer.cancelled() {
            return Err(ModelError::Cancelled);
        }
        let width = mask[0].len();
        let mask_t = Tensor::from_vec(
            mask.iter().flatten().copied().collect::<Vec<f32>>(),
            (b, width),
            lm.device(),
        )?;
        let hidden = lm.run(&step_embeds, Some(&mask_t), Some(&mut cache), mode)?;
        let last = hidden.narrow(1, hidden.dim(1)? - 1, 1)?;
        let logits = lm.lm_head(&last)?.squeeze(1)?.to_dtype(DType::F32)?;
        let mut rows = logits.to_vec2::<f32>()?;
        let mut next = Vec::with_capacity(b);
        let mut live = 0;
        for (i, row) in rows.iter_mut().enumerate() {
            if produced < cfg.min_new_tokens {
                for &e in &cfg.eos_token_ids {
                    if let Some(l) = row.get_mut(e as usize) {
                        *l = f32::NEG_INFINITY;
                    }
                }
            }
            let token = samplers[i].pick(row);
            if !done[i] {
                live += 1;
                if cfg.eos_token_ids.contains(&token) {
                    done[i] = true;
                    out[i].finish = FinishReason::Eos;
                } else {
                    out[i].tokens.push(token);
                }
            }
            next.push(token);
        }
        observer.on_step(live);
        if done.iter().all(|d| *d) {
            break;
        }
        for row in mask.iter_mut() {
            row.push(1.0);
        }
        let ids = Tensor::from_vec(next, (b, 1), lm.device())?;
        step_embeds = lm.embed(&ids)?;
    }
    Ok(out)
}

/// Left-pads token rows to one length: `(ids (b, t), mask (b, t))` with
/// `pad` in the padding and 0 in its mask.
pub fn left_pad(rows: &[Vec<u32>], pad: u32) -> (Vec<u32>, Vec<u32>, usize) {
    let t = rows.iter().map(Vec::len).max().unwrap_or(0);
    let mut ids = Vec::with_capacity(rows.len() * t);
    let mut mask = Vec::with_capacity(rows.len() * t);
    for r in rows {
        let padding = t - r.len();
        ids.extend(std::iter::repeat_n(pad, padding));
        mask.extend(std::iter::repeat_n(0u32, padding));
        ids.extend_from_slice(r);
        mask.extend(std::iter::repeat_n(1u32, r.len()));
    }
    (ids, mask, t)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn top_p_sampling_is_seeded_and_restricted() {
        let logits = [0.0f32, 5.0, 4.9, -3.0];
        let s = Sampling::TopP {
            temperature: 1.0,
            top_p: 0.9,
            seed: 3,
        };
        let mut a = Sampler::new(s);
        let mut b = Sampler::new(s);
        let xs: Vec<u32> = (0..50).map(|_| a.pick(&logits)).collect();
        let ys: Vec<u32> = (0..50).map(|_| b.pick(&logits)).collect();
        assert_eq!(xs, ys);
        assert!(xs.iter().all(|t| *t == 1 || *t == 2));
        assert!(xs.contains(&1) && xs.contains(&2));
        assert_eq!(Sampler::new(Sampling::Greedy).pick(&logits), 1);
        assert_ne!(row_seed(3, 0), row_seed(3, 1));
        assert!(Sampling::TopP {
            temperature: 0.0,
            top_p: 0.9,
            seed: 0
        }
        .validate()
        .is_err());
    }

    #[test]
    fn left_padding_aligns_row_ends() {
        let (ids, mask, t) = left_pad(&[vec![5, 6, 7], vec![8]], 0);
        assert_eq!(t, 3);
        assert_eq!(ids, [5, 6, 7, 0, 0, 8]);
        assert_eq!(mask, [1, 1, 1, 0, 0, 1]);
    }
}
