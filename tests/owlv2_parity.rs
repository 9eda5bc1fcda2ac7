//! OWLv2 parity with transformers on a tiny random
//! `Owlv2ForObjectDetection` (`scripts/parity/make_owlv2_fixtures.py`):
//! the feature map, query embeddings, class logits, boxes and objectness.

use std::path::{Path, PathBuf};

use candle_core::{DType, Device, IndexOp, Tensor};
use spr_workbench::model::owlv2::Owlv2;

const TOL: f32 = 1e-4;

fn fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tiny-owlv2")
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

#[test]
fn logits_boxes_and_objectness_match_transformers() {
    let model = Owlv2::load(&fixture(), &Device::Cpu, DType::F32).unwrap();
    let r = candle_core::safetensors::load(fixture().join("reference.safetensors"), &Device::Cpu)
        .unwrap();
    let feats = model.image_features(&r["pixel_values"]).unwrap();
    let want = r["image_embeds"].reshape((1, 16, 32)).unwrap();
    let d = max_diff(&feats, &want);
    assert!(d < TOL, "feature map differs by {d}");
    let q = model.query_embeds(&r["input_ids"]).unwrap();
    let unit = |x: &Tensor| {
        x.broadcast_div(&x.sqr().unwrap().sum_keepdim(1).unwrap().sqrt().unwrap())
            .unwrap()
    };
    let d = max_diff(&unit(&q), &r["text_embeds"].i(0).unwrap());
    assert!(d < TOL, "query embeddings differ by {d}");
    let out = model.detect(&feats.i(0).unwrap(), &q).unwrap();
    for (name, ours, want) in [
        ("logits", &out.logits, r["logits"].i(0).unwrap()),
        ("boxes", &out.boxes, r["pred_boxes"].i(0).unwrap()),
        (
            "objectness",
            &out.objectness,
            r["objectness_logits"].i(0).unwrap(),
        ),
    ] {
        let d = max_diff(ours, &want);
        assert!(d < TOL, "{name} differ by {d}");
    }
}
