//! Contrastive training of a CLIP model (Radford et al. 2021, "Learning
//! Transferable Visual Models From Natural Language Supervision", §2.3):
//! a batch of B (image, text) pairs gives the B × B similarity matrix
//! `exp(t)·Iᵢ·Tⱼ` of normalised embeddings with a learned temperature `t`
//! (`logit_scale`, clamped at ln 100 as CLIP clamps it), and the loss is
//! the mean of the image→text and text→image cross-entropies with the
//! diagonal as targets.
//!
//! **Batches** hold pairs whose texts all differ (the synthetic data repeats
//! short texts such as "a red circle"; two equal texts in a batch would make
//! the target ambiguous).
//!
//! **Hard negatives.** A pair may bring a negative text that differs from
//! its own in one word (a colour, a shape). Those texts join the image→text
//! direction as extra columns (B × (B + N)), so an image must prefer its
//! own text over the one-word change; the text→image direction stays B × B.
//! This is what makes a tiny CLIP tell "a red circle" from "a blue circle",
//! which in-batch negatives alone rarely contrast.
//!
//! The model's weights are [`Var`]s (built from a `VarMap` holding them);
//! AdamW is the trainer's (torch's update), with linear warmup and cosine
//! decay ([`LrSchedule`]). Batches follow a seeded [`DataOrder`].

use std::time::Instant;

use candle_core::{DType, Device, Tensor, Var};

use crate::core::runs::config::LrSchedule;
use crate::model::clip_model::ClipModel;
use crate::train::data::DataOrder;
use crate::train::schedule::clip_grad_norm;
use crate::train::trainer::adamw::AdamW;
use crate::train::trainer::{ensure_finite_loss, Result, TrainError};

/// One training pair.
#[derive(Clone, Debug)]
pub struct ContrastivePair {
    /// Pixel values `(3, S, S)`, preprocessed for the vision tower.
    pub pixels: Tensor,
    /// Token ids of the text (ending with the end-of-text token).
    pub text: Vec<u32>,
    /// Token ids of a text that differs in one word, when there is one.
    pub negative: Option<Vec<u32>>,
}

/// Settings of a contrastive run.
#[derive(Clone, Debug, PartialEq)]
pub struct ContrastiveConfig {
    /// Optimizer steps.
    pub steps: u64,
    /// Pairs per step.
    pub batch: usize,
    /// Peak learning rate.
    pub lr: f64,
    /// Linear warmup steps.
    pub warmup: u64,
    /// AdamW weight decay.
    pub weight_decay: f64,
    /// Seed of the data order.
    pub seed: u64,
}

/// What one step measured.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ContrastiveStep {
    /// Step, 1-based.
    pub step: u64,
    /// The loss.
    pub loss: f64,
    /// Share of images whose own text scores highest among all the batch's
    /// texts (hard negatives included).
    pub accuracy: f64,
    /// `exp(logit_scale)`.
    pub temperature: f64,
    /// Seconds the step took.
    pub seconds: f64,
}

/// The next batch of up to `batch` pairs whose texts all differ (two
/// images with the same text would both be "right" for it), drawn in the
/// data order; gives up looking after a few epochs' worth of draws.
fn unique_batch(order: &mut DataOrder, pairs: &[ContrastivePair], batch: usize) -> Vec<usize> {
    let mut out: Vec<usize> = Vec::with_capacity(batch);
    let mut draws = 0;
    while out.len() < batch && draws < 4 * pairs.len() {
        let i = order.next_batch(pairs.len(), 1)[0];
        draws += 1;
        if out.iter().all(|&j| pairs[j].text != pairs[i].text) {
            out.push(i);
        }
    }
    out
}

/// Right-pads token rows with each row's last id (the end-of-text token:
/// the pooled output is read at its first occurrence).
fn pad_rows(rows: &[&Vec<u32>], device: &Device) -> Result<Tensor> {
    let t = rows.iter().map(|r| r.len()).max().unwrap_or(1);
    let mut flat = Vec::with_capacity(rows.len() * t);
    for r in rows {
        let pad = r.last().copied().unwrap_or(0);
        flat.extend(r.iter().copied());
        flat.extend(std::iter::repeat_n(pad, t - r.len()));
    }
    Ok(Tensor::from_vec(flat, (rows.len(), t), device)?)
}

/// Trains `model`, whose trainable weights are `vars` (name, var), on
/// `pairs`; `progress` sees every step.
pub fn train(
    model: &ClipModel,
    vars: Vec<(String, Var)>,
    pairs: &[ContrastivePair],
    cfg: &ContrastiveConfig,
    mut progress: impl FnMut(&ContrastiveStep),
) -> Result<Vec<ContrastiveStep>> {
    if pairs.len() < 2 || cfg.batch < 2 {
        return Err(TrainError::Config {
            field: "batch",
            message: "contrastive training needs at least two pairs per batch".into(),
        });
    }
    let schedule = LrSchedule {
        warmup_steps: cfg.warmup,
        total_steps: cfg.steps,
        peak_lr: cfg.lr,
        min_lr_ratio: 0.0,
    };
    schedule.validate()?;
    let mut opt = AdamW::with_settings(vars, 0.9, 0.98, 1e-6, cfg.weight_decay)?;
    let var_list = opt.var_list();
    let mut order = DataOrder::new(cfg.seed);
    let device = model.device().clone();
    let mut out = Vec::with_capacity(cfg.steps as usize);
    for step in 0..cfg.steps {
        let started = Instant::now();
        let idx = unique_batch(&mut order, pairs, cfg.batch);
        let b = idx.len();
        let pixels: Vec<&Tensor> = idx.iter().map(|&i| &pairs[i].pixels).collect();
        let pixels = Tensor::stack(&pixels, 0)?;
        let mut texts: Vec<&Vec<u32>> = idx.iter().map(|&i| &pairs[i].text).collect();
        // A negative that is some image's positive (or another negative)
        // would be a second right answer: left out.
        for &i in &idx {
            if let Some(n) = pairs[i].negative.as_ref() {
                if !texts.contains(&n) {
                    texts.push(n);
                }
            }
        }
        let ids = pad_rows(&texts, &device)?;
        let img = model.image_embeds(&pixels)?;
        let txt = model.text_embeds(&ids)?;
        let scale = model.logit_scale_tensor().clamp(0f32, 100f32.ln())?.exp()?;
        let logits = img.matmul(&txt.t()?)?.broadcast_mul(&scale)?;
        let targets = Tensor::arange(0u32, b as u32, &device)?;
        let i2t = candle_nn::loss::cross_entropy(&logits, &targets)?;
        let t2i = candle_nn::loss::cross_entropy(&logits.narrow(1, 0, b)?.t()?, &targets)?;
        let loss = ((i2t + t2i)? * 0.5)?;
        let mut grads = loss.backward()?;
        clip_grad_norm(&mut grads, &var_list, 1.0)?;
        opt.step(&grads, schedule.lr_at(step))?;
        let best = logits.argmax(1)?.to_dtype(DType::U32)?.to_vec1::<u32>()?;
        let accuracy = best
            .iter()
            .enumerate()
            .filter(|(i, &j)| *i as u32 == j)
            .count() as f64
            / b as f64;
        let s = ContrastiveStep {
            step: step + 1,
            loss: f64::from(loss.to_dtype(DType::F32)?.to_scalar::<f32>()?),
            accuracy,
            temperature: f64::from(scale.to_dtype(DType::F32)?.to_scalar::<f32>()?),
            seconds: started.elapsed().as_secs_f64(),
        };
        ensure_finite_loss(s.step, s.loss)?;
        progress(&s);
        out.push(s);
    }
    Ok(out)
}
