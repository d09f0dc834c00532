//! Set structured fields of a valid store file to chosen values, recompute its checksums, and
//! open it: a typed error or a working store, never a panic.
//!
//! The input is a list of up to four edits, each a field (a 32-bit field of the file header, the
//! segment-count word, the newest-time word, a segment header field, a word or half-word of one
//! of the template's entries, or of its response record) and a value (zero, one, all bits set,
//! the old value plus or minus a little, a line number past the file, the line of the edited
//! entry itself, or any value), and whether to leave the checksums stale. Unless they are left
//! stale, every checksum the store checks is recomputed over what the fields now say (the file
//! header's, the segment-count word's, each segment header's, each entry's, the response's in
//! its record and in its entry), so that the edits reach the code that parses the fields,
//! which `open_bytes` reaches only by chance.
//!
//! The file is opened as a read-only view (verify, visit, inspect every key and record; the
//! space in use never exceeds the file) and then, with `open_bytes`'s `exercise`, as the writer:
//! checks, records, expiry, compaction and a second open. Both opens must agree.
//!
//! The template and `exercise` are `fuzz/models/open_bytes.rs`; the edits are
//! `fuzz/models/open_fields.rs`. `tests/fuzz_regressions.rs` runs both models too.

#![no_main]
// `open_bytes`'s model is included for its template and `exercise`; its input builder and
// runner are not used here.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

#[path = "../common/scratch.rs"]
mod scratch;

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use tollgate::{
    Begin, Decision, Fingerprint, IdempotencyKey, Limit, Limits, ManualClock, OpenReport, Options,
    Store, StoredResponse,
};

include!("../models/open_bytes.rs");
include!("../models/open_fields.rs");

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

fuzz_target!(|input: FieldInput| {
    let env = env();
    let _ = run_fields(&input, &env.path, &env.template);
});
