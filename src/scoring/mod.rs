//! The model-backed scorers of SPR, implementing the core's plug-in points
//! ([`crate::core::scorers`]) in candle:
//!
//! - [`semantic`]: CLIP's semantic score, `S_sem = ½·[cos(I_crop, T) +
//!   S_local(I, T)]` (DESIGN §3), with the local-attention region embedding;
//! - [`detector`]: OWLv2 on the region's crop, queried with the phrases the
//!   candidates mention; its boxes join the localization score's
//!   predictions.
//!
//! [`load`] builds the scorers `spr.toml`'s `[scoring]` names, with errors
//! that name the field and say how to get weights.

pub mod detector;
pub mod semantic;

use std::path::{Path, PathBuf};

use crate::core::project::Project;
use crate::model::hub::{resolve_model, HubOptions};
use crate::model::ModelError;

/// Why a scorer could not be loaded; the message names the `spr.toml`
/// field.
#[derive(Debug, thiserror::Error)]
#[error("{}: [scoring] {field} = {value:?}: {message}", config.display())]
pub struct ScorerError {
    /// The project's `spr.toml`.
    pub config: PathBuf,
    /// The field (`semantic_model`, `detector_model`).
    pub field: &'static str,
    /// Its value.
    pub value: String,
    /// What went wrong and what to do.
    pub message: String,
}

/// The folder a `[scoring]` model setting means: a folder relative to the
/// project (or absolute), else a hub id fetched into the hub cache.
pub fn model_folder(project: &Project, value: &str) -> Result<PathBuf, ModelError> {
    let local = project.root.join(value);
    if local.is_dir() {
        return Ok(local);
    }
    resolve_model(value, &HubOptions::default())
}

/// What to tell a user whose model is missing.
pub(crate) fn how_to_get(kind: &str, example: &str, folder_hint: &Path) -> String {
    format!(
        "put a {kind} folder there (config.json, model.safetensors, tokenizer.json, \
         preprocessor_config.json), e.g. `huggingface-cli download {example} --local-dir {}` \
         on a machine that is online, or remove the line to score without it",
        folder_hint.display()
    )
}

/// The semantic scorer `[scoring] semantic_model` names (none when unset),
/// on `device`.
pub fn load_semantic(
    project: &Project,
    device: &candle_core::Device,
) -> Result<Option<semantic::ClipScorer>, ScorerError> {
    let Some(value) = project.config.scoring.semantic_model.clone() else {
        return Ok(None);
    };
    let err = |message: String| ScorerError {
        config: project.path(crate::core::project::files::CONFIG),
        field: "semantic_model",
        value: value.clone(),
        message,
    };
    let dir = model_folder(project, &value).map_err(|e| {
        err(format!(
            "{e}; {}",
            how_to_get(
                "CLIPModel",
                "openai/clip-vit-large-patch14-336",
                &project.root.join(&value)
            )
        ))
    })?;
    semantic::ClipScorer::load(&dir, &project.image_root(), device, value.clone())
        .map(Some)
        .map_err(|e| err(e.to_string()))
}

/// The detector `[scoring] detector_model` names (none when unset), on
/// `device`, with `[scoring] detector_threshold`.
pub fn load_detector(
    project: &Project,
    device: &candle_core::Device,
) -> Result<Option<detector::OwlDetector>, ScorerError> {
    let scoring = &project.config.scoring;
    let Some(value) = scoring.detector_model.clone() else {
        return Ok(None);
    };
    let config = project.path(crate::core::project::files::CONFIG);
    let err = |field: &'static str, value: String, message: String| ScorerError {
        config: config.clone(),
        field,
        value,
        message,
    };
    let threshold = scoring.detector_threshold;
    if !(threshold > 0.0 && threshold < 1.0) {
        return Err(err(
            "detector_threshold",
            threshold.to_string(),
            "must lie strictly between 0 and 1".into(),
        ));
    }
    let dir = model_folder(project, &value).map_err(|e| {
        err(
            "detector_model",
            value.clone(),
            format!(
                "{e}; {}",
                how_to_get(
                    "Owlv2ForObjectDetection",
                    "google/owlv2-base-patch16-ensemble",
                    &project.root.join(&value)
                )
            ),
        )
    })?;
    let settings = detector::DetectorSettings {
        threshold,
        ..Default::default()
    };
    detector::OwlDetector::load(&dir, &project.image_root(), device, value.clone(), settings)
        .map(Some)
        .map_err(|e| err("detector_model", value.clone(), e.to_string()))
}

/// The scorers `[scoring]` names, loaded.
pub struct ProjectScorers {
    /// CLIP's semantic score, when `semantic_model` is set.
    pub semantic: Option<semantic::ClipScorer>,
    /// OWLv2, when `detector_model` is set.
    pub detector: Option<detector::OwlDetector>,
}

impl ProjectScorers {
    /// Loads what `project`'s `[scoring]` names onto `device`.
    pub fn load(project: &Project, device: &candle_core::Device) -> Result<Self, ScorerError> {
        Ok(Self {
            semantic: load_semantic(project, device)?,
            detector: load_detector(project, device)?,
        })
    }

    /// The plug-ins for [`crate::core::pipeline::score_candidates`]
    /// (stand-ins for what is not configured).
    pub fn scorers(&self) -> crate::core::scorers::Scorers<'_> {
        crate::core::scorers::Scorers {
            semantic: match &self.semantic {
                Some(c) => c,
                None => &crate::core::scorers::NoSemantic,
            },
            detector: match &self.detector {
                Some(d) => d,
                None => &crate::core::scorers::NoDetector,
            },
        }
    }
}

/// `f` over `work` in order, on up to `workers` threads, each taking a
/// contiguous share with its own cache (the last image read: regions of
/// one image come in a row). A panicking thread's share becomes errors.
pub(crate) fn spread<W, C, R>(
    workers: usize,
    work: &[W],
    f: impl Fn(&mut C, &W) -> Result<R, String> + Sync,
) -> Vec<Result<R, String>>
where
    W: Sync,
    C: Default,
    R: Send,
{
    let workers = workers.max(1);
    if workers == 1 || work.len() < 2 {
        let mut cache = C::default();
        return work.iter().map(|w| f(&mut cache, w)).collect();
    }
    let share = work.len().div_ceil(workers);
    let parts: Vec<&[W]> = work.chunks(share).collect();
    crate::core::threads::on_threads(
        parts.iter().copied(),
        |part| {
            let mut cache = C::default();
            part.iter().map(|w| f(&mut cache, w)).collect::<Vec<_>>()
        },
        |i| {
            parts[i]
                .iter()
                .map(|_| Err("a scoring thread panicked".to_string()))
                .collect()
        },
    )
    .into_iter()
    .flatten()
    .collect()
}
