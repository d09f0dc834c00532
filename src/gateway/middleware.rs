//! The tower middleware: a [`GatewayLayer`] in front of any `Service` taking
//! `Request<GatewayBody>`: an axum `Router` (`router.layer(gateway.layer())`) or a hyper
//! service.
//!
//! Per request, in this order:
//!
//! 1. The bearer token (`Authorization: Bearer <token>`). Missing or malformed: 401 with
//!    `WWW-Authenticate: Bearer`; longer than [`MAX_TOKEN_LEN`](super::MAX_TOKEN_LEN): 401.
//! 2. The group: the most specific route of the policy ([`Policy::match_route`]). A request
//!    matching no group is not rate-limited (and gets no rate-limit headers).
//! 3. The concurrency cap, if configured: a permit of the backend's (`crate::permit`), held
//!    until the request ends whatever happens, with a deadline (the policy's `permit_lease`,
//!    else [`Gateway::set_permit_lease`]);
//!    over the cap, 429 "Too many concurrent connections.".
//! 4. For POST, PATCH and DELETE carrying `Idempotency-Key`: 400 on a key not of the group's
//!    `key_format` (its [`IdempotencyPolicy`](super::IdempotencyPolicy)); the body is
//!    buffered (413 over `max_body_bytes`) and fingerprinted with method, path and query, and
//!    body; then [`Store::begin`]: a replay, 409 while in flight, 422 on another body.
//! 5. The rate check, with the group's cost: 429 with `Retry-After` and the configured body
//!    when refused; in a group with `enforce = false` (shadow mode), the refusal is recorded
//!    ([`Gateway::shadow`]) and the request goes on with the refusal's headers. A metered
//!    group ([`Group::metered`](super::Group::metered)) reserves its estimate instead, and
//!    settles it with the upstream's usage at step 7 (`settle.rs`); a replay reserves nothing.
//! 6. `If-Match` on a write, if `if_match` is on: 412 when stale (versions are the
//!    backend's, so every node of a fleet agrees on them).
//! 7. The upstream. A metered request's reservation is settled at the response head when it
//!    says its usage, else at the body's end (a trailer). The response gets the rate-limit
//!    headers (after the settle, if it happened at the head); a keyed request's response is
//!    stored for replay if its status is in the group's `store_statuses` (else the lease is
//!    aborted, so a retry runs again).
//!
//! When the backend fails (a shared server down, or past its deadline), steps 3, 4 and 5 (the
//! reservation too) do
//! what the group's `on_backend_error` says: 503, go on unchecked, or decide locally
//! (`failure.rs`).
//!
//! Store calls are made directly on the executor's thread: they never block (no lock held
//! across anything slow, no I/O but a rare file growth by one segment), so there is nothing
//! to gain from `spawn_blocking`. A shared backend's calls wait for the server's reply, at
//! most the deadline (`backend_timeout`).

use std::future::Future;
use std::path::Path;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::header::{AUTHORIZATION, ETAG, IF_MATCH, WWW_AUTHENTICATE};
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode};
use http_body::Body;
use parking_lot::RwLock;
use tower::{Layer, Service};

use super::answer::{replay, store_failure, stored_response, unavailable, Ctx, LeaseGuard, Rate};
use super::body::{boxed, collect_capped, full, BoxError, Collected, GatewayBody};
use super::concurrency::DEFAULT_PERMIT_LEASE;
use super::failure::{Calls, FailureLog, Fallback, Outcome};
use super::headers::{IDEMPOTENCY_KEY, KEY_REUSED, RESOURCE_CHANGED};
use super::metrics::{self, Idem, Refusal};
use super::policy::{check_token, Policy, TokenError};
use super::rate::rate_check;
use super::settle::{self, Metering, Settlement};
use super::shadow::ShadowLog;
use super::{ConcurrencyLimiter, PolicyError, Versions};
use crate::{Backend, Begin, Fingerprint, Store};

/// The state shared by every request: the backend (which also keeps the concurrency permits
/// and the versions) and its fallback, the current policy, the shadow refusals and the backend
/// failures.
///
/// The backend is any [`Backend`]: the embedded [`Store`] (the default type), or, with the
/// `redis` feature, `fleet::RedisStore` or `fleet::HybridStore` for a fleet of gateways.
pub struct Gateway<B: Backend = Store> {
    store: B,
    fallback: Option<Fallback>,
    policy: RwLock<Arc<Policy>>,
    /// The lease of a concurrency permit, in ms.
    permit_lease_ms: AtomicU64,
    shadow: ShadowLog,
    failures: FailureLog,
    metering: Metering,
}

impl<B: Backend + std::fmt::Debug> std::fmt::Debug for Gateway<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gateway")
            .field("store", &self.store)
            .field("groups", &self.policy.read().groups().len())
            .finish_non_exhaustive()
    }
}

fn cap_of(policy: &Policy) -> u32 {
    policy
        .settings()
        .max_concurrent_per_token()
        .unwrap_or(u32::MAX)
}

impl<B: Backend + 'static> Gateway<B> {
    /// A gateway enforcing `policy` with `store` (any [`Backend`]). Its groups with
    /// `on_backend_error = "local-only"` answer as fail-closed: it has no [`Fallback`].
    pub fn new(store: B, policy: Policy) -> Arc<Gateway<B>> {
        Gateway::build(store, policy, None)
    }

    /// A gateway on a shared backend whose `local-only` groups decide with `fallback` when
    /// the server fails ([`Fallback::local`] for a `fleet::RedisStore`, `Fallback::hybrid`
    /// for a `fleet::HybridStore`).
    pub fn with_fallback(store: B, policy: Policy, fallback: Fallback) -> Arc<Gateway<B>> {
        Gateway::build(store, policy, Some(fallback))
    }

    fn build(store: B, policy: Policy, fallback: Option<Fallback>) -> Arc<Gateway<B>> {
        Arc::new(Gateway {
            store,
            fallback,
            policy: RwLock::new(Arc::new(policy)),
            permit_lease_ms: AtomicU64::new(DEFAULT_PERMIT_LEASE.as_millis() as u64),
            shadow: ShadowLog::new(),
            failures: FailureLog::new(),
            metering: Metering::default(),
        })
    }

    /// The layer to put in front of a service: `router.layer(gateway.layer())`.
    pub fn layer(self: &Arc<Self>) -> GatewayLayer<B> {
        GatewayLayer::new(Arc::clone(self))
    }

    /// The policy in force.
    pub fn policy(&self) -> Arc<Policy> {
        Arc::clone(&self.policy.read())
    }

    /// Put a new policy in force. Requests already running finish under the old one; counts
    /// are kept (see [`Policy::reload`]).
    pub fn set_policy(&self, policy: Policy) {
        *self.policy.write() = Arc::new(policy);
    }

    /// Load `path` and put it in force. On error the policy in force is unchanged.
    pub fn reload(&self, path: impl AsRef<Path>) -> Result<(), PolicyError> {
        self.set_policy(Policy::load(path)?);
        Ok(())
    }

    /// The backend.
    pub fn store(&self) -> &B {
        &self.store
    }

    /// The concurrency cap of the policy in force, over the backend's permits (for
    /// `in_flight`; a policy without a cap gives `u32::MAX`, which the embedded store refuses
    /// to take permits under).
    pub fn concurrency(&self) -> ConcurrencyLimiter<'_> {
        let policy = self.policy.read();
        let lease = policy
            .settings()
            .permit_lease()
            .unwrap_or(self.permit_lease());
        ConcurrencyLimiter::new(&self.store, cap_of(&policy), lease)
    }

    fn permit_lease(&self) -> Duration {
        Duration::from_millis(self.permit_lease_ms.load(Ordering::Relaxed))
    }

    /// How long a concurrency permit holds its slot if its request never releases it (its
    /// node crashed), when the policy does not say (`[settings] permit_lease`, which wins):
    /// [`DEFAULT_PERMIT_LEASE`](super::DEFAULT_PERMIT_LEASE) (60 s) unless set. Set it above
    /// the upstream's own timeout: a request running past it loses its slot. Applies to
    /// permits taken from now on (at least 1 ms).
    pub fn set_permit_lease(&self, lease: Duration) {
        let ms = u64::try_from(lease.as_millis()).unwrap_or(u64::MAX).max(1);
        self.permit_lease_ms.store(ms, Ordering::Relaxed);
    }

    /// The resource versions behind `If-Match`, in the backend.
    pub fn versions(&self) -> Versions<'_> {
        Versions::new(&self.store)
    }

    /// What the groups in shadow mode (`enforce = false`) let through that enforcement would
    /// have refused: counts, and a hook to log each one.
    pub fn shadow(&self) -> &ShadowLog {
        &self.shadow
    }

    /// The requests that met a failed backend, by what their group's `on_backend_error` did:
    /// counts, and a hook to log each one.
    pub fn failures(&self) -> &FailureLog {
        &self.failures
    }

    /// The fallback of `local-only` groups, if the gateway has one.
    pub fn fallback(&self) -> Option<&Fallback> {
        self.fallback.as_ref()
    }

    /// The metered groups' usage readers (set in code) and how their reservations were
    /// settled.
    pub fn metering(&self) -> &Metering {
        &self.metering
    }
}

impl<B: Backend> settle::Site for Gateway<B> {
    fn settle_backend(&self, local: bool) -> &dyn Backend {
        match (&self.fallback, local) {
            (Some(f), true) => f.store(),
            _ => &self.store,
        }
    }

    fn now_ms(&self) -> u64 {
        self.store.now_ms()
    }

    fn metering(&self) -> &Metering {
        &self.metering
    }
}

/// A `tower::Layer` wrapping a service in a [`GatewayService`].
pub struct GatewayLayer<B: Backend = Store> {
    gateway: Arc<Gateway<B>>,
}

impl<B: Backend> Clone for GatewayLayer<B> {
    fn clone(&self) -> Self {
        GatewayLayer {
            gateway: Arc::clone(&self.gateway),
        }
    }
}

impl<B: Backend + std::fmt::Debug> std::fmt::Debug for GatewayLayer<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GatewayLayer")
            .field("gateway", &self.gateway)
            .finish()
    }
}

impl<B: Backend> GatewayLayer<B> {
    /// A layer enforcing `gateway`'s policy.
    pub fn new(gateway: Arc<Gateway<B>>) -> GatewayLayer<B> {
        GatewayLayer { gateway }
    }
}

impl<S, B: Backend> Layer<S> for GatewayLayer<B> {
    type Service = GatewayService<S, B>;

    fn layer(&self, inner: S) -> GatewayService<S, B> {
        GatewayService {
            inner,
            gateway: Arc::clone(&self.gateway),
        }
    }
}

/// The middleware service: see the module docs for what it does per request.
pub struct GatewayService<S, B: Backend = Store> {
    inner: S,
    gateway: Arc<Gateway<B>>,
}

impl<S: Clone, B: Backend> Clone for GatewayService<S, B> {
    fn clone(&self) -> Self {
        GatewayService {
            inner: self.inner.clone(),
            gateway: Arc::clone(&self.gateway),
        }
    }
}

impl<S: std::fmt::Debug, B: Backend + std::fmt::Debug> std::fmt::Debug for GatewayService<S, B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GatewayService")
            .field("inner", &self.inner)
            .field("gateway", &self.gateway)
            .finish()
    }
}

/// The upstream's future, boxed (see `handle`).
type Upstream<B, E> = Pin<Box<dyn Future<Output = Result<Response<B>, E>> + Send>>;

/// The future of a [`GatewayService`].
pub type GatewayFuture<E> =
    Pin<Box<dyn Future<Output = Result<Response<GatewayBody>, E>> + Send + 'static>>;

impl<S, B, ReqBody, ResBody> Service<Request<ReqBody>> for GatewayService<S, B>
where
    B: Backend + 'static,
    S: Service<Request<GatewayBody>, Response = Response<ResBody>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    ReqBody: Body<Data = Bytes> + Send + 'static,
    ReqBody::Error: Into<BoxError>,
    ResBody: Body<Data = Bytes> + Send + 'static,
    ResBody::Error: Into<BoxError>,
{
    type Response = Response<GatewayBody>;
    type Error = S::Error;
    type Future = GatewayFuture<S::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<ReqBody>) -> Self::Future {
        // Use the service that was made ready; leave a fresh clone for the next call.
        let clone = self.inner.clone();
        let inner = std::mem::replace(&mut self.inner, clone);
        let gateway = Arc::clone(&self.gateway);
        Box::pin(handle(gateway, inner, req))
    }
}

/// The token of `Authorization: Bearer <token>` (the scheme is case-insensitive). `None` when
/// the header is missing, not `Bearer`, or the token is empty or holds whitespace.
pub fn bearer_token(headers: &HeaderMap) -> Option<&str> {
    let v = headers.get(AUTHORIZATION)?.to_str().ok()?.trim();
    let (scheme, rest) = v.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return None;
    }
    let token = rest.trim_start_matches(' ');
    if token.is_empty() || token.bytes().any(|b| !(0x21..=0x7E).contains(&b)) {
        return None;
    }
    Some(token)
}

fn is_write(m: &Method) -> bool {
    matches!(
        *m,
        Method::POST | Method::PUT | Method::PATCH | Method::DELETE
    )
}

fn is_idempotency_method(m: &Method) -> bool {
    matches!(*m, Method::POST | Method::PATCH | Method::DELETE)
}

async fn handle<S, B, ReqBody, ResBody>(
    gw: Arc<Gateway<B>>,
    mut inner: S,
    req: Request<ReqBody>,
) -> Result<Response<GatewayBody>, S::Error>
where
    B: Backend + 'static,
    S: Service<Request<GatewayBody>, Response = Response<ResBody>> + Send + 'static,
    S::Future: Send + 'static,
    ReqBody: Body<Data = Bytes> + Send + 'static,
    ReqBody::Error: Into<BoxError>,
    ResBody: Body<Data = Bytes> + Send + 'static,
    ResBody::Error: Into<BoxError>,
{
    let policy = gw.policy();
    let settings = policy.settings();
    let method = req.method().clone();
    let uri = req.uri().clone();
    let path = uri.path();
    let ctx = Ctx {
        store: Some(&gw.store),
        policy: &policy,
        rate: None,
        token: "",
        degraded: None,
        in_flight: 0,
    };

    // 1. The token.
    let token = match bearer_token(req.headers()) {
        Some(t) => t.to_owned(),
        None => {
            let mut r = ctx.refuse(
                StatusCode::UNAUTHORIZED,
                "UNAUTHORIZED",
                "Missing or malformed bearer token.",
                None,
            );
            r.headers_mut()
                .insert(WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            return Ok(r);
        }
    };
    if let Err(e) = check_token(&token) {
        let message = match e {
            TokenError::TooLong { .. } => "Bearer token is too long.",
            _ => "Missing or malformed bearer token.",
        };
        let mut r = ctx.refuse(StatusCode::UNAUTHORIZED, "UNAUTHORIZED", message, None);
        r.headers_mut()
            .insert(WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        return Ok(r);
    }

    let mut ctx = Ctx {
        token: &token,
        ..ctx
    };

    // 2. The group, and its idempotency policy (the settings' without a group).
    let group = policy.match_route(method.as_str(), path);
    let group_name = group.map_or("", |g| g.name());
    let idem = group.map_or(settings.idempotency(), |g| g.idempotency());
    let mut calls = Calls::new(
        &gw.store,
        gw.fallback.as_ref(),
        group.map_or(settings.on_backend_error(), |g| g.on_backend_error()),
        &gw.failures,
        group.map(|g| g.name()),
    );
    if let Some(group) = group {
        if let Ok(key) = group.key(&token) {
            ctx.rate = Some(Rate {
                group,
                key,
                limits: group.limits_for(&token),
            });
        }
    }

    // 3. The concurrency cap; the guard is held until the response is ready.
    let _slot = match settings.max_concurrent_per_token() {
        None => None,
        Some(cap) => match calls.permit(
            &token,
            cap,
            settings.permit_lease().unwrap_or(gw.permit_lease()),
        ) {
            Outcome::Done(Some(g)) => {
                ctx.in_flight = g.in_flight();
                Some(g)
            }
            Outcome::Done(None) => {
                ctx.in_flight = cap;
                metrics::refused(group_name, Refusal::Concurrency);
                return Ok(ctx.too_many_concurrent());
            }
            Outcome::Admit => None,
            Outcome::Refuse => {
                ctx.sync(&calls);
                return Ok(unavailable(&ctx));
            }
            Outcome::Failed(e) => return Ok(store_failure(&ctx, &e)),
        },
    };

    // 4. Idempotency.
    let mut lease = LeaseGuard {
        store: &gw.store,
        lease: None,
    };
    let mut replayed = None;
    let keyed = is_idempotency_method(&method) && req.headers().contains_key(IDEMPOTENCY_KEY);
    let req = if keyed {
        let format = idem.key_format();
        let parsed = req
            .headers()
            .get(IDEMPOTENCY_KEY)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| format.parse(v));
        let Some(key) = parsed else {
            return Ok(ctx.refuse(
                StatusCode::BAD_REQUEST,
                "INVALID_IDEMPOTENCY_KEY",
                &format.requirement(),
                None,
            ));
        };
        let (parts, body) = req.into_parts();
        let bytes = match collect_capped(body, settings.max_body_bytes()).await {
            Collected::Whole(b) => b,
            Collected::TooLarge(_) => {
                return Ok(ctx.refuse(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "PAYLOAD_TOO_LARGE",
                    &format!(
                        "Request body is larger than {} bytes.",
                        settings.max_body_bytes()
                    ),
                    None,
                ))
            }
            Collected::Failed => {
                return Ok(ctx.refuse(
                    StatusCode::BAD_REQUEST,
                    "BAD_REQUEST",
                    "Could not read the request body.",
                    None,
                ))
            }
        };
        let target = uri.path_and_query().map_or(path, |pq| pq.as_str());
        let fp = Fingerprint::of(method.as_str(), target, &bytes);
        let begun = calls.begin(token.as_bytes(), &key, &fp);
        ctx.sync(&calls);
        match begun {
            Outcome::Done((Begin::Started(l), holder)) => {
                metrics::idempotency(group_name, Idem::Started);
                lease.store = holder;
                lease.lease = Some(l);
            }
            Outcome::Done((Begin::Replay(stored), _)) => {
                metrics::idempotency(group_name, Idem::Replayed);
                replayed = Some(stored);
            }
            Outcome::Done((Begin::InFlight, _)) => {
                metrics::idempotency(group_name, Idem::InFlight);
                return Ok(ctx.refuse(
                    StatusCode::CONFLICT,
                    "IDEMPOTENCY_KEY_IN_FLIGHT",
                    "A request with this Idempotency-Key is still in progress.",
                    None,
                ));
            }
            Outcome::Done((Begin::Mismatch, _)) => {
                metrics::idempotency(group_name, Idem::Mismatch);
                return Ok(ctx.refuse(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "IDEMPOTENCY_KEY_REUSED",
                    KEY_REUSED,
                    None,
                ));
            }
            // Fail-open: the request runs unkeyed (a retry may run it again).
            Outcome::Admit => {}
            Outcome::Refuse => return Ok(unavailable(&ctx)),
            Outcome::Failed(e) => return Ok(store_failure(&ctx, &e)),
        }
        Request::from_parts(parts, full(bytes))
    } else {
        req.map(boxed)
    };

    // 5. The rate check (a replay's only with `replay_spends_quota`, and never a metered
    // group's: the upstream is not called again, so there is no usage to charge).
    let metered = group.and_then(|g| g.metered());
    if let Some(stored) = replayed {
        let d = if idem.replay_spends_quota() && metered.is_none() {
            match rate_check(
                &mut ctx,
                &mut calls,
                &gw.shadow,
                method.as_str(),
                path,
                req.headers(),
            ) {
                Ok((d, _)) => d,
                Err(refused) => return Ok(*refused),
            }
        } else {
            None
        };
        return Ok(replay(&ctx, &stored, d.as_ref(), idem.replay_header()));
    }
    let (decision, reservation) = match rate_check(
        &mut ctx,
        &mut calls,
        &gw.shadow,
        method.as_str(),
        path,
        req.headers(),
    ) {
        Ok(checked) => checked,
        Err(refused) => return Ok(*refused),
    };
    // Settled once: at the response head or the body's end, else when dropped.
    let mut settlement = match (reservation, &ctx.rate) {
        (Some((r, local)), Some(rate)) => Some(Settlement::new(
            Arc::clone(&gw),
            local,
            rate.key,
            rate.limits.clone(),
            group_name,
            r,
        )),
        _ => None,
    };

    // 6. If-Match.
    let versioned = settings.if_match() && ctx.rate.is_some();
    let mut etag = None;
    if versioned && is_write(&method) {
        if let Some(v) = req.headers().get(IF_MATCH) {
            match gw
                .versions()
                .compare_and_bump(path, v.to_str().unwrap_or(""))
            {
                Ok(Ok(tag)) => etag = Some(tag),
                Err(e) => return Ok(store_failure(&ctx, &e)),
                Ok(Err(stale)) => {
                    metrics::refused(group_name, Refusal::IfMatch);
                    let mut r = ctx.refuse(
                        StatusCode::PRECONDITION_FAILED,
                        "PRECONDITION_FAILED",
                        RESOURCE_CHANGED,
                        decision.as_ref(),
                    );
                    r.headers_mut()
                        .insert(ETAG, stale.current.to_header_value());
                    return Ok(r);
                }
            }
        }
    }

    // 7. The upstream.
    // Boxed as a `dyn Future + Send` here, where its type is concrete: this keeps rustc from
    // asking for `Send` of the inner future "for any lifetime" of the boxed error type.
    if let Some(s) = &mut settlement {
        s.upstream_called();
    }
    let upstream: Upstream<ResBody, S::Error> = Box::pin(inner.call(req));
    let resp = upstream.await?;
    let (mut parts, body) = resp.into_parts();
    let (body, settled) = match (settlement, metered) {
        (Some(s), Some(m)) => settle::at_head(s, m, &parts, boxed(body)),
        _ => (boxed(body), None),
    };
    if versioned && parts.status.is_success() {
        // The upstream answered: a backend that fails now costs the response its ETag only.
        let tag = if is_write(&method) {
            etag.or_else(|| gw.versions().bump(path).ok())
        } else if matches!(method, Method::GET | Method::HEAD) {
            gw.versions().current(path).ok()
        } else {
            None
        };
        if let Some(tag) = tag {
            parts.headers.insert(ETAG, tag.to_header_value());
        }
    }
    let body = if lease.lease.is_some() && idem.store_statuses().contains(parts.status.as_u16()) {
        match collect_capped(body, idem.max_response_bytes()).await {
            Collected::Whole(bytes) => {
                lease.complete(&stored_response(
                    parts.status.as_u16(),
                    &parts.headers,
                    idem,
                    &bytes,
                ));
                full(bytes)
            }
            // Served, not stored (the guard aborts the lease).
            Collected::TooLarge(b) => b,
            Collected::Failed => {
                return Ok(ctx.refuse(
                    StatusCode::BAD_GATEWAY,
                    "BAD_GATEWAY",
                    "The upstream response failed.",
                    decision.as_ref(),
                ))
            }
        }
    } else {
        body
    };
    drop(lease);
    let mut resp = Response::from_parts(parts, body);
    // A refused decision here is one shadow mode let through: its headers, Retry-After too.
    // After a settle, the units left (an overdraft is no reason to retry this response).
    let retry = settled.is_none() && decision.as_ref().is_some_and(|d| !d.allowed());
    let shown = settled.as_ref().or(decision.as_ref());
    ctx.rate_headers(resp.headers_mut(), shown, retry);
    Ok(resp)
}

#[cfg(test)]
#[path = "middleware_tests.rs"]
mod tests;
