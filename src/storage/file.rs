//! The store file: create or open it, hold its lock, read or write its header, and trim what a
//! crash while growing left behind.
//!
//! One process at a time writes a store file: the exclusive lock taken here is held for as
//! long as the file is open (the kernel drops it with the last descriptor), and every later
//! open, in this process or another, answers [`Error::Locked`].

use std::fs::{File, OpenOptions};
use std::io::{ErrorKind, Read, Seek, SeekFrom, Write};
use std::path::Path;
use std::time::{Duration, Instant};

use super::format::{FileHeader, HEADER_LEN, HEADER_USED};
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
    /// The whole segments it holds.
    pub segments: usize,
    /// The header page, mapped (its live words follow the checked 64 bytes).
    pub header_map: Map,
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

/// Open the store file at `path`: as the writer, create it (and its directory) with
/// `new_header` if it does not exist, lock it, check its header and cut off a partial segment
/// left by a crash while growing; as a read-only view, only open and check it.
pub(crate) fn open(path: &Path, new_header: FileHeader, access: Access) -> Result<Opened> {
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
    let body = len.saturating_sub(HEADER_LEN);
    let segments = if len == 0 {
        0
    } else {
        (body / seg_len) as usize
    };
    if len > HEADER_LEN && body % seg_len != 0 && write {
        // A crash while growing left a partial segment: nothing in it was ever used (a
        // segment is used only after its whole length is allocated and synced).
        file.set_len(HEADER_LEN + segments as u64 * seg_len)?;
    }
    let header_map = if write {
        Map::file(&file, 0, HEADER_LEN as usize)?
    } else {
        Map::file_private(&file, 0, HEADER_LEN as usize)?
    };
    Ok(Opened {
        file,
        header,
        segments,
        header_map,
    })
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
