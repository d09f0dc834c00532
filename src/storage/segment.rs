//! Segments: the file grows by whole segments, each mapped once and never moved, and entries
//! are allocated from them in fixed size classes.
//!
//! A segment holds entries of one size (its class, 1 to 16 lines); its first line is the
//! segment header. Free entries of a class are kept in a free list, rebuilt when the store is
//! opened. An entry that leaves the index is not reused at once: its line goes through the
//! epoch (`release_later`), so no reader that might still hold it ever sees it rewritten.
//! Home segments (`home.rs`) place window entries by hash instead; blob segments (`blob.rs`)
//! hold response records; `growth.rs` grows the file.
//!
//! Every msync, fdatasync and fallocate of the segments goes through here (and through the
//! test hook, `hook.rs`); the first one that fails poisons the store: from then on every
//! write is refused with [`Error::Poisoned`] until the file is opened again.

use std::fs::File;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use parking_lot::Mutex;

use super::file::Census;
use super::format::{SegmentHeader, LINE, MAX_ENTRY_LINES, SEGMENTS_START};
use super::hook::{Hook, IoEvent};
use super::index::MAX_LINES;
use super::raw::{Map, Maps};
use super::readers;
use super::words::le_words;
use crate::error::{Error, Result};
use growth::Spare;
pub(crate) use home::{Split, BUCKET, SPLIT_AT_PCT};

mod blob;
mod growth;
mod home;

/// The most lines [`Segments::warm_next`] starts loading.
const WARM_LINES: u64 = 8;

/// The most lines [`Entry::prefetch_lines`] starts loading: the whole of ErzyCall's entry
/// (three lines), and the first ring of two windows of 16-bit counters (which ends in the
/// fourth).
const PREFETCH_LINES: usize = 4;

/// A view of one entry: its words, by index from its start (to the end of its segment).
#[derive(Clone, Copy)]
pub(crate) struct Entry<'a> {
    words: &'a [AtomicU64],
}

impl<'a> Entry<'a> {
    /// Word `i` of the entry (`None` past the segment's end).
    #[inline]
    pub(crate) fn w(&self, i: usize) -> Option<&'a AtomicU64> {
        self.words.get(i)
    }

    /// Words `i .. i + n` of the entry (`None` past the segment's end).
    #[inline]
    pub(crate) fn run(&self, i: usize, n: usize) -> Option<&'a [AtomicU64]> {
        self.words.get(i..i.checked_add(n)?)
    }

    /// Store `bytes` from word `at` on (Relaxed), as [`le_words`] gives them; words past the
    /// segment's end are not written.
    pub(crate) fn put_bytes(&self, at: usize, bytes: &[u8]) {
        let words = self.words.get(at..).unwrap_or(&[]);
        le_words(bytes, words, |w, v| w.store(v, Ordering::Relaxed));
    }

    /// Start loading the line that holds word `i`: see [`super::raw::prefetch`]. No bounds
    /// check (the address is only a hint; past the segment's end it loads nothing useful).
    #[inline(always)]
    pub(crate) fn prefetch(&self, i: usize) {
        super::raw::prefetch(self.words.as_ptr().wrapping_add(i));
    }

    /// Start loading the first `lines` lines from word `i` (an entry's start), at most
    /// [`PREFETCH_LINES`]. Bounded by the entry, so that a smaller entry's prefetch loads no
    /// line of the next one: always four lines cost a refusal at 1M keys 5-7 % where the
    /// entry's own three cost it 2-3 % (PERFORMANCE.md, "Every line of the entry at once").
    #[inline(always)]
    pub(crate) fn prefetch_lines(&self, i: usize, lines: usize) {
        self.prefetch(i);
        for k in 1..PREFETCH_LINES {
            if k < lines {
                self.prefetch(i + k * (LINE / 8));
            }
        }
    }

    /// The entry that starts at word `i` of this one (`None` past the segment's end).
    #[inline]
    pub(crate) fn skip(&self, i: usize) -> Option<Entry<'a>> {
        self.words.get(i..).map(|words| Entry { words })
    }

    /// Load word `i` (0 if out of range).
    #[inline]
    pub(crate) fn load(&self, i: usize) -> u64 {
        self.w(i).map_or(0, |w| w.load(Ordering::Acquire))
    }
}

#[derive(Default)]
struct Class {
    free: Vec<u64>,
    /// Segment being filled and the next unused line in it.
    current: Option<(usize, u64)>,
}

struct Alloc {
    classes: Vec<Class>,
    /// Segments whose header was never written: grown ahead of need (`growth.rs`), or left by
    /// a crash right after growing the file.
    blank: Vec<usize>,
    /// The blob segment being filled and its next free line.
    blob: Option<(usize, u64)>,
    /// Per segment index: lines of blob records written, and lines of those still live.
    blob_used: Vec<u64>,
    blob_live: Vec<u64>,
    /// Per segment index: the line after the furthest live record seen (at open), so that a
    /// gap left by a record whose header never got written does not hide the records after it.
    blob_floor: Vec<u64>,
    /// Per entry segment: the line after the last entry ever handed out or found in it (0:
    /// not known, the whole segment), so that scans skip a tail never used, also after a
    /// reopen.
    ends: Vec<u64>,
    /// The home segments (`home.rs`).
    homes: home::Book,
}

/// How full the blob segments are (lines of 64 bytes).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct BlobUsage {
    pub segments: u64,
    pub used_lines: u64,
    pub live_lines: u64,
}

/// Lines whose readers are gone: single lines, and whole runs freed by the compactor. A run is
/// handed over as it is (no copy, no growth of a shared list), because the thread that runs the
/// epoch's deferred functions is often one in the middle of a check.
#[derive(Default)]
struct Released {
    lines: Vec<(u64, u32)>,
    runs: Vec<Vec<(u64, u32)>>,
}

impl Released {
    fn is_empty(&self) -> bool {
        self.lines.is_empty() && self.runs.is_empty()
    }
}

/// The segments of a store and their allocator.
pub(crate) struct Segments {
    maps: Maps,
    file: Option<File>,
    seg_shift: u32,
    max_segments: usize,
    alloc: Mutex<Alloc>,
    /// Lines whose readers are gone, waiting to be handed out again.
    released: Arc<Mutex<Released>>,
    /// Lines handed to the epoch and not yet released.
    pending: Arc<AtomicU64>,
    /// Segments are private copy-on-write maps of a file open for reading (a read-only view):
    /// the file is never grown or written.
    private: bool,
    /// Map file segments with 2 MiB pages where the kernel can (`Options::huge_pages`).
    huge: bool,
    /// The test hook at every sync and allocation.
    hook: Hook,
    /// A sync or an allocation failed: every write is refused until the store is reopened.
    poisoned: AtomicBool,
    /// The spare segment grown ahead of need, off the request path (`growth.rs`).
    spare: Spare,
    /// Every size class's directory of home segments (`home.rs`).
    dirs: home::Dirs,
    /// New window entries go to home segments (`Options::home_slots`).
    homes_wanted: bool,
    /// Some home segment exists (made now, or found at open): checks try home slots first.
    any_home: AtomicBool,
}

impl Segments {
    /// A segment table over `file` (or anonymous memory when `None`), for at most
    /// `max_segments` segments and never more than [`Segments::most_segments`].
    pub(crate) fn new(file: Option<File>, seg_shift: u32, max_segments: usize) -> Segments {
        let max_segments = max_segments.min(Segments::most_segments(seg_shift));
        Segments {
            maps: Maps::new(max_segments, 1 << seg_shift),
            file,
            seg_shift,
            max_segments,
            alloc: Mutex::new(Alloc {
                classes: (0..=MAX_ENTRY_LINES).map(|_| Class::default()).collect(),
                blank: Vec::new(),
                blob: None,
                blob_used: Vec::new(),
                blob_live: Vec::new(),
                blob_floor: Vec::new(),
                ends: Vec::new(),
                homes: home::Book::default(),
            }),
            released: Arc::new(Mutex::new(Released::default())),
            pending: Arc::new(AtomicU64::new(0)),
            private: false,
            huge: false,
            hook: Hook::default(),
            poisoned: AtomicBool::new(false),
            spare: Spare::default(),
            dirs: home::Dirs::new(1 << (seg_shift - 6)),
            homes_wanted: false,
            any_home: AtomicBool::new(false),
        }
    }

    /// Call `hook` at every sync and allocation (tests).
    pub(crate) fn set_hook(&mut self, hook: Hook) {
        self.hook = hook;
    }

    /// `Err(Error::Poisoned)` once a sync or an allocation has failed.
    #[inline]
    pub(crate) fn writable(&self) -> Result<()> {
        if self.poisoned.load(Ordering::Relaxed) {
            Err(Error::Poisoned)
        } else {
            Ok(())
        }
    }

    /// Whether a sync or an allocation has failed.
    #[inline]
    pub(crate) fn is_poisoned(&self) -> bool {
        self.poisoned.load(Ordering::Relaxed)
    }

    /// Run a sync or an allocation; its failure poisons the store.
    fn durable<T>(&self, r: std::io::Result<T>) -> Result<T> {
        r.map_err(|e| {
            self.poisoned.store(true, Ordering::Release);
            Error::Io(e)
        })
    }

    /// Ask for 2 MiB pages for every file segment mapped from now on (`Options::huge_pages`).
    pub(crate) fn set_huge_pages(&mut self) {
        self.huge = true;
    }

    /// Put new window entries in home segments (`Options::home_slots`).
    pub(crate) fn set_home_slots(&mut self) {
        self.homes_wanted = true;
    }

    /// Map the file's segments as private copy-on-write maps (read-only views).
    pub(crate) fn set_private(&mut self) {
        self.private = true;
    }

    /// Lines per segment.
    #[inline]
    pub(crate) fn seg_lines(&self) -> u64 {
        1 << (self.seg_shift - 6)
    }

    /// Bytes per segment.
    pub(crate) fn seg_len(&self) -> u64 {
        1 << self.seg_shift
    }

    /// Number of mapped segments.
    pub(crate) fn count(&self) -> usize {
        self.maps.count()
    }

    /// The entry starting at global line `line`.
    #[inline]
    pub(crate) fn entry(&self, line: u64) -> Entry<'_> {
        let shift = self.seg_shift - 6;
        let seg = (line >> shift) as usize;
        let off = ((line & (self.seg_lines() - 1)) as usize) * LINE;
        Entry {
            words: self.maps.words_from(seg, off),
        }
    }

    /// The header line of segment `seg`, as bytes.
    pub(crate) fn read_segment_header(&self, seg: usize) -> [u8; LINE] {
        let mut b = [0u8; LINE];
        for (i, chunk) in b.chunks_exact_mut(8).enumerate() {
            let v = self
                .maps
                .word(seg, i * 8)
                .map_or(0, |w| w.load(Ordering::Acquire));
            chunk.copy_from_slice(&v.to_le_bytes());
        }
        b
    }

    /// Write a segment's header line, its first word (the magic) last: a process killed
    /// between the stores leaves a line whose magic is still zero, which open reads as a header
    /// never finished ([`SegmentHeader::unfinished`]), not as a damaged one. Nothing is written
    /// into a segment before its header is whole.
    fn write_segment_header(&self, seg: usize, h: SegmentHeader) {
        for (i, chunk) in h.encode().chunks_exact(8).enumerate().rev() {
            let mut x = [0u8; 8];
            x.copy_from_slice(chunk);
            if let Some(w) = self.maps.word(seg, i * 8) {
                w.store(u64::from_le_bytes(x), Ordering::Release);
            }
        }
    }

    /// Map the `count` segments already in the file (at open).
    pub(crate) fn map_existing(&self, count: usize) -> Result<()> {
        for i in 0..count {
            let map = match &self.file {
                Some(f) if self.private => Map::file_private(
                    f,
                    SEGMENTS_START + i as u64 * self.seg_len(),
                    1 << self.seg_shift,
                )?,
                Some(f) => {
                    let off = SEGMENTS_START + i as u64 * self.seg_len();
                    let map = Map::file(f, off, 1 << self.seg_shift)?;
                    if self.huge {
                        map.advise_huge();
                    }
                    map
                }
                None => return Err(Error::InvalidOptions("no file to map")),
            };
            self.maps.push(map)?;
        }
        Ok(())
    }

    /// Register segment `seg` (found at open) as blank, or as a segment of `entry_lines` whose
    /// entries at `free_lines` are free and whose entries end before line `end` of the segment.
    pub(crate) fn adopt(
        &self,
        seg: usize,
        header: Option<SegmentHeader>,
        free_lines: Vec<u64>,
        end: u64,
    ) {
        if header.is_none() {
            // A segment whose header line is zero: normally one a crash left right after the
            // file grew (all zero), but its body may hold old entries if only the header was
            // lost. Zero it all before reuse, so that nothing in it is ever served.
            self.zero_segment(seg);
        }
        let mut a = self.alloc.lock();
        match header {
            None => a.blank.push(seg),
            Some(h) => match h.home {
                // A home segment's free slots are free by their header word alone (a removed
                // entry's tombstone, a claim a crash cut short: both free now).
                Some(tag) => {
                    for &line in &free_lines {
                        // Only a word that is not zero yet: a page left as it was stays clean.
                        if let Some(w) = self
                            .entry(line)
                            .w(0)
                            .filter(|w| w.load(Ordering::Relaxed) != 0)
                        {
                            w.store(0, Ordering::Relaxed);
                        }
                    }
                    let slots = self.home_slots(h.entry_lines);
                    let live = slots.saturating_sub(free_lines.len() as u64);
                    self.adopt_home(&mut a, seg, h.entry_lines, tag, live);
                }
                None => {
                    if let Some(c) = a.classes.get_mut(h.entry_lines as usize) {
                        c.free.extend(free_lines);
                    }
                    set_at(&mut a.ends, seg, end.max(1));
                }
            },
        }
    }

    /// The line after the last one ever handed out in entry segment `seg` (so that scans skip
    /// the untouched tail of the segment being filled).
    pub(crate) fn scan_end(&self, seg: usize) -> u64 {
        let a = self.alloc.lock();
        match get_at(&a.ends, seg) {
            0 => self.seg_lines(),
            end => end.min(self.seg_lines()),
        }
    }

    /// The most segments of `1 << seg_shift` bytes a store's file may hold: 4 TiB in all
    /// ([`MAX_LINES`] lines, what the index's words can point at).
    pub(crate) fn most_segments(seg_shift: u32) -> usize {
        let seg_lines = 1u64 << seg_shift.saturating_sub(6).min(63);
        usize::try_from(MAX_LINES / seg_lines).unwrap_or(usize::MAX)
    }

    /// Start loading the `lines` lines after the run of `lines` at `line`, which a segment's
    /// bump allocation hands out next to an entry of the same size: the next new entry's
    /// writes then find its lines in cache instead of waiting for each to be read in (a
    /// record and its response are written to lines nothing has touched since the segment
    /// was faulted in). Only within the segment; at most [`WARM_LINES`] lines.
    pub(super) fn warm_next(&self, line: u64, lines: u64) {
        // The next run must end inside this segment (and so start in it).
        if (line & (self.seg_lines() - 1)) + 2 * lines > self.seg_lines() {
            return;
        }
        let e = self.entry(line + lines);
        for i in 0..lines.min(WARM_LINES) {
            e.prefetch((i as usize) * (LINE / 8));
        }
    }

    /// Note that the entry at global line `line` of `lines` lines is handed out.
    fn note_end(&self, a: &mut Alloc, line: u64, lines: u32) {
        let seg = self.seg_of(line);
        let end = (line & (self.seg_lines() - 1)) + u64::from(lines);
        if get_at(&a.ends, seg) < end {
            set_at(&mut a.ends, seg, end);
        }
    }

    /// Whether every line of segment `seg` after its header line is zero: nothing was ever
    /// written into it (read at open, for a header a crash cut short).
    pub(crate) fn body_is_zero(&self, seg: usize) -> bool {
        let seg_lines = self.seg_lines();
        (1..seg_lines).all(|line| {
            let e = self.entry(seg as u64 * seg_lines + line);
            (0..LINE / 8).all(|i| e.w(i).is_none_or(|w| w.load(Ordering::Relaxed) == 0))
        })
    }

    /// Zero the header line of segment `seg`, from the magic on: a kill part way leaves a line
    /// open reads as unfinished ([`SegmentHeader::unfinished`]). For a recycled response
    /// segment (after its body) and a header a crash cut short over a blank body.
    pub(crate) fn clear_segment_header(&self, seg: usize) {
        for i in 0..LINE / 8 {
            if let Some(w) = self.maps.word(seg, i * 8) {
                w.store(0, Ordering::Release);
            }
        }
    }

    /// Zero every line of segment `seg` after its header line.
    fn zero_segment(&self, seg: usize) {
        let seg_lines = self.seg_lines();
        for line in 1..seg_lines {
            let e = self.entry(seg as u64 * seg_lines + line);
            for i in 0..LINE / 8 {
                if let Some(w) = e.w(i) {
                    if w.load(Ordering::Relaxed) != 0 {
                        w.store(0, Ordering::Relaxed);
                    }
                }
            }
        }
    }

    /// The segment index of global line `line`.
    pub(crate) fn seg_of(&self, line: u64) -> usize {
        (line >> (self.seg_shift - 6)) as usize
    }

    /// Byte offset in the file of global line `line` (for error reports).
    pub(crate) fn file_offset(&self, line: u64) -> u64 {
        let seg = line >> (self.seg_shift - 6);
        SEGMENTS_START + seg * self.seg_len() + (line & (self.seg_lines() - 1)) * LINE as u64
    }

    /// Flush `lines` lines from `line` to the file (msync), and the header line of their
    /// segment with them: a segment header written since the last sync must reach the disk
    /// with the first entry synced in it, or a power cut would leave that entry in a segment
    /// that reads as blank (zeroed at open).
    pub(crate) fn flush_lines(&self, line: u64, lines: u64) -> Result<()> {
        self.writable()?;
        if self.file.is_none() {
            return Ok(());
        }
        let seg = (line >> (self.seg_shift - 6)) as usize;
        let off = ((line & (self.seg_lines() - 1)) as usize) * LINE;
        self.msync(seg, 0, LINE)?;
        self.msync(seg, off, lines as usize * LINE)
    }

    /// msync bytes `off..off + len` of segment `seg`.
    fn msync(&self, seg: usize, off: usize, len: usize) -> Result<()> {
        let event = IoEvent::Msync {
            offset: SEGMENTS_START + seg as u64 * self.seg_len() + off as u64,
            len: len as u64,
        };
        self.durable(
            self.hook
                .run(event, || self.maps.flush_range(seg, off, len)),
        )
    }

    /// Allocate an entry of `lines` lines; its words are zero... except the header word, which
    /// the caller writes last.
    pub(crate) fn alloc(&self, lines: u32) -> Result<u64> {
        self.alloc_inner(lines, false)
    }

    fn alloc_inner(&self, lines: u32, retried: bool) -> Result<u64> {
        readers::collect();
        let mut a = self.alloc.lock();
        self.drain_released(&mut a);
        let seg_lines = self.seg_lines();
        let class = lines as usize;
        if let Some(line) = a.classes.get_mut(class).and_then(|c| c.free.pop()) {
            self.note_end(&mut a, line, lines);
            self.zero(line, lines);
            return Ok(line);
        }
        let current = a.classes.get(class).and_then(|c| c.current);
        if let Some((seg, next)) = current {
            if next + u64::from(lines) <= seg_lines {
                if let Some(c) = a.classes.get_mut(class) {
                    c.current = Some((seg, next + u64::from(lines)));
                }
                let line = seg as u64 * seg_lines + next;
                self.note_end(&mut a, line, lines);
                self.warm_next(line, u64::from(lines));
                return Ok(line);
            }
        }
        // Before taking a new segment, give entries waiting for the epoch a chance to come
        // back: reuse beats growth.
        if !retried && a.blank.is_empty() && self.pending.load(Ordering::Acquire) > 0 {
            drop(a);
            for _ in 0..4 {
                crossbeam_epoch::pin().flush();
                readers::collect();
                if !self.released.lock().is_empty() {
                    break;
                }
                std::thread::yield_now();
            }
            return self.alloc_inner(lines, true);
        }
        // A new segment for this class: a blank one (grown ahead, or left by a crash), a
        // spare, or a new one, grown without the allocator's lock and then taken from the top.
        if self.must_grow(&a) {
            drop(a);
            self.grow_spares()?;
            return self.alloc_inner(lines, true);
        }
        let seg = self.take_segment(&mut a)?;
        self.write_segment_header(
            seg,
            SegmentHeader {
                index: seg as u32,
                entry_lines: lines,
                home: None,
            },
        );
        if let Some(c) = a.classes.get_mut(class) {
            c.current = Some((seg, 1 + u64::from(lines)));
        }
        set_at(&mut a.ends, seg, 1 + u64::from(lines));
        Ok(seg as u64 * seg_lines + 1)
    }

    /// Hand `line` back once every reader pinned now has finished, and then every read
    /// section open at that point (`readers.rs`).
    pub(crate) fn release_later(&self, line: u64, lines: u32, guard: &crossbeam_epoch::Guard) {
        let released = Arc::clone(&self.released);
        let pending = Arc::clone(&self.pending);
        pending.fetch_add(1, Ordering::AcqRel);
        guard.defer(move || {
            readers::retire(Box::new(move || {
                released.lock().lines.push((line, lines));
                pending.fetch_sub(1, Ordering::AcqRel);
            }));
        });
    }

    /// Hand every `(line, lines)` of `freed` back once every reader pinned now has finished,
    /// and then every read section open at that point: one deferred function for all of
    /// them, which moves the run into the free list's queue as it is.
    pub(crate) fn release_all_later(&self, freed: Vec<(u64, u32)>, guard: &crossbeam_epoch::Guard) {
        if freed.is_empty() {
            return;
        }
        let released = Arc::clone(&self.released);
        let pending = Arc::clone(&self.pending);
        let n = freed.len() as u64;
        pending.fetch_add(n, Ordering::AcqRel);
        guard.defer(move || {
            readers::retire(Box::new(move || {
                released.lock().runs.push(freed);
                pending.fetch_sub(n, Ordering::AcqRel);
            }));
        });
    }

    /// Entries handed to the epoch whose space is not back yet.
    pub(crate) fn pending_releases(&self) -> u64 {
        self.pending.load(Ordering::Acquire)
    }

    fn zero(&self, line: u64, lines: u32) {
        let e = self.entry(line);
        for i in 0..(lines as usize * LINE / 8) {
            if let Some(w) = e.w(i) {
                w.store(0, Ordering::Relaxed);
            }
        }
    }

    /// Leave a census of `entries` in the file's header page as the store goes away (see
    /// `file.rs`): a writable, file-backed store that is not poisoned.
    pub(crate) fn record_census(&self, census: Census) -> Result<()> {
        match &self.file {
            Some(f) if !self.private && !self.is_poisoned() => {
                super::file::record_census(f, census)
            }
            _ => Ok(()),
        }
    }

    /// Flush every segment (msync), then the file (fdatasync).
    pub(crate) fn flush(&self) -> Result<()> {
        self.writable()?;
        let Some(f) = &self.file else {
            return Ok(());
        };
        if self.private {
            return Ok(());
        }
        for seg in 0..self.maps.count() {
            self.msync(seg, 0, self.seg_len() as usize)?;
        }
        self.durable(self.hook.run(IoEvent::SyncFile, || f.sync_data()))
    }

    /// Free entries counted per class, and the home segments' slots not holding an entry
    /// (for stats).
    pub(crate) fn free_lines(&self) -> u64 {
        // Spares first, without the allocator's lock (see `Segments::blank_segments`).
        let spares = self.spares() as u64;
        let a = self.alloc.lock();
        let seg_lines = self.seg_lines();
        let listed: u64 = a
            .classes
            .iter()
            .enumerate()
            .map(|(l, c)| {
                let tail = c
                    .current
                    .map_or(0, |(_, next)| seg_lines.saturating_sub(next));
                c.free.len() as u64 * l as u64 + tail
            })
            .sum();
        listed + self.free_home_lines(&a) + (a.blank.len() as u64 + spares) * seg_lines
    }
}

fn get_at(v: &[u64], i: usize) -> u64 {
    v.get(i).copied().unwrap_or(0)
}

fn set_at(v: &mut Vec<u64>, i: usize, x: u64) {
    if v.len() <= i {
        v.resize(i + 1, 0);
    }
    if let Some(p) = v.get_mut(i) {
        *p = x;
    }
}

#[cfg(test)]
mod tests;
