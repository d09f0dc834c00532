//! Sliding-window math: pure functions of (stored state, limit, now). No I/O, no locks.
//!
//! # The bucketed representation (the default)
//!
//! A window of length `W` keeps `K` sub-window counters in one 64-bit word:
//!
//! ```text
//!  63 62          36 35  32 31                                 0
//! +--+--------------+------+------------------------------------+
//! |F | tag (27 bits)| c-1  | K counters of c bits, newest lowest |
//! +--+--------------+------+------------------------------------+
//! ```
//!
//! `c` is the width of one counter (enough bits for the limit), `K = min(kmax, 32 / c)` and the
//! sub-window length is `s = ceil(W / (K - 1))`. The tag is the number of the newest sub-window
//! (`time / s`) modulo 2^27; `F` marks a word frozen while its entry moves; counter `i` holds the requests of sub-window `tag - i`.
//!
//! At time `t`, in sub-window `n = t / s`, the window's count is the sum of the counters of
//! sub-windows `n - K + 1 ..= n`. They cover at least `(K - 1) * s >= W` before `t`, so every
//! interval of length `W` ending at `t` lies inside them: **the count never under-counts, so
//! the limit is never exceeded.** A request made in sub-window `m` stops counting at
//! `(m + K) * s`, at most `s` after the exact sliding log would release it: **quota comes back
//! at most one sub-window late.** Both bounds are checked by proptest against an exact log
//! (`tests/window_model.rs`) and stated in `docs/ACCURACY.md`.
//!
//! One word per window means one compare-and-swap admits or rejects atomically, with no
//! rollback: the CAS is the check. Several windows are combined by the store (add to each in
//! turn, undo the earlier ones if a later one refuses).
//!
//! # The exact representation
//!
//! See [`exact`]: a ring of the timestamps of admitted requests.

pub(crate) mod cell;
pub(crate) mod exact;
pub(crate) mod sliding;

/// The most counters a word can hold (c = 1).
pub(crate) const MAX_K: usize = 32;
/// The bit that marks a word frozen: its entry is being moved or removed, and whoever sees it
/// looks the key up again. The rest of the word keeps its value, so a crash while frozen loses
/// nothing (the flag is cleared when the store is opened).
pub(crate) const FROZEN: u64 = 1 << 63;

const TAG_SHIFT: u32 = 36;
const TAG_MASK: u64 = (1 << 27) - 1;
const HALF: u64 = 1 << 26;

/// Counter width needed to hold `limit`.
#[inline]
pub(crate) fn bits_for(limit: u32) -> u32 {
    (32 - limit.leading_zeros()).clamp(1, 16)
}

/// `(K, s)` for counters of `c` bits, a precision cap `kmax` and a window of `window_ms`.
#[inline]
pub(crate) fn layout(c: u32, kmax: u32, window_ms: u64) -> (u32, u64) {
    let k = (32 / c).min(kmax).max(2);
    let s = window_ms.div_ceil(u64::from(k - 1)).max(1);
    (k, s)
}

/// The shape of a window's counters for one counter width: `K` counters of `c` bits over
/// sub-windows of `s` ms. Precomputed per limit so that a check does not divide.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Geometry {
    pub c: u32,
    pub k: u32,
    pub s: u64,
    /// `1 / s`, to find the sub-window of a time with a multiplication.
    inv: f64,
}

impl Geometry {
    pub(crate) fn new(c: u32, kmax: u32, window_ms: u64) -> Geometry {
        let (k, s) = layout(c, kmax, window_ms);
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

/// A window word decoded relative to a point in time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Norm {
    /// Counter width in bits.
    pub c: u32,
    /// Number of counters.
    pub k: u32,
    /// Sub-window length in milliseconds.
    pub s: u64,
    /// Absolute number of the newest sub-window (age 0). Never older than `now / s`; newer when
    /// the clock went backwards since the last update.
    pub n: u64,
    /// The packed counters: field `i` (bits `i*c .. (i+1)*c`) counts sub-window `n - i`.
    pub counters: u64,
}

impl Norm {
    #[inline]
    fn mask(&self) -> u64 {
        (1u64 << self.c) - 1
    }

    /// The count of age `age`.
    #[inline]
    pub fn field(&self, age: u32) -> u32 {
        if age >= self.k {
            return 0;
        }
        ((self.counters >> (age * self.c)) & self.mask()) as u32
    }

    /// The requests counted in the window.
    #[inline]
    pub fn total(&self) -> u32 {
        let mask = self.mask();
        let mut x = self.counters;
        let mut sum = 0u64;
        while x != 0 {
            sum += x & mask;
            x >>= self.c;
        }
        sum as u32
    }

    /// Encode back into a word.
    #[inline]
    pub fn encode(&self) -> u64 {
        if self.counters == 0 {
            return 0;
        }
        ((self.n & TAG_MASK) << TAG_SHIFT)
            | (u64::from(self.c - 1) << 32)
            | (self.counters & 0xFFFF_FFFF)
    }

    /// UTC milliseconds at which sub-window `n - age` stops counting.
    #[inline]
    fn drop_ms(&self, age: u32) -> u64 {
        (self.n + u64::from(self.k))
            .saturating_sub(u64::from(age))
            .saturating_mul(self.s)
    }

    /// When the window is back to its full limit: the newest counted request drops out.
    #[inline]
    pub fn reset_ms(&self, now_ms: u64) -> u64 {
        if self.counters == 0 {
            return now_ms;
        }
        self.drop_ms(self.counters.trailing_zeros() / self.c)
    }

    /// Milliseconds until `cost` more fits under `limit` (0 if it fits now).
    pub fn retry_ms(&self, limit: u32, cost: u32, now_ms: u64) -> u64 {
        let total = self.total();
        let needed = (u64::from(total) + u64::from(cost)).saturating_sub(u64::from(limit));
        if needed == 0 {
            return 0;
        }
        let mut freed = 0u64;
        for a in (0..self.k).rev() {
            freed += u64::from(self.field(a));
            if freed >= needed {
                return self.drop_ms(a).saturating_sub(now_ms).max(1);
            }
        }
        // Unreachable when cost <= limit: dropping every counter frees `total`.
        self.drop_ms(0).saturating_sub(now_ms).max(1)
    }

    /// Try to add `cost`: `true` (and the counts updated) if the total stays within `limit`.
    #[inline]
    pub fn try_add(&mut self, limit: u32, cost: u32) -> bool {
        let after = u64::from(self.total()) + u64::from(cost);
        // The newest field can never overflow into the next: it is at most the total.
        if after > u64::from(limit) || after > self.mask() {
            return false;
        }
        self.counters += u64::from(cost);
        true
    }

    /// Remove `cost` added to absolute sub-window `m` of a layout with sub-window `s`. Returns
    /// `false` when there is nothing to undo (the layout changed, or `m` already expired): the
    /// count then stays over-counted or gone, both of which are safe.
    pub fn undo(&mut self, m: u64, s: u64, cost: u32) -> bool {
        if s != self.s || m > self.n {
            return false;
        }
        let age = self.n - m;
        if age >= u64::from(self.k) {
            return false;
        }
        let age = age as u32;
        let take = self.field(age).min(cost);
        self.counters -= u64::from(take) << (age * self.c);
        true
    }
}

/// Where a word's newest sub-window lies relative to now's, in sub-windows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Age {
    /// Now, or this many sub-windows before now.
    Behind(u64),
    /// This many sub-windows after now: the clock went backwards since the word was written.
    Ahead(u64),
}

/// Place a word's 27-bit `tag` relative to `n_now`, the sub-window of now.
///
/// The tag only gives the word's sub-window modulo 2^27, so "a sub-windows ahead" and
/// "2^27 - a behind" look alike. A word cannot have been written after `seen_ms`, the newest
/// time the store has seen (kept in the file header, so it survives a restart): a reading
/// ahead of now is taken only if it lands at or before `seen_ms` (and at most half the tag
/// range ahead). Everything else is behind. So a key left alone for weeks reads as aged out
/// (for a 1 s window, 2^26 sub-windows are only 24 to 49 days), while a clock that stepped
/// back keeps the counts written before the step.
#[inline]
fn age(tag: u64, n_now: u64, geo: &Geometry, seen_ms: u64) -> Age {
    let ahead = tag.wrapping_sub(n_now) & TAG_MASK;
    if ahead != 0 && ahead <= HALF {
        let lead = geo.sub_window(seen_ms).saturating_sub(n_now);
        if ahead <= lead {
            return Age::Ahead(ahead);
        }
    }
    Age::Behind(n_now.wrapping_sub(tag) & TAG_MASK)
}

/// Decode `word` for a window of `window_ms` checked against `limit` at `now_ms`, with at most
/// `kmax` counters; `seen_ms` is the newest time the store has seen (at least `now_ms`), which
/// tells a word written before a clock step back from a word left alone for a long time.
/// Widens the counters (merging old sub-windows forward, which only delays their release) when
/// `limit` needs more bits than the word has.
pub(crate) fn normalize(
    word: u64,
    window_ms: u64,
    limit: u32,
    kmax: u32,
    now_ms: u64,
    seen_ms: u64,
) -> Norm {
    let geo = Geometry::new(bits_for(limit), kmax, window_ms);
    normalize_with(word, &geo, window_ms, kmax, now_ms, seen_ms)
}

/// [`normalize`] with the geometry of the limit's own counter width (`need`) given.
#[inline]
pub(crate) fn normalize_with(
    word: u64,
    need: &Geometry,
    window_ms: u64,
    kmax: u32,
    now_ms: u64,
    seen_ms: u64,
) -> Norm {
    decode(word, need, window_ms, kmax, now_ms, seen_ms, true)
}

/// [`normalize_with`]; `shortcut` takes the short way for a word of now's sub-window (the
/// tests compare it with the long way).
#[inline]
fn decode(
    word: u64,
    need: &Geometry,
    window_ms: u64,
    kmax: u32,
    now_ms: u64,
    seen_ms: u64,
    shortcut: bool,
) -> Norm {
    let counters = word & 0xFFFF_FFFF;
    if counters == 0 {
        return Norm {
            c: need.c,
            k: need.k,
            s: need.s,
            n: need.sub_window(now_ms),
            counters: 0,
        };
    }
    let c = ((word >> 32) & 0xF) as u32 + 1;
    let other;
    let geo = if c == need.c {
        need
    } else {
        other = Geometry::new(c, kmax, window_ms);
        &other
    };
    let (k, s) = (geo.k, geo.s);
    let tag = (word >> TAG_SHIFT) & TAG_MASK;
    let n_now = geo.sub_window(now_ms);
    let width = k * c;
    let live = if width >= 64 {
        u64::MAX
    } else {
        (1u64 << width) - 1
    };
    if shortcut && tag == n_now & TAG_MASK && c == need.c {
        // Written in now's sub-window, at the width the limit needs (a busy key's usual
        // case): nothing ages and nothing widens.
        return Norm {
            c,
            k,
            s,
            n: n_now,
            counters: counters & live,
        };
    }
    let (n, counters) = match age(tag, n_now, geo, seen_ms) {
        Age::Behind(d) => {
            // The word is `d` sub-windows behind now: every counter ages by `d`.
            let aged = if d >= u64::from(k) {
                0
            } else {
                (counters << (d as u32 * c)) & live
            };
            (n_now, aged)
        }
        // The word is ahead of `now`: the clock went backwards. Keep the word's own time.
        Age::Ahead(a) => (n_now + a, counters & live),
    };
    let norm = Norm {
        c,
        k,
        s,
        n,
        counters,
    };
    if c < need.c {
        widen(&norm, need.c, kmax, window_ms, now_ms)
    } else {
        norm
    }
}

/// Re-express `old` with counters of `c` bits. Each old sub-window is moved to the new
/// sub-window that holds its last millisecond: never earlier, so nothing is released early.
fn widen(old: &Norm, c: u32, kmax: u32, window_ms: u64, now_ms: u64) -> Norm {
    let (k, s) = layout(c, kmax, window_ms);
    let newest_end = (old.n + 1).saturating_mul(old.s) - 1;
    let n = (now_ms / s).max(newest_end / s);
    let mut fields = [0u64; MAX_K];
    for age in 0..old.k {
        let v = old.field(age);
        if v == 0 {
            continue;
        }
        let m = old.n.saturating_sub(u64::from(age));
        let end = (m + 1).saturating_mul(old.s) - 1;
        let new_age = n.saturating_sub(end / s);
        if let Some(f) = fields
            .get_mut(new_age as usize)
            .filter(|_| new_age < u64::from(k))
        {
            *f += u64::from(v);
        }
    }
    let max = (1u64 << c) - 1;
    let counters = fields
        .iter()
        .take(k as usize)
        .enumerate()
        .fold(0u64, |acc, (i, &v)| acc | (v.min(max) << (i as u32 * c)));
    Norm {
        c,
        k,
        s,
        n,
        counters,
    }
}

/// Whether every count of `word` has aged out at `now_ms` (an empty word is expired). A word
/// ahead of `now` (the clock went back; see [`normalize`] for `seen_ms`) is not.
pub(crate) fn word_expired(
    word: u64,
    window_ms: u64,
    kmax: u32,
    now_ms: u64,
    seen_ms: u64,
) -> bool {
    let word = word & !FROZEN;
    if word & 0xFFFF_FFFF == 0 {
        return true;
    }
    let c = ((word >> 32) & 0xF) as u32 + 1;
    let g = Geometry::new(c, kmax, window_ms);
    let tag = (word >> TAG_SHIFT) & TAG_MASK;
    match age(tag, g.sub_window(now_ms), &g, seen_ms) {
        Age::Behind(d) => d >= u64::from(g.k),
        Age::Ahead(_) => false,
    }
}

/// The count a stored word holds at `now_ms`, read with its own counter width (no limit needed:
/// for inspection tools).
pub(crate) fn word_count(word: u64, window_ms: u64, kmax: u32, now_ms: u64, seen_ms: u64) -> u32 {
    let word = word & !FROZEN;
    let c = ((word >> 32) & 0xF) as u32 + 1;
    let g = Geometry::new(c, kmax, window_ms);
    normalize_with(word, &g, window_ms, kmax, now_ms, seen_ms).total()
}

/// Whether a stored word is structurally valid for a store with `kmax` counters at most (used
/// when opening a file).
pub(crate) fn word_is_valid(word: u64, kmax: u32) -> bool {
    if word & FROZEN != 0 {
        return false;
    }
    let counters = word & 0xFFFF_FFFF;
    if counters == 0 {
        return true;
    }
    let c = ((word >> 32) & 0xF) as u32 + 1;
    let (k, _) = layout(c, kmax, 1000);
    // Bits above K counters must be clear.
    let used = k * c;
    used >= 32 || counters >> used == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: u64 = 60_000;

    fn fresh(limit: u32, now: u64) -> Norm {
        normalize(0, MIN, limit, 17, now, now)
    }

    #[test]
    fn counts_up_to_the_limit_then_refuses() {
        let now = 1_700_000_000_000;
        let mut word = 0;
        for i in 0..60 {
            let mut n = normalize(word, MIN, 60, 17, now + i, now + i);
            assert!(n.try_add(60, 1), "request {i}");
            word = n.encode();
        }
        let mut n = normalize(word, MIN, 60, 17, now + 100, now + 100);
        assert_eq!(n.total(), 60);
        assert!(!n.try_add(60, 1));
    }

    #[test]
    fn releases_at_most_one_sub_window_late() {
        let now = 1_700_000_000_000;
        let mut n = fresh(60, now);
        assert!(n.try_add(60, 60));
        let word = n.encode();
        let s = n.s;
        // Still counted just before W + s after the sub-window's start.
        let start = (now / s) * s;
        let late = normalize(word, MIN, 60, 17, start + MIN + s - 1, start + MIN + s - 1);
        assert_eq!(late.total(), 60);
        let back = normalize(word, MIN, 60, 17, start + MIN + s, start + MIN + s);
        assert_eq!(back.total(), 0);
        assert_eq!(n.reset_ms(now), start + MIN + s);
    }

    #[test]
    fn clock_going_backwards_keeps_the_counts() {
        let now = 1_700_000_000_000;
        let mut n = fresh(10, now);
        assert!(n.try_add(10, 10));
        let word = n.encode();
        for back in [1, 1_000, 60_000, 3_600_000, 86_400_000] {
            let v = normalize(word, MIN, 10, 17, now - back, now);
            assert_eq!(v.total(), 10, "clock moved back by {back} ms");
        }
    }

    #[test]
    fn widening_keeps_every_count() {
        let now = 1_700_000_000_000;
        let mut n = fresh(3, now);
        assert!(n.try_add(3, 3));
        let word = n.encode();
        let wide = normalize(word, MIN, 60_000, 17, now + 1, now + 1);
        assert_eq!(wide.c, 16);
        assert_eq!(wide.total(), 3);
        assert!(wide.reset_ms(now) >= n.reset_ms(now));
    }

    #[test]
    fn undo_removes_only_what_was_added() {
        let now = 1_700_000_000_000;
        let mut n = fresh(60, now);
        assert!(n.try_add(60, 5));
        let (m, s) = (n.n, n.s);
        assert_eq!(n.field(0), 5);
        let mut later = normalize(n.encode(), MIN, 60, 17, now + s, now + s);
        assert!(later.try_add(60, 2));
        assert!(later.undo(m, s, 5));
        assert_eq!(later.total(), 2);
        assert!(!later.undo(m + 100, s, 1));
    }

    #[test]
    fn the_short_way_for_a_word_of_now_decodes_like_the_long_way() {
        let mut x = 0x2545_F491_4F6C_DD1Du64;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let mut short = 0;
        for _ in 0..200_000 {
            let limit = (next() % 65_535) as u32 + 1;
            let window_ms = [1_000u64, 60_000, 3_600_000, 86_400_000][(next() % 4) as usize];
            let kmax = [3u32, 9, 17, 32][(next() % 4) as usize];
            let need = Geometry::new(bits_for(limit), kmax, window_ms);
            let written = 1_700_000_000_000 + next() % 10_000_000;
            // Now: often in the sub-window the word was written in, sometimes later or earlier.
            let now = match next() % 4 {
                0 => written + next() % window_ms,
                1 => written.saturating_sub(next() % window_ms),
                _ => written,
            };
            // A word as a store writes it: the limit's width, or any other (a limit that
            // changed); any counters.
            let c = match next() % 2 {
                0 => need.c,
                _ => (next() % 16) as u32 + 1,
            };
            let g = Geometry::new(c, kmax, window_ms);
            let tag = g.sub_window(written) & TAG_MASK;
            let word = (tag << TAG_SHIFT) | (u64::from(c - 1) << 32) | (next() & 0xFFFF_FFFF);
            let seen = now.max(written) + next() % 2_048;
            if tag == g.sub_window(now) & TAG_MASK && c == need.c && word & 0xFFFF_FFFF != 0 {
                short += 1;
            }
            assert_eq!(
                decode(word, &need, window_ms, kmax, now, seen, true),
                decode(word, &need, window_ms, kmax, now, seen, false),
                "word {word:#x} limit {limit} window {window_ms} kmax {kmax} now {now}"
            );
        }
        // The short way was taken often enough to mean something.
        assert!(short > 40_000, "short way taken {short} times");
    }

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

    #[test]
    fn words_expire_when_every_count_aged_out() {
        let now = 1_700_000_000_000;
        let mut n = fresh(60, now);
        assert!(n.try_add(60, 3));
        let w = n.encode();
        assert!(!word_expired(w, MIN, 17, now, now));
        let reset = n.reset_ms(now);
        assert!(!word_expired(w, MIN, 17, reset - 1, reset - 1));
        assert!(word_expired(w, MIN, 17, reset, reset));
        assert!(
            !word_expired(w, MIN, 17, now - 3_600_000, now),
            "clock went back"
        );
        assert!(word_expired(0, MIN, 17, now, now));
    }

    #[test]
    fn a_word_left_alone_past_half_the_tag_range_reads_as_aged() {
        // A 1 s window with 17 counters has 63 ms sub-windows: 2^26 of them are 48.9 days.
        const SEC: u64 = 1_000;
        const DAY: u64 = 86_400_000;
        let t0 = 1_700_000_000_000;
        let mut n = normalize(0, SEC, 1, 17, t0, t0);
        assert_eq!(n.s, 63);
        assert!(n.try_add(1, 1));
        let w = n.encode();
        for days in [1, 30, 48, 49, 60, 90, 97] {
            let t = t0 + days * DAY;
            assert_eq!(
                normalize(w, SEC, 1, 17, t, t).total(),
                0,
                "{days} days later"
            );
            assert!(word_expired(w, SEC, 17, t, t), "{days} days later");
        }
        // The same word read after the clock stepped back keeps its count, as long as the
        // store saw the time it was written.
        for back in [SEC, 3_600_000, 30 * DAY] {
            assert_eq!(normalize(w, SEC, 1, 17, t0 - back, t0).total(), 1);
            assert!(!word_expired(w, SEC, 17, t0 - back, t0));
        }
        // A reading ahead of the newest time seen is impossible: the word is old instead.
        assert_eq!(normalize(w, SEC, 1, 17, t0 - DAY, t0 - DAY).total(), 0);
    }

    #[test]
    fn frozen_is_not_a_valid_word() {
        assert!(!word_is_valid(FROZEN, 17));
        assert!(!word_is_valid(u64::MAX, 17));
        assert!(word_is_valid(0, 17));
        let mut n = fresh(1000, 5_000_000);
        assert!(n.try_add(1000, 999));
        assert!(word_is_valid(n.encode(), 17));
        // Counter bits past K fields are refused.
        assert!(!word_is_valid(n.encode() | (1 << 31), 17));
    }
}
