//! Training in candle: preference objectives and response segmenters.
//!
//! - [`objectives`]: DPO (sigmoid), IPO, hinge, robust DPO, SFT and fDPO as
//!   pure functions of summed log-probs, with TRL's metric names, plus the
//!   helpers that turn logits into per-sequence / per-segment log-probs.
//! - [`segment`]: pluggable segmenters that give every response token a
//!   segment id (description vs reasoning, text vs box) for fDPO.

pub mod objectives;
pub mod segment;
