//! SPR Workbench: spatial preference data and preference training for
//! grounding multimodal LLMs.
//!
//! Layers, one way only:
//! - [`core`]: the pure pipeline (geometry, datasets, region queries,
//!   grounded text, scores, pairs, REC metrics, project files). No GUI, no
//!   tensor library.
//! - [`demo`]: the synthetic demo-project generator, on top of the core.
//! - [`bench`]: benchmark drivers that print figures (never timed tests).
//! - [`cli`]: the `spr` command line, on top of all of the above.

pub mod bench;
pub mod cli;
pub mod core;
pub mod demo;
