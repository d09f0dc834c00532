//! The protocols on a sliding window's words, written once over [`WordCell`] so that the store
//! (std atomics in mapped memory) and the loom tests run the very same functions.
//!
//! # Why a check is one compare-and-swap, and why the lock bit is harmless
//!
//! A busy key's checks land in the head's own sub-window. The head holds that sub-window's
//! count (`cur`) *and* the sum of the `B` older ones (`older`), so the check reads the head,
//! judges `cur + older + cost <= limit` and adds `cost` to `cur` with one compare-and-swap on
//! that one word. The ring is not read. (In the wide layout the check also loads the base
//! word, next to the head, to know the head's full sub-window number; it still swaps only the
//! head.)
//!
//! Only the first admitted check of a new sub-window (once per sub-window at most, `B + 1`
//! times per window) rewrites the ring: it *rotates*. It first judges from a consistent
//! snapshot (so a refusal writes nothing), then takes the lock bit [`LOCK`] of the head by a
//! compare-and-swap from the very head value it judged, rewrites at most `B` ring counters (a
//! few dozen plain stores to words it has just read), and publishes the new head — with its
//! own cost counted — by one release store, which also drops the lock. The lock is held over a
//! bounded run of loads and stores on memory the caller already holds: no system call, no
//! allocation, no other lock, no wait for anything, and no path that can panic (every index is
//! checked with `get`). While it is held, checks of that one window spin (then yield after 64
//! tries) for as long as those stores take; every other key is unaffected. A take-back from an
//! older sub-window takes it the same way. A thread that dies while holding it leaves the head
//! locked; nothing in a live process waits on a dead thread's lock except the other checks of
//! that key, which is the same exposure as a crash, handled at the next open by [`recover`].
//!
//! # Readers
//!
//! [`snapshot`] is a seqlock read: head, base, ring, then head and base again; it retries
//! while locked or if either changed. Ring and base are written (release) only under the lock,
//! which the writer takes before its first ring store, so a reader that saw any new ring value
//! sees the head locked or changed on its second read. In the packed layout the tag is the
//! full sub-window number and only grows, and `older` only shrinks between rotations, so a
//! head can never come back to a value it had after the ring changed; in the wide layout the
//! base, re-read last, tells two rotations apart.
//!
//! # Frozen
//!
//! [`FROZEN`] on the head has the bucketed word's contract: once set, no request is counted in
//! the window (`add` answers [`Added::Frozen`]; the caller looks the key up again), no ring is
//! rewritten, and the window's words are the copy to make. [`freeze`] waits for the lock to be
//! free (a rotation never takes more than a few hundred ns), so it never freezes a half-written
//! ring, and a locked head cannot be frozen under a rotation (whose release store would
//! clear the bit).

use std::sync::atomic::Ordering::{AcqRel, Acquire, Relaxed, Release};

use super::{Slide, Snap, Summary, FROZEN, LOCK, MAX_RING_WORDS, MAX_TIME_MS, SMALL_RING_WORDS};

use crate::window::cell::WordCell;
use rotate::rotate_in_place;

mod rotate;

/// The cells of one window: the head, the base word (wide layout only), the ring.
#[derive(Debug)]
pub(crate) struct Window<'a, C: WordCell> {
    head: &'a C,
    base: Option<&'a C>,
    ring: &'a [C],
}

impl<C: WordCell> Clone for Window<'_, C> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<C: WordCell> Copy for Window<'_, C> {}

impl<'a, C: WordCell> Window<'a, C> {
    /// The window made of `words` (at least [`Slide::words`] of them, in the order head, base,
    /// ring); `None` if there are too few. The tests' windows; an entry's are [`Window::parts`].
    #[cfg(test)]
    pub(crate) fn new(words: &'a [C], geo: &Slide) -> Option<Window<'a, C>> {
        let (head, ring) = words.split_at_checked(geo.head_words())?;
        Window::parts(head, ring, geo)
    }

    /// The window whose head part is `head` (the head word, then the base word of the wide
    /// layout: [`Slide::head_words`]) and whose counters are the first
    /// [`Slide::ring_words`] of `ring`, wherever each is (an entry keeps its windows' heads
    /// together and their rings after them); `None` if either is too short.
    #[inline]
    pub(crate) fn parts(head: &'a [C], ring: &'a [C], geo: &Slide) -> Option<Window<'a, C>> {
        let (h, rest) = head.split_first()?;
        let base = if geo.wide() {
            Some(rest.first()?)
        } else {
            None
        };
        Some(Window {
            head: h,
            base,
            ring: ring.get(..geo.ring_words())?,
        })
    }

    #[inline]
    fn load_base(&self) -> u64 {
        self.base.map_or(0, |b| b.load(Acquire))
    }

    /// Read the head `h` (held locked by the caller), the base and the ring into `out`, in
    /// place (no copy of the whole ring array is made or moved).
    fn load_locked<const N: usize>(&self, geo: &Slide, h: u64, out: &mut Snap<N>) {
        let base = self.load_base();
        for (d, s) in out.ring.iter_mut().zip(self.ring) {
            *d = s.load(Acquire);
        }
        let (cur, older) = geo.fields(h);
        out.raw = h;
        out.base = base;
        out.n = geo.head_n(h, base);
        out.cur = cur;
        out.older = older;
    }

    /// Write the ring words that changed (`changed(word)`), then the base, then the head
    /// (which drops the lock). Only under the lock.
    fn publish<const N: usize>(&self, geo: &Slide, s: &Snap<N>, changed: impl Fn(usize) -> bool) {
        for (k, (cell, n)) in self.ring.iter().zip(&s.ring).enumerate() {
            if changed(k) {
                cell.store(*n, Release);
            }
        }
        if let Some(b) = self.base {
            b.store(s.n, Release);
        }
        self.head.store(geo.encode(s.n, s.cur, s.older), Release);
    }
}

/// What [`add`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Added {
    /// Counted in sub-window `m` (give it to [`take_back`] to undo); `used` is the window's
    /// count with it, `reset_ms` when the window is next back to its full limit.
    Yes {
        /// The sub-window the cost was counted in.
        m: u64,
        /// The count after the request.
        used: u64,
        /// When the window is empty again if nothing more is counted.
        reset_ms: u64,
    },
    /// Not counted, nothing written: no room. `used` is the count it was judged against;
    /// `seen`, the window's figures for the decision when the refusal already knows them: it
    /// was judged on a copy of the whole window (a later sub-window than the head's), or on
    /// a head whose ring is empty; otherwise ask [`head_summary`] or [`snapshot`] then
    /// [`Snap::summary`].
    Refused {
        /// The count judged.
        used: u64,
        /// The figures of the copy the refusal was judged on, if it took one.
        seen: Option<Summary>,
    },
    /// Not counted: the window is frozen (its entry is moving or being removed); look the key
    /// up again.
    Frozen,
}

/// Read a consistent copy of the window (seqlock-style; see the module doc). Waits while the
/// lock is held.
pub(crate) fn snapshot<C: WordCell>(w: &Window<'_, C>, geo: &Slide) -> Snap {
    let mut s: Snap = Snap::EMPTY;
    snapshot_into(w, geo, &mut s);
    s
}

/// [`snapshot`] into `out`, for a caller that reads several windows in a row (a rejection
/// reports every window): only the window's own ring words are written, and no copy of the
/// whole ring array is made or moved. Ring words of `out` past [`Slide::ring_words`] are left
/// as they were; nothing reads them.
pub(crate) fn snapshot_into<C: WordCell, const N: usize>(
    w: &Window<'_, C>,
    geo: &Slide,
    out: &mut Snap<N>,
) {
    let mut spins = 0u32;
    loop {
        let h1 = w.head.load(Acquire);
        if h1 & LOCK == 0 {
            let b1 = w.load_base();
            for (d, s) in out.ring.iter_mut().zip(w.ring) {
                *d = s.load(Acquire);
            }
            let h2 = w.head.load(Acquire);
            let b2 = w.load_base();
            if h1 == h2 && b1 == b2 {
                let (cur, older) = geo.fields(h1);
                out.raw = h1;
                out.base = b1;
                out.n = geo.head_n(h1, b1);
                out.cur = cur;
                out.older = older;
                return;
            }
        }
        spins += 1;
        C::pause(spins);
    }
}

/// What a decision reports of the window, from the head word alone, when the head suffices:
/// `now` in the head's own sub-window (so the count is the head's `cur + older`), and either
/// the request fitting with `cur` non-zero (the window is back to its full limit when the
/// head's sub-window drops out; no `Retry-After` to walk for), or an empty ring (`older` 0: a
/// burst within one sub-window, where everything counted drops out with the head's sub-window,
/// refused or not). `None` otherwise — a locked head, the wide layout (whose sub-window number
/// needs the base word too), another sub-window, counts spread over the ring — and the caller
/// takes a [`snapshot`]. Equal to the snapshot's [`Snap::summary`] whenever it answers (the
/// proptest checks it). A rejection reports every window: most are answered here, without
/// copying their rings.
#[inline(always)]
pub(crate) fn head_summary<C: WordCell>(
    w: &Window<'_, C>,
    geo: &Slide,
    cost: u32,
    now_ms: u64,
) -> Option<Summary> {
    let h = w.head.load(Acquire);
    if h & LOCK != 0 || geo.wide() {
        return None;
    }
    let n = geo.head_n(h, 0);
    let (cur, older) = geo.fields(h);
    let limit = u64::from(geo.limit);
    let in_head = now_ms.min(MAX_TIME_MS) < n.saturating_add(1).saturating_mul(geo.g);
    if in_head && cur != 0 && cur + older + u64::from(cost) <= limit {
        return Some(Summary {
            used: cur + older,
            reset_ms: Snap::drop_ms(geo, n),
            retry_ms: 0,
        });
    }
    if older != 0 {
        return None;
    }
    let ne = if in_head {
        n
    } else {
        geo.sub_window(now_ms).max(n)
    };
    Some(Snap::empty_ring_summary(geo, n, cur, cost, ne, now_ms))
}

/// Count `cost` in the window at `now_ms` if it fits under the limit.
///
/// In the head's sub-window (or with a clock behind it) this is one compare-and-swap on the
/// head. The first admitted request of a later sub-window rotates the ring under the lock bit
/// and is counted by the same store that publishes the rotation. A refused request writes
/// nothing. A `cost` of 0 writes nothing and is always admitted.
#[inline]
pub(crate) fn add<C: WordCell>(w: &Window<'_, C>, geo: &Slide, now_ms: u64, cost: u32) -> Added {
    // The common case, kept small enough to inline into the check: a head that is neither
    // frozen nor locked and a time inside (or behind) the head's sub-window. `now` lies in
    // sub-window `n_h` or an earlier one exactly when `now < (n_h + 1)·g`: one multiply, no
    // division. Anything else, and a lost compare-and-swap, takes the general loop below.
    let h = w.head.load(Acquire);
    if h & (FROZEN | LOCK) == 0 && cost != 0 {
        let n_h = geo.head_n(h, w.load_base());
        if now_ms.min(MAX_TIME_MS) < n_h.saturating_add(1).saturating_mul(geo.g) {
            let (cur, older) = geo.fields(h);
            let total = cur + older;
            let cost64 = u64::from(cost);
            if total + cost64 > u64::from(geo.limit) {
                // A burst within the head's sub-window (the ring empty): the decision's
                // figures follow from this head word alone, as `head_summary` gives them,
                // and the caller need not read the window again.
                let seen = (older == 0)
                    .then(|| Snap::empty_ring_summary(geo, n_h, cur, cost, n_h, now_ms));
                return Added::Refused { used: total, seen };
            }
            // `cur + cost <= limit < 2^c`: the field cannot carry into `older`.
            if w.head
                .compare_exchange(h, h + cost64, AcqRel, Acquire)
                .is_ok()
            {
                return Added::Yes {
                    m: n_h,
                    used: total + cost64,
                    reset_ms: Snap::drop_ms(geo, n_h),
                };
            }
        }
    }
    add_slow(w, geo, now_ms, cost)
}

/// [`add`] in general: any sub-window, a lock to wait for, a contended head. Its copy of the
/// window is sized for the window's ring (a small one when it fits: no 800-byte copy to zero
/// for the common rotation).
#[inline(never)]
fn add_slow<C: WordCell>(w: &Window<'_, C>, geo: &Slide, now_ms: u64, cost: u32) -> Added {
    if geo.ring_words() <= SMALL_RING_WORDS {
        add_slow_in::<C, SMALL_RING_WORDS>(w, geo, now_ms, cost)
    } else {
        add_slow_in::<C, MAX_RING_WORDS>(w, geo, now_ms, cost)
    }
}

/// [`add_slow`] with a copy of `N` ring words (at least the window's).
#[inline(always)]
fn add_slow_in<C: WordCell, const N: usize>(
    w: &Window<'_, C>,
    geo: &Slide,
    now_ms: u64,
    cost: u32,
) -> Added {
    let n_now = geo.sub_window(now_ms);
    let cost64 = u64::from(cost);
    let limit = u64::from(geo.limit);
    let mut spins = 0u32;
    let mut h = w.head.load(Acquire);
    loop {
        if h & FROZEN != 0 {
            return Added::Frozen;
        }
        if h & LOCK != 0 {
            spins += 1;
            C::pause(spins);
            h = w.head.load(Acquire);
            continue;
        }
        let n_h = geo.head_n(h, w.load_base());
        if n_h >= n_now {
            // The common case: the head's own sub-window. One CAS on the head.
            let (cur, older) = geo.fields(h);
            let total = cur + older;
            if total + cost64 > limit {
                return Added::Refused {
                    used: total,
                    seen: None,
                };
            }
            if cost == 0 {
                let s = snapshot(w, geo);
                return Added::Yes {
                    m: s.n,
                    used: s.used(geo, now_ms),
                    reset_ms: s.reset_ms(geo, now_ms),
                };
            }
            // `cur + cost <= limit < 2^c`: the field cannot carry into `older`.
            match w.head.compare_exchange_weak(h, h + cost64, AcqRel, Acquire) {
                Ok(_) => {
                    return Added::Yes {
                        m: n_h,
                        used: total + cost64,
                        reset_ms: Snap::drop_ms(geo, n_h),
                    }
                }
                Err(x) => {
                    h = x;
                    continue;
                }
            }
        }
        // A later sub-window. If the head's own sum leaves room, the request fits whatever
        // ages out by now: lock from this very head, no copy to judge from. Otherwise judge on
        // a consistent copy first, so that a refusal writes nothing.
        let (cur, older) = geo.fields(h);
        if older == 0 && cur + cost64 > limit && n_now - n_h <= u64::from(geo.b) && !geo.wide() {
            // An empty ring and a head sub-window still in the window: the count stays `cur`
            // however far now is, and it has no room. Judged on this one head word (in the
            // packed layout, where the head alone names its sub-window).
            return Added::Refused {
                used: cur,
                seen: Some(Snap::empty_ring_summary(geo, n_h, cur, cost, n_now, now_ms)),
            };
        }
        // The copy is zeroed only where it is used: not on a rotation in place.
        let mut s: Snap<N>;
        let raw = if cur + older + cost64 <= limit {
            if w.head
                .compare_exchange(h, h | LOCK, Acquire, Relaxed)
                .is_err()
            {
                h = w.head.load(Acquire);
                continue;
            }
            // A step of a few sub-windows (a busy key's usual rotation) rewrites only the
            // counters it changes: no copy of the ring.
            if let Some(added) = rotate_in_place(w, geo, h, n_now, cost64) {
                return added;
            }
            s = Snap::EMPTY;
            h
        } else {
            s = Snap::EMPTY;
            snapshot_into(w, geo, &mut s);
            if s.frozen() {
                return Added::Frozen;
            }
            if s.n >= n_now {
                h = s.raw;
                continue;
            }
            let total = s.total_at(geo, n_now);
            if total + cost64 > limit {
                return Added::Refused {
                    used: total,
                    seen: Some(s.summary_from(geo, total, cost, n_now, now_ms)),
                };
            }
            if w.head
                .compare_exchange(s.raw, s.raw | LOCK, Acquire, Relaxed)
                .is_err()
            {
                h = w.head.load(Acquire);
                continue;
            }
            s.raw
        };
        // Under the lock: base and ring cannot change any more; read them (a copy taken above
        // is only known consistent with the head's value, which a wide layout's base tells
        // apart from an older identical one). The true sub-window comes from this read: if it
        // is not before now's after all, `rotate` leaves it and the request is judged in it.
        w.load_locked(geo, raw, &mut s);
        let locked = &mut s;
        let from = locked.n;
        locked.rotate(geo, n_now);
        let total = locked.cur + locked.older;
        let fits = total + cost64 <= limit;
        if fits {
            locked.cur += cost64;
        }
        let m = locked.n;
        // The rotation rewrote the counters of sub-windows `from ..= n_now - 1` (all of them
        // past a whole ring): the words holding those counters.
        let rewritten = Rewritten::new(geo, from, n_now);
        w.publish(geo, locked, |k| rewritten.holds(k));
        return if fits {
            Added::Yes {
                m,
                used: total + cost64,
                // The request was just counted in the head's sub-window `m`, the newest that
                // counts: the window is full again when `m` drops out.
                reset_ms: if cost64 > 0 {
                    Snap::drop_ms(geo, m)
                } else {
                    locked.reset_ms(geo, now_ms)
                },
            }
        } else {
            Added::Refused {
                used: total,
                seen: Some(locked.summary_from(geo, total, cost, m, now_ms)),
            }
        };
    }
}

/// The ring words a rotation from sub-window `from` to `to` rewrote: those holding the
/// counters of sub-windows `from ..= to - 1`, a run of ring slots that may wrap past the
/// ring's end (every word, if the rotation went past a whole ring). Which words those are is
/// worked out once, so that the publish asks each word in constant time.
pub(super) struct Rewritten {
    /// Every word.
    all: bool,
    /// Bit ranges `[lo, hi)` of the ring the slots cover: the run up to the ring's end, and
    /// its wrapped part from bit 0 (empty if it does not wrap).
    runs: [(u64, u64); 2],
}

impl Rewritten {
    pub(super) fn new(geo: &Slide, from: u64, to: u64) -> Rewritten {
        let count = to.saturating_sub(from);
        Rewritten {
            all: count >= u64::from(geo.b),
            runs: geo.slot_runs(from, count),
        }
    }

    /// Whether ring word `k` holds a rewritten counter.
    pub(super) fn holds(&self, k: usize) -> bool {
        let (lo, hi) = (k as u64 * 64, k as u64 * 64 + 64);
        self.all || self.runs.iter().any(|&(a, z)| a < z && a < hi && lo < z)
    }
}

/// Take back `cost` that [`add`] counted in sub-window `m` (a later window of the same request
/// refused it: all or nothing). In the head's sub-window it is one compare-and-swap (packed
/// layout); in an older one, or in the wide layout, it is done under the lock. A frozen
/// window is left alone and `false` returned: its entry is moving, and the copy it moves to
/// holds the count, so the caller takes it back there (`Core::take_back_moved`); a
/// sub-window that has aged out has nothing left to take. Never takes more than the counter
/// holds. `true` when the window was not frozen (taken back, or nothing left to take).
#[must_use = "a frozen window took nothing back: the caller owes the take-back to the moved copy"]
pub(crate) fn take_back<C: WordCell>(w: &Window<'_, C>, geo: &Slide, m: u64, cost: u32) -> bool {
    let b = u64::from(geo.b);
    let mut spins = 0u32;
    let mut h = w.head.load(Acquire);
    loop {
        if h & FROZEN != 0 {
            return false;
        }
        if cost == 0 {
            return true;
        }
        if h & LOCK != 0 {
            spins += 1;
            C::pause(spins);
            h = w.head.load(Acquire);
            continue;
        }
        let n_h = geo.head_n(h, w.load_base());
        if m > n_h || n_h - m > b {
            return true;
        }
        // In the packed layout the head's bits name its sub-window, so a compare-and-swap
        // from `h` takes from sub-window `m` and no other. In the wide layout two rotations
        // `2^(62-2c)` sub-windows apart could leave the same head bits between the load and the
        // swap; take-backs are rare, so there it always goes under the lock, where the base
        // cannot change.
        if m == n_h && !geo.wide() {
            let take = geo.fields(h).0.min(u64::from(cost));
            if take == 0 {
                return true;
            }
            match w.head.compare_exchange_weak(h, h - take, AcqRel, Acquire) {
                Ok(_) => return true,
                Err(x) => {
                    h = x;
                    continue;
                }
            }
        }
        if w.head
            .compare_exchange(h, h | LOCK, Acquire, Relaxed)
            .is_err()
        {
            h = w.head.load(Acquire);
            continue;
        }
        let mut s: Snap = Snap::EMPTY;
        w.load_locked(geo, h, &mut s);
        let old = s.ring;
        if m < s.n && s.n - m <= b {
            let i = (m % b) as u32;
            let have = geo.slot(&s.ring, i);
            let take = have.min(u64::from(cost));
            geo.set_slot(&mut s.ring, i, have - take);
            s.older = s.older.saturating_sub(take);
        } else if m == s.n {
            s.cur = s.cur.saturating_sub(u64::from(cost));
        }
        w.publish(geo, &s, |k| old.get(k) != s.ring.get(k));
        return true;
    }
}

/// Freeze the window (its entry is about to be copied or unlinked) and return its frozen
/// contents: from here on nothing is counted in it. Waits for a rotation in progress to end.
pub(crate) fn freeze<C: WordCell>(w: &Window<'_, C>, geo: &Slide) -> Snap {
    let mut spins = 0u32;
    loop {
        let h = w.head.load(Acquire);
        if h & FROZEN != 0 {
            return snapshot(w, geo);
        }
        if h & LOCK == 0
            && w.head
                .compare_exchange(h, h | FROZEN, AcqRel, Acquire)
                .is_ok()
        {
            return snapshot(w, geo);
        }
        spins += 1;
        C::pause(spins);
    }
}

/// Freeze the window only if its count is 0 at `now_ms` and so in any future (the compactor
/// unlinking an entry). Judged on a consistent copy, frozen by a compare-and-swap from the
/// head value judged, then judged again on the frozen words (which thaws it if a rotation
/// that happened in between made the head look the same): a request counted at any moment
/// before the freeze makes it fail.
pub(crate) fn freeze_if_expired<C: WordCell>(w: &Window<'_, C>, geo: &Slide, now_ms: u64) -> bool {
    let s = snapshot(w, geo);
    if s.frozen()
        || !s.expired(geo, now_ms)
        || w.head
            .compare_exchange(s.raw, s.raw | FROZEN, AcqRel, Acquire)
            .is_err()
    {
        return false;
    }
    if snapshot(w, geo).expired(geo, now_ms) {
        return true;
    }
    thaw(w);
    false
}

/// Clear the frozen bit (a move or an unlink that did not go ahead).
pub(crate) fn thaw<C: WordCell>(w: &Window<'_, C>) {
    w.head.fetch_and(!FROZEN, AcqRel);
}

/// What [`recover`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Recovered {
    /// Nothing to do (the frozen bit, if any, was cleared).
    Clean,
    /// The head was locked: a rotation or a take-back was cut short by the crash. The window
    /// now counts as full up to the head's sub-window (see [`recover`]).
    WasLocked,
}

/// Run at open, before any other thread sees the window. Clears the frozen bit (a crash while
/// frozen loses nothing: the words keep their values), and repairs a head left locked.
///
/// A locked head still has the fields it had before the lock was taken (its sub-window `n`,
/// `cur`, `older`); the ring may be partly rewritten and, in the wide layout, the base may
/// already hold the new number. Every request the words stand for was made in a sub-window
/// `<= n'`, where `n'` is the newest number consistent with the tag at or before the base
/// (`n' >= n`). Recovery sets the head to `n'` with `cur = limit` (full) and `older` the sum
/// of the ring as it is: the window refuses everything until `n' + B + 1`, by which time every
/// request it stood for has aged out, so nothing is under-counted however far the ring got.
/// **Cost of a crash mid-rotation: that key refuses for at most one window plus one
/// sub-window after the sub-window the rotation started from.**
pub(crate) fn recover<C: WordCell>(w: &Window<'_, C>, geo: &Slide) -> Recovered {
    let was = w.head.load(Acquire);
    let h = was & !FROZEN;
    if h & LOCK == 0 {
        // Written only if it changes: a store to every head would dirty every page of the
        // file at each open (a write fault per page, and all of it written back later).
        if h != was {
            w.head.store(h, Release);
        }
        return Recovered::Clean;
    }
    let mut s: Snap = Snap::EMPTY;
    w.load_locked(geo, h & !LOCK, &mut s);
    let (ring_sum, _) = geo.ring_sum_max(&s.ring);
    s.cur = u64::from(geo.limit);
    s.older = ring_sum.min((1u64 << geo.c) - 1);
    // No ring word changes here.
    w.publish(geo, &s, |_| false);
    Recovered::WasLocked
}
