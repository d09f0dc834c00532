//! The engine's state: one [`Core`] per open store.
//!
//! `Core` is the data every part of the engine shares: the mapped segments, the index, the
//! clock, the options and the counters. Each part adds its methods in a file of its own (the
//! check path in `check.rs`, lookup in `lookup.rs`, entry moves in `moves.rs`, recovery in
//! `recovery.rs`, idempotency records in `records.rs`, expiry in `expire.rs`, response
//! compaction in `blobs.rs`, inspection in `inspect.rs`), and none of them is imported back
//! here: this file depends only on storage and on the public option types.

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicU64;
use std::sync::Arc;

use parking_lot::Mutex;

use super::counters::{Counters, Cursor};
use crate::clock::ClockSource;
use crate::idempotency::IdemOptions;
use crate::options::OnFull;
use crate::storage::file::Census;
use crate::storage::format::{KIND_PERMITS, KIND_WINDOWS};
use crate::storage::index::Index;
use crate::storage::raw::Map;
use crate::storage::segment::Segments;

/// The engine of one store (see the module docs).
pub(crate) struct Core {
    pub(crate) segs: Segments,
    /// The checks' index: window entries, and the permit entries a request takes beside its
    /// check. Kept apart from [`Core::records`] so that it stays as small as the keys the
    /// checks count, whatever the records number (`Core::index_of`).
    pub(crate) index: Index,
    /// The index of idempotency records and versions: entries looked up by an
    /// Idempotency-Key or a resource, which live for hours and can outnumber the window keys
    /// many times over. In the checks' index they would grow its tables with them, and their
    /// inserts would hold the stripe locks new window keys wait for (`docs/DESIGN.md`, "The
    /// index").
    pub(crate) records: Index,
    pub(crate) hasher: ahash::RandomState,
    /// Sub-windows per sliding window (`B`), as fixed in the file header.
    pub(crate) b: u32,
    pub(crate) clock: ClockSource,
    pub(crate) idem: IdemOptions,
    pub(crate) path: Option<PathBuf>,
    /// Checks that found their entry frozen and looked again (contention diagnostics).
    pub(crate) retries: AtomicU64,
    /// Entries in the index.
    pub(crate) live_entries: AtomicU64,
    pub(crate) max_entries: Option<u64>,
    pub(crate) on_full: OnFull,
    pub(crate) counters: Counters,
    pub(crate) cursor: Mutex<Cursor>,
    /// Blob segments emptied by compaction, waiting for the epoch before reuse.
    pub(crate) recycle: Arc<Mutex<Vec<usize>>>,
    /// Blob segments handed to the epoch and not yet in `recycle`.
    pub(crate) pending_recycle: Arc<AtomicU64>,
    /// Held while response records are compacted.
    pub(crate) compacting: Mutex<()>,
    /// Held across a split of a home segment and the moves it asks for (`homing.rs`).
    pub(crate) homing: Mutex<()>,
    /// The header page, mapped: its word at `SEEN_AT` is the newest time any operation ran at
    /// (explicit or from the clock), rounded up to the next multiple of `SEEN_GRANULE_MS`
    /// above it, kept across restarts. The compactor never judges expiry later than that
    /// newest time: a caller that drives time itself (`check_at`) is never overtaken by the
    /// store's own clock, which would unlink entries still live in the caller's time and hand
    /// out fresh quota.
    pub(crate) header: Map,
}

/// What a [`Core`] is made of, besides its empty bookkeeping.
pub(crate) struct Parts<'a> {
    /// The segments, mapped (or the anonymous ones of an in-memory store).
    pub segs: Segments,
    /// The header page (anonymous for an in-memory store).
    pub header: Map,
    /// The keys of the hash of keys (the file's, so that home slots stay put across opens).
    pub seed: [u64; 4],
    /// Sub-windows per sliding window, as fixed in the file header.
    pub b: u32,
    /// The file, or `None` in memory.
    pub path: Option<&'a Path>,
    /// The store's clock.
    pub clock: ClockSource,
    /// Idempotency settings.
    pub idem: IdemOptions,
    /// The most entries, if bounded.
    pub max_entries: Option<u64>,
    /// What a new key gets when the store is full.
    pub on_full: OnFull,
}

impl Core {
    /// A core over `parts` with an empty index (recovery fills it for a file).
    pub(crate) fn new(parts: Parts<'_>) -> Core {
        Core {
            segs: parts.segs,
            index: Index::new(),
            records: Index::new(),
            hasher: {
                let [k0, k1, k2, k3] = parts.seed;
                ahash::RandomState::with_seeds(k0, k1, k2, k3)
            },
            b: parts.b,
            clock: parts.clock,
            idem: parts.idem,
            path: parts.path.map(Path::to_path_buf),
            retries: AtomicU64::new(0),
            live_entries: AtomicU64::new(0),
            max_entries: parts.max_entries,
            on_full: parts.on_full,
            counters: Counters::default(),
            cursor: Mutex::new(Cursor::default()),
            recycle: Arc::new(Mutex::new(Vec::new())),
            pending_recycle: Arc::new(AtomicU64::new(0)),
            compacting: Mutex::new(()),
            homing: Mutex::new(()),
            header: parts.header,
        }
    }

    /// The index that holds entries of `kind`: the checks' for window and permit entries,
    /// the records' for the rest.
    #[inline]
    pub(crate) fn index_of(&self, kind: u8) -> &Index {
        match kind {
            KIND_WINDOWS | KIND_PERMITS => &self.index,
            _ => &self.records,
        }
    }
}

impl Drop for Core {
    /// The last of the store in this process: leave the census of its entries in the file,
    /// so that the next open can tell a loss of segments in entries (`storage/file.rs`).
    fn drop(&mut self) {
        let records = self.records.len() as u64;
        let _ = self.segs.record_census(Census {
            entries: self.index.len() as u64 + records,
            records,
        });
        // Free what this store retired, if no read section holds it any more (what is held
        // goes at a later collect, of any store: `storage/readers.rs`).
        crate::storage::readers::collect();
    }
}
