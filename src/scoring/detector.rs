//! The open-vocabulary detector of SPR's localization score (DESIGN §3):
//! OWLv2 ([`Owlv2`], Minderer et al. 2023) run on a region's crop with the
//! phrases its candidates mention as text queries. SPR uses GroundingDINO;
//! OWLv2 is the detector that fits candle (a CLIP backbone and three small
//! heads).
//!
//! Per region:
//! 1. the crop (region ×1.5, clamped) is padded to a square at its bottom
//!    and right with grey 0.5, as `Owlv2ImageProcessor` pads, and resized
//!    to the model's input: box outputs are fractions of that square;
//! 2. the image is encoded once for all of the region's candidates, and the
//!    distinct phrases of all candidates (lower-cased) are embedded once;
//! 3. a phrase's detections are the patches whose class probability
//!    (sigmoid of the logit) reaches the threshold, kept by non-maximum
//!    suppression (IoU 0.5) and capped at [`DetectorSettings::max_per_phrase`]
//!    boxes, highest first;
//! 4. boxes map back from the square to crop pixels and then to the image
//!    by the crop↔image transform.
//!
//! Phrase texts longer than the text tower's context (16 tokens for
//! Google's OWLv2) are cut, keeping the end-of-text token: a phrase is a
//! few words, so this only drops the tail of a run-on phrase.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use candle_core::{DType, Device, IndexOp, Tensor};
use image::{DynamicImage, RgbImage};

use crate::core::detection::{nms, Scored};
use crate::core::geometry::Bbox;
use crate::core::imageio;
use crate::core::project::RegionRecord;
use crate::core::scorers::{Detection, Detector};
use crate::model::owlv2::Owlv2;
use crate::model::{ImageProcessor, ModelError};

/// OWLv2's padding colour: 0.5 on the 0–1 scale.
pub const OWL_PAD: image::Rgb<u8> = image::Rgb([128, 128, 128]);

/// How detections are selected.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct DetectorSettings {
    /// Least class probability of a kept box.
    pub threshold: f32,
    /// Non-maximum suppression limit.
    pub nms_iou: f32,
    /// Most boxes per phrase.
    pub max_per_phrase: usize,
}

impl Default for DetectorSettings {
    fn default() -> Self {
        Self {
            threshold: 0.3,
            nms_iou: 0.5,
            max_per_phrase: 8,
        }
    }
}

/// An OWLv2 detector over a project's images.
pub struct OwlDetector {
    model: Owlv2,
    tokenizer: tokenizers::Tokenizer,
    processor: ImageProcessor,
    image_root: PathBuf,
    name: String,
    settings: DetectorSettings,
    /// The last image read: file name and pixels (regions of one image
    /// come in a row).
    last_image: Mutex<Option<(String, RgbImage)>>,
}

/// One patch's answer to one phrase: class probability and its box
/// `(cx, cy, w, h)` in 0–1 of the square input.
pub type PatchScore = (f32, [f32; 4]);

/// Every patch's answer to one phrase.
pub type PhrasePatches = Vec<PatchScore>;

/// The crop of `image` padded to a square at its bottom and right, as OWLv2
/// sees it, and the square's side in crop pixels.
pub fn owl_square(image: &RgbImage, crop: Bbox) -> (RgbImage, f32) {
    let pixels = imageio::crop_rgb(image, crop);
    let side = pixels.width().max(pixels.height());
    let mut out = RgbImage::from_pixel(side, side, OWL_PAD);
    image::imageops::overlay(&mut out, &pixels, 0, 0);
    (out, side as f32)
}

/// `(cx, cy, w, h)` in 0–1 of a square of `side` pixels whose top-left is
/// the crop's → image pixels, cut to the crop: the detector saw only the
/// crop (grey padding beyond it), so a box reaching into the padding is
/// evidence only for its part inside.
pub fn image_from_square(cxcywh: [f32; 4], side: f32, crop: Bbox) -> Bbox {
    let [cx, cy, w, h] = cxcywh;
    let x0 = crop.x1.floor().max(0.0);
    let y0 = crop.y1.floor().max(0.0);
    Bbox::new(
        (cx - 0.5 * w) * side + x0,
        (cy - 0.5 * h) * side + y0,
        (cx + 0.5 * w) * side + x0,
        (cy + 0.5 * h) * side + y0,
    )
    .intersection(crop)
}

impl OwlDetector {
    /// Loads an `Owlv2ForObjectDetection` folder (`config.json`,
    /// safetensors, `tokenizer.json`, `preprocessor_config.json`) onto
    /// `device`; images are read below `image_root`; `name` is recorded
    /// with each score.
    pub fn load(
        dir: &Path,
        image_root: &Path,
        device: &Device,
        name: String,
        settings: DetectorSettings,
    ) -> Result<Self, ModelError> {
        let model = Owlv2::load(dir, device, crate::model::default_dtype(device))?;
        let tok_path = dir.join("tokenizer.json");
        if !tok_path.is_file() {
            return Err(ModelError::MissingPath {
                path: tok_path,
                what: "OWLv2 tokenizer",
            });
        }
        let tokenizer =
            tokenizers::Tokenizer::from_file(&tok_path).map_err(|e| ModelError::Tokenizer {
                path: tok_path.clone(),
                message: e.to_string(),
            })?;
        let mut processor = ImageProcessor::from_dir(dir, &model.config().vision_config)?;
        // The square is resized straight to the input size.
        let s = model.config().vision_config.image_size as u32;
        processor.shortest_edge = None;
        processor.crop_size = (s, s);
        Ok(Self {
            model,
            tokenizer,
            processor,
            image_root: image_root.to_path_buf(),
            name,
            settings,
            last_image: Mutex::new(None),
        })
    }

    /// The model.
    pub fn model(&self) -> &Owlv2 {
        &self.model
    }

    /// The selection settings.
    pub fn settings(&self) -> DetectorSettings {
        self.settings
    }

    /// Token ids `(q, t)` of `phrases`, each within the text tower's
    /// context (cut keeping the end-of-text token), right-padded with each
    /// row's last id.
    pub fn query_ids(&self, phrases: &[String]) -> Result<Tensor, String> {
        let max = self.model.config().text_config.max_position_embeddings;
        let mut rows = Vec::with_capacity(phrases.len());
        for p in phrases {
            let mut ids = self
                .tokenizer
                .encode(p.as_str(), true)
                .map_err(|e| format!("OWLv2 tokenizer: {e}"))?
                .get_ids()
                .to_vec();
            if ids.len() > max {
                let last = ids[ids.len() - 1];
                ids.truncate(max - 1);
                ids.push(last);
            }
            rows.push(ids);
        }
        let t = rows.iter().map(Vec::len).max().unwrap_or(1).max(1);
        let mut flat = Vec::with_capacity(rows.len() * t);
        for r in &rows {
            let pad = r.last().copied().unwrap_or(0);
            flat.extend(r.iter().copied());
            flat.extend(std::iter::repeat_n(pad, t - r.len()));
        }
        Tensor::from_vec(flat, (rows.len(), t), self.model.device()).map_err(|e| e.to_string())
    }

    /// Pixel values `(1, 3, S, S)` of a padded square.
    pub fn pixels(&self, square: RgbImage) -> Result<Tensor, ModelError> {
        Ok(self
            .processor
            .preprocess(&DynamicImage::ImageRgb8(square), self.model.device())?
            .unsqueeze(0)?
            .to_dtype(crate::model::default_dtype(self.model.device()))?)
    }

    /// Per phrase, every patch's `(class probability, (cx, cy, w, h))` on
    /// one square image: the raw material of [`Self::select`] and of AP
    /// measurements.
    pub fn patch_scores(
        &self,
        pixels: &Tensor,
        phrases: &[String],
    ) -> Result<Vec<PhrasePatches>, String> {
        let err = |e: ModelError| e.to_string();
        let cerr = |e: candle_core::Error| e.to_string();
        let feats = self.model.image_features(pixels).map_err(err)?;
        let queries = self
            .model
            .query_embeds(&self.query_ids(phrases)?)
            .map_err(err)?;
        let out = self
            .model
            .detect(&feats.i(0).map_err(cerr)?, &queries)
            .map_err(err)?;
        let probs: Vec<Vec<f32>> = candle_nn::ops::sigmoid(&out.logits)
            .and_then(|p| p.to_dtype(DType::F32))
            .and_then(|p| p.t())
            .and_then(|p| p.to_vec2())
            .map_err(cerr)?;
        let boxes: Vec<Vec<f32>> = out
            .boxes
            .to_dtype(DType::F32)
            .and_then(|b| b.to_vec2())
            .map_err(cerr)?;
        Ok(probs
            .into_iter()
            .map(|row| {
                row.into_iter()
                    .zip(&boxes)
                    .map(|(p, b)| (p, [b[0], b[1], b[2], b[3]]))
                    .collect()
            })
            .collect())
    }

    /// The kept detections of one phrase (threshold, NMS, cap), in image
    /// pixels.
    pub fn select(&self, patches: &[PatchScore], side: f32, crop: Bbox) -> Vec<Scored> {
        let s = self.settings;
        let above: Vec<Scored> = patches
            .iter()
            .filter(|(p, _)| *p >= s.threshold)
            .map(|&(score, b)| Scored {
                bbox: image_from_square(b, side, crop),
                score,
            })
            .filter(|d| d.bbox.is_valid())
            .collect();
        let mut kept = nms(above, s.nms_iou);
        kept.truncate(s.max_per_phrase);
        kept
    }

    fn detect(
        &self,
        cache: &mut Option<(String, RgbImage)>,
        region: &RegionRecord,
        phrases: &[Vec<String>],
    ) -> Result<Vec<Vec<Detection>>, String> {
        // The distinct phrases, lower-cased, in first-seen order.
        let mut distinct: Vec<String> = Vec::new();
        let mut index: HashMap<String, usize> = HashMap::new();
        for p in phrases.iter().flatten() {
            let key = p.trim().to_lowercase();
            if !key.is_empty() && !index.contains_key(&key) {
                index.insert(key.clone(), distinct.len());
                distinct.push(key);
            }
        }
        if distinct.is_empty() {
            return Ok(vec![Vec::new(); phrases.len()]);
        }
        let reuse = matches!(cache.as_ref(), Some((name, _)) if *name == region.file_name);
        if !reuse {
            let path = self.image_root.join(&region.file_name);
            let rgb = imageio::load_rgb(&path).map_err(|e| e.to_string())?;
            *cache = Some((region.file_name.clone(), rgb));
        }
        let rgb = &cache.as_ref().ok_or("no image")?.1;
        let (square, side) = owl_square(rgb, region.crop);
        let pixels = self.pixels(square).map_err(|e| e.to_string())?;
        let per_phrase = self.patch_scores(&pixels, &distinct)?;
        let found: Vec<Vec<Scored>> = per_phrase
            .iter()
            .map(|patches| self.select(patches, side, region.crop))
            .collect();
        Ok(phrases
            .iter()
            .map(|ps| {
                ps.iter()
                    .filter_map(|p| {
                        let k = *index.get(&p.trim().to_lowercase())?;
                        Some(found[k].iter().map(move |d| Detection {
                            phrase: p.clone(),
                            bbox: d.bbox.round(),
                            score: (d.score * 1000.0).round() / 1000.0,
                        }))
                    })
                    .flatten()
                    .collect()
            })
            .collect())
    }
}

impl Detector for OwlDetector {
    fn name(&self) -> Option<String> {
        Some(format!(
            "owlv2:{} (threshold {}, nms {})",
            self.name, self.settings.threshold, self.settings.nms_iou
        ))
    }

    fn detect_region(
        &self,
        region: &RegionRecord,
        phrases: &[Vec<String>],
    ) -> Result<Vec<Vec<Detection>>, String> {
        let mut cache = self
            .last_image
            .lock()
            .map_err(|_| "cache poisoned".to_string())?;
        self.detect(&mut cache, region, phrases)
    }

    /// Contiguous shares of the regions on as many threads as
    /// [`crate::model::batch_workers`] gives, each with its own image
    /// cache.
    fn detect_regions(
        &self,
        work: &[(&RegionRecord, Vec<Vec<String>>)],
    ) -> Vec<Result<Vec<Vec<Detection>>, String>> {
        super::spread(
            crate::model::batch_workers(self.model.device()),
            work,
            |cache, (r, p)| self.detect(cache, r, p),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn square_boxes_map_back_to_the_image() {
        // A 40×20 crop at (100, 50): the square is 40 px, the crop at its
        // top-left.
        let crop = Bbox::new(100.0, 50.0, 140.0, 70.0);
        let b = image_from_square([0.5, 0.25, 0.5, 0.5], 40.0, crop);
        assert_eq!(b, Bbox::new(110.0, 50.0, 130.0, 70.0));
        // Reaching into the padding below the crop: cut at its bottom.
        let b = image_from_square([0.5, 0.6, 0.5, 0.5], 40.0, crop);
        assert_eq!(b, Bbox::new(110.0, 64.0, 130.0, 70.0));
        let img = RgbImage::from_pixel(200, 100, image::Rgb([10, 20, 30]));
        let (sq, side) = owl_square(&img, crop);
        assert_eq!((sq.width(), sq.height(), side), (40, 40, 40.0));
        assert_eq!(sq.get_pixel(5, 5).0, [10, 20, 30]);
        assert_eq!(sq.get_pixel(5, 35).0, OWL_PAD.0);
    }
}
