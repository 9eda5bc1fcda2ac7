//! `spr.toml`: the project's settings, one serde struct per table, so
//! that the types mirror the file they load.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::short_f32;

use crate::core::dataset::Preprocess;
use crate::core::grounded::BoxFormat;
use crate::core::regions::RegionConfig;
use crate::core::scores::{LocVariant, DEFAULT_LAMBDA, MATCH_IOU};

/// `[dataset]` in `spr.toml`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatasetConfig {
    /// COCO / Objects365 annotation JSON, relative to the project folder.
    pub annotations: PathBuf,
    /// Folder the images' `file_name`s are relative to.
    pub image_root: PathBuf,
    /// SPR: objects with a smaller area are dropped.
    #[serde(default = "default_min_area")]
    #[serde(serialize_with = "short_f32")]
    pub min_area: f32,
    /// SPR: object-rich images have at least this many objects (9 = "more than eight").
    #[serde(default = "default_min_objects")]
    pub min_objects: usize,
}

fn default_min_area() -> f32 {
    Preprocess::default().min_area
}

fn default_min_objects() -> usize {
    Preprocess::default().min_objects
}

impl DatasetConfig {
    /// The preprocessing settings.
    pub fn preprocess(&self) -> Preprocess {
        Preprocess {
            min_area: self.min_area,
            min_objects: self.min_objects,
        }
    }
}

/// `[model]` in `spr.toml`: how the model writes boxes.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ModelConfig {
    /// Grounded-text syntax of the model's output (see `grounded::BoxFormat`).
    pub format: BoxFormat,
}

/// `[scoring]` in `spr.toml`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ScoringConfig {
    /// Weight of the semantic score in the composite (SPR: 0.8).
    #[serde(serialize_with = "short_f32")]
    pub lambda: f32,
    /// Localization formula.
    pub localization: LocVariant,
    /// IoU at which a box matches (SPR: 0.5).
    #[serde(serialize_with = "short_f32")]
    pub match_iou: f32,
    /// CLIP model of the semantic score: a folder (relative to the project
    /// or absolute) or a hub id (`openai/clip-vit-large-patch14-336`);
    /// unset: no semantic score.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub semantic_model: Option<String>,
    /// Open-vocabulary detector (`Owlv2ForObjectDetection`): a folder or a
    /// hub id (`google/owlv2-base-patch16-ensemble`); unset: the
    /// localization score uses the written boxes only.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detector_model: Option<String>,
    /// Least class probability of a detector box (OWLv2's examples use
    /// 0.1–0.3).
    #[serde(serialize_with = "short_f32")]
    pub detector_threshold: f32,
}

/// The default `[scoring] detector_threshold`.
pub const DETECTOR_THRESHOLD: f32 = 0.3;

impl Default for ScoringConfig {
    fn default() -> Self {
        Self {
            lambda: DEFAULT_LAMBDA,
            localization: LocVariant::Recall,
            match_iou: MATCH_IOU,
            semantic_model: None,
            detector_model: None,
            detector_threshold: DETECTOR_THRESHOLD,
        }
    }
}

/// `[export]` in `spr.toml`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ExportConfig {
    /// The user turn of every exported pair (the crop is the image).
    pub prompt: String,
}

impl Default for ExportConfig {
    fn default() -> Self {
        Self {
            prompt: "Describe this image region in detail. Give the bounding box of every object you mention."
                .into(),
        }
    }
}

/// `spr.toml`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProjectConfig {
    /// Must be [`FORMAT_VERSION`].
    pub format_version: u32,
    /// Display name.
    pub name: String,
    /// Free text shown with the project (e.g. "synthetic demo data").
    #[serde(default)]
    pub description: String,
    /// The dataset.
    pub dataset: DatasetConfig,
    /// Region queries.
    #[serde(default)]
    pub regions: RegionConfig,
    /// The model profile.
    #[serde(default)]
    pub model: ModelConfig,
    /// Scores.
    #[serde(default)]
    pub scoring: ScoringConfig,
    /// Export.
    #[serde(default)]
    pub export: ExportConfig,
    /// Candidate generation by a model (`spr generate`).
    #[serde(default)]
    pub generate: crate::core::prompts::GenerateConfig,
}
