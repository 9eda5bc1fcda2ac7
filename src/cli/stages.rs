//! The pipeline stages a user runs on a project folder: `spr check`,
//! `regions`, `score`, `pairs`, `export` and `info`. Each reads the stage
//! files before it, writes its own under the file's locks (see
//! `core::project::lock`), and prints one summary line of what it counted.

use std::path::{Path, PathBuf};

use anyhow::{bail, Result};

use super::{bar, load_dataset, open, read_stage, warn_issues};
use crate::core::pipeline;
use crate::core::project::{
    self, files, CandidateRecord, MarkRecord, PairRecord, RegionRecord, ScoreRecord,
};

/// Datasets up to this many images have every image decoded by `spr check`
/// unless `--no-images` (a few seconds on two cores).
const CHECK_IMAGES_UP_TO: usize = 5_000;

pub(super) fn check(dir: &Path, images: bool, no_images: bool) -> Result<()> {
    use rayon::prelude::*;
    let p = open(dir)?;
    let ds = p.load_dataset()?;
    let pre = p.config.dataset.preprocess();
    println!(
        "{}: {} images, {} objects, {} categories, {} object-rich images (≥ {} non-crowd objects of area ≥ {})",
        p.annotations_path().display(),
        ds.images.len(),
        ds.objects.len(),
        ds.categories.len(),
        ds.object_rich_images(&pre).len(),
        pre.min_objects,
        pre.min_area
    );
    for issue in &ds.issues {
        println!("{issue}");
    }
    let decode = images || (!no_images && ds.images.len() <= CHECK_IMAGES_UP_TO);
    let mut missing = 0;
    let mut bad = 0;
    if decode {
        let b = bar(ds.images.len() as u64, "images");
        // Per bad image: `None` when the file is missing, else what is
        // wrong with it. Collected in image order.
        let found: Vec<(usize, Option<String>)> = (0..ds.images.len())
            .into_par_iter()
            .filter_map(|i| {
                let info = &ds.images[i];
                let r = crate::core::imageio::check_image(&ds.image_path(i));
                b.inc(1);
                match r {
                    Err(crate::core::imageio::ImageLoadError::Open { .. }) => Some((i, None)),
                    Err(e) => Some((i, Some(e.to_string()))),
                    Ok((w, h)) if info.width > 0 && (w, h) != (info.width, info.height) => Some((
                        i,
                        Some(format!(
                            "{}: the image is {w}×{h} but the annotations say {}×{}",
                            ds.image_path(i).display(),
                            info.width,
                            info.height
                        )),
                    )),
                    Ok(_) => None,
                }
            })
            .collect();
        b.finish_and_clear();
        for (i, problem) in found {
            match problem {
                None => {
                    missing += 1;
                    println!("{}: image file not found", ds.image_path(i).display());
                }
                Some(message) => {
                    println!("{message}");
                    bad += 1;
                }
            }
        }
    } else {
        for i in 0..ds.images.len() {
            if !ds.image_path(i).is_file() {
                missing += 1;
                if missing <= 5 {
                    println!("{}: image file not found", ds.image_path(i).display());
                }
            }
        }
    }
    let decoded = if decode {
        format!(
            ", {} unreadable or mismatched image(s) of {} decoded",
            bad,
            ds.images.len()
        )
    } else {
        " (images not decoded: --images decodes them)".to_string()
    };
    println!(
        "{} issue(s), {} missing image file(s){decoded}",
        ds.issues.len(),
        missing
    );
    Ok(())
}

pub(super) fn regions(dir: &Path, seed: Option<u64>, per_image: Option<usize>) -> Result<()> {
    let p = open(dir)?;
    let out = p.path(files::REGIONS);
    let _job = project::lock::job_lock(&out, &format!("spr regions {}", dir.display()))?;
    let ds = load_dataset(&p)?;
    let pre = p.config.dataset.preprocess();
    let mut cfg = p.config.regions;
    cfg.seed = seed.unwrap_or(cfg.seed);
    cfg.per_image = per_image.unwrap_or(cfg.per_image);
    let rich = ds.object_rich_images(&pre).len();
    let b = bar(rich as u64, "regions");
    let mut records = pipeline::build_regions(&ds, &pre, &cfg, &|n| b.inc(n));
    b.finish_and_clear();
    let sampled = records.len();
    // Regions drawn by hand (in the GUI) are the user's work, not a
    // sample: they are kept, whatever was on disk when the write began.
    let kept = {
        let _lock = project::lock::write_lock(&out)?;
        let hand = hand_drawn(&out, &records)?;
        let kept = hand.len();
        records.extend(hand);
        project::write_jsonl(&out, &records)?;
        kept
    };
    let kept = if kept > 0 {
        format!(", {kept} hand-drawn region(s) kept")
    } else {
        String::new()
    };
    println!(
        "regions: {sampled} queries from {rich} object-rich images (of {}){kept} → {}",
        ds.images.len(),
        out.display()
    );
    Ok(())
}

/// The hand-drawn regions in `path` that `sampled` does not have.
fn hand_drawn(path: &Path, sampled: &[RegionRecord]) -> Result<Vec<RegionRecord>> {
    if !path.is_file() {
        return Ok(Vec::new());
    }
    let (old, _) = project::read_jsonl::<RegionRecord>(path)?;
    let ids: std::collections::HashSet<&str> = sampled.iter().map(|r| r.id.as_str()).collect();
    Ok(old
        .into_iter()
        .filter(|r| r.source == project::RegionSource::Manual && !ids.contains(r.id.as_str()))
        .collect())
}

pub(super) fn score(dir: &Path) -> Result<()> {
    let p = open(dir)?;
    let out = p.path(files::SCORES);
    let _job = project::lock::job_lock(&out, &format!("spr score {}", dir.display()))?;
    let ds = load_dataset(&p)?;
    let regions: Vec<RegionRecord> = read_stage(&p, files::REGIONS)?;
    let candidates: Vec<CandidateRecord> = read_stage(&p, files::CANDIDATES)?;
    let device = crate::model::default_device();
    let loaded = crate::scoring::ProjectScorers::load(&p, &device)?;
    let scorers = loaded.scorers();
    let (clip, owl) = (&loaded.semantic, &loaded.detector);
    let b = bar(candidates.len() as u64, "score");
    let (scores, issues) = pipeline::score_candidates(
        &ds,
        &regions,
        &candidates,
        &p.config.scoring,
        scorers,
        &|n| b.inc(n),
    );
    b.finish_and_clear();
    warn_issues(&issues);
    let (scores, caught_up) = {
        let _lock = project::lock::write_lock(&out)?;
        let catch_up = catch_up(&p, &ds, &candidates, scores, scorers)?;
        project::write_jsonl(&out, &catch_up.0)?;
        catch_up
    };
    let issues_in_text: usize = scores.iter().map(|s| s.parse_issues.len()).sum();
    println!(
        "score: {} candidates scored ({} skipped, {} box-syntax problems) → {}",
        scores.len(),
        issues.len(),
        issues_in_text,
        out.display()
    );
    if caught_up.changed + caught_up.removed > 0 {
        println!(
            "note: candidates.jsonl changed while scoring: {} candidate(s) added or edited meanwhile were scored too, {} removed meanwhile were dropped",
            caught_up.changed, caught_up.removed
        );
    }
    match clip {
        Some(c) => println!(
            "semantic: CLIP {} ({} scored)",
            c.model_name(),
            scores.iter().filter(|s| s.semantic.is_some()).count()
        ),
        None => println!(
            "note: semantic score not computed: [scoring] semantic_model is not set in spr.toml, \
             so `semantic` is null and composites use the localization score alone"
        ),
    }
    match owl {
        Some(d) => {
            let boxes: usize = scores.iter().map(|s| s.detections.len()).sum();
            let without = scores
                .iter()
                .filter(|s| s.notes.iter().any(|n| n.starts_with("detector skipped")))
                .count();
            println!(
                "detector: {}: {boxes} boxes added to the predictions ({without} candidates name no phrase)",
                crate::core::scorers::Detector::name(d).unwrap_or_default(),
            );
        }
        None => println!(
            "note: detector not run: [scoring] detector_model is not set in spr.toml, \
             so localization uses the written boxes only"
        ),
    }
    Ok(())
}

/// What [`catch_up`] did.
struct CaughtUp {
    changed: usize,
    removed: usize,
}

/// Brings `scores` (of `scored`, the candidates as read when scoring
/// began) up to date with `candidates.jsonl` as it is now: candidates
/// another process (the GUI, a generation) added or edited meanwhile are
/// scored now, removed ones dropped, so the file written matches the
/// candidates and no one's edit is scored as its old text. Call it under
/// the scores' write lock.
fn catch_up(
    p: &project::Project,
    ds: &crate::core::dataset::Dataset,
    scored: &[CandidateRecord],
    scores: Vec<ScoreRecord>,
    scorers: crate::core::scorers::Scorers,
) -> Result<(Vec<ScoreRecord>, CaughtUp)> {
    let (now, _) = project::read_jsonl::<CandidateRecord>(&p.path(files::CANDIDATES))?;
    let before: std::collections::HashMap<&str, &CandidateRecord> =
        scored.iter().map(|c| (c.id.as_str(), c)).collect();
    let late: Vec<CandidateRecord> = now
        .iter()
        .filter(|c| before.get(c.id.as_str()) != Some(c))
        .cloned()
        .collect();
    let live: std::collections::HashSet<&str> = now.iter().map(|c| c.id.as_str()).collect();
    let removed = scored
        .iter()
        .filter(|c| !live.contains(c.id.as_str()))
        .count();
    let mut by_id: std::collections::HashMap<String, ScoreRecord> = scores
        .into_iter()
        .map(|s| (s.candidate_id.clone(), s))
        .collect();
    if !late.is_empty() {
        let (regions, _) = project::read_jsonl::<RegionRecord>(&p.path(files::REGIONS))?;
        let (more, issues) =
            pipeline::score_candidates(ds, &regions, &late, &p.config.scoring, scorers, &|_| {});
        warn_issues(&issues);
        for c in &late {
            by_id.remove(&c.id);
        }
        by_id.extend(more.into_iter().map(|s| (s.candidate_id.clone(), s)));
    }
    let ordered = now.iter().filter_map(|c| by_id.remove(&c.id)).collect();
    Ok((
        ordered,
        CaughtUp {
            changed: late.len(),
            removed,
        },
    ))
}

pub(super) fn pairs(dir: &Path, lambda: Option<f32>, out: Option<PathBuf>) -> Result<()> {
    let p = open(dir)?;
    let ds = load_dataset(&p)?;
    let regions: Vec<RegionRecord> = read_stage(&p, files::REGIONS)?;
    let candidates: Vec<CandidateRecord> = read_stage(&p, files::CANDIDATES)?;
    let scores: Vec<ScoreRecord> = read_stage(&p, files::SCORES)?;
    // Hand-set marks are optional.
    let marks: Vec<MarkRecord> = if p.path(files::MARKS).exists() {
        read_stage(&p, files::MARKS)?
    } else {
        Vec::new()
    };
    let mut scoring = p.config.scoring.clone();
    if let Some(l) = lambda {
        if !(0.0..=1.0).contains(&l) {
            bail!("--lambda {l}: must be within 0 and 1");
        }
        scoring.lambda = l;
    }
    let (pairs, stats, issues) = pipeline::build_pairs(
        &ds,
        &regions,
        &candidates,
        &scores,
        &marks,
        &scoring,
        p.config.model.format,
    );
    warn_issues(&issues);
    let out = out.unwrap_or_else(|| p.path(files::PAIRS));
    {
        let _lock = project::lock::write_lock(&out)?;
        project::write_jsonl(&out, &pairs)?;
    }
    println!(
        "pairs: {} pairs from {} queries ({} marked by hand, {} with < 2 candidates, {} ties, {} skipped) at λ = {} → {}",
        stats.pairs,
        stats.queries,
        stats.manual,
        stats.too_few_candidates,
        stats.ties,
        issues.len(),
        scoring.lambda,
        out.display()
    );
    if stats.semantic_missing > 0 {
        println!(
            "note: {} pair(s) ranked by localization alone: semantic score missing (set [scoring] semantic_model in spr.toml and rerun `spr score`)",
            stats.semantic_missing
        );
    }
    Ok(())
}

pub(super) fn export(dir: &Path, out: Option<PathBuf>) -> Result<()> {
    let p = open(dir)?;
    let pairs: Vec<PairRecord> = read_stage(&p, files::PAIRS)?;
    let out = out.unwrap_or_else(|| p.path(files::EXPORT_DIR));
    let _job = project::lock::job_lock(&out, &format!("spr export {}", dir.display()))?;
    let b = bar(pairs.len() as u64, "export");
    let (records, issues) = pipeline::export_trl(
        &pairs,
        &p.image_root(),
        &p.config.export.prompt,
        &out,
        &|n| b.inc(n),
    )?;
    b.finish_and_clear();
    warn_issues(&issues);
    println!(
        "export: {} pairs in TRL layout ({} skipped) → {}",
        records.len(),
        issues.len(),
        out.join(files::TRL_PAIRS).display()
    );
    Ok(())
}

pub(super) fn show(dir: &Path) -> Result<()> {
    let p = open(dir)?;
    println!("{} ({})", p.config.name, p.root.display());
    if !p.config.description.is_empty() {
        println!("{}", p.config.description);
    }
    let count = |name: &str| -> String {
        match std::fs::read_to_string(p.path(name)) {
            Ok(t) => t
                .lines()
                .filter(|l| !l.trim().is_empty())
                .count()
                .to_string(),
            Err(_) => "missing".into(),
        }
    };
    println!(
        "regions: {}, candidates: {}, scores: {}, pairs: {}",
        count(files::REGIONS),
        count(files::CANDIDATES),
        count(files::SCORES),
        count(files::PAIRS)
    );
    Ok(())
}
