//! The answers the middleware builds: its refusals, the rate-limit headers of a response, a
//! replay, and the stored form of a response.
//!
//! This file exists to keep `middleware.rs` (the layer, the service and the order of the
//! steps) short: everything here turns what a request learned (its group, its decision) into
//! status, headers and body, in the policy's [`BodyStyle`].

use bytes::Bytes;
use http::header::CONTENT_TYPE;
use http::{HeaderMap, HeaderName, HeaderValue, Response, StatusCode};

use super::body::{full, GatewayBody};
use super::headers::{self, IDEMPOTENT_REPLAYED};
use super::policy::{Group, Policy, RateKey};
use super::settings::{BodyStyle, NEVER_REPLAYED};
use crate::{Backend, Decision, Error, Lease, Limits, StoredResponse};

/// The rate-limit side of one request: its group, key and windows.
pub(super) struct Rate<'a> {
    pub(super) group: &'a Group,
    pub(super) key: RateKey,
    pub(super) limits: &'a Limits,
}

/// What one request needs to build its answers.
pub(super) struct Ctx<'a> {
    pub(super) store: &'a dyn Backend,
    pub(super) policy: &'a Policy,
    pub(super) rate: Option<Rate<'a>>,
}

impl Ctx<'_> {
    fn style(&self) -> BodyStyle {
        self.policy.settings().body_style()
    }

    /// The rate-limit headers of `d`, or of a peek when the request was not counted.
    /// `Retry-After` only when `retry` (a 429 of the rate check).
    pub(super) fn rate_headers(&self, headers: &mut HeaderMap, d: Option<&Decision>, retry: bool) {
        let Some(rate) = &self.rate else { return };
        let peeked;
        let d = match d {
            Some(d) => d,
            None => match self.store.peek(rate.key.as_bytes(), rate.limits) {
                Ok(p) => {
                    peeked = p;
                    &peeked
                }
                Err(_) => return,
            },
        };
        headers::insert_rate_limit(headers, d);
        if !retry {
            headers.remove(http::header::RETRY_AFTER);
        }
        if self.policy.settings().ietf_headers() {
            headers::insert_ietf(headers, rate.group.name(), d, self.store.now_ms());
        }
    }

    /// A JSON refusal in the configured style, with the rate-limit headers (of `d`, or a peek).
    pub(super) fn refuse(
        &self,
        status: StatusCode,
        code: &str,
        message: &str,
        d: Option<&Decision>,
    ) -> Response<GatewayBody> {
        let mut r = json(status, headers::error_body(self.style(), code, message));
        self.rate_headers(r.headers_mut(), d, false);
        r
    }

    /// The 429 of a refused rate check.
    pub(super) fn too_many_requests(&self, d: &Decision) -> Response<GatewayBody> {
        let retry = d.retry_after().unwrap_or(1);
        let mut r = json(
            StatusCode::TOO_MANY_REQUESTS,
            headers::too_many_requests(self.style(), retry),
        );
        self.rate_headers(r.headers_mut(), Some(d), true);
        r
    }
}

pub(super) fn json(status: StatusCode, body: String) -> Response<GatewayBody> {
    let mut r = Response::new(full(body));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
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
            if self.store.complete(&lease, response).is_err() {
                // Too large to store, or the lease was lost: let a retry run again.
                let _ = self.store.abort(&lease);
            }
        }
    }
}

impl Drop for LeaseGuard<'_> {
    fn drop(&mut self) {
        if let Some(lease) = self.lease.take() {
            let _ = self.store.abort(&lease);
        }
    }
}

/// The stored form of a response: its status, its allow-listed headers and its body.
pub(super) fn stored_response(
    status: u16,
    headers: &HeaderMap,
    allow: &[HeaderName],
    body: &Bytes,
) -> StoredResponse {
    let mut stored = StoredResponse::new(status, body.to_vec());
    for name in allow {
        if NEVER_REPLAYED.contains(&name.as_str()) {
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

/// A replay: the stored status, headers and body, marked `Idempotent-Replayed: true`, with
/// the rate-limit headers of now (never those of the first exchange).
pub(super) fn replay(
    ctx: &Ctx<'_>,
    stored: &crate::Replayed,
    d: Option<&Decision>,
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
        if !NEVER_REPLAYED.contains(&name.as_str()) {
            h.append(name, value);
        }
    }
    h.insert(IDEMPOTENT_REPLAYED, HeaderValue::from_static("true"));
    ctx.rate_headers(h, d, false);
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
