//! The annotation view: the browser on the left, the canvas in the middle,
//! the inspector on the right, and the keyboard habits of annotation
//! tools (see [`SHORTCUTS`]).

mod browser;
mod generate;
mod inspector;
mod overlays;

pub use browser::{browser_list, BrowserFilter};
pub use generate::{GenerateJob, GUI_OUT};
pub use overlays::overlay_boxes;

use crate::app::canvas::{self, CanvasAction, CanvasView, Renderer};
use crate::app::images::ImageCache;
use crate::app::state::{Command, Live, Selection};
use crate::core::workspace::{Edit, MarkKind, Workspace};

/// What a panel of the annotation view reads and where it writes.
pub struct Cx<'a> {
    /// The open project.
    pub ws: &'a Workspace,
    /// What is selected.
    pub sel: &'a Selection,
    /// λ and IoU (the sliders change them directly).
    pub live: &'a mut Live,
    /// Decoded images.
    pub images: &'a mut ImageCache,
    /// Overlay renderer.
    pub renderer: Renderer,
    /// Whether an export is running.
    pub exporting: bool,
    /// Where panels push what they ask for.
    pub commands: &'a mut Vec<Command>,
}

/// The keyboard shortcuts, as the help window lists them.
pub const SHORTCUTS: &[(&str, &str)] = &[
    ("A / ←", "previous image (browser order)"),
    ("D / →", "next image"),
    ("1 … 9", "pick the candidate of that rank"),
    ("C", "mark the selected candidate chosen (again: clear)"),
    ("R", "mark the selected candidate rejected (again: clear)"),
    ("Delete", "delete the selected hand-written candidate, else the selected region if it has no candidates"),
    ("H", "hide / show the overlays"),
    ("Ctrl+Z / Ctrl+Shift+Z", "undo / redo"),
    ("F1 / ?", "this help"),
];

/// The annotation view's own state.
#[derive(Debug, Default)]
pub struct AnnotateView {
    /// The browser (filters and cached rows).
    pub browser: browser::Browser,
    /// The inspector (text editor state).
    pub inspector: inspector::Inspector,
    /// Canvas zoom, pan and mode.
    pub view: CanvasView,
    /// Overlays hidden (H).
    pub hide_overlays: bool,
    /// The shortcuts window is open.
    pub show_help: bool,
    /// The model "Generate" runs (a folder relative to the project, or a
    /// hub id).
    pub model: String,
    /// The generation running for a region.
    pub generating: Option<GenerateJob>,
}

impl AnnotateView {
    /// The three panels.
    pub fn show(&mut self, ui: &mut egui::Ui, cx: &mut Cx<'_>) {
        self.keys(ui.ctx(), cx);
        egui::Panel::left("browser")
            .default_size(250.0)
            .min_size(250.0)
            .resizable(true)
            .show(ui, |ui| self.browser.show(ui, cx));
        egui::Panel::right("inspector")
            .default_size(440.0)
            .resizable(true)
            .show(ui, |ui| {
                // Export and problems first, where a long candidate list
                // cannot push them out of sight.
                ui.horizontal(|ui| {
                    inspector::export_button(ui, cx);
                    if ui.button("Shortcuts").clicked() {
                        self.show_help = true;
                    }
                });
                inspector::problems(ui, cx);
                ui.separator();
                egui::ScrollArea::vertical().show(ui, |ui| {
                    self.inspector.show(ui, cx, &mut self.view.draw_mode);
                    ui.separator();
                    self.generate_controls(ui, cx);
                });
            });
        egui::CentralPanel::default().show(ui, |ui| self.canvas(ui, cx));
        self.help(ui.ctx());
    }

    /// Keys, unless a text field has the keyboard.
    fn keys(&mut self, ctx: &egui::Context, cx: &mut Cx<'_>) {
        if ctx.egui_wants_keyboard_input() {
            return;
        }
        use egui::Key;
        let pressed = |k: Key| ctx.input_mut(|i| i.consume_key(egui::Modifiers::NONE, k));
        if pressed(Key::F1)
            || ctx.input(|i| {
                i.events
                    .iter()
                    .any(|e| matches!(e, egui::Event::Text(t) if t == "?"))
            })
        {
            self.show_help = !self.show_help;
        }
        if pressed(Key::H) {
            self.hide_overlays = !self.hide_overlays;
        }
        let step = if pressed(Key::A) || pressed(Key::ArrowLeft) {
            -1
        } else if pressed(Key::D) || pressed(Key::ArrowRight) {
            1
        } else {
            0
        };
        if step != 0 {
            let (l, t) = (cx.live.lambda, cx.live.iou);
            if let Some(i) = self.browser.neighbour(cx.ws, l, t, cx.sel.image, step) {
                if Some(i) != cx.sel.image {
                    cx.commands.push(Command::SelectImage(i));
                }
            }
        }
        let Some(q) = cx.sel.region.clone() else {
            return;
        };
        let digits = [
            Key::Num1,
            Key::Num2,
            Key::Num3,
            Key::Num4,
            Key::Num5,
            Key::Num6,
            Key::Num7,
            Key::Num8,
            Key::Num9,
        ];
        if let Some(k) = digits.iter().position(|&k| pressed(k)) {
            let ranking = cx.ws.ranking(&q, cx.live.lambda, cx.live.iou);
            if let Some(r) = ranking.get(k) {
                cx.commands
                    .push(Command::SelectCandidate(Some(r.candidate)));
            }
        }
        let ws = cx.ws;
        if let Some(ci) = cx.sel.candidate.filter(|&c| c < ws.candidates.len()) {
            let id = &ws.candidates[ci].id;
            for (key, kind) in [(Key::C, MarkKind::Chosen), (Key::R, MarkKind::Rejected)] {
                if pressed(key) {
                    cx.commands
                        .push(Command::Apply(Box::new(ws.toggle_mark_edit(&q, kind, id))));
                }
            }
        }
        if pressed(Key::Delete) {
            let edit = match cx.sel.candidate {
                Some(ci) => ws.remove_candidate_edit(ci),
                None => ws.remove_region_edit(&q),
            };
            match edit {
                Ok(e) => cx.commands.push(Command::Apply(Box::new(e))),
                Err(why) => cx.commands.push(Command::Status(why)),
            }
        }
    }

    /// "Generate" for the selected region, its progress and Cancel.
    fn generate_controls(&mut self, ui: &mut egui::Ui, cx: &mut Cx<'_>) {
        ui.label(egui::RichText::new("Generate with a model").strong());
        ui.horizontal(|ui| {
            let l = ui.label("model");
            ui.add(
                egui::TextEdit::singleline(&mut self.model)
                    .hint_text("llava-hf folder or hub id")
                    .desired_width(220.0),
            )
            .labelled_by(l.id);
        });
        if let Some(job) = &self.generating {
            let p = job.progress();
            ui.horizontal(|ui| {
                ui.spinner();
                ui.label(format!(
                    "{}: {}/{} sequences · {:.0} tokens/s{}",
                    job.query,
                    p.done,
                    p.total,
                    p.tokens as f64 / p.seconds.max(1e-9),
                    if job.cancelled() {
                        " · cancelling"
                    } else {
                        ""
                    }
                ));
                if ui.button("Cancel generation").clicked() {
                    job.cancel();
                }
            });
            ui.ctx()
                .request_repaint_after(std::time::Duration::from_millis(100));
            return;
        }
        let Some(q) = cx.sel.region.clone() else {
            ui.label("Select a region to generate candidates for it.");
            return;
        };
        let ready = !self.model.trim().is_empty();
        if ui
            .add_enabled(ready, egui::Button::new("Generate"))
            .on_hover_text("the project's [generate] prompts and samples, for this region")
            .clicked()
        {
            match GenerateJob::start(cx.ws.root(), self.model.trim(), &q) {
                Ok(j) => {
                    cx.commands
                        .push(Command::Status(format!("generating for {q}…")));
                    self.generating = Some(j);
                }
                Err(e) => cx
                    .commands
                    .push(Command::Status(format!("cannot generate: {e}"))),
            }
        }
    }

    fn help(&mut self, ctx: &egui::Context) {
        let mut open = self.show_help;
        egui::Window::new("Keyboard shortcuts")
            .open(&mut open)
            .collapsible(false)
            .resizable(false)
            .show(ctx, |ui| {
                egui::Grid::new("shortcuts").striped(true).show(ui, |ui| {
                    for (k, what) in SHORTCUTS {
                        ui.label(egui::RichText::new(*k).monospace().strong());
                        ui.label(*what);
                        ui.end_row();
                    }
                });
            });
        self.show_help = open;
    }

    fn canvas(&mut self, ui: &mut egui::Ui, cx: &mut Cx<'_>) {
        let ctx = ui.ctx().clone();
        let ws = cx.ws;
        let Some(image) = cx.sel.image else {
            ui.centered_and_justified(|ui| ui.label("Pick an image in the browser."));
            return;
        };
        let info = &ws.dataset.images[image];
        let size = [info.width as f32, info.height as f32];
        let boxes = if self.hide_overlays {
            Vec::new()
        } else {
            overlay_boxes(
                ws,
                image,
                cx.sel.region.as_deref(),
                cx.sel.candidate,
                cx.live.lambda,
                cx.live.iou,
            )
        };
        let (texture, error) = match cx.images.full(&ctx, &ws.dataset.image_path(image)) {
            Some(Ok(t)) => (Some(t.clone()), None),
            Some(Err(e)) => (None, Some(e.clone())),
            None => (None, None),
        };
        let action = canvas::show(
            ui,
            &mut self.view,
            texture.as_ref(),
            error.as_deref(),
            size,
            &boxes,
            cx.renderer,
        );
        match action {
            Some(CanvasAction::DrewRegion(b)) => {
                let r = ws.manual_region(image, b);
                cx.commands.push(Command::Status(format!(
                    "region {} drawn: {} objects",
                    r.id,
                    r.objects.len()
                )));
                let id = r.id.clone();
                cx.commands
                    .push(Command::Apply(Box::new(Edit::AddRegion(r))));
                cx.commands.push(Command::SelectRegion(id));
            }
            Some(CanvasAction::MovedBox { index, to }) => {
                if let Some(e) = cx
                    .sel
                    .candidate
                    .and_then(|c| ws.move_box_edit(c, index, to))
                {
                    self.inspector.editor_for = None;
                    cx.commands.push(Command::Apply(Box::new(e)));
                }
            }
            None => {}
        }
    }
}
