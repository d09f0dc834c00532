//! The store: the embedded backend a gateway links in. Open a file (or anonymous memory), ask
//! it "may this token make this request now?" and "have I seen this Idempotency-Key?", close
//! it. A short facade: the work is done by the engine (`crate::engine`) over the storage
//! (`crate::storage`).

use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use crate::backend::Backend;
use crate::debit::{Reservation, Reserved};
use crate::decision::Decision;
use crate::engine::{CompactorHandle, Core, OpenReport, Parts, PassReport};
#[cfg(doc)]
use crate::error::Error;
use crate::error::Result;
use crate::idempotency::{record_key, Begin, Fingerprint, IdempotencyKey, Lease, StoredResponse};
use crate::limit::Limits;
use crate::options::{CompactorOptions, Options};
use crate::permit::Permit;
use crate::storage::file::{self, Access, OpenPolicy};
use crate::storage::format::{FileHeader, HEADER_LEN};
use crate::storage::raw::Map;
use crate::storage::segment::Segments;
use crate::version::{Version, VersionBump};

/// A tollgate store: sliding-window counters in a memory-mapped file (or anonymous memory).
///
/// `Store` is `Send + Sync` and cheap to clone: clones share one store. See the crate docs for
/// an example.
#[derive(Clone)]
pub struct Store {
    pub(crate) core: Arc<Core>,
    /// What opening the store found.
    report: OpenReport,
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

impl Store {
    /// Open the store file at `path`, creating it if it does not exist.
    ///
    /// Fails with [`Error::Locked`] if the file is open in another store, in this process or
    /// another (after trying for 100 ms: a lock released a moment ago can still look held
    /// while a child process spawned meanwhile has not reached exec); with
    /// [`Error::NotAStore`], [`Error::UnsupportedVersion`] or [`Error::Corrupt`]
    /// if its header cannot be trusted. Entries that fail their checks are skipped and counted
    /// in [`Store::open_report`], and so are segments the file lost
    /// ([`OpenReport::lost_segments`]; [`Error::Truncated`] instead with
    /// [`Options::refuse_lost_segments`]).
    pub fn open(path: impl AsRef<Path>, opts: Options) -> Result<Store> {
        Store::open_file(path.as_ref(), opts, Access::Write)
    }

    /// Open as the writer or as a read-only view (`snapshot.rs`).
    pub(crate) fn open_file(path: &Path, opts: Options, access: Access) -> Result<Store> {
        opts.validate()?;
        let opened = file::open(
            path,
            FileHeader {
                seg_shift: opts.segment_shift,
                sub_windows: opts.common.sub_windows,
                created_ms: opts.common.clock.now_ms(),
            },
            access,
            &OpenPolicy {
                refuse_lost: opts.refuse_lost,
                hook: opts.io_hook.clone(),
            },
        )?;
        let count = opened.segments;
        if count > Segments::most_segments(opened.header.seg_shift) {
            return Err(crate::Error::InvalidOptions(
                "the file has more segments than a store can index (4 TiB in all)",
            ));
        }
        let mut segs = Segments::new(
            Some(opened.file),
            opened.header.seg_shift,
            opts.max_segments.max(count),
        );
        segs.set_hook(opts.io_hook);
        if access == Access::ReadOnly {
            segs.set_private();
        } else if opts.huge_pages && opts.common.idem.durability != crate::Durability::Sync {
            segs.set_huge_pages();
        }
        if opts.home_slots {
            segs.set_home_slots();
        }
        segs.map_existing(count)?;
        let core = Core::new(Parts {
            segs,
            header: opened.header_map,
            seed: opened.seed,
            b: opened.header.sub_windows,
            path: Some(path),
            clock: opts.common.clock,
            idem: opts.common.idem,
            max_entries: opts.max_entries,
            on_full: opts.on_full,
        });
        let mut report = core.recover(count, opened.census);
        report.lost_segments = opened.lost_segments;
        report.missing_entries = opened
            .census
            .map(|c| c.entries.saturating_sub(report.entries));
        report.segment_count_damaged = opened.count_damaged;
        core.live_entries.store(report.entries, Ordering::Relaxed);
        Ok(Store::start(core, report, opts.compactor))
    }

    /// A store in anonymous memory: nothing is written to disk and everything is gone when the
    /// last clone is dropped. For tests, and for gateways that want no file.
    pub fn open_in_memory(opts: Options) -> Result<Store> {
        opts.validate()?;
        let mut segs = Segments::new(None, opts.segment_shift, opts.max_segments);
        if opts.home_slots {
            segs.set_home_slots();
        }
        let core = Core::new(Parts {
            segs,
            header: Map::anon(HEADER_LEN as usize)?,
            seed: crate::storage::file::fresh_seed(),
            b: opts.common.sub_windows,
            path: None,
            clock: opts.common.clock,
            idem: opts.common.idem,
            max_entries: opts.max_entries,
            on_full: opts.on_full,
        });
        Ok(Store::start(core, OpenReport::default(), opts.compactor))
    }

    fn start(core: Core, report: OpenReport, compactor: CompactorOptions) -> Store {
        let core = Arc::new(core);
        let handle = CompactorHandle::spawn(Arc::clone(&core), compactor);
        Store {
            core,
            report,
            _compactor: Arc::new(handle),
        }
    }

    /// Expire everything that is expired at `now_ms`: one full sweep of the store (the
    /// compactor does the same in bounded steps). Returns what the sweep did.
    pub fn expire_now(&self, now_ms: u64) -> PassReport {
        self.expire_now_with(now_ms, |_, _| {})
    }

    /// [`Store::expire_now`] with its position, for a progress bar over a large file:
    /// `progress(done, total)` is called after each bounded step of the sweep (4096 entries),
    /// `done` being the segments swept so far of the `total` mapped, and `(total, total)` at
    /// the end.
    pub fn expire_now_with(&self, now_ms: u64, mut progress: impl FnMut(u64, u64)) -> PassReport {
        if self.core.segs.is_poisoned() {
            return PassReport::default();
        }
        self.core.reset_cursor();
        let mut total = PassReport::default();
        loop {
            let r = self.core.expire_pass(now_ms, 4096);
            total.examined += r.examined;
            total.expired += r.expired;
            let segments = self.core.segs.count() as u64;
            if r.wrapped || r.examined == 0 {
                total.wrapped = true;
                progress(segments, segments);
                self.core.settle();
                return total;
            }
            let at = self.core.cursor.lock().seg as u64;
            progress(at.min(segments), segments);
        }
    }

    /// Move live response records out of blob segments that are at least half dead, and reuse
    /// those segments. Returns the number of records moved.
    pub fn compact_now(&self) -> u64 {
        self.compact_now_with(|_, _| {})
    }

    /// [`Store::compact_now`] with its position: `progress(done, total)` is called after each
    /// response segment it empties, of the `total` found at least half dead when it starts
    /// (never called when there is none).
    pub fn compact_now_with(&self, mut progress: impl FnMut(u64, u64)) -> u64 {
        if self.core.segs.is_poisoned() {
            return 0;
        }
        let moved = self.core.compact_blobs_with(50, &mut progress);
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
    ///
    /// A failure poisons the store: this and every later write answers [`Error::Poisoned`]
    /// until the file is opened again.
    pub fn flush(&self) -> Result<()> {
        self.core.segs.flush()
    }

    /// Whether an msync, fdatasync or fallocate of this store failed: it then refuses every
    /// write with [`Error::Poisoned`] until the file is opened again.
    pub fn is_poisoned(&self) -> bool {
        self.core.segs.is_poisoned()
    }

    /// What opening the store found.
    pub fn open_report(&self) -> OpenReport {
        self.report
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
        let entries = (self.core.index.len() + self.core.records.len()) as u64;
        Stats {
            entries,
            idempotency_records: self.core.counters.records_live(),
            segments,
            bytes: header + segments * self.core.segs.seg_len(),
            free_lines: self.core.segs.free_lines(),
            blank_segments: self.core.segs.blank_segments(),
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
    #[inline(always)]
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
        self.core.segs.writable()?;
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
        self.core.peek(key, limits, now_ms)
    }

    /// Reserve `estimate` units for a request whose cost is known only after it
    /// ([`crate::debit`]): admitted like a check of `estimate`, all or nothing, and open for
    /// settling for [`DEFAULT_RESERVATION_TTL`](crate::debit::DEFAULT_RESERVATION_TTL).
    ///
    /// ```
    /// use tollgate::{Limit, Limits, Options, Store};
    /// let store = Store::open_in_memory(Options::default())?;
    /// let tokens = Limits::new(&[Limit::per_minute(1_000).metered()])?;
    /// let r = store.reserve(b"api-key", &tokens, 300)?;
    /// let r = r.reservation().expect("admitted");
    /// // The upstream reported 900 tokens: 600 more are charged.
    /// let after = store.settle(b"api-key", &tokens, r, 900)?;
    /// assert_eq!(after.remaining(), 100);
    /// # Ok::<(), tollgate::Error>(())
    /// ```
    pub fn reserve(&self, key: &[u8], limits: &Limits, estimate: u32) -> Result<Reserved> {
        let ttl = crate::debit::DEFAULT_RESERVATION_TTL;
        self.reserve_at(key, limits, estimate, ttl, self.core.clock.now_ms())
    }

    /// [`Store::reserve`] at an explicit time, open for `ttl` (1 ms to one day).
    pub fn reserve_at(
        &self,
        key: &[u8],
        limits: &Limits,
        estimate: u32,
        ttl: std::time::Duration,
        now_ms: u64,
    ) -> Result<Reserved> {
        let ttl_ms = crate::debit::ttl_ms(ttl)?;
        self.core.segs.writable()?;
        self.core.reserve(key, limits, estimate, ttl_ms, now_ms)
    }

    /// Settle a reservation with the request's actual cost: below the estimate the difference
    /// goes back, above it the extra is counted past the limit (an overdraft). Returns what a
    /// request of cost 1 would get now. Refused, with nothing counted, if it was settled
    /// before ([`Error::ReservationSettled`](crate::Error::ReservationSettled)), made for
    /// another key or set of windows, or expired.
    pub fn settle(
        &self,
        key: &[u8],
        limits: &Limits,
        reservation: &Reservation,
        actual: u32,
    ) -> Result<Decision> {
        self.settle_at(key, limits, reservation, actual, self.core.clock.now_ms())
    }

    /// [`Store::settle`] at an explicit time.
    pub fn settle_at(
        &self,
        key: &[u8],
        limits: &Limits,
        reservation: &Reservation,
        actual: u32,
        now_ms: u64,
    ) -> Result<Decision> {
        self.core.segs.writable()?;
        self.core
            .settle_reservation(key, limits, reservation, actual, now_ms)
    }

    /// How late a sliding window of `limit` may release quota on this store: a request made at
    /// `t` stops counting at the latest at `t + window + release_delay` (one sub-window and at
    /// most `B` ms of rounding: `⌈W/B⌉ + B - 1`; see
    /// `docs/ACCURACY.md`). Exact windows release on time (zero).
    pub fn release_delay(&self, limit: &crate::Limit) -> std::time::Duration {
        self.core.release_delay(limit)
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
        self.core.segs.writable()?;
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
        self.core.segs.writable()?;
        self.core.idem_complete(lease, response, now_ms)
    }

    /// Forget a started request, so that a retry runs it again.
    pub fn abort(&self, lease: &Lease) -> Result<()> {
        self.core.segs.writable()?;
        self.core.idem_abort(lease)
    }

    /// Sub-windows per sliding window on this store (as fixed in its file).
    /// The current version of `key` (see [`crate::version`]), creating its entry (a fresh
    /// epoch, number 0) if the store has none.
    pub fn version(&self, key: &[u8]) -> Result<Version> {
        self.core.version(key, self.now_ms())
    }

    /// Bump the version of `key`: the new one.
    pub fn bump_version(&self, key: &[u8]) -> Result<Version> {
        self.core.bump_version(key, self.now_ms())
    }

    /// Bump the version of `key` if it is `expected` (one compare-and-swap).
    pub fn bump_version_if(&self, key: &[u8], expected: &Version) -> Result<VersionBump> {
        self.core.bump_version_if(key, expected, self.now_ms())
    }

    /// Take one of `cap` (at most [`MAX_PERMITS`](crate::MAX_PERMITS)) concurrency permits
    /// of `key` until `now_ms + lease_ms` (see [`crate::permit`]); `None` if `cap` are held.
    pub fn acquire_permit_at(
        &self,
        key: &[u8],
        cap: u32,
        lease_ms: u64,
        now_ms: u64,
    ) -> Result<Option<Permit>> {
        self.core.acquire_permit(key, cap, lease_ms, now_ms)
    }

    /// Give a permit back; `false` if it had already ended.
    pub fn release_permit(&self, permit: &Permit) -> Result<bool> {
        self.core.release_permit(permit)
    }

    /// Permits of `key` held at `now_ms`.
    pub fn permits_held_at(&self, key: &[u8], now_ms: u64) -> Result<u32> {
        self.core.permits_held(key, now_ms)
    }

    #[cfg_attr(
        not(feature = "redis"),
        allow(dead_code, reason = "used by fleet::HybridStore")
    )]
    pub(crate) fn sub_windows(&self) -> u32 {
        self.core.b
    }

    /// Number of times a check found its entry moving and looked again.
    pub fn contention_retries(&self) -> u64 {
        self.core.retries.load(Ordering::Relaxed)
    }
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
    /// Free lines (64 bytes each) ready for new entries. With
    /// [`Options::home_slots`](crate::Options::home_slots) this counts the home segments'
    /// slots that hold no entry, including those of removed entries whose readers may still
    /// be reading them (free once the epoch moves on).
    pub free_lines: u64,
    /// Segments in the file that nothing uses yet: the spare grown ahead of need
    /// ([`Options::grow_ahead`](crate::Options::grow_ahead)), or ones a crash left blank.
    /// The next segment a size class needs is taken from these before the file grows.
    pub blank_segments: u64,
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

impl Backend for Store {
    fn now_ms(&self) -> u64 {
        Store::now_ms(self)
    }

    fn check_at(&self, key: &[u8], limits: &Limits, cost: u32, now_ms: u64) -> Result<Decision> {
        Store::check_at(self, key, limits, cost, now_ms)
    }

    fn peek_at(&self, key: &[u8], limits: &Limits, now_ms: u64) -> Result<Decision> {
        Store::peek_at(self, key, limits, now_ms)
    }

    fn reserve_at(
        &self,
        key: &[u8],
        limits: &Limits,
        estimate: u32,
        ttl: std::time::Duration,
        now_ms: u64,
    ) -> Result<Reserved> {
        Store::reserve_at(self, key, limits, estimate, ttl, now_ms)
    }

    fn settle_at(
        &self,
        key: &[u8],
        limits: &Limits,
        reservation: &Reservation,
        actual: u32,
        now_ms: u64,
    ) -> Result<Decision> {
        Store::settle_at(self, key, limits, reservation, actual, now_ms)
    }

    fn begin_at(
        &self,
        scope: &[u8],
        key: &IdempotencyKey,
        fingerprint: &Fingerprint,
        now_ms: u64,
    ) -> Result<Begin> {
        Store::begin_at(self, scope, key, fingerprint, now_ms)
    }

    fn complete_at(&self, lease: &Lease, response: &StoredResponse, now_ms: u64) -> Result<()> {
        Store::complete_at(self, lease, response, now_ms)
    }

    fn abort(&self, lease: &Lease) -> Result<()> {
        Store::abort(self, lease)
    }

    fn version(&self, key: &[u8]) -> Result<Version> {
        Store::version(self, key)
    }

    fn bump_version(&self, key: &[u8]) -> Result<Version> {
        Store::bump_version(self, key)
    }

    fn bump_version_if(&self, key: &[u8], expected: &Version) -> Result<VersionBump> {
        Store::bump_version_if(self, key, expected)
    }

    fn acquire_permit_at(
        &self,
        key: &[u8],
        cap: u32,
        lease_ms: u64,
        now_ms: u64,
    ) -> Result<Option<Permit>> {
        Store::acquire_permit_at(self, key, cap, lease_ms, now_ms)
    }

    fn release_permit(&self, permit: &Permit) -> Result<bool> {
        Store::release_permit(self, permit)
    }

    fn permits_held_at(&self, key: &[u8], now_ms: u64) -> Result<u32> {
        Store::permits_held_at(self, key, now_ms)
    }
}
