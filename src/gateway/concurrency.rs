//! The per-token concurrency cap: how many requests of one token are in flight.
//!
//! An in-memory gauge, sharded over 64 `parking_lot` mutexes by a hash of the token. A request
//! takes a [`ConcurrencyGuard`] with [`ConcurrencyLimiter::try_acquire`] and gives it back by
//! dropping it, whatever happens to the request (answered, failed, or its future dropped
//! because the client went away).
//!
//! **After a crash or a restart no lease of the dead process is counted**: the gauge lives in
//! the process's memory only, so a new process starts with every token at zero. This is on
//! purpose: a count of requests in flight is only meaningful while the process that runs them
//! lives, and a persisted gauge would have to guess which leases died with it.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use parking_lot::Mutex;

const SHARDS: usize = 64;

struct Inner {
    shards: Vec<Mutex<HashMap<Box<str>, u32>>>,
    hasher: ahash::RandomState,
    cap: AtomicU32,
}

impl Inner {
    fn shard(&self, token: &str) -> Option<&Mutex<HashMap<Box<str>, u32>>> {
        let h = self.hasher.hash_one(token);
        self.shards.get((h >> 58) as usize % SHARDS)
    }
}

/// A per-token in-flight gauge with a cap. Cheap to clone: clones share the gauge.
///
/// ```
/// use tollgate::gateway::ConcurrencyLimiter;
/// let limiter = ConcurrencyLimiter::new(2);
/// let a = limiter.try_acquire("tok").expect("1st");
/// let b = limiter.try_acquire("tok").expect("2nd");
/// assert!(limiter.try_acquire("tok").is_none()); // the 3rd is refused
/// assert!(limiter.try_acquire("other").is_some()); // another token has its own count
/// drop(a);
/// assert!(limiter.try_acquire("tok").is_some()); // released on drop
/// # drop(b);
/// ```
#[derive(Clone)]
pub struct ConcurrencyLimiter {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for ConcurrencyLimiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConcurrencyLimiter")
            .field("cap", &self.cap())
            .finish_non_exhaustive()
    }
}

impl ConcurrencyLimiter {
    /// A limiter allowing `cap` requests in flight per token (`u32::MAX`: no cap). Every token
    /// starts at zero.
    pub fn new(cap: u32) -> ConcurrencyLimiter {
        ConcurrencyLimiter {
            inner: Arc::new(Inner {
                shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
                hasher: ahash::RandomState::new(),
                cap: AtomicU32::new(cap),
            }),
        }
    }

    /// The cap per token.
    pub fn cap(&self) -> u32 {
        self.inner.cap.load(Ordering::Relaxed)
    }

    /// Change the cap (a policy reload). Requests in flight keep their guards; a lower cap
    /// refuses new requests until enough of them finish.
    pub fn set_cap(&self, cap: u32) {
        self.inner.cap.store(cap, Ordering::Relaxed);
    }

    /// Count one more request of `token` in flight, unless it already has the cap: `None`
    /// then (the gateway answers 429 "Too many concurrent connections.").
    pub fn try_acquire(&self, token: &str) -> Option<ConcurrencyGuard> {
        let cap = self.cap();
        let shard = self.inner.shard(token)?;
        let mut map = shard.lock();
        match map.get_mut(token) {
            Some(n) if *n >= cap => return None,
            Some(n) => *n += 1,
            None if cap == 0 => return None,
            None => {
                map.insert(token.into(), 1);
            }
        }
        drop(map);
        Some(ConcurrencyGuard {
            inner: Arc::clone(&self.inner),
            token: token.into(),
        })
    }

    /// Requests of `token` in flight now.
    pub fn in_flight(&self, token: &str) -> u32 {
        self.inner
            .shard(token)
            .and_then(|s| s.lock().get(token).copied())
            .unwrap_or(0)
    }

    /// Requests in flight now, all tokens together.
    pub fn total_in_flight(&self) -> u64 {
        self.inner
            .shards
            .iter()
            .map(|s| s.lock().values().map(|&n| u64::from(n)).sum::<u64>())
            .sum()
    }
}

/// One request in flight; dropping it releases the slot.
pub struct ConcurrencyGuard {
    inner: Arc<Inner>,
    token: Box<str>,
}

impl std::fmt::Debug for ConcurrencyGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConcurrencyGuard").finish_non_exhaustive()
    }
}

impl Drop for ConcurrencyGuard {
    fn drop(&mut self) {
        if let Some(shard) = self.inner.shard(&self.token) {
            let mut map = shard.lock();
            if let Some(n) = map.get_mut(&*self.token) {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    // Idle tokens take no memory.
                    map.remove(&*self.token);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cap_per_token_and_release_on_drop() {
        let l = ConcurrencyLimiter::new(3);
        let guards: Vec<_> = (0..3).map(|_| l.try_acquire("a").unwrap()).collect();
        assert!(l.try_acquire("a").is_none());
        assert_eq!(l.in_flight("a"), 3);
        let b = l.try_acquire("b").unwrap();
        assert_eq!(l.total_in_flight(), 4);
        drop(guards);
        assert_eq!(l.in_flight("a"), 0);
        assert!(l.try_acquire("a").is_some());
        drop(b);
        assert_eq!(l.total_in_flight(), 0);
        // Nothing is kept for idle tokens.
        assert!(l.inner.shards.iter().all(|s| s.lock().is_empty()));
    }

    #[test]
    fn a_new_limiter_starts_at_zero() {
        // A "crash": guards that are never dropped, then a new limiter (a new process).
        let old = ConcurrencyLimiter::new(2);
        std::mem::forget(old.try_acquire("tok").unwrap());
        std::mem::forget(old.try_acquire("tok").unwrap());
        assert!(old.try_acquire("tok").is_none());
        let restarted = ConcurrencyLimiter::new(2);
        assert_eq!(restarted.in_flight("tok"), 0);
        assert_eq!(restarted.total_in_flight(), 0);
        let _a = restarted.try_acquire("tok").unwrap();
        let _b = restarted.try_acquire("tok").unwrap();
        assert!(restarted.try_acquire("tok").is_none());
    }

    #[test]
    fn set_cap_applies_to_new_requests() {
        let l = ConcurrencyLimiter::new(1);
        let g = l.try_acquire("t").unwrap();
        assert!(l.try_acquire("t").is_none());
        l.set_cap(2);
        let g2 = l.try_acquire("t").unwrap();
        l.set_cap(1);
        drop(g);
        assert!(l.try_acquire("t").is_none()); // still one in flight, cap 1
        drop(g2);
        assert!(l.try_acquire("t").is_some());
        let zero = ConcurrencyLimiter::new(0);
        assert!(zero.try_acquire("t").is_none());
    }

    #[test]
    fn threads_never_exceed_the_cap() {
        let l = ConcurrencyLimiter::new(4);
        let max = Arc::new(AtomicU32::new(0));
        std::thread::scope(|s| {
            for _ in 0..8 {
                let l = l.clone();
                let max = Arc::clone(&max);
                s.spawn(move || {
                    for _ in 0..2_000 {
                        if let Some(g) = l.try_acquire("hot") {
                            max.fetch_max(l.in_flight("hot"), Ordering::Relaxed);
                            drop(g);
                        }
                    }
                });
            }
        });
        assert!(max.load(Ordering::Relaxed) <= 4);
        assert_eq!(l.in_flight("hot"), 0);
    }
}
