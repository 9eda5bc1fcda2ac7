//! The experiment's config file (`experiments/*.toml`): the sizes of each
//! stage and the arms compared. Serde mirrors of the file, section by
//! section.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

/// One experiment: data, generation, training and the arms.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExperimentConfig {
    /// Short name (folders and the report's title).
    pub name: String,
    /// The base model every arm starts from, and that writes the
    /// candidates (a llava-hf folder, relative to where `spr` runs).
    pub base_model: PathBuf,
    /// REC prompt profile of `spr eval` (see `spr eval --profile`).
    #[serde(default = "d_profile")]
    pub profile: String,
    /// The synthetic training project and the held-out REC set.
    pub data: DataSection,
    /// `spr generate` with the base model.
    pub generate: GenerateSection,
    /// The training settings shared by every arm.
    pub train: TrainSection,
    /// The arms compared, each trained once per seed.
    #[serde(rename = "arm")]
    pub arms: Vec<Arm>,
}

/// `[data]`.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataSection {
    /// Training scenes (SPR region queries are built on them).
    pub scenes: usize,
    /// Their seed: no evaluation set may use it (the demo's is 2025, the
    /// tiny models' 7, 11, 17).
    pub seed: u64,
    /// Scenes of the held-out REC set (seed derived from `seed`, as the
    /// demo's REC set is).
    pub rec_scenes: usize,
}

/// `[generate]`: passed to `spr generate`.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GenerateSection {
    /// Prompt template ids.
    pub prompts: Vec<String>,
    /// Samples per (query, prompt).
    pub samples: usize,
    /// Sampling temperature.
    pub temperature: f32,
    /// Nucleus sampling.
    pub top_p: f32,
    /// Token budget per candidate.
    pub max_new_tokens: usize,
}

/// `[train]`: the same steps and learning-rate schedule for every arm.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainSection {
    /// Optimizer steps.
    pub steps: u64,
    /// Pairs (or SFT rows) per step.
    pub batch: usize,
    /// Peak learning rate.
    pub lr: f64,
    /// Warmup steps.
    pub warmup: u64,
    /// DPO β.
    pub beta: f64,
    /// LoRA rank.
    pub lora_r: usize,
    /// LoRA α.
    pub lora_alpha: f64,
    /// Longest sequence kept.
    pub max_len: usize,
    /// One run per seed and arm.
    pub seeds: Vec<u64>,
    /// Modules left without a trained adapter (`spr train --freeze`): a
    /// base whose layers were set by hand and frozen in its own training
    /// keeps them here too.
    #[serde(default)]
    pub freeze: Vec<String>,
}

/// `[[arm]]`: one way of training on the pairs.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Arm {
    /// Label in the report (also the run folders' stem).
    pub name: String,
    /// `dpo`, `sft`, `fdpo`, … (`spr train --objective`).
    pub objective: String,
    /// λ of the pairs it trains on.
    pub lambda: f32,
    /// fDPO segmenter (`grounded`: text vs box tokens).
    #[serde(default)]
    pub segmenter: Option<String>,
}

fn d_profile() -> String {
    "tiny".into()
}

impl ExperimentConfig {
    /// Reads and checks a config file.
    pub fn load(path: &Path) -> Result<Self> {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        let cfg: Self =
            toml::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
        cfg.check()
            .with_context(|| format!("checking {}", path.display()))?;
        Ok(cfg)
    }

    fn check(&self) -> Result<()> {
        if self.arms.is_empty() {
            bail!("no [[arm]]");
        }
        if self.train.seeds.is_empty() {
            bail!("[train] seeds is empty");
        }
        let mut names = std::collections::HashSet::new();
        for a in &self.arms {
            if !(0.0..=1.0).contains(&a.lambda) {
                bail!("arm {:?}: lambda {} is outside 0–1", a.name, a.lambda);
            }
            if !names.insert(slug(&a.name)) {
                bail!("arm {:?}: another arm has the same folder name", a.name);
            }
        }
        if self.data.scenes == 0 || self.data.rec_scenes == 0 {
            bail!("[data] scenes and rec_scenes must be positive");
        }
        Ok(())
    }

    /// The distinct λ values of the arms, in first-seen order.
    pub fn lambdas(&self) -> Vec<f32> {
        let mut out: Vec<f32> = Vec::new();
        for a in &self.arms {
            if !out.iter().any(|l| (l - a.lambda).abs() < 1e-6) {
                out.push(a.lambda);
            }
        }
        out
    }
}

/// A folder-safe form of a label: ASCII letters, digits and `-`.
pub fn slug(label: &str) -> String {
    let mut out = String::new();
    for c in label.chars() {
        if c.is_ascii_alphanumeric() {
            out.push(c.to_ascii_lowercase());
        } else if c == '.' {
            out.push('_');
        } else if !out.ends_with('-') {
            out.push('-');
        }
    }
    out.trim_matches('-').to_string()
}

/// The pairs file of λ inside the project (`spr pairs --out`).
pub fn pairs_file(lambda: f32) -> String {
    format!("pairs-lambda{}.jsonl", slug(&format!("{lambda}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bundled_config_parses_and_slugs_are_safe() {
        let cfg = ExperimentConfig::load(Path::new("experiments/tiny.toml")).unwrap();
        assert!(cfg.arms.len() >= 5);
        assert!(cfg.train.seeds.len() >= 3);
        assert_eq!(slug("DPO λ=0.8"), "dpo-0_8");
        assert_eq!(pairs_file(0.8), "pairs-lambda0_8.jsonl");
        assert_eq!(pairs_file(1.0), "pairs-lambda1.jsonl");
    }

    #[test]
    fn bad_configs_are_refused_with_the_reason() {
        let text = std::fs::read_to_string("experiments/tiny.toml").unwrap();
        let mut cfg: ExperimentConfig = toml::from_str(&text).unwrap();
        cfg.arms[0].lambda = 1.5;
        assert!(cfg.check().unwrap_err().to_string().contains("outside 0–1"));
        cfg.arms[0].lambda = 0.8;
        cfg.train.seeds.clear();
        assert!(cfg.check().unwrap_err().to_string().contains("seeds"));
    }
}
