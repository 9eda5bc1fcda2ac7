//! End-to-end tests of the `spr` binary on the bundled demo project:
//! regions → score → pairs → export, the demo generator's determinism,
//! `eval-rec`, and bad input seen through the CLI.

mod common;
use common::{copy_dir, demo_dir, spr};

use std::fs;
use std::path::Path;

use serde_json::Value;

fn ok(args: &[&str]) -> String {
    let out = spr(args);
    assert!(
        out.status.success(),
        "spr {args:?} failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn jsonl(path: &Path) -> Vec<Value> {
    fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[test]
fn pipeline_on_the_demo_project() {
    let tmp = tempfile::tempdir().unwrap();
    let proj = tmp.path().join("demo");
    copy_dir(&demo_dir(), &proj);
    for f in ["regions.jsonl", "scores.jsonl", "pairs.jsonl"] {
        fs::remove_file(proj.join(f)).unwrap();
    }
    let p = proj.to_str().unwrap();

    // regions: same seed → the committed file, byte for byte.
    let out = ok(&["regions", "--project", p]);
    assert!(out.contains("queries from"), "{out}");
    assert_eq!(
        fs::read_to_string(proj.join("regions.jsonl")).unwrap(),
        fs::read_to_string(demo_dir().join("regions.jsonl")).unwrap()
    );
    let regions = jsonl(&proj.join("regions.jsonl"));
    assert!(regions.len() >= 20, "{} regions", regions.len());
    for r in &regions {
        assert!(r["objects"].as_array().unwrap().len() >= 4);
        assert_eq!(r["v"], 1);
    }

    // score: one record per candidate, with the demo's tiny CLIP.
    let out = ok(&["score", "--project", p]);
    assert!(
        out.contains("semantic: CLIP models/clip (456 scored)"),
        "{out}"
    );
    let candidates = jsonl(&proj.join("candidates.jsonl"));
    let scores = jsonl(&proj.join("scores.jsonl"));
    assert_eq!(scores.len(), candidates.len());
    for s in &scores {
        let sem = s["semantic"].as_f64().unwrap();
        assert!((-1.0..=1.0).contains(&sem));
        let loc = s["localization"].as_f64().unwrap();
        assert!((0.0..=1.0).contains(&loc));
    }
    // The precise candidate of every query scores higher than its vague one (no boxes → 0).
    let by_id = |id: &str| {
        scores
            .iter()
            .find(|s| s["candidate_id"] == id)
            .unwrap()
            .clone()
    };
    for c in candidates
        .iter()
        .filter(|c| c["source"] == "synthetic-demo:precise")
    {
        let id = c["id"].as_str().unwrap();
        let precise = by_id(id)["localization"].as_f64().unwrap();
        assert!(precise > 0.95, "{id}: {precise}");
        let vague_id = format!("{}-c5", c["query_id"].as_str().unwrap());
        assert_eq!(by_id(&vague_id)["localization"].as_f64().unwrap(), 0.0);
    }

    // pairs: chosen beats rejected at λ; refinement never lowers the score.
    let out = ok(&["pairs", "--project", p]);
    assert!(!out.contains("ranked by localization alone"), "{out}");
    let pairs = jsonl(&proj.join("pairs.jsonl"));
    assert_eq!(pairs.len(), regions.len());
    let composite = |c: &Value| {
        0.8 * c["semantic"].as_f64().unwrap() + 0.2 * c["localization"].as_f64().unwrap()
    };
    for pr in &pairs {
        assert!(composite(&pr["chosen_scores"]) > composite(&pr["rejected_scores"]));
        let c = pr["chosen_scores"]["localization"].as_f64().unwrap();
        assert!(pr["chosen_refined_localization"].as_f64().unwrap() >= c - 1e-6);
        assert_eq!(pr["semantic_missing"], false);
    }

    // export: TRL layout with the crops written as images.
    let out = ok(&["export", "--project", p]);
    assert!(out.contains("TRL layout"), "{out}");
    let trl = jsonl(&proj.join("export/trl_pairs.jsonl"));
    assert_eq!(trl.len(), pairs.len());
    for (t, pr) in trl.iter().zip(&pairs) {
        assert_eq!(t["prompt"][0]["role"], "user");
        assert_eq!(t["prompt"][0]["content"][0]["type"], "image");
        assert_eq!(t["chosen"][0]["role"], "assistant");
        assert_eq!(t["chosen"][0]["content"][0]["text"], pr["chosen"]);
        assert_eq!(t["rejected"][0]["content"][0]["text"], pr["rejected"]);
        let img = proj.join("export").join(t["images"][0].as_str().unwrap());
        let crop = image::open(&img).unwrap();
        let c: Vec<f64> = pr["crop"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap())
            .collect();
        assert_eq!(crop.width() as f64, c[2].ceil().min(384.0) - c[0].floor());
        assert_eq!(crop.height() as f64, c[3].ceil().min(288.0) - c[1].floor());
    }

    // λ = 0 and λ = 1 give the same pairs here (no semantic score), and say so.
    let out = ok(&["pairs", "--project", p, "--lambda", "0"]);
    assert!(out.contains("λ = 0"), "{out}");
    let bad = spr(&["pairs", "--project", p, "--lambda", "1.5"]);
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("--lambda 1.5"));
}

/// Equal JSON, numbers within 1e-4.
fn same_json(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => {
            (x.as_f64().unwrap() - y.as_f64().unwrap()).abs() <= 1e-4
        }
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(a, b)| same_json(a, b))
        }
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len()
                && x.iter()
                    .all(|(k, v)| y.get(k).is_some_and(|w| same_json(v, w)))
        }
        _ => a == b,
    }
}

#[test]
fn demo_generator_reproduces_the_committed_demo() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("demo");
    let text = ok(&["demo", "--out", out.to_str().unwrap()]);
    assert!(text.contains("synthetic"), "{text}");
    // Scores and pairs hold CLIP cosines, which another CPU's SIMD width may
    // round differently in the last bits: numbers within 1e-4, the rest
    // exactly.
    for f in ["scores.jsonl", "pairs.jsonl"] {
        let (a, b) = (jsonl(&out.join(f)), jsonl(&demo_dir().join(f)));
        assert_eq!(a.len(), b.len(), "{f}");
        for (x, y) in a.iter().zip(&b) {
            assert!(
                same_json(x, y),
                "{f} differs from assets/demo: regenerate it with `spr demo --out assets/demo`\n{x}\n{y}"
            );
        }
    }
    for f in [
        "spr.toml",
        "annotations.json",
        "regions.jsonl",
        "candidates.jsonl",
        "README.md",
        "rec/finetune_demo_val.json",
    ] {
        assert_eq!(
            fs::read_to_string(out.join(f)).unwrap(),
            fs::read_to_string(demo_dir().join(f)).unwrap(),
            "{f} differs from assets/demo: regenerate it with `spr demo --out assets/demo`"
        );
    }
    for (dir, count) in [("images", 40), ("rec/images", 20)] {
        let names: Vec<_> = fs::read_dir(demo_dir().join(dir))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names.len(), count, "{dir}");
        for name in names {
            let a = image::open(out.join(dir).join(&name)).unwrap().to_rgb8();
            let b = image::open(demo_dir().join(dir).join(&name))
                .unwrap()
                .to_rgb8();
            assert!(a == b, "{dir}/{name:?} differs");
        }
    }
    // The REC set reads as an MDETR file, one expression per object whose
    // category is unique in its scene.
    let set = spr_workbench::core::rec::data::load(&out.join("rec/finetune_demo_val.json"), None)
        .unwrap();
    assert!(set.issues.is_empty(), "{:?}", set.issues);
    assert!(set.items.len() >= 40, "{}", set.items.len());
    assert!(set.items.iter().all(|i| i.expression.starts_with("the ")));
}

#[test]
fn eval_rec_reports_accuracy_by_threshold() {
    let tmp = tempfile::tempdir().unwrap();
    let preds = tmp.path().join("preds.jsonl");
    fs::write(
        &preds,
        [
            r#"{"id":"a","gt_bbox":[0,0,10,10],"pred_bbox":[0,0,10,10]}"#,
            r#"{"id":"b","gt_bbox":[0,0,10,10],"pred_bbox":[0,0,10,6.5]}"#,
            r#"{"id":"c","gt_bbox":[0,0,100,100],"output":"the dog [0, 0, 999, 999]","width":100,"height":100}"#,
            r#"{"id":"d","gt_bbox":[0,0,10,10],"output":"no box here","width":10,"height":10}"#,
            r#"{"id":"e","gt_bbox":[0,0,10,10]}"#,
            r#"{"id":"f","gt_bbox":[0,0,10,10],"pred_bbox":"#,
        ]
        .join("\n"),
    )
    .unwrap();
    let out_file = tmp.path().join("samples.jsonl");
    let out = spr(&[
        "eval-rec",
        "--predictions",
        preds.to_str().unwrap(),
        "--out",
        out_file.to_str().unwrap(),
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}{stderr}");
    // a: 1.0, b: 0.65, c: 1.0, d: none → 0
    assert!(
        stdout.contains("REC on 4 samples (2 lines skipped)"),
        "{stdout}"
    );
    assert!(
        stdout.contains("Acc@0.5      75.00%") && stdout.contains("Acc@0.7      50.00%"),
        "{stdout}"
    );
    assert!(stdout.contains("mean IoU    0.6625"), "{stdout}");
    assert!(
        stdout.contains("parse rate   75.00%  (1 of 4 answers without a box)"),
        "{stdout}"
    );
    assert!(
        stderr.contains("preds.jsonl:5: field \"pred_bbox\" or \"output\""),
        "{stderr}"
    );
    assert!(stderr.contains("preds.jsonl:6:"), "{stderr}");
    assert_eq!(jsonl(&out_file).len(), 4);
}

#[test]
fn bad_input_gives_one_clear_line_and_keeps_the_good_records() {
    let tmp = tempfile::tempdir().unwrap();
    let proj = tmp.path().join("p");
    copy_dir(&demo_dir(), &proj);
    let p = proj.to_str().unwrap();

    // A malformed candidate line and a candidate for an unknown query: both
    // named, the other candidates still scored.
    let mut cands = fs::read_to_string(proj.join("candidates.jsonl")).unwrap();
    let total = cands.lines().count();
    cands.push_str("{\"v\":1,\"id\":\"broken\"\n");
    cands.push_str(
        r#"{"v":1,"id":"orphan","query_id":"999-0","source":"manual","text":"a [1, 2, 3, 4]","format":"ferret"}"#,
    );
    cands.push('\n');
    fs::write(proj.join("candidates.jsonl"), cands).unwrap();
    let out = spr(&["score", "--project", p]);
    assert!(out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!("candidates.jsonl:{}:", total + 1)),
        "{stderr}"
    );
    assert!(
        stderr.contains("candidate orphan: query 999-0 is not in regions.jsonl"),
        "{stderr}"
    );
    assert_eq!(jsonl(&proj.join("scores.jsonl")).len(), total);

    // Malformed annotation JSON: one line naming file, line and column; exit 1.
    fs::write(
        proj.join("annotations.json"),
        "{\n  \"images\": [\n    {\"id\": 1,, }\n",
    )
    .unwrap();
    let out = spr(&["regions", "--project", p]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.starts_with("error: ") && stderr.contains("annotations.json:3:"),
        "{stderr}"
    );

    // A missing project: a clear error, not a panic.
    let out = spr(&[
        "score",
        "--project",
        tmp.path().join("nope").to_str().unwrap(),
    ]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("spr.toml"));
}

/// Every number of a summary line, in order.
fn numbers(line: &str) -> Vec<f64> {
    line.split(|c: char| !(c.is_ascii_digit() || c == '.'))
        .filter_map(|w| w.trim_matches('.').parse().ok())
        .collect()
}

/// The line of `out` that starts with `prefix`.
fn line<'a>(out: &'a str, prefix: &str) -> &'a str {
    out.lines()
        .find(|l| l.starts_with(prefix))
        .unwrap_or_else(|| panic!("no line starting {prefix:?} in:\n{out}"))
}

#[test]
fn every_summary_line_counts_what_it_says() {
    let tmp = tempfile::tempdir().unwrap();
    let proj = tmp.path().join("demo");
    copy_dir(&demo_dir(), &proj);
    let p = proj.to_str().unwrap();

    // check: images, objects, categories, object-rich images.
    let ann: Value =
        serde_json::from_slice(&fs::read(proj.join("annotations.json")).unwrap()).unwrap();
    let images = ann["images"].as_array().unwrap();
    let objects = ann["annotations"].as_array().unwrap();
    let rich = images
        .iter()
        .filter(|im| {
            objects
                .iter()
                .filter(|o| {
                    o["image_id"] == im["id"]
                        && o["iscrowd"] != 1
                        && o["area"].as_f64().unwrap() >= 300.0
                })
                .count()
                >= 9
        })
        .count();
    let out = ok(&["check", "--project", p]);
    let file = proj.join("annotations.json").display().to_string();
    let n = numbers(&line(&out, &file)[file.len()..]);
    assert_eq!(
        n[..4],
        [
            images.len() as f64,
            objects.len() as f64,
            ann["categories"].as_array().unwrap().len() as f64,
            rich as f64
        ],
        "{out}"
    );

    // regions: queries, the images they are on, images in all.
    let out = ok(&["regions", "--project", p]);
    let regions = jsonl(&proj.join("regions.jsonl"));
    let on: std::collections::HashSet<u64> = regions
        .iter()
        .map(|r| r["image_id"].as_u64().unwrap())
        .collect();
    let n = numbers(line(&out, "regions:"));
    assert_eq!(
        n[..3],
        [regions.len() as f64, on.len() as f64, images.len() as f64],
        "{out}"
    );

    // score: scored candidates, the detector's boxes, phrase-less ones.
    let out = ok(&["score", "--project", p]);
    let scores = jsonl(&proj.join("scores.jsonl"));
    assert_eq!(
        numbers(line(&out, "score:"))[0],
        scores.len() as f64,
        "{out}"
    );
    let boxes: usize = scores
        .iter()
        .map(|s| s["detections"].as_array().map_or(0, Vec::len))
        .sum();
    let skipped = scores
        .iter()
        .filter(|s| {
            s["notes"].as_array().is_some_and(|n| {
                n.iter()
                    .any(|x| x.as_str().unwrap_or("").starts_with("detector skipped"))
            })
        })
        .count();
    let det = line(&out, "detector:");
    let tail = &det[det.find("):").unwrap()..];
    assert_eq!(numbers(tail)[..2], [boxes as f64, skipped as f64], "{out}");

    // pairs: pairs, queries with candidates, hand marks (none in the demo).
    let out = ok(&["pairs", "--project", p]);
    let pairs = jsonl(&proj.join("pairs.jsonl"));
    let queries: std::collections::HashSet<String> = jsonl(&proj.join("candidates.jsonl"))
        .iter()
        .map(|c| c["query_id"].as_str().unwrap().to_string())
        .collect();
    let manual = pairs.iter().filter(|p| p["manual"] == true).count();
    let n = numbers(line(&out, "pairs:"));
    assert_eq!(
        n[..3],
        [pairs.len() as f64, queries.len() as f64, manual as f64],
        "{out}"
    );

    // export: the rows written.
    let out = ok(&["export", "--project", p]);
    let rows = jsonl(&proj.join("export/trl_pairs.jsonl"));
    assert_eq!(
        numbers(line(&out, "export:"))[0],
        rows.len() as f64,
        "{out}"
    );
}

#[test]
fn check_decodes_every_image_and_names_the_bad_ones() {
    let tmp = tempfile::tempdir().unwrap();
    let proj = tmp.path().join("demo");
    copy_dir(&demo_dir(), &proj);
    let p = proj.to_str().unwrap();
    let images = proj.join("images");
    // A truncated file, an image of another size than annotated, a
    // missing one.
    let bytes = fs::read(images.join("scene_003.png")).unwrap();
    fs::write(images.join("scene_003.png"), &bytes[..bytes.len() / 3]).unwrap();
    image::RgbImage::new(10, 10)
        .save(images.join("scene_005.png"))
        .unwrap();
    fs::remove_file(images.join("scene_007.png")).unwrap();
    let out = ok(&["check", "--project", p]);
    assert!(out.contains("scene_003.png: cannot decode image"), "{out}");
    assert!(
        out.contains("scene_005.png: the image is 10×10 but the annotations say"),
        "{out}"
    );
    assert!(out.contains("scene_007.png: image file not found"), "{out}");
    assert!(
        out.contains("1 missing image file(s), 2 unreadable or mismatched image(s) of 40 decoded"),
        "{out}"
    );
    // Without decoding only the missing file is seen, and the line says so.
    let out = ok(&["check", "--project", p, "--no-images"]);
    assert!(!out.contains("scene_003.png"), "{out}");
    assert!(
        out.contains("(images not decoded: --images decodes them)"),
        "{out}"
    );
}

#[test]
fn spr_device_picks_the_cpu_or_names_a_bad_value() {
    let rec = demo_dir().join("rec/finetune_demo_val.json");
    let model = Path::new(env!("CARGO_MANIFEST_DIR")).join("assets/tiny-model");
    let tmp = tempfile::tempdir().unwrap();
    let run = |device: &str| {
        std::process::Command::new(env!("CARGO_BIN_EXE_spr"))
            .args(["eval", "--model", model.to_str().unwrap(), "--data"])
            .arg(&rec)
            .args(["--profile", "tiny", "--limit", "2", "--out"])
            .arg(tmp.path().join(device))
            .env("SPR_DEVICE", device)
            .output()
            .unwrap()
    };
    let out = run("gpu");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("SPR_DEVICE=\"gpu\": expected \"cpu\" or \"cuda\""),
        "{err}"
    );
    let out = run("cpu");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
