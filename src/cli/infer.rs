//! The model-loop commands: `spr generate` (a model writes candidates),
//! `spr merge-shards`, `spr eval` (REC accuracy of a model) and
//! `spr eval-rec` (REC accuracy of an external predictions file).

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

use super::{bar, open, stop_on_signals, warn_lines};
use crate::core::grounded::BoxFormat;
use crate::core::project;
use crate::core::rec::data as rec_data;
use crate::core::rec::profile::RecProfile;
use crate::core::rec::{self, eval_files, PredictionRecord, RecReport, RecRunReport};
use crate::core::runs::events::now_s;
use crate::infer::candidates::{self, GenerateOptions, Shard};
use crate::infer::rec::{evaluate, RecEvalOptions};
use crate::infer::{load_policy, model_label};

/// Options of `spr generate`.
#[derive(Debug, clap::Args)]
pub struct GenerateArgs {
    /// Project folder.
    #[arg(long, short, default_value = ".")]
    pub project: PathBuf,
    /// Model folder or hub id (llava-hf layout).
    #[arg(long)]
    pub model: String,
    /// LoRA adapter: an adapter folder, a run folder or a checkpoint.
    #[arg(long)]
    pub adapter: Option<PathBuf>,
    /// Prompt templates, comma-separated ids (default: [generate] prompts).
    #[arg(long, value_delimiter = ',')]
    pub prompts: Option<Vec<String>>,
    /// Samples per (query, prompt) (default: [generate] samples).
    #[arg(long)]
    pub samples: Option<usize>,
    /// Softmax temperature; 0 decodes greedily (default: [generate]).
    #[arg(long)]
    pub temperature: Option<f64>,
    /// Nucleus mass (default: [generate] top_p).
    #[arg(long)]
    pub top_p: Option<f64>,
    /// Seed of the sampling streams (default: [generate] seed).
    #[arg(long)]
    pub seed: Option<u64>,
    /// Most tokens per description (default: [generate] max_new_tokens).
    #[arg(long)]
    pub max_new_tokens: Option<usize>,
    /// Sequences decoded together.
    #[arg(long, default_value_t = 16)]
    pub batch: usize,
    /// Only shard I of N (0-based), e.g. `--shard 2/8`, for a job array;
    /// merge the outputs with `spr merge-shards`.
    #[arg(long)]
    pub shard: Option<Shard>,
    /// Only the first N queries.
    #[arg(long)]
    pub limit: Option<usize>,
    /// Only these queries, comma-separated ids (e.g. `3-0,3-1`).
    #[arg(long, value_delimiter = ',')]
    pub queries: Option<Vec<String>>,
    /// Append to this file (default: candidates.jsonl, or
    /// candidates.shard-I-of-N.jsonl with --shard).
    #[arg(long)]
    pub out: Option<PathBuf>,
}

/// `spr generate`.
pub fn generate(args: &GenerateArgs) -> Result<()> {
    let p = open(&args.project)?;
    let mut config = p.config.generate.clone();
    if let Some(v) = &args.prompts {
        config.prompts = v.clone();
    }
    config.samples = args.samples.unwrap_or(config.samples);
    config.temperature = args.temperature.unwrap_or(config.temperature);
    config.top_p = args.top_p.unwrap_or(config.top_p);
    config.seed = args.seed.unwrap_or(config.seed);
    config.max_new_tokens = args.max_new_tokens.unwrap_or(config.max_new_tokens);
    let opts = GenerateOptions {
        model: args.model.clone(),
        adapter: args.adapter.clone(),
        config,
        batch: args.batch,
        shard: args.shard,
        limit: args.limit,
        queries: args.queries.clone(),
        out: args.out.clone(),
    };
    let stop = stop_on_signals()?;
    let pb = bar(0, "generate");
    let mut progress = |s: &candidates::GenerateProgress| {
        pb.set_length(s.total as u64);
        pb.set_position(s.done as u64);
        pb.set_message(format!(
            "{:.0} tok/s",
            s.tokens as f64 / s.seconds.max(1e-9)
        ));
    };
    let result = candidates::generate(&p, &opts, &mut progress, &stop);
    pb.finish_and_clear();
    let s = result?;
    for f in s.failed.iter().take(5) {
        eprintln!("warning: {f}; skipped");
    }
    if s.failed.len() > 5 {
        eprintln!("warning: … and {} more queries skipped", s.failed.len() - 5);
    }
    println!(
        "generate: {} candidates by {} ({} already there, {} queries skipped), {} new tokens in {:.1} s ({:.0} tokens/s) → {}",
        s.written,
        s.source,
        s.already_present,
        s.failed.len(),
        s.tokens,
        s.seconds,
        s.tokens as f64 / s.seconds.max(1e-9),
        s.out.display()
    );
    if s.interrupted {
        println!("generate: interrupted; every finished batch is saved, run the same command again to continue");
    }
    Ok(())
}

/// Options of `spr merge-shards`.
#[derive(Debug, clap::Args)]
pub struct MergeArgs {
    /// Project folder.
    #[arg(long, short, default_value = ".")]
    pub project: PathBuf,
    /// Merge even when some shards of 0..N are missing.
    #[arg(long)]
    pub allow_partial: bool,
}

/// `spr merge-shards`.
pub fn merge(args: &MergeArgs) -> Result<()> {
    let p = open(&args.project)?;
    let shards = candidates::find_shards(&p)?;
    let s = candidates::merge_shards(&p, &shards, args.allow_partial)?;
    println!(
        "merge-shards: {} records from {} shard files added ({} already there) → {}",
        s.added,
        s.shards.len(),
        s.already_present,
        p.path(project::files::CANDIDATES).display()
    );
    Ok(())
}

/// Options of `spr eval`.
#[derive(Debug, clap::Args)]
pub struct EvalArgs {
    /// Model folder or hub id (llava-hf layout).
    #[arg(long)]
    pub model: String,
    /// LoRA adapter: an adapter folder, a run folder or a checkpoint.
    #[arg(long)]
    pub adapter: Option<PathBuf>,
    /// REC set: MDETR-style COCO JSON (finetune_refcoco_val.json, …) or
    /// JSONL with image, expression, bbox (xyxy pixels).
    #[arg(long)]
    pub data: PathBuf,
    /// Folder the set's image paths are relative to (default: the set's
    /// folder, or its images/ subfolder).
    #[arg(long)]
    pub image_root: Option<PathBuf>,
    /// Prompt profile: llava, ferret, qwen, internvl, paligemma, tiny.
    #[arg(long, default_value = "llava")]
    pub profile: String,
    /// A prompt of your own, with {expression} (overrides the profile's).
    #[arg(long)]
    pub prompt: Option<String>,
    /// Box syntax of the answers (overrides the profile's).
    #[arg(long)]
    pub format: Option<BoxFormat>,
    /// Samples decoded together.
    #[arg(long, default_value_t = 8)]
    pub batch: usize,
    /// Most tokens per answer.
    #[arg(long, default_value_t = 64)]
    pub max_new_tokens: usize,
    /// Only the first N samples.
    #[arg(long)]
    pub limit: Option<usize>,
    /// Output folder for report.json and samples.jsonl (default:
    /// evals/<model>[+adapter]-<data>).
    #[arg(long)]
    pub out: Option<PathBuf>,
}

/// Prints a REC report as a table.
pub fn print_report(title: &str, report: &RecReport) {
    println!("{title}");
    for (t, acc) in &report.accuracy {
        println!("  Acc@{t:.1}     {:6.2}%", acc * 100.0);
    }
    println!("  mean IoU    {:.4}", report.mean_iou);
    println!(
        "  parse rate  {:6.2}%  ({} of {} answers without a box)",
        report.parse_rate * 100.0,
        report.no_box,
        report.samples
    );
}

/// `spr eval`.
pub fn eval(args: &EvalArgs) -> Result<()> {
    let mut profile =
        RecProfile::named(&args.profile).map_err(|e| anyhow::anyhow!("--profile: {e}"))?;
    if let Some(prompt) = &args.prompt {
        profile.prompt = prompt.clone();
        profile.name = "custom".into();
    }
    if let Some(f) = args.format {
        profile.format = f;
    }
    profile
        .validate()
        .map_err(|e| anyhow::anyhow!("--prompt: {e}"))?;
    let set = rec_data::load(&args.data, args.image_root.as_deref())?;
    for i in set.issues.iter().take(5) {
        eprintln!("warning: {i}; skipped");
    }
    if set.issues.len() > 5 {
        eprintln!(
            "warning: … and {} more records skipped",
            set.issues.len() - 5
        );
    }
    if set.items.is_empty() {
        bail!("{}: no usable REC sample", args.data.display());
    }
    let (bundle, adapter) = load_policy(&args.model, args.adapter.as_deref())?;
    let label = model_label(&args.model, adapter.as_deref());
    let stem = args
        .data
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "rec".into());
    let out = args.out.clone().unwrap_or_else(|| {
        PathBuf::from("evals").join(format!("{}-{stem}", label.replace(['/', '+', '@'], "_")))
    });
    let opts = RecEvalOptions {
        profile: profile.clone(),
        max_new_tokens: args.max_new_tokens,
        batch: args.batch,
        limit: args.limit,
    };
    let stop = stop_on_signals()?;
    let pb = bar(0, "eval");
    let lines = super::progress_lines();
    let mut progress = |done: usize, total: usize| {
        pb.set_length(total as u64);
        pb.set_position(done as u64);
        if lines {
            eprintln!("eval {done}/{total}");
        }
    };
    let result = evaluate(&bundle, &set, &opts, &mut progress, &stop);
    pb.finish_and_clear();
    let r = result?;
    for s in r.skipped.iter().take(5) {
        eprintln!("warning: {s}; skipped");
    }
    if r.samples.is_empty() {
        bail!("no sample could be evaluated ({} skipped)", r.skipped.len());
    }
    print_report(
        &format!(
            "REC of {label} on {} ({} samples, profile {}, {} skipped{}):",
            args.data.display(),
            r.report.samples,
            profile.name,
            r.skipped.len() + set.issues.len(),
            if r.interrupted { ", interrupted" } else { "" }
        ),
        &r.report,
    );
    let file = RecRunReport {
        v: project::FORMAT_VERSION,
        model: args.model.clone(),
        adapter: adapter.as_ref().map(|a| a.display().to_string()),
        data: args.data.display().to_string(),
        profile,
        report: r.report.clone(),
        skipped: set
            .issues
            .iter()
            .map(|i| i.to_string())
            .chain(r.skipped.iter().cloned())
            .collect(),
        new_tokens: r.new_tokens,
        duration_s: r.seconds,
        time: now_s(),
    };
    write_eval(&out, &file, &r.samples)?;
    println!(
        "{:.1} s, {:.0} new tokens/s; report and per-sample records → {}",
        r.seconds,
        r.new_tokens as f64 / r.seconds.max(1e-9),
        out.display()
    );
    Ok(())
}

/// Writes an evaluation folder (report.json + samples.jsonl).
fn write_eval(out: &Path, report: &RecRunReport, samples: &[rec::RecSample]) -> Result<()> {
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    project::write_jsonl(&out.join(eval_files::SAMPLES), samples)?;
    let json = serde_json::to_vec_pretty(report)?;
    project::write_atomic(&out.join(eval_files::REPORT), &json)?;
    Ok(())
}

/// `spr eval-rec`: REC accuracy of an external predictions file.
pub fn eval_rec(predictions: &Path, format: BoxFormat, out: Option<&Path>) -> Result<()> {
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
    print_report(
        &format!(
            "REC on {} samples ({} lines skipped):",
            report.samples,
            errors.len() + bad
        ),
        &report,
    );
    if let Some(out) = out {
        project::write_jsonl(out, &samples)?;
        println!("per-sample records → {}", out.display());
    }
    Ok(())
}
