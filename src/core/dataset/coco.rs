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
//! two cores (see `load_split`): a second thread guesses a record boundary
//! in the middle of the file and parses the rest of the `annotations` array
//! from there, while the main thread parses from the start; the second
//! thread's work is adopted only if the main thread arrives at that offset
//! as the start of an `annotations` element, so the result (issues, errors
//! and their line and column included) is always exactly that of one thread.
//! This nearly halves the wall time of an Objects365-sized load.

use std::collections::hash_map::Entry;
use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::hash::{BuildHasherDefault, Hasher};
use std::io::{self, Read, Seek, SeekFrom};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;

use super::json::{JResult, JsonError, JsonReader, Kind, Scalar, DEFAULT_CAPACITY};
use super::*;

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

/// Load `annotations` (see [`Dataset::load`]).
pub(super) fn load(
    annotations: &Path,
    image_root: &Path,
    options: &LoadOptions,
) -> Result<Dataset, DatasetError> {
    load_path(annotations, image_root, options, SPLIT_MIN_BYTES)
}

/// [`load`], splitting the work between two threads for files of at least
/// `split_min` bytes when the machine has two cores.
fn load_path(
    annotations: &Path,
    image_root: &Path,
    options: &LoadOptions,
    split_min: u64,
) -> Result<Dataset, DatasetError> {
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
    if len >= split_min && cores >= 2 {
        load_split(
            file,
            &open_at,
            len,
            DEFAULT_CAPACITY,
            annotations,
            image_root,
            options,
        )
    } else {
        load_from(JsonReader::new(file), annotations, image_root, options)
    }
}

/// Load from any reader; `file` names the input in errors and issues.
fn load_from<R: Read>(
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

/// Load with two threads: `first` reads the input from its start and
/// `open_at(offset)` opens it again at `offset`; `len` is its size.
///
/// A second thread parses the second half of the `annotations` array
/// speculatively: it starts at the first `}, {` after the middle of the
/// file, taking the `{` for the start of an annotation record, and parses
/// records up to the array's closing `]`. The main thread parses from the
/// start; if it arrives at that very offset as the start of an element of
/// `annotations`, the guess was right and the state of the two parsers there
/// is the same, so it adopts the second thread's records, issues (indices
/// shifted) and reader (line numbers shifted) and carries on after the `]`.
/// Otherwise (the offset was inside a string, a nested value or another
/// array) it cancels the second thread and parses everything itself. The
/// result, errors included, is exactly that of [`load_from`].
fn load_split<R, F>(
    first: R,
    open_at: &F,
    len: u64,
    capacity: usize,
    file: &Path,
    image_root: &Path,
    options: &LoadOptions,
) -> Result<Dataset, DatasetError>
where
    R: Read + Send,
    F: Fn(u64) -> io::Result<R> + Sync,
{
    let mut reader = JsonReader::with_capacity(first, capacity);
    let Some(boundary) = find_boundary(open_at, len) else {
        return load_from(reader, file, image_root, options);
    };
    let stop = AtomicBool::new(false);
    let (tx, rx) = mpsc::sync_channel(1);
    let parsed = std::thread::scope(|s| {
        let stop = &stop;
        s.spawn(move || {
            let tail = parse_tail(open_at, boundary, capacity, stop);
            // The receiver is gone only when the main thread no longer
            // wants the result.
            let _ = tx.send(tail);
        });
        let mut split = Some(Split { boundary, rx, stop });
        let mut loader = Loader::default();
        let parsed = loader.parse(&mut reader, &mut split);
        stop.store(true, Ordering::Relaxed);
        parsed.map(|()| loader)
    });
    match parsed {
        Ok(loader) => Ok(loader.finish(file, image_root, options)),
        Err(fail) => Err(fail.into_error(file)),
    }
}

/// Where the second thread starts: the `{` of the first `}`, `,`, `{`
/// sequence (whitespace allowed between) in the MB after the middle.
fn find_boundary<R: Read, F: Fn(u64) -> io::Result<R>>(open_at: &F, len: u64) -> Option<u64> {
    let mid = len / 2;
    let mut window = Vec::new();
    open_at(mid)
        .ok()?
        .take(1 << 20)
        .read_to_end(&mut window)
        .ok()?;
    let ws = |b: &u8| matches!(b, b' ' | b'\n' | b'\r' | b'\t');
    let mut i = 0;
    while i < window.len() {
        if window[i] == b'}' {
            let mut j = i + 1;
            while window.get(j).is_some_and(ws) {
                j += 1;
            }
            if window.get(j) == Some(&b',') {
                j += 1;
                while window.get(j).is_some_and(ws) {
                    j += 1;
                }
                if window.get(j) == Some(&b'{') {
                    return Some(mid + j as u64);
                }
            }
        }
        i += 1;
    }
    None
}

/// The second thread's work: annotation records from `boundary` to the end
/// of their array.
fn parse_tail<R: Read, F: Fn(u64) -> io::Result<R>>(
    open_at: &F,
    boundary: u64,
    capacity: usize,
    stop: &AtomicBool,
) -> Result<Tail<R>, Fail> {
    let src = open_at(boundary).map_err(|e| Fail::Json(Box::new(JsonError::Io(e))))?;
    let mut reader = JsonReader::starting_at(src, boundary, capacity);
    let mut loader = Loader::default();
    let mut count = 0usize;
    loop {
        if count.is_multiple_of(1024) && stop.load(Ordering::Relaxed) {
            return Err(Fail::Format("cancelled".to_string()));
        }
        loader.parse_annotation(&mut reader, count)?;
        count += 1;
        if !reader.next_element()? {
            break;
        }
    }
    Ok(Tail {
        reader,
        loader,
        count,
    })
}

/// The main thread's side of a split load.
struct Split<'a, R> {
    /// Where the second thread started.
    boundary: u64,
    /// Its result.
    rx: mpsc::Receiver<Result<Tail<R>, Fail>>,
    /// Tells it to give up.
    stop: &'a AtomicBool,
}

/// What the second thread parsed.
struct Tail<R> {
    /// Its reader, just after the `]` of `annotations`.
    reader: JsonReader<R>,
    /// Its annotations and issues, indexed from the boundary.
    loader: Loader,
    /// Records parsed.
    count: usize,
}

/// Why parsing stopped.
enum Fail {
    /// Malformed JSON or a read error.
    Json(Box<JsonError>),
    /// Well-formed JSON that is not a COCO dataset.
    Format(String),
}

impl Fail {
    fn into_error(self, file: &Path) -> DatasetError {
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

/// Hasher for integer ids: a 64-bit finaliser, much cheaper than SipHash
/// and fine for ids, which are not chosen by an adversary of the process
/// (a bad file can only make loading slower).
#[derive(Default)]
struct IdHasher(u64);

impl Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.write_u64(u64::from(b));
        }
    }

    fn write_u64(&mut self, v: u64) {
        let mut z = (self.0 ^ v).wrapping_add(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 33)).wrapping_mul(0xFF51_AFD7_ED55_8CCD);
        self.0 = z ^ (z >> 33);
    }
}

type IdMap<V> = HashMap<u64, V, BuildHasherDefault<IdHasher>>;
type IdSet = HashSet<u64, BuildHasherDefault<IdHasher>>;

/// Id → index lookup: a direct table when the ids are dense, else a map.
struct IdIndex {
    min: u64,
    table: Vec<u32>,
    map: IdMap<u32>,
}

impl IdIndex {
    fn new(map: IdMap<u32>) -> Self {
        let (Some(&min), Some(&max)) = (map.keys().min(), map.keys().max()) else {
            return Self {
                min: 0,
                table: Vec::new(),
                map,
            };
        };
        let span = max - min;
        if span < 4 * map.len() as u64 + 4096 {
            let mut table = vec![u32::MAX; span as usize + 1];
            for (&id, &i) in &map {
                table[(id - min) as usize] = i;
            }
            Self {
                min,
                table,
                map: IdMap::default(),
            }
        } else {
            Self {
                min: 0,
                table: Vec::new(),
                map,
            }
        }
    }

    #[inline]
    fn get(&self, id: u64) -> Option<u32> {
        if self.table.is_empty() {
            return self.map.get(&id).copied();
        }
        let i = self
            .table
            .get(usize::try_from(id.wrapping_sub(self.min)).ok()?)
            .copied()?;
        (i != u32::MAX).then_some(i)
    }
}

/// The three record arrays.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Arr {
    Images,
    Annotations,
    Categories,
}

impl Arr {
    fn name(self) -> &'static str {
        match self {
            Arr::Images => "images",
            Arr::Annotations => "annotations",
            Arr::Categories => "categories",
        }
    }
}

/// A field value as read: numbers, bools and null, or the kind of a
/// skipped string or container (kept for messages).
type Val = Scalar;

impl Scalar {
    /// The value in words, for messages.
    fn describe(self) -> String {
        match self {
            Val::Num(n) => match n.uint() {
                Some(u) => u.to_string(),
                None => n.value().to_string(),
            },
            Val::Bool(b) => b.to_string(),
            Val::Null => "null".to_string(),
            Val::Skipped(Kind::Array) => "an array".to_string(),
            Val::Skipped(Kind::Object) => "an object".to_string(),
            Val::Skipped(_) => "a string".to_string(),
        }
    }

    /// A non-negative integer id (integral numbers like `5.0` accepted).
    #[inline]
    fn as_id(self) -> Option<u64> {
        match self {
            Val::Num(n) => n.uint().or_else(|| {
                let v = n.value();
                ((0.0..9_007_199_254_740_992.0).contains(&v) && v.fract() == 0.0)
                    .then_some(v as u64)
            }),
            _ => None,
        }
    }

    /// A positive pixel size that fits in `u32`.
    fn as_size(self) -> Option<u32> {
        self.as_id()
            .and_then(|v| u32::try_from(v).ok())
            .filter(|&v| v > 0)
    }

    /// `iscrowd`: 0, 1 or a bool.
    #[inline]
    fn as_flag(self) -> Option<bool> {
        match self {
            Val::Bool(b) => Some(b),
            Val::Num(n) => match n.uint() {
                Some(0) => Some(false),
                Some(1) => Some(true),
                _ => None,
            },
            _ => None,
        }
    }

    /// A usable `area`: a finite non-negative number (as `f32`).
    #[inline]
    fn as_area(self) -> Option<f32> {
        match self {
            Val::Num(n) => {
                let v = n.value();
                (v >= 0.0 && (v as f32).is_finite()).then_some(v as f32)
            }
            _ => None,
        }
    }
}

/// Read any value.
#[inline]
fn read_val<R: Read>(r: &mut JsonReader<R>) -> JResult<Val> {
    r.read_scalar()
}

/// The `bbox` field as read.
#[derive(Clone, Copy, Debug)]
enum BboxVal {
    NotArray(Val),
    Parsed {
        /// The first four entries.
        v: [f64; 4],
        /// Number of entries.
        n: usize,
        /// The first entry that is not a number.
        bad: Option<(usize, Val)>,
    },
}

fn read_bbox<R: Read>(r: &mut JsonReader<R>) -> JResult<BboxVal> {
    if r.peek_kind()? != Kind::Array {
        return Ok(BboxVal::NotArray(read_val(r)?));
    }
    let mut v = [0.0; 4];
    let mut n = 0;
    let mut bad = None;
    if r.begin_array()? {
        loop {
            match read_val(r)? {
                Val::Num(x) => {
                    if let Some(slot) = v.get_mut(n) {
                        *slot = x.value();
                    }
                }
                val => bad = bad.or(Some((n, val))),
            }
            n += 1;
            if !r.next_element()? {
                break;
            }
        }
    }
    Ok(BboxVal::Parsed { v, n, bad })
}

/// One problem with a record; turned into a [`DatasetIssue`] at the end
/// (only for the issues kept).
#[derive(Clone, Debug)]
enum Problem {
    NotObject(Val),
    Missing(&'static str),
    Invalid {
        field: &'static str,
        found: Val,
        want: &'static str,
    },
    NameNotString(&'static str, Val),
    FileNameEscapes(String),
    DuplicateId {
        first: usize,
    },
    UnknownRef {
        field: &'static str,
        id: u64,
        skipped_at: Option<usize>,
    },
    BboxNotArray(Val),
    BboxLen(usize),
    BboxEntry(usize, Val),
    BboxNonFinite,
    BboxEmpty {
        w: f64,
        h: f64,
    },
    BboxRange,
    BboxClipped {
        from: Bbox,
        to: Bbox,
        width: u32,
        height: u32,
    },
    BboxOutside {
        from: Bbox,
        width: u32,
        height: u32,
    },
    AreaInvalid(Val),
}

/// `[x1, y1, x2, y2]` for messages.
fn show_box(b: Bbox) -> String {
    format!("[{}, {}, {}, {}]", b.x1, b.y1, b.x2, b.y2)
}

impl Problem {
    /// The field, the message and the action.
    fn describe(&self, array: Arr) -> (&'static str, String, Action) {
        use Action::{Repaired, Skipped};
        match self {
            Problem::NotObject(v) => (
                "",
                format!("record is {}, not an object", v.describe()),
                Skipped,
            ),
            Problem::Missing(f) => (*f, "missing".to_string(), Skipped),
            Problem::Invalid { field, found, want } => (
                *field,
                format!("{} is not {want}", found.describe()),
                Skipped,
            ),
            Problem::NameNotString(f, v) => {
                (*f, format!("{} is not a string", v.describe()), Skipped)
            }
            Problem::FileNameEscapes(name) => (
                "file_name",
                format!("refused: file_name escapes the image root ({name:?})"),
                Skipped,
            ),
            Problem::DuplicateId { first } => (
                "id",
                format!("duplicate id (first at {}[{first}])", array.name()),
                Skipped,
            ),
            Problem::UnknownRef {
                field,
                id,
                skipped_at,
            } => {
                let (what, arr) = if *field == "image_id" {
                    ("image", "images")
                } else {
                    ("category", "categories")
                };
                let why = match skipped_at {
                    Some(i) => format!(" ({arr}[{i}] with that id was skipped)"),
                    None => String::new(),
                };
                (*field, format!("unknown {what} id {id}{why}"), Skipped)
            }
            Problem::BboxNotArray(v) => (
                "bbox",
                format!("{} is not an array of 4 numbers", v.describe()),
                Skipped,
            ),
            Problem::BboxLen(n) => ("bbox", format!("has {n} entries, not 4"), Skipped),
            Problem::BboxEntry(k, v) => (
                "bbox",
                format!("entry {k} is {}, not a number", v.describe()),
                Skipped,
            ),
            Problem::BboxNonFinite => (
                "bbox",
                "has a non-finite coordinate (NaN or overflow)".to_string(),
                Skipped,
            ),
            Problem::BboxEmpty { w, h } => (
                "bbox",
                format!("width {w} and height {h} must both be positive"),
                Skipped,
            ),
            Problem::BboxRange => (
                "bbox",
                "coordinates are out of range for 32-bit floats".to_string(),
                Skipped,
            ),
            Problem::BboxClipped {
                from,
                to,
                width,
                height,
            } => (
                "bbox",
                format!(
                    "box {} extends more than 1 px outside the {width}x{height} image; \
                     clipped to {}",
                    show_box(*from),
                    show_box(*to)
                ),
                Repaired,
            ),
            Problem::BboxOutside {
                from,
                width,
                height,
            } => (
                "bbox",
                format!(
                    "box {} lies outside the {width}x{height} image",
                    show_box(*from)
                ),
                Skipped,
            ),
            Problem::AreaInvalid(v) => (
                "area",
                format!(
                    "{} is not a non-negative number; replaced by the box area",
                    v.describe()
                ),
                Repaired,
            ),
        }
    }
}

/// An issue waiting to be sorted and (maybe) kept.
#[derive(Clone, Debug)]
struct Pending {
    array: Arr,
    index: usize,
    id: Option<u64>,
    problem: Problem,
}

/// An annotation that passed the checks that need no other record; 56
/// bytes, buffered until the images and categories are known.
#[derive(Clone, Copy, Debug)]
struct RawAnn {
    id: u64,
    /// The image id; after resolution the image index, or [`REJECTED`].
    image: u64,
    /// The category id; after resolution the category index.
    category: u64,
    /// Pixel `xyxy`.
    bbox: Bbox,
    /// The `area` field; NaN when absent.
    area: f32,
    /// Position in the `annotations` array.
    index: u32,
    crowd: bool,
}

/// Marks a [`RawAnn`] rejected at resolution.
const REJECTED: u64 = u64::MAX;

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

/// Fields of the three record kinds.
#[derive(Clone, Copy, PartialEq, Eq)]
enum FieldKey {
    Id,
    FileName,
    Width,
    Height,
    Name,
    ImageId,
    CategoryId,
    Bbox,
    Area,
    IsCrowd,
    Other,
}

#[inline]
fn field_key(k: &[u8]) -> FieldKey {
    match k {
        b"id" => FieldKey::Id,
        b"bbox" => FieldKey::Bbox,
        b"image_id" => FieldKey::ImageId,
        b"category_id" => FieldKey::CategoryId,
        b"area" => FieldKey::Area,
        b"iscrowd" => FieldKey::IsCrowd,
        b"file_name" => FieldKey::FileName,
        b"width" => FieldKey::Width,
        b"height" => FieldKey::Height,
        b"name" => FieldKey::Name,
        _ => FieldKey::Other,
    }
}

/// Whether a `file_name` would name something outside the image root (or
/// the root itself): empty, absolute, a Windows drive prefix, a `..`
/// component, or a NUL byte. Both `/` and `\` count as separators so the
/// check is the same on every platform.
pub(crate) fn escapes_root(name: &str) -> bool {
    let b = name.as_bytes();
    if b.is_empty() || b.contains(&0) || b[0] == b'/' || b[0] == b'\\' {
        return true;
    }
    if b.len() >= 2 && b[1] == b':' && b[0].is_ascii_alphabetic() {
        return true;
    }
    let mut names_something = false;
    for part in name.split(['/', '\\']) {
        if part == ".." {
            return true;
        }
        names_something |= !part.is_empty() && part != ".";
    }
    !names_something
}

/// State while reading the file.
#[derive(Default)]
struct Loader {
    /// The arrays in the order they appear in the file.
    order: Vec<Arr>,
    images: Vec<ImageInfo>,
    /// Image id → index into `images`.
    image_ids: IdMap<u32>,
    /// `images` array position of each kept image.
    image_records: Vec<usize>,
    /// Ids of images skipped for a problem → their array position.
    skipped_images: IdMap<usize>,
    categories: Vec<Category>,
    category_ids: IdMap<u32>,
    category_records: Vec<usize>,
    skipped_categories: IdMap<usize>,
    anns: Vec<RawAnn>,
    /// Annotations adopted from the second thread of a split load, after
    /// `anns`; their `index` is to be shifted by `tail_shift`.
    tail: Vec<RawAnn>,
    tail_shift: u32,
    issues: Vec<Pending>,
}

impl Loader {
    fn issue(&mut self, array: Arr, index: usize, id: Option<u64>, problem: Problem) {
        self.issues.push(Pending {
            array,
            index,
            id,
            problem,
        });
    }

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

    /// At the start of element `index` of `annotations` in a split load:
    /// take over the second thread's work if it started here (then `true`),
    /// give up on it if it started at an offset already passed.
    fn handoff<R: Read>(
        &mut self,
        r: &mut JsonReader<R>,
        split: &mut Option<Split<'_, R>>,
        index: usize,
    ) -> Result<bool, Fail> {
        let at = r.peek_offset()?;
        let Some(sp) = split.take_if(|sp| at >= sp.boundary) else {
            return Ok(false);
        };
        if at > sp.boundary {
            sp.stop.store(true, Ordering::Relaxed);
            return Ok(false);
        }
        let (lines, last_newline) = r.lines_to_here();
        match sp.rx.recv() {
            Ok(Ok(tail)) => {
                let Tail {
                    mut reader,
                    loader,
                    count,
                } = tail;
                // Every shifted index must fit in `u32`, as in `parse_annotation`.
                let fits = index.checked_add(count).is_some_and(|end| end <= 1 << 32);
                let (true, Ok(shift)) = (fits, u32::try_from(index)) else {
                    return Err(Fail::Format(
                        "more annotations than this loader supports".to_string(),
                    ));
                };
                reader.rebase(lines, last_newline);
                *r = reader;
                self.tail = loader.anns;
                self.tail_shift = shift;
                self.issues.extend(loader.issues.into_iter().map(|mut p| {
                    p.index += index;
                    p
                }));
                #[cfg(test)]
                tests::ADOPTED.with(|n| n.set(n.get() + 1));
                Ok(true)
            }
            Ok(Err(Fail::Json(mut e))) => {
                #[cfg(test)]
                tests::TAIL_ERRORS.with(|n| n.set(n.get() + 1));
                e.rebase(lines, last_newline);
                Err(Fail::Json(e))
            }
            Ok(Err(fail)) => Err(fail),
            // The second thread is gone without a result: parse on alone.
            Err(_) => Ok(false),
        }
    }

    /// If the next value is not an object, skip it, report it and return
    /// `false`.
    fn expect_record<R: Read>(
        &mut self,
        r: &mut JsonReader<R>,
        array: Arr,
        index: usize,
    ) -> JResult<bool> {
        if r.peek_kind()? == Kind::Object {
            return Ok(true);
        }
        let found = read_val(r)?;
        self.issue(array, index, None, Problem::NotObject(found));
        Ok(false)
    }

    fn parse_image<R: Read>(&mut self, r: &mut JsonReader<R>, index: usize) -> Result<(), Fail> {
        if !self.expect_record(r, Arr::Images, index)? {
            return Ok(());
        }
        let (mut id, mut width, mut height) = (None, None, None);
        let mut file_name: Option<Result<String, Val>> = None;
        let mut key = r.begin_object(field_key)?;
        while let Some(k) = key {
            match k {
                FieldKey::Id => id = Some(read_val(r)?),
                FieldKey::Width => width = Some(read_val(r)?),
                FieldKey::Height => height = Some(read_val(r)?),
                FieldKey::FileName => {
                    file_name = Some(if r.peek_kind()? == Kind::String {
                        Ok(r.read_string()?)
                    } else {
                        Err(read_val(r)?)
                    })
                }
                _ => r.skip_value()?,
            }
            key = r.next_key(field_key)?;
        }
        if u32::try_from(self.images.len()).map_or(true, |n| n == u32::MAX) {
            return Err(Fail::Format(
                "more images than this loader supports".to_string(),
            ));
        }
        let valid_id = id.and_then(Val::as_id);
        let mut problems = Vec::new();
        match id {
            None => problems.push(Problem::Missing("id")),
            Some(v) if valid_id.is_none() => problems.push(Problem::Invalid {
                field: "id",
                found: v,
                want: "a non-negative integer",
            }),
            Some(_) => {}
        }
        let mut duplicate = false;
        if let Some(&first) = valid_id.and_then(|i| self.image_ids.get(&i)) {
            duplicate = true;
            problems.push(Problem::DuplicateId {
                first: self.image_records[first as usize],
            });
        }
        match &file_name {
            None => problems.push(Problem::Missing("file_name")),
            Some(Err(v)) => problems.push(Problem::NameNotString("file_name", *v)),
            Some(Ok(name)) if escapes_root(name) => {
                problems.push(Problem::FileNameEscapes(name.clone()))
            }
            Some(Ok(_)) => {}
        }
        let mut size = |field: &'static str, v: Option<Val>| match v {
            None => {
                problems.push(Problem::Missing(field));
                0
            }
            Some(v) => v.as_size().unwrap_or_else(|| {
                problems.push(Problem::Invalid {
                    field,
                    found: v,
                    want: "a positive integer",
                });
                0
            }),
        };
        let width = size("width", width);
        let height = size("height", height);
        if problems.is_empty() {
            if let (Some(id), Some(Ok(file_name))) = (valid_id, file_name) {
                self.image_ids.insert(id, self.images.len() as u32);
                self.image_records.push(index);
                self.images.push(ImageInfo {
                    id,
                    file_name,
                    width,
                    height,
                });
            }
            return Ok(());
        }
        if let (Some(id), false) = (valid_id, duplicate) {
            self.skipped_images.entry(id).or_insert(index);
        }
        for p in problems {
            self.issue(Arr::Images, index, valid_id, p);
        }
        Ok(())
    }

    fn parse_category<R: Read>(&mut self, r: &mut JsonReader<R>, index: usize) -> Result<(), Fail> {
        if !self.expect_record(r, Arr::Categories, index)? {
            return Ok(());
        }
        let mut id = None;
        let mut name: Option<Result<String, Val>> = None;
        let mut key = r.begin_object(field_key)?;
        while let Some(k) = key {
            match k {
                FieldKey::Id => id = Some(read_val(r)?),
                FieldKey::Name => {
                    name = Some(if r.peek_kind()? == Kind::String {
                        Ok(r.read_string()?)
                    } else {
                        Err(read_val(r)?)
                    })
                }
                _ => r.skip_value()?,
            }
            key = r.next_key(field_key)?;
        }
        if u32::try_from(self.categories.len()).map_or(true, |n| n == u32::MAX) {
            return Err(Fail::Format(
                "more categories than this loader supports".to_string(),
            ));
        }
        let valid_id = id.and_then(Val::as_id);
        let mut problems = Vec::new();
        match id {
            None => problems.push(Problem::Missing("id")),
            Some(v) if valid_id.is_none() => problems.push(Problem::Invalid {
                field: "id",
                found: v,
                want: "a non-negative integer",
            }),
            Some(_) => {}
        }
        let mut duplicate = false;
        if let Some(&first) = valid_id.and_then(|i| self.category_ids.get(&i)) {
            duplicate = true;
            problems.push(Problem::DuplicateId {
                first: self.category_records[first as usize],
            });
        }
        match &name {
            None => problems.push(Problem::Missing("name")),
            Some(Err(v)) => problems.push(Problem::NameNotString("name", *v)),
            Some(Ok(_)) => {}
        }
        if problems.is_empty() {
            if let (Some(id), Some(Ok(name))) = (valid_id, name) {
                self.category_ids.insert(id, self.categories.len() as u32);
                self.category_records.push(index);
                self.categories.push(Category { id, name });
            }
            return Ok(());
        }
        if let (Some(id), false) = (valid_id, duplicate) {
            self.skipped_categories.entry(id).or_insert(index);
        }
        for p in problems {
            self.issue(Arr::Categories, index, valid_id, p);
        }
        Ok(())
    }

    fn parse_annotation<R: Read>(
        &mut self,
        r: &mut JsonReader<R>,
        index: usize,
    ) -> Result<(), Fail> {
        let Ok(index32) = u32::try_from(index) else {
            return Err(Fail::Format(
                "more annotations than this loader supports".to_string(),
            ));
        };
        if !self.expect_record(r, Arr::Annotations, index)? {
            return Ok(());
        }
        let (mut id, mut image, mut category, mut area, mut crowd) = (None, None, None, None, None);
        let mut bbox = None;
        let mut key = r.begin_object(field_key)?;
        while let Some(k) = key {
            match k {
                FieldKey::Id => id = Some(read_val(r)?),
                FieldKey::ImageId => image = Some(read_val(r)?),
                FieldKey::CategoryId => category = Some(read_val(r)?),
                FieldKey::Bbox => bbox = Some(read_bbox(r)?),
                FieldKey::Area => area = Some(read_val(r)?),
                FieldKey::IsCrowd => crowd = Some(read_val(r)?),
                _ => r.skip_value()?,
            }
            key = r.next_key(field_key)?;
        }

        // Fast path: a well-formed record.
        if let (
            Some(id),
            Some(image),
            Some(category),
            Some(BboxVal::Parsed { v, n: 4, bad: None }),
        ) = (
            id.and_then(Val::as_id),
            image.and_then(Val::as_id),
            category.and_then(Val::as_id),
            bbox,
        ) {
            let crowd = match crowd {
                None | Some(Val::Null) => Some(false),
                Some(v) => v.as_flag(),
            };
            let area = match area {
                None | Some(Val::Null) => Some(f32::NAN),
                Some(v) => v.as_area(),
            };
            if let (Some(crowd), Some(area), Some(b)) = (crowd, area, convert_box(v)) {
                self.anns.push(RawAnn {
                    id,
                    image,
                    category,
                    bbox: b,
                    area,
                    index: index32,
                    crowd,
                });
                return Ok(());
            }
        }

        // Slow path: find and report every problem.
        let valid_id = id.and_then(Val::as_id);
        let mut problems = Vec::new();
        let mut ids = [0u64; 3];
        for (k, (field, v)) in [("id", id), ("image_id", image), ("category_id", category)]
            .into_iter()
            .enumerate()
        {
            match v {
                None => problems.push(Problem::Missing(field)),
                Some(v) => match v.as_id() {
                    Some(x) => ids[k] = x,
                    None => problems.push(Problem::Invalid {
                        field,
                        found: v,
                        want: "a non-negative integer",
                    }),
                },
            }
        }
        let mut b = None;
        match bbox {
            None => problems.push(Problem::Missing("bbox")),
            Some(BboxVal::NotArray(v)) => problems.push(Problem::BboxNotArray(v)),
            Some(BboxVal::Parsed { n, .. }) if n != 4 => problems.push(Problem::BboxLen(n)),
            Some(BboxVal::Parsed {
                bad: Some((k, v)), ..
            }) => problems.push(Problem::BboxEntry(k, v)),
            Some(BboxVal::Parsed { v, .. }) => {
                if !v.iter().all(|x| x.is_finite()) {
                    problems.push(Problem::BboxNonFinite);
                } else if !(v[2] > 0.0 && v[3] > 0.0) {
                    problems.push(Problem::BboxEmpty { w: v[2], h: v[3] });
                } else {
                    b = convert_box(v);
                    if b.is_none() {
                        problems.push(Problem::BboxRange);
                    }
                }
            }
        }
        let crowd_flag = match crowd {
            None | Some(Val::Null) => false,
            Some(v) if v.as_flag().is_some() => v.as_flag() == Some(true),
            Some(v) => {
                problems.push(Problem::Invalid {
                    field: "iscrowd",
                    found: v,
                    want: "0, 1, true or false",
                });
                false
            }
        };
        if !problems.is_empty() {
            for p in problems {
                self.issue(Arr::Annotations, index, valid_id, p);
            }
            return Ok(());
        }
        let area = match area {
            None | Some(Val::Null) => f32::NAN,
            Some(v) if v.as_area().is_some() => v.as_area().unwrap_or(f32::NAN),
            Some(v) => {
                self.issue(Arr::Annotations, index, valid_id, Problem::AreaInvalid(v));
                f32::NAN
            }
        };
        if let Some(b) = b {
            self.anns.push(RawAnn {
                id: ids[0],
                image: ids[1],
                category: ids[2],
                bbox: b,
                area,
                index: index32,
                crowd: crowd_flag,
            });
        }
        Ok(())
    }

    /// Resolve ids, sort the objects by image and build the dataset.
    fn finish(mut self, file: &Path, image_root: &Path, options: &LoadOptions) -> Dataset {
        let image_index = IdIndex::new(std::mem::take(&mut self.image_ids));
        let category_index = IdIndex::new(std::mem::take(&mut self.category_ids));
        let mut head = std::mem::take(&mut self.anns);
        let mut tail = std::mem::take(&mut self.tail);
        let shift = self.tail_shift;
        let duplicates = later_duplicates(&[(&head, 0), (&tail, shift)]);
        let mut duplicates = duplicates.into_iter().peekable();

        // Resolve, clip and count per image.
        let mut counts = vec![0u32; self.images.len()];
        let mut last_image = (u64::MAX, None);
        let all = head
            .iter_mut()
            .map(|a| (a, 0))
            .chain(tail.iter_mut().map(|a| (a, shift)));
        for (pos, (a, shift)) in all.enumerate() {
            let index = a.index as usize + shift as usize;
            if duplicates.peek().is_some_and(|&(p, _)| p == pos) {
                if let Some((_, first)) = duplicates.next() {
                    self.issue(
                        Arr::Annotations,
                        index,
                        Some(a.id),
                        Problem::DuplicateId { first },
                    );
                }
                a.image = REJECTED;
                continue;
            }
            let image = if last_image.0 == a.image {
                last_image.1
            } else {
                let i = image_index.get(a.image);
                last_image = (a.image, i);
                i
            };
            let category = category_index.get(a.category);
            if image.is_none() {
                let skipped_at = self.skipped_images.get(&a.image).copied();
                let p = Problem::UnknownRef {
                    field: "image_id",
                    id: a.image,
                    skipped_at,
                };
                self.issue(Arr::Annotations, index, Some(a.id), p);
            }
            if category.is_none() {
                let skipped_at = self.skipped_categories.get(&a.category).copied();
                let p = Problem::UnknownRef {
                    field: "category_id",
                    id: a.category,
                    skipped_at,
                };
                self.issue(Arr::Annotations, index, Some(a.id), p);
            }
            let (Some(image), Some(category)) = (image, category) else {
                a.image = REJECTED;
                continue;
            };
            let info = &self.images[image as usize];
            let (w, h) = (info.width as f32, info.height as f32);
            let b = a.bbox;
            if b.x1 < -1.0 || b.y1 < -1.0 || b.x2 > w + 1.0 || b.y2 > h + 1.0 {
                let clipped = b.clamp_to(w, h);
                let (width, height) = (info.width, info.height);
                if clipped.x2 > clipped.x1 && clipped.y2 > clipped.y1 {
                    let p = Problem::BboxClipped {
                        from: b,
                        to: clipped,
                        width,
                        height,
                    };
                    self.issue(Arr::Annotations, index, Some(a.id), p);
                    a.bbox = clipped;
                } else {
                    let p = Problem::BboxOutside {
                        from: b,
                        width,
                        height,
                    };
                    self.issue(Arr::Annotations, index, Some(a.id), p);
                    a.image = REJECTED;
                    continue;
                }
            }
            if a.area.is_nan() {
                a.area = a.bbox.area();
            }
            a.image = u64::from(image);
            a.category = u64::from(category);
            counts[image as usize] += 1;
        }

        // Counting sort by image (stable: file order within an image).
        let mut image_objects = Vec::with_capacity(counts.len());
        let mut next = Vec::with_capacity(counts.len());
        let mut total = 0u32;
        for &c in &counts {
            next.push(total);
            image_objects.push(total..total + c);
            total += c;
        }
        drop(counts);
        let n = total as usize;
        let mut objects = Objects {
            id: vec![0; n],
            image: vec![0; n],
            category: vec![0; n],
            bbox: vec![Bbox::default(); n],
            area: vec![0.0; n],
            crowd: vec![false; n],
        };
        for a in head.iter().chain(&tail) {
            if a.image == REJECTED {
                continue;
            }
            let image = a.image as usize;
            let slot = next[image] as usize;
            next[image] += 1;
            objects.id[slot] = a.id;
            objects.image[slot] = image as u32;
            objects.category[slot] = a.category as u32;
            objects.bbox[slot] = a.bbox;
            objects.area[slot] = a.area;
            objects.crowd[slot] = a.crowd;
        }
        drop(head);
        drop(tail);

        let issues = self.issues(file, options);
        Dataset {
            source: file.to_path_buf(),
            image_root: image_root.to_path_buf(),
            images: self.images,
            categories: self.categories,
            objects,
            image_objects,
            issues,
        }
    }

    /// The issues in file order (by array, then record), the first
    /// `max_issues_kept` of them turned into [`DatasetIssue`]s.
    fn issues(&mut self, file: &Path, options: &LoadOptions) -> Vec<DatasetIssue> {
        let order = self.order.clone();
        let rank = |a: Arr| order.iter().position(|&o| o == a).unwrap_or(order.len());
        self.issues.sort_by_key(|p| (rank(p.array), p.index));
        let make = |p: &Pending| {
            let (field, message, action) = p.problem.describe(p.array);
            DatasetIssue {
                file: file.to_path_buf(),
                record: RecordRef {
                    array: p.array.name().to_string(),
                    index: p.index,
                    id: p.id,
                },
                field: field.to_string(),
                message,
                action,
            }
        };
        let kept = self.issues.len().min(options.max_issues_kept);
        let mut out: Vec<DatasetIssue> = self.issues[..kept].iter().map(make).collect();
        if let Some(first_left) = self.issues.get(kept) {
            let mut summary = make(first_left);
            summary.field = String::new();
            summary.message = format!(
                "{} more issues from here on were not kept (LoadOptions::max_issues_kept is {}); \
                 their records were skipped or repaired all the same",
                self.issues.len() - kept,
                options.max_issues_kept
            );
            out.push(summary);
        }
        out
    }
}

/// COCO `[x, y, w, h]` (finite, positive size) to a pixel `xyxy` box, or
/// `None` when it does not survive the conversion to `f32`.
#[inline]
fn convert_box(v: [f64; 4]) -> Option<Bbox> {
    if !(v[2] > 0.0 && v[3] > 0.0) {
        return None;
    }
    let b = Bbox::new(
        v[0] as f32,
        v[1] as f32,
        (v[0] + v[2]) as f32,
        (v[1] + v[3]) as f32,
    );
    b.is_valid().then_some(b)
}

/// Positions in the concatenated `segments` (annotations, each with the
/// shift of its `index`) of the later occurrences of repeated ids, each with
/// the `annotations` index of the first occurrence, in order.
fn later_duplicates(segments: &[(&[RawAnn], u32)]) -> Vec<(usize, usize)> {
    let all = || {
        segments
            .iter()
            .flat_map(|&(s, shift)| s.iter().map(move |a| (a, shift)))
    };
    let mut prev = None;
    if all().all(|(a, _)| prev.replace(a.id).is_none_or(|p| p < a.id)) {
        return Vec::new();
    }
    let mut ids: Vec<u64> = all().map(|(a, _)| a.id).collect();
    ids.sort_unstable();
    let repeated: IdSet = ids
        .windows(2)
        .filter(|w| w[0] == w[1])
        .map(|w| w[0])
        .collect();
    drop(ids);
    if repeated.is_empty() {
        return Vec::new();
    }
    let mut first: IdMap<usize> = IdMap::default();
    let mut out = Vec::new();
    for (pos, (a, shift)) in all().enumerate() {
        if repeated.contains(&a.id) {
            match first.entry(a.id) {
                Entry::Occupied(e) => out.push((pos, *e.get())),
                Entry::Vacant(e) => {
                    e.insert(a.index as usize + shift as usize);
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::cell::Cell;
    use std::io::{self, Cursor};
    use std::sync::Arc;

    thread_local! {
        /// Split loads on this thread whose second half was adopted.
        pub(super) static ADOPTED: Cell<usize> = const { Cell::new(0) };
        /// Split loads on this thread that reported the second thread's error.
        pub(super) static TAIL_ERRORS: Cell<usize> = const { Cell::new(0) };
    }

    /// A source that hands out one byte per `read`.
    struct Trickle<'a>(&'a [u8]);

    impl Read for Trickle<'_> {
        fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
            if self.0.is_empty() || out.is_empty() {
                return Ok(0);
            }
            out[0] = self.0[0];
            self.0 = &self.0[1..];
            Ok(1)
        }
    }

    fn load_str(s: &str) -> Result<Dataset, DatasetError> {
        load_from(
            JsonReader::new(s.as_bytes()),
            Path::new("ann.json"),
            Path::new("/data/images"),
            &LoadOptions::default(),
        )
    }

    fn ok(s: &str) -> Dataset {
        match load_str(s) {
            Ok(ds) => ds,
            Err(e) => panic!("load failed: {e}"),
        }
    }

    /// A dataset document from the three arrays' contents.
    fn doc(images: &str, annotations: &str, categories: &str) -> String {
        format!(
            "{{\"info\": {{\"year\": 2020}}, \"images\": [{images}],\n\"annotations\": \
             [{annotations}],\n\"categories\": [{categories}], \"licenses\": []}}"
        )
    }

    const IMAGES: &str = r#"{"id": 10, "file_name": "a.jpg", "width": 640, "height": 480, "license": 1},
        {"id": 20, "file_name": "dir/b.jpg", "width": 100, "height": 50, "url": "http://x"},
        {"id": 30, "file_name": "c.jpg", "width": 800, "height": 600}"#;
    const CATEGORIES: &str = r#"{"id": 1, "name": "person", "supercategory": "human"},
        {"id": 7, "name": "car"}"#;

    fn ann(id: u64, image: u64, category: u64, bbox: &str) -> String {
        format!(
            r#"{{"id": {id}, "image_id": {image}, "category_id": {category}, "bbox": {bbox}, "iscrowd": 0, "isfake": 0, "segmentation": []}}"#
        )
    }

    fn good_anns() -> String {
        [
            ann(1, 20, 7, "[1, 2, 10, 20]"),
            ann(2, 10, 1, "[0.5, 0.5, 100.25, 50]"),
            ann(3, 20, 1, "[5, 5, 5, 5]"),
            r#"{"id": 4, "image_id": 10, "category_id": 7, "bbox": [10, 10, 20, 20], "area": 123.5, "iscrowd": 1}"#.to_string(),
            r#"{"id": 5, "image_id": 20, "category_id": 7, "bbox": [0, 0, 1, 1], "iscrowd": true}"#.to_string(),
        ]
        .join(",\n")
    }

    /// The one issue of `ds`, which must be about `annotations`-like record
    /// `(array, index, id)` and `field`.
    fn only_issue<'a>(
        ds: &'a Dataset,
        array: &str,
        index: usize,
        id: Option<u64>,
        field: &str,
    ) -> &'a DatasetIssue {
        assert_eq!(ds.issues.len(), 1, "{:#?}", ds.issues);
        let i = &ds.issues[0];
        assert_eq!(
            (
                i.record.array.as_str(),
                i.record.index,
                i.record.id,
                i.field.as_str()
            ),
            (array, index, id, field),
            "{i}"
        );
        assert_eq!(i.file, Path::new("ann.json"));
        i
    }

    #[test]
    fn buffered_annotations_are_compact() {
        assert_eq!(std::mem::size_of::<RawAnn>(), 56);
    }

    #[test]
    fn tiny_valid_dataset() {
        let ds = ok(&doc(IMAGES, &good_anns(), CATEGORIES));
        assert!(ds.issues.is_empty(), "{:?}", ds.issues);
        assert_eq!(ds.images.len(), 3);
        assert_eq!(ds.images[1].file_name, "dir/b.jpg");
        assert_eq!((ds.images[0].width, ds.images[0].height), (640, 480));
        assert_eq!(
            ds.categories
                .iter()
                .map(|c| c.name.as_str())
                .collect::<Vec<_>>(),
            ["person", "car"]
        );
        assert_eq!(ds.objects.len(), 5);
        assert_eq!(ds.image_objects, vec![0..2, 2..5, 5..5]);
        assert_eq!(ds.objects.id, [2, 4, 1, 3, 5]);
        assert_eq!(ds.objects.image, [0, 0, 1, 1, 1]);
        assert_eq!(ds.objects.category, [0, 1, 1, 0, 1]);
        assert_eq!(ds.objects.bbox[2], Bbox::new(1.0, 2.0, 11.0, 22.0));
        assert_eq!(ds.objects.area[2], 200.0);
        assert_eq!(ds.objects.area[1], 123.5);
        assert_eq!(ds.objects.crowd, [false, true, false, false, true]);
        assert_eq!(ds.source, Path::new("ann.json"));
        assert_eq!(ds.image_path(1), Path::new("/data/images/dir/b.jpg"));
        assert_eq!(ds.objects_of(1), 2..5);
    }

    #[test]
    fn tiny_dataset_from_a_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ann.json");
        std::fs::write(&path, doc(IMAGES, &good_anns(), CATEGORIES)).unwrap();
        let ds = Dataset::load(&path, dir.path(), &LoadOptions::default()).unwrap();
        assert_eq!((ds.images.len(), ds.objects.len()), (3, 5));
        let missing = dir.path().join("missing.json");
        let err = Dataset::load(&missing, dir.path(), &LoadOptions::default()).unwrap_err();
        assert!(matches!(err, DatasetError::Io { .. }), "{err}");
    }

    #[test]
    fn split_tokens_give_the_same_dataset() {
        let src = doc(IMAGES, &good_anns(), CATEGORIES).replace("0.5", "0.5e0");
        let reference = ok(&src);
        for cap in [1, 2, 3, 5, 8, 13, 64] {
            let ds = load_from(
                JsonReader::with_capacity(Trickle(src.as_bytes()), cap),
                Path::new("ann.json"),
                Path::new("/data/images"),
                &LoadOptions::default(),
            )
            .unwrap();
            assert_eq!(ds.images, reference.images);
            assert_eq!(ds.objects, reference.objects);
            assert_eq!(ds.categories, reference.categories);
        }
    }

    #[test]
    fn keys_in_unusual_order() {
        let src = format!(
            r#"{{"categories": [{CATEGORIES}], "extra": {{"a": [1, 2, {{"b": null}}]}},
            "annotations": [{}], "images": [{IMAGES}]}}"#,
            good_anns()
        );
        let ds = ok(&src);
        assert!(ds.issues.is_empty());
        assert_eq!(ds.objects.id, [2, 4, 1, 3, 5]);
        // Fields within records in any order too.
        let src = doc(
            r#"{"height": 5, "width": 6, "file_name": "x.png", "id": 3}"#,
            r#"{"bbox": [0, 0, 2, 2], "category_id": 1, "image_id": 3, "id": 9}"#,
            r#"{"name": "n", "id": 1}"#,
        );
        let ds = ok(&src);
        assert_eq!((ds.images[0].width, ds.images[0].height), (6, 5));
        assert_eq!(ds.objects.id, [9]);
    }

    fn with_image(image: &str) -> Dataset {
        ok(&doc(
            &format!("{IMAGES}, {image}"),
            &good_anns(),
            CATEGORIES,
        ))
    }

    #[test]
    fn image_missing_or_invalid_id() {
        let ds = with_image(r#"{"file_name": "d.jpg", "width": 1, "height": 1}"#);
        let i = only_issue(&ds, "images", 3, None, "id");
        assert_eq!((i.message.as_str(), i.action), ("missing", Action::Skipped));
        assert_eq!((ds.images.len(), ds.objects.len()), (3, 5));
        let ds = with_image(r#"{"id": -4, "file_name": "d.jpg", "width": 1, "height": 1}"#);
        assert!(only_issue(&ds, "images", 3, None, "id")
            .message
            .contains("-4"));
        let ds = with_image(r#"{"id": "4", "file_name": "d.jpg", "width": 1, "height": 1}"#);
        only_issue(&ds, "images", 3, None, "id");
        assert_eq!(ds.images.len(), 3);
    }

    #[test]
    fn image_bad_size() {
        let ds = with_image(r#"{"id": 40, "file_name": "d.jpg", "width": 0, "height": 1}"#);
        only_issue(&ds, "images", 3, Some(40), "width");
        let ds = with_image(r#"{"id": 40, "file_name": "d.jpg", "width": 3, "height": -2}"#);
        only_issue(&ds, "images", 3, Some(40), "height");
        let ds = with_image(r#"{"id": 40, "file_name": "d.jpg", "height": 2}"#);
        let i = only_issue(&ds, "images", 3, Some(40), "width");
        assert_eq!(i.message, "missing");
        let ds = with_image(r#"{"id": 40, "file_name": "d.jpg", "width": 2.5, "height": 2}"#);
        only_issue(&ds, "images", 3, Some(40), "width");
        assert_eq!((ds.images.len(), ds.objects.len()), (3, 5));
    }

    #[test]
    fn duplicate_image_id() {
        let ds = with_image(r#"{"id": 20, "file_name": "dup.jpg", "width": 9, "height": 9}"#);
        let i = only_issue(&ds, "images", 3, Some(20), "id");
        assert!(i.message.contains("images[1]"), "{i}");
        assert_eq!(ds.images.len(), 3);
        assert_eq!(ds.images[1].file_name, "dir/b.jpg");
        assert_eq!(ds.objects.len(), 5);
    }

    #[test]
    fn file_name_escaping_the_root_is_refused() {
        for name in [
            "/etc/passwd",
            "../x.jpg",
            "a/../../x.jpg",
            "a\\..\\x.jpg",
            "C:\\x.jpg",
            "c:x.jpg",
            "",
            "\\\\server\\share\\x.jpg",
            ".",
            "./",
            "a\u{0}b",
        ] {
            let image = format!(
                r#"{{"id": 99, "file_name": {}, "width": 10, "height": 10}}"#,
                serde_json::to_string(name).unwrap()
            );
            let anns = format!("{}, {}", good_anns(), ann(50, 99, 1, "[1, 1, 2, 2]"));
            let ds = ok(&doc(&format!("{IMAGES}, {image}"), &anns, CATEGORIES));
            assert_eq!(ds.issues.len(), 2, "{name:?}: {:#?}", ds.issues);
            let i = &ds.issues[0];
            assert_eq!(
                (
                    i.record.array.as_str(),
                    i.record.index,
                    i.record.id,
                    i.field.as_str()
                ),
                ("images", 3, Some(99), "file_name")
            );
            assert!(
                i.message
                    .starts_with("refused: file_name escapes the image root"),
                "{i}"
            );
            let a = &ds.issues[1];
            assert_eq!(
                (
                    a.record.array.as_str(),
                    a.record.index,
                    a.record.id,
                    a.field.as_str()
                ),
                ("annotations", 5, Some(50), "image_id")
            );
            assert!(
                a.message.contains("unknown image id 99") && a.message.contains("images[3]"),
                "{a}"
            );
            assert_eq!((ds.images.len(), ds.objects.len()), (3, 5));
        }
        for name in [
            "a.jpg",
            "images/v2/patch16/x.jpg",
            "./a.jpg",
            "a..b.jpg",
            "..a.jpg",
        ] {
            assert!(!escapes_root(name), "{name}");
        }
    }

    #[test]
    fn image_record_not_an_object() {
        let ds = with_image("[1, 2]");
        let i = only_issue(&ds, "images", 3, None, "");
        assert!(i.message.contains("an array"), "{i}");
        assert_eq!(ds.images.len(), 3);
    }

    #[test]
    fn category_problems() {
        let cats = format!("{CATEGORIES}, {{\"id\": 7, \"name\": \"truck\"}}");
        let ds = ok(&doc(IMAGES, &good_anns(), &cats));
        let i = only_issue(&ds, "categories", 2, Some(7), "id");
        assert!(i.message.contains("categories[1]"), "{i}");
        assert_eq!(ds.categories[1].name, "car");
        assert_eq!(ds.objects.len(), 5);

        let cats = format!("{CATEGORIES}, {{\"id\": 8}}");
        let anns = format!("{}, {}", good_anns(), ann(60, 10, 8, "[1, 1, 2, 2]"));
        let ds = ok(&doc(IMAGES, &anns, &cats));
        // Issues come in file order: `annotations` precedes `categories` here.
        assert_eq!(ds.issues.len(), 2, "{:#?}", ds.issues);
        let (a, c) = (&ds.issues[0], &ds.issues[1]);
        assert_eq!(
            (a.record.array.as_str(), a.record.index, a.field.as_str()),
            ("annotations", 5, "category_id")
        );
        assert!(
            a.message.contains("unknown category id 8") && a.message.contains("categories[2]"),
            "{a}"
        );
        assert_eq!(
            (
                c.record.array.as_str(),
                c.record.index,
                c.record.id,
                c.field.as_str(),
                c.message.as_str()
            ),
            ("categories", 2, Some(8), "name", "missing")
        );
        assert_eq!((ds.categories.len(), ds.objects.len()), (2, 5));
    }

    /// Load the good dataset plus one extra annotation; the extra one is
    /// `annotations[5]`.
    fn with_ann(extra: &str) -> Dataset {
        ok(&doc(
            IMAGES,
            &format!("{},\n{extra}", good_anns()),
            CATEGORIES,
        ))
    }

    #[test]
    fn annotation_missing_fields() {
        for (extra, field, id) in [
            (
                r#"{"image_id": 10, "category_id": 1, "bbox": [1, 1, 2, 2]}"#,
                "id",
                None,
            ),
            (
                r#"{"id": 70, "category_id": 1, "bbox": [1, 1, 2, 2]}"#,
                "image_id",
                Some(70),
            ),
            (
                r#"{"id": 70, "image_id": 10, "bbox": [1, 1, 2, 2]}"#,
                "category_id",
                Some(70),
            ),
            (
                r#"{"id": 70, "image_id": 10, "category_id": 1}"#,
                "bbox",
                Some(70),
            ),
            (
                r#"{"id": 70.5, "image_id": 10, "category_id": 1, "bbox": [1, 1, 2, 2]}"#,
                "id",
                None,
            ),
            (
                r#"{"id": 70, "image_id": null, "category_id": 1, "bbox": [1, 1, 2, 2]}"#,
                "image_id",
                Some(70),
            ),
        ] {
            let ds = with_ann(extra);
            let i = only_issue(&ds, "annotations", 5, id, field);
            assert_eq!(i.action, Action::Skipped);
            assert_eq!(ds.objects.len(), 5, "{extra}");
        }
    }

    #[test]
    fn duplicate_annotation_id() {
        let ds = with_ann(&ann(3, 10, 1, "[1, 1, 2, 2]"));
        let i = only_issue(&ds, "annotations", 5, Some(3), "id");
        assert!(i.message.contains("annotations[2]"), "{i}");
        assert_eq!(ds.objects.len(), 5);
        assert_eq!(
            ds.objects.bbox[ds.object_index(3).unwrap()],
            Bbox::new(5.0, 5.0, 10.0, 10.0)
        );
    }

    #[test]
    fn unknown_image_and_category() {
        let ds = with_ann(&ann(70, 11, 1, "[1, 1, 2, 2]"));
        let i = only_issue(&ds, "annotations", 5, Some(70), "image_id");
        assert_eq!(i.message, "unknown image id 11");
        let ds = with_ann(&ann(70, 10, 2, "[1, 1, 2, 2]"));
        let i = only_issue(&ds, "annotations", 5, Some(70), "category_id");
        assert_eq!(i.message, "unknown category id 2");
        assert_eq!(ds.objects.len(), 5);
    }

    #[test]
    fn bad_boxes_are_skipped() {
        for (bbox, needle) in [
            ("[1, 2, 3]", "3 entries"),
            ("[1, 2, 3, 4, 5]", "5 entries"),
            ("[1, \"2\", 3, 4]", "entry 1 is a string"),
            ("[1, 2, null, 4]", "entry 2 is null"),
            ("[1e999, 2, 3, 4]", "non-finite"),
            ("[1, 2, -1e999, 4]", "non-finite"),
            ("[1, 2, 0, 4]", "must both be positive"),
            ("[1, 2, 3, -4]", "must both be positive"),
            ("{\"x\": 1}", "an object is not an array"),
            ("\"1,2,3,4\"", "a string is not an array"),
            ("[1e300, 2, 3, 4]", "out of range"),
        ] {
            let ds = with_ann(&ann(70, 10, 1, bbox));
            let i = only_issue(&ds, "annotations", 5, Some(70), "bbox");
            assert!(i.message.contains(needle), "{bbox}: {i}");
            assert_eq!(i.action, Action::Skipped);
            assert_eq!(ds.objects.len(), 5);
        }
    }

    #[test]
    fn boxes_outside_the_image_are_clipped() {
        // Within 1 px: kept as is.
        let ds = with_ann(&ann(70, 20, 1, "[-0.5, 0, 101, 50.5]"));
        assert!(ds.issues.is_empty());
        assert_eq!(
            ds.objects.bbox[ds.object_index(70).unwrap()],
            Bbox::new(-0.5, 0.0, 100.5, 50.5)
        );
        // Further out: clipped to the 100x50 image.
        let ds = with_ann(&ann(70, 20, 1, "[-5, 10, 200, 20]"));
        let i = only_issue(&ds, "annotations", 5, Some(70), "bbox");
        assert_eq!(i.action, Action::Repaired);
        let o = ds.object_index(70).unwrap();
        assert_eq!(ds.objects.bbox[o], Bbox::new(0.0, 10.0, 100.0, 30.0));
        assert_eq!(ds.objects.area[o], 2000.0);
        assert_eq!(ds.objects.len(), 6);
        // Nothing left after clipping: skipped.
        let ds = with_ann(&ann(70, 20, 1, "[150, 10, 20, 20]"));
        let i = only_issue(&ds, "annotations", 5, Some(70), "bbox");
        assert_eq!(i.action, Action::Skipped);
        assert!(i.message.contains("outside"), "{i}");
        assert_eq!(ds.objects.len(), 5);
    }

    #[test]
    fn crowd_and_area_fields() {
        let base = r#""id": 70, "image_id": 10, "category_id": 1, "bbox": [1, 1, 20, 20]"#;
        let ds = with_ann(&format!("{{{base}, \"iscrowd\": 2}}"));
        only_issue(&ds, "annotations", 5, Some(70), "iscrowd");
        assert_eq!(ds.objects.len(), 5);
        let ds = with_ann(&format!("{{{base}, \"iscrowd\": false, \"area\": null}}"));
        assert!(ds.issues.is_empty());
        let o = ds.object_index(70).unwrap();
        assert_eq!((ds.objects.crowd[o], ds.objects.area[o]), (false, 400.0));
        let ds = with_ann(&format!("{{{base}, \"area\": -3}}"));
        let i = only_issue(&ds, "annotations", 5, Some(70), "area");
        assert_eq!(i.action, Action::Repaired);
        assert_eq!(ds.objects.area[ds.object_index(70).unwrap()], 400.0);
        let ds = with_ann(&format!("{{{base}, \"area\": 12.25, \"iscrowd\": 1}}"));
        let o = ds.object_index(70).unwrap();
        assert_eq!((ds.objects.crowd[o], ds.objects.area[o]), (true, 12.25));
    }

    #[test]
    fn several_problems_in_one_record_and_file_order() {
        let anns = format!(
            "{}, {}, {}, {}",
            ann(70, 11, 2, "[1, 1, 2, 2]"),
            good_anns(),
            r#"{"id": "x", "bbox": [1]}"#,
            ann(71, 20, 1, "[-5, 10, 200, 20]")
        );
        let ds = ok(&doc(IMAGES, &anns, CATEGORIES));
        let got: Vec<_> = ds
            .issues
            .iter()
            .map(|i| (i.record.index, i.field.as_str()))
            .collect();
        assert_eq!(
            got,
            [
                (0, "image_id"),
                (0, "category_id"),
                (6, "id"),
                (6, "image_id"),
                (6, "category_id"),
                (6, "bbox"),
                (7, "bbox")
            ]
        );
        assert_eq!(ds.objects.len(), 6);
    }

    #[test]
    fn issues_are_capped() {
        let anns: Vec<String> = (0..50)
            .map(|i| ann(100 + i, 999, 1, "[1, 1, 2, 2]"))
            .collect();
        let src = doc(
            IMAGES,
            &format!("{}, {}", good_anns(), anns.join(",")),
            CATEGORIES,
        );
        let options = LoadOptions {
            max_issues_kept: 10,
        };
        let ds = load_from(
            JsonReader::new(src.as_bytes()),
            Path::new("a"),
            Path::new("r"),
            &options,
        )
        .unwrap();
        assert_eq!(ds.issues.len(), 11);
        assert_eq!(ds.issues[10].record.index, 15);
        assert!(
            ds.issues[10].message.starts_with("40 more issues"),
            "{}",
            ds.issues[10]
        );
        assert_eq!(ds.objects.len(), 5);
    }

    fn format_error(s: &str) -> String {
        match load_str(s) {
            Err(DatasetError::Format { message, .. }) => message,
            other => panic!("expected a format error, got {other:?}"),
        }
    }

    #[test]
    fn not_a_coco_file() {
        assert!(format_error("[1, 2]").contains("not an object"));
        assert!(format_error(" 3 ").contains("not an object"));
        assert!(format_error(r#"{"annotations": [], "categories": []}"#).contains("\"images\""));
        assert!(format_error(r#"{"images": [], "categories": []}"#).contains("\"annotations\""));
        assert!(format_error(r#"{"images": [], "annotations": []}"#).contains("\"categories\""));
        assert!(
            format_error(r#"{"images": {}, "annotations": [], "categories": []}"#)
                .contains("not an array")
        );
        assert!(format_error(
            r#"{"images": [], "images": [], "annotations": [], "categories": []}"#
        )
        .contains("twice"));
        let ds = ok(r#"{"images": [], "annotations": [], "categories": []}"#);
        assert!(ds.images.is_empty() && ds.objects.is_empty() && ds.issues.is_empty());
    }

    fn json_error(s: &str) -> (usize, usize, String) {
        match load_str(s) {
            Err(DatasetError::Json {
                line,
                column,
                message,
                ..
            }) => (line, column, message),
            other => panic!("expected a JSON error, got {other:?}"),
        }
    }

    #[test]
    fn malformed_json_positions() {
        // Missing comma between two members (line 3, column 21: the quote).
        let src = "{\n  \"images\": [],\n  \"annotations\": [] \"categories\": []\n}";
        let (line, column, message) = json_error(src);
        assert_eq!((line, column), (3, 21), "{message}");
        // Missing comma between two records.
        let src = "{\"images\": [\n {\"id\": 1}\n {\"id\": 2}]}";
        let (line, column, message) = json_error(src);
        assert_eq!((line, column), (3, 2), "{message}");
        assert!(message.contains("','"), "{message}");
        // A bad literal.
        let src = "{\"images\": [],\n\"annotations\": [{\"iscrowd\": tru}], \"categories\": []}";
        let (line, column, message) = json_error(src);
        assert_eq!((line, column), (2, 32), "{message}");
        // Truncated: the fault is at the end of the input.
        let src = "{\"images\": [],\n\"annotations\": [{\"id\": 1, \"bbox\": [1, 2";
        let (line, column, message) = json_error(src);
        assert_eq!((line, column), (2, 40), "{message}");
        assert!(message.contains("end of file"), "{message}");
        // Trailing garbage, and a control character in a string.
        let (line, column, _) =
            json_error("{\"images\": [], \"annotations\": [], \"categories\": []}\n x");
        assert_eq!((line, column), (2, 2));
        let (line, column, _) = json_error("{\"images\": [{\"file_name\": \"a\tb\"}]}");
        assert_eq!((line, column), (1, 29));
        // Same positions when every token is split across refills.
        let src = "{\"images\": [\n {\"id\": 1}\n {\"id\": 2}]}";
        let e = load_from(
            JsonReader::with_capacity(Trickle(src.as_bytes()), 3),
            Path::new("ann.json"),
            Path::new("r"),
            &LoadOptions::default(),
        )
        .unwrap_err();
        assert!(
            matches!(
                e,
                DatasetError::Json {
                    line: 3,
                    column: 2,
                    ..
                }
            ),
            "{e}"
        );
    }

    fn load_any(bytes: &[u8], cap: usize) -> Result<Dataset, DatasetError> {
        load_from(
            JsonReader::with_capacity(bytes, cap),
            Path::new("fuzz.json"),
            Path::new("r"),
            &LoadOptions { max_issues_kept: 5 },
        )
    }

    /// Load with two threads from memory, tokens split by `cap`-byte
    /// buffers; also returns whether the second thread's work was adopted.
    fn load_split_bytes(bytes: &[u8], cap: usize) -> (Result<Dataset, DatasetError>, bool) {
        let data: Arc<[u8]> = Arc::from(bytes);
        let open_at = |offset: u64| -> io::Result<Cursor<Arc<[u8]>>> {
            let mut c = Cursor::new(data.clone());
            c.set_position(offset);
            Ok(c)
        };
        let before = ADOPTED.with(Cell::get);
        let ds = load_split(
            open_at(0).unwrap(),
            &open_at,
            bytes.len() as u64,
            cap,
            Path::new("ann.json"),
            Path::new("/data/images"),
            &LoadOptions::default(),
        );
        (ds, ADOPTED.with(Cell::get) > before)
    }

    /// Same outcome, field by field, or the same error.
    fn assert_same(a: &Result<Dataset, DatasetError>, b: &Result<Dataset, DatasetError>) {
        match (a, b) {
            (Ok(a), Ok(b)) => {
                assert_eq!(a.images, b.images);
                assert_eq!(a.categories, b.categories);
                assert_eq!(a.objects, b.objects);
                assert_eq!(a.image_objects, b.image_objects);
                assert_eq!(a.issues, b.issues);
            }
            (Err(a), Err(b)) => assert_eq!(a.to_string(), b.to_string()),
            (a, b) => panic!("{:?} vs {:?}", a.as_ref().err(), b.as_ref().err()),
        }
    }

    /// A document with `n` annotations (some with problems), one record
    /// per line or all on one line.
    fn big_doc(n: usize, pretty: bool) -> String {
        let sep = if pretty { ",\n" } else { ", " };
        let anns: Vec<String> = (0..n)
            .map(|i| {
                let image = if i % 41 == 7 { 11 } else { [10, 20, 30][i % 3] };
                let bbox = if i % 23 == 3 {
                    "[-5, 1, 300, 2]"
                } else {
                    "[1.25, 2, 3.5, 4]"
                };
                let id = if i % 53 == 9 { 3 } else { 100 + i as u64 };
                ann(id, image, [1, 7][i % 2], bbox)
            })
            .collect();
        let anns = format!("{}{sep}{}", good_anns(), anns.join(sep));
        doc(IMAGES, &anns, CATEGORIES)
    }

    #[test]
    fn split_load_matches_single_thread() {
        for pretty in [false, true] {
            let src = big_doc(400, pretty);
            let single = load_str(&src);
            assert!(single
                .as_ref()
                .is_ok_and(|d| d.objects.len() > 300 && !d.issues.is_empty()));
            for cap in [7, 64, 1 << 20] {
                let (split, adopted) = load_split_bytes(src.as_bytes(), cap);
                assert!(adopted, "pretty {pretty}, cap {cap}");
                assert_same(&split, &single);
            }
        }
    }

    #[test]
    fn split_load_reports_errors_in_the_second_half_at_the_right_place() {
        for pretty in [false, true] {
            let src = big_doc(400, pretty);
            for (at, broken) in [
                (src.len() * 3 / 4, "\"bbox\": [,"),
                (src.len() * 2 / 3, "\"bbox\": [1e, "),
                (src.len() * 9 / 10, "\"bbox\": \"\\u12x\", "),
            ] {
                let k = at + src[at..].find("\"bbox\": [").unwrap();
                let bad = format!("{}{broken}{}", &src[..k], &src[k + 9..]);
                let single = load_str(&bad);
                assert!(
                    matches!(single, Err(DatasetError::Json { .. })),
                    "{single:?}"
                );
                for cap in [5, 1 << 20] {
                    let errors = TAIL_ERRORS.with(Cell::get);
                    let (split, adopted) = load_split_bytes(bad.as_bytes(), cap);
                    assert!(!adopted);
                    assert_eq!(
                        TAIL_ERRORS.with(Cell::get),
                        errors + 1,
                        "reported by the second thread"
                    );
                    assert_same(&split, &single);
                }
            }
            // Truncated in the second half.
            let cut = &src[..src.len() * 4 / 5];
            let (split, _) = load_split_bytes(cut.as_bytes(), 1 << 20);
            assert_same(&split, &load_str(cut));
        }
    }

    #[test]
    fn split_load_falls_back_when_the_guess_is_wrong() {
        // The middle is in `images`: the second thread's guess is not an
        // annotation and is dropped.
        let images: Vec<String> = (0..300)
            .map(|i| {
                format!(
                    r#"{{"id": {}, "file_name": "x{i}.jpg", "width": 9, "height": 9}}"#,
                    1000 + i
                )
            })
            .collect();
        let src = doc(
            &format!("{IMAGES}, {}", images.join(", ")),
            &good_anns(),
            CATEGORIES,
        );
        let (split, adopted) = load_split_bytes(src.as_bytes(), 16);
        assert!(!adopted);
        assert_same(&split, &load_str(&src));
        // The middle is inside nested values of an annotation.
        let nested: Vec<String> = (0..300).map(|i| format!(r#"{{"p": [{i}]}}"#)).collect();
        let big = format!(
            r#"{{"id": 99, "image_id": 10, "category_id": 1, "bbox": [1, 1, 5, 5], "segmentation": [{}]}}"#,
            nested.join(", ")
        );
        let src = doc(
            IMAGES,
            &format!("{}, {big}, {}", good_anns(), ann(98, 10, 1, "[1, 1, 2, 2]")),
            CATEGORIES,
        );
        let (split, adopted) = load_split_bytes(src.as_bytes(), 16);
        assert!(!adopted);
        assert_same(&split, &load_str(&src));
        // No boundary at all.
        let src = r#"{"images": [], "annotations": [], "categories": []}"#;
        assert_same(&load_split_bytes(src.as_bytes(), 4).0, &load_str(src));
    }

    #[test]
    fn split_load_from_a_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ann.json");
        let src = big_doc(300, true);
        std::fs::write(&path, &src).unwrap();
        let before = ADOPTED.with(Cell::get);
        let split = load_path(&path, Path::new("/data/images"), &LoadOptions::default(), 0);
        if std::thread::available_parallelism().map_or(1, |n| n.get()) >= 2 {
            assert_eq!(ADOPTED.with(Cell::get), before + 1);
        }
        let mut single = load_str(&src);
        if let Ok(ds) = &mut single {
            for i in &mut ds.issues {
                i.file = path.clone();
            }
        }
        assert_same(&split, &single);
        assert_eq!(split.unwrap().source, path);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..400), cap in 1usize..64) {
            let _ = load_any(&bytes, cap);
        }

        #[test]
        fn mutated_documents_never_panic(
            edits in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>(), 0u8..3), 1..6),
            cap in 1usize..64,
        ) {
            let mut bytes = doc(IMAGES, &good_anns(), CATEGORIES).into_bytes();
            for (at, byte, op) in edits {
                let i = at.index(bytes.len());
                match op {
                    0 => bytes[i] = byte,
                    1 => bytes.insert(i, byte),
                    _ => { bytes.remove(i); }
                }
            }
            let a = load_any(&bytes, cap);
            let b = load_any(&bytes, 1 << 20);
            let (c, _) = load_split_bytes(&bytes, cap);
            let d = load_from(
                JsonReader::new(&bytes[..]),
                Path::new("ann.json"),
                Path::new("/data/images"),
                &LoadOptions::default(),
            );
            assert_same(&c, &d);
            // Buffer size never changes the outcome.
            match (a, b) {
                (Ok(a), Ok(b)) => {
                    prop_assert_eq!(a.objects, b.objects);
                    prop_assert_eq!(a.issues, b.issues);
                }
                (Err(a), Err(b)) => prop_assert_eq!(a.to_string(), b.to_string()),
                (a, b) => prop_assert!(false, "{:?} vs {:?}", a.map(|_| ()), b.map(|_| ())),
            }
        }

        #[test]
        fn mutated_values_never_panic(
            field in 0usize..8,
            value in prop_oneof![
                Just("null".to_string()), Just("true".to_string()), Just("\"x\"".to_string()),
                Just("[]".to_string()), Just("{}".to_string()), Just("[1,2,3,4]".to_string()),
                (-1e300f64..1e300).prop_map(|f| format!("{f:e}")), any::<i64>().prop_map(|i| i.to_string()),
            ],
        ) {
            let fields = ["id", "image_id", "category_id", "bbox", "area", "iscrowd", "width", "height"];
            let src = doc(IMAGES, &good_anns(), CATEGORIES)
                .replacen(&format!("\"{}\": ", fields[field]), &format!("\"{}\": {value}, \"_\": ", fields[field]), 1);
            let ds = load_str(&src);
            prop_assert!(ds.is_ok(), "{:?}", ds.err());
        }
    }
}
