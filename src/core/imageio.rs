//! Image decoding with limits, and crops.
//!
//! Dataset images come from users' folders and may be missing, truncated or
//! hostile (decompression bombs: a small file that declares a huge canvas).
//! Decoding goes through the `image` crate with explicit limits on the
//! dimensions and on the memory a decoder may allocate, and every failure
//! names the file.

use std::path::{Path, PathBuf};

use image::{ImageReader, Limits, RgbImage};

use crate::core::geometry::Bbox;

/// Largest width or height accepted (pixels).
pub const MAX_SIDE: u32 = 16_384;
/// Largest allocation a decoder may make (bytes).
pub const MAX_ALLOC: u64 = 512 * 1024 * 1024;

/// A failure to read an image.
#[derive(Debug, thiserror::Error)]
pub enum ImageLoadError {
    /// The file does not exist or cannot be opened.
    #[error("{path}: cannot open image: {source}")]
    Open {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The bytes are not a decodable image, or exceed the limits.
    #[error("{path}: cannot decode image: {message}")]
    Decode {
        /// The file.
        path: PathBuf,
        /// The decoder's words.
        message: String,
    },
    /// Encoding or writing an output image failed.
    #[error("{path}: cannot write image: {message}")]
    Write {
        /// The file.
        path: PathBuf,
        /// The cause.
        message: String,
    },
}

/// The decode limits used everywhere.
pub fn limits() -> Limits {
    let mut l = Limits::default();
    l.max_image_width = Some(MAX_SIDE);
    l.max_image_height = Some(MAX_SIDE);
    l.max_alloc = Some(MAX_ALLOC);
    l
}

fn decode_error(path: &Path, message: String) -> ImageLoadError {
    ImageLoadError::Decode {
        path: path.to_path_buf(),
        message,
    }
}

/// A reader of the image at `path`, its format guessed from the bytes and
/// [`limits`] set.
fn reader(path: &Path) -> Result<ImageReader<std::io::BufReader<std::fs::File>>, ImageLoadError> {
    let mut r = ImageReader::open(path)
        .map_err(|source| ImageLoadError::Open {
            path: path.to_path_buf(),
            source,
        })?
        .with_guessed_format()
        .map_err(|e| decode_error(path, e.to_string()))?;
    r.limits(limits());
    Ok(r)
}

/// Decode the image at `path` as 8-bit RGB, within [`limits`].
pub fn load_rgb(path: &Path) -> Result<RgbImage, ImageLoadError> {
    Ok(reader(path)?
        .decode()
        .map_err(|e| decode_error(path, e.to_string()))?
        .to_rgb8())
}

/// Checks that the image at `path` decodes, without keeping its pixels:
/// the header first (dimensions within [`MAX_SIDE`] and the pixels within
/// [`MAX_ALLOC`], so a decompression bomb is refused before any large
/// allocation), then the pixels within [`limits`]. Returns the decoded
/// width and height.
pub fn check_image(path: &Path) -> Result<(u32, u32), ImageLoadError> {
    let (w, h) = reader(path)?
        .into_dimensions()
        .map_err(|e| decode_error(path, e.to_string()))?;
    if w > MAX_SIDE || h > MAX_SIDE || u64::from(w) * u64::from(h) * 4 > MAX_ALLOC {
        return Err(decode_error(
            path,
            format!(
                "{w}×{h} pixels exceeds the limits ({MAX_SIDE} px a side, {} MB decoded): refused before decoding",
                MAX_ALLOC >> 20
            ),
        ));
    }
    let img = reader(path)?
        .decode()
        .map_err(|e| decode_error(path, e.to_string()))?;
    Ok((img.width(), img.height()))
}

/// The pixels of `crop` (image pixels; rounded outward, clamped to the image).
pub fn crop_rgb(image: &RgbImage, crop: Bbox) -> RgbImage {
    let (w, h) = (image.width(), image.height());
    let x1 = (crop.x1.floor().max(0.0) as u32).min(w.saturating_sub(1));
    let y1 = (crop.y1.floor().max(0.0) as u32).min(h.saturating_sub(1));
    let x2 = (crop.x2.ceil().max(0.0) as u32).clamp(x1 + 1, w.max(x1 + 1));
    let y2 = (crop.y2.ceil().max(0.0) as u32).clamp(y1 + 1, h.max(y1 + 1));
    image::imageops::crop_imm(image, x1, y1, x2 - x1, y2 - y1).to_image()
}

/// `image` padded to a centred square with `fill` (CLIP's mean colour for
/// the semantic score, so a centre crop cannot cut a region off).
pub fn pad_to_square(image: &RgbImage, fill: image::Rgb<u8>) -> RgbImage {
    let (w, h) = image.dimensions();
    let side = w.max(h);
    let mut out = RgbImage::from_pixel(side, side, fill);
    image::imageops::overlay(
        &mut out,
        image,
        i64::from((side - w) / 2),
        i64::from((side - h) / 2),
    );
    out
}

/// `mean` (per channel, 0–1) as an 8-bit colour.
pub fn mean_colour(mean: [f32; 3]) -> image::Rgb<u8> {
    image::Rgb(mean.map(|m| (m * 255.0).round().clamp(0.0, 255.0) as u8))
}

/// Save `image` as PNG at `path` (atomically, via the project writer).
pub fn save_png(image: &RgbImage, path: &Path) -> Result<(), ImageLoadError> {
    let write = |message: String| ImageLoadError::Write {
        path: path.to_path_buf(),
        message,
    };
    let mut bytes = std::io::Cursor::new(Vec::new());
    image
        .write_to(&mut bytes, image::ImageFormat::Png)
        .map_err(|e| write(e.to_string()))?;
    crate::core::project::write_atomic(path, bytes.get_ref()).map_err(|e| write(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn check_image_names_truncated_files_and_refuses_bombs_by_their_header() {
        let dir = tempfile::tempdir().unwrap();
        let good = dir.path().join("good.png");
        save_png(&RgbImage::new(30, 20), &good).unwrap();
        assert_eq!(check_image(&good).unwrap(), (30, 20));
        // Truncated: the header is fine, the pixels are not.
        let bytes = std::fs::read(&good).unwrap();
        let cut = dir.path().join("cut.png");
        std::fs::write(&cut, &bytes[..bytes.len() / 2]).unwrap();
        let e = check_image(&cut).unwrap_err().to_string();
        assert!(e.contains("cut.png") && e.contains("cannot decode"), "{e}");
        // A PNG header declaring 100,000 × 100,000 pixels, and nothing else.
        let mut bomb = b"\x89PNG\r\n\x1a\n\x00\x00\x00\x0dIHDR".to_vec();
        bomb.extend_from_slice(&100_000u32.to_be_bytes());
        bomb.extend_from_slice(&100_000u32.to_be_bytes());
        bomb.extend_from_slice(&[8, 2, 0, 0, 0]);
        let crc = {
            // CRC-32 of the chunk type and data, as PNG asks.
            let mut c = 0xffff_ffffu32;
            for &b in &bomb[12..] {
                c ^= u32::from(b);
                for _ in 0..8 {
                    c = if c & 1 != 0 {
                        0xedb8_8320 ^ (c >> 1)
                    } else {
                        c >> 1
                    };
                }
            }
            !c
        };
        bomb.extend_from_slice(&crc.to_be_bytes());
        let path = dir.path().join("bomb.png");
        std::fs::write(&path, &bomb).unwrap();
        let e = check_image(&path).unwrap_err().to_string();
        assert!(e.contains("bomb.png"), "{e}");
        let missing = check_image(&dir.path().join("nope.png")).unwrap_err();
        assert!(matches!(missing, ImageLoadError::Open { .. }));
    }

    #[test]
    fn missing_corrupt_and_bomb_images_are_named_errors() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("nope.png");
        let e = load_rgb(&missing).unwrap_err().to_string();
        assert!(e.contains("nope.png") && e.contains("cannot open"), "{e}");

        let corrupt = dir.path().join("bad.png");
        std::fs::write(&corrupt, b"\x89PNG\r\n\x1a\nthis is not a png").unwrap();
        let e = load_rgb(&corrupt).unwrap_err().to_string();
        assert!(e.contains("bad.png") && e.contains("cannot decode"), "{e}");

        // A PNG header declaring 100000 × 100000 pixels: refused by the limits
        // before any pixel buffer is allocated.
        let mut bomb = Vec::new();
        bomb.extend_from_slice(b"\x89PNG\r\n\x1a\n");
        let mut ihdr = Vec::new();
        ihdr.extend_from_slice(b"IHDR");
        ihdr.extend_from_slice(&100_000u32.to_be_bytes());
        ihdr.extend_from_slice(&100_000u32.to_be_bytes());
        ihdr.extend_from_slice(&[8, 2, 0, 0, 0]);
        bomb.extend_from_slice(&13u32.to_be_bytes());
        bomb.extend_from_slice(&ihdr);
        bomb.extend_from_slice(&crc32(&ihdr).to_be_bytes());
        let path = dir.path().join("bomb.png");
        std::fs::write(&path, &bomb).unwrap();
        let e = load_rgb(&path).unwrap_err().to_string();
        assert!(e.contains("bomb.png"), "{e}");
    }

    fn crc32(data: &[u8]) -> u32 {
        let mut crc = 0xFFFF_FFFFu32;
        for &b in data {
            crc ^= b as u32;
            for _ in 0..8 {
                crc = if crc & 1 != 0 {
                    (crc >> 1) ^ 0xEDB8_8320
                } else {
                    crc >> 1
                };
            }
        }
        !crc
    }

    #[test]
    fn crop_and_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let img = RgbImage::from_fn(20, 10, |x, y| image::Rgb([x as u8, y as u8, 0]));
        let c = crop_rgb(&img, Bbox::new(2.5, 1.0, 30.0, 5.2));
        assert_eq!((c.width(), c.height()), (18, 5));
        assert_eq!(c.get_pixel(0, 0).0, [2, 1, 0]);
        let path = dir.path().join("c.png");
        save_png(&c, &path).unwrap();
        assert_eq!(load_rgb(&path).unwrap(), c);
    }
}
