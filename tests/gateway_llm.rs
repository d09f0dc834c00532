//! The LLM gateway (`examples/llm_gateway.rs`, `examples/policies/llm.toml`): a metered group
//! of tokens per minute and per day per API key in front of a mock model, over real HTTP on
//! 127.0.0.1 with a manual clock (reservations settled at the head, by a trailer, by a dropped
//! body; overdrafts and their Retry-After; replays not charged again).
#![cfg(feature = "tower")]

#[allow(dead_code)]
#[path = "../examples/llm_gateway.rs"]
mod example;

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use bytes::Bytes;
use http::{HeaderMap, Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tollgate::gateway::{Gateway, Policy};
use tollgate::{ManualClock, Options, Store};

/// A whole minute, so the windows line up.
const T0: u64 = 1_700_000_040_000;
const KEY: &str = "0b7e4c8e-2f7a-4d2b-9c1e-5a6f7d8e9f01";
const CHAT: &str = "/v1/chat/completions";
const STREAM: &str = "/v1/chat/stream";

struct Harness {
    addr: SocketAddr,
    client: Client<HttpConnector, Full<Bytes>>,
    gateway: Arc<Gateway>,
    upstream: example::Upstream,
    clock: ManualClock,
    /// The same app, to call without a connection.
    app: Router,
}

struct Answer {
    status: StatusCode,
    headers: HeaderMap,
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
    async fn start(policy: Policy) -> Harness {
        let clock = ManualClock::new(T0);
        let store = Store::open_in_memory(Options::default().clock(clock.clone())).expect("store");
        let gateway = Gateway::new(store, policy);
        let upstream = example::Upstream::default();
        let app = example::app(&gateway, example::upstream(upstream.clone()));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let served = app.clone();
        tokio::spawn(async move {
            let _ = axum::serve(listener, served).await;
        });
        Harness {
            addr,
            client: Client::builder(TokioExecutor::new()).build_http(),
            gateway,
            upstream,
            clock,
            app,
        }
    }

    async fn shipped() -> Harness {
        Harness::start(Policy::load(example::LLM_POLICY).expect("the LLM policy loads")).await
    }

    fn request(path: &str, token: &str, extra: &[(&str, &str)]) -> http::request::Builder {
        let mut req = Request::builder()
            .method(Method::POST)
            .uri(path)
            .header("authorization", format!("Bearer {token}"));
        for (k, v) in extra {
            req = req.header(*k, *v);
        }
        req
    }

    /// POST `path` and read the whole answer.
    async fn post(&self, path: &str, token: &str, extra: &[(&str, &str)]) -> Answer {
        let req = Harness::request(&format!("http://{}{path}", self.addr), token, extra)
            .body(Full::new(Bytes::from_static(b"{\"prompt\":\"hi\"}")))
            .expect("request");
        let resp = tokio::time::timeout(Duration::from_secs(20), self.client.request(req))
            .await
            .expect("answered in time")
            .expect("HTTP exchange");
        let status = resp.status();
        let headers = resp.headers().clone();
        resp.into_body().collect().await.expect("body");
        Answer { status, headers }
    }

    /// The tokens `token` has used in the chat group's minute window, as the store says now.
    /// A streamed answer (estimate 300, usage 700 in a trailer never sent) held after its
    /// first chunk, which has been read: its `x-ratelimit-remaining` and the body, to drop.
    async fn held_stream(&self, token: &str) -> (Option<String>, axum::body::Body) {
        let req = Harness::request(
            STREAM,
            token,
            &[
                ("x-max-tokens", "300"),
                ("x-mock-usage", "700"),
                ("x-mock-hold", "1"),
            ],
        )
        .body(axum::body::Body::empty())
        .expect("request");
        let mut app = self.app.clone();
        let resp = tower::Service::call(&mut app, req).await.expect("answer");
        assert_eq!(resp.status(), StatusCode::OK);
        let remaining = resp
            .headers()
            .get("x-ratelimit-remaining")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let mut body = resp.into_body();
        let first = body.frame().await.expect("a frame").expect("data");
        assert!(first.is_data());
        (remaining, body)
    }

    fn used_this_minute(&self, token: &str) -> u32 {
        let policy = self.gateway.policy();
        let group = policy.group("chat").expect("chat");
        let key = group.key(token).expect("key");
        let d = self
            .gateway
            .store()
            .peek(key.as_bytes(), group.limits_for(token))
            .expect("peek");
        d.windows()[0].used()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answer_of_900_tokens_leaves_100_and_the_next_reservation_waits_an_honest_retry_after() {
    let h = Harness::shipped().await;
    let a = h.post(CHAT, "key_a", &[("x-mock-usage", "900")]).await;
    assert_eq!(a.status, StatusCode::OK);
    // Settled at the head: the 200 reserved are now the 900 used.
    assert_eq!(a.num("x-ratelimit-limit"), 1000);
    assert_eq!(a.num("x-ratelimit-remaining"), 100);
    assert!(a.header("retry-after").is_none());
    assert_eq!(
        a.header("ratelimit-policy"),
        Some("\"chat-60s\";q=1000;w=60;qu=\"tokens\", \"chat-1d\";q=50000;w=86400;qu=\"tokens\"")
    );
    let rl = a.header("ratelimit").expect("RateLimit");
    assert!(rl.starts_with("\"chat-60s\";r=100;"), "{rl}");
    assert!(rl.contains("\"chat-1d\";r=49100"), "{rl}");
    assert_eq!(h.used_this_minute("key_a"), 900);
    assert_eq!(h.gateway.metering().reported(), 1);

    // The fixed estimate (200) no longer fits in the 100 left: 429, the model not called.
    let refused = h.post(CHAT, "key_a", &[]).await;
    assert_eq!(refused.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(refused.num("x-ratelimit-remaining"), 100);
    assert_eq!(h.upstream.calls.load(Ordering::SeqCst), 1);
    let retry = refused.num("retry-after");
    assert!((1..=64).contains(&retry), "Retry-After {retry}");
    // Honest: at now + Retry-After the same request is admitted.
    h.clock.advance_ms(retry * 1000);
    let later = h.post(CHAT, "key_a", &[("x-mock-usage", "50")]).await;
    assert_eq!(later.status, StatusCode::OK, "at now + Retry-After");
    assert_eq!(h.upstream.calls.load(Ordering::SeqCst), 2);

    // The per-day window counted both answers: 900 + 50.
    let policy = h.gateway.policy();
    let group = policy.group("chat").expect("chat");
    let key = group.key("key_a").expect("key");
    let d = h
        .gateway
        .store()
        .peek(key.as_bytes(), group.limits())
        .expect("peek");
    assert_eq!(d.windows()[1].used(), 950);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_overdraft_refuses_the_key_until_its_usage_is_back_under_the_limit() {
    let h = Harness::shipped().await;
    let first = h
        .post(
            CHAT,
            "key_b",
            &[("x-max-tokens", "100"), ("x-mock-usage", "900")],
        )
        .await;
    assert_eq!(first.num("x-ratelimit-remaining"), 100);
    // 100 left, 100 reserved (it fits), 400 used: an overdraft of 300.
    let over = h
        .post(
            CHAT,
            "key_b",
            &[("x-max-tokens", "100"), ("x-mock-usage", "400")],
        )
        .await;
    assert_eq!(over.status, StatusCode::OK);
    assert_eq!(over.num("x-ratelimit-remaining"), 0);
    assert!(
        over.header("retry-after").is_none(),
        "a 200 says no Retry-After"
    );
    assert_eq!(h.used_this_minute("key_b"), 1300);
    // Even a request reserving nothing is refused while the usage is over the limit.
    let refused = h.post(CHAT, "key_b", &[("x-max-tokens", "0")]).await;
    assert_eq!(refused.status, StatusCode::TOO_MANY_REQUESTS);
    let retry = refused.num("retry-after");
    h.clock.advance_ms(retry * 1000);
    let later = h.post(CHAT, "key_b", &[("x-max-tokens", "0")]).await;
    assert_eq!(later.status, StatusCode::OK, "at now + Retry-After");
    assert_eq!(h.upstream.calls.load(Ordering::SeqCst), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answer_without_its_usage_is_charged_its_estimate() {
    let h = Harness::shipped().await;
    let a = h
        .post(
            CHAT,
            "key_c",
            &[("x-max-tokens", "300"), ("x-mock-usage", "none")],
        )
        .await;
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(a.num("x-ratelimit-remaining"), 700);
    assert_eq!(h.used_this_minute("key_c"), 300);
    assert_eq!(h.gateway.metering().missing(), 1);
    // A request's bound above the smallest limit is capped at it (1000), not refused.
    let big = h
        .post(
            CHAT,
            "key_c2",
            &[("x-max-tokens", "999999"), ("x-mock-usage", "10")],
        )
        .await;
    assert_eq!(big.status, StatusCode::OK);
    assert_eq!(big.num("x-ratelimit-remaining"), 990);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replayed_completion_is_not_charged_again() {
    // Even where replays spend quota, a metered group's replay reserves nothing: the model is
    // not called again, so there is no usage to charge.
    let src = std::fs::read_to_string(example::LLM_POLICY).expect("policy");
    let src = src.replace(
        "key_format = \"uuid\"",
        "key_format = \"uuid\"\nreplay_spends_quota = true",
    );
    let h = Harness::start(Policy::from_toml_str(&src).expect("valid")).await;
    let keyed = [("idempotency-key", KEY), ("x-mock-usage", "900")];
    let first = h.post(CHAT, "key_d", &keyed).await;
    assert_eq!(first.status, StatusCode::OK);
    assert_eq!(first.num("x-ratelimit-remaining"), 100);
    let again = h.post(CHAT, "key_d", &keyed).await;
    assert_eq!(again.status, StatusCode::OK);
    assert_eq!(again.header("idempotent-replayed"), Some("true"));
    assert_eq!(again.num("x-ratelimit-remaining"), 100);
    assert_eq!(h.upstream.calls.load(Ordering::SeqCst), 1);
    assert_eq!(h.used_this_minute("key_d"), 900);
    assert_eq!(h.gateway.metering().reported(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_streamed_answer_is_settled_by_its_trailer() {
    let h = Harness::shipped().await;
    let a = h
        .post(
            STREAM,
            "key_e",
            &[
                ("te", "trailers"),
                ("x-max-tokens", "300"),
                ("x-mock-usage", "700"),
            ],
        )
        .await;
    assert_eq!(a.status, StatusCode::OK);
    // The head went out before the usage was known: the reservation's state.
    assert_eq!(a.num("x-ratelimit-remaining"), 700);
    // The trailer went by before the body's end reached the client.
    assert_eq!(h.used_this_minute("key_e"), 700);
    assert_eq!(h.gateway.metering().reported(), 1);
    // Without the trailer, the body's end settles the estimate.
    let b = h
        .post(
            STREAM,
            "key_e2",
            &[("x-max-tokens", "250"), ("x-mock-usage", "none")],
        )
        .await;
    assert_eq!(b.status, StatusCode::OK);
    assert_eq!(h.used_this_minute("key_e2"), 250);
    assert_eq!(h.gateway.metering().missing(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_dropped_midway_is_charged_its_estimate() {
    let h = Harness::shipped().await;
    let (remaining, body) = h.held_stream("key_f").await;
    assert_eq!(remaining.as_deref(), Some("700"));
    assert_eq!(h.gateway.metering().dropped(), 0);
    // The client goes away: the usage is never known, the estimate is what is charged.
    drop(body);
    assert_eq!(h.gateway.metering().dropped(), 1);
    assert_eq!(h.gateway.metering().reported(), 0);
    assert_eq!(h.used_this_minute("key_f"), 300);
}

/// The mock's streamed chunks are `data: …` server-sent events: a meter that charges 40
/// tokens an event.
fn meter_events(h: &Harness) {
    h.gateway.metering().set_stream_meter("chat", |frame| {
        40 * frame.windows(6).filter(|w| w == b"data: ").count() as u32
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_a_stream_meter_a_client_that_goes_away_is_charged_what_was_streamed() {
    let h = Harness::shipped().await;
    meter_events(&h);
    let (_, body) = h.held_stream("key_m").await;
    // Reserved, not settled yet.
    assert_eq!(h.used_this_minute("key_m"), 300);
    drop(body);
    // One event went out: 40 tokens, not the estimate.
    assert_eq!(h.gateway.metering().streamed(), 1);
    assert_eq!(h.gateway.metering().dropped(), 0);
    assert_eq!(h.used_this_minute("key_m"), 40);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_a_stream_meter_a_body_without_its_usage_is_charged_what_was_streamed() {
    let h = Harness::shipped().await;
    meter_events(&h);
    // No trailer: the three events, 120 tokens.
    let a = h
        .post(
            STREAM,
            "key_n",
            &[("x-max-tokens", "250"), ("x-mock-usage", "none")],
        )
        .await;
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(h.used_this_minute("key_n"), 120);
    assert_eq!(h.gateway.metering().streamed(), 1);
    // A trailer that reports the usage still wins over the meter.
    let b = h
        .post(
            STREAM,
            "key_o",
            &[
                ("te", "trailers"),
                ("x-max-tokens", "300"),
                ("x-mock-usage", "700"),
            ],
        )
        .await;
    assert_eq!(b.status, StatusCode::OK);
    assert_eq!(h.used_this_minute("key_o"), 700);
    assert_eq!(h.gateway.metering().reported(), 1);
    assert_eq!(h.gateway.metering().streamed(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_usage_reader_set_in_code_wins_over_the_header() {
    let h = Harness::shipped().await;
    // The reader knows the usage from another header; when it does not say, the header does.
    h.gateway.metering().set_usage_reader("chat", |head| {
        head.headers
            .get("x-mock-alt")
            .and_then(tollgate::gateway::parse_units)
    });
    let a = h
        .post(
            CHAT,
            "key_g",
            &[("x-mock-usage", "900"), ("x-mock-alt-usage", "40")],
        )
        .await;
    assert_eq!(a.num("x-ratelimit-remaining"), 960);
    let b = h.post(CHAT, "key_g2", &[("x-mock-usage", "900")]).await;
    assert_eq!(b.num("x-ratelimit-remaining"), 100);
    h.gateway.metering().clear_usage_reader("chat");
    let c = h
        .post(
            CHAT,
            "key_g3",
            &[("x-mock-usage", "900"), ("x-mock-alt-usage", "40")],
        )
        .await;
    assert_eq!(c.num("x-ratelimit-remaining"), 100);
    assert_eq!(h.gateway.metering().reported(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_refused_after_its_reservation_is_not_charged() {
    // If-Match is checked after the reservation: a stale tag answers 412 before the model is
    // called, and the reservation is given back.
    let src = std::fs::read_to_string(example::LLM_POLICY).expect("policy");
    let src = src.replace("headers = \"both\"", "headers = \"both\"\nif_match = true");
    let h = Harness::start(Policy::from_toml_str(&src).expect("valid")).await;
    let a = h
        .post(
            CHAT,
            "key_h",
            &[("x-max-tokens", "300"), ("if-match", "\"stale-tag\"")],
        )
        .await;
    assert_eq!(a.status, StatusCode::PRECONDITION_FAILED);
    assert_eq!(h.upstream.calls.load(Ordering::SeqCst), 0);
    assert_eq!(h.gateway.metering().not_called(), 1);
    assert_eq!(h.used_this_minute("key_h"), 0);
}
