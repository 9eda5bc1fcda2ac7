//! Object-detection datasets in COCO / Objects365 v2 JSON, loaded lean and
//! validated record by record, plus SPR's preprocessing.
//!
//! The in-memory index is a structure of arrays sorted by image, so that an
//! Objects365-val-sized file (80k images, 1.2M boxes) fits in a few tens of
//! MB; [`Dataset::load`] streams the file instead of holding it (see
//! `json.rs` and `coco.rs`). Every problem found in a record becomes a
//! [`DatasetIssue`] naming the file, the record and the field; the record is
//! skipped or repaired and every good record is still loaded. Only a file
//! that is not JSON at all (or lacks the `images` / `annotations` arrays)
//! fails the load, with the line and column of the fault.
//!
//! Preprocessing follows SPR (ICCV 2025, §3.1 and §4.1): objects with area
//! below 300 are dropped, crowd boxes are kept out of matching, and
//! object-rich images (more than eight objects) are selected.

mod coco;
mod json;

use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::core::geometry::Bbox;

pub(crate) use coco::escapes_root;
pub use coco::{LoadOptions, LoadStats, SplitUse};

/// One image record.
#[derive(Clone, Debug, PartialEq)]
pub struct ImageInfo {
    /// The dataset's image id.
    pub id: u64,
    /// Path relative to the image root (checked not to escape it).
    pub file_name: String,
    /// Width in pixels.
    pub width: u32,
    /// Height in pixels.
    pub height: u32,
}

/// One category record.
#[derive(Clone, Debug, PartialEq)]
pub struct Category {
    /// The dataset's category id.
    pub id: u64,
    /// Its name.
    pub name: String,
}

/// All objects (annotations) as parallel arrays, sorted by image index and,
/// within an image, in file order.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Objects {
    /// Annotation ids.
    pub id: Vec<u64>,
    /// Index into [`Dataset::images`].
    pub image: Vec<u32>,
    /// Index into [`Dataset::categories`].
    pub category: Vec<u32>,
    /// Box, pixel `xyxy` in the original image.
    pub bbox: Vec<Bbox>,
    /// The record's `area` field, or the box area when the field is absent.
    pub area: Vec<f32>,
    /// COCO's `iscrowd`.
    pub crowd: Vec<bool>,
}

impl Objects {
    /// Number of objects.
    pub fn len(&self) -> usize {
        self.id.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.id.is_empty()
    }
}

/// What happened to a record with a problem.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    /// The record was left out.
    Skipped,
    /// The record was kept after a repair (e.g. a box clipped to the image).
    Repaired,
}

/// Which record an issue is about.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RecordRef {
    /// The top-level array: `images`, `annotations` or `categories`.
    pub array: String,
    /// Position in that array.
    pub index: usize,
    /// The record's `id`, when it has a readable one.
    pub id: Option<u64>,
}

/// One problem found while loading, e.g. `annotations.json: annotations[17]
/// (id 42), field "bbox": box has NaN coordinates; skipped`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DatasetIssue {
    /// The annotation file.
    pub file: PathBuf,
    /// The record.
    pub record: RecordRef,
    /// The field at fault.
    pub field: String,
    /// What is wrong, in words.
    pub message: String,
    /// What was done about it.
    pub action: Action,
}

impl fmt::Display for DatasetIssue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}: {}[{}]",
            self.file.display(),
            self.record.array,
            self.record.index
        )?;
        if let Some(id) = self.record.id {
            write!(f, " (id {id})")?;
        }
        let action = match self.action {
            Action::Skipped => "skipped",
            Action::Repaired => "repaired",
        };
        write!(f, ", field \"{}\": {}; {action}", self.field, self.message)
    }
}

/// A load that could not produce a dataset at all.
#[derive(Debug, thiserror::Error)]
pub enum DatasetError {
    /// The file could not be read.
    #[error("{file}: {source}")]
    Io {
        /// The file.
        file: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The file is not well-formed JSON.
    #[error("{file}:{line}:{column}: malformed JSON: {message}")]
    Json {
        /// The file.
        file: PathBuf,
        /// 1-based line of the fault.
        line: usize,
        /// 1-based column (in bytes) of the fault.
        column: usize,
        /// What the parser expected.
        message: String,
    },
    /// Well-formed JSON that is not a COCO dataset.
    #[error("{file}: {message}")]
    Format {
        /// The file.
        file: PathBuf,
        /// What is missing or wrong.
        message: String,
    },
}

/// A loaded, validated dataset.
#[derive(Clone, Debug, Default)]
pub struct Dataset {
    /// The annotation file it came from.
    pub source: PathBuf,
    /// The folder image `file_name`s are relative to.
    pub image_root: PathBuf,
    /// Images, in file order.
    pub images: Vec<ImageInfo>,
    /// Categories, in file order.
    pub categories: Vec<Category>,
    /// Objects, grouped by image.
    pub objects: Objects,
    /// `image_objects[i]` is the range of [`Dataset::objects`] for image `i`.
    pub image_objects: Vec<Range<u32>>,
    /// Every problem found, in file order.
    pub issues: Vec<DatasetIssue>,
}

/// SPR's preprocessing settings (mirrors `[dataset]` in `spr.toml`).
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Preprocess {
    /// Objects with a smaller area are dropped (SPR: 300).
    pub min_area: f32,
    /// An image is object-rich with at least this many usable objects
    /// (SPR kept images with more than eight: 9).
    pub min_objects: usize,
}

impl Default for Preprocess {
    fn default() -> Self {
        Self {
            min_area: 300.0,
            min_objects: 9,
        }
    }
}

impl Dataset {
    /// Load and validate a COCO / Objects365 JSON file. See [`LoadOptions`].
    pub fn load(
        annotations: &Path,
        image_root: &Path,
        options: &LoadOptions,
    ) -> Result<Dataset, DatasetError> {
        coco::load(annotations, image_root, options).map(|(ds, _)| ds)
    }

    /// [`Dataset::load`], also saying how the load went (its size, and
    /// whether two threads shared it).
    pub fn load_with_stats(
        annotations: &Path,
        image_root: &Path,
        options: &LoadOptions,
    ) -> Result<(Dataset, LoadStats), DatasetError> {
        coco::load(annotations, image_root, options)
    }

    /// Index of the image with dataset id `id` (binary search when images are
    /// sorted by id, else a scan).
    pub fn image_index(&self, id: u64) -> Option<usize> {
        if self.images.windows(2).all(|w| w[0].id < w[1].id) {
            self.images.binary_search_by_key(&id, |i| i.id).ok()
        } else {
            self.images.iter().position(|i| i.id == id)
        }
    }

    /// Index of the object with annotation id `id`.
    pub fn object_index(&self, id: u64) -> Option<usize> {
        self.objects.id.iter().position(|&x| x == id)
    }

    /// The object indices of image `image`.
    pub fn objects_of(&self, image: usize) -> Range<usize> {
        let r = &self.image_objects[image];
        r.start as usize..r.end as usize
    }

    /// The category name of object `object`.
    pub fn category_name(&self, object: usize) -> &str {
        &self.categories[self.objects.category[object] as usize].name
    }

    /// Whether object `object` takes part in region building and matching:
    /// not crowd and at least `min_area`.
    pub fn is_usable(&self, object: usize, pre: &Preprocess) -> bool {
        !self.objects.crowd[object] && self.objects.area[object] >= pre.min_area
    }

    /// The usable objects of image `image`.
    pub fn usable_objects(&self, image: usize, pre: &Preprocess) -> Vec<usize> {
        self.objects_of(image)
            .filter(|&o| self.is_usable(o, pre))
            .collect()
    }

    /// Number of usable objects per image.
    pub fn usable_counts(&self, pre: &Preprocess) -> Vec<u32> {
        (0..self.images.len())
            .map(|i| {
                self.objects_of(i)
                    .filter(|&o| self.is_usable(o, pre))
                    .count() as u32
            })
            .collect()
    }

    /// Indices of the object-rich images (at least `pre.min_objects` usable objects).
    pub fn object_rich_images(&self, pre: &Preprocess) -> Vec<usize> {
        self.usable_counts(pre)
            .iter()
            .enumerate()
            .filter(|(_, &n)| n as usize >= pre.min_objects)
            .map(|(i, _)| i)
            .collect()
    }

    /// The image's path on disk (its `file_name` was checked at load not to
    /// escape the root).
    pub fn image_path(&self, image: usize) -> PathBuf {
        self.image_root.join(&self.images[image].file_name)
    }
}
