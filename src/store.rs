//! The store: open, check, peek, close.

use std::fs::{File, OpenOptions};
use std::io::{ErrorKind, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use crossbeam_epoch::Guard;
use parking_lot::Mutex;

use crate::clock::{Clock, ClockSource, ManualClock};
use crate::compactor::{CompactorHandle, CompactorOptions, Counters, Cursor, PassReport};
use crate::decision::{Decision, WindowState};
use crate::error::{Error, Result};
use crate::format::{
    entry_crc, header_low, EntryLayout, FileHeader, SegmentHeader, BLOB_MAGIC, BLOB_SEGMENT,
    HEADER_LEN, HEADER_USED, KIND_IDEM, KIND_WINDOWS, LINE, SEEN_AT,
};
use crate::idempotency::{
    record_key, Begin, Durability, Fingerprint, IdemOptions, IdempotencyKey, Lease, StoredResponse,
};
use crate::index::Index;
use crate::limit::{Descriptor, Limits, MAX_WINDOWS};
use crate::raw::Map;
use crate::segment::{Entry, Segments};
use crate::window::cell::{self, META_FROZEN, META_HEAD, META_LOCK};
use crate::window::{self, Norm, FROZEN};

/// The longest key, in bytes.
pub const MAX_KEY_LEN: usize = 128;

const KEY_WORDS: usize = MAX_KEY_LEN / 8;
/// Meta word of an exact window: lock bit, frozen bit, head in the low 32 bits.
/// Largest admission time an exact ring can hold (ms + 1): 10000-01-01.
const MAX_RING_TIME: u64 = 253_402_300_800_000;

/// How a store is opened.
///
/// ```
/// use tollgate::{ManualClock, Options};
/// let opts = Options::default().sub_windows(8).clock(ManualClock::new(0));
/// # let _ = opts;
/// ```
#[derive(Debug, Clone)]
pub struct Options {
    sub_windows: u32,
    segment_shift: u32,
    max_segments: usize,
    clock: ClockSource,
    idem: IdemOptions,
    compactor: CompactorOptions,
    max_entries: Option<u64>,
    on_full: OnFull,
}

/// What a check on a new key gets when the store is full and nothing can be expired.
/// Keys already stored keep working either way, and no stored key is evicted to make room.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OnFull {
    /// Fail closed: the request is rejected (`Retry-After: 1`), and counted nowhere.
    #[default]
    Reject,
    /// Fail open: the request is admitted without being counted.
    Admit,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            sub_windows: crate::limit::DEFAULT_SUB_WINDOWS,
            segment_shift: 22,
            max_segments: 16_384,
            clock: ClockSource::System,
            idem: IdemOptions::default(),
            compactor: CompactorOptions::default(),
            max_entries: None,
            on_full: OnFull::Reject,
        }
    }
}

impl Options {
    /// The most sub-windows a bucketed window is split into (2 to 31, default 16). More
    /// sub-windows release quota sooner after the window passes (at most `W / B` late), as far
    /// as the limit's counter width allows (`docs/ACCURACY.md`). Fixed when the file is created.
    pub fn sub_windows(mut self, b: u32) -> Self {
        self.sub_windows = b;
        self
    }

    /// Size of one segment of the file, as a power of two (16 = 64 KiB to 30 = 1 GiB; default
    /// 22 = 4 MiB). The file grows one segment at a time. Fixed when the file is created.
    pub fn segment_size_log2(mut self, shift: u32) -> Self {
        self.segment_shift = shift;
        self
    }

    /// The most segments the store may grow to (default 16384). With the default segment size
    /// that is 64 GiB; a store that needs more space gets [`Error::CapacityExhausted`].
    pub fn max_segments(mut self, n: usize) -> Self {
        self.max_segments = n;
        self
    }

    /// Drive the store with a manual clock (tests, simulations).
    pub fn clock(mut self, clock: ManualClock) -> Self {
        self.clock = ClockSource::Manual(clock);
        self
    }

    /// Drive the store with any clock.
    pub fn custom_clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = ClockSource::Custom(clock);
        self
    }

    /// How long a completed idempotency record is replayed (default 24 h). After that the key
    /// behaves as never seen.
    pub fn idempotency_ttl(mut self, ttl: std::time::Duration) -> Self {
        self.idem.ttl = ttl;
        self
    }

    /// How long an idempotency lease stays in flight without `complete` or `abort` (default
    /// 60 s, rounded up to whole seconds). After that the next `begin` takes the key over, so a
    /// crashed handler never locks a key.
    pub fn lease_timeout(mut self, timeout: std::time::Duration) -> Self {
        self.idem.lease = timeout;
        self
    }

    /// The largest encoded response kept for replay (default 1 MiB). A response record must fit
    /// in one segment, so the effective maximum is at most the segment size minus 80 bytes.
    pub fn max_response_bytes(mut self, max: usize) -> Self {
        self.idem.max_response = max;
        self
    }

    /// When `complete` returns ([`Durability::Process`] by default).
    pub fn durability(mut self, d: Durability) -> Self {
        self.idem.durability = d;
        self
    }

    /// Run the background compactor (default: yes). Without it, call [`Store::expire_now`]
    /// and [`Store::compact_now`] yourself.
    pub fn compactor(mut self, enabled: bool) -> Self {
        self.compactor.enabled = enabled;
        self
    }

    /// How often the compactor wakes up when it finds little to do (default 250 ms).
    pub fn compactor_interval(mut self, every: std::time::Duration) -> Self {
        self.compactor.interval = every;
        self
    }

    /// How many entries one compactor pass examines at most (default 2048).
    pub fn compactor_budget(mut self, entries: u64) -> Self {
        self.compactor.budget = entries.max(1);
        self
    }

    /// The most entries (window keys and idempotency records together) the store holds. A new
    /// key past it gets the [`OnFull`] outcome (checks) or [`Error::CapacityExhausted`]
    /// (`begin`). The file itself is bounded by [`Options::max_segments`].
    pub fn max_entries(mut self, n: u64) -> Self {
        self.max_entries = Some(n);
        self
    }

    /// What a check on a new key gets when the store is full ([`OnFull::Reject`] by default).
    pub fn on_full(mut self, policy: OnFull) -> Self {
        self.on_full = policy;
        self
    }

    fn validate(&self) -> Result<()> {
        if self.idem.lease.is_zero() || self.idem.ttl.is_zero() {
            return Err(Error::InvalidOptions(
                "lease timeout and TTL must be positive",
            ));
        }
        if !(2..=31).contains(&self.sub_windows) {
            return Err(Error::InvalidOptions("sub_windows must be 2 to 31"));
        }
        if !(16..=30).contains(&self.segment_shift) {
            return Err(Error::InvalidOptions("segment_size_log2 must be 16 to 30"));
        }
        if self.max_segments == 0 || self.max_segments > 1 << 20 {
            return Err(Error::InvalidOptions("max_segments must be 1 to 2^20"));
        }
        Ok(())
    }
}

/// What opening a store found (entries recovered, records skipped).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct OpenReport {
    /// Entries loaded into the index.
    pub entries: u64,
    /// Entries whose checksum or structure failed: skipped, never served.
    pub corrupt_entries: u64,
    /// Segments whose header failed: skipped whole, never served, never reused.
    pub corrupt_segments: u64,
    /// Entries found twice (a crash while an entry moved): the newer copy is kept.
    pub duplicates: u64,
    /// Segments whose header was never written (a crash while growing): reused.
    pub blank_segments: u64,
}

/// A snapshot of a store's size and of the compactor's work.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    /// Live entries in the index (window keys and idempotency records).
    pub entries: u64,
    /// Of which idempotency records.
    pub idempotency_records: u64,
    /// Segments mapped.
    pub segments: u64,
    /// Bytes the segments take (plus the header page for a file).
    pub bytes: u64,
    /// Free lines (64 bytes each) ready for new entries.
    pub free_lines: u64,
    /// Blob segments, and the lines in them written and still live.
    pub blob_segments: u64,
    /// Lines of response records written in blob segments.
    pub blob_used_lines: u64,
    /// Lines of response records still referenced.
    pub blob_live_lines: u64,
    /// Window entries expired so far.
    pub expired_windows: u64,
    /// Idempotency records expired so far (TTL, lease timeout, or aborted).
    pub expired_records: u64,
    /// Of which leases that timed out in flight.
    pub expired_leases: u64,
    /// Response records moved by compaction, and blob segments recycled.
    pub moved_records: u64,
    /// Blob segments emptied and reused.
    pub recycled_segments: u64,
    /// Expiry passes run.
    pub passes: u64,
    /// Duration of the last expiry pass, in microseconds.
    pub last_pass_micros: u64,
}

pub(crate) struct Core {
    pub(crate) segs: Segments,
    pub(crate) index: Index,
    pub(crate) hasher: ahash::RandomState,
    pub(crate) kmax: u32,
    pub(crate) clock: ClockSource,
    pub(crate) idem: IdemOptions,
    path: Option<PathBuf>,
    report: OpenReport,
    /// Checks that found their entry frozen and looked again (contention diagnostics).
    retries: AtomicU64,
    /// Entries in the index.
    pub(crate) live_entries: AtomicU64,
    pub(crate) max_entries: Option<u64>,
    on_full: OnFull,
    pub(crate) counters: Counters,
    pub(crate) cursor: Mutex<Cursor>,
    /// Blob segments emptied by compaction, waiting for the epoch before reuse.
    pub(crate) recycle: Arc<Mutex<Vec<usize>>>,
    /// Blob segments handed to the epoch and not yet in `recycle`.
    pub(crate) pending_recycle: Arc<AtomicU64>,
    /// Held while response records are compacted.
    pub(crate) compacting: Mutex<()>,
    /// The header page, mapped: its word at [`SEEN_AT`] is the newest time any operation ran at
    /// (explicit or from the clock), rounded up to the next multiple of [`SEEN_GRANULE_MS`]
    /// above it, kept across restarts. The compactor never judges expiry later than that
    /// newest time: a caller that drives time itself (`check_at`) is never overtaken by the
    /// store's own clock, which would unlink entries still live in the caller's time and hand
    /// out fresh quota. And a window word cannot have been written after it, which tells a
    /// word written before a clock step back from one left alone for weeks (`window::age`).
    header: Map,
}

/// The header's newest-time word moves in steps of this many milliseconds (a power of two).
pub(crate) const SEEN_GRANULE_MS: u64 = 1024;

/// A tollgate store: sliding-window counters in a memory-mapped file (or anonymous memory).
///
/// `Store` is `Send + Sync` and cheap to clone: clones share one store. See the crate docs for
/// an example.
#[derive(Clone)]
pub struct Store {
    pub(crate) core: Arc<Core>,
    /// Stops and joins the compactor when the last clone goes.
    _compactor: Arc<CompactorHandle>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("path", &self.core.path)
            .field("clock", &self.core.clock)
            .finish_non_exhaustive()
    }
}

/// Refuse an empty or over-long key (every backend's first step).
#[inline]
pub(crate) fn check_key(key: &[u8]) -> Result<()> {
    if key.is_empty() || key.len() > MAX_KEY_LEN {
        return Err(Error::InvalidKey { len: key.len() });
    }
    Ok(())
}

/// A key split into words, as entries store it.
struct KeyWords {
    len: usize,
    words: [u64; KEY_WORDS],
}

impl KeyWords {
    fn new(key: &[u8]) -> Result<KeyWords> {
        if key.is_empty() || key.len() > MAX_KEY_LEN {
            return Err(Error::InvalidKey { len: key.len() });
        }
        let mut words = [0u64; KEY_WORDS];
        for (w, chunk) in words.iter_mut().zip(key.chunks(8)) {
            let mut b = [0u8; 8];
            if let Some(dst) = b.get_mut(..chunk.len()) {
                dst.copy_from_slice(chunk);
            }
            *w = u64::from_le_bytes(b);
        }
        Ok(KeyWords {
            len: key.len(),
            words,
        })
    }

    fn n_words(&self) -> usize {
        self.len.div_ceil(8)
    }
}

enum Applied {
    /// The decision is in the caller's `Decision`.
    Done,
    /// The entry is frozen (moving): look the key up again.
    Moved,
    /// The entry holds other windows than the limits asked for: move it to the new layout.
    Mismatch,
}

/// How long `Store::open` keeps trying a lock that looks held before answering `Locked`.
const LOCK_PATIENCE: std::time::Duration = std::time::Duration::from_millis(100);

impl Store {
    /// Open the store file at `path`, creating it if it does not exist.
    ///
    /// Fails with [`Error::Locked`] if the file is open in another store, in this process or
    /// another (after trying for 100 ms: a lock released a moment ago can still look held
    /// while a child process spawned meanwhile has not reached exec); with
    /// [`Error::NotAStore`], [`Error::UnsupportedVersion`] or [`Error::Corrupt`]
    /// if its header cannot be trusted. Entries that fail their checks are skipped and counted
    /// in [`Store::open_report`].
    pub fn open(path: impl AsRef<Path>, opts: Options) -> Result<Store> {
        Store::open_file(path.as_ref(), opts, false)
    }

    /// [`Store::open`], or with `read_only` a view that takes no lock and writes nothing to
    /// the file (`src/snapshot.rs`): the file is opened for reading, mapped privately, never
    /// created, truncated or grown.
    pub(crate) fn open_file(path: &Path, opts: Options, read_only: bool) -> Result<Store> {
        opts.validate()?;
        let path = path.to_path_buf();
        if let Some(dir) = path
            .parent()
            .filter(|d| !d.as_os_str().is_empty() && !read_only)
        {
            std::fs::create_dir_all(dir)?;
        }
        let mut file = OpenOptions::new()
            .read(true)
            .write(!read_only)
            .create(!read_only)
            .truncate(false)
            .open(&path)?;
        // The kernel drops a closed store's lock when the last descriptor of the file goes. A
        // child this process is spawning at that moment holds a copy of every descriptor until
        // it reaches exec, so a lock just released can look held for a moment: try for a
        // little while before answering `Locked`.
        let deadline = std::time::Instant::now() + LOCK_PATIENCE;
        loop {
            if read_only {
                break; // a read-only view takes no lock
            }
            match file.try_lock() {
                Ok(()) => break,
                Err(std::fs::TryLockError::WouldBlock) if std::time::Instant::now() < deadline => {
                    std::thread::sleep(std::time::Duration::from_millis(5));
                }
                Err(std::fs::TryLockError::WouldBlock) => return Err(Error::Locked { path }),
                Err(std::fs::TryLockError::Error(e)) => return Err(Error::Io(e)),
            }
        }
        let len = file.metadata()?.len();
        if len == 0 && read_only {
            return Err(Error::NotAStore {
                reason: "empty file",
            });
        }
        let header = if len == 0 {
            let h = FileHeader {
                seg_shift: opts.segment_shift,
                kmax: opts.sub_windows + 1,
                created_ms: opts.clock.now_ms(),
            };
            let mut page = vec![0u8; HEADER_LEN as usize];
            page[..HEADER_USED].copy_from_slice(&h.encode());
            file.write_all(&page)?;
            file.sync_all()?;
            if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                // Make the new directory entry durable too.
                if let Ok(d) = File::open(dir) {
                    let _ = d.sync_all();
                }
            }
            h
        } else {
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
            FileHeader::decode(&b)?
        };
        let seg_len = 1u64 << header.seg_shift;
        let body = len.saturating_sub(HEADER_LEN);
        let count = if len == 0 {
            0
        } else {
            (body / seg_len) as usize
        };
        if len > HEADER_LEN && body % seg_len != 0 && !read_only {
            // A crash while growing left a partial segment: nothing in it was ever used (a
            // segment is used only after its whole length is allocated and synced).
            file.set_len(HEADER_LEN + count as u64 * seg_len)?;
        }
        let header_map = if read_only {
            Map::file_private(&file, 0, HEADER_LEN as usize)?
        } else {
            Map::file(&file, 0, HEADER_LEN as usize)?
        };
        let mut segs = Segments::new(Some(file), header.seg_shift, opts.max_segments.max(count));
        if read_only {
            segs.set_private();
        }
        segs.map_existing(count)?;
        let mut core = Core {
            segs,
            index: Index::new(),
            hasher: ahash::RandomState::new(),
            kmax: header.kmax,
            clock: opts.clock,
            idem: opts.idem,
            path: Some(path),
            report: OpenReport::default(),
            retries: AtomicU64::new(0),
            live_entries: AtomicU64::new(0),
            max_entries: opts.max_entries,
            on_full: opts.on_full,
            counters: Counters::default(),
            cursor: Mutex::new(Cursor::default()),
            recycle: Arc::new(Mutex::new(Vec::new())),
            pending_recycle: Arc::new(AtomicU64::new(0)),
            compacting: Mutex::new(()),
            header: header_map,
        };
        core.report = core.recover(count);
        core.live_entries = AtomicU64::new(core.report.entries);
        Ok(Store::start(core, opts.compactor))
    }

    /// A store in anonymous memory: nothing is written to disk and everything is gone when the
    /// last clone is dropped. For tests, and for gateways that want no file.
    pub fn open_in_memory(opts: Options) -> Result<Store> {
        opts.validate()?;
        let core = Core {
            segs: Segments::new(None, opts.segment_shift, opts.max_segments),
            index: Index::new(),
            hasher: ahash::RandomState::new(),
            kmax: opts.sub_windows + 1,
            clock: opts.clock,
            idem: opts.idem,
            path: None,
            report: OpenReport::default(),
            retries: AtomicU64::new(0),
            live_entries: AtomicU64::new(0),
            max_entries: opts.max_entries,
            on_full: opts.on_full,
            counters: Counters::default(),
            cursor: Mutex::new(Cursor::default()),
            recycle: Arc::new(Mutex::new(Vec::new())),
            pending_recycle: Arc::new(AtomicU64::new(0)),
            compacting: Mutex::new(()),
            header: Map::anon(HEADER_LEN as usize)?,
        };
        Ok(Store::start(core, opts.compactor))
    }

    fn start(core: Core, compactor: CompactorOptions) -> Store {
        let core = Arc::new(core);
        let handle = CompactorHandle::spawn(Arc::clone(&core), compactor);
        Store {
            core,
            _compactor: Arc::new(handle),
        }
    }

    /// Expire everything that is expired at `now_ms`: one full sweep of the store (the
    /// compactor does the same in bounded steps). Returns what the sweep did.
    pub fn expire_now(&self, now_ms: u64) -> PassReport {
        self.core.reset_cursor();
        let mut total = PassReport::default();
        loop {
            let r = self.core.expire_pass(now_ms, 4096);
            total.examined += r.examined;
            total.expired += r.expired;
            if r.wrapped || r.examined == 0 {
                total.wrapped = true;
                self.core.settle();
                return total;
            }
        }
    }

    /// Move live response records out of blob segments that are at least half dead, and reuse
    /// those segments. Returns the number of records moved.
    pub fn compact_now(&self) -> u64 {
        let moved = self.core.compact_blobs(50);
        self.core.settle();
        moved
    }

    /// Flush everything to disk (msync) and close this handle. Other clones keep the store
    /// open; the file lock is released when the last one goes. Dropping without `close` loses
    /// nothing on a process crash or exit (the page cache keeps the writes); `close` also
    /// protects against power loss.
    pub fn close(self) -> Result<()> {
        self.flush()
    }

    /// Write every change to the disk and wait for it (msync, then fsync of the file).
    pub fn flush(&self) -> Result<()> {
        self.core.segs.flush()?;
        if let Some(f) = self.core.segs.file() {
            f.sync_data()?;
        }
        Ok(())
    }

    /// What opening the store found.
    pub fn open_report(&self) -> OpenReport {
        self.core.report
    }

    /// The current time of the store's clock (ms since the Unix epoch).
    pub fn now_ms(&self) -> u64 {
        self.core.clock.now_ms()
    }

    /// A snapshot of the store's size.
    pub fn stats(&self) -> Stats {
        let segments = self.core.segs.count() as u64;
        let header = if self.core.path.is_some() {
            HEADER_LEN
        } else {
            0
        };
        let c = &self.core.counters;
        let blobs = self.core.segs.blob_usage();
        let entries = self.core.index.len() as u64;
        Stats {
            entries,
            idempotency_records: self.core.count_records(),
            segments,
            bytes: header + segments * self.core.segs.seg_len(),
            free_lines: self.core.segs.free_lines(),
            blob_segments: blobs.segments,
            blob_used_lines: blobs.used_lines,
            blob_live_lines: blobs.live_lines,
            expired_windows: c.expired_windows.load(Ordering::Relaxed),
            expired_records: c.expired_records.load(Ordering::Relaxed),
            expired_leases: c.expired_leases.load(Ordering::Relaxed),
            moved_records: c.moved_records.load(Ordering::Relaxed),
            recycled_segments: c.recycled_segments.load(Ordering::Relaxed),
            passes: c.passes.load(Ordering::Relaxed),
            last_pass_micros: c.last_pass_ns.load(Ordering::Relaxed) / 1000,
        }
    }

    /// Count a request of `cost` against every window of `limits` for `key`, at the store's
    /// clock: admitted only if every window has room; a rejected request consumes nothing.
    ///
    /// A cost of 0 counts nothing and reports the current state (like [`Store::peek`]).
    #[inline]
    pub fn check(&self, key: &[u8], limits: &Limits, cost: u32) -> Result<Decision> {
        self.check_at(key, limits, cost, self.core.clock.now_ms())
    }

    /// [`Store::check`] at an explicit time (ms since the Unix epoch).
    #[inline]
    pub fn check_at(
        &self,
        key: &[u8],
        limits: &Limits,
        cost: u32,
        now_ms: u64,
    ) -> Result<Decision> {
        // The decision is filled in place inside the value returned, and this wrapper is
        // inlined, so the caller's own slot is filled: copying a finished `Decision` out of
        // a local cost about a tenth of a hot-key check.
        let mut res = Ok(Decision::BLANK);
        if let Ok(out) = &mut res {
            self.core.check(key, limits, cost, now_ms, out)?;
        }
        res
    }

    /// What a request of cost 1 would get now, without counting it.
    pub fn peek(&self, key: &[u8], limits: &Limits) -> Result<Decision> {
        self.peek_at(key, limits, self.core.clock.now_ms())
    }

    /// [`Store::peek`] at an explicit time.
    pub fn peek_at(&self, key: &[u8], limits: &Limits, now_ms: u64) -> Result<Decision> {
        check_key(key)?;
        let guard = crossbeam_epoch::pin();
        let hash = self.core.hasher.hash_one(key);
        match self.core.find(hash, key, &guard) {
            Some(line) => Ok(self.core.snapshot(line, limits, 1, now_ms, None)),
            None => Ok(empty_decision(limits, 1, now_ms)),
        }
    }

    /// How late a bucketed window of `limit` may release quota on this store: a request made at
    /// `t` stops counting at the latest at `t + window + release_delay` (one sub-window; see
    /// `docs/ACCURACY.md`). Exact windows release on time (zero).
    pub fn release_delay(&self, limit: &crate::Limit) -> std::time::Duration {
        if limit.mode() == crate::Mode::Exact {
            return std::time::Duration::ZERO;
        }
        let (k, s) = window::layout(
            window::bits_for(limit.limit()),
            self.core.kmax,
            limit.window_ms(),
        );
        // Counted span is K sub-windows; the window itself is at most (K - 1) * s.
        let span = u64::from(k) * s;
        std::time::Duration::from_millis(span.saturating_sub(limit.window_ms()))
    }

    /// "Have I seen this Idempotency-Key?": start, replay, or refuse a keyed request of
    /// `scope` (token or account) with the request's `fingerprint`, at the store's clock.
    /// See the [`crate::idempotency`] module docs for the four outcomes.
    ///
    /// ```
    /// use tollgate::{Begin, Fingerprint, IdempotencyKey, Options, Store, StoredResponse};
    /// let store = Store::open_in_memory(Options::default()).unwrap();
    /// let key = IdempotencyKey::parse("4d9c3a41-6bb7-4c4e-9a39-8f3c2d7e1f00").unwrap();
    /// let fp = Fingerprint::of("POST", "/api/sms", b"{\"to\":\"+1555\"}");
    /// let Begin::Started(lease) = store.begin(b"tok_abc", &key, &fp).unwrap() else { panic!() };
    /// store.complete(&lease, &StoredResponse::new(201, "sent")).unwrap();
    /// match store.begin(b"tok_abc", &key, &fp).unwrap() {
    ///     Begin::Replay(r) => assert_eq!((r.status(), r.body()), (201, &b"sent"[..])),
    ///     other => panic!("{other:?}"),
    /// }
    /// ```
    pub fn begin(
        &self,
        scope: &[u8],
        key: &IdempotencyKey,
        fingerprint: &Fingerprint,
    ) -> Result<Begin> {
        self.begin_at(scope, key, fingerprint, self.core.clock.now_ms())
    }

    /// [`Store::begin`] at an explicit time.
    pub fn begin_at(
        &self,
        scope: &[u8],
        key: &IdempotencyKey,
        fingerprint: &Fingerprint,
        now_ms: u64,
    ) -> Result<Begin> {
        let k = record_key(scope, key)?;
        self.core.idem_begin(k.as_bytes(), fingerprint, now_ms)
    }

    /// Store the response of a started request for replay (status, headers, body). Refused with
    /// [`Error::LeaseLost`] if the lease expired and the key was taken over (or it was
    /// aborted), [`Error::AlreadyCompleted`] if completed before, and
    /// [`Error::ResponseTooLarge`] (nothing stored, the lease left as it was) above the maximum.
    pub fn complete(&self, lease: &Lease, response: &StoredResponse) -> Result<()> {
        self.complete_at(lease, response, self.core.clock.now_ms())
    }

    /// [`Store::complete`] at an explicit time (the TTL runs from `now_ms`).
    pub fn complete_at(&self, lease: &Lease, response: &StoredResponse, now_ms: u64) -> Result<()> {
        self.core.idem_complete(lease, response, now_ms)
    }

    /// Forget a started request, so that a retry runs it again.
    pub fn abort(&self, lease: &Lease) -> Result<()> {
        self.core.idem_abort(lease)
    }

    /// Number of times a check found its entry moving and looked again.
    pub fn contention_retries(&self) -> u64 {
        self.core.retries.load(Ordering::Relaxed)
    }
}

/// The decision for a key with no entry.
pub(crate) fn empty_decision(limits: &Limits, cost: u32, now_ms: u64) -> Decision {
    let mut ws = [WindowState::default(); MAX_WINDOWS];
    for (w, l) in ws.iter_mut().zip(limits.as_slice()) {
        *w = WindowState {
            limit: l.limit(),
            window_ms: l.window_ms(),
            used: 0,
            reset_ms: now_ms,
            retry_after_ms: u64::from(cost > l.limit()),
        };
    }
    Decision::from_windows(cost <= limits.min_limit(), ws, limits.len())
}

impl Core {
    /// Remember `now_ms` as the newest time seen: a read, and about once a second of advancing
    /// time a write. The word holds the newest time rounded up past the next multiple of
    /// [`SEEN_GRANULE_MS`] (strictly above it), so checks in the same second share one value
    /// and do not all write the shared header line.
    #[inline]
    pub(crate) fn saw(&self, now_ms: u64) {
        let w = self.seen_word();
        if now_ms >= w.load(Ordering::Relaxed) {
            w.fetch_max(
                (now_ms | (SEEN_GRANULE_MS - 1)).saturating_add(1),
                Ordering::Relaxed,
            );
        }
    }

    /// The header word holding the newest time any operation ran at. Whoever judges a window
    /// word against it reads it after the window word (see `window::cell::At::seen`).
    #[inline]
    pub(crate) fn seen_word(&self) -> &AtomicU64 {
        // The word is always in the header page; were it not, "no bound" is the safe answer
        // (a word ahead of now is then taken for a clock step back, which keeps counts; and
        // raising it to a time below u64::MAX changes nothing).
        static NO_BOUND: AtomicU64 = AtomicU64::new(u64::MAX);
        self.header.word(SEEN_AT).unwrap_or(&NO_BOUND)
    }

    /// A bound on the newest time any operation ran at (at most a granule above it), and never
    /// earlier than `now_ms`. Read it after the window word it is used with.
    #[inline]
    pub(crate) fn seen_ms(&self, now_ms: u64) -> u64 {
        self.seen_word().load(Ordering::Relaxed).max(now_ms)
    }

    /// The time the compactor judges expiry at: the clock, but never past the newest time an
    /// operation ran at (0 before any operation ran). The word is up to one granule above that
    /// time, so one granule is taken off: expiry is then at most a second late, never early.
    pub(crate) fn expiry_now(&self) -> u64 {
        let seen = self
            .header
            .word(SEEN_AT)
            .map_or(0, |w| w.load(Ordering::Relaxed));
        self.clock
            .now_ms()
            .min(seen.saturating_sub(SEEN_GRANULE_MS))
    }

    /// Window `i` of `limits` (which is `l`), judged at `now_ms` on this store.
    #[inline]
    fn at(&self, limits: &Limits, i: usize, l: &crate::Limit, now_ms: u64) -> cell::At<'_> {
        cell::At {
            geo: limits.geometry(i, self.kmax),
            window_ms: l.window_ms(),
            limit: l.limit(),
            kmax: self.kmax,
            now_ms,
            seen: self.seen_word(),
        }
    }

    /// Check and count; the decision goes to `out` (which starts as [`Decision::BLANK`]).
    fn check(
        &self,
        key: &[u8],
        limits: &Limits,
        cost: u32,
        now_ms: u64,
        out: &mut Decision,
    ) -> Result<()> {
        check_key(key)?;
        self.saw(now_ms);
        if cost > limits.min_limit() {
            return Err(Error::CostExceedsLimit {
                cost,
                limit: limits.min_limit(),
            });
        }
        let hash = self.hasher.hash_one(key);
        let guard = crossbeam_epoch::pin();
        if cost == 0 {
            *out = match self.find(hash, key, &guard) {
                Some(line) => self.snapshot(line, limits, 0, now_ms, None),
                None => empty_decision(limits, 0, now_ms),
            };
            return Ok(());
        }
        let mut spins = 0u32;
        loop {
            let line = match self.find(hash, key, &guard) {
                Some(line) => line,
                None => match self.insert(hash, key, limits, &guard, now_ms) {
                    Ok(line) => line,
                    Err(Error::CapacityExhausted) => {
                        *out = self.full_decision(limits, cost, now_ms);
                        return Ok(());
                    }
                    Err(e) => return Err(e),
                },
            };
            match self.apply(line, limits, cost, now_ms, out) {
                Applied::Done => return Ok(()),
                Applied::Moved => {
                    self.retries.fetch_add(1, Ordering::Relaxed);
                    spins += 1;
                    if spins > 64 {
                        std::thread::yield_now();
                    } else {
                        std::hint::spin_loop();
                    }
                }
                Applied::Mismatch => match self.migrate(hash, line, key, limits, &guard) {
                    Ok(()) => {}
                    Err(Error::CapacityExhausted) => {
                        *out = self.full_decision(limits, cost, now_ms);
                        return Ok(());
                    }
                    Err(e) => return Err(e),
                },
            }
        }
    }

    #[inline]
    pub(crate) fn find(&self, hash: u64, key: &[u8], guard: &Guard) -> Option<u64> {
        self.find_kind(hash, key, KIND_WINDOWS, guard)
    }

    /// Find the entry of `kind` for `key` without a lock.
    #[inline]
    pub(crate) fn find_kind(&self, hash: u64, key: &[u8], kind: u8, guard: &Guard) -> Option<u64> {
        self.index
            .find(hash, guard, |line| self.matches(line, key, kind))
    }

    /// Whether the entry at `line` is a window entry for `key`.
    #[inline]
    fn matches(&self, line: u64, key: &[u8], kind: u8) -> bool {
        let e = self.segs.entry(line);
        let h = e.load(0);
        if h as u8 as usize != key.len() || (h >> 16) as u8 != kind {
            return false;
        }
        let n = ((h >> 8) & 0xFF) as usize;
        // The key's words, fetched as one run (one bounds check, not one per word).
        let Some(words) = e.run(1 + n.div_ceil(2), key.len().div_ceil(8)) else {
            return false;
        };
        let mut chunks = key.chunks_exact(8);
        for (c, w) in chunks.by_ref().zip(words) {
            let mut b = [0u8; 8];
            b.copy_from_slice(c);
            if w.load(Ordering::Relaxed) != u64::from_le_bytes(b) {
                return false;
            }
        }
        let rest = chunks.remainder();
        if rest.is_empty() {
            return true;
        }
        let mut b = [0u8; 8];
        if let Some(dst) = b.get_mut(..rest.len()) {
            dst.copy_from_slice(rest);
        }
        words
            .last()
            .is_some_and(|w| w.load(Ordering::Relaxed) == u64::from_le_bytes(b))
    }

    /// Find the key under its stripe lock, or write a new entry for it.
    #[cold]
    #[inline(never)]
    fn insert(
        &self,
        hash: u64,
        key: &[u8],
        limits: &Limits,
        guard: &Guard,
        now_ms: u64,
    ) -> Result<u64> {
        self.make_room(now_ms)?;
        let mut lock = self.index.lock(hash);
        if let Some(line) = self.find(hash, key, guard) {
            return Ok(line);
        }
        let kw = KeyWords::new(key)?;
        let line = self.write_entry(&kw, limits.descriptors(), |_, _| None)?;
        lock.insert(hash, line, guard, |l| self.rehash(l));
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
        self.expire_pass(now_ms, 1024);
        if self.live_entries.load(Ordering::Relaxed) < max {
            Ok(())
        } else {
            Err(Error::CapacityExhausted)
        }
    }

    /// The decision for a new key when the store is full.
    #[cold]
    #[inline(never)]
    fn full_decision(&self, limits: &Limits, cost: u32, now_ms: u64) -> Decision {
        let mut d = empty_decision(limits, cost, now_ms);
        match self.on_full {
            OnFull::Admit => {}
            OnFull::Reject => {
                for w in d.windows.iter_mut() {
                    w.retry_after_ms = 1000;
                }
                d.finish(false, limits.len());
            }
        }
        d.capacity_exhausted = true;
        d
    }

    /// Idempotency records in the index (walks nothing: kept by the compactor and begin).
    fn count_records(&self) -> u64 {
        self.counters.records_live()
    }

    /// Write a complete entry for `kw` with `descs`; `state(i, word)` gives the initial state
    /// words of window `i` (`None` = empty). The header word, with the crc, is stored last.
    fn write_entry(
        &self,
        kw: &KeyWords,
        descs: &[u32],
        state: impl Fn(usize, &mut [u64]) -> Option<()>,
    ) -> Result<u64> {
        let mut decoded = [Descriptor {
            window_ms: 0,
            exact: false,
            cap: 0,
        }; MAX_WINDOWS];
        for (d, &raw) in decoded.iter_mut().zip(descs) {
            *d = Descriptor::decode(raw).ok_or(Error::InvalidLimit("bad descriptor"))?;
        }
        let decoded = decoded.get(..descs.len()).unwrap_or(&[]);
        let layout = EntryLayout::new(decoded, kw.len).ok_or(Error::InvalidLimit(
            "the key and its windows do not fit in an entry",
        ))?;
        let line = self.segs.alloc(layout.lines)?;
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
        let mut buf = [0u64; 1 + crate::MAX_EXACT_LIMIT as usize];
        for (i, d) in decoded.iter().enumerate() {
            let at = layout.window_at.get(i).copied().unwrap_or(0);
            let words = buf.get_mut(..d.words()).unwrap_or(&mut []);
            words.fill(0);
            let _ = state(i, words);
            for (j, &v) in words.iter().enumerate() {
                store(at + j, v);
            }
        }
        let key_bytes = key_bytes(kw);
        let low = header_low(kw.len, descs.len(), KIND_WINDOWS);
        let crc = entry_crc(low, descs, key_bytes.get(..kw.len).unwrap_or(&[]));
        // Release: everything above is visible to whoever sees the header (and, later, the
        // index entry that points here).
        if let Some(w) = e.w(0) {
            w.store(u64::from(low) | (u64::from(crc) << 32), Ordering::Release);
        }
        Ok(line)
    }

    /// The key stored in the entry at `line` (any kind), and its length.
    pub(crate) fn entry_key(&self, line: u64) -> ([u8; MAX_KEY_LEN], usize) {
        let e = self.segs.entry(line);
        let h = e.load(0);
        let len = (h & 0xFF) as usize;
        let key_at = 1 + ((h >> 8) & 0xFF).div_ceil(2) as usize;
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

    /// The entry's layout if it holds exactly the windows of `limits`; `None` if they differ.
    #[inline]
    fn layout_for(&self, e: &Entry<'_>, limits: &Limits) -> Option<EntryLayout> {
        let h = e.load(0);
        let n = ((h >> 8) & 0xFF) as usize;
        if n != limits.len() {
            return None;
        }
        for (i, &want) in limits.desc_words().iter().enumerate() {
            if e.load(1 + i) != want {
                return None;
            }
        }
        let key_len = (h & 0xFF) as usize;
        let key_at = 1 + n.div_ceil(2);
        let state_at = key_at + key_len.div_ceil(8);
        let mut window_at = [0usize; MAX_WINDOWS];
        for (i, place) in window_at.iter_mut().enumerate().take(n) {
            *place = state_at + limits.rel_at(i);
        }
        let words = state_at + limits.state_words();
        Some(EntryLayout {
            n,
            key_len,
            key_at,
            state_at,
            window_at,
            words,
            lines: (words * 8).div_ceil(LINE) as u32,
        })
    }

    /// Count `cost` in every window of the entry at `line`, all or nothing; the decision goes
    /// to `out`. Sets with only bucketed windows (the usual case) take this short path; sets
    /// with an exact window take [`Core::apply_with_exact`].
    #[inline]
    fn apply(
        &self,
        line: u64,
        limits: &Limits,
        cost: u32,
        now_ms: u64,
        out: &mut Decision,
    ) -> Applied {
        if limits.has_exact() {
            return self.apply_with_exact(line, limits, cost, now_ms, out);
        }
        let e = self.segs.entry(line);
        let Some(layout) = self.layout_for(&e, limits) else {
            return Applied::Mismatch;
        };
        let items = limits.as_slice();
        // Sub-window and sub-window length each window counted in, for undo.
        let mut added: [Option<(u64, u64)>; MAX_WINDOWS] = [None; MAX_WINDOWS];
        for (i, l) in items.iter().enumerate() {
            let at = self.at(limits, i, l, now_ms);
            let result = match e.w(layout.window_at[i]) {
                Some(w) => cell::add(w, &at, cost),
                // Not reached: `layout_for` placed every window inside the entry.
                None => cell::Added::Frozen,
            };
            match result {
                cell::Added::Yes(norm) => {
                    added[i] = Some((norm.n, norm.s));
                    out.windows[i] = bucket_state(&norm, l.limit(), l.window_ms(), 0, now_ms);
                }
                cell::Added::Refused(as_is) => {
                    self.refuse(&e, &layout, limits, &added, (i, as_is), cost, now_ms, out);
                    return Applied::Done;
                }
                cell::Added::Frozen => {
                    self.undo(&e, &layout, limits, &added, cost, now_ms);
                    return Applied::Moved;
                }
            }
        }
        out.finish(true, items.len());
        Applied::Done
    }

    /// The rejection of a set of bucketed windows, window `refused.0` having refused (it was
    /// `refused.1` when judged): take back the cost from the windows that counted it, and
    /// report that window as it was judged and the others as they are once the cost is back.
    #[inline]
    #[allow(clippy::too_many_arguments)]
    fn refuse(
        &self,
        e: &Entry<'_>,
        layout: &EntryLayout,
        limits: &Limits,
        added: &[Option<(u64, u64)>; MAX_WINDOWS],
        refused: (usize, Norm),
        cost: u32,
        now_ms: u64,
        out: &mut Decision,
    ) {
        if added.iter().any(Option::is_some) {
            self.undo(e, layout, limits, added, cost, now_ms);
        }
        let items = limits.as_slice();
        for (j, l) in items.iter().enumerate() {
            let norm = if j == refused.0 {
                refused.1
            } else {
                let word = e.load(layout.window_at[j]) & !FROZEN;
                window::normalize_with(
                    word,
                    &limits.geometry(j, self.kmax),
                    l.window_ms(),
                    self.kmax,
                    now_ms,
                    self.seen_ms(now_ms),
                )
            };
            out.windows[j] = bucket_state(&norm, l.limit(), l.window_ms(), cost, now_ms);
        }
        out.finish(false, items.len());
    }

    /// [`Core::apply`] for a set with at least one exact window: the exact windows are judged
    /// and written under the lock bit of the first one's meta word, after every bucketed
    /// window took the cost.
    #[inline(never)]
    fn apply_with_exact(
        &self,
        line: u64,
        limits: &Limits,
        cost: u32,
        now_ms: u64,
        out: &mut Decision,
    ) -> Applied {
        let e = self.segs.entry(line);
        let Some(layout) = self.layout_for(&e, limits) else {
            return Applied::Mismatch;
        };
        let items = limits.as_slice();
        // Exact windows are guarded by the lock bit of the first one's meta word.
        let lock = if limits.has_exact() {
            let first = items.iter().position(|l| l.mode() == crate::Mode::Exact);
            let meta = first.and_then(|i| e.w(layout.window_at[i]));
            match meta {
                Some(m) if cell::lock_meta(m) => Some(m),
                _ => return Applied::Moved,
            }
        } else {
            None
        };
        let unlock = |m: Option<&AtomicU64>| {
            if let Some(m) = m {
                cell::unlock_meta(m);
            }
        };

        let ws = &mut out.windows;
        // Sub-window and sub-window length each bucketed window counted in, for undo.
        let mut added: [Option<(u64, u64)>; MAX_WINDOWS] = [None; MAX_WINDOWS];
        let mut refused: Option<usize> = None;
        for (i, l) in items.iter().enumerate() {
            if l.mode() == crate::Mode::Exact {
                continue;
            }
            let Some(w) = e.w(layout.window_at[i]) else {
                refused = Some(i);
                break;
            };
            let result = cell::add(w, &self.at(limits, i, l, now_ms), cost);
            match result {
                cell::Added::Yes(norm) => {
                    added[i] = Some((norm.n, norm.s));
                    ws[i] = bucket_state(&norm, l.limit(), l.window_ms(), 0, now_ms);
                }
                cell::Added::Refused(_) => {
                    refused = Some(i);
                    break;
                }
                cell::Added::Frozen => {
                    self.undo(&e, &layout, limits, &added, cost, now_ms);
                    unlock(lock);
                    return Applied::Moved;
                }
            }
        }
        if refused.is_none() && lock.is_some() {
            // Every bucketed window took the cost: now the exact ones, under the lock.
            let mut rings = [None; MAX_WINDOWS];
            for (i, l) in items.iter().enumerate() {
                if l.mode() != crate::Mode::Exact {
                    continue;
                }
                let ring = cell::read_ring(|k| e.w(k), layout.window_at[i], l.limit());
                let ev = ring.eval(l.window_ms(), now_ms);
                if !ev.fits(l.limit(), cost) {
                    refused = Some(i);
                    break;
                }
                rings[i] = Some((ring, ev.now_eff));
            }
            if refused.is_none() {
                for (i, l) in items.iter().enumerate() {
                    if let Some((mut ring, t)) = rings[i] {
                        ring.push(t, cost);
                        cell::write_ring(
                            |k| e.w(k),
                            layout.window_at[i],
                            &ring,
                            i == first_exact(items),
                        );
                        let ev = ring.eval(l.window_ms(), now_ms);
                        ws[i] = exact_state(&ev, l.limit(), l.window_ms(), 0, now_ms);
                    }
                }
            }
        }
        if refused.is_some() {
            self.undo(&e, &layout, limits, &added, cost, now_ms);
            *out = self.snapshot_entry(&e, &layout, limits, cost, now_ms, refused);
            unlock(lock);
            return Applied::Done;
        }
        unlock(lock);
        out.finish(true, items.len());
        Applied::Done
    }

    /// Take back the cost added to bucketed windows.
    fn undo(
        &self,
        e: &Entry<'_>,
        layout: &EntryLayout,
        limits: &Limits,
        added: &[Option<(u64, u64)>; MAX_WINDOWS],
        cost: u32,
        now_ms: u64,
    ) {
        for (i, l) in limits.as_slice().iter().enumerate() {
            let (Some((m, s)), Some(w)) = (added[i], e.w(layout.window_at[i])) else {
                continue;
            };
            cell::take_back(w, &self.at(limits, i, l, now_ms), m, s, cost);
        }
    }

    /// The state of the entry at `line` without changing it.
    fn snapshot(
        &self,
        line: u64,
        limits: &Limits,
        cost: u32,
        now_ms: u64,
        refused: Option<usize>,
    ) -> Decision {
        let e = self.segs.entry(line);
        match self.layout_for(&e, limits) {
            Some(layout) => self.snapshot_entry(&e, &layout, limits, cost, now_ms, refused),
            // Windows of another shape: the request would move the entry; report it as fresh
            // for the windows that are new (the move keeps the windows both shapes share).
            None => empty_decision(limits, cost, now_ms),
        }
    }

    fn snapshot_entry(
        &self,
        e: &Entry<'_>,
        layout: &EntryLayout,
        limits: &Limits,
        cost: u32,
        now_ms: u64,
        refused: Option<usize>,
    ) -> Decision {
        let mut ws = [WindowState::default(); MAX_WINDOWS];
        let mut all_fit = true;
        for (i, l) in limits.as_slice().iter().enumerate() {
            let at = layout.window_at[i];
            ws[i] = match l.mode() {
                crate::Mode::Bucketed => {
                    let word = e.load(at) & !FROZEN;
                    let geo = limits.geometry(i, self.kmax);
                    let norm = window::normalize_with(
                        word,
                        &geo,
                        l.window_ms(),
                        self.kmax,
                        now_ms,
                        self.seen_ms(now_ms),
                    );
                    bucket_state(&norm, l.limit(), l.window_ms(), cost, now_ms)
                }
                crate::Mode::Exact => {
                    let ring = cell::read_ring(|k| e.w(k), at, l.limit());
                    let ev = ring.eval(l.window_ms(), now_ms);
                    exact_state(&ev, l.limit(), l.window_ms(), cost, now_ms)
                }
            };
            all_fit &= ws[i].fits();
        }
        let allowed = all_fit && refused.is_none();
        if let (false, Some(i)) = (allowed, refused) {
            // The window that refused under contention may look free again by now: it still
            // is the reason for this rejection.
            if all_fit {
                if let Some(w) = ws.get_mut(i) {
                    w.retry_after_ms = w.retry_after_ms.max(1);
                }
            }
        }
        Decision::from_windows(allowed, ws, limits.len())
    }

    /// Move the entry at `old` to a new entry shaped for `limits`, keeping the state of every
    /// window both shapes share.
    #[cold]
    #[inline(never)]
    fn migrate(
        &self,
        hash: u64,
        old: u64,
        key: &[u8],
        limits: &Limits,
        guard: &Guard,
    ) -> Result<()> {
        let kw = &KeyWords::new(key)?;
        let mut lock = self.index.lock(hash);
        if self.find(hash, key, guard) != Some(old) {
            return Ok(()); // someone else moved it
        }
        let e = self.segs.entry(old);
        let h = e.load(0);
        let n = ((h >> 8) & 0xFF) as usize;
        let mut old_descs = [0u32; MAX_WINDOWS];
        for (i, d) in old_descs.iter_mut().take(n).enumerate() {
            *d = (e.load(1 + i / 2) >> ((i % 2) * 32)) as u32;
        }
        let old_descs = old_descs.get(..n).unwrap_or(&[]);
        let decoded: Vec<Descriptor> = old_descs
            .iter()
            .filter_map(|&d| Descriptor::decode(d))
            .collect();
        let old_layout = EntryLayout::new(&decoded, kw.len).ok_or(Error::Corrupt {
            offset: old,
            reason: "entry descriptors",
        })?;
        // Freeze the old entry: exact windows by their meta word, bucketed by the frozen bit.
        for (i, d) in decoded.iter().enumerate() {
            if let Some(w) = e.w(old_layout.window_at[i]) {
                if d.exact {
                    // `None` means already frozen; otherwise we hold the lock, so no check is
                    // half-way through the ring when it freezes.
                    if cell::lock_meta(w) {
                        w.fetch_or(META_FROZEN, Ordering::AcqRel);
                        cell::unlock_meta(w);
                    }
                } else {
                    cell::freeze(w);
                }
            }
        }
        let new_descs = limits.descriptors();
        let written = self.write_entry(kw, new_descs, |i, out| {
            let nd = Descriptor::decode(*new_descs.get(i)?)?;
            // The same window in the old entry: same length and mode.
            let j = decoded
                .iter()
                .position(|d| d.window_ms == nd.window_ms && d.exact == nd.exact)?;
            let at = *old_layout.window_at.get(j)?;
            if nd.exact {
                let od = decoded.get(j)?;
                let ring = cell::read_ring(|k| e.w(k), at, od.cap);
                let mut times: Vec<u64> = ring
                    .slots
                    .iter()
                    .take(od.cap as usize)
                    .copied()
                    .filter(|&v| v != 0)
                    .collect();
                times.sort_unstable();
                let keep = times.len().saturating_sub(nd.cap as usize);
                let kept = times.get(keep..).unwrap_or(&[]);
                for (k, &t) in kept.iter().enumerate() {
                    *out.get_mut(1 + k)? = t;
                }
                *out.first_mut()? = (kept.len() as u64) % u64::from(nd.cap.max(1));
            } else {
                *out.first_mut()? = e.load(at) & !FROZEN;
            }
            Some(())
        });
        let new_line = match written {
            Ok(line) => line,
            Err(err) => {
                // The move failed (no space, or the new windows do not fit an entry): thaw the
                // old entry, so the key keeps working with the windows it has.
                for (i, d) in decoded.iter().enumerate() {
                    if let Some(w) = e.w(old_layout.window_at[i]) {
                        if d.exact {
                            cell::thaw_meta(w);
                        } else {
                            cell::thaw(w);
                        }
                    }
                }
                return Err(err);
            }
        };
        lock.replace(hash, old, new_line, guard);
        self.clear_entry(old);
        self.segs.release_later(old, old_layout.lines, guard);
        Ok(())
    }

    /// Scan the mapped segments, check every entry and rebuild the index.
    fn recover(&self, count: usize) -> OpenReport {
        let mut report = OpenReport::default();
        let guard = crossbeam_epoch::pin();
        let seg_lines = self.segs.seg_lines();
        let mut blob_segments = Vec::new();
        for seg in 0..count {
            let header =
                match SegmentHeader::decode(&self.segs.read_segment_header(seg), seg as u32) {
                    Ok(Some(h)) => h,
                    Ok(None) => {
                        report.blank_segments += 1;
                        self.segs.adopt(seg, None, Vec::new());
                        continue;
                    }
                    Err(_) => {
                        report.corrupt_segments += 1;
                        continue;
                    }
                };
            if header.entry_lines == BLOB_SEGMENT {
                // Adopted after the entries are read: their pointers say how far it is used.
                blob_segments.push((seg, self.scan_blobs(seg)));
                continue;
            }
            let mut free = Vec::new();
            let lines = u64::from(header.entry_lines);
            let mut at = 1;
            while at + lines <= seg_lines {
                let line = seg as u64 * seg_lines + at;
                at += lines;
                let e = self.segs.entry(line);
                if e.load(0) == 0 {
                    free.push(line);
                    continue;
                }
                let kind = (e.load(0) >> 16) as u8;
                let checked = match kind {
                    KIND_WINDOWS => self
                        .check_entry(&e, header.entry_lines)
                        .map(|(kw, frozen)| {
                            let bytes = key_bytes(&kw);
                            (bytes.get(..kw.len).unwrap_or(&[]).to_vec(), frozen)
                        }),
                    KIND_IDEM => self.check_idem_entry(&e, header.entry_lines),
                    _ => None,
                };
                match checked {
                    Some((key, frozen)) => {
                        let hash = self.rehash(line);
                        let mut lock = self.index.lock(hash);
                        match self.find_kind(hash, &key, kind, &guard) {
                            None => {
                                lock.insert(hash, line, &guard, |l| self.rehash(l));
                                report.entries += 1;
                                if kind == KIND_IDEM {
                                    self.counters.live_records.fetch_add(1, Ordering::Relaxed);
                                }
                            }
                            Some(other) => {
                                report.duplicates += 1;
                                if !frozen {
                                    // The frozen copy is the one that was being moved away.
                                    lock.replace(hash, other, line, &guard);
                                    self.clear_entry(other);
                                    free.push(other);
                                } else {
                                    self.clear_entry(line);
                                    free.push(line);
                                }
                            }
                        }
                    }
                    None => {
                        report.corrupt_entries += 1;
                        self.clear_entry(line);
                        free.push(line);
                    }
                }
            }
            self.segs.adopt(seg, Some(header), free);
        }
        for (seg, scanned) in blob_segments {
            self.segs.adopt_blob(seg, scanned);
        }
        report
    }

    /// The line after the last blob record of segment `seg` (scanned at open).
    fn scan_blobs(&self, seg: usize) -> u64 {
        let seg_lines = self.segs.seg_lines();
        let mut at = 1u64;
        while at < seg_lines {
            let head = self.segs.entry(seg as u64 * seg_lines + at).load(0);
            if head == 0 {
                return at;
            }
            let len = head >> 32;
            if head as u32 != BLOB_MAGIC || len as usize > self.segs.max_blob() {
                // Not a record: nothing after it can be trusted to be free.
                return seg_lines;
            }
            at += (16 + len).div_ceil(LINE as u64);
        }
        seg_lines
    }

    pub(crate) fn clear_entry(&self, line: u64) {
        if let Some(w) = self.segs.entry(line).w(0) {
            w.store(0, Ordering::Release);
        }
    }

    /// Check one entry read at open: crc, descriptors, state words. Clears lock bits. Returns
    /// its key and whether it was frozen (a move was under way).
    fn check_entry(&self, e: &Entry<'_>, class_lines: u32) -> Option<(KeyWords, bool)> {
        let h = e.load(0);
        let key_len = (h & 0xFF) as usize;
        let n = ((h >> 8) & 0xFF) as usize;
        if (h >> 16) as u8 != KIND_WINDOWS || (h >> 24) as u8 != 0 || n == 0 || n > MAX_WINDOWS {
            return None;
        }
        if key_len == 0 || key_len > MAX_KEY_LEN {
            return None;
        }
        let mut descs = [0u32; MAX_WINDOWS];
        for (i, d) in descs.iter_mut().take(n).enumerate() {
            *d = (e.load(1 + i / 2) >> ((i % 2) * 32)) as u32;
        }
        let descs = descs.get(..n)?;
        // The unused high half of the last descriptor word (odd `n`) must be zero.
        if n % 2 == 1 && e.load(1 + n / 2) >> 32 != 0 {
            return None;
        }
        let key_at = 1 + n.div_ceil(2);
        let mut kw = KeyWords {
            len: key_len,
            words: [0; KEY_WORDS],
        };
        for (i, w) in kw.words.iter_mut().take(key_len.div_ceil(8)).enumerate() {
            *w = e.load(key_at + i);
        }
        let bytes = key_bytes(&kw);
        let low = header_low(key_len, n, KIND_WINDOWS);
        if entry_crc(low, descs, bytes.get(..key_len)?) != (h >> 32) as u32 {
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
        let layout = EntryLayout::new(&decoded, key_len)?;
        if layout.lines != class_lines {
            return None;
        }
        let mut frozen = false;
        for (i, d) in decoded.iter().enumerate() {
            let w = e.w(*layout.window_at.get(i)?)?;
            let v = w.load(Ordering::Acquire);
            if d.exact {
                frozen |= v & META_FROZEN != 0;
                let head = v & META_HEAD;
                if head >= u64::from(d.cap) || v & !(META_HEAD | META_LOCK | META_FROZEN) != 0 {
                    return None;
                }
                // Ring times are ms since 1970 (+1): anything past the year 10000 was not
                // written by tollgate.
                let at = *layout.window_at.get(i)?;
                if (0..d.cap as usize).any(|k| e.load(at + 1 + k) > MAX_RING_TIME) {
                    return None;
                }
                w.store(head, Ordering::Release);
            } else {
                frozen |= v & FROZEN != 0;
                let clean = v & !FROZEN;
                if !window::word_is_valid(clean, self.kmax) {
                    return None;
                }
                w.store(clean, Ordering::Release);
            }
        }
        Some((kw, frozen))
    }
}

fn key_bytes(kw: &KeyWords) -> [u8; MAX_KEY_LEN] {
    let mut b = [0u8; MAX_KEY_LEN];
    for (chunk, w) in b.chunks_exact_mut(8).zip(kw.words.iter()) {
        chunk.copy_from_slice(&w.to_le_bytes());
    }
    b
}

fn first_exact(items: &[crate::Limit]) -> usize {
    items
        .iter()
        .position(|l| l.mode() == crate::Mode::Exact)
        .unwrap_or(usize::MAX)
}

pub(crate) fn bucket_state(
    norm: &Norm,
    limit: u32,
    window_ms: u64,
    cost: u32,
    now_ms: u64,
) -> WindowState {
    let used = norm.total();
    let fits = u64::from(used) + u64::from(cost) <= u64::from(limit);
    WindowState {
        limit,
        window_ms,
        used,
        reset_ms: norm.reset_ms(now_ms),
        retry_after_ms: if fits {
            0
        } else {
            norm.retry_ms(limit, cost, now_ms)
        },
    }
}

pub(crate) fn exact_state(
    ev: &crate::window::exact::Eval,
    limit: u32,
    window_ms: u64,
    cost: u32,
    now_ms: u64,
) -> WindowState {
    let fits = ev.fits(limit, cost);
    WindowState {
        limit,
        window_ms,
        used: ev.len,
        reset_ms: ev.reset_ms(window_ms, now_ms),
        retry_after_ms: if fits {
            0
        } else {
            ev.retry_ms(limit, cost, window_ms, now_ms)
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Limit;

    #[test]
    fn the_newest_time_word_bounds_every_time_from_above_and_expiry_from_below() {
        let day = 86_400_000;
        let clock = ManualClock::new(1_700_000_000_000 + day);
        let store = Store::open_in_memory(Options::default().clock(clock.clone()).compactor(false))
            .unwrap();
        let core = &store.core;
        assert_eq!(
            core.expiry_now(),
            0,
            "no operation yet: nothing to judge at"
        );
        let mut newest = 0u64;
        let mut writes = 0;
        let mut last = core.seen_ms(0);
        for t in (0..5_000u64).map(|i| 1_700_000_000_000 + i * 37) {
            core.saw(t);
            newest = newest.max(t);
            let word = core.seen_ms(0);
            // Above the newest time by 1 to 1024 ms: never below it, never far above it.
            assert!(
                word > newest && word - newest <= SEEN_GRANULE_MS,
                "{t} {word}"
            );
            // The compactor judges at most at the newest time, and at most a granule late.
            let judged = core.expiry_now();
            assert!(
                judged <= newest && newest - judged < SEEN_GRANULE_MS,
                "{t} {judged}"
            );
            if word != last {
                writes += 1;
                last = word;
            }
        }
        // 5 000 times 37 ms apart span 185 s: about one write per second, not one per call.
        assert!((180..=186).contains(&writes), "{writes} writes");
        // An older time changes nothing; the clock behind the newest time bounds expiry.
        core.saw(1_600_000_000_000);
        assert_eq!(core.seen_ms(0), last);
        clock.set_ms(1_700_000_000_500);
        assert_eq!(core.expiry_now(), 1_700_000_000_500);
        // The very end of time saturates instead of wrapping.
        core.saw(u64::MAX - 3);
        assert_eq!(core.seen_ms(0), u64::MAX);
    }

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
}
