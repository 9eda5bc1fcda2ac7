//! `spr tiny …`: making and checking the tiny demo models (the tiny LLaVA
//! of `assets/tiny-model`, the demo's tiny CLIP) from synthetic scenes.
//! `scripts/make_tiny_model.sh` and `scripts/make_tiny_clip.sh` run them in
//! order.

use std::path::PathBuf;

use anyhow::Result;
use clap::Subcommand;

use super::bar;

/// Steps of making and checking the tiny demo model
/// (`scripts/make_tiny_model.sh` runs them in order).
#[derive(Debug, Subcommand)]
pub enum TinyCommand {
    /// Synthetic scenes → region crops + prompt–completion JSONL (grounded
    /// descriptions and REC answers) + the tokenizer corpus.
    Data {
        /// Output folder.
        #[arg(long)]
        out: PathBuf,
        /// Scenes drawn.
        #[arg(long, default_value_t = 300)]
        scenes: usize,
        /// Seed of the scenes (the demo project's is 2025).
        #[arg(long, default_value_t = 7)]
        seed: u64,
        /// Also REC rows on whole scenes (as the demo's REC set asks), not
        /// only on region crops.
        #[arg(long)]
        whole_scenes: bool,
        /// Fewest and most objects per scene, `MIN-MAX` (the demo's:
        /// 8-16).
        #[arg(long, default_value = "8-16", value_parser = parse_count_range)]
        objects: [usize; 2],
        /// Also a REC evaluation set of this many scenes drawn the same
        /// way (its own seed) → OUT/scenes/rec/.
        #[arg(long, default_value_t = 0)]
        rec_scenes: usize,
    },
    /// Tokenizer trained on a corpus + tiny config + random weights → a
    /// llava-hf model folder.
    Init {
        /// Corpus, one text per line (`corpus.txt` from `spr tiny data`).
        #[arg(long)]
        corpus: PathBuf,
        /// Output model folder.
        #[arg(long)]
        out: PathBuf,
        /// Seed of the weights.
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// Take the vision tower (configuration and trained weights) from
        /// this CLIPModel or Owlv2ForObjectDetection folder instead of a
        /// random 112-px one.
        #[arg(long)]
        vision_from: Option<PathBuf>,
        /// Start the projector as an objectness-gated read-out of object
        /// edges fitted on this scene project's boxes (`DATA/scenes` from `spr
        /// tiny data`): what lets a tiny model trained from scratch learn
        /// to point (see `demo::tiny_gate`).
        #[arg(long)]
        gate_from: Option<PathBuf>,
        /// Scenes the gate is fitted on at most.
        #[arg(long, default_value_t = 400)]
        gate_scenes: usize,
    },
    /// Pretrain a tiny model folder's vision tower in place so each image
    /// token tells the category and box of the object covering its patch
    /// (see `train::patches`); run it before the projector gate.
    Tower {
        /// The model folder (from `spr tiny init`); its tower is rewritten.
        #[arg(long)]
        model: PathBuf,
        /// Scene project with boxes (`DATA/scenes` from `spr tiny data`).
        #[arg(long)]
        scenes: PathBuf,
        /// Scenes read at most (the last `--eval-scenes` of them held out).
        #[arg(long, default_value_t = 2000)]
        max_scenes: usize,
        /// Held-out scenes for the report.
        #[arg(long, default_value_t = 100)]
        eval_scenes: usize,
        /// Optimizer steps.
        #[arg(long, default_value_t = 1000)]
        steps: u64,
        /// Images per step.
        #[arg(long, default_value_t = 32)]
        batch: usize,
        /// Peak learning rate.
        #[arg(long, default_value_t = 5e-4)]
        lr: f64,
        /// Seed of the head and the data order.
        #[arg(long, default_value_t = 0)]
        seed: u64,
    },
    /// Rewrite a model folder's projector as an objectness-gated read-out
    /// of object edges fitted on a scene project's boxes (what `tiny init
    /// --gate-from` does; here after `tiny tower` has trained the tower).
    Gate {
        /// The model folder; its projector's first units are rewritten.
        #[arg(long)]
        model: PathBuf,
        /// Scene project with boxes (`DATA/scenes` from `spr tiny data`).
        #[arg(long)]
        scenes: PathBuf,
        /// Scenes the gate is fitted on at most.
        #[arg(long, default_value_t = 400)]
        max_scenes: usize,
        /// One group of gate units per category (its box in its own
        /// channels) instead of one objectness gate.
        #[arg(long)]
        by_category: bool,
    },
    /// Write the files transformers' AutoProcessor needs (tokenizer and
    /// processor configs, chat template) into a tiny model folder.
    HfFiles {
        /// The model folder (with tokenizer.json and preprocessor_config.json).
        #[arg(long)]
        model: PathBuf,
    },
    /// Train the tiny CLIP of the semantic score from scratch on synthetic
    /// scenes and measure it on held-out ones → DIR/model.
    Clip {
        /// Output folder (the model goes to DIR/model).
        #[arg(long)]
        out: PathBuf,
        /// Training scenes.
        #[arg(long, default_value_t = 160)]
        scenes: usize,
        /// Seed of the training scenes (the demo's is 2025).
        #[arg(long, default_value_t = 11)]
        seed: u64,
        /// Optimizer steps.
        #[arg(long, default_value_t = 1200)]
        steps: u64,
        /// Pairs per step.
        #[arg(long, default_value_t = 64)]
        batch: usize,
        /// Peak learning rate.
        #[arg(long, default_value_t = 1e-3)]
        lr: f64,
        /// Held-out scenes for the report.
        #[arg(long, default_value_t = 30)]
        eval_scenes: usize,
    },
    /// Train the tiny OWLv2 detector of the localization score on
    /// synthetic scenes, starting from a CLIP, and measure it on held-out
    /// ones → DIR/model.
    Owl {
        /// Output folder (the model goes to DIR/model).
        #[arg(long)]
        out: PathBuf,
        /// The CLIP folder whose towers become the detector's backbone.
        #[arg(long, default_value = "assets/demo/models/clip")]
        clip: PathBuf,
        /// Training scenes.
        #[arg(long, default_value_t = 240)]
        scenes: usize,
        /// Seed of the training scenes (the demo's is 2025).
        #[arg(long, default_value_t = 17)]
        seed: u64,
        /// Optimizer steps.
        #[arg(long, default_value_t = 1500)]
        steps: u64,
        /// Images per step.
        #[arg(long, default_value_t = 16)]
        batch: usize,
        /// Peak learning rate.
        #[arg(long, default_value_t = 3e-4)]
        lr: f64,
        /// Held-out scenes for the report.
        #[arg(long, default_value_t = 30)]
        eval_scenes: usize,
        /// The detector's input side in pixels (a multiple of the CLIP's
        /// patch size).
        #[arg(long, default_value_t = 168)]
        image_size: usize,
    },
    /// Measure an OWLv2 folder on held-out synthetic scenes: AP at IoU 0.5
    /// and 0.75, precision and recall at a threshold.
    OwlEval {
        /// The OWLv2 model folder.
        #[arg(long)]
        model: PathBuf,
        /// Held-out scenes.
        #[arg(long, default_value_t = 30)]
        scenes: usize,
        /// Their seed.
        #[arg(long, default_value_t = 19)]
        seed: u64,
        /// Threshold of the precision / recall figures.
        #[arg(long, default_value_t = 0.3)]
        threshold: f32,
    },
    /// Measure a CLIP folder on held-out synthetic scenes: text→region
    /// retrieval top-1 and own text vs a one-word change.
    ClipEval {
        /// The CLIP model folder.
        #[arg(long)]
        model: PathBuf,
        /// Held-out scenes.
        #[arg(long, default_value_t = 30)]
        scenes: usize,
        /// Their seed.
        #[arg(long, default_value_t = 13)]
        seed: u64,
    },
    /// Describe a project's regions with a model; print the parse rate and
    /// SPR's localization score.
    Eval {
        /// Model folder (llava-hf layout).
        #[arg(long)]
        model: String,
        /// Project whose regions are described.
        #[arg(long, default_value = "assets/demo")]
        project: PathBuf,
        /// Regions described at most.
        #[arg(long, default_value_t = 20)]
        limit: usize,
        /// Most tokens per answer.
        #[arg(long, default_value_t = 160)]
        max_new_tokens: usize,
        /// Write the generations here as JSONL.
        #[arg(long)]
        out: Option<PathBuf>,
    },
}

fn print_gate(g: &crate::demo::tiny_gate::GateReport) {
    println!(
        "projector gate: {} units from {} scenes ({} patches, {} on objects): \
         objectness {:.2} on objects vs {:.2} on background (threshold {:.2}), \
         edge read-out error (left, top, right, bottom) {:.3?}",
        g.units,
        g.images,
        g.tokens,
        g.object_tokens,
        g.objectness.0,
        g.objectness.1,
        g.threshold,
        g.edge_error
    );
}

fn print_clip_eval(r: &crate::demo::tiny_clip::ClipEvalReport) {
    println!(
        "held-out: {} regions; text→region top-1 {:.3} (crops), {:.3} (local attention on the whole scene); own text beats a one-word change {:.3}",
        r.regions, r.retrieval_top1_crop, r.retrieval_top1_local, r.own_text_over_one_word_change
    );
}

fn print_owl_eval(r: &crate::demo::tiny_owl::OwlEvalReport) {
    println!(
        "held-out: {} region crops, {} objects; AP@0.5 {:.3}, AP@0.75 {:.3} (12 categories); at threshold {}: precision {:.3}, recall {:.3}",
        r.crops, r.ap50.objects, r.ap50.mean, r.ap75.mean, r.threshold, r.precision, r.recall
    );
}

/// `MIN-MAX` (or one number) → `[MIN, MAX]`, MIN ≤ MAX, MAX ≥ 1.
fn parse_count_range(s: &str) -> std::result::Result<[usize; 2], String> {
    let num = |t: &str| {
        t.trim()
            .parse::<usize>()
            .map_err(|_| format!("`{s}` is not MIN-MAX (two whole numbers, e.g. 1-3)"))
    };
    let (lo, hi) = match s.split_once('-') {
        Some((a, b)) => (num(a)?, num(b)?),
        None => (num(s)?, num(s)?),
    };
    if lo > hi || hi == 0 {
        return Err(format!("`{s}`: need 0 ≤ MIN ≤ MAX and MAX ≥ 1"));
    }
    Ok([lo, hi])
}

/// `spr tiny ...`.
pub fn run(cmd: TinyCommand) -> Result<()> {
    use crate::demo::tiny;
    match cmd {
        TinyCommand::Data {
            out,
            scenes,
            seed,
            whole_scenes,
            objects,
            rec_scenes,
        } => {
            let cfg = tiny::SftDataConfig {
                scenes,
                seed,
                whole_scenes,
                objects,
                rec_scenes,
            };
            let s = tiny::write_sft_data(&out, &cfg)?;
            println!(
                "tiny data: {} description rows + {} REC rows ({} on whole scenes) → {}",
                s.descriptions,
                s.rec,
                s.scene_rec,
                s.file.display()
            );
        }
        TinyCommand::Init {
            corpus,
            out,
            seed,
            vision_from,
            gate_from,
            gate_scenes,
        } => {
            let n = tiny::init_model(&out, &corpus, seed, vision_from.as_deref())?;
            let tower = match &vision_from {
                Some(dir) => format!("vision tower from {}, the rest random", dir.display()),
                None => "random".into(),
            };
            println!(
                "tiny init: {:.2}M parameters ({tower}) → {}",
                n as f64 / 1e6,
                out.display()
            );
            if let Some(scenes) = gate_from {
                print_gate(&crate::demo::tiny_gate::gate_projector(
                    &out,
                    &scenes,
                    gate_scenes,
                    false,
                )?);
            }
        }
        TinyCommand::Gate {
            model,
            scenes,
            max_scenes,
            by_category,
        } => print_gate(&crate::demo::tiny_gate::gate_projector(
            &model,
            &scenes,
            max_scenes,
            by_category,
        )?),
        TinyCommand::Tower {
            model,
            scenes,
            max_scenes,
            eval_scenes,
            steps,
            batch,
            lr,
            seed,
        } => {
            let cfg = crate::train::patches::PatchConfig {
                steps,
                batch,
                lr,
                warmup: (steps / 20).max(1),
                seed,
                ..Default::default()
            };
            let pb = bar(steps, "tower");
            let started = std::time::Instant::now();
            let r = crate::demo::tiny_tower::pretrain_tower(
                &model,
                &scenes,
                max_scenes,
                eval_scenes,
                &cfg,
                |s| {
                    let line = format!(
                        "loss {:.3} (class {:.3}, edges {:.3})",
                        s.loss, s.class, s.edges
                    );
                    if pb.is_hidden() && s.step % 100 == 0 {
                        eprintln!("step {}/{steps}: {line} ({:.2} s/step)", s.step, s.seconds);
                    }
                    pb.set_position(s.step);
                    pb.set_message(line);
                },
            )?;
            pb.finish_and_clear();
            println!(
                "tiny tower: {} scenes, {} steps in {:.0} s, last loss {:.3}; held out ({} scenes, \
                 {} patches, {} on objects): object category {:.1} %, background {:.1} %, \
                 edge error {:.3} → {}",
                r.scenes.0,
                steps,
                started.elapsed().as_secs_f64(),
                r.last.map_or(f64::NAN, |s| s.loss),
                r.scenes.1,
                r.eval.patches.0,
                r.eval.patches.1,
                100.0 * r.eval.object_accuracy,
                100.0 * r.eval.background_accuracy,
                r.eval.edge_error,
                model.display()
            );
        }
        TinyCommand::Clip {
            out,
            scenes,
            seed,
            steps,
            batch,
            lr,
            eval_scenes,
        } => {
            use crate::demo::tiny_clip;
            let mut opts = tiny_clip::TinyClipOptions {
                scenes,
                seed,
                eval_scenes,
                ..Default::default()
            };
            opts.train.steps = steps;
            opts.train.batch = batch;
            opts.train.lr = lr;
            opts.train.warmup = opts.train.warmup.min(steps / 4);
            let pb = bar(steps, "clip");
            let started = std::time::Instant::now();
            let r = tiny_clip::make_tiny_clip(&out, &opts, |s| {
                pb.set_position(s.step);
                pb.set_message(format!("loss {:.3} acc {:.2}", s.loss, s.accuracy));
            })?;
            pb.finish_and_clear();
            let last = r.steps.len().saturating_sub(20);
            let mean = |f: fn(&crate::train::contrastive::ContrastiveStep) -> f64| {
                let tail = &r.steps[last..];
                tail.iter().map(f).sum::<f64>() / tail.len().max(1) as f64
            };
            println!(
                "tiny clip: {:.2}M parameters, {} pairs, {} steps in {:.0} s; loss {:.3} → {:.3} (mean of the last 20), batch accuracy {:.2}",
                r.params as f64 / 1e6,
                r.pairs,
                r.steps.len(),
                started.elapsed().as_secs_f64(),
                r.steps.first().map_or(f64::NAN, |s| s.loss),
                mean(|s| s.loss),
                mean(|s| s.accuracy)
            );
            print_clip_eval(&r.eval);
            println!("→ {}", out.join("model").display());
        }
        TinyCommand::ClipEval {
            model,
            scenes,
            seed,
        } => {
            let work = std::env::temp_dir().join(format!("spr-clip-eval-{}", std::process::id()));
            let r = crate::demo::tiny_clip::evaluate_tiny_clip(&model, &work, scenes, seed);
            let _ = std::fs::remove_dir_all(&work);
            print_clip_eval(&r?);
        }
        TinyCommand::Owl {
            out,
            clip,
            scenes,
            seed,
            steps,
            batch,
            lr,
            eval_scenes,
            image_size,
        } => {
            use crate::demo::tiny_owl;
            let mut opts = tiny_owl::TinyOwlOptions {
                scenes,
                seed,
                eval_scenes,
                image_size,
                ..Default::default()
            };
            opts.train.steps = steps;
            opts.train.batch = batch;
            opts.train.lr = lr;
            opts.train.warmup = opts.train.warmup.min(steps / 4);
            let pb = bar(steps, "owl");
            let started = std::time::Instant::now();
            let r = tiny_owl::make_tiny_owl(&out, &clip, &opts, |s| {
                let line = format!(
                    "loss {:.3} (class {:.3}, l1 {:.3}, giou {:.3}, objectness {:.3})",
                    s.loss, s.class, s.l1, s.giou, s.objectness
                );
                // Without a terminal the bar is hidden: a line per 100 steps.
                if pb.is_hidden() && s.step % 100 == 0 {
                    eprintln!("step {}/{steps}: {line} ({:.2} s/step)", s.step, s.seconds);
                }
                pb.set_position(s.step);
                pb.set_message(line);
            })?;
            pb.finish_and_clear();
            let last = r.steps.len().saturating_sub(50);
            let tail = &r.steps[last..];
            let mean = |f: fn(&crate::train::detection::DetectionStep) -> f64| {
                tail.iter().map(f).sum::<f64>() / tail.len().max(1) as f64
            };
            println!(
                "tiny owl: {:.2}M parameters, {} images ({} objects), {} steps in {:.0} s; loss {:.3} → {:.3} (mean of the last 50: class {:.3}, L1 {:.3}, 1−GIoU {:.3})",
                r.params as f64 / 1e6,
                r.images,
                r.objects,
                r.steps.len(),
                started.elapsed().as_secs_f64(),
                r.steps.first().map_or(f64::NAN, |s| s.loss),
                mean(|s| s.loss),
                mean(|s| s.class),
                mean(|s| s.l1),
                mean(|s| s.giou),
            );
            print_owl_eval(&r.eval);
            println!("→ {}", out.join("model").display());
        }
        TinyCommand::OwlEval {
            model,
            scenes,
            seed,
            threshold,
        } => {
            let work = std::env::temp_dir().join(format!("spr-owl-eval-{}", std::process::id()));
            let r =
                crate::demo::tiny_owl::evaluate_tiny_owl(&model, &work, scenes, seed, threshold);
            let _ = std::fs::remove_dir_all(&work);
            print_owl_eval(&r?);
        }
        TinyCommand::HfFiles { model } => {
            tiny::write_transformers_files(&model)?;
            println!(
                "tiny hf-files: tokenizer_config.json, processor_config.json, chat_template.jinja → {}",
                model.display()
            );
        }
        TinyCommand::Eval {
            model,
            project,
            limit,
            max_new_tokens,
            out,
        } => {
            let pb = bar(0, "describe");
            let r = tiny::evaluate(&model, &project, limit, max_new_tokens, &|i, n| {
                pb.set_length(n as u64);
                pb.set_position(i as u64);
            })?;
            pb.finish_and_clear();
            for g in r.generations.iter().take(3) {
                println!("{}: {}", g.query_id, g.text);
            }
            println!(
                "tiny eval: {} regions, parse rate {:.2}, mean localization {:.3}, {:.1} tokens/s",
                r.generations.len(),
                r.parse_rate(),
                r.mean_localization(),
                r.tokens as f64 / r.seconds.max(1e-9)
            );
            if let Some(out) = out {
                let mut text = String::new();
                for g in &r.generations {
                    text.push_str(&serde_json::to_string(g)?);
                    text.push('\n');
                }
                crate::core::project::write_atomic(&out, text.as_bytes())?;
            }
        }
    }
    Ok(())
}
