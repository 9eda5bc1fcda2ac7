//! Attention weights for training in one op: `softmax(q kᵀ · scale + mask)`.
//!
//! Composed, a layer keeps four `(b, heads, t, t)`-sized or `(t, d)`-sized
//! tensors alive for backprop per layer (the scaled `q`, the scores, the
//! masked scores and the weights); this op keeps only the weights, and its
//! backward needs nothing else (`q` and `k` are its inputs, held anyway).

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp3, DType, Layout, Shape, Tensor, D};

use super::{contiguous_f32, fused};

/// `softmax(q kᵀ · scale + mask)` over the last axis for `q` `(b, h, t,
/// d)`, `k` `(b, h, s, d)` and an additive mask `(b, 1, t, s)`.
struct AttentionWeights {
    scale: f64,
}

impl CustomOp3 for AttentionWeights {
    fn name(&self) -> &'static str {
        "spr-attention-weights"
    }

    fn cpu_fwd(
        &self,
        qs: &CpuStorage,
        ql: &Layout,
        ks: &CpuStorage,
        kl: &Layout,
        ms: &CpuStorage,
        ml: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (b, h, t, d) = ql.shape().dims4()?;
        let (b2, h2, s, d2) = kl.shape().dims4()?;
        let (b3, one, t3, s3) = ml.shape().dims4()?;
        if (b2, h2, d2) != (b, h, d) || (b3, one, t3, s3) != (b, 1, t, s) {
            candle_core::bail!(
                "{}: q {:?}, k {:?}, mask {:?} do not fit",
                self.name(),
                ql.dims(),
                kl.dims(),
                ml.dims()
            );
        }
        let mask = contiguous_f32(ms, ml, self.name())?;
        let scores = qs.matmul(ks, (b * h, t, s, d), ql, &kl.transpose(2, 3)?)?;
        let CpuStorage::F32(mut w) = scores else {
            candle_core::bail!("{}: f32 only", self.name());
        };
        let scale = self.scale as f32;
        let per_batch = h * t * s;
        for (bi, batch) in w.chunks_exact_mut(per_batch.max(1)).enumerate() {
            let mask = &mask[bi * t * s..(bi + 1) * t * s];
            for head in batch.chunks_exact_mut((t * s).max(1)) {
                for (row, m) in head
                    .chunks_exact_mut(s.max(1))
                    .zip(mask.chunks_exact(s.max(1)))
                {
                    let mut max = f32::NEG_INFINITY;
                    for (v, &m) in row.iter_mut().zip(m) {
                        *v = *v * scale + m;
                        max = max.max(*v);
                    }
                    if max == f32::NEG_INFINITY {
                        row.fill(0.0); // every entry masked: zeros
                        continue;
                    }
                    row.iter_mut().for_each(|v| *v -= max);
                    super::exp::exp_in_place(row);
                    let inv = 1.0 / row.iter().sum::<f32>();
                    row.iter_mut().for_each(|v| *v *= inv);
                }
            }
        }
        Ok((CpuStorage::F32(w), (b, h, t, s).into()))
    }

    fn bwd(
        &self,
        q: &Tensor,
        k: &Tensor,
        _mask: &Tensor,
        w: &Tensor,
        g: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        // Softmax: dS = w ⊙ (g − Σ g ⊙ w); then the scaled product.
        let dot = (g * w)?.sum_keepdim(D::Minus1)?;
        let ds = ((w * g.broadcast_sub(&dot)?)? * self.scale)?;
        let dq = ds.matmul(&k.contiguous()?)?;
        let dk = ds.t()?.matmul(&q.contiguous()?)?;
        Ok((Some(dq), Some(dk), None))
    }
}

/// Attention weights `softmax(q kᵀ · scale + mask)` (`q` `(b, h, t, d)`,
/// `k` `(b, h, s, d)`, `mask` `(b, 1, t, s)` or none), differentiable in
/// `q` and `k`. In training (`q` or `k` tracked, a mask, `f32` CPU
/// tensors) one op keeping one tensor; otherwise the composed ops, which
/// scale `q` (t × d) rather than the scores (t × s).
pub fn attention_weights(
    q: &Tensor,
    k: &Tensor,
    mask: Option<&Tensor>,
    scale: f64,
) -> candle_core::Result<Tensor> {
    if let Some(m) = mask {
        if (q.track_op() || k.track_op()) && fused(q) && fused(k) && fused(m) {
            return q.contiguous()?.apply_op3(
                &k.contiguous()?,
                &m.contiguous()?,
                AttentionWeights { scale },
            );
        }
    }
    let scores = (q * scale)?.contiguous()?.matmul(&k.t()?)?;
    let dtype = scores.dtype();
    let scores = scores.to_dtype(DType::F32)?;
    let scores = match mask {
        Some(m) => scores.broadcast_add(m)?,
        None => scores,
    };
    super::softmax_last_dim(&scores)?.to_dtype(dtype)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    /// The fused weights and the gradients for `q` and `k` equal the
    /// composed ops', with a causal mask and a padded (fully masked) row.
    #[test]
    fn fused_weights_match_the_composed_ops_with_gradients() {
        let dev = Device::Cpu;
        let (b, h, t, d) = (2, 3, 5, 4);
        let q = Var::from_tensor(&Tensor::randn(0f32, 1.0, (b, h, t, d), &dev).unwrap()).unwrap();
        let k = Var::from_tensor(&Tensor::randn(0f32, 1.0, (b, h, t, d), &dev).unwrap()).unwrap();
        let mut m = vec![0f32; b * t * t];
        for bi in 0..b {
            for i in 0..t {
                for j in 0..t {
                    // Causal; batch 1's first key is padding, and its first
                    // query row sees nothing.
                    if j > i || (bi == 1 && j == 0) {
                        m[(bi * t + i) * t + j] = f32::NEG_INFINITY;
                    }
                }
            }
        }
        let mask = Tensor::from_vec(m, (b, 1, t, t), &dev).unwrap();
        let up = Tensor::randn(0f32, 1.0, (b, h, t, t), &dev).unwrap();
        let scale = 0.5;
        let run = |fused: bool| {
            let w = if fused {
                attention_weights(&q, &k, Some(&mask), scale).unwrap()
            } else {
                let s = (q.as_tensor() * scale)
                    .unwrap()
                    .matmul(&k.t().unwrap())
                    .unwrap();
                let s = s.broadcast_add(&mask).unwrap();
                super::super::softmax_last_dim(&s).unwrap()
            };
            let loss = (&w * &up).unwrap().sum_all().unwrap();
            let grads = loss.backward().unwrap();
            let get = |v: &Var| {
                let g = grads.get(v.as_tensor()).unwrap().flatten_all().unwrap();
                g.to_vec1::<f32>().unwrap()
            };
            let w = w.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            (w, get(&q), get(&k))
        };
        let (w1, q1, k1) = run(true);
        let (w0, q0, k0) = run(false);
        for (name, p, r) in [("w", &w1, &w0), ("dq", &q1, &q0), ("dk", &k1, &k0)] {
            for (x, y) in p.iter().zip(r.iter()) {
                assert!(
                    (x - y).abs() <= 1e-5 * (1.0 + y.abs()),
                    "{name}: {p:?} vs {r:?}"
                );
            }
        }
        // Batch 0's first query sees only itself; batch 1's sees nothing
        // (zeros, not NaN).
        assert!((w1[0] - 1.0).abs() < 1e-6, "{:?}", &w1[..t]);
        let row = (b - 1) * h * t * t; // batch 1, head 0, query 0
        assert!(
            w1[row..row + t].iter().all(|&v| v == 0.0),
            "{:?}",
            &w1[row..row + t]
        );
    }
}
