//! Locks that let several processes share one project: the GUI, a
//! `spr generate` in a terminal, a `spr score` on a cluster node.
//!
//! Two kinds, both advisory `flock`-style locks on small files in a hidden
//! `.spr-locks/` folder beside the file they guard (never on the file
//! itself: atomic writes replace a file's inode, and a lock on the old one
//! would guard nothing). The operating system drops a lock when its holder
//! dies, SIGKILL included, so a crash never leaves a project locked.
//!
//! - A **write lock** (`<name>.write`) is held for the few milliseconds of
//!   a read–modify–write of a stage file: an append, a merge of the GUI's
//!   edits into what is on disk, a whole rewrite. Writers wait for it;
//!   readers that need a file and its fingerprint to agree take it shared.
//! - A **job lock** (`<name>.job`) is held by a stage command for its
//!   whole run (`spr score` for `scores.jsonl`, `spr generate` for the file
//!   it appends to), so that a second run of the same stage stops at once
//!   with a message naming the first (its pid, command line and start
//!   time, which the holder writes into the lock file) instead of both
//!   computing for an hour and one overwriting the other.

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};

use super::ProjectError;

/// The folder of lock files beside the files they guard.
pub const LOCK_DIR: &str = ".spr-locks";

fn lock_file(path: &Path, kind: &str) -> Result<(PathBuf, File), ProjectError> {
    let dir = crate::core::atomic::parent_dir(path).join(LOCK_DIR);
    fs::create_dir_all(&dir).map_err(|e| ProjectError::io(&dir, e))?;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let lock = dir.join(format!("{name}.{kind}"));
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&lock)
        .map_err(|e| ProjectError::io(&lock, e))?;
    Ok((lock, file))
}

/// A held write lock on one file; released when dropped (or when the
/// process dies).
#[derive(Debug)]
pub struct WriteLock {
    _file: File,
}

/// Waits for and takes the exclusive write lock of `path`.
pub fn write_lock(path: &Path) -> Result<WriteLock, ProjectError> {
    let (lock, file) = lock_file(path, "write")?;
    file.lock().map_err(|e| ProjectError::io(&lock, e))?;
    Ok(WriteLock { _file: file })
}

/// Waits for and takes the write lock of `path` shared: no writer changes
/// the file while it is held, other readers may hold it too.
pub fn read_lock(path: &Path) -> Result<WriteLock, ProjectError> {
    let (lock, file) = lock_file(path, "write")?;
    file.lock_shared().map_err(|e| ProjectError::io(&lock, e))?;
    Ok(WriteLock { _file: file })
}

/// A held job lock; released when dropped (or when the process dies).
#[derive(Debug)]
pub struct JobLock {
    file: File,
}

impl Drop for JobLock {
    fn drop(&mut self) {
        // Still holding the lock: clear the holder's note, so that the
        // next refused process never reads this one's.
        let _ = self.file.set_len(0);
    }
}

/// Who holds a job lock, as its holder wrote it. A holder writes its note
/// right after taking the lock, so an empty note is read again for a
/// moment before giving up on it.
fn holder_of(file: &mut File) -> String {
    for _ in 0..40 {
        let mut text = String::new();
        let _ = file.rewind();
        let _ = file.read_to_string(&mut text);
        let text = text.trim();
        if !text.is_empty() {
            return text.to_string();
        }
        std::thread::sleep(std::time::Duration::from_millis(25));
    }
    "another process (it has not said which)".to_string()
}

/// Takes the job lock of `path` for `command` (a short description such
/// as `spr score demo`), or fails at once with
/// [`ProjectError::Busy`] naming the process that holds it.
pub fn job_lock(path: &Path, command: &str) -> Result<JobLock, ProjectError> {
    let (lock, mut file) = lock_file(path, "job")?;
    match file.try_lock() {
        Ok(()) => {}
        Err(fs::TryLockError::WouldBlock) => {
            return Err(ProjectError::Busy {
                path: path.to_path_buf(),
                holder: holder_of(&mut file),
            })
        }
        Err(fs::TryLockError::Error(e)) => return Err(ProjectError::io(&lock, e)),
    }
    let since = utc(crate::core::runs::events::now_s() as u64);
    let me = format!(
        "`{command}` (pid {}, since {since} UTC)",
        std::process::id()
    );
    let io = |e| ProjectError::io(&lock, e);
    file.set_len(0).map_err(io)?;
    file.rewind().map_err(io)?;
    file.write_all(me.as_bytes()).map_err(io)?;
    Ok(JobLock { file })
}

/// `YYYY-MM-DD HH:MM:SS` in UTC of `secs` since the Unix epoch.
fn utc(secs: u64) -> String {
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02}",
        rem / 3_600,
        rem % 3_600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_job_is_refused_with_the_holder_named() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("scores.jsonl");
        let first = job_lock(&path, "spr score demo").unwrap();
        let err = job_lock(&path, "spr score demo").unwrap_err().to_string();
        assert!(err.contains("scores.jsonl"), "{err}");
        assert!(
            err.contains(&format!("`spr score demo` (pid {}", std::process::id())),
            "{err}"
        );
        drop(first);
        let again = job_lock(&path, "spr score again").unwrap();
        drop(again);
        // Lock files live apart from the data.
        assert!(!path.exists());
        assert!(dir.path().join(LOCK_DIR).join("scores.jsonl.job").is_file());
    }

    #[test]
    fn write_locks_exclude_each_other_and_readers_share() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("candidates.jsonl");
        let r1 = read_lock(&path).unwrap();
        let r2 = read_lock(&path).unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let p = path.clone();
        let t = std::thread::spawn(move || {
            let _w = write_lock(&p).unwrap();
            tx.send(()).unwrap();
        });
        std::thread::sleep(std::time::Duration::from_millis(100));
        assert!(rx.try_recv().is_err(), "the writer got in past two readers");
        drop((r1, r2));
        rx.recv_timeout(std::time::Duration::from_secs(10)).unwrap();
        t.join().unwrap();
    }

    #[test]
    fn utc_dates_are_civil() {
        assert_eq!(utc(0), "1970-01-01 00:00:00");
        assert_eq!(utc(951_782_400), "2000-02-29 00:00:00");
        assert_eq!(utc(1_796_403_723), "2026-12-04 17:02:03");
    }
}
