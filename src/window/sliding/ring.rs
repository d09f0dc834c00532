//! The ring of a sliding window: `B` counters of `c` bits packed across words, and the reads
//! a check makes of it: one counter ([`Slide::slot`]), a run of counters known to be zero
//! ([`Slide::slots_zero`], which lets a rotation skip the sub-windows nobody used), and the
//! walk over the non-zero counters of a range ([`Counts`]), which jumps between set bits
//! instead of looking at every counter. The window's words and rules are in the parent
//! module's documentation.

use super::{Slide, Snap};

impl Slide {
    /// Counter `i` of a ring held as words.
    #[inline]
    pub(crate) fn slot(&self, ring: &[u64], i: u32) -> u64 {
        let bit = i as usize * self.c as usize;
        let (w, off) = (bit / 64, bit % 64);
        let mut v = ring.get(w).copied().unwrap_or(0) >> off;
        if off + self.c as usize > 64 {
            v |= ring.get(w + 1).copied().unwrap_or(0) << (64 - off);
        }
        v & self.field_mask()
    }

    /// The ring bits of the `count` counters from slot `first` on (slot numbers taken modulo
    /// `B`, at most a whole ring): `[lo, hi)` up to the ring's end, and the part that wraps
    /// past it from bit 0 (empty if it does not wrap).
    pub(crate) fn slot_runs(&self, first: u64, count: u64) -> [(u64, u64); 2] {
        let (b, c) = (u64::from(self.b), u64::from(self.c));
        let first = first % b;
        let end = first + count.min(b);
        if end <= b {
            [(first * c, end * c), (0, 0)]
        } else {
            [(first * c, b * c), (0, (end - b) * c)]
        }
    }

    /// Whether the `count` counters from slot `first` on ([`Slide::slot_runs`]) are all zero:
    /// a look at their bits, word by word.
    pub(crate) fn slots_zero(&self, ring: &[u64], first: u32, count: u64) -> bool {
        self.slot_runs(u64::from(first), count)
            .iter()
            .all(|&(lo, hi)| bits_zero(ring, lo as usize, hi as usize))
    }

    /// The sum of a ring's counters and the largest of them, from a walk over its non-zero
    /// counters only (a ring is mostly zero: reading all `B` counters one by one cost an
    /// opening store some 2 500 instructions a window).
    pub(crate) fn ring_sum_max(&self, ring: &[u64]) -> (u64, u64) {
        let c = self.c as usize;
        let end = self.b as usize * c;
        let (mut sum, mut max, mut from) = (0u64, 0u64, 0usize);
        while let Some(bit) = first_set(ring, from, end) {
            let j = bit / c;
            let v = self.slot(ring, j as u32);
            sum = sum.saturating_add(v);
            max = max.max(v);
            from = (j + 1) * c;
        }
        (sum, max)
    }

    /// Set counter `i` of a ring held as words to `v` (cut to the counter's width).
    #[inline]
    pub(crate) fn set_slot(&self, ring: &mut [u64], i: u32, v: u64) {
        let m = self.field_mask();
        let v = v & m;
        let bit = i as usize * self.c as usize;
        let (w, off) = (bit / 64, bit % 64);
        if let Some(x) = ring.get_mut(w) {
            *x = (*x & !(m << off)) | (v << off);
        }
        if off + self.c as usize > 64 {
            let spill = 64 - off;
            if let Some(x) = ring.get_mut(w + 1) {
                *x = (*x & !(m >> spill)) | (v >> spill);
            }
        }
    }
}

/// The walk of [`Snap::counts`].
pub(super) struct Counts<'s, const N: usize> {
    pub(super) snap: &'s Snap<N>,
    pub(super) geo: &'s Slide,
    /// The next sub-window to look at.
    pub(super) m: u64,
    /// Its ring index (`m mod B`), kept without dividing again.
    pub(super) idx: u32,
    /// The last sub-window to look at.
    pub(super) hi: u64,
}

impl<const N: usize> Iterator for Counts<'_, N> {
    type Item = (u64, u64);

    #[inline]
    fn next(&mut self) -> Option<(u64, u64)> {
        let (s, geo) = (self.snap, self.geo);
        let b = u64::from(geo.b);
        loop {
            // Nothing after the head's sub-window is counted.
            let last = self.hi.min(s.n);
            if self.m > last {
                return None;
            }
            if self.m == s.n {
                self.m += 1;
                if s.cur != 0 {
                    return Some((s.n, s.cur));
                }
                continue;
            }
            if s.n - self.m > b {
                // Older than the ring: counted nowhere. Go on at the ring's oldest.
                self.m = s.n - b;
                self.idx = (self.m % b) as u32;
                continue;
            }
            // Ring counters `idx ..` up to the ring's end, the head's sub-window or `hi`.
            let seg = (last.min(s.n - 1) - self.m + 1).min(b - u64::from(self.idx));
            let c = geo.c as usize;
            let from = self.idx as usize * c;
            let end = from + seg as usize * c;
            match first_set(&s.ring, from, end) {
                Some(bit) => {
                    let j = (bit / c) as u32;
                    let at = self.m + u64::from(j - self.idx);
                    let v = geo.slot(&s.ring, j);
                    self.m = at + 1;
                    self.idx = if j + 1 == geo.b { 0 } else { j + 1 };
                    return Some((at, v));
                }
                None => {
                    self.m += seg;
                    let next = u64::from(self.idx) + seg;
                    self.idx = if next >= b { 0 } else { next as u32 };
                }
            }
        }
    }
}

/// Whether bits `from .. end` of `ring` (taken as one little-endian bit string) are all zero.
#[inline]
fn bits_zero(ring: &[u64], from: usize, end: usize) -> bool {
    let mut p = from;
    while p < end {
        let (w, off) = (p / 64, p % 64);
        let take = (64 - off).min(end - p);
        let mask = if take == 64 {
            u64::MAX
        } else {
            ((1u64 << take) - 1) << off
        };
        if ring.get(w).copied().unwrap_or(0) & mask != 0 {
            return false;
        }
        p += take;
    }
    true
}

/// The first set bit of `ring` (taken as one little-endian bit string) in `from .. end`.
#[inline]
fn first_set(ring: &[u64], from: usize, end: usize) -> Option<usize> {
    let mut p = from;
    while p < end {
        let (w, off) = (p / 64, p % 64);
        let x = ring.get(w).copied().unwrap_or(0) >> off;
        if x != 0 {
            let q = p + x.trailing_zeros() as usize;
            return (q < end).then_some(q);
        }
        p = (w + 1) * 64;
    }
    None
}
