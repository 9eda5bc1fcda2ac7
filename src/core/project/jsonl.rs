//! Reading and writing JSONL stage files: bad lines reported by file and
//! line and skipped, whole files written atomically.

use std::fs;
use std::io::Write;
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
    let bytes = fs::read(path).map_err(|e| ProjectError::io(path, e))?;
    Ok(parse_jsonl(path, &bytes))
}

/// [`read_jsonl`] of the contents `bytes` of file `path`.
pub fn parse_jsonl<T: DeserializeOwned + Versioned>(
    path: &Path,
    bytes: &[u8],
) -> (Vec<T>, Vec<LineError>) {
    let (lines, mut errors) = parse_jsonl_plain::<T>(path, bytes);
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
    (records, errors)
}

/// Read a JSONL file of any serde type, without version checks (for
/// imported files such as predictions). Same error handling as [`read_jsonl`].
pub fn read_jsonl_plain<T: DeserializeOwned>(path: &Path) -> Result<JsonlLines<T>, ProjectError> {
    let bytes = fs::read(path).map_err(|e| ProjectError::io(path, e))?;
    Ok(parse_jsonl_plain(path, &bytes))
}

/// [`read_jsonl_plain`] of the contents `bytes` of file `path`. A last line
/// without its newline that does not parse is named as what it is: an
/// append still under way in another process, or one a crash cut short
/// (the next append removes it).
pub fn parse_jsonl_plain<T: DeserializeOwned>(path: &Path, bytes: &[u8]) -> JsonlLines<T> {
    let mut records = Vec::new();
    let mut errors = Vec::new();
    let unterminated = !bytes.is_empty() && !bytes.ends_with(b"\n");
    let mut lines = bytes.split(|&b| b == b'\n').enumerate().peekable();
    while let Some((i, line)) = lines.next() {
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        match serde_json::from_slice::<T>(line) {
            Ok(r) => records.push((i + 1, r)),
            Err(e) => {
                let message = if unterminated && lines.peek().is_none() {
                    format!(
                        "incomplete last line (an append still under way, or one cut short \
                         by a crash; the next append removes it): {e}"
                    )
                } else {
                    e.to_string()
                };
                errors.push(LineError {
                    file: path.to_path_buf(),
                    line: i + 1,
                    message,
                })
            }
        }
    }
    (records, errors)
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

/// Appends `bytes` (whole JSONL lines) to `path` under its write lock, in
/// one write, synced. A last line left without its newline by an append
/// that was killed is cut first, so the file holds whole records only.
pub fn append_jsonl(path: &Path, bytes: &[u8]) -> Result<(), ProjectError> {
    if bytes.is_empty() {
        return Ok(());
    }
    let _lock = super::lock::write_lock(path)?;
    let io = |e| ProjectError::io(path, e);
    let mut f = fs::OpenOptions::new()
        .create(true)
        .read(true)
        .append(true)
        .open(path)
        .map_err(io)?;
    cut_partial_tail(&mut f).map_err(io)?;
    f.write_all(bytes).and_then(|_| f.sync_data()).map_err(io)
}

/// Truncates an open file after its last newline (nothing when it ends
/// with one or is empty).
fn cut_partial_tail(f: &mut fs::File) -> std::io::Result<()> {
    use std::io::{Read, Seek, SeekFrom};
    let len = f.metadata()?.len();
    if len == 0 {
        return Ok(());
    }
    // Read backwards in chunks until a newline is found.
    let mut end = len;
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let start = end.saturating_sub(buf.len() as u64);
        let n = (end - start) as usize;
        f.seek(SeekFrom::Start(start))?;
        f.read_exact(&mut buf[..n])?;
        if end == len && buf[n - 1] == b'\n' {
            return Ok(());
        }
        if let Some(p) = buf[..n].iter().rposition(|&b| b == b'\n') {
            return f.set_len(start + p as u64 + 1);
        }
        if start == 0 {
            return f.set_len(0);
        }
        end = start;
    }
}

/// What identifies one version of a file on disk: a write through
/// [`write_atomic`] gives a new inode, an append a new length.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Fingerprint {
    len: u64,
    modified: Option<std::time::SystemTime>,
    inode: u64,
    device: u64,
}

impl Fingerprint {
    /// The fingerprint of `path` now; `None` when it does not exist.
    pub fn of(path: &Path) -> Option<Fingerprint> {
        let m = fs::metadata(path).ok()?;
        #[cfg(unix)]
        let (inode, device) = {
            use std::os::unix::fs::MetadataExt;
            (m.ino(), m.dev())
        };
        #[cfg(not(unix))]
        let (inode, device) = (0, 0);
        Some(Fingerprint {
            len: m.len(),
            modified: m.modified().ok(),
            inode,
            device,
        })
    }
}

/// Saves the GUI's version `ours` of stage file `path` (an edit of `base`,
/// the version it last read or saved) under the file's write lock: merged
/// record by record into what is on disk now ([`super::merge_jsonl`]), so
/// that records another process wrote meanwhile are kept. Returns the
/// merge and the fingerprint of the file written.
pub fn merge_write(
    path: &Path,
    key: super::MergeKey,
    base: &[u8],
    ours: &[u8],
) -> Result<(super::merge::Merged, Option<Fingerprint>), ProjectError> {
    let _lock = super::lock::write_lock(path)?;
    let theirs = match fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(e) => return Err(ProjectError::io(path, e)),
    };
    let merged = super::merge_jsonl(base, ours, &theirs, key);
    write_atomic(path, &merged.bytes)?;
    Ok((merged, Fingerprint::of(path)))
}

#[cfg(test)]
mod append_tests {
    use super::*;

    #[test]
    fn an_append_cuts_a_torn_last_line_first() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("c.jsonl");
        fs::write(&p, "{\"a\":1}\n{\"b\":").unwrap();
        let (ok, bad) = parse_jsonl_plain::<serde_json::Value>(&p, &fs::read(&p).unwrap());
        assert_eq!(ok.len(), 1);
        assert!(
            bad[0].message.starts_with("incomplete last line"),
            "{bad:?}"
        );
        append_jsonl(&p, b"{\"c\":3}\n").unwrap();
        assert_eq!(fs::read_to_string(&p).unwrap(), "{\"a\":1}\n{\"c\":3}\n");
        // A torn line longer than one backwards read, and no newline at all.
        fs::write(
            &p,
            format!("{{\"a\":1}}\n{{\"b\":\"{}", "x".repeat(200_000)),
        )
        .unwrap();
        append_jsonl(&p, b"{\"c\":3}\n").unwrap();
        assert_eq!(fs::read_to_string(&p).unwrap(), "{\"a\":1}\n{\"c\":3}\n");
        fs::write(&p, "{\"b\":").unwrap();
        append_jsonl(&p, b"{\"c\":3}\n").unwrap();
        assert_eq!(fs::read_to_string(&p).unwrap(), "{\"c\":3}\n");
    }
}
