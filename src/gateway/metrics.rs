//! What the gateway does, as counters and histograms through the [`metrics`] facade (cargo
//! feature `metrics`): the application installs the recorder it exports with (Prometheus,
//! StatsD, OpenTelemetry, ...); the library has none. Without the feature every function here
//! is empty and the middleware's calls to it compile to nothing.
//!
//! | metric | kind | labels | what |
//! |---|---|---|---|
//! | `tollgate_requests_allowed_total` | counter | `group` | admitted by the rate check (a shadowed group's refusals included) |
//! | `tollgate_requests_refused_total` | counter | `group`, `reason` | refused: `reason` = `window` (429 of the rate limit), `concurrency` (429 of the cap), `if_match` (412) |
//! | `tollgate_requests_near_limit_total` | counter | `group` | admitted with less than 10 % of the binding window's limit left |
//! | `tollgate_shadow_refusals_total` | counter | `group` | let through by shadow mode (`enforce = false`) that enforcement would refuse |
//! | `tollgate_idempotency_total` | counter | `group`, `outcome` | `started`, `replayed`, `in_flight` (409), `mismatch` (422) |
//! | `tollgate_backend_errors_total` | counter | `operation`, `kind` | a backend call failed: `kind` = `unavailable` (unreachable, past its deadline), `server` (an error of the server), `store` (the embedded store: full, I/O) |
//! | `tollgate_backend_failures_total` | counter | `group`, `applied` | requests that met a failed backend, by what `on_backend_error` did (`fail-open`, `fail-closed`, `local-only`) |
//! | `tollgate_metered_settles_total` | counter | `group`, `usage`, `result` | reservations of metered groups settled: `usage` = `reported`, `missing` or `invalid` (settled with the estimate), `dropped` (the body ended early: the estimate), `streamed` (a stream meter's count), `not_called` (0); `result` = `ok` or `failed` (the estimate stays counted) |
//! | `tollgate_backend_call_seconds` | histogram | `operation` | the duration of each backend call: `permit`, `check`, `reserve`, `settle`, `peek`, `begin`, `complete`, `abort` |
//!
//! `group` is the group's name, empty for a request that matched no group. The store's size
//! and the compactor's work are gauges and counters read when asked ([`record_store`], and
//! `record_hybrid` for a hybrid node, with the `redis` feature): call them before rendering a scrape.
//!
//! [`metrics`]: https://docs.rs/metrics

#[cfg(feature = "metrics")]
use crate::Error;
use crate::{Decision, Result};

/// Why a request was refused, for `tollgate_requests_refused_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// 429 of the rate check.
    Window,
    /// 429 of the concurrency cap.
    Concurrency,
    /// 412 of `If-Match`.
    IfMatch,
}

/// An idempotency outcome, for `tollgate_idempotency_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Idem {
    Started,
    Replayed,
    InFlight,
    Mismatch,
}

/// A request admitted by `d`; near the limit when less than 10 % of the binding window is
/// left.
#[inline]
pub(crate) fn allowed(group: &str, d: &Decision) {
    #[cfg(feature = "metrics")]
    {
        let g = group.to_owned();
        ::metrics::counter!("tollgate_requests_allowed_total", "group" => g.clone()).increment(1);
        if u64::from(d.remaining()) * 10 < u64::from(d.limit()) {
            ::metrics::counter!("tollgate_requests_near_limit_total", "group" => g).increment(1);
        }
    }
    #[cfg(not(feature = "metrics"))]
    let _ = (group, d);
}

/// A request refused for `why`.
#[inline]
pub(crate) fn refused(group: &str, why: Refusal) {
    #[cfg(feature = "metrics")]
    {
        let reason = match why {
            Refusal::Window => "window",
            Refusal::Concurrency => "concurrency",
            Refusal::IfMatch => "if_match",
        };
        ::metrics::counter!(
            "tollgate_requests_refused_total",
            "group" => group.to_owned(),
            "reason" => reason
        )
        .increment(1);
    }
    #[cfg(not(feature = "metrics"))]
    let _ = (group, why);
}

/// A refusal shadow mode let through.
#[inline]
pub(crate) fn shadow_refusal(group: &str) {
    #[cfg(feature = "metrics")]
    ::metrics::counter!("tollgate_shadow_refusals_total", "group" => group.to_owned()).increment(1);
    #[cfg(not(feature = "metrics"))]
    let _ = group;
}

/// An idempotency outcome.
#[inline]
pub(crate) fn idempotency(group: &str, outcome: Idem) {
    #[cfg(feature = "metrics")]
    {
        let outcome = match outcome {
            Idem::Started => "started",
            Idem::Replayed => "replayed",
            Idem::InFlight => "in_flight",
            Idem::Mismatch => "mismatch",
        };
        ::metrics::counter!(
            "tollgate_idempotency_total",
            "group" => group.to_owned(),
            "outcome" => outcome
        )
        .increment(1);
    }
    #[cfg(not(feature = "metrics"))]
    let _ = (group, outcome);
}

/// A request that met a failed backend, and what its group did (`fail-open`, ...).
#[inline]
pub(crate) fn backend_failure(group: Option<&str>, applied: &'static str) {
    #[cfg(feature = "metrics")]
    ::metrics::counter!(
        "tollgate_backend_failures_total",
        "group" => group.unwrap_or("").to_owned(),
        "applied" => applied
    )
    .increment(1);
    #[cfg(not(feature = "metrics"))]
    let _ = (group, applied);
}

/// A metered group's reservation settled (`usage`: how its amount was known; `ok`: whether
/// the backend took it).
#[inline]
pub(crate) fn settled(group: &str, usage: &'static str, ok: bool) {
    #[cfg(feature = "metrics")]
    ::metrics::counter!(
        "tollgate_metered_settles_total",
        "group" => group.to_owned(),
        "usage" => usage,
        "result" => if ok { "ok" } else { "failed" }
    )
    .increment(1);
    #[cfg(not(feature = "metrics"))]
    let _ = (group, usage, ok);
}

/// Run one backend call, recording its duration and, if it fails, its error.
#[inline]
pub(crate) fn call<T>(operation: &'static str, f: impl FnOnce() -> Result<T>) -> Result<T> {
    #[cfg(feature = "metrics")]
    {
        let start = std::time::Instant::now();
        let r = f();
        ::metrics::histogram!("tollgate_backend_call_seconds", "operation" => operation)
            .record(start.elapsed().as_secs_f64());
        if let Err(e) = &r {
            let kind = match e {
                Error::BackendUnavailable { .. } => "unavailable",
                Error::Backend { .. } => "server",
                _ => "store",
            };
            ::metrics::counter!(
                "tollgate_backend_errors_total",
                "operation" => operation,
                "kind" => kind
            )
            .increment(1);
        }
        r
    }
    #[cfg(not(feature = "metrics"))]
    {
        let _ = operation;
        f()
    }
}

/// Gauges of `store`'s size and counters of its compactor's work, as of now (its
/// [`Stats`](crate::Stats); cheap: a few atomics and one pass over the segment table):
///
/// | metric | kind |
/// |---|---|
/// | `tollgate_store_entries` | gauge: live entries (windows and idempotency records) |
/// | `tollgate_store_idempotency_records` | gauge |
/// | `tollgate_store_bytes` | gauge: the size of the mapped segments |
/// | `tollgate_store_free_lines` | gauge: free 64-byte lines ready for new entries |
/// | `tollgate_compactor_passes_total` | counter: expiry passes run |
/// | `tollgate_compactor_expired_total{what}` | counter: `windows`, `records`, `leases` expired |
/// | `tollgate_compactor_moved_records_total` | counter: response records moved by compaction |
/// | `tollgate_compactor_recycled_segments_total` | counter |
/// | `tollgate_compactor_last_pass_seconds` | gauge: the duration of the last pass |
#[cfg(feature = "metrics")]
pub fn record_store(store: &crate::Store) {
    use ::metrics::{counter, gauge};
    let s = store.stats();
    gauge!("tollgate_store_entries").set(s.entries as f64);
    gauge!("tollgate_store_idempotency_records").set(s.idempotency_records as f64);
    gauge!("tollgate_store_bytes").set(s.bytes as f64);
    gauge!("tollgate_store_free_lines").set(s.free_lines as f64);
    counter!("tollgate_compactor_passes_total").absolute(s.passes);
    for (what, n) in [
        ("windows", s.expired_windows),
        ("records", s.expired_records),
        ("leases", s.expired_leases),
    ] {
        counter!("tollgate_compactor_expired_total", "what" => what).absolute(n);
    }
    counter!("tollgate_compactor_moved_records_total").absolute(s.moved_records);
    counter!("tollgate_compactor_recycled_segments_total").absolute(s.recycled_segments);
    gauge!("tollgate_compactor_last_pass_seconds").set(s.last_pass_micros as f64 / 1e6);
}

/// A hybrid node's syncs, as of now: `tollgate_hybrid_syncs_total{result="ok"|"failed"}`
/// (counters), `tollgate_hybrid_unsynced_units` and `tollgate_hybrid_keys` (gauges), and
/// `tollgate_hybrid_unreachable` (1 while the node counts its server as unreachable). Its
/// embedded store is [`record_store`]'s.
#[cfg(all(feature = "metrics", feature = "redis"))]
pub fn record_hybrid(node: &crate::fleet::HybridStore) {
    use ::metrics::{counter, gauge};
    let s = node.stats();
    counter!("tollgate_hybrid_syncs_total", "result" => "ok").absolute(s.syncs_ok);
    counter!("tollgate_hybrid_syncs_total", "result" => "failed").absolute(s.syncs_failed);
    gauge!("tollgate_hybrid_unsynced_units").set(s.unsynced_units as f64);
    gauge!("tollgate_hybrid_keys").set(s.keys as f64);
    gauge!("tollgate_hybrid_unreachable").set(if node.unreachable() { 1.0 } else { 0.0 });
}
