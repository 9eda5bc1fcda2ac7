//! Axis-aligned boxes in pixel `xyxy` coordinates and the transforms between
//! the coordinate spaces the pipeline uses.
//!
//! Every box inside the program is a [`Bbox`]: `f32` pixel coordinates
//! `(x1, y1, x2, y2)` in the space its name says (the original image unless a
//! function name says otherwise, e.g. `crop_from_image`). COCO's `xywh` is
//! converted at the edge ([`Bbox::from_xywh`]). The functions here are the
//! building blocks of SPR's region queries (containment, expansion about the
//! centre), of its localization score (IoU), and of the CLIP square padding.

use serde::{Deserialize, Serialize};

/// An axis-aligned box, pixel `xyxy`. Serialised as `[x1, y1, x2, y2]`.
#[derive(Clone, Copy, Debug, PartialEq, Default, Serialize, Deserialize)]
#[serde(from = "[f32; 4]", into = "[f32; 4]")]
pub struct Bbox {
    /// Left edge.
    pub x1: f32,
    /// Top edge.
    pub y1: f32,
    /// Right edge.
    pub x2: f32,
    /// Bottom edge.
    pub y2: f32,
}

impl From<[f32; 4]> for Bbox {
    fn from(v: [f32; 4]) -> Self {
        Self::new(v[0], v[1], v[2], v[3])
    }
}

impl From<Bbox> for [f32; 4] {
    fn from(b: Bbox) -> Self {
        [b.x1, b.y1, b.x2, b.y2]
    }
}

impl Bbox {
    /// A box from its corners, as given (no reordering).
    pub const fn new(x1: f32, y1: f32, x2: f32, y2: f32) -> Self {
        Self { x1, y1, x2, y2 }
    }

    /// A box from COCO's `[x, y, width, height]`.
    pub fn from_xywh(x: f32, y: f32, w: f32, h: f32) -> Self {
        Self::new(x, y, x + w, y + h)
    }

    /// COCO's `[x, y, width, height]`.
    pub fn to_xywh(self) -> [f32; 4] {
        [self.x1, self.y1, self.width(), self.height()]
    }

    /// Width, zero for an inverted box.
    pub fn width(self) -> f32 {
        (self.x2 - self.x1).max(0.0)
    }

    /// Height, zero for an inverted box.
    pub fn height(self) -> f32 {
        (self.y2 - self.y1).max(0.0)
    }

    /// Area in square pixels, zero for an empty or inverted box.
    pub fn area(self) -> f32 {
        self.width() * self.height()
    }

    /// Centre point `(x, y)`.
    pub fn center(self) -> (f32, f32) {
        ((self.x1 + self.x2) * 0.5, (self.y1 + self.y2) * 0.5)
    }

    /// All four coordinates are finite.
    pub fn is_finite(self) -> bool {
        self.x1.is_finite() && self.y1.is_finite() && self.x2.is_finite() && self.y2.is_finite()
    }

    /// Finite with positive width and height.
    pub fn is_valid(self) -> bool {
        self.is_finite() && self.x2 > self.x1 && self.y2 > self.y1
    }

    /// The overlap of two boxes (possibly empty: check [`Bbox::area`]).
    pub fn intersection(self, other: Bbox) -> Bbox {
        Bbox::new(
            self.x1.max(other.x1),
            self.y1.max(other.y1),
            self.x2.min(other.x2),
            self.y2.min(other.y2),
        )
    }

    /// The smallest box holding both.
    pub fn union(self, other: Bbox) -> Bbox {
        Bbox::new(
            self.x1.min(other.x1),
            self.y1.min(other.y1),
            self.x2.max(other.x2),
            self.y2.max(other.y2),
        )
    }

    /// Intersection over union in `[0, 1]`; 0 when either box is empty.
    pub fn iou(self, other: Bbox) -> f32 {
        let inter = self.intersection(other).area();
        if inter <= 0.0 {
            return 0.0;
        }
        let union = self.area() + other.area() - inter;
        if union <= 0.0 {
            return 0.0;
        }
        (inter / union).clamp(0.0, 1.0)
    }

    /// Fraction of this box's area that lies inside `container`, in `[0, 1]`
    /// (0 for an empty box). SPR puts an object in a region's list when this
    /// is at least 0.5.
    pub fn fraction_inside(self, container: Bbox) -> f32 {
        let area = self.area();
        if area <= 0.0 {
            return 0.0;
        }
        (self.intersection(container).area() / area).clamp(0.0, 1.0)
    }

    /// Whether `other` lies entirely inside this box.
    pub fn contains(self, other: Bbox) -> bool {
        other.x1 >= self.x1 && other.y1 >= self.y1 && other.x2 <= self.x2 && other.y2 <= self.y2
    }

    /// The box scaled by `factor` about its centre (SPR's crop uses 1.5).
    pub fn expand(self, factor: f32) -> Bbox {
        let (cx, cy) = self.center();
        let hw = self.width() * factor * 0.5;
        let hh = self.height() * factor * 0.5;
        Bbox::new(cx - hw, cy - hh, cx + hw, cy + hh)
    }

    /// The box clamped to `[0, width] × [0, height]`.
    pub fn clamp_to(self, width: f32, height: f32) -> Bbox {
        Bbox::new(
            self.x1.clamp(0.0, width),
            self.y1.clamp(0.0, height),
            self.x2.clamp(0.0, width),
            self.y2.clamp(0.0, height),
        )
    }

    /// Gap between two boxes: the Euclidean distance between their closest
    /// points, 0 when they touch or overlap. Region growth adds the object
    /// with the smallest gap to the current region.
    pub fn gap(self, other: Bbox) -> f32 {
        let dx = (other.x1 - self.x2).max(self.x1 - other.x2).max(0.0);
        let dy = (other.y1 - self.y2).max(self.y1 - other.y2).max(0.0);
        (dx * dx + dy * dy).sqrt()
    }

    /// Squared distance between the two centres (a tie-breaker for [`Bbox::gap`]).
    pub fn center_distance_sq(self, other: Bbox) -> f32 {
        let (ax, ay) = self.center();
        let (bx, by) = other.center();
        (ax - bx) * (ax - bx) + (ay - by) * (ay - by)
    }

    /// Ratio of the short side to the long side, in `[0, 1]` (0 for an empty box).
    pub fn side_ratio(self) -> f32 {
        let (w, h) = (self.width(), self.height());
        let long = w.max(h);
        if long <= 0.0 {
            return 0.0;
        }
        w.min(h) / long
    }

    /// The box moved by `(dx, dy)`.
    pub fn translate(self, dx: f32, dy: f32) -> Bbox {
        Bbox::new(self.x1 + dx, self.y1 + dy, self.x2 + dx, self.y2 + dy)
    }

    /// A box given in the pixel space of `crop` (origin at the crop's top
    /// left), mapped to image pixels.
    pub fn image_from_crop(self, crop: Bbox) -> Bbox {
        self.translate(crop.x1, crop.y1)
    }

    /// A box in image pixels, mapped to the pixel space of `crop`.
    pub fn crop_from_image(self, crop: Bbox) -> Bbox {
        self.translate(-crop.x1, -crop.y1)
    }

    /// Round every coordinate to the nearest integer (display and export).
    pub fn round(self) -> Bbox {
        Bbox::new(
            self.x1.round(),
            self.y1.round(),
            self.x2.round(),
            self.y2.round(),
        )
    }
}

/// The transform that pads an image to a square (centred, as CLIP scoring
/// needs so that a centre crop cannot cut the region off) and resizes it to
/// `side × side`. Maps boxes both ways.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SquarePad {
    /// Offset of the original image inside the padded square, before scaling.
    pub pad_x: f32,
    /// See `pad_x`.
    pub pad_y: f32,
    /// Side of the padded square, in original pixels.
    pub square_side: f32,
    /// Output side in pixels (e.g. 336 for CLIP ViT-L/14-336).
    pub out_side: f32,
}

impl SquarePad {
    /// The padding for an image of `width × height` resized to `out_side`.
    pub fn new(width: f32, height: f32, out_side: f32) -> Self {
        let square_side = width.max(height);
        Self {
            pad_x: (square_side - width) * 0.5,
            pad_y: (square_side - height) * 0.5,
            square_side,
            out_side,
        }
    }

    fn scale(&self) -> f32 {
        if self.square_side > 0.0 {
            self.out_side / self.square_side
        } else {
            0.0
        }
    }

    /// Image pixels → padded-and-resized pixels.
    pub fn padded_from_image(&self, b: Bbox) -> Bbox {
        let s = self.scale();
        let t = b.translate(self.pad_x, self.pad_y);
        Bbox::new(t.x1 * s, t.y1 * s, t.x2 * s, t.y2 * s)
    }

    /// Padded-and-resized pixels → image pixels.
    pub fn image_from_padded(&self, b: Bbox) -> Bbox {
        let s = self.scale();
        if s <= 0.0 {
            return Bbox::default();
        }
        Bbox::new(b.x1 / s, b.y1 / s, b.x2 / s, b.y2 / s).translate(-self.pad_x, -self.pad_y)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn arb_box() -> impl Strategy<Value = Bbox> {
        (0f32..500.0, 0f32..500.0, 0f32..300.0, 0f32..300.0)
            .prop_map(|(x, y, w, h)| Bbox::from_xywh(x, y, w, h))
    }

    #[test]
    fn iou_hand_worked() {
        let a = Bbox::new(0.0, 0.0, 10.0, 10.0);
        let b = Bbox::new(5.0, 0.0, 15.0, 10.0);
        // overlap 50, union 150
        assert!((a.iou(b) - 1.0 / 3.0).abs() < 1e-6);
        assert_eq!(a.iou(a), 1.0);
        assert_eq!(a.iou(Bbox::new(20.0, 20.0, 30.0, 30.0)), 0.0);
        assert_eq!(a.iou(Bbox::new(3.0, 3.0, 3.0, 9.0)), 0.0);
    }

    #[test]
    fn expand_and_clamp() {
        let b = Bbox::new(10.0, 10.0, 30.0, 20.0).expand(1.5);
        assert_eq!(b, Bbox::new(5.0, 7.5, 35.0, 22.5));
        assert_eq!(b.clamp_to(32.0, 20.0), Bbox::new(5.0, 7.5, 32.0, 20.0));
    }

    #[test]
    fn gap_and_fraction() {
        let a = Bbox::new(0.0, 0.0, 10.0, 10.0);
        assert_eq!(a.gap(Bbox::new(13.0, 14.0, 20.0, 20.0)), 5.0);
        assert_eq!(a.gap(Bbox::new(5.0, 5.0, 20.0, 20.0)), 0.0);
        assert_eq!(Bbox::new(5.0, 0.0, 15.0, 10.0).fraction_inside(a), 0.5);
    }

    #[test]
    fn square_pad_hand_worked() {
        let pad = SquarePad::new(200.0, 100.0, 100.0);
        assert_eq!(pad.pad_y, 50.0);
        let b = Bbox::new(0.0, 0.0, 200.0, 100.0);
        assert_eq!(pad.padded_from_image(b), Bbox::new(0.0, 25.0, 100.0, 75.0));
    }

    #[test]
    fn serde_is_an_array() {
        let b = Bbox::new(1.0, 2.0, 3.5, 4.0);
        let s = serde_json::to_string(&b).unwrap();
        assert_eq!(s, "[1.0,2.0,3.5,4.0]");
        assert_eq!(serde_json::from_str::<Bbox>(&s).unwrap(), b);
    }

    proptest! {
        #[test]
        fn iou_symmetric_and_bounded(a in arb_box(), b in arb_box()) {
            let ab = a.iou(b);
            let ba = b.iou(a);
            prop_assert!((0.0..=1.0).contains(&ab));
            prop_assert_eq!(ab, ba);
        }

        #[test]
        fn iou_with_self_is_one(a in arb_box()) {
            prop_assume!(a.area() > 1e-3);
            prop_assert!((a.iou(a) - 1.0).abs() < 1e-6);
        }

        #[test]
        fn fraction_inside_bounded(a in arb_box(), b in arb_box()) {
            let f = a.fraction_inside(b);
            prop_assert!((0.0..=1.0).contains(&f));
            prop_assert!(a.fraction_inside(a.union(b)) > 0.999 || a.area() == 0.0);
        }

        #[test]
        fn crop_round_trip(a in arb_box(), c in arb_box()) {
            let back = a.crop_from_image(c).image_from_crop(c);
            prop_assert!((back.x1 - a.x1).abs() < 1e-3 && (back.y2 - a.y2).abs() < 1e-3);
        }

        #[test]
        fn square_pad_round_trip(a in arb_box(), w in 1f32..2000.0, h in 1f32..2000.0) {
            let pad = SquarePad::new(w, h, 336.0);
            let back = pad.image_from_padded(pad.padded_from_image(a));
            prop_assert!((back.x1 - a.x1).abs() < 1e-2 && (back.y2 - a.y2).abs() < 1e-2);
        }
    }
}
