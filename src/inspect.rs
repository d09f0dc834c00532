//! Looking inside a store: every live entry, and a full verification. For tools (`tollgate
//! stat`, `dump`, `verify`) and operators; not on any request path. The views are defined
//! here; the engine fills them (`engine/inspect.rs`).

use std::time::Duration;

use crate::store::Store;

/// One window of a window entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WindowView {
    /// The window's length.
    pub window: Duration,
    /// Whether it is an exact (timestamp log) window.
    pub exact: bool,
    /// Units counted in it at the time of the visit.
    pub used: u32,
}

/// The state of an idempotency record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecordState {
    /// Aborted: the key is free.
    Vacant,
    /// A lease is out.
    InFlight,
    /// Completed: a response is stored.
    Completed,
    /// Being completed or replaced at this instant.
    Changing,
}

/// A live entry, as [`Store::visit`] shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EntryView<'a> {
    /// Sliding-window counters of one key.
    Windows {
        /// The key.
        key: &'a [u8],
        /// Its windows.
        windows: &'a [WindowView],
        /// True when every window has aged out (the compactor will unlink it).
        expired: bool,
    },
    /// An idempotency record.
    Idempotency {
        /// The scope (token or account).
        scope: &'a [u8],
        /// The Idempotency-Key.
        key: uuid::Uuid,
        /// Its state.
        state: RecordState,
        /// Fencing number of the current or last lease.
        fence: u32,
        /// Lease expiry (in flight) or record expiry (completed), ms since the Unix epoch.
        deadline_ms: u64,
        /// Encoded size of the stored response (completed records).
        response_len: Option<u32>,
        /// True when past its deadline (the compactor will unlink it).
        expired: bool,
    },
    /// A version (`If-Match`), see [`crate::Version`].
    Version {
        /// The key (a gateway's resource).
        key: &'a [u8],
        /// The entry's epoch.
        epoch: u64,
        /// The version number.
        number: u64,
    },
    /// The concurrency permits of one key, see [`crate::Permit`].
    Permits {
        /// The key (a gateway's token).
        key: &'a [u8],
        /// Permits held at the time of the visit.
        held: u32,
        /// The latest deadline among them (0 if none is held).
        latest_deadline_ms: u64,
        /// True when none is held (the compactor will unlink it).
        expired: bool,
    },
}

/// What [`Store::verify`] found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VerifyReport {
    /// Live entries checked.
    pub entries: u64,
    /// Stored responses read back and checked (crc32 and encoding).
    pub responses: u64,
    /// Problems, each with the byte offset in the file and what failed.
    pub problems: Vec<(u64, String)>,
}

impl Store {
    /// Call `f` for every live entry (entries the index reaches), as of `now_ms`.
    pub fn visit(&self, now_ms: u64, mut f: impl FnMut(EntryView<'_>)) {
        self.core.visit(now_ms, &mut f);
    }

    /// Check every live entry and read back every stored response. Entries that failed their
    /// checks when the store was opened are in [`Store::open_report`]; this finds what went
    /// wrong since (or in responses, which are only checked when replayed).
    ///
    /// Segments the file lost before it was opened ([`OpenReport::lost_segments`]) come first
    /// in [`VerifyReport::problems`], at the file's end.
    ///
    /// [`OpenReport::lost_segments`]: crate::OpenReport::lost_segments
    pub fn verify(&self) -> VerifyReport {
        self.verify_with(|_, _| {})
    }

    /// [`Store::verify`] with its position, for a progress bar over a large file:
    /// `progress(done, total)` is called after each segment, `done` going from 1 to `total`,
    /// the segments mapped when the check starts (response segments count too: their records
    /// are read back through the entries that point at them). Called once per segment (4 MiB
    /// by default), never per entry, so a cheap callback costs nothing measurable.
    pub fn verify_with(&self, mut progress: impl FnMut(u64, u64)) -> VerifyReport {
        let mut v = self.core.verify_with(&mut progress);
        let report = self.open_report();
        let lost = report.lost_segments;
        if lost > 0 {
            let stats = self.stats();
            let entries = match report.missing_entries {
                Some(n) => format!("{n} entries"),
                None => "their entries (how many is unknown: the store was not closed in \
                         good order)"
                    .to_string(),
            };
            v.problems.insert(
                0,
                (
                    stats.bytes,
                    format!(
                        "file lost {lost} segment(s) its header records ({} bytes): {entries} \
                         and their responses are gone",
                        lost * self.core.segs.seg_len()
                    ),
                ),
            );
        }
        v
    }
}
