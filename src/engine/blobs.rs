//! Response compaction: response records are moved out of blob segments that are mostly dead
//! (copy to the current blob segment, then switch the record's pointer, one word), and the
//! emptied segments are zeroed (data first, header last) after the epoch and reused. A crash
//! at any point leaves every live record reachable: the pointer names a complete copy.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::core::Core;
use crate::idempotency::record::{unpack, IdemLayout, ResponseMeta, ST_DONE};
use crate::storage::format::{BlobHeader, EntryHeader, KIND_IDEM};
use crate::storage::segment::Entry;

impl Core {
    /// Account the response record of a completed entry as dead.
    pub(crate) fn record_blob_dead(&self, e: &Entry<'_>, l: &IdemLayout) {
        let blob = e.load(l.state_at + 1);
        let len = u64::from(ResponseMeta::decode(e.load(l.state_at + 2)).len);
        if blob != 0 {
            self.segs.blob_dead(blob, BlobHeader { len }.lines());
        }
    }

    /// Move the live response records out of blob segments that are at most `live_pct` percent
    /// live, and recycle those segments once no reader can hold them. Returns records moved.
    pub(crate) fn compact_blobs(&self, live_pct: u64) -> u64 {
        self.compact_blobs_with(live_pct, &mut |_, _| {})
    }

    /// [`Core::compact_blobs`], calling `progress(done, total)` after each segment it works on
    /// (`total`: the sparse segments found when it starts).
    pub(crate) fn compact_blobs_with(
        &self,
        live_pct: u64,
        progress: &mut dyn FnMut(u64, u64),
    ) -> u64 {
        // One compaction at a time (the thread and `compact_now` may both call this).
        let _one = self.compacting.lock();
        let mut moved = 0;
        let seg_lines = self.segs.seg_lines();
        let sparse = self.segs.sparse_blob_segments(live_pct);
        let total = sparse.len() as u64;
        for (done, seg) in sparse.into_iter().enumerate() {
            let mut at = 1u64;
            let mut clean = true;
            while at < seg_lines {
                let line = seg as u64 * seg_lines + at;
                let b = self.segs.entry(line);
                let Some(head) = BlobHeader::decode(b.load(0)) else {
                    // A zero word ends the records; anything else is not one.
                    break;
                };
                if head.len as usize > self.segs.max_blob() {
                    break;
                }
                let lines = head.lines();
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
            progress(done as u64 + 1, total);
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
            // Then past the read sections (`storage/readers.rs`).
            crate::storage::readers::collect();
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
        let h = EntryHeader::decode(e.load(0));
        if owner == 0 || h.kind != KIND_IDEM {
            return Some(false);
        }
        let l = IdemLayout::new(h.key_len);
        let is_live = |e: &Entry<'_>| {
            unpack(e.load(l.state_at)).0 == ST_DONE && e.load(l.state_at + 1) == line
        };
        if !is_live(&e) {
            return Some(false);
        }
        let hash = self.rehash(owner);
        // Under the stripe lock nothing else changes a completed record's pointer.
        let _lock = self.records.lock(hash);
        if !is_live(&e) || !self.index_points_at(owner, KIND_IDEM, guard) {
            return Some(false);
        }
        let len = BlobHeader::decode(b.load(0)).map_or(0, |h| h.len as usize);
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
