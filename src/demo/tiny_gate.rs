//! The tiny LLaVA's projector started as an objectness-gated read-out of
//! object edges (`spr tiny init --gate-from SCENES`), so that a tiny model
//! trained from scratch learns to point.
//!
//! Why. A language model that has never seen an image reads positions
//! only by attending to the right image token, and it only gains from
//! attending there once something turns that token's position into the
//! answer's digits: neither comes first, so the gradient towards either is
//! second-order and training sits on a plateau (every answer the same
//! prior box; six tries in README "The experiment", with PyTorch on the
//! same model and rows showing the same plateau, so it is not our
//! trainer). Additive position embeddings do not help: under uniform
//! attention every token contributes its position whether or not an
//! object is there, so the average says nothing about where the object is.
//!
//! What. A few projector units become `gelu(A·(objectness − t) +
//! B·(edge − k/16))`: off on background patches, on an object's patches a
//! ramp of that object's left (top, right, bottom) edge past k/16 as the
//! patch's features tell it. Then even the average over the image tokens
//! carries the object's box linearly, the
//! language model learns to read it out in a few hundred steps on
//! one-object scenes, and once a read-out exists, attending to the named
//! object pays off directly (first-order) on scenes with several objects.
//! Objectness (on every patch) and the covering object's edges (on object
//! patches) are least-squares read-outs of the frozen tower's features,
//! fitted on scenes whose boxes are known; every weight stays trainable
//! afterwards.
//!
//! Per category (`spr tiny gate --by-category`), the gate is the tower's
//! least-squares read-out of one category instead of objectness, with 4
//! ramps per edge: each category's box in its own units (12 × 4 × 4).

use std::path::Path;

use anyhow::{Context, Result};
use candle_core::{DType, Device, Tensor};
use image::DynamicImage;

use crate::core::geometry::Bbox;
use crate::core::imageio;
use crate::core::project::Project;
use crate::model::llava::save_model;
use crate::model::processor::ImageProcessor;
use crate::model::Llava;

/// Ramps per box edge: 4 × 16 projector units are set.
const RAMPS: usize = 16;
/// Ramps per box edge and category when the gate is per category.
const CATEGORY_RAMPS: usize = 4;
/// Gate steepness: the objectness margin maps to this many units of the
/// GELU's input, so background stays off whatever the position term says.
const GATE: f64 = 8.0;
/// Slope of the position ramps (per unit of the 0–1 patch coordinate).
const SLOPE: f64 = 4.0;
/// A patch counts as an object's when this fraction of it is covered.
const OBJECT_COVER: f32 = 0.25;

/// What [`gate_projector`] fitted and set.
#[derive(Clone, Debug)]
pub struct GateReport {
    /// Scenes read.
    pub images: usize,
    /// Image tokens (patches) fitted on.
    pub tokens: usize,
    /// Of them, patches covered by an object.
    pub object_tokens: usize,
    /// Mean objectness read-out on object and on background patches.
    pub objectness: (f64, f64),
    /// The gate's threshold (between background's 99th and objects' 10th
    /// percentile).
    pub threshold: f64,
    /// Mean absolute error of the edge read-outs (left, top, right,
    /// bottom; 0–1 image units) on object patches.
    pub edge_error: [f64; 4],
    /// Projector units set.
    pub units: usize,
}

/// Fits the read-outs on up to `max_images` scenes of the project
/// `scenes` through the tower of the model in `model_dir` and rewrites
/// the first projector units of `model_dir` (see the module docs).
pub fn gate_projector(
    model_dir: &Path,
    scenes: &Path,
    max_images: usize,
    by_category: bool,
) -> Result<GateReport> {
    let device = Device::Cpu;
    let model = Llava::load(model_dir, &device, DType::F32)?;
    let cfg = model.config().clone();
    let processor = ImageProcessor::from_dir(model_dir, &cfg.vision_config)?;
    let mut rows: Vec<Vec<f64>> = Vec::new();
    // Per patch: whether an object covers it, and that object's edges.
    let mut covered: Vec<Option<[f64; 4]>> = Vec::new();
    let mut category: Vec<Option<u32>> = Vec::new();
    let (images, n_cat) = visit_scenes(
        &model,
        &processor,
        model_dir,
        scenes,
        max_images,
        |pixels, cover| {
            let feats = model.vision_features(&pixels.unsqueeze(0)?)?;
            let feats: Vec<Vec<f32>> = feats.squeeze(0)?.to_vec2()?;
            for (f, c) in feats.iter().zip(cover) {
                covered.push(c.map(|(_, e)| e.map(f64::from)));
                category.push(c.map(|(k, _)| k));
                let mut x: Vec<f64> = f.iter().map(|&v| f64::from(v)).collect();
                x.push(1.0);
                rows.push(x);
            }
            Ok(())
        },
    )?;
    anyhow::ensure!(
        images > 0,
        "{}: no scenes to fit the gate on",
        scenes.display()
    );
    let is_object: Vec<bool> = covered.iter().map(Option::is_some).collect();
    let object_rows: Vec<Vec<f64>> = rows
        .iter()
        .zip(&is_object)
        .filter(|(_, &o)| o)
        .map(|(r, _)| r.clone())
        .collect();
    let object_tokens = object_rows.len();
    anyhow::ensure!(
        object_tokens > rows[0].len() && object_tokens < rows.len(),
        "{}: the scenes need more object patches (have {object_tokens}) and some background",
        scenes.display()
    );
    let objectness: Vec<f64> = is_object.iter().map(|&o| f64::from(u8::from(o))).collect();
    let wo = least_squares(&rows, &[objectness])?.remove(0);
    let edges: Vec<Vec<f64>> = (0..4)
        .map(|k| covered.iter().flatten().map(|e| e[k]).collect())
        .collect();
    let we = least_squares(&object_rows, &edges)?;
    let po: Vec<f64> = rows.iter().map(|x| dot(x, &wo)).collect();
    let (mut on_objects, mut on_background) = (
        masked(&po, &is_object, true),
        masked(&po, &is_object, false),
    );
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
    let (obj_mean, bg_mean) = (mean(&on_objects), mean(&on_background));
    let threshold = (quantile(&mut on_background, 0.99) + quantile(&mut on_objects, 0.10)) / 2.0;
    anyhow::ensure!(
        obj_mean > threshold,
        "{}: objectness does not separate objects from background through this tower",
        model_dir.display()
    );
    let edge_error: [f64; 4] = std::array::from_fn(|k| {
        object_rows
            .iter()
            .zip(&edges[k])
            .map(|(x, t)| (dot(x, &we[k]) - t).abs())
            .sum::<f64>()
            / object_tokens as f64
    });

    // Rewrite the first projector units.
    let weights_path = model_dir.join("model.safetensors");
    let mut weights = candle_core::safetensors::load(&weights_path, &device)
        .with_context(|| format!("reading {}", weights_path.display()))?;
    let (w_name, b_name) = (
        "multi_modal_projector.linear_1.weight",
        "multi_modal_projector.linear_1.bias",
    );
    let mut w1: Vec<Vec<f32>> = weights
        .get(w_name)
        .with_context(|| format!("{}: no `{w_name}`", weights_path.display()))?
        .to_vec2()?;
    let mut b1: Vec<f32> = weights
        .get(b_name)
        .with_context(|| format!("{}: no `{b_name}`", weights_path.display()))?
        .to_vec1()?;
    let dim = wo.len() - 1;
    anyhow::ensure!(
        w1.len() >= 4 * RAMPS && w1[0].len() == dim,
        "projector {}×{} does not fit {} gate units on {dim} features",
        w1.len(),
        w1.first().map_or(0, Vec::len),
        4 * RAMPS
    );
    let mut unit = 0;
    if by_category {
        // Per category c, units gelu(A_c·(p_c − t_c) + B·(edge − k/4)):
        // each category's box in its own channels.
        let targets: Vec<Vec<f64>> = (0..n_cat as u32)
            .map(|c| {
                category
                    .iter()
                    .map(|&k| f64::from(u8::from(k == Some(c))))
                    .collect()
            })
            .collect();
        let wc = least_squares(&rows, &targets)?;
        anyhow::ensure!(
            w1.len() >= n_cat * 4 * CATEGORY_RAMPS,
            "projector has {} units, fewer than the {} category gate units",
            w1.len(),
            n_cat * 4 * CATEGORY_RAMPS
        );
        for (c, wcat) in wc.iter().enumerate() {
            let pc: Vec<f64> = rows.iter().map(|x| dot(x, wcat)).collect();
            let own: Vec<bool> = category.iter().map(|&k| k == Some(c as u32)).collect();
            let (mut on, mut off) = (masked(&pc, &own, true), masked(&pc, &own, false));
            if on.is_empty() {
                continue;
            }
            let on_mean = on.iter().sum::<f64>() / on.len() as f64;
            let t = (quantile(&mut off, 0.99) + quantile(&mut on, 0.10)) / 2.0;
            let gain = GATE / (on_mean - t).max(1e-3);
            for wp in &we {
                for k in 0..CATEGORY_RAMPS {
                    let at = (k as f64 + 0.5) / CATEGORY_RAMPS as f64;
                    set_unit(&mut w1[unit], &mut b1[unit], (gain, wcat, t), wp, at);
                    unit += 1;
                }
            }
        }
    } else {
        let gain = GATE / (obj_mean - threshold);
        for wp in &we {
            for k in 0..RAMPS {
                let at = k as f64 / RAMPS as f64;
                set_unit(&mut w1[unit], &mut b1[unit], (gain, &wo, threshold), wp, at);
                unit += 1;
            }
        }
    }
    let rows_n = w1.len();
    let flat: Vec<f32> = w1.into_iter().flatten().collect();
    weights.insert(
        w_name.into(),
        Tensor::from_vec(flat, (rows_n, dim), &device)?,
    );
    weights.insert(b_name.into(), Tensor::from_vec(b1, rows_n, &device)?);
    drop(model);
    save_model(model_dir, &cfg, &weights)?;
    Ok(GateReport {
        images,
        tokens: rows.len(),
        object_tokens,
        objectness: (obj_mean, bg_mean),
        threshold,
        edge_error,
        units: unit,
    })
}

/// Writes one gate unit of the projector's first layer: the pre-activation
/// `gain·(g·x − t) + SLOPE·(e·x − at)`, with `g` the gate's read-out (the
/// objectness or one category's), `e` an edge's read-out (both with the
/// bias last) and `at` the ramp's position.
fn set_unit(row: &mut [f32], bias: &mut f32, gate: (f64, &[f64], f64), edge: &[f64], at: f64) {
    let (gain, g, t) = gate;
    let dim = row.len();
    for (j, slot) in row.iter_mut().enumerate() {
        *slot = (gain * g[j] + SLOPE * edge[j]) as f32;
    }
    *bias = (gain * (g[dim] - t) + SLOPE * (edge[dim] - at)) as f32;
}

/// Checks that `model` (from `model_dir`) and `processor` give one feature
/// per patch of the whole scene (a plain square resize, the default feature
/// strategy), then hands `f` the pixel values `(3, S, S)` and the per-patch
/// cover ([`covering`], 0-based categories) of each of the first `max`
/// scenes of the project `scenes`. Returns the scenes visited and the
/// project's number of categories.
pub(crate) fn visit_scenes(
    model: &Llava,
    processor: &ImageProcessor,
    model_dir: &Path,
    scenes: &Path,
    max: usize,
    mut f: impl FnMut(Tensor, Vec<Option<(u32, [f32; 4])>>) -> Result<()>,
) -> Result<(usize, usize)> {
    anyhow::ensure!(
        !processor.do_center_crop && processor.shortest_edge.is_none(),
        "{}: each patch is mapped to its part of the whole scene, so the processor must \
         resize to the tower's square without cropping (as `spr tiny init` writes it)",
        model_dir.display()
    );
    let vision = &model.config().vision_config;
    let side = vision.image_size / vision.patch_size;
    anyhow::ensure!(
        side * side == model.image_tokens_per_image(),
        "{}: one feature per patch is needed (the default feature strategy)",
        model_dir.display()
    );
    let project = Project::open(scenes)?;
    let ds = project.load_dataset()?;
    let mut images = 0;
    for (i, info) in ds.images.iter().enumerate().take(max) {
        let path = project.image_root().join(&info.file_name);
        let img = imageio::load_rgb(&path).with_context(|| format!("scene {}", path.display()))?;
        let pixels = processor.preprocess(&DynamicImage::ImageRgb8(img), model.device())?;
        let objects: Vec<(u32, Bbox)> = ds
            .objects_of(i)
            .filter(|&o| !ds.objects.crowd[o])
            .map(|o| (ds.objects.category[o], ds.objects.bbox[o]))
            .collect();
        f(
            pixels,
            covering(&objects, info.width as f32, info.height as f32, side),
        )?;
        images += 1;
    }
    Ok((images, ds.categories.len()))
}

/// Per patch of a `side × side` grid over a `w × h` scene (row-major): the
/// object (category, box as left, top, right, bottom in 0–1 of the scene)
/// covering the largest part of the patch, when that part exceeds a
/// quarter; `None` for background.
pub(crate) fn covering(
    objects: &[(u32, Bbox)],
    w: f32,
    h: f32,
    side: usize,
) -> Vec<Option<(u32, [f32; 4])>> {
    let s = side as f32;
    (0..side * side)
        .map(|t| {
            let (r, c) = ((t / side) as f32, (t % side) as f32);
            let patch = Bbox::new(c / s * w, r / s * h, (c + 1.0) / s * w, (r + 1.0) / s * h);
            objects
                .iter()
                .map(|(k, b)| (b.intersection(patch).area() / patch.area(), k, b))
                .max_by(|a, b| a.0.total_cmp(&b.0))
                .filter(|(cover, _, _)| *cover > OBJECT_COVER)
                .map(|(_, &k, b)| (k, [b.x1 / w, b.y1 / h, b.x2 / w, b.y2 / h]))
        })
        .collect()
}

fn dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// The `values` whose `mask` entry is `want`.
fn masked(values: &[f64], mask: &[bool], want: bool) -> Vec<f64> {
    values
        .iter()
        .zip(mask)
        .filter(|(_, &m)| m == want)
        .map(|(x, _)| *x)
        .collect()
}

/// The `q` quantile (nearest rank) of non-empty `v` (sorted in place).
fn quantile(v: &mut [f64], q: f64) -> f64 {
    v.sort_by(f64::total_cmp);
    let i = ((v.len() - 1) as f64 * q).round() as usize;
    v[i]
}

/// Ridge least squares for several targets at once: `w = (XᵀX + λI)⁻¹
/// Xᵀt` with a tiny λ (1e-6 of the mean diagonal) that only guards against
/// constant features, by Cholesky.
fn least_squares(x: &[Vec<f64>], targets: &[Vec<f64>]) -> Result<Vec<Vec<f64>>> {
    let n = x[0].len();
    let mut a = vec![0f64; n * n];
    let mut b = vec![vec![0f64; n]; targets.len()];
    for (row, xi) in x.iter().enumerate() {
        for i in 0..n {
            let xi_i = xi[i];
            for j in 0..=i {
                a[i * n + j] += xi_i * xi[j];
            }
            for (bt, t) in b.iter_mut().zip(targets) {
                bt[i] += xi_i * t[row];
            }
        }
    }
    let ridge = 1e-6 * (0..n).map(|i| a[i * n + i]).sum::<f64>() / n as f64;
    for i in 0..n {
        a[i * n + i] += ridge;
    }
    // Cholesky: a = L Lᵀ (L in the lower triangle).
    for j in 0..n {
        let mut d = a[j * n + j];
        for k in 0..j {
            d -= a[j * n + k] * a[j * n + k];
        }
        anyhow::ensure!(
            d > 0.0,
            "the tower's features are degenerate (not positive definite)"
        );
        let d = d.sqrt();
        a[j * n + j] = d;
        for i in j + 1..n {
            let mut s = a[i * n + j];
            for k in 0..j {
                s -= a[i * n + k] * a[j * n + k];
            }
            a[i * n + j] = s / d;
        }
    }
    Ok(b.into_iter()
        .map(|mut y| {
            for i in 0..n {
                let s: f64 = (0..i).map(|k| a[i * n + k] * y[k]).sum();
                y[i] = (y[i] - s) / a[i * n + i];
            }
            for i in (0..n).rev() {
                let s: f64 = (i + 1..n).map(|k| a[k * n + i] * y[k]).sum();
                y[i] = (y[i] - s) / a[i * n + i];
            }
            y
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn least_squares_recovers_an_exact_linear_map() {
        let x: Vec<Vec<f64>> = (0..50)
            .map(|i| {
                let f = i as f64;
                vec![f.sin(), (0.3 * f).cos(), 0.1 * f, 1.0]
            })
            .collect();
        let truth = [
            [1.0, -2.0, 0.5, 3.0],
            [0.0, 1.0, 0.0, -1.0],
            [2.0, 0.0, 0.0, 0.0],
        ];
        let t: Vec<Vec<f64>> = truth
            .iter()
            .map(|w| x.iter().map(|r| dot(r, w)).collect())
            .collect();
        let got = least_squares(&x, &t).unwrap();
        for (g, w) in got.iter().zip(&truth) {
            for (a, b) in g.iter().zip(w) {
                assert!((a - b).abs() < 1e-4, "{g:?} vs {w:?}");
            }
        }
    }

    #[test]
    fn quantiles_of_the_masked_values() {
        let v = [5.0, 1.0, 2.0, 9.0, 3.0];
        let m = [true, false, false, true, false];
        let (mut yes, mut no) = (masked(&v, &m, true), masked(&v, &m, false));
        assert_eq!(yes, [5.0, 9.0]);
        assert_eq!(quantile(&mut no, 0.0), 1.0);
        assert_eq!(quantile(&mut no, 1.0), 3.0);
        assert_eq!(quantile(&mut yes, 0.5), 9.0);
    }
}
