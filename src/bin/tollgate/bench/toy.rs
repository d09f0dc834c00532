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
//!
//! On the keyed POSTs it admits, it also keeps Idempotency-Keys the least way one can
//! (`toy_records.rs`), as tollgate begins and completes records on the ones it admits: the
//! toy's row then sets tollgate's whole request, idempotency included, beside a floor that
//! does that work too.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use super::toy_records::{Began, Records, Region};
use super::{checks_peer, key_into, Config, KeyDraw, Rng, Row, Workload};

/// The floor toy on the workload's requests: one window per route, as governor, and the keyed
/// POSTs' records (begun, completed, or replayed) on the ones it admits.
pub(super) fn bench(c: &Config, w: &Arc<Workload>) -> Row {
    let limits: Vec<u32> = w.routes.iter().map(|r| r.per_minute).collect();
    // Sized for the keys the run makes (its distinct token and route pairs), as a table that
    // grows with its keys would be; the records' table for as many keys as tollgate begins
    // in a run of this length (about 90 000 a second), twice over.
    let keys: std::collections::HashSet<_> = w.seq.iter().collect();
    let table = Table::new(keys.len());
    let records = Records::new((c.seconds * 200_000.0) as usize);
    // A region per thread, reserved (not touched) for 64 MiB of records a second.
    let region = ((c.seconds * 64.0) as usize).clamp(16, 8192) << 20;
    let response: Vec<u8> = [&b"201 content-type: application/json\n"[..], &[b'{'; 200]].concat();
    let (begun, replayed) = (AtomicU64::new(0), AtomicU64::new(0));
    let row = checks_peer(
        (
            "toy",
            format!(
                "toy floor: one miss, fixed window, records in memory ({} threads)",
                c.threads
            ),
        ),
        c,
        w,
        |t| Keyed {
            rng: Rng(0x9E37_79B9_7F4A_7C15 ^ (t as u64 + 1).wrapping_mul(0x2545_F491_4F6C_DD1D)),
            keys: KeyDraw::new(t),
            region: Region::new(t, region),
            out: Vec::with_capacity(1024),
            counts: (0, 0),
        },
        |_, _| {},
        |k, ri, token, bytes| {
            let ok = table.check(bytes, limits[ri]);
            let keyed = ok && w.routes[ri].post && k.rng.unit() < c.idempotent;
            if keyed {
                k.request(&records, token, c.retries, &response);
            }
            (ok, keyed)
        },
        |k| {
            begun.fetch_add(k.counts.0, Ordering::Relaxed);
            replayed.fetch_add(k.counts.1, Ordering::Relaxed);
        },
    );
    println!(
        "  toy: {} records begun and completed, {} replayed",
        begun.load(Ordering::Relaxed),
        replayed.load(Ordering::Relaxed)
    );
    if table.full() > 0 || records.full() > 0 {
        println!(
            "  toy: {} checks found no free slot (admitted uncounted), {} keyed requests no room (unrecorded)",
            table.full(),
            records.full()
        );
    }
    row
}

/// A toy thread's keyed requests, drawn as tollgate's loop draws them.
struct Keyed {
    rng: Rng,
    keys: KeyDraw,
    region: Region,
    out: Vec<u8>,
    /// Records begun and completed, and replayed.
    counts: (u64, u64),
}

impl Keyed {
    /// One keyed POST of `token`: a retry of a recent key (share `retries`) or a new key,
    /// begun and completed, or replayed.
    fn request(&mut self, records: &Records, token: usize, retries: f64, response: &[u8]) {
        let (scope, key) = self.keys.draw(&mut self.rng, token, retries);
        let mut buf = [0u8; 64];
        let len = key_into(&mut buf, scope, "");
        let mut id = [0u8; 80];
        id[..len].copy_from_slice(&buf[..len]);
        id[len..len + 16].copy_from_slice(&key.to_le_bytes());
        match records.begin(
            &mut self.region,
            &id[..len + 16],
            &[0x5A; 32],
            &mut self.out,
        ) {
            Began::Started(at) => {
                records.complete(&mut self.region, at, response);
                self.counts.0 += 1;
                self.keys.begun(&mut self.rng, scope, key);
            }
            Began::Replayed(_) => self.counts.1 += 1,
            Began::Refused | Began::Full => {}
        }
    }
}

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
