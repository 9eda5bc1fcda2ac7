//! Learning-rate schedule and gradient clipping for the trainer.
//!
//! - [`LrSchedule`]: linear warmup then cosine decay, the schedule TRL's
//!   `DPOTrainer` gets from transformers' `get_cosine_schedule_with_warmup`
//!   (`lr_scheduler_type="cosine"`), with an optional floor
//!   (`get_cosine_with_min_lr_schedule_with_warmup`'s `min_lr_rate`).
//! - [`clip_grad_norm`]: PyTorch's `clip_grad_norm_` over a candle
//!   [`GradStore`]: the global L2 norm of all gradients (logged as TRL's
//!   `grad_norm`), and every gradient scaled down when it exceeds the limit.

use candle_core::backprop::GradStore;
use candle_core::{DType, Tensor, Var};

pub use crate::core::runs::config::LrSchedule;

/// Errors of this module.
#[derive(Debug, thiserror::Error)]
pub enum ScheduleError {
    /// A tensor operation failed.
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
    /// A schedule or clipping parameter is out of range.
    #[error("{field}: {message}")]
    Config {
        /// The parameter.
        field: &'static str,
        /// What is wrong.
        message: String,
    },
}

/// Result type of this module.
pub type Result<T> = std::result::Result<T, ScheduleError>;

/// Clips the gradients of `vars` in `grads` to a global L2 norm of at most
/// `max_norm`, like PyTorch's `clip_grad_norm_`, and returns the norm
/// measured before clipping (TRL's `grad_norm` metric).
///
/// The norm is `sqrt(Σ_v Σ_i g_{v,i}²)` over the vars that have a gradient
/// (vars without one are ignored), accumulated in `f32` whatever the
/// gradients' dtype. When it exceeds `max_norm`, every gradient is
/// multiplied in place by `max_norm / norm` (keeping its dtype), so the
/// new norm is `max_norm`; PyTorch adds 1e-6 to the denominator, which
/// makes no visible difference. A non-finite norm is returned as is and
/// nothing is scaled: the caller should skip that step.
pub fn clip_grad_norm(grads: &mut GradStore, vars: &[Var], max_norm: f64) -> Result<f64> {
    if !max_norm.is_finite() || max_norm <= 0.0 {
        return Err(ScheduleError::Config {
            field: "max_norm",
            message: format!("must be finite and > 0, got {max_norm}"),
        });
    }
    let mut squares = Vec::with_capacity(vars.len());
    for var in vars {
        if let Some(g) = grads.get(var.as_tensor()) {
            squares.push(g.to_dtype(DType::F32)?.sqr()?.sum_all()?);
        }
    }
    if squares.is_empty() {
        return Ok(0.0);
    }
    // One device → host copy for all vars.
    let total = Tensor::stack(&squares, 0)?.sum_all()?.to_scalar::<f32>()?;
    let norm = f64::from(total).sqrt();
    if norm.is_finite() && norm > max_norm {
        let scale = max_norm / norm;
        for var in vars {
            let scaled = match grads.get(var.as_tensor()) {
                Some(g) => g.affine(scale, 0.0)?,
                None => continue,
            };
            grads.insert(var.as_tensor(), scaled);
        }
    }
    Ok(norm)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn clipping_scales_to_max_norm_and_skips_below() {
        let dev = Device::Cpu;
        let a = Var::from_vec(vec![1f32, 2.0], 2, &dev).unwrap();
        let b = Var::from_vec(vec![3f32, -1.0, 0.5], 3, &dev).unwrap();
        let unused = Var::from_vec(vec![7f32], 1, &dev).unwrap();
        // loss = Σ a·[3, 4] + Σ b·[0, 12, 0] → grads [3, 4] and [0, 12, 0]:
        // global norm sqrt(9 + 16 + 144) = 13.
        let wa = Tensor::new(&[3f32, 4.0], &dev).unwrap();
        let wb = Tensor::new(&[0f32, 12.0, 0.0], &dev).unwrap();
        let loss = (a.as_tensor().mul(&wa).unwrap().sum_all().unwrap()
            + b.as_tensor().mul(&wb).unwrap().sum_all().unwrap())
        .unwrap();
        let vars = [a.clone(), b.clone(), unused];
        let grad_of =
            |g: &GradStore, v: &Var| g.get(v.as_tensor()).unwrap().to_vec1::<f32>().unwrap();

        let mut grads = loss.backward().unwrap();
        let norm = clip_grad_norm(&mut grads, &vars, 100.0).unwrap();
        assert!((norm - 13.0).abs() < 1e-5);
        assert_eq!(grad_of(&grads, &a), vec![3.0, 4.0]);
        assert_eq!(grad_of(&grads, &b), vec![0.0, 12.0, 0.0]);

        let norm = clip_grad_norm(&mut grads, &vars, 6.5).unwrap();
        assert!((norm - 13.0).abs() < 1e-5);
        assert_eq!(grad_of(&grads, &a), vec![1.5, 2.0]);
        assert_eq!(grad_of(&grads, &b), vec![0.0, 6.0, 0.0]);
        let after = clip_grad_norm(&mut grads, &vars, 100.0).unwrap();
        assert!((after - 6.5).abs() < 1e-5);

        assert!(clip_grad_norm(&mut grads, &vars, 0.0).is_err());
        assert_eq!(
            clip_grad_norm(&mut GradStore::default(), &vars, 1.0).unwrap(),
            0.0
        );
    }
}
