//! Numeric parity of the candle LLaVA (vision tower, projector, Llama, LoRA)
//! with transformers + PEFT, on the tiny random checkpoint that
//! `scripts/parity/make_fixtures.py` writes to `tests/fixtures/tiny-llava/`.
//!
//! Tolerances (f32 on CPU): logits and image features within 1e-4 absolute
//! (logits are O(1–5), so this is ~1e-5 relative); greedy generations equal
//! token for token; pixel values from our resize within 0.02 (one 8-bit
//! rounding step, 1/255/std ≈ 0.015, from a different bicubic
//! implementation than PIL's).

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, IndexOp, Tensor};
use spr_workbench::model::hub::HubOptions;
use spr_workbench::model::llava::{Llava, LlavaBundle};
use spr_workbench::model::lora::{LoraConfig, PeftLayout, TargetModule};
use spr_workbench::model::{
    next_token_logprobs, FinishReason, GenerationConfig, ModelError, Sampling,
};

const TOL: f32 = 1e-4;

fn fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tiny-llava")
}

fn reference() -> HashMap<String, Tensor> {
    candle_core::safetensors::load(fixture().join("reference.safetensors"), &Device::Cpu).unwrap()
}

fn reference_json() -> serde_json::Value {
    let text = std::fs::read_to_string(fixture().join("reference.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

fn load() -> Llava {
    Llava::load(&fixture(), &Device::Cpu, DType::F32).unwrap()
}

/// Max |a - b| over positions where `mask` (b, t) is 1.
fn masked_max_diff(a: &Tensor, b: &Tensor, mask: &Tensor) -> f32 {
    let m = mask.to_dtype(DType::F32).unwrap().unsqueeze(2).unwrap();
    (a - b)
        .unwrap()
        .abs()
        .unwrap()
        .broadcast_mul(&m)
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
}

fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
    (a - b)
        .unwrap()
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
}

fn logits_of(model: &Llava, r: &HashMap<String, Tensor>) -> Tensor {
    let feats = model.image_features(&r["pixel_values"]).unwrap();
    model
        .forward(&r["input_ids"], Some(&feats), Some(&r["attention_mask"]))
        .unwrap()
}

fn tokens(v: &serde_json::Value) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect()
}

fn greedy(max_new_tokens: usize) -> GenerationConfig {
    GenerationConfig {
        max_new_tokens,
        sampling: Sampling::Greedy,
        eos_token_ids: vec![2],
        min_new_tokens: 0,
    }
}

#[test]
fn image_features_and_logits_match_transformers() {
    let model = load();
    let r = reference();
    let feats = model.image_features(&r["pixel_values"]).unwrap();
    assert_eq!(feats.dims(), &[2, 16, 64]);
    let d = max_diff(&feats, &r["image_features"]);
    eprintln!("image features: max abs diff {d:e}");
    assert!(d < TOL, "image features differ by {d}");

    let logits = logits_of(&model, &r);
    assert_eq!(logits.dims(), r["logits"].dims());
    let d = masked_max_diff(&logits, &r["logits"], &r["attention_mask"]);
    eprintln!("base logits: max abs diff {d:e}");
    assert!(d < TOL, "logits differ by {d}");
}

#[test]
fn peft_adapter_logits_match_and_switch_off() {
    let mut model = load();
    let r = reference();
    model.load_adapter(&fixture().join("adapter")).unwrap();
    let cfg = model.lora_config().unwrap();
    assert_eq!(cfg.r, 4);
    assert_eq!(cfg.alpha, 8.0);
    assert_eq!(
        cfg.targets.iter().copied().collect::<Vec<_>>(),
        vec![
            TargetModule::Q,
            TargetModule::V,
            TargetModule::O,
            TargetModule::Up,
            TargetModule::Down
        ]
    );
    let lora = logits_of(&model, &r);
    let d = masked_max_diff(&lora, &r["lora_logits"], &r["attention_mask"]);
    eprintln!("LoRA logits: max abs diff {d:e}");
    assert!(d < TOL, "LoRA logits differ by {d}");

    // Adapters off = the base model (DPO's reference policy).
    model.set_adapters_enabled(false);
    let off = logits_of(&model, &r);
    let d = masked_max_diff(&off, &r["logits"], &r["attention_mask"]);
    assert!(d < TOL, "adapters-off logits differ from base by {d}");
    model.set_adapters_enabled(true);

    // Merging gives the same function without adapters.
    model.merge_adapters().unwrap();
    assert!(model.trainable_vars().is_empty());
    let merged = logits_of(&model, &r);
    let d = masked_max_diff(&merged, &r["lora_logits"], &r["attention_mask"]);
    assert!(d < TOL, "merged logits differ by {d}");
}

#[test]
fn greedy_generation_matches_transformers() {
    let mut model = load();
    let r = reference();
    let meta = reference_json();
    let feats = model
        .image_features(&r["pixel_values"].i(0..1).unwrap())
        .unwrap();
    let out = model
        .generate(&r["prompt_ids"], Some(&feats), None, &greedy(12))
        .unwrap();
    assert_eq!(out[0].tokens, tokens(&meta["greedy_tokens"]));
    assert_eq!(out[0].finish, FinishReason::Length);

    model.load_adapter(&fixture().join("adapter")).unwrap();
    let out = model
        .generate(&r["prompt_ids"], Some(&feats), None, &greedy(12))
        .unwrap();
    assert_eq!(out[0].tokens, tokens(&meta["lora_greedy_tokens"]));
}

#[test]
fn kv_cache_and_left_padding_agree_with_full_forward() {
    let model = load();
    let r = reference();
    let feats = model.image_features(&r["pixel_values"]).unwrap();
    let ids = r["input_ids"].i(0..1).unwrap();
    let f0 = feats.i(0..1).unwrap();
    let full = model.forward(&ids, Some(&f0), None).unwrap();

    // Prefix through the cache, then one token at a time.
    let t = ids.dim(1).unwrap();
    let split = 30;
    let mut cache = model.lm().new_cache();
    let embeds = model.embed(&ids, Some(&f0)).unwrap();
    let prefix = embeds.narrow(1, 0, split).unwrap();
    let h = model
        .lm()
        .forward_embeds(&prefix, None, Some(&mut cache))
        .unwrap();
    let d = max_diff(&h, &full.narrow(1, 0, split).unwrap());
    assert!(d < TOL, "cached prefix differs by {d}");
    for i in split..t {
        let step = embeds.narrow(1, i, 1).unwrap();
        let h = model
            .lm()
            .forward_embeds(&step, None, Some(&mut cache))
            .unwrap();
        let d = max_diff(&h, &full.narrow(1, i, 1).unwrap());
        assert!(d < TOL, "cached step {i} differs by {d}");
    }

    // Left-padded batch generation equals one-by-one generation.
    let prompt = r["prompt_ids"].clone();
    let plen = prompt.dim(1).unwrap();
    let short = prompt.narrow(1, 0, plen - 3).unwrap();
    let pad = Tensor::full(361u32, (1, 3), &Device::Cpu).unwrap();
    let short_padded = Tensor::cat(&[&pad, &short.to_dtype(DType::U32).unwrap()], 1).unwrap();
    let batch = Tensor::cat(&[&prompt.to_dtype(DType::U32).unwrap(), &short_padded], 0).unwrap();
    let mut mask = vec![1u32; 2 * plen];
    mask[plen..plen + 3].fill(0);
    let mask = Tensor::from_vec(mask, (2, plen), &Device::Cpu).unwrap();
    let both = model
        .generate(&batch, Some(&feats), Some(&mask), &greedy(8))
        .unwrap();
    let one = model
        .generate(&prompt, Some(&feats.i(0..1).unwrap()), None, &greedy(8))
        .unwrap();
    let two = model
        .generate(&short, Some(&feats.i(1..2).unwrap()), None, &greedy(8))
        .unwrap();
    assert_eq!(both[0], one[0]);
    assert_eq!(both[1], two[0]);

    // Seeded sampling is reproducible.
    let sample = GenerationConfig {
        max_new_tokens: 8,
        sampling: Sampling::TopP {
            temperature: 0.8,
            top_p: 0.9,
            seed: 11,
        },
        eos_token_ids: vec![2],
        min_new_tokens: 0,
    };
    let a = model.generate(&prompt, Some(&f0), None, &sample).unwrap();
    let b = model.generate(&prompt, Some(&f0), None, &sample).unwrap();
    assert_eq!(a, b);
}

#[test]
fn tokenizer_and_prompt_match_the_llava_processor() {
    let bundle = LlavaBundle::load_with(
        fixture().to_str().unwrap(),
        &Device::Cpu,
        DType::F32,
        &HubOptions::default(),
    )
    .unwrap();
    let meta = reference_json();
    let r = reference();
    let tok = &bundle.tokenizer;
    let prompts: Vec<&str> = meta["user_prompts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    let chat: Vec<&str> = meta["chat_prompts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    for (p, c) in prompts.iter().zip(&chat) {
        assert_eq!(&spr_workbench::model::tokenizer::chat_prompt(p), c);
    }
    let prompt_ids = r["prompt_ids"]
        .to_dtype(DType::U32)
        .unwrap()
        .to_vec2::<u32>()
        .unwrap();
    assert_eq!(tok.encode_chat(prompts[0]).unwrap(), prompt_ids[0]);

    let ids = r["input_ids"]
        .to_dtype(DType::U32)
        .unwrap()
        .to_vec2::<u32>()
        .unwrap();
    let mask = r["attention_mask"]
        .to_dtype(DType::U32)
        .unwrap()
        .to_vec2::<u32>()
        .unwrap();
    for (i, text) in meta["texts"].as_array().unwrap().iter().enumerate() {
        let real: Vec<u32> = ids[i]
            .iter()
            .zip(&mask[i])
            .filter(|(_, m)| **m == 1)
            .map(|(id, _)| *id)
            .collect();
        assert_eq!(tok.encode(text.as_str().unwrap(), true).unwrap(), real);
        // Prompt and response tokenised apart concatenate to the same ids.
        let response = meta["responses"][i].as_str().unwrap();
        let (pr, prompt_len) = tok
            .encode_prompt_response(chat[i], response, false)
            .unwrap();
        assert_eq!(pr, real);
        assert_eq!(prompt_len, tok.encode(chat[i], true).unwrap().len());
    }
    assert_eq!(tok.image_token_id(), 360);
    assert_eq!(tok.pad_token_id(), 361);
    assert_eq!(tok.eos_token_ids(), &[2]);
    let text = tok
        .decode(&tok.encode("A red cup.", false).unwrap(), true)
        .unwrap();
    assert_eq!(text, "A red cup.");
}

#[test]
fn image_processor_is_close_to_transformers() {
    let bundle = LlavaBundle::load(fixture().to_str().unwrap(), &Device::Cpu).unwrap();
    let r = reference();
    let img = image::open(fixture().join("image0.png")).unwrap();
    let ours = bundle.processor.preprocess(&img, &Device::Cpu).unwrap();
    let theirs = r["pixel_values"].i(0).unwrap();
    let d = max_diff(&ours, &theirs);
    eprintln!("pixel values: max abs diff {d}");
    // One 8-bit rounding step after normalisation is 1/255/0.26 ≈ 0.015.
    assert!(d < 0.02, "pixel values differ by {d}");
}

#[test]
fn peft_round_trip_keeps_names_shapes_and_outputs() {
    let mut model = load();
    let r = reference();
    model.load_adapter(&fixture().join("adapter")).unwrap();
    let expected = logits_of(&model, &r);
    let peft = candle_core::safetensors::load(
        fixture().join("adapter/adapter_model.safetensors"),
        &Device::Cpu,
    )
    .unwrap();
    let shapes = |m: &HashMap<String, Tensor>| -> BTreeMap<String, Vec<usize>> {
        m.iter()
            .map(|(k, v)| (k.clone(), v.dims().to_vec()))
            .collect()
    };

    let dir = tempfile::tempdir().unwrap();
    model.save_adapter(dir.path(), PeftLayout::Current).unwrap();
    let ours =
        candle_core::safetensors::load(dir.path().join("adapter_model.safetensors"), &Device::Cpu)
            .unwrap();
    assert_eq!(
        shapes(&ours),
        shapes(&peft),
        "saved keys/shapes differ from PEFT's"
    );
    for (k, v) in &peft {
        assert_eq!(max_diff(v, &ours[k]), 0.0, "{k} changed in the round trip");
    }
    let cfg: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(dir.path().join("adapter_config.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(cfg["peft_type"], "LORA");
    assert_eq!(cfg["r"], 4);
    assert_eq!(cfg["lora_alpha"], 8.0);
    assert_eq!(cfg["task_type"], "CAUSAL_LM");
    assert!(cfg["target_modules"].as_str().unwrap().contains("q_proj"));

    let mut fresh = load();
    fresh.load_adapter(dir.path()).unwrap();
    assert_eq!(max_diff(&logits_of(&fresh, &r), &expected), 0.0);

    // The transformers-4 key layout reads back the same.
    let legacy = tempfile::tempdir().unwrap();
    model
        .save_adapter(legacy.path(), PeftLayout::Legacy)
        .unwrap();
    let keys = candle_core::safetensors::load(
        legacy.path().join("adapter_model.safetensors"),
        &Device::Cpu,
    )
    .unwrap();
    assert!(keys.contains_key(
        "base_model.model.language_model.model.layers.0.self_attn.q_proj.lora_A.weight"
    ));
    let mut again = load();
    again.load_adapter(legacy.path()).unwrap();
    assert_eq!(max_diff(&logits_of(&again, &r), &expected), 0.0);
}

#[test]
fn fresh_lora_is_identity_and_gets_gradients() {
    let mut model = load();
    let r = reference();
    let base = logits_of(&model, &r);
    model
        .add_lora(&LoraConfig::new(4, 8.0, TargetModule::ALL), 5)
        .unwrap();
    assert_eq!(model.trainable_vars().len(), 2 * 7 * 2);
    let named = model.named_trainable_vars();
    assert_eq!(
        named[0].0,
        "base_model.model.model.language_model.layers.0.self_attn.q_proj.lora_A.weight"
    );
    // B = 0 leaves the function unchanged; the differentiable (composite)
    // RMSNorm/rotary/softmax used once adapters track gradients round
    // differently from the fused kernels only in the last bits.
    let same = logits_of(&model, &r);
    let d = max_diff(&same, &base);
    assert!(d < 1e-5, "a fresh adapter changed the logits by {d}");

    // Every B gets a gradient (gradients flow through RMSNorm, rotary
    // embeddings and softmax in every layer), and one entry matches a
    // finite difference.
    let feats = model.image_features(&r["pixel_values"]).unwrap();
    let ids = &r["input_ids"];
    let mask = &r["attention_mask"];
    let loss = |m: &Llava| -> Tensor {
        let logits = m.forward(ids, Some(&feats), Some(mask)).unwrap();
        next_token_logprobs(&logits, ids)
            .unwrap()
            .sum_all()
            .unwrap()
    };
    let grads = loss(&model).backward().unwrap();
    for (name, var) in &named {
        let g = grads.get(var.as_tensor());
        if name.contains("lora_B") {
            let g = g.unwrap_or_else(|| panic!("no gradient for {name}"));
            let n = g
                .abs()
                .unwrap()
                .max_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap();
            assert!(n > 0.0, "zero gradient for {name}");
        }
    }
    // Finite-difference check of one entry, on a single logit (O(1), so
    // f32 rounding does not swamp the difference quotient).
    let logit = |m: &Llava| -> f32 {
        let logits = m.forward(ids, Some(&feats), Some(mask)).unwrap();
        logits.i((0, 40, 17)).unwrap().to_scalar::<f32>().unwrap()
    };
    let (name, b0) = named
        .iter()
        .find(|(n, _)| n.contains("layers.0.self_attn.q_proj.lora_B"))
        .unwrap();
    let logits = model.forward(ids, Some(&feats), Some(mask)).unwrap();
    let grads = logits.i((0, 40, 17)).unwrap().backward().unwrap();
    // The entry with the largest gradient, so the check is not vacuous.
    let g = grads.get(b0.as_tensor()).unwrap().to_vec2::<f32>().unwrap();
    let (row, col, analytic) = g
        .iter()
        .enumerate()
        .flat_map(|(i, r)| r.iter().enumerate().map(move |(j, v)| (i, j, *v)))
        .max_by(|a, b| a.2.abs().total_cmp(&b.2.abs()))
        .unwrap();
    assert!(
        analytic.abs() > 1e-2,
        "gradient too small to check: {analytic}"
    );
    let eps = 3e-2f32;
    let bump = |delta: f32| {
        let mut v = b0.as_tensor().to_vec2::<f32>().unwrap();
        v[row][col] = delta;
        b0.set(&Tensor::new(v, &Device::Cpu).unwrap()).unwrap();
        logit(&model)
    };
    let numeric = (bump(eps) - bump(-eps)) / (2.0 * eps);
    bump(0.0);
    let rel = (numeric - analytic).abs() / analytic.abs();
    eprintln!("{name}[{row},{col}]: analytic {analytic}, numeric {numeric}");
    assert!(
        rel < 1e-2,
        "{name}[{row},{col}]: analytic {analytic}, numeric {numeric}"
    );
}

/// Copies the fixture's model files (not the adapter) into a temp folder.
fn copy_model(to: &Path) {
    for f in [
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "generation_config.json",
    ] {
        std::fs::copy(fixture().join(f), to.join(f)).unwrap();
    }
}

#[test]
fn sharded_and_transformers5_layouts_load() {
    let r = reference();
    let expected = logits_of(&load(), &r);
    let all =
        candle_core::safetensors::load(fixture().join("model.safetensors"), &Device::Cpu).unwrap();
    let dir = tempfile::tempdir().unwrap();
    copy_model(dir.path());
    std::fs::remove_file(dir.path().join("model.safetensors")).unwrap();
    // The in-memory names of transformers ≥ 4.52 / 5, in two shards.
    let rename = |k: &str| -> String {
        if let Some(rest) = k.strip_prefix("language_model.model.") {
            format!("model.language_model.{rest}")
        } else if let Some(rest) = k.strip_prefix("language_model.lm_head.") {
            format!("lm_head.{rest}")
        } else if let Some(rest) = k.strip_prefix("vision_tower.") {
            format!("model.vision_tower.{rest}")
        } else {
            format!("model.{k}")
        }
    };
    let mut shards: [HashMap<String, Tensor>; 2] = [HashMap::new(), HashMap::new()];
    let mut weight_map = serde_json::Map::new();
    for (i, (k, v)) in all.iter().enumerate() {
        let name = rename(k);
        let file = format!("model-0000{}-of-00002.safetensors", i % 2 + 1);
        weight_map.insert(name.clone(), serde_json::Value::String(file));
        shards[i % 2].insert(name, v.clone());
    }
    for (i, shard) in shards.iter().enumerate() {
        candle_core::safetensors::save(
            shard,
            dir.path()
                .join(format!("model-0000{}-of-00002.safetensors", i + 1)),
        )
        .unwrap();
    }
    let index = serde_json::json!({"metadata": {}, "weight_map": weight_map});
    std::fs::write(
        dir.path().join("model.safetensors.index.json"),
        serde_json::to_string(&index).unwrap(),
    )
    .unwrap();
    let model = Llava::load(dir.path(), &Device::Cpu, DType::F32).unwrap();
    assert_eq!(max_diff(&logits_of(&model, &r), &expected), 0.0);
}

#[test]
fn wrong_shapes_and_missing_files_give_clear_errors() {
    // Config hidden size that the weights do not have.
    let dir = tempfile::tempdir().unwrap();
    copy_model(dir.path());
    let cfg_path = dir.path().join("config.json");
    let mut cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&cfg_path).unwrap()).unwrap();
    cfg["text_config"]["intermediate_size"] = serde_json::json!(96);
    std::fs::write(&cfg_path, cfg.to_string()).unwrap();
    let err = Llava::load(dir.path(), &Device::Cpu, DType::F32).unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, ModelError::Weights { .. }), "{msg}");
    assert!(
        msg.contains("language_model.model.layers.0.mlp.gate_proj.weight")
            && msg.contains("[96, 64]")
            && msg.contains("[128, 64]"),
        "{msg}"
    );

    cfg["text_config"]["intermediate_size"] = serde_json::json!(128);
    cfg["text_config"]["hidden_size"] = serde_json::json!(48);
    cfg["text_config"]["head_dim"] = serde_json::json!(12);
    std::fs::write(&cfg_path, cfg.to_string()).unwrap();
    let msg = Llava::load(dir.path(), &Device::Cpu, DType::F32)
        .unwrap_err()
        .to_string();
    assert!(
        msg.contains("shape mismatch for multi_modal_projector.linear_1.weight"),
        "{msg}"
    );

    // A tensor missing from the file.
    let dir = tempfile::tempdir().unwrap();
    copy_model(dir.path());
    let mut all =
        candle_core::safetensors::load(dir.path().join("model.safetensors"), &Device::Cpu).unwrap();
    all.remove("language_model.model.norm.weight");
    candle_core::safetensors::save(&all, dir.path().join("model.safetensors")).unwrap();
    let msg = Llava::load(dir.path(), &Device::Cpu, DType::F32)
        .unwrap_err()
        .to_string();
    assert!(
        msg.contains("cannot find tensor language_model.model.norm.weight"),
        "{msg}"
    );

    // Missing folder, missing weights, broken config.
    let err = Llava::load(Path::new("/no/such/model"), &Device::Cpu, DType::F32).unwrap_err();
    assert!(
        err.to_string()
            .contains("model folder not found: /no/such/model"),
        "{err}"
    );
    let err = LlavaBundle::load("./no/such/model", &Device::Cpu).unwrap_err();
    assert!(matches!(err, ModelError::MissingPath { .. }), "{err}");
    let empty = tempfile::tempdir().unwrap();
    std::fs::copy(
        fixture().join("config.json"),
        empty.path().join("config.json"),
    )
    .unwrap();
    let err = Llava::load(empty.path(), &Device::Cpu, DType::F32).unwrap_err();
    assert!(err.to_string().contains("model.safetensors"), "{err}");
    std::fs::write(empty.path().join("config.json"), "{\"text_config\": [").unwrap();
    let err = Llava::load(empty.path(), &Device::Cpu, DType::F32).unwrap_err();
    assert!(
        matches!(err, ModelError::Json { .. }) && err.to_string().contains("config.json"),
        "{err}"
    );
}

#[test]
fn bad_adapters_are_refused_without_changing_the_model() {
    let r = reference();
    let mut model = load();
    let base = logits_of(&model, &r);
    let peft = candle_core::safetensors::load(
        fixture().join("adapter/adapter_model.safetensors"),
        &Device::Cpu,
    )
    .unwrap();
    let config = std::fs::read_to_string(fixture().join("adapter/adapter_config.json")).unwrap();
    let write = |tensors: &HashMap<String, Tensor>| {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("adapter_config.json"), &config).unwrap();
        candle_core::safetensors::save(tensors, dir.path().join("adapter_model.safetensors"))
            .unwrap();
        dir
    };

    // Wrong rank on one side.
    let key = "base_model.model.model.language_model.layers.1.mlp.down_proj.lora_A.weight";
    let mut bad = peft.clone();
    bad.insert(
        key.into(),
        Tensor::zeros((4, 64), DType::F32, &Device::Cpu).unwrap(),
    );
    let dir = write(&bad);
    let msg = model.load_adapter(dir.path()).unwrap_err().to_string();
    assert!(msg.contains(key) && msg.contains("128"), "{msg}");

    // An adapter on the vision tower.
    let mut bad = peft.clone();
    bad.insert(
        "base_model.model.model.vision_tower.encoder.layers.0.self_attn.q_proj.lora_A.weight"
            .into(),
        Tensor::zeros((4, 32), DType::F32, &Device::Cpu).unwrap(),
    );
    let dir = write(&bad);
    let msg = model.load_adapter(dir.path()).unwrap_err().to_string();
    assert!(msg.contains("outside the language model"), "{msg}");

    // A layer the model does not have.
    let mut bad = peft.clone();
    for m in ["A", "B"] {
        let k = format!(
            "base_model.model.model.language_model.layers.0.self_attn.q_proj.lora_{m}.weight"
        );
        let v = bad[&k].clone();
        bad.insert(k.replace("layers.0", "layers.7"), v);
    }
    let dir = write(&bad);
    let msg = model.load_adapter(dir.path()).unwrap_err().to_string();
    assert!(
        msg.contains("layers.7.self_attn.q_proj") && msg.contains("does not exist"),
        "{msg}"
    );

    // DoRA.
    let dir = write(&peft);
    let cfg = config.replace("\"use_dora\": false", "\"use_dora\": true");
    std::fs::write(dir.path().join("adapter_config.json"), cfg).unwrap();
    let msg = model.load_adapter(dir.path()).unwrap_err().to_string();
    assert!(
        msg.contains("DoRA") && msg.contains("adapter_config.json"),
        "{msg}"
    );

    // Missing folder.
    let err = model
        .load_adapter(Path::new("/no/such/adapter"))
        .unwrap_err();
    assert!(
        err.to_string().contains("adapter folder not found"),
        "{err}"
    );

    // None of that touched the model.
    assert!(model.trainable_vars().is_empty());
    assert_eq!(max_diff(&logits_of(&model, &r), &base), 0.0);
}

/// Writes a random model, a LoRA adapter saved by us and reference logits
/// to `$SPR_INTEROP_DIR`, for `scripts/parity/check_interop.py` to load with
/// transformers + PEFT (run by hand: needs Python):
///
/// ```sh
/// SPR_INTEROP_DIR=/tmp/interop cargo test --test model_parity -- --ignored write_interop
/// python scripts/parity/check_interop.py /tmp/interop
/// ```
#[test]
#[ignore]
fn write_interop() {
    use spr_workbench::model::llava::{random_weights, save_model};
    use spr_workbench::model::LlavaConfig;
    let Ok(out) = std::env::var("SPR_INTEROP_DIR") else {
        eprintln!("set SPR_INTEROP_DIR");
        return;
    };
    let out = Path::new(&out);
    let cfg: LlavaConfig = serde_json::from_value(serde_json::json!({
        "text_config": {"hidden_size": 32, "intermediate_size": 48, "num_hidden_layers": 2,
            "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 64,
            "rms_norm_eps": 1e-5},
        "vision_config": {"hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 2,
            "num_attention_heads": 2, "image_size": 28, "patch_size": 14},
        "image_token_index": 63
    }))
    .unwrap();
    let dev = Device::Cpu;
    let mut w = random_weights(&cfg, 1, &dev).unwrap();
    // Larger weights than the 0.02 init, so logits are O(1).
    for v in w.values_mut() {
        if v.rank() >= 2 {
            *v = (v.clone() * 25.0).unwrap();
        }
    }
    save_model(out, &cfg, &w).unwrap();
    let mut m = Llava::load(out, &dev, DType::F32).unwrap();
    m.add_lora(
        &LoraConfig::new(
            4,
            8.0,
            [TargetModule::Q, TargetModule::Gate, TargetModule::Down],
        ),
        3,
    )
    .unwrap();
    for (name, var) in m.named_trainable_vars() {
        if name.contains("lora_B") {
            var.set(&Tensor::randn(0f32, 0.3, var.shape(), &dev).unwrap())
                .unwrap();
        }
    }
    m.save_adapter(&out.join("adapter"), PeftLayout::Current)
        .unwrap();
    let px = Tensor::randn(0f32, 1f32, (1, 3, 28, 28), &dev).unwrap();
    let ids = Tensor::new(&[[1u32, 63, 63, 63, 63, 5, 9, 17, 33]], &dev).unwrap();
    let f = m.image_features(&px).unwrap();
    let lora = m.forward(&ids, Some(&f), None).unwrap();
    m.set_adapters_enabled(false);
    let base = m.forward(&ids, Some(&f), None).unwrap();
    let mut t = HashMap::new();
    t.insert("pixel_values".to_string(), px);
    t.insert("input_ids".to_string(), ids.to_dtype(DType::I64).unwrap());
    t.insert("base_logits".to_string(), base);
    t.insert("lora_logits".to_string(), lora);
    candle_core::safetensors::save(&t, out.join("interop.safetensors")).unwrap();
}
