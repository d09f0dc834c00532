//! Metered groups when the backend fails: the reservation follows each group's
//! `on_backend_error` as a check does (fail-closed 503, fail-open unchecked and uncharged,
//! local-only reserved and settled in the fallback's store), and a settle the backend cannot
//! take leaves the estimate counted. The backend is an embedded store behind a switch that
//! makes every call fail as an unreachable server would, so no server is needed.
#![cfg(feature = "tower")]

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use axum::body::Body;
use axum::extract::Path;
use axum::http::{HeaderMap, HeaderValue, Request, Response, StatusCode};
use axum::routing::post;
use axum::Router;
use http_body_util::BodyExt;
use tollgate::gateway::{Fallback, Gateway, Policy};
use tollgate::{
    Backend, Begin, Decision, Error, Fingerprint, IdempotencyKey, Lease, Limits, ManualClock,
    Options, Permit, Reservation, Reserved, Store, StoredResponse, Version, VersionBump,
};

const T0: u64 = 1_700_000_040_000;

const POLICY: &str = r#"
[[group]]
name = "open"
route = "/open/*"
windows = [{ limit = 1000, window = "60s" }]
on_backend_error = "fail-open"
[group.metered]
unit = "tokens"
estimate = 200
usage_header = "x-usage-tokens"

[[group]]
name = "closed"
route = "/closed/*"
windows = [{ limit = 1000, window = "60s" }]
on_backend_error = "fail-closed"
[group.metered]
unit = "tokens"
estimate = 200
usage_header = "x-usage-tokens"

[[group]]
name = "local"
route = "/local/*"
windows = [{ limit = 1000, window = "60s" }]
on_backend_error = "local-only"
[group.metered]
unit = "tokens"
estimate = 200
usage_header = "x-usage-tokens"
"#;

/// An embedded store that answers like an unreachable server while `down` is set.
struct Switched {
    store: Store,
    down: AtomicBool,
}

impl Switched {
    fn up(&self) -> tollgate::Result<()> {
        if self.down.load(Ordering::SeqCst) {
            return Err(Error::BackendUnavailable {
                reason: "switched off by the test".into(),
            });
        }
        Ok(())
    }
}

impl Backend for Switched {
    fn now_ms(&self) -> u64 {
        self.store.now_ms()
    }
    fn check_at(&self, k: &[u8], l: &Limits, cost: u32, now: u64) -> tollgate::Result<Decision> {
        self.up()?;
        Backend::check_at(&self.store, k, l, cost, now)
    }
    fn peek_at(&self, k: &[u8], l: &Limits, now: u64) -> tollgate::Result<Decision> {
        self.up()?;
        Backend::peek_at(&self.store, k, l, now)
    }
    fn reserve_at(
        &self,
        k: &[u8],
        l: &Limits,
        estimate: u32,
        ttl: std::time::Duration,
        now: u64,
    ) -> tollgate::Result<Reserved> {
        self.up()?;
        Backend::reserve_at(&self.store, k, l, estimate, ttl, now)
    }
    fn settle_at(
        &self,
        k: &[u8],
        l: &Limits,
        r: &Reservation,
        actual: u32,
        now: u64,
    ) -> tollgate::Result<Decision> {
        self.up()?;
        Backend::settle_at(&self.store, k, l, r, actual, now)
    }
    fn begin_at(
        &self,
        s: &[u8],
        k: &IdempotencyKey,
        f: &Fingerprint,
        now: u64,
    ) -> tollgate::Result<Begin> {
        self.up()?;
        Backend::begin_at(&self.store, s, k, f, now)
    }
    fn complete_at(&self, l: &Lease, r: &StoredResponse, now: u64) -> tollgate::Result<()> {
        self.up()?;
        Backend::complete_at(&self.store, l, r, now)
    }
    fn abort(&self, l: &Lease) -> tollgate::Result<()> {
        self.up()?;
        Backend::abort(&self.store, l)
    }
    fn version(&self, k: &[u8]) -> tollgate::Result<Version> {
        self.up()?;
        Backend::version(&self.store, k)
    }
    fn bump_version(&self, k: &[u8]) -> tollgate::Result<Version> {
        self.up()?;
        Backend::bump_version(&self.store, k)
    }
    fn bump_version_if(&self, k: &[u8], v: &Version) -> tollgate::Result<VersionBump> {
        self.up()?;
        Backend::bump_version_if(&self.store, k, v)
    }
    fn acquire_permit_at(
        &self,
        k: &[u8],
        cap: u32,
        lease_ms: u64,
        now: u64,
    ) -> tollgate::Result<Option<Permit>> {
        self.up()?;
        Backend::acquire_permit_at(&self.store, k, cap, lease_ms, now)
    }
    fn release_permit(&self, p: &Permit) -> tollgate::Result<bool> {
        self.up()?;
        Backend::release_permit(&self.store, p)
    }
    fn permits_held_at(&self, k: &[u8], now: u64) -> tollgate::Result<u32> {
        self.up()?;
        Backend::permits_held_at(&self.store, k, now)
    }
}

/// `POST /<group>/x`: 200 reporting 900 tokens, or, on `/<group>/down`, switching the
/// backend off before answering (the upstream ran; its settle meets the outage).
fn upstream(backend: Arc<Gateway<Switched>>) -> Router {
    Router::new().route(
        "/{group}/{what}",
        post(move |Path((_, what)): Path<(String, String)>| {
            let gw = Arc::clone(&backend);
            async move {
                if what == "down" {
                    gw.store().down.store(true, Ordering::SeqCst);
                }
                let mut r = Response::new(Body::from("{}"));
                r.headers_mut()
                    .insert("x-usage-tokens", HeaderValue::from_static("900"));
                r
            }
        }),
    )
}

struct Harness {
    gateway: Arc<Gateway<Switched>>,
    fallback: Store,
    app: Router,
}

impl Harness {
    fn new() -> Harness {
        let clock = ManualClock::new(T0);
        let store = Store::open_in_memory(Options::default().clock(clock.clone())).expect("store");
        let fallback =
            Store::open_in_memory(Options::default().clock(clock.clone())).expect("store");
        let backend = Switched {
            store,
            down: AtomicBool::new(false),
        };
        let policy = Policy::from_toml_str(POLICY).expect("policy");
        let gateway = Gateway::with_fallback(backend, policy, Fallback::local(fallback.clone()));
        let app = upstream(Arc::clone(&gateway)).layer(gateway.layer());
        Harness {
            gateway,
            fallback,
            app,
        }
    }

    fn set_down(&self, down: bool) {
        self.gateway.store().down.store(down, Ordering::SeqCst);
    }

    async fn post(&self, path: &str) -> (StatusCode, HeaderMap) {
        let req = Request::post(path)
            .header("authorization", "Bearer tok_m")
            .body(Body::empty())
            .expect("request");
        let mut app = self.app.clone();
        let resp = tower::Service::call(&mut app, req).await.expect("answer");
        let (parts, body) = resp.into_parts();
        body.collect().await.expect("body");
        (parts.status, parts.headers)
    }

    /// What `store` has counted for the group `group`.
    fn used(&self, store: &Store, group: &str) -> u32 {
        let policy = self.gateway.policy();
        let g = policy.group(group).expect("group");
        let key = g.key("tok_m").expect("key");
        store
            .peek(key.as_bytes(), g.limits())
            .expect("peek")
            .windows()[0]
            .used()
    }
}

fn degraded(h: &HeaderMap) -> Option<&str> {
    h.get("tollgate-degraded").and_then(|v| v.to_str().ok())
}

#[tokio::test]
async fn each_group_reserves_as_its_on_backend_error_says() {
    let h = Harness::new();
    h.set_down(true);
    let (status, headers) = h.post("/closed/x").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(degraded(&headers), Some("fail-closed"));

    let (status, headers) = h.post("/open/x").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(degraded(&headers), Some("fail-open"));

    // Reserved and settled in the fallback's store, with the usage reported.
    let (status, headers) = h.post("/local/x").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(degraded(&headers), Some("local-only"));
    assert_eq!(h.used(&h.fallback, "local"), 900);
    let m = h.gateway.metering();
    assert_eq!((m.reported(), m.failed()), (1, 0));

    // Back up: the fail-open request was let through uncharged, nothing else was counted.
    h.set_down(false);
    for group in ["open", "closed", "local"] {
        assert_eq!(h.used(&h.gateway.store().store, group), 0, "{group}");
    }
    assert_eq!(h.gateway.failures().total(), 3);
}

#[tokio::test]
async fn a_settle_the_backend_cannot_take_leaves_the_estimate_counted() {
    let h = Harness::new();
    // Reserved while up; the upstream's answer finds the backend down.
    let (status, _) = h.post("/closed/down").await;
    assert_eq!(status, StatusCode::OK);
    let m = h.gateway.metering();
    assert_eq!((m.reported(), m.failed()), (0, 1));
    h.set_down(false);
    assert_eq!(h.used(&h.gateway.store().store, "closed"), 200);
}
