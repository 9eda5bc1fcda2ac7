//! What can be wrong with a record, in words: each problem is kept
//! compact while loading and described (field, message, skipped or
//! repaired) only for the issues kept, in file order.

use super::records::Val;
use super::{Arr, Loader};
use crate::core::dataset::{Action, DatasetIssue, LoadOptions, RecordRef};
use crate::core::geometry::Bbox;
use std::path::Path;

/// One problem with a record; turned into a [`DatasetIssue`] at the end
/// (only for the issues kept).
#[derive(Clone, Debug)]
pub(super) enum Problem {
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
    pub(super) fn describe(&self, array: Arr) -> (&'static str, String, Action) {
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
pub(super) struct Pending {
    pub(super) array: Arr,
    /// Position in its array.
    pub(super) index: usize,
    pub(super) id: Option<u64>,
    pub(super) problem: Problem,
}

impl Loader {
    /// Records a problem of record `index` of `array`.
    pub(super) fn issue(&mut self, array: Arr, index: usize, id: Option<u64>, problem: Problem) {
        self.issues.push(Pending {
            array,
            index,
            id,
            problem,
        });
    }

    /// The issues in file order (by array, then record), the first
    /// `max_issues_kept` of them turned into [`DatasetIssue`]s.
    pub(super) fn issues(&mut self, file: &Path, options: &LoadOptions) -> Vec<DatasetIssue> {
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
