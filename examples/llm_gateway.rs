//! An LLM gateway: tokens per minute and per day per API key (`examples/policies/llm.toml`),
//! charged with what the model used, in front of a mock model.
//!
//! ```text
//! cargo run --release --features tower --example llm_gateway -- [--listen ADDR] [--policy FILE]
//!
//! curl -i -X POST -H 'Authorization: Bearer key_demo' -H 'x-max-tokens: 300' \
//!      -H 'x-mock-usage: 900' http://127.0.0.1:8081/v1/chat/completions
//! ```
//!
//! The chat group is metered: each request reserves its estimate (`x-max-tokens`, else 200)
//! before the model is called, and the usage the model reports (`x-usage-tokens`, in the head
//! of a plain answer or in the trailer of a streamed one) settles it. After an answer of 900
//! tokens the key has 100 of its 1,000-token minute left (`X-RateLimit-Remaining: 100`), and a
//! request reserving 200 gets 429 with the `Retry-After` at which it would be admitted.
//!
//! The mock model answers `POST /v1/chat/completions` (the usage in a header) and
//! `POST /v1/chat/stream` (a few chunks, the usage in a trailer). It "generates" as many tokens
//! as the request's `x-mock-usage` says (default 300); `x-mock-usage: none` leaves the usage
//! out; `x-mock-alt-usage: N` adds `x-mock-alt: N` to the answer (for a usage reader set in
//! code); on the stream, `x-mock-hold: 1` sends one chunk and then waits forever (a client that
//! goes away mid-answer). The store is in memory.
//!
//! `tests/gateway_llm.rs` builds its server from [`upstream`] and [`app`] in this file.

use std::collections::VecDeque;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, Response, StatusCode};
use axum::routing::{get, post};
use axum::Router;
use http_body::Frame;
use tollgate::gateway::{Gateway, Policy};
use tollgate::{Options, Store};

/// The LLM policy shipped with the crate.
pub const LLM_POLICY: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/policies/llm.toml");

/// The header the mock model reports its usage in (head or trailer).
pub const USAGE: &str = "x-usage-tokens";

/// The mock model's state: how many answers it gave.
#[derive(Clone, Default)]
pub struct Upstream {
    /// Requests that reached the model.
    pub calls: Arc<AtomicU64>,
}

/// The mock model, without the gateway.
pub fn upstream(state: Upstream) -> Router {
    Router::new()
        .route("/v1/chat/completions", post(completion))
        .route("/v1/chat/stream", post(stream))
        .route(
            "/v1/models",
            get(|| async { ([(header::CONTENT_TYPE, "application/json")], MODELS) }),
        )
        .with_state(state)
}

const MODELS: &str = r#"{"data":[{"id":"mock-1"}]}"#;

/// The gateway in front of `router`.
pub fn app<B: tollgate::Backend + 'static>(gateway: &Arc<Gateway<B>>, router: Router) -> Router {
    router.layer(gateway.layer())
}

/// The tokens a request asks the mock to use: `x-mock-usage` (default 300); `None` for
/// `x-mock-usage: none` (the answer does not say).
fn mock_usage(h: &HeaderMap) -> Option<u64> {
    match h.get("x-mock-usage").and_then(|v| v.to_str().ok()) {
        Some("none") => None,
        Some(n) => Some(n.trim().parse().unwrap_or(300)),
        None => Some(300),
    }
}

/// A whole answer, the usage in its head.
async fn completion(State(s): State<Upstream>, h: HeaderMap) -> Response<Body> {
    let n = s.calls.fetch_add(1, Ordering::SeqCst) + 1;
    let usage = mock_usage(&h);
    let body = format!(
        r#"{{"id":"cmpl-{n}","choices":[{{"text":"..."}}],"usage":{{"total_tokens":{}}}}}"#,
        usage.unwrap_or(0)
    );
    let mut r = Response::new(Body::from(body));
    *r.status_mut() = StatusCode::OK;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    if let Some(u) = usage {
        r.headers_mut().insert(USAGE, HeaderValue::from(u));
    }
    // Another header a usage reader set in code can read (`Metering::set_usage_reader`).
    if let Some(alt) = h.get("x-mock-alt-usage") {
        r.headers_mut().insert("x-mock-alt", alt.clone());
    }
    r
}

/// A streamed answer: three chunks, then the usage in a trailer.
async fn stream(State(s): State<Upstream>, h: HeaderMap) -> Response<Body> {
    let n = s.calls.fetch_add(1, Ordering::SeqCst) + 1;
    let trailers = mock_usage(&h).map(|u| {
        let mut t = HeaderMap::new();
        t.insert(USAGE, HeaderValue::from(u));
        t
    });
    let chunks = (0..3)
        .map(|i| Bytes::from(format!("data: {{\"id\":\"cmpl-{n}\",\"chunk\":{i}}}\n\n")))
        .collect();
    let hold = h.contains_key("x-mock-hold");
    let mut r = Response::new(Body::new(Chunks {
        chunks,
        trailers,
        hold,
    }));
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    // Declared, so that the server sends it to a client that accepts trailers (`TE: trailers`).
    r.headers_mut()
        .insert(header::TRAILER, HeaderValue::from_static(USAGE));
    r
}

/// The mock's streamed body: its chunks, then its trailers; held after the first chunk when
/// `hold` is set.
struct Chunks {
    chunks: VecDeque<Bytes>,
    trailers: Option<HeaderMap>,
    hold: bool,
}

impl http_body::Body for Chunks {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = self.get_mut();
        if this.hold && this.chunks.len() < 3 {
            // Never woken: the answer stops here until its reader goes away.
            return Poll::Pending;
        }
        if let Some(c) = this.chunks.pop_front() {
            return Poll::Ready(Some(Ok(Frame::data(c))));
        }
        Poll::Ready(this.trailers.take().map(|t| Ok(Frame::trailers(t))))
    }

    fn is_end_stream(&self) -> bool {
        self.chunks.is_empty() && self.trailers.is_none()
    }
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let mut listen = "127.0.0.1:8081".to_string();
    let mut policy = PathBuf::from(LLM_POLICY);
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match (a.as_str(), args.next()) {
            ("--listen", Some(v)) => listen = v,
            ("--policy", Some(v)) => policy = PathBuf::from(v),
            _ => {
                eprintln!("usage: llm_gateway [--listen ADDR] [--policy FILE]");
                return std::process::ExitCode::from(2);
            }
        }
    }
    match serve(&listen, &policy).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("llm_gateway: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn serve(listen: &str, policy: &std::path::Path) -> Result<(), Box<dyn std::error::Error>> {
    let policy = Policy::load(policy).map_err(|e| format!("policy {}: {e}", policy.display()))?;
    let store = Store::open_in_memory(Options::default())?;
    let gateway = Gateway::new(store, policy);
    let listener = tokio::net::TcpListener::bind(listen).await?;
    println!("tollgate LLM gateway on http://{}", listener.local_addr()?);
    for g in gateway.policy().groups() {
        let unit = g.metered().map_or("requests", |m| m.unit());
        let windows: Vec<String> = g
            .limits()
            .as_slice()
            .iter()
            .map(|l| format!("{} {unit}/{}s", l.limit(), l.window().as_secs()))
            .collect();
        println!(
            "  {:<8} {:<20} {}",
            g.name(),
            g.route().to_string(),
            windows.join(" + ")
        );
    }
    axum::serve(listener, app(&gateway, upstream(Upstream::default()))).await?;
    Ok(())
}
