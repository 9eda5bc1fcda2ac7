//! TEMPORARY timing probe (not committed).
use std::collections::HashMap;
use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use spr_workbench::model::{LlavaConfig, Llava, LoraConfig, TargetModule, next_token_logprobs};

#[test]
#[ignore]
fn time_dpo_like_step() {
    let cfg: LlavaConfig = serde_json::from_value(serde_json::json!({
        "text_config": {"hidden_size": 256, "intermediate_size": 688, "num_hidden_layers": 4,
            "num_attention_heads": 4, "num_key_value_heads": 4, "vocab_size": 4096},
        "vision_config": {"hidden_size": 128, "intermediate_size": 512, "num_hidden_layers": 3,
            "num_attention_heads": 4, "image_size": 112, "patch_size": 14},
        "image_token_index": 4000
    })).unwrap();
    // random weights via a zeros builder then replaced: use a HashMap built lazily
    struct Rand;
    let dev = Device::Cpu;
    let vb0 = VarBuilder::zeros(DType::F32, &dev);
    let _ = Rand;
    let m0 = Llava::new(vb0, &cfg).unwrap();
    drop(m0);
    // Build a hashmap by recording names: simplest is a randn backend.
    let names_shapes: Vec<(String, Vec<usize>)> = vec![];
    let _ = names_shapes;
    let mut map: HashMap<String, Tensor> = HashMap::new();
    let t = &cfg.text_config; let v = &cfg.vision_config;
    let mut add = |n: String, s: Vec<usize>| { let fan = *s.last().unwrap() as f64; map.insert(n, (Tensor::randn(0f32, 1f32, s, &dev).unwrap() / fan.sqrt()).unwrap()); };
    add("language_model.model.embed_tokens.weight".into(), vec![t.vocab_size, t.hidden_size]);
    add("language_model.lm_head.weight".into(), vec![t.vocab_size, t.hidden_size]);
    add("language_model.model.norm.weight".into(), vec![t.hidden_size]);
    for i in 0..t.num_hidden_layers { let p = format!("language_model.model.layers.{i}.");
        for (n, o, inn) in [("self_attn.q_proj", 256, 256), ("self_attn.k_proj", 256, 256), ("self_attn.v_proj", 256, 256), ("self_attn.o_proj", 256, 256), ("mlp.gate_proj", 688, 256), ("mlp.up_proj", 688, 256), ("mlp.down_proj", 256, 688)] { add(format!("{p}{n}.weight"), vec![o, inn]); }
        add(format!("{p}input_layernorm.weight"), vec![256]); add(format!("{p}post_attention_layernorm.weight"), vec![256]); }
    let vp = "vision_tower.vision_model.";
    add(format!("{vp}embeddings.class_embedding"), vec![128]);
    add(format!("{vp}embeddings.patch_embedding.weight"), vec![128, 3, 14, 14]);
    add(format!("{vp}embeddings.position_embedding.weight"), vec![65, 128]);
    for n in ["pre_layrnorm"] { add(format!("{vp}{n}.weight"), vec![128]); add(format!("{vp}{n}.bias"), vec![128]); }
    for i in 0..v.num_hidden_layers { let p = format!("{vp}encoder.layers.{i}.");
        for n in ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.out_proj"] { add(format!("{p}{n}.weight"), vec![128,128]); add(format!("{p}{n}.bias"), vec![128]); }
        add(format!("{p}mlp.fc1.weight"), vec![512,128]); add(format!("{p}mlp.fc1.bias"), vec![512]);
        add(format!("{p}mlp.fc2.weight"), vec![128,512]); add(format!("{p}mlp.fc2.bias"), vec![128]);
        for n in ["layer_norm1", "layer_norm2"] { add(format!("{p}{n}.weight"), vec![128]); add(format!("{p}{n}.bias"), vec![128]); } }
    add("multi_modal_projector.linear_1.weight".into(), vec![256, 128]); add("multi_modal_projector.linear_1.bias".into(), vec![256]);
    add("multi_modal_projector.linear_2.weight".into(), vec![256, 256]); add("multi_modal_projector.linear_2.bias".into(), vec![256]);
    let vb = VarBuilder::from_tensors(map, DType::F32, &dev);
    let mut model = Llava::new(vb, &cfg).unwrap();
    model.add_lora(&LoraConfig::new(16, 32.0, TargetModule::ALL), 1).unwrap();
    let px = Tensor::randn(0f32, 1f32, (4, 3, 112, 112), &dev).unwrap();
    let feats = model.image_features(&px).unwrap();
    let n = 162usize; // 4 seqs x 162 = 650 tokens
    let mut ids = vec![];
    for b in 0..4 { for i in 0..n { ids.push(if i >= 1 && i <= 64 { 4000u32 } else { ((i * 7 + b * 13) % 3999) as u32 }); } }
    let ids = Tensor::from_vec(ids, (4, n), &dev).unwrap();
    for it in 0..4 {
        let t0 = std::time::Instant::now();
        let logits = model.forward(&ids, Some(&feats), None).unwrap();
        let lp = next_token_logprobs(&logits, &ids).unwrap().sum_all().unwrap();
        let t1 = t0.elapsed();
        let g = lp.backward().unwrap();
        let t2 = t0.elapsed();
        model.set_adapters_enabled(false);
        let t3 = std::time::Instant::now();
        let _ = model.forward(&ids, Some(&feats), None).unwrap();
        let t4 = t3.elapsed();
        model.set_adapters_enabled(true);
        eprintln!("iter {it}: fwd {:?} fwd+bwd {:?} ({} grads) ref-fwd {:?} => {:.0} tok/s policy", t1, t2, g.get_ids().count(), t4, 648.0 / t2.as_secs_f64());
    }
}

#[test]
#[ignore]
fn write_interop() {
    use spr_workbench::model::llava::{random_weights, save_model};
    use spr_workbench::model::PeftLayout;
    let cfg: LlavaConfig = serde_json::from_value(serde_json::json!({
        "text_config": {"hidden_size": 32, "intermediate_size": 48, "num_hidden_layers": 2,
            "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 64, "rms_norm_eps": 1e-5},
        "vision_config": {"hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 2,
            "num_attention_heads": 2, "image_size": 28, "patch_size": 14},
        "image_token_index": 63
    })).unwrap();
    let dev = Device::Cpu;
    let mut w = random_weights(&cfg, 1, &dev).unwrap();
    for v in w.values_mut() { if v.rank() >= 2 { *v = (v.clone() * 25.0).unwrap(); } }
    let out = std::path::Path::new("/tmp/interop");
    save_model(out, &cfg, &w).unwrap();
    let mut m = Llava::load(out, &dev, DType::F32).unwrap();
    m.add_lora(&LoraConfig::new(4, 8.0, [TargetModule::Q, TargetModule::Down, TargetModule::Gate]), 3).unwrap();
    for (n, v) in m.named_trainable_vars() { if n.contains("lora_B") { v.set(&Tensor::randn(0f32, 0.3, v.shape(), &dev).unwrap()).unwrap(); } }
    m.save_adapter(&out.join("adapter"), PeftLayout::Current).unwrap();
    let px = Tensor::randn(0f32, 1f32, (1, 3, 28, 28), &dev).unwrap();
    let ids = Tensor::new(&[[1u32, 63, 63, 63, 63, 5, 9, 17, 33]], &dev).unwrap();
    let f = m.image_features(&px).unwrap();
    let lora = m.forward(&ids, Some(&f), None).unwrap();
    m.set_adapters_enabled(false);
    let base = m.forward(&ids, Some(&f), None).unwrap();
    let mut t = HashMap::new();
    t.insert("pixel_values".to_string(), px); t.insert("input_ids".to_string(), ids.to_dtype(DType::I64).unwrap());
    t.insert("base".to_string(), base); t.insert("lora".to_string(), lora);
    candle_core::safetensors::save(&t, out.join("io.safetensors")).unwrap();
}
