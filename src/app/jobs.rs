//! Background `spr` processes started from the window: training runs and
//! evaluations.
//!
//! Each is a child process of the `spr` binary with the same arguments a
//! user would type, its stdout and stderr going to files (a run keeps
//! them in its folder), so the window never blocks on a pipe, a crash in
//! the child is the child's, and the app only polls the exit status and
//! reads the files' last lines. Stop sends SIGTERM: the trainer saves a
//! checkpoint and ends the run as *stopped*.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::Instant;

/// The `spr` executable children run: this one, unless `SPR_BIN` names
/// another (tests run the app inside a test binary).
pub fn spr_exe() -> PathBuf {
    std::env::var_os("SPR_BIN")
        .map(PathBuf::from)
        .or_else(|| std::env::current_exe().ok())
        .unwrap_or_else(|| PathBuf::from("spr"))
}

/// A running or finished child `spr` process.
#[derive(Debug)]
pub struct Job {
    child: Child,
    /// What it is, for the status line.
    pub label: String,
    /// Where its stdout goes.
    pub stdout: PathBuf,
    /// Where its stderr goes.
    pub stderr: PathBuf,
    /// When it started.
    pub started: Instant,
    exit: Option<ExitStatus>,
}

impl Job {
    /// Starts `spr args…` in `cwd` with its output in `stdout` / `stderr`
    /// (created, or appended to: a resumed run keeps its earlier output).
    pub fn spawn(
        label: impl Into<String>,
        args: &[String],
        cwd: &Path,
        stdout: PathBuf,
        stderr: PathBuf,
    ) -> std::io::Result<Job> {
        let open = |p: &Path| {
            if let Some(parent) = p.parent() {
                std::fs::create_dir_all(parent)?;
            }
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(p)
        };
        let mut command = Command::new(spr_exe());
        command
            .args(args)
            .current_dir(cwd)
            .stdin(Stdio::null())
            .stdout(open(&stdout)?)
            .stderr(open(&stderr)?)
            // Progress as plain lines, not a terminal bar.
            .env("SPR_PROGRESS", "lines");
        if crate::model::threads_env_is_ours() {
            // The child chooses its own threads per operation (a training
            // child splits its rows over the cores).
            command.env_remove("RAYON_NUM_THREADS");
        }
        let child = command.spawn()?;
        Ok(Job {
            child,
            label: label.into(),
            stdout,
            stderr,
            started: Instant::now(),
            exit: None,
        })
    }

    /// The exit status once the process has ended (never blocks).
    pub fn poll(&mut self) -> Option<ExitStatus> {
        if self.exit.is_none() {
            if let Ok(Some(s)) = self.child.try_wait() {
                self.exit = Some(s);
            }
        }
        self.exit
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Asks the process to stop (SIGTERM: the trainer checkpoints first).
    pub fn terminate(&mut self) {
        if self.poll().is_some() {
            return;
        }
        #[cfg(unix)]
        sigterm(self.child.id());
        #[cfg(not(unix))]
        {
            let _ = self.child.kill();
        }
    }

    /// The last `lines` lines of its stderr.
    pub fn stderr_tail(&self, lines: usize) -> String {
        tail_lines(&self.stderr, lines)
    }
}

impl Drop for Job {
    fn drop(&mut self) {
        // Reap a finished child; a running one keeps running (a training
        // run outlives the window; its folder says how it ends).
        let _ = self.child.try_wait();
    }
}

/// Sends SIGTERM to process `pid` (a trainer checkpoints and ends the
/// run as stopped). Our child before it is reaped, or the pid a run's lock
/// names while the lock is held, so the pid is not a recycled one.
#[cfg(unix)]
pub fn sigterm(pid: u32) {
    // SAFETY: kill(2) has no memory effects; a wrong pid is an error code.
    unsafe {
        libc::kill(pid as libc::pid_t, libc::SIGTERM);
    }
}

/// The last `lines` lines of a text file (at most its last 16 KiB are
/// read; empty when it cannot be read). Progress lines that overwrite
/// each other with `\r` keep only their last state.
pub fn tail_lines(path: &Path, lines: usize) -> String {
    let Ok(mut f) = File::open(path) else {
        return String::new();
    };
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    let from = len.saturating_sub(16 * 1024);
    if f.seek(SeekFrom::Start(from)).is_err() {
        return String::new();
    }
    let mut bytes = Vec::new();
    if f.read_to_end(&mut bytes).is_err() {
        return String::new();
    }
    let text = String::from_utf8_lossy(&bytes);
    let all: Vec<&str> = text
        .lines()
        .map(|l| l.rsplit('\r').next().unwrap_or(l))
        .filter(|l| !l.trim().is_empty())
        .collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// Words for an exit status: `exit code 1`, `killed by signal 9`.
pub fn describe_exit(status: ExitStatus) -> String {
    #[cfg(unix)]
    {
        use std::os::unix::process::ExitStatusExt;
        if let Some(sig) = status.signal() {
            return format!("killed by signal {sig}");
        }
    }
    match status.code() {
        Some(0) => "exited normally".into(),
        Some(c) => format!("exit code {c}"),
        None => "ended".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tail_keeps_the_last_lines_and_the_last_progress_state() {
        let tmp = tempfile::tempdir().unwrap();
        let p = tmp.path().join("err.log");
        std::fs::write(&p, "a\nb\n\nprogress 1/3\rprogress 3/3\nerror: boom\n").unwrap();
        assert_eq!(tail_lines(&p, 2), "progress 3/3\nerror: boom");
        assert_eq!(tail_lines(&tmp.path().join("none"), 3), "");
    }
}
