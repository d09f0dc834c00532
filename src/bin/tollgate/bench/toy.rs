//! The floor toy of `tollgate bench` (`--toy`, feature `bench`): the least a limiter that keeps
//! a counter per key must do for a check, run on the same requests as tollgate and governor,
//! so that a target measured against governor can be set beside what any design could reach
//! in the same harness and the same run.
//!
//! A check hashes the key twice (a slot and a 128-bit fingerprint, so no key bytes are kept
//! or compared), reads the wall clock, finds the slot from the hash with one miss (open
//! addressing, 32-byte slots, sized for the distinct keys of the run at a load of a quarter to
//! a half) and counts one fixed one-minute window by a compare-and-swap. Nothing survives a
//! restart, a window gives a whole minute back at once (twice the limit can pass across a
//! minute's edge), there are no headers, no second window, no idempotency: it keeps none of
//! tollgate's promises, which is what makes it a floor.

use std::sync::atomic::{AtomicU64, Ordering};

/// Slots probed before a check gives up (and admits, uncounted: see [`Table::full`]).
const PROBES: usize = 64;

/// One key's counter.
#[repr(align(32))]
#[derive(Default)]
struct Slot {
    /// 0 free, 1 being claimed, else the key's first fingerprint (never 0 or 1).
    tag: AtomicU64,
    /// The key's second fingerprint.
    tag2: AtomicU64,
    /// The fixed window: the minute's number in the high half, its count in the low half.
    window: AtomicU64,
}

/// A table of fixed-window counters found from the key's hash.
pub struct Table {
    slots: Box<[Slot]>,
    mask: usize,
    first: ahash::RandomState,
    second: ahash::RandomState,
    full: AtomicU64,
}

impl Table {
    /// A table for `keys` distinct keys (twice as many slots, rounded up to a power of two).
    pub fn new(keys: usize) -> Table {
        let n = keys.max(1).saturating_mul(2).next_power_of_two();
        Table {
            slots: (0..n).map(|_| Slot::default()).collect(),
            mask: n - 1,
            first: ahash::RandomState::with_seeds(1, 2, 3, 4),
            second: ahash::RandomState::with_seeds(5, 6, 7, 8),
            full: AtomicU64::new(0),
        }
    }

    /// Count a request of `key` now against `limit` per minute.
    pub fn check(&self, key: &[u8], limit: u32) -> bool {
        let now_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        self.check_at(key, limit, now_ms)
    }

    /// [`Table::check`] at `now_ms` (ms since the Unix epoch).
    pub fn check_at(&self, key: &[u8], limit: u32, now_ms: u64) -> bool {
        let h = self.first.hash_one(key);
        let (tag, tag2) = (h | 2, self.second.hash_one(key));
        let minute = (now_ms / 60_000) & 0xffff_ffff;
        let mut i = (h >> 20) as usize & self.mask;
        let mut probes = 0;
        while probes < PROBES {
            let Some(slot) = self.slots.get(i) else { break };
            match slot.tag.load(Ordering::Acquire) {
                t if t == tag && slot.tag2.load(Ordering::Relaxed) == tag2 => {
                    return count(&slot.window, minute, limit);
                }
                0 => {
                    if slot
                        .tag
                        .compare_exchange(0, 1, Ordering::Acquire, Ordering::Relaxed)
                        .is_ok()
                    {
                        slot.tag2.store(tag2, Ordering::Relaxed);
                        slot.tag.store(tag, Ordering::Release);
                        return count(&slot.window, minute, limit);
                    }
                    // Claimed meanwhile: look at the same slot again.
                }
                1 => std::hint::spin_loop(),
                _ => {
                    i = (i + 1) & self.mask;
                    probes += 1;
                }
            }
        }
        self.full.fetch_add(1, Ordering::Relaxed);
        true
    }

    /// Checks that found no slot within [`PROBES`] (each admitted without being counted).
    pub fn full(&self) -> u64 {
        self.full.load(Ordering::Relaxed)
    }
}

/// Count one request in a fixed window word if the minute's count is below `limit`.
fn count(window: &AtomicU64, minute: u64, limit: u32) -> bool {
    let mut cur = window.load(Ordering::Acquire);
    loop {
        let next = if cur >> 32 != minute {
            (minute << 32) | 1
        } else if cur & 0xffff_ffff < u64::from(limit) {
            cur + 1
        } else {
            return false;
        };
        match window.compare_exchange_weak(cur, next, Ordering::AcqRel, Ordering::Acquire) {
            Ok(_) => return true,
            Err(x) => cur = x,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T0: u64 = 1_700_000_040_000; // the start of a minute

    #[test]
    fn counts_each_key_to_its_limit_per_minute() {
        let t = Table::new(4);
        for _ in 0..3 {
            assert!(t.check_at(b"a", 3, T0));
        }
        assert!(!t.check_at(b"a", 3, T0 + 59_999));
        assert!(t.check_at(b"b", 3, T0), "another key has its own count");
        assert!(
            t.check_at(b"a", 3, T0 + 60_000),
            "the next minute starts afresh"
        );
        assert_eq!(t.full(), 0);
    }

    #[test]
    fn a_full_table_admits_uncounted_and_says_so() {
        let t = Table::new(1);
        let keys: Vec<Vec<u8>> = (0..3u8).map(|k| vec![k; 40]).collect();
        for k in &keys {
            assert!(t.check_at(k, 1, T0));
        }
        // Two slots for three keys: one key never found a slot, and is admitted every time.
        assert_eq!(t.full(), 1);
        let refused = keys.iter().filter(|k| !t.check_at(k, 1, T0)).count();
        assert_eq!(refused, 2);
    }
}
