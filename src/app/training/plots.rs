//! The live training plots: one per metric, every selected run overlaid
//! with a legend, the raw line faint behind an exponential moving average,
//! x by step or by wall time, hover for values (egui_plot).

use egui::Color32;
use egui_plot::{Legend, Line, Plot, PlotPoints};

use crate::core::runs::Event;

/// The metrics plotted, by their TRL names (`StepEvent::metrics`), and
/// the REC accuracy of evaluations during training.
pub const METRICS: [&str; 9] = [
    "loss",
    "rewards/margins",
    "rewards/accuracies",
    "rewards/chosen",
    "rewards/rejected",
    "lr",
    "grad_norm",
    "tokens_per_s",
    "eval/acc@0.5",
];

/// What the x axis shows.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum XAxis {
    /// Optimizer step.
    #[default]
    Step,
    /// Seconds since the run's first logged step.
    WallTime,
}

/// `(x, y)` of `metric` in a run's events, in file order.
pub fn series(events: &[Event], metric: &str, x: XAxis) -> Vec<[f64; 2]> {
    let t0 = events.iter().find_map(|e| match e {
        Event::Step(s) => s.time,
        _ => None,
    });
    let xs = |step: u64, time: Option<f64>| match x {
        XAxis::Step => Some(step as f64),
        XAxis::WallTime => Some(time? - t0?),
    };
    events
        .iter()
        .filter_map(|e| match e {
            Event::Step(s) if !metric.starts_with("eval/") => {
                let v = s.metrics().into_iter().find(|(n, _)| *n == metric)?.1;
                Some([xs(s.step, s.time)?, v])
            }
            Event::Eval(ev) if metric == "eval/acc@0.5" => {
                Some([xs(ev.step, Some(ev.time))?, ev.acc_50])
            }
            _ => None,
        })
        .filter(|p| p[1].is_finite())
        .collect()
}

/// Exponential moving average with TensorBoard's debiasing: `weight` 0 is
/// the raw series, towards 1 ever smoother; the first value is never
/// pulled towards 0.
pub fn smooth(values: &[[f64; 2]], weight: f64) -> Vec<[f64; 2]> {
    let w = weight.clamp(0.0, 0.999);
    let mut last = 0.0;
    let mut debias = 1.0;
    values
        .iter()
        .map(|&[x, y]| {
            last = last * w + (1.0 - w) * y;
            debias *= w;
            [x, last / (1.0 - debias)]
        })
        .collect()
}

/// A run's colour, stable by its position in the list.
pub fn run_color(i: usize) -> Color32 {
    const C: [Color32; 8] = [
        Color32::from_rgb(66, 133, 244),
        Color32::from_rgb(234, 67, 53),
        Color32::from_rgb(52, 168, 83),
        Color32::from_rgb(251, 188, 5),
        Color32::from_rgb(171, 71, 188),
        Color32::from_rgb(0, 172, 193),
        Color32::from_rgb(255, 112, 67),
        Color32::from_rgb(158, 157, 36),
    ];
    C[i % C.len()]
}

/// One metric's plot for `runs` (name, colour index, events).
pub fn metric_plot(
    ui: &mut egui::Ui,
    metric: &str,
    runs: &[(String, usize, &[Event])],
    x: XAxis,
    smoothing: f64,
    height: f32,
) {
    ui.label(egui::RichText::new(metric).strong());
    Plot::new(("metric", metric))
        .height(height)
        .legend(Legend::default())
        .x_axis_label(match x {
            XAxis::Step => "step",
            XAxis::WallTime => "seconds",
        })
        .allow_scroll(false)
        .show(ui, |p| {
            for (name, color_index, events) in runs {
                let raw = series(events, metric, x);
                if raw.is_empty() {
                    continue;
                }
                let color = run_color(*color_index);
                if smoothing > 0.0 {
                    p.line(
                        Line::new(format!("{name} (raw)"), PlotPoints::new(raw.clone()))
                            .color(color.gamma_multiply(0.25))
                            .width(1.0)
                            .allow_hover(false),
                    );
                }
                p.line(
                    Line::new(name.clone(), PlotPoints::new(smooth(&raw, smoothing)))
                        .color(color)
                        .width(1.8),
                );
            }
        });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn smoothing_is_debiased_and_zero_weight_is_raw() {
        let v = [[0.0, 4.0], [1.0, 4.0], [2.0, 0.0]];
        assert_eq!(smooth(&v, 0.0), v.to_vec());
        let s = smooth(&v, 0.5);
        // No pull towards 0 at the start.
        assert!((s[0][1] - 4.0).abs() < 1e-12);
        assert!((s[1][1] - 4.0).abs() < 1e-12);
        // (0.5·(0.5·2 + 2) + 0) / (1 − 0.125) = 1.5 / 0.875
        assert!((s[2][1] - 1.5 / 0.875).abs() < 1e-12);
    }
}
