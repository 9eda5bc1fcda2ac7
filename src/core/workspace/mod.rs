//! An open project with everything a person edits by hand: the loaded
//! dataset and stage records, live re-ranking at any λ and IoU threshold,
//! hand-made regions, candidates and chosen/rejected marks, with undo/redo,
//! and every edit saved atomically to the project files at once — merged
//! into what other processes wrote meanwhile, and reloaded when they
//! change a file (see `disk.rs`).
//!
//! This is the GUI's model, kept here (no GUI code) so that every operation
//! the GUI offers is plain library code, tested without a window, and the
//! files it writes are the same ones the CLI reads.

mod disk;
mod index;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use crate::core::dataset::Dataset;
use crate::core::geometry::Bbox;
use crate::core::pipeline::{self, PairStats, StageIssue};
use crate::core::project::{
    self, files, CandidateRecord, Frame, MarkRecord, PairRecord, Project, ProjectError,
    RegionRecord, ScoreRecord, FORMAT_VERSION,
};
use crate::core::regions::{sample_regions, RegionConfig};
use crate::core::scores::{self, Components, LocScore};

/// `text` (image pixels) rendered in the syntax and frame of candidate `c`.
fn render_in_frame(
    text: &crate::core::grounded::GroundedText,
    c: &CandidateRecord,
    region: &RegionRecord,
) -> String {
    let (frame, w, h) = match c.frame {
        Frame::Crop => (region.crop, region.crop.width(), region.crop.height()),
        Frame::Image => (Bbox::default(), region.width as f32, region.height as f32),
    };
    crate::core::grounded::render(&text.crop_from_image(frame), c.format, w, h)
}

/// Why a project could not be opened at all.
#[derive(Debug, thiserror::Error)]
pub enum WorkspaceError {
    /// `spr.toml` or a stage file could not be read.
    #[error(transparent)]
    Project(#[from] ProjectError),
    /// The annotation file could not be loaded.
    #[error(transparent)]
    Dataset(#[from] crate::core::dataset::DatasetError),
}

/// One reversible edit.
#[derive(Clone, Debug, PartialEq)]
pub enum Edit {
    /// A region was added (at the end).
    AddRegion(RegionRecord),
    /// A candidate was added (at the end).
    AddCandidate(CandidateRecord),
    /// A candidate's text changed.
    SetText {
        /// The candidate.
        id: String,
        /// Text before.
        before: String,
        /// Text after.
        after: String,
    },
    /// A region without candidates was deleted.
    RemoveRegion(RegionRecord),
    /// A hand-written candidate was deleted.
    RemoveCandidate(CandidateRecord),
    /// A query's marks changed.
    SetMark {
        /// The query.
        query_id: String,
        /// Marks before.
        before: Option<MarkRecord>,
        /// Marks after.
        after: Option<MarkRecord>,
    },
}

impl Edit {
    fn inverse(&self) -> Inverse {
        match self {
            Edit::AddRegion(r) => Inverse::RemoveRegion(r.id.clone()),
            Edit::AddCandidate(c) => Inverse::RemoveCandidate(c.id.clone()),
            Edit::RemoveRegion(r) => Inverse::Edit(Box::new(Edit::AddRegion(r.clone()))),
            Edit::RemoveCandidate(c) => Inverse::Edit(Box::new(Edit::AddCandidate(c.clone()))),
            Edit::SetText { id, before, after } => Inverse::Edit(Box::new(Edit::SetText {
                id: id.clone(),
                before: after.clone(),
                after: before.clone(),
            })),
            Edit::SetMark {
                query_id,
                before,
                after,
            } => Inverse::Edit(Box::new(Edit::SetMark {
                query_id: query_id.clone(),
                before: after.clone(),
                after: before.clone(),
            })),
        }
    }
}

/// What undoes an edit.
enum Inverse {
    RemoveRegion(String),
    RemoveCandidate(String),
    Edit(Box<Edit>),
}

/// A candidate of a query, scored live.
#[derive(Clone, Debug, PartialEq)]
pub struct Ranked {
    /// Index into [`Workspace::candidates`].
    pub candidate: usize,
    /// Stored semantic score and the localization score at the live threshold.
    pub components: Components,
    /// Composite at the live λ.
    pub composite: f32,
    /// The localization details at the live threshold.
    pub loc: LocScore,
}

/// Which mark to set.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MarkKind {
    /// Chosen.
    Chosen,
    /// Rejected.
    Rejected,
}

/// An open project.
#[derive(Debug)]
pub struct Workspace {
    /// The project.
    pub project: Project,
    /// Its dataset.
    pub dataset: Dataset,
    /// Region queries.
    pub regions: Vec<RegionRecord>,
    /// Candidates.
    pub candidates: Vec<CandidateRecord>,
    /// Scores by candidate id.
    pub scores: HashMap<String, ScoreRecord>,
    /// Hand-set marks.
    pub marks: Vec<MarkRecord>,
    /// Problems met while opening: dataset issues and bad lines, as text.
    pub problems: Vec<String>,
    object_ids: HashMap<u64, usize>,
    index: index::Index,
    /// Query id → index into `marks`.
    mark_index: HashMap<String, usize>,
    /// Counts every change of the records (the ranking cache's key).
    revision: u64,
    cache: Mutex<index::RankCache>,
    writer: Option<project::BackgroundWriter>,
    /// Each stage file as last read or saved (the base of the next save's
    /// merge) and its fingerprint on disk.
    disk: HashMap<&'static str, disk::Known>,
    undo: Vec<Edit>,
    redo: Vec<Edit>,
}

impl Workspace {
    /// Open the project in `dir`: settings, dataset and every stage file
    /// present. Bad records are listed in [`Workspace::problems`].
    pub fn open(dir: &Path) -> Result<Workspace, WorkspaceError> {
        let project = Project::open(dir)?;
        let dataset = project.load_dataset()?;
        let mut problems: Vec<String> = dataset.issues.iter().map(|i| i.to_string()).collect();
        let mut disk = HashMap::new();
        let (d, pr) = (&mut disk, &mut problems);
        let regions = disk::read_stage(&project, files::REGIONS, d, pr)?;
        let candidates = disk::read_stage(&project, files::CANDIDATES, d, pr)?;
        let scores: Vec<ScoreRecord> = disk::read_stage(&project, files::SCORES, d, pr)?;
        let marks = disk::read_stage(&project, files::MARKS, d, pr)?;
        let object_ids = pipeline::object_ids(&dataset);
        let index = index::Index::build(&regions, &candidates);
        let mut ws = Workspace {
            project,
            dataset,
            regions,
            candidates,
            scores: scores
                .into_iter()
                .map(|s| (s.candidate_id.clone(), s))
                .collect(),
            marks,
            problems,
            object_ids,
            index,
            mark_index: HashMap::new(),
            revision: 0,
            cache: Mutex::default(),
            writer: None,
            disk,
            undo: Vec::new(),
            redo: Vec::new(),
        };
        ws.index_marks();
        Ok(ws)
    }

    /// The project folder.
    pub fn root(&self) -> &Path {
        &self.project.root
    }

    /// Indices of the regions of image `image_id`.
    pub fn regions_of(&self, image_id: u64) -> Vec<usize> {
        self.index
            .regions_of_image
            .get(&image_id)
            .cloned()
            .unwrap_or_default()
    }

    /// Index of region `query_id`.
    pub fn region_index(&self, query_id: &str) -> Option<usize> {
        self.index.region_by_id.get(query_id).copied()
    }

    /// Indices of the candidates of `query_id`.
    pub fn candidates_of(&self, query_id: &str) -> Vec<usize> {
        self.index
            .candidates_of_query
            .get(query_id)
            .cloned()
            .unwrap_or_default()
    }

    /// Index of candidate `id`.
    pub fn candidate_index(&self, id: &str) -> Option<usize> {
        self.index.candidate_by_id.get(id).copied()
    }

    /// Counts every change of the records since the project was opened.
    pub fn revision(&self) -> u64 {
        self.revision
    }

    fn cache(&self) -> MutexGuard<'_, index::RankCache> {
        // A panic while the cache was held leaves nothing half-written
        // that matters: entries are inserted whole.
        self.cache.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Records changed: the ranking cache is stale.
    fn touched(&mut self) {
        self.revision += 1;
    }

    /// The region's ground-truth boxes (its objects), or an issue.
    pub fn region_gt(&self, region: &RegionRecord) -> Result<Vec<Bbox>, StageIssue> {
        pipeline::region_gt(region, &self.dataset, &self.object_ids)
    }

    /// Object index of annotation id `id`.
    pub fn object_index(&self, id: u64) -> Option<usize> {
        self.object_ids.get(&id).copied()
    }

    /// The marks of `query_id`.
    pub fn mark_of(&self, query_id: &str) -> Option<&MarkRecord> {
        // The index is rebuilt whenever the workspace changes the marks;
        // it is checked so that a caller who edited the public vector
        // directly still gets the right answer.
        match self
            .mark_index
            .get(query_id)
            .and_then(|&i| self.marks.get(i))
        {
            Some(m) if m.query_id == query_id => Some(m),
            _ => self.marks.iter().find(|m| m.query_id == query_id),
        }
    }

    /// Rebuilds the query → mark lookup.
    fn index_marks(&mut self) {
        self.mark_index = self
            .marks
            .iter()
            .enumerate()
            .map(|(i, m)| (m.query_id.clone(), i))
            .collect();
    }

    /// The candidates of `query_id` ranked best first at `lambda`, with the
    /// localization score recomputed at `match_iou` from the stored boxes,
    /// written and detected (no model runs: this is instant, and cached
    /// until the records, λ or the threshold change).
    pub fn ranking(&self, query_id: &str, lambda: f32, match_iou: f32) -> Arc<Vec<Ranked>> {
        if let Some(r) = self
            .cache()
            .at(self.revision, lambda, match_iou)
            .rankings
            .get(query_id)
        {
            return Arc::clone(r);
        }
        let ranked = Arc::new(self.rank(query_id, lambda, match_iou));
        self.cache()
            .at(self.revision, lambda, match_iou)
            .rankings
            .insert(query_id.to_string(), Arc::clone(&ranked));
        ranked
    }

    /// The localization score of a stored candidate's predictions (written
    /// boxes then the detector's, as `spr score` takes P) at `match_iou`.
    fn localization_at(
        &self,
        gt: &[Bbox],
        stored: Option<&ScoreRecord>,
        match_iou: f32,
    ) -> LocScore {
        let boxes: Vec<Bbox> = stored
            .map(|s| {
                let mut b = s.boxes.clone();
                b.extend(s.detections.iter().map(|d| d.bbox));
                b
            })
            .unwrap_or_default();
        scores::localization_score(
            gt,
            &boxes,
            self.project.config.scoring.localization,
            match_iou,
        )
    }

    fn rank(&self, query_id: &str, lambda: f32, match_iou: f32) -> Vec<Ranked> {
        let Some(region) = self.region_index(query_id).map(|i| &self.regions[i]) else {
            return Vec::new();
        };
        let gt = self.region_gt(region).unwrap_or_default();
        let mut out: Vec<Ranked> = self
            .candidates_of(query_id)
            .into_iter()
            .map(|ci| {
                let stored = self.scores.get(&self.candidates[ci].id);
                let loc = self.localization_at(&gt, stored, match_iou);
                let components = Components {
                    semantic: stored.and_then(|s| s.semantic),
                    localization: loc.score,
                };
                Ranked {
                    candidate: ci,
                    composite: components.composite(lambda),
                    components,
                    loc,
                }
            })
            .collect();
        out.sort_by(|a, b| b.composite.total_cmp(&a.composite));
        out
    }

    /// The effective chosen and rejected candidate indices of a query: the
    /// hand-set marks, else the automatic best and worst at `lambda`.
    pub fn chosen_rejected(
        &self,
        query_id: &str,
        lambda: f32,
        match_iou: f32,
    ) -> (Option<usize>, Option<usize>) {
        let ranking = self.ranking(query_id, lambda, match_iou);
        let comps: Vec<Components> = ranking.iter().map(|r| r.components).collect();
        let auto = scores::select_pair(&comps, lambda)
            .map(|(b, w)| (ranking[b].candidate, ranking[w].candidate));
        let mark = self.mark_of(query_id);
        let find = |id: Option<&String>| id.and_then(|id| self.candidate_index(id));
        (
            find(mark.and_then(|m| m.chosen.as_ref())).or(auto.map(|a| a.0)),
            find(mark.and_then(|m| m.rejected.as_ref())).or(auto.map(|a| a.1)),
        )
    }

    /// The refined text of a candidate (its boxes snapped to the annotations
    /// or removed), rendered in its own syntax and frame.
    pub fn refined_text(&self, candidate: usize, match_iou: f32) -> Option<String> {
        let c = &self.candidates[candidate];
        let region = &self.regions[self.region_index(&c.query_id)?];
        let gt = self.region_gt(region).ok()?;
        let image = self.dataset.image_index(region.image_id)?;
        let annotations: Vec<Bbox> = self
            .dataset
            .objects_of(image)
            .filter(|&o| !self.dataset.objects.crowd[o])
            .map(|o| self.dataset.objects.bbox[o])
            .collect();
        let parsed = pipeline::parse_candidate(c, region);
        let refined = scores::refine(&parsed.text, &gt, &annotations, match_iou);
        Some(render_in_frame(&refined, c, region))
    }

    /// The edit that moves box `box_index` of a candidate to `to` (image
    /// pixels), rewriting its text in its own syntax and frame.
    pub fn move_box_edit(&self, candidate: usize, box_index: usize, to: Bbox) -> Option<Edit> {
        let c = &self.candidates[candidate];
        let region = &self.regions[self.region_index(&c.query_id)?];
        let parsed = pipeline::parse_candidate(c, region);
        if box_index >= parsed.text.box_count() {
            return None;
        }
        let mut i = 0;
        let moved = parsed.text.replace_boxes(|b| {
            let out = if i == box_index { vec![to] } else { vec![b] };
            i += 1;
            out
        });
        Some(Edit::SetText {
            id: c.id.clone(),
            before: c.text.clone(),
            after: render_in_frame(&moved, c, region),
        })
    }

    /// Mean, over the image's regions, of the localization score of each
    /// region's best candidate (`None` when the image has no scored region).
    /// The browser sorts by it, worst first.
    pub fn image_localization(&self, image_id: u64, lambda: f32, match_iou: f32) -> Option<f32> {
        self.image_localizations(lambda, match_iou)
            .get(&image_id)
            .copied()
    }

    /// [`Workspace::image_localization`] of every image that has one,
    /// computed once per `(records, λ, IoU)`.
    pub fn image_localizations(&self, lambda: f32, match_iou: f32) -> Arc<HashMap<u64, f32>> {
        if let Some(m) = &self
            .cache()
            .at(self.revision, lambda, match_iou)
            .image_scores
        {
            return Arc::clone(m);
        }
        let mut sums: HashMap<u64, (f32, usize)> = HashMap::new();
        for r in &self.regions {
            if let Some(top) = self.ranking(&r.id, lambda, match_iou).first() {
                let e = sums.entry(r.image_id).or_default();
                e.0 += top.loc.score;
                e.1 += 1;
            }
        }
        let m: Arc<HashMap<u64, f32>> = Arc::new(
            sums.into_iter()
                .map(|(id, (s, n))| (id, s / n as f32))
                .collect(),
        );
        self.cache()
            .at(self.revision, lambda, match_iou)
            .image_scores = Some(Arc::clone(&m));
        m
    }

    /// A region drawn by hand on image index `image` (not yet applied: pass
    /// it to [`Workspace::apply`] as [`Edit::AddRegion`]).
    pub fn manual_region(&self, image: usize, region: Bbox) -> RegionRecord {
        let info = &self.dataset.images[image];
        let k = self
            .regions
            .iter()
            .filter(|r| r.image_id == info.id && r.id.contains("-m"))
            .count();
        let mut k = k;
        loop {
            let rec = pipeline::manual_region(
                &self.dataset,
                image,
                region,
                &self.project.config.dataset.preprocess(),
                &self.project.config.regions,
                k,
            );
            if self.region_index(&rec.id).is_none() {
                return rec;
            }
            k += 1;
        }
    }

    /// A new random SPR region on image index `image` that the project does
    /// not have yet, drawn with `seed`.
    pub fn random_region(&self, image: usize, seed: u64) -> Option<RegionRecord> {
        let pre = self.project.config.dataset.preprocess();
        let usable = self.dataset.usable_objects(image, &pre);
        let boxes: Vec<Bbox> = usable
            .iter()
            .map(|&o| self.dataset.objects.bbox[o])
            .collect();
        let info = &self.dataset.images[image];
        let cfg = RegionConfig {
            seed,
            per_image: 8,
            ..self.project.config.regions
        };
        let taken: Vec<Bbox> = self
            .regions_of(info.id)
            .iter()
            .map(|&r| self.regions[r].region)
            .collect();
        let q = sample_regions(&boxes, info.width as f32, info.height as f32, &cfg, info.id)
            .into_iter()
            .find(|q| !taken.contains(&q.region))?;
        let mut k = self.regions_of(info.id).len();
        while self.region_index(&format!("{}-{k}", info.id)).is_some() {
            k += 1;
        }
        Some(pipeline::random_region_record(
            &self.dataset,
            image,
            &usable,
            &q,
            k,
        ))
    }

    /// A new hand-written candidate for `query_id` (not yet applied).
    pub fn manual_candidate(&self, query_id: &str, text: &str) -> CandidateRecord {
        let mut k = 0;
        while self.candidate_index(&format!("{query_id}-h{k}")).is_some() {
            k += 1;
        }
        CandidateRecord {
            v: FORMAT_VERSION,
            id: format!("{query_id}-h{k}"),
            query_id: query_id.to_string(),
            source: "manual".into(),
            prompt: None,
            text: text.to_string(),
            format: self.project.config.model.format,
            frame: Frame::Crop,
            generation: None,
        }
    }

    /// The edit that deletes a hand-written candidate; model-written and
    /// imported ones are kept (they are data, not edits), with the reason.
    pub fn remove_candidate_edit(&self, candidate: usize) -> Result<Edit, String> {
        let c = self
            .candidates
            .get(candidate)
            .ok_or_else(|| "no such candidate".to_string())?;
        if c.source != "manual" {
            return Err(format!(
                "candidate {} comes from {:?}: only hand-written candidates can be deleted",
                c.id, c.source
            ));
        }
        Ok(Edit::RemoveCandidate(c.clone()))
    }

    /// The edit that deletes a region that has no candidates (drawn by
    /// hand, or sampled and found useless; undoable like every edit).
    pub fn remove_region_edit(&self, query_id: &str) -> Result<Edit, String> {
        let r = self
            .region_index(query_id)
            .map(|i| &self.regions[i])
            .ok_or_else(|| format!("no region {query_id}"))?;
        let n = self.candidates_of(query_id).len();
        if n > 0 {
            return Err(format!(
                "region {query_id} has {n} candidates: delete them first"
            ));
        }
        Ok(Edit::RemoveRegion(r.clone()))
    }

    /// The candidate id a query's hand mark of `kind` names, if any.
    pub fn hand_mark(&self, query_id: &str, kind: MarkKind) -> Option<&String> {
        let m = self.mark_of(query_id)?;
        match kind {
            MarkKind::Chosen => m.chosen.as_ref(),
            MarkKind::Rejected => m.rejected.as_ref(),
        }
    }

    /// The edit a click (or key) on a candidate's mark makes: set the hand
    /// mark of `kind` to `candidate_id`, or clear it when it already names
    /// that candidate.
    pub fn toggle_mark_edit(&self, query_id: &str, kind: MarkKind, candidate_id: &str) -> Edit {
        let on = self
            .hand_mark(query_id, kind)
            .is_some_and(|id| id == candidate_id);
        self.mark_edit(query_id, kind, (!on).then(|| candidate_id.to_string()))
    }

    /// The edit that sets (or, with `None`, clears) one mark of a query.
    pub fn mark_edit(&self, query_id: &str, kind: MarkKind, candidate: Option<String>) -> Edit {
        let before = self.mark_of(query_id).cloned();
        let mut after = before.clone().unwrap_or(MarkRecord {
            v: FORMAT_VERSION,
            query_id: query_id.to_string(),
            chosen: None,
            rejected: None,
        });
        match kind {
            MarkKind::Chosen => after.chosen = candidate,
            MarkKind::Rejected => after.rejected = candidate,
        }
        let after = (after.chosen.is_some() || after.rejected.is_some()).then_some(after);
        Edit::SetMark {
            query_id: query_id.to_string(),
            before,
            after,
        }
    }

    /// Apply an edit, record it for undo, and save the files it touches.
    pub fn apply(&mut self, edit: Edit) -> Result<(), ProjectError> {
        self.apply_raw(&edit)?;
        self.undo.push(edit);
        self.redo.clear();
        Ok(())
    }

    /// Undo the last edit; `false` when there is none.
    pub fn undo(&mut self) -> Result<bool, ProjectError> {
        let Some(edit) = self.undo.pop() else {
            return Ok(false);
        };
        match edit.inverse() {
            Inverse::RemoveRegion(id) => {
                self.regions.retain(|r| r.id != id);
                self.reindex();
                self.save(files::REGIONS)?;
            }
            Inverse::RemoveCandidate(id) => {
                self.candidates.retain(|c| c.id != id);
                self.scores.remove(&id);
                self.reindex();
                self.save(files::CANDIDATES)?;
                self.save(files::SCORES)?;
            }
            Inverse::Edit(e) => self.apply_raw(&e)?,
        }
        self.redo.push(edit);
        Ok(true)
    }

    /// Redo the last undone edit; `false` when there is none.
    pub fn redo(&mut self) -> Result<bool, ProjectError> {
        let Some(edit) = self.redo.pop() else {
            return Ok(false);
        };
        self.apply_raw(&edit)?;
        self.undo.push(edit);
        Ok(true)
    }

    /// Whether there is something to undo / redo.
    pub fn can_undo(&self) -> bool {
        !self.undo.is_empty()
    }

    /// See [`Workspace::can_undo`].
    pub fn can_redo(&self) -> bool {
        !self.redo.is_empty()
    }

    /// Rebuilds the lookups after records were removed or reloaded.
    fn reindex(&mut self) {
        self.index = index::Index::build(&self.regions, &self.candidates);
        self.index_marks();
        self.touched();
    }

    /// Shows `text` as candidate `id`'s text, re-scored, without saving it
    /// or recording an undo step: what typing does until the edit session
    /// ends, when the app applies one [`Edit::SetText`] from the text
    /// before the session to the last one (one undo step, one write).
    pub fn preview_text(&mut self, id: &str, text: &str) {
        if let Some(i) = self.candidate_index(id) {
            self.candidates[i].text = text.to_string();
            self.rescore(id);
        }
    }

    fn apply_raw(&mut self, edit: &Edit) -> Result<(), ProjectError> {
        self.touched();
        match edit {
            Edit::AddRegion(r) => {
                self.regions.push(r.clone());
                self.index.add_region(self.regions.len() - 1, r);
                self.save(files::REGIONS)
            }
            Edit::AddCandidate(c) => {
                self.candidates.push(c.clone());
                self.index.add_candidate(self.candidates.len() - 1, c);
                self.rescore(&c.id);
                self.save(files::CANDIDATES)?;
                self.save(files::SCORES)
            }
            Edit::RemoveRegion(r) => {
                self.regions.retain(|x| x.id != r.id);
                self.reindex();
                self.save(files::REGIONS)
            }
            Edit::RemoveCandidate(c) => {
                self.candidates.retain(|x| x.id != c.id);
                self.scores.remove(&c.id);
                self.reindex();
                self.save(files::CANDIDATES)?;
                self.save(files::SCORES)
            }
            Edit::SetText { id, after, .. } => {
                if let Some(i) = self.candidate_index(id) {
                    self.candidates[i].text = after.clone();
                    self.rescore(id);
                }
                self.save(files::CANDIDATES)?;
                self.save(files::SCORES)
            }
            Edit::SetMark {
                query_id, after, ..
            } => {
                self.marks.retain(|m| &m.query_id != query_id);
                if let Some(m) = after {
                    self.marks.push(m.clone());
                }
                self.index_marks();
                self.save(files::MARKS)
            }
        }
    }

    /// Recompute the localization components of one candidate. A changed
    /// text makes a stored semantic score stale, so it is dropped.
    fn rescore(&mut self, candidate_id: &str) {
        self.touched();
        let Some(ci) = self.candidate_index(candidate_id) else {
            return;
        };
        let c = &self.candidates[ci];
        let Some(region) = self.region_index(&c.query_id).map(|i| &self.regions[i]) else {
            return;
        };
        let (scored, _) = pipeline::score_candidates(
            &self.dataset,
            std::slice::from_ref(region),
            std::slice::from_ref(c),
            &self.project.config.scoring,
            crate::core::scorers::Scorers::none(),
            &|_| {},
        );
        match scored.into_iter().next() {
            Some(s) => {
                self.scores.insert(candidate_id.to_string(), s);
            }
            None => {
                self.scores.remove(candidate_id);
            }
        }
    }

    /// SPR pairs of the whole project at `lambda` and the IoU threshold
    /// `match_iou` (marks applied): the pairs the GUI shows at those
    /// settings, whatever threshold `spr score` stored its scores at.
    pub fn pairs(
        &self,
        lambda: f32,
        match_iou: f32,
    ) -> (Vec<PairRecord>, PairStats, Vec<StageIssue>) {
        let mut scoring = self.project.config.scoring.clone();
        scoring.lambda = lambda;
        scoring.match_iou = match_iou;
        let same_threshold = match_iou == self.project.config.scoring.match_iou;
        let scores: Vec<ScoreRecord> = self
            .candidates
            .iter()
            .enumerate()
            .filter_map(|(ci, c)| {
                let mut s = self.scores.get(&c.id)?.clone();
                if !same_threshold {
                    // The score the screen shows: the (cached) ranking's.
                    s.localization = self
                        .ranking(&c.query_id, lambda, match_iou)
                        .iter()
                        .find(|r| r.candidate == ci)?
                        .components
                        .localization;
                }
                Some(s)
            })
            .collect();
        pipeline::build_pairs(
            &self.dataset,
            &self.regions,
            &self.candidates,
            &scores,
            &self.marks,
            &scoring,
            self.project.config.model.format,
        )
    }

    /// Everything an export at `lambda` and `match_iou` needs, computed
    /// from memory; run it with [`ExportJob::run`] (off the UI thread if
    /// need be).
    pub fn export_job(&self, lambda: f32, match_iou: f32) -> ExportJob {
        let (pairs, _, issues) = self.pairs(lambda, match_iou);
        ExportJob {
            pairs,
            issues,
            pairs_path: self.project.path(files::PAIRS),
            image_root: self.project.image_root(),
            prompt: self.project.config.export.prompt.clone(),
            out_dir: self.project.path(files::EXPORT_DIR),
        }
    }
}

/// A prepared export: `pairs.jsonl` plus the TRL layout with crops.
#[derive(Clone, Debug)]
pub struct ExportJob {
    /// The pairs.
    pub pairs: Vec<PairRecord>,
    /// Records skipped while pairing.
    pub issues: Vec<StageIssue>,
    pairs_path: PathBuf,
    image_root: PathBuf,
    prompt: String,
    out_dir: PathBuf,
}

impl ExportJob {
    /// Write the files; returns the export folder, pairs written and every
    /// record skipped.
    pub fn run(self) -> Result<(PathBuf, usize, Vec<StageIssue>), ProjectError> {
        let _job = project::lock::job_lock(&self.out_dir, "export from the window")?;
        {
            let _lock = project::lock::write_lock(&self.pairs_path)?;
            project::write_jsonl(&self.pairs_path, &self.pairs)?;
        }
        let (records, more) = pipeline::export_trl(
            &self.pairs,
            &self.image_root,
            &self.prompt,
            &self.out_dir,
            &|_| {},
        )?;
        let mut issues = self.issues;
        issues.extend(more);
        Ok((self.out_dir, records.len(), issues))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn demo_copy() -> (tempfile::TempDir, PathBuf) {
        let tmp = tempfile::tempdir().unwrap();
        let dst = tmp.path().join("demo");
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("assets/demo");
        std::fs::create_dir_all(&dst).unwrap();
        for e in std::fs::read_dir(&src).unwrap() {
            let e = e.unwrap();
            if e.file_type().unwrap().is_file() {
                std::fs::copy(e.path(), dst.join(e.file_name())).unwrap();
            }
        }
        // Images are only read by export; link the folder.
        std::os::unix::fs::symlink(src.join("images"), dst.join("images")).unwrap();
        (tmp, dst)
    }

    #[test]
    fn edits_are_saved_and_undone() {
        let (_tmp, dir) = demo_copy();
        let mut ws = Workspace::open(&dir).unwrap();
        assert!(ws.problems.is_empty(), "{:?}", ws.problems);
        let n = ws.regions.len();
        let r = ws.manual_region(0, Bbox::new(10.0, 10.0, 200.0, 150.0));
        assert_eq!(r.source, project::RegionSource::Manual);
        ws.apply(Edit::AddRegion(r.clone())).unwrap();
        let on_disk = Workspace::open(&dir).unwrap();
        assert_eq!(on_disk.regions.len(), n + 1);
        assert_eq!(on_disk.regions[n], r);
        assert!(ws.undo().unwrap());
        assert_eq!(Workspace::open(&dir).unwrap().regions.len(), n);
        assert!(ws.redo().unwrap());
        assert_eq!(Workspace::open(&dir).unwrap().regions.len(), n + 1);

        // A hand-written candidate is scored at once.
        let q = ws.regions[0].id.clone();
        let c = ws.manual_candidate(&q, "nothing to see");
        ws.apply(Edit::AddCandidate(c.clone())).unwrap();
        assert_eq!(ws.scores[&c.id].localization, 0.0);
        // Editing its text re-scores it.
        let precise = ws.candidates[ws.candidates_of(&q)[0]].text.clone();
        ws.apply(Edit::SetText {
            id: c.id.clone(),
            before: c.text.clone(),
            after: precise,
        })
        .unwrap();
        assert!(ws.scores[&c.id].localization > 0.9);
        assert!(ws.undo().unwrap());
        assert_eq!(ws.scores[&c.id].localization, 0.0);
        assert_eq!(
            Workspace::open(&dir).unwrap().scores[&c.id].localization,
            0.0
        );
    }

    /// Waits for the background writer and reloads what changed.
    fn settle(ws: &mut Workspace) -> Vec<String> {
        while ws.pending_writes() > 0 {
            std::thread::sleep(std::time::Duration::from_millis(2));
        }
        assert!(ws.take_write_errors().is_empty());
        ws.reload_changed().unwrap()
    }

    #[test]
    fn another_processes_appends_survive_edits_and_are_reloaded() {
        let (_tmp, dir) = demo_copy();
        let mut ws = Workspace::open(&dir).unwrap();
        ws.write_in_background();
        assert!(settle(&mut ws).is_empty(), "nothing changed yet");
        let n = ws.candidates.len();
        let q = ws.regions[0].id.clone();
        // A terminal appends two candidates (as `spr generate` does) ...
        let theirs: Vec<CandidateRecord> = (0..2)
            .map(|k| CandidateRecord {
                id: format!("{q}-cli{k}"),
                source: "cli".into(),
                ..ws.manual_candidate(&q, "from a terminal")
            })
            .collect();
        let path = dir.join(files::CANDIDATES);
        project::append_jsonl(&path, &project::encode_jsonl(&path, &theirs).unwrap()).unwrap();
        // ... while the window, which has not seen them, edits a text and
        // adds a candidate of its own.
        let first = ws.candidates[0].clone();
        ws.apply(Edit::SetText {
            id: first.id.clone(),
            before: first.text.clone(),
            after: "edited in the window".into(),
        })
        .unwrap();
        let mine = ws.manual_candidate(&q, "written in the window");
        ws.apply(Edit::AddCandidate(mine.clone())).unwrap();
        let messages = settle(&mut ws);
        assert!(
            messages
                .iter()
                .any(|m| m.starts_with("candidates.jsonl changed on disk")),
            "{messages:?}"
        );
        // Nothing lost on disk, and the window shows it all.
        for ws in [&ws, &Workspace::open(&dir).unwrap()] {
            assert_eq!(ws.candidates.len(), n + 3);
            let text_of = |id: &str| ws.candidates[ws.candidate_index(id).unwrap()].text.clone();
            assert_eq!(text_of(&first.id), "edited in the window");
            assert_eq!(text_of(&mine.id), "written in the window");
            assert_eq!(text_of(&theirs[1].id), "from a terminal");
        }
        // Undo still works on the reloaded records, and keeps theirs.
        assert!(ws.undo().unwrap());
        assert!(ws.undo().unwrap());
        assert!(settle(&mut ws).is_empty(), "own saves are not reloads");
        let on_disk = Workspace::open(&dir).unwrap();
        assert_eq!(on_disk.candidates.len(), n + 2);
        assert_eq!(on_disk.candidates[0].text, first.text);
        // A whole rewrite by another process (as `spr score` does) is
        // picked up too.
        let scores_path = dir.join(files::SCORES);
        project::write_jsonl::<ScoreRecord>(&scores_path, &[]).unwrap();
        let messages = settle(&mut ws);
        assert_eq!(messages.len(), 1, "{messages:?}");
        assert!(
            messages[0].contains("scores.jsonl")
                && messages[0].contains(": reloaded, 0 records (were ")
        );
        assert!(ws.scores.is_empty());
    }

    #[test]
    fn marks_are_found_by_query_after_edits_undo_and_reload() {
        let (_tmp, dir) = demo_copy();
        let mut ws = Workspace::open(&dir).unwrap();
        let queries: Vec<String> = ws.regions.iter().take(4).map(|r| r.id.clone()).collect();
        for q in &queries {
            let c = ws.candidates[ws.candidates_of(q)[0]].id.clone();
            ws.apply(ws.mark_edit(q, MarkKind::Chosen, Some(c)))
                .unwrap();
        }
        // Clearing the first mark moves the others in the vector.
        ws.apply(ws.mark_edit(&queries[0], MarkKind::Chosen, None))
            .unwrap();
        assert!(ws.mark_of(&queries[0]).is_none());
        for q in &queries[1..] {
            assert_eq!(ws.mark_of(q).map(|m| m.query_id.as_str()), Some(q.as_str()));
        }
        assert!(ws.undo().unwrap());
        assert!(ws.mark_of(&queries[0]).is_some());
        // Another process rewrites the marks: the lookup follows the reload.
        let path = dir.join(files::MARKS);
        let kept: Vec<MarkRecord> = ws.marks.iter().rev().take(2).cloned().collect();
        project::write_jsonl(&path, &kept).unwrap();
        ws.reload_changed().unwrap();
        for m in &kept {
            assert_eq!(ws.mark_of(&m.query_id), Some(m));
        }
        assert_eq!(ws.marks.len(), 2);
        assert!(queries.iter().filter(|q| ws.mark_of(q).is_some()).count() == 2);
    }

    #[test]
    fn marks_override_the_automatic_pair() {
        let (_tmp, dir) = demo_copy();
        let mut ws = Workspace::open(&dir).unwrap();
        let q = ws.regions[0].id.clone();
        let (auto_c, auto_r) = ws.chosen_rejected(&q, 0.8, 0.5);
        let cands = ws.candidates_of(&q);
        let pick = cands[1];
        assert_ne!(Some(pick), auto_c);
        let e = ws.mark_edit(&q, MarkKind::Chosen, Some(ws.candidates[pick].id.clone()));
        ws.apply(e).unwrap();
        assert_eq!(ws.chosen_rejected(&q, 0.8, 0.5), (Some(pick), auto_r));
        let (pairs, stats, _) = ws.pairs(0.8, 0.5);
        assert_eq!(stats.manual, 1);
        let p = pairs.iter().find(|p| p.query_id == q).unwrap();
        assert!(p.manual);
        assert_eq!(p.chosen_id, ws.candidates[pick].id);
        assert_eq!(Workspace::open(&dir).unwrap().marks.len(), 1);
    }

    #[test]
    fn ranking_follows_the_threshold() {
        let (_tmp, dir) = demo_copy();
        let ws = Workspace::open(&dir).unwrap();
        let q = ws.regions[0].id.clone();
        let r5 = ws.ranking(&q, 0.8, 0.5);
        let r95 = ws.ranking(&q, 0.8, 0.95);
        assert_eq!(r5.len(), 6);
        // At IoU 0.95 the jittered candidate no longer matches anything.
        let jit = |r: &[Ranked]| {
            r.iter()
                .find(|x| ws.candidates[x.candidate].source.ends_with("jittered"))
                .unwrap()
                .loc
                .score
        };
        assert!(jit(&r5) > 0.3 && jit(&r95) < jit(&r5));
        // Ranked by localization alone (λ = 0), the best candidates are the
        // precise ones.
        assert!(
            ws.image_localization(ws.regions[0].image_id, 0.0, 0.5)
                .unwrap()
                > 0.9
        );
    }

    #[test]
    fn exported_pairs_follow_the_threshold_on_screen() {
        let (_tmp, dir) = demo_copy();
        let mut ws = Workspace::open(&dir).unwrap();
        assert_eq!(ws.project.config.scoring.match_iou, 0.5);
        // A hand-chosen jittered candidate: its score depends on the threshold.
        let q = ws.regions[0].id.clone();
        let jittered = ws
            .candidates_of(&q)
            .into_iter()
            .find(|&c| ws.candidates[c].source.ends_with("jittered"))
            .unwrap();
        let e = ws.mark_edit(
            &q,
            MarkKind::Chosen,
            Some(ws.candidates[jittered].id.clone()),
        );
        ws.apply(e).unwrap();
        // Pairs exported at a threshold are the pairs the screen shows at
        // it, with the scores the screen shows (not the stored ones).
        let mut rescored = 0;
        for iou in [0.5, 0.9] {
            let (pairs, _, _) = ws.pairs(0.0, iou);
            assert!(!pairs.is_empty());
            for p in &pairs {
                let (c, r) = ws.chosen_rejected(&p.query_id, 0.0, iou);
                assert_eq!(Some(&p.chosen_id), c.map(|c| &ws.candidates[c].id));
                assert_eq!(Some(&p.rejected_id), r.map(|r| &ws.candidates[r].id));
                let ranked = ws.ranking(&p.query_id, 0.0, iou);
                let shown = |id: &str| {
                    ranked
                        .iter()
                        .find(|x| ws.candidates[x.candidate].id == id)
                        .unwrap()
                        .components
                        .localization
                };
                assert_eq!(p.chosen_scores.localization, shown(&p.chosen_id));
                assert_eq!(p.rejected_scores.localization, shown(&p.rejected_id));
                rescored += usize::from(
                    p.chosen_scores.localization != ws.scores[&p.chosen_id].localization
                        || p.rejected_scores.localization != ws.scores[&p.rejected_id].localization,
                );
            }
        }
        assert!(rescored > 0, "no pair's scores moved with the threshold");
    }

    #[test]
    fn typing_is_one_undo_step_and_one_write() {
        let (_tmp, dir) = demo_copy();
        let mut ws = Workspace::open(&dir).unwrap();
        let q = ws.regions[0].id.clone();
        let ci = ws.candidates_of(&q)[0];
        let id = ws.candidates[ci].id.clone();
        let before = ws.candidates[ci].text.clone();
        let loc_before = ws.scores[&id].localization;
        let on_disk = std::fs::read_to_string(dir.join(files::CANDIDATES)).unwrap();
        let rev = ws.revision();
        // Keystrokes: previewed and re-scored, neither saved nor undoable.
        let mut typed = String::new();
        for ch in "no boxes here".chars() {
            typed.push(ch);
            ws.preview_text(&id, &typed);
        }
        assert!(ws.revision() > rev);
        assert_eq!(ws.scores[&id].localization, 0.0);
        assert!(loc_before > 0.0);
        assert!(!ws.can_undo());
        assert_eq!(
            std::fs::read_to_string(dir.join(files::CANDIDATES)).unwrap(),
            on_disk
        );
        // The session ends: one edit from the text before it.
        ws.apply(Edit::SetText {
            id: id.clone(),
            before: before.clone(),
            after: typed.clone(),
        })
        .unwrap();
        assert!(Workspace::open(&dir).unwrap().candidates[ci].text == typed);
        assert!(ws.undo().unwrap());
        assert!(!ws.can_undo());
        assert_eq!(ws.candidates[ci].text, before);
        assert_eq!(ws.scores[&id].localization, loc_before);
    }

    #[test]
    fn lookups_stay_in_step_with_edits_and_undo() {
        let (_tmp, dir) = demo_copy();
        let mut ws = Workspace::open(&dir).unwrap();
        let check = |ws: &Workspace| {
            for (i, r) in ws.regions.iter().enumerate() {
                assert_eq!(ws.region_index(&r.id), Some(i));
                assert!(ws.regions_of(r.image_id).contains(&i));
            }
            for (i, c) in ws.candidates.iter().enumerate() {
                assert_eq!(ws.candidate_index(&c.id), Some(i));
                assert!(ws.candidates_of(&c.query_id).contains(&i));
            }
            let n: usize = ws
                .regions
                .iter()
                .map(|r| r.image_id)
                .collect::<std::collections::HashSet<_>>()
                .iter()
                .map(|&id| ws.regions_of(id).len())
                .sum();
            assert_eq!(n, ws.regions.len());
        };
        check(&ws);
        let r = ws.manual_region(0, Bbox::new(10.0, 10.0, 200.0, 150.0));
        ws.apply(Edit::AddRegion(r.clone())).unwrap();
        let c = ws.manual_candidate(&r.id, "x");
        ws.apply(Edit::AddCandidate(c.clone())).unwrap();
        check(&ws);
        assert_eq!(ws.candidates_of(&r.id), vec![ws.candidates.len() - 1]);
        let ranked = ws.ranking(&r.id, 0.5, 0.5);
        assert_eq!(ranked.len(), 1);
        ws.undo().unwrap();
        ws.undo().unwrap();
        check(&ws);
        assert!(ws.region_index(&r.id).is_none() && ws.candidate_index(&c.id).is_none());
        // The cache was dropped with the records.
        assert!(ws.ranking(&r.id, 0.5, 0.5).is_empty());
    }
}
