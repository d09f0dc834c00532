//! Connections to the server: a small pool of blocking connections, script calls by EVALSHA
//! (loading the script once on `NOSCRIPT`), and the mapping of client errors to [`Error`].

use std::time::{Duration, Instant};

use ::redis::{Client, Connection, ErrorKind, RedisError, Script, ServerErrorKind, Value};
use parking_lot::Mutex;

use crate::error::{Error, Result};

/// Blocking connections to one server, reused across calls and threads.
pub(crate) struct Pool {
    client: Client,
    idle: Mutex<Vec<Connection>>,
    max_idle: usize,
    connect_timeout: Duration,
    io_timeout: Duration,
    /// The most one call may take, connecting included ([`RedisOptions::deadline`]).
    ///
    /// [`RedisOptions::deadline`]: super::RedisOptions::deadline
    deadline: Option<Duration>,
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pool")
            .field("idle", &self.idle.lock().len())
            .field("max_idle", &self.max_idle)
            .finish_non_exhaustive()
    }
}

impl Pool {
    pub(crate) fn new(
        url: &str,
        max_idle: usize,
        connect_timeout: Duration,
        io_timeout: Duration,
        deadline: Option<Duration>,
    ) -> Result<Pool> {
        let client = Client::open(url).map_err(|e| Error::Backend {
            reason: format!("bad server address: {e}"),
        })?;
        Ok(Pool {
            client,
            idle: Mutex::new(Vec::new()),
            max_idle,
            connect_timeout,
            io_timeout,
            deadline,
        })
    }

    /// When a call starting now must be over, if the pool has a deadline.
    fn end(&self) -> Option<Instant> {
        self.deadline.map(|d| Instant::now() + d)
    }

    /// A connection ready for one call ending at `end`: an idle one if there is one (`true`),
    /// else a new one.
    fn take(&self, end: Option<Instant>) -> Result<(Connection, bool)> {
        let idle = self.idle.lock().pop();
        match idle {
            Some(c) => Ok((arm(c, end, self.io_timeout)?, true)),
            None => Ok((arm(self.connect(end)?, end, self.io_timeout)?, false)),
        }
    }

    fn connect(&self, end: Option<Instant>) -> Result<Connection> {
        let wait = match end {
            Some(end) => left(end)?.min(self.connect_timeout),
            None => self.connect_timeout,
        };
        let c = self
            .client
            .get_connection_with_timeout(wait)
            .map_err(map_err)?;
        c.set_read_timeout(Some(self.io_timeout)).map_err(map_err)?;
        c.set_write_timeout(Some(self.io_timeout))
            .map_err(map_err)?;
        Ok(c)
    }

    fn give_back(&self, c: Connection) {
        let mut idle = self.idle.lock();
        if idle.len() < self.max_idle {
            idle.push(c);
        }
    }

    /// Run `f` on a pooled connection. A connection that saw an I/O error is dropped, not
    /// reused (its stream may hold half a reply), and so are the idle ones when it was closed
    /// under us: the server went away, and every connection to it is dead.
    pub(crate) fn with<T>(
        &self,
        f: impl FnOnce(&mut Connection) -> std::result::Result<T, RedisError>,
    ) -> Result<T> {
        let (mut c, _) = self.take(self.end())?;
        let r = f(&mut c);
        self.finish(c, r)
    }

    /// [`Pool::with`] for calls that may run twice: when a connection taken from the pool turns
    /// out to be closed (the server restarted since it was opened), run `f` once more on a new
    /// one. The hybrid batches (applied once by their sequence numbers) and checks (a second
    /// count can only make the key stricter) go this way; idempotency transitions do not.
    pub(crate) fn with_retry<T>(
        &self,
        mut f: impl FnMut(&mut Connection) -> std::result::Result<T, RedisError>,
    ) -> Result<T> {
        let end = self.end();
        let (mut c, reused) = self.take(end)?;
        let r = f(&mut c);
        match r {
            Err(e)
                if reused && (e.is_connection_dropped() || e.is_io_error()) && !e.is_timeout() =>
            {
                drop(c);
                self.idle.lock().clear();
                let mut c = arm(self.connect(end)?, end, self.io_timeout)?;
                let r = f(&mut c);
                self.finish(c, r)
            }
            r => self.finish(c, r),
        }
    }

    fn finish<T>(&self, c: Connection, r: std::result::Result<T, RedisError>) -> Result<T> {
        match r {
            Ok(v) => {
                self.give_back(c);
                Ok(v)
            }
            Err(e) => {
                if e.is_connection_dropped() {
                    self.idle.lock().clear();
                } else if !(e.is_io_error() || e.is_timeout()) {
                    self.give_back(c);
                }
                Err(map_err(e))
            }
        }
    }
}

/// `c` ready for a call ending at `end`: every wait of the call (writing the command, reading
/// the reply) gets what is left of the deadline, at most the I/O timeout.
fn arm(c: Connection, end: Option<Instant>, io_timeout: Duration) -> Result<Connection> {
    if let Some(end) = end {
        let t = left(end)?.min(io_timeout);
        c.set_read_timeout(Some(t)).map_err(map_err)?;
        c.set_write_timeout(Some(t)).map_err(map_err)?;
    }
    Ok(c)
}

/// What is left until `end`; past it, the call fails as unreachable.
fn left(end: Instant) -> Result<Duration> {
    let left = end.saturating_duration_since(Instant::now());
    if left.is_zero() {
        return Err(Error::BackendUnavailable {
            reason: "the call's deadline passed".into(),
        });
    }
    Ok(left)
}

/// Call `script` with `keys` and `args`: EVALSHA, and on `NOSCRIPT` load it and call again.
pub(crate) fn eval(
    con: &mut Connection,
    script: &Script,
    keys: &[&[u8]],
    args: &[&[u8]],
) -> std::result::Result<Value, RedisError> {
    let mut inv = script.prepare_invoke();
    for k in keys {
        inv.key(*k);
    }
    for a in args {
        inv.arg(*a);
    }
    inv.invoke(con)
}

/// Whether `e` says the server does not know a script (it restarted, or SCRIPT FLUSH ran).
pub(crate) fn is_noscript(e: &RedisError) -> bool {
    e.kind() == ErrorKind::Server(ServerErrorKind::NoScript)
}

/// A client error as a tollgate error: unreachable (retry, or apply the fail policy) or not.
pub(crate) fn map_err(e: RedisError) -> Error {
    if e.is_io_error()
        || e.is_timeout()
        || e.is_connection_dropped()
        || e.is_connection_refusal()
        || matches!(
            e.kind(),
            ErrorKind::Server(ServerErrorKind::BusyLoading)
                | ErrorKind::Server(ServerErrorKind::TryAgain)
                | ErrorKind::Server(ServerErrorKind::MasterDown)
        )
    {
        Error::BackendUnavailable {
            reason: e.to_string(),
        }
    } else {
        Error::Backend {
            reason: e.to_string(),
        }
    }
}

/// Reading script replies.
pub(crate) fn bad_reply(what: &str) -> Error {
    Error::Backend {
        reason: format!("unexpected reply from the server: {what}"),
    }
}

pub(crate) fn int(v: Option<&Value>) -> Result<i64> {
    match v {
        Some(Value::Int(i)) => Ok(*i),
        Some(Value::BulkString(b)) => std::str::from_utf8(b)
            .ok()
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| bad_reply("a number")),
        _ => Err(bad_reply("a number")),
    }
}

pub(crate) fn uint(v: Option<&Value>) -> Result<u64> {
    u64::try_from(int(v)?).map_err(|_| bad_reply("a non-negative number"))
}

pub(crate) fn array(v: Option<&Value>) -> Result<&[Value]> {
    match v {
        Some(Value::Array(a)) => Ok(a),
        _ => Err(bad_reply("an array")),
    }
}
