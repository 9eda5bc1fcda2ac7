//! The run folder: the contract between the trainer, the CLI and the GUI.
//!
//! A run lives in one folder (`runs/<name>/`) that can be read without the
//! trainer or any tensor library:
//!
//! | file | what | written by |
//! |---|---|---|
//! | `config.json` | the [`TrainConfig`] | the trainer, once, atomically |
//! | `events.jsonl` | one [`Event`] per line: steps, evaluations, starts and ends | the trainer, appended and flushed line by line |
//! | `run.lock` | the pid of the trainer holding the run, under an exclusive file lock while it runs | the trainer |
//! | `checkpoint-<step>/` | `adapter/` or `weights.safetensors`, `optimizer.safetensors`, `trainer_state.json` | the trainer, built aside and renamed in whole |
//! | `adapter/` / `model/` | the final LoRA adapter (PEFT layout) / full model (llava-hf layout) | the trainer, at the end |
//! | `ref_logps.safetensors` | cached reference log-probs | the trainer |
//! | `eval/step-<step>.jsonl` | per-sample REC records of an evaluation during training | the trainer |
//! | `stdout.log`, `stderr.log` | the process's output, when a launcher (the GUI) captured it | the launcher |
//!
//! **Status** ([`RunDir::status`]): *running* while a process holds the
//! lock on `run.lock` (an OS file lock, released by the kernel whatever way
//! the process dies, so a stale pid never reads as running); otherwise the
//! last `end` event after the last `start` says *finished*, *stopped* or
//! *crashed* (with the error); a `start` with no `end` means the process
//! died without a word (SIGKILL, out of memory): *crashed*.

pub mod config;
pub mod events;
pub mod tail;

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

pub use config::TrainConfig;
pub use events::{EndEvent, EndStatus, EvalEvent, Event, StartEvent, StepEvent};

use crate::core::project::LineError;

/// File names inside a run folder.
pub mod files {
    /// The run's [`super::TrainConfig`].
    pub const CONFIG: &str = "config.json";
    /// Events, one JSON line each.
    pub const EVENTS: &str = "events.jsonl";
    /// The trainer's pid, locked while it runs.
    pub const LOCK: &str = "run.lock";
    /// Cached reference log-probs.
    pub const REF_LOGPS: &str = "ref_logps.safetensors";
    /// The final adapter folder.
    pub const ADAPTER: &str = "adapter";
    /// The final model folder of a full fine-tuning run.
    pub const MODEL: &str = "model";
    /// Per-sample files of evaluations during training.
    pub const EVAL_DIR: &str = "eval";
    /// The process's standard output, when captured by a launcher.
    pub const STDOUT: &str = "stdout.log";
    /// The process's standard error, when captured by a launcher.
    pub const STDERR: &str = "stderr.log";
    /// Prefix of checkpoint folders (`checkpoint-<step>`).
    pub const CHECKPOINT_PREFIX: &str = "checkpoint-";
    /// Inside a checkpoint: the adapter folder.
    pub const CKPT_ADAPTER: &str = "adapter";
    /// Inside a checkpoint of a full fine-tuning run: the trainable weights.
    pub const CKPT_WEIGHTS: &str = "weights.safetensors";
    /// Inside a checkpoint: AdamW moments.
    pub const CKPT_OPTIMIZER: &str = "optimizer.safetensors";
    /// Inside a checkpoint: step, data order, optimizer step count.
    pub const CKPT_STATE: &str = "trainer_state.json";
}

/// Errors reading or writing a run folder; each names the file.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// A file could not be read or written.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// A JSON file could not be parsed or encoded.
    #[error("{}: {message}", path.display())]
    Json {
        /// The file.
        path: PathBuf,
        /// serde's message.
        message: String,
    },
    /// Another process is training this run.
    #[error("{}: the run is in use by another trainer (pid {})", path.display(), pid.map(|p| p.to_string()).unwrap_or_else(|| "unknown".into()))]
    Locked {
        /// The lock file.
        path: PathBuf,
        /// The holder's pid, when it could be read.
        pid: Option<u32>,
    },
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> RunError + '_ {
    move |source| RunError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// A run's state, read from its folder.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RunStatus {
    /// A trainer process holds the run.
    Running {
        /// Its pid, when readable.
        pid: Option<u32>,
    },
    /// Every step ran.
    Finished,
    /// Stopped on request, with a checkpoint: resumable.
    Stopped,
    /// Ended by an error or killed.
    Crashed {
        /// What happened, in words.
        message: String,
    },
}

impl RunStatus {
    /// `running`, `finished`, `stopped` or `crashed`.
    pub fn label(&self) -> &'static str {
        match self {
            RunStatus::Running { .. } => "running",
            RunStatus::Finished => "finished",
            RunStatus::Stopped => "stopped",
            RunStatus::Crashed { .. } => "crashed",
        }
    }
}

/// A complete checkpoint folder.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Checkpoint {
    /// The step it holds.
    pub step: u64,
    /// Its folder.
    pub path: PathBuf,
}

/// A run folder.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RunDir {
    /// The folder.
    pub path: PathBuf,
}

impl RunDir {
    /// The run in `path` (nothing is read yet).
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self { path: path.into() }
    }

    /// The folder's name.
    pub fn name(&self) -> String {
        self.path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| self.path.display().to_string())
    }

    /// A path inside the run.
    pub fn file(&self, name: &str) -> PathBuf {
        self.path.join(name)
    }

    /// Reads `config.json`.
    pub fn read_config(&self) -> Result<TrainConfig, RunError> {
        read_json(&self.file(files::CONFIG))
    }

    /// Writes `config.json` atomically (the folder is created).
    pub fn write_config(&self, cfg: &TrainConfig) -> Result<(), RunError> {
        write_json(&self.file(files::CONFIG), cfg)
    }

    /// Every readable event in file order, and the lines that were not
    /// (a missing file is no events). A last line without its newline is
    /// being written: it is left for the next read, not reported.
    pub fn read_events(&self) -> Result<(Vec<Event>, Vec<LineError>), RunError> {
        let path = self.file(files::EVENTS);
        let mut text = String::new();
        match File::open(&path) {
            Ok(mut f) => {
                f.read_to_string(&mut text).map_err(io_err(&path))?;
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok((vec![], vec![])),
            Err(e) => return Err(io_err(&path)(e)),
        }
        Ok(parse_events(&path, &text))
    }

    /// The complete checkpoints (those with a trainer state), by step.
    pub fn checkpoints(&self) -> Result<Vec<Checkpoint>, RunError> {
        let mut out = Vec::new();
        let entries = match fs::read_dir(&self.path) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
            Err(e) => return Err(io_err(&self.path)(e)),
        };
        for entry in entries {
            let entry = entry.map_err(io_err(&self.path))?;
            let name = entry.file_name();
            let Some(step) = name
                .to_str()
                .and_then(|n| n.strip_prefix(files::CHECKPOINT_PREFIX))
                .and_then(|s| s.parse::<u64>().ok())
            else {
                continue;
            };
            let path = entry.path();
            if path.join(files::CKPT_STATE).is_file() {
                out.push(Checkpoint { step, path });
            }
        }
        out.sort_by_key(|c| c.step);
        Ok(out)
    }

    /// The checkpoint with the highest step.
    pub fn latest_checkpoint(&self) -> Result<Option<Checkpoint>, RunError> {
        Ok(self.checkpoints()?.pop())
    }

    /// The folder of the checkpoint of `step`.
    pub fn checkpoint_dir(&self, step: u64) -> PathBuf {
        self.file(&format!("{}{step}", files::CHECKPOINT_PREFIX))
    }

    /// Where the per-sample records of an evaluation at `step` go,
    /// relative to the run folder.
    pub fn eval_file(step: u64) -> String {
        format!("{}/step-{step:06}.jsonl", files::EVAL_DIR)
    }

    /// The pid of the process holding the run's lock, if one does.
    pub fn lock_holder(&self) -> Option<Option<u32>> {
        let path = self.file(files::LOCK);
        let file = File::open(&path).ok()?;
        match file.try_lock_shared() {
            Ok(()) => {
                let _ = file.unlock();
                None
            }
            Err(fs::TryLockError::WouldBlock) => {
                let mut text = String::new();
                let _ = (&file).read_to_string(&mut text);
                Some(text.trim().parse().ok())
            }
            Err(fs::TryLockError::Error(_)) => None,
        }
    }

    /// The run's status (see the module docs).
    pub fn status(&self) -> Result<RunStatus, RunError> {
        if let Some(pid) = self.lock_holder() {
            return Ok(RunStatus::Running { pid });
        }
        let (events, _) = self.read_events()?;
        Ok(status_from_events(&events))
    }

    /// Keeps the step and evaluation lines of `events.jsonl` whose step is
    /// at most `step` (and every start and end line), atomically: what a
    /// resume from the checkpoint of `step` does first. A last line without
    /// its newline (a write cut short by a kill) is dropped; complete lines
    /// that do not parse are kept as they are.
    pub fn truncate_events(&self, step: u64) -> Result<(), RunError> {
        let path = self.file(files::EVENTS);
        let text = match fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(io_err(&path)(e)),
        };
        let complete = text.rfind('\n').map_or("", |i| &text[..=i]);
        let mut kept = String::new();
        for line in complete.lines() {
            let keep = match Event::from_line(line) {
                Ok(Event::Step(e)) => e.step <= step,
                Ok(Event::Eval(e)) => e.step <= step,
                Ok(Event::Start(_) | Event::End(_)) => true,
                Err(_) => !line.trim().is_empty(),
            };
            if keep {
                kept.push_str(line);
                kept.push('\n');
            }
        }
        crate::core::atomic::write_atomic(&path, kept.as_bytes()).map_err(io_err(&path))
    }
}

/// Events of a file's text, and its unreadable lines.
pub fn parse_events(path: &Path, text: &str) -> (Vec<Event>, Vec<LineError>) {
    let mut events = Vec::new();
    let mut errors = Vec::new();
    let complete = match text.rfind('\n') {
        Some(i) => &text[..=i],
        None => "",
    };
    for (i, line) in complete.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        match Event::from_line(line) {
            Ok(e) => events.push(e),
            Err(message) => errors.push(LineError {
                file: path.to_path_buf(),
                line: i + 1,
                message,
            }),
        }
    }
    (events, errors)
}

/// The status the events give when no process holds the run.
pub fn status_from_events(events: &[Event]) -> RunStatus {
    let last_start = events.iter().rposition(|e| matches!(e, Event::Start(_)));
    let Some(start) = last_start else {
        return RunStatus::Crashed {
            message: "never started: events.jsonl has no start".into(),
        };
    };
    let end = events[start..].iter().rev().find_map(|e| match e {
        Event::End(end) => Some(end),
        _ => None,
    });
    match end {
        Some(EndEvent {
            status: EndStatus::Finished,
            ..
        }) => RunStatus::Finished,
        Some(EndEvent {
            status: EndStatus::Stopped,
            ..
        }) => RunStatus::Stopped,
        Some(EndEvent {
            status: EndStatus::Crashed,
            message,
            ..
        }) => RunStatus::Crashed {
            message: message.clone().unwrap_or_else(|| "crashed".into()),
        },
        None => RunStatus::Crashed {
            message: "the trainer process ended without a final event (killed, or out of memory?)"
                .into(),
        },
    }
}

/// The runs in `dir` (sub-folders holding a `config.json`), by name.
pub fn list_runs(dir: &Path) -> Vec<RunDir> {
    let mut runs: Vec<RunDir> = fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.join(files::CONFIG).is_file())
        .map(RunDir::new)
        .collect();
    runs.sort_by(|a, b| a.path.cmp(&b.path));
    runs
}

/// A run's one-line summary, for a runs list.
#[derive(Clone, Debug, PartialEq)]
pub struct RunOverview {
    /// The run.
    pub run: RunDir,
    /// Its config, when readable.
    pub config: Option<TrainConfig>,
    /// Its status.
    pub status: RunStatus,
    /// The last step logged.
    pub steps_done: u64,
    /// The last step's loss.
    pub last_loss: Option<f64>,
    /// The last step's reward accuracy.
    pub last_accuracy: Option<f64>,
    /// The last evaluation.
    pub last_eval: Option<EvalEvent>,
}

impl RunOverview {
    /// Reads a run's summary.
    pub fn read(run: &RunDir) -> Result<Self, RunError> {
        let (events, _) = run.read_events()?;
        Ok(Self::from_events(
            run,
            run.read_config().ok(),
            &events,
            run.lock_holder(),
        ))
    }

    /// The summary of events already read (`lock` as
    /// [`RunDir::lock_holder`] gives it).
    pub fn from_events(
        run: &RunDir,
        config: Option<TrainConfig>,
        events: &[Event],
        lock: Option<Option<u32>>,
    ) -> Self {
        let status = match lock {
            Some(pid) => RunStatus::Running { pid },
            None => status_from_events(events),
        };
        let last_step = events.iter().rev().find_map(|e| match e {
            Event::Step(s) => Some(s),
            _ => None,
        });
        let last_eval = events.iter().rev().find_map(|e| match e {
            Event::Eval(s) => Some(s.clone()),
            _ => None,
        });
        Self {
            run: run.clone(),
            config,
            status,
            steps_done: last_step.map_or(0, |s| s.step),
            last_loss: last_step.map(|s| s.loss),
            last_accuracy: last_step.and_then(|s| s.rewards_accuracies),
            last_eval,
        }
    }
}

/// The lock a trainer holds on its run while it runs (see the module
/// docs); released when dropped or when the process dies.
#[derive(Debug)]
pub struct RunLock {
    _file: File,
}

impl RunLock {
    /// Takes the run's lock and writes this process's pid into it, or
    /// fails with [`RunError::Locked`] when another process holds it. A
    /// reader checking the status holds the lock for an instant, so a busy
    /// lock is retried for up to a second.
    pub fn acquire(run: &RunDir) -> Result<RunLock, RunError> {
        fs::create_dir_all(&run.path).map_err(io_err(&run.path))?;
        let path = run.file(files::LOCK);
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(io_err(&path))?;
        let mut tries = 0;
        loop {
            match file.try_lock() {
                Ok(()) => break,
                Err(fs::TryLockError::WouldBlock) if tries < 20 => {
                    tries += 1;
                    std::thread::sleep(std::time::Duration::from_millis(50));
                }
                Err(fs::TryLockError::WouldBlock) => {
                    let mut text = String::new();
                    let _ = file.read_to_string(&mut text);
                    return Err(RunError::Locked {
                        path,
                        pid: text.trim().parse().ok(),
                    });
                }
                Err(fs::TryLockError::Error(e)) => return Err(io_err(&path)(e)),
            }
        }
        file.set_len(0).map_err(io_err(&path))?;
        file.write_all(std::process::id().to_string().as_bytes())
            .and_then(|_| file.flush())
            .map_err(io_err(&path))?;
        Ok(RunLock { _file: file })
    }
}

/// `events.jsonl` opened for appending: each event is one `write` of a
/// whole line, flushed, so a reader never sees half a line except at the
/// very end while it is written.
#[derive(Debug)]
pub struct EventLog {
    file: File,
    path: PathBuf,
}

impl EventLog {
    /// Opens (creating) the run's events file for appending.
    pub fn open(run: &RunDir) -> Result<Self, RunError> {
        let path = run.file(files::EVENTS);
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(io_err(&path))?;
        Ok(Self { file, path })
    }

    /// Appends one event.
    pub fn write(&mut self, event: &Event) -> Result<(), RunError> {
        let line = event.to_line() + "\n";
        self.file
            .write_all(line.as_bytes())
            .and_then(|_| self.file.flush())
            .map_err(io_err(&self.path))
    }
}

/// Reads a JSON file.
pub fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T, RunError> {
    let bytes = fs::read(path).map_err(io_err(path))?;
    serde_json::from_slice(&bytes).map_err(|e| RunError::Json {
        path: path.to_path_buf(),
        message: e.to_string(),
    })
}

/// Writes a value as pretty JSON, atomically.
pub fn write_json<T: serde::Serialize>(path: &Path, value: &T) -> Result<(), RunError> {
    let bytes = serde_json::to_vec_pretty(value).map_err(|e| RunError::Json {
        path: path.to_path_buf(),
        message: e.to_string(),
    })?;
    crate::core::atomic::write_atomic(path, &bytes).map_err(io_err(path))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn end(status: EndStatus, message: Option<&str>) -> Event {
        Event::End(EndEvent {
            status,
            step: 2,
            message: message.map(str::to_string),
            time: 0.0,
        })
    }

    fn start(step: u64) -> Event {
        Event::Start(StartEvent {
            step,
            pid: 1,
            time: 0.0,
        })
    }

    #[test]
    fn status_follows_the_last_start() {
        use RunStatus::*;
        assert!(matches!(status_from_events(&[]), Crashed { .. }));
        assert_eq!(
            status_from_events(&[start(0), end(EndStatus::Finished, None)]),
            Finished
        );
        // Stopped, then resumed and killed.
        let killed = status_from_events(&[start(0), end(EndStatus::Stopped, None), start(2)]);
        assert!(
            matches!(&killed, Crashed { message } if message.contains("without a final event"))
        );
        assert_eq!(
            status_from_events(&[start(0), end(EndStatus::Stopped, None)]),
            Stopped
        );
        assert_eq!(
            status_from_events(&[start(0), end(EndStatus::Crashed, Some("no such model"))]),
            Crashed {
                message: "no such model".into()
            }
        );
    }

    #[test]
    fn the_lock_marks_a_run_running_and_refuses_a_second_trainer() {
        let dir = tempfile::tempdir().unwrap();
        let run = RunDir::new(dir.path().join("r"));
        assert_eq!(run.lock_holder(), None);
        let lock = RunLock::acquire(&run).unwrap();
        assert_eq!(run.lock_holder(), Some(Some(std::process::id())));
        assert_eq!(
            run.status().unwrap(),
            RunStatus::Running {
                pid: Some(std::process::id())
            }
        );
        // The same process opening the file again gets a separate lock:
        // refused, as a second trainer would be.
        let err = RunLock::acquire(&run).unwrap_err().to_string();
        assert!(err.contains("in use by another trainer"), "{err}");
        drop(lock);
        assert_eq!(run.lock_holder(), None);
        RunLock::acquire(&run).unwrap();
    }

    #[test]
    fn events_are_appended_read_back_and_truncated() {
        let dir = tempfile::tempdir().unwrap();
        let run = RunDir::new(dir.path());
        let mut log = EventLog::open(&run).unwrap();
        log.write(&start(0)).unwrap();
        for step in 1..=4 {
            log.write(&Event::Step(StepEvent {
                step,
                epoch: 0.0,
                loss: 1.0 / step as f64,
                rewards_chosen: None,
                rewards_rejected: None,
                rewards_margins: None,
                rewards_accuracies: None,
                logps_chosen: None,
                logps_rejected: None,
                lr: 0.1,
                grad_norm: 1.0,
                tokens_per_s: 1.0,
                time: None,
            }))
            .unwrap();
        }
        log.write(&end(EndStatus::Stopped, None)).unwrap();
        // A line being written (no newline yet) is not read, nor reported.
        let path = run.file(files::EVENTS);
        let mut f = OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(b"{\"step\": 5, \"epo").unwrap();
        let (events, errors) = run.read_events().unwrap();
        assert_eq!(events.len(), 6);
        assert!(errors.is_empty());
        assert_eq!(run.status().unwrap(), RunStatus::Stopped);
        run.truncate_events(2).unwrap();
        let (events, errors) = run.read_events().unwrap();
        let steps: Vec<u64> = events.iter().map(Event::step).collect();
        assert_eq!(steps, [0, 1, 2, 2]);
        // The half line is gone.
        assert!(errors.is_empty());
        assert!(fs::read_to_string(&path).unwrap().ends_with("}\n"));
    }

    #[test]
    fn checkpoints_are_listed_complete_only() {
        let dir = tempfile::tempdir().unwrap();
        let run = RunDir::new(dir.path());
        for (step, complete) in [(10, true), (2, true), (30, false)] {
            let d = run.checkpoint_dir(step);
            fs::create_dir_all(&d).unwrap();
            if complete {
                fs::write(d.join(files::CKPT_STATE), "{}").unwrap();
            }
        }
        let steps: Vec<u64> = run.checkpoints().unwrap().iter().map(|c| c.step).collect();
        assert_eq!(steps, [2, 10]);
        assert_eq!(run.latest_checkpoint().unwrap().unwrap().step, 10);
    }
}
