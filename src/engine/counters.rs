//! The bookkeeping the store and the compactor share: what was expired, moved and recycled,
//! how many records are live, and where the next expiry pass resumes. Plain data with no
//! engine logic, so that the core can hold it without depending on the compactor.

use std::sync::atomic::{AtomicU64, Ordering};

/// Counters kept by the compactor and the store.
#[derive(Default)]
pub(crate) struct Counters {
    pub expired_windows: AtomicU64,
    pub expired_records: AtomicU64,
    pub expired_leases: AtomicU64,
    pub moved_records: AtomicU64,
    pub recycled_segments: AtomicU64,
    pub passes: AtomicU64,
    pub last_pass_ns: AtomicU64,
    /// Idempotency records in the index.
    pub live_records: AtomicU64,
}

impl Counters {
    pub(crate) fn records_live(&self) -> u64 {
        self.live_records.load(Ordering::Relaxed)
    }
}

/// Where the next pass resumes: segment and line within it.
#[derive(Default)]
pub(crate) struct Cursor {
    /// The segment.
    pub(crate) seg: usize,
    /// The line within it.
    pub(crate) line: u64,
}
