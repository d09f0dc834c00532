//! A fleet on one real redis-server: three gateway nodes (threads, each with its own embedded
//! store and its own connections) drive one token.
//!
//! * shared mode: the fleet admits exactly the limit;
//! * hybrid mode: the fleet admits at least the limit and at most `limit + (N - 1) × batch`,
//!   under load and for any interleaving of checks and syncs (proptest), and the bound is
//!   reached by a schedule built for it;
//! * hybrid mode when the server drops mid-flush or is killed: no count is lost and none is
//!   applied twice;
//! * reserve and settle across three nodes (one hybrid): the server holds exactly the actual
//!   costs;
//! * shared mode: redis-server SIGKILLed and restarted while three nodes complete idempotency
//!   records loses none of those whose `complete` returned `Ok` (append-only file,
//!   `appendfsync always`).
#![cfg(feature = "redis")]

mod server;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use proptest::prelude::*;
use tollgate::fleet::{HybridOptions, HybridStore, RedisOptions, RedisStore, Unreachable};
use tollgate::{
    Backend, Begin, Error, Fingerprint, IdempotencyKey, Limit, Limits, ManualClock, Options, Store,
    StoredResponse,
};

const T0: u64 = 1_700_000_000_000;
const N: u64 = 3;

fn node(url: &str, prefix: &str, clock: &ManualClock, opts: HybridOptions) -> HybridStore {
    let local =
        Store::open_in_memory(Options::default().compactor(false).clock(clock.clone())).unwrap();
    let shared = RedisStore::open(url, RedisOptions::default().prefix(prefix)).unwrap();
    HybridStore::new(local, shared, opts).unwrap()
}

#[test]
fn shared_fleet_admits_exactly_the_limit() {
    let Some(url) = server::url("shared_fleet") else {
        return;
    };
    let prefix = server::prefix("shared_fleet");
    let limits = Limits::new(&[Limit::per_minute(60), Limit::per_hour(1000)]).unwrap();
    let admitted = Arc::new(AtomicU64::new(0));
    let threads: Vec<_> = (0..N)
        .map(|i| {
            let (url, prefix, limits) = (url.clone(), prefix.clone(), limits.clone());
            let admitted = Arc::clone(&admitted);
            std::thread::spawn(move || {
                let store = RedisStore::open(&url, RedisOptions::default().prefix(prefix)).unwrap();
                for j in 0..60u64 {
                    let cost = 1 + ((i + j) % 2) as u32;
                    if store
                        .check_at(b"tok", &limits, cost, T0 + j)
                        .unwrap()
                        .allowed()
                    {
                        admitted.fetch_add(u64::from(cost), Ordering::Relaxed);
                    }
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let total = admitted.load(Ordering::Relaxed);
    // 180 attempts of cost 1 or 2 for a limit of 60: the fleet fills it, never more. Only a
    // cost-2 request can be refused at 59, so the total is 59 or 60.
    assert!(
        (59..=60).contains(&total),
        "fleet admitted {total} for a limit of 60"
    );
    let store = RedisStore::open(&url, RedisOptions::default().prefix(prefix)).unwrap();
    let peek = store.peek_at(b"tok", &limits, T0 + 100).unwrap();
    assert_eq!(
        u64::from(peek.windows()[0].used()),
        total,
        "the server counted what was admitted"
    );
}

/// Three nodes (two shared, one hybrid, which forwards) reserve and settle on one token at
/// once, each settling what another node reserved: the server ends up holding exactly the
/// actual costs of the admitted requests, and a reservation is refused only when its estimate
/// did not fit.
#[test]
fn a_fleet_reserving_and_settling_counts_the_actual_costs() {
    let Some(url) = server::url("fleet_debit") else {
        return;
    };
    let prefix = server::prefix("fleet_debit");
    // 10 + 2 bits: overdrafts fit up to 4095, far above what the rounds can reach.
    let limits = Limits::new(&[Limit::per_minute(1000).metered()]).unwrap();
    let clock = ManualClock::new(T0);
    let backends: Vec<Arc<dyn Backend>> = vec![
        Arc::new(RedisStore::open(&url, RedisOptions::default().prefix(&prefix)).unwrap()),
        Arc::new(RedisStore::open(&url, RedisOptions::default().prefix(&prefix)).unwrap()),
        Arc::new(node(
            &url,
            &prefix,
            &clock,
            HybridOptions::default().background(false),
        )),
    ];
    let (send, recv): (Vec<_>, Vec<_>) = (0..N).map(|_| std::sync::mpsc::channel()).unzip();
    let charged = Arc::new(AtomicU64::new(0));
    let threads: Vec<_> = recv
        .into_iter()
        .enumerate()
        .map(|(i, inbox)| {
            let me = Arc::clone(&backends[i]);
            let next = send[(i + 1) % N as usize].clone();
            let (limits, charged) = (limits.clone(), Arc::clone(&charged));
            std::thread::spawn(move || {
                let mut refused = 0;
                for j in 0..60u64 {
                    let now = T0 + j;
                    let r = me
                        .reserve_at(b"tok", &limits, 10, Duration::from_secs(60), now)
                        .unwrap();
                    match r.into_parts() {
                        (_, Some(r)) => {
                            next.send((r, (i as u32 * 7 + j as u32 * 13) % 25)).unwrap()
                        }
                        (d, None) => {
                            assert!(d.windows()[0].used() + 10 > 1000, "refused with room");
                            refused += 1;
                        }
                    }
                }
                drop(next);
                for (r, actual) in inbox {
                    me.settle_at(b"tok", &limits, &r, actual, r.reserved_ms() + 5)
                        .unwrap();
                    charged.fetch_add(u64::from(actual), Ordering::Relaxed);
                }
                refused
            })
        })
        .collect();
    drop(send);
    let refused: u32 = threads.into_iter().map(|t| t.join().unwrap()).sum();
    let peek = backends[0].peek_at(b"tok", &limits, T0 + 100).unwrap();
    let used = u64::from(peek.windows()[0].used());
    assert_eq!(used, charged.load(Ordering::Relaxed), "{refused} refused");
}

#[test]
fn a_node_with_other_sub_windows_reads_the_counts_later_never_earlier() {
    let Some(url) = server::url("mixed_sub_windows") else {
        return;
    };
    let prefix = server::prefix("mixed_sub_windows");
    let limits = Limits::new(&[Limit::per_minute(5)]).unwrap();
    let open = |b: u32| {
        RedisStore::open(&url, RedisOptions::default().prefix(&prefix).sub_windows(b)).unwrap()
    };
    let (b64, b16) = (open(64), open(16));
    assert!(b64.check_at(b"tok", &limits, 5, T0).unwrap().allowed());
    // B = 64 counted the 5 in sub-window ⌊T0 / 938⌋, whose last millisecond is T0 + 243. B = 16
    // (g = 3 750) moves them to the sub-window holding it, 453 333 333, which stops counting
    // at (453 333 333 + 17) × 3 750 = T0 + 62 500: later than an exact log (T0 + 60 000).
    let d = b16.check_at(b"tok", &limits, 1, T0 + 10_000).unwrap();
    assert!(!d.allowed());
    assert_eq!(d.windows()[0].used(), 5);
    assert_eq!(d.binding().retry_after_ms(), 52_500);
    assert!(!b16
        .check_at(b"tok", &limits, 1, T0 + 62_499)
        .unwrap()
        .allowed());
    let ok = b16.check_at(b"tok", &limits, 1, T0 + 62_500).unwrap();
    assert!(ok.allowed());
    assert_eq!(ok.windows()[0].used(), 1);
}

#[test]
fn hybrid_fleet_stays_within_the_bound_under_load() {
    let Some(url) = server::url("hybrid_fleet") else {
        return;
    };
    let prefix = server::prefix("hybrid_fleet");
    let (limit, batch) = (100u32, 4u32);
    let limits = Limits::new(&[Limit::per_minute(limit)]).unwrap();
    let clock = ManualClock::new(T0);
    let opts = HybridOptions::default()
        .batch(batch)
        .flush_interval(Duration::from_millis(2));
    let nodes: Vec<_> = (0..N)
        .map(|_| node(&url, &prefix, &clock, opts.clone()))
        .collect();
    let admitted = Arc::new(AtomicU64::new(0));
    let threads: Vec<_> = nodes
        .iter()
        .map(|n| {
            let (n, limits, admitted) = (n.clone(), limits.clone(), Arc::clone(&admitted));
            std::thread::spawn(move || {
                let end = Instant::now() + Duration::from_millis(600);
                while Instant::now() < end {
                    if n.check(b"tok", &limits, 1).unwrap().allowed() {
                        admitted.fetch_add(1, Ordering::Relaxed);
                    }
                    std::thread::yield_now();
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    for n in &nodes {
        n.sync_now().unwrap();
    }
    let total = admitted.load(Ordering::Relaxed);
    let bound = u64::from(limit) + (N - 1) * u64::from(batch);
    println!("hybrid fleet: admitted {total}, limit {limit}, bound {bound}");
    assert!(total <= bound, "admitted {total} > bound {bound}");
    assert!(
        total >= u64::from(limit),
        "admitted {total}: the fleet did not fill its limit"
    );
    // The server holds every admitted unit once.
    let fresh = node(&url, &prefix, &clock, opts.clone().background(false));
    fresh.check_at(b"tok", &limits, 0, T0).unwrap();
    fresh.sync_now().unwrap();
    let seen = fresh.peek_at(b"tok", &limits, T0).unwrap();
    assert_eq!(u64::from(seen.windows()[0].used()), total);
    assert!(nodes
        .iter()
        .all(|n| n.stats().syncs_ok > 0 && n.stats().unsynced_units == 0));
}

#[test]
fn hybrid_bound_is_reached_by_a_schedule_built_for_it() {
    let Some(url) = server::url("hybrid_tight") else {
        return;
    };
    let prefix = server::prefix("hybrid_tight");
    let (limit, batch) = (20u32, 3u32);
    let limits = Limits::new(&[Limit::per_minute(limit)]).unwrap();
    let clock = ManualClock::new(T0);
    let opts = HybridOptions::default().batch(batch).background(false);
    let nodes: Vec<_> = (0..N)
        .map(|_| node(&url, &prefix, &clock, opts.clone()))
        .collect();
    let mut total = 0u64;
    // Nodes 1 and 2 admit a full batch each and do not sync.
    for n in &nodes[1..] {
        while n.check_at(b"tok", &limits, 1, T0).unwrap().allowed() {
            total += 1;
        }
    }
    // Node 0, syncing whenever its batch is spent, fills the limit on its own view.
    loop {
        let mut got = 0;
        while nodes[0].check_at(b"tok", &limits, 1, T0).unwrap().allowed() {
            got += 1;
        }
        total += got;
        nodes[0].sync_now().unwrap();
        if got == 0 {
            break;
        }
    }
    assert_eq!(total, u64::from(limit) + (N - 1) * u64::from(batch));
    // Once everyone has synced, nobody admits more.
    for n in &nodes {
        n.sync_now().unwrap();
        assert!(!n.check_at(b"tok", &limits, 1, T0).unwrap().allowed());
    }
}

#[derive(Debug, Clone)]
enum Step {
    Check { node: usize, cost: u32 },
    Sync { node: usize },
    Advance(u64),
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        8 => (0..N as usize, 1u32..3).prop_map(|(node, cost)| Step::Check { node, cost }),
        2 => (0..N as usize).prop_map(|node| Step::Sync { node }),
        1 => prop_oneof![0u64..1_000, 0u64..6_000].prop_map(Step::Advance),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    /// For any interleaving of checks, syncs and time, no interval of the window's length holds
    /// more than `limit + (N - 1) × batch` admitted units while every node has synced within
    /// `stale_after`; when a node has not (here: it was not asked to), it fails open and the
    /// bound is `N × limit`.
    #[test]
    fn hybrid_bound_holds_for_any_schedule(
        steps in prop::collection::vec(step(), 1..150),
        fail_open_after_ms in prop_oneof![Just(3_600_000u64), 500u64..4_000],
    ) {
        let Some(url) = server::url("hybrid_schedule") else { return Ok(()) };
        let prefix = server::prefix("hybrid_schedule");
        let (limit, batch, window) = (12u32, 3u32, 10_000u64);
        let limits = Limits::new(&[Limit::new(limit, Duration::from_millis(window))]).unwrap();
        let clock = ManualClock::new(T0);
        let opts = HybridOptions::default()
            .batch(batch)
            .background(false)
            .on_unreachable(Unreachable::FailOpen, Duration::from_millis(fail_open_after_ms));
        let nodes: Vec<_> = (0..N).map(|_| node(&url, &prefix, &clock, opts.clone())).collect();
        let mut log: Vec<(u64, u32)> = Vec::new();
        for s in &steps {
            match s {
                Step::Check { node, cost } => {
                    let now = clock.now_ms_for_test();
                    if nodes[*node].check_at(b"tok", &limits, *cost, now).unwrap().allowed() {
                        log.push((now, *cost));
                    }
                }
                Step::Sync { node } => nodes[*node].sync_now().unwrap(),
                Step::Advance(ms) => clock.advance_ms(*ms),
            }
        }
        let steps_all = std::time::Duration::from_millis(
            steps.iter().map(|s| if let Step::Advance(ms) = s { *ms } else { 0 }).sum(),
        );
        let may_go_stale = steps_all.as_millis() as u64 > fail_open_after_ms;
        let bound = if may_go_stale {
            N * u64::from(limit)
        } else {
            u64::from(limit) + (N - 1) * u64::from(batch)
        };
        let worst = log
            .iter()
            .map(|&(t, _)| {
                log.iter()
                    .filter(|&&(at, _)| at <= t && at + window > t)
                    .map(|&(_, c)| u64::from(c))
                    .sum::<u64>()
            })
            .max()
            .unwrap_or(0);
        prop_assert!(worst <= bound, "{} admitted in one window, bound {}", worst, bound);
    }
}

/// Read a manual clock (the `Clock` trait's method, without importing it into every call).
trait NowForTest {
    fn now_ms_for_test(&self) -> u64;
}

impl NowForTest for ManualClock {
    fn now_ms_for_test(&self) -> u64 {
        tollgate::Clock::now_ms(self)
    }
}

#[test]
fn hybrid_loses_no_count_and_applies_none_twice_when_the_server_drops() {
    let Some(mut srv) = server::Dedicated::start("hybrid_drops") else {
        return;
    };
    let url = srv.url();
    let limits = Limits::new(&[Limit::per_minute(1000)]).unwrap();
    let clock = ManualClock::new(T0);
    let prefix = "drops";
    let shared = RedisStore::open(
        &url,
        RedisOptions::default()
            .prefix(prefix)
            .io_timeout(Duration::from_millis(100))
            .connect_timeout(Duration::from_millis(100)),
    )
    .unwrap();
    let local =
        Store::open_in_memory(Options::default().compactor(false).clock(clock.clone())).unwrap();
    let opts = HybridOptions::default()
        .batch(100)
        .background(false)
        .on_unreachable(Unreachable::FailOpen, Duration::from_secs(30));
    let a = HybridStore::new(local, shared, opts.clone()).unwrap();
    let observer = node(&url, prefix, &clock, opts.clone());
    let fleet_count = |now: u64| {
        observer.check_at(b"tok", &limits, 0, now).unwrap();
        observer.sync_now().unwrap();
        observer.peek_at(b"tok", &limits, now).unwrap().windows()[0].used()
    };
    // Open the node's connection first (a new one would wait out the busy server in its
    // handshake).
    a.check_at(b"tok", &limits, 0, T0).unwrap();
    a.sync_now().unwrap();
    for _ in 0..10 {
        assert!(a.check_at(b"tok", &limits, 1, T0).unwrap().allowed());
    }
    // The server is busy (a script spinning for 400 ms) when the batch goes out: the node gives
    // up after 100 ms, the server applies the batch afterwards, and the reply is lost.
    let busy = {
        let url = url.clone();
        std::thread::spawn(move || {
            let client = redis::Client::open(url).unwrap();
            let mut con = client.get_connection().unwrap();
            let spin = "local t = redis.call('TIME') local e = t[1] * 1000000 + t[2] + 400000 \
                        repeat t = redis.call('TIME') until t[1] * 1000000 + t[2] >= e return 1";
            let _: i64 = redis::cmd("EVAL").arg(spin).arg(0).query(&mut con).unwrap();
        })
    };
    std::thread::sleep(Duration::from_millis(50));
    let lost = a.sync_now();
    assert!(
        matches!(lost, Err(Error::BackendUnavailable { .. })),
        "{lost:?}"
    );
    busy.join().unwrap();
    assert_eq!(
        a.stats().unsynced_units,
        10,
        "the node still holds the batch"
    );
    assert_eq!(
        fleet_count(T0),
        10,
        "the server applied the batch whose reply was lost"
    );
    a.sync_now().unwrap();
    assert_eq!(fleet_count(T0), 10, "sent again, applied once");
    assert_eq!(a.stats().unsynced_units, 0);

    // Killed outright: the node keeps deciding (fail-open within its own limit) and keeps
    // the counts; after the restart they all arrive, once.
    for _ in 0..5 {
        assert!(a.check_at(b"tok", &limits, 1, T0 + 1).unwrap().allowed());
    }
    srv.kill();
    for _ in 0..5 {
        assert!(a.check_at(b"tok", &limits, 1, T0 + 2).unwrap().allowed());
    }
    assert!(matches!(
        a.sync_now(),
        Err(Error::BackendUnavailable { .. })
    ));
    assert!(matches!(
        a.sync_now(),
        Err(Error::BackendUnavailable { .. })
    ));
    assert_eq!(a.stats().unsynced_units, 10);
    srv.restart();
    a.sync_now().unwrap();
    assert_eq!(fleet_count(T0 + 3), 20);
    assert_eq!(a.stats().unsynced_units, 0);
}

#[test]
fn hybrid_fail_closed_refuses_once_the_server_is_gone_too_long() {
    let Some(mut srv) = server::Dedicated::start("hybrid_fail_closed") else {
        return;
    };
    let url = srv.url();
    let limits = Limits::new(&[Limit::per_minute(1000)]).unwrap();
    let clock = ManualClock::new(T0);
    let opts = HybridOptions::default()
        .batch(50)
        .background(false)
        .on_unreachable(Unreachable::FailClosed, Duration::from_secs(2));
    let a = node(&url, "closed", &clock, opts);
    assert!(a.check_at(b"tok", &limits, 1, T0).unwrap().allowed());
    a.sync_now().unwrap();
    srv.kill();
    assert!(a.sync_now().is_err());
    // Within the grace period the node decides on its budget...
    assert!(a
        .check_at(b"tok", &limits, 1, T0 + 1_000)
        .unwrap()
        .allowed());
    // ...past it, it refuses and counts nothing.
    let d = a.check_at(b"tok", &limits, 1, T0 + 2_500).unwrap();
    assert!(!d.allowed());
    assert!(d.retry_after().is_some());
    assert_eq!(a.stats().unsynced_units, 1);
    srv.restart();
    clock.set_ms(T0 + 3_000);
    a.sync_now().unwrap();
    assert!(a
        .check_at(b"tok", &limits, 1, T0 + 3_000)
        .unwrap()
        .allowed());
}

/// A record whose `complete` returned `Ok`: scope, key, fingerprint, body.
type Acked = (Vec<u8>, IdempotencyKey, Fingerprint, String);

#[test]
fn acknowledged_records_survive_a_server_kill() {
    let Some(mut srv) = server::Dedicated::start("records_survive") else {
        return;
    };
    let url = srv.url();
    let stop = Arc::new(AtomicBool::new(false));
    let acked: Arc<Mutex<Vec<Acked>>> = Arc::default();
    let failures = Arc::new(AtomicU64::new(0));
    let threads: Vec<_> = (0..N)
        .map(|t| {
            let (url, stop, acked, failures) =
                (url.clone(), stop.clone(), acked.clone(), failures.clone());
            std::thread::spawn(move || {
                let opts = RedisOptions::default()
                    .prefix("survive")
                    .io_timeout(Duration::from_millis(200))
                    .connect_timeout(Duration::from_millis(100));
                let store = RedisStore::open(&url, opts).unwrap();
                let scope = format!("node{t}").into_bytes();
                let mut i = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    i += 1;
                    let mut b = [0u8; 16];
                    b[0] = t as u8;
                    b[6] = 0x40; // version 4
                    b[8] = 0x80; // RFC 4122 variant
                    b[9..].copy_from_slice(&i.to_be_bytes()[1..]);
                    let key = IdempotencyKey::from_uuid(uuid::Uuid::from_bytes(b)).unwrap();
                    let fp = Fingerprint::of("POST", "/pay", &i.to_le_bytes());
                    let body = format!("paid {t}/{i}");
                    let lease = match store.begin_at(&scope, &key, &fp, T0) {
                        Ok(Begin::Started(l)) => l,
                        Ok(other) => panic!("a new key must start, got {other:?}"),
                        Err(Error::BackendUnavailable { .. }) => {
                            failures.fetch_add(1, Ordering::Relaxed);
                            std::thread::sleep(Duration::from_millis(10));
                            continue;
                        }
                        Err(e) => panic!("{e}"),
                    };
                    match store.complete_at(&lease, &StoredResponse::new(201, body.clone()), T0) {
                        Ok(()) => acked.lock().unwrap().push((scope.clone(), key, fp, body)),
                        Err(Error::BackendUnavailable { .. }) => {
                            failures.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(e) => panic!("{e}"),
                    }
                }
            })
        })
        .collect();
    let count = || acked.lock().unwrap().len();
    let wait_for = |n: usize| {
        let end = Instant::now() + Duration::from_secs(10);
        while count() < n {
            assert!(Instant::now() < end, "records stopped being acknowledged");
            std::thread::sleep(Duration::from_millis(5));
        }
    };
    wait_for(30);
    srv.kill();
    let at_kill = count();
    std::thread::sleep(Duration::from_millis(150));
    srv.restart();
    wait_for(at_kill + 30);
    stop.store(true, Ordering::Relaxed);
    for t in threads {
        t.join().unwrap();
    }
    assert!(
        failures.load(Ordering::Relaxed) > 0,
        "the kill was seen by the nodes"
    );
    let store = RedisStore::open(&url, RedisOptions::default().prefix("survive")).unwrap();
    let records = acked.lock().unwrap();
    for (scope, key, fp, body) in records.iter() {
        match store.begin_at(scope, key, fp, T0 + 1000).unwrap() {
            Begin::Replay(r) => assert_eq!(r.body(), body.as_bytes()),
            other => panic!("acknowledged record {body} lost: {other:?}"),
        }
    }
    println!(
        "{} acknowledged records, all replayed after SIGKILL and restart ({} calls failed during the outage)",
        records.len(),
        failures.load(Ordering::Relaxed)
    );
}
