//! A runnable gateway: the Zorio policy (`examples/policies/zorio.toml`) enforced by tollgate's
//! tower middleware in front of a small demo upstream, on the embedded store or (feature
//! `redis`) on a Redis / Valkey server shared by a fleet of gateways.
//!
//! ```text
//! cargo run --release --features tower,redis,metrics --example gateway -- \
//!     --listen ADDR --policy FILE [--redis URL] [--mode shared|hybrid] [--store PATH]
//! curl http://127.0.0.1:8080/metrics
//!
//! curl -i -X POST -H 'Authorization: Bearer tok_demo' \
//!      http://127.0.0.1:8080/api/pbx/calls/click-to-call -d '{"to":"+15551234"}'
//! ```
//!
//! * `--listen ADDR`: the address to serve on (default `127.0.0.1:8080`; `PORT=9000` in the
//!   environment means `127.0.0.1:9000`).
//! * `--policy FILE`: the policy (default `examples/policies/zorio.toml`, or
//!   `TOLLGATE_POLICY`).
//! * `--redis URL`: keep quotas and idempotency records on this Redis / Valkey server
//!   (`redis://host:port/db`), shared by every gateway started with the same URL (and
//!   `--redis-prefix`). Needs the `redis` feature; without it the option is refused with a
//!   message saying so. Default: no server, the embedded store alone.
//! * `--mode shared|hybrid` (with `--redis`; default `shared`): `shared` asks the server on
//!   every request (one round trip, the fleet never admits more than the limit); `hybrid`
//!   decides from the embedded store and reconciles with the server in the background
//!   (docs/DISTRIBUTED.md).
//! * `--redis-prefix PREFIX`: the first part of every key on the server (default `tollgate`):
//!   gateways with different prefixes do not share.
//! * `--store PATH`: the embedded store file, made with its directory if missing (default
//!   `tollgate-data/gateway.tg`): the store of the embedded mode, and a hybrid node's local
//!   store (two hybrid nodes on one machine need two paths). A shared node keeps no file.
//!
//! With `--redis`, each call to the server has the policy's deadline (`backend_timeout`), and
//! when the server fails or is late each group does as its `on_backend_error` says: 503
//! (fail-closed), let through unchecked (fail-open, logged on stderr), or decided by this node
//! alone (local-only: a hybrid node's own decision, or an in-memory store of a shared node).
//!
//! With the `metrics` feature (`--features tower,redis,metrics`), `GET /metrics` (no token
//! needed) serves the gateway's counters and histograms as Prometheus text (docs/GATEWAY.md,
//! Metrics).
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
//! The integration tests `tests/gateway_http.rs`, `tests/cli_gateway.rs` and
//! `tests/gateway_redis.rs` build their servers from [`upstream`], [`app`] and [`Args`] in this
//! file, so the example and the tests run the same router.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::{get, post};
use axum::Router;
use tollgate::gateway::{FailureLog, Gateway, Policy, ShadowLog};
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

/// Where the counts and records live (`--redis`, `--mode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// The embedded store alone (no `--redis`).
    Embedded,
    /// `--mode shared`: every check and idempotency step on the server (`fleet::RedisStore`).
    Shared,
    /// `--mode hybrid`: decided on the embedded store, reconciled with the server in the
    /// background (`fleet::HybridStore`).
    Hybrid,
}

/// The command line of the example.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Args {
    /// The address to serve on (`--listen`).
    pub listen: String,
    /// The policy file (`--policy`).
    pub policy: PathBuf,
    /// The embedded store file (`--store`).
    pub store: PathBuf,
    /// The Redis / Valkey server (`--redis`).
    pub redis: Option<String>,
    /// The key prefix on the server (`--redis-prefix`).
    pub redis_prefix: String,
    /// Embedded, shared or hybrid (`--mode`, with `--redis`).
    pub mode: Mode,
}

/// The example's usage, for `--help` and errors.
pub const USAGE: &str = "usage: gateway [--listen ADDR] [--policy FILE] [--redis URL [--mode shared|hybrid] [--redis-prefix PREFIX]] [--store PATH]
  --listen ADDR          serve on ADDR (default 127.0.0.1:8080, or 127.0.0.1:$PORT)
  --policy FILE          the policy (default examples/policies/zorio.toml, or $TOLLGATE_POLICY)
  --redis URL            share quotas and idempotency keys through this Redis / Valkey server
                         (redis://host:port/db; needs the `redis` feature)
  --mode shared|hybrid   with --redis: ask the server on every request (shared, the default),
                         or decide locally and reconcile in the background (hybrid)
  --redis-prefix PREFIX  the first part of every key on the server (default tollgate)
  --store PATH           the embedded store file (default tollgate-data/gateway.tg); a hybrid
                         node's local store";

/// What `--redis` says when the example was built without the `redis` feature.
pub const NO_REDIS_FEATURE: &str = "--redis needs the `redis` feature: cargo run --release --features tower,redis --example gateway -- --redis URL";

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
            redis: None,
            redis_prefix: "tollgate".to_string(),
            mode: Mode::Embedded,
        };
        let mut mode = None;
        let mut it = args.into_iter();
        while let Some(arg) = it.next() {
            let (name, inline) = match arg.split_once('=') {
                Some((n, v)) if n.starts_with("--") => (n.to_string(), Some(v.to_string())),
                _ => (arg.clone(), None),
            };
            if name == "--help" || name == "-h" {
                return Ok(None);
            }
            if !matches!(
                name.as_str(),
                "--listen" | "--policy" | "--store" | "--redis" | "--redis-prefix" | "--mode"
            ) {
                return Err(format!("unexpected argument {arg:?}"));
            }
            let value = match inline.or_else(|| it.next()) {
                Some(v) if !v.is_empty() => v,
                _ => return Err(format!("{name} needs a value")),
            };
            match name.as_str() {
                "--listen" => a.listen = value,
                "--policy" => a.policy = PathBuf::from(value),
                "--store" => a.store = PathBuf::from(value),
                "--redis-prefix" => a.redis_prefix = value,
                "--redis" if cfg!(feature = "redis") => a.redis = Some(value),
                "--redis" => return Err(NO_REDIS_FEATURE.to_string()),
                _ => {
                    mode = Some(match value.as_str() {
                        "shared" => Mode::Shared,
                        "hybrid" => Mode::Hybrid,
                        _ => {
                            return Err(format!(
                                "--mode {value:?}: expected \"shared\" or \"hybrid\""
                            ))
                        }
                    })
                }
            }
        }
        a.mode = match (&a.redis, mode) {
            (None, None) => Mode::Embedded,
            (None, Some(_)) => return Err("--mode needs --redis URL".to_string()),
            (Some(_), m) => m.unwrap_or(Mode::Shared),
        };
        Ok(Some(a))
    }

    /// The policy loaded and the backend opened (an embedded store's writer lock held while
    /// the gateway lives), as the gateway serves them.
    pub fn gateway(&self) -> Result<Node, Box<dyn std::error::Error>> {
        let policy = Policy::load(&self.policy)
            .map_err(|e| format!("policy {}: {e}", self.policy.display()))?;
        let open_store = || {
            Store::open(&self.store, Options::default())
                .map_err(|e| format!("store {}: {e}", self.store.display()))
        };
        match (self.mode, &self.redis) {
            #[cfg(feature = "redis")]
            (Mode::Shared | Mode::Hybrid, Some(url)) => {
                use tollgate::fleet::{HybridOptions, HybridStore, RedisOptions, RedisStore};
                use tollgate::gateway::Fallback;
                // Every call to the server within the policy's deadline; past it (or with the
                // server down) each group's `on_backend_error` applies.
                let opts = RedisOptions::default()
                    .prefix(self.redis_prefix.as_str())
                    .deadline(policy.settings().backend_timeout());
                let shared =
                    RedisStore::open(url, opts).map_err(|e| format!("redis {url}: {e}"))?;
                if self.mode == Mode::Shared {
                    // Local-only groups count in memory while the server is away.
                    let local = Store::open_in_memory(Options::default())
                        .map_err(|e| format!("in-memory store: {e}"))?;
                    let fallback = Fallback::local(local);
                    return Ok(Node::Shared(Gateway::with_fallback(
                        shared, policy, fallback,
                    )));
                }
                let hybrid = HybridStore::new(open_store()?, shared, HybridOptions::default())
                    .map_err(|e| format!("hybrid store: {e}"))?;
                let fallback = Fallback::hybrid(&hybrid);
                Ok(Node::Hybrid(Gateway::with_fallback(
                    hybrid, policy, fallback,
                )))
            }
            _ => Ok(Node::Embedded(Gateway::new(open_store()?, policy))),
        }
    }

    /// Where the counts live, for the start-up line.
    pub fn describe_backend(&self) -> String {
        match (self.mode, &self.redis) {
            (Mode::Shared, Some(url)) => {
                format!("shared on {url} (prefix {})", self.redis_prefix)
            }
            (Mode::Hybrid, Some(url)) => format!(
                "hybrid: store {}, reconciled with {url} (prefix {})",
                self.store.display(),
                self.redis_prefix
            ),
            _ => format!("store {}", self.store.display()),
        }
    }
}

/// `GET /metrics` (feature `metrics`): the gateway's counters and histograms, rendered by
/// `metrics-exporter-prometheus` (its recorder installed once per process, its HTTP server
/// left out) and served by axum, with the store's gauges read at each scrape.
#[cfg(feature = "metrics")]
pub mod prometheus {
    use std::sync::OnceLock;

    use axum::http::header;
    use axum::routing::get;
    use axum::Router;
    use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

    use super::Node;

    /// Buckets of `tollgate_backend_call_seconds`, from an embedded check (a microsecond) to a
    /// server past its deadline.
    const BUCKETS: &[f64] = &[
        1e-6, 5e-6, 25e-6, 1e-4, 2.5e-4, 5e-4, 1e-3, 2.5e-3, 5e-3, 0.01, 0.025, 0.05, 0.1, 0.25,
        0.5, 1.0,
    ];

    /// The process's recorder, installed on first use.
    pub fn handle() -> &'static PrometheusHandle {
        static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
        HANDLE.get_or_init(|| {
            let builder = PrometheusBuilder::new()
                .set_buckets_for_metric(
                    Matcher::Full("tollgate_backend_call_seconds".into()),
                    BUCKETS,
                )
                .expect("buckets");
            match builder.install_recorder() {
                Ok(h) => h,
                // Another recorder is installed already: render ours, empty, rather than fail.
                Err(e) => {
                    eprintln!("gateway: metrics recorder not installed: {e}");
                    PrometheusBuilder::new().build_recorder().handle()
                }
            }
        })
    }

    /// The route, reading `node`'s store at each scrape.
    pub fn route(node: &Node) -> Router {
        let local = node.local_store().cloned();
        #[cfg(feature = "redis")]
        let hybrid = match node {
            Node::Hybrid(g) => Some(g.store().clone()),
            _ => None,
        };
        let handle = handle();
        Router::new().route(
            "/metrics",
            get(move || {
                if let Some(store) = &local {
                    tollgate::gateway::metrics::record_store(store);
                }
                #[cfg(feature = "redis")]
                if let Some(h) = &hybrid {
                    tollgate::gateway::metrics::record_hybrid(h);
                }
                handle.run_upkeep();
                let text = handle.render();
                async move { ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text) }
            }),
        )
    }
}

/// A gateway on the backend the command line chose.
pub enum Node {
    /// On the embedded store.
    Embedded(Arc<Gateway<Store>>),
    /// On a Redis / Valkey server (`--mode shared`).
    #[cfg(feature = "redis")]
    Shared(Arc<Gateway<tollgate::fleet::RedisStore>>),
    /// On the embedded store reconciled with a server (`--mode hybrid`).
    #[cfg(feature = "redis")]
    Hybrid(Arc<Gateway<tollgate::fleet::HybridStore>>),
}

/// `$body` with `$g` bound to the node's gateway, whatever its backend.
macro_rules! each {
    ($node:expr, $g:ident => $body:expr) => {
        match $node {
            Node::Embedded($g) => $body,
            #[cfg(feature = "redis")]
            Node::Shared($g) => $body,
            #[cfg(feature = "redis")]
            Node::Hybrid($g) => $body,
        }
    };
}

impl Node {
    /// The gateway in front of `router` ([`app`]); with the `metrics` feature, beside it (not
    /// behind the gateway: no token needed) `GET /metrics`, the Prometheus text.
    pub fn app(&self, router: Router) -> Router {
        let app = each!(self, g => app(g, router));
        #[cfg(feature = "metrics")]
        let app = app.merge(prometheus::route(self));
        app
    }

    /// The policy in force.
    pub fn policy(&self) -> Arc<Policy> {
        each!(self, g => g.policy())
    }

    /// What shadowed groups let through.
    pub fn shadow(&self) -> &ShadowLog {
        each!(self, g => g.shadow())
    }

    /// The requests that met a failed backend.
    pub fn failures(&self) -> &FailureLog {
        each!(self, g => g.failures())
    }

    /// Why the server does not answer, if the node has one and it does not (a PING).
    pub fn server_problem(&self) -> Option<String> {
        match self {
            Node::Embedded(_) => None,
            #[cfg(feature = "redis")]
            Node::Shared(g) => g.store().ping().err().map(|e| e.to_string()),
            #[cfg(feature = "redis")]
            Node::Hybrid(g) => g.store().shared().ping().err().map(|e| e.to_string()),
        }
    }

    /// The embedded store, if the node has one (embedded and hybrid modes).
    pub fn local_store(&self) -> Option<&Store> {
        match self {
            Node::Embedded(g) => Some(g.store()),
            #[cfg(feature = "redis")]
            Node::Shared(_) => None,
            #[cfg(feature = "redis")]
            Node::Hybrid(g) => Some(g.store().local()),
        }
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
    let node = args.gateway()?;
    let listener = tokio::net::TcpListener::bind(&args.listen)
        .await
        .map_err(|e| format!("listen on {}: {e}", args.listen))?;
    println!(
        "tollgate gateway on http://{} (policy {}, {})",
        listener.local_addr()?,
        args.policy.display(),
        args.describe_backend()
    );
    if cfg!(feature = "metrics") {
        println!("  metrics on http://{}/metrics", listener.local_addr()?);
    } else {
        println!("  no /metrics: build with --features tower,metrics");
    }
    if let Some(e) = node.server_problem() {
        eprintln!(
            "gateway: the server does not answer yet ({e}): each group's on_backend_error applies until it does"
        );
    }
    for g in node.policy().groups() {
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
    node.shadow().set_hook(|e| {
        eprintln!(
            "shadow: {} would refuse {} {} (partition {}, retry after {} s)",
            e.group(),
            e.method(),
            e.path(),
            e.partition_key(),
            e.decision().retry_after().unwrap_or(0)
        );
    });
    // A request that met a failed server, and what its group did (`on_backend_error`):
    // fail-open ones went through unchecked, and say so here.
    node.failures().set_hook(|e| {
        eprintln!(
            "backend: {} of group {} failed, {} ({})",
            e.operation(),
            e.group().unwrap_or("-"),
            e.applied(),
            e.reason()
        );
    });
    axum::serve(listener, node.app(upstream(Upstream::default()))).await?;
    Ok(())
}
