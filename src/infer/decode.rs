//! From images and prompts to answers: the CLIP tower's features once per
//! image, then many sequences decoded together.
//!
//! A [`DecodeJob`] is one sequence: the image features it sees, its user
//! turn (wrapped in the model's chat prompt here) and its sampling. [`decode`]
//! left-pads the jobs' prompts, embeds them with their features and runs
//! [`generation::generate`] with one sampler per job, so the jobs of a
//! batch share every forward pass and the KV cache.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use candle_core::Tensor;
use image::{DynamicImage, RgbImage};

use crate::model::generation::{self, DecodeObserver, FinishReason, GenerationConfig, Sampler};
use crate::model::{LlavaBundle, ModelError, Sampling};

/// One sequence to decode.
#[derive(Clone, Debug)]
pub struct DecodeJob {
    /// Projected image features `(1, N, hidden)` ([`image_features`]).
    pub features: Tensor,
    /// The user turn (the chat template and `<image>` are added).
    pub prompt: String,
    /// How its tokens are chosen (its own seed).
    pub sampling: Sampling,
}

/// One decoded answer.
#[derive(Clone, Debug, PartialEq)]
pub struct Decoded {
    /// The answer's text, special tokens dropped, trimmed.
    pub text: String,
    /// New tokens (the end-of-sequence token not counted).
    pub tokens: usize,
    /// Why it stopped.
    pub finish: FinishReason,
}

/// Projected image features `(1, N, hidden)` of an RGB image, preprocessed
/// as the model's processor says.
pub fn image_features(bundle: &LlavaBundle, image: RgbImage) -> Result<Tensor, ModelError> {
    let pixels = bundle
        .processor
        .preprocess(&DynamicImage::ImageRgb8(image), bundle.model.device())?
        .unsqueeze(0)?
        .to_dtype(bundle.model.dtype())?;
    bundle.model.image_features(&pixels)
}

/// Decodes every job in one batch (callers chunk large work into batches).
/// `max_new_tokens` and `min_new_tokens` apply to every job; the
/// observer sees each step and may cancel.
pub fn decode(
    bundle: &LlavaBundle,
    jobs: &[DecodeJob],
    max_new_tokens: usize,
    min_new_tokens: usize,
    observer: &mut dyn DecodeObserver,
) -> Result<Vec<Decoded>, ModelError> {
    if jobs.is_empty() {
        return Ok(Vec::new());
    }
    let device = bundle.model.device();
    let mut rows = Vec::with_capacity(jobs.len());
    for job in jobs {
        rows.push(bundle.tokenizer.encode_chat(&job.prompt)?);
    }
    let (ids, mask, t) = generation::left_pad(&rows, bundle.tokenizer.pad_token_id());
    let b = jobs.len();
    let ids = Tensor::from_vec(ids, (b, t), device)?;
    let mask = Tensor::from_vec(mask, (b, t), device)?;
    let feats: Vec<&Tensor> = jobs.iter().map(|j| &j.features).collect();
    let feats = Tensor::cat(&feats, 0)?;
    let embeds = bundle.model.embed(&ids, Some(&feats))?;
    let cfg = GenerationConfig {
        max_new_tokens,
        sampling: jobs[0].sampling,
        eos_token_ids: bundle.tokenizer.eos_token_ids().to_vec(),
        min_new_tokens,
    };
    for job in jobs {
        job.sampling.validate()?;
    }
    let samplers = jobs.iter().map(|j| Sampler::new(j.sampling)).collect();
    let out = generation::generate(
        bundle.model.lm(),
        &embeds,
        Some(&mask),
        &cfg,
        Some(samplers),
        observer,
    )?;
    out.into_iter()
        .map(|g| {
            Ok(Decoded {
                text: bundle.tokenizer.decode(&g.tokens, true)?.trim().to_string(),
                tokens: g.tokens.len(),
                finish: g.finish,
            })
        })
        .collect()
}

/// A [`DecodeObserver`] that adds new tokens to a shared counter and
/// stops when a flag is set; shareable between worker threads.
pub struct Counter<'a> {
    /// Set to cancel.
    pub stop: &'a AtomicBool,
    /// New tokens so far.
    pub tokens: &'a AtomicUsize,
}

impl DecodeObserver for Counter<'_> {
    fn on_step(&mut self, new_tokens: usize) {
        self.tokens.fetch_add(new_tokens, Ordering::Relaxed);
    }

    fn cancelled(&self) -> bool {
        self.stop.load(Ordering::SeqCst)
    }
}

/// How [`decode_all`] runs a list of jobs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DecodePlan {
    /// Jobs decoded together at most.
    pub batch: usize,
    /// Threads a batch is split over ([`crate::model::batch_workers`]).
    pub workers: usize,
    /// Most new tokens per job.
    pub max_new_tokens: usize,
    /// End-of-sequence is not picked before this many tokens.
    pub min_new_tokens: usize,
}

impl DecodePlan {
    /// Batches of `batch`, as many workers as suit `bundle`'s device, no
    /// minimum length.
    pub fn new(bundle: &LlavaBundle, batch: usize, max_new_tokens: usize) -> Self {
        Self {
            batch,
            workers: crate::model::batch_workers(bundle.model.device()),
            max_new_tokens,
            min_new_tokens: 0,
        }
    }
}

/// [`decode`] of `jobs` in batches of at most `plan.batch`, each batch
/// split into `plan.workers` contiguous parts decoded side by side on
/// their own threads. Answers come back in job order. The split depends
/// only on the jobs and the plan, so the same work gives the same answers.
/// New tokens are added to `tokens`; `stop` cancels.
pub fn decode_all(
    bundle: &LlavaBundle,
    jobs: &[DecodeJob],
    plan: DecodePlan,
    stop: &AtomicBool,
    tokens: &AtomicUsize,
) -> Result<Vec<Decoded>, ModelError> {
    let DecodePlan {
        batch,
        workers,
        max_new_tokens,
        min_new_tokens,
    } = plan;
    let mut out = Vec::with_capacity(jobs.len());
    for chunk in jobs.chunks(batch.max(1)) {
        let part = chunk.len().div_ceil(workers.max(1));
        let results = crate::core::threads::on_threads(
            chunk.chunks(part),
            |jobs| {
                let mut observer = Counter { stop, tokens };
                decode(bundle, jobs, max_new_tokens, min_new_tokens, &mut observer)
            },
            |_| Err(ModelError::Input("a decoding thread panicked".into())),
        );
        for r in results {
            out.extend(r?);
        }
    }
    Ok(out)
}
