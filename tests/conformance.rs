//! One suite, every backend: the embedded store, the shared Redis store and a hybrid node run
//! the same scenarios through the `Backend` trait, so the three cannot drift apart.
//!
//! * Every scenario asserts what any backend must do (admit up to the limit, refuse after,
//!   consume nothing when refusing, the four idempotency outcomes, fencing, TTLs).
//! * The embedded and the shared store must also agree field by field: each scenario records a
//!   transcript of every decision and outcome, and the two transcripts must be equal. A
//!   proptest drives random operation sequences (checks, peeks, time moving both ways,
//!   idempotency) against both and compares every answer.
//!
//! Versions and concurrency permits have their scenarios in `conformance/coordination.rs`,
//! reserve and settle theirs in `conformance/debit.rs`.
//!
//! Needs a Redis or Valkey server (`TOLLGATE_REDIS_URL`); skipped with a message without one,
//! failed when `CI` is set.
#![cfg(feature = "redis")]

mod server;
#[macro_use]
#[path = "conformance/coordination.rs"]
mod coordination;
#[macro_use]
#[path = "conformance/debit.rs"]
mod debit;

use std::time::Duration;

use proptest::prelude::*;
use tollgate::fleet::{HybridOptions, HybridStore, RedisOptions, RedisStore};
use tollgate::{
    Backend, Begin, Error, Fingerprint, IdempotencyKey, Lease, Limit, Limits, ManualClock, Options,
    Store, StoredResponse,
};

const T0: u64 = 1_700_000_000_000;

fn embedded() -> Store {
    Store::open_in_memory(Options::default().compactor(false)).unwrap()
}

fn shared(url: &str, test: &str) -> RedisStore {
    let opts = RedisOptions::default().prefix(server::prefix(test));
    RedisStore::open(url, opts).unwrap()
}

/// A single hybrid node that syncs after every call (its budget never binds here). Its clock
/// is set to each call's time, so that a sync ages the counts at the time of the scenario.
struct SyncedHybrid(HybridStore, ManualClock);

impl Backend for SyncedHybrid {
    fn now_ms(&self) -> u64 {
        self.0.now_ms()
    }
    fn check_at(
        &self,
        key: &[u8],
        l: &Limits,
        cost: u32,
        now: u64,
    ) -> tollgate::Result<tollgate::Decision> {
        self.1.set_ms(now);
        let d = self.0.check_at(key, l, cost, now);
        self.0.sync_now().unwrap();
        d
    }
    fn peek_at(&self, key: &[u8], l: &Limits, now: u64) -> tollgate::Result<tollgate::Decision> {
        self.1.set_ms(now);
        self.0.peek_at(key, l, now)
    }
    fn begin_at(
        &self,
        s: &[u8],
        k: &IdempotencyKey,
        f: &Fingerprint,
        now: u64,
    ) -> tollgate::Result<Begin> {
        Backend::begin_at(&self.0, s, k, f, now)
    }
    fn complete_at(&self, l: &Lease, r: &StoredResponse, now: u64) -> tollgate::Result<()> {
        Backend::complete_at(&self.0, l, r, now)
    }
    fn abort(&self, l: &Lease) -> tollgate::Result<()> {
        Backend::abort(&self.0, l)
    }
    forward_coordination!(0);
    forward_debit!(0);
}

fn hybrid(url: &str, test: &str) -> SyncedHybrid {
    let opts = HybridOptions::default().batch(10_000).background(false);
    let clock = ManualClock::new(T0);
    let local =
        Store::open_in_memory(Options::default().compactor(false).clock(clock.clone())).unwrap();
    SyncedHybrid(
        HybridStore::new(local, shared(url, test), opts).unwrap(),
        clock,
    )
}

fn key(i: u8) -> IdempotencyKey {
    let mut b = [0x5au8; 16];
    b[0] = i;
    b[6] = 0x40 | (b[6] & 0x0f); // version 4
    b[8] = 0x80 | (b[8] & 0x3f); // RFC 4122 variant
    IdempotencyKey::from_uuid(uuid::Uuid::from_bytes(b)).unwrap()
}

type Scenario = fn(&dyn Backend, &mut Vec<String>, bool);

/// Run `scenario` on the embedded store, on Redis and (if `with_hybrid`) on a hybrid node;
/// the embedded and shared transcripts must be equal.
fn run(name: &str, scenario: Scenario, with_hybrid: bool) {
    let mut local = Vec::new();
    scenario(&embedded(), &mut local, true);
    assert!(!local.is_empty(), "{name}: empty transcript");
    let Some(url) = server::url(name) else { return };
    let mut remote = Vec::new();
    scenario(&shared(&url, name), &mut remote, true);
    assert_eq!(
        local.len(),
        remote.len(),
        "{name}: transcripts differ in length"
    );
    for (i, (a, b)) in local.iter().zip(&remote).enumerate() {
        assert_eq!(a, b, "{name}: step {i} differs (embedded vs shared)");
    }
    if with_hybrid {
        scenario(&hybrid(&url, name), &mut Vec::new(), false);
    }
}

fn rec(t: &mut Vec<String>, what: impl std::fmt::Debug) {
    t.push(format!("{what:?}"));
}

#[test]
fn admits_up_to_the_limit_and_refusals_consume_nothing() {
    run(
        "admits_up_to_the_limit",
        |b, t, _| {
            let limits = Limits::new(&[Limit::per_minute(5)]).unwrap();
            for i in 0..5u32 {
                let d = b
                    .check_at(b"tok", &limits, 1, T0 + u64::from(i) * 1000)
                    .unwrap();
                assert!(d.allowed(), "request {i}");
                assert_eq!(d.remaining(), 4 - i);
                rec(t, d);
            }
            let no = b.check_at(b"tok", &limits, 1, T0 + 10_000).unwrap();
            assert!(!no.allowed());
            assert_eq!(no.remaining(), 0);
            let wait = no.binding().retry_after_ms();
            // The first admission (T0) leaves an exact log at T0 + 60 s, 50 s after this
            // refusal; a sliding window of B = 64 sub-windows of g = 938 ms releases it at most
            // (B + 1) × g - W = 65 × 938 - 60 000 = 970 ms later.
            assert!((50_000..=50_970).contains(&wait), "retry after {wait} ms");
            rec(t, no);
            // Refusals consume nothing: many of them do not push the release back.
            for _ in 0..20 {
                assert!(!b
                    .check_at(b"tok", &limits, 1, T0 + 11_000)
                    .unwrap()
                    .allowed());
            }
            let again = T0 + 10_000 + wait;
            let ok = b.check_at(b"tok", &limits, 1, again).unwrap();
            assert!(ok.allowed(), "admitted once retry_after has passed");
            rec(t, ok);
            // Other keys are independent.
            assert!(b.check_at(b"other", &limits, 5, T0).unwrap().allowed());
        },
        true,
    );
}

#[test]
fn several_windows_are_all_or_nothing() {
    run(
        "all_or_nothing",
        |b, t, _| {
            let limits = Limits::new(&[Limit::per_minute(10), Limit::per_hour(3)]).unwrap();
            for i in 0..3 {
                rec(t, b.check_at(b"k", &limits, 1, T0 + i).unwrap());
            }
            let no = b.check_at(b"k", &limits, 1, T0 + 10).unwrap();
            assert!(!no.allowed());
            assert_eq!(no.limit(), 3, "the hour window binds");
            rec(t, no);
            // The minute window was not charged by the refusal.
            let peek = b.peek_at(b"k", &limits, T0 + 20).unwrap();
            assert_eq!(peek.windows()[0].used(), 3);
            assert_eq!(peek.windows()[1].used(), 3);
            rec(t, peek);
            // A cost that fits the minute but not the hour is refused whole.
            let big = b.check_at(b"k", &limits, 2, T0 + 30).unwrap();
            assert!(!big.allowed());
            rec(t, big);
            // After the minute passes the hour still binds.
            let later = b.check_at(b"k", &limits, 1, T0 + 120_000).unwrap();
            assert!(!later.allowed());
            assert_eq!(later.windows()[0].used(), 0);
            rec(t, later);
        },
        true,
    );
}

#[test]
fn exact_windows_release_on_time() {
    run(
        "exact_windows",
        |b, t, exact_fields| {
            let limits = Limits::new(&[Limit::per_minute(3).exact()]).unwrap();
            for i in 0..3 {
                assert!(b
                    .check_at(b"login", &limits, 1, T0 + i * 1000)
                    .unwrap()
                    .allowed());
            }
            let no = b.check_at(b"login", &limits, 1, T0 + 5_000).unwrap();
            assert!(!no.allowed());
            if exact_fields {
                // The first admission (T0) leaves the window at T0 + 60 s exactly.
                assert_eq!(no.binding().retry_after_ms(), 55_000);
                assert!(!b
                    .check_at(b"login", &limits, 1, T0 + 59_999)
                    .unwrap()
                    .allowed());
            }
            rec(t, no);
            if exact_fields {
                // At T0 + 60 s exactly the first admission has left; the second has not.
                let ok = b.check_at(b"login", &limits, 1, T0 + 60_000).unwrap();
                assert!(ok.allowed());
                rec(t, ok);
                assert!(!b
                    .check_at(b"login", &limits, 1, T0 + 60_999)
                    .unwrap()
                    .allowed());
                let ok = b.check_at(b"login", &limits, 1, T0 + 61_000).unwrap();
                assert!(ok.allowed());
                rec(t, ok);
            } else {
                // A hybrid node's fleet view counts exact windows in sliding sub-windows (g =
                // 938 ms): T0's admission leaves it at most 65 × 938 - 60 000 = 970 ms late.
                assert!(b
                    .check_at(b"login", &limits, 1, T0 + 60_970)
                    .unwrap()
                    .allowed());
            }
            // Mixed: an exact small window and a bucketed large one.
            let mixed = Limits::new(&[Limit::per_minute(2).exact(), Limit::per_hour(100)]).unwrap();
            for i in 0..4 {
                rec(t, b.check_at(b"mixed", &mixed, 1, T0 + i * 10).unwrap());
            }
            let p = b.peek_at(b"mixed", &mixed, T0 + 100).unwrap();
            assert_eq!(p.windows()[0].used(), 2);
            assert_eq!(
                p.windows()[1].used(),
                2,
                "the refused ones are not in the hour"
            );
            rec(t, p);
        },
        true,
    );
}

#[test]
fn costs_peeks_errors_and_a_clock_that_goes_back() {
    run(
        "costs_and_errors",
        |b, t, _| {
            let limits = Limits::new(&[Limit::per_second(10), Limit::per_minute(25)]).unwrap();
            rec(t, b.check_at(b"c", &limits, 7, T0).unwrap());
            let zero = b.check_at(b"c", &limits, 0, T0).unwrap();
            assert!(zero.allowed());
            assert_eq!(zero.windows()[0].used(), 7);
            rec(t, zero);
            assert!(!b.check_at(b"c", &limits, 4, T0 + 1).unwrap().allowed());
            rec(t, b.check_at(b"c", &limits, 3, T0 + 2).unwrap());
            rec(t, b.peek_at(b"c", &limits, T0 + 3).unwrap());
            // The clock steps back an hour: the counts stay.
            let back = b.check_at(b"c", &limits, 1, T0 - 3_600_000).unwrap();
            assert!(
                !back.allowed(),
                "a backwards clock never hands out fresh quota"
            );
            rec(t, back);
            assert!(b.check_at(b"c", &limits, 1, T0 + 1_500).unwrap().allowed());
            assert!(matches!(
                b.check_at(b"", &limits, 1, T0),
                Err(Error::InvalidKey { len: 0 })
            ));
            assert!(matches!(
                b.check_at(&[b'x'; 129], &limits, 1, T0),
                Err(Error::InvalidKey { len: 129 })
            ));
            assert!(matches!(
                b.check_at(b"c", &limits, 11, T0),
                Err(Error::CostExceedsLimit {
                    cost: 11,
                    limit: 10
                })
            ));
            // Keys with braces and binary bytes are keys like any other.
            let odd = b"{tok}\x00\xff}";
            assert!(b.check_at(odd, &limits, 10, T0).unwrap().allowed());
            assert!(!b.check_at(odd, &limits, 1, T0).unwrap().allowed());
            assert!(b.check_at(b"{tok}", &limits, 1, T0).unwrap().allowed());
        },
        true,
    );
}

#[test]
fn a_window_that_counted_then_gave_back_keeps_its_newer_sub_window() {
    run(
        "gave_back_keeps_its_sub_window",
        |b, t, same_store| {
            // 3 per 2 s (g = ⌈2000/64⌉ = 32 ms) and 4 per minute.
            let limits =
                Limits::new(&[Limit::new(3, Duration::from_secs(2)), Limit::per_minute(4)])
                    .unwrap();
            rec(t, b.check_at(b"r", &limits, 3, T0).unwrap());
            // 2.1 s later the 2 s window has dropped T0's sub-window (it leaves at most
            // 65 × 32 = 2 080 ms after T0) and counts 2 in a newer sub-window; the minute
            // refuses (3 + 2 > 4), so the 2 s window gives them back.
            let no = b.check_at(b"r", &limits, 2, T0 + 2_100).unwrap();
            assert!(!no.allowed());
            assert_eq!(no.windows()[0].used(), 0);
            rec(t, no);
            // The clock steps back 2 s. One store (embedded or shared) judges the 2 s window
            // at the newer sub-window it moved to: T0's 3 stay dropped. (A hybrid node's
            // fleet view never moved: it still counts them.)
            let back = b.check_at(b"r", &limits, 1, T0 + 100).unwrap();
            if same_store {
                assert!(back.allowed());
                assert_eq!(back.windows()[0].used(), 1);
                assert_eq!(back.windows()[1].used(), 4);
            }
            rec(t, back);
            rec(t, b.peek_at(b"r", &limits, T0 + 200).unwrap());
        },
        true,
    );
}

#[test]
fn idempotency_outcomes_fencing_and_ttl() {
    run(
        "idempotency",
        |b, t, _| {
            let k = key(1);
            let fp = Fingerprint::of("POST", "/sms", b"{\"to\":1}");
            let other = Fingerprint::of("POST", "/sms", b"{\"to\":2}");
            let Begin::Started(lease) = b.begin_at(b"tok", &k, &fp, T0).unwrap() else {
                panic!("first begin starts")
            };
            assert_eq!(lease.fence(), 1);
            assert_eq!(lease.deadline_ms(), T0 + 60_000);
            rec(t, &lease);
            assert_eq!(
                b.begin_at(b"tok", &k, &fp, T0 + 1).unwrap(),
                Begin::InFlight
            );
            assert_eq!(
                b.begin_at(b"tok", &k, &other, T0 + 1).unwrap(),
                Begin::Mismatch
            );
            // The same key in another scope is another record.
            assert!(matches!(
                b.begin_at(b"tok2", &k, &fp, T0).unwrap(),
                Begin::Started(_)
            ));
            let resp = StoredResponse::new(201, "sent").with_header("content-type", "text/plain");
            b.complete_at(&lease, &resp, T0 + 500).unwrap();
            match b.begin_at(b"tok", &k, &fp, T0 + 1000).unwrap() {
                Begin::Replay(r) => {
                    assert_eq!(r, resp);
                    rec(t, r);
                }
                other => panic!("expected a replay, got {other:?}"),
            }
            assert_eq!(
                b.begin_at(b"tok", &k, &other, T0 + 1000).unwrap(),
                Begin::Mismatch
            );
            assert!(matches!(
                b.complete_at(&lease, &resp, T0 + 2000),
                Err(Error::AlreadyCompleted)
            ));
            // The TTL (24 h from completion) ends the replay: the key starts again, fenced.
            let after = T0 + 500 + 24 * 3_600_000 + 1000;
            let Begin::Started(l2) = b.begin_at(b"tok", &k, &fp, after).unwrap() else {
                panic!("expired record starts again")
            };
            assert_eq!(l2.fence(), 2);
            rec(t, &l2);
            assert!(matches!(
                b.complete_at(&lease, &resp, after),
                Err(Error::LeaseLost { current: 2 })
            ));

            // Lease timeout: a crashed handler's key is taken over, its late completion refused.
            let k3 = key(3);
            let Begin::Started(a) = b.begin_at(b"tok", &k3, &fp, T0).unwrap() else {
                panic!()
            };
            assert_eq!(
                b.begin_at(b"tok", &k3, &fp, T0 + 59_000).unwrap(),
                Begin::InFlight
            );
            let Begin::Started(c) = b.begin_at(b"tok", &k3, &other, T0 + 60_000).unwrap() else {
                panic!("lease expired: taken over, even with another fingerprint")
            };
            assert_eq!(c.fence(), 2);
            rec(t, &c);
            let late = b.complete_at(&a, &resp, T0 + 61_000);
            assert!(
                matches!(late, Err(Error::LeaseLost { current: 2 })),
                "{late:?}"
            );
            b.complete_at(&c, &StoredResponse::new(200, "second"), T0 + 61_000)
                .unwrap();
            assert_eq!(
                b.begin_at(b"tok", &k3, &fp, T0 + 62_000).unwrap(),
                Begin::Mismatch
            );

            // Abort lets a retry run again, with a higher fence; the aborted lease is dead.
            let k4 = key(4);
            let Begin::Started(x) = b.begin_at(b"tok", &k4, &fp, T0).unwrap() else {
                panic!()
            };
            b.abort(&x).unwrap();
            assert!(matches!(b.abort(&x), Err(Error::LeaseLost { current: 1 })));
            let Begin::Started(y) = b.begin_at(b"tok", &k4, &fp, T0 + 1).unwrap() else {
                panic!("aborted key starts again")
            };
            assert_eq!(y.fence(), 2);
            rec(t, &y);
            assert!(matches!(
                b.complete_at(&x, &resp, T0 + 2),
                Err(Error::LeaseLost { current: 2 })
            ));

            // Too large a response is refused and the lease stays usable.
            let huge = StoredResponse::new(200, vec![0u8; 2 << 20]);
            assert!(matches!(
                b.complete_at(&y, &huge, T0 + 3),
                Err(Error::ResponseTooLarge { .. })
            ));
            b.complete_at(&y, &resp, T0 + 4).unwrap();
            assert!(matches!(
                b.begin_at(b"", &k4, &fp, T0),
                Err(Error::InvalidScope { len: 0 })
            ));
        },
        true,
    );
}

// ---------------------------------------------------------------------------------------------
// Differential proptest: random operation sequences, embedded vs shared, answer by answer.

#[derive(Debug, Clone)]
enum Op {
    Check { key: u8, cost: u32 },
    Peek { key: u8 },
    Forward(u64),
    Back(u64),
    Begin { scope: u8, idem: u8, fp: u8 },
    Complete { lease: usize, status: u16 },
    Abort { lease: usize },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (0u8..4, 0u32..4).prop_map(|(key, cost)| Op::Check { key, cost }),
        1 => (0u8..4).prop_map(|key| Op::Peek { key }),
        // Whole seconds and sub-window lengths too (B = 64: g = 938 ms for a minute, 32 ms
        // for 2 s, 1 407 ms for 90 s), so that times land on sub-window boundaries.
        3 => prop_oneof![
            0u64..2_000,
            0u64..70_000,
            (0u64..70).prop_map(|s| s * 1000),
            (0u64..70).prop_map(|n| n * 938),
            (0u64..70).prop_map(|n| n * 32),
            (0u64..70).prop_map(|n| n * 1_407),
            Just(3_600_000u64)
        ]
        .prop_map(Op::Forward),
        1 => (0u64..5_000).prop_map(Op::Back),
        2 => (0u8..2, 0u8..3, 0u8..2).prop_map(|(scope, idem, fp)| Op::Begin { scope, idem, fp }),
        1 => (0usize..8, 200u16..204).prop_map(|(lease, status)| Op::Complete { lease, status }),
        1 => (0usize..8).prop_map(|lease| Op::Abort { lease }),
    ]
}

/// Each key always uses the same set of limits (the stores differ only in how they move an
/// entry whose limits change, which both keep safe but not identical).
fn limits_of(key: u8) -> Limits {
    let set: &[Limit] = match key {
        0 => &[Limit::per_minute(5)],
        1 => &[Limit::per_minute(4).exact(), Limit::per_hour(20)],
        2 => &[Limit::new(3, Duration::from_secs(2)), Limit::per_minute(7)],
        _ => &[
            Limit::per_minute(40_000),
            Limit::new(9, Duration::from_secs(90)).exact(),
        ],
    };
    Limits::new(set).unwrap()
}

fn replay(b: &dyn Backend, ops: &[Op]) -> Vec<String> {
    let mut now = T0 + 123;
    let mut leases: Vec<Lease> = Vec::new();
    let mut out = Vec::new();
    for op in ops {
        let line = match op {
            Op::Check { key, cost } => {
                let k = [b'k', *key];
                format!("{:?}", b.check_at(&k, &limits_of(*key), *cost, now))
            }
            Op::Peek { key } => {
                let k = [b'k', *key];
                format!("{:?}", b.peek_at(&k, &limits_of(*key), now))
            }
            Op::Forward(ms) => {
                now += ms;
                continue;
            }
            Op::Back(ms) => {
                now -= ms;
                continue;
            }
            Op::Begin { scope, idem, fp } => {
                let fp = Fingerprint::of("POST", "/x", &[*fp]);
                let r = b.begin_at(&[b's', *scope], &key(*idem), &fp, now);
                if let Ok(Begin::Started(l)) = &r {
                    leases.push(l.clone());
                }
                format!("{r:?}")
            }
            Op::Complete { lease, status } => match leases.get(*lease) {
                Some(l) => {
                    let r = StoredResponse::new(*status, format!("body {lease}"));
                    format!("{:?}", b.complete_at(l, &r, now))
                }
                None => continue,
            },
            Op::Abort { lease } => match leases.get(*lease) {
                Some(l) => format!("{:?}", b.abort(l)),
                None => continue,
            },
        };
        out.push(line);
    }
    out
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// With the default 64 sub-windows and the extremes 16 and 256 (g = 4 ms for a 1 s
    /// window).
    #[test]
    fn embedded_and_shared_agree_on_every_answer(
        ops in prop::collection::vec(op(), 1..60),
        b in prop_oneof![2 => Just(64u32), 1 => Just(16u32), 1 => Just(256u32)],
    ) {
        let Some(url) = server::url("embedded_and_shared_agree") else { return Ok(()) };
        let embedded = Store::open_in_memory(Options::default().compactor(false).sub_windows(b))
            .unwrap();
        let shared = RedisStore::open(
            &url,
            RedisOptions::default().prefix(server::prefix("prop")).sub_windows(b),
        )
        .unwrap();
        let local = replay(&embedded, &ops);
        let remote = replay(&shared, &ops);
        prop_assert_eq!(local.len(), remote.len());
        for (i, (a, b)) in local.iter().zip(&remote).enumerate() {
            prop_assert_eq!(a, b, "answer {} differs", i);
        }
    }
}

/// Checks, peeks and time moving forward on keys whose windows are all sliding (keys 0 and 2 of
/// [`limits_of`]).
fn forward_op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (0u8..2, 0u32..4).prop_map(|(k, cost)| Op::Check { key: k * 2, cost }),
        1 => (0u8..2).prop_map(|k| Op::Peek { key: k * 2 }),
        3 => prop_oneof![
            0u64..2_000,
            0u64..70_000,
            (0u64..70).prop_map(|n| n * 938),
            (0u64..70).prop_map(|n| n * 32),
        ]
        .prop_map(Op::Forward),
    ]
}

/// Two hybrid nodes on one server: checks go to `a`, which syncs after each; peeks go to `b`,
/// which has counted nothing itself, so that its answer is its fleet view alone (refreshed by
/// a sync before it answers).
struct TwoNodes {
    a: HybridStore,
    b: HybridStore,
    clock: ManualClock,
}

impl TwoNodes {
    fn new(url: &str, test: &str) -> TwoNodes {
        let clock = ManualClock::new(T0);
        let prefix = server::prefix(test);
        let node = || {
            let local =
                Store::open_in_memory(Options::default().compactor(false).clock(clock.clone()))
                    .unwrap();
            let shared = RedisStore::open(url, RedisOptions::default().prefix(&prefix)).unwrap();
            let opts = HybridOptions::default().batch(10_000).background(false);
            HybridStore::new(local, shared, opts).unwrap()
        };
        TwoNodes {
            a: node(),
            b: node(),
            clock,
        }
    }
}

impl Backend for TwoNodes {
    fn now_ms(&self) -> u64 {
        self.a.now_ms()
    }
    fn check_at(
        &self,
        key: &[u8],
        l: &Limits,
        cost: u32,
        now: u64,
    ) -> tollgate::Result<tollgate::Decision> {
        self.clock.set_ms(now);
        let d = self.a.check_at(key, l, cost, now);
        self.a.sync_now().unwrap();
        d
    }
    fn peek_at(&self, key: &[u8], l: &Limits, now: u64) -> tollgate::Result<tollgate::Decision> {
        self.clock.set_ms(now);
        self.b.peek_at(key, l, now)?;
        self.b.sync_now().unwrap();
        self.b.peek_at(key, l, now)
    }
    fn begin_at(
        &self,
        s: &[u8],
        k: &IdempotencyKey,
        f: &Fingerprint,
        now: u64,
    ) -> tollgate::Result<Begin> {
        Backend::begin_at(&self.a, s, k, f, now)
    }
    fn complete_at(&self, l: &Lease, r: &StoredResponse, now: u64) -> tollgate::Result<()> {
        Backend::complete_at(&self.a, l, r, now)
    }
    fn abort(&self, l: &Lease) -> tollgate::Result<()> {
        Backend::abort(&self.a, l)
    }
    forward_coordination!(a);
    forward_debit!(a);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(32))]

    /// Hybrid nodes round their fleet view exactly as the embedded store rounds its windows:
    /// with time moving forward and sliding windows only, the checks of a synced node and the
    /// peeks of a node that knows the counts only from the server are the embedded store's
    /// answers, field by field.
    #[test]
    fn hybrid_nodes_answer_as_the_embedded_store(
        ops in prop::collection::vec(forward_op(), 1..60),
    ) {
        let Some(url) = server::url("hybrid_agrees") else { return Ok(()) };
        let local = replay(&embedded(), &ops);
        let nodes = replay(&TwoNodes::new(&url, "hybrid_agrees"), &ops);
        prop_assert_eq!(local.len(), nodes.len());
        for (i, (a, b)) in local.iter().zip(&nodes).enumerate() {
            prop_assert_eq!(a, b, "answer {} differs", i);
        }
    }
}
