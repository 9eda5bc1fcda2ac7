//! SPR's random region queries (ICCV 2025, §3.1 "Region query").
//!
//! A query starts from a randomly picked annotated box and grows by adding,
//! one at a time, the object closest to the current region (smallest gap
//! between the boxes; centre distance, then index, break ties) until the
//! region holds at least four objects, an object being held when at least
//! 50% of its area lies inside. Regions whose short/long side ratio is at
//! most 1/3 are rejected (too thin to describe). The model is shown the
//! region expanded 1.5× about its centre, clamped to the image.
//!
//! The functions work on plain slices of boxes (the usable objects of one
//! image, see [`crate::core::dataset::Preprocess`]) so they are cheap enough
//! for the ≥100k queries/s/core target and easy to test. Everything is
//! seeded: the same seed gives the same regions on every machine.

use serde::{Deserialize, Serialize};

use crate::core::geometry::Bbox;
use crate::core::rng::SplitMix64;

/// Region-query settings (mirrors `[regions]` in `spr.toml`).
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RegionConfig {
    /// Seed of the whole run; each image gets its own sub-stream.
    pub seed: u64,
    /// Queries to draw per image (distinct regions).
    pub per_image: usize,
    /// Grow until the region holds at least this many objects (SPR: 4).
    pub min_objects: usize,
    /// Reject regions with short/long side ratio at or below this (SPR: 1/3).
    #[serde(serialize_with = "crate::core::project::short_f32")]
    pub min_side_ratio: f32,
    /// Scale of the crop shown to the model about the region centre (SPR: 1.5).
    #[serde(serialize_with = "crate::core::project::short_f32")]
    pub crop_scale: f32,
    /// An object is in the region when at least this fraction of its area is
    /// inside (SPR: 0.5).
    #[serde(serialize_with = "crate::core::project::short_f32")]
    pub containment: f32,
    /// Seeds tried per image before giving up on finding `per_image` regions.
    pub max_attempts: usize,
}

impl Default for RegionConfig {
    fn default() -> Self {
        Self {
            seed: 0,
            per_image: 1,
            min_objects: 4,
            min_side_ratio: 1.0 / 3.0,
            crop_scale: 1.5,
            containment: 0.5,
            max_attempts: 16,
        }
    }
}

/// One region query over the boxes of an image. Indices refer to the slice
/// the region was built from.
#[derive(Clone, Debug, PartialEq)]
pub struct RegionQuery {
    /// The region, pixel `xyxy` in the image.
    pub region: Bbox,
    /// What the model sees: the region scaled by `crop_scale`, clamped to the image.
    pub crop: Bbox,
    /// The box the growth started from.
    pub seed: usize,
    /// The boxes with at least `containment` of their area inside the region,
    /// ascending.
    pub objects: Vec<usize>,
}

/// Why a seed did not give a region.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rejection {
    /// The image has fewer than `min_objects` boxes to grow with.
    TooFewObjects,
    /// The grown region's short/long side ratio is at or below the limit.
    TooThin,
}

/// The objects of `boxes` held by `region` (at least `containment` of their area inside).
pub fn objects_in(region: Bbox, boxes: &[Bbox], containment: f32) -> Vec<usize> {
    (0..boxes.len())
        .filter(|&i| boxes[i].fraction_inside(region) >= containment)
        .collect()
}

/// Grow a region from box `seed` (see the module doc). The crop is clamped
/// to `image_w × image_h`.
pub fn grow_region(
    boxes: &[Bbox],
    seed: usize,
    image_w: f32,
    image_h: f32,
    cfg: &RegionConfig,
) -> Result<RegionQuery, Rejection> {
    if boxes.len() < cfg.min_objects || seed >= boxes.len() {
        return Err(Rejection::TooFewObjects);
    }
    let mut region = boxes[seed];
    let mut held = vec![false; boxes.len()];
    loop {
        let mut count = 0;
        for (h, b) in held.iter_mut().zip(boxes) {
            *h = b.fraction_inside(region) >= cfg.containment;
            count += usize::from(*h);
        }
        if count >= cfg.min_objects {
            break;
        }
        // The closest object not yet held: smallest gap, then centre distance, then index.
        let mut best: Option<(f32, f32, usize)> = None;
        for (i, b) in boxes.iter().enumerate() {
            if held[i] {
                continue;
            }
            let key = (region.gap(*b), region.center_distance_sq(*b), i);
            if best.is_none_or(|k| (key.0, key.1) < (k.0, k.1)) {
                best = Some(key);
            }
        }
        match best {
            Some((_, _, i)) => region = region.union(boxes[i]),
            None => return Err(Rejection::TooFewObjects),
        }
    }
    if region.side_ratio() <= cfg.min_side_ratio {
        return Err(Rejection::TooThin);
    }
    let objects = held
        .iter()
        .enumerate()
        .filter(|(_, &h)| h)
        .map(|(i, _)| i)
        .collect();
    Ok(RegionQuery {
        region,
        crop: region.expand(cfg.crop_scale).clamp_to(image_w, image_h),
        seed,
        objects,
    })
}

/// Draw up to `cfg.per_image` distinct region queries for one image, seeded
/// by `cfg.seed` and `stream` (use the image id so the result does not
/// depend on which images are processed or in what order).
pub fn sample_regions(
    boxes: &[Bbox],
    image_w: f32,
    image_h: f32,
    cfg: &RegionConfig,
    stream: u64,
) -> Vec<RegionQuery> {
    let mut out: Vec<RegionQuery> = Vec::new();
    if boxes.len() < cfg.min_objects || cfg.per_image == 0 {
        return out;
    }
    let mut rng = SplitMix64::for_stream(cfg.seed, stream);
    let mut seeds: Vec<usize> = (0..boxes.len()).collect();
    rng.shuffle(&mut seeds);
    for &seed in seeds.iter().take(cfg.max_attempts) {
        if let Ok(q) = grow_region(boxes, seed, image_w, image_h, cfg) {
            if !out.iter().any(|o| o.region == q.region) {
                out.push(q);
                if out.len() == cfg.per_image {
                    break;
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn grid_boxes() -> Vec<Bbox> {
        // A 3×3 grid of 20-px squares, 10 px apart.
        let mut v = Vec::new();
        for r in 0..3 {
            for c in 0..3 {
                let (x, y) = (10.0 + c as f32 * 30.0, 10.0 + r as f32 * 30.0);
                v.push(Bbox::new(x, y, x + 20.0, y + 20.0));
            }
        }
        v
    }

    #[test]
    fn grows_to_nearest_objects_hand_worked() {
        let boxes = grid_boxes();
        let cfg = RegionConfig::default();
        let q = grow_region(&boxes, 0, 200.0, 200.0, &cfg).unwrap();
        // From the top-left square [10,10,30,30]: right (index 1) and below
        // (index 3) are both 10 px away with equal centre distance; the lower
        // index wins → region [10,10,60,30], 2 objects. Next, boxes 2, 3 and 4
        // are all 10 px away; centre (35,20) is 1125 px² from 3 and 4 and
        // 2025 from 2; index breaks the tie → 3 → region [10,10,60,60], which
        // also holds box 4: four objects.
        assert_eq!(q.region, Bbox::new(10.0, 10.0, 60.0, 60.0));
        assert_eq!(q.objects, vec![0, 1, 3, 4]);
        // 1.5× about (35,35) is [-2.5,-2.5,72.5,72.5], clamped at 0.
        assert_eq!(q.crop, Bbox::new(0.0, 0.0, 72.5, 72.5));
    }

    #[test]
    fn rejects_thin_regions_and_small_images() {
        let row: Vec<Bbox> = (0..4)
            .map(|i| Bbox::new(i as f32 * 25.0, 0.0, i as f32 * 25.0 + 20.0, 20.0))
            .collect();
        let cfg = RegionConfig::default();
        // 95 × 20: ratio 0.21 ≤ 1/3
        assert_eq!(
            grow_region(&row, 0, 200.0, 200.0, &cfg),
            Err(Rejection::TooThin)
        );
        assert_eq!(
            grow_region(&row[..3], 0, 200.0, 200.0, &cfg),
            Err(Rejection::TooFewObjects)
        );
    }

    #[test]
    fn sampling_is_deterministic_and_distinct() {
        let boxes = grid_boxes();
        let cfg = RegionConfig {
            per_image: 3,
            seed: 7,
            ..Default::default()
        };
        let a = sample_regions(&boxes, 200.0, 200.0, &cfg, 12);
        let b = sample_regions(&boxes, 200.0, 200.0, &cfg, 12);
        assert_eq!(a, b);
        assert_eq!(a.len(), 3);
        for i in 0..a.len() {
            for j in 0..i {
                assert_ne!(a[i].region, a[j].region);
            }
        }
    }

    fn arb_scene() -> impl Strategy<Value = (Vec<Bbox>, f32, f32)> {
        (100f32..1000.0, 100f32..1000.0).prop_flat_map(|(w, h)| {
            let b = (0f32..1.0, 0f32..1.0, 0.02f32..0.4, 0.02f32..0.4).prop_map(
                move |(x, y, bw, bh)| {
                    let x1 = x * w * 0.9;
                    let y1 = y * h * 0.9;
                    Bbox::new(x1, y1, (x1 + bw * w).min(w), (y1 + bh * h).min(h))
                },
            );
            (prop::collection::vec(b, 0..30), Just(w), Just(h))
        })
    }

    proptest! {
        #[test]
        fn every_region_satisfies_spr_invariants((boxes, w, h) in arb_scene(), seed in 0u64..1000) {
            let cfg = RegionConfig { per_image: 4, seed, ..Default::default() };
            for q in sample_regions(&boxes, w, h, &cfg, 0) {
                // at least 4 objects, each ≥ 50% inside, and the list is complete
                prop_assert!(q.objects.len() >= cfg.min_objects);
                prop_assert_eq!(&q.objects, &objects_in(q.region, &boxes, cfg.containment));
                // the seed box is fully inside
                prop_assert!(q.region.contains(boxes[q.seed]));
                // not too thin
                prop_assert!(q.region.side_ratio() > 1.0 / 3.0);
                // crop: 1.5× about the centre, clamped to the image, holds the region
                let full = q.region.expand(1.5);
                prop_assert_eq!(q.crop, full.clamp_to(w, h));
                prop_assert!(q.crop.x1 >= 0.0 && q.crop.y1 >= 0.0 && q.crop.x2 <= w && q.crop.y2 <= h);
                prop_assert!(q.crop.contains(q.region.clamp_to(w, h)));
                // the region is the union of boxes (no wasted margin)
                let union = q.objects.iter().fold(boxes[q.seed], |acc, &i| {
                    if boxes[i].fraction_inside(q.region) >= 1.0 { acc.union(boxes[i]) } else { acc }
                });
                prop_assert_eq!(union, q.region);
            }
        }
    }
}
