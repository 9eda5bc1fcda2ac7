//! Where evaluations come from: `spr eval` folders (`evals/<name>/`
//! with `report.json` and `samples.jsonl`) and the evaluations runs made
//! during training (`eval` lines of `runs/<name>/events.jsonl`, their
//! samples in the run folder). Per-sample records are read when first
//! needed (a click), not when the list is scanned.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use crate::core::project;
use crate::core::rec::compare::MatchTable;
use crate::core::rec::data::default_image_root;
use crate::core::rec::{eval_files, RecRunReport, RecSample, REC_THRESHOLDS};
use crate::core::runs::tail::EventTail;
use crate::core::runs::{self, Event};

/// Per-sample records of an evaluation, with their match table.
#[derive(Debug)]
pub struct Loaded {
    /// The samples, in file order.
    pub samples: Vec<RecSample>,
    /// Their status at each threshold.
    pub table: MatchTable,
}

/// One evaluation.
#[derive(Debug)]
pub struct EvalSource {
    /// `evals/<name>` or `<run> @ step N`.
    pub label: String,
    /// Accuracy at each of `REC_THRESHOLDS`.
    pub accuracy: [f64; 5],
    /// Mean IoU.
    pub mean_iou: f64,
    /// Samples evaluated.
    pub samples: usize,
    /// When it ended (Unix seconds), to tell a re-run apart.
    pub time: f64,
    /// The per-sample file.
    pub samples_path: PathBuf,
    /// The folder the samples' image paths are relative to.
    pub image_root: PathBuf,
    /// Drawn in the plot.
    pub shown: bool,
    /// The per-sample records once read (or why they could not be).
    pub loaded: Option<Result<Loaded, String>>,
}

impl EvalSource {
    /// Reads the per-sample records (once).
    pub fn load(&mut self) {
        if self.loaded.is_some() {
            return;
        }
        self.loaded = Some(
            match project::read_jsonl_plain::<RecSample>(&self.samples_path) {
                Ok((lines, errors)) if errors.is_empty() => {
                    let samples: Vec<RecSample> = lines.into_iter().map(|(_, s)| s).collect();
                    Ok(Loaded {
                        table: MatchTable::new(&samples),
                        samples,
                    })
                }
                Ok((_, errors)) => Err(format!(
                    "{} unreadable lines in {}, first: {}",
                    errors.len(),
                    self.samples_path.display(),
                    errors[0]
                )),
                Err(e) => Err(e.to_string()),
            },
        );
    }
}

fn resolve(root: &Path, p: &str) -> PathBuf {
    let p = Path::new(p);
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        root.join(p)
    }
}

/// Every evaluation of the project in `root`: `evals/` by name, then the
/// runs' evaluations by run and step. `tails` keeps each run's events
/// between scans, so a scan reads only what the runs appended since.
pub fn scan_sources(root: &Path, tails: &mut HashMap<PathBuf, EventTail>) -> Vec<EvalSource> {
    let mut out = Vec::new();
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(root.join("evals"))
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.join(eval_files::REPORT).is_file())
        .collect();
    dirs.sort();
    for d in dirs {
        let Ok(r) = runs::read_json::<RecRunReport>(&d.join(eval_files::REPORT)) else {
            continue;
        };
        let name = d
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        out.push(EvalSource {
            label: format!("evals/{name}"),
            accuracy: std::array::from_fn(|t| {
                f64::from(r.report.accuracy_at(REC_THRESHOLDS[t]).unwrap_or(f32::NAN))
            }),
            mean_iou: f64::from(r.report.mean_iou),
            samples: r.report.samples,
            time: r.time,
            samples_path: d.join(eval_files::SAMPLES),
            image_root: default_image_root(&resolve(root, &r.data)),
            shown: true,
            loaded: None,
        });
    }
    for run in runs::list_runs(&root.join("runs")) {
        let tail = tails
            .entry(run.path.clone())
            .or_insert_with(|| EventTail::new(&run));
        if tail.poll().is_err() {
            continue;
        }
        let cfg = run.read_config().ok();
        for e in &tail.events {
            let Event::Eval(ev) = e else { continue };
            let image_root = cfg
                .as_ref()
                .and_then(|c| c.eval.as_ref())
                .map(|s| match &s.image_root {
                    Some(r) => resolve(root, &r.display().to_string()),
                    None => default_image_root(&resolve(root, &s.data.display().to_string())),
                })
                .unwrap_or_else(|| default_image_root(&resolve(root, &ev.data)));
            let curve = ev.curve();
            out.push(EvalSource {
                label: format!("{} @ step {}", run.name(), ev.step),
                accuracy: std::array::from_fn(|t| curve[t].1),
                mean_iou: ev.mean_iou,
                samples: ev.samples,
                time: ev.time,
                samples_path: run.file(&ev.file),
                image_root,
                shown: true,
                loaded: None,
            });
        }
    }
    out
}
