//! Reserve and settle ([`crate::debit`]) on the server, for [`RedisStore`]: each one script,
//! one round trip, so that a reservation is exact across the fleet (the hybrid store forwards
//! both here too).
//!
//! * `reserve.lua` counts the estimate in the key's sliding windows as `check.lua` counts a
//!   cost (the same state, the same rule: `window.lua`, which both scripts start with) and,
//!   if admitted, writes the reservation's guard, `<base>:d:<id>` (`keys::guard`), with
//!   `SET NX`, expiring a little after the reservation ([`GC_SLACK_MS`] past its TTL, against
//!   clocks that disagree: the expiry a settle obeys is the reservation's own, checked by the
//!   caller first). The sub-window each window counted the estimate in comes back with the
//!   states and goes into the [`Reservation`].
//! * `debit.lua` claims the guard (it must hold the reservation's guard fingerprint; it is
//!   deleted) and only then gives back or overdraws, so that a second settle, from this node
//!   or another, finds no guard and counts nothing: [`Error::ReservationSettled`].
//!
//! Neither runs twice on a fresh connection when a pooled one turns out dead: a reserve that
//! ran before the connection died would count twice, a settle would find its guard gone.

use std::sync::LazyLock;
use std::time::Duration;

use ::redis::{Script, Value};

use super::conn::{self, array, bad_reply, int, uint};
use super::keys;
use super::store::{decide, slide_of, window_keys, windows_ttl, RedisStore, GC_SLACK_MS};
use crate::backend::check_reserve;
use crate::debit::{ttl_ms, Reservation, Reserved, DEFAULT_RESERVATION_TTL};
use crate::decision::Decision;
use crate::error::{Error, Result};
use crate::limit::{Limits, MAX_WINDOWS};

static RESERVE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(concat!(
        include_str!("window.lua"),
        include_str!("reserve.lua")
    ))
});
static DEBIT: LazyLock<Script> = LazyLock::new(|| {
    Script::new(concat!(
        include_str!("window.lua"),
        include_str!("debit.lua")
    ))
});

/// What the debit script does to each window.
const OP_NONE: &str = "0";
const OP_GIVE_BACK: &str = "1";
const OP_OVERDRAW: &str = "2";

/// The scripts' answer when the guard is in the way: taken (reserve) or gone (settle).
const GUARD_REFUSED: i64 = -1;

/// The keys of `key`'s windows, then the guard of reservation `id`.
fn script_keys(store: &RedisStore, key: &[u8], limits: &Limits, id: u128) -> Vec<Vec<u8>> {
    let prefix = &store.options().prefix;
    let mut k = window_keys(prefix, key, limits);
    k.push(keys::guard(&keys::base(prefix, key), id));
    k
}

/// The reply's window states, checked to be a script's success answer.
fn states(reply: &Value, limits: &Limits) -> Result<Option<Vec<Value>>> {
    let r = array(Some(reply))?;
    if int(r.first())? == GUARD_REFUSED {
        return Ok(None);
    }
    if r.len() != 2 + limits.len() {
        return Err(bad_reply("one state per window"));
    }
    Ok(Some(r.get(2..).unwrap_or(&[]).to_vec()))
}

impl RedisStore {
    fn run(&self, script: &Script, k: &[Vec<u8>], args: &[Vec<u8>]) -> Result<Value> {
        let k: Vec<&[u8]> = k.iter().map(Vec::as_slice).collect();
        let a: Vec<&[u8]> = args.iter().map(Vec::as_slice).collect();
        self.pool().with(|c| conn::eval(c, script, &k, &a))
    }

    /// Reserve `estimate` for a request whose cost is known only after it, fleet-wide: as
    /// [`Store::reserve`](crate::Store::reserve), open for
    /// [`DEFAULT_RESERVATION_TTL`].
    pub fn reserve(&self, key: &[u8], limits: &Limits, estimate: u32) -> Result<Reserved> {
        self.reserve_at(
            key,
            limits,
            estimate,
            DEFAULT_RESERVATION_TTL,
            self.now_ms(),
        )
    }

    /// [`RedisStore::reserve`] at an explicit time, open for `ttl` (1 ms to one day). One
    /// script: the estimate is counted in every window (all or nothing, exactly as a check of
    /// that cost) and the reservation's guard written, or neither. The [`Reservation`] it
    /// returns can be settled by any node of the fleet ([`RedisStore::settle_at`], or a hybrid
    /// node on the same server).
    pub fn reserve_at(
        &self,
        key: &[u8],
        limits: &Limits,
        estimate: u32,
        ttl: Duration,
        now_ms: u64,
    ) -> Result<Reserved> {
        // In the embedded store's order, so that a request wrong twice gets the same error.
        let ttl_ms = ttl_ms(ttl)?;
        check_reserve(key, limits, estimate)?;
        let b = self.sub_windows();
        // Drawn first: its id names the guard the script writes.
        let draft = Reservation::new(key, limits, estimate, now_ms, ttl_ms, &[None; MAX_WINDOWS]);
        let mut args: Vec<Vec<u8>> = vec![
            now_ms.to_string().into_bytes(),
            estimate.to_string().into_bytes(),
            windows_ttl(limits).to_string().into_bytes(),
            (ttl_ms + GC_SLACK_MS).to_string().into_bytes(),
            draft.guard_fingerprint().as_bytes().to_vec(),
        ];
        for (i, l) in limits.as_slice().iter().enumerate() {
            let geo = slide_of(limits, i, b)?;
            args.push(l.limit().to_string().into_bytes());
            args.push(geo.g.to_string().into_bytes());
            args.push(geo.b.to_string().into_bytes());
        }
        let k = script_keys(self, key, limits, draft.id);
        let reply = self.run(&RESERVE, &k, &args)?;
        let Some(st) = states(&reply, limits)? else {
            return Err(Error::InvalidReservation("a reservation id is in use"));
        };
        let view = estimate.max(1);
        let decision = decide(&reply, limits, b, estimate, view, now_ms)?;
        if !decision.allowed() {
            return Ok(Reserved {
                decision,
                reservation: None,
            });
        }
        // Each window's head after the count is the sub-window the estimate went to.
        let mut subs = [None; MAX_WINDOWS];
        if estimate > 0 {
            for (s, w) in subs.iter_mut().zip(&st) {
                *s = Some(uint(array(Some(w))?.get(1))?);
            }
        }
        Ok(Reserved {
            decision,
            reservation: Some(draft.counted_in(&subs)),
        })
    }

    /// Settle reservation `r` with the request's `actual` cost, fleet-wide: as
    /// [`Store::settle`](crate::Store::settle), at the store's clock.
    pub fn settle(
        &self,
        key: &[u8],
        limits: &Limits,
        r: &Reservation,
        actual: u32,
    ) -> Result<Decision> {
        self.settle_at(key, limits, r, actual, self.now_ms())
    }

    /// [`RedisStore::settle`] at an explicit time. One script: the guard is claimed first, so
    /// that of two settles of one reservation (any nodes) one counts and the other gets
    /// [`Error::ReservationSettled`]; then the unused part of the estimate goes back to the
    /// sub-windows it was counted in, or the extra is counted now, past the limit, up to the
    /// windows' counters' capacity. What a request of cost 1 would get after it.
    pub fn settle_at(
        &self,
        key: &[u8],
        limits: &Limits,
        r: &Reservation,
        actual: u32,
        now_ms: u64,
    ) -> Result<Decision> {
        r.check_settle(key, limits, now_ms)?;
        if limits.has_exact() {
            // No reservation is made for such a set (`check_reserve`).
            return Err(Error::ReservationMismatch);
        }
        let b = self.sub_windows();
        let (op, units) = match actual.cmp(&r.estimate) {
            std::cmp::Ordering::Less => (OP_GIVE_BACK, r.estimate - actual),
            std::cmp::Ordering::Greater => (OP_OVERDRAW, actual - r.estimate),
            std::cmp::Ordering::Equal => (OP_NONE, 0),
        };
        let mut args: Vec<Vec<u8>> = vec![
            now_ms.to_string().into_bytes(),
            windows_ttl(limits).to_string().into_bytes(),
            r.guard_fingerprint().as_bytes().to_vec(),
            op.as_bytes().to_vec(),
            units.to_string().into_bytes(),
        ];
        for i in 0..limits.len() {
            let geo = slide_of(limits, i, b)?;
            let capacity = (1u64 << geo.c) - 1;
            let m = r
                .sub_window(i)
                .map_or_else(|| "-1".into(), |m| m.to_string());
            args.push(geo.g.to_string().into_bytes());
            args.push(geo.b.to_string().into_bytes());
            args.push(capacity.to_string().into_bytes());
            args.push(m.into_bytes());
        }
        let k = script_keys(self, key, limits, r.id);
        let reply = self.run(&DEBIT, &k, &args)?;
        if states(&reply, limits)?.is_none() {
            return Err(Error::ReservationSettled);
        }
        decide(&reply, limits, b, 0, 1, now_ms)
    }
}
