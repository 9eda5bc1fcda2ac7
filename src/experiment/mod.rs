//! `spr experiment`: SPR's experiment end to end, offline, as one command
//! (DESIGN §9). From a config file (`experiments/tiny.toml`):
//!
//! 1. a synthetic training project (`spr demo` with its own seed, its
//!    templated candidates removed) and `spr regions`; its `rec/` folder is
//!    the held-out REC set (scenes of another seed);
//! 2. `spr generate` with the base model (prompts × samples per query);
//! 3. `spr score` with the project's CLIP and detector, then `spr pairs`
//!    once per λ of the arms (`pairs-lambda<λ>.jsonl`);
//! 4. `spr train` for every arm and seed, the same steps and schedule;
//! 5. `spr eval` of the base model and of every run;
//! 6. the report: a Markdown table, `report.json`, the accuracy curves as
//!    a PNG, the hypotheses checked, what the pairs hold (boxes kept by
//!    refinement, [`pairs`]), and each stage's time.
//!
//! Every stage runs this same `spr` binary as a child process, so what the
//! experiment runs is exactly what a user runs by hand, and a stage's
//! output streams to the terminal. Finished stages leave a marker in the
//! work folder and are skipped when the command is run again (an
//! interrupted experiment resumes where it stopped).

pub mod config;
pub mod pairs;
pub mod plot;
pub mod report;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{bail, Context, Result};

use crate::core::project::{read_jsonl, PairRecord};
use crate::core::rec::{eval_files, RecRunReport};
use config::{pairs_file, slug, ExperimentConfig};
use pairs::PairBoxes;
use report::{verdicts, ArmFigures, ExperimentReport, StageTime};

/// File names of the report folder.
pub mod report_files {
    /// The Markdown report.
    pub const MARKDOWN: &str = "README.md";
    /// The figures as JSON.
    pub const JSON: &str = "report.json";
    /// The accuracy curves.
    pub const PLOT: &str = "rec_accuracy.png";
    /// A copy of the config that produced it.
    pub const CONFIG: &str = "config.toml";
}

/// Where an experiment works and reports.
#[derive(Clone, Debug)]
pub struct ExperimentPaths {
    /// The config file.
    pub config: PathBuf,
    /// Project, runs and evaluations (large; not for git).
    pub work: PathBuf,
    /// The report (small; meant to be committed).
    pub report: PathBuf,
    /// The `spr` binary the stages run.
    pub spr: PathBuf,
}

struct Runner<'a> {
    paths: &'a ExperimentPaths,
    stages: Vec<StageTime>,
}

impl Runner<'_> {
    fn marker(&self, stage: &str) -> PathBuf {
        self.paths.work.join("done").join(slug(stage))
    }

    /// Runs `args` as a stage unless an earlier invocation finished it.
    fn stage(&mut self, name: &str, args: &[String]) -> Result<()> {
        self.stage_with(name, |r| r.spr(args))
    }

    fn stage_with(&mut self, name: &str, f: impl FnOnce(&Self) -> Result<()>) -> Result<()> {
        let marker = self.marker(name);
        if marker.is_file() {
            let seconds = std::fs::read_to_string(&marker)
                .ok()
                .and_then(|s| s.trim().parse().ok())
                .unwrap_or(0.0);
            println!("experiment: {name}: done earlier ({seconds:.0} s)");
            self.stages.push(StageTime {
                stage: name.into(),
                seconds,
                skipped: true,
            });
            return Ok(());
        }
        println!("experiment: {name} …");
        let t = Instant::now();
        f(self).with_context(|| format!("experiment stage `{name}`"))?;
        let seconds = t.elapsed().as_secs_f64();
        crate::core::atomic::write_atomic(&marker, format!("{seconds:.3}\n").as_bytes())?;
        println!("experiment: {name}: {seconds:.0} s");
        self.stages.push(StageTime {
            stage: name.into(),
            seconds,
            skipped: false,
        });
        Ok(())
    }

    fn spr(&self, args: &[String]) -> Result<()> {
        let mut command = Command::new(&self.paths.spr);
        command.args(args);
        if crate::model::threads_env_is_ours() {
            // Each stage picks its own threads per operation.
            command.env_remove("RAYON_NUM_THREADS");
        }
        let status = command
            .status()
            .with_context(|| format!("starting {}", self.paths.spr.display()))?;
        if !status.success() {
            bail!("`spr {}` failed ({status})", args.join(" "));
        }
        Ok(())
    }
}

fn s(x: impl ToString) -> String {
    x.to_string()
}

fn path(p: &Path) -> String {
    p.display().to_string()
}

/// Runs (or resumes) the experiment and writes its report; returns it.
pub fn run(paths: &ExperimentPaths) -> Result<ExperimentReport> {
    let cfg = ExperimentConfig::load(&paths.config)?;
    if !cfg.base_model.join("config.json").is_file() {
        bail!(
            "base_model {}: no config.json there (a llava-hf model folder is needed; scripts/make_tiny_loc_model.sh builds the tiny one)",
            cfg.base_model.display()
        );
    }
    std::fs::create_dir_all(paths.work.join("done"))
        .with_context(|| format!("creating {}", paths.work.display()))?;
    let mut r = Runner {
        paths,
        stages: Vec::new(),
    };
    let project = paths.work.join("project");
    let base = path(&cfg.base_model);

    // 1. Training scenes and their region queries; the REC set beside.
    r.stage_with("data: scenes and regions", |r| {
        if project.exists() {
            std::fs::remove_dir_all(&project)
                .with_context(|| format!("clearing {}", project.display()))?;
        }
        r.spr(&[
            s("demo"),
            s("--out"),
            path(&project),
            s("--images"),
            s(cfg.data.scenes),
            s("--seed"),
            s(cfg.data.seed),
            s("--rec-scenes"),
            s(cfg.data.rec_scenes),
        ])?;
        // The demo's templated candidates are not what a model writes.
        use crate::core::project::files;
        for f in [files::CANDIDATES, files::SCORES, files::PAIRS] {
            let p = project.join(f);
            if p.exists() {
                std::fs::remove_file(&p).with_context(|| format!("removing {}", p.display()))?;
            }
        }
        r.spr(&[s("regions"), s("--project"), path(&project)])
    })?;
    // 2. Candidates by the base model.
    let g = &cfg.generate;
    r.stage(
        "generate: candidates by the base model",
        &[
            s("generate"),
            s("--project"),
            path(&project),
            s("--model"),
            base.clone(),
            s("--prompts"),
            g.prompts.join(","),
            s("--samples"),
            s(g.samples),
            s("--temperature"),
            s(g.temperature),
            s("--top-p"),
            s(g.top_p),
            s("--max-new-tokens"),
            s(g.max_new_tokens),
        ],
    )?;
    // 3. Scores and pairs per λ.
    r.stage(
        "score: CLIP + detector + localization",
        &[s("score"), s("--project"), path(&project)],
    )?;
    for l in cfg.lambdas() {
        r.stage(
            &format!("pairs at λ = {l}"),
            &[
                s("pairs"),
                s("--project"),
                path(&project),
                s("--lambda"),
                s(l),
                s("--out"),
                path(&project.join(pairs_file(l))),
            ],
        )?;
    }
    // 4. Training: every arm, every seed.
    let t = &cfg.train;
    let mut runs: Vec<(usize, u64, PathBuf)> = Vec::new();
    for (i, arm) in cfg.arms.iter().enumerate() {
        for &seed in &t.seeds {
            let run = paths
                .work
                .join("runs")
                .join(format!("{}-s{seed}", slug(&arm.name)));
            let mut args = vec![
                s("train"),
                s("--model"),
                base.clone(),
                s("--data"),
                path(&project.join(pairs_file(arm.lambda))),
                s("--run"),
                path(&run),
                s("--objective"),
                arm.objective.clone(),
                s("--steps"),
                s(t.steps),
                s("--lr"),
                s(t.lr),
                s("--warmup"),
                s(t.warmup),
                s("--beta"),
                s(t.beta),
                s("--lora-r"),
                s(t.lora_r),
                s("--lora-alpha"),
                s(t.lora_alpha),
                s("--batch"),
                s(t.batch),
                s("--max-len"),
                s(t.max_len),
                s("--seed"),
                s(seed),
            ];
            if let Some(seg) = &arm.segmenter {
                args.extend([s("--segmenter"), seg.clone()]);
            }
            for prefix in &t.freeze {
                args.extend([s("--freeze"), prefix.clone()]);
            }
            let name = format!("train: {} (seed {seed})", arm.name);
            r.stage_with(&name, |r| {
                if run.exists() {
                    // A run cut short by an earlier invocation starts over.
                    std::fs::remove_dir_all(&run)
                        .with_context(|| format!("clearing {}", run.display()))?;
                }
                r.spr(&args)
            })?;
            runs.push((i, seed, run));
        }
    }
    // 5. Evaluation of the base model and every run.
    use crate::demo::rec::rec_files;
    let rec = project.join(rec_files::DIR).join(rec_files::ANNOTATIONS);
    let eval = |r: &mut Runner, name: &str, adapter: Option<&Path>, out: &Path| {
        let mut args = vec![
            s("eval"),
            s("--model"),
            base.clone(),
            s("--data"),
            path(&rec),
            s("--profile"),
            cfg.profile.clone(),
            s("--out"),
            path(out),
        ];
        if let Some(a) = adapter {
            args.extend([s("--adapter"), path(a)]);
        }
        r.stage(name, &args)
    };
    let base_eval = paths.work.join("eval").join("base");
    eval(&mut r, "eval: base model", None, &base_eval)?;
    let mut evals = Vec::new();
    for (i, seed, run) in &runs {
        let out = paths
            .work
            .join("eval")
            .join(run.file_name().map(PathBuf::from).unwrap_or_default());
        let name = format!("eval: {} (seed {seed})", cfg.arms[*i].name);
        eval(&mut r, &name, Some(run), &out)?;
        evals.push((*i, *seed, out));
    }
    // 6. The report.
    let read = |dir: &Path| -> Result<RecRunReport> {
        let p = dir.join(eval_files::REPORT);
        let bytes = std::fs::read(&p).with_context(|| format!("reading {}", p.display()))?;
        serde_json::from_slice(&bytes).with_context(|| format!("parsing {}", p.display()))
    };
    let base_report = read(&base_eval)?;
    let base_name = cfg
        .base_model
        .file_name()
        .map(|n| format!("base ({})", n.to_string_lossy()))
        .unwrap_or_else(|| format!("base ({base})"));
    let base_fig =
        ArmFigures::from_reports(&base_name, "base", 0.0, &[(0, base_report.report.clone())]);
    let mut arms = Vec::new();
    for (i, arm) in cfg.arms.iter().enumerate() {
        let mut reports = Vec::new();
        for (j, seed, dir) in &evals {
            if *j == i {
                reports.push((*seed, read(dir)?.report));
            }
        }
        arms.push(ArmFigures::from_reports(
            &arm.name,
            &arm.objective,
            arm.lambda,
            &reports,
        ));
    }
    let mut pair_boxes = Vec::new();
    for l in cfg.lambdas() {
        let file = project.join(pairs_file(l));
        let (records, _) = read_jsonl::<PairRecord>(&file)
            .with_context(|| format!("reading {}", file.display()))?;
        pair_boxes.push(PairBoxes::of(l, &records));
    }
    let report = ExperimentReport {
        name: cfg.name.clone(),
        base_model: base.clone(),
        samples: base_report.report.samples,
        verdicts: verdicts(&base_fig, &arms, base_report.report.samples),
        pairs: pair_boxes,
        base: base_fig,
        arms,
        stages: r.stages,
    };
    write_report(paths, &report)?;
    Ok(report)
}

/// Writes the report folder: Markdown, JSON, plot and the config.
pub fn write_report(paths: &ExperimentPaths, report: &ExperimentReport) -> Result<()> {
    let dir = &paths.report;
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    plot::accuracy_curves(
        &dir.join(report_files::PLOT),
        &format!("REC accuracy by IoU threshold — experiment {}", report.name),
        &report.base,
        &report.arms,
    )?;
    let command = format!(
        "spr experiment --config {} --work {} --report {}",
        paths.config.display(),
        paths.work.display(),
        dir.display()
    );
    let write =
        |name: &str, bytes: &[u8]| crate::core::atomic::write_atomic(&dir.join(name), bytes);
    write(
        report_files::MARKDOWN,
        report.markdown(report_files::PLOT, &command).as_bytes(),
    )?;
    write(report_files::JSON, &serde_json::to_vec_pretty(report)?)?;
    let config = std::fs::read(&paths.config)
        .with_context(|| format!("reading {}", paths.config.display()))?;
    write(report_files::CONFIG, &config)?;
    Ok(())
}
