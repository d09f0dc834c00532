//! Read-only views of a store file, for tools that look at a store a running gateway holds open
//! (`tollgate stat`, `verify`, `dump`, `inspect`).
//!
//! A view opens the file for reading only, takes no lock, and maps every segment as a private
//! copy-on-write map: the whole open path runs as usual (the header check, the recovery scan
//! that rebuilds the index), and whatever it or a later call writes stays in this process's
//! memory. Nothing reaches the file: the operating system refuses writes through a descriptor
//! opened for reading, and the view never grows, truncates or syncs the file. The compactor is
//! off.
//!
//! A view is a snapshot that may miss writes: a page of the file is copied when the view first
//! writes to it (the recovery scan writes to every page holding an entry it checks), and pages
//! it only reads may show writes the owner made after the view opened. An entry that the owner
//! was rewriting at the moment it was read can fail its checks and be counted as corrupt in
//! [`Store::open_report`]; look again to tell a real problem from a moving entry.

use std::io::Read;
use std::path::Path;

use crate::error::{Error, Result};
use crate::options::Options;
use crate::storage::file::Access;
use crate::storage::format::{FileHeader, HEADER_LEN, HEADER_USED, SEGMENTS_START};
use crate::store::Store;

impl Store {
    /// Open a read-only view of the store file at `path`: no lock is taken (another process
    /// may hold the store open and keep writing it), nothing is ever written to the file, and
    /// the compactor is off whatever `opts` says. See the module docs for what a view sees.
    ///
    /// Fails with [`Error::Io`] if the file does not exist or cannot be read, and with
    /// [`Error::NotAStore`], [`Error::UnsupportedVersion`] or [`Error::Corrupt`] if its header
    /// cannot be trusted. Calls that would grow the store fail with [`Error::ReadOnly`];
    /// other changes (checks, deletes) apply to the view's private copy only.
    pub fn open_read_only(path: impl AsRef<Path>, opts: Options) -> Result<Store> {
        Store::open_file(path.as_ref(), opts.compactor(false), Access::ReadOnly)
    }
}

/// How long a store file is, measured against the segment length its header gives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileShape {
    /// The file's length in bytes.
    pub len: u64,
    /// The segment length the header gives, in bytes.
    pub segment_len: u64,
    /// Whole segments in the file.
    pub segments: u64,
    /// Bytes of a partial segment at the end (0 for a whole file). A store grows by whole
    /// segments, so a partial one means the file was cut short (or a crash hit while it grew).
    pub partial_bytes: u64,
}

impl FileShape {
    /// Read the header of the store file at `path` and measure the file against it. Reads
    /// only; takes no lock.
    pub fn of(path: impl AsRef<Path>) -> Result<FileShape> {
        let mut file = std::fs::File::open(path.as_ref())?;
        let len = file.metadata()?.len();
        let mut b = [0u8; HEADER_USED];
        file.read_exact(&mut b).map_err(|e| match e.kind() {
            std::io::ErrorKind::UnexpectedEof => Error::NotAStore {
                reason: "file shorter than a header",
            },
            _ => Error::Io(e),
        })?;
        let header = FileHeader::decode(&b)?;
        let segment_len = 1u64 << header.seg_shift;
        // Segments start at `SEGMENTS_START`; bytes between the header page and there belong
        // to a first segment cut short.
        let body = len.saturating_sub(SEGMENTS_START);
        let partial_bytes = if len < SEGMENTS_START {
            len.saturating_sub(HEADER_LEN)
        } else {
            body % segment_len
        };
        Ok(FileShape {
            len,
            segment_len,
            segments: body / segment_len,
            partial_bytes,
        })
    }

    /// Whether the file is shorter than its header and segments say (a partial segment).
    pub fn is_truncated(&self) -> bool {
        self.partial_bytes != 0
    }
}
