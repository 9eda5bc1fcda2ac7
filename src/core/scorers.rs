//! The model-backed parts of SPR's score, as plug-in points the pure
//! pipeline calls: a [`SemanticScorer`] (CLIP in SPR) and an
//! open-vocabulary [`Detector`] (GroundingDINO in SPR, OWLv2 here). The
//! implementations live above the core (`crate::scoring`, in candle); the
//! core never links a tensor library. [`NoSemantic`] and [`NoDetector`]
//! stand for "not configured": the semantic component stays absent and the
//! localization score uses the written boxes only.
//!
//! Both work a region at a time, so a model encodes each region's images
//! once for all of its candidates (SPR's K descriptions of one query share
//! the crop and the full image).

use serde::{Deserialize, Serialize};

use crate::core::geometry::Bbox;
use crate::core::project::RegionRecord;

/// The two halves of SPR's semantic score, `S_sem = ½·(crop + local)`.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct SemanticParts {
    /// cos(I_crop, T): the region ×1.5, padded to a square.
    pub crop: f32,
    /// S_local(I, T): the region's embedding taken from the whole image by
    /// the local-attention layer.
    pub local: f32,
    /// Pieces the text was embedded in (texts longer than the text tower's
    /// context are split at sentence ends and their embeddings averaged).
    #[serde(default = "one", skip_serializing_if = "is_one")]
    pub chunks: usize,
}

fn one() -> usize {
    1
}

fn is_one(n: &usize) -> bool {
    *n == 1
}

impl SemanticParts {
    /// `½·(crop + local)`.
    pub fn score(&self) -> f32 {
        0.5 * (self.crop + self.local)
    }
}

/// Scores how well texts describe a region.
pub trait SemanticScorer {
    /// A name recorded with each score (the model), or `None` when no
    /// scorer is configured.
    fn name(&self) -> Option<&str>;
    /// The semantic parts of each text (descriptions with their boxes
    /// stripped) for `region`, in order; an error names why the region
    /// could not be scored (a missing image, …).
    fn score_region(
        &self,
        region: &RegionRecord,
        texts: &[String],
    ) -> Result<Vec<SemanticParts>, String>;

    /// [`Self::score_region`] for many regions, in order (a scorer may
    /// spread them over the cores).
    fn score_regions(
        &self,
        work: &[(&RegionRecord, Vec<String>)],
    ) -> Vec<Result<Vec<SemanticParts>, String>> {
        work.iter()
            .map(|(r, texts)| self.score_region(r, texts))
            .collect()
    }
}

/// No semantic scorer: the component stays absent.
#[derive(Clone, Copy, Debug, Default)]
pub struct NoSemantic;

impl SemanticScorer for NoSemantic {
    fn name(&self) -> Option<&str> {
        None
    }

    fn score_region(
        &self,
        _region: &RegionRecord,
        texts: &[String],
    ) -> Result<Vec<SemanticParts>, String> {
        Err(format!(
            "no semantic scorer configured ({} texts)",
            texts.len()
        ))
    }
}

/// One box an open-vocabulary detector found for a phrase.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Detection {
    /// The phrase it answers (as the description writes it).
    pub phrase: String,
    /// The box, image pixels.
    pub bbox: Bbox,
    /// The detector's confidence in `[0, 1]`.
    pub score: f32,
}

/// An open-vocabulary detector plugged into the localization score.
pub trait Detector {
    /// A name recorded with each score (model and threshold), or `None`
    /// when no detector is configured.
    fn name(&self) -> Option<String>;
    /// For each candidate's phrases (in order), the boxes found for them
    /// inside the region's crop, mapped to image pixels; an error names why
    /// the region could not be searched.
    fn detect_region(
        &self,
        region: &RegionRecord,
        phrases: &[Vec<String>],
    ) -> Result<Vec<Vec<Detection>>, String>;

    /// [`Self::detect_region`] for many regions, in order (a detector may
    /// spread them over the cores).
    fn detect_regions(
        &self,
        work: &[(&RegionRecord, Vec<Vec<String>>)],
    ) -> Vec<Result<Vec<Vec<Detection>>, String>> {
        work.iter()
            .map(|(r, phrases)| self.detect_region(r, phrases))
            .collect()
    }
}

/// No detector: contributes no boxes.
#[derive(Clone, Copy, Debug, Default)]
pub struct NoDetector;

impl Detector for NoDetector {
    fn name(&self) -> Option<String> {
        None
    }

    fn detect_region(
        &self,
        _region: &RegionRecord,
        phrases: &[Vec<String>],
    ) -> Result<Vec<Vec<Detection>>, String> {
        Ok(vec![Vec::new(); phrases.len()])
    }
}

/// The scorers a scoring run uses.
#[derive(Clone, Copy)]
pub struct Scorers<'a> {
    /// The semantic score.
    pub semantic: &'a dyn SemanticScorer,
    /// The detector.
    pub detector: &'a dyn Detector,
}

impl Scorers<'static> {
    /// Neither: localization from the written boxes only.
    pub fn none() -> Self {
        Scorers {
            semantic: &NoSemantic,
            detector: &NoDetector,
        }
    }
}
