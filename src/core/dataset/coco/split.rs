//! The two-thread load of a big file: a second thread parses the second
//! half of `annotations` from a guessed record boundary while the main
//! thread parses from the start; the second thread's work is adopted only
//! when the main thread reaches that very offset as the start of an
//! annotation, so the outcome is always exactly a one-thread load's.

use std::io::{self, Read};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;

use super::{load_from, Fail, Loader, SplitUse};
use crate::core::dataset::json::{JsonError, JsonReader};
use crate::core::dataset::{Dataset, DatasetError, LoadOptions};

/// Load with two threads: `first` reads the input from its start and
/// `open_at(offset)` opens it again at `offset`; `len` is its size.
///
/// A second thread parses the second half of the `annotations` array
/// speculatively: it starts at the first `}, {` after the middle of the
/// file, taking the `{` for the start of an annotation record, and parses
/// records up to the array's closing `]`. The main thread parses from the
/// start; if it arrives at that very offset as the start of an element of
/// `annotations`, the guess was right and the state of the two parsers there
/// is the same, so it adopts the second thread's records, issues (indices
/// shifted) and reader (line numbers shifted) and carries on after the `]`.
/// Otherwise (the offset was inside a string, a nested value or another
/// array) it cancels the second thread and parses everything itself. The
/// result, errors included, is exactly that of [`load_from`].
pub(super) fn load_split<R, F>(
    first: R,
    open_at: &F,
    len: u64,
    capacity: usize,
    file: &Path,
    image_root: &Path,
    options: &LoadOptions,
) -> (Result<Dataset, DatasetError>, SplitUse)
where
    R: Read + Send,
    F: Fn(u64) -> io::Result<R> + Sync,
{
    let mut reader = JsonReader::with_capacity(first, capacity);
    let Some(boundary) = find_boundary(open_at, len) else {
        return (
            load_from(reader, file, image_root, options),
            SplitUse::OneThread,
        );
    };
    let stop = AtomicBool::new(false);
    let (tx, rx) = mpsc::sync_channel(1);
    let parsed = std::thread::scope(|s| {
        let stop = &stop;
        s.spawn(move || {
            let tail = parse_tail(open_at, boundary, capacity, stop);
            // The receiver is gone only when the main thread no longer
            // wants the result.
            let _ = tx.send(tail);
        });
        let mut split = Some(Split { boundary, rx, stop });
        let mut loader = Loader::default();
        let parsed = loader.parse(&mut reader, &mut split);
        stop.store(true, Ordering::Relaxed);
        if loader.split == SplitUse::OneThread {
            // The main thread never met the boundary in `annotations`.
            loader.split = SplitUse::Abandoned;
        }
        let used = loader.split;
        (parsed.map(|()| loader), used)
    });
    match parsed {
        (Ok(loader), used) => (Ok(loader.finish(file, image_root, options)), used),
        (Err(fail), used) => (Err(fail.into_error(file)), used),
    }
}

/// Where the second thread starts: the `{` of the first `}`, `,`, `{`
/// sequence (whitespace allowed between) in the MB after the middle.
fn find_boundary<R: Read, F: Fn(u64) -> io::Result<R>>(open_at: &F, len: u64) -> Option<u64> {
    let mid = len / 2;
    let mut window = Vec::new();
    open_at(mid)
        .ok()?
        .take(1 << 20)
        .read_to_end(&mut window)
        .ok()?;
    let ws = |b: &u8| matches!(b, b' ' | b'\n' | b'\r' | b'\t');
    let mut i = 0;
    while i < window.len() {
        if window[i] == b'}' {
            let mut j = i + 1;
            while window.get(j).is_some_and(ws) {
                j += 1;
            }
            if window.get(j) == Some(&b',') {
                j += 1;
                while window.get(j).is_some_and(ws) {
                    j += 1;
                }
                if window.get(j) == Some(&b'{') {
                    return Some(mid + j as u64);
                }
            }
        }
        i += 1;
    }
    None
}

/// The second thread's work: annotation records from `boundary` to the end
/// of their array.
fn parse_tail<R: Read, F: Fn(u64) -> io::Result<R>>(
    open_at: &F,
    boundary: u64,
    capacity: usize,
    stop: &AtomicBool,
) -> Result<Tail<R>, Fail> {
    let src = open_at(boundary).map_err(|e| Fail::Json(Box::new(JsonError::Io(e))))?;
    let mut reader = JsonReader::starting_at(src, boundary, capacity);
    let mut loader = Loader::default();
    let mut count = 0usize;
    loop {
        if count.is_multiple_of(1024) && stop.load(Ordering::Relaxed) {
            return Err(Fail::Format("cancelled".to_string()));
        }
        loader.parse_annotation(&mut reader, count)?;
        count += 1;
        if !reader.next_element()? {
            break;
        }
    }
    Ok(Tail {
        reader,
        loader,
        count,
    })
}

/// The main thread's side of a split load.
pub(super) struct Split<'a, R> {
    /// Where the second thread started.
    boundary: u64,
    /// Its result.
    rx: mpsc::Receiver<Result<Tail<R>, Fail>>,
    /// Tells it to give up.
    stop: &'a AtomicBool,
}

/// What the second thread parsed.
struct Tail<R> {
    /// Its reader, just after the `]` of `annotations`.
    reader: JsonReader<R>,
    /// Its annotations and issues, indexed from the boundary.
    loader: Loader,
    /// Records parsed.
    count: usize,
}

impl Loader {
    /// At the start of element `index` of `annotations` in a split load:
    /// take over the second thread's work if it started here (then `true`),
    /// give up on it if it started at an offset already passed.
    pub(super) fn handoff<R: Read>(
        &mut self,
        r: &mut JsonReader<R>,
        split: &mut Option<Split<'_, R>>,
        index: usize,
    ) -> Result<bool, Fail> {
        let at = r.peek_offset()?;
        let Some(sp) = split.take_if(|sp| at >= sp.boundary) else {
            return Ok(false);
        };
        if at > sp.boundary {
            sp.stop.store(true, Ordering::Relaxed);
            self.split = SplitUse::Abandoned;
            return Ok(false);
        }
        let (lines, last_newline) = r.lines_to_here();
        match sp.rx.recv() {
            Ok(Ok(tail)) => {
                let Tail {
                    mut reader,
                    loader,
                    count,
                } = tail;
                // Every shifted index must fit in `u32`, as in `parse_annotation`.
                let fits = index.checked_add(count).is_some_and(|end| end <= 1 << 32);
                let (true, Ok(shift)) = (fits, u32::try_from(index)) else {
                    return Err(Fail::Format(
                        "more annotations than this loader supports".to_string(),
                    ));
                };
                reader.rebase(lines, last_newline);
                *r = reader;
                self.tail = loader.anns;
                self.tail_shift = shift;
                self.issues.extend(loader.issues.into_iter().map(|mut p| {
                    p.index += index;
                    p
                }));
                self.split = SplitUse::Adopted;
                Ok(true)
            }
            Ok(Err(Fail::Json(mut e))) => {
                self.split = SplitUse::TailFailed;
                e.rebase(lines, last_newline);
                Err(Fail::Json(e))
            }
            Ok(Err(fail)) => Err(fail),
            // The second thread is gone without a result: parse on alone.
            Err(_) => {
                self.split = SplitUse::Abandoned;
                Ok(false)
            }
        }
    }
}
