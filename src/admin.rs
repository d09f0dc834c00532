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

use std::sync::atomic::Ordering;
use std::time::Duration;

use crate::error::{Error, Result};
use crate::format::{SegmentHeader, KIND_IDEM, KIND_WINDOWS};
use crate::idempotency::engine::{
    pack, unpack, IdemLayout, ST_COMPLETING, ST_DEAD, ST_DONE, ST_INFLIGHT,
};
use crate::idempotency::{record_key, IdempotencyKey};
use crate::inspect::RecordState;
use crate::limit::{Descriptor, Limits, Mode};
use crate::store::{check_key, Core, Store};
use crate::window::{self, cell, Geometry, FROZEN};

/// One sub-window of a bucketed window, or one admitted request of an exact window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SubWindow {
    /// Start of the sub-window (bucketed) or time of the request (exact), ms since the epoch.
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
    /// Sub-window length (bucketed); zero for an exact window.
    pub sub_window: Duration,
    /// Bucketed: every sub-window the window covers, newest first. Exact: every admitted
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
        check_key(key)?;
        let core = &self.core;
        let guard = crossbeam_epoch::pin();
        let hash = core.hasher.hash_one(key);
        let Some(line) = core.find_kind(hash, key, KIND_WINDOWS, &guard) else {
            return Ok(None);
        };
        let offset = core.segs.file_offset(line);
        let e = core.segs.entry(line);
        let slots = window_slots(core, line)?;
        let seen_ms = core.seen_ms(now_ms);
        let mut windows = Vec::with_capacity(slots.len());
        for (at, d) in slots {
            let given = limits.and_then(|ls| {
                ls.as_slice()
                    .iter()
                    .find(|l| l.window_ms() == d.window_ms && (l.mode() == Mode::Exact) == d.exact)
                    .map(|l| l.limit())
            });
            let mut w = KeyWindow {
                window: Duration::from_millis(d.window_ms),
                exact: d.exact,
                limit: given,
                used: 0,
                left: None,
                reset_ms: now_ms,
                sub_window: Duration::ZERO,
                sub_windows: Vec::new(),
            };
            if d.exact {
                let ring = cell::read_ring(|k| e.w(k), at, d.cap);
                let ev = ring.eval(d.window_ms, now_ms);
                let times = ev.times.get(..ev.len as usize).unwrap_or(&[]);
                w.limit = w.limit.or(Some(d.cap));
                w.used = ev.len;
                w.reset_ms = times
                    .last()
                    .map_or(now_ms, |t| t.saturating_add(d.window_ms));
                w.sub_windows = times
                    .iter()
                    .map(|&t| SubWindow {
                        start_ms: t,
                        used: 1,
                    })
                    .collect();
            } else {
                let word = e.load(at) & !FROZEN;
                let c = ((word >> 32) & 0xF) as u32 + 1;
                let geo = Geometry::new(c, core.kmax, d.window_ms);
                let norm =
                    window::normalize_with(word, &geo, d.window_ms, core.kmax, now_ms, seen_ms);
                w.used = norm.total();
                w.reset_ms = norm.reset_ms(now_ms);
                w.sub_window = Duration::from_millis(norm.s);
                w.sub_windows = (0..norm.k)
                    .map(|age| SubWindow {
                        start_ms: norm.n.saturating_sub(u64::from(age)).saturating_mul(norm.s),
                        used: norm.field(age),
                    })
                    .collect();
            }
            w.left = w.limit.map(|l| l.saturating_sub(w.used));
            windows.push(w);
        }
        Ok(Some(KeyReport { offset, windows }))
    }

    /// The idempotency record of `key` in `scope` at `now_ms`, or `None` if the store holds
    /// none. Reads only.
    pub fn inspect_record(
        &self,
        scope: &[u8],
        key: &IdempotencyKey,
        now_ms: u64,
    ) -> Result<Option<RecordReport>> {
        let rk = record_key(scope, key)?;
        let k = rk.as_bytes();
        let core = &self.core;
        let guard = crossbeam_epoch::pin();
        let Some(line) = core.find_kind(core.hasher.hash_one(k), k, KIND_IDEM, &guard) else {
            return Ok(None);
        };
        let l = IdemLayout::new(k.len());
        let e = core.segs.entry(line);
        let (st, fence, dl) = unpack(e.load(l.state_at));
        let state = match st {
            ST_DONE => RecordState::Completed,
            ST_INFLIGHT => RecordState::InFlight,
            ST_COMPLETING | ST_DEAD => RecordState::Changing,
            _ => RecordState::Vacant,
        };
        let deadline_ms = dl.saturating_mul(1000);
        let done = st == ST_DONE;
        Ok(Some(RecordReport {
            offset: core.segs.file_offset(line),
            state,
            fence,
            deadline_ms,
            status: if done {
                core.read_response_at(line).ok().map(|r| r.status())
            } else {
                None
            },
            response_len: done.then(|| (e.load(l.state_at + 2) & 0xFFFF_FFFF) as u32),
            expired: state == RecordState::Vacant
                || (matches!(state, RecordState::InFlight | RecordState::Completed)
                    && now_ms >= deadline_ms),
        }))
    }

    /// Remove every counter of rate-limit `key`: its next check starts from a fresh quota.
    /// Safe against checks of the same key running meanwhile (module docs). Returns whether
    /// the store held counters for the key.
    pub fn delete_key(&self, key: &[u8]) -> Result<bool> {
        check_key(key)?;
        let core = &self.core;
        let guard = crossbeam_epoch::pin();
        let hash = core.hasher.hash_one(key);
        let mut lock = core.index.lock(hash);
        let Some(line) = core.find_kind(hash, key, KIND_WINDOWS, &guard) else {
            return Ok(false);
        };
        let slots = window_slots(core, line)?;
        let e = core.segs.entry(line);
        // Freeze every window, as a move does: from here on no check counts in this entry.
        for (at, d) in &slots {
            if let Some(w) = e.w(*at) {
                if d.exact {
                    // `false` means frozen already; otherwise the ring's lock is ours, so no
                    // check is half-way through the ring when it freezes.
                    if cell::lock_meta(w) {
                        w.fetch_or(cell::META_FROZEN, Ordering::AcqRel);
                        cell::unlock_meta(w);
                    }
                } else {
                    cell::freeze(w);
                }
            }
        }
        let lines = entry_lines(core, line)?;
        lock.remove(hash, line, &guard);
        core.clear_entry(line);
        core.live_entries.fetch_sub(1, Ordering::Relaxed);
        core.segs.release_later(line, lines, &guard);
        Ok(true)
    }

    /// Remove the idempotency record of `key` in `scope`, whatever its state: a cached
    /// response is forgotten (the next request with the key runs again), and a lease in flight
    /// is lost (its holder's `complete` fails with [`Error::LeaseLost`]). Returns whether the
    /// store held the record. A record that is being completed at this instant is waited for.
    pub fn delete_record(&self, scope: &[u8], key: &IdempotencyKey) -> Result<bool> {
        let rk = record_key(scope, key)?;
        let k = rk.as_bytes();
        let core = &self.core;
        let guard = crossbeam_epoch::pin();
        let hash = core.hasher.hash_one(k);
        let l = IdemLayout::new(k.len());
        let mut spins = 0u32;
        loop {
            let mut lock = core.index.lock(hash);
            let Some(line) = core.find_kind(hash, k, KIND_IDEM, &guard) else {
                return Ok(false);
            };
            let e = core.segs.entry(line);
            let Some(w) = e.w(l.state_at) else {
                return Err(Error::Corrupt {
                    offset: core.segs.file_offset(line),
                    reason: "idempotency entry outside its segment",
                });
            };
            let s = w.load(Ordering::Acquire);
            let (state, fence, dl) = unpack(s);
            // A completion in progress finishes in a few instructions: let it, then remove.
            if state == ST_COMPLETING
                || w.compare_exchange(
                    s,
                    pack(ST_DEAD, fence, dl),
                    Ordering::AcqRel,
                    Ordering::Acquire,
                )
                .is_err()
            {
                drop(lock);
                spins += 1;
                if spins > 1000 {
                    std::thread::yield_now();
                }
                continue;
            }
            if state == ST_DONE {
                core.record_blob_dead(&e, &l);
            }
            lock.remove(hash, line, &guard);
            core.clear_entry(line);
            core.live_entries.fetch_sub(1, Ordering::Relaxed);
            core.counters.live_records.fetch_sub(1, Ordering::Relaxed);
            core.segs.release_later(line, l.lines, &guard);
            return Ok(true);
        }
    }
}

/// The windows of the window entry at `line`: (first state word, descriptor) each.
fn window_slots(core: &Core, line: u64) -> Result<Vec<(usize, Descriptor)>> {
    let e = core.segs.entry(line);
    let h = e.load(0);
    let n = ((h >> 8) & 0xFF) as usize;
    let key_len = (h & 0xFF) as usize;
    let mut at = 1 + n.div_ceil(2) + key_len.div_ceil(8);
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        let d = Descriptor::decode((e.load(1 + i / 2) >> ((i % 2) * 32)) as u32).ok_or(
            Error::Corrupt {
                offset: core.segs.file_offset(line),
                reason: "window descriptor",
            },
        )?;
        out.push((at, d));
        at += d.words();
    }
    Ok(out)
}

/// The size class (lines per entry) of the segment holding `line`.
fn entry_lines(core: &Core, line: u64) -> Result<u32> {
    let seg = core.segs.seg_of(line);
    match SegmentHeader::decode(&core.segs.read_segment_header(seg), seg as u32) {
        Ok(Some(h)) => Ok(h.entry_lines),
        _ => Err(Error::Corrupt {
            offset: core.segs.file_offset(line),
            reason: "segment header",
        }),
    }
}
