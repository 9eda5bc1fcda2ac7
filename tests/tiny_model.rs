//! The committed tiny demo model (`assets/tiny-model`, made by
//! `scripts/make_tiny_model.sh`): it loads through the real llava-hf
//! loader, writes parsable grounded text about demo regions it never saw in
//! training, and DPO on the demo project's pairs widens its reward margins.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;

mod common;

use spr_workbench::core::runs::{Event, RunDir, StepEvent};
use spr_workbench::demo::tiny;
use spr_workbench::train::trainer::{self, TrainConfig};

const MODEL: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/assets/tiny-model");
const DEMO: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/assets/demo");

/// A temporary folder with `scenes` synthetic scenes of `seed` (the default
/// 8-16 objects) under `data/` and a fresh tiny model under `init/`.
fn scenes_and_init(scenes: usize, seed: u64) -> (tempfile::TempDir, PathBuf, PathBuf) {
    use tiny::{init_model, write_sft_data, SftDataConfig};
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    write_sft_data(
        &data,
        &SftDataConfig {
            scenes,
            seed,
            ..Default::default()
        },
    )
    .unwrap();
    let out = tmp.path().join("init");
    init_model(&out, &data.join("corpus.txt"), 0, None).unwrap();
    (tmp, data, out)
}

/// The tensors of the model folder `dir`.
fn weights(dir: &Path) -> HashMap<String, candle_core::Tensor> {
    candle_core::safetensors::load(dir.join("model.safetensors"), &candle_core::Device::Cpu)
        .unwrap()
}

#[test]
fn tiny_model_describes_demo_regions_in_parsable_grounded_text() {
    let r = tiny::evaluate(MODEL, Path::new(DEMO), 4, 120, &|_, _| {}).unwrap();
    assert_eq!(r.generations.len(), 4);
    for g in &r.generations {
        eprintln!("{}: {}", g.query_id, g.text);
        assert!(g.boxes > 0 && g.issues == 0, "not parsable: {g:?}");
        assert!(
            g.text.starts_with("This part of the picture shows"),
            "{g:?}"
        );
    }
}

/// The demo's pairs ranked by localization alone (`spr pairs --lambda 0`):
/// precise descriptions against box-less or misplaced ones. (At the demo's
/// λ = 0.8 the tiny CLIP's semantic score reorders some queries, and the
/// pairs are noisier.)
#[test]
fn dpo_on_the_demo_pairs_widens_the_margins() {
    let tmp = tempfile::tempdir().unwrap();
    let demo = tmp.path().join("demo");
    common::copy_dir(Path::new(DEMO), &demo);
    let out = common::spr(&[
        "pairs",
        "--project",
        demo.to_str().unwrap(),
        "--lambda",
        "0",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut cfg = TrainConfig::new(MODEL, &demo);
    cfg.lora_r = 8;
    cfg.lora_alpha = 16.0;
    cfg.lr = 2e-3;
    cfg.total_steps = 8;
    cfg.batch_size = 4;
    cfg.max_len = 400;
    cfg.checkpoint_every = 0;
    let run = tmp.path().join("dpo");
    let s = trainer::train(&cfg, &run, |_| {}, &AtomicBool::new(false)).unwrap();
    assert_eq!(s.skipped.len(), 0, "{:?}", s.skipped.first());
    assert_eq!(s.examples, 76);
    let (events, errors) = RunDir::new(&run).read_events().unwrap();
    assert!(errors.is_empty(), "{errors:?}");
    let steps: Vec<&StepEvent> = events
        .iter()
        .filter_map(|e| match e {
            Event::Step(s) => Some(s),
            _ => None,
        })
        .collect();
    let margins: Vec<f64> = steps.iter().map(|s| s.rewards_margins.unwrap()).collect();
    let acc: Vec<f64> = steps
        .iter()
        .map(|s| s.rewards_accuracies.unwrap())
        .collect();
    eprintln!("margins {margins:?}\naccuracies {acc:?}");
    let mean = |xs: &[f64]| xs.iter().sum::<f64>() / xs.len() as f64;
    assert!(margins[0].abs() < 1e-3, "step 1 starts at the reference");
    assert!(
        mean(&margins[5..]) > 0.5,
        "margins did not widen: {margins:?}"
    );
    assert!(mean(&acc[5..]) > 0.9, "accuracies did not rise: {acc:?}");
}

#[test]
fn a_tiny_base_can_take_the_detectors_tower_and_whole_scene_rec_rows() {
    use tiny::{init_model, write_sft_data, SftDataConfig};
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let s = write_sft_data(
        &data,
        &SftDataConfig {
            scenes: 4,
            seed: 5,
            whole_scenes: true,
            ..Default::default()
        },
    )
    .unwrap();
    assert!(s.scene_rec > 0 && s.rec > s.scene_rec, "{s:?}");
    let rows = std::fs::read_to_string(&s.file).unwrap();
    assert!(
        rows.contains("\"scenes/images/"),
        "whole-scene rows point at the scenes"
    );
    let owl = Path::new(env!("CARGO_MANIFEST_DIR")).join("assets/demo/models/owlv2");
    let out = tmp.path().join("init");
    init_model(&out, &data.join("corpus.txt"), 0, Some(&owl)).unwrap();
    let cfg: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("config.json")).unwrap()).unwrap();
    assert_eq!(cfg["vision_config"]["image_size"], 168);
    assert_eq!(cfg["vision_config"]["num_hidden_layers"], 4);
    let ours = weights(&out);
    let theirs = weights(&owl);
    let a = ours["vision_tower.vision_model.pre_layrnorm.weight"]
        .to_vec1::<f32>()
        .unwrap();
    let b = theirs["owlv2.vision_model.pre_layernorm.weight"]
        .to_vec1::<f32>()
        .unwrap();
    assert_eq!(a, b);
    // A folder without a vision tower is refused by name.
    let err = init_model(&out, &data.join("corpus.txt"), 0, Some(tmp.path())).unwrap_err();
    assert!(format!("{err:#}").contains("config.json"), "{err:#}");
}

#[test]
fn one_object_scenes_and_a_random_tower_that_says_where_each_patch_is() {
    use tiny::{init_model, write_sft_data, SftDataConfig};
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let scenes = 6;
    let s = write_sft_data(
        &data,
        &SftDataConfig {
            scenes,
            seed: 5,
            whole_scenes: true,
            objects: [1, 1],
            rec_scenes: 4,
        },
    )
    .unwrap();
    // One object large enough to be asked for per scene (the others are
    // below SPR's area limit or crowds).
    assert!(s.scene_rec >= 1 && s.scene_rec <= scenes, "{s:?}");
    let rec: serde_json::Value = serde_json::from_slice(
        &std::fs::read(data.join("scenes/rec/finetune_demo_val.json")).unwrap(),
    )
    .unwrap();
    let asked = rec["images"].as_array().unwrap().len();
    assert!(
        (1..=4).contains(&asked),
        "{asked} expressions in 4 one-object scenes"
    );

    let out = tmp.path().join("init");
    init_model(&out, &data.join("corpus.txt"), 0, None).unwrap();
    let w = weights(&out);
    let pos = w["vision_tower.vision_model.embeddings.position_embedding.weight"]
        .to_vec2::<f32>()
        .unwrap();
    let patch = &w["vision_tower.vision_model.embeddings.patch_embedding.weight"];
    assert_eq!(pos.len(), 65, "class token + 8×8 patches");
    assert!(
        pos[0].iter().all(|&v| v == 0.0),
        "the class token has no position"
    );
    let norm = |v: &[f32]| v.iter().map(|x| x * x).sum::<f32>().sqrt();
    let dist =
        |a: &[f32], b: &[f32]| norm(&a.iter().zip(b).map(|(x, y)| x - y).collect::<Vec<_>>());
    // Every patch's position is its own, and neighbours differ by a sizeable
    // fraction of a patch embedding's norm (a grey patch through the random
    // projection: ~0.02·√588·1.45 per feature).
    let per_feature = 0.02 * 588f32.sqrt() * 1.45;
    let patch_norm = per_feature * 128f32.sqrt();
    for a in 1..65 {
        assert!(
            (norm(&pos[a]) - 8.0).abs() < 0.01,
            "row {a}: {}",
            norm(&pos[a])
        );
        for b in a + 1..65 {
            assert!(
                dist(&pos[a], &pos[b]) > 0.1 * patch_norm,
                "rows {a} and {b}"
            );
        }
    }
    assert_eq!(patch.dims(), &[128, 3, 14, 14]);
}

#[test]
fn the_gated_projector_reads_objectness_and_edges_off_the_tower() {
    use spr_workbench::demo::tiny_gate::gate_projector;
    let (_tmp, data, out) = scenes_and_init(24, 5);
    let before = weights(&out);
    let g = gate_projector(&out, &data.join("scenes"), 24, false).unwrap();
    assert_eq!((g.images, g.tokens, g.units), (24, 24 * 64, 64), "{g:?}");
    assert!(g.object_tokens > 129, "{g:?}");
    // Objects and background apart, edges read to a few percent of the
    // image (an object is 6-16 % of its width).
    assert!(g.objectness.0 > 0.5 && g.objectness.1 < 0.1, "{g:?}");
    assert!(g.edge_error.iter().all(|&e| e < 0.05), "{g:?}");
    let after = weights(&out);
    let rows = |w: &HashMap<String, candle_core::Tensor>| {
        w["multi_modal_projector.linear_1.weight"]
            .to_vec2::<f32>()
            .unwrap()
    };
    let (b, a) = (rows(&before), rows(&after));
    assert!((0..64).all(|u| a[u] != b[u]), "the gate units are set");
    assert_eq!(a[64..], b[64..], "the other units are kept");
    for (name, t) in &before {
        if !name.starts_with("multi_modal_projector.linear_1") {
            assert_eq!(
                t.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
                after[name].flatten_all().unwrap().to_vec1::<f32>().unwrap(),
                "{name} kept"
            );
        }
    }
    // A model is still a model: it loads.
    spr_workbench::model::Llava::load(&out, &candle_core::Device::Cpu, candle_core::DType::F32)
        .unwrap();
}

#[test]
fn tower_pretraining_teaches_the_patches_their_objects_and_keeps_the_rest() {
    use spr_workbench::demo::tiny_tower::pretrain_tower;
    use spr_workbench::train::patches::PatchConfig;
    let (_tmp, data, out) = scenes_and_init(20, 6);
    let before = weights(&out);
    let cfg = PatchConfig {
        steps: 40,
        batch: 8,
        lr: 2e-3,
        warmup: 4,
        ..Default::default()
    };
    let mut losses = Vec::new();
    let r = pretrain_tower(&out, &data.join("scenes"), 20, 4, &cfg, |s| {
        losses.push(s.class)
    })
    .unwrap();
    assert_eq!(r.scenes, (16, 4));
    assert_eq!(losses.len(), 40);
    // 13 classes: ln 13 = 2.56 at chance; most patches are background, so
    // the class loss falls fast even in 40 steps.
    let head: f64 = losses[..5].iter().sum::<f64>() / 5.0;
    let tail: f64 = losses[35..].iter().sum::<f64>() / 5.0;
    assert!(tail < 0.7 * head, "class loss {head:.3} → {tail:.3}");
    assert!(r.eval.patches == (4 * 64, r.eval.patches.1) && r.eval.patches.1 > 0);
    assert!(r.eval.background_accuracy > 0.8, "{:?}", r.eval);
    let after = weights(&out);
    let flat = |t: &candle_core::Tensor| t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    let mut changed = 0;
    for (name, t) in &before {
        if name.starts_with("vision_tower.") {
            changed += usize::from(flat(t) != flat(&after[name]));
        } else {
            assert_eq!(flat(t), flat(&after[name]), "{name} kept");
        }
    }
    assert!(
        changed > 10,
        "the tower's weights train ({changed} changed)"
    );
    // The folder still loads as a model.
    spr_workbench::model::Llava::load(&out, &candle_core::Device::Cpu, candle_core::DType::F32)
        .unwrap();
}

#[test]
fn the_gate_per_category_sets_a_unit_group_for_each_category() {
    use spr_workbench::demo::tiny_gate::gate_projector;
    let (_tmp, data, out) = scenes_and_init(24, 5);
    let rows = |p: &Path| {
        weights(p)["multi_modal_projector.linear_1.weight"]
            .to_vec2::<f32>()
            .unwrap()
    };
    let before = rows(&out);
    let g = gate_projector(&out, &data.join("scenes"), 24, true).unwrap();
    // 12 categories × 4 edges × 4 ramps, when every category appears.
    assert_eq!(g.units % 16, 0, "{g:?}");
    assert!(g.units >= 16 * 10 && g.units <= 192, "{g:?}");
    let after = rows(&out);
    assert!(
        (0..g.units).all(|u| after[u] != before[u]),
        "the gate units are set"
    );
    assert_eq!(
        after[g.units..],
        before[g.units..],
        "the other units are kept"
    );
}
