//! The shared store: every operation one script on the server, one round trip.

use std::sync::Arc;

use ::redis::{Script, Value};

use super::conn::{self, array, bad_reply, int, uint, Pool};
use super::keys;
use super::options::RedisOptions;
use crate::backend::{check_key, check_request};
use crate::debit::{Reservation, Reserved};
use crate::decision::{exact_state, sliding_state};
use crate::decision::{Decision, WindowState};
use crate::error::{Error, Result};
use crate::idempotency::record::deadline_s;
use crate::idempotency::{
    record_key, Begin, Fingerprint, IdempotencyKey, Lease, Replayed, StoredResponse,
};
use crate::limit::{Limits, Mode, MAX_EXACT_LIMIT, MAX_WINDOWS};
use crate::permit::Permit;
use crate::version::{Version, VersionBump};
use crate::window::exact::Ring;
use crate::window::sliding::{Slide, Snap};

/// Extra time Redis keeps a key past the moment its content stops mattering, against clock
/// skew between the nodes and the server (keys expire on the server's clock).
pub(super) const GC_SLACK_MS: u64 = 60_000;

/// How long the key of a window of `window_ms` lives after a write: two windows (what can
/// still count) and the slack.
pub(super) fn window_key_ttl(window_ms: u64) -> u64 {
    2 * window_ms + GC_SLACK_MS
}

/// How long the keys of `limits`' windows live after a write: as long as the longest one's.
pub(super) fn windows_ttl(limits: &Limits) -> u64 {
    let longest = limits.as_slice().iter().map(|l| l.window_ms()).max();
    window_key_ttl(longest.unwrap_or(0))
}

/// The keys of `key`'s windows under `prefix`, in the set's order.
pub(super) fn window_keys(prefix: &str, key: &[u8], limits: &Limits) -> Vec<Vec<u8>> {
    let base = keys::base(prefix, key);
    limits
        .as_slice()
        .iter()
        .map(|l| keys::window(&base, l))
        .collect()
}

/// Sliding windows and idempotency records kept on a Redis or Valkey server and shared by every
/// gateway node that opens it: a fleet-wide quota, exactly as one embedded [`Store`] would count
/// it.
///
/// Each operation is one Lua script run atomically on the server (EVALSHA, one round trip);
/// the script does the same arithmetic as the embedded store and the decision is finished by
/// the same Rust code, so the two give the same [`Decision`] field by field
/// (`tests/conformance.rs`). Time comes from the store's clock (or the `_at` argument), never
/// from the server: see `docs/DISTRIBUTED.md` for what clock skew between nodes does.
///
/// `RedisStore` is `Send + Sync` and cheap to clone (clones share a connection pool).
///
/// ```no_run
/// use tollgate::fleet::{RedisOptions, RedisStore};
/// use tollgate::{Limit, Limits};
/// let store = RedisStore::open("redis://127.0.0.1:6379", RedisOptions::default())?;
/// let limits = Limits::new(&[Limit::per_minute(60), Limit::per_hour(1000)])?;
/// let d = store.check(b"token-abc", &limits, 1)?;
/// println!("allowed {} remaining {}", d.allowed(), d.remaining());
/// # Ok::<(), tollgate::Error>(())
/// ```
///
/// [`Store`]: crate::Store
#[derive(Clone, Debug)]
pub struct RedisStore {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    pool: Pool,
    opts: RedisOptions,
    /// Sub-windows per sliding window (`B`).
    b: u32,
    check: Script,
    begin: Script,
    settle: Script,
}

impl RedisStore {
    /// A store on the server at `url` (`redis://host:port/db`, `rediss://` is not built in).
    /// Connections are opened when first needed: use [`RedisStore::ping`] to check the server
    /// now.
    pub fn open(url: &str, opts: RedisOptions) -> Result<RedisStore> {
        opts.validate()?;
        let pool = Pool::new(
            url,
            opts.max_idle,
            opts.connect_timeout,
            opts.io_timeout,
            opts.deadline,
        )?;
        Ok(RedisStore {
            inner: Arc::new(Inner {
                pool,
                b: opts.common.sub_windows,
                opts,
                check: Script::new(concat!(
                    include_str!("window.lua"),
                    include_str!("check.lua")
                )),
                begin: Script::new(include_str!("begin.lua")),
                settle: Script::new(include_str!("settle.lua")),
            }),
        })
    }

    /// Ask the server whether it is there (PING).
    pub fn ping(&self) -> Result<()> {
        self.inner
            .pool
            .with_retry(|c| ::redis::cmd("PING").query::<String>(c))
            .map(|_| ())
    }

    /// The current time of the store's clock (ms since the Unix epoch).
    pub fn now_ms(&self) -> u64 {
        self.inner.opts.common.clock.now_ms()
    }

    /// The options the store was opened with.
    pub fn options(&self) -> &RedisOptions {
        &self.inner.opts
    }

    pub(crate) fn pool(&self) -> &Pool {
        &self.inner.pool
    }

    /// Sub-windows per sliding window (`B`).
    pub(super) fn sub_windows(&self) -> u32 {
        self.inner.b
    }

    /// Count a request of `cost` against every window of `limits` for `key`, fleet-wide, at the
    /// store's clock: as [`Store::check`](crate::Store::check).
    pub fn check(&self, key: &[u8], limits: &Limits, cost: u32) -> Result<Decision> {
        self.check_at(key, limits, cost, self.now_ms())
    }

    /// [`RedisStore::check`] at an explicit time.
    pub fn check_at(
        &self,
        key: &[u8],
        limits: &Limits,
        cost: u32,
        now_ms: u64,
    ) -> Result<Decision> {
        check_request(key, limits, cost)?;
        self.run_check(key, limits, cost, cost, now_ms)
    }

    /// What a request of cost 1 would get now, without counting it.
    pub fn peek(&self, key: &[u8], limits: &Limits) -> Result<Decision> {
        self.peek_at(key, limits, self.now_ms())
    }

    /// [`RedisStore::peek`] at an explicit time.
    pub fn peek_at(&self, key: &[u8], limits: &Limits, now_ms: u64) -> Result<Decision> {
        check_key(key)?;
        self.run_check(key, limits, 0, 1, now_ms)
    }

    /// Run the check script with `cost` and report the windows as a request of `view` would
    /// see them.
    fn run_check(
        &self,
        key: &[u8],
        limits: &Limits,
        cost: u32,
        view: u32,
        now_ms: u64,
    ) -> Result<Decision> {
        let items = limits.as_slice();
        let wkeys = window_keys(&self.inner.opts.prefix, key, limits);
        let mut args: Vec<Vec<u8>> = vec![
            now_ms.to_string().into_bytes(),
            cost.to_string().into_bytes(),
            windows_ttl(limits).to_string().into_bytes(),
        ];
        for (i, l) in items.iter().enumerate() {
            let (exact, g, b) = match l.mode() {
                Mode::Exact => ("1", 0, 0),
                Mode::Bucketed => {
                    let geo = slide_of(limits, i, self.inner.b)?;
                    ("0", geo.g, geo.b)
                }
            };
            args.push(exact.as_bytes().to_vec());
            args.push(l.window_ms().to_string().into_bytes());
            args.push(l.limit().to_string().into_bytes());
            args.push(g.to_string().into_bytes());
            args.push(b.to_string().into_bytes());
        }
        let k: Vec<&[u8]> = wkeys.iter().map(Vec::as_slice).collect();
        let a: Vec<&[u8]> = args.iter().map(Vec::as_slice).collect();
        let reply = self
            .inner
            .pool
            .with_retry(|c| conn::eval(c, &self.inner.check, &k, &a))?;
        decide(&reply, limits, self.inner.b, cost, view, now_ms)
    }

    /// "Have I seen this Idempotency-Key?", fleet-wide: as [`Store::begin`](crate::Store::begin).
    pub fn begin(
        &self,
        scope: &[u8],
        key: &IdempotencyKey,
        fingerprint: &Fingerprint,
    ) -> Result<Begin> {
        self.begin_at(scope, key, fingerprint, self.now_ms())
    }

    /// [`RedisStore::begin`] at an explicit time.
    pub fn begin_at(
        &self,
        scope: &[u8],
        key: &IdempotencyKey,
        fingerprint: &Fingerprint,
        now_ms: u64,
    ) -> Result<Begin> {
        let rk = record_key(scope, key)?;
        let rkey = keys::record(&self.inner.opts.prefix, rk.as_bytes())
            .ok_or(Error::InvalidScope { len: scope.len() })?;
        let idem = &self.inner.opts.common.idem;
        let lease_ms = idem.lease.as_millis() as u64;
        let ttl_ms = idem.ttl.as_millis() as u64;
        let dl = deadline_s(now_ms, lease_ms);
        let (now_s, dl_s, gc_s) = (
            now_ms.to_string(),
            dl.to_string(),
            (lease_ms + ttl_ms + GC_SLACK_MS).to_string(),
        );
        let args: [&[u8]; 4] = [
            fingerprint.as_bytes(),
            now_s.as_bytes(),
            dl_s.as_bytes(),
            gc_s.as_bytes(),
        ];
        let reply = self
            .inner
            .pool
            .with(|c| conn::eval(c, &self.inner.begin, &[&rkey], &args))?;
        let r = array(Some(&reply))?;
        match int(r.first())? {
            1 => Ok(Begin::Started(Lease {
                key: rk.as_bytes().to_vec(),
                fence: u32::try_from(uint(r.get(1))?).map_err(|_| bad_reply("a fence"))?,
                fingerprint: *fingerprint,
                deadline_ms: uint(r.get(2))?.saturating_mul(1000),
            })),
            2 => match r.get(2) {
                Some(Value::BulkString(b)) => Replayed::new(b.clone())
                    .map(Begin::Replay)
                    .ok_or_else(|| bad_reply("a stored response that does not decode")),
                _ => Err(bad_reply("a stored response")),
            },
            3 => Ok(Begin::InFlight),
            4 => Ok(Begin::Mismatch),
            _ => Err(bad_reply("a begin outcome")),
        }
    }

    /// Store the response of a started request for replay: as
    /// [`Store::complete`](crate::Store::complete).
    ///
    /// When this returns `Ok`, the server has the record in memory; how long it survives a
    /// server crash depends on the server's persistence (`appendfsync always` for no loss, see
    /// `docs/DISTRIBUTED.md`).
    pub fn complete(&self, lease: &Lease, response: &StoredResponse) -> Result<()> {
        self.complete_at(lease, response, self.now_ms())
    }

    /// [`RedisStore::complete`] at an explicit time (the TTL runs from `now_ms`).
    pub fn complete_at(&self, lease: &Lease, response: &StoredResponse, now_ms: u64) -> Result<()> {
        let max = self.inner.opts.common.idem.max_response;
        let len = response.encoded_len().unwrap_or(usize::MAX);
        if len > max {
            return Err(Error::ResponseTooLarge { len, max });
        }
        let ttl_ms = self.inner.opts.common.idem.ttl.as_millis() as u64;
        let dl = deadline_s(now_ms, ttl_ms);
        let gc = (dl.saturating_mul(1000)).saturating_sub(now_ms) + GC_SLACK_MS;
        self.end_lease(lease, 2, dl, &response.encode(), gc)
    }

    /// Forget a started request, so that a retry runs it again.
    pub fn abort(&self, lease: &Lease) -> Result<()> {
        let idem = &self.inner.opts.common.idem;
        let gc = (idem.lease.as_millis() + idem.ttl.as_millis()) as u64 + GC_SLACK_MS;
        self.end_lease(lease, 0, 0, b"", gc)
    }

    /// Complete (`state` 2) or abort (0) a lease: settle.lua.
    fn end_lease(&self, lease: &Lease, state: u8, dl: u64, resp: &[u8], gc: u64) -> Result<()> {
        let rkey = keys::record(&self.inner.opts.prefix, &lease.key)
            .ok_or(Error::LeaseLost { current: 0 })?;
        let (fence, state, dl, gc) = (
            lease.fence.to_string(),
            state.to_string(),
            dl.to_string(),
            gc.to_string(),
        );
        let args: [&[u8]; 6] = [
            fence.as_bytes(),
            lease.fingerprint.as_bytes(),
            state.as_bytes(),
            dl.as_bytes(),
            resp,
            gc.as_bytes(),
        ];
        let reply = self
            .inner
            .pool
            .with(|c| conn::eval(c, &self.inner.settle, &[&rkey], &args))?;
        let r = array(Some(&reply))?;
        match int(r.first())? {
            0 => Ok(()),
            1 => Err(Error::LeaseLost {
                current: u32::try_from(uint(r.get(1))?).map_err(|_| bad_reply("a fence"))?,
            }),
            2 => Err(Error::AlreadyCompleted),
            _ => Err(bad_reply("a settle outcome")),
        }
    }
}

/// The shape of sliding window `i` of `limits` with `b` sub-windows.
pub(super) fn slide_of(limits: &Limits, i: usize, b: u32) -> Result<Slide> {
    limits
        .slide(i, b)
        .ok_or(Error::InvalidOptions("sub_windows is out of range"))
}

/// A sliding window's state as the script returns it: `[0, n, cur, c1, .., cB]` (the counts
/// of sub-windows `n-B .. n-1`, oldest first), as a copy of the embedded store's words.
fn snap_of(v: &[Value], geo: &Slide) -> Result<Snap> {
    if v.len() != 3 + geo.b as usize {
        return Err(bad_reply("a sliding window of B + 3 values"));
    }
    let n = uint(v.get(1))?;
    let cur = uint(v.get(2))?;
    let mut older = [0u64; crate::window::sliding::MAX_B as usize];
    for (o, x) in older.iter_mut().zip(v.get(3..).unwrap_or(&[])) {
        *o = uint(Some(x))?;
    }
    let older = older.get(..geo.b as usize).unwrap_or(&[]);
    Ok(Snap::from_counts(geo, n, cur, older))
}

/// An exact window's state as the script returns it: `[1, t1, .., tm]`, oldest first; the
/// newest `limit` are kept, as the embedded ring keeps them.
fn ring_of(v: &[Value], limit: u32) -> Result<Ring> {
    let cap = limit.min(MAX_EXACT_LIMIT);
    let times = v.get(1..).unwrap_or(&[]);
    let skip = times.len().saturating_sub(cap as usize);
    let mut ring = Ring {
        slots: [0; MAX_EXACT_LIMIT as usize],
        cap,
        head: 0,
    };
    let mut len = 0usize;
    for (slot, t) in ring.slots.iter_mut().zip(times.iter().skip(skip)) {
        *slot = uint(Some(t))?.saturating_add(1);
        len += 1;
    }
    ring.head = (len as u32) % cap.max(1);
    Ok(ring)
}

/// The decision from the check script's reply (or the reserve and debit scripts', which
/// answer alike), computed by the embedded store's own functions.
pub(super) fn decide(
    reply: &Value,
    limits: &Limits,
    b: u32,
    cost: u32,
    view: u32,
    now_ms: u64,
) -> Result<Decision> {
    let r = array(Some(reply))?;
    let refused = uint(r.first())?;
    let admitted = cost > 0 && refused == 0;
    let view = if admitted { 0 } else { view };
    let mut ws = [WindowState::default(); MAX_WINDOWS];
    let mut all_fit = true;
    for (i, l) in limits.as_slice().iter().enumerate() {
        let st = array(r.get(2 + i))?;
        let w = match l.mode() {
            Mode::Bucketed => {
                let geo = slide_of(limits, i, b)?;
                sliding_state(&snap_of(st, &geo)?, &geo, view, now_ms)
            }
            Mode::Exact => {
                let ring = ring_of(st, l.limit())?;
                let ev = ring.eval(l.window_ms(), now_ms);
                exact_state(&ev, l.limit(), l.window_ms(), view, now_ms)
            }
        };
        all_fit &= w.fits();
        if let Some(slot) = ws.get_mut(i) {
            *slot = w;
        }
    }
    if admitted {
        return Ok(Decision::from_windows(true, ws, limits.len()));
    }
    let allowed = all_fit && refused == 0;
    if !allowed && all_fit {
        // As in the embedded store: the refusing window reports a wait of at least 1 ms.
        if let Some(w) = (refused as usize)
            .checked_sub(1)
            .and_then(|i| ws.get_mut(i))
        {
            w.wait_at_least(1);
        }
    }
    Ok(Decision::from_windows(allowed, ws, limits.len()))
}

impl crate::backend::Backend for RedisStore {
    fn now_ms(&self) -> u64 {
        RedisStore::now_ms(self)
    }

    fn check_at(&self, key: &[u8], limits: &Limits, cost: u32, now_ms: u64) -> Result<Decision> {
        RedisStore::check_at(self, key, limits, cost, now_ms)
    }

    fn peek_at(&self, key: &[u8], limits: &Limits, now_ms: u64) -> Result<Decision> {
        RedisStore::peek_at(self, key, limits, now_ms)
    }

    fn reserve_at(
        &self,
        key: &[u8],
        limits: &Limits,
        estimate: u32,
        ttl: std::time::Duration,
        now_ms: u64,
    ) -> Result<Reserved> {
        RedisStore::reserve_at(self, key, limits, estimate, ttl, now_ms)
    }

    fn settle_at(
        &self,
        key: &[u8],
        limits: &Limits,
        reservation: &Reservation,
        actual: u32,
        now_ms: u64,
    ) -> Result<Decision> {
        RedisStore::settle_at(self, key, limits, reservation, actual, now_ms)
    }

    fn begin_at(
        &self,
        scope: &[u8],
        key: &IdempotencyKey,
        fingerprint: &Fingerprint,
        now_ms: u64,
    ) -> Result<Begin> {
        RedisStore::begin_at(self, scope, key, fingerprint, now_ms)
    }

    fn complete_at(&self, lease: &Lease, response: &StoredResponse, now_ms: u64) -> Result<()> {
        RedisStore::complete_at(self, lease, response, now_ms)
    }

    fn abort(&self, lease: &Lease) -> Result<()> {
        RedisStore::abort(self, lease)
    }

    fn version(&self, key: &[u8]) -> Result<Version> {
        RedisStore::version(self, key)
    }

    fn bump_version(&self, key: &[u8]) -> Result<Version> {
        RedisStore::bump_version(self, key)
    }

    fn bump_version_if(&self, key: &[u8], expected: &Version) -> Result<VersionBump> {
        RedisStore::bump_version_if(self, key, expected)
    }

    fn acquire_permit_at(
        &self,
        key: &[u8],
        cap: u32,
        lease_ms: u64,
        now_ms: u64,
    ) -> Result<Option<Permit>> {
        RedisStore::acquire_permit_at(self, key, cap, lease_ms, now_ms)
    }

    fn release_permit(&self, permit: &Permit) -> Result<bool> {
        RedisStore::release_permit(self, permit)
    }

    fn permits_held_at(&self, key: &[u8], now_ms: u64) -> Result<u32> {
        RedisStore::permits_held_at(self, key, now_ms)
    }
}
