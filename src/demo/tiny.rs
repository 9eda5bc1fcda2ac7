//! The tiny demo model: a LLaVA-1.5-shaped network small enough to train
//! from scratch on a CPU, so the whole loop (generate → score → pairs →
//! DPO) runs on the bundled demo without downloading 7B weights.
//!
//! It is made in three steps, each a command (`scripts/make_tiny_model.sh`
//! runs them; the result is committed as `assets/tiny-model/`):
//! 1. [`write_sft_data`] (`spr tiny data`): synthetic scenes drawn by the
//!    demo generator with another seed than the demo's, SPR regions on
//!    them, and a TRL prompt–completion JSONL of region crops with two
//!    kinds of rows: the export prompt answered by the precise grounded
//!    description of the region (Ferret boxes, crop frame), and REC prompts
//!    ("Where is the red circle? …") answered by one grounded box;
//! 2. [`init_model`] (`spr tiny init`): a BPE tokenizer trained on those
//!    texts ([`train_small_tokenizer`]), the [`tiny_config`] and freshly
//!    initialised weights, in the llava-hf layout;
//! 3. `spr train --objective sft --tune full` on the JSONL: every
//!    language-model and projector weight learns (the random CLIP tower
//!    stays frozen, as LLaVA keeps its tower frozen).
//!
//! [`evaluate`] (`spr tiny eval`) has a model describe a project's regions
//! and reports how often the text parses and how well its boxes localize
//! (SPR's localization score against the region's objects).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use candle_core::{Device, Tensor};
use image::DynamicImage;

use crate::core::grounded::{self, BoxFormat, GroundedText, Piece};
use crate::core::imageio;
use crate::core::pipeline::{self, trl_assistant_turn, trl_user_turn, TrlSftRecord};
use crate::core::project::{
    self, files, CandidateRecord, ExportConfig, Frame, Project, RegionRecord, FORMAT_VERSION,
};
use crate::model::generation::GenerationConfig;
use crate::model::llava::{random_weights, save_model};
use crate::model::tokenizer::{train_small_tokenizer, IMAGE_TOKEN};
use crate::model::{LlavaBundle, LlavaConfig};

/// Learned vocabulary of the tiny tokenizer (`<image>` and `<pad>` come on
/// top).
pub const TINY_VOCAB: usize = 510;
/// Side of the square image the tiny vision tower sees.
pub const TINY_IMAGE: usize = 112;

/// The tiny model's configuration for a tokenizer of `vocab_size` tokens
/// whose `<image>` and `<pad>` ids are given: Llama 4 layers / hidden 256 /
/// 4 heads, CLIP 112 px / patch 14 (64 image tokens) / 3 layers / hidden
/// 128, LLaVA-1.5's GELU MLP projector. About 4.2M parameters.
pub fn tiny_config(vocab_size: usize, image_token: u32, pad_token: u32) -> Result<LlavaConfig> {
    tiny_config_with(vocab_size, image_token, pad_token, tiny_vision_config())
}

/// The tiny model's own vision tower: 112 px, patch 14, 3 layers, hidden
/// 128.
fn tiny_vision_config() -> serde_json::Value {
    serde_json::json!({
        "hidden_size": 128, "intermediate_size": 512, "num_hidden_layers": 3,
        "num_attention_heads": 4, "image_size": TINY_IMAGE, "patch_size": 14,
        "hidden_act": "quick_gelu"
    })
}

/// [`tiny_config`] with another vision tower configuration.
fn tiny_config_with(
    vocab_size: usize,
    image_token: u32,
    pad_token: u32,
    vision: serde_json::Value,
) -> Result<LlavaConfig> {
    serde_json::from_value(serde_json::json!({
        "text_config": {
            "hidden_size": 256, "intermediate_size": 688, "num_hidden_layers": 4,
            "num_attention_heads": 4, "num_key_value_heads": 4, "vocab_size": vocab_size,
            "max_position_embeddings": 512, "rms_norm_eps": 1e-5,
            "bos_token_id": 1, "eos_token_id": 2, "pad_token_id": pad_token
        },
        "vision_config": vision,
        "image_token_index": image_token,
        "pad_token_id": pad_token,
        "projector_hidden_act": "gelu"
    }))
    .context("building the tiny model config")
}

/// Settings of [`write_sft_data`].
#[derive(Clone, Debug)]
pub struct SftDataConfig {
    /// Synthetic scenes drawn.
    pub scenes: usize,
    /// Seed of the scenes (the demo project uses 2025; keep them apart).
    pub seed: u64,
    /// Also REC rows on whole scenes (every object whose category is
    /// unique in its scene, as the demo's REC set asks), not only on
    /// region crops.
    pub whole_scenes: bool,
    /// Fewest and most objects per scene (the demo's are 8 and 16; fewer
    /// make the easy first stage of a curriculum).
    pub objects: [usize; 2],
    /// Scenes of a REC evaluation set drawn like these (same object
    /// counts, the REC seed of [`super::rec::rec_seed`]) into
    /// `scenes/rec/` (0: none).
    pub rec_scenes: usize,
}

impl Default for SftDataConfig {
    fn default() -> Self {
        Self {
            scenes: 300,
            seed: 7,
            whole_scenes: false,
            objects: [8, 16],
            rec_scenes: 0,
        }
    }
}

/// What [`write_sft_data`] wrote.
#[derive(Clone, Debug)]
pub struct SftDataSummary {
    /// The JSONL (`sft.jsonl`).
    pub file: PathBuf,
    /// Description rows.
    pub descriptions: usize,
    /// REC rows (region crops and, with `whole_scenes`, whole scenes).
    pub rec: usize,
    /// Of [`Self::rec`], the rows on whole scenes.
    pub scene_rec: usize,
}

/// File names inside a [`write_sft_data`] folder.
pub mod sft_files {
    /// The prompt–completion rows.
    pub const ROWS: &str = "sft.jsonl";
    /// Every text of the scenes (chat prompts, completions and the scene
    /// project's candidate texts), one per line: the tokenizer's corpus.
    pub const CORPUS: &str = "corpus.txt";
    /// The scene project the rows come from.
    pub const SCENES: &str = "scenes";
    /// Region crops, one PNG per region.
    pub const CROPS: &str = "crops";
}

/// Every record of a JSONL stage file; the first bad line is an error.
pub(crate) fn read_all<T: serde::de::DeserializeOwned + project::Versioned>(
    path: &Path,
) -> Result<Vec<T>> {
    let (records, errors) = project::read_jsonl(path)?;
    if let Some(e) = errors.first() {
        anyhow::bail!("{e}");
    }
    Ok(records)
}

/// The REC question for an object called `name`.
pub fn rec_prompt(name: &str) -> String {
    format!("Where is the {name}? Answer with its bounding box.")
}

/// Writes SFT data for the tiny model into `out` (see the module docs).
pub fn write_sft_data(out: &Path, cfg: &SftDataConfig) -> Result<SftDataSummary> {
    let scenes = out.join(sft_files::SCENES);
    let demo = super::DemoConfig {
        images: cfg.scenes,
        seed: cfg.seed,
        objects: cfg.objects,
        rec_scenes: cfg.rec_scenes,
        clip: None,
        detector: None,
        ..Default::default()
    };
    super::generate(&scenes, &demo).context("drawing the scenes")?;
    let project = Project::open(&scenes)?;
    let ds = project.load_dataset()?;
    let regions: Vec<RegionRecord> = read_all(&project.path(files::REGIONS))?;
    let candidates: Vec<CandidateRecord> = read_all(&project.path(files::CANDIDATES))?;
    let precise: HashMap<&str, &str> = candidates
        .iter()
        .filter(|c| c.source.ends_with(":precise"))
        .map(|c| (c.query_id.as_str(), c.text.as_str()))
        .collect();
    let prompt = ExportConfig::default().prompt;
    let crops_dir = out.join(sft_files::CROPS);
    std::fs::create_dir_all(&crops_dir)
        .with_context(|| format!("creating {}", crops_dir.display()))?;
    let names = super::category_names();
    let mut rows: Vec<TrlSftRecord> = Vec::new();
    let mut corpus = String::new();
    let (mut descriptions, mut rec) = (0, 0);
    let push =
        |rows: &mut Vec<TrlSftRecord>, corpus: &mut String, image: &str, q: &str, a: &str| {
            rows.push(TrlSftRecord {
                images: vec![image.to_string()],
                prompt: vec![trl_user_turn(q)],
                completion: vec![trl_assistant_turn(a)],
            });
            corpus.push_str(&format!("USER: {q} ASSISTANT: {a}\n"));
        };
    for region in &regions {
        let Some(text) = precise.get(region.id.as_str()) else {
            continue;
        };
        let rel = format!("{}/{}.png", sft_files::CROPS, region.id);
        let img = imageio::load_rgb(&project.image_root().join(&region.file_name))?;
        imageio::save_png(&imageio::crop_rgb(&img, region.crop), &out.join(&rel))?;
        push(&mut rows, &mut corpus, &rel, &prompt, text);
        descriptions += 1;
        // REC: objects fully in the crop whose category is unique there.
        let Some(image) = ds.image_index(region.image_id) else {
            continue;
        };
        let visible: Vec<usize> = ds
            .objects_of(image)
            .filter(|&o| {
                !ds.objects.crowd[o] && ds.objects.bbox[o].fraction_inside(region.crop) >= 0.95
            })
            .collect();
        for o in unique_category(&ds, &visible) {
            let name = ds.category_name(o);
            let answer = grounded::render(
                &rec_answer(name, ds.objects.bbox[o]).crop_from_image(region.crop),
                BoxFormat::Ferret,
                region.crop.width(),
                region.crop.height(),
            );
            push(&mut rows, &mut corpus, &rel, &rec_prompt(name), &answer);
            rec += 1;
        }
    }
    let mut scene_rec = 0;
    if cfg.whole_scenes {
        for (i, info) in ds.images.iter().enumerate() {
            let rel = format!(
                "{}/{}",
                sft_files::SCENES,
                Path::new(&project.config.dataset.image_root)
                    .join(&info.file_name)
                    .display()
            );
            // The demo REC set's rule: not crowds, at least SPR's 300 px².
            let usable: Vec<usize> = ds
                .objects_of(i)
                .filter(|&o| !ds.objects.crowd[o] && ds.objects.bbox[o].area() >= 300.0)
                .collect();
            for o in unique_category(&ds, &usable) {
                let name = ds.category_name(o);
                let answer = grounded::render(
                    &rec_answer(name, ds.objects.bbox[o]),
                    BoxFormat::Ferret,
                    info.width as f32,
                    info.height as f32,
                );
                push(&mut rows, &mut corpus, &rel, &rec_prompt(name), &answer);
                scene_rec += 1;
            }
        }
    }
    for c in &candidates {
        corpus.push_str(&c.text);
        corpus.push('\n');
    }
    for name in &names {
        corpus.push_str(&rec_prompt(name));
        corpus.push('\n');
    }
    let file = out.join(sft_files::ROWS);
    project::write_jsonl(&file, &rows)?;
    project::write_atomic(&out.join(sft_files::CORPUS), corpus.as_bytes())?;
    Ok(SftDataSummary {
        file,
        descriptions,
        rec: rec + scene_rec,
        scene_rec,
    })
}

/// The objects of `objects` whose category no other of them has: the ones
/// "the red circle" names without ambiguity.
fn unique_category(ds: &crate::core::dataset::Dataset, objects: &[usize]) -> Vec<usize> {
    let cat = &ds.objects.category;
    objects
        .iter()
        .copied()
        .filter(|&o| objects.iter().filter(|&&p| cat[p] == cat[o]).count() == 1)
        .collect()
}

/// A REC answer: "the {name} [box]." (image pixels).
fn rec_answer(name: &str, bbox: crate::core::geometry::Bbox) -> GroundedText {
    GroundedText {
        pieces: vec![
            Piece::Object {
                phrase: format!("the {name}"),
                boxes: vec![bbox],
            },
            Piece::Text(".".into()),
        ],
    }
}

/// Writes an untrained tiny model into `out`: a tokenizer trained on the
/// lines of `corpus` (see [`sft_files::CORPUS`]), [`tiny_config`], weights
/// drawn from `seed`, a processor config that resizes to the tower's side
/// without cropping (region crops are not square; a centre crop would cut
/// off objects the text mentions) and a generation config. With
/// `vision_from` (a `CLIPModel` or `Owlv2ForObjectDetection` folder) the
/// vision tower is that model's, configuration and trained weights: a
/// tower that already tells shapes and colours apart (and, from OWLv2,
/// where they are). Returns the parameter count.
pub fn init_model(
    out: &Path,
    corpus: &Path,
    seed: u64,
    vision_from: Option<&Path>,
) -> Result<usize> {
    let text =
        std::fs::read_to_string(corpus).with_context(|| format!("reading {}", corpus.display()))?;
    let lines: Vec<String> = text.lines().map(str::to_string).collect();
    anyhow::ensure!(!lines.is_empty(), "{}: empty corpus", corpus.display());
    let tokenizer = train_small_tokenizer(&lines, TINY_VOCAB)?;
    let image = tokenizer
        .token_to_id(IMAGE_TOKEN)
        .context("the tokenizer lacks <image>")?;
    let pad = tokenizer
        .token_to_id("<pad>")
        .context("the tokenizer lacks <pad>")?;
    let tower = vision_from.map(read_tower).transpose()?;
    let vision = match &tower {
        Some(t) => t.config.clone(),
        None => tiny_vision_config(),
    };
    let cfg = tiny_config_with(tokenizer.get_vocab_size(true), image, pad, vision)?;
    let mut weights = random_weights(&cfg, seed, &Device::Cpu)?;
    match tower {
        None => {
            let slot = weights
                .get_mut(POSITIONS)
                .context("the tiny tower has no position embedding")?;
            *slot = grid_positions(slot.dim(0)?, slot.dim(1)?)?;
        }
        Some(t) => {
            for (name, tensor) in t.weights {
                let slot = weights.get_mut(&name).with_context(|| {
                    format!("{}: the tower's `{name}` has no place in LLaVA", t.source)
                })?;
                anyhow::ensure!(
                    slot.dims() == tensor.dims(),
                    "{}: `{name}` is {:?}, LLaVA's is {:?}",
                    t.source,
                    tensor.dims(),
                    slot.dims()
                );
                *slot = tensor;
            }
        }
    }
    save_model(out, &cfg, &weights)?;
    tokenizer
        .save(out.join("tokenizer.json"), true)
        .map_err(|e| anyhow::anyhow!("writing the tokenizer: {e}"))?;
    let side = cfg.vision_config.image_size;
    let mean = crate::model::processor::CLIP_MEAN;
    let std = crate::model::processor::CLIP_STD;
    let processor = serde_json::json!({
        "do_resize": true,
        "size": {"height": side, "width": side},
        "do_center_crop": false,
        "do_rescale": true,
        "rescale_factor": 1.0 / 255.0,
        "do_normalize": true,
        "image_mean": mean,
        "image_std": std,
        "image_processor_type": "CLIPImageProcessor"
    });
    let generation = serde_json::json!({
        "bos_token_id": 1, "eos_token_id": 2, "pad_token_id": pad
    });
    for (name, value) in [
        ("preprocessor_config.json", processor),
        ("generation_config.json", generation),
    ] {
        let path = out.join(name);
        let bytes = serde_json::to_vec_pretty(&value)?;
        project::write_atomic(&path, &bytes)?;
    }
    write_transformers_files(out)?;
    Ok(weights.values().map(|t| t.elem_count()).sum())
}

/// The random tower's position embedding (class token first, then the
/// patches row by row).
const POSITIONS: &str = "vision_tower.vision_model.embeddings.position_embedding.weight";

/// A 2-D sine–cosine grid for `rows` position embeddings of width `dim`
/// (the class token's row zero, then a square grid of patches): the first
/// half of the features encodes the column, the second the row, each as
/// sin/cos pairs at frequencies 100^(−k/(dim/4)) radians per patch.
///
/// Drawn at random like the other weights (std 0.02), the positions are
/// about 3 % of a patch's embedding (the patch projection of 588 pixel
/// values is ~30× larger), so a random tower hands the language model image
/// tokens that hardly say where they are, and the tiny model never learned
/// to point (README, "The experiment"). Unit-amplitude sinusoids have about
/// the patch embedding's norm.
fn grid_positions(rows: usize, dim: usize) -> Result<Tensor> {
    let side = (rows.saturating_sub(1) as f64).sqrt().round() as usize;
    anyhow::ensure!(
        side * side + 1 == rows && dim.is_multiple_of(4),
        "position embedding {rows}×{dim}: want 1 + a square grid and a width divisible by 4"
    );
    let freqs = dim / 4;
    let mut data = vec![0f32; rows * dim];
    for r in 0..side {
        for c in 0..side {
            let row = &mut data[(1 + r * side + c) * dim..][..dim];
            for k in 0..freqs {
                let omega = 100f64.powf(-(k as f64) / freqs as f64);
                let (x, y) = (c as f64 * omega, r as f64 * omega);
                row[k] = x.sin() as f32;
                row[freqs + k] = x.cos() as f32;
                row[2 * freqs + k] = y.sin() as f32;
                row[3 * freqs + k] = y.cos() as f32;
            }
        }
    }
    Ok(Tensor::from_vec(data, (rows, dim), &Device::Cpu)?)
}

/// A trained vision tower taken from another model folder.
struct Tower {
    source: String,
    /// LLaVA's `vision_config`.
    config: serde_json::Value,
    /// Under LLaVA's names (`vision_tower.vision_model.…`).
    weights: Vec<(String, Tensor)>,
}

/// The vision tower of a `CLIPModel` (`vision_model.…`) or an
/// `Owlv2ForObjectDetection` (`owlv2.vision_model.…`, `pre_layernorm`)
/// folder, renamed into LLaVA's layout (`pre_layrnorm`, as transformers'
/// `CLIPVisionModel` spells it).
fn read_tower(dir: &Path) -> Result<Tower> {
    let source = dir.display().to_string();
    let cfg_path = dir.join("config.json");
    let cfg: serde_json::Value = serde_json::from_slice(
        &std::fs::read(&cfg_path).with_context(|| format!("reading {}", cfg_path.display()))?,
    )
    .with_context(|| format!("parsing {}", cfg_path.display()))?;
    let v = cfg
        .get("vision_config")
        .with_context(|| format!("{}: no vision_config", cfg_path.display()))?;
    let mut config = serde_json::Map::new();
    for key in [
        "hidden_size",
        "intermediate_size",
        "num_hidden_layers",
        "num_attention_heads",
        "image_size",
        "patch_size",
        "hidden_act",
        "layer_norm_eps",
    ] {
        if let Some(x) = v.get(key) {
            config.insert(key.to_string(), x.clone());
        }
    }
    let file = dir.join(crate::model::hub::WEIGHTS_FILE);
    let tensors = candle_core::safetensors::load(&file, &Device::Cpu)
        .with_context(|| format!("reading {}", file.display()))?;
    let mut weights = Vec::new();
    for (name, tensor) in tensors {
        let rest = name
            .strip_prefix("owlv2.vision_model.")
            .or_else(|| name.strip_prefix("vision_model."));
        let Some(rest) = rest else { continue };
        let rest = rest.replace("pre_layernorm", "pre_layrnorm");
        weights.push((format!("vision_tower.vision_model.{rest}"), tensor));
    }
    anyhow::ensure!(
        !weights.is_empty(),
        "{source}: no vision tower weights (vision_model.… or owlv2.vision_model.…)"
    );
    weights.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(Tower {
        source,
        config: serde_json::Value::Object(config),
        weights,
    })
}

/// LLaVA-1.5's chat template (llava-hf's), as transformers' processor
/// applies it: `USER: <image>\n{text} ASSISTANT:` ([`chat_prompt`]).
///
/// [`chat_prompt`]: crate::model::tokenizer::chat_prompt
pub const CHAT_TEMPLATE: &str = "{% for message in messages %}{% if message['role'] != 'system' %}{{ message['role'].upper() + ': '}}{% endif %}{% for content in message['content'] | selectattr('type', 'equalto', 'image') %}{{ '<image>\n' }}{% endfor %}{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}{{ content['text'] + ' '}}{% endfor %}{% endfor %}{% if add_generation_prompt %}{{ 'ASSISTANT:' }}{% endif %}";

/// Writes what transformers' `AutoProcessor` needs beside a tiny model
/// folder's `tokenizer.json` and `preprocessor_config.json`:
/// `tokenizer_config.json` (special tokens, fast tokenizer class),
/// `processor_config.json` (a `LlavaProcessor` with the image processor,
/// patch size and feature strategy) and `chat_template.jinja`. Then
/// `LlavaForConditionalGeneration` and `AutoProcessor` load the folder as
/// they load `llava-hf/llava-1.5-7b-hf` (`scripts/tiny_model_transformers.py`).
pub fn write_transformers_files(dir: &Path) -> Result<()> {
    let pre_path = dir.join("preprocessor_config.json");
    let pre: serde_json::Value = serde_json::from_slice(
        &std::fs::read(&pre_path).with_context(|| format!("reading {}", pre_path.display()))?,
    )
    .with_context(|| format!("parsing {}", pre_path.display()))?;
    let tokenizer_config = serde_json::json!({
        "backend": "tokenizers",
        "bos_token": "<s>",
        "eos_token": "</s>",
        "unk_token": "<unk>",
        "pad_token": "<pad>",
        "padding_side": "left",
        "model_max_length": 512,
        "processor_class": "LlavaProcessor",
        "tokenizer_class": "TokenizersBackend"
    });
    let processor_config = serde_json::json!({
        "image_processor": pre,
        "image_token": IMAGE_TOKEN,
        "num_additional_image_tokens": 1,
        "patch_size": 14,
        "processor_class": "LlavaProcessor",
        "vision_feature_select_strategy": "default"
    });
    for (name, value) in [
        ("tokenizer_config.json", tokenizer_config),
        ("processor_config.json", processor_config),
    ] {
        project::write_atomic(&dir.join(name), &serde_json::to_vec_pretty(&value)?)?;
    }
    project::write_atomic(&dir.join("chat_template.jinja"), CHAT_TEMPLATE.as_bytes())?;
    Ok(())
}

/// One region described by a model.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Generation {
    /// The region id.
    pub query_id: String,
    /// The generated text.
    pub text: String,
    /// Boxes that parsed (Ferret, crop frame).
    pub boxes: usize,
    /// Parse issues.
    pub issues: usize,
    /// SPR's localization score against the region's objects (recall
    /// variant, IoU 0.5), when scoring succeeded.
    pub localization: Option<f32>,
}

/// What [`evaluate`] measured.
#[derive(Clone, Debug)]
pub struct EvalReport {
    /// Each region's generation.
    pub generations: Vec<Generation>,
    /// Seconds spent generating.
    pub seconds: f64,
    /// Tokens generated.
    pub tokens: usize,
}

impl EvalReport {
    /// Fraction of generations with at least one box and no parse issue.
    pub fn parse_rate(&self) -> f64 {
        let ok = self
            .generations
            .iter()
            .filter(|g| g.boxes > 0 && g.issues == 0)
            .count();
        ok as f64 / self.generations.len().max(1) as f64
    }

    /// Mean localization score (regions without one count as 0).
    pub fn mean_localization(&self) -> f64 {
        let sum: f64 = self
            .generations
            .iter()
            .map(|g| f64::from(g.localization.unwrap_or(0.0)))
            .sum();
        sum / self.generations.len().max(1) as f64
    }
}

/// Has the model at `model` describe up to `limit` regions of `project`
/// with the project's export prompt (greedy, at most `max_new_tokens`),
/// parses each answer as Ferret boxes in the crop frame and scores it with
/// SPR's localization score.
pub fn evaluate(
    model: &str,
    project: &Path,
    limit: usize,
    max_new_tokens: usize,
    progress: &dyn Fn(usize, usize),
) -> Result<EvalReport> {
    let device = Device::Cpu;
    let mut bundle = LlavaBundle::load(model, &device)?;
    bundle.model.set_grad_enabled(false);
    let project = Project::open(project)?;
    let ds = project.load_dataset()?;
    let mut regions: Vec<RegionRecord> = read_all(&project.path(files::REGIONS))?;
    regions.truncate(limit);
    let prompt = project.config.export.prompt.clone();
    let ids = bundle.tokenizer.encode_chat(&prompt)?;
    let n_ids = ids.len();
    let input = Tensor::from_vec(ids, (1, n_ids), &device)?;
    let gen_cfg = GenerationConfig::greedy(max_new_tokens, bundle.tokenizer.eos_token_ids());
    let started = std::time::Instant::now();
    let mut candidates = Vec::new();
    let mut parsed = Vec::new();
    let mut tokens = 0;
    for (i, region) in regions.iter().enumerate() {
        progress(i, regions.len());
        let img = imageio::load_rgb(&project.image_root().join(&region.file_name))?;
        let crop = imageio::crop_rgb(&img, region.crop);
        let pixels = bundle
            .processor
            .preprocess(&DynamicImage::ImageRgb8(crop), &device)?
            .unsqueeze(0)?;
        let feats = bundle.model.image_features(&pixels)?;
        let out = bundle
            .model
            .generate(&input, Some(&feats), None, &gen_cfg)?;
        let new = out.first().map(|g| g.tokens.clone()).unwrap_or_default();
        tokens += new.len();
        let text = bundle.tokenizer.decode(&new, true)?.trim().to_string();
        let p = grounded::parse(
            &text,
            BoxFormat::Ferret,
            region.crop.width(),
            region.crop.height(),
        );
        parsed.push((p.text.box_count(), p.issues.len()));
        candidates.push(CandidateRecord {
            v: FORMAT_VERSION,
            id: format!("{}-tiny", region.id),
            query_id: region.id.clone(),
            source: "tiny-model".into(),
            prompt: Some(prompt.clone()),
            text,
            format: BoxFormat::Ferret,
            frame: Frame::Crop,
            generation: None,
        });
    }
    let seconds = started.elapsed().as_secs_f64();
    let (scores, _) = pipeline::score_candidates(
        &ds,
        &regions,
        &candidates,
        &project.config.scoring,
        crate::core::scorers::Scorers::none(),
        &|_| {},
    );
    let loc: HashMap<&str, f32> = scores
        .iter()
        .map(|s| (s.candidate_id.as_str(), s.localization))
        .collect();
    let generations = candidates
        .iter()
        .zip(parsed)
        .map(|(c, (boxes, issues))| Generation {
            query_id: c.query_id.clone(),
            text: c.text.clone(),
            boxes,
            issues,
            localization: if boxes > 0 {
                loc.get(c.id.as_str()).copied()
            } else {
                Some(0.0)
            },
        })
        .collect();
    Ok(EvalReport {
        generations,
        seconds,
        tokens,
    })
}
