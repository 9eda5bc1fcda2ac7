//! `spr tiny tower`: pretrains the tiny LLaVA's vision tower on synthetic
//! scenes so that each image token says which object covers its patch and
//! where that object is (see [`crate::train::patches`] for why and how).
//! It rewrites the tower's weights of a model folder in place; the language
//! model and the projector are left as they are, so it runs between `spr
//! tiny init` and the projector gate.

use std::path::Path;

use anyhow::Result;
use candle_core::{DType, Device};

use crate::demo::tiny_gate::visit_scenes;
use crate::model::llava::save_model;
use crate::model::processor::ImageProcessor;
use crate::model::Llava;
use crate::train::patches::{self, PatchConfig, PatchEval, PatchExample, PatchStep};

/// What [`pretrain_tower`] did.
#[derive(Clone, Debug)]
pub struct TowerReport {
    /// Scenes trained on, and held out.
    pub scenes: (usize, usize),
    /// The held-out scenes through the trained tower and head.
    pub eval: PatchEval,
    /// The last step.
    pub last: Option<PatchStep>,
}

/// Per-patch targets of the first `max` scenes of the project `scenes`
/// (class 0 for background, categories from 1), with the model's
/// processor's pixels; and the number of classes.
fn examples(
    model: &Llava,
    processor: &ImageProcessor,
    model_dir: &Path,
    scenes: &Path,
    max: usize,
) -> Result<(Vec<PatchExample>, usize)> {
    let mut out = Vec::new();
    let (_, categories) =
        visit_scenes(model, processor, model_dir, scenes, max, |pixels, cover| {
            out.push(PatchExample {
                pixels,
                class: cover.iter().map(|c| c.map_or(0, |(k, _)| k + 1)).collect(),
                edges: cover
                    .iter()
                    .map(|c| c.map_or([0.0; 4], |(_, e)| e))
                    .collect(),
            });
            Ok(())
        })?;
    Ok((out, categories + 1))
}

/// Trains the tower of the model in `model_dir` on the first `max_scenes`
/// scenes of the project `scenes`, keeping the last `eval_scenes` of them
/// out for the report, and writes the trained tower back into
/// `model_dir`.
pub fn pretrain_tower(
    model_dir: &Path,
    scenes: &Path,
    max_scenes: usize,
    eval_scenes: usize,
    cfg: &PatchConfig,
    progress: impl FnMut(&PatchStep),
) -> Result<TowerReport> {
    let device = Device::Cpu;
    let (model, weights) = Llava::load_full(model_dir, &device, DType::F32, true)?;
    let llava_cfg = model.config().clone();
    let processor = ImageProcessor::from_dir(model_dir, &llava_cfg.vision_config)?;
    let (mut all, classes) = examples(&model, &processor, model_dir, scenes, max_scenes)?;
    anyhow::ensure!(
        all.len() > eval_scenes,
        "{}: {} scenes, not more than the {eval_scenes} held out",
        scenes.display(),
        all.len()
    );
    let held = all.split_off(all.len() - eval_scenes);
    let vars = weights
        .trainable
        .iter()
        .filter(|(name, _)| name.starts_with("vision_tower."))
        .cloned()
        .collect();
    let (steps, head) = patches::train(&model, vars, &all, classes, cfg, progress)?;
    let eval = if held.is_empty() {
        PatchEval::default()
    } else {
        patches::evaluate(&model, &head, &held, cfg.batch)?
    };
    drop(model);
    save_model(model_dir, &llava_cfg, &weights.all)?;
    Ok(TowerReport {
        scenes: (all.len(), held.len()),
        eval,
        last: steps.last().copied(),
    })
}
