//! The training loop: preference optimisation of LoRA adapters on a LLaVA
//! model, with checkpoints that resume exactly.
//!
//! A run lives in one folder (`runs/<name>/`):
//! - `config.json`: the [`TrainConfig`], everything needed to reproduce it;
//! - `ref_logps.safetensors`: the reference model's log-probs per example
//!   (`chosen`, `rejected`, `[n_examples, n_segments]`), computed once with
//!   the adapters disabled and reloaded when present;
//! - `events.jsonl`: one JSON line per optimizer step with TRL's metric
//!   names plus `lr`, `grad_norm` and `tokens_per_s`, flushed line by line;
//! - `checkpoint-<step>/`: `adapter/` (PEFT layout), `optimizer.safetensors`
//!   (AdamW moments `m.<var>` / `v.<var>`) and `trainer_state.json` (step,
//!   [`DataOrder`], AdamW step count). Written to a temporary folder and
//!   renamed, so a checkpoint is either complete or absent;
//! - `adapter/`: the final adapter.
//!
//! With `tune = "full"` every language-model and projector weight trains
//! instead of adapters (used to train the tiny demo model from scratch):
//! checkpoints hold `weights.safetensors` (the trainable tensors) in place
//! of `adapter/`, and the run ends with `model/`, a complete llava-hf
//! folder. With the `sft` objective only the chosen responses are run (one
//! row per example, no reference model), and TRL's prompt–completion rows
//! are accepted.
//!
//! The optimizer is our own AdamW over the adapter [`Var`]s, with
//! `torch.optim.AdamW`'s update (decoupled weight decay, bias-corrected
//! moments, `ε` added after the square root), so its state can be saved.
//! Nothing in the loop draws random numbers besides the data order (no
//! dropout), so the [`DataOrder`] is the whole RNG state.

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use candle_core::backprop::GradStore;
use candle_core::{DType, Device, Tensor, Var};
use image::DynamicImage;
use serde::{Deserialize, Serialize};

use crate::model::lora::PeftLayout;
use crate::model::{FullWeights, LlavaBundle, LoraConfig, ModelError, TargetModule};
use crate::train::data::{self, Batch, DataError, DataOptions, DataOrder, PairExample};
use crate::train::objectives::{
    self, LogpSums, Metrics, Objective, ObjectiveConfig, ObjectiveError, PairLogps,
};
use crate::train::schedule::{clip_grad_norm, LrSchedule, ScheduleError};
use crate::train::segment::SegmenterConfig;

/// File names inside a run folder.
pub mod files {
    /// The run's [`super::TrainConfig`].
    pub const CONFIG: &str = "config.json";
    /// Per-step metrics.
    pub const EVENTS: &str = "events.jsonl";
    /// Cached reference log-probs.
    pub const REF_LOGPS: &str = "ref_logps.safetensors";
    /// The final adapter folder.
    pub const ADAPTER: &str = "adapter";
    /// The final model folder of a full fine-tuning run.
    pub const MODEL: &str = "model";
    /// Inside a checkpoint: the adapter folder.
    pub const CKPT_ADAPTER: &str = "adapter";
    /// Inside a checkpoint of a full fine-tuning run: the trainable weights.
    pub const CKPT_WEIGHTS: &str = "weights.safetensors";
    /// Inside a checkpoint: AdamW moments.
    pub const CKPT_OPTIMIZER: &str = "optimizer.safetensors";
    /// Inside a checkpoint: step, data order, optimizer step count.
    pub const CKPT_STATE: &str = "trainer_state.json";
}

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

/// Result of this module.
pub type Result<T> = std::result::Result<T, TrainError>;

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> TrainError + '_ {
    move |source| TrainError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// What a run trains.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Tune {
    /// LoRA adapters on the decoder linears; the base weights stay frozen.
    #[default]
    Lora,
    /// Every language-model and projector weight (the vision tower stays
    /// frozen). For small models: memory grows with the model.
    Full,
}

impl std::str::FromStr for Tune {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "lora" => Ok(Tune::Lora),
            "full" => Ok(Tune::Full),
            other => Err(format!("unknown tuning `{other}` (expected lora or full)")),
        }
    }
}

/// Everything a run needs, written to `config.json` so it can be
/// reproduced and resumed.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainConfig {
    /// Model folder or hub id ([`LlavaBundle::load`]).
    pub model: String,
    /// TRL-layout preference JSONL ([`data::load_trl`]) or an SPR project
    /// folder (its `pairs.jsonl`, [`data::load_project_pairs`]).
    pub data: PathBuf,
    /// Objective and its hyper-parameters.
    pub objective: ObjectiveConfig,
    /// Segmenter for fDPO (per-segment log-probs); `None` otherwise.
    #[serde(default)]
    pub segmenter: Option<SegmenterConfig>,
    /// What trains (LoRA adapters unless `full`).
    #[serde(default)]
    pub tune: Tune,
    /// LoRA rank.
    pub lora_r: usize,
    /// LoRA α.
    pub lora_alpha: f64,
    /// Decoder linears that get adapters.
    pub lora_targets: Vec<TargetModule>,
    /// Peak learning rate.
    pub lr: f64,
    /// Linear warmup steps.
    pub warmup_steps: u64,
    /// Final learning rate as a fraction of `lr` (cosine floor).
    pub min_lr_ratio: f64,
    /// Optimizer steps of the whole run.
    pub total_steps: u64,
    /// Pairs per micro-batch.
    pub batch_size: usize,
    /// Micro-batches per optimizer step.
    pub grad_accum: usize,
    /// Global gradient-norm limit.
    pub max_grad_norm: f64,
    /// AdamW β₁.
    pub adam_beta1: f64,
    /// AdamW β₂.
    pub adam_beta2: f64,
    /// AdamW ε.
    pub adam_eps: f64,
    /// AdamW decoupled weight decay.
    pub weight_decay: f64,
    /// Seed of the LoRA initialisation and the data order.
    pub seed: u64,
    /// Save a checkpoint every this many optimizer steps (0: only on stop
    /// and at the end).
    pub checkpoint_every: u64,
    /// Longest prompt + response kept, in tokens.
    pub max_len: usize,
}

impl TrainConfig {
    /// SPR's settings (DPO β 0.1, LoRA r 128 α 256 on every decoder
    /// linear, batch 2, lr 1e-5) for `model` and `data`.
    pub fn new(model: impl Into<String>, data: impl Into<PathBuf>) -> Self {
        Self {
            model: model.into(),
            data: data.into(),
            objective: ObjectiveConfig::default(),
            segmenter: None,
            tune: Tune::Lora,
            lora_r: 128,
            lora_alpha: 256.0,
            lora_targets: TargetModule::ALL.to_vec(),
            lr: 1e-5,
            warmup_steps: 0,
            min_lr_ratio: 0.0,
            total_steps: 1000,
            batch_size: 2,
            grad_accum: 1,
            max_grad_norm: 1.0,
            adam_beta1: 0.9,
            adam_beta2: 0.999,
            adam_eps: 1e-8,
            weight_decay: 0.0,
            seed: 42,
            checkpoint_every: 500,
            max_len: 2048,
        }
    }

    /// The learning-rate schedule.
    pub fn schedule(&self) -> LrSchedule {
        LrSchedule {
            warmup_steps: self.warmup_steps,
            total_steps: self.total_steps,
            peak_lr: self.lr,
            min_lr_ratio: self.min_lr_ratio,
        }
    }

    /// Checks every value's range; the error names the field.
    pub fn validate(&self) -> Result<()> {
        self.objective.validate()?;
        self.schedule().validate()?;
        let bad = |field, message: &str| {
            Err(TrainError::Config {
                field,
                message: message.to_string(),
            })
        };
        if self.tune == Tune::Lora && self.lora_r == 0 {
            return bad("lora_r", "must be at least 1");
        }
        if self.tune == Tune::Lora && self.lora_targets.is_empty() {
            return bad("lora_targets", "must name at least one module");
        }
        if self.total_steps == 0 {
            return bad("total_steps", "must be at least 1");
        }
        if self.batch_size == 0 {
            return bad("batch_size", "must be at least 1");
        }
        if self.grad_accum == 0 {
            return bad("grad_accum", "must be at least 1");
        }
        if !(self.max_grad_norm.is_finite() && self.max_grad_norm > 0.0) {
            return bad("max_grad_norm", "must be finite and > 0");
        }
        if !(0.0..1.0).contains(&self.adam_beta1) || !(0.0..1.0).contains(&self.adam_beta2) {
            return bad("adam_beta1/adam_beta2", "must be in [0, 1)");
        }
        if !(self.adam_eps.is_finite() && self.adam_eps > 0.0) {
            return bad("adam_eps", "must be finite and > 0");
        }
        if !(self.weight_decay.is_finite() && self.weight_decay >= 0.0) {
            return bad("weight_decay", "must be finite and >= 0");
        }
        if self.max_len < 2 {
            return bad("max_len", "must be at least 2");
        }
        if self.objective.objective.needs_segments() && self.segmenter.is_none() {
            return bad("segmenter", "fdpo needs a segmenter");
        }
        Ok(())
    }

    fn lora(&self) -> LoraConfig {
        LoraConfig::new(
            self.lora_r,
            self.lora_alpha,
            self.lora_targets.iter().copied(),
        )
    }
}

/// One optimizer step's record, as written to `events.jsonl` (see
/// [`StepLog::to_json`]) and passed to the progress callback.
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
    /// nothing and are left out of the JSON line.
    pub chosen_only: bool,
}

impl StepLog {
    /// The JSON line: `step`, `epoch`, TRL's metric names, `lr`,
    /// `grad_norm`, `tokens_per_s`.
    pub fn to_json(&self) -> serde_json::Value {
        let mut map = serde_json::Map::new();
        map.insert("step".into(), self.step.into());
        map.insert("epoch".into(), self.epoch.into());
        for (name, v) in self.metrics.named() {
            if !self.chosen_only || matches!(name, "loss" | "logps/chosen") {
                map.insert(name.into(), v.into());
            }
        }
        map.insert("lr".into(), self.lr.into());
        map.insert("grad_norm".into(), self.grad_norm.into());
        map.insert("tokens_per_s".into(), self.tokens_per_s.into());
        serde_json::Value::Object(map)
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

/// Saved by each checkpoint in `trainer_state.json`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct TrainerState {
    step: u64,
    data_order: DataOrder,
    adam_step: u64,
}

/// AdamW with `torch.optim.AdamW`'s update over a list of vars, whose
/// moments can be saved and restored.
struct AdamW {
    vars: Vec<(String, Var)>,
    m: Vec<Tensor>,
    v: Vec<Tensor>,
    t: u64,
    beta1: f64,
    beta2: f64,
    eps: f64,
    weight_decay: f64,
}

impl AdamW {
    fn new(vars: Vec<(String, Var)>, cfg: &TrainConfig) -> Result<Self> {
        let mut m = Vec::with_capacity(vars.len());
        for (_, var) in &vars {
            m.push(var.as_tensor().zeros_like()?.to_dtype(DType::F32)?);
        }
        Ok(Self {
            v: m.clone(),
            m,
            vars,
            t: 0,
            beta1: cfg.adam_beta1,
            beta2: cfg.adam_beta2,
            eps: cfg.adam_eps,
            weight_decay: cfg.weight_decay,
        })
    }

    fn var_list(&self) -> Vec<Var> {
        self.vars.iter().map(|(_, v)| v.clone()).collect()
    }

    /// One update: `p ← p·(1 − lr·wd)`, moments, `p ← p − lr/bc₁ · m /
    /// (√v / √bc₂ + ε)`. Vars without a gradient are left alone.
    fn step(&mut self, grads: &GradStore, lr: f64) -> Result<()> {
        self.t += 1;
        let t = self.t as i32;
        let bc1 = 1.0 - self.beta1.powi(t);
        let bc2_sqrt = (1.0 - self.beta2.powi(t)).sqrt();
        for (i, (_, var)) in self.vars.iter().enumerate() {
            let Some(g) = grads.get(var.as_tensor()) else {
                continue;
            };
            let dtype = var.dtype();
            let g = g.to_dtype(DType::F32)?;
            let m = ((&self.m[i] * self.beta1)? + (&g * (1.0 - self.beta1))?)?;
            let v = ((&self.v[i] * self.beta2)? + (g.sqr()? * (1.0 - self.beta2))?)?;
            let p = var.as_tensor().to_dtype(DType::F32)?;
            let p = (&p * (1.0 - lr * self.weight_decay))?;
            let denom = ((v.sqrt()? / bc2_sqrt)? + self.eps)?;
            let p = (p - (m.div(&denom)? * (lr / bc1))?)?;
            var.set(&p.to_dtype(dtype)?)?;
            self.m[i] = m;
            self.v[i] = v;
        }
        Ok(())
    }

    fn save(&self, path: &Path) -> Result<()> {
        let mut map = HashMap::new();
        for (i, (name, _)) in self.vars.iter().enumerate() {
            map.insert(format!("m.{name}"), self.m[i].clone());
            map.insert(format!("v.{name}"), self.v[i].clone());
        }
        candle_core::safetensors::save(&map, path)?;
        Ok(())
    }

    fn load(&mut self, path: &Path, t: u64, device: &Device) -> Result<()> {
        let map = candle_core::safetensors::load(path, device)?;
        for (i, (name, var)) in self.vars.iter().enumerate() {
            for (prefix, slot) in [("m", &mut self.m[i]), ("v", &mut self.v[i])] {
                let key = format!("{prefix}.{name}");
                let x = checkpoint_tensor(&map, path, &key, var, "the adapter")?;
                *slot = x.to_dtype(DType::F32)?;
            }
        }
        self.t = t;
        Ok(())
    }
}

fn write_json<T: Serialize>(path: &Path, value: &T) -> Result<()> {
    let bytes = serde_json::to_vec_pretty(value).map_err(|source| TrainError::Json {
        path: path.to_path_buf(),
        source,
    })?;
    let tmp = path.with_extension("json.tmp");
    fs::write(&tmp, bytes).map_err(io_err(&tmp))?;
    fs::rename(&tmp, path).map_err(io_err(path))
}

fn read_json<T: for<'de> Deserialize<'de>>(path: &Path) -> Result<T> {
    let bytes = fs::read(path).map_err(io_err(path))?;
    serde_json::from_slice(&bytes).map_err(|source| TrainError::Json {
        path: path.to_path_buf(),
        source,
    })
}

/// Starts a new run in `run_dir` (created; `config.json` written) and
/// trains until `cfg.total_steps` or until `stop` is set.
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
    fs::create_dir_all(run_dir).map_err(io_err(run_dir))?;
    write_json(&run_dir.join(files::CONFIG), cfg)?;
    let events = run_dir.join(files::EVENTS);
    File::create(&events).map_err(io_err(&events))?;
    run(cfg, run_dir, None, progress, stop)
}

/// Continues the run in `run_dir` from its latest checkpoint, with the same
/// data order, optimizer state and step count as if it had never stopped.
/// Lines of `events.jsonl` past the checkpoint are dropped first.
pub fn resume(
    run_dir: &Path,
    progress: impl FnMut(&StepLog),
    stop: &AtomicBool,
) -> Result<RunSummary> {
    let cfg: TrainConfig = read_json(&run_dir.join(files::CONFIG))?;
    cfg.validate()?;
    let ckpt = latest_checkpoint(run_dir)?.ok_or_else(|| TrainError::NoCheckpoint {
        run_dir: run_dir.to_path_buf(),
    })?;
    let state: TrainerState = read_json(&ckpt.join(files::CKPT_STATE))?;
    truncate_events(&run_dir.join(files::EVENTS), state.step)?;
    run(&cfg, run_dir, Some((ckpt, state)), progress, stop)
}

/// The complete checkpoint with the highest step in `run_dir`, if any.
pub fn latest_checkpoint(run_dir: &Path) -> Result<Option<PathBuf>> {
    let mut best: Option<(u64, PathBuf)> = None;
    for entry in fs::read_dir(run_dir).map_err(io_err(run_dir))? {
        let entry = entry.map_err(io_err(run_dir))?;
        let name = entry.file_name();
        let Some(step) = name
            .to_str()
            .and_then(|n| n.strip_prefix("checkpoint-"))
            .and_then(|s| s.parse::<u64>().ok())
        else {
            continue;
        };
        let path = entry.path();
        if path.join(files::CKPT_STATE).is_file() && best.as_ref().is_none_or(|(s, _)| step > *s) {
            best = Some((step, path));
        }
    }
    Ok(best.map(|(_, p)| p))
}

/// Keeps the lines of `events.jsonl` whose `step` is at most `step`.
fn truncate_events(path: &Path, step: u64) -> Result<()> {
    let Ok(file) = File::open(path) else {
        return Ok(());
    };
    let mut kept = String::new();
    for line in BufReader::new(file).lines() {
        let line = line.map_err(io_err(path))?;
        let s = serde_json::from_str::<serde_json::Value>(&line)
            .ok()
            .and_then(|v| v.get("step").and_then(|s| s.as_u64()));
        if matches!(s, Some(s) if s <= step) {
            kept.push_str(&line);
            kept.push('\n');
        }
    }
    let tmp = path.with_extension("jsonl.tmp");
    fs::write(&tmp, kept).map_err(io_err(&tmp))?;
    fs::rename(&tmp, path).map_err(io_err(path))
}

/// Per-image features, computed once: projected ones, or with
/// `project_each_step` (full fine-tuning, where the projector trains) the
/// tower's output, projected per batch.
struct FeatureCache {
    map: HashMap<String, Tensor>,
    project_each_step: bool,
}

impl FeatureCache {
    fn get(&mut self, bundle: &LlavaBundle, image: &data::ImageRef) -> Result<Tensor> {
        let key = format!("{}|{:?}", image.path.display(), image.crop);
        if let Some(f) = self.map.get(&key) {
            return Ok(f.clone());
        }
        let rgb = image.load().map_err(|e| TrainError::Checkpoint {
            path: image.path.clone(),
            message: format!("image: {e}"),
        })?;
        let pixels = bundle
            .processor
            .preprocess(&DynamicImage::ImageRgb8(rgb), bundle.model.device())?
            .unsqueeze(0)?
            .to_dtype(bundle.model.dtype())?;
        let feats = if self.project_each_step {
            bundle.model.vision_features(&pixels)?
        } else {
            bundle.model.image_features(&pixels)?
        }
        .detach();
        self.map.insert(key, feats.clone());
        Ok(feats)
    }

    /// Features for a batch's rows: `[2B, N, H]` (the pairs' features
    /// twice), or `[B, N, H]` for a chosen-only batch.
    fn batch(&mut self, bundle: &LlavaBundle, batch: &Batch) -> Result<Tensor> {
        let each = batch
            .images
            .iter()
            .map(|im| self.get(bundle, im))
            .collect::<Result<Vec<_>>>()?;
        let once = Tensor::cat(&each, 0)?;
        let once = if self.project_each_step {
            bundle.model.project(&once)?
        } else {
            once
        };
        if batch.chosen_only {
            return Ok(once);
        }
        Ok(Tensor::cat(&[&once, &once], 0)?)
    }
}

/// Summed log-probs of the batch's rows, `[2B, S]` (S = 1 without
/// segments), as f32.
fn batch_logps(
    bundle: &LlavaBundle,
    batch: &Batch,
    feats: &Tensor,
    n_segments: Option<usize>,
) -> Result<LogpSums> {
    let hidden = bundle.model.forward_hidden(
        &batch.input_ids,
        Some(feats),
        Some(&batch.attention_mask),
        None,
    )?;
    let segments = match (n_segments, &batch.segment_ids) {
        (Some(n), Some(seg)) => Some((seg, n)),
        (Some(_), None) => {
            return Err(TrainError::Config {
                field: "segmenter",
                message: "the batch has no segment ids".into(),
            })
        }
        (None, _) => None,
    };
    // The output head runs only where a response token is predicted.
    let lm = bundle.model.lm();
    let head = |h: &Tensor| {
        lm.lm_head(h)
            .map_err(|e| candle_core::Error::Msg(e.to_string()))
    };
    let sums =
        objectives::response_logps(&hidden, head, &batch.labels, &batch.loss_mask, segments)?;
    Ok(LogpSums {
        sum: sums.sum.to_dtype(DType::F32)?,
        tokens: sums.tokens.to_dtype(DType::F32)?,
    })
}

/// Reference log-probs `(chosen, rejected)`, each `[n_examples, S]`,
/// loaded from the run's cache or computed one example at a time with the
/// adapters disabled (and cached).
fn reference_logps(
    bundle: &mut LlavaBundle,
    examples: &[PairExample],
    features: &mut FeatureCache,
    n_segments: Option<usize>,
    run_dir: &Path,
) -> Result<(Tensor, Tensor)> {
    let path = run_dir.join(files::REF_LOGPS);
    let s = n_segments.unwrap_or(1);
    let device = bundle.model.device().clone();
    if path.is_file() {
        let map = candle_core::safetensors::load(&path, &device)?;
        if let (Some(c), Some(r)) = (map.get("chosen"), map.get("rejected")) {
            if c.dims() == [examples.len(), s] && r.dims() == [examples.len(), s] {
                return Ok((c.clone(), r.clone()));
            }
        }
    }
    bundle.model.set_adapters_enabled(false);
    bundle.model.set_grad_enabled(false);
    let pad = bundle.tokenizer.pad_token_id();
    let mut chosen = Vec::with_capacity(examples.len());
    let mut rejected = Vec::with_capacity(examples.len());
    let result = (|| -> Result<()> {
        for ex in examples {
            let batch = data::collate(&[ex], pad, &device)?;
            let feats = features.batch(bundle, &batch)?;
            let sums = batch_logps(bundle, &batch, &feats, n_segments)?;
            chosen.push(sums.sum.narrow(0, 0, 1)?.detach());
            rejected.push(sums.sum.narrow(0, 1, 1)?.detach());
        }
        Ok(())
    })();
    bundle.model.set_adapters_enabled(true);
    bundle.model.set_grad_enabled(true);
    result?;
    let c = Tensor::cat(&chosen, 0)?;
    let r = Tensor::cat(&rejected, 0)?;
    let map = HashMap::from([
        ("chosen".to_string(), c.clone()),
        ("rejected".to_string(), r.clone()),
    ]);
    let tmp = path.with_extension("safetensors.tmp");
    candle_core::safetensors::save(&map, &tmp)?;
    fs::rename(&tmp, &path).map_err(io_err(&path))?;
    Ok((c, r))
}

/// Writes `checkpoint-<step>/` atomically and returns its path.
fn save_checkpoint(
    run_dir: &Path,
    bundle: &LlavaBundle,
    full: Option<&FullWeights>,
    opt: &AdamW,
    state: &TrainerState,
) -> Result<PathBuf> {
    let dir = run_dir.join(format!("checkpoint-{}", state.step));
    let tmp = run_dir.join(format!(".checkpoint-{}.tmp", state.step));
    if tmp.exists() {
        fs::remove_dir_all(&tmp).map_err(io_err(&tmp))?;
    }
    fs::create_dir_all(&tmp).map_err(io_err(&tmp))?;
    match full {
        Some(w) => {
            let map: HashMap<String, Tensor> = w
                .trainable
                .iter()
                .map(|(n, v)| (n.clone(), v.as_tensor().clone()))
                .collect();
            candle_core::safetensors::save(&map, tmp.join(files::CKPT_WEIGHTS))?;
        }
        None => bundle
            .model
            .save_adapter(&tmp.join(files::CKPT_ADAPTER), PeftLayout::Current)?,
    }
    opt.save(&tmp.join(files::CKPT_OPTIMIZER))?;
    write_json(&tmp.join(files::CKPT_STATE), state)?;
    if dir.exists() {
        fs::remove_dir_all(&dir).map_err(io_err(&dir))?;
    }
    fs::rename(&tmp, &dir).map_err(io_err(&dir))?;
    Ok(dir)
}

/// The tensor `key` of a checkpoint file loaded into `map`, checked to
/// have the shape of `var` (`owner` names what holds `var` in the error).
fn checkpoint_tensor<'a>(
    map: &'a HashMap<String, Tensor>,
    path: &Path,
    key: &str,
    var: &Var,
    owner: &str,
) -> Result<&'a Tensor> {
    let x = map.get(key).ok_or_else(|| TrainError::Checkpoint {
        path: path.to_path_buf(),
        message: format!("missing tensor {key}"),
    })?;
    if x.dims() != var.dims() {
        return Err(TrainError::Checkpoint {
            path: path.to_path_buf(),
            message: format!("{key}: shape {:?}, {owner} has {:?}", x.dims(), var.dims()),
        });
    }
    Ok(x)
}

/// Restores a full fine-tuning checkpoint's trainable weights in place.
fn load_full_weights(path: &Path, weights: &FullWeights, device: &Device) -> Result<()> {
    let map = candle_core::safetensors::load(path, device)?;
    for (name, var) in &weights.trainable {
        let x = checkpoint_tensor(&map, path, name, var, "the model")?;
        var.set(&x.to_dtype(var.dtype())?)?;
    }
    Ok(())
}

/// Loads the training pairs from `data`: an SPR project folder (holding
/// `spr.toml`) is read through its `pairs.jsonl`, with the project's image
/// root and `[export] prompt`, so the pairs carry SPR's reward gaps;
/// anything else is a TRL-layout JSONL.
fn load_dataset(
    data: &Path,
    tokenizer: &crate::model::tokenizer::LlavaTokenizer,
    options: &DataOptions,
    segmenter: Option<&dyn crate::train::segment::Segmenter>,
) -> Result<data::PairDataset> {
    use crate::core::project::{files as project_files, Project};
    if data.is_dir() && data.join(project_files::CONFIG).is_file() {
        let project = Project::open(data).map_err(|e| TrainError::Config {
            field: "data",
            message: e.to_string(),
        })?;
        Ok(data::load_project_pairs(
            &project.path(project_files::PAIRS),
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

fn run(
    cfg: &TrainConfig,
    run_dir: &Path,
    from: Option<(PathBuf, TrainerState)>,
    mut progress: impl FnMut(&StepLog),
    stop: &AtomicBool,
) -> Result<RunSummary> {
    let device = Device::cuda_if_available(0)?;
    let (mut bundle, full) = match cfg.tune {
        Tune::Lora => {
            let mut bundle = LlavaBundle::load(&cfg.model, &device)?;
            bundle.model.add_lora(&cfg.lora(), cfg.seed)?;
            (bundle, None)
        }
        Tune::Full => {
            let (bundle, weights) = LlavaBundle::load_full(&cfg.model, &device)?;
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
    let seg: Option<&dyn crate::train::segment::Segmenter> = if n_segments.is_some() {
        segmenter.as_deref().map(|s| s as _)
    } else {
        None
    };
    let dataset = load_dataset(&cfg.data, &bundle.tokenizer, &options, seg)?;
    let n = dataset.examples.len();
    if n == 0 {
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
    let mut features = FeatureCache {
        map: HashMap::new(),
        project_each_step: full.is_some(),
    };
    // Supervised steps need no reference model.
    let refs = if sft {
        None
    } else {
        Some(reference_logps(
            &mut bundle,
            &dataset.examples,
            &mut features,
            n_segments,
            run_dir,
        )?)
    };
    let trainable = |bundle: &LlavaBundle| match &full {
        Some(w) => w.trainable.clone(),
        None => bundle.model.named_trainable_vars(),
    };
    let mut opt = AdamW::new(trainable(&bundle), cfg)?;
    let mut state = TrainerState {
        step: 0,
        data_order: DataOrder::new(cfg.seed),
        adam_step: 0,
    };
    let mut last_checkpoint = None;
    if let Some((ckpt, saved)) = from {
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
        last_checkpoint = Some(ckpt);
    }
    let vars = opt.var_list();
    let schedule = cfg.schedule();
    let events_path = run_dir.join(files::EVENTS);
    let mut events = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&events_path)
        .map_err(io_err(&events_path))?;
    let pad = bundle.tokenizer.pad_token_id();
    let mut losses = Vec::new();
    let mut stopped = false;

    while state.step < cfg.total_steps {
        if stop.load(Ordering::SeqCst) {
            last_checkpoint = Some(save_checkpoint(
                run_dir,
                &bundle,
                full.as_ref(),
                &opt,
                &state,
            )?);
            stopped = true;
            break;
        }
        let started = Instant::now();
        let before = state.clone();
        let lr = schedule.lr_at(state.step);
        let mut grads: Option<GradStore> = None;
        let mut metric_sum = [0f64; 7];
        let mut tokens = 0usize;
        for _ in 0..cfg.grad_accum {
            let idx = state.data_order.next_batch(n, cfg.batch_size);
            let picked: Vec<&PairExample> = idx.iter().map(|&i| &dataset.examples[i]).collect();
            let batch = if sft {
                data::collate_chosen(&picked, pad, &device)?
            } else {
                data::collate(&picked, pad, &device)?
            };
            tokens += batch.n_tokens;
            let feats = features.batch(&bundle, &batch)?;
            let sums = batch_logps(&bundle, &batch, &feats, n_segments)?;
            let b = batch.n_pairs;
            let ids = Tensor::from_vec(
                idx.iter().map(|&i| i as u32).collect::<Vec<_>>(),
                b,
                &device,
            )?;
            let squeeze = |t: Tensor| -> Result<Tensor> {
                Ok(if n_segments.is_some() {
                    t
                } else {
                    t.squeeze(1)?
                })
            };
            let half =
                |t: &Tensor, start: usize| -> Result<Tensor> { squeeze(t.narrow(0, start, b)?) };
            let chosen = LogpSums {
                sum: half(&sums.sum, 0)?,
                tokens: half(&sums.tokens, 0)?,
            };
            let logps = match &refs {
                Some((ref_c, ref_r)) => PairLogps::from_sums(
                    chosen,
                    LogpSums {
                        sum: half(&sums.sum, b)?,
                        tokens: half(&sums.tokens, b)?,
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
            let gaps = batch
                .reward_gaps
                .as_ref()
                .map(|g| g.to_dtype(DType::F32))
                .transpose()?;
            let out = objectives::compute(&cfg.objective, &logps, gaps.as_ref())?;
            if !out.metrics.loss.is_finite() {
                let checkpoint = save_checkpoint(run_dir, &bundle, full.as_ref(), &opt, &before)?;
                return Err(TrainError::NonFinite {
                    step: before.step + 1,
                    loss: out.metrics.loss,
                    checkpoint,
                });
            }
            for (acc, v) in metric_sum.iter_mut().zip(out.metrics.values()) {
                *acc += v;
            }
            let scaled = (out.loss / cfg.grad_accum as f64)?;
            let g = scaled.backward()?;
            grads = Some(match grads {
                None => g,
                Some(mut acc) => {
                    for var in &vars {
                        if let Some(new) = g.get(var.as_tensor()) {
                            let sum = match acc.get(var.as_tensor()) {
                                Some(old) => (old + new)?,
                                None => new.clone(),
                            };
                            acc.insert(var.as_tensor(), sum);
                        }
                    }
                    acc
                }
            });
        }
        let Some(mut grads) = grads else {
            break;
        };
        let grad_norm = clip_grad_norm(&mut grads, &vars, cfg.max_grad_norm)?;
        if grad_norm.is_finite() {
            opt.step(&grads, lr)?;
        }
        state.step += 1;
        state.adam_step = opt.t;
        let k = cfg.grad_accum as f64;
        let m = metric_sum.map(|v| v / k);
        let metrics = Metrics {
            loss: m[0],
            rewards_chosen: m[1],
            rewards_rejected: m[2],
            rewards_margins: m[3],
            rewards_accuracies: m[4],
            logps_chosen: m[5],
            logps_rejected: m[6],
        };
        let secs = started.elapsed().as_secs_f64().max(1e-9);
        let log = StepLog {
            step: state.step,
            total_steps: cfg.total_steps,
            epoch: state.data_order.epoch as f64 + state.data_order.position as f64 / n as f64,
            metrics,
            lr,
            grad_norm,
            tokens_per_s: tokens as f64 / secs,
            chosen_only: sft,
        };
        losses.push(log.metrics.loss);
        let line = format!("{}\n", log.to_json());
        events
            .write_all(line.as_bytes())
            .and_then(|_| events.flush())
            .map_err(io_err(&events_path))?;
        progress(&log);
        if cfg.checkpoint_every > 0 && state.step % cfg.checkpoint_every == 0 {
            last_checkpoint = Some(save_checkpoint(
                run_dir,
                &bundle,
                full.as_ref(),
                &opt,
                &state,
            )?);
        }
    }

    let output = if stopped {
        None
    } else if let Some(w) = &full {
        let dir = run_dir.join(files::MODEL);
        w.save_model(&dir, bundle.model.config(), &bundle.dir)?;
        Some(dir)
    } else {
        let dir = run_dir.join(files::ADAPTER);
        bundle.model.save_adapter(&dir, PeftLayout::Current)?;
        Some(dir)
    };
    Ok(RunSummary {
        steps: state.step,
        stopped,
        losses,
        last_checkpoint,
        output,
        examples: n,
        skipped: dataset.skipped,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    #[derive(Deserialize)]
    struct Reference {
        betas: [f64; 2],
        eps: f64,
        weight_decay: f64,
        shapes: BTreeMap<String, Vec<usize>>,
        initial: BTreeMap<String, Vec<f64>>,
        steps: Vec<RefStep>,
    }

    #[derive(Deserialize)]
    struct RefStep {
        lr: f64,
        grads: BTreeMap<String, Vec<f64>>,
        params: BTreeMap<String, Vec<f64>>,
    }

    /// Our AdamW follows `torch.optim.AdamW` step for step
    /// (`scripts/optim/adamw_reference.py`, torch 2.15, float64; ours f32).
    #[test]
    fn adamw_matches_torch() {
        let r: Reference =
            serde_json::from_str(include_str!("testdata/adamw_reference.json")).unwrap();
        let dev = Device::Cpu;
        let mut cfg = TrainConfig::new("m", "d");
        cfg.adam_beta1 = r.betas[0];
        cfg.adam_beta2 = r.betas[1];
        cfg.adam_eps = r.eps;
        cfg.weight_decay = r.weight_decay;
        let vars: Vec<(String, Var)> = r
            .shapes
            .iter()
            .map(|(name, shape)| {
                let data: Vec<f32> = r.initial[name].iter().map(|&x| x as f32).collect();
                let t = Tensor::from_vec(data, shape.as_slice(), &dev).unwrap();
                (name.clone(), Var::from_tensor(&t).unwrap())
            })
            .collect();
        let mut opt = AdamW::new(vars.clone(), &cfg).unwrap();
        let mut worst = 0f64;
        for step in &r.steps {
            // loss = Σ p·g has gradient g.
            let mut loss = Tensor::zeros((), DType::F32, &dev).unwrap();
            for (name, var) in &vars {
                let g: Vec<f32> = step.grads[name].iter().map(|&x| x as f32).collect();
                let g = Tensor::from_vec(g, var.dims(), &dev).unwrap();
                loss = (loss + (var.as_tensor() * g).unwrap().sum_all().unwrap()).unwrap();
            }
            let grads = loss.backward().unwrap();
            opt.step(&grads, step.lr).unwrap();
            for (name, var) in &vars {
                let ours = var
                    .as_tensor()
                    .flatten_all()
                    .unwrap()
                    .to_vec1::<f32>()
                    .unwrap();
                for (a, b) in ours.iter().zip(&step.params[name]) {
                    worst = worst.max((f64::from(*a) - b).abs());
                }
            }
        }
        assert!(worst < 1e-6, "max |Δparam| vs torch: {worst}");
    }
}
