//! The background compactor: expires entries, reuses their space, compacts response records.
//!
//! * **Expiry**: a window entry whose every window has fully elapsed since its last request
//!   (it is indistinguishable from a key never seen), an idempotency record past its TTL, an
//!   in-flight lease past its timeout, and an aborted record are unlinked from the index; their
//!   space returns to the free lists once every reader that might still hold them has finished
//!   (crossbeam-epoch). Reads never depend on this: an expired window reads as empty and an
//!   expired record as free, whether the compactor has reached them or not.
//! * **Bounded work**: a pass examines at most `budget` entries from a cursor that resumes
//!   where the last pass stopped; like Redis's active expiry, the thread runs another pass at
//!   once while passes keep finding many expired entries, and otherwise sleeps. The only lock
//!   a pass takes is one index stripe, for the few instructions of one unlink.
//! * **Unlinking without losing a request**: under the stripe lock every state word of the
//!   entry is frozen by a compare-and-swap that succeeds only if the word is unchanged and
//!   still expired; a concurrent check that updated a word makes the freeze fail (the entry
//!   stays), and a check that meets a frozen word looks the key up again and starts afresh.
//! * **Response records** are moved out of blob segments that are mostly dead: copy to the
//!   current blob segment, then switch the record's pointer (one word), then, after the epoch,
//!   zero the old segment (data first, header last) and reuse it as a blank segment. A crash
//!   at any point leaves every live record reachable (the pointer names a complete copy).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};

use crate::format::{SegmentHeader, BLOB_MAGIC, BLOB_SEGMENT, KIND_IDEM, KIND_WINDOWS, LINE};
use crate::idempotency::engine::{
    pack, unpack, IdemLayout, ST_DEAD, ST_DONE, ST_INFLIGHT, ST_VACANT,
};
use crate::limit::Descriptor;
use crate::store::Core;
use crate::window::{self, cell};

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

/// Where the next pass resumes: segment and line within it.
#[derive(Default)]
pub(crate) struct Cursor {
    seg: usize,
    line: u64,
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
        }
        self.counters.passes.fetch_add(1, Ordering::Relaxed);
        self.counters
            .last_pass_ns
            .store(start.elapsed().as_nanos() as u64, Ordering::Relaxed);
        report
    }

    /// Unlink the entry at `line` if it is expired at `now_ms`. On `true` the caller hands the
    /// line to the epoch ([`Segments::release_all_later`](crate::segment::Segments)).
    fn try_expire(&self, line: u64, now_ms: u64, guard: &crossbeam_epoch::Guard) -> bool {
        let e = self.segs.entry(line);
        let h = e.load(0);
        if h == 0 {
            return false;
        }
        let kind = (h >> 16) as u8;
        let key_len = (h & 0xFF) as usize;
        let n = ((h >> 8) & 0xFF) as usize;
        match kind {
            KIND_WINDOWS => {
                let Some(windows) = self.window_slots(&e, n, key_len) else {
                    return false;
                };
                if !windows
                    .iter()
                    .take(n)
                    .all(|w| self.slot_expired(&e, w, now_ms))
                {
                    return false;
                }
                self.unlink_window(line, n, &windows, now_ms, guard)
            }
            KIND_IDEM => self.unlink_record(line, key_len, now_ms, guard),
            _ => false,
        }
    }

    /// The state slots of a window entry: (first word, descriptor).
    fn window_slots(
        &self,
        e: &crate::segment::Entry<'_>,
        n: usize,
        key_len: usize,
    ) -> Option<[(usize, Descriptor); crate::MAX_WINDOWS]> {
        if n == 0 || n > crate::MAX_WINDOWS {
            return None;
        }
        let mut out = [(
            0usize,
            Descriptor {
                window_ms: 1000,
                exact: false,
                cap: 0,
            },
        ); crate::MAX_WINDOWS];
        let mut at = 1 + n.div_ceil(2) + key_len.div_ceil(8);
        for (i, slot) in out.iter_mut().take(n).enumerate() {
            let d = Descriptor::decode((e.load(1 + i / 2) >> ((i % 2) * 32)) as u32)?;
            *slot = (at, d);
            at += d.words();
        }
        Some(out)
    }

    fn slot_expired(
        &self,
        e: &crate::segment::Entry<'_>,
        slot: &(usize, Descriptor),
        now_ms: u64,
    ) -> bool {
        let (at, d) = *slot;
        if d.exact {
            // A first look without the lock; the freeze looks again under it.
            let meta = e.load(at);
            if meta & (cell::META_LOCK | cell::META_FROZEN) != 0 {
                return false; // locked or moving: look again next time
            }
            cell::ring_expired(&|k| e.w(k), at, d.cap, d.window_ms, now_ms)
        } else {
            let w = e.load(at);
            w & window::FROZEN == 0
                && window::word_expired(w, d.window_ms, self.kmax, now_ms, self.seen_ms(now_ms))
        }
    }

    fn unlink_window(
        &self,
        line: u64,
        n: usize,
        windows: &[(usize, Descriptor); crate::MAX_WINDOWS],
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
        for slot in windows.iter().take(n) {
            let (at, d) = *slot;
            let Some(w) = e.w(at) else {
                ok = false;
                break;
            };
            if d.exact {
                // Under the ring's lock; the entry's first exact window comes first, and its
                // lock is the one requests take for every ring of the entry.
                if !cell::freeze_ring_if_expired(|k| e.w(k), at, d.cap, d.window_ms, now_ms) {
                    ok = false;
                    break;
                }
            } else if !cell::freeze_if_expired(w, d.window_ms, self.kmax, now_ms, self.seen_word())
            {
                ok = false;
                break;
            }
            frozen += 1;
        }
        if !ok {
            for (at, d) in windows.iter().take(frozen) {
                if let Some(w) = e.w(*at) {
                    if d.exact {
                        cell::thaw_meta(w);
                    } else {
                        cell::thaw(w);
                    }
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

    fn unlink_record(
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
        let mut lock = self.index.lock(hash);
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

    /// Account the response record of a completed entry as dead.
    pub(crate) fn record_blob_dead(&self, e: &crate::segment::Entry<'_>, l: &IdemLayout) {
        let blob = e.load(l.state_at + 1);
        let len = e.load(l.state_at + 2) & 0xFFFF_FFFF;
        if blob != 0 {
            self.segs.blob_dead(blob, (16 + len).div_ceil(LINE as u64));
        }
    }

    /// Move the live response records out of blob segments that are at most `live_pct` percent
    /// live, and recycle those segments once no reader can hold them. Returns records moved.
    pub(crate) fn compact_blobs(&self, live_pct: u64) -> u64 {
        // One compaction at a time (the thread and `compact_now` may both call this).
        let _one = self.compacting.lock();
        let mut moved = 0;
        let seg_lines = self.segs.seg_lines();
        for seg in self.segs.sparse_blob_segments(live_pct) {
            let mut at = 1u64;
            let mut clean = true;
            while at < seg_lines {
                let line = seg as u64 * seg_lines + at;
                let b = self.segs.entry(line);
                let head = b.load(0);
                if head == 0 {
                    break;
                }
                let len = head >> 32;
                if head as u32 != BLOB_MAGIC || len as usize > self.segs.max_blob() {
                    break;
                }
                let lines = (16 + len).div_ceil(LINE as u64);
                at += lines;
                // A guard per record, so that reclamation elsewhere is never held up long.
                let guard = crossbeam_epoch::pin();
                match self.move_record(line, lines, &guard) {
                    Some(true) => moved += 1,
                    Some(false) => {}
                    None => clean = false,
                }
            }
            // Recycle only a segment no entry points into any more. The scan above stops at a
            // record whose header never got written (a crash while two records were being
            // written), so the live count, not the scan, decides: records past such a gap stay
            // counted, and the segment is kept.
            if clean && self.segs.retire_blob_segment(seg) {
                // Readers that loaded a pointer into this segment before the moves hold the
                // epoch: recycle only after them.
                let guard = crossbeam_epoch::pin();
                let done = Arc::clone(&self.recycle);
                let pending = Arc::clone(&self.pending_recycle);
                pending.fetch_add(1, Ordering::AcqRel);
                guard.defer(move || {
                    done.lock().push(seg);
                    pending.fetch_sub(1, Ordering::AcqRel);
                });
            }
        }
        self.recycle_ready();
        self.counters
            .moved_records
            .fetch_add(moved, Ordering::Relaxed);
        moved
    }

    /// Give the epoch a few chances to move on, so that space unlinked by this thread comes
    /// back now rather than on a later pass (a reader pinned elsewhere can still delay it).
    pub(crate) fn settle(&self) {
        let start = Instant::now();
        while start.elapsed() < Duration::from_millis(250) {
            self.recycle_ready();
            if self.segs.pending_releases() == 0
                && self.pending_recycle.load(Ordering::Acquire) == 0
                && self.recycle.lock().is_empty()
            {
                return;
            }
            crossbeam_epoch::pin().flush();
            std::thread::yield_now();
        }
    }

    /// Recycle the blob segments whose readers have all left.
    pub(crate) fn recycle_ready(&self) {
        let ready: Vec<usize> = std::mem::take(&mut *self.recycle.lock());
        for seg in ready {
            self.segs.recycle_blob_segment(seg);
            self.counters
                .recycled_segments
                .fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Move one record if it is live: `Some(true)` moved, `Some(false)` dead, `None` could not
    /// move (allocation failed): the segment must not be recycled.
    fn move_record(&self, line: u64, lines: u64, guard: &crossbeam_epoch::Guard) -> Option<bool> {
        let b = self.segs.entry(line);
        let owner = b.load(1) >> 32;
        let e = self.segs.entry(owner);
        let h = e.load(0);
        if owner == 0 || (h >> 16) as u8 != KIND_IDEM {
            return Some(false);
        }
        let l = IdemLayout::new((h & 0xFF) as usize);
        let is_live = |e: &crate::segment::Entry<'_>| {
            unpack(e.load(l.state_at)).0 == ST_DONE && e.load(l.state_at + 1) == line
        };
        if !is_live(&e) {
            return Some(false);
        }
        let hash = self.rehash(owner);
        // Under the stripe lock nothing else changes a completed record's pointer.
        let _lock = self.index.lock(hash);
        if !is_live(&e) || !self.index_points_at(owner, KIND_IDEM, guard) {
            return Some(false);
        }
        let len = (b.load(0) >> 32) as usize;
        let new = self.segs.alloc_blob(lines).ok()?;
        let nb = self.segs.entry(new);
        for i in (1..2 + len.div_ceil(8)).rev() {
            if let (Some(src), Some(dst)) = (b.w(i), nb.w(i)) {
                dst.store(src.load(Ordering::Relaxed), Ordering::Relaxed);
            }
        }
        if let (Some(src), Some(dst)) = (b.w(0), nb.w(0)) {
            dst.store(src.load(Ordering::Relaxed), Ordering::Release);
        }
        if let Some(p) = e.w(l.state_at + 1) {
            p.store(new, Ordering::Release);
        }
        self.segs.blob_dead(line, lines);
        Some(true)
    }
}

/// The compactor thread; stopped and joined when dropped.
pub(crate) struct CompactorHandle {
    stop: Arc<(Mutex<bool>, Condvar)>,
    thread: Option<JoinHandle<()>>,
}

/// Compactor settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct CompactorOptions {
    pub enabled: bool,
    pub interval: Duration,
    pub budget: u64,
}

impl Default for CompactorOptions {
    fn default() -> Self {
        CompactorOptions {
            enabled: true,
            interval: Duration::from_millis(250),
            budget: 2_048,
        }
    }
}

impl CompactorHandle {
    /// Start the thread over `core`.
    pub(crate) fn spawn(core: Arc<Core>, opts: CompactorOptions) -> CompactorHandle {
        let stop = Arc::new((Mutex::new(false), Condvar::new()));
        if !opts.enabled {
            return CompactorHandle { stop, thread: None };
        }
        let flag = Arc::clone(&stop);
        let thread = std::thread::Builder::new()
            .name("tollgate-compactor".into())
            .spawn(move || run(core, flag, opts))
            .ok();
        CompactorHandle { stop, thread }
    }
}

fn run(core: Arc<Core>, stop: Arc<(Mutex<bool>, Condvar)>, opts: CompactorOptions) {
    // Background work: on a shared core, the threads answering checks go first.
    crate::sys::lower_thread_priority();
    let (lock, cv) = &*stop;
    let mut tick = 0u64;
    loop {
        {
            let mut stopped = lock.lock();
            if *stopped {
                return;
            }
            cv.wait_for(&mut stopped, opts.interval);
            if *stopped {
                return;
            }
        }
        // Keep going while passes find many expired entries (a quarter of what they look at),
        // checking for a stop request between passes.
        loop {
            // No operation yet since the store opened: no time to judge expiry at.
            let now = core.expiry_now();
            if now == 0 {
                break;
            }
            let r = core.expire_pass(now, opts.budget);
            if r.wrapped && r.expired == 0 {
                break;
            }
            if r.expired * 4 < r.examined.max(1) || *lock.lock() {
                break;
            }
            // Between passes (each at most `budget` entries), let a thread waiting for this
            // core run.
            std::thread::yield_now();
        }
        tick += 1;
        if tick.is_multiple_of(8) {
            core.compact_blobs(50);
        }
    }
}

impl Drop for CompactorHandle {
    fn drop(&mut self) {
        *self.stop.0.lock() = true;
        self.stop.1.notify_all();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
