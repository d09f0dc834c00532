//! The runnable gateway (`examples/gateway.rs`, the Zorio policy) driven over real HTTP on
//! 127.0.0.1 with a real client: rate limits with their headers and body, idempotent retries,
//! the concurrency cap, `If-Match`, and the refusals (400, 401, 409, 412, 413, 422).
#![cfg(feature = "tower")]

#[allow(dead_code)]
#[path = "../examples/gateway.rs"]
mod example;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::routing::{get, post};
use bytes::Bytes;
use http::{HeaderMap, Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tokio::sync::Semaphore;
use tollgate::gateway::{headers, BodyStyle, Gateway, Policy};
use tollgate::{ManualClock, Options, Store};

/// A whole minute, so the windows line up.
const T0: u64 = 1_700_000_040_000;
const KEY: &str = "4d9c3a41-6bb7-4c4e-9a39-8f3c2d7e1f00";

struct Harness {
    addr: SocketAddr,
    client: Client<HttpConnector, Full<Bytes>>,
    gateway: Arc<Gateway>,
    upstream: example::Upstream,
    /// Requests to the hold routes wait for a permit.
    release: Arc<Semaphore>,
    /// Requests that reached a hold route's handler.
    entered: Arc<AtomicU64>,
    /// The store's clock.
    clock: ManualClock,
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

    fn num(&self, name: &str) -> u64 {
        self.header(name)
            .unwrap_or_else(|| panic!("no {name} header"))
            .parse()
            .unwrap_or_else(|_| panic!("{name} is not a number"))
    }
}

impl Harness {
    /// The example's router, with the Zorio policy, an in-memory store on a manual clock, and
    /// two extra routes that hold a request in flight until released.
    async fn start() -> Harness {
        let policy = Policy::load(example::ZORIO_POLICY).expect("the Zorio policy loads");
        let clock = ManualClock::new(T0);
        let store = Store::open_in_memory(Options::default().clock(clock.clone())).expect("store");
        let gateway = Gateway::new(store, policy);
        let upstream = example::Upstream::default();
        let release = Arc::new(Semaphore::new(0));
        let entered = Arc::new(AtomicU64::new(0));
        let (r1, r2) = (Arc::clone(&release), Arc::clone(&release));
        let (e1, e2) = (Arc::clone(&entered), Arc::clone(&entered));
        let router = example::upstream(upstream.clone())
            .route(
                "/api/telesales/hold",
                get(move || async move {
                    e1.fetch_add(1, Ordering::SeqCst);
                    if let Ok(p) = r1.acquire().await {
                        p.forget();
                    }
                    "released"
                }),
            )
            .route(
                "/api/autocall/hold",
                post(move || async move {
                    e2.fetch_add(1, Ordering::SeqCst);
                    if let Ok(p) = r2.acquire().await {
                        p.forget();
                    }
                    (StatusCode::CREATED, "held call")
                }),
            );
        // Fails with 503 on its first call, then succeeds.
        let flaky_calls = Arc::new(AtomicU64::new(0));
        let router = router.route(
            "/api/autocall/flaky",
            post(move || async move {
                if flaky_calls.fetch_add(1, Ordering::SeqCst) == 0 {
                    (StatusCode::SERVICE_UNAVAILABLE, "try again")
                } else {
                    (StatusCode::CREATED, "done")
                }
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
        let client = Client::builder(TokioExecutor::new()).build_http();
        Harness {
            addr,
            client,
            gateway,
            upstream,
            release,
            entered,
            clock,
        }
    }

    async fn send(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        extra: &[(&str, &str)],
        body: &str,
    ) -> Answer {
        send_with(&self.client, self.addr, method, path, token, extra, body).await
    }
}

async fn send_with(
    client: &Client<HttpConnector, Full<Bytes>>,
    addr: SocketAddr,
    method: Method,
    path: &str,
    token: Option<&str>,
    extra: &[(&str, &str)],
    body: &str,
) -> Answer {
    let mut req = Request::builder()
        .method(method)
        .uri(format!("http://{addr}{path}"));
    if let Some(t) = token {
        req = req.header("authorization", format!("Bearer {t}"));
    }
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

const C2C: &str = "/api/pbx/calls/click-to-call";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eleventh_click_to_call_in_a_minute_gets_429() {
    let h = Harness::start().await;
    for i in 1..=10u64 {
        let a = h.send(Method::POST, C2C, Some("tok_rate"), &[], "{}").await;
        assert_eq!(a.status, StatusCode::CREATED, "call {i}: {}", a.body);
        assert_eq!(a.num("x-ratelimit-limit"), 10);
        assert_eq!(a.num("x-ratelimit-remaining"), 10 - i);
        assert!(a.header("retry-after").is_none());
        assert_eq!(
            a.header("ratelimit-policy"),
            Some("\"click-to-call\";q=10;w=60, \"concurrency\";q=5;qu=\"concurrent-requests\"")
        );
        // The legacy and IETF fields agree: r is X-RateLimit-Remaining; this request holds
        // one of the token's 5 slots.
        let r = a.header("ratelimit").expect("RateLimit");
        assert!(
            r.starts_with(&format!("\"click-to-call\";r={};t=", 10 - i)),
            "{r}"
        );
        assert!(r.ends_with(", \"concurrency\";r=4"), "{r}");
    }
    let a = h.send(Method::POST, C2C, Some("tok_rate"), &[], "{}").await;
    assert_eq!(a.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(a.num("x-ratelimit-limit"), 10);
    assert_eq!(a.num("x-ratelimit-remaining"), 0);
    // The values the store itself gives for this key now.
    let policy = h.gateway.policy();
    let group = policy.group("click-to-call").expect("group");
    let key = group.key("tok_rate").expect("key");
    let peek = h
        .gateway
        .store()
        .peek(key.as_bytes(), group.limits())
        .expect("peek");
    let retry = a.num("retry-after");
    assert_eq!(a.num("x-ratelimit-reset"), peek.reset());
    assert_eq!(Some(retry), peek.retry_after());
    // A 60-second window, all ten calls at T0: back in a minute (at most one sub-window late).
    assert!((60..=64).contains(&retry), "Retry-After {retry}");
    assert!(peek.reset() >= T0 / 1000 + 60 && peek.reset() <= T0 / 1000 + 64);
    assert_eq!(a.header("content-type"), Some("application/json"));
    assert_eq!(
        a.body,
        format!(r#"{{"message": "Too many requests. Retry after {retry} seconds."}}"#)
    );
    assert_eq!(
        a.body,
        headers::too_many_requests(BodyStyle::Message, retry)
    );
    // One window, violated: its t is Retry-After itself (-12: the wait until more quota).
    assert_eq!(
        a.header("ratelimit"),
        Some(format!("\"click-to-call\";r=0;t={retry}, \"concurrency\";r=4").as_str())
    );
    // The refused call never reached the upstream.
    assert_eq!(h.upstream.click_to_call.load(Ordering::SeqCst), 10);
    // Another token has its own count; another group of the same token too.
    let a = h
        .send(Method::POST, C2C, Some("tok_other"), &[], "{}")
        .await;
    assert_eq!(a.status, StatusCode::CREATED);
    let a = h
        .send(
            Method::GET,
            "/api/pbx/extensions",
            Some("tok_rate"),
            &[],
            "",
        )
        .await;
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(a.num("x-ratelimit-limit"), 60);
    assert_eq!(a.num("x-ratelimit-remaining"), 59);
    // The enterprise override of the pbx group.
    let a = h
        .send(
            Method::GET,
            "/api/pbx/extensions",
            Some("zorio_enterprise_demo"),
            &[],
            "",
        )
        .await;
    assert_eq!(a.num("x-ratelimit-limit"), 600);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idempotent_retry_replays_and_the_upstream_sees_one_call() {
    let h = Harness::start().await;
    let key = [("idempotency-key", KEY)];
    let body = r#"{"to":"+15551234"}"#;
    let first = h
        .send(Method::POST, C2C, Some("tok_idem"), &key, body)
        .await;
    assert_eq!(first.status, StatusCode::CREATED, "{}", first.body);
    assert_eq!(
        first.body,
        r#"{"call_id":1,"status":"dialing","request_bytes":18}"#
    );
    assert!(first.header("set-cookie").is_some());
    assert!(first.header("idempotent-replayed").is_none());
    assert_eq!(first.num("x-ratelimit-remaining"), 9);

    let retry = h
        .send(Method::POST, C2C, Some("tok_idem"), &key, body)
        .await;
    assert_eq!(retry.status, StatusCode::CREATED);
    assert_eq!(retry.body, first.body);
    assert_eq!(retry.header("idempotent-replayed"), Some("true"));
    for allowed in ["content-type", "location"] {
        assert_eq!(retry.header(allowed), first.header(allowed), "{allowed}");
    }
    // Never replayed: the first exchange's cookie; Date is the replay's own.
    assert!(retry.header("set-cookie").is_none());
    // The rate-limit headers are those of now, and by default a replay spends no quota.
    assert_eq!(retry.num("x-ratelimit-remaining"), 9);
    assert_eq!(h.upstream.click_to_call.load(Ordering::SeqCst), 1);

    // The same key with another body: 422.
    let other = h
        .send(
            Method::POST,
            C2C,
            Some("tok_idem"),
            &key,
            r#"{"to":"+15550000"}"#,
        )
        .await;
    assert_eq!(other.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(
        other.body,
        r#"{"message": "Idempotency-Key was used with a different body."}"#
    );
    // The same key under another token is another request.
    let mine = h
        .send(Method::POST, C2C, Some("tok_idem2"), &key, body)
        .await;
    assert_eq!(mine.status, StatusCode::CREATED);
    assert!(mine.header("idempotent-replayed").is_none());
    // A malformed key: 400, and the upstream is not called.
    for bad in ["not-a-uuid", "4d9c3a41-6bb7-1c4e-9a39-8f3c2d7e1f00"] {
        let a = h
            .send(
                Method::POST,
                C2C,
                Some("tok_idem"),
                &[("idempotency-key", bad)],
                body,
            )
            .await;
        assert_eq!(a.status, StatusCode::BAD_REQUEST, "{bad}");
        assert!(a.body.contains("Idempotency-Key"), "{}", a.body);
    }
    assert_eq!(h.upstream.click_to_call.load(Ordering::SeqCst), 2);
    // A body over max_body_bytes: 413. The server answers before reading the whole body and
    // then closes the connection: `Connection: close` keeps the client from pooling it and
    // sending the next request on it before it sees the close (a rare IncompleteMessage).
    let big = "x".repeat(1_048_577);
    let key2 = [
        ("idempotency-key", "9b2f1c3e-0d4a-4f6b-8c7d-1e2f3a4b5c6d"),
        ("connection", "close"),
    ];
    let a = h
        .send(Method::POST, C2C, Some("tok_idem"), &key2, &big)
        .await;
    assert_eq!(a.status, StatusCode::PAYLOAD_TOO_LARGE);
    // GET ignores the header: no idempotency for safe methods.
    let a = h
        .send(
            Method::GET,
            "/api/pbx/extensions",
            Some("tok_idem"),
            &key,
            "",
        )
        .await;
    assert_eq!(a.status, StatusCode::OK);
    assert!(a.header("idempotent-replayed").is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keyed_request_in_flight_gets_409_and_only_answers_are_stored() {
    let h = Harness::start().await;
    let key = [("idempotency-key", KEY)];
    let (client, addr) = (h.client.clone(), h.addr);
    let held = tokio::spawn(async move {
        send_with(
            &client,
            addr,
            Method::POST,
            "/api/autocall/hold",
            Some("tok_409"),
            &key,
            "x",
        )
        .await
    });
    wait_entered(&h, 1).await;
    let a = h
        .send(
            Method::POST,
            "/api/autocall/hold",
            Some("tok_409"),
            &key,
            "x",
        )
        .await;
    assert_eq!(a.status, StatusCode::CONFLICT, "{}", a.body);
    h.release.add_permits(1);
    let first = held.await.expect("task");
    assert_eq!(first.status, StatusCode::CREATED);
    let again = h
        .send(
            Method::POST,
            "/api/autocall/hold",
            Some("tok_409"),
            &key,
            "x",
        )
        .await;
    assert_eq!(again.status, StatusCode::CREATED);
    assert_eq!(again.header("idempotent-replayed"), Some("true"));
    assert_eq!(again.body, "held call");

    // A 404 is stored (a 4xx is an answer).
    let k404 = [("idempotency-key", "1c8e2a57-3b9d-4e0f-a1b2-c3d4e5f60718")];
    let a = h
        .send(Method::POST, "/api/pbx/nowhere", Some("tok_409"), &k404, "")
        .await;
    assert_eq!(a.status, StatusCode::NOT_FOUND);
    let a = h
        .send(Method::POST, "/api/pbx/nowhere", Some("tok_409"), &k404, "")
        .await;
    assert_eq!(a.status, StatusCode::NOT_FOUND);
    assert_eq!(a.header("idempotent-replayed"), Some("true"));

    // A 5xx is not stored: the retry runs again.
    let k503 = [("idempotency-key", "2d7f3b68-4cae-4f10-b2c3-d4e5f6071829")];
    let a = h
        .send(
            Method::POST,
            "/api/autocall/flaky",
            Some("tok_409"),
            &k503,
            "",
        )
        .await;
    assert_eq!(a.status, StatusCode::SERVICE_UNAVAILABLE);
    let a = h
        .send(
            Method::POST,
            "/api/autocall/flaky",
            Some("tok_409"),
            &k503,
            "",
        )
        .await;
    assert_eq!(a.status, StatusCode::CREATED);
    assert!(a.header("idempotent-replayed").is_none());

    // A keyed request refused by the rate limit (429) is not stored either: once the window
    // has room again, the retry runs.
    for _ in 0..10 {
        let a = h.send(Method::POST, C2C, Some("tok_429"), &[], "{}").await;
        assert_eq!(a.status, StatusCode::CREATED);
    }
    let k429 = [("idempotency-key", "3e8a4c79-5dbf-4a21-83d4-e5f607182930")];
    let a = h
        .send(Method::POST, C2C, Some("tok_429"), &k429, "{}")
        .await;
    assert_eq!(a.status, StatusCode::TOO_MANY_REQUESTS);
    h.clock.advance_ms(65_000);
    let a = h
        .send(Method::POST, C2C, Some("tok_429"), &k429, "{}")
        .await;
    assert_eq!(a.status, StatusCode::CREATED, "{}", a.body);
    assert!(a.header("idempotent-replayed").is_none());
    assert_eq!(h.upstream.click_to_call.load(Ordering::SeqCst), 11);
}

/// Wait until `n` requests in all have reached the hold routes' handlers.
async fn wait_entered(h: &Harness, n: u64) {
    for _ in 0..2_000 {
        if h.entered.load(Ordering::SeqCst) >= n {
            return;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    panic!("{n} requests never reached the upstream");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_over_the_concurrency_cap_is_refused() {
    let h = Harness::start().await;
    let cap = h
        .gateway
        .policy()
        .settings()
        .max_concurrent_per_token()
        .expect("the Zorio policy has a cap");
    assert_eq!(cap, 5);
    let mut held = Vec::new();
    for _ in 0..cap {
        let (client, addr) = (h.client.clone(), h.addr);
        held.push(tokio::spawn(async move {
            send_with(
                &client,
                addr,
                Method::GET,
                "/api/telesales/hold",
                Some("tok_conc"),
                &[],
                "",
            )
            .await
        }));
    }
    wait_entered(&h, u64::from(cap)).await;
    assert_eq!(h.gateway.concurrency().in_flight("tok_conc").unwrap(), cap);
    let a = h
        .send(
            Method::GET,
            "/api/telesales/leads",
            Some("tok_conc"),
            &[],
            "",
        )
        .await;
    assert_eq!(a.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(a.body, r#"{"message": "Too many concurrent connections."}"#);
    // Another token is not affected.
    let a = h
        .send(
            Method::GET,
            "/api/telesales/leads",
            Some("tok_free"),
            &[],
            "",
        )
        .await;
    assert_eq!(a.status, StatusCode::OK);
    // Release the held requests: all answered, and the slots are free again.
    h.release.add_permits(cap as usize);
    for t in held {
        let a = t.await.expect("task");
        assert_eq!(a.status, StatusCode::OK);
        assert_eq!(a.body, "released");
    }
    assert_eq!(h.gateway.concurrency().in_flight("tok_conc").unwrap(), 0);
    let a = h
        .send(
            Method::GET,
            "/api/telesales/leads",
            Some("tok_conc"),
            &[],
            "",
        )
        .await;
    assert_eq!(a.status, StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_token_gets_401() {
    let h = Harness::start().await;
    let a = h
        .send(Method::GET, "/api/pbx/extensions", None, &[], "")
        .await;
    assert_eq!(a.status, StatusCode::UNAUTHORIZED);
    assert_eq!(a.header("www-authenticate"), Some("Bearer"));
    assert!(a.header("x-ratelimit-limit").is_none());
    let long = "t".repeat(tollgate::gateway::MAX_TOKEN_LEN + 1);
    let a = h
        .send(Method::GET, "/api/pbx/extensions", Some(&long), &[], "")
        .await;
    assert_eq!(a.status, StatusCode::UNAUTHORIZED);
    let a = h
        .send(
            Method::GET,
            "/api/pbx/extensions",
            None,
            &[("authorization", "Basic dXNlcjpwdw==")],
            "",
        )
        .await;
    assert_eq!(a.status, StatusCode::UNAUTHORIZED);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_if_match_gets_412() {
    let h = Harness::start().await;
    let lead = "/api/telesales/leads/7";
    let got = h.send(Method::GET, lead, Some("tok_v"), &[], "").await;
    assert_eq!(got.status, StatusCode::OK);
    let etag = got.header("etag").expect("ETag").to_owned();
    let first = h
        .send(
            Method::PATCH,
            lead,
            Some("tok_v"),
            &[("if-match", &etag)],
            "{}",
        )
        .await;
    assert_eq!(first.status, StatusCode::OK);
    let new = first.header("etag").expect("new ETag").to_owned();
    assert_ne!(new, etag);
    // A second writer that read before the first write: 412.
    let second = h
        .send(
            Method::PATCH,
            lead,
            Some("tok_w"),
            &[("if-match", &etag)],
            "{}",
        )
        .await;
    assert_eq!(second.status, StatusCode::PRECONDITION_FAILED);
    assert_eq!(
        second.body,
        r#"{"message": "Resource has changed, please GET again."}"#
    );
    assert_eq!(second.header("etag"), Some(new.as_str()));
    // GET again, then the write goes through.
    let got = h.send(Method::GET, lead, Some("tok_w"), &[], "").await;
    assert_eq!(got.header("etag"), Some(new.as_str()));
    let ok = h
        .send(
            Method::PATCH,
            lead,
            Some("tok_w"),
            &[("if-match", &new)],
            "{}",
        )
        .await;
    assert_eq!(ok.status, StatusCode::OK);
}
