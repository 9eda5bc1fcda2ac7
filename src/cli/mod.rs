//! The `spr` command line: one subcommand per pipeline step, all on the
//! library code the GUI uses, with progress bars on long work and one-line
//! errors (`error: <file>:<line>: …`).

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};

use crate::core::dataset::Dataset;
use crate::core::grounded::BoxFormat;
use crate::core::pipeline;
use crate::core::project::{
    self, files, CandidateRecord, LineError, MarkRecord, PairRecord, Project, RegionRecord,
    ScoreRecord,
};
use crate::core::rec::{self, PredictionRecord};
use crate::core::scores::NoDetector;

/// Spatial preference data for grounding MLLMs (SPR, ICCV 2025).
#[derive(Debug, Parser)]
#[command(name = "spr", version, about, long_about = None)]
pub struct Cli {
    /// What to do. Without a subcommand: open the GUI on the bundled demo
    /// (or on the current folder if it holds a spr.toml).
    #[command(subcommand)]
    pub command: Option<Command>,
}

/// The `--project` option shared by the stage commands.
#[derive(Debug, clap::Args)]
pub struct ProjectArg {
    /// Project folder (holds spr.toml).
    #[arg(long, short, default_value = ".")]
    pub project: PathBuf,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Open the desktop workbench on a project.
    Gui(ProjectArg),
    /// Print a project's summary.
    Info(ProjectArg),
    /// Validate the project's dataset and list every problem found.
    Check(ProjectArg),
    /// Build SPR region queries for the object-rich images → regions.jsonl.
    Regions {
        #[command(flatten)]
        project: ProjectArg,
        /// Override [regions] seed.
        #[arg(long)]
        seed: Option<u64>,
        /// Override [regions] per_image.
        #[arg(long)]
        per_image: Option<usize>,
    },
    /// Score every candidate (localization; semantic when a scorer exists) → scores.jsonl.
    Score(ProjectArg),
    /// Pick chosen (refined best) vs rejected (worst) per query → pairs.jsonl.
    Pairs {
        #[command(flatten)]
        project: ProjectArg,
        /// Override [scoring] lambda (weight of the semantic score).
        #[arg(long)]
        lambda: Option<f32>,
    },
    /// Export pairs in TRL's vision DPO layout, with the crops as images.
    Export {
        #[command(flatten)]
        project: ProjectArg,
        /// Output folder (default: <project>/export).
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// REC accuracy at IoU 0.5–0.9 and mean IoU of a predictions JSONL file.
    EvalRec {
        /// JSONL with gt_bbox and pred_bbox (or output + width + height) per line.
        #[arg(long)]
        predictions: PathBuf,
        /// Box syntax of `output` texts.
        #[arg(long, default_value = "ferret")]
        format: BoxFormat,
        /// Write the per-sample records (id, boxes, IoU) here as JSONL.
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Generate the synthetic demo project (as committed in assets/demo).
    Demo {
        /// Output folder.
        #[arg(long)]
        out: PathBuf,
        /// Number of scenes.
        #[arg(long, default_value_t = 40)]
        images: usize,
        /// Seed.
        #[arg(long, default_value_t = 2025)]
        seed: u64,
    },
    /// Benchmarks that print figures.
    #[command(subcommand)]
    Bench(BenchCommand),
    /// Train on a TRL-layout JSONL or a project's pairs: LoRA or full, DPO-family or SFT.
    Train(TrainArgs),
    /// The tiny demo model: SFT data, initial model, evaluation.
    #[command(subcommand)]
    Tiny(TinyCommand),
}

/// Steps of making and checking the tiny demo model
/// (`scripts/make_tiny_model.sh` runs them in order).
#[derive(Debug, Subcommand)]
pub enum TinyCommand {
    /// Synthetic scenes → region crops + prompt–completion JSONL (grounded
    /// descriptions and REC answers) + the tokenizer corpus.
    Data {
        /// Output folder.
        #[arg(long)]
        out: PathBuf,
        /// Scenes drawn.
        #[arg(long, default_value_t = 300)]
        scenes: usize,
        /// Seed of the scenes (the demo project's is 2025).
        #[arg(long, default_value_t = 7)]
        seed: u64,
    },
    /// Tokenizer trained on a corpus + tiny config + random weights → a
    /// llava-hf model folder.
    Init {
        /// Corpus, one text per line (`corpus.txt` from `spr tiny data`).
        #[arg(long)]
        corpus: PathBuf,
        /// Output model folder.
        #[arg(long)]
        out: PathBuf,
        /// Seed of the weights.
        #[arg(long, default_value_t = 0)]
        seed: u64,
    },
    /// Describe a project's regions with a model; print the parse rate and
    /// SPR's localization score.
    Eval {
        /// Model folder (llava-hf layout).
        #[arg(long)]
        model: String,
        /// Project whose regions are described.
        #[arg(long, default_value = "assets/demo")]
        project: PathBuf,
        /// Regions described at most.
        #[arg(long, default_value_t = 20)]
        limit: usize,
        /// Most tokens per answer.
        #[arg(long, default_value_t = 160)]
        max_new_tokens: usize,
        /// Write the generations here as JSONL.
        #[arg(long)]
        out: Option<PathBuf>,
    },
}

/// Benchmarks.
#[derive(Debug, Subcommand)]
pub enum BenchCommand {
    /// Load + index + object-rich filter of an annotation file; without FILE,
    /// generates an Objects365-val-sized file first (80k images, ~1.2M boxes).
    Load {
        /// COCO / Objects365 JSON to time.
        file: Option<PathBuf>,
        /// Images in the generated file.
        #[arg(long, default_value_t = 80_000)]
        images: usize,
        /// Keep the generated file at this path instead of deleting it.
        #[arg(long)]
        keep: Option<PathBuf>,
    },
    /// Region construction + localization scoring, queries per second on one core.
    Regions {
        /// Images in the generated scene set.
        #[arg(long, default_value_t = 20_000)]
        images: usize,
    },
    /// DPO-step tokens/s and peak memory of the trainer on a llava-hf model
    /// folder and a TRL-layout pairs file; without them, generates the
    /// DESIGN §7 benchmark model and pairs and times them in a fresh process.
    Train {
        /// llava-hf-layout model folder.
        #[arg(long)]
        model: Option<PathBuf>,
        /// TRL-layout preference JSONL.
        #[arg(long)]
        data: Option<PathBuf>,
        /// Optimizer steps, warm-up included.
        #[arg(long, default_value_t = 20)]
        steps: u64,
        /// Pairs per step.
        #[arg(long, default_value_t = 2)]
        batch: usize,
        /// Leading steps left out of the figures.
        #[arg(long, default_value_t = 2)]
        warmup: u64,
        /// LoRA rank (alpha is twice it).
        #[arg(long, default_value_t = 16)]
        lora_r: usize,
        /// Keep the generated model and pairs in this folder.
        #[arg(long)]
        keep: Option<PathBuf>,
    },
}

/// Run the command line; errors are returned for `main` to print.
pub fn run(cli: Cli) -> Result<()> {
    match cli.command {
        None => crate::app::run(default_project()),
        Some(Command::Gui(p)) => crate::app::run(p.project),
        Some(Command::Info(p)) => show(&p.project),
        Some(Command::Check(p)) => check(&p.project),
        Some(Command::Regions {
            project,
            seed,
            per_image,
        }) => regions(&project.project, seed, per_image),
        Some(Command::Score(p)) => score(&p.project),
        Some(Command::Pairs { project, lambda }) => pairs(&project.project, lambda),
        Some(Command::Export { project, out }) => export(&project.project, out),
        Some(Command::EvalRec {
            predictions,
            format,
            out,
        }) => eval_rec(&predictions, format, out.as_deref()),
        Some(Command::Demo { out, images, seed }) => {
            let cfg = crate::demo::DemoConfig {
                images,
                seed,
                ..Default::default()
            };
            let s = crate::demo::generate(&out, &cfg)?;
            println!(
                "demo: {} synthetic images, {} annotations, {} regions, {} candidates, {} pairs → {}",
                s.images,
                s.annotations,
                s.regions,
                s.candidates,
                s.pairs,
                out.display()
            );
            Ok(())
        }
        Some(Command::Bench(BenchCommand::Load { file, images, keep })) => {
            crate::bench::load_command(file.as_deref(), images, keep.as_deref())
        }
        Some(Command::Bench(BenchCommand::Regions { images })) => {
            crate::bench::regions_command(images)
        }
        Some(Command::Bench(BenchCommand::Train {
            model,
            data,
            steps,
            batch,
            warmup,
            lora_r,
            keep,
        })) => crate::bench::train::command(
            model.as_deref(),
            data.as_deref(),
            &crate::bench::train::BenchTrainOptions {
                steps,
                batch,
                warmup,
                lora_r,
            },
            keep.as_deref(),
        ),
        Some(Command::Train(args)) => train(&args),
        Some(Command::Tiny(cmd)) => tiny(cmd),
    }
}

/// The project shown without a subcommand: the current folder if it holds a
/// `spr.toml`, else the bundled demo.
fn default_project() -> PathBuf {
    if Path::new(files::CONFIG).exists() {
        PathBuf::from(".")
    } else {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("assets/demo")
    }
}

fn bar(len: u64, what: &str) -> ProgressBar {
    let b = ProgressBar::new(len);
    if let Ok(style) = ProgressStyle::with_template("{msg:>10} [{bar:30}] {pos}/{len} ({eta})") {
        b.set_style(style.progress_chars("=> "));
    }
    b.set_message(what.to_string());
    b
}

fn open(dir: &Path) -> Result<Project> {
    Ok(Project::open(dir)?)
}

/// Load the project's dataset, printing a count of its issues.
fn load_dataset(p: &Project) -> Result<Dataset> {
    let ds = p.load_dataset()?;
    if let Some(first) = ds.issues.first() {
        eprintln!(
            "warning: {} dataset issue(s), bad records skipped (first: {first}); `spr check` lists all",
            ds.issues.len()
        );
    }
    Ok(ds)
}

/// Read a stage file, warning about (and skipping) bad lines.
fn read_stage<T>(p: &Project, name: &str) -> Result<Vec<T>>
where
    T: serde::de::DeserializeOwned + project::Versioned,
{
    let path = p.path(name);
    let (records, errors) = project::read_jsonl::<T>(&path)
        .with_context(|| format!("reading {name}; run the earlier pipeline step first"))?;
    warn_lines(&errors);
    Ok(records)
}

fn warn_lines(errors: &[LineError]) {
    for e in errors.iter().take(5) {
        eprintln!("warning: {e}; line skipped");
    }
    if errors.len() > 5 {
        eprintln!("warning: … and {} more bad lines skipped", errors.len() - 5);
    }
}

fn warn_issues(issues: &[pipeline::StageIssue]) {
    for e in issues.iter().take(5) {
        eprintln!("warning: {e}; skipped");
    }
    if issues.len() > 5 {
        eprintln!("warning: … and {} more records skipped", issues.len() - 5);
    }
}

fn check(dir: &Path) -> Result<()> {
    let p = open(dir)?;
    let ds = p.load_dataset()?;
    let pre = p.config.dataset.preprocess();
    println!(
        "{}: {} images, {} objects, {} categories, {} object-rich images (≥ {} objects of area ≥ {})",
        p.annotations_path().display(),
        ds.images.len(),
        ds.objects.len(),
        ds.categories.len(),
        ds.object_rich_images(&pre).len(),
        pre.min_objects,
        pre.min_area
    );
    let mut missing = 0;
    for i in 0..ds.images.len() {
        if !ds.image_path(i).is_file() {
            missing += 1;
            if missing <= 5 {
                println!("{}: image file not found", ds.image_path(i).display());
            }
        }
    }
    for issue in &ds.issues {
        println!("{issue}");
    }
    println!(
        "{} issue(s), {} missing image file(s)",
        ds.issues.len(),
        missing
    );
    Ok(())
}

fn regions(dir: &Path, seed: Option<u64>, per_image: Option<usize>) -> Result<()> {
    let p = open(dir)?;
    let ds = load_dataset(&p)?;
    let pre = p.config.dataset.preprocess();
    let mut cfg = p.config.regions;
    cfg.seed = seed.unwrap_or(cfg.seed);
    cfg.per_image = per_image.unwrap_or(cfg.per_image);
    let rich = ds.object_rich_images(&pre).len();
    let b = bar(rich as u64, "regions");
    let records = pipeline::build_regions(&ds, &pre, &cfg, &|n| b.inc(n));
    b.finish_and_clear();
    let out = p.path(files::REGIONS);
    project::write_jsonl(&out, &records)?;
    println!(
        "regions: {} queries from {rich} object-rich images (of {}) → {}",
        records.len(),
        ds.images.len(),
        out.display()
    );
    Ok(())
}

fn score(dir: &Path) -> Result<()> {
    let p = open(dir)?;
    let ds = load_dataset(&p)?;
    let regions: Vec<RegionRecord> = read_stage(&p, files::REGIONS)?;
    let candidates: Vec<CandidateRecord> = read_stage(&p, files::CANDIDATES)?;
    let b = bar(candidates.len() as u64, "score");
    let (scores, issues) = pipeline::score_candidates(
        &ds,
        &regions,
        &candidates,
        &p.config.scoring,
        &NoDetector,
        &|n| b.inc(n),
    );
    b.finish_and_clear();
    warn_issues(&issues);
    let out = p.path(files::SCORES);
    project::write_jsonl(&out, &scores)?;
    let issues_in_text: usize = scores.iter().map(|s| s.parse_issues.len()).sum();
    println!(
        "score: {} candidates scored ({} skipped, {} box-syntax problems) → {}",
        scores.len(),
        issues.len(),
        issues_in_text,
        out.display()
    );
    println!(
        "note: semantic score missing: this build has no CLIP scorer yet, so `semantic` is null \
         and composites use the localization score alone"
    );
    Ok(())
}

fn pairs(dir: &Path, lambda: Option<f32>) -> Result<()> {
    let p = open(dir)?;
    let ds = load_dataset(&p)?;
    let regions: Vec<RegionRecord> = read_stage(&p, files::REGIONS)?;
    let candidates: Vec<CandidateRecord> = read_stage(&p, files::CANDIDATES)?;
    let scores: Vec<ScoreRecord> = read_stage(&p, files::SCORES)?;
    // Hand-set marks are optional.
    let marks: Vec<MarkRecord> = if p.path(files::MARKS).exists() {
        read_stage(&p, files::MARKS)?
    } else {
        Vec::new()
    };
    let mut scoring = p.config.scoring.clone();
    if let Some(l) = lambda {
        if !(0.0..=1.0).contains(&l) {
            bail!("--lambda {l}: must be within 0 and 1");
        }
        scoring.lambda = l;
    }
    let (pairs, stats, issues) = pipeline::build_pairs(
        &ds,
        &regions,
        &candidates,
        &scores,
        &marks,
        &scoring,
        p.config.model.format,
    );
    warn_issues(&issues);
    let out = p.path(files::PAIRS);
    project::write_jsonl(&out, &pairs)?;
    println!(
        "pairs: {} pairs from {} queries ({} marked by hand, {} with < 2 candidates, {} ties, {} skipped) at λ = {} → {}",
        stats.pairs,
        stats.manual,
        stats.queries,
        stats.too_few_candidates,
        stats.ties,
        issues.len(),
        scoring.lambda,
        out.display()
    );
    if stats.semantic_missing > 0 {
        println!(
            "note: {} pair(s) ranked by localization alone: semantic score missing (no CLIP scorer yet)",
            stats.semantic_missing
        );
    }
    Ok(())
}

fn export(dir: &Path, out: Option<PathBuf>) -> Result<()> {
    let p = open(dir)?;
    let pairs: Vec<PairRecord> = read_stage(&p, files::PAIRS)?;
    let out = out.unwrap_or_else(|| p.path(files::EXPORT_DIR));
    let b = bar(pairs.len() as u64, "export");
    let (records, issues) = pipeline::export_trl(
        &pairs,
        &p.image_root(),
        &p.config.export.prompt,
        &out,
        &|n| b.inc(n),
    )?;
    b.finish_and_clear();
    warn_issues(&issues);
    println!(
        "export: {} pairs in TRL layout ({} skipped) → {}",
        records.len(),
        issues.len(),
        out.join(files::TRL_PAIRS).display()
    );
    Ok(())
}

fn eval_rec(predictions: &Path, format: BoxFormat, out: Option<&Path>) -> Result<()> {
    let (records, errors) = project::read_jsonl_plain::<PredictionRecord>(predictions)?;
    warn_lines(&errors);
    let mut samples = Vec::with_capacity(records.len());
    let mut bad = 0;
    for (line, r) in &records {
        match r.score(format, &format!("line{line}")) {
            Ok(s) => samples.push(s),
            Err(e) => {
                bad += 1;
                if bad <= 5 {
                    eprintln!(
                        "warning: {}:{line}: {e}; line skipped",
                        predictions.display()
                    );
                }
            }
        }
    }
    if samples.is_empty() {
        bail!("{}: no scorable prediction records", predictions.display());
    }
    let report = rec::rec_report(&samples);
    println!(
        "REC on {} samples ({} without a box, {} lines skipped):",
        report.samples,
        report.no_box,
        errors.len() + bad
    );
    for (t, acc) in &report.accuracy {
        println!("  Acc@{t:.1}  {:6.2}%", acc * 100.0);
    }
    println!("  mean IoU  {:.4}", report.mean_iou);
    if let Some(out) = out {
        project::write_jsonl(out, &samples)?;
        println!("per-sample records → {}", out.display());
    }
    Ok(())
}

fn show(dir: &Path) -> Result<()> {
    let p = open(dir)?;
    println!("{} ({})", p.config.name, p.root.display());
    if !p.config.description.is_empty() {
        println!("{}", p.config.description);
    }
    let count = |name: &str| -> String {
        match std::fs::read_to_string(p.path(name)) {
            Ok(t) => t
                .lines()
                .filter(|l| !l.trim().is_empty())
                .count()
                .to_string(),
            Err(_) => "missing".into(),
        }
    };
    println!(
        "regions: {}, candidates: {}, scores: {}, pairs: {}",
        count(files::REGIONS),
        count(files::CANDIDATES),
        count(files::SCORES),
        count(files::PAIRS)
    );
    Ok(())
}

/// `spr tiny ...`.
fn tiny(cmd: TinyCommand) -> Result<()> {
    use crate::demo::tiny;
    match cmd {
        TinyCommand::Data { out, scenes, seed } => {
            let s = tiny::write_sft_data(&out, &tiny::SftDataConfig { scenes, seed })?;
            println!(
                "tiny data: {} description rows + {} REC rows → {}",
                s.descriptions,
                s.rec,
                s.file.display()
            );
        }
        TinyCommand::Init { corpus, out, seed } => {
            let n = tiny::init_model(&out, &corpus, seed)?;
            println!(
                "tiny init: {:.2}M parameters (random) → {}",
                n as f64 / 1e6,
                out.display()
            );
        }
        TinyCommand::Eval {
            model,
            project,
            limit,
            max_new_tokens,
            out,
        } => {
            let pb = bar(0, "describe");
            let r = tiny::evaluate(&model, &project, limit, max_new_tokens, &|i, n| {
                pb.set_length(n as u64);
                pb.set_position(i as u64);
            })?;
            pb.finish_and_clear();
            for g in r.generations.iter().take(3) {
                println!("{}: {}", g.query_id, g.text);
            }
            println!(
                "tiny eval: {} regions, parse rate {:.2}, mean localization {:.3}, {:.1} tokens/s",
                r.generations.len(),
                r.parse_rate(),
                r.mean_localization(),
                r.tokens as f64 / r.seconds.max(1e-9)
            );
            if let Some(out) = out {
                let mut text = String::new();
                for g in &r.generations {
                    text.push_str(&serde_json::to_string(g)?);
                    text.push('\n');
                }
                crate::core::project::write_atomic(&out, text.as_bytes())?;
            }
        }
    }
    Ok(())
}

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
}

/// `spr train`: a progress bar per step; Ctrl-C / SIGTERM saves a
/// checkpoint and exits.
fn train(args: &TrainArgs) -> Result<()> {
    use crate::train::objectives::{Objective, ObjectiveConfig};
    use crate::train::trainer::{self, TrainConfig};
    use std::sync::atomic::AtomicBool;
    crate::train::tune_allocator();
    use std::sync::Arc;

    let stop = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        // A second signal while the checkpoint is being written exits at once.
        signal_hook::flag::register_conditional_shutdown(sig, 1, Arc::clone(&stop))
            .context("cannot install the signal handler")?;
        signal_hook::flag::register(sig, Arc::clone(&stop))
            .context("cannot install the signal handler")?;
    }
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
        cfg.warmup_steps = args.warmup;
        cfg.min_lr_ratio = args.min_lr_ratio;
        cfg.max_len = args.max_len;
        cfg.checkpoint_every = args.checkpoint_every;
        cfg.seed = args.seed;
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
