//! serde mirrors of the Hugging Face `config.json` files the models load.
//!
//! `LlavaForConditionalGeneration` (llava-hf) nests a Llama `text_config` and
//! a CLIP `vision_config`. The hub files omit every field that equals the
//! transformers default (llava-1.5-7b-hf's `text_config` lists only
//! `max_position_embeddings`, `rms_norm_eps` and `vocab_size`), so every
//! field here has the default of the matching transformers config class
//! (`LlamaConfig`, `CLIPVisionConfig`, `LlavaConfig`). Both the transformers
//! 4.x spelling (`rope_theta`, `rope_scaling`) and the 5.x one
//! (`rope_parameters`) are understood.

use std::path::Path;

use serde::{Deserialize, Serialize};

use super::{ModelError, Result};

/// An activation function named by a config (`hidden_act`,
/// `projector_hidden_act`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Activation {
    /// `x * sigmoid(x)` (Llama's MLP).
    Silu,
    /// Exact (erf) GELU, PyTorch's `nn.GELU()` (LLaVA's projector).
    Gelu,
    /// Tanh-approximated GELU.
    #[serde(alias = "gelu_new", alias = "gelu_fast")]
    GeluPytorchTanh,
    /// `x * sigmoid(1.702 x)` (OpenAI CLIP).
    QuickGelu,
    /// `max(x, 0)`.
    Relu,
}

impl Activation {
    /// Applies the activation.
    pub fn apply(self, xs: &candle_core::Tensor) -> candle_core::Result<candle_core::Tensor> {
        match self {
            Self::Silu => xs.silu(),
            Self::Gelu => xs.gelu_erf(),
            Self::GeluPytorchTanh => xs.gelu(),
            Self::QuickGelu => super::ops::clip::quick_gelu(xs),
            Self::Relu => xs.relu(),
        }
    }
}

/// Rotary-embedding parameters: transformers 4.x `rope_scaling` or 5.x
/// `rope_parameters` (which also carries `rope_theta`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RopeParameters {
    /// `default`, `linear`, `llama3`, ... (5.x and late 4.x spelling).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rope_type: Option<String>,
    /// Early 4.x spelling of `rope_type`.
    #[serde(default, rename = "type", skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    /// Base of the rotary frequencies (5.x puts it here).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rope_theta: Option<f64>,
    /// Scaling factor (`linear`, `llama3`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub factor: Option<f64>,
    /// `llama3`: low-frequency factor.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub low_freq_factor: Option<f64>,
    /// `llama3`: high-frequency factor.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub high_freq_factor: Option<f64>,
    /// `llama3`: context length the model was pre-trained with.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub original_max_position_embeddings: Option<usize>,
}

impl RopeParameters {
    /// The scaling type, `"default"` when none is named.
    pub fn kind(&self) -> &str {
        self.rope_type
            .as_deref()
            .or(self.kind.as_deref())
            .unwrap_or("default")
    }
}

/// One token id or several (`eos_token_id` is a list in some configs).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum TokenIds {
    /// A single id.
    One(u32),
    /// Several ids.
    Many(Vec<u32>),
}

impl TokenIds {
    /// The ids as a list.
    pub fn to_vec(&self) -> Vec<u32> {
        match self {
            Self::One(id) => vec![*id],
            Self::Many(ids) => ids.clone(),
        }
    }
}

/// transformers' `LlamaConfig` (the fields the decoder uses), with its
/// defaults.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LlamaConfig {
    /// Width of the residual stream.
    #[serde(default = "d_4096")]
    pub hidden_size: usize,
    /// Width of the MLP.
    #[serde(default = "d_11008")]
    pub intermediate_size: usize,
    /// Number of decoder layers.
    #[serde(default = "d_32")]
    pub num_hidden_layers: usize,
    /// Number of query heads.
    #[serde(default = "d_32")]
    pub num_attention_heads: usize,
    /// Number of key/value heads (GQA); `num_attention_heads` when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub num_key_value_heads: Option<usize>,
    /// Per-head width; `hidden_size / num_attention_heads` when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub head_dim: Option<usize>,
    /// Vocabulary size (rows of `embed_tokens` and `lm_head`).
    #[serde(default = "d_32000")]
    pub vocab_size: usize,
    /// RMSNorm epsilon.
    #[serde(default = "d_1e_6")]
    pub rms_norm_eps: f64,
    /// Rotary base (4.x spelling; 5.x keeps it in `rope_parameters`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rope_theta: Option<f64>,
    /// Rotary scaling (4.x spelling).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rope_scaling: Option<RopeParameters>,
    /// Rotary parameters (5.x spelling).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rope_parameters: Option<RopeParameters>,
    /// Longest context the rotary tables are built for (longer inputs are
    /// still accepted; the table grows).
    #[serde(default = "d_2048")]
    pub max_position_embeddings: usize,
    /// MLP activation.
    #[serde(default = "d_silu")]
    pub hidden_act: Activation,
    /// Biases on q/k/v/o.
    #[serde(default)]
    pub attention_bias: bool,
    /// Biases on gate/up/down.
    #[serde(default)]
    pub mlp_bias: bool,
    /// `lm_head` shares `embed_tokens`' weight.
    #[serde(default)]
    pub tie_word_embeddings: bool,
    /// Beginning-of-sequence token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bos_token_id: Option<u32>,
    /// End-of-sequence token(s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub eos_token_id: Option<TokenIds>,
    /// Padding token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pad_token_id: Option<u32>,
}

impl Default for LlamaConfig {
    fn default() -> Self {
        // Same as deserialising `{}`: every field at transformers' default.
        Self {
            hidden_size: 4096,
            intermediate_size: 11008,
            num_hidden_layers: 32,
            num_attention_heads: 32,
            num_key_value_heads: None,
            head_dim: None,
            vocab_size: 32000,
            rms_norm_eps: 1e-6,
            rope_theta: None,
            rope_scaling: None,
            rope_parameters: None,
            max_position_embeddings: 2048,
            hidden_act: Activation::Silu,
            attention_bias: false,
            mlp_bias: false,
            tie_word_embeddings: false,
            bos_token_id: None,
            eos_token_id: None,
            pad_token_id: None,
        }
    }
}

impl LlamaConfig {
    /// Number of key/value heads.
    pub fn num_kv_heads(&self) -> usize {
        self.num_key_value_heads.unwrap_or(self.num_attention_heads)
    }

    /// Per-head width.
    pub fn head_dim(&self) -> usize {
        self.head_dim
            .unwrap_or(self.hidden_size / self.num_attention_heads.max(1))
    }

    /// Rotary base: `rope_parameters.rope_theta`, else `rope_theta`, else
    /// 10000.
    pub fn rope_theta(&self) -> f64 {
        self.rope_parameters
            .as_ref()
            .and_then(|p| p.rope_theta)
            .or(self.rope_theta)
            .unwrap_or(10_000.0)
    }

    /// Rotary scaling, if any (5.x `rope_parameters` first).
    pub fn rope(&self) -> Option<&RopeParameters> {
        self.rope_parameters.as_ref().or(self.rope_scaling.as_ref())
    }

    /// Checks the numbers fit together (head counts divide, etc.).
    pub fn validate(&self) -> std::result::Result<(), String> {
        if self.num_attention_heads == 0 || self.num_kv_heads() == 0 {
            return Err("text_config: head counts must be positive".into());
        }
        if !self.num_attention_heads.is_multiple_of(self.num_kv_heads()) {
            return Err(format!(
                "text_config: num_attention_heads ({}) is not a multiple of num_key_value_heads ({})",
                self.num_attention_heads,
                self.num_kv_heads()
            ));
        }
        if !self.head_dim().is_multiple_of(2) || self.head_dim() == 0 {
            return Err(format!(
                "text_config: head_dim ({}) must be even and positive for rotary embeddings",
                self.head_dim()
            ));
        }
        match self.rope().map(RopeParameters::kind) {
            None | Some("default") | Some("linear") | Some("llama3") => Ok(()),
            Some(other) => Err(format!(
                "text_config: rope type {other:?} is not supported (default, linear, llama3 are)"
            )),
        }
    }
}

/// transformers' `CLIPVisionConfig`, with its defaults.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClipVisionConfig {
    /// Width of the residual stream.
    #[serde(default = "d_768")]
    pub hidden_size: usize,
    /// Width of the MLP.
    #[serde(default = "d_3072")]
    pub intermediate_size: usize,
    /// Number of encoder layers.
    #[serde(default = "d_12")]
    pub num_hidden_layers: usize,
    /// Number of attention heads.
    #[serde(default = "d_12")]
    pub num_attention_heads: usize,
    /// Input channels.
    #[serde(default = "d_3")]
    pub num_channels: usize,
    /// Input side in pixels.
    #[serde(default = "d_224")]
    pub image_size: usize,
    /// Patch side in pixels.
    #[serde(default = "d_32")]
    pub patch_size: usize,
    /// MLP activation.
    #[serde(default = "d_quick_gelu")]
    pub hidden_act: Activation,
    /// LayerNorm epsilon.
    #[serde(default = "d_1e_5")]
    pub layer_norm_eps: f64,
    /// Width of CLIP's joint embedding (unused by LLaVA; kept to mirror the
    /// file).
    #[serde(default = "d_512")]
    pub projection_dim: usize,
}

impl Default for ClipVisionConfig {
    fn default() -> Self {
        Self {
            hidden_size: 768,
            intermediate_size: 3072,
            num_hidden_layers: 12,
            num_attention_heads: 12,
            num_channels: 3,
            image_size: 224,
            patch_size: 32,
            hidden_act: Activation::QuickGelu,
            layer_norm_eps: 1e-5,
            projection_dim: 512,
        }
    }
}

impl ClipVisionConfig {
    /// Patches per side.
    pub fn patches_per_side(&self) -> usize {
        self.image_size / self.patch_size.max(1)
    }

    /// Number of patches (not counting the class token).
    pub fn num_patches(&self) -> usize {
        self.patches_per_side().pow(2)
    }
}

/// Which vision layer(s) feed the projector: an index into the hidden
/// states (0 = embeddings, negative counts from the end, -1 = last layer),
/// or several whose features are concatenated.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum FeatureLayer {
    /// One layer (LLaVA-1.5: -2).
    One(i64),
    /// Several layers, concatenated along the feature axis.
    Many(Vec<i64>),
}

impl FeatureLayer {
    /// The layer indices.
    pub fn to_vec(&self) -> Vec<i64> {
        match self {
            Self::One(i) => vec![*i],
            Self::Many(v) => v.clone(),
        }
    }
}

/// `vision_feature_select_strategy`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FeatureSelect {
    /// Drop the class token (LLaVA-1.5).
    Default,
    /// Keep every token including the class token.
    Full,
}

/// transformers' `LlavaConfig` (`LlavaForConditionalGeneration`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LlavaConfig {
    /// The decoder LM (`model_type: llama`).
    #[serde(default)]
    pub text_config: LlamaConfig,
    /// The vision tower (`model_type: clip_vision_model`).
    #[serde(default)]
    pub vision_config: ClipVisionConfig,
    /// Activation between the projector's two linears.
    #[serde(default = "d_gelu")]
    pub projector_hidden_act: Activation,
    /// Vision hidden state(s) fed to the projector.
    #[serde(default = "d_feature_layer")]
    pub vision_feature_layer: FeatureLayer,
    /// Whether the class token is dropped.
    #[serde(default = "d_feature_select")]
    pub vision_feature_select_strategy: FeatureSelect,
    /// Token id standing for one image feature (4.x / file spelling).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_token_index: Option<u32>,
    /// Token id standing for one image feature (5.x attribute spelling).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_token_id: Option<u32>,
    /// Biases on the projector's linears.
    #[serde(default = "d_true")]
    pub multimodal_projector_bias: bool,
    /// Image tokens per image (informational; derived from the vision
    /// config).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_seq_length: Option<usize>,
    /// Padding token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pad_token_id: Option<u32>,
    /// `"llava"`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model_type: Option<String>,
}

/// Reads a `config.json` and checks it with `validate`; errors name the
/// file (and serde's line and column).
pub fn read_config_file<T: serde::de::DeserializeOwned>(
    path: &Path,
    validate: impl FnOnce(&T) -> std::result::Result<(), String>,
) -> Result<T> {
    let bytes = std::fs::read(path).map_err(|source| ModelError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let cfg: T = serde_json::from_slice(&bytes).map_err(|source| ModelError::Json {
        path: path.to_path_buf(),
        source,
    })?;
    validate(&cfg).map_err(|message| ModelError::Config {
        path: path.to_path_buf(),
        message,
    })?;
    Ok(cfg)
}

impl LlavaConfig {
    /// Reads and checks `config.json`.
    pub fn from_file(path: &Path) -> Result<Self> {
        read_config_file(path, Self::validate)
    }

    /// The image token id (32000 for llava-1.5-hf when the file names none).
    pub fn image_token(&self) -> u32 {
        self.image_token_index
            .or(self.image_token_id)
            .unwrap_or(32000)
    }

    /// Image tokens (projected features) per image.
    pub fn image_tokens_per_image(&self) -> usize {
        let n = self.vision_config.num_patches();
        match self.vision_feature_select_strategy {
            FeatureSelect::Default => n,
            FeatureSelect::Full => n + 1,
        }
    }

    /// Checks the numbers fit together.
    pub fn validate(&self) -> std::result::Result<(), String> {
        if let Some(t) = self.model_type.as_deref() {
            if t != "llava" {
                return Err(format!("model_type is {t:?}, expected \"llava\""));
            }
        }
        self.text_config.validate()?;
        let v = &self.vision_config;
        if v.num_attention_heads == 0 || !v.hidden_size.is_multiple_of(v.num_attention_heads) {
            return Err(format!(
                "vision_config: hidden_size ({}) is not a multiple of num_attention_heads ({})",
                v.hidden_size, v.num_attention_heads
            ));
        }
        if v.patch_size == 0 || !v.image_size.is_multiple_of(v.patch_size) {
            return Err(format!(
                "vision_config: image_size ({}) is not a multiple of patch_size ({})",
                v.image_size, v.patch_size
            ));
        }
        let layers = v.num_hidden_layers as i64;
        for l in self.vision_feature_layer.to_vec() {
            if l > layers || l < -(layers + 1) {
                return Err(format!(
                    "vision_feature_layer {l} is outside the {} hidden states of a {layers}-layer vision tower",
                    layers + 1
                ));
            }
        }
        Ok(())
    }
}

/// transformers' `CLIPTextConfig`, with its defaults.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClipTextConfig {
    /// Vocabulary size.
    #[serde(default = "d_49408")]
    pub vocab_size: usize,
    /// Width of the residual stream.
    #[serde(default = "d_512")]
    pub hidden_size: usize,
    /// Width of the MLP.
    #[serde(default = "d_2048")]
    pub intermediate_size: usize,
    /// Number of encoder layers.
    #[serde(default = "d_12")]
    pub num_hidden_layers: usize,
    /// Number of attention heads.
    #[serde(default = "d_8")]
    pub num_attention_heads: usize,
    /// Longest token sequence (77 for OpenAI's CLIP).
    #[serde(default = "d_77")]
    pub max_position_embeddings: usize,
    /// MLP activation.
    #[serde(default = "d_quick_gelu")]
    pub hidden_act: Activation,
    /// LayerNorm epsilon.
    #[serde(default = "d_1e_5")]
    pub layer_norm_eps: f64,
    /// End-of-text token: the pooled output is read there. transformers
    /// treats the old configs' `2` as "the highest id of the row" (CLIP's
    /// `<|endoftext|>` is the last id of its vocabulary).
    #[serde(default = "d_2")]
    pub eos_token_id: u32,
}

/// transformers' `CLIPConfig` (`CLIPModel`'s `config.json`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClipConfig {
    /// The text tower.
    pub text_config: ClipTextConfig,
    /// The vision tower.
    pub vision_config: ClipVisionConfig,
    /// Width of the joint embedding space.
    #[serde(default = "d_512")]
    pub projection_dim: usize,
    /// Initial value of `logit_scale` (the weights hold the trained one).
    #[serde(default = "d_logit_scale")]
    pub logit_scale_init_value: f64,
}

impl ClipConfig {
    /// Checks the sizes fit together; the message names the field.
    pub fn validate(&self) -> std::result::Result<(), String> {
        let t = &self.text_config;
        if t.num_attention_heads == 0 || !t.hidden_size.is_multiple_of(t.num_attention_heads) {
            return Err(format!(
                "text_config: hidden_size {} is not a multiple of num_attention_heads {}",
                t.hidden_size, t.num_attention_heads
            ));
        }
        let v = &self.vision_config;
        if v.num_attention_heads == 0 || !v.hidden_size.is_multiple_of(v.num_attention_heads) {
            return Err(format!(
                "vision_config: hidden_size {} is not a multiple of num_attention_heads {}",
                v.hidden_size, v.num_attention_heads
            ));
        }
        if v.patch_size == 0 || !v.image_size.is_multiple_of(v.patch_size) {
            return Err(format!(
                "vision_config: image_size {} is not a multiple of patch_size {}",
                v.image_size, v.patch_size
            ));
        }
        Ok(())
    }
}

fn d_2() -> u32 {
    2
}
fn d_8() -> usize {
    8
}
fn d_77() -> usize {
    77
}
fn d_49408() -> usize {
    49408
}
fn d_logit_scale() -> f64 {
    2.6592
}
fn d_3() -> usize {
    3
}
fn d_12() -> usize {
    12
}
fn d_32() -> usize {
    32
}
fn d_224() -> usize {
    224
}
fn d_512() -> usize {
    512
}
fn d_768() -> usize {
    768
}
fn d_2048() -> usize {
    2048
}
fn d_3072() -> usize {
    3072
}
fn d_4096() -> usize {
    4096
}
fn d_11008() -> usize {
    11008
}
fn d_32000() -> usize {
    32000
}
fn d_1e_5() -> f64 {
    1e-5
}
fn d_1e_6() -> f64 {
    1e-6
}
fn d_true() -> bool {
    true
}
fn d_silu() -> Activation {
    Activation::Silu
}
fn d_gelu() -> Activation {
    Activation::Gelu
}
fn d_quick_gelu() -> Activation {
    Activation::QuickGelu
}
fn d_feature_layer() -> FeatureLayer {
    FeatureLayer::One(-2)
}
fn d_feature_select() -> FeatureSelect {
    FeatureSelect::Default
}

#[cfg(test)]
mod tests {
    use super::*;

    /// llava-hf/llava-1.5-7b-hf's config.json, as published.
    const LLAVA_15_7B: &str = r#"{
      "architectures": ["LlavaForConditionalGeneration"],
      "ignore_index": -100,
      "image_token_index": 32000,
      "model_type": "llava",
      "pad_token_id": 32001,
      "projector_hidden_act": "gelu",
      "text_config": {
        "_name_or_path": "lmsys/vicuna-7b-v1.5",
        "architectures": ["LlamaForCausalLM"],
        "max_position_embeddings": 4096,
        "model_type": "llama",
        "rms_norm_eps": 1e-05,
        "torch_dtype": "float16",
        "vocab_size": 32064
      },
      "tie_word_embeddings": false,
      "torch_dtype": "float16",
      "transformers_version": "4.36.0.dev0",
      "vision_config": {
        "hidden_size": 1024,
        "image_size": 336,
        "intermediate_size": 4096,
        "model_type": "clip_vision_model",
        "num_attention_heads": 16,
        "num_hidden_layers": 24,
        "patch_size": 14,
        "projection_dim": 768,
        "vocab_size": 32000
      },
      "vision_feature_layer": -2,
      "vision_feature_select_strategy": "default",
      "vocab_size": 32064
    }"#;

    #[test]
    fn llava_15_defaults_fill_in() {
        let cfg: LlavaConfig = serde_json::from_str(LLAVA_15_7B).unwrap();
        cfg.validate().unwrap();
        let t = &cfg.text_config;
        assert_eq!(t.hidden_size, 4096);
        assert_eq!(t.num_hidden_layers, 32);
        assert_eq!(t.num_kv_heads(), 32);
        assert_eq!(t.head_dim(), 128);
        assert_eq!(t.vocab_size, 32064);
        assert_eq!(t.rms_norm_eps, 1e-5);
        assert_eq!(t.rope_theta(), 10_000.0);
        assert_eq!(t.hidden_act, Activation::Silu);
        assert_eq!(cfg.vision_config.hidden_act, Activation::QuickGelu);
        assert_eq!(cfg.vision_config.num_patches(), 576);
        assert_eq!(cfg.image_tokens_per_image(), 576);
        assert_eq!(cfg.image_token(), 32000);
        assert_eq!(cfg.vision_feature_layer, FeatureLayer::One(-2));
        assert_eq!(cfg.projector_hidden_act, Activation::Gelu);
        assert!(cfg.multimodal_projector_bias);
    }

    #[test]
    fn transformers_5_rope_parameters() {
        let t: LlamaConfig = serde_json::from_str(
            r#"{"rope_parameters": {"rope_theta": 500000.0, "rope_type": "default"}}"#,
        )
        .unwrap();
        assert_eq!(t.rope_theta(), 500000.0);
        assert_eq!(t.rope().map(RopeParameters::kind), Some("default"));
        let t: LlamaConfig =
            serde_json::from_str(r#"{"rope_scaling": {"type": "yarn", "factor": 4.0}}"#).unwrap();
        assert!(t.validate().unwrap_err().contains("yarn"));
    }

    #[test]
    fn bad_values_are_named() {
        let err = serde_json::from_str::<LlavaConfig>(r#"{"projector_hidden_act": "swish2"}"#)
            .unwrap_err()
            .to_string();
        assert!(err.contains("swish2"), "{err}");
        let cfg: LlavaConfig = serde_json::from_str(
            r#"{"text_config": {"num_attention_heads": 6, "num_key_value_heads": 4}}"#,
        )
        .unwrap();
        assert!(cfg.validate().unwrap_err().contains("num_key_value_heads"));
    }
}
