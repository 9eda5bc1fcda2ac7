//! The open-vocabulary detector in the localization score, on the bundled
//! demo with its tiny OWLv2 (`assets/demo/models/owlv2`, made by `spr tiny
//! owl`): the committed scores carry detector boxes, the detector only ever
//! raises SPR's recall-like score, the boxes it finds for the precise
//! descriptions' phrases sit on the objects, and bad input (a missing
//! model, a bad threshold, a description without phrases, a missing image)
//! is handled as documented.

use std::fs;
use std::path::{Path, PathBuf};

mod common;
use common::{copy_dir, demo_dir, spr};

use spr_workbench::core::geometry::Bbox;
use spr_workbench::core::project::{self, files, CandidateRecord, ScoreRecord};

fn stage<T: serde::de::DeserializeOwned + project::Versioned>(dir: &Path, name: &str) -> Vec<T> {
    let (r, errors) = project::read_jsonl::<T>(&dir.join(name)).unwrap();
    assert!(errors.is_empty(), "{errors:?}");
    r
}

fn kind_of(candidates: &[CandidateRecord], id: &str) -> String {
    let c = candidates.iter().find(|c| c.id == id).unwrap();
    c.source.trim_start_matches("synthetic-demo:").to_string()
}

#[test]
fn demo_scores_carry_detector_boxes_on_the_objects() {
    let scores: Vec<ScoreRecord> = stage(&demo_dir(), files::SCORES);
    let candidates: Vec<CandidateRecord> = stage(&demo_dir(), files::CANDIDATES);
    let regions: Vec<project::RegionRecord> = stage(&demo_dir(), files::REGIONS);
    let p = project::Project::open(&demo_dir()).unwrap();
    let ds = p.load_dataset().unwrap();
    let ids = spr_workbench::core::pipeline::object_ids(&ds);
    let (mut boxes, mut on_objects, mut precise_found) = (0usize, 0usize, 0usize);
    let mut precise = 0usize;
    for s in &scores {
        assert!(
            s.detector.starts_with("owlv2:models/owlv2"),
            "{}",
            s.detector
        );
        let kind = kind_of(&candidates, &s.candidate_id);
        if kind == "vague" {
            assert!(s.detections.is_empty());
            assert!(s.notes.iter().any(|n| n.starts_with("detector skipped")));
            continue;
        }
        let region = regions.iter().find(|r| r.id == s.query_id).unwrap();
        for d in &s.detections {
            assert!(d.score >= 0.3 && d.score <= 1.0, "{d:?}");
            // Cut to the crop, the pixels the detector saw (stored rounded
            // to whole pixels).
            let c = region.crop;
            let c = Bbox::new(c.x1 - 0.5, c.y1 - 0.5, c.x2 + 0.5, c.y2 + 0.5);
            assert!(c.contains(d.bbox), "{:?} outside {:?}", d.bbox, region.crop);
        }
        if kind == "precise" {
            precise += 1;
            precise_found += usize::from(!s.detections.is_empty());
            for d in &s.detections {
                boxes += 1;
                let best = region
                    .objects
                    .iter()
                    .map(|id| ds.objects.bbox[ids[id]].iou(d.bbox))
                    .fold(0.0f32, f32::max);
                on_objects += usize::from(best >= 0.5);
            }
        }
    }
    eprintln!(
        "precise candidates: {precise_found} of {precise} with detector boxes; {on_objects} of {boxes} boxes on a region object (IoU ≥ 0.5)"
    );
    assert!(
        precise_found * 4 >= precise * 3,
        "{precise_found} of {precise}"
    );
    assert!(on_objects * 2 >= boxes, "{on_objects} of {boxes}");
}

fn demo_copy(tmp: &Path) -> PathBuf {
    let root = tmp.join("demo");
    copy_dir(&demo_dir(), &root);
    root
}

fn set_scoring(root: &Path, from: &str, to: &str) {
    let cfg = fs::read_to_string(root.join("spr.toml")).unwrap();
    assert!(cfg.contains(from), "{cfg}");
    fs::write(root.join("spr.toml"), cfg.replace(from, to)).unwrap();
}

/// With and without the detector on the same candidates: SPR's score takes
/// the best match per object over P = written ∪ detected, so adding boxes
/// never lowers it, and the semantic score is untouched.
#[test]
fn the_detector_only_adds_predictions() {
    let tmp = tempfile::tempdir().unwrap();
    let root = demo_copy(tmp.path());
    let out = spr(&["score", "--project", root.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("detector: owlv2:models/owlv2"), "{stdout}");
    let with: Vec<ScoreRecord> = stage(&root, files::SCORES);
    set_scoring(&root, "detector_model = \"models/owlv2\"\n", "");
    let out = spr(&["score", "--project", root.to_str().unwrap()]);
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("detector not run"));
    let without: Vec<ScoreRecord> = stage(&root, files::SCORES);
    assert_eq!(with.len(), without.len());
    let mut raised = 0;
    for (a, b) in with.iter().zip(&without) {
        assert_eq!(a.candidate_id, b.candidate_id);
        assert!(a.localization >= b.localization - 1e-6, "{a:?} vs {b:?}");
        assert_eq!(a.semantic, b.semantic);
        assert_eq!(b.detector, "none");
        assert!(b.detections.is_empty());
        raised += usize::from(a.localization > b.localization + 1e-6);
    }
    eprintln!("the detector raised {raised} of {} scores", with.len());
    assert!(raised > 0);
}

#[test]
fn a_missing_detector_or_a_bad_threshold_names_the_field() {
    let tmp = tempfile::tempdir().unwrap();
    let root = demo_copy(tmp.path());
    set_scoring(
        &root,
        "detector_model = \"models/owlv2\"",
        "detector_model = \"models/nowhere\"",
    );
    let out = spr(&["score", "--project", root.to_str().unwrap()]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("detector_model") && err.contains("models/nowhere"),
        "{err}"
    );
    assert!(err.contains("google/owlv2-base-patch16-ensemble"), "{err}");
    set_scoring(
        &root,
        "detector_model = \"models/nowhere\"",
        "detector_model = \"models/owlv2\"",
    );
    set_scoring(
        &root,
        "detector_threshold = 0.3",
        "detector_threshold = 1.5",
    );
    let out = spr(&["score", "--project", root.to_str().unwrap()]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("detector_threshold"), "{err}");
}

/// A missing image skips that region's candidates with the reason; the
/// others are scored, detector boxes included.
#[test]
fn a_missing_image_skips_only_its_regions() {
    let tmp = tempfile::tempdir().unwrap();
    let root = demo_copy(tmp.path());
    // Detector only: the semantic scorer would report the image first.
    set_scoring(&root, "semantic_model = \"models/clip\"\n", "");
    fs::remove_file(root.join("images/scene_001.png")).unwrap();
    let out = spr(&["score", "--project", root.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("detector:") && err.contains("scene_001.png"),
        "{err}"
    );
    let scores: Vec<ScoreRecord> = stage(&root, files::SCORES);
    assert!(!scores.is_empty());
    assert!(scores.iter().all(|s| !s.query_id.starts_with("1-")));
    assert!(scores.iter().any(|s| !s.detections.is_empty()));
}
