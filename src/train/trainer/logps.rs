//! Log-probs for training: image features cached per image, the summed
//! response log-probs of a batch (the output head only where a response
//! token is predicted), and the reference log-probs computed once with the
//! adapters disabled and cached in the run folder.

use std::collections::HashMap;
use std::sync::Mutex;

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
/// [`FeatureMode`]. Shared by the threads of a row-parallel step; an image
/// two threads miss at once is computed twice (same result), never under
/// the lock.
pub(super) struct FeatureCache {
    map: Mutex<HashMap<String, Tensor>>,
    mode: FeatureMode,
}

impl FeatureCache {
    pub(super) fn new(mode: FeatureMode) -> Self {
        Self {
            map: Mutex::new(HashMap::new()),
            mode,
        }
    }

    fn cached(&self, key: &str) -> Option<Tensor> {
        // A poisoned map only means another thread panicked mid-insert of
        // a whole tensor: the map itself is intact.
        let map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        map.get(key).cloned()
    }

    fn get(&self, bundle: &LlavaBundle, image: &data::ImageRef) -> Result<Tensor> {
        let key = format!("{}|{:?}", image.path.display(), image.crop);
        if let Some(f) = self.cached(&key) {
            return Ok(f);
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
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        map.insert(key, feats.clone());
        Ok(feats)
    }

    /// Features for a batch's rows: `[2B, N, H]` (the pairs' features
    /// twice), or one per row when the rows own their images
    /// ([`Batch::rows_own_images`]).
    pub(super) fn batch(&self, bundle: &LlavaBundle, batch: &Batch) -> Result<Tensor> {
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
        if batch.rows_own_images {
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
/// loaded from the run's cache or computed with the adapters disabled (one
/// example at a time, the examples split into `workers` contiguous runs
/// computed side by side) and cached.
pub(super) fn reference_logps(
    bundle: &mut LlavaBundle,
    examples: &[PairExample],
    features: &FeatureCache,
    n_segments: Option<usize>,
    run: &RunDir,
    workers: usize,
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
    let frozen: &LlavaBundle = bundle;
    let per_worker = examples.len().div_ceil(workers.max(1)).max(1);
    let result = super::parallel::run_parts(examples.chunks(per_worker).collect(), |chunk| {
        let mut out = Vec::with_capacity(chunk.len());
        for ex in chunk {
            let batch = data::collate(&[ex], pad, &device)?;
            let feats = features.batch(frozen, &batch)?;
            let sums = batch_logps(frozen, &batch, &feats, n_segments)?;
            out.push((
                sums.sum.narrow(0, 0, 1)?.detach(),
                sums.sum.narrow(0, 1, 1)?.detach(),
            ));
        }
        Ok(out)
    });
    bundle.model.set_adapters_enabled(true);
    bundle.model.set_grad_enabled(true);
    let (chosen, rejected): (Vec<Tensor>, Vec<Tensor>) = result?.into_iter().flatten().unzip();
    let c = Tensor::cat(&chosen, 0)?;
    let r = Tensor::cat(&rejected, 0)?;
    let map = HashMap::from([
        ("chosen".to_string(), c.clone()),
        ("rejected".to_string(), r.clone()),
    ]);
    save_safetensors(&map, &path)?;
    Ok((c, r))
}
