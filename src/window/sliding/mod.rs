//! The sliding window of `B` sub-windows (issue 15): the default representation of a window.
//!
//! # Why it exists
//!
//! The bucketed word of [`super`] packs all of a window's counters in one 64-bit word, so a
//! large limit gets two or three wide sub-windows and quota comes back up to a whole window
//! late (the ErzyCall client, 60/min and 1000/h, gets 540 of the 1 020 requests an exact log
//! admits). This module keeps `B` (default 64, any of 16..=256) sub-windows of `g = ⌈W/B⌉` ms,
//! each counter exactly as wide as the limit needs, bit-packed across several words, so quota
//! comes back at most `g + B - 1` ms late for every limit. The word protocols are
//! [`proto`]'s (the functions the store runs and loom checks), the packed ring's reads
//! `ring.rs`'s; the store places a window's words in its entry (`engine/entry.rs`), its head
//! and base words with the other windows' heads and its ring after them
//! ([`super::places`]).
//!
//! # The words of one window
//!
//! ```text
//! head   63  62  61 ........... 2c   2c-1 ...... c   c-1 ....... 0
//!       +---+---+----------------+----------------+---------------+
//!       | F | L | tag (62-2c)    | older (c bits) | cur (c bits)  |
//!       +---+---+----------------+----------------+---------------+
//! base   the full sub-window number n (only in the "wide" layout, see below)
//! ring   B counters of c bits, counter i at bits i*c .. (i+1)*c of the ring words taken as
//!        one little-endian bit string (a counter may straddle two words)
//! ```
//!
//! * `c = ⌈log2(limit + 1)⌉` (1 to 24 bits; limits 1 to [`MAX_LIMIT`]).
//! * `n` is the head's sub-window number (`⌊t / g⌋` of the newest counted time); `cur` counts
//!   sub-window `n`; ring counter `m mod B` counts sub-window `m` for `m` in `n-B ..= n-1`;
//!   `older` is the sum of the `B` ring counters (so a check reads only the head).
//! * `F` is [`FROZEN`] (the entry is moving or being unlinked; same contract as the bucketed
//!   word); `L` is [`LOCK`], held only while the ring is rewritten (see [`proto`]).
//! * **Packed** layout: when every sub-window number up to year 9999 fits in `62 - 2c` bits,
//!   the tag *is* `n` and there is no base word. **Wide** layout otherwise (large limits on
//!   short windows, e.g. 1 000 000 per second): the tag holds the low `62 - 2c` bits of `n`
//!   and a base word holds all of `n`. Either way the full sub-window number is known exactly:
//!   there is no wrap-around to disambiguate and no guess from an idle gap.
//!
//! Words per window: `1 + wide + ⌈B·c/64⌉`. At B = 64: limit 1 → 2 words, 60 → 7, 1 000 → 11
//! (12 for a 1 s window, which is wide), 1 000 000 → 22 (always wide). See [`Slide::words`].
//!
//! # The counting rule and its two bounds
//!
//! A request is judged at the effective sub-window `ne = max(⌊now/g⌋, n)` (a clock behind the
//! head counts in the head's sub-window: later release, never earlier) against the counts of
//! sub-windows `ne-B ..= ne`. Those cover every time after `ne·g - B·g ≤ now - W`, so every
//! earlier admission less than `W` before is counted: **never over the limit**. A request
//! counted in sub-window `m` (made at `t ≥ m·g`) stops counting at `(m+B+1)·g ≤ t + W +
//! ((B+1)·g - W)`, and `(B+1)·g - W ≤ g + B - 1`: **quota comes back at most `⌈W/B⌉ + B - 1`
//! ms late**. `docs/ACCURACY.md` has the proofs; `tests.rs` and `model.rs` check them.

mod proto;
mod ring;

use ring::Counts;

#[cfg(test)]
mod loom_tests;
#[cfg(test)]
mod model;
#[cfg(test)]
mod tests;

// The store's entry points (and what recovery reports, which only the tests look at).
#[cfg(test)]
use proto::Recovered;
pub(crate) use proto::{
    add, freeze, freeze_if_expired, head_summary, recover, snapshot, snapshot_into, take_back,
    thaw, Added, Window,
};

use super::{Geometry, FROZEN};
use crate::decision::Ms32;

/// Head word: held by whoever rewrites the ring (rotation, a take-back from an older
/// sub-window, recovery). Never held across anything that can block.
pub(crate) const LOCK: u64 = 1 << 62;
/// The fewest sub-windows a window may have.
pub(crate) const MIN_B: u32 = 16;
/// The most sub-windows a window may have.
pub(crate) const MAX_B: u32 = 256;
/// The default number of sub-windows.
pub(crate) const DEFAULT_B: u32 = 64;
/// The largest limit (24-bit counters).
pub(crate) const MAX_LIMIT: u32 = (1 << MAX_C) - 1;
/// The shortest window.
pub(crate) const MIN_WINDOW_MS: u64 = 1_000;
/// The longest window.
pub(crate) const MAX_WINDOW_MS: u64 = 180 * 86_400_000;
/// 9999-12-31T23:59:59.999Z: later times are read as this one (the clock stands still, which
/// is the safe reading of a clock that is wrong).
pub(crate) const MAX_TIME_MS: u64 = 253_402_300_799_999;
const MAX_C: u32 = 24;
/// The widest counter, in bits.
pub(crate) const MAX_BITS: u32 = MAX_C;

/// The counter width a limit needs (1 to [`MAX_BITS`] bits for limits 1 to [`MAX_LIMIT`]).
pub(crate) fn counter_bits(limit: u32) -> u32 {
    (32 - limit.leading_zeros()).clamp(1, MAX_C)
}
/// The most ring words a window can have (`B = 256`, 24-bit counters).
pub(crate) const MAX_RING_WORDS: usize = (MAX_B * MAX_C / 64) as usize;
/// Ring words of the small copies a rotation makes when the window's ring fits: 64
/// sub-windows of counters up to 16 bits (limits up to 65 535 at the default `B`).
pub(crate) const SMALL_RING_WORDS: usize = 16;

/// The shape of one sliding window, precomputed per (limit, window, B) so that a check does
/// not divide: the sub-window of a time comes from [`Geometry::sub_window`]'s reciprocal
/// multiply. That is exact here: times are clamped to [`MAX_TIME_MS`] `< 2^48`, so `t` is
/// exact as an `f64`; `1/g` and the product are each rounded once (relative error below
/// `2^-53` each), so the estimate is within `(t/g)·2^-52 < 1` of `t/g` (`g >= 4`), its
/// truncation is off by at most one, and the two comparisons of `sub_window` correct that
/// (checked at random and boundary times for random `g` in `tests.rs`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Slide {
    /// The limit.
    pub limit: u32,
    /// The window's length in ms.
    pub window_ms: u64,
    /// The same, as a [`crate::decision::WindowState`] keeps it.
    pub window: Ms32,
    /// Number of sub-windows `B` (the ring's length).
    pub b: u32,
    /// Sub-window length `⌈W/B⌉` ms.
    pub g: u64,
    /// Counter width in bits.
    pub c: u32,
    tag_bits: u32,
    /// `2^c - 1` and `2^tag_bits - 1`, kept rather than shifted out on every check.
    field_mask: u64,
    tag_mask: u64,
    wide: bool,
    ring_words: usize,
    geo: Geometry,
}

impl Slide {
    /// The shape for `limit` per `window_ms` with `b` sub-windows; `None` when a value is out
    /// of range (limit 1..=[`MAX_LIMIT`], window [`MIN_WINDOW_MS`]..=[`MAX_WINDOW_MS`], `b`
    /// [`MIN_B`]..=[`MAX_B`]).
    pub(crate) fn new(limit: u32, window_ms: u64, b: u32) -> Option<Slide> {
        if !(1..=MAX_LIMIT).contains(&limit)
            || !(MIN_WINDOW_MS..=MAX_WINDOW_MS).contains(&window_ms)
            || !(MIN_B..=MAX_B).contains(&b)
        {
            return None;
        }
        let g = window_ms.div_ceil(u64::from(b));
        let c = 32 - limit.leading_zeros();
        let tag_bits = 62 - 2 * c;
        let wide = (MAX_TIME_MS / g) >> tag_bits != 0;
        Some(Slide {
            limit,
            window_ms,
            window: Ms32::up(window_ms),
            b,
            g,
            c,
            tag_bits,
            field_mask: (1u64 << c) - 1,
            tag_mask: (1u64 << tag_bits) - 1,
            wide,
            ring_words: (b * c).div_ceil(64) as usize,
            geo: Geometry::new(c, b, g),
        })
    }

    /// The shape of a window whose counters are `c` bits wide (as an entry's descriptor
    /// records it): the shape of the largest limit of that width, which has the same words.
    pub(crate) fn for_width(c: u32, window_ms: u64, b: u32) -> Option<Slide> {
        if !(1..=MAX_C).contains(&c) {
            return None;
        }
        Slide::new(((1u64 << c) - 1) as u32, window_ms, b)
    }

    /// The same shape judged against `limit`, which must need no more than its counter width
    /// (`None` otherwise).
    pub(crate) fn with_limit(&self, limit: u32) -> Option<Slide> {
        (limit >= 1 && counter_bits(limit) <= self.c).then_some(Slide { limit, ..*self })
    }

    /// Words the window takes in all: the head, the base word if the layout is wide, and the
    /// ring (an entry keeps the head part and the ring apart: `window::places`).
    #[cfg(test)]
    pub(crate) fn words(&self) -> usize {
        1 + usize::from(self.wide) + self.ring_words
    }

    /// Words of the head part: the head, and the base word of the wide layout.
    pub(crate) fn head_words(&self) -> usize {
        1 + usize::from(self.wide)
    }

    /// Whether the layout has a base word (word 1) holding the full sub-window number.
    pub(crate) fn wide(&self) -> bool {
        self.wide
    }

    /// Words of the ring.
    pub(crate) fn ring_words(&self) -> usize {
        self.ring_words
    }

    /// How late quota can come back compared with an exact log: `(B+1)·g - W`, at most
    /// `⌈W/B⌉ + B - 1` ms.
    pub(crate) fn release_delay_ms(&self) -> u64 {
        (u64::from(self.b) + 1) * self.g - self.window_ms
    }

    /// The sub-window of `now_ms` (times after [`MAX_TIME_MS`] read as it).
    #[inline]
    pub(crate) fn sub_window(&self, now_ms: u64) -> u64 {
        self.geo.sub_window(now_ms.min(MAX_TIME_MS))
    }

    #[inline]
    fn field_mask(&self) -> u64 {
        self.field_mask
    }

    #[inline]
    fn tag_mask(&self) -> u64 {
        self.tag_mask
    }

    /// `(cur, older)` of a head word.
    #[inline]
    pub(crate) fn fields(&self, head: u64) -> (u64, u64) {
        (
            head & self.field_mask(),
            (head >> self.c) & self.field_mask(),
        )
    }

    /// The head's full sub-window number, from its tag and (wide layout) the base word. A
    /// base that disagrees with the tag (a rotation half done, or a damaged file) gives the
    /// newest number at or before the base with the tag's low bits: never older than the
    /// head's real number when the base was written first or not at all (see `proto`).
    #[inline]
    pub(crate) fn head_n(&self, head: u64, base: u64) -> u64 {
        let tag = (head >> (2 * self.c)) & self.tag_mask();
        if !self.wide {
            return tag;
        }
        let back = base.wrapping_sub(tag) & self.tag_mask();
        base.saturating_sub(back)
    }

    /// Encode a head word (no lock, not frozen).
    #[inline]
    pub(crate) fn encode(&self, n: u64, cur: u64, older: u64) -> u64 {
        let m = self.field_mask();
        ((n & self.tag_mask()) << (2 * self.c)) | ((older & m) << self.c) | (cur & m)
    }
}

/// A window's figures for a decision, from [`Snap::summary`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Summary {
    /// The count at the time asked.
    pub used: u64,
    /// When the window is back to its full limit.
    pub reset_ms: u64,
    /// The wait until the request fits (0 if it fits now).
    pub retry_ms: u64,
}

/// A consistent copy of a window's words (see [`snapshot`]), decoded. `N` ring words are held
/// (the first [`Slide::ring_words`] are used): [`MAX_RING_WORDS`] by default, fewer where the
/// caller knows the window's ring is smaller (a rotation, [`SMALL_RING_WORDS`]), so that a copy
/// made fresh is not 800 bytes to zero.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Snap<const N: usize = MAX_RING_WORDS> {
    /// The head word as read, flags included.
    pub raw: u64,
    /// The base word as read (0 in the packed layout).
    pub base: u64,
    /// The head's full sub-window number.
    pub n: u64,
    /// Count of sub-window `n`.
    pub cur: u64,
    /// Sum of the ring counters (sub-windows `n-B ..= n-1`).
    pub older: u64,
    /// The ring words (the first [`Slide::ring_words`] are used).
    pub ring: [u64; N],
}

impl<const N: usize> Snap<N> {
    /// An empty window's copy (all zero), to fill with [`snapshot_into`].
    pub(crate) const EMPTY: Snap<N> = Snap {
        raw: 0,
        base: 0,
        n: 0,
        cur: 0,
        older: 0,
        ring: [0; N],
    };

    /// Decode a head, base and ring (tests build copies with it).
    #[cfg(test)]
    pub(crate) fn decode(geo: &Slide, raw: u64, base: u64, ring: [u64; N]) -> Snap<N> {
        let (cur, older) = geo.fields(raw);
        Snap {
            raw,
            base,
            n: geo.head_n(raw, base),
            cur,
            older,
            ring,
        }
    }

    /// Whether the copy is one the protocols can leave behind (for a store opening a file, and
    /// the tests): not locked, `cur` and every ring counter at most the limit, `older` the sum
    /// of the ring (capped at the field's maximum, as [`recover`] leaves it), no bit set past
    /// the last ring counter, and in the wide layout a base word that agrees with the tag.
    pub(crate) fn is_consistent(&self, geo: &Slide) -> bool {
        let limit = u64::from(geo.limit);
        let ring = self.ring.get(..geo.ring_words).unwrap_or(&[]);
        let (sum, max) = geo.ring_sum_max(ring);
        let used_bits = (geo.b * geo.c) as usize;
        let tail_clear = match ring.last() {
            Some(&last) if !used_bits.is_multiple_of(64) => last >> (used_bits % 64) == 0,
            _ => true,
        };
        self.raw & LOCK == 0
            && self.cur <= limit
            && max <= limit
            && self.older == sum.min(geo.field_mask())
            && tail_clear
            && (!geo.wide
                || self.base & geo.tag_mask() == (self.raw >> (2 * geo.c)) & geo.tag_mask())
    }

    /// Whether the head is frozen.
    pub(crate) fn frozen(&self) -> bool {
        self.raw & FROZEN != 0
    }

    /// The effective sub-window at `now_ms`: now's, or the head's if the clock is behind it.
    #[inline]
    pub(crate) fn eff(&self, geo: &Slide, now_ms: u64) -> u64 {
        geo.sub_window(now_ms).max(self.n)
    }

    /// The count held for absolute sub-window `m`.
    #[inline]
    pub(crate) fn count(&self, geo: &Slide, m: u64) -> u64 {
        if m == self.n {
            self.cur
        } else if m < self.n && self.n - m <= u64::from(geo.b) {
            geo.slot(&self.ring, (m % u64::from(geo.b)) as u32)
        } else {
            0
        }
    }

    /// The non-zero counts of sub-windows `lo ..= hi`, oldest first, as `(m, count)`. The
    /// walk never looks at a zero counter one by one: it finds the next set bit of the packed
    /// ring (a shift and a trailing-zero count per word) and divides once to know whose
    /// counter it is. A check at the limit walks up to `B + 1` sub-windows, most of them
    /// empty on a bursty key, so this is the rejection path's cost.
    #[inline]
    fn counts<'s>(&'s self, geo: &'s Slide, lo: u64, hi: u64) -> Counts<'s, N> {
        Counts {
            snap: self,
            geo,
            m: lo,
            idx: (lo % u64::from(geo.b)) as u32,
            hi,
        }
    }

    /// The window's count at effective sub-window `ne >= n`: sub-windows `ne-B ..= ne`. In
    /// the head's sub-window that is the head's own sum; later, the head's sum less the
    /// sub-windows that aged out since (at most `ne - n` of them).
    pub(crate) fn total_at(&self, geo: &Slide, ne: u64) -> u64 {
        if ne <= self.n {
            return self.cur + self.older;
        }
        let b = u64::from(geo.b);
        if ne - self.n > b {
            // Even the head's own sub-window has aged out.
            return 0;
        }
        if self.older == 0 {
            // An empty ring (a burst within one sub-window): nothing older to age out.
            return self.cur;
        }
        if self.older >= geo.field_mask() {
            // `older` may be capped at the field's maximum (a recovered or narrowed window):
            // sum what still counts instead of subtracting from it.
            return self
                .counts(geo, (ne - b).max(self.n.saturating_sub(b)), self.n)
                .map(|(_, c)| c)
                .sum();
        }
        // Aged out: sub-windows `n - B ..= ne - B - 1` (those that exist).
        let first = self.n.saturating_sub(b);
        let aged: u64 = match (ne - b).checked_sub(1) {
            // A few sub-windows on (the common case: the next one): read their counters.
            Some(last) if last >= first && self.n >= b && last - first < 4 => (first..=last)
                .map(|m| geo.slot(self.ring.as_slice(), (m % b) as u32))
                .sum(),
            Some(last) if last >= first && self.n >= b => {
                self.counts(geo, first, last).map(|(_, c)| c).sum()
            }
            _ => 0,
        };
        (self.cur + self.older).saturating_sub(aged)
    }

    /// The count at `now_ms`.
    pub(crate) fn used(&self, geo: &Slide, now_ms: u64) -> u64 {
        self.total_at(geo, self.eff(geo, now_ms))
    }

    /// Whether the count is 0 now and so in any future (the compactor may unlink it).
    pub(crate) fn expired(&self, geo: &Slide, now_ms: u64) -> bool {
        self.used(geo, now_ms) == 0
    }

    /// Milliseconds from `now_ms` until a request of `cost` fits if nothing else is counted
    /// meanwhile (0 if it fits now; at least 1 otherwise). Walks the live sub-windows from the
    /// oldest. Never earlier than an exact log over the same admissions, and at most
    /// [`Slide::release_delay_ms`] later. A cost above the limit never fits: the answer is
    /// then the time the window is empty.
    #[cfg(test)]
    pub(crate) fn retry_ms(&self, geo: &Slide, cost: u32, now_ms: u64) -> u64 {
        let ne = self.eff(geo, now_ms);
        self.retry_from(geo, self.total_at(geo, ne), cost, ne, now_ms)
    }

    /// [`Snap::retry_ms`] with the count at `ne` already known.
    fn retry_from(&self, geo: &Slide, total: u64, cost: u32, ne: u64, now_ms: u64) -> u64 {
        let needed = (total + u64::from(cost)).saturating_sub(u64::from(geo.limit));
        if needed == 0 {
            return 0;
        }
        let lo = ne.saturating_sub(u64::from(geo.b));
        let mut freed = 0;
        for (m, c) in self.counts(geo, lo, ne.min(self.n)) {
            freed += c;
            if freed >= needed {
                return Snap::drop_ms(geo, m).saturating_sub(now_ms).max(1);
            }
        }
        Snap::drop_ms(geo, ne).saturating_sub(now_ms).max(1)
    }

    /// UTC ms at which the window is back to its full limit (its newest counted request drops
    /// out); `now_ms` if it is empty.
    pub(crate) fn reset_ms(&self, geo: &Slide, now_ms: u64) -> u64 {
        let ne = self.eff(geo, now_ms);
        let lo = ne.saturating_sub(u64::from(geo.b));
        if self.cur != 0 && self.n >= lo {
            // The head's own sub-window is the newest that counts.
            return Snap::drop_ms(geo, self.n);
        }
        self.counts(geo, lo, ne)
            .last()
            .map_or(now_ms, |(m, _)| Snap::drop_ms(geo, m))
    }

    /// What a decision reports of this window for a request of `cost` at `now_ms`: the count
    /// ([`Snap::used`]), when it is back to its full limit ([`Snap::reset_ms`]) and the wait
    /// for the request to fit ([`Snap::retry_ms`]), the count worked out once for both.
    pub(crate) fn summary(&self, geo: &Slide, cost: u32, now_ms: u64) -> Summary {
        let ne = self.eff(geo, now_ms);
        if self.older == 0 {
            return Snap::empty_ring_summary(geo, self.n, self.cur, cost, ne, now_ms);
        }
        self.summary_from(geo, self.total_at(geo, ne), cost, ne, now_ms)
    }

    /// [`Snap::summary`] with the effective sub-window `ne` (of `now_ms`) and the count there
    /// (`used`, [`Snap::total_at`]) already known, as a refusal judged on this copy knows them.
    pub(crate) fn summary_from(
        &self,
        geo: &Slide,
        used: u64,
        cost: u32,
        ne: u64,
        now_ms: u64,
    ) -> Summary {
        Summary {
            used,
            reset_ms: self.reset_ms(geo, now_ms),
            retry_ms: self.retry_from(geo, used, cost, ne, now_ms),
        }
    }

    /// The same counts in the words of `to`, a window of the same length and `B` with another
    /// counter width (its limit changed): head (unlocked, not frozen), base, ring, in entry
    /// order; counts wider than `to`'s counters are cut to its maximum (still at least its
    /// limit, so nothing is released early). `None` if the shapes differ otherwise.
    pub(crate) fn reshape(&self, from: &Slide, to: &Slide) -> Option<[u64; 2 + MAX_RING_WORDS]> {
        if from.g != to.g || from.b != to.b {
            return None;
        }
        let mut out = [0u64; 2 + MAX_RING_WORDS];
        let b = u64::from(to.b);
        let mut ring = [0u64; MAX_RING_WORDS];
        let used = ring.get_mut(..to.ring_words).unwrap_or_default();
        for m in self.n.saturating_sub(b)..self.n {
            let v = self.count(from, m).min(to.field_mask());
            to.set_slot(used, (m % b) as u32, v);
        }
        let sum: u64 = (0..to.b).map(|i| to.slot(used, i)).sum();
        let head = to.encode(
            self.n,
            self.cur.min(to.field_mask()),
            sum.min(to.field_mask()),
        );
        let mut at = 0;
        let mut put = |v: u64| {
            if let Some(w) = out.get_mut(at) {
                *w = v;
            }
            at += 1;
        };
        put(head);
        if to.wide {
            put(self.n);
        }
        for &w in used.iter() {
            put(w);
        }
        Some(out)
    }

    /// Move the head to sub-window `to > n`: `cur` goes to its ring counter, the counters of
    /// the sub-windows that age out are cleared, `older` is summed again and `cur` is 0.
    pub(crate) fn rotate(&mut self, geo: &Slide, to: u64) {
        if to <= self.n {
            return;
        }
        let b = u64::from(geo.b);
        let mask = geo.field_mask();
        let ring = self.ring.get_mut(..geo.ring_words).unwrap_or_default();
        if to - self.n > b {
            ring.fill(0);
            self.older = 0;
        } else {
            // `older` follows the counters it sums: each slot reused loses its aged-out count
            // and the first one gains `cur`. A capped `older` (at the field's maximum) is
            // summed again instead. One division for the whole walk.
            let exact = self.older < mask;
            let mut older = self.older;
            let mut i = (self.n % b) as u32;
            // The head's slot takes `cur`; the slots of the sub-windows after it that had no
            // request are cleared. Those usually hold nothing already (a ring is sparse on a
            // key that rotates often): one look at their bits skips them.
            let skip_rest = to - self.n > 1 && geo.slots_zero(ring, i + 1, to - self.n - 1);
            for m in self.n..to {
                older -= geo.slot(ring, i).min(older);
                let v = if m == self.n { self.cur } else { 0 };
                geo.set_slot(ring, i, v);
                older += v;
                i = if i + 1 == geo.b { 0 } else { i + 1 };
                if skip_rest {
                    break;
                }
            }
            self.older = if exact {
                older.min(mask)
            } else {
                (0..geo.b).map(|i| geo.slot(ring, i)).sum::<u64>().min(mask)
            };
        }
        self.cur = 0;
        self.n = to;
    }
}

/// The copy's arithmetic that needs no copy: the same for every ring size.
impl Snap {
    /// When sub-window `m`'s count stops counting.
    #[inline]
    pub(crate) fn drop_ms(geo: &Slide, m: u64) -> u64 {
        (m + u64::from(geo.b) + 1).saturating_mul(geo.g)
    }

    /// [`Snap::summary`] of a window whose ring is empty (`older` is 0: a burst within one
    /// sub-window), from the head's fields alone: sub-window `n` holds all there is, `cur`,
    /// counted until it drops out, so the count, the reset and the wait need no walk. `ne` is
    /// the effective sub-window ([`Snap::eff`]). The same answer as the walks (the proptest
    /// compares them); [`head_summary`] answers from a head word with it.
    #[inline]
    pub(crate) fn empty_ring_summary(
        geo: &Slide,
        n: u64,
        cur: u64,
        cost: u32,
        ne: u64,
        now_ms: u64,
    ) -> Summary {
        let live = ne - n <= u64::from(geo.b);
        let used = if live { cur } else { 0 };
        let needed = (used + u64::from(cost)).saturating_sub(u64::from(geo.limit));
        let drop_n = Snap::drop_ms(geo, n);
        Summary {
            used,
            reset_ms: if live && cur != 0 { drop_n } else { now_ms },
            retry_ms: match needed {
                0 => 0,
                _ if live && cur >= needed => drop_n.saturating_sub(now_ms).max(1),
                _ => Snap::drop_ms(geo, ne).saturating_sub(now_ms).max(1),
            },
        }
    }

    /// A copy built from plain counts: the head's sub-window `n`, its count `cur`, and the
    /// counts of sub-windows `n-B ..= n-1`, oldest first (missing ones are 0, extra ones are
    /// ignored). The fleet's scripts keep a window in this form; the decision is then made by
    /// the very functions the embedded store uses. Counts are cut to the counter width.
    #[cfg(feature = "redis")]
    pub(crate) fn from_counts(geo: &Slide, n: u64, cur: u64, older: &[u64]) -> Snap {
        let mut ring = [0u64; MAX_RING_WORDS];
        let b = u64::from(geo.b);
        let used = ring.get_mut(..geo.ring_words).unwrap_or_default();
        for (i, &v) in older.iter().take(geo.b as usize).enumerate() {
            // Oldest first: position i is sub-window n - B + i.
            let m = (n + i as u64).wrapping_sub(b);
            if n + (i as u64) >= b {
                geo.set_slot(used, (m % b) as u32, v.min(geo.field_mask()));
            }
        }
        let sum: u64 = (0..geo.b).map(|i| geo.slot(used, i)).sum();
        Snap {
            raw: geo.encode(n, cur.min(geo.field_mask()), sum.min(geo.field_mask())),
            base: if geo.wide { n } else { 0 },
            n,
            cur: cur.min(geo.field_mask()),
            older: sum.min(geo.field_mask()),
            ring,
        }
    }
}
