//! Unit tests of `middleware.rs`, kept beside it in a file of their own.

use super::*;
use crate::gateway::headers::{self, IDEMPOTENT_REPLAYED};
use crate::{ManualClock, Options};
use http_body_util::{BodyExt, Full};
use std::sync::atomic::{AtomicU64, Ordering};

const T0: u64 = 1_700_000_040_000;
const KEY: &str = "4d9c3a41-6bb7-4c4e-9a39-8f3c2d7e1f00";

/// An upstream that counts its calls and answers 201 "call <n>".
#[derive(Clone, Default)]
struct Counter(Arc<AtomicU64>);

impl Service<Request<GatewayBody>> for Counter {
    type Response = Response<Full<Bytes>>;
    type Error = std::convert::Infallible;
    type Future = std::future::Ready<Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: Request<GatewayBody>) -> Self::Future {
        let n = self.0.fetch_add(1, Ordering::SeqCst) + 1;
        let mut r = Response::new(Full::new(Bytes::from(format!("call {n}"))));
        *r.status_mut() = StatusCode::CREATED;
        std::future::ready(Ok(r))
    }
}

fn block_on<F: Future>(f: F) -> F::Output {
    // Everything here is ready at once (buffered bodies, a synchronous store).
    let mut f = std::pin::pin!(f);
    let mut cx = Context::from_waker(std::task::Waker::noop());
    loop {
        if let Poll::Ready(v) = f.as_mut().poll(&mut cx) {
            return v;
        }
    }
}

fn service(policy: &str) -> (GatewayService<Counter>, Counter) {
    let store = Store::open_in_memory(Options::default().clock(ManualClock::new(T0))).unwrap();
    let gateway = Gateway::new(store, Policy::from_toml_str(policy).unwrap());
    let counter = Counter::default();
    (gateway.layer().layer(counter.clone()), counter)
}

fn post(
    svc: &mut GatewayService<Counter>,
    key: Option<&str>,
    body: &str,
) -> (u16, HeaderMap, String) {
    let mut req = Request::builder()
        .method(Method::POST)
        .uri("/api/sms")
        .header(AUTHORIZATION, "Bearer tok");
    if let Some(k) = key {
        req = req.header(IDEMPOTENCY_KEY, k);
    }
    let req = req.body(Full::new(Bytes::from(body.to_owned()))).unwrap();
    let resp = block_on(svc.call(req)).unwrap();
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let body = block_on(resp.into_body().collect()).unwrap().to_bytes();
    (status, headers, String::from_utf8_lossy(&body).into_owned())
}

const SMS: &str = r#"
    [settings]
    body_style = "error"
    [settings.idempotency]
    replay_spends_quota = SPENDS
    [[group]]
    name = "sms"
    route = "/api/*"
    windows = [{ limit = 2, window = "60s" }]
"#;

#[test]
fn replays_spend_no_quota_by_default() {
    let (mut svc, counter) = service(&SMS.replace("SPENDS", "false"));
    let (s, h, b) = post(&mut svc, Some(KEY), "hi");
    assert_eq!((s, b.as_str()), (201, "call 1"));
    assert_eq!(h[&headers::X_RATELIMIT_REMAINING], "1");
    for _ in 0..5 {
        let (s, h, b) = post(&mut svc, Some(KEY), "hi");
        assert_eq!((s, b.as_str()), (201, "call 1"));
        assert_eq!(h[&IDEMPOTENT_REPLAYED], "true");
        assert_eq!(h[&headers::X_RATELIMIT_REMAINING], "1");
    }
    assert_eq!(counter.0.load(Ordering::SeqCst), 1);
}

#[test]
fn replays_spend_quota_when_configured() {
    let (mut svc, counter) = service(&SMS.replace("SPENDS", "true"));
    assert_eq!(post(&mut svc, Some(KEY), "hi").0, 201);
    let (s, h, _) = post(&mut svc, Some(KEY), "hi");
    assert_eq!(s, 201);
    assert_eq!(h[&IDEMPOTENT_REPLAYED], "true");
    assert_eq!(h[&headers::X_RATELIMIT_REMAINING], "0");
    // The third counts over the limit of 2: 429 in the error style, and the record stays.
    let (s, h, b) = post(&mut svc, Some(KEY), "hi");
    assert_eq!(s, 429);
    let retry: u64 = h[http::header::RETRY_AFTER]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(
        b,
        format!(
            r#"{{"error": {{"code": "RATE_LIMITED", "message": "Rate limit exceeded. Retry after {retry}s"}}}}"#
        )
    );
    assert!(h.get(&IDEMPOTENT_REPLAYED).is_none());
    assert_eq!(counter.0.load(Ordering::SeqCst), 1);
}

#[test]
fn refusals_in_the_error_style() {
    let (mut svc, _) = service(&SMS.replace("SPENDS", "false"));
    let (s, _, b) = post(&mut svc, Some("nope"), "hi");
    assert_eq!(s, 400);
    assert_eq!(
        b,
        r#"{"error": {"code": "INVALID_IDEMPOTENCY_KEY", "message": "Idempotency-Key must be a UUID v4."}}"#
    );
    assert_eq!(post(&mut svc, Some(KEY), "a").0, 201);
    let (s, h, b) = post(&mut svc, Some(KEY), "b");
    assert_eq!(s, 422);
    assert!(b.contains(KEY_REUSED), "{b}");
    // Counted nothing, and says so.
    assert_eq!(h[&headers::X_RATELIMIT_REMAINING], "1");
    assert!(h.get(http::header::RETRY_AFTER).is_none());
}

#[test]
fn bearer_tokens() {
    let mut h = HeaderMap::new();
    assert_eq!(bearer_token(&h), None);
    for (v, want) in [
        ("Bearer abc", Some("abc")),
        ("bearer  abc", Some("abc")),
        ("BEARER abc.def-_~+/=", Some("abc.def-_~+/=")),
        ("Bearer", None),
        ("Bearer ", None),
        ("Bearer a b", None),
        ("Basic abc", None),
        ("Bearerabc", None),
    ] {
        h.insert(AUTHORIZATION, HeaderValue::from_static(v));
        assert_eq!(bearer_token(&h), want, "{v:?}");
    }
}

/// A service on `policy`, with its gateway and its store's clock.
fn gateway(policy: &str) -> (GatewayService<Counter>, Counter, Arc<Gateway>, ManualClock) {
    let clock = ManualClock::new(T0);
    let store = Store::open_in_memory(Options::default().clock(clock.clone())).unwrap();
    let gateway = Gateway::new(store, Policy::from_toml_str(policy).unwrap());
    let counter = Counter::default();
    let svc = gateway.layer().layer(counter.clone());
    (svc, counter, gateway, clock)
}

fn get(svc: &mut GatewayService<Counter>, token: &str) -> (u16, HeaderMap, String) {
    let req = Request::builder()
        .method(Method::GET)
        .uri("/api/sms")
        .header(AUTHORIZATION, format!("Bearer {token}"))
        .body(Full::new(Bytes::new()))
        .unwrap();
    let resp = block_on(svc.call(req)).unwrap();
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let body = block_on(resp.into_body().collect()).unwrap().to_bytes();
    (status, headers, String::from_utf8_lossy(&body).into_owned())
}

/// The rate-limit fields of a response, by name.
fn rate_fields(h: &HeaderMap) -> Vec<(String, String)> {
    [
        "x-ratelimit-limit",
        "x-ratelimit-remaining",
        "x-ratelimit-reset",
        "retry-after",
        "ratelimit-policy",
        "ratelimit",
    ]
    .iter()
    .filter_map(|n| {
        h.get(*n)
            .map(|v| (n.to_string(), v.to_str().unwrap().to_owned()))
    })
    .collect()
}

const TWO_WINDOWS: &str = r#"
    [settings]
    headers = "both"
    body_style = "problem"
    [[group]]
    name = "sms"
    route = "/api/*"
    windows = [{ limit = 2, window = "60s", exact = true }, { limit = 3, window = "1h", exact = true }]
    enforce = ENFORCE
"#;

#[test]
fn shadow_mode_admits_what_enforcement_refuses_with_the_same_headers() {
    let (mut on, on_calls, on_gw, on_clock) = gateway(&TWO_WINDOWS.replace("ENFORCE", "true"));
    let (mut off, off_calls, off_gw, off_clock) = gateway(&TWO_WINDOWS.replace("ENFORCE", "false"));
    let events = Arc::new(parking_lot::Mutex::new(Vec::new()));
    let seen = Arc::clone(&events);
    off_gw.shadow().set_hook(move |e| {
        let violated = e.decision().windows().iter().filter(|w| !w.fits()).count();
        seen.lock().push(format!(
            "{} {} {} {violated}",
            e.group(),
            e.method(),
            e.path()
        ));
    });
    // 0 s, 10 s, 20 s (the minute refuses), 30 s (again), 70 s (the minute has room, the hour
    // refuses), 80 s (the hour again).
    let mut refused = 0;
    for (i, at) in [0u64, 10, 20, 30, 70, 80].into_iter().enumerate() {
        on_clock.set_ms(T0 + at * 1000);
        off_clock.set_ms(T0 + at * 1000);
        let (s_on, h_on, b_on) = get(&mut on, "tok");
        let (s_off, h_off, b_off) = get(&mut off, "tok");
        assert_eq!(rate_fields(&h_on), rate_fields(&h_off), "request {i}");
        assert_eq!(
            (s_off, b_off.as_str()),
            (201, format!("call {}", i + 1).as_str())
        );
        if s_on == 429 {
            refused += 1;
            assert!(h_off.contains_key("retry-after"));
            let v: serde_json::Value = serde_json::from_str(&b_on).unwrap();
            assert_eq!(v["status"], 429);
        } else {
            assert_eq!(s_on, 201, "request {i}: {b_on}");
        }
    }
    // The headers of the shadow-refused requests were the refusals' (checked equal above).
    assert_eq!(refused, 3, "20 s and 30 s by the minute, 80 s by the hour");
    assert_eq!(on_calls.0.load(Ordering::SeqCst), 3);
    assert_eq!(off_calls.0.load(Ordering::SeqCst), 6);
    assert_eq!(off_gw.shadow().refusals(), 3);
    assert_eq!(off_gw.shadow().refusals_of("sms"), 3);
    assert_eq!(on_gw.shadow().refusals(), 0);
    assert_eq!(
        *events.lock(),
        vec![
            "sms GET /api/sms 1",
            "sms GET /api/sms 1",
            "sms GET /api/sms 1"
        ]
    );
}

#[test]
fn problem_bodies_name_every_violated_window() {
    let (mut svc, _, _, clock) = gateway(&TWO_WINDOWS.replace("ENFORCE", "true"));
    for at in [0u64, 65, 70] {
        clock.set_ms(T0 + at * 1000);
        assert_eq!(get(&mut svc, "tok").0, 201);
    }
    // At 75 s: the minute holds 65 s and 70 s (full until 125 s), the hour 0, 65 and 70 s
    // (full until 3600 s).
    clock.set_ms(T0 + 75_000);
    let (s, h, b) = get(&mut svc, "tok");
    assert_eq!(s, 429);
    assert_eq!(h[http::header::CONTENT_TYPE], "application/problem+json");
    assert_eq!(h[http::header::RETRY_AFTER], "3525");
    assert_eq!(
        h[&headers::RATELIMIT],
        "\"sms-60s\";r=0;t=50, \"sms-1h\";r=0;t=3525"
    );
    assert_eq!(
        b,
        r#"{"type": "https://iana.org/assignments/http-problem-types#quota-exceeded", "title": "Request cannot be satisfied as assigned quota has been exceeded", "status": 429, "detail": "Too many requests. Retry after 3525 seconds.", "code": "RATE_LIMITED", "violated-policies": ["sms-60s", "sms-1h"]}"#
    );
    // Another refusal in the problem style: about:blank.
    let req = Request::builder()
        .method(Method::GET)
        .uri("/api/sms")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let resp = block_on(svc.call(req)).unwrap();
    assert_eq!(resp.status(), 401);
    assert_eq!(
        resp.headers()[http::header::CONTENT_TYPE],
        "application/problem+json"
    );
    let body = block_on(resp.into_body().collect()).unwrap().to_bytes();
    assert_eq!(
        body,
        r#"{"type": "about:blank", "title": "Unauthorized", "status": 401, "detail": "Missing or malformed bearer token.", "code": "UNAUTHORIZED"}"#
    );
}

#[test]
fn ietf_only_with_partition_keys_and_the_concurrency_item() {
    let (mut svc, _, gw, _) = gateway(
        r#"
        [settings]
        headers = "ietf"
        partition_key = true
        partition_key_secret = "a secret of the fleet"
        max_concurrent_per_token = 4
        [[group]]
        name = "sms"
        route = "/api/*"
        windows = [{ limit = 1, window = "60s", exact = true }]
        "#,
    );
    let token = "tok_0123456789";
    let pk = gw.policy().settings().partition_secret().key_of(token);
    let (s, h, _) = get(&mut svc, token);
    assert_eq!(s, 201);
    assert!(h.get(&headers::X_RATELIMIT_LIMIT).is_none());
    assert_eq!(
        h[&headers::RATELIMIT_POLICY],
        format!("\"sms\";q=1;w=60;pk={pk}, \"concurrency\";q=4;qu=\"concurrent-requests\";pk={pk}")
            .as_str()
    );
    // This request held one of the 4 slots when its headers were written.
    assert_eq!(
        h[&headers::RATELIMIT],
        format!("\"sms\";r=0;t=60;pk={pk}, \"concurrency\";r=3;pk={pk}").as_str()
    );
    let (s, h, _) = get(&mut svc, token);
    assert_eq!(s, 429);
    assert!(h.get(&headers::X_RATELIMIT_REMAINING).is_none());
    assert_eq!(h[http::header::RETRY_AFTER], "60");
    assert_eq!(
        h[&headers::RATELIMIT],
        format!("\"sms\";r=0;t=60;pk={pk}, \"concurrency\";r=3;pk={pk}").as_str()
    );
    for (_, v) in rate_fields(&h) {
        assert!(!v.contains(token) && !v.contains("tok_"), "{v}");
    }
}
