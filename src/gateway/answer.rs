//! The answers the middleware builds: its refusals, the rate-limit headers of a response, a
//! replay, and the stored form of a response.
//!
//! This file exists to keep `middleware.rs` (the layer, the service and the order of the
//! steps) short: everything here turns what a request learned (its group, its decision, its
//! token's slots) into status, headers and body, in the policy's [`BodyStyle`] and
//! [`HeaderMode`](super::HeaderMode).

use bytes::Bytes;
use http::header::CONTENT_TYPE;
use http::{HeaderMap, HeaderName, HeaderValue, Response, StatusCode};

use super::body::{full, GatewayBody};
use super::failure::{Calls, OnBackendError, TOLLGATE_DEGRADED};
use super::headers::{self, TOO_MANY_CONCURRENT};
use super::idempotency::{IdempotencyPolicy, NEVER_REPLAYED};
use super::ietf::{self, Concurrency, Extras, CONCURRENCY_POLICY};
use super::metrics;
use super::policy::{Group, Policy, RateKey};
use super::problem;
use super::settings::BodyStyle;
use super::shadow::{ShadowLog, ShadowRefusal};
use crate::{Backend, Decision, Error, Lease, Limits, StoredResponse};

/// The rate-limit side of one request: its group, key and windows.
pub(super) struct Rate<'a> {
    pub(super) group: &'a Group,
    pub(super) key: RateKey,
    pub(super) limits: &'a Limits,
}

/// What one request needs to build its answers.
pub(super) struct Ctx<'a> {
    /// Where the headers of an answer without a decision are read (`None`: nowhere, the
    /// backend failed).
    pub(super) store: Option<&'a dyn Backend>,
    pub(super) policy: &'a Policy,
    pub(super) rate: Option<Rate<'a>>,
    /// The bearer token ("" until it is known).
    pub(super) token: &'a str,
    /// What the request does since it met a failed backend (`Tollgate-Degraded`).
    pub(super) degraded: Option<OnBackendError>,
    /// The token's requests in flight, as its concurrency permit counted them (this one
    /// included; the cap when refused).
    pub(super) in_flight: u32,
}

impl<'a> Ctx<'a> {
    /// Follow what the request's backend calls met.
    pub(super) fn sync(&mut self, calls: &Calls<'a>) {
        self.store = calls.peeks();
        self.degraded = calls.degraded();
    }

    fn style(&self) -> BodyStyle {
        self.policy.settings().body_style()
    }

    /// The rate-limit headers of `d`, or of a peek when the request was not counted, in the
    /// policy's header mode. `Retry-After` only when `retry` (a 429 of the rate check, or the
    /// same decision let through by shadow mode).
    pub(super) fn rate_headers(&self, h: &mut HeaderMap, d: Option<&Decision>, retry: bool) {
        if let Some(mode) = self.degraded {
            h.insert(TOLLGATE_DEGRADED, HeaderValue::from_static(mode.as_str()));
        }
        let (Some(rate), Some(store)) = (&self.rate, self.store) else {
            return;
        };
        let peeked;
        let d = match d {
            Some(d) => d,
            None => match metrics::call("peek", || store.peek(rate.key.as_bytes(), rate.limits)) {
                Ok(p) => {
                    peeked = p;
                    &peeked
                }
                Err(_) => return,
            },
        };
        let settings = self.policy.settings();
        let mode = settings.headers();
        if mode.legacy() {
            headers::insert_rate_limit(h, d);
        } else {
            headers::insert_retry_after(h, d);
        }
        if !retry {
            h.remove(http::header::RETRY_AFTER);
        }
        if mode.ietf() {
            let pk = settings
                .partition_key()
                .then(|| settings.partition_secret().key_of(self.token));
            let concurrency = settings.max_concurrent_per_token().map(|cap| Concurrency {
                cap,
                in_flight: self.in_flight,
            });
            let now = store.now_ms();
            // Only when this request took a window's last unit: when does the next come back?
            let refill = if ietf::needs_refill(d) {
                metrics::call("peek", || {
                    store.peek_at(rate.key.as_bytes(), rate.limits, now)
                })
                .ok()
            } else {
                None
            };
            let extras = Extras {
                partition_key: pk.as_ref(),
                concurrency,
                refill: refill.as_ref(),
                unit: rate.group.metered().map(|m| m.unit()),
            };
            ietf::insert(h, rate.group.name(), d, now, &extras);
        }
    }

    /// A refusal in the configured style, with the rate-limit headers (of `d`, or a peek).
    pub(super) fn refuse(
        &self,
        status: StatusCode,
        code: &str,
        message: &str,
        d: Option<&Decision>,
    ) -> Response<GatewayBody> {
        let style = self.style();
        let body = headers::refusal_body(style, status.as_u16(), code, message);
        let mut r = json(style, status, body);
        self.rate_headers(r.headers_mut(), d, false);
        r
    }

    /// The 429 of a refused rate check; a problem body names every violated window.
    pub(super) fn too_many_requests(&self, d: &Decision) -> Response<GatewayBody> {
        let style = self.style();
        let retry = d.retry_after().unwrap_or(1);
        let violated = match (&self.rate, style) {
            (Some(rate), BodyStyle::Problem) => ietf::violated_policies(rate.group.name(), d),
            _ => Vec::new(),
        };
        let body = headers::too_many_requests_naming(style, retry, &violated);
        let mut r = json(style, StatusCode::TOO_MANY_REQUESTS, body);
        self.rate_headers(r.headers_mut(), Some(d), true);
        r
    }

    /// The 429 of the concurrency cap; a problem body names the `"concurrency"` policy.
    pub(super) fn too_many_concurrent(&self) -> Response<GatewayBody> {
        const CODE: &str = "TOO_MANY_CONCURRENT_REQUESTS";
        let style = self.style();
        if style != BodyStyle::Problem {
            return self.refuse(
                StatusCode::TOO_MANY_REQUESTS,
                CODE,
                TOO_MANY_CONCURRENT,
                None,
            );
        }
        let body = problem::quota_exceeded(CODE, TOO_MANY_CONCURRENT, &[CONCURRENCY_POLICY]);
        let mut r = json(style, StatusCode::TOO_MANY_REQUESTS, body);
        self.rate_headers(r.headers_mut(), None, false);
        r
    }

    /// Record that `d`, a refusal of this request's shadowed group, was let through.
    pub(super) fn shadow_refusal(&self, log: &ShadowLog, method: &str, path: &str, d: &Decision) {
        let Some(rate) = &self.rate else { return };
        log.record(&ShadowRefusal {
            group: rate.group.name(),
            method,
            path,
            decision: d,
            partition_key: self.policy.settings().partition_secret().key_of(self.token),
        });
    }
}

/// A response of `status` with a JSON body of `style` (its media type).
pub(super) fn json(style: BodyStyle, status: StatusCode, body: String) -> Response<GatewayBody> {
    let mut r = Response::new(full(body));
    *r.status_mut() = status;
    r.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static(headers::content_type(style)),
    );
    r
}

/// Aborts its lease when dropped without completing it: a refused, failed or abandoned
/// request never leaves its key in flight until the lease times out.
pub(super) struct LeaseGuard<'a> {
    pub(super) store: &'a dyn Backend,
    pub(super) lease: Option<Lease>,
}

impl LeaseGuard<'_> {
    pub(super) fn complete(&mut self, response: &StoredResponse) {
        if let Some(lease) = self.lease.take() {
            if metrics::call("complete", || self.store.complete(&lease, response)).is_err() {
                // Too large to store, or the lease was lost: let a retry run again.
                let _ = metrics::call("abort", || self.store.abort(&lease));
            }
        }
    }
}

impl Drop for LeaseGuard<'_> {
    fn drop(&mut self) {
        if let Some(lease) = self.lease.take() {
            let _ = metrics::call("abort", || self.store.abort(&lease));
        }
    }
}

/// The stored form of a response: its status, the headers `idem` allows (never its replay
/// marker) and its body.
pub(super) fn stored_response(
    status: u16,
    headers: &HeaderMap,
    idem: &IdempotencyPolicy,
    body: &Bytes,
) -> StoredResponse {
    let mut stored = StoredResponse::new(status, body.to_vec());
    for name in idem.replay_headers() {
        if NEVER_REPLAYED.contains(&name.as_str()) || name == idem.replay_header() {
            continue;
        }
        for v in headers.get_all(name) {
            stored
                .headers
                .push((name.as_str().to_owned(), v.as_bytes().to_vec()));
        }
    }
    stored
}

/// A replay: the stored status, headers and body, marked `<marker>: true`
/// (`Idempotent-Replayed` unless the policy names another), with the rate-limit headers of now
/// (never those of the first exchange).
pub(super) fn replay(
    ctx: &Ctx<'_>,
    stored: &crate::Replayed,
    d: Option<&Decision>,
    marker: &HeaderName,
) -> Response<GatewayBody> {
    let mut r = Response::new(full(Bytes::copy_from_slice(stored.body())));
    *r.status_mut() = StatusCode::from_u16(stored.status()).unwrap_or(StatusCode::OK);
    let h = r.headers_mut();
    for (name, value) in stored.headers() {
        let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_bytes(value),
        ) else {
            continue;
        };
        if !NEVER_REPLAYED.contains(&name.as_str()) && name != marker {
            h.append(name, value);
        }
    }
    h.insert(marker.clone(), HeaderValue::from_static("true"));
    // A refused decision here is one shadow mode let through: its headers, Retry-After too.
    ctx.rate_headers(h, d, d.is_some_and(|d| !d.allowed()));
    r
}

/// The answer of a fail-closed group when the backend fails: 503, `Retry-After: 1`.
pub(super) fn unavailable(ctx: &Ctx<'_>) -> Response<GatewayBody> {
    let mut r = ctx.refuse(
        StatusCode::SERVICE_UNAVAILABLE,
        "UNAVAILABLE",
        "The gateway cannot check this request now, try again later.",
        None,
    );
    r.headers_mut()
        .insert(http::header::RETRY_AFTER, HeaderValue::from(1u32));
    r
}

/// The answer when the store fails: 503 when it is full, 500 otherwise.
pub(super) fn store_failure(ctx: &Ctx<'_>, e: &Error) -> Response<GatewayBody> {
    match e {
        Error::CapacityExhausted => ctx.refuse(
            StatusCode::SERVICE_UNAVAILABLE,
            "UNAVAILABLE",
            "The gateway is at capacity, try again later.",
            None,
        ),
        _ => ctx.refuse(
            StatusCode::INTERNAL_SERVER_ERROR,
            "INTERNAL",
            "The gateway could not check this request.",
            None,
        ),
    }
}
