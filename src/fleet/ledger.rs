//! What a hybrid node keeps per key and window: the fleet's counts as the server last
//! acknowledged them, the counts in a batch under way, and the counts admitted since (see
//! `hybrid.rs` for how a node decides with them). Counts are kept per absolute sub-window
//! number, the sub-windows of the sliding window (`g = ⌈W/B⌉` ms): a sub-window `m` counts
//! while `m + B + 1 > ne`, `ne` the effective sub-window, so `k = B + 1` of them are live.

use crate::decision::{sliding_state, WindowState};
use crate::window::sliding::{counter_bits, Slide, Snap, MAX_B, MAX_BITS};

/// Counts per absolute sub-window number.
pub(crate) type Counts = Vec<(u64, u64)>;

pub(crate) fn add(v: &mut Counts, n: u64, c: u64) {
    match v.iter_mut().find(|(m, _)| *m == n) {
        Some((_, x)) => *x += c,
        None => v.push((n, c)),
    }
}

/// The counts still in the window in sub-window `nn` (`k = B + 1` sub-windows live).
pub(crate) fn live(v: &Counts, nn: u64, k: u64) -> u64 {
    v.iter().filter(|(n, _)| n + k > nn).map(|(_, c)| c).sum()
}

/// One window of one key on this node.
#[derive(Debug, Clone)]
pub(crate) struct Win {
    pub(crate) window_ms: u64,
    /// Live sub-windows, `B + 1`.
    pub(crate) k: u64,
    /// Sub-window length `g = ⌈W/B⌉` ms.
    pub(crate) g: u64,
    pub(crate) remote: Counts,
    pub(crate) inflight: Counts,
    /// Batch number of `inflight` (0 = nothing in flight).
    pub(crate) seq: u64,
    pub(crate) pending: Counts,
    /// Checked since the last sync: refresh its fleet view even with nothing to send.
    pub(crate) dirty: bool,
}

impl Win {
    pub(crate) fn new(window_ms: u64, k: u64, g: u64) -> Win {
        Win {
            window_ms,
            k,
            g,
            remote: Vec::new(),
            inflight: Vec::new(),
            seq: 0,
            pending: Vec::new(),
            dirty: true,
        }
    }

    fn all(&self) -> impl Iterator<Item = &(u64, u64)> {
        self.remote
            .iter()
            .chain(&self.inflight)
            .chain(&self.pending)
    }

    pub(crate) fn unsynced(&self, nn: u64) -> u64 {
        live(&self.inflight, nn, self.k) + live(&self.pending, nn, self.k)
    }

    pub(crate) fn fleet(&self, nn: u64) -> u64 {
        live(&self.remote, nn, self.k) + self.unsynced(nn)
    }

    /// The effective sub-window at `now_ms` for the shape `geo`: now's, or the newest one
    /// the fleet has counted in if a clock is ahead (a request is then counted there, as the
    /// embedded store counts in its head's sub-window).
    pub(crate) fn eff(&self, geo: &Slide, now_ms: u64) -> u64 {
        let nn = geo.sub_window(now_ms);
        self.all()
            .filter(|(_, c)| *c > 0)
            .map(|(m, _)| *m)
            .fold(nn, u64::max)
    }

    /// The fleet view (`remote + inflight + pending`) as a copy of a sliding window's words:
    /// its head at the effective sub-window, and the shape to judge it with (`geo`, with
    /// counters widened if the fleet counted past `geo`'s width: the fleet may overshoot).
    pub(crate) fn view(&self, geo: &Slide, now_ms: u64) -> (Snap, Slide) {
        let n = self.eff(geo, now_ms);
        let b = u64::from(geo.b);
        let mut cur = 0u64;
        let mut older = [0u64; MAX_B as usize];
        let mut total = 0u64;
        for &(m, c) in self.all() {
            if m == n {
                cur += c;
            } else if m < n && n - m <= b {
                // Oldest first: position i is sub-window n - B + i.
                if let Some(o) = older.get_mut((m + b - n) as usize) {
                    *o += c;
                }
            } else {
                continue;
            }
            total += c;
        }
        let wide = if total >> geo.c != 0 {
            let c = counter_bits(u32::try_from(total).unwrap_or(u32::MAX)).min(MAX_BITS);
            Slide::for_width(c, geo.window_ms, geo.b).and_then(|w| w.with_limit(geo.limit))
        } else {
            None
        };
        let geo = wide.unwrap_or(*geo);
        let older = older.get(..geo.b as usize).unwrap_or(&[]);
        (Snap::from_counts(&geo, n, cur, older), geo)
    }

    /// The fleet view's state for a request of `cost`, rounded exactly as the embedded store
    /// rounds a sliding window of shape `geo` ([`sliding_state`]).
    pub(crate) fn state(&self, geo: &Slide, cost: u32, now_ms: u64) -> WindowState {
        let (snap, geo) = self.view(geo, now_ms);
        sliding_state(&snap, &geo, cost, now_ms)
    }

    /// Drop counts no node counts any more.
    pub(crate) fn prune(&mut self, nn: u64) {
        let k = self.k;
        self.remote.retain(|(n, _)| n + k > nn);
        self.pending.retain(|(n, _)| n + k > nn);
    }

    pub(crate) fn is_idle(&self, nn: u64) -> bool {
        self.seq == 0 && !self.dirty && self.fleet(nn) == 0
    }
}

#[derive(Debug, Default)]
pub(crate) struct KeyState {
    pub(crate) wins: Vec<Win>,
}

impl KeyState {
    pub(crate) fn win(&mut self, window_ms: u64, k: u64, g: u64) -> &mut Win {
        let at = match self
            .wins
            .iter()
            .position(|w| w.window_ms == window_ms && w.g == g)
        {
            Some(i) => i,
            None => {
                self.wins.push(Win::new(window_ms, k, g));
                self.wins.len() - 1
            }
        };
        #[expect(
            clippy::indexing_slicing,
            reason = "`at` was found in `wins` or is the place just pushed"
        )]
        &mut self.wins[at]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_age_out_after_k_sub_windows() {
        let mut v = Vec::new();
        add(&mut v, 10, 3);
        add(&mut v, 12, 2);
        add(&mut v, 10, 1);
        assert_eq!(live(&v, 12, 3), 6);
        assert_eq!(live(&v, 13, 3), 2, "sub-window 10 stops counting at 13");
        assert_eq!(live(&v, 15, 3), 0);
    }

    // A 60 s window with B = 64: g = ⌈60 000 / 64⌉ = 938 ms, k = B + 1 = 65 live sub-windows;
    // sub-window m stops counting at (m + 65) × 938 ms.
    const G: u64 = 938;

    fn shape(limit: u32) -> Slide {
        let geo = Slide::new(limit, 60_000, 64).unwrap();
        assert_eq!(geo.g, G);
        geo
    }

    #[test]
    fn fleet_state_rounds_like_the_sliding_window() {
        let mut w = Win::new(60_000, 65, G);
        w.remote = vec![(100, 4)];
        w.pending = vec![(101, 1)];
        let now = 101 * G + 10;
        let st = w.state(&shape(5), 1, now);
        assert_eq!(st.used, 5);
        // The newest count (sub-window 101) leaves at (101 + 65) × 938.
        assert_eq!(st.reset_ms, 166 * G);
        // One unit frees when sub-window 100 leaves, at (100 + 65) × 938 = 154 770.
        assert_eq!(st.retry_after_ms(), 154_770 - 94_748);
        assert!(w.state(&shape(6), 1, now).fits());
        // Sub-window 100 counts through sub-window 164 and not in 165.
        assert_eq!(w.state(&shape(5), 1, 165 * G - 1).used, 5);
        let st = w.state(&shape(5), 1, 165 * G);
        assert_eq!((st.used, st.retry_after_ms()), (1, 0));
        let st = w.state(&shape(5), 1, 166 * G);
        assert_eq!((st.used, st.reset_ms), (0, 166 * G));
    }

    #[test]
    fn a_clock_behind_the_fleet_counts_in_the_newest_sub_window() {
        let mut w = Win::new(60_000, 65, G);
        w.remote = vec![(200, 3)];
        let now = 150 * G;
        assert_eq!(w.eff(&shape(5), now), 200);
        let st = w.state(&shape(5), 3, now);
        assert_eq!(st.used, 3);
        assert_eq!(st.reset_ms, 265 * G);
        // 3 + 3 > 5: one unit must leave, which happens when sub-window 200 does.
        assert_eq!(st.retry_after_ms(), 265 * G - 150 * G);
    }

    #[test]
    fn a_fleet_count_past_the_counter_width_is_reported_whole() {
        // Limit 5 has 3-bit counters (at most 7); the fleet overshot to 9 + 9.
        let mut w = Win::new(60_000, 65, G);
        w.remote = vec![(100, 9)];
        w.inflight = vec![(101, 9)];
        let now = 101 * G;
        let st = w.state(&shape(5), 1, now);
        assert_eq!(st.used, 18);
        assert_eq!(st.limit, 5);
        // 18 + 1 - 5 = 14 must leave: 9 at the end of sub-window 100 are not enough, the 9
        // of sub-window 101 leave at (101 + 65) × 938.
        assert_eq!(st.retry_after_ms(), 166 * G - now);
    }
}
