//! A miniature of `spr experiment` end to end (a few scenes, a few steps,
//! one seed, the tiny demo model as the base), so the experiment's
//! pipeline cannot silently break: every stage runs, the report holds a
//! row per arm, the four hypotheses and a plot, and a second run resumes
//! without redoing anything.

mod common;

use std::fs;
use std::path::Path;

use common::spr;
use spr_workbench::experiment::report::ExperimentReport;

#[test]
fn a_miniature_experiment_runs_end_to_end_and_resumes() {
    let tmp = tempfile::tempdir().unwrap();
    let base = Path::new(env!("CARGO_MANIFEST_DIR")).join("assets/tiny-model");
    let config = tmp.path().join("mini.toml");
    let bundled =
        fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("experiments/tiny.toml"))
            .unwrap();
    // The bundled config's arms, at miniature sizes.
    let arms = &bundled[bundled.find("[[arm]]").unwrap()..];
    fs::write(
        &config,
        format!(
            r#"name = "mini"
base_model = "{}"
profile = "tiny"

[data]
scenes = 3
seed = 99
rec_scenes = 2

[generate]
prompts = ["describe"]
samples = 2
temperature = 1.0
top_p = 1.0
max_new_tokens = 40

[train]
steps = 2
batch = 2
lr = 1e-3
warmup = 1
beta = 0.1
lora_r = 4
lora_alpha = 8.0
max_len = 400
seeds = [1]

{arms}"#,
            base.display()
        ),
    )
    .unwrap();
    let work = tmp.path().join("work");
    let report = tmp.path().join("report");
    let args = [
        "experiment",
        "--config",
        config.to_str().unwrap(),
        "--work",
        work.to_str().unwrap(),
        "--report",
        report.to_str().unwrap(),
    ];
    let out = spr(&args);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let r: ExperimentReport =
        serde_json::from_slice(&fs::read(report.join("report.json")).unwrap()).unwrap();
    assert_eq!(r.arms.len(), 5);
    assert!(r.samples > 0);
    assert!(r.arms.iter().all(|a| a.seeds == vec![1]));
    assert_eq!(r.verdicts.len(), 4);
    // Every hypothesis is checked: no arm is missing.
    assert!(
        r.verdicts.iter().all(|v| v.verdict != "not tested"),
        "{:?}",
        r.verdicts
    );
    let md = fs::read_to_string(report.join("README.md")).unwrap();
    for a in &r.arms {
        assert!(md.contains(&format!("| {} | 1 |", a.name)), "{md}");
    }
    assert!(md.contains("rec_accuracy.png"));
    assert!(image::open(report.join("rec_accuracy.png")).is_ok());
    // Each λ got its own pairs file, and every run finished.
    for l in ["0_8", "0", "1"] {
        assert!(work
            .join(format!("project/pairs-lambda{l}.jsonl"))
            .is_file());
    }
    assert_eq!(fs::read_dir(work.join("runs")).unwrap().count(), 5);
    // Run again: nothing is redone.
    let again = spr(&args);
    let stdout = String::from_utf8_lossy(&again.stdout);
    assert!(again.status.success());
    assert!(!stdout.contains(" …\n"), "{stdout}");
    assert!(stdout.contains("done earlier"));
}
