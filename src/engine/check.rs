//! The check path: count a request in every window of a key, all or nothing, and say what
//! goes in the response headers; and the same answer without counting (peek).
//!
//! A set of sliding windows (the usual case) takes the short path, [`Core::apply`]: one
//! compare-and-swap per window, and if a later window refuses, the cost is taken back from the
//! earlier ones. A set with an exact window takes [`Core::apply_with_exact`], under the lock
//! bit of the first exact window's meta word. The word protocols themselves are
//! `window::cell`'s, the same functions loom checks.
//!
//! The usual check (an existing key, found where the look-up goes first, with the windows
//! asked for) runs in a read section (`storage/readers.rs`), not under an epoch guard: the
//! pin's fence was a fifth of a hot-key check. The rest ([`Core::count_general`]) pins.

use std::sync::atomic::Ordering;

use super::core::Core;
use super::entry::{sliding_window, Place, WindowsAt};
use crate::backend::{check_key, check_request};
use crate::decision::{empty_decision, exact_state, sliding_state, Decision, WindowState};
use crate::error::{Error, Result};
use crate::limit::{Limit, Limits, Mode, MAX_WINDOWS};
use crate::options::OnFull;
use crate::storage::readers;
use crate::storage::segment::Entry;
use crate::window::cell::{self, WordCell};
use crate::window::sliding::{self, Added, Snap, SMALL_RING_WORDS};
use crate::window::At;

/// What applying a check to an entry came to.
enum Applied {
    /// The decision is in the caller's `Decision`.
    Done,
    /// The entry is frozen (moving): look the key up again.
    Moved,
    /// The entry holds other windows than the limits asked for: move it to the new layout.
    Mismatch,
    /// The decision is in the caller's `Decision`, a refusal, but some take-backs met a frozen
    /// window: they are left in `added`, to be made in the entry the key moved to.
    Owed,
}

impl Core {
    /// What a request of cost 1 would get at `now_ms`, without counting it.
    pub(crate) fn peek(&self, key: &[u8], limits: &Limits, now_ms: u64) -> Result<Decision> {
        check_key(key)?;
        let guard = crossbeam_epoch::pin();
        let hash = self.hasher.hash_one(key);
        match self.find(hash, key, &guard) {
            Some(line) => Ok(self.snapshot(line, limits, 1, now_ms, None)),
            None => Ok(empty_decision(limits, 1, now_ms)),
        }
    }

    /// How late a sliding window of `limit` may release quota on this store (one sub-window
    /// and the rounding of `W` into `B` whole milliseconds); zero for an exact window.
    pub(crate) fn release_delay(&self, limit: &Limit) -> std::time::Duration {
        let slide = limit.slide(self.b);
        std::time::Duration::from_millis(slide.map_or(0, |g| g.release_delay_ms()))
    }

    /// Check and count; the decision goes to `out` (which starts as [`Decision::BLANK`]).
    #[inline]
    pub(crate) fn check(
        &self,
        key: &[u8],
        limits: &Limits,
        cost: u32,
        now_ms: u64,
        out: &mut Decision,
    ) -> Result<()> {
        self.count(key, limits, cost, now_ms, out, &mut [None; MAX_WINDOWS])
    }

    /// [`Core::check`], also saying which sub-window each sliding window counted the cost in
    /// (`added[i]`, `None` where nothing was counted): what a reservation keeps to give back
    /// the part of its estimate it did not use.
    #[inline(always)]
    pub(crate) fn count(
        &self,
        key: &[u8],
        limits: &Limits,
        cost: u32,
        now_ms: u64,
        out: &mut Decision,
        added: &mut [Option<u64>; MAX_WINDOWS],
    ) -> Result<()> {
        check_request(key, limits, cost)?;
        self.saw(now_ms);
        let hash = self.hasher.hash_one(key);
        *added = [None; MAX_WINDOWS];
        if cost != 0 {
            // The usual check: the key's entry exists where a look-up finds it first,
            // holding these windows. It runs in a read section instead of pinning the epoch
            // (`storage/readers.rs`: no locked instruction). Everything else (a new key, a
            // move home, a key being moved, windows of another shape) is the general loop's,
            // pinned and out of line, which goes on from what this pass counted (`added`).
            let usual = readers::enter().and_then(|section| {
                let at = self.places(limits, key.len());
                match self.find_entry(hash, key, at.lines(), &section) {
                    Some((_, e, false)) => {
                        Some(self.apply(&e, &at, limits, cost, now_ms, out, added))
                    }
                    _ => None,
                }
            });
            match usual {
                Some(Applied::Done) => return Ok(()),
                Some(Applied::Owed) => {
                    self.take_back_moved(
                        hash,
                        key,
                        limits,
                        added,
                        cost,
                        &mut crossbeam_epoch::pin(),
                    );
                    return Ok(());
                }
                Some(Applied::Moved) => {
                    self.retries.fetch_add(1, Ordering::Relaxed);
                }
                Some(Applied::Mismatch) | None => {}
            }
        }
        self.count_general(
            hash,
            key,
            limits,
            cost,
            now_ms,
            out,
            added,
            crossbeam_epoch::pin(),
        )
    }

    /// [`Core::count`] when the first look-up did not settle it: a cost of 0, a new key, a
    /// key to move home, a key being moved, an entry with windows of another shape. `added`:
    /// what the first pass counted, in an entry that froze since (the copy holds it).
    #[inline(never)]
    #[expect(
        clippy::too_many_arguments,
        reason = "`count`'s own arguments and its hash and guard: bundling them would cost the hot path a copy"
    )]
    fn count_general(
        &self,
        hash: u64,
        key: &[u8],
        limits: &Limits,
        cost: u32,
        now_ms: u64,
        out: &mut Decision,
        added: &mut [Option<u64>; MAX_WINDOWS],
        mut guard: crossbeam_epoch::Guard,
    ) -> Result<()> {
        if cost == 0 {
            *out = match self.find(hash, key, &guard) {
                Some(line) => self.snapshot(line, limits, 0, now_ms, None),
                None => empty_decision(limits, 0, now_ms),
            };
            return Ok(());
        }
        // Where the windows are in an entry of `key` with these limits: worked out once.
        let at = self.places(limits, key.len());
        let mut spins = 0u32;
        let (mut rehomed, mut split) = (false, false);
        loop {
            let (line, e) = match self.find_entry(hash, key, at.lines(), &guard) {
                Some((line, _, true)) if !rehomed => {
                    // Found through the index while its home bucket has room: move it home
                    // once, then look again.
                    rehomed = true;
                    self.rehome(hash, line, key, limits, &guard);
                    continue;
                }
                Some((line, e, _)) => (line, e),
                None => match self.insert(hash, key, limits, &guard, now_ms, !split) {
                    Ok(Some(line)) => (line, self.segs.entry(line)),
                    Ok(None) => {
                        // Its home segment splits first, with no epoch pinned here.
                        split = true;
                        guard =
                            self.split_unpinned(guard, self.class_of(limits, key.len()), hash)?;
                        continue;
                    }
                    Err(Error::CapacityExhausted) => {
                        *out = self.full_decision(limits, cost, now_ms);
                        return Ok(());
                    }
                    Err(e) => return Err(e),
                },
            };
            match self.apply(&e, &at, limits, cost, now_ms, out, added) {
                Applied::Done => return Ok(()),
                Applied::Owed => {
                    self.take_back_moved(hash, key, limits, added, cost, &mut guard);
                    return Ok(());
                }
                Applied::Moved => {
                    self.retries.fetch_add(1, Ordering::Relaxed);
                    spins += 1;
                    <std::sync::atomic::AtomicU64 as WordCell>::pause(spins);
                }
                Applied::Mismatch => {
                    match self.migrate(hash, line, key, Some(limits), Place::Home(hash), &guard) {
                        Ok(()) => {}
                        Err(Error::CapacityExhausted) => {
                            *out = self.full_decision(limits, cost, now_ms);
                            return Ok(());
                        }
                        Err(e) => return Err(e),
                    }
                }
            }
        }
    }

    /// The decision for a new key when the store is full.
    #[cold]
    #[inline(never)]
    fn full_decision(&self, limits: &Limits, cost: u32, now_ms: u64) -> Decision {
        let mut d = empty_decision(limits, cost, now_ms);
        match self.on_full {
            OnFull::Admit => {}
            OnFull::Reject => {
                for w in d.windows.iter_mut() {
                    w.wait_at_least(1000);
                }
                d.finish(false, limits.len());
            }
        }
        d.capacity_exhausted = true;
        d
    }

    /// Count `cost` in every window of entry `e`, all or nothing; the decision goes to `out`.
    /// `at`: where an entry of the check's key holding `limits` keeps its windows, worked out
    /// once per check (the entry is checked to hold those windows here). Sets of sliding
    /// windows (the usual case) take this short path: one compare-and-swap per window in the
    /// head's sub-window. Sets with an exact window take [`Core::apply_with_exact`].
    #[inline]
    #[expect(
        clippy::too_many_arguments,
        reason = "the check's own arguments and its entry's places: bundling them would cost the hot path a copy"
    )]
    #[expect(
        clippy::indexing_slicing,
        reason = "window indexes are below limits.len() <= MAX_WINDOWS, the length of every array indexed here"
    )]
    fn apply(
        &self,
        e: &Entry<'_>,
        at: &WindowsAt<'_>,
        limits: &Limits,
        cost: u32,
        now_ms: u64,
        out: &mut Decision,
        added: &mut [Option<u64>; MAX_WINDOWS],
    ) -> Applied {
        if !self.holds_windows(e, limits) {
            return Applied::Mismatch;
        }
        if limits.has_exact() {
            return self.apply_with_exact(e, at, limits, cost, now_ms, out, added);
        }
        let n = limits.len();
        let shapes = limits.shapes(self.b);
        let slides = shapes.all();
        // `added`: the sub-window each window counted in, for the take-back (and the caller).
        // A window counted in before the entry moved is counted in this copy too (below).
        // An index loop: `iter().take(n).enumerate()` cost an admission of a pair 20
        // instructions more (callgrind).
        for i in 0..n {
            // No exact window on this path: the `else` is not reached.
            let Some(geo) = &slides[i] else {
                return Applied::Mismatch;
            };
            if added[i].is_some() {
                continue;
            }
            let Some(win) = sliding_window(e, at.of(i), geo) else {
                // What a take-back could not take (a frozen window) is carried, as below.
                *added = self.undo(e, at, limits, added, cost);
                return Applied::Moved;
            };
            match sliding::add(&win, geo, now_ms, cost) {
                Added::Yes { m, used, reset_ms } => {
                    added[i] = Some(m);
                    out.windows[i] = WindowState::admitted(geo, used, reset_ms);
                }
                Added::Refused { seen: Some(s), .. }
                    if added.iter().all(Option::is_none)
                        && self.rest_from_heads(e, at, slides, i + 1, cost, now_ms, out, n) =>
                {
                    // The usual refusal: refused by its head with nothing counted before it
                    // (the first window, most often), the later windows answered from
                    // theirs. No window is read twice.
                    out.windows[i] = WindowState::sliding(geo, &s);
                    out.finish(false, n);
                    return Applied::Done;
                }
                Added::Refused { seen, .. } => {
                    // Nothing counted before this window: then a pass from the heads cannot
                    // answer, as either this window's own head did not suffice (`seen` is
                    // None: its ring holds counts, a key refused after a spread of requests)
                    // or the arm above found a later window's that did not. Straight to the
                    // copies, not a pass that fails first (callgrind: about 100 instructions
                    // a refusal).
                    let heads_tried = added.iter().all(Option::is_none);
                    if !heads_tried {
                        *added = self.undo(e, at, limits, added, cost);
                    }
                    // The refusing window's figures, if its refusal already worked them out.
                    let known = seen.map(|s| (i, WindowState::sliding(geo, &s)));
                    if known.is_some() && !heads_tried {
                        self.snapshot_entry(e, at, limits, cost, now_ms, out, known.as_ref());
                    } else {
                        self.snapshot_copies(e, at, limits, cost, now_ms, out, known.as_ref());
                    }
                    refused_by(out, i, n);
                    return owed_or_done(added);
                }
                Added::Frozen => {
                    // The entry is being moved (or unlinked): the windows before this one
                    // took the cost before they froze (they freeze in order, as they count),
                    // so the copy they freeze into holds it; a take-back would change
                    // nothing on a frozen window. They stay in `added`, and the check goes
                    // on from this window in the entry it finds next: a rejection there takes
                    // them back from that copy.
                    return Applied::Moved;
                }
            }
        }
        out.finish(true, n);
        Applied::Done
    }

    /// The figures of windows `from..n` of a set of sliding windows, each from its head word
    /// ([`sliding::head_summary`]), into `out`: what a refusal by an earlier window reports of
    /// them. `false` if one cannot be answered from its head (`out` is then written again).
    /// Out of line: inlined, it cost an admission some 25 instructions (callgrind).
    #[inline(never)]
    #[expect(
        clippy::too_many_arguments,
        reason = "`apply`'s own arguments, passed on: bundling them would cost the hot path a copy"
    )]
    #[expect(
        clippy::indexing_slicing,
        reason = "window indexes are below limits.len() <= MAX_WINDOWS, the length of every array indexed here"
    )]
    fn rest_from_heads(
        &self,
        e: &Entry<'_>,
        at: &WindowsAt<'_>,
        slides: &[Option<sliding::Slide>; MAX_WINDOWS],
        from: usize,
        cost: u32,
        now_ms: u64,
        out: &mut Decision,
        n: usize,
    ) -> bool {
        // An index loop: an iterator's `skip(from)` (its `nth`) cost every refusal some 40
        // instructions, a zipped slice 18 (callgrind).
        #[expect(
            clippy::needless_range_loop,
            reason = "the index loop is the cheapest form here (measured)"
        )]
        for j in from..n {
            let Some(w) = head_state(e, at.of(j), &slides[j], cost, now_ms) else {
                return false;
            };
            out.windows[j] = w;
        }
        true
    }

    /// [`Core::apply`] for a set with at least one exact window: the exact windows are judged
    /// and written under the lock bit of the first one's meta word, after every sliding window
    /// took the cost.
    #[inline(never)]
    #[expect(
        clippy::indexing_slicing,
        reason = "window indexes are below limits.len() <= MAX_WINDOWS, the length of every array indexed here"
    )]
    #[expect(
        clippy::too_many_arguments,
        reason = "`apply`'s own arguments, passed on: bundling them would cost the hot path a copy"
    )]
    fn apply_with_exact(
        &self,
        e: &Entry<'_>,
        at: &WindowsAt<'_>,
        limits: &Limits,
        cost: u32,
        now_ms: u64,
        out: &mut Decision,
        added: &mut [Option<u64>; MAX_WINDOWS],
    ) -> Applied {
        let items = limits.as_slice();
        // Exact windows are guarded by the lock bit of the first one's meta word.
        let first = first_exact(items);
        let lock = match e.w(at.get(first).map_or(usize::MAX, |a| a.head)) {
            Some(m) if cell::lock_meta(m) => m,
            _ => return Applied::Moved,
        };
        let ws = &mut out.windows;
        let mut refused: Option<usize> = None;
        let shapes = limits.shapes(self.b);
        for i in 0..items.len() {
            let Some(geo) = shapes.get(i) else {
                continue; // exact: below, under the lock
            };
            if added[i].is_some() {
                continue; // counted before the entry moved: the copy holds it (`apply`)
            }
            let Some(win) = sliding_window(e, at.of(i), geo) else {
                refused = Some(i);
                break;
            };
            match sliding::add(&win, geo, now_ms, cost) {
                Added::Yes { m, used, reset_ms } => {
                    added[i] = Some(m);
                    ws[i] = WindowState::admitted(geo, used, reset_ms);
                }
                Added::Refused { .. } => {
                    refused = Some(i);
                    break;
                }
                Added::Frozen => {
                    // As in `apply`: the windows counted so far froze after they counted.
                    cell::unlock_meta(lock);
                    return Applied::Moved;
                }
            }
        }
        if refused.is_none() {
            // Every sliding window took the cost: now the exact ones, under the lock. An
            // admission needs each ring's count in the window, not the sorted copy a
            // refusal's Retry-After does (`Ring::live`); and each ring is read again to be
            // written (the lock keeps it as it was judged) rather than kept (callgrind, an
            // exact admission: 1 955 instructions with the copies and sorts, 1 298 without).
            let mut judged = [None; MAX_WINDOWS];
            for (i, l) in items.iter().enumerate() {
                if l.mode() != Mode::Exact {
                    continue;
                }
                let ring = cell::read_ring(|k| e.w(k), at.of(i).head, l.limit());
                let (t, len) = ring.live(l.window_ms(), now_ms);
                if u64::from(len) + u64::from(cost) > u64::from(l.limit()) {
                    refused = Some(i);
                    break;
                }
                judged[i] = Some((t, len));
            }
            if refused.is_none() {
                for (i, l) in items.iter().enumerate() {
                    let Some((t, len)) = judged[i] else {
                        continue;
                    };
                    let mut ring = cell::read_ring(|k| e.w(k), at.of(i).head, l.limit());
                    ring.push(t, cost);
                    cell::write_ring(|k| e.w(k), at.of(i).head, &ring, i == first);
                    // The request's times (`cost` of them: `count` answers a cost of 0
                    // with a snapshot, never here) are the newest in the window.
                    ws[i] = WindowState::new(
                        l.limit(),
                        l.window_ms(),
                        len + cost,
                        t.saturating_add(l.window_ms()),
                        0,
                    );
                }
            }
        }
        if let Some(i) = refused {
            *added = self.undo(e, at, limits, added, cost);
            self.snapshot_entry(e, at, limits, cost, now_ms, out, None);
            refused_by(out, i, items.len());
            cell::unlock_meta(lock);
            return owed_or_done(added);
        }
        cell::unlock_meta(lock);
        // The caller is told of no sub-window: a reservation on a set with an exact window
        // gives nothing back to its sliding windows (as before the carried windows).
        *added = [None; MAX_WINDOWS];
        out.finish(true, items.len());
        Applied::Done
    }

    /// The state of the entry at `line` without changing it.
    pub(crate) fn snapshot(
        &self,
        line: u64,
        limits: &Limits,
        cost: u32,
        now_ms: u64,
        refused: Option<usize>,
    ) -> Decision {
        let e = self.segs.entry(line);
        match self.windows_at(&e, limits) {
            Some(at) => {
                let mut d = Decision::BLANK;
                self.snapshot_entry(&e, &at, limits, cost, now_ms, &mut d, None);
                if let Some(i) = refused {
                    refused_by(&mut d, i, limits.len());
                }
                d
            }
            // Windows of another shape: the request would move the entry; report it as fresh
            // for the windows that are new (the move keeps the windows both shapes share).
            None => empty_decision(limits, cost, now_ms),
        }
    }

    /// Every window of the entry as a request of `cost` would see it now, written into `out`
    /// in place (a `Decision` is 104 bytes: returning one cost a copy on every rejection).
    /// Admitted if every window has room; a caller whose request a window refused says so
    /// with [`refused_by`]. `known`: a window whose state the caller has already (the one
    /// that refused, from the copy it was judged on), which is not read again. Two passes
    /// out of line: every window from its head ([`Core::heads_snapshot`], the usual refusal,
    /// with a small frame), else the general one ([`Core::snapshot_copies`]).
    #[expect(
        clippy::too_many_arguments,
        reason = "the check's own arguments, its entry and the one window it already judged: bundling them would cost the hot path a copy"
    )]
    #[inline]
    fn snapshot_entry(
        &self,
        e: &Entry<'_>,
        at: &WindowsAt<'_>,
        limits: &Limits,
        cost: u32,
        now_ms: u64,
        out: &mut Decision,
        known: Option<&(usize, WindowState)>,
    ) {
        // The usual refusal: every window answered from its head (a burst within a
        // sub-window, the other windows' rings empty), without a copy of any ring.
        if !limits.has_exact() && self.heads_snapshot(e, at, limits, cost, now_ms, out, known) {
            return;
        }
        self.snapshot_copies(e, at, limits, cost, now_ms, out, known);
    }

    /// [`Core::snapshot_entry`] when every window of a set of sliding windows can be answered
    /// from its head ([`sliding::head_summary`]) or is `known`; `false`, with `out` to be
    /// written again, when one cannot.
    #[inline(never)]
    #[expect(
        clippy::indexing_slicing,
        reason = "window indexes are below limits.len() <= MAX_WINDOWS, the length of every array indexed here"
    )]
    #[expect(
        clippy::too_many_arguments,
        reason = "`snapshot_entry`'s own arguments, passed on: bundling them would cost the hot path a copy"
    )]
    fn heads_snapshot(
        &self,
        e: &Entry<'_>,
        at: &WindowsAt<'_>,
        limits: &Limits,
        cost: u32,
        now_ms: u64,
        out: &mut Decision,
        known: Option<&(usize, WindowState)>,
    ) -> bool {
        let n = limits.len();
        let shapes = limits.shapes(self.b);
        let mut all_fit = true;
        for (i, geo) in shapes.all().get(..n).unwrap_or_default().iter().enumerate() {
            out.windows[i] = match known {
                Some(&(k, w)) if k == i => w,
                _ => match head_state(e, at.of(i), geo, cost, now_ms) {
                    Some(w) => w,
                    None => return false,
                },
            };
            all_fit &= out.windows[i].fits();
        }
        out.finish(all_fit, n);
        true
    }

    /// [`Core::snapshot_entry`] in general: windows that need a copy of their ring, exact
    /// windows, a window the caller already judged. Out of line.
    #[inline(never)]
    #[expect(
        clippy::too_many_arguments,
        reason = "the check's own arguments, its entry and the one window it already judged: bundling them would cost the hot path a copy"
    )]
    #[expect(
        clippy::indexing_slicing,
        reason = "window indexes are below limits.len() <= MAX_WINDOWS, the length of every array indexed here"
    )]
    fn snapshot_copies(
        &self,
        e: &Entry<'_>,
        at: &WindowsAt<'_>,
        limits: &Limits,
        cost: u32,
        now_ms: u64,
        out: &mut Decision,
        known: Option<&(usize, WindowState)>,
    ) {
        let ws = &mut out.windows;
        let mut all_fit = true;
        // One copy for every window that needs one, filled in place: made only if a window
        // cannot be answered from its head, and a small one (128 ring bytes, not 768) for
        // the windows whose ring fits it, as most do: zeroing the large one cost a rejection
        // some 60 instructions.
        let mut small: Option<Snap<SMALL_RING_WORDS>> = None;
        let mut snap: Option<Snap> = None;
        let shapes = limits.shapes(self.b);
        let slides = shapes.all();
        for (i, l) in limits.as_slice().iter().enumerate() {
            let at = at.of(i);
            ws[i] = match &slides[i] {
                _ if known.is_some_and(|&(k, _)| k == i) => {
                    known.map(|&(_, w)| w).unwrap_or_default()
                }
                Some(geo) => match sliding_window(e, at, geo) {
                    Some(win) => match sliding::head_summary(&win, geo, cost, now_ms) {
                        Some(s) => WindowState::sliding(geo, &s),
                        None if geo.ring_words() <= SMALL_RING_WORDS => {
                            let snap = small.get_or_insert(Snap::EMPTY);
                            sliding::snapshot_into(&win, geo, snap);
                            sliding_state(snap, geo, cost, now_ms)
                        }
                        None => {
                            let snap: &mut Snap = snap.get_or_insert(Snap::EMPTY);
                            sliding::snapshot_into(&win, geo, snap);
                            sliding_state(snap, geo, cost, now_ms)
                        }
                    },
                    None => WindowState::default(),
                },
                None => {
                    let ring = cell::read_ring(|k| e.w(k), at.head, l.limit());
                    let ev = ring.eval(l.window_ms(), now_ms);
                    exact_state(&ev, l.limit(), l.window_ms(), cost, now_ms)
                }
            };
            all_fit &= ws[i].fits();
        }
        out.finish(all_fit, limits.len());
    }
}

/// What a refusal came to: [`Applied::Owed`] if a take-back is still owed in `added`.
fn owed_or_done(added: &[Option<u64>; MAX_WINDOWS]) -> Applied {
    if added.iter().any(Option::is_some) {
        Applied::Owed
    } else {
        Applied::Done
    }
}

/// A sliding window's figures from its head word alone ([`sliding::head_summary`]); `None`
/// for an exact window or one whose head does not suffice.
#[inline(always)]
fn head_state(
    e: &Entry<'_>,
    at: At,
    geo: &Option<sliding::Slide>,
    cost: u32,
    now_ms: u64,
) -> Option<WindowState> {
    let geo = geo.as_ref()?;
    let win = sliding_window(e, at, geo)?;
    let s = sliding::head_summary(&win, geo, cost, now_ms)?;
    Some(WindowState::sliding(geo, &s))
}

/// Mark `out` (a snapshot of every window) as refused by window `i`: a window that refused
/// under contention may look free again by now, and it still is the reason for this
/// rejection, so it asks for a wait of at least 1 ms.
fn refused_by(out: &mut Decision, i: usize, len: usize) {
    if out.allowed {
        if let Some(w) = out.windows.get_mut(i) {
            w.wait_at_least(1);
        }
        out.finish(false, len);
    }
}

/// The position of the first exact window (`usize::MAX` if none).
fn first_exact(items: &[Limit]) -> usize {
    items
        .iter()
        .position(|l| l.mode() == Mode::Exact)
        .unwrap_or(usize::MAX)
}
