//! egui_kittest tests of the training and evaluation views: runs launched,
//! stopped, resumed and crashed from the window (real `spr train` child
//! processes on the tiny demo model), and an evaluation fixture whose
//! curve, table, failing samples and side-by-side canvases are checked.

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use egui_kittest::kittest::Queryable;
use egui_kittest::Harness;
use spr_workbench::app::training::plots::{series, XAxis};
use spr_workbench::app::{Tab, WorkbenchApp};
use spr_workbench::core::geometry::Bbox;
use spr_workbench::core::rec::profile::RecProfile;
use spr_workbench::core::rec::{rec_report, RecRunReport, RecSample};
use spr_workbench::core::runs::{RunDir, RunStatus};

fn project() -> (tempfile::TempDir, PathBuf) {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("demo");
    common::copy_dir(&common::demo_dir(), &dir);
    (tmp, dir)
}

fn tiny_model() -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("assets/tiny-model")
        .display()
        .to_string()
}

fn harness(dir: PathBuf, wgpu: bool) -> Harness<'static, WorkbenchApp> {
    // The app starts `spr` children: the real binary, not this test.
    std::env::set_var("SPR_BIN", env!("CARGO_BIN_EXE_spr"));
    // The output of child processes is shown as it came, in any script:
    // characters the test fonts lack are drawn as boxes, as in the app.
    let b = Harness::builder()
        .with_size(egui::vec2(1400.0, 900.0))
        .with_accessibility_check(false)
        .allow_missing_glyphs();
    let b = if wgpu { b.wgpu() } else { b };
    let mut h = b.build_eframe(move |cc| WorkbenchApp::new(cc, dir));
    wait(&mut h, 60, "project opens", |a| a.ws.is_some() && !a.busy());
    h
}

/// Steps the app until `done` holds (the app keeps drawing meanwhile).
fn wait(
    h: &mut Harness<'static, WorkbenchApp>,
    secs: u64,
    what: &str,
    done: impl Fn(&WorkbenchApp) -> bool,
) {
    let start = Instant::now();
    loop {
        h.step();
        if done(h.state()) {
            h.step();
            return;
        }
        assert!(
            start.elapsed() < Duration::from_secs(secs),
            "timed out waiting: {what} ({})",
            h.state().training.message
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn status(app: &WorkbenchApp, run: &str) -> Option<RunStatus> {
    app.training.run(run).map(|r| r.overview.status.clone())
}

fn steps(app: &WorkbenchApp, run: &str) -> u64 {
    app.training.run(run).map_or(0, |r| r.overview.steps_done)
}

/// Fills the launch form (as typing would) and clicks Start.
fn launch(h: &mut Harness<'static, WorkbenchApp>, name: &str, model: &str, steps: u64) {
    {
        let f = h.state_mut().training.form.as_mut().unwrap();
        f.name = name.into();
        f.model = model.into();
        f.steps = steps;
        f.batch = 2;
        f.lora_r = 4;
        f.lora_alpha = 8.0;
        f.checkpoint_every = 0;
        f.eval_data.clear();
    }
    h.step();
    h.get_by_label("Start training").click();
    h.step();
}

#[test]
fn runs_launch_finish_stop_resume_and_crash_from_the_window() {
    let (_tmp, dir) = project();
    let mut h = harness(dir.clone(), true);
    h.get_by_label("Training").click();
    h.step();
    assert_eq!(h.state().tab, Tab::Training);

    // A 3-step DPO run of the tiny model: finished, with its points.
    launch(&mut h, "three", &tiny_model(), 3);
    wait(&mut h, 300, "run finishes", |a| {
        status(a, "three") == Some(RunStatus::Finished)
    });
    h.get_by_label("finished");
    let run = h.state().training.run("three").unwrap();
    assert_eq!(series(&run.tail.events, "loss", XAxis::Step).len(), 3);
    assert_eq!(
        series(&run.tail.events, "rewards/accuracies", XAxis::Step).len(),
        3
    );
    assert!(dir.join("runs/three/stderr.log").is_file());
    // The README's picture of the training view (not compared: loss
    // values may differ in the last bits between machines).
    h.state_mut().training.focus = None;
    h.step();
    h.render()
        .expect("wgpu renders")
        .save(Path::new(env!("CARGO_MANIFEST_DIR")).join("target/gui-training.png"))
        .ok();

    // A long run stopped from the window: a checkpoint, status stopped.
    launch(&mut h, "long", &tiny_model(), 5000);
    wait(&mut h, 300, "first steps", |a| steps(a, "long") >= 2);
    h.get_by_label("Stop").click();
    wait(&mut h, 120, "run stops", |a| {
        status(a, "long") == Some(RunStatus::Stopped)
    });
    h.get_by_label("stopped");
    let ckpt = RunDir::new(dir.join("runs/long"))
        .latest_checkpoint()
        .unwrap()
        .expect("a checkpoint on stop");
    // Resumed: it runs past the checkpoint, then is stopped again.
    h.get_by_label("Resume").click();
    wait(&mut h, 300, "resumed steps", |a| {
        matches!(status(a, "long"), Some(RunStatus::Running { .. })) && steps(a, "long") > ckpt.step
    });
    h.get_by_label("Stop").click();
    wait(&mut h, 120, "run stops again", |a| {
        status(a, "long") == Some(RunStatus::Stopped)
    });

    // A run that cannot start (no such model): its error is shown and the
    // app keeps working.
    launch(&mut h, "bad", "/no/such/model", 3);
    wait(&mut h, 120, "bad run ends", |a| {
        a.training
            .run("bad")
            .is_some_and(|r| !matches!(r.overview.status, RunStatus::Running { .. }))
    });
    h.get_by_label_contains("spr train ended with exit code");
    // The trainer's own error, from its stderr, names the model.
    h.get_by_label_contains("error: model folder not found: /no/such/model");
    h.get_by_label("Annotate").click();
    h.step();
    h.get_by_label_contains("scene_002.png").click();
    h.step();
    assert_eq!(h.state().sel.image, Some(1));
}

fn sample(id: &str, iou: f32, pred: Option<Bbox>, image: &str) -> RecSample {
    RecSample {
        id: id.into(),
        image: Some(image.into()),
        expression: Some(format!("object {id}")),
        pred_bbox: pred,
        gt_bbox: Bbox::new(40.0, 40.0, 140.0, 140.0),
        iou,
        output: Some("[..]".into()),
    }
}

fn write_eval(dir: &Path, name: &str, samples: &[RecSample]) {
    let out = dir.join("evals").join(name);
    std::fs::create_dir_all(&out).unwrap();
    let report = RecRunReport {
        v: 1,
        model: "fixture".into(),
        adapter: None,
        data: "rec/finetune_demo_val.json".into(),
        profile: RecProfile::named("tiny").unwrap(),
        report: rec_report(samples),
        skipped: vec![],
        new_tokens: 0,
        duration_s: 1.0,
        time: 1.0,
    };
    std::fs::write(
        out.join("report.json"),
        serde_json::to_string_pretty(&report).unwrap(),
    )
    .unwrap();
    let lines: Vec<String> = samples
        .iter()
        .map(|s| serde_json::to_string(s).unwrap())
        .collect();
    std::fs::write(out.join("samples.jsonl"), lines.join("\n") + "\n").unwrap();
}

#[test]
fn evaluation_fixture_curve_failing_samples_and_two_canvases() {
    let (_tmp, dir) = project();
    let gt = Bbox::new(40.0, 40.0, 140.0, 140.0);
    let near = Some(Bbox::new(42.0, 42.0, 142.0, 142.0));
    let off = Some(Bbox::new(200.0, 150.0, 300.0, 250.0));
    let iou = |b: Option<Bbox>| b.map_or(0.0, |b| b.iou(gt));
    // base: a matches; b, c, e fail at 0.7; tuned fixes c.
    let img = "rec_001.png";
    let base = vec![
        sample("a", iou(near), near, img),
        sample("b", 0.55, None, img),
        sample("c", iou(off), off, img),
        sample("d", 0.7, None, img),
        sample("e", 0.62, None, img),
    ];
    let mut tuned = base.clone();
    tuned[2] = sample("c", iou(near), near, img);
    write_eval(&dir, "base", &base);
    write_eval(&dir, "tuned", &tuned);

    let mut h = harness(dir.clone(), true);
    h.get_by_label("Evaluation").click();
    // Auto-sized table columns settle over the first frames.
    for _ in 0..4 {
        h.step();
    }
    let ev = &h.state().evaluation;
    assert_eq!(ev.sources.len(), 2);
    // The table shows base's curve: 4/5, 3/5, 2/5, 1/5, 1/5 (0.7 inclusive).
    for pct in ["80.0%", "60.0%", "40.0%", "20.0%"] {
        assert!(h.get_all_by_label(pct).count() >= 1, "{pct}");
    }
    // Clicking base's Acc@0.7 (the upper row) lists exactly its failing
    // samples, worst first.
    h.get_all_by_label("40.0%")
        .min_by(|a, b| a.rect().center().y.total_cmp(&b.rect().center().y))
        .unwrap()
        .click();
    h.step();
    h.step();
    for id in ["b", "c", "e"] {
        h.get_by_label_contains(&format!("sample {id} ·"));
    }
    for id in ["a", "d"] {
        assert!(h
            .query_by_label_contains(&format!("sample {id} ·"))
            .is_none());
    }
    let y = |h: &Harness<'static, WorkbenchApp>, id: &str| {
        h.get_by_label_contains(&format!("sample {id} ·"))
            .rect()
            .center()
            .y
    };
    assert!(y(&h, "c") < y(&h, "b") && y(&h, "b") < y(&h, "e"));

    // Against base as the baseline, tuned's changes at 0.7: only c, fixed.
    {
        let ev = &mut h.state_mut().evaluation;
        ev.baseline = Some(0);
        ev.select(1, 2);
    }
    h.step();
    h.get_by_label_contains("fixed · sample c");
    assert!(h.query_by_label_contains("sample b ·").is_none());
    h.get_by_label_contains("fixed · sample c").click();
    let start = Instant::now();
    while h.state().busy() || start.elapsed() < Duration::from_millis(300) {
        h.step();
        std::thread::sleep(Duration::from_millis(10));
    }
    h.step();
    // Two canvases in one frame: tuned's matched prediction (green) on the
    // left, base's missed one (red) on the right, each its own boxes.
    // The pointer out of the way: where a label was clicked depends on
    // how many frames the auto-sized table columns took to settle.
    h.hover_at(egui::Pos2::new(4.0, 850.0));
    h.step();
    let image = h.render().expect("wgpu renders");
    h.snapshot("evaluation_view");
    // Both panes show the same image at the same scale, so the image's own
    // colours cancel: what differs is each pane's boxes.
    let split = h.get_by_label_contains("evals/base: IoU").rect().min.x * h.ctx.pixels_per_point();
    let count = |left: bool, f: &dyn Fn(&image::Rgba<u8>) -> bool| {
        image
            .enumerate_pixels()
            .filter(|(x, y, p)| *y > 300 && ((*x as f32) < split) == left && f(p))
            .count() as i64
    };
    let green = |p: &image::Rgba<u8>| p[1] > 180 && p[0] < 90 && p[2] < 130;
    let red = |p: &image::Rgba<u8>| p[0] > 220 && p[1] < 80 && p[2] < 90;
    let (gl, gr) = (count(true, &green), count(false, &green));
    let (rl, rr) = (count(true, &red), count(false, &red));
    assert!(gl - gr > 100, "green left {gl}, right {gr}");
    assert!(rr - rl > 100, "red left {rl}, right {rr}");
}

#[test]
fn generate_streams_a_regions_candidates_into_the_project() {
    let (_tmp, dir) = project();
    let mut h = harness(dir.clone(), false);
    h.get_by_label_contains("scene_003.png").click();
    wait(&mut h, 30, "image selected", |a| a.sel.region.is_some());
    let q = h.state().sel.region.clone().unwrap();
    let before = h.state().ws.as_ref().unwrap().candidates_of(&q).len();
    h.state_mut().annotate.model = tiny_model();
    h.step();
    h.get_by_label("Generate").click();
    h.step();
    assert!(
        h.state().annotate.generating.is_some(),
        "{}",
        h.state().status
    );
    wait(&mut h, 300, "generation ends", |a| {
        a.annotate.generating.is_none()
    });
    assert!(
        h.state().status.starts_with("generated 8 candidates"),
        "{}",
        h.state().status
    );
    // The demo's [generate]: 4 prompts × 2 samples, by the model, saved.
    let app = h.state();
    let ws = app.ws.as_ref().unwrap();
    let new: Vec<_> = ws.candidates_of(&q)[before..]
        .iter()
        .map(|&c| ws.candidates[c].clone())
        .collect();
    assert_eq!(new.len(), 8);
    assert!(new
        .iter()
        .all(|c| c.generation.is_some() && c.query_id == q));
    assert!(new.iter().all(|c| ws.scores.contains_key(&c.id)));
    let wait_start = Instant::now();
    while app.busy() && wait_start.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(10));
    }
    let on_disk = std::fs::read_to_string(dir.join("candidates.jsonl")).unwrap();
    assert!(new.iter().all(|c| on_disk.contains(&c.id)));
    assert!(!dir.join(spr_workbench::app::annotate::GUI_OUT).exists());
    // One undo takes the last generated candidate back out.
    assert!(app.ws.as_ref().unwrap().can_undo());
}

#[test]
fn evaluate_from_the_window_adds_its_curve() {
    let (_tmp, dir) = project();
    let mut h = harness(dir.clone(), false);
    h.get_by_label("Evaluation").click();
    h.step();
    {
        let f = h.state_mut().evaluation.form.as_mut().unwrap();
        f.name = "tiny-base".into();
        f.model = tiny_model();
        f.profile = "tiny".into();
        f.limit = 6;
    }
    h.get_by_label_contains("Evaluate a model").click();
    h.step();
    h.get_by_label("Evaluate").click();
    h.step();
    assert!(
        h.state().evaluation.job.is_some(),
        "{}",
        h.state().evaluation.message
    );
    wait(&mut h, 300, "evaluation ends", |a| {
        a.evaluation.job.is_none()
    });
    let ev = &h.state().evaluation;
    assert!(ev.message.ends_with("finished"), "{}", ev.message);
    let s = ev
        .sources
        .iter()
        .find(|s| s.label == "evals/tiny-base")
        .expect("its curve is listed");
    assert_eq!(s.samples, 6);
    // Listed on the left, in the legend and as a table row.
    assert!(h.get_all_by_label("evals/tiny-base").count() >= 3);
}
