//! Time, injected.
//!
//! Every time-dependent operation of tollgate takes its time from a [`Clock`], and every one of
//! them also has an `_at` form that takes an explicit `now` (milliseconds since the Unix epoch),
//! so tests drive windows and TTLs without sleeping.
//!
//! The default [`SystemClock`] reads `CLOCK_REALTIME_COARSE` on Linux: a wall clock (so the
//! reset times a store hands out stay right across a restart) that costs a few nanoseconds to
//! read, with the resolution of the kernel tick (1 to 10 ms). Elsewhere it falls back to
//! [`std::time::SystemTime`].
//!
//! A wall clock can move backwards (NTP steps, a manual change). tollgate never trusts a clock
//! to be monotonic: a key's state remembers the newest time it was updated at, and a `now`
//! older than that is treated as that newest time, so a backwards step never hands out a fresh
//! quota by itself (see `docs/DESIGN.md`).

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// A source of wall-clock time, in milliseconds since the Unix epoch.
pub trait Clock: Send + Sync + 'static {
    /// The current time in milliseconds since 1970-01-01T00:00:00Z.
    fn now_ms(&self) -> u64;
}

/// The default clock: the kernel's coarse real-time clock on Linux, `SystemTime` elsewhere.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    #[inline]
    fn now_ms(&self) -> u64 {
        crate::storage::sys::coarse_realtime_ms()
    }
}

/// A clock that only moves when told to: for tests and simulations.
///
/// Clones share the same time.
///
/// ```
/// use tollgate::{Clock, ManualClock};
/// let clock = ManualClock::new(1_000);
/// clock.advance_ms(500);
/// assert_eq!(clock.now_ms(), 1_500);
/// ```
#[derive(Debug, Clone, Default)]
pub struct ManualClock {
    now: Arc<AtomicU64>,
}

impl ManualClock {
    /// A manual clock that reads `now_ms`.
    pub fn new(now_ms: u64) -> Self {
        ManualClock {
            now: Arc::new(AtomicU64::new(now_ms)),
        }
    }

    /// Set the time (it may move backwards: tollgate must cope with that too).
    pub fn set_ms(&self, now_ms: u64) {
        self.now.store(now_ms, Ordering::SeqCst);
    }

    /// Move the time forward by `ms`.
    pub fn advance_ms(&self, ms: u64) {
        self.now.fetch_add(ms, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    #[inline]
    fn now_ms(&self) -> u64 {
        self.now.load(Ordering::SeqCst)
    }
}

/// The clock a store uses, dispatched statically for the two built-in clocks.
#[derive(Clone)]
pub(crate) enum ClockSource {
    System,
    Manual(ManualClock),
    Custom(Arc<dyn Clock>),
}

impl ClockSource {
    #[inline]
    pub(crate) fn now_ms(&self) -> u64 {
        match self {
            ClockSource::System => crate::storage::sys::coarse_realtime_ms(),
            ClockSource::Manual(c) => c.now_ms(),
            ClockSource::Custom(c) => c.now_ms(),
        }
    }
}

impl fmt::Debug for ClockSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ClockSource::System => f.write_str("SystemClock"),
            ClockSource::Manual(c) => write!(f, "ManualClock({})", c.now_ms()),
            ClockSource::Custom(_) => f.write_str("CustomClock"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn system_clock_is_wall_clock() {
        let sys = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        let ours = SystemClock.now_ms();
        // The coarse clock lags by at most a few ticks.
        assert!(ours.abs_diff(sys) < 1_000, "coarse {ours} vs system {sys}");
    }

    #[test]
    fn manual_clock_moves_both_ways() {
        let c = ManualClock::new(10);
        let shared = c.clone();
        c.advance_ms(5);
        assert_eq!(shared.now_ms(), 15);
        c.set_ms(3);
        assert_eq!(shared.now_ms(), 3);
    }
}
