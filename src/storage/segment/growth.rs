//! Growing the file, in batches of segments, and keeping a spare segment grown ahead of need.
//!
//! Growth is the one slow step an allocation can meet: the new length must be durable before
//! the segment count takes the segment in, and the count before anything in the segment is
//! used: two syncs, each a journal commit of the file system. Each syncs a range of a few
//! bytes (`sys::sync_range`), not the whole file: an `fdatasync` would also write back every
//! page the checks dirtied since the last one, which on a large busy store is most of the
//! file, while the request that grows (and every other allocation, behind the allocator's
//! lock) waits, and every page it wrote back then takes a write fault again. An allocation
//! that must grow the file adds a quarter as many segments as it has (at least one, at most
//! 64 MiB) for the same two syncs, and keeps the others as spares ([`MAX_GROWTH_BYTES`]).
//!
//! Beyond that, the compactor thread can grow the next segment before it is needed
//! (`Options::grow_ahead`): when an allocation takes the last blank segment or spare, or has to
//! grow the file itself, it asks for a spare and wakes the compactor, which grows one segment
//! and leaves it blank (counted, durable, its header still zero). The next allocation that needs a segment takes it at the cost of a lock. A
//! spare is exactly what a crash right after growing leaves behind, so open already knows it
//! (a blank segment, reused first); nothing new is written to the file.
//!
//! Growth is serialised by its own lock, which also guards the spares grown and not taken. The
//! compactor grows under it alone (never under the allocator's lock) and leaves the segment
//! there; an allocation that finds no blank segment takes it (holding the allocator's lock),
//! so it waits for a spare being grown and takes that, or, with none coming, grows the file
//! itself as before. Lock order: allocator, then growth.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use parking_lot::Mutex;

use super::{Alloc, Segments};
use crate::error::{Error, Result};
use crate::storage::format::SEGMENTS_START;
use crate::storage::hook::IoEvent;
use crate::storage::raw::Map;

/// How much of a grown segment is faulted in at once: the default segment's 4 MiB, which the
/// next checks fill first (entries are taken from the front). A larger segment faults the rest
/// in as it is used: faulting in a whole 1 GiB segment would hold the growth lock for a
/// noticeable time and take its memory at once (the `open_fields` fuzz target, growing
/// 1 GiB segments, ran out of 4 GiB of memory when every segment was faulted in whole).
const POPULATE_BYTES: usize = 4 << 20;

/// The most bytes one growth adds to the file: a growth adds a quarter of the segments the file
/// has (at least one), up to this. Each growth makes two syncs and faults its first segment
/// in, so a store that grows segment by segment pays them once per segment: 45 growths for the
/// 170 MB or so `tollgate bench` writes in four seconds (strace, 2026-12-06), 17 in quarters.
/// In quarters, the file grows in proportion to its size and the syncs in proportion to the
/// log of it, at the cost of up to a quarter (and at most 64 MiB) of file allocated ahead of
/// need, which open finds as blank segments (counted, header zero) and uses first, as it does
/// a spare.
const MAX_GROWTH_BYTES: u64 = 64 << 20;

/// What wakes the thread that grows spares (the compactor's).
pub(crate) type Waker = Arc<dyn Fn() + Send + Sync>;

/// The state of growth ahead of need.
#[derive(Default)]
pub(super) struct Spare {
    /// An allocation took the last blank segment (or grew the file): grow a spare.
    wanted: AtomicBool,
    /// The growth lock, held across one growth (so that two growths never pick the same
    /// segment index); it guards the spares grown and not taken yet. An allocation that finds
    /// no blank segment takes this lock, so if the compactor is growing a spare at that moment
    /// the allocation waits for it and takes it, instead of growing another.
    grown: Mutex<Vec<usize>>,
    /// Wakes the thread that grows spares; none: nobody grows ahead.
    waker: Mutex<Option<Waker>>,
}

impl Segments {
    /// Have `wake` called whenever a spare segment is wanted; the thread it wakes calls
    /// [`Segments::grow_spare`]. Only a writable, file-backed store grows ahead (in anonymous
    /// memory growth is just a map).
    pub(crate) fn set_spare_waker(&self, wake: Waker) {
        if self.file.is_some() && !self.private {
            *self.spare.waker.lock() = Some(wake);
        }
    }

    /// Whether a spare is wanted and not grown yet.
    pub(crate) fn spare_wanted(&self) -> bool {
        self.spare.wanted.load(Ordering::Acquire)
    }

    /// Grow the spare segment if one is wanted: `Ok(true)` if the file grew. Called by the
    /// thread [`Segments::set_spare_waker`] wakes, never on a request's path; it takes only the
    /// growth lock, never the allocator's. A failure is the one a request's growth would have
    /// met, with the same effect (a failed sync poisons the store); a store at its last
    /// segment simply has no spare.
    pub(crate) fn grow_spare(&self) -> Result<bool> {
        if !self.spare.wanted.swap(false, Ordering::AcqRel) {
            return Ok(false);
        }
        let mut grown = self.spare.grown.lock();
        if !grown.is_empty() {
            return Ok(false);
        }
        match self.grow() {
            Ok(seg) => grown.push(seg),
            Err(Error::CapacityExhausted) => return Ok(false),
            Err(e) => return Err(e),
        }
        Ok(true)
    }

    /// Segments counted in the file and not in use yet (spares, and blank ones found at open).
    pub(crate) fn blank_segments(&self) -> u64 {
        let a = self.alloc.lock();
        (a.blank.len() + self.spares()) as u64
    }

    /// Spares grown and not taken yet (the caller may hold the allocator's lock).
    pub(super) fn spares(&self) -> usize {
        self.spare.grown.lock().len()
    }

    /// A segment for a new class or blob run (the caller holds the allocator's lock): a blank
    /// one found at open, else a spare (waiting for one being grown), else a new one. If none
    /// is left after this one, a spare is asked for.
    pub(super) fn take_segment(&self, a: &mut Alloc) -> Result<usize> {
        if let Some(seg) = a.blank.pop() {
            if a.blank.is_empty() {
                self.want_spare();
            }
            return Ok(seg);
        }
        let mut grown = self.spare.grown.lock();
        let seg = match grown.pop() {
            Some(seg) => {
                // A segment of a batch is not faulted in when grown (see `grow_batch`); one
                // grown ahead already is, and this costs it nothing.
                self.maps.populate(seg, POPULATE_BYTES);
                seg
            }
            None => {
                let (first, more) = self.grow_batch()?;
                // Taken in order, lowest first.
                grown.extend(more.rev());
                first
            }
        };
        let spare_left = !grown.is_empty();
        drop(grown);
        if !spare_left {
            self.want_spare();
        }
        Ok(seg)
    }

    fn want_spare(&self) {
        let waker = self.spare.waker.lock().clone();
        if let Some(wake) = waker {
            self.spare.wanted.store(true, Ordering::Release);
            wake();
        }
    }

    /// Add one segment to the file (or to anonymous memory) and map it. The caller holds the
    /// growth lock (`Spare::grown`).
    fn grow(&self) -> Result<usize> {
        self.grow_by(1).map(|(first, _)| first)
    }

    /// Add a quarter as many segments as the file has, at least one and at most
    /// [`MAX_GROWTH_BYTES`], with one allocation and one pair of syncs: the first segment, and
    /// the others (left blank, not faulted in, for the caller to keep as spares). The caller
    /// holds the growth lock. In anonymous memory, one segment.
    fn grow_batch(&self) -> Result<(usize, std::ops::Range<usize>)> {
        let n = match &self.file {
            Some(_) => {
                let most = (MAX_GROWTH_BYTES >> self.seg_shift).max(1) as usize;
                (self.maps.count() / 4).clamp(1, most)
            }
            None => 1,
        };
        self.grow_by(n)
    }

    /// Add `n` segments (fewer if the store's limit is nearer), as one allocation of the file
    /// with one sync before and one after the count, and map them; the first is faulted in.
    fn grow_by(&self, n: usize) -> Result<(usize, std::ops::Range<usize>)> {
        let idx = self.maps.count();
        let room = self.max_segments.min(self.maps.capacity());
        if idx >= room {
            return Err(Error::CapacityExhausted);
        }
        let n = n.clamp(1, room - idx);
        if self.private {
            return Err(Error::ReadOnly);
        }
        self.writable()?;
        let seg_len = self.seg_len();
        if let Some(f) = &self.file {
            let off = SEGMENTS_START + idx as u64 * seg_len;
            let len = n as u64 * seg_len;
            self.durable(self.hook.run(IoEvent::Allocate { offset: off, len }, || {
                crate::storage::sys::allocate(f, off, len)
            }))?;
            // The new length must be durable before the count takes the segments in, and the
            // count before anything in them is used: a crash in between leaves segments the
            // count does not take in (cut off at open), never ones it takes in but the file
            // lacks (which open would report as lost). A sync of the new space's first bytes
            // commits the length alone: the pages the checks dirtied stay as they are.
            let length = IoEvent::SyncRange {
                offset: off,
                len: 8,
            };
            self.durable(
                self.hook
                    .run(length, || crate::storage::sys::sync_range(f, off, 8)),
            )?;
            let count = u32::try_from(idx + n).map_err(|_| Error::CapacityExhausted)?;
            crate::storage::file::record_segments(f, count, &self.hook).inspect_err(|_| {
                self.poisoned.store(true, Ordering::Release);
            })?;
        }
        let mut first = idx;
        for i in 0..n {
            let map = match &self.file {
                Some(f) => {
                    let off = SEGMENTS_START + (idx + i) as u64 * seg_len;
                    let map = self.durable(Map::file(f, off, 1 << self.seg_shift))?;
                    // Before the first touch, so that the pages populated are huge ones.
                    if self.huge {
                        map.advise_huge();
                    }
                    if i == 0 {
                        map.populate(POPULATE_BYTES);
                    }
                    map
                }
                None => Map::anon(1 << self.seg_shift)?,
            };
            let seg = self.maps.push(map)?;
            if i == 0 {
                first = seg;
            }
        }
        // The growth lock keeps other growths out, so the `n` maps are `first..first + n`.
        Ok((first, first + 1..first + n))
    }
}
