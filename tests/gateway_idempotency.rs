//! Idempotency policies per group, over real HTTP on 127.0.0.1: the key format (`uuid-v4`,
//! `uuid`, `opaque`), the statuses stored for replay, the replay marker's name, and the 409 of
//! a retry while the first request is still running (its upstream held on a `Notify` the test
//! releases: no sleeps).
#![cfg(feature = "tower")]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

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
use tokio::sync::{mpsc, Notify};
use tollgate::gateway::{Gateway, Policy};
use tollgate::{Options, Store};

const POLICY: &str = r#"
[settings]
body_style = "error"

[[group]]
name = "v4"
route = "/v4/*"
windows = [{ limit = 100, window = "60s" }]

[[group]]
name = "any-uuid"
route = "/uuid/*"
windows = [{ limit = 100, window = "60s" }]
[group.idempotency]
key_format = "uuid"

[[group]]
name = "opaque"
route = "/opaque/*"
windows = [{ limit = 100, window = "60s" }]
[group.idempotency]
key_format = "opaque"
max_key_len = 16

[[group]]
name = "store-all"
route = "/all/*"
windows = [{ limit = 100, window = "60s" }]
[group.idempotency]
store_statuses = ["100-599"]
except_statuses = []

[[group]]
name = "never-5xx"
route = "/never5xx/*"
windows = [{ limit = 100, window = "60s" }]
[group.idempotency]
except_statuses = ["5xx"]

[[group]]
name = "only-2xx"
route = "/only2xx/*"
windows = [{ limit = 100, window = "60s" }]
[group.idempotency]
store_statuses = ["2xx"]

[[group]]
name = "custom-marker"
route = "/custom/*"
windows = [{ limit = 100, window = "60s" }]
[group.idempotency]
replay_header = "X-Idempotent-Replay"

[[group]]
name = "slow"
route = "/slow/*"
windows = [{ limit = 100, window = "60s" }]
"#;

const V4: &str = "4d9c3a41-6bb7-4c4e-9a39-8f3c2d7e1f00";
const V7: &str = "01890a5d-ac96-774b-bcce-b302099a8057";

/// The upstream: `POST /<group>/status/<code>` answers `<code>` with `call <n>` (n counting
/// that path's calls); `POST /slow/go` reports that it started, then waits for the test.
#[derive(Clone, Default)]
struct Upstream {
    calls: Arc<Mutex<HashMap<String, u64>>>,
    entered: Option<mpsc::UnboundedSender<()>>,
    release: Arc<Notify>,
}

impl Upstream {
    fn calls(&self, path: &str) -> u64 {
        self.calls.lock().get(path).copied().unwrap_or(0)
    }
}

async fn status(
    State(u): State<Upstream>,
    Path((group, code)): Path<(String, u16)>,
) -> (StatusCode, String) {
    let path = format!("/{group}/status/{code}");
    let n = {
        let mut calls = u.calls.lock();
        let n = calls.entry(path).or_default();
        *n += 1;
        *n
    };
    (
        StatusCode::from_u16(code).unwrap_or(StatusCode::OK),
        format!("call {n}"),
    )
}

async fn slow(State(u): State<Upstream>) -> (StatusCode, &'static str) {
    *u.calls.lock().entry("/slow/go".into()).or_default() += 1;
    if let Some(tx) = &u.entered {
        let _ = tx.send(());
    }
    u.release.notified().await;
    (StatusCode::CREATED, "slow done")
}

struct Harness {
    addr: SocketAddr,
    client: Client<HttpConnector, Full<Bytes>>,
    upstream: Upstream,
    entered: mpsc::UnboundedReceiver<()>,
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

async fn start() -> Harness {
    let store = Store::open_in_memory(Options::default()).expect("store");
    let gateway = Gateway::new(store, Policy::from_toml_str(POLICY).expect("policy"));
    let (tx, entered) = mpsc::unbounded_channel();
    let upstream = Upstream {
        entered: Some(tx),
        ..Upstream::default()
    };
    let app = Router::new()
        .route("/{group}/status/{code}", post(status))
        .route("/slow/go", post(slow))
        .with_state(upstream.clone())
        .layer(gateway.layer());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    Harness {
        addr,
        client: Client::builder(TokioExecutor::new()).build_http(),
        upstream,
        entered,
    }
}

async fn post_keyed(
    client: &Client<HttpConnector, Full<Bytes>>,
    addr: SocketAddr,
    path: &str,
    key: &str,
    body: &str,
) -> Answer {
    let req = Request::builder()
        .method(Method::POST)
        .uri(format!("http://{addr}{path}"))
        // A token per group: each group's keys are in a scope of their own.
        .header(
            "authorization",
            format!("Bearer tok_{}", path.split('/').nth(1).unwrap_or("")),
        )
        .header("idempotency-key", key)
        .body(Full::new(Bytes::from(body.to_owned())))
        .expect("request");
    let resp = tokio::time::timeout(Duration::from_secs(20), client.request(req))
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

impl Harness {
    async fn post(&self, path: &str, key: &str) -> Answer {
        post_keyed(&self.client, self.addr, path, key, "{}").await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_while_the_first_runs_gets_409_then_the_replay() {
    let mut h = start().await;
    let (client, addr) = (h.client.clone(), h.addr);
    let first = tokio::spawn(async move { post_keyed(&client, addr, "/slow/go", V4, "{}").await });
    // The first request is in the upstream, which waits for `release`.
    h.entered.recv().await.expect("the upstream was reached");
    let retry = h.post("/slow/go", V4).await;
    assert_eq!(retry.status, StatusCode::CONFLICT, "{}", retry.body);
    assert!(
        retry.body.contains("IDEMPOTENCY_KEY_IN_FLIGHT"),
        "{}",
        retry.body
    );
    // Another body under the same key while it runs: 422, the key names another request.
    let other = post_keyed(&h.client, h.addr, "/slow/go", V4, r#"{"x":1}"#).await;
    assert_eq!(
        other.status,
        StatusCode::UNPROCESSABLE_ENTITY,
        "{}",
        other.body
    );
    h.upstream.release.notify_one();
    let first = first.await.expect("task");
    assert_eq!(first.status, StatusCode::CREATED);
    assert!(first.header("idempotent-replayed").is_none());
    let again = h.post("/slow/go", V4).await;
    assert_eq!(
        (again.status, again.body.as_str()),
        (StatusCode::CREATED, "slow done")
    );
    assert_eq!(again.header("idempotent-replayed"), Some("true"));
    assert_eq!(h.upstream.calls("/slow/go"), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_key_format_is_the_groups() {
    let h = start().await;
    // uuid-v4 (the default): a v7 key is refused with 400 and reaches nothing.
    let a = h.post("/v4/status/201", V7).await;
    assert_eq!(a.status, StatusCode::BAD_REQUEST, "{}", a.body);
    assert!(
        a.body.contains("Idempotency-Key must be a UUID v4."),
        "{}",
        a.body
    );
    assert_eq!(h.upstream.calls("/v4/status/201"), 0);
    assert_eq!(
        h.post("/v4/status/201", V4).await.status,
        StatusCode::CREATED
    );

    // uuid: v7 and v4 are accepted, and a v7 retry replays.
    for key in [V7, V4] {
        let a = h.post("/uuid/status/201", key).await;
        assert_eq!(a.status, StatusCode::CREATED, "{key}: {}", a.body);
        let b = h.post("/uuid/status/201", key).await;
        assert_eq!(b.header("idempotent-replayed"), Some("true"), "{key}");
        assert_eq!(b.body, a.body);
    }
    assert_eq!(h.upstream.calls("/uuid/status/201"), 2);
    let a = h.post("/uuid/status/201", "order-17").await;
    assert_eq!(a.status, StatusCode::BAD_REQUEST);
    assert!(a.body.contains("must be a UUID."), "{}", a.body);

    // opaque, at most 16 characters: a client's own string is a key.
    let a = h.post("/opaque/status/201", "order-17").await;
    assert_eq!((a.status, a.body.as_str()), (StatusCode::CREATED, "call 1"));
    let b = h.post("/opaque/status/201", "\"order-17\"").await;
    assert_eq!(b.header("idempotent-replayed"), Some("true"));
    assert_eq!(b.body, "call 1");
    let c = h.post("/opaque/status/201", "order-18").await;
    assert_eq!(c.body, "call 2");
    let long = h.post("/opaque/status/201", "order-0123456789ab").await;
    assert_eq!(long.status, StatusCode::BAD_REQUEST);
    assert!(
        long.body
            .contains("Idempotency-Key must be 1 to 16 printable ASCII characters."),
        "{}",
        long.body
    );
    assert_eq!(h.upstream.calls("/opaque/status/201"), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_statuses_stored_are_the_groups() {
    let h = start().await;
    // Stored whatever the status: a 500 is replayed, the upstream runs once.
    let a = h.post("/all/status/500", V4).await;
    assert_eq!(a.status, StatusCode::INTERNAL_SERVER_ERROR);
    let b = h.post("/all/status/500", V4).await;
    assert_eq!(b.status, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(b.header("idempotent-replayed"), Some("true"));
    assert_eq!(h.upstream.calls("/all/status/500"), 1);

    // Never a 5xx: the retry runs again (and its 201 is then stored).
    let a = h.post("/never5xx/status/500", V4).await;
    assert_eq!(
        (a.status, a.body.as_str()),
        (StatusCode::INTERNAL_SERVER_ERROR, "call 1")
    );
    let b = h.post("/never5xx/status/500", V4).await;
    assert_eq!(b.body, "call 2");
    assert!(b.header("idempotent-replayed").is_none());
    assert_eq!(h.upstream.calls("/never5xx/status/500"), 2);
    // ... while a 404 is an answer, stored as by default.
    let key = "1c8e2a57-3b9d-4e0f-a1b2-c3d4e5f60718";
    h.post("/never5xx/status/404", key).await;
    let b = h.post("/never5xx/status/404", key).await;
    assert_eq!(b.header("idempotent-replayed"), Some("true"));
    assert_eq!(h.upstream.calls("/never5xx/status/404"), 1);

    // Only 2xx: the 404 runs again.
    h.post("/only2xx/status/404", key).await;
    let b = h.post("/only2xx/status/404", key).await;
    assert_eq!(
        (b.status, b.body.as_str()),
        (StatusCode::NOT_FOUND, "call 2")
    );
    assert!(b.header("idempotent-replayed").is_none());
    h.post("/only2xx/status/200", V4).await;
    let b = h.post("/only2xx/status/200", V4).await;
    assert_eq!(b.header("idempotent-replayed"), Some("true"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_replay_marker_is_named_by_the_group() {
    let h = start().await;
    let a = h.post("/custom/status/201", V4).await;
    assert!(a.header("x-idempotent-replay").is_none());
    let b = h.post("/custom/status/201", V4).await;
    assert_eq!(b.body, a.body);
    assert_eq!(b.header("x-idempotent-replay"), Some("true"));
    assert!(b.header("idempotent-replayed").is_none());
    // The other groups keep the default name.
    h.post("/v4/status/201", V4).await;
    let b = h.post("/v4/status/201", V4).await;
    assert_eq!(b.header("idempotent-replayed"), Some("true"));
    assert!(b.header("x-idempotent-replay").is_none());
}
