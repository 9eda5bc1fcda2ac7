//! What a pair set teaches about boxes: how many refined chosen answers and
//! how many rejected ones still hold a box, and how many of the chosen's
//! written boxes survived refinement (a box that matches no annotation with
//! IoU > 0.5 is removed, its phrase kept). When the chosen answers have lost
//! their boxes and the rejected ones have not, preference training rewards
//! answers without boxes, which REC scores as misses; the report shows these
//! counts so that outcome is explained by the data, not guessed at. Pure.

use serde::{Deserialize, Serialize};

use crate::core::grounded;
use crate::core::project::PairRecord;

/// Box counts of one pair set.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PairBoxes {
    /// λ of the ranking.
    pub lambda: f32,
    /// Pairs in the set.
    pub pairs: usize,
    /// Refined chosen answers with at least one box.
    pub chosen_with_box: usize,
    /// Rejected answers with at least one box.
    pub rejected_with_box: usize,
    /// Boxes the chosen answers were written with (before refinement).
    pub chosen_boxes_written: usize,
    /// Of those, the boxes refinement kept (replaced by their annotation).
    pub chosen_boxes_kept: usize,
}

impl PairBoxes {
    /// Counts over `pairs` (all ranked with `lambda`).
    pub fn of(lambda: f32, pairs: &[PairRecord]) -> PairBoxes {
        let boxes = |text: &str, p: &PairRecord| {
            // The frame only scales coordinates; counting does not need it.
            let (w, h) = (p.crop.width().max(1.0), p.crop.height().max(1.0));
            grounded::parse(text, p.format, w, h).text.box_count()
        };
        let mut out = PairBoxes {
            lambda,
            pairs: pairs.len(),
            chosen_with_box: 0,
            rejected_with_box: 0,
            chosen_boxes_written: 0,
            chosen_boxes_kept: 0,
        };
        for p in pairs {
            let kept = boxes(&p.chosen, p);
            out.chosen_boxes_kept += kept;
            out.chosen_boxes_written += boxes(&p.chosen_original, p);
            out.chosen_with_box += usize::from(kept > 0);
            out.rejected_with_box += usize::from(boxes(&p.rejected, p) > 0);
        }
        out
    }

    /// True when fewer chosen answers than rejected ones hold a box: the
    /// pairs lean towards answers without boxes.
    pub fn favours_no_box(&self) -> bool {
        self.chosen_with_box < self.rejected_with_box
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::geometry::Bbox;
    use crate::core::grounded::BoxFormat;
    use crate::core::scores::Components;

    fn pair(chosen: &str, original: &str, rejected: &str) -> PairRecord {
        let c = Components {
            semantic: Some(0.5),
            localization: 0.5,
        };
        PairRecord {
            v: 1,
            query_id: "q".into(),
            file_name: "a.png".into(),
            crop: Bbox::from([0.0, 0.0, 100.0, 100.0]),
            lambda: 0.8,
            chosen_id: "c".into(),
            rejected_id: "r".into(),
            chosen: chosen.into(),
            chosen_original: original.into(),
            rejected: rejected.into(),
            chosen_scores: c,
            rejected_scores: c,
            chosen_refined_localization: 0.5,
            semantic_missing: false,
            manual: false,
            format: BoxFormat::Ferret,
        }
    }

    #[test]
    fn counts_boxes_kept_and_lost_by_refinement() {
        let pairs = [
            // Refinement kept one of two boxes.
            pair(
                "a red square [100, 100, 300, 300] and a blue circle.",
                "a red square [110, 90, 310, 300] and a blue circle [500, 500, 600, 600].",
                "a green square [0, 0, 10, 10].",
            ),
            // Refinement removed the only box.
            pair(
                "a red square.",
                "a red square [700, 700, 900, 900].",
                "a blue square [0, 0, 10, 10] and a red one [5, 5, 9, 9].",
            ),
            // Rejected without a box.
            pair("a circle.", "a circle.", "a circle."),
        ];
        let b = PairBoxes::of(0.8, &pairs);
        assert_eq!(
            b,
            PairBoxes {
                lambda: 0.8,
                pairs: 3,
                chosen_with_box: 1,
                rejected_with_box: 2,
                chosen_boxes_written: 3,
                chosen_boxes_kept: 1,
            }
        );
        // 1 of 3 chosen vs 2 of 3 rejected.
        assert!(b.favours_no_box());
        let b = PairBoxes::of(0.8, &[pairs[0].clone(), pairs[2].clone()]);
        assert_eq!((b.chosen_with_box, b.rejected_with_box), (1, 1));
        assert!(!b.favours_no_box());
    }
}
