//! Following a file that another thread or process appends lines to,
//! without reading it again from the start.
//!
//! [`LineTail`] keeps the byte offset it has read to and returns only the
//! complete lines added since (a line still being written waits for its
//! newline). A file replaced under it (an atomic rewrite is a new file),
//! cut shorter or removed is read again from its beginning, and the caller
//! is told so. Used for a run's `events.jsonl` (the GUI's training view)
//! and for the records "Generate" appends while it runs.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

/// What was appended since the last read.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Appended {
    /// The file was replaced, cut shorter or removed: what was read before
    /// no longer holds, and `text` starts at the file's beginning.
    pub restarted: bool,
    /// The 1-based line number, in the file, of `text`'s first line.
    pub first_line: usize,
    /// Complete lines, each ending in `\n` (empty when nothing new).
    pub text: String,
}

/// A read position in an appended-to file.
#[derive(Clone, Debug)]
pub struct LineTail {
    path: PathBuf,
    /// Bytes consumed (up to the last complete line).
    offset: u64,
    /// Lines consumed.
    lines: usize,
    /// Identity of the file read (inode on Unix), to notice a replacement.
    file_id: Option<u64>,
}

#[cfg(unix)]
fn file_id(meta: &std::fs::Metadata) -> Option<u64> {
    use std::os::unix::fs::MetadataExt;
    Some(meta.ino())
}

#[cfg(not(unix))]
fn file_id(_meta: &std::fs::Metadata) -> Option<u64> {
    None
}

impl LineTail {
    /// A tail of `path` (nothing read yet).
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self {
            path: path.into(),
            offset: 0,
            lines: 0,
            file_id: None,
        }
    }

    /// The file followed.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The complete lines appended since the last call. A missing file
    /// has no lines.
    pub fn read(&mut self) -> std::io::Result<Appended> {
        let mut file = match File::open(&self.path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let restarted = self.offset > 0 || self.file_id.is_some();
                self.restart(None);
                return Ok(Appended {
                    restarted,
                    first_line: 1,
                    text: String::new(),
                });
            }
            Err(e) => return Err(e),
        };
        let meta = file.metadata()?;
        let id = file_id(&meta);
        let mut restarted = false;
        if id != self.file_id || meta.len() < self.offset {
            restarted = self.offset > 0;
            self.restart(id);
        }
        let mut out = Appended {
            restarted,
            first_line: self.lines + 1,
            text: String::new(),
        };
        if meta.len() == self.offset {
            return Ok(out);
        }
        file.seek(SeekFrom::Start(self.offset))?;
        let mut bytes = Vec::new();
        file.take(meta.len() - self.offset)
            .read_to_end(&mut bytes)?;
        if let Some(end) = bytes.iter().rposition(|&b| b == b'\n') {
            out.text = String::from_utf8_lossy(&bytes[..=end]).into_owned();
            self.offset += end as u64 + 1;
            self.lines += out.text.lines().count();
        }
        Ok(out)
    }

    fn restart(&mut self, id: Option<u64>) {
        self.offset = 0;
        self.lines = 0;
        self.file_id = id;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn complete_lines_once_with_their_numbers_and_restarts() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("log.jsonl");
        let mut tail = LineTail::new(&path);
        assert_eq!(
            tail.read().unwrap(),
            Appended {
                restarted: false,
                first_line: 1,
                text: String::new()
            }
        );
        let mut f = File::create(&path).unwrap();
        write!(f, "a\nb\nhal").unwrap();
        let r = tail.read().unwrap();
        assert_eq!(
            (r.restarted, r.first_line, r.text.as_str()),
            (false, 1, "a\nb\n")
        );
        assert_eq!(tail.read().unwrap().text, "");
        writeln!(f, "f").unwrap();
        let r = tail.read().unwrap();
        assert_eq!((r.first_line, r.text.as_str()), (3, "half\n"));
        // Replaced atomically: read again from the start.
        let new = path.with_extension("new");
        std::fs::write(&new, "x\n").unwrap();
        std::fs::rename(&new, &path).unwrap();
        let r = tail.read().unwrap();
        assert_eq!(
            (r.restarted, r.first_line, r.text.as_str()),
            (true, 1, "x\n")
        );
        std::fs::remove_file(&path).unwrap();
        assert!(tail.read().unwrap().restarted);
    }
}
