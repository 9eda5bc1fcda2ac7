//! `spr bench generate`: new tokens per second and peak memory of batched
//! candidate generation, on any llava-hf checkpoint and a folder of
//! images, so it can be run beside transformers' `generate` on the very
//! same checkpoint and images (`scripts/bench/generate_transformers.py`).
//!
//! Settings mirror the peer script: the first `count` images of the folder
//! (sorted by name), the export prompt, greedy decoding of exactly
//! `new_tokens` tokens per image (end-of-sequence is not picked before,
//! transformers' `min_new_tokens`), batches of `batch` images. The time
//! runs from the first image decode to the last token, so image
//! preprocessing and the vision tower count, as they do in the peer's
//! `generate` loop; model loading does not. Each batch size runs in a
//! fresh child process, so its peak RSS (`VmHWM`) is its own.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize};
use std::time::Instant;

use anyhow::{Context, Result};

use super::load::peak_rss_bytes;
use crate::core::imageio;
use crate::core::project::ExportConfig;
use crate::infer::decode::{self, DecodeJob, DecodePlan};
use crate::model::{LlavaBundle, Sampling};

/// Figures of one batch size.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct GenerateBenchReport {
    /// Images per batch.
    pub batch: usize,
    /// Images.
    pub images: usize,
    /// New tokens decoded.
    pub new_tokens: usize,
    /// Seconds from the first image decode to the last token.
    pub seconds: f64,
    /// New tokens per second.
    pub new_tokens_per_s: f64,
    /// Peak RSS of the process, MB.
    pub peak_rss_mb: Option<f64>,
}

/// The first `count` images of `dir`, by name.
pub fn image_files(dir: &Path, count: usize) -> Result<Vec<PathBuf>> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.extension()
                .and_then(|x| x.to_str())
                .is_some_and(|x| matches!(x.to_ascii_lowercase().as_str(), "png" | "jpg" | "jpeg"))
        })
        .collect();
    files.sort();
    files.truncate(count);
    anyhow::ensure!(
        !files.is_empty(),
        "{}: no PNG or JPEG images",
        dir.display()
    );
    Ok(files)
}

/// Measures one batch size in this process.
pub fn measure(
    model: &Path,
    images: &[PathBuf],
    new_tokens: usize,
    batch: usize,
) -> Result<GenerateBenchReport> {
    let device = crate::model::default_device();
    let mut bundle = LlavaBundle::load(&model.to_string_lossy(), &device)?;
    bundle.model.set_grad_enabled(false);
    let prompt = ExportConfig::default().prompt;
    let stop = AtomicBool::new(false);
    let tokens = AtomicUsize::new(0);
    let plan = DecodePlan {
        min_new_tokens: new_tokens,
        ..DecodePlan::new(&bundle, batch, new_tokens)
    };
    let started = Instant::now();
    for chunk in images.chunks(batch.max(1)) {
        let mut jobs = Vec::with_capacity(chunk.len());
        for path in chunk {
            let rgb = imageio::load_rgb(path)?;
            jobs.push(DecodeJob {
                features: decode::image_features(&bundle, rgb)?,
                prompt: prompt.clone(),
                sampling: Sampling::Greedy,
            });
        }
        decode::decode_all(&bundle, &jobs, plan, &stop, &tokens)?;
    }
    let seconds = started.elapsed().as_secs_f64();
    let tokens = tokens.into_inner();
    Ok(GenerateBenchReport {
        batch,
        images: images.len(),
        new_tokens: tokens,
        seconds,
        new_tokens_per_s: tokens as f64 / seconds.max(1e-9),
        peak_rss_mb: peak_rss_bytes().map(|b| b as f64 / 1e6),
    })
}

/// `spr bench generate`: each batch size in a child process; without a
/// model, the DESIGN §7 benchmark model is generated, and without images
/// the demo project's scenes are used.
pub fn command(
    model: Option<&Path>,
    images: Option<&Path>,
    count: usize,
    new_tokens: usize,
    batches: &[usize],
    child: bool,
) -> Result<()> {
    let crate_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    let image_dir = images
        .map(Path::to_path_buf)
        .unwrap_or_else(|| crate_dir.join("assets/demo/images"));
    let files = image_files(&image_dir, count)?;
    if child {
        let model = model.context("--model is required in a child run")?;
        for &b in batches {
            let r = measure(model, &files, new_tokens, b)?;
            println!("{}", serde_json::to_string(&r)?);
        }
        return Ok(());
    }
    let generated = match model {
        Some(_) => None,
        None => {
            let root = tempfile_dir()?;
            super::train::write_bench_model(
                &root.join("model"),
                &crate_dir.join("tests/fixtures/tiny-llava/tokenizer.json"),
            )?;
            Some(root)
        }
    };
    let model = match (&generated, model) {
        (Some(root), _) => root.join("model"),
        (None, Some(m)) => m.to_path_buf(),
        (None, None) => unreachable!("one of the two is set above"),
    };
    println!(
        "generate bench: {} ({} images from {}, {new_tokens} new tokens each, greedy)",
        model.display(),
        files.len(),
        image_dir.display()
    );
    let exe = std::env::current_exe().context("locating the spr binary")?;
    for &b in batches {
        let out = std::process::Command::new(&exe)
            .args(["bench", "generate", "--child", "--model"])
            .arg(&model)
            .arg("--images")
            .arg(&image_dir)
            .args([
                "--count",
                &count.to_string(),
                "--new-tokens",
                &new_tokens.to_string(),
                "--batches",
                &b.to_string(),
            ])
            .output()
            .context("running a timed child")?;
        anyhow::ensure!(
            out.status.success(),
            "batch {b}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let line = String::from_utf8_lossy(&out.stdout);
        let r: GenerateBenchReport = serde_json::from_str(line.trim())
            .with_context(|| format!("reading the child's figures: {line}"))?;
        println!(
            "  batch {:>3}: {:>6} new tokens in {:>6.2} s = {:>7.1} new tokens/s, peak RSS {}",
            r.batch,
            r.new_tokens,
            r.seconds,
            r.new_tokens_per_s,
            r.peak_rss_mb
                .map(|m| format!("{m:.0} MB"))
                .unwrap_or_else(|| "n/a".into())
        );
    }
    match generated {
        Some(root) => {
            let _ = std::fs::remove_dir_all(root);
        }
        None => println!(
            "peer: python scripts/bench/generate_transformers.py {} {} --images {count} --new-tokens {new_tokens}",
            model.display(),
            image_dir.display()
        ),
    }
    Ok(())
}

fn tempfile_dir() -> Result<PathBuf> {
    let dir = std::env::temp_dir().join(format!("spr-bench-generate-{}", std::process::id()));
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    Ok(dir)
}
