//! A gateway restart keeps every count: a file store, the Zorio policy, counts made through
//! the gateway's keys, the store closed and reopened (with its background compactor running),
//! and the counts still there, also after the compactor's first passes; and every ETag it
//! handed out (`If-Match` versions are entries of the file too).
#![cfg(feature = "tower")]

use std::time::Duration;

use tollgate::gateway::{Gateway, Policy};
use tollgate::{Options, Store};

const ZORIO: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/policies/zorio.toml");

#[test]
fn counts_survive_a_restart() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("gateway.tg");
    let remaining = |gw: &Gateway, token: &str| {
        let policy = gw.policy();
        let g = policy.group("click-to-call").expect("group");
        let key = g.key(token).expect("key");
        gw.store()
            .peek(key.as_bytes(), g.limits_for(token))
            .expect("peek")
            .remaining()
    };
    {
        let store = Store::open(&path, Options::default()).expect("open");
        let gw = Gateway::new(store, Policy::load(ZORIO).expect("policy"));
        let policy = gw.policy();
        let g = policy.group("click-to-call").expect("group");
        let key = g.key("tok").expect("key");
        for _ in 0..3 {
            let d = gw
                .store()
                .check(key.as_bytes(), g.limits(), g.cost())
                .expect("check");
            assert!(d.allowed());
        }
        assert_eq!(remaining(&gw, "tok"), 7);
    }
    let store = Store::open(&path, Options::default()).expect("reopen");
    let gw = Gateway::new(store, Policy::load(ZORIO).expect("policy"));
    assert_eq!(remaining(&gw, "tok"), 7);
    // Before any request the compactor has no time to judge at and runs no pass; one request
    // (another token) gives it one. The compactor wakes every 250 ms: let it run a few passes.
    std::thread::sleep(Duration::from_millis(400));
    assert_eq!(remaining(&gw, "tok"), 7);
    {
        let policy = gw.policy();
        let g = policy.group("click-to-call").expect("group");
        let key = g.key("other").expect("key");
        gw.store()
            .check(key.as_bytes(), g.limits(), g.cost())
            .expect("check");
    }
    std::thread::sleep(Duration::from_millis(800));
    assert!(gw.store().stats().passes >= 1);
    assert_eq!(
        remaining(&gw, "tok"),
        7,
        "the compactor dropped counts after a restart"
    );
}

/// The ETags a gateway handed out stay valid across a restart (versions are entries of the
/// store's file), and a stale one is still refused with the current ETag: PATCH through the
/// middleware (a tower service over an upstream that answers 200), before and after.
#[tokio::test]
async fn etags_survive_a_restart() {
    use bytes::Bytes;
    use http::{Method, Request, Response, StatusCode};
    use http_body_util::Full;
    use tower::{Layer, Service};

    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("gateway.tg");
    let lead = "/api/telesales/leads/7";
    let ok = tower::service_fn(|_req: Request<tollgate::gateway::GatewayBody>| async {
        Ok::<_, std::convert::Infallible>(Response::new(Full::new(Bytes::from_static(b"{}"))))
    });
    let call = |gw: &std::sync::Arc<Gateway>, method: Method, if_match: Option<&str>| {
        let mut svc = gw.layer().layer(ok);
        let mut req = Request::builder()
            .method(method)
            .uri(lead)
            .header("authorization", "Bearer tok_v");
        if let Some(tag) = if_match {
            req = req.header("if-match", tag);
        }
        let req = req
            .body(Full::new(Bytes::from_static(b"{}")))
            .expect("request");
        async move {
            let r = svc.call(req).await.expect("answered");
            let etag = r
                .headers()
                .get("etag")
                .map(|v| v.to_str().expect("ascii").to_owned());
            (r.status(), etag)
        }
    };
    let (first, second) = {
        let store = Store::open(&path, Options::default()).expect("open");
        let gw = Gateway::new(store, Policy::load(ZORIO).expect("policy"));
        let (status, first) = call(&gw, Method::GET, None).await;
        assert_eq!(status, StatusCode::OK);
        let first = first.expect("ETag");
        let (status, second) = call(&gw, Method::PATCH, Some(&first)).await;
        assert_eq!(status, StatusCode::OK);
        (first, second.expect("new ETag"))
    };
    let store = Store::open(&path, Options::default()).expect("reopen");
    let gw = Gateway::new(store, Policy::load(ZORIO).expect("policy"));
    let (status, now) = call(&gw, Method::GET, None).await;
    assert_eq!(
        (status, now.as_deref()),
        (StatusCode::OK, Some(second.as_str()))
    );
    let (status, current) = call(&gw, Method::PATCH, Some(&first)).await;
    assert_eq!(status, StatusCode::PRECONDITION_FAILED);
    assert_eq!(current.as_deref(), Some(second.as_str()));
    let (status, third) = call(&gw, Method::PATCH, Some(&second)).await;
    assert_eq!(status, StatusCode::OK);
    assert_ne!(third.as_deref(), Some(second.as_str()));
}
