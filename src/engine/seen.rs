//! The newest time any operation ran at, kept in the header page across restarts.
//!
//! The compactor never judges expiry later than it: a caller that drives time itself with
//! `check_at` is never overtaken by the store's own clock, which would unlink entries still
//! live in the caller's time and hand out fresh quota.

use std::sync::atomic::{AtomicU64, Ordering};

use super::core::Core;
use crate::storage::format::SEEN_AT;

/// The header's newest-time word moves in steps of this many milliseconds (a power of two).
pub(crate) const SEEN_GRANULE_MS: u64 = 1024;

impl Core {
    /// Remember `now_ms` as the newest time seen: a read, and about once a second of advancing
    /// time a write. The word holds the newest time rounded up past the next multiple of
    /// [`SEEN_GRANULE_MS`] (strictly above it), so checks in the same second share one value
    /// and do not all write the shared header line.
    #[inline]
    pub(crate) fn saw(&self, now_ms: u64) {
        let w = self.seen_word();
        if now_ms >= w.load(Ordering::Relaxed) {
            w.fetch_max(
                (now_ms | (SEEN_GRANULE_MS - 1)).saturating_add(1),
                Ordering::Relaxed,
            );
        }
    }

    /// The header word holding the newest time any operation ran at. Whoever judges a window
    /// word against it reads it after the window word (see `window::cell::At::seen`).
    #[inline]
    pub(crate) fn seen_word(&self) -> &AtomicU64 {
        // The word is always in the header page; were it not, "no bound" is the safe answer
        // (a word ahead of now is then taken for a clock step back, which keeps counts; and
        // raising it to a time below u64::MAX changes nothing).
        static NO_BOUND: AtomicU64 = AtomicU64::new(u64::MAX);
        self.header.word(SEEN_AT).unwrap_or(&NO_BOUND)
    }

    /// A bound on the newest time any operation ran at (at most a granule above it), and never
    /// earlier than `now_ms`.
    #[cfg(test)]
    pub(crate) fn seen_ms(&self, now_ms: u64) -> u64 {
        self.seen_word().load(Ordering::Relaxed).max(now_ms)
    }

    /// The time the compactor judges expiry at: the clock, but never past the newest time an
    /// operation ran at (0 before any operation ran). The word is up to one granule above that
    /// time, so one granule is taken off: expiry is then at most a second late, never early.
    pub(crate) fn expiry_now(&self) -> u64 {
        let seen = self
            .header
            .word(SEEN_AT)
            .map_or(0, |w| w.load(Ordering::Relaxed));
        self.clock
            .now_ms()
            .min(seen.saturating_sub(SEEN_GRANULE_MS))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{ManualClock, Options, Store};

    #[test]
    fn the_newest_time_word_bounds_every_time_from_above_and_expiry_from_below() {
        let day = 86_400_000;
        let clock = ManualClock::new(1_700_000_000_000 + day);
        let store = Store::open_in_memory(Options::default().clock(clock.clone()).compactor(false))
            .unwrap();
        let core = &store.core;
        assert_eq!(
            core.expiry_now(),
            0,
            "no operation yet: nothing to judge at"
        );
        let mut newest = 0u64;
        let mut writes = 0;
        let mut last = core.seen_ms(0);
        for t in (0..5_000u64).map(|i| 1_700_000_000_000 + i * 37) {
            core.saw(t);
            newest = newest.max(t);
            let word = core.seen_ms(0);
            // Above the newest time by 1 to 1024 ms: never below it, never far above it.
            assert!(
                word > newest && word - newest <= SEEN_GRANULE_MS,
                "{t} {word}"
            );
            // The compactor judges at most at the newest time, and at most a granule late.
            let judged = core.expiry_now();
            assert!(
                judged <= newest && newest - judged < SEEN_GRANULE_MS,
                "{t} {judged}"
            );
            if word != last {
                writes += 1;
                last = word;
            }
        }
        // 5 000 times 37 ms apart span 185 s: about one write per second, not one per call.
        assert!((180..=186).contains(&writes), "{writes} writes");
        // An older time changes nothing; the clock behind the newest time bounds expiry.
        core.saw(1_600_000_000_000);
        assert_eq!(core.seen_ms(0), last);
        clock.set_ms(1_700_000_000_500);
        assert_eq!(core.expiry_now(), 1_700_000_000_500);
        // The very end of time saturates instead of wrapping.
        core.saw(u64::MAX - 3);
        assert_eq!(core.seen_ms(0), u64::MAX);
    }
}
