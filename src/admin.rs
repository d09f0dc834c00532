//! One key at a time, for an operator (`tollgate inspect`, `tollgate delete`) or a gateway's
//! admin endpoint: what the store holds for a key or an idempotency record, and removing one
//! key's counters or one record (a support ticket: "a bad response was cached").
//!
//! Removal uses the protocol the compactor unlinks with: under the key's index stripe lock the
//! entry's state words are frozen (window words by their frozen bit, exact windows by their
//! meta word taken under the ring's lock, a record's state word by a compare-and-swap to
//! "dead"), then the entry leaves the index and its space goes back after the epoch. A check
//! racing with the removal either finished before the freeze (and is removed with the entry) or
//! meets the frozen word, looks the key up again and starts on a fresh entry; it is never lost
//! half-way.

use std::time::Duration;

use crate::error::Result;
use crate::idempotency::IdempotencyKey;
use crate::inspect::RecordState;
use crate::limit::Limits;
use crate::store::Store;

/// One sub-window of a sliding window, or one admitted request of an exact window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SubWindow {
    /// Start of the sub-window (sliding) or time of the request (exact), ms since the epoch.
    pub start_ms: u64,
    /// Requests counted in it (1 for an exact window's request).
    pub used: u32,
}

/// One window of a key, as [`Store::inspect_key`] reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyWindow {
    /// The window's length.
    pub window: Duration,
    /// Whether it is an exact (timestamp log) window.
    pub exact: bool,
    /// The limit: from the limits passed to [`Store::inspect_key`] (the window of the same
    /// length and mode), or an exact window's own capacity; `None` when neither tells (the
    /// file does not keep a bucketed window's limit).
    pub limit: Option<u32>,
    /// Units counted in the window now.
    pub used: u32,
    /// Units left (`limit - used`), when the limit is known.
    pub left: Option<u32>,
    /// When the window is back to its full limit (the newest counted request drops out), ms
    /// since the epoch; `now` for an empty window.
    pub reset_ms: u64,
    /// Sub-window length (sliding); zero for an exact window.
    pub sub_window: Duration,
    /// Sliding: every sub-window the window covers, newest first. Exact: every admitted
    /// request still in the window, oldest first.
    pub sub_windows: Vec<SubWindow>,
}

/// What the store holds for a rate-limit key ([`Store::inspect_key`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyReport {
    /// Byte offset of the key's entry in the file.
    pub offset: u64,
    /// The key's windows, in the order of its limits.
    pub windows: Vec<KeyWindow>,
}

/// What the store holds for an idempotency record ([`Store::inspect_record`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordReport {
    /// Byte offset of the record's entry in the file.
    pub offset: u64,
    /// Its state.
    pub state: RecordState,
    /// Fencing number of the current or last lease.
    pub fence: u32,
    /// Lease deadline (in flight) or expiry (completed), ms since the epoch; 0 otherwise.
    pub deadline_ms: u64,
    /// Status of the stored response (completed records whose response reads back).
    pub status: Option<u16>,
    /// Encoded size of the stored response (completed records).
    pub response_len: Option<u32>,
    /// True when past its deadline, or aborted: the key is free.
    pub expired: bool,
}

impl Store {
    /// Every window the store keeps for rate-limit `key` at `now_ms`: counts, reset times and
    /// the sub-window state. `limits` (the key's policy, if known) supplies the limits that
    /// the file does not keep. `None` if the store holds no counters for the key. Reads only.
    pub fn inspect_key(
        &self,
        key: &[u8],
        limits: Option<&Limits>,
        now_ms: u64,
    ) -> Result<Option<KeyReport>> {
        self.core.inspect_key(key, limits, now_ms)
    }

    /// The idempotency record of `key` in `scope` at `now_ms`, or `None` if the store holds
    /// none. Reads only.
    pub fn inspect_record(
        &self,
        scope: &[u8],
        key: &IdempotencyKey,
        now_ms: u64,
    ) -> Result<Option<RecordReport>> {
        self.core.inspect_record(scope, key, now_ms)
    }

    /// Remove every counter of rate-limit `key`: its next check starts from a fresh quota.
    /// Safe against checks of the same key running meanwhile (module docs). Returns whether
    /// the store held counters for the key.
    pub fn delete_key(&self, key: &[u8]) -> Result<bool> {
        self.core.delete_key(key)
    }

    /// Remove the idempotency record of `key` in `scope`, whatever its state: a cached
    /// response is forgotten (the next request with the key runs again), and a lease in flight
    /// is lost (its holder's `complete` fails with [`Error::LeaseLost`](crate::Error::LeaseLost)).
    /// Returns whether the store held the record.
    ///
    /// A record that is being completed at this instant is waited for, a bounded number of
    /// tries (no clock is read): a completion that has not finished by then fails the call
    /// with [`Error::Busy`](crate::Error::Busy) and nothing is changed. Call again shortly
    /// (an admin endpoint answers 503 with `Retry-After: 1`, say).
    pub fn delete_record(&self, scope: &[u8], key: &IdempotencyKey) -> Result<bool> {
        self.core.delete_record(scope, key)
    }
}
