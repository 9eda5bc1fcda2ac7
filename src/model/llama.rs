//! The Llama decoder, written here so it returns logits for every position,
//! exposes its layers to LoRA, and keeps gradients flowing.
//!
//! Follows transformers' `models/llama/modeling_llama.py`
//! (`LlamaForCausalLM`): token embedding → N × [RMSNorm → attention (rotary
//! q/k, grouped-query K/V, causal + padding mask) → residual → RMSNorm →
//! SiLU-gated MLP → residual] → RMSNorm → `lm_head`. Checkpoint names are
//! transformers' (`model.layers.N.self_attn.q_proj.weight`, ...).
//!
//! Why not candle-transformers' Llama: it returns only the last position's
//! logits (DPO needs per-token log-probabilities of whole responses), keeps
//! its layers private (LoRA needs to wrap them), and uses fused kernels that
//! have no backward pass. candle's fused RMSNorm, softmax and rotary kernels
//! silently stop gradients, so this module uses them only on tensors that
//! track no gradient (`Tensor::track_op`), and the differentiable composite
//! forms otherwise.
//!
//! Decoding lives in [`super::generation`]; this module gives it a forward
//! with a KV cache.
//!
//! Positions come from the attention mask (`cumsum(mask) - 1`, as
//! transformers' `generate` computes them), so left-padded batches generate
//! exactly like unpadded prompts; for right padding (training) they equal
//! `0..t` on every real token.

use candle_core::{DType, Device, Tensor, D};
use candle_nn::VarBuilder;

use super::config::{Activation, LlamaConfig};
use super::lora::{AdapterMode, LoraAdapter, LoraConfig, LoraLinear, TargetModule};
use super::{ModelError, Result};
use crate::core::rng::SplitMix64;

/// RMSNorm (`LlamaRMSNorm`): `w · x / √(mean(x²) + ε)`, computed in `f32`.
#[derive(Debug, Clone)]
pub struct RmsNorm {
    weight: Tensor,
    eps: f64,
}

impl RmsNorm {
    /// Loads `weight` from `vb`.
    pub fn new(vb: VarBuilder, size: usize, eps: f64) -> candle_core::Result<Self> {
        Ok(Self {
            weight: vb.get(size, "weight")?,
            eps,
        })
    }

    /// Normalises the last axis.
    pub fn forward(&self, xs: &Tensor) -> candle_core::Result<Tensor> {
        super::ops::rms_norm(xs, &self.weight, self.eps as f32)
    }
}

/// Rotary position embedding tables, computed per call from positions.
#[derive(Debug, Clone)]
struct Rotary {
    /// Inverse frequencies, `head_dim / 2` values.
    inv_freq: Tensor,
}

impl Rotary {
    fn new(cfg: &LlamaConfig, device: &Device) -> candle_core::Result<Self> {
        let dim = cfg.head_dim();
        let base = cfg.rope_theta();
        let mut inv: Vec<f64> = (0..dim / 2)
            .map(|i| 1.0 / base.powf((2 * i) as f64 / dim as f64))
            .collect();
        if let Some(rope) = cfg.rope() {
            match rope.kind() {
                "linear" => {
                    let factor = rope.factor.unwrap_or(1.0);
                    inv.iter_mut().for_each(|f| *f /= factor);
                }
                "llama3" => {
                    // transformers' `_compute_llama3_parameters`.
                    let factor = rope.factor.unwrap_or(8.0);
                    let low = rope.low_freq_factor.unwrap_or(1.0);
                    let high = rope.high_freq_factor.unwrap_or(4.0);
                    let old_ctx = rope.original_max_position_embeddings.unwrap_or(8192) as f64;
                    let low_wavelen = old_ctx / low;
                    let high_wavelen = old_ctx / high;
                    for f in inv.iter_mut() {
                        let wavelen = 2.0 * std::f64::consts::PI / *f;
                        if wavelen > low_wavelen {
                            *f /= factor;
                        } else if wavelen >= high_wavelen {
                            let smooth = (old_ctx / wavelen - low) / (high - low);
                            *f = (1.0 - smooth) * *f / factor + smooth * *f;
                        }
                    }
                }
                _ => {}
            }
        }
        let inv: Vec<f32> = inv.into_iter().map(|f| f as f32).collect();
        Ok(Self {
            inv_freq: Tensor::from_vec(inv, dim / 2, device)?,
        })
    }

    /// `(cos, sin)`, each `(b, t, head_dim / 2)` in `dtype`, for positions
    /// `(b, t)` (`u32`).
    fn tables(&self, positions: &Tensor, dtype: DType) -> candle_core::Result<(Tensor, Tensor)> {
        let pos = positions.to_dtype(DType::F32)?.unsqueeze(D::Minus1)?;
        let freqs = pos.broadcast_mul(&self.inv_freq.reshape((1, 1, ()))?)?;
        Ok((freqs.cos()?.to_dtype(dtype)?, freqs.sin()?.to_dtype(dtype)?))
    }
}

/// Rotates `x` (`(b, heads, t, d)`) by the tables (`(b, t, d/2)`), in the
/// half-split (`rotate_half`) convention of transformers' Llama.
fn apply_rotary(x: &Tensor, cos: &Tensor, sin: &Tensor) -> candle_core::Result<Tensor> {
    super::ops::rope(x, cos, sin)
}

/// Repeats K/V heads for grouped-query attention: `(b, kv, s, d)` →
/// `(b, kv·n_rep, s, d)`.
fn repeat_kv(x: Tensor, n_rep: usize) -> candle_core::Result<Tensor> {
    if n_rep == 1 {
        return Ok(x);
    }
    let (b, kv, s, d) = x.dims4()?;
    x.unsqueeze(2)?
        .expand((b, kv, n_rep, s, d))?
        .reshape((b, kv * n_rep, s, d))
}

/// One layer's cached keys and values: `(b, kv_heads, capacity, d)`
/// buffers of which the first `len` positions are filled, written in place
/// as decoding goes (no copy of the past per step).
#[derive(Debug, Clone)]
struct LayerCache {
    k: Tensor,
    v: Tensor,
    len: usize,
}

impl LayerCache {
    /// Appends `k`, `v` (`(b, kv_heads, t, d)`) and returns views of all
    /// cached positions, growing the buffers (doubling) when full.
    fn append(
        slot: &mut Option<LayerCache>,
        k: &Tensor,
        v: &Tensor,
        reserve: usize,
    ) -> candle_core::Result<(Tensor, Tensor)> {
        let t = k.dim(2)?;
        let needed = slot.as_ref().map_or(0, |c| c.len) + t;
        let grow = match slot.as_ref() {
            None => true,
            Some(c) => needed > c.k.dim(2)?,
        };
        if grow {
            let (b, h, _, d) = k.dims4()?;
            let cap = needed
                .max(reserve)
                .max(slot.as_ref().map_or(0, |c| 2 * c.k.dim(2).unwrap_or(0)));
            let nk = Tensor::zeros((b, h, cap, d), k.dtype(), k.device())?;
            let nv = Tensor::zeros((b, h, cap, d), v.dtype(), v.device())?;
            let len = match slot.take() {
                Some(old) => {
                    nk.slice_set(&old.k.narrow(2, 0, old.len)?.contiguous()?, 2, 0)?;
                    nv.slice_set(&old.v.narrow(2, 0, old.len)?.contiguous()?, 2, 0)?;
                    old.len
                }
                None => 0,
            };
            *slot = Some(LayerCache { k: nk, v: nv, len });
        }
        let Some(c) = slot.as_mut() else {
            candle_core::bail!("KV cache slot is empty after allocation");
        };
        c.k.slice_set(&k.contiguous()?, 2, c.len)?;
        c.v.slice_set(&v.contiguous()?, 2, c.len)?;
        c.len += t;
        Ok((c.k.narrow(2, 0, c.len)?, c.v.narrow(2, 0, c.len)?))
    }
}

/// Per-layer key/value cache for incremental decoding.
#[derive(Debug, Clone, Default)]
pub struct KvCache {
    layers: Vec<Option<LayerCache>>,
    /// Positions to reserve at the first write (the prompt plus the new
    /// tokens to come), so the buffers never grow while decoding.
    reserve: usize,
}

impl KvCache {
    /// An empty cache for `num_layers` layers.
    pub fn new(num_layers: usize) -> Self {
        Self::with_capacity(num_layers, 0)
    }

    /// An empty cache whose buffers hold `positions` positions from the
    /// first write on.
    pub fn with_capacity(num_layers: usize, positions: usize) -> Self {
        Self {
            layers: vec![None; num_layers],
            reserve: positions,
        }
    }

    /// Number of cached positions.
    pub fn seq_len(&self) -> usize {
        self.layers
            .first()
            .and_then(|l| l.as_ref())
            .map_or(0, |c| c.len)
    }

    /// Empties the cache.
    pub fn clear(&mut self) {
        self.layers.iter_mut().for_each(|l| *l = None);
    }
}

#[derive(Debug, Clone)]
struct Attention {
    q_proj: LoraLinear,
    k_proj: LoraLinear,
    v_proj: LoraLinear,
    o_proj: LoraLinear,
    num_heads: usize,
    num_kv_heads: usize,
    head_dim: usize,
}

impl Attention {
    fn new(vb: VarBuilder, cfg: &LlamaConfig) -> candle_core::Result<Self> {
        let (h, nh, nkv, hd) = (
            cfg.hidden_size,
            cfg.num_attention_heads,
            cfg.num_kv_heads(),
            cfg.head_dim(),
        );
        let bias = cfg.attention_bias;
        Ok(Self {
            q_proj: LoraLinear::new(vb.pp("q_proj"), h, nh * hd, bias)?,
            k_proj: LoraLinear::new(vb.pp("k_proj"), h, nkv * hd, bias)?,
            v_proj: LoraLinear::new(vb.pp("v_proj"), h, nkv * hd, bias)?,
            o_proj: LoraLinear::new(vb.pp("o_proj"), nh * hd, h, bias)?,
            num_heads: nh,
            num_kv_heads: nkv,
            head_dim: hd,
        })
    }

    fn forward(
        &self,
        xs: &Tensor,
        rope: (&Tensor, &Tensor),
        mask: Option<&Tensor>,
        cache: Option<(&mut Option<LayerCache>, usize)>,
        lora: AdapterMode,
    ) -> candle_core::Result<Tensor> {
        let (b, t, _) = xs.dims3()?;
        let (nh, nkv, hd) = (self.num_heads, self.num_kv_heads, self.head_dim);
        let q = self
            .q_proj
            .forward(xs, lora)?
            .reshape((b, t, nh, hd))?
            .transpose(1, 2)?;
        let k = self
            .k_proj
            .forward(xs, lora)?
            .reshape((b, t, nkv, hd))?
            .transpose(1, 2)?;
        let v = self
            .v_proj
            .forward(xs, lora)?
            .reshape((b, t, nkv, hd))?
            .transpose(1, 2)?
            .contiguous()?;
        let q = apply_rotary(&q, rope.0, rope.1)?;
        let k = apply_rotary(&k, rope.0, rope.1)?;
        let (k, v) = match cache {
            Some((slot, reserve)) => LayerCache::append(slot, &k, &v, reserve)?,
            None => (k, v),
        };
        // Without grouped heads the cache's strided views go straight into
        // the matmuls (rows of each head are contiguous): no copy.
        let (k, v) = if nh == nkv {
            (k, v)
        } else {
            (
                repeat_kv(k, nh / nkv)?.contiguous()?,
                repeat_kv(v, nh / nkv)?.contiguous()?,
            )
        };
        let scale = 1.0 / (hd as f64).sqrt();
        let probs = super::ops::attention::attention_weights(&q, &k, mask, scale)?;
        let out = probs
            .matmul(&v)?
            .transpose(1, 2)?
            .reshape((b, t, nh * hd))?;
        self.o_proj.forward(&out, lora)
    }
}

#[derive(Debug, Clone)]
struct Mlp {
    gate_proj: LoraLinear,
    up_proj: LoraLinear,
    down_proj: LoraLinear,
    act: Activation,
}

impl Mlp {
    fn new(vb: VarBuilder, cfg: &LlamaConfig) -> candle_core::Result<Self> {
        let (h, i, bias) = (cfg.hidden_size, cfg.intermediate_size, cfg.mlp_bias);
        Ok(Self {
            gate_proj: LoraLinear::new(vb.pp("gate_proj"), h, i, bias)?,
            up_proj: LoraLinear::new(vb.pp("up_proj"), h, i, bias)?,
            down_proj: LoraLinear::new(vb.pp("down_proj"), i, h, bias)?,
            act: cfg.hidden_act,
        })
    }

    fn forward(&self, xs: &Tensor, lora: AdapterMode) -> candle_core::Result<Tensor> {
        let gate = self.gate_proj.forward(xs, lora)?;
        let up = self.up_proj.forward(xs, lora)?;
        let h = if self.act == Activation::Silu {
            // One pass; in training it keeps only the product (ops::gated).
            super::ops::gated::silu_gate(&gate, &up)?
        } else {
            (self.act.apply(&gate)? * up)?
        };
        self.down_proj.forward(&h, lora)
    }
}

#[derive(Debug, Clone)]
struct DecoderLayer {
    self_attn: Attention,
    mlp: Mlp,
    input_layernorm: RmsNorm,
    post_attention_layernorm: RmsNorm,
}

impl DecoderLayer {
    fn new(vb: VarBuilder, cfg: &LlamaConfig) -> candle_core::Result<Self> {
        Ok(Self {
            self_attn: Attention::new(vb.pp("self_attn"), cfg)?,
            mlp: Mlp::new(vb.pp("mlp"), cfg)?,
            input_layernorm: RmsNorm::new(
                vb.pp("input_layernorm"),
                cfg.hidden_size,
                cfg.rms_norm_eps,
            )?,
            post_attention_layernorm: RmsNorm::new(
                vb.pp("post_attention_layernorm"),
                cfg.hidden_size,
                cfg.rms_norm_eps,
            )?,
        })
    }

    fn linear_mut(&mut self, target: TargetModule) -> &mut LoraLinear {
        match target {
            TargetModule::Q => &mut self.self_attn.q_proj,
            TargetModule::K => &mut self.self_attn.k_proj,
            TargetModule::V => &mut self.self_attn.v_proj,
            TargetModule::O => &mut self.self_attn.o_proj,
            TargetModule::Gate => &mut self.mlp.gate_proj,
            TargetModule::Up => &mut self.mlp.up_proj,
            TargetModule::Down => &mut self.mlp.down_proj,
        }
    }

    fn linear(&self, target: TargetModule) -> &LoraLinear {
        match target {
            TargetModule::Q => &self.self_attn.q_proj,
            TargetModule::K => &self.self_attn.k_proj,
            TargetModule::V => &self.self_attn.v_proj,
            TargetModule::O => &self.self_attn.o_proj,
            TargetModule::Gate => &self.mlp.gate_proj,
            TargetModule::Up => &self.mlp.up_proj,
            TargetModule::Down => &self.mlp.down_proj,
        }
    }

    fn forward(
        &self,
        xs: &Tensor,
        rope: (&Tensor, &Tensor),
        mask: Option<&Tensor>,
        cache: Option<(&mut Option<LayerCache>, usize)>,
        lora: AdapterMode,
    ) -> candle_core::Result<Tensor> {
        let h = self.input_layernorm.forward(xs)?;
        let h = self.self_attn.forward(&h, rope, mask, cache, lora)?;
        let xs = (xs + h)?;
        let h = self.post_attention_layernorm.forward(&xs)?;
        let h = self.mlp.forward(&h, lora)?;
        xs + h
    }
}

/// The Llama causal LM (`LlamaForCausalLM`), with optional LoRA adapters.
#[derive(Debug, Clone)]
pub struct Llama {
    embed_tokens: Tensor,
    layers: Vec<DecoderLayer>,
    norm: RmsNorm,
    lm_head: Tensor,
    rotary: Rotary,
    cfg: LlamaConfig,
    adapters_enabled: bool,
    grad_enabled: bool,
}

impl Llama {
    /// Builds the decoder from `vb` holding transformers' `LlamaForCausalLM`
    /// names: `model.embed_tokens.weight`, `model.layers.N...`,
    /// `model.norm.weight` and `lm_head.weight` (absent when
    /// `tie_word_embeddings`).
    pub fn new(vb: VarBuilder, cfg: &LlamaConfig) -> candle_core::Result<Self> {
        let m = vb.pp("model");
        let embed_tokens = m
            .pp("embed_tokens")
            .get((cfg.vocab_size, cfg.hidden_size), "weight")?;
        let layers = (0..cfg.num_hidden_layers)
            .map(|i| DecoderLayer::new(m.pp("layers").pp(i), cfg))
            .collect::<candle_core::Result<Vec<_>>>()?;
        let norm = RmsNorm::new(m.pp("norm"), cfg.hidden_size, cfg.rms_norm_eps)?;
        let lm_head = if cfg.tie_word_embeddings && !vb.contains_tensor("lm_head.weight") {
            embed_tokens.clone()
        } else {
            vb.pp("lm_head")
                .get((cfg.vocab_size, cfg.hidden_size), "weight")?
        };
        let rotary = Rotary::new(cfg, vb.device())?;
        Ok(Self {
            embed_tokens,
            layers,
            norm,
            lm_head,
            rotary,
            cfg: cfg.clone(),
            adapters_enabled: true,
            grad_enabled: true,
        })
    }

    /// The config the model was built from.
    pub fn config(&self) -> &LlamaConfig {
        &self.cfg
    }

    /// Device of the weights.
    pub fn device(&self) -> &Device {
        self.embed_tokens.device()
    }

    /// Compute dtype (of the weights).
    pub fn dtype(&self) -> DType {
        self.embed_tokens.dtype()
    }

    /// Token embeddings `(b, t, hidden)` for `input_ids` `(b, t)`.
    pub fn embed(&self, input_ids: &Tensor) -> Result<Tensor> {
        let (b, t) = input_ids.dims2()?;
        let ids = input_ids.to_dtype(DType::U32)?.flatten_all()?;
        Ok(self
            .embed_tokens
            .index_select(&ids, 0)?
            .reshape((b, t, self.cfg.hidden_size))?)
    }

    /// Runs the decoder on embeddings `(b, t, hidden)` and returns the final
    /// normalised hidden states `(b, t, hidden)` (apply [`Self::lm_head`]
    /// for logits; computing it only on the positions you need saves the
    /// `(t × vocab)` product).
    ///
    /// `attention_mask` is `(b, past + t)` with 1 for real tokens and 0 for
    /// padding (any dtype), covering the cached positions too; `None` means
    /// no padding. `cache`, when given, is read and extended.
    pub fn forward_hidden(
        &self,
        embeds: &Tensor,
        attention_mask: Option<&Tensor>,
        cache: Option<&mut KvCache>,
    ) -> Result<Tensor> {
        self.run(embeds, attention_mask, cache, self.adapter_mode())
    }

    /// The adapter mode the switches select.
    pub fn adapter_mode(&self) -> AdapterMode {
        match (self.adapters_enabled, self.grad_enabled) {
            (false, _) => AdapterMode::Off,
            (true, true) => AdapterMode::Train,
            (true, false) => AdapterMode::Infer,
        }
    }

    /// [`Self::forward_hidden`] with an explicit adapter mode (generation
    /// runs adapters detached).
    pub(crate) fn run(
        &self,
        embeds: &Tensor,
        attention_mask: Option<&Tensor>,
        mut cache: Option<&mut KvCache>,
        mode: AdapterMode,
    ) -> Result<Tensor> {
        let (b, t, _) = embeds.dims3()?;
        let past = cache.as_ref().map(|c| c.seq_len()).unwrap_or(0);
        if let Some(c) = cache.as_ref() {
            if c.layers.len() != self.layers.len() {
                return Err(ModelError::Input(format!(
                    "KV cache has {} layers, the model {}",
                    c.layers.len(),
                    self.layers.len()
                )));
            }
        }
        let mask_rows = match attention_mask {
            Some(m) => {
                let (mb, ms) = m.dims2()?;
                if mb != b || ms != past + t {
                    return Err(ModelError::Input(format!(
                        "attention mask is {mb}×{ms}, expected {b}×{} (batch × cached + new tokens)",
                        past + t
                    )));
                }
                Some(m.to_dtype(DType::F32)?.to_vec2::<f32>()?)
            }
            None => None,
        };
        let (positions, mask) = positions_and_mask(b, t, past, mask_rows.as_deref());
        let positions = Tensor::from_vec(positions, (b, t), self.device())?;
        let mask = match mask {
            Some(m) => Some(Tensor::from_vec(m, (b, 1, t, past + t), self.device())?),
            None => None,
        };
        let (cos, sin) = self.rotary.tables(&positions, self.dtype())?;
        let mut xs = embeds.to_dtype(self.dtype())?;
        for (i, layer) in self.layers.iter().enumerate() {
            let slot = cache.as_deref_mut().map(|c| (&mut c.layers[i], c.reserve));
            xs = layer.forward(&xs, (&cos, &sin), mask.as_ref(), slot, mode)?;
        }
        Ok(self.norm.forward(&xs)?)
    }

    /// Logits `(..., vocab)` from final hidden states.
    pub fn lm_head(&self, hidden: &Tensor) -> Result<Tensor> {
        Ok(super::lora::linear(hidden, &self.lm_head, None)?)
    }

    /// Logits `(b, t, vocab)` for every position of `embeds`.
    pub fn forward_embeds(
        &self,
        embeds: &Tensor,
        attention_mask: Option<&Tensor>,
        cache: Option<&mut KvCache>,
    ) -> Result<Tensor> {
        let hidden = self.forward_hidden(embeds, attention_mask, cache)?;
        self.lm_head(&hidden)
    }

    /// Logits `(b, t, vocab)` for every position of `input_ids` `(b, t)`.
    pub fn forward(
        &self,
        input_ids: &Tensor,
        attention_mask: Option<&Tensor>,
        cache: Option<&mut KvCache>,
    ) -> Result<Tensor> {
        let embeds = self.embed(input_ids)?;
        self.forward_embeds(&embeds, attention_mask, cache)
    }

    /// A fresh KV cache for this model.
    pub fn new_cache(&self) -> KvCache {
        KvCache::new(self.layers.len())
    }

    /// Number of decoder layers.
    pub fn num_layers(&self) -> usize {
        self.layers.len()
    }

    // ----- LoRA -------------------------------------------------------------

    /// Attaches fresh adapters (PEFT init, drawn from `seed`) to the
    /// `cfg.targets` linears of every layer, replacing existing ones.
    pub fn add_lora(&mut self, cfg: &LoraConfig, seed: u64) -> Result<()> {
        if cfg.r == 0 {
            return Err(ModelError::Input("LoRA rank must be positive".into()));
        }
        let device = self.device().clone();
        let mut rng = SplitMix64::new(seed);
        for layer in self.layers.iter_mut() {
            for &target in &cfg.targets {
                let linear = layer.linear_mut(target);
                let (in_dim, out_dim) = linear.dims();
                let adapter =
                    LoraAdapter::init(in_dim, out_dim, cfg.r, cfg.scale(), &mut rng, &device)?;
                linear.set_adapter(adapter);
            }
        }
        self.adapters_enabled = true;
        Ok(())
    }

    /// The linear layer at decoder path `layers.N.self_attn.q_proj` (etc.).
    pub fn linear_at(&self, path: &str) -> Option<&LoraLinear> {
        let (layer, target) = parse_module_path(path, self.layers.len())?;
        Some(self.layers[layer].linear(target))
    }

    /// Mutable access to the linear layer at a decoder path.
    pub fn linear_at_mut(&mut self, path: &str) -> Option<&mut LoraLinear> {
        let (layer, target) = parse_module_path(path, self.layers.len())?;
        Some(self.layers[layer].linear_mut(target))
    }

    /// Every attached adapter with its decoder path
    /// (`layers.N.self_attn.q_proj`), in layer then module order.
    pub fn adapters(&self) -> Vec<(String, &LoraAdapter)> {
        let mut out = Vec::new();
        for (i, layer) in self.layers.iter().enumerate() {
            for target in TargetModule::ALL {
                if let Some(a) = layer.linear(target).adapter() {
                    out.push((format!("layers.{i}.{}", target.path_in_layer()), a));
                }
            }
        }
        out
    }

    /// Removes every adapter.
    pub fn clear_adapters(&mut self) {
        for layer in self.layers.iter_mut() {
            for target in TargetModule::ALL {
                layer.linear_mut(target).take_adapter();
            }
        }
    }

    /// Turns adapters on or off for subsequent forward passes (off = the
    /// base model, e.g. DPO's reference policy).
    pub fn set_adapters_enabled(&mut self, enabled: bool) {
        self.adapters_enabled = enabled;
    }

    /// Whether adapters take part in forward passes.
    pub fn adapters_enabled(&self) -> bool {
        self.adapters_enabled
    }

    /// With `false`, adapters (when enabled) are used detached: forward
    /// passes keep no gradient graph and use the fused kernels, like
    /// `torch.no_grad()`. Default `true`. Generation is always detached.
    pub fn set_grad_enabled(&mut self, enabled: bool) {
        self.grad_enabled = enabled;
    }

    /// Whether forward passes track gradients of the adapters.
    pub fn grad_enabled(&self) -> bool {
        self.grad_enabled
    }

    /// Folds every adapter into its base weight and removes it.
    pub fn merge_adapters(&mut self) -> Result<()> {
        for layer in self.layers.iter_mut() {
            for target in TargetModule::ALL {
                layer.linear_mut(target).merge()?;
            }
        }
        Ok(())
    }
}

/// Parses `layers.N.self_attn.q_proj` / `layers.N.mlp.down_proj`.
pub(crate) fn parse_module_path(path: &str, num_layers: usize) -> Option<(usize, TargetModule)> {
    let rest = path.strip_prefix("layers.")?;
    let (index, module) = rest.split_once('.')?;
    let index: usize = index.parse().ok()?;
    let target = TargetModule::parse(module)?;
    (index < num_layers && target.path_in_layer() == module).then_some((index, target))
}

/// Positions `(b·t)` and the additive mask `(b·t·(past+t))` (or `None`
/// when no mask is needed) for `t` new tokens after `past` cached ones.
///
/// A query attends to keys at or before its own position that are real
/// tokens; a padding query attends to itself only, so no row is all
/// `-inf` (which would give NaN).
fn positions_and_mask(
    b: usize,
    t: usize,
    past: usize,
    mask: Option<&[Vec<f32>]>,
) -> (Vec<u32>, Option<Vec<f32>>) {
    let total = past + t;
    let mut positions = Vec::with_capacity(b * t);
    match mask {
        None => {
            for _ in 0..b {
                positions.extend((past..total).map(|p| p as u32));
            }
            if t == 1 {
                return (positions, None);
            }
            let mut m = vec![0f32; b * t * total];
            for bi in 0..b {
                for i in 0..t {
                    for j in (past + i + 1)..total {
                        m[(bi * t + i) * total + j] = f32::NEG_INFINITY;
                    }
                }
            }
            (positions, Some(m))
        }
        Some(rows) => {
            let mut m = vec![0f32; b * t * total];
            for (bi, row) in rows.iter().enumerate() {
                let mut seen = 0i64;
                let mut cum = Vec::with_capacity(total);
                for v in row.iter() {
                    if *v != 0.0 {
                        seen += 1;
                    }
                    cum.push((seen - 1).max(0) as u32);
                }
                positions.extend_from_slice(&cum[past..total]);
                for i in 0..t {
                    let q = past + i;
                    for j in 0..total {
                        let allowed = j == q || (j < q && row[j] != 0.0);
                        if !allowed {
                            m[(bi * t + i) * total + j] = f32::NEG_INFINITY;
                        }
                    }
                }
            }
            (positions, Some(m))
        }
    }
}

/// Log-probability of each target token: `log_softmax(logits)[target]`.
/// `logits` is `(b, t, vocab)`, `targets` `(b, t)` (any integer dtype);
/// returns `(b, t)` in `f32`. Differentiable.
pub fn token_logprobs(logits: &Tensor, targets: &Tensor) -> Result<Tensor> {
    let logits = logits.to_dtype(DType::F32)?;
    let logp = candle_nn::ops::log_softmax(&logits, D::Minus1)?;
    let idx = targets.to_dtype(DType::U32)?.unsqueeze(D::Minus1)?;
    Ok(logp
        .gather(&idx.contiguous()?, D::Minus1)?
        .squeeze(D::Minus1)?)
}

/// Per-token log-probabilities of a sequence under its own logits:
/// position `i` of the result is `log p(ids[i+1] | ids[..=i])`. `logits`
/// `(b, t, vocab)`, `input_ids` `(b, t)`; returns `(b, t-1)`.
pub fn next_token_logprobs(logits: &Tensor, input_ids: &Tensor) -> Result<Tensor> {
    let t = input_ids.dim(1)?;
    if t < 2 {
        return Err(ModelError::Input(
            "next-token log-probabilities need at least two tokens".into(),
        ));
    }
    let logits = logits.narrow(1, 0, t - 1)?;
    let targets = input_ids.narrow(1, 1, t - 1)?;
    token_logprobs(&logits, &targets)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_follow_the_mask() {
        let rows = vec![vec![0.0, 0.0, 1.0, 1.0], vec![1.0, 1.0, 1.0, 0.0]];
        let (pos, mask) = positions_and_mask(2, 4, 0, Some(&rows));
        assert_eq!(pos, vec![0, 0, 0, 1, 0, 1, 2, 2]);
        let m = mask.unwrap();
        // Row 0, query 3 sees keys 2 and 3 only.
        let q = &m[3 * 4..4 * 4];
        assert_eq!(q[0], f32::NEG_INFINITY);
        assert_eq!(q[1], f32::NEG_INFINITY);
        assert_eq!((q[2], q[3]), (0.0, 0.0));
        // Row 0, query 0 (padding) sees itself only.
        assert_eq!(
            &m[0..4],
            &[0.0, f32::NEG_INFINITY, f32::NEG_INFINITY, f32::NEG_INFINITY]
        );
    }

    #[test]
    fn module_paths() {
        assert_eq!(
            parse_module_path("layers.3.self_attn.q_proj", 4),
            Some((3, TargetModule::Q))
        );
        assert_eq!(parse_module_path("layers.4.self_attn.q_proj", 4), None);
        assert_eq!(parse_module_path("layers.0.mlp.q_proj", 4), None);
        assert_eq!(
            parse_module_path("layers.0.mlp.down_proj", 1),
            Some((0, TargetModule::Down))
        );
    }
}
