//! A training run's configuration (`runs/<name>/config.json`): the typed
//! [`TrainConfig`] and the plain types it is made of (objective, learning-
//! rate schedule, LoRA targets, what trains). Nothing here needs a tensor
//! library, so the CLI and the GUI read and validate a run's config
//! without the trainer; the trainer (`crate::train`) uses the same types.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::core::segment::SegmenterConfig;

/// A configuration value out of range; the message names the field.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct ConfigError {
    /// The field (`lr`, `objective`, …).
    pub field: &'static str,
    /// What is wrong.
    pub message: String,
}

/// A preference (or supervised) training objective.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(rename_all = "snake_case")]
pub enum Objective {
    /// Supervised fine-tuning on the chosen responses only.
    Sft,
    /// DPO's sigmoid loss (TRL's `sigmoid`; conservative DPO when
    /// `label_smoothing > 0`).
    #[default]
    #[serde(alias = "sigmoid")]
    Dpo,
    /// IPO's squared loss on per-token average log-probs.
    Ipo,
    /// Hinge loss (SLiC / RSO).
    Hinge,
    /// Robust DPO (unbiased under label noise `label_smoothing`).
    Robust,
    /// Fine-grained DPO with segment-specific β (SpatialReasoner-R1).
    Fdpo,
}

impl Objective {
    /// Every objective, in declaration order.
    pub const ALL: [Objective; 6] = [
        Objective::Sft,
        Objective::Dpo,
        Objective::Ipo,
        Objective::Hinge,
        Objective::Robust,
        Objective::Fdpo,
    ];

    /// The configuration name (`"dpo"`, `"fdpo"`, …), as serde writes it.
    pub fn name(self) -> &'static str {
        match self {
            Objective::Sft => "sft",
            Objective::Dpo => "dpo",
            Objective::Ipo => "ipo",
            Objective::Hinge => "hinge",
            Objective::Robust => "robust",
            Objective::Fdpo => "fdpo",
        }
    }

    /// Whether the loss depends on reference log-probs (all but SFT).
    pub fn needs_reference(self) -> bool {
        self != Objective::Sft
    }

    /// Whether the loss needs per-segment log-probs and reward gaps.
    pub fn needs_segments(self) -> bool {
        self == Objective::Fdpo
    }

    /// Whether [`ObjectiveConfig::label_smoothing`] applies.
    pub fn uses_label_smoothing(self) -> bool {
        matches!(self, Objective::Dpo | Objective::Robust)
    }
}

impl fmt::Display for Objective {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// An objective name that is not one of [`Objective::ALL`].
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("unknown objective `{0}` (expected sft, dpo, ipo, hinge, robust or fdpo)")]
pub struct UnknownObjective(pub String);

impl FromStr for Objective {
    type Err = UnknownObjective;

    /// Parses a configuration name, ignoring ASCII case and surrounding
    /// whitespace; `sigmoid` (TRL's name) means [`Objective::Dpo`].
    fn from_str(s: &str) -> std::result::Result<Self, Self::Err> {
        let t = s.trim();
        if t.eq_ignore_ascii_case("sigmoid") {
            return Ok(Objective::Dpo);
        }
        Objective::ALL
            .into_iter()
            .find(|o| o.name().eq_ignore_ascii_case(t))
            .ok_or_else(|| UnknownObjective(s.to_string()))
    }
}

/// Hyper-parameters of the objectives.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ObjectiveConfig {
    /// Which loss.
    pub objective: Objective,
    /// β: inverse strength of the pull towards the reference (TRL and SPR
    /// default 0.1). For IPO it is the paper's τ.
    pub beta: f64,
    /// ε: assumed fraction of flipped preference labels, in `[0, 0.5)`;
    /// used by `dpo` (conservative DPO) and `robust` only, and must be 0 for
    /// the others.
    pub label_smoothing: f64,
    /// fDPO α: how far β_s may move from β, in `[0, 1]` (paper: 0.3).
    pub fdpo_alpha: f64,
    /// fDPO λ_f: temperature of the softmax over reward gaps (paper: 0.6).
    pub fdpo_lambda: f64,
}

impl Default for ObjectiveConfig {
    fn default() -> Self {
        Self {
            objective: Objective::Dpo,
            beta: 0.1,
            label_smoothing: 0.0,
            fdpo_alpha: 0.3,
            fdpo_lambda: 0.6,
        }
    }
}

impl ObjectiveConfig {
    /// The default configuration for `objective`.
    pub fn new(objective: Objective) -> Self {
        Self {
            objective,
            ..Self::default()
        }
    }

    /// Checks every value's range; the error names the field.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |m: String| {
            Err(ConfigError {
                field: "objective",
                message: m,
            })
        };
        if !(self.beta.is_finite() && self.beta > 0.0) {
            return bad(format!("beta must be finite and > 0, got {}", self.beta));
        }
        if !(0.0..0.5).contains(&self.label_smoothing) {
            return bad(format!(
                "label_smoothing must lie in [0, 0.5), got {}",
                self.label_smoothing
            ));
        }
        if self.label_smoothing > 0.0 && !self.objective.uses_label_smoothing() {
            return bad(format!(
                "label_smoothing = {} has no effect on `{}` (only dpo and robust use it); set it to 0",
                self.label_smoothing, self.objective
            ));
        }
        if !(0.0..=1.0).contains(&self.fdpo_alpha) {
            return bad(format!(
                "fdpo_alpha must lie in [0, 1], got {}",
                self.fdpo_alpha
            ));
        }
        if !self.fdpo_lambda.is_finite() {
            return bad(format!(
                "fdpo_lambda must be finite, got {}",
                self.fdpo_lambda
            ));
        }
        Ok(())
    }
}

/// Linear warmup followed by a half-cosine decay.
///
/// With `w = warmup_steps`, `n = total_steps`, `r = min_lr_ratio` and
/// `peak = peak_lr`, the learning rate of optimizer step `s` (0-based, the
/// value used for the update that step `s` makes) is
///
/// ```text
/// s < w:   lr(s) = peak · s / max(1, w)
/// s ≥ w:   p     = min(1, (s − w) / max(1, n − w))
///          f     = ½ · (1 + cos(π · p))
///          lr(s) = peak · (r + (1 − r) · f)
/// ```
///
/// With `r = 0` this is exactly transformers'
/// `get_cosine_schedule_with_warmup(num_cycles=0.5)` for `s ≤ n` (so step
/// 0 has lr 0, step `w` has `peak`, the end has 0); with `r > 0` it is
/// `get_cosine_with_min_lr_schedule_with_warmup(min_lr_rate=r)`. Unlike
/// transformers, progress is clamped at 1, so steps past `n` keep the
/// final value instead of the cosine rising again.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct LrSchedule {
    /// Steps of linear warmup from 0 to `peak_lr`.
    pub warmup_steps: u64,
    /// Total optimizer steps of the run (warmup included).
    pub total_steps: u64,
    /// The learning rate at the end of warmup.
    pub peak_lr: f64,
    /// The final learning rate as a fraction of `peak_lr`, in `[0, 1]`.
    pub min_lr_ratio: f64,
}

impl LrSchedule {
    /// Checks the ranges: `peak_lr` finite and ≥ 0, `min_lr_ratio` in
    /// `[0, 1]`, `warmup_steps ≤ total_steps`.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if !self.peak_lr.is_finite() || self.peak_lr < 0.0 {
            return Err(ConfigError {
                field: "peak_lr",
                message: format!("must be finite and >= 0, got {}", self.peak_lr),
            });
        }
        if !(0.0..=1.0).contains(&self.min_lr_ratio) {
            return Err(ConfigError {
                field: "min_lr_ratio",
                message: format!("must be in [0, 1], got {}", self.min_lr_ratio),
            });
        }
        if self.warmup_steps > self.total_steps {
            return Err(ConfigError {
                field: "warmup_steps",
                message: format!(
                    "{} is more than total_steps {}",
                    self.warmup_steps, self.total_steps
                ),
            });
        }
        Ok(())
    }

    /// The learning rate of step `step` (see the type's docs for the
    /// formula).
    pub fn lr_at(&self, step: u64) -> f64 {
        if step < self.warmup_steps {
            return self.peak_lr * step as f64 / self.warmup_steps.max(1) as f64;
        }
        let decay_steps = self.total_steps.saturating_sub(self.warmup_steps).max(1);
        let progress = ((step - self.warmup_steps) as f64 / decay_steps as f64).min(1.0);
        let cosine = 0.5 * (1.0 + (std::f64::consts::PI * progress).cos());
        let r = self.min_lr_ratio;
        self.peak_lr * (r + (1.0 - r) * cosine)
    }
}

/// A linear layer of the Llama decoder that can carry an adapter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TargetModule {
    /// `self_attn.q_proj`.
    #[serde(rename = "q_proj")]
    Q,
    /// `self_attn.k_proj`.
    #[serde(rename = "k_proj")]
    K,
    /// `self_attn.v_proj`.
    #[serde(rename = "v_proj")]
    V,
    /// `self_attn.o_proj`.
    #[serde(rename = "o_proj")]
    O,
    /// `mlp.gate_proj`.
    #[serde(rename = "gate_proj")]
    Gate,
    /// `mlp.up_proj`.
    #[serde(rename = "up_proj")]
    Up,
    /// `mlp.down_proj`.
    #[serde(rename = "down_proj")]
    Down,
}

impl TargetModule {
    /// All seven linear layers of a decoder block, in checkpoint order.
    pub const ALL: [TargetModule; 7] = [
        Self::Q,
        Self::K,
        Self::V,
        Self::O,
        Self::Gate,
        Self::Up,
        Self::Down,
    ];

    /// The module's attribute name (`q_proj`, ...), as PEFT's
    /// `target_modules` lists it.
    pub fn name(self) -> &'static str {
        match self {
            Self::Q => "q_proj",
            Self::K => "k_proj",
            Self::V => "v_proj",
            Self::O => "o_proj",
            Self::Gate => "gate_proj",
            Self::Up => "up_proj",
            Self::Down => "down_proj",
        }
    }

    /// The module's path inside a decoder layer (`self_attn.q_proj`, ...).
    pub fn path_in_layer(self) -> &'static str {
        match self {
            Self::Q => "self_attn.q_proj",
            Self::K => "self_attn.k_proj",
            Self::V => "self_attn.v_proj",
            Self::O => "self_attn.o_proj",
            Self::Gate => "mlp.gate_proj",
            Self::Up => "mlp.up_proj",
            Self::Down => "mlp.down_proj",
        }
    }

    /// Parses `q_proj`, `q`, `self_attn.q_proj`, ... .
    pub fn parse(name: &str) -> Option<Self> {
        let short = name.rsplit('.').next().unwrap_or(name);
        let short = short.strip_suffix("_proj").unwrap_or(short);
        Some(match short {
            "q" => Self::Q,
            "k" => Self::K,
            "v" => Self::V,
            "o" => Self::O,
            "gate" => Self::Gate,
            "up" => Self::Up,
            "down" => Self::Down,
            _ => return None,
        })
    }
}

/// What a run trains.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Tune {
    /// LoRA adapters on the decoder linears; the base weights stay frozen.
    #[default]
    Lora,
    /// Every language-model and projector weight (the vision tower stays
    /// frozen). For small models: memory grows with the model.
    Full,
    /// Every weight, the vision tower's too: image features are recomputed
    /// every step instead of cached. For small models whose tower has to
    /// learn (a tiny base model that localizes).
    FullVision,
}

impl Tune {
    /// Whether every language-model and projector weight trains.
    pub fn is_full(self) -> bool {
        matches!(self, Tune::Full | Tune::FullVision)
    }
}

impl std::str::FromStr for Tune {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "lora" => Ok(Tune::Lora),
            "full" => Ok(Tune::Full),
            "full-vision" | "full_vision" => Ok(Tune::FullVision),
            other => Err(format!(
                "unknown tuning `{other}` (expected lora, full or full-vision)"
            )),
        }
    }
}

/// Everything a run needs, written to `config.json` so it can be
/// reproduced and resumed.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainConfig {
    /// Model folder or hub id (`LlavaBundle::load`).
    pub model: String,
    /// TRL-layout preference JSONL (`train::data::load_trl`) or an SPR
    /// project folder (its `pairs.jsonl`, `train::data::load_project_pairs`).
    pub data: PathBuf,
    /// Objective and its hyper-parameters.
    pub objective: ObjectiveConfig,
    /// Segmenter for fDPO (per-segment log-probs); `None` otherwise.
    #[serde(default)]
    pub segmenter: Option<SegmenterConfig>,
    /// What trains (LoRA adapters unless `full`).
    #[serde(default)]
    pub tune: Tune,
    /// LoRA rank.
    pub lora_r: usize,
    /// LoRA α.
    pub lora_alpha: f64,
    /// Decoder linears that get adapters.
    pub lora_targets: Vec<TargetModule>,
    /// Peak learning rate.
    pub lr: f64,
    /// Linear warmup steps.
    pub warmup_steps: u64,
    /// Final learning rate as a fraction of `lr` (cosine floor).
    pub min_lr_ratio: f64,
    /// Optimizer steps of the whole run.
    pub total_steps: u64,
    /// Pairs per micro-batch.
    pub batch_size: usize,
    /// Micro-batches per optimizer step.
    pub grad_accum: usize,
    /// Global gradient-norm limit.
    pub max_grad_norm: f64,
    /// AdamW β₁.
    pub adam_beta1: f64,
    /// AdamW β₂.
    pub adam_beta2: f64,
    /// AdamW ε.
    pub adam_eps: f64,
    /// AdamW decoupled weight decay.
    pub weight_decay: f64,
    /// Seed of the LoRA initialisation and the data order.
    pub seed: u64,
    /// Save a checkpoint every this many optimizer steps (0: only on stop
    /// and at the end).
    pub checkpoint_every: u64,
    /// Longest prompt + response kept, in tokens.
    pub max_len: usize,
    /// REC evaluation of the policy during training, when set.
    #[serde(default)]
    pub eval: Option<EvalSettings>,
    /// Tensors whose llava-hf name starts with one of these stay as loaded
    /// (a structured initialisation that training must not wash out, e.g.
    /// the tiny base model's picking heads). With LoRA, the adapters of the
    /// modules so named are not trained: they keep B = 0 and change
    /// nothing.
    #[serde(default)]
    pub freeze: Vec<String>,
}

impl TrainConfig {
    /// Whether `--freeze` keeps the tensor `name` (canonical llava-hf name)
    /// as loaded.
    pub fn freezes(&self, name: &str) -> bool {
        self.freeze.iter().any(|p| name.starts_with(p.as_str()))
    }

    /// SPR's settings (DPO β 0.1, LoRA r 128 α 256 on every decoder
    /// linear, batch 2, lr 1e-5) for `model` and `data`.
    pub fn new(model: impl Into<String>, data: impl Into<PathBuf>) -> Self {
        Self {
            model: model.into(),
            data: data.into(),
            objective: ObjectiveConfig::default(),
            segmenter: None,
            tune: Tune::Lora,
            lora_r: 128,
            lora_alpha: 256.0,
            lora_targets: TargetModule::ALL.to_vec(),
            lr: 1e-5,
            warmup_steps: 0,
            min_lr_ratio: 0.0,
            total_steps: 1000,
            batch_size: 2,
            grad_accum: 1,
            max_grad_norm: 1.0,
            adam_beta1: 0.9,
            adam_beta2: 0.999,
            adam_eps: 1e-8,
            weight_decay: 0.0,
            seed: 42,
            checkpoint_every: 500,
            max_len: 2048,
            eval: None,
            freeze: Vec::new(),
        }
    }

    /// The learning-rate schedule.
    pub fn schedule(&self) -> LrSchedule {
        LrSchedule {
            warmup_steps: self.warmup_steps,
            total_steps: self.total_steps,
            peak_lr: self.lr,
            min_lr_ratio: self.min_lr_ratio,
        }
    }

    /// Checks every value's range; the error names the field.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.objective.validate()?;
        self.schedule().validate()?;
        if let Some(eval) = &self.eval {
            eval.validate()?;
        }
        let bad = |field, message: &str| {
            Err(ConfigError {
                field,
                message: message.to_string(),
            })
        };
        if self.tune == Tune::Lora && self.lora_r == 0 {
            return bad("lora_r", "must be at least 1");
        }
        if self.tune == Tune::Lora && self.lora_targets.is_empty() {
            return bad("lora_targets", "must name at least one module");
        }
        if self.total_steps == 0 {
            return bad("total_steps", "must be at least 1");
        }
        if self.batch_size == 0 {
            return bad("batch_size", "must be at least 1");
        }
        if self.grad_accum == 0 {
            return bad("grad_accum", "must be at least 1");
        }
        if !(self.max_grad_norm.is_finite() && self.max_grad_norm > 0.0) {
            return bad("max_grad_norm", "must be finite and > 0");
        }
        if !(0.0..1.0).contains(&self.adam_beta1) || !(0.0..1.0).contains(&self.adam_beta2) {
            return bad("adam_beta1/adam_beta2", "must be in [0, 1)");
        }
        if !(self.adam_eps.is_finite() && self.adam_eps > 0.0) {
            return bad("adam_eps", "must be finite and > 0");
        }
        if !(self.weight_decay.is_finite() && self.weight_decay >= 0.0) {
            return bad("weight_decay", "must be finite and >= 0");
        }
        if self.max_len < 2 {
            return bad("max_len", "must be at least 2");
        }
        if self.objective.objective.needs_segments() && self.segmenter.is_none() {
            return bad("segmenter", "fdpo needs a segmenter");
        }
        if let Some(p) = self.freeze.iter().find(|p| p.is_empty()) {
            return bad(
                "freeze",
                &format!("an empty prefix ({p:?}) would freeze everything"),
            );
        }
        Ok(())
    }
}

/// REC evaluation of the policy (adapters on) during training: every
/// `every` steps and at the end, written to `events.jsonl` as `eval/…`
/// rows with the per-sample file kept (see [`super::events::EvalEvent`]).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EvalSettings {
    /// The REC set: MDETR-style COCO JSON or plain JSONL
    /// ([`crate::core::rec::data`]).
    pub data: PathBuf,
    /// Folder the set's image paths are relative to (default: the set's
    /// own folder, or its `images/` subfolder when that exists).
    #[serde(default)]
    pub image_root: Option<PathBuf>,
    /// Evaluate every this many optimizer steps (0: only at the end).
    pub every: u64,
    /// Prompt and box syntax of the model's answers.
    pub profile: crate::core::rec::profile::RecProfile,
    /// Evaluate at most this many samples (the first ones), all when unset.
    #[serde(default)]
    pub limit: Option<usize>,
    /// Most tokens per answer.
    pub max_new_tokens: usize,
    /// Sequences decoded together.
    pub batch: usize,
}

impl EvalSettings {
    /// Checks the ranges; the error names the field.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.max_new_tokens == 0 {
            return Err(ConfigError {
                field: "eval.max_new_tokens",
                message: "must be at least 1".into(),
            });
        }
        if self.batch == 0 {
            return Err(ConfigError {
                field: "eval.batch",
                message: "must be at least 1".into(),
            });
        }
        self.profile.validate().map_err(|message| ConfigError {
            field: "eval.profile",
            message,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_validation_names_the_field() {
        let ok = ObjectiveConfig::default();
        assert!(ok.validate().is_ok());
        let cases = [
            (ObjectiveConfig { beta: 0.0, ..ok }, "beta"),
            (
                ObjectiveConfig {
                    beta: f64::NAN,
                    ..ok
                },
                "beta",
            ),
            (
                ObjectiveConfig {
                    label_smoothing: 0.5,
                    ..ok
                },
                "label_smoothing",
            ),
            (
                ObjectiveConfig {
                    objective: Objective::Ipo,
                    label_smoothing: 0.1,
                    ..ok
                },
                "label_smoothing",
            ),
            (
                ObjectiveConfig {
                    fdpo_alpha: 1.5,
                    ..ok
                },
                "fdpo_alpha",
            ),
            (
                ObjectiveConfig {
                    fdpo_lambda: f64::INFINITY,
                    ..ok
                },
                "fdpo_lambda",
            ),
        ];
        for (cfg, field) in cases {
            let err = cfg.validate().unwrap_err().to_string();
            assert!(err.contains(field), "{err}");
        }
    }

    #[test]
    fn objective_names_round_trip() {
        for o in Objective::ALL {
            assert_eq!(o.name().parse::<Objective>().unwrap(), o);
            let json = serde_json::to_string(&o).unwrap();
            assert_eq!(json, format!("\"{}\"", o.name()));
            assert_eq!(serde_json::from_str::<Objective>(&json).unwrap(), o);
        }
        assert_eq!("sigmoid".parse::<Objective>().unwrap(), Objective::Dpo);
        assert_eq!(
            serde_json::from_str::<Objective>("\"sigmoid\"").unwrap(),
            Objective::Dpo
        );
        assert!("kto".parse::<Objective>().is_err());
        let cfg: ObjectiveConfig = toml::from_str("objective = \"fdpo\"\nbeta = 0.2").unwrap();
        assert_eq!(
            cfg,
            ObjectiveConfig {
                beta: 0.2,
                ..ObjectiveConfig::new(Objective::Fdpo)
            }
        );
        assert!(toml::from_str::<ObjectiveConfig>("betta = 0.2").is_err());
    }

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() <= 1e-12 * b.abs().max(1.0)
    }

    #[test]
    fn schedule_hand_values() {
        let s = LrSchedule {
            warmup_steps: 10,
            total_steps: 110,
            peak_lr: 1e-5,
            min_lr_ratio: 0.0,
        };
        s.validate().unwrap();
        assert_eq!(s.lr_at(0), 0.0);
        assert!(close(s.lr_at(5), 0.5e-5));
        assert!(close(s.lr_at(10), 1e-5));
        // Midpoint of the decay: cos(π/2) = 0 → half the peak.
        assert!(close(s.lr_at(60), 0.5e-5));
        // A quarter: ½(1 + cos(π/4)).
        assert!(close(
            s.lr_at(35),
            1e-5 * 0.5 * (1.0 + std::f64::consts::FRAC_1_SQRT_2)
        ));
        assert!(s.lr_at(110).abs() < 1e-20);
        assert!(s.lr_at(500).abs() < 1e-20);
        // A floor of 10 %.
        let f = LrSchedule {
            min_lr_ratio: 0.1,
            ..s
        };
        assert!(close(f.lr_at(10), 1e-5));
        assert!(close(f.lr_at(60), 1e-5 * (0.1 + 0.9 * 0.5)));
        assert!(close(f.lr_at(110), 1e-6));
        // No warmup: the first step has the peak.
        let n = LrSchedule {
            warmup_steps: 0,
            ..s
        };
        assert!(close(n.lr_at(0), 1e-5));
        assert!(LrSchedule {
            warmup_steps: 200,
            ..s
        }
        .validate()
        .is_err());
    }

    #[test]
    fn train_config_round_trips_and_names_bad_fields() {
        let cfg = TrainConfig::new("m", "d");
        cfg.validate().unwrap();
        let json = serde_json::to_string(&cfg).unwrap();
        assert_eq!(serde_json::from_str::<TrainConfig>(&json).unwrap(), cfg);
        let bad = TrainConfig {
            batch_size: 0,
            ..cfg.clone()
        };
        assert_eq!(bad.validate().unwrap_err().field, "batch_size");
        let fdpo = TrainConfig {
            objective: ObjectiveConfig::new(Objective::Fdpo),
            ..cfg
        };
        assert_eq!(fdpo.validate().unwrap_err().field, "segmenter");
        let frozen_lora = TrainConfig {
            freeze: vec!["language_model.model.layers.0.".into()],
            ..TrainConfig::new("m", "d")
        };
        frozen_lora.validate().unwrap();
        let frozen_full = TrainConfig {
            tune: Tune::Full,
            ..frozen_lora
        };
        frozen_full.validate().unwrap();
        let everything = TrainConfig {
            freeze: vec![String::new()],
            ..frozen_full
        };
        assert_eq!(everything.validate().unwrap_err().field, "freeze");
    }
}
