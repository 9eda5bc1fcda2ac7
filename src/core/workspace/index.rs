//! The workspace's lookups and its ranking cache.
//!
//! Lookups by id (region, candidate) and by owner (regions of an image,
//! candidates of a query) are hash maps kept in step with the records, so
//! the GUI's per-frame questions cost O(1) instead of a scan of every
//! record — the difference between the demo's 40 images and Objects365.
//!
//! Rankings depend on the records, λ and the IoU threshold only, so they
//! are cached under `(revision, λ, IoU)`: the revision counts every change
//! of the records, and any change of the three keys drops the cache. The
//! per-image score the browser sorts by ("worst localization first") is
//! computed once per key for every image, not once per image per frame.

use std::collections::HashMap;
use std::sync::Arc;

use crate::core::project::{CandidateRecord, RegionRecord};

use super::Ranked;

/// Positions of records by id and by owner.
#[derive(Debug, Default)]
pub(super) struct Index {
    pub regions_of_image: HashMap<u64, Vec<usize>>,
    pub region_by_id: HashMap<String, usize>,
    pub candidates_of_query: HashMap<String, Vec<usize>>,
    pub candidate_by_id: HashMap<String, usize>,
}

impl Index {
    /// The index of `regions` and `candidates`, built from scratch.
    pub fn build(regions: &[RegionRecord], candidates: &[CandidateRecord]) -> Index {
        let mut index = Index::default();
        for (i, r) in regions.iter().enumerate() {
            index.add_region(i, r);
        }
        for (i, c) in candidates.iter().enumerate() {
            index.add_candidate(i, c);
        }
        index
    }

    /// Records region `r` at position `i` (appended).
    pub fn add_region(&mut self, i: usize, r: &RegionRecord) {
        self.regions_of_image.entry(r.image_id).or_default().push(i);
        // The first of duplicate ids wins, as a scan would find it.
        self.region_by_id.entry(r.id.clone()).or_insert(i);
    }

    /// Records candidate `c` at position `i` (appended).
    pub fn add_candidate(&mut self, i: usize, c: &CandidateRecord) {
        self.candidates_of_query
            .entry(c.query_id.clone())
            .or_default()
            .push(i);
        self.candidate_by_id.entry(c.id.clone()).or_insert(i);
    }
}

/// Rankings computed at one `(revision, λ, IoU)`.
#[derive(Debug, Default)]
pub(super) struct RankCache {
    key: Option<(u64, u32, u32)>,
    pub rankings: HashMap<String, Arc<Vec<Ranked>>>,
    pub image_scores: Option<Arc<HashMap<u64, f32>>>,
}

impl RankCache {
    /// Makes the cache hold entries for `(revision, lambda, iou)`,
    /// dropping anything computed for another key.
    pub fn at(&mut self, revision: u64, lambda: f32, iou: f32) -> &mut RankCache {
        let key = (revision, lambda.to_bits(), iou.to_bits());
        if self.key != Some(key) {
            self.key = Some(key);
            self.rankings.clear();
            self.image_scores = None;
        }
        self
    }
}
