//! Training an OWLv2 detector on boxes with phrases, as OWL-ViT trains its
//! heads (Minderer et al. 2022, "Simple Open-Vocabulary Object Detection
//! with Vision Transformers", §3 and appendix A; DETR's set loss, Carion et
//! al. 2020, §3.1):
//!
//! - **Queries.** Each step draws a set of text queries (`QueryBatch`):
//!   phrasings of the categories ("a red circle", "the red circles", …) and
//!   broader ones ("a circle"), each with the categories it describes. Every
//!   image of the batch is scored against every query, so the other
//!   categories are the negatives.
//! - **Matching.** Each ground-truth object is assigned one patch by the
//!   Hungarian method ([`crate::core::assignment`]) on DETR's cost: −2 × the
//!   object's class probability (mean over the queries that describe it) +
//!   5 × L1 + 2 × (1 − GIoU) between the patch's box and the object's.
//! - **Losses**, summed over the batch and divided by its number of
//!   objects: sigmoid focal loss (α 0.25, γ 2; Lin et al. 2017) on every
//!   patch × query logit, the matched patches' targets being 1 for each
//!   query that describes their object; 5 × L1 and 2 × (1 − GIoU) on the
//!   matched boxes (`cx, cy, w, h` in 0–1); the focal loss on the
//!   objectness logit, 1 for matched patches.
//! - **Augmentation**: a horizontal flip with probability ½ (the demo's
//!   shapes read the same mirrored).
//!
//! Every weight of the model trains (backbone included), with the trainer's
//! AdamW, linear warmup and cosine decay, gradients clipped at norm 1.

use std::time::Instant;

use candle_core::{DType, Device, Tensor, Var};
use image::{DynamicImage, RgbImage};

use crate::core::assignment::min_cost_assignment;
use crate::core::rng::SplitMix64;
use crate::core::runs::config::LrSchedule;
use crate::model::owlv2::Owlv2;
use crate::model::ImageProcessor;
use crate::train::data::DataOrder;
use crate::train::schedule::clip_grad_norm;
use crate::train::trainer::adamw::AdamW;
use crate::train::trainer::{ensure_finite_loss, Result, TrainError};

/// One training image: a square (already at the model's input size) and
/// its objects.
#[derive(Clone, Debug)]
pub struct DetectionExample {
    /// The image, square, at the model's input size.
    pub image: RgbImage,
    /// `(class, [cx, cy, w, h])`, box in 0–1 of the square.
    pub objects: Vec<(usize, [f32; 4])>,
}

/// The text queries of one step.
#[derive(Clone, Debug, Default)]
pub struct QueryBatch {
    /// Token ids of each query (ending with the end-of-text token).
    pub ids: Vec<Vec<u32>>,
    /// `covers[k][c]`: query `k` describes class `c`.
    pub covers: Vec<Vec<bool>>,
}

/// Settings of a detector run.
#[derive(Clone, Debug, PartialEq)]
pub struct DetectionConfig {
    /// Optimizer steps.
    pub steps: u64,
    /// Images per step.
    pub batch: usize,
    /// Peak learning rate.
    pub lr: f64,
    /// Linear warmup steps.
    pub warmup: u64,
    /// AdamW weight decay.
    pub weight_decay: f64,
    /// Seed of the data order, flips and queries.
    pub seed: u64,
}

/// What one step measured (each loss term before its weight, per object).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct DetectionStep {
    /// Step, 1-based.
    pub step: u64,
    /// The weighted sum.
    pub loss: f64,
    /// Focal loss of the class logits.
    pub class: f64,
    /// L1 of the matched boxes.
    pub l1: f64,
    /// 1 − GIoU of the matched boxes.
    pub giou: f64,
    /// Focal loss of the objectness logits.
    pub objectness: f64,
    /// Seconds the step took.
    pub seconds: f64,
}

const W_CLASS: f64 = 2.0;
const W_L1: f64 = 5.0;
const W_GIOU: f64 = 2.0;
const W_OBJECTNESS: f64 = 1.0;
const FOCAL_ALPHA: f64 = 0.25;

/// Sigmoid focal loss (γ = 2) of `logits` against 0/1 `targets`, summed.
fn focal_loss(logits: &Tensor, targets: &Tensor) -> candle_core::Result<Tensor> {
    let p = candle_nn::ops::sigmoid(logits)?;
    // Binary cross-entropy with logits, stable: max(x, 0) − x·t + ln(1 + e^−|x|).
    let ce =
        ((logits.relu()? - (logits * targets)?)? + (logits.abs()?.neg()?.exp()? + 1.0)?.log()?)?;
    let one_minus_t = targets.affine(-1.0, 1.0)?;
    let p_t = ((&p * targets)? + (p.affine(-1.0, 1.0)? * &one_minus_t)?)?;
    let alpha_t = targets.affine(2.0 * FOCAL_ALPHA - 1.0, 1.0 - FOCAL_ALPHA)?;
    (ce * p_t.affine(-1.0, 1.0)?.sqr()?)?
        .mul(&alpha_t)?
        .sum_all()
}

/// `(x1, y1, x2, y2)` columns of `(n, 4)` `cx, cy, w, h` boxes.
fn corners(b: &Tensor) -> candle_core::Result<[Tensor; 4]> {
    let col = |i| b.narrow(1, i, 1);
    let (cx, cy, w, h) = (col(0)?, col(1)?, col(2)?, col(3)?);
    Ok([
        (&cx - (&w * 0.5)?)?,
        (&cy - (&h * 0.5)?)?,
        (&cx + (&w * 0.5)?)?,
        (&cy + (&h * 0.5)?)?,
    ])
}

/// `Σ (1 − GIoU)` of matched `(n, 4)` box pairs (Rezatofighi et al. 2019).
fn giou_loss(pred: &Tensor, target: &Tensor) -> candle_core::Result<Tensor> {
    let [ax1, ay1, ax2, ay2] = corners(pred)?;
    let [bx1, by1, bx2, by2] = corners(target)?;
    let iw = (ax2.minimum(&bx2)? - ax1.maximum(&bx1)?)?.relu()?;
    let ih = (ay2.minimum(&by2)? - ay1.maximum(&by1)?)?.relu()?;
    let inter = (iw * ih)?;
    let area_a = ((&ax2 - &ax1)? * (&ay2 - &ay1)?)?;
    let area_b = ((&bx2 - &bx1)? * (&by2 - &by1)?)?;
    let union = ((area_a + area_b)? - &inter)?;
    let iou = (&inter / (&union + 1e-7)?)?;
    let ew = (ax2.maximum(&bx2)? - ax1.minimum(&bx1)?)?;
    let eh = (ay2.maximum(&by2)? - ay1.minimum(&by1)?)?;
    let enclosing = (ew * eh)?;
    let giou = (iou - ((&enclosing - &union)? / (&enclosing + 1e-7)?)?)?;
    giou.affine(-1.0, 1.0)?.sum_all()
}

/// GIoU of two `cx, cy, w, h` boxes (the matching cost's, on plain floats).
fn giou(a: [f32; 4], b: [f32; 4]) -> f32 {
    let c = |x: [f32; 4]| {
        [
            x[0] - 0.5 * x[2],
            x[1] - 0.5 * x[3],
            x[0] + 0.5 * x[2],
            x[1] + 0.5 * x[3],
        ]
    };
    let (a, b) = (c(a), c(b));
    let iw = (a[2].min(b[2]) - a[0].max(b[0])).max(0.0);
    let ih = (a[3].min(b[3]) - a[1].max(b[1])).max(0.0);
    let inter = iw * ih;
    let union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter;
    let enclosing = (a[2].max(b[2]) - a[0].min(b[0])) * (a[3].max(b[3]) - a[1].min(b[1]));
    inter / (union + 1e-7) - (enclosing - union) / (enclosing + 1e-7)
}

/// For each object of one image, the patch assigned to it (DETR's cost).
/// `probs[p][k]`: patch × query probabilities; `boxes[p]`: the patch's box.
fn assign(
    objects: &[(usize, [f32; 4])],
    probs: &[Vec<f32>],
    boxes: &[Vec<f32>],
    covers: &[Vec<bool>],
) -> Vec<usize> {
    let patches = boxes.len();
    if objects.is_empty() || objects.len() > patches {
        return Vec::new();
    }
    let mut cost = Vec::with_capacity(objects.len() * patches);
    for (class, target) in objects {
        let describing: Vec<usize> = (0..covers.len())
            .filter(|&k| covers[k].get(*class).copied().unwrap_or(false))
            .collect();
        for p in 0..patches {
            let b = [boxes[p][0], boxes[p][1], boxes[p][2], boxes[p][3]];
            let prob = if describing.is_empty() {
                0.0
            } else {
                describing.iter().map(|&k| probs[p][k]).sum::<f32>() / describing.len() as f32
            };
            let l1: f32 = (0..4).map(|i| (b[i] - target[i]).abs()).sum();
            cost.push(
                -(W_CLASS as f32) * prob
                    + W_L1 as f32 * l1
                    + W_GIOU as f32 * (1.0 - giou(b, *target)),
            );
        }
    }
    min_cost_assignment(&cost, objects.len(), patches).unwrap_or_default()
}

/// Pixel values `(b, 3, S, S)` of a batch, each flipped when `flips` says.
fn batch_pixels(
    processor: &ImageProcessor,
    examples: &[&DetectionExample],
    flips: &[bool],
    device: &Device,
) -> Result<Tensor> {
    let images: Vec<DynamicImage> = examples
        .iter()
        .zip(flips)
        .map(|(e, &f)| {
            DynamicImage::ImageRgb8(if f {
                image::imageops::flip_horizontal(&e.image)
            } else {
                e.image.clone()
            })
        })
        .collect();
    Ok(processor.preprocess_batch(&images, device)?)
}

/// Trains `model`, whose trainable weights are `vars` (name, var), on
/// `examples`; `queries` draws each step's query set; `progress` sees
/// every step.
pub fn train(
    model: &Owlv2,
    vars: Vec<(String, Var)>,
    examples: &[DetectionExample],
    processor: &ImageProcessor,
    mut queries: impl FnMut(&mut SplitMix64) -> QueryBatch,
    cfg: &DetectionConfig,
    mut progress: impl FnMut(&DetectionStep),
) -> Result<Vec<DetectionStep>> {
    if examples.is_empty() || cfg.batch == 0 {
        return Err(TrainError::Config {
            field: "batch",
            message: "detector training needs examples and a batch of at least one".into(),
        });
    }
    let schedule = LrSchedule {
        warmup_steps: cfg.warmup,
        total_steps: cfg.steps,
        peak_lr: cfg.lr,
        min_lr_ratio: 0.0,
    };
    schedule.validate()?;
    let mut opt = AdamW::with_settings(vars, 0.9, 0.999, 1e-8, cfg.weight_decay)?;
    let var_list = opt.var_list();
    let mut order = DataOrder::new(cfg.seed);
    let mut rng = SplitMix64::for_stream(cfg.seed, 0x0de7);
    let device = model.device().clone();
    let mut out = Vec::with_capacity(cfg.steps as usize);
    for step in 0..cfg.steps {
        let started = Instant::now();
        let idx = order.next_batch(examples.len(), cfg.batch);
        let batch: Vec<&DetectionExample> = idx.iter().map(|&i| &examples[i]).collect();
        let flips: Vec<bool> = batch.iter().map(|_| rng.below(2) == 1).collect();
        let objects: Vec<Vec<(usize, [f32; 4])>> = batch
            .iter()
            .zip(&flips)
            .map(|(e, &f)| {
                e.objects
                    .iter()
                    .map(|&(c, [cx, cy, w, h])| (c, [if f { 1.0 - cx } else { cx }, cy, w, h]))
                    .collect()
            })
            .collect();
        let q = queries(&mut rng);
        let pixels = batch_pixels(processor, &batch, &flips, &device)?;
        let t = q.ids.iter().map(Vec::len).max().unwrap_or(1);
        let mut flat = Vec::with_capacity(q.ids.len() * t);
        for r in &q.ids {
            let pad = r.last().copied().unwrap_or(0);
            flat.extend(r.iter().copied());
            flat.extend(std::iter::repeat_n(pad, t - r.len()));
        }
        let ids = Tensor::from_vec(flat, (q.ids.len(), t), &device)?;
        let feats = model.image_features(&pixels)?;
        let query = model.query_embeds(&ids)?;
        let det = model.detect(&feats, &query)?;
        let (b, p, nq) = det.logits.dims3()?;
        // Matching, on detached values.
        let probs: Vec<Vec<Vec<f32>>> = candle_nn::ops::sigmoid(&det.logits.detach())?
            .to_dtype(DType::F32)?
            .to_vec3()?;
        let boxes: Vec<Vec<Vec<f32>>> = det.boxes.detach().to_dtype(DType::F32)?.to_vec3()?;
        let mut class_t = vec![0f32; b * p * nq];
        let mut obj_t = vec![0f32; b * p];
        let mut matched: Vec<u32> = Vec::new();
        let mut target_boxes: Vec<f32> = Vec::new();
        for i in 0..b {
            let a = assign(&objects[i], &probs[i], &boxes[i], &q.covers);
            for (g, &patch) in a.iter().enumerate() {
                let (class, target) = objects[i][g];
                for k in 0..nq {
                    if q.covers[k].get(class).copied().unwrap_or(false) {
                        class_t[(i * p + patch) * nq + k] = 1.0;
                    }
                }
                obj_t[i * p + patch] = 1.0;
                matched.push((i * p + patch) as u32);
                target_boxes.extend(target);
            }
        }
        let n = matched.len().max(1) as f64;
        let class_t =
            Tensor::from_vec(class_t, (b, p, nq), &device)?.to_dtype(det.logits.dtype())?;
        let obj_t = Tensor::from_vec(obj_t, (b, p), &device)?.to_dtype(det.logits.dtype())?;
        let class_loss = (focal_loss(&det.logits, &class_t)? / n)?;
        let obj_loss = (focal_loss(&det.objectness, &obj_t)? / n)?;
        let mut loss = ((&class_loss * W_CLASS)? + (&obj_loss * W_OBJECTNESS)?)?;
        let (mut l1v, mut giouv) = (0.0, 0.0);
        if !matched.is_empty() {
            let m = matched.len();
            let at = Tensor::from_vec(matched, m, &device)?;
            let pred = det.boxes.reshape((b * p, 4))?.index_select(&at, 0)?;
            let target = Tensor::from_vec(target_boxes, (m, 4), &device)?.to_dtype(pred.dtype())?;
            let l1 = ((&pred - &target)?.abs()?.sum_all()? / n)?;
            let gl = (giou_loss(&pred, &target)? / n)?;
            l1v = f64::from(l1.to_dtype(DType::F32)?.to_scalar::<f32>()?);
            giouv = f64::from(gl.to_dtype(DType::F32)?.to_scalar::<f32>()?);
            loss = ((loss + (l1 * W_L1)?)? + (gl * W_GIOU)?)?;
        }
        let mut grads = loss.backward()?;
        clip_grad_norm(&mut grads, &var_list, 1.0)?;
        opt.step(&grads, schedule.lr_at(step))?;
        let scalar = |t: &Tensor| -> Result<f64> {
            Ok(f64::from(t.to_dtype(DType::F32)?.to_scalar::<f32>()?))
        };
        let s = DetectionStep {
            step: step + 1,
            loss: scalar(&loss)?,
            class: scalar(&class_loss)?,
            l1: l1v,
            giou: giouv,
            objectness: scalar(&obj_loss)?,
            seconds: started.elapsed().as_secs_f64(),
        };
        ensure_finite_loss(s.step, s.loss)?;
        progress(&s);
        out.push(s);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scalar(t: Tensor) -> f32 {
        t.to_scalar::<f32>().unwrap()
    }

    #[test]
    fn focal_loss_matches_its_formula() {
        let x = Tensor::new(&[2.0f32, -1.0, 0.5], &Device::Cpu).unwrap();
        let t = Tensor::new(&[1.0f32, 0.0, 0.0], &Device::Cpu).unwrap();
        let got = scalar(focal_loss(&x, &t).unwrap());
        let want: f64 = [(2.0f64, 1.0f64), (-1.0, 0.0), (0.5, 0.0)]
            .iter()
            .map(|&(x, t)| {
                let p = 1.0 / (1.0 + (-x).exp());
                let ce = -(t * p.ln() + (1.0 - t) * (1.0 - p).ln());
                let pt = p * t + (1.0 - p) * (1.0 - t);
                let at = FOCAL_ALPHA * t + (1.0 - FOCAL_ALPHA) * (1.0 - t);
                at * ce * (1.0 - pt).powi(2)
            })
            .sum();
        assert!((f64::from(got) - want).abs() < 1e-5, "{got} vs {want}");
    }

    #[test]
    fn giou_of_boxes() {
        let same = [0.5, 0.5, 0.2, 0.2];
        assert!((giou(same, same) - 1.0).abs() < 1e-5);
        // Disjoint, side by side: IoU 0, enclosing 0.4×0.2 = 0.08, union
        // 0.08 → GIoU 0.
        let a = [0.3, 0.5, 0.2, 0.2];
        let b = [0.5, 0.5, 0.2, 0.2];
        assert!(giou(a, b).abs() < 1e-5);
        let p = Tensor::new(
            &[[0.3f32, 0.5, 0.2, 0.2], [0.5, 0.5, 0.2, 0.2]],
            &Device::Cpu,
        )
        .unwrap();
        let t = Tensor::new(
            &[[0.5f32, 0.5, 0.2, 0.2], [0.5, 0.5, 0.2, 0.2]],
            &Device::Cpu,
        )
        .unwrap();
        // 1 − 0 plus 1 − 1.
        assert!((scalar(giou_loss(&p, &t).unwrap()) - 1.0).abs() < 1e-5);
    }

    /// A few steps on the tiny random parity checkpoint and one image with
    /// two objects: the loss falls and the matched boxes move toward the
    /// targets.
    #[test]
    fn training_fits_one_image() {
        use candle_nn::VarBuilder;
        use std::collections::HashMap;
        let dir =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tiny-owlv2");
        let cfg: crate::model::ClipConfig =
            serde_json::from_str(&std::fs::read_to_string(dir.join("config.json")).unwrap())
                .unwrap();
        let weights =
            candle_core::safetensors::load(dir.join("model.safetensors"), &Device::Cpu).unwrap();
        let vars: Vec<(String, Var)> = weights
            .iter()
            .map(|(n, t)| (n.clone(), Var::from_tensor(t).unwrap()))
            .collect();
        let map: HashMap<String, Tensor> = vars
            .iter()
            .map(|(n, v)| (n.clone(), v.as_tensor().clone()))
            .collect();
        let model = Owlv2::new(
            VarBuilder::from_tensors(map, DType::F32, &Device::Cpu),
            &cfg,
        )
        .unwrap();
        let image = RgbImage::from_fn(64, 64, |x, y| {
            if (8..24).contains(&x) && (8..24).contains(&y) {
                image::Rgb([220, 30, 30])
            } else if (36..60).contains(&x) && (30..50).contains(&y) {
                image::Rgb([30, 30, 220])
            } else {
                image::Rgb([235, 235, 230])
            }
        });
        let examples = vec![DetectionExample {
            image,
            objects: vec![
                (0, [0.25, 0.25, 0.25, 0.25]),
                (1, [0.75, 0.625, 0.375, 0.3125]),
            ],
        }];
        let processor = ImageProcessor::for_vision(&cfg.vision_config);
        let queries = |_: &mut SplitMix64| QueryBatch {
            ids: vec![vec![94, 5, 95], vec![94, 60, 61, 95]],
            covers: vec![vec![true, false], vec![false, true]],
        };
        let cfg_train = DetectionConfig {
            steps: 40,
            batch: 1,
            lr: 3e-3,
            warmup: 0,
            weight_decay: 0.0,
            seed: 1,
        };
        let steps = train(
            &model,
            vars,
            &examples,
            &processor,
            queries,
            &cfg_train,
            |_| {},
        )
        .unwrap();
        let first = steps[..3].iter().map(|s| s.loss).sum::<f64>() / 3.0;
        let last = steps[37..].iter().map(|s| s.loss).sum::<f64>() / 3.0;
        assert!(last < 0.5 * first, "loss {first} → {last}");
        assert!(
            steps[39].l1 < steps[0].l1,
            "L1 {} → {}",
            steps[0].l1,
            steps[39].l1
        );
    }

    #[test]
    fn each_object_gets_its_own_nearest_patch() {
        // Three patches; two objects both nearest to patch 0, the second
        // also close to patch 2.
        let boxes = vec![
            vec![0.2, 0.2, 0.1, 0.1],
            vec![0.8, 0.8, 0.1, 0.1],
            vec![0.3, 0.2, 0.1, 0.1],
        ];
        let probs = vec![vec![0.5], vec![0.5], vec![0.5]];
        let covers = vec![vec![true]];
        let objects = [(0, [0.2, 0.2, 0.1, 0.1]), (0, [0.26, 0.2, 0.1, 0.1])];
        assert_eq!(assign(&objects, &probs, &boxes, &covers), vec![0, 2]);
    }
}
