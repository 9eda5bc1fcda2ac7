//! Atomic file and folder writes: the one implementation every writer in
//! the crate goes through (project stage files, run configs and events
//! rewrites, adapters, checkpoints, model folders).
//!
//! A file is written to a temporary name in the same folder, flushed to the
//! disk (`fsync`), renamed over the target, and the folder itself is synced
//! so that the rename survives a power cut. A process killed at any point
//! (SIGKILL included) leaves either the old file or the new one under the
//! final name, never half of one; at worst a hidden `.<name>.tmp-<pid>`
//! file stays behind, which readers never look at.
//!
//! Folders (checkpoints, model folders) are built under a temporary name
//! and renamed into place by [`commit_dir`], after every file in them has
//! been synced: a folder under its final name is complete.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

/// The temporary name a write to `path` goes through: a hidden file in the
/// same folder, unique per process.
pub fn temp_path(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    path.with_file_name(format!(".{name}.tmp-{}", std::process::id()))
}

/// The folder a file is in (`.` for a bare file name).
pub fn parent_dir(path: &Path) -> &Path {
    path.parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
}

/// Syncs a folder's entry list (where the platform allows opening a folder).
fn sync_dir(dir: &Path) {
    // Folders cannot be opened as files on every platform; the rename is
    // still atomic there, only its durability across a power cut is not
    // guaranteed, so a failure here is not an error.
    if let Ok(d) = fs::File::open(dir) {
        let _ = d.sync_all();
    }
}

/// Writes `bytes` to `path` atomically (see the module docs). The parent
/// folder is created when missing.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    write_atomic_with(path, |tmp| {
        let mut f = fs::File::create(tmp)?;
        f.write_all(bytes)
    })
}

/// Has `write` create the file at the temporary path it is given (for
/// writers that take a path, such as safetensors'), then syncs it and
/// renames it over `path`. On any error the temporary file is removed and
/// `path` is untouched.
pub fn write_atomic_with(
    path: &Path,
    write: impl FnOnce(&Path) -> std::io::Result<()>,
) -> std::io::Result<()> {
    let dir = parent_dir(path);
    fs::create_dir_all(dir)?;
    let tmp = temp_path(path);
    let result = (|| {
        write(&tmp)?;
        fs::OpenOptions::new().write(true).open(&tmp)?.sync_all()?;
        fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    } else {
        sync_dir(dir);
    }
    result
}

/// A fresh, empty temporary folder beside `dest`, to build a folder in
/// before [`commit_dir`] moves it into place.
pub fn temp_dir_for(dest: &Path) -> std::io::Result<PathBuf> {
    let tmp = temp_path(dest);
    if tmp.exists() {
        fs::remove_dir_all(&tmp)?;
    }
    fs::create_dir_all(&tmp)?;
    Ok(tmp)
}

fn sync_tree(dir: &Path) -> std::io::Result<()> {
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        let path = entry.path();
        if entry.file_type()?.is_dir() {
            sync_tree(&path)?;
        } else {
            fs::OpenOptions::new().write(true).open(&path)?.sync_all()?;
        }
    }
    sync_dir(dir);
    Ok(())
}

/// Moves the folder `tmp` (from [`temp_dir_for`]) to `dest` after syncing
/// every file in it. An existing `dest` is replaced: it is first renamed
/// aside and removed only once the new folder is in place, so a crash
/// leaves either folder under `dest`'s name or, for an instant, the old one
/// under its aside name.
pub fn commit_dir(tmp: &Path, dest: &Path) -> std::io::Result<()> {
    sync_tree(tmp)?;
    let aside = dest.with_file_name(format!(
        ".{}.old-{}",
        dest.file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default(),
        std::process::id()
    ));
    let had_old = dest.exists();
    if had_old {
        fs::rename(dest, &aside)?;
    }
    if let Err(e) = fs::rename(tmp, dest) {
        if had_old {
            let _ = fs::rename(&aside, dest);
        }
        return Err(e);
    }
    sync_dir(parent_dir(dest));
    if had_old {
        fs::remove_dir_all(&aside)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_is_replaced_and_no_temp_is_left() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/x.jsonl");
        write_atomic(&path, b"one").unwrap();
        write_atomic(&path, b"two").unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"two");
        assert_eq!(fs::read_dir(path.parent().unwrap()).unwrap().count(), 1);
    }

    #[test]
    fn a_failed_writer_leaves_the_old_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.bin");
        write_atomic(&path, b"old").unwrap();
        let err = write_atomic_with(&path, |tmp| {
            fs::write(tmp, b"half")?;
            Err(std::io::Error::other("writer failed"))
        })
        .unwrap_err();
        assert_eq!(err.to_string(), "writer failed");
        assert_eq!(fs::read(&path).unwrap(), b"old");
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn folders_are_committed_whole_and_replace_old_ones() {
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("checkpoint-3");
        for content in ["first", "second"] {
            let tmp = temp_dir_for(&dest).unwrap();
            fs::create_dir_all(tmp.join("adapter")).unwrap();
            fs::write(tmp.join("adapter/a.txt"), content).unwrap();
            commit_dir(&tmp, &dest).unwrap();
            assert!(!tmp.exists());
        }
        assert_eq!(
            fs::read_to_string(dest.join("adapter/a.txt")).unwrap(),
            "second"
        );
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
    }
}
