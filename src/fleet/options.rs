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
    pub(crate) max_idle: usize,
}

impl Default for RedisOptions {
    fn default() -> Self {
        RedisOptions {
            prefix: "tollgate".into(),
            common: Common::default(),
            connect_timeout: Duration::from_millis(500),
            io_timeout: Duration::from_secs(1),
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
        if self.connect_timeout.is_zero() || self.io_timeout.is_zero() {
            return Err(Error::InvalidOptions("timeouts must be positive"));
        }
        Ok(())
    }
}
