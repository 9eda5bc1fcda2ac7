//! Following a growing `events.jsonl` without re-reading it.
//!
//! The GUI's training view polls each run a few times a second; reading
//! the whole file each time would grow with the run. [`EventTail`] parses
//! only the complete lines added since the last poll ([`LineTail`]); a
//! file replaced under it (a resume rewrites the events up to its
//! checkpoint, atomically: a new file) or cut shorter is read again from
//! the start.

use super::{parse_events, Event, RunDir};
use crate::core::project::LineError;
use crate::core::tail::LineTail;

/// The events of one run read so far.
#[derive(Debug)]
pub struct EventTail {
    lines: LineTail,
    /// Every event, in file order.
    pub events: Vec<Event>,
    /// Lines that did not parse (with their line numbers in the file).
    pub errors: Vec<LineError>,
}

impl EventTail {
    /// A tail of `run`'s events (nothing read yet).
    pub fn new(run: &RunDir) -> Self {
        Self {
            lines: LineTail::new(run.file(super::files::EVENTS)),
            events: Vec::new(),
            errors: Vec::new(),
        }
    }

    /// Reads what was appended since the last call; `true` when the events
    /// changed. A missing file is no events.
    pub fn poll(&mut self) -> std::io::Result<bool> {
        let new = self.lines.read()?;
        let mut changed = false;
        if new.restarted {
            changed = !self.events.is_empty() || !self.errors.is_empty();
            self.events.clear();
            self.errors.clear();
        }
        let (events, mut errors) = parse_events(self.lines.path(), &new.text);
        for e in &mut errors {
            e.line += new.first_line - 1;
        }
        changed |= !events.is_empty() || !errors.is_empty();
        self.events.extend(events);
        self.errors.append(&mut errors);
        Ok(changed)
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
        // A bad line is named by its line in the file, not in the chunk.
        writeln!(f, "not json").unwrap();
        assert!(tail.poll().unwrap());
        assert_eq!(tail.errors.len(), 1);
        assert_eq!(tail.errors[0].line, 3);
        // Replaced atomically with other content (what a resume does).
        let tmp_path = path.with_extension("new");
        std::fs::write(&tmp_path, format!("{}\n", start(2).to_line())).unwrap();
        std::fs::rename(&tmp_path, &path).unwrap();
        assert!(tail.poll().unwrap());
        assert_eq!(tail.events, vec![start(2)]);
    }
}
