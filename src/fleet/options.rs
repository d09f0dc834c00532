//! How a shared (Redis / Valkey) store is set up. The settings every backend shares come from
//! `crate::options` (one definition); the connection settings are Redis's own.

use std::time::Duration;

use crate::error::{Error, Result};
use crate::options::{common_builders, Common};

/// How a [`RedisStore`](super::RedisStore) talks to its server and counts.
///
/// The counting options ([`RedisOptions::sub_windows`]) must be the same on every node of a
/// fleet, and the same as the embedded stores they are compared with, or the nodes round
/// differently.
///
/// ```
/// use std::time::Duration;
/// use tollgate::fleet::RedisOptions;
/// let opts = RedisOptions::default()
///     .prefix("gw-prod")
///     .io_timeout(Duration::from_millis(250))
///     .lease_timeout(Duration::from_secs(30));
/// # let _ = opts;
/// ```
#[derive(Debug, Clone)]
pub struct RedisOptions {
    pub(crate) prefix: String,
    pub(crate) common: Common,
    pub(crate) connect_timeout: Duration,
    pub(crate) io_timeout: Duration,
    pub(crate) deadline: Option<Duration>,
    pub(crate) max_idle: usize,
}

impl Default for RedisOptions {
    fn default() -> Self {
        RedisOptions {
            prefix: "tollgate".into(),
            common: Common::default(),
            connect_timeout: Duration::from_millis(500),
            io_timeout: Duration::from_secs(1),
            deadline: None,
            max_idle: 64,
        }
    }
}

impl RedisOptions {
    common_builders!();

    /// The first part of every key name (default `tollgate`); no braces. Stores with different
    /// prefixes on one server do not see each other's keys.
    pub fn prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
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

    /// The most one call (a check, a `begin`, a hybrid node's sync, ...) may take in all, from
    /// its start to its reply, opening a connection included (default: none, each wait bounded
    /// by the two timeouts above). Each wait gets what is left of it, at most its own timeout;
    /// past it the call fails with [`Error::BackendUnavailable`], so a gateway applies its
    /// failure policy within the deadline. The one call that finds its script unknown to the
    /// server (the first after a server start) sends two more commands, each bounded alike.
    pub fn deadline(mut self, d: Duration) -> Self {
        self.deadline = Some(d);
        self
    }

    /// Connections kept open between calls (default 64). More are opened when more threads
    /// call at once; the extra ones are closed after use.
    pub fn max_idle_connections(mut self, n: usize) -> Self {
        self.max_idle = n;
        self
    }

    pub(crate) fn validate(&self) -> Result<()> {
        self.common.validate()?;
        if self.prefix.is_empty() || self.prefix.contains(['{', '}']) {
            return Err(Error::InvalidOptions(
                "the key prefix must be non-empty and hold no braces",
            ));
        }
        if self.connect_timeout.is_zero()
            || self.io_timeout.is_zero()
            || self.deadline.is_some_and(|d| d.is_zero())
        {
            return Err(Error::InvalidOptions("timeouts must be positive"));
        }
        Ok(())
    }
}

/// What a hybrid node does once the server has not answered for
/// [`HybridOptions::on_unreachable`]'s `after`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Unreachable {
    /// Decide alone: the embedded store's limit (and the last fleet view, as it ages) still
    /// apply on this node, so the fleet admits at most `N × limit` per window. Counts are kept
    /// and sent when the server is back.
    #[default]
    FailOpen,
    /// Refuse every request (nothing is counted) until a sync succeeds.
    FailClosed,
}

/// How a [`HybridStore`](super::HybridStore) reconciles with the server.
///
/// ```
/// use std::time::Duration;
/// use tollgate::fleet::{HybridOptions, Unreachable};
/// let opts = HybridOptions::default()
///     .flush_interval(Duration::from_millis(20))
///     .batch(10)
///     .on_unreachable(Unreachable::FailClosed, Duration::from_secs(2));
/// # let _ = opts;
/// ```
#[derive(Debug, Clone)]
pub struct HybridOptions {
    pub(crate) flush_interval: Duration,
    pub(crate) batch: u32,
    pub(crate) max_keys_per_flush: usize,
    pub(crate) stale_after: Duration,
    pub(crate) unreachable: Unreachable,
    pub(crate) background: bool,
}

impl Default for HybridOptions {
    fn default() -> Self {
        HybridOptions {
            flush_interval: Duration::from_millis(50),
            batch: 16,
            max_keys_per_flush: 512,
            stale_after: Duration::from_secs(5),
            unreachable: Unreachable::FailOpen,
            background: true,
        }
    }
}

impl HybridOptions {
    /// How often the background thread syncs (default 50 ms). It also wakes early when a key
    /// reaches its batch budget.
    pub fn flush_interval(mut self, every: Duration) -> Self {
        self.flush_interval = every;
        self
    }

    /// The batch budget `B` (default 16): the most units of cost a node admits on one key's
    /// window before the server acknowledged them. The fleet-wide overshoot is at most
    /// `(N - 1) × B`; a node refuses (with `Retry-After` of one flush interval) past it until
    /// the next sync, so size it at least `per-node rate × flush interval` for hot keys.
    pub fn batch(mut self, units: u32) -> Self {
        self.batch = units;
        self
    }

    /// The most window counters sent in one pipelined round trip (default 512); a sync with
    /// more sends several.
    pub fn max_keys_per_flush(mut self, n: usize) -> Self {
        self.max_keys_per_flush = n.max(1);
        self
    }

    /// What to do when the last successful sync is older than `after` (default: fail open
    /// after 5 s).
    pub fn on_unreachable(mut self, policy: Unreachable, after: Duration) -> Self {
        self.unreachable = policy;
        self.stale_after = after;
        self
    }

    /// Run the background sync thread (default: yes). Without it, call
    /// [`HybridStore::sync_now`](super::HybridStore::sync_now) yourself (tests, simulations).
    pub fn background(mut self, enabled: bool) -> Self {
        self.background = enabled;
        self
    }
}
