//! The demo's REC evaluation set (`assets/demo/rec/`): synthetic scenes of
//! their own seed, which neither the demo project nor the tiny model's
//! training data use, with one referring expression per object whose
//! category is unique in its scene ("the red circle"), in the MDETR layout
//! that RefCOCO evaluations use (see [`crate::core::rec::data`]):
//!
//! ```text
//! rec/
//!   finetune_demo_val.json   one images record per expression (caption, original_id), one annotation each (xywh)
//!   images/rec_001.png …
//! ```

use std::path::Path;

use anyhow::Result;
use serde::Serialize;

use super::{category_names, scene, CocoAnnotation, DemoConfig};
use crate::core::project;

/// File names of the REC set.
pub mod rec_files {
    /// The folder inside the demo project.
    pub const DIR: &str = "rec";
    /// The MDETR-style annotation file.
    pub const ANNOTATIONS: &str = "finetune_demo_val.json";
    /// The image folder inside [`DIR`].
    pub const IMAGES: &str = "images";
}

/// The seed of the REC scenes for a demo of seed `seed`.
pub fn rec_seed(seed: u64) -> u64 {
    seed.wrapping_add(1_000_003)
}

#[derive(Serialize)]
struct MdetrImage {
    id: u64,
    file_name: String,
    width: u32,
    height: u32,
    caption: String,
    original_id: u64,
    dataset_name: &'static str,
}

/// Writes `scenes` REC scenes under `out/rec/`; returns the number of
/// expressions. Objects smaller than SPR's area filter are not asked for.
pub fn write_rec_set(out: &Path, cfg: &DemoConfig, scenes: usize) -> Result<usize> {
    let dir = out.join(rec_files::DIR);
    let rec_cfg = DemoConfig {
        seed: rec_seed(cfg.seed),
        ..cfg.clone()
    };
    let names = category_names();
    let mut images = Vec::new();
    let mut annotations = Vec::new();
    for i in 0..scenes {
        let (img, shapes) = scene(&rec_cfg, i);
        let file_name = format!("rec_{:03}.png", i + 1);
        crate::core::imageio::save_png(&img, &dir.join(rec_files::IMAGES).join(&file_name))?;
        let usable: Vec<_> = shapes
            .iter()
            .filter(|s| !s.crowd && s.bbox.area() >= 300.0)
            .collect();
        for s in &usable {
            if usable.iter().filter(|o| o.category == s.category).count() != 1 {
                continue;
            }
            let id = images.len() as u64;
            images.push(MdetrImage {
                id,
                file_name: file_name.clone(),
                width: cfg.width,
                height: cfg.height,
                caption: format!("the {}", names[s.category]),
                original_id: i as u64 + 1,
                dataset_name: "spr-demo-rec",
            });
            annotations.push(CocoAnnotation {
                id,
                image_id: id,
                category_id: s.category as u64 + 1,
                bbox: s.bbox.to_xywh(),
                area: s.bbox.area(),
                iscrowd: 0,
            });
        }
    }
    let doc = serde_json::json!({
        "info": {
            "description": "SPR Workbench synthetic REC set (generated scenes, not photographs)",
            "generator": "spr demo",
            "seed": rec_cfg.seed,
        },
        "images": images,
        "annotations": annotations,
        "categories": names.iter().enumerate().map(|(i, n)| serde_json::json!({"id": i + 1, "name": n})).collect::<Vec<_>>(),
    });
    project::write_atomic(
        &dir.join(rec_files::ANNOTATIONS),
        &serde_json::to_vec_pretty(&doc)?,
    )?;
    Ok(images.len())
}
