//! `spr bench score`: candidates per second and peak memory of `spr
//! score` with the project's CLIP (the semantic score: crop, local
//! attention, text; no detector is built yet), so it can be run beside
//! transformers' `CLIPModel` on the same checkpoint and candidates
//! (`scripts/bench/score_transformers.py`). The timed part is the scoring
//! of every candidate (images decoded, both image embeddings per region,
//! the texts); loading the model and the dataset is not. It runs in a fresh
//! child process, so the peak RSS is its own.

use std::path::Path;
use std::time::Instant;

use anyhow::{Context, Result};

use super::load::peak_rss_bytes;
use crate::core::pipeline;
use crate::core::project::{self, files, CandidateRecord, Project, RegionRecord};
use crate::core::scorers::{NoDetector, Scorers};

/// Figures of one measurement.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct ScoreBenchReport {
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
    let clip = crate::scoring::load_semantic(&p, &device)?
        .context("[scoring] semantic_model is not set: nothing to time")?;
    let started = Instant::now();
    let (scores, issues) = pipeline::score_candidates(
        &ds,
        &regions,
        &candidates,
        &p.config.scoring,
        Scorers {
            semantic: &clip,
            detector: &NoDetector,
        },
        &|_| {},
    );
    let seconds = started.elapsed().as_secs_f64();
    anyhow::ensure!(issues.is_empty(), "scoring issue: {}", issues[0]);
    Ok(ScoreBenchReport {
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
        "score bench: {} candidates of {} regions in {:.2} s = {:.1} candidates/s (semantic score, CLIP; no detector), peak RSS {}",
        r.candidates,
        r.regions,
        r.seconds,
        r.candidates_per_s,
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
