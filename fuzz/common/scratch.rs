//! Scratch directories for the fuzz targets that keep a store for their whole run.
//!
//! On tmpfs when there is one (the store syncs when it creates a file: the slow part on a
//! disk), named after the process, and the ones that runs now gone left behind removed first.
//! libFuzzer ends a run with `exit`, which drops no static, so a directory a target keeps in a
//! static (its template store) outlives the run: before this, every run left a few MB in
//! /dev/shm.

use std::path::{Path, PathBuf};

/// The start of every scratch directory's name; the process id follows, then `-` and
/// tempfile's random part.
const PREFIX: &str = "tollgate-fuzz-";

/// A fresh scratch directory for this process, after the ones of dead processes are removed.
pub fn scratch_dir() -> tempfile::TempDir {
    let base: PathBuf = if Path::new("/dev/shm").is_dir() {
        "/dev/shm".into()
    } else {
        std::env::temp_dir()
    };
    sweep(&base);
    tempfile::Builder::new()
        .prefix(&format!("{PREFIX}{}-", std::process::id()))
        .tempdir_in(&base)
        .expect("temp dir")
}

/// Remove the scratch directories in `base` of processes that no longer run. Only where
/// `/proc` tells which do: without it every process would look gone, and a fuzzing job's
/// sibling (`-jobs=N`) would lose its directory.
fn sweep(base: &Path) {
    if !Path::new("/proc/self").exists() {
        return;
    }
    let Ok(entries) = std::fs::read_dir(base) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name
            .to_str()
            .and_then(|n| n.strip_prefix(PREFIX))
            .and_then(|rest| rest.split('-').next())
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        if pid != std::process::id() && !Path::new(&format!("/proc/{pid}")).exists() {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}
