//! Versions (`If-Match`) and the concurrency cap of the middleware live in the backend: two
//! gateway instances on one real redis-server (two `RedisStore`s, as two nodes would have)
//! agree on every ETag and share one cap per token; and a permit is given back whatever ends
//! the request (answered, failed upstream, future dropped).
//!
//! The slow upstream is a route that waits on a semaphore the test controls, and tells the
//! test it was entered through a channel: nothing here sleeps.
#![cfg(all(feature = "tower", feature = "redis"))]

#[allow(dead_code)]
#[path = "../examples/gateway.rs"]
mod example;
mod server;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::routing::get;
use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tokio::sync::{mpsc, Semaphore};
use tollgate::fleet::{RedisOptions, RedisStore};
use tollgate::gateway::{Gateway, GatewayBody, Policy};
use tollgate::{ManualClock, Options, Store};
use tower::Service;

/// A whole minute, so the windows line up.
const T0: u64 = 1_700_000_040_000;
const LEAD: &str = "/api/telesales/leads/7";
const HOLD: &str = "/api/telesales/hold";

/// The slow route's controls: `release` lets held requests finish, `entered` says one arrived.
struct Slow {
    release: Arc<Semaphore>,
    entered: mpsc::UnboundedSender<()>,
}

/// One gateway instance on its own `RedisStore` (same server, same prefix), on a free port,
/// in front of the example's upstream and a slow route.
async fn node(url: &str, prefix: &str, clock: &ManualClock, slow: &Slow) -> SocketAddr {
    let opts = RedisOptions::default().prefix(prefix).clock(clock.clone());
    let store = RedisStore::open(url, opts).expect("redis store");
    let policy = Policy::load(example::ZORIO_POLICY).expect("the Zorio policy loads");
    let gateway = Gateway::new(store, policy);
    let (release, entered) = (Arc::clone(&slow.release), slow.entered.clone());
    let router = example::upstream(example::Upstream::default()).route(
        HOLD,
        get(move || async move {
            let _ = entered.send(());
            if let Ok(p) = release.acquire().await {
                p.forget();
            }
            "released"
        }),
    );
    let app = example::app(&gateway, router);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    addr
}

struct Answer {
    status: StatusCode,
    headers: http::HeaderMap,
    body: String,
}

impl Answer {
    fn etag(&self) -> Option<String> {
        self.headers
            .get("etag")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    }
}

async fn send(
    client: &Client<HttpConnector, Full<Bytes>>,
    addr: SocketAddr,
    method: Method,
    path: &str,
    token: &str,
    extra: &[(&str, &str)],
) -> Answer {
    let mut req = Request::builder()
        .method(method)
        .uri(format!("http://{addr}{path}"))
        .header("authorization", format!("Bearer {token}"));
    for (k, v) in extra {
        req = req.header(*k, *v);
    }
    let req = req.body(Full::new(Bytes::from("{}"))).expect("request");
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

/// Wait for `n` requests to reach the slow route (bounded, so a bug fails instead of hanging).
async fn entered(rx: &mut mpsc::UnboundedReceiver<()>, n: usize) {
    for i in 0..n {
        tokio::time::timeout(Duration::from_secs(20), rx.recv())
            .await
            .unwrap_or_else(|_| panic!("request {i} of {n} never reached the upstream"))
            .expect("the routes hold a sender");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_gateways_on_one_redis_share_versions_and_the_concurrency_cap() {
    let Some(url) = server::url("gateway_fleet") else {
        return;
    };
    let prefix = server::prefix("gateway-fleet");
    let clock = ManualClock::new(T0);
    let (tx, mut rx) = mpsc::unbounded_channel();
    let slow = Slow {
        release: Arc::new(Semaphore::new(0)),
        entered: tx,
    };
    let a = node(&url, &prefix, &clock, &slow).await;
    let b = node(&url, &prefix, &clock, &slow).await;
    let client = Client::builder(TokioExecutor::new()).build_http();

    // Versions: a lead read on A, written on A; a writer on B with the ETag it read before
    // gets 412 and the ETag A's write made.
    let got = send(&client, a, Method::GET, LEAD, "tok_v", &[]).await;
    assert_eq!(got.status, StatusCode::OK, "{}", got.body);
    let seen = got.etag().expect("ETag");
    let on_b = send(&client, b, Method::GET, LEAD, "tok_w", &[]).await;
    assert_eq!(on_b.etag().as_deref(), Some(seen.as_str()), "one ETag");
    let w = send(
        &client,
        a,
        Method::PATCH,
        LEAD,
        "tok_v",
        &[("if-match", &seen)],
    )
    .await;
    assert_eq!(w.status, StatusCode::OK, "{}", w.body);
    let new = w.etag().expect("new ETag");
    assert_ne!(new, seen);
    let stale = send(
        &client,
        b,
        Method::PATCH,
        LEAD,
        "tok_w",
        &[("if-match", &seen)],
    )
    .await;
    assert_eq!(
        stale.status,
        StatusCode::PRECONDITION_FAILED,
        "{}",
        stale.body
    );
    assert_eq!(stale.etag().as_deref(), Some(new.as_str()));
    let again = send(
        &client,
        b,
        Method::PATCH,
        LEAD,
        "tok_w",
        &[("if-match", &new)],
    )
    .await;
    assert_eq!(again.status, StatusCode::OK, "{}", again.body);
    let newer = again.etag().expect("ETag");
    let back_on_a = send(&client, a, Method::GET, LEAD, "tok_v", &[]).await;
    assert_eq!(back_on_a.etag(), Some(newer));

    // The cap (5 per token in the Zorio policy) across both nodes: 3 held on A, 2 on B; a
    // sixth is refused on either node; another token is not affected.
    let mut held = Vec::new();
    for i in 0..5 {
        let (client, to) = (client.clone(), if i < 3 { a } else { b });
        held.push(tokio::spawn(async move {
            send(&client, to, Method::GET, HOLD, "tok_conc", &[]).await
        }));
    }
    entered(&mut rx, 5).await;
    for to in [a, b] {
        let r = send(
            &client,
            to,
            Method::GET,
            "/api/telesales/leads",
            "tok_conc",
            &[],
        )
        .await;
        assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS, "{}", r.body);
        assert_eq!(r.body, r#"{"message": "Too many concurrent connections."}"#);
    }
    let free = send(
        &client,
        b,
        Method::GET,
        "/api/telesales/leads",
        "tok_free",
        &[],
    )
    .await;
    assert_eq!(free.status, StatusCode::OK);
    // Answered requests give their permits back, on both nodes.
    slow.release.add_permits(5);
    for t in held {
        let r = t.await.expect("task");
        assert_eq!((r.status, r.body.as_str()), (StatusCode::OK, "released"));
    }
    for to in [a, b] {
        let r = send(
            &client,
            to,
            Method::GET,
            "/api/telesales/leads",
            "tok_conc",
            &[],
        )
        .await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    }
}

/// A request whose future is dropped (the client went away, a timeout above the gateway) or
/// whose upstream fails gives its permit back; one nobody gives back (its process died) ends
/// at the lease, on the gateway's injected clock.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_permit_ends_with_its_request_whatever_ends_it() {
    let clock = ManualClock::new(T0);
    let store = Store::open_in_memory(Options::default().compactor(false).clock(clock.clone()))
        .expect("store");
    let policy = Policy::load(example::ZORIO_POLICY).expect("the Zorio policy loads");
    let gateway = Gateway::new(store, policy);
    gateway.set_permit_lease(Duration::from_secs(30));
    let (tx, mut rx) = mpsc::unbounded_channel::<()>();
    let inner = tower::service_fn(move |req: Request<GatewayBody>| {
        let tx = tx.clone();
        async move {
            let _ = tx.send(());
            if req.uri().path().ends_with("/fail") {
                return Err("upstream failed");
            }
            // Never answers: only dropping the future ends this request.
            std::future::pending::<()>().await;
            Ok(Response::new(Full::new(Bytes::new())))
        }
    });
    let svc = tower::Layer::layer(&gateway.layer(), inner);
    let call = |path: &'static str| {
        let mut svc = svc.clone();
        let req = Request::builder()
            .uri(path)
            .header("authorization", "Bearer tok_drop")
            .body(Full::new(Bytes::new()))
            .expect("request");
        tokio::spawn(async move { svc.call(req).await.map(|r| r.status()) })
    };
    let tasks: Vec<_> = (0..5).map(|_| call(HOLD)).collect();
    for _ in 0..5 {
        rx.recv().await.expect("entered");
    }
    assert_eq!(
        gateway.concurrency().in_flight("tok_drop").expect("count"),
        5
    );
    let refused = call(HOLD).await.expect("task").expect("answered");
    assert_eq!(refused, StatusCode::TOO_MANY_REQUESTS);
    // Drop every pending future: every permit comes back.
    for t in tasks {
        t.abort();
        let _ = t.await;
    }
    assert_eq!(
        gateway.concurrency().in_flight("tok_drop").expect("count"),
        0
    );
    // A failing upstream gives its permit back too.
    let failed = call("/api/telesales/fail").await.expect("task");
    assert_eq!(failed, Err("upstream failed"));
    rx.recv().await.expect("entered");
    assert_eq!(
        gateway.concurrency().in_flight("tok_drop").expect("count"),
        0
    );
    // Permits nobody gives back (the guards are forgotten, as a crash would) end at the lease.
    let limiter = gateway.concurrency();
    for _ in 0..5 {
        std::mem::forget(
            limiter
                .try_acquire("tok_drop")
                .expect("backend")
                .expect("slot"),
        );
    }
    let refused = call(HOLD).await.expect("task").expect("answered");
    assert_eq!(refused, StatusCode::TOO_MANY_REQUESTS);
    clock.advance_ms(30_000 - 1);
    assert_eq!(
        gateway.concurrency().in_flight("tok_drop").expect("count"),
        5
    );
    clock.advance_ms(1);
    assert_eq!(
        gateway.concurrency().in_flight("tok_drop").expect("count"),
        0
    );
    let t = call(HOLD);
    rx.recv().await.expect("a slot again");
    t.abort();
}
