//! The SiLU-gated product of a Llama MLP, `silu(gate) ⊙ up`, in one op.
//!
//! Composed, it keeps `silu(gate)` alive for backprop next to `gate`, `up`
//! and the product (each `(tokens, intermediate)`, the widest activations
//! of the model); this op keeps only the product, and its backward
//! recomputes the sigmoid from `gate`.

use candle_core::{CpuStorage, CustomOp2, CustomOp3, Layout, Shape, Tensor};

use super::{contiguous_f32, fused};

/// σ(x) for every element of `xs`.
fn sigmoids(xs: &[f32]) -> Vec<f32> {
    let mut s = vec![0f32; xs.len()];
    super::exp::sigmoid_scaled(xs, 1.0, &mut s);
    s
}

fn same_dims(op: &str, a: &Layout, b: &Layout) -> candle_core::Result<()> {
    if a.dims() != b.dims() {
        candle_core::bail!("{op}: {:?} vs {:?}", a.dims(), b.dims());
    }
    Ok(())
}

/// `silu(gate) ⊙ up`; backward `d up = g ⊙ silu(gate)` and `d gate = g ⊙
/// up ⊙ σ(gate) (1 + gate (1 − σ(gate)))` ([`SiluGateGrad`]).
struct SiluGate;

impl CustomOp2 for SiluGate {
    fn name(&self) -> &'static str {
        "spr-silu-gate"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        same_dims(self.name(), l1, l2)?;
        let gate = contiguous_f32(s1, l1, self.name())?;
        let up = contiguous_f32(s2, l2, self.name())?;
        let mut out = sigmoids(gate);
        for ((o, &g), &u) in out.iter_mut().zip(gate).zip(up) {
            *o *= g * u;
        }
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }

    fn bwd(
        &self,
        gate: &Tensor,
        up: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let both = grad.contiguous()?.apply_op3(gate, up, SiluGateGrad)?;
        Ok((Some(both.get(0)?), Some(both.get(1)?)))
    }
}

/// Both gradients from `(g, gate, up)` in one pass, stacked on a new
/// leading axis: `[g ⊙ up ⊙ silu'(gate), g ⊙ silu(gate)]`.
struct SiluGateGrad;

impl CustomOp3 for SiluGateGrad {
    fn name(&self) -> &'static str {
        "spr-silu-gate-grad"
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
        same_dims(self.name(), l1, l2)?;
        same_dims(self.name(), l1, l3)?;
        let g = contiguous_f32(s1, l1, self.name())?;
        let gate = contiguous_f32(s2, l2, self.name())?;
        let up = contiguous_f32(s3, l3, self.name())?;
        let n = g.len();
        let mut out = sigmoids(gate);
        out.resize(2 * n, 0.0);
        let (dgate, dup) = out.split_at_mut(n);
        for ((((dg, du), &g), &x), &u) in dgate.iter_mut().zip(dup).zip(g).zip(gate).zip(up) {
            let s = *dg;
            *dg = g * u * s * (1.0 + x * (1.0 - s));
            *du = g * x * s;
        }
        let mut dims = vec![2];
        dims.extend_from_slice(l1.dims());
        Ok((CpuStorage::F32(out), Shape::from(dims)))
    }
}

/// `silu(gate) ⊙ up`, differentiable in both; one op keeping one tensor on
/// `f32` CPU tensors, the composed ops elsewhere.
pub fn silu_gate(gate: &Tensor, up: &Tensor) -> candle_core::Result<Tensor> {
    if fused(gate) && fused(up) {
        gate.contiguous()?.apply_op2(&up.contiguous()?, SiluGate)
    } else {
        gate.silu()? * up
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    #[test]
    fn fused_gate_matches_the_composed_ops_with_gradients() {
        let dev = Device::Cpu;
        let gate = Var::from_tensor(&Tensor::randn(0f32, 2.0, (3, 7), &dev).unwrap()).unwrap();
        let up = Var::from_tensor(&Tensor::randn(0f32, 1.0, (3, 7), &dev).unwrap()).unwrap();
        let w = Tensor::randn(0f32, 1.0, (3, 7), &dev).unwrap();
        let run = |fused: bool| {
            let y = if fused {
                silu_gate(&gate, &up).unwrap()
            } else {
                (gate.silu().unwrap() * up.as_tensor()).unwrap()
            };
            let grads = (&y * &w).unwrap().sum_all().unwrap().backward().unwrap();
            let get = |v: &Var| {
                let g = grads.get(v.as_tensor()).unwrap().flatten_all().unwrap();
                g.to_vec1::<f32>().unwrap()
            };
            let y = y.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            (y, get(&gate), get(&up))
        };
        let (y1, g1, u1) = run(true);
        let (y0, g0, u0) = run(false);
        for (name, p, r) in [("y", &y1, &y0), ("dgate", &g1, &g0), ("dup", &u1, &u0)] {
            for (x, y) in p.iter().zip(r.iter()) {
                assert!(
                    (x - y).abs() <= 1e-5 * (1.0 + y.abs()),
                    "{name}: {p:?} vs {r:?}"
                );
            }
        }
    }
}
