//! The record parsers: one image, annotation or category object read
//! field by field (unknown fields skipped undecoded), checked, and kept in
//! compact form or reported. Checks that need other records (ids that
//! refer to images and categories, boxes against their image) wait for
//! resolution (`resolve.rs`).

use std::io::Read;

use super::ids::IdTable;
use super::problems::{Pending, Problem};
use super::{Arr, Fail, Loader};
use crate::core::dataset::json::{JResult, JsonReader, Kind, Scalar};
use crate::core::dataset::{Category, ImageInfo};
use crate::core::geometry::Bbox;

/// A field value as read: numbers, bools and null, or the kind of a
/// skipped string or container (kept for messages).
pub(super) type Val = Scalar;

impl Scalar {
    /// The value in words, for messages.
    pub(super) fn describe(self) -> String {
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
pub(super) fn read_val<R: Read>(r: &mut JsonReader<R>) -> JResult<Val> {
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

/// A list that grows in chunks of at most [`Chunks::CHUNK`] items, so
/// that it can be consumed chunk by chunk, each freed once used:
/// resolution frees the buffered annotations while it fills the objects
/// instead of holding both whole (at Objects365-train scale, 1.4 GB of
/// annotations beside 0.9 GB of objects).
pub(super) struct Chunks<T> {
    chunks: Vec<Vec<T>>,
}

impl<T> Default for Chunks<T> {
    fn default() -> Self {
        Self { chunks: Vec::new() }
    }
}

impl<T> Chunks<T> {
    /// Items per chunk (small in tests, so that their files span many).
    #[cfg(not(test))]
    pub(super) const CHUNK: usize = 1 << 20;
    #[cfg(test)]
    pub(super) const CHUNK: usize = 64;

    pub(super) fn push(&mut self, item: T) {
        match self.chunks.last_mut() {
            Some(last) if last.len() < Self::CHUNK => last.push(item),
            _ => self.chunks.push(vec![item]),
        }
    }

    /// Items in all.
    pub(super) fn len(&self) -> usize {
        self.chunks.iter().map(Vec::len).sum()
    }

    /// The chunks, in order.
    pub(super) fn slices(&self) -> impl Iterator<Item = &[T]> {
        self.chunks.iter().map(Vec::as_slice)
    }

    /// The chunks, to consume one by one.
    pub(super) fn into_chunks(self) -> Vec<Vec<T>> {
        self.chunks
    }
}

/// An annotation that passed the checks that need no other record; 56
/// bytes, buffered until the images and categories are known. Its fields
/// hold what the file says; resolution never rewrites them.
#[derive(Clone, Copy, Debug)]
pub(super) struct RawAnn {
    pub(super) id: u64,
    /// The `image_id` field.
    pub(super) image_id: u64,
    /// The `category_id` field.
    pub(super) category_id: u64,
    /// The `bbox` field as a pixel `xyxy` box.
    pub(super) bbox: Bbox,
    /// The `area` field; NaN when absent or unusable.
    pub(super) area: f32,
    /// Position in the `annotations` array.
    pub(super) index: u32,
    pub(super) crowd: bool,
}

/// COCO `[x, y, w, h]` (finite, positive size) to a pixel `xyxy` box, or
/// `None` when it does not survive the conversion to `f32`.
#[inline]
pub(super) fn convert_box(v: [f64; 4]) -> Option<Bbox> {
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

/// A text field (`file_name`, `name`) as read: the string, or the value
/// found instead.
fn read_text<R: Read>(r: &mut JsonReader<R>) -> JResult<Result<String, Val>> {
    Ok(if r.peek_kind()? == Kind::String {
        Ok(r.read_string()?)
    } else {
        Err(read_val(r)?)
    })
}

/// Checks a text field as read: missing or not a string become problems.
/// Returns the string when there is one.
fn check_text<'a>(
    field: &'static str,
    value: &'a Option<Result<String, Val>>,
    problems: &mut Vec<Problem>,
) -> Option<&'a str> {
    match value {
        None => problems.push(Problem::Missing(field)),
        Some(Err(v)) => problems.push(Problem::NameNotString(field, *v)),
        Some(Ok(s)) => return Some(s),
    }
    None
}

/// Checks a record's `id` against the records `table` kept so far:
/// missing, invalid and repeated ids become problems. Returns the valid
/// id and whether it repeats a kept one.
fn check_id<T>(
    table: &IdTable<T>,
    id: Option<Val>,
    problems: &mut Vec<Problem>,
) -> (Option<u64>, bool) {
    let valid = id.and_then(Val::as_id);
    match id {
        None => problems.push(Problem::Missing("id")),
        Some(v) if valid.is_none() => problems.push(Problem::Invalid {
            field: "id",
            found: v,
            want: "a non-negative integer",
        }),
        Some(_) => {}
    }
    let first = valid.and_then(|i| table.record_of(i));
    if let Some(first) = first {
        problems.push(Problem::DuplicateId { first });
    }
    (valid, first.is_some())
}

/// Ends a record of `array` at `index`: kept in `table` when it has no
/// problem, else reported (its id remembered as skipped, unless it
/// repeats a kept record's).
fn keep_or_report<T>(
    table: &mut IdTable<T>,
    issues: &mut Vec<Pending>,
    (array, index): (Arr, usize),
    (id, duplicate): (Option<u64>, bool),
    problems: Vec<Problem>,
    item: Option<T>,
) {
    if problems.is_empty() {
        if let (Some(id), Some(item)) = (id, item) {
            table.push(id, index, item);
        }
        return;
    }
    if let (Some(id), false) = (id, duplicate) {
        table.skip(id, index);
    }
    issues.extend(problems.into_iter().map(|problem| Pending {
        array,
        index,
        id,
        problem,
    }));
}

impl Loader {
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

    pub(super) fn parse_image<R: Read>(
        &mut self,
        r: &mut JsonReader<R>,
        index: usize,
    ) -> Result<(), Fail> {
        if !self.expect_record(r, Arr::Images, index)? {
            return Ok(());
        }
        let (mut id, mut width, mut height, mut file_name) = (None, None, None, None);
        let mut key = r.begin_object(field_key)?;
        while let Some(k) = key {
            match k {
                FieldKey::Id => id = Some(read_val(r)?),
                FieldKey::Width => width = Some(read_val(r)?),
                FieldKey::Height => height = Some(read_val(r)?),
                FieldKey::FileName => file_name = Some(read_text(r)?),
                _ => r.skip_value()?,
            }
            key = r.next_key(field_key)?;
        }
        self.images.check_room("images")?;
        let mut problems = Vec::new();
        let checked = check_id(&self.images, id, &mut problems);
        if let Some(name) = check_text("file_name", &file_name, &mut problems) {
            if escapes_root(name) {
                problems.push(Problem::FileNameEscapes(name.to_string()));
            }
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
        let item = match (checked.0, file_name) {
            (Some(id), Some(Ok(file_name))) => Some(ImageInfo {
                id,
                file_name,
                width,
                height,
            }),
            _ => None,
        };
        let at = (Arr::Images, index);
        keep_or_report(
            &mut self.images,
            &mut self.issues,
            at,
            checked,
            problems,
            item,
        );
        Ok(())
    }

    pub(super) fn parse_category<R: Read>(
        &mut self,
        r: &mut JsonReader<R>,
        index: usize,
    ) -> Result<(), Fail> {
        if !self.expect_record(r, Arr::Categories, index)? {
            return Ok(());
        }
        let (mut id, mut name) = (None, None);
        let mut key = r.begin_object(field_key)?;
        while let Some(k) = key {
            match k {
                FieldKey::Id => id = Some(read_val(r)?),
                FieldKey::Name => name = Some(read_text(r)?),
                _ => r.skip_value()?,
            }
            key = r.next_key(field_key)?;
        }
        self.categories.check_room("categories")?;
        let mut problems = Vec::new();
        let checked = check_id(&self.categories, id, &mut problems);
        check_text("name", &name, &mut problems);
        let item = match (checked.0, name) {
            (Some(id), Some(Ok(name))) => Some(Category { id, name }),
            _ => None,
        };
        let at = (Arr::Categories, index);
        keep_or_report(
            &mut self.categories,
            &mut self.issues,
            at,
            checked,
            problems,
            item,
        );
        Ok(())
    }

    pub(super) fn parse_annotation<R: Read>(
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
                    image_id: image,
                    category_id: category,
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
                image_id: ids[1],
                category_id: ids[2],
                bbox: b,
                area,
                index: index32,
                crowd: crowd_flag,
            });
        }
        Ok(())
    }
}
