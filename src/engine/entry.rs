//! The window entry: the one codec that writes an entry for a key and its windows, finds
//! where its windows are (against a check's `Limits`: [`Core::windows_at`]; from the entry
//! alone: [`entry_windows`]), and checks one read back from the file. The header word is
//! [`EntryHeader`]'s; the order of the words is [`EntryLayout`]'s (`storage/format.rs`), from
//! `window::places` (every window's head part, then every ring).

use std::sync::atomic::{AtomicU64, Ordering};

use super::core::Core;
use crate::error::{Error, Result};
use crate::key::MAX_KEY_LEN;
use crate::limit::{Descriptor, Limits, MAX_WINDOWS};
use crate::storage::format::{entry_crc, lines_of_words, EntryHeader, EntryLayout, KIND_WINDOWS};
use crate::storage::segment::Entry;
use crate::storage::words::le_words;
use crate::window::cell::{META_FROZEN, META_HEAD, META_LOCK};
use crate::window::sliding::{self, Slide, Window};
use crate::window::{At, FROZEN};

/// Where a new window entry goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Place {
    /// In its home bucket for this hash if a slot is free there, else anywhere.
    Home(u64),
    /// In this slot, claimed for it (`Segments::claim_home`).
    At(u64),
}

/// `descs` decoded (checked by [`Core::layout_for`] first; a bad one reads as empty).
fn decode_all(descs: &[u32]) -> [Descriptor; MAX_WINDOWS] {
    let mut decoded = [NO_DESCRIPTOR; MAX_WINDOWS];
    for (d, &raw) in decoded.iter_mut().zip(descs) {
        *d = Descriptor::decode(raw).unwrap_or(NO_DESCRIPTOR);
    }
    decoded
}

/// Where each window of a set lies in an entry of one key ([`Core::places`]): the entry's
/// first state word and the set's offsets from it, borrowed from its `Limits` (no copy of
/// them on a check).
pub(crate) struct WindowsAt<'l> {
    /// The entry's first state word (after its key).
    state_at: usize,
    /// Each window's places from there (one pointer, so that the check keeps this in
    /// registers: an owned copy made it a 72-byte value the check copied).
    rel: &'l [At; MAX_WINDOWS],
    /// Lines of the whole entry: its size class ([`Core::class_of`] reads it from here).
    lines: usize,
}

impl WindowsAt<'_> {
    /// Where window `i` lies in the entry (`None` past [`MAX_WINDOWS`]).
    #[inline]
    pub(crate) fn get(&self, i: usize) -> Option<At> {
        self.rel.get(i).map(|a| a.plus(self.state_at))
    }

    /// Where window `i` lies in the entry; `i` is a window of the set (below [`MAX_WINDOWS`]),
    /// else the first state word (never reached: every caller's `i` is).
    #[inline]
    pub(crate) fn of(&self, i: usize) -> At {
        self.get(i).unwrap_or_default()
    }

    /// Lines of the whole entry (its size class): what a look-up starts loading as soon as
    /// it has a candidate ([`Core::find_entry`]).
    #[inline]
    pub(crate) fn lines(&self) -> usize {
        self.lines
    }
}

/// Words of the longest key.
const KEY_WORDS: usize = MAX_KEY_LEN / 8;
/// Largest admission time an exact ring can hold (ms + 1): 10000-01-01.
const MAX_RING_TIME: u64 = 253_402_300_800_000;
/// The most state words one window takes: an exact ring of the largest limit, or a sliding
/// window with the widest counters.
const STATE_BUF: usize = {
    let exact = 1 + crate::MAX_EXACT_LIMIT as usize;
    let slide = 2 + sliding::MAX_RING_WORDS;
    if exact > slide {
        exact
    } else {
        slide
    }
};

/// The sliding window whose head part and ring part are at `at` in entry `e` (`None` if they
/// do not fit in the entry's segment).
#[inline]
pub(crate) fn sliding_window<'a>(
    e: &Entry<'a>,
    at: At,
    geo: &Slide,
) -> Option<Window<'a, AtomicU64>> {
    Window::parts(
        e.run(at.head, geo.head_words())?,
        e.run(at.ring, geo.ring_words())?,
        geo,
    )
}

/// A key split into words, as entries store it.
pub(crate) struct KeyWords {
    pub(crate) len: usize,
    words: [u64; KEY_WORDS],
}

impl KeyWords {
    /// The words of `key` (refused if empty or too long).
    pub(crate) fn new(key: &[u8]) -> Result<KeyWords> {
        if key.is_empty() || key.len() > MAX_KEY_LEN {
            return Err(Error::InvalidKey { len: key.len() });
        }
        let mut words = [0u64; KEY_WORDS];
        le_words(key, words.iter_mut(), |w, v| *w = v);
        Ok(KeyWords {
            len: key.len(),
            words,
        })
    }

    fn n_words(&self) -> usize {
        self.len.div_ceil(8)
    }

    /// The key's bytes.
    pub(crate) fn bytes(&self) -> ([u8; MAX_KEY_LEN], usize) {
        let mut b = [0u8; MAX_KEY_LEN];
        for (chunk, w) in b.chunks_exact_mut(8).zip(self.words.iter()) {
            chunk.copy_from_slice(&w.to_le_bytes());
        }
        (b, self.len)
    }
}

/// The raw descriptors of a window entry with `n` windows (two to a word after the header).
#[inline]
pub(crate) fn raw_descriptors(e: &Entry<'_>, n: usize) -> [u32; MAX_WINDOWS] {
    let mut descs = [0u32; MAX_WINDOWS];
    for (i, d) in descs.iter_mut().take(n).enumerate() {
        *d = (e.load(1 + i / 2) >> ((i % 2) * 32)) as u32;
    }
    descs
}

/// The windows of the window entry `e` as its header and descriptor words say, in a store with
/// `b` sub-windows: each one's place and descriptor; `None` if a descriptor does not decode or
/// the windows do not fit an entry. What reads an entry without `Limits` to compare it with
/// (expiry, inspection, verification) goes through here, so every reader finds the words where
/// [`EntryLayout`] put them.
pub(crate) fn entry_windows(e: &Entry<'_>, b: u32) -> Option<EntryWindows> {
    let h = EntryHeader::decode(e.load(0));
    let n = h.windows;
    if n == 0 || n > MAX_WINDOWS {
        return None;
    }
    let mut decoded = [NO_DESCRIPTOR; MAX_WINDOWS];
    for (d, &raw) in decoded.iter_mut().zip(&raw_descriptors(e, n)).take(n) {
        *d = Descriptor::decode(raw)?;
    }
    let layout = EntryLayout::new(decoded.get(..n)?, h.key_len, b)?;
    let mut items = [(At::default(), NO_DESCRIPTOR); MAX_WINDOWS];
    for (item, (&at, &d)) in items.iter_mut().zip(layout.at.iter().zip(&decoded)) {
        *item = (at, d);
    }
    Some(EntryWindows { items, n })
}

/// A placeholder for descriptors past a set's windows (never read).
const NO_DESCRIPTOR: Descriptor = Descriptor {
    window_ms: 0,
    exact: false,
    cap: 0,
    bits: 0,
};

/// The windows of an entry, each one's place and descriptor ([`entry_windows`]): an array,
/// so that the compactor's sweeps do not allocate for every entry they look at.
#[derive(Clone, Copy)]
pub(crate) struct EntryWindows {
    items: [(At, Descriptor); MAX_WINDOWS],
    n: usize,
}

impl std::ops::Deref for EntryWindows {
    type Target = [(At, Descriptor)];

    fn deref(&self) -> &[(At, Descriptor)] {
        self.items.get(..self.n).unwrap_or(&[])
    }
}

impl Core {
    /// Write a complete entry for `kw` with `descs`; `state(i, word)` gives the initial state
    /// words of window `i` (`None` = empty). The header word, with the crc, is stored last.
    /// `place`: where the entry goes ([`Place`]); a slot claimed for it (`Place::At`) is
    /// given back if the entry cannot be written.
    pub(crate) fn write_entry(
        &self,
        kw: &KeyWords,
        descs: &[u32],
        place: Place,
        state: impl Fn(usize, &mut [u64]) -> Option<()>,
    ) -> Result<u64> {
        let layout = match self.layout_for(kw, descs) {
            Ok(layout) => layout,
            Err(err) => {
                if let Place::At(line) = place {
                    self.segs.unclaim(line);
                }
                return Err(err);
            }
        };
        let line = match place {
            Place::At(line) => line,
            Place::Home(hash) => match self.claim_home(hash, layout.lines) {
                Some(line) => line,
                None => self.segs.alloc(layout.lines)?,
            },
        };
        let decoded = decode_all(descs);
        let decoded = decoded.get(..descs.len()).unwrap_or(&[]);
        let e = self.segs.entry(line);
        let store = |i: usize, v: u64| {
            if let Some(w) = e.w(i) {
                w.store(v, Ordering::Relaxed);
            }
        };
        for (i, pair) in descs.chunks(2).enumerate() {
            let lo = u64::from(pair.first().copied().unwrap_or(0));
            let hi = u64::from(pair.get(1).copied().unwrap_or(0));
            store(1 + i, lo | (hi << 32));
        }
        for (i, &w) in kw.words.iter().take(kw.n_words()).enumerate() {
            store(layout.key_at + i, w);
        }
        let mut buf = [0u64; STATE_BUF];
        for (i, d) in decoded.iter().enumerate() {
            let at = layout.at.get(i).copied().unwrap_or_default();
            let (head_words, _) = d.parts(self.b);
            let words = buf.get_mut(..d.words(self.b)).unwrap_or(&mut []);
            words.fill(0);
            let _ = state(i, words);
            // `state` fills the window's words in their own order (head part, then ring);
            // the entry keeps the two parts apart.
            for (j, &v) in words.iter().enumerate() {
                if j < head_words {
                    store(at.head + j, v);
                } else {
                    store(at.ring + j - head_words, v);
                }
            }
        }
        let (key_bytes, len) = kw.bytes();
        let header = EntryHeader::new(kw.len, descs.len(), KIND_WINDOWS);
        let crc = entry_crc(header.low(), descs, key_bytes.get(..len).unwrap_or(&[]));
        // Release: everything above is visible to whoever sees the header (and, later, the
        // index entry that points here).
        if let Some(w) = e.w(0) {
            w.store(header.with_crc(crc).encode(), Ordering::Release);
        }
        Ok(line)
    }

    /// The layout of an entry for `kw` with the windows of `descs`.
    pub(crate) fn layout_for(&self, kw: &KeyWords, descs: &[u32]) -> Result<EntryLayout> {
        let mut decoded = [NO_DESCRIPTOR; MAX_WINDOWS];
        for (d, &raw) in decoded.iter_mut().zip(descs) {
            *d = Descriptor::decode(raw).ok_or(Error::InvalidLimit("bad descriptor"))?;
        }
        EntryLayout::new(decoded.get(..descs.len()).unwrap_or(&[]), kw.len, self.b).ok_or(
            Error::InvalidLimit("the key and its windows do not fit in an entry"),
        )
    }

    /// Where each window of `limits` starts in the entry (word offsets from its start), if the
    /// entry holds exactly those windows; `None` if they differ.
    #[inline]
    pub(crate) fn windows_at<'l>(
        &self,
        e: &Entry<'_>,
        limits: &'l Limits,
    ) -> Option<WindowsAt<'l>> {
        let key_len = EntryHeader::decode(e.load(0)).key_len;
        self.holds_windows(e, limits)
            .then(|| self.places(limits, key_len))
    }

    /// Whether the entry holds exactly the windows of `limits`: the header's window count and
    /// the descriptor words compared with the ones `limits` precomputed. On every check's
    /// path, so no [`EntryLayout`] is built.
    #[inline]
    pub(crate) fn holds_windows(&self, e: &Entry<'_>, limits: &Limits) -> bool {
        if EntryHeader::decode(e.load(0)).windows != limits.len() {
            return false;
        }
        // One or two words (at most four windows, two descriptors a word), compared without
        // a loop.
        const _: () = assert!(MAX_WINDOWS.div_ceil(2) <= 2);
        match *limits.desc_words() {
            [a] => e.load(1) == a,
            [a, b] => e.load(1) == a && e.load(2) == b,
            _ => false,
        }
    }

    /// Where each window of `limits` starts in an entry of a `key_len`-byte key holding those
    /// windows: the key's end plus `limits`' precomputed offsets; and the entry's lines.
    #[inline]
    pub(crate) fn places<'l>(&self, limits: &'l Limits, key_len: usize) -> WindowsAt<'l> {
        let state_at = EntryLayout::state_at(limits.len(), key_len);
        let (rel, words) = limits.rel_offsets(self.b);
        WindowsAt {
            state_at,
            rel,
            lines: lines_of_words(state_at + words),
        }
    }

    /// Check one entry read at open: crc, descriptors, state words. Clears lock bits. Returns
    /// its key and whether it was frozen (a move was under way).
    pub(crate) fn check_entry(&self, e: &Entry<'_>, class_lines: u32) -> Option<(KeyWords, bool)> {
        let h = EntryHeader::decode(e.load(0));
        let (key_len, n) = (h.key_len, h.windows);
        if h.kind != KIND_WINDOWS || h.reserved != 0 || n == 0 || n > MAX_WINDOWS {
            return None;
        }
        if key_len == 0 || key_len > MAX_KEY_LEN {
            return None;
        }
        let descs = raw_descriptors(e, n);
        let descs = descs.get(..n)?;
        // The unused high half of the last descriptor word (odd `n`) must be zero.
        if n % 2 == 1 && e.load(1 + n / 2) >> 32 != 0 {
            return None;
        }
        let key_at = EntryLayout::key_at(n);
        let mut kw = KeyWords {
            len: key_len,
            words: [0; KEY_WORDS],
        };
        for (i, w) in kw.words.iter_mut().take(key_len.div_ceil(8)).enumerate() {
            *w = e.load(key_at + i);
        }
        let (bytes, _) = kw.bytes();
        if entry_crc(h.low(), descs, bytes.get(..key_len)?) != h.crc {
            return None;
        }
        // Padding after the key must be zero (the key compare reads whole words).
        if !key_len.is_multiple_of(8) && kw.words.get(key_len / 8)? >> ((key_len % 8) * 8) != 0 {
            return None;
        }
        let mut decoded = Vec::with_capacity(n);
        for &d in descs {
            decoded.push(Descriptor::decode(d)?);
        }
        let layout = EntryLayout::new(&decoded, key_len, self.b)?;
        if layout.lines != class_lines {
            return None;
        }
        let mut frozen = false;
        for (i, d) in decoded.iter().enumerate() {
            let at = *layout.at.get(i)?;
            let w = e.w(at.head)?;
            let v = w.load(Ordering::Acquire);
            if d.exact {
                frozen |= v & META_FROZEN != 0;
                let head = v & META_HEAD;
                if head >= u64::from(d.cap) || v & !(META_HEAD | META_LOCK | META_FROZEN) != 0 {
                    return None;
                }
                // Ring times are ms since 1970 (+1): anything past the year 10000 was not
                // written by tollgate.
                if (0..d.cap as usize).any(|k| e.load(at.head + 1 + k) > MAX_RING_TIME) {
                    return None;
                }
                if v != head {
                    // Flags cleared; an unchanged word is not written (its page stays clean).
                    w.store(head, Ordering::Release);
                }
            } else {
                // A crash mid-rotation leaves the head locked: `recover` counts the window
                // full at its sub-window (never under-counts) and clears the flags.
                frozen |= v & FROZEN != 0;
                let geo = d.slide(self.b)?;
                let win = sliding_window(e, at, &geo)?;
                sliding::recover(&win, &geo);
                if !sliding::snapshot(&win, &geo).is_consistent(&geo) {
                    return None;
                }
            }
        }
        Some((kw, frozen))
    }
}
