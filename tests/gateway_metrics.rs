//! The example gateway's `/metrics` (feature `metrics`), scraped over HTTP before and after
//! real traffic: the counters of admissions and refusals (window, concurrency, If-Match), of
//! requests near the limit and of idempotency outcomes move by exactly what the traffic did;
//! the backend-call histogram and the store's gauges are there.
#![cfg(all(feature = "tower", feature = "metrics"))]

#[allow(dead_code)]
#[path = "../examples/gateway.rs"]
mod example;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::http::StatusCode as AxumStatus;
use axum::routing::post;
use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tokio::sync::{mpsc, Semaphore};

type HttpClient = Client<HttpConnector, Full<Bytes>>;

const C2C: &str = "/api/pbx/calls/click-to-call";
const HOLD: &str = "/api/autocall/hold";

async fn send(
    client: &HttpClient,
    addr: SocketAddr,
    method: Method,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> (StatusCode, String) {
    let mut req = Request::builder()
        .method(method)
        .uri(format!("http://{addr}{path}"));
    for (k, v) in headers {
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
    let body = resp.into_body().collect().await.expect("body").to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

/// The scraped text, and its samples looked up by name and (some of) their labels.
struct Scrape(String);

impl Scrape {
    async fn take(client: &HttpClient, addr: SocketAddr) -> Scrape {
        // No token: /metrics is beside the gateway, not behind it.
        let (status, text) = send(client, addr, Method::GET, "/metrics", &[], "").await;
        assert_eq!(status, StatusCode::OK, "{text}");
        Scrape(text)
    }

    /// The sample `name` whose labels include `labels` (0 when there is none).
    fn get(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.find(name, labels).unwrap_or(0.0)
    }

    fn find(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        self.0
            .lines()
            .filter(|l| !l.starts_with('#'))
            .find_map(|line| {
                let (head, value) = line.rsplit_once(' ')?;
                let (n, rest) = head.split_once('{').unwrap_or((head, "}"));
                if n != name {
                    return None;
                }
                let have: Vec<(&str, &str)> = rest
                    .trim_end_matches('}')
                    .split(',')
                    .filter_map(|kv| kv.split_once('='))
                    .map(|(k, v)| (k, v.trim_matches('"')))
                    .collect();
                labels
                    .iter()
                    .all(|l| have.contains(l))
                    .then(|| value.parse().ok())?
            })
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_move_with_the_traffic() {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = dir.path().join("gateway.tg");
    let args = example::Args::parse(
        [
            "--listen",
            "127.0.0.1:0",
            "--store",
            store.to_str().expect("utf-8"),
        ]
        .map(String::from),
        |_| None,
    )
    .expect("arguments")
    .expect("not --help");
    let node = args.gateway().expect("the gateway starts");
    // The example's upstream, and a route that holds requests until the test releases them.
    let (entered_tx, mut entered) = mpsc::unbounded_channel::<()>();
    let release = Arc::new(Semaphore::new(0));
    let r = Arc::clone(&release);
    let router = example::upstream(example::Upstream::default()).route(
        HOLD,
        post(move || {
            let (tx, r) = (entered_tx.clone(), Arc::clone(&r));
            async move {
                let _ = tx.send(());
                if let Ok(p) = r.acquire().await {
                    p.forget();
                }
                (AxumStatus::CREATED, "held")
            }
        }),
    );
    let app = node.app(router);
    let listener = tokio::net::TcpListener::bind(&args.listen)
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    let client: HttpClient = Client::builder(TokioExecutor::new()).build_http();
    let before = Scrape::take(&client, addr).await;

    // Click-to-call, 10 a minute: 10 admitted (the 10th leaves nothing: near the limit), the
    // 11th refused by its window.
    let auth = |t: &'static str| ("authorization", t);
    for _ in 0..11 {
        send(
            &client,
            addr,
            Method::POST,
            C2C,
            &[auth("Bearer tok_m")],
            "{}",
        )
        .await;
    }
    // Idempotency: started, replayed, and the key with another body (422).
    let key = ("idempotency-key", "8d4e5f6a-7b8c-4d9e-8f0a-1b2c3d4e5f60");
    let a = send(
        &client,
        addr,
        Method::POST,
        C2C,
        &[auth("Bearer tok_m2"), key],
        "{}",
    )
    .await;
    assert_eq!(a.0, StatusCode::CREATED, "{}", a.1);
    let b = send(
        &client,
        addr,
        Method::POST,
        C2C,
        &[auth("Bearer tok_m2"), key],
        "{}",
    )
    .await;
    assert_eq!(b, a, "a replay");
    let c = send(
        &client,
        addr,
        Method::POST,
        C2C,
        &[auth("Bearer tok_m2"), key],
        "x",
    )
    .await;
    assert_eq!(c.0, StatusCode::UNPROCESSABLE_ENTITY);

    // In flight: a keyed request held upstream, its retry (409); four more held, so the token
    // is at the Zorio cap of 5, and the next one is refused by the cap.
    let hold_key = ("idempotency-key", "9e5f6a7b-8c9d-4e0f-9a1b-2c3d4e5f6071");
    let mut held = Vec::new();
    for i in 0..5 {
        let c = client.clone();
        let headers: Vec<(&str, &str)> = if i == 0 {
            vec![auth("Bearer tok_m3"), hold_key]
        } else {
            vec![auth("Bearer tok_m3")]
        };
        held.push(tokio::spawn(async move {
            send(&c, addr, Method::POST, HOLD, &headers, "{}").await
        }));
        entered.recv().await.expect("reached the upstream");
        if i == 0 {
            let r = send(
                &client,
                addr,
                Method::POST,
                HOLD,
                &[auth("Bearer tok_m3"), hold_key],
                "{}",
            )
            .await;
            assert_eq!(r.0, StatusCode::CONFLICT, "{}", r.1);
        }
    }
    let r = send(
        &client,
        addr,
        Method::POST,
        HOLD,
        &[auth("Bearer tok_m3")],
        "{}",
    )
    .await;
    assert_eq!(r.0, StatusCode::TOO_MANY_REQUESTS, "{}", r.1);
    release.add_permits(5);
    for h in held {
        assert_eq!(h.await.expect("task").0, StatusCode::CREATED);
    }

    // A stale If-Match (Zorio keeps versions): 412.
    let r = send(
        &client,
        addr,
        Method::PATCH,
        "/api/telesales/leads/7",
        &[auth("Bearer tok_m4"), ("if-match", "\"0-99\"")],
        "{}",
    )
    .await;
    assert_eq!(r.0, StatusCode::PRECONDITION_FAILED, "{}", r.1);

    let after = Scrape::take(&client, addr).await;
    let delta =
        |name: &str, labels: &[(&str, &str)]| after.get(name, labels) - before.get(name, labels);
    let c2c = ("group", "click-to-call");
    let autocall = ("group", "autocall");
    assert_eq!(
        delta("tollgate_requests_allowed_total", &[c2c]),
        11.0,
        "{}",
        after.0
    );
    assert_eq!(
        delta(
            "tollgate_requests_refused_total",
            &[c2c, ("reason", "window")]
        ),
        1.0
    );
    assert_eq!(delta("tollgate_requests_near_limit_total", &[c2c]), 1.0);
    for (outcome, n) in [("started", 1.0), ("replayed", 1.0), ("mismatch", 1.0)] {
        assert_eq!(
            delta("tollgate_idempotency_total", &[c2c, ("outcome", outcome)]),
            n,
            "{outcome}"
        );
    }
    assert_eq!(
        delta(
            "tollgate_idempotency_total",
            &[autocall, ("outcome", "in_flight")]
        ),
        1.0
    );
    assert_eq!(
        delta(
            "tollgate_requests_refused_total",
            &[autocall, ("reason", "concurrency")]
        ),
        1.0
    );
    assert_eq!(delta("tollgate_requests_allowed_total", &[autocall]), 5.0);
    assert_eq!(
        delta(
            "tollgate_requests_refused_total",
            &[("group", "telesales"), ("reason", "if_match")]
        ),
        1.0
    );
    // Every check, begin and peek was timed: a histogram with buckets.
    let checks = delta(
        "tollgate_backend_call_seconds_count",
        &[("operation", "check")],
    );
    assert!(checks >= 18.0, "{checks}: {}", after.0);
    assert!(
        delta(
            "tollgate_backend_call_seconds_count",
            &[("operation", "begin")]
        ) >= 4.0
    );
    assert!(after
        .find(
            "tollgate_backend_call_seconds_bucket",
            &[("operation", "check"), ("le", "0.001")]
        )
        .is_some());
    assert_eq!(after.get("tollgate_backend_errors_total", &[]), 0.0);
    // The store, read at the scrape: the (token, group) keys and the idempotency records.
    assert!(
        after.get("tollgate_store_entries", &[]) >= 6.0,
        "{}",
        after.0
    );
    assert!(after.get("tollgate_store_idempotency_records", &[]) >= 2.0);
    assert!(after.get("tollgate_store_bytes", &[]) > 0.0);
    assert!(after.find("tollgate_compactor_passes_total", &[]).is_some());
    assert!(after
        .find("tollgate_compactor_expired_total", &[("what", "windows")])
        .is_some());
}
