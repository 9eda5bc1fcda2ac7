//! The CLIP vision tower (ViT) as LLaVA uses it: hidden states of every
//! layer, so the projector can read the second-to-last one.
//!
//! Follows transformers' `models/clip/modeling_clip.py`
//! (`CLIPVisionTransformer`): patch embedding (a stride-`p` convolution
//! without bias, computed here as one matmul over flattened patches) plus a
//! class token and learned positions → `pre_layrnorm` (sic, the checkpoint
//! name) → N × [LayerNorm → multi-head attention → residual → LayerNorm →
//! MLP (quick-GELU) → residual]. `hidden_states[0]` is the embedding output
//! after `pre_layrnorm`, `hidden_states[k]` the output of layer `k`, as in
//! transformers, so `vision_feature_layer = -2` means the output of layer
//! N-1.
//!
//! Why not candle-transformers' CLIP: its hidden-state list omits the
//! embedding output (so `-2` picks a different layer than transformers
//! does), it always runs every layer, and it substitutes a random class
//! embedding when the tensor is missing instead of failing.
//!
//! The tower is frozen: nothing here needs gradients, so candle's fused
//! kernels are used throughout.

use candle_core::{Tensor, D};
use candle_nn::{LayerNorm, Module, VarBuilder};

use super::config::{Activation, ClipVisionConfig};
use super::lora::linear;

#[derive(Debug, Clone)]
struct Linear {
    weight: Tensor,
    bias: Tensor,
}

impl Linear {
    fn new(vb: VarBuilder, in_dim: usize, out_dim: usize) -> candle_core::Result<Self> {
        Ok(Self {
            weight: vb.get((out_dim, in_dim), "weight")?,
            bias: vb.get(out_dim, "bias")?,
        })
    }

    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        linear(x, &self.weight, Some(&self.bias))
    }
}

#[derive(Debug, Clone)]
struct EncoderLayer {
    q_proj: Linear,
    k_proj: Linear,
    v_proj: Linear,
    out_proj: Linear,
    layer_norm1: LayerNorm,
    fc1: Linear,
    fc2: Linear,
    layer_norm2: LayerNorm,
    num_heads: usize,
    act: Activation,
}

impl EncoderLayer {
    fn new(vb: VarBuilder, cfg: &ClipVisionConfig) -> candle_core::Result<Self> {
        let (h, i) = (cfg.hidden_size, cfg.intermediate_size);
        let attn = vb.pp("self_attn");
        let mlp = vb.pp("mlp");
        Ok(Self {
            q_proj: Linear::new(attn.pp("q_proj"), h, h)?,
            k_proj: Linear::new(attn.pp("k_proj"), h, h)?,
            v_proj: Linear::new(attn.pp("v_proj"), h, h)?,
            out_proj: Linear::new(attn.pp("out_proj"), h, h)?,
            layer_norm1: candle_nn::layer_norm(h, cfg.layer_norm_eps, vb.pp("layer_norm1"))?,
            fc1: Linear::new(mlp.pp("fc1"), h, i)?,
            fc2: Linear::new(mlp.pp("fc2"), i, h)?,
            layer_norm2: candle_nn::layer_norm(h, cfg.layer_norm_eps, vb.pp("layer_norm2"))?,
            num_heads: cfg.num_attention_heads,
            act: cfg.hidden_act,
        })
    }

    fn forward(&self, xs: &Tensor) -> candle_core::Result<Tensor> {
        let (b, t, h) = xs.dims3()?;
        let hd = h / self.num_heads;
        let x = self.layer_norm1.forward(xs)?;
        let heads = |y: Tensor| -> candle_core::Result<Tensor> {
            y.reshape((b, t, self.num_heads, hd))?
                .transpose(1, 2)?
                .contiguous()
        };
        let q = heads((self.q_proj.forward(&x)? * (hd as f64).powf(-0.5))?)?;
        let k = heads(self.k_proj.forward(&x)?)?;
        let v = heads(self.v_proj.forward(&x)?)?;
        let scores = q.matmul(&k.t()?)?;
        let probs = candle_nn::ops::softmax_last_dim(&scores)?;
        let attn = probs.matmul(&v)?.transpose(1, 2)?.reshape((b, t, h))?;
        let xs = (xs + self.out_proj.forward(&attn)?)?;
        let x = self.layer_norm2.forward(&xs)?;
        let x = self.fc2.forward(&self.act.apply(&self.fc1.forward(&x)?)?)?;
        xs + x
    }
}

/// CLIP's vision transformer (`vision_model` of `CLIPVisionModel`).
#[derive(Debug, Clone)]
pub struct ClipVisionTower {
    patch_weight: Tensor,
    class_embedding: Tensor,
    position_embedding: Tensor,
    pre_layrnorm: LayerNorm,
    layers: Vec<EncoderLayer>,
    post_layernorm: Option<LayerNorm>,
    cfg: ClipVisionConfig,
}

impl ClipVisionTower {
    /// Loads every layer and `post_layernorm` from `vb` (holding
    /// `embeddings.*`, `pre_layrnorm.*`, `encoder.layers.N.*`,
    /// `post_layernorm.*`).
    pub fn new(vb: VarBuilder, cfg: &ClipVisionConfig) -> candle_core::Result<Self> {
        Self::new_truncated(vb, cfg, cfg.num_hidden_layers)
    }

    /// Loads only the first `num_layers` encoder layers: enough for
    /// hidden states `0..=num_layers` (LLaVA-1.5 never runs the last layer,
    /// nor `post_layernorm`).
    pub fn new_truncated(
        vb: VarBuilder,
        cfg: &ClipVisionConfig,
        num_layers: usize,
    ) -> candle_core::Result<Self> {
        let h = cfg.hidden_size;
        let p = cfg.patch_size;
        let emb = vb.pp("embeddings");
        let patch_weight = emb
            .pp("patch_embedding")
            .get((h, cfg.num_channels, p, p), "weight")?
            .reshape((h, cfg.num_channels * p * p))?;
        let class_embedding = emb.get(h, "class_embedding")?;
        let position_embedding = emb
            .pp("position_embedding")
            .get((cfg.num_patches() + 1, h), "weight")?;
        let pre_layrnorm = candle_nn::layer_norm(h, cfg.layer_norm_eps, vb.pp("pre_layrnorm"))?;
        let layers = (0..num_layers.min(cfg.num_hidden_layers))
            .map(|i| EncoderLayer::new(vb.pp("encoder").pp("layers").pp(i), cfg))
            .collect::<candle_core::Result<Vec<_>>>()?;
        let post_layernorm = if num_layers >= cfg.num_hidden_layers {
            Some(candle_nn::layer_norm(
                h,
                cfg.layer_norm_eps,
                vb.pp("post_layernorm"),
            )?)
        } else {
            None
        };
        Ok(Self {
            post_layernorm,
            patch_weight,
            class_embedding,
            position_embedding,
            pre_layrnorm,
            layers,
            cfg: cfg.clone(),
        })
    }

    /// The config.
    pub fn config(&self) -> &ClipVisionConfig {
        &self.cfg
    }

    /// Number of encoder layers loaded.
    pub fn num_layers(&self) -> usize {
        self.layers.len()
    }

    /// Embedding output after `pre_layrnorm`: `(b, 1 + patches, hidden)`.
    pub fn embed(&self, pixel_values: &Tensor) -> candle_core::Result<Tensor> {
        let (b, c, hh, ww) = pixel_values.dims4()?;
        let p = self.cfg.patch_size;
        let s = self.cfg.image_size;
        if c != self.cfg.num_channels || hh != s || ww != s {
            candle_core::bail!(
                "pixel values are {b}×{c}×{hh}×{ww}, the vision tower expects b×{}×{s}×{s}",
                self.cfg.num_channels
            );
        }
        let (gh, gw) = (hh / p, ww / p);
        let x = pixel_values
            .to_dtype(self.patch_weight.dtype())?
            .reshape((b, c, gh, p, gw, p))?
            .permute((0, 2, 4, 1, 3, 5))?
            .contiguous()?
            .reshape((b, gh * gw, c * p * p))?;
        let patches = linear(&x, &self.patch_weight, None)?;
        let h = self.cfg.hidden_size;
        let cls = self.class_embedding.reshape((1, 1, h))?.expand((b, 1, h))?;
        let x = Tensor::cat(&[&cls, &patches], 1)?;
        let x = x.broadcast_add(&self.position_embedding.unsqueeze(0)?)?;
        self.pre_layrnorm.forward(&x)
    }

    /// Hidden states `0..=upto` (0 = embeddings, k = after layer k), each
    /// `(b, 1 + patches, hidden)`. Stops after layer `upto`.
    pub fn hidden_states(
        &self,
        pixel_values: &Tensor,
        upto: usize,
    ) -> candle_core::Result<Vec<Tensor>> {
        if upto > self.layers.len() {
            candle_core::bail!(
                "hidden state {upto} requested but only {} vision layers are loaded",
                self.layers.len()
            );
        }
        let mut xs = self.embed(pixel_values)?;
        let mut out = Vec::with_capacity(upto + 1);
        out.push(xs.clone());
        for layer in &self.layers[..upto] {
            xs = layer.forward(&xs)?;
            out.push(xs.clone());
        }
        Ok(out)
    }

    /// CLIP's pooled output: `post_layernorm` of the last layer's class
    /// token, `(b, hidden)`. Needs a tower loaded with [`Self::new`].
    pub fn pooled(&self, pixel_values: &Tensor) -> candle_core::Result<Tensor> {
        let Some(norm) = &self.post_layernorm else {
            candle_core::bail!(
                "the vision tower was loaded without its last layers and post_layernorm"
            );
        };
        let last = self.hidden_state(pixel_values, self.layers.len())?;
        norm.forward(&last.narrow(1, 0, 1)?.squeeze(1)?)
    }

    /// The single hidden state `index` (0 = embeddings).
    pub fn hidden_state(&self, pixel_values: &Tensor, index: usize) -> candle_core::Result<Tensor> {
        let mut states = self.hidden_states(pixel_values, index)?;
        states
            .pop()
            .ok_or_else(|| candle_core::Error::Msg("no hidden state".into()))
    }
}

/// LLaVA's `multi_modal_projector`: `linear_2(act(linear_1(x)))`.
#[derive(Debug, Clone)]
pub struct Projector {
    linear_1: (Tensor, Option<Tensor>),
    linear_2: (Tensor, Option<Tensor>),
    act: Activation,
}

impl Projector {
    /// Loads `linear_1` (`in_dim` → `out_dim`) and `linear_2` (`out_dim` →
    /// `out_dim`).
    pub fn new(
        vb: VarBuilder,
        in_dim: usize,
        out_dim: usize,
        bias: bool,
        act: Activation,
    ) -> candle_core::Result<Self> {
        let load =
            |name: &str, i: usize, o: usize| -> candle_core::Result<(Tensor, Option<Tensor>)> {
                let v = vb.pp(name);
                let w = v.get((o, i), "weight")?;
                let b = if bias { Some(v.get(o, "bias")?) } else { None };
                Ok((w, b))
            };
        Ok(Self {
            linear_1: load("linear_1", in_dim, out_dim)?,
            linear_2: load("linear_2", out_dim, out_dim)?,
            act,
        })
    }

    /// Projects `(..., in_dim)` vision features to `(..., out_dim)`.
    pub fn forward(&self, xs: &Tensor) -> candle_core::Result<Tensor> {
        let h = linear(xs, &self.linear_1.0, self.linear_1.1.as_ref())?;
        let h = self.act.apply(&h)?;
        linear(&h, &self.linear_2.0, self.linear_2.1.as_ref())
    }
}

/// Concatenates features along the last axis (LLaVA's multi-layer option).
pub(crate) fn cat_features(features: &[Tensor]) -> candle_core::Result<Tensor> {
    if features.len() == 1 {
        return Ok(features[0].clone());
    }
    Tensor::cat(features, D::Minus1)
}
