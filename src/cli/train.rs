//! `spr train`: the trainer with a progress bar; Ctrl-C / SIGTERM saves a
//! checkpoint and exits.

use anyhow::{bail, Result};
use std::path::{Path, PathBuf};

use super::{bar, stop_on_signals};
use crate::core::grounded::BoxFormat;
use crate::core::project::{pairs_in_project, Project};
use crate::core::rec::profile::RecProfile;
use crate::core::runs::config::EvalSettings;
use crate::core::segment::SegmenterConfig;
use crate::train::objectives::{Objective, ObjectiveConfig};
use crate::train::trainer::{self, TrainConfig};

/// Options of `spr train`.
#[derive(Debug, clap::Args)]
pub struct TrainArgs {
    /// Model folder or hub id (llava-hf layout).
    #[arg(long, required_unless_present = "resume")]
    pub model: Option<String>,
    /// TRL-layout preference JSONL (as `spr export` writes it), or an SPR project folder.
    #[arg(long, required_unless_present = "resume")]
    pub data: Option<PathBuf>,
    /// Run folder (config.json, events.jsonl, checkpoints, adapter).
    #[arg(long)]
    pub run: PathBuf,
    /// Objective: dpo, ipo, hinge, robust, sft or fdpo.
    #[arg(long, default_value = "dpo")]
    pub objective: String,
    /// Optimizer steps.
    #[arg(long, default_value_t = 1000)]
    pub steps: u64,
    /// Peak learning rate.
    #[arg(long, default_value_t = 1e-5)]
    pub lr: f64,
    /// DPO β.
    #[arg(long, default_value_t = 0.1)]
    pub beta: f64,
    /// LoRA rank.
    #[arg(long, default_value_t = 128)]
    pub lora_r: usize,
    /// LoRA α.
    #[arg(long, default_value_t = 256.0)]
    pub lora_alpha: f64,
    /// Pairs (or supervised rows) per batch.
    #[arg(long, default_value_t = 2)]
    pub batch: usize,
    /// Micro-batches per optimizer step.
    #[arg(long, default_value_t = 1)]
    pub grad_accum: usize,
    /// What trains: lora (adapters) or full (every language-model and
    /// projector weight; for small models).
    #[arg(long, default_value = "lora")]
    pub tune: String,
    /// Keep the tensors whose llava-hf name starts with this prefix as
    /// loaded (repeatable); with LoRA, the modules so named get no trained
    /// adapter.
    #[arg(long)]
    pub freeze: Vec<String>,
    /// Linear warm-up steps before the cosine decay.
    #[arg(long, default_value_t = 0)]
    pub warmup: u64,
    /// Final learning rate as a fraction of --lr.
    #[arg(long, default_value_t = 0.0)]
    pub min_lr_ratio: f64,
    /// Longest prompt + response kept, in tokens (longer pairs are skipped).
    #[arg(long, default_value_t = 2048)]
    pub max_len: usize,
    /// Checkpoint every this many steps (0: only on stop and at the end).
    #[arg(long, default_value_t = 500)]
    pub checkpoint_every: u64,
    /// Seed of the LoRA initialisation and the data order.
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// Continue the run in --run from its latest checkpoint (other options
    /// are taken from its config.json).
    #[arg(long)]
    pub resume: bool,
    /// fDPO segmenter: `grounded` (text vs box tokens, in the box syntax
    /// of --box-format) or `sections` (<description> / <reasoning>).
    #[arg(long, default_value = "grounded")]
    pub segmenter: String,
    /// Box syntax of the responses, for the grounded segmenter (default:
    /// the project's [model] format when --data is a project, else ferret).
    #[arg(long)]
    pub box_format: Option<BoxFormat>,
    /// REC set evaluated during training (MDETR-style JSON or JSONL).
    #[arg(long)]
    pub eval_data: Option<PathBuf>,
    /// Evaluate every N steps (0: only at the end).
    #[arg(long, default_value_t = 0)]
    pub eval_every: u64,
    /// Folder the REC set's images are relative to.
    #[arg(long)]
    pub eval_image_root: Option<PathBuf>,
    /// REC prompt profile (llava, ferret, qwen, internvl, paligemma, tiny).
    #[arg(long, default_value = "llava")]
    pub eval_profile: String,
    /// Evaluate only the first N samples of the REC set.
    #[arg(long)]
    pub eval_limit: Option<usize>,
    /// Most tokens per REC answer.
    #[arg(long, default_value_t = 64)]
    pub eval_max_new_tokens: usize,
    /// REC answers decoded together.
    #[arg(long, default_value_t = 8)]
    pub eval_batch: usize,
}

impl TrainArgs {
    /// The fDPO segmenter these options name.
    fn segmenter(&self, data: &Path) -> Result<SegmenterConfig> {
        match self.segmenter.as_str() {
            "sections" => Ok(SegmenterConfig::Sections {
                outside: Default::default(),
            }),
            "grounded" => {
                let format = match (self.box_format, pairs_in_project(data)) {
                    (Some(f), _) => f,
                    (None, Some((dir, _))) => Project::open(&dir)?.config.model.format,
                    (None, None) => BoxFormat::Ferret,
                };
                Ok(SegmenterConfig::Grounded { format })
            }
            other => bail!("--segmenter {other:?}: expected grounded or sections"),
        }
    }

    /// The evaluation during training these options ask for.
    fn eval(&self) -> Result<Option<EvalSettings>> {
        let Some(data) = &self.eval_data else {
            return Ok(None);
        };
        Ok(Some(EvalSettings {
            data: data.clone(),
            image_root: self.eval_image_root.clone(),
            every: self.eval_every,
            profile: RecProfile::named(&self.eval_profile)
                .map_err(|e| anyhow::anyhow!("--eval-profile: {e}"))?,
            limit: self.eval_limit,
            max_new_tokens: self.eval_max_new_tokens,
            batch: self.eval_batch,
        }))
    }
}

/// `spr train`: a progress bar per step; Ctrl-C / SIGTERM saves a
/// checkpoint and exits.
pub fn train(args: &TrainArgs) -> Result<()> {
    crate::train::tune_allocator();

    let stop = stop_on_signals()?;
    let pb = bar(0, "train");
    let progress = |log: &trainer::StepLog| {
        pb.set_length(log.total_steps);
        pb.set_position(log.step);
        pb.set_message(format!("loss {:.4}", log.metrics.loss));
    };
    let summary = if args.resume {
        trainer::resume(&args.run, progress, &stop)
    } else {
        let (Some(model), Some(data)) = (&args.model, &args.data) else {
            bail!("--model and --data are required unless --resume");
        };
        let objective: Objective = args
            .objective
            .parse()
            .map_err(|e| anyhow::anyhow!("--objective: {e}"))?;
        let mut cfg = TrainConfig::new(model.clone(), data.clone());
        cfg.objective = ObjectiveConfig {
            beta: args.beta,
            ..ObjectiveConfig::new(objective)
        };
        cfg.total_steps = args.steps;
        cfg.lr = args.lr;
        cfg.lora_r = args.lora_r;
        cfg.lora_alpha = args.lora_alpha;
        cfg.batch_size = args.batch;
        cfg.grad_accum = args.grad_accum;
        cfg.tune = args
            .tune
            .parse()
            .map_err(|e| anyhow::anyhow!("--tune: {e}"))?;
        cfg.freeze = args.freeze.clone();
        cfg.warmup_steps = args.warmup;
        cfg.min_lr_ratio = args.min_lr_ratio;
        cfg.max_len = args.max_len;
        cfg.checkpoint_every = args.checkpoint_every;
        cfg.seed = args.seed;
        if objective.needs_segments() {
            cfg.segmenter = Some(args.segmenter(data)?);
        }
        cfg.eval = args.eval()?;
        trainer::train(&cfg, &args.run, progress, &stop)
    };
    pb.finish_and_clear();
    let s = summary?;
    for skipped in &s.skipped {
        eprintln!("warning: skipped {skipped}");
    }
    if s.stopped {
        println!(
            "train: stopped at step {}; checkpoint in {} (continue with --resume)",
            s.steps,
            s.last_checkpoint
                .as_deref()
                .map(|p| p.display().to_string())
                .unwrap_or_default()
        );
    } else {
        println!(
            "train: {} steps on {} pairs ({} skipped), final loss {:.4} → {}",
            s.steps,
            s.examples,
            s.skipped.len(),
            s.losses.last().copied().unwrap_or(f64::NAN),
            s.output
                .as_deref()
                .map(|p| p.display().to_string())
                .unwrap_or_default()
        );
    }
    Ok(())
}

/// `spr runs`: one line per run, read through the run-folder contract.
pub fn list(dir: &Path) -> Result<()> {
    use crate::core::runs::{list_runs, RunOverview, RunStatus};
    let runs = list_runs(dir);
    if runs.is_empty() {
        println!("{}: no runs (folders with a config.json)", dir.display());
        return Ok(());
    }
    println!(
        "{:<24} {:<9} {:<7} {:>11} {:>9} {:>9} {:>9}",
        "run", "status", "obj.", "steps", "loss", "acc", "REC@0.5"
    );
    for run in runs {
        let o = RunOverview::read(&run)?;
        let total = o.config.as_ref().map_or(0, |c| c.total_steps);
        let objective = o
            .config
            .as_ref()
            .map_or("?".to_string(), |c| c.objective.objective.to_string());
        let num =
            |v: Option<f64>, digits: usize| v.map_or("-".to_string(), |v| format!("{v:.digits$}"));
        println!(
            "{:<24} {:<9} {:<7} {:>11} {:>9} {:>9} {:>9}",
            run.name(),
            o.status.label(),
            objective,
            format!("{}/{total}", o.steps_done),
            num(o.last_loss, 4),
            num(o.last_accuracy, 2),
            num(o.last_eval.as_ref().map(|e| e.acc_50), 3),
        );
        if let RunStatus::Crashed { message } = &o.status {
            println!("  {message}");
        }
    }
    Ok(())
}
