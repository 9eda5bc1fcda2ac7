//! The lines of a run's `events.jsonl`, typed.
//!
//! The file is append-only: the trainer writes one line per event and
//! flushes it, and readers (the CLI, the GUI tailing a live run) parse
//! whatever complete lines are there. Four kinds of line:
//!
//! | kind | marker | fields |
//! |---|---|---|
//! | [`StepEvent`] | no `event` field (TRL's flat log line) | `step`, `epoch`, `loss`, `rewards/chosen`, `rewards/rejected`, `rewards/margins`, `rewards/accuracies`, `logps/chosen`, `logps/rejected` (the reward and rejected metrics are absent for supervised steps), `lr`, `grad_norm`, `tokens_per_s`, `time` |
//! | [`EvalEvent`] | `"event": "eval"` | `step`, `eval/acc@0.5` … `eval/acc@0.9`, `eval/mean_iou`, `eval/parse_rate`, `samples`, `data`, `file` (the per-sample JSONL, relative to the run), `duration_s`, `time` |
//! | [`StartEvent`] | `"event": "start"` | `step` (0, or the checkpoint resumed from), `pid`, `time` |
//! | [`EndEvent`] | `"event": "end"` | `status` (`finished`, `stopped`, `crashed`), `step`, `message`, `time` |
//!
//! `time` is seconds since the Unix epoch (a wall-time axis that spans
//! resumes). Step lines written before `time` existed still read. A
//! non-finite number is written as `null` by JSON encoders and reads back
//! as NaN.

use serde::{Deserialize, Deserializer, Serialize};

use crate::core::rec::{RecReport, REC_THRESHOLDS};

/// Seconds since the Unix epoch, now.
pub fn now_s() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

fn nan_if_null<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
    Ok(Option::<f64>::deserialize(d)?.unwrap_or(f64::NAN))
}

/// One optimizer step (TRL's metric names).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StepEvent {
    /// Optimizer step, 1-based.
    pub step: u64,
    /// Fractional epoch after the step.
    #[serde(deserialize_with = "nan_if_null")]
    pub epoch: f64,
    /// The objective's loss.
    #[serde(deserialize_with = "nan_if_null")]
    pub loss: f64,
    /// Mean β·(log πθ − log πref) of the chosen responses.
    #[serde(
        rename = "rewards/chosen",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub rewards_chosen: Option<f64>,
    /// The same for the rejected responses.
    #[serde(
        rename = "rewards/rejected",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub rewards_rejected: Option<f64>,
    /// Mean chosen − rejected reward.
    #[serde(
        rename = "rewards/margins",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub rewards_margins: Option<f64>,
    /// Share of pairs whose chosen reward is larger.
    #[serde(
        rename = "rewards/accuracies",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub rewards_accuracies: Option<f64>,
    /// Mean policy log-prob of the chosen responses.
    #[serde(
        rename = "logps/chosen",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub logps_chosen: Option<f64>,
    /// Mean policy log-prob of the rejected responses.
    #[serde(
        rename = "logps/rejected",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub logps_rejected: Option<f64>,
    /// Learning rate of the step.
    #[serde(deserialize_with = "nan_if_null")]
    pub lr: f64,
    /// Gradient norm before clipping.
    #[serde(deserialize_with = "nan_if_null")]
    pub grad_norm: f64,
    /// Real tokens per second in the step.
    #[serde(deserialize_with = "nan_if_null")]
    pub tokens_per_s: f64,
    /// When the step ended (Unix seconds); absent in older files.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time: Option<f64>,
}

impl StepEvent {
    /// The metrics a dashboard plots, by their TRL names, in a fixed
    /// order; absent ones are left out.
    pub fn metrics(&self) -> Vec<(&'static str, f64)> {
        let mut out = vec![("loss", self.loss)];
        for (name, v) in [
            ("rewards/chosen", self.rewards_chosen),
            ("rewards/rejected", self.rewards_rejected),
            ("rewards/margins", self.rewards_margins),
            ("rewards/accuracies", self.rewards_accuracies),
            ("logps/chosen", self.logps_chosen),
            ("logps/rejected", self.logps_rejected),
        ] {
            if let Some(v) = v {
                out.push((name, v));
            }
        }
        out.extend([
            ("lr", self.lr),
            ("grad_norm", self.grad_norm),
            ("tokens_per_s", self.tokens_per_s),
        ]);
        out
    }
}

/// A REC evaluation of the policy during training.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EvalEvent {
    /// The optimizer step the policy had reached.
    pub step: u64,
    /// Accuracy at IoU ≥ 0.5.
    #[serde(rename = "eval/acc@0.5", deserialize_with = "nan_if_null")]
    pub acc_50: f64,
    /// Accuracy at IoU ≥ 0.6.
    #[serde(rename = "eval/acc@0.6", deserialize_with = "nan_if_null")]
    pub acc_60: f64,
    /// Accuracy at IoU ≥ 0.7.
    #[serde(rename = "eval/acc@0.7", deserialize_with = "nan_if_null")]
    pub acc_70: f64,
    /// Accuracy at IoU ≥ 0.8.
    #[serde(rename = "eval/acc@0.8", deserialize_with = "nan_if_null")]
    pub acc_80: f64,
    /// Accuracy at IoU ≥ 0.9.
    #[serde(rename = "eval/acc@0.9", deserialize_with = "nan_if_null")]
    pub acc_90: f64,
    /// Mean IoU.
    #[serde(rename = "eval/mean_iou", deserialize_with = "nan_if_null")]
    pub mean_iou: f64,
    /// Fraction of answers holding a box.
    #[serde(rename = "eval/parse_rate", deserialize_with = "nan_if_null")]
    pub parse_rate: f64,
    /// Samples evaluated.
    pub samples: usize,
    /// The REC set.
    pub data: String,
    /// The per-sample records (`RecSample` lines), relative to the run
    /// folder.
    pub file: String,
    /// Seconds the evaluation took.
    pub duration_s: f64,
    /// When it ended (Unix seconds).
    pub time: f64,
}

impl EvalEvent {
    /// The event for a report of `step`.
    pub fn from_report(
        step: u64,
        report: &RecReport,
        data: String,
        file: String,
        duration_s: f64,
    ) -> Self {
        let acc = |t: f32| f64::from(report.accuracy_at(t).unwrap_or(f32::NAN));
        Self {
            step,
            acc_50: acc(0.5),
            acc_60: acc(0.6),
            acc_70: acc(0.7),
            acc_80: acc(0.8),
            acc_90: acc(0.9),
            mean_iou: f64::from(report.mean_iou),
            parse_rate: f64::from(report.parse_rate),
            samples: report.samples,
            data,
            file,
            duration_s,
            time: now_s(),
        }
    }

    /// `(threshold, accuracy)` at each of [`REC_THRESHOLDS`].
    pub fn curve(&self) -> [(f32, f64); 5] {
        let a = [
            self.acc_50,
            self.acc_60,
            self.acc_70,
            self.acc_80,
            self.acc_90,
        ];
        std::array::from_fn(|i| (REC_THRESHOLDS[i], a[i]))
    }
}

/// A trainer process began (or resumed) the run.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StartEvent {
    /// The step it starts from (0 for a new run).
    pub step: u64,
    /// The process id.
    pub pid: u32,
    /// When (Unix seconds).
    pub time: f64,
}

/// How a trainer process ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EndStatus {
    /// Every step ran; the final adapter or model is written.
    Finished,
    /// Stopped on request (Ctrl-C, SIGTERM, the GUI's Stop) with a
    /// checkpoint: resumable.
    Stopped,
    /// Stopped by an error, named in the message.
    Crashed,
}

/// A trainer process ended.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EndEvent {
    /// How.
    pub status: EndStatus,
    /// Steps done.
    pub step: u64,
    /// The error, for a crash.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// When (Unix seconds).
    pub time: f64,
}

/// One line of `events.jsonl`.
#[derive(Clone, Debug, PartialEq)]
pub enum Event {
    /// An optimizer step.
    Step(StepEvent),
    /// A REC evaluation.
    Eval(EvalEvent),
    /// A trainer process started.
    Start(StartEvent),
    /// A trainer process ended.
    End(EndEvent),
}

impl Event {
    /// The step the event belongs to.
    pub fn step(&self) -> u64 {
        match self {
            Event::Step(e) => e.step,
            Event::Eval(e) => e.step,
            Event::Start(e) => e.step,
            Event::End(e) => e.step,
        }
    }

    /// The JSON line (without the newline).
    pub fn to_line(&self) -> String {
        let tagged = |kind: &str, v: serde_json::Value| {
            let mut v = v;
            if let Some(map) = v.as_object_mut() {
                map.insert("event".into(), kind.into());
            }
            v
        };
        let value = match self {
            Event::Step(e) => serde_json::to_value(e),
            Event::Eval(e) => serde_json::to_value(e).map(|v| tagged("eval", v)),
            Event::Start(e) => serde_json::to_value(e).map(|v| tagged("start", v)),
            Event::End(e) => serde_json::to_value(e).map(|v| tagged("end", v)),
        };
        // These structs hold only numbers and strings: encoding cannot fail.
        value.map(|v| v.to_string()).unwrap_or_default()
    }

    /// Parses one line; the error names the field.
    pub fn from_line(line: &str) -> Result<Event, String> {
        let mut v: serde_json::Value = serde_json::from_str(line).map_err(|e| e.to_string())?;
        let kind = v
            .as_object_mut()
            .and_then(|m| m.remove("event"))
            .map(|k| {
                k.as_str()
                    .map(str::to_string)
                    .ok_or("field \"event\": not a string")
            })
            .transpose()?;
        let err = |e: serde_json::Error| e.to_string();
        Ok(match kind.as_deref() {
            None | Some("step") => Event::Step(serde_json::from_value(v).map_err(err)?),
            Some("eval") => Event::Eval(serde_json::from_value(v).map_err(err)?),
            Some("start") => Event::Start(serde_json::from_value(v).map_err(err)?),
            Some("end") => Event::End(serde_json::from_value(v).map_err(err)?),
            Some(other) => return Err(format!("field \"event\": unknown kind {other:?}")),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_round_trips() {
        let events = [
            Event::Start(StartEvent {
                step: 0,
                pid: 7,
                time: 1.5,
            }),
            Event::Step(StepEvent {
                step: 1,
                epoch: 0.25,
                loss: 0.693,
                rewards_chosen: Some(0.0),
                rewards_rejected: Some(0.0),
                rewards_margins: Some(0.0),
                rewards_accuracies: Some(0.0),
                logps_chosen: Some(-10.0),
                logps_rejected: Some(-11.0),
                lr: 1e-5,
                grad_norm: 2.0,
                tokens_per_s: 1000.0,
                time: Some(2.0),
            }),
            Event::Eval(EvalEvent {
                step: 1,
                acc_50: 0.5,
                acc_60: 0.4,
                acc_70: 0.3,
                acc_80: 0.2,
                acc_90: 0.1,
                mean_iou: 0.45,
                parse_rate: 1.0,
                samples: 10,
                data: "rec.json".into(),
                file: "eval/step-000001.jsonl".into(),
                duration_s: 3.0,
                time: 4.0,
            }),
            Event::End(EndEvent {
                status: EndStatus::Crashed,
                step: 1,
                message: Some("boom".into()),
                time: 5.0,
            }),
        ];
        for e in &events {
            let line = e.to_line();
            assert_eq!(&Event::from_line(&line).unwrap(), e, "{line}");
        }
        assert!(events[2].to_line().contains("\"eval/acc@0.9\":0.1"));
        assert!(!events[1].to_line().contains("event"));
    }

    #[test]
    fn old_step_lines_and_nulls_read() {
        // A line as the trainer wrote it before `time`, with a NaN norm.
        let line = r#"{"step":3,"epoch":0.1,"loss":0.5,"logps/chosen":-4.0,"lr":0.001,"grad_norm":null,"tokens_per_s":900.0}"#;
        let Event::Step(s) = Event::from_line(line).unwrap() else {
            panic!("not a step");
        };
        assert!(s.grad_norm.is_nan());
        assert_eq!(s.rewards_margins, None);
        assert_eq!(s.metrics().len(), 5);
        assert!(Event::from_line(r#"{"event":"party","step":1}"#)
            .unwrap_err()
            .contains("party"));
        assert!(Event::from_line(r#"{"step":"x"}"#).is_err());
    }
}
