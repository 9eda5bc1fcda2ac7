//! CLIP parity with transformers on a tiny random `CLIPModel`
//! (`scripts/parity/make_clip_fixtures.py`): text and image embeddings,
//! logits, the pooled vision output, and the local-attention region
//! embedding of DESIGN §3 (computed independently in PyTorch from the
//! model's own modules), including the full mask that must equal the
//! plain image embedding.

use std::path::{Path, PathBuf};

use candle_core::{DType, Device, IndexOp, Tensor};
use spr_workbench::model::clip_model::ClipModel;

const TOL: f32 = 1e-4;

fn fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tiny-clip")
}

fn reference() -> std::collections::HashMap<String, Tensor> {
    candle_core::safetensors::load(fixture().join("reference.safetensors"), &Device::Cpu).unwrap()
}

fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
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

fn masks() -> Vec<Vec<bool>> {
    let meta: serde_json::Value =
        serde_json::from_slice(&std::fs::read(fixture().join("reference.json")).unwrap()).unwrap();
    meta["masks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            m.as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_u64() == Some(1))
                .collect()
        })
        .collect()
}

#[test]
fn embeddings_and_logits_match_transformers() {
    let model = ClipModel::load(&fixture(), &Device::Cpu, DType::F32).unwrap();
    let r = reference();
    let img = model.image_embeds(&r["pixel_values"]).unwrap();
    let d = max_diff(&img, &r["image_embeds"]);
    assert!(d < TOL, "image embeds differ by {d}");
    let pooled = model.vision().pooled(&r["pixel_values"]).unwrap();
    let d = max_diff(&pooled, &r["image_pooled"]);
    assert!(d < TOL, "pooled differs by {d}");
    let txt = model.text_embeds(&r["input_ids"]).unwrap();
    let d = max_diff(&txt, &r["text_embeds"]);
    assert!(d < TOL, "text embeds differ by {d}");
    let logits =
        (img.matmul(&txt.t().unwrap()).unwrap() * f64::from(model.logit_scale().unwrap())).unwrap();
    let d = max_diff(&logits, &r["logits_per_image"]);
    assert!(d < 10.0 * TOL, "logits differ by {d}");
}

#[test]
fn region_embeddings_match_the_pytorch_definition_and_the_full_mask_is_the_image() {
    let model = ClipModel::load(&fixture(), &Device::Cpu, DType::F32).unwrap();
    let r = reference();
    let masks = masks();
    for i in 0..2 {
        let px = r["pixel_values"].i(i..i + 1).unwrap();
        let ours = model.region_embeds(&px, &masks).unwrap();
        let want = r["local_embeds"].i(i).unwrap();
        let d = max_diff(&ours, &want);
        assert!(d < TOL, "image {i}: region embeds differ by {d}");
        // The full mask is the plain embedding, computed by the plain path.
        let plain = model.image_embeds(&px).unwrap().squeeze(0).unwrap();
        let d = max_diff(&ours.i(2).unwrap(), &plain);
        assert!(d < 1e-5, "image {i}: full mask vs plain differ by {d}");
        // Different regions give different embeddings.
        let d = max_diff(&ours.i(0).unwrap(), &ours.i(1).unwrap());
        assert!(d > 1e-3, "regions 0 and 1 are the same: {d}");
    }
}
