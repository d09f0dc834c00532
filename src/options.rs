//! How a store is set up: [`Options`] for the embedded store, and the settings every backend
//! shares (counting, clock, idempotency), written once.
//!
//! Every backend's options type ([`Options`] here, `fleet::RedisOptions` for Redis) holds a
//! [`Common`] and gets the same builder methods for it from [`common_builders!`], so a setting
//! means the same thing, is documented once and is validated once whichever backend it is
//! given to.

use std::time::Duration;

use crate::clock::ClockSource;
use crate::error::{Error, Result};
use crate::idempotency::IdemOptions;

/// The settings every backend shares.
#[derive(Debug, Clone)]
pub(crate) struct Common {
    /// Sub-windows per sliding window (`B`).
    pub sub_windows: u32,
    /// Where time comes from.
    pub clock: ClockSource,
    /// Idempotency records: TTL, lease timeout, largest response, durability.
    pub idem: IdemOptions,
}

impl Default for Common {
    fn default() -> Self {
        Common {
            sub_windows: crate::limit::DEFAULT_SUB_WINDOWS,
            clock: ClockSource::System,
            idem: IdemOptions::default(),
        }
    }
}

impl Common {
    /// Refuse settings no backend can run with.
    pub(crate) fn validate(&self) -> Result<()> {
        if self.idem.lease.is_zero() || self.idem.ttl.is_zero() {
            return Err(Error::InvalidOptions(
                "lease timeout and TTL must be positive",
            ));
        }
        if !(crate::window::sliding::MIN_B..=crate::window::sliding::MAX_B)
            .contains(&self.sub_windows)
        {
            return Err(Error::InvalidOptions("sub_windows must be 16 to 256"));
        }
        Ok(())
    }
}

/// The builder methods of [`Common`]'s settings, for an options type with a `common: Common`
/// field. One definition, so every backend documents and applies them alike.
macro_rules! common_builders {
    () => {
        /// The sub-windows `B` a window is split into (16 to 256, default 64). A window of
        /// length `W` gives quota back at most `⌈W/B⌉ + B` ms late; each sub-window costs a
        /// counter as wide as the limit needs (`docs/ACCURACY.md`): at 32, a 60/min and
        /// 1000/h pair with a 32-byte key takes two 64-byte lines instead of three, at the
        /// same speed. An embedded store fixes it when its file is created; every node of a
        /// fleet must use the same value.
        pub fn sub_windows(mut self, b: u32) -> Self {
            self.common.sub_windows = b;
            self
        }

        /// Drive the store with a manual clock (tests, simulations).
        pub fn clock(mut self, clock: $crate::ManualClock) -> Self {
            self.common.clock = $crate::clock::ClockSource::Manual(clock);
            self
        }

        /// Drive the store with any clock.
        pub fn custom_clock(mut self, clock: std::sync::Arc<dyn $crate::Clock>) -> Self {
            self.common.clock = $crate::clock::ClockSource::Custom(clock);
            self
        }

        /// How long a completed idempotency record is replayed (default 24 h). After that the
        /// key behaves as never seen.
        pub fn idempotency_ttl(mut self, ttl: std::time::Duration) -> Self {
            self.common.idem.ttl = ttl;
            self
        }

        /// How long an idempotency lease stays in flight without `complete` or `abort`
        /// (default 60 s, rounded up to whole seconds). After that the next `begin` takes the
        /// key over, so a crashed handler never locks a key.
        pub fn lease_timeout(mut self, timeout: std::time::Duration) -> Self {
            self.common.idem.lease = timeout;
            self
        }

        /// The largest encoded response kept for replay (default 1 MiB). In an embedded store a
        /// response record must fit in one segment, so the effective maximum is at most the
        /// segment size minus 80 bytes.
        pub fn max_response_bytes(mut self, max: usize) -> Self {
            self.common.idem.max_response = max;
            self
        }
    };
}
#[cfg_attr(
    not(feature = "redis"),
    allow(unused_imports, reason = "used by fleet::RedisOptions")
)]
pub(crate) use common_builders;

/// How a store is opened.
///
/// ```
/// use tollgate::{ManualClock, Options};
/// let opts = Options::default().sub_windows(8).clock(ManualClock::new(0));
/// # let _ = opts;
/// ```
#[derive(Debug, Clone)]
pub struct Options {
    pub(crate) common: Common,
    pub(crate) segment_shift: u32,
    pub(crate) max_segments: usize,
    pub(crate) compactor: CompactorOptions,
    pub(crate) max_entries: Option<u64>,
    pub(crate) on_full: OnFull,
    /// Refuse a file that lost segments instead of opening what is left.
    pub(crate) refuse_lost: bool,
    /// Map the file's segments with 2 MiB pages where the kernel can.
    pub(crate) huge_pages: bool,
    pub(crate) home_slots: bool,
    /// The test hook at every sync and allocation.
    pub(crate) io_hook: crate::storage::hook::Hook,
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

/// Compactor settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct CompactorOptions {
    pub enabled: bool,
    /// Keep a spare segment grown ahead of need (file-backed stores).
    pub grow_ahead: bool,
    pub interval: Duration,
    pub budget: u64,
}

impl Default for CompactorOptions {
    fn default() -> Self {
        CompactorOptions {
            enabled: true,
            grow_ahead: false,
            interval: Duration::from_millis(250),
            budget: 2_048,
        }
    }
}

impl Default for Options {
    fn default() -> Self {
        Options {
            common: Common::default(),
            segment_shift: 22,
            max_segments: 16_384,
            compactor: CompactorOptions::default(),
            max_entries: None,
            on_full: OnFull::Reject,
            refuse_lost: false,
            huge_pages: true,
            home_slots: false,
            io_hook: crate::storage::hook::Hook::default(),
        }
    }
}

impl Options {
    common_builders!();

    /// Size of one segment of the file, as a power of two (16 = 64 KiB to 30 = 1 GiB; default
    /// 22 = 4 MiB). The file grows one segment at a time. Fixed when the file is created.
    pub fn segment_size_log2(mut self, shift: u32) -> Self {
        self.segment_shift = shift;
        self
    }

    /// The most segments the store may grow to (default 16384). With the default segment size
    /// that is 64 GiB; a store that needs more space gets [`Error::CapacityExhausted`]. A
    /// store's file holds at most 4 TiB in all, whatever this says (4096 segments of 1 GiB):
    /// what the in-memory index can point at.
    pub fn max_segments(mut self, n: usize) -> Self {
        self.max_segments = n;
        self
    }

    /// When `complete` returns ([`Durability::Process`](crate::Durability::Process) by
    /// default).
    pub fn durability(mut self, d: crate::Durability) -> Self {
        self.common.idem.durability = d;
        self
    }

    /// Ask the kernel to map the file's segments with 2 MiB pages (default: yes). Format 3
    /// puts every segment on a 2 MiB boundary of the file for this; a kernel that keeps large
    /// folios in the page cache for the file's file system (ext4 and XFS on recent Linux)
    /// then maps a 4 MiB segment with two TLB entries instead of 1 024, and a check of a key
    /// not in cache no longer pays a page walk to reach it (`docs/PERFORMANCE.md`). Where the
    /// kernel cannot, nothing changes.
    ///
    /// The cost: the page cache dirties and writes back a whole 2 MiB page at a time. With
    /// [`Durability::Sync`](crate::Durability::Sync), where every completed idempotency
    /// record is flushed on its own, that would write 2 MiB per record, so huge pages are
    /// not asked for then, whatever this says. A store with a small segment size
    /// ([`Options::segment_size_log2`] below 21) gets none either.
    pub fn huge_pages(mut self, enabled: bool) -> Self {
        self.huge_pages = enabled;
        self
    }

    /// Place window entries in home slots found from their key's hash (default: no): a check
    /// of a key whose entry is not in cache then misses once (the entry) instead of twice (the
    /// index's word, then the entry). The cost is space: the home segments of a size class
    /// fill together and split together when three quarters of their slots are in use, so
    /// they are between three eighths and three quarters full, and the file and the resident
    /// set take more bytes per key (`docs/PERFORMANCE.md`, "Home slots", has both measured).
    /// A key whose home bucket is full lives elsewhere and is found through the index, as
    /// every key is without this. Files written with and without it open either way.
    pub fn home_slots(mut self, enabled: bool) -> Self {
        self.home_slots = enabled;
        self
    }

    /// Run the background compactor (default: yes). Without it, call
    /// [`Store::expire_now`](crate::Store::expire_now) and
    /// [`Store::compact_now`](crate::Store::compact_now) yourself, and a file-backed store's
    /// allocation faults in each segment it takes itself (milliseconds on the request that
    /// takes it) instead of leaving that to the compactor's thread.
    pub fn compactor(mut self, enabled: bool) -> Self {
        self.compactor.enabled = enabled;
        self
    }

    /// Let the compactor keep one spare segment grown ahead of need (default: no; a
    /// file-backed store with the compactor running). Growing the file allocates it and makes
    /// its new length and segment count durable (two syncs of a few bytes each): with a spare,
    /// the allocation that fills a segment takes the next one at once and the compactor grows
    /// another in the background, so no check waits for the disk. The file is then up to one
    /// segment (4 MiB by default) larger than its entries need;
    /// [`Stats::bytes`](crate::Stats::bytes) counts it. (With or without
    /// this, a growth on a request's path adds a quarter as many segments as the file has, up
    /// to 64 MiB, and keeps the ones it did not need as spares; this grows a spare only when
    /// none is left.)
    ///
    /// Off by default because, measured, it is not ahead of the default on any percentile of
    /// new keys' first checks since the compactor faults in each segment before it is taken
    /// (`docs/PERFORMANCE.md`, "New keys and the file's growth"): what it still saves is the
    /// request's own growth (an allocation, two small syncs, and the first touch of the new
    /// segment), a few times per doubling of the file: in `tollgate bench` (2026-12-08, before
    /// growth left the allocator's lock) the request threads' own sleeps in a growth's syncs
    /// fell from 81 to 4 in 4 s, but where every core runs requests the compactor's growing
    /// preempts them instead, and throughput did not move. Turn it on where a core is to
    /// spare.
    pub fn grow_ahead(mut self, enabled: bool) -> Self {
        self.compactor.grow_ahead = enabled;
        self
    }

    /// How often the compactor wakes up when it finds little to do (default 250 ms).
    pub fn compactor_interval(mut self, every: Duration) -> Self {
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

    /// Refuse to open a file that holds fewer segments than its header records (its tail was
    /// lost: a cut copy, a restore, a full disk) with [`Error::Truncated`]. By default such a
    /// file opens with what is left, and [`OpenReport::lost_segments`](crate::OpenReport)
    /// says how many segments were lost.
    pub fn refuse_lost_segments(mut self, refuse: bool) -> Self {
        self.refuse_lost = refuse;
        self
    }

    /// Test instrumentation: call `hook` around every msync, fdatasync and fallocate of the
    /// store (to fail them on purpose, or to watch them). Not for production use.
    #[doc(hidden)]
    pub fn io_hook(mut self, hook: std::sync::Arc<dyn crate::IoHook>) -> Self {
        self.io_hook = crate::storage::hook::Hook::new(hook);
        self
    }

    /// Refuse settings the embedded store cannot run with.
    pub(crate) fn validate(&self) -> Result<()> {
        self.common.validate()?;
        if !(16..=30).contains(&self.segment_shift) {
            return Err(Error::InvalidOptions("segment_size_log2 must be 16 to 30"));
        }
        if self.max_segments == 0 || self.max_segments > 1 << 20 {
            return Err(Error::InvalidOptions("max_segments must be 1 to 2^20"));
        }
        Ok(())
    }
}
