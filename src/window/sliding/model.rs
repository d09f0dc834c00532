//! Model test: the sliding window against an exact sliding log (the admitted times and costs),
//! over random limits (1 to 1 000 000), windows (1 s to 1 day), `B` (16..=256), costs and
//! clocks (steps, bursts, jumps back, jumps far forward), with restarts (the words copied to
//! new cells and recovered) and the compactor's expiry check.
//!
//! The log stamps each admission with its effective time: the clock reading, or the newest
//! admitted time if the clock is behind it (a clock going back stands still at the newest
//! counted time, the promise of `docs/ACCURACY.md`).

use std::sync::atomic::{AtomicU64, Ordering};

use proptest::prelude::*;

use super::tests::cells;
use super::*;

/// The exact log: admitted (time, cost), times non-decreasing; prefix sums of the costs.
#[derive(Default)]
struct Log {
    times: Vec<u64>,
    cum: Vec<u64>,
}

impl Log {
    fn push(&mut self, t: u64, cost: u64) {
        let c = self.cum.last().copied().unwrap_or(0);
        self.times.push(t);
        self.cum.push(c + cost);
    }

    fn newest(&self) -> Option<u64> {
        self.times.last().copied()
    }

    /// Cost admitted in `(t - back, t]`, for `t` at or after the newest admission.
    fn used(&self, t: u64, back: u64) -> u64 {
        let lo = self.times.partition_point(|&x| x + back <= t);
        let total = self.cum.last().copied().unwrap_or(0);
        total - lo.checked_sub(1).map_or(0, |i| self.cum[i])
    }

    /// The earliest time at or after `t` at which `cost` fits under `limit` in a window of
    /// `w`, or `None` if never.
    fn earliest(&self, t: u64, w: u64, limit: u64, cost: u64) -> Option<u64> {
        if cost > limit {
            return None;
        }
        std::iter::once(t)
            .chain(self.times.iter().map(|&x| x + w).filter(|&x| x > t))
            .find(|&x| self.used(x, w) + cost <= limit)
    }
}

#[derive(Debug, Clone)]
enum Step {
    /// Move the clock forward by this fraction (per mille) of a sub-window, and check.
    Tick(u64),
    /// Forward by this fraction (per mille) of the window.
    Walk(u64),
    /// Forward by this many windows (up to 1 000).
    Leap(u64),
    /// Back by this fraction (per mille) of the window (up to 3 windows).
    Back(u64),
    /// Copy the words to new cells and recover them (a restart).
    Restart,
    /// The compactor asks whether the window is expired; if so the entry is dropped.
    Compact,
}

fn step() -> impl Strategy<Value = (Step, u32)> {
    (
        prop_oneof![
            6 => (0u64..1_000).prop_map(Step::Tick),
            3 => (0u64..400).prop_map(Step::Walk),
            1 => (1u64..1_000).prop_map(Step::Leap),
            1 => (0u64..3_000).prop_map(Step::Back),
            1 => Just(Step::Restart),
            1 => Just(Step::Compact),
        ],
        // Cost, as a fraction (per mille) of the limit, at least 1.
        prop_oneof![3 => Just(0u32), 2 => 0u32..300, 1 => 0u32..1_001],
    )
}

fn shape() -> impl Strategy<Value = (u32, u64, u32)> {
    (
        prop_oneof![1u32..=10, 1u32..=1_000, 1u32..=1_000_000, Just(1_000_000)],
        prop_oneof![
            Just(1_000u64),
            Just(60_000),
            Just(3_600_000),
            Just(86_400_000),
            1_000u64..=86_400_000
        ],
        prop_oneof![Just(16u32), Just(64), Just(256), 16u32..=256],
    )
}

fn copy_words(words: &[AtomicU64]) -> Vec<AtomicU64> {
    words
        .iter()
        .map(|w| AtomicU64::new(w.load(Ordering::Relaxed)))
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(400))]

    #[test]
    fn sliding_window_against_an_exact_log(
        (limit, w, b) in shape(),
        start in 0u64..250_000_000_000_000,
        steps in prop::collection::vec(step(), 1..250),
    ) {
        let geo = Slide::new(limit, w, b).unwrap();
        let delay = geo.release_delay_ms();
        prop_assert!(delay <= w.div_ceil(u64::from(b)) + u64::from(b));
        let mut words = cells(&geo);
        let mut log = Log::default();
        let mut now = start;
        let lim = u64::from(limit);
        for (step, per_mille) in steps {
            let cost = ((lim * u64::from(per_mille)) / 1_000).max(1) as u32;
            match step {
                Step::Tick(f) => now += geo.g * f / 1_000,
                Step::Walk(f) => now += w * f / 1_000,
                Step::Leap(k) => now += k * w,
                Step::Back(f) => now = now.saturating_sub(w * f / 1_000),
                Step::Restart => {
                    words = copy_words(&words);
                    let win = Window::new(&words, &geo).unwrap();
                    prop_assert_eq!(recover(&win, &geo), Recovered::Clean);
                    continue;
                }
                Step::Compact => {
                    let win = Window::new(&words, &geo).unwrap();
                    if freeze_if_expired(&win, &geo, now) {
                        let eff = log.newest().map_or(now, |t| t.max(now));
                        prop_assert_eq!(log.used(eff, w), 0, "unlinked a live window at {}", now);
                        // The entry is gone; a new one starts with no history.
                        words = cells(&geo);
                        log = Log::default();
                    }
                    continue;
                }
            }
            now = now.min(MAX_TIME_MS);
            let win = Window::new(&words, &geo).unwrap();
            let eff = log.newest().map_or(now, |t| t.max(now));
            let before = snapshot(&win, &geo);
            prop_assert!(before.is_consistent(&geo), "{:?}", before);
            let counted = before.used(&geo, now);
            // The head alone, when it suffices, answers what the copy answers.
            if let Some(h) = head_summary(&win, &geo, cost, now) {
                prop_assert_eq!(h, before.summary(&geo, cost, now));
            }
            // The one-walk summary a decision reports is the three walks' answer.
            prop_assert_eq!(
                before.summary(&geo, cost, now),
                Summary {
                    used: counted,
                    reset_ms: before.reset_ms(&geo, now),
                    retry_ms: before.retry_ms(&geo, cost, now),
                }
            );
            // Never under-counts the last window; never counts what left it more than the
            // release delay ago.
            prop_assert!(counted >= log.used(eff, w), "under-count at {}", now);
            prop_assert!(counted <= log.used(eff, w + delay), "over-count at {}", now);
            let c = u64::from(cost);
            match add(&win, &geo, now, cost) {
                Added::Yes { used, reset_ms, .. } => {
                    log.push(eff, c);
                    prop_assert_eq!(used, counted + c);
                    prop_assert!(log.used(eff, w) <= lim, "over the limit at {}", eff);
                    // Reset: never before the exact log's, at most the delay after.
                    prop_assert!(reset_ms >= eff + w);
                    prop_assert!(reset_ms <= eff + w + delay);
                }
                Added::Refused { used, seen } => {
                    prop_assert_eq!(used, counted);
                    // A refusal that worked out the figures worked out the window's own.
                    if let Some(seen) = seen {
                        prop_assert_eq!(seen, before.summary(&geo, cost, now));
                    }
                    // Late by at most the delay: an exact log looking back W + delay refuses.
                    prop_assert!(
                        log.used(eff, w + delay) + c > lim,
                        "refused at {} though the log has room {} ms ago", eff, delay
                    );
                    let after = snapshot(&win, &geo);
                    prop_assert_eq!(&after.ring[..], &before.ring[..], "a refusal wrote");
                    prop_assert_eq!(after.raw, before.raw, "a refusal wrote");
                    // Retry-After: never early, at most the delay late, and exact for the
                    // window itself.
                    let r = before.retry_ms(&geo, cost, now);
                    prop_assert!(r >= 1);
                    let at = now + r;
                    let exact = log.earliest(eff, w, lim, c).unwrap();
                    prop_assert!(at >= exact, "retry {} before the exact {}", at, exact);
                    prop_assert!(at <= exact + delay, "retry {} late vs {}", at, exact);
                    prop_assert!(before.used(&geo, at) + c <= lim);
                    prop_assert!(before.used(&geo, at - 1) + c > lim || at - 1 < eff);
                    prop_assert!(before.reset_ms(&geo, now) >= at);
                }
                Added::Frozen => prop_assert!(false, "nobody froze it"),
            }
        }
    }

    /// Two windows of one request, added in turn and taken back from the first when the
    /// second refuses: each holds both bounds, and a refused request leaves no count. Each
    /// window's effective time is its own: a request counted in the first window and taken
    /// back has still moved that window's clock (its ring rotated), which only matters when
    /// the clock then goes back.
    #[test]
    fn two_windows_are_all_or_nothing(
        (l1, w1, b1) in shape(),
        (l2, w2, b2) in shape(),
        start in 0u64..250_000_000_000_000,
        steps in prop::collection::vec(step(), 1..150),
    ) {
        let g1 = Slide::new(l1, w1, b1).unwrap();
        let g2 = Slide::new(l2, w2, b2).unwrap();
        let (c1, c2) = (cells(&g1), cells(&g2));
        let (x1, x2) = (Window::new(&c1, &g1).unwrap(), Window::new(&c2, &g2).unwrap());
        let (mut log1, mut log2) = (Log::default(), Log::default());
        let (mut seen1, mut seen2) = (0u64, 0u64);
        let mut now = start;
        let small = u64::from(l1.min(l2));
        for (step, per_mille) in steps {
            let cost = ((small * u64::from(per_mille)) / 1_000).max(1) as u32;
            let w = w1.min(w2);
            match step {
                Step::Tick(f) => now += g1.g.min(g2.g) * f / 1_000,
                Step::Walk(f) => now += w * f / 1_000,
                Step::Leap(k) => now += k * w,
                Step::Back(f) => now = now.saturating_sub(w * f / 1_000),
                Step::Restart | Step::Compact => {}
            }
            now = now.min(MAX_TIME_MS);
            let (e1, e2) = (now.max(seen1), now.max(seen2));
            let c = u64::from(cost);
            let full1 = log1.used(e1, w1 + g1.release_delay_ms()) + c > u64::from(l1);
            let full2 = log2.used(e2, w2 + g2.release_delay_ms()) + c > u64::from(l2);
            match add(&x1, &g1, now, cost) {
                Added::Yes { m, .. } => {
                    seen1 = e1;
                    match add(&x2, &g2, now, cost) {
                        Added::Yes { .. } => {
                            seen2 = e2;
                            log1.push(e1, c);
                            log2.push(e2, c);
                        }
                        _ => {
                            prop_assert!(take_back(&x1, &g1, m, cost), "nothing froze");
                            prop_assert!(full2, "the second refused at {} with room", e2);
                        }
                    }
                }
                _ => prop_assert!(full1, "the first refused at {} with room", e1),
            }
            prop_assert!(log1.used(e1, w1) <= u64::from(l1));
            prop_assert!(log2.used(e2, w2) <= u64::from(l2));
            // Both windows count the admitted requests, and no trace of refused ones.
            prop_assert!(snapshot(&x1, &g1).is_consistent(&g1));
            prop_assert!(snapshot(&x2, &g2).is_consistent(&g2));
            let both = [
                (&x1, &g1, w1, &log1, seen1.max(now)),
                (&x2, &g2, w2, &log2, seen2.max(now)),
            ];
            for (x, g, ww, log, e) in both {
                let used = snapshot(x, g).used(g, now);
                prop_assert!(used >= log.used(e, ww), "under-count");
                prop_assert!(used <= log.used(e, ww + g.release_delay_ms()), "over-count");
            }
        }
    }
}
