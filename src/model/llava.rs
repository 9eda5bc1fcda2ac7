//! The LLaVA-1.5 VLM: CLIP vision tower (frozen) → 2-layer MLP projector →
//! Llama decoder with LoRA.
//!
//! Follows transformers' `models/llava/modeling_llava.py`
//! (`LlavaForConditionalGeneration`): the vision tower's hidden state
//! `vision_feature_layer` (-2 for LLaVA-1.5), without the class token under
//! the `default` strategy, goes through `multi_modal_projector` (`linear_1`
//! → GELU → `linear_2`); the prompt holds one `<image>` token per feature
//! (the processor expands `<image>` to N = (image_size / patch)² tokens),
//! and the features replace those tokens' embeddings in order
//! (`masked_scatter`), image after image.
//!
//! [`Llava::image_features`] is separate from the language-model forward so
//! a trainer computes each image's features once and caches them; the LM
//! forward returns logits for every position (DPO needs per-token
//! log-probabilities).
//!
//! Weights load from a llava-hf folder with the tensor names the hub files
//! have (`language_model.model.layers.N...`, `language_model.lm_head.weight`,
//! `vision_tower.vision_model...`, `multi_modal_projector...`). Checkpoints
//! written by transformers 5 (`vision_tower.embeddings...` without
//! `vision_model`) and the in-memory layout of transformers ≥ 4.52
//! (`model.language_model...`, `model.vision_tower...`, `lm_head`) are
//! accepted too: the loader detects the layout and renames.

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor, Var};
use candle_nn::VarBuilder;

use super::clip::{cat_features, ClipVisionTower, Projector};
use super::config::{FeatureSelect, LlavaConfig};
use super::generation::{self, Generated, GenerationConfig, Quiet};
use super::hub::{resolve_model, weight_files, HubOptions, OPTIONAL_FILES, TOKENIZER_FILE};
use super::init::{default_init, recorded_shapes};
use super::llama::{KvCache, Llama};
use super::lora::{
    read_adapter, write_adapter, AdapterConfigFile, LoraAdapter, LoraConfig, PeftLayout,
    TargetModule,
};
use super::processor::ImageProcessor;
use super::tokenizer::LlavaTokenizer;
use super::{default_dtype, ModelError, Result};

/// The canonical llava-hf name of the decoder module at `path`
/// (`layers.0.self_attn.q_proj`).
fn lm_module_name(path: &str) -> String {
    format!("{}{path}", LAYOUTS[0].0)
}

/// Canonical (llava-hf hub) prefixes and the alternatives other writers use,
/// probed with a tensor every layout has.
const LAYOUTS: &[(&str, &[&str], &str)] = &[
    (
        "language_model.model.",
        &["language_model.model.", "model.language_model."],
        "embed_tokens.weight",
    ),
    (
        "language_model.lm_head.",
        &["language_model.lm_head.", "lm_head."],
        "weight",
    ),
    (
        "vision_tower.vision_model.",
        &[
            "vision_tower.vision_model.",
            "vision_tower.",
            "model.vision_tower.vision_model.",
            "model.vision_tower.",
        ],
        "embeddings.patch_embedding.weight",
    ),
    (
        "multi_modal_projector.",
        &["multi_modal_projector.", "model.multi_modal_projector."],
        "linear_1.weight",
    ),
];

/// For each canonical prefix, the prefix the checkpoint actually uses (only
/// pairs that differ).
fn detect_layout(names: &BTreeSet<String>) -> Vec<(String, String)> {
    let mut renames = Vec::new();
    for (canonical, candidates, probe) in LAYOUTS {
        if let Some(actual) = candidates
            .iter()
            .find(|p| names.contains(&format!("{p}{probe}")))
        {
            if actual != canonical {
                renames.push((canonical.to_string(), actual.to_string()));
            }
        }
    }
    renames
}

/// The LLaVA network.
#[derive(Debug, Clone)]
pub struct Llava {
    vision: ClipVisionTower,
    projector: Projector,
    lm: Llama,
    cfg: LlavaConfig,
    /// Hidden-state indices of the vision tower fed to the projector.
    feature_layers: Vec<usize>,
    lora: Option<LoraConfig>,
    base_model: Option<String>,
}

impl Llava {
    /// Builds the model from `vb` holding llava-hf's tensor names
    /// (`language_model.*`, `vision_tower.vision_model.*`,
    /// `multi_modal_projector.*`).
    pub fn new(vb: VarBuilder, cfg: &LlavaConfig) -> candle_core::Result<Self> {
        Self::build(vb, cfg, false)
    }

    /// Like [`Self::new`] but also loads the vision layers past the feature
    /// layer, which LLaVA never runs (used to enumerate a full checkpoint).
    fn new_full(vb: VarBuilder, cfg: &LlavaConfig) -> candle_core::Result<Self> {
        Self::build(vb, cfg, true)
    }

    fn build(
        vb: VarBuilder,
        cfg: &LlavaConfig,
        all_vision_layers: bool,
    ) -> candle_core::Result<Self> {
        cfg.validate().map_err(candle_core::Error::Msg)?;
        let v = &cfg.vision_config;
        let num_states = v.num_hidden_layers as i64 + 1;
        let feature_layers: Vec<usize> = cfg
            .vision_feature_layer
            .to_vec()
            .into_iter()
            .map(|l| {
                if l < 0 {
                    (num_states + l) as usize
                } else {
                    l as usize
                }
            })
            .collect();
        let needed = if all_vision_layers {
            v.num_hidden_layers
        } else {
            feature_layers.iter().copied().max().unwrap_or(0)
        };
        let vision =
            ClipVisionTower::new_truncated(vb.pp("vision_tower").pp("vision_model"), v, needed)?;
        let projector = Projector::new(
            vb.pp("multi_modal_projector"),
            v.hidden_size * feature_layers.len(),
            cfg.text_config.hidden_size,
            cfg.multimodal_projector_bias,
            cfg.projector_hidden_act,
        )?;
        let lm = Llama::new(vb.pp("language_model"), &cfg.text_config)?;
        Ok(Self {
            vision,
            projector,
            lm,
            cfg: cfg.clone(),
            feature_layers,
            lora: None,
            base_model: None,
        })
    }

    /// Loads a llava-hf model folder (`config.json` + `model.safetensors` or
    /// sharded weights) onto `device` in `dtype`.
    pub fn load(dir: &Path, device: &Device, dtype: DType) -> Result<Self> {
        if !dir.is_dir() {
            return Err(ModelError::MissingPath {
                path: dir.to_path_buf(),
                what: "model folder",
            });
        }
        let cfg = LlavaConfig::from_file(&dir.join("config.json"))?;
        let files = weight_files(dir)?;
        let weights_err = |source| ModelError::Weights {
            path: dir.to_path_buf(),
            source,
        };
        // SAFETY: the files are memory-mapped read-only; they must not be
        // modified while the model loads (tensors are copied out of the map).
        let st = unsafe { candle_core::safetensors::MmapedSafetensors::multi(&files) }
            .map_err(weights_err)?;
        let names: BTreeSet<String> = st.tensors().into_iter().map(|(n, _)| n).collect();
        let renames = detect_layout(&names);
        let vb = VarBuilder::from_backend(Box::new(st), dtype, device.clone());
        let vb = if renames.is_empty() {
            vb
        } else {
            vb.rename_f(move |name: &str| {
                for (canonical, actual) in &renames {
                    if let Some(rest) = name.strip_prefix(canonical.as_str()) {
                        return format!("{actual}{rest}");
                    }
                }
                name.to_string()
            })
        };
        let mut model = Self::new(vb, &cfg).map_err(weights_err)?;
        model.base_model = Some(dir.display().to_string());
        Ok(model)
    }

    /// Loads a llava-hf model folder for full fine-tuning: every
    /// language-model and projector weight becomes a trainable [`Var`], and
    /// with `vision` the tower's too (without it the tower stays frozen, as
    /// LLaVA's own training keeps it). The
    /// returned [`FullWeights`] holds all tensors under llava-hf's canonical
    /// names, the trainable ones shared with the vars, so saving it writes
    /// the current weights.
    pub fn load_full(
        dir: &Path,
        device: &Device,
        dtype: DType,
        vision: bool,
    ) -> Result<(Self, FullWeights)> {
        if !dir.is_dir() {
            return Err(ModelError::MissingPath {
                path: dir.to_path_buf(),
                what: "model folder",
            });
        }
        let cfg = LlavaConfig::from_file(&dir.join("config.json"))?;
        let mut raw = HashMap::new();
        for file in weight_files(dir)? {
            let part = candle_core::safetensors::load(&file, device).map_err(|source| {
                ModelError::Weights {
                    path: file.clone(),
                    source,
                }
            })?;
            raw.extend(part);
        }
        let names: BTreeSet<String> = raw.keys().cloned().collect();
        let renames = detect_layout(&names);
        let mut all = HashMap::with_capacity(raw.len());
        let mut trainable = Vec::new();
        for (name, tensor) in raw {
            let name = renames
                .iter()
                .find_map(|(canonical, actual)| {
                    name.strip_prefix(actual.as_str())
                        .map(|rest| format!("{canonical}{rest}"))
                })
                .unwrap_or(name);
            let tensor = tensor.to_dtype(dtype)?;
            let tensor = if FullWeights::is_trainable(&name, vision) {
                let var = Var::from_tensor(&tensor)?;
                let shared = var.as_tensor().clone();
                trainable.push((name.clone(), var));
                shared
            } else {
                tensor
            };
            all.insert(name, tensor);
        }
        trainable.sort_by(|a, b| a.0.cmp(&b.0));
        let vb = VarBuilder::from_tensors(all.clone(), dtype, device);
        let mut model = Self::new(vb, &cfg).map_err(|source| ModelError::Weights {
            path: dir.to_path_buf(),
            source,
        })?;
        model.base_model = Some(dir.display().to_string());
        Ok((model, FullWeights { all, trainable }))
    }

    /// The config.
    pub fn config(&self) -> &LlavaConfig {
        &self.cfg
    }

    /// The language model.
    pub fn lm(&self) -> &Llama {
        &self.lm
    }

    /// The language model, mutably (LoRA management).
    pub fn lm_mut(&mut self) -> &mut Llama {
        &mut self.lm
    }

    /// The vision tower.
    pub fn vision_tower(&self) -> &ClipVisionTower {
        &self.vision
    }

    /// Device of the weights.
    pub fn device(&self) -> &Device {
        self.lm.device()
    }

    /// Compute dtype.
    pub fn dtype(&self) -> DType {
        self.lm.dtype()
    }

    /// Image tokens per image (576 for LLaVA-1.5 at 336 px).
    pub fn image_tokens_per_image(&self) -> usize {
        self.cfg.image_tokens_per_image()
    }

    /// Width of [`Self::vision_features`]: the tower's hidden size times
    /// the number of selected layers.
    pub fn vision_feature_dim(&self) -> usize {
        self.cfg.vision_config.hidden_size * self.feature_layers.len()
    }

    /// Projected image features `(b, N, text_hidden)` for pixel values
    /// `(b, 3, H, W)` (see [`ImageProcessor`]). Deterministic and
    /// independent of the language model and its adapters: cache it per
    /// image.
    pub fn image_features(&self, pixel_values: &Tensor) -> Result<Tensor> {
        let features = self.vision_features(pixel_values)?;
        self.project(&features)
    }

    /// The projector: vision features `(b, N, vision_hidden × layers)` →
    /// `(b, N, text_hidden)` in the model's dtype. Full fine-tuning trains
    /// it, so it then caches [`Self::vision_features`] and projects per step.
    pub fn project(&self, features: &Tensor) -> Result<Tensor> {
        Ok(self.projector.forward(features)?.to_dtype(self.dtype())?)
    }

    /// The frozen tower's selected hidden states (before the projector),
    /// `(b, N, vision_hidden × layers)` for pixel values `(b, 3, H, W)`.
    pub fn vision_features(&self, pixel_values: &Tensor) -> Result<Tensor> {
        if pixel_values.rank() != 4 {
            return Err(ModelError::Input(format!(
                "pixel values must be (batch, channels, height, width), got {:?}",
                pixel_values.dims()
            )));
        }
        let upto = self.feature_layers.iter().copied().max().unwrap_or(0);
        let states = self.vision.hidden_states(pixel_values, upto)?;
        let mut selected = Vec::with_capacity(self.feature_layers.len());
        for &i in &self.feature_layers {
            let s = &states[i];
            let s = match self.cfg.vision_feature_select_strategy {
                FeatureSelect::Default => s.narrow(1, 1, s.dim(1)? - 1)?,
                FeatureSelect::Full => s.clone(),
            };
            selected.push(s);
        }
        Ok(cat_features(&selected)?)
    }

    /// Input embeddings `(b, t, hidden)`: token embeddings with the image
    /// tokens' rows replaced, in order, by `image_features`
    /// (`(images, N, hidden)`, e.g. from [`Self::image_features`] or a
    /// cache). The number of image tokens in `input_ids` must be
    /// `images × N`.
    pub fn embed(&self, input_ids: &Tensor, image_features: Option<&Tensor>) -> Result<Tensor> {
        let (b, t) = input_ids.dims2()?;
        let image_token = self.cfg.image_token();
        let ids = input_ids
            .to_dtype(DType::U32)?
            .flatten_all()?
            .to_vec1::<u32>()?;
        let image_positions: Vec<usize> = ids
            .iter()
            .enumerate()
            .filter(|(_, id)| **id == image_token)
            .map(|(i, _)| i)
            .collect();
        let hidden = self.cfg.text_config.hidden_size;
        let vocab = self.cfg.text_config.vocab_size as u32;
        if let Some(bad) = ids.iter().find(|id| **id != image_token && **id >= vocab) {
            return Err(ModelError::Input(format!(
                "token id {bad} is outside the vocabulary of {vocab}"
            )));
        }
        let text_ids: Vec<u32> = ids
            .iter()
            .map(|id| if *id == image_token { 0 } else { *id })
            .collect();
        let text_ids = Tensor::from_vec(text_ids, (b, t), self.device())?;
        let embeds = self.lm.embed(&text_ids)?;
        let features = match (image_features, image_positions.is_empty()) {
            (_, true) => return Ok(embeds),
            (None, false) => {
                return Err(ModelError::Input(format!(
                    "the input holds {} image tokens but no image features were given",
                    image_positions.len()
                )))
            }
            (Some(f), false) => f,
        };
        let (n_img, per, fh) = features.dims3()?;
        if fh != hidden {
            return Err(ModelError::Input(format!(
                "image features have width {fh}, the language model {hidden}"
            )));
        }
        if n_img * per != image_positions.len() {
            return Err(ModelError::Input(format!(
                "image features and image tokens do not match: {} image tokens in the input, \
                 {n_img} images × {per} features",
                image_positions.len()
            )));
        }
        let flat = embeds.reshape((b * t, hidden))?;
        let feats = features
            .to_dtype(embeds.dtype())?
            .reshape((n_img * per, hidden))?;
        let mut index: Vec<u32> = (0..(b * t) as u32).collect();
        for (k, &p) in image_positions.iter().enumerate() {
            index[p] = (b * t + k) as u32;
        }
        let index = Tensor::from_vec(index, b * t, self.device())?;
        let merged = Tensor::cat(&[&flat, &feats], 0)?.index_select(&index, 0)?;
        Ok(merged.reshape((b, t, hidden))?)
    }

    /// Final hidden states `(b, t, hidden)` (see [`Llama::forward_hidden`]).
    pub fn forward_hidden(
        &self,
        input_ids: &Tensor,
        image_features: Option<&Tensor>,
        attention_mask: Option<&Tensor>,
        cache: Option<&mut KvCache>,
    ) -> Result<Tensor> {
        let embeds = self.embed(input_ids, image_features)?;
        self.lm.forward_hidden(&embeds, attention_mask, cache)
    }

    /// Logits `(b, t, vocab)` for every position. `attention_mask` `(b, t)`
    /// marks real tokens with 1 (right padding for training, left padding
    /// for generation).
    pub fn forward(
        &self,
        input_ids: &Tensor,
        image_features: Option<&Tensor>,
        attention_mask: Option<&Tensor>,
    ) -> Result<Tensor> {
        let hidden = self.forward_hidden(input_ids, image_features, attention_mask, None)?;
        self.lm.lm_head(&hidden)
    }

    /// Generates continuations of left-padded prompts
    /// ([`generation::generate`], each row seeded by its index).
    pub fn generate(
        &self,
        input_ids: &Tensor,
        image_features: Option<&Tensor>,
        attention_mask: Option<&Tensor>,
        cfg: &GenerationConfig,
    ) -> Result<Vec<Generated>> {
        let embeds = self.embed(input_ids, image_features)?;
        generation::generate(&self.lm, &embeds, attention_mask, cfg, None, &mut Quiet)
    }

    // ----- LoRA -------------------------------------------------------------

    /// Attaches fresh LoRA adapters (PEFT initialisation, seeded) to the
    /// language model's `cfg.targets`, replacing any existing ones. The
    /// vision tower, projector, embeddings and `lm_head` stay frozen.
    pub fn add_lora(&mut self, cfg: &LoraConfig, seed: u64) -> Result<()> {
        self.lm.clear_adapters();
        self.lm.add_lora(cfg, seed)?;
        self.lora = Some(cfg.clone());
        Ok(())
    }

    /// The adapters' settings, when adapters are attached.
    pub fn lora_config(&self) -> Option<&LoraConfig> {
        self.lora.as_ref()
    }

    /// Turns adapters on or off (off = the base model, DPO's reference).
    pub fn set_adapters_enabled(&mut self, enabled: bool) {
        self.lm.set_adapters_enabled(enabled);
    }

    /// Whether adapters take part in forward passes.
    pub fn adapters_enabled(&self) -> bool {
        self.lm.adapters_enabled()
    }

    /// `false`: forward passes keep no gradient graph (evaluation); see
    /// [`Llama::set_grad_enabled`].
    pub fn set_grad_enabled(&mut self, enabled: bool) {
        self.lm.set_grad_enabled(enabled);
    }

    /// The trainable variables (every adapter's `A` then `B`, layer by
    /// layer), for the optimizer.
    pub fn trainable_vars(&self) -> Vec<Var> {
        self.named_trainable_vars()
            .into_iter()
            .map(|(_, v)| v)
            .collect()
    }

    /// The trainable variables under their PEFT key names
    /// (`base_model.model.model.language_model.layers.0.self_attn.q_proj.lora_A.weight`).
    pub fn named_trainable_vars(&self) -> Vec<(String, Var)> {
        self.named_trainable_vars_except(|_| false)
    }

    /// [`Self::named_trainable_vars`] without the adapters of the modules
    /// for which `frozen` is true; it is given the module's canonical
    /// llava-hf name (`language_model.model.layers.0.self_attn.q_proj`),
    /// the names `--freeze` prefixes match in full fine-tuning.
    pub fn named_trainable_vars_except(&self, frozen: impl Fn(&str) -> bool) -> Vec<(String, Var)> {
        let layout = PeftLayout::Current;
        let mut out = Vec::new();
        for (path, adapter) in self.lm.adapters() {
            if frozen(&lm_module_name(&path)) {
                continue;
            }
            out.push((layout.key(&path, "A"), adapter.a.clone()));
            out.push((layout.key(&path, "B"), adapter.b.clone()));
        }
        out
    }

    /// Canonical llava-hf names of the modules that carry an adapter.
    pub fn adapted_modules(&self) -> Vec<String> {
        self.lm
            .adapters()
            .iter()
            .map(|(path, _)| lm_module_name(path))
            .collect()
    }

    /// Writes the adapters as a PEFT adapter folder (`adapter_config.json`,
    /// `adapter_model.safetensors`) that PEFT's `PeftModel.from_pretrained`
    /// loads onto transformers' `LlavaForConditionalGeneration`.
    pub fn save_adapter(&self, dir: &Path, layout: PeftLayout) -> Result<()> {
        let cfg = self
            .lora
            .as_ref()
            .ok_or_else(|| ModelError::Input("the model has no LoRA adapters to save".into()))?;
        let file = AdapterConfigFile::for_llava(cfg, self.base_model.as_deref());
        write_adapter(dir, &file, &self.lm.adapters(), layout)
    }

    /// Loads a PEFT adapter folder, replacing any adapters. Every module in
    /// the file must exist in the language model with matching shapes;
    /// otherwise nothing changes and the error names the tensor.
    pub fn load_adapter(&mut self, dir: &Path) -> Result<()> {
        let weights = read_adapter(dir, self.device())?;
        let file = dir.join(super::lora::ADAPTER_WEIGHTS_FILE);
        let err = |message: String| ModelError::Adapter {
            path: file.clone(),
            message,
        };
        let mut staged: Vec<(String, LoraAdapter)> = Vec::new();
        let mut ranks = BTreeSet::new();
        for (path, (a, b)) in &weights.modules {
            let key_a = weights.layout.key(path, "A");
            let key_b = weights.layout.key(path, "B");
            let linear = self.lm.linear_at(path).ok_or_else(|| {
                err(format!(
                    "{key_a}: module {path:?} does not exist in this {}-layer language model",
                    self.lm.num_layers()
                ))
            })?;
            let (in_dim, out_dim) = linear.dims();
            let (ra, ia) = a
                .dims2()
                .map_err(|_| err(format!("{key_a} is not a matrix")))?;
            let (ob, rb) = b
                .dims2()
                .map_err(|_| err(format!("{key_b} is not a matrix")))?;
            if ia != in_dim || ob != out_dim || ra != rb || ra == 0 {
                return Err(err(format!(
                    "{key_a} is {ra}×{ia} and {key_b} is {ob}×{rb}, but {path} maps {in_dim} → {out_dim} \
                     (expected r×{in_dim} and {out_dim}×r)"
                )));
            }
            ranks.insert(ra);
            staged.push((
                path.clone(),
                LoraAdapter::from_weights(a, b, weights.scale(ra))?,
            ));
        }
        self.lm.clear_adapters();
        for (path, adapter) in staged {
            if let Some(linear) = self.lm.linear_at_mut(&path) {
                linear.set_adapter(adapter);
            }
        }
        let r = ranks.iter().next().copied().unwrap_or(weights.config.r);
        self.lora = Some(LoraConfig {
            r,
            alpha: weights.config.lora_alpha,
            targets: weights.targets(),
            use_rslora: weights.use_rslora,
            dropout: weights.config.lora_dropout,
        });
        self.lm.set_adapters_enabled(true);
        Ok(())
    }

    /// Folds the adapters into the base weights and removes them (PEFT's
    /// `merge_and_unload`). The checkpoint tensors are not modified.
    pub fn merge_adapters(&mut self) -> Result<()> {
        self.lm.merge_adapters()?;
        self.lora = None;
        Ok(())
    }

    /// Removes the adapters without merging.
    pub fn clear_adapters(&mut self) {
        self.lm.clear_adapters();
        self.lora = None;
    }

    /// The target modules that carry adapters.
    pub fn adapter_targets(&self) -> BTreeSet<TargetModule> {
        self.lm
            .adapters()
            .iter()
            .filter_map(|(p, _)| TargetModule::parse(p))
            .collect()
    }
}

/// Freshly initialised weights for `cfg` under llava-hf's tensor names, as
/// transformers initialises them (`initializer_range` 0.02 normals for
/// linears and embeddings, LayerNorm/RMSNorm weights 1, biases 0), drawn
/// from `seed`. For tiny models (demo, tests, benchmarks): build with
/// `Llava::new(VarBuilder::from_tensors(..), cfg)` or write a folder with
/// [`save_model`].
pub fn random_weights(
    cfg: &LlavaConfig,
    seed: u64,
    device: &Device,
) -> Result<HashMap<String, Tensor>> {
    let shapes = recorded_shapes(device, |vb| Llava::new_full(vb, cfg).map(|_| ()))?;
    let class_std = (cfg.vision_config.hidden_size as f32).powf(-0.5);
    default_init(shapes, seed, class_std, device, |_| None)
}

/// Writes a model folder transformers and [`Llava::load`] read:
/// `config.json` (with the `model_type`s transformers needs) and
/// `model.safetensors`.
pub fn save_model(dir: &Path, cfg: &LlavaConfig, weights: &HashMap<String, Tensor>) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|source| ModelError::Io {
        path: dir.to_path_buf(),
        source,
    })?;
    let config_path = dir.join("config.json");
    let json_err = |source| ModelError::Json {
        path: config_path.clone(),
        source,
    };
    let mut json = serde_json::to_value(cfg).map_err(json_err)?;
    if let Some(obj) = json.as_object_mut() {
        obj.insert("model_type".into(), "llava".into());
        obj.insert(
            "architectures".into(),
            serde_json::json!(["LlavaForConditionalGeneration"]),
        );
        if let Some(t) = obj.get_mut("text_config").and_then(|v| v.as_object_mut()) {
            t.insert("model_type".into(), "llama".into());
        }
        if let Some(v) = obj.get_mut("vision_config").and_then(|v| v.as_object_mut()) {
            v.insert("model_type".into(), "clip_vision_model".into());
        }
    }
    let text = serde_json::to_string_pretty(&json).map_err(json_err)?;
    crate::core::atomic::write_atomic(&config_path, (text + "\n").as_bytes()).map_err(
        |source| ModelError::Io {
            path: config_path.clone(),
            source,
        },
    )?;
    super::lora::save_safetensors(weights, &dir.join(super::hub::WEIGHTS_FILE))
}

/// The weights of a model loaded for full fine-tuning
/// ([`Llava::load_full`]).
#[derive(Debug, Clone)]
pub struct FullWeights {
    /// Every tensor of the checkpoint under llava-hf's canonical names; the
    /// trainable ones share storage with [`Self::trainable`].
    pub all: HashMap<String, Tensor>,
    /// The trainable weights, sorted by name.
    pub trainable: Vec<(String, Var)>,
}

impl FullWeights {
    /// Whether full fine-tuning trains the tensor `name` (canonical
    /// llava-hf name): the language model and the projector, and with
    /// `vision` the vision tower.
    pub fn is_trainable(name: &str, vision: bool) -> bool {
        name.starts_with("language_model.")
            || name.starts_with("multi_modal_projector.")
            || (vision && name.starts_with("vision_tower."))
    }

    /// Writes the whole model (current weights) as a llava-hf folder:
    /// `config.json`, `model.safetensors`, and the tokenizer and processor
    /// files copied from `source_dir`.
    pub fn save_model(&self, dir: &Path, cfg: &LlavaConfig, source_dir: &Path) -> Result<()> {
        save_model(dir, cfg, &self.all)?;
        for name in std::iter::once(&TOKENIZER_FILE).chain(OPTIONAL_FILES) {
            let from = source_dir.join(name);
            if from.is_file() {
                let to = dir.join(name);
                std::fs::copy(&from, &to).map_err(|source| ModelError::Io { path: to, source })?;
            }
        }
        Ok(())
    }
}

/// A loaded model with its tokenizer and image processor: what the trainer
/// and the evaluator start from.
#[derive(Debug, Clone)]
pub struct LlavaBundle {
    /// The network.
    pub model: Llava,
    /// `tokenizer.json` + chat prompt.
    pub tokenizer: LlavaTokenizer,
    /// CLIP preprocessing.
    pub processor: ImageProcessor,
    /// The local folder the files came from.
    pub dir: PathBuf,
}

impl LlavaBundle {
    /// Loads `source` (a local folder, or a hub id such as
    /// `llava-hf/llava-1.5-7b-hf` fetched into the hub cache) onto `device`
    /// in its default dtype (`f32` on CPU, `bf16` on CUDA).
    pub fn load(source: &str, device: &Device) -> Result<Self> {
        Self::load_with(
            source,
            device,
            default_dtype(device),
            &HubOptions::default(),
        )
    }

    /// [`Self::load`] with an explicit dtype and hub settings.
    pub fn load_with(
        source: &str,
        device: &Device,
        dtype: DType,
        hub: &HubOptions,
    ) -> Result<Self> {
        let dir = resolve_model(source, hub)?;
        let model = Llava::load(&dir, device, dtype)?;
        Self::assemble(source, dir, model)
    }

    /// Loads `source` for full fine-tuning ([`Llava::load_full`]) in the
    /// device's default dtype.
    pub fn load_full(source: &str, device: &Device, vision: bool) -> Result<(Self, FullWeights)> {
        let dir = resolve_model(source, &HubOptions::default())?;
        let (model, weights) = Llava::load_full(&dir, device, default_dtype(device), vision)?;
        Ok((Self::assemble(source, dir, model)?, weights))
    }

    fn assemble(source: &str, dir: PathBuf, mut model: Llava) -> Result<Self> {
        model.base_model = Some(source.to_string());
        let tokenizer = LlavaTokenizer::from_dir(&dir, model.config())?;
        let processor = ImageProcessor::from_dir(&dir, &model.config().vision_config)?;
        Ok(Self {
            model,
            tokenizer,
            processor,
            dir,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn random_model_saves_and_loads() {
        let cfg: LlavaConfig = serde_json::from_value(serde_json::json!({
            "text_config": {"hidden_size": 32, "intermediate_size": 48, "num_hidden_layers": 1,
                "num_attention_heads": 2, "num_key_value_heads": 1, "vocab_size": 64},
            "vision_config": {"hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 2,
                "num_attention_heads": 2, "image_size": 28, "patch_size": 14},
            "image_token_index": 63
        }))
        .unwrap();
        let dev = Device::Cpu;
        let w = random_weights(&cfg, 1, &dev).unwrap();
        // Both vision layers and the post-layernorm are part of a full checkpoint.
        assert!(w.contains_key("vision_tower.vision_model.encoder.layers.1.mlp.fc2.weight"));
        assert!(w.contains_key("vision_tower.vision_model.post_layernorm.bias"));
        assert!(w.contains_key("language_model.lm_head.weight"));
        let dir = tempfile::tempdir().unwrap();
        save_model(dir.path(), &cfg, &w).unwrap();
        let loaded = Llava::load(dir.path(), &dev, DType::F32).unwrap();
        let direct = Llava::new(VarBuilder::from_tensors(w, DType::F32, &dev), &cfg).unwrap();
        let px = Tensor::ones((1, 3, 28, 28), DType::F32, &dev).unwrap();
        let ids = Tensor::new(&[[1u32, 63, 63, 63, 63, 5, 9]], &dev).unwrap();
        let f = loaded.image_features(&px).unwrap();
        let a = loaded.forward(&ids, Some(&f), None).unwrap();
        let b = direct.forward(&ids, Some(&f), None).unwrap();
        let d = (a - b)
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert_eq!(d, 0.0);
    }

    #[test]
    fn layouts_are_detected() {
        let names = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<BTreeSet<_>>();
        assert!(detect_layout(&names(&[
            "language_model.model.embed_tokens.weight",
            "language_model.lm_head.weight",
            "vision_tower.vision_model.embeddings.patch_embedding.weight",
            "multi_modal_projector.linear_1.weight",
        ]))
        .is_empty());
        let r = detect_layout(&names(&[
            "model.language_model.embed_tokens.weight",
            "lm_head.weight",
            "model.vision_tower.embeddings.patch_embedding.weight",
            "model.multi_modal_projector.linear_1.weight",
        ]));
        assert_eq!(r.len(), 4);
        assert!(r.contains(&(
            "vision_tower.vision_model.".into(),
            "model.vision_tower.".into()
        )));
    }
}
