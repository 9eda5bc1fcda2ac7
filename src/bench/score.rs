//! `spr bench score`: candidates per second and peak memory of `spr
//! score` with the project's models — CLIP's semantic score (crop, local
//! attention, text) and the OWLv2 detector (crop, phrase queries) — so it
//! can be run beside transformers' `CLIPModel` and
//! `Owlv2ForObjectDetection` on the same checkpoints and candidates
//! (`scripts/bench/score_transformers.py`). The timed part is the scoring
//! of every candidate (images decoded, the image encodings per region, the
//! texts, detection); loading the models and the dataset is not. It runs in
//! a fresh child process, so the peak RSS is its own.

use std::path::Path;
use std::time::Instant;

use anyhow::{Context, Result};

use super::load::peak_rss_bytes;
use crate::core::pipeline;
use crate::core::project::{self, files, CandidateRecord, Project, RegionRecord};

/// Figures of one measurement.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct ScoreBenchReport {
    /// What was timed.
    pub models: String,
    /// Candidates scored.
    pub candidates: usize,
    /// Regions.
    pub regions: usize,
    /// Seconds of scoring.
    pub seconds: f64,
    /// Candidates per second.
    pub candidates_per_s: f64,
    /// Peak RSS, MB.
    pub peak_rss_mb: Option<f64>,
}

/// Scores the project's candidates with its CLIP, in this process.
pub fn measure(dir: &Path) -> Result<ScoreBenchReport> {
    let p = Project::open(dir)?;
    let ds = p.load_dataset()?;
    let (regions, _) = project::read_jsonl::<RegionRecord>(&p.path(files::REGIONS))?;
    let (candidates, _) = project::read_jsonl::<CandidateRecord>(&p.path(files::CANDIDATES))?;
    let device = crate::model::default_device();
    let loaded = crate::scoring::ProjectScorers::load(&p, &device)?;
    anyhow::ensure!(
        loaded.semantic.is_some() || loaded.detector.is_some(),
        "[scoring] sets neither semantic_model nor detector_model: nothing to time"
    );
    let started = Instant::now();
    let (scores, issues) = pipeline::score_candidates(
        &ds,
        &regions,
        &candidates,
        &p.config.scoring,
        loaded.scorers(),
        &|_| {},
    );
    let seconds = started.elapsed().as_secs_f64();
    anyhow::ensure!(issues.is_empty(), "scoring issue: {}", issues[0]);
    Ok(ScoreBenchReport {
        models: [
            loaded.semantic.as_ref().map(|_| "CLIP semantic score"),
            loaded.detector.as_ref().map(|_| "OWLv2 detector"),
        ]
        .into_iter()
        .flatten()
        .collect::<Vec<_>>()
        .join(" + "),
        candidates: scores.len(),
        regions: regions.len(),
        seconds,
        candidates_per_s: scores.len() as f64 / seconds.max(1e-9),
        peak_rss_mb: peak_rss_bytes().map(|b| b as f64 / 1e6),
    })
}

/// `spr bench score`: the measurement in a child process.
pub fn command(project: &Path, child: bool) -> Result<()> {
    if child {
        println!("{}", serde_json::to_string(&measure(project)?)?);
        return Ok(());
    }
    let exe = std::env::current_exe().context("locating the spr binary")?;
    let out = std::process::Command::new(exe)
        .args(["bench", "score", "--child", "--project"])
        .arg(project)
        .output()
        .context("running the timed child")?;
    anyhow::ensure!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let r: ScoreBenchReport = serde_json::from_str(String::from_utf8_lossy(&out.stdout).trim())
        .context("reading the child's figures")?;
    println!(
        "score bench: {} candidates of {} regions in {:.2} s = {:.1} candidates/s ({}), peak RSS {}",
        r.candidates,
        r.regions,
        r.seconds,
        r.candidates_per_s,
        r.models,
        r.peak_rss_mb
            .map(|m| format!("{m:.0} MB"))
            .unwrap_or_else(|| "n/a".into())
    );
    println!(
        "peer: python scripts/bench/score_transformers.py {}",
        project.display()
    );
    Ok(())
}
