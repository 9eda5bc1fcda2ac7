//! Referring-expression comprehension (REC) metrics.
//!
//! The standard REC protocol (RefCOCO/+/g, Flickr30k entities as in MDETR
//! and the SPR paper's Table 1) counts a prediction correct when the IoU of
//! the first predicted box with the ground-truth box reaches a threshold.
//! SPR's headline is that gains grow with the threshold, so we always report
//! accuracy at IoU 0.5, 0.6, 0.7, 0.8 and 0.9 and the mean IoU. A prediction
//! with no parsable box is a miss with IoU 0 and is counted separately
//! (the parse rate). The threshold is inclusive: IoU ≥ t counts, where
//! Shikra's evaluation counts IoU > 0.5 strictly.
//!
//! - [`data`]: REC sets (MDETR-style COCO JSON, plain JSONL).
//! - [`profile`]: how each model family is asked and how it answers.

pub mod compare;
pub mod data;
pub mod profile;

use serde::{Deserialize, Serialize};

use crate::core::geometry::Bbox;
use crate::core::grounded::{self, BoxFormat};

/// The IoU thresholds reported.
pub const REC_THRESHOLDS: [f32; 5] = [0.5, 0.6, 0.7, 0.8, 0.9];

/// One prediction record in a predictions JSONL file.
///
/// The ground-truth box and either a predicted box or the model's raw text
/// (parsed with the profile's [`BoxFormat`] over `width × height`) are given,
/// all in image pixels.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PredictionRecord {
    /// Sample id, a string or an integer (optional; the line number is
    /// used otherwise).
    #[serde(default, deserialize_with = "data::flexible_id")]
    pub id: Option<String>,
    /// Image path, for display.
    #[serde(default)]
    pub image: Option<String>,
    /// The referring expression, for display.
    #[serde(default)]
    pub expression: Option<String>,
    /// Ground-truth box, pixel `xyxy`.
    pub gt_bbox: Bbox,
    /// Predicted box, pixel `xyxy`.
    #[serde(default)]
    pub pred_bbox: Option<Bbox>,
    /// Raw model output holding the predicted box.
    #[serde(default)]
    pub output: Option<String>,
    /// Width of the image the output's coordinates refer to.
    #[serde(default)]
    pub width: Option<f32>,
    /// Height of the image the output's coordinates refer to.
    #[serde(default)]
    pub height: Option<f32>,
}

/// Why a prediction record cannot be scored.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum PredictionError {
    /// Neither field is present.
    #[error("field \"pred_bbox\" or \"output\": one of them is required")]
    NoPrediction,
    /// `output` given without the frame size.
    #[error("field \"width\"/\"height\": required with \"output\" to place its boxes")]
    NoFrame,
    /// The ground-truth box is not a finite, non-empty box.
    #[error("field \"gt_bbox\": {0:?} is not a finite box with positive width and height")]
    BadGroundTruth([f32; 4]),
}

/// One scored sample (a line of the per-sample file `spr eval` and
/// `spr eval-rec --out` write).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RecSample {
    /// Sample id.
    pub id: String,
    /// Image path, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// The referring expression, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expression: Option<String>,
    /// The predicted box, when one was found.
    pub pred_bbox: Option<Bbox>,
    /// The ground truth.
    pub gt_bbox: Bbox,
    /// IoU (0 when there is no prediction).
    pub iou: f32,
    /// The model's raw answer, when there was one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output: Option<String>,
}

impl RecSample {
    /// Scores a model's answer `output` for an item: the first box of the
    /// text parsed in `format` over the `width × height` frame the
    /// coordinates refer to.
    pub fn from_output(
        item: &data::RecItem,
        output: &str,
        format: BoxFormat,
        width: f32,
        height: f32,
    ) -> RecSample {
        let pred_bbox = grounded::parse(output, format, width, height)
            .text
            .boxes()
            .first()
            .copied();
        RecSample {
            id: item.id.clone(),
            image: Some(item.image.clone()),
            expression: Some(item.expression.clone()),
            pred_bbox,
            gt_bbox: item.gt_bbox,
            iou: pred_bbox.map_or(0.0, |p| p.iou(item.gt_bbox)),
            output: Some(output.to_string()),
        }
    }
}

impl PredictionRecord {
    /// Score the record: the first box of the output (or `pred_bbox`) against
    /// the ground truth.
    pub fn score(
        &self,
        format: BoxFormat,
        fallback_id: &str,
    ) -> Result<RecSample, PredictionError> {
        if !self.gt_bbox.is_valid() {
            return Err(PredictionError::BadGroundTruth(self.gt_bbox.into()));
        }
        let pred_bbox = match (&self.pred_bbox, &self.output) {
            (Some(b), _) => Some(*b).filter(|b| b.is_finite()),
            (None, Some(text)) => {
                let (Some(w), Some(h)) = (self.width, self.height) else {
                    return Err(PredictionError::NoFrame);
                };
                grounded::parse(text, format, w, h)
                    .text
                    .boxes()
                    .first()
                    .copied()
            }
            (None, None) => return Err(PredictionError::NoPrediction),
        };
        Ok(RecSample {
            id: self.id.clone().unwrap_or_else(|| fallback_id.to_string()),
            image: self.image.clone(),
            expression: self.expression.clone(),
            pred_bbox,
            gt_bbox: self.gt_bbox,
            iou: pred_bbox.map_or(0.0, |p| p.iou(self.gt_bbox)),
            output: self.output.clone(),
        })
    }
}

/// Accuracy at each threshold of [`REC_THRESHOLDS`] and mean IoU.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct RecReport {
    /// Samples scored.
    pub samples: usize,
    /// Samples with no parsable predicted box (counted as misses).
    pub no_box: usize,
    /// `(threshold, accuracy)` pairs, accuracy in `[0, 1]`.
    pub accuracy: Vec<(f32, f32)>,
    /// Mean IoU over all samples.
    pub mean_iou: f32,
    /// Fraction of samples whose answer held a box.
    pub parse_rate: f32,
}

impl RecReport {
    /// Accuracy at threshold `t` (one of [`REC_THRESHOLDS`]).
    pub fn accuracy_at(&self, t: f32) -> Option<f32> {
        self.accuracy
            .iter()
            .find(|(x, _)| (x - t).abs() < 1e-6)
            .map(|(_, a)| *a)
    }
}

/// File names of an evaluation folder (`spr eval --out DIR`).
pub mod eval_files {
    /// The [`super::RecRunReport`].
    pub const REPORT: &str = "report.json";
    /// One [`super::RecSample`] per line.
    pub const SAMPLES: &str = "samples.jsonl";
}

/// `report.json` of an evaluation folder: what was evaluated, with what,
/// and how it did; the per-sample records are beside it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RecRunReport {
    /// Format version.
    pub v: u32,
    /// The model folder or hub id.
    pub model: String,
    /// The adapter applied, if any.
    #[serde(default)]
    pub adapter: Option<String>,
    /// The REC set.
    pub data: String,
    /// How the model was asked.
    pub profile: profile::RecProfile,
    /// The figures.
    pub report: RecReport,
    /// Items skipped (missing or corrupt images), each with its reason.
    #[serde(default)]
    pub skipped: Vec<String>,
    /// New tokens decoded.
    pub new_tokens: usize,
    /// Seconds taken.
    pub duration_s: f64,
    /// When it ended (Unix seconds).
    pub time: f64,
}

/// The report over scored samples.
pub fn rec_report(samples: &[RecSample]) -> RecReport {
    let n = samples.len();
    let frac = |k: usize| if n == 0 { 0.0 } else { k as f32 / n as f32 };
    let no_box = samples.iter().filter(|s| s.pred_bbox.is_none()).count();
    RecReport {
        samples: n,
        no_box,
        parse_rate: frac(n - no_box),
        accuracy: REC_THRESHOLDS
            .iter()
            .map(|&t| (t, frac(samples.iter().filter(|s| s.iou >= t).count())))
            .collect(),
        mean_iou: if n == 0 {
            0.0
        } else {
            samples.iter().map(|s| s.iou).sum::<f32>() / n as f32
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(gt: [f32; 4], pred: Option<[f32; 4]>) -> PredictionRecord {
        PredictionRecord {
            id: None,
            image: None,
            expression: None,
            gt_bbox: gt.into(),
            pred_bbox: pred.map(Into::into),
            output: None,
            width: None,
            height: None,
        }
    }

    #[test]
    fn report_hand_worked() {
        let gt = [0.0, 0.0, 10.0, 10.0];
        let samples: Vec<RecSample> = [
            Some([0.0, 0.0, 10.0, 10.0]), // 1.0
            Some([0.0, 0.0, 10.0, 7.5]),  // 0.75
            Some([0.0, 0.0, 10.0, 5.5]),  // 0.55
            None,                         // no box in the text: 0
        ]
        .iter()
        .enumerate()
        .map(|(i, p)| {
            let mut r = rec(gt, *p);
            if p.is_none() {
                r.output = Some("somewhere on the left".into());
                r.width = Some(10.0);
                r.height = Some(10.0);
            }
            r.score(BoxFormat::Ferret, &i.to_string()).unwrap()
        })
        .collect();
        let r = rec_report(&samples);
        assert_eq!(r.samples, 4);
        assert_eq!(r.no_box, 1);
        let acc: Vec<f32> = r.accuracy.iter().map(|a| a.1).collect();
        assert_eq!(acc, vec![0.75, 0.5, 0.5, 0.25, 0.25]);
        assert!((r.mean_iou - (1.0 + 0.75 + 0.55) / 4.0).abs() < 1e-6);
        assert_eq!(r.parse_rate, 0.75);
        assert_eq!(r.accuracy_at(0.7), Some(0.5));
    }

    #[test]
    fn integer_and_string_ids_are_read() {
        let a: PredictionRecord = serde_json::from_str(
            r#"{"id": 12, "gt_bbox": [0, 0, 1, 1], "pred_bbox": [0, 0, 1, 1]}"#,
        )
        .unwrap();
        assert_eq!(a.id.as_deref(), Some("12"));
        let b: PredictionRecord = serde_json::from_str(
            r#"{"id": "x", "gt_bbox": [0, 0, 1, 1], "pred_bbox": [0, 0, 1, 1]}"#,
        )
        .unwrap();
        assert_eq!(b.id.as_deref(), Some("x"));
    }

    #[test]
    fn output_text_is_parsed_with_the_profile_format() {
        let mut r = rec([100.0, 200.0, 300.0, 400.0], None);
        r.output = Some("The dog [100, 200, 300, 400] on the left.".into());
        r.width = Some(999.0);
        r.height = Some(999.0);
        let s = r.score(BoxFormat::Ferret, "0").unwrap();
        assert!(s.iou > 0.99);
        r.output = Some("I cannot see it.".into());
        assert_eq!(r.score(BoxFormat::Ferret, "0").unwrap().iou, 0.0);
        r.width = None;
        assert_eq!(
            r.score(BoxFormat::Ferret, "0"),
            Err(PredictionError::NoFrame)
        );
    }

    #[test]
    fn bad_records_are_errors() {
        assert_eq!(
            rec([0.0, 0.0, 1.0, 1.0], None).score(BoxFormat::Ferret, "0"),
            Err(PredictionError::NoPrediction)
        );
        assert!(matches!(
            rec([0.0, 0.0, 0.0, 1.0], Some([0.0; 4])).score(BoxFormat::Ferret, "0"),
            Err(PredictionError::BadGroundTruth(_))
        ));
    }
}
