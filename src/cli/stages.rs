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
    let ds = load_dataset(&p)?;
    let pre = p.config.dataset.preprocess();
    let mut cfg = p.config.regions;
    cfg.seed = seed.unwrap_or(cfg.seed);
    cfg.per_image = per_image.unwrap_or(cfg.per_image);
    let rich = ds.object_rich_images(&pre).len();
    let b = bar(rich as u64, "regions");
    let records = pipeline::build_regions(&ds, &pre, &cfg, &|n| b.inc(n));
    b.finish_and_clear();
    let out = p.path(files::REGIONS);
    project::write_jsonl(&out, &records)?;
    println!(
        "regions: {} queries from {rich} object-rich images (of {}) → {}",
        records.len(),
        ds.images.len(),
        out.display()
    );
    Ok(())
}

pub(super) fn score(dir: &Path) -> Result<()> {
    let p = open(dir)?;
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
    let out = p.path(files::SCORES);
    project::write_jsonl(&out, &scores)?;
    let issues_in_text: usize = scores.iter().map(|s| s.parse_issues.len()).sum();
    println!(
        "score: {} candidates scored ({} skipped, {} box-syntax problems) → {}",
        scores.len(),
        issues.len(),
        issues_in_text,
        out.display()
    );
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
    project::write_jsonl(&out, &pairs)?;
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
