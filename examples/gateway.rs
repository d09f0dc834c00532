//! A runnable gateway: the Zorio policy (`examples/policies/zorio.toml`) enforced by tollgate's
//! tower middleware in front of a small demo upstream.
//!
//! ```text
//! cargo run --release --features tower --example gateway -- \
//!     [--listen ADDR] [--policy FILE] [--store PATH]
//!
//! curl -i -X POST -H 'Authorization: Bearer tok_demo' \
//!      http://127.0.0.1:8080/api/pbx/calls/click-to-call -d '{"to":"+15551234"}'
//! ```
//!
//! * `--listen ADDR`: the address to serve on (default `127.0.0.1:8080`; `PORT=9000` in the
//!   environment means `127.0.0.1:9000`).
//! * `--policy FILE`: the policy (default `examples/policies/zorio.toml`, or
//!   `TOLLGATE_POLICY`).
//! * `--store PATH`: the store file, made with its directory if missing (default
//!   `tollgate-data/gateway.tg`).
//!
//! A group of the policy with `enforce = false` runs in shadow mode: what it would refuse goes
//! through, and each such request is logged on stderr (by a hook on `Gateway::shadow`).
//!
//! The 11th click-to-call of a token within a minute gets 429; a retry carrying the same
//! `Idempotency-Key` gets the first response again (`Idempotent-Replayed: true`) and the
//! upstream is not called twice. Counts live in the store file, so they survive a restart (stop
//! it with Ctrl-C: every count is in the page cache already). While it runs, `tollgate stat
//! tollgate-data/gateway.tg` and `tollgate inspect tollgate-data/gateway.tg tok_demo --group
//! click-to-call --limit 10/1m` look at its counts (docs/CLI.md).
//!
//! The integration tests `tests/gateway_http.rs` and `tests/cli_gateway.rs` build their
//! servers from [`upstream`], [`app`] and [`Args`] in this file, so the example and the tests
//! run the same router.

use std::path::PathBuf;
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

/// The command line of the example.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Args {
    /// The address to serve on (`--listen`).
    pub listen: String,
    /// The policy file (`--policy`).
    pub policy: PathBuf,
    /// The store file (`--store`).
    pub store: PathBuf,
}

/// The example's usage, for `--help` and errors.
pub const USAGE: &str = "usage: gateway [--listen ADDR] [--policy FILE] [--store PATH]
  --listen ADDR   serve on ADDR (default 127.0.0.1:8080, or 127.0.0.1:$PORT)
  --policy FILE   the policy (default examples/policies/zorio.toml, or $TOLLGATE_POLICY)
  --store PATH    the store file (default tollgate-data/gateway.tg)";

impl Args {
    /// Parse `args` (without the program name); `env` reads the fallbacks `PORT` and
    /// `TOLLGATE_POLICY`. `Ok(None)` for `--help`; an error names the bad argument.
    pub fn parse(
        args: impl IntoIterator<Item = String>,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Option<Args>, String> {
        let listen = match env("PORT") {
            Some(p) => {
                let port: u16 = p.parse().map_err(|_| format!("PORT={p:?} is not a port"))?;
                format!("127.0.0.1:{port}")
            }
            None => "127.0.0.1:8080".to_string(),
        };
        let mut a = Args {
            listen,
            policy: env("TOLLGATE_POLICY").map_or_else(|| ZORIO_POLICY.into(), PathBuf::from),
            store: PathBuf::from("tollgate-data/gateway.tg"),
        };
        let mut it = args.into_iter();
        while let Some(arg) = it.next() {
            let (name, inline) = match arg.split_once('=') {
                Some((n, v)) if n.starts_with("--") => (n.to_string(), Some(v.to_string())),
                _ => (arg.clone(), None),
            };
            if name == "--help" || name == "-h" {
                return Ok(None);
            }
            let slot = match name.as_str() {
                "--listen" => None,
                "--policy" => Some(&mut a.policy),
                "--store" => Some(&mut a.store),
                _ => return Err(format!("unexpected argument {arg:?}")),
            };
            let value = match inline.or_else(|| it.next()) {
                Some(v) if !v.is_empty() => v,
                _ => return Err(format!("{name} needs a value")),
            };
            match slot {
                Some(path) => *path = PathBuf::from(value),
                None => a.listen = value,
            }
        }
        Ok(Some(a))
    }

    /// The policy loaded and the store opened (its writer lock held while the gateway
    /// lives), as the gateway serves them.
    pub fn gateway(&self) -> Result<Arc<Gateway>, Box<dyn std::error::Error>> {
        let policy = Policy::load(&self.policy)
            .map_err(|e| format!("policy {}: {e}", self.policy.display()))?;
        let store = Store::open(&self.store, Options::default())
            .map_err(|e| format!("store {}: {e}", self.store.display()))?;
        Ok(Gateway::new(store, policy))
    }
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let args = match Args::parse(std::env::args().skip(1), |k| std::env::var(k).ok()) {
        Ok(Some(a)) => a,
        Ok(None) => {
            println!("{USAGE}");
            return std::process::ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("gateway: {e}\n{USAGE}");
            return std::process::ExitCode::from(2);
        }
    };
    match serve(&args).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("gateway: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn serve(args: &Args) -> Result<(), Box<dyn std::error::Error>> {
    let gateway = args.gateway()?;
    let listener = tokio::net::TcpListener::bind(&args.listen)
        .await
        .map_err(|e| format!("listen on {}: {e}", args.listen))?;
    println!(
        "tollgate gateway on http://{} (policy {}, store {})",
        listener.local_addr()?,
        args.policy.display(),
        args.store.display()
    );
    for g in gateway.policy().groups() {
        let windows: Vec<String> = g
            .limits()
            .as_slice()
            .iter()
            .map(|l| format!("{}/{}s", l.limit(), l.window().as_secs()))
            .collect();
        println!(
            "  {:<14} {:<32} {}{}",
            g.name(),
            g.route().to_string(),
            windows.join(" + "),
            if g.enforce() { "" } else { "  (shadow)" }
        );
    }
    // Groups with `enforce = false` let through what they would refuse: log each one (the
    // library logs nothing itself; `gateway.shadow().refusals()` counts them too). The token
    // is never logged, only its partition key.
    gateway.shadow().set_hook(|e| {
        eprintln!(
            "shadow: {} would refuse {} {} (partition {}, retry after {} s)",
            e.group(),
            e.method(),
            e.path(),
            e.partition_key(),
            e.decision().retry_after().unwrap_or(0)
        );
    });
    axum::serve(listener, app(&gateway, upstream(Upstream::default()))).await?;
    Ok(())
}
