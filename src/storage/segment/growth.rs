//! Growing the file, in batches of segments, and keeping a spare segment grown ahead of need.
//!
//! Growth is the one slow step an allocation can meet: the new length must be durable before
//! the segment count takes the segment in, and the count before anything in the segment is
//! used: two syncs, each of which makes the file system commit the file's length and blocks.
//! Each syncs a range of a few bytes (`sys::sync_range`), not the whole file: an `fdatasync`
//! would also write back every page the checks dirtied since the last one, which on a large
//! busy store is most of the file, while the request that grows (and every allocation that
//! needs a segment, behind it) waits, and every page it wrote back then takes a write fault
//! again. An allocation that must grow the file adds a quarter as many segments as it has (at
//! least one, at most 64 MiB) for the same two syncs, and keeps the others as spares
//! ([`MAX_GROWTH_BYTES`]).
//!
//! Every segment an allocation takes is faulted in (its pages mapped, writable) by the
//! compactor's thread, together with the segment the next allocation will take, so that the
//! allocation's own first touch of it does not pay for that ([`Segments::fault_in_taken`]);
//! a store without the compactor faults it in as it takes it.
//!
//! Beyond that, the compactor thread can grow the next segment before it is needed
//! (`Options::grow_ahead`): when an allocation takes the last blank segment or spare, or has to
//! grow the file itself, it asks for a spare and wakes the compactor, which grows one segment
//! and leaves it blank (counted, durable, its header still zero). The next allocation that
//! needs a segment takes it at the cost of a lock. A spare is exactly what a crash right after
//! growing leaves behind, so open already knows it (a blank segment, reused first); nothing
//! new is written to the file.
//!
//! Growth is serialised by its own lock, which also guards the spares grown and not taken.
//! Every growth holds it alone, never the allocator's lock: the compactor's, which leaves one
//! spare, and an allocation's, which finds no blank segment and no spare, lets the allocator's
//! lock go, grows a batch into the spares ([`Segments::grow_spares`]: a request that found
//! a growth under way waits for it here instead, and grows nothing) and starts again, taking
//! a spare. So the syncs of a growth never hold up an allocation that has room, as they did
//! while the allocation grew under the allocator's lock. Lock order: allocator, then growth;
//! under the allocator's lock the growth lock is only tried ([`Segments::must_grow`]) or
//! taken when spares are known to be there (nobody grows then).

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

/// What wakes the thread that grows spares and faults taken segments in (the compactor's).
pub(crate) type Waker = Arc<dyn Fn() + Send + Sync>;

/// The state of growth ahead of need, and of the segments waiting to be faulted in.
#[derive(Default)]
pub(super) struct Spare {
    /// Whether spares are grown ahead of need (`Options::grow_ahead`).
    ahead: AtomicBool,
    /// An allocation took the last blank segment (or grew the file): grow a spare.
    wanted: AtomicBool,
    /// Segments taken by an allocation and not faulted in yet, for the woken thread.
    unfaulted: Mutex<Vec<usize>>,
    /// The growth lock, held across one growth (so that two growths never pick the same
    /// segment index); it guards the spares grown and not taken yet. An allocation that finds
    /// no blank segment takes this lock, so if the compactor is growing a spare at that moment
    /// the allocation waits for it and takes it, instead of growing another.
    grown: Mutex<Vec<usize>>,
    /// Wakes the background thread; none: there is none, and an allocation faults the
    /// segments it takes in itself.
    waker: Mutex<Option<Waker>>,
}

impl Segments {
    /// Have `wake` called whenever a taken segment is to be faulted in, and, if `grow_ahead`,
    /// whenever a spare segment is wanted; the thread it wakes calls
    /// [`Segments::fault_in_taken`] and [`Segments::grow_spare`]. Only a writable, file-backed
    /// store has such work (in anonymous memory growth is just a map).
    pub(crate) fn set_waker(&self, wake: Waker, grow_ahead: bool) {
        if self.file.is_some() && !self.private {
            self.spare.ahead.store(grow_ahead, Ordering::Release);
            *self.spare.waker.lock() = Some(wake);
        }
    }

    /// Whether a taken segment waits to be faulted in.
    pub(crate) fn fault_in_wanted(&self) -> bool {
        !self.spare.unfaulted.lock().is_empty()
    }

    /// Fault in the segments allocations took since the last call (the first
    /// [`POPULATE_BYTES`] of each); how many. Called by the thread [`Segments::set_waker`]
    /// wakes, never on a request's path, with no lock held across a segment's populate.
    pub(crate) fn fault_in_taken(&self) -> usize {
        let mut n = 0;
        loop {
            let Some(seg) = self.spare.unfaulted.lock().pop() else {
                return n;
            };
            self.maps.populate(seg, POPULATE_BYTES);
            n += 1;
        }
    }

    /// Fault segment `seg` in, just taken by an allocation (which holds the allocator's lock),
    /// and `next`, the one the next allocation of a segment will take: on the background
    /// thread if there is one (queued, `next` first, and the thread woken), else `seg` here.
    ///
    /// A populate of 4 MiB took 8-44 ms under strace on a busy ext4 file, and the first touch
    /// of a segment not faulted in costs the same: the fault reads (zeroes) a 2 MiB folio
    /// ahead in a map advised for huge pages (`perf`: 28-30 ms faults under the allocation's
    /// write of the segment header). On the request's path, under the allocator's lock, it was
    /// the worst part of a growth. So the segment after this one is faulted in ahead, while
    /// this one fills; this one, if nobody did it ahead, is faulted in by the allocation's
    /// own first touch. Anonymous memory is left to fault in as it is used, as before.
    fn fault_in(&self, seg: usize, next: Option<usize>) {
        if self.file.is_none() {
            return;
        }
        let waker = self.spare.waker.lock().clone();
        match waker {
            Some(wake) => {
                let mut queue = self.spare.unfaulted.lock();
                queue.push(seg);
                queue.extend(next);
                drop(queue);
                wake();
            }
            None => self.maps.populate(seg, POPULATE_BYTES),
        }
    }

    /// Whether a spare is wanted and not grown yet.
    pub(crate) fn spare_wanted(&self) -> bool {
        self.spare.wanted.load(Ordering::Acquire)
    }

    /// Grow the spare segment if one is wanted: `Ok(true)` if the file grew. Called by the
    /// thread [`Segments::set_waker`] wakes, never on a request's path; it takes only the
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
    /// The spares are counted first, without the allocator's lock (a growth holds the growth
    /// lock across its syncs, and every allocation would wait behind this call).
    pub(crate) fn blank_segments(&self) -> u64 {
        let spares = self.spares();
        (self.alloc.lock().blank.len() + spares) as u64
    }

    /// Spares grown and not taken yet. It waits for a growth under way: a caller holding the
    /// allocator's lock asks [`Segments::must_grow`] instead.
    pub(super) fn spares(&self) -> usize {
        self.spare.grown.lock().len()
    }

    /// Whether the next segment an allocation takes has to be grown first: no blank segment
    /// and no spare, or a growth under way (the caller holds the allocator's lock). The caller
    /// then releases that lock, calls [`Segments::grow_spares`] and starts again. It never
    /// waits for the growth lock here: a growth holds it across its syncs, and waiting for it
    /// while holding the allocator's lock would stop every other allocation too.
    pub(super) fn must_grow(&self, a: &Alloc) -> bool {
        a.blank.is_empty() && self.spare.grown.try_lock().is_none_or(|g| g.is_empty())
    }

    /// Grow the file by a batch ([`Segments::grow_batch`]) and keep every new segment as a
    /// spare, holding the growth lock alone. The allocator's lock is not held across the
    /// growth's syncs, so allocations that need no new segment go on meanwhile; one that does
    /// waits for this growth on the growth lock and takes a spare it made. Nothing is grown if
    /// a spare appeared while this waited for the lock.
    ///
    /// Until 2026-12-08 the allocation that found no segment grew the file under the
    /// allocator's lock, and in the main job that was where request threads waited most: 129
    /// waits for the lock in 4 s, behind 81 sleeps of a growing request in its syncs
    /// (PERFORMANCE.md, "Where the request threads wait…").
    pub(super) fn grow_spares(&self) -> Result<()> {
        let mut grown = self.spare.grown.lock();
        if !grown.is_empty() {
            return Ok(());
        }
        let (first, more) = self.grow_batch()?;
        // Taken in order, lowest first.
        grown.extend(more.rev());
        grown.push(first);
        Ok(())
    }

    /// A segment for a new class or blob run (the caller holds the allocator's lock): a blank
    /// one found at open, else a spare (waiting for one being grown), else a new one (grown
    /// under the allocator's lock: callers that can release it grow first, see
    /// [`Segments::must_grow`]). If none is left after this one, a spare is asked for.
    pub(super) fn take_segment(&self, a: &mut Alloc) -> Result<usize> {
        if let Some(seg) = a.blank.pop() {
            self.fault_in(seg, a.blank.last().copied());
            if a.blank.is_empty() {
                self.want_spare();
            }
            return Ok(seg);
        }
        let mut grown = self.spare.grown.lock();
        let seg = match grown.pop() {
            Some(seg) => seg,
            None => {
                // A home segment's split (whose caller keeps the allocator's lock): grown here,
                // under it, as every growth once was. Other callers asked `must_grow` under
                // the same lock first, so they find a spare.
                let (first, more) = self.grow_batch()?;
                // Taken in order, lowest first.
                grown.extend(more.rev());
                first
            }
        };
        // A segment of a batch is not faulted in when grown (see `grow_batch`); one grown
        // ahead already is, and a second populate finds its pages in place.
        self.fault_in(seg, grown.last().copied());
        let spare_left = !grown.is_empty();
        drop(grown);
        if !spare_left {
            self.want_spare();
        }
        Ok(seg)
    }

    fn want_spare(&self) {
        if !self.spare.ahead.load(Ordering::Acquire) {
            return;
        }
        let waker = self.spare.waker.lock().clone();
        if let Some(wake) = waker {
            self.spare.wanted.store(true, Ordering::Release);
            wake();
        }
    }

    /// Add one segment to the file (or to anonymous memory), map it and fault it in: the
    /// spare, on the background thread. The caller holds the growth lock (`Spare::grown`).
    fn grow(&self) -> Result<usize> {
        let (seg, _) = self.grow_by(1)?;
        self.maps.populate(seg, POPULATE_BYTES);
        Ok(seg)
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
    /// with one sync before and one after the count, and map them (none faulted in: the
    /// caller sees to that).
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

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicUsize;

    use super::*;

    /// Allocate entries of four lines in `segs` until it maps `segments` segments.
    fn fill(segs: &Segments, segments: usize) {
        while segs.maps.count() < segments {
            segs.alloc(4).expect("alloc");
        }
    }

    #[test]
    #[cfg_attr(miri, ignore = "Miri cannot map a file")]
    fn taken_segments_wait_for_the_background_thread_and_only_with_one() {
        // With a waker: every segment an allocation takes is queued, the waker is called,
        // and the thread's call faults them in and empties the queue.
        let segs = Segments::new(Some(tempfile::tempfile().expect("file")), 16, 64);
        let wakes = Arc::new(AtomicUsize::new(0));
        let counted = Arc::clone(&wakes);
        segs.set_waker(
            Arc::new(move || {
                counted.fetch_add(1, Ordering::SeqCst);
            }),
            false,
        );
        fill(&segs, 3);
        assert!(segs.fault_in_wanted());
        let woken = wakes.load(Ordering::SeqCst);
        assert!(woken >= 3, "woken {woken} times for 3 segments");
        // Grown one at a time (a quarter of fewer than four): no next one to queue.
        assert_eq!(segs.fault_in_taken(), woken);
        assert!(!segs.fault_in_wanted());
        assert_eq!(segs.fault_in_taken(), 0);
        // From eight segments on a growth adds two or more: taking the first queues the one
        // after it as well, ahead of its first touch.
        fill(&segs, 12);
        let more = wakes.load(Ordering::SeqCst) - woken;
        assert!(
            segs.fault_in_taken() > more,
            "the next segments were queued too"
        );
        // Without grow-ahead no spare is asked for.
        assert!(!segs.spare_wanted());

        // With grow-ahead, a spare is asked for too.
        let ahead = Segments::new(Some(tempfile::tempfile().expect("file")), 16, 64);
        ahead.set_waker(Arc::new(|| {}), true);
        fill(&ahead, 2);
        assert!(ahead.spare_wanted());
        assert_eq!(ahead.grow_spare().ok(), Some(true));

        // Without a waker (no compactor) nothing waits: the allocation faulted them in.
        let alone = Segments::new(Some(tempfile::tempfile().expect("file")), 16, 64);
        fill(&alone, 3);
        assert!(!alone.fault_in_wanted());
        assert_eq!(alone.fault_in_taken(), 0);
    }

    /// Holds every growth's first sync until released, and says when one is waiting there.
    struct HeldSync {
        armed: AtomicBool,
        entered: std::sync::mpsc::SyncSender<()>,
        release: std::sync::Mutex<std::sync::mpsc::Receiver<()>>,
    }

    impl crate::storage::hook::IoHook for HeldSync {
        fn before(&self, event: IoEvent) -> std::io::Result<()> {
            if matches!(event, IoEvent::SyncRange { .. })
                && self.armed.swap(false, Ordering::SeqCst)
            {
                let _ = self.entered.send(());
                let _ = self.release.lock().map(|r| r.recv());
            }
            Ok(())
        }
    }

    #[test]
    #[cfg_attr(miri, ignore = "Miri cannot map a file")]
    fn an_allocation_with_room_does_not_wait_for_another_ones_growth() {
        let (entered_tx, entered) = std::sync::mpsc::sync_channel(1);
        let (release, release_rx) = std::sync::mpsc::sync_channel(1);
        let hook = Arc::new(HeldSync {
            armed: AtomicBool::new(false),
            entered: entered_tx,
            release: std::sync::Mutex::new(release_rx),
        });
        let mut segs = Segments::new(Some(tempfile::tempfile().expect("file")), 16, 64);
        segs.set_hook(crate::storage::hook::Hook::new(hook.clone()));
        let segs = Arc::new(segs);
        // Entries of two lines have a segment with room; then the next growth's sync is held.
        segs.alloc(2).expect("alloc");
        hook.armed.store(true, Ordering::SeqCst);
        let grower = {
            let segs = Arc::clone(&segs);
            std::thread::spawn(move || {
                while segs.maps.count() < 4 {
                    segs.alloc(4).expect("alloc");
                }
            })
        };
        // The grower is inside its growth, holding the sync (no time involved: a channel).
        entered.recv().expect("a growth began");
        // An allocation of two lines, on another thread: it must not need the growth.
        let (done_tx, done) = std::sync::mpsc::channel();
        let other = {
            let segs = Arc::clone(&segs);
            std::thread::spawn(move || {
                let _ = done_tx.send(segs.alloc(2).is_ok());
            })
        };
        // A deadlock detector, not a timing: with the growth under the allocator's lock, this
        // allocation would wait until the sync is released, which happens only after.
        let got = done.recv_timeout(std::time::Duration::from_secs(60));
        release.send(()).expect("release the sync");
        grower.join().expect("grower");
        other.join().expect("other");
        assert_eq!(got, Ok(true), "an allocation with room waited for a growth");
        // The growth finished, and its segments serve the allocations after it.
        assert!(segs.maps.count() >= 4);
        segs.alloc(4).expect("alloc after the growth");
    }
}
