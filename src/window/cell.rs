//! The protocols on a window word, written once over any 64-bit atomic cell.
//!
//! The store runs them on `std::sync::atomic::AtomicU64` words in mapped memory; the tests below
//! run the very same functions on loom's `AtomicU64`, which explores every interleaving of a few
//! threads (and the orderings' allowed reorderings) to check:
//!
//! * **add**: concurrent check-and-increments never admit more than the limit, and every
//!   admitted request is counted once;
//! * **all or nothing over several windows**: a request refused by a later window takes its
//!   count back from the earlier ones;
//! * **freeze**: once a word is frozen (its entry is moving, or being unlinked by the
//!   compactor), no request is counted in it any more, so the copy made after the freeze holds
//!   every admitted request; and the compactor freezes a word only while it is expired.
//!
//! What loom cannot reach (the index, whose tables live behind crossbeam-epoch, and the reuse
//! of freed space) is covered by stress tests; `docs/RELIABILITY.md` has the map.

use std::sync::atomic::Ordering;

use super::exact::Ring;
use super::{normalize, normalize_with, word_expired, Geometry, Norm, FROZEN};

/// A 64-bit atomic cell: the operations the window protocols use.
pub(crate) trait WordCell {
    /// Atomic load.
    fn load(&self, order: Ordering) -> u64;
    /// Atomic compare-and-exchange that may fail spuriously.
    fn compare_exchange_weak(
        &self,
        current: u64,
        new: u64,
        success: Ordering,
        failure: Ordering,
    ) -> Result<u64, u64>;
    /// Atomic compare-and-exchange.
    fn compare_exchange(
        &self,
        current: u64,
        new: u64,
        success: Ordering,
        failure: Ordering,
    ) -> Result<u64, u64>;
    /// Atomic or.
    fn fetch_or(&self, bits: u64, order: Ordering) -> u64;
    /// Atomic and.
    fn fetch_and(&self, bits: u64, order: Ordering) -> u64;
    /// Atomic store.
    fn store(&self, value: u64, order: Ordering);
    /// Wait a little before trying a taken lock again (`spins` tries so far).
    fn pause(spins: u32);
}

/// `WordCell` for an atomic type with the standard method set (std's, and loom's in tests),
/// with `pause` as given.
macro_rules! word_cell {
    ($ty:ty, $pause:expr) => {
        impl WordCell for $ty {
            #[inline]
            fn load(&self, order: Ordering) -> u64 {
                self.load(order)
            }
            #[inline]
            fn compare_exchange_weak(
                &self,
                current: u64,
                new: u64,
                success: Ordering,
                failure: Ordering,
            ) -> Result<u64, u64> {
                self.compare_exchange_weak(current, new, success, failure)
            }
            #[inline]
            fn compare_exchange(
                &self,
                current: u64,
                new: u64,
                success: Ordering,
                failure: Ordering,
            ) -> Result<u64, u64> {
                self.compare_exchange(current, new, success, failure)
            }
            #[inline]
            fn fetch_or(&self, bits: u64, order: Ordering) -> u64 {
                self.fetch_or(bits, order)
            }
            #[inline]
            fn fetch_and(&self, bits: u64, order: Ordering) -> u64 {
                self.fetch_and(bits, order)
            }
            #[inline]
            fn store(&self, value: u64, order: Ordering) {
                self.store(value, order)
            }
            #[inline]
            fn pause(spins: u32) {
                $pause(spins)
            }
        }
    };
}

word_cell!(std::sync::atomic::AtomicU64, |spins: u32| {
    if spins > 64 {
        std::thread::yield_now();
    } else {
        std::hint::spin_loop();
    }
});

/// What [`add`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Added {
    /// Counted; the window as it stands after the request.
    Yes(Norm),
    /// Not counted: the window has no room for the cost; the window as it was judged.
    Refused(Norm),
    /// Not counted: the word is frozen (its entry is moving or being removed); look the key
    /// up again.
    Frozen,
}

/// The window a word belongs to, and the time to read it at.
#[derive(Debug)]
pub(crate) struct At<'a, S: WordCell = std::sync::atomic::AtomicU64> {
    /// The geometry of the limit's own counter width.
    pub geo: Geometry,
    /// The window's length.
    pub window_ms: u64,
    /// The window's limit.
    pub limit: u32,
    /// The store's most counters per word.
    pub kmax: u32,
    /// Now.
    pub now_ms: u64,
    /// The newest time the store has seen (the header word). Read only after the window word:
    /// a word read with Acquire comes with the newest time of the check that wrote it (which
    /// raised this before its compare-and-swap), so reading it before the word could find it
    /// older than the word and take the word for one left alone for weeks, dropping its counts.
    pub seen: &'a S,
}

impl<S: WordCell> Clone for At<'_, S> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<S: WordCell> Copy for At<'_, S> {}

impl<S: WordCell> At<'_, S> {
    /// The newest time seen, read now (after the caller loaded the word), and at least now.
    #[inline]
    fn seen_after_word(&self) -> u64 {
        self.seen.load(Ordering::Relaxed).max(self.now_ms)
    }
}

/// Judge the word value `cur` (not frozen) for a request of `cost`: `Ok` with the window with
/// the request counted, or `Err` with the window as it is if it has no room. Writes nothing.
#[inline]
pub(crate) fn judge<S: WordCell>(cur: u64, at: &At<'_, S>, cost: u32) -> Result<Norm, Norm> {
    let seen = at.seen_after_word();
    let mut norm = normalize_with(cur, &at.geo, at.window_ms, at.kmax, at.now_ms, seen);
    // `try_add` changes nothing when it refuses.
    if norm.try_add(at.limit, cost) {
        Ok(norm)
    } else {
        Err(norm)
    }
}

/// Count `cost` in the window word `w` if it fits under the limit: one compare-and-swap, so
/// the check and the increment are one atomic step.
#[inline]
pub(crate) fn add<S: WordCell>(w: &impl WordCell, at: &At<'_, S>, cost: u32) -> Added {
    let mut cur = w.load(Ordering::Acquire);
    loop {
        if cur & FROZEN != 0 {
            return Added::Frozen;
        }
        let norm = match judge(cur, at, cost) {
            Ok(norm) => norm,
            Err(as_is) => return Added::Refused(as_is),
        };
        match w.compare_exchange_weak(cur, norm.encode(), Ordering::AcqRel, Ordering::Acquire) {
            Ok(_) => return Added::Yes(norm),
            Err(x) => cur = x,
        }
    }
}

/// Take back `cost` that [`add`] counted in absolute sub-window `m` of length `s`. A frozen
/// word is left alone: the copy being made of it keeps the extra count, which can only make
/// the key stricter. A sub-window that already aged out has nothing left to take.
#[inline]
pub(crate) fn take_back<S: WordCell>(w: &impl WordCell, at: &At<'_, S>, m: u64, s: u64, cost: u32) {
    let mut cur = w.load(Ordering::Acquire);
    loop {
        if cur & FROZEN != 0 {
            return;
        }
        let seen = at.seen_after_word();
        let mut norm = normalize(cur, at.window_ms, at.limit, at.kmax, at.now_ms, seen);
        if !norm.undo(m, s, cost) {
            return;
        }
        match w.compare_exchange_weak(cur, norm.encode(), Ordering::AcqRel, Ordering::Acquire) {
            Ok(_) => return,
            Err(x) => cur = x,
        }
    }
}

/// Freeze `w` unconditionally (an entry about to be copied) and return the word as frozen:
/// from here on no request is counted in it.
#[inline]
pub(crate) fn freeze(w: &impl WordCell) -> u64 {
    w.fetch_or(FROZEN, Ordering::AcqRel) & !FROZEN
}

/// Freeze `w` only if it is unfrozen and expired at `now_ms` (the compactor unlinking an
/// entry): a request counted at any moment before the freeze makes it fail.
#[inline]
pub(crate) fn freeze_if_expired(
    w: &impl WordCell,
    window_ms: u64,
    kmax: u32,
    now_ms: u64,
    seen: &impl WordCell,
) -> bool {
    let cur = w.load(Ordering::Acquire);
    // The newest time seen, read after the word (see `At::seen`).
    let seen_ms = seen.load(Ordering::Relaxed).max(now_ms);
    cur & FROZEN == 0
        && word_expired(cur, window_ms, kmax, now_ms, seen_ms)
        && w.compare_exchange(cur, cur | FROZEN, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
}

/// Clear the frozen bit (a move or an unlink that did not go ahead).
#[inline]
pub(crate) fn thaw(w: &impl WordCell) {
    w.fetch_and(!FROZEN, Ordering::AcqRel);
}

// ---------------------------------------------------------------------------------------------
// Exact windows: a ring of timestamps guarded by the lock bit of its meta word.
// ---------------------------------------------------------------------------------------------

/// Meta word of an exact window: held by whoever changes the ring.
pub(crate) const META_LOCK: u64 = 1 << 63;
/// Meta word of an exact window: the entry is moving or being removed.
pub(crate) const META_FROZEN: u64 = 1 << 62;
/// Meta word of an exact window: the next place to write.
pub(crate) const META_HEAD: u64 = 0xFFFF_FFFF;

/// Take the lock bit of an exact window's meta word, waiting while another holds it. `false`
/// (and no lock) if the entry is frozen.
pub(crate) fn lock_meta<C: WordCell>(w: &C) -> bool {
    let mut spins = 0u32;
    loop {
        let cur = w.load(Ordering::Relaxed);
        if cur & META_FROZEN != 0 {
            return false;
        }
        if cur & META_LOCK == 0
            && w.compare_exchange_weak(cur, cur | META_LOCK, Ordering::Acquire, Ordering::Relaxed)
                .is_ok()
        {
            return true;
        }
        spins += 1;
        C::pause(spins);
    }
}

/// Release the lock bit: everything written to the ring before is seen by the next holder.
pub(crate) fn unlock_meta(w: &impl WordCell) {
    w.fetch_and(!META_LOCK, Ordering::Release);
}

/// Copy out the ring of `cap` places whose meta word is word `at` (`word(i)` is word `i` of the
/// entry). Consistent when the caller holds the lock.
pub(crate) fn read_ring<'a, C: WordCell + 'a>(
    word: impl Fn(usize) -> Option<&'a C>,
    at: usize,
    cap: u32,
) -> Ring {
    let cap = cap.min(crate::MAX_EXACT_LIMIT);
    let head = word(at).map_or(0, |w| w.load(Ordering::Acquire));
    let mut ring = Ring {
        slots: [0; crate::MAX_EXACT_LIMIT as usize],
        cap,
        head: (head & META_HEAD) as u32 % cap.max(1),
    };
    for (k, s) in ring.slots.iter_mut().take(cap as usize).enumerate() {
        *s = word(at + 1 + k).map_or(0, |w| w.load(Ordering::Relaxed));
    }
    ring
}

/// Store a ring's places and head; the caller holds the lock of the entry's first exact window,
/// whose meta word (`holds_lock`) keeps its lock bit until [`unlock_meta`].
pub(crate) fn write_ring<'a, C: WordCell + 'a>(
    word: impl Fn(usize) -> Option<&'a C>,
    at: usize,
    ring: &Ring,
    holds_lock: bool,
) {
    for (k, &s) in ring.slots.iter().take(ring.cap as usize).enumerate() {
        if let Some(w) = word(at + 1 + k) {
            w.store(s, Ordering::Relaxed);
        }
    }
    if let Some(m) = word(at) {
        let lock = if holds_lock { META_LOCK } else { 0 };
        m.store(u64::from(ring.head) | lock, Ordering::Release);
    }
}

/// Whether every stored time of the ring has left a window of `window_ms` at `now_ms` (a
/// consistent answer only under the lock, or with the ring frozen).
pub(crate) fn ring_expired<'a, C: WordCell + 'a>(
    word: &impl Fn(usize) -> Option<&'a C>,
    at: usize,
    cap: u32,
    window_ms: u64,
    now_ms: u64,
) -> bool {
    (0..cap as usize).all(|k| {
        let v = word(at + 1 + k).map_or(0, |w| w.load(Ordering::Acquire));
        v == 0 || (v - 1).saturating_add(window_ms) <= now_ms
    })
}

/// Freeze an exact window whose every time has left the window (the compactor unlinking an
/// entry). `false` if the ring holds a live time, or is locked or frozen already.
///
/// It takes the ring's lock (without waiting) to look: the head of a one-place ring is the same
/// before and after a write, so a compare-and-swap on the meta word alone could freeze a ring
/// that a request had just written to (found by `the_compactor_never_freezes_a_ring_with_a_new_request`).
/// For an entry's later exact windows, whose rings are written under the first one's lock, the
/// caller freezes the first one first: from then on no request writes any of them.
pub(crate) fn freeze_ring_if_expired<'a, C: WordCell + 'a>(
    word: impl Fn(usize) -> Option<&'a C>,
    at: usize,
    cap: u32,
    window_ms: u64,
    now_ms: u64,
) -> bool {
    let Some(meta) = word(at) else {
        return false;
    };
    let cur = meta.load(Ordering::Relaxed);
    if cur & (META_LOCK | META_FROZEN) != 0
        || meta
            .compare_exchange(cur, cur | META_LOCK, Ordering::Acquire, Ordering::Relaxed)
            .is_err()
    {
        return false;
    }
    let expired = ring_expired(&word, at, cap, window_ms, now_ms);
    if expired {
        meta.fetch_or(META_FROZEN, Ordering::AcqRel);
    }
    unlock_meta(meta);
    expired
}

/// Clear the frozen bit of an exact window's meta word.
pub(crate) fn thaw_meta(w: &impl WordCell) {
    w.fetch_and(!META_FROZEN, Ordering::AcqRel);
}

#[cfg(test)]
mod loom_tests {
    //! Model checks with loom: every interleaving of the threads below is run.
    use super::*;
    use crate::window::bits_for;
    use loom::sync::atomic::AtomicU64 as LoomU64;
    use loom::sync::Arc;
    use loom::thread;

    word_cell!(LoomU64, |_spins: u32| thread::yield_now());

    const T0: u64 = 1_700_000_000_000;
    const MINUTE: u64 = 60_000;
    const KMAX: u32 = 17;

    fn geo(limit: u32, window_ms: u64) -> Geometry {
        Geometry::new(bits_for(limit), KMAX, window_ms)
    }

    /// The newest time seen, for `At`: the tests never move the clock back.
    static SEEN: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

    fn at(geo: &Geometry, limit: u32, window_ms: u64, now_ms: u64) -> At<'static> {
        At {
            geo: *geo,
            window_ms,
            limit,
            kmax: KMAX,
            now_ms,
            seen: &SEEN,
        }
    }

    fn count(word: u64, limit: u32, window_ms: u64, now_ms: u64) -> u32 {
        normalize(word & !FROZEN, window_ms, limit, KMAX, now_ms, now_ms).total()
    }

    fn model(f: impl Fn() + Sync + Send + 'static) {
        let mut b = loom::model::Builder::new();
        b.preemption_bound = Some(3);
        b.check(f);
    }

    /// Three threads race for a limit of 2 (one already used): exactly one is admitted, and
    /// the word counts exactly what was admitted.
    #[test]
    fn racing_adds_never_pass_the_limit() {
        model(|| {
            let mut n = normalize(0, MINUTE, 2, KMAX, T0, T0);
            assert!(n.try_add(2, 1));
            let w = Arc::new(LoomU64::new(n.encode()));
            let admitted = Arc::new(LoomU64::new(0));
            let handles: Vec<_> = (0..3u64)
                .map(|i| {
                    let (w, admitted) = (Arc::clone(&w), Arc::clone(&admitted));
                    thread::spawn(move || {
                        let g = geo(2, MINUTE);
                        if let Added::Yes(_) = add(&*w, &at(&g, 2, MINUTE, T0 + i), 1) {
                            admitted.fetch_add(1, Ordering::Relaxed);
                        }
                    })
                })
                .collect();
            for h in handles {
                h.join().unwrap();
            }
            assert_eq!(admitted.load(Ordering::Relaxed), 1);
            assert_eq!(count(w.load(Ordering::Relaxed), 2, MINUTE, T0 + 3), 2);
        });
    }

    /// Two requests over two windows (a minute of 2 with one used, an hour of 3 with one
    /// used): each adds to the minute, then the hour, and takes the minute back if the hour
    /// refuses. However they interleave, the admitted requests are counted once in both windows
    /// and a refused one leaves no trace.
    #[test]
    fn several_windows_are_all_or_nothing() {
        const HOUR: u64 = 60 * MINUTE;
        model(|| {
            let mut m = normalize(0, MINUTE, 3, KMAX, T0, T0);
            assert!(m.try_add(3, 1));
            let mut h = normalize(0, HOUR, 2, KMAX, T0, T0);
            assert!(h.try_add(2, 1));
            let minute = Arc::new(LoomU64::new(m.encode()));
            let hour = Arc::new(LoomU64::new(h.encode()));
            let admitted = Arc::new(LoomU64::new(0));
            let handles: Vec<_> = (0..2)
                .map(|_| {
                    let (minute, hour, admitted) = (
                        Arc::clone(&minute),
                        Arc::clone(&hour),
                        Arc::clone(&admitted),
                    );
                    thread::spawn(move || {
                        let (gm, gh) = (geo(3, MINUTE), geo(2, HOUR));
                        let am = at(&gm, 3, MINUTE, T0);
                        let Added::Yes(nm) = add(&*minute, &am, 1) else {
                            return;
                        };
                        match add(&*hour, &at(&gh, 2, HOUR, T0), 1) {
                            Added::Yes(_) => {
                                admitted.fetch_add(1, Ordering::Relaxed);
                            }
                            _ => take_back(&*minute, &am, nm.n, nm.s, 1),
                        }
                    })
                })
                .collect();
            for t in handles {
                t.join().unwrap();
            }
            let a = admitted.load(Ordering::Relaxed) as u32;
            assert_eq!(a, 1, "the hour has room for exactly one");
            assert_eq!(count(minute.load(Ordering::Relaxed), 3, MINUTE, T0), 1 + a);
            assert_eq!(count(hour.load(Ordering::Relaxed), 2, HOUR, T0), 1 + a);
        });
    }

    /// An entry moves (freeze, then copy) while two requests are counted in it. The copy
    /// holds every request that was admitted, and a request that met the frozen word was
    /// not admitted (it looks the key up again and counts in the new entry).
    #[test]
    fn a_frozen_word_takes_no_more_counts() {
        model(|| {
            let w = Arc::new(LoomU64::new(0));
            let admitted = Arc::new(LoomU64::new(0));
            let handles: Vec<_> = (0..2)
                .map(|_| {
                    let (w, admitted) = (Arc::clone(&w), Arc::clone(&admitted));
                    thread::spawn(move || {
                        let g = geo(5, MINUTE);
                        match add(&*w, &at(&g, 5, MINUTE, T0), 1) {
                            Added::Yes(_) => {
                                admitted.fetch_add(1, Ordering::Relaxed);
                            }
                            Added::Frozen => {}
                            Added::Refused(_) => panic!("room for both"),
                        }
                    })
                })
                .collect();
            let copy = freeze(&*w);
            for t in handles {
                t.join().unwrap();
            }
            let copied = count(copy, 5, MINUTE, T0);
            assert_eq!(copied, admitted.load(Ordering::Relaxed) as u32);
            assert_eq!(count(w.load(Ordering::Relaxed), 5, MINUTE, T0), copied);
        });
    }

    /// The compactor freezes an expired word while a request arrives: either the request is
    /// counted and the freeze fails (the entry stays), or the freeze wins and the request
    /// finds the word frozen. Never both: no admitted request is unlinked with its entry.
    #[test]
    fn the_compactor_never_unlinks_a_counted_request() {
        model(|| {
            // One request a minute ago and more: expired now.
            let mut old = normalize(0, MINUTE, 5, KMAX, T0, T0);
            assert!(old.try_add(5, 1));
            let later = T0 + 2 * MINUTE;
            let w = Arc::new(LoomU64::new(old.encode()));
            let w2 = Arc::clone(&w);
            let req = thread::spawn(move || {
                let g = geo(5, MINUTE);
                add(&*w2, &at(&g, 5, MINUTE, later), 1)
            });
            let frozen = freeze_if_expired(&*w, MINUTE, KMAX, later, &SEEN);
            let got = req.join().unwrap();
            match got {
                Added::Yes(_) => assert!(!frozen, "unlinked an entry holding a counted request"),
                Added::Frozen => assert!(frozen),
                Added::Refused(_) => panic!("an expired window has room"),
            }
        });
    }

    /// An exact ring of 2 places over a minute, one request already in: requests from two
    /// threads, each under the lock (lock, read, check, push, write, unlock). Exactly one more
    /// fits, and the ring ends up holding both admitted times.
    #[test]
    fn the_ring_lock_admits_exactly_the_limit() {
        model(|| {
            let words: Arc<Vec<LoomU64>> = Arc::new((0..3).map(|_| LoomU64::new(0)).collect());
            let mut ring = read_ring(|i| words.get(i), 0, 2);
            ring.push(T0 - 1_000, 1);
            write_ring(|i| words.get(i), 0, &ring, false);
            let admitted = Arc::new(LoomU64::new(0));
            let handles: Vec<_> = (0..2u64)
                .map(|n| {
                    let (words, admitted) = (Arc::clone(&words), Arc::clone(&admitted));
                    thread::spawn(move || {
                        let word = |i: usize| words.get(i);
                        let meta = &words[0];
                        assert!(lock_meta(meta));
                        let mut ring = read_ring(word, 0, 2);
                        let t = T0 + n;
                        if ring.eval(MINUTE, t).fits(2, 1) {
                            ring.push(t, 1);
                            write_ring(word, 0, &ring, true);
                            admitted.fetch_add(1, Ordering::Relaxed);
                        }
                        unlock_meta(meta);
                    })
                })
                .collect();
            for h in handles {
                h.join().unwrap();
            }
            assert_eq!(admitted.load(Ordering::Relaxed), 1);
            let ring = read_ring(|i| words.get(i), 0, 2);
            assert_eq!(ring.eval(MINUTE, T0 + 2).len, 2);
        });
    }

    /// A ring of one place whose time has left the window: a request takes the place while
    /// the compactor tries to freeze the ring. The compactor must not freeze a ring that holds
    /// the admitted request (the head of a one-place ring is the same before and after a write,
    /// so the meta word alone cannot tell).
    #[test]
    fn the_compactor_never_freezes_a_ring_with_a_new_request() {
        model(|| {
            let words: Arc<Vec<LoomU64>> = Arc::new((0..2).map(|_| LoomU64::new(0)).collect());
            let mut ring = read_ring(|i| words.get(i), 0, 1);
            ring.push(T0, 1);
            write_ring(|i| words.get(i), 0, &ring, false);
            let later = T0 + 2 * MINUTE;
            let w2 = Arc::clone(&words);
            let req = thread::spawn(move || {
                let word = |i: usize| w2.get(i);
                if !lock_meta(&w2[0]) {
                    return false;
                }
                let mut ring = read_ring(word, 0, 1);
                let fits = ring.eval(MINUTE, later).fits(1, 1);
                if fits {
                    ring.push(later, 1);
                    write_ring(word, 0, &ring, true);
                }
                unlock_meta(&w2[0]);
                fits
            });
            let frozen = freeze_ring_if_expired(|i| words.get(i), 0, 1, MINUTE, later);
            let admitted = req.join().unwrap();
            assert!(!(admitted && frozen), "froze a ring holding a new request");
        });
    }

    /// A check with a stale clock (another thread already counted at a later time) reads the
    /// newest time seen after the window word, so it never takes the newer word for one left
    /// alone for weeks and drops its counts (found by `tests/concurrency.rs` when the newest
    /// time was read before the word).
    #[test]
    fn a_stale_clock_never_drops_a_newer_count() {
        const SECOND: u64 = 1_000;
        model(|| {
            let mut n = normalize(0, SECOND, 5, KMAX, T0, T0);
            assert!(n.try_add(5, 1));
            let w = Arc::new(LoomU64::new(n.encode()));
            let seen = Arc::new(LoomU64::new(T0));
            let later = T0 + 10 * SECOND;
            let (w2, seen2) = (Arc::clone(&w), Arc::clone(&seen));
            let newer = thread::spawn(move || {
                // What a check does: raise the newest time seen, then count.
                seen2.fetch_max(later, Ordering::Relaxed);
                let g = geo(5, SECOND);
                let at = At {
                    geo: g,
                    window_ms: SECOND,
                    limit: 5,
                    kmax: KMAX,
                    now_ms: later,
                    seen: &*seen2,
                };
                matches!(add(&*w2, &at, 1), Added::Yes(_))
            });
            let g = geo(5, SECOND);
            let stale = At {
                geo: g,
                window_ms: SECOND,
                limit: 5,
                kmax: KMAX,
                now_ms: T0 + 1,
                seen: &*seen,
            };
            let _ = add(&*w, &stale, 1);
            assert!(newer.join().unwrap(), "room for it");
            // The newer request is still counted at its own time.
            let word = w.load(Ordering::Relaxed);
            let total = normalize(word & !FROZEN, SECOND, 5, KMAX, later, later).total();
            assert!(total >= 1, "the count made at the later time was dropped");
        });
    }
}
