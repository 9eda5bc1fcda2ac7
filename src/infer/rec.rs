//! REC evaluation by a model (`spr eval`, and the trainer's evaluation
//! during training).
//!
//! For each item of a [`RecSet`]: the whole image goes through the
//! model's processor, the profile's prompt asks for the expression's box,
//! the answer is decoded greedily and the first box of the answer (in the
//! profile's syntax, over the original image's width and height) is
//! compared with the ground truth ([`RecSample::from_output`]). An answer
//! without a box is a miss with IoU 0, counted in the parse rate. An item
//! whose image is missing or corrupt is skipped and named; the others are
//! still evaluated.
//!
//! Items are decoded `batch` at a time; each distinct image of a batch is
//! encoded once (REC sets hold several expressions per image).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize};
use std::time::Instant;

use candle_core::Tensor;

use super::decode::{self, DecodeJob, DecodePlan};
use super::{InferError, Result};
use crate::core::imageio;
use crate::core::rec::data::{RecItem, RecSet};
use crate::core::rec::profile::RecProfile;
use crate::core::rec::{rec_report, RecReport, RecSample};
use crate::model::{LlavaBundle, ModelError, Sampling};

/// Settings of an evaluation.
#[derive(Clone, Debug, PartialEq)]
pub struct RecEvalOptions {
    /// Prompt and answer syntax.
    pub profile: RecProfile,
    /// Most tokens per answer.
    pub max_new_tokens: usize,
    /// Items decoded together.
    pub batch: usize,
    /// Evaluate the first `limit` items only.
    pub limit: Option<usize>,
}

/// What an evaluation measured.
#[derive(Clone, Debug, PartialEq)]
pub struct RecEvaluation {
    /// One record per evaluated item, in set order.
    pub samples: Vec<RecSample>,
    /// Accuracies, mean IoU, parse rate.
    pub report: RecReport,
    /// Items skipped, each with its reason (missing or corrupt image).
    pub skipped: Vec<String>,
    /// New tokens decoded.
    pub new_tokens: usize,
    /// Seconds taken.
    pub seconds: f64,
    /// Whether `stop` ended it early (the samples so far are kept).
    pub interrupted: bool,
}

/// Evaluates `bundle` (its adapters as they are) on `set`. `progress` is
/// called with (items done, items in all) after each batch.
pub fn evaluate(
    bundle: &LlavaBundle,
    set: &RecSet,
    opts: &RecEvalOptions,
    progress: &mut dyn FnMut(usize, usize),
    stop: &AtomicBool,
) -> Result<RecEvaluation> {
    opts.profile.validate().map_err(InferError::Config)?;
    if opts.batch == 0 {
        return Err(InferError::Config("batch must be at least 1".into()));
    }
    let started = Instant::now();
    let items: Vec<&RecItem> = set
        .items
        .iter()
        .take(opts.limit.unwrap_or(usize::MAX))
        .collect();
    let mut samples = Vec::with_capacity(items.len());
    let mut skipped = Vec::new();
    let new_tokens = AtomicUsize::new(0);
    let plan = DecodePlan::new(bundle, opts.batch, opts.max_new_tokens);
    let mut interrupted = false;
    progress(0, items.len());
    for (done, chunk) in items.chunks(opts.batch).enumerate() {
        // Each distinct image of the batch once: features and size.
        let mut images: HashMap<&str, (Tensor, f32, f32)> = HashMap::new();
        let mut jobs = Vec::with_capacity(chunk.len());
        let mut kept: Vec<(&RecItem, f32, f32)> = Vec::with_capacity(chunk.len());
        for item in chunk {
            let entry = match images.get(item.image.as_str()) {
                Some(e) => e.clone(),
                None => {
                    let path = set.image_path(item);
                    let rgb = match imageio::load_rgb(&path) {
                        Ok(rgb) => rgb,
                        Err(e) => {
                            skipped.push(format!(
                                "{}: sample {}: {e}",
                                set.source.display(),
                                item.id
                            ));
                            continue;
                        }
                    };
                    let (w, h) = (rgb.width() as f32, rgb.height() as f32);
                    let feats = decode::image_features(bundle, rgb)?;
                    images.insert(item.image.as_str(), (feats.clone(), w, h));
                    (feats, w, h)
                }
            };
            jobs.push(DecodeJob {
                features: entry.0,
                prompt: opts.profile.prompt_for(&item.expression),
                sampling: Sampling::Greedy,
            });
            kept.push((item, entry.1, entry.2));
        }
        let answers = match decode::decode_all(bundle, &jobs, plan, stop, &new_tokens) {
            Ok(a) => a,
            Err(ModelError::Cancelled) => {
                interrupted = true;
                break;
            }
            Err(e) => return Err(e.into()),
        };
        for ((item, w, h), answer) in kept.iter().zip(&answers) {
            let text = opts.profile.answer_text(&answer.text);
            let mut s = RecSample::from_output(item, &text, opts.profile.format, *w, *h);
            s.output = Some(answer.text.clone());
            samples.push(s);
        }
        progress(((done + 1) * opts.batch).min(items.len()), items.len());
    }
    let report = rec_report(&samples);
    Ok(RecEvaluation {
        samples,
        report,
        skipped,
        new_tokens: new_tokens.into_inner(),
        seconds: started.elapsed().as_secs_f64(),
        interrupted,
    })
}
