//! The model-backed scorers of SPR, implementing the core's plug-in points
//! ([`crate::core::scorers`]) in candle:
//!
//! - [`semantic`]: CLIP's semantic score, `S_sem = ½·[cos(I_crop, T) +
//!   S_local(I, T)]` (DESIGN §3), with the local-attention region embedding.
//!
//! [`load`] builds the scorers `spr.toml`'s `[scoring]` names, with errors
//! that name the field and say how to get weights.

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
