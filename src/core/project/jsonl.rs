//! Reading and writing JSONL stage files: bad lines reported by file and
//! line and skipped, whole files written atomically.

use std::fs;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::{ProjectError, Versioned, FORMAT_VERSION};

/// A JSONL line that could not be read; the rest of the file still was.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, thiserror::Error)]
#[error("{}:{line}: {message}", file.display())]
pub struct LineError {
    /// The file.
    pub file: PathBuf,
    /// 1-based line number.
    pub line: usize,
    /// What is wrong, naming the field where serde could.
    pub message: String,
}

/// Records read from a JSONL file with their 1-based line numbers, and the
/// lines that could not be read.
pub type JsonlLines<T> = (Vec<(usize, T)>, Vec<LineError>);

/// Read a JSONL file of versioned records. Blank lines are skipped; a bad
/// line becomes a [`LineError`] and the others are still returned. A missing
/// file is an I/O error (`NotFound`).
pub fn read_jsonl<T: DeserializeOwned + Versioned>(
    path: &Path,
) -> Result<(Vec<T>, Vec<LineError>), ProjectError> {
    let (lines, mut errors) = read_jsonl_plain::<T>(path)?;
    let mut records = Vec::with_capacity(lines.len());
    for (line, r) in lines {
        if r.version() == FORMAT_VERSION {
            records.push(r);
        } else {
            errors.push(LineError {
                file: path.to_path_buf(),
                line,
                message: format!(
                    "field \"v\": format version {} is not supported (this build reads {FORMAT_VERSION})",
                    r.version()
                ),
            });
        }
    }
    errors.sort_by_key(|e| e.line);
    Ok((records, errors))
}

/// Read a JSONL file of any serde type, without version checks (for
/// imported files such as predictions). Same error handling as [`read_jsonl`].
pub fn read_jsonl_plain<T: DeserializeOwned>(path: &Path) -> Result<JsonlLines<T>, ProjectError> {
    let file = fs::File::open(path).map_err(|e| ProjectError::io(path, e))?;
    let mut records = Vec::new();
    let mut errors = Vec::new();
    for (i, line) in BufReader::new(file).lines().enumerate() {
        let line = line.map_err(|e| ProjectError::io(path, e))?;
        if line.trim().is_empty() {
            continue;
        }
        match serde_json::from_str::<T>(&line) {
            Ok(r) => records.push((i + 1, r)),
            Err(e) => errors.push(LineError {
                file: path.to_path_buf(),
                line: i + 1,
                message: e.to_string(),
            }),
        }
    }
    Ok((records, errors))
}

/// Write `bytes` to `path` atomically ([`crate::core::atomic`]), naming
/// the file in the error.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), ProjectError> {
    crate::core::atomic::write_atomic(path, bytes).map_err(|e| ProjectError::io(path, e))
}

/// Records encoded as JSONL bytes (one compact JSON object per line).
pub fn encode_jsonl<T: Serialize>(path: &Path, records: &[T]) -> Result<Vec<u8>, ProjectError> {
    let mut out = Vec::with_capacity(records.len() * 256);
    for r in records {
        serde_json::to_writer(&mut out, r).map_err(|e| ProjectError::Encode {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
        out.push(b'\n');
    }
    Ok(out)
}

/// Write records as JSONL, atomically.
pub fn write_jsonl<T: Serialize>(path: &Path, records: &[T]) -> Result<(), ProjectError> {
    write_atomic(path, &encode_jsonl(path, records)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::geometry::Bbox;
    use crate::core::project::{RegionRecord, RegionSource};

    #[test]
    fn jsonl_bad_lines_are_reported_and_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("regions.jsonl");
        let good = RegionRecord {
            v: 1,
            id: "1-0".into(),
            image_id: 1,
            file_name: "a.png".into(),
            width: 10,
            height: 10,
            region: Bbox::new(0.0, 0.0, 5.0, 5.0),
            crop: Bbox::new(0.0, 0.0, 7.0, 7.0),
            seed_object: Some(3),
            objects: vec![3],
            source: RegionSource::Random,
        };
        let mut text = serde_json::to_string(&good).unwrap();
        text.push_str("\n{not json\n\n");
        text.push_str(
            &serde_json::to_string(&RegionRecord {
                v: 9,
                ..good.clone()
            })
            .unwrap(),
        );
        text.push_str("\n{\"v\":1,\"id\":\"x\"}\n");
        fs::write(&path, text).unwrap();
        let (records, errors) = read_jsonl::<RegionRecord>(&path).unwrap();
        assert_eq!(records, vec![good]);
        assert_eq!(errors.len(), 3);
        assert_eq!(errors[0].line, 2);
        assert_eq!(errors[1].line, 4);
        assert!(errors[1].message.contains("format version 9"));
        assert_eq!(errors[2].line, 5);
        assert!(
            errors[2].message.contains("missing field `image_id`"),
            "{}",
            errors[2].message
        );
        assert!(errors[2]
            .to_string()
            .starts_with(&format!("{}:5: ", path.display())));
    }
}
