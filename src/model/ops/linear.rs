//! Linear layers for training: `x Wᵀ + b` as one 2-D matmul, with a
//! frozen weight's gradient skipped ([`FrozenMatmul`]).

use candle_core::backend::BackendStorage;
use candle_core::{Layout, Tensor};

/// `x Wᵀ + b` for `x` of any rank ≥ 1, as one 2-D matmul (the fast path
/// on CPU and CUDA). When `W` is frozen (tracks no gradient) the product
/// goes through [`FrozenMatmul`], so backpropagation computes only the
/// gradient with respect to `x`.
pub(crate) fn linear(x: &Tensor, w: &Tensor, b: Option<&Tensor>) -> candle_core::Result<Tensor> {
    let dims = x.dims().to_vec();
    let in_dim = dims.last().copied().unwrap_or(0);
    let rows: usize = dims[..dims.len().saturating_sub(1)].iter().product();
    let x2 = if x.is_contiguous() {
        x.reshape((rows, in_dim))?
    } else {
        x.contiguous()?.reshape((rows, in_dim))?
    };
    let y = if w.track_op() {
        x2.matmul(&w.t()?)?
    } else {
        x2.apply_op2(w, FrozenMatmul)?
    };
    let y = match b {
        Some(b) => y.broadcast_add(b)?,
        None => y,
    };
    let mut out_dims = dims;
    if let Some(last) = out_dims.last_mut() {
        *last = w.dim(0)?;
    }
    y.reshape(out_dims)
}

/// `x Wᵀ` for a frozen `W` (`x` `(m, k)`, `W` `(n, k)`), whose backward
/// pass returns the gradient for `x` only.
///
/// candle's own matmul backward always computes the gradient of both
/// operands. For LoRA that means a full weight gradient for every frozen
/// base matrix and `lm_head` on every step: as much work as the forward
/// matmul again, and as much memory as the model. This op skips it.
pub struct FrozenMatmul;

impl FrozenMatmul {
    fn shapes(l1: &Layout, l2: &Layout) -> candle_core::Result<(usize, usize, usize, Layout)> {
        let (m, k) = l1.shape().dims2()?;
        let (n, k2) = l2.shape().dims2()?;
        if k != k2 {
            candle_core::bail!("frozen matmul: x is {m}×{k} but W is {n}×{k2}");
        }
        Ok((m, n, k, l2.transpose(0, 1)?))
    }
}

impl candle_core::CustomOp2 for FrozenMatmul {
    fn name(&self) -> &'static str {
        "frozen-matmul"
    }

    fn cpu_fwd(
        &self,
        s1: &candle_core::CpuStorage,
        l1: &Layout,
        s2: &candle_core::CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(candle_core::CpuStorage, candle_core::Shape)> {
        let (m, n, k, wt) = Self::shapes(l1, l2)?;
        Ok((s1.matmul(s2, (1, m, n, k), l1, &wt)?, (m, n).into()))
    }

    fn cuda_fwd(
        &self,
        s1: &candle_core::CudaStorage,
        l1: &Layout,
        s2: &candle_core::CudaStorage,
        l2: &Layout,
    ) -> candle_core::Result<(candle_core::CudaStorage, candle_core::Shape)> {
        let (m, n, k, wt) = Self::shapes(l1, l2)?;
        Ok((s1.matmul(s2, (1, m, n, k), l1, &wt)?, (m, n).into()))
    }

    fn metal_fwd(
        &self,
        s1: &candle_core::MetalStorage,
        l1: &Layout,
        s2: &candle_core::MetalStorage,
        l2: &Layout,
    ) -> candle_core::Result<(candle_core::MetalStorage, candle_core::Shape)> {
        let (m, n, k, wt) = Self::shapes(l1, l2)?;
        Ok((s1.matmul(s2, (1, m, n, k), l1, &wt)?, (m, n).into()))
    }

    fn bwd(
        &self,
        _x: &Tensor,
        w: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        Ok((Some(grad.matmul(w)?), None))
    }
}
