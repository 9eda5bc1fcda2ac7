//! Log-probs for training: image features cached per image, the summed
//! response log-probs of a batch (the output head only where a response
//! token is predicted), and the reference log-probs computed once with the
//! adapters disabled and cached in the run folder.

use std::collections::HashMap;

use candle_core::{DType, Tensor};
use image::DynamicImage;

use super::{Result, TrainError};
use crate::core::runs::{files, RunDir};
use crate::model::lora::save_safetensors;
use crate::model::LlavaBundle;
use crate::train::data::{self, Batch, PairExample};
use crate::train::objectives::{self, LogpSums};

/// What [`FeatureCache`] keeps per image, by what trains.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum FeatureMode {
    /// Projected features (LoRA: tower and projector frozen).
    Projected,
    /// The tower's output, projected per batch (full fine-tuning: the
    /// projector trains).
    ProjectEachStep,
    /// The preprocessed pixels, through tower and projector per batch (the
    /// tower trains too).
    TowerEachStep,
}

/// Per-image inputs of the language model, computed once: see
/// [`FeatureMode`].
pub(super) struct FeatureCache {
    pub(super) map: HashMap<String, Tensor>,
    pub(super) mode: FeatureMode,
}

impl FeatureCache {
    fn get(&mut self, bundle: &LlavaBundle, image: &data::ImageRef) -> Result<Tensor> {
        let key = format!("{}|{:?}", image.path.display(), image.crop);
        if let Some(f) = self.map.get(&key) {
            return Ok(f.clone());
        }
        let rgb = image.load().map_err(|e| TrainError::Checkpoint {
            path: image.path.clone(),
            message: format!("image: {e}"),
        })?;
        let pixels = bundle
            .processor
            .preprocess(&DynamicImage::ImageRgb8(rgb), bundle.model.device())?
            .unsqueeze(0)?
            .to_dtype(bundle.model.dtype())?;
        let feats = match self.mode {
            FeatureMode::Projected => bundle.model.image_features(&pixels)?,
            FeatureMode::ProjectEachStep => bundle.model.vision_features(&pixels)?,
            FeatureMode::TowerEachStep => pixels,
        }
        .detach();
        self.map.insert(key, feats.clone());
        Ok(feats)
    }

    /// Features for a batch's rows: `[2B, N, H]` (the pairs' features
    /// twice), or `[B, N, H]` for a chosen-only batch.
    pub(super) fn batch(&mut self, bundle: &LlavaBundle, batch: &Batch) -> Result<Tensor> {
        let each = batch
            .images
            .iter()
            .map(|im| self.get(bundle, im))
            .collect::<Result<Vec<_>>>()?;
        let once = Tensor::cat(&each, 0)?;
        let once = match self.mode {
            FeatureMode::Projected => once,
            FeatureMode::ProjectEachStep => bundle.model.project(&once)?,
            FeatureMode::TowerEachStep => bundle.model.image_features(&once)?,
        };
        if batch.chosen_only {
            return Ok(once);
        }
        Ok(Tensor::cat(&[&once, &once], 0)?)
    }
}

/// Summed log-probs of the batch's rows, `[2B, S]` (S = 1 without
/// segments), as f32.
pub(super) fn batch_logps(
    bundle: &LlavaBundle,
    batch: &Batch,
    feats: &Tensor,
    n_segments: Option<usize>,
) -> Result<LogpSums> {
    let hidden = bundle.model.forward_hidden(
        &batch.input_ids,
        Some(feats),
        Some(&batch.attention_mask),
        None,
    )?;
    let segments = match (n_segments, &batch.segment_ids) {
        (Some(n), Some(seg)) => Some((seg, n)),
        (Some(_), None) => {
            return Err(TrainError::Config {
                field: "segmenter",
                message: "the batch has no segment ids".into(),
            })
        }
        (None, _) => None,
    };
    // The output head runs only where a response token is predicted.
    let lm = bundle.model.lm();
    let head = |h: &Tensor| {
        lm.lm_head(h)
            .map_err(|e| candle_core::Error::Msg(e.to_string()))
    };
    let sums =
        objectives::response_logps(&hidden, head, &batch.labels, &batch.loss_mask, segments)?;
    Ok(LogpSums {
        sum: sums.sum.to_dtype(DType::F32)?,
        tokens: sums.tokens.to_dtype(DType::F32)?,
    })
}

/// Reference log-probs `(chosen, rejected)`, each `[n_examples, S]`,
/// loaded from the run's cache or computed one example at a time with the
/// adapters disabled (and cached).
pub(super) fn reference_logps(
    bundle: &mut LlavaBundle,
    examples: &[PairExample],
    features: &mut FeatureCache,
    n_segments: Option<usize>,
    run: &RunDir,
) -> Result<(Tensor, Tensor)> {
    let path = run.file(files::REF_LOGPS);
    let s = n_segments.unwrap_or(1);
    let device = bundle.model.device().clone();
    if path.is_file() {
        let map = candle_core::safetensors::load(&path, &device)?;
        if let (Some(c), Some(r)) = (map.get("chosen"), map.get("rejected")) {
            if c.dims() == [examples.len(), s] && r.dims() == [examples.len(), s] {
                return Ok((c.clone(), r.clone()));
            }
        }
    }
    bundle.model.set_adapters_enabled(false);
    bundle.model.set_grad_enabled(false);
    let pad = bundle.tokenizer.pad_token_id();
    let mut chosen = Vec::with_capacity(examples.len());
    let mut rejected = Vec::with_capacity(examples.len());
    let result = (|| -> Result<()> {
        for ex in examples {
            let batch = data::collate(&[ex], pad, &device)?;
            let feats = features.batch(bundle, &batch)?;
            let sums = batch_logps(bundle, &batch, &feats, n_segments)?;
            chosen.push(sums.sum.narrow(0, 0, 1)?.detach());
            rejected.push(sums.sum.narrow(0, 1, 1)?.detach());
        }
        Ok(())
    })();
    bundle.model.set_adapters_enabled(true);
    bundle.model.set_grad_enabled(true);
    result?;
    let c = Tensor::cat(&chosen, 0)?;
    let r = Tensor::cat(&rejected, 0)?;
    let map = HashMap::from([
        ("chosen".to_string(), c.clone()),
        ("rejected".to_string(), r.clone()),
    ]);
    save_safetensors(&map, &path)?;
    Ok((c, r))
}
