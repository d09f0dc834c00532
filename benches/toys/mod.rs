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
        let words = key_words(key);
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

/// A 32-byte key as the four words a table compares.
#[inline]
fn key_words(key: &[u8; 32]) -> [u64; 4] {
    let mut words = [0u64; 4];
    for (w, chunk) in words.iter_mut().zip(key.chunks_exact(8)) {
        let mut b = [0u8; 8];
        b.copy_from_slice(chunk);
        *w = u64::from_le_bytes(b);
    }
    words
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

/// An entry as tollgate lays out ErzyCall's pair with a 32-byte key: three lines, a header
/// word, a descriptor word, the key (words 2-5), the minute window's head at word 6 and the
/// hour window's at word 13 (the rings, never touched here, fill the rest).
#[repr(align(64))]
#[derive(Default)]
struct Wide {
    words: [AtomicU64; 24],
}

const WIDE_HEADS: [usize; 2] = [6, 13];

/// Three-line entries, reached either from the hash alone (`toy-wide`: open addressing over
/// entries, three quarters full) or through an index of 8-byte places beside them (`toy-indexed`:
/// tag and entry number, three eighths to three quarters full, as `storage/index.rs` keeps it;
/// entries stored in the order their keys came, as segments fill). Both pin, compare the key
/// in place and count one compare-and-swap per window head, so the two differ by the index
/// alone, and either differs from tollgate by what tollgate does besides.
pub struct WideTable {
    entries: Vec<Wide>,
    index: Vec<AtomicU64>,
    next: AtomicU64,
    hasher: ahash::RandomState,
}

impl WideTable {
    /// A table for `keys` keys; `indexed`: behind an index, else addressed by the hash.
    pub fn new(keys: u64, indexed: bool) -> WideTable {
        let (entries, index) = if indexed {
            (keys as usize, (keys as usize * 4 / 3).next_power_of_two())
        } else {
            (keys as usize * 4 / 3 + 1, 0)
        };
        WideTable {
            entries: (0..entries).map(|_| Wide::default()).collect(),
            index: (0..index).map(|_| AtomicU64::new(0)).collect(),
            next: AtomicU64::new(0),
            hasher: ahash::RandomState::new(),
        }
    }

    fn place(&self, hash: u64, n: usize) -> usize {
        ((u128::from(hash) * n as u128) >> 64) as usize
    }

    /// Whether `e` holds `key` (header `head`); writes it there first if `e` is free.
    fn claim_or_match(e: &Wide, head: u64, words: &[u64; 4]) -> Option<bool> {
        match e.words[0].load(Ordering::Acquire) {
            0 => {
                for (w, &v) in e.words[2..6].iter().zip(words) {
                    w.store(v, Ordering::Relaxed);
                }
                e.words[0].store(head, Ordering::Release);
                Some(true)
            }
            h if h == head => Some(
                e.words[2..6]
                    .iter()
                    .zip(words)
                    .all(|(w, &v)| w.load(Ordering::Relaxed) == v),
            ),
            _ => None,
        }
    }

    /// Count one request in both windows of `key` (inserting it if new: only while filling,
    /// from one thread). Never refuses.
    #[inline]
    pub fn check<const INDEXED: bool>(&self, key: &[u8; 32], now_ms: u64) -> bool {
        let hash = self.hasher.hash_one(key);
        let words = key_words(key);
        let head = (hash >> 48) | (key.len() as u64) << 16 | 1 << 32;
        let _guard = crossbeam_epoch::pin();
        let e = if INDEXED {
            let tag = (hash >> 48) << 40;
            let mask = self.index.len() - 1;
            let mut place = hash as usize & mask;
            loop {
                let v = self.index[place].load(Ordering::Acquire);
                if v == 0 {
                    let id = self.next.fetch_add(1, Ordering::Relaxed);
                    let e = &self.entries[id as usize];
                    Self::claim_or_match(e, head, &words);
                    self.index[place].store(tag | (id + 1), Ordering::Release);
                    break e;
                }
                if v & !((1 << 40) - 1) == tag {
                    let e = &self.entries[((v & ((1 << 40) - 1)) - 1) as usize];
                    if Self::claim_or_match(e, head, &words) == Some(true) {
                        break e;
                    }
                }
                place = (place + 1) & mask;
            }
        } else {
            let n = self.entries.len();
            let mut place = self.place(hash, n);
            loop {
                let e = &self.entries[place];
                if Self::claim_or_match(e, head, &words) == Some(true) {
                    break e;
                }
                place = if place + 1 == n { 0 } else { place + 1 };
            }
        };
        [60_000u64, 3_600_000]
            .iter()
            .zip(WIDE_HEADS)
            .all(|(&window_ms, at)| count(&e.words[at], now_ms / window_ms))
    }
}

/// `toy-wide`: three-line entries found from the hash alone.
pub struct ToyWide(pub WideTable);

/// `toy-indexed`: three-line entries behind an index.
pub struct ToyIndexed(pub WideTable);

impl Engine for ToyWide {
    #[inline]
    fn check(&self, key: &mut Key, now_ms: u64) -> (bool, u64) {
        let ok = self.0.check::<false>(&key.bytes, now_ms);
        (ok, u64::from(ok))
    }
}

impl Engine for ToyIndexed {
    #[inline]
    fn check(&self, key: &mut Key, now_ms: u64) -> (bool, u64) {
        let ok = self.0.check::<true>(&key.bytes, now_ms);
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
