//! The only door to mapped memory.
//!
//! Every byte of a store lives in memory maps made here, and everything outside this module
//! reaches them as `&AtomicU64` words handed out by [`Maps`]. Nothing is ever seen as `&[u8]` or
//! `&mut`: other threads update window words in place at any time, and memmap2's `MmapRaw` is
//! the map type meant for that.
//!
//! # Why the accesses are sound
//!
//! * **Alignment**: maps start on a page boundary and every word offset is a multiple of 8.
//! * **Bounds**: [`Maps::word`] checks the offset against the map's length.
//! * **Lifetime**: a map, once made, is only dropped when the [`Maps`] that owns it is dropped;
//!   the returned references borrow the `Maps`, so they cannot outlive it. Maps are never
//!   remapped or moved, and the file is never shrunk while mapped.
//! * **No mixed access**: all accesses from this process go through atomics, so concurrent
//!   readers and writers are data-race free. Other processes are kept out by the exclusive
//!   file lock the store holds (`docs/DESIGN.md`); a file changed behind the lock's back can
//!   hold wrong values, which every reader validates (crc, descriptors), but it cannot make an
//!   atomic access unsound.

use std::fs::File;
use std::io;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicPtr, AtomicU64, Ordering};
use std::sync::Arc;

use memmap2::{MmapOptions, MmapRaw};
use parking_lot::Mutex;

/// One memory map: the file header page or one segment.
pub(crate) struct Map {
    raw: MmapRaw,
}

impl Map {
    /// An anonymous map of `len` zeroed bytes (in-memory stores).
    pub(crate) fn anon(len: usize) -> io::Result<Map> {
        let m = MmapOptions::new().len(len).map_anon()?;
        let raw = MmapRaw::from(m);
        // Transparent huge pages cut TLB misses on random access; refusal is harmless. (Miri
        // cannot run the madvise call, and the hint means nothing there.)
        #[cfg(all(target_os = "linux", not(miri)))]
        let _ = raw.advise(memmap2::Advice::HugePage);
        Ok(Map { raw })
    }

    /// A shared map of `file` bytes `offset..offset + len`.
    pub(crate) fn file(file: &File, offset: u64, len: usize) -> io::Result<Map> {
        let raw = MmapOptions::new().offset(offset).len(len).map_raw(file)?;
        Ok(Map { raw })
    }

    /// Ask the kernel to back this map with 2 MiB pages where it can (`MADV_HUGEPAGE`): for a
    /// segment on a 2 MiB boundary of its file (`format::SEGMENTS_START`), on a kernel and file
    /// system that keep large folios in the page cache (ext4 and XFS on recent Linux). Best
    /// effort: a refusal, or a kernel that ignores it, changes nothing but speed. (Miri cannot
    /// run the madvise call.)
    pub(crate) fn advise_huge(&self) {
        #[cfg(all(target_os = "linux", not(miri)))]
        let _ = self.raw.advise(memmap2::Advice::HugePage);
    }

    /// Fault in the first `len` bytes of the map (all of it if shorter), writable, now
    /// (`MADV_POPULATE_WRITE`): for a segment just grown, so that the checks that fill it do
    /// not each meet a page's first-touch fault. Best effort: a kernel without it (before
    /// 5.14) or a refusal changes nothing. (Miri cannot run the madvise call.)
    pub(crate) fn populate(&self, len: usize) {
        let len = len.min(self.raw.len());
        #[cfg(all(target_os = "linux", not(miri)))]
        let _ = self
            .raw
            .advise_range(memmap2::Advice::PopulateWrite, 0, len);
        #[cfg(not(all(target_os = "linux", not(miri))))]
        let _ = len;
    }

    /// A private copy-on-write map of `file` bytes `offset..offset + len`, for read-only views
    /// (`Store::open_read_only`): what this process writes stays in its own memory and never
    /// reaches the file, which may be open for reading only.
    pub(crate) fn file_private(file: &File, offset: u64, len: usize) -> io::Result<Map> {
        // SAFETY: memmap2 marks file maps unsafe because the file can change under the map (a
        // running store writes it while a read-only view looks). Every access to the map goes
        // through atomics (module docs), so a change from outside is seen as some value, which
        // readers validate, never as a data race in this process.
        let m = unsafe { MmapOptions::new().offset(offset).len(len).map_copy(file)? };
        Ok(Map {
            raw: MmapRaw::from(m),
        })
    }

    fn base(&self) -> NonNull<u8> {
        // An mmap that succeeded never returns a null address.
        NonNull::new(self.raw.as_mut_ptr()).unwrap_or(NonNull::dangling())
    }

    fn len(&self) -> usize {
        self.raw.len()
    }

    /// The word at byte `offset` of this map (`None` if out of bounds or unaligned).
    pub(crate) fn word(&self, offset: usize) -> Option<&AtomicU64> {
        word_at(self.base(), self.len(), offset)
    }
}

fn word_at<'a>(base: NonNull<u8>, len: usize, offset: usize) -> Option<&'a AtomicU64> {
    if !offset.is_multiple_of(8) || offset.checked_add(8)? > len {
        return None;
    }
    // SAFETY: `offset + 8 <= len`, so the 8 bytes are inside the map; the base is page aligned
    // and `offset` a multiple of 8, so the pointer is 8-aligned; the caller ties `'a` to the
    // owner of the map, which is never unmapped while borrowed (module docs); and every access
    // to mapped memory from this process is atomic, so there is no data race.
    Some(unsafe { AtomicU64::from_ptr(base.as_ptr().add(offset).cast::<u64>()) })
}

/// Ask the processor to start loading the cache line of address `p`, without waiting for it:
/// a check that knows which lines of an entry it will read issues their misses together
/// instead of one after another. Only a hint (no-op off x86-64); it never changes what any
/// load returns, and `p` need not point at anything: the address is not dereferenced, so a
/// caller may pass one it has not bounds-checked.
#[inline(always)]
pub(crate) fn prefetch(p: *const AtomicU64) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: `_mm_prefetch` needs SSE, which every x86-64 processor has (it is part of the
    // target's baseline). A prefetch reads nothing into the program and, by the instruction's
    // definition in Intel's and AMD's manuals, raises no exception whatever the address, so no
    // pointer is dereferenced and no bound needs to hold.
    unsafe {
        use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
        _mm_prefetch::<_MM_HINT_T0>(p.cast::<i8>());
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = p;
}

/// The segments of a store: a fixed table of base addresses that readers load without a lock,
/// and the maps that own them.
pub(crate) struct Maps {
    bases: Box<[AtomicPtr<u8>]>,
    seg_len: usize,
    /// Shared so that a long call on one map (an msync, a populate) runs without the lock.
    owned: Mutex<Vec<Arc<Map>>>,
}

// SAFETY: the raw base pointers are only turned into `&AtomicU64` by `word`, whose accesses are
// atomic (thread safe by definition); the maps themselves are owned by the mutex.
unsafe impl Send for Maps {}
// SAFETY: as above: shared access only ever produces atomics.
unsafe impl Sync for Maps {}

impl Maps {
    /// An empty table with room for `max_segments` segments of `seg_len` bytes each.
    pub(crate) fn new(max_segments: usize, seg_len: usize) -> Maps {
        let bases = (0..max_segments)
            .map(|_| AtomicPtr::new(std::ptr::null_mut()))
            .collect();
        Maps {
            bases,
            seg_len,
            owned: Mutex::new(Vec::new()),
        }
    }

    /// Fault in the first `len` bytes of segment `seg`, writable ([`Map::populate`]; nothing
    /// if it is not mapped).
    pub(crate) fn populate(&self, seg: usize, len: usize) {
        if let Some(map) = self.map(seg) {
            map.populate(len);
        }
    }

    /// The map of segment `seg`, for a call that must not hold the table's lock (a populate
    /// of 4 MiB took 8-44 ms under strace on a busy file, and `count` takes the lock).
    fn map(&self, seg: usize) -> Option<Arc<Map>> {
        self.owned.lock().get(seg).cloned()
    }

    /// Number of segments mapped so far.
    pub(crate) fn count(&self) -> usize {
        self.owned.lock().len()
    }

    /// The largest number of segments the table can hold.
    pub(crate) fn capacity(&self) -> usize {
        self.bases.len()
    }

    /// Add `map` as the next segment and return its index. The map must be `seg_len` long.
    pub(crate) fn push(&self, map: Map) -> io::Result<usize> {
        let mut owned = self.owned.lock();
        let idx = owned.len();
        if map.len() != self.seg_len {
            return Err(io::Error::other("segment map of the wrong length"));
        }
        let Some(slot) = self.bases.get(idx) else {
            return Err(io::Error::other("segment table full"));
        };
        let base = map.base();
        owned.push(Arc::new(map));
        // Release: a reader that finds a slot id in the index (published later with Release)
        // sees this base.
        slot.store(base.as_ptr(), Ordering::Release);
        Ok(idx)
    }

    /// The word at byte `offset` of segment `seg`.
    #[inline]
    pub(crate) fn word(&self, seg: usize, offset: usize) -> Option<&AtomicU64> {
        let base = NonNull::new(self.bases.get(seg)?.load(Ordering::Acquire))?;
        word_at(base, self.seg_len, offset)
    }

    /// The words of segment `seg` from byte `offset` to the segment's end, as a slice of
    /// atomics (empty if the segment is not mapped or `offset` is unaligned or past the end).
    /// One lookup of the segment's base for all the words an entry reads.
    #[inline]
    pub(crate) fn words_from(&self, seg: usize, offset: usize) -> &[AtomicU64] {
        let Some(base) = self
            .bases
            .get(seg)
            .and_then(|b| NonNull::new(b.load(Ordering::Acquire)))
        else {
            return &[];
        };
        if !offset.is_multiple_of(8) || offset >= self.seg_len {
            return &[];
        }
        let n = (self.seg_len - offset) / 8;
        // SAFETY: the base is the start of a live map of `seg_len` bytes (published by `push`
        // with Release, loaded here with Acquire), and `offset + 8 * n <= seg_len`, so the `n`
        // words are inside it; the base is page aligned and `offset` a multiple of 8, so they
        // are 8-aligned, and `AtomicU64` has the size and alignment of `u64`; the slice
        // borrows `self`, which owns the map and never unmaps it while borrowed; and every
        // access to mapped memory goes through atomics (interior mutability), so sharing the
        // slice while other threads write the words is sound.
        unsafe { std::slice::from_raw_parts(base.as_ptr().add(offset).cast::<AtomicU64>(), n) }
    }

    /// Flush bytes `offset..offset + len` of segment `seg` to the file (msync).
    pub(crate) fn flush_range(&self, seg: usize, offset: usize, len: usize) -> io::Result<()> {
        match self.map(seg) {
            Some(m) => m.raw.flush_range(offset, len),
            None => Ok(()),
        }
    }
}

/// What keeps a value loaded from an [`EpochCell`] alive while it is used: an epoch guard, or
/// a read section (`readers.rs`), which every retired value also waits for. Implemented for
/// those two only.
pub(crate) trait Protector {}

impl Protector for crossbeam_epoch::Guard {}

impl Protector for super::readers::Section {}

/// An epoch-protected, replaceable heap value: lock-free readers, retiring replacements.
///
/// The index tables and the home directories live in these. Every value a cell ever held is
/// freed either by `replace` (after every guard pinned before the replacement is gone, and
/// then every read section open at that point: `readers.rs`) or by the cell's `Drop` (no
/// reader can exist then), which is what makes [`EpochCell::load`] sound.
pub(crate) struct EpochCell<T: Send + 'static> {
    inner: crossbeam_epoch::Atomic<T>,
}

/// A value swapped out of an [`EpochCell`], on its way to being freed.
struct Retired<T>(*mut T);

// SAFETY: the pointer is the only way left to the value (it was swapped out of its cell), and
// the value is `Send`: freeing it on another thread is moving it there.
unsafe impl<T: Send> Send for Retired<T> {}

impl<T> Retired<T> {
    fn free(self) {
        // SAFETY: the pointer came from `Owned::new` (in `new` or `replace`) through the cell,
        // and only the one `Retired` made of it frees it, once, after every reader is gone.
        drop(unsafe { crossbeam_epoch::Owned::from_raw(self.0) });
    }
}

impl<T: Send + 'static> EpochCell<T> {
    pub(crate) fn new(value: T) -> Self {
        EpochCell {
            inner: crossbeam_epoch::Atomic::new(value),
        }
    }

    /// The current value, valid while `protector` (an epoch guard or a read section) lives.
    #[inline]
    pub(crate) fn load<'g, P: Protector>(&self, _protector: &'g P) -> Option<&'g T> {
        // SAFETY: `unprotected` only stands in for a guard in the load's signature: what keeps
        // the value alive is `_protector`. Values leave the cell only through `replace`,
        // which frees them after every guard pinned and every read section open at that
        // point is gone, or through `Drop`, which needs `&mut self` and so cannot overlap
        // this borrow.
        let s = self
            .inner
            .load(Ordering::Acquire, unsafe { crossbeam_epoch::unprotected() });
        // SAFETY: as above: the value outlives `'g`.
        unsafe { s.as_ref() }
    }

    /// Install `value` and retire the previous one; returns the new value.
    pub(crate) fn replace<'g>(&self, value: T, guard: &'g crossbeam_epoch::Guard) -> Option<&'g T> {
        let new = crossbeam_epoch::Owned::new(value).into_shared(guard);
        let old = self.inner.swap(new, Ordering::AcqRel, guard);
        if !old.is_null() {
            // No longer reachable through the cell (swapped out above): freed once every
            // guard pinned now is unpinned, and then every read section open then is closed.
            let old = Retired(old.as_raw().cast_mut());
            guard.defer(move || super::readers::retire(Box::new(move || old.free())));
        }
        // SAFETY: `new` was just installed under `guard`; see `load`.
        unsafe { new.as_ref() }
    }
}

impl<T: Send + 'static> Drop for EpochCell<T> {
    fn drop(&mut self) {
        // SAFETY: `&mut self` means no other thread can reach the cell; the value was
        // allocated by `Owned::new` in `new` or `replace`, and is freed exactly once here.
        unsafe {
            let g = crossbeam_epoch::unprotected();
            let s = self.inner.load(Ordering::Acquire, g);
            if !s.is_null() {
                drop(s.into_owned());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_are_bounds_checked() {
        let maps = Maps::new(2, 4096);
        assert!(maps.word(0, 0).is_none(), "no segment yet");
        maps.push(Map::anon(4096).expect("anon map")).expect("push");
        let w = maps.word(0, 8).expect("in bounds");
        w.store(42, Ordering::Relaxed);
        assert_eq!(maps.word(0, 8).map(|w| w.load(Ordering::Relaxed)), Some(42));
        assert!(maps.word(0, 4090).is_none(), "crosses the end");
        assert!(maps.word(0, 4).is_none(), "misaligned");
        assert!(maps.word(1, 0).is_none(), "segment not mapped");
        // A run of words from an offset to the segment's end: the same bounds.
        let run = maps.words_from(0, 8);
        assert_eq!(run.len(), (4096 - 8) / 8);
        assert_eq!(run.first().map(|w| w.load(Ordering::Relaxed)), Some(42));
        let tail = maps.words_from(0, 4088);
        assert_eq!(tail.len(), 1, "the last word");
        tail.iter().for_each(|w| w.store(7, Ordering::Relaxed));
        assert_eq!(
            maps.word(0, 4088).map(|w| w.load(Ordering::Relaxed)),
            Some(7)
        );
        assert!(maps.words_from(0, 4096).is_empty(), "past the end");
        assert!(maps.words_from(0, 12).is_empty(), "misaligned");
        assert!(maps.words_from(1, 0).is_empty(), "segment not mapped");
        assert!(
            maps.push(Map::anon(8192).expect("anon")).is_err(),
            "wrong length"
        );
    }
}
