//! `spr generate`: a model writes grounded region descriptions into a
//! project's `candidates.jsonl`.
//!
//! **Work.** For every region query (in `regions.jsonl` order), every
//! selected prompt template ([`crate::core::prompts`]) and every sample
//! `k < samples`, one sequence: the model sees the region's crop (the
//! region ×1.5, as SPR shows it) and the template filled for the region.
//! Its answer is kept exactly as written, in the crop frame
//! (`frame: "crop"`, in the project's box syntax); scoring maps its boxes
//! to the image through the crop ([`crate::core::pipeline::parse_candidate`]).
//! Every record carries the model, adapter, prompt id, sample index and
//! sampling settings ([`GenerationMeta`]).
//!
//! **Seeds.** A sequence samples from its own stream, seeded from the
//! configured seed, the query id, the prompt id and `k`
//! ([`sequence_seed`]), so its text does not depend on which batch or
//! shard it ran in.
//!
//! **Batches and shards.** Queries are grouped in fixed blocks of
//! `max(1, batch / (prompts × samples))` consecutive queries; a block's
//! sequences decode together (one crop encoding per query, shared by its
//! prompts and samples). `--shard I/N` takes the blocks whose index is
//! `I` modulo `N`, so a shard's batches are exactly the unsharded run's:
//! [`merge_shards`] then gives the very file the unsharded run writes.
//!
//! **Resume and Ctrl-C.** Records are appended block by block, each block
//! in one write, flushed and synced; a sequence whose (query, source,
//! prompt, sample) is already in the output (or in `candidates.jsonl`) is
//! not generated again. Ctrl-C abandons the block being decoded: the file
//! holds every finished block and nothing else. A half line left by a
//! killed process is cut off before appending.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize};
use std::time::Instant;

use super::decode::{self, DecodeJob, DecodePlan};
use super::{load_policy, model_label, InferError, Result};
use crate::core::dataset::Dataset;
use crate::core::imageio;
use crate::core::project::{
    self, files, CandidateRecord, Frame, GenerationMeta, Project, RegionRecord, FORMAT_VERSION,
};
use crate::core::prompts::{render_prompt, GenerateConfig, PromptTemplate, RegionObject};
use crate::core::rng::SplitMix64;
use crate::model::generation::FinishReason;
use crate::model::{LlavaBundle, ModelError, Sampling};

/// One shard of the work: blocks with index `index` modulo `count`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Shard {
    /// 0-based shard index.
    pub index: usize,
    /// Number of shards.
    pub count: usize,
}

impl std::str::FromStr for Shard {
    type Err = String;

    /// Parses `I/N` with `0 ≤ I < N`.
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        let (i, n) = s
            .split_once('/')
            .ok_or_else(|| format!("--shard {s:?}: expected I/N, e.g. 0/4"))?;
        let index: usize = i
            .trim()
            .parse()
            .map_err(|_| format!("--shard {s:?}: I is not a number"))?;
        let count: usize = n
            .trim()
            .parse()
            .map_err(|_| format!("--shard {s:?}: N is not a number"))?;
        if count == 0 || index >= count {
            return Err(format!("--shard {s:?}: need 0 ≤ I < N"));
        }
        Ok(Shard { index, count })
    }
}

impl Shard {
    /// The shard's default output file in a project:
    /// `candidates.shard-I-of-N.jsonl`.
    pub fn file_name(&self) -> String {
        format!("candidates.shard-{}-of-{}.jsonl", self.index, self.count)
    }
}

/// What to generate.
#[derive(Clone, Debug)]
pub struct GenerateOptions {
    /// Model folder or hub id.
    pub model: String,
    /// LoRA adapter (folder, run, or checkpoint).
    pub adapter: Option<PathBuf>,
    /// Prompts, samples and sampling (the project's `[generate]`, with
    /// command-line overrides).
    pub config: GenerateConfig,
    /// Sequences decoded together.
    pub batch: usize,
    /// Only this shard of the work.
    pub shard: Option<Shard>,
    /// Only the first `limit` queries.
    pub limit: Option<usize>,
    /// Only these queries (by id), e.g. the region selected in the GUI.
    pub queries: Option<Vec<String>>,
    /// The file appended to (default: `candidates.jsonl`, or the shard's
    /// file).
    pub out: Option<PathBuf>,
}

/// Progress of a generation, after each block.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct GenerateProgress {
    /// Sequences to generate in all (this shard, not yet present).
    pub total: usize,
    /// Sequences generated so far.
    pub done: usize,
    /// New tokens so far.
    pub tokens: usize,
    /// Seconds so far.
    pub seconds: f64,
}

/// What a generation did.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct GenerateSummary {
    /// The file written.
    pub out: PathBuf,
    /// Records appended.
    pub written: usize,
    /// Sequences skipped because their record was already there.
    pub already_present: usize,
    /// Queries skipped, each with its reason (unreadable image, unknown
    /// object), so the rest could still run.
    pub failed: Vec<String>,
    /// New tokens decoded.
    pub tokens: usize,
    /// Seconds spent decoding and encoding images.
    pub seconds: f64,
    /// Whether Ctrl-C (the stop flag) ended it early.
    pub interrupted: bool,
    /// The source label written in the records.
    pub source: String,
}

/// The sampling seed of one sequence: the configured seed mixed with the
/// query id, prompt id and sample index (FNV-1a over the text, then
/// SplitMix64).
pub fn sequence_seed(seed: u64, query_id: &str, prompt_id: &str, sample: usize) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in query_id
        .bytes()
        .chain([0u8])
        .chain(prompt_id.bytes())
        .chain([0u8])
        .chain((sample as u64).to_le_bytes())
    {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    SplitMix64::for_stream(seed, h).next_u64()
}

/// The id of a generated candidate.
pub fn candidate_id(query_id: &str, source: &str, prompt_id: &str, sample: usize) -> String {
    format!("{query_id}:{source}:{prompt_id}:{sample}")
}

/// (query, source, prompt, sample) of a generated record.
type Key = (String, String, String, usize);

fn key_of(c: &CandidateRecord) -> Option<Key> {
    c.generation.as_ref().map(|g| {
        (
            c.query_id.clone(),
            c.source.clone(),
            g.prompt_id.clone(),
            g.sample,
        )
    })
}

/// Keys of the generated records in the files that exist.
fn present_keys(paths: &[PathBuf]) -> Result<HashSet<Key>> {
    let mut keys = HashSet::new();
    for p in paths {
        if !p.is_file() {
            continue;
        }
        let (records, _) = project::read_jsonl::<CandidateRecord>(p)?;
        keys.extend(records.iter().filter_map(key_of));
    }
    Ok(keys)
}

/// The objects of a region as templates see them.
fn region_objects(
    region: &RegionRecord,
    ds: &Dataset,
    ids: &HashMap<u64, usize>,
) -> std::result::Result<Vec<RegionObject>, String> {
    region
        .objects
        .iter()
        .map(|id| {
            ids.get(id)
                .map(|&o| RegionObject {
                    name: ds.category_name(o).to_string(),
                    bbox: ds.objects.bbox[o],
                })
                .ok_or_else(|| {
                    format!("region {}: object id {id} is not in the dataset", region.id)
                })
        })
        .collect()
}

/// The sampling of sample `k` of (query, prompt).
fn sampling_for(
    cfg: &GenerateConfig,
    query: &str,
    prompt: &str,
    k: usize,
) -> (Sampling, Option<u64>) {
    if cfg.temperature == 0.0 {
        (Sampling::Greedy, None)
    } else {
        let seed = sequence_seed(cfg.seed, query, prompt, k);
        (
            Sampling::TopP {
                temperature: cfg.temperature,
                top_p: cfg.top_p,
                seed,
            },
            Some(seed),
        )
    }
}

/// Runs a generation into the project (see the module docs). `progress`
/// is called after every block.
pub fn generate(
    project: &Project,
    opts: &GenerateOptions,
    progress: &mut dyn FnMut(&GenerateProgress),
    stop: &AtomicBool,
) -> Result<GenerateSummary> {
    let cfg = &opts.config;
    cfg.validate().map_err(InferError::Config)?;
    if cfg.temperature == 0.0 && cfg.samples > 1 {
        return Err(InferError::Config(format!(
            "temperature 0 decodes greedily, so all {} samples of a prompt would be the same: \
             set samples = 1 or a temperature above 0",
            cfg.samples
        )));
    }
    if opts.batch == 0 {
        return Err(InferError::Config("--batch must be at least 1".into()));
    }
    let templates = cfg.selected().map_err(InferError::Config)?;
    let ds = project.load_dataset()?;
    let (mut regions, _) = project::read_jsonl::<RegionRecord>(&project.path(files::REGIONS))?;
    if let Some(q) = &opts.queries {
        regions.retain(|r| q.contains(&r.id));
    }
    regions.truncate(opts.limit.unwrap_or(usize::MAX));
    // Load (and check the adapter) before any work.
    let (bundle, adapter) = load_policy(&opts.model, opts.adapter.as_deref())?;
    let source = model_label(&opts.model, adapter.as_deref());
    let out = opts.out.clone().unwrap_or_else(|| match opts.shard {
        Some(s) => project.path(&s.file_name()),
        None => project.path(files::CANDIDATES),
    });
    // One generation per output file at a time: a second would compute
    // the same missing sequences and append them twice.
    let _job = project::lock::job_lock(&out, &format!("spr generate {}", project.root.display()))?;
    let mut seen_files = vec![out.clone()];
    let main = project.path(files::CANDIDATES);
    if main != out {
        seen_files.push(main);
    }
    let present = present_keys(&seen_files)?;
    let ids = crate::core::pipeline::object_ids(&ds);
    let per_query = templates.len() * cfg.samples;
    let block = (opts.batch / per_query).max(1);
    let blocks: Vec<&[RegionRecord]> = regions
        .chunks(block)
        .enumerate()
        .filter(|(i, _)| opts.shard.is_none_or(|s| i % s.count == s.index))
        .map(|(_, b)| b)
        .collect();
    let mut summary = GenerateSummary {
        out: out.clone(),
        source: source.clone(),
        ..Default::default()
    };
    let missing = |q: &RegionRecord, t: &PromptTemplate, k: usize| {
        !present.contains(&(q.id.clone(), source.clone(), t.id.clone(), k))
    };
    let mut state = GenerateProgress {
        total: blocks
            .iter()
            .flat_map(|b| b.iter())
            .map(|q| {
                templates
                    .iter()
                    .map(|t| (0..cfg.samples).filter(|&k| missing(q, t, k)).count())
                    .sum::<usize>()
            })
            .sum(),
        ..Default::default()
    };
    summary.already_present =
        blocks.iter().map(|b| b.len()).sum::<usize>() * per_query - state.total;
    let started = Instant::now();
    progress(&state);
    for block in blocks {
        let ctx = BlockContext {
            bundle: &bundle,
            ds: &ds,
            ids: &ids,
            project,
            templates: &templates,
            cfg,
            source: &source,
            model: &opts.model,
            adapter: adapter.as_deref(),
            batch: opts.batch,
        };
        let result = ctx.run(block, &missing, &mut summary, &mut state, stop);
        match result {
            Ok(records) => {
                project::append_jsonl(&out, &project::encode_jsonl(&out, &records)?)?;
                summary.written += records.len();
                state.done += records.len();
            }
            Err(InferError::Model(ModelError::Cancelled)) => {
                summary.interrupted = true;
                break;
            }
            Err(e) => return Err(e),
        }
        state.seconds = started.elapsed().as_secs_f64();
        progress(&state);
    }
    summary.tokens = state.tokens;
    summary.seconds = started.elapsed().as_secs_f64();
    Ok(summary)
}

/// What every block needs.
struct BlockContext<'a> {
    bundle: &'a LlavaBundle,
    ds: &'a Dataset,
    ids: &'a HashMap<u64, usize>,
    project: &'a Project,
    templates: &'a [PromptTemplate],
    cfg: &'a GenerateConfig,
    source: &'a str,
    model: &'a str,
    adapter: Option<&'a Path>,
    batch: usize,
}

impl BlockContext<'_> {
    /// Generates a block's missing sequences; records in (query, prompt,
    /// sample) order.
    fn run(
        &self,
        block: &[RegionRecord],
        missing: &dyn Fn(&RegionRecord, &PromptTemplate, usize) -> bool,
        summary: &mut GenerateSummary,
        state: &mut GenerateProgress,
        stop: &AtomicBool,
    ) -> Result<Vec<CandidateRecord>> {
        let format = self.project.config.model.format;
        let mut jobs = Vec::new();
        let mut meta = Vec::new();
        for q in block {
            let wanted: Vec<(&PromptTemplate, usize)> = self
                .templates
                .iter()
                .flat_map(|t| (0..self.cfg.samples).map(move |k| (t, k)))
                .filter(|(t, k)| missing(q, t, *k))
                .collect();
            if wanted.is_empty() {
                continue;
            }
            let objects = match region_objects(q, self.ds, self.ids) {
                Ok(o) => o,
                Err(e) => {
                    summary.failed.push(e);
                    continue;
                }
            };
            let path = self.project.image_root().join(&q.file_name);
            let rgb = match imageio::load_rgb(&path) {
                Ok(rgb) => rgb,
                Err(e) => {
                    summary.failed.push(format!("region {}: {e}", q.id));
                    continue;
                }
            };
            let features = decode::image_features(self.bundle, imageio::crop_rgb(&rgb, q.crop))?;
            for (t, k) in wanted {
                let prompt = render_prompt(t, &objects, q.crop, format);
                let (sampling, seed) = sampling_for(self.cfg, &q.id, &t.id, k);
                jobs.push(DecodeJob {
                    features: features.clone(),
                    prompt: prompt.clone(),
                    sampling,
                });
                meta.push((q, t, k, prompt, seed));
            }
        }
        let tokens = AtomicUsize::new(0);
        let plan = DecodePlan::new(self.bundle, self.batch, self.cfg.max_new_tokens);
        let result = decode::decode_all(self.bundle, &jobs, plan, stop, &tokens);
        state.tokens += tokens.into_inner();
        let answers = result?;
        Ok(meta
            .into_iter()
            .zip(answers)
            .map(|((q, t, k, prompt, seed), a)| CandidateRecord {
                v: FORMAT_VERSION,
                id: candidate_id(&q.id, self.source, &t.id, k),
                query_id: q.id.clone(),
                source: self.source.to_string(),
                prompt: Some(prompt),
                text: a.text,
                format,
                frame: Frame::Crop,
                generation: Some(GenerationMeta {
                    model: self.model.to_string(),
                    adapter: self.adapter.map(|p| p.display().to_string()),
                    prompt_id: t.id.clone(),
                    sample: k,
                    temperature: self.cfg.temperature,
                    top_p: (self.cfg.temperature > 0.0).then_some(self.cfg.top_p),
                    seed,
                    max_new_tokens: self.cfg.max_new_tokens,
                    finish: match a.finish {
                        FinishReason::Eos => "eos".into(),
                        FinishReason::Length => "length".into(),
                    },
                }),
            })
            .collect())
    }
}

/// What [`merge_shards`] did.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct MergeSummary {
    /// Shard files read.
    pub shards: Vec<PathBuf>,
    /// Records added to `candidates.jsonl`.
    pub added: usize,
    /// Records already there (an earlier merge), not added again.
    pub already_present: usize,
}

/// The shard files `candidates.shard-I-of-N.jsonl` in the project folder,
/// with their shard, by index.
pub fn find_shards(project: &Project) -> Result<Vec<(Shard, PathBuf)>> {
    let mut out = Vec::new();
    let dir = &project.root;
    let entries = std::fs::read_dir(dir).map_err(|e| project::ProjectError::io(dir, e))?;
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(rest) = name
            .strip_prefix("candidates.shard-")
            .and_then(|r| r.strip_suffix(".jsonl"))
        else {
            continue;
        };
        if let Some((i, n)) = rest.split_once("-of-") {
            if let Ok(s) = format!("{i}/{n}").parse::<Shard>() {
                out.push((s, e.path()));
            }
        }
    }
    out.sort_by_key(|(s, _)| (s.count, s.index));
    Ok(out)
}

/// Merges shard files into `candidates.jsonl`: the shards' records not
/// already there are appended in the unsharded run's order (query order of
/// `regions.jsonl`, then the `[generate]` prompt order, then sample), so
/// the result equals what one unsharded run would have written. Every
/// shard `0..N` must be present unless `allow_partial`.
pub fn merge_shards(
    project: &Project,
    shards: &[(Shard, PathBuf)],
    allow_partial: bool,
) -> Result<MergeSummary> {
    if shards.is_empty() {
        return Err(InferError::Config(format!(
            "{}: no candidates.shard-I-of-N.jsonl files to merge",
            project.root.display()
        )));
    }
    let count = shards[0].0.count;
    if shards.iter().any(|(s, _)| s.count != count) {
        return Err(InferError::Config(
            "the shard files come from runs with different N".into(),
        ));
    }
    let have: HashSet<usize> = shards.iter().map(|(s, _)| s.index).collect();
    let lacking: Vec<String> = (0..count)
        .filter(|i| !have.contains(i))
        .map(|i| format!("{i}/{count}"))
        .collect();
    if !lacking.is_empty() && !allow_partial {
        return Err(InferError::Config(format!(
            "shard(s) {} missing; run them, or merge anyway with --allow-partial",
            lacking.join(", ")
        )));
    }
    let main = project.path(files::CANDIDATES);
    // Read and rewrite under the write lock: nothing appended meanwhile
    // (by a generation or the GUI) is lost.
    let _lock = project::lock::write_lock(&main)?;
    let (mut base, bad) = if main.is_file() {
        project::read_jsonl::<CandidateRecord>(&main)?
    } else {
        (Vec::new(), Vec::new())
    };
    if let Some(e) = bad.first() {
        return Err(InferError::Config(format!(
            "{e}: fix or remove the bad line before merging (the merge rewrites the file)"
        )));
    }
    let (regions, _) = project::read_jsonl::<RegionRecord>(&project.path(files::REGIONS))?;
    let query_order: HashMap<&str, usize> = regions
        .iter()
        .enumerate()
        .map(|(i, r)| (r.id.as_str(), i))
        .collect();
    let prompt_order: HashMap<String, usize> = project
        .config
        .generate
        .selected()
        .unwrap_or_default()
        .into_iter()
        .enumerate()
        .map(|(i, t)| (t.id, i))
        .collect();
    let ids: HashSet<String> = base.iter().map(|c| c.id.clone()).collect();
    let mut added = Vec::new();
    let mut already_present = 0;
    for (_, path) in shards {
        let (records, bad) = project::read_jsonl::<CandidateRecord>(path)?;
        if let Some(e) = bad.first() {
            return Err(InferError::Config(format!("{e}: bad line in a shard file")));
        }
        for r in records {
            if ids.contains(&r.id) {
                already_present += 1;
            } else {
                added.push(r);
            }
        }
    }
    added.sort_by_key(|c| {
        let g = c.generation.as_ref();
        (
            query_order
                .get(c.query_id.as_str())
                .copied()
                .unwrap_or(usize::MAX),
            g.and_then(|g| prompt_order.get(&g.prompt_id).copied())
                .unwrap_or(usize::MAX),
            g.map_or(0, |g| g.sample),
            c.source.clone(),
            c.id.clone(),
        )
    });
    let n = added.len();
    base.extend(added);
    project::write_jsonl(&main, &base)?;
    Ok(MergeSummary {
        shards: shards.iter().map(|(_, p)| p.clone()).collect(),
        added: n,
        already_present,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shards_parse_and_name_their_files() {
        let s: Shard = "1/4".parse().unwrap();
        assert_eq!(s, Shard { index: 1, count: 4 });
        assert_eq!(s.file_name(), "candidates.shard-1-of-4.jsonl");
        assert!("4/4".parse::<Shard>().is_err());
        assert!("x".parse::<Shard>().is_err());
        assert!("0/0".parse::<Shard>().is_err());
    }

    #[test]
    fn sequence_seeds_differ_by_every_part() {
        let a = sequence_seed(0, "1-0", "describe", 0);
        assert_eq!(a, sequence_seed(0, "1-0", "describe", 0));
        assert_ne!(a, sequence_seed(1, "1-0", "describe", 0));
        assert_ne!(a, sequence_seed(0, "1-1", "describe", 0));
        assert_ne!(a, sequence_seed(0, "1-0", "layout", 0));
        assert_ne!(a, sequence_seed(0, "1-0", "describe", 1));
    }
}
