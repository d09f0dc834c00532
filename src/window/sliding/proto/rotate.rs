//! The rotation of a busy key's window, in place: a step of one to four sub-windows when the
//! head's own sum leaves room, done on the few ring words it changes instead of on a copy of
//! the ring (what `add_slow` does for any other rotation). The same lock, the same order of
//! stores as the copy's publish, so readers and the loom models see no difference; kept beside
//! `proto.rs`, whose `add_slow` calls it, for its bit handling.

use std::sync::atomic::Ordering::{Acquire, Release};

use super::{Added, Window};
use crate::window::cell::WordCell;
use crate::window::sliding::{Slide, Snap};

/// The most sub-windows a rotation may step for [`rotate_in_place`] (which then touches at
/// most 4 counters, 96 bits: a few ring words).
const ROTATE_IN_PLACE: u64 = 4;

/// [`add_slow`]'s rotation of a window whose head sum leaves room for `cost`, done on the ring
/// words it changes instead of on a copy of the ring: the caller holds the lock, taken from
/// head `h`. Moving the head from sub-window `n` to `to` (at most [`ROTATE_IN_PLACE`] on)
/// reuses the `to - n` counters from `n mod B` on: the first takes `cur`, the others are
/// cleared, and what they held (sub-windows `n - B ..= to - B - 1`, aged out) leaves `older`.
/// Those counters' bits (one run, or two when they wrap past the ring's end: a few words) are
/// read, rewritten and stored (with `Release`), then the base, then the head, counting `cost`
/// in `to` and dropping the lock: the order of [`Window::publish`], so a reader sees the
/// rotation whole or retries. `None`, with nothing written and the lock still held, when the
/// step is not small (or the head, read with the base under the lock, is not before `to`): the
/// caller goes on with a copy.
pub(super) fn rotate_in_place<C: WordCell>(
    w: &Window<'_, C>,
    geo: &Slide,
    h: u64,
    to: u64,
    cost: u64,
) -> Option<Added> {
    let n = geo.head_n(h, w.load_base());
    let (cur, older) = geo.fields(h);
    // A capped `older` (a recovered or narrowed window) is summed again by `Snap::rotate`; a
    // cost of 0 (counted nowhere) reports its reset from the ring, which the copy walks.
    if to <= n || to - n > ROTATE_IN_PLACE || older >= geo.field_mask() || cost == 0 {
        return None;
    }
    let [first, wrapped] = geo.slot_runs(n, to - n);
    let aged = if wrapped.0 == wrapped.1 && (first.1 - 1) / 64 == first.0 / 64 {
        // The usual case: the counters share one word.
        let cell = w.ring.get((first.0 / 64) as usize)?;
        let (off, len) = (first.0 % 64, first.1 - first.0);
        let mask = (u64::MAX >> (64 - len)) << off;
        let x = cell.load(Acquire);
        let mut held = (x & mask) >> off;
        let mut aged = 0;
        while held != 0 {
            aged += held & geo.field_mask();
            held >>= geo.c;
        }
        cell.store((x & !mask) | (cur << off), Release);
        aged
    } else {
        // A run that wraps into a word the first run holds too (a ring of a word or two)
        // would write that word twice, from two copies: left to the copy.
        if wrapped.0 < wrapped.1 && (wrapped.1 - 1) / 64 >= first.0 / 64 {
            return None;
        }
        let mut runs = [Run::load(w, first), Run::load(w, wrapped)];
        let aged: u64 = runs.iter().map(|r| r.sum(geo.c)).sum();
        for r in runs.iter_mut() {
            r.clear();
        }
        // The head's own counter is the first of the first run.
        runs[0].put(cur, geo.c);
        for r in &runs {
            r.store(w);
        }
        aged
    };
    let older = (older + cur).saturating_sub(aged);
    if let Some(base) = w.base {
        base.store(to, Release);
    }
    w.head.store(geo.encode(to, cost, older), Release);
    Some(Added::Yes {
        m: to,
        used: older + cost,
        reset_ms: Snap::drop_ms(geo, to),
    })
}

/// A run of ring bits `[lo, hi)` and the (at most 3) ring words that hold it, loaded: what a
/// rotation in place rewrites. At most 4 counters of at most 24 bits: 96 bits, 3 words.
struct Run {
    lo: u64,
    hi: u64,
    /// Ring word index of `words[0]`.
    first: usize,
    words: [u64; 3],
}

impl Run {
    fn load<C: WordCell>(w: &Window<'_, C>, (lo, hi): (u64, u64)) -> Run {
        let first = (lo / 64) as usize;
        let mut words = [0; 3];
        if lo < hi {
            let last = ((hi - 1) / 64) as usize;
            for (k, v) in (first..=last).zip(words.iter_mut()) {
                *v = w.ring.get(k).map_or(0, |c| c.load(Acquire));
            }
        }
        Run {
            lo,
            hi,
            first,
            words,
        }
    }

    /// Bits `[at, at + len)` of the ring (`len <= 64`), from the loaded words.
    fn bits(&self, at: u64, len: u32) -> u64 {
        let rel = at - self.first as u64 * 64;
        let (k, off) = ((rel / 64) as usize, rel % 64);
        let word = |k: usize| self.words.get(k).copied().unwrap_or(0);
        let mut v = word(k) >> off;
        if off + u64::from(len) > 64 {
            v |= word(k + 1) << (64 - off);
        }
        v & (u64::MAX >> (64 - len))
    }

    /// The sum of the `c`-bit counters of the run.
    fn sum(&self, c: u32) -> u64 {
        let mut total = 0;
        if self.words.iter().any(|&x| x != 0) {
            let mut at = self.lo;
            while at < self.hi {
                total += self.bits(at, c);
                at += u64::from(c);
            }
        }
        total
    }

    /// Every bit of the run set to 0.
    fn clear(&mut self) {
        let base = self.first as u64 * 64;
        for (k, x) in self.words.iter_mut().enumerate() {
            let (w_lo, w_hi) = (base + 64 * k as u64, base + 64 * k as u64 + 64);
            let (lo, hi) = (self.lo.max(w_lo), self.hi.min(w_hi));
            if lo < hi {
                let len = hi - lo;
                let mask = if len == 64 {
                    u64::MAX
                } else {
                    ((1u64 << len) - 1) << (lo - w_lo)
                };
                *x &= !mask;
            }
        }
    }

    /// The first `c` bits of the run (cleared) set to `v`.
    fn put(&mut self, v: u64, c: u32) {
        if self.lo >= self.hi {
            return;
        }
        let rel = self.lo - self.first as u64 * 64;
        let (k, off) = ((rel / 64) as usize, rel % 64);
        if let Some(x) = self.words.get_mut(k) {
            *x |= v << off;
        }
        if off + u64::from(c) > 64 {
            if let Some(x) = self.words.get_mut(k + 1) {
                *x |= v >> (64 - off);
            }
        }
    }

    /// Store the words back (only those the run covers).
    fn store<C: WordCell>(&self, w: &Window<'_, C>) {
        if self.lo >= self.hi {
            return;
        }
        let last = ((self.hi - 1) / 64) as usize;
        for (k, v) in (self.first..=last).zip(self.words) {
            if let Some(cell) = w.ring.get(k) {
                cell.store(v, Release);
            }
        }
    }
}
