//! CLIP image preprocessing: RGB → resize (shortest edge, bicubic) →
//! centre crop → rescale to `[0, 1]` → normalise with the CLIP mean/std →
//! `(3, H, W)` `f32`.
//!
//! Follows transformers' `CLIPImageProcessor` (PIL backend,
//! `image_processing_pil_clip.py` and `image_transforms.py`): the short side
//! becomes `size.shortest_edge` and the long side `int(short · long /
//! short_in)`; the crop starts at `(H - h) // 2`, `(W - w) // 2`. Resampling
//! uses the `image` crate's Catmull-Rom filter (the same bicubic kernel,
//! a = -0.5, widened when downscaling, as PIL's), so pixels may differ from
//! PIL's by a rounding step; `tests/model_parity.rs` bounds the difference.
//! Settings come from `preprocessor_config.json` (transformers 4.x) or the
//! `image_processor` entry of `processor_config.json` (5.x).

use std::path::Path;

use candle_core::{Device, Tensor};
use image::{DynamicImage, RgbImage};
use serde::Deserialize;

use super::config::ClipVisionConfig;
use super::{ModelError, Result};

/// OpenAI CLIP's per-channel mean.
pub const CLIP_MEAN: [f32; 3] = [0.481_454_66, 0.457_827_5, 0.408_210_73];
/// OpenAI CLIP's per-channel standard deviation.
// Digits as OpenAI and transformers publish them.
#[allow(clippy::excessive_precision)]
pub const CLIP_STD: [f32; 3] = [0.268_629_54, 0.261_302_58, 0.275_777_11];

#[derive(Debug, Clone, Default, Deserialize)]
struct SizeSpec {
    shortest_edge: Option<u32>,
    height: Option<u32>,
    width: Option<u32>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
enum SizeField {
    Int(u32),
    Spec(SizeSpec),
}

#[derive(Debug, Clone, Default, Deserialize)]
struct ProcessorFile {
    do_resize: Option<bool>,
    size: Option<SizeField>,
    do_center_crop: Option<bool>,
    crop_size: Option<SizeField>,
    do_rescale: Option<bool>,
    rescale_factor: Option<f32>,
    do_normalize: Option<bool>,
    image_mean: Option<[f32; 3]>,
    image_std: Option<[f32; 3]>,
}

#[derive(Debug, Clone, Deserialize)]
struct ProcessorConfigFile {
    image_processor: Option<ProcessorFile>,
}

/// How images become pixel values for the vision tower.
#[derive(Debug, Clone, PartialEq)]
pub struct ImageProcessor {
    /// Target short side after resizing (`None`: resize straight to the
    /// crop size).
    pub shortest_edge: Option<u32>,
    /// Resize at all.
    pub do_resize: bool,
    /// Centre-crop at all.
    pub do_center_crop: bool,
    /// Crop `(height, width)`.
    pub crop_size: (u32, u32),
    /// Multiply by `rescale_factor`.
    pub do_rescale: bool,
    /// Usually 1/255.
    pub rescale_factor: f32,
    /// Subtract `mean`, divide by `std`.
    pub do_normalize: bool,
    /// Per-channel mean.
    pub mean: [f32; 3],
    /// Per-channel standard deviation.
    pub std: [f32; 3],
}

impl ImageProcessor {
    /// CLIP defaults for a tower of `cfg.image_size` (llava-1.5: resize the
    /// short side to 336, crop 336×336).
    pub fn for_vision(cfg: &ClipVisionConfig) -> Self {
        let s = cfg.image_size as u32;
        Self {
            shortest_edge: Some(s),
            do_resize: true,
            do_center_crop: true,
            crop_size: (s, s),
            do_rescale: true,
            rescale_factor: 1.0 / 255.0,
            do_normalize: true,
            mean: CLIP_MEAN,
            std: CLIP_STD,
        }
    }

    /// Reads `preprocessor_config.json` or `processor_config.json` from a
    /// model folder; falls back to [`Self::for_vision`] when neither exists.
    pub fn from_dir(dir: &Path, cfg: &ClipVisionConfig) -> Result<Self> {
        let legacy = dir.join("preprocessor_config.json");
        let current = dir.join("processor_config.json");
        let file = if legacy.is_file() {
            Some(read_json::<ProcessorFile>(&legacy)?)
        } else if current.is_file() {
            read_json::<ProcessorConfigFile>(&current)?.image_processor
        } else {
            None
        };
        let mut p = Self::for_vision(cfg);
        let Some(f) = file else {
            return Ok(p);
        };
        p.do_resize = f.do_resize.unwrap_or(true);
        match f.size {
            Some(SizeField::Int(s)) => p.shortest_edge = Some(s),
            Some(SizeField::Spec(spec)) => match (spec.shortest_edge, spec.height, spec.width) {
                (Some(s), _, _) => p.shortest_edge = Some(s),
                (None, Some(h), Some(w)) => {
                    p.shortest_edge = None;
                    p.crop_size = (h, w);
                }
                _ => {}
            },
            None => {}
        }
        p.do_center_crop = f.do_center_crop.unwrap_or(true);
        match f.crop_size {
            Some(SizeField::Int(s)) => p.crop_size = (s, s),
            Some(SizeField::Spec(SizeSpec {
                height: Some(h),
                width: Some(w),
                ..
            })) => p.crop_size = (h, w),
            _ => {}
        }
        p.do_rescale = f.do_rescale.unwrap_or(true);
        p.rescale_factor = f.rescale_factor.unwrap_or(1.0 / 255.0);
        p.do_normalize = f.do_normalize.unwrap_or(true);
        p.mean = f.image_mean.unwrap_or(CLIP_MEAN);
        p.std = f.image_std.unwrap_or(CLIP_STD);
        Ok(p)
    }

    /// The resized and cropped RGB image, before rescaling.
    pub fn resize_and_crop(&self, image: &DynamicImage) -> RgbImage {
        let mut rgb = image.to_rgb8();
        if self.do_resize {
            let (w, h) = rgb.dimensions();
            let (nw, nh) = match self.shortest_edge {
                Some(s) if w <= h => (s, ((s as u64 * h as u64) / w.max(1) as u64) as u32),
                Some(s) => (((s as u64 * w as u64) / h.max(1) as u64) as u32, s),
                None => (self.crop_size.1, self.crop_size.0),
            };
            if (nw, nh) != (w, h) {
                rgb = super::resize::resize_catmull_rom(&rgb, nw.max(1), nh.max(1));
            }
        }
        if self.do_center_crop {
            let (w, h) = rgb.dimensions();
            let (ch, cw) = self.crop_size;
            if cw <= w && ch <= h {
                let top = (h - ch) / 2;
                let left = (w - cw) / 2;
                rgb = image::imageops::crop_imm(&rgb, left, top, cw, ch).to_image();
            } else {
                // Smaller than the crop: pad with zeros, centred, as
                // transformers does.
                let mut canvas = RgbImage::new(cw.max(w), ch.max(h));
                let top = (canvas.height() - h) / 2;
                let left = (canvas.width() - w) / 2;
                image::imageops::replace(&mut canvas, &rgb, left as i64, top as i64);
                let (w2, h2) = canvas.dimensions();
                rgb = image::imageops::crop_imm(&canvas, (w2 - cw) / 2, (h2 - ch) / 2, cw, ch)
                    .to_image();
            }
        }
        rgb
    }

    /// Pixel values `(3, H, W)` for one image.
    pub fn preprocess(&self, image: &DynamicImage, device: &Device) -> Result<Tensor> {
        let rgb = self.resize_and_crop(image);
        let (w, h) = rgb.dimensions();
        let (w, h) = (w as usize, h as usize);
        let mut data = vec![0f32; 3 * h * w];
        for (x, y, px) in rgb.enumerate_pixels() {
            for c in 0..3 {
                let mut v = px.0[c] as f32;
                if self.do_rescale {
                    v *= self.rescale_factor;
                }
                if self.do_normalize {
                    v = (v - self.mean[c]) / self.std[c];
                }
                data[c * h * w + y as usize * w + x as usize] = v;
            }
        }
        Ok(Tensor::from_vec(data, (3, h, w), device)?)
    }

    /// Pixel values `(b, 3, H, W)` for a batch of images.
    pub fn preprocess_batch(&self, images: &[DynamicImage], device: &Device) -> Result<Tensor> {
        let each = images
            .iter()
            .map(|im| self.preprocess(im, device))
            .collect::<Result<Vec<_>>>()?;
        if each.is_empty() {
            return Err(ModelError::Input("no images to preprocess".into()));
        }
        Ok(Tensor::stack(&each, 0)?)
    }
}

fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T> {
    let text = std::fs::read_to_string(path).map_err(|source| ModelError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    serde_json::from_str(&text).map_err(|source| ModelError::Json {
        path: path.to_path_buf(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shortest_edge_then_centre_crop() {
        let cfg = ClipVisionConfig {
            image_size: 56,
            patch_size: 14,
            ..Default::default()
        };
        let p = ImageProcessor::for_vision(&cfg);
        let img = DynamicImage::ImageRgb8(RgbImage::from_fn(80, 64, |x, y| {
            image::Rgb([(x * 3) as u8, (y * 3) as u8, 128])
        }));
        let out = p.resize_and_crop(&img);
        assert_eq!(out.dimensions(), (56, 56));
        let t = p.preprocess(&img, &Device::Cpu).unwrap();
        assert_eq!(t.dims(), &[3, 56, 56]);
    }
}
