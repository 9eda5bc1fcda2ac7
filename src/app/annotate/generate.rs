//! "Generate" for the selected region: the project's model writes
//! candidates in the background with the same code as `spr generate`
//! (`infer::candidates::generate`, restricted to one query), cancellable.
//!
//! The generator appends finished blocks to a file of its own beside the
//! project's files (never to `candidates.jsonl`, which the workspace
//! owns); the app reads the complete lines that appeared since the last
//! frame and adds each record as an ordinary edit, so candidates stream
//! into the list as they finish, are saved with the project, and can be
//! undone. The file is removed when the job ends.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Instant;

use crate::core::project::{CandidateRecord, Project};
use crate::core::tail::LineTail;
use crate::infer::candidates::{self, GenerateOptions, GenerateProgress, GenerateSummary};

/// The file the GUI's generator appends to, in the project folder.
pub const GUI_OUT: &str = "candidates.gui-generate.jsonl";

/// A generation running for one region.
#[derive(Debug)]
pub struct GenerateJob {
    /// The region.
    pub query: String,
    stop: Arc<AtomicBool>,
    progress: Arc<Mutex<GenerateProgress>>,
    handle: Option<JoinHandle<Result<GenerateSummary, String>>>,
    /// The generator's file, read as it grows.
    out: LineTail,
    /// When it started.
    pub started: Instant,
}

impl GenerateJob {
    /// Starts generating for `query` with `model` (a folder, relative to
    /// the project or absolute, or a hub id) and the project's
    /// `[generate]` settings.
    pub fn start(root: &Path, model: &str, query: &str) -> Result<GenerateJob, String> {
        let project = Project::open(root).map_err(|e| e.to_string())?;
        let out = root.join(GUI_OUT);
        // A file left by a window that died: its records were never added
        // and would be taken as present.
        match std::fs::remove_file(&out) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(format!("cannot remove {}: {e}", out.display())),
        }
        let model_path = root.join(model);
        let model = if model_path.exists() {
            model_path.display().to_string()
        } else {
            model.to_string()
        };
        let opts = GenerateOptions {
            model,
            adapter: None,
            config: project.config.generate.clone(),
            batch: 16,
            shard: None,
            limit: None,
            queries: Some(vec![query.to_string()]),
            out: Some(out.clone()),
        };
        let stop = Arc::new(AtomicBool::new(false));
        let progress = Arc::new(Mutex::new(GenerateProgress::default()));
        let handle = {
            let (stop, progress) = (Arc::clone(&stop), Arc::clone(&progress));
            std::thread::Builder::new()
                .name("gui-generate".into())
                .spawn(move || {
                    let mut report = |p: &GenerateProgress| {
                        if let Ok(mut g) = progress.lock() {
                            *g = *p;
                        }
                    };
                    candidates::generate(&project, &opts, &mut report, &stop)
                        .map_err(|e| e.to_string())
                })
                .map_err(|e| format!("cannot start the generator: {e}"))?
        };
        Ok(GenerateJob {
            query: query.to_string(),
            stop,
            progress,
            handle: Some(handle),
            out: LineTail::new(out),
            started: Instant::now(),
        })
    }

    /// Progress so far.
    pub fn progress(&self) -> GenerateProgress {
        self.progress.lock().map(|g| *g).unwrap_or_default()
    }

    /// Asks the generator to stop after the block it is decoding.
    pub fn cancel(&self) {
        self.stop.store(true, Ordering::Relaxed);
    }

    /// Whether it was cancelled.
    pub fn cancelled(&self) -> bool {
        self.stop.load(Ordering::Relaxed)
    }

    /// Candidates finished since the last call (complete lines only), and
    /// lines that did not parse, as messages.
    pub fn new_candidates(&mut self) -> (Vec<CandidateRecord>, Vec<String>) {
        let new = match self.out.read() {
            Ok(new) => new,
            Err(e) => {
                return (
                    Vec::new(),
                    vec![format!("{}: {e}", self.out.path().display())],
                )
            }
        };
        let mut out = Vec::new();
        let mut bad = Vec::new();
        for (k, line) in new.text.lines().enumerate() {
            if line.trim().is_empty() {
                continue;
            }
            match serde_json::from_str::<CandidateRecord>(line) {
                Ok(c) => out.push(c),
                Err(e) => bad.push(format!(
                    "{}:{}: {e}",
                    self.out.path().display(),
                    new.first_line + k
                )),
            }
        }
        (out, bad)
    }

    /// The result once the generator has ended (the file is removed then).
    pub fn finished(&mut self) -> Option<Result<GenerateSummary, String>> {
        if !self.handle.as_ref()?.is_finished() {
            return None;
        }
        let r = self
            .handle
            .take()?
            .join()
            .unwrap_or_else(|_| Err("the generator panicked".into()));
        Some(r)
    }

    /// Removes the job's file (after its last candidates were read).
    pub fn clean_up(&self) {
        let _ = std::fs::remove_file(self.out.path());
    }
}
