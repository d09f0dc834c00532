//! What a check answers: the values a gateway puts in its rate-limit headers.

use std::time::Duration;

use crate::limit::{Limits, MAX_WINDOWS};
use crate::window::exact::Eval;
use crate::window::sliding::{Slide, Snap, Summary};

/// The binding window, the one whose limit, remaining and reset go in the headers: the one
/// with the fewest units left (what the client can still send now); of equals, a violated one
/// first, then the one that resets latest, then the first. The same rule admitted or not, so
/// `remaining` is never more than any window has left. A plain loop: the iterator-adapter form
/// compiled to an out-of-line fold on the check path.
#[inline]
fn binding_of(live: &[WindowState]) -> usize {
    let mut best: Option<(usize, &WindowState)> = None;
    for (i, w) in live.iter().enumerate() {
        let better = match best {
            None => true,
            Some((_, b)) => {
                (w.remaining(), w.fits(), std::cmp::Reverse(w.reset_ms))
                    < (b.remaining(), b.fits(), std::cmp::Reverse(b.reset_ms))
            }
        };
        if better {
            best = Some((i, w));
        }
    }
    best.map_or(0, |(i, _)| i)
}

/// A span of milliseconds in 32 bits, so that a [`Decision`] is small enough to be moved
/// with a few vector stores (at 136 bytes, every `let d = store.check(..)?` copied it with a
/// call to `memcpy`: 3.5 % of the main job's time, `perf`, 2026-12-07): the milliseconds
/// below 2^31 (24.8 days), else whole seconds, rounded up, with the top bit set. A window
/// that long is a whole number of seconds (`Limit` refuses any other), so a window's length
/// is exact; a wait that long is rounded up to the second, never down (a Retry-After is
/// never early), and the header rounds it to the second anyway.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct Ms32(u32);

impl Ms32 {
    const SECONDS: u32 = 1 << 31;

    /// `ms`, rounded up to the second above 2^31 - 1 (and at most 2^31 - 1 seconds).
    #[inline]
    pub(crate) const fn up(ms: u64) -> Ms32 {
        if ms < Ms32::SECONDS as u64 {
            Ms32(ms as u32)
        } else {
            let s = ms.div_ceil(1000);
            let s = if s < Ms32::SECONDS as u64 {
                s as u32
            } else {
                Ms32::SECONDS - 1
            };
            Ms32(s | Ms32::SECONDS)
        }
    }

    /// The milliseconds.
    #[inline]
    pub(crate) const fn ms(self) -> u64 {
        if self.0 & Ms32::SECONDS == 0 {
            self.0 as u64
        } else {
            (self.0 & !Ms32::SECONDS) as u64 * 1000
        }
    }
}

/// The state of one window after a check (or a peek).
#[derive(Clone, Copy, PartialEq, Eq, Default)]
pub struct WindowState {
    pub(crate) limit: u32,
    pub(crate) used: u32,
    window: Ms32,
    /// 0 when the window has room for the request's cost, at least 1 when it has not.
    retry_after: Ms32,
    pub(crate) reset_ms: u64,
}

impl std::fmt::Debug for WindowState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WindowState")
            .field("limit", &self.limit)
            .field("window_ms", &self.window.ms())
            .field("used", &self.used)
            .field("reset_ms", &self.reset_ms)
            .field("retry_after_ms", &self.retry_after_ms())
            .finish()
    }
}

impl WindowState {
    /// A window's state from its parts (`retry_after_ms` rounded as [`Ms32`] says).
    #[inline]
    pub(crate) const fn new(
        limit: u32,
        window_ms: u64,
        used: u32,
        reset_ms: u64,
        retry_after_ms: u64,
    ) -> WindowState {
        WindowState {
            limit,
            used,
            window: Ms32::up(window_ms),
            retry_after: Ms32::up(retry_after_ms),
            reset_ms,
        }
    }

    /// A sliding window's state from its [`Summary`].
    pub(crate) fn sliding(geo: &Slide, s: &Summary) -> WindowState {
        WindowState {
            limit: geo.limit,
            used: u32::try_from(s.used).unwrap_or(u32::MAX),
            window: geo.window,
            retry_after: Ms32::up(s.retry_ms),
            reset_ms: s.reset_ms,
        }
    }

    /// A sliding window that counted the request: `used` after it, back to its full limit at
    /// `reset_ms`.
    #[inline]
    pub(crate) fn admitted(geo: &Slide, used: u64, reset_ms: u64) -> WindowState {
        WindowState {
            limit: geo.limit,
            used: u32::try_from(used).unwrap_or(u32::MAX),
            window: geo.window,
            retry_after: Ms32(0),
            reset_ms,
        }
    }

    /// Raise the wait to at least `ms` (rounded as [`Ms32`] says).
    #[inline]
    pub(crate) fn wait_at_least(&mut self, ms: u64) {
        if self.retry_after_ms() < ms {
            self.retry_after = Ms32::up(ms);
        }
    }

    /// The window's limit.
    pub fn limit(&self) -> u32 {
        self.limit
    }

    /// The window's length.
    pub fn window(&self) -> Duration {
        Duration::from_millis(self.window.ms())
    }

    /// Units counted in the window (after this request, if it was admitted).
    pub fn used(&self) -> u32 {
        self.used
    }

    /// Units left in the window.
    pub fn remaining(&self) -> u32 {
        self.limit.saturating_sub(self.used)
    }

    /// UTC time in milliseconds at which this window is back to its full limit.
    pub fn reset_ms(&self) -> u64 {
        self.reset_ms
    }

    /// UTC epoch seconds (rounded up) at which this window is back to its full limit.
    pub fn reset(&self) -> u64 {
        self.reset_ms.div_ceil(1000)
    }

    /// Milliseconds until this window has room for the request's cost (0 if it has room now;
    /// a wait above 2^31 ms, some 24.8 days, is rounded up to the second).
    pub fn retry_after_ms(&self) -> u64 {
        self.retry_after.ms()
    }

    /// Whether this window had room for the request's cost.
    pub fn fits(&self) -> bool {
        self.retry_after.0 == 0
    }
}

/// The answer to "may this token make this request now?".
///
/// ```
/// use tollgate::{Limit, Limits, Store, Options};
/// let store = Store::open_in_memory(Options::default()).unwrap();
/// let limits = Limits::new(&[Limit::per_minute(2)]).unwrap();
/// let now = 1_700_000_000_000;
/// let d = store.check_at(b"token", &limits, 1, now).unwrap();
/// assert!(d.allowed());
/// assert_eq!((d.limit(), d.remaining()), (2, 1));
/// store.check_at(b"token", &limits, 1, now).unwrap();
/// let d = store.check_at(b"token", &limits, 1, now).unwrap();
/// assert!(!d.allowed());
/// assert!(d.retry_after().unwrap() > 0);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    pub(crate) allowed: bool,
    pub(crate) binding: u8,
    pub(crate) len: u8,
    pub(crate) windows: [WindowState; MAX_WINDOWS],
    pub(crate) capacity_exhausted: bool,
}

impl Decision {
    /// Build a decision from per-window states; picks the binding window.
    pub(crate) fn from_windows(
        allowed: bool,
        windows: [WindowState; MAX_WINDOWS],
        len: usize,
    ) -> Decision {
        let binding = binding_of(windows.get(..len).unwrap_or(&[]));
        Decision {
            allowed,
            binding: binding as u8,
            len: len as u8,
            windows,
            capacity_exhausted: false,
        }
    }

    /// A decision with no windows yet, to be filled in place and settled with
    /// [`Decision::finish`].
    pub(crate) const BLANK: Decision = Decision {
        // All zero, so that it is written with a few vector stores rather than copied.
        allowed: false,
        binding: 0,
        len: 0,
        windows: [WindowState::new(0, 0, 0, 0, 0); MAX_WINDOWS],
        capacity_exhausted: false,
    };

    /// Settle `allowed` and the binding window once `windows` is filled in place.
    #[inline]
    pub(crate) fn finish(&mut self, allowed: bool, len: usize) {
        self.allowed = allowed;
        self.len = len as u8;
        self.binding = binding_of(self.windows.get(..len).unwrap_or(&[])) as u8;
    }

    fn bind(&self) -> &WindowState {
        self.windows
            .get(self.binding as usize)
            .unwrap_or(&self.windows[0])
    }

    /// Whether the request is admitted (its cost was counted in every window).
    pub fn allowed(&self) -> bool {
        self.allowed
    }

    /// The limit of the binding window (`X-RateLimit-Limit`).
    pub fn limit(&self) -> u32 {
        self.bind().limit
    }

    /// Units left in the most restrictive window (`X-RateLimit-Remaining`).
    pub fn remaining(&self) -> u32 {
        self.bind().remaining()
    }

    /// UTC epoch seconds at which the binding window is back to its full limit
    /// (`X-RateLimit-Reset`).
    pub fn reset(&self) -> u64 {
        self.bind().reset()
    }

    /// When rejected: whole seconds, rounded up, until this request would be admitted — the
    /// longest wait over the violated windows (`Retry-After`). `None` when admitted.
    pub fn retry_after(&self) -> Option<u64> {
        if self.allowed {
            return None;
        }
        let ms = self
            .windows()
            .iter()
            .filter(|w| !w.fits())
            .map(WindowState::retry_after_ms)
            .max()
            .unwrap_or(1000);
        Some(ms.div_ceil(1000).max(1))
    }

    /// The binding window, whose limit, remaining and reset go in the headers: the one with
    /// the fewest units left (what the client can still send now), admitted or not; of equals,
    /// a violated one first, then the one that resets latest. When rejected, its reset may
    /// come before [`Decision::retry_after`], which is the longest wait over every violated
    /// window (a request of cost above one can be blocked by a window with more units left).
    pub fn binding(&self) -> &WindowState {
        self.bind()
    }

    /// True when the key is new and the store was full: the decision is the configured
    /// [`crate::OnFull`] outcome and nothing was counted.
    pub fn capacity_exhausted(&self) -> bool {
        self.capacity_exhausted
    }

    /// Per-window detail, in the order of the [`crate::Limits`] set.
    pub fn windows(&self) -> &[WindowState] {
        self.windows.get(..self.len as usize).unwrap_or(&[])
    }
}

/// The decision for a key with no entry.
pub(crate) fn empty_decision(limits: &Limits, cost: u32, now_ms: u64) -> Decision {
    let mut ws = [WindowState::default(); MAX_WINDOWS];
    for (w, l) in ws.iter_mut().zip(limits.as_slice()) {
        *w = WindowState::new(
            l.limit(),
            l.window_ms(),
            0,
            now_ms,
            u64::from(cost > l.limit()),
        );
    }
    Decision::from_windows(cost <= limits.min_limit(), ws, limits.len())
}

/// A sliding window's state for the headers, from a consistent copy of its words (the
/// embedded store's, or one the fleet rebuilt from a script's counts): the same function for
/// every backend, so that they answer alike field by field.
pub(crate) fn sliding_state<const N: usize>(
    snap: &Snap<N>,
    geo: &Slide,
    cost: u32,
    now_ms: u64,
) -> WindowState {
    WindowState::sliding(geo, &snap.summary(geo, cost, now_ms))
}

/// An exact window's state for the headers, from its evaluated ring.
pub(crate) fn exact_state(
    ev: &Eval,
    limit: u32,
    window_ms: u64,
    cost: u32,
    now_ms: u64,
) -> WindowState {
    let fits = ev.fits(limit, cost);
    WindowState::new(
        limit,
        window_ms,
        ev.len,
        ev.reset_ms(window_ms, now_ms),
        if fits {
            0
        } else {
            ev.retry_ms(limit, cost, window_ms, now_ms)
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The binding window written with iterator adapters: the reference. Fewest left; of
    /// equals a violated one, then the latest reset, then the first.
    fn reference(live: &[WindowState]) -> usize {
        live.iter()
            .enumerate()
            .min_by(|(_, a), (_, b)| {
                a.remaining()
                    .cmp(&b.remaining())
                    .then(a.fits().cmp(&b.fits()))
                    .then(b.reset_ms.cmp(&a.reset_ms))
            })
            .map_or(0, |(i, _)| i)
    }

    /// A decision a caller moves (`let d = store.check(..)?`) is copied with vector stores,
    /// not a call to `memcpy`: at most 128 bytes (x86-64 inlines a copy of up to eight
    /// 16-byte stores).
    #[test]
    fn a_decision_is_small_enough_to_move_inline() {
        assert_eq!(std::mem::size_of::<WindowState>(), 24);
        assert!(std::mem::size_of::<Decision>() <= 104);
    }

    /// Below 2^31 ms a span is exact; above, whole seconds rounded up: a window (a whole
    /// number of seconds that long) exactly, a wait never shorter.
    #[test]
    fn spans_round_trip_exactly_below_2_31_ms_and_up_to_the_second_above() {
        for ms in [0, 1, 999, 1000, 60_000, (1 << 31) - 1] {
            assert_eq!(Ms32::up(ms).ms(), ms);
        }
        let max_window = crate::limit::MAX_WINDOW.as_millis() as u64;
        for s in [(1u64 << 31) / 1000 + 1, 86_400 * 30, max_window / 1000] {
            assert_eq!(Ms32::up(s * 1000).ms(), s * 1000);
        }
        for ms in [
            1 << 31,
            (1 << 31) + 1,
            max_window + 1,
            max_window + 999,
            u64::MAX,
        ] {
            let back = Ms32::up(ms).ms();
            assert!(back >= ms || ms > (1 << 31) * 1000 - 1000, "{ms} -> {back}");
            assert!(back < ms.saturating_add(1000), "{ms} -> {back}");
        }
        let mut w = WindowState::new(5, 60_000, 5, 0, 10);
        w.wait_at_least(3);
        assert_eq!(w.retry_after_ms(), 10);
        w.wait_at_least(max_window + 1);
        assert_eq!(w.retry_after_ms(), max_window + 1000);
        assert_eq!(w.window(), std::time::Duration::from_secs(60));
    }

    #[test]
    fn binding_window_matches_the_reference_on_every_small_case() {
        // Every combination of up to 3 windows over small values, ties included.
        let mut states = Vec::new();
        for used in 0..3u32 {
            for reset_ms in 0..2u64 {
                for retry_after_ms in 0..3u64 {
                    states.push(WindowState::new(2, 1000, used, reset_ms, retry_after_ms));
                }
            }
        }
        let mut cases = 0;
        for &a in &states {
            for &b in &states {
                for &c in &states {
                    let all = [a, b, c];
                    for len in 0..=3 {
                        let live = &all[..len];
                        assert_eq!(binding_of(live), reference(live), "{live:?}");
                        cases += 1;
                    }
                }
            }
        }
        assert_eq!(cases, 18 * 18 * 18 * 4);
    }
}
