//! The store file: create or open it, hold its lock, read or write its header, trim what a
//! crash while growing left behind, and find out whether the file lost segments it had.
//!
//! The header page records how many segments the file must hold (the segment-count word,
//! `docs/FORMAT.md`), raised and synced before a new segment is used. A file found shorter
//! than that lost segments (cut by a copy, a restore or a full disk): the open says how many,
//! or refuses with [`Error::Truncated`]. A file found longer holds segments that were
//! allocated but never used (a crash while growing): they are cut off, provided their header
//! lines are blank; a segment in use past the count means the count is wrong (damaged), and
//! the file's length is trusted instead.
//!
//! The header page also holds a census: how many entries the file held when its last writer
//! went away. A writer that opens the file reads it, then erases it (durably) before it
//! writes anything, so a census found at open always describes the file as it was left; the
//! open compares it with the entries it finds, and a loss of segments is told in entries too.
//! A crash leaves no census, and then the loss cannot be counted.
//!
//! One process at a time writes a store file: the exclusive lock taken here is held for as
//! long as the file is open (the kernel drops it with the last descriptor), and every later
//! open, in this process or another, answers [`Error::Locked`].

use std::fs::{File, OpenOptions};
use std::io::{ErrorKind, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::time::{Duration, Instant};

use super::format::{
    FileHeader, CENSUS_AT, HEADER_LEN, HEADER_USED, LINE, SEED_AT, SEGMENTS_AT, SEGMENTS_START,
};
use super::hook::{Hook, IoEvent};
use super::raw::Map;
use crate::error::{Error, Result};

/// How long an open keeps trying a lock that looks held before answering `Locked`.
const LOCK_PATIENCE: Duration = Duration::from_millis(100);

/// A store file, open and locked.
pub(crate) struct Opened {
    /// The file (its descriptor holds the lock).
    pub file: File,
    /// Its header, as read, or as written for a new file.
    pub header: FileHeader,
    /// The whole segments it holds (and that the header records).
    pub segments: usize,
    /// Segments the header records but the file no longer holds (lost: the file was cut).
    pub lost_segments: u64,
    /// The segment-count word failed its check, or counts fewer segments than the file holds
    /// in use: the file's length was trusted.
    pub count_damaged: bool,
    /// The header page, mapped (its live words follow the checked 64 bytes).
    pub header_map: Map,
    /// The entries the file held when its last writer went away, if it left a census (a
    /// writer's open has erased it by now).
    pub census: Option<Census>,
    /// The keys of the hash that places window entries (`segment/home.rs`): the file's, or
    /// new ones (written to the file by a writer's open, so that the next open finds every
    /// entry where this one puts it).
    pub seed: [u64; 4],
}

/// How a store file is opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Access {
    /// The writer: creates the file if needed and holds its exclusive lock.
    Write,
    /// A read-only view of a file another process may hold open: no lock, nothing created,
    /// trimmed or written; every map is a private copy-on-write map, so recovery's fixes stay
    /// in this process.
    ReadOnly,
}

/// How [`open`] treats a file.
#[derive(Debug, Clone, Default)]
pub(crate) struct OpenPolicy {
    /// Refuse a file that lost segments ([`Error::Truncated`]) instead of opening what is left.
    pub refuse_lost: bool,
    /// The test hook at every sync and allocation.
    pub hook: Hook,
}

/// Open the store file at `path`: as the writer, create it (and its directory) with
/// `new_header` if it does not exist, lock it, check its header, cut off a partial segment or
/// segments never used (a crash while growing), and compare what is left with the segment
/// count the header records; as a read-only view, only open and check it.
pub(crate) fn open(
    path: &Path,
    new_header: FileHeader,
    access: Access,
    policy: &OpenPolicy,
) -> Result<Opened> {
    let write = access == Access::Write;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty() && write) {
        std::fs::create_dir_all(dir)?;
    }
    let mut file = OpenOptions::new()
        .read(true)
        .write(write)
        .create(write)
        .truncate(false)
        .open(path)?;
    if write {
        lock(&file, path)?;
    }
    let len = file.metadata()?.len();
    if len == 0 && !write {
        return Err(Error::NotAStore {
            reason: "empty file",
        });
    }
    let header = if len == 0 {
        create(&mut file, path, new_header)?;
        new_header
    } else {
        read_header(&mut file)?
    };
    let seg_len = 1u64 << header.seg_shift;
    let body = len.saturating_sub(SEGMENTS_START);
    let whole = if len == 0 { 0 } else { body / seg_len };
    let recorded = if len == 0 {
        Some(0)
    } else {
        read_count(&file)?
    };
    let (segments, lost_segments, count_damaged) = match recorded.map(u64::from) {
        Some(r) if r > whole => (whole, r - whole, false),
        // Segments past the recorded count were allocated but never used: their header lines
        // are zero. One in use means the count is wrong, not the file.
        Some(r) if blank_from(&file, r, whole, seg_len)? => (r, 0, false),
        _ => (whole, 0, true),
    };
    if lost_segments > 0 && policy.refuse_lost {
        return Err(Error::Truncated {
            recorded: segments + lost_segments,
            found: segments,
        });
    }
    if write && len > 0 {
        let end = SEGMENTS_START + segments * seg_len;
        if len != end && len > HEADER_LEN {
            // A crash while growing left a partial segment, or whole segments the count never
            // took in: nothing in them was ever used (a segment is used only once its whole
            // length is allocated and synced, and the count raised and synced).
            file.set_len(end)?;
        }
        if recorded != Some(segments as u32) {
            // The loss is reported by this open; the file now records what it holds.
            record_segments(&file, segments as u32, &policy.hook)?;
        } else if len != end {
            policy.hook.run(IoEvent::SyncFile, || file.sync_data())?;
        }
    }
    let census = if len == 0 { None } else { read_census(&file)? };
    if write && census.is_some() {
        // Erased, and durably, before this writer changes anything: a census is only ever
        // found describing the file as it was left.
        policy.hook.run(IoEvent::SyncFile, || {
            file.write_all_at(&[0u8; 16], CENSUS_AT as u64)?;
            file.sync_data()
        })?;
    }
    let seed = match read_seed(&file)? {
        Some(keys) => keys,
        None => {
            let keys = fresh_seed();
            if write {
                // Not synced: if a crash loses it, the next open draws other keys, and the
                // entries placed with these are found through the index until they move.
                file.write_all_at(&FileHeader::seed_bytes(keys), SEED_AT as u64)?;
            }
            keys
        }
    };
    let header_map = if write {
        Map::file(&file, 0, HEADER_LEN as usize)?
    } else {
        Map::file_private(&file, 0, HEADER_LEN as usize)?
    };
    Ok(Opened {
        file,
        header,
        segments: segments as usize,
        lost_segments,
        count_damaged,
        header_map,
        census,
        seed,
    })
}

/// Whether segments `from..to` of the file all have a zero header line: segments a crash left
/// after growing the file and before the count took them in (a segment's header is written
/// only after the count is raised and synced). Reads one line per segment.
fn blank_from(file: &File, from: u64, to: u64, seg_len: u64) -> Result<bool> {
    let mut line = [0u8; LINE];
    for seg in from..to {
        file.read_exact_at(&mut line, SEGMENTS_START + seg * seg_len)?;
        if line.iter().any(|&b| b != 0) {
            return Ok(false);
        }
    }
    Ok(true)
}

/// Record in the header page that the file holds `segments` segments, and make it durable
/// (before the caller uses a new segment): a sync of the word's own range, which leaves the
/// file's other dirty pages alone.
pub(crate) fn record_segments(file: &File, segments: u32, hook: &Hook) -> Result<()> {
    let offset = SEGMENTS_AT as u64;
    hook.run(IoEvent::WriteCount { offset, segments }, || {
        file.write_all_at(&FileHeader::segment_word(segments), offset)
    })?;
    hook.run(IoEvent::SyncRange { offset, len: 8 }, || {
        super::sys::sync_range(file, offset, 8)
    })?;
    Ok(())
}

/// What a census says (the census of the header page, at `CENSUS_AT`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Census {
    /// The live entries a cleanly closed file holds.
    pub entries: u64,
    /// How many of them the records' index holds (idempotency records and versions); 0 in a
    /// census written before the records had an index of their own.
    pub records: u64,
}

/// The crc32 of a census: of its count alone when it counts no record (the census's form
/// before the records' index), else of the count and then the records' four bytes.
fn census_crc(count: &[u8; 8], records: &[u8; 4]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(count);
    if *records != [0; 4] {
        h.update(records);
    }
    h.finalize()
}

impl Census {
    /// The census (bytes `CENSUS_AT..+16` of the header page): `entries` live entries when
    /// the file was last closed (8 little-endian bytes), a crc32, and how many of them are
    /// in the records' index (4 bytes, saturating; `Core::records`). With no record the last
    /// four bytes are zero and the crc covers the count alone (the census of files written
    /// before the records had an index of their own); else it covers the count and then the
    /// records' four bytes.
    fn encode(self) -> [u8; 16] {
        let n = self.entries.to_le_bytes();
        let r = u32::try_from(self.records.min(self.entries))
            .unwrap_or(u32::MAX)
            .to_le_bytes();
        let mut b = [0u8; 16];
        b[0..8].copy_from_slice(&n);
        b[12..16].copy_from_slice(&r);
        b[8..12].copy_from_slice(&census_crc(&n, &r).to_le_bytes());
        b
    }

    /// Decode a census: `None` if there is none (all zero: the crc of a zero count is not
    /// zero) or its check fails.
    fn decode(b: &[u8]) -> Option<Census> {
        let n: [u8; 8] = b.get(0..8)?.try_into().ok()?;
        let r: [u8; 4] = b.get(12..16)?.try_into().ok()?;
        let crc: [u8; 4] = b.get(8..12)?.try_into().ok()?;
        (u32::from_le_bytes(crc) == census_crc(&n, &r)).then(|| {
            let entries = u64::from_le_bytes(n);
            Census {
                entries,
                records: u64::from(u32::from_le_bytes(r)).min(entries),
            }
        })
    }
}

/// Record the `census` of the file's entries as its writer goes away. Not synced: a power
/// cut may lose it (then the next open knows no census) or keep it while losing entries (then
/// the next open counts them as missing, which they are).
pub(crate) fn record_census(file: &File, census: Census) -> Result<()> {
    file.write_all_at(&census.encode(), CENSUS_AT as u64)?;
    Ok(())
}

/// New random keys for the hash of a store's keys (never all zero).
pub(crate) fn fresh_seed() -> [u64; 4] {
    let draw = ahash::RandomState::new();
    let mut keys = [0u64; 4];
    for (i, k) in (0u64..).zip(keys.iter_mut()) {
        *k = draw.hash_one(i) | 1;
    }
    keys
}

fn read_seed(file: &File) -> Result<Option<[u64; 4]>> {
    let mut b = [0u8; 40];
    match file.read_exact_at(&mut b, SEED_AT as u64) {
        Ok(()) => Ok(FileHeader::seed_of(&b)),
        Err(e) if e.kind() == ErrorKind::UnexpectedEof => Ok(None),
        Err(e) => Err(Error::Io(e)),
    }
}

fn read_census(file: &File) -> Result<Option<Census>> {
    let mut b = [0u8; 16];
    match file.read_exact_at(&mut b, CENSUS_AT as u64) {
        Ok(()) => Ok(Census::decode(&b)),
        Err(e) if e.kind() == ErrorKind::UnexpectedEof => Ok(None),
        Err(e) => Err(Error::Io(e)),
    }
}

/// The segment count the header page records: `None` if its word fails its check (or the file
/// ends before it).
fn read_count(file: &File) -> Result<Option<u32>> {
    let mut w = [0u8; 8];
    match file.read_exact_at(&mut w, SEGMENTS_AT as u64) {
        Ok(()) => Ok(FileHeader::segments_of(&w)),
        Err(e) if e.kind() == ErrorKind::UnexpectedEof => Ok(None),
        Err(e) => Err(Error::Io(e)),
    }
}

/// Take the file's exclusive lock.
///
/// The kernel drops a closed store's lock when the last descriptor of the file goes. A child
/// this process is spawning at that moment holds a copy of every descriptor until it reaches
/// exec, so a lock just released can look held for a moment: try for a little while before
/// answering `Locked`.
fn lock(file: &File, path: &Path) -> Result<()> {
    let deadline = Instant::now() + LOCK_PATIENCE;
    loop {
        match file.try_lock() {
            Ok(()) => return Ok(()),
            Err(std::fs::TryLockError::WouldBlock) if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(5));
            }
            Err(std::fs::TryLockError::WouldBlock) => {
                return Err(Error::Locked {
                    path: path.to_path_buf(),
                })
            }
            Err(std::fs::TryLockError::Error(e)) => return Err(Error::Io(e)),
        }
    }
}

/// Write the header page of a new file and make it, and its directory entry, durable.
fn create(file: &mut File, path: &Path, header: FileHeader) -> Result<()> {
    let mut page = vec![0u8; HEADER_LEN as usize];
    if let Some(used) = page.get_mut(..HEADER_USED) {
        used.copy_from_slice(&header.encode());
    }
    if let Some(count) = page.get_mut(SEGMENTS_AT..SEGMENTS_AT + 8) {
        count.copy_from_slice(&FileHeader::segment_word(0));
    }
    file.write_all(&page)?;
    file.sync_all()?;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        // Make the new directory entry durable too.
        if let Ok(d) = File::open(dir) {
            let _ = d.sync_all();
        }
    }
    Ok(())
}

/// Read and check the header of an existing file.
fn read_header(file: &mut File) -> Result<FileHeader> {
    let mut b = [0u8; HEADER_USED];
    file.seek(SeekFrom::Start(0))?;
    match file.read_exact(&mut b) {
        Ok(()) => {}
        Err(e) if e.kind() == ErrorKind::UnexpectedEof => {
            return Err(Error::NotAStore {
                reason: "file shorter than a header",
            })
        }
        Err(e) => return Err(Error::Io(e)),
    }
    FileHeader::decode(&b)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_census_reads_back_and_the_form_before_records_still_reads() {
        for c in [
            Census {
                entries: 104,
                records: 0,
            },
            Census {
                entries: 104,
                records: 37,
            },
            Census {
                entries: u64::MAX,
                records: u64::MAX,
            },
        ] {
            let b = c.encode();
            let expect = Census {
                records: c.records.min(u64::from(u32::MAX)),
                ..c
            };
            assert_eq!(Census::decode(&b), Some(expect));
            // Any byte changed fails the check.
            for i in 0..16 {
                let mut d = b;
                d[i] ^= 0x10;
                assert_eq!(Census::decode(&d), None, "byte {i} of {c:?}");
            }
        }
        // The form every census had before: the count, its crc32, four zero bytes.
        let mut old = [0u8; 16];
        old[0..8].copy_from_slice(&104u64.to_le_bytes());
        old[8..12].copy_from_slice(&crc32fast::hash(&104u64.to_le_bytes()).to_le_bytes());
        assert_eq!(
            Census::decode(&old),
            Some(Census {
                entries: 104,
                records: 0
            })
        );
        assert_eq!(Census::decode(&[0u8; 16]), None, "all zero: no census");
        // A records count above the entries (only a damaged file has one) is cut to them.
        let b = Census {
            entries: 5,
            records: 9,
        }
        .encode();
        assert_eq!(Census::decode(&b).map(|c| c.records), Some(5));
    }

    /// A file of `segments` segments of 64 KiB whose count word says `count`; segment `i`'s
    /// header line is non-zero when `used[i]`.
    fn file_with(dir: &Path, count: u32, used: &[bool]) -> std::path::PathBuf {
        let path = dir.join("count.tg");
        let header = FileHeader {
            seg_shift: 16,
            sub_windows: 64,
            created_ms: 0,
        };
        let mut b = vec![0u8; SEGMENTS_START as usize + used.len() * (1 << 16)];
        b[..HEADER_USED].copy_from_slice(&header.encode());
        b[SEGMENTS_AT..SEGMENTS_AT + 8].copy_from_slice(&FileHeader::segment_word(count));
        for (i, _) in used.iter().enumerate().filter(|(_, &u)| u) {
            b[SEGMENTS_START as usize + i * (1 << 16)] = 1;
        }
        std::fs::write(&path, b).unwrap();
        path
    }

    fn open_at(path: &Path) -> Opened {
        let header = FileHeader::decode(&std::fs::read(path).unwrap()).unwrap();
        open(path, header, Access::Write, &OpenPolicy::default()).unwrap()
    }

    #[test]
    fn only_blank_segments_past_the_count_are_cut_off() {
        let dir = tempfile::tempdir().unwrap();
        // A crash after growing: the segment past the count is blank, and goes.
        let path = file_with(dir.path(), 1, &[true, false]);
        let o = open_at(&path);
        assert_eq!(
            (o.segments, o.lost_segments, o.count_damaged),
            (1, 0, false)
        );
        assert_eq!(o.file.metadata().unwrap().len(), SEGMENTS_START + (1 << 16));
        drop(o);
        // A count below segments in use (a count of 0 passes its crc as well as any other):
        // the count is wrong, not the file; nothing is cut, and the count is written again.
        for count in [0, 1] {
            let path = file_with(dir.path(), count, &[true, true]);
            let o = open_at(&path);
            assert_eq!((o.segments, o.lost_segments, o.count_damaged), (2, 0, true));
            assert_eq!(
                o.file.metadata().unwrap().len(),
                SEGMENTS_START + 2 * (1 << 16)
            );
            assert_eq!(read_count(&o.file).unwrap(), Some(2), "count {count}");
        }
    }
}
