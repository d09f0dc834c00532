//! The tower middleware on the shared Redis / Valkey backend, over real HTTP: two gateway
//! instances (two `RedisStore`s, as two nodes would have) in front of the example's upstream,
//! on one real redis-server, share a token's quota and its idempotency keys.
#![cfg(all(feature = "tower", feature = "redis"))]

#[allow(dead_code)]
#[path = "../examples/gateway.rs"]
mod example;
mod server;

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tollgate::fleet::{RedisOptions, RedisStore};
use tollgate::gateway::{Gateway, Policy};
use tollgate::ManualClock;

/// A whole minute, so the windows line up.
const T0: u64 = 1_700_000_040_000;
const C2C: &str = "/api/pbx/calls/click-to-call";

/// One gateway instance on its own `RedisStore` (same server, same prefix), on a free port.
async fn node(url: &str, prefix: &str, clock: &ManualClock) -> SocketAddr {
    let opts = RedisOptions::default().prefix(prefix).clock(clock.clone());
    let store = RedisStore::open(url, opts).expect("redis store");
    let policy = Policy::load(example::ZORIO_POLICY).expect("the Zorio policy loads");
    let gateway = Gateway::new(store, policy);
    let app = example::app(&gateway, example::upstream(example::Upstream::default()));
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

async fn send(
    client: &Client<HttpConnector, Full<Bytes>>,
    addr: SocketAddr,
    token: &str,
    extra: &[(&str, &str)],
    body: &str,
) -> Answer {
    let mut req = Request::builder()
        .method(Method::POST)
        .uri(format!("http://{addr}{C2C}"))
        .header("authorization", format!("Bearer {token}"));
    for (k, v) in extra {
        req = req.header(*k, *v);
    }
    let req = req
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_gateways_on_one_redis_share_quota_and_idempotency_keys() {
    let Some(url) = server::url("gateway_redis") else {
        return;
    };
    let prefix = server::prefix("gateway-redis");
    let clock = ManualClock::new(T0);
    let a = node(&url, &prefix, &clock).await;
    let b = node(&url, &prefix, &clock).await;
    let client = Client::builder(TokioExecutor::new()).build_http();

    // Click-to-call allows 10 a minute per token: 10 calls alternating between the nodes are
    // admitted, each node's headers counting the fleet's calls, and the 11th is refused on
    // either node.
    for i in 1..=10u64 {
        let to = if i % 2 == 0 { a } else { b };
        let r = send(&client, to, "tok_fleet", &[], "{}").await;
        assert_eq!(r.status, StatusCode::CREATED, "call {i}: {}", r.body);
        let remaining = r.headers["x-ratelimit-remaining"].to_str().expect("ascii");
        assert_eq!(remaining, (10 - i).to_string(), "call {i}");
    }
    for to in [a, b] {
        let r = send(&client, to, "tok_fleet", &[], "{}").await;
        assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS, "{}", r.body);
        assert!(r.headers.contains_key("retry-after"));
    }
    // Another token is untouched.
    let r = send(&client, b, "tok_other", &[], "{}").await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);

    // An idempotent call made on one node replays on the other, and the key with another body
    // is refused there with 422.
    let key = ("idempotency-key", "0b6c2f0e-8d51-4c4b-9f3e-2a7d5c1e9b10");
    let first = send(&client, a, "tok_idem", &[key], r#"{"to":"+1555"}"#).await;
    assert_eq!(first.status, StatusCode::CREATED, "{}", first.body);
    let again = send(&client, b, "tok_idem", &[key], r#"{"to":"+1555"}"#).await;
    assert_eq!(again.status, StatusCode::CREATED);
    assert_eq!(again.body, first.body, "the stored response, replayed");
    assert_eq!(
        again
            .headers
            .get("idempotent-replayed")
            .and_then(|v| v.to_str().ok()),
        Some("true")
    );
    let other = send(&client, b, "tok_idem", &[key], r#"{"to":"+1666"}"#).await;
    assert_eq!(
        other.status,
        StatusCode::UNPROCESSABLE_ENTITY,
        "{}",
        other.body
    );
}

/// One gateway built by the example's own command line, served on a free port.
async fn from_command_line(args: &[&str]) -> (example::Node, SocketAddr) {
    let args = example::Args::parse(args.iter().map(|s| s.to_string()), |_| None)
        .expect("arguments")
        .expect("not --help");
    let node = args.gateway().expect("the gateway starts");
    let app = node.app(example::upstream(example::Upstream::default()));
    let listener = tokio::net::TcpListener::bind(&args.listen)
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    (node, addr)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_example_gateways_started_with_redis_share_quota_and_keys() {
    let Some(url) = server::url("gateway_redis_cli") else {
        return;
    };
    let prefix = server::prefix("gateway-cli");
    let dir = tempfile::tempdir().expect("temp dir");
    let mut nodes = Vec::new();
    for i in 0..2 {
        // --store: never used by a shared node (it keeps no file); a distinct path anyway, as
        // two nodes on one machine would have.
        let store = dir.path().join(format!("node{i}.tg"));
        let store = store.to_str().expect("utf-8");
        let args = [
            "--listen",
            "127.0.0.1:0",
            "--policy",
            example::ZORIO_POLICY,
            "--redis",
            &url,
            "--mode",
            "shared",
            "--redis-prefix",
            &prefix,
            "--store",
            store,
        ];
        nodes.push(from_command_line(&args).await);
    }
    assert!(nodes.iter().all(|(n, _)| n.server_problem().is_none()));
    assert!(matches!(nodes[0].0, example::Node::Shared(_)));
    assert!(
        !dir.path().join("node0.tg").exists(),
        "a shared node keeps no file"
    );
    let (a, b) = (nodes[0].1, nodes[1].1);
    let client = Client::builder(TokioExecutor::new()).build_http();

    // The quota: 10 click-to-calls a minute per token, counted by the fleet (the real clock:
    // a sliding window never admits more than 10 in any minute, wherever the calls fall).
    for i in 1..=10u64 {
        let to = if i % 2 == 0 { a } else { b };
        let r = send(&client, to, "tok_cli", &[], "{}").await;
        assert_eq!(r.status, StatusCode::CREATED, "call {i}: {}", r.body);
        assert_eq!(
            r.headers["x-ratelimit-remaining"],
            (10 - i).to_string().as_str()
        );
    }
    for to in [a, b] {
        let r = send(&client, to, "tok_cli", &[], "{}").await;
        assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS, "{}", r.body);
    }

    // The idempotency keys: made on one node, replayed (or refused with 422) on the other.
    let key = ("idempotency-key", "6f1d2c3b-4a59-4e68-b7a6-958473625140");
    let first = send(&client, b, "tok_cli_idem", &[key], r#"{"to":"+1555"}"#).await;
    assert_eq!(first.status, StatusCode::CREATED, "{}", first.body);
    let again = send(&client, a, "tok_cli_idem", &[key], r#"{"to":"+1555"}"#).await;
    assert_eq!(
        (again.status, &again.body),
        (StatusCode::CREATED, &first.body)
    );
    assert_eq!(again.headers["idempotent-replayed"], "true");
    let other = send(&client, a, "tok_cli_idem", &[key], r#"{"to":"+1666"}"#).await;
    assert_eq!(
        other.status,
        StatusCode::UNPROCESSABLE_ENTITY,
        "{}",
        other.body
    );
}
