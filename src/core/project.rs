//! Project folders: `spr.toml` plus one JSONL file per pipeline stage.
//!
//! A project is a folder that the GUI and the CLI both read and write:
//!
//! ```text
//! my-project/
//!   spr.toml            settings (this module's ProjectConfig)
//!   regions.jsonl       one RegionRecord per region query
//!   candidates.jsonl    one CandidateRecord per grounded description
//!   scores.jsonl        one ScoreRecord per candidate (components kept)
//!   pairs.jsonl         one PairRecord per query (chosen vs rejected)
//!   export/             TRL-layout export and its crops
//!   runs/<name>/        training runs
//! ```
//!
//! Every record carries a format version `v`; a reader refuses records of a
//! version it does not know, by line. A malformed line is reported with its
//! file and line number and skipped; the other lines are still read. Every
//! file is written atomically (temporary file in the same folder, then a
//! rename) so a crash never leaves half a file.

use std::fs;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::core::dataset::{Dataset, DatasetError, LoadOptions, Preprocess};
use crate::core::geometry::Bbox;
use crate::core::grounded::{BoxFormat, TextIssue};
use crate::core::regions::RegionConfig;
use crate::core::scores::{Components, LocVariant, Match, DEFAULT_LAMBDA, MATCH_IOU};

/// The record format version written by this build.
pub const FORMAT_VERSION: u32 = 1;

/// File names inside a project folder.
pub mod files {
    /// Settings.
    pub const CONFIG: &str = "spr.toml";
    /// Region queries.
    pub const REGIONS: &str = "regions.jsonl";
    /// Candidate descriptions.
    pub const CANDIDATES: &str = "candidates.jsonl";
    /// Score components.
    pub const SCORES: &str = "scores.jsonl";
    /// Preference pairs.
    pub const PAIRS: &str = "pairs.jsonl";
    /// Chosen / rejected marks set by hand.
    pub const MARKS: &str = "marks.jsonl";
    /// Export folder.
    pub const EXPORT_DIR: &str = "export";
    /// TRL-layout pairs inside the export folder.
    pub const TRL_PAIRS: &str = "trl_pairs.jsonl";
}

/// Errors reading or writing project files.
#[derive(Debug, thiserror::Error)]
pub enum ProjectError {
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// `spr.toml` is not valid.
    #[error("{path}: {message}")]
    Config {
        /// The file.
        path: PathBuf,
        /// The TOML error, with its line and column.
        message: String,
    },
    /// A record could not be encoded.
    #[error("{path}: cannot encode record: {message}")]
    Encode {
        /// The file.
        path: PathBuf,
        /// The cause.
        message: String,
    },
}

impl ProjectError {
    /// An I/O error on `path`.
    pub fn io(path: &Path, source: std::io::Error) -> Self {
        ProjectError::Io {
            path: path.to_path_buf(),
            source,
        }
    }
}

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

/// A JSONL line that could not be read; the rest of the file still was.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, thiserror::Error)]
#[error("{}:{line}: {message}", file.display())]
pub struct LineError {
    /// The file.
    pub file: PathBuf,
    /// 1-based line number.
    pub line: usize,
    /// What is wrong, naming the field where serde could.
    pub message: String,
}

/// Records read from a JSONL file with their 1-based line numbers, and the
/// lines that could not be read.
pub type JsonlLines<T> = (Vec<(usize, T)>, Vec<LineError>);

/// Read a JSONL file of versioned records. Blank lines are skipped; a bad
/// line becomes a [`LineError`] and the others are still returned. A missing
/// file is an I/O error (`NotFound`).
pub fn read_jsonl<T: DeserializeOwned + Versioned>(
    path: &Path,
) -> Result<(Vec<T>, Vec<LineError>), ProjectError> {
    let (lines, mut errors) = read_jsonl_plain::<T>(path)?;
    let mut records = Vec::with_capacity(lines.len());
    for (line, r) in lines {
        if r.version() == FORMAT_VERSION {
            records.push(r);
        } else {
            errors.push(LineError {
                file: path.to_path_buf(),
                line,
                message: format!(
                    "field \"v\": format version {} is not supported (this build reads {FORMAT_VERSION})",
                    r.version()
                ),
            });
        }
    }
    errors.sort_by_key(|e| e.line);
    Ok((records, errors))
}

/// Read a JSONL file of any serde type, without version checks (for
/// imported files such as predictions). Same error handling as [`read_jsonl`].
pub fn read_jsonl_plain<T: DeserializeOwned>(path: &Path) -> Result<JsonlLines<T>, ProjectError> {
    let file = fs::File::open(path).map_err(|e| ProjectError::io(path, e))?;
    let mut records = Vec::new();
    let mut errors = Vec::new();
    for (i, line) in BufReader::new(file).lines().enumerate() {
        let line = line.map_err(|e| ProjectError::io(path, e))?;
        if line.trim().is_empty() {
            continue;
        }
        match serde_json::from_str::<T>(&line) {
            Ok(r) => records.push((i + 1, r)),
            Err(e) => errors.push(LineError {
                file: path.to_path_buf(),
                line: i + 1,
                message: e.to_string(),
            }),
        }
    }
    Ok((records, errors))
}

/// Write `bytes` to `path` atomically ([`crate::core::atomic`]), naming
/// the file in the error.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), ProjectError> {
    crate::core::atomic::write_atomic(path, bytes).map_err(|e| ProjectError::io(path, e))
}

/// Records encoded as JSONL bytes (one compact JSON object per line).
pub fn encode_jsonl<T: Serialize>(path: &Path, records: &[T]) -> Result<Vec<u8>, ProjectError> {
    let mut out = Vec::with_capacity(records.len() * 256);
    for r in records {
        serde_json::to_writer(&mut out, r).map_err(|e| ProjectError::Encode {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
        out.push(b'\n');
    }
    Ok(out)
}

/// Write records as JSONL, atomically.
pub fn write_jsonl<T: Serialize>(path: &Path, records: &[T]) -> Result<(), ProjectError> {
    write_atomic(path, &encode_jsonl(path, records)?)
}

/// Atomic file writes done in order on a background thread, so that a GUI
/// never waits on the disk. Failures are kept for the caller to show.
#[derive(Debug)]
pub struct BackgroundWriter {
    tx: std::sync::mpsc::Sender<(PathBuf, Vec<u8>)>,
    pending: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    errors: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

impl Default for BackgroundWriter {
    fn default() -> Self {
        Self::new()
    }
}

impl BackgroundWriter {
    /// Start the writer thread (it ends when the writer is dropped).
    pub fn new() -> Self {
        use std::sync::atomic::Ordering;
        let (tx, rx) = std::sync::mpsc::channel::<(PathBuf, Vec<u8>)>();
        let pending = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let errors = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let (p, e) = (pending.clone(), errors.clone());
        std::thread::spawn(move || {
            for (path, bytes) in rx {
                if let Err(err) = write_atomic(&path, &bytes) {
                    if let Ok(mut v) = e.lock() {
                        v.push(err.to_string());
                    }
                }
                p.fetch_sub(1, Ordering::SeqCst);
            }
        });
        Self {
            tx,
            pending,
            errors,
        }
    }

    /// Queue an atomic write of `bytes` to `path`.
    pub fn write(&self, path: PathBuf, bytes: Vec<u8>) {
        self.pending
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        if self.tx.send((path.clone(), bytes)).is_err() {
            self.pending
                .fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
            if let Ok(mut v) = self.errors.lock() {
                v.push(format!("{}: the writer thread has stopped", path.display()));
            }
        }
    }

    /// Writes not finished yet.
    pub fn pending(&self) -> usize {
        self.pending.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Failures since the last call.
    pub fn take_errors(&self) -> Vec<String> {
        self.errors
            .lock()
            .map(|mut v| std::mem::take(&mut *v))
            .unwrap_or_default()
    }
}

/// Where the pairs of training data `data` come from when it is a
/// project's: `(project folder, pairs file)` for a project folder (its
/// `pairs.jsonl`) or for a `pairs*.jsonl` file lying in one (`spr pairs
/// --out`, e.g. one file per λ); `None` for anything else (a TRL-layout
/// file).
pub fn pairs_in_project(data: &Path) -> Option<(PathBuf, PathBuf)> {
    if data.is_dir() && data.join(files::CONFIG).is_file() {
        return Some((data.to_path_buf(), data.join(files::PAIRS)));
    }
    let named_pairs = data
        .file_name()
        .and_then(|n| n.to_str())
        .is_some_and(|n| n.starts_with("pairs"));
    data.parent()
        .filter(|dir| named_pairs && data.is_file() && dir.join(files::CONFIG).is_file())
        .map(|dir| (dir.to_path_buf(), data.to_path_buf()))
}

/// An open project folder.
#[derive(Clone, Debug)]
pub struct Project {
    /// The folder.
    pub root: PathBuf,
    /// Its `spr.toml`.
    pub config: ProjectConfig,
}

impl Project {
    /// Open the project in folder `root` (reads `spr.toml`).
    pub fn open(root: &Path) -> Result<Project, ProjectError> {
        let path = root.join(files::CONFIG);
        let text = fs::read_to_string(&path).map_err(|e| ProjectError::io(&path, e))?;
        let config: ProjectConfig = toml::from_str(&text).map_err(|e| ProjectError::Config {
            path: path.clone(),
            message: e.to_string(),
        })?;
        if config.format_version != FORMAT_VERSION {
            return Err(ProjectError::Config {
                path,
                message: format!(
                    "format_version {} is not supported (this build reads {FORMAT_VERSION})",
                    config.format_version
                ),
            });
        }
        Ok(Project {
            root: root.to_path_buf(),
            config,
        })
    }

    /// Write `spr.toml` for `config` into `root` and open it.
    pub fn create(root: &Path, config: ProjectConfig) -> Result<Project, ProjectError> {
        let path = root.join(files::CONFIG);
        let text = toml::to_string_pretty(&config).map_err(|e| ProjectError::Encode {
            path: path.clone(),
            message: e.to_string(),
        })?;
        write_atomic(&path, text.as_bytes())?;
        Ok(Project {
            root: root.to_path_buf(),
            config,
        })
    }

    /// A path inside the project.
    pub fn path(&self, name: &str) -> PathBuf {
        self.root.join(name)
    }

    /// The annotation file.
    pub fn annotations_path(&self) -> PathBuf {
        self.root.join(&self.config.dataset.annotations)
    }

    /// The image root.
    pub fn image_root(&self) -> PathBuf {
        self.root.join(&self.config.dataset.image_root)
    }

    /// Loads the project's dataset (its annotations and image root) with
    /// the default options; bad records are in [`Dataset::issues`].
    pub fn load_dataset(&self) -> Result<Dataset, DatasetError> {
        Dataset::load(
            &self.annotations_path(),
            &self.image_root(),
            &LoadOptions::default(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pairs_in_project_knows_a_project_and_its_pairs_files() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path();
        std::fs::write(p.join(files::CONFIG), "").unwrap();
        for f in ["pairs-lambda0_8.jsonl", "trl_pairs.jsonl"] {
            std::fs::write(p.join(f), "").unwrap();
        }
        assert_eq!(
            pairs_in_project(p),
            Some((p.to_path_buf(), p.join(files::PAIRS)))
        );
        let per_lambda = p.join("pairs-lambda0_8.jsonl");
        assert_eq!(
            pairs_in_project(&per_lambda),
            Some((p.to_path_buf(), per_lambda.clone()))
        );
        // A TRL file beside spr.toml, and a pairs file outside a project.
        assert_eq!(pairs_in_project(&p.join("trl_pairs.jsonl")), None);
        let other = tempfile::tempdir().unwrap();
        let outside = other.path().join("pairs.jsonl");
        std::fs::write(&outside, "").unwrap();
        assert_eq!(pairs_in_project(&outside), None);
    }

    #[test]
    fn jsonl_bad_lines_are_reported_and_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("regions.jsonl");
        let good = RegionRecord {
            v: 1,
            id: "1-0".into(),
            image_id: 1,
            file_name: "a.png".into(),
            width: 10,
            height: 10,
            region: Bbox::new(0.0, 0.0, 5.0, 5.0),
            crop: Bbox::new(0.0, 0.0, 7.0, 7.0),
            seed_object: Some(3),
            objects: vec![3],
            source: RegionSource::Random,
        };
        let mut text = serde_json::to_string(&good).unwrap();
        text.push_str("\n{not json\n\n");
        text.push_str(
            &serde_json::to_string(&RegionRecord {
                v: 9,
                ..good.clone()
            })
            .unwrap(),
        );
        text.push_str("\n{\"v\":1,\"id\":\"x\"}\n");
        fs::write(&path, text).unwrap();
        let (records, errors) = read_jsonl::<RegionRecord>(&path).unwrap();
        assert_eq!(records, vec![good]);
        assert_eq!(errors.len(), 3);
        assert_eq!(errors[0].line, 2);
        assert_eq!(errors[1].line, 4);
        assert!(errors[1].message.contains("format version 9"));
        assert_eq!(errors[2].line, 5);
        assert!(
            errors[2].message.contains("missing field `image_id`"),
            "{}",
            errors[2].message
        );
        assert!(errors[2]
            .to_string()
            .starts_with(&format!("{}:5: ", path.display())));
    }

    #[test]
    fn background_writes_land_in_order_and_report_failures() {
        let dir = tempfile::tempdir().unwrap();
        let w = BackgroundWriter::new();
        let path = dir.path().join("a.jsonl");
        for i in 0..20 {
            w.write(path.clone(), format!("{i}").into_bytes());
        }
        let blocker = dir.path().join("file");
        fs::write(&blocker, b"x").unwrap();
        w.write(blocker.join("under-a-file.jsonl"), b"y".to_vec());
        while w.pending() > 0 {
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        assert_eq!(fs::read_to_string(&path).unwrap(), "19");
        let errors = w.take_errors();
        assert_eq!(errors.len(), 1);
        assert!(errors[0].contains("under-a-file.jsonl"), "{errors:?}");
    }

    #[test]
    fn config_errors_name_the_file_and_line() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(
            dir.path().join("spr.toml"),
            "format_version = 1\nname = \"x\"\n[dataset]\nannotations = \"a.json\"\nimage_root = \"i\"\nbogus = 3\n",
        )
        .unwrap();
        let err = Project::open(dir.path()).unwrap_err().to_string();
        assert!(
            err.contains("spr.toml") && err.contains("bogus") && err.contains("line 6"),
            "{err}"
        );
    }
}
