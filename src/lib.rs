//! SPR Workbench: spatial preference data and preference training for
//! grounding multimodal LLMs.
//!
//! Layers, one way only:
//! - [`core`]: the pure pipeline (geometry, datasets, region queries,
//!   grounded text, scores, pairs, REC metrics, project files). No GUI, no
//!   tensor library.
//! - [`model`]: models in candle (the LLaVA-style VLM with LoRA).
//! - [`train`]: preference objectives and the trainer, in candle.
//! - [`infer`]: models writing text: candidate generation and REC
//!   evaluation, in candle.
//! - [`scoring`]: model-backed scorers (CLIP's semantic score), in candle.
//! - [`demo`]: the synthetic demo-project generator, on top of the core.
//! - [`experiment`]: `spr experiment`, SPR's experiment end to end (the
//!   stages as `spr` child processes, the report and its plot).
//! - [`bench`]: benchmark drivers that print figures (never timed tests).
//! - `app`: the desktop GUI (eframe/egui + our wgpu overlays), on the core;
//!   behind the default `gui` feature.
//! - [`cli`]: the `spr` command line, on top of all of the above.

#[cfg(feature = "gui")]
pub mod app;
pub mod bench;
pub mod cli;
pub mod core;
pub mod demo;
pub mod experiment;
pub mod infer;
pub mod model;
pub mod scoring;
pub mod train;
