//! Expiry: unlink what is past its window or TTL, so its space can be reused. The compactor
//! thread (`compactor.rs`) runs these passes; `Store::expire_now` runs one full sweep.
//!
//! * **Expiry**: a window entry whose every window has fully elapsed since its last request
//!   (it is indistinguishable from a key never seen), an idempotency record past its TTL, an
//!   in-flight lease past its timeout, and an aborted record are unlinked from the index; their
//!   space returns to the free lists once every reader that might still hold them has finished
//!   (crossbeam-epoch). Reads never depend on this: an expired window reads as empty and an
//!   expired record as free, whether the compactor has reached them or not.
//!   A concurrency permit entry none of whose permits is held is unlinked the same way (its
//!   slots frozen by compare-and-swaps, `engine/permits.rs`); version entries never expire.
//! * **Bounded work**: a pass examines at most `budget` entries from a cursor that resumes
//!   where the last pass stopped; like Redis's active expiry, the thread runs another pass at
//!   once while passes keep finding many expired entries, and otherwise sleeps. The only lock
//!   a pass takes is one index stripe, for the few instructions of one unlink.
//! * **Unlinking without losing a request**: under the stripe lock every state word of the
//!   entry is frozen by a compare-and-swap that succeeds only if the word is unchanged and
//!   still expired; a concurrent check that updated a word makes the freeze fail (the entry
//!   stays), and a check that meets a frozen word looks the key up again and starts afresh.

use std::sync::atomic::Ordering;
use std::time::Instant;

use super::core::Core;
use super::counters::Cursor;
use super::entry::{entry_windows, sliding_window};
use crate::idempotency::record::{
    pack, unpack, IdemLayout, ST_DEAD, ST_DONE, ST_INFLIGHT, ST_VACANT,
};
use crate::limit::Descriptor;
use crate::storage::format::{
    EntryHeader, SegmentHeader, BLOB_SEGMENT, KIND_IDEM, KIND_PERMITS, KIND_WINDOWS,
};
use crate::storage::segment::Entry;
use crate::window::{cell, sliding, At};

/// What one expiry pass did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PassReport {
    /// Entries looked at.
    pub examined: u64,
    /// Entries unlinked (their space is reused after the epoch).
    pub expired: u64,
    /// Whether the pass reached the end of the store (and wrapped to the start).
    pub wrapped: bool,
}

impl Core {
    /// Start the next pass from the beginning of the store.
    pub(crate) fn reset_cursor(&self) {
        *self.cursor.lock() = Cursor::default();
    }

    /// Examine up to `budget` entries from the cursor and unlink the expired ones.
    pub(crate) fn expire_pass(&self, now_ms: u64, budget: u64) -> PassReport {
        let start = Instant::now();
        let mut report = PassReport::default();
        let mut cur = self.cursor.lock();
        let seg_lines = self.segs.seg_lines();
        while report.examined < budget {
            let count = self.segs.count();
            if count == 0 {
                break;
            }
            if cur.seg >= count {
                // The end of the store: start over next pass.
                cur.seg = 0;
                cur.line = 0;
                report.wrapped = true;
                break;
            }
            let header =
                SegmentHeader::decode(&self.segs.read_segment_header(cur.seg), cur.seg as u32);
            let class = match header {
                Ok(Some(h)) if h.entry_lines != BLOB_SEGMENT => u64::from(h.entry_lines),
                _ => {
                    cur.seg += 1;
                    cur.line = 0;
                    continue;
                }
            };
            if cur.line < 1 {
                cur.line = 1;
            }
            let end = self.segs.scan_end(cur.seg);
            let guard = crossbeam_epoch::pin();
            let mut freed = Vec::new();
            while cur.line + class <= end && report.examined < budget {
                let line = cur.seg as u64 * seg_lines + cur.line;
                cur.line += class;
                report.examined += 1;
                if self.try_expire(line, now_ms, &guard) {
                    report.expired += 1;
                    freed.push((line, class as u32));
                }
            }
            // One deferred release for the whole run of lines, not one per line: whichever
            // thread next collects the epoch's garbage runs it, and that is often a thread in
            // the middle of a check.
            self.segs.release_all_later(freed, &guard);
            if cur.line + class > end {
                cur.seg += 1;
                cur.line = 0;
            }
        }
        drop(cur);
        if report.expired > 0 {
            // Hand the unlinked entries to the epoch now, so their space comes back soon.
            crossbeam_epoch::pin().flush();
            self.segs.reclaim();
        }
        self.counters.passes.fetch_add(1, Ordering::Relaxed);
        self.counters
            .last_pass_ns
            .store(start.elapsed().as_nanos() as u64, Ordering::Relaxed);
        report
    }

    /// Unlink the entry at `line` if it is expired at `now_ms`. On `true` the caller hands the
    /// line to the epoch ([`Segments::release_all_later`](crate::storage::segment::Segments)).
    fn try_expire(&self, line: u64, now_ms: u64, guard: &crossbeam_epoch::Guard) -> bool {
        let e = self.segs.entry(line);
        let head = e.load(0);
        if head == 0 {
            return false;
        }
        let h = EntryHeader::decode(head);
        let key_len = h.key_len;
        match h.kind {
            KIND_WINDOWS => {
                let Some(windows) = entry_windows(&e, self.b) else {
                    return false;
                };
                if !windows.iter().all(|w| self.slot_expired(&e, w, now_ms)) {
                    return false;
                }
                self.unlink_window(line, &windows, now_ms, guard)
            }
            KIND_IDEM => self.unlink_record(line, key_len, now_ms, guard),
            // Every permit ended or released.
            KIND_PERMITS => self.unlink_permits(line, key_len, now_ms, guard),
            // Versions never expire (`engine/versions.rs` says why).
            _ => false,
        }
    }

    fn slot_expired(&self, e: &Entry<'_>, slot: &(At, Descriptor), now_ms: u64) -> bool {
        let (at, d) = *slot;
        if d.exact {
            // A first look without the lock; the freeze looks again under it.
            let meta = e.load(at.head);
            if meta & (cell::META_LOCK | cell::META_FROZEN) != 0 {
                return false; // locked or moving: look again next time
            }
            cell::ring_expired(&|k| e.w(k), at.head, d.cap, d.window_ms, now_ms)
        } else {
            // A first look; the freeze judges again on the words it freezes.
            let Some(geo) = d.slide(self.b) else {
                return false;
            };
            match sliding_window(e, at, &geo) {
                Some(win) => {
                    let snap = sliding::snapshot(&win, &geo);
                    !snap.frozen() && snap.expired(&geo, now_ms)
                }
                None => false,
            }
        }
    }

    fn unlink_window(
        &self,
        line: u64,
        windows: &[(At, Descriptor)],
        now_ms: u64,
        guard: &crossbeam_epoch::Guard,
    ) -> bool {
        let hash = self.rehash(line);
        let mut lock = self.index.lock(hash);
        let e = self.segs.entry(line);
        if !self.index_points_at(line, KIND_WINDOWS, guard) {
            return false;
        }
        // Freeze every window, each only if it is unchanged and still expired.
        let mut frozen = 0usize;
        let mut ok = true;
        for slot in windows {
            let (at, d) = *slot;
            if d.exact {
                // Under the ring's lock; the entry's first exact window comes first, and its
                // lock is the one requests take for every ring of the entry.
                if !cell::freeze_ring_if_expired(|k| e.w(k), at.head, d.cap, d.window_ms, now_ms) {
                    ok = false;
                    break;
                }
            } else {
                let win = d
                    .slide(self.b)
                    .and_then(|geo| Some((sliding_window(&e, at, &geo)?, geo)));
                match win {
                    Some((win, geo)) if sliding::freeze_if_expired(&win, &geo, now_ms) => {}
                    _ => {
                        ok = false;
                        break;
                    }
                }
            }
            frozen += 1;
        }
        if !ok {
            for (at, d) in windows.iter().take(frozen) {
                if d.exact {
                    if let Some(w) = e.w(at.head) {
                        cell::thaw_meta(w);
                    }
                } else if let Some(win) = d
                    .slide(self.b)
                    .and_then(|geo| sliding_window(&e, *at, &geo))
                {
                    sliding::thaw(&win);
                }
            }
            return false;
        }
        lock.remove(hash, line, guard);
        // A reader that still holds the line finds no key in it (and looks again); a reopen
        // does not bring it back. The rest of the entry stays until the space is reused.
        self.clear_entry(line);
        self.live_entries.fetch_sub(1, Ordering::Relaxed);
        // The caller hands `line` to the epoch.
        self.counters
            .expired_windows
            .fetch_add(1, Ordering::Relaxed);
        true
    }

    pub(crate) fn unlink_record(
        &self,
        line: u64,
        key_len: usize,
        now_ms: u64,
        guard: &crossbeam_epoch::Guard,
    ) -> bool {
        let l = IdemLayout::new(key_len);
        let e = self.segs.entry(line);
        let Some(w) = e.w(l.state_at) else {
            return false;
        };
        let expired = |s: u64| {
            let (state, _, dl) = unpack(s);
            match state {
                ST_VACANT => true,
                ST_INFLIGHT | ST_DONE => now_ms >= dl.saturating_mul(1000),
                _ => false,
            }
        };
        if !expired(w.load(Ordering::Acquire)) {
            return false;
        }
        let hash = self.rehash(line);
        let mut lock = self.records.lock(hash);
        if !self.index_points_at(line, KIND_IDEM, guard) {
            return false;
        }
        let s = w.load(Ordering::Acquire);
        let (state, fence, dl) = unpack(s);
        if !expired(s)
            || w.compare_exchange(
                s,
                pack(ST_DEAD, fence, dl),
                Ordering::AcqRel,
                Ordering::Acquire,
            )
            .is_err()
        {
            return false;
        }
        if state == ST_DONE {
            self.record_blob_dead(&e, &l);
        }
        if state == ST_INFLIGHT {
            self.counters.expired_leases.fetch_add(1, Ordering::Relaxed);
        }
        lock.remove(hash, line, guard);
        // A reader that still holds the line finds no key in it (and looks again); a reopen
        // does not bring it back. The rest of the entry stays until the space is reused.
        self.clear_entry(line);
        self.live_entries.fetch_sub(1, Ordering::Relaxed);
        self.counters.live_records.fetch_sub(1, Ordering::Relaxed);
        // The caller hands `line` to the epoch.
        self.counters
            .expired_records
            .fetch_add(1, Ordering::Relaxed);
        true
    }
}
