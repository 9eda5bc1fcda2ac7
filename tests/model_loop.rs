//! The model loop on the bundled demo with the tiny model: `spr generate`
//! writes candidates (crop frame, metadata, resume, shards, Ctrl-C),
//! `spr eval` measures REC accuracy on the demo REC set, `spr train
//! --eval-every` logs evaluations, and the run folder's status reads back
//! as finished, stopped or crashed. Bad input is named and the rest runs.

mod common;
use common::{copy_dir, demo_dir, spr};

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use serde_json::Value;
use spr_workbench::core::project::{self, files, CandidateRecord, Frame, Project};
use spr_workbench::core::prompts::GenerateConfig;
use spr_workbench::core::rec::data as rec_data;
use spr_workbench::core::rec::profile::RecProfile;
use spr_workbench::core::runs::config::EvalSettings;
use spr_workbench::core::runs::{Event, RunDir, RunStatus};
use spr_workbench::infer::candidates::{self, GenerateOptions, Shard};
use spr_workbench::infer::rec::{evaluate, RecEvalOptions};
use spr_workbench::infer::{load_policy, InferError};
use spr_workbench::train::trainer::{self, TrainConfig};

const MODEL: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/assets/tiny-model");

fn rec_set() -> PathBuf {
    demo_dir().join("rec/finetune_demo_val.json")
}

fn demo_copy(tmp: &Path) -> Project {
    let root = tmp.join("demo");
    copy_dir(&demo_dir(), &root);
    Project::open(&root).unwrap()
}

fn options(limit: usize) -> GenerateOptions {
    GenerateOptions {
        model: MODEL.into(),
        adapter: None,
        config: GenerateConfig {
            prompts: vec!["describe".into(), "objects".into()],
            samples: 2,
            temperature: 0.8,
            top_p: 0.95,
            seed: 3,
            max_new_tokens: 40,
            templates: vec![],
        },
        batch: 8,
        shard: None,
        limit: Some(limit),
        queries: None,
        out: None,
    }
}

fn generated(path: &Path) -> Vec<CandidateRecord> {
    let (records, errors) = project::read_jsonl::<CandidateRecord>(path).unwrap();
    assert!(errors.is_empty(), "{errors:?}");
    records
        .into_iter()
        .filter(|c| c.generation.is_some())
        .collect()
}

#[test]
fn generate_appends_crop_frame_candidates_resumes_and_merges_shards() {
    let tmp = tempfile::tempdir().unwrap();
    let p = demo_copy(tmp.path());
    let before = project::read_jsonl::<CandidateRecord>(&p.path(files::CANDIDATES))
        .unwrap()
        .0
        .len();
    let never = AtomicBool::new(false);
    let s = candidates::generate(&p, &options(6), &mut |_| {}, &never).unwrap();
    // 6 queries × 2 prompts × 2 samples.
    assert_eq!(s.written, 24);
    assert!(s.failed.is_empty(), "{:?}", s.failed);
    assert!(s.tokens > 0);
    let all = project::read_jsonl::<CandidateRecord>(&p.path(files::CANDIDATES))
        .unwrap()
        .0;
    assert_eq!(all.len(), before + 24, "appended, nothing lost");
    let gen = generated(&p.path(files::CANDIDATES));
    let regions: Vec<Value> = fs::read_to_string(p.path(files::REGIONS))
        .unwrap()
        .lines()
        .take(6)
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    for (i, c) in gen.iter().enumerate() {
        let g = c.generation.as_ref().unwrap();
        assert_eq!(c.frame, Frame::Crop);
        assert_eq!(c.source, "tiny-model");
        assert_eq!(c.query_id, regions[i / 4]["id"].as_str().unwrap());
        assert_eq!(g.prompt_id, ["describe", "objects"][(i / 2) % 2]);
        assert_eq!(g.sample, i % 2);
        assert_eq!(g.model, MODEL);
        assert_eq!(g.temperature, 0.8);
        assert_eq!(g.top_p, Some(0.95));
        assert!(g.seed.is_some());
        assert!(!c.text.is_empty());
    }
    // The "objects" prompt names the region's objects.
    assert!(gen[2]
        .prompt
        .as_deref()
        .unwrap()
        .contains("This image region contains a"));
    // Samples of one prompt differ (they have their own seeds).
    assert!(gen.chunks(2).any(|p| p[0].text != p[1].text));

    // Scoring maps the crop-frame boxes into the image.
    let out = spr(&["score", "--project", p.root.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // A second run skips everything already there.
    let again = candidates::generate(&p, &options(6), &mut |_| {}, &never).unwrap();
    assert_eq!((again.written, again.already_present), (0, 24));
    // A longer run only adds the new queries.
    let more = candidates::generate(&p, &options(8), &mut |_| {}, &never).unwrap();
    assert_eq!((more.written, more.already_present), (8, 24));
    let unsharded = fs::read_to_string(p.path(files::CANDIDATES)).unwrap();

    // Three shards on a fresh copy, merged, give the very same file.
    let tmp2 = tempfile::tempdir().unwrap();
    let q = demo_copy(tmp2.path());
    for i in 0..3 {
        let mut o = options(8);
        o.shard = Some(Shard { index: i, count: 3 });
        let s = candidates::generate(&q, &o, &mut |_| {}, &never).unwrap();
        assert!(s.out.ends_with(format!("candidates.shard-{i}-of-3.jsonl")));
    }
    // Not all shards: refused.
    let shards = candidates::find_shards(&q).unwrap();
    assert_eq!(shards.len(), 3);
    let err = candidates::merge_shards(&q, &shards[..2], false).unwrap_err();
    assert!(err.to_string().contains("2/3"), "{err}");
    // The CLI merges them (and twice is the same as once).
    let root = q.root.to_str().unwrap();
    for _ in 0..2 {
        let out = spr(&["merge-shards", "--project", root]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    assert_eq!(
        fs::read_to_string(q.path(files::CANDIDATES)).unwrap(),
        unsharded
    );
}

#[test]
fn ctrl_c_mid_generation_leaves_valid_jsonl_and_the_rerun_completes() {
    let tmp = tempfile::tempdir().unwrap();
    let p = demo_copy(tmp.path());
    let stop = AtomicBool::new(false);
    // Stop after the first block (2 queries of 4 sequences fill batch 8).
    let mut blocks = 0;
    let s = candidates::generate(
        &p,
        &options(6),
        &mut |_| {
            blocks += 1;
            if blocks == 2 {
                stop.store(true, Ordering::SeqCst);
            }
        },
        &stop,
    )
    .unwrap();
    assert!(s.interrupted);
    assert_eq!(s.written, 8);
    assert_eq!(generated(&p.path(files::CANDIDATES)).len(), 8);
    let rest = candidates::generate(&p, &options(6), &mut |_| {}, &AtomicBool::new(false)).unwrap();
    assert_eq!((rest.written, rest.already_present), (16, 8));
}

#[test]
fn generate_names_a_missing_image_and_generates_the_rest() {
    let tmp = tempfile::tempdir().unwrap();
    let p = demo_copy(tmp.path());
    // Queries 0 and 1 are on scene_001.png.
    fs::remove_file(p.image_root().join("scene_001.png")).unwrap();
    let s = candidates::generate(&p, &options(4), &mut |_| {}, &AtomicBool::new(false)).unwrap();
    assert_eq!(s.failed.len(), 2, "{:?}", s.failed);
    assert!(s.failed[0].contains("scene_001.png"), "{:?}", s.failed);
    assert_eq!(s.written, 8);
}

#[test]
fn an_adapter_that_does_not_fit_is_refused_before_any_work() {
    let adapter = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tiny-llava/adapter");
    let err = load_policy(MODEL, Some(&adapter)).unwrap_err();
    assert!(matches!(err, InferError::Model(_)), "{err}");
    let msg = err.to_string();
    assert!(msg.contains("adapter") && msg.contains("lora_A"), "{msg}");
    // Through the CLI, nothing is written.
    let tmp = tempfile::tempdir().unwrap();
    let p = demo_copy(tmp.path());
    let before = fs::read(p.path(files::CANDIDATES)).unwrap();
    let out = spr(&[
        "generate",
        "--project",
        p.root.to_str().unwrap(),
        "--model",
        MODEL,
        "--adapter",
        adapter.to_str().unwrap(),
    ]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("lora_A"));
    assert_eq!(fs::read(p.path(files::CANDIDATES)).unwrap(), before);
}

#[test]
fn spr_eval_prints_all_five_accuracies_and_writes_its_files() {
    let tmp = tempfile::tempdir().unwrap();
    let out_dir = tmp.path().join("eval");
    let out = spr(&[
        "eval",
        "--model",
        MODEL,
        "--data",
        rec_set().to_str().unwrap(),
        "--profile",
        "tiny",
        "--limit",
        "6",
        "--max-new-tokens",
        "24",
        "--out",
        out_dir.to_str().unwrap(),
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for t in ["0.5", "0.6", "0.7", "0.8", "0.9"] {
        assert!(stdout.contains(&format!("Acc@{t}")), "{stdout}");
    }
    assert!(
        stdout.contains("mean IoU") && stdout.contains("parse rate"),
        "{stdout}"
    );
    let report: Value =
        serde_json::from_slice(&fs::read(out_dir.join("report.json")).unwrap()).unwrap();
    assert_eq!(report["report"]["samples"], 6);
    assert_eq!(report["profile"]["name"], "tiny");
    let samples: Vec<Value> = fs::read_to_string(out_dir.join("samples.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(samples.len(), 6);
    for s in &samples {
        assert!(s["expression"].as_str().unwrap().starts_with("the "));
        assert!(s["output"].is_string());
        assert!(s["gt_bbox"].is_array());
        let iou = s["iou"].as_f64().unwrap();
        assert!((0.0..=1.0).contains(&iou));
        if s["pred_bbox"].is_null() {
            assert_eq!(iou, 0.0, "an answer without a box is a miss");
        }
    }
}

#[test]
fn eval_skips_a_corrupt_image_and_counts_boxless_answers_as_misses() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("rec");
    copy_dir(&demo_dir().join("rec"), &dir);
    let set_path = dir.join("finetune_demo_val.json");
    let set = rec_data::load(&set_path, None).unwrap();
    let first = set.items[0].image.clone();
    fs::write(
        dir.join("images").join(&first),
        b"\x89PNG\r\n\x1a\nnot really",
    )
    .unwrap();
    let set = rec_data::load(&set_path, None).unwrap();
    let on_first = set
        .items
        .iter()
        .take(8)
        .filter(|i| i.image == first)
        .count();
    assert!(on_first >= 1);
    let (bundle, _) = load_policy(MODEL, None).unwrap();
    // A prompt the model was never trained on: its answers may hold no box.
    let mut profile = RecProfile::named("tiny").unwrap();
    profile.prompt = "Say something about {expression}.".into();
    let opts = RecEvalOptions {
        profile,
        max_new_tokens: 16,
        batch: 4,
        limit: Some(8),
    };
    let r = evaluate(
        &bundle,
        &set,
        &opts,
        &mut |_, _| {},
        &AtomicBool::new(false),
    )
    .unwrap();
    assert_eq!(r.skipped.len(), on_first, "{:?}", r.skipped);
    assert!(r.skipped[0].contains(&first), "{:?}", r.skipped);
    assert_eq!(r.samples.len(), 8 - on_first);
    let boxless = r.samples.iter().filter(|s| s.pred_bbox.is_none()).count();
    assert_eq!(r.report.no_box, boxless);
    assert!((r.report.parse_rate - (1.0 - boxless as f32 / r.samples.len() as f32)).abs() < 1e-6);
    for s in r.samples.iter().filter(|s| s.pred_bbox.is_none()) {
        assert_eq!(s.iou, 0.0);
    }
}

fn tiny_dpo(steps: u64) -> TrainConfig {
    let mut cfg = TrainConfig::new(MODEL, demo_dir());
    cfg.lora_r = 4;
    cfg.lora_alpha = 8.0;
    cfg.lr = 1e-3;
    cfg.total_steps = steps;
    cfg.batch_size = 2;
    cfg.max_len = 400;
    cfg.checkpoint_every = 0;
    cfg
}

#[test]
fn eval_every_logs_rec_rows_and_the_run_contract_reads_back() {
    let tmp = tempfile::tempdir().unwrap();
    let run = tmp.path().join("dpo");
    let mut cfg = tiny_dpo(3);
    cfg.eval = Some(EvalSettings {
        data: rec_set(),
        image_root: None,
        every: 2,
        profile: RecProfile::named("tiny").unwrap(),
        limit: Some(4),
        max_new_tokens: 20,
        batch: 4,
    });
    let never = AtomicBool::new(false);
    trainer::train(&cfg, &run, |_| {}, &never).unwrap();
    let dir = RunDir::new(&run);
    assert_eq!(dir.status().unwrap(), RunStatus::Finished);
    let (events, errors) = dir.read_events().unwrap();
    assert!(errors.is_empty(), "{errors:?}");
    let evals: Vec<_> = events
        .iter()
        .filter_map(|e| match e {
            Event::Eval(e) => Some(e),
            _ => None,
        })
        .collect();
    // Every 2 steps and at the end.
    assert_eq!(evals.iter().map(|e| e.step).collect::<Vec<_>>(), [2, 3]);
    for e in &evals {
        assert_eq!(e.samples, 4);
        let curve = e.curve();
        assert!(curve.windows(2).all(|w| w[0].1 >= w[1].1), "{curve:?}");
        let samples = fs::read_to_string(run.join(&e.file)).unwrap();
        assert_eq!(samples.lines().count(), 4);
    }
    let line = fs::read_to_string(run.join("events.jsonl")).unwrap();
    assert!(line.contains("\"eval/acc@0.5\"") && line.contains("\"eval/parse_rate\""));
    assert_eq!(
        events
            .iter()
            .filter(|e| matches!(e, Event::Step(_)))
            .count(),
        3
    );

    // A stopped run: a checkpoint, status stopped, resumable to finished.
    let stopped = tmp.path().join("stopped");
    let s = trainer::train(&tiny_dpo(3), &stopped, |_| {}, &AtomicBool::new(true)).unwrap();
    assert!(s.stopped);
    let dir = RunDir::new(&stopped);
    assert_eq!(dir.status().unwrap(), RunStatus::Stopped);
    assert_eq!(dir.latest_checkpoint().unwrap().unwrap().step, 0);
    trainer::resume(&stopped, |_| {}, &never).unwrap();
    assert_eq!(dir.status().unwrap(), RunStatus::Finished);

    // A crashed run: the error is in the status.
    let crashed = tmp.path().join("crashed");
    let mut bad = tiny_dpo(2);
    bad.model = tmp.path().join("no-such-model").display().to_string();
    assert!(trainer::train(&bad, &crashed, |_| {}, &never).is_err());
    match RunDir::new(&crashed).status().unwrap() {
        RunStatus::Crashed { message } => assert!(message.contains("no-such-model"), "{message}"),
        other => panic!("{other:?}"),
    }

    // `spr runs` reads the same contract.
    let out = spr(&["runs", tmp.path().to_str().unwrap()]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    let line = |name: &str| {
        text.lines()
            .find(|l| l.starts_with(name))
            .unwrap_or_else(|| panic!("{name} missing: {text}"))
            .to_string()
    };
    assert!(
        line("dpo ").contains("finished") && line("dpo ").contains("3/3"),
        "{text}"
    );
    assert!(line("stopped ").contains("finished"), "{text}");
    assert!(
        line("crashed ").contains("crashed") && text.contains("no-such-model"),
        "{text}"
    );
}
