//! A runnable gateway: the Zorio policy (`examples/policies/zorio.toml`) enforced by tollgate's
//! tower middleware in front of a small demo upstream, on 127.0.0.1.
//!
//! ```text
//! cargo run --features tower --example gateway            # port 8080
//! cargo run --features tower --example gateway -- 9000    # or PORT=9000
//!
//! curl -i -X POST -H 'Authorization: Bearer tok_demo' \
//!      http://127.0.0.1:8080/api/pbx/calls/click-to-call -d '{"to":"+15551234"}'
//! ```
//!
//! The 11th click-to-call of a token within a minute gets 429; a retry carrying the same
//! `Idempotency-Key` gets the first response again (`Idempotent-Replayed: true`) and the
//! upstream is not called twice. Counts live in `./tollgate-data/gateway.tg`, so they survive
//! a restart (stop it with Ctrl-C: every count is in the page cache already).
//!
//! `TOLLGATE_POLICY=path/to/policy.toml` runs another policy.
//!
//! The integration test `tests/gateway_http.rs` builds its server from [`upstream`] and [`app`]
//! in this file, so the example and the test run the same router.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::{get, post};
use axum::Router;
use tollgate::gateway::{Gateway, Policy};
use tollgate::{Options, Store};

/// The Zorio policy shipped with the crate.
pub const ZORIO_POLICY: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/policies/zorio.toml");

/// The demo upstream's state: how many calls it placed.
#[derive(Clone, Default)]
pub struct Upstream {
    /// Click-to-call requests that reached the upstream.
    pub click_to_call: Arc<AtomicU64>,
}

/// The demo upstream, without the gateway: a few routes of each Zorio group.
pub fn upstream(state: Upstream) -> Router {
    Router::new()
        .route("/api/pbx/calls/click-to-call", post(click_to_call))
        .route(
            "/api/pbx/extensions",
            get(|| json(r#"[{"ext":"101"},{"ext":"102"}]"#)),
        )
        .route(
            "/api/telesales/leads",
            get(|| json(r#"[{"id":7,"name":"Ada"}]"#)),
        )
        .route("/api/telesales/leads/{id}", get(lead).patch(update_lead))
        .route(
            "/api/autocall/campaigns",
            get(|| json(r#"[{"id":1,"state":"running"}]"#)),
        )
        .route("/api/auth/login", post(|| json(r#"{"token":"tok_demo"}"#)))
        .route(
            "/api/auth/refresh",
            post(|| json(r#"{"token":"tok_demo"}"#)),
        )
        .with_state(state)
}

/// The gateway in front of `router`, on any backend (the embedded store here; a Redis one in
/// `tests/gateway_redis.rs`).
pub fn app<B: tollgate::Backend + 'static>(gateway: &Arc<Gateway<B>>, router: Router) -> Router {
    router.layer(gateway.layer())
}

async fn json(body: &'static str) -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "application/json")], body)
}

/// Places a call: 201, a JSON body, a Location, and a cookie (which a replay never repeats).
async fn click_to_call(State(s): State<Upstream>, body: Bytes) -> impl IntoResponse {
    let n = s.click_to_call.fetch_add(1, Ordering::SeqCst) + 1;
    let body = format!(
        r#"{{"call_id":{n},"status":"dialing","request_bytes":{}}}"#,
        body.len()
    );
    (
        StatusCode::CREATED,
        [
            (header::CONTENT_TYPE, "application/json".to_string()),
            (header::LOCATION, format!("/api/pbx/calls/{n}")),
            (header::SET_COOKIE, format!("zorio_session=s{n}; HttpOnly")),
        ],
        body,
    )
}

async fn lead(Path(id): Path<u64>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "application/json")],
        format!(r#"{{"id":{id},"name":"Ada"}}"#),
    )
}

async fn update_lead(Path(id): Path<u64>, body: Bytes) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "application/json")],
        format!(r#"{{"id":{id},"updated_bytes":{}}}"#, body.len()),
    )
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let port: u16 = match std::env::args()
        .nth(1)
        .or_else(|| std::env::var("PORT").ok())
    {
        Some(p) => p.parse().map_err(|_| format!("invalid port {p:?}"))?,
        None => 8080,
    };
    let policy_path = std::env::var("TOLLGATE_POLICY").unwrap_or_else(|_| ZORIO_POLICY.into());
    let policy = Policy::load(&policy_path)?;
    let store = Store::open("tollgate-data/gateway.tg", Options::default())?;
    let gateway = Gateway::new(store, policy);

    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?;
    println!(
        "tollgate gateway on http://{} (policy {policy_path}, store tollgate-data/gateway.tg)",
        listener.local_addr()?
    );
    for g in gateway.policy().groups() {
        let windows: Vec<String> = g
            .limits()
            .as_slice()
            .iter()
            .map(|l| format!("{}/{}s", l.limit(), l.window().as_secs()))
            .collect();
        println!(
            "  {:<14} {:<32} {}",
            g.name(),
            g.route().to_string(),
            windows.join(" + ")
        );
    }
    axum::serve(listener, app(&gateway, upstream(Upstream::default()))).await?;
    Ok(())
}
