//! Sliding-window math: pure functions of (stored state, limit, now). No I/O, no locks.
//!
//! * [`sliding`]: the default representation. A window of length `W` keeps `B` sub-windows
//!   (64 by default) of `⌈W/B⌉` ms, each counter as wide as the limit needs, behind a head word
//!   that holds the current sub-window's count and the sum of the older ones, so a check is
//!   one compare-and-swap on one word. Never over the limit in any interval of length `W`;
//!   quota back at most `⌈W/B⌉ + B` ms late (`docs/ACCURACY.md` has both proofs).
//! * [`exact`]: a ring of the timestamps of admitted requests, exact both ways, for small
//!   limits (up to 64 per window).
//! * [`cell`]: the atomic-cell trait the protocols are written over (std's atomics in the
//!   store, loom's in the tests), and the exact ring's lock-bit protocol.
//!
//! Several windows are combined by the store (`engine/check.rs`): add to each in turn, take
//! back from the earlier ones if a later one refuses.

pub(crate) mod cell;
pub(crate) mod exact;
pub(crate) mod sliding;

/// Where one window's words are in an entry, in words: its head part (a sliding window's head
/// word and base word, or an exact window's meta word and ring) and its ring part (a sliding
/// window's counters; nothing for an exact window).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct At {
    pub head: usize,
    pub ring: usize,
}

impl At {
    /// The same places `by` words further on.
    #[inline]
    pub(crate) fn plus(self, by: usize) -> At {
        At {
            head: self.head + by,
            ring: self.ring + by,
        }
    }
}

/// The places of windows whose parts take `parts` words (head part, ring part) each, from the
/// first state word: every head part, in window order, then every ring part. So the head words
/// of a set of windows sit side by side right after the key, where a check reads them (for
/// ErzyCall's pair and a 32-byte key, both in the entry's first line), and the rings, read
/// only when a sub-window turns over or a refusal works out its wait, after them. Also the
/// number of state words in all. `N` is the most windows a set holds (windows past `parts` get
/// zero places).
pub(crate) fn places<const N: usize>(parts: &[(usize, usize)]) -> ([At; N], usize) {
    let mut at = [At::default(); N];
    let mut next = 0;
    for (place, &(head, _)) in at.iter_mut().zip(parts) {
        place.head = next;
        next += head;
    }
    for (place, &(_, ring)) in at.iter_mut().zip(parts) {
        place.ring = next;
        next += ring;
    }
    (at, next)
}

/// The bit that marks a window frozen: its entry is being moved or removed, and whoever sees
/// it looks the key up again. The rest of the word keeps its value, so a crash while frozen
/// loses nothing (the flag is cleared when the store is opened).
pub(crate) const FROZEN: u64 = 1 << 63;

/// The shape of a window's counters: `k` counters of `c` bits over sub-windows of `s` ms, and
/// the reciprocal that finds a time's sub-window without a division. Precomputed per limit.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Geometry {
    pub c: u32,
    pub k: u32,
    pub s: u64,
    /// `1 / s`, to find the sub-window of a time with a multiplication.
    inv: f64,
}

impl Geometry {
    /// The sub-windows of `s` ms (`s >= 1`), for counters of `c` bits, `k` of them.
    pub(crate) fn new(c: u32, k: u32, s: u64) -> Geometry {
        let s = s.max(1);
        Geometry {
            c,
            k,
            s,
            inv: 1.0 / s as f64,
        }
    }

    /// `t / s`, exactly, without a division: the float estimate is off by at most one for any
    /// `t < 2^53`, and the two comparisons correct it. The conversions go through `i64`, which
    /// x86-64 does in one instruction each way (`u64` takes a branchy sequence); a `t` of 2^53
    /// or more (285 000 years: a time only an explicit argument gives) is divided.
    #[inline]
    pub(crate) fn sub_window(&self, t: u64) -> u64 {
        if t >> 53 != 0 {
            return t / self.s;
        }
        let mut q = (t as i64 as f64 * self.inv) as i64 as u64;
        if q.saturating_mul(self.s) > t {
            q -= 1;
        } else if (q + 1).saturating_mul(self.s) <= t {
            q += 1;
        }
        q
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sub_window_without_division_is_exact() {
        let mut x = 0x9E37_79B9_7F4A_7C15u64;
        for s in [1u64, 3, 7, 63, 1000, 3750, 60_001, 5_400_000, 1_555_200_000] {
            let g = Geometry {
                c: 1,
                k: 2,
                s,
                inv: 1.0 / s as f64,
            };
            for t in [
                0u64,
                1,
                s - 1,
                s,
                s + 1,
                1_700_000_000_000,
                (1 << 53) - 1,
                1 << 53,
                (1 << 63) - 1,
                1 << 63,
                u64::MAX,
            ] {
                assert_eq!(g.sub_window(t), t / s, "t={t} s={s}");
            }
            for _ in 0..10_000 {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                let t = x >> 12;
                assert_eq!(g.sub_window(t), t / s, "t={t} s={s}");
            }
        }
    }
}
