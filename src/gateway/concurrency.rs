//! The per-token concurrency cap: how many requests of one token are in flight, counted by
//! the backend's permits (`crate::permit`), not in this process's memory.
//!
//! [`ConcurrencyLimiter`] is a thin facade over a [`Backend`]: a request takes a
//! [`ConcurrencyGuard`] (one permit of the token under the cap) and gives it back by dropping
//! it, whatever happens to the request (answered, failed, or its future dropped because the
//! client went away).
//!
//! * **Across a fleet**: on `fleet::RedisStore` or `fleet::HybridStore` the permits are on the
//!   server, so the cap holds for the token across every gateway of the fleet.
//! * **After a crash**: every permit has a deadline (the lease, [`DEFAULT_PERMIT_LEASE`]
//!   unless the gateway sets another). A request whose process died (kill -9, a crashed
//!   node, a release lost on the network) holds its slot until that deadline, never longer;
//!   a request running longer than the lease loses its slot at the deadline (the cap may then
//!   admit one more), so the lease should exceed the upstream's own timeout.
//! * **A cap change** applies to new requests at once (a lower cap refuses while as many
//!   permits as it allows are held, wherever they were taken); requests already in flight
//!   keep their permits.

use std::time::Duration;

use crate::{Backend, Permit};

/// The lease of a concurrency permit unless the gateway sets another: 60 s.
pub const DEFAULT_PERMIT_LEASE: Duration = Duration::from_secs(60);

/// A per-token in-flight cap over a backend's permits.
///
/// ```
/// use std::time::Duration;
/// use tollgate::gateway::ConcurrencyLimiter;
/// use tollgate::{Options, Store};
/// let store = Store::open_in_memory(Options::default())?;
/// let limiter = ConcurrencyLimiter::new(&store, 2, Duration::from_secs(60));
/// let a = limiter.try_acquire("tok")?.expect("1st");
/// let b = limiter.try_acquire("tok")?.expect("2nd");
/// assert!(limiter.try_acquire("tok")?.is_none()); // the 3rd is refused
/// assert!(limiter.try_acquire("other")?.is_some()); // another token has its own count
/// drop(a);
/// assert!(limiter.try_acquire("tok")?.is_some()); // released on drop
/// # drop(b);
/// # Ok::<(), tollgate::Error>(())
/// ```
#[derive(Clone, Copy)]
pub struct ConcurrencyLimiter<'a> {
    backend: &'a dyn Backend,
    cap: u32,
    lease: Duration,
}

impl std::fmt::Debug for ConcurrencyLimiter<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConcurrencyLimiter")
            .field("cap", &self.cap)
            .field("lease", &self.lease)
            .finish_non_exhaustive()
    }
}

impl<'a> ConcurrencyLimiter<'a> {
    /// A limiter allowing `cap` requests in flight per token, each holding its slot for at
    /// most `lease` if it is never released.
    pub fn new(backend: &'a dyn Backend, cap: u32, lease: Duration) -> ConcurrencyLimiter<'a> {
        ConcurrencyLimiter {
            backend,
            cap,
            lease,
        }
    }

    /// The cap per token.
    pub fn cap(&self) -> u32 {
        self.cap
    }

    /// How long an unreleased permit holds its slot.
    pub fn lease(&self) -> Duration {
        self.lease
    }

    /// Count one more request of `token` in flight, unless it already has the cap: `None`
    /// then (the gateway answers 429 "Too many concurrent connections."). An error is the
    /// backend's (unreachable, full, or a cap the embedded store cannot hold).
    pub fn try_acquire(&self, token: &str) -> crate::Result<Option<ConcurrencyGuard<'a>>> {
        let lease_ms = u64::try_from(self.lease.as_millis()).unwrap_or(u64::MAX);
        let permit = self
            .backend
            .acquire_permit(token.as_bytes(), self.cap, lease_ms.max(1))?;
        Ok(permit.map(|permit| ConcurrencyGuard {
            backend: self.backend,
            permit,
        }))
    }

    /// Requests of `token` in flight now.
    pub fn in_flight(&self, token: &str) -> crate::Result<u32> {
        self.backend.permits_held(token.as_bytes())
    }
}

/// One request in flight; dropping it releases the slot (a failed release is left to the
/// permit's deadline).
pub struct ConcurrencyGuard<'a> {
    backend: &'a dyn Backend,
    permit: Permit,
}

impl ConcurrencyGuard<'_> {
    /// Requests of the token in flight when this one was admitted, this one included.
    pub fn in_flight(&self) -> u32 {
        self.permit.held()
    }

    /// The permit behind the guard.
    pub fn permit(&self) -> &Permit {
        &self.permit
    }
}

impl std::fmt::Debug for ConcurrencyGuard<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConcurrencyGuard")
            .field("permit", &self.permit)
            .finish_non_exhaustive()
    }
}

impl Drop for ConcurrencyGuard<'_> {
    fn drop(&mut self) {
        let _ = self.backend.release_permit(&self.permit);
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};

    use super::*;
    use crate::{ManualClock, Options, Store};

    const LEASE: Duration = Duration::from_secs(60);

    fn store() -> Store {
        Store::open_in_memory(Options::default().compactor(false)).unwrap()
    }

    #[test]
    fn cap_per_token_and_release_on_drop() {
        let s = store();
        let l = ConcurrencyLimiter::new(&s, 3, LEASE);
        let guards: Vec<_> = (0..3)
            .map(|_| l.try_acquire("a").unwrap().unwrap())
            .collect();
        assert_eq!(guards[2].in_flight(), 3);
        assert!(l.try_acquire("a").unwrap().is_none());
        assert_eq!(l.in_flight("a").unwrap(), 3);
        let b = l.try_acquire("b").unwrap().unwrap();
        drop(guards);
        assert_eq!(l.in_flight("a").unwrap(), 0);
        assert!(l.try_acquire("a").unwrap().is_some());
        drop(b);
        assert_eq!(l.in_flight("b").unwrap(), 0);
    }

    #[test]
    fn a_guard_never_dropped_frees_its_slot_at_the_lease() {
        let clock = ManualClock::new(1_700_000_000_000);
        let s = Store::open_in_memory(Options::default().compactor(false).clock(clock.clone()))
            .unwrap();
        let l = ConcurrencyLimiter::new(&s, 2, LEASE);
        // A "crash": guards that are never dropped.
        std::mem::forget(l.try_acquire("tok").unwrap().unwrap());
        std::mem::forget(l.try_acquire("tok").unwrap().unwrap());
        assert!(l.try_acquire("tok").unwrap().is_none());
        clock.advance_ms(LEASE.as_millis() as u64 - 1);
        assert!(l.try_acquire("tok").unwrap().is_none());
        clock.advance_ms(1);
        assert_eq!(l.in_flight("tok").unwrap(), 0);
        let _a = l.try_acquire("tok").unwrap().unwrap();
        let _b = l.try_acquire("tok").unwrap().unwrap();
        assert!(l.try_acquire("tok").unwrap().is_none());
    }

    #[test]
    fn a_new_cap_applies_to_new_requests() {
        let s = store();
        let g = ConcurrencyLimiter::new(&s, 1, LEASE)
            .try_acquire("t")
            .unwrap();
        assert!(g.is_some());
        let two = ConcurrencyLimiter::new(&s, 2, LEASE);
        let g2 = two.try_acquire("t").unwrap().unwrap();
        assert!(two.try_acquire("t").unwrap().is_none());
        drop(g);
        let one = ConcurrencyLimiter::new(&s, 1, LEASE);
        // A free place under the new cap, but the permit taken under the old one still runs:
        // the cap of 1 is reached.
        assert!(one.try_acquire("t").unwrap().is_none());
        drop(g2);
        let g3 = one.try_acquire("t").unwrap();
        assert!(g3.is_some());
        drop(g3);
        assert!(ConcurrencyLimiter::new(&s, 0, LEASE)
            .try_acquire("t")
            .unwrap()
            .is_none());
        assert!(ConcurrencyLimiter::new(&s, crate::MAX_PERMITS + 1, LEASE)
            .try_acquire("t")
            .is_err());
    }

    #[test]
    fn threads_never_exceed_the_cap() {
        let s = store();
        let l = ConcurrencyLimiter::new(&s, 4, LEASE);
        let (now, max) = (AtomicU32::new(0), AtomicU32::new(0));
        std::thread::scope(|sc| {
            for _ in 0..8 {
                sc.spawn(|| {
                    for _ in 0..2_000 {
                        if let Some(g) = l.try_acquire("hot").unwrap() {
                            let n = now.fetch_add(1, Ordering::SeqCst) + 1;
                            max.fetch_max(n, Ordering::Relaxed);
                            now.fetch_sub(1, Ordering::SeqCst);
                            drop(g);
                        }
                    }
                });
            }
        });
        assert!(max.load(Ordering::Relaxed) <= 4);
        assert_eq!(l.in_flight("hot").unwrap(), 0);
    }
}
