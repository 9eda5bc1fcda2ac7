//! Bicubic (Catmull-Rom) resizing of RGB images with precomputed taps.
//!
//! The processors resize every image and region crop before the vision
//! towers; with `image::imageops::resize` that was 13–17 % of all scoring
//! time, because it converts the image to four-channel `f32`, fetches every
//! tap through a bounds-checked `get_pixel`, and rounds with a libm call.
//! This computes the same thing — the same kernel and support (2, widened
//! by the ratio when shrinking, i.e. antialiased), the same weights and the
//! same order of the two passes and of every sum — on three channels with
//! each axis's taps computed once, so its output equals the image crate's
//! byte for byte (a test checks it on images shrunk and enlarged).

use image::RgbImage;

/// Catmull-Rom cubic (B = 0, C = ½), written as the image crate writes its
/// B/C spline so that the weights come out identical.
fn catmull_rom(x: f32) -> f32 {
    let a = x.abs();
    let k = if a < 1.0 {
        9.0 * a.powi(3) + -15.0 * a.powi(2) + 6.0
    } else if a < 2.0 {
        -3.0 * a.powi(3) + 15.0 * a.powi(2) + -24.0 * a + 12.0
    } else {
        0.0
    };
    k / 6.0
}

/// For each output coordinate on one axis: the first input index and the
/// normalised weights of the inputs from there on.
struct Taps {
    first: Vec<usize>,
    weights: Vec<Vec<f32>>,
}

impl Taps {
    fn new(src: u32, dst: u32) -> Self {
        let ratio = src as f32 / dst as f32;
        let sratio = ratio.max(1.0);
        let support = 2.0 * sratio;
        let (mut first, mut weights) = (Vec::new(), Vec::new());
        for out in 0..dst {
            let centre = (out as f32 + 0.5) * ratio;
            let left = ((centre - support).floor() as i64).clamp(0, i64::from(src) - 1);
            let right = ((centre + support).ceil() as i64).clamp(left + 1, i64::from(src));
            let centre = centre - 0.5;
            let mut ws: Vec<f32> = (left..right)
                .map(|i| catmull_rom((i as f32 - centre) / sratio))
                .collect();
            let sum: f32 = ws.iter().fold(0.0, |s, w| s + w);
            ws.iter_mut().for_each(|w| *w /= sum);
            first.push(left as usize);
            weights.push(ws);
        }
        Self { first, weights }
    }
}

/// `image` resized to `width × height` (each at least 1) with the
/// Catmull-Rom filter, as `image::imageops::resize(.., CatmullRom)` does.
pub fn resize_catmull_rom(image: &RgbImage, width: u32, height: u32) -> RgbImage {
    let (w, h) = image.dimensions();
    if (w, h) == (width, height) || w == 0 || h == 0 {
        return if w == 0 || h == 0 {
            RgbImage::new(width, height)
        } else {
            image.clone()
        };
    }
    let src = image.as_raw();
    let row = 3 * w as usize;
    // Vertical pass into f32, unrounded.
    let rows = Taps::new(h, height);
    let mut mid = vec![0f32; height as usize * row];
    for ((out, &top), ws) in mid
        .chunks_exact_mut(row)
        .zip(&rows.first)
        .zip(&rows.weights)
    {
        for (i, &wt) in ws.iter().enumerate() {
            let line = &src[(top + i) * row..(top + i + 1) * row];
            for (o, &p) in out.iter_mut().zip(line) {
                *o += f32::from(p) * wt;
            }
        }
    }
    // Horizontal pass, rounded to the nearest and clamped to 0..=255.
    let cols = Taps::new(w, width);
    let out_row = 3 * width as usize;
    let mut out = vec![0u8; height as usize * out_row];
    for (dst, line) in out.chunks_exact_mut(out_row).zip(mid.chunks_exact(row)) {
        for ((px, &left), ws) in dst.chunks_exact_mut(3).zip(&cols.first).zip(&cols.weights) {
            let mut t = [0f32; 3];
            for (i, &wt) in ws.iter().enumerate() {
                let s = &line[3 * (left + i)..3 * (left + i) + 3];
                for c in 0..3 {
                    t[c] += s[c] * wt;
                }
            }
            for c in 0..3 {
                // floor(v + 0.49999997) is round-half-away-from-zero for
                // v ≥ 0, without a libm call.
                px[c] = (t[c].clamp(0.0, 255.0) + 0.499_999_97) as u8;
            }
        }
    }
    RgbImage::from_raw(width, height, out).unwrap_or_else(|| RgbImage::new(width, height))
}

#[cfg(test)]
mod tests {
    use super::*;
    use image::imageops::FilterType;

    fn pattern(w: u32, h: u32, seed: u32) -> RgbImage {
        let mut s = seed.wrapping_mul(2_654_435_761).max(1);
        RgbImage::from_fn(w, h, |x, y| {
            s ^= s << 13;
            s ^= s >> 17;
            s ^= s << 5;
            // Smooth shapes with noise and hard edges, as scenes have.
            let base = if (x / 7 + y / 5) % 3 == 0 { 200 } else { 40 };
            image::Rgb([
                (base + (s % 50)) as u8,
                ((x * 255) / w.max(1)) as u8,
                (s >> 8) as u8,
            ])
        })
    }

    #[test]
    fn equals_the_image_crates_catmull_rom_byte_for_byte() {
        for (i, &(w, h, nw, nh)) in [
            (640, 480, 149, 112),
            (97, 203, 112, 234),
            (300, 300, 168, 168),
            (13, 9, 112, 112),
            (1, 5, 3, 2),
            (250, 40, 250, 7),
        ]
        .iter()
        .enumerate()
        {
            let img = pattern(w, h, i as u32 + 1);
            let ours = resize_catmull_rom(&img, nw, nh);
            let theirs = image::imageops::resize(&img, nw, nh, FilterType::CatmullRom);
            assert_eq!(ours.dimensions(), theirs.dimensions());
            let diff = ours
                .as_raw()
                .iter()
                .zip(theirs.as_raw())
                .filter(|(a, b)| a != b)
                .count();
            assert_eq!(diff, 0, "{w}×{h} → {nw}×{nh}: {diff} bytes differ");
        }
    }

    #[test]
    fn same_size_and_empty_images() {
        let img = pattern(5, 4, 3);
        assert_eq!(resize_catmull_rom(&img, 5, 4), img);
        let empty = RgbImage::new(0, 0);
        assert_eq!(resize_catmull_rom(&empty, 3, 2).dimensions(), (3, 2));
    }
}
