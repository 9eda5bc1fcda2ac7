//! egui_kittest tests that click through the workbench by label, on copies
//! of the demo project, and a wgpu snapshot of the canvas with overlays.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use egui::accesskit::Role;
use egui::{Modifiers, Pos2};
use egui_kittest::kittest::Queryable;
use egui_kittest::Harness;
use serde_json::Value;
use spr_workbench::app::WorkbenchApp;

fn demo_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("assets/demo")
}

fn copy_demo(to: &Path) {
    fs::create_dir_all(to.join("images")).unwrap();
    for e in fs::read_dir(demo_dir()).unwrap() {
        let e = e.unwrap();
        if e.file_type().unwrap().is_file() {
            fs::copy(e.path(), to.join(e.file_name())).unwrap();
        }
    }
    for e in fs::read_dir(demo_dir().join("images")).unwrap() {
        let e = e.unwrap();
        fs::copy(e.path(), to.join("images").join(e.file_name())).unwrap();
    }
}

fn jsonl(path: &Path) -> Vec<Value> {
    fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn harness(project: PathBuf, wgpu: bool) -> Harness<'static, WorkbenchApp> {
    let builder = Harness::builder()
        .with_size(egui::vec2(1400.0, 860.0))
        .with_accessibility_check(false);
    let builder = if wgpu { builder.wgpu() } else { builder };
    let mut h = builder.build_eframe(move |cc| WorkbenchApp::new(cc, project));
    settle(&mut h);
    assert!(
        h.state().ws.is_some(),
        "project did not open: {}",
        h.state().status
    );
    h
}

/// Step until background work (project load, decodes, export) is done.
fn settle(h: &mut Harness<'static, WorkbenchApp>) {
    let start = Instant::now();
    loop {
        h.step();
        if !h.state().busy() {
            h.step();
            h.step();
            return;
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "still busy: {}",
            h.state().status
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn y_of(h: &Harness<'static, WorkbenchApp>, label_part: &str) -> f32 {
    h.get_by_label_contains(label_part).rect().center().y
}

/// The node labelled `label` in the same row as the node whose label holds `row`.
fn in_row<'h>(
    h: &'h Harness<'static, WorkbenchApp>,
    label: &'h str,
    row: &str,
) -> egui_kittest::Node<'h> {
    let y = y_of(h, row);
    h.get_all_by_label(label)
        .min_by(|a, b| {
            (a.rect().center().y - y)
                .abs()
                .total_cmp(&(b.rect().center().y - y).abs())
        })
        .unwrap()
}

#[test]
fn lambda_reranks_marks_export_and_region_drawing_with_undo() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("demo");
    copy_demo(&dir);
    // Give query 3-0's candidates semantic scores, as an external CLIP scorer
    // would write them, so that λ matters: the vague text reads well but has
    // no boxes.
    let scores_path = dir.join("scores.jsonl");
    let scores: Vec<String> = jsonl(&scores_path)
        .into_iter()
        .map(|mut s| {
            if s["query_id"] == "3-0" {
                let kind = s["candidate_id"]
                    .as_str()
                    .unwrap()
                    .rsplit('-')
                    .next()
                    .unwrap()
                    .to_string();
                s["semantic"] = match kind.as_str() {
                    "c0" => 0.30.into(),
                    "c5" => 0.95.into(),
                    _ => 0.50.into(),
                };
                s["semantic_model"] = "test-fixture".into();
            }
            s.to_string()
        })
        .collect();
    fs::write(&scores_path, scores.join("\n") + "\n").unwrap();

    let mut h = harness(dir.clone(), false);
    h.get_by_label_contains("scene_003.png").click();
    settle(&mut h);
    assert_eq!(h.state().sel.region.as_deref(), Some("3-0"));

    // λ = 1: semantic alone → the vague candidate ranks above the precise one.
    h.get_by_role_and_label(Role::Slider, "λ (semantic weight)")
        .set_value_accesskit(1.0);
    settle(&mut h);
    assert!(y_of(&h, "vague (3-0-c5)") < y_of(&h, "precise (3-0-c0)"));
    // λ = 0: localization alone → precise first, vague last.
    h.get_by_role_and_label(Role::Slider, "λ (semantic weight)")
        .set_value_accesskit(0.0);
    settle(&mut h);
    assert!(y_of(&h, "precise (3-0-c0)") < y_of(&h, "vague (3-0-c5)"));
    assert!(y_of(&h, "jittered (3-0-c1)") < y_of(&h, "vague (3-0-c5)"));

    // Mark the partial candidate chosen and the wrong-box one rejected by hand.
    in_row(&h, "chosen", "partial (3-0-c2)").click();
    settle(&mut h);
    in_row(&h, "rejected", "wrong (3-0-c3)").click();
    settle(&mut h);
    let marks = jsonl(&dir.join("marks.jsonl"));
    assert_eq!(marks.len(), 1);
    assert_eq!(marks[0]["chosen"], "3-0-c2");
    assert_eq!(marks[0]["rejected"], "3-0-c3");

    h.get_by_label("Export pairs").click();
    settle(&mut h);
    assert!(
        h.state().status.starts_with("exported"),
        "{}",
        h.state().status
    );
    let pairs = jsonl(&dir.join("pairs.jsonl"));
    let p = pairs.iter().find(|p| p["query_id"] == "3-0").unwrap();
    assert_eq!(p["chosen_id"], "3-0-c2");
    assert_eq!(p["rejected_id"], "3-0-c3");
    assert_eq!(p["manual"], true);
    let trl = jsonl(&dir.join("export/trl_pairs.jsonl"));
    assert!(trl
        .iter()
        .any(|t| t["chosen"][0]["content"][0]["text"] == p["chosen"]
            && t["rejected"][0]["content"][0]["text"] == p["rejected"]));

    // Draw a region with a simulated drag on the canvas, then undo it.
    let before = jsonl(&dir.join("regions.jsonl")).len();
    h.get_by_label("Draw region").click();
    settle(&mut h);
    h.drag_at(Pos2::new(420.0, 250.0));
    h.step();
    h.hover_at(Pos2::new(560.0, 420.0));
    h.step();
    h.drop_at(Pos2::new(640.0, 560.0));
    settle(&mut h);
    let regions = jsonl(&dir.join("regions.jsonl"));
    assert_eq!(regions.len(), before + 1, "{}", h.state().status);
    let new = regions.last().unwrap();
    assert_eq!(new["source"], "manual");
    assert_eq!(new["image_id"], 3);
    assert_eq!(h.state().sel.region.as_deref(), new["id"].as_str());
    h.key_press_modifiers(Modifiers::COMMAND, egui::Key::Z);
    settle(&mut h);
    assert_eq!(jsonl(&dir.join("regions.jsonl")).len(), before);
    // …and redo.
    h.key_press_modifiers(Modifiers::COMMAND | Modifiers::SHIFT, egui::Key::Z);
    settle(&mut h);
    assert_eq!(jsonl(&dir.join("regions.jsonl")).len(), before + 1);
}

#[test]
fn bad_input_opens_and_is_shown_where_it_belongs() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("bad");
    copy_demo(&dir);
    fs::remove_file(dir.join("images/scene_002.png")).unwrap();
    fs::write(
        dir.join("images/scene_004.png"),
        b"\x89PNG\r\n\x1a\nnot really",
    )
    .unwrap();
    let mut cands = fs::read_to_string(dir.join("candidates.jsonl")).unwrap();
    cands.push_str("{\"v\":1,\"id\":\"oops\"\n");
    fs::write(dir.join("candidates.jsonl"), cands).unwrap();

    let mut h = harness(dir.clone(), false);
    // The malformed record is listed with its file and line.
    h.get_by_label_contains("Problems (1)").click();
    settle(&mut h);
    h.get_by_label_contains("candidates.jsonl:457");
    // The missing image: its error is shown, and the rest keeps working.
    h.get_by_label_contains("scene_002.png").click();
    settle(&mut h);
    h.get_by_label_contains("cannot open image");
    h.get_by_label_contains("scene_004.png").click();
    settle(&mut h);
    h.get_by_label_contains("cannot decode image");
    h.get_by_label_contains("scene_005.png").click();
    settle(&mut h);
    assert!(h.state().sel.region.is_some());
    assert!(h.query_by_label_contains("cannot").is_none());
}

#[test]
fn dragging_a_box_handle_fixes_the_box_and_rescores() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("demo");
    copy_demo(&dir);
    let mut h = harness(dir.clone(), false);
    h.get_by_label_contains("scene_005.png").click();
    settle(&mut h);
    h.get_by_label_contains("jittered (5-0-c1)").click();
    settle(&mut h);
    let (ci, first, target) = {
        let app = h.state();
        let ws = app.ws.as_ref().unwrap();
        let ci = ws.candidate_index("5-0-c1").unwrap();
        let first = ws.scores["5-0-c1"].boxes[0];
        // The annotation the jittered box stands for: the region object it overlaps most.
        let region = &ws.regions[ws.region_index("5-0").unwrap()];
        let gt = ws.region_gt(region).unwrap();
        let target = *gt
            .iter()
            .max_by(|a, b| a.iou(first).total_cmp(&b.iou(first)))
            .unwrap();
        (ci, first, target)
    };
    let before_loc = h.state().ws.as_ref().unwrap().scores["5-0-c1"].localization;
    // Drag the top-left handle onto the annotation's top-left corner, then the
    // bottom-right handle onto its bottom-right corner.
    for (from, to) in [
        ((first.x1, first.y1), (target.x1, target.y1)),
        ((first.x2, first.y2), (target.x2, target.y2)),
    ] {
        let view = &h.state().annotate.view;
        let a = view.screen_from_image_last(Pos2::new(from.0, from.1));
        let b = view.screen_from_image_last(Pos2::new(to.0, to.1));
        // As a hand does: hover, press, move, release.
        h.hover_at(a);
        h.step();
        h.drag_at(a);
        h.step();
        // A detour past egui's drag threshold, then onto the target.
        h.hover_at(a + egui::vec2(25.0, 25.0));
        h.step();
        h.drop_at(b);
        settle(&mut h);
    }
    let app = h.state();
    let ws = app.ws.as_ref().unwrap();
    let moved = ws.scores["5-0-c1"].boxes[0];
    assert!(
        moved.iou(target) > 0.95,
        "moved to {moved:?}, annotation {target:?}"
    );
    assert!(ws.scores["5-0-c1"].localization > before_loc);
    // Saved: the text on disk holds the new box.
    let on_disk = jsonl(&dir.join("candidates.jsonl"));
    let c = on_disk.iter().find(|c| c["id"] == "5-0-c1").unwrap();
    assert_eq!(c["text"].as_str().unwrap(), ws.candidates[ci].text);
}

/// The canvas with the overlays drawn by our wgpu pipeline (lavapipe in CI).
#[test]
fn canvas_snapshot_with_wgpu_overlays() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("demo");
    copy_demo(&dir);
    let mut h = harness(dir, true);
    h.get_by_label_contains("scene_005.png").click();
    settle(&mut h);
    h.get_by_label_contains("precise (5-0-c0)").click();
    settle(&mut h);
    // The pointer out of the way: where a label was clicked depends on
    // how many frames the auto-sized table columns took to settle.
    h.hover_at(egui::Pos2::new(4.0, 850.0));
    h.step();
    let image = h.render().expect("wgpu renders");
    // The region outline is drawn in the region colour by our pipeline: find
    // its yellow pixels on the canvas.
    let yellow = image
        .pixels()
        .filter(|p| p[0] > 200 && p[1] > 180 && p[2] < 80)
        .count();
    assert!(yellow > 200, "only {yellow} region-coloured pixels");
    let green = image
        .pixels()
        .filter(|p| p[1] > 180 && p[0] < 90 && p[2] < 130)
        .count();
    assert!(green > 200, "only {green} matched-box pixels");
    image
        .save(Path::new(env!("CARGO_MANIFEST_DIR")).join("target/gui-canvas.png"))
        .ok();
    h.snapshot("canvas_demo");
}

#[test]
fn keyboard_moves_between_images_and_picks_candidates() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("demo");
    copy_demo(&dir);
    let mut h = harness(dir, false);
    assert_eq!(h.state().sel.image, None);
    // Browser order is file order here (no sorting).
    h.key_press(egui::Key::D);
    settle(&mut h);
    assert_eq!(h.state().sel.image, Some(0));
    h.key_press(egui::Key::D);
    h.step();
    h.key_press(egui::Key::ArrowRight);
    settle(&mut h);
    assert_eq!(h.state().sel.image, Some(2));
    h.key_press(egui::Key::A);
    settle(&mut h);
    assert_eq!(h.state().sel.image, Some(1));
    h.key_press(egui::Key::ArrowLeft);
    h.step();
    h.key_press(egui::Key::ArrowLeft);
    settle(&mut h);
    assert_eq!(h.state().sel.image, Some(0), "clamped at the first image");
    // 2 picks the candidate ranked second; C marks it chosen; H hides overlays.
    h.key_press(egui::Key::Num2);
    settle(&mut h);
    let app = h.state();
    let ws = app.ws.as_ref().unwrap();
    let q = app.sel.region.clone().unwrap();
    let second = ws.ranking(&q, app.live.lambda, app.live.iou)[1].candidate;
    assert_eq!(app.sel.candidate, Some(second));
    h.key_press(egui::Key::C);
    settle(&mut h);
    let app = h.state();
    let ws = app.ws.as_ref().unwrap();
    assert_eq!(
        ws.mark_of(&q).and_then(|m| m.chosen.clone()),
        Some(ws.candidates[second].id.clone())
    );
    h.key_press(egui::Key::H);
    h.step();
    assert!(h.state().annotate.hide_overlays);
    h.key_press(egui::Key::F1);
    h.step();
    h.get_by_label("Keyboard shortcuts");
}

#[test]
fn the_selection_follows_its_candidate_when_records_move() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("demo");
    copy_demo(&dir);
    let mut h = harness(dir, false);
    h.get_by_label_contains("scene_003.png").click();
    settle(&mut h);
    // Two hand-written candidates: [… h0, h1].
    for text in ["first", "second"] {
        h.get_by_role(Role::MultilineTextInput).focus();
        h.step();
        h.get_by_role(Role::MultilineTextInput).type_text(text);
        h.step();
        h.get_by_label("Add candidate").click();
        settle(&mut h);
    }
    let index = |h: &Harness<'static, WorkbenchApp>, id: &str| {
        h.state().ws.as_ref().unwrap().candidate_index(id)
    };
    // Delete h0, undo: [… h1, h0].
    h.get_by_label_contains("(3-0-h0)").click();
    settle(&mut h);
    h.key_press(egui::Key::Delete);
    settle(&mut h);
    assert_eq!(index(&h, "3-0-h0"), None);
    h.key_press_modifiers(Modifiers::COMMAND, egui::Key::Z);
    settle(&mut h);
    // Select h0 (the last record), then undo the addition of h1, which
    // sits before it: h0 moves down one place and stays selected.
    h.get_by_label_contains("(3-0-h0)").click();
    settle(&mut h);
    let before = index(&h, "3-0-h0").unwrap();
    assert_eq!(h.state().sel.candidate, Some(before));
    h.key_press_modifiers(Modifiers::COMMAND, egui::Key::Z);
    settle(&mut h);
    assert_eq!(index(&h, "3-0-h1"), None);
    assert_eq!(index(&h, "3-0-h0"), Some(before - 1));
    assert_eq!(h.state().sel.candidate, Some(before - 1));
}

#[test]
fn candidates_a_terminal_appends_appear_in_the_window_and_survive_its_edits() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("demo");
    copy_demo(&dir);
    let mut h = harness(dir.clone(), false);
    let before = h.state().ws.as_ref().unwrap().candidates.len();
    // A terminal appends a candidate (as `spr generate` does).
    let path = dir.join("candidates.jsonl");
    let mut rec = jsonl(&path)[0].clone();
    rec["id"] = "from-the-terminal".into();
    rec["source"] = "cli".into();
    let line = format!("{rec}\n");
    spr_workbench::core::project::append_jsonl(&path, line.as_bytes()).unwrap();
    // Within about a second the window has reloaded it and says so.
    let start = Instant::now();
    while h.state().ws.as_ref().unwrap().candidates.len() == before {
        assert!(start.elapsed() < Duration::from_secs(10), "not reloaded");
        h.step();
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        h.state()
            .status
            .starts_with("candidates.jsonl changed on disk (written by another process): reloaded"),
        "{}",
        h.state().status
    );
    // Another append, then an edit in the window (its background-saving
    // workspace) before it has reloaded: both end up on disk.
    let mut second = rec.clone();
    second["id"] = "also-from-the-terminal".into();
    let line = format!("{second}\n");
    spr_workbench::core::project::append_jsonl(&path, line.as_bytes()).unwrap();
    {
        let ws = h.state_mut().ws.as_mut().unwrap();
        let q = ws.regions[0].id.clone();
        let mine = ws.manual_candidate(&q, "typed in the window");
        ws.apply(spr_workbench::core::workspace::Edit::AddCandidate(mine))
            .unwrap();
    }
    settle(&mut h);
    let on_disk = jsonl(&path);
    assert_eq!(on_disk.len(), before + 3);
    for id in ["from-the-terminal", "also-from-the-terminal"] {
        assert!(on_disk.iter().any(|c| c["id"] == id), "{id} lost");
    }
    assert!(on_disk.iter().any(|c| c["text"] == "typed in the window"));
}
