//! The pure core: everything the pipeline computes, with no GUI and no
//! tensor library, so that the CLI, the GUI and the tests share one
//! implementation.

pub mod assignment;
pub mod atomic;
pub mod dataset;
pub mod detection;
pub mod geometry;
pub mod grounded;
pub mod imageio;
pub mod pipeline;
pub mod project;
pub mod prompts;
pub mod rec;
pub mod regions;
pub mod rng;
pub mod runs;
pub mod scorers;
pub mod scores;
pub mod segment;
pub mod tail;
pub mod threads;
pub mod workspace;
