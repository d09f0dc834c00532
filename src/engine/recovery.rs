//! Opening a file: read every segment, check every entry (crc, descriptors, state words),
//! clear what a crash left half done (lock bits, frozen copies, completions cut short,
//! claimed home slots) and rebuild the index and the home directories. What fails a check is
//! counted and never served.

use std::borrow::Cow;
use std::sync::atomic::Ordering;

use crossbeam_epoch::Guard;

use super::core::Core;
use crate::storage::file::Census;
use crate::storage::format::{
    BlobHeader, EntryHeader, SegmentHeader, BLOB_SEGMENT, CLAIMED, KIND_IDEM, KIND_PERMITS,
    KIND_VERSION, KIND_WINDOWS, TOMBSTONE,
};

/// What opening a store found (entries recovered, records skipped).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct OpenReport {
    /// Entries loaded into the index.
    pub entries: u64,
    /// Entries whose checksum or structure failed: skipped, never served.
    pub corrupt_entries: u64,
    /// Segments whose header failed (or a response segment whose first line is not a
    /// record): skipped whole, never served, never reused.
    pub corrupt_segments: u64,
    /// Entries found twice (a crash while an entry moved): the newer copy is kept.
    pub duplicates: u64,
    /// Segments whose header was never written (a crash while growing): reused.
    pub blank_segments: u64,
    /// Segments the file header records but the file no longer holds (its tail was cut):
    /// everything in them is gone, entries and stored responses alike ([`Self::missing_entries`]
    /// counts the entries when it can); records whose response was in them are refused with
    /// [`Error::Corrupt`](crate::Error::Corrupt) when replayed. See
    /// [`Options::refuse_lost_segments`](crate::Options::refuse_lost_segments) to refuse such
    /// a file instead.
    pub lost_segments: u64,
    /// Entries the file held when the store last went away in good order (the last handle
    /// dropped or closed) that this open did not load: lost with [`Self::lost_segments`], or
    /// skipped as [`Self::corrupt_entries`] or with [`Self::corrupt_segments`]. `None` when
    /// the file carries no such count: its last writer crashed (or was killed, or poisoned),
    /// so a loss of segments cannot be told in entries.
    pub missing_entries: Option<u64>,
    /// The header's segment-count word failed its check, or counted fewer segments than the
    /// file holds in use: the file's length was trusted, and a loss of segments could not be
    /// detected. The word is written again by this open.
    pub segment_count_damaged: bool,
}

/// The most threads an open scans entry segments with (each takes at least four segments).
const MAX_OPEN_THREADS: usize = 8;

/// What one scanning thread found: its segments, to be adopted once every thread is done,
/// and the second copies of keys it met, to be settled then.
#[derive(Default)]
struct Scanned {
    segments: Vec<SegmentScan>,
    report: OpenReport,
    /// Checked entries whose key the index already held.
    later: Vec<Checked>,
    /// The frozen window and record entries (a crash while they moved).
    frozen: Vec<u64>,
}

/// One scanned entry segment, waiting to be adopted (`Segments::adopt`).
struct SegmentScan {
    seg: usize,
    header: SegmentHeader,
    free: Vec<u64>,
    end: u64,
}

/// An entry that passed its checks at open, on its way to the index.
struct Checked {
    hash: u64,
    line: u64,
    kind: u8,
    frozen: bool,
}

/// How many checked entries wait for the index at once: each one's index slot was prefetched
/// when it joined, so its probe finds the slot loaded instead of waiting on a miss there (the
/// index of 10M keys is 64 tables of 262 144 eight-byte places, 128 MiB, probed in hash order).
const IN_FLIGHT: usize = 8;

/// The checked entries of one segment waiting for the index, first in, first out (the order
/// of the scan, so a key's two copies meet as they would one by one).
#[derive(Default)]
struct Queue {
    items: [Option<Checked>; IN_FLIGHT],
    /// The oldest item's place.
    head: usize,
    len: usize,
}

impl Queue {
    /// Add `c`; if the queue was full, the oldest entry comes back, to be indexed first.
    fn take(&mut self, c: Checked) -> Option<Checked> {
        let out = if self.len == IN_FLIGHT {
            self.next()
        } else {
            None
        };
        let at = (self.head + self.len) % IN_FLIGHT;
        if let Some(slot) = self.items.get_mut(at) {
            *slot = Some(c);
            self.len += 1;
        }
        out
    }

    /// The oldest entry waiting, if any.
    fn next(&mut self) -> Option<Checked> {
        if self.len == 0 {
            return None;
        }
        let c = self.items.get_mut(self.head).and_then(Option::take);
        self.head = (self.head + 1) % IN_FLIGHT;
        self.len -= 1;
        c
    }
}

impl Core {
    /// Scan the mapped segments, check every entry and rebuild the index. `expected`: how
    /// many entries the file held when it was last closed in good order, if it says: the
    /// index is sized for them first.
    ///
    /// The entry segments are scanned by up to [`MAX_OPEN_THREADS`] threads (the index takes
    /// concurrent inserts); the second copy of a key (a crash while it moved) is set aside and
    /// settled after they finish, by the rule a scan in file order applies, so the outcome
    /// does not depend on which thread got there first. Segments are adopted last, in order.
    pub(crate) fn recover(&self, count: usize, expected: Option<Census>) -> OpenReport {
        let mut report = OpenReport::default();
        let seg_lines = self.segs.seg_lines();
        if let Some(c) = expected {
            // No more than the segments have lines: a census is never trusted past the file.
            let lines = (count as u64).saturating_mul(seg_lines);
            let n = c.entries.min(lines);
            let guard = crossbeam_epoch::pin();
            self.index.reserve(n - c.records.min(n), &guard);
            self.records.reserve(c.records.min(n), &guard);
        }
        let mut blob_segments = Vec::new();
        let mut entry_segments = Vec::new();
        for seg in 0..count {
            let line = self.segs.read_segment_header(seg);
            match SegmentHeader::decode(&line, seg as u32) {
                Ok(Some(h)) if h.entry_lines == BLOB_SEGMENT => {
                    // Adopted after the entries are read: their pointers say how far it is
                    // used.
                    match self.scan_blobs(seg) {
                        Some(end) => blob_segments.push((seg, end)),
                        None => report.corrupt_segments += 1,
                    }
                }
                Ok(Some(h)) => entry_segments.push((seg, h)),
                Ok(None) => {
                    report.blank_segments += 1;
                    self.segs.adopt(seg, None, Vec::new(), 0);
                }
                // A header a crash cut short over a body never written: blank.
                Err(_) if SegmentHeader::unfinished(&line) && self.segs.body_is_zero(seg) => {
                    self.segs.clear_segment_header(seg);
                    report.blank_segments += 1;
                    self.segs.adopt(seg, None, Vec::new(), 0);
                }
                Err(_) => report.corrupt_segments += 1,
            }
        }
        let threads = std::thread::available_parallelism()
            .map_or(1, |n| n.get())
            .min(MAX_OPEN_THREADS)
            .min(entry_segments.len() / 4)
            .max(1);
        let mut parts: Vec<Scanned> = if threads == 1 {
            vec![self.scan_segments(&entry_segments, 0, 1)]
        } else {
            std::thread::scope(|scope| {
                let workers: Vec<_> = (0..threads)
                    .map(|t| {
                        let segments = &entry_segments;
                        scope.spawn(move || self.scan_segments(segments, t, threads))
                    })
                    .collect();
                workers
                    .into_iter()
                    .map(|w| w.join().unwrap_or_else(|p| std::panic::resume_unwind(p)))
                    .collect()
            })
        };
        let mut segments = Vec::new();
        let mut later = Vec::new();
        let mut frozen = std::collections::HashSet::new();
        for part in parts.iter_mut() {
            report.entries += part.report.entries;
            report.corrupt_entries += part.report.corrupt_entries;
            segments.append(&mut part.segments);
            later.append(&mut part.later);
            frozen.extend(part.frozen.drain(..));
        }
        segments.sort_unstable_by_key(|s| s.seg);
        later.sort_unstable_by_key(|c| c.line);
        let guard = crossbeam_epoch::pin();
        for c in later {
            report.duplicates += 1;
            self.settle_copy(&c, &frozen, &mut segments, &guard);
        }
        for s in segments {
            self.segs.adopt(s.seg, Some(s.header), s.free, s.end);
        }
        for (seg, scanned) in blob_segments {
            self.segs.adopt_blob(seg, scanned);
        }
        self.segs.rebuild_homes();
        report
    }

    /// Scan every `threads`-th entry segment of `segments` from the `first`: check each
    /// entry, clear what fails, index the first copy of each key.
    fn scan_segments(
        &self,
        segments: &[(usize, SegmentHeader)],
        first: usize,
        threads: usize,
    ) -> Scanned {
        let guard = crossbeam_epoch::pin();
        let mut out = Scanned::default();
        for &(seg, header) in segments.iter().skip(first).step_by(threads) {
            let scan = self.scan_segment(seg, header, &mut out, &guard);
            out.segments.push(scan);
        }
        out
    }

    /// One entry segment of [`Core::scan_segments`].
    fn scan_segment(
        &self,
        seg: usize,
        header: SegmentHeader,
        out: &mut Scanned,
        guard: &Guard,
    ) -> SegmentScan {
        let seg_lines = self.segs.seg_lines();
        let mut free = Vec::new();
        let mut queue = Queue::default();
        let lines = u64::from(header.entry_lines);
        let mut at = 1;
        // The line after the last entry found: scans skip the tail after it.
        let mut end = 1;
        while at + lines <= seg_lines {
            let line = seg as u64 * seg_lines + at;
            at += lines;
            let e = self.segs.entry(line);
            let head = e.load(0);
            // Free: never used, or (in a home segment) a removed entry's tombstone or a slot
            // claimed for an entry a crash cut short.
            if head == 0 || head == TOMBSTONE || head == CLAIMED {
                free.push(line);
                continue;
            }
            end = at;
            let kind = EntryHeader::decode(head).kind;
            // A window entry's key stays on the stack (most entries are window entries).
            let window_key;
            let checked: Option<(Cow<'_, [u8]>, bool)> = match kind {
                KIND_WINDOWS => match self.check_entry(&e, header.entry_lines) {
                    Some((kw, frozen)) => {
                        window_key = kw.bytes();
                        let (bytes, len) = &window_key;
                        Some((Cow::Borrowed(bytes.get(..*len).unwrap_or(&[])), frozen))
                    }
                    None => None,
                },
                KIND_IDEM => self
                    .check_idem_entry(&e, header.entry_lines)
                    .map(|(k, frozen)| (Cow::Owned(k), frozen)),
                // Never moved: a second copy of a key is damage, and the first is kept.
                KIND_VERSION => self
                    .check_version_entry(&e, header.entry_lines)
                    .map(|k| (Cow::Owned(k), true)),
                KIND_PERMITS => self
                    .check_permits_entry(&e, header.entry_lines)
                    .map(|k| (Cow::Owned(k), true)),
                _ => None,
            };
            match checked {
                Some((key, frozen)) => {
                    // The key as stored, so the same hash as `rehash(line)`. Its index slot
                    // starts loading now and is probed a few entries later.
                    let hash = self.hasher.hash_one(&*key);
                    self.index_of(kind).prefetch(hash, guard);
                    if frozen && (kind == KIND_WINDOWS || kind == KIND_IDEM) {
                        out.frozen.push(line);
                    }
                    let entry = Checked {
                        hash,
                        line,
                        kind,
                        frozen,
                    };
                    if let Some(first) = queue.take(entry) {
                        self.index_at_open(first, out, guard);
                    }
                }
                None => {
                    out.report.corrupt_entries += 1;
                    self.clear_entry(line);
                    free.push(line);
                }
            }
        }
        while let Some(first) = queue.next() {
            self.index_at_open(first, out, guard);
        }
        SegmentScan {
            seg,
            header,
            free,
            end,
        }
    }

    /// Put a checked entry in the index, or set it aside if its key is there already (a
    /// second copy: [`Core::settle_copy`] decides which one stays, once every segment is
    /// scanned).
    fn index_at_open(&self, c: Checked, out: &mut Scanned, guard: &Guard) {
        let (bytes, len) = self.entry_key(c.line);
        let key = bytes.get(..len).unwrap_or(&[]);
        let mut lock = self.index_of(c.kind).lock(c.hash);
        match self.find_kind(c.hash, key, c.kind, guard) {
            None => {
                lock.insert(c.hash, c.line, guard, self);
                out.report.entries += 1;
                if c.kind == KIND_IDEM {
                    self.counters.live_records.fetch_add(1, Ordering::Relaxed);
                }
            }
            Some(_) => out.later.push(c),
        }
    }

    /// Keep one of two copies of a key: the later one in the file if it is not frozen (the
    /// frozen copy is the one that was being moved away), else the earlier one; free the
    /// other into its segment's free lines (`segments`, not adopted yet). `frozen`: the frozen
    /// window and record entries; version and permit entries count as frozen (never moved: a
    /// second copy is damage, and the first is kept).
    fn settle_copy(
        &self,
        c: &Checked,
        frozen: &std::collections::HashSet<u64>,
        segments: &mut [SegmentScan],
        guard: &Guard,
    ) {
        let (bytes, len) = self.entry_key(c.line);
        let key = bytes.get(..len).unwrap_or(&[]);
        let mut lock = self.index_of(c.kind).lock(c.hash);
        let Some(other) = self.find_kind(c.hash, key, c.kind, guard) else {
            return;
        };
        let is_frozen = |line: u64, f: bool| match c.kind {
            KIND_WINDOWS | KIND_IDEM => frozen.contains(&line),
            _ => f,
        };
        let (early, late) = if other < c.line {
            ((other, is_frozen(other, true)), (c.line, c.frozen))
        } else {
            ((c.line, c.frozen), (other, is_frozen(other, true)))
        };
        let (keep, lose) = if late.1 {
            (early.0, late.0)
        } else {
            (late.0, early.0)
        };
        if keep != other {
            lock.replace(c.hash, other, keep, guard);
        }
        self.clear_entry(lose);
        let seg = self.segs.seg_of(lose);
        if let Ok(i) = segments.binary_search_by_key(&seg, |s| s.seg) {
            if let Some(s) = segments.get_mut(i) {
                s.free.push(lose);
            }
        }
    }

    /// The line after the last blob record of segment `seg` (scanned at open); `None` if its
    /// first line is neither zero nor a record. No crash leaves that (a record's first word is
    /// written last, a recycled segment is zeroed from its end): the header that calls the
    /// segment a response segment is wrong (an entry segment's, say), and the segment is
    /// skipped whole like any segment whose header fails. Its records are still read through
    /// their pointers, each checked by its crc.
    fn scan_blobs(&self, seg: usize) -> Option<u64> {
        let seg_lines = self.segs.seg_lines();
        let mut at = 1u64;
        while at < seg_lines {
            let head = self.segs.entry(seg as u64 * seg_lines + at).load(0);
            if head == 0 {
                return Some(at);
            }
            match BlobHeader::decode(head) {
                Some(b) if b.len as usize <= self.segs.max_blob() => at += b.lines(),
                _ if at == 1 => return None,
                // Not a record: nothing after it can be trusted to be free.
                _ => return Some(seg_lines),
            }
        }
        Some(seg_lines)
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::FileExt;

    use crate::idempotency::record::IdemLayout;
    use crate::idempotency::{record_key, Begin, Fingerprint, IdempotencyKey, StoredResponse};
    use crate::storage::format::KIND_IDEM;
    use crate::{Options, Store};

    /// A store with one completed record; the file offsets of its entry and of its response.
    fn one_record(path: &std::path::Path) -> (u64, u64) {
        let store = Store::open(path, opts()).unwrap();
        let key = IdempotencyKey::parse("4d9c3a41-6bb7-4c4e-9a39-8f3c2d7e1f00").unwrap();
        let fp = Fingerprint::of("POST", "/x", b"{}");
        let Begin::Started(lease) = store.begin(b"tok", &key, &fp).unwrap() else {
            panic!("a new key starts");
        };
        store
            .complete(&lease, &StoredResponse::new(200, vec![7; 500]))
            .unwrap();
        let rk = record_key(b"tok", &key).unwrap();
        let k = rk.as_bytes();
        let core = &store.core;
        let line = {
            let guard = crossbeam_epoch::pin();
            core.find_kind(core.hasher.hash_one(k), k, KIND_IDEM, &guard)
                .unwrap()
        };
        let e = core.segs.entry(line);
        let blob = e.load(IdemLayout::new(k.len()).state_at + 1);
        let offsets = (core.segs.file_offset(line), core.segs.file_offset(blob));
        store.close().unwrap();
        offsets
    }

    fn opts() -> Options {
        Options::default().segment_size_log2(16).compactor(false)
    }

    /// Overwrite the file's bytes at `at` (a closed store's file).
    fn write_at(path: &std::path::Path, at: u64, bytes: &[u8]) {
        let file = std::fs::OpenOptions::new().write(true).open(path).unwrap();
        file.write_all_at(bytes, at).unwrap();
    }

    /// Where the segment holding file offset `at` starts, and its length.
    fn segment_of(path: &std::path::Path, at: u64) -> (u64, u64) {
        let seg_len = Store::open(path, opts()).unwrap().core.segs.seg_len();
        let start = crate::storage::format::SEGMENTS_START;
        (start + (at - start) / seg_len * seg_len, seg_len)
    }

    /// A process killed while it wrote a segment's header line (the magic last) or zeroed it
    /// (a response segment recycled: its body first, then the header from the magic on)
    /// leaves the magic zero and other words not: over a blank body, that segment is blank,
    /// not damaged, and its header line is cleared.
    #[test]
    fn a_segment_header_a_crash_cut_short_is_blank_over_a_blank_body() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("r.tg");
        let (_, blob) = one_record(&path);
        let (seg, seg_len) = segment_of(&path, blob);
        let len = usize::try_from(seg_len).unwrap();
        write_at(&path, seg + 64, &vec![0; len - 64]);
        write_at(&path, seg, &[0; 8]);
        let store = Store::open(&path, opts()).unwrap();
        let r = store.open_report();
        assert_eq!(r.corrupt_segments, 0, "{r:?}");
        assert_eq!(store.stats().blob_segments, 0);
        store.close().unwrap();
        let mut head = [1u8; 64];
        std::fs::File::open(&path)
            .unwrap()
            .read_exact_at(&mut head, seg)
            .unwrap();
        assert_eq!(head, [0; 64], "the torn header line is cleared");
    }

    /// The same header line over a body that holds something is damage, not a crash: the
    /// segment is counted corrupt, not zeroed as blank.
    #[test]
    fn a_header_without_its_magic_over_a_written_body_is_corrupt() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("r.tg");
        let (_, blob) = one_record(&path);
        let (seg, _) = segment_of(&path, blob);
        write_at(&path, seg, &[0; 8]);
        let r = Store::open(&path, opts()).unwrap().open_report();
        assert_eq!(r.corrupt_segments, 1, "{r:?}");
    }

    /// A response segment whose first record head is not one is skipped as corrupt (its
    /// records are still read through their pointers, and refused when they fail).
    #[test]
    fn a_response_segment_not_starting_with_a_record_is_corrupt() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("r.tg");
        let (_, blob) = one_record(&path);
        write_at(&path, blob, b"TGBX");
        let store = Store::open(&path, opts()).unwrap();
        let r = store.open_report();
        assert_eq!((r.entries, r.corrupt_segments), (1, 1), "{r:?}");
        assert_eq!(store.stats().blob_segments, 0);
    }

    #[test]
    fn a_damaged_response_length_is_not_counted_as_space_in_use() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("r.tg");
        let (entry, _) = one_record(&path);
        let meta = entry + 8 * (IdemLayout::new(20).state_at as u64 + 2);
        write_at(&path, meta, &u32::MAX.to_le_bytes());
        let store = Store::open(&path, opts()).unwrap();
        let s = store.stats();
        assert_eq!(store.open_report().corrupt_entries, 0);
        // The segment's one record (500 bytes and its head: 9 lines) is all that was written;
        // the damaged record counts nothing live.
        assert_eq!((s.blob_used_lines, s.blob_live_lines), (9, 0), "{s:?}");
    }

    #[test]
    fn the_queue_gives_entries_back_in_the_order_they_came() {
        let c = |line| super::Checked {
            hash: line,
            line,
            kind: 0,
            frozen: false,
        };
        let mut q = super::Queue::default();
        let mut out = Vec::new();
        for line in 0..20u64 {
            out.extend(q.take(c(line)).map(|x| x.line));
        }
        // Full at IN_FLIGHT: every later entry pushes the oldest out.
        assert_eq!(out, (0..20 - super::IN_FLIGHT as u64).collect::<Vec<_>>());
        while let Some(x) = q.next() {
            out.push(x.line);
        }
        assert_eq!(out, (0..20).collect::<Vec<_>>());
        assert!(q.next().is_none());
    }

    /// A key found twice (a crash while it moved), its copies in segments that two threads
    /// scan: the copy kept is the one a scan in file order keeps (the later copy unless it is
    /// frozen), whichever thread indexed its copy first.
    #[test]
    fn a_key_found_twice_keeps_the_copy_a_scan_in_file_order_keeps() {
        use crate::storage::format::SegmentHeader;
        use crate::{Limit, Limits};
        const NOW: u64 = 1_700_000_000_000;
        let limits = Limits::new(&[Limit::per_minute(60), Limit::per_hour(1000)]).unwrap();
        let key = |i: u32| format!("tok_{i:028}").into_bytes();
        for later_frozen in [false, true] {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("dup.tg");
            let store = Store::open(&path, opts()).unwrap();
            // 64 KiB segments (1 024 lines) of three-line entries: 4 000 keys fill 12, so an
            // open on two cores scans them with two threads.
            for i in 0..4000 {
                store.check_at(&key(i), &limits, 1, NOW).unwrap();
            }
            let k = key(0);
            for _ in 0..4 {
                store.check_at(&k, &limits, 1, NOW).unwrap();
            }
            let core = &store.core;
            let guard = crossbeam_epoch::pin();
            let from = core.find(core.hasher.hash_one(&k[..]), &k, &guard).unwrap();
            let seg_lines = core.segs.seg_lines();
            let class = |seg: usize| {
                SegmentHeader::decode(&core.segs.read_segment_header(seg), seg as u32)
                    .ok()
                    .flatten()
                    .map(|h| h.entry_lines)
            };
            let lines = class(core.segs.seg_of(from)).unwrap();
            assert!(core.segs.count() >= 8, "{} segments", core.segs.count());
            // A free place of the same size in the last segment of that size whose place in
            // the scan's order has the other parity (the other thread's, with two).
            let to = (0..core.segs.count())
                .rev()
                .filter(|&s| class(s) == Some(lines) && s % 2 != core.segs.seg_of(from) % 2)
                .find_map(|s| {
                    (0..(seg_lines - 1) / u64::from(lines))
                        .map(|j| s as u64 * seg_lines + 1 + j * u64::from(lines))
                        .find(|&l| core.segs.entry(l).load(0) == 0)
                })
                .unwrap();
            assert!(to > from);
            let (src, dst) = (core.segs.entry(from), core.segs.entry(to));
            for w in (0..lines as usize * 8).rev() {
                dst.w(w)
                    .unwrap()
                    .store(src.load(w), std::sync::atomic::Ordering::Relaxed);
            }
            drop(guard);
            // The copy holds 5; the first copy counts two more, 7.
            for _ in 0..2 {
                store.check_at(&k, &limits, 1, NOW).unwrap();
            }
            if later_frozen {
                let at = core.places(&limits, k.len());
                let head = dst.w(at.of(0).head).unwrap();
                head.fetch_or(crate::window::FROZEN, std::sync::atomic::Ordering::Relaxed);
            }
            store.close().unwrap();
            let store = Store::open(&path, opts()).unwrap();
            let r = store.open_report();
            assert_eq!((r.entries, r.duplicates, r.corrupt_entries), (4000, 1, 0));
            let d = store.peek_at(&k, &limits, NOW).unwrap();
            let kept = if later_frozen { 7 } else { 5 };
            assert_eq!(
                d.remaining(),
                60 - kept,
                "later copy frozen: {later_frozen}"
            );
            // The copy not kept is free again: the other keys are all there.
            for i in (1..4000).step_by(97) {
                assert_eq!(
                    store.peek_at(&key(i), &limits, NOW).unwrap().remaining(),
                    59
                );
            }
        }
    }
}
