//! Training in candle: preference objectives and response segmenters.
//!
//! - [`objectives`]: DPO (sigmoid), IPO, hinge, robust DPO, SFT and fDPO as
//!   pure functions of summed log-probs, with TRL's metric names, plus the
//!   helpers that turn logits into per-sequence / per-segment log-probs.
//! - [`contrastive`]: CLIP-style contrastive training (the tiny CLIP).
//! - [`detection`]: OWL-ViT-style detector training (the tiny OWLv2).
//! - [`data`]: preference pairs from TRL or project JSONL, tokenised,
//!   batched (chosen rows then rejected rows) in a resumable order.
//! - [`schedule`]: warmup + cosine learning rate and gradient clipping.
//! - segmenters for fDPO are pure text work: [`crate::core::segment`].
//! - [`trainer`]: the loop, run folders, checkpoints and exact resume.
//! - [`tune_allocator`]: malloc settings for a training process.

pub mod contrastive;
pub mod data;
pub mod detection;
pub mod objectives;
pub mod patches;
pub mod schedule;
pub mod trainer;

/// Sets glibc malloc up for a training process: blocks up to 32 MiB come
/// from the heap instead of fresh `mmap`s, up to 256 MiB of freed heap
/// stays mapped, and every thread allocates from the one main arena.
///
/// A training step allocates and frees the same few hundred activation
/// tensors (0.1–20 MB each) every step. With glibc's defaults many of them
/// are mapped and unmapped each time, and every new mapping is faulted in
/// and zeroed page by page: on the DESIGN §7 benchmark that was a quarter
/// of the step (2,300–2,500 vs 3,200 tokens/s) for the same peak RSS
/// (~245 MB). The threads of a row-parallel step
/// ([`trainer::Trainer::workers`]) each got an arena of their own, each
/// keeping its freed blocks: one arena lets a block one thread frees serve
/// the other's next allocation (measured on the shared TRL checkpoint, two
/// threads: 4,300–4,700 tokens/s at 355–392 MB with per-thread arenas,
/// 5,300–5,800 at 304 MB with one). Call it once, early, before any thread
/// starts, in a process that trains; elsewhere (other C libraries, other
/// systems) it does nothing.
pub fn tune_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes malloc's thresholds; it is called
    // before the training threads start and takes plain integers.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 256 << 20);
        libc::mallopt(libc::M_ARENA_MAX, 1);
    }
}
