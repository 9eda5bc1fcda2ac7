//! `spr bench load`: how fast and how lean a COCO / Objects365 file loads.
//!
//! SPR starts from Objects365 v2 (§4.1), whose val split alone is 80k images
//! and about 1.2M boxes in a ~200 MB JSON file; `json.load` + pycocotools
//! takes about 5.6 s and 974 MB to load and index it. This module writes a
//! synthetic file of the same shape (so the benchmark needs no download and
//! is reproducible from a seed) and measures [`Dataset::load`] plus the
//! object-rich filter on it: wall time per phase and the process's peak
//! resident memory.

use std::fmt;
use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::path::Path;
use std::time::Instant;

use crate::core::dataset::{Dataset, DatasetError, LoadOptions, Preprocess};
use crate::core::rng::SplitMix64;

/// What [`write_objects365_like`] wrote.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SynthStats {
    /// Image records.
    pub images: usize,
    /// Annotation records.
    pub annotations: usize,
    /// File size in bytes.
    pub bytes: u64,
}

/// Number of categories in Objects365.
const CATEGORIES: usize = 365;

/// Write an Objects365-v2-val-shaped COCO JSON file: `images` images (80_000
/// for the real size), 1 to 29 boxes per image (15 on average, so about 1.2M
/// boxes and 200 MB for the real size), 365 categories, with the fields
/// Objects365 has (annotations: `id`, `iscrowd`, `isfake`, `area`,
/// `isreflected`, `bbox` as `xywh` with two decimals, `image_id`,
/// `category_id`, `segmentation: []`; images: `height`, `id`, `license`,
/// `width`, `file_name` like `images/v2/patch16/objects365_v2_00908726.jpg`,
/// `url`), in one line with Python's `json.dump` separators. Image ids are
/// increasing with random gaps. Deterministic from `seed`; streamed through a
/// `BufWriter`, so memory stays low whatever the size.
pub fn write_objects365_like(path: &Path, images: usize, seed: u64) -> io::Result<SynthStats> {
    let mut w = BufWriter::with_capacity(1 << 20, File::create(path)?);
    let mut rng = SplitMix64::new(seed);

    // Image records; sizes are kept for the boxes.
    let mut sizes = Vec::with_capacity(images);
    let mut id = 0u64;
    w.write_all(b"{\"images\": [")?;
    for k in 0..images {
        id += 1 + rng.below(30) as u64;
        let width = 320 + rng.below(1200) as u32;
        let height = 240 + rng.below(900) as u32;
        let patch = k / 2000;
        if k > 0 {
            w.write_all(b", ")?;
        }
        write!(
            w,
            "{{\"height\": {height}, \"id\": {id}, \"license\": {}, \"width\": {width}, \
             \"file_name\": \"images/v2/patch{patch}/objects365_v2_{id:08}.jpg\", \"url\": \"\"}}",
            1 + rng.below(8)
        )?;
        sizes.push((id, width, height));
    }

    // Annotation records, grouped by image as in Objects365.
    w.write_all(b"], \"annotations\": [")?;
    let mut annotations = 0usize;
    for &(image_id, width, height) in &sizes {
        let boxes = 1 + rng.below(29);
        for _ in 0..boxes {
            // Sizes in hundredths of a pixel; a third of the boxes small.
            let (wc, hc) = (width as usize * 100, height as usize * 100);
            let scale = if rng.below(3) == 0 { 0.05 } else { 0.6 };
            let bw = 100 + rng.below(((wc as f32 * scale) as usize).max(1));
            let bh = 100 + rng.below(((hc as f32 * scale) as usize).max(1));
            let bw = bw.min(wc);
            let bh = bh.min(hc);
            let x = rng.below(wc - bw + 1);
            let y = rng.below(hc - bh + 1);
            let c = |v: usize| v as f64 / 100.0;
            let area = c(bw) * c(bh);
            if annotations > 0 {
                w.write_all(b", ")?;
            }
            annotations += 1;
            write!(
                w,
                "{{\"id\": {annotations}, \"iscrowd\": {}, \"isfake\": {}, \"area\": {area}, \
                 \"isreflected\": {}, \"bbox\": [{}, {}, {}, {}], \"image_id\": {image_id}, \
                 \"category_id\": {}, \"segmentation\": []}}",
                u8::from(rng.below(50) == 0),
                u8::from(rng.below(100) == 0),
                u8::from(rng.below(100) == 0),
                c(x),
                c(y),
                c(bw),
                c(bh),
                1 + rng.below(CATEGORIES)
            )?;
        }
    }

    w.write_all(b"], \"categories\": [")?;
    for k in 1..=CATEGORIES {
        if k > 1 {
            w.write_all(b", ")?;
        }
        write!(w, "{{\"name\": \"category {k}\", \"id\": {k}}}")?;
    }
    w.write_all(b"], \"licenses\": [")?;
    for k in 1..=8 {
        if k > 1 {
            w.write_all(b", ")?;
        }
        write!(w, "{{\"name\": \"License {k}\", \"url\": \"http://example.org/license/{k}\", \"id\": {k}}}")?;
    }
    w.write_all(b"]}")?;
    let file = w.into_inner().map_err(|e| e.into_error())?;
    let bytes = file.metadata()?.len();
    Ok(SynthStats {
        images,
        annotations,
        bytes,
    })
}

/// What [`measure_load`] measured.
#[derive(Clone, Debug, PartialEq)]
pub struct LoadReport {
    /// Seconds to load, validate and index the file ([`Dataset::load`]).
    pub load_s: f64,
    /// Seconds for the object-rich filter.
    pub filter_s: f64,
    /// Seconds for both.
    pub total_s: f64,
    /// Images loaded.
    pub images: usize,
    /// Objects loaded.
    pub objects: usize,
    /// Object-rich images (SPR's default [`Preprocess`]).
    pub object_rich: usize,
    /// Issues reported.
    pub issues: usize,
    /// Peak resident memory of the process while loading (`VmHWM`, reset
    /// first where the kernel allows), or `None` where unavailable.
    pub peak_rss_bytes: Option<u64>,
    /// Size of the file.
    pub file_bytes: u64,
    /// How the load's work was shared between threads.
    pub split: crate::core::dataset::SplitUse,
}

impl fmt::Display for LoadReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "file: {:.1} MB; {} images, {} objects, {} object-rich images, {} issues",
            self.file_bytes as f64 / 1e6,
            self.images,
            self.objects,
            self.object_rich,
            self.issues
        )?;
        write!(
            f,
            "load + index: {:.3} s ({:.0} MB/s); object-rich filter: {:.3} s; total: {:.3} s; \
             peak RSS: ",
            self.load_s,
            self.file_bytes as f64 / 1e6 / self.load_s.max(1e-9),
            self.filter_s,
            self.total_s
        )?;
        match self.peak_rss_bytes {
            Some(b) => write!(f, "{:.0} MB", b as f64 / (1024.0 * 1024.0)),
            None => write!(f, "unavailable"),
        }
    }
}

/// Load `path` (images relative to its folder), index it and run the
/// object-rich filter ([`Dataset::object_rich_images`] with the default
/// [`Preprocess`]), timing each phase; then read the peak RSS (`VmHWM` from
/// `/proc/self/status`, after resetting it through `/proc/self/clear_refs`
/// so earlier work in the process does not count; `None` where unavailable).
pub fn measure_load(path: &Path) -> Result<LoadReport, DatasetError> {
    let file_bytes = std::fs::metadata(path)
        .map_err(|source| DatasetError::Io {
            file: path.to_path_buf(),
            source,
        })?
        .len();
    let root = path.parent().unwrap_or(Path::new("."));
    // Resetting is best effort: without it the peak includes earlier work.
    let _ = std::fs::write("/proc/self/clear_refs", "5");
    let start = Instant::now();
    let (ds, stats) = Dataset::load_with_stats(path, root, &LoadOptions::default())?;
    let load_s = start.elapsed().as_secs_f64();
    let filter_start = Instant::now();
    let rich = ds.object_rich_images(&Preprocess::default());
    let filter_s = filter_start.elapsed().as_secs_f64();
    let total_s = start.elapsed().as_secs_f64();
    Ok(LoadReport {
        load_s,
        filter_s,
        total_s,
        images: ds.images.len(),
        objects: ds.objects.len(),
        object_rich: rich.len(),
        issues: ds.issues.len(),
        peak_rss_bytes: peak_rss_bytes(),
        file_bytes,
        split: stats.split,
    })
}

/// `VmHWM` of this process in bytes, where `/proc` has it.
pub(crate) fn peak_rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line
        .trim_start_matches("VmHWM:")
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kb * 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn synthetic_file_loads_cleanly_and_deterministically() {
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("a.json");
        let b = dir.path().join("b.json");
        let stats = write_objects365_like(&a, 300, 7).unwrap();
        assert_eq!(write_objects365_like(&b, 300, 7).unwrap(), stats);
        assert_eq!(std::fs::read(&a).unwrap(), std::fs::read(&b).unwrap());
        assert!(
            stats.annotations > 300 * 10 && stats.annotations < 300 * 20,
            "{stats:?}"
        );
        // Valid JSON of the right shape.
        let v: serde_json::Value = serde_json::from_slice(&std::fs::read(&a).unwrap()).unwrap();
        assert_eq!(v["images"].as_array().unwrap().len(), 300);
        assert_eq!(v["categories"].as_array().unwrap().len(), 365);
        let report = measure_load(&a).unwrap();
        assert_eq!(
            (report.images, report.objects, report.issues),
            (300, stats.annotations, 0)
        );
        assert!(
            report.object_rich > 0 && report.object_rich < 300,
            "{report}"
        );
        assert_eq!(report.file_bytes, stats.bytes);
        assert!(report.to_string().contains("object-rich"));
    }

    /// The full-size benchmark: `cargo test --release --lib load -- --ignored --nocapture`.
    #[test]
    #[ignore = "writes a 200 MB file; run in release for figures"]
    fn objects365_val_sized_load() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("objects365_like_val.json");
        let start = Instant::now();
        let stats = write_objects365_like(&path, 80_000, 365).unwrap();
        println!(
            "wrote {} images, {} annotations, {:.1} MB in {:.1} s",
            stats.images,
            stats.annotations,
            stats.bytes as f64 / 1e6,
            start.elapsed().as_secs_f64()
        );
        for run in 1..=3 {
            let report = measure_load(&path).unwrap();
            println!("run {run}:\n{report}");
            assert_eq!(report.objects, stats.annotations);
        }
    }
}
