//! Fused CPU ops: one pass each, with a backward pass where training
//! needs one.
//!
//! candle's fused softmax, RMSNorm and rotary kernels have no backward, so a
//! tracked forward pass falls back to compositions of elementwise ops; each
//! step of those keeps its own full-size intermediate alive for backprop
//! (five tensors for a softmax, five for an RMSNorm, six for a rotation).
//! On the DPO benchmark model that is most of the step's peak memory and a
//! good share of its time. These ops compute the forward in one pass and
//! keep only what their backward needs (the output for softmax, the input
//! for RMSNorm, nothing for the rotation, which is linear).
//!
//! The loops are single-threaded on purpose, and serve inference too: the
//! commands that spread work over the cores run one thread per op
//! (`RAYON_NUM_THREADS=1`), and candle-nn's own softmax, norms and rotary
//! kernels hand every call to rayon's global pool, whose one thread then
//! serialises all the workers' calls (and wakes across threads for each).
//!
//! They run on `f32` CPU tensors; elsewhere (CUDA, bf16) the functions
//! use candle's fused kernels when nothing is tracked and the composed
//! ops when gradients are needed.

pub mod attention;
pub mod clip;
pub mod exp;
pub mod gated;
pub mod linear;

use candle_core::{CpuStorage, CustomOp1, CustomOp2, CustomOp3, DType, Layout, Shape, Tensor, D};

fn contiguous_f32<'a>(s: &'a CpuStorage, l: &Layout, op: &str) -> candle_core::Result<&'a [f32]> {
    let CpuStorage::F32(data) = s else {
        candle_core::bail!("{op}: f32 only");
    };
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(&data[a..b]),
        None => candle_core::bail!("{op}: the input must be contiguous"),
    }
}

fn fused(xs: &Tensor) -> bool {
    xs.device().is_cpu() && xs.dtype() == DType::F32
}

/// Softmax over the last axis; backward `dx = y ⊙ (g − Σ g ⊙ y)`.
struct SoftmaxLastDim;

impl CustomOp1 for SoftmaxLastDim {
    fn name(&self) -> &'static str {
        "spr-softmax-last-dim"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let x = contiguous_f32(s, l, self.name())?;
        let dim = l.dims().last().copied().unwrap_or(1).max(1);
        let mut out = vec![0f32; x.len()];
        out.chunks_exact_mut(dim)
            .zip(x.chunks_exact(dim))
            .for_each(|(dst, src)| {
                let max = src.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v));
                if max == f32::NEG_INFINITY {
                    return; // every entry masked: zeros
                }
                for (d, &v) in dst.iter_mut().zip(src) {
                    *d = v - max;
                }
                exp::exp_in_place(dst);
                let inv = 1.0 / dst.iter().sum::<f32>();
                dst.iter_mut().for_each(|d| *d *= inv);
            });
        Ok((CpuStorage::F32(out), l.shape().clone()))
    }

    fn bwd(&self, _x: &Tensor, y: &Tensor, g: &Tensor) -> candle_core::Result<Option<Tensor>> {
        let dot = (g * y)?.sum_keepdim(D::Minus1)?;
        Ok(Some((y * g.broadcast_sub(&dot)?)?))
    }
}

/// Softmax over the last axis, differentiable; one pass on `f32` CPU.
pub fn softmax_last_dim(xs: &Tensor) -> candle_core::Result<Tensor> {
    if fused(xs) {
        xs.contiguous()?.apply_op1(SoftmaxLastDim)
    } else if !xs.track_op() {
        candle_nn::ops::softmax_last_dim(&xs.contiguous()?)
    } else {
        candle_nn::ops::softmax(xs, D::Minus1)
    }
}

/// RMSNorm `w · x / √(mean(x²) + ε)` over the last axis; backward for `x`
/// and (when it tracks gradients) `w`.
struct RmsNorm {
    eps: f32,
}

impl CustomOp2 for RmsNorm {
    fn name(&self) -> &'static str {
        "spr-rms-norm"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let x = contiguous_f32(s1, l1, self.name())?;
        let w = contiguous_f32(s2, l2, self.name())?;
        let dim = w.len().max(1);
        if l1.dims().last() != Some(&w.len()) {
            candle_core::bail!("{}: x is {:?}, w has {}", self.name(), l1.dims(), w.len());
        }
        let eps = self.eps;
        let mut out = vec![0f32; x.len()];
        out.chunks_exact_mut(dim)
            .zip(x.chunks_exact(dim))
            .for_each(|(dst, src)| {
                let ms = src.iter().map(|v| v * v).sum::<f32>() / dim as f32;
                let r = 1.0 / (ms + eps).sqrt();
                for ((d, &v), &wi) in dst.iter_mut().zip(src).zip(w) {
                    *d = v * r * wi;
                }
            });
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _y: &Tensor,
        g: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let r = (x.sqr()?.mean_keepdim(D::Minus1)? + f64::from(self.eps))?
            .sqrt()?
            .recip()?;
        let xhat = x.broadcast_mul(&r)?;
        let gw = g.broadcast_mul(w)?;
        let dot = (&gw * &xhat)?.mean_keepdim(D::Minus1)?;
        let dx = (gw - xhat.broadcast_mul(&dot)?)?.broadcast_mul(&r)?;
        let dw = if w.track_op() {
            let n = w.elem_count();
            Some((g * &xhat)?.reshape(((), n))?.sum(0)?)
        } else {
            None
        };
        Ok((Some(dx), dw))
    }
}

/// RMSNorm over the last axis, differentiable; one pass on `f32` CPU.
pub fn rms_norm(xs: &Tensor, w: &Tensor, eps: f32) -> candle_core::Result<Tensor> {
    if fused(xs) && w.dtype() == DType::F32 {
        xs.contiguous()?
            .apply_op2(&w.contiguous()?, RmsNorm { eps })
    } else if !(xs.track_op() || w.track_op()) {
        candle_nn::ops::rms_norm(&xs.contiguous()?, w, eps)
    } else {
        candle_nn::ops::rms_norm_slow(xs, w, eps)
    }
}

/// Rotary embedding in the half-split (`rotate_half`) convention on
/// `(b, h, t, d)` with tables `(b, t, d/2)`. Linear in `x`: its backward is
/// the rotation by `−θ`.
struct Rope;

impl CustomOp3 for Rope {
    fn name(&self) -> &'static str {
        "spr-rope"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let x = contiguous_f32(s1, l1, self.name())?;
        let cos = contiguous_f32(s2, l2, self.name())?;
        let sin = contiguous_f32(s3, l3, self.name())?;
        let (b, h, t, d) = l1.shape().dims4()?;
        let half = d / 2;
        if d % 2 != 0 || cos.len() != b * t * half || sin.len() != cos.len() {
            candle_core::bail!(
                "{}: x is {:?}, tables {:?}",
                self.name(),
                l1.dims(),
                l2.dims()
            );
        }
        let mut out = vec![0f32; x.len()];
        out.chunks_exact_mut(t * d)
            .zip(x.chunks_exact(t * d))
            .enumerate()
            .for_each(|(bh, (dst, src))| {
                let bi = bh / h;
                for ti in 0..t {
                    let row = (bi * t + ti) * half;
                    let (c, s) = (&cos[row..row + half], &sin[row..row + half]);
                    let xs = &src[ti * d..(ti + 1) * d];
                    let ys = &mut dst[ti * d..(ti + 1) * d];
                    for j in 0..half {
                        let (x1, x2) = (xs[j], xs[j + half]);
                        ys[j] = x1 * c[j] - x2 * s[j];
                        ys[j + half] = x2 * c[j] + x1 * s[j];
                    }
                }
            });
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }

    fn bwd(
        &self,
        _x: &Tensor,
        cos: &Tensor,
        sin: &Tensor,
        _y: &Tensor,
        g: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let dx = g.contiguous()?.apply_op3_no_bwd(cos, &sin.neg()?, &Rope)?;
        Ok((Some(dx), None, None))
    }
}

/// Rotary embedding (half-split convention), differentiable in `x`; one
/// pass on `f32` CPU. `x` is `(b, h, t, d)`, `cos`/`sin` `(b, t, d/2)`.
pub fn rope(x: &Tensor, cos: &Tensor, sin: &Tensor) -> candle_core::Result<Tensor> {
    if fused(x) && cos.dtype() == DType::F32 && sin.dtype() == DType::F32 {
        x.contiguous()?
            .apply_op3(&cos.contiguous()?, &sin.contiguous()?, Rope)
    } else if !x.track_op() {
        candle_nn::rotary_emb::rope(&x.contiguous()?, cos, sin)
    } else {
        let cos = Tensor::cat(&[cos, cos], D::Minus1)?.unsqueeze(1)?;
        let sin = Tensor::cat(&[sin, sin], D::Minus1)?.unsqueeze(1)?;
        let half = x.dim(D::Minus1)? / 2;
        let x1 = x.narrow(D::Minus1, 0, half)?;
        let x2 = x.narrow(D::Minus1, half, half)?;
        let rotated = Tensor::cat(&[&x2.neg()?, &x1], D::Minus1)?;
        x.broadcast_mul(&cos)? + rotated.broadcast_mul(&sin)?
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use candle_core::{Device, Var};

    pub(super) fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
        (a - b)
            .unwrap()
            .abs()
            .unwrap()
            .flatten_all()
            .unwrap()
            .max(0)
            .unwrap()
            .to_scalar::<f32>()
            .unwrap()
    }

    fn randn(shape: &[usize]) -> Var {
        Var::from_tensor(&Tensor::randn(0f32, 1.0, shape, &Device::Cpu).unwrap()).unwrap()
    }

    /// Value and gradients of `f_fused` and `f_ref` agree, under a random
    /// linear read-out so every output element gets its own weight.
    fn check(vars: &[&Var], f_fused: impl Fn() -> Tensor, f_ref: impl Fn() -> Tensor) {
        let a = f_fused();
        let b = f_ref();
        assert!(
            max_diff(&a, &b) < 1e-5,
            "values differ by {}",
            max_diff(&a, &b)
        );
        let probe = Tensor::randn(0f32, 1.0, a.dims(), &Device::Cpu).unwrap();
        let ga = (&a * &probe)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        let gb = (&b * &probe)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        for v in vars {
            let (x, y) = (
                ga.get(v.as_tensor()).unwrap(),
                gb.get(v.as_tensor()).unwrap(),
            );
            assert!(
                max_diff(x, y) < 1e-4,
                "gradients differ by {}",
                max_diff(x, y)
            );
        }
    }

    #[test]
    fn fused_softmax_matches_candle_with_gradients_and_masks() {
        let x = randn(&[2, 3, 5, 7]);
        let mask: Vec<f32> = (0..35)
            .map(|i| {
                if i % 7 > i / 7 + 1 {
                    f32::NEG_INFINITY
                } else {
                    0.0
                }
            })
            .collect();
        let mask = Tensor::from_vec(mask, (5, 7), &Device::Cpu).unwrap();
        let masked = || x.as_tensor().broadcast_add(&mask).unwrap();
        check(
            &[&x],
            || softmax_last_dim(&masked()).unwrap(),
            || candle_nn::ops::softmax(&masked(), D::Minus1).unwrap(),
        );
    }

    #[test]
    fn fused_rms_norm_matches_the_composed_op_with_gradients() {
        let x = randn(&[2, 5, 8]);
        let w = randn(&[8]);
        check(
            &[&x, &w],
            || rms_norm(x.as_tensor(), w.as_tensor(), 1e-5).unwrap(),
            || candle_nn::ops::rms_norm_slow(x.as_tensor(), w.as_tensor(), 1e-5).unwrap(),
        );
    }

    #[test]
    fn fused_rope_matches_rotate_half_and_candles_kernel() {
        let x = randn(&[2, 3, 5, 8]);
        let cos = Tensor::randn(0f32, 1.0, (2, 5, 4), &Device::Cpu).unwrap();
        let sin = Tensor::randn(0f32, 1.0, (2, 5, 4), &Device::Cpu).unwrap();
        let composed = || {
            let c = Tensor::cat(&[&cos, &cos], D::Minus1)
                .unwrap()
                .unsqueeze(1)
                .unwrap();
            let s = Tensor::cat(&[&sin, &sin], D::Minus1)
                .unwrap()
                .unsqueeze(1)
                .unwrap();
            let x = x.as_tensor();
            let x1 = x.narrow(D::Minus1, 0, 4).unwrap();
            let x2 = x.narrow(D::Minus1, 4, 4).unwrap();
            let r = Tensor::cat(&[&x2.neg().unwrap(), &x1], D::Minus1).unwrap();
            (x.broadcast_mul(&c).unwrap() + r.broadcast_mul(&s).unwrap()).unwrap()
        };
        check(&[&x], || rope(x.as_tensor(), &cos, &sin).unwrap(), composed);
        let kernel = candle_nn::rotary_emb::rope(&x.as_detached_tensor(), &cos, &sin).unwrap();
        assert!(max_diff(&rope(x.as_tensor(), &cos, &sin).unwrap(), &kernel) < 1e-5);
    }
}
