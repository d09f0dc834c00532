//! A gateway restart keeps every count: a file store, the Zorio policy, counts made through
//! the gateway's keys, the store closed and reopened (with its background compactor running),
//! and the counts still there, also after the compactor's first passes.
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
