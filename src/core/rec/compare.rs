//! Per-sample match status across thresholds, and what changed against a
//! baseline: what the evaluation explorer lists when a threshold is
//! clicked.
//!
//! The status of every sample at every threshold of [`REC_THRESHOLDS`]
//! comes from one pass over the samples' IoU ([`MatchTable::new`]); the
//! accuracy curve, the failing list and the changes against a baseline
//! are all read from that table, so they cannot disagree.

use std::collections::HashMap;

use super::{RecSample, REC_THRESHOLDS};

/// Whether each sample matches at each threshold.
#[derive(Clone, Debug, PartialEq)]
pub struct MatchTable {
    /// `hits[i][t]`: sample `i` has IoU ≥ `REC_THRESHOLDS[t]`.
    pub hits: Vec<[bool; 5]>,
    /// The samples' IoU, in sample order.
    pub iou: Vec<f32>,
}

/// A sample whose status differs between a baseline and an evaluation.
#[derive(Clone, Debug, PartialEq)]
pub struct Change {
    /// Index in the evaluation's samples.
    pub sample: usize,
    /// Index in the baseline's samples.
    pub baseline_sample: usize,
    /// `true`: fails in the baseline, matches now; `false`: the reverse.
    pub fixed: bool,
}

impl MatchTable {
    /// The table of `samples` (one pass).
    pub fn new(samples: &[RecSample]) -> MatchTable {
        let iou: Vec<f32> = samples.iter().map(|s| s.iou).collect();
        let hits = iou
            .iter()
            .map(|&v| std::array::from_fn(|t| v >= REC_THRESHOLDS[t]))
            .collect();
        MatchTable { hits, iou }
    }

    /// Accuracy at each threshold (0 for no samples).
    pub fn accuracy(&self) -> [f64; 5] {
        let n = self.hits.len();
        std::array::from_fn(|t| {
            if n == 0 {
                0.0
            } else {
                self.hits.iter().filter(|h| h[t]).count() as f64 / n as f64
            }
        })
    }

    /// The samples failing at threshold index `t`, worst IoU first (ties
    /// in sample order).
    pub fn failing(&self, t: usize) -> Vec<usize> {
        let mut out: Vec<usize> = (0..self.hits.len()).filter(|&i| !self.hits[i][t]).collect();
        out.sort_by(|&a, &b| self.iou[a].total_cmp(&self.iou[b]).then(a.cmp(&b)));
        out
    }

    /// The samples whose status at threshold index `t` differs from the
    /// baseline's, paired by sample id (samples only one side has are
    /// left out): regressions first, each group worst IoU first.
    pub fn changes(
        &self,
        samples: &[RecSample],
        baseline: &MatchTable,
        baseline_samples: &[RecSample],
        t: usize,
    ) -> Vec<Change> {
        let by_id: HashMap<&str, usize> = baseline_samples
            .iter()
            .enumerate()
            .map(|(i, s)| (s.id.as_str(), i))
            .collect();
        let mut out: Vec<Change> = samples
            .iter()
            .enumerate()
            .filter_map(|(i, s)| {
                let b = *by_id.get(s.id.as_str())?;
                let (now, before) = (self.hits[i][t], baseline.hits[b][t]);
                (now != before).then_some(Change {
                    sample: i,
                    baseline_sample: b,
                    fixed: now,
                })
            })
            .collect();
        out.sort_by(|a, b| {
            a.fixed
                .cmp(&b.fixed)
                .then(self.iou[a.sample].total_cmp(&self.iou[b.sample]))
                .then(a.sample.cmp(&b.sample))
        });
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::geometry::Bbox;

    fn sample(id: &str, iou: f32) -> RecSample {
        RecSample {
            id: id.into(),
            image: None,
            expression: None,
            pred_bbox: None,
            gt_bbox: Bbox::new(0.0, 0.0, 1.0, 1.0),
            iou,
            output: None,
        }
    }

    #[test]
    fn table_agrees_with_the_report_and_lists_failures_worst_first() {
        let s = vec![
            sample("a", 0.95),
            sample("b", 0.55),
            sample("c", 0.0),
            sample("d", 0.7),
            sample("e", 0.62),
        ];
        let t = MatchTable::new(&s);
        let report = crate::core::rec::rec_report(&s);
        for (k, &th) in REC_THRESHOLDS.iter().enumerate() {
            assert!((t.accuracy()[k] - f64::from(report.accuracy_at(th).unwrap())).abs() < 1e-6);
        }
        // Threshold 0.7 is inclusive: d (0.7) matches.
        assert_eq!(t.failing(2), vec![2, 1, 4]);
        assert_eq!(t.failing(0), vec![2]);
        assert_eq!(t.failing(4), vec![2, 1, 4, 3]);
    }

    #[test]
    fn changes_pair_samples_by_id() {
        let base = vec![sample("a", 0.4), sample("b", 0.8), sample("c", 0.9)];
        // Another order, one sample more.
        let now = vec![
            sample("c", 0.3),
            sample("x", 0.9),
            sample("a", 0.6),
            sample("b", 0.85),
        ];
        let (tb, tn) = (MatchTable::new(&base), MatchTable::new(&now));
        let ch = tn.changes(&now, &tb, &base, 0);
        assert_eq!(
            ch,
            vec![
                Change {
                    sample: 0,
                    baseline_sample: 2,
                    fixed: false
                },
                Change {
                    sample: 2,
                    baseline_sample: 0,
                    fixed: true
                },
            ]
        );
    }
}
