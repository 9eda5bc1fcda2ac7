//! Resolution, once the whole file is read: annotation ids checked for
//! repeats, `image_id` and `category_id` resolved to indices, boxes checked
//! against their image (clipped or refused), and the kept objects put in
//! image order with a counting sort (stable: file order within an image)
//! straight into the structure of arrays of [`Objects`].

use std::path::Path;

use super::ids::{later_duplicates, IdIndex, IdMap};
use super::problems::Problem;
use super::records::RawAnn;
use super::{Arr, Loader};
use crate::core::dataset::{Dataset, ImageInfo, LoadOptions, Objects};
use crate::core::geometry::Bbox;

/// Where a resolved annotation goes, and as what.
struct Placed {
    /// Index into the kept images.
    image: u32,
    /// Index into the kept categories.
    category: u32,
    /// The box, clipped to the image where it extended past it.
    bbox: Bbox,
    /// The box before clipping, when it was clipped.
    clipped_from: Option<Bbox>,
    /// The `area` field, or the (clipped) box's area when it had none.
    area: f32,
}

/// What resolving an annotation needs: the kept images and categories.
struct Resolver<'a> {
    images: &'a [ImageInfo],
    image_index: IdIndex,
    skipped_images: IdMap<usize>,
    category_index: IdIndex,
    skipped_categories: IdMap<usize>,
}

impl Resolver<'_> {
    /// Where annotation `a` goes, or the problems that keep it out.
    fn place(&self, a: &RawAnn) -> Result<Placed, Vec<Problem>> {
        let image = self.image_index.get(a.image_id);
        let category = self.category_index.get(a.category_id);
        let (Some(image), Some(category)) = (image, category) else {
            let mut problems = Vec::new();
            if image.is_none() {
                problems.push(Problem::UnknownRef {
                    field: "image_id",
                    id: a.image_id,
                    skipped_at: self.skipped_images.get(&a.image_id).copied(),
                });
            }
            if category.is_none() {
                problems.push(Problem::UnknownRef {
                    field: "category_id",
                    id: a.category_id,
                    skipped_at: self.skipped_categories.get(&a.category_id).copied(),
                });
            }
            return Err(problems);
        };
        let info = &self.images[image as usize];
        let (w, h) = (info.width as f32, info.height as f32);
        let b = a.bbox;
        let mut placed = Placed {
            image,
            category,
            bbox: b,
            clipped_from: None,
            area: a.area,
        };
        if b.x1 < -1.0 || b.y1 < -1.0 || b.x2 > w + 1.0 || b.y2 > h + 1.0 {
            let clipped = b.clamp_to(w, h);
            if !(clipped.x2 > clipped.x1 && clipped.y2 > clipped.y1) {
                return Err(vec![Problem::BboxOutside {
                    from: b,
                    width: info.width,
                    height: info.height,
                }]);
            }
            placed.bbox = clipped;
            placed.clipped_from = Some(b);
        }
        if placed.area.is_nan() {
            placed.area = placed.bbox.area();
        }
        Ok(placed)
    }
}

impl Loader {
    /// Resolve ids, sort the objects by image and build the dataset.
    pub(super) fn finish(
        mut self,
        file: &Path,
        image_root: &Path,
        options: &LoadOptions,
    ) -> Dataset {
        let (images, image_index, skipped_images) = std::mem::take(&mut self.images).into_parts();
        let (categories, category_index, skipped_categories) =
            std::mem::take(&mut self.categories).into_parts();
        let resolver = Resolver {
            images: &images,
            image_index,
            skipped_images,
            category_index,
            skipped_categories,
        };
        let head = std::mem::take(&mut self.anns);
        let tail = std::mem::take(&mut self.tail);
        let shift = self.tail_shift;
        let segments: Vec<(&[RawAnn], u32)> = head
            .slices()
            .map(|s| (s, 0))
            .chain(tail.slices().map(|s| (s, shift)))
            .collect();
        let all = || {
            segments
                .iter()
                .flat_map(|&(s, shift)| s.iter().map(move |a| (a, shift)))
        };
        let mut duplicates = later_duplicates(&segments).into_iter().peekable();

        // Pass 1: which annotations are kept (the others reported), and
        // how many objects each image gets.
        let mut kept = vec![false; head.len() + tail.len()];
        let mut counts = vec![0u32; images.len()];
        for (pos, (a, shift)) in all().enumerate() {
            let index = a.index as usize + shift as usize;
            if duplicates.peek().is_some_and(|&(p, _)| p == pos) {
                if let Some((_, first)) = duplicates.next() {
                    let p = Problem::DuplicateId { first };
                    self.issue(Arr::Annotations, index, Some(a.id), p);
                }
                continue;
            }
            match resolver.place(a) {
                Ok(placed) => {
                    if let Some(from) = placed.clipped_from {
                        let info = &images[placed.image as usize];
                        let p = Problem::BboxClipped {
                            from,
                            to: placed.bbox,
                            width: info.width,
                            height: info.height,
                        };
                        self.issue(Arr::Annotations, index, Some(a.id), p);
                    }
                    kept[pos] = true;
                    counts[placed.image as usize] += 1;
                }
                Err(problems) => {
                    for p in problems {
                        self.issue(Arr::Annotations, index, Some(a.id), p);
                    }
                }
            }
        }
        drop(segments);

        // Pass 2: counting sort by image, each chunk of annotations freed
        // once placed. (The objects' arrays start as untouched zero pages,
        // so memory grows with the objects placed, not all at once.)
        let mut image_objects = Vec::with_capacity(counts.len());
        let mut next = Vec::with_capacity(counts.len());
        let mut total = 0u32;
        for &c in &counts {
            next.push(total);
            image_objects.push(total..total + c);
            total += c;
        }
        drop(counts);
        let n = total as usize;
        let mut objects = Objects {
            id: vec![0; n],
            image: vec![0; n],
            category: vec![0; n],
            bbox: vec![Bbox::default(); n],
            area: vec![0.0; n],
            crowd: vec![false; n],
        };
        let mut kept = kept.into_iter();
        for chunk in head.into_chunks().into_iter().chain(tail.into_chunks()) {
            for a in &chunk {
                if kept.next() != Some(true) {
                    continue;
                }
                // Kept annotations were placed in pass 1 and place the same.
                let Ok(p) = resolver.place(a) else { continue };
                let image = p.image as usize;
                let slot = next[image] as usize;
                next[image] += 1;
                objects.id[slot] = a.id;
                objects.image[slot] = p.image;
                objects.category[slot] = p.category;
                objects.bbox[slot] = p.bbox;
                objects.area[slot] = p.area;
                objects.crowd[slot] = a.crowd;
            }
        }
        drop(resolver);

        let issues = self.issues(file, options);
        Dataset {
            source: file.to_path_buf(),
            image_root: image_root.to_path_buf(),
            images,
            categories,
            objects,
            image_objects,
            issues,
        }
    }
}
