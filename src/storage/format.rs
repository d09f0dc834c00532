//! The on-disk format: the file header, segment headers and entry layout.
//!
//! Documented byte by byte in `docs/FORMAT.md`; the constants here are the source of truth.
//! All multi-byte values are little-endian (tollgate builds only for little-endian targets, see
//! the compile-time check in `lib.rs`).

use crate::error::{Error, Result};
use crate::limit::Descriptor;
use crate::window::{places, At};

/// Magic bytes at the start of a store file.
pub(crate) const FILE_MAGIC: [u8; 8] = *b"TOLLGATE";
/// Magic bytes at the start of every segment.
pub(crate) const SEGMENT_MAGIC: [u8; 8] = *b"TGSEGMNT";
/// The format version this build reads and writes.
pub(crate) const FORMAT_VERSION: u32 = 3;
/// Size of the file header page.
pub(crate) const HEADER_LEN: u64 = 4096;
/// Byte offset of segment 0 in the file (format 3; format 2 put it right after the header
/// page). Between the header page and the first segment is a hole that takes no disk space.
/// It puts every segment of 2 MiB or more on a 2 MiB boundary of the file, which the kernel
/// needs to map the segment's page cache with 2 MiB pages (`Options::huge_pages`): a check
/// of a cold key then finds its entry's page in the TLB, or one short walk away.
pub(crate) const SEGMENTS_START: u64 = 2 << 20;
/// Bytes of the header that carry data (the rest of the page is zero).
pub(crate) const HEADER_USED: usize = 64;
/// Byte offset in the header page of the newest time the store has seen (ms since the Unix
/// epoch, a live word outside the checked 64 bytes; see `docs/FORMAT.md`).
pub(crate) const SEEN_AT: usize = HEADER_USED;
/// Byte offset in the header page of the segment-count word: how many segments the file must
/// hold (a live word outside the checked 64 bytes, with its own check; see `docs/FORMAT.md`).
pub(crate) const SEGMENTS_AT: usize = HEADER_USED + 8;
/// Offset of the census (16 bytes): the entries a cleanly closed file holds.
pub(crate) const CENSUS_AT: usize = HEADER_USED + 16;
/// Offset of the hash seed (40 bytes): the four keys of the hash that places window entries
/// in home segments, the crc32 of their 32 little-endian bytes, four zero bytes. Written once,
/// by the first open of the file that finds none; a secret as private as the file.
pub(crate) const SEED_AT: usize = HEADER_USED + 32;
/// The most segments a store can hold (`Options::max_segments` is at most this): a segment
/// count above it was not written by tollgate.
pub(crate) const MAX_SEGMENTS: u32 = 1 << 20;
/// One line: the unit of entry allocation, and a cache line.
pub(crate) const LINE: usize = 64;

/// The lines an entry of `words` 8-byte words takes (entries start on a line).
#[inline]
pub(crate) const fn lines_of_words(words: usize) -> usize {
    (words * 8).div_ceil(LINE)
}

/// The largest entry, in lines.
pub(crate) const MAX_ENTRY_LINES: u32 = 16;
/// Entry kinds (byte 2 of an entry header).
pub(crate) const KIND_WINDOWS: u8 = 1;
/// Entry kind of an idempotency record.
pub(crate) const KIND_IDEM: u8 = 2;
/// Entry kind of a version (`engine/versions.rs`).
pub(crate) const KIND_VERSION: u8 = 3;
/// Entry kind of a key's concurrency permits (`engine/permits.rs`).
pub(crate) const KIND_PERMITS: u8 = 4;
/// The header word of a removed entry in a home segment whose lines wait for the epoch
/// (kind `0xFF`, every other byte zero): not an entry, and not yet free. Free at open.
pub(crate) const TOMBSTONE: u64 = 0xFF << 16;
/// The header word of a home slot claimed for an entry being written (kind `0xFE`): not an
/// entry yet, and no longer free. Free at open.
pub(crate) const CLAIMED: u64 = 0xFE << 16;
/// The deepest a home directory goes: a size class's home segments are told apart by at most
/// this many top bits of the hash.
pub(crate) const MAX_HOME_DEPTH: u32 = 16;
/// `entry_lines` of a segment that holds response records (blobs) instead of entries.
pub(crate) const BLOB_SEGMENT: u32 = 0;
/// First word of a blob record: magic in the low half, payload length in the high half.
pub(crate) const BLOB_MAGIC: u32 = u32::from_le_bytes(*b"TGBL");

/// The decoded file header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct FileHeader {
    /// log2 of the segment length in bytes.
    pub seg_shift: u32,
    /// Sub-windows per sliding window (`B`, 16 to 256), fixed when the file is created.
    pub sub_windows: u32,
    /// When the store was created (ms since the Unix epoch).
    pub created_ms: u64,
}

impl FileHeader {
    /// Encode into the 64 used bytes of the header page.
    pub(crate) fn encode(&self) -> [u8; HEADER_USED] {
        let mut b = [0u8; HEADER_USED];
        b[0..8].copy_from_slice(&FILE_MAGIC);
        b[8..12].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
        b[12..16].copy_from_slice(&(HEADER_USED as u32).to_le_bytes());
        b[16..20].copy_from_slice(&self.seg_shift.to_le_bytes());
        b[20..24].copy_from_slice(&self.sub_windows.to_le_bytes());
        b[24..32].copy_from_slice(&self.created_ms.to_le_bytes());
        let crc = crc32fast::hash(&b[0..60]);
        b[60..64].copy_from_slice(&crc.to_le_bytes());
        b
    }

    /// Decode and check the header bytes.
    pub(crate) fn decode(b: &[u8]) -> Result<FileHeader> {
        let b: &[u8; HEADER_USED] =
            b.get(..HEADER_USED)
                .and_then(|s| s.try_into().ok())
                .ok_or(Error::NotAStore {
                    reason: "file shorter than a header",
                })?;
        if b[0..8] != FILE_MAGIC {
            return Err(Error::NotAStore {
                reason: "bad magic bytes",
            });
        }
        let version = le32(b, 8);
        if version != FORMAT_VERSION {
            return Err(Error::UnsupportedVersion {
                found: version,
                supported: FORMAT_VERSION,
            });
        }
        if le32(b, 60) != crc32fast::hash(&b[0..60]) {
            return Err(Error::NotAStore {
                reason: "header checksum mismatch",
            });
        }
        let h = FileHeader {
            seg_shift: le32(b, 16),
            sub_windows: le32(b, 20),
            created_ms: le64(b, 24),
        };
        if le32(b, 12) as usize != HEADER_USED
            || !(16..=30).contains(&h.seg_shift)
            || !(crate::window::sliding::MIN_B..=crate::window::sliding::MAX_B)
                .contains(&h.sub_windows)
        {
            return Err(Error::Corrupt {
                offset: 0,
                reason: "header fields out of range",
            });
        }
        Ok(h)
    }

    /// The segment-count word (bytes `SEGMENTS_AT..+8` of the header page) saying the file
    /// must hold `segments` segments: the count in the low half, the crc32 of its four
    /// little-endian bytes in the high half. Written, and synced, before a new segment is used.
    pub(crate) fn segment_word(segments: u32) -> [u8; 8] {
        let n = segments.to_le_bytes();
        let mut b = [0u8; 8];
        b[0..4].copy_from_slice(&n);
        b[4..8].copy_from_slice(&crc32fast::hash(&n).to_le_bytes());
        b
    }

    /// The hash seed's 40 bytes (at [`SEED_AT`]) for `keys`.
    pub(crate) fn seed_bytes(keys: [u64; 4]) -> [u8; 40] {
        let mut b = [0u8; 40];
        for (chunk, k) in b.chunks_exact_mut(8).zip(keys) {
            chunk.copy_from_slice(&k.to_le_bytes());
        }
        let crc = crc32fast::hash(b.get(..32).unwrap_or(&[]));
        b[32..36].copy_from_slice(&crc.to_le_bytes());
        b
    }

    /// Decode a hash seed: `None` if there is none (all zero) or its check fails.
    pub(crate) fn seed_of(b: &[u8]) -> Option<[u64; 4]> {
        let keys = b.get(..32)?;
        if b.len() < 40 || le32(b, 32) != crc32fast::hash(keys) || le32(b, 36) != 0 {
            return None;
        }
        if keys.iter().all(|&x| x == 0) {
            return None;
        }
        Some([le64(b, 0), le64(b, 8), le64(b, 16), le64(b, 24)])
    }

    /// Decode a segment-count word: `None` if its check fails (a damaged word; an all-zero
    /// word fails too, since the crc of a zero count is not zero) or if the count is more than
    /// a store can hold ([`MAX_SEGMENTS`]): an all-ones word passes the crc (the crc32 of four
    /// `0xFF` bytes is `0xFFFF_FFFF`) but no store ever wrote it.
    pub(crate) fn segments_of(word: &[u8]) -> Option<u32> {
        let n: [u8; 4] = word.get(0..4)?.try_into().ok()?;
        let count = u32::from_le_bytes(n);
        (word.len() >= 8 && le32(word, 4) == crc32fast::hash(&n) && count <= MAX_SEGMENTS)
            .then_some(count)
    }
}

/// The decoded header of a segment (its first line).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct SegmentHeader {
    /// The segment's index in the file.
    pub index: u32,
    /// Lines per entry in this segment (its size class), or [`BLOB_SEGMENT`].
    pub entry_lines: u32,
    /// For a home segment (`segment/home.rs`): its depth and prefix when it was made, the
    /// hashes whose top `depth` bits are `prefix` (a later split of the segment is recorded
    /// by the new segment alone). `None` for any other segment.
    pub home: Option<HomeTag>,
}

/// Which hashes a home segment was made for: those whose top `depth` bits are `prefix`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct HomeTag {
    /// Bits of the hash (0 to [`MAX_HOME_DEPTH`]).
    pub depth: u32,
    /// Their value (below `1 << depth`).
    pub prefix: u32,
}

impl SegmentHeader {
    /// Encode into the segment's first line.
    pub(crate) fn encode(&self) -> [u8; LINE] {
        let mut b = [0u8; LINE];
        b[0..8].copy_from_slice(&SEGMENT_MAGIC);
        b[8..12].copy_from_slice(&self.index.to_le_bytes());
        b[12..16].copy_from_slice(&self.entry_lines.to_le_bytes());
        b[16..20].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
        if let Some(t) = self.home {
            b[20..24].copy_from_slice(&(t.depth + 1).to_le_bytes());
            b[24..28].copy_from_slice(&t.prefix.to_le_bytes());
        }
        let crc = crc32fast::hash(&b[0..60]);
        b[60..64].copy_from_slice(&crc.to_le_bytes());
        b
    }

    /// Whether `b` is a header line whose write never finished: the magic, written last, is
    /// still zero, and some other word is not. Open takes such a segment for blank when its
    /// body is blank too (a crash between the header's stores), for damaged otherwise.
    pub(crate) fn unfinished(b: &[u8; LINE]) -> bool {
        b[0..8] == [0; 8] && b.iter().any(|&x| x != 0)
    }

    /// Decode a segment's first line: `Ok(None)` for an all-zero line (a segment that was
    /// allocated but whose header never got written), `Err` for anything else that fails.
    pub(crate) fn decode(
        b: &[u8; LINE],
        expected_index: u32,
    ) -> Result<Option<SegmentHeader>, &'static str> {
        if b.iter().all(|&x| x == 0) {
            return Ok(None);
        }
        if b[0..8] != SEGMENT_MAGIC {
            return Err("bad segment magic");
        }
        if le32(b, 60) != crc32fast::hash(&b[0..60]) {
            return Err("segment header checksum mismatch");
        }
        let home = match le32(b, 20) {
            0 if le32(b, 24) == 0 => None,
            d @ 1.. if d - 1 <= MAX_HOME_DEPTH && u64::from(le32(b, 24)) < 1u64 << (d - 1) => {
                Some(HomeTag {
                    depth: d - 1,
                    prefix: le32(b, 24),
                })
            }
            _ => return Err("segment home placement out of range"),
        };
        let h = SegmentHeader {
            index: le32(b, 8),
            entry_lines: le32(b, 12),
            home,
        };
        if h.index != expected_index {
            return Err("segment index does not match its position");
        }
        if le32(b, 16) != FORMAT_VERSION {
            return Err("segment format version mismatch");
        }
        if h.entry_lines > MAX_ENTRY_LINES || (home.is_some() && h.entry_lines == BLOB_SEGMENT) {
            return Err("segment entry size out of range");
        }
        Ok(Some(h))
    }
}

fn le32(b: &[u8], at: usize) -> u32 {
    let mut x = [0u8; 4];
    if let Some(s) = b.get(at..at + 4) {
        x.copy_from_slice(s);
    }
    u32::from_le_bytes(x)
}

fn le64(b: &[u8], at: usize) -> u64 {
    let mut x = [0u8; 8];
    if let Some(s) = b.get(at..at + 8) {
        x.copy_from_slice(s);
    }
    u64::from_le_bytes(x)
}

/// Where things are inside a window entry, in 8-byte words from the entry's start.
///
/// ```text
/// word 0            header: key_len u8 | n_windows u8 | kind u8 | reserved u8 | crc32 u32
/// words 1..         descriptors, two u32 per word
/// key_at..          key bytes, zero padded to a word
/// state_at..        every window's head part, in window order: a sliding window's head
///                   word (and base word, wide layout); an exact window's meta word and ring
/// then              every sliding window's ring, in window order (`window::places`)
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct EntryLayout {
    pub n: usize,
    pub key_len: usize,
    pub key_at: usize,
    pub state_at: usize,
    /// Where each window's head part and ring part start, relative to the entry's start.
    pub at: [At; crate::MAX_WINDOWS],
    /// Words used in all.
    pub words: usize,
    /// Lines the entry takes.
    pub lines: u32,
}

impl EntryLayout {
    /// Where the key starts in a window entry of `n` windows: after the header word and the
    /// descriptors, two to a word.
    #[inline]
    pub(crate) const fn key_at(n: usize) -> usize {
        1 + n.div_ceil(2)
    }

    /// Where the windows' words start in a window entry of `n` windows and a key of `key_len`
    /// bytes: after the key, zero padded to a word.
    #[inline]
    pub(crate) const fn state_at(n: usize, key_len: usize) -> usize {
        Self::key_at(n) + key_len.div_ceil(8)
    }

    /// The layout for `descs` and a key of `key_len` bytes in a store with `b` sub-windows per
    /// sliding window; `None` if it would not fit in [`MAX_ENTRY_LINES`].
    pub(crate) fn new(descs: &[Descriptor], key_len: usize, b: u32) -> Option<EntryLayout> {
        let n = descs.len();
        if n == 0 || n > crate::MAX_WINDOWS || key_len == 0 || key_len > crate::MAX_KEY_LEN {
            return None;
        }
        let key_at = Self::key_at(n);
        let state_at = Self::state_at(n, key_len);
        let mut parts = [(0usize, 0usize); crate::MAX_WINDOWS];
        for (d, p) in descs.iter().zip(parts.iter_mut()) {
            *p = d.parts(b);
            if p.0 == 0 {
                return None;
            }
        }
        let (mut at, state_words) = places(parts.get(..n)?);
        for place in &mut at {
            *place = place.plus(state_at);
        }
        let words = state_at + state_words;
        let lines = lines_of_words(words) as u32;
        if lines > MAX_ENTRY_LINES {
            return None;
        }
        Some(EntryLayout {
            n,
            key_len,
            key_at,
            state_at,
            at,
            words,
            lines,
        })
    }
}

/// The header word of an entry (word 0), the one place it is encoded and decoded:
///
/// ```text
///  bits 0..8    key length in bytes (1 to 128)
///  bits 8..16   number of windows (window entries; 0 for idempotency records)
///  bits 16..24  kind: KIND_WINDOWS, KIND_IDEM, KIND_VERSION or KIND_PERMITS (0 = a free line)
///  bits 24..32  reserved, zero
///  bits 32..64  crc32 of the entry's immutable part (see `entry_crc`)
/// ```
///
/// The word is stored last when an entry is written (with `Release`), and zeroed first when it
/// is cleared, so a non-zero header means the entry is complete.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct EntryHeader {
    /// The key's length in bytes.
    pub key_len: usize,
    /// Windows in a window entry (0 in an idempotency record).
    pub windows: usize,
    /// [`KIND_WINDOWS`], [`KIND_IDEM`], [`KIND_VERSION`], [`KIND_PERMITS`], or anything else
    /// for a line that holds no entry.
    pub kind: u8,
    /// Must be zero.
    pub reserved: u8,
    /// The entry's crc32.
    pub crc: u32,
}

impl EntryHeader {
    /// A header for a new entry (its crc filled in by [`EntryHeader::with_crc`]).
    #[inline]
    pub(crate) fn new(key_len: usize, windows: usize, kind: u8) -> EntryHeader {
        EntryHeader {
            key_len: key_len & 0xFF,
            windows: windows & 0xFF,
            kind,
            reserved: 0,
            crc: 0,
        }
    }

    /// Decode a header word.
    #[inline]
    pub(crate) fn decode(word: u64) -> EntryHeader {
        EntryHeader {
            key_len: (word & 0xFF) as usize,
            windows: ((word >> 8) & 0xFF) as usize,
            kind: (word >> 16) as u8,
            reserved: (word >> 24) as u8,
            crc: (word >> 32) as u32,
        }
    }

    /// The low half of the word: everything but the crc (what the crc covers first).
    #[inline]
    pub(crate) fn low(&self) -> u32 {
        (self.key_len as u32 & 0xFF)
            | ((self.windows as u32 & 0xFF) << 8)
            | (u32::from(self.kind) << 16)
            | (u32::from(self.reserved) << 24)
    }

    /// The same header carrying `crc`.
    #[inline]
    pub(crate) fn with_crc(self, crc: u32) -> EntryHeader {
        EntryHeader { crc, ..self }
    }

    /// The header word.
    #[inline]
    pub(crate) fn encode(&self) -> u64 {
        u64::from(self.low()) | (u64::from(self.crc) << 32)
    }
}

/// The first word of a response record in a blob segment: [`BLOB_MAGIC`] in the low half, the
/// payload's length in the high half. A zero word ends a segment's records.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct BlobHeader {
    /// Bytes of payload after the record's two head words.
    pub len: u64,
}

impl BlobHeader {
    /// Decode a record's first word: `None` if it does not start a record.
    #[inline]
    pub(crate) fn decode(word: u64) -> Option<BlobHeader> {
        (word as u32 == BLOB_MAGIC).then_some(BlobHeader { len: word >> 32 })
    }

    /// The record's first word.
    #[inline]
    pub(crate) fn encode(&self) -> u64 {
        u64::from(BLOB_MAGIC) | (self.len << 32)
    }

    /// Lines the record takes (two head words and the payload).
    #[inline]
    pub(crate) fn lines(&self) -> u64 {
        (16 + self.len).div_ceil(LINE as u64)
    }
}

/// The crc32 of an entry: over the low 4 header bytes, the descriptors and the key.
pub(crate) fn entry_crc(low: u32, descs: &[u32], key: &[u8]) -> u32 {
    entry_crc_parts(low, descs, &[key])
}

/// [`entry_crc`] over a key given in parts (a record's key, then its fingerprint): the crc
/// of the parts one after the other, with no copy of them put together.
pub(crate) fn entry_crc_parts(low: u32, descs: &[u32], parts: &[&[u8]]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(&low.to_le_bytes());
    for d in descs {
        h.update(&d.to_le_bytes());
    }
    for p in parts {
        h.update(p);
    }
    h.finalize()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::limit::Limit;

    #[test]
    fn header_round_trip_and_checks() {
        let h = FileHeader {
            seg_shift: 22,
            sub_windows: 64,
            created_ms: 1_700_000_000_000,
        };
        let b = h.encode();
        assert_eq!(FileHeader::decode(&b).expect("valid"), h);
        let mut bad = b;
        bad[0] ^= 1;
        assert!(matches!(
            FileHeader::decode(&bad),
            Err(Error::NotAStore { .. })
        ));
        let mut bad = b;
        bad[30] ^= 1;
        assert!(matches!(
            FileHeader::decode(&bad),
            Err(Error::NotAStore { .. })
        ));
        // Files of the first format (a packed bucketed word per window) and of the second
        // (segments right after the header page, each window's head beside its ring) are
        // refused by name, their header crc intact.
        for version in [1u8, 2] {
            let mut old = b;
            old[8] = version;
            let crc = crc32fast::hash(&old[0..60]);
            old[60..64].copy_from_slice(&crc.to_le_bytes());
            match FileHeader::decode(&old) {
                Err(Error::UnsupportedVersion { found, supported }) => {
                    assert_eq!((found, supported), (u32::from(version), 3));
                }
                other => panic!("version {version}: {other:?}"),
            }
        }
        let mut v4 = b;
        v4[8] = 4;
        assert!(matches!(
            FileHeader::decode(&v4),
            Err(Error::UnsupportedVersion { found: 4, .. })
        ));
        assert!(FileHeader::decode(&b[..10]).is_err());
        let mut v1 = b;
        v1[8] = 1;
        assert!(matches!(
            FileHeader::decode(&v1),
            Err(Error::UnsupportedVersion {
                found: 1,
                supported: 3
            })
        ));
    }

    #[test]
    fn segment_word_round_trip_and_check() {
        for n in [0, 1, 7, MAX_SEGMENTS] {
            let w = FileHeader::segment_word(n);
            assert_eq!(FileHeader::segments_of(&w), Some(n));
            for bit in 0..64 {
                let mut bad = w;
                if let Some(byte) = bad.get_mut(bit / 8) {
                    *byte ^= 1 << (bit % 8);
                }
                assert_eq!(FileHeader::segments_of(&bad), None, "n {n} bit {bit}");
            }
        }
        assert_eq!(FileHeader::segments_of(&[0u8; 8]), None);
        assert_eq!(FileHeader::segments_of(&[0u8; 5]), None);
        // More segments than a store can hold: never written, so damage. All ones is the case
        // that matters: it passes the crc.
        for n in [MAX_SEGMENTS + 1, u32::MAX] {
            assert_eq!(
                FileHeader::segments_of(&FileHeader::segment_word(n)),
                None,
                "{n}"
            );
        }
        assert_eq!(FileHeader::segment_word(u32::MAX), [0xFF; 8]);
        assert_eq!(FileHeader::segments_of(&[0xFF; 8]), None);
    }

    #[test]
    fn two_windows_and_a_32_byte_key_fit_one_line() {
        let d = |l: Limit| Descriptor::decode(l.descriptor()).expect("valid");
        let descs = [d(Limit::per_minute(60)), d(Limit::per_hour(1000))];
        // ErzyCall's pair with a 32-byte key: header, one descriptor word, 4 key words, the
        // two head words (words 6 and 7: the first line holds everything a check in the
        // heads' sub-windows reads), then the 6 ring words of 6-bit counters of 60/min and
        // the 10 of 10-bit counters of 1000/h: 24 words, three lines (192 bytes).
        let l = EntryLayout::new(&descs, 32, 64).expect("fits");
        assert_eq!(l.key_at, 2);
        assert_eq!(l.state_at, 6);
        assert_eq!(l.at[0], At { head: 6, ring: 8 });
        assert_eq!(l.at[1], At { head: 7, ring: 14 });
        assert!(l.at.iter().take(2).all(|a| a.head * 8 < LINE));
        assert_eq!(l.words, 24);
        assert_eq!(l.lines, 3);
        // A single 60/min window: 1 + 1 + 4 + 7 = 13 words, two lines (128 bytes).
        let one = EntryLayout::new(&descs[..1], 32, 64).expect("fits");
        assert_eq!(one.lines, 2);
        let big = EntryLayout::new(&descs, crate::MAX_KEY_LEN, 64).expect("fits");
        assert!(big.lines > 3);
        assert!(EntryLayout::new(&descs, 0, 64).is_none());
        assert!(EntryLayout::new(&descs, crate::MAX_KEY_LEN + 1, 64).is_none());
        assert!(EntryLayout::new(&descs, 32, 8).is_none(), "B out of range");
    }

    #[test]
    fn segment_header_round_trip() {
        let h = SegmentHeader {
            index: 3,
            entry_lines: 2,
            home: None,
        };
        let b = h.encode();
        assert_eq!(SegmentHeader::decode(&b, 3), Ok(Some(h)));
        assert!(SegmentHeader::decode(&b, 4).is_err());
        assert_eq!(SegmentHeader::decode(&[0u8; LINE], 0), Ok(None));
        let mut bad = b;
        bad[12] = 99;
        assert!(SegmentHeader::decode(&bad, 3).is_err());
        let home = SegmentHeader {
            home: Some(HomeTag {
                depth: 3,
                prefix: 5,
            }),
            ..h
        };
        assert_eq!(SegmentHeader::decode(&home.encode(), 3), Ok(Some(home)));
        // A prefix wider than its depth, a depth past the deepest, a home blob segment: each
        // written with a valid crc, each refused.
        for (depth, prefix, lines) in [(3, 8, 2), (MAX_HOME_DEPTH + 1, 0, 2), (0, 0, BLOB_SEGMENT)]
        {
            let mut b = SegmentHeader {
                entry_lines: lines,
                ..h
            }
            .encode();
            b[20..24].copy_from_slice(&(depth + 1).to_le_bytes());
            b[24..28].copy_from_slice(&u32::to_le_bytes(prefix));
            let crc = crc32fast::hash(&b[0..60]);
            b[60..64].copy_from_slice(&crc.to_le_bytes());
            assert!(
                SegmentHeader::decode(&b, 3).is_err(),
                "{depth} {prefix} {lines}"
            );
        }
    }

    #[test]
    fn seed_round_trip() {
        let keys = [1, 2, 3, u64::MAX];
        assert_eq!(
            FileHeader::seed_of(&FileHeader::seed_bytes(keys)),
            Some(keys)
        );
        assert_eq!(FileHeader::seed_of(&[0u8; 40]), None, "none written");
        let mut bad = FileHeader::seed_bytes(keys);
        bad[3] ^= 1;
        assert_eq!(FileHeader::seed_of(&bad), None);
        assert_eq!(FileHeader::seed_of(&[0u8; 39]), None);
    }
}
