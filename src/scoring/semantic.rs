//! CLIP's semantic score for region descriptions (DESIGN §3, SPR §3.2):
//!
//! `S_sem = ½·[cos(I_crop, T) + S_local(I, T)]`
//!
//! - **I_crop**: the query's crop (the region ×1.5, clamped to the image)
//!   padded to a square with CLIP's mean colour, then CLIP's image
//!   embedding.
//! - **S_local**: the whole image padded to a square (CLIP's centre crop
//!   could cut the region off), and the region's embedding taken by the
//!   local-attention layer: the last block's class token may attend only to
//!   itself and the patches whose centres lie in the region (the other rows
//!   of the attention are not masked), then the final norm and projection
//!   ([`ClipModel::region_embeds`]). A region too small to hold a patch
//!   centre uses the patch under its centre.
//! - **T**: the description with its boxes stripped
//!   (`GroundedText::plain`). A text longer than the text tower's context
//!   (77 tokens for OpenAI's CLIP) is not truncated: it is split at
//!   sentence ends (and, for a single over-long sentence, between words)
//!   into pieces that fit, each piece embedded, the normalised embeddings
//!   averaged and normalised again; the score records the number of pieces
//!   and the scores' notes say so.
//!
//! A region's crop and image are encoded once for all of its candidates;
//! the whole image's first layers are shared by the regions of one image
//! (the last one is cached). Cosines are raw (−1…1), as SPR combines them.

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use candle_core::{DType, Device, Tensor};
use image::{DynamicImage, RgbImage};

use crate::core::geometry::{Bbox, SquarePad};
use crate::core::imageio;
use crate::core::project::RegionRecord;
use crate::core::scorers::{SemanticParts, SemanticScorer};
use crate::model::clip_model::ClipModel;
use crate::model::{ImageProcessor, ModelError};

/// The CLIP semantic scorer.
pub struct ClipScorer {
    model: ClipModel,
    tokenizer: tokenizers::Tokenizer,
    processor: ImageProcessor,
    image_root: PathBuf,
    name: String,
    /// The last whole image encoded: file name and its tower state before
    /// the last layer.
    last_image: Mutex<Option<WholeImage>>,
}

/// A whole image's state entering the vision tower's last layer
/// ([`ClipModel::region_state`]) and its padding, by file name.
type WholeImage = (String, Tensor, SquarePad);

impl ClipScorer {
    /// Loads a `CLIPModel` folder (`config.json`, safetensors,
    /// `tokenizer.json`, `preprocessor_config.json`) onto `device`; images
    /// are read below `image_root`. `name` is recorded with each score.
    pub fn load(
        dir: &Path,
        image_root: &Path,
        device: &Device,
        name: String,
    ) -> Result<Self, ModelError> {
        let model = ClipModel::load(dir, device, crate::model::default_dtype(device))?;
        let tok_path = dir.join("tokenizer.json");
        if !tok_path.is_file() {
            return Err(ModelError::MissingPath {
                path: tok_path,
                what: "CLIP tokenizer",
            });
        }
        let tokenizer =
            tokenizers::Tokenizer::from_file(&tok_path).map_err(|e| ModelError::Tokenizer {
                path: tok_path.clone(),
                message: e.to_string(),
            })?;
        let processor = ImageProcessor::from_dir(dir, &model.config().vision_config)?;
        Ok(Self {
            model,
            tokenizer,
            processor,
            image_root: image_root.to_path_buf(),
            name,
            last_image: Mutex::new(None),
        })
    }

    /// The name recorded with the scores.
    pub fn model_name(&self) -> &str {
        &self.name
    }

    /// The model.
    pub fn model(&self) -> &ClipModel {
        &self.model
    }

    /// `image` padded to a centred square with the processor's mean colour.
    fn pad_square(&self, image: &RgbImage) -> RgbImage {
        imageio::pad_to_square(image, imageio::mean_colour(self.processor.mean))
    }

    fn pixels(&self, image: RgbImage) -> Result<Tensor, ModelError> {
        Ok(self
            .processor
            .preprocess(&DynamicImage::ImageRgb8(image), self.model.device())?
            .unsqueeze(0)?
            .to_dtype(crate::model::default_dtype(self.model.device()))?)
    }

    /// The patches (row-major) whose centres lie in `region` (padded-and-
    /// resized pixels), or the one under its centre when none does.
    fn patch_mask(&self, region: Bbox) -> Vec<bool> {
        let v = &self.model.config().vision_config;
        let (g, p) = (v.patches_per_side(), v.patch_size as f32);
        let mut mask = vec![false; g * g];
        for i in 0..g {
            for j in 0..g {
                let (cx, cy) = ((j as f32 + 0.5) * p, (i as f32 + 0.5) * p);
                mask[i * g + j] =
                    cx >= region.x1 && cx <= region.x2 && cy >= region.y1 && cy <= region.y2;
            }
        }
        if !mask.iter().any(|&m| m) {
            let (cx, cy) = region.center();
            let j = ((cx / p) as usize).min(g - 1);
            let i = ((cy / p) as usize).min(g - 1);
            mask[i * g + j] = true;
        }
        mask
    }

    /// Token-id pieces of `text`, each within the text tower's context.
    fn pieces(&self, text: &str) -> Result<Vec<Vec<u32>>, String> {
        let max = self.model.text().config().max_position_embeddings;
        let enc = |t: &str| -> Result<Vec<u32>, String> {
            self.tokenizer
                .encode(t, true)
                .map(|e| e.get_ids().to_vec())
                .map_err(|e| format!("CLIP tokenizer: {e}"))
        };
        let whole = enc(text)?;
        if whole.len() <= max {
            return Ok(vec![whole]);
        }
        // Sentences, then words for a sentence that alone is too long.
        let mut units: Vec<String> = Vec::new();
        for sentence in split_sentences(text) {
            if enc(&sentence)?.len() <= max {
                units.push(sentence);
            } else {
                let mut cur = String::new();
                for w in sentence.split_whitespace() {
                    let next = if cur.is_empty() {
                        w.to_string()
                    } else {
                        format!("{cur} {w}")
                    };
                    if !cur.is_empty() && enc(&next)?.len() > max {
                        units.push(std::mem::replace(&mut cur, w.to_string()));
                    } else {
                        cur = next;
                    }
                }
                if !cur.is_empty() {
                    units.push(cur);
                }
            }
        }
        let mut out = Vec::new();
        let mut cur = String::new();
        for u in units {
            let next = if cur.is_empty() {
                u.clone()
            } else {
                format!("{cur} {u}")
            };
            if !cur.is_empty() && enc(&next)?.len() > max {
                out.push(enc(&cur)?);
                cur = u;
            } else {
                cur = next;
            }
        }
        if !cur.is_empty() {
            out.push(enc(&cur)?);
        }
        // A single word longer than the context is cut: nothing else fits.
        for ids in &mut out {
            if ids.len() > max {
                let last = ids[ids.len() - 1];
                ids.truncate(max - 1);
                ids.push(last);
            }
        }
        Ok(out)
    }

    /// Normalised embeddings `(n, P)` of `texts` and the pieces of each.
    fn text_embeddings(&self, texts: &[String]) -> Result<(Tensor, Vec<usize>), String> {
        let mut rows: Vec<Vec<u32>> = Vec::new();
        let mut counts = Vec::with_capacity(texts.len());
        for t in texts {
            let p = self.pieces(t)?;
            counts.push(p.len());
            rows.extend(p);
        }
        let t = rows.iter().map(Vec::len).max().unwrap_or(1);
        let mut flat = Vec::with_capacity(rows.len() * t);
        for r in &rows {
            let pad = r.last().copied().unwrap_or(0);
            flat.extend(r.iter().copied());
            flat.extend(std::iter::repeat_n(pad, t - r.len()));
        }
        let err = |e: ModelError| e.to_string();
        let ids = Tensor::from_vec(flat, (rows.len(), t), self.model.device())
            .map_err(|e| e.to_string())?;
        let pieces = self.model.text_embeds(&ids).map_err(err)?;
        let mut out = Vec::with_capacity(texts.len());
        let mut at = 0;
        for &n in &counts {
            let mean = pieces
                .narrow(0, at, n)
                .and_then(|x| x.mean_keepdim(0))
                .map_err(|e| e.to_string())?;
            let norm = mean
                .sqr()
                .and_then(|x| x.sum_keepdim(1))
                .and_then(|x| x.sqrt())
                .map_err(|e| e.to_string())?;
            out.push(mean.broadcast_div(&norm).map_err(|e| e.to_string())?);
            at += n;
        }
        let cat = Tensor::cat(&out, 0).map_err(|e| e.to_string())?;
        Ok((cat, counts))
    }

    /// The whole image's state entering the tower's last layer and its
    /// padding, cached for the next region of the same image (only the
    /// last layer's class token depends on the region).
    fn whole_image(
        &self,
        cache: &mut Option<WholeImage>,
        region: &RegionRecord,
        rgb: &RgbImage,
    ) -> Result<(Tensor, SquarePad), ModelError> {
        if let Some((name, px, pad)) = cache.as_ref() {
            if *name == region.file_name {
                return Ok((px.clone(), *pad));
            }
        }
        let side = self.model.config().vision_config.image_size as f32;
        let pad = SquarePad::new(rgb.width() as f32, rgb.height() as f32, side);
        let state = self
            .model
            .region_state(&self.pixels(self.pad_square(rgb))?)?;
        *cache = Some((region.file_name.clone(), state.clone(), pad));
        Ok((state, pad))
    }

    fn score(
        &self,
        cache: &mut Option<WholeImage>,
        region: &RegionRecord,
        texts: &[String],
    ) -> Result<Vec<SemanticParts>, String> {
        let path = self.image_root.join(&region.file_name);
        let rgb = imageio::load_rgb(&path).map_err(|e| e.to_string())?;
        let err = |e: ModelError| e.to_string();
        let crop = self.pad_square(&imageio::crop_rgb(&rgb, region.crop));
        let crop_emb = self
            .model
            .image_embeds(&self.pixels(crop).map_err(err)?)
            .map_err(err)?;
        let (whole, pad) = self.whole_image(cache, region, &rgb).map_err(err)?;
        let mask = self.patch_mask(pad.padded_from_image(region.region));
        let local_emb = self
            .model
            .region_embeds_from(&whole, &[mask])
            .map_err(err)?;
        let (text, chunks) = self.text_embeddings(texts)?;
        let cos = |img: &Tensor| -> Result<Vec<f32>, String> {
            text.matmul(&img.t().map_err(|e| e.to_string())?)
                .and_then(|x| x.squeeze(1))
                .and_then(|x| x.to_dtype(DType::F32))
                .and_then(|x| x.to_vec1::<f32>())
                .map_err(|e| e.to_string())
        };
        let (c, l) = (cos(&crop_emb)?, cos(&local_emb)?);
        Ok(c.into_iter()
            .zip(l)
            .zip(chunks)
            .map(|((crop, local), chunks)| SemanticParts {
                crop,
                local,
                chunks,
            })
            .collect())
    }
}

/// Sentences of a text (split after `.`, `!`, `?` or `;` followed by
/// whitespace), trimmed, empty ones dropped.
fn split_sentences(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut chars = text.chars().peekable();
    while let Some(ch) = chars.next() {
        cur.push(ch);
        if matches!(ch, '.' | '!' | '?' | ';') && chars.peek().is_none_or(|c| c.is_whitespace()) {
            let s = cur.trim().to_string();
            if !s.is_empty() {
                out.push(s);
            }
            cur.clear();
        }
    }
    let s = cur.trim().to_string();
    if !s.is_empty() {
        out.push(s);
    }
    out
}

impl SemanticScorer for ClipScorer {
    fn name(&self) -> Option<&str> {
        Some(&self.name)
    }

    fn score_region(
        &self,
        region: &RegionRecord,
        texts: &[String],
    ) -> Result<Vec<SemanticParts>, String> {
        let mut cache = self
            .last_image
            .lock()
            .map_err(|_| "cache poisoned".to_string())?;
        self.score(&mut cache, region, texts)
    }

    /// Contiguous shares of the regions on as many threads as
    /// [`crate::model::batch_workers`] gives (one per core when CPU
    /// operations run single-threaded), each with its own image cache.
    fn score_regions(
        &self,
        work: &[(&RegionRecord, Vec<String>)],
    ) -> Vec<Result<Vec<SemanticParts>, String>> {
        super::spread(
            crate::model::batch_workers(self.model.device()),
            work,
            |cache, (r, t)| self.score(cache, r, t),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sentences_split_at_their_ends_only() {
        assert_eq!(
            split_sentences("A red circle. A blue square; two dots 3.5 wide! End"),
            [
                "A red circle.",
                "A blue square;",
                "two dots 3.5 wide!",
                "End"
            ]
        );
        assert!(split_sentences("  ").is_empty());
    }
}
