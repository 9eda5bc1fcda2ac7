//! The training loop: preference optimisation (or supervised fine-tuning)
//! of LoRA adapters, or of every weight, on a LLaVA model, with
//! checkpoints that resume exactly.
//!
//! A run lives in one folder whose files are the contract of
//! [`crate::core::runs`]: `config.json` (the [`TrainConfig`]),
//! `events.jsonl` (a `start` line, one line per optimizer step with TRL's
//! metric names plus `lr`, `grad_norm`, `tokens_per_s` and `time`, REC
//! evaluations, an `end` line), `run.lock` (held while training),
//! `checkpoint-<step>/` ([`checkpoint`]), `ref_logps.safetensors` (the
//! reference model's log-probs per example, computed once with the
//! adapters disabled, [`logps`]) and, at the end, `adapter/` (PEFT layout)
//! or, for full fine-tuning, `model/` (a llava-hf folder).
//!
//! [`Trainer`] is the loop in parts: [`Trainer::setup`] loads the model and
//! data (and a checkpoint to resume from), [`Trainer::step`] runs one
//! optimizer step and logs it, [`Trainer::checkpoint`] saves, and
//! [`Trainer::finish`] writes the final adapter or model. [`train`] and
//! [`resume`] drive it, with the lock held and the `start` / `end` events
//! written whatever happens (an error becomes `end: crashed` with its
//! message, so a launcher such as the GUI can show it).
//!
//! With `tune = "full"` every language-model and projector weight trains
//! instead of adapters (used to train the tiny demo model from scratch).
//! With the `sft` objective only the chosen responses are run (one row per
//! example, no reference model), and TRL's prompt–completion rows are
//! accepted. Nothing in the loop draws random numbers besides the data
//! order (no dropout), so the [`DataOrder`] is the whole RNG state.

pub(crate) mod adamw;
mod checkpoint;
mod logps;
mod parallel;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use candle_core::backprop::GradStore;
use candle_core::{DType, Tensor, Var};

use crate::core::atomic;
use crate::core::rec::data::{self as rec_data, RecSet};
use crate::core::runs::config::ConfigError;
use crate::core::runs::config::EvalSettings;
use crate::core::runs::events::now_s;
use crate::core::runs::{
    EndEvent, EndStatus, EvalEvent, Event, EventLog, RunDir, RunError, RunLock, StartEvent,
    StepEvent,
};
use crate::infer::rec::RecEvalOptions;
use crate::model::lora::PeftLayout;
use crate::model::{FullWeights, LlavaBundle, LoraConfig, ModelError};
use crate::train::data::{self, DataError, DataOptions, DataOrder, PairExample, Side};
use crate::train::objectives::{self, LogpSums, Metrics, Objective, ObjectiveError, PairLogps};
use crate::train::schedule::{clip_grad_norm, ScheduleError};

pub use crate::core::runs::config::{TrainConfig, Tune};
pub use crate::core::runs::files;

use adamw::AdamW;
use checkpoint::{load_full_weights, save_checkpoint, TrainerState};
use logps::{batch_logps, reference_logps, FeatureCache, FeatureMode};

/// Errors of the trainer. Each names the file or step involved.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    /// Loading or running the model failed.
    #[error(transparent)]
    Model(#[from] ModelError),
    /// Loading or batching the data failed.
    #[error(transparent)]
    Data(#[from] DataError),
    /// The objective rejected its inputs.
    #[error(transparent)]
    Objective(#[from] ObjectiveError),
    /// The schedule or clipping failed.
    #[error(transparent)]
    Schedule(#[from] ScheduleError),
    /// A tensor operation failed.
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
    /// The run folder could not be read or written.
    #[error(transparent)]
    Run(#[from] RunError),
    /// A file could not be read or written.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// A JSON file could not be parsed or written.
    #[error("{}: invalid JSON: {source}", path.display())]
    Json {
        /// The file.
        path: PathBuf,
        /// The parse error.
        #[source]
        source: serde_json::Error,
    },
    /// A configuration value is out of range.
    #[error("config: {field}: {message}")]
    Config {
        /// The field.
        field: &'static str,
        /// What is wrong.
        message: String,
    },
    /// The data file holds no usable pair.
    #[error("{}: no usable preference pair ({skipped} skipped{first})", path.display())]
    EmptyDataset {
        /// The data file.
        path: PathBuf,
        /// Pairs skipped while loading.
        skipped: usize,
        /// `"; first: <reason>"` for the first skipped pair, or empty.
        first: String,
    },
    /// The loss became NaN or infinite; the state before the step was saved.
    #[error("step {step}: loss is {loss}; state before the step saved in {}", checkpoint.display())]
    NonFinite {
        /// The optimizer step (1-based) whose loss was not finite.
        step: u64,
        /// The loss value.
        loss: f64,
        /// The checkpoint written.
        checkpoint: PathBuf,
    },
    /// `resume` found no complete checkpoint.
    #[error("{}: no checkpoint to resume from", run_dir.display())]
    NoCheckpoint {
        /// The run folder.
        run_dir: PathBuf,
    },
    /// A checkpoint does not match the model or run.
    #[error("{}: {message}", path.display())]
    Checkpoint {
        /// The checkpoint file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
}

impl From<ConfigError> for TrainError {
    fn from(e: ConfigError) -> Self {
        TrainError::Config {
            field: e.field,
            message: e.message,
        }
    }
}

/// Result of this module.
pub type Result<T> = std::result::Result<T, TrainError>;

/// A step's loss must be finite: otherwise the run stops with the step and
/// a hint (the learning rate is the usual cause).
pub(crate) fn ensure_finite_loss(step: u64, loss: f64) -> Result<()> {
    if loss.is_finite() {
        Ok(())
    } else {
        Err(TrainError::Config {
            field: "lr",
            message: format!("step {step}: the loss is {loss}; lower the learning rate"),
        })
    }
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> TrainError + '_ {
    move |source| TrainError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// One optimizer step's record, passed to the progress callback and
/// written to `events.jsonl` as a [`StepEvent`].
#[derive(Clone, Debug, PartialEq)]
pub struct StepLog {
    /// Optimizer step, 1-based.
    pub step: u64,
    /// Total steps of the run.
    pub total_steps: u64,
    /// Fractional epoch after this step.
    pub epoch: f64,
    /// The objective's metrics, averaged over the micro-batches.
    pub metrics: Metrics,
    /// Learning rate used for this step.
    pub lr: f64,
    /// Gradient norm before clipping.
    pub grad_norm: f64,
    /// Real tokens processed per second in this step.
    pub tokens_per_s: f64,
    /// A supervised step (chosen responses only): the reward metrics mean
    /// nothing and are left out of the event.
    pub chosen_only: bool,
}

impl StepLog {
    /// The `events.jsonl` record, stamped with the current time.
    pub fn event(&self) -> StepEvent {
        let m = &self.metrics;
        let pref = |v: f64| (!self.chosen_only).then_some(v);
        StepEvent {
            step: self.step,
            epoch: self.epoch,
            loss: m.loss,
            rewards_chosen: pref(m.rewards_chosen),
            rewards_rejected: pref(m.rewards_rejected),
            rewards_margins: pref(m.rewards_margins),
            rewards_accuracies: pref(m.rewards_accuracies),
            logps_chosen: Some(m.logps_chosen),
            logps_rejected: pref(m.logps_rejected),
            lr: self.lr,
            grad_norm: self.grad_norm,
            tokens_per_s: self.tokens_per_s,
            time: Some(now_s()),
        }
    }
}

/// What a finished (or stopped) run reports.
#[derive(Clone, Debug, PartialEq)]
pub struct RunSummary {
    /// Optimizer steps completed in total (resumed steps included).
    pub steps: u64,
    /// Whether the stop flag ended the run early (a checkpoint was saved).
    pub stopped: bool,
    /// Loss of each step run by this call.
    pub losses: Vec<f64>,
    /// The last checkpoint written, if any.
    pub last_checkpoint: Option<PathBuf>,
    /// The final adapter folder, or the model folder of a full
    /// fine-tuning run (`None` when stopped early).
    pub output: Option<PathBuf>,
    /// Pairs used for training.
    pub examples: usize,
    /// Pairs skipped while loading (bad lines, too long, ...), each with
    /// its file, line and reason.
    pub skipped: Vec<data::Skipped>,
}

fn lora_config(cfg: &TrainConfig) -> LoraConfig {
    LoraConfig::new(cfg.lora_r, cfg.lora_alpha, cfg.lora_targets.iter().copied())
}

/// Starts a new run in `run_dir` (created; `config.json` written, any old
/// `events.jsonl` emptied) and trains until `cfg.total_steps` or until
/// `stop` is set.
///
/// `progress` is called after every optimizer step. When `stop` becomes
/// true, a checkpoint is saved before returning (`stopped: true`); resume
/// it with [`resume`].
pub fn train(
    cfg: &TrainConfig,
    run_dir: &Path,
    progress: impl FnMut(&StepLog),
    stop: &AtomicBool,
) -> Result<RunSummary> {
    cfg.validate()?;
    let run = RunDir::new(run_dir);
    let lock = RunLock::acquire(&run)?;
    run.write_config(cfg)?;
    let events = run.file(files::EVENTS);
    atomic::write_atomic(&events, b"").map_err(io_err(&events))?;
    supervise(&run, lock, 0, || {
        Trainer::setup(cfg, &run, None)?.run(progress, stop)
    })
}

/// Continues the run in `run_dir` from its latest checkpoint, with the same
/// data order, optimizer state and step count as if it had never stopped.
/// Lines of `events.jsonl` past the checkpoint are dropped first.
pub fn resume(
    run_dir: &Path,
    progress: impl FnMut(&StepLog),
    stop: &AtomicBool,
) -> Result<RunSummary> {
    let run = RunDir::new(run_dir);
    let cfg = run.read_config()?;
    cfg.validate()?;
    let lock = RunLock::acquire(&run)?;
    let ckpt = run
        .latest_checkpoint()?
        .ok_or_else(|| TrainError::NoCheckpoint {
            run_dir: run_dir.to_path_buf(),
        })?;
    run.truncate_events(ckpt.step)?;
    supervise(&run, lock, ckpt.step, || {
        Trainer::setup(&cfg, &run, Some(&ckpt.path))?.run(progress, stop)
    })
}

/// The complete checkpoint with the highest step in `run_dir`, if any.
pub fn latest_checkpoint(run_dir: &Path) -> Result<Option<PathBuf>> {
    Ok(RunDir::new(run_dir).latest_checkpoint()?.map(|c| c.path))
}

/// Runs `body` between a `start` and an `end` event, holding the lock.
fn supervise(
    run: &RunDir,
    _lock: RunLock,
    step: u64,
    body: impl FnOnce() -> Result<RunSummary>,
) -> Result<RunSummary> {
    let mut log = EventLog::open(run)?;
    log.write(&Event::Start(StartEvent {
        step,
        pid: std::process::id(),
        time: now_s(),
    }))?;
    let result = body();
    let end = match &result {
        Ok(s) => EndEvent {
            status: if s.stopped {
                EndStatus::Stopped
            } else {
                EndStatus::Finished
            },
            step: s.steps,
            message: None,
            time: now_s(),
        },
        Err(e) => EndEvent {
            status: EndStatus::Crashed,
            step: run
                .latest_checkpoint()
                .ok()
                .flatten()
                .map_or(step, |c| c.step),
            message: Some(e.to_string()),
            time: now_s(),
        },
    };
    // The run's own error matters more than a failure to log its end.
    let logged = log.write(&Event::End(end));
    let summary = result?;
    logged?;
    Ok(summary)
}

/// A run being trained: the model, the data, the optimizer and the
/// position in the run.
pub struct Trainer {
    cfg: TrainConfig,
    run: RunDir,
    bundle: LlavaBundle,
    full: Option<FullWeights>,
    dataset: data::PairDataset,
    features: FeatureCache,
    refs: Option<(Tensor, Tensor)>,
    n_segments: Option<usize>,
    opt: AdamW,
    vars: Vec<Var>,
    state: TrainerState,
    events: EventLog,
    last_checkpoint: Option<PathBuf>,
    losses: Vec<f64>,
    eval: Option<(RecSet, EvalSettings)>,
    last_eval_step: Option<u64>,
    workers: usize,
}

impl Trainer {
    /// Loads the model (with fresh adapters, or every weight trainable),
    /// the data and the reference log-probs, and, when `checkpoint` is
    /// given, the weights, optimizer moments and position saved there.
    pub fn setup(cfg: &TrainConfig, run: &RunDir, checkpoint: Option<&Path>) -> Result<Self> {
        let device = crate::model::compute_device()?;
        let (mut bundle, full) = match cfg.tune {
            Tune::Lora => {
                let mut bundle = LlavaBundle::load(&cfg.model, &device)?;
                bundle.model.add_lora(&lora_config(cfg), cfg.seed)?;
                (bundle, None)
            }
            Tune::Full | Tune::FullVision => {
                let vision = cfg.tune == Tune::FullVision;
                let (bundle, weights) = LlavaBundle::load_full(&cfg.model, &device, vision)?;
                (bundle, Some(weights))
            }
        };
        let sft = cfg.objective.objective == Objective::Sft;
        let segmenter = cfg.segmenter.as_ref().map(|s| s.build());
        let n_segments = if cfg.objective.objective.needs_segments() {
            segmenter.as_ref().map(|s| s.n_segments())
        } else {
            None
        };
        let options = DataOptions {
            max_len: cfg.max_len,
            require_rejected: !sft,
            ..DataOptions::default()
        };
        let seg: Option<&dyn crate::core::segment::Segmenter> = if n_segments.is_some() {
            segmenter.as_deref().map(|s| s as _)
        } else {
            None
        };
        let dataset = load_dataset(&cfg.data, &bundle.tokenizer, &options, seg)?;
        if dataset.examples.is_empty() {
            return Err(TrainError::EmptyDataset {
                path: cfg.data.clone(),
                skipped: dataset.skipped.len(),
                first: dataset
                    .skipped
                    .first()
                    .map(|s| format!("; first: {s}"))
                    .unwrap_or_default(),
            });
        }
        // The REC set is read before any work, so a bad path fails at once.
        let eval = match &cfg.eval {
            Some(e) => {
                let set = rec_data::load(&e.data, e.image_root.as_deref()).map_err(|err| {
                    TrainError::Config {
                        field: "eval.data",
                        message: err.to_string(),
                    }
                })?;
                if set.items.is_empty() {
                    return Err(TrainError::Config {
                        field: "eval.data",
                        message: format!(
                            "{}: no usable REC sample ({} skipped{})",
                            e.data.display(),
                            set.issues.len(),
                            set.issues
                                .first()
                                .map(|i| format!("; first: {i}"))
                                .unwrap_or_default()
                        ),
                    });
                }
                Some((set, e.clone()))
            }
            None => None,
        };
        let features = FeatureCache::new(match cfg.tune {
            Tune::Lora => FeatureMode::Projected,
            Tune::Full => FeatureMode::ProjectEachStep,
            Tune::FullVision => FeatureMode::TowerEachStep,
        });
        // Supervised steps need no reference model.
        let workers = crate::model::batch_workers(&device);
        let refs = if sft {
            None
        } else {
            Some(reference_logps(
                &mut bundle,
                &dataset.examples,
                &features,
                n_segments,
                run,
                workers,
            )?)
        };
        // A prefix must name something that would otherwise train: a
        // tensor in full fine-tuning, an adapted module with LoRA.
        let candidates: Vec<String> = match &full {
            Some(w) => w.trainable.iter().map(|(n, _)| n.clone()).collect(),
            None => bundle.model.adapted_modules(),
        };
        for prefix in &cfg.freeze {
            if !candidates.iter().any(|n| n.starts_with(prefix.as_str())) {
                let what = if full.is_some() {
                    "trainable tensor"
                } else {
                    "module with a LoRA adapter"
                };
                return Err(TrainError::Config {
                    field: "freeze",
                    message: format!("`{prefix}` names no {what} of the model"),
                });
            }
        }
        let trainable = |bundle: &LlavaBundle| match &full {
            Some(w) => w
                .trainable
                .iter()
                .filter(|(n, _)| !cfg.freezes(n))
                .cloned()
                .collect(),
            None => bundle
                .model
                .named_trainable_vars_except(|module| cfg.freezes(module)),
        };
        let mut opt = AdamW::new(trainable(&bundle), cfg)?;
        let mut state = TrainerState {
            step: 0,
            data_order: DataOrder::new(cfg.seed),
            adam_step: 0,
        };
        let mut last_checkpoint = None;
        if let Some(ckpt) = checkpoint {
            let saved: TrainerState = crate::core::runs::read_json(&ckpt.join(files::CKPT_STATE))?;
            match &full {
                Some(w) => load_full_weights(&ckpt.join(files::CKPT_WEIGHTS), w, &device)?,
                None => {
                    bundle.model.load_adapter(&ckpt.join(files::CKPT_ADAPTER))?;
                    // `load_adapter` replaces the vars: the optimizer must follow.
                    opt = AdamW::new(trainable(&bundle), cfg)?;
                }
            }
            opt.load(&ckpt.join(files::CKPT_OPTIMIZER), saved.adam_step, &device)?;
            state = saved;
            last_checkpoint = Some(ckpt.to_path_buf());
        }
        Ok(Self {
            vars: opt.var_list(),
            cfg: cfg.clone(),
            run: run.clone(),
            events: EventLog::open(run)?,
            bundle,
            full,
            dataset,
            features,
            refs,
            n_segments,
            opt,
            state,
            last_checkpoint,
            losses: Vec::new(),
            eval,
            last_eval_step: None,
            workers,
        })
    }

    /// Threads a micro-batch's rows are split over ([`parallel`]); by
    /// default [`crate::model::batch_workers`] of the model's device.
    pub fn workers(&self) -> usize {
        self.workers
    }

    /// Sets [`Self::workers`] (at least one). The gradients do not depend
    /// on it beyond float summation order.
    pub fn set_workers(&mut self, workers: usize) {
        self.workers = workers.max(1);
    }

    /// Optimizer steps done so far.
    pub fn steps_done(&self) -> u64 {
        self.state.step
    }

    /// Whether every step of the run is done.
    pub fn is_done(&self) -> bool {
        self.state.step >= self.cfg.total_steps
    }

    /// Runs the remaining steps, calling `progress` after each, saving a
    /// checkpoint every `checkpoint_every` steps; when `stop` is set, saves
    /// a checkpoint and returns with `stopped: true`.
    pub fn run(
        mut self,
        mut progress: impl FnMut(&StepLog),
        stop: &AtomicBool,
    ) -> Result<RunSummary> {
        while !self.is_done() {
            if stop.load(Ordering::SeqCst) {
                self.checkpoint()?;
                return Ok(self.summary(true, None));
            }
            let log = self.step()?;
            progress(&log);
            let every = self.cfg.checkpoint_every;
            if every > 0 && self.state.step.is_multiple_of(every) {
                self.checkpoint()?;
            }
            let eval_every = self.cfg.eval.as_ref().map_or(0, |e| e.every);
            if eval_every > 0 && self.state.step.is_multiple_of(eval_every) {
                self.evaluate(stop)?;
            }
        }
        if self.last_eval_step != Some(self.state.step) {
            self.evaluate(stop)?;
        }
        self.finish()
    }

    /// Evaluates the policy (adapters on) on the run's REC set, when it
    /// has one: the per-sample records go to `eval/step-<step>.jsonl` and
    /// an `eval` event with Acc@0.5…0.9, mean IoU and parse rate to
    /// `events.jsonl`. An evaluation cut short by `stop` is not logged.
    pub fn evaluate(&mut self, stop: &AtomicBool) -> Result<Option<EvalEvent>> {
        let Some((set, settings)) = &self.eval else {
            return Ok(None);
        };
        let opts = RecEvalOptions {
            profile: settings.profile.clone(),
            max_new_tokens: settings.max_new_tokens,
            batch: settings.batch,
            limit: settings.limit,
        };
        self.bundle.model.set_grad_enabled(false);
        let result = crate::infer::rec::evaluate(&self.bundle, set, &opts, &mut |_, _| {}, stop);
        self.bundle.model.set_grad_enabled(true);
        let r = result.map_err(|e| TrainError::Config {
            field: "eval",
            message: e.to_string(),
        })?;
        if r.interrupted {
            return Ok(None);
        }
        let rel = RunDir::eval_file(self.state.step);
        let path = self.run.file(&rel);
        crate::core::project::write_jsonl(&path, &r.samples).map_err(|e| TrainError::Config {
            field: "eval",
            message: e.to_string(),
        })?;
        let event = EvalEvent::from_report(
            self.state.step,
            &r.report,
            settings.data.display().to_string(),
            rel,
            r.seconds,
        );
        self.events.write(&Event::Eval(event.clone()))?;
        self.last_eval_step = Some(self.state.step);
        Ok(Some(event))
    }

    /// One optimizer step (`grad_accum` micro-batches), logged to
    /// `events.jsonl`. A non-finite loss saves the state before the step
    /// and fails with [`TrainError::NonFinite`].
    pub fn step(&mut self) -> Result<StepLog> {
        let started = Instant::now();
        let before = self.state.clone();
        let lr = self.cfg.schedule().lr_at(self.state.step);
        let mut grads: Option<GradStore> = None;
        let mut metric_sum = [0f64; 7];
        let mut tokens = 0usize;
        let k = self.cfg.grad_accum as f64;
        for _ in 0..self.cfg.grad_accum {
            let micro = self.micro_batch(1.0 / k)?;
            let Some(g) = micro.grads else {
                let checkpoint = save_checkpoint(
                    &self.run,
                    &self.bundle,
                    self.full.as_ref(),
                    &self.opt,
                    &before,
                )?;
                return Err(TrainError::NonFinite {
                    step: before.step + 1,
                    loss: micro.metrics.loss,
                    checkpoint,
                });
            };
            for (acc, v) in metric_sum.iter_mut().zip(micro.metrics.values()) {
                *acc += v;
            }
            tokens += micro.tokens;
            grads = Some(accumulate(grads, g, &self.vars)?);
        }
        let mut grads = grads.ok_or_else(|| TrainError::Config {
            field: "grad_accum",
            message: "must be at least 1".into(),
        })?;
        let grad_norm = clip_grad_norm(&mut grads, &self.vars, self.cfg.max_grad_norm)?;
        if grad_norm.is_finite() {
            self.opt.step(&grads, lr)?;
        }
        self.state.step += 1;
        self.state.adam_step = self.opt.t;
        let m = metric_sum.map(|v| v / k);
        let order = &self.state.data_order;
        let n = self.dataset.examples.len();
        let log = StepLog {
            step: self.state.step,
            total_steps: self.cfg.total_steps,
            epoch: order.epoch as f64 + order.position as f64 / n as f64,
            metrics: Metrics {
                loss: m[0],
                rewards_chosen: m[1],
                rewards_rejected: m[2],
                rewards_margins: m[3],
                rewards_accuracies: m[4],
                logps_chosen: m[5],
                logps_rejected: m[6],
            },
            lr,
            grad_norm,
            tokens_per_s: tokens as f64 / started.elapsed().as_secs_f64().max(1e-9),
            chosen_only: self.cfg.objective.objective == Objective::Sft,
        };
        self.losses.push(log.metrics.loss);
        self.events.write(&Event::Step(log.event()))?;
        Ok(log)
    }

    /// The next micro-batch of the data order: its metrics and the
    /// gradients of `scale ×` its loss (none when the loss is not finite).
    ///
    /// The rows are split over [`Self::workers`] threads
    /// ([`parallel`]): each computes its rows' summed log-probs, the loss
    /// is computed once from those, and each thread backpropagates its
    /// rows' share.
    fn micro_batch(&mut self, scale: f64) -> Result<MicroBatch> {
        let cfg = &self.cfg;
        let device = self.bundle.model.device().clone();
        let n = self.dataset.examples.len();
        let sft = cfg.objective.objective == Objective::Sft;
        let pad = self.bundle.tokenizer.pad_token_id();
        let idx = self.state.data_order.next_batch(n, cfg.batch_size);
        let picked: Vec<&PairExample> = idx.iter().map(|&i| &self.dataset.examples[i]).collect();
        let b = picked.len();
        // Rows 0..B chosen, then B..2B rejected (none for `sft`).
        let sides: Vec<(&PairExample, Side)> = picked
            .iter()
            .map(|&e| (e, Side::Chosen))
            .chain(picked.iter().filter(|_| !sft).map(|&e| (e, Side::Rejected)))
            .collect();
        let lengths: Vec<usize> = sides
            .iter()
            .map(|(e, side)| {
                e.prompt_ids.len()
                    + match side {
                        Side::Chosen => e.chosen_ids.len(),
                        Side::Rejected => e.rejected_ids.len(),
                    }
            })
            .collect();
        let parts = parallel::split_rows(&lengths, self.workers);
        let batches = parts
            .iter()
            .map(|rows| {
                let part: Vec<_> = rows.iter().map(|&r| sides[r]).collect();
                data::collate_sides(&part, pad, &device)
            })
            .collect::<std::result::Result<Vec<_>, _>>()?;
        let tokens = batches.iter().map(|b| b.n_tokens).sum();
        let (bundle, features, n_segments) = (&self.bundle, &self.features, self.n_segments);
        let sums = parallel::run_parts(batches.iter().collect(), |batch| {
            let feats = features.batch(bundle, batch)?;
            batch_logps(bundle, batch, &feats, n_segments)
        })?;

        // The loss from the rows' sums held as constants (`leaf`).
        let s = n_segments.unwrap_or(1);
        let mut sum_of_row = vec![0f32; sides.len() * s];
        let mut tokens_of_row = vec![0f32; sides.len() * s];
        for (rows, part) in parts.iter().zip(&sums) {
            let part_sums = part.sum.to_dtype(DType::F32)?.to_vec2::<f32>()?;
            let part_tokens = part.tokens.to_dtype(DType::F32)?.to_vec2::<f32>()?;
            for (i, &row) in rows.iter().enumerate() {
                sum_of_row[row * s..(row + 1) * s].copy_from_slice(&part_sums[i]);
                tokens_of_row[row * s..(row + 1) * s].copy_from_slice(&part_tokens[i]);
            }
        }
        let leaf = Var::from_tensor(&Tensor::from_vec(sum_of_row, (sides.len(), s), &device)?)?;
        let row_tokens = Tensor::from_vec(tokens_of_row, (sides.len(), s), &device)?;
        let segmented = n_segments.is_some();
        let squeeze =
            |t: Tensor| -> Result<Tensor> { Ok(if segmented { t } else { t.squeeze(1)? }) };
        let half = |t: &Tensor, start: usize| -> Result<Tensor> { squeeze(t.narrow(0, start, b)?) };
        let chosen = LogpSums {
            sum: half(leaf.as_tensor(), 0)?,
            tokens: half(&row_tokens, 0)?,
        };
        let ids = Tensor::from_vec(
            idx.iter().map(|&i| i as u32).collect::<Vec<_>>(),
            b,
            &device,
        )?;
        let logps = match &self.refs {
            Some((ref_c, ref_r)) => PairLogps::from_sums(
                chosen,
                LogpSums {
                    sum: half(leaf.as_tensor(), b)?,
                    tokens: half(&row_tokens, b)?,
                },
                &squeeze(ref_c.index_select(&ids, 0)?)?,
                &squeeze(ref_r.index_select(&ids, 0)?)?,
            ),
            // `sft` reads only the chosen side.
            None => {
                let zeros = chosen.sum.zeros_like()?.detach();
                PairLogps::from_sums(
                    chosen,
                    LogpSums {
                        sum: zeros.clone(),
                        tokens: zeros.clone(),
                    },
                    &zeros,
                    &zeros,
                )
            }
        };
        let gaps = data::reward_gaps(&picked, &device)?;
        let out = objectives::compute(&cfg.objective, &logps, gaps.as_ref())?;
        if !out.metrics.loss.is_finite() {
            return Ok(MicroBatch {
                grads: None,
                metrics: out.metrics,
                tokens,
            });
        }

        // Each part backpropagates Σ (∂ scale·L/∂s_i) s_i over its rows.
        let coef = match (out.loss * scale)?.backward()?.remove(leaf.as_tensor()) {
            Some(c) => c,
            None => leaf.as_tensor().zeros_like()?,
        };
        let shares = parts
            .iter()
            .zip(sums)
            .map(|(rows, part)| {
                let rows = Tensor::from_vec(
                    rows.iter().map(|&r| r as u32).collect::<Vec<_>>(),
                    rows.len(),
                    &device,
                )?;
                Ok((part.sum, coef.index_select(&rows, 0)?))
            })
            .collect::<Result<Vec<_>>>()?;
        let part_grads = parallel::run_parts(shares, |(sum, c)| {
            Ok((sum.to_dtype(DType::F32)? * c)?.sum_all()?.backward()?)
        })?;
        let mut grads: Option<GradStore> = None;
        for g in part_grads {
            grads = Some(accumulate(grads, g, &self.vars)?);
        }
        Ok(MicroBatch {
            grads,
            metrics: out.metrics,
            tokens,
        })
    }

    /// Saves `checkpoint-<step>/` and returns its folder.
    pub fn checkpoint(&mut self) -> Result<PathBuf> {
        let dir = save_checkpoint(
            &self.run,
            &self.bundle,
            self.full.as_ref(),
            &self.opt,
            &self.state,
        )?;
        self.last_checkpoint = Some(dir.clone());
        Ok(dir)
    }

    /// Writes the final adapter (or, for full fine-tuning, the model
    /// folder), atomically.
    pub fn finish(self) -> Result<RunSummary> {
        let output = match &self.full {
            Some(w) => {
                let dir = self.run.file(files::MODEL);
                let tmp = atomic::temp_dir_for(&dir).map_err(io_err(&dir))?;
                w.save_model(&tmp, self.bundle.model.config(), &self.bundle.dir)?;
                atomic::commit_dir(&tmp, &dir).map_err(io_err(&dir))?;
                dir
            }
            None => {
                let dir = self.run.file(files::ADAPTER);
                self.bundle.model.save_adapter(&dir, PeftLayout::Current)?;
                dir
            }
        };
        Ok(self.summary(false, Some(output)))
    }

    fn summary(self, stopped: bool, output: Option<PathBuf>) -> RunSummary {
        RunSummary {
            steps: self.state.step,
            stopped,
            losses: self.losses,
            last_checkpoint: self.last_checkpoint,
            output,
            examples: self.dataset.examples.len(),
            skipped: self.dataset.skipped,
        }
    }
}

/// One micro-batch's gradients (none when its loss is not finite) and
/// metrics.
struct MicroBatch {
    grads: Option<GradStore>,
    metrics: Metrics,
    tokens: usize,
}

/// Adds the gradients `g` of `vars` into `acc` (gradient accumulation,
/// and the parts of a row-parallel micro-batch); the first `g` is taken as
/// it is.
fn accumulate(acc: Option<GradStore>, g: GradStore, vars: &[Var]) -> Result<GradStore> {
    let Some(mut acc) = acc else {
        return Ok(g);
    };
    for var in vars {
        if let Some(new) = g.get(var.as_tensor()) {
            let sum = match acc.get(var.as_tensor()) {
                Some(old) => (old + new)?,
                None => new.clone(),
            };
            acc.insert(var.as_tensor(), sum);
        }
    }
    Ok(acc)
}

/// Loads the training pairs from `data`: an SPR project folder (holding
/// `spr.toml`) is read through its `pairs.jsonl`, with the project's image
/// root and `[export] prompt`, so the pairs carry SPR's reward gaps;
/// anything else is a TRL-layout JSONL.
fn load_dataset(
    data: &Path,
    tokenizer: &crate::model::tokenizer::LlavaTokenizer,
    options: &DataOptions,
    segmenter: Option<&dyn crate::core::segment::Segmenter>,
) -> Result<data::PairDataset> {
    use crate::core::project::{pairs_in_project, Project};
    if let Some((dir, pairs)) = pairs_in_project(data) {
        let project = Project::open(&dir).map_err(|e| TrainError::Config {
            field: "data",
            message: e.to_string(),
        })?;
        Ok(data::load_project_pairs(
            &pairs,
            &project.image_root(),
            &project.config.export.prompt,
            tokenizer,
            options,
            segmenter,
        )?)
    } else {
        Ok(data::load_trl(data, tokenizer, options, segmenter)?)
    }
}
