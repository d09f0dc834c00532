//! What a hybrid node keeps per key and window: the fleet's counts as the server last
//! acknowledged them, the counts in a batch under way, and the counts admitted since (see
//! `hybrid.rs` for how a node decides with them). Counts are kept per absolute sub-window
//! number, the sub-windows of the bucketed representation.

use crate::decision::WindowState;

/// Counts per absolute sub-window number.
pub(crate) type Counts = Vec<(u64, u64)>;

pub(crate) fn add(v: &mut Counts, n: u64, c: u64) {
    match v.iter_mut().find(|(m, _)| *m == n) {
        Some((_, x)) => *x += c,
        None => v.push((n, c)),
    }
}

/// The counts still in the window in sub-window `nn` (K sub-windows, as bucketed windows count).
pub(crate) fn live(v: &Counts, nn: u64, k: u64) -> u64 {
    v.iter().filter(|(n, _)| n + k > nn).map(|(_, c)| c).sum()
}

/// One window of one key on this node.
#[derive(Debug, Clone)]
pub(crate) struct Win {
    pub(crate) window_ms: u64,
    pub(crate) k: u64,
    pub(crate) s: u64,
    pub(crate) remote: Counts,
    pub(crate) inflight: Counts,
    /// Batch number of `inflight` (0 = nothing in flight).
    pub(crate) seq: u64,
    pub(crate) pending: Counts,
    /// Checked since the last sync: refresh its fleet view even with nothing to send.
    pub(crate) dirty: bool,
}

impl Win {
    pub(crate) fn new(window_ms: u64, k: u64, s: u64) -> Win {
        Win {
            window_ms,
            k,
            s,
            remote: Vec::new(),
            inflight: Vec::new(),
            seq: 0,
            pending: Vec::new(),
            dirty: true,
        }
    }

    pub(crate) fn unsynced(&self, nn: u64) -> u64 {
        live(&self.inflight, nn, self.k) + live(&self.pending, nn, self.k)
    }

    pub(crate) fn fleet(&self, nn: u64) -> u64 {
        live(&self.remote, nn, self.k) + self.unsynced(nn)
    }

    /// The fleet view's state for a request of `cost` under `limit`, rounded as
    /// [`window::Norm`] rounds (a sub-window stops counting at `(n + K) × s`).
    pub(crate) fn state(&self, limit: u32, cost: u32, now_ms: u64) -> WindowState {
        let nn = now_ms / self.s;
        let mut all: Counts = Vec::with_capacity(self.k as usize);
        for (n, c) in self
            .remote
            .iter()
            .chain(&self.inflight)
            .chain(&self.pending)
        {
            if n + self.k > nn && *c > 0 {
                add(&mut all, *n, *c);
            }
        }
        all.sort_unstable();
        let used: u64 = all.iter().map(|(_, c)| c).sum();
        let drop_ms = |n: u64| (n + self.k).saturating_mul(self.s);
        let reset_ms = all.last().map_or(now_ms, |(n, _)| drop_ms(*n));
        let needed = (used + u64::from(cost)).saturating_sub(u64::from(limit));
        let retry_after_ms = if needed == 0 {
            0
        } else {
            let mut freed = 0;
            let mut at = reset_ms;
            for (n, c) in &all {
                freed += c;
                if freed >= needed {
                    at = drop_ms(*n);
                    break;
                }
            }
            at.saturating_sub(now_ms).max(1)
        };
        WindowState {
            limit,
            window_ms: self.window_ms,
            used: u32::try_from(used).unwrap_or(u32::MAX),
            reset_ms,
            retry_after_ms,
        }
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
    pub(crate) fn win(&mut self, window_ms: u64, k: u64, s: u64) -> &mut Win {
        let at = match self
            .wins
            .iter()
            .position(|w| w.window_ms == window_ms && w.s == s)
        {
            Some(i) => i,
            None => {
                self.wins.push(Win::new(window_ms, k, s));
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

    #[test]
    fn fleet_state_rounds_like_a_bucketed_window() {
        let mut w = Win::new(60_000, 17, 3750);
        w.remote = vec![(100, 4)];
        w.pending = vec![(101, 1)];
        let st = w.state(5, 1, 101 * 3750 + 10);
        assert_eq!(st.used, 5);
        assert_eq!(st.reset_ms, (101 + 17) * 3750);
        // One unit frees when sub-window 100 drops out.
        assert_eq!(st.retry_after_ms, (100 + 17) * 3750 - (101 * 3750 + 10));
        assert!(w.state(6, 1, 101 * 3750).fits());
    }
}
