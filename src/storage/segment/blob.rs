//! Blob segments: the response records of idempotency entries, written one after another
//! from a segment's front, counted live and dead per segment so that the compactor can move
//! the live ones out of a sparse segment and recycle it (`engine/blobs.rs`).

use std::sync::atomic::Ordering;

use super::{get_at, set_at, BlobUsage, Segments};
use crate::error::{Error, Result};
use crate::storage::format::{SegmentHeader, BLOB_SEGMENT, LINE};

impl Segments {
    /// Register blob segment `seg` (found at open) whose records end at line `next`. Its live
    /// lines are added by [`Segments::blob_live_add`] as the entries pointing at it are read.
    pub(crate) fn adopt_blob(&self, seg: usize, next: u64) {
        let mut a = self.alloc.lock();
        let next = next.max(get_at(&a.blob_floor, seg));
        set_at(&mut a.blob_used, seg, next.saturating_sub(1));
        if a.blob.is_none_or(|(s, _)| s < seg) {
            a.blob = Some((seg, next));
        }
    }

    /// The segment of a blob record of `lines` lines at `line`, and the line after it in that
    /// segment; `None` if no record can be there (in a segment the file does not hold, on a
    /// segment's header line, or running past its segment's end): its pointer or length is
    /// damaged, it is refused when replayed, and its lines are never counted.
    fn blob_span(&self, line: u64, lines: u64) -> Option<(usize, u64)> {
        let seg = self.seg_of(line);
        let at = line & (self.seg_lines() - 1);
        let end = at.checked_add(lines)?;
        (seg < self.maps.count() && at > 0 && end <= self.seg_lines()).then_some((seg, end))
    }

    /// Count `lines` of the blob record at `line` as live (at open).
    pub(crate) fn blob_live_add(&self, line: u64, lines: u64) {
        let Some((seg, end)) = self.blob_span(line, lines) else {
            return;
        };
        let mut a = self.alloc.lock();
        let v = get_at(&a.blob_live, seg) + lines;
        set_at(&mut a.blob_live, seg, v);
        let floor = get_at(&a.blob_floor, seg).max(end);
        set_at(&mut a.blob_floor, seg, floor);
    }

    /// The blob record at `line` (of `lines` lines) is no longer referenced.
    pub(crate) fn blob_dead(&self, line: u64, lines: u64) {
        let Some((seg, _)) = self.blob_span(line, lines) else {
            return; // never counted live (`blob_live_add`)
        };
        let mut a = self.alloc.lock();
        let v = get_at(&a.blob_live, seg).saturating_sub(lines);
        set_at(&mut a.blob_live, seg, v);
    }

    /// Blob segments, other than the one being filled, whose live lines are at most
    /// `live_pct` percent of their used lines.
    pub(crate) fn sparse_blob_segments(&self, live_pct: u64) -> Vec<usize> {
        let a = self.alloc.lock();
        let current = a.blob.map(|(s, _)| s);
        a.blob_used
            .iter()
            .enumerate()
            .filter(|&(seg, &used)| {
                used > 0
                    && Some(seg) != current
                    && get_at(&a.blob_live, seg) * 100 <= used * live_pct
            })
            .map(|(seg, _)| seg)
            .collect()
    }

    /// Take blob segment `seg` out of use if no live line is left in it: `true` if it was, and
    /// it must now be recycled (once, after the epoch). It is no longer listed as sparse.
    pub(crate) fn retire_blob_segment(&self, seg: usize) -> bool {
        let mut a = self.alloc.lock();
        let current = a.blob.map(|(s, _)| s);
        if get_at(&a.blob_live, seg) != 0 || get_at(&a.blob_used, seg) == 0 || current == Some(seg)
        {
            return false;
        }
        set_at(&mut a.blob_used, seg, 0);
        true
    }

    /// Blob space in use.
    pub(crate) fn blob_usage(&self) -> BlobUsage {
        let a = self.alloc.lock();
        BlobUsage {
            segments: a.blob_used.iter().filter(|&&u| u > 0).count() as u64,
            used_lines: a.blob_used.iter().sum(),
            live_lines: a.blob_live.iter().sum(),
        }
    }

    /// Make blob segment `seg` (with no live record left, and no reader left that could hold
    /// one) an empty, blank segment. Its records are zeroed first and its header last, so a
    /// crash in between leaves either a blob segment (whose scan stops at the zeros) or a
    /// blank one.
    pub(crate) fn recycle_blob_segment(&self, seg: usize) {
        let seg_lines = self.seg_lines();
        for line in (1..seg_lines).rev() {
            let e = self.entry(seg as u64 * seg_lines + line);
            for i in 0..LINE / 8 {
                if let Some(w) = e.w(i) {
                    w.store(0, Ordering::Relaxed);
                }
            }
        }
        self.clear_segment_header(seg);
        let mut a = self.alloc.lock();
        set_at(&mut a.blob_used, seg, 0);
        set_at(&mut a.blob_live, seg, 0);
        set_at(&mut a.blob_floor, seg, 0);
        a.blank.push(seg);
    }

    /// The largest blob payload a record can hold.
    pub(crate) fn max_blob(&self) -> usize {
        ((self.seg_lines() - 1) as usize) * LINE - 16
    }

    /// Allocate `lines` contiguous lines for a blob record. The lines count as live from now
    /// on, so that compaction never recycles a segment a record is still being written into;
    /// the caller hands them back with [`Segments::blob_dead`] if it gives the record up.
    pub(crate) fn alloc_blob(&self, lines: u64) -> Result<u64> {
        let seg_lines = self.seg_lines();
        if lines == 0 || lines > seg_lines - 1 {
            return Err(Error::InvalidOptions("blob larger than a segment"));
        }
        let mut a = self.alloc.lock();
        if let Some((seg, next)) = a.blob {
            if next + lines <= seg_lines {
                a.blob = Some((seg, next + lines));
                let used = get_at(&a.blob_used, seg) + lines;
                set_at(&mut a.blob_used, seg, used);
                let live = get_at(&a.blob_live, seg) + lines;
                set_at(&mut a.blob_live, seg, live);
                let line = seg as u64 * seg_lines + next;
                self.warm_next(line, lines);
                return Ok(line);
            }
        }
        if self.must_grow(&a) {
            // Grown without the allocator's lock (`Segments::grow_spares`), then from the top.
            drop(a);
            self.grow_spares()?;
            return self.alloc_blob(lines);
        }
        let seg = self.take_segment(&mut a)?;
        self.write_segment_header(
            seg,
            SegmentHeader {
                index: seg as u32,
                entry_lines: BLOB_SEGMENT,
                home: None,
            },
        );
        a.blob = Some((seg, 1 + lines));
        set_at(&mut a.blob_used, seg, lines);
        set_at(&mut a.blob_live, seg, lines);
        Ok(seg as u64 * seg_lines + 1)
    }
}
