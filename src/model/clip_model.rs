//! CLIP (`CLIPModel`): text and vision towers with their projections into
//! the joint space, as the semantic score needs them.
//!
//! Follows transformers' `models/clip/modeling_clip.py`:
//! - text: token + learned position embeddings → N × encoder layer with a
//!   causal mask → `final_layer_norm`; the pooled output is the hidden
//!   state at the end-of-text token (the first `eos_token_id`, or for the
//!   old configs whose `eos_token_id` is 2, the position of the row's
//!   highest id, as transformers does) → `text_projection` (no bias);
//! - vision: [`ClipVisionTower`] → `post_layernorm` of the class token →
//!   `visual_projection` (no bias);
//! - embeddings are L2-normalised, as `CLIPModel` returns `text_embeds` /
//!   `image_embeds`; `logit_scale` is kept for contrastive training.
//!
//! [`ClipModel::region_embeds`] is DESIGN §3's local-attention region
//! embedding (the last block's class token restricted to the patches of a
//! region; see [`ClipVisionTower::pooled_masked`]).
//!
//! Checkpoint names are the hub's (`text_model.*`, `vision_model.*`,
//! `text_projection.weight`, `visual_projection.weight`, `logit_scale`), so
//! `openai/clip-vit-large-patch14-336` loads from a folder or the hub.
//! `tests/clip_parity.rs` checks embeddings, logits and the masked region
//! embedding against transformers on a tiny random checkpoint
//! (`scripts/parity/make_clip_fixtures.py`).

use std::path::Path;

use candle_core::{DType, Device, Tensor, D};
use candle_nn::VarBuilder;

use super::clip::{ClipVisionTower, EncoderLayer, LayerDims, Norm};
use super::config::{ClipConfig, ClipTextConfig};
use super::hub::weight_files;
use super::lora::linear;
use super::{ModelError, Result};

/// Where the text tower's pooled output is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TextPooling {
    /// CLIP's: at the first `eos_token_id` (at the row's highest id for the
    /// old configs whose `eos_token_id` is 2).
    Eos,
    /// OWL-ViT's and OWLv2's: always at the row's highest id (their
    /// end-of-text token is the last of the vocabulary).
    HighestId,
}

/// CLIP's text transformer (`text_model` of `CLIPTextModel`).
#[derive(Debug, Clone)]
pub struct ClipTextTower {
    token_embedding: Tensor,
    position_embedding: Tensor,
    layers: Vec<EncoderLayer>,
    final_layer_norm: Norm,
    cfg: ClipTextConfig,
    pooling: TextPooling,
}

impl ClipTextTower {
    /// Loads `embeddings.*`, `encoder.layers.N.*` and `final_layer_norm.*`,
    /// pooled as CLIP pools ([`TextPooling::Eos`]).
    pub fn new(vb: VarBuilder, cfg: &ClipTextConfig) -> candle_core::Result<Self> {
        Self::with_pooling(vb, cfg, TextPooling::Eos)
    }

    /// [`Self::new`] with another pooling rule.
    pub fn with_pooling(
        vb: VarBuilder,
        cfg: &ClipTextConfig,
        pooling: TextPooling,
    ) -> candle_core::Result<Self> {
        let h = cfg.hidden_size;
        let emb = vb.pp("embeddings");
        let dims = LayerDims {
            hidden: h,
            intermediate: cfg.intermediate_size,
            heads: cfg.num_attention_heads,
            eps: cfg.layer_norm_eps,
            act: cfg.hidden_act,
        };
        Ok(Self {
            token_embedding: emb
                .pp("token_embedding")
                .get((cfg.vocab_size, h), "weight")?,
            position_embedding: emb
                .pp("position_embedding")
                .get((cfg.max_position_embeddings, h), "weight")?,
            layers: (0..cfg.num_hidden_layers)
                .map(|i| EncoderLayer::new(vb.pp("encoder").pp("layers").pp(i), dims))
                .collect::<candle_core::Result<Vec<_>>>()?,
            final_layer_norm: Norm::new(vb.pp("final_layer_norm"), h, cfg.layer_norm_eps)?,
            cfg: cfg.clone(),
            pooling,
        })
    }

    /// The config.
    pub fn config(&self) -> &ClipTextConfig {
        &self.cfg
    }

    /// The row positions the pooled output is read at.
    fn eos_positions(&self, ids: &[Vec<u32>]) -> Vec<usize> {
        ids.iter()
            .map(|row| {
                if self.pooling == TextPooling::HighestId || self.cfg.eos_token_id == 2 {
                    // transformers' legacy rule: the first highest id.
                    let mut best = 0;
                    for (i, &id) in row.iter().enumerate() {
                        if id > row[best] {
                            best = i;
                        }
                    }
                    best
                } else {
                    row.iter()
                        .position(|&id| id == self.cfg.eos_token_id)
                        .unwrap_or(0)
                }
            })
            .collect()
    }

    /// Pooled output `(b, hidden)` for token ids `(b, t)` (right padding
    /// after the end-of-text token is never seen: the mask is causal).
    pub fn pooled(&self, input_ids: &Tensor) -> Result<Tensor> {
        let (b, t) = input_ids.dims2()?;
        if t > self.cfg.max_position_embeddings {
            return Err(ModelError::Input(format!(
                "{t} text tokens; this CLIP reads at most {}",
                self.cfg.max_position_embeddings
            )));
        }
        let rows = input_ids.to_dtype(DType::U32)?.to_vec2::<u32>()?;
        if let Some(bad) = rows
            .iter()
            .flatten()
            .find(|&&id| id as usize >= self.cfg.vocab_size)
        {
            return Err(ModelError::Input(format!(
                "token id {bad} is outside the vocabulary of {}",
                self.cfg.vocab_size
            )));
        }
        let h = self.cfg.hidden_size;
        let ids = input_ids.to_dtype(DType::U32)?.flatten_all()?;
        let tok = self
            .token_embedding
            .index_select(&ids, 0)?
            .reshape((b, t, h))?;
        let pos = self.position_embedding.narrow(0, 0, t)?.unsqueeze(0)?;
        let mut xs = tok.broadcast_add(&pos)?;
        let mask: Vec<f32> = (0..t * t)
            .map(|k| {
                if k % t > k / t {
                    f32::NEG_INFINITY
                } else {
                    0.0
                }
            })
            .collect();
        let mask = Tensor::from_vec(mask, (t, t), xs.device())?.to_dtype(xs.dtype())?;
        for layer in &self.layers {
            xs = layer.forward(&xs, Some(&mask))?;
        }
        let xs = self.final_layer_norm.forward(&xs)?;
        let at: Vec<u32> = self
            .eos_positions(&rows)
            .iter()
            .enumerate()
            .map(|(i, p)| (i * t + p) as u32)
            .collect();
        let at = Tensor::from_vec(at, b, xs.device())?;
        Ok(xs.reshape((b * t, h))?.index_select(&at, 0)?)
    }
}

fn normalise(x: &Tensor) -> candle_core::Result<Tensor> {
    let norm = x.sqr()?.sum_keepdim(D::Minus1)?.sqrt()?;
    x.broadcast_div(&norm)
}

/// `CLIPModel`.
#[derive(Debug, Clone)]
pub struct ClipModel {
    vision: ClipVisionTower,
    text: ClipTextTower,
    visual_projection: Tensor,
    text_projection: Tensor,
    logit_scale: Tensor,
    cfg: ClipConfig,
}

impl ClipModel {
    /// Builds the model from `vb` holding the hub's tensor names.
    pub fn new(vb: VarBuilder, cfg: &ClipConfig) -> candle_core::Result<Self> {
        let p = cfg.projection_dim;
        Ok(Self {
            vision: ClipVisionTower::new(vb.pp("vision_model"), &cfg.vision_config)?,
            text: ClipTextTower::new(vb.pp("text_model"), &cfg.text_config)?,
            visual_projection: vb
                .pp("visual_projection")
                .get((p, cfg.vision_config.hidden_size), "weight")?,
            text_projection: vb
                .pp("text_projection")
                .get((p, cfg.text_config.hidden_size), "weight")?,
            logit_scale: vb.get((), "logit_scale")?,
            cfg: cfg.clone(),
        })
    }

    /// Loads a `CLIPModel` folder (`config.json` + safetensors) onto
    /// `device` in `dtype`.
    pub fn load(dir: &Path, device: &Device, dtype: DType) -> Result<Self> {
        if !dir.is_dir() {
            return Err(ModelError::MissingPath {
                path: dir.to_path_buf(),
                what: "CLIP model folder",
            });
        }
        let cfg = read_config(&dir.join("config.json"))?;
        let files = weight_files(dir)?;
        let err = |source| ModelError::Weights {
            path: dir.to_path_buf(),
            source,
        };
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

    /// The vision tower.
    pub fn vision(&self) -> &ClipVisionTower {
        &self.vision
    }

    /// The text tower.
    pub fn text(&self) -> &ClipTextTower {
        &self.text
    }

    /// The device of the weights.
    pub fn device(&self) -> &Device {
        self.visual_projection.device()
    }

    /// `exp(logit_scale)`: the temperature of CLIP's logits.
    pub fn logit_scale(&self) -> Result<f32> {
        Ok(self
            .logit_scale
            .to_dtype(DType::F32)?
            .exp()?
            .to_scalar::<f32>()?)
    }

    /// The raw `logit_scale` tensor (for training).
    pub fn logit_scale_tensor(&self) -> &Tensor {
        &self.logit_scale
    }

    /// L2-normalised image embeddings `(b, projection)` for pixel values
    /// `(b, 3, S, S)`.
    pub fn image_embeds(&self, pixel_values: &Tensor) -> Result<Tensor> {
        let pooled = self.vision.pooled(pixel_values)?;
        Ok(normalise(&linear(&pooled, &self.visual_projection, None)?)?)
    }

    /// L2-normalised text embeddings `(b, projection)` for token ids `(b, t)`.
    pub fn text_embeds(&self, input_ids: &Tensor) -> Result<Tensor> {
        let pooled = self.text.pooled(input_ids)?;
        Ok(normalise(&linear(&pooled, &self.text_projection, None)?)?)
    }

    /// L2-normalised region embeddings `(r, projection)` of one image
    /// (`(1, 3, S, S)`): one per row of `patches` (`(r, patches)`, 1 where
    /// the region covers the patch, row-major over the grid).
    pub fn region_embeds(&self, pixel_values: &Tensor, patches: &[Vec<bool>]) -> Result<Tensor> {
        let state = self.region_state(pixel_values)?;
        self.region_embeds_from(&state, patches)
    }

    /// The image's state entering the vision tower's last layer, shared by
    /// all its regions: cache it to embed many regions of one image.
    pub fn region_state(&self, pixel_values: &Tensor) -> Result<Tensor> {
        if pixel_values.dim(0)? != 1 {
            return Err(ModelError::Input(
                "region embeddings take one image at a time".into(),
            ));
        }
        Ok(self.vision.state_before_last(pixel_values)?)
    }

    /// [`Self::region_embeds`] from the image's [`Self::region_state`].
    pub fn region_embeds_from(&self, state: &Tensor, patches: &[Vec<bool>]) -> Result<Tensor> {
        let n = self.cfg.vision_config.num_patches();
        let mut allowed = Vec::with_capacity(patches.len() * (n + 1));
        for row in patches {
            if row.len() != n {
                return Err(ModelError::Input(format!(
                    "a region mask covers {} patches, the vision tower has {n}",
                    row.len()
                )));
            }
            allowed.push(0f32);
            allowed.extend(
                row.iter()
                    .map(|&on| if on { 0.0 } else { f32::NEG_INFINITY }),
            );
        }
        let allowed = Tensor::from_vec(allowed, (patches.len(), n + 1), self.device())?;
        let pooled = self.vision.pooled_masked_from(state, &allowed)?;
        Ok(normalise(&linear(&pooled, &self.visual_projection, None)?)?)
    }
}

/// Reads and checks a `CLIPModel` `config.json`.
pub fn read_config(path: &Path) -> Result<ClipConfig> {
    super::config::read_config_file(path, ClipConfig::validate)
}

/// Freshly initialised `CLIPModel` weights under the hub's names, drawn
/// from `seed`: normals (σ 0.02; class embedding σ 1/√hidden) for
/// projections and embeddings, LayerNorm weights 1, biases 0, and
/// `logit_scale` = `logit_scale_init_value` (ln 1/0.07), as transformers
/// initialises CLIP. For the tiny CLIP trained by `spr tiny clip`.
pub fn random_weights(
    cfg: &ClipConfig,
    seed: u64,
    device: &Device,
) -> Result<std::collections::HashMap<String, Tensor>> {
    let shapes = super::init::recorded_shapes(device, |vb| ClipModel::new(vb, cfg).map(|_| ()))?;
    let class_std = (cfg.vision_config.hidden_size as f32).powf(-0.5);
    super::init::default_init(shapes, seed, class_std, device, |name| {
        (name == "logit_scale").then(|| vec![cfg.logit_scale_init_value as f32])
    })
}

/// Writes a `CLIPModel` folder transformers and [`ClipModel::load`] read:
/// `config.json` (with the `model_type`s transformers needs) and
/// `model.safetensors`.
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
        obj.insert("model_type".into(), "clip".into());
        obj.insert("architectures".into(), serde_json::json!(["CLIPModel"]));
        for (key, kind) in [
            ("text_config", "clip_text_model"),
            ("vision_config", "clip_vision_model"),
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
