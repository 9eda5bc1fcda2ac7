//! A background thread for the GUI's file writes: whole writes and
//! merging saves of stage files, in the order they were queued.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex};

use super::{merge_write, write_atomic, Fingerprint, MergeKey, ProjectError};

/// What a background write did.
#[derive(Clone, Debug, PartialEq)]
pub struct WriteOutcome {
    /// The file.
    pub path: PathBuf,
    /// Its fingerprint right after the write, taken under its write lock.
    pub fingerprint: Option<Fingerprint>,
    /// Whether records another process wrote were kept in it (a merge that
    /// differs from what was sent: the sender should reload the file).
    pub kept_theirs: bool,
}

type Job = Box<dyn FnOnce() -> Result<WriteOutcome, ProjectError> + Send>;

/// File writes done in order on a background thread, so that a GUI never
/// waits on the disk. Outcomes and failures are kept for the caller.
pub struct BackgroundWriter {
    tx: mpsc::Sender<Job>,
    pending: Arc<AtomicUsize>,
    errors: Arc<Mutex<Vec<String>>>,
    outcomes: Arc<Mutex<Vec<WriteOutcome>>>,
}

impl std::fmt::Debug for BackgroundWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BackgroundWriter")
            .field("pending", &self.pending())
            .finish()
    }
}

impl Default for BackgroundWriter {
    fn default() -> Self {
        Self::new()
    }
}

impl BackgroundWriter {
    /// Start the writer thread (it ends when the writer is dropped).
    pub fn new() -> Self {
        let (tx, rx) = mpsc::channel::<Job>();
        let pending = Arc::new(AtomicUsize::new(0));
        let errors = Arc::new(Mutex::new(Vec::new()));
        let outcomes = Arc::new(Mutex::new(Vec::new()));
        let (p, e, o) = (pending.clone(), errors.clone(), outcomes.clone());
        std::thread::spawn(move || {
            for job in rx {
                match job() {
                    Ok(outcome) => {
                        if let Ok(mut v) = o.lock() {
                            v.push(outcome);
                        }
                    }
                    Err(err) => {
                        if let Ok(mut v) = e.lock() {
                            v.push(err.to_string());
                        }
                    }
                }
                p.fetch_sub(1, Ordering::SeqCst);
            }
        });
        Self {
            tx,
            pending,
            errors,
            outcomes,
        }
    }

    fn send(&self, path: &Path, job: Job) {
        self.pending.fetch_add(1, Ordering::SeqCst);
        if self.tx.send(job).is_err() {
            self.pending.fetch_sub(1, Ordering::SeqCst);
            if let Ok(mut v) = self.errors.lock() {
                v.push(format!("{}: the writer thread has stopped", path.display()));
            }
        }
    }

    /// Queue an atomic write of `bytes` to `path`.
    pub fn write(&self, path: PathBuf, bytes: Vec<u8>) {
        let p = path.clone();
        self.send(
            &p,
            Box::new(move || {
                write_atomic(&path, &bytes)?;
                Ok(WriteOutcome {
                    fingerprint: Fingerprint::of(&path),
                    path,
                    kept_theirs: false,
                })
            }),
        );
    }

    /// Queue a save of stage file `path` as a merge of `ours` (an edit of
    /// `base`) into what is on disk when the write runs ([`merge_write`]).
    pub fn merge(&self, path: PathBuf, key: MergeKey, base: Arc<Vec<u8>>, ours: Vec<u8>) {
        let p = path.clone();
        self.send(
            &p,
            Box::new(move || {
                let (merged, fingerprint) = merge_write(&path, key, &base, &ours)?;
                Ok(WriteOutcome {
                    path,
                    fingerprint,
                    kept_theirs: merged.kept_theirs,
                })
            }),
        );
    }

    /// Writes not finished yet.
    pub fn pending(&self) -> usize {
        self.pending.load(Ordering::SeqCst)
    }

    /// Failures since the last call.
    pub fn take_errors(&self) -> Vec<String> {
        self.errors
            .lock()
            .map(|mut v| std::mem::take(&mut *v))
            .unwrap_or_default()
    }

    /// Outcomes of the writes finished since the last call, in order.
    pub fn take_outcomes(&self) -> Vec<WriteOutcome> {
        self.outcomes
            .lock()
            .map(|mut v| std::mem::take(&mut *v))
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    #[test]
    fn background_writes_land_in_order_and_report_failures() {
        let dir = tempfile::tempdir().unwrap();
        let w = BackgroundWriter::new();
        let path = dir.path().join("a.jsonl");
        for i in 0..20 {
            w.write(path.clone(), format!("{i}").into_bytes());
        }
        let blocker = dir.path().join("file");
        fs::write(&blocker, b"x").unwrap();
        w.write(blocker.join("under-a-file.jsonl"), b"y".to_vec());
        while w.pending() > 0 {
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        assert_eq!(fs::read_to_string(&path).unwrap(), "19");
        let errors = w.take_errors();
        assert_eq!(errors.len(), 1);
        assert!(errors[0].contains("under-a-file.jsonl"), "{errors:?}");
    }
}
