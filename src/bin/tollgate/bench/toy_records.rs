//! The floor toy's idempotency records (`tollgate bench --toy`, feature `bench`): the least a
//! store of Idempotency-Keys must do for a keyed request, run by the toy on the keyed POSTs it
//! admits, as tollgate runs begin and complete on the ones it admits.
//!
//! A begin hashes the key once, finds its slot from the hash with one miss (open addressing,
//! 16-byte slots in memory) and claims it with a compare-and-swap; the thread appends the
//! record (the key's hash, the body's 32-byte fingerprint, a state word) to its own region of
//! memory, and a complete appends the response's bytes after it and sets the state. A retry
//! finds the slot, compares the fingerprint and copies the stored response out.
//!
//! What it leaves out is what makes it a floor: the records are in anonymous memory, not in a
//! file (nothing survives the process; a fresh page costs the kernel's zeroing alone, not the
//! file system's), there is no checksum, no expiry, no lease that a crashed handler gives
//! back, and a record is read back only by the thread that wrote it (a retry in this run comes
//! from the thread that began the key: each thread keeps its own recent keys).

use std::sync::atomic::{AtomicU64, Ordering};

/// Slots probed before a begin gives up (and runs the request unrecorded: [`Records::full`]).
const PROBES: usize = 64;

/// Bytes of a record before its response: the key's hash, the fingerprint, the state.
const HEAD: usize = 8 + 32 + 8;

/// One key's place in the shared table.
#[repr(align(16))]
#[derive(Default)]
struct Slot {
    /// 0 free, 1 being claimed, else the key's hash (never 0 or 1).
    tag: AtomicU64,
    /// The writing thread (high 16 bits) and the record's offset in its region.
    at: AtomicU64,
}

/// The shared table of the keys begun.
pub struct Records {
    slots: Box<[Slot]>,
    mask: usize,
    hasher: ahash::RandomState,
    full: AtomicU64,
}

/// A thread's own region of records: appended to, never moved (its capacity is reserved
/// up front, so appending never reallocates; the pages are faulted in as they are written).
pub struct Region {
    thread: u64,
    bytes: Vec<u8>,
}

/// What a begin found.
#[derive(Debug, PartialEq, Eq)]
pub enum Began {
    /// A new key: run the request, then [`Records::complete`] at this offset.
    Started(usize),
    /// A completed key with the same fingerprint: the stored response's length (its bytes
    /// were copied out).
    Replayed(usize),
    /// The key with another fingerprint, or still running, or written by another thread.
    Refused,
    /// No slot, or no room left in the thread's region: the request ran unrecorded.
    Full,
}

impl Region {
    /// A region for thread `thread` that holds `capacity` bytes of records.
    pub fn new(thread: usize, capacity: usize) -> Region {
        Region {
            thread: thread as u64,
            bytes: Vec::with_capacity(capacity),
        }
    }

    fn word(&self, at: usize) -> u64 {
        let mut w = [0u8; 8];
        if let Some(b) = self.bytes.get(at..at + 8) {
            w.copy_from_slice(b);
        }
        u64::from_le_bytes(w)
    }
}

impl Records {
    /// A table for `keys` keys (twice as many slots, rounded up to a power of two), every slot
    /// touched now so that a begin's miss is a cache miss, not a first fault.
    pub fn new(keys: usize) -> Records {
        let n = keys.max(1).saturating_mul(2).next_power_of_two();
        Records {
            slots: (0..n).map(|_| Slot::default()).collect(),
            mask: n - 1,
            hasher: ahash::RandomState::with_seeds(9, 10, 11, 12),
            full: AtomicU64::new(0),
        }
    }

    /// Begin `key` (the scope and the Idempotency-Key's bytes) with the body's fingerprint
    /// `fp`, on the calling thread's `region`; a replay copies the response into `out`.
    pub fn begin(
        &self,
        region: &mut Region,
        key: &[u8],
        fp: &[u8; 32],
        out: &mut Vec<u8>,
    ) -> Began {
        let tag = self.hasher.hash_one(key) | 2;
        let mut i = (tag >> 20) as usize & self.mask;
        for _ in 0..PROBES {
            let Some(slot) = self.slots.get(i) else { break };
            match slot.tag.load(Ordering::Acquire) {
                t if t == tag => {
                    return self.replay(region, slot.at.load(Ordering::Acquire), fp, out)
                }
                0 => {
                    if slot
                        .tag
                        .compare_exchange(0, 1, Ordering::Acquire, Ordering::Relaxed)
                        .is_err()
                    {
                        continue; // claimed meanwhile: look at it again
                    }
                    let at = region.bytes.len();
                    if region.bytes.capacity() - at < HEAD + 1024 {
                        // Out of room: give the slot back, run unrecorded.
                        slot.tag.store(0, Ordering::Release);
                        break;
                    }
                    region.bytes.extend_from_slice(&tag.to_le_bytes());
                    region.bytes.extend_from_slice(fp);
                    region.bytes.extend_from_slice(&0u64.to_le_bytes());
                    slot.at
                        .store(region.thread << 48 | at as u64, Ordering::Relaxed);
                    slot.tag.store(tag, Ordering::Release);
                    return Began::Started(at);
                }
                1 => std::hint::spin_loop(),
                _ => i = (i + 1) & self.mask,
            }
        }
        self.full.fetch_add(1, Ordering::Relaxed);
        Began::Full
    }

    /// Store `response` for the record begun at `at` in `region`, and mark it completed.
    pub fn complete(&self, region: &mut Region, at: usize, response: &[u8]) {
        // Appended right after the record's head: a thread runs one request at a time.
        if region.bytes.len() != at + HEAD
            || region.bytes.capacity() - region.bytes.len() < response.len()
        {
            return;
        }
        region.bytes.extend_from_slice(response);
        let state = (response.len() as u64 + 1).to_le_bytes();
        if let Some(s) = region.bytes.get_mut(at + 40..at + 48) {
            s.copy_from_slice(&state);
        }
        // Keep records 8-byte aligned, as a word-addressed store would.
        let pad = region.bytes.len().next_multiple_of(8) - region.bytes.len();
        region.bytes.extend_from_slice(&[0u8; 8][..pad]);
    }

    fn replay(&self, region: &Region, at: u64, fp: &[u8; 32], out: &mut Vec<u8>) -> Began {
        if at >> 48 != region.thread {
            return Began::Refused;
        }
        let at = (at & ((1 << 48) - 1)) as usize;
        if region.bytes.get(at + 8..at + 40) != Some(&fp[..]) {
            return Began::Refused;
        }
        let state = region.word(at + 40);
        let Some(len) = state.checked_sub(1) else {
            return Began::Refused; // still running
        };
        let len = len as usize;
        out.clear();
        out.extend_from_slice(
            region
                .bytes
                .get(at + HEAD..at + HEAD + len)
                .unwrap_or_default(),
        );
        Began::Replayed(len)
    }

    /// Begins that found no slot or no room (each ran unrecorded).
    pub fn full(&self) -> u64 {
        self.full.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn begins_completes_and_replays_by_fingerprint() {
        let r = Records::new(4);
        let mut region = Region::new(0, 1 << 16);
        let mut out = Vec::new();
        let Began::Started(at) = r.begin(&mut region, b"tok:key-1", &[7; 32], &mut out) else {
            panic!("a new key starts");
        };
        assert_eq!(
            r.begin(&mut region, b"tok:key-1", &[7; 32], &mut out),
            Began::Refused,
            "in flight until completed"
        );
        r.complete(&mut region, at, b"201 created");
        assert_eq!(
            r.begin(&mut region, b"tok:key-1", &[7; 32], &mut out),
            Began::Replayed(11)
        );
        assert_eq!(out, b"201 created");
        assert_eq!(
            r.begin(&mut region, b"tok:key-1", &[8; 32], &mut out),
            Began::Refused,
            "another body"
        );
        assert!(matches!(
            r.begin(&mut region, b"tok:key-2", &[7; 32], &mut out),
            Began::Started(_)
        ));
        let mut other = Region::new(1, 1 << 16);
        assert_eq!(
            r.begin(&mut other, b"tok:key-1", &[7; 32], &mut out),
            Began::Refused,
            "another thread's record is not read"
        );
        assert_eq!(r.full(), 0);
    }

    #[test]
    fn a_full_region_runs_unrecorded_and_says_so() {
        let r = Records::new(4);
        let mut region = Region::new(0, 64);
        let mut out = Vec::new();
        assert_eq!(r.begin(&mut region, b"k", &[1; 32], &mut out), Began::Full);
        assert_eq!(r.full(), 1);
        let mut roomy = Region::new(0, 1 << 12);
        assert!(
            matches!(
                r.begin(&mut roomy, b"k", &[1; 32], &mut out),
                Began::Started(_)
            ),
            "the slot was given back"
        );
    }
}
