//! Checkpoints: `checkpoint-<step>/` holds the trainable weights (a PEFT
//! `adapter/`, or `weights.safetensors` for full fine-tuning),
//! `optimizer.safetensors` (AdamW moments `m.<var>` / `v.<var>`) and
//! `trainer_state.json` (step, [`DataOrder`], AdamW step count). It is
//! built under a temporary name and renamed in whole
//! ([`atomic::commit_dir`]), so a checkpoint folder is complete or absent.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor, Var};
use serde::{Deserialize, Serialize};

use super::adamw::AdamW;
use super::{io_err, Result, TrainError};
use crate::core::atomic;
use crate::core::runs::{files, RunDir};
use crate::model::lora::PeftLayout;
use crate::model::{FullWeights, LlavaBundle};
use crate::train::data::DataOrder;

/// Saved by each checkpoint in `trainer_state.json`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub(super) struct TrainerState {
    pub(super) step: u64,
    pub(super) data_order: DataOrder,
    pub(super) adam_step: u64,
}

/// Writes `checkpoint-<step>/` atomically and returns its path.
pub(super) fn save_checkpoint(
    run: &RunDir,
    bundle: &LlavaBundle,
    full: Option<&FullWeights>,
    opt: &AdamW,
    state: &TrainerState,
) -> Result<PathBuf> {
    let dir = run.checkpoint_dir(state.step);
    let tmp = atomic::temp_dir_for(&dir).map_err(io_err(&dir))?;
    match full {
        Some(w) => {
            let map: HashMap<String, Tensor> = w
                .trainable
                .iter()
                .map(|(n, v)| (n.clone(), v.as_tensor().clone()))
                .collect();
            candle_core::safetensors::save(&map, tmp.join(files::CKPT_WEIGHTS))?;
        }
        None => bundle
            .model
            .save_adapter(&tmp.join(files::CKPT_ADAPTER), PeftLayout::Current)?,
    }
    opt.save(&tmp.join(files::CKPT_OPTIMIZER))?;
    let state_path = tmp.join(files::CKPT_STATE);
    let bytes = serde_json::to_vec_pretty(state).map_err(|source| TrainError::Json {
        path: state_path.clone(),
        source,
    })?;
    std::fs::write(&state_path, bytes).map_err(io_err(&state_path))?;
    atomic::commit_dir(&tmp, &dir).map_err(io_err(&dir))?;
    Ok(dir)
}

/// The tensor `key` of a checkpoint file loaded into `map`, checked to
/// have the shape of `var` (`owner` names what holds `var` in the error).
pub(super) fn checkpoint_tensor<'a>(
    map: &'a HashMap<String, Tensor>,
    path: &Path,
    key: &str,
    var: &Var,
    owner: &str,
) -> Result<&'a Tensor> {
    let x = map.get(key).ok_or_else(|| TrainError::Checkpoint {
        path: path.to_path_buf(),
        message: format!("missing tensor {key}"),
    })?;
    if x.dims() != var.dims() {
        return Err(TrainError::Checkpoint {
            path: path.to_path_buf(),
            message: format!("{key}: shape {:?}, {owner} has {:?}", x.dims(), var.dims()),
        });
    }
    Ok(x)
}

/// Restores a full fine-tuning checkpoint's trainable weights in place.
pub(super) fn load_full_weights(path: &Path, weights: &FullWeights, device: &Device) -> Result<()> {
    let map = candle_core::safetensors::load(path, device)?;
    for (name, var) in &weights.trainable {
        let x = checkpoint_tensor(&map, path, name, var, "the model")?;
        var.set(&x.to_dtype(var.dtype())?)?;
    }
    Ok(())
}
