//! The IETF rate-limit fields (draft-ietf-httpapi-ratelimit-headers-12), problem+json refusals
//! and shadow mode, over real HTTP on 127.0.0.1: the example's router behind a policy with
//! two groups of the same two windows, one enforced and one in shadow mode.
#![cfg(feature = "tower")]

#[allow(dead_code)]
#[path = "../examples/gateway.rs"]
mod example;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tollgate::gateway::{Gateway, Policy};
use tollgate::{ManualClock, Options, Store};

/// A whole minute.
const T0: u64 = 1_700_000_040_000;
const TOKEN: &str = "tok_ietf_0123456789";

const POLICY: &str = r#"
[settings]
headers = "both"
body_style = "problem"
partition_key = true
partition_key_secret = "the secret of this test fleet"

[[group]]
name = "pbx"
route = "/api/pbx/*"
windows = [{ limit = 2, window = "60s", exact = true }, { limit = 3, window = "1h", exact = true }]

[[group]]
name = "telesales"
route = "/api/telesales/*"
windows = [{ limit = 2, window = "60s", exact = true }, { limit = 3, window = "1h", exact = true }]
enforce = false
"#;

struct Answer {
    status: StatusCode,
    headers: HeaderMap,
    body: String,
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// The rate-limit fields, the group's name written `G`.
    fn rate_fields(&self, group: &str) -> Vec<String> {
        [
            "x-ratelimit-limit",
            "x-ratelimit-remaining",
            "x-ratelimit-reset",
            "retry-after",
            "ratelimit-policy",
            "ratelimit",
        ]
        .iter()
        .map(|n| format!("{n}: {}", self.header(n).unwrap_or("-").replace(group, "G")))
        .collect()
    }
}

async fn send(client: &Client<HttpConnector, Full<Bytes>>, addr: SocketAddr, path: &str) -> Answer {
    let req = Request::get(format!("http://{addr}{path}"))
        .header("authorization", format!("Bearer {TOKEN}"))
        .body(Full::new(Bytes::new()))
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
async fn enforced_and_shadowed_groups_send_the_same_fields() {
    let clock = ManualClock::new(T0);
    let store = Store::open_in_memory(Options::default().clock(clock.clone())).expect("store");
    let gateway: Arc<Gateway> = Gateway::new(store, Policy::from_toml_str(POLICY).expect("policy"));
    let app = example::app(&gateway, example::upstream(example::Upstream::default()));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    let client = Client::builder(TokioExecutor::new()).build_http();
    let pk = gateway
        .policy()
        .settings()
        .partition_secret()
        .key_of(TOKEN)
        .to_string();

    // 0 s and 10 s admitted; 20 s refused by the minute; 70 s admitted (the minute is empty
    // again, the hour full); 80 s refused by the hour.
    let mut refused = 0;
    for at in [0u64, 10, 20, 70, 80] {
        clock.set_ms(T0 + at * 1000);
        let on = send(&client, addr, "/api/pbx/extensions").await;
        let off = send(&client, addr, "/api/telesales/leads").await;
        assert_eq!(
            on.rate_fields("pbx"),
            off.rate_fields("telesales"),
            "at {at} s"
        );
        assert_eq!(off.status, StatusCode::OK, "at {at} s: {}", off.body);
        for a in [&on, &off] {
            let fields = a.rate_fields("-").join("\n");
            assert!(
                !fields.contains(TOKEN) && !fields.contains("tok_"),
                "{fields}"
            );
        }
        if on.status == StatusCode::TOO_MANY_REQUESTS {
            refused += 1;
            assert_eq!(on.header("content-type"), Some("application/problem+json"));
        } else {
            assert_eq!(on.status, StatusCode::OK, "at {at} s: {}", on.body);
        }
        let policy = format!("\"pbx-60s\";q=2;w=60;pk={pk}, \"pbx-1h\";q=3;w=3600;pk={pk}");
        assert_eq!(on.header("ratelimit-policy"), Some(policy.as_str()));
        let want = match at {
            0 => ("\"pbx-60s\";r=1;t=60", "\"pbx-1h\";r=2;t=3600", None),
            // The minute's last unit: t is the wait for the first one back (at 60 s).
            10 => ("\"pbx-60s\";r=0;t=50", "\"pbx-1h\";r=1;t=3600", None),
            // Refused by the minute; the hour has room and so no t.
            20 => ("\"pbx-60s\";r=0;t=40", "\"pbx-1h\";r=1", Some("40")),
            // The hour's last unit: back when the 0 s one leaves, at 3600 s.
            70 => ("\"pbx-60s\";r=1;t=60", "\"pbx-1h\";r=0;t=3530", None),
            _ => ("\"pbx-60s\";r=1", "\"pbx-1h\";r=0;t=3520", Some("3520")),
        };
        assert_eq!(
            on.header("ratelimit"),
            Some(format!("{};pk={pk}, {};pk={pk}", want.0, want.1).as_str()),
            "at {at} s"
        );
        assert_eq!(on.header("retry-after"), want.2, "at {at} s");
    }
    assert_eq!(refused, 2);
    assert_eq!(gateway.shadow().refusals(), 2);
    assert_eq!(gateway.shadow().refusals_of("telesales"), 2);
    assert_eq!(gateway.shadow().refusals_of("pbx"), 0);

    // The hour's refusal, as problem details naming the violated window.
    let last = send(&client, addr, "/api/pbx/extensions").await;
    assert_eq!(last.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(
        last.body,
        r#"{"type": "https://iana.org/assignments/http-problem-types#quota-exceeded", "title": "Request cannot be satisfied as assigned quota has been exceeded", "status": 429, "detail": "Too many requests. Retry after 3520 seconds.", "code": "RATE_LIMITED", "violated-policies": ["pbx-1h"]}"#
    );
}
