//! The records of the stage files (one JSON object per line), each with
//! its format version `v`.

use serde::{Deserialize, Serialize};

use crate::core::geometry::Bbox;
use crate::core::grounded::{BoxFormat, TextIssue};
use crate::core::scores::{Components, LocVariant, Match};

/// Where a region query came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RegionSource {
    /// SPR's random growth.
    Random,
    /// Drawn by hand.
    Manual,
}

/// One region query (`regions.jsonl`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RegionRecord {
    /// Format version.
    pub v: u32,
    /// Query id, unique in the project (`"<image id>-<k>"`).
    pub id: String,
    /// Dataset image id.
    pub image_id: u64,
    /// Image path relative to the image root.
    pub file_name: String,
    /// Image width in pixels.
    pub width: u32,
    /// Image height in pixels.
    pub height: u32,
    /// The region, image pixels.
    pub region: Bbox,
    /// What the model sees: the region scaled 1.5× and clamped, image pixels.
    pub crop: Bbox,
    /// Annotation id of the box the growth started from (absent when drawn by hand).
    pub seed_object: Option<u64>,
    /// Annotation ids of the region's objects (≥ 50% inside).
    pub objects: Vec<u64>,
    /// How it was made.
    pub source: RegionSource,
}

/// Which pixel frame a candidate's boxes refer to.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Frame {
    /// The query's crop (what the model was shown).
    #[default]
    Crop,
    /// The whole image.
    Image,
}

/// One grounded description of a region (`candidates.jsonl`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CandidateRecord {
    /// Format version.
    pub v: u32,
    /// Candidate id, unique in the project.
    pub id: String,
    /// The region query it describes.
    pub query_id: String,
    /// Who wrote it: a model name, `"manual"`, `"import:<file>"`, or
    /// `"synthetic-demo:<kind>"` for the demo's generated descriptions.
    pub source: String,
    /// The prompt that produced it, when known.
    #[serde(default)]
    pub prompt: Option<String>,
    /// The text exactly as the model wrote it.
    pub text: String,
    /// Its box syntax.
    pub format: BoxFormat,
    /// The frame its boxes refer to.
    #[serde(default)]
    pub frame: Frame,
    /// How a model wrote it (`spr generate`); absent for other sources.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub generation: Option<GenerationMeta>,
}

/// How a model generated a candidate: enough to tell candidates of one
/// model, adapter, prompt and sample apart, and to reproduce them.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct GenerationMeta {
    /// The model folder or hub id.
    pub model: String,
    /// The LoRA adapter folder, when one was applied.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub adapter: Option<String>,
    /// The prompt template's id.
    pub prompt_id: String,
    /// Sample index within (query, prompt), from 0.
    pub sample: usize,
    /// Softmax temperature (0: greedy).
    pub temperature: f64,
    /// Nucleus mass (top-p), when sampling.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub top_p: Option<f64>,
    /// The sequence's own sampling seed, when sampling.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seed: Option<u64>,
    /// Token limit of the answer.
    pub max_new_tokens: usize,
    /// Whether the answer ended by itself (`eos`) or hit the limit
    /// (`length`).
    pub finish: String,
}

/// Score components of one candidate (`scores.jsonl`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ScoreRecord {
    /// Format version.
    pub v: u32,
    /// The candidate.
    pub candidate_id: String,
    /// Its query.
    pub query_id: String,
    /// CLIP semantic score `½·(crop + local)`; `null` until a semantic
    /// scorer has run.
    pub semantic: Option<f32>,
    /// Its two parts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub semantic_parts: Option<crate::core::scorers::SemanticParts>,
    /// The semantic scorer, when one ran.
    #[serde(default)]
    pub semantic_model: Option<String>,
    /// Localization score.
    pub localization: f32,
    /// Formula used for it.
    pub localization_variant: LocVariant,
    /// Detector that added boxes, with its threshold (`"none"` for written
    /// boxes only).
    pub detector: String,
    /// The boxes the description gives, image pixels, in text order.
    pub boxes: Vec<Bbox>,
    /// The detector's boxes for the description's phrases, image pixels.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub detections: Vec<crate::core::scorers::Detection>,
    /// Matches: `gt` indexes the region's `objects`, `pred` indexes the
    /// predictions `boxes` followed by `detections`.
    pub matches: Vec<Match>,
    /// Indices (into `boxes` then `detections`) of predictions matching no
    /// region object.
    pub unmatched_preds: Vec<usize>,
    /// Problems met while parsing the text.
    pub parse_issues: Vec<TextIssue>,
    /// What the scorers did not do for this candidate, and why.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<String>,
}

impl ScoreRecord {
    /// The stored components.
    pub fn components(&self) -> Components {
        Components {
            semantic: self.semantic,
            localization: self.localization,
        }
    }
}

/// One preference pair (`pairs.jsonl`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PairRecord {
    /// Format version.
    pub v: u32,
    /// The region query.
    pub query_id: String,
    /// Image path relative to the image root.
    pub file_name: String,
    /// The crop shown to the model, image pixels.
    pub crop: Bbox,
    /// λ used for the ranking.
    pub lambda: f32,
    /// The best candidate.
    pub chosen_id: String,
    /// The worst candidate.
    pub rejected_id: String,
    /// The chosen text after refinement, in the model's syntax, crop frame.
    pub chosen: String,
    /// The chosen text as written.
    pub chosen_original: String,
    /// The rejected text as written (crop frame).
    pub rejected: String,
    /// Components of the chosen candidate (before refinement).
    pub chosen_scores: Components,
    /// Components of the rejected candidate.
    pub rejected_scores: Components,
    /// Localization score of the refined chosen text.
    pub chosen_refined_localization: f32,
    /// True when the ranking used localization only because a semantic
    /// score was missing.
    pub semantic_missing: bool,
    /// True when chosen or rejected was marked by hand (`marks.jsonl`).
    #[serde(default)]
    pub manual: bool,
    /// Box syntax of the texts.
    pub format: BoxFormat,
}

/// Serialise an `f32` by its shortest decimal form (`0.8`, not
/// `0.800000011920929`), for settings files people read.
pub fn short_f32<S: serde::Serializer>(v: &f32, s: S) -> Result<S::Ok, S::Error> {
    let shortest: f64 = v.to_string().parse().unwrap_or(f64::from(*v));
    s.serialize_f64(shortest)
}

/// A hand-set override of a query's chosen and/or rejected candidate
/// (`marks.jsonl`); the automatic choice fills whichever is absent.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MarkRecord {
    /// Format version.
    pub v: u32,
    /// The region query.
    pub query_id: String,
    /// Candidate marked chosen.
    #[serde(default)]
    pub chosen: Option<String>,
    /// Candidate marked rejected.
    #[serde(default)]
    pub rejected: Option<String>,
}

/// A record type with a format version.
pub trait Versioned {
    /// The record's `v`.
    fn version(&self) -> u32;
}

macro_rules! versioned {
    ($($t:ty),*) => {$(impl Versioned for $t { fn version(&self) -> u32 { self.v } })*};
}
versioned!(
    RegionRecord,
    CandidateRecord,
    ScoreRecord,
    PairRecord,
    MarkRecord
);
