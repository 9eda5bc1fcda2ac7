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

/// transformers' default initialisation of the recorded tensors, drawn
/// from `seed` in recording order: `special(name)` when it answers, else
/// biases 0, norm weights 1, and normals with σ 0.02 (σ `class_std` for a
/// class embedding).
pub fn default_init(
    shapes: Vec<(String, Vec<usize>)>,
    seed: u64,
    class_std: f32,
    device: &Device,
    special: impl Fn(&str) -> Option<Vec<f32>>,
) -> Result<std::collections::HashMap<String, Tensor>> {
    let mut rng = SplitMix64::new(seed);
    let mut out = std::collections::HashMap::new();
    for (name, shape) in shapes {
        let n: usize = shape.iter().product();
        let data: Vec<f32> = if let Some(d) = special(&name) {
            d
        } else if name.ends_with(".bias") {
            vec![0.0; n]
        } else if name.contains("norm") || name.contains("layrnorm") {
            vec![1.0; n]
        } else {
            let std = if name.ends_with("class_embedding") {
                class_std
            } else {
                0.02
            };
            (0..n).map(|_| std * standard_normal(&mut rng)).collect()
        };
        out.insert(name, Tensor::from_vec(data, shape, device)?);
    }
    Ok(out)
}

/// A standard normal draw (Box–Muller).
pub fn standard_normal(rng: &mut SplitMix64) -> f32 {
    let u1 = (rng.next_f32() as f64).max(1e-12);
    let u2 = rng.next_f32() as f64;
    ((-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()) as f32
}
