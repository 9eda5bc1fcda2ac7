//! The loader's tests: hostile input reported by place, and the
//! two-thread load equal to the one-thread one.

use super::split::load_split;
use super::*;
use proptest::prelude::*;
use std::io::{self, Cursor};
use std::sync::Arc;

use crate::core::dataset::json::tests::Trickle;

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
fn annotations_span_chunks_in_order() {
    let mut c = Chunks::default();
    for i in 0..(3 * Chunks::<u32>::CHUNK + 5) {
        c.push(i as u32);
    }
    assert_eq!(c.len(), 3 * Chunks::<u32>::CHUNK + 5);
    let sizes: Vec<usize> = c.slices().map(<[u32]>::len).collect();
    assert_eq!(
        sizes,
        [Chunks::<u32>::CHUNK; 3]
            .iter()
            .copied()
            .chain([5])
            .collect::<Vec<_>>()
    );
    let flat: Vec<u32> = c.into_chunks().into_iter().flatten().collect();
    assert!(flat.iter().enumerate().all(|(i, &v)| v == i as u32));
    // A load whose annotations span many chunks (400 records) keeps file
    // order within each image.
    let ds = ok(&big_doc(400, false));
    // (Its ids grow in file order.)
    for range in &ds.image_objects {
        let ids = &ds.objects.id[range.start as usize..range.end as usize];
        assert!(ids.windows(2).all(|w| w[0] < w[1]), "{ids:?}");
    }
    assert!(ds.objects.len() > 300);
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
    assert!(
        format_error(r#"{"images": [], "images": [], "annotations": [], "categories": []}"#)
            .contains("twice")
    );
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
/// buffers; also returns how the split went.
fn load_split_bytes(bytes: &[u8], cap: usize) -> (Result<Dataset, DatasetError>, SplitUse) {
    let data: Arc<[u8]> = Arc::from(bytes);
    let open_at = |offset: u64| -> io::Result<Cursor<Arc<[u8]>>> {
        let mut c = Cursor::new(data.clone());
        c.set_position(offset);
        Ok(c)
    };
    load_split(
        open_at(0).unwrap(),
        &open_at,
        bytes.len() as u64,
        cap,
        Path::new("ann.json"),
        Path::new("/data/images"),
        &LoadOptions::default(),
    )
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
            let (split, used) = load_split_bytes(src.as_bytes(), cap);
            assert_eq!(used, SplitUse::Adopted, "pretty {pretty}, cap {cap}");
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
                let (split, used) = load_split_bytes(bad.as_bytes(), cap);
                assert_eq!(used, SplitUse::TailFailed, "reported by the second thread");
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
    let (split, used) = load_split_bytes(src.as_bytes(), 16);
    assert_eq!(used, SplitUse::Abandoned);
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
    let (split, used) = load_split_bytes(src.as_bytes(), 16);
    assert_eq!(used, SplitUse::Abandoned);
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
    let loaded = load_path(&path, Path::new("/data/images"), &LoadOptions::default(), 0);
    let stats = loaded.as_ref().map(|(_, s)| *s).unwrap();
    assert_eq!(stats.bytes, src.len() as u64);
    if std::thread::available_parallelism().map_or(1, |n| n.get()) >= 2 {
        assert_eq!(stats.split, SplitUse::Adopted);
    }
    let split = loaded.map(|(ds, _)| ds);
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

#[test]
fn nan_literals_unicode_names_and_a_crowded_image() {
    // `NaN` is not JSON: a syntax error at its place, not a quiet NaN.
    let src =
        "{\"images\": [],\n\"annotations\": [{\"id\": 1, \"area\": NaN}], \"categories\": []}";
    let (line, column, message) = json_error(src);
    assert_eq!((line, column), (2, 35), "{message}");
    assert!(message.contains("found 'N'"), "{message}");
    // Unicode file names, raw and escaped (a surrogate pair), are kept
    // as they are.
    let ds = ok(&doc(
        r#"{"id": 1, "file_name": "straße/猫 ü.jpg", "width": 9, "height": 9},
           {"id": 2, "file_name": "\u00e9t\u00e9/\ud83d\ude00.png", "width": 9, "height": 9}"#,
        "",
        CATEGORIES,
    ));
    assert!(ds.issues.is_empty(), "{:?}", ds.issues);
    assert_eq!(ds.images[0].file_name, "straße/猫 ü.jpg");
    assert_eq!(ds.images[1].file_name, "été/😀.png");
    // 5,000 objects on one image: all kept, in file order.
    let anns: Vec<String> = (0..5_000u64)
        .map(|i| ann(1_000 + i, 10, 1, &format!("[{}, 1, 2, 2]", i % 600)))
        .collect();
    let ds = ok(&doc(IMAGES, &anns.join(",\n"), CATEGORIES));
    assert!(ds.issues.is_empty(), "{:?}", &ds.issues[..1]);
    let image = ds.image_index(10).unwrap();
    assert_eq!(ds.image_objects[image].len(), 5_000);
    let ids: Vec<u64> = ds.objects_of(image).map(|o| ds.objects.id[o]).collect();
    assert_eq!(ids, (1_000..6_000).collect::<Vec<u64>>());
}
