//! Training in candle: preference objectives and response segmenters.
//!
//! - [`objectives`]: DPO (sigmoid), IPO, hinge, robust DPO, SFT and fDPO as
//!   pure functions of summed log-probs, with TRL's metric names, plus the
//!   helpers that turn logits into per-sequence / per-segment log-probs.
//! - [`data`]: preference pairs from TRL or project JSONL, tokenised,
//!   batched (chosen rows then rejected rows) in a resumable order.
//! - [`schedule`]: warmup + cosine learning rate and gradient clipping.
//! - [`segment`]: pluggable segmenters that give every response token a
//!   segment id (description vs reasoning, text vs box) for fDPO.

pub mod data;
pub mod objectives;
pub mod schedule;
pub mod segment;
pub mod trainer;
