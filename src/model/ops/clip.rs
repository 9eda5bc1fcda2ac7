//! CLIP's LayerNorm and quick-GELU in one single-threaded pass each, for
//! inference on `f32` CPU tensors (the scorers' towers run one per core);
//! with gradients, or on other devices, the functions compose candle ops.

use candle_core::{CpuStorage, CustomOp1, CustomOp3, Layout, Shape, Tensor, D};

use super::{contiguous_f32, fused};

/// LayerNorm over the last axis, `(x − mean) / √(var + ε) · w + b`.
struct LayerNorm {
    eps: f32,
}

impl CustomOp3 for LayerNorm {
    fn name(&self) -> &'static str {
        "spr-layer-norm"
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
        let w = contiguous_f32(s2, l2, self.name())?;
        let b = contiguous_f32(s3, l3, self.name())?;
        let dim = w.len();
        if dim == 0 || b.len() != dim || l1.dims().last() != Some(&dim) {
            candle_core::bail!(
                "{}: x {:?}, w {}, b {}",
                self.name(),
                l1.dims(),
                dim,
                b.len()
            );
        }
        let mut out = vec![0f32; x.len()];
        for (dst, src) in out.chunks_exact_mut(dim).zip(x.chunks_exact(dim)) {
            let mean = src.iter().sum::<f32>() / dim as f32;
            let var = src.iter().map(|v| (v - mean) * (v - mean)).sum::<f32>() / dim as f32;
            let r = 1.0 / (var + self.eps).sqrt();
            for (((d, &v), &wi), &bi) in dst.iter_mut().zip(src).zip(w).zip(b) {
                *d = (v - mean) * r * wi + bi;
            }
        }
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }
}

/// LayerNorm over the last axis of `x` with weight `w` and bias `b`.
pub fn layer_norm(x: &Tensor, w: &Tensor, b: &Tensor, eps: f64) -> candle_core::Result<Tensor> {
    let tracked = x.track_op() || w.track_op() || b.track_op();
    if !tracked && fused(x) && fused(w) && fused(b) {
        return x.contiguous()?.apply_op3_no_bwd(
            &w.contiguous()?,
            &b.contiguous()?,
            &LayerNorm { eps: eps as f32 },
        );
    }
    if !tracked {
        return candle_nn::ops::layer_norm(&x.contiguous()?, w, b, eps as f32);
    }
    let n = x.dim(D::Minus1)? as f64;
    let mean = (x.sum_keepdim(D::Minus1)? / n)?;
    let centred = x.broadcast_sub(&mean)?;
    let var = (centred.sqr()?.sum_keepdim(D::Minus1)? / n)?;
    centred
        .broadcast_div(&(var + eps)?.sqrt()?)?
        .broadcast_mul(w)?
        .broadcast_add(b)
}

/// OpenAI CLIP's `x · σ(1.702 x)`.
struct QuickGelu;

impl CustomOp1 for QuickGelu {
    fn name(&self) -> &'static str {
        "spr-quick-gelu"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let x = contiguous_f32(s, l, self.name())?;
        let mut out = vec![0f32; x.len()];
        super::exp::sigmoid_scaled(x, 1.702, &mut out);
        out.iter_mut().zip(x).for_each(|(o, &v)| *o *= v);
        Ok((CpuStorage::F32(out), l.shape().clone()))
    }
}

/// `x · σ(1.702 x)`: one pass on an untracked `f32` CPU tensor, composed
/// otherwise.
pub fn quick_gelu(x: &Tensor) -> candle_core::Result<Tensor> {
    if !x.track_op() && fused(x) {
        return x.contiguous()?.apply_op1_no_bwd(&QuickGelu);
    }
    x * candle_nn::ops::sigmoid(&(x * 1.702f64)?)?
}

#[cfg(test)]
mod tests {
    use super::super::tests::max_diff;
    use super::*;
    use candle_core::Device;

    #[test]
    fn one_pass_ops_match_candle() {
        let dev = Device::Cpu;
        let x = Tensor::randn(0f32, 2.0, (3, 5, 8), &dev).unwrap();
        let w = Tensor::randn(1f32, 0.3, 8, &dev).unwrap();
        let b = Tensor::randn(0f32, 0.3, 8, &dev).unwrap();
        let ours = layer_norm(&x, &w, &b, 1e-5).unwrap();
        let theirs = candle_nn::ops::layer_norm_slow(&x, &w, &b, 1e-5).unwrap();
        assert!(max_diff(&ours, &theirs) < 1e-5);
        let ours = quick_gelu(&x).unwrap();
        let theirs = (&x * candle_nn::ops::sigmoid(&(&x * 1.702f64).unwrap()).unwrap()).unwrap();
        assert!(max_diff(&ours, &theirs) < 1e-6);
    }
}
