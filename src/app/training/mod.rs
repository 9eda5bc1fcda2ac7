//! The training view: the project's runs (`runs/`) with their status, a
//! launch form that starts `spr train` as a child process, live plots that
//! follow each run's `events.jsonl`, Stop (SIGTERM → checkpoint) and
//! Resume, the runs' configs side by side, and the output of a run.
//!
//! Everything here reads the run-folder contract (`core::runs`), never the
//! trainer: a run started from a terminal or on another machine's shared
//! disk shows the same way as one started here. Runs are polled at most
//! four times a second, and each poll reads only the bytes appended since
//! the last one ([`EventTail`]), so the window never waits on a run.

mod form;
pub mod plots;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use egui::RichText;
use egui_extras::{Column, TableBuilder};

pub use form::LaunchForm;
use plots::XAxis;

use crate::app::canvas::colors;
use crate::app::jobs::{self, Job};
use crate::core::runs::tail::EventTail;
use crate::core::runs::{self, files, Event, RunDir, RunOverview, RunStatus, TrainConfig};

/// One run as the view knows it.
#[derive(Debug)]
pub struct RunEntry {
    /// Its folder.
    pub dir: RunDir,
    /// Its events so far.
    pub tail: EventTail,
    /// Status, config (once readable) and last figures.
    pub overview: RunOverview,
    /// The process, when this window started it.
    pub job: Option<Job>,
}

impl RunEntry {
    fn new(dir: RunDir) -> RunEntry {
        RunEntry {
            tail: EventTail::new(&dir),
            overview: RunOverview::from_events(&dir, None, &[], None),
            dir,
            job: None,
        }
    }

    /// Reads what changed on disk and the process's state.
    fn refresh(&mut self) {
        let _ = self.tail.poll();
        // The config is written once: read until it is there.
        let config = self
            .overview
            .config
            .take()
            .or_else(|| self.dir.read_config().ok());
        self.overview =
            RunOverview::from_events(&self.dir, config, &self.tail.events, self.dir.lock_holder());
        // A process of ours that has not taken the lock yet is starting.
        if let Some(j) = &mut self.job {
            if j.poll().is_none() && !matches!(self.overview.status, RunStatus::Running { .. }) {
                self.overview.status = RunStatus::Running { pid: Some(j.pid()) };
            }
        }
    }

    /// The child's exit, in words, when it failed.
    pub fn failure(&mut self) -> Option<String> {
        let j = self.job.as_mut()?;
        let status = j.poll()?;
        (!status.success()).then(|| jobs::describe_exit(status))
    }
}

/// The training view's state.
#[derive(Debug)]
pub struct TrainingView {
    root: Option<PathBuf>,
    /// The runs, by folder name.
    pub runs: Vec<RunEntry>,
    /// Runs shown in the plots and the config comparison.
    pub selected: BTreeSet<String>,
    /// The run whose output is shown.
    pub focus: Option<String>,
    /// The launch form.
    pub form: Option<LaunchForm>,
    /// Smoothing weight of the plots (0 = raw).
    pub smoothing: f64,
    /// x by step or wall time.
    pub x_axis: XAxis,
    /// Config comparison shows differing keys only.
    pub diff_only: bool,
    /// The last message of this view.
    pub message: String,
    last_poll: Option<Instant>,
    series: plots::SeriesCache,
}

impl Default for TrainingView {
    fn default() -> Self {
        Self {
            root: None,
            runs: Vec::new(),
            selected: BTreeSet::new(),
            focus: None,
            form: None,
            smoothing: 0.6,
            x_axis: XAxis::Step,
            diff_only: true,
            message: String::new(),
            last_poll: None,
            series: plots::SeriesCache::default(),
        }
    }
}

impl TrainingView {
    /// Follow the runs of the project in `root` (its `runs/` folder).
    pub fn set_project(&mut self, root: &Path) {
        if self.root.as_deref() == Some(root) {
            return;
        }
        // Processes started here keep running; their folders say how they end.
        *self = TrainingView {
            root: Some(root.to_path_buf()),
            form: Some(LaunchForm::for_project(root)),
            ..TrainingView::default()
        };
        self.poll(true);
    }

    fn runs_dir(&self) -> Option<PathBuf> {
        self.root.as_ref().map(|r| r.join("runs"))
    }

    /// Whether a run started here is still running.
    pub fn busy(&self) -> bool {
        self.runs
            .iter()
            .any(|r| r.job.is_some() && matches!(r.overview.status, RunStatus::Running { .. }))
    }

    /// The run named `name`.
    pub fn run(&self, name: &str) -> Option<&RunEntry> {
        self.runs.iter().find(|r| r.dir.name() == name)
    }

    /// Rescans `runs/` and reads new events (at most every 250 ms unless
    /// `now`).
    pub fn poll(&mut self, now: bool) {
        if !now
            && self
                .last_poll
                .is_some_and(|t| t.elapsed() < Duration::from_millis(250))
        {
            return;
        }
        self.last_poll = Some(Instant::now());
        let Some(dir) = self.runs_dir() else { return };
        for found in runs::list_runs(&dir) {
            if !self.runs.iter().any(|r| r.dir == found) {
                self.runs.push(RunEntry::new(found));
            }
        }
        self.runs.sort_by_key(|r| r.dir.name());
        for r in &mut self.runs {
            r.refresh();
        }
    }

    /// Starts the run the form describes.
    pub fn launch(&mut self) {
        let (Some(root), Some(form)) = (self.root.clone(), self.form.clone()) else {
            return;
        };
        if let Some(p) = form.problem(&root) {
            self.message = p;
            return;
        }
        let dir = RunDir::new(root.join(form.run_dir()));
        let job = Job::spawn(
            format!("train {}", form.name),
            &form.args(),
            &root,
            dir.file(files::STDOUT),
            dir.file(files::STDERR),
        );
        match job {
            Ok(job) => {
                let name = dir.name();
                let mut entry = RunEntry::new(dir);
                entry.job = Some(job);
                entry.refresh();
                self.runs.push(entry);
                self.runs.sort_by_key(|r| r.dir.name());
                self.message = format!("started {name}");
                self.selected.insert(name.clone());
                self.focus = Some(name);
            }
            Err(e) => self.message = format!("cannot start spr train: {e}"),
        }
    }

    /// Sends SIGTERM to the run's trainer.
    pub fn stop(&mut self, name: &str) {
        let Some(r) = self.runs.iter_mut().find(|r| r.dir.name() == name) else {
            return;
        };
        if let Some(j) = &mut r.job {
            j.terminate();
        } else if let RunStatus::Running { pid: Some(pid) } = r.overview.status {
            // Started elsewhere (a terminal): the same signal by pid.
            #[cfg(unix)]
            jobs::sigterm(pid);
        }
        self.message = format!("stopping {name}: the trainer saves a checkpoint first");
    }

    /// Continues a stopped or crashed run from its latest checkpoint.
    pub fn resume(&mut self, name: &str) {
        let Some(root) = self.root.clone() else {
            return;
        };
        let Some(r) = self.runs.iter_mut().find(|r| r.dir.name() == name) else {
            return;
        };
        let args = vec![
            "train".to_string(),
            "--run".to_string(),
            r.dir.path.display().to_string(),
            "--resume".to_string(),
        ];
        match Job::spawn(
            format!("resume {name}"),
            &args,
            &root,
            r.dir.file(files::STDOUT),
            r.dir.file(files::STDERR),
        ) {
            Ok(job) => {
                r.job = Some(job);
                r.refresh();
                self.message = format!("resuming {name}");
            }
            Err(e) => self.message = format!("cannot start spr train: {e}"),
        }
    }

    /// The view.
    pub fn show(&mut self, ui: &mut egui::Ui) {
        self.poll(false);
        egui::Panel::left("runs")
            .default_size(560.0)
            .resizable(true)
            .show(ui, |ui| {
                egui::ScrollArea::vertical().show(ui, |ui| {
                    self.runs_table(ui);
                    ui.separator();
                    self.launch_form(ui);
                });
            });
        egui::CentralPanel::default().show(ui, |ui| {
            // A crashed run's output comes first: it is what to read.
            let crashed = self
                .focus
                .as_deref()
                .and_then(|f| self.run(f))
                .is_some_and(|r| matches!(r.overview.status, RunStatus::Crashed { .. }));
            egui::ScrollArea::vertical().show(ui, |ui| {
                if crashed {
                    self.output(ui);
                    ui.separator();
                }
                self.plots(ui);
                ui.separator();
                self.compare_configs(ui);
                if !crashed {
                    ui.separator();
                    self.output(ui);
                }
            });
        });
        if self
            .runs
            .iter()
            .any(|r| matches!(r.overview.status, RunStatus::Running { .. }))
        {
            ui.ctx().request_repaint_after(Duration::from_millis(250));
        }
    }

    fn runs_table(&mut self, ui: &mut egui::Ui) {
        ui.heading("Runs");
        if !self.message.is_empty() {
            ui.label(&self.message);
        }
        if self.runs.is_empty() {
            ui.label("No runs yet in runs/: start one below.");
            return;
        }
        let mut stop = None;
        let mut resume = None;
        let mut toggle = None;
        let mut focus = None;
        TableBuilder::new(ui)
            .id_salt("runs-table")
            .striped(true)
            .vscroll(false)
            .column(Column::auto().at_least(120.0))
            .column(Column::auto().at_least(70.0))
            .columns(Column::auto().at_least(48.0), 4)
            .column(Column::remainder().at_least(70.0))
            .header(20.0, |mut h| {
                for t in [
                    "run",
                    "status",
                    "objective",
                    "steps",
                    "loss",
                    "reward acc",
                    "",
                ] {
                    h.col(|ui| {
                        ui.label(RichText::new(t).strong());
                    });
                }
            })
            .body(|mut body| {
                for r in &self.runs {
                    let name = r.dir.name();
                    let o = &r.overview;
                    body.row(22.0, |mut row| {
                        row.col(|ui| {
                            let on = self.selected.contains(&name);
                            if ui
                                .selectable_label(on, &name)
                                .on_hover_text("show in the plots")
                                .clicked()
                            {
                                toggle = Some(name.clone());
                            }
                        });
                        row.col(|ui| {
                            let label = o.status.label();
                            let color = match o.status {
                                RunStatus::Running { .. } => colors::MATCHED,
                                RunStatus::Finished => ui.visuals().text_color(),
                                RunStatus::Stopped => colors::MISSED,
                                RunStatus::Crashed { .. } => colors::UNMATCHED,
                            };
                            let resp = ui.label(RichText::new(label).color(color));
                            if let RunStatus::Crashed { message } = &o.status {
                                resp.on_hover_text(message);
                            }
                        });
                        row.col(|ui| {
                            ui.label(
                                o.config
                                    .as_ref()
                                    .map_or("—", |c| c.objective.objective.name()),
                            );
                        });
                        row.col(|ui| {
                            let total = o.config.as_ref().map(|c| c.total_steps);
                            ui.label(match total {
                                Some(t) => format!("{}/{t}", o.steps_done),
                                None => o.steps_done.to_string(),
                            });
                        });
                        row.col(|ui| {
                            ui.label(o.last_loss.map_or("—".into(), |l| format!("{l:.4}")));
                        });
                        row.col(|ui| {
                            ui.label(
                                o.last_accuracy
                                    .map_or("—".into(), |a| format!("{:.0}%", a * 100.0)),
                            );
                        });
                        row.col(|ui| {
                            ui.horizontal(|ui| {
                                match o.status {
                                    RunStatus::Running { .. } => {
                                        if ui.button("Stop").clicked() {
                                            stop = Some(name.clone());
                                        }
                                    }
                                    RunStatus::Stopped | RunStatus::Crashed { .. } => {
                                        if ui.button("Resume").clicked() {
                                            resume = Some(name.clone());
                                        }
                                    }
                                    RunStatus::Finished => {}
                                }
                                if ui
                                    .small_button("log")
                                    .on_hover_text("show its output")
                                    .clicked()
                                {
                                    focus = Some(name.clone());
                                }
                            });
                        });
                    });
                }
            });
        if let Some(n) = toggle {
            if !self.selected.remove(&n) {
                self.selected.insert(n);
            }
        }
        if let Some(n) = focus {
            self.focus = Some(n);
        }
        if let Some(n) = stop {
            self.stop(&n);
        }
        if let Some(n) = resume {
            self.focus = Some(n.clone());
            self.resume(&n);
        }
    }

    fn launch_form(&mut self, ui: &mut egui::Ui) {
        let Some(root) = self.root.clone() else {
            return;
        };
        egui::CollapsingHeader::new("New run")
            .id_salt("new-run")
            .default_open(true)
            .show(ui, |ui| {
                let Some(form) = &mut self.form else { return };
                form.show(ui);
                let problem = form.problem(&root);
                ui.label(
                    RichText::new(format!("spr {}", form.args().join(" ")))
                        .monospace()
                        .small(),
                );
                if let Some(p) = &problem {
                    ui.label(RichText::new(p).small().color(colors::MISSED));
                }
                if ui
                    .add_enabled(problem.is_none(), egui::Button::new("Start training"))
                    .clicked()
                {
                    self.launch();
                }
            });
    }

    fn plots(&mut self, ui: &mut egui::Ui) {
        ui.horizontal(|ui| {
            ui.heading("Metrics");
            ui.add(egui::Slider::new(&mut self.smoothing, 0.0..=0.99).text("smoothing"));
            ui.selectable_value(&mut self.x_axis, XAxis::Step, "by step");
            ui.selectable_value(&mut self.x_axis, XAxis::WallTime, "by wall time");
        });
        let shown: Vec<(String, usize, &[Event])> = self
            .runs
            .iter()
            .enumerate()
            .filter(|(_, r)| self.selected.contains(&r.dir.name()))
            .map(|(i, r)| (r.dir.name(), i, r.tail.events.as_slice()))
            .collect();
        if shown.is_empty() {
            ui.label("Select runs in the table to plot them.");
            return;
        }
        let (x, smoothing) = (self.x_axis, self.smoothing);
        let metrics: Vec<&'static str> = plots::METRICS
            .iter()
            .copied()
            .filter(|m| {
                shown
                    .iter()
                    .any(|(name, _, ev)| !self.series.get(name, ev, m, x, smoothing).raw.is_empty())
            })
            .collect();
        let width = ui.available_width();
        let cols = if width > 900.0 { 3 } else { 2 };
        let plot_w = (width - 12.0 * cols as f32) / cols as f32;
        for chunk in metrics.chunks(cols) {
            ui.horizontal(|ui| {
                for m in chunk {
                    ui.allocate_ui(egui::vec2(plot_w, 200.0), |ui| {
                        ui.vertical(|ui| {
                            plots::metric_plot(
                                ui,
                                m,
                                &shown,
                                (x, smoothing),
                                170.0,
                                &mut self.series,
                            )
                        });
                    });
                }
            });
        }
    }

    /// The selected runs' configs side by side (differences only by default).
    fn compare_configs(&mut self, ui: &mut egui::Ui) {
        let chosen: Vec<(String, BTreeMap<String, String>)> = self
            .runs
            .iter()
            .filter(|r| self.selected.contains(&r.dir.name()))
            .filter_map(|r| Some((r.dir.name(), flatten_config(r.overview.config.as_ref()?))))
            .collect();
        if chosen.len() < 2 {
            return;
        }
        ui.horizontal(|ui| {
            ui.heading("Configs");
            ui.checkbox(&mut self.diff_only, "differences only");
        });
        let keys: BTreeSet<&String> = chosen.iter().flat_map(|(_, m)| m.keys()).collect();
        egui::Grid::new("config-diff").striped(true).show(ui, |ui| {
            ui.label(RichText::new("key").strong());
            for (n, _) in &chosen {
                ui.label(RichText::new(n).strong());
            }
            ui.end_row();
            for k in keys {
                let vals: Vec<&str> = chosen
                    .iter()
                    .map(|(_, m)| m.get(k).map_or("—", String::as_str))
                    .collect();
                if self.diff_only && vals.iter().all(|v| *v == vals[0]) {
                    continue;
                }
                ui.label(k);
                for v in vals {
                    ui.label(v);
                }
                ui.end_row();
            }
        });
    }

    /// The focused run's failure, stderr and stdout tails.
    fn output(&mut self, ui: &mut egui::Ui) {
        let Some(name) = self.focus.clone() else {
            return;
        };
        let Some(r) = self.runs.iter_mut().find(|r| r.dir.name() == name) else {
            return;
        };
        ui.heading(format!("Output of {name}"));
        if let Some(f) = r.failure() {
            ui.label(
                RichText::new(format!("spr train ended with {f}"))
                    .strong()
                    .color(colors::UNMATCHED),
            );
        }
        if let RunStatus::Crashed { message } = &r.overview.status {
            ui.label(RichText::new(message).color(colors::UNMATCHED));
        }
        for (what, file) in [("stderr", files::STDERR), ("stdout", files::STDOUT)] {
            let text = jobs::tail_lines(&r.dir.file(file), 12);
            if !text.is_empty() {
                ui.label(RichText::new(what).strong());
                ui.label(RichText::new(text).monospace().small());
            }
        }
    }
}

/// `key.sub = value` lines of a config, for the comparison.
pub fn flatten_config(cfg: &TrainConfig) -> BTreeMap<String, String> {
    fn walk(prefix: &str, v: &serde_json::Value, out: &mut BTreeMap<String, String>) {
        match v {
            serde_json::Value::Object(m) => {
                for (k, v) in m {
                    let key = if prefix.is_empty() {
                        k.clone()
                    } else {
                        format!("{prefix}.{k}")
                    };
                    walk(&key, v, out);
                }
            }
            other => {
                out.insert(prefix.to_string(), other.to_string());
            }
        }
    }
    let mut out = BTreeMap::new();
    if let Ok(v) = serde_json::to_value(cfg) {
        walk("", &v, &mut out);
    }
    out
}
