//! When the backend fails: each group's `on_backend_error` (fail-open, fail-closed,
//! local-only) and the deadline of a backend call, over real HTTP, with a redis-server of the
//! test's own (a private one on a free port and a temporary directory: stopping it never
//! touches the server other tests share) stopped, paused and started again mid-test.
#![cfg(all(feature = "tower", feature = "redis"))]

#[allow(dead_code)]
#[path = "../examples/gateway.rs"]
mod example;
mod server;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::{Path, State};
use axum::routing::post;
use axum::Router;
use bytes::Bytes;
use http::{HeaderMap, Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use parking_lot::Mutex;
use tollgate::fleet::{HybridOptions, HybridStore, RedisOptions, RedisStore, Unreachable};
use tollgate::gateway::{Fallback, Gateway, OnBackendError, Policy};
use tollgate::{ManualClock, Options, Store};

const POLICY: &str = r#"
[settings]
backend_timeout = "150ms"

[[group]]
name = "open"
route = "/open/*"
windows = [{ limit = 3, window = "60s" }]
on_backend_error = "fail-open"

[[group]]
name = "closed"
route = "/closed/*"
windows = [{ limit = 3, window = "60s" }]
on_backend_error = "fail-closed"

[[group]]
name = "local"
route = "/local/*"
windows = [{ limit = 2, window = "60s" }]
on_backend_error = "local-only"
"#;

/// `POST /<group>/x`: 201, counting the calls per group.
#[derive(Clone, Default)]
struct Upstream {
    calls: Arc<Mutex<HashMap<String, u64>>>,
}

impl Upstream {
    fn calls(&self, group: &str) -> u64 {
        self.calls.lock().get(group).copied().unwrap_or(0)
    }

    fn router(&self) -> Router {
        Router::new()
            .route("/{group}/x", post(call))
            .with_state(self.clone())
    }
}

async fn call(State(u): State<Upstream>, Path(group): Path<String>) -> (StatusCode, String) {
    let n = {
        let mut calls = u.calls.lock();
        let n = calls.entry(group).or_default();
        *n += 1;
        *n
    };
    (StatusCode::CREATED, format!("call {n}"))
}

struct Answer {
    status: StatusCode,
    headers: HeaderMap,
    body: String,
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

struct Client2 {
    client: Client<HttpConnector, Full<Bytes>>,
    addr: SocketAddr,
}

impl Client2 {
    async fn post(&self, group: &str, key: Option<&str>) -> Answer {
        let mut req = Request::builder()
            .method(Method::POST)
            .uri(format!("http://{}/{group}/x", self.addr))
            .header("authorization", "Bearer tok_failure");
        if let Some(k) = key {
            req = req.header("idempotency-key", k);
        }
        let req = req
            .body(Full::new(Bytes::from_static(b"{}")))
            .expect("request");
        let resp = tokio::time::timeout(Duration::from_secs(20), self.client.request(req))
            .await
            .expect("answered in time")
            .expect("HTTP exchange");
        let status = resp.status();
        let headers = resp.headers().clone();
        let body = resp.into_body().collect().await.expect("body").to_bytes();
        Answer {
            status,
            headers,
            body: String::from_utf8_lossy(&body).into_owned(),
        }
    }
}

async fn serve(app: Router) -> Client2 {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    Client2 {
        client: Client::builder(TokioExecutor::new()).build_http(),
        addr,
    }
}

const K1: &str = "5a1b2c3d-4e5f-4a6b-8c7d-9e0f1a2b3c4d";
const K2: &str = "6b2c3d4e-5f6a-4b7c-9d8e-0f1a2b3c4d5e";
const K3: &str = "7c3d4e5f-6a7b-4c8d-ae9f-1a2b3c4d5e6f";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shared_node_does_what_each_group_says_when_its_server_stops() {
    let Some(mut server) = server::Dedicated::start("gateway_failure_shared") else {
        return;
    };
    let dir = tempfile::tempdir().expect("temp dir");
    let policy = dir.path().join("policy.toml");
    std::fs::write(&policy, POLICY).expect("write the policy");
    // The example's own start-up: its command line, its deadline and its fallback.
    let url = server.url();
    let args = example::Args::parse(
        [
            "--listen",
            "127.0.0.1:0",
            "--policy",
            policy.to_str().expect("utf-8"),
            "--redis",
            &url,
            "--mode",
            "shared",
        ]
        .map(String::from),
        |_| None,
    )
    .expect("arguments")
    .expect("not --help");
    let node = args.gateway().expect("the gateway starts");
    let example::Node::Shared(gateway) = &node else {
        panic!("a shared node");
    };
    let gateway = Arc::clone(gateway);
    let upstream = Upstream::default();
    let c = serve(node.app(upstream.router())).await;

    // The server answers: every group counts on it, and nothing says degraded.
    for g in ["open", "closed", "local"] {
        let a = c.post(g, None).await;
        assert_eq!(a.status, StatusCode::CREATED, "{g}: {}", a.body);
        assert!(a.header("tollgate-degraded").is_none(), "{g}");
        assert!(a.header("x-ratelimit-remaining").is_some(), "{g}");
    }

    server.kill();

    // Fail-open: through, unchecked (past the limit of 3 too), and said so.
    for i in 0..4 {
        let a = c.post("open", None).await;
        assert_eq!(a.status, StatusCode::CREATED, "open {i}: {}", a.body);
        assert_eq!(a.header("tollgate-degraded"), Some("fail-open"));
        assert!(a.header("x-ratelimit-remaining").is_none());
    }
    assert_eq!(upstream.calls("open"), 5);
    // ... and without idempotency: a retry runs again.
    for _ in 0..2 {
        let a = c.post("open", Some(K1)).await;
        assert_eq!(a.status, StatusCode::CREATED);
        assert!(a.header("idempotent-replayed").is_none());
    }
    assert_eq!(upstream.calls("open"), 7);

    // Fail-closed: 503 with Retry-After, the upstream never reached, keyed or not.
    for key in [None, Some(K1)] {
        let a = c.post("closed", key).await;
        assert_eq!(a.status, StatusCode::SERVICE_UNAVAILABLE, "{}", a.body);
        assert_eq!(a.header("retry-after"), Some("1"));
        assert_eq!(a.header("tollgate-degraded"), Some("fail-closed"));
    }
    assert_eq!(upstream.calls("closed"), 1);

    // Local-only: this node's in-memory store counts alone (from zero: the fleet's count is on
    // the stopped server), enforces the limit of 2, and keeps idempotency keys.
    for left in [1, 0] {
        let a = c.post("local", None).await;
        assert_eq!(a.status, StatusCode::CREATED, "{}", a.body);
        assert_eq!(a.header("tollgate-degraded"), Some("local-only"));
        assert_eq!(
            a.header("x-ratelimit-remaining"),
            Some(left.to_string().as_str())
        );
    }
    let a = c.post("local", None).await;
    assert_eq!(a.status, StatusCode::TOO_MANY_REQUESTS, "{}", a.body);
    assert_eq!(a.header("tollgate-degraded"), Some("local-only"));
    assert!(a.header("retry-after").is_some());
    assert_eq!(upstream.calls("local"), 3);

    // The operator sees every one of them.
    let f = gateway.failures();
    assert_eq!(f.count(Some("open"), OnBackendError::FailOpen), 6);
    assert_eq!(f.count(Some("closed"), OnBackendError::FailClosed), 2);
    assert_eq!(f.count(Some("local"), OnBackendError::LocalOnly), 3);

    // The server is back: the groups count on it again, where they left off.
    server.restart();
    let a = c.post("closed", None).await;
    assert_eq!(a.status, StatusCode::CREATED, "{}", a.body);
    assert!(a.header("tollgate-degraded").is_none());
    assert_eq!(a.header("x-ratelimit-remaining"), Some("1"));
    let a = c.post("local", Some(K2)).await;
    assert_eq!(a.status, StatusCode::CREATED, "{}", a.body);
    assert!(a.header("tollgate-degraded").is_none());
    assert_eq!(a.header("x-ratelimit-remaining"), Some("0"));

    // A server that does not answer (paused) costs a request the deadline, not more.
    server.cmd(&["CLIENT", "PAUSE", "20000", "WRITE"]);
    let t = Instant::now();
    let a = c.post("closed", None).await;
    let took = t.elapsed();
    server.cmd(&["CLIENT", "UNPAUSE"]);
    assert_eq!(a.status, StatusCode::SERVICE_UNAVAILABLE, "{}", a.body);
    assert!(
        took >= Duration::from_millis(150) && took < Duration::from_millis(900),
        "answered after {took:?}: the deadline is 150 ms (the I/O timeout 1 s)"
    );
    let a = c.post("closed", None).await;
    assert_eq!(a.status, StatusCode::CREATED, "{}", a.body);

    // With the metrics feature, /metrics shows the failures and the errors behind them.
    #[cfg(feature = "metrics")]
    {
        let text = example::prometheus::handle().render();
        for line in [
            r#"tollgate_backend_failures_total{group="open",applied="fail-open"}"#,
            r#"tollgate_backend_failures_total{group="closed",applied="fail-closed"}"#,
            r#"tollgate_backend_failures_total{group="local",applied="local-only"}"#,
            r#"tollgate_backend_errors_total{operation="check",kind="unavailable"}"#,
            r#"tollgate_backend_errors_total{operation="begin",kind="unavailable"}"#,
        ] {
            assert!(text.contains(line), "no {line} in\n{text}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hybrid_node_decides_alone_for_local_only_groups() {
    let Some(mut server) = server::Dedicated::start("gateway_failure_hybrid") else {
        return;
    };
    let clock = ManualClock::new(1_700_000_040_000);
    let local = Store::open_in_memory(Options::default().clock(clock.clone())).expect("store");
    let shared = RedisStore::open(
        &server.url(),
        RedisOptions::default()
            .clock(clock.clone())
            .deadline(Duration::from_millis(150)),
    )
    .expect("redis store");
    let hybrid = HybridStore::new(
        local,
        shared,
        HybridOptions::default()
            .background(false)
            .on_unreachable(Unreachable::FailOpen, Duration::from_secs(2)),
    )
    .expect("hybrid");
    let policy = Policy::from_toml_str(POLICY).expect("policy");
    let gateway = Gateway::with_fallback(hybrid.clone(), policy, Fallback::hybrid(&hybrid));
    let upstream = Upstream::default();
    let c = serve(upstream.router().layer(gateway.layer())).await;
    hybrid.sync_now().expect("the server answers");

    server.kill();

    // Within the grace period the node decides on its own anyway (a hybrid check never asks
    // the server): every group is served. Idempotency goes to the server, so a keyed request
    // meets the failure: fail-closed refuses it, local-only keeps it on the node's store.
    for g in ["open", "closed", "local"] {
        let a = c.post(g, None).await;
        assert_eq!(a.status, StatusCode::CREATED, "{g}: {}", a.body);
        assert!(a.header("tollgate-degraded").is_none(), "{g}");
    }
    let a = c.post("closed", Some(K1)).await;
    assert_eq!(a.status, StatusCode::SERVICE_UNAVAILABLE, "{}", a.body);
    assert_eq!(a.header("tollgate-degraded"), Some("fail-closed"));
    let first = c.post("local", Some(K3)).await;
    assert_eq!(first.status, StatusCode::CREATED, "{}", first.body);
    assert_eq!(first.header("tollgate-degraded"), Some("local-only"));
    let again = c.post("local", Some(K3)).await;
    assert_eq!(again.header("idempotent-replayed"), Some("true"));
    assert_eq!(again.body, first.body);
    assert_eq!(upstream.calls("local"), 2);

    // Past the grace period the node counts its server as unreachable, and every group knows
    // it without waiting for a call to fail.
    assert!(hybrid.sync_now().is_err());
    clock.advance_ms(3_000);
    assert!(hybrid.unreachable());
    let a = c.post("closed", None).await;
    assert_eq!(a.status, StatusCode::SERVICE_UNAVAILABLE, "{}", a.body);
    assert_eq!(a.header("tollgate-degraded"), Some("fail-closed"));
    for _ in 0..4 {
        let a = c.post("open", None).await;
        assert_eq!(a.status, StatusCode::CREATED, "{}", a.body);
        assert_eq!(a.header("tollgate-degraded"), Some("fail-open"));
    }
    // Local-only: the hybrid node's own decision, its limit of 2 (1 used above, 1 by K3).
    let a = c.post("local", None).await;
    assert_eq!(a.status, StatusCode::TOO_MANY_REQUESTS, "{}", a.body);
    assert_eq!(a.header("tollgate-degraded"), Some("local-only"));

    // Back: a sync succeeds, and the groups are served as before.
    server.restart();
    hybrid.sync_now().expect("the server answers again");
    assert!(!hybrid.unreachable());
    let a = c.post("closed", None).await;
    assert_eq!(a.status, StatusCode::CREATED, "{}", a.body);
    assert!(a.header("tollgate-degraded").is_none());
}

#[test]
fn a_call_to_a_silent_server_ends_at_its_deadline() {
    let Some(server) = server::Dedicated::start("gateway_failure_deadline") else {
        return;
    };
    let store = RedisStore::open(
        &server.url(),
        RedisOptions::default()
            .io_timeout(Duration::from_secs(5))
            .deadline(Duration::from_millis(100)),
    )
    .expect("redis store");
    let limits = tollgate::Limits::new(&[tollgate::Limit::per_minute(5)]).expect("limits");
    assert!(store.check(b"k", &limits, 1).expect("check").allowed());
    server.cmd(&["CLIENT", "PAUSE", "20000", "WRITE"]);
    let t = Instant::now();
    let r = store.check(b"k", &limits, 1);
    let took = t.elapsed();
    server.cmd(&["CLIENT", "UNPAUSE"]);
    assert!(
        matches!(r, Err(tollgate::Error::BackendUnavailable { .. })),
        "{r:?}"
    );
    assert!(
        took >= Duration::from_millis(100) && took < Duration::from_secs(2),
        "failed after {took:?}: the deadline is 100 ms, the I/O timeout 5 s"
    );
    // The connection that timed out is not reused: the next call reads its own reply.
    let d = store
        .check(b"k", &limits, 1)
        .expect("check after the pause");
    assert!(d.allowed());
    assert!(d.remaining() <= 3, "{d:?}");
    // A zero deadline is refused.
    assert!(RedisStore::open(
        &server.url(),
        RedisOptions::default().deadline(Duration::ZERO)
    )
    .is_err());
}

/// With a concurrency cap, the permit is the first backend call of a request: it follows the
/// group's `on_backend_error` too (before, a failed server made every request of a capped
/// policy a store failure at that step, whatever the group said).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_capped_policy_follows_each_group_when_its_server_stops() {
    let Some(mut server) = server::Dedicated::start("gateway_failure_capped") else {
        return;
    };
    let shared = RedisStore::open(
        &server.url(),
        RedisOptions::default().deadline(Duration::from_millis(150)),
    )
    .expect("redis store");
    let local = Store::open_in_memory(Options::default()).expect("local store");
    let capped = POLICY.replace("[settings]\n", "[settings]\nmax_concurrent_per_token = 2\n");
    let policy = Policy::from_toml_str(&capped).expect("policy");
    let gateway = Gateway::with_fallback(shared, policy, Fallback::local(local.clone()));
    let upstream = Upstream::default();
    let c = serve(upstream.router().layer(gateway.layer())).await;

    // The server answers: the permit is the server's, and given back after each request.
    for g in ["open", "closed", "local"] {
        let a = c.post(g, None).await;
        assert_eq!(a.status, StatusCode::CREATED, "{g}: {}", a.body);
        assert!(a.header("tollgate-degraded").is_none(), "{g}");
    }

    server.kill();

    let a = c.post("open", None).await;
    assert_eq!(a.status, StatusCode::CREATED, "{}", a.body);
    assert_eq!(a.header("tollgate-degraded"), Some("fail-open"));
    let a = c.post("closed", None).await;
    assert_eq!(a.status, StatusCode::SERVICE_UNAVAILABLE, "{}", a.body);
    assert_eq!(a.header("tollgate-degraded"), Some("fail-closed"));
    // Local-only: the permit and the count are this node's; both requests run, one after the
    // other, each with its permit given back (none left held in the local store).
    for left in [1, 0] {
        let a = c.post("local", None).await;
        assert_eq!(a.status, StatusCode::CREATED, "{}", a.body);
        assert_eq!(a.header("tollgate-degraded"), Some("local-only"));
        assert_eq!(
            a.header("x-ratelimit-remaining"),
            Some(left.to_string().as_str())
        );
    }
    assert_eq!(upstream.calls("open"), 2);
    assert_eq!(upstream.calls("closed"), 1);
    assert_eq!(upstream.calls("local"), 3);
    let f = gateway.failures();
    assert_eq!(f.count(Some("open"), OnBackendError::FailOpen), 1);
    assert_eq!(f.count(Some("closed"), OnBackendError::FailClosed), 1);
    assert_eq!(f.count(Some("local"), OnBackendError::LocalOnly), 2);
}
