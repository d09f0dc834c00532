//! Open arbitrary bytes as a store file: a typed error or a working store, never a panic.
//!
//! The first input byte picks how the file is built from the rest (the payload), by its
//! value modulo 16:
//!
//! * `0..=4`: the payload is the whole file (mostly `Error::NotAStore`);
//! * `5`: a valid template store with the payload written over it from offset 64 (the unused
//!   rest of the header page, then segment 0);
//! * `6..=15`: the template with the payload written from the header (even) or from the first
//!   entry (odd, the segment header stays valid) of segment `(m - 6) / 2 % segments`.
//!
//! The template (built once, see [`build_template`]) has 64 KiB segments holding window
//! entries (`alpha` and `gamma`: 60/min + 1000/h; `beta`: exact 5/min), idempotency records (one
//! completed, one in flight) and the completed one's response record (a blob segment). A
//! payload longer than the template extends the file.
//!
//! The store is opened with the default options but without the background compactor (it
//! would run at its own time); `expire_now` and `compact_now` are called instead. After a
//! successful open the store must answer `peek_at` / `check_at` on fixed keys and `begin_at`
//! on the template's idempotency keys (each `Ok` or a typed error), `stats()` and
//! `open_report()`; then it is dropped and opened again, which must succeed with the same
//! number of corrupt segments (they are skipped, never reused) and, unless the first open found
//! a blank segment, no corrupt entry (the first open zeroed them).
//!
//! The logic is in `fuzz/models/open_bytes.rs`, which `tests/fuzz_regressions.rs` runs too.

#![no_main]

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

#[path = "../common/scratch.rs"]
mod scratch;

use libfuzzer_sys::fuzz_target;
use tollgate::{
    Begin, Decision, Fingerprint, IdempotencyKey, Limit, Limits, ManualClock, OpenReport, Options,
    Store, StoredResponse,
};

include!("../models/open_bytes.rs");

struct Env {
    _dir: tempfile::TempDir,
    path: PathBuf,
    template: Vec<u8>,
}

fn env() -> &'static Env {
    static ENV: OnceLock<Env> = OnceLock::new();
    ENV.get_or_init(|| {
        // tmpfs when there is one (the store syncs on open, and that is the slow part), and
        // what earlier runs left there removed: `scratch.rs`.
        let dir = scratch::scratch_dir();
        let path = dir.path().to_path_buf();
        let template = build_template(&path);
        Env {
            _dir: dir,
            path,
            template,
        }
    })
}

fuzz_target!(|data: &[u8]| {
    let env = env();
    let _ = run(data, &env.path, &env.template);
});
