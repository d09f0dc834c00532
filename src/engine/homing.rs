//! Keeping window entries in their home slots (`storage/segment/home.rs`), so that a check
//! finds its entry from the hash alone: the probe of the home bucket, the claim of a slot for
//! a new entry, the split of a full home segment, and the move of an entry found elsewhere
//! into a free slot of its bucket.
//!
//! An entry is away from home when its bucket was full as it was written, when its segment
//! split since (half its hashes lead to the new segment), or when the file was written with
//! another hash seed. The index finds it all the same; a check that finds it there while its
//! bucket has a free slot moves it home ([`Core::rehome`]), once, with the same freeze and
//! move a change of limits uses (`moves.rs`). A split moves the entries of the old segment
//! that belong to the new one itself, so that a segment's live count is its own entries.
//!
//! Lock order: the homing lock (splits), then a stripe lock, then the allocator's lock. A
//! split never runs under a stripe lock: the insert that wants one lets its lock go first.

use crossbeam_epoch::Guard;

use super::core::Core;
use super::entry::Place;
use crate::error::Result;
use crate::limit::Limits;
use crate::storage::format::{EntryHeader, KIND_WINDOWS};
use crate::storage::raw::Protector;
use crate::storage::segment::{Entry, Split, BUCKET, SPLIT_AT_PCT};

impl Core {
    /// Lines of a window entry for a `key_len`-byte key holding `limits`: its size class.
    #[inline]
    pub(crate) fn class_of(&self, limits: &Limits, key_len: usize) -> u32 {
        self.places(limits, key_len).lines() as u32
    }

    /// The window entry of `key` in its home bucket (entries of `class` lines), tried slot by
    /// slot from the one the hash names; `Err(room)` if it is not there, `room` saying whether
    /// the bucket has a free slot. The first slot tried has its lines loaded as
    /// [`Core::find_entry`] says, the others their header's.
    #[inline]
    pub(crate) fn find_home(
        &self,
        hash: u64,
        key: &[u8],
        class: usize,
        guard: &impl Protector,
    ) -> std::result::Result<(u64, Entry<'_>), bool> {
        let Some(b) = self.segs.home_bucket(class as u32, hash, guard) else {
            return Err(false);
        };
        // The bucket's slots lie in one segment: one view of it from slot 0, and each slot
        // an offset into it (no segment lookup per slot).
        let seg = self.segs.entry(b.base());
        let words = b.slot_words();
        let at = |k: u64| b.slot(k).map(|s| s as usize * words);
        // Every slot's header line starts loading at once: an entry that is not in the slot
        // its hash names (many are not: a slot is taken by whichever key of the bucket came
        // first) then costs no second miss in a row. Measured: PERFORMANCE.md, "Home slots".
        let own = at(0).unwrap_or(0);
        seg.prefetch_lines(own, class);
        for k in 1..BUCKET {
            if let Some(w) = at(k) {
                seg.prefetch(w);
            }
        }
        let mut room = false;
        for k in 0..BUCKET {
            let Some(e) = at(k).and_then(|w| seg.skip(w)) else {
                continue;
            };
            if self.holds(&e, key, KIND_WINDOWS) {
                return Ok((b.line(k).unwrap_or(0), e));
            }
            room |= e.load(0) == 0;
        }
        Err(room)
    }

    /// Claim a free slot of `hash`'s home bucket for a new entry of `lines` lines.
    pub(crate) fn claim_home(&self, hash: u64, lines: u32) -> Option<u64> {
        let guard = crossbeam_epoch::pin();
        let b = self.segs.home_bucket(lines, hash, &guard)?;
        self.segs.claim_home(&b)
    }

    /// Whether an entry of `class` lines for `hash` finds no free slot at home.
    pub(crate) fn home_is_full(&self, class: u32, hash: u64, guard: &Guard) -> bool {
        self.segs
            .home_bucket(class, hash, guard)
            .is_none_or(|b| !self.segs.home_has_room(&b))
    }

    /// Make room at home for `hash` (entries of `class` lines): the class's first home
    /// segment, or a split of the full segment `hash` leads to, moving the entries that now
    /// belong to the new segment. Called with no stripe lock held and no epoch pinned
    /// ([`Core::insert`]).
    #[cold]
    #[inline(never)]
    pub(crate) fn make_home_room(&self, class: u32, hash: u64) -> Result<()> {
        let _homing = self.homing.lock();
        // Another thread may have made the room meanwhile.
        let guard = crossbeam_epoch::pin();
        if !self.home_is_full(class, hash, &guard) || !self.segs.home_wants_split(class, hash) {
            return Ok(());
        }
        // A store bounded by `max_entries` grows its home no further than that bound needs:
        // a flood of new keys must not grow the file (tests/hostile.rs).
        if let Some(max) = self.max_entries {
            if self.segs.home_capacity(class) * SPLIT_AT_PCT / 100 >= max {
                return Ok(());
            }
        }
        drop(guard);
        // No segment to split into (`max_segments`, a failed growth): the entry goes where
        // any entry goes; the insert that follows meets the same condition and reports it.
        if let Ok(Some(split)) = self.segs.split_home(class, hash) {
            self.move_split(split, class);
            // The moves left a tombstone in every slot they emptied: hand them to the epoch
            // now and take back what it has released, so that the slots are free for the
            // keys that come next, not only once the epoch gets round to them.
            for _ in 0..4 {
                crossbeam_epoch::pin().flush();
            }
            self.segs.reclaim();
        }
        Ok(())
    }

    /// [`Core::make_home_room`] for a check that holds `guard`: let it go first (the split's
    /// moves then free their old slots at once), and pin again after. Out of line, so that
    /// the check's own pin stays its only one and inlined.
    #[cold]
    #[inline(never)]
    pub(crate) fn split_unpinned(&self, guard: Guard, class: u32, hash: u64) -> Result<Guard> {
        drop(guard);
        self.make_home_room(class, hash)?;
        Ok(crossbeam_epoch::pin())
    }

    /// Move every window entry of segment `split.from` whose hash now leads to `split.to`.
    fn move_split(&self, split: Split, class: u32) {
        let seg_lines = self.segs.seg_lines();
        for slot in 0..self.segs.home_slots(class) {
            let line = split.from as u64 * seg_lines + 1 + slot * u64::from(class);
            let guard = crossbeam_epoch::pin();
            let e = self.segs.entry(line);
            let h = EntryHeader::decode(e.load(0));
            if h.kind != KIND_WINDOWS {
                continue;
            }
            let (key, len) = self.entry_key(line);
            let key = key.get(..len).unwrap_or(&[]);
            let hash = self.hasher.hash_one(key);
            let Some(b) = self.segs.home_bucket(class, hash, &guard) else {
                continue;
            };
            if self.segs.seg_of(b.base()) == split.to {
                self.move_home(hash, line, key, class, &guard);
            }
        }
    }

    /// Move the window entry of `key` at `line`, found through the index, into a free slot of
    /// its home bucket, if it holds the windows of `limits` (then its size is theirs) and a
    /// slot is free. A failure leaves it where it is (the index still finds it).
    #[cold]
    #[inline(never)]
    pub(crate) fn rehome(&self, hash: u64, line: u64, key: &[u8], limits: &Limits, guard: &Guard) {
        if !self.holds_windows(&self.segs.entry(line), limits) {
            return; // other windows: the check moves it to its new ones first
        }
        self.move_home(hash, line, key, self.class_of(limits, key.len()), guard);
    }

    fn move_home(&self, hash: u64, line: u64, key: &[u8], class: u32, guard: &Guard) {
        let Some(b) = self.segs.home_bucket(class, hash, guard) else {
            return;
        };
        if let Some(to) = self.segs.claim_home(&b) {
            // The same windows, moved: `migrate` gives the slot back if it does not use it.
            let _ = self.migrate(hash, line, key, None, Place::At(to), guard);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::FileExt;

    use crate::storage::format::{FileHeader, SEED_AT, TOMBSTONE};
    use crate::{Limit, Limits, Options, Store};

    const NOW: u64 = 1_700_000_000_000;

    fn opts() -> Options {
        // 64 KiB segments: 255 slots of four lines (the test keys are 33 bytes), so a few
        // thousand keys split them often.
        Options::default()
            .segment_size_log2(16)
            .compactor(false)
            .home_slots(true)
    }

    fn pair() -> Limits {
        Limits::new(&[Limit::per_minute(60), Limit::per_hour(1000)]).unwrap()
    }

    fn key(i: u32) -> Vec<u8> {
        format!("tok-{i:08}-0123456789abcdefghij").into_bytes()
    }

    /// The line of `key`'s entry if its home bucket holds it.
    fn home_line(store: &Store, key: &[u8], limits: &Limits) -> Option<u64> {
        let core = &store.core;
        let guard = crossbeam_epoch::pin();
        let hash = core.hasher.hash_one(key);
        let class = core.class_of(limits, key.len());
        core.find_home(hash, key, class as usize, &guard)
            .ok()
            .map(|(line, _)| line)
    }

    /// How many of keys `0..n` are in their home bucket.
    fn at_home(store: &Store, n: u32) -> u32 {
        let limits = pair();
        (0..n)
            .filter(|&i| home_line(store, &key(i), &limits).is_some())
            .count() as u32
    }

    /// Check every key once at `now`; how many of them are at home afterwards. Every check
    /// must be admitted with `remaining` left in the minute window.
    fn pass(store: &Store, keys: u32, now: u64, remaining: u32) -> u32 {
        let limits = pair();
        let mut home = 0;
        for i in 0..keys {
            let k = key(i);
            let d = store.check_at(&k, &limits, 1, now).unwrap();
            assert!(d.allowed(), "key {i}");
            assert_eq!(
                d.remaining(),
                remaining,
                "key {i}: a move lost or doubled a count"
            );
            home += u32::from(home_line(store, &k, &limits).is_some());
        }
        home
    }

    #[test]
    fn entries_live_at_home_and_stay_there_across_an_open() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("h.tg");
        let n = 3000;
        let store = Store::open(&path, opts()).unwrap();
        let first = pass(&store, n, NOW, 59);
        // The second pass moves home what the first left away (its bucket was full before
        // its segment split).
        let second = pass(&store, n, NOW + 1, 58);
        assert!(second >= first, "{first} then {second}");
        // About nine in ten measured (a bucket of four in segments at most three quarters
        // full); the rest are found through the index.
        assert!(second * 100 >= n * 85, "{second} of {n} at home");
        store.close().unwrap();
        let store = Store::open(&path, opts()).unwrap();
        let r = store.open_report();
        assert_eq!(
            (r.entries, r.duplicates, r.corrupt_entries),
            (u64::from(n), 0, 0)
        );
        // Same seed, same directory: the reopened store finds them where they were.
        assert_eq!(at_home(&store, n), second);
        assert!(pass(&store, n, NOW + 2, 57) >= second);
    }

    #[test]
    fn a_removed_entry_leaves_a_tombstone_until_the_epoch_frees_its_slot() {
        let store = Store::open_in_memory(opts()).unwrap();
        let limits = pair();
        let k = key(7);
        assert!(store.check_at(&k, &limits, 1, NOW).unwrap().allowed());
        let line = home_line(&store, &k, &limits).expect("the first entry is at home");
        let core = &store.core;
        {
            // A reader pinned across the removal keeps the slot from being reused.
            let _reader = crossbeam_epoch::pin();
            // One pass, not `expire_now`, which would wait for the epoch this reader holds.
            let r = core.expire_pass(NOW + 2 * 3_600_000, 4096);
            assert_eq!(r.expired, 1);
            assert_eq!(core.segs.entry(line).load(0), TOMBSTONE);
            assert!(home_line(&store, &k, &limits).is_none());
        }
        for _ in 0..64 {
            crossbeam_epoch::pin().flush();
        }
        // Checked again, it is written at home again, from nothing.
        let d = store.check_at(&k, &limits, 1, NOW + 3 * 3_600_000).unwrap();
        assert_eq!(d.remaining(), 59);
        assert!(home_line(&store, &k, &limits).is_some());
    }

    #[test]
    fn a_file_written_with_other_hash_keys_moves_home_as_it_is_used() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.tg");
        let n = 1000;
        let store = Store::open(&path, opts()).unwrap();
        pass(&store, n, NOW, 59);
        store.close().unwrap();
        // Other keys: as if the file's seed had been lost, or written by an older build.
        let file = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
        file.write_all_at(&FileHeader::seed_bytes([3, 5, 7, 9]), SEED_AT as u64)
            .unwrap();
        drop(file);
        let store = Store::open(&path, opts()).unwrap();
        let before = at_home(&store, n);
        assert!(before * 4 < n, "{before} of {n} at home by chance");
        // A pass moves home every key whose bucket has a free slot; counts survive every
        // move. No insert comes, so no segment splits: what stays away has a full bucket.
        let after = pass(&store, n, NOW + 1, 58);
        // Measured: about a third of them (the home segments are as full as the old keys
        // left them, and a move home never splits a segment).
        assert!(
            after >= before + n / 5,
            "{before} then {after} of {n} at home"
        );
        let third = pass(&store, n, NOW + 2, 57);
        assert!(third >= after, "{after} then {third} of {n} at home");
    }

    #[test]
    fn free_lines_count_the_home_slots_that_hold_no_entry() {
        let store = Store::open_in_memory(opts()).unwrap();
        let limits = pair();
        pass(&store, 10, NOW, 59);
        let before = store.stats().free_lines;
        let k = key(10);
        assert!(store.check_at(&k, &limits, 1, NOW).unwrap().allowed());
        assert!(home_line(&store, &k, &limits).is_some());
        // One slot of four lines taken (the test keys make four-line entries).
        assert_eq!(store.stats().free_lines, before - 4);
        // Removed (a tombstone until the epoch frees it): counted free again.
        let r = store.core.expire_pass(NOW + 2 * 3_600_000, 4096);
        assert_eq!(r.expired, 11);
        assert_eq!(store.stats().free_lines, before + 10 * 4);
    }
}
