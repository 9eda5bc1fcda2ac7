//! Helpers shared by the integration tests.
#![allow(dead_code)]

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The bundled demo project.
pub fn demo_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("assets/demo")
}

/// Copies a folder tree (an `export/` folder is left out: tests make
/// their own; so are the lock files a window or run left in the source).
pub fn copy_dir(from: &Path, to: &Path) {
    fs::create_dir_all(to).unwrap();
    for entry in fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            if entry.file_name() != "export" && entry.file_name() != ".spr-locks" {
                copy_dir(&entry.path(), &target);
            }
        } else {
            fs::copy(entry.path(), target).unwrap();
        }
    }
}

/// Runs the `spr` binary.
pub fn spr(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_spr"))
        .args(args)
        .output()
        .expect("spr runs")
}
