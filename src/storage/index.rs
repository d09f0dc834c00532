//! The in-memory index: key hash → entry location, with lock-free lookups.
//!
//! The index is split into [`STRIPES`] stripes by the top bits of the hash. Each stripe is an
//! open-addressing table of `AtomicU64` entries, reached through a crossbeam-epoch pointer:
//!
//! * readers hold an epoch guard or a read section (`readers.rs`: the check's usual path),
//!   load the table and probe it linearly; no lock, no allocation;
//! * writers (insert, remove, resize) take the stripe's mutex; an insert publishes its entry
//!   with a `Release` store after the entry's bytes are written, so a reader that sees the index
//!   entry sees a complete entry;
//! * a resize builds a new table, swaps the pointer and retires the old table through the epoch
//!   and then the read sections, so a reader still probing the old one is never left with
//!   freed memory. A reader that misses
//!   a key because it probed the old table falls back to the locked path, which looks again.
//!
//! An index entry packs the entry's line id in its low [`ID_BITS`] bits (a store's file holds
//! at most [`MAX_LINES`] lines, 4 TiB) and the low [`KEPT_BITS`] bits of the key's hash above
//! them: `hash << ID_BITS | (line + 2)`; 0 is an empty place, 1 a tombstone. A probe opens an
//! entry only when all the kept bits match, so rarely a wrong one. A table positions entries by
//! the low bits of their hash, so a resize places every entry from its own word, with no key
//! read, up to tables of 2^27 places a stripe; only a larger table reads each live key from
//! its entry to hash it again ([`Rehash`]), the entries' lines prefetched a few ahead.
//!
//! The index is not stored: it is rebuilt from the entries when a store is opened, with a fresh
//! random hash seed each time (HashDoS resistance without persisting a secret).

use std::sync::atomic::{AtomicU64, Ordering};

use crossbeam_epoch::Guard;
use parking_lot::{Mutex, MutexGuard};

use super::raw::{self, EpochCell, Protector};

/// Number of stripes (a power of two).
pub(crate) const STRIPES: usize = 64;
const STRIPE_SHIFT: u32 = 64 - STRIPES.trailing_zeros();
const EMPTY: u64 = 0;
const TOMBSTONE: u64 = 1;
/// The bits of an index word that hold a line id (plus 2, for the empty and tombstone words).
const ID_BITS: u32 = 37;
const ID_MASK: u64 = (1 << ID_BITS) - 1;
/// The most lines a store's file holds (4 TiB): every line id, plus 2, fits [`ID_BITS`].
pub(crate) const MAX_LINES: u64 = 1 << (ID_BITS - 1);
/// The low bits of a key's hash an index word keeps above its line id.
const KEPT_BITS: u32 = 64 - ID_BITS;
const MIN_CAPACITY: usize = 16;
/// The largest table [`Index::reserve`] makes for one stripe ahead of its entries (a count
/// read from a damaged file header must not allocate without bound): 2^26 places, 512 MiB.
const MAX_RESERVE: usize = 1 << 26;
/// How far a resize reads the entries' keys behind its scan of the old table, their lines
/// prefetched as the scan passes them: so many misses in flight at once.
const RESIZE_AHEAD: usize = 8;

/// What a growing index asks of the entries it points at when the bits of the hash it keeps do
/// not place an entry in the larger table: the hash of the key stored at a line, and a hint to
/// start loading that key before it is asked for.
pub(crate) trait Rehash {
    /// Start loading what [`Rehash::hash`] will read for `line`, without waiting for it.
    fn prefetch(&self, line: u64) {
        let _ = line;
    }

    /// The hash of the key stored at `line`.
    fn hash(&self, line: u64) -> u64;
}

/// A plain function of the line (tests): nothing to prefetch.
#[cfg(test)]
impl<F: Fn(u64) -> u64> Rehash for F {
    fn hash(&self, line: u64) -> u64 {
        self(line)
    }
}

struct Table {
    mask: usize,
    entries: Box<[AtomicU64]>,
}

impl Table {
    fn with_capacity(cap: usize) -> Table {
        let cap = cap.next_power_of_two().max(MIN_CAPACITY);
        Table {
            mask: cap - 1,
            entries: (0..cap).map(|_| AtomicU64::new(EMPTY)).collect(),
        }
    }
}

/// Counts kept under the stripe lock.
pub(crate) struct StripeState {
    /// Live entries.
    live: usize,
    /// Places that are not empty (live entries and tombstones).
    used: usize,
}

#[repr(align(64))]
struct Stripe {
    table: EpochCell<Table>,
    lock: Mutex<StripeState>,
}

/// The striped index.
pub(crate) struct Index {
    stripes: Box<[Stripe]>,
    /// The largest table whose places a resize takes from the kept bits of each entry's hash
    /// (2^KEPT_BITS places; the tests lower it to reach the other path).
    kept_places: u64,
}

/// The lock of one stripe, held across a find-or-insert.
pub(crate) struct StripeLock<'a> {
    stripe: &'a Stripe,
    state: MutexGuard<'a, StripeState>,
    kept_places: u64,
}

/// The bits of `hash` an index word keeps.
#[inline]
fn kept(hash: u64) -> u64 {
    hash & ((1 << KEPT_BITS) - 1)
}

/// The index word of `line` for a key of `hash` (`line` below [`MAX_LINES`]).
#[inline]
fn pack(hash: u64, line: u64) -> u64 {
    (hash << ID_BITS) | ((line + 2) & ID_MASK)
}

/// The line index word `e` points at.
#[inline]
fn line_of(e: u64) -> u64 {
    (e & ID_MASK) - 2
}

impl Index {
    pub(crate) fn new() -> Index {
        let stripes = (0..STRIPES)
            .map(|_| Stripe {
                table: EpochCell::new(Table::with_capacity(MIN_CAPACITY)),
                lock: Mutex::new(StripeState { live: 0, used: 0 }),
            })
            .collect();
        Index {
            stripes,
            kept_places: 1 << KEPT_BITS,
        }
    }

    #[inline]
    fn stripe(&self, hash: u64) -> &Stripe {
        // The top bits of the hash: below `STRIPES` by construction, the table's length.
        let i = (hash >> STRIPE_SHIFT) as usize;
        #[expect(
            clippy::indexing_slicing,
            reason = "`i` has 64 - STRIPE_SHIFT bits, so it is below STRIPES, the slice's length"
        )]
        &self.stripes[i]
    }

    /// Find the entry for `hash` whose line satisfies `matches`, without a lock.
    #[inline]
    pub(crate) fn find(
        &self,
        hash: u64,
        guard: &Guard,
        mut matches: impl FnMut(u64) -> bool,
    ) -> Option<u64> {
        self.find_map(hash, guard, |line| matches(line).then_some(line))
    }

    /// The first `Some` that `found` gives for a line of `hash`, probing without a lock: what
    /// a check takes from the entry it compared the key in (so that it is not looked up twice).
    #[inline]
    pub(crate) fn find_map<T>(
        &self,
        hash: u64,
        guard: &impl Protector,
        mut found: impl FnMut(u64) -> Option<T>,
    ) -> Option<T> {
        let table = self.stripe(hash).table.load(guard)?;
        let kept = kept(hash);
        let mut pos = hash as usize & table.mask;
        for _ in 0..=table.mask {
            let e = table.entries.get(pos)?.load(Ordering::Acquire);
            if e == EMPTY {
                return None;
            }
            if e != TOMBSTONE && e >> ID_BITS == kept {
                if let Some(t) = found(line_of(e)) {
                    return Some(t);
                }
            }
            pos = (pos + 1) & table.mask;
        }
        None
    }

    /// Start loading the index slot a probe for `hash` reads first, without waiting for it.
    #[inline]
    pub(crate) fn prefetch(&self, hash: u64, guard: &Guard) {
        if let Some(table) = self.stripe(hash).table.load(guard) {
            let pos = hash as usize & table.mask;
            if let Some(place) = table.entries.get(pos) {
                raw::prefetch(place);
            }
        }
    }

    /// Lock the stripe of `hash` for a find-or-insert, a removal or a replacement.
    pub(crate) fn lock(&self, hash: u64) -> StripeLock<'_> {
        let stripe = self.stripe(hash);
        StripeLock {
            stripe,
            state: stripe.lock.lock(),
            kept_places: self.kept_places,
        }
    }

    /// Make room for about `entries` entries before they are inserted: every stripe that is
    /// still empty gets a table its share fits in without growing. For a store opening a file
    /// whose count of entries is known: each growth of a table hashes its entries' keys again,
    /// reading every entry it holds from the file, so growing one step at a time cost an open
    /// of 1M keys about a third of its time.
    pub(crate) fn reserve(&self, entries: u64, guard: &Guard) {
        let share = usize::try_from(entries / STRIPES as u64).unwrap_or(usize::MAX);
        // A stripe's share varies by a few hundred at 1M keys: room for an eighth more under
        // the load at which a table grows (3/4), and no more (twice that, as `resize` makes,
        // would double the index's memory when the rounding up to a power of two adds its
        // own half).
        let cap = share.saturating_add(share / 8 + 16).saturating_mul(4) / 3 + 1;
        if cap <= MIN_CAPACITY || cap > MAX_RESERVE {
            return;
        }
        for stripe in self.stripes.iter() {
            let state = stripe.lock.lock();
            if state.used == 0 {
                stripe.table.replace(Table::with_capacity(cap), guard);
            }
        }
    }

    /// Number of live entries (takes every stripe lock in turn).
    pub(crate) fn len(&self) -> usize {
        self.stripes.iter().map(|s| s.lock.lock().live).sum()
    }
}

impl StripeLock<'_> {
    /// Insert `line` for `hash` (the caller checked it is absent under this lock).
    pub(crate) fn insert(&mut self, hash: u64, line: u64, guard: &Guard, lines: &impl Rehash) {
        let mut table = self.stripe.table.load(guard);
        let cap = table.map_or(0, |t| t.mask + 1);
        if (self.state.used + 1) * 4 > cap * 3 {
            table = self.resize(guard, lines);
        }
        let Some(t) = table else {
            return;
        };
        let mut pos = hash as usize & t.mask;
        loop {
            let Some(place) = t.entries.get(pos) else {
                return;
            };
            let e = place.load(Ordering::Relaxed);
            if e == EMPTY || e == TOMBSTONE {
                if e == EMPTY {
                    self.state.used += 1;
                }
                self.state.live += 1;
                place.store(pack(hash, line), Ordering::Release);
                return;
            }
            pos = (pos + 1) & t.mask;
        }
    }

    /// Point the entry of `hash` at `old` to `new` (an entry that moved).
    pub(crate) fn replace(&mut self, hash: u64, old: u64, new: u64, guard: &Guard) -> bool {
        self.update(hash, old, pack(hash, new), guard)
    }

    /// Remove the entry of `hash` at `line` (the compactor's unlink step).
    #[allow(dead_code)]
    pub(crate) fn remove(&mut self, hash: u64, line: u64, guard: &Guard) -> bool {
        let done = self.update(hash, line, TOMBSTONE, guard);
        if done {
            self.state.live -= 1;
        }
        done
    }

    fn update(&mut self, hash: u64, line: u64, value: u64, guard: &Guard) -> bool {
        let Some(t) = self.stripe.table.load(guard) else {
            return false;
        };
        let want = pack(hash, line);
        let mut pos = hash as usize & t.mask;
        for _ in 0..=t.mask {
            let Some(place) = t.entries.get(pos) else {
                return false;
            };
            let e = place.load(Ordering::Relaxed);
            if e == EMPTY {
                return false;
            }
            if e == want {
                place.store(value, Ordering::Release);
                return true;
            }
            pos = (pos + 1) & t.mask;
        }
        false
    }

    /// Move the stripe into a table twice its live entries, under its lock (inserts into this
    /// stripe wait; lookups go on in the old table). Each entry is placed from the bits of its
    /// hash its word keeps; only a table too large for them (over 2^27 places) reads each live
    /// entry's key from the file to hash it again (a miss per entry, so the keys are read
    /// [`RESIZE_AHEAD`] entries behind the scan that prefetches them).
    fn resize<'g>(&mut self, guard: &'g Guard, lines: &impl Rehash) -> Option<&'g Table> {
        let new = Table::with_capacity((self.state.live + 1) * 2);
        if let Some(o) = self.stripe.table.load(guard) {
            let live = o
                .entries
                .iter()
                .map(|e| e.load(Ordering::Relaxed))
                .filter(|&e| e != EMPTY && e != TOMBSTONE);
            if (new.mask as u64) < self.kept_places {
                for e in live {
                    place(&new, e, e >> ID_BITS);
                }
            } else {
                let mut behind = [EMPTY; RESIZE_AHEAD];
                for (seen, e) in live.enumerate() {
                    lines.prefetch(line_of(e));
                    if let Some(slot) = behind.get_mut(seen % RESIZE_AHEAD) {
                        let due = std::mem::replace(slot, e);
                        if due != EMPTY {
                            place(&new, due, lines.hash(line_of(due)));
                        }
                    }
                }
                for due in behind {
                    if due != EMPTY {
                        place(&new, due, lines.hash(line_of(due)));
                    }
                }
            }
        }
        self.state.used = self.state.live;
        // The swap publishes the new table with Release; readers still probing the old one
        // keep it alive through their guards.
        self.stripe.table.replace(new, guard)
    }
}

/// Put index word `e` (a live entry, of a key whose hash has low bits `h`) into `table`, at
/// the first empty place from its key's.
fn place(table: &Table, e: u64, h: u64) {
    let mut pos = h as usize & table.mask;
    while table
        .entries
        .get(pos)
        .is_some_and(|p| p.load(Ordering::Relaxed) != EMPTY)
    {
        pos = (pos + 1) & table.mask;
    }
    if let Some(p) = table.entries.get(pos) {
        p.store(e, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn insert_find_remove_resize() {
        let idx = Index::new();
        let guard = crossbeam_epoch::pin();
        // Hashes that all land in stripe 0, so the table must resize several times.
        let hash = |line: u64| line.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 8;
        for line in 0..1000u64 {
            let h = hash(line);
            let mut l = idx.lock(h);
            l.insert(h, line, &guard, &hash);
        }
        assert_eq!(idx.len(), 1000);
        for line in 0..1000u64 {
            assert_eq!(idx.find(hash(line), &guard, |x| x == line), Some(line));
        }
        assert_eq!(idx.find(hash(5000), &guard, |x| x == 5000), None);
        {
            let h = hash(7);
            let mut l = idx.lock(h);
            assert!(l.remove(h, 7, &guard));
            assert!(!l.remove(h, 7, &guard));
        }
        assert_eq!(idx.find(hash(7), &guard, |x| x == 7), None);
        {
            let h = hash(8);
            let mut l = idx.lock(h);
            assert!(l.replace(h, 8, 123_456, &guard));
        }
        assert_eq!(idx.find(hash(8), &guard, |x| x == 123_456), Some(123_456));
        assert_eq!(idx.len(), 999);
    }

    /// Counts what a resize asks of the entries.
    struct Counting {
        prefetched: std::cell::RefCell<Vec<u64>>,
        hashed: std::cell::RefCell<Vec<u64>>,
    }

    impl Rehash for Counting {
        fn prefetch(&self, line: u64) {
            self.prefetched.borrow_mut().push(line);
        }

        fn hash(&self, line: u64) -> u64 {
            self.hashed.borrow_mut().push(line);
            in_stripe_0(line)
        }
    }

    /// A hash of `line` in stripe 0 (its top bits zero), so that one table grows many times.
    fn in_stripe_0(line: u64) -> u64 {
        line.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 8
    }

    #[test]
    fn a_resize_past_the_kept_bits_prefetches_every_live_key_once_and_hashes_it_once() {
        // Every table counts as too large for the kept bits, so every resize reads the keys.
        let idx = Index {
            kept_places: 0,
            ..Index::new()
        };
        let guard = crossbeam_epoch::pin();
        let lines = Counting {
            prefetched: Default::default(),
            hashed: Default::default(),
        };
        // Stripe 0 only (the top bits are zero), so the table grows several times; one in
        // five entries removed on the way (tombstones are not moved).
        for line in 0..300u64 {
            let h = in_stripe_0(line);
            idx.lock(h).insert(h, line, &guard, &lines);
            if line % 5 == 4 {
                let gone = in_stripe_0(line - 2);
                assert!(idx.lock(gone).remove(gone, line - 2, &guard));
            }
        }
        let (prefetched, hashed) = (lines.prefetched.take(), lines.hashed.take());
        assert!(!hashed.is_empty(), "the table grew");
        // Each resize prefetches and hashes the same live lines, once each: the same multiset.
        let mut p = prefetched.clone();
        let mut h = hashed.clone();
        p.sort_unstable();
        h.sort_unstable();
        assert_eq!(p, h);
        // A line is hashed at most `RESIZE_AHEAD` steps after its prefetch: by the time the
        // i-th hash is asked for, that line was prefetched as often as it has been hashed.
        for (i, line) in hashed.iter().enumerate() {
            let count = |s: &[u64]| s.iter().filter(|x| *x == line).count();
            let fetched = count(&prefetched[..(i + RESIZE_AHEAD).min(prefetched.len())]);
            assert!(fetched >= count(&hashed[..=i]), "line {line}, hash {i}");
        }
        // Every live entry is found after the resizes; the removed ones are not.
        for line in 0..300u64 {
            let found = idx.find(in_stripe_0(line), &guard, |x| x == line);
            let removed = line % 5 == 2 && line + 2 < 300;
            assert_eq!(found.is_some(), !removed, "line {line}");
        }
        assert_eq!(idx.len(), 300 - 60);
    }

    #[test]
    fn a_reserved_index_takes_its_entries_without_growing() {
        let idx = Index::new();
        let guard = crossbeam_epoch::pin();
        let n = 20_000u64;
        idx.reserve(n, &guard);
        // Spread over every stripe, as real hashes are.
        let hash = |line: u64| line.wrapping_mul(0x9E37_79B9_7F4A_7C15);
        let regrown = std::cell::Cell::new(0u64);
        for line in 0..n {
            let h = hash(line);
            let mut l = idx.lock(h);
            l.insert(h, line, &guard, &|x| {
                regrown.set(regrown.get() + 1);
                hash(x)
            });
        }
        assert_eq!(
            regrown.get(),
            0,
            "no table grew, so no key was hashed again"
        );
        assert_eq!(idx.len(), n as usize);
        for line in (0..n).step_by(7) {
            assert_eq!(idx.find(hash(line), &guard, |x| x == line), Some(line));
        }
        // An index that already holds entries keeps its tables; a count past any file's
        // reach (a damaged header) allocates nothing.
        idx.reserve(10 * n, &guard);
        idx.reserve(u64::MAX, &guard);
        assert_eq!(idx.find(hash(3), &guard, |x| x == 3), Some(3));
        assert_eq!(idx.len(), n as usize);
    }

    #[test]
    fn resizes_place_entries_from_the_kept_bits_without_reading_a_key() {
        let idx = Index::new();
        let guard = crossbeam_epoch::pin();
        let read = std::cell::Cell::new(0u64);
        let keys = |x: u64| {
            read.set(read.get() + 1);
            in_stripe_0(x)
        };
        // Stripe 0 only, so its table grows from 16 places to 8192; the last lines are the
        // largest ids a word holds.
        let lines: Vec<u64> = (0..3000u64).chain(MAX_LINES - 100..MAX_LINES).collect();
        for &line in &lines {
            let h = in_stripe_0(line);
            idx.lock(h).insert(h, line, &guard, &keys);
        }
        assert_eq!(read.get(), 0, "no resize read a key");
        for &line in &lines {
            assert_eq!(
                idx.find(in_stripe_0(line), &guard, |x| x == line),
                Some(line)
            );
        }
        assert_eq!(idx.len(), lines.len());
    }

    #[test]
    fn a_word_keeps_its_line_and_the_low_bits_of_its_hash() {
        for line in [0, 1, MAX_LINES / 2, MAX_LINES - 1] {
            for hash in [0, 1, u64::MAX, 0x9E37_79B9_7F4A_7C15] {
                let e = pack(hash, line);
                assert!(e != EMPTY && e != TOMBSTONE);
                assert_eq!(line_of(e), line);
                assert_eq!(e >> ID_BITS, kept(hash));
                assert_eq!(kept(hash), hash % (1 << KEPT_BITS));
            }
        }
    }
}
