//! The image browser: filters, "worst localization first", thumbnails.
//!
//! The filtered, sorted list is cached under everything it depends on
//! (workspace revision, filter, λ, IoU), so a frame costs the rows on
//! screen, not a pass over every image of the dataset.

use egui::RichText;

use super::Cx;
use crate::app::canvas::colors;
use crate::app::state::Command;
use crate::core::workspace::Workspace;

/// Filters and sorting of the browser.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct BrowserFilter {
    /// Show images with at least this many objects.
    pub min_objects: usize,
    /// Show images holding this category (index into the dataset's categories).
    pub category: Option<usize>,
    /// Worst localization first.
    pub sort_worst: bool,
}

/// The browser's settings and its cached rows.
#[derive(Debug, Default)]
pub struct Browser {
    /// Filters and sorting.
    pub filter: BrowserFilter,
    cache: Option<(CacheKey, Vec<Row>)>,
}

/// (image index, image localization score when sorting by it).
type Row = (usize, Option<f32>);
type CacheKey = (u64, BrowserFilter, u32, u32, usize);

impl Browser {
    /// The rows to show, from the cache when nothing they depend on changed.
    pub fn rows(&mut self, ws: &Workspace, lambda: f32, iou: f32) -> &[(usize, Option<f32>)] {
        let key = (
            ws.revision(),
            self.filter.clone(),
            lambda.to_bits(),
            iou.to_bits(),
            ws.dataset.images.len(),
        );
        if self.cache.as_ref().is_none_or(|(k, _)| *k != key) {
            let rows = browser_list(ws, &self.filter, lambda, iou);
            self.cache = Some((key, rows));
        }
        self.cache
            .as_ref()
            .map(|(_, r)| r.as_slice())
            .unwrap_or(&[])
    }

    /// Forget the cached rows (another project was opened).
    pub fn clear(&mut self) {
        self.cache = None;
    }

    /// The panel.
    pub fn show(&mut self, ui: &mut egui::Ui, cx: &mut Cx<'_>) {
        let ws = cx.ws;
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
        let ctx = ui.ctx().clone();
        let (lambda, iou) = (cx.live.lambda, cx.live.iou);
        let selected = cx.sel.image;
        let rows = self.rows(ws, lambda, iou);
        let images = &mut *cx.images;
        let mut clicked = None;
        egui::ScrollArea::vertical().show_rows(ui, 40.0, rows.len(), |ui, range| {
            for &(i, score) in &rows[range] {
                let info = &ws.dataset.images[i];
                ui.horizontal(|ui| {
                    match images.thumb(&ctx, &ws.dataset.image_path(i)) {
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
                    if ui.selectable_label(selected == Some(i), text).clicked() {
                        clicked = Some(i);
                    }
                });
            }
        });
        if let Some(i) = clicked {
            cx.commands.push(Command::SelectImage(i));
        }
    }

    /// The image `step` rows away from the selected one in the browser's
    /// order (the first row when nothing is selected), clamped at the ends.
    pub fn neighbour(
        &mut self,
        ws: &Workspace,
        lambda: f32,
        iou: f32,
        current: Option<usize>,
        step: isize,
    ) -> Option<usize> {
        let rows = self.rows(ws, lambda, iou);
        if rows.is_empty() {
            return None;
        }
        let pos = current.and_then(|c| rows.iter().position(|&(i, _)| i == c));
        let next = match pos {
            None => 0,
            Some(p) => (p as isize + step).clamp(0, rows.len() as isize - 1) as usize,
        };
        Some(rows[next].0)
    }
}

/// The browser's rows: (image index, image localization score), filtered and sorted.
pub fn browser_list(
    ws: &Workspace,
    f: &BrowserFilter,
    lambda: f32,
    iou: f32,
) -> Vec<(usize, Option<f32>)> {
    let scores = f.sort_worst.then(|| ws.image_localizations(lambda, iou));
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
            let id = ws.dataset.images[i].id;
            (i, scores.as_ref().and_then(|m| m.get(&id).copied()))
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
