//! SPR's scores for a grounded region description (ICCV 2025, §3.2).
//!
//! - **Localization**: ground truth G = the region's annotated objects;
//!   predictions P = the boxes written in the description plus, when a
//!   detector is plugged in, the detector's boxes for the phrases it mentions.
//!   `S_loc = (1/|G|) Σ_{g∈G} max_{p∈P} IoU(g,p)·[IoU(g,p) ≥ 0.5]`: recall-
//!   like, so describing more of the region's objects, precisely, raises it.
//!   The precision-aware variant divides by `|G| + unmatched predictions`
//!   instead, so that invented boxes cost.
//! - **Composite**: `λ·semantic + (1−λ)·localization`, λ = 0.8 by default.
//!   The components are stored, never only the composite, so a change of λ
//!   re-ranks without recomputing. While no semantic scorer has run the
//!   semantic component is absent and the composite is the localization
//!   score alone; callers say so to the user.
//! - **Refinement** of the chosen description: boxes that match an
//!   annotation are snapped to it, boxes that match nothing are removed
//!   (their phrase stays). See [`refine`] for the exact rule, which is
//!   chosen so that refinement never lowers the localization score.

use serde::{Deserialize, Serialize};

use crate::core::geometry::Bbox;
use crate::core::grounded::GroundedText;

/// IoU at or above which a prediction counts as matching a ground-truth box
/// (SPR: 0.5).
pub const MATCH_IOU: f32 = 0.5;

/// Default weight of the semantic score in the composite (SPR: 0.8).
pub const DEFAULT_LAMBDA: f32 = 0.8;

/// Which localization formula to use.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum LocVariant {
    /// SPR's: divide by |G|.
    #[default]
    Recall,
    /// Divide by |G| + predictions that match no ground truth.
    PrecisionAware,
}

/// A ground-truth box and its best prediction.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Match {
    /// Index into the ground truth.
    pub gt: usize,
    /// Index into the predictions.
    pub pred: usize,
    /// Their IoU (at least the match threshold).
    pub iou: f32,
}

/// The localization score with what it was computed from, for display.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct LocScore {
    /// The score in `[0, 1]`.
    pub score: f32,
    /// For each matched ground-truth box, its best prediction.
    pub matches: Vec<Match>,
    /// Predictions that match no ground-truth box.
    pub unmatched_preds: Vec<usize>,
    /// |G|.
    pub n_gt: usize,
    /// |P|.
    pub n_pred: usize,
}

/// SPR's localization score of predictions `preds` against ground truth `gt`
/// (see the module doc). An empty ground truth scores 0.
pub fn localization_score(
    gt: &[Bbox],
    preds: &[Bbox],
    variant: LocVariant,
    match_iou: f32,
) -> LocScore {
    let mut matches = Vec::new();
    let mut pred_matched = vec![false; preds.len()];
    let mut sum = 0.0f32;
    for (gi, g) in gt.iter().enumerate() {
        let mut best: Option<(usize, f32)> = None;
        for (pi, p) in preds.iter().enumerate() {
            let iou = g.iou(*p);
            if iou >= match_iou {
                pred_matched[pi] = true;
                if best.is_none_or(|(_, b)| iou > b) {
                    best = Some((pi, iou));
                }
            }
        }
        if let Some((pred, iou)) = best {
            sum += iou;
            matches.push(Match { gt: gi, pred, iou });
        }
    }
    let unmatched_preds: Vec<usize> = pred_matched
        .iter()
        .enumerate()
        .filter(|(_, &m)| !m)
        .map(|(i, _)| i)
        .collect();
    let denominator = match variant {
        LocVariant::Recall => gt.len(),
        LocVariant::PrecisionAware => gt.len() + unmatched_preds.len(),
    };
    let score = if denominator == 0 || gt.is_empty() {
        0.0
    } else {
        sum / denominator as f32
    };
    LocScore {
        score,
        matches,
        unmatched_preds,
        n_gt: gt.len(),
        n_pred: preds.len(),
    }
}

/// `λ·semantic + (1−λ)·localization`; the localization score alone when the
/// semantic score is absent.
pub fn composite(lambda: f32, semantic: Option<f32>, localization: f32) -> f32 {
    match semantic {
        Some(s) => lambda * s + (1.0 - lambda) * localization,
        None => localization,
    }
}

/// SPR's refinement of the chosen description (image coordinates).
///
/// The paper's rule is "every box that matches an annotation (IoU > 0.5) is
/// replaced by that annotation's box; boxes that match nothing are removed,
/// the phrase kept". Taken literally it can lower the score: one written box
/// may be the best match of two overlapping region objects, and snapping it
/// to one loses the other. Our rule makes refinement monotone:
///
/// 1. a box that is the best match (as in [`localization_score`]) of one or
///    more region objects is replaced by those objects' boxes, best IoU first;
/// 2. otherwise a box matching a region object is replaced by its best
///    region match, and failing that a box matching any annotation of the
///    image (outside the region) by its best match (IoU ≥ `match_iou`);
/// 3. otherwise it is removed and its phrase stays as text.
///
/// `region_gt` are the region's objects, `annotations` all usable
/// annotations of the image. The threshold is inclusive, like the score's,
/// so a box that scored exactly at the threshold is kept.
pub fn refine(
    text: &GroundedText,
    region_gt: &[Bbox],
    annotations: &[Bbox],
    match_iou: f32,
) -> GroundedText {
    let preds = text.boxes();
    let loc = localization_score(region_gt, &preds, LocVariant::Recall, match_iou);
    let mut targets: Vec<Vec<(f32, Bbox)>> = vec![Vec::new(); preds.len()];
    for m in &loc.matches {
        targets[m.pred].push((m.iou, region_gt[m.gt]));
    }
    let mut index = 0;
    text.replace_boxes(|b| {
        let mut t = std::mem::take(&mut targets[index]);
        index += 1;
        if !t.is_empty() {
            t.sort_by(|a, b| b.0.total_cmp(&a.0));
            return t.into_iter().map(|(_, g)| g).collect();
        }
        let best =
            best_match(b, region_gt, match_iou).or_else(|| best_match(b, annotations, match_iou));
        best.map(|a| vec![a]).unwrap_or_default()
    })
}

/// The box of `candidates` with the highest IoU with `b`, if at least `match_iou`.
fn best_match(b: Bbox, candidates: &[Bbox], match_iou: f32) -> Option<Bbox> {
    candidates
        .iter()
        .map(|a| (a.iou(b), *a))
        .filter(|(iou, _)| *iou >= match_iou)
        .max_by(|x, y| x.0.total_cmp(&y.0))
        .map(|(_, a)| a)
}

/// The stored components of one candidate's score.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Components {
    /// CLIP semantic score, absent until a semantic scorer has run.
    pub semantic: Option<f32>,
    /// Localization score.
    pub localization: f32,
}

impl Components {
    /// The composite at `lambda`.
    pub fn composite(&self, lambda: f32) -> f32 {
        composite(lambda, self.semantic, self.localization)
    }
}

/// Candidate indices ordered best first by composite at `lambda` (ties keep
/// input order).
pub fn rank(scores: &[Components], lambda: f32) -> Vec<usize> {
    let mut order: Vec<usize> = (0..scores.len()).collect();
    order.sort_by(|&a, &b| {
        scores[b]
            .composite(lambda)
            .total_cmp(&scores[a].composite(lambda))
    });
    order
}

/// SPR's pair for one query: (best, worst) candidate indices by composite,
/// or `None` when there are fewer than two candidates or the best does not
/// strictly beat the worst.
pub fn select_pair(scores: &[Components], lambda: f32) -> Option<(usize, usize)> {
    let order = rank(scores, lambda);
    let (&best, &worst) = (order.first()?, order.last()?);
    (scores[best].composite(lambda) > scores[worst].composite(lambda)).then_some((best, worst))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::grounded::Piece;
    use proptest::prelude::*;

    fn b(x1: f32, y1: f32, x2: f32, y2: f32) -> Bbox {
        Bbox::new(x1, y1, x2, y2)
    }

    #[test]
    fn localization_hand_worked() {
        let gt = [
            b(0.0, 0.0, 10.0, 10.0),
            b(20.0, 0.0, 30.0, 10.0),
            b(40.0, 0.0, 50.0, 10.0),
        ];
        let preds = [
            b(0.0, 0.0, 10.0, 10.0),       // IoU 1 with g0
            b(20.0, 0.0, 30.0, 8.0),       // IoU 0.8 with g1
            b(40.0, 0.0, 45.0, 10.0),      // IoU 0.5 with g2: counts (inclusive)
            b(100.0, 100.0, 110.0, 110.0), // invented
        ];
        let s = localization_score(&gt, &preds, LocVariant::Recall, MATCH_IOU);
        assert!((s.score - (1.0 + 0.8 + 0.5) / 3.0).abs() < 1e-6);
        assert_eq!(s.matches.len(), 3);
        assert_eq!(s.unmatched_preds, vec![3]);
        let p = localization_score(&gt, &preds, LocVariant::PrecisionAware, MATCH_IOU);
        assert!((p.score - 2.3 / 4.0).abs() < 1e-6);
        // Below the threshold counts nothing.
        let s = localization_score(&gt[..1], &[b(0.0, 0.0, 10.0, 4.0)], LocVariant::Recall, 0.5);
        assert_eq!(s.score, 0.0);
        assert_eq!(
            localization_score(&[], &preds, LocVariant::Recall, 0.5).score,
            0.0
        );
    }

    #[test]
    fn composite_and_pairs() {
        let scores = [
            Components {
                semantic: Some(0.9),
                localization: 0.1,
            }, // 0.74 at λ=.8, 0.1 at λ=0
            Components {
                semantic: Some(0.5),
                localization: 0.9,
            }, // 0.58 / 0.9
            Components {
                semantic: Some(0.6),
                localization: 0.4,
            }, // 0.56 / 0.4
        ];
        assert_eq!(rank(&scores, 0.8), vec![0, 1, 2]);
        assert_eq!(select_pair(&scores, 0.8), Some((0, 2)));
        assert_eq!(rank(&scores, 0.0), vec![1, 2, 0]);
        assert_eq!(select_pair(&scores, 0.0), Some((1, 0)));
        let tied = [Components {
            semantic: None,
            localization: 0.3,
        }; 2];
        assert_eq!(select_pair(&tied, 0.8), None);
        assert_eq!(composite(0.8, None, 0.4), 0.4);
    }

    #[test]
    fn refinement_hand_worked() {
        let region = [b(0.0, 0.0, 10.0, 10.0), b(20.0, 0.0, 30.0, 10.0)];
        let outside = b(60.0, 60.0, 80.0, 80.0);
        let all = [region[0], region[1], outside];
        let text = GroundedText {
            pieces: vec![
                Piece::Object {
                    phrase: "a circle".into(),
                    boxes: vec![b(1.0, 0.0, 10.0, 10.0)],
                },
                Piece::Text(" and ".into()),
                Piece::Object {
                    phrase: "a ghost".into(),
                    boxes: vec![b(200.0, 200.0, 210.0, 210.0)],
                },
                Piece::Text(" near ".into()),
                Piece::Object {
                    phrase: "a star".into(),
                    boxes: vec![b(61.0, 61.0, 80.0, 80.0)],
                },
            ],
        };
        let r = refine(&text, &region, &all, MATCH_IOU);
        assert_eq!(r.boxes(), vec![region[0], outside]);
        assert_eq!(r.plain(), "a circle and a ghost near a star");
        let before = localization_score(&region, &text.boxes(), LocVariant::Recall, MATCH_IOU);
        let after = localization_score(&region, &r.boxes(), LocVariant::Recall, MATCH_IOU);
        assert!((before.score - 0.45).abs() < 1e-6);
        assert_eq!(after.score, 0.5);
    }

    #[test]
    fn one_box_matching_two_objects_becomes_both() {
        // p overlaps g0 and g1 at IoU 0.6 each; g0 and g1 overlap at 0.2.
        let g = [b(0.0, 0.0, 6.0, 10.0), b(4.0, 0.0, 10.0, 10.0)];
        let text = GroundedText {
            pieces: vec![Piece::Object {
                phrase: "two bars".into(),
                boxes: vec![b(0.0, 0.0, 10.0, 10.0)],
            }],
        };
        let r = refine(&text, &g, &g, MATCH_IOU);
        assert_eq!(r.box_count(), 2);
        let after = localization_score(&g, &r.boxes(), LocVariant::Recall, MATCH_IOU);
        assert_eq!(after.score, 1.0);
    }

    fn arb_box() -> impl Strategy<Value = Bbox> {
        (0u16..200, 0u16..200, 1u16..80, 1u16..80)
            .prop_map(|(x, y, w, h)| Bbox::from_xywh(x as f32, y as f32, w as f32, h as f32))
    }

    fn jitter(g: Bbox, d: (i8, i8, i8, i8)) -> Bbox {
        let j = |v: f32, k: i8| v + k as f32;
        let out = Bbox::new(j(g.x1, d.0), j(g.y1, d.1), j(g.x2, d.2), j(g.y2, d.3));
        if out.is_valid() {
            out
        } else {
            g
        }
    }

    proptest! {
        #[test]
        fn refinement_never_lowers_the_score(
            region in prop::collection::vec(arb_box(), 1..8),
            others in prop::collection::vec(arb_box(), 0..6),
            picks in prop::collection::vec((0usize..16, (-6i8..6, -6i8..6, -6i8..6, -6i8..6)), 0..10),
            invented in prop::collection::vec(arb_box(), 0..4),
            precision in any::<bool>(),
        ) {
            let all: Vec<Bbox> = region.iter().chain(&others).copied().collect();
            let mut pieces = Vec::new();
            for (i, d) in &picks {
                let target = all[i % all.len()];
                pieces.push(Piece::Object { phrase: format!("obj{i}"), boxes: vec![jitter(target, *d)] });
                pieces.push(Piece::Text(", ".into()));
            }
            for (k, inv) in invented.iter().enumerate() {
                pieces.push(Piece::Object { phrase: format!("ghost{k}"), boxes: vec![*inv] });
            }
            let text = GroundedText { pieces };
            let variant = if precision { LocVariant::PrecisionAware } else { LocVariant::Recall };
            let before = localization_score(&region, &text.boxes(), variant, MATCH_IOU).score;
            let refined = refine(&text, &region, &all, MATCH_IOU);
            let after = localization_score(&region, &refined.boxes(), variant, MATCH_IOU).score;
            prop_assert!(after >= before - 1e-6, "before {before} after {after}");
            prop_assert!((0.0..=1.0).contains(&after));
            prop_assert_eq!(refined.plain(), text.plain());
        }

        #[test]
        fn localization_in_unit_range(
            gt in prop::collection::vec(arb_box(), 0..8),
            preds in prop::collection::vec(arb_box(), 0..8),
        ) {
            for v in [LocVariant::Recall, LocVariant::PrecisionAware] {
                let s = localization_score(&gt, &preds, v, MATCH_IOU);
                prop_assert!((0.0..=1.0).contains(&s.score));
                prop_assert!(s.matches.len() <= s.n_gt && s.unmatched_preds.len() <= s.n_pred);
                prop_assert!(s.matches.iter().all(|m| m.iou >= MATCH_IOU));
            }
        }
    }
}
