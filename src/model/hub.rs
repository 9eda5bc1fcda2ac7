//! Finding a model folder: a local path, or a Hugging Face hub id fetched
//! into the local hub cache with `hf-hub`.
//!
//! A model folder holds the llava-hf layout: `config.json`, weights as
//! `model.safetensors` or shards listed in `model.safetensors.index.json`,
//! `tokenizer.json`, and optionally `generation_config.json` and the
//! processor files. The download is kept behind [`resolve_model`] so the rest
//! of the crate only ever sees a local folder; files already in the cache
//! are not fetched again, so a cached model also works offline.

use std::path::{Path, PathBuf};

use super::{ModelError, Result};

/// Single-file weights.
pub const WEIGHTS_FILE: &str = "model.safetensors";
/// Index of sharded weights.
pub const WEIGHTS_INDEX_FILE: &str = "model.safetensors.index.json";

/// The tokenizer file, required in every model folder.
pub const TOKENIZER_FILE: &str = "tokenizer.json";

/// Files fetched when present, ignored when the repository lacks them (and
/// copied along when a model folder is written from another).
pub const OPTIONAL_FILES: &[&str] = &[
    "generation_config.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "preprocessor_config.json",
    "processor_config.json",
    "chat_template.json",
    "chat_template.jinja",
];

/// Where and how to download.
#[derive(Debug, Clone, Default)]
pub struct HubOptions {
    /// Hub URL; `HF_ENDPOINT` or `https://huggingface.co` when `None`.
    pub endpoint: Option<String>,
    /// Cache folder; `HF_HOME`'s `hub/` or `~/.cache/huggingface/hub` when
    /// `None`.
    pub cache_dir: Option<PathBuf>,
    /// Show download progress bars.
    pub progress: bool,
}

/// A local model folder for `source`: the folder itself when it exists,
/// else the hub snapshot of `source` read as a hub id (`owner/name`).
pub fn resolve_model(source: &str, options: &HubOptions) -> Result<PathBuf> {
    let path = Path::new(source);
    if path.is_dir() {
        return Ok(path.to_path_buf());
    }
    if path.exists() {
        return Err(ModelError::Input(format!(
            "{source} is a file; a model is a folder holding config.json and the weights"
        )));
    }
    if !looks_like_hub_id(source) {
        return Err(ModelError::MissingPath {
            path: path.to_path_buf(),
            what: "model folder",
        });
    }
    fetch_model(source, options)
}

/// `owner/name` with the characters the hub allows, and not a path.
pub fn looks_like_hub_id(source: &str) -> bool {
    let mut parts = source.split('/');
    let (Some(owner), Some(name), None) = (parts.next(), parts.next(), parts.next()) else {
        return false;
    };
    let ok = |s: &str| {
        !s.is_empty()
            && !s.starts_with('.')
            && !s.starts_with('-')
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
    };
    ok(owner) && ok(name)
}

/// Downloads (or finds in the cache) the files of hub model `model_id` and
/// returns the snapshot folder.
pub fn fetch_model(model_id: &str, options: &HubOptions) -> Result<PathBuf> {
    let hub_err = |message: String| ModelError::Hub {
        model: model_id.to_string(),
        message,
    };
    let mut builder = hf_hub::api::sync::ApiBuilder::from_env().with_progress(options.progress);
    if let Some(endpoint) = &options.endpoint {
        builder = builder.with_endpoint(endpoint.clone());
    }
    if let Some(dir) = &options.cache_dir {
        builder = builder.with_cache_dir(dir.clone());
    }
    let api = builder.build().map_err(|e| hub_err(e.to_string()))?;
    let repo = api.model(model_id.to_string());
    let get = |file: &str| {
        repo.get(file)
            .map_err(|e| hub_err(format!("fetching {file}: {e}")))
    };

    let config = get("config.json")?;
    get(TOKENIZER_FILE)?;
    match repo.get(WEIGHTS_INDEX_FILE) {
        Ok(index) => {
            for shard in shard_files(&index)? {
                get(&shard)?;
            }
        }
        Err(_) => {
            get(WEIGHTS_FILE)?;
        }
    }
    for file in OPTIONAL_FILES {
        // Absent files are normal (older repos lack processor_config.json).
        let _ = repo.get(file);
    }
    config
        .parent()
        .map(Path::to_path_buf)
        .ok_or_else(|| hub_err("the downloaded config.json has no parent folder".into()))
}

/// The distinct shard file names listed in a `model.safetensors.index.json`,
/// in first-mention order.
pub fn shard_files(index_path: &Path) -> Result<Vec<String>> {
    #[derive(serde::Deserialize)]
    struct Index {
        weight_map: std::collections::BTreeMap<String, String>,
    }
    let text = std::fs::read_to_string(index_path).map_err(|source| ModelError::Io {
        path: index_path.to_path_buf(),
        source,
    })?;
    let index: Index = serde_json::from_str(&text).map_err(|source| ModelError::Json {
        path: index_path.to_path_buf(),
        source,
    })?;
    let mut files: Vec<String> = Vec::new();
    for file in index.weight_map.values() {
        if file.contains('/') || file.contains('\\') || file.starts_with('.') {
            return Err(ModelError::Config {
                path: index_path.to_path_buf(),
                message: format!("shard name {file:?} is not a plain file name"),
            });
        }
        if !files.contains(file) {
            files.push(file.clone());
        }
    }
    if files.is_empty() {
        return Err(ModelError::Config {
            path: index_path.to_path_buf(),
            message: "weight_map lists no shards".into(),
        });
    }
    Ok(files)
}

/// The safetensors files of a local model folder: the shards of
/// `model.safetensors.index.json` when present, else `model.safetensors`.
pub fn weight_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let index = dir.join(WEIGHTS_INDEX_FILE);
    if index.is_file() {
        let files: Vec<PathBuf> = shard_files(&index)?
            .into_iter()
            .map(|f| dir.join(f))
            .collect();
        if let Some(missing) = files.iter().find(|f| !f.is_file()) {
            return Err(ModelError::MissingPath {
                path: missing.clone(),
                what: "weight shard listed in model.safetensors.index.json",
            });
        }
        return Ok(files);
    }
    let single = dir.join(WEIGHTS_FILE);
    if single.is_file() {
        return Ok(vec![single]);
    }
    Err(ModelError::MissingPath {
        path: single,
        what: "weights (model.safetensors or model.safetensors.index.json)",
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hub_ids_and_paths() {
        assert!(looks_like_hub_id("llava-hf/llava-1.5-7b-hf"));
        assert!(!looks_like_hub_id("./models/llava"));
        assert!(!looks_like_hub_id("/abs/path"));
        assert!(!looks_like_hub_id("a/b/c"));
        assert!(!looks_like_hub_id("plainname"));
        assert!(!looks_like_hub_id("../x"));
    }

    #[test]
    fn missing_local_folder_is_named() {
        let err = resolve_model("/definitely/not/here", &HubOptions::default()).unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains("model folder not found") && msg.contains("/definitely/not/here"),
            "{msg}"
        );
    }

    #[test]
    fn unreachable_hub_is_a_clear_error() {
        let cache = tempfile::tempdir().unwrap();
        let options = HubOptions {
            endpoint: Some("http://127.0.0.1:9".into()),
            cache_dir: Some(cache.path().to_path_buf()),
            progress: false,
        };
        let err = resolve_model("nobody/no-such-model", &options).unwrap_err();
        let msg = err.to_string();
        assert!(matches!(err, ModelError::Hub { .. }), "{msg}");
        assert!(
            msg.contains("nobody/no-such-model") && msg.contains("config.json"),
            "{msg}"
        );
    }
}
