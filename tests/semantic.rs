//! The semantic score on the bundled demo with its tiny CLIP
//! (`assets/demo/models/clip`, made by `spr tiny clip`): the committed
//! scores carry both parts, λ changes the ranking, and bad input (a missing
//! model, an over-long text, a missing image) is handled as documented.

use std::fs;
use std::path::Path;

mod common;
use common::{copy_dir, demo_dir, spr};

use spr_workbench::core::project::{self, files, CandidateRecord, ScoreRecord};
use spr_workbench::core::scores::{rank, Components};

fn stage<T: serde::de::DeserializeOwned + project::Versioned>(dir: &Path, name: &str) -> Vec<T> {
    let (r, errors) = project::read_jsonl::<T>(&dir.join(name)).unwrap();
    assert!(errors.is_empty(), "{errors:?}");
    r
}

#[test]
fn demo_scores_carry_both_parts_and_lambda_reorders_the_candidates() {
    let scores: Vec<ScoreRecord> = stage(&demo_dir(), files::SCORES);
    let candidates: Vec<CandidateRecord> = stage(&demo_dir(), files::CANDIDATES);
    assert_eq!(scores.len(), candidates.len());
    for s in &scores {
        let parts = s.semantic_parts.expect("semantic parts");
        assert!((s.semantic.unwrap() - parts.score()).abs() < 1e-6);
        assert_eq!(s.semantic_model.as_deref(), Some("models/clip"));
    }
    let kind = |id: &str| -> String {
        let c = candidates.iter().find(|c| c.id == id).unwrap();
        c.source.trim_start_matches("synthetic-demo:").to_string()
    };
    let mut queries: Vec<&str> = scores.iter().map(|s| s.query_id.as_str()).collect();
    queries.dedup();
    let (mut reordered, mut vague_above_wrong) = (0, 0);
    for q in &queries {
        let group: Vec<&ScoreRecord> = scores.iter().filter(|s| s.query_id == *q).collect();
        let comps: Vec<Components> = group.iter().map(|s| s.components()).collect();
        if rank(&comps, 0.0) != rank(&comps, 1.0) {
            reordered += 1;
        }
        let sem = |k: &str| {
            group
                .iter()
                .find(|s| kind(&s.candidate_id) == k)
                .unwrap()
                .semantic
                .unwrap()
        };
        if sem("vague") > sem("wrong") {
            vague_above_wrong += 1;
        }
    }
    eprintln!(
        "{} queries: ranking differs between λ=0 and λ=1 in {reordered}; vague above wrong at λ=1 in {vague_above_wrong}",
        queries.len()
    );
    assert!(reordered > queries.len() / 2, "{reordered}");
    assert!(
        vague_above_wrong * 4 >= queries.len() * 3,
        "vague above wrong in only {vague_above_wrong} of {}",
        queries.len()
    );
}

fn demo_copy(tmp: &Path) -> std::path::PathBuf {
    let root = tmp.join("demo");
    copy_dir(&demo_dir(), &root);
    root
}

#[test]
fn a_missing_model_names_the_field_and_how_to_get_weights() {
    let tmp = tempfile::tempdir().unwrap();
    let root = demo_copy(tmp.path());
    let cfg = fs::read_to_string(root.join("spr.toml")).unwrap();
    fs::write(
        root.join("spr.toml"),
        cfg.replace(
            "semantic_model = \"models/clip\"",
            "semantic_model = \"models/nope\"",
        ),
    )
    .unwrap();
    let out = spr(&["score", "--project", root.to_str().unwrap()]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("[scoring] semantic_model = \"models/nope\"")
            && err.contains("huggingface-cli download openai/clip-vit-large-patch14-336"),
        "{err}"
    );
}

#[test]
fn a_long_text_is_scored_in_pieces_and_a_missing_image_skips_its_region() {
    let tmp = tempfile::tempdir().unwrap();
    let root = demo_copy(tmp.path());
    let mut candidates: Vec<CandidateRecord> = stage(&root, files::CANDIDATES);
    let mut long = candidates[0].clone();
    long.id = "long".into();
    long.text = (0..12)
        .map(|i| format!("A red circle number {i} sits next to a blue square and a green diamond."))
        .collect::<Vec<_>>()
        .join(" ");
    candidates.push(long);
    project::write_jsonl(&root.join(files::CANDIDATES), &candidates).unwrap();
    // The last region's image goes missing.
    let regions: Vec<spr_workbench::core::project::RegionRecord> = stage(&root, files::REGIONS);
    let gone = regions.last().unwrap();
    fs::remove_file(root.join("images").join(&gone.file_name)).unwrap();
    let lost: usize = regions
        .iter()
        .filter(|r| r.file_name == gone.file_name)
        .map(|r| candidates.iter().filter(|c| c.query_id == r.id).count())
        .sum();
    let out = spr(&["score", "--project", root.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(err.contains(&gone.file_name), "{err}");
    let scores: Vec<ScoreRecord> = stage(&root, files::SCORES);
    assert_eq!(scores.len(), candidates.len() - lost);
    let s = scores.iter().find(|s| s.candidate_id == "long").unwrap();
    let parts = s.semantic_parts.unwrap();
    assert!(parts.chunks > 1, "{parts:?}");
    assert!(
        s.notes.iter().any(|n| n.contains("pieces")),
        "{:?}",
        s.notes
    );
}
