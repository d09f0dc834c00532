//! The hybrid mode: answer from the embedded store, reconcile with the server in batches.
//!
//! # How a node decides
//!
//! For every key it has seen, a node keeps per window three sets of sub-window counts (the
//! sub-windows of the sliding window, `g = ⌈W / B⌉` ms, `B` the `sub_windows` of the node's
//! embedded and shared stores, which must agree):
//!
//! * `remote`: the fleet's counts as the server returned them at the last acknowledged sync
//!   (this node's acknowledged counts included);
//! * `inflight`: counts sent in a batch whose reply has not arrived;
//! * `pending`: counts admitted since.
//!
//! A request of `cost` is admitted when, for every window, (1) the fleet view
//! `remote + inflight + pending`, judged by the embedded store's sliding rule (counted at the
//! effective sub-window `ne = max(⌊now/g⌋, newest counted)`, sub-windows `ne-B ..= ne`), has
//! room for it, (2) this node's unsynchronised counts
//! `inflight + pending` stay within the batch budget `B`, and (3) the embedded store admits it
//! (local limits are always enforced). All three are judged under one lock of the key's shard,
//! so a refused request counts nowhere.
//!
//! # The bound
//!
//! A node never holds more than `B` units the fleet has not acknowledged, and it admits only
//! what fits under the limit in its view, which lacks at most the other nodes' unacknowledged
//! units. So while the server answers, the fleet admits in any interval of a window's length at
//! most `limit + (N - 1) × B` (N nodes). The flush interval `F` bounds how long a unit stays
//! unacknowledged: a node admitting `r` units per second on the key holds at most
//! `r × (F + round trip)` of them, so the overshoot is also at most `(N - 1) × r × (F + rtt)`,
//! whichever is smaller. `tests/fleet.rs` drives three nodes on a real server against it.
//!
//! # When the server is unreachable
//!
//! Counts are kept (a batch is forgotten only once the server acknowledged it, and a batch is
//! applied once however often it is resent: each carries a per-node sequence number the
//! server remembers per key). For [`HybridOptions::stale_after`] the node goes on deciding with
//! the budget, so the bound above holds; after that [`Unreachable::FailOpen`] drops the budget
//! (each node still enforces the limit alone: the fleet admits at most `N × limit`) and
//! [`Unreachable::FailClosed`] refuses every request until a sync succeeds.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

use ::redis::{Script, Value};
use parking_lot::{Condvar, Mutex};

use super::conn::{self, array, bad_reply, uint};
use super::keys;
use super::ledger::{add, live, Counts, KeyState};
use super::options::{HybridOptions, Unreachable};
use super::store::{window_key_ttl, RedisStore};
use crate::backend::{check_key, check_request};
use crate::debit::{Reservation, Reserved};
use crate::decision::{Decision, WindowState};
use crate::error::{Error, Result};
use crate::idempotency::{Begin, Fingerprint, IdempotencyKey, Lease, StoredResponse};
use crate::limit::{Limits, MAX_WINDOWS};
use crate::permit::Permit;
use crate::store::Store;
use crate::version::{Version, VersionBump};
use crate::window::sliding::Slide;

const SHARDS: usize = 64;

/// What the hybrid store has done so far.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HybridStats {
    /// Syncs that reached the server and were acknowledged.
    pub syncs_ok: u64,
    /// Syncs that failed (their counts were kept for the next one).
    pub syncs_failed: u64,
    /// Clock time of the last successful sync (ms since the epoch).
    pub last_sync_ms: u64,
    /// Units admitted here and not yet acknowledged by the server.
    pub unsynced_units: u64,
    /// Keys this node keeps fleet state for.
    pub keys: u64,
}

struct Inner {
    local: Store,
    shared: RedisStore,
    opts: HybridOptions,
    /// Sub-windows per window (`B`), the embedded store's (and the shared store's).
    b: u32,
    node: String,
    seq: AtomicU64,
    shards: Vec<Mutex<HashMap<Vec<u8>, KeyState>>>,
    hasher: ahash::RandomState,
    flush: Script,
    /// One sync at a time (the background thread and `sync_now`).
    syncing: Mutex<()>,
    last_ok_ms: AtomicU64,
    syncs_ok: AtomicU64,
    syncs_failed: AtomicU64,
    wake: Condvar,
    wake_flag: Mutex<bool>,
    stop: AtomicBool,
}

/// A fleet-wide limiter that answers from this node's embedded [`Store`] and reconciles with a
/// Redis / Valkey server in batches, in a background thread (module docs: the bound, the
/// failure behaviour).
///
/// Idempotency records are not batched (a replay must be right the first time): `begin`,
/// `complete` and `abort` go to the server as in [`RedisStore`]. Nor are versions and
/// concurrency permits (a version must be exact for `If-Match`, a cap must hold across the
/// fleet): the [`Backend`](crate::Backend) methods for them are [`RedisStore`]'s.
///
/// Reservations ([`crate::debit`]) are not batched either: [`Backend::reserve_at`] and
/// [`Backend::settle_at`] are [`RedisStore::reserve_at`] and [`RedisStore::settle_at`], one
/// round trip each, so that a reservation counts exactly and settles once across the fleet.
/// They count in the server's windows, which this node's checks do not read (nor do they
/// read this node's batched counts): a set of windows is either reserved and settled or
/// checked (`docs/DISTRIBUTED.md`, "Reserve and settle").
///
/// [`Backend::reserve_at`]: crate::Backend::reserve_at
/// [`Backend::settle_at`]: crate::Backend::settle_at
///
/// ```no_run
/// use tollgate::fleet::{HybridOptions, HybridStore, RedisOptions, RedisStore};
/// use tollgate::{Limit, Limits, Options, Store};
/// let local = Store::open_in_memory(Options::default())?;
/// let shared = RedisStore::open("redis://127.0.0.1:6379", RedisOptions::default())?;
/// let node = HybridStore::new(local, shared, HybridOptions::default())?;
/// let limits = Limits::new(&[Limit::per_minute(600)])?;
/// assert!(node.check(b"token-abc", &limits, 1)?.allowed());
/// # Ok::<(), tollgate::Error>(())
/// ```
#[derive(Clone)]
pub struct HybridStore {
    inner: Arc<Inner>,
    _thread: Arc<FlusherHandle>,
}

impl std::fmt::Debug for HybridStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HybridStore")
            .field("node", &self.inner.node)
            .field("opts", &self.inner.opts)
            .finish_non_exhaustive()
    }
}

struct FlusherHandle {
    inner: Arc<Inner>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl Drop for FlusherHandle {
    fn drop(&mut self) {
        self.inner.stop.store(true, Ordering::SeqCst);
        *self.inner.wake_flag.lock() = true;
        self.inner.wake.notify_all();
        if let Some(t) = self.thread.lock().take() {
            let _ = t.join();
        }
    }
}

impl HybridStore {
    /// A hybrid node over `local` (this node's embedded store, which also supplies the clock)
    /// and `shared` (the fleet's server). Does not contact the server: the first sync does.
    /// Both must count with the same number of sub-windows ([`RedisOptions::sub_windows`]);
    /// [`Error::InvalidOptions`] otherwise.
    ///
    /// [`RedisOptions::sub_windows`]: super::RedisOptions::sub_windows
    pub fn new(local: Store, shared: RedisStore, opts: HybridOptions) -> Result<HybridStore> {
        if opts.batch == 0 || opts.flush_interval.is_zero() {
            return Err(Error::InvalidOptions(
                "the batch budget and the flush interval must be positive",
            ));
        }
        let hasher = ahash::RandomState::new();
        // A fresh identity per process: a restarted node starts its batch numbers anew.
        let node = format!(
            "{:016x}",
            hasher.hash_one((std::process::id(), std::time::SystemTime::now()))
        );
        // The fleet's sub-windows: the embedded store's, which must be the shared store's so
        // that every node (and a `RedisStore` on the same server) rounds alike.
        let b = local.sub_windows();
        if b != shared.options().common.sub_windows {
            return Err(Error::InvalidOptions(
                "the local and the shared store must have the same sub_windows",
            ));
        }
        let now = local.now_ms();
        let inner = Arc::new(Inner {
            local,
            shared,
            b,
            node,
            seq: AtomicU64::new(1),
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            hasher,
            flush: Script::new(include_str!("flush.lua")),
            syncing: Mutex::new(()),
            last_ok_ms: AtomicU64::new(now),
            syncs_ok: AtomicU64::new(0),
            syncs_failed: AtomicU64::new(0),
            wake: Condvar::new(),
            wake_flag: Mutex::new(false),
            stop: AtomicBool::new(false),
            opts,
        });
        let thread = if inner.opts.background {
            let worker = Arc::clone(&inner);
            let t = std::thread::Builder::new()
                .name("tollgate-hybrid-sync".into())
                .spawn(move || worker.run())
                .map_err(Error::Io)?;
            Some(t)
        } else {
            None
        };
        Ok(HybridStore {
            _thread: Arc::new(FlusherHandle {
                inner: Arc::clone(&inner),
                thread: Mutex::new(thread),
            }),
            inner,
        })
    }

    /// This node's embedded store.
    pub fn local(&self) -> &Store {
        &self.inner.local
    }

    /// The shared store it reconciles with.
    pub fn shared(&self) -> &RedisStore {
        &self.inner.shared
    }

    /// The current time of the embedded store's clock.
    pub fn now_ms(&self) -> u64 {
        self.inner.local.now_ms()
    }

    /// Counters of the syncs and of what is not yet acknowledged.
    pub fn stats(&self) -> HybridStats {
        let now = self.now_ms();
        let mut unsynced = 0;
        let mut keys = 0;
        for shard in &self.inner.shards {
            let map = shard.lock();
            keys += map.len() as u64;
            for st in map.values() {
                for w in &st.wins {
                    unsynced += w.unsynced(now / w.g);
                }
            }
        }
        HybridStats {
            syncs_ok: self.inner.syncs_ok.load(Ordering::Relaxed),
            syncs_failed: self.inner.syncs_failed.load(Ordering::Relaxed),
            last_sync_ms: self.inner.last_ok_ms.load(Ordering::Relaxed),
            unsynced_units: unsynced,
            keys,
        }
    }

    /// Whether the server counts as unreachable: the last successful sync is older than the
    /// grace period of [`HybridOptions::on_unreachable`]. The node then decides as its
    /// [`Unreachable`] policy says (by default alone, on its embedded store); a gateway can
    /// also read it to refuse or admit some requests without asking (its groups'
    /// `on_backend_error`). One atomic load.
    pub fn unreachable(&self) -> bool {
        self.inner.stale(self.now_ms())
    }

    /// Send every unacknowledged count to the server now and refresh the fleet view of every
    /// key checked since the last sync. On failure nothing is lost: the counts are sent again
    /// by the next sync, and applied once.
    pub fn sync_now(&self) -> Result<()> {
        self.inner.sync()
    }

    /// Count a request against the fleet-wide limits, deciding locally (module docs).
    pub fn check(&self, key: &[u8], limits: &Limits, cost: u32) -> Result<Decision> {
        self.check_at(key, limits, cost, self.now_ms())
    }

    /// [`HybridStore::check`] at an explicit time.
    pub fn check_at(
        &self,
        key: &[u8],
        limits: &Limits,
        cost: u32,
        now_ms: u64,
    ) -> Result<Decision> {
        check_request(key, limits, cost)?;
        self.inner.check(key, limits, cost, cost, now_ms)
    }

    /// What a request of cost 1 would get now, without counting it.
    pub fn peek(&self, key: &[u8], limits: &Limits) -> Result<Decision> {
        self.peek_at(key, limits, self.now_ms())
    }

    /// [`HybridStore::peek`] at an explicit time.
    pub fn peek_at(&self, key: &[u8], limits: &Limits, now_ms: u64) -> Result<Decision> {
        check_key(key)?;
        self.inner.check(key, limits, 0, 1, now_ms)
    }
}

impl Inner {
    fn shard(&self, key: &[u8]) -> &Mutex<HashMap<Vec<u8>, KeyState>> {
        let i = (self.hasher.hash_one(key) as usize) % SHARDS;
        #[expect(
            clippy::indexing_slicing,
            reason = "`i` is taken modulo SHARDS, the number of shards made at construction"
        )]
        &self.shards[i]
    }

    fn stale(&self, now_ms: u64) -> bool {
        let last = self.last_ok_ms.load(Ordering::Relaxed);
        now_ms.saturating_sub(last) > self.opts.stale_after.as_millis() as u64
    }

    /// The fleet's shape of window `i`: the sliding window of its limit, even for an exact
    /// window (the fleet part is counted in sub-windows; the node's own exact window stays
    /// exact). A sliding window's shape is the set's (`Limit::slide`: a metered window's
    /// counters are wider, as in the embedded store); only an exact window, which cannot be
    /// metered, gets one made from its limit.
    fn geometry(&self, limits: &Limits, i: usize) -> Result<Slide> {
        let from_limit = || {
            let l = limits.as_slice().get(i)?;
            Slide::new(l.limit(), l.window_ms(), self.b)
        };
        limits
            .slide(i, self.b)
            .or_else(from_limit)
            .ok_or(Error::InvalidOptions("sub_windows is out of range"))
    }

    fn check(
        &self,
        key: &[u8],
        limits: &Limits,
        cost: u32,
        view: u32,
        now_ms: u64,
    ) -> Result<Decision> {
        let stale = self.stale(now_ms);
        let closed = stale && self.opts.unreachable == Unreachable::FailClosed;
        let budget = !stale;
        let flush_ms = (self.opts.flush_interval.as_millis() as u64).max(1);
        let mut map = self.shard(key).lock();
        if !map.contains_key(key) {
            map.insert(key.to_vec(), KeyState::default());
        }
        let st = map
            .get_mut(key)
            .ok_or_else(|| bad_reply("lost key state"))?;
        let mut fleet = [WindowState::default(); MAX_WINDOWS];
        let mut geos: [Option<(Slide, u64)>; MAX_WINDOWS] = [None; MAX_WINDOWS];
        let mut fleet_fits = true;
        let mut over_budget = false;
        for (i, l) in limits.as_slice().iter().enumerate() {
            let geo = self.geometry(limits, i)?;
            let w = st.win(l.window_ms(), u64::from(geo.b) + 1, geo.g);
            w.dirty = true;
            let mut ws = w.state(&geo, view, now_ms);
            if let Some(g) = geos.get_mut(i) {
                *g = Some((geo, w.eff(&geo, now_ms)));
            }
            if cost > 0
                && budget
                && w.unsynced(now_ms / geo.g) + u64::from(cost) > u64::from(self.opts.batch)
            {
                over_budget = true;
                ws.wait_at_least(flush_ms);
            }
            fleet_fits &= ws.fits();
            if let Some(f) = fleet.get_mut(i) {
                *f = ws;
            }
        }
        let try_local = cost > 0 && fleet_fits && !over_budget && !closed;
        let local = self
            .local
            .check_at(key, limits, if try_local { cost } else { 0 }, now_ms)?;
        let admitted = try_local && local.allowed();
        if admitted {
            for ((l, g), f) in limits.as_slice().iter().zip(&geos).zip(fleet.iter_mut()) {
                let Some((geo, ne)) = g else { continue };
                let w = st.win(l.window_ms(), u64::from(geo.b) + 1, geo.g);
                // Counted where the embedded store would count it: the effective sub-window.
                add(&mut w.pending, *ne, u64::from(cost));
                // The fleet view after this request.
                *f = w.state(geo, 0, now_ms);
            }
        }
        drop(map);
        if over_budget {
            *self.wake_flag.lock() = true;
            self.wake.notify_one();
        }
        // Each window as the stricter of the fleet view and the local store.
        let mut ws = [WindowState::default(); MAX_WINDOWS];
        for (i, (f, lw)) in fleet.iter().zip(local.windows()).enumerate() {
            let local_fits = if try_local {
                lw.fits()
            } else {
                lw.used() + view <= lw.limit()
            };
            let mut w = *f;
            if !admitted && !local_fits {
                w.wait_at_least(lw.retry_after_ms().max(1));
            }
            w.used = w.used.max(lw.used());
            w.reset_ms = w.reset_ms.max(lw.reset_ms());
            if closed && cost > 0 {
                w.wait_at_least(flush_ms);
            }
            if let Some(slot) = ws.get_mut(i) {
                *slot = w;
            }
        }
        let allowed = if cost == 0 {
            ws.iter().take(limits.len()).all(|w| w.fits())
        } else {
            admitted
        };
        Ok(Decision::from_windows(allowed, ws, limits.len()))
    }

    fn run(&self) {
        loop {
            {
                let mut flag = self.wake_flag.lock();
                if !*flag && !self.stop.load(Ordering::SeqCst) {
                    self.wake.wait_for(&mut flag, self.opts.flush_interval);
                }
                *flag = false;
            }
            if self.stop.load(Ordering::SeqCst) {
                return;
            }
            // A failed sync keeps its counts; the next one retries them.
            let _ = self.sync();
        }
    }

    /// One sync: collect, send in pipelined chunks, apply the replies.
    fn sync(&self) -> Result<()> {
        let _one = self.syncing.lock();
        let now = self.local.now_ms();
        let msgs = self.collect(now);
        let mut result = Ok(());
        if msgs.is_empty() {
            // Nothing to send: still ask the server, so that "the last successful sync" means
            // the server answered.
            result = self
                .shared
                .pool()
                .with_retry(|c| ::redis::cmd("PING").query::<String>(c))
                .map(|_| ());
        }
        for chunk in msgs.chunks(self.opts.max_keys_per_flush) {
            match self.send(chunk, now) {
                Ok(replies) => self.apply(chunk, &replies),
                Err(e) => {
                    result = Err(e);
                    break;
                }
            }
        }
        match result {
            Ok(()) => {
                self.last_ok_ms.fetch_max(now, Ordering::Relaxed);
                self.syncs_ok.fetch_add(1, Ordering::Relaxed);
            }
            Err(_) => {
                self.syncs_failed.fetch_add(1, Ordering::Relaxed);
            }
        }
        result
    }

    /// Move pending counts into batches (one per window with something to send or to
    /// refresh) and forget idle windows.
    fn collect(&self, now: u64) -> Vec<Msg> {
        let mut msgs = Vec::new();
        for shard in &self.shards {
            let mut map = shard.lock();
            map.retain(|key, st| {
                st.wins.retain_mut(|w| {
                    let nn = now / w.g;
                    w.prune(nn);
                    if w.seq == 0 && live(&w.pending, nn, w.k) > 0 {
                        w.inflight = std::mem::take(&mut w.pending);
                        w.seq = self.seq.fetch_add(1, Ordering::Relaxed);
                    }
                    if w.seq != 0 || w.dirty {
                        msgs.push(Msg {
                            key: key.clone(),
                            window_ms: w.window_ms,
                            k: w.k,
                            g: w.g,
                            seq: w.seq,
                            counts: w.inflight.clone(),
                        });
                        w.dirty = false;
                        true
                    } else {
                        !w.is_idle(nn)
                    }
                });
                !st.wins.is_empty()
            });
        }
        msgs
    }

    fn send(&self, msgs: &[Msg], now: u64) -> Result<Vec<Value>> {
        let prefix = &self.shared.options().prefix;
        let mut pipe = ::redis::pipe();
        for m in msgs {
            let base = keys::base(prefix, &m.key);
            let mut seen = keys::hybrid_seen(&base);
            seen.push(b':');
            seen.extend_from_slice(self.node.as_bytes());
            let ttl = window_key_ttl(m.window_ms);
            let mut cmd = ::redis::cmd("EVALSHA");
            cmd.arg(self.flush.get_hash())
                .arg(2)
                .arg(keys::hybrid(&base, m.window_ms, m.g))
                .arg(seen)
                .arg(m.seq)
                .arg(now)
                .arg(m.k)
                .arg(m.g)
                .arg(ttl);
            for (n, c) in &m.counts {
                cmd.arg(*n).arg(*c);
            }
            pipe.add_command(cmd);
        }
        self.shared
            .pool()
            .with_retry(|c| match pipe.query::<Vec<Value>>(c) {
                // NOSCRIPT (a new or restarted server): load the script and send again; the batch
                // numbers make the second sending harmless.
                Err(e) if conn::is_noscript(&e) => {
                    self.flush.prepare_invoke().load(c)?;
                    pipe.query::<Vec<Value>>(c)
                }
                other => other,
            })
    }

    fn apply(&self, msgs: &[Msg], replies: &[Value]) {
        for (m, r) in msgs.iter().zip(replies) {
            let Ok(counts) = parse_counts(r) else {
                continue;
            };
            let mut map = self.shard(&m.key).lock();
            let Some(st) = map.get_mut(&m.key) else {
                continue;
            };
            if let Some(w) = st
                .wins
                .iter_mut()
                .find(|w| w.window_ms == m.window_ms && w.g == m.g)
            {
                w.remote = counts;
                if w.seq == m.seq {
                    w.inflight.clear();
                    w.seq = 0;
                }
            }
        }
    }
}

/// One window's batch for the server.
struct Msg {
    key: Vec<u8>,
    window_ms: u64,
    /// Live sub-windows, `B + 1`.
    k: u64,
    /// Sub-window length.
    g: u64,
    seq: u64,
    counts: Counts,
}

fn parse_counts(v: &Value) -> Result<Counts> {
    let a = array(Some(v))?;
    let mut out = Vec::with_capacity(a.len() / 2);
    for pair in a.chunks(2) {
        out.push((uint(pair.first())?, uint(pair.get(1))?));
    }
    Ok(out)
}

impl crate::backend::Backend for HybridStore {
    fn now_ms(&self) -> u64 {
        HybridStore::now_ms(self)
    }

    fn check_at(&self, key: &[u8], limits: &Limits, cost: u32, now_ms: u64) -> Result<Decision> {
        HybridStore::check_at(self, key, limits, cost, now_ms)
    }

    fn peek_at(&self, key: &[u8], limits: &Limits, now_ms: u64) -> Result<Decision> {
        HybridStore::peek_at(self, key, limits, now_ms)
    }

    // Reservations must settle once across the fleet and count exactly: the server's, one
    // round trip each (a failure is the caller's to handle, as for permits: nothing local
    // stands in for it).

    fn reserve_at(
        &self,
        key: &[u8],
        limits: &Limits,
        estimate: u32,
        ttl: std::time::Duration,
        now_ms: u64,
    ) -> Result<Reserved> {
        self.inner
            .shared
            .reserve_at(key, limits, estimate, ttl, now_ms)
    }

    fn settle_at(
        &self,
        key: &[u8],
        limits: &Limits,
        reservation: &Reservation,
        actual: u32,
        now_ms: u64,
    ) -> Result<Decision> {
        self.inner
            .shared
            .settle_at(key, limits, reservation, actual, now_ms)
    }

    fn begin_at(
        &self,
        scope: &[u8],
        key: &IdempotencyKey,
        fingerprint: &Fingerprint,
        now_ms: u64,
    ) -> Result<Begin> {
        self.inner.shared.begin_at(scope, key, fingerprint, now_ms)
    }

    fn complete_at(&self, lease: &Lease, response: &StoredResponse, now_ms: u64) -> Result<()> {
        self.inner.shared.complete_at(lease, response, now_ms)
    }

    fn abort(&self, lease: &Lease) -> Result<()> {
        self.inner.shared.abort(lease)
    }

    // Versions and permits must be exact across the fleet: the server's, never batched.

    fn version(&self, key: &[u8]) -> Result<Version> {
        self.inner.shared.version(key)
    }

    fn bump_version(&self, key: &[u8]) -> Result<Version> {
        self.inner.shared.bump_version(key)
    }

    fn bump_version_if(&self, key: &[u8], expected: &Version) -> Result<VersionBump> {
        self.inner.shared.bump_version_if(key, expected)
    }

    fn acquire_permit_at(
        &self,
        key: &[u8],
        cap: u32,
        lease_ms: u64,
        now_ms: u64,
    ) -> Result<Option<Permit>> {
        self.inner
            .shared
            .acquire_permit_at(key, cap, lease_ms, now_ms)
    }

    fn release_permit(&self, permit: &Permit) -> Result<bool> {
        self.inner.shared.release_permit(permit)
    }

    fn permits_held_at(&self, key: &[u8], now_ms: u64) -> Result<u32> {
        self.inner.shared.permits_held_at(key, now_ms)
    }
}
