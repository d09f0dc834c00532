//! Reserve and settle (`crate::debit`) on the store's entries.
//!
//! A reservation is a check that remembers where it counted: [`Core::count`] says which
//! sub-window each window took the estimate in, and the reservation keeps those numbers. Its
//! guard is an idempotency record in flight under [`GUARD_SCOPE`], leased until the
//! reservation expires; a settle first claims that record (one compare-and-swap of its state
//! word, `records.rs`), so of two settles of one reservation exactly one goes on. Then:
//!
//! * a cost below the estimate is taken back from the sub-windows the estimate was counted in,
//!   with the take-back a refused multi-window check uses (`window::sliding::take_back`): a
//!   sub-window that has aged out has nothing left to take, and neither does a window whose
//!   entry is moving at that instant (its copy keeps the count: stricter, never looser);
//! * a cost above it is counted in the current sub-window of every window with the check's own
//!   `add`, judged against the counters' capacity (`2^bits - 1`) instead of the limit: the
//!   overdraft. What does not fit under the capacity is not counted.
//!
//! The claim comes first so that nothing is ever counted twice; a process killed between the
//! claim and the counting loses that one settle's adjustment (the estimate stays counted).

use std::sync::atomic::AtomicU64;

use super::core::Core;
use super::entry::{sliding_window, Place};
use crate::backend::check_reserve;
use crate::debit::{Reservation, Reserved};
use crate::decision::Decision;
use crate::error::{Error, Result};
use crate::idempotency::{Begin, Lease};
use crate::limit::{Limits, MAX_WINDOWS};
use crate::window::cell::WordCell;
use crate::window::sliding::{self, Added, Slide, Window};

impl Core {
    /// Count `estimate` in every window of `key`, all or nothing, and open a reservation of
    /// it until `now_ms + ttl_ms`. An estimate of 0 is admitted when a request of cost 1
    /// would be, and counts nothing.
    pub(crate) fn reserve(
        &self,
        key: &[u8],
        limits: &Limits,
        estimate: u32,
        ttl_ms: u64,
        now_ms: u64,
    ) -> Result<Reserved> {
        check_reserve(key, limits, estimate)?;
        let mut decision = Decision::BLANK;
        let mut added = [None; MAX_WINDOWS];
        if estimate == 0 {
            decision = self.peek(key, limits, now_ms)?;
        } else {
            self.count(key, limits, estimate, now_ms, &mut decision, &mut added)?;
        }
        if !decision.allowed() {
            return Ok(Reserved {
                decision,
                reservation: None,
            });
        }
        let mut r = Reservation::new(key, limits, estimate, now_ms, ttl_ms, &added);
        let guard_key = r.guard_key()?;
        let began =
            self.idem_begin_leased(guard_key.as_bytes(), &r.guard_fingerprint(), now_ms, ttl_ms);
        match began {
            Ok(Begin::Started(lease)) => {
                r.fence = lease.fence();
                Ok(Reserved {
                    decision,
                    reservation: Some(r),
                })
            }
            other => {
                // No guard, no reservation: the estimate goes back.
                self.give_back(key, limits, &added, estimate);
                match other {
                    Err(e) => Err(e),
                    Ok(_) => Err(Error::InvalidReservation("a reservation id is in use")),
                }
            }
        }
    }

    /// Turn reservation `r`'s estimate into `actual`; the state after it (what a request of
    /// cost 1 would get).
    pub(crate) fn settle_reservation(
        &self,
        key: &[u8],
        limits: &Limits,
        r: &Reservation,
        actual: u32,
        now_ms: u64,
    ) -> Result<Decision> {
        r.check_settle(key, limits, now_ms)?;
        self.saw(now_ms);
        let guard_key = r.guard_key()?;
        let lease = Lease {
            key: guard_key.as_bytes().to_vec(),
            fence: r.fence,
            fingerprint: r.guard_fingerprint(),
            deadline_ms: r.expires_ms,
        };
        match self.idem_abort(&lease) {
            Ok(()) => {}
            Err(Error::LeaseLost { .. } | Error::AlreadyCompleted) => {
                return Err(Error::ReservationSettled)
            }
            Err(e) => return Err(e),
        }
        if actual < r.estimate {
            let subs = r.subs.map(|m| (m != u64::MAX).then_some(m));
            self.give_back(key, limits, &subs, r.estimate - actual);
        } else if actual > r.estimate {
            self.overdraw(key, limits, actual - r.estimate, now_ms)?;
        }
        self.peek(key, limits, now_ms)
    }

    /// Take `units` back from the sub-window each window counted them in (`subs[i]`).
    fn give_back(
        &self,
        key: &[u8],
        limits: &Limits,
        subs: &[Option<u64>; MAX_WINDOWS],
        units: u32,
    ) {
        let hash = self.hasher.hash_one(key);
        let mut guard = crossbeam_epoch::pin();
        let Some(line) = self.find(hash, key, &guard) else {
            return; // expired: nothing counted is left
        };
        let e = self.segs.entry(line);
        if let Some(at) = self.windows_at(&e, limits) {
            // An entry moving meanwhile holds the units in its new copy: given back there.
            let mut owed = self.undo(&e, &at, limits, subs, units);
            self.take_back_moved(hash, key, limits, &mut owed, units, &mut guard);
        }
    }

    /// Count `units` in the current sub-window of every window of `key`, past the limit, up
    /// to the counters' capacity.
    fn overdraw(&self, key: &[u8], limits: &Limits, units: u32, now_ms: u64) -> Result<()> {
        let hash = self.hasher.hash_one(key);
        let guard = crossbeam_epoch::pin();
        let shapes = limits.shapes(self.b);
        // Windows already charged: an entry that moves keeps their counts.
        let mut done = [false; MAX_WINDOWS];
        let mut spins = 0u32;
        loop {
            let line = match self.find(hash, key, &guard) {
                Some(line) => line,
                // Never `None` without `may_split`.
                None => match self.insert(hash, key, limits, &guard, now_ms, false)? {
                    Some(line) => line,
                    None => continue,
                },
            };
            let e = self.segs.entry(line);
            let Some(at) = self.windows_at(&e, limits) else {
                self.migrate(hash, line, key, Some(limits), Place::Home(hash), &guard)?;
                continue;
            };
            let mut moved = false;
            for (i, done) in done.iter_mut().enumerate().take(limits.len()) {
                if *done {
                    continue;
                }
                let (Some(geo), Some(cap)) = (shapes.get(i), shapes.get(i).and_then(capacity))
                else {
                    *done = true;
                    continue;
                };
                let Some(win) = sliding_window(&e, at.of(i), geo) else {
                    moved = true;
                    break;
                };
                if !overdraw_window(&win, &cap, now_ms, units) {
                    moved = true;
                    break;
                }
                *done = true;
            }
            if !moved {
                return Ok(());
            }
            spins += 1;
            AtomicU64::pause(spins);
        }
    }
}

/// The same window judged against its counters' capacity instead of its limit.
fn capacity(geo: &Slide) -> Option<Slide> {
    Slide::for_width(geo.c, geo.window_ms, geo.b)
}

/// Count `units` in the window at `now_ms`, judged against `cap` (its capacity): as much as
/// fits. `false` if the window is frozen (its entry is moving: look it up again).
fn overdraw_window(win: &Window<'_, AtomicU64>, cap: &Slide, now_ms: u64, units: u32) -> bool {
    let mut units = units;
    loop {
        match sliding::add(win, cap, now_ms, units) {
            Added::Yes { .. } => return true,
            Added::Refused { used, .. } => {
                let room = u64::from(cap.limit).saturating_sub(used);
                if room == 0 {
                    return true;
                }
                units = room as u32;
            }
            Added::Frozen => return false,
        }
    }
}
