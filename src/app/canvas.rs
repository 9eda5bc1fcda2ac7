//! The image canvas: the image as a texture, zoom to cursor, pan, fit, and
//! the overlays (ground truth, the selected candidate's boxes coloured by
//! their match at the live IoU threshold, missed ground truth dashed, the
//! region and its crop), drawn by our wgpu pipeline in one draw call
//! (`overlay.rs`). Labels and the hover tooltip are egui text.
//!
//! Interactions: wheel zooms about the cursor; dragging pans, or draws a new
//! region in draw mode; dragging a corner handle of a selected candidate's
//! box moves that corner. The canvas only reports what the user did
//! ([`CanvasAction`]); the app turns it into a workspace edit.

use std::sync::Arc;

use egui::{Color32, Pos2, Rect, Sense, Stroke, Vec2};

use crate::app::overlay::{self, BoxInstance, Globals};
use crate::core::geometry::Bbox;

/// Colours of the overlay kinds.
pub mod colors {
    use egui::Color32;
    /// Ground-truth objects.
    pub const GT: Color32 = Color32::from_rgb(235, 235, 235);
    /// Ground truth missed at the live threshold.
    pub const MISSED: Color32 = Color32::from_rgb(255, 150, 30);
    /// A prediction matching a ground-truth box.
    pub const MATCHED: Color32 = Color32::from_rgb(40, 210, 90);
    /// A prediction matching nothing.
    pub const UNMATCHED: Color32 = Color32::from_rgb(240, 50, 60);
    /// The region.
    pub const REGION: Color32 = Color32::from_rgb(255, 220, 0);
    /// Crowd boxes (kept out of matching).
    pub const CROWD: Color32 = Color32::from_rgb(150, 150, 150);
    /// A detector's box for a phrase of the candidate (dashed; its match
    /// colours its fill).
    pub const DETECTED: Color32 = Color32::from_rgb(200, 120, 255);
    /// A region being drawn.
    pub const DRAWING: Color32 = Color32::from_rgb(80, 180, 255);
}

/// A box shown on the canvas, with what its tooltip says.
#[derive(Clone, Debug)]
pub struct OverlayBox {
    /// Image pixels.
    pub bbox: Bbox,
    /// Its instance (colour, stroke, dash).
    pub style: BoxInstance,
    /// Text drawn at its top-left, if any.
    pub label: Option<String>,
    /// Hover text.
    pub tooltip: Option<String>,
    /// Index among the selected candidate's boxes, when it is one (has handles).
    pub candidate_box: Option<usize>,
}

/// What the user did on the canvas this frame.
#[derive(Clone, Debug, PartialEq)]
pub enum CanvasAction {
    /// A region was drawn (image pixels).
    DrewRegion(Bbox),
    /// Box `index` of the selected candidate was moved to `to` (image pixels).
    MovedBox {
        /// Which box.
        index: usize,
        /// Where to.
        to: Bbox,
    },
}

/// Zoom and pan of the canvas, and the drag in progress.
#[derive(Clone, Debug, Default)]
pub struct CanvasView {
    /// Screen points per image pixel (0 = fit on next frame).
    pub zoom: f32,
    /// Screen offset of the image origin from the canvas's top-left.
    pub pan: Vec2,
    /// Draw mode: a primary drag draws a region instead of panning.
    pub draw_mode: bool,
    /// The canvas rectangle of the last frame (screen points).
    pub rect: Option<Rect>,
    drawing: Option<Pos2>,
    handle: Option<(usize, usize, Bbox)>,
}

impl CanvasView {
    /// Fit the image on the next frame.
    pub fn fit(&mut self) {
        self.zoom = 0.0;
    }

    /// Where image pixel `p` was on screen in the last frame.
    pub fn screen_from_image_last(&self, p: Pos2) -> Pos2 {
        self.screen_from_image(self.rect.unwrap_or(Rect::ZERO), p)
    }

    fn screen_from_image(&self, rect: Rect, p: Pos2) -> Pos2 {
        rect.min + self.pan + p.to_vec2() * self.zoom
    }

    fn image_from_screen(&self, rect: Rect, p: Pos2) -> Pos2 {
        ((p - rect.min - self.pan) / self.zoom).to_pos2()
    }

    fn screen_rect(&self, rect: Rect, b: Bbox) -> Rect {
        Rect::from_min_max(
            self.screen_from_image(rect, Pos2::new(b.x1, b.y1)),
            self.screen_from_image(rect, Pos2::new(b.x2, b.y2)),
        )
    }
}

/// Which overlay renderer to use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Renderer {
    /// Our instanced wgpu pipeline.
    Wgpu,
    /// egui's painter (fallback without wgpu, and the benchmark's baseline).
    Painter,
}

/// Paint boxes with egui's painter (one tessellated rectangle each).
pub fn paint_with_painter(
    painter: &egui::Painter,
    to_screen: impl Fn(Bbox) -> Rect,
    boxes: &[BoxInstance],
) {
    for b in boxes {
        let [r, g, bl, a] = b.color;
        let c = Color32::from_rgba_unmultiplied(
            (r * 255.0) as u8,
            (g * 255.0) as u8,
            (bl * 255.0) as u8,
            (a * 255.0) as u8,
        );
        let rect = to_screen(Bbox::from(b.rect));
        if b.fill_alpha > 0.0 {
            painter.rect_filled(rect, 0.0, c.gamma_multiply(b.fill_alpha));
        }
        painter.rect_stroke(
            rect,
            0.0,
            Stroke::new(b.stroke_px, c),
            egui::StrokeKind::Middle,
        );
    }
}

/// Show the canvas for an image of `size` pixels. `texture` is `None` while
/// the image loads (a spinner is shown) and `error` is shown instead of the
/// image when decoding failed.
pub fn show(
    ui: &mut egui::Ui,
    view: &mut CanvasView,
    texture: Option<&egui::TextureHandle>,
    error: Option<&str>,
    size: [f32; 2],
    boxes: &[OverlayBox],
    renderer: Renderer,
) -> Option<CanvasAction> {
    let (rect, response) = ui.allocate_exact_size(ui.available_size(), Sense::click_and_drag());
    view.rect = Some(rect);
    let painter = ui.painter_at(rect);
    painter.rect_filled(rect, 0.0, Color32::from_gray(24));
    if size[0] <= 0.0 || size[1] <= 0.0 {
        return None;
    }
    if view.zoom <= 0.0 {
        view.zoom = (rect.width() / size[0])
            .min(rect.height() / size[1])
            .max(1e-3);
        view.pan = (rect.size() - Vec2::new(size[0], size[1]) * view.zoom) * 0.5;
    }

    // Zoom about the cursor.
    if let Some(hover) = response.hover_pos() {
        let scroll = ui.input(|i| i.smooth_scroll_delta.y);
        let factor = ui.input(|i| i.zoom_delta()) * (scroll * 0.002).exp();
        if factor != 1.0 {
            let anchor = view.image_from_screen(rect, hover);
            view.zoom = (view.zoom * factor).clamp(0.02, 64.0);
            view.pan = hover - rect.min - anchor.to_vec2() * view.zoom;
        }
    }

    let image_rect = view.screen_rect(rect, Bbox::new(0.0, 0.0, size[0], size[1]));
    match (texture, error) {
        (_, Some(e)) => {
            painter.rect_stroke(
                image_rect,
                0.0,
                Stroke::new(1.0, colors::UNMATCHED),
                egui::StrokeKind::Inside,
            );
            painter.text(
                image_rect.center(),
                egui::Align2::CENTER_CENTER,
                format!("image not shown:\n{e}"),
                egui::FontId::proportional(13.0),
                colors::UNMATCHED,
            );
        }
        (Some(tex), None) => {
            let uv = Rect::from_min_max(Pos2::ZERO, Pos2::new(1.0, 1.0));
            painter.image(tex.id(), image_rect, uv, Color32::WHITE);
        }
        (None, None) => {
            painter.text(
                rect.center(),
                egui::Align2::CENTER_CENTER,
                "decoding image…",
                egui::FontId::proportional(14.0),
                Color32::GRAY,
            );
        }
    }

    // Drags: a handle of a selected box, else draw or pan.
    let mut action = None;
    let pointer = response.interact_pointer_pos();
    let handle_radius = 7.0;
    if response.drag_started_by(egui::PointerButton::Primary) {
        // Where the button went down, not where the drag was recognised.
        if let Some(p) = ui.input(|i| i.pointer.press_origin()).or(pointer) {
            let hit = boxes.iter().find_map(|b| {
                let i = b.candidate_box?;
                let r = view.screen_rect(rect, b.bbox);
                let corners = [
                    r.left_top(),
                    r.right_top(),
                    r.left_bottom(),
                    r.right_bottom(),
                ];
                corners
                    .iter()
                    .position(|c| c.distance(p) <= handle_radius)
                    .map(|k| (i, k, b.bbox))
            });
            if let Some(h) = hit {
                view.handle = Some(h);
            } else if view.draw_mode {
                view.drawing = Some(view.image_from_screen(rect, p));
            }
        }
    }
    let mut preview: Vec<OverlayBox> = Vec::new();
    if let Some((index, corner, original)) = view.handle {
        if let Some(p) = pointer.or(response.hover_pos()) {
            let q = view.image_from_screen(rect, p);
            let (qx, qy) = (q.x.clamp(0.0, size[0]), q.y.clamp(0.0, size[1]));
            let mut b = original;
            match corner {
                0 => (b.x1, b.y1) = (qx, qy),
                1 => (b.x2, b.y1) = (qx, qy),
                2 => (b.x1, b.y2) = (qx, qy),
                _ => (b.x2, b.y2) = (qx, qy),
            }
            let b = Bbox::new(
                b.x1.min(b.x2),
                b.y1.min(b.y2),
                b.x1.max(b.x2),
                b.y1.max(b.y2),
            );
            preview.push(drawing_box(b));
            if response.drag_stopped() {
                view.handle = None;
                if b.is_valid() && b != original {
                    action = Some(CanvasAction::MovedBox {
                        index,
                        to: b.round(),
                    });
                }
            }
        }
    } else if let Some(start) = view.drawing {
        if let Some(p) = pointer.or(response.hover_pos()) {
            let q = view.image_from_screen(rect, p);
            let b = Bbox::new(
                start.x.min(q.x),
                start.y.min(q.y),
                start.x.max(q.x),
                start.y.max(q.y),
            )
            .clamp_to(size[0], size[1]);
            preview.push(drawing_box(b));
            if response.drag_stopped() {
                view.drawing = None;
                if b.width() >= 4.0 && b.height() >= 4.0 {
                    action = Some(CanvasAction::DrewRegion(b.round()));
                }
            }
        }
    } else if response.dragged() {
        view.pan += response.drag_delta();
    }
    if response.double_clicked() {
        view.fit();
    }

    // Overlays.
    let all: Vec<&OverlayBox> = boxes.iter().chain(preview.iter()).collect();
    let instances: Vec<BoxInstance> = all.iter().map(|b| b.style).collect();
    match renderer {
        Renderer::Wgpu => {
            let globals = Globals {
                scale: [view.zoom, view.zoom],
                offset: [view.pan.x, view.pan.y],
                viewport_size: [rect.width(), rect.height()],
                pixels_per_point: ui.ctx().pixels_per_point(),
                _pad: 0.0,
            };
            painter.add(overlay::paint_callback(
                response.id,
                rect,
                globals,
                Arc::new(instances),
            ));
        }
        Renderer::Painter => {
            paint_with_painter(&painter, |b| view.screen_rect(rect, b), &instances)
        }
    }
    for b in &all {
        let r = view.screen_rect(rect, b.bbox);
        if let Some(label) = &b.label {
            // Candidate boxes are numbered at their top-right, the rest named at the top-left.
            let (pos, align) = if b.candidate_box.is_some() {
                (
                    r.right_top() + Vec2::new(-2.0, 2.0),
                    egui::Align2::RIGHT_TOP,
                )
            } else {
                (
                    r.left_top() + Vec2::new(2.0, -2.0),
                    egui::Align2::LEFT_BOTTOM,
                )
            };
            painter.text(
                pos,
                align,
                label,
                egui::FontId::proportional(11.0),
                Color32::from_rgba_unmultiplied(
                    (b.style.color[0] * 255.0) as u8,
                    (b.style.color[1] * 255.0) as u8,
                    (b.style.color[2] * 255.0) as u8,
                    255,
                ),
            );
        }
        if b.candidate_box.is_some() {
            for c in [
                r.left_top(),
                r.right_top(),
                r.left_bottom(),
                r.right_bottom(),
            ] {
                painter.circle_filled(c, 3.5, Color32::WHITE);
            }
        }
    }

    // Hover tooltip: the smallest box under the cursor that has one.
    if let Some(hover) = response.hover_pos() {
        let p = view.image_from_screen(rect, hover);
        let under = boxes
            .iter()
            .filter(|b| b.tooltip.is_some())
            .filter(|b| {
                p.x >= b.bbox.x1 && p.x <= b.bbox.x2 && p.y >= b.bbox.y1 && p.y <= b.bbox.y2
            })
            .min_by(|a, b| a.bbox.area().total_cmp(&b.bbox.area()));
        if let Some(text) = under.and_then(|b| b.tooltip.clone()) {
            response.clone().on_hover_text_at_pointer(text);
        }
    }
    action
}

fn drawing_box(b: Bbox) -> OverlayBox {
    OverlayBox {
        bbox: b,
        style: BoxInstance::outline(b.into(), colors::DRAWING, 2.0).filled(0.12),
        label: None,
        tooltip: None,
        candidate_box: None,
    }
}
