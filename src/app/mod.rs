//! The desktop workbench (eframe + egui, wgpu renderer).
//!
//! Three views under one top bar:
//! - **Annotate** (`annotate/`): the dataset browser, the image canvas with
//!   our wgpu box overlays, the inspector (λ and IoU sliders, candidates
//!   re-ranked live, text editor, chosen/rejected marks, refinement
//!   preview, export) and the keyboard habits of annotation tools;
//! - **Training** (`training/`): the project's runs, a launch form that
//!   starts `spr train`, live plots of `events.jsonl`, stop and resume;
//! - **Evaluation** (`evaluation/`): REC accuracy against the IoU
//!   threshold for several evaluations, the failing samples of a
//!   threshold, a sample on its image, `spr eval` from the window.
//!
//! [`WorkbenchApp`] holds the state, the views and the background jobs;
//! the selection and live parameters are one type ([`state`]); panels push
//! [`Command`]s that [`WorkbenchApp::apply_commands`] carries out in one
//! place after drawing. The GUI holds no pipeline logic: every edit is a
//! [`Workspace`] call, the same library code the CLI uses, saved
//! atomically. Opening a project, decoding images, exporting, training and
//! evaluating all run off the UI thread (the last two as `spr` child
//! processes).

pub mod annotate;
pub mod canvas;
pub mod evaluation;
pub mod forms;
pub mod images;
pub mod jobs;
pub mod overlay;
pub mod state;
pub mod training;

use std::path::PathBuf;

use poll_promise::Promise;

use crate::core::workspace::{Edit, Workspace};
use annotate::{AnnotateView, Cx};
use canvas::Renderer;
use evaluation::EvalView;
use images::ImageCache;
use state::{Command, Live, Selection};
use training::TrainingView;

pub use annotate::{browser_list, overlay_boxes, BrowserFilter};

const RECENT_KEY: &str = "spr-recent-projects";

/// Open the GUI on `project` and block until the window closes.
pub fn run(project: PathBuf) -> anyhow::Result<()> {
    let options = eframe::NativeOptions {
        viewport: egui::ViewportBuilder::default()
            .with_title("SPR Workbench")
            .with_inner_size([1400.0, 860.0]),
        renderer: eframe::Renderer::Wgpu,
        ..Default::default()
    };
    eframe::run_native(
        "SPR Workbench",
        options,
        Box::new(move |cc| Ok(Box::new(WorkbenchApp::new(cc, project)))),
    )
    .map_err(|e| anyhow::anyhow!("cannot open the window: {e}"))
}

/// The views of the window.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Tab {
    /// Regions, candidates, marks, export.
    #[default]
    Annotate,
    /// Training runs.
    Training,
    /// REC evaluations.
    Evaluation,
}

/// A candidate's text being typed: its id and its text before the session.
#[derive(Clone, Debug)]
struct TextSession {
    id: String,
    before: String,
    after: String,
}

/// The application state.
pub struct WorkbenchApp {
    /// The open project, once loaded.
    pub ws: Option<Workspace>,
    /// Message shown in the status bar.
    pub status: String,
    /// What is selected.
    pub sel: Selection,
    /// λ and the IoU threshold.
    pub live: Live,
    /// The view shown.
    pub tab: Tab,
    /// The annotation view.
    pub annotate: AnnotateView,
    /// The training view.
    pub training: TrainingView,
    /// The evaluation view.
    pub evaluation: EvalView,
    loading: Option<(PathBuf, Promise<Result<Workspace, String>>)>,
    exporting: Option<Promise<Result<String, String>>>,
    images: ImageCache,
    text: Option<TextSession>,
    recent: Vec<PathBuf>,
    renderer: Renderer,
    commands: Vec<Command>,
    /// When the project files were last checked for writes by other
    /// processes.
    disk_checked: Option<std::time::Instant>,
}

impl WorkbenchApp {
    /// Create the app and start opening `project` in the background.
    pub fn new(cc: &eframe::CreationContext<'_>, project: PathBuf) -> Self {
        let renderer = match &cc.wgpu_render_state {
            Some(rs) => {
                overlay::OverlayResources::install(rs);
                Renderer::Wgpu
            }
            None => Renderer::Painter,
        };
        let recent: Vec<PathBuf> = cc
            .storage
            .and_then(|s| eframe::get_value(s, RECENT_KEY))
            .unwrap_or_default();
        let mut app = Self {
            ws: None,
            status: String::new(),
            sel: Selection::default(),
            live: Live::default(),
            tab: Tab::Annotate,
            annotate: AnnotateView::default(),
            training: TrainingView::default(),
            evaluation: EvalView::default(),
            loading: None,
            exporting: None,
            images: ImageCache::default(),
            text: None,
            disk_checked: None,
            recent,
            renderer,
            commands: Vec::new(),
        };
        app.open(project);
        app
    }

    /// Start opening a project folder in the background.
    pub fn open(&mut self, dir: PathBuf) {
        self.commit_text();
        self.status = format!("opening {}…", dir.display());
        let d = dir.clone();
        self.loading = Some((
            dir,
            Promise::spawn_thread("open-project", move || {
                Workspace::open(&d).map_err(|e| e.to_string())
            }),
        ));
    }

    /// Whether a background job of the window is still running (project
    /// load, export, decodes, writes, a "Generate"; training runs and
    /// evaluations are child processes the views follow, not waited for).
    pub fn busy(&self) -> bool {
        self.loading.is_some()
            || self.exporting.is_some()
            || self.annotate.generating.is_some()
            || self.images.pending() > 0
            || self.ws.as_ref().is_some_and(|w| w.pending_writes() > 0)
    }

    fn poll_jobs(&mut self) {
        if let Some((dir, promise)) = self.loading.take() {
            match promise.try_take() {
                Ok(Ok(mut ws)) => {
                    ws.write_in_background();
                    self.status = format!(
                        "opened {} ({} images, {} regions, {} candidates{})",
                        ws.project.config.name,
                        ws.dataset.images.len(),
                        ws.regions.len(),
                        ws.candidates.len(),
                        if ws.problems.is_empty() {
                            String::new()
                        } else {
                            format!(", {} problems", ws.problems.len())
                        }
                    );
                    self.live = Live {
                        lambda: ws.project.config.scoring.lambda,
                        iou: ws.project.config.scoring.match_iou,
                    };
                    self.images.clear();
                    self.annotate.browser.clear();
                    self.annotate.inspector.editor_for = None;
                    self.sel = Selection::default();
                    self.training.set_project(ws.root());
                    if self.annotate.model.is_empty() {
                        self.annotate.model = forms::ProjectDefaults::for_project(ws.root()).model;
                    }
                    self.evaluation.set_project(ws.root());
                    self.recent.retain(|p| p != &dir);
                    self.recent.insert(0, dir);
                    self.recent.truncate(8);
                    self.ws = Some(ws);
                }
                Ok(Err(e)) => self.status = format!("cannot open project: {e}"),
                Err(p) => self.loading = Some((dir, p)),
            }
        }
        if let Some(ws) = &self.ws {
            if let Some(e) = ws.take_write_errors().into_iter().last() {
                self.status = format!("not saved: {e}");
            }
        }
        self.reload_changed_files();
        if let Some(p) = self.exporting.take() {
            match p.try_take() {
                Ok(Ok(msg)) | Ok(Err(msg)) => self.status = msg,
                Err(p) => self.exporting = Some(p),
            }
        }
    }

    /// About once a second, and never while a text is being typed: reloads
    /// the stage files another process (a `spr generate` or `spr score`
    /// in a terminal) wrote since the window read or saved them, keeping
    /// the selection on its records.
    fn reload_changed_files(&mut self) {
        let due = self
            .disk_checked
            .is_none_or(|t| t.elapsed() >= std::time::Duration::from_secs(1));
        if !due || self.text.is_some() {
            return;
        }
        self.disk_checked = Some(std::time::Instant::now());
        let selected = self.selected_id();
        let Some(ws) = &mut self.ws else { return };
        match ws.reload_changed() {
            Ok(messages) if messages.is_empty() => return,
            Ok(messages) => self.status = messages.join("; "),
            Err(e) => self.status = format!("cannot reload: {e}"),
        }
        self.annotate.inspector.editor_for = None;
        self.reselect(selected);
    }

    /// Adds the candidates a running "Generate" finished since the last
    /// frame (one edit each: saved, undoable) and reports its end.
    fn poll_generation(&mut self) {
        let Some(job) = &mut self.annotate.generating else {
            return;
        };
        let done = job.finished();
        let (new, bad) = job.new_candidates();
        if done.is_some() {
            job.clean_up();
            self.annotate.generating = None;
        }
        for c in new {
            self.apply(Edit::AddCandidate(c));
        }
        if let Some(b) = bad.into_iter().next() {
            self.status = format!("generated record not read: {b}");
        }
        match done {
            Some(Ok(s)) => {
                self.status = format!(
                    "generated {} candidates ({} already there){} in {:.1} s",
                    s.written,
                    s.already_present,
                    if s.interrupted { ", cancelled" } else { "" },
                    s.seconds
                )
            }
            Some(Err(e)) => self.status = format!("generation failed: {e}"),
            None => {}
        }
    }

    /// Ends a text edit session: one undo step from the text before it.
    fn commit_text(&mut self) {
        let Some(t) = self.text.take() else { return };
        if t.before != t.after {
            self.apply(Edit::SetText {
                id: t.id,
                before: t.before,
                after: t.after,
            });
        }
    }

    fn apply(&mut self, edit: Edit) {
        let selected = self.selected_id();
        if let Some(ws) = &mut self.ws {
            if let Err(e) = ws.apply(edit) {
                self.status = format!("not saved: {e}");
            }
        }
        self.reselect(selected);
    }

    fn undo(&mut self, redo: bool) {
        self.commit_text();
        let selected = self.selected_id();
        let Some(ws) = &mut self.ws else { return };
        let r = if redo { ws.redo() } else { ws.undo() };
        match r {
            Ok(true) => {
                self.status = if redo {
                    "redone".into()
                } else {
                    "undone".into()
                }
            }
            Ok(false) => {}
            Err(e) => self.status = format!("not saved: {e}"),
        }
        self.annotate.inspector.editor_for = None;
        self.reselect(selected);
    }

    /// The selected candidate's id (the selection is an index, and
    /// removing a record moves the ones after it).
    fn selected_id(&self) -> Option<String> {
        let ws = self.ws.as_ref()?;
        Some(ws.candidates.get(self.sel.candidate?)?.id.clone())
    }

    /// After the records changed: the selection follows its candidate
    /// (`selected`, from [`Self::selected_id`] before the change) to its
    /// new index, or is cleared when it is gone, and a region that is
    /// gone is deselected.
    fn reselect(&mut self, selected: Option<String>) {
        let Some(ws) = &self.ws else { return };
        let now = selected.and_then(|id| ws.candidate_index(&id));
        if now != self.sel.candidate {
            // The editor holds the text of the index it was loaded for.
            self.annotate.inspector.editor_for = None;
            self.sel.candidate = now;
        }
        if let Some(q) = &self.sel.region {
            if ws.region_index(q).is_none() {
                self.sel.region = None;
                self.sel.candidate = None;
            }
        }
    }

    /// Carries out what the panels asked for this frame, in order.
    pub fn apply_commands(&mut self, ctx: &egui::Context) {
        for c in std::mem::take(&mut self.commands) {
            // Anything but more typing ends the text edit session first.
            if !matches!(c, Command::PreviewText { .. } | Command::Status(_)) {
                self.commit_text();
            }
            match c {
                Command::Open(dir) => self.open(dir),
                Command::SelectImage(i) => {
                    self.sel.image = Some(i);
                    self.sel.candidate = None;
                    self.annotate.view.fit();
                    self.sel.region = self.ws.as_ref().and_then(|ws| {
                        let id = ws.dataset.images.get(i)?.id;
                        ws.regions_of(id).first().map(|&r| ws.regions[r].id.clone())
                    });
                    // Start decoding now, not when the canvas first asks.
                    if let Some(ws) = &self.ws {
                        if i < ws.dataset.images.len() {
                            self.images.full(ctx, &ws.dataset.image_path(i));
                        }
                    }
                }
                Command::SelectRegion(q) => {
                    self.sel.region = Some(q);
                    self.sel.candidate = None;
                }
                Command::SelectCandidate(c) => self.sel.candidate = c,
                Command::Apply(e) => {
                    self.apply(*e);
                    if self.sel.candidate.is_none() {
                        self.annotate.inspector.editor_for = None;
                    }
                }
                Command::PreviewText { id, text } => {
                    let Some(ws) = &mut self.ws else { continue };
                    let Some(ci) = ws.candidate_index(&id) else {
                        continue;
                    };
                    match &mut self.text {
                        Some(t) if t.id == id => t.after = text.clone(),
                        _ => {
                            self.commit_text();
                            let Some(ws) = &self.ws else { continue };
                            self.text = Some(TextSession {
                                id: id.clone(),
                                before: ws.candidates[ci].text.clone(),
                                after: text.clone(),
                            });
                        }
                    }
                    if let Some(ws) = &mut self.ws {
                        ws.preview_text(&id, &text);
                    }
                }
                Command::CommitText => {}
                Command::Undo => self.undo(false),
                Command::Redo => self.undo(true),
                Command::Export => self.export(),
                Command::Status(s) => self.status = s,
            }
        }
    }

    fn export(&mut self) {
        let Some(ws) = &self.ws else { return };
        if self.exporting.is_some() {
            return;
        }
        // Pairs at the λ and threshold on screen come from memory; files
        // and crops are written off the UI thread.
        let job = ws.export_job(self.live.lambda, self.live.iou);
        self.status = "exporting…".into();
        self.exporting = Some(Promise::spawn_thread("export", move || match job.run() {
            Ok((out, n, issues)) => Ok(format!(
                "exported {n} pairs ({} skipped) to {}",
                issues.len(),
                out.display()
            )),
            Err(e) => Err(format!("export failed: {e}")),
        }));
    }

    fn top_bar(&mut self, ui: &mut egui::Ui) {
        ui.horizontal(|ui| {
            if ui.button("Open project…").clicked() {
                if let Some(dir) = rfd::FileDialog::new()
                    .set_title("Open an SPR project folder")
                    .pick_folder()
                {
                    self.commands.push(Command::Open(dir));
                }
            }
            ui.menu_button("Recent", |ui| {
                for p in &self.recent {
                    if ui.button(p.display().to_string()).clicked() {
                        self.commands.push(Command::Open(p.clone()));
                        ui.close();
                    }
                }
            });
            ui.separator();
            for (tab, name) in [
                (Tab::Annotate, "Annotate"),
                (Tab::Training, "Training"),
                (Tab::Evaluation, "Evaluation"),
            ] {
                if ui.selectable_label(self.tab == tab, name).clicked() && self.tab != tab {
                    self.commands.push(Command::CommitText);
                    self.tab = tab;
                }
            }
            ui.separator();
            let (can_undo, can_redo) = self
                .ws
                .as_ref()
                .map(|w| (w.can_undo() || self.text.is_some(), w.can_redo()))
                .unwrap_or_default();
            if ui
                .add_enabled(can_undo, egui::Button::new("Undo"))
                .clicked()
            {
                self.commands.push(Command::Undo);
            }
            if ui
                .add_enabled(can_redo, egui::Button::new("Redo"))
                .clicked()
            {
                self.commands.push(Command::Redo);
            }
            ui.separator();
            if self.busy() {
                ui.spinner();
            }
            ui.label(&self.status);
        });
    }

    /// The central area when no project is open.
    fn no_project(&self, ui: &mut egui::Ui) {
        egui::CentralPanel::default().show(ui, |ui| {
            ui.centered_and_justified(|ui| {
                ui.label(if self.loading.is_some() {
                    "Opening project…"
                } else {
                    "No project open"
                })
            });
        });
    }
}

impl eframe::App for WorkbenchApp {
    fn ui(&mut self, ui: &mut egui::Ui, _frame: &mut eframe::Frame) {
        self.poll_jobs();
        self.poll_generation();
        let ctx = ui.ctx().clone();
        self.images.poll(&ctx);
        let (undo, redo) = ctx.input_mut(|i| {
            let redo = i.consume_key(
                egui::Modifiers::COMMAND | egui::Modifiers::SHIFT,
                egui::Key::Z,
            );
            let undo = i.consume_key(egui::Modifiers::COMMAND, egui::Key::Z);
            (undo, redo)
        });
        if redo {
            self.commands.push(Command::Redo);
        } else if undo {
            self.commands.push(Command::Undo);
        }
        egui::Panel::top("top").show(ui, |ui| self.top_bar(ui));
        match (self.tab, &self.ws) {
            (_, None) => self.no_project(ui),
            (Tab::Annotate, Some(ws)) => {
                let mut cx = Cx {
                    ws,
                    sel: &self.sel,
                    live: &mut self.live,
                    images: &mut self.images,
                    renderer: self.renderer,
                    exporting: self.exporting.is_some(),
                    commands: &mut self.commands,
                };
                self.annotate.show(ui, &mut cx);
            }
            (Tab::Training, Some(_)) => self.training.show(ui),
            (Tab::Evaluation, Some(_)) => self.evaluation.show(ui, &mut self.images, self.renderer),
        }
        self.apply_commands(&ctx);
        if self.busy() {
            ctx.request_repaint_after(std::time::Duration::from_millis(50));
        } else if self.ws.is_some() {
            // Wake once a second to notice files other processes wrote.
            ctx.request_repaint_after(std::time::Duration::from_secs(1));
        }
    }

    fn save(&mut self, storage: &mut dyn eframe::Storage) {
        eframe::set_value(storage, RECENT_KEY, &self.recent);
    }

    fn on_exit(&mut self) {
        // Text typed but not yet committed is saved, not lost: commit it
        // and wait (briefly) for the background writer.
        self.commit_text();
        let start = std::time::Instant::now();
        while self.ws.as_ref().is_some_and(|w| w.pending_writes() > 0)
            && start.elapsed() < std::time::Duration::from_secs(5)
        {
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
    }
}
