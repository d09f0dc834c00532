//! How much of a check's cost is the engine's layout and its locked instructions: tollgate and
//! governor beside toy tables in the same run, on the same keys.
//!
//! ```sh
//! cargo run --release --example layout_probe            # 1M keys
//! cargo run --release --example layout_probe -- 100000  # another key count
//! cargo run --release --example layout_probe -- 1       # one hot key
//! ```
//!
//! The toy tables are not rate limiters anyone should use (no persistence, no growth, no
//! expiry, one fixed-window counter per window): they do what a tollgate check does to memory
//! and nothing else. Each has 32-byte keys inline in a 64-byte line with two window words,
//! pins a crossbeam-epoch guard and makes one compare-and-swap per window.
//!
//! * `one-miss`: the line is found from the key's hash alone (open addressing over lines).
//! * `two-miss`: the same lines, reached through a separate index array (one word per line,
//!   in another allocation), as tollgate reaches its entries today.
//! * `no-pin`: `one-miss` without the epoch pin (nothing could then free a line safely).
//! * `one-cas`: `one-miss` with both windows' counters in one word, one compare-and-swap.
//! * `bare`: `one-cas` without the pin: the fewest locked instructions (one) any atomic
//!   two-window check can make, and one line touched.
//! * `harness`: only the harness's own work (pick a key, hash it).
//!
//! Each is timed twice: `loop`, checks one after another (the criterion bench's shape, where
//! the processor overlaps one check's cache misses with the next one's when the code between
//! them is short), and `chained`, where each check's key depends on the previous answer, so
//! checks cannot overlap: the latency of one check, as a gateway that does other work between
//! checks sees it. At 1M keys, `no-pin`'s chained figure came out barely above its loop figure
//! and below what the other toys' chains cost (why is not established): read it as a loop
//! figure. docs/PERFORMANCE.md has the figures from this machine.

use std::hint::black_box;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use tollgate::{Limit, Limits, Options, Store};

const T0: u64 = 1_700_000_000_000;
const CHECKS: u64 = 3_000_000;

/// One 64-byte line: a header (key length and hash tag), the key, two window words.
#[repr(align(64))]
#[derive(Default)]
struct Line {
    head: AtomicU64,
    key: [AtomicU64; 4],
    windows: [AtomicU64; 2],
}

/// A toy table of lines, reached directly (`index: None`) or through an index array.
struct Table {
    lines: Vec<Line>,
    index: Option<Vec<AtomicU64>>,
    mask: usize,
    hasher: ahash::RandomState,
}

impl Table {
    fn new(lines: usize, through_index: bool) -> Table {
        let index = through_index.then(|| {
            // A random permutation: place i of the index names line index[i].
            let mut perm: Vec<u64> = (0..lines as u64).collect();
            let mut x = 0x9E37_79B9_7F4A_7C15u64;
            for i in (1..lines).rev() {
                x = xorshift(x);
                perm.swap(i, (x % (i as u64 + 1)) as usize);
            }
            perm.into_iter().map(AtomicU64::new).collect()
        });
        Table {
            lines: (0..lines).map(|_| Line::default()).collect(),
            index,
            mask: lines - 1,
            hasher: ahash::RandomState::new(),
        }
    }

    fn line(&self, place: usize) -> &Line {
        let at = match &self.index {
            Some(index) => index[place].load(Ordering::Acquire) as usize,
            None => place,
        };
        &self.lines[at]
    }

    /// Count one request in both windows if both have room (inserting the key if new).
    /// `PIN`: pin a crossbeam-epoch guard first. `PACKED`: both windows' counters in one word,
    /// one compare-and-swap for the two (the table must be used only this way).
    fn check<const PIN: bool, const PACKED: bool>(
        &self,
        key: &[u8],
        now_ms: u64,
        limit: u64,
    ) -> bool {
        let hash = self.hasher.hash_one(key);
        let mut words = [0u64; 4];
        for (w, chunk) in words.iter_mut().zip(key.chunks(8)) {
            let mut b = [0u8; 8];
            b[..chunk.len()].copy_from_slice(chunk);
            *w = u64::from_le_bytes(b);
        }
        let head = (hash >> 48) | (key.len() as u64) << 16 | 1 << 32;
        let _guard = PIN.then(crossbeam_epoch::pin);
        let mut place = hash as usize & self.mask;
        loop {
            let line = self.line(place);
            match line.head.load(Ordering::Acquire) {
                0 => {
                    // New key (only while filling, from one thread).
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
                        .all(|(&window_ms, w)| count(w, now_ms / window_ms, limit));
                }
                _ => place = (place + 1) & self.mask,
            }
        }
    }
}

/// A fixed-window counter in one word (window number << 32 | count), by compare-and-swap.
fn count(w: &AtomicU64, window: u64, limit: u64) -> bool {
    let mut cur = w.load(Ordering::Acquire);
    loop {
        let n = if cur >> 32 == window {
            cur & 0xFFFF_FFFF
        } else {
            0
        };
        if n >= limit {
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
/// probe runs fewer than 2^24 checks on one key in one window, so a count never fills.
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

fn xorshift(mut x: u64) -> u64 {
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    x
}

struct Engines {
    keys: Vec<String>,
    store: Store,
    limits: Limits,
    governor: DefaultKeyedRateLimiter<String>,
    one_miss: Table,
    two_miss: Table,
    /// One-miss lines with both windows in one word.
    packed: Table,
}

impl Engines {
    /// One check of key `k` by engine `which`; whether it was admitted. (`&String` because
    /// governor's limiter is keyed by `String`.)
    #[inline]
    #[allow(clippy::ptr_arg)]
    fn check(&self, which: &str, k: &String, now_ms: u64) -> bool {
        let k = black_box(k);
        match which {
            "tollgate" => self
                .store
                .check_at(k.as_bytes(), &self.limits, 1, now_ms)
                .is_ok_and(|d| d.allowed()),
            "governor" => self.governor.check_key(k).is_ok(),
            "one-miss" => self
                .one_miss
                .check::<true, false>(k.as_bytes(), now_ms, 1 << 30),
            "two-miss" => self
                .two_miss
                .check::<true, false>(k.as_bytes(), now_ms, 1 << 30),
            "no-pin" => self
                .one_miss
                .check::<false, false>(k.as_bytes(), now_ms, 1 << 30),
            "one-cas" => self
                .packed
                .check::<true, true>(k.as_bytes(), now_ms, 1 << 30),
            "bare" => self
                .packed
                .check::<false, true>(k.as_bytes(), now_ms, 1 << 30),
            _ => black_box(self.one_miss.hasher.hash_one(k.as_bytes())) & 1 == 0,
        }
    }
}

/// ns per check over `CHECKS` checks of keys in a random order; `CHAINED`: each key depends on
/// the previous answer.
fn run<const CHAINED: bool>(e: &Engines, which: &str, seed: u64) -> f64 {
    let n = e.keys.len() as u64;
    let mut x = 0x2545_F491_4F6C_DD1D ^ seed;
    let mut admitted = 0u64;
    let start = Instant::now();
    for i in 0..CHECKS {
        x = xorshift(x);
        if CHAINED {
            x ^= admitted & 1;
        }
        let k = &e.keys[(x % n) as usize];
        admitted += u64::from(e.check(which, k, T0 + i / 5_000));
    }
    let ns = start.elapsed().as_nanos() as f64 / CHECKS as f64;
    black_box(admitted);
    ns
}

fn main() {
    let n: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(1_000_000);
    let keys: Vec<String> = (0..n as u64)
        .map(|i| format!("tok_{:028x}", i.wrapping_mul(0x9E37_79B9_7F4A_7C15)))
        .collect();
    let lines = (n * 2).next_power_of_two();
    let e = Engines {
        store: Store::open_in_memory(Options::default().compactor(false)).expect("store"),
        limits: Limits::new(&[Limit::per_minute(60_000), Limit::per_hour(65_535)]).expect("limits"),
        governor: RateLimiter::keyed(Quota::per_second(
            NonZeroU32::new(1_000_000_000).expect("nonzero"),
        )),
        one_miss: Table::new(lines, false),
        two_miss: Table::new(lines, true),
        packed: Table::new(lines, false),
        keys,
    };
    for k in &e.keys {
        for which in ["tollgate", "governor", "one-miss", "two-miss", "one-cas"] {
            e.check(which, k, T0);
        }
    }
    println!("{n} keys of 32 bytes, {CHECKS} checks per figure, ns per check");
    println!("{:<10} {:>8} {:>8}", "", "loop", "chained");
    for round in 0..2 {
        for which in [
            "tollgate", "governor", "one-miss", "two-miss", "no-pin", "one-cas", "bare", "harness",
        ] {
            let looped = run::<false>(&e, which, round);
            let chained = run::<true>(&e, which, round);
            println!("{which:<10} {looped:>8.1} {chained:>8.1}");
        }
    }
}
