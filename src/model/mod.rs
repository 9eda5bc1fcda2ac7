//! Models in candle: the LLaVA-1.5-style VLM the trainer fine-tunes with
//! LoRA, and what it needs to load (configs, weights, tokenizer, hub).
//!
//! - [`llava`]: CLIP vision tower (frozen) → 2-layer MLP projector → Llama
//!   decoder, loaded from a llava-hf folder (transformers'
//!   `LlavaForConditionalGeneration`). Image features are a separate call so
//!   they can be computed once per image and cached.
//! - [`llama`]: our own Llama decoder: logits for every position, a KV cache,
//!   LoRA on its linear layers.
//! - [`generation`]: batched decoding with a sampler per sequence (greedy,
//!   top-p), kept out of the model.
//! - [`clip`]: the CLIP vision tower (with the masked last block of the
//!   local-attention region embedding) and LLaVA's projector.
//! - [`clip_model`]: `CLIPModel` (text and vision towers, projections) for
//!   the semantic score.
//! - [`owlv2`]: `Owlv2ForObjectDetection` (CLIP backbone with class, box
//!   and objectness heads) for the localization score's detector.
//! - [`lora`]: LoRA layers and PEFT-compatible adapter files.
//! - [`tokenizer`]: `tokenizer.json` plus the LLaVA-1.5 chat prompt.
//! - [`processor`]: CLIP image preprocessing (resize, crop, normalise).
//! - [`resize`]: the processors' bicubic resize, with precomputed taps.
//! - [`hub`]: finding a model folder locally or on the Hugging Face hub.
//! - [`config`]: serde mirrors of the `config.json` files.
//!
//! Reference implementations: transformers' `modeling_llava.py`,
//! `modeling_llama.py`, `modeling_clip.py`, `image_processing_clip.py`, and
//! PEFT's `tuners/lora`. `tests/model_parity.rs` checks logits against
//! transformers on a tiny random checkpoint made by
//! `scripts/parity/make_fixtures.py`.
//!
//! Precision: `f32` on CPU, `bf16` on CUDA ([`default_dtype`]); LoRA
//! adapters are always `f32`.

use std::path::PathBuf;

use candle_core::{DType, Device};

pub mod clip;
pub mod clip_model;
pub mod config;
pub mod generation;
pub mod hub;
pub mod init;
pub mod llama;
pub mod llava;
pub mod lora;
pub mod ops;
pub mod owlv2;
pub mod processor;
pub mod resize;
pub mod tokenizer;

pub use clip_model::ClipModel;
pub use config::{ClipConfig, ClipTextConfig, ClipVisionConfig, LlamaConfig, LlavaConfig};
pub use generation::{FinishReason, Generated, GenerationConfig, Sampler, Sampling};
pub use llama::{next_token_logprobs, token_logprobs, KvCache, Llama};
pub use llava::{FullWeights, Llava, LlavaBundle};
pub use lora::{LoraConfig, PeftLayout, TargetModule};
pub use processor::ImageProcessor;
pub use tokenizer::LlavaTokenizer;

/// Errors of the model layer. Each names the file or tensor involved.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// A folder or file that must exist does not.
    #[error("{what} not found: {path}")]
    MissingPath {
        /// The path looked for.
        path: PathBuf,
        /// What it should have been (`model folder`, ...).
        what: &'static str,
    },
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// A JSON file could not be parsed.
    #[error("{path}: invalid JSON: {source}")]
    Json {
        /// The file.
        path: PathBuf,
        /// The parse error (with line and column).
        #[source]
        source: serde_json::Error,
    },
    /// A config holds values that do not fit together or are unsupported.
    #[error("{path}: {message}")]
    Config {
        /// The config file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// Weights could not be loaded: a missing tensor, a shape that does not
    /// match the config, a corrupt file. The message names the tensor.
    #[error("loading weights from {path}: {source}")]
    Weights {
        /// The checkpoint folder or file.
        path: PathBuf,
        /// candle's error, naming the tensor.
        #[source]
        source: candle_core::Error,
    },
    /// An adapter folder cannot be used with this model.
    #[error("adapter {path}: {message}")]
    Adapter {
        /// The adapter file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// The tokenizer could not be loaded or failed on a text.
    #[error("tokenizer {path}: {message}")]
    Tokenizer {
        /// The tokenizer file.
        path: PathBuf,
        /// The tokenizers crate's message.
        message: String,
    },
    /// A model id is neither a local folder nor downloadable.
    #[error("model {model:?} is not a local folder and could not be fetched from the Hugging Face hub: {message}")]
    Hub {
        /// The folder or hub id given.
        model: String,
        /// Why the download failed.
        message: String,
    },
    /// Decoding was cancelled by its caller (Ctrl-C, the GUI's Cancel).
    #[error("cancelled")]
    Cancelled,
    /// Inputs that do not fit the model (shapes, token counts).
    #[error("invalid input: {0}")]
    Input(String),
    /// A tensor operation failed.
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

/// Result of the model layer.
pub type Result<T> = std::result::Result<T, ModelError>;

/// The compute dtype for a device: `f32` on CPU, `bf16` on CUDA.
pub fn default_dtype(device: &Device) -> DType {
    if device.is_cuda() {
        DType::BF16
    } else {
        DType::F32
    }
}

/// The CPU cores this process may use.
pub fn cpu_cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// Sets how many threads one candle CPU operation (a matmul) uses, unless
/// the user set `RAYON_NUM_THREADS` already. Call it first thing in
/// `main`, before any thread starts.
///
/// Why: candle asks for its thread count at every matmul, and without the
/// variable that means parsing `/proc/cpuinfo` each time (`num_cpus`):
/// measured here, 261 → 635 generated tokens/s at batch 1 and about 20 %
/// more DPO-step tokens/s once the variable is set. Decoding many small
/// sequences and training on LLaVA rows run best with one thread per
/// operation and the batch split over the cores ([`batch_workers`]).
pub fn set_cpu_threads_per_op(n: usize) {
    let users = std::env::var_os("RAYON_NUM_THREADS").is_some();
    let _ = THREADS_SET_BY_USER.set(users);
    if !users {
        // SAFETY (edition 2021: safe, but racy with other threads reading
        // the environment): called at the start of `main`, single-threaded.
        std::env::set_var("RAYON_NUM_THREADS", n.max(1).to_string());
    }
}

/// Whether the user set `RAYON_NUM_THREADS` (recorded by
/// [`set_cpu_threads_per_op`]).
static THREADS_SET_BY_USER: std::sync::OnceLock<bool> = std::sync::OnceLock::new();

/// Whether `RAYON_NUM_THREADS` in this process's environment was set by
/// [`set_cpu_threads_per_op`] for this command rather than by the user:
/// child `spr` processes must then not inherit it, so each picks its own
/// (the window's every-core setting would otherwise stop a training child
/// from splitting its rows over the cores).
pub fn threads_env_is_ours() -> bool {
    THREADS_SET_BY_USER.get() == Some(&false)
}

/// How many threads should compute parts of a batch side by side on
/// `device`: the cores when CPU operations run single-threaded
/// (`RAYON_NUM_THREADS=1`), else one.
pub fn batch_workers(device: &Device) -> usize {
    let single = std::env::var("RAYON_NUM_THREADS").is_ok_and(|v| v.trim() == "1");
    if device.is_cpu() && single {
        cpu_cores()
    } else {
        1
    }
}

/// The device to compute on: the CPU when `SPR_DEVICE=cpu` (a CUDA build
/// can then still run on the CPU, e.g. to compare its results with the
/// GPU's), else the first CUDA device in a CUDA build, else the CPU. A
/// CUDA build that finds no usable GPU is an error, not a silent fall back
/// to the CPU.
pub fn compute_device() -> candle_core::Result<Device> {
    match std::env::var("SPR_DEVICE").ok().as_deref().map(str::trim) {
        Some("cpu") => Ok(Device::Cpu),
        Some("cuda") | Some("") | None => Device::cuda_if_available(0),
        Some(other) => Err(candle_core::Error::Msg(format!(
            "SPR_DEVICE={other:?}: expected \"cpu\" or \"cuda\""
        ))),
    }
}

/// [`compute_device`], or the CPU where it fails (scorers and benchmarks
/// that must run anyway).
pub fn default_device() -> Device {
    compute_device().unwrap_or(Device::Cpu)
}
