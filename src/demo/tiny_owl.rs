//! The tiny detector of the demo: an `Owlv2ForObjectDetection`-layout
//! model whose backbone is the demo's tiny CLIP, trained by the project on
//! synthetic scenes to find the shapes by their phrases, so the
//! localization score's detector boxes mean something without downloading
//! Google's weights.
//!
//! `spr tiny owl --out DIR` ([`make_tiny_owl`]):
//! 1. draws synthetic scenes with the demo generator (a seed of their own:
//!    not the demo's 2025, the tiny LLaVA's 7, the tiny CLIP's 11 or its
//!    held-out 13) and takes, per scene, its SPR regions' crops (×1.5, as
//!    `spr score` shows them to the detector) plus two random windows,
//!    each padded to a square at the bottom and right as OWLv2 pads; the
//!    ground truth is every drawn, non-crowd object with at least half of
//!    its box inside the window, clipped to it;
//! 2. builds the detector from the tiny CLIP (vision and text towers,
//!    projections; its 8×8 learned positions resized to the detector's
//!    finer 12×12 grid at 168 px) plus freshly initialised heads
//!    ([`owlv2::from_clip_weights`]), as OWL-ViT starts from CLIP;
//! 3. trains every weight with OWL-ViT's set loss
//!    ([`crate::train::detection`]); each step's queries phrase every
//!    category one way ("a red circle", "the red circles", "red circle",
//!    "two red circles", …) plus the four shapes alone ("a circle");
//! 4. writes an `Owlv2ForObjectDetection` folder (`config.json`,
//!    `model.safetensors`, the CLIP's `tokenizer.json`,
//!    `preprocessor_config.json`) and measures it on held-out scenes
//!    ([`evaluate_tiny_owl`]): AP at IoU 0.5 and 0.75 over the twelve
//!    categories, queried as "a red circle", on the held-out regions'
//!    crops, and precision / recall of what `spr score` keeps at a
//!    threshold.

use std::collections::HashMap;
use std::path::Path;

use anyhow::{Context, Result};
use candle_core::{DType, Device, Tensor, Var};
use candle_nn::VarBuilder;
use image::RgbImage;

use crate::core::detection::{average_precision, nms, ApReport, ImageDetections, Scored};
use crate::core::geometry::Bbox;
use crate::core::imageio;
use crate::core::project::{self, files, Project, RegionRecord};
use crate::core::rng::SplitMix64;
use crate::model::clip_model;
use crate::model::owlv2::{self, Owlv2};
use crate::model::ImageProcessor;
use crate::scoring::detector::{owl_square, DetectorSettings, OwlDetector};
use crate::train::detection::{self, DetectionConfig, DetectionExample, DetectionStep, QueryBatch};

const SHAPES: [&str; 4] = ["circle", "square", "triangle", "diamond"];

/// Settings of [`make_tiny_owl`].
#[derive(Clone, Debug)]
pub struct TinyOwlOptions {
    /// Training scenes.
    pub scenes: usize,
    /// Seed of the training scenes.
    pub seed: u64,
    /// Held-out scenes for the report.
    pub eval_scenes: usize,
    /// Seed of the held-out scenes.
    pub eval_seed: u64,
    /// Random windows per training scene, besides its region crops.
    pub windows: usize,
    /// The detector's input side (a multiple of the CLIP's patch size;
    /// the CLIP's positions are resized to the finer grid).
    pub image_size: usize,
    /// The training run.
    pub train: DetectionConfig,
}

impl Default for TinyOwlOptions {
    fn default() -> Self {
        Self {
            scenes: 240,
            seed: 17,
            eval_scenes: 30,
            eval_seed: 19,
            windows: 2,
            image_size: 168,
            train: DetectionConfig {
                steps: 1500,
                batch: 16,
                lr: 3e-4,
                warmup: 100,
                weight_decay: 1e-4,
                seed: 0,
            },
        }
    }
}

/// What the tiny detector reaches on held-out scenes.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct OwlEvalReport {
    /// Held-out region crops.
    pub crops: usize,
    /// AP at IoU 0.5 over the twelve categories.
    pub ap50: ApReport,
    /// AP at IoU 0.75.
    pub ap75: ApReport,
    /// The threshold of the two figures below.
    pub threshold: f32,
    /// Of the boxes kept at `threshold` (after NMS), the share matching an
    /// object of their category (IoU ≥ 0.5, one box per object).
    pub precision: f64,
    /// Of the objects, the share found at `threshold`.
    pub recall: f64,
}

/// What [`make_tiny_owl`] did.
#[derive(Clone, Debug)]
pub struct TinyOwlReport {
    /// Parameters.
    pub params: usize,
    /// Training images.
    pub images: usize,
    /// Objects in them.
    pub objects: usize,
    /// Every step.
    pub steps: Vec<DetectionStep>,
    /// Held-out figures.
    pub eval: OwlEvalReport,
}

/// The category index of each demo category name ("red circle" → 0, …).
fn category_index() -> HashMap<String, usize> {
    super::category_names()
        .into_iter()
        .enumerate()
        .map(|(i, n)| (n, i))
        .collect()
}

/// The drawn, non-crowd objects of image `image` with at least half of
/// their box inside `window`, clipped to it: `(class, box)` in image
/// pixels.
fn objects_in(
    project_ds: &crate::core::dataset::Dataset,
    image: usize,
    window: Bbox,
) -> Vec<(usize, Bbox)> {
    let classes = category_index();
    project_ds
        .objects_of(image)
        .filter(|&o| !project_ds.objects.crowd[o])
        .filter(|&o| project_ds.objects.bbox[o].fraction_inside(window) >= 0.5)
        .filter_map(|o| {
            let c = *classes.get(project_ds.category_name(o))?;
            Some((c, project_ds.objects.bbox[o].intersection(window)))
        })
        .collect()
}

/// An image-pixel box → `(cx, cy, w, h)` in 0–1 of the square of `side`
/// pixels whose top-left is the window's (rounded down, as cropping does).
fn square_from_image(b: Bbox, window: Bbox, side: f32) -> [f32; 4] {
    let (x0, y0) = (window.x1.floor().max(0.0), window.y1.floor().max(0.0));
    let (cx, cy) = b.center();
    [
        (cx - x0) / side,
        (cy - y0) / side,
        b.width() / side,
        b.height() / side,
    ]
}

/// A window of `image` as a training example at `input` pixels.
fn example(
    rgb: &RgbImage,
    ds: &crate::core::dataset::Dataset,
    image: usize,
    window: Bbox,
    input: u32,
) -> DetectionExample {
    let (square, side) = owl_square(rgb, window);
    let image_px = image::imageops::resize(
        &square,
        input,
        input,
        image::imageops::FilterType::CatmullRom,
    );
    DetectionExample {
        image: image_px,
        objects: objects_in(ds, image, window)
            .into_iter()
            .map(|(c, b)| (c, square_from_image(b, window, side)))
            .collect(),
    }
}

/// The training examples of a scene project: its regions' crops and
/// `windows` random windows per scene.
fn examples(
    project: &Project,
    windows: usize,
    seed: u64,
    input: u32,
) -> Result<Vec<DetectionExample>> {
    let ds = project.load_dataset()?;
    let regions: Vec<RegionRecord> = super::tiny::read_all(&project.path(files::REGIONS))?;
    let mut by_image: HashMap<u64, Vec<&RegionRecord>> = HashMap::new();
    for r in &regions {
        by_image.entry(r.image_id).or_default().push(r);
    }
    let mut rng = SplitMix64::new(seed ^ 0x51de);
    let mut out = Vec::new();
    for (i, info) in ds.images.iter().enumerate() {
        let rgb = imageio::load_rgb(&ds.image_path(i))?;
        let (w, h) = (rgb.width() as f32, rgb.height() as f32);
        for r in by_image.get(&info.id).map(Vec::as_slice).unwrap_or(&[]) {
            out.push(example(&rgb, &ds, i, r.crop, input));
        }
        for _ in 0..windows {
            let side = rng.range_f32(0.35, 0.9) * w.min(h);
            let aspect = rng.range_f32(0.75, 1.33);
            let (ww, wh) = ((side * aspect).min(w), (side / aspect).min(h));
            let x = rng.range_f32(0.0, (w - ww).max(0.0)).floor();
            let y = rng.range_f32(0.0, (h - wh).max(0.0)).floor();
            out.push(example(
                &rgb,
                &ds,
                i,
                Bbox::from_xywh(x, y, ww.floor(), wh.floor()),
                input,
            ));
        }
    }
    Ok(out)
}

/// One phrasing of each category plus the four shapes alone, with what
/// each describes.
fn draw_queries(tok: &tokenizers::Tokenizer, rng: &mut SplitMix64) -> Result<QueryBatch> {
    let names = super::category_names();
    let mut texts = Vec::new();
    let mut covers = Vec::new();
    for (c, name) in names.iter().enumerate() {
        let text = match rng.below(6) {
            0 => format!("a {name}"),
            1 => format!("the {name}"),
            2 => name.clone(),
            3 => format!("two {name}s"),
            4 => format!("the {name}s"),
            _ => format!("{name}s"),
        };
        texts.push(text);
        covers.push((0..names.len()).map(|k| k == c).collect());
    }
    for (s, shape) in SHAPES.iter().enumerate() {
        texts.push(if rng.below(2) == 0 {
            format!("a {shape}")
        } else {
            format!("{shape}s")
        });
        covers.push((0..names.len()).map(|k| k % SHAPES.len() == s).collect());
    }
    let ids = texts
        .iter()
        .map(|t| {
            tok.encode(t.as_str(), true)
                .map(|e| e.get_ids().to_vec())
                .map_err(|e| anyhow::anyhow!("tokenizer: {e}"))
        })
        .collect::<Result<_>>()?;
    Ok(QueryBatch { ids, covers })
}

/// The tiny detector's configuration: the CLIP's, which it is built from,
/// at input side `image_size`.
fn owl_config(clip_dir: &Path, image_size: usize) -> Result<crate::model::ClipConfig> {
    let mut cfg = clip_model::read_config(&clip_dir.join("config.json"))?;
    cfg.vision_config.image_size = image_size;
    cfg.validate().map_err(anyhow::Error::msg)?;
    anyhow::ensure!(
        cfg.projection_dim == cfg.text_config.hidden_size,
        "{}: projection_dim {} differs from the text width {}; OWLv2's class head needs them equal",
        clip_dir.display(),
        cfg.projection_dim,
        cfg.text_config.hidden_size
    );
    Ok(cfg)
}

/// Makes the tiny detector in `out/model` from the CLIP folder `clip_dir`
/// (see the module docs); `progress` sees every step.
pub fn make_tiny_owl(
    out: &Path,
    clip_dir: &Path,
    opts: &TinyOwlOptions,
    progress: impl FnMut(&DetectionStep),
) -> Result<TinyOwlReport> {
    let cfg = owl_config(clip_dir, opts.image_size)?;
    let input = cfg.vision_config.image_size as u32;
    let tok = tokenizers::Tokenizer::from_file(clip_dir.join("tokenizer.json"))
        .map_err(|e| anyhow::anyhow!("{}: {e}", clip_dir.join("tokenizer.json").display()))?;
    let project = super::tiny_clip::scene_project(&out.join("scenes"), opts.scenes, opts.seed)?;
    let train_examples = examples(&project, opts.windows, opts.seed, input)?;
    let device = Device::Cpu;
    let mut weights = owlv2::random_weights(&cfg, opts.seed, &device)?;
    let clip = candle_core::safetensors::load(clip_dir.join("model.safetensors"), &device)
        .with_context(|| format!("reading {}", clip_dir.display()))?;
    let taken = owlv2::from_clip_weights(&mut weights, &clip)?;
    anyhow::ensure!(
        taken > 0,
        "{}: no CLIP tensor fits the detector",
        clip_dir.display()
    );
    // Only what the detector reads trains; the rest is carried to the file.
    let read: std::collections::HashSet<String> =
        crate::model::init::recorded_shapes(&device, |vb| Owlv2::new(vb, &cfg).map(|_| ()))?
            .into_iter()
            .map(|(n, _)| n)
            .collect();
    let vars: Vec<(String, Var)> = weights
        .iter()
        .filter(|(n, _)| read.contains(*n))
        .map(|(n, t)| Ok((n.clone(), Var::from_tensor(t)?)))
        .collect::<Result<_>>()?;
    let map: HashMap<String, Tensor> = vars
        .iter()
        .map(|(n, v)| (n.clone(), v.as_tensor().clone()))
        .collect();
    let model = Owlv2::new(VarBuilder::from_tensors(map, DType::F32, &device), &cfg)?;
    let processor = ImageProcessor::for_vision(&cfg.vision_config);
    let mut query_error = None;
    let steps = detection::train(
        &model,
        vars.clone(),
        &train_examples,
        &processor,
        |rng| match draw_queries(&tok, rng) {
            Ok(q) => q,
            Err(e) => {
                query_error.get_or_insert(e);
                QueryBatch::default()
            }
        },
        &opts.train,
        progress,
    )?;
    if let Some(e) = query_error {
        return Err(e);
    }
    for (n, v) in &vars {
        weights.insert(n.clone(), v.as_tensor().detach());
    }
    let model_dir = out.join("model");
    std::fs::create_dir_all(&model_dir)?;
    owlv2::save_model(&model_dir, &cfg, &weights)?;
    project::write_atomic(
        &model_dir.join("tokenizer.json"),
        &std::fs::read(clip_dir.join("tokenizer.json"))?,
    )?;
    let pre = serde_json::json!({
        "do_resize": true, "size": {"height": input, "width": input},
        "do_pad": true, "do_rescale": true, "rescale_factor": 1.0 / 255.0, "do_normalize": true,
        "image_mean": crate::model::processor::CLIP_MEAN, "image_std": crate::model::processor::CLIP_STD,
        "image_processor_type": "Owlv2ImageProcessor"
    });
    project::write_atomic(
        &model_dir.join("preprocessor_config.json"),
        &serde_json::to_vec_pretty(&pre)?,
    )?;
    let eval = evaluate_tiny_owl(
        &model_dir,
        &out.join("eval-scenes"),
        opts.eval_scenes,
        opts.eval_seed,
        DetectorSettings::default().threshold,
    )?;
    Ok(TinyOwlReport {
        params: weights.values().map(|t| t.elem_count()).sum(),
        images: train_examples.len(),
        objects: train_examples.iter().map(|e| e.objects.len()).sum(),
        steps,
        eval,
    })
}

/// Measures a detector folder on the region crops of `scenes` held-out
/// scenes drawn with `seed` into `work` (see [`OwlEvalReport`]).
pub fn evaluate_tiny_owl(
    model_dir: &Path,
    work: &Path,
    scenes: usize,
    seed: u64,
    threshold: f32,
) -> Result<OwlEvalReport> {
    let project = super::tiny_clip::scene_project(work, scenes, seed)?;
    let ds = project.load_dataset()?;
    let regions: Vec<RegionRecord> = super::tiny::read_all(&project.path(files::REGIONS))?;
    let settings = DetectorSettings {
        threshold,
        ..Default::default()
    };
    let det = OwlDetector::load(
        model_dir,
        &project.image_root(),
        &Device::Cpu,
        model_dir.display().to_string(),
        settings,
    )?;
    let names = super::category_names();
    let queries: Vec<String> = names.iter().map(|n| format!("a {n}")).collect();
    let mut all = Vec::new();
    let mut kept = Vec::new();
    let mut last: Option<(u64, RgbImage)> = None;
    for r in &regions {
        let image = ds.image_index(r.image_id).with_context(|| {
            format!(
                "region {}: image {} is not in the dataset",
                r.id, r.image_id
            )
        })?;
        if last.as_ref().is_none_or(|(id, _)| *id != r.image_id) {
            last = Some((r.image_id, imageio::load_rgb(&ds.image_path(image))?));
        }
        let Some((_, rgb)) = last.as_ref() else {
            continue;
        };
        let (square, side) = owl_square(rgb, r.crop);
        let per_query = det
            .patch_scores(&det.pixels(square)?, &queries)
            .map_err(anyhow::Error::msg)?;
        let truth = objects_in(&ds, image, r.crop);
        let mut found = Vec::new();
        let mut found_kept = Vec::new();
        for (c, patches) in per_query.iter().enumerate() {
            // Every patch above a floor, for the precision–recall curve.
            let scored: Vec<Scored> = patches
                .iter()
                .filter(|(p, _)| *p >= 0.01)
                .map(|&(score, b)| Scored {
                    bbox: crate::scoring::detector::image_from_square(b, side, r.crop),
                    score,
                })
                .collect();
            found.extend(nms(scored, settings.nms_iou).into_iter().map(|d| (c, d)));
            found_kept.extend(
                det.select(patches, side, r.crop)
                    .into_iter()
                    .map(|d| (c, d)),
            );
        }
        all.push(ImageDetections {
            truth: truth.clone(),
            found,
        });
        kept.push(ImageDetections {
            truth,
            found: found_kept,
        });
    }
    anyhow::ensure!(!all.is_empty(), "no held-out regions");
    let (precision, recall) = precision_recall(&kept, 0.5);
    Ok(OwlEvalReport {
        crops: all.len(),
        ap50: average_precision(&all, names.len(), 0.5),
        ap75: average_precision(&all, names.len(), 0.75),
        threshold,
        precision,
        recall,
    })
}

/// Precision and recall of kept detections at `iou` (one detection per
/// object, highest score first).
fn precision_recall(images: &[ImageDetections], iou: f32) -> (f64, f64) {
    let (mut hits, mut dets, mut objects) = (0usize, 0usize, 0usize);
    for im in images {
        objects += im.truth.len();
        dets += im.found.len();
        let mut used = vec![false; im.truth.len()];
        let mut found = im.found.clone();
        found.sort_by(|a, b| b.1.score.total_cmp(&a.1.score));
        for (c, d) in found {
            let best = im
                .truth
                .iter()
                .enumerate()
                .filter(|(g, (k, _))| *k == c && !used[*g])
                .map(|(g, (_, t))| (g, t.iou(d.bbox)))
                .max_by(|a, b| a.1.total_cmp(&b.1));
            if let Some((g, o)) = best {
                if o >= iou {
                    used[g] = true;
                    hits += 1;
                }
            }
        }
    }
    (
        hits as f64 / dets.max(1) as f64,
        hits as f64 / objects.max(1) as f64,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn boxes_go_to_the_square_and_back() {
        let window = Bbox::new(10.5, 20.0, 110.5, 70.0);
        let b = Bbox::new(30.0, 40.0, 50.0, 60.0);
        let sq = square_from_image(b, window, 100.0);
        let back = crate::scoring::detector::image_from_square(sq, 100.0, window);
        for (x, y) in [
            (back.x1, b.x1),
            (back.y1, b.y1),
            (back.x2, b.x2),
            (back.y2, b.y2),
        ] {
            assert!((x - y).abs() < 1e-4, "{back:?} vs {b:?}");
        }
    }

    #[test]
    fn queries_cover_what_they_say() {
        let tok = tokenizers::Tokenizer::from_file(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("assets/demo/models/clip/tokenizer.json"),
        )
        .unwrap();
        let q = draw_queries(&tok, &mut SplitMix64::new(3)).unwrap();
        assert_eq!(q.ids.len(), 16);
        // A category query covers one class; a shape query its 3 colours.
        assert_eq!(q.covers[0].iter().filter(|&&c| c).count(), 1);
        assert_eq!(
            q.covers[12].iter().filter(|&&c| c).count(),
            3,
            "three colours"
        );
        assert!(q.covers[12][0] && q.covers[12][4] && q.covers[12][8]);
    }
}
