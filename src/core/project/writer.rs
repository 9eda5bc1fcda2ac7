//! A background thread for the GUI's file writes.

use std::path::PathBuf;

use super::write_atomic;

/// Atomic file writes done in order on a background thread, so that a GUI
/// never waits on the disk. Failures are kept for the caller to show.
#[derive(Debug)]
pub struct BackgroundWriter {
    tx: std::sync::mpsc::Sender<(PathBuf, Vec<u8>)>,
    pending: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    errors: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

impl Default for BackgroundWriter {
    fn default() -> Self {
        Self::new()
    }
}

impl BackgroundWriter {
    /// Start the writer thread (it ends when the writer is dropped).
    pub fn new() -> Self {
        use std::sync::atomic::Ordering;
        let (tx, rx) = std::sync::mpsc::channel::<(PathBuf, Vec<u8>)>();
        let pending = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let errors = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let (p, e) = (pending.clone(), errors.clone());
        std::thread::spawn(move || {
            for (path, bytes) in rx {
                if let Err(err) = write_atomic(&path, &bytes) {
                    if let Ok(mut v) = e.lock() {
                        v.push(err.to_string());
                    }
                }
                p.fetch_sub(1, Ordering::SeqCst);
            }
        });
        Self {
            tx,
            pending,
            errors,
        }
    }

    /// Queue an atomic write of `bytes` to `path`.
    pub fn write(&self, path: PathBuf, bytes: Vec<u8>) {
        self.pending
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        if self.tx.send((path.clone(), bytes)).is_err() {
            self.pending
                .fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
            if let Ok(mut v) = self.errors.lock() {
                v.push(format!("{}: the writer thread has stopped", path.display()));
            }
        }
    }

    /// Writes not finished yet.
    pub fn pending(&self) -> usize {
        self.pending.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Failures since the last call.
    pub fn take_errors(&self) -> Vec<String> {
        self.errors
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
