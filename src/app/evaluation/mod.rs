//! The evaluation view: REC accuracy against the IoU threshold for several
//! evaluations overlaid (`spr eval` folders under `evals/`, and the
//! evaluations runs made during training), a table of the same numbers
//! with the gain over a chosen baseline, the samples failing at a clicked
//! threshold (worst IoU first; against the baseline, those that changed),
//! a sample on the image beside the baseline's answer, and `spr eval`
//! started from the window.

mod sources;

use std::path::{Path, PathBuf};
use std::time::Duration;

use egui::RichText;
use egui_extras::{Column, TableBuilder};
use egui_plot::{Legend, Line, Plot, PlotPoints, Points};

pub use sources::{scan_sources, EvalSource, Loaded};

use crate::app::canvas::{self, colors, CanvasView, OverlayBox, Renderer};
use crate::app::forms::{is_plain_name, profile_combo, ProjectDefaults};
use crate::app::images::ImageCache;
use crate::app::jobs::{self, Job};
use crate::app::overlay::BoxInstance;
use crate::app::training::plots::run_color;
use crate::core::rec::REC_THRESHOLDS;

/// The "evaluate" form.
#[derive(Clone, Debug, PartialEq)]
pub struct EvalForm {
    /// Name of the output folder under `evals/`.
    pub name: String,
    /// Model folder or hub id.
    pub model: String,
    /// LoRA adapter: a run folder or a checkpoint (empty: none).
    pub adapter: String,
    /// The REC set.
    pub data: String,
    /// Prompt profile.
    pub profile: String,
    /// Only the first N samples (0: all).
    pub limit: usize,
}

impl EvalForm {
    fn for_project(root: &Path) -> EvalForm {
        let defaults = ProjectDefaults::for_project(root);
        EvalForm {
            name: "base".into(),
            model: defaults.model,
            adapter: String::new(),
            data: defaults.rec,
            profile: defaults.profile,
            limit: 0,
        }
    }

    /// The arguments of `spr`.
    pub fn args(&self) -> Vec<String> {
        let mut a = vec![
            "eval".to_string(),
            "--model".into(),
            self.model.trim().into(),
            "--data".into(),
            self.data.trim().into(),
            "--profile".into(),
            self.profile.clone(),
            "--out".into(),
            format!("evals/{}", self.name.trim()),
        ];
        if !self.adapter.trim().is_empty() {
            a.extend(["--adapter".into(), self.adapter.trim().into()]);
        }
        if self.limit > 0 {
            a.extend(["--limit".into(), self.limit.to_string()]);
        }
        a
    }

    fn problem(&self) -> Option<&'static str> {
        if !is_plain_name(&self.name) {
            return Some("name: a plain folder name under evals/");
        }
        if self.model.trim().is_empty() {
            return Some("model: a llava-hf model folder or hub id");
        }
        if self.data.trim().is_empty() {
            return Some("data: a REC set (MDETR-style JSON or JSONL)");
        }
        None
    }
}

/// The evaluation view's state.
#[derive(Debug, Default)]
pub struct EvalView {
    root: Option<PathBuf>,
    /// Every evaluation found.
    pub sources: Vec<EvalSource>,
    /// The one the gains are measured against.
    pub baseline: Option<usize>,
    /// The one whose samples are listed.
    pub focus: Option<usize>,
    /// The clicked threshold (index into `REC_THRESHOLDS`).
    pub threshold: Option<usize>,
    /// The clicked sample (index into the focused source's samples).
    pub sample: Option<usize>,
    /// The evaluate form.
    pub form: Option<EvalForm>,
    /// The evaluation running from the window.
    pub job: Option<Job>,
    /// The last message of this view.
    pub message: String,
    views: [CanvasView; 2],
    last_scan: Option<std::time::Instant>,
    /// [`EvalView::listed`] for (focus, baseline, threshold), until the
    /// selection changes or the sources are read again.
    listed_cache: Option<(ListedKey, Vec<usize>)>,
    /// The runs' events, followed between scans.
    run_tails: std::collections::HashMap<PathBuf, crate::core::runs::tail::EventTail>,
}

/// (focused source, baseline, threshold index).
type ListedKey = (usize, Option<usize>, usize);

impl EvalView {
    /// Follow the evaluations of the project in `root`.
    pub fn set_project(&mut self, root: &Path) {
        if self.root.as_deref() == Some(root) {
            return;
        }
        *self = EvalView {
            root: Some(root.to_path_buf()),
            form: Some(EvalForm::for_project(root)),
            ..EvalView::default()
        };
        self.rescan();
    }

    /// Reads `evals/` and the runs' evaluations again, keeping the
    /// selection by label.
    pub fn rescan(&mut self) {
        let Some(root) = &self.root else { return };
        let label =
            |i: Option<usize>, s: &[EvalSource]| i.and_then(|i| s.get(i)).map(|s| s.label.clone());
        let (base, focus) = (
            label(self.baseline, &self.sources),
            label(self.focus, &self.sources),
        );
        let mut old = std::mem::take(&mut self.sources);
        self.sources = scan_sources(root, &mut self.run_tails);
        // Keep what was already shown and read, unless the evaluation was
        // run again (another end time): its samples are read once, not at
        // every rescan.
        for s in &mut self.sources {
            if let Some(o) = old
                .iter_mut()
                .find(|o| o.label == s.label && o.time == s.time)
            {
                s.shown = o.shown;
                s.loaded = o.loaded.take();
            }
        }
        let find = |l: Option<String>, s: &[EvalSource]| {
            l.and_then(|l| s.iter().position(|x| x.label == l))
        };
        self.baseline = find(base, &self.sources);
        self.focus = find(focus, &self.sources);
        self.listed_cache = None;
        self.last_scan = Some(std::time::Instant::now());
    }

    /// Whether an evaluation started here is running.
    pub fn busy(&mut self) -> bool {
        self.job.as_mut().is_some_and(|j| j.poll().is_none())
    }

    /// Selects the threshold column `t` of source `s` (what clicking a
    /// header or a cell does).
    pub fn select(&mut self, s: usize, t: usize) {
        self.focus = Some(s);
        self.threshold = Some(t);
        self.sample = None;
    }

    /// The samples listed for the focused source at the clicked threshold:
    /// failing ones worst IoU first, or, with a baseline, those whose
    /// status changed (regressions first).
    pub fn listed(&mut self) -> Vec<usize> {
        let (Some(f), Some(t)) = (self.focus, self.threshold) else {
            return Vec::new();
        };
        let base = self.baseline.filter(|&b| b != f);
        if let Some((key, list)) = &self.listed_cache {
            if *key == (f, base, t) {
                return list.clone();
            }
        }
        let list = self.compute_listed(f, base, t);
        self.listed_cache = Some(((f, base, t), list.clone()));
        list
    }

    fn compute_listed(&mut self, f: usize, base: Option<usize>, t: usize) -> Vec<usize> {
        if let Some(b) = base {
            self.sources[b].load();
        }
        self.sources[f].load();
        let Some(Ok(now)) = &self.sources[f].loaded else {
            return Vec::new();
        };
        match base.and_then(|b| match &self.sources[b].loaded {
            Some(Ok(l)) => Some(l),
            _ => None,
        }) {
            Some(before) => now
                .table
                .changes(&now.samples, &before.table, &before.samples, t)
                .into_iter()
                .map(|c| c.sample)
                .collect(),
            None => now.table.failing(t),
        }
    }

    /// The view.
    pub fn show(&mut self, ui: &mut egui::Ui, images: &mut ImageCache, renderer: Renderer) {
        if self.job.as_mut().is_some_and(|j| j.poll().is_some())
            || self
                .last_scan
                .is_none_or(|t| t.elapsed() > Duration::from_secs(2))
        {
            self.finish_job();
            self.rescan();
        }
        egui::Panel::left("evaluations")
            .default_size(380.0)
            .resizable(true)
            .show(ui, |ui| {
                egui::ScrollArea::vertical().show(ui, |ui| {
                    self.source_list(ui);
                    ui.separator();
                    self.eval_form(ui);
                });
            });
        egui::CentralPanel::default().show(ui, |ui| {
            egui::ScrollArea::vertical().show(ui, |ui| {
                self.curve(ui);
                ui.separator();
                self.table(ui);
                ui.separator();
                self.samples(ui, images, renderer);
            });
        });
        if self.busy() {
            ui.ctx().request_repaint_after(Duration::from_millis(250));
        }
    }

    fn finish_job(&mut self) {
        let Some(j) = &mut self.job else { return };
        let Some(status) = j.poll() else { return };
        self.message = if status.success() {
            format!("{} finished", j.label)
        } else {
            format!(
                "{} failed ({}):\n{}",
                j.label,
                jobs::describe_exit(status),
                j.stderr_tail(6)
            )
        };
        self.job = None;
    }

    fn source_list(&mut self, ui: &mut egui::Ui) {
        ui.heading("Evaluations");
        if self.sources.is_empty() {
            ui.label("None yet: evals/ (spr eval) and the runs' evaluations are listed here.");
        }
        let mut base = self.baseline;
        for (i, s) in self.sources.iter_mut().enumerate() {
            ui.horizontal(|ui| {
                ui.checkbox(&mut s.shown, "")
                    .on_hover_text("show in the plot");
                ui.radio_value(&mut base, Some(i), "")
                    .on_hover_text("baseline: gains are measured against it");
                ui.label(RichText::new(&s.label).color(run_color(i)));
            });
        }
        if base.is_some() && ui.small_button("no baseline").clicked() {
            base = None;
        }
        self.baseline = base;
    }

    fn eval_form(&mut self, ui: &mut egui::Ui) {
        let Some(root) = self.root.clone() else {
            return;
        };
        egui::CollapsingHeader::new("Evaluate a model")
            .id_salt("eval-form")
            .default_open(false)
            .show(ui, |ui| {
                let Some(f) = &mut self.form else { return };
                egui::Grid::new("eval-form-grid")
                    .num_columns(2)
                    .show(ui, |ui| {
                        for (label, v) in [
                            ("name", &mut f.name),
                            ("model", &mut f.model),
                            ("adapter", &mut f.adapter),
                            ("REC data", &mut f.data),
                        ] {
                            let l = ui.label(label);
                            ui.text_edit_singleline(v).labelled_by(l.id);
                            ui.end_row();
                        }
                        ui.label("profile");
                        profile_combo(ui, "eval-form-profile", &mut f.profile);
                        ui.end_row();
                        ui.label("limit (0: all)");
                        ui.add(egui::DragValue::new(&mut f.limit));
                        ui.end_row();
                    });
                ui.label(
                    RichText::new(format!("spr {}", f.args().join(" ")))
                        .monospace()
                        .small(),
                );
                let problem = f.problem();
                if let Some(p) = problem {
                    ui.label(RichText::new(p).small().color(colors::MISSED));
                }
                let running = self.job.as_mut().is_some_and(|j| j.poll().is_none());
                if ui
                    .add_enabled(problem.is_none() && !running, egui::Button::new("Evaluate"))
                    .clicked()
                {
                    let out = root.join("evals").join(f.name.trim());
                    match Job::spawn(
                        format!("eval {}", f.name.trim()),
                        &f.args(),
                        &root,
                        out.join("stdout.log"),
                        out.join("stderr.log"),
                    ) {
                        Ok(j) => {
                            self.message = format!("{} started", j.label);
                            self.job = Some(j);
                        }
                        Err(e) => self.message = format!("cannot start spr eval: {e}"),
                    }
                }
            });
        if let Some(j) = &self.job {
            ui.horizontal(|ui| {
                ui.spinner();
                let progress = jobs::tail_lines(&j.stderr, 1);
                ui.label(format!(
                    "{} · {:.0} s · {}",
                    j.label,
                    j.started.elapsed().as_secs_f64(),
                    progress
                ));
            });
        }
        if !self.message.is_empty() {
            ui.label(RichText::new(&self.message).small());
        }
    }

    fn curve(&mut self, ui: &mut egui::Ui) {
        ui.heading("REC accuracy against the IoU threshold");
        let mut clicked = None;
        let resp = Plot::new("rec-curve")
            .height(260.0)
            .legend(Legend::default())
            .x_axis_label("IoU threshold")
            .y_axis_label("accuracy (%)")
            .include_y(0.0)
            .include_y(100.0)
            .allow_scroll(false)
            .show(ui, |p| {
                for (i, s) in self.sources.iter().enumerate().filter(|(_, s)| s.shown) {
                    let pts: Vec<[f64; 2]> = REC_THRESHOLDS
                        .iter()
                        .zip(s.accuracy)
                        .map(|(&t, a)| [f64::from(t), a * 100.0])
                        .collect();
                    p.line(
                        Line::new(s.label.clone(), PlotPoints::new(pts.clone()))
                            .color(run_color(i))
                            .width(2.0),
                    );
                    p.points(
                        Points::new(s.label.clone(), PlotPoints::new(pts))
                            .color(run_color(i))
                            .radius(3.5),
                    );
                }
            });
        if resp.response.clicked() {
            if let Some(pos) = resp
                .response
                .interact_pointer_pos()
                .filter(|p| resp.response.rect.contains(*p))
            {
                let x = resp.transform.value_from_position(pos).x;
                clicked = REC_THRESHOLDS
                    .iter()
                    .enumerate()
                    .min_by(|a, b| {
                        (f64::from(*a.1) - x)
                            .abs()
                            .total_cmp(&(f64::from(*b.1) - x).abs())
                    })
                    .map(|(t, _)| t);
            }
        }
        if let Some(t) = clicked {
            let f = self.focus.or(self.sources.iter().position(|s| s.shown));
            if let Some(f) = f {
                self.select(f, t);
            }
        }
    }

    fn table(&mut self, ui: &mut egui::Ui) {
        if self.sources.is_empty() {
            return;
        }
        let base = self.baseline.map(|b| self.sources[b].accuracy);
        let base_iou = self.baseline.map(|b| self.sources[b].mean_iou);
        let mut pick = None;
        TableBuilder::new(ui)
            .id_salt("rec-table")
            .striped(true)
            .vscroll(false)
            .column(Column::auto().at_least(160.0))
            .columns(Column::auto().at_least(70.0), 6)
            .column(Column::remainder())
            .header(20.0, |mut h| {
                h.col(|ui| {
                    ui.label(RichText::new("evaluation").strong());
                });
                for t in REC_THRESHOLDS {
                    h.col(|ui| {
                        ui.label(RichText::new(format!("Acc@{t:.1}")).strong());
                    });
                }
                h.col(|ui| {
                    ui.label(RichText::new("mean IoU").strong());
                });
                h.col(|ui| {
                    ui.label(RichText::new("samples").strong());
                });
            })
            .body(|mut body| {
                for (i, s) in self.sources.iter().enumerate() {
                    body.row(22.0, |mut row| {
                        row.col(|ui| {
                            ui.label(RichText::new(&s.label).color(run_color(i)));
                        });
                        for (t, a) in s.accuracy.iter().enumerate() {
                            row.col(|ui| {
                                let gain = base
                                    .filter(|_| self.baseline != Some(i))
                                    .map(|b| format!(" ({:+.1})", (a - b[t]) * 100.0))
                                    .unwrap_or_default();
                                let on = self.focus == Some(i) && self.threshold == Some(t);
                                if ui
                                    .selectable_label(on, format!("{:.1}%{gain}", a * 100.0))
                                    .on_hover_text(format!(
                                        "samples failing at IoU ≥ {:.1}",
                                        REC_THRESHOLDS[t]
                                    ))
                                    .clicked()
                                {
                                    pick = Some((i, t));
                                }
                            });
                        }
                        row.col(|ui| {
                            let gain = base_iou
                                .filter(|_| self.baseline != Some(i))
                                .map(|b| format!(" ({:+.3})", s.mean_iou - b))
                                .unwrap_or_default();
                            ui.label(format!("{:.3}{gain}", s.mean_iou));
                        });
                        row.col(|ui| {
                            ui.label(s.samples.to_string());
                        });
                    });
                }
            });
        if let Some((s, t)) = pick {
            self.select(s, t);
        }
    }

    fn samples(&mut self, ui: &mut egui::Ui, images: &mut ImageCache, renderer: Renderer) {
        let (Some(f), Some(t)) = (self.focus, self.threshold) else {
            ui.label("Click an accuracy in the table (or a threshold in the plot) to list its failing samples.");
            return;
        };
        let listed = self.listed();
        let base = self.baseline.filter(|&b| b != f);
        if let Some(Err(e)) = &self.sources[f].loaded {
            ui.label(RichText::new(e).color(colors::UNMATCHED));
            return;
        }
        let th = REC_THRESHOLDS[t];
        ui.heading(match base {
            Some(b) => format!(
                "{}: {} samples changed at IoU ≥ {th:.1} against {}",
                self.sources[f].label,
                listed.len(),
                self.sources[b].label
            ),
            None => format!(
                "{}: {} samples fail at IoU ≥ {th:.1}",
                self.sources[f].label,
                listed.len()
            ),
        });
        let Some(Ok(now)) = &self.sources[f].loaded else {
            return;
        };
        let mut clicked = None;
        // Only the rows on screen are laid out: a failing list can hold
        // thousands of samples.
        let row = ui.spacing().interact_size.y + ui.spacing().item_spacing.y;
        egui::ScrollArea::vertical()
            .id_salt("sample-list")
            .max_height(220.0)
            .show_rows(ui, row, listed.len(), |ui, range| {
                for &i in &listed[range] {
                    let s = &now.samples[i];
                    let tag = if base.is_some() {
                        if now.table.hits[i][t] {
                            "fixed · "
                        } else {
                            "regressed · "
                        }
                    } else {
                        ""
                    };
                    let text = format!(
                        "{tag}sample {} · IoU {:.3} · {}",
                        s.id,
                        s.iou,
                        s.expression.as_deref().unwrap_or("")
                    );
                    if ui.selectable_label(self.sample == Some(i), text).clicked() {
                        clicked = Some(i);
                    }
                }
            });
        if let Some(i) = clicked {
            self.sample = Some(i);
            self.views = Default::default();
        }
        self.sample_view(ui, images, renderer);
    }

    /// The clicked sample: ground truth and prediction on the image, with
    /// the baseline's prediction beside it when there is a baseline.
    fn sample_view(&mut self, ui: &mut egui::Ui, images: &mut ImageCache, renderer: Renderer) {
        let (Some(f), Some(i)) = (self.focus, self.sample) else {
            return;
        };
        let base = self.baseline.filter(|&b| b != f);
        let Some(Ok(now)) = &self.sources[f].loaded else {
            return;
        };
        let s = &now.samples[i];
        let mut panes = vec![(
            self.sources[f].label.clone(),
            s.clone(),
            self.sources[f].image_root.clone(),
        )];
        if let Some(b) = base {
            if let Some(Ok(before)) = &self.sources[b].loaded {
                if let Some(bs) = before.samples.iter().find(|x| x.id == s.id) {
                    panes.push((
                        self.sources[b].label.clone(),
                        bs.clone(),
                        self.sources[b].image_root.clone(),
                    ));
                }
            }
        }
        ui.separator();
        ui.label(RichText::new(format!("\"{}\"", s.expression.as_deref().unwrap_or(""))).strong());
        let ctx = ui.ctx().clone();
        let n = panes.len();
        let w = (ui.available_width() - 8.0 * n as f32) / n as f32;
        ui.horizontal_top(|ui| {
            for (k, (label, sample, root)) in panes.iter().enumerate() {
                ui.allocate_ui(egui::vec2(w, 380.0), |ui| {
                    ui.vertical(|ui| {
                        ui.label(format!("{label}: IoU {:.3}", sample.iou));
                        ui.label(
                            RichText::new(format!(
                                "answer: {}",
                                sample.output.as_deref().unwrap_or("—")
                            ))
                            .small()
                            .monospace(),
                        );
                        let path = sample.image.as_ref().map(|im| root.join(im));
                        let (tex, err) = match path.as_ref().map(|p| images.full(&ctx, p)) {
                            Some(Some(Ok(t))) => (Some(t.clone()), None),
                            Some(Some(Err(e))) => (None, Some(e.clone())),
                            Some(None) => (None, None),
                            None => (None, Some("the record names no image".to_string())),
                        };
                        if tex.is_none() && err.is_none() {
                            ui.spinner();
                            return;
                        }
                        let size = tex.as_ref().map_or([640.0, 480.0], |t| {
                            let s = t.size();
                            [s[0] as f32, s[1] as f32]
                        });
                        ui.allocate_ui(egui::vec2(w, 320.0), |ui| {
                            canvas::show(
                                ui,
                                &mut self.views[k],
                                tex.as_ref(),
                                err.as_deref(),
                                size,
                                &sample_boxes(sample),
                                renderer,
                            );
                        });
                    });
                });
            }
        });
    }
}

/// Ground truth (white) and the prediction (green when it matches at 0.5,
/// red when not) of a REC sample.
pub fn sample_boxes(s: &crate::core::rec::RecSample) -> Vec<OverlayBox> {
    let mut out = vec![OverlayBox {
        bbox: s.gt_bbox,
        style: BoxInstance::outline(s.gt_bbox.into(), colors::GT, 2.0),
        label: Some("ground truth".into()),
        tooltip: Some("ground-truth box".into()),
        candidate_box: None,
    }];
    if let Some(p) = s.pred_bbox {
        let c = if s.iou >= 0.5 {
            colors::MATCHED
        } else {
            colors::UNMATCHED
        };
        out.push(OverlayBox {
            bbox: p,
            style: BoxInstance::outline(p.into(), c, 2.5).filled(0.10),
            label: Some("prediction".into()),
            tooltip: Some(format!("predicted box: IoU {:.3}", s.iou)),
            candidate_box: None,
        });
    }
    out
}
