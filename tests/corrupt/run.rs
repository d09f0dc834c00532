//! Running a damaged copy: open it every way, use it, open it again, and compare every step
//! with the case's exact expected outcome, on a thread of its own with a deadline, under an
//! allocator that records the largest allocation the thread makes.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::Path;
use std::sync::mpsc;
use std::time::Duration;

use super::*;
use tollgate::{Begin, Error, FileShape, OpenReport, Store};

// ---------------------------------------------------------------------------------------------
// The largest allocation of the current thread.
// ---------------------------------------------------------------------------------------------

struct Largest;

thread_local! {
    static LARGEST: Cell<usize> = const { Cell::new(0) };
}

fn note(size: usize) {
    let _ = LARGEST.try_with(|c| c.set(c.get().max(size)));
}

// SAFETY: every call is forwarded unchanged to the system allocator; the record is a
// const-initialized thread-local `Cell`, which never allocates.
unsafe impl GlobalAlloc for Largest {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        // SAFETY: the caller upholds `GlobalAlloc::alloc`'s contract, passed on as is.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        // SAFETY: as for `alloc`.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` was allocated by `System` with `layout`.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        note(new_size);
        // SAFETY: as for `dealloc`, and the caller upholds `realloc`'s contract.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Largest = Largest;

// ---------------------------------------------------------------------------------------------
// A case and its exact outcome.
// ---------------------------------------------------------------------------------------------

/// What `begin` on a record must answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rec {
    /// Its original response.
    Replays,
    /// `InFlight`.
    InFlight,
    /// The store does not know it: `begin` starts it again.
    Unknown,
    /// `Error::Corrupt`: its response cannot be trusted (and `verify` lists it).
    Refused,
    /// Loaded but over (expired or aborted): `begin` starts it again.
    Over,
}

/// What a damaged copy must give.
#[derive(Debug, Clone)]
pub struct Want {
    /// The open's outcome (the same for the read-only view and the writer): its report, or
    /// the name of its error variant.
    pub open: Result<OpenReport, &'static str>,
    /// Window keys that must read as never seen (all zero).
    pub lost_keys: Vec<&'static str>,
    /// What each record must answer.
    pub records: [Rec; RECORDS],
    /// Open with `Options::refuse_lost_segments`.
    pub refuse_lost: bool,
    /// Window keys that read other counts than they had (their own state words changed).
    pub counts: Vec<(&'static str, Vec<u32>)>,
    /// Entries an expiry sweep at `AT` unlinks (none of the fixture's has expired).
    pub expires: u64,
}

impl Want {
    /// Opens with no damage found.
    pub fn clean() -> Want {
        Want {
            open: Ok(OpenReport {
                entries: ENTRIES,
                ..OpenReport::default()
            }),
            lost_keys: Vec::new(),
            records: [Rec::Replays, Rec::Replays, Rec::Replays, Rec::InFlight],
            refuse_lost: false,
            counts: Vec::new(),
            expires: 0,
        }
    }

    pub fn err(kind: &'static str) -> Want {
        Want {
            open: Err(kind),
            ..Want::clean()
        }
    }

    pub fn report(mut self, f: impl FnOnce(&mut OpenReport)) -> Want {
        if let Ok(r) = &mut self.open {
            f(r);
        }
        self
    }

    /// `keys` and `records` are not loaded; `corrupt` entries are counted.
    pub fn skipped(mut self, keys: &[&'static str], records: &[usize], corrupt: u64) -> Want {
        self.lost_keys.extend_from_slice(keys);
        for &i in records {
            self.records[i] = Rec::Unknown;
        }
        let gone = (keys.len() + records.len()) as u64;
        self.report(|r| {
            r.entries -= gone;
            r.corrupt_entries += corrupt;
        })
    }

    /// One corrupt entry: window key `key`.
    pub fn lose_key(key: &'static str) -> Want {
        Want::clean().skipped(&[key], &[], 1)
    }

    /// One corrupt entry: record `i`.
    pub fn lose_record(i: usize) -> Want {
        Want::clean().skipped(&[], &[i], 1)
    }

    /// Record `i` is loaded, but its response is refused.
    pub fn bad(i: usize) -> Want {
        let mut w = Want::clean();
        w.records[i] = Rec::Refused;
        w
    }
}

pub struct Case {
    pub what: String,
    pub bytes: Vec<u8>,
    pub want: Want,
}

/// A copy of the fixture edited by `edit`.
pub fn case(
    what: impl Into<String>,
    want: Want,
    edit: impl FnOnce(&mut Vec<u8>, &FileMap),
) -> Case {
    let f = fixture();
    let mut bytes = f.bytes.clone();
    edit(&mut bytes, &f.map);
    Case {
        what: what.into(),
        bytes,
        want,
    }
}

pub fn kind(e: &Error) -> &'static str {
    match e {
        Error::NotAStore { .. } => "NotAStore",
        Error::UnsupportedVersion { .. } => "UnsupportedVersion",
        Error::Corrupt { .. } => "Corrupt",
        Error::Truncated { .. } => "Truncated",
        Error::Io(_) => "Io",
        _ => "other",
    }
}

/// The exact outcome of every window key and record in `store`; the writer (`begin` too)
/// starts the unknown records again.
pub fn check_contents(store: &Store, want: &Want, writer: bool) -> Result<(), String> {
    let f = fixture();
    for (key, original) in KEYS.iter().zip(&f.counts) {
        let got = counts(store, key).map_err(|e| format!("peek {key}: {e:?}"))?;
        let lost = want.lost_keys.contains(key);
        let changed = want
            .counts
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, c)| c.clone());
        let expect = match changed {
            Some(c) => c,
            None if lost => vec![0; original.len()],
            None => original.clone(),
        };
        if got != expect {
            return Err(format!("{key} counts {got:?}, want {expect:?}"));
        }
        let seen = store
            .inspect_key(key.as_bytes(), None, AT)
            .map_err(|e| format!("{e:?}"))?;
        if seen.is_some() == lost {
            return Err(format!("inspect_key {key}: {seen:?}"));
        }
    }
    for (i, &rec) in want.records.iter().enumerate() {
        let seen = store
            .inspect_record(SCOPE, &idem_key(i), AT)
            .map_err(|e| format!("{e:?}"))?;
        if seen.is_some() == (rec == Rec::Unknown) {
            return Err(format!("inspect_record {i}: {seen:?}"));
        }
        if !writer {
            continue;
        }
        let got = store.begin_at(SCOPE, &idem_key(i), &fp(i), AT);
        let ok = match (&got, rec) {
            (Ok(Begin::Replay(r)), Rec::Replays) => *r == response(i),
            (Ok(Begin::InFlight), Rec::InFlight) => true,
            (Ok(Begin::Started(_)), Rec::Unknown | Rec::Over) => true,
            (Err(Error::Corrupt { .. }), Rec::Refused) => true,
            _ => false,
        };
        if !ok {
            return Err(format!("record {i}: {got:?}, want {rec:?}"));
        }
    }
    Ok(())
}

/// Open, use, and open again the damaged file at `path`.
pub fn examine(path: &Path, want: &Want) -> Result<(), String> {
    // The fixture was closed holding `ENTRIES` entries, and its census says so: every entry a
    // case expects the open not to load is one it must report missing.
    let mut want = want.clone();
    if let Ok(r) = &mut want.open {
        r.missing_entries = Some(ENTRIES.saturating_sub(r.entries));
    }
    let want = &want;
    let opts = || opts(AT).refuse_lost_segments(want.refuse_lost);
    // The shape is the header's: it knows nothing of the segment count.
    let shape = FileShape::of(path);
    let view = Store::open_read_only(path, opts());
    let shape_kind = shape.as_ref().map_or_else(kind, |_| "Truncated");
    match (&want.open, &shape, &view) {
        (Err(k), _, Err(v)) if shape_kind == *k && kind(v) == *k => {
            return match Store::open(path, opts()) {
                Err(e) if kind(&e) == *k => Ok(()),
                other => Err(format!("open: {:?}", other.map(|s| s.open_report()))),
            };
        }
        (Ok(r), Ok(_), Ok(v)) if v.open_report() == *r => check_contents(v, want, false)?,
        _ => {
            let view = view.map(|v| v.open_report());
            return Err(format!("shape {shape:?}, read-only open {view:?}"));
        }
    }
    drop(view);
    let store = Store::open(path, opts()).map_err(|e| format!("open: {e:?}"))?;
    let first = store.open_report();
    if Ok(first) != want.open {
        return Err(format!("open report {first:?}"));
    }
    let entries = store.stats().entries;
    let mut visited = 0;
    store.visit(AT, |_| visited += 1);
    let v = store.verify();
    // Lost segments come first in verify's problems, then each response it cannot read.
    let refused = want.records.iter().filter(|&&r| r == Rec::Refused).count()
        + usize::from(first.lost_segments > 0);
    if visited != entries || v.entries != entries || v.problems.len() != refused {
        return Err(format!("visit {visited}, verify {v:?}, {entries} entries"));
    }
    check_contents(&store, want, true)?;
    // Response space in use is counted from the file, never from a damaged length.
    let stats = store.stats();
    let lines = stats.bytes / LINE as u64;
    if stats.blob_used_lines > lines || stats.blob_live_lines > lines {
        return Err(format!("response lines in use past the file: {stats:?}"));
    }
    // New writes: a key, and a record with a response, which must not land on a live one.
    // The records started again above are in flight now.
    let new = limits("win-0");
    let d = store
        .check_at(b"new-key", &new, 2, AT)
        .map_err(|e| format!("{e:?}"))?;
    let lease = match store.begin_at(SCOPE, &idem_key(9), &fp(9), AT) {
        Ok(Begin::Started(lease)) if d.allowed() => lease,
        other => return Err(format!("new writes: {d:?}, {other:?}")),
    };
    store
        .complete_at(&lease, &response(3), AT)
        .map_err(|e| format!("{e:?}"))?;
    let mut after = want.clone();
    for r in after
        .records
        .iter_mut()
        .filter(|r| matches!(r, Rec::Unknown | Rec::Over))
    {
        *r = Rec::InFlight;
    }
    check_contents(&store, &after, true).map_err(|e| format!("after new writes: {e}"))?;
    // Nothing has expired yet. Records 1 and 2 go, and compaction moves record 0 (its
    // segment is then mostly dead).
    let swept = store.expire_now(AT);
    if swept.expired != want.expires {
        return Err(format!("expiry sweep {swept:?}"));
    }
    for i in [1, 2] {
        store
            .delete_record(SCOPE, &idem_key(i))
            .map_err(|e| format!("{e:?}"))?;
    }
    store.compact_now();
    after.records[1] = Rec::Unknown;
    after.records[2] = Rec::Unknown;
    store.close().map_err(|e| format!("close: {e:?}"))?;
    let again = Store::open(path, opts()).map_err(|e| format!("reopen: {e:?}"))?;
    let r = again.open_report();
    // What the first open found is gone (corrupt entries were zeroed, the count word written
    // again, duplicates freed), but corrupt segments stay skipped.
    if r.corrupt_entries != 0
        || r.duplicates != 0
        || r.lost_segments != 0
        || r.segment_count_damaged
        || r.corrupt_segments != first.corrupt_segments
    {
        return Err(format!("reopen report {r:?} after {first:?}"));
    }
    let used = again
        .peek_at(b"new-key", &new, AT)
        .map_err(|e| format!("{e:?}"))?;
    if used.windows()[0].used() != 2 {
        return Err(format!("new key after reopen: {used:?}"));
    }
    match again.begin_at(SCOPE, &idem_key(9), &fp(9), AT) {
        Ok(Begin::Replay(r)) if r == response(3) => {}
        other => return Err(format!("new record after reopen: {other:?}")),
    }
    check_contents(&again, &after, true).map_err(|e| format!("after reopen: {e}"))
}

/// Run every case, each on its own thread with a deadline; fail with the list of cases that
/// went wrong.
pub fn run(cases: Vec<Case>) {
    let dir = &fixture().dir;
    let n = cases.len();
    let mut failed = Vec::new();
    for (i, c) in cases.into_iter().enumerate() {
        let path = dir.join(format!(
            "{}-{i}.tg",
            std::thread::current().name().unwrap_or("t")
        ));
        std::fs::write(&path, &c.bytes).expect("write the damaged copy");
        let (tx, rx) = mpsc::channel();
        let (p, want, limit) = (path.clone(), c.want.clone(), c.bytes.len());
        std::thread::spawn(move || {
            LARGEST.with(|l| l.set(0));
            let r = catch_unwind(AssertUnwindSafe(|| examine(&p, &want))).unwrap_or_else(|e| {
                let msg = e.downcast_ref::<String>().cloned();
                let msg = msg.or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()));
                Err(format!("panicked: {}", msg.unwrap_or_default()))
            });
            let _ = tx.send((r, LARGEST.with(Cell::get), limit));
        });
        match rx.recv_timeout(Duration::from_secs(60)) {
            Ok((Ok(()), largest, limit)) if largest <= limit => {}
            Ok((Ok(()), largest, limit)) => {
                failed.push(format!(
                    "{}: allocated {largest} bytes, file {limit}",
                    c.what
                ));
            }
            Ok((Err(e), _, _)) => failed.push(format!("{}: {e}", c.what)),
            Err(_) => failed.push(format!("{}: still running after 60 s", c.what)),
        }
        let _ = std::fs::remove_file(&path);
    }
    assert!(
        failed.is_empty(),
        "{} of {n} cases failed:\n{}",
        failed.len(),
        failed.join("\n")
    );
}
