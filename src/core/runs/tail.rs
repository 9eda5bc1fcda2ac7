//! Following a growing `events.jsonl` without re-reading it.
//!
//! The GUI's training view polls each run a few times a second; reading
//! the whole file each time would grow with the run. [`EventTail`] keeps
//! the byte offset it has read to and parses only the complete lines
//! added since. A file replaced under it (a resume rewrites the events up
//! to its checkpoint, atomically: a new file) or cut shorter is read again
//! from the start.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::PathBuf;

use super::{parse_events, Event, RunDir};
use crate::core::project::LineError;

/// The events of one run read so far.
#[derive(Debug)]
pub struct EventTail {
    path: PathBuf,
    /// Bytes of the file consumed (up to the last complete line).
    offset: u64,
    /// Identity of the file read (inode on Unix), to notice a replacement.
    file_id: Option<u64>,
    /// Every event, in file order.
    pub events: Vec<Event>,
    /// Lines that did not parse.
    pub errors: Vec<LineError>,
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

impl EventTail {
    /// A tail of `run`'s events (nothing read yet).
    pub fn new(run: &RunDir) -> Self {
        Self {
            path: run.file(super::files::EVENTS),
            offset: 0,
            file_id: None,
            events: Vec::new(),
            errors: Vec::new(),
        }
    }

    /// Reads what was appended since the last call; `true` when the events
    /// changed. A missing file is no events.
    pub fn poll(&mut self) -> std::io::Result<bool> {
        let mut file = match File::open(&self.path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let had = !self.events.is_empty();
                self.reset(None);
                return Ok(had);
            }
            Err(e) => return Err(e),
        };
        let meta = file.metadata()?;
        let id = file_id(&meta);
        let mut changed = false;
        if id != self.file_id || meta.len() < self.offset {
            changed = !self.events.is_empty();
            self.reset(id);
        }
        if meta.len() == self.offset {
            return Ok(changed);
        }
        file.seek(SeekFrom::Start(self.offset))?;
        let mut bytes = Vec::new();
        file.take(meta.len() - self.offset)
            .read_to_end(&mut bytes)?;
        // Only complete lines: a line still being written waits.
        let Some(end) = bytes.iter().rposition(|&b| b == b'\n') else {
            return Ok(changed);
        };
        let text = String::from_utf8_lossy(&bytes[..=end]);
        let (events, mut errors) = parse_events(&self.path, &text);
        self.offset += end as u64 + 1;
        changed |= !events.is_empty() || !errors.is_empty();
        self.events.extend(events);
        self.errors.append(&mut errors);
        Ok(changed)
    }

    fn reset(&mut self, id: Option<u64>) {
        self.offset = 0;
        self.file_id = id;
        self.events.clear();
        self.errors.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::runs::{EndEvent, EndStatus, StartEvent};
    use std::io::Write;

    fn start(step: u64) -> Event {
        Event::Start(StartEvent {
            step,
            pid: 1,
            time: 0.0,
        })
    }

    #[test]
    fn reads_appended_lines_once_and_notices_a_rewrite() {
        let tmp = tempfile::tempdir().unwrap();
        let run = RunDir::new(tmp.path());
        let mut tail = EventTail::new(&run);
        assert!(!tail.poll().unwrap());
        let path = run.file(crate::core::runs::files::EVENTS);
        let mut f = std::fs::File::create(&path).unwrap();
        writeln!(f, "{}", start(0).to_line()).unwrap();
        // Half a line: not read yet.
        let end = Event::End(EndEvent {
            status: EndStatus::Stopped,
            step: 3,
            message: None,
            time: 1.0,
        })
        .to_line();
        write!(f, "{}", &end[..10]).unwrap();
        assert!(tail.poll().unwrap());
        assert_eq!(tail.events, vec![start(0)]);
        assert!(!tail.poll().unwrap());
        writeln!(f, "{}", &end[10..]).unwrap();
        assert!(tail.poll().unwrap());
        assert_eq!(tail.events.len(), 2);
        assert!(tail.errors.is_empty());
        // Replaced atomically with other content (what a resume does).
        let tmp_path = path.with_extension("new");
        std::fs::write(&tmp_path, format!("{}\n", start(2).to_line())).unwrap();
        std::fs::rename(&tmp_path, &path).unwrap();
        assert!(tail.poll().unwrap());
        assert_eq!(tail.events, vec![start(2)]);
    }
}
