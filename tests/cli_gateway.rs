//! Issue 18's "done when": `tollgate inspect` answers for a key while the example gateway
//! (`examples/gateway.rs`, started here in this process on 127.0.0.1) holds the store open with
//! its writer lock, after real HTTP requests; `stat` works then too, and `compact` and
//! `delete` refuse, saying why. Also the example's command line.
#![cfg(all(feature = "tower", feature = "cli"))]

#[allow(dead_code)]
#[path = "../examples/gateway.rs"]
mod example;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tollgate::{Error, Options, Store};

/// Exit code, standard output and standard error of one run of the command.
async fn tollgate(args: Vec<String>) -> (i32, String, String) {
    tokio::task::spawn_blocking(move || {
        let out = Command::new(env!("CARGO_BIN_EXE_tollgate"))
            .args(&args)
            .output()
            .expect("run tollgate");
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).to_string(),
            String::from_utf8_lossy(&out.stderr).to_string(),
        )
    })
    .await
    .expect("the command's thread")
}

fn json(text: &str) -> serde_json::Value {
    serde_json::from_str(text.trim())
        .unwrap_or_else(|e| panic!("not one JSON document ({e}): {text}"))
}

/// Status and `X-RateLimit-Remaining` of one request with a bearer token.
async fn send(
    client: &Client<HttpConnector, Full<Bytes>>,
    addr: SocketAddr,
    method: Method,
    path: &str,
    token: &str,
) -> (StatusCode, Option<u64>) {
    let req = Request::builder()
        .method(method)
        .uri(format!("http://{addr}{path}"))
        .header("authorization", format!("Bearer {token}"))
        .body(Full::new(Bytes::from_static(b"{}")))
        .expect("request");
    let resp = tokio::time::timeout(Duration::from_secs(20), client.request(req))
        .await
        .expect("answered in time")
        .expect("HTTP exchange");
    let status = resp.status();
    let remaining = resp
        .headers()
        .get("x-ratelimit-remaining")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok());
    let _ = resp.into_body().collect().await.expect("body");
    (status, remaining)
}

const C2C: &str = "/api/pbx/calls/click-to-call";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inspect_answers_while_the_example_gateway_holds_the_store() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("data").join("gateway.tg");
    let p = path.to_str().expect("utf-8 path").to_string();
    // The example's own start-up: its command line, its policy and its store.
    let args = example::Args::parse(
        ["--listen", "127.0.0.1:0", "--store", &p].map(String::from),
        |_| None,
    )
    .expect("arguments")
    .expect("not --help");
    let gateway = args.gateway().expect("the gateway starts");
    let listener = tokio::net::TcpListener::bind(&args.listen)
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let app = gateway.app(example::upstream(example::Upstream::default()));
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    let client = Client::builder(TokioExecutor::new()).build_http();

    // Real requests: three click-to-calls and two PBX reads of one token, one read of another.
    for i in 1..=3u64 {
        let (status, left) = send(&client, addr, Method::POST, C2C, "tok_ops").await;
        assert_eq!(status, StatusCode::CREATED, "call {i}");
        assert_eq!(left, Some(10 - i));
    }
    for _ in 0..2 {
        let (status, _) = send(&client, addr, Method::GET, "/api/pbx/extensions", "tok_ops").await;
        assert_eq!(status, StatusCode::OK);
    }
    let (status, _) = send(
        &client,
        addr,
        Method::GET,
        "/api/pbx/extensions",
        "tok_else",
    )
    .await;
    assert_eq!(status, StatusCode::OK);

    // The gateway holds the writer lock: nobody else opens the store for writing.
    assert!(matches!(
        Store::open(&path, Options::default().compactor(false)),
        Err(Error::Locked { .. })
    ));

    // inspect, while the gateway holds the store: the counts the requests made.
    let (code, out, err) = tollgate(
        [
            "inspect",
            &p,
            "tok_ops",
            "--group",
            "click-to-call",
            "--limit",
            "10/1m",
            "--json",
        ]
        .map(String::from)
        .to_vec(),
    )
    .await;
    assert_eq!(code, 0, "{out}{err}");
    let v = json(&out);
    assert_eq!(v["found"], true, "{v}");
    assert_eq!(v["key"], "tok_ops");
    assert_eq!(v["group"], "click-to-call");
    assert_eq!(v["windows"].as_array().map(Vec::len), Some(1), "{v}");
    let w = &v["windows"][0];
    assert_eq!(w["window_ms"], 60_000);
    assert_eq!(
        (w["limit"].clone(), w["used"].clone(), w["left"].clone()),
        (10.into(), 3.into(), 7.into()),
        "{v}"
    );
    let (code, out, err) = tollgate(
        ["inspect", &p, "tok_ops", "--group", "pbx", "--json"]
            .map(String::from)
            .to_vec(),
    )
    .await;
    assert_eq!(code, 0, "{out}{err}");
    let v = json(&out);
    assert_eq!(v["windows"][0]["used"], 2, "{v}");
    assert_eq!(v["windows"][0]["limit"], serde_json::Value::Null, "{v}");
    let (_, out, _) = tollgate(
        ["inspect", &p, "tok_nobody", "--group", "pbx", "--json"]
            .map(String::from)
            .to_vec(),
    )
    .await;
    assert_eq!(json(&out)["found"], false, "{out}");

    // --group names the key the gateway builds for (token, group).
    let policy = gateway.policy();
    let key = policy
        .group("click-to-call")
        .expect("group")
        .key("tok_ops")
        .expect("key");
    let (code, out, _) = tollgate(["dump", &p].map(String::from).to_vec()).await;
    assert_eq!(code, 0);
    let keys: Vec<String> = out
        .lines()
        .map(|l| json(l)["key"].as_str().unwrap_or_default().to_string())
        .collect();
    assert!(
        keys.contains(&String::from_utf8_lossy(key.as_bytes()).into_owned()),
        "{keys:?}"
    );

    // stat: the three (token, group) pairs.
    let (code, out, err) = tollgate(["stat", &p, "--json"].map(String::from).to_vec()).await;
    assert_eq!(code, 0, "{out}{err}");
    let v = json(&out);
    assert_eq!(v["window_entries"]["live"], 3, "{v}");
    assert_eq!(v["idempotency_records"]["live"], 0, "{v}");

    // compact and delete need the writer lock, and say so.
    for args in [
        vec!["compact", &p],
        vec!["delete", &p, "tok_ops", "--group", "pbx", "--yes"],
    ] {
        let (code, out, err) = tollgate(args.iter().map(|s| s.to_string()).collect()).await;
        assert_eq!(code, 1, "{args:?}: {out}{err}");
        assert!(out.is_empty(), "{args:?}: {out}");
        assert_eq!(err.lines().count(), 1, "{args:?}: {err}");
        assert!(
            err.contains("held open by another process") && err.contains("writer lock"),
            "{args:?}: {err}"
        );
    }

    // The gateway kept counting through all of it.
    let (status, left) = send(&client, addr, Method::POST, C2C, "tok_ops").await;
    assert_eq!((status, left), (StatusCode::CREATED, Some(6)));
}

#[test]
fn the_example_takes_its_listen_address_policy_and_store_from_the_command_line() {
    let none = |_: &str| None;
    let parse = |args: &[&str], env: &dyn Fn(&str) -> Option<String>| {
        example::Args::parse(args.iter().map(|s| s.to_string()), env)
    };
    let d = parse(&[], &none).expect("ok").expect("args");
    assert_eq!(d.listen, "127.0.0.1:8080");
    assert_eq!(d.policy, PathBuf::from(example::ZORIO_POLICY));
    assert_eq!(d.store, PathBuf::from("tollgate-data/gateway.tg"));
    let a = parse(
        &[
            "--listen",
            "0.0.0.0:9000",
            "--policy=p.toml",
            "--store",
            "/tmp/x.tg",
        ],
        &none,
    )
    .expect("ok")
    .expect("args");
    assert_eq!(
        (a.listen.as_str(), a.policy, a.store),
        (
            "0.0.0.0:9000",
            PathBuf::from("p.toml"),
            PathBuf::from("/tmp/x.tg")
        )
    );
    // The environment's fallbacks, and the command line over them.
    let env = |k: &str| match k {
        "PORT" => Some("9100".to_string()),
        "TOLLGATE_POLICY" => Some("env.toml".to_string()),
        _ => None,
    };
    let e = parse(&[], &env).expect("ok").expect("args");
    assert_eq!(
        (e.listen.as_str(), e.policy),
        ("127.0.0.1:9100", PathBuf::from("env.toml"))
    );
    let e = parse(&["--listen", "127.0.0.1:1"], &env)
        .expect("ok")
        .expect("args");
    assert_eq!(e.listen, "127.0.0.1:1");
    assert_eq!(parse(&["--help"], &none), Ok(None));
    for bad in [
        &["--listen"][..],
        &["--store", ""],
        &["--frob"],
        &["9000"],
        &["--mode", "shared"],
        &["--redis"],
    ] {
        let err = parse(bad, &none).expect_err("refused");
        assert!(err.contains(bad[0]), "{bad:?}: {err}");
    }
    let bad_port = |k: &str| (k == "PORT").then(|| "eighty".to_string());
    assert!(parse(&[], &bad_port).is_err());

    // The backend: the embedded store unless --redis; --mode picks shared (the default) or
    // hybrid, and needs --redis.
    assert_eq!(d.mode, example::Mode::Embedded);
    assert_eq!(
        (d.redis.as_deref(), d.redis_prefix.as_str()),
        (None, "tollgate")
    );
    let with_redis = parse(&["--redis", "redis://127.0.0.1:6390"], &none);
    let bad_mode = parse(&["--redis", "redis://x", "--mode", "cluster"], &none);
    if cfg!(feature = "redis") {
        let r = with_redis.expect("ok").expect("args");
        assert_eq!(
            (r.redis.as_deref(), r.mode),
            (Some("redis://127.0.0.1:6390"), example::Mode::Shared)
        );
        let h = parse(
            &["--redis=redis://h", "--mode=hybrid", "--redis-prefix", "gw"],
            &none,
        )
        .expect("ok")
        .expect("args");
        assert_eq!(
            (h.mode, h.redis_prefix.as_str()),
            (example::Mode::Hybrid, "gw")
        );
        assert!(bad_mode
            .expect_err("refused")
            .contains("--mode \"cluster\""));
    } else {
        // Built without the feature: a clear refusal, saying how to build with it.
        let e = with_redis.expect_err("refused");
        assert_eq!(e, example::NO_REDIS_FEATURE);
        assert!(e.contains("--features tower,redis"), "{e}");
        assert!(bad_mode.is_err());
    }
}
