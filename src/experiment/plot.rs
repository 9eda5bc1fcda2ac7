//! The report's plot: REC accuracy against the IoU threshold, one line per
//! arm (mean over seeds, bars ±1 standard deviation) and the base model
//! dashed, as a PNG drawn by plotters with egui's own font (no system
//! fonts needed on a cluster node).

use std::path::Path;

use anyhow::{anyhow, Result};
use plotters::prelude::*;

use super::report::ArmFigures;
use crate::core::rec::REC_THRESHOLDS;

const FONT: &str = "sans-serif";

/// Line colours, in arm order.
const PALETTE: [RGBColor; 8] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(23, 190, 207),
];

/// Draws the curves into `path` (PNG, 960×600).
pub fn accuracy_curves(
    path: &Path,
    title: &str,
    base: &ArmFigures,
    arms: &[ArmFigures],
) -> Result<()> {
    // Registering twice is harmless; the font is needed once per process.
    plotters::style::register_font(FONT, FontStyle::Normal, epaint_default_fonts::UBUNTU_LIGHT)
        .map_err(|_| anyhow!("the plot font did not load"))?;
    let e = |e: DrawingAreaErrorKind<_>| anyhow!("drawing {}: {e}", path.display());
    let root = BitMapBackend::new(path, (960, 600)).into_drawing_area();
    root.fill(&WHITE).map_err(e)?;
    let top = arms
        .iter()
        .chain(std::iter::once(base))
        .flat_map(|a| a.accuracy.iter().map(|s| s.mean + s.std))
        .fold(0.0f64, f64::max);
    let y_max = ((top * 100.0 / 10.0).ceil() * 10.0).clamp(10.0, 100.0);
    let mut chart = ChartBuilder::on(&root)
        .caption(title, (FONT, 24))
        .margin(18)
        .x_label_area_size(48)
        .y_label_area_size(60)
        .build_cartesian_2d(0.48f64..0.92f64, 0.0f64..y_max)
        .map_err(e)?;
    chart
        .configure_mesh()
        .x_desc("IoU threshold")
        .y_desc("REC accuracy (%)")
        .x_labels(5)
        .x_label_formatter(&|x| format!("{x:.1}"))
        .label_style((FONT, 16))
        .axis_desc_style((FONT, 18))
        .draw()
        .map_err(e)?;
    let xs: Vec<f64> = REC_THRESHOLDS.iter().map(|&t| f64::from(t)).collect();
    let base_points: Vec<(f64, f64)> = xs
        .iter()
        .zip(&base.accuracy)
        .map(|(&x, s)| (x, 100.0 * s.mean))
        .collect();
    let grey = RGBColor(90, 90, 90);
    chart
        .draw_series(DashedLineSeries::new(
            base_points,
            8,
            5,
            grey.stroke_width(2),
        ))
        .map_err(e)?
        .label(base.name.clone())
        .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 24, y)], grey.stroke_width(2)));
    for (i, arm) in arms.iter().enumerate() {
        let c = PALETTE[i % PALETTE.len()];
        // Arms are nudged apart along x so their error bars do not overlap.
        let dx = (i as f64 - (arms.len() as f64 - 1.0) / 2.0) * 0.004;
        let points: Vec<(f64, f64)> = xs
            .iter()
            .zip(&arm.accuracy)
            .map(|(&x, s)| (x + dx, 100.0 * s.mean))
            .collect();
        chart
            .draw_series(LineSeries::new(points.clone(), c.stroke_width(2)))
            .map_err(e)?
            .label(format!("{} ({} seeds)", arm.name, arm.seeds.len()))
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 24, y)], c.stroke_width(2)));
        chart
            .draw_series(xs.iter().zip(&arm.accuracy).map(|(&x, s)| {
                ErrorBar::new_vertical(
                    x + dx,
                    100.0 * (s.mean - s.std).max(0.0),
                    100.0 * s.mean,
                    100.0 * (s.mean + s.std),
                    c.filled(),
                    6,
                )
            }))
            .map_err(e)?;
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .label_font((FONT, 16))
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()
        .map_err(e)?;
    root.present().map_err(e)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::rec::RecReport;

    #[test]
    fn draws_a_png() {
        let r = |a: f32| RecReport {
            samples: 4,
            no_box: 0,
            accuracy: REC_THRESHOLDS.iter().map(|&t| (t, a * (1.0 - t))).collect(),
            mean_iou: 0.5,
            parse_rate: 1.0,
        };
        let base = ArmFigures::from_reports("tiny", "base", 0.0, &[(0, r(1.0))]);
        let arm = ArmFigures::from_reports("DPO λ=0.8", "dpo", 0.8, &[(1, r(1.2)), (2, r(1.3))]);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("plot.png");
        accuracy_curves(&path, "test", &base, &[arm]).unwrap();
        let img = image::open(&path).unwrap();
        assert_eq!((img.width(), img.height()), (960, 600));
        // Something other than the white background was drawn.
        let rgb = img.to_rgb8();
        assert!(rgb.pixels().filter(|p| p.0 != [255, 255, 255]).count() > 5_000);
    }
}
