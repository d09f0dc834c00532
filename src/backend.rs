//! One interface over every place quotas and idempotency records can live.
//!
//! A gateway written against [`Backend`] runs unchanged on the embedded [`Store`] (one node),
//! on the shared Redis / Valkey store (a fleet, exact) or on the hybrid store (a fleet, local
//! answers reconciled in the background): `docs/DISTRIBUTED.md` says which to pick. The
//! conformance suite (`tests/conformance.rs`) runs the same scenarios through this trait
//! against each implementation, so that they cannot drift apart.

use crate::debit::{Reservation, Reserved};
use crate::decision::Decision;
use crate::error::{Error, Result};
use crate::idempotency::{Begin, Fingerprint, IdempotencyKey, Lease, StoredResponse};
use crate::key::MAX_KEY_LEN;
use crate::limit::Limits;
use crate::permit::Permit;
use crate::version::{Version, VersionBump};

/// Refuse an empty or over-long key: the first step of every backend's every operation.
#[inline]
pub(crate) fn check_key(key: &[u8]) -> Result<()> {
    if key.is_empty() || key.len() > MAX_KEY_LEN {
        return Err(Error::InvalidKey { len: key.len() });
    }
    Ok(())
}

/// Refuse a check no backend can answer: a bad key, or a cost above the smallest limit (it
/// could never be admitted). Every backend's `check_at` starts here, before it touches
/// anything stored.
#[inline]
pub(crate) fn check_request(key: &[u8], limits: &Limits, cost: u32) -> Result<()> {
    check_key(key)?;
    if cost > limits.min_limit() {
        return Err(Error::CostExceedsLimit {
            cost,
            limit: limits.min_limit(),
        });
    }
    Ok(())
}

/// Refuse a reservation no backend can make: a bad key, an estimate above the smallest limit,
/// a set with an exact window.
pub(crate) fn check_reserve(key: &[u8], limits: &Limits, estimate: u32) -> Result<()> {
    check_request(key, limits, estimate)?;
    if limits.has_exact() {
        return Err(Error::InvalidLimit(
            "reserve and settle need sliding windows; this set has an exact one",
        ));
    }
    Ok(())
}

/// Sliding-window checks, idempotency records, versions and concurrency permits, wherever
/// they are kept.
///
/// Every time-dependent operation has an `_at` form taking `now` in milliseconds since the Unix
/// epoch; the plain forms read the backend's clock ([`Backend::now_ms`]).
///
/// ```
/// use tollgate::{Backend, Limit, Limits, Options, Store};
/// fn admit(b: &dyn Backend, token: &[u8], limits: &Limits) -> tollgate::Result<bool> {
///     Ok(b.check(token, limits, 1)?.allowed())
/// }
/// let store = Store::open_in_memory(Options::default())?;
/// let limits = Limits::new(&[Limit::per_minute(1)])?;
/// assert!(admit(&store, b"tok", &limits)?);
/// assert!(!admit(&store, b"tok", &limits)?);
/// # Ok::<(), tollgate::Error>(())
/// ```
pub trait Backend: Send + Sync {
    /// The backend's current time (ms since the Unix epoch).
    fn now_ms(&self) -> u64;

    /// Count a request of `cost` against every window of `limits` for `key` at `now_ms`:
    /// admitted only if every window has room, and a rejected request consumes nothing. A cost
    /// of 0 counts nothing and reports the current state.
    fn check_at(&self, key: &[u8], limits: &Limits, cost: u32, now_ms: u64) -> Result<Decision>;

    /// What a request of cost 1 would get at `now_ms`, without counting it.
    fn peek_at(&self, key: &[u8], limits: &Limits, now_ms: u64) -> Result<Decision>;

    /// Count `estimate` in every window of `limits` for `key` at `now_ms`, all or nothing like a
    /// check, and open a reservation of it for `ttl` (1 ms to one day): see [`crate::debit`].
    /// An estimate of 0 is admitted when a request of cost 1 would be, and counts nothing.
    /// Refused with a typed error for a set with an exact window or an estimate above the
    /// smallest limit.
    fn reserve_at(
        &self,
        key: &[u8],
        limits: &Limits,
        estimate: u32,
        ttl: std::time::Duration,
        now_ms: u64,
    ) -> Result<Reserved>;

    /// Settle `reservation` with the request's `actual` cost at `now_ms` (see
    /// [`crate::debit`]); what a request of cost 1 would get after it. Once only: a second
    /// settle, anywhere, is [`Error::ReservationSettled`].
    fn settle_at(
        &self,
        key: &[u8],
        limits: &Limits,
        reservation: &Reservation,
        actual: u32,
        now_ms: u64,
    ) -> Result<Decision>;

    /// [`Backend::reserve_at`] at the backend's clock, open for
    /// [`DEFAULT_RESERVATION_TTL`](crate::debit::DEFAULT_RESERVATION_TTL).
    fn reserve(&self, key: &[u8], limits: &Limits, estimate: u32) -> Result<Reserved> {
        let ttl = crate::debit::DEFAULT_RESERVATION_TTL;
        self.reserve_at(key, limits, estimate, ttl, self.now_ms())
    }

    /// [`Backend::settle_at`] at the backend's clock.
    fn settle(
        &self,
        key: &[u8],
        limits: &Limits,
        reservation: &Reservation,
        actual: u32,
    ) -> Result<Decision> {
        self.settle_at(key, limits, reservation, actual, self.now_ms())
    }

    /// Start, replay or refuse a keyed request (see [`crate::idempotency`]) at `now_ms`.
    fn begin_at(
        &self,
        scope: &[u8],
        key: &IdempotencyKey,
        fingerprint: &Fingerprint,
        now_ms: u64,
    ) -> Result<Begin>;

    /// Store the response of a started request for replay; the TTL runs from `now_ms`.
    fn complete_at(&self, lease: &Lease, response: &StoredResponse, now_ms: u64) -> Result<()>;

    /// Forget a started request, so that a retry runs it again.
    fn abort(&self, lease: &Lease) -> Result<()>;

    /// The current version of `key` (see [`crate::version`]); a key never asked for gets its
    /// entry now (a fresh epoch, number 0).
    fn version(&self, key: &[u8]) -> Result<Version>;

    /// Bump the version of `key`: the new one.
    fn bump_version(&self, key: &[u8]) -> Result<Version>;

    /// Bump the version of `key` if it is `expected`, as one atomic step: of two writers
    /// presenting the same version, one gets [`VersionBump::Bumped`] and the other
    /// [`VersionBump::Stale`] with the version the first made.
    fn bump_version_if(&self, key: &[u8], expected: &Version) -> Result<VersionBump>;

    /// Take one of `cap` concurrency permits of `key` (see [`crate::permit`]) until
    /// `now_ms + lease_ms`; `None` when `cap` are held at `now_ms`. The embedded store takes
    /// caps up to [`MAX_PERMITS`](crate::MAX_PERMITS).
    fn acquire_permit_at(
        &self,
        key: &[u8],
        cap: u32,
        lease_ms: u64,
        now_ms: u64,
    ) -> Result<Option<Permit>>;

    /// Give a permit back; `false` if it no longer held its place (released before, or past
    /// its deadline and dropped or replaced by another permit). A permit past its deadline
    /// whose place nobody took yet may still report `true`: either way it is free after.
    fn release_permit(&self, permit: &Permit) -> Result<bool>;

    /// Permits of `key` held at `now_ms`.
    fn permits_held_at(&self, key: &[u8], now_ms: u64) -> Result<u32>;

    /// [`Backend::acquire_permit_at`] at the backend's clock.
    fn acquire_permit(&self, key: &[u8], cap: u32, lease_ms: u64) -> Result<Option<Permit>> {
        self.acquire_permit_at(key, cap, lease_ms, self.now_ms())
    }

    /// [`Backend::permits_held_at`] at the backend's clock.
    fn permits_held(&self, key: &[u8]) -> Result<u32> {
        self.permits_held_at(key, self.now_ms())
    }

    /// [`Backend::check_at`] at the backend's clock.
    fn check(&self, key: &[u8], limits: &Limits, cost: u32) -> Result<Decision> {
        self.check_at(key, limits, cost, self.now_ms())
    }

    /// [`Backend::peek_at`] at the backend's clock.
    fn peek(&self, key: &[u8], limits: &Limits) -> Result<Decision> {
        self.peek_at(key, limits, self.now_ms())
    }

    /// [`Backend::begin_at`] at the backend's clock.
    fn begin(
        &self,
        scope: &[u8],
        key: &IdempotencyKey,
        fingerprint: &Fingerprint,
    ) -> Result<Begin> {
        self.begin_at(scope, key, fingerprint, self.now_ms())
    }

    /// [`Backend::complete_at`] at the backend's clock.
    fn complete(&self, lease: &Lease, response: &StoredResponse) -> Result<()> {
        self.complete_at(lease, response, self.now_ms())
    }
}
