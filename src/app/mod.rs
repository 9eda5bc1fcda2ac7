//! The desktop workbench (eframe + egui, wgpu renderer).
//!
//! One window: the dataset browser on the left, the image canvas in the
//! middle (our wgpu box overlays), the inspector on the right (λ and IoU
//! sliders, candidates re-ranked live, text editor, chosen/rejected marks,
//! refinement preview, export). The GUI holds no pipeline logic: every
//! action is a [`Workspace`] call, the same library code the CLI uses, and
//! every edit is saved atomically at once. Opening a project, decoding
//! images and exporting run off the UI thread.

pub mod canvas;
pub mod images;
pub mod overlay;

use std::path::PathBuf;

use egui::RichText;
use poll_promise::Promise;

use crate::core::project::RegionRecord;
use crate::core::scores::MATCH_IOU;
use crate::core::workspace::{Edit, MarkKind, Workspace};
use canvas::{colors, CanvasAction, CanvasView, OverlayBox, Renderer};
use images::ImageCache;
use overlay::BoxInstance;

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

/// Filters and sorting of the browser.
#[derive(Clone, Debug, Default)]
pub struct BrowserFilter {
    /// Show images with at least this many objects.
    pub min_objects: usize,
    /// Show images holding this category (index into the dataset's categories).
    pub category: Option<usize>,
    /// Worst localization first.
    pub sort_worst: bool,
}

/// The application state.
pub struct WorkbenchApp {
    /// The open project, once loaded.
    pub ws: Option<Workspace>,
    loading: Option<(PathBuf, Promise<Result<Workspace, String>>)>,
    exporting: Option<Promise<Result<String, String>>>,
    /// Message shown in the status bar.
    pub status: String,
    /// Selected image (dataset index).
    pub image: Option<usize>,
    /// Selected region (query id).
    pub region: Option<String>,
    /// Selected candidate (index into the workspace's candidates).
    pub candidate: Option<usize>,
    /// Weight of the semantic score.
    pub lambda: f32,
    /// IoU threshold for matching.
    pub iou: f32,
    /// Browser settings.
    pub filter: BrowserFilter,
    /// Canvas zoom, pan and mode.
    pub view: CanvasView,
    images: ImageCache,
    editor: String,
    editor_for: Option<usize>,
    new_candidate: String,
    recent: Vec<PathBuf>,
    renderer: Renderer,
    random_seed: u64,
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
            loading: None,
            exporting: None,
            status: String::new(),
            image: None,
            region: None,
            candidate: None,
            lambda: crate::core::scores::DEFAULT_LAMBDA,
            iou: MATCH_IOU,
            filter: BrowserFilter::default(),
            view: CanvasView::default(),
            images: ImageCache::default(),
            editor: String::new(),
            editor_for: None,
            new_candidate: String::new(),
            recent,
            renderer,
            random_seed: 1,
        };
        app.open(project);
        app
    }

    /// Start opening a project folder in the background.
    pub fn open(&mut self, dir: PathBuf) {
        self.status = format!("opening {}…", dir.display());
        let d = dir.clone();
        self.loading = Some((
            dir,
            Promise::spawn_thread("open-project", move || {
                Workspace::open(&d).map_err(|e| e.to_string())
            }),
        ));
    }

    /// Whether a background job is still running.
    pub fn busy(&self) -> bool {
        self.loading.is_some()
            || self.exporting.is_some()
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
                    self.lambda = ws.project.config.scoring.lambda;
                    self.iou = ws.project.config.scoring.match_iou;
                    self.images.clear();
                    self.image = None;
                    self.region = None;
                    self.candidate = None;
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
        if let Some(p) = self.exporting.take() {
            match p.try_take() {
                Ok(Ok(msg)) | Ok(Err(msg)) => self.status = msg,
                Err(p) => self.exporting = Some(p),
            }
        }
    }

    fn apply(&mut self, edit: Edit) {
        if let Some(ws) = &mut self.ws {
            if let Err(e) = ws.apply(edit) {
                self.status = format!("not saved: {e}");
            }
        }
    }

    fn undo(&mut self, redo: bool) {
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
        self.editor_for = None;
        if let (Some(ws), Some(q)) = (&self.ws, &self.region) {
            if ws.region_index(q).is_none() {
                self.region = None;
                self.candidate = None;
            }
        }
        if let (Some(ws), Some(c)) = (&self.ws, self.candidate) {
            if c >= ws.candidates.len() {
                self.candidate = None;
            }
        }
    }

    fn select_image(&mut self, image: usize) {
        self.image = Some(image);
        self.view.fit();
        self.candidate = None;
        self.region = self.ws.as_ref().and_then(|ws| {
            let id = ws.dataset.images[image].id;
            ws.regions_of(id).first().map(|&r| ws.regions[r].id.clone())
        });
    }

    fn top_bar(&mut self, ui: &mut egui::Ui) {
        ui.horizontal(|ui| {
            if ui.button("Open project…").clicked() {
                if let Some(dir) = rfd::FileDialog::new()
                    .set_title("Open an SPR project folder")
                    .pick_folder()
                {
                    self.open(dir);
                }
            }
            ui.menu_button("Recent", |ui| {
                for p in self.recent.clone() {
                    if ui.button(p.display().to_string()).clicked() {
                        self.open(p);
                        ui.close();
                    }
                }
            });
            ui.separator();
            let (can_undo, can_redo) = self
                .ws
                .as_ref()
                .map(|w| (w.can_undo(), w.can_redo()))
                .unwrap_or_default();
            if ui
                .add_enabled(can_undo, egui::Button::new("Undo"))
                .clicked()
            {
                self.undo(false);
            }
            if ui
                .add_enabled(can_redo, egui::Button::new("Redo"))
                .clicked()
            {
                self.undo(true);
            }
            ui.separator();
            if self.busy() {
                ui.spinner();
            }
            ui.label(&self.status);
        });
    }

    fn browser(&mut self, ui: &mut egui::Ui) {
        let Some(ws) = &self.ws else { return };
        ui.heading("Images");
        ui.horizontal(|ui| {
            ui.label("objects ≥");
            ui.add(egui::DragValue::new(&mut self.filter.min_objects).range(0..=500));
        });
        let cat_name = |c: Option<usize>| {
            c.map_or("any category".to_string(), |c| {
                ws.dataset.categories[c].name.clone()
            })
        };
        egui::ComboBox::from_id_salt("category")
            .selected_text(cat_name(self.filter.category))
            .show_ui(ui, |ui| {
                ui.selectable_value(&mut self.filter.category, None, "any category");
                for (i, c) in ws.dataset.categories.iter().enumerate() {
                    ui.selectable_value(&mut self.filter.category, Some(i), &c.name);
                }
            });
        ui.checkbox(&mut self.filter.sort_worst, "worst localization first");
        ui.separator();
        let list = browser_list(ws, &self.filter, self.lambda, self.iou);
        let mut clicked = None;
        let ctx = ui.ctx().clone();
        egui::ScrollArea::vertical().show_rows(ui, 40.0, list.len(), |ui, range| {
            for &(i, score) in &list[range] {
                let info = &ws.dataset.images[i];
                ui.horizontal(|ui| {
                    let thumb = self.images.thumb(&ctx, i, || ws.dataset.image_path(i));
                    match thumb {
                        Some(Ok(t)) => {
                            ui.add(egui::Image::new(t).fit_to_exact_size(egui::vec2(48.0, 36.0)));
                        }
                        Some(Err(_)) => {
                            ui.add_sized(
                                [48.0, 36.0],
                                egui::Label::new(
                                    RichText::new("no image").small().color(colors::UNMATCHED),
                                ),
                            );
                        }
                        None => {
                            ui.add_sized([48.0, 36.0], egui::Spinner::new());
                        }
                    }
                    let n = ws.dataset.objects_of(i).len();
                    let text = match score {
                        Some(s) => format!("{}\n{n} objects · loc {s:.2}", info.file_name),
                        None => format!("{}\n{n} objects", info.file_name),
                    };
                    if ui.selectable_label(self.image == Some(i), text).clicked() {
                        clicked = Some(i);
                    }
                });
            }
        });
        if let Some(i) = clicked {
            self.select_image(i);
        }
    }

    fn inspector(&mut self, ui: &mut egui::Ui) {
        let Some(ws) = &self.ws else { return };
        ui.heading("Inspector");
        ui.add(egui::Slider::new(&mut self.lambda, 0.0..=1.0).text("λ (semantic weight)"));
        ui.add(egui::Slider::new(&mut self.iou, 0.5..=0.95).text("IoU threshold"));
        let semantic_missing = ws.scores.values().any(|s| s.semantic.is_none());
        if semantic_missing {
            ui.label(
                RichText::new("Semantic score missing for some candidates (no CLIP scorer has run): their composite is the localization score alone.")
                    .small()
                    .color(colors::MISSED),
            );
        }
        ui.separator();
        let Some(image) = self.image else {
            ui.label("Pick an image in the browser.");
            return;
        };
        let image_id = ws.dataset.images[image].id;
        let mut new_region: Option<RegionRecord> = None;
        ui.horizontal(|ui| {
            ui.label("Regions");
            if ui.button("Random region").clicked() {
                new_region = ws.random_region(image, self.random_seed);
                self.random_seed += 1;
                if new_region.is_none() {
                    self.status = "no further region can be grown on this image".into();
                }
            }
            ui.toggle_value(&mut self.view.draw_mode, "Draw region");
        });
        let mut pick_region = None;
        for r in ws.regions_of(image_id) {
            let reg = &ws.regions[r];
            let label = format!(
                "{} · {} objects · {:?}",
                reg.id,
                reg.objects.len(),
                reg.source
            );
            if ui
                .selectable_label(self.region.as_deref() == Some(&reg.id), label)
                .clicked()
            {
                pick_region = Some(reg.id.clone());
            }
        }
        if let Some(r) = new_region {
            self.region = Some(r.id.clone());
            self.candidate = None;
            self.apply(Edit::AddRegion(r));
            return;
        }
        if let Some(q) = pick_region {
            self.region = Some(q);
            self.candidate = None;
        }
        let Some(q) = self.region.clone() else { return };
        let Some(ws) = &self.ws else { return };
        ui.separator();
        ui.label(RichText::new(format!("Candidates of {q}")).strong());
        let ranking = ws.ranking(&q, self.lambda, self.iou);
        let (chosen, rejected) = ws.chosen_rejected(&q, self.lambda, self.iou);
        let mark = ws.mark_of(&q).cloned();
        let mut edits: Vec<Edit> = Vec::new();
        egui::Grid::new("candidates")
            .striped(true)
            .num_columns(6)
            .show(ui, |ui| {
                for h in ["#", "candidate", "sem", "loc", "comp", "mark"] {
                    ui.label(RichText::new(h).strong());
                }
                ui.end_row();
                for (rank, r) in ranking.iter().enumerate() {
                    let c = &ws.candidates[r.candidate];
                    ui.label(format!("{}", rank + 1));
                    let name = c.source.rsplit(':').next().unwrap_or(&c.source);
                    if ui
                        .selectable_label(
                            self.candidate == Some(r.candidate),
                            format!("{name} ({})", c.id),
                        )
                        .clicked()
                    {
                        self.candidate = Some(r.candidate);
                    }
                    ui.label(
                        r.components
                            .semantic
                            .map_or("—".to_string(), |s| format!("{s:.3}")),
                    );
                    ui.label(format!("{:.3}", r.components.localization));
                    ui.label(format!("{:.3}", r.composite));
                    ui.horizontal(|ui| {
                        let is_c = chosen == Some(r.candidate);
                        let is_r = rejected == Some(r.candidate);
                        let by_hand_c =
                            mark.as_ref().and_then(|m| m.chosen.as_ref()) == Some(&c.id);
                        let by_hand_r =
                            mark.as_ref().and_then(|m| m.rejected.as_ref()) == Some(&c.id);
                        let tag = |on: bool, hand: bool, s: &str| {
                            let t = if hand {
                                format!("{s} (hand)")
                            } else {
                                s.to_string()
                            };
                            if on {
                                RichText::new(t).strong()
                            } else {
                                RichText::new(t).weak()
                            }
                        };
                        if ui
                            .selectable_label(is_c, tag(is_c, by_hand_c, "chosen"))
                            .on_hover_text("mark as chosen (click again to clear a hand mark)")
                            .clicked()
                        {
                            let v = if by_hand_c { None } else { Some(c.id.clone()) };
                            edits.push(ws.mark_edit(&q, MarkKind::Chosen, v));
                        }
                        if ui
                            .selectable_label(is_r, tag(is_r, by_hand_r, "rejected"))
                            .on_hover_text("mark as rejected (click again to clear a hand mark)")
                            .clicked()
                        {
                            let v = if by_hand_r { None } else { Some(c.id.clone()) };
                            edits.push(ws.mark_edit(&q, MarkKind::Rejected, v));
                        }
                    });
                    ui.end_row();
                }
            });
        // Text editor of the selected candidate: re-parsed and re-scored live.
        if let Some(ci) = self.candidate.filter(|&c| c < ws.candidates.len()) {
            if self.editor_for != Some(ci) {
                self.editor = ws.candidates[ci].text.clone();
                self.editor_for = Some(ci);
            }
            ui.separator();
            ui.label(RichText::new("Text").strong());
            let resp = ui.add(
                egui::TextEdit::multiline(&mut self.editor)
                    .desired_rows(4)
                    .desired_width(f32::INFINITY),
            );
            if resp.changed() && self.editor != ws.candidates[ci].text {
                edits.push(Edit::SetText {
                    id: ws.candidates[ci].id.clone(),
                    before: ws.candidates[ci].text.clone(),
                    after: self.editor.clone(),
                });
            }
            if let Some(s) = ws.scores.get(&ws.candidates[ci].id) {
                for issue in &s.parse_issues {
                    ui.label(
                        RichText::new(issue.to_string())
                            .small()
                            .color(colors::MISSED),
                    );
                }
            }
            if chosen == Some(ci) {
                if let Some(refined) = ws.refined_text(ci) {
                    ui.label(RichText::new("Refined (as exported)").strong());
                    ui.label(RichText::new(refined).small());
                }
            }
        }
        ui.separator();
        ui.label("New candidate");
        ui.add(
            egui::TextEdit::multiline(&mut self.new_candidate)
                .desired_rows(2)
                .desired_width(f32::INFINITY)
                .hint_text("grounded text in the project's box syntax, on the crop"),
        );
        if ui.button("Add candidate").clicked() && !self.new_candidate.trim().is_empty() {
            let c = ws.manual_candidate(&q, &self.new_candidate);
            self.new_candidate.clear();
            edits.push(Edit::AddCandidate(c));
        }
        for e in edits {
            self.apply(e);
        }
    }

    fn export_button(&mut self, ui: &mut egui::Ui) {
        if ui
            .add_enabled(self.exporting.is_none(), egui::Button::new("Export pairs"))
            .clicked()
        {
            let Some(ws) = &self.ws else { return };
            // Pairs come from memory; files and crops are written off the UI thread.
            let job = ws.export_job(self.lambda);
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
    }

    fn problems(&self, ui: &mut egui::Ui) {
        let Some(ws) = &self.ws else { return };
        let image_problem = self.image.and_then(|i| self.images.error(i));
        if ws.problems.is_empty() && image_problem.is_none() {
            return;
        }
        egui::CollapsingHeader::new(format!(
            "Problems ({})",
            ws.problems.len() + usize::from(image_problem.is_some())
        ))
        .id_salt("problems")
        .default_open(false)
        .show(ui, |ui| {
            egui::ScrollArea::vertical()
                .max_height(160.0)
                .show(ui, |ui| {
                    if let Some(e) = image_problem {
                        ui.label(RichText::new(e).small().color(colors::UNMATCHED));
                    }
                    for p in &ws.problems {
                        ui.label(RichText::new(p).small());
                    }
                });
        });
    }

    fn canvas(&mut self, ui: &mut egui::Ui) {
        let ctx = ui.ctx().clone();
        let Some(ws) = &self.ws else {
            ui.centered_and_justified(|ui| {
                ui.label(if self.loading.is_some() {
                    "Opening project…"
                } else {
                    "No project open"
                })
            });
            return;
        };
        let Some(image) = self.image else {
            ui.centered_and_justified(|ui| ui.label("Pick an image in the browser."));
            return;
        };
        let info = &ws.dataset.images[image];
        let size = [info.width as f32, info.height as f32];
        let boxes = overlay_boxes(
            ws,
            image,
            self.region.as_deref(),
            self.candidate,
            self.lambda,
            self.iou,
        );
        let tex = self
            .images
            .full(&ctx, image, || ws.dataset.image_path(image))
            .map(|r| r.as_ref().map_err(String::as_str));
        let (texture, error) = match tex {
            Some(Ok(t)) => (Some(t.clone()), None),
            Some(Err(e)) => (None, Some(e.to_string())),
            None => (None, None),
        };
        let action = canvas::show(
            ui,
            &mut self.view,
            texture.as_ref(),
            error.as_deref(),
            size,
            &boxes,
            self.renderer,
        );
        match action {
            Some(CanvasAction::DrewRegion(b)) => {
                let r = ws.manual_region(image, b);
                self.status = format!("region {} drawn: {} objects", r.id, r.objects.len());
                self.region = Some(r.id.clone());
                self.candidate = None;
                self.apply(Edit::AddRegion(r));
            }
            Some(CanvasAction::MovedBox { index, to }) => {
                if let Some(e) = self.candidate.and_then(|c| ws.move_box_edit(c, index, to)) {
                    self.editor_for = None;
                    self.apply(e);
                }
            }
            None => {}
        }
    }
}

/// The browser's rows: (image index, image localization score), filtered and sorted.
pub fn browser_list(
    ws: &Workspace,
    f: &BrowserFilter,
    lambda: f32,
    iou: f32,
) -> Vec<(usize, Option<f32>)> {
    let mut rows: Vec<(usize, Option<f32>)> = (0..ws.dataset.images.len())
        .filter(|&i| ws.dataset.objects_of(i).len() >= f.min_objects)
        .filter(|&i| {
            f.category.is_none_or(|c| {
                ws.dataset
                    .objects_of(i)
                    .any(|o| ws.dataset.objects.category[o] as usize == c)
            })
        })
        .map(|i| {
            (
                i,
                if f.sort_worst {
                    ws.image_localization(ws.dataset.images[i].id, lambda, iou)
                } else {
                    None
                },
            )
        })
        .collect();
    if f.sort_worst {
        rows.sort_by(|a, b| {
            a.1.unwrap_or(f32::INFINITY)
                .total_cmp(&b.1.unwrap_or(f32::INFINITY))
        });
    }
    rows
}

/// Everything drawn over the image: ground truth, crowd boxes, the region
/// and its crop, and the selected candidate's boxes coloured by their match.
pub fn overlay_boxes(
    ws: &Workspace,
    image: usize,
    region: Option<&str>,
    candidate: Option<usize>,
    lambda: f32,
    iou: f32,
) -> Vec<OverlayBox> {
    let ds = &ws.dataset;
    let mut out = Vec::new();
    let pre = ws.project.config.dataset.preprocess();
    let region = region
        .and_then(|q| ws.region_index(q))
        .map(|r| &ws.regions[r]);
    let ranked = region
        .map(|r| ws.ranking(&r.id, lambda, iou))
        .unwrap_or_default();
    let selected = candidate.and_then(|c| ranked.iter().find(|r| r.candidate == c));
    let region_objects: Vec<u64> = region.map(|r| r.objects.clone()).unwrap_or_default();
    for o in ds.objects_of(image) {
        let b = ds.objects.bbox[o];
        let name = ds.category_name(o).to_string();
        if ds.objects.crowd[o] {
            out.push(OverlayBox {
                bbox: b,
                style: BoxInstance::outline(b.into(), colors::CROWD, 1.0).dashed(4.0),
                label: Some(format!("{name} (crowd)")),
                tooltip: Some(format!("{name}: crowd box, kept out of matching")),
                candidate_box: None,
            });
            continue;
        }
        let in_region = region_objects.contains(&ds.objects.id[o]);
        let gt_index = region_objects.iter().position(|&id| id == ds.objects.id[o]);
        let matched =
            selected.and_then(|s| gt_index.and_then(|g| s.loc.matches.iter().find(|m| m.gt == g)));
        let (color, dash, tooltip) = match (selected.is_some() && in_region, matched) {
            (true, Some(m)) => (
                colors::GT,
                0.0,
                format!(
                    "{name} (ground truth)\nmatched by box {} at IoU {:.3}",
                    m.pred + 1,
                    m.iou
                ),
            ),
            (true, None) => (
                colors::MISSED,
                6.0,
                format!("{name} (ground truth)\nmissed at IoU ≥ {iou:.2}"),
            ),
            _ => {
                let small = if ws.dataset.is_usable(o, &pre) {
                    ""
                } else {
                    " · below the area limit"
                };
                (colors::GT, 0.0, format!("{name} (ground truth){small}"))
            }
        };
        out.push(OverlayBox {
            bbox: b,
            style: BoxInstance::outline(b.into(), color, if in_region { 2.0 } else { 1.0 })
                .dashed(dash),
            label: Some(name),
            tooltip: Some(tooltip),
            candidate_box: None,
        });
    }
    if let Some(r) = region {
        out.push(OverlayBox {
            bbox: r.crop,
            style: BoxInstance::outline(r.crop.into(), colors::REGION, 1.0).dashed(8.0),
            label: None,
            tooltip: None,
            candidate_box: None,
        });
        out.push(OverlayBox {
            bbox: r.region,
            style: BoxInstance::outline(r.region.into(), colors::REGION, 2.5),
            label: Some(format!("region {}", r.id)),
            tooltip: None,
            candidate_box: None,
        });
    }
    if let (Some(s), Some(r)) = (selected, region) {
        let gt = ws.region_gt(r).unwrap_or_default();
        if let Some(score) = ws.scores.get(&ws.candidates[s.candidate].id) {
            for (i, b) in score.boxes.iter().enumerate() {
                let unmatched = s.loc.unmatched_preds.contains(&i);
                let best = gt.iter().map(|g| g.iou(*b)).fold(0.0f32, f32::max);
                let color = if unmatched {
                    colors::UNMATCHED
                } else {
                    colors::MATCHED
                };
                let what = if unmatched {
                    "matches no region object"
                } else {
                    "matches a region object"
                };
                out.push(OverlayBox {
                    bbox: *b,
                    style: BoxInstance::outline((*b).into(), color, 2.5).filled(0.10),
                    label: Some(format!("{}", i + 1)),
                    tooltip: Some(format!("box {} of the candidate: {what}\nbest IoU with the region's objects {best:.3}", i + 1)),
                    candidate_box: Some(i),
                });
            }
            // The detector's boxes for the candidate's phrases: predictions
            // after the written ones.
            let written = score.boxes.len();
            for (j, d) in score.detections.iter().enumerate() {
                let unmatched = s.loc.unmatched_preds.contains(&(written + j));
                let best = gt.iter().map(|g| g.iou(d.bbox)).fold(0.0f32, f32::max);
                let fill = if unmatched { 0.0 } else { 0.12 };
                out.push(OverlayBox {
                    bbox: d.bbox,
                    style: BoxInstance::outline(d.bbox.into(), colors::DETECTED, 1.5)
                        .dashed(5.0)
                        .filled(fill),
                    label: Some(format!("det {}", j + 1)),
                    tooltip: Some(format!(
                        "detector box {} for \"{}\" (confidence {:.2}): {}\nbest IoU with the region's objects {best:.3}",
                        j + 1,
                        d.phrase,
                        d.score,
                        if unmatched { "matches no region object" } else { "matches a region object" }
                    )),
                    candidate_box: None,
                });
            }
        }
    }
    out
}

impl eframe::App for WorkbenchApp {
    fn ui(&mut self, ui: &mut egui::Ui, _frame: &mut eframe::Frame) {
        self.poll_jobs();
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
            self.undo(true);
        } else if undo {
            self.undo(false);
        }
        egui::Panel::top("top").show(ui, |ui| self.top_bar(ui));
        egui::Panel::left("browser")
            .default_size(250.0)
            .min_size(250.0)
            .resizable(true)
            .show(ui, |ui| self.browser(ui));
        egui::Panel::right("inspector")
            .default_size(420.0)
            .resizable(true)
            .show(ui, |ui| {
                egui::ScrollArea::vertical().show(ui, |ui| {
                    self.inspector(ui);
                    ui.separator();
                    self.export_button(ui);
                    self.problems(ui);
                });
            });
        egui::CentralPanel::default().show(ui, |ui| self.canvas(ui));
        if self.busy() {
            ctx.request_repaint_after(std::time::Duration::from_millis(50));
        }
    }

    fn save(&mut self, storage: &mut dyn eframe::Storage) {
        eframe::set_value(storage, RECENT_KEY, &self.recent);
    }
}
