//! Three-way merge of a JSONL stage file, record by record: how the GUI
//! saves its edits without overwriting what another process added.
//!
//! The GUI keeps a stage file in memory and saves it whole after each
//! edit. Saving it blindly would drop every record a `spr generate` in a
//! terminal appended since the GUI last read the file. Instead a save is a
//! merge of three versions, keyed by each record's id:
//!
//! - `base`: the file as the GUI last read or saved it,
//! - `ours`: the GUI's new version (base plus its edit),
//! - `theirs`: the file on disk now.
//!
//! A record the GUI changed, added or deleted since `base` takes the
//! GUI's version; every other record is taken from disk as it is. So the
//! result is "what is on disk, with the GUI's edit applied": records
//! another process added, changed or deleted are kept that way. When both
//! changed the same record, the GUI's edit wins, except that a record the
//! GUI deleted but another process changed is kept (nothing lost). Lines
//! on disk that are not records (a bad line a user may want to fix) are
//! kept where they are.

use std::collections::{HashMap, HashSet};

/// The field that identifies a record in a stage file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MergeKey(pub &'static str);

impl MergeKey {
    /// The key of the records of stage file `name` (a name from
    /// [`super::files`]); `None` for files that are not merged.
    pub fn of(name: &str) -> Option<MergeKey> {
        use super::files;
        match name {
            files::REGIONS | files::CANDIDATES => Some(MergeKey("id")),
            files::SCORES => Some(MergeKey("candidate_id")),
            files::MARKS => Some(MergeKey("query_id")),
            _ => None,
        }
    }

    fn of_line(self, line: &[u8]) -> Option<String> {
        let v: serde_json::Value = serde_json::from_slice(line).ok()?;
        match v.get(self.0)? {
            serde_json::Value::String(s) => Some(s.clone()),
            other => Some(other.to_string()),
        }
    }
}

/// Non-blank lines of a JSONL text, without their newlines.
fn lines(text: &[u8]) -> impl Iterator<Item = &[u8]> {
    text.split(|&b| b == b'\n')
        .filter(|l| !l.iter().all(u8::is_ascii_whitespace))
}

fn keyed(text: &[u8], key: MergeKey) -> Vec<(Option<String>, &[u8])> {
    lines(text).map(|l| (key.of_line(l), l)).collect()
}

/// The result of [`merge_jsonl`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Merged {
    /// The merged file.
    pub bytes: Vec<u8>,
    /// Whether it differs from `ours` (another process's records were
    /// kept, so the GUI should reload the file).
    pub kept_theirs: bool,
}

/// Merges `ours` (an edit of `base`) into `theirs` (see the module docs).
pub fn merge_jsonl(base: &[u8], ours: &[u8], theirs: &[u8], key: MergeKey) -> Merged {
    if theirs == base {
        return Merged {
            bytes: ours.to_vec(),
            kept_theirs: false,
        };
    }
    let base: HashMap<String, &[u8]> = keyed(base, key)
        .into_iter()
        .filter_map(|(k, l)| Some((k?, l)))
        .collect();
    let ours = keyed(ours, key);
    let ours_by_key: HashMap<&str, &[u8]> = ours
        .iter()
        .filter_map(|(k, l)| Some((k.as_deref()?, *l)))
        .collect();
    let theirs = keyed(theirs, key);
    let mut out: Vec<&[u8]> = Vec::with_capacity(theirs.len() + 1);
    let mut seen: HashSet<&str> = HashSet::new();
    for (k, line) in &theirs {
        let Some(k) = k.as_deref() else {
            out.push(line);
            continue;
        };
        if !seen.insert(k) {
            continue;
        }
        match (base.get(k), ours_by_key.get(k)) {
            // We changed it: ours; else theirs as it is.
            (Some(b), Some(o)) => out.push(if o != b { o } else { line }),
            // We deleted it: gone, unless they changed it meanwhile.
            (Some(b), None) => {
                if line != b {
                    out.push(line);
                }
            }
            // Both added it: our edit wins.
            (None, Some(o)) => out.push(o),
            // They added it.
            (None, None) => out.push(line),
        }
    }
    for (k, line) in &ours {
        let Some(k) = k.as_deref() else { continue };
        if seen.contains(k) {
            continue;
        }
        match base.get(k) {
            // They deleted it: gone, unless we changed it meanwhile.
            Some(b) if b == line => {}
            _ => out.push(line),
        }
        seen.insert(k);
    }
    let mut bytes = Vec::with_capacity(out.iter().map(|l| l.len() + 1).sum());
    for l in out {
        bytes.extend_from_slice(l);
        bytes.push(b'\n');
    }
    let kept_theirs = bytes != ours_text(&ours);
    Merged { bytes, kept_theirs }
}

fn ours_text(ours: &[(Option<String>, &[u8])]) -> Vec<u8> {
    let mut v = Vec::new();
    for (_, l) in ours {
        v.extend_from_slice(l);
        v.push(b'\n');
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    const K: MergeKey = MergeKey("id");

    fn text(lines: &[&str]) -> Vec<u8> {
        lines
            .iter()
            .map(|l| format!("{l}\n"))
            .collect::<String>()
            .into_bytes()
    }

    fn merge(base: &[&str], ours: &[&str], theirs: &[&str]) -> (String, bool) {
        let m = merge_jsonl(&text(base), &text(ours), &text(theirs), K);
        (String::from_utf8(m.bytes).unwrap(), m.kept_theirs)
    }

    const A: &str = r#"{"id":"a","t":1}"#;
    const A2: &str = r#"{"id":"a","t":2}"#;
    const A3: &str = r#"{"id":"a","t":3}"#;
    const B: &str = r#"{"id":"b","t":1}"#;
    const C: &str = r#"{"id":"c","t":1}"#;
    const D: &str = r#"{"id":"d","t":1}"#;

    #[test]
    fn unchanged_disk_takes_ours_as_is() {
        let (m, kept) = merge(&[A, B], &[A2, B, C], &[A, B]);
        assert_eq!(m, String::from_utf8(text(&[A2, B, C])).unwrap());
        assert!(!kept);
    }

    #[test]
    fn records_appended_on_disk_survive_our_edit() {
        // The GUI changed a and added c; a terminal appended d meanwhile.
        let (m, kept) = merge(&[A, B], &[A2, B, C], &[A, B, D]);
        assert_eq!(m, String::from_utf8(text(&[A2, B, D, C])).unwrap());
        assert!(kept);
    }

    #[test]
    fn deletions_on_either_side_hold_unless_the_other_changed_the_record() {
        // We delete b; they change nothing: b goes.
        assert_eq!(
            merge(&[A, B], &[A], &[A, B, C]).0,
            String::from_utf8(text(&[A, C])).unwrap()
        );
        // We delete a; they changed it: their change is kept.
        assert_eq!(
            merge(&[A, B], &[B], &[A3, B]).0,
            String::from_utf8(text(&[A3, B])).unwrap()
        );
        // They deleted b, we left it: gone. They deleted a, we changed it: ours.
        assert_eq!(
            merge(&[A, B], &[A2, B], &[C]).0,
            String::from_utf8(text(&[C, A2])).unwrap()
        );
    }

    #[test]
    fn both_changed_the_same_record_ours_wins_and_bad_lines_stay() {
        let (m, _) = merge(&[A, B], &[A2, B], &[A3, "{not json", B]);
        assert_eq!(m, String::from_utf8(text(&[A2, "{not json", B])).unwrap());
    }

    #[test]
    fn keys_come_from_the_named_field() {
        let k = MergeKey::of(crate::core::project::files::SCORES).unwrap();
        let base = text(&[r#"{"candidate_id":"x","s":1}"#]);
        let ours = text(&[r#"{"candidate_id":"x","s":2}"#]);
        let theirs = text(&[
            r#"{"candidate_id":"x","s":1}"#,
            r#"{"candidate_id":"y","s":1}"#,
        ]);
        let m = merge_jsonl(&base, &ours, &theirs, k);
        assert_eq!(
            String::from_utf8(m.bytes).unwrap(),
            "{\"candidate_id\":\"x\",\"s\":2}\n{\"candidate_id\":\"y\",\"s\":1}\n"
        );
        assert_eq!(MergeKey::of(crate::core::project::files::PAIRS), None);
    }
}
