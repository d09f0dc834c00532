//! Concurrency permits (`crate::permit`) as entries of kind 4: the layout and the slot word,
//! acquire, release and count, the compactor's unlink, and the check at open.
//!
//! ```text
//! word 0      header: key_len | 0 | kind 4 | 0 | crc32 (over header, key)
//! key         the key, zero padded to a word
//! 64 slots    one word each: frozen 1 bit | generation 19 bits | deadline 44 bits (ms)
//! ```
//!
//! A slot is free when its deadline is 0 or not after now. A new entry's slots start free with
//! random generations. Acquiring under a cap `c` is one
//! compare-and-swap of a free slot among the first `c` to (generation + 1, now + lease): at
//! most `c` slots can hold a deadline after now, so at most `c` permits are held at any
//! instant, whatever the threads do. A release swaps the slot back to deadline 0 only if it
//! still holds the permit's word (same generation, same deadline): a permit past its deadline
//! whose slot was taken again releases nothing.
//!
//! **A lower cap** applies at once, as Redis's count does: after taking its slot, an acquire
//! counts every held slot (all 64: permits taken under a higher cap sit past the new one) and
//! gives its slot back if more than `c` are held. The swap and the count are sequentially
//! consistent, so of two acquires racing for the last place at least one sees the other (both
//! may give up: a spurious refusal, only while slots past the cap are held). With a cap that
//! does not change, no slot past it is ever taken and the count never refuses.
//!
//! The compactor unlinks an entry whose every slot is free, freezing each slot (bit 63) by a
//! compare-and-swap that fails if a permit was taken meanwhile; an acquire that meets a frozen
//! slot looks the key up again.

use std::sync::atomic::{AtomicU64, Ordering};

use crossbeam_epoch::Guard;

use super::core::Core;
use super::lookup::read_key;
use crate::backend::check_key;
use crate::error::{Error, Result};
use crate::key::MAX_KEY_LEN;
use crate::permit::{Permit, MAX_PERMITS};
use crate::storage::format::{entry_crc, EntryHeader, KIND_PERMITS, LINE};
use crate::storage::segment::Entry;
use crate::version::random_word;

/// Bit 63 of a slot: frozen (the entry is being unlinked).
const FROZEN: u64 = 1 << 63;
const DEADLINE_BITS: u32 = 44;
const DEADLINE_MASK: u64 = (1 << DEADLINE_BITS) - 1;
const GEN_MASK: u64 = (1 << 19) - 1;
/// The latest deadline a slot can hold (ms since the Unix epoch, the year 2527).
pub(crate) const MAX_DEADLINE_MS: u64 = DEADLINE_MASK;

/// A slot word: its generation and deadline.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Slot {
    /// Bumped by every acquire of the slot (19 bits, wraps).
    pub generation: u64,
    /// When the permit in it ends (ms since the Unix epoch); 0 = released.
    pub deadline_ms: u64,
}

impl Slot {
    /// Decode a slot word (the frozen bit aside).
    #[inline]
    pub(crate) fn decode(w: u64) -> Slot {
        Slot {
            generation: (w >> DEADLINE_BITS) & GEN_MASK,
            deadline_ms: w & DEADLINE_MASK,
        }
    }

    /// The word.
    #[inline]
    pub(crate) fn encode(&self) -> u64 {
        ((self.generation & GEN_MASK) << DEADLINE_BITS) | (self.deadline_ms & DEADLINE_MASK)
    }

    /// Whether a permit holds the slot at `now_ms`.
    #[inline]
    pub(crate) fn held_at(&self, now_ms: u64) -> bool {
        self.deadline_ms > now_ms
    }
}

/// Word offsets inside a permit entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct PermitLayout {
    /// The first slot word.
    pub slots_at: usize,
    /// Lines the entry takes.
    pub lines: u32,
}

impl PermitLayout {
    /// The layout for a key of `key_len` bytes.
    pub(crate) fn new(key_len: usize) -> PermitLayout {
        let slots_at = 1 + key_len.div_ceil(8);
        PermitLayout {
            slots_at,
            lines: ((slots_at + MAX_PERMITS as usize) * 8).div_ceil(LINE) as u32,
        }
    }
}

/// The header word of a permit entry for `key`, crc included.
pub(crate) fn permits_header(key: &[u8]) -> u64 {
    let h = EntryHeader::new(key.len(), 0, KIND_PERMITS);
    h.with_crc(entry_crc(h.low(), &[], key)).encode()
}

fn backoff(spins: u32) {
    if spins > 64 {
        std::thread::yield_now();
    } else {
        std::hint::spin_loop();
    }
}

impl Core {
    fn slot<'g>(&'g self, line: u64, l: &PermitLayout, i: usize) -> Result<&'g AtomicU64> {
        self.segs
            .entry(line)
            .w(l.slots_at + i)
            .ok_or(Error::Corrupt {
                offset: self.segs.file_offset(line),
                reason: "permit entry outside its segment",
            })
    }

    /// Take one of `cap` permits of `key` until `now_ms + lease_ms`; `None` if `cap` are held.
    pub(crate) fn acquire_permit(
        &self,
        key: &[u8],
        cap: u32,
        lease_ms: u64,
        now_ms: u64,
    ) -> Result<Option<Permit>> {
        check_key(key)?;
        if cap > MAX_PERMITS {
            return Err(Error::InvalidLimit("a concurrency cap above MAX_PERMITS"));
        }
        let deadline = now_ms.saturating_add(lease_ms);
        if lease_ms == 0 || deadline > MAX_DEADLINE_MS {
            return Err(Error::InvalidLimit(
                "a permit lease of 0, or one ending after the year 2527",
            ));
        }
        if cap == 0 {
            return Ok(None);
        }
        self.saw(now_ms);
        let l = PermitLayout::new(key.len());
        let guard = crossbeam_epoch::pin();
        let mut spins = 0u32;
        'lookup: loop {
            let line =
                self.find_or_insert_kind(key, KIND_PERMITS, l.lines, now_ms, &guard, |line| {
                    self.init_slots(line, &l);
                    permits_header(key)
                })?;
            for i in 0..cap as usize {
                let w = self.slot(line, &l, i)?;
                let mut s = w.load(Ordering::Acquire);
                loop {
                    if s & FROZEN != 0 {
                        // Being unlinked: the index will soon point elsewhere.
                        spins += 1;
                        backoff(spins);
                        continue 'lookup;
                    }
                    let old = Slot::decode(s);
                    if old.held_at(now_ms) {
                        break;
                    }
                    let new = Slot {
                        generation: old.generation.wrapping_add(1),
                        deadline_ms: deadline,
                    }
                    .encode();
                    match w.compare_exchange(s, new, Ordering::SeqCst, Ordering::Acquire) {
                        Ok(_) => {
                            let held = self.held_in(line, &l, now_ms)?;
                            let permit = Permit {
                                key: key.to_vec(),
                                slot: i as u32,
                                stamp: new,
                                deadline_ms: deadline,
                                held,
                            };
                            if held > cap {
                                // Permits taken under a higher cap, in slots past this one,
                                // still run: give the slot back (module docs).
                                self.release_permit(&permit)?;
                                return Ok(None);
                            }
                            return Ok(Some(permit));
                        }
                        Err(now) => s = now,
                    }
                }
            }
            return Ok(None);
        }
    }

    /// The slots of a new entry: free, each with a random generation, so that a permit of an
    /// entry the compactor unlinked can never match a slot of the entry that replaces it
    /// (the same deadline and the same generation by chance: 1 in 2^19).
    fn init_slots(&self, line: u64, l: &PermitLayout) {
        let e = self.segs.entry(line);
        for i in 0..MAX_PERMITS as usize {
            if let Some(w) = e.w(l.slots_at + i) {
                let free = Slot {
                    generation: random_word(),
                    deadline_ms: 0,
                };
                w.store(free.encode(), Ordering::Relaxed);
            }
        }
    }

    /// Permits held in the entry at `line` at `now_ms`.
    fn held_in(&self, line: u64, l: &PermitLayout, now_ms: u64) -> Result<u32> {
        let mut n = 0;
        for i in 0..MAX_PERMITS as usize {
            let s = self.slot(line, l, i)?.load(Ordering::SeqCst);
            n += u32::from(s & FROZEN == 0 && Slot::decode(s).held_at(now_ms));
        }
        Ok(n)
    }

    /// Permits of `key` held at `now_ms`.
    pub(crate) fn permits_held(&self, key: &[u8], now_ms: u64) -> Result<u32> {
        check_key(key)?;
        let guard = crossbeam_epoch::pin();
        let hash = self.hasher.hash_one(key);
        match self.find_kind(hash, key, KIND_PERMITS, &guard) {
            Some(line) => self.held_in(line, &PermitLayout::new(key.len()), now_ms),
            None => Ok(0),
        }
    }

    /// Give `permit` back; `false` if it was no longer held (past its deadline and taken
    /// again, or unlinked).
    pub(crate) fn release_permit(&self, permit: &Permit) -> Result<bool> {
        check_key(&permit.key)?;
        if permit.slot >= MAX_PERMITS {
            return Ok(false);
        }
        let guard = crossbeam_epoch::pin();
        let hash = self.hasher.hash_one(&permit.key);
        let Some(line) = self.find_kind(hash, &permit.key, KIND_PERMITS, &guard) else {
            return Ok(false);
        };
        let l = PermitLayout::new(permit.key.len());
        let w = self.slot(line, &l, permit.slot as usize)?;
        let freed = Slot {
            generation: Slot::decode(permit.stamp).generation,
            deadline_ms: 0,
        }
        .encode();
        Ok(
            w.compare_exchange(permit.stamp, freed, Ordering::SeqCst, Ordering::Acquire)
                .is_ok(),
        )
    }

    /// Unlink the permit entry at `line` if no slot is held at `now_ms` (the compactor).
    pub(crate) fn unlink_permits(
        &self,
        line: u64,
        key_len: usize,
        now_ms: u64,
        guard: &Guard,
    ) -> bool {
        let l = PermitLayout::new(key_len);
        // A first look without the lock: a held permit keeps the entry.
        if self.permits_view(line, key_len, now_ms).0 > 0 {
            return false;
        }
        let hash = self.rehash(line);
        let mut lock = self.index.lock(hash);
        if !self.index_points_at(line, KIND_PERMITS, guard) {
            return false;
        }
        let mut frozen = Vec::with_capacity(MAX_PERMITS as usize);
        let mut ok = true;
        for i in 0..MAX_PERMITS as usize {
            let Ok(w) = self.slot(line, &l, i) else {
                ok = false;
                break;
            };
            let s = w.load(Ordering::Acquire);
            if s & FROZEN != 0
                || Slot::decode(s).held_at(now_ms)
                || w.compare_exchange(s, s | FROZEN, Ordering::AcqRel, Ordering::Acquire)
                    .is_err()
            {
                ok = false;
                break;
            }
            frozen.push((w, s));
        }
        if !ok {
            for (w, s) in frozen {
                w.store(s, Ordering::Release);
            }
            return false;
        }
        lock.remove(hash, line, guard);
        self.clear_entry(line);
        self.live_entries.fetch_sub(1, Ordering::Relaxed);
        true
    }

    /// Check a permit entry read at open: header, padding, layout and crc; a slot left frozen
    /// by a crash mid-unlink held nothing (only free slots are frozen) and is unfrozen.
    pub(crate) fn check_permits_entry(&self, e: &Entry<'_>, class_lines: u32) -> Option<Vec<u8>> {
        let key = self.permits_entry_key(e)?;
        let l = PermitLayout::new(key.len());
        if l.lines != class_lines {
            return None;
        }
        for i in 0..MAX_PERMITS as usize {
            let w = e.w(l.slots_at + i)?;
            let s = w.load(Ordering::Acquire);
            if s & FROZEN != 0 {
                w.store(s & !FROZEN, Ordering::Release);
            }
        }
        Some(key)
    }

    /// The key of a permit entry whose header, padding and crc check out, and whose slots
    /// fit in its segment (reads only: `verify` calls it on a live store).
    pub(crate) fn permits_entry_key(&self, e: &Entry<'_>) -> Option<Vec<u8>> {
        let h = EntryHeader::decode(e.load(0));
        let key_len = h.key_len;
        if h.kind != KIND_PERMITS || h.windows != 0 || h.reserved != 0 {
            return None;
        }
        if key_len == 0 || key_len > MAX_KEY_LEN {
            return None;
        }
        let l = PermitLayout::new(key_len);
        e.w(l.slots_at + MAX_PERMITS as usize - 1)?;
        let key = read_key(e, 1, key_len)?;
        (permits_header(&key) == e.load(0)).then_some(key)
    }

    /// Permits held at `now_ms` in the entry at `line`, and their latest deadline (`visit`).
    pub(crate) fn permits_view(&self, line: u64, key_len: usize, now_ms: u64) -> (u32, u64) {
        let e = self.segs.entry(line);
        let l = PermitLayout::new(key_len);
        let (mut held, mut latest) = (0u32, 0u64);
        for i in 0..MAX_PERMITS as usize {
            let s = e.load(l.slots_at + i);
            let slot = Slot::decode(s);
            if s & FROZEN == 0 && slot.held_at(now_ms) {
                held += 1;
                latest = latest.max(slot.deadline_ms);
            }
        }
        (held, latest)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Options, Store};

    #[test]
    fn slot_words_and_layouts() {
        let s = Slot {
            generation: GEN_MASK,
            deadline_ms: 1_700_000_000_123,
        };
        assert_eq!(Slot::decode(s.encode()), s);
        assert_eq!(s.encode() & FROZEN, 0);
        assert!(s.held_at(1_700_000_000_122));
        assert!(!s.held_at(1_700_000_000_123));
        assert_eq!(PermitLayout::new(32).lines, 9);
        assert_eq!(PermitLayout::new(MAX_KEY_LEN).lines, 11);
    }

    #[test]
    fn cap_release_and_deadline() {
        let store = Store::open_in_memory(Options::default().compactor(false)).unwrap();
        let core = &store.core;
        let now = 1_700_000_000_000;
        let a = core.acquire_permit(b"t", 2, 1_000, now).unwrap().unwrap();
        let b = core.acquire_permit(b"t", 2, 1_000, now).unwrap().unwrap();
        assert_eq!((a.held(), b.held()), (1, 2));
        assert!(core.acquire_permit(b"t", 2, 1_000, now).unwrap().is_none());
        assert!(core.release_permit(&a).unwrap());
        assert!(!core.release_permit(&a).unwrap(), "released twice");
        let c = core.acquire_permit(b"t", 2, 1_000, now).unwrap().unwrap();
        assert_eq!(core.permits_held(b"t", now).unwrap(), 2);
        // At the deadline both slots are free again, and the old permits release nothing.
        assert_eq!(core.permits_held(b"t", now + 1_000).unwrap(), 0);
        let d = core
            .acquire_permit(b"t", 2, 1_000, now + 1_000)
            .unwrap()
            .unwrap();
        let _e = core
            .acquire_permit(b"t", 2, 1_000, now + 1_000)
            .unwrap()
            .unwrap();
        assert!(!core.release_permit(&b).unwrap());
        assert!(!core.release_permit(&c).unwrap());
        assert_eq!(core.permits_held(b"t", now + 1_000).unwrap(), 2);
        assert!(core.release_permit(&d).unwrap());
        assert!(core.acquire_permit(b"t", 0, 1_000, now).unwrap().is_none());
        assert!(core
            .acquire_permit(b"t", MAX_PERMITS + 1, 1_000, now)
            .is_err());
        assert!(core.acquire_permit(b"t", 1, 0, now).is_err());
    }

    /// A permit of an unlinked entry releases nothing in the entry that replaced it, even
    /// when the new permit has the same deadline (new entries draw their generations).
    #[test]
    fn a_permit_outlives_its_entry_harmlessly() {
        let store = Store::open_in_memory(Options::default().compactor(false)).unwrap();
        let core = &store.core;
        let now = 1_700_000_000_000;
        let old = core.acquire_permit(b"t", 1, 100, now).unwrap().unwrap();
        assert!(core.release_permit(&old).unwrap());
        assert_eq!(store.expire_now(now + 1).expired, 1);
        let new = core.acquire_permit(b"t", 1, 50, now + 50).unwrap().unwrap();
        assert_eq!(new.deadline_ms(), old.deadline_ms());
        assert!(!core.release_permit(&old).unwrap());
        assert_eq!(core.permits_held(b"t", now + 50).unwrap(), 1);
        assert!(core.release_permit(&new).unwrap());
    }
}
