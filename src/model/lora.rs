//! LoRA: low-rank adapters on frozen linear layers, saved and loaded in
//! PEFT's file layout.
//!
//! Follows Hu et al., "LoRA: Low-Rank Adaptation of Large Language Models"
//! (2021) as implemented by Hugging Face PEFT (`peft/tuners/lora/layer.py`):
//! `y = x Wᵀ + b + (α / r) · (x Aᵀ) Bᵀ`, with `A` (r × in) drawn
//! kaiming-uniform (`a = √5`, i.e. U(±1/√in)) and `B` (out × r) zero, so a
//! fresh adapter leaves the model unchanged; `use_rslora` scales by `α/√r`.
//!
//! Design choices:
//! - The base weight is a plain [`Tensor`] shared with the checkpoint (never
//!   copied, never a [`Var`]), so the optimizer only ever sees `A` and `B`.
//! - Adapters are kept in `f32` even when the base model runs in `bf16`
//!   (PEFT's `autocast_adapter_dtype`): tiny learning rates would otherwise
//!   round away.
//! - Switching adapters off is a flag passed down by the model, not a second
//!   copy of the weights: the DPO reference model is the same model with
//!   adapters off.
//! - Dropout on the adapter input is not applied (PEFT's `lora_dropout` is
//!   recorded in the config file only).
//!
//! Files: `adapter_config.json` and `adapter_model.safetensors` with PEFT's
//! key names, `base_model.model.<module path>.lora_{A,B}.weight`. PEFT 0.21
//! with transformers 5 names LLaVA's language-model modules
//! `model.language_model.layers.N...` ([`PeftLayout::Current`]); PEFT with
//! transformers 4.x used `language_model.model.layers.N...`
//! ([`PeftLayout::Legacy`]). Both are read; [`PeftLayout::Current`] is
//! written by default.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::Path;

use candle_core::{DType, Device, Tensor, Var};
use serde::{Deserialize, Serialize};

pub(crate) use super::ops::linear::linear;
use super::ops::linear::lora_linear;
use super::{ModelError, Result};
use crate::core::rng::SplitMix64;

/// File name of PEFT's adapter weights.
pub const ADAPTER_WEIGHTS_FILE: &str = "adapter_model.safetensors";
/// File name of PEFT's adapter config.
pub const ADAPTER_CONFIG_FILE: &str = "adapter_config.json";

pub use crate::core::runs::config::TargetModule;

/// Hyper-parameters of a LoRA adapter set.
#[derive(Debug, Clone, PartialEq)]
pub struct LoraConfig {
    /// Rank `r`.
    pub r: usize,
    /// `lora_alpha`.
    pub alpha: f64,
    /// Which decoder linears get adapters (all layers).
    pub targets: BTreeSet<TargetModule>,
    /// Scale by `α/√r` instead of `α/r` (rsLoRA).
    pub use_rslora: bool,
    /// `lora_dropout`, recorded in the config file; not applied here.
    pub dropout: f64,
}

impl LoraConfig {
    /// `r`, `α` and the targets, other fields at PEFT's defaults.
    pub fn new(r: usize, alpha: f64, targets: impl IntoIterator<Item = TargetModule>) -> Self {
        Self {
            r,
            alpha,
            targets: targets.into_iter().collect(),
            use_rslora: false,
            dropout: 0.0,
        }
    }

    /// The factor applied to `B A x`.
    pub fn scale(&self) -> f64 {
        scale_for(self.alpha, self.r, self.use_rslora)
    }
}

fn scale_for(alpha: f64, r: usize, use_rslora: bool) -> f64 {
    let r = r.max(1) as f64;
    if use_rslora {
        alpha / r.sqrt()
    } else {
        alpha / r
    }
}

/// One adapter: `A` (r × in) and `B` (out × r), trainable, in `f32`.
#[derive(Debug, Clone)]
pub struct LoraAdapter {
    /// `lora_A.weight`, shape `(r, in)`.
    pub a: Var,
    /// `lora_B.weight`, shape `(out, r)`.
    pub b: Var,
    /// `α/r` (or `α/√r`).
    pub scale: f64,
}

impl LoraAdapter {
    /// A fresh adapter as PEFT initialises one: `A` kaiming-uniform
    /// (U(±1/√in)), `B` zero. Drawn from `rng` so runs are reproducible.
    pub fn init(
        in_dim: usize,
        out_dim: usize,
        r: usize,
        scale: f64,
        rng: &mut SplitMix64,
        device: &Device,
    ) -> Result<Self> {
        let bound = 1.0 / (in_dim.max(1) as f32).sqrt();
        let a: Vec<f32> = (0..r * in_dim)
            .map(|_| rng.range_f32(-bound, bound))
            .collect();
        let a = Var::from_tensor(&Tensor::from_vec(a, (r, in_dim), device)?)?;
        let b = Var::zeros((out_dim, r), DType::F32, device)?;
        Ok(Self { a, b, scale })
    }

    /// An adapter holding the given weights (converted to `f32`).
    pub fn from_weights(a: &Tensor, b: &Tensor, scale: f64) -> Result<Self> {
        Ok(Self {
            a: Var::from_tensor(&a.to_dtype(DType::F32)?)?,
            b: Var::from_tensor(&b.to_dtype(DType::F32)?)?,
            scale,
        })
    }

    /// Rank.
    pub fn rank(&self) -> usize {
        self.a.as_tensor().dims().first().copied().unwrap_or(0)
    }

    /// `scale · B A`, shape `(out, in)`, in `f32`.
    pub fn delta_weight(&self) -> Result<Tensor> {
        Ok((self.b.as_tensor().matmul(self.a.as_tensor())? * self.scale)?)
    }
}

/// A linear layer `y = x Wᵀ + b` with an optional LoRA adapter.
#[derive(Debug, Clone)]
pub struct LoraLinear {
    weight: Tensor,
    bias: Option<Tensor>,
    adapter: Option<LoraAdapter>,
}

impl LoraLinear {
    /// Loads `weight` (out × in) and, when `bias`, `bias` from `vb`.
    pub fn new(
        vb: candle_nn::VarBuilder,
        in_dim: usize,
        out_dim: usize,
        bias: bool,
    ) -> candle_core::Result<Self> {
        let weight = vb.get((out_dim, in_dim), "weight")?;
        let bias = if bias {
            Some(vb.get(out_dim, "bias")?)
        } else {
            None
        };
        Ok(Self::from_weights(weight, bias))
    }

    /// A layer around existing tensors.
    pub fn from_weights(weight: Tensor, bias: Option<Tensor>) -> Self {
        Self {
            weight,
            bias,
            adapter: None,
        }
    }

    /// The frozen base weight `(out, in)`.
    pub fn weight(&self) -> &Tensor {
        &self.weight
    }

    /// `(in, out)` dimensions.
    pub fn dims(&self) -> (usize, usize) {
        let d = self.weight.dims();
        (
            d.get(1).copied().unwrap_or(0),
            d.first().copied().unwrap_or(0),
        )
    }

    /// The adapter, if one is attached.
    pub fn adapter(&self) -> Option<&LoraAdapter> {
        self.adapter.as_ref()
    }

    /// Attaches (or replaces) the adapter.
    pub fn set_adapter(&mut self, adapter: LoraAdapter) {
        self.adapter = Some(adapter);
    }

    /// Removes and returns the adapter.
    pub fn take_adapter(&mut self) -> Option<LoraAdapter> {
        self.adapter.take()
    }

    /// Folds the adapter into the base weight (`W += scale · B A`) and
    /// removes it, as PEFT's `merge_and_unload` does. The base tensor is
    /// replaced, not written in place, so other holders of the old tensor
    /// are unaffected.
    pub fn merge(&mut self) -> Result<()> {
        if let Some(adapter) = self.adapter.take() {
            let delta = adapter.delta_weight()?.to_dtype(self.weight.dtype())?;
            self.weight = (&self.weight + delta)?;
        }
        Ok(())
    }

    /// Applies the layer to `x` (`(..., in)`); the adapter contributes
    /// according to `mode`.
    pub fn forward(&self, x: &Tensor, mode: AdapterMode) -> candle_core::Result<Tensor> {
        let adapter = match (&self.adapter, mode) {
            (Some(adapter), AdapterMode::Train | AdapterMode::Infer) => adapter,
            _ => return linear(x, &self.weight, self.bias.as_ref()),
        };
        if mode == AdapterMode::Train {
            // One kept output instead of three where it applies (see
            // `lora_linear`).
            let fused = lora_linear(
                x,
                &self.weight,
                adapter.a.as_tensor(),
                adapter.b.as_tensor(),
                adapter.scale,
            )?;
            if let Some(y) = fused {
                return match &self.bias {
                    Some(bias) => y.broadcast_add(bias),
                    None => Ok(y),
                };
            }
        }
        let y = linear(x, &self.weight, self.bias.as_ref())?;
        let (a, b) = match mode {
            AdapterMode::Train => (adapter.a.as_tensor().clone(), adapter.b.as_tensor().clone()),
            _ => (
                adapter.a.as_detached_tensor(),
                adapter.b.as_detached_tensor(),
            ),
        };
        let xf = x.to_dtype(DType::F32)?;
        let h = linear(&xf, &a, None)?;
        // Scaling B (out × r) instead of the output (tokens × out) is cheaper.
        let h = linear(&h, &(b * adapter.scale)?, None)?;
        let dtype = y.dtype();
        y + h.to_dtype(dtype)?
    }
}

/// How adapters take part in a forward pass.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AdapterMode {
    /// Base weights only (DPO's reference policy).
    Off,
    /// Adapters on, tracked for gradients.
    Train,
    /// Adapters on, detached: no gradient graph is kept and the fused
    /// (faster) kernels are used (evaluation, generation).
    Infer,
}

/// How LLaVA's language-model modules are named in PEFT adapter files.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PeftLayout {
    /// `base_model.model.model.language_model.layers.N...` (PEFT ≥ 0.15
    /// with transformers ≥ 4.52, including transformers 5).
    #[default]
    Current,
    /// `base_model.model.language_model.model.layers.N...` (transformers
    /// < 4.52).
    Legacy,
}

impl PeftLayout {
    /// Key prefix up to and including the decoder (`...layers` follows).
    pub fn decoder_prefix(self) -> &'static str {
        match self {
            Self::Current => "base_model.model.model.language_model.",
            Self::Legacy => "base_model.model.language_model.model.",
        }
    }

    /// The PEFT key of an adapter matrix (`"A"` or `"B"`) of the decoder
    /// module at `module_path` (`layers.0.self_attn.q_proj`).
    pub fn key(self, module_path: &str, matrix: &str) -> String {
        format!(
            "{}{module_path}.lora_{matrix}.weight",
            self.decoder_prefix()
        )
    }
}

/// `target_modules` as PEFT writes it: a list of names or one regex.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum TargetModules {
    /// A list of module-name suffixes.
    List(Vec<String>),
    /// A regex matched against full module names.
    Regex(String),
}

/// PEFT's `adapter_config.json` (the fields this crate reads or writes;
/// others are ignored on read).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AdapterConfigFile {
    /// Always `"LORA"`.
    pub peft_type: String,
    /// PEFT task type (`"CAUSAL_LM"`).
    #[serde(default)]
    pub task_type: Option<String>,
    /// The base model this adapter was trained on.
    #[serde(default)]
    pub base_model_name_or_path: Option<String>,
    /// Rank.
    pub r: usize,
    /// `lora_alpha`.
    #[serde(default = "d_alpha")]
    pub lora_alpha: f64,
    /// `lora_dropout`.
    #[serde(default)]
    pub lora_dropout: f64,
    /// Adapted modules.
    #[serde(default)]
    pub target_modules: Option<TargetModules>,
    /// `"none"` only.
    #[serde(default = "d_bias")]
    pub bias: String,
    /// Must be false.
    #[serde(default)]
    pub fan_in_fan_out: bool,
    /// rsLoRA scaling.
    #[serde(default)]
    pub use_rslora: bool,
    /// Must be false (DoRA is not supported).
    #[serde(default)]
    pub use_dora: bool,
    /// Must be false.
    #[serde(default)]
    pub lora_bias: bool,
    /// Must be empty.
    #[serde(default)]
    pub modules_to_save: Option<Vec<String>>,
    /// Per-module ranks (read from the tensor shapes).
    #[serde(default)]
    pub rank_pattern: BTreeMap<String, serde_json::Value>,
    /// Per-module alphas (must be empty).
    #[serde(default)]
    pub alpha_pattern: BTreeMap<String, serde_json::Value>,
    /// PEFT writes `true` for saved adapters.
    #[serde(default)]
    pub inference_mode: bool,
    /// PEFT's init switch (informational).
    #[serde(default = "d_true_value")]
    pub init_lora_weights: serde_json::Value,
    /// Informational.
    #[serde(default)]
    pub layers_to_transform: Option<serde_json::Value>,
    /// Informational.
    #[serde(default)]
    pub layers_pattern: Option<serde_json::Value>,
    /// Informational.
    #[serde(default)]
    pub revision: Option<String>,
    /// Informational.
    #[serde(default)]
    pub exclude_modules: Option<serde_json::Value>,
}

fn d_alpha() -> f64 {
    8.0
}
fn d_bias() -> String {
    "none".into()
}
fn d_true_value() -> serde_json::Value {
    serde_json::Value::Bool(true)
}

impl AdapterConfigFile {
    /// The config PEFT would write for `cfg` on LLaVA's language model.
    pub fn for_llava(cfg: &LoraConfig, base_model: Option<&str>) -> Self {
        let names: Vec<&str> = cfg.targets.iter().map(|t| t.name()).collect();
        Self {
            peft_type: "LORA".into(),
            task_type: Some("CAUSAL_LM".into()),
            base_model_name_or_path: base_model.map(str::to_string),
            r: cfg.r,
            lora_alpha: cfg.alpha,
            lora_dropout: cfg.dropout,
            // A regex: a plain list would also match the CLIP tower's
            // q_proj/k_proj/v_proj in PEFT.
            target_modules: Some(TargetModules::Regex(format!(
                r".*language_model.*\.({})",
                names.join("|")
            ))),
            bias: "none".into(),
            fan_in_fan_out: false,
            use_rslora: cfg.use_rslora,
            use_dora: false,
            lora_bias: false,
            modules_to_save: None,
            rank_pattern: BTreeMap::new(),
            alpha_pattern: BTreeMap::new(),
            inference_mode: true,
            init_lora_weights: serde_json::Value::Bool(true),
            layers_to_transform: None,
            layers_pattern: None,
            revision: None,
            exclude_modules: None,
        }
    }

    /// Rejects settings this implementation cannot reproduce.
    fn check_supported(&self) -> std::result::Result<(), String> {
        if self.peft_type != "LORA" {
            return Err(format!(
                "peft_type is {:?}; only LORA adapters are supported",
                self.peft_type
            ));
        }
        if self.use_dora {
            return Err("use_dora is true; DoRA adapters are not supported".into());
        }
        if self.bias != "none" || self.lora_bias {
            return Err(format!(
                "bias is {:?} (lora_bias {}); only bias \"none\" is supported",
                self.bias, self.lora_bias
            ));
        }
        if self.fan_in_fan_out {
            return Err("fan_in_fan_out is true; only nn.Linear layers are supported".into());
        }
        if self.modules_to_save.as_ref().is_some_and(|m| !m.is_empty()) {
            return Err(
                "modules_to_save is not empty; fully-trained extra modules are not supported"
                    .into(),
            );
        }
        if !self.alpha_pattern.is_empty() {
            return Err("alpha_pattern is not empty; per-module alphas are not supported".into());
        }
        Ok(())
    }
}

/// An adapter file read from disk: the config plus `(A, B)` per decoder
/// module path (`layers.0.self_attn.q_proj`).
#[derive(Debug)]
pub struct AdapterWeights {
    /// The parsed config file.
    pub config: AdapterConfigFile,
    /// Which key layout the file used.
    pub layout: PeftLayout,
    /// `(A, B)` per decoder module path.
    pub modules: BTreeMap<String, (Tensor, Tensor)>,
    /// rsLoRA scaling (`α/√r` instead of `α/r`; `r` from each module's own
    /// `A`).
    pub use_rslora: bool,
}

impl AdapterWeights {
    /// The scale for an adapter of rank `r`.
    pub fn scale(&self, r: usize) -> f64 {
        scale_for(self.config.lora_alpha, r, self.use_rslora)
    }

    /// The target modules present in the file.
    pub fn targets(&self) -> BTreeSet<TargetModule> {
        self.modules
            .keys()
            .filter_map(|p| TargetModule::parse(p))
            .collect()
    }
}

/// Reads a PEFT adapter folder (`adapter_config.json` +
/// `adapter_model.safetensors`).
pub fn read_adapter(dir: &Path, device: &Device) -> Result<AdapterWeights> {
    if !dir.is_dir() {
        return Err(ModelError::MissingPath {
            path: dir.to_path_buf(),
            what: "adapter folder",
        });
    }
    let config_path = dir.join(ADAPTER_CONFIG_FILE);
    let text = std::fs::read_to_string(&config_path).map_err(|source| ModelError::Io {
        path: config_path.clone(),
        source,
    })?;
    let config: AdapterConfigFile =
        serde_json::from_str(&text).map_err(|source| ModelError::Json {
            path: config_path.clone(),
            source,
        })?;
    config
        .check_supported()
        .map_err(|message| ModelError::Adapter {
            path: config_path.clone(),
            message,
        })?;

    let weights_path = dir.join(ADAPTER_WEIGHTS_FILE);
    let adapter_err = |message: String| ModelError::Adapter {
        path: weights_path.clone(),
        message,
    };
    if !weights_path.is_file() {
        return Err(ModelError::MissingPath {
            path: weights_path,
            what: "adapter weights",
        });
    }
    let tensors = candle_core::safetensors::load(&weights_path, device).map_err(|source| {
        ModelError::Weights {
            path: weights_path.clone(),
            source,
        }
    })?;

    let mut layout: Option<PeftLayout> = None;
    let mut a_parts: HashMap<String, Tensor> = HashMap::new();
    let mut b_parts: HashMap<String, Tensor> = HashMap::new();
    for (key, tensor) in tensors {
        let (module, is_a) = if let Some(m) = key.strip_suffix(".lora_A.weight") {
            (m, true)
        } else if let Some(m) = key.strip_suffix(".lora_B.weight") {
            (m, false)
        } else {
            return Err(adapter_err(format!(
                "tensor {key:?} is not a LoRA A/B matrix of a linear layer \
                 (embedding adapters, DoRA magnitudes and modules_to_save are not supported)"
            )));
        };
        let module = format!("{module}.");
        let (found, rest) = [PeftLayout::Current, PeftLayout::Legacy]
            .into_iter()
            .find_map(|l| module.strip_prefix(l.decoder_prefix()).map(|r| (l, r)))
            .ok_or_else(|| {
                adapter_err(format!(
                    "tensor {key:?} adapts a module outside the language model's decoder layers; \
                     only LoRA on the language model is supported"
                ))
            })?;
        if layout.is_some_and(|l| l != found) {
            return Err(adapter_err(
                "the file mixes the legacy (language_model.model.) and current \
                 (model.language_model.) key layouts"
                    .into(),
            ));
        }
        layout = Some(found);
        let path = rest.trim_end_matches('.').to_string();
        if is_a {
            a_parts.insert(path, tensor);
        } else {
            b_parts.insert(path, tensor);
        }
    }
    let mut modules = BTreeMap::new();
    for (path, a) in a_parts {
        let b = b_parts
            .remove(&path)
            .ok_or_else(|| adapter_err(format!("module {path:?} has lora_A but no lora_B")))?;
        modules.insert(path, (a, b));
    }
    if let Some(path) = b_parts.keys().next() {
        return Err(adapter_err(format!(
            "module {path:?} has lora_B but no lora_A"
        )));
    }
    if modules.is_empty() {
        return Err(adapter_err("the file holds no LoRA weights".into()));
    }
    Ok(AdapterWeights {
        use_rslora: config.use_rslora,
        config,
        layout: layout.unwrap_or_default(),
        modules,
    })
}

/// Writes a PEFT adapter folder: `adapter_config.json` and
/// `adapter_model.safetensors` with keys in `layout`. `modules` maps decoder
/// module paths (`layers.0.self_attn.q_proj`) to their adapters. Each file
/// is written atomically, so a crash never leaves half a file under the
/// final name.
pub fn write_adapter(
    dir: &Path,
    config: &AdapterConfigFile,
    modules: &[(String, &LoraAdapter)],
    layout: PeftLayout,
) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|source| ModelError::Io {
        path: dir.to_path_buf(),
        source,
    })?;
    let mut tensors: HashMap<String, Tensor> = HashMap::new();
    for (path, adapter) in modules {
        tensors.insert(layout.key(path, "A"), adapter.a.as_tensor().detach());
        tensors.insert(layout.key(path, "B"), adapter.b.as_tensor().detach());
    }
    let weights_path = dir.join(ADAPTER_WEIGHTS_FILE);
    save_safetensors(&tensors, &weights_path)?;
    let config_path = dir.join(ADAPTER_CONFIG_FILE);
    let text = serde_json::to_string_pretty(config).map_err(|source| ModelError::Json {
        path: config_path.clone(),
        source,
    })?;
    crate::core::atomic::write_atomic(&config_path, (text + "\n").as_bytes()).map_err(|source| {
        ModelError::Io {
            path: config_path,
            source,
        }
    })
}

/// Saves tensors as a safetensors file, atomically
/// ([`crate::core::atomic::write_atomic_with`]).
pub fn save_safetensors(tensors: &HashMap<String, Tensor>, path: &Path) -> Result<()> {
    crate::core::atomic::write_atomic_with(path, |tmp| {
        candle_core::safetensors::save(tensors, tmp).map_err(std::io::Error::other)
    })
    .map_err(|e| ModelError::Weights {
        path: path.to_path_buf(),
        source: candle_core::Error::Msg(e.to_string()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fresh_adapter_is_identity_and_merge_matches_forward() {
        let dev = Device::Cpu;
        let mut rng = SplitMix64::new(7);
        let w = Tensor::from_vec(
            (0..12).map(|i| i as f32 * 0.1 - 0.5).collect::<Vec<_>>(),
            (3, 4),
            &dev,
        )
        .unwrap();
        let mut layer = LoraLinear::from_weights(w.clone(), None);
        let x = Tensor::from_vec(
            (0..8).map(|i| (i as f32).sin()).collect::<Vec<_>>(),
            (1, 2, 4),
            &dev,
        )
        .unwrap();
        let base = layer.forward(&x, AdapterMode::Train).unwrap();
        let adapter = LoraAdapter::init(4, 3, 2, 2.0, &mut rng, &dev).unwrap();
        let bound = 0.5f32;
        let a = adapter
            .a
            .as_tensor()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        assert!(a.iter().all(|v| v.abs() <= bound) && a.iter().any(|v| *v != 0.0));
        layer.set_adapter(adapter.clone());
        let fresh = layer.forward(&x, AdapterMode::Train).unwrap();
        let diff = (fresh - &base).unwrap().abs().unwrap().max_all().unwrap();
        assert_eq!(diff.to_scalar::<f32>().unwrap(), 0.0);

        adapter
            .b
            .set(&Tensor::new(&[[0.5f32, -1.0], [0.25, 0.0], [1.0, 2.0]], &dev).unwrap())
            .unwrap();
        let with = layer.forward(&x, AdapterMode::Train).unwrap();
        let infer = layer.forward(&x, AdapterMode::Infer).unwrap();
        assert!(with.track_op() && !infer.track_op());
        let without = layer.forward(&x, AdapterMode::Off).unwrap();
        let off = (&without - &base)
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap();
        assert_eq!(off.to_scalar::<f32>().unwrap(), 0.0);
        let on = (&with - &base).unwrap().abs().unwrap().max_all().unwrap();
        assert!(on.to_scalar::<f32>().unwrap() > 1e-3);
        layer.merge().unwrap();
        assert!(layer.adapter().is_none());
        let merged = layer.forward(&x, AdapterMode::Train).unwrap();
        let d = (merged - with).unwrap().abs().unwrap().max_all().unwrap();
        assert!(d.to_scalar::<f32>().unwrap() < 1e-5);
        // The original base tensor is untouched.
        let w0 = w.to_vec2::<f32>().unwrap();
        assert!((w0[0][0] - (-0.5)).abs() < 1e-7 && (w0[2][3] - 0.6).abs() < 1e-6);
    }

    #[test]
    fn frozen_matmul_gives_input_gradients_only() {
        let dev = Device::Cpu;
        let w = Tensor::new(&[[1f32, 2.0, 3.0], [-1.0, 0.5, 0.0]], &dev).unwrap();
        let x = Var::new(&[[0.5f32, -1.0, 2.0], [1.0, 1.0, 1.0]], &dev).unwrap();
        let y = linear(x.as_tensor(), &w, None).unwrap();
        let reference = x.as_tensor().matmul(&w.t().unwrap()).unwrap();
        assert_eq!(
            y.to_vec2::<f32>().unwrap(),
            reference.to_vec2::<f32>().unwrap()
        );
        let grads = (y.sqr().unwrap().sum_all().unwrap()).backward().unwrap();
        let reference_grads = (reference.sqr().unwrap().sum_all().unwrap())
            .backward()
            .unwrap();
        assert_eq!(
            grads.get(x.as_tensor()).unwrap().to_vec2::<f32>().unwrap(),
            reference_grads
                .get(x.as_tensor())
                .unwrap()
                .to_vec2::<f32>()
                .unwrap()
        );
        assert!(grads.get(&w).is_none());
    }

    #[test]
    fn target_names_round_trip() {
        for t in TargetModule::ALL {
            assert_eq!(TargetModule::parse(t.name()), Some(t));
            assert_eq!(TargetModule::parse(t.path_in_layer()), Some(t));
        }
        assert_eq!(TargetModule::parse("lm_head"), None);
        assert_eq!(
            PeftLayout::Current.key("layers.0.self_attn.q_proj", "A"),
            "base_model.model.model.language_model.layers.0.self_attn.q_proj.lora_A.weight"
        );
        assert_eq!(
            PeftLayout::Legacy.key("layers.1.mlp.down_proj", "B"),
            "base_model.model.language_model.model.layers.1.mlp.down_proj.lora_B.weight"
        );
    }

    #[test]
    fn unsupported_configs_are_refused() {
        let mut cfg =
            AdapterConfigFile::for_llava(&LoraConfig::new(4, 8.0, [TargetModule::Q]), None);
        assert!(cfg.check_supported().is_ok());
        cfg.use_dora = true;
        assert!(cfg.check_supported().unwrap_err().contains("DoRA"));
    }
}
