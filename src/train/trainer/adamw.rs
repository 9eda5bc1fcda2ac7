//! Our AdamW, with `torch.optim.AdamW`'s update (decoupled weight decay,
//! bias-corrected moments, `ε` added after the square root), over a list
//! of named [`Var`]s whose moments can be saved and restored: candle's own
//! optimizer keeps its state private, and exact resume needs it.
//! `scripts/optim/adamw_reference.py` records torch's trajectory, which the
//! test below matches within 1e-6.

use std::collections::HashMap;
use std::path::Path;

use candle_core::backprop::GradStore;
use candle_core::{DType, Device, Tensor, Var};

use super::checkpoint::checkpoint_tensor;
use super::Result;
use crate::core::runs::TrainConfig;
use crate::model::lora::save_safetensors;

/// AdamW with `torch.optim.AdamW`'s update over a list of vars, whose
/// moments can be saved and restored.
pub(crate) struct AdamW {
    vars: Vec<(String, Var)>,
    m: Vec<Tensor>,
    v: Vec<Tensor>,
    pub(super) t: u64,
    beta1: f64,
    beta2: f64,
    eps: f64,
    weight_decay: f64,
}

impl AdamW {
    pub(super) fn new(vars: Vec<(String, Var)>, cfg: &TrainConfig) -> Result<Self> {
        Self::with_settings(
            vars,
            cfg.adam_beta1,
            cfg.adam_beta2,
            cfg.adam_eps,
            cfg.weight_decay,
        )
    }

    /// AdamW over `vars` with explicit β₁, β₂, ε and weight decay.
    pub(crate) fn with_settings(
        vars: Vec<(String, Var)>,
        beta1: f64,
        beta2: f64,
        eps: f64,
        weight_decay: f64,
    ) -> Result<Self> {
        let mut m = Vec::with_capacity(vars.len());
        for (_, var) in &vars {
            m.push(var.as_tensor().zeros_like()?.to_dtype(DType::F32)?);
        }
        Ok(Self {
            v: m.clone(),
            m,
            vars,
            t: 0,
            beta1,
            beta2,
            eps,
            weight_decay,
        })
    }

    pub(crate) fn var_list(&self) -> Vec<Var> {
        self.vars.iter().map(|(_, v)| v.clone()).collect()
    }

    /// One update: `p ← p·(1 − lr·wd)`, moments, `p ← p − lr/bc₁ · m /
    /// (√v / √bc₂ + ε)`. Vars without a gradient are left alone.
    pub(crate) fn step(&mut self, grads: &GradStore, lr: f64) -> Result<()> {
        self.t += 1;
        let t = self.t as i32;
        let bc1 = 1.0 - self.beta1.powi(t);
        let bc2_sqrt = (1.0 - self.beta2.powi(t)).sqrt();
        for (i, (_, var)) in self.vars.iter().enumerate() {
            let Some(g) = grads.get(var.as_tensor()) else {
                continue;
            };
            let dtype = var.dtype();
            // A variable's gradient can still hold the step's graph (candle
            // detaches the gradients it passes down, not the ones it
            // leaves at variables); the moments must not, or every step's
            // activations stay alive through them.
            let g = g.detach().to_dtype(DType::F32)?;
            let m = ((&self.m[i] * self.beta1)? + (&g * (1.0 - self.beta1))?)?.detach();
            let v = ((&self.v[i] * self.beta2)? + (g.sqr()? * (1.0 - self.beta2))?)?.detach();
            let p = var.as_tensor().detach().to_dtype(DType::F32)?;
            let p = (&p * (1.0 - lr * self.weight_decay))?;
            let denom = ((v.sqrt()? / bc2_sqrt)? + self.eps)?;
            let p = (p - (m.div(&denom)? * (lr / bc1))?)?;
            var.set(&p.to_dtype(dtype)?)?;
            self.m[i] = m;
            self.v[i] = v;
        }
        Ok(())
    }

    pub(super) fn save(&self, path: &Path) -> Result<()> {
        let mut map = HashMap::new();
        for (i, (name, _)) in self.vars.iter().enumerate() {
            map.insert(format!("m.{name}"), self.m[i].clone());
            map.insert(format!("v.{name}"), self.v[i].clone());
        }
        Ok(save_safetensors(&map, path)?)
    }

    pub(super) fn load(&mut self, path: &Path, t: u64, device: &Device) -> Result<()> {
        let map = candle_core::safetensors::load(path, device)?;
        for (i, (name, var)) in self.vars.iter().enumerate() {
            for (prefix, slot) in [("m", &mut self.m[i]), ("v", &mut self.v[i])] {
                let key = format!("{prefix}.{name}");
                let x = checkpoint_tensor(&map, path, &key, var, "the adapter")?;
                *slot = x.to_dtype(DType::F32)?;
            }
        }
        self.t = t;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;
    use std::collections::BTreeMap;

    #[derive(Deserialize)]
    struct Reference {
        betas: [f64; 2],
        eps: f64,
        weight_decay: f64,
        shapes: BTreeMap<String, Vec<usize>>,
        initial: BTreeMap<String, Vec<f64>>,
        steps: Vec<RefStep>,
    }

    #[derive(Deserialize)]
    struct RefStep {
        lr: f64,
        grads: BTreeMap<String, Vec<f64>>,
        params: BTreeMap<String, Vec<f64>>,
    }

    /// Our AdamW follows `torch.optim.AdamW` step for step
    /// (`scripts/optim/adamw_reference.py`, torch 2.15, float64; ours f32).
    #[test]
    fn adamw_matches_torch() {
        let r: Reference =
            serde_json::from_str(include_str!("../testdata/adamw_reference.json")).unwrap();
        let dev = Device::Cpu;
        let mut cfg = TrainConfig::new("m", "d");
        cfg.adam_beta1 = r.betas[0];
        cfg.adam_beta2 = r.betas[1];
        cfg.adam_eps = r.eps;
        cfg.weight_decay = r.weight_decay;
        let vars: Vec<(String, Var)> = r
            .shapes
            .iter()
            .map(|(name, shape)| {
                let data: Vec<f32> = r.initial[name].iter().map(|&x| x as f32).collect();
                let t = Tensor::from_vec(data, shape.as_slice(), &dev).unwrap();
                (name.clone(), Var::from_tensor(&t).unwrap())
            })
            .collect();
        let mut opt = AdamW::new(vars.clone(), &cfg).unwrap();
        let mut worst = 0f64;
        for step in &r.steps {
            // loss = Σ p·g has gradient g.
            let mut loss = Tensor::zeros((), DType::F32, &dev).unwrap();
            for (name, var) in &vars {
                let g: Vec<f32> = step.grads[name].iter().map(|&x| x as f32).collect();
                let g = Tensor::from_vec(g, var.dims(), &dev).unwrap();
                loss = (loss + (var.as_tensor() * g).unwrap().sum_all().unwrap()).unwrap();
            }
            let grads = loss.backward().unwrap();
            opt.step(&grads, step.lr).unwrap();
            for (name, var) in &vars {
                let ours = var
                    .as_tensor()
                    .flatten_all()
                    .unwrap()
                    .to_vec1::<f32>()
                    .unwrap();
                for (a, b) in ours.iter().zip(&step.params[name]) {
                    worst = worst.max((f64::from(*a) - b).abs());
                }
            }
        }
        assert!(worst < 1e-6, "max |Δparam| vs torch: {worst}");
    }
}
