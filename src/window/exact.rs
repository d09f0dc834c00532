//! The exact representation: a ring of the timestamps of admitted requests.
//!
//! A window of limit `L` (at most [`crate::MAX_EXACT_LIMIT`]) keeps the last `cap = L`
//! admission times. A request at `t` is admitted when the admissions in `(t - W, t]` plus its
//! cost fit in the limit; each unit of cost writes one timestamp. This is the exact sliding log:
//! no over-admission and no late release. It takes a per-entry lock word (the ring is several
//! words), so it is meant for small limits such as 5 logins per minute.
//!
//! Timestamps are stored as `ms + 1` so that 0 means an empty place.

/// The ring of one exact window, copied out of the entry.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Ring {
    /// Stored values (`ms + 1`, 0 = empty), in place order.
    pub slots: [u64; crate::MAX_EXACT_LIMIT as usize],
    /// Number of places.
    pub cap: u32,
    /// Next place to write.
    pub head: u32,
}

/// A ring evaluated at a point in time.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Eval {
    /// `now`, or the newest stored time if the clock went backwards.
    pub now_eff: u64,
    /// In-window admission times, oldest first (`len` of them).
    pub times: [u64; crate::MAX_EXACT_LIMIT as usize],
    pub len: u32,
}

impl Ring {
    /// The places in use, `cap` of them.
    fn places(&self) -> &[u64] {
        self.slots.get(..self.cap as usize).unwrap_or(&self.slots)
    }

    /// The time the ring is judged at for `now_ms`: `now_ms`, or the newest stored time if
    /// the clock went back.
    fn now_eff(&self, now_ms: u64) -> u64 {
        let newest = self.places().iter().copied().max().unwrap_or(0);
        now_ms.max(newest.saturating_sub(1))
    }

    /// The admission times in a window of `window_ms` judged at `now_eff`, in place order.
    fn in_window(&self, window_ms: u64, now_eff: u64) -> impl Iterator<Item = u64> + '_ {
        self.places()
            .iter()
            .filter(|&&v| v != 0)
            .map(|&v| v - 1)
            .filter(move |t| t.saturating_add(window_ms) > now_eff)
    }

    /// The time the ring is judged at and the admissions in the window then: all an
    /// admission needs, without the sorted copy [`Ring::eval`] makes for a refusal's
    /// Retry-After.
    pub fn live(&self, window_ms: u64, now_ms: u64) -> (u64, u32) {
        let now_eff = self.now_eff(now_ms);
        (now_eff, self.in_window(window_ms, now_eff).count() as u32)
    }

    /// Evaluate the ring for a window of `window_ms` at `now_ms`.
    pub fn eval(&self, window_ms: u64, now_ms: u64) -> Eval {
        let now_eff = self.now_eff(now_ms);
        let mut times = [0u64; crate::MAX_EXACT_LIMIT as usize];
        let mut len = 0usize;
        for (place, t) in times.iter_mut().zip(self.in_window(window_ms, now_eff)) {
            *place = t;
            len += 1;
        }
        if let Some(live) = times.get_mut(..len) {
            live.sort_unstable();
        }
        Eval {
            now_eff,
            times,
            len: len as u32,
        }
    }

    /// Write `cost` timestamps of `t`.
    pub fn push(&mut self, t: u64, cost: u32) {
        if self.cap == 0 {
            return;
        }
        for _ in 0..cost {
            if let Some(place) = self.slots.get_mut(self.head as usize) {
                *place = t + 1;
            }
            self.head = (self.head + 1) % self.cap;
        }
    }
}

impl Eval {
    /// Whether `cost` more fits under `limit`.
    pub fn fits(&self, limit: u32, cost: u32) -> bool {
        u64::from(self.len) + u64::from(cost) <= u64::from(limit)
    }

    /// When the newest admission leaves the window.
    pub fn reset_ms(&self, window_ms: u64, now_ms: u64) -> u64 {
        match self
            .len
            .checked_sub(1)
            .and_then(|i| self.times.get(i as usize))
        {
            Some(&t) => t.saturating_add(window_ms),
            None => now_ms,
        }
    }

    /// Milliseconds until `cost` more fits under `limit`.
    pub fn retry_ms(&self, limit: u32, cost: u32, window_ms: u64, now_ms: u64) -> u64 {
        let total = u64::from(self.len) + u64::from(cost);
        let Some(needed) = total.checked_sub(u64::from(limit)).filter(|&n| n > 0) else {
            return 0;
        };
        match self.times.get(needed as usize - 1) {
            Some(&t) if needed <= u64::from(self.len) => {
                t.saturating_add(window_ms).saturating_sub(now_ms).max(1)
            }
            // More than the ring can hold even when empty: a full window from the newest time.
            _ => self
                .now_eff
                .saturating_add(window_ms)
                .saturating_sub(now_ms)
                .max(1),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ring(cap: u32) -> Ring {
        Ring {
            slots: [0; crate::MAX_EXACT_LIMIT as usize],
            cap,
            head: 0,
        }
    }

    #[test]
    fn five_per_minute_exactly() {
        let w = 60_000;
        let mut r = ring(5);
        for i in 0..5 {
            let e = r.eval(w, 1_000 + i * 1_000);
            assert!(e.fits(5, 1));
            r.push(e.now_eff, 1);
        }
        let e = r.eval(w, 10_000);
        assert!(!e.fits(5, 1));
        // The first admission (t = 1000) leaves the window at 61000.
        assert_eq!(e.retry_ms(5, 1, w, 10_000), 51_000);
        assert_eq!(e.reset_ms(w, 10_000), 65_000);
        assert!(r.eval(w, 61_000).fits(5, 1));
        assert!(!r.eval(w, 60_999).fits(5, 1));
    }

    /// An admission judges a ring by `live`, a refusal by `eval`: they must agree on when
    /// and how many, for rings pushed at times that go back and forth, with empty places.
    #[test]
    fn live_agrees_with_eval() {
        let w = 60_000;
        let mut x = 0x9E37_79B9_7F4A_7C15u64;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        for cap in [1, 2, 5, 10, 64] {
            let mut r = ring(cap);
            for _ in 0..500 {
                let now = 1_000_000 + next() % 200_000;
                let ev = r.eval(w, now);
                assert_eq!(r.live(w, now), (ev.now_eff, ev.len), "cap {cap} at {now}");
                if next() % 3 != 0 {
                    r.push(now, 1 + (next() % 3) as u32);
                }
            }
        }
    }

    #[test]
    fn backwards_clock_uses_newest_time() {
        let w = 60_000;
        let mut r = ring(2);
        r.push(100_000, 2);
        let e = r.eval(w, 10_000);
        assert_eq!(e.now_eff, 100_000);
        assert_eq!(e.len, 2);
        assert!(!e.fits(2, 1));
    }
}
