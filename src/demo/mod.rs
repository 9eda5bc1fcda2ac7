//! The synthetic demo project (`spr demo --out DIR`, committed as
//! `assets/demo`).
//!
//! A new user should see real work at once, with no download: scenes of
//! coloured shapes (12 categories: 4 shapes × 3 colours) on a textured
//! background, 8–16 objects each plus a few objects too small for SPR's area
//! filter and some crowd boxes, COCO-format annotations, SPR region queries
//! and, for each query, grounded descriptions of deliberately varied quality
//! written in Ferret's syntax on the crop:
//!
//! | kind       | what it does                                             |
//! |------------|----------------------------------------------------------|
//! | `precise`  | every region object, exact boxes                         |
//! | `jittered` | every region object, boxes off by 3–8 px                 |
//! | `partial`  | half of the objects, exact boxes                         |
//! | `wrong`    | objects that are not there (each phrase's colour changed), boxes of other objects (outside the region first) |
//! | `invented` | half of the objects plus objects that are not there      |
//! | `vague`    | a description with no boxes at all                       |
//!
//! Everything is plainly labelled synthetic (`source:
//! "synthetic-demo:<kind>"`, the project's description, a README in the
//! folder) and generated deterministically from a seed, so the committed copy
//! can be checked against a fresh run. The descriptions are templated, not
//! written by any model.

pub mod rec;
pub mod tiny;
pub mod tiny_clip;
pub mod tiny_gate;
pub mod tiny_owl;
pub mod tiny_tower;

use std::path::{Path, PathBuf};

use anyhow::Context;
use image::{Rgb, RgbImage};
use serde::Serialize;

use crate::core::dataset::Dataset;
use crate::core::geometry::Bbox;
use crate::core::grounded::{self, BoxFormat, GroundedText, Piece};
use crate::core::pipeline;
use crate::core::project::{
    self, files, CandidateRecord, DatasetConfig, ExportConfig, Frame, ModelConfig, Project,
    ProjectConfig, RegionRecord, ScoringConfig, FORMAT_VERSION,
};
use crate::core::regions::RegionConfig;
use crate::core::rng::SplitMix64;

/// Settings of the generator.
#[derive(Clone, Debug)]
pub struct DemoConfig {
    /// Number of images.
    pub images: usize,
    /// Image width in pixels.
    pub width: u32,
    /// Image height in pixels.
    pub height: u32,
    /// Seed of everything.
    pub seed: u64,
    /// Region queries per object-rich image.
    pub regions_per_image: usize,
    /// Fewest and most objects drawn per scene (before the one or two
    /// objects below SPR's area limit); fewer are placed when a scene has
    /// no room left.
    pub objects: [usize; 2],
    /// Scenes of the REC evaluation set (`rec/`, its own seed; 0: none).
    pub rec_scenes: usize,
    /// A CLIP model folder copied into the project (`models/clip`) and
    /// named by its `[scoring] semantic_model`, so the demo's scores carry
    /// the semantic component (none: they do not).
    pub clip: Option<PathBuf>,
    /// An OWLv2 folder copied into the project (`models/owlv2`) and named
    /// by its `[scoring] detector_model`, so the demo's localization scores
    /// include detector boxes (none: written boxes only).
    pub detector: Option<PathBuf>,
}

/// Where the demo project keeps its tiny CLIP.
pub const DEMO_CLIP: &str = "models/clip";

/// Where the demo project keeps its tiny detector.
pub const DEMO_DETECTOR: &str = "models/owlv2";

/// A committed demo model folder (`assets/demo/<rel>`), when present.
fn bundled(rel: &str) -> Option<PathBuf> {
    let p = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("assets/demo")
        .join(rel);
    p.join("config.json").is_file().then_some(p)
}

/// The committed tiny CLIP (`assets/demo/models/clip`), when present.
pub fn bundled_clip() -> Option<PathBuf> {
    bundled(DEMO_CLIP)
}

/// The committed tiny OWLv2 (`assets/demo/models/owlv2`), when present.
pub fn bundled_detector() -> Option<PathBuf> {
    bundled(DEMO_DETECTOR)
}

impl Default for DemoConfig {
    fn default() -> Self {
        Self {
            images: 40,
            width: 384,
            height: 288,
            seed: 2025,
            regions_per_image: 2,
            objects: [8, 16],
            rec_scenes: 20,
            clip: bundled_clip(),
            detector: bundled_detector(),
        }
    }
}

/// The shapes drawn.
const SHAPES: [&str; 4] = ["circle", "square", "triangle", "diamond"];
/// The colours, with their RGB values.
const COLOURS: [(&str, [u8; 3]); 3] = [
    ("red", [214, 48, 49]),
    ("green", [39, 174, 96]),
    ("blue", [41, 98, 255]),
];

/// Category names in id order (ids start at 1): "red circle", ….
pub fn category_names() -> Vec<String> {
    let mut v = Vec::new();
    for (colour, _) in COLOURS {
        for shape in SHAPES {
            v.push(format!("{colour} {shape}"));
        }
    }
    v
}

#[derive(Clone, Debug)]
pub(crate) struct Shape {
    pub(crate) category: usize, // 0-based
    pub(crate) bbox: Bbox,
    pub(crate) crowd: bool,
}

#[derive(Serialize)]
struct CocoImage<'a> {
    id: u64,
    file_name: &'a str,
    width: u32,
    height: u32,
}

#[derive(Serialize)]
pub(crate) struct CocoAnnotation {
    pub(crate) id: u64,
    pub(crate) image_id: u64,
    pub(crate) category_id: u64,
    pub(crate) bbox: [f32; 4],
    pub(crate) area: f32,
    pub(crate) iscrowd: u8,
}

#[derive(Serialize)]
struct CocoCategory {
    id: u64,
    name: String,
    supercategory: &'static str,
}

#[derive(Serialize)]
struct CocoFile<'a> {
    info: serde_json::Value,
    images: Vec<CocoImage<'a>>,
    annotations: Vec<CocoAnnotation>,
    categories: Vec<CocoCategory>,
}

fn inside_shape(shape: usize, b: Bbox, x: f32, y: f32) -> bool {
    let (cx, cy) = b.center();
    let (hw, hh) = (b.width() * 0.5, b.height() * 0.5);
    let (u, v) = ((x - cx) / hw, (y - cy) / hh); // in [-1, 1]
    match SHAPES[shape] {
        "circle" => u * u + v * v <= 1.0,
        "square" => u.abs() <= 1.0 && v.abs() <= 1.0,
        "triangle" => (-1.0..=1.0).contains(&v) && u.abs() <= (v + 1.0) * 0.5,
        _ => u.abs() + v.abs() <= 1.0,
    }
}

fn draw(img: &mut RgbImage, s: &Shape) {
    let shape = s.category % SHAPES.len();
    let colour = COLOURS[s.category / SHAPES.len()].1;
    let (x1, y1) = (s.bbox.x1.max(0.0) as u32, s.bbox.y1.max(0.0) as u32);
    let (x2, y2) = (s.bbox.x2.ceil() as u32, s.bbox.y2.ceil() as u32);
    for y in y1..y2.min(img.height()) {
        for x in x1..x2.min(img.width()) {
            let (fx, fy) = (x as f32 + 0.5, y as f32 + 0.5);
            if inside_shape(shape, s.bbox, fx, fy) {
                // A darker rim reads as an outline.
                let rim = !inside_shape(shape, s.bbox.expand(0.85), fx, fy);
                let c = if rim {
                    colour.map(|v| (v as f32 * 0.6) as u8)
                } else {
                    colour
                };
                img.put_pixel(x, y, Rgb(c));
            }
        }
    }
}

fn background(cfg: &DemoConfig, rng: &mut SplitMix64) -> RgbImage {
    let tint = [
        rng.range_f32(225.0, 245.0),
        rng.range_f32(225.0, 245.0),
        rng.range_f32(220.0, 240.0),
    ];
    RgbImage::from_fn(cfg.width, cfg.height, |x, y| {
        // A soft diagonal gradient with a faint checker texture.
        let g = (x + y) as f32 / (cfg.width + cfg.height) as f32 * 18.0;
        let checker = if (x / 16 + y / 16) % 2 == 0 { 4.0 } else { 0.0 };
        Rgb(tint.map(|t| (t - g - checker).clamp(0.0, 255.0) as u8))
    })
}

fn place(rng: &mut SplitMix64, placed: &[Shape], w: f32, h: f32, lo: f32, hi: f32) -> Option<Bbox> {
    for _ in 0..60 {
        let bw = rng.range_f32(lo, hi).round();
        let bh = (bw * rng.range_f32(0.8, 1.25)).round().min(h - 2.0);
        let x = rng.range_f32(1.0, w - bw - 1.0).round();
        let y = rng.range_f32(1.0, h - bh - 1.0).round();
        let b = Bbox::from_xywh(x, y, bw, bh);
        if placed
            .iter()
            .all(|p| p.bbox.intersection(b).area() < 0.05 * b.area().min(p.bbox.area()))
        {
            return Some(b);
        }
    }
    None
}

pub(crate) fn scene(cfg: &DemoConfig, index: usize) -> (RgbImage, Vec<Shape>) {
    let mut rng = SplitMix64::for_stream(cfg.seed, index as u64);
    let (w, h) = (cfg.width as f32, cfg.height as f32);
    let mut img = background(cfg, &mut rng);
    let [lo, hi] = cfg.objects;
    let n = lo + rng.below(hi.saturating_sub(lo) + 1);
    let mut shapes: Vec<Shape> = Vec::new();
    for _ in 0..n {
        if let Some(bbox) = place(&mut rng, &shapes, w, h, 24.0, 62.0) {
            shapes.push(Shape {
                category: rng.below(12),
                bbox,
                crowd: false,
            });
        }
    }
    // One or two objects below SPR's area limit (300 px²).
    for _ in 0..1 + rng.below(2) {
        if let Some(bbox) = place(&mut rng, &shapes, w, h, 9.0, 14.0) {
            shapes.push(Shape {
                category: rng.below(12),
                bbox,
                crowd: false,
            });
        }
    }
    // Every fifth scene has a crowd: a cluster of small same-category dots
    // annotated as one crowd box.
    if index % 5 == 4 {
        if let Some(area) = place(&mut rng, &shapes, w, h, 40.0, 50.0) {
            let category = rng.below(12);
            for k in 0..9 {
                let (cx, cy) = (
                    area.x1 + 7.0 + (k % 3) as f32 * 13.0,
                    area.y1 + 7.0 + (k / 3) as f32 * 13.0,
                );
                draw(
                    &mut img,
                    &Shape {
                        category,
                        bbox: Bbox::new(cx - 5.0, cy - 5.0, cx + 5.0, cy + 5.0),
                        crowd: true,
                    },
                );
            }
            shapes.push(Shape {
                category,
                bbox: area,
                crowd: true,
            });
        }
    }
    for s in shapes.iter().filter(|s| !s.crowd) {
        draw(&mut img, s);
    }
    (img, shapes)
}

fn where_in(b: Bbox, region: Bbox) -> &'static str {
    let (cx, cy) = b.center();
    let fx = (cx - region.x1) / region.width().max(1.0);
    let fy = (cy - region.y1) / region.height().max(1.0);
    match (fy < 0.4, fy > 0.6, fx < 0.4, fx > 0.6) {
        (true, _, true, _) => "at the top left",
        (true, _, _, true) => "at the top right",
        (true, _, _, _) => "at the top",
        (_, true, true, _) => "at the bottom left",
        (_, true, _, true) => "at the bottom right",
        (_, true, _, _) => "at the bottom",
        (_, _, true, _) => "on the left",
        (_, _, _, true) => "on the right",
        _ => "in the middle",
    }
}

fn sentence(items: &[(String, Bbox, &'static str)]) -> GroundedText {
    let mut pieces = vec![Piece::Text("This part of the picture shows ".into())];
    for (i, (phrase, b, place)) in items.iter().enumerate() {
        if i > 0 {
            pieces.push(Piece::Text(if i + 1 == items.len() {
                " and ".into()
            } else {
                ", ".into()
            }));
        }
        pieces.push(Piece::Object {
            phrase: phrase.clone(),
            boxes: vec![*b],
        });
        pieces.push(Piece::Text(format!(" {place}")));
    }
    pieces.push(Piece::Text(".".into()));
    GroundedText { pieces }
}

/// The demo's candidate kinds, in the order they are written.
pub const KINDS: [&str; 6] = [
    "precise", "jittered", "partial", "wrong", "invented", "vague",
];

/// `"a red circle"` → `"a green circle"`: the next colour of [`COLOURS`].
fn other_colour(phrase: &str) -> String {
    for (k, (c, _)) in COLOURS.iter().enumerate() {
        let word = format!(" {c} ");
        if phrase.contains(&word) {
            let next = COLOURS[(k + 1) % COLOURS.len()].0;
            return phrase.replacen(&word, &format!(" {next} "), 1);
        }
    }
    phrase.to_string()
}

fn candidates_for(
    region: &RegionRecord,
    ds: &Dataset,
    ids: &std::collections::HashMap<u64, usize>,
    rng: &mut SplitMix64,
) -> Vec<CandidateRecord> {
    let objects: Vec<(String, Bbox)> = region
        .objects
        .iter()
        .filter_map(|id| ids.get(id))
        .map(|&o| (format!("a {}", ds.category_name(o)), ds.objects.bbox[o]))
        .collect();
    let crop = region.crop;
    let item = |(p, b): &(String, Bbox)| (p.clone(), *b, where_in(*b, region.region));
    let exact: Vec<_> = objects.iter().map(item).collect();
    let half = &exact[..exact.len().div_ceil(2)];
    let mut texts: Vec<(&str, GroundedText)> = Vec::new();
    texts.push(("precise", sentence(&exact)));
    let jittered: Vec<_> = exact
        .iter()
        .map(|(p, b, w)| {
            let mut d = || {
                let m = rng.range_f32(3.0, 8.0).round();
                if rng.below(2) == 0 {
                    -m
                } else {
                    m
                }
            };
            let j = Bbox::new(b.x1 + d(), b.y1 + d(), b.x2 + d(), b.y2 + d());
            let j = if j.is_valid() { j } else { *b };
            (p.clone(), j.intersection(crop), *w)
        })
        .collect();
    texts.push(("jittered", sentence(&jittered)));
    texts.push(("partial", sentence(half)));
    // Objects that are not there: each phrase's colour changed, with the box
    // of another object (the nearest object of the image outside the
    // region, while there are any, else the next region object's box).
    let image = ds.image_index(region.image_id).unwrap_or(0);
    let mut outside: Vec<Bbox> = ds
        .objects_of(image)
        .filter(|o| !ds.objects.crowd[*o] && !region.objects.contains(&ds.objects.id[*o]))
        .map(|o| ds.objects.bbox[o])
        .filter(|b| b.fraction_inside(crop) >= 0.5)
        .collect();
    outside.sort_by(|a, b| region.region.gap(*a).total_cmp(&region.region.gap(*b)));
    let wrong: Vec<_> = exact
        .iter()
        .enumerate()
        .map(|(i, (p, _, w))| {
            let b = outside
                .get(i)
                .copied()
                .unwrap_or(exact[(i + 1) % exact.len()].1);
            (other_colour(p), b, *w)
        })
        .collect();
    texts.push(("wrong", sentence(&wrong)));
    let mut invented: Vec<_> = half.to_vec();
    for _ in 0..2 {
        let names = category_names();
        let name = format!("a {}", names[rng.below(names.len())]);
        let (cw, ch) = (crop.width(), crop.height());
        let s = rng.range_f32(0.15, 0.3) * cw.min(ch);
        let x = crop.x1 + rng.range_f32(0.0, (cw - s).max(1.0));
        let y = crop.y1 + rng.range_f32(0.0, (ch - s).max(1.0));
        let b = Bbox::from_xywh(x, y, s, s).round();
        invented.push((name, b, where_in(b, region.region)));
    }
    texts.push(("invented", sentence(&invented)));
    let colours: Vec<&str> = {
        let mut c: Vec<&str> = objects
            .iter()
            .filter_map(|(p, _)| p.split(' ').nth(1))
            .collect();
        c.sort_unstable();
        c.dedup();
        c
    };
    let vague = format!(
        "A few {} shapes are scattered across this part of the picture.",
        colours.join(" and ")
    );
    let mut out = Vec::new();
    for (kind, text) in texts {
        let rendered = grounded::render(
            &text.crop_from_image(crop),
            BoxFormat::Ferret,
            crop.width(),
            crop.height(),
        );
        out.push((kind, rendered));
    }
    out.push(("vague", vague));
    out.into_iter()
        .enumerate()
        .map(|(k, (kind, text))| CandidateRecord {
            v: FORMAT_VERSION,
            id: format!("{}-c{k}", region.id),
            query_id: region.id.clone(),
            source: format!("synthetic-demo:{kind}"),
            prompt: Some("Describe this region in detail, with a box for every object.".into()),
            text,
            format: BoxFormat::Ferret,
            frame: Frame::Crop,
            generation: None,
        })
        .collect()
}

/// What [`generate`] wrote.
#[derive(Clone, Debug, Default)]
pub struct DemoSummary {
    /// The project folder.
    pub root: PathBuf,
    /// Images written.
    pub images: usize,
    /// Annotations written.
    pub annotations: usize,
    /// Region queries.
    pub regions: usize,
    /// Candidates.
    pub candidates: usize,
    /// Pairs.
    pub pairs: usize,
    /// Referring expressions of the REC set.
    pub rec_expressions: usize,
}

const README: &str = "# SPR Workbench demo project (synthetic)

Everything in this folder is **synthetic**, made by `spr demo --out DIR`
(deterministic; seed in `spr.toml`'s description). The images are generated
scenes of coloured shapes, the annotations are exact by construction, and the
candidate descriptions are templated by the generator (their `source` field
says `synthetic-demo:<kind>`), not written by any model. `rec/` is a small
REC evaluation set (MDETR layout) on scenes of their own seed.
";

/// The README's paragraphs on the scores.
fn readme_scores(clip: bool, detector: bool) -> String {
    let mut out = String::from(if clip {
        "\nThe semantic scores come from the tiny CLIP in `models/clip`, trained by\n\
         `spr tiny clip` on synthetic scenes of another seed: they show the mechanism,\n\
         not what OpenAI's CLIP would say.\n"
    } else {
        "\nScores hold the localization component only: no semantic (CLIP) scorer has\n\
         run, so `semantic` is `null`.\n"
    });
    out.push_str(if detector {
        "\nThe detector boxes (`detections` in `scores.jsonl`) come from the tiny OWLv2 in\n\
         `models/owlv2`, trained by `spr tiny owl` from that CLIP on scenes of another\n\
         seed; they join the written boxes in the localization score, as SPR's\n\
         GroundingDINO boxes do.\n"
    } else {
        "\nNo detector has run: the localization score uses the written boxes only.\n"
    });
    out
}

/// Copies a model folder's files (not into itself).
fn copy_model(src: &Path, dest: &Path) -> anyhow::Result<()> {
    let same = match (src.canonicalize(), dest.canonicalize()) {
        (Ok(a), Ok(b)) => a == b,
        _ => false,
    };
    if same {
        return Ok(());
    }
    std::fs::create_dir_all(dest).with_context(|| format!("creating {}", dest.display()))?;
    for entry in std::fs::read_dir(src).with_context(|| format!("reading {}", src.display()))? {
        let entry = entry?;
        if entry.file_type()?.is_file() {
            let to = dest.join(entry.file_name());
            let bytes = std::fs::read(entry.path())?;
            project::write_atomic(&to, &bytes)?;
        }
    }
    Ok(())
}

/// Generate the demo project into `out` (created if needed; existing stage
/// files are overwritten).
pub fn generate(out: &Path, cfg: &DemoConfig) -> anyhow::Result<DemoSummary> {
    let images_dir = out.join("images");
    std::fs::create_dir_all(&images_dir)
        .with_context(|| format!("creating {}", images_dir.display()))?;
    let names: Vec<String> = (0..cfg.images)
        .map(|i| format!("scene_{:03}.png", i + 1))
        .collect();
    let scenes: Vec<(RgbImage, Vec<Shape>)> = (0..cfg.images).map(|i| scene(cfg, i)).collect();
    let mut coco = CocoFile {
        info: serde_json::json!({
            "description": "SPR Workbench synthetic demo scenes (generated, not real photographs)",
            "generator": "spr demo",
            "seed": cfg.seed,
        }),
        images: Vec::new(),
        annotations: Vec::new(),
        categories: category_names()
            .into_iter()
            .enumerate()
            .map(|(i, name)| CocoCategory {
                id: i as u64 + 1,
                name,
                supercategory: "shape",
            })
            .collect(),
    };
    let mut next_ann = 1u64;
    for (i, ((img, shapes), name)) in scenes.iter().zip(&names).enumerate() {
        crate::core::imageio::save_png(img, &images_dir.join(name))?;
        let image_id = i as u64 + 1;
        coco.images.push(CocoImage {
            id: image_id,
            file_name: name,
            width: cfg.width,
            height: cfg.height,
        });
        for s in shapes {
            coco.annotations.push(CocoAnnotation {
                id: next_ann,
                image_id,
                category_id: s.category as u64 + 1,
                bbox: s.bbox.to_xywh(),
                area: s.bbox.area(),
                iscrowd: u8::from(s.crowd),
            });
            next_ann += 1;
        }
    }
    let json = serde_json::to_vec_pretty(&coco)?;
    project::write_atomic(&out.join("annotations.json"), &json)?;
    let readme = format!(
        "{README}{}",
        readme_scores(cfg.clip.is_some(), cfg.detector.is_some())
    );
    project::write_atomic(&out.join("README.md"), readme.as_bytes())?;

    let config = ProjectConfig {
        format_version: FORMAT_VERSION,
        name: "SPR demo (synthetic shapes)".into(),
        description: format!(
            "Synthetic demo data generated by `spr demo` (seed {}): shapes, not photographs; \
             templated descriptions, not model output.",
            cfg.seed
        ),
        dataset: DatasetConfig {
            annotations: "annotations.json".into(),
            image_root: "images".into(),
            min_area: 300.0,
            min_objects: 9,
        },
        regions: RegionConfig {
            seed: cfg.seed,
            per_image: cfg.regions_per_image,
            ..Default::default()
        },
        model: ModelConfig {
            format: BoxFormat::Ferret,
        },
        scoring: ScoringConfig {
            semantic_model: cfg.clip.as_ref().map(|_| DEMO_CLIP.to_string()),
            detector_model: cfg.detector.as_ref().map(|_| DEMO_DETECTOR.to_string()),
            ..ScoringConfig::default()
        },
        export: ExportConfig::default(),
        generate: Default::default(),
    };
    if let Some(src) = &cfg.clip {
        copy_model(src, &out.join(DEMO_CLIP))?;
    }
    if let Some(src) = &cfg.detector {
        copy_model(src, &out.join(DEMO_DETECTOR))?;
    }
    let project = Project::create(out, config)?;
    let ds = project.load_dataset()?;
    anyhow::ensure!(
        ds.issues.is_empty(),
        "demo dataset has issues: {}",
        ds.issues[0]
    );
    let pre = project.config.dataset.preprocess();
    let regions = pipeline::build_regions(&ds, &pre, &project.config.regions, &|_| {});
    let ids = pipeline::object_ids(&ds);
    let mut rng = SplitMix64::for_stream(cfg.seed, u64::MAX);
    let candidates: Vec<CandidateRecord> = regions
        .iter()
        .flat_map(|r| candidates_for(r, &ds, &ids, &mut rng))
        .collect();
    let loaded = crate::scoring::ProjectScorers::load(&project, &candle_core::Device::Cpu)?;
    let (scores, issues) = pipeline::score_candidates(
        &ds,
        &regions,
        &candidates,
        &project.config.scoring,
        loaded.scorers(),
        &|_| {},
    );
    anyhow::ensure!(issues.is_empty(), "demo scoring issue: {}", issues[0]);
    let (pairs, _, issues) = pipeline::build_pairs(
        &ds,
        &regions,
        &candidates,
        &scores,
        &[],
        &project.config.scoring,
        project.config.model.format,
    );
    anyhow::ensure!(issues.is_empty(), "demo pairing issue: {}", issues[0]);
    project::write_jsonl(&project.path(files::REGIONS), &regions)?;
    project::write_jsonl(&project.path(files::CANDIDATES), &candidates)?;
    project::write_jsonl(&project.path(files::SCORES), &scores)?;
    project::write_jsonl(&project.path(files::PAIRS), &pairs)?;
    let rec_expressions = if cfg.rec_scenes > 0 {
        rec::write_rec_set(out, cfg, cfg.rec_scenes)?
    } else {
        0
    };
    Ok(DemoSummary {
        rec_expressions,
        root: out.to_path_buf(),
        images: cfg.images,
        annotations: coco.annotations.len(),
        regions: regions.len(),
        candidates: candidates.len(),
        pairs: pairs.len(),
    })
}
