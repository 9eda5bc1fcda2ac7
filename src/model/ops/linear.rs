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

/// The output of a LoRA linear layer, `x Wᵀ + s · h Bᵀ`, from the input
/// `x` `(m, k)`, its adapter projection `h = x Aᵀ` `(m, r)` and `B`
/// `(n, r)`, with the frozen base weight `W` `(n, k)` and the scale `s`
/// held by the op.
///
/// Composed, the layer keeps three `(m, n)` tensors alive for backprop
/// (the base product, the adapter's product and their sum); this op keeps
/// only its output, and its backward needs nothing it does not already
/// hold (`x`, `h`, `B`). On the shared TRL checkpoint that is about a
/// quarter of a DPO step's peak memory. `f32` on the CPU only
/// ([`lora_output`] composes elsewhere).
struct LoraOutput {
    w: Tensor,
    scale: f64,
}

impl candle_core::CustomOp3 for LoraOutput {
    fn name(&self) -> &'static str {
        "spr-lora-output"
    }

    fn cpu_fwd(
        &self,
        xs: &candle_core::CpuStorage,
        xl: &Layout,
        hs: &candle_core::CpuStorage,
        hl: &Layout,
        bs: &candle_core::CpuStorage,
        bl: &Layout,
    ) -> candle_core::Result<(candle_core::CpuStorage, candle_core::Shape)> {
        let (m, k) = xl.shape().dims2()?;
        let (m2, r) = hl.shape().dims2()?;
        let (n, r2) = bl.shape().dims2()?;
        let (storage, wl) = self.w.storage_and_layout();
        let (n2, k2) = wl.shape().dims2()?;
        if m != m2 || r != r2 || n != n2 || k != k2 {
            candle_core::bail!(
                "{}: x {m}×{k}, h {m2}×{r}, B {n}×{r2}, W {n2}×{k2} do not fit",
                self.name()
            );
        }
        let candle_core::Storage::Cpu(ws) = &*storage else {
            candle_core::bail!("{}: W must be on the CPU", self.name());
        };
        let base = xs.matmul(ws, (1, m, n, k), xl, &wl.transpose(0, 1)?)?;
        let adapter = hs.matmul(bs, (1, m, n, r), hl, &bl.transpose(0, 1)?)?;
        let (candle_core::CpuStorage::F32(mut y), candle_core::CpuStorage::F32(t)) =
            (base, adapter)
        else {
            candle_core::bail!("{}: f32 only", self.name());
        };
        let s = self.scale as f32;
        y.iter_mut().zip(&t).for_each(|(y, t)| *y += s * t);
        Ok((candle_core::CpuStorage::F32(y), (m, n).into()))
    }

    fn bwd(
        &self,
        _x: &Tensor,
        h: &Tensor,
        b: &Tensor,
        _y: &Tensor,
        g: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let dx = g.matmul(&self.w)?;
        let dh = (g.matmul(b)? * self.scale)?;
        let db = (g.t()?.matmul(h)? * self.scale)?;
        Ok((Some(dx), Some(dh), Some(db)))
    }
}

/// `x Wᵀ + scale · (x Aᵀ) Bᵀ` for `x` of any rank ≥ 1 with a frozen `W`
/// (`(n, k)`) and adapter matrices `A` `(r, k)`, `B` `(n, r)`, through
/// [`LoraOutput`] (one kept tensor instead of three): gradients reach `x`,
/// `A` and `B`. `None` (nothing computed) unless `x`, `W` and `B` are
/// `f32` CPU tensors and `W` is frozen; the caller then composes the
/// products.
pub(crate) fn lora_linear(
    x: &Tensor,
    w: &Tensor,
    a: &Tensor,
    b: &Tensor,
    scale: f64,
) -> candle_core::Result<Option<Tensor>> {
    if !(super::fused(x) && super::fused(w) && super::fused(b)) || w.track_op() {
        return Ok(None);
    }
    let h = linear(x, a, None)?;
    let dims = x.dims().to_vec();
    let rank = h.dim(candle_core::D::Minus1)?;
    let rows: usize = dims[..dims.len().saturating_sub(1)].iter().product();
    let x2 = x.contiguous()?.reshape((rows, ()))?;
    let h2 = h.contiguous()?.reshape((rows, rank))?;
    let y = x2.apply_op3(
        &h2,
        &b.contiguous()?,
        LoraOutput {
            w: w.clone(),
            scale,
        },
    )?;
    let mut out_dims = dims;
    if let Some(last) = out_dims.last_mut() {
        *last = w.dim(0)?;
    }
    Ok(Some(y.reshape(out_dims)?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    /// The fused output and its gradients for `x`, `A` and `B` equal the
    /// composed products' (on the CPU, in `f32`).
    #[test]
    fn lora_output_matches_the_composed_layer_with_gradients() {
        let dev = Device::Cpu;
        let w = Tensor::randn(0f32, 0.5, (6, 5), &dev).unwrap();
        let x = Var::from_tensor(&Tensor::randn(0f32, 1.0, (2, 3, 5), &dev).unwrap()).unwrap();
        let a = Var::from_tensor(&Tensor::randn(0f32, 0.5, (4, 5), &dev).unwrap()).unwrap();
        let b = Var::from_tensor(&Tensor::randn(0f32, 0.5, (6, 4), &dev).unwrap()).unwrap();
        let up = Tensor::randn(0f32, 1.0, (2, 3, 6), &dev).unwrap();
        let scale = 2.5;
        let run = |fused: bool| {
            let y = if fused {
                lora_linear(&x, &w, &a, &b, scale).unwrap().unwrap()
            } else {
                let h = x.broadcast_matmul(&a.t().unwrap()).unwrap();
                let base = x.broadcast_matmul(&w.t().unwrap()).unwrap();
                let lora = (h.broadcast_matmul(&b.t().unwrap()).unwrap() * scale).unwrap();
                (base + lora).unwrap()
            };
            // A loss that weights every output differently.
            let loss = (&y * &up).unwrap().sum_all().unwrap();
            let grads = loss.backward().unwrap();
            let get = |v: &Var| grads.get(v.as_tensor()).unwrap().flatten_all().unwrap();
            (
                y.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
                [get(&x), get(&a), get(&b)].map(|t| t.to_vec1::<f32>().unwrap()),
            )
        };
        let (y1, g1) = run(true);
        let (y0, g0) = run(false);
        let close = |p: &[f32], q: &[f32]| {
            p.iter()
                .zip(q)
                .all(|(p, q)| (p - q).abs() <= 1e-4 * (1.0 + q.abs()))
        };
        assert!(close(&y1, &y0), "{y1:?} vs {y0:?}");
        for (name, (p, q)) in ["x", "A", "B"].iter().zip(g1.iter().zip(&g0)) {
            assert!(close(p, q), "d{name}: {p:?} vs {q:?}");
        }
    }
}
