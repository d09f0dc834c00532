//! The one error type of the crate.
//!
//! Every variant is something a gateway can act on: bad input (a 400 or a configuration error),
//! a store that cannot be opened (a deployment error), or a full store (the capacity policy).

use std::fmt;
use std::io;
use std::path::PathBuf;

/// Result alias used across tollgate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What went wrong.
#[derive(Debug)]
#[non_exhaustive]
pub enum Error {
    /// An I/O error from the operating system (open, grow, map, flush).
    Io(io::Error),
    /// The store file is held by another open store, in this process or another one.
    Locked {
        /// The file that is locked.
        path: PathBuf,
    },
    /// The file is not a tollgate store (bad magic), or its header failed its checksum.
    NotAStore {
        /// Why the file was refused.
        reason: &'static str,
    },
    /// The file is a tollgate store of a format version this build cannot read.
    UnsupportedVersion {
        /// The version found in the file.
        found: u32,
        /// The version this build reads and writes.
        supported: u32,
    },
    /// A structure read from the file failed a check and cannot be used.
    Corrupt {
        /// Byte offset in the file of the structure that failed.
        offset: u64,
        /// What failed.
        reason: &'static str,
    },
    /// The file holds fewer segments than its header records: its tail was lost (a cut copy,
    /// a restore, a full disk). Returned only when the store was opened with
    /// [`Options::refuse_lost_segments`](crate::Options::refuse_lost_segments); otherwise the
    /// store opens with what is left and says so in
    /// [`OpenReport::lost_segments`](crate::OpenReport::lost_segments).
    Truncated {
        /// Segments the header records.
        recorded: u64,
        /// Whole segments the file holds.
        found: u64,
    },
    /// An earlier msync, fdatasync or fallocate of this store failed: what is on disk may not
    /// be what was acknowledged, so the store refuses every further write until it is closed
    /// and opened again (which recovers from what the file holds).
    Poisoned,
    /// The key is empty or longer than [`crate::MAX_KEY_LEN`].
    InvalidKey {
        /// The length of the rejected key.
        len: usize,
    },
    /// A limit or a set of limits is not usable (zero limit, window out of range, too many
    /// windows, a limit too large for the chosen representation).
    InvalidLimit(&'static str),
    /// The cost of a request is larger than the smallest limit it is checked against, so it
    /// could never be admitted.
    CostExceedsLimit {
        /// The requested cost.
        cost: u32,
        /// The smallest limit of the set.
        limit: u32,
    },
    /// The store reached its configured capacity and nothing could be reclaimed.
    CapacityExhausted,
    /// The store is a read-only view ([`crate::Store::open_read_only`]): it cannot grow, and
    /// nothing it does reaches the file.
    ReadOnly,
    /// The options given to open a store are inconsistent.
    InvalidOptions(&'static str),
    /// An `Idempotency-Key` header value is not a UUID v4 (HTTP 400).
    InvalidIdempotencyKey(&'static str),
    /// An idempotency scope is empty or longer than [`crate::MAX_SCOPE_LEN`].
    InvalidScope {
        /// The length of the rejected scope.
        len: usize,
    },
    /// A response is larger than the store's maximum: serve it, it is just not stored. The
    /// lease is left as it was (complete it with a smaller response, or abort it).
    ResponseTooLarge {
        /// The encoded size of the response.
        len: usize,
        /// The configured maximum.
        max: usize,
    },
    /// The lease is no longer the key's: it expired and another request took the key over, or it
    /// was aborted. Nothing was stored.
    LeaseLost {
        /// The key's current fencing number (0 if the key is gone).
        current: u32,
    },
    /// The lease was already completed; the first response stays stored.
    AlreadyCompleted,
    /// The entry is being changed by another request at this instant and did not settle
    /// within a bounded wait ([`crate::Store::delete_record`] on a record whose completion is
    /// still writing its response). Nothing was changed: try again shortly.
    Busy {
        /// Byte offset in the file of the entry.
        offset: u64,
    },
    /// A reservation's encoded or text form is not one ([`crate::debit::Reservation`]), or a
    /// reservation's TTL is out of range.
    InvalidReservation(&'static str),
    /// A reservation was settled against another key or another set of windows than it was
    /// made for. Nothing was counted.
    ReservationMismatch,
    /// The reservation was settled before (here or on another node). Nothing was counted
    /// again.
    ReservationSettled,
    /// The reservation's TTL has run out: its estimate stays counted, nothing else is.
    ReservationExpired {
        /// When it expired (ms since the Unix epoch).
        expires_ms: u64,
    },
    /// The shared backend (Redis or Valkey) could not be reached or did not answer in time.
    /// Whether the operation took effect there is unknown: a check may have been counted (which
    /// can only make the key stricter), an idempotency transition may or may not have happened.
    /// A gateway applies its fail-open or fail-closed policy.
    BackendUnavailable {
        /// What the client library reported.
        reason: String,
    },
    /// The shared backend answered with an error, or with a reply tollgate does not understand
    /// (a script error, a reply of the wrong shape, a stored response that does not decode).
    /// A deployment problem, not a transient one.
    Backend {
        /// What went wrong.
        reason: String,
    },
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Io(e) => write!(f, "I/O error: {e}"),
            Error::Locked { path } => {
                write!(f, "store file {} is locked by another open store", path.display())
            }
            Error::NotAStore { reason } => write!(f, "not a tollgate store: {reason}"),
            Error::UnsupportedVersion { found, supported } => write!(
                f,
                "store format version {found} is not supported (this build reads version {supported})"
            ),
            Error::Corrupt { offset, reason } => {
                write!(f, "corrupt store at byte offset {offset}: {reason}")
            }
            Error::Truncated { recorded, found } => write!(
                f,
                "store file lost segments: its header records {recorded}, the file holds {found}"
            ),
            Error::Poisoned => write!(
                f,
                "an earlier write to disk failed: the store refuses writes until it is reopened"
            ),
            Error::InvalidKey { len } => write!(
                f,
                "invalid key of {len} bytes (keys are 1 to {} bytes)",
                crate::key::MAX_KEY_LEN
            ),
            Error::InvalidLimit(why) => write!(f, "invalid limit: {why}"),
            Error::CostExceedsLimit { cost, limit } => write!(
                f,
                "cost {cost} exceeds the limit {limit}: the request can never be admitted"
            ),
            Error::CapacityExhausted => write!(f, "store capacity exhausted"),
            Error::ReadOnly => write!(f, "the store is a read-only view and cannot grow"),
            Error::InvalidOptions(why) => write!(f, "invalid options: {why}"),
            Error::InvalidIdempotencyKey(why) => write!(f, "invalid Idempotency-Key: {why}"),
            Error::InvalidScope { len } => write!(
                f,
                "invalid idempotency scope of {len} bytes (scopes are 1 to {} bytes)",
                crate::key::MAX_SCOPE_LEN
            ),
            Error::ResponseTooLarge { len, max } => write!(
                f,
                "response of {len} bytes is larger than the {max} bytes the store keeps"
            ),
            Error::LeaseLost { current } => write!(
                f,
                "idempotency lease lost: the key was taken over or aborted (current fence {current})"
            ),
            Error::AlreadyCompleted => write!(f, "idempotency lease already completed"),
            Error::Busy { offset } => write!(
                f,
                "the entry at byte offset {offset} is being changed by another request (a completion in progress); nothing was changed, try again"
            ),
            Error::InvalidReservation(why) => write!(f, "invalid reservation: {why}"),
            Error::ReservationMismatch => write!(
                f,
                "the reservation was made for another key or another set of windows"
            ),
            Error::ReservationSettled => write!(f, "the reservation was already settled"),
            Error::ReservationExpired { expires_ms } => write!(
                f,
                "the reservation expired at {expires_ms} ms; its estimate stays counted"
            ),
            Error::BackendUnavailable { reason } => {
                write!(f, "shared backend unavailable: {reason}")
            }
            Error::Backend { reason } => write!(f, "shared backend error: {reason}"),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Io(e) => Some(e),
            _ => None,
        }
    }
}

impl From<io::Error> for Error {
    fn from(e: io::Error) -> Self {
        Error::Io(e)
    }
}
