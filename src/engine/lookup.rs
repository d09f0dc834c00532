//! Key to entry: the lock-free probe of the index and the comparison of the stored key, the
//! insert of a new key under its stripe lock, and the bound on the number of entries.

use std::sync::atomic::Ordering;

use crossbeam_epoch::Guard;

use super::core::Core;
use super::entry::{KeyWords, Place};
use crate::error::{Error, Result};
use crate::key::MAX_KEY_LEN;
use crate::limit::Limits;
use crate::storage::format::{EntryHeader, EntryLayout, KIND_WINDOWS};
use crate::storage::index::Rehash;
use crate::storage::raw::Protector;
use crate::storage::segment::Entry;
use crate::storage::words::le_tail;

impl Core {
    #[inline]
    pub(crate) fn find(&self, hash: u64, key: &[u8], guard: &Guard) -> Option<u64> {
        self.find_kind(hash, key, KIND_WINDOWS, guard)
    }

    /// Find the entry of `kind` for `key` without a lock.
    #[inline]
    pub(crate) fn find_kind(&self, hash: u64, key: &[u8], kind: u8, guard: &Guard) -> Option<u64> {
        self.index_of(kind)
            .find(hash, guard, |line| self.matches(line, key, kind))
    }

    /// Find the window entry for `key` (holding `limits`) without a lock: its line, the entry
    /// itself, and whether it was found away from home while its home bucket has a free slot
    /// (worth a move home: `homing.rs`). Its home bucket first if the store has home segments,
    /// then the index.
    /// `lines`: the lines of an entry of `key` holding the check's windows (its size class,
    /// [`WindowsAt::lines`]). Every line of a candidate (at most four:
    /// [`Entry::prefetch_lines`]) starts loading before its header is read, so the misses of a
    /// cold entry's lines overlap instead of following one another: the header's and the
    /// heads', and the rings' that a check starting a new sub-window reads and rewrites (for a
    /// key checked less often than its shortest window's sub-window, every check).
    #[inline]
    pub(crate) fn find_entry(
        &self,
        hash: u64,
        key: &[u8],
        lines: usize,
        guard: &impl Protector,
    ) -> Option<(u64, Entry<'_>, bool)> {
        let mut room = false;
        if self.segs.has_homes() {
            match self.find_home(hash, key, lines, guard) {
                Ok((line, e)) => return Some((line, e, false)),
                Err(r) => room = r,
            }
        }
        self.find_away(hash, key, lines, guard)
            .map(|(line, e)| (line, e, room))
    }

    /// [`Core::find_entry`] through the index.
    #[inline]
    fn find_away(
        &self,
        hash: u64,
        key: &[u8],
        lines: usize,
        guard: &impl Protector,
    ) -> Option<(u64, Entry<'_>)> {
        self.index.find_map(hash, guard, |line| {
            let e = self.segs.entry(line);
            e.prefetch_lines(0, lines);
            self.holds(&e, key, KIND_WINDOWS).then_some((line, e))
        })
    }

    /// Whether the entry at `line` is an entry of `kind` for `key`.
    #[inline]
    pub(crate) fn matches(&self, line: u64, key: &[u8], kind: u8) -> bool {
        self.holds(&self.segs.entry(line), key, kind)
    }

    /// Whether `e` is an entry of `kind` for `key`.
    #[inline]
    pub(super) fn holds(&self, e: &Entry<'_>, key: &[u8], kind: u8) -> bool {
        let h = EntryHeader::decode(e.load(0));
        if h.key_len != key.len() || h.kind != kind {
            return false;
        }
        let n = h.windows;
        // The key's words, fetched as one run (one bounds check, not one per word).
        let Some(words) = e.run(EntryLayout::key_at(n), key.len().div_ceil(8)) else {
            return false;
        };
        let (whole, rest) = key.as_chunks::<8>();
        for (c, w) in whole.iter().zip(words) {
            if w.load(Ordering::Relaxed) != u64::from_le_bytes(*c) {
                return false;
            }
        }
        if rest.is_empty() {
            return true;
        }
        words
            .last()
            .is_some_and(|w| Some(w.load(Ordering::Relaxed)) == le_tail(key))
    }

    /// Find the key under its stripe lock, or write a new entry for it: in its home bucket if
    /// a slot is free there, else anywhere. `Ok(None)` (only if `may_split`): its home segment
    /// is full and due to split first; the caller lets its epoch guard go, calls
    /// [`Core::make_home_room`] and looks again. Unpinned, the split's moves free their old
    /// slots at once (a pinned caller would hold them for the epoch, and the segment would
    /// look full again).
    #[cold]
    #[inline(never)]
    pub(crate) fn insert(
        &self,
        hash: u64,
        key: &[u8],
        limits: &Limits,
        guard: &Guard,
        now_ms: u64,
        may_split: bool,
    ) -> Result<Option<u64>> {
        self.make_room(now_ms)?;
        let kw = KeyWords::new(key)?;
        let lock = self.index.lock(hash);
        if let Some(line) = self.find(hash, key, guard) {
            return Ok(Some(line));
        }
        if may_split {
            let class = self.class_of(limits, key.len());
            if self.home_is_full(class, hash, guard) && self.segs.home_wants_split(class, hash) {
                return Ok(None);
            }
        }
        let mut lock = lock;
        let descs = limits.descriptors();
        let line = self.write_entry(&kw, descs, Place::Home(hash), |_, _| None)?;
        lock.insert(hash, line, guard, self);
        self.live_entries.fetch_add(1, Ordering::Relaxed);
        Ok(Some(line))
    }

    /// Find the entry of `kind` for `key`, or write one under the key's stripe lock:
    /// `write(line)` fills every word of the `lines` lines allocated at `line` but the header,
    /// and returns the header word, stored last (with `Release`) before the index entry that
    /// makes the new entry reachable. For the kinds that are never moved (versions, permits).
    pub(crate) fn find_or_insert_kind(
        &self,
        key: &[u8],
        kind: u8,
        lines: u32,
        now_ms: u64,
        guard: &Guard,
        write: impl Fn(u64) -> u64,
    ) -> Result<u64> {
        let hash = self.hasher.hash_one(key);
        if let Some(line) = self.find_kind(hash, key, kind, guard) {
            return Ok(line);
        }
        self.make_room(now_ms)?;
        let mut lock = self.index_of(kind).lock(hash);
        if let Some(line) = self.find_kind(hash, key, kind, guard) {
            return Ok(line);
        }
        let line = self.segs.alloc(lines)?;
        let e = self.segs.entry(line);
        e.put_bytes(1, key);
        let header = write(line);
        if let Some(w) = e.w(0) {
            w.store(header, Ordering::Release);
        }
        lock.insert(hash, line, guard, self);
        self.live_entries.fetch_add(1, Ordering::Relaxed);
        Ok(line)
    }

    /// `Ok` if a new entry may be added: below `max_entries`, or brought below it by a short
    /// expiry pass. Never evicts a live entry.
    pub(crate) fn make_room(&self, now_ms: u64) -> Result<()> {
        let Some(max) = self.max_entries else {
            return Ok(());
        };
        if self.live_entries.load(Ordering::Relaxed) < max {
            return Ok(());
        }
        // A pass that reached the end of the store before finding anything goes on from its
        // start once (after a reopen, or a pass of the compactor, the cursor may be anywhere).
        let r = self.expire_pass(now_ms, 1024);
        if r.expired == 0 && r.wrapped {
            self.expire_pass(now_ms, 1024);
        }
        if self.live_entries.load(Ordering::Relaxed) < max {
            Ok(())
        } else {
            Err(Error::CapacityExhausted)
        }
    }

    /// The key stored in the entry at `line` (any kind), and its length.
    pub(crate) fn entry_key(&self, line: u64) -> ([u8; MAX_KEY_LEN], usize) {
        let e = self.segs.entry(line);
        let h = EntryHeader::decode(e.load(0));
        let len = h.key_len;
        let key_at = EntryLayout::key_at(h.windows);
        let mut key = [0u8; MAX_KEY_LEN];
        for (i, chunk) in key.chunks_exact_mut(8).take(len.div_ceil(8)).enumerate() {
            chunk.copy_from_slice(&e.load(key_at + i).to_le_bytes());
        }
        (key, len.min(MAX_KEY_LEN))
    }

    /// The hash of the key stored at `line`.
    pub(crate) fn rehash(&self, line: u64) -> u64 {
        let (key, len) = self.entry_key(line);
        self.hasher.hash_one(key.get(..len).unwrap_or(&[]))
    }

    /// Whether the index maps the key stored at `line` to `line`.
    pub(crate) fn index_points_at(&self, line: u64, kind: u8, guard: &Guard) -> bool {
        let (key, len) = self.entry_key(line);
        let key = key.get(..len).unwrap_or(&[]);
        self.find_kind(self.hasher.hash_one(key), key, kind, guard) == Some(line)
    }

    /// Mark the entry at `line` removed, once it has left the index (`Segments::clear`).
    pub(crate) fn clear_entry(&self, line: u64) {
        self.segs.clear(line);
    }
}

/// Read `key_len` key bytes from word `at` of `e`; `None` if a padding byte is not zero.
pub(crate) fn read_key(
    e: &crate::storage::segment::Entry<'_>,
    at: usize,
    key_len: usize,
) -> Option<Vec<u8>> {
    let mut key = Vec::with_capacity(key_len.div_ceil(8) * 8);
    for i in 0..key_len.div_ceil(8) {
        key.extend_from_slice(&e.load(at + i).to_le_bytes());
    }
    if key.get(key_len..)?.iter().any(|&b| b != 0) {
        return None;
    }
    key.truncate(key_len);
    Some(key)
}

/// What the index asks of the entries when a stripe grows: the key's first two lines (the
/// header and, for entries of up to a few windows, the key) loaded ahead, then its hash.
impl Rehash for Core {
    fn prefetch(&self, line: u64) {
        let e = self.segs.entry(line);
        e.prefetch(0);
        e.prefetch(8);
    }

    fn hash(&self, line: u64) -> u64 {
        self.rehash(line)
    }
}

#[cfg(test)]
mod tests {
    use crate::key::MAX_KEY_LEN;
    use crate::storage::format::{KIND_IDEM, KIND_WINDOWS};
    use crate::{Limit, Limits, Options, Store};

    #[test]
    fn every_key_length_finds_its_own_entry_and_no_other() {
        // Keys of every length from 1 to the maximum, each a prefix of the next (so a wrong
        // length check or a wrong last word would find a neighbour's entry), and a twin of
        // each differing only in its last byte.
        let store = Store::open_in_memory(Options::default().compactor(false)).unwrap();
        let limits = Limits::new(&[Limit::per_minute(1000)]).unwrap();
        let now = 1_700_000_000_000;
        let base: Vec<u8> = (0..MAX_KEY_LEN as u32)
            .map(|i| b'a' + (i % 26) as u8)
            .collect();
        for len in 1..=MAX_KEY_LEN {
            let key = &base[..len];
            let mut twin = key.to_vec();
            twin[len - 1] ^= 0x20;
            // `len` checks of the key, one of its twin.
            for _ in 0..len % 7 + 1 {
                store.check_at(key, &limits, 1, now).unwrap();
            }
            store.check_at(&twin, &limits, 1, now).unwrap();
        }
        let core = &store.core;
        let guard = crossbeam_epoch::pin();
        for len in 1..=MAX_KEY_LEN {
            let key = &base[..len];
            let mut twin = key.to_vec();
            twin[len - 1] ^= 0x20;
            let used = |k: &[u8]| store.peek_at(k, &limits, now).unwrap().windows()[0].used();
            assert_eq!(used(key), (len % 7 + 1) as u32, "key of {len} bytes");
            assert_eq!(used(&twin), 1, "twin of {len} bytes");
            // The comparison itself, on the key's entry: different hashes keep the lookups
            // above from ever comparing a key with a neighbour's entry.
            let line = core.find(core.hasher.hash_one(key), key, &guard).unwrap();
            assert!(core.matches(line, key, KIND_WINDOWS));
            assert!(!core.matches(line, key, KIND_IDEM));
            assert!(
                !core.matches(line, &twin, KIND_WINDOWS),
                "twin of {len} bytes"
            );
            assert!(!core.matches(line, &base[..len - 1], KIND_WINDOWS));
            if len < MAX_KEY_LEN {
                assert!(!core.matches(line, &base[..len + 1], KIND_WINDOWS));
            }
        }
        assert_eq!(store.stats().entries, 2 * MAX_KEY_LEN as u64);
    }

    /// Window and permit entries in the checks' index, records and versions in the records'
    /// own, at run time and after a reopen (which sizes each from the census).
    #[test]
    fn records_and_versions_keep_out_of_the_checks_index() {
        use crate::{Fingerprint, IdempotencyKey};
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("split.tg");
        let limits = Limits::new(&[Limit::per_minute(5)]).unwrap();
        let counts = |store: &Store| (store.core.index.len(), store.core.records.len());
        let scope = b"tok_a";
        let keys: Vec<IdempotencyKey> = (1..=4u128)
            .map(|i| {
                IdempotencyKey::from_uuid(
                    uuid::Builder::from_random_bytes(i.to_le_bytes()).into_uuid(),
                )
                .unwrap()
            })
            .collect();
        {
            let store = Store::open(&path, Options::default().compactor(false)).unwrap();
            for k in [&b"tok_a:/x"[..], b"tok_b:/x", b"tok_c:/y"] {
                store.check(k, &limits, 1).unwrap();
            }
            for k in &keys {
                store
                    .begin(scope, k, &Fingerprint::from_bytes([1; 32]))
                    .unwrap();
            }
            store.bump_version(b"order/7").unwrap();
            assert_eq!(counts(&store), (3, 5));
            assert_eq!(store.stats().entries, 8);
        }
        let store = Store::open(&path, Options::default().compactor(false)).unwrap();
        assert_eq!(store.open_report().missing_entries, Some(0));
        assert_eq!(counts(&store), (3, 5));
        let core = &store.core;
        let guard = crossbeam_epoch::pin();
        let key = b"tok_b:/x";
        assert!(core.find(core.hasher.hash_one(key), key, &guard).is_some());
        assert_eq!(store.peek(key, &limits).unwrap().windows()[0].used(), 1);
    }
}
