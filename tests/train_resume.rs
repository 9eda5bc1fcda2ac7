//! The trainer on the tiny LLaVA fixture: a run stopped and resumed gives
//! the same per-step losses as a straight run; `events.jsonl` uses TRL's
//! metric names; DPO at a high learning rate widens the reward margin.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use spr_workbench::train::trainer::{self, files, TrainConfig};

const FIXTURE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/tiny-llava");

fn trl_line(image: &str, prompt: &str, chosen: &str, rejected: &str) -> String {
    serde_json::json!({
        "images": [image],
        "prompt": [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": prompt}]}],
        "chosen": [{"role": "assistant", "content": [{"type": "text", "text": chosen}]}],
        "rejected": [{"role": "assistant", "content": [{"type": "text", "text": rejected}]}],
    })
    .to_string()
}

/// A TRL JSONL of four hand-made pairs on the fixture's image.
fn write_data(dir: &Path) -> PathBuf {
    std::fs::copy(Path::new(FIXTURE).join("image0.png"), dir.join("img.png")).unwrap();
    let lines = [
        trl_line(
            "img.png",
            "Describe the region.",
            "a red box [0.1, 0.2, 0.5, 0.6]",
            "a blue cat",
        ),
        trl_line(
            "img.png",
            "Where is the dog?",
            "the dog [0.3, 0.3, 0.9, 0.8]",
            "no dog here",
        ),
        trl_line(
            "img.png",
            "What is on the left?",
            "a tree on the left",
            "a car [0.0, 0.0, 1.0, 1.0]",
        ),
        trl_line(
            "img.png",
            "Count the objects.",
            "three objects",
            "many things",
        ),
    ];
    let path = dir.join("pairs.jsonl");
    std::fs::write(&path, lines.join("\n") + "\n").unwrap();
    path
}

fn config(data: &Path, steps: u64, lr: f64) -> TrainConfig {
    let mut cfg = TrainConfig::new(FIXTURE, data);
    cfg.lora_r = 4;
    cfg.lora_alpha = 8.0;
    cfg.lr = lr;
    cfg.total_steps = steps;
    cfg.batch_size = 2;
    cfg.checkpoint_every = 0;
    cfg.max_len = 96;
    cfg.seed = 7;
    cfg
}

/// The step lines of a run's events (start and end lines left out).
fn events(run: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(run.join(files::EVENTS))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|e| e.get("event").is_none())
        .collect()
}

fn column(ev: &[serde_json::Value], name: &str) -> Vec<f64> {
    ev.iter().map(|e| e[name].as_f64().unwrap()).collect()
}

#[test]
fn stopped_and_resumed_run_matches_straight_run() {
    const N: u64 = 2;
    let tmp = tempfile::tempdir().unwrap();
    let data = write_data(tmp.path());
    let cfg = config(&data, 2 * N, 1e-3);
    let never = AtomicBool::new(false);

    let straight = tmp.path().join("straight");
    let a = trainer::train(&cfg, &straight, |_| {}, &never).unwrap();
    assert_eq!(a.steps, 2 * N);
    assert!(!a.stopped);
    assert!(straight.join("adapter/adapter_config.json").is_file());
    assert!(straight.join(files::REF_LOGPS).is_file());

    let split = tmp.path().join("split");
    let stop = AtomicBool::new(false);
    let b1 = trainer::train(
        &cfg,
        &split,
        |log| {
            if log.step == N {
                stop.store(true, Ordering::SeqCst);
            }
        },
        &stop,
    )
    .unwrap();
    assert!(b1.stopped);
    assert_eq!(b1.steps, N);
    assert!(split
        .join(format!("checkpoint-{N}/trainer_state.json"))
        .is_file());
    stop.store(false, Ordering::SeqCst);
    let b2 = trainer::resume(&split, |_| {}, &stop).unwrap();
    assert_eq!(b2.steps, 2 * N);

    let straight_losses = column(&events(&straight), "loss");
    let split_losses = column(&events(&split), "loss");
    eprintln!("straight losses: {straight_losses:?}");
    eprintln!("split losses:    {split_losses:?}");
    assert_eq!(straight_losses.len(), (2 * N) as usize);
    assert_eq!(split_losses.len(), (2 * N) as usize);
    for (x, y) in straight_losses.iter().zip(&split_losses) {
        assert!(
            (x - y).abs() <= 1e-6,
            "{straight_losses:?} vs {split_losses:?}"
        );
    }
    let steps: Vec<u64> = events(&split)
        .iter()
        .map(|e| e["step"].as_u64().unwrap())
        .collect();
    assert_eq!(steps, (1..=2 * N).collect::<Vec<_>>());
    let mut all = b1.losses.clone();
    all.extend(&b2.losses);
    assert_eq!(all, a.losses);
}

#[test]
fn dpo_events_have_trl_names_and_margins_grow() {
    let tmp = tempfile::tempdir().unwrap();
    let data = write_data(tmp.path());
    let cfg = config(&data, 6, 2e-2);
    let run = tmp.path().join("dpo");
    let never = AtomicBool::new(false);
    trainer::train(&cfg, &run, |_| {}, &never).unwrap();
    let ev = events(&run);
    assert_eq!(ev.len(), 6);
    for name in [
        "step",
        "epoch",
        "loss",
        "rewards/chosen",
        "rewards/rejected",
        "rewards/margins",
        "rewards/accuracies",
        "logps/chosen",
        "logps/rejected",
        "lr",
        "grad_norm",
        "tokens_per_s",
    ] {
        assert!(ev[0].get(name).is_some(), "missing {name} in {}", ev[0]);
    }
    let margins = column(&ev, "rewards/margins");
    let losses = column(&ev, "loss");
    eprintln!("margins: {margins:?}\nlosses: {losses:?}");
    assert!(
        margins[5] > margins[0],
        "margins did not grow: {margins:?} (losses {losses:?})"
    );
    let cfg_back: TrainConfig =
        serde_json::from_slice(&std::fs::read(run.join(files::CONFIG)).unwrap()).unwrap();
    assert_eq!(cfg_back, cfg);
}

#[test]
fn resume_without_checkpoint_is_a_clear_error() {
    let tmp = tempfile::tempdir().unwrap();
    let data = write_data(tmp.path());
    let cfg = config(&data, 1, 1e-3);
    let run = tmp.path().join("r");
    let never = AtomicBool::new(false);
    trainer::train(&cfg, &run, |_| {}, &never).unwrap();
    let err = trainer::resume(&run, |_| {}, &never).unwrap_err();
    assert!(err.to_string().contains("no checkpoint"), "{err}");
}

#[test]
fn gradient_accumulation_matches_a_larger_batch() {
    let tmp = tempfile::tempdir().unwrap();
    let data = write_data(tmp.path());
    let never = AtomicBool::new(false);
    let mut big = config(&data, 2, 1e-2);
    big.batch_size = 2;
    let mut acc = big.clone();
    acc.batch_size = 1;
    acc.grad_accum = 2;
    let a = trainer::train(&big, &tmp.path().join("big"), |_| {}, &never).unwrap();
    let b = trainer::train(&acc, &tmp.path().join("acc"), |_| {}, &never).unwrap();
    eprintln!("batch 2: {:?}\naccum 2: {:?}", a.losses, b.losses);
    for (x, y) in a.losses.iter().zip(&b.losses) {
        assert!((x - y).abs() < 1e-4, "{:?} vs {:?}", a.losses, b.losses);
    }
}

#[test]
fn empty_data_is_a_clear_error() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("bad.jsonl");
    std::fs::write(&data, "{not json\n").unwrap();
    let never = AtomicBool::new(false);
    let err = trainer::train(
        &config(&data, 1, 1e-3),
        &tmp.path().join("r"),
        |_| {},
        &never,
    )
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("bad.jsonl") && err.contains("no usable"),
        "{err}"
    );
}

/// `spr train` checkpoints and exits cleanly on SIGTERM.
#[cfg(unix)]
#[test]
fn cli_sigterm_saves_a_checkpoint() {
    let tmp = tempfile::tempdir().unwrap();
    let data = write_data(tmp.path());
    let run = tmp.path().join("run");
    let child = std::process::Command::new(env!("CARGO_BIN_EXE_spr"))
        .args(["train", "--model", FIXTURE, "--data"])
        .arg(&data)
        .arg("--run")
        .arg(&run)
        .args(["--steps", "1000000", "--lora-r", "2", "--lora-alpha", "4"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let events = run.join(files::EVENTS);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    while !std::fs::read_to_string(&events)
        .unwrap_or_default()
        .contains("\"loss\"")
    {
        assert!(std::time::Instant::now() < deadline, "no step logged");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let killed = std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("stopped at step"), "{stdout}");
    let ckpt = trainer::latest_checkpoint(&run).unwrap().unwrap();
    assert!(ckpt.join("adapter/adapter_model.safetensors").is_file());
    assert!(ckpt.join("optimizer.safetensors").is_file());
}

/// `TrainConfig.data` may be an SPR project folder: its `pairs.jsonl`
/// (cropped images, the project's prompt, SPR reward gaps) trains fDPO
/// with the grounded segmenter. No annotation file is needed.
/// A project folder with three exported pairs and an fDPO config (grounded
/// segmenter) on it.
fn fdpo_project(dir: &Path) -> TrainConfig {
    use spr_workbench::core::project::{files as pfiles, Project, ProjectConfig};
    use spr_workbench::core::segment::SegmenterConfig;
    use spr_workbench::train::objectives::Objective;

    let root = dir.join("proj");
    std::fs::create_dir_all(root.join("images")).unwrap();
    std::fs::copy(
        Path::new(FIXTURE).join("image0.png"),
        root.join("images/img.png"),
    )
    .unwrap();
    let project_config: ProjectConfig = serde_json::from_value(serde_json::json!({
        "format_version": 1,
        "name": "tiny",
        "dataset": {"annotations": "annotations.json", "image_root": "images"},
        "export": {"prompt": "Describe the region with boxes."},
    }))
    .unwrap();
    let project = Project::create(&root, project_config).unwrap();
    assert!(!project.annotations_path().exists());
    let pair = |id: &str, crop: [f32; 4], chosen: &str, rejected: &str, sem: [f32; 2]| {
        serde_json::json!({
            "v": 1,
            "query_id": id,
            "file_name": "img.png",
            "crop": crop,
            "lambda": 0.8,
            "chosen_id": format!("{id}-c"),
            "rejected_id": format!("{id}-r"),
            "chosen": chosen,
            "chosen_original": chosen,
            "rejected": rejected,
            "chosen_scores": {"semantic": sem[0], "localization": 0.9},
            "rejected_scores": {"semantic": sem[1], "localization": 0.2},
            "chosen_refined_localization": 0.95,
            "semantic_missing": false,
            "format": "ferret",
        })
        .to_string()
    };
    let lines = [
        pair(
            "q0",
            [0.0, 0.0, 80.0, 64.0],
            "a red box [100, 200, 500, 600] next to a tree [600, 100, 900, 800]",
            "a blue cat [0, 0, 999, 999]",
            [0.7, 0.3],
        ),
        pair(
            "q1",
            [10.0, 5.0, 70.0, 60.0],
            "the dog [300, 300, 900, 800]",
            "no dog here",
            [0.6, 0.5],
        ),
        pair(
            "q2",
            [20.0, 10.0, 60.0, 50.0],
            "a car [0, 0, 500, 500] on the left",
            "a car [500, 500, 999, 999]",
            [0.4, 0.4],
        ),
    ];
    std::fs::write(root.join(pfiles::PAIRS), lines.join("\n") + "\n").unwrap();

    let mut cfg = config(&root, 2, 1e-3);
    cfg.max_len = 160;
    cfg.objective.objective = Objective::Fdpo;
    cfg.segmenter = Some(SegmenterConfig::Grounded {
        format: project.config.model.format,
    });
    cfg
}

#[test]
fn fdpo_trains_on_a_project_folder() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = fdpo_project(tmp.path());
    let run = tmp.path().join("run");
    let never = AtomicBool::new(false);
    let summary = trainer::train(&cfg, &run, |_| {}, &never).unwrap();
    assert!(summary.skipped.is_empty(), "{:?}", summary.skipped);
    assert!(run.join(files::EVENTS).exists());
    let ev = events(&run);
    assert_eq!(ev.len(), 2);
    for loss in column(&ev, "loss") {
        assert!(loss.is_finite(), "{loss}");
    }
}

/// Rows split over threads (the trainer's row-parallel steps) give the
/// steps one thread gives, up to float summation order: DPO with LoRA,
/// fDPO with segments on a project, and supervised full fine-tuning (whose
/// projector runs inside each part's graph). Each run takes three steps at
/// a high learning rate, so a wrong gradient in step 1 shows in the losses
/// of steps 2 and 3.
#[test]
fn row_parallel_steps_match_one_thread() {
    use spr_workbench::core::runs::RunDir;
    use spr_workbench::train::objectives::{Objective, ObjectiveConfig};
    use spr_workbench::train::trainer::{Trainer, Tune};

    let tmp = tempfile::tempdir().unwrap();
    let data = write_data(tmp.path());
    let mut dpo = config(&data, 3, 1e-2);
    dpo.batch_size = 3;
    let mut fdpo = fdpo_project(tmp.path());
    fdpo.total_steps = 3;
    fdpo.lr = 1e-2;
    let mut sft = config(&write_sft_data(tmp.path()), 3, 3e-3);
    sft.objective = ObjectiveConfig::new(Objective::Sft);
    sft.tune = Tune::Full;

    for (name, cfg) in [("dpo", dpo), ("fdpo", fdpo), ("sft", sft)] {
        let steps = |workers: usize| -> Vec<[f64; 3]> {
            let dir = tmp.path().join(format!("{name}-{workers}"));
            std::fs::create_dir_all(&dir).unwrap();
            let mut t = Trainer::setup(&cfg, &RunDir::new(&dir), None).unwrap();
            t.set_workers(workers);
            (0..3)
                .map(|_| {
                    let log = t.step().unwrap();
                    [log.metrics.loss, log.grad_norm, log.metrics.logps_chosen]
                })
                .collect()
        };
        let one = steps(1);
        for workers in [2, 3] {
            let many = steps(workers);
            eprintln!("{name}: 1 thread {one:?}\n{name}: {workers} threads {many:?}");
            for (a, b) in one.iter().flatten().zip(many.iter().flatten()) {
                assert!(
                    (a - b).abs() <= 1e-4 * (1.0 + a.abs()),
                    "{name}, {workers} threads: {one:?} vs {many:?}"
                );
            }
        }
        // The runs moved: a test of equal constants would prove nothing.
        assert!((one[0][0] - one[2][0]).abs() > 1e-4, "{name}: {one:?}");
    }
}

fn sft_line(image: &str, prompt: &str, completion: &str) -> String {
    serde_json::json!({
        "images": [image],
        "prompt": [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": prompt}]}],
        "completion": [{"role": "assistant", "content": [{"type": "text", "text": completion}]}],
    })
    .to_string()
}

/// A prompt–completion JSONL of three rows on `dir/img.png` (which the
/// caller provides).
fn write_sft_data(dir: &Path) -> PathBuf {
    let rows = [
        sft_line(
            "img.png",
            "Describe the region.",
            "a red box [0.1, 0.2, 0.5, 0.6]",
        ),
        sft_line(
            "img.png",
            "Where is the dog?",
            "the dog [0.3, 0.3, 0.9, 0.8]",
        ),
        sft_line("img.png", "What is on the left?", "a tree on the left"),
    ];
    let data = dir.join("sft.jsonl");
    std::fs::write(&data, rows.join("\n") + "\n").unwrap();
    data
}

/// Supervised full fine-tuning (how the tiny demo model is made): the loss
/// falls, `events.jsonl` carries only the supervised metrics, a stopped and
/// resumed run matches a straight one, the run ends with a model folder
/// that loads and scores the data better than the start, and a DPO run on
/// prompt–completion rows refuses them by name.
#[test]
fn sft_full_finetune_resumes_exactly_and_writes_a_loadable_model() {
    use spr_workbench::model::LlavaBundle;
    use spr_workbench::train::objectives::{Objective, ObjectiveConfig};
    use spr_workbench::train::trainer::Tune;

    let tmp = tempfile::tempdir().unwrap();
    std::fs::copy(
        Path::new(FIXTURE).join("image0.png"),
        tmp.path().join("img.png"),
    )
    .unwrap();
    let data = write_sft_data(tmp.path());
    let mut cfg = config(&data, 6, 3e-3);
    cfg.objective = ObjectiveConfig::new(Objective::Sft);
    cfg.tune = Tune::Full;
    let never = AtomicBool::new(false);

    let straight = tmp.path().join("straight");
    let a = trainer::train(&cfg, &straight, |_| {}, &never).unwrap();
    assert_eq!(a.examples, 3);
    let model_dir = straight.join(files::MODEL);
    assert_eq!(a.output.as_deref(), Some(model_dir.as_path()));
    assert!(
        !straight.join(files::REF_LOGPS).exists(),
        "sft needs no reference"
    );
    let ev = events(&straight);
    let keys: Vec<&String> = ev[0].as_object().unwrap().keys().collect();
    assert!(ev[0].get("rewards/margins").is_none(), "keys: {keys:?}");
    let losses = column(&ev, "loss");
    eprintln!("sft losses: {losses:?}");
    assert!(losses[5] < 0.8 * losses[0], "loss did not fall: {losses:?}");

    let split = tmp.path().join("split");
    let stop = AtomicBool::new(false);
    trainer::train(
        &cfg,
        &split,
        |log| {
            if log.step == 3 {
                stop.store(true, Ordering::SeqCst);
            }
        },
        &stop,
    )
    .unwrap();
    assert!(split
        .join("checkpoint-3")
        .join(files::CKPT_WEIGHTS)
        .is_file());
    stop.store(false, Ordering::SeqCst);
    trainer::resume(&split, |_| {}, &stop).unwrap();
    assert_eq!(column(&events(&split), "loss"), losses);

    // The model folder loads with the tokenizer and processor files, and
    // its weights are the trained ones (not the fixture's).
    let bundle = LlavaBundle::load(model_dir.to_str().unwrap(), &candle_core::Device::Cpu).unwrap();
    let base = LlavaBundle::load(FIXTURE, &candle_core::Device::Cpu).unwrap();
    assert_eq!(bundle.tokenizer.vocab_size(), base.tokenizer.vocab_size());
    let again = tmp.path().join("again");
    let mut cfg2 = cfg.clone();
    cfg2.model = model_dir.display().to_string();
    cfg2.lr = 1e-12;
    cfg2.total_steps = 1;
    trainer::train(&cfg2, &again, |_| {}, &never).unwrap();
    let first_again = column(&events(&again), "loss")[0];
    assert!(first_again < losses[0], "{first_again} vs {}", losses[0]);

    let mut dpo = config(&data, 1, 1e-3);
    dpo.tune = Tune::Full;
    let err = trainer::train(&dpo, &tmp.path().join("dpo"), |_| {}, &never).unwrap_err();
    assert!(err.to_string().contains("no rejected response"), "{err}");
}

#[test]
fn full_vision_trains_the_tower_and_full_does_not() {
    use spr_workbench::train::objectives::{Objective, ObjectiveConfig};
    use spr_workbench::train::trainer::Tune;

    let tmp = tempfile::tempdir().unwrap();
    let data = one_sft_row(tmp.path());
    let tower_weight = |dir: &Path| {
        weight_values(
            dir,
            "vision_tower.",
            "encoder.layers.0.self_attn.q_proj.weight",
        )
    };
    let base = tower_weight(Path::new(FIXTURE));
    let never = AtomicBool::new(false);
    let mut moved = Vec::new();
    for tune in [Tune::Full, Tune::FullVision] {
        let mut cfg = config(&data, 3, 3e-3);
        cfg.objective = ObjectiveConfig::new(Objective::Sft);
        cfg.tune = tune;
        let run = tmp.path().join(format!("{tune:?}"));
        trainer::train(&cfg, &run, |_| {}, &never).unwrap();
        moved.push(max_change(&tower_weight(&run.join(files::MODEL)), &base));
    }
    assert_eq!(moved[0], 0.0, "full fine-tuning left the tower frozen");
    assert!(moved[1] > 1e-4, "full-vision moved the tower: {moved:?}");
}

/// Writes one supervised row on the fixture's image into `dir`; returns
/// the JSONL's path.
fn one_sft_row(dir: &Path) -> PathBuf {
    std::fs::copy(Path::new(FIXTURE).join("image0.png"), dir.join("img.png")).unwrap();
    let data = dir.join("sft.jsonl");
    std::fs::write(
        &data,
        sft_line(
            "img.png",
            "Where is the dog?",
            "the dog [0.3, 0.3, 0.9, 0.8]",
        ) + "\n",
    )
    .unwrap();
    data
}

/// The values of the first tensor of a model folder (any layout) whose
/// name starts with `starts` and ends with `ends`.
fn weight_values(dir: &Path, starts: &str, ends: &str) -> Vec<f32> {
    let file = dir.join("model.safetensors");
    let tensors = candle_core::safetensors::load(&file, &candle_core::Device::Cpu).unwrap();
    let (_, t) = tensors
        .iter()
        .find(|(k, _)| k.starts_with(starts) && k.ends_with(ends))
        .unwrap();
    t.flatten_all().unwrap().to_vec1().unwrap()
}

fn max_change(after: &[f32], before: &[f32]) -> f32 {
    after
        .iter()
        .zip(before)
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max)
}

#[test]
fn freeze_keeps_the_named_tensors_and_refuses_a_prefix_that_names_none() {
    use spr_workbench::train::objectives::{Objective, ObjectiveConfig};
    use spr_workbench::train::trainer::Tune;

    let tmp = tempfile::tempdir().unwrap();
    let data = one_sft_row(tmp.path());
    let projector = |dir: &Path| weight_values(dir, "multi_modal_projector.", "linear_1.weight");
    // The language model's (the tower has a `layers.0.self_attn.q_proj` too).
    let q0 = |dir: &Path| weight_values(dir, "language_model.", "layers.0.self_attn.q_proj.weight");
    let (projector0, q00) = (projector(Path::new(FIXTURE)), q0(Path::new(FIXTURE)));
    let never = AtomicBool::new(false);
    let mut cfg = config(&data, 3, 3e-3);
    cfg.objective = ObjectiveConfig::new(Objective::Sft);
    cfg.tune = Tune::Full;
    cfg.freeze = vec!["multi_modal_projector.".into()];
    let run = tmp.path().join("frozen");
    trainer::train(&cfg, &run, |_| {}, &never).unwrap();
    let model = run.join(files::MODEL);
    assert_eq!(
        max_change(&projector(&model), &projector0),
        0.0,
        "the projector stayed"
    );
    let q_moved = max_change(&q0(&model), &q00);
    assert!(q_moved > 1e-4, "the language model trained: {q_moved}");

    cfg.freeze = vec!["multi_modal_projecter.".into()];
    let err = trainer::train(&cfg, &tmp.path().join("typo"), |_| {}, &never).unwrap_err();
    assert!(
        err.to_string().contains("names no trainable tensor"),
        "{err}"
    );
}

#[test]
fn freeze_with_lora_leaves_the_named_modules_unadapted() {
    use spr_workbench::train::objectives::{Objective, ObjectiveConfig};

    let tmp = tempfile::tempdir().unwrap();
    let data = one_sft_row(tmp.path());
    let never = AtomicBool::new(false);
    let mut cfg = config(&data, 3, 3e-3);
    cfg.objective = ObjectiveConfig::new(Objective::Sft);
    cfg.freeze = vec!["language_model.model.layers.0.".into()];
    let run = tmp.path().join("frozen-lora");
    trainer::train(&cfg, &run, |_| {}, &never).unwrap();
    let file = run.join(files::ADAPTER).join("adapter_model.safetensors");
    let tensors = candle_core::safetensors::load(&file, &candle_core::Device::Cpu).unwrap();
    // The largest |B| of the adapters whose key holds `part`.
    let largest_b = |part: &str| {
        let bs: Vec<f32> = tensors
            .iter()
            .filter(|(k, _)| k.contains(part) && k.contains("lora_B"))
            .flat_map(|(_, t)| t.flatten_all().unwrap().to_vec1::<f32>().unwrap())
            .collect();
        assert!(!bs.is_empty(), "no lora_B under {part}");
        bs.iter().fold(0f32, |m, x| m.max(x.abs()))
    };
    assert_eq!(largest_b(".layers.0."), 0.0, "layer 0 kept B = 0");
    let moved = largest_b(".layers.1.");
    assert!(moved > 1e-4, "layer 1's adapters trained: {moved}");

    // With LoRA only adapted modules can be named.
    cfg.freeze = vec!["multi_modal_projector.".into()];
    let err = trainer::train(&cfg, &tmp.path().join("typo"), |_| {}, &never).unwrap_err();
    assert!(
        err.to_string()
            .contains("names no module with a LoRA adapter"),
        "{err}"
    );
}
