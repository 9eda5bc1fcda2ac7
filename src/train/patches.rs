//! Per-patch supervised pretraining of a LLaVA's vision tower: every image
//! token learns which object covers its patch (category, or background)
//! and that object's box.
//!
//! Why. A tiny LLaVA trained from scratch answers REC questions by
//! attending to the image tokens of the named object and reading its box
//! off them. Both need the tokens to say it: a frozen random tower tells
//! colours apart per patch (a linear probe: 94.5 %) but hardly shapes
//! (38 %, chance 25 %), and the trained tiny CLIP and OWLv2 towers keep no
//! absolute position (README, "The experiment"). Training the tower
//! directly on what each token should carry, with the selected feature
//! layer read by a linear head, gives features in which category and box
//! are linear, which is what the LLaVA's attention and projector read.
//!
//! What. The features are the LLaVA's own (`Llava::vision_features`: the
//! configured hidden layer, CLS dropped), one per patch. A linear head maps
//! each to `classes` logits (cross-entropy against the covering object's
//! category, class 0 for background) and 4 edge logits (sigmoid, L1 against
//! the covering object's left, top, right, bottom in 0–1 of the image, on
//! object patches only). The head is thrown away; the tower's weights are
//! what is kept. AdamW is the trainer's, with linear warmup and cosine
//! decay, gradients clipped at norm 1.

use std::time::Instant;

use candle_core::{DType, Device, Tensor, Var, D};

use crate::core::rng::SplitMix64;
use crate::core::runs::config::LrSchedule;
use crate::model::Llava;
use crate::train::data::DataOrder;
use crate::train::schedule::clip_grad_norm;
use crate::train::trainer::adamw::AdamW;
use crate::train::trainer::{ensure_finite_loss, Result, TrainError};

/// One training image with its per-patch targets.
#[derive(Clone, Debug)]
pub struct PatchExample {
    /// Pixel values `(3, S, S)` as the model's processor makes them.
    pub pixels: Tensor,
    /// Per patch (row-major): the covering object's class, 0 = background.
    pub class: Vec<u32>,
    /// Per patch: the covering object's box (left, top, right, bottom in
    /// 0–1 of the image); ignored where `class` is 0.
    pub edges: Vec<[f32; 4]>,
}

/// Settings of a pretraining run.
#[derive(Clone, Debug, PartialEq)]
pub struct PatchConfig {
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
    /// Weight of the edges' L1 against the class cross-entropy.
    pub edge_weight: f64,
    /// Seed of the head's initial weights and the data order.
    pub seed: u64,
}

impl Default for PatchConfig {
    fn default() -> Self {
        Self {
            steps: 1000,
            batch: 32,
            lr: 5e-4,
            warmup: 50,
            weight_decay: 0.0,
            edge_weight: 5.0,
            seed: 0,
        }
    }
}

/// What one step measured.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct PatchStep {
    /// Step, 1-based.
    pub step: u64,
    /// `class + edge_weight × edges`.
    pub loss: f64,
    /// Mean cross-entropy of the patch classes.
    pub class: f64,
    /// Mean L1 of the edges on object patches.
    pub edges: f64,
    /// Seconds the step took.
    pub seconds: f64,
}

/// How well the features tell each patch's object apart, through the head.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct PatchEval {
    /// Object patches whose class is predicted exactly.
    pub object_accuracy: f64,
    /// Background patches predicted as background.
    pub background_accuracy: f64,
    /// Mean absolute error of the edges on object patches (0–1 units).
    pub edge_error: f64,
    /// Patches evaluated (all, then on objects).
    pub patches: (usize, usize),
}

/// The linear head on the tower's features: `classes` logits then 4 edge
/// logits per patch.
#[derive(Clone, Debug)]
pub struct PatchHead {
    w: Var,
    b: Var,
    classes: usize,
}

impl PatchHead {
    /// A head for `dim`-wide features, drawn from `seed` (uniform ±1/√dim,
    /// torch's `nn.Linear` range).
    pub fn new(dim: usize, classes: usize, seed: u64, device: &Device) -> Result<Self> {
        let mut rng = SplitMix64::for_stream(seed, 0x9a7c);
        let bound = 1.0 / (dim as f32).sqrt();
        let out = classes + 4;
        let w: Vec<f32> = (0..dim * out)
            .map(|_| rng.range_f32(-bound, bound))
            .collect();
        Ok(Self {
            w: Var::from_tensor(&Tensor::from_vec(w, (dim, out), device)?)?,
            b: Var::from_tensor(&Tensor::zeros(out, DType::F32, device)?)?,
            classes,
        })
    }

    /// `(class logits (n, classes), edges (n, 4) in 0–1)` for features
    /// `(n, dim)`.
    fn forward(&self, feats: &Tensor) -> candle_core::Result<(Tensor, Tensor)> {
        let out = feats
            .matmul(self.w.as_tensor())?
            .broadcast_add(self.b.as_tensor())?;
        let logits = out.narrow(1, 0, self.classes)?;
        let edges = candle_nn::ops::sigmoid(&out.narrow(1, self.classes, 4)?)?;
        Ok((logits, edges))
    }
}

/// The batch's features `(b·N, dim)` in f32, with the targets flattened:
/// classes `(b·N)`, edges `(b·N, 4)`, object mask `(b·N, 1)`.
fn batch(
    model: &Llava,
    examples: &[&PatchExample],
) -> Result<(Tensor, Tensor, Tensor, Tensor, usize)> {
    let device = model.device();
    let pixels = Tensor::stack(
        &examples
            .iter()
            .map(|e| e.pixels.clone())
            .collect::<Vec<_>>(),
        0,
    )?
    .to_dtype(model.dtype())?;
    let feats = model.vision_features(&pixels)?;
    let (b, n, dim) = feats.dims3()?;
    if examples
        .iter()
        .any(|e| e.class.len() != n || e.edges.len() != n)
    {
        return Err(TrainError::Config {
            field: "patches",
            message: format!("each example needs one target per image token ({n})"),
        });
    }
    let feats = feats.reshape((b * n, dim))?.to_dtype(DType::F32)?;
    let class: Vec<u32> = examples.iter().flat_map(|e| e.class.clone()).collect();
    let objects = class.iter().filter(|&&c| c > 0).count();
    let mask: Vec<f32> = class.iter().map(|&c| f32::from(u8::from(c > 0))).collect();
    let edges: Vec<f32> = examples
        .iter()
        .flat_map(|e| e.edges.iter().flatten().copied())
        .collect();
    Ok((
        feats,
        Tensor::from_vec(class, b * n, device)?,
        Tensor::from_vec(edges, (b * n, 4), device)?,
        Tensor::from_vec(mask, (b * n, 1), device)?,
        objects,
    ))
}

/// Trains the tower weights `vars` (name, var) of `model` and a fresh head
/// on `examples`; `progress` sees every step. Returns the steps and the
/// head (for [`evaluate`]).
pub fn train(
    model: &Llava,
    vars: Vec<(String, Var)>,
    examples: &[PatchExample],
    classes: usize,
    cfg: &PatchConfig,
    mut progress: impl FnMut(&PatchStep),
) -> Result<(Vec<PatchStep>, PatchHead)> {
    if examples.is_empty() || cfg.batch == 0 || classes < 2 {
        return Err(TrainError::Config {
            field: "batch",
            message: "patch pretraining needs examples, a batch of at least one and two classes"
                .into(),
        });
    }
    let schedule = LrSchedule {
        warmup_steps: cfg.warmup,
        total_steps: cfg.steps,
        peak_lr: cfg.lr,
        min_lr_ratio: 0.0,
    };
    schedule.validate()?;
    let dim = model.vision_feature_dim();
    let head = PatchHead::new(dim, classes, cfg.seed, model.device())?;
    let mut all = vars;
    all.push(("head.weight".into(), head.w.clone()));
    all.push(("head.bias".into(), head.b.clone()));
    let mut opt = AdamW::with_settings(all, 0.9, 0.999, 1e-8, cfg.weight_decay)?;
    let var_list = opt.var_list();
    let mut order = DataOrder::new(cfg.seed);
    let mut out = Vec::with_capacity(cfg.steps as usize);
    for step in 0..cfg.steps {
        let started = Instant::now();
        let idx = order.next_batch(examples.len(), cfg.batch);
        let chosen: Vec<&PatchExample> = idx.iter().map(|&i| &examples[i]).collect();
        let (feats, class_t, edges_t, mask, objects) = batch(model, &chosen)?;
        let (logits, edges) = head.forward(&feats)?;
        let class_loss = candle_nn::loss::cross_entropy(&logits, &class_t)?;
        let l1 = (edges - edges_t)?.abs()?.broadcast_mul(&mask)?.sum_all()?;
        let edge_loss = (l1 / (4.0 * objects.max(1) as f64))?;
        let loss = (&class_loss + (&edge_loss * cfg.edge_weight)?)?;
        let mut grads = loss.backward()?;
        clip_grad_norm(&mut grads, &var_list, 1.0)?;
        opt.step(&grads, schedule.lr_at(step))?;
        let scalar = |t: &Tensor| -> Result<f64> { Ok(f64::from(t.to_scalar::<f32>()?)) };
        let s = PatchStep {
            step: step + 1,
            loss: scalar(&loss)?,
            class: scalar(&class_loss)?,
            edges: scalar(&edge_loss)?,
            seconds: started.elapsed().as_secs_f64(),
        };
        ensure_finite_loss(s.step, s.loss)?;
        progress(&s);
        out.push(s);
    }
    Ok((out, head))
}

/// Class accuracy (objects, background) and edge error of `head` on the
/// features of `model` for `examples`, in batches of `batch`.
pub fn evaluate(
    model: &Llava,
    head: &PatchHead,
    examples: &[PatchExample],
    batch_size: usize,
) -> Result<PatchEval> {
    let (mut hit_obj, mut n_obj, mut hit_bg, mut n_bg, mut err) = (0usize, 0usize, 0usize, 0, 0.0);
    for part in examples.chunks(batch_size.max(1)) {
        let refs: Vec<&PatchExample> = part.iter().collect();
        let (feats, class_t, edges_t, _, _) = batch(model, &refs)?;
        let (logits, edges) = head.forward(&feats.detach())?;
        let pred: Vec<u32> = logits.argmax(D::Minus1)?.to_vec1()?;
        let truth: Vec<u32> = class_t.to_vec1()?;
        let edges: Vec<Vec<f32>> = edges.to_vec2()?;
        let edges_t: Vec<Vec<f32>> = edges_t.to_vec2()?;
        for (i, (&p, &t)) in pred.iter().zip(&truth).enumerate() {
            if t == 0 {
                n_bg += 1;
                hit_bg += usize::from(p == 0);
            } else {
                n_obj += 1;
                hit_obj += usize::from(p == t);
                err += edges[i]
                    .iter()
                    .zip(&edges_t[i])
                    .map(|(a, b)| f64::from((a - b).abs()))
                    .sum::<f64>()
                    / 4.0;
            }
        }
    }
    let ratio = |a: usize, b: usize| if b == 0 { 0.0 } else { a as f64 / b as f64 };
    Ok(PatchEval {
        object_accuracy: ratio(hit_obj, n_obj),
        background_accuracy: ratio(hit_bg, n_bg),
        edge_error: if n_obj == 0 { 0.0 } else { err / n_obj as f64 },
        patches: (n_obj + n_bg, n_obj),
    })
}
