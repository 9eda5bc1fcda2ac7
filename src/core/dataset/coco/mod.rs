//! Loading COCO / Objects365 v2 detection JSON, streamed and validated record
//! by record.
//!
//! The file is walked with the pull parser of `json.rs`: no copy of the
//! file and no `serde_json::Value` tree is ever held, each record (one image,
//! annotation or category object) is parsed field by field into compact data,
//! and unknown fields (`segmentation`, `isfake`, `license`, `url`, ...) are
//! skipped without being decoded. This keeps an Objects365-val-sized file
//! (80k images, 1.2M boxes, 200 MB) well under a second and a quarter of a
//! GB, where `json.load` + pycocotools takes seconds and about 1 GB.
//!
//! The top-level keys may come in any order: annotations are buffered as
//! fixed-size records (56 bytes each) and their image and category ids are
//! resolved once the whole file is read. The objects are then put in image
//! order with a counting sort (stable, so file order is kept within an
//! image) straight into the structure of arrays of [`Objects`].
//!
//! Validation: every problem becomes a [`DatasetIssue`] naming the record
//! (array, index, id) and field; the record is skipped, or repaired where a
//! repair is safe (a box clipped to its image, an unusable `area` replaced by
//! the box area), and every good record is still loaded. Only input that is
//! not JSON ([`DatasetError::Json`], with line and column) or lacks the
//! `images`, `annotations` or `categories` arrays ([`DatasetError::Format`])
//! fails the load. No input bytes make the loader panic.
//!
//! Duplicate annotation ids are found without a 1.2M-entry hash map: ids that
//! are strictly increasing in file order (the usual case) need one pass, and
//! otherwise a sorted copy of the ids finds the repeated ones.
//!
//! Files of 16 MB and more are parsed by two threads when the machine has
//! two cores (`split.rs`): a second thread guesses a record boundary
//! in the middle of the file and parses the rest of the `annotations` array
//! from there, while the main thread parses from the start; the second
//! thread's work is adopted only if the main thread arrives at that offset
//! as the start of an `annotations` element, so the result (issues, errors
//! and their line and column included) is always exactly that of one thread.
//! This nearly halves the wall time of an Objects365-sized load.
//!
//! The parts: this file walks the document and holds the loader's state;
//! `records.rs` parses and checks one record; `ids.rs` has the id tables;
//! `resolve.rs` resolves ids and sorts the objects by image;
//! `problems.rs` describes what is wrong; `split.rs` is the two-thread
//! load. [`LoadStats`] says how a load went (for benchmarks and tests).

mod ids;
mod problems;
mod records;
mod resolve;
mod split;
#[cfg(test)]
mod tests;

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};

use super::json::{JsonError, JsonReader, Kind, DEFAULT_CAPACITY};
use super::*;
use ids::IdTable;
use problems::Pending;
use records::{read_val, Chunks, RawAnn};
use split::Split;

pub(crate) use records::escapes_root;

/// Options of [`Dataset::load`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LoadOptions {
    /// At most this many issues are kept in [`Dataset::issues`] (the first
    /// ones in file order); when there are more, one last entry says how
    /// many were left out. The records are handled the same either way.
    pub max_issues_kept: usize,
}

impl Default for LoadOptions {
    fn default() -> Self {
        Self {
            max_issues_kept: 10_000,
        }
    }
}

/// Files at least this big are parsed by two threads (see the module
/// documentation); below it a thread costs more than it saves.
const SPLIT_MIN_BYTES: u64 = 16 << 20;

/// How the work of a load was shared between threads.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum SplitUse {
    /// One thread parsed the file (small file, one core, or no record
    /// boundary found to split at).
    #[default]
    OneThread,
    /// A second thread parsed the second half of `annotations` and its
    /// work was adopted.
    Adopted,
    /// A second thread ran, but its guess of a record boundary was wrong
    /// (or it stopped), so the main thread parsed everything.
    Abandoned,
    /// The second thread met the file's error first; it was reported at
    /// its place in the file.
    TailFailed,
}

/// How a load went.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LoadStats {
    /// The file's size in bytes.
    pub bytes: u64,
    /// How the work was shared between threads.
    pub split: SplitUse,
}

/// Load `annotations` (see [`Dataset::load`]).
pub(super) fn load(
    annotations: &Path,
    image_root: &Path,
    options: &LoadOptions,
) -> Result<(Dataset, LoadStats), DatasetError> {
    load_path(annotations, image_root, options, SPLIT_MIN_BYTES)
}

/// [`load`], splitting the work between two threads for files of at least
/// `split_min` bytes when the machine has two cores.
fn load_path(
    annotations: &Path,
    image_root: &Path,
    options: &LoadOptions,
    split_min: u64,
) -> Result<(Dataset, LoadStats), DatasetError> {
    let open_at = |offset: u64| -> io::Result<File> {
        let mut file = File::open(annotations)?;
        if offset > 0 {
            file.seek(SeekFrom::Start(offset))?;
        }
        Ok(file)
    };
    let file = open_at(0).map_err(|source| DatasetError::Io {
        file: annotations.to_path_buf(),
        source,
    })?;
    let len = file.metadata().map_or(0, |m| m.len());
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let (loaded, split) = if len >= split_min && cores >= 2 {
        split::load_split(
            file,
            &open_at,
            len,
            DEFAULT_CAPACITY,
            annotations,
            image_root,
            options,
        )
    } else {
        let ds = load_from(JsonReader::new(file), annotations, image_root, options);
        (ds, SplitUse::OneThread)
    };
    loaded.map(|ds| (ds, LoadStats { bytes: len, split }))
}

/// Load from any reader; `file` names the input in errors and issues.
pub(super) fn load_from<R: Read>(
    mut reader: JsonReader<R>,
    file: &Path,
    image_root: &Path,
    options: &LoadOptions,
) -> Result<Dataset, DatasetError> {
    let mut loader = Loader::default();
    match loader.parse(&mut reader, &mut None) {
        Ok(()) => Ok(loader.finish(file, image_root, options)),
        Err(fail) => Err(fail.into_error(file)),
    }
}

/// Why parsing stopped.
pub(super) enum Fail {
    /// Malformed JSON or a read error.
    Json(Box<JsonError>),
    /// Well-formed JSON that is not a COCO dataset.
    Format(String),
}

impl Fail {
    pub(super) fn into_error(self, file: &Path) -> DatasetError {
        let file = file.to_path_buf();
        match self {
            Fail::Json(e) => match *e {
                JsonError::Io(source) => DatasetError::Io { file, source },
                JsonError::Syntax {
                    line,
                    column,
                    message,
                    ..
                } => DatasetError::Json {
                    file,
                    line,
                    column,
                    message,
                },
            },
            Fail::Format(message) => DatasetError::Format { file, message },
        }
    }
}

impl From<Box<JsonError>> for Fail {
    fn from(e: Box<JsonError>) -> Self {
        Fail::Json(e)
    }
}

/// The three record arrays.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Arr {
    Images,
    Annotations,
    Categories,
}

impl Arr {
    pub(super) fn name(self) -> &'static str {
        match self {
            Arr::Images => "images",
            Arr::Annotations => "annotations",
            Arr::Categories => "categories",
        }
    }
}

/// Top-level keys.
#[derive(Clone, Copy, PartialEq, Eq)]
enum TopKey {
    Images,
    Annotations,
    Categories,
    Other,
}

fn top_key(k: &[u8]) -> TopKey {
    match k {
        b"images" => TopKey::Images,
        b"annotations" => TopKey::Annotations,
        b"categories" => TopKey::Categories,
        _ => TopKey::Other,
    }
}

/// State while reading the file.
#[derive(Default)]
pub(super) struct Loader {
    /// The arrays in the order they appear in the file.
    order: Vec<Arr>,
    images: IdTable<ImageInfo>,
    categories: IdTable<Category>,
    anns: Chunks<RawAnn>,
    /// Annotations adopted from the second thread of a split load, after
    /// `anns`; their `index` is to be shifted by `tail_shift`.
    tail: Chunks<RawAnn>,
    tail_shift: u32,
    issues: Vec<Pending>,
    /// How a split load went.
    split: SplitUse,
}

impl Loader {
    /// Walk the whole document.
    fn parse<R: Read>(
        &mut self,
        r: &mut JsonReader<R>,
        split: &mut Option<Split<'_, R>>,
    ) -> Result<(), Fail> {
        let kind = r.peek_kind()?;
        if kind != Kind::Object {
            let found = read_val(r)?;
            r.finish()?;
            return Err(Fail::Format(format!(
                "the top level is {}, not an object with \"images\", \"annotations\" and \
                 \"categories\"",
                found.describe()
            )));
        }
        let mut key = r.begin_object(top_key)?;
        while let Some(k) = key {
            let array = match k {
                TopKey::Images => Some(Arr::Images),
                TopKey::Annotations => Some(Arr::Annotations),
                TopKey::Categories => Some(Arr::Categories),
                TopKey::Other => None,
            };
            match array {
                None => r.skip_value()?,
                Some(array) => {
                    if self.order.contains(&array) {
                        return Err(Fail::Format(format!(
                            "the top-level key \"{}\" appears twice",
                            array.name()
                        )));
                    }
                    self.order.push(array);
                    let kind = r.peek_kind()?;
                    if kind != Kind::Array {
                        let found = read_val(r)?;
                        return Err(Fail::Format(format!(
                            "\"{}\" is {}, not an array",
                            array.name(),
                            found.describe()
                        )));
                    }
                    if r.begin_array()? {
                        let mut index = 0usize;
                        loop {
                            if array == Arr::Annotations
                                && split.is_some()
                                && self.handoff(r, split, index)?
                            {
                                // The rest of the array was parsed by the
                                // second thread; `r` is after its `]`.
                                break;
                            }
                            match array {
                                Arr::Images => self.parse_image(r, index)?,
                                Arr::Annotations => self.parse_annotation(r, index)?,
                                Arr::Categories => self.parse_category(r, index)?,
                            }
                            index += 1;
                            if !r.next_element()? {
                                break;
                            }
                        }
                    }
                }
            }
            key = r.next_key(top_key)?;
        }
        r.finish()?;
        for array in [Arr::Images, Arr::Annotations, Arr::Categories] {
            if !self.order.contains(&array) {
                return Err(Fail::Format(format!(
                    "no \"{}\" array: not a COCO detection file",
                    array.name()
                )));
            }
        }
        Ok(())
    }
}
