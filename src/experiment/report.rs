//! The experiment's report: REC figures per arm (mean ± standard deviation
//! over seeds, gain over the base model), the four hypotheses of SPR and
//! fDPO checked against them, and the stages' times. Pure: it reads the
//! evaluation reports and writes text.

use serde::{Deserialize, Serialize};

use super::pairs::PairBoxes;
use crate::core::rec::{RecReport, REC_THRESHOLDS};

/// Mean and sample standard deviation.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Stat {
    /// Mean.
    pub mean: f64,
    /// Sample standard deviation (0 for one value).
    pub std: f64,
}

impl Stat {
    /// Of `xs` (not empty).
    pub fn of(xs: &[f64]) -> Stat {
        let n = xs.len().max(1) as f64;
        let mean = xs.iter().sum::<f64>() / n;
        let std = if xs.len() > 1 {
            (xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1.0)).sqrt()
        } else {
            0.0
        };
        Stat { mean, std }
    }
}

/// One arm's figures over its seeds.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ArmFigures {
    /// The arm's label.
    pub name: String,
    /// Objective (`dpo`, `sft`, `fdpo`, …).
    pub objective: String,
    /// λ of its pairs.
    pub lambda: f32,
    /// Seeds evaluated.
    pub seeds: Vec<u64>,
    /// Accuracy (0–1) at each of [`REC_THRESHOLDS`].
    pub accuracy: Vec<Stat>,
    /// Mean of the accuracies over the thresholds.
    pub mean_accuracy: Stat,
    /// Mean IoU.
    pub mean_iou: Stat,
    /// Parse rate.
    pub parse_rate: Stat,
}

impl ArmFigures {
    /// Aggregates the evaluation reports of one arm's seeds.
    pub fn from_reports(
        name: &str,
        objective: &str,
        lambda: f32,
        runs: &[(u64, RecReport)],
    ) -> ArmFigures {
        let at = |t: f32| -> Vec<f64> {
            runs.iter()
                .map(|(_, r)| f64::from(r.accuracy_at(t).unwrap_or(0.0)))
                .collect()
        };
        let per_run_mean: Vec<f64> = runs
            .iter()
            .map(|(_, r)| {
                REC_THRESHOLDS
                    .iter()
                    .map(|&t| f64::from(r.accuracy_at(t).unwrap_or(0.0)))
                    .sum::<f64>()
                    / REC_THRESHOLDS.len() as f64
            })
            .collect();
        ArmFigures {
            name: name.into(),
            objective: objective.into(),
            lambda,
            seeds: runs.iter().map(|(s, _)| *s).collect(),
            accuracy: REC_THRESHOLDS.iter().map(|&t| Stat::of(&at(t))).collect(),
            mean_accuracy: Stat::of(&per_run_mean),
            mean_iou: Stat::of(
                &runs
                    .iter()
                    .map(|(_, r)| f64::from(r.mean_iou))
                    .collect::<Vec<_>>(),
            ),
            parse_rate: Stat::of(
                &runs
                    .iter()
                    .map(|(_, r)| f64::from(r.parse_rate))
                    .collect::<Vec<_>>(),
            ),
        }
    }
}

/// How long a stage took.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct StageTime {
    /// What ran.
    pub stage: String,
    /// Wall-clock seconds (0 when it was already done and skipped).
    pub seconds: f64,
    /// Whether an earlier invocation had already done it.
    pub skipped: bool,
}

/// A hypothesis and what the figures say of it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Verdict {
    /// The hypothesis, in words.
    pub hypothesis: String,
    /// `supported`, `same direction, within the seed spread`, `not
    /// supported`, or `not tested` (an arm is missing).
    pub verdict: String,
    /// The figures it rests on.
    pub evidence: String,
}

/// Everything the report shows.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ExperimentReport {
    /// The experiment's name.
    pub name: String,
    /// The base model.
    pub base_model: String,
    /// REC samples per evaluation.
    pub samples: usize,
    /// The base model's figures (one evaluation).
    pub base: ArmFigures,
    /// The arms.
    pub arms: Vec<ArmFigures>,
    /// The hypotheses.
    pub verdicts: Vec<Verdict>,
    /// Box counts of each λ's pairs (absent in reports written before
    /// they were counted).
    #[serde(default)]
    pub pairs: Vec<PairBoxes>,
    /// Stage times.
    pub stages: Vec<StageTime>,
}

/// The verdict on "a > b" (`strict`) or "a ≥ b" from two statistics:
/// beyond the combined seed spread, in the direction but within it, or
/// not. A tie is in the direction of "a ≥ b" only.
fn compare(a: Stat, b: Stat, strict: bool) -> &'static str {
    let d = a.mean - b.mean;
    let spread = (a.std.powi(2) + b.std.powi(2)).sqrt();
    if d > spread && d > 0.0 {
        "supported"
    } else if d > 0.0 || (d == 0.0 && !strict) {
        "same direction, within the seed spread"
    } else {
        "not supported"
    }
}

fn pts(x: f64) -> String {
    format!("{:.1}", 100.0 * x)
}

fn pm(s: Stat) -> String {
    format!("{} ± {}", pts(s.mean), pts(s.std))
}

/// The four hypotheses checked on the arms (found by objective and λ: the
/// main DPO arm is the DPO arm with 0 < λ < 1). `samples`: expressions per
/// evaluation; a difference of one expression or less is no difference
/// (seeds that agree on a single expression have no spread).
pub fn verdicts(base: &ArmFigures, arms: &[ArmFigures], samples: usize) -> Vec<Verdict> {
    let one = 1.0 / samples.max(1) as f64;
    let find = |obj: &str, pred: &dyn Fn(f32) -> bool| {
        arms.iter().find(|a| a.objective == obj && pred(a.lambda))
    };
    let dpo = find("dpo", &|l| l > 0.0 && l < 1.0);
    let dpo0 = find("dpo", &|l| l == 0.0);
    let dpo1 = find("dpo", &|l| l == 1.0);
    let sft = find("sft", &|_| true);
    let fdpo = find("fdpo", &|_| true);
    let missing = |h: &str| Verdict {
        hypothesis: h.into(),
        verdict: "not tested".into(),
        evidence: "an arm it needs is not in the config".into(),
    };
    let mut out = Vec::new();
    let h1 = "DPO's gain over the base model grows with the IoU threshold (SPR: +1.0 at 0.5 … +9.0 at 0.9 for Ferret-7B)";
    out.push(match dpo {
        Some(d) => {
            let n = REC_THRESHOLDS.len() - 1;
            let gain = |i: usize| Stat {
                mean: d.accuracy[i].mean - base.accuracy[i].mean,
                std: d.accuracy[i].std,
            };
            let (g_lo, g_hi) = (gain(0), gain(n));
            let gains: Vec<String> = (0..=n)
                .map(|i| format!("{:+.1}", 100.0 * gain(i).mean))
                .collect();
            // SPR's shape is a gain at every threshold, largest at 0.9: a
            // loss that shrinks to nothing at 0.9 (where the base is near
            // 0 %) is no gain, and neither is one expression.
            let losses: Vec<String> = (0..=n)
                .filter(|&i| gain(i).mean < -gain(i).std.max(one))
                .map(|i| REC_THRESHOLDS[i].to_string())
                .collect();
            let (verdict, note) = if g_hi.mean <= g_hi.std.max(one) {
                (
                    "not supported",
                    "; no gain at 0.9 beyond the seed spread and one expression".to_string(),
                )
            } else if !losses.is_empty() {
                (
                    "not supported",
                    format!("; it loses accuracy at {}", losses.join(", ")),
                )
            } else {
                (compare(g_hi, g_lo, true), String::new())
            };
            Verdict {
                hypothesis: h1.into(),
                verdict: verdict.into(),
                evidence: format!(
                    "{}: gain at 0.5 … 0.9 = {} points (seed std at 0.5 {}, at 0.9 {}){note}",
                    d.name,
                    gains.join(", "),
                    pts(g_lo.std),
                    pts(g_hi.std)
                ),
            }
        }
        None => missing(h1),
    });
    let mean_line = |a: &ArmFigures| format!("{} {}", a.name, pm(a.mean_accuracy));
    // Comparing two arms that both lost accuracy compares losses.
    let below_base = |a: &ArmFigures| {
        if base.mean_accuracy.mean - a.mean_accuracy.mean > a.mean_accuracy.std.max(one) {
            format!(
                "; {} is itself below the base ({} vs {}), so this compares losses, not gains",
                a.name,
                pts(a.mean_accuracy.mean),
                pts(base.mean_accuracy.mean)
            )
        } else {
            String::new()
        }
    };
    let h2 = "SFT on the refined chosen answers gains less than DPO (SPR: about half)";
    out.push(match (dpo, sft) {
        (Some(d), Some(s)) => Verdict {
            hypothesis: h2.into(),
            verdict: compare(d.mean_accuracy, s.mean_accuracy, true).into(),
            evidence: format!(
                "mean accuracy over 0.5–0.9: {} vs {} (base {}){}",
                mean_line(d),
                mean_line(s),
                pts(base.mean_accuracy.mean),
                below_base(d)
            ),
        },
        _ => missing(h2),
    });
    let h3 = "λ = 0.8 is at least as good as λ = 0 (localization only) and λ = 1 (semantic only)";
    out.push(match (dpo, dpo0, dpo1) {
        (Some(d), Some(z), Some(o)) => {
            let v = [
                compare(d.mean_accuracy, z.mean_accuracy, false),
                compare(d.mean_accuracy, o.mean_accuracy, false),
            ];
            let verdict = if v.contains(&"not supported") {
                "not supported"
            } else if v.iter().all(|x| *x == "supported") {
                "supported"
            } else {
                "same direction, within the seed spread"
            };
            Verdict {
                hypothesis: h3.into(),
                verdict: verdict.into(),
                evidence: format!(
                    "mean accuracy over 0.5–0.9: {}; {}; {}",
                    mean_line(d),
                    mean_line(z),
                    mean_line(o)
                ),
            }
        }
        _ => missing(h3),
    });
    let h4 = "fDPO is at least as good as DPO (SpatialReasoner-R1: +4.1 / +9.0)";
    out.push(match (dpo, fdpo) {
        (Some(d), Some(f)) => Verdict {
            hypothesis: h4.into(),
            verdict: compare(f.mean_accuracy, d.mean_accuracy, false).into(),
            evidence: format!(
                "mean accuracy over 0.5–0.9: {} vs {}{}",
                mean_line(f),
                mean_line(d),
                below_base(d)
            ),
        },
        _ => missing(h4),
    });
    out
}

/// A base below this REC Acc@0.5 localizes weakly: the arms then compare
/// little (the experiment's issue asks for a base at 40-85 %).
pub const WEAK_BASE_ACC: f64 = 0.40;

impl ExperimentReport {
    /// What makes the figures weaker evidence than they look: a base that
    /// localizes weakly, pairs whose chosen answers hold a box less often
    /// than their rejected ones,
    /// arms that lost the answer format (half the base's parse rate or
    /// less).
    pub fn caveats(&self) -> Vec<String> {
        let mut out = Vec::new();
        let base_acc = self.base.accuracy.first().map_or(0.0, |s| s.mean);
        if base_acc < WEAK_BASE_ACC {
            out.push(format!(
                "The base model's Acc@0.5 is {} %, below {} %, the least the experiment asks for: it localizes weakly, so the pairs rest on poorly localized candidates and the arms compare little",
                pts(base_acc),
                pts(WEAK_BASE_ACC)
            ));
        }
        for p in self.pairs.iter().filter(|p| p.favours_no_box()) {
            out.push(format!(
                "Pairs at λ = {}: {} of {} refined chosen answers hold a box, against {} rejected ones (refinement kept {} of the chosen's {} written boxes): the pairs lean towards answers without boxes, while REC asks for one",
                p.lambda,
                p.chosen_with_box,
                p.pairs,
                p.rejected_with_box,
                p.chosen_boxes_kept,
                p.chosen_boxes_written
            ));
        }
        for a in &self.arms {
            if a.parse_rate.mean <= 0.5 * self.base.parse_rate.mean {
                out.push(format!(
                    "{}: parse rate {:.2} (base {:.2}); most answers carry no box, so its accuracy measures the lost answer format, not localization",
                    a.name, a.parse_rate.mean, self.base.parse_rate.mean
                ));
            }
        }
        out
    }

    /// The report as Markdown; `plot` is the PNG's file name beside it.
    pub fn markdown(&self, plot: &str, command: &str) -> String {
        let mut s = String::new();
        s.push_str(&format!("# Experiment `{}`\n\n", self.name));
        s.push_str(&format!(
            "Written by `{command}`. Base model `{}`; every figure is REC accuracy (%) on {} held-out synthetic expressions, mean ± standard deviation over seeds; gains are in points over the base model.\n\n",
            self.base_model, self.samples
        ));
        let mut head = String::from("| arm | seeds |");
        let mut rule = String::from("|---|---|");
        for t in REC_THRESHOLDS {
            head.push_str(&format!(" Acc@{t} |"));
            rule.push_str("---|");
        }
        head.push_str(" mean IoU | parse rate |\n");
        rule.push_str("---|---|\n");
        s.push_str(&head);
        s.push_str(&rule);
        let row = |a: &ArmFigures, base: Option<&ArmFigures>| {
            let mut r = format!("| {} | {} |", a.name, a.seeds.len());
            for (i, st) in a.accuracy.iter().enumerate() {
                match base {
                    Some(b) => r.push_str(&format!(
                        " {} ({:+.1}) |",
                        pm(*st),
                        100.0 * (st.mean - b.accuracy[i].mean)
                    )),
                    None => r.push_str(&format!(" {} |", pts(st.mean))),
                }
            }
            r.push_str(&format!(
                " {:.3} ± {:.3} | {:.2} |\n",
                a.mean_iou.mean, a.mean_iou.std, a.parse_rate.mean
            ));
            r
        };
        s.push_str(&row(&self.base, None));
        for a in &self.arms {
            s.push_str(&row(a, Some(&self.base)));
        }
        s.push_str(&format!("\n![REC accuracy by IoU threshold]({plot})\n\n"));
        s.push_str("## The hypotheses\n\n");
        for v in &self.verdicts {
            s.push_str(&format!(
                "- **{}**: {}. {}.\n",
                v.hypothesis, v.verdict, v.evidence
            ));
        }
        s.push_str(
            "\n\"Supported\" means the difference is in the predicted direction and larger than the seeds' combined standard deviation; with three seeds that is a weak test, not a significance test.\n\n",
        );
        if !self.pairs.is_empty() {
            s.push_str("## The pairs\n\nWhat each λ's pairs hold: a refined chosen answer keeps only the boxes that match an annotation with IoU > 0.5.\n\n| λ | pairs | chosen with a box | rejected with a box | chosen's boxes kept / written |\n|---|---|---|---|---|\n");
            for p in &self.pairs {
                s.push_str(&format!(
                    "| {} | {} | {} | {} | {} / {} |\n",
                    p.lambda,
                    p.pairs,
                    p.chosen_with_box,
                    p.rejected_with_box,
                    p.chosen_boxes_kept,
                    p.chosen_boxes_written
                ));
            }
            s.push('\n');
        }
        let caveats = self.caveats();
        if !caveats.is_empty() {
            s.push_str("## Caveats\n\n");
            for c in &caveats {
                s.push_str(&format!("- {c}.\n"));
            }
            s.push('\n');
        }
        s.push_str("## Stages\n\n| stage | seconds |\n|---|---|\n");
        let mut total = 0.0;
        for st in &self.stages {
            total += st.seconds;
            let note = if st.skipped { " (done earlier)" } else { "" };
            s.push_str(&format!("| {}{} | {:.0} |\n", st.stage, note, st.seconds));
        }
        s.push_str(&format!("| **total** | {total:.0} |\n"));
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(accs: [f32; 5]) -> RecReport {
        RecReport {
            samples: 10,
            no_box: 0,
            accuracy: REC_THRESHOLDS.iter().copied().zip(accs).collect(),
            mean_iou: 0.5,
            parse_rate: 1.0,
        }
    }

    #[test]
    fn statistics_and_verdicts_follow_the_figures() {
        let s = Stat::of(&[1.0, 2.0, 3.0]);
        assert!((s.mean - 2.0).abs() < 1e-12 && (s.std - 1.0).abs() < 1e-12);
        let base = ArmFigures::from_reports(
            "base",
            "base",
            0.0,
            &[(0, report([0.6, 0.5, 0.4, 0.2, 0.05]))],
        );
        let dpo = ArmFigures::from_reports(
            "DPO",
            "dpo",
            0.8,
            &[
                (1, report([0.61, 0.53, 0.45, 0.3, 0.15])),
                (2, report([0.62, 0.54, 0.46, 0.31, 0.16])),
            ],
        );
        let sft = ArmFigures::from_reports(
            "SFT",
            "sft",
            0.8,
            &[
                (1, report([0.6, 0.5, 0.4, 0.2, 0.05])),
                (2, report([0.61, 0.5, 0.4, 0.2, 0.06])),
            ],
        );
        let v = verdicts(&base, &[dpo.clone(), sft], 100);
        assert_eq!(v[0].verdict, "supported", "{:?}", v[0]);
        assert_eq!(v[1].verdict, "supported", "{:?}", v[1]);
        assert_eq!(v[2].verdict, "not tested");
        assert_eq!(v[3].verdict, "not tested");
        // A worse fDPO is reported as not supported.
        let fdpo = ArmFigures::from_reports(
            "fDPO",
            "fdpo",
            0.8,
            &[(1, report([0.5, 0.4, 0.3, 0.1, 0.0]))],
        );
        let v = verdicts(&base, &[dpo, fdpo], 100);
        assert_eq!(v[3].verdict, "not supported");
    }

    #[test]
    fn a_loss_that_shrinks_to_nothing_and_a_tie_support_nothing() {
        let base = ArmFigures::from_reports(
            "base",
            "base",
            0.0,
            &[(0, report([0.05, 0.04, 0.03, 0.02, 0.0]))],
        );
        // Every arm lost the format: 0 % everywhere.
        let broken = |name: &str, objective: &str| {
            let mut a = ArmFigures::from_reports(
                name,
                objective,
                0.8,
                &[
                    (1, report([0.0, 0.0, 0.0, 0.0, 0.0])),
                    (2, report([0.0, 0.0, 0.0, 0.0, 0.0])),
                ],
            );
            a.parse_rate = Stat::of(&[0.0, 0.0]);
            a
        };
        let v = verdicts(&base, &[broken("DPO", "dpo"), broken("SFT", "sft")], 100);
        // The "gain" rises from -5 points to 0: no gain, not a growing one.
        assert_eq!(v[0].verdict, "not supported", "{:?}", v[0]);
        assert!(v[0].evidence.contains("no gain at 0.9"), "{:?}", v[0]);
        // Both arms lost: the SFT comparison says it compares losses.
        assert!(v[1].evidence.contains("compares losses"), "{:?}", v[1]);
        // SFT below DPO is a strict claim: a tie does not support it.
        assert_eq!(v[1].verdict, "not supported", "{:?}", v[1]);
        let r = ExperimentReport {
            name: "t".into(),
            base_model: "b".into(),
            samples: 10,
            base,
            arms: vec![broken("DPO", "dpo")],
            verdicts: v,
            pairs: vec![
                PairBoxes {
                    lambda: 0.8,
                    pairs: 10,
                    chosen_with_box: 2,
                    rejected_with_box: 9,
                    chosen_boxes_written: 30,
                    chosen_boxes_kept: 3,
                },
                PairBoxes {
                    lambda: 0.0,
                    pairs: 10,
                    chosen_with_box: 9,
                    rejected_with_box: 5,
                    chosen_boxes_written: 30,
                    chosen_boxes_kept: 8,
                },
            ],
            stages: Vec::new(),
        };
        let c = r.caveats();
        assert_eq!(c.len(), 3, "{c:?}");
        assert!(c[0].contains("5.0 %, below 40.0 %"), "{c:?}");
        assert!(
            c[1].starts_with("Pairs at λ = 0.8: 2 of 10 refined chosen answers hold a box, against 9 rejected ones (refinement kept 3 of the chosen's 30"),
            "{c:?}"
        );
        assert!(c[2].starts_with("DPO: parse rate 0.00"), "{c:?}");
        let md = r.markdown("p.png", "cmd");
        assert!(md.contains("## Caveats\n\n- The base model"), "{md}");
        assert!(md.contains("| 0 | 10 | 9 | 5 | 8 / 30 |\n"), "{md}");
    }

    #[test]
    fn a_gain_of_one_expression_or_beside_losses_is_not_spr_shape() {
        let base = ArmFigures::from_reports(
            "base",
            "base",
            0.0,
            &[(0, report([0.43, 0.29, 0.13, 0.02, 0.0]))],
        );
        let dpo = |at_09: f32| {
            ArmFigures::from_reports(
                "DPO",
                "dpo",
                0.8,
                &[
                    (1, report([0.38, 0.24, 0.10, 0.02, at_09])),
                    (2, report([0.39, 0.24, 0.09, 0.02, at_09])),
                ],
            )
        };
        // Every seed right on the same single expression at 0.9 (of 269):
        // no spread, but no gain either.
        let v = verdicts(&base, &[dpo(1.0 / 269.0)], 269);
        assert_eq!(v[0].verdict, "not supported", "{:?}", v[0]);
        assert!(v[0]
            .evidence
            .contains("beyond the seed spread and one expression"));
        // A real gain at 0.9 beside losses at 0.5-0.7 is not SPR's shape.
        let v = verdicts(&base, &[dpo(0.05)], 269);
        assert_eq!(v[0].verdict, "not supported", "{:?}", v[0]);
        assert!(
            v[0].evidence
                .ends_with("it loses accuracy at 0.5, 0.6, 0.7"),
            "{:?}",
            v[0]
        );
    }
}
