//! What the annotation canvas draws over an image: ground truth (missed
//! objects dashed at the live threshold), crowd boxes, the region and its
//! crop, the selected candidate's written boxes coloured by their match,
//! and the detector's boxes for its phrases.

use crate::app::canvas::{colors, OverlayBox};
use crate::app::overlay::BoxInstance;
use crate::core::workspace::Workspace;

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
