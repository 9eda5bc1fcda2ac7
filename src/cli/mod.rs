//! The `spr` command line: one subcommand per pipeline step, all on the
//! library code the GUI uses, with progress bars on long work and one-line
//! errors (`error: <file>:<line>: …`).
//!
//! - this file: the commands and the project-stage steps;
//! - [`infer`]: `spr generate`, `spr merge-shards`, `spr eval`;
//! - [`train`]: `spr train`, `spr runs`;
//! - [`tiny`]: `spr tiny …`, the tiny demo models.

mod infer;
mod stages;
mod tiny;
mod train;

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};

use crate::core::dataset::Dataset;
use crate::core::grounded::BoxFormat;
use crate::core::pipeline;
use crate::core::project::{self, files, LineError, Project};

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
    Check {
        #[command(flatten)]
        project: ProjectArg,
        /// Decode every image (header first, so a decompression bomb is
        /// refused before any large allocation), in parallel. On by default
        /// up to 5,000 images.
        #[arg(long, conflicts_with = "no_images")]
        images: bool,
        /// Only check that image files exist.
        #[arg(long)]
        no_images: bool,
    },
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
        /// Write here instead of <project>/pairs.jsonl (e.g. one file per
        /// λ; `spr train --data` reads such a file when it lies in the
        /// project folder).
        #[arg(long)]
        out: Option<PathBuf>,
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
        /// CLIP model folder copied into the demo (models/clip) for its
        /// semantic scores (default: the committed tiny CLIP).
        #[arg(long)]
        clip: Option<PathBuf>,
        /// OWLv2 folder copied into the demo (models/owlv2) for its
        /// detector boxes (default: the committed tiny OWLv2).
        #[arg(long)]
        detector: Option<PathBuf>,
        /// Scenes of the REC evaluation set in rec/ (their own seed).
        #[arg(long, default_value_t = 20)]
        rec_scenes: usize,
    },
    /// Benchmarks that print figures.
    #[command(subcommand)]
    Bench(BenchCommand),
    /// Train on a TRL-layout JSONL or a project's pairs: LoRA or full, DPO-family or SFT.
    Train(train::TrainArgs),
    /// A model writes grounded region descriptions → candidates.jsonl.
    Generate(infer::GenerateArgs),
    /// Merge `spr generate --shard I/N` outputs into candidates.jsonl.
    MergeShards(infer::MergeArgs),
    /// REC accuracy of a model at IoU 0.5–0.9 on a REC set.
    Eval(infer::EvalArgs),
    /// The training runs in a folder, with status, steps, last loss and
    /// last REC evaluation.
    Runs {
        /// Folder holding run folders (default: ./runs).
        #[arg(default_value = "runs")]
        dir: PathBuf,
    },
    /// The tiny demo model: SFT data, initial model, evaluation.
    #[command(subcommand)]
    Tiny(tiny::TinyCommand),
    /// SPR's experiment end to end: training scenes → candidates by the
    /// base model → scores → pairs per λ → every arm × seed trained →
    /// REC evaluation → report with table, plot and hypotheses. Resumes
    /// where an earlier invocation stopped.
    Experiment {
        /// The experiment's config (sizes, arms, seeds).
        #[arg(long, default_value = "experiments/tiny.toml")]
        config: PathBuf,
        /// Work folder: project, runs, evaluations (default:
        /// target/experiment/<config stem>).
        #[arg(long)]
        work: Option<PathBuf>,
        /// Report folder (default: docs/experiments/<config stem>).
        #[arg(long)]
        report: Option<PathBuf>,
    },
}

/// Benchmarks.
#[derive(Debug, Subcommand)]
pub enum BenchCommand {
    /// Candidates/s and peak memory of `spr score` with the project's CLIP
    /// (in a fresh process).
    Score {
        /// Project folder (its [scoring] semantic_model is timed).
        #[arg(long, default_value = "assets/demo")]
        project: PathBuf,
        /// Measure in this process and print JSON (used by the parent run).
        #[arg(long, hide = true)]
        child: bool,
    },
    /// New tokens/s and peak memory of batched generation on a llava-hf
    /// model and a folder of images (each batch size in a fresh process);
    /// without them, the DESIGN §7 benchmark model and the demo's scenes.
    Generate {
        /// llava-hf-layout model folder.
        #[arg(long)]
        model: Option<PathBuf>,
        /// Folder of PNG / JPEG images.
        #[arg(long)]
        images: Option<PathBuf>,
        /// Images used (the first ones by name).
        #[arg(long, default_value_t = 16)]
        count: usize,
        /// New tokens per image.
        #[arg(long, default_value_t = 64)]
        new_tokens: usize,
        /// Batch sizes, comma-separated.
        #[arg(long, value_delimiter = ',', default_value = "1,8,16")]
        batches: Vec<usize>,
        /// Measure in this process and print JSON (used by the parent run).
        #[arg(long, hide = true)]
        child: bool,
    },
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

/// Sets the threads per CPU operation for the command (see
/// [`crate::model::set_cpu_threads_per_op`]): one for the commands that
/// split their work over the cores (decoding, scoring, training), every
/// core for the rest. Call before any thread starts.
pub fn configure_threads(cli: &Cli) {
    let decoding = matches!(
        cli.command,
        Some(Command::Generate(_))
            | Some(Command::Eval(_))
            | Some(Command::Score(_))
            | Some(Command::Train(_))
            | Some(Command::Tiny(_))
            | Some(Command::Experiment { .. })
            | Some(Command::Bench(BenchCommand::Generate { .. }))
            | Some(Command::Bench(BenchCommand::Score { .. }))
            | Some(Command::Bench(BenchCommand::Train { .. }))
    );
    crate::model::set_cpu_threads_per_op(if decoding {
        1
    } else {
        crate::model::cpu_cores()
    });
}

/// Run the command line; errors are returned for `main` to print.
pub fn run(cli: Cli) -> Result<()> {
    match cli.command {
        None => open_gui(default_project()),
        Some(Command::Gui(p)) => open_gui(p.project),
        Some(Command::Info(p)) => stages::show(&p.project),
        Some(Command::Check {
            project,
            images,
            no_images,
        }) => stages::check(&project.project, images, no_images),
        Some(Command::Regions {
            project,
            seed,
            per_image,
        }) => stages::regions(&project.project, seed, per_image),
        Some(Command::Score(p)) => stages::score(&p.project),
        Some(Command::Pairs {
            project,
            lambda,
            out,
        }) => stages::pairs(&project.project, lambda, out),
        Some(Command::Export { project, out }) => stages::export(&project.project, out),
        Some(Command::EvalRec {
            predictions,
            format,
            out,
        }) => infer::eval_rec(&predictions, format, out.as_deref()),
        Some(Command::Demo {
            out,
            images,
            seed,
            clip,
            detector,
            rec_scenes,
        }) => {
            let mut cfg = crate::demo::DemoConfig {
                images,
                seed,
                rec_scenes,
                ..Default::default()
            };
            if clip.is_some() {
                cfg.clip = clip;
            }
            if detector.is_some() {
                cfg.detector = detector;
            }
            let s = crate::demo::generate(&out, &cfg)?;
            println!(
                "demo: {} synthetic images, {} annotations, {} regions, {} candidates, {} pairs, {} REC expressions → {}",
                s.images,
                s.annotations,
                s.regions,
                s.candidates,
                s.pairs,
                s.rec_expressions,
                out.display()
            );
            Ok(())
        }
        Some(Command::Bench(BenchCommand::Load { file, images, keep })) => {
            crate::bench::load_command(file.as_deref(), images, keep.as_deref())
        }
        Some(Command::Bench(BenchCommand::Score { project, child })) => {
            crate::bench::score::command(&project, child)
        }
        Some(Command::Bench(BenchCommand::Generate {
            model,
            images,
            count,
            new_tokens,
            batches,
            child,
        })) => crate::bench::generate::command(
            model.as_deref(),
            images.as_deref(),
            count,
            new_tokens,
            &batches,
            child,
        ),
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
        Some(Command::Train(args)) => train::train(&args),
        Some(Command::Generate(args)) => infer::generate(&args),
        Some(Command::MergeShards(args)) => infer::merge(&args),
        Some(Command::Eval(args)) => infer::eval(&args),
        Some(Command::Runs { dir }) => train::list(&dir),
        Some(Command::Tiny(cmd)) => tiny::run(cmd),
        Some(Command::Experiment {
            config,
            work,
            report,
        }) => experiment(config, work, report),
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

/// Whether progress should also be printed as plain `what done/total`
/// lines on stderr (`SPR_PROGRESS=lines`: the GUI sets it for the `spr`
/// processes it starts, whose stderr is a file, not a terminal).
fn progress_lines() -> bool {
    std::env::var("SPR_PROGRESS").is_ok_and(|v| v == "lines")
}

/// A flag set by Ctrl-C or SIGTERM, so long work can stop cleanly (a
/// second signal exits at once).
fn stop_on_signals() -> Result<std::sync::Arc<std::sync::atomic::AtomicBool>> {
    use std::sync::Arc;
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register_conditional_shutdown(sig, 1, Arc::clone(&stop))
            .context("cannot install the signal handler")?;
        signal_hook::flag::register(sig, Arc::clone(&stop))
            .context("cannot install the signal handler")?;
    }
    Ok(stop)
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

fn experiment(config: PathBuf, work: Option<PathBuf>, report: Option<PathBuf>) -> Result<()> {
    let stem = config
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "experiment".into());
    let paths = crate::experiment::ExperimentPaths {
        work: work.unwrap_or_else(|| PathBuf::from("target/experiment").join(&stem)),
        report: report.unwrap_or_else(|| PathBuf::from("docs/experiments").join(&stem)),
        spr: std::env::current_exe().context("locating the spr binary")?,
        config,
    };
    let r = crate::experiment::run(&paths)?;
    println!("experiment {}: report → {}", r.name, paths.report.display());
    for v in &r.verdicts {
        println!("  {}: {}", v.verdict, v.hypothesis);
    }
    Ok(())
}

#[cfg(feature = "gui")]
fn open_gui(project: PathBuf) -> Result<()> {
    crate::app::run(project)
}

#[cfg(not(feature = "gui"))]
fn open_gui(_project: PathBuf) -> Result<()> {
    anyhow::bail!(
        "this spr was built without the GUI (--no-default-features): run a subcommand (spr --help)"
    )
}
