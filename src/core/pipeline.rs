//! The SPR pipeline stages over project records: regions → scores → pairs
//! → export. The CLI and the GUI both call these functions; neither holds
//! pipeline logic of its own.
//!
//! Each stage takes the records of the previous one and returns new records
//! plus [`StageIssue`]s for records it had to skip (a candidate whose query
//! is unknown, a region whose objects are no longer in the dataset, …), so a
//! single bad record never stops a stage.

use std::collections::HashMap;
use std::path::Path;

use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::core::dataset::{Dataset, Preprocess};
use crate::core::geometry::Bbox;
use crate::core::grounded::{self, BoxFormat, Parsed};
use crate::core::imageio;
use crate::core::project::{
    CandidateRecord, Frame, MarkRecord, PairRecord, RegionRecord, RegionSource, ScoreRecord,
    ScoringConfig, FORMAT_VERSION,
};
use crate::core::regions::{sample_regions, RegionConfig, RegionQuery};
use crate::core::scorers::{Scorers, SemanticParts};
use crate::core::scores::{self, Components};

/// A record a stage skipped, and why.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, thiserror::Error)]
#[error("{record}: {message}")]
pub struct StageIssue {
    /// The record, e.g. `candidate 12-0-3`.
    pub record: String,
    /// What is wrong.
    pub message: String,
}

fn issue(record: String, message: impl Into<String>) -> StageIssue {
    StageIssue {
        record,
        message: message.into(),
    }
}

/// Annotation id → object index, built once per stage.
pub fn object_ids(ds: &Dataset) -> HashMap<u64, usize> {
    ds.objects
        .id
        .iter()
        .enumerate()
        .map(|(i, &id)| (id, i))
        .collect()
}

/// SPR region queries for every object-rich image of `ds`, in image order.
/// `progress` is called with the number of images done since the last call.
pub fn build_regions(
    ds: &Dataset,
    pre: &Preprocess,
    cfg: &RegionConfig,
    progress: &(dyn Fn(u64) + Sync),
) -> Vec<RegionRecord> {
    let images = ds.object_rich_images(pre);
    images
        .par_iter()
        .map(|&img| {
            let info = &ds.images[img];
            let usable = ds.usable_objects(img, pre);
            let boxes: Vec<Bbox> = usable.iter().map(|&o| ds.objects.bbox[o]).collect();
            let queries =
                sample_regions(&boxes, info.width as f32, info.height as f32, cfg, info.id);
            progress(1);
            queries
                .into_iter()
                .enumerate()
                .map(|(k, q)| random_region_record(ds, img, &usable, &q, k))
                .collect::<Vec<_>>()
        })
        .flatten()
        .collect()
}

/// The record of random query `q` on image index `image`, numbered `k`;
/// `usable` maps the query's box indices to object indices.
pub fn random_region_record(
    ds: &Dataset,
    image: usize,
    usable: &[usize],
    q: &RegionQuery,
    k: usize,
) -> RegionRecord {
    let info = &ds.images[image];
    RegionRecord {
        v: FORMAT_VERSION,
        id: format!("{}-{k}", info.id),
        image_id: info.id,
        file_name: info.file_name.clone(),
        width: info.width,
        height: info.height,
        region: q.region,
        crop: q.crop,
        seed_object: Some(ds.objects.id[usable[q.seed]]),
        objects: q
            .objects
            .iter()
            .map(|&i| ds.objects.id[usable[i]])
            .collect(),
        source: RegionSource::Random,
    }
}

/// A region drawn by hand: its objects are the usable objects with at least
/// `cfg.containment` of their area inside, its crop the region scaled by
/// `cfg.crop_scale`. `k` numbers the manual regions of the image.
pub fn manual_region(
    ds: &Dataset,
    image: usize,
    region: Bbox,
    pre: &Preprocess,
    cfg: &RegionConfig,
    k: usize,
) -> RegionRecord {
    let info = &ds.images[image];
    let (w, h) = (info.width as f32, info.height as f32);
    let region = region.clamp_to(w, h);
    let objects = ds
        .usable_objects(image, pre)
        .into_iter()
        .filter(|&o| ds.objects.bbox[o].fraction_inside(region) >= cfg.containment)
        .map(|o| ds.objects.id[o])
        .collect();
    RegionRecord {
        v: FORMAT_VERSION,
        id: format!("{}-m{k}", info.id),
        image_id: info.id,
        file_name: info.file_name.clone(),
        width: info.width,
        height: info.height,
        region,
        crop: region.expand(cfg.crop_scale).clamp_to(w, h),
        seed_object: None,
        objects,
        source: RegionSource::Manual,
    }
}

/// Parse a candidate's text and map its boxes to image pixels.
pub fn parse_candidate(c: &CandidateRecord, region: &RegionRecord) -> Parsed {
    match c.frame {
        Frame::Crop => {
            let crop = region.crop;
            let mut p = grounded::parse(&c.text, c.format, crop.width(), crop.height());
            p.text = p.text.image_from_crop(crop);
            p
        }
        Frame::Image => {
            grounded::parse(&c.text, c.format, region.width as f32, region.height as f32)
        }
    }
}

/// The region's ground-truth boxes (its objects), or an issue naming the
/// first object id that is not in the dataset.
pub fn region_gt(
    region: &RegionRecord,
    ds: &Dataset,
    ids: &HashMap<u64, usize>,
) -> Result<Vec<Bbox>, StageIssue> {
    region
        .objects
        .iter()
        .map(|id| {
            ids.get(id).map(|&o| ds.objects.bbox[o]).ok_or_else(|| {
                issue(
                    format!("region {}", region.id),
                    format!("object id {id} is not in the dataset"),
                )
            })
        })
        .collect()
}

/// Score components of every candidate whose query is known, in candidate
/// order: the localization score (written boxes plus, with a detector, the
/// detector's boxes for the description's phrases) and, with a semantic
/// scorer, the semantic score. The scorers see one region at a time with
/// all of its candidates, so each region's images are encoded once. A
/// region the scorers cannot handle (its image is missing, …) has its
/// candidates skipped with the reason; the others are scored.
pub fn score_candidates(
    ds: &Dataset,
    regions: &[RegionRecord],
    candidates: &[CandidateRecord],
    scoring: &ScoringConfig,
    scorers: Scorers,
    progress: &(dyn Fn(u64) + Sync),
) -> (Vec<ScoreRecord>, Vec<StageIssue>) {
    let ids = object_ids(ds);
    let by_id: HashMap<&str, &RegionRecord> = regions.iter().map(|r| (r.id.as_str(), r)).collect();
    // Candidates grouped by query, in order of first appearance.
    let mut groups: Vec<(&str, Vec<usize>)> = Vec::new();
    let mut group_of: HashMap<&str, usize> = HashMap::new();
    for (i, c) in candidates.iter().enumerate() {
        let g = *group_of.entry(c.query_id.as_str()).or_insert_with(|| {
            groups.push((c.query_id.as_str(), Vec::new()));
            groups.len() - 1
        });
        groups[g].1.push(i);
    }
    let mut out: Vec<Option<ScoreRecord>> = vec![None; candidates.len()];
    let mut issues: Vec<(usize, StageIssue)> = Vec::new();
    let skip_all = |issues: &mut Vec<(usize, StageIssue)>, idxs: &[usize], why: &str| {
        for &i in idxs {
            issues.push((
                i,
                issue(format!("candidate {}", candidates[i].id), why.to_string()),
            ));
        }
    };
    // Regions that can be scored, with their ground truth and parses.
    let mut work = Vec::with_capacity(groups.len());
    for (query, idxs) in &groups {
        let Some(region) = by_id.get(query) else {
            skip_all(
                &mut issues,
                idxs,
                &format!("query {query} is not in regions.jsonl"),
            );
            progress(idxs.len() as u64);
            continue;
        };
        match region_gt(region, ds, &ids) {
            Ok(gt) => {
                let parsed: Vec<Parsed> = idxs
                    .iter()
                    .map(|&i| parse_candidate(&candidates[i], region))
                    .collect();
                work.push((*region, idxs, gt, parsed));
            }
            Err(e) => {
                skip_all(&mut issues, idxs, &e.to_string());
                progress(idxs.len() as u64);
            }
        }
    }
    // The semantic scorer sees every region at once (it may use the cores).
    let semantic: Vec<Option<Result<Vec<SemanticParts>, String>>> = match scorers.semantic.name() {
        None => vec![None; work.len()],
        Some(_) => {
            let texts: Vec<(&RegionRecord, Vec<String>)> = work
                .iter()
                .map(|(r, _, _, parsed)| (*r, parsed.iter().map(|p| p.text.plain()).collect()))
                .collect();
            scorers
                .semantic
                .score_regions(&texts)
                .into_iter()
                .map(Some)
                .collect()
        }
    };
    // The phrases each candidate mentions: the detector's queries.
    let phrases: Vec<Vec<Vec<String>>> = work
        .iter()
        .map(|(_, _, _, parsed)| {
            parsed
                .iter()
                .map(|p| {
                    p.text
                        .objects()
                        .iter()
                        .map(|(ph, _)| ph.to_string())
                        .collect()
                })
                .collect()
        })
        .collect();
    let detector = scorers.detector.name();
    let detected: Vec<Option<Result<Vec<Vec<_>>, String>>> = match detector {
        None => vec![None; work.len()],
        Some(_) => {
            let queries: Vec<(&RegionRecord, Vec<Vec<String>>)> = work
                .iter()
                .zip(&phrases)
                .map(|((r, ..), p)| (*r, p.clone()))
                .collect();
            scorers
                .detector
                .detect_regions(&queries)
                .into_iter()
                .map(Some)
                .collect()
        }
    };
    for ((((_, idxs, gt, parsed), semantic), detections), phrases) in
        work.into_iter().zip(semantic).zip(detected).zip(phrases)
    {
        progress(idxs.len() as u64);
        let semantic = match semantic {
            None => None,
            Some(Ok(parts)) => Some(parts),
            Some(Err(e)) => {
                skip_all(&mut issues, idxs, &format!("semantic score: {e}"));
                continue;
            }
        };
        let detections = match detections {
            None => vec![Vec::new(); idxs.len()],
            Some(Ok(d)) => d,
            Some(Err(e)) => {
                skip_all(&mut issues, idxs, &format!("detector: {e}"));
                continue;
            }
        };
        for (k, &i) in idxs.iter().enumerate() {
            let c = &candidates[i];
            let p = &parsed[k];
            let mut notes = Vec::new();
            if detector.is_some() && phrases[k].is_empty() {
                notes.push("detector skipped: the description names no phrase".to_string());
            }
            let found = detections.get(k).cloned().unwrap_or_default();
            let boxes = p.text.boxes();
            let mut preds = boxes.clone();
            preds.extend(found.iter().map(|d| d.bbox));
            let loc =
                scores::localization_score(&gt, &preds, scoring.localization, scoring.match_iou);
            let parts = semantic.as_ref().and_then(|s| s.get(k).copied());
            if let Some(n) = parts.map(|p| p.chunks).filter(|&n| n > 1) {
                notes.push(format!(
                    "text longer than the text tower's context: embedded in {n} pieces, averaged"
                ));
            }
            out[i] = Some(ScoreRecord {
                v: FORMAT_VERSION,
                candidate_id: c.id.clone(),
                query_id: c.query_id.clone(),
                semantic: parts.map(|p| p.score()),
                semantic_parts: parts,
                semantic_model: parts.and(scorers.semantic.name().map(str::to_string)),
                localization: loc.score,
                localization_variant: scoring.localization,
                detector: detector.clone().unwrap_or_else(|| "none".into()),
                boxes,
                detections: found,
                matches: loc.matches,
                unmatched_preds: loc.unmatched_preds,
                parse_issues: p.issues.clone(),
                notes,
            });
        }
    }
    issues.sort_by_key(|(i, _)| *i);
    (
        out.into_iter().flatten().collect(),
        issues.into_iter().map(|(_, e)| e).collect(),
    )
}

/// Counts from [`build_pairs`].
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct PairStats {
    /// Queries seen.
    pub queries: usize,
    /// Pairs made.
    pub pairs: usize,
    /// Queries with fewer than two scored candidates.
    pub too_few_candidates: usize,
    /// Queries whose best and worst candidates tie.
    pub ties: usize,
    /// Pairs ranked by localization alone (semantic score missing).
    pub semantic_missing: usize,
    /// Pairs with a chosen or rejected candidate marked by hand.
    pub manual: usize,
}

/// SPR pairs: per query, the best candidate by composite (refined) vs the
/// worst. `format` is the syntax the pair texts are written in.
pub fn build_pairs(
    ds: &Dataset,
    regions: &[RegionRecord],
    candidates: &[CandidateRecord],
    scores_in: &[ScoreRecord],
    marks: &[MarkRecord],
    scoring: &ScoringConfig,
    format: BoxFormat,
) -> (Vec<PairRecord>, PairStats, Vec<StageIssue>) {
    let ids = object_ids(ds);
    // Image id → index once: `Dataset::image_index` scans per call.
    let image_ids: HashMap<u64, usize> = ds
        .images
        .iter()
        .enumerate()
        .map(|(i, info)| (info.id, i))
        .collect();
    let mark_of: HashMap<&str, &MarkRecord> =
        marks.iter().map(|m| (m.query_id.as_str(), m)).collect();
    let score_of: HashMap<&str, &ScoreRecord> = scores_in
        .iter()
        .map(|s| (s.candidate_id.as_str(), s))
        .collect();
    let mut by_query: HashMap<&str, Vec<(&CandidateRecord, &ScoreRecord)>> = HashMap::new();
    for c in candidates {
        if let Some(s) = score_of.get(c.id.as_str()) {
            by_query
                .entry(c.query_id.as_str())
                .or_default()
                .push((c, s));
        }
    }
    let mut stats = PairStats::default();
    let mut pairs = Vec::new();
    let mut issues = Vec::new();
    for region in regions {
        stats.queries += 1;
        let cands = by_query
            .get(region.id.as_str())
            .map(Vec::as_slice)
            .unwrap_or(&[]);
        let comps: Vec<Components> = cands.iter().map(|(_, s)| s.components()).collect();
        if comps.len() < 2 {
            stats.too_few_candidates += 1;
            continue;
        }
        let auto = scores::select_pair(&comps, scoring.lambda);
        let mark = mark_of.get(region.id.as_str());
        let marked =
            |id: Option<&String>| id.and_then(|id| cands.iter().position(|(c, _)| &c.id == id));
        let best = marked(mark.and_then(|m| m.chosen.as_ref())).or(auto.map(|a| a.0));
        let worst = marked(mark.and_then(|m| m.rejected.as_ref())).or(auto.map(|a| a.1));
        let (Some(best), Some(worst)) = (best, worst) else {
            stats.ties += 1;
            continue;
        };
        if best == worst {
            issues.push(issue(
                format!("query {}", region.id),
                "the same candidate is marked chosen and rejected",
            ));
            continue;
        }
        let manual = mark.is_some_and(|m| m.chosen.is_some() || m.rejected.is_some());
        stats.manual += usize::from(manual);
        let gt = match region_gt(region, ds, &ids) {
            Ok(gt) => gt,
            Err(e) => {
                issues.push(e);
                continue;
            }
        };
        let Some(&image) = image_ids.get(&region.image_id) else {
            issues.push(issue(
                format!("region {}", region.id),
                format!("image id {} is not in the dataset", region.image_id),
            ));
            continue;
        };
        let annotations: Vec<Bbox> = ds
            .objects_of(image)
            .filter(|&o| !ds.objects.crowd[o])
            .map(|o| ds.objects.bbox[o])
            .collect();
        let (chosen, rejected) = (cands[best].0, cands[worst].0);
        let parsed = parse_candidate(chosen, region);
        let refined = scores::refine(&parsed.text, &gt, &annotations, scoring.match_iou);
        // The refined text keeps its phrases, so the detector's boxes for
        // them stay in P.
        let mut refined_preds = refined.boxes();
        refined_preds.extend(cands[best].1.detections.iter().map(|d| d.bbox));
        let refined_loc = scores::localization_score(
            &gt,
            &refined_preds,
            scoring.localization,
            scoring.match_iou,
        );
        let crop = region.crop;
        let in_crop = |c: &CandidateRecord| -> String {
            if c.frame == Frame::Crop && c.format == format {
                c.text.clone()
            } else {
                let t = parse_candidate(c, region).text.crop_from_image(crop);
                grounded::render(&t, format, crop.width(), crop.height())
            }
        };
        let semantic_missing = comps[best].semantic.is_none() || comps[worst].semantic.is_none();
        stats.semantic_missing += usize::from(semantic_missing);
        stats.pairs += 1;
        pairs.push(PairRecord {
            v: FORMAT_VERSION,
            query_id: region.id.clone(),
            file_name: region.file_name.clone(),
            crop,
            lambda: scoring.lambda,
            chosen_id: chosen.id.clone(),
            rejected_id: rejected.id.clone(),
            chosen: grounded::render(
                &refined.crop_from_image(crop),
                format,
                crop.width(),
                crop.height(),
            ),
            chosen_original: in_crop(chosen),
            rejected: in_crop(rejected),
            chosen_scores: comps[best],
            rejected_scores: comps[worst],
            chosen_refined_localization: refined_loc.score,
            semantic_missing,
            manual,
            format,
        });
    }
    (pairs, stats, issues)
}

/// One message of a TRL conversational record.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TrlMessage {
    /// `user` or `assistant`.
    pub role: String,
    /// Content parts.
    pub content: Vec<TrlContent>,
}

/// One content part: `{"type": "image"}` or `{"type": "text", "text": …}`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TrlContent {
    /// `image` or `text`.
    #[serde(rename = "type")]
    pub kind: String,
    /// The text of a text part.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
}

/// A pair in TRL's vision DPO layout (conversational `prompt` / `chosen` /
/// `rejected` plus `images`), as `DPOTrainer` reads it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TrlRecord {
    /// Image paths, relative to the export file.
    pub images: Vec<String>,
    /// The user turn: the image, then the prompt.
    pub prompt: Vec<TrlMessage>,
    /// The preferred assistant turn.
    pub chosen: Vec<TrlMessage>,
    /// The dispreferred assistant turn.
    pub rejected: Vec<TrlMessage>,
}

/// A supervised example in TRL's prompt–completion vision layout
/// (`SFTTrainer`'s conversational `prompt` / `completion` plus `images`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TrlSftRecord {
    /// Image paths, relative to the file.
    pub images: Vec<String>,
    /// The user turn: the image, then the prompt.
    pub prompt: Vec<TrlMessage>,
    /// The assistant turn to learn.
    pub completion: Vec<TrlMessage>,
}

fn text_message(role: &str, text: &str) -> TrlMessage {
    TrlMessage {
        role: role.into(),
        content: vec![TrlContent {
            kind: "text".into(),
            text: Some(text.into()),
        }],
    }
}

/// The user turn of a one-image record: an image part, then `prompt`.
pub fn trl_user_turn(prompt: &str) -> TrlMessage {
    let mut user = text_message("user", prompt);
    user.content.insert(
        0,
        TrlContent {
            kind: "image".into(),
            text: None,
        },
    );
    user
}

/// An assistant turn holding `text`.
pub fn trl_assistant_turn(text: &str) -> TrlMessage {
    text_message("assistant", text)
}

/// The TRL record of a pair whose crop image is at `image` (relative path).
pub fn trl_record(pair: &PairRecord, prompt: &str, image: String) -> TrlRecord {
    TrlRecord {
        images: vec![image],
        prompt: vec![trl_user_turn(prompt)],
        chosen: vec![trl_assistant_turn(&pair.chosen)],
        rejected: vec![trl_assistant_turn(&pair.rejected)],
    }
}

/// Export pairs in TRL's layout to `out_dir/trl_pairs.jsonl`, writing each
/// pair's crop to `out_dir/crops/<query id>.png`. Pairs whose image cannot
/// be read are skipped with an issue. Returns the records written.
pub fn export_trl(
    pairs: &[PairRecord],
    image_root: &Path,
    prompt: &str,
    out_dir: &Path,
    progress: &(dyn Fn(u64) + Sync),
) -> Result<(Vec<TrlRecord>, Vec<StageIssue>), crate::core::project::ProjectError> {
    let results: Vec<Result<TrlRecord, StageIssue>> = pairs
        .par_iter()
        .map(|p| {
            let rel = format!("crops/{}.png", sanitize(&p.query_id));
            let crop = imageio::load_rgb(&image_root.join(&p.file_name))
                .map(|img| imageio::crop_rgb(&img, p.crop))
                .and_then(|c| imageio::save_png(&c, &out_dir.join(&rel)));
            progress(1);
            crop.map(|()| trl_record(p, prompt, rel))
                .map_err(|e| issue(format!("pair {}", p.query_id), e.to_string()))
        })
        .collect();
    let mut records = Vec::new();
    let mut issues = Vec::new();
    for r in results {
        match r {
            Ok(r) => records.push(r),
            Err(e) => issues.push(e),
        }
    }
    crate::core::project::write_jsonl(
        &out_dir.join(crate::core::project::files::TRL_PAIRS),
        &records,
    )?;
    Ok((records, issues))
}

/// A query id made safe as a file name.
fn sanitize(id: &str) -> String {
    id.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect()
}
