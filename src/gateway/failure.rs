//! When the backend fails: each group's `on_backend_error`, and the deadline of a backend call.
//!
//! A shared backend (Redis / Valkey, `fleet::RedisStore`, or the server of a
//! `fleet::HybridStore`) can be down, or slow past the deadline (`backend_timeout`, applied as
//! `RedisOptions::deadline` when the store is opened). What a request then gets is its group's
//! choice:
//!
//! * [`OnBackendError::FailClosed`] (the default): 503 with `Retry-After: 1`. Nothing unchecked
//!   reaches the upstream.
//! * [`OnBackendError::FailOpen`]: the request goes on unchecked: no rate check, and no
//!   idempotency (a retry may run again). The response says so (`Tollgate-Degraded:
//!   fail-open`), and the gateway counts and hands each such request to a hook
//!   ([`FailureLog`]), so that an operator sees it.
//! * [`OnBackendError::LocalOnly`]: decided on this node alone, with the gateway's
//!   [`Fallback`]: a hybrid node's own decision (its embedded store and its last fleet view)
//!   and its embedded store's idempotency records; for a shared node, an embedded store of its
//!   own. Each node then admits up to the limit (N nodes: N times the limit), and a retry
//!   landing on another node is not recognised. `Tollgate-Degraded: local-only`. Without a
//!   fallback (`Gateway::new`), a local-only group answers as fail-closed.
//!
//! Only an unreachable or failing *server* does this (`Error::BackendUnavailable`,
//! `Error::Backend`); the embedded store's own errors (full, I/O) keep their answers (503,
//! 500). A request that met a failed server does not ask it again: its later steps go straight
//! to the mode, so one request waits at most one deadline. A hybrid node whose server has not
//! answered a sync for its grace period ([`HybridStore::unreachable`]) is down for every
//! request, without waiting at all.
//!
//! [`HybridStore::unreachable`]: crate::fleet::HybridStore::unreachable

use std::fmt;
use std::time::Duration;

use http::HeaderName;
use toml::Spanned;

use super::config::{Locator, PolicyError};

/// `Tollgate-Degraded: fail-open` (or `local-only`, `fail-closed`): the response of a request
/// that met a failed backend, and what was done about it.
pub const TOLLGATE_DEGRADED: HeaderName = HeaderName::from_static("tollgate-degraded");

/// The default deadline of one backend call (`backend_timeout`): 250 ms. A healthy server
/// answers within a millisecond in one data centre; a quarter second keeps an outage from
/// holding requests long, and a loaded server from tripping the failure mode.
pub const DEFAULT_BACKEND_TIMEOUT: Duration = Duration::from_millis(250);

/// The longest `backend_timeout` accepted: 60 s.
pub const MAX_BACKEND_TIMEOUT: Duration = Duration::from_secs(60);

/// What a group does when the backend fails (`on_backend_error`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Hash)]
pub enum OnBackendError {
    /// `"fail-open"`: let the request through unchecked, and say so.
    FailOpen,
    /// `"fail-closed"` (the default): 503 with `Retry-After`.
    #[default]
    FailClosed,
    /// `"local-only"`: decide on this node alone (its [`Fallback`]).
    LocalOnly,
}

impl OnBackendError {
    /// The name in a policy file and in `Tollgate-Degraded`.
    pub fn as_str(self) -> &'static str {
        match self {
            OnBackendError::FailOpen => "fail-open",
            OnBackendError::FailClosed => "fail-closed",
            OnBackendError::LocalOnly => "local-only",
        }
    }

    pub(crate) fn from_raw(
        raw: &Spanned<String>,
        loc: &Locator<'_>,
    ) -> Result<OnBackendError, PolicyError> {
        match raw.get_ref().as_str() {
            "fail-open" => Ok(OnBackendError::FailOpen),
            "fail-closed" => Ok(OnBackendError::FailClosed),
            "local-only" => Ok(OnBackendError::LocalOnly),
            other => Err(loc.invalid(
                raw.span(),
                format!(
                    "unknown on_backend_error {other:?}: expected \"fail-open\", \"fail-closed\" or \"local-only\""
                ),
            )),
        }
    }
}

impl fmt::Display for OnBackendError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `backend_timeout`: a whole number of milliseconds (`"250ms"`) or seconds (`"2s"`), 1 ms to
/// [`MAX_BACKEND_TIMEOUT`].
pub(crate) fn parse_timeout(
    raw: &Spanned<String>,
    loc: &Locator<'_>,
) -> Result<Duration, PolicyError> {
    let s = raw.get_ref().trim();
    let bad = |why: &str| {
        loc.invalid(
            raw.span(),
            format!("invalid backend_timeout {:?}: {why}", raw.get_ref()),
        )
    };
    let (num, unit_ms) = if let Some(n) = s.strip_suffix("ms") {
        (n, 1)
    } else if let Some(n) = s.strip_suffix('s') {
        (n, 1000)
    } else {
        return Err(bad(
            "expected a whole number of milliseconds or seconds (\"250ms\", \"2s\")",
        ));
    };
    let n: u64 = num
        .parse()
        .map_err(|_| bad("expected a whole number before the unit"))?;
    let d = Duration::from_millis(n.saturating_mul(unit_ms));
    if d.is_zero() || d > MAX_BACKEND_TIMEOUT {
        return Err(bad("expected 1 ms to 60 s"));
    }
    Ok(d)
}

#[cfg(feature = "tower")]
pub use serve::{BackendFailure, FailureLog, Fallback};
#[cfg(feature = "tower")]
pub(crate) use serve::{Calls, Outcome};

/// The middleware's side: the fallback, the log, and the calls of one request.
#[cfg(feature = "tower")]
mod serve {
    use std::collections::HashMap;
    use std::fmt;
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::Arc;

    use parking_lot::RwLock;

    use super::super::metrics;
    use super::super::{ConcurrencyGuard, ConcurrencyLimiter};
    use super::OnBackendError;
    use crate::debit::Reserved;
    use crate::{Backend, Begin, Decision, Error, Fingerprint, IdempotencyKey, Limits, Store};

    /// Where `local-only` groups decide when the server fails: an embedded store of this node,
    /// and (for a hybrid node) the node itself. Give it to `Gateway::with_fallback`.
    #[derive(Clone)]
    pub struct Fallback {
        local: Store,
        #[cfg(feature = "redis")]
        hybrid: Option<crate::fleet::HybridStore>,
    }

    impl fmt::Debug for Fallback {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.debug_struct("Fallback")
                .field("hybrid", &self.is_hybrid())
                .finish_non_exhaustive()
        }
    }

    impl Fallback {
        /// For a shared node (`fleet::RedisStore`): local-only groups count on `store` (an
        /// in-memory one is enough: it matters only while the server is away) and keep their
        /// idempotency records there.
        pub fn local(store: Store) -> Fallback {
            Fallback {
                local: store,
                #[cfg(feature = "redis")]
                hybrid: None,
            }
        }

        /// For a hybrid node: local-only groups take the node's own decision (its embedded
        /// store and its last view of the fleet) and keep their idempotency records in its
        /// embedded store; and the gateway knows the server is down, without asking it, once
        /// the node's syncs have failed for its grace period ([`HybridStore::unreachable`]).
        /// Leave the node's `Unreachable` policy at `FailOpen` (the default) so that the
        /// groups' `on_backend_error` decide.
        ///
        /// [`HybridStore::unreachable`]: crate::fleet::HybridStore::unreachable
        #[cfg(feature = "redis")]
        pub fn hybrid(node: &crate::fleet::HybridStore) -> Fallback {
            Fallback {
                local: node.local().clone(),
                hybrid: Some(node.clone()),
            }
        }

        /// The embedded store of local-only answers.
        pub fn store(&self) -> &Store {
            &self.local
        }

        fn is_hybrid(&self) -> bool {
            #[cfg(feature = "redis")]
            {
                self.hybrid.is_some()
            }
            #[cfg(not(feature = "redis"))]
            {
                false
            }
        }

        /// Whether the node knows the server is down without asking it.
        fn unreachable(&self) -> bool {
            #[cfg(feature = "redis")]
            {
                self.hybrid.as_ref().is_some_and(|h| h.unreachable())
            }
            #[cfg(not(feature = "redis"))]
            {
                false
            }
        }
    }

    /// One request that met a failed backend, as a [`FailureLog`] hook sees it.
    #[derive(Debug, Clone, Copy)]
    pub struct BackendFailure<'a> {
        pub(crate) group: Option<&'a str>,
        pub(crate) operation: &'static str,
        pub(crate) applied: OnBackendError,
        pub(crate) reason: &'a str,
    }

    impl BackendFailure<'_> {
        /// The request's group (`None`: it matched no group).
        pub fn group(&self) -> Option<&str> {
            self.group
        }

        /// The call that failed: `"permit"`, `"begin"`, `"check"` or `"reserve"`.
        pub fn operation(&self) -> &'static str {
            self.operation
        }

        /// What was done: the group's `on_backend_error` (fail-closed for a local-only group
        /// of a gateway without a fallback).
        pub fn applied(&self) -> OnBackendError {
            self.applied
        }

        /// Why: the backend's error, or why a hybrid node counts its server as unreachable.
        pub fn reason(&self) -> &str {
            self.reason
        }
    }

    type Hook = Arc<dyn Fn(&BackendFailure<'_>) + Send + Sync>;

    /// Counts by (group, what was done).
    type Counts = HashMap<(Option<Box<str>>, OnBackendError), AtomicU64>;

    /// The requests that met a failed backend: counts by what was done, and an optional hook
    /// (the crate logs nothing itself). `Gateway::failures()`.
    #[derive(Default)]
    pub struct FailureLog {
        counts: RwLock<Counts>,
        hook: RwLock<Option<Hook>>,
    }

    impl fmt::Debug for FailureLog {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.debug_struct("FailureLog")
                .field("total", &self.total())
                .field("hook", &self.hook.read().is_some())
                .finish_non_exhaustive()
        }
    }

    impl FailureLog {
        /// An empty log.
        pub fn new() -> FailureLog {
            FailureLog::default()
        }

        /// Requests that met a failed backend, every group and mode together.
        pub fn total(&self) -> u64 {
            self.counts
                .read()
                .values()
                .map(|n| n.load(Ordering::Relaxed))
                .sum()
        }

        /// Requests of `group` (`None`: of no group) answered with `applied`.
        pub fn count(&self, group: Option<&str>, applied: OnBackendError) -> u64 {
            self.counts
                .read()
                .get(&(group.map(Box::from), applied))
                .map_or(0, |n| n.load(Ordering::Relaxed))
        }

        /// Call `hook` on every request that meets a failed backend from now on (replacing any
        /// hook set before). It runs on the request's task: keep it quick.
        pub fn set_hook(&self, hook: impl Fn(&BackendFailure<'_>) + Send + Sync + 'static) {
            *self.hook.write() = Some(Arc::new(hook));
        }

        /// Remove the hook.
        pub fn clear_hook(&self) {
            *self.hook.write() = None;
        }

        fn record(&self, event: &BackendFailure<'_>) {
            let key = (event.group.map(Box::from), event.applied);
            let counted = self
                .counts
                .read()
                .get(&key)
                .map(|n| n.fetch_add(1, Ordering::Relaxed))
                .is_some();
            if !counted {
                self.counts
                    .write()
                    .entry(key)
                    .or_default()
                    .fetch_add(1, Ordering::Relaxed);
            }
            let hook = self.hook.read().clone();
            if let Some(hook) = hook {
                hook(event);
            }
        }
    }

    /// Whether `e` is the server failing (the failure mode applies), not the embedded store.
    fn is_outage(e: &Error) -> bool {
        matches!(e, Error::BackendUnavailable { .. } | Error::Backend { .. })
    }

    /// What a backend call of a request came to.
    pub(crate) enum Outcome<T> {
        /// Answered (by the backend, or locally for a local-only group).
        Done(T),
        /// Fail-open: go on without it.
        Admit,
        /// Fail-closed: 503.
        Refuse,
        /// The embedded store failed (not an outage): its usual answer.
        Failed(Error),
    }

    impl<T> Outcome<T> {
        /// The same outcome with `f` applied to its answer.
        pub(crate) fn map<U>(self, f: impl FnOnce(T) -> U) -> Outcome<U> {
            match self {
                Outcome::Done(t) => Outcome::Done(f(t)),
                Outcome::Admit => Outcome::Admit,
                Outcome::Refuse => Outcome::Refuse,
                Outcome::Failed(e) => Outcome::Failed(e),
            }
        }
    }

    /// The backend calls of one request, under its group's failure mode.
    pub(crate) struct Calls<'a> {
        main: &'a dyn Backend,
        fallback: Option<&'a Fallback>,
        mode: OnBackendError,
        log: &'a FailureLog,
        group: Option<&'a str>,
        /// What this request does since it met a failed server.
        degraded: Option<OnBackendError>,
    }

    impl<'a> Calls<'a> {
        pub(crate) fn new(
            main: &'a dyn Backend,
            fallback: Option<&'a Fallback>,
            mode: OnBackendError,
            log: &'a FailureLog,
            group: Option<&'a str>,
        ) -> Calls<'a> {
            Calls {
                main,
                fallback,
                mode,
                log,
                group,
                degraded: None,
            }
        }

        /// What this request does since it met a failed server (`None`: it has not).
        pub(crate) fn degraded(&self) -> Option<OnBackendError> {
            self.degraded
        }

        /// Where this request's peeks (the headers of a response without a decision) go:
        /// nowhere after fail-open, the local store after local-only on a shared node.
        pub(crate) fn peeks(&self) -> Option<&'a dyn Backend> {
            match (self.degraded, self.fallback) {
                (Some(OnBackendError::FailOpen | OnBackendError::FailClosed), _) => None,
                (Some(OnBackendError::LocalOnly), Some(f)) if !f.is_hybrid() => Some(&f.local),
                _ => Some(self.main),
            }
        }

        /// The request met a failed server: record it, and decide what it does from now on.
        fn fail(&mut self, operation: &'static str, reason: &str) -> OnBackendError {
            let applied = match (self.mode, self.fallback) {
                (OnBackendError::LocalOnly, None) => OnBackendError::FailClosed,
                (mode, _) => mode,
            };
            self.degraded = Some(applied);
            metrics::backend_failure(self.group, applied.as_str());
            self.log.record(&BackendFailure {
                group: self.group,
                operation,
                applied,
                reason,
            });
            applied
        }

        /// Before asking the server: has this request (or a hybrid node) already found it
        /// down? Then what to do instead.
        fn known_down(&mut self, operation: &'static str) -> Option<OnBackendError> {
            if self.degraded.is_none() && self.fallback.is_some_and(|f| f.unreachable()) {
                self.fail(
                    operation,
                    "the hybrid node's server has not answered a sync for its grace period",
                );
            }
            self.degraded
        }

        /// One backend call of operation `op` under the failure mode: `on_main` on the
        /// backend; when the server fails (now or earlier in this request), fail-open admits
        /// without it, local-only makes `on_fallback` (given the fallback and the backend: a
        /// hybrid node's own store is its backend's), fail-closed refuses.
        fn guarded<T>(
            &mut self,
            op: &'static str,
            on_main: impl FnOnce(&'a dyn Backend) -> crate::Result<T>,
            on_fallback: impl FnOnce(&'a Fallback, &'a dyn Backend) -> crate::Result<T>,
        ) -> Outcome<T> {
            let main = self.main;
            let mode = match self.known_down(op) {
                Some(mode) => mode,
                None => match metrics::call(op, || on_main(main)) {
                    Ok(v) => return Outcome::Done(v),
                    Err(e) if is_outage(&e) => self.fail(op, &e.to_string()),
                    Err(e) => return Outcome::Failed(e),
                },
            };
            match (mode, self.fallback) {
                (OnBackendError::FailOpen, _) => Outcome::Admit,
                (OnBackendError::LocalOnly, Some(f)) => {
                    match metrics::call(op, || on_fallback(f, main)) {
                        Ok(v) => Outcome::Done(v),
                        Err(e) => Outcome::Failed(e),
                    }
                }
                _ => Outcome::Refuse,
            }
        }

        /// A rate check: `Backend::check`, or what the failure mode says. Local-only: a
        /// hybrid node's own decision is local already; a shared node's is its embedded
        /// store's, at the backend's clock.
        pub(crate) fn check(
            &mut self,
            key: &[u8],
            limits: &Limits,
            cost: u32,
        ) -> Outcome<Decision> {
            self.guarded(
                "check",
                |main| main.check(key, limits, cost),
                |f, main| {
                    if f.is_hybrid() {
                        main.check(key, limits, cost)
                    } else {
                        f.local.check_at(key, limits, cost, main.now_ms())
                    }
                },
            )
        }

        /// A reservation of `estimate` for a metered group ([`Backend::reserve_at`]), or what
        /// the failure mode says: fail-open goes on without one (nothing is charged),
        /// local-only reserves in the fallback's store (`true`: the reservation lives there,
        /// and is settled there), fail-closed is a 503.
        pub(crate) fn reserve(
            &mut self,
            key: &[u8],
            limits: &Limits,
            estimate: u32,
            ttl: std::time::Duration,
        ) -> Outcome<(Reserved, bool)> {
            self.guarded(
                "reserve",
                |main| {
                    let now = main.now_ms();
                    Ok((main.reserve_at(key, limits, estimate, ttl, now)?, false))
                },
                |f, main| {
                    let now = main.now_ms();
                    if f.is_hybrid() {
                        Ok((main.reserve_at(key, limits, estimate, ttl, now)?, false))
                    } else {
                        Ok((f.local.reserve_at(key, limits, estimate, ttl, now)?, true))
                    }
                },
            )
        }

        /// A concurrency permit of `cap` for `token` (`Done(None)`: the cap is reached), or
        /// what the failure mode says: fail-open goes on without one, local-only takes one
        /// from the fallback's store (this node's count alone), fail-closed is a 503.
        pub(crate) fn permit(
            &mut self,
            token: &str,
            cap: u32,
            lease: std::time::Duration,
        ) -> Outcome<Option<ConcurrencyGuard<'a>>> {
            self.guarded(
                "permit",
                |main| ConcurrencyLimiter::new(main, cap, lease).try_acquire(token),
                |f, _| ConcurrencyLimiter::new(&f.local, cap, lease).try_acquire(token),
            )
        }

        /// `Backend::begin`, or what the failure mode says; with the backend holding the
        /// lease (the fallback's store for a local-only group).
        pub(crate) fn begin(
            &mut self,
            scope: &[u8],
            key: &IdempotencyKey,
            fp: &Fingerprint,
        ) -> Outcome<(Begin, &'a dyn Backend)> {
            self.guarded(
                "begin",
                |main| Ok((main.begin(scope, key, fp)?, main)),
                |f, main| {
                    let now = main.now_ms();
                    Ok((
                        f.local.begin_at(scope, key, fp, now)?,
                        &f.local as &dyn Backend,
                    ))
                },
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timeouts_parse() {
        let src = "x";
        let loc = Locator::new(src);
        let t = |s: &str| parse_timeout(&Spanned::new(0..1, s.to_string()), &loc);
        assert_eq!(t("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(t("2s").unwrap(), Duration::from_secs(2));
        assert_eq!(t(" 1ms ").unwrap(), Duration::from_millis(1));
        assert_eq!(t("60s").unwrap(), MAX_BACKEND_TIMEOUT);
        for bad in ["0ms", "61s", "250", "1.5s", "ms", "-1s", "1m"] {
            assert!(t(bad).is_err(), "{bad}");
        }
    }
}
