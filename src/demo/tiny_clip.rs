//! The tiny CLIP of the demo: a `CLIPModel`-layout model small enough to
//! train from scratch on a CPU, so the semantic score means something on
//! the synthetic scenes without downloading OpenAI's weights.
//!
//! `spr tiny clip --out DIR` ([`make_tiny_clip`]):
//! 1. draws synthetic scenes with the demo generator (a seed of their own,
//!    not the demo's 2025 nor the tiny LLaVA's 7) and builds image–text
//!    pairs of three kinds: each SPR region's crop (six regions per
//!    scene; ×1.5, padded to a
//!    square, as the scorer shows it) with its precise description, boxes
//!    stripped; each object's close crop with its name ("a red circle");
//!    each whole scene with its object counts ("a picture of two red
//!    circles, a blue square, …"). Every text has a hard negative that
//!    differs in one colour or shape word;
//! 2. trains a BPE tokenizer on the texts, with CLIP's end-of-text token;
//! 3. trains the model contrastively ([`crate::train::contrastive`]);
//! 4. writes a `CLIPModel` folder (`config.json`, `model.safetensors`,
//!    `tokenizer.json`, `preprocessor_config.json`) and measures it on
//!    held-out scenes ([`evaluate_tiny_clip`]): text→region retrieval
//!    top-1 among the held-out regions (crop embeddings and the
//!    local-attention embeddings from the whole scene), and how often a
//!    region's own description beats its one-word change.

use std::collections::HashMap;
use std::path::Path;

use anyhow::{Context, Result};
use candle_core::{DType, Device, Tensor, Var};
use candle_nn::VarBuilder;
use image::{DynamicImage, RgbImage};

use crate::core::geometry::{Bbox, SquarePad};
use crate::core::grounded;
use crate::core::imageio;
use crate::core::project::{self, files, CandidateRecord, Project, RegionRecord};
use crate::core::rng::SplitMix64;
use crate::model::clip_model::{self, ClipModel};
use crate::model::tokenizer::train_small_tokenizer;
use crate::model::{ClipConfig, ImageProcessor};
use crate::train::contrastive::{self, ContrastiveConfig, ContrastivePair, ContrastiveStep};

/// Side of the tiny CLIP's input images.
pub const TINY_CLIP_IMAGE: usize = 112;
/// The end-of-text token (CLIP's name for it).
pub const END_OF_TEXT: &str = "<|endoftext|>";
const COLOURS: [&str; 3] = ["red", "green", "blue"];
const SHAPES: [&str; 4] = ["circle", "square", "triangle", "diamond"];

/// The tiny CLIP's configuration: text 3 layers / hidden 128 / 77
/// positions, vision 112 px / patch 14 (8×8 patches) / 4 layers / hidden
/// 128, joint space 128. About 1.5M parameters.
pub fn tiny_clip_config(vocab_size: usize, eos: u32) -> Result<ClipConfig> {
    serde_json::from_value(serde_json::json!({
        "text_config": {
            "vocab_size": vocab_size, "hidden_size": 128, "intermediate_size": 512,
            "num_hidden_layers": 3, "num_attention_heads": 4, "max_position_embeddings": 77,
            "hidden_act": "quick_gelu", "eos_token_id": eos, "bos_token_id": 1, "pad_token_id": eos
        },
        "vision_config": {
            "hidden_size": 128, "intermediate_size": 512, "num_hidden_layers": 4,
            "num_attention_heads": 4, "image_size": TINY_CLIP_IMAGE, "patch_size": 14,
            "hidden_act": "quick_gelu"
        },
        "projection_dim": 128,
        "logit_scale_init_value": 2.6592
    }))
    .context("building the tiny CLIP config")
}

/// One image with its text and a one-word change of it.
#[derive(Clone, Debug)]
pub struct ClipExample {
    /// The image, square.
    pub image: RgbImage,
    /// Its description.
    pub text: String,
    /// The description with one colour or shape word changed.
    pub negative: Option<String>,
    /// For region examples: the scene and the region (image pixels), so
    /// the local-attention embedding can be measured too.
    pub region: Option<(usize, Bbox)>,
}

/// `text` with one colour or shape word (singular or plural) replaced by
/// another, chosen by `rng`; `None` when the text has none.
pub fn one_word_change(text: &str, rng: &mut SplitMix64) -> Option<String> {
    let words: Vec<&str> = text.split(' ').collect();
    let core = |w: &str| {
        w.trim_matches(|c: char| !c.is_ascii_alphanumeric())
            .to_string()
    };
    let spots: Vec<usize> = (0..words.len())
        .filter(|&i| {
            let w = core(words[i]);
            COLOURS.contains(&w.as_str()) || SHAPES.iter().any(|s| w == *s || w == format!("{s}s"))
        })
        .collect();
    if spots.is_empty() {
        return None;
    }
    let i = spots[rng.below(spots.len())];
    let w = core(words[i]);
    let replacement = if let Some(c) = COLOURS.iter().position(|c| *c == w) {
        COLOURS[(c + 1 + rng.below(COLOURS.len() - 1)) % COLOURS.len()].to_string()
    } else {
        let plural = w.ends_with('s') && !SHAPES.contains(&w.as_str());
        let stem = if plural {
            &w[..w.len() - 1]
        } else {
            w.as_str()
        };
        let s = SHAPES.iter().position(|s| *s == stem)?;
        let other = SHAPES[(s + 1 + rng.below(SHAPES.len() - 1)) % SHAPES.len()];
        if plural {
            format!("{other}s")
        } else {
            other.to_string()
        }
    };
    let mut out: Vec<String> = words.iter().map(|w| w.to_string()).collect();
    out[i] = out[i].replacen(&w, &replacement, 1);
    Some(out.join(" "))
}

/// `image` padded to a centred square with CLIP's mean colour.
pub fn pad_square(image: &RgbImage) -> RgbImage {
    imageio::pad_to_square(
        image,
        imageio::mean_colour(crate::model::processor::CLIP_MEAN),
    )
}

fn counts_phrase(names: &[String]) -> String {
    let mut counts: Vec<(String, usize)> = Vec::new();
    for n in names {
        match counts.iter_mut().find(|(m, _)| m == n) {
            Some((_, c)) => *c += 1,
            None => counts.push((n.clone(), 1)),
        }
    }
    let words = ["no", "a", "two", "three", "four", "five", "six"];
    let parts: Vec<String> = counts
        .iter()
        .map(|(n, c)| match words.get(*c) {
            Some(&"a") => format!("a {n}"),
            Some(w) => format!("{w} {n}s"),
            None => format!("{c} {n}s"),
        })
        .collect();
    match parts.as_slice() {
        [] => "nothing".into(),
        [one] => one.clone(),
        [init @ .., last] => format!("{} and {last}", init.join(", ")),
    }
}

/// The image–text examples of a synthetic scene project (see the module
/// docs), and the scenes themselves (for the local-attention measure).
pub fn clip_examples(project: &Project, seed: u64) -> Result<(Vec<ClipExample>, Vec<RgbImage>)> {
    let ds = project.load_dataset()?;
    let regions: Vec<RegionRecord> = super::tiny::read_all(&project.path(files::REGIONS))?;
    let candidates: Vec<CandidateRecord> = super::tiny::read_all(&project.path(files::CANDIDATES))?;
    let precise: HashMap<&str, &CandidateRecord> = candidates
        .iter()
        .filter(|c| c.source.ends_with(":precise"))
        .map(|c| (c.query_id.as_str(), c))
        .collect();
    let mut rng = SplitMix64::new(seed);
    let mut scenes = Vec::with_capacity(ds.images.len());
    let mut out = Vec::new();
    let mut index_of: HashMap<u64, usize> = HashMap::new();
    for (i, image) in ds.images.iter().enumerate() {
        let rgb = imageio::load_rgb(&ds.image_path(i))?;
        index_of.insert(image.id, i);
        let usable: Vec<usize> = ds
            .objects_of(i)
            .filter(|&o| ds.is_usable(o, &project.config.dataset.preprocess()))
            .collect();
        for &o in &usable {
            let b = ds.objects.bbox[o]
                .expand(1.6)
                .clamp_to(rgb.width() as f32, rgb.height() as f32);
            let text = format!("a {}", ds.category_name(o));
            out.push(ClipExample {
                image: pad_square(&imageio::crop_rgb(&rgb, b)),
                negative: one_word_change(&text, &mut rng),
                text,
                region: None,
            });
        }
        let names: Vec<String> = usable
            .iter()
            .map(|&o| ds.category_name(o).to_string())
            .collect();
        let text = format!("a picture of {}", counts_phrase(&names));
        out.push(ClipExample {
            image: pad_square(&rgb),
            negative: one_word_change(&text, &mut rng),
            text,
            region: None,
        });
        scenes.push(rgb);
    }
    for r in &regions {
        let (Some(c), Some(&scene)) = (precise.get(r.id.as_str()), index_of.get(&r.image_id))
        else {
            continue;
        };
        let parsed = grounded::parse(&c.text, c.format, r.crop.width(), r.crop.height());
        let text = parsed.text.plain();
        out.push(ClipExample {
            image: pad_square(&imageio::crop_rgb(&scenes[scene], r.crop)),
            negative: one_word_change(&text, &mut rng),
            text,
            region: Some((scene, r.region)),
        });
    }
    Ok((out, scenes))
}

/// Draws a scene project of `scenes` scenes with `seed` into `dir`.
pub(crate) fn scene_project(dir: &Path, scenes: usize, seed: u64) -> Result<Project> {
    let cfg = super::DemoConfig {
        images: scenes,
        seed,
        rec_scenes: 0,
        clip: None,
        detector: None,
        regions_per_image: 6,
        ..Default::default()
    };
    super::generate(dir, &cfg).context("drawing the scenes")?;
    Ok(Project::open(dir)?)
}

/// Settings of [`make_tiny_clip`].
#[derive(Clone, Debug)]
pub struct TinyClipOptions {
    /// Training scenes.
    pub scenes: usize,
    /// Seed of the training scenes (the demo's is 2025, the tiny LLaVA's 7).
    pub seed: u64,
    /// Held-out scenes for the report.
    pub eval_scenes: usize,
    /// Seed of the held-out scenes.
    pub eval_seed: u64,
    /// The training run.
    pub train: ContrastiveConfig,
    /// Learned vocabulary of the tokenizer.
    pub vocab: usize,
}

impl Default for TinyClipOptions {
    fn default() -> Self {
        Self {
            scenes: 160,
            seed: 11,
            eval_scenes: 30,
            eval_seed: 13,
            train: ContrastiveConfig {
                steps: 1200,
                batch: 64,
                lr: 1e-3,
                warmup: 50,
                weight_decay: 0.0,
                seed: 0,
            },
            vocab: 300,
        }
    }
}

/// What the tiny CLIP reaches on held-out scenes.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize)]
pub struct ClipEvalReport {
    /// Held-out regions.
    pub regions: usize,
    /// Text→region top-1 among them, crop embeddings.
    pub retrieval_top1_crop: f64,
    /// The same with the local-attention embeddings from the whole scene.
    pub retrieval_top1_local: f64,
    /// Share of regions whose crop prefers its own description to the
    /// one-word change.
    pub own_text_over_one_word_change: f64,
}

/// What [`make_tiny_clip`] did.
#[derive(Clone, Debug)]
pub struct TinyClipReport {
    /// Parameters.
    pub params: usize,
    /// Training pairs.
    pub pairs: usize,
    /// Every step.
    pub steps: Vec<ContrastiveStep>,
    /// Held-out figures.
    pub eval: ClipEvalReport,
}

fn tokenizer_for(texts: &[String], vocab: usize) -> Result<(tokenizers::Tokenizer, u32)> {
    use tokenizers::processors::template::TemplateProcessing;
    use tokenizers::AddedToken;
    let mut tok = train_small_tokenizer(texts, vocab)?;
    tok.add_special_tokens([AddedToken::from(END_OF_TEXT, true)])
        .map_err(|e| anyhow::anyhow!("tokenizer: {e}"))?;
    let eos = tok
        .token_to_id(END_OF_TEXT)
        .context("the tokenizer lacks its end-of-text token")?;
    let post = TemplateProcessing::builder()
        .try_single(format!("<s> $A {END_OF_TEXT}"))
        .map_err(|e| anyhow::anyhow!("tokenizer: {e}"))?
        .special_tokens(vec![("<s>".to_string(), 1), (END_OF_TEXT.to_string(), eos)])
        .build()
        .map_err(|e| anyhow::anyhow!("tokenizer: {e}"))?;
    tok.with_post_processor(Some(post));
    Ok((tok, eos))
}

fn encode(tok: &tokenizers::Tokenizer, text: &str, max: usize) -> Result<Vec<u32>> {
    let mut ids = tok
        .encode(text, true)
        .map_err(|e| anyhow::anyhow!("tokenizer: {e}"))?
        .get_ids()
        .to_vec();
    if ids.len() > max {
        let last = ids[ids.len() - 1];
        ids.truncate(max - 1);
        ids.push(last);
    }
    Ok(ids)
}

fn pixels(p: &ImageProcessor, image: &RgbImage, device: &Device) -> Result<Tensor> {
    Ok(p.preprocess(&DynamicImage::ImageRgb8(image.clone()), device)?)
}

/// Makes the tiny CLIP in `out` (see the module docs).
pub fn make_tiny_clip(
    out: &Path,
    opts: &TinyClipOptions,
    progress: impl FnMut(&ContrastiveStep),
) -> Result<TinyClipReport> {
    let work = out.join("scenes");
    let project = scene_project(&work, opts.scenes, opts.seed)?;
    let (examples, _) = clip_examples(&project, opts.seed)?;
    let mut corpus: Vec<String> = Vec::new();
    for e in &examples {
        corpus.push(e.text.clone());
        corpus.extend(e.negative.clone());
    }
    let (tok, eos) = tokenizer_for(&corpus, opts.vocab)?;
    let cfg = tiny_clip_config(tok.get_vocab_size(true), eos)?;
    let device = Device::Cpu;
    let weights = clip_model::random_weights(&cfg, opts.seed, &device)?;
    let vars: Vec<(String, Var)> = weights
        .iter()
        .map(|(n, t)| Ok((n.clone(), Var::from_tensor(t)?)))
        .collect::<Result<_>>()?;
    let map: HashMap<String, Tensor> = vars
        .iter()
        .map(|(n, v)| (n.clone(), v.as_tensor().clone()))
        .collect();
    let model = ClipModel::new(VarBuilder::from_tensors(map, DType::F32, &device), &cfg)?;
    let processor = ImageProcessor::for_vision(&cfg.vision_config);
    let max = cfg.text_config.max_position_embeddings;
    let pairs: Vec<ContrastivePair> = examples
        .iter()
        .map(|e| {
            Ok(ContrastivePair {
                pixels: pixels(&processor, &e.image, &device)?,
                text: encode(&tok, &e.text, max)?,
                negative: e
                    .negative
                    .as_deref()
                    .map(|n| encode(&tok, n, max))
                    .transpose()?,
            })
        })
        .collect::<Result<_>>()?;
    let steps = contrastive::train(&model, vars.clone(), &pairs, &opts.train, progress)?;
    // Save the trained values.
    let trained: HashMap<String, Tensor> = vars
        .iter()
        .map(|(n, v)| (n.clone(), v.as_tensor().detach()))
        .collect();
    let model_dir = out.join("model");
    std::fs::create_dir_all(&model_dir)?;
    clip_model::save_model(&model_dir, &cfg, &trained)?;
    tok.save(model_dir.join("tokenizer.json"), true)
        .map_err(|e| anyhow::anyhow!("writing the tokenizer: {e}"))?;
    let pre = serde_json::json!({
        "do_resize": true, "size": {"shortest_edge": TINY_CLIP_IMAGE},
        "do_center_crop": true, "crop_size": {"height": TINY_CLIP_IMAGE, "width": TINY_CLIP_IMAGE},
        "do_rescale": true, "rescale_factor": 1.0 / 255.0, "do_normalize": true,
        "image_mean": crate::model::processor::CLIP_MEAN, "image_std": crate::model::processor::CLIP_STD,
        "image_processor_type": "CLIPImageProcessor"
    });
    project::write_atomic(
        &model_dir.join("preprocessor_config.json"),
        &serde_json::to_vec_pretty(&pre)?,
    )?;
    let eval = evaluate_tiny_clip(
        &model_dir,
        &out.join("eval-scenes"),
        opts.eval_scenes,
        opts.eval_seed,
    )?;
    Ok(TinyClipReport {
        params: weights.values().map(|t| t.elem_count()).sum(),
        pairs: pairs.len(),
        steps,
        eval,
    })
}

/// Measures a CLIP folder on `scenes` held-out scenes drawn with `seed`
/// into `work` (see [`ClipEvalReport`]).
pub fn evaluate_tiny_clip(
    model_dir: &Path,
    work: &Path,
    scenes: usize,
    seed: u64,
) -> Result<ClipEvalReport> {
    let device = Device::Cpu;
    let model = ClipModel::load(model_dir, &device, DType::F32)?;
    let tok = tokenizers::Tokenizer::from_file(model_dir.join("tokenizer.json"))
        .map_err(|e| anyhow::anyhow!("tokenizer: {e}"))?;
    let processor = ImageProcessor::from_dir(model_dir, &model.config().vision_config)?;
    let project = scene_project(work, scenes, seed)?;
    let (examples, scene_images) = clip_examples(&project, seed)?;
    let regions: Vec<&ClipExample> = examples.iter().filter(|e| e.region.is_some()).collect();
    anyhow::ensure!(regions.len() >= 2, "too few held-out regions");
    let max = model.config().text_config.max_position_embeddings;
    let embed_texts = |texts: Vec<&str>| -> Result<Tensor> {
        let rows: Vec<Vec<u32>> = texts
            .iter()
            .map(|t| encode(&tok, t, max))
            .collect::<Result<_>>()?;
        let t = rows.iter().map(Vec::len).max().unwrap_or(1);
        let mut flat = Vec::new();
        for r in &rows {
            let pad = r.last().copied().unwrap_or(0);
            flat.extend(r.iter().copied());
            flat.extend(std::iter::repeat_n(pad, t - r.len()));
        }
        Ok(model.text_embeds(&Tensor::from_vec(flat, (rows.len(), t), &device)?)?)
    };
    let texts = embed_texts(regions.iter().map(|e| e.text.as_str()).collect())?;
    let negatives = embed_texts(
        regions
            .iter()
            .map(|e| e.negative.as_deref().unwrap_or(&e.text))
            .collect(),
    )?;
    let crops: Vec<Tensor> = regions
        .iter()
        .map(|e| pixels(&processor, &e.image, &device))
        .collect::<Result<_>>()?;
    let crops = model.image_embeds(&Tensor::stack(&crops, 0)?)?;
    let side = model.config().vision_config.image_size as f32;
    let g = model.config().vision_config.patches_per_side();
    let p = model.config().vision_config.patch_size as f32;
    let mut local = Vec::with_capacity(regions.len());
    for e in &regions {
        let Some((scene, region)) = e.region else {
            continue;
        };
        let img = &scene_images[scene];
        let pad = SquarePad::new(img.width() as f32, img.height() as f32, side);
        let r = pad.padded_from_image(region);
        let mask: Vec<bool> = (0..g * g)
            .map(|k| {
                let (cx, cy) = (((k % g) as f32 + 0.5) * p, ((k / g) as f32 + 0.5) * p);
                cx >= r.x1 && cx <= r.x2 && cy >= r.y1 && cy <= r.y2
            })
            .collect();
        let px = pixels(&processor, &pad_square(img), &device)?.unsqueeze(0)?;
        local.push(model.region_embeds(&px, &[mask])?);
    }
    let local = Tensor::cat(&local, 0)?;
    let top1 = |images: &Tensor| -> Result<f64> {
        // Text i's best image.
        let best = texts.matmul(&images.t()?)?.argmax(1)?.to_vec1::<u32>()?;
        Ok(best
            .iter()
            .enumerate()
            .filter(|(i, &j)| *i as u32 == j)
            .count() as f64
            / best.len() as f64)
    };
    let own: Vec<f32> = (&crops * &texts)?.sum(1)?.to_vec1()?;
    let changed: Vec<f32> = (&crops * &negatives)?.sum(1)?.to_vec1()?;
    let wins = own.iter().zip(&changed).filter(|(a, b)| a > b).count();
    Ok(ClipEvalReport {
        regions: regions.len(),
        retrieval_top1_crop: top1(&crops)?,
        retrieval_top1_local: top1(&local)?,
        own_text_over_one_word_change: wins as f64 / regions.len() as f64,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_word_changes_swap_a_colour_or_a_shape() {
        let mut rng = SplitMix64::new(1);
        for _ in 0..20 {
            let t = "a picture of two red circles and a blue square.";
            let c = one_word_change(t, &mut rng).unwrap();
            assert_ne!(c, t);
            let diff = c
                .split(' ')
                .zip(t.split(' '))
                .filter(|(a, b)| a != b)
                .count();
            assert_eq!(diff, 1, "{c}");
            assert!(c.ends_with('.'));
        }
        assert!(one_word_change("nothing here", &mut rng).is_none());
        assert_eq!(
            counts_phrase(&[
                "red circle".into(),
                "red circle".into(),
                "blue square".into()
            ]),
            "two red circles and a blue square"
        );
    }
}
