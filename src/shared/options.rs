//! How a shared (Redis / Valkey) store is set up.

use std::sync::Arc;
use std::time::Duration;

use crate::clock::{Clock, ClockSource, ManualClock};
use crate::error::{Error, Result};
use crate::idempotency::IdemOptions;

/// How a [`RedisStore`](super::RedisStore) talks to its server and counts.
///
/// The counting options ([`RedisOptions::sub_windows`]) must be the same on every node of a
/// fleet, and the same as the embedded stores they are compared with, or the nodes round
/// differently.
///
/// ```
/// use std::time::Duration;
/// use tollgate::shared::RedisOptions;
/// let opts = RedisOptions::default()
///     .prefix("gw-prod")
///     .io_timeout(Duration::from_millis(250))
///     .lease_timeout(Duration::from_secs(30));
/// # let _ = opts;
/// ```
#[derive(Debug, Clone)]
pub struct RedisOptions {
    pub(crate) prefix: String,
    pub(crate) sub_windows: u32,
    pub(crate) clock: ClockSource,
    pub(crate) idem: IdemOptions,
    pub(crate) connect_timeout: Duration,
    pub(crate) io_timeout: Duration,
    pub(crate) max_idle: usize,
}

impl Default for RedisOptions {
    fn default() -> Self {
        RedisOptions {
            prefix: "tollgate".into(),
            sub_windows: crate::limit::DEFAULT_SUB_WINDOWS,
            clock: ClockSource::System,
            idem: IdemOptions::default(),
            connect_timeout: Duration::from_millis(500),
            io_timeout: Duration::from_secs(1),
            max_idle: 64,
        }
    }
}

impl RedisOptions {
    /// The first part of every key name (default `tollgate`); no braces. Stores with different
    /// prefixes on one server do not see each other's keys.
    pub fn prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }

    /// Sub-windows of a bucketed window (2 to 31, default 16), as
    /// [`Options::sub_windows`](crate::Options::sub_windows).
    pub fn sub_windows(mut self, b: u32) -> Self {
        self.sub_windows = b;
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

    /// How long a completed idempotency record is replayed (default 24 h).
    pub fn idempotency_ttl(mut self, ttl: Duration) -> Self {
        self.idem.ttl = ttl;
        self
    }

    /// How long a lease stays in flight without `complete` or `abort` (default 60 s, rounded up
    /// to whole seconds as in the embedded store).
    pub fn lease_timeout(mut self, timeout: Duration) -> Self {
        self.idem.lease = timeout;
        self
    }

    /// The largest encoded response kept for replay (default 1 MiB).
    pub fn max_response_bytes(mut self, max: usize) -> Self {
        self.idem.max_response = max;
        self
    }

    /// How long opening a connection may take (default 500 ms).
    pub fn connect_timeout(mut self, t: Duration) -> Self {
        self.connect_timeout = t;
        self
    }

    /// How long one call may wait for its reply (default 1 s). Past it the call fails with
    /// [`Error::BackendUnavailable`].
    pub fn io_timeout(mut self, t: Duration) -> Self {
        self.io_timeout = t;
        self
    }

    /// Connections kept open between calls (default 64). More are opened when more threads
    /// call at once; the extra ones are closed after use.
    pub fn max_idle_connections(mut self, n: usize) -> Self {
        self.max_idle = n;
        self
    }

    pub(crate) fn validate(&self) -> Result<()> {
        if self.idem.lease.is_zero() || self.idem.ttl.is_zero() {
            return Err(Error::InvalidOptions(
                "lease timeout and TTL must be positive",
            ));
        }
        if !(2..=31).contains(&self.sub_windows) {
            return Err(Error::InvalidOptions("sub_windows must be 2 to 31"));
        }
        if self.prefix.is_empty() || self.prefix.contains(['{', '}']) {
            return Err(Error::InvalidOptions(
                "the key prefix must be non-empty and hold no braces",
            ));
        }
        if self.connect_timeout.is_zero() || self.io_timeout.is_zero() {
            return Err(Error::InvalidOptions("timeouts must be positive"));
        }
        Ok(())
    }
}
