//! Detector output, post-processing and its measure: non-maximum
//! suppression and average precision.
//!
//! - [`nms`]: greedy non-maximum suppression (highest score first; a box is
//!   dropped when its IoU with a kept one exceeds the limit), as detectors'
//!   post-processing does it. OWLv2's heads predict one box per patch, so
//!   one object is usually found by several neighbouring patches.
//! - [`average_precision`]: AP at one IoU threshold per class and their
//!   mean, PASCAL VOC 2010+'s all-point form (Everingham et al. 2010): the
//!   detections of a class over all images ranked by score, each matched
//!   greedily to the unmatched ground truth of its image it overlaps most
//!   (IoU ≥ the threshold, inclusive, as the rest of the workbench counts),
//!   and the area under the precision–recall curve with precision made
//!   monotone. COCO's 101-point sampling gives nearly the same number.
//!   Classes without ground truth are left out of the mean.

use serde::Serialize;

use crate::core::geometry::Bbox;

/// A box with a confidence.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Scored {
    /// The box.
    pub bbox: Bbox,
    /// Its confidence.
    pub score: f32,
}

/// The boxes kept by greedy non-maximum suppression at `max_iou`, highest
/// score first (ties keep their input order).
pub fn nms(mut dets: Vec<Scored>, max_iou: f32) -> Vec<Scored> {
    dets.sort_by(|a, b| b.score.total_cmp(&a.score));
    let mut kept: Vec<Scored> = Vec::with_capacity(dets.len());
    for d in dets {
        if kept.iter().all(|k| k.bbox.iou(d.bbox) <= max_iou) {
            kept.push(d);
        }
    }
    kept
}

/// One image's ground truth and detections, by class index.
#[derive(Clone, Debug, Default)]
pub struct ImageDetections {
    /// Ground truth: (class, box).
    pub truth: Vec<(usize, Bbox)>,
    /// Detections: (class, box with score).
    pub found: Vec<(usize, Scored)>,
}

/// Average precision of a detector over a set of images.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ApReport {
    /// The IoU threshold.
    pub iou: f32,
    /// AP of each class (`None`: the class has no ground truth).
    pub per_class: Vec<Option<f64>>,
    /// Mean over the classes with ground truth.
    pub mean: f64,
    /// Ground-truth objects.
    pub objects: usize,
    /// Detections.
    pub detections: usize,
}

/// AP at `iou` for classes `0..classes` (see the module docs).
pub fn average_precision(images: &[ImageDetections], classes: usize, iou: f32) -> ApReport {
    let mut per_class = Vec::with_capacity(classes);
    for c in 0..classes {
        let truths: usize = images
            .iter()
            .map(|im| im.truth.iter().filter(|(k, _)| *k == c).count())
            .sum();
        if truths == 0 {
            per_class.push(None);
            continue;
        }
        // (score, image, box) of every detection of the class.
        let mut ranked: Vec<(f32, usize, Bbox)> = images
            .iter()
            .enumerate()
            .flat_map(|(i, im)| {
                im.found
                    .iter()
                    .filter(move |(k, _)| *k == c)
                    .map(move |(_, d)| (d.score, i, d.bbox))
            })
            .collect();
        ranked.sort_by(|a, b| b.0.total_cmp(&a.0));
        let mut used: Vec<Vec<bool>> = images
            .iter()
            .map(|im| vec![false; im.truth.len()])
            .collect();
        let mut tp = 0usize;
        let mut curve: Vec<(f64, f64)> = Vec::with_capacity(ranked.len());
        for (n, (_, i, b)) in ranked.iter().enumerate() {
            let best = images[*i]
                .truth
                .iter()
                .enumerate()
                .filter(|(g, (k, _))| *k == c && !used[*i][*g])
                .map(|(g, (_, t))| (g, t.iou(*b)))
                .max_by(|x, y| x.1.total_cmp(&y.1));
            if let Some((g, o)) = best {
                if o >= iou {
                    used[*i][g] = true;
                    tp += 1;
                }
            }
            curve.push((tp as f64 / truths as f64, tp as f64 / (n + 1) as f64));
        }
        // Monotone precision from the right, then the area.
        for k in (0..curve.len().saturating_sub(1)).rev() {
            curve[k].1 = curve[k].1.max(curve[k + 1].1);
        }
        let mut ap = 0.0;
        let mut prev_recall = 0.0;
        for (recall, precision) in curve {
            ap += (recall - prev_recall) * precision;
            prev_recall = recall;
        }
        per_class.push(Some(ap));
    }
    let present: Vec<f64> = per_class.iter().flatten().copied().collect();
    ApReport {
        iou,
        mean: if present.is_empty() {
            0.0
        } else {
            present.iter().sum::<f64>() / present.len() as f64
        },
        per_class,
        objects: images.iter().map(|im| im.truth.len()).sum(),
        detections: images.iter().map(|im| im.found.len()).sum(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b(x: f32, y: f32, s: f32) -> Bbox {
        Bbox::new(x, y, x + s, y + s)
    }

    fn sc(bbox: Bbox, score: f32) -> Scored {
        Scored { bbox, score }
    }

    #[test]
    fn nms_keeps_the_best_of_each_cluster() {
        let kept = nms(
            vec![
                sc(b(0.0, 0.0, 10.0), 0.6),
                sc(b(1.0, 0.0, 10.0), 0.9),
                sc(b(50.0, 50.0, 10.0), 0.3),
                sc(b(0.0, 1.0, 10.0), 0.5),
            ],
            0.5,
        );
        assert_eq!(kept.len(), 2);
        assert_eq!(kept[0].score, 0.9);
        assert_eq!(kept[1].score, 0.3);
        // A loose limit keeps overlapping boxes.
        assert_eq!(
            nms(
                vec![sc(b(0.0, 0.0, 10.0), 0.6), sc(b(1.0, 0.0, 10.0), 0.9)],
                0.95
            )
            .len(),
            2
        );
    }

    #[test]
    fn perfect_detections_give_ap_one() {
        let im = ImageDetections {
            truth: vec![(0, b(0.0, 0.0, 10.0)), (1, b(20.0, 20.0, 10.0))],
            found: vec![
                (0, sc(b(0.0, 0.0, 10.0), 0.9)),
                (1, sc(b(20.0, 20.0, 10.0), 0.8)),
            ],
        };
        let r = average_precision(&[im], 3, 0.5);
        assert_eq!(r.per_class, vec![Some(1.0), Some(1.0), None]);
        assert_eq!(r.mean, 1.0);
    }

    #[test]
    fn a_hand_worked_curve() {
        // Two objects of class 0. Ranked: hit (0.9), miss (0.8), hit (0.7).
        // Recall/precision: (0.5, 1), (0.5, 0.5), (1, 2/3).
        // Monotone precision: 1, 2/3, 2/3 → AP = 0.5·1 + 0.5·2/3 = 5/6.
        let im = ImageDetections {
            truth: vec![(0, b(0.0, 0.0, 10.0)), (0, b(40.0, 40.0, 10.0))],
            found: vec![
                (0, sc(b(0.0, 0.0, 10.0), 0.9)),
                (0, sc(b(100.0, 100.0, 10.0), 0.8)),
                (0, sc(b(40.0, 41.0, 10.0), 0.7)),
                // A duplicate of a matched object counts as a miss, after
                // every hit: it does not change AP.
                (0, sc(b(0.0, 0.0, 10.0), 0.1)),
            ],
        };
        let r = average_precision(&[im], 1, 0.5);
        assert!((r.mean - 5.0 / 6.0).abs() < 1e-9, "{}", r.mean);
        assert_eq!(r.detections, 4);
        assert_eq!(r.objects, 2);
    }

    #[test]
    fn the_threshold_is_inclusive_and_classes_do_not_mix() {
        // IoU exactly 0.5: [0,0,10,10] vs [0,0,10,5]... area 50/100.
        let im = ImageDetections {
            truth: vec![(0, Bbox::new(0.0, 0.0, 10.0, 10.0))],
            found: vec![
                (1, sc(Bbox::new(0.0, 0.0, 10.0, 10.0), 0.99)),
                (0, sc(Bbox::new(0.0, 0.0, 10.0, 5.0), 0.5)),
            ],
        };
        let r = average_precision(&[im], 2, 0.5);
        assert_eq!(r.per_class[0], Some(1.0));
        assert_eq!(r.per_class[1], None);
        let missed = average_precision(
            &[ImageDetections {
                truth: vec![(0, b(0.0, 0.0, 10.0))],
                found: vec![],
            }],
            1,
            0.5,
        );
        assert_eq!(missed.mean, 0.0);
    }
}
