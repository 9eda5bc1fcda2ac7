//! Ids: the hasher and maps for integer ids, the id → index lookup used
//! at resolution, the table of kept images or categories with their ids,
//! and the search for repeated annotation ids.

use std::collections::hash_map::Entry;
use std::collections::{HashMap, HashSet};
use std::hash::{BuildHasherDefault, Hasher};

use super::records::RawAnn;
use super::Fail;

/// Hasher for integer ids: a 64-bit finaliser, much cheaper than SipHash
/// and fine for ids, which are not chosen by an adversary of the process
/// (a bad file can only make loading slower).
#[derive(Default)]
pub(super) struct IdHasher(u64);

impl Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.write_u64(u64::from(b));
        }
    }

    fn write_u64(&mut self, v: u64) {
        let mut z = (self.0 ^ v).wrapping_add(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 33)).wrapping_mul(0xFF51_AFD7_ED55_8CCD);
        self.0 = z ^ (z >> 33);
    }
}

pub(super) type IdMap<V> = HashMap<u64, V, BuildHasherDefault<IdHasher>>;
pub(super) type IdSet = HashSet<u64, BuildHasherDefault<IdHasher>>;

/// Id → index lookup: a direct table when the ids are dense, else a map.
pub(super) struct IdIndex {
    min: u64,
    table: Vec<u32>,
    map: IdMap<u32>,
}

impl IdIndex {
    pub(super) fn new(map: IdMap<u32>) -> Self {
        let (Some(&min), Some(&max)) = (map.keys().min(), map.keys().max()) else {
            return Self {
                min: 0,
                table: Vec::new(),
                map,
            };
        };
        let span = max - min;
        if span < 4 * map.len() as u64 + 4096 {
            let mut table = vec![u32::MAX; span as usize + 1];
            for (&id, &i) in &map {
                table[(id - min) as usize] = i;
            }
            Self {
                min,
                table,
                map: IdMap::default(),
            }
        } else {
            Self {
                min: 0,
                table: Vec::new(),
                map,
            }
        }
    }

    #[inline]
    pub(super) fn get(&self, id: u64) -> Option<u32> {
        if self.table.is_empty() {
            return self.map.get(&id).copied();
        }
        let i = self
            .table
            .get(usize::try_from(id.wrapping_sub(self.min)).ok()?)
            .copied()?;
        (i != u32::MAX).then_some(i)
    }
}

/// The kept records of one array (images or categories): the items, their
/// ids and array positions, and the ids of the records skipped for a
/// problem (so that a reference to one can say why it is unknown).
pub(super) struct IdTable<T> {
    items: Vec<T>,
    /// Id → index into `items`.
    ids: IdMap<u32>,
    /// Array position of each kept item.
    records: Vec<usize>,
    /// Ids of skipped records → their array position (the first one).
    skipped: IdMap<usize>,
}

impl<T> Default for IdTable<T> {
    fn default() -> Self {
        Self {
            items: Vec::new(),
            ids: IdMap::default(),
            records: Vec::new(),
            skipped: IdMap::default(),
        }
    }
}

impl<T> IdTable<T> {
    /// Fails when one more item would not fit the `u32` indices.
    pub(super) fn check_room(&self, what: &str) -> Result<(), Fail> {
        if u32::try_from(self.items.len()).map_or(true, |n| n == u32::MAX) {
            return Err(Fail::Format(format!(
                "more {what} than this loader supports"
            )));
        }
        Ok(())
    }

    /// The array position of the kept record with `id`.
    pub(super) fn record_of(&self, id: u64) -> Option<usize> {
        self.ids.get(&id).map(|&i| self.records[i as usize])
    }

    /// Keeps `item`, record `index` of its array, under `id`.
    pub(super) fn push(&mut self, id: u64, index: usize, item: T) {
        self.ids.insert(id, self.items.len() as u32);
        self.records.push(index);
        self.items.push(item);
    }

    /// Remembers that the record at `index` with `id` was skipped.
    pub(super) fn skip(&mut self, id: u64, index: usize) {
        self.skipped.entry(id).or_insert(index);
    }

    /// The items, their id lookup and the skipped ids.
    pub(super) fn into_parts(self) -> (Vec<T>, IdIndex, IdMap<usize>) {
        (self.items, IdIndex::new(self.ids), self.skipped)
    }
}

/// Positions in the concatenated `segments` (annotations, each with the
/// shift of its `index`) of the later occurrences of repeated ids, each with
/// the `annotations` index of the first occurrence, in order.
pub(super) fn later_duplicates(segments: &[(&[RawAnn], u32)]) -> Vec<(usize, usize)> {
    let all = || {
        segments
            .iter()
            .flat_map(|&(s, shift)| s.iter().map(move |a| (a, shift)))
    };
    let mut prev = None;
    if all().all(|(a, _)| prev.replace(a.id).is_none_or(|p| p < a.id)) {
        return Vec::new();
    }
    let mut ids: Vec<u64> = all().map(|(a, _)| a.id).collect();
    ids.sort_unstable();
    let repeated: IdSet = ids
        .windows(2)
        .filter(|w| w[0] == w[1])
        .map(|w| w[0])
        .collect();
    drop(ids);
    if repeated.is_empty() {
        return Vec::new();
    }
    let mut first: IdMap<usize> = IdMap::default();
    let mut out = Vec::new();
    for (pos, (a, shift)) in all().enumerate() {
        if repeated.contains(&a.id) {
            match first.entry(a.id) {
                Entry::Occupied(e) => out.push((pos, *e.get())),
                Entry::Vacant(e) => {
                    e.insert(a.index as usize + shift as usize);
                }
            }
        }
    }
    out
}
