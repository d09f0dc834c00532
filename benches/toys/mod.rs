//! The floors of `benches/check.rs`: the harness alone (`harness/*`), and toys (`toy-*`,
//! which replaced the layout probe example of 2026-11-24): tables that do to memory what a
//! two-window check does and nothing else. Not rate limiters anyone should use: no
//! persistence, no growth, no expiry, no removal, fixed windows that never refuse.
//!
//! Each key has one 64-byte line (a header word, the 32-byte key inline, two window words),
//! found from the key's hash alone (open addressing over lines, table at most half full), so
//! a check of a cold key costs one cache miss.
//!
//! * `check::<true, false>` (`toy-one-miss`): pin a crossbeam-epoch guard, then one
//!   compare-and-swap per window (two locked instructions besides the pin's).
//! * `check::<false, true>` (`toy-bare`): no pin, both windows' counters in one word, one
//!   compare-and-swap: the fewest locked instructions (one) an atomic two-window check can
//!   make, and one line touched.

use std::hint::black_box;
use std::sync::atomic::{AtomicU64, Ordering};

use super::{Engine, Key};

/// One 64-byte line: a header (key length and hash tag), the key, two window words.
#[repr(align(64))]
#[derive(Default)]
struct Line {
    head: AtomicU64,
    key: [AtomicU64; 4],
    windows: [AtomicU64; 2],
}

/// A toy table: lines reached directly from the key's hash.
pub struct Table {
    lines: Vec<Line>,
    mask: usize,
    hasher: ahash::RandomState,
}

impl Table {
    /// A table for `keys` keys (twice as many lines, rounded up to a power of two).
    pub fn new(keys: u64) -> Table {
        let lines = (keys as usize * 2).next_power_of_two();
        Table {
            lines: (0..lines).map(|_| Line::default()).collect(),
            mask: lines - 1,
            hasher: ahash::RandomState::new(),
        }
    }

    /// Count one request in both windows (inserting the key if new: only while filling, from
    /// one thread). Never refuses. `PIN`: pin a crossbeam-epoch guard first. `PACKED`: both
    /// windows' counters in one word, one compare-and-swap for the two (a table must be used
    /// only one way).
    #[inline]
    pub fn check<const PIN: bool, const PACKED: bool>(&self, key: &[u8; 32], now_ms: u64) -> bool {
        let hash = self.hasher.hash_one(key);
        let mut words = [0u64; 4];
        for (w, chunk) in words.iter_mut().zip(key.chunks_exact(8)) {
            let mut b = [0u8; 8];
            b.copy_from_slice(chunk);
            *w = u64::from_le_bytes(b);
        }
        let head = (hash >> 48) | (key.len() as u64) << 16 | 1 << 32;
        let _guard = PIN.then(crossbeam_epoch::pin);
        let mut place = hash as usize & self.mask;
        loop {
            let line = &self.lines[place];
            match line.head.load(Ordering::Acquire) {
                0 => {
                    for (w, v) in line.key.iter().zip(words) {
                        w.store(v, Ordering::Relaxed);
                    }
                    line.head.store(head, Ordering::Release);
                }
                h if h == head
                    && line
                        .key
                        .iter()
                        .zip(words)
                        .all(|(w, v)| w.load(Ordering::Relaxed) == v) =>
                {
                    if PACKED {
                        return count_both(&line.windows[0], now_ms / 60_000, now_ms / 3_600_000);
                    }
                    return [60_000u64, 3_600_000]
                        .iter()
                        .zip(&line.windows)
                        .all(|(&window_ms, w)| count(w, now_ms / window_ms));
                }
                _ => place = (place + 1) & self.mask,
            }
        }
    }
}

/// A fixed-window counter in one word (window number << 32 | count), by compare-and-swap.
/// The limit (2^30) is never reached.
fn count(w: &AtomicU64, window: u64) -> bool {
    const LIMIT: u64 = 1 << 30;
    let mut cur = w.load(Ordering::Acquire);
    loop {
        let n = if cur >> 32 == window {
            cur & 0xFFFF_FFFF
        } else {
            0
        };
        if n >= LIMIT {
            return false;
        }
        match w.compare_exchange_weak(
            cur,
            window << 32 | (n + 1),
            Ordering::AcqRel,
            Ordering::Acquire,
        ) {
            Ok(_) => return true,
            Err(now) => cur = now,
        }
    }
}

/// Two fixed-window counters in one word, one compare-and-swap for both: per window an 8-bit
/// window number and a 24-bit count (`minute << 56 | count << 32 | hour << 24 | count`). The
/// bench checks a key far fewer than 2^24 times in one window, so a count never fills.
fn count_both(w: &AtomicU64, minute: u64, hour: u64) -> bool {
    const FULL: u64 = (1 << 24) - 1;
    let mut cur = w.load(Ordering::Acquire);
    loop {
        let m = if cur >> 56 == minute & 0xFF {
            (cur >> 32) & FULL
        } else {
            0
        };
        let h = if (cur >> 24) & 0xFF == hour & 0xFF {
            cur & FULL
        } else {
            0
        };
        if m >= FULL || h >= FULL {
            return false;
        }
        let new = (minute & 0xFF) << 56 | (m + 1) << 32 | (hour & 0xFF) << 24 | (h + 1);
        match w.compare_exchange_weak(cur, new, Ordering::AcqRel, Ordering::Acquire) {
            Ok(_) => return true,
            Err(now) => cur = now,
        }
    }
}

/// `toy-one-miss`: an epoch pin, one compare-and-swap per window.
pub struct ToyOneMiss(pub Table);

/// `toy-bare`: no pin, one compare-and-swap for both windows.
pub struct ToyBare(pub Table);

impl Engine for ToyOneMiss {
    #[inline]
    fn check(&self, key: &mut Key, now_ms: u64) -> (bool, u64) {
        let ok = self.0.check::<true, false>(&key.bytes, now_ms);
        (ok, u64::from(ok))
    }
}

impl Engine for ToyBare {
    #[inline]
    fn check(&self, key: &mut Key, now_ms: u64) -> (bool, u64) {
        let ok = self.0.check::<false, true>(&key.bytes, now_ms);
        (ok, u64::from(ok))
    }
}

/// The harness alone: the key bytes, or the bytes and the `String`.
pub struct Harness<const STRING: bool>;

impl<const STRING: bool> Engine for Harness<STRING> {
    #[inline]
    fn check(&self, key: &mut Key, _now_ms: u64) -> (bool, u64) {
        let last = if STRING {
            black_box(key.string()).as_bytes()[31]
        } else {
            black_box(&key.bytes)[31]
        };
        (true, u64::from(last & 1))
    }
}
