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
//! The same encoder layer serves CLIP's text tower ([`super::clip_model`]),
//! and [`ClipVisionTower::pooled_masked`] gives DESIGN §3's local-attention
//! region embedding. Where no gradient is tracked (LLaVA's frozen tower,
//! scoring) candle's fused kernels run; the differentiable compositions
//! otherwise (training the tiny CLIP).

use candle_core::{Tensor, D};
use candle_nn::VarBuilder;

use super::config::{Activation, ClipVisionConfig};
use super::lora::linear;

#[derive(Debug, Clone)]
pub(crate) struct Linear {
    weight: Tensor,
    bias: Tensor,
}

impl Linear {
    pub(crate) fn new(vb: VarBuilder, in_dim: usize, out_dim: usize) -> candle_core::Result<Self> {
        Ok(Self {
            weight: vb.get((out_dim, in_dim), "weight")?,
            bias: vb.get(out_dim, "bias")?,
        })
    }

    pub(crate) fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        linear(x, &self.weight, Some(&self.bias))
    }
}

/// LayerNorm over the last axis: candle's fused kernel when nothing tracks
/// a gradient, the differentiable composition otherwise (the fused kernel
/// has no backward; the tiny CLIP trains through here).
#[derive(Debug, Clone)]
pub(crate) struct Norm {
    weight: Tensor,
    bias: Tensor,
    eps: f64,
}

impl Norm {
    pub(crate) fn new(vb: VarBuilder, size: usize, eps: f64) -> candle_core::Result<Self> {
        Ok(Self {
            weight: vb.get(size, "weight")?,
            bias: vb.get(size, "bias")?,
            eps,
        })
    }

    pub(crate) fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        super::ops::clip::layer_norm(x, &self.weight, &self.bias, self.eps)
    }
}

fn softmax(xs: &Tensor) -> candle_core::Result<Tensor> {
    super::ops::softmax_last_dim(xs)
}

/// The sizes of a CLIP encoder layer (text and vision towers share it).
#[derive(Debug, Clone, Copy)]
pub(crate) struct LayerDims {
    pub(crate) hidden: usize,
    pub(crate) intermediate: usize,
    pub(crate) heads: usize,
    pub(crate) eps: f64,
    pub(crate) act: Activation,
}

impl From<&ClipVisionConfig> for LayerDims {
    fn from(cfg: &ClipVisionConfig) -> Self {
        Self {
            hidden: cfg.hidden_size,
            intermediate: cfg.intermediate_size,
            heads: cfg.num_attention_heads,
            eps: cfg.layer_norm_eps,
            act: cfg.hidden_act,
        }
    }
}

/// A pre-norm transformer block (`CLIPEncoderLayer`).
#[derive(Debug, Clone)]
pub(crate) struct EncoderLayer {
    q_proj: Linear,
    k_proj: Linear,
    v_proj: Linear,
    out_proj: Linear,
    layer_norm1: Norm,
    fc1: Linear,
    fc2: Linear,
    layer_norm2: Norm,
    num_heads: usize,
    act: Activation,
}

impl EncoderLayer {
    pub(crate) fn new(vb: VarBuilder, d: LayerDims) -> candle_core::Result<Self> {
        let (h, i) = (d.hidden, d.intermediate);
        let attn = vb.pp("self_attn");
        let mlp = vb.pp("mlp");
        Ok(Self {
            q_proj: Linear::new(attn.pp("q_proj"), h, h)?,
            k_proj: Linear::new(attn.pp("k_proj"), h, h)?,
            v_proj: Linear::new(attn.pp("v_proj"), h, h)?,
            out_proj: Linear::new(attn.pp("out_proj"), h, h)?,
            layer_norm1: Norm::new(vb.pp("layer_norm1"), h, d.eps)?,
            fc1: Linear::new(mlp.pp("fc1"), h, i)?,
            fc2: Linear::new(mlp.pp("fc2"), i, h)?,
            layer_norm2: Norm::new(vb.pp("layer_norm2"), h, d.eps)?,
            num_heads: d.heads,
            act: d.act,
        })
    }

    /// The block on `xs` `(b, t, h)`; `mask`, when given, is added to the
    /// attention scores (`(t, t)`, 0 or −∞; the text tower's causal mask).
    pub(crate) fn forward(
        &self,
        xs: &Tensor,
        mask: Option<&Tensor>,
    ) -> candle_core::Result<Tensor> {
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
        let scores = match mask {
            Some(m) => scores.broadcast_add(m)?,
            None => scores,
        };
        let probs = softmax(&scores)?;
        let attn = probs.matmul(&v)?.transpose(1, 2)?.reshape((b, t, h))?;
        let xs = (xs + self.out_proj.forward(&attn)?)?;
        self.mlp_residual(&xs)
    }

    fn mlp_residual(&self, xs: &Tensor) -> candle_core::Result<Tensor> {
        let x = self.layer_norm2.forward(xs)?;
        let x = self.fc2.forward(&self.act.apply(&self.fc1.forward(&x)?)?)?;
        xs + x
    }

    /// The block's output at the class token (position 0) of one sequence
    /// `xs` `(1, t, h)`, once per row of `allowed` `(r, t)`: an additive
    /// mask (0 or −∞) on the class token's attention row only. With every
    /// position allowed it is the plain block's class-token output.
    pub(crate) fn class_token_masked(
        &self,
        xs: &Tensor,
        allowed: &Tensor,
    ) -> candle_core::Result<Tensor> {
        let (_, t, h) = xs.dims3()?;
        let (r, _) = allowed.dims2()?;
        let hd = h / self.num_heads;
        let x = self.layer_norm1.forward(xs)?;
        // (heads, 1, hd) for the class token; (heads, t, hd) keys, values.
        let q = (self.q_proj.forward(&x.narrow(1, 0, 1)?)? * (hd as f64).powf(-0.5))?.reshape((
            self.num_heads,
            1,
            hd,
        ))?;
        let kv = |p: &Linear| -> candle_core::Result<Tensor> {
            p.forward(&x)?
                .reshape((t, self.num_heads, hd))?
                .transpose(0, 1)?
                .contiguous()
        };
        let (k, v) = (kv(&self.k_proj)?, kv(&self.v_proj)?);
        let scores = q.matmul(&k.t()?)?; // (heads, 1, t)
        let scores = scores
            .reshape((1, self.num_heads, t))?
            .broadcast_add(&allowed.to_dtype(scores.dtype())?.unsqueeze(1)?)?; // (r, heads, t)
        let probs = softmax(&scores)?;
        let attn = probs
            .transpose(0, 1)?
            .contiguous()?
            .matmul(&v)? // (heads, r, hd)
            .transpose(0, 1)?
            .reshape((r, h))?;
        let cls = xs.narrow(1, 0, 1)?.reshape((1, h))?;
        let out = cls.broadcast_add(&self.out_proj.forward(&attn)?)?;
        self.mlp_residual(&out)
    }
}

/// CLIP's vision transformer (`vision_model` of `CLIPVisionModel`).
#[derive(Debug, Clone)]
pub struct ClipVisionTower {
    patch_weight: Tensor,
    class_embedding: Tensor,
    position_embedding: Tensor,
    pre_layrnorm: Norm,
    layers: Vec<EncoderLayer>,
    post_layernorm: Option<Norm>,
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
        let pre_layrnorm = Norm::new(vb.pp("pre_layrnorm"), h, cfg.layer_norm_eps)?;
        let layers = (0..num_layers.min(cfg.num_hidden_layers))
            .map(|i| EncoderLayer::new(vb.pp("encoder").pp("layers").pp(i), cfg.into()))
            .collect::<candle_core::Result<Vec<_>>>()?;
        let post_layernorm = if num_layers >= cfg.num_hidden_layers {
            Some(Norm::new(vb.pp("post_layernorm"), h, cfg.layer_norm_eps)?)
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
            xs = layer.forward(&xs, None)?;
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

    /// The pooled output of one image under region masks: the last layer's
    /// class token may attend only to itself and the patches `allowed` marks
    /// (`(r, 1 + patches)`, 0 or −∞, one row per region; other tokens are
    /// not masked), then `post_layernorm`: `(r, hidden)`. The first layers
    /// run once whatever `r` is.
    pub fn pooled_masked(
        &self,
        pixel_values: &Tensor,
        allowed: &Tensor,
    ) -> candle_core::Result<Tensor> {
        let (Some(norm), Some(last)) = (&self.post_layernorm, self.layers.last()) else {
            candle_core::bail!(
                "the vision tower was loaded without its last layers and post_layernorm"
            );
        };
        if pixel_values.dim(0)? != 1 {
            candle_core::bail!("pooled_masked takes one image at a time");
        }
        let before = self.state_before_last(pixel_values)?;
        norm.forward(&last.class_token_masked(&before, allowed)?)
    }

    /// The hidden state entering the last layer, `(1, 1 + patches,
    /// hidden)`: what [`Self::pooled_masked_from`] starts from, the same for
    /// every region of an image.
    pub fn state_before_last(&self, pixel_values: &Tensor) -> candle_core::Result<Tensor> {
        self.hidden_state(pixel_values, self.layers.len().saturating_sub(1))
    }

    /// [`Self::pooled_masked`] from the image's [`Self::state_before_last`].
    pub fn pooled_masked_from(
        &self,
        before: &Tensor,
        allowed: &Tensor,
    ) -> candle_core::Result<Tensor> {
        let (Some(norm), Some(last)) = (&self.post_layernorm, self.layers.last()) else {
            candle_core::bail!(
                "the vision tower was loaded without its last layers and post_layernorm"
            );
        };
        norm.forward(&last.class_token_masked(before, allowed)?)
    }

    /// `post_layernorm` of every token of the last layer, `(b, 1 +
    /// patches, hidden)`: what OWLv2's heads start from.
    pub fn last_hidden_normed(&self, pixel_values: &Tensor) -> candle_core::Result<Tensor> {
        let Some(norm) = &self.post_layernorm else {
            candle_core::bail!(
                "the vision tower was loaded without its last layers and post_layernorm"
            );
        };
        norm.forward(&self.hidden_state(pixel_values, self.layers.len())?)
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
