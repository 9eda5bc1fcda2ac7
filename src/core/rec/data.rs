//! REC evaluation sets: the MDETR-style COCO JSON that RefCOCO, RefCOCO+,
//! RefCOCOg and Flickr30k evaluations use, and a plain JSONL.
//!
//! **MDETR layout** (`final_refcoco_testA.json`, `finetune_refcoco_val.json`
//! and friends, as MDETR and GLIP publish them): a COCO file with one
//! `images` record *per expression* (`id`, `file_name`, `width`,
//! `height`, `caption` = the expression, `original_id` = the COCO image)
//! and one `annotations` record per image record (`image_id`, `bbox` as
//! COCO `xywh` pixels). Extra fields (`tokens_positive`, `dataset_name`, …)
//! are ignored. When an image record has several annotations, the first
//! one in file order is its ground truth.
//!
//! **JSONL**: one object per line, `{"image": "rel/path.jpg",
//! "expression": "the dog on the left", "bbox": [x1, y1, x2, y2]}` in
//! pixels of the original image, with an optional `id` (string or
//! integer; the line number otherwise).
//!
//! A bad record is reported with its file, record and field and skipped;
//! the others are loaded. Image paths may not escape the image root.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::core::dataset::escapes_root;
use crate::core::geometry::Bbox;
use crate::core::project::{read_jsonl_plain, LineError, ProjectError};

/// One referring expression to evaluate.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RecItem {
    /// Sample id (the MDETR image record's id, the JSONL `id`, or
    /// `line<N>`).
    pub id: String,
    /// Image path, relative to the set's image root.
    pub image: String,
    /// The referring expression.
    pub expression: String,
    /// Ground-truth box, pixel `xyxy` in the original image.
    pub gt_bbox: Bbox,
}

/// A record of the set that was skipped.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RecDataIssue {
    /// The file.
    pub file: PathBuf,
    /// The record (`images[3] (id 17)` or `line 5`).
    pub record: String,
    /// The field at fault.
    pub field: String,
    /// What is wrong.
    pub message: String,
}

impl fmt::Display for RecDataIssue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}: {}, field \"{}\": {}",
            self.file.display(),
            self.record,
            self.field,
            self.message
        )
    }
}

/// A loaded REC set.
#[derive(Clone, Debug, PartialEq)]
pub struct RecSet {
    /// The file it came from.
    pub source: PathBuf,
    /// Folder the items' image paths are relative to.
    pub image_root: PathBuf,
    /// The samples, in file order.
    pub items: Vec<RecItem>,
    /// Records skipped, each named.
    pub issues: Vec<RecDataIssue>,
}

impl RecSet {
    /// The full path of an item's image.
    pub fn image_path(&self, item: &RecItem) -> PathBuf {
        self.image_root.join(&item.image)
    }
}

/// Why a REC set could not be read at all.
#[derive(Debug, thiserror::Error)]
pub enum RecDataError {
    /// The file could not be opened or read.
    #[error(transparent)]
    Io(#[from] ProjectError),
    /// The MDETR JSON is not valid JSON of the expected shape.
    #[error("{}: {message}", path.display())]
    Json {
        /// The file.
        path: PathBuf,
        /// serde's message, with line and column.
        message: String,
    },
}

/// The image root used when none is given: the file's folder, or its
/// `images/` subfolder when that exists.
pub fn default_image_root(path: &Path) -> PathBuf {
    let dir = crate::core::atomic::parent_dir(path);
    let images = dir.join("images");
    if images.is_dir() {
        images
    } else {
        dir.to_path_buf()
    }
}

/// Loads a REC set: `.jsonl` files as JSONL, anything else as MDETR JSON.
pub fn load(path: &Path, image_root: Option<&Path>) -> Result<RecSet, RecDataError> {
    let root = image_root
        .map(Path::to_path_buf)
        .unwrap_or_else(|| default_image_root(path));
    let is_jsonl = path
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("jsonl"));
    let (items, issues) = if is_jsonl {
        load_jsonl(path)?
    } else {
        load_mdetr(path)?
    };
    Ok(RecSet {
        source: path.to_path_buf(),
        image_root: root,
        items,
        issues,
    })
}

/// An id given as a JSON string or integer.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(untagged)]
pub enum FlexibleId {
    /// `"abc"`.
    Text(String),
    /// `17`.
    Number(i64),
}

impl fmt::Display for FlexibleId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FlexibleId::Text(s) => f.write_str(s),
            FlexibleId::Number(n) => write!(f, "{n}"),
        }
    }
}

/// Serde helper: an optional id that may be a string or an integer, read
/// as a string.
pub fn flexible_id<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    Ok(Option::<FlexibleId>::deserialize(d)?.map(|id| id.to_string()))
}

#[derive(Deserialize)]
struct JsonlRecord {
    #[serde(default, deserialize_with = "flexible_id")]
    id: Option<String>,
    image: String,
    expression: String,
    bbox: [f64; 4],
}

fn check_box(b: [f64; 4]) -> Result<Bbox, String> {
    let bbox = Bbox::new(b[0] as f32, b[1] as f32, b[2] as f32, b[3] as f32);
    if bbox.is_valid() {
        Ok(bbox)
    } else {
        Err(format!(
            "{b:?} is not a finite box with positive width and height"
        ))
    }
}

fn check_image(name: &str) -> Result<(), String> {
    if escapes_root(name) {
        Err(format!(
            "refused: image path escapes the image root ({name:?})"
        ))
    } else {
        Ok(())
    }
}

fn load_jsonl(path: &Path) -> Result<(Vec<RecItem>, Vec<RecDataIssue>), RecDataError> {
    let (lines, errors) = read_jsonl_plain::<JsonlRecord>(path)?;
    let mut issues: Vec<RecDataIssue> = errors.into_iter().map(line_issue).collect();
    let mut items = Vec::with_capacity(lines.len());
    let mut seen = HashSet::new();
    for (line, r) in lines {
        let issue = |field: &str, message: String| RecDataIssue {
            file: path.to_path_buf(),
            record: format!("line {line}"),
            field: field.into(),
            message,
        };
        let id = r.id.unwrap_or_else(|| format!("line{line}"));
        if let Err(m) = check_image(&r.image) {
            issues.push(issue("image", m));
            continue;
        }
        if r.expression.trim().is_empty() {
            issues.push(issue("expression", "empty".into()));
            continue;
        }
        let gt_bbox = match check_box(r.bbox) {
            Ok(b) => b,
            Err(m) => {
                issues.push(issue("bbox", m));
                continue;
            }
        };
        if !seen.insert(id.clone()) {
            issues.push(issue("id", format!("duplicate id {id:?}")));
            continue;
        }
        items.push(RecItem {
            id,
            image: r.image,
            expression: r.expression,
            gt_bbox,
        });
    }
    issues.sort_by_key(|i| {
        i.record
            .strip_prefix("line ")
            .and_then(|n| n.parse::<usize>().ok())
    });
    Ok((items, issues))
}

fn line_issue(e: LineError) -> RecDataIssue {
    RecDataIssue {
        file: e.file,
        record: format!("line {}", e.line),
        field: String::new(),
        message: e.message,
    }
}

#[derive(Deserialize)]
struct MdetrFile {
    images: Vec<serde_json::Value>,
    #[serde(default)]
    annotations: Vec<serde_json::Value>,
}

#[derive(Deserialize)]
struct MdetrImage {
    id: FlexibleId,
    file_name: String,
    caption: String,
}

#[derive(Deserialize)]
struct MdetrAnnotation {
    image_id: FlexibleId,
    bbox: [f64; 4],
}

fn load_mdetr(path: &Path) -> Result<(Vec<RecItem>, Vec<RecDataIssue>), RecDataError> {
    let file = std::fs::File::open(path).map_err(|e| ProjectError::io(path, e))?;
    let doc: MdetrFile =
        serde_json::from_reader(std::io::BufReader::new(file)).map_err(|e| RecDataError::Json {
            path: path.to_path_buf(),
            message: format!("not an MDETR-style COCO file: {e}"),
        })?;
    let mut issues = Vec::new();
    let issue = |record: String, field: &str, message: String| RecDataIssue {
        file: path.to_path_buf(),
        record,
        field: field.into(),
        message,
    };
    // The first valid annotation of every image record.
    let mut boxes: HashMap<FlexibleId, Bbox> = HashMap::new();
    for (i, a) in doc.annotations.into_iter().enumerate() {
        match serde_json::from_value::<MdetrAnnotation>(a) {
            Ok(a) => {
                let [x, y, w, h] = a.bbox;
                match check_box([x, y, x + w, y + h]) {
                    Ok(b) => {
                        boxes.entry(a.image_id).or_insert(b);
                    }
                    Err(m) => issues.push(issue(format!("annotations[{i}]"), "bbox", m)),
                }
            }
            Err(e) => issues.push(issue(format!("annotations[{i}]"), "", e.to_string())),
        }
    }
    let mut items = Vec::with_capacity(doc.images.len());
    let mut seen = HashSet::new();
    for (i, v) in doc.images.into_iter().enumerate() {
        let im = match serde_json::from_value::<MdetrImage>(v) {
            Ok(im) => im,
            Err(e) => {
                issues.push(issue(format!("images[{i}]"), "", e.to_string()));
                continue;
            }
        };
        let record = format!("images[{i}] (id {})", im.id);
        if let Err(m) = check_image(&im.file_name) {
            issues.push(issue(record, "file_name", m));
            continue;
        }
        if im.caption.trim().is_empty() {
            issues.push(issue(record, "caption", "empty".into()));
            continue;
        }
        let Some(&gt_bbox) = boxes.get(&im.id) else {
            issues.push(issue(
                record,
                "id",
                "no annotation with a valid box has this image_id (no ground truth)".into(),
            ));
            continue;
        };
        if !seen.insert(im.id.clone()) {
            issues.push(issue(record, "id", "duplicate image record id".into()));
            continue;
        }
        items.push(RecItem {
            id: im.id.to_string(),
            image: im.file_name,
            expression: im.caption,
            gt_bbox,
        });
    }
    Ok((items, issues))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A hand-written MDETR file: two good expressions on one COCO image,
    /// and one of each kind of bad record.
    const MDETR: &str = r#"{
      "info": {"description": "hand-written fixture"},
      "images": [
        {"file_name": "COCO_train2014_000000000009.jpg", "height": 480, "width": 640, "id": 0,
         "caption": "the bowl on the left", "dataset_name": "refcoco", "original_id": 9,
         "tokens_negative": [[0, 20]]},
        {"file_name": "COCO_train2014_000000000009.jpg", "height": 480, "width": 640, "id": 1,
         "caption": "broccoli", "original_id": 9},
        {"file_name": "../secret.jpg", "height": 10, "width": 10, "id": 2, "caption": "x"},
        {"file_name": "a.jpg", "height": 10, "width": 10, "id": 3, "caption": "  "},
        {"file_name": "a.jpg", "height": 10, "width": 10, "id": 4, "caption": "no box"},
        {"file_name": "a.jpg", "id": 5},
        {"file_name": "a.jpg", "height": 10, "width": 10, "id": 6, "caption": "zero box"}
      ],
      "annotations": [
        {"area": 100, "iscrowd": 0, "image_id": 0, "bbox": [1.0, 187.0, 612.0, 286.0],
         "category_id": 51, "id": 0, "tokens_positive": [[4, 8]]},
        {"image_id": 1, "bbox": [311.7, 20.0, 100.0, 50.5], "id": 1},
        {"image_id": 1, "bbox": [0, 0, 5, 5], "id": 2},
        {"image_id": 6, "bbox": [0, 0, 0, 5], "id": 3},
        {"image_id": 2, "bbox": [0, 0, 5, 5], "id": 4},
        {"image_id": 3, "bbox": [0, 0, 5, 5], "id": 5}
      ],
      "categories": [{"id": 51, "name": "bowl"}]
    }"#;

    #[test]
    fn mdetr_fixture_loads_good_records_and_names_bad_ones() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("finetune_refcoco_val.json");
        std::fs::write(&path, MDETR).unwrap();
        let set = load(&path, Some(Path::new("/data/coco/train2014"))).unwrap();
        assert_eq!(set.items.len(), 2);
        assert_eq!(set.items[0].id, "0");
        assert_eq!(set.items[0].expression, "the bowl on the left");
        assert_eq!(set.items[0].gt_bbox, Bbox::new(1.0, 187.0, 613.0, 473.0));
        // The first annotation of image record 1 is its box.
        assert_eq!(set.items[1].gt_bbox, Bbox::new(311.7, 20.0, 411.7, 70.5));
        assert_eq!(
            set.image_path(&set.items[1]),
            Path::new("/data/coco/train2014/COCO_train2014_000000000009.jpg")
        );
        let text: Vec<String> = set.issues.iter().map(|i| i.to_string()).collect();
        assert_eq!(set.issues.len(), 6, "{text:#?}");
        let has = |needle: &str| text.iter().any(|t| t.contains(needle));
        assert!(has("annotations[3], field \"bbox\""));
        assert!(has("images[2] (id 2), field \"file_name\": refused"));
        assert!(has("images[3] (id 3), field \"caption\": empty"));
        assert!(has("images[4] (id 4), field \"id\": no annotation"));
        assert!(has("images[5]") && has("caption"));
        assert!(has(
            "images[6] (id 6), field \"id\": no annotation with a valid box"
        ));
        assert!(text.iter().all(|t| t.contains("finetune_refcoco_val.json")));
    }

    #[test]
    fn mdetr_that_is_not_json_is_an_error_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bad.json");
        std::fs::write(&path, "{\"images\": [").unwrap();
        let err = load(&path, None).unwrap_err().to_string();
        assert!(err.contains("bad.json") && err.contains("line 1"), "{err}");
    }

    #[test]
    fn jsonl_accepts_string_and_integer_ids_and_names_bad_lines() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("images")).unwrap();
        let path = dir.path().join("rec.jsonl");
        std::fs::write(
            &path,
            [
                r#"{"id": 7, "image": "a.png", "expression": "the cat", "bbox": [1, 2, 30, 40]}"#,
                r#"{"id": "b", "image": "b.png", "expression": "the dog", "bbox": [0, 0, 5, 5]}"#,
                r#"{"image": "c.png", "expression": "no id", "bbox": [0, 0, 5, 5]}"#,
                r#"{"image": "/etc/passwd", "expression": "x", "bbox": [0, 0, 5, 5]}"#,
                r#"{"image": "d.png", "expression": "nan", "bbox": [0, 0, 5, NaN]}"#,
                r#"{"image": "d.png", "expression": "flat", "bbox": [0, 0, 0, 5]}"#,
                r#"{"id": 7, "image": "e.png", "expression": "again", "bbox": [0, 0, 5, 5]}"#,
            ]
            .join("\n"),
        )
        .unwrap();
        let set = load(&path, None).unwrap();
        assert_eq!(set.image_root, dir.path().join("images"));
        let ids: Vec<&str> = set.items.iter().map(|i| i.id.as_str()).collect();
        assert_eq!(ids, ["7", "b", "line3"]);
        let text: Vec<String> = set.issues.iter().map(|i| i.to_string()).collect();
        assert_eq!(text.len(), 4, "{text:#?}");
        assert!(text[0].contains("line 4") && text[0].contains("escapes"));
        assert!(text[1].contains("line 5"));
        assert!(text[2].contains("line 6") && text[2].contains("\"bbox\""));
        assert!(text[3].contains("line 7") && text[3].contains("duplicate id"));
    }
}
