//! `spr bench train`: DPO-step throughput and peak memory of the trainer on
//! any llava-hf-layout checkpoint folder and TRL-layout pairs file, so it can
//! be timed on the very same checkpoint and data as TRL + PEFT.
//!
//! Tokens counted per step: the unpadded prompt + response tokens of every
//! chosen and every rejected row of the batch, image tokens included (the
//! trainer's `Batch::n_tokens`, from which [`StepLog::tokens_per_s`] is
//! computed). Throughput is the mean of the trainer's per-step
//! `tokens_per_s` over the steps after the warm-up; seconds per step are the
//! intervals between consecutive progress callbacks over the same steps.
//!
//! The setup time (model load + tokenising + the one-off reference
//! log-prob precompute) is reported separately: it ends when the trainer
//! writes `ref_logps.safetensors`, whose modification time we read.

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::time::{Instant, SystemTime};

use anyhow::{Context, Result};
use candle_core::Device;

use crate::core::pipeline::{TrlContent, TrlMessage, TrlRecord};
use crate::model::config::LlavaConfig;
use crate::model::llava::{random_weights, save_model};
use crate::model::tokenizer::{chat_prompt, LlavaTokenizer};
use crate::model::TargetModule;
use crate::train::objectives::{Objective, ObjectiveConfig};
use crate::train::trainer::{self, StepLog, TrainConfig};

/// TRL 1.16 + PEFT 0.21 on the DESIGN §7 benchmark model, 2-core CPU.
pub const TRL_TOKENS_PER_S: f64 = 2000.0;
/// TRL 1.16 + PEFT 0.21 peak RSS on the same run, in MB.
pub const TRL_PEAK_MB: f64 = 1160.0;
/// Tokens per optimizer step the DESIGN §7 figures were taken at.
pub const TARGET_TOKENS_PER_STEP: usize = 650;

/// Settings of one measurement.
#[derive(Clone, Debug)]
pub struct BenchTrainOptions {
    /// Optimizer steps in all, warm-up included.
    pub steps: u64,
    /// Pairs per step.
    pub batch: usize,
    /// Leading steps left out of the figures.
    pub warmup: u64,
    /// LoRA rank (α is twice it).
    pub lora_r: usize,
}

impl Default for BenchTrainOptions {
    fn default() -> Self {
        Self {
            steps: 20,
            batch: 2,
            warmup: 2,
            lora_r: 16,
        }
    }
}

/// Figures of one measurement.
#[derive(Clone, Debug)]
pub struct TrainBenchReport {
    /// Steps measured (after the warm-up).
    pub measured_steps: usize,
    /// Mean of the trainer's per-step tokens/s over the measured steps.
    pub tokens_per_s: f64,
    /// Mean seconds per measured step.
    pub s_per_step: f64,
    /// Mean tokens per measured step (tokens/s × step time).
    pub tokens_per_step: f64,
    /// Model load + tokenising + reference log-prob precompute, seconds
    /// (`None` when the cache file's time could not be read).
    pub setup_s: Option<f64>,
    /// Whole `train` call, seconds.
    pub total_s: f64,
    /// Peak RSS of the process (`VmHWM`), where `/proc` has it.
    pub peak_rss_bytes: Option<u64>,
}

use super::load::peak_rss_bytes;

/// The trainer config the benchmark runs: DPO, LoRA r/2r on every LM
/// linear, no warmup, no intermediate checkpoints.
pub fn bench_config(model: &Path, data: &Path, opts: &BenchTrainOptions) -> TrainConfig {
    let mut cfg = TrainConfig::new(model.to_string_lossy().into_owned(), data.to_path_buf());
    cfg.objective = ObjectiveConfig::new(Objective::Dpo);
    cfg.lora_r = opts.lora_r;
    cfg.lora_alpha = 2.0 * opts.lora_r as f64;
    cfg.lora_targets = TargetModule::ALL.to_vec();
    cfg.batch_size = opts.batch;
    cfg.total_steps = opts.steps;
    cfg.warmup_steps = 0;
    cfg.checkpoint_every = u64::MAX;
    cfg
}

/// Runs the trainer on `model` and `data` in a temporary run folder (removed
/// afterwards) and measures it.
pub fn measure(model: &Path, data: &Path, opts: &BenchTrainOptions) -> Result<TrainBenchReport> {
    let cfg = bench_config(model, data, opts);
    let run_dir = std::env::temp_dir().join(format!(
        "spr-bench-train-run-{}-{}",
        std::process::id(),
        SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0)
    ));
    let result = measure_in(&cfg, &run_dir, opts.warmup);
    let _ = std::fs::remove_dir_all(&run_dir);
    result
}

fn measure_in(cfg: &TrainConfig, run_dir: &Path, warmup: u64) -> Result<TrainBenchReport> {
    // As `spr train` does.
    crate::train::tune_allocator();
    let stop = AtomicBool::new(false);
    let wall_start = SystemTime::now();
    let start = Instant::now();
    // (step, tokens/s, seconds since the previous callback)
    let mut steps: Vec<(u64, f64, f64)> = Vec::new();
    let mut last: Option<Instant> = None;
    let progress = |log: &StepLog| {
        let now = Instant::now();
        let dt = last.map(|l| (now - l).as_secs_f64()).unwrap_or(f64::NAN);
        last = Some(now);
        steps.push((log.step, log.tokens_per_s, dt));
        eprintln!(
            "step {}/{}: {:.0} tokens/s, loss {:.4}",
            log.step, log.total_steps, log.tokens_per_s, log.metrics.loss
        );
    };
    trainer::train(cfg, run_dir, progress, &stop).context("training")?;
    let total_s = start.elapsed().as_secs_f64();
    let peak_rss_bytes = peak_rss_bytes();
    let setup_s = std::fs::metadata(run_dir.join(trainer::files::REF_LOGPS))
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| t.duration_since(wall_start).ok())
        .map(|d| d.as_secs_f64());
    // Step 1 has no previous callback: its interval is unknown, so at least
    // one leading step is always left out.
    let measured: Vec<_> = steps
        .iter()
        .filter(|(s, _, dt)| *s > warmup.max(1) && dt.is_finite())
        .collect();
    anyhow::ensure!(
        !measured.is_empty(),
        "no steps left after the {warmup}-step warm-up: ask for more --steps"
    );
    let n = measured.len() as f64;
    let tokens_per_s = measured.iter().map(|m| m.1).sum::<f64>() / n;
    let s_per_step = measured.iter().map(|m| m.2).sum::<f64>() / n;
    let tokens_per_step = measured.iter().map(|m| m.1 * m.2).sum::<f64>() / n;
    Ok(TrainBenchReport {
        measured_steps: measured.len(),
        tokens_per_s,
        s_per_step,
        tokens_per_step,
        setup_s,
        total_s,
        peak_rss_bytes,
    })
}

/// The DESIGN §7 benchmark model: LLaVA-1.5-shaped, ~6M parameters (CLIP
/// 112 px / patch 14 / 3 layers / hidden 128; Llama 4 layers / hidden 256 /
/// vocab 4096). The `<image>` and pad ids follow the tiny test tokenizer.
pub fn bench_model_config() -> Result<LlavaConfig> {
    serde_json::from_value(serde_json::json!({
        "text_config": {
            "hidden_size": 256, "intermediate_size": 688, "num_hidden_layers": 4,
            "num_attention_heads": 4, "num_key_value_heads": 4, "vocab_size": 4096,
            "max_position_embeddings": 2048, "rms_norm_eps": 1e-5,
            "bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 361
        },
        "vision_config": {
            "hidden_size": 128, "intermediate_size": 512, "num_hidden_layers": 3,
            "num_attention_heads": 4, "image_size": 112, "patch_size": 14,
            "hidden_act": "quick_gelu"
        },
        "image_token_index": 360,
        "pad_token_id": 361,
        "projector_hidden_act": "gelu"
    }))
    .context("building the benchmark model config")
}

/// Writes the benchmark model (random weights) into `dir`, with the tiny
/// test tokenizer (its ids are all below the 4096-row embedding).
pub fn write_bench_model(dir: &Path, tokenizer_json: &Path) -> Result<LlavaConfig> {
    let cfg = bench_model_config()?;
    let weights = random_weights(&cfg, 7, &Device::Cpu).context("drawing random weights")?;
    save_model(dir, &cfg, &weights).with_context(|| format!("writing {}", dir.display()))?;
    std::fs::copy(tokenizer_json, dir.join("tokenizer.json"))
        .with_context(|| format!("copying {}", tokenizer_json.display()))?;
    let n_params: usize = weights.values().map(|t| t.elem_count()).sum();
    eprintln!(
        "benchmark model: {:.2}M parameters → {}",
        n_params as f64 / 1e6,
        dir.display()
    );
    Ok(cfg)
}

const WORDS: &[&str] = &[
    "a", "red", "car", "parked", "next", "to", "the", "tall", "tree", "on", "left", "side", "of",
    "street", "with", "two", "people", "walking", "near", "blue", "bench", "and", "small", "dog",
];

fn text_message(role: &str, text: Option<&str>, image: bool) -> TrlMessage {
    let mut content = Vec::new();
    if image {
        content.push(TrlContent {
            kind: "image".into(),
            text: None,
        });
    }
    if let Some(t) = text {
        content.push(TrlContent {
            kind: "text".into(),
            text: Some(t.to_string()),
        });
    }
    TrlMessage {
        role: role.into(),
        content,
    }
}

/// Writes a TRL-layout pairs file of `n` pairs over `images` whose chosen
/// and rejected rows are about `row_tokens` tokens each (prompt incl. image
/// tokens + response), measured with `tokenizer`. Returns the mean tokens
/// per row actually written.
pub fn write_bench_pairs(
    path: &Path,
    images: &[PathBuf],
    n: usize,
    row_tokens: usize,
    tokenizer: &LlavaTokenizer,
) -> Result<f64> {
    anyhow::ensure!(!images.is_empty(), "no images for the pairs file");
    let prompt = "Describe the region and give the boxes of the objects in it.";
    let mut lines = String::new();
    let mut total = 0usize;
    for i in 0..n {
        let row_len = |text: &str| -> Result<usize> {
            let (ids, _) = tokenizer.encode_prompt_response(
                &chat_prompt(prompt),
                &format!(" {text}"),
                true,
            )?;
            Ok(ids.len())
        };
        let make = |offset: usize| -> Result<(String, usize)> {
            let mut words: Vec<&str> = Vec::new();
            let mut len = row_len("")?;
            while len < row_tokens || words.len() < 3 {
                words.push(WORDS[(i * 7 + offset + words.len() * 5) % WORDS.len()]);
                len = row_len(&words.join(" "))?;
            }
            Ok((words.join(" "), len))
        };
        let (chosen, lc) = make(0)?;
        let (rejected, lr) = make(3)?;
        total += lc + lr;
        let image = &images[i % images.len()];
        let rec = TrlRecord {
            images: vec![image.to_string_lossy().into_owned()],
            prompt: vec![text_message("user", Some(prompt), true)],
            chosen: vec![text_message("assistant", Some(&chosen), false)],
            rejected: vec![text_message("assistant", Some(&rejected), false)],
        };
        lines.push_str(&serde_json::to_string(&rec).context("serialising a pair")?);
        lines.push('\n');
    }
    std::fs::write(path, lines).with_context(|| format!("writing {}", path.display()))?;
    Ok(total as f64 / (2 * n).max(1) as f64)
}

fn print_report(model: &Path, data: &Path, opts: &BenchTrainOptions, r: &TrainBenchReport) {
    println!("model: {}", model.display());
    println!("data: {}", data.display());
    println!(
        "DPO, LoRA r{} α{} on every LM linear, batch {}, {} steps ({} warm-up left out, {} measured)",
        opts.lora_r,
        2 * opts.lora_r,
        opts.batch,
        opts.steps,
        opts.warmup.max(1),
        r.measured_steps
    );
    println!(
        "tokens/step: {:.0} (prompt + response of chosen and rejected rows, image tokens included, unpadded)",
        r.tokens_per_step
    );
    println!(
        "throughput: {:.0} tokens/s, {:.3} s/step",
        r.tokens_per_s, r.s_per_step
    );
    match r.setup_s {
        Some(s) => println!(
            "setup (model load + tokenising + reference log-prob precompute): {s:.2} s; whole run {:.2} s",
            r.total_s
        ),
        None => println!("setup: not measured; whole run {:.2} s", r.total_s),
    }
    let mb = r.peak_rss_bytes.map(|b| b as f64 / (1024.0 * 1024.0));
    match mb {
        Some(mb) => println!("peak RSS: {mb:.1} MB"),
        None => println!("peak RSS: not available on this platform"),
    }
    if !is_design_model(model) {
        println!(
            "not the DESIGN §7 model: no reference figure to compare with; time another trainer on these files"
        );
        return;
    }
    println!(
        "DESIGN §7 reference, TRL 1.16 + PEFT 0.21 on the §7 model, 2-core CPU: {TRL_TOKENS_PER_S:.0} tokens/s, {TRL_PEAK_MB:.0} MB peak RSS"
    );
    print!(
        "ratio vs reference: {:.2}× tokens/s",
        r.tokens_per_s / TRL_TOKENS_PER_S
    );
    match mb {
        Some(mb) => println!(", {:.2}× less memory", TRL_PEAK_MB / mb),
        None => println!(),
    }
}

/// Whether the model folder has the DESIGN §7 benchmark shape, the only
/// one DESIGN's TRL figures are for.
fn is_design_model(model: &Path) -> bool {
    let (Ok(cfg), Ok(reference)) = (
        LlavaConfig::from_file(&model.join("config.json")),
        bench_model_config(),
    ) else {
        return false;
    };
    let shape = |c: &LlavaConfig| {
        let (t, v) = (&c.text_config, &c.vision_config);
        (
            t.hidden_size,
            t.intermediate_size,
            t.num_hidden_layers,
            t.vocab_size,
            v.hidden_size,
            v.num_hidden_layers,
            v.image_size,
            v.patch_size,
        )
    };
    shape(&cfg) == shape(&reference)
}

/// `spr bench train`. With `model` and `data` it measures the trainer on
/// them; otherwise it generates the DESIGN §7 model and a matching pairs
/// file first and measures them in a fresh child process, so generation
/// does not count toward peak memory.
pub fn command(
    model: Option<&Path>,
    data: Option<&Path>,
    opts: &BenchTrainOptions,
    keep: Option<&Path>,
) -> Result<()> {
    if let (Some(model), Some(data)) = (model, data) {
        let r = measure(model, data, opts)?;
        print_report(model, data, opts, &r);
        return Ok(());
    }
    anyhow::ensure!(
        model.is_none() && data.is_none(),
        "give both --model and --data, or neither"
    );
    let root = match keep {
        Some(p) => p.to_path_buf(),
        None => std::env::temp_dir().join(format!("spr-bench-train-{}", std::process::id())),
    };
    let result = generate_and_run(&root, opts);
    if keep.is_none() {
        let _ = std::fs::remove_dir_all(&root);
    }
    result
}

fn generate_and_run(root: &Path, opts: &BenchTrainOptions) -> Result<()> {
    let crate_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    let model_dir = root.join("model");
    let cfg = write_bench_model(
        &model_dir,
        &crate_dir.join("tests/fixtures/tiny-llava/tokenizer.json"),
    )?;
    let tokenizer = LlavaTokenizer::from_dir(&model_dir, &cfg).context("loading the tokenizer")?;
    let image_dir = crate_dir.join("assets/demo/images");
    let mut images: Vec<PathBuf> = std::fs::read_dir(&image_dir)
        .with_context(|| format!("reading {}", image_dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "png"))
        .collect();
    images.sort();
    images.truncate(16);
    let data = root.join("pairs.jsonl");
    let row = TARGET_TOKENS_PER_STEP / (2 * opts.batch.max(1));
    let mean_row = write_bench_pairs(&data, &images, 32, row, &tokenizer)?;
    eprintln!(
        "pairs: 32 over {} demo images, {mean_row:.1} tokens per row → ~{:.0} tokens per step at batch {}",
        images.len(),
        mean_row * 2.0 * opts.batch as f64,
        opts.batch
    );
    let exe = std::env::current_exe().context("locating the spr binary")?;
    let status = std::process::Command::new(exe)
        .args(["bench", "train", "--model"])
        .arg(&model_dir)
        .arg("--data")
        .arg(&data)
        .args(["--steps", &opts.steps.to_string()])
        .args(["--batch", &opts.batch.to_string()])
        .args(["--warmup", &opts.warmup.to_string()])
        .args(["--lora-r", &opts.lora_r.to_string()])
        .status()
        .context("running the timed training")?;
    anyhow::ensure!(status.success(), "the timed training failed ({status})");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn smoke_three_steps_on_tiny_llava() {
        let crate_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
        let model = crate_dir.join("tests/fixtures/tiny-llava");
        let dir = tempfile::tempdir().unwrap();
        let cfg = LlavaConfig::from_file(&model.join("config.json")).unwrap();
        let tok = LlavaTokenizer::from_dir(&model, &cfg).unwrap();
        let data = dir.path().join("pairs.jsonl");
        let image = model.join("image0.png");
        write_bench_pairs(&data, &[image], 2, 30, &tok).unwrap();
        let opts = BenchTrainOptions {
            steps: 3,
            batch: 2,
            warmup: 1,
            lora_r: 4,
        };
        let r = measure(&model, &data, &opts).unwrap();
        assert_eq!(r.measured_steps, 2);
        assert!(r.tokens_per_s.is_finite() && r.tokens_per_s > 0.0);
        assert!(r.s_per_step.is_finite() && r.s_per_step > 0.0);
        assert!(r.tokens_per_step > 0.0);
    }
}
