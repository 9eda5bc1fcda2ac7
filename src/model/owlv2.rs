//! OWLv2 (`Owlv2ForObjectDetection`, Minderer et al. 2023, "Scaling
//! Open-Vocabulary Object Detection"): a CLIP backbone whose every patch
//! token predicts a box, a class embedding matched against text queries,
//! and an objectness score.
//!
//! Follows transformers' `models/owlv2/modeling_owlv2.py`:
//! - image features: the vision tower's last hidden state, `post_layernorm`
//!   on every token, each patch token multiplied by the class token, then
//!   the detector's own `layer_norm`: `(P, hidden)` for `P` patches;
//! - queries: the text tower pooled at the row's highest id (OWL's rule),
//!   then `text_projection`;
//! - class head: `dense0` of the features, both sides L2-normalised (+1e-6),
//!   their dot products, then `(logit + logit_shift(f)) · (elu(logit_scale(f)) + 1)`;
//! - box head: `dense0 → GELU → dense1 → GELU → dense2`, plus the box bias
//!   (each patch's grid position and size in inverse-sigmoid space), then a
//!   sigmoid: `(cx, cy, w, h)` in 0–1 of the (square) input;
//! - objectness head: the same MLP shape with one output.
//!
//! Checkpoint names are the hub's (`owlv2.vision_model.*` with
//! `pre_layernorm`, `owlv2.text_model.*`, `owlv2.text_projection`,
//! `class_head.*`, `box_head.*`, `objectness_head.*`, `layer_norm.*`), so
//! `google/owlv2-base-patch16-ensemble` loads from a folder or the hub.
//! `tests/owlv2_parity.rs` checks logits, boxes and objectness against
//! transformers on a tiny random checkpoint
//! (`scripts/parity/make_owlv2_fixtures.py`).

use std::path::Path;

use candle_core::{DType, Device, Tensor, D};
use candle_nn::VarBuilder;

use super::clip::{ClipVisionTower, Linear, Norm};
use super::clip_model::{ClipTextTower, TextPooling};
use super::config::ClipConfig;
use super::hub::weight_files;
use super::lora::linear;
use super::{ModelError, Result};

/// A three-layer MLP head (`Owlv2BoxPredictionHead`).
#[derive(Debug, Clone)]
struct Head {
    dense0: Linear,
    dense1: Linear,
    dense2: Linear,
}

impl Head {
    fn new(vb: VarBuilder, width: usize, out: usize) -> candle_core::Result<Self> {
        Ok(Self {
            dense0: Linear::new(vb.pp("dense0"), width, width)?,
            dense1: Linear::new(vb.pp("dense1"), width, width)?,
            dense2: Linear::new(vb.pp("dense2"), width, out)?,
        })
    }

    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let x = self.dense0.forward(x)?.gelu_erf()?;
        let x = self.dense1.forward(&x)?.gelu_erf()?;
        self.dense2.forward(&x)
    }
}

/// What the detector says for its images and queries (shapes for one
/// image; a batch adds a leading axis to each).
#[derive(Debug, Clone)]
pub struct Detections {
    /// Class logits `(P, q)`: patch × query.
    pub logits: Tensor,
    /// Boxes `(P, 4)`, `(cx, cy, w, h)` in 0–1 of the input square.
    pub boxes: Tensor,
    /// Objectness logits `(P,)`.
    pub objectness: Tensor,
}

/// `Owlv2ForObjectDetection`.
#[derive(Debug, Clone)]
pub struct Owlv2 {
    vision: ClipVisionTower,
    text: ClipTextTower,
    text_projection: Tensor,
    layer_norm: Norm,
    class_dense0: Linear,
    logit_shift: Linear,
    logit_scale: Linear,
    box_head: Head,
    objectness_head: Head,
    box_bias: Tensor,
    cfg: ClipConfig,
}

/// OWLv2's box bias: per patch, the inverse sigmoid of its grid corner
/// `(x, y)` (1-based, over the grid) and of the patch size, so that a zero
/// box head output is a patch-sized box at the patch.
fn box_bias(grid: usize, device: &Device) -> candle_core::Result<Tensor> {
    let logit = |v: f32| (v + 1e-4).ln() - (1.0 - v + 1e-4).ln();
    let size = logit(1.0 / grid as f32);
    let mut out = Vec::with_capacity(grid * grid * 4);
    for y in 1..=grid {
        for x in 1..=grid {
            let cx = (x as f32 / grid as f32).clamp(0.0, 1.0);
            let cy = (y as f32 / grid as f32).clamp(0.0, 1.0);
            out.extend([logit(cx), logit(cy), size, size]);
        }
    }
    Tensor::from_vec(out, (grid * grid, 4), device)
}

/// [`ClipConfig::validate`], and OWL's own constraint: the class head
/// compares the image features (projected to the text width) with the
/// query embeddings (the projection width), so the two widths agree.
fn validate(cfg: &ClipConfig) -> std::result::Result<(), String> {
    cfg.validate()?;
    if cfg.projection_dim != cfg.text_config.hidden_size {
        return Err(format!(
            "projection_dim {} differs from text_config.hidden_size {}: OWLv2's class head needs them equal",
            cfg.projection_dim, cfg.text_config.hidden_size
        ));
    }
    Ok(())
}

fn normalise(x: &Tensor) -> candle_core::Result<Tensor> {
    let norm = (x.sqr()?.sum_keepdim(D::Minus1)?.sqrt()? + 1e-6)?;
    x.broadcast_div(&norm)
}

impl Owlv2 {
    /// Builds the detector from a root `vb` (no prefix) holding the hub's
    /// tensor names.
    pub fn new(vb: VarBuilder, cfg: &ClipConfig) -> candle_core::Result<Self> {
        let v = &cfg.vision_config;
        let t = &cfg.text_config;
        // OWL's vision transformer says `pre_layernorm` where CLIP's
        // checkpoints say `pre_layrnorm`.
        let vb = vb.rename_f(|name: &str| {
            name.replacen("vision_model.pre_layrnorm", "vision_model.pre_layernorm", 1)
        });
        let owl = vb.pp("owlv2");
        let class = vb.pp("class_head");
        Ok(Self {
            vision: ClipVisionTower::new(owl.pp("vision_model"), v)?,
            text: ClipTextTower::with_pooling(owl.pp("text_model"), t, TextPooling::HighestId)?,
            text_projection: owl
                .pp("text_projection")
                .get((cfg.projection_dim, t.hidden_size), "weight")?,
            layer_norm: Norm::new(vb.pp("layer_norm"), v.hidden_size, v.layer_norm_eps)?,
            class_dense0: Linear::new(class.pp("dense0"), v.hidden_size, t.hidden_size)?,
            logit_shift: Linear::new(class.pp("logit_shift"), v.hidden_size, 1)?,
            logit_scale: Linear::new(class.pp("logit_scale"), v.hidden_size, 1)?,
            box_head: Head::new(vb.pp("box_head"), v.hidden_size, 4)?,
            objectness_head: Head::new(vb.pp("objectness_head"), v.hidden_size, 1)?,
            box_bias: box_bias(v.patches_per_side(), vb.device())?,
            cfg: cfg.clone(),
        })
    }

    /// Loads an `Owlv2ForObjectDetection` folder onto `device` in `dtype`.
    pub fn load(dir: &Path, device: &Device, dtype: DType) -> Result<Self> {
        if !dir.is_dir() {
            return Err(ModelError::MissingPath {
                path: dir.to_path_buf(),
                what: "OWLv2 model folder",
            });
        }
        let cfg: ClipConfig = super::config::read_config_file(&dir.join("config.json"), validate)?;
        let err = |source| ModelError::Weights {
            path: dir.to_path_buf(),
            source,
        };
        let files = weight_files(dir)?;
        // SAFETY: the files are memory-mapped read-only while the model
        // loads (tensors are copied out of the map).
        let vb =
            unsafe { VarBuilder::from_mmaped_safetensors(&files, dtype, device) }.map_err(err)?;
        Self::new(vb, &cfg).map_err(err)
    }

    /// The config.
    pub fn config(&self) -> &ClipConfig {
        &self.cfg
    }

    /// The device of the weights.
    pub fn device(&self) -> &Device {
        self.text_projection.device()
    }

    /// Per-patch image features `(b, P, hidden)` for pixel values
    /// `(b, 3, S, S)`.
    pub fn image_features(&self, pixel_values: &Tensor) -> Result<Tensor> {
        let h = self.vision.last_hidden_normed(pixel_values)?;
        let t = h.dim(1)?;
        let cls = h.narrow(1, 0, 1)?;
        let patches = h.narrow(1, 1, t - 1)?.broadcast_mul(&cls)?;
        Ok(self.layer_norm.forward(&patches)?)
    }

    /// Query embeddings `(q, projection)` for token ids `(q, t)`
    /// (unnormalised: the class head normalises).
    pub fn query_embeds(&self, input_ids: &Tensor) -> Result<Tensor> {
        let pooled = self.text.pooled(input_ids)?;
        Ok(linear(&pooled, &self.text_projection, None)?)
    }

    /// Logits, boxes and objectness of image features `(P, hidden)` (one
    /// image) or `(b, P, hidden)` against queries `(q, projection)`; the
    /// outputs carry the same leading axes (`(P, q)` or `(b, P, q)`, …).
    pub fn detect(&self, features: &Tensor, queries: &Tensor) -> Result<Detections> {
        let class = normalise(&self.class_dense0.forward(features)?)?;
        let q = normalise(queries)?;
        let logits = class.broadcast_matmul(&q.t()?)?;
        let shift = self.logit_shift.forward(features)?;
        let scale = (self.logit_scale.forward(features)?.elu(1.0)? + 1.0)?;
        let logits = logits.broadcast_add(&shift)?.broadcast_mul(&scale)?;
        let boxes = candle_nn::ops::sigmoid(
            &self
                .box_head
                .forward(features)?
                .broadcast_add(&self.box_bias.to_dtype(features.dtype())?)?,
        )?;
        let objectness = self.objectness_head.forward(features)?.squeeze(D::Minus1)?;
        Ok(Detections {
            logits,
            boxes,
            objectness,
        })
    }
}

/// Fresh weights for an `Owlv2ForObjectDetection` of `cfg` under the hub's
/// names, drawn from `seed` as transformers initialises it (normals σ 0.02,
/// norms 1, biases 0), plus the `Owlv2Model` tensors the detector does not
/// read (`visual_projection`, `logit_scale`) so that transformers loads the
/// folder without filling anything in. For the tiny detector, whose
/// backbone is then replaced by a trained CLIP's ([`from_clip_weights`]).
pub fn random_weights(
    cfg: &ClipConfig,
    seed: u64,
    device: &Device,
) -> Result<std::collections::HashMap<String, Tensor>> {
    let shapes = super::init::recorded_shapes(device, |vb| Owlv2::new(vb, cfg).map(|_| ()))?;
    let class_std = (cfg.vision_config.hidden_size as f32).powf(-0.5);
    let mut out = super::init::default_init(shapes, seed, class_std, device, |_| None)?;
    let mut rng = crate::core::rng::SplitMix64::new(seed ^ 0x000b_1ec7);
    let (p, h) = (cfg.projection_dim, cfg.vision_config.hidden_size);
    let proj: Vec<f32> = (0..p * h)
        .map(|_| 0.02 * super::init::standard_normal(&mut rng))
        .collect();
    out.insert(
        "owlv2.visual_projection.weight".into(),
        Tensor::from_vec(proj, (p, h), device)?,
    );
    out.insert(
        "owlv2.logit_scale".into(),
        Tensor::new(cfg.logit_scale_init_value as f32, device)?,
    );
    Ok(out)
}

/// `weights` with every tensor a `CLIPModel` checkpoint also has replaced
/// by `clip`'s (`vision_model.*` → `owlv2.vision_model.*`, with OWL's
/// `pre_layernorm` spelling; `text_model.*`, `text_projection`,
/// `visual_projection`, `logit_scale` likewise): OWL-ViT starts its
/// detector from a contrastively trained CLIP (Minderer et al. 2022, §3).
/// The vision positions are resized when the detector's grid is finer
/// ([`resize_positions`]). Returns how many tensors were taken; any other
/// shape that differs is an error naming the tensor.
pub fn from_clip_weights(
    weights: &mut std::collections::HashMap<String, Tensor>,
    clip: &std::collections::HashMap<String, Tensor>,
) -> Result<usize> {
    let mut taken = 0;
    for (name, t) in clip {
        let owl = format!(
            "owlv2.{}",
            name.replacen("vision_model.pre_layrnorm", "vision_model.pre_layernorm", 1)
        );
        let Some(slot) = weights.get_mut(&owl) else {
            continue;
        };
        // A finer detector grid: the CLIP's positions resized to it.
        let t = &if name.ends_with("vision_model.embeddings.position_embedding.weight")
            && slot.dims() != t.dims()
        {
            let new_g = ((slot.dim(0)? - 1) as f64).sqrt().round() as usize;
            resize_positions(t, new_g)?
        } else {
            t.clone()
        };
        if slot.dims() != t.dims() {
            return Err(ModelError::Input(format!(
                "{name}: the CLIP's tensor is {:?}, the detector's {owl} is {:?}",
                t.dims(),
                slot.dims()
            )));
        }
        *slot = t.clone();
        taken += 1;
    }
    Ok(taken)
}

/// A vision tower's learned positions `(1 + g², hidden)` (class token
/// first, then a `g × g` grid) resized bilinearly to a `new_g × new_g`
/// grid (half-pixel centres, as `torch.nn.functional.interpolate(…,
/// mode="bilinear", align_corners=False)` samples): how a CLIP trained at
/// one input size starts a detector at a finer one (OWL-ViT fine-tunes
/// CLIP at a higher resolution the same way).
pub fn resize_positions(positions: &Tensor, new_g: usize) -> Result<Tensor> {
    let (n, h) = positions.dims2()?;
    let g = ((n - 1) as f64).sqrt().round() as usize;
    if g * g + 1 != n || new_g == 0 {
        return Err(ModelError::Input(format!(
            "position embedding of {n} rows is not a class token plus a square grid"
        )));
    }
    let rows: Vec<Vec<f32>> = positions.to_dtype(DType::F32)?.to_vec2()?;
    let mut out = Vec::with_capacity((1 + new_g * new_g) * h);
    out.extend_from_slice(&rows[0]);
    let src =
        |v: usize| ((v as f32 + 0.5) * g as f32 / new_g as f32 - 0.5).clamp(0.0, (g - 1) as f32);
    for y in 0..new_g {
        let fy = src(y);
        let (y0, wy) = (fy.floor() as usize, fy - fy.floor());
        let y1 = (y0 + 1).min(g - 1);
        for x in 0..new_g {
            let fx = src(x);
            let (x0, wx) = (fx.floor() as usize, fx - fx.floor());
            let x1 = (x0 + 1).min(g - 1);
            let at = |yy: usize, xx: usize, k: usize| rows[1 + yy * g + xx][k];
            for k in 0..h {
                let top = at(y0, x0, k) * (1.0 - wx) + at(y0, x1, k) * wx;
                let bottom = at(y1, x0, k) * (1.0 - wx) + at(y1, x1, k) * wx;
                out.push(top * (1.0 - wy) + bottom * wy);
            }
        }
    }
    Ok(Tensor::from_vec(
        out,
        (1 + new_g * new_g, h),
        positions.device(),
    )?)
}

/// Writes an `Owlv2ForObjectDetection` folder transformers and
/// [`Owlv2::load`] read: `config.json` (with the `model_type`s and
/// architecture transformers needs) and `model.safetensors`.
pub fn save_model(
    dir: &Path,
    cfg: &ClipConfig,
    weights: &std::collections::HashMap<String, Tensor>,
) -> Result<()> {
    let path = dir.join("config.json");
    let json_err = |source| ModelError::Json {
        path: path.clone(),
        source,
    };
    let mut json = serde_json::to_value(cfg).map_err(json_err)?;
    if let Some(obj) = json.as_object_mut() {
        obj.insert("model_type".into(), "owlv2".into());
        obj.insert(
            "architectures".into(),
            serde_json::json!(["Owlv2ForObjectDetection"]),
        );
        for (key, kind) in [
            ("text_config", "owlv2_text_model"),
            ("vision_config", "owlv2_vision_model"),
        ] {
            if let Some(c) = obj.get_mut(key).and_then(|v| v.as_object_mut()) {
                c.insert("model_type".into(), kind.into());
            }
        }
    }
    let text = serde_json::to_string_pretty(&json).map_err(json_err)?;
    crate::core::atomic::write_atomic(&path, (text + "\n").as_bytes()).map_err(|source| {
        ModelError::Io {
            path: path.clone(),
            source,
        }
    })?;
    super::lora::save_safetensors(weights, &dir.join(super::hub::WEIGHTS_FILE))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_resize_bilinearly() {
        // 2×2 grid with values 0, 1 / 2, 3 (one channel) → 4×4.
        let t = Tensor::new(&[[9.0f32], [0.0], [1.0], [2.0], [3.0]], &Device::Cpu).unwrap();
        let r = resize_positions(&t, 4).unwrap().to_vec2::<f32>().unwrap();
        assert_eq!(r.len(), 17);
        assert_eq!(r[0], vec![9.0]);
        // Corners keep the corner values; the second column of the first
        // row samples x = 0.25 → 0.25.
        assert_eq!(r[1][0], 0.0);
        assert!((r[2][0] - 0.25).abs() < 1e-6);
        assert_eq!(r[16][0], 3.0);
        // Same size: unchanged.
        let same = resize_positions(&t, 2).unwrap().to_vec2::<f32>().unwrap();
        assert_eq!(same, t.to_vec2::<f32>().unwrap());
        assert!(
            resize_positions(&Tensor::zeros((4, 1), DType::F32, &Device::Cpu).unwrap(), 2).is_err()
        );
    }
}
