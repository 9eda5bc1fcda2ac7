//! Project folders: `spr.toml` plus one JSONL file per pipeline stage.
//!
//! A project is a folder that the GUI and the CLI both read and write:
//!
//! ```text
//! my-project/
//!   spr.toml            settings (this module's ProjectConfig)
//!   regions.jsonl       one RegionRecord per region query
//!   candidates.jsonl    one CandidateRecord per grounded description
//!   scores.jsonl        one ScoreRecord per candidate (components kept)
//!   pairs.jsonl         one PairRecord per query (chosen vs rejected)
//!   export/             TRL-layout export and its crops
//!   runs/<name>/        training runs
//! ```
//!
//! Every record carries a format version `v`; a reader refuses records of a
//! version it does not know, by line. A malformed line is reported with its
//! file and line number and skipped; the other lines are still read. Every
//! file is written atomically (temporary file in the same folder, then a
//! rename) so a crash never leaves half a file.

mod config;
mod jsonl;
pub mod lock;
mod merge;
mod records;
mod writer;

use std::fs;
use std::path::{Path, PathBuf};

use crate::core::dataset::{Dataset, DatasetError, LoadOptions};

pub use config::*;
pub use jsonl::*;
pub use merge::{merge_jsonl, MergeKey, Merged};
pub use records::*;
pub use writer::{BackgroundWriter, WriteOutcome};

/// The record format version written by this build.
pub const FORMAT_VERSION: u32 = 1;

/// File names inside a project folder.
pub mod files {
    /// Settings.
    pub const CONFIG: &str = "spr.toml";
    /// Region queries.
    pub const REGIONS: &str = "regions.jsonl";
    /// Candidate descriptions.
    pub const CANDIDATES: &str = "candidates.jsonl";
    /// Score components.
    pub const SCORES: &str = "scores.jsonl";
    /// Preference pairs.
    pub const PAIRS: &str = "pairs.jsonl";
    /// Chosen / rejected marks set by hand.
    pub const MARKS: &str = "marks.jsonl";
    /// Export folder.
    pub const EXPORT_DIR: &str = "export";
    /// TRL-layout pairs inside the export folder.
    pub const TRL_PAIRS: &str = "trl_pairs.jsonl";
}

/// Errors reading or writing project files.
#[derive(Debug, thiserror::Error)]
pub enum ProjectError {
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// `spr.toml` is not valid.
    #[error("{path}: {message}")]
    Config {
        /// The file.
        path: PathBuf,
        /// The TOML error, with its line and column.
        message: String,
    },
    /// Another process holds the file's job lock (see [`lock`]).
    #[error("{} is being written by {holder}: wait for it to end, or stop it", path.display())]
    Busy {
        /// The file.
        path: PathBuf,
        /// Who holds it: command, pid and start time.
        holder: String,
    },
    /// A record could not be encoded.
    #[error("{path}: cannot encode record: {message}")]
    Encode {
        /// The file.
        path: PathBuf,
        /// The cause.
        message: String,
    },
}

impl ProjectError {
    /// An I/O error on `path`.
    pub fn io(path: &Path, source: std::io::Error) -> Self {
        ProjectError::Io {
            path: path.to_path_buf(),
            source,
        }
    }
}
/// Where the pairs of training data `data` come from when it is a
/// project's: `(project folder, pairs file)` for a project folder (its
/// `pairs.jsonl`) or for a `pairs*.jsonl` file lying in one (`spr pairs
/// --out`, e.g. one file per λ); `None` for anything else (a TRL-layout
/// file).
pub fn pairs_in_project(data: &Path) -> Option<(PathBuf, PathBuf)> {
    if data.is_dir() && data.join(files::CONFIG).is_file() {
        return Some((data.to_path_buf(), data.join(files::PAIRS)));
    }
    let named_pairs = data
        .file_name()
        .and_then(|n| n.to_str())
        .is_some_and(|n| n.starts_with("pairs"));
    data.parent()
        .filter(|dir| named_pairs && data.is_file() && dir.join(files::CONFIG).is_file())
        .map(|dir| (dir.to_path_buf(), data.to_path_buf()))
}

/// An open project folder.
#[derive(Clone, Debug)]
pub struct Project {
    /// The folder.
    pub root: PathBuf,
    /// Its `spr.toml`.
    pub config: ProjectConfig,
}

impl Project {
    /// Open the project in folder `root` (reads `spr.toml`).
    pub fn open(root: &Path) -> Result<Project, ProjectError> {
        let path = root.join(files::CONFIG);
        let text = fs::read_to_string(&path).map_err(|e| ProjectError::io(&path, e))?;
        let config: ProjectConfig = toml::from_str(&text).map_err(|e| ProjectError::Config {
            path: path.clone(),
            message: e.to_string(),
        })?;
        if config.format_version != FORMAT_VERSION {
            return Err(ProjectError::Config {
                path,
                message: format!(
                    "format_version {} is not supported (this build reads {FORMAT_VERSION})",
                    config.format_version
                ),
            });
        }
        Ok(Project {
            root: root.to_path_buf(),
            config,
        })
    }

    /// Write `spr.toml` for `config` into `root` and open it.
    pub fn create(root: &Path, config: ProjectConfig) -> Result<Project, ProjectError> {
        let path = root.join(files::CONFIG);
        let text = toml::to_string_pretty(&config).map_err(|e| ProjectError::Encode {
            path: path.clone(),
            message: e.to_string(),
        })?;
        write_atomic(&path, text.as_bytes())?;
        Ok(Project {
            root: root.to_path_buf(),
            config,
        })
    }

    /// A path inside the project.
    pub fn path(&self, name: &str) -> PathBuf {
        self.root.join(name)
    }

    /// The annotation file.
    pub fn annotations_path(&self) -> PathBuf {
        self.root.join(&self.config.dataset.annotations)
    }

    /// The image root.
    pub fn image_root(&self) -> PathBuf {
        self.root.join(&self.config.dataset.image_root)
    }

    /// Loads the project's dataset (its annotations and image root) with
    /// the default options; bad records are in [`Dataset::issues`].
    pub fn load_dataset(&self) -> Result<Dataset, DatasetError> {
        Dataset::load(
            &self.annotations_path(),
            &self.image_root(),
            &LoadOptions::default(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pairs_in_project_knows_a_project_and_its_pairs_files() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path();
        std::fs::write(p.join(files::CONFIG), "").unwrap();
        for f in ["pairs-lambda0_8.jsonl", "trl_pairs.jsonl"] {
            std::fs::write(p.join(f), "").unwrap();
        }
        assert_eq!(
            pairs_in_project(p),
            Some((p.to_path_buf(), p.join(files::PAIRS)))
        );
        let per_lambda = p.join("pairs-lambda0_8.jsonl");
        assert_eq!(
            pairs_in_project(&per_lambda),
            Some((p.to_path_buf(), per_lambda.clone()))
        );
        // A TRL file beside spr.toml, and a pairs file outside a project.
        assert_eq!(pairs_in_project(&p.join("trl_pairs.jsonl")), None);
        let other = tempfile::tempdir().unwrap();
        let outside = other.path().join("pairs.jsonl");
        std::fs::write(&outside, "").unwrap();
        assert_eq!(pairs_in_project(&outside), None);
    }

    #[test]
    fn config_errors_name_the_file_and_line() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(
            dir.path().join("spr.toml"),
            "format_version = 1\nname = \"x\"\n[dataset]\nannotations = \"a.json\"\nimage_root = \"i\"\nbogus = 3\n",
        )
        .unwrap();
        let err = Project::open(dir.path()).unwrap_err().to_string();
        assert!(
            err.contains("spr.toml") && err.contains("bogus") && err.contains("line 6"),
            "{err}"
        );
    }
}
