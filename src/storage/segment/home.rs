//! Home segments: window entries placed by their key's hash, so that a check reaches its
//! entry from the hash alone, without the index's word first (one cache miss, not two).
//!
//! Each size class has a directory, as in extendible hashing: the top `depth` bits of a hash
//! pick one of the class's home segments, its low 32 bits a bucket of [`BUCKET`] slots in it
//! and the slot tried first. An entry goes to a free slot of its bucket if there is one, and
//! otherwise where any other entry goes (the class's free list, or the segment being filled).
//! Either way it is in the index, which stays the record of every entry: the home slot is the
//! shortcut a check tries first, and the index answers when it misses.
//!
//! A slot's state is its header word: 0 is free; [`CLAIMED`] is taken by an entry being written;
//! an entry's header; [`TOMBSTONE`] is an entry removed whose lines wait for the epoch (a reader
//! that found it before it was removed may still be reading it). Claims and the return of
//! tombstones to 0 happen under the allocator's lock, which also keeps each home segment's
//! count of live slots (entries and claims). Tombstones are not counted: a split moves half a
//! segment's entries out and leaves as many tombstones, and counting them would split the
//! segment again at once. A key whose bucket holds only entries and tombstones goes away for
//! now, and moves home once the epoch has freed a slot.
//!
//! When an entry finds its bucket full and at least [`SPLIT_AT_PCT`] % of its home segment's
//! slots are live, the segment splits: a new segment takes the hashes whose
//! next bit is 1, and the engine moves the entries that now belong there (`engine/homing.rs`).
//! The new segment's header records its depth and prefix; the old one's is never rewritten
//! (a torn rewrite would lose the segment), so open rebuilds each directory from the headers,
//! shallowest first, each deeper segment taking its part of an older one's range.

use std::sync::atomic::Ordering;

use crossbeam_epoch::Guard;

use super::{set_at, Alloc, Segments};
use crate::error::Result;
use crate::storage::format::{
    HomeTag, SegmentHeader, CLAIMED, LINE, MAX_ENTRY_LINES, MAX_HOME_DEPTH, TOMBSTONE,
};
use crate::storage::raw::{EpochCell, Protector};
use crate::storage::readers;

/// Slots per bucket (a power of two): the places an entry may take in its home segment.
pub(crate) const BUCKET: u64 = 4;
/// A home segment splits when a bucket is full and this share of its slots is live.
pub(crate) const SPLIT_AT_PCT: u64 = 75;
/// A directory place no segment covers (one lost to damage): those hashes have no home.
const NO_SEGMENT: u32 = u32::MAX;

/// One size class's directory: `segs[top depth bits of the hash]`.
pub(super) struct Dir {
    depth: u32,
    segs: Box<[u32]>,
}

/// The directories of every size class, read without a lock.
pub(super) struct Dirs {
    by_class: Box<[EpochCell<Dir>]>,
    /// Slots per segment, by class (worked out once: no division on a check's path).
    slots: Box<[u64]>,
}

impl Dirs {
    pub(super) fn new(seg_lines: u64) -> Dirs {
        Dirs {
            slots: (0..=u64::from(MAX_ENTRY_LINES))
                .map(|class| (seg_lines - 1) / class.max(1))
                .collect(),
            by_class: (0..=MAX_ENTRY_LINES)
                .map(|_| {
                    EpochCell::new(Dir {
                        depth: 0,
                        segs: Box::new([]),
                    })
                })
                .collect(),
        }
    }
}

/// What the allocator knows of one home segment: its size class, the hashes it holds now
/// (their top `depth` bits are `prefix`), and how many of its slots hold an entry or a claim
/// (not counting tombstones, which the epoch frees soon).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct HomeSeg {
    class: u32,
    depth: u32,
    prefix: u32,
    live: u64,
}

/// The home segments, by segment index (in [`Alloc`], under its lock).
#[derive(Default)]
pub(super) struct Book {
    segs: Vec<Option<HomeSeg>>,
}

impl Book {
    fn get(&self, seg: usize) -> Option<HomeSeg> {
        self.segs.get(seg).copied().flatten()
    }

    fn get_mut(&mut self, seg: usize) -> Option<&mut HomeSeg> {
        self.segs.get_mut(seg).and_then(Option::as_mut)
    }

    /// The lines of the slots not holding an entry in every home segment (free slots, and
    /// removed entries' slots still waiting for the epoch): `slots(class)` the slots a
    /// segment of each size class has.
    fn free_lines(&self, slots: impl Fn(u32) -> u64) -> u64 {
        self.segs
            .iter()
            .flatten()
            .map(|h| slots(h.class).saturating_sub(h.live) * u64::from(h.class))
            .sum()
    }

    /// The home segments of size class `class`, with their indexes.
    fn of_class(&self, class: u32) -> Vec<(usize, HomeSeg)> {
        let with_index = self.segs.iter().enumerate();
        with_index
            .filter_map(|(seg, h)| h.filter(|h| h.class == class).map(|h| (seg, h)))
            .collect()
    }

    fn set(&mut self, seg: usize, h: HomeSeg) {
        if self.segs.len() <= seg {
            self.segs.resize(seg + 1, None);
        }
        if let Some(p) = self.segs.get_mut(seg) {
            *p = Some(h);
        }
    }
}

/// The bucket of a hash in its home segment: where its entry may be.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Bucket {
    /// Global line of the segment's slot 0.
    base: u64,
    /// Lines per slot.
    class: u64,
    /// The slot the hash names, tried first.
    own: u64,
    /// Slots in the segment.
    slots: u64,
}

impl Bucket {
    /// The `k`-th slot to try (`k < BUCKET`, the hash's own slot first); `None` past the last
    /// slot of the segment.
    #[inline]
    pub(crate) fn slot(&self, k: u64) -> Option<u64> {
        let slot = (self.own & !(BUCKET - 1)) | ((self.own + k) & (BUCKET - 1));
        (slot < self.slots).then_some(slot)
    }

    /// The line of the `k`-th slot to try ([`Bucket::slot`]).
    #[inline]
    pub(crate) fn line(&self, k: u64) -> Option<u64> {
        self.slot(k).map(|slot| self.base + slot * self.class)
    }

    /// Words per slot.
    #[inline]
    pub(crate) fn slot_words(&self) -> usize {
        self.class as usize * LINE / 8
    }

    /// The line of the segment's slot 0 (its segment is the bucket's).
    #[inline]
    pub(crate) fn base(&self) -> u64 {
        self.base
    }
}

/// A split: entries of `from` whose hashes now lead to `to` are to move there.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Split {
    pub from: usize,
    pub to: usize,
}

impl Segments {
    /// Slots of `class` lines in one segment (worked out once, in `Dirs::new`).
    #[inline]
    pub(crate) fn home_slots(&self, class: u32) -> u64 {
        self.dirs.slots.get(class as usize).copied().unwrap_or(0)
    }

    /// The free lines of the home segments ([`Book::free_lines`]), for stats.
    pub(super) fn free_home_lines(&self, a: &Alloc) -> u64 {
        a.homes.free_lines(|class| self.home_slots(class))
    }

    /// Whether the store has a home segment (made now, or found at open).
    #[inline]
    pub(crate) fn has_homes(&self) -> bool {
        self.any_home.load(Ordering::Relaxed)
    }

    /// The bucket of `hash` among the home segments of `class` lines; `None` when the class
    /// has no home segment for it.
    #[inline]
    pub(crate) fn home_bucket(
        &self,
        class: u32,
        hash: u64,
        guard: &impl Protector,
    ) -> Option<Bucket> {
        if !self.has_homes() {
            return None;
        }
        let dir = self.dirs.by_class.get(class as usize)?.load(guard)?;
        let top = hash.checked_shr(64 - dir.depth).unwrap_or(0);
        let seg = *dir.segs.get(top as usize)?;
        if seg == NO_SEGMENT {
            return None;
        }
        let slots = self.home_slots(class);
        let class = u64::from(class);
        Some(Bucket {
            base: u64::from(seg) * self.seg_lines() + 1,
            class,
            own: ((hash & 0xFFFF_FFFF) * slots) >> 32,
            slots,
        })
    }

    /// Whether the bucket has a free slot (read without the lock: a hint).
    pub(crate) fn home_has_room(&self, b: &Bucket) -> bool {
        (0..BUCKET).any(|k| b.line(k).is_some_and(|l| self.entry(l).load(0) == 0))
    }

    /// Claim a free slot of bucket `b`: its line, whose header word is [`CLAIMED`] and every
    /// other word zero; `None` if the bucket has none. The caller writes the entry and its
    /// header, or gives the slot back ([`Segments::unclaim`]).
    pub(crate) fn claim_home(&self, b: &Bucket) -> Option<u64> {
        readers::collect();
        let mut a = self.alloc.lock();
        self.drain_released(&mut a);
        for k in 0..BUCKET {
            let Some(line) = b.line(k) else { continue };
            let e = self.entry(line);
            let Some(head) = e.w(0) else { continue };
            if head
                .compare_exchange(0, CLAIMED, Ordering::AcqRel, Ordering::Relaxed)
                .is_err()
            {
                continue;
            }
            for i in 1..(b.class as usize * LINE / 8) {
                if let Some(w) = e.w(i) {
                    w.store(0, Ordering::Relaxed);
                }
            }
            if let Some(h) = a.homes.get_mut(self.seg_of(line)) {
                h.live += 1;
            }
            return Some(line);
        }
        None
    }

    /// Give back a slot claimed and never published.
    pub(crate) fn unclaim(&self, line: u64) {
        let mut a = self.alloc.lock();
        if let Some(w) = self.entry(line).w(0) {
            w.store(0, Ordering::Release);
        }
        if let Some(h) = a.homes.get_mut(self.seg_of(line)) {
            h.live = h.live.saturating_sub(1);
        }
    }

    /// Mark the entry at `line` removed (after it left the index): its header word becomes 0,
    /// or [`TOMBSTONE`] in a home segment, whose slot a claim must not take before the epoch
    /// hands the line back ([`Segments::release_later`]).
    pub(crate) fn clear(&self, line: u64) {
        let Some(w) = self.entry(line).w(0) else {
            return;
        };
        // A store with no home segment (the default) needs no lock to know it.
        if !self.has_homes() {
            w.store(0, Ordering::Release);
            return;
        }
        let mut a = self.alloc.lock();
        match a.homes.get_mut(self.seg_of(line)) {
            Some(h) => {
                w.store(TOMBSTONE, Ordering::Release);
                h.live = h.live.saturating_sub(1);
            }
            None => w.store(0, Ordering::Release),
        }
    }

    /// Hand back the lines the epoch has released (after an expiry pass, so that a home slot
    /// freed there is free for the next check that wants it, not only for the next insert).
    pub(crate) fn reclaim(&self) {
        readers::collect();
        let mut a = self.alloc.lock();
        self.drain_released(&mut a);
    }

    /// Hand the lines whose readers are gone back: to their class's free list, or, in a home
    /// segment, to their bucket (header word 0).
    ///
    /// The caller runs [`readers::collect`] first, before it takes the lock: what has waited
    /// for the read sections too reaches `released` there, and its barrier (a system call)
    /// is not made under the allocator's lock.
    pub(super) fn drain_released(&self, a: &mut Alloc) {
        let released = {
            let mut r = self.released.lock();
            // Most allocations find nothing released: no empty vectors taken and dropped.
            if r.is_empty() {
                return;
            }
            std::mem::take(&mut *r)
        };
        for (line, l) in released.runs.into_iter().flatten().chain(released.lines) {
            if a.homes.get(self.seg_of(line)).is_some() {
                if let Some(w) = self.entry(line).w(0) {
                    w.store(0, Ordering::Release);
                }
            } else if let Some(c) = a.classes.get_mut(l as usize) {
                c.free.push(line);
            }
        }
    }

    /// Whether an entry of `class` lines for `hash` that found its bucket full should make
    /// room by a split ([`Segments::split_home`]): the class has no home segment for it yet,
    /// or [`SPLIT_AT_PCT`] % of the home segment's slots are live and it can
    /// still split.
    pub(crate) fn home_wants_split(&self, class: u32, hash: u64) -> bool {
        if self.private || !self.homes_wanted {
            return false;
        }
        let guard = crossbeam_epoch::pin();
        let Some(b) = self.home_bucket(class, hash, &guard) else {
            return self.dir_is_empty(class, &guard);
        };
        let a = self.alloc.lock();
        a.homes
            .get(self.seg_of(b.base))
            .is_some_and(|h| h.depth < MAX_HOME_DEPTH && h.live * 100 >= SPLIT_AT_PCT * b.slots)
    }

    /// Slots in all the home segments of `class`.
    pub(crate) fn home_capacity(&self, class: u32) -> u64 {
        let per = self.home_slots(class);
        let a = self.alloc.lock();
        a.homes
            .segs
            .iter()
            .flatten()
            .filter(|h| h.class == class)
            .count() as u64
            * per
    }

    fn dir_is_empty(&self, class: u32, guard: &Guard) -> bool {
        self.dirs
            .by_class
            .get(class as usize)
            .and_then(|d| d.load(guard))
            .is_some_and(|d| d.segs.is_empty())
    }

    /// Make room for `hash` among the home segments of `class` lines: the class's first home
    /// segment (`Ok(None)`), or a split of the segment `hash` leads to (`Ok(Some(split))`, the
    /// directory already sending the new segment's hashes there; the caller moves the entries
    /// that belong to it). The caller serialises splits of a class.
    pub(crate) fn split_home(&self, class: u32, hash: u64) -> Result<Option<Split>> {
        let guard = crossbeam_epoch::pin();
        let bucket = self.home_bucket(class, hash, &guard);
        let mut a = self.alloc.lock();
        let made = match bucket {
            None => {
                if !self.dir_is_empty(class, &guard) {
                    return Ok(None);
                }
                let seg = self.new_home_segment(
                    &mut a,
                    class,
                    HomeTag {
                        depth: 0,
                        prefix: 0,
                    },
                )?;
                (seg, None)
            }
            Some(b) => {
                let from = self.seg_of(b.base);
                let Some(old) = a.homes.get(from) else {
                    return Ok(None);
                };
                if old.depth >= MAX_HOME_DEPTH {
                    return Ok(None);
                }
                let tag = HomeTag {
                    depth: old.depth + 1,
                    prefix: (old.prefix << 1) | 1,
                };
                let to = self.new_home_segment(&mut a, class, tag)?;
                if let Some(h) = a.homes.get_mut(from) {
                    h.depth += 1;
                    h.prefix <<= 1;
                }
                (to, Some(Split { from, to }))
            }
        };
        self.publish_dir(&a, class, &guard);
        Ok(made.1)
    }

    /// Take a segment for a home segment of `class` lines for the hashes of `tag`.
    fn new_home_segment(&self, a: &mut Alloc, class: u32, tag: HomeTag) -> Result<usize> {
        let seg = self.take_segment(a)?;
        self.write_segment_header(
            seg,
            SegmentHeader {
                index: seg as u32,
                entry_lines: class,
                home: Some(tag),
            },
        );
        self.adopt_home(a, seg, class, tag, 0);
        Ok(seg)
    }

    /// Install the directory of `class` from the book.
    fn publish_dir(&self, a: &Alloc, class: u32, guard: &Guard) {
        let dir = dir_of(&mut a.homes.of_class(class));
        if let Some(cell) = self.dirs.by_class.get(class as usize) {
            cell.replace(dir, guard);
        }
    }

    /// Register home segment `seg` (made now, or found at open), `live` of its slots holding
    /// entries; its depth and prefix are those of its header until
    /// [`Segments::rebuild_homes`] works out what splits since took from it.
    pub(super) fn adopt_home(
        &self,
        a: &mut Alloc,
        seg: usize,
        class: u32,
        tag: HomeTag,
        live: u64,
    ) {
        set_at(&mut a.ends, seg, self.seg_lines());
        a.homes.set(
            seg,
            HomeSeg {
                class,
                depth: tag.depth,
                prefix: tag.prefix,
                live,
            },
        );
        self.any_home.store(true, Ordering::Relaxed);
    }

    /// After open: every class's directory from its home segments' headers, and each
    /// segment's depth and prefix as the splits since its header left them.
    pub(crate) fn rebuild_homes(&self) {
        let guard = crossbeam_epoch::pin();
        let mut a = self.alloc.lock();
        for class in 1..=MAX_ENTRY_LINES {
            let mut mine = a.homes.of_class(class);
            if mine.is_empty() {
                continue;
            }
            let dir = dir_of(&mut mine);
            for (seg, h) in &mine {
                let places: Vec<usize> = (0..dir.segs.len())
                    .filter(|&i| dir.segs.get(i) == Some(&(*seg as u32)))
                    .collect();
                let Some(&first) = places.first() else {
                    continue; // wholly taken over by deeper segments: holds no home now
                };
                // A segment holds a power-of-two run of the directory: 2^(depth - own).
                let own = dir.depth - places.len().trailing_zeros();
                if let Some(b) = a.homes.get_mut(*seg) {
                    *b = HomeSeg {
                        depth: own,
                        prefix: (first >> (dir.depth - own)) as u32,
                        ..*h
                    };
                }
            }
            if let Some(cell) = self.dirs.by_class.get(class as usize) {
                cell.replace(dir, &guard);
            }
        }
    }
}

/// The directory of one class's home segments: shallowest first, each taking the part of the
/// directory its depth and prefix name (a deeper one takes its part over from the segment it
/// split from). Places no segment names stay [`NO_SEGMENT`].
fn dir_of(mine: &mut [(usize, HomeSeg)]) -> Dir {
    mine.sort_by_key(|(seg, h)| (h.depth, *seg));
    let depth = mine.iter().map(|(_, h)| h.depth).max().unwrap_or(0);
    let mut segs = vec![NO_SEGMENT; 1usize << depth];
    for (seg, h) in mine.iter() {
        let shift = depth - h.depth;
        let from = (h.prefix as usize) << shift;
        let to = ((h.prefix as usize) + 1) << shift;
        for s in segs.iter_mut().take(to).skip(from) {
            *s = *seg as u32;
        }
    }
    Dir {
        depth,
        segs: segs.into_boxed_slice(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seg(class: u32, depth: u32, prefix: u32) -> HomeSeg {
        HomeSeg {
            class,
            depth,
            prefix,
            live: 0,
        }
    }

    #[test]
    fn a_directory_is_rebuilt_from_the_headers_of_splits() {
        // Segment 4 made at depth 0; 7 split from it (prefix 1 of depth 1); 9 split from 4
        // again (prefix 01 of depth 2). Segment 4 now holds prefix 00 alone.
        let mut mine = vec![(9, seg(3, 2, 1)), (4, seg(3, 0, 0)), (7, seg(3, 1, 1))];
        let dir = dir_of(&mut mine);
        assert_eq!(dir.depth, 2);
        assert_eq!(&*dir.segs, &[4, 9, 7, 7]);
        // A range no header names has no home.
        let mut gap = vec![(7, seg(3, 1, 1))];
        assert_eq!(&*dir_of(&mut gap).segs, &[NO_SEGMENT, 7]);
        assert_eq!(&*dir_of(&mut []).segs, &[NO_SEGMENT]);
    }

    #[test]
    fn a_bucket_tries_its_own_slot_first_and_stays_in_the_segment() {
        let b = Bucket {
            base: 1,
            class: 3,
            own: 6,
            slots: 7,
        };
        let lines: Vec<Option<u64>> = (0..BUCKET).map(|k| b.line(k)).collect();
        assert_eq!(lines, [Some(19), None, Some(13), Some(16)]);
    }
}
