//! The 64-bit atomic cell every window protocol is written over, and the exact ring's
//! protocol (a lock bit in its meta word).
//!
//! The store runs the protocols on `std::sync::atomic::AtomicU64` words in mapped memory; the
//! tests run the very same functions on loom's `AtomicU64`, which explores every interleaving
//! of a few threads (and the orderings' allowed reorderings). The sliding window's protocols
//! and their loom models are in `sliding/`; the exact ring's are here: the ring lock admits
//! exactly the limit, and the compactor never freezes a ring that holds a new request.
//!
//! What loom cannot reach (the index, whose tables live behind crossbeam-epoch, and the reuse
//! of freed space) is covered by stress tests; `docs/RELIABILITY.md` has the map.

use std::sync::atomic::Ordering;

use super::exact::Ring;

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
    use loom::sync::atomic::AtomicU64 as LoomU64;
    use loom::sync::Arc;
    use loom::thread;

    word_cell!(LoomU64, |_spins: u32| thread::yield_now());

    const T0: u64 = 1_700_000_000_000;
    const MINUTE: u64 = 60_000;
    fn model(f: impl Fn() + Sync + Send + 'static) {
        let mut b = loom::model::Builder::new();
        b.preemption_bound = Some(3);
        b.check(f);
    }

    /// Two threads race for a ring of limit 2 with one place used, each under the ring's
    /// lock: exactly one is admitted, and the ring holds exactly what was admitted.
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
}
