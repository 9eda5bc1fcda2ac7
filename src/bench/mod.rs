//! Benchmarks that print figures (`spr bench …`). Performance targets are
//! checked by reading these figures, never by timed assertions in tests.
//!
//! - `spr bench load [FILE]`: load + index + object-rich filter of a COCO /
//!   Objects365 file, with peak memory. Without FILE it generates an
//!   Objects365-v2-val-sized file first and times it in a fresh child
//!   process, so the generator's memory does not count.
//! - `spr bench regions`: SPR region construction + localization scoring,
//!   queries per second on one core (target ≥ 100k).
//! - `spr bench train`: DPO-step tokens/s and peak memory of the trainer
//!   ([`train`]).
//! - `spr bench generate`: new tokens/s and peak memory of batched
//!   generation ([`generate`]).
//! - `spr bench score`: candidates/s and peak memory of the semantic score
//!   ([`score`]).

pub mod generate;
pub mod load;
pub mod score;
pub mod train;

use std::path::Path;
use std::time::Instant;

use anyhow::{Context, Result};

use crate::core::geometry::Bbox;
use crate::core::regions::{sample_regions, RegionConfig};
use crate::core::rng::SplitMix64;
use crate::core::scores::{localization_score, LocVariant, MATCH_IOU};

/// pycocotools' figures for the full-size file on a 2-core machine (DESIGN §7).
const PYCOCOTOOLS_S: f64 = 5.6;
const PYCOCOTOOLS_MB: f64 = 974.0;

/// Bytes the generated file takes per image (230 MB for 80,000 images).
const GENERATED_BYTES_PER_IMAGE: u64 = 2_900;

/// Refuses to generate a file the disk has no room for (with a margin of
/// a quarter), naming both sizes.
fn check_disk(path: &Path, images: usize) -> Result<()> {
    let dir = crate::core::atomic::parent_dir(path);
    let need = images as u64 * GENERATED_BYTES_PER_IMAGE;
    let Some(free) = free_bytes(dir) else {
        return Ok(());
    };
    anyhow::ensure!(
        free >= need + need / 4,
        "{}: {:.1} GB free, but the generated file needs about {:.1} GB (and a margin): \
         pass --keep PATH on a bigger disk, or fewer --images",
        dir.display(),
        free as f64 / 1e9,
        need as f64 / 1e9
    );
    Ok(())
}

/// Free bytes for an unprivileged user on the file system of `dir`.
#[cfg(unix)]
fn free_bytes(dir: &Path) -> Option<u64> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(dir.as_os_str().as_bytes()).ok()?;
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: `c` is a valid NUL-terminated path and `st` a valid out pointer.
    let rc = unsafe { libc::statvfs(c.as_ptr(), &mut st) };
    (rc == 0).then(|| st.f_bavail as u64 * st.f_frsize as u64)
}

#[cfg(not(unix))]
fn free_bytes(_dir: &Path) -> Option<u64> {
    None
}

/// `spr bench load`.
pub fn load_command(file: Option<&Path>, images: usize, keep: Option<&Path>) -> Result<()> {
    let Some(file) = file else {
        let path = match keep {
            Some(p) => p.to_path_buf(),
            None => std::env::temp_dir().join(format!("spr-bench-{}.json", std::process::id())),
        };
        check_disk(&path, images)?;
        eprintln!(
            "generating an Objects365-val-shaped file with {images} images → {}",
            path.display()
        );
        let t = Instant::now();
        let stats = load::write_objects365_like(&path, images, 365)
            .with_context(|| format!("writing {}", path.display()))?;
        eprintln!(
            "generated {} images, {} boxes, {:.0} MB in {:.1} s",
            stats.images,
            stats.annotations,
            stats.bytes as f64 / 1e6,
            t.elapsed().as_secs_f64()
        );
        // Time the load in a fresh process so that peak memory is the loader's alone.
        let exe = std::env::current_exe().context("locating the spr binary")?;
        let status = std::process::Command::new(exe)
            .args(["bench", "load"])
            .arg(&path)
            .status();
        if keep.is_none() {
            let _ = std::fs::remove_file(&path);
        }
        let status = status.context("running the timed load")?;
        anyhow::ensure!(status.success(), "the timed load failed ({status})");
        return Ok(());
    };
    let r = load::measure_load(file)?;
    println!(
        "file: {} ({:.1} MB)",
        file.display(),
        r.file_bytes as f64 / 1e6
    );
    println!(
        "dataset: {} images, {} objects, {} object-rich images, {} issues",
        r.images, r.objects, r.object_rich, r.issues
    );
    println!(
        "time: load+index {:.3} s, object-rich filter {:.3} s, total {:.3} s (threads: {})",
        r.load_s,
        r.filter_s,
        r.total_s,
        match r.split {
            crate::core::dataset::SplitUse::OneThread => "one",
            crate::core::dataset::SplitUse::Adopted => "two, second half adopted",
            crate::core::dataset::SplitUse::Abandoned => "two, second thread's guess dropped",
            crate::core::dataset::SplitUse::TailFailed => "two, error in the second half",
        }
    );
    match r.peak_rss_bytes {
        Some(b) => {
            let mb = b as f64 / (1024.0 * 1024.0);
            println!("peak RSS: {mb:.1} MB");
            println!(
                "vs pycocotools on a 2-core machine (5.6 s, 974 MB, full-size file): {:.1}× faster, {:.1}× less memory",
                PYCOCOTOOLS_S / r.total_s,
                PYCOCOTOOLS_MB / mb
            );
        }
        None => println!("peak RSS: not available on this platform"),
    }
    Ok(())
}

/// Synthetic scenes for the regions benchmark: ~15 boxes in 640×480.
fn bench_scenes(images: usize) -> Vec<Vec<Bbox>> {
    let mut rng = SplitMix64::new(7);
    (0..images)
        .map(|_| {
            let n = 5 + rng.below(21);
            (0..n)
                .map(|_| {
                    let (w, h) = (rng.range_f32(20.0, 160.0), rng.range_f32(20.0, 160.0));
                    let (x, y) = (rng.range_f32(0.0, 640.0 - w), rng.range_f32(0.0, 480.0 - h));
                    Bbox::from_xywh(x, y, w, h)
                })
                .collect()
        })
        .collect()
}

/// `spr bench regions`.
pub fn regions_command(images: usize) -> Result<()> {
    let scenes = bench_scenes(images);
    let cfg = RegionConfig {
        per_image: 1,
        ..Default::default()
    };
    // Candidate boxes per query: the region objects shifted by 4 px plus one
    // invented box, as a description of middling quality would give.
    let start = Instant::now();
    let mut queries = 0usize;
    let mut score_sum = 0.0f64;
    let mut preds = Vec::new();
    let mut gt = Vec::new();
    for (i, boxes) in scenes.iter().enumerate() {
        for q in sample_regions(boxes, 640.0, 480.0, &cfg, i as u64) {
            gt.clear();
            gt.extend(q.objects.iter().map(|&o| boxes[o]));
            preds.clear();
            preds.extend(gt.iter().map(|b| b.translate(4.0, -4.0)));
            preds.push(Bbox::new(0.0, 0.0, 30.0, 30.0));
            score_sum +=
                localization_score(&gt, &preds, LocVariant::Recall, MATCH_IOU).score as f64;
            queries += 1;
        }
    }
    let secs = start.elapsed().as_secs_f64();
    println!(
        "regions + localization score: {queries} queries from {images} scenes in {secs:.3} s on one core \
         → {:.0} queries/s (target ≥ 100000); mean score {:.3}",
        queries as f64 / secs,
        score_sum / queries.max(1) as f64
    );
    Ok(())
}
