//! The workspace and the files on disk, which other processes write too:
//! a `spr generate` appending candidates while the window is open, a
//! `spr score` rewriting the scores.
//!
//! Every stage file the workspace holds is remembered as it was last read
//! or saved (its bytes and its fingerprint on disk). A save is never a
//! blind overwrite: it is a merge, under the file's write lock, of the
//! workspace's edit into what is on disk at that moment
//! ([`project::merge_write`]), so records another process wrote since are
//! kept. [`Workspace::reload_changed`] (the app calls it about once a
//! second) reloads any stage file whose fingerprint no longer matches —
//! another process wrote it, or a save kept another process's records —
//! so the window shows what is on disk.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use super::Workspace;
use crate::core::project::{
    self, files, lock, Fingerprint, LineError, MergeKey, Project, ProjectError, ScoreRecord,
    Versioned,
};

/// The stage files the workspace holds and edits.
const STAGES: [&str; 4] = [
    files::REGIONS,
    files::CANDIDATES,
    files::SCORES,
    files::MARKS,
];

/// A stage file as the workspace last read or saved it.
#[derive(Debug, Default)]
pub(super) struct Known {
    /// Its contents (the base of the next save's merge).
    bytes: Arc<Vec<u8>>,
    /// Its fingerprint on disk then (`None`: it did not exist).
    fingerprint: Option<Fingerprint>,
    /// A save kept records of another process: reload it.
    stale: bool,
}

/// Reads a stage file (empty when missing) with the fingerprint of the
/// very version read.
fn read_file<T>(path: &Path) -> Result<(Vec<T>, Known, Vec<LineError>), ProjectError>
where
    T: serde::de::DeserializeOwned + Versioned,
{
    // A read-only project folder has no lock folder: read unlocked (the
    // file is replaced atomically, and a half-appended last line is
    // reported as such).
    let lock = lock::read_lock(path).ok();
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(e) => return Err(ProjectError::io(path, e)),
    };
    let fingerprint = Fingerprint::of(path);
    drop(lock);
    let (records, errors) = project::parse_jsonl(path, &bytes);
    let known = Known {
        bytes: Arc::new(bytes),
        fingerprint,
        stale: false,
    };
    Ok((records, known, errors))
}

/// Reads stage file `name` of `p` for [`Workspace::open`], remembering it
/// in `disk` and its bad lines in `problems`.
pub(super) fn read_stage<T>(
    p: &Project,
    name: &'static str,
    disk: &mut HashMap<&'static str, Known>,
    problems: &mut Vec<String>,
) -> Result<Vec<T>, ProjectError>
where
    T: serde::de::DeserializeOwned + Versioned,
{
    let (records, known, errors) = read_file(&p.path(name))?;
    problems.extend(errors.iter().map(|e| format!("{e}; line skipped")));
    disk.insert(name, known);
    Ok(records)
}

impl Workspace {
    /// From now on, write files on a background thread (the GUI does this
    /// so that it never waits on the disk); see [`Workspace::pending_writes`].
    pub fn write_in_background(&mut self) {
        self.writer = Some(project::BackgroundWriter::new());
    }

    /// Background writes not finished yet (0 when writing in the foreground).
    pub fn pending_writes(&self) -> usize {
        self.writer.as_ref().map_or(0, |w| w.pending())
    }

    /// Background writes that failed since the last call.
    pub fn take_write_errors(&self) -> Vec<String> {
        self.writer
            .as_ref()
            .map(|w| w.take_errors())
            .unwrap_or_default()
    }

    fn encode(&self, name: &str) -> Result<Vec<u8>, ProjectError> {
        let path = self.project.path(name);
        match name {
            files::REGIONS => project::encode_jsonl(&path, &self.regions),
            files::CANDIDATES => project::encode_jsonl(&path, &self.candidates),
            files::MARKS => project::encode_jsonl(&path, &self.marks),
            _ => {
                // Scores in candidate order, so the file is stable.
                let ordered: Vec<&ScoreRecord> = self
                    .candidates
                    .iter()
                    .filter_map(|c| self.scores.get(&c.id))
                    .collect();
                project::encode_jsonl(&path, &ordered)
            }
        }
    }

    /// Saves stage file `name`: the edit since it was last read or saved,
    /// merged into what is on disk (in the background when
    /// [`Workspace::write_in_background`] was called).
    pub(super) fn save(&mut self, name: &'static str) -> Result<(), ProjectError> {
        let path = self.project.path(name);
        let ours = self.encode(name)?;
        let key = MergeKey::of(name).unwrap_or(MergeKey("id"));
        let known = self.disk.entry(name).or_default();
        let base = std::mem::replace(&mut known.bytes, Arc::new(ours.clone()));
        match &self.writer {
            Some(w) => w.merge(path, key, base, ours),
            None => {
                let (merged, fingerprint) = project::merge_write(&path, key, &base, &ours)?;
                known.fingerprint = fingerprint;
                known.stale = merged.kept_theirs;
            }
        }
        Ok(())
    }

    /// Reloads every stage file that changed on disk since the workspace
    /// last read or saved it, and says which, with the record counts
    /// after and before (in plain characters: the GUI's font has no
    /// arrows). Nothing happens while background saves are
    /// pending (their outcome is not known yet); call it again later.
    pub fn reload_changed(&mut self) -> Result<Vec<String>, ProjectError> {
        if let Some(w) = &self.writer {
            if w.pending() > 0 {
                return Ok(Vec::new());
            }
            for o in w.take_outcomes() {
                if let Some(name) = STAGES.iter().find(|n| self.project.path(n) == o.path) {
                    let known = self.disk.entry(name).or_default();
                    known.fingerprint = o.fingerprint;
                    known.stale = o.kept_theirs;
                }
            }
        }
        let mut messages = Vec::new();
        for name in STAGES {
            let path = self.project.path(name);
            let unchanged = self
                .disk
                .get(name)
                .is_some_and(|k| !k.stale && k.fingerprint == Fingerprint::of(&path));
            if unchanged {
                continue;
            }
            let (before, after, errors) = self.reload(name, &path)?;
            self.problems
                .extend(errors.iter().map(|e| format!("{e}; line skipped")));
            messages.push(format!(
                "{name} changed on disk (written by another process): reloaded, {after} records (were {before})"
            ));
        }
        if !messages.is_empty() {
            self.reindex();
        }
        Ok(messages)
    }

    /// Replaces the records of stage file `name` by the file's; returns
    /// the record counts before and after, and the bad lines.
    fn reload(
        &mut self,
        name: &'static str,
        path: &Path,
    ) -> Result<(usize, usize, Vec<LineError>), ProjectError> {
        fn swap<T>(
            slot: &mut Vec<T>,
            read: (Vec<T>, Known, Vec<LineError>),
        ) -> (usize, usize, Known, Vec<LineError>) {
            let (records, known, errors) = read;
            let before = std::mem::replace(slot, records).len();
            (before, slot.len(), known, errors)
        }
        let (before, after, known, errors) = match name {
            files::REGIONS => swap(&mut self.regions, read_file(path)?),
            files::CANDIDATES => swap(&mut self.candidates, read_file(path)?),
            files::MARKS => swap(&mut self.marks, read_file(path)?),
            _ => {
                let (records, known, errors) = read_file::<ScoreRecord>(path)?;
                let before = self.scores.len();
                self.scores = records
                    .into_iter()
                    .map(|s| (s.candidate_id.clone(), s))
                    .collect();
                (before, self.scores.len(), known, errors)
            }
        };
        self.disk.insert(name, known);
        Ok((before, after, errors))
    }
}
