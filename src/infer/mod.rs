//! Models writing text, on top of [`crate::model`]: the other half of the
//! SPR loop.
//!
//! - [`decode`]: image features and prompts → decoded answers, many
//!   sequences per forward (left-padded, KV cache), each with its own
//!   sampler.
//! - [`candidates`]: `spr generate`: a model writes grounded region
//!   descriptions into a project's `candidates.jsonl` with SPR's diverse
//!   prompts, K samples each, resumable, shardable.
//! - [`rec`]: `spr eval`: REC accuracy of a model (base or with an
//!   adapter) on an MDETR-style or JSONL REC set; the trainer calls it
//!   during training.
//!
//! [`load_policy`] loads a llava-hf model with an optional LoRA adapter
//! (an adapter folder, a run folder, or a checkpoint), checking that the
//! adapter fits before any work starts.

pub mod candidates;
pub mod decode;
pub mod rec;

use std::path::{Path, PathBuf};

use crate::core::project::ProjectError;
use crate::core::rec::data::RecDataError;
use crate::core::runs::{files as run_files, RunDir, RunError};
use crate::model::lora::ADAPTER_CONFIG_FILE;
use crate::model::{LlavaBundle, ModelError};

/// Errors of generation and evaluation; each names its file or field.
#[derive(Debug, thiserror::Error)]
pub enum InferError {
    /// The model or adapter could not be loaded or run.
    #[error(transparent)]
    Model(#[from] ModelError),
    /// A project file could not be read or written.
    #[error(transparent)]
    Project(#[from] ProjectError),
    /// A REC set could not be read.
    #[error(transparent)]
    RecData(#[from] RecDataError),
    /// A run folder could not be read.
    #[error(transparent)]
    Run(#[from] RunError),
    /// A dataset could not be loaded.
    #[error(transparent)]
    Dataset(#[from] crate::core::dataset::DatasetError),
    /// A setting is invalid.
    #[error("{0}")]
    Config(String),
    /// An adapter path holds no adapter.
    #[error("{}: no LoRA adapter here (expected {ADAPTER_CONFIG_FILE}, a run folder with adapter/ or a checkpoint)", path.display())]
    NoAdapter {
        /// The path given.
        path: PathBuf,
    },
}

/// Result of this module.
pub type Result<T> = std::result::Result<T, InferError>;

/// The adapter folder meant by `path`: an adapter folder itself, a
/// checkpoint (its `adapter/`), or a run folder (its final `adapter/`,
/// else its latest checkpoint's).
pub fn resolve_adapter(path: &Path) -> Result<PathBuf> {
    if path.join(ADAPTER_CONFIG_FILE).is_file() {
        return Ok(path.to_path_buf());
    }
    let inner = path.join(run_files::ADAPTER);
    if inner.join(ADAPTER_CONFIG_FILE).is_file() {
        return Ok(inner);
    }
    if let Some(ckpt) = RunDir::new(path).latest_checkpoint()? {
        let a = ckpt.path.join(run_files::CKPT_ADAPTER);
        if a.join(ADAPTER_CONFIG_FILE).is_file() {
            return Ok(a);
        }
    }
    Err(InferError::NoAdapter {
        path: path.to_path_buf(),
    })
}

/// Loads `model` (a llava-hf folder or hub id) for inference, with the
/// adapter at `adapter` applied when given ([`resolve_adapter`]). An
/// adapter that does not fit the model is an error naming its tensor.
pub fn load_policy(model: &str, adapter: Option<&Path>) -> Result<(LlavaBundle, Option<PathBuf>)> {
    let device = crate::model::compute_device().map_err(ModelError::from)?;
    let mut bundle = LlavaBundle::load(model, &device)?;
    bundle.model.set_grad_enabled(false);
    let adapter = adapter.map(resolve_adapter).transpose()?;
    if let Some(a) = &adapter {
        bundle.model.load_adapter(a)?;
    }
    Ok((bundle, adapter))
}

/// A short label for a model and adapter: the folder name (or hub id),
/// with `+<adapter's run or folder>` when an adapter is applied.
pub fn model_label(model: &str, adapter: Option<&Path>) -> String {
    let name = |p: &Path| {
        p.file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| p.display().to_string())
    };
    let base = if Path::new(model).exists() {
        name(Path::new(model))
    } else {
        model.to_string()
    };
    match adapter {
        None => base,
        Some(a) => {
            // runs/x/adapter → x; runs/x/checkpoint-5/adapter → x@checkpoint-5.
            let parent = a.parent();
            let label = match (a.file_name().and_then(|n| n.to_str()), parent) {
                (Some("adapter"), Some(p)) => {
                    let pname = name(p);
                    match p.parent() {
                        Some(run) if pname.starts_with(run_files::CHECKPOINT_PREFIX) => {
                            format!("{}@{pname}", name(run))
                        }
                        _ => pname,
                    }
                }
                _ => name(a),
            };
            format!("{base}+{label}")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_name_the_run_and_checkpoint() {
        assert_eq!(
            model_label("llava-hf/llava-1.5-7b-hf", None),
            "llava-hf/llava-1.5-7b-hf"
        );
        assert_eq!(
            model_label("m", Some(Path::new("runs/dpo/adapter"))),
            "m+dpo"
        );
        assert_eq!(
            model_label("m", Some(Path::new("runs/dpo/checkpoint-20/adapter"))),
            "m+dpo@checkpoint-20"
        );
    }

    #[test]
    fn a_folder_without_adapter_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let err = resolve_adapter(dir.path()).unwrap_err().to_string();
        assert!(err.contains("no LoRA adapter here"), "{err}");
    }
}
