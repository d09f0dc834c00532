//! Idempotency records: the state machine, its errors, persistence, and exactly-once.

mod common;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Barrier};
use std::time::Duration;

use common::{temp_store, T0};
use proptest::prelude::*;
use tollgate::{
    Begin, Durability, Error, Fingerprint, IdempotencyKey, Lease, Options, Store, StoredResponse,
};

const K1: &str = "4d9c3a41-6bb7-4c4e-9a39-8f3c2d7e1f00";
const K2: &str = "0b6f8a52-12c3-4d5e-8f70-9a1b2c3d4e5f";

fn key(s: &str) -> IdempotencyKey {
    IdempotencyKey::parse(s).unwrap()
}

fn fp(body: &str) -> Fingerprint {
    Fingerprint::of("POST", "/api/sms", body.as_bytes())
}

fn replayed(b: Begin) -> StoredResponse {
    match b {
        Begin::Replay(r) => r.to_response(),
        other => panic!("expected Replay, got {other:?}"),
    }
}

fn started(b: Begin) -> Lease {
    match b {
        Begin::Started(l) => l,
        other => panic!("expected Started, got {other:?}"),
    }
}

fn response(n: usize) -> StoredResponse {
    StoredResponse::new(201, vec![b'x'; n])
        .with_header("content-type", "application/json")
        .with_header("location", "/sms/42")
}

#[test]
fn started_then_inflight_then_replay_then_mismatch() {
    let store = Store::open_in_memory(Options::default()).unwrap();
    let (k, f) = (key(K1), fp("a"));
    let lease = started(store.begin_at(b"tok", &k, &f, T0).unwrap());
    assert_eq!(lease.fence(), 1);
    assert_eq!(
        store.begin_at(b"tok", &k, &f, T0 + 10).unwrap(),
        Begin::InFlight
    );
    assert_eq!(
        store.begin_at(b"tok", &k, &fp("b"), T0 + 10).unwrap(),
        Begin::Mismatch
    );
    let r = response(1024);
    store.complete_at(&lease, &r, T0 + 20).unwrap();
    assert_eq!(
        replayed(store.begin_at(b"tok", &k, &f, T0 + 30).unwrap()),
        r.clone()
    );
    assert_eq!(
        store.begin_at(b"tok", &k, &fp("b"), T0 + 30).unwrap(),
        Begin::Mismatch
    );
    // Scopes are separate: the same key under another token is new.
    started(store.begin_at(b"other", &k, &f, T0 + 30).unwrap());
    // Another key is new too.
    started(store.begin_at(b"tok", &key(K2), &f, T0 + 30).unwrap());
}

#[test]
fn completed_records_expire_after_the_ttl() {
    let store =
        Store::open_in_memory(Options::default().idempotency_ttl(Duration::from_secs(3600)))
            .unwrap();
    let (k, f) = (key(K1), fp("a"));
    let lease = started(store.begin_at(b"tok", &k, &f, T0).unwrap());
    store.complete_at(&lease, &response(10), T0).unwrap();
    assert!(matches!(
        store.begin_at(b"tok", &k, &f, T0 + 3_599_000).unwrap(),
        Begin::Replay(_)
    ));
    // Past the TTL the key behaves as never seen, with any body.
    let again = started(
        store
            .begin_at(b"tok", &k, &fp("other"), T0 + 3_601_000)
            .unwrap(),
    );
    assert_eq!(again.fence(), 2);
    assert_eq!(
        store
            .begin_at(b"tok", &k, &fp("other"), T0 + 3_601_001)
            .unwrap(),
        Begin::InFlight
    );
}

#[test]
fn default_ttl_is_24_hours() {
    let store = Store::open_in_memory(Options::default()).unwrap();
    let (k, f) = (key(K1), fp("a"));
    let lease = started(store.begin_at(b"tok", &k, &f, T0).unwrap());
    store.complete_at(&lease, &response(10), T0).unwrap();
    let day = 24 * 3_600_000;
    assert!(matches!(
        store.begin_at(b"tok", &k, &f, T0 + day - 1_000).unwrap(),
        Begin::Replay(_)
    ));
    started(store.begin_at(b"tok", &k, &f, T0 + day + 1_000).unwrap());
}

#[test]
fn a_crashed_handler_does_not_lock_the_key_and_is_fenced_out() {
    let store =
        Store::open_in_memory(Options::default().lease_timeout(Duration::from_secs(30))).unwrap();
    let (k, f) = (key(K1), fp("a"));
    let first = started(store.begin_at(b"tok", &k, &f, T0).unwrap());
    assert_eq!(
        store.begin_at(b"tok", &k, &f, T0 + 29_000).unwrap(),
        Begin::InFlight
    );
    let second = started(store.begin_at(b"tok", &k, &f, T0 + 30_000).unwrap());
    assert!(second.fence() > first.fence());
    // The first holder wakes up late: refused, with the new fence named.
    match store.complete_at(&first, &response(5), T0 + 31_000) {
        Err(Error::LeaseLost { current }) => assert_eq!(current, second.fence()),
        other => panic!("expected LeaseLost, got {other:?}"),
    }
    assert!(matches!(store.abort(&first), Err(Error::LeaseLost { .. })));
    store
        .complete_at(&second, &response(6), T0 + 31_000)
        .unwrap();
    match store.begin_at(b"tok", &k, &f, T0 + 32_000).unwrap() {
        Begin::Replay(r) => assert_eq!(r.body().len(), 6),
        other => panic!("{other:?}"),
    }
}

#[test]
fn an_expired_lease_nobody_took_can_still_complete() {
    let store =
        Store::open_in_memory(Options::default().lease_timeout(Duration::from_secs(1))).unwrap();
    let lease = started(store.begin_at(b"tok", &key(K1), &fp("a"), T0).unwrap());
    store
        .complete_at(&lease, &response(3), T0 + 10_000)
        .unwrap();
    assert!(matches!(
        store
            .begin_at(b"tok", &key(K1), &fp("a"), T0 + 10_001)
            .unwrap(),
        Begin::Replay(_)
    ));
}

#[test]
fn a_lease_taken_over_with_another_body_moves_the_record() {
    let store =
        Store::open_in_memory(Options::default().lease_timeout(Duration::from_secs(1))).unwrap();
    let first = started(store.begin_at(b"tok", &key(K1), &fp("a"), T0).unwrap());
    let second = started(
        store
            .begin_at(b"tok", &key(K1), &fp("b"), T0 + 5_000)
            .unwrap(),
    );
    assert_eq!(second.fence(), first.fence() + 1);
    assert!(matches!(
        store.complete_at(&first, &response(1), T0 + 5_001),
        Err(Error::LeaseLost { .. })
    ));
    store
        .complete_at(&second, &response(2), T0 + 5_001)
        .unwrap();
    assert_eq!(
        store
            .begin_at(b"tok", &key(K1), &fp("a"), T0 + 5_002)
            .unwrap(),
        Begin::Mismatch
    );
}

#[test]
fn abort_lets_a_retry_run_again() {
    let store = Store::open_in_memory(Options::default()).unwrap();
    let (k, f) = (key(K1), fp("a"));
    let lease = started(store.begin_at(b"tok", &k, &f, T0).unwrap());
    store.abort(&lease).unwrap();
    assert!(matches!(
        store.complete_at(&lease, &response(1), T0),
        Err(Error::LeaseLost { .. })
    ));
    assert!(matches!(store.abort(&lease), Err(Error::LeaseLost { .. })));
    let retry = started(store.begin_at(b"tok", &k, &f, T0 + 1).unwrap());
    assert_eq!(retry.fence(), 2);
}

#[test]
fn bad_input_and_misuse_are_typed_errors_that_lose_nothing() {
    let store = Store::open_in_memory(Options::default().max_response_bytes(4096)).unwrap();
    let (k, f) = (key(K1), fp("a"));
    assert!(matches!(
        store.begin_at(b"", &k, &f, T0),
        Err(Error::InvalidScope { len: 0 })
    ));
    let long_scope = vec![b's'; tollgate::MAX_SCOPE_LEN + 1];
    assert!(matches!(
        store.begin_at(&long_scope, &k, &f, T0),
        Err(Error::InvalidScope { .. })
    ));
    assert!(matches!(
        IdempotencyKey::parse("nope"),
        Err(Error::InvalidIdempotencyKey(_))
    ));
    let lease = started(store.begin_at(b"tok", &k, &f, T0).unwrap());
    // Too large: typed error, the lease stays usable.
    match store.complete_at(&lease, &response(8000), T0) {
        Err(Error::ResponseTooLarge { len, max }) => assert!(len > max && max == 4096),
        other => panic!("{other:?}"),
    }
    assert_eq!(store.begin_at(b"tok", &k, &f, T0).unwrap(), Begin::InFlight);
    let r = response(100);
    store.complete_at(&lease, &r, T0).unwrap();
    assert!(matches!(
        store.complete_at(&lease, &response(5), T0),
        Err(Error::AlreadyCompleted)
    ));
    assert!(matches!(store.abort(&lease), Err(Error::AlreadyCompleted)));
    assert_eq!(replayed(store.begin_at(b"tok", &k, &f, T0).unwrap()), r);
    // Keys at the maximum scope length, and responses at the maximum size, work.
    let max_scope = vec![b'm'; tollgate::MAX_SCOPE_LEN];
    let l2 = started(store.begin_at(&max_scope, &k, &f, T0).unwrap());
    let mut big = StoredResponse::new(200, Vec::new());
    big.body = vec![7; 4096 - 8];
    store.complete_at(&l2, &big, T0).unwrap();
    assert_eq!(
        replayed(store.begin_at(&max_scope, &k, &f, T0).unwrap()),
        big
    );
}

#[test]
fn records_survive_close_reopen_and_drop_without_close() {
    let (_dir, path) = temp_store();
    let r = response(1024);
    let pending;
    {
        let store = Store::open(&path, Options::default()).unwrap();
        let done = started(store.begin_at(b"tok", &key(K1), &fp("a"), T0).unwrap());
        store.complete_at(&done, &r, T0).unwrap();
        pending = started(store.begin_at(b"tok", &key(K2), &fp("b"), T0).unwrap());
        store.close().unwrap();
    }
    {
        let store = Store::open(&path, Options::default()).unwrap();
        assert_eq!(store.open_report().entries, 2);
        assert_eq!(
            replayed(store.begin_at(b"tok", &key(K1), &fp("a"), T0 + 1).unwrap()),
            r.clone()
        );
        assert_eq!(
            store.begin_at(b"tok", &key(K2), &fp("b"), T0 + 1).unwrap(),
            Begin::InFlight
        );
        // The lease from before the restart is still the key's: it can complete.
        store.complete_at(&pending, &response(7), T0 + 2).unwrap();
        // Dropped without close.
    }
    let store = Store::open(&path, Options::default()).unwrap();
    assert_eq!(
        replayed(store.begin_at(b"tok", &key(K1), &fp("a"), T0 + 3).unwrap()),
        r
    );
    match store.begin_at(b"tok", &key(K2), &fp("b"), T0 + 3).unwrap() {
        Begin::Replay(x) => assert_eq!(x.body().len(), 7),
        other => panic!("{other:?}"),
    }
}

#[test]
fn sync_durability_completes_and_survives_reopen() {
    let (_dir, path) = temp_store();
    {
        let store = Store::open(&path, Options::default().durability(Durability::Sync)).unwrap();
        let l = started(store.begin_at(b"tok", &key(K1), &fp("a"), T0).unwrap());
        store.complete_at(&l, &response(3000), T0).unwrap();
    }
    let store = Store::open(&path, Options::default()).unwrap();
    assert!(matches!(
        store.begin_at(b"tok", &key(K1), &fp("a"), T0).unwrap(),
        Begin::Replay(_)
    ));
}

#[test]
fn many_responses_span_blob_segments_and_reopen() {
    let (_dir, path) = temp_store();
    let keys: Vec<IdempotencyKey> = (0..400u128)
        .map(|i| IdempotencyKey::from_uuid(uuid_v4(i)).unwrap())
        .collect();
    {
        let opts = Options::default()
            .segment_size_log2(16)
            .max_response_bytes(32_000);
        let store = Store::open(&path, opts).unwrap();
        for (i, k) in keys.iter().enumerate() {
            let l = started(store.begin_at(b"tok", k, &fp("a"), T0).unwrap());
            store.complete_at(&l, &response(500 + i), T0).unwrap();
        }
    }
    let store = Store::open(&path, Options::default()).unwrap();
    for (i, k) in keys.iter().enumerate() {
        match store.begin_at(b"tok", k, &fp("a"), T0 + 1).unwrap() {
            Begin::Replay(r) => assert_eq!(r.body().len(), 500 + i),
            other => panic!("{i}: {other:?}"),
        }
    }
    // New records after the reopen go on being stored and replayed.
    let k = key(K1);
    let l = started(store.begin_at(b"new", &k, &fp("a"), T0).unwrap());
    store.complete_at(&l, &response(2000), T0).unwrap();
    assert!(matches!(
        store.begin_at(b"new", &k, &fp("a"), T0).unwrap(),
        Begin::Replay(_)
    ));
}

fn uuid_v4(i: u128) -> uuid::Uuid {
    uuid::Builder::from_random_bytes(
        (i.wrapping_mul(0x9E37_79B9_7F4A_7C15_F39C_C060_5CED_C835)).to_le_bytes(),
    )
    .into_uuid()
}

#[test]
fn exactly_one_of_many_threads_starts_a_new_key() {
    for round in 0..20u128 {
        let store = Store::open_in_memory(Options::default()).unwrap();
        let k = IdempotencyKey::from_uuid(uuid_v4(round)).unwrap();
        let barrier = Arc::new(Barrier::new(8));
        let started_n = Arc::new(AtomicU64::new(0));
        let handles: Vec<_> = (0..8)
            .map(|_| {
                let (store, barrier, started_n) =
                    (store.clone(), barrier.clone(), started_n.clone());
                std::thread::spawn(move || {
                    barrier.wait();
                    match store.begin_at(b"tok", &k, &fp("a"), T0).unwrap() {
                        Begin::Started(_) => {
                            started_n.fetch_add(1, Ordering::SeqCst);
                        }
                        Begin::InFlight => {}
                        other => panic!("{other:?}"),
                    }
                })
            })
            .collect();
        for h in handles {
            h.join().unwrap();
        }
        assert_eq!(started_n.load(Ordering::SeqCst), 1, "round {round}");
    }
}

#[test]
fn exactly_one_takeover_of_an_expired_lease() {
    for round in 0..20u128 {
        let store = Store::open_in_memory(Options::default().lease_timeout(Duration::from_secs(1)))
            .unwrap();
        let k = IdempotencyKey::from_uuid(uuid_v4(round + 100)).unwrap();
        started(store.begin_at(b"tok", &k, &fp("a"), T0).unwrap());
        let barrier = Arc::new(Barrier::new(8));
        let winners = Arc::new(AtomicU64::new(0));
        let handles: Vec<_> = (0..8u64)
            .map(|t| {
                let (store, barrier, winners) = (store.clone(), barrier.clone(), winners.clone());
                std::thread::spawn(move || {
                    barrier.wait();
                    // Half of them with another body: the takeover that wins decides.
                    let body = if t % 2 == 0 { "a" } else { "b" };
                    if let Begin::Started(_) =
                        store.begin_at(b"tok", &k, &fp(body), T0 + 5_000).unwrap()
                    {
                        winners.fetch_add(1, Ordering::SeqCst);
                    }
                })
            })
            .collect();
        for h in handles {
            h.join().unwrap();
        }
        assert_eq!(winners.load(Ordering::SeqCst), 1, "round {round}");
    }
}

// ---- Model test: the state machine against a map and an explicit clock. ----

#[derive(Debug, Clone)]
enum Op {
    Begin { key: usize, body: usize },
    Complete { lease: usize, size: usize },
    Abort { lease: usize },
    Advance { ms: u64 },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0usize..3, 0usize..2).prop_map(|(key, body)| Op::Begin { key, body }),
        3 => (0usize..8, 0usize..300).prop_map(|(lease, size)| Op::Complete { lease, size }),
        1 => (0usize..8).prop_map(|lease| Op::Abort { lease }),
        2 => prop_oneof![0u64..2_000, 0u64..40_000, 0u64..100_000].prop_map(|ms| Op::Advance { ms }),
    ]
}

#[derive(Debug, Clone, PartialEq)]
enum Rec {
    InFlight {
        body: usize,
        fence: u32,
        until: u64,
    },
    Done {
        body: usize,
        size: usize,
        until: u64,
    },
    Vacant {
        fence: u32,
    },
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(150))]
    #[test]
    fn state_machine_matches_the_model(ops in prop::collection::vec(op(), 1..80)) {
        // Lease 30 s, TTL 90 s, whole seconds (the store rounds deadlines up to seconds).
        let store = Store::open_in_memory(
            Options::default().lease_timeout(Duration::from_secs(30)).idempotency_ttl(Duration::from_secs(90)),
        ).unwrap();
        let keys = [key(K1), key(K2), key("9f0e1d2c-3b4a-4596-8877-665544332211")];
        let bodies = [fp("a"), fp("b")];
        let mut model: Vec<Option<Rec>> = vec![None; 3];
        let mut fences = [0u32; 3];
        let mut leases: Vec<(usize, usize, Lease)> = Vec::new();
        let mut now = T0; // deadlines are rounded up to whole seconds, as documented
        for op in ops {
            match op {
                Op::Advance { ms } => now += ms,
                Op::Begin { key: ki, body } => {
                    let got = store.begin_at(b"tok", &keys[ki], &bodies[body], now).unwrap();
                    let live = |until: u64| now < until;
                    let expect = match &model[ki] {
                        Some(Rec::Done { body: b, size, until }) if live(*until) => {
                            if *b == body { Some(format!("replay {size}")) } else { Some("mismatch".into()) }
                        }
                        Some(Rec::InFlight { body: b, until, .. }) if live(*until) => {
                            if *b == body { Some("inflight".into()) } else { Some("mismatch".into()) }
                        }
                        _ => None,
                    };
                    match (expect, got) {
                        (None, Begin::Started(l)) => {
                            fences[ki] += 1;
                            prop_assert_eq!(l.fence(), fences[ki]);
                            model[ki] = Some(Rec::InFlight { body, fence: fences[ki], until: (now + 30_000).div_ceil(1000) * 1000 });
                            leases.push((ki, body, l));
                        }
                        (Some(e), Begin::Replay(r)) => prop_assert_eq!(e, format!("replay {}", r.body().len())),
                        (Some(e), Begin::InFlight) => prop_assert_eq!(e, "inflight"),
                        (Some(e), Begin::Mismatch) => prop_assert_eq!(e, "mismatch"),
                        (e, g) => prop_assert!(false, "expected {:?}, got {:?}", e, g),
                    }
                }
                Op::Complete { lease, size } => {
                    let Some((ki, body, l)) = leases.get(lease).cloned() else { continue };
                    let got = store.complete_at(&l, &StoredResponse::new(200, vec![1u8; size]), now);
                    match model[ki].clone() {
                        Some(Rec::InFlight { fence, .. }) if fence == l.fence() => {
                            prop_assert!(got.is_ok(), "{:?}", got);
                            model[ki] = Some(Rec::Done { body, size, until: (now + 90_000).div_ceil(1000) * 1000 });
                        }
                        Some(Rec::Done { .. }) if fences[ki] == l.fence() => {
                            prop_assert!(matches!(got, Err(Error::AlreadyCompleted)), "{:?}", got);
                        }
                        _ => prop_assert!(matches!(got, Err(Error::LeaseLost { .. })), "{:?}", got),
                    }
                }
                Op::Abort { lease } => {
                    let Some((ki, _, l)) = leases.get(lease).cloned() else { continue };
                    let got = store.abort(&l);
                    match model[ki].clone() {
                        Some(Rec::InFlight { fence, .. }) if fence == l.fence() => {
                            prop_assert!(got.is_ok());
                            model[ki] = Some(Rec::Vacant { fence });
                        }
                        Some(Rec::Done { .. }) if fences[ki] == l.fence() => {
                            prop_assert!(matches!(got, Err(Error::AlreadyCompleted)));
                        }
                        _ => prop_assert!(matches!(got, Err(Error::LeaseLost { .. })), "{:?}", got),
                    }
                }
            }
        }
    }
}
