//! The live training plots: one per metric, every selected run overlaid
//! with a legend, the raw line faint behind an exponential moving average,
//! x by step or by wall time, hover for values (egui_plot).

use std::collections::HashMap;
use std::sync::Arc;

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
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
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

/// A run's series, raw and smoothed.
#[derive(Clone, Debug, Default)]
pub struct Series {
    /// `(x, y)` as logged.
    pub raw: Arc<Vec<[f64; 2]>>,
    /// Its moving average at the plots' smoothing.
    pub smoothed: Arc<Vec<[f64; 2]>>,
}

/// The plotted series, computed once per (run, metric, axis) and kept
/// until the run's events or the smoothing change, instead of being read
/// out of every event again each frame (a long run has tens of thousands).
#[derive(Debug, Default)]
pub struct SeriesCache {
    entries: HashMap<(String, &'static str, XAxis), (EventsSeen, u64, Series)>,
}

/// What identifies the events a series was computed from: how many there
/// were, and the last one's step (a run rewritten from the start changes it).
type EventsSeen = (usize, Option<u64>);

fn seen(events: &[Event]) -> EventsSeen {
    (events.len(), events.last().map(Event::step))
}

impl SeriesCache {
    /// `metric` of run `run` (its `events`) on axis `x`, smoothed with
    /// `smoothing`.
    pub fn get(
        &mut self,
        run: &str,
        events: &[Event],
        metric: &'static str,
        x: XAxis,
        smoothing: f64,
    ) -> Series {
        let key = (run.to_string(), metric, x);
        let now = seen(events);
        if let Some((at, w, series)) = self.entries.get(&key) {
            if *at == now && *w == smoothing.to_bits() {
                return series.clone();
            }
        }
        let raw = series(events, metric, x);
        let smoothed = smooth(&raw, smoothing);
        let s = Series {
            raw: Arc::new(raw),
            smoothed: Arc::new(smoothed),
        };
        self.entries
            .insert(key, (now, smoothing.to_bits(), s.clone()));
        s
    }
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
    metric: &'static str,
    runs: &[(String, usize, &[Event])],
    (x, smoothing): (XAxis, f64),
    height: f32,
    cache: &mut SeriesCache,
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
                let s = cache.get(name, events, metric, x, smoothing);
                if s.raw.is_empty() {
                    continue;
                }
                let color = run_color(*color_index);
                if smoothing > 0.0 {
                    p.line(
                        Line::new(format!("{name} (raw)"), PlotPoints::new(s.raw.to_vec()))
                            .color(color.gamma_multiply(0.25))
                            .width(1.0)
                            .allow_hover(false),
                    );
                }
                p.line(
                    Line::new(name.clone(), PlotPoints::new(s.smoothed.to_vec()))
                        .color(color)
                        .width(1.8),
                );
            }
        });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn step(n: u64, loss: f64) -> Event {
        Event::from_line(&format!(
            r#"{{"step": {n}, "epoch": 0.1, "loss": {loss}, "lr": 1e-5, "grad_norm": 1.0, "tokens_per_s": 100.0, "time": {n}.0}}"#
        ))
        .unwrap()
    }

    #[test]
    fn series_are_cached_until_the_events_or_the_smoothing_change() {
        let mut cache = SeriesCache::default();
        let mut events = vec![step(1, 0.7), step(2, 0.6)];
        let a = cache.get("run", &events, "loss", XAxis::Step, 0.5);
        assert_eq!(*a.raw, vec![[1.0, 0.7], [2.0, 0.6]]);
        let b = cache.get("run", &events, "loss", XAxis::Step, 0.5);
        assert!(Arc::ptr_eq(&a.raw, &b.raw), "recomputed without a change");
        events.push(step(3, 0.5));
        let c = cache.get("run", &events, "loss", XAxis::Step, 0.5);
        assert_eq!(c.raw.len(), 3);
        let d = cache.get("run", &events, "loss", XAxis::Step, 0.0);
        assert_eq!(*d.smoothed, *d.raw);
        // Another run of the same length is not confused with this one.
        let other = vec![step(1, 9.0), step(2, 9.0), step(3, 9.0)];
        assert_eq!(
            cache.get("other", &other, "loss", XAxis::Step, 0.0).raw[0][1],
            9.0
        );
    }

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
