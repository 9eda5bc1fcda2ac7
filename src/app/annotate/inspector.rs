//! The inspector: λ and IoU sliders, the image's regions, the selected
//! region's candidates re-ranked live (an `egui_extras` table), chosen /
//! rejected marks, the text editor with its parse issues and the refined
//! text, new hand-written candidates, export and the problems list.

use egui::RichText;
use egui_extras::{Column, TableBuilder};

use super::Cx;
use crate::app::canvas::colors;
use crate::app::state::Command;
use crate::core::workspace::{Edit, MarkKind};

/// The inspector's own state: the text being edited and the new candidate.
#[derive(Debug)]
pub struct Inspector {
    /// The selected candidate's text as typed.
    pub editor: String,
    /// The candidate `editor` holds (reloaded when the selection changes).
    pub editor_for: Option<usize>,
    new_candidate: String,
    random_seed: u64,
}

impl Default for Inspector {
    fn default() -> Self {
        Self {
            editor: String::new(),
            editor_for: None,
            new_candidate: String::new(),
            random_seed: 1,
        }
    }
}

impl Inspector {
    /// The panel. `draw_mode` is the canvas's region-drawing toggle.
    pub fn show(&mut self, ui: &mut egui::Ui, cx: &mut Cx<'_>, draw_mode: &mut bool) {
        let ws = cx.ws;
        ui.heading("Inspector");
        ui.add(egui::Slider::new(&mut cx.live.lambda, 0.0..=1.0).text("λ (semantic weight)"));
        ui.add(egui::Slider::new(&mut cx.live.iou, 0.5..=0.95).text("IoU threshold"));
        let (lambda, iou) = (cx.live.lambda, cx.live.iou);
        if ws.scores.values().any(|s| s.semantic.is_none()) {
            ui.label(
                RichText::new("Semantic score missing for some candidates (no CLIP scorer has run): their composite is the localization score alone.")
                    .small()
                    .color(colors::MISSED),
            );
        }
        ui.separator();
        let Some(image) = cx.sel.image else {
            ui.label("Pick an image in the browser.");
            return;
        };
        let image_id = ws.dataset.images[image].id;
        ui.horizontal(|ui| {
            ui.label("Regions");
            if ui.button("Random region").clicked() {
                match ws.random_region(image, self.random_seed) {
                    Some(r) => {
                        let id = r.id.clone();
                        cx.commands
                            .push(Command::Apply(Box::new(Edit::AddRegion(r))));
                        cx.commands.push(Command::SelectRegion(id));
                    }
                    None => cx.commands.push(Command::Status(
                        "no further region can be grown on this image".into(),
                    )),
                }
                self.random_seed += 1;
            }
            ui.toggle_value(draw_mode, "Draw region");
        });
        for r in ws.regions_of(image_id) {
            let reg = &ws.regions[r];
            let label = format!(
                "{} · {} objects · {:?}",
                reg.id,
                reg.objects.len(),
                reg.source
            );
            if ui
                .selectable_label(cx.sel.region.as_deref() == Some(&reg.id), label)
                .clicked()
            {
                cx.commands.push(Command::SelectRegion(reg.id.clone()));
            }
        }
        let Some(q) = cx.sel.region.clone() else {
            return;
        };
        if ws.region_index(&q).is_none() {
            return;
        }
        ui.separator();
        ui.label(RichText::new(format!("Candidates of {q}")).strong());
        self.candidates(ui, cx, &q, lambda, iou);
        self.editor(ui, cx, &q, lambda, iou);
    }

    fn candidates(&mut self, ui: &mut egui::Ui, cx: &mut Cx<'_>, q: &str, lambda: f32, iou: f32) {
        let ws = cx.ws;
        let ranking = ws.ranking(q, lambda, iou);
        let (chosen, rejected) = ws.chosen_rejected(q, lambda, iou);
        let selected = cx.sel.candidate;
        let commands = &mut *cx.commands;
        TableBuilder::new(ui)
            .id_salt("candidates")
            .striped(true)
            .vscroll(false)
            .cell_layout(egui::Layout::left_to_right(egui::Align::Center))
            .column(Column::exact(22.0))
            .column(Column::auto().at_least(130.0).clip(true))
            .columns(Column::exact(44.0), 3)
            .column(Column::remainder().at_least(120.0))
            .header(20.0, |mut h| {
                for t in ["#", "candidate", "sem", "loc", "comp", "mark"] {
                    h.col(|ui| {
                        ui.label(RichText::new(t).strong());
                    });
                }
            })
            .body(|mut body| {
                for (rank, r) in ranking.iter().enumerate() {
                    let c = &ws.candidates[r.candidate];
                    body.row(22.0, |mut row| {
                        row.col(|ui| {
                            ui.label(format!("{}", rank + 1));
                        });
                        row.col(|ui| {
                            let name = c.source.rsplit(':').next().unwrap_or(&c.source);
                            if ui
                                .selectable_label(
                                    selected == Some(r.candidate),
                                    format!("{name} ({})", c.id),
                                )
                                .clicked()
                            {
                                commands.push(Command::SelectCandidate(Some(r.candidate)));
                            }
                        });
                        row.col(|ui| {
                            ui.label(
                                r.components
                                    .semantic
                                    .map_or("—".to_string(), |s| format!("{s:.3}")),
                            );
                        });
                        row.col(|ui| {
                            ui.label(format!("{:.3}", r.components.localization));
                        });
                        row.col(|ui| {
                            ui.label(format!("{:.3}", r.composite));
                        });
                        row.col(|ui| {
                            let marks = [
                                (MarkKind::Chosen, chosen, "chosen", "C"),
                                (MarkKind::Rejected, rejected, "rejected", "R"),
                            ];
                            for (kind, effective, name, key) in marks {
                                let on = effective == Some(r.candidate);
                                let hand = ws.hand_mark(q, kind) == Some(&c.id);
                                let text = if hand {
                                    format!("{name} (hand)")
                                } else {
                                    name.to_string()
                                };
                                let text = if on {
                                    RichText::new(text).strong()
                                } else {
                                    RichText::new(text).weak()
                                };
                                if ui
                                    .selectable_label(on, text)
                                    .on_hover_text(format!(
                                        "mark as {name} ({key}; click again to clear a hand mark)"
                                    ))
                                    .clicked()
                                {
                                    commands.push(Command::Apply(Box::new(
                                        ws.toggle_mark_edit(q, kind, &c.id),
                                    )));
                                }
                            }
                        });
                    });
                }
            });
    }

    /// The selected candidate's text (typing is previewed; the session
    /// ends when the editor loses focus), then a new candidate.
    fn editor(&mut self, ui: &mut egui::Ui, cx: &mut Cx<'_>, q: &str, lambda: f32, iou: f32) {
        let ws = cx.ws;
        if let Some(ci) = cx.sel.candidate.filter(|&c| c < ws.candidates.len()) {
            if self.editor_for != Some(ci) {
                self.editor = ws.candidates[ci].text.clone();
                self.editor_for = Some(ci);
            }
            ui.separator();
            ui.label(RichText::new("Text").strong());
            let resp = ui.add(
                egui::TextEdit::multiline(&mut self.editor)
                    .id_salt("candidate-text")
                    .desired_rows(4)
                    .desired_width(f32::INFINITY),
            );
            if resp.changed() && self.editor != ws.candidates[ci].text {
                cx.commands.push(Command::PreviewText {
                    id: ws.candidates[ci].id.clone(),
                    text: self.editor.clone(),
                });
            }
            if resp.lost_focus() {
                cx.commands.push(Command::CommitText);
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
            if ws.chosen_rejected(q, lambda, iou).0 == Some(ci) {
                if let Some(refined) = ws.refined_text(ci, iou) {
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
            let c = ws.manual_candidate(q, &self.new_candidate);
            self.new_candidate.clear();
            cx.commands
                .push(Command::Apply(Box::new(Edit::AddCandidate(c))));
        }
    }
}

/// The export button: pairs and the TRL layout at the λ and IoU on screen.
pub fn export_button(ui: &mut egui::Ui, cx: &mut Cx<'_>) {
    if ui
        .add_enabled(!cx.exporting, egui::Button::new("Export pairs"))
        .on_hover_text("pairs.jsonl and export/ at the λ and IoU threshold shown")
        .clicked()
    {
        cx.commands.push(Command::Export);
    }
}

/// Problems met opening the project, and the selected image's decode error.
pub fn problems(ui: &mut egui::Ui, cx: &mut Cx<'_>) {
    let ws = cx.ws;
    let image_problem = cx
        .sel
        .image
        .and_then(|i| cx.images.error(&ws.dataset.image_path(i)));
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
