//! Fresh weights for models trained from scratch (the tiny demo models,
//! tests, benchmarks): the names and shapes a model asks for are recorded
//! by building it once on a recording backend, then each model's own
//! initialiser fills them.

use std::sync::{Arc, Mutex};

use candle_core::{DType, Device, Shape, Tensor};
use candle_nn::var_builder::SimpleBackend;
use candle_nn::VarBuilder;

use super::{ModelError, Result};
use crate::core::rng::SplitMix64;

/// Tensor names and shapes, in request order.
type SeenShapes = Arc<Mutex<Vec<(String, Vec<usize>)>>>;

/// Records the names and shapes a model asks for, answering with zeros.
struct ShapeRecorder(SeenShapes);

impl SimpleBackend for ShapeRecorder {
    fn get(
        &self,
        s: Shape,
        name: &str,
        _: candle_nn::Init,
        dtype: DType,
        dev: &Device,
    ) -> candle_core::Result<Tensor> {
        if let Ok(mut seen) = self.0.lock() {
            seen.push((name.to_string(), s.dims().to_vec()));
        }
        Tensor::zeros(s, dtype, dev)
    }

    fn get_unchecked(&self, name: &str, _: DType, _: &Device) -> candle_core::Result<Tensor> {
        candle_core::bail!("{name}: the shape recorder needs a shape")
    }

    fn contains_tensor(&self, _: &str) -> bool {
        false
    }
}

/// The (name, shape) of every tensor `build` asks its `VarBuilder` for.
pub fn recorded_shapes(
    device: &Device,
    build: impl FnOnce(VarBuilder) -> candle_core::Result<()>,
) -> Result<Vec<(String, Vec<usize>)>> {
    let seen: SeenShapes = Arc::new(Mutex::new(Vec::new()));
    let vb = VarBuilder::from_backend(
        Box::new(ShapeRecorder(seen.clone())),
        DType::F32,
        device.clone(),
    );
    build(vb)?;
    let shapes = seen
        .lock()
        .map_err(|_| ModelError::Input("shape recorder poisoned".into()))?
        .clone();
    Ok(shapes)
}

/// A standard normal draw (Box–Muller).
pub fn standard_normal(rng: &mut SplitMix64) -> f32 {
    let u1 = (rng.next_f32() as f64).max(1e-12);
    let u2 = rng.next_f32() as f64;
    ((-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()) as f32
}
