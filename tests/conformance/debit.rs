//! Reserve and settle (`tollgate::debit`), on every backend: part of `tests/conformance.rs`.
//!
//! Each scenario runs on the embedded store, on the shared Redis store and on a hybrid node
//! (which forwards both to the server), and the three transcripts must be equal: every
//! decision field by field, every reservation's sub-windows and times, every error. Reservation
//! ids are random, so transcripts never hold one.
//!
//! What a scenario reads after a settle goes through the reserve path (`look`: a reservation of
//! 0, which answers as a peek and counts nothing): a hybrid node's own checks and peeks answer
//! from its batched counts, which do not hold what was reserved on the server.

use std::sync::{Arc, Barrier};

use proptest::prelude::*;
use std::time::Duration;

use tollgate::fleet::{HybridOptions, HybridStore, RedisOptions, RedisStore};
use tollgate::{Backend, Decision, Error, Limit, Limits, Options, Reservation, Reserved, Store};

use super::{embedded, hybrid, rec, server, shared, T0};

/// The two debit methods of `Backend`, forwarded to the field `$f` (for the wrappers of
/// `tests/conformance.rs`).
#[macro_export]
macro_rules! forward_debit {
    ($f:tt) => {
        fn reserve_at(
            &self,
            k: &[u8],
            l: &tollgate::Limits,
            estimate: u32,
            ttl: std::time::Duration,
            now: u64,
        ) -> tollgate::Result<tollgate::Reserved> {
            tollgate::Backend::reserve_at(&self.$f, k, l, estimate, ttl, now)
        }
        fn settle_at(
            &self,
            k: &[u8],
            l: &tollgate::Limits,
            r: &tollgate::Reservation,
            actual: u32,
            now: u64,
        ) -> tollgate::Result<tollgate::Decision> {
            tollgate::Backend::settle_at(&self.$f, k, l, r, actual, now)
        }
    };
}

/// A minute's sub-window with the default 64: `⌈60 000 / 64⌉` ms.
const G: u64 = 938;
/// The start of a minute sub-window, a little after [`T0`].
const S: u64 = (T0 / G + 1) * G;
const HOUR: Duration = Duration::from_secs(3600);

type Scenario = fn(&dyn Backend, &mut Vec<String>);

/// Run `scenario` on the embedded store, on Redis and on a hybrid node: all three transcripts
/// must be equal.
fn run_all(name: &str, scenario: Scenario) {
    let mut local = Vec::new();
    scenario(&embedded(), &mut local);
    assert!(!local.is_empty(), "{name}: empty transcript");
    let Some(url) = server::url(name) else { return };
    let fleet: [(&str, Box<dyn Backend>); 2] = [
        ("shared", Box::new(shared(&url, name))),
        ("hybrid", Box::new(hybrid(&url, name))),
    ];
    for (what, b) in fleet {
        let mut t = Vec::new();
        scenario(b.as_ref(), &mut t);
        assert_eq!(local.len(), t.len(), "{name}: {what} transcript length");
        for (i, (a, b)) in local.iter().zip(&t).enumerate() {
            assert_eq!(a, b, "{name}: step {i} differs (embedded vs {what})");
        }
    }
}

fn metered(limit: u32) -> Limits {
    Limits::new(&[Limit::per_minute(limit).metered()]).unwrap()
}

/// A metered minute and a plain hour.
fn minute_and_hour() -> Limits {
    Limits::new(&[Limit::per_minute(100).metered(), Limit::per_hour(1000)]).unwrap()
}

/// Reserve, record what came back (without the random id), and return the reservation.
fn reserve(
    b: &dyn Backend,
    t: &mut Vec<String>,
    key: &[u8],
    limits: &Limits,
    estimate: u32,
    now: u64,
) -> Option<Reservation> {
    let r = b.reserve_at(key, limits, estimate, HOUR, now).unwrap();
    record(t, &r);
    r.into_parts().1
}

fn record(t: &mut Vec<String>, r: &Reserved) {
    rec(t, r.decision());
    if let Some(r) = r.reservation() {
        let subs: Vec<Option<u64>> = (0..4).map(|i| r.sub_window(i)).collect();
        rec(t, (r.estimate(), r.reserved_ms(), r.expires_ms(), subs));
    }
}

/// Settle, record the outcome, and return it.
fn settle(
    b: &dyn Backend,
    t: &mut Vec<String>,
    key: &[u8],
    limits: &Limits,
    r: &Reservation,
    actual: u32,
    now: u64,
) -> tollgate::Result<Decision> {
    let d = b.settle_at(key, limits, r, actual, now);
    rec(t, &d);
    d
}

/// What a request of cost 1 would get, read through the reserve path (a reservation of 0).
fn look(b: &dyn Backend, t: &mut Vec<String>, key: &[u8], limits: &Limits, now: u64) -> Decision {
    let r = b
        .reserve_at(key, limits, 0, Duration::from_millis(1), now)
        .unwrap();
    rec(t, r.decision());
    *r.decision()
}

fn used(d: &Decision) -> Vec<u32> {
    d.windows().iter().map(|w| w.used()).collect()
}

/// The longest wait over the windows a request of cost 1 does not fit.
fn wait_ms(d: &Decision) -> u64 {
    let waits = d.windows().iter().filter(|w| !w.fits());
    waits.map(|w| w.retry_after_ms()).max().unwrap_or(0)
}

#[test]
fn an_unused_estimate_goes_back_where_it_was_counted() {
    run_all("debit_give_back", |b, t| {
        let l = minute_and_hour();
        let r1 = reserve(b, t, b"k", &l, 40, S).expect("admitted");
        assert_eq!(r1.sub_window(0), Some(S / G));
        assert_eq!(r1.sub_window(2), None);
        // The same sub-window: 30 of the 40 back.
        let d = settle(b, t, b"k", &l, &r1, 10, S + 100).unwrap();
        assert!(d.allowed());
        assert_eq!(used(&d), [10, 10]);
        // After the head moved on: the give-back reaches the older sub-window.
        let r2 = reserve(b, t, b"k", &l, 30, S + 5_000).unwrap();
        let r3 = reserve(b, t, b"k", &l, 20, S + 6_000).unwrap();
        assert_ne!(r2.sub_window(0), r3.sub_window(0));
        let d = settle(b, t, b"k", &l, &r2, 5, S + 10_000).unwrap();
        assert_eq!(used(&d), [35, 35]);
        // Exactly the estimate: nothing changes.
        let d = settle(b, t, b"k", &l, &r3, 20, S + 11_000).unwrap();
        assert_eq!(used(&d), [35, 35]);
        assert_eq!(d.remaining(), 65);
    });
}

#[test]
fn nothing_goes_back_from_a_sub_window_that_left_the_window() {
    run_all("debit_aged_out", |b, t| {
        let l = minute_and_hour();
        let r = reserve(b, t, b"k", &l, 40, S).unwrap();
        // 70 s later the minute has moved past the estimate's sub-window; the hour has not.
        reserve(b, t, b"k", &l, 5, S + 70_000).unwrap();
        let d = settle(b, t, b"k", &l, &r, 0, S + 71_000).unwrap();
        assert_eq!(
            used(&d),
            [5, 5],
            "the minute keeps its 5, the hour gets 40 back"
        );
    });
}

#[test]
fn an_overdraft_refuses_until_it_has_left_and_retry_after_is_honest() {
    run_all("debit_overdraft", |b, t| {
        let l = metered(100);
        let r = reserve(b, t, b"k", &l, 50, S).unwrap();
        let d = settle(b, t, b"k", &l, &r, 150, S + 1_000).unwrap();
        assert!(!d.allowed(), "150 counted against a limit of 100");
        assert_eq!((used(&d), d.remaining()), (vec![150], 0));
        let wait = wait_ms(&d);
        assert!(wait > 0);
        let now = S + 1_000 + wait;
        // Refused just before (the overdraft still counts), admitted at the time it gave.
        let early = look(b, t, b"k", &l, now - 1);
        assert!(!early.allowed(), "retry-after {wait} ms was not needed");
        let ok = reserve(b, t, b"k", &l, 1, now);
        assert!(
            ok.is_some(),
            "admitted {wait} ms later, as retry-after said"
        );
    });
}

#[test]
fn an_overdraft_stops_at_the_counters_capacity() {
    run_all("debit_capacity", |b, t| {
        // Metered minute: 7 + 2 bits, at most 511; plain hour: 10 bits, at most 1023.
        let l = minute_and_hour();
        let r = reserve(b, t, b"k", &l, 100, S).unwrap();
        let d = settle(b, t, b"k", &l, &r, 1_000, S + 10).unwrap();
        assert_eq!(used(&d), [511, 1_000]);
        // A plain window has only the room its own counters leave: 7 bits, 127.
        let plain = Limits::new(&[Limit::per_minute(100)]).unwrap();
        let r = reserve(b, t, b"p", &plain, 100, S).unwrap();
        let d = settle(b, t, b"p", &plain, &r, 1_000, S + 10).unwrap();
        assert_eq!(used(&d), [127]);
        // Full: a second overdraft (from an estimate of 0) adds nothing.
        let l = metered(10);
        let r0 = reserve(b, t, b"z", &l, 0, S).unwrap();
        let r1 = reserve(b, t, b"z", &l, 10, S).unwrap();
        let d = settle(b, t, b"z", &l, &r1, 100, S + 10).unwrap();
        assert_eq!(used(&d), [63]);
        let d = settle(b, t, b"z", &l, &r0, 9, S + 20).unwrap();
        assert_eq!(used(&d), [63]);
        // What did not fit was not counted: a later give-back shows it (a count past the
        // capacity would still read as full).
        let r0 = reserve(b, t, b"y", &l, 0, S).unwrap();
        let r1 = reserve(b, t, b"y", &l, 10, S).unwrap();
        let d = settle(b, t, b"y", &l, &r0, 100, S + 2_000).unwrap();
        assert_eq!(used(&d), [63]);
        let d = settle(b, t, b"y", &l, &r1, 0, S + 3_000).unwrap();
        assert_eq!(used(&d), [53]);
    });
}

#[test]
fn an_estimate_of_zero_admits_while_quota_is_left_and_counts_nothing() {
    run_all("debit_zero", |b, t| {
        let l = metered(10);
        let r = reserve(b, t, b"k", &l, 0, S).unwrap();
        assert_eq!((r.estimate(), r.sub_window(0)), (0, None));
        assert_eq!(used(&look(b, t, b"k", &l, S + 1)), [0]);
        let d = settle(b, t, b"k", &l, &r, 4, S + 10).unwrap();
        assert_eq!(used(&d), [4]);
        reserve(b, t, b"k", &l, 6, S + 20).unwrap();
        // No quota left: refused, nothing to settle.
        let no = b.reserve_at(b"k", &l, 0, HOUR, S + 30).unwrap();
        record(t, &no);
        assert!(!no.allowed() && !no.decision().allowed());
        assert!(no.reservation().is_none());
    });
}

#[test]
fn a_reservation_settles_once() {
    run_all("debit_twice", |b, t| {
        let l = metered(100);
        let r = reserve(b, t, b"k", &l, 40, S).unwrap();
        let copy: Reservation = r.to_string().parse().unwrap();
        settle(b, t, b"k", &l, &r, 10, S + 10).unwrap();
        for (again, actual) in [(&r, 10), (&r, 90), (&copy, 0)] {
            let e = settle(b, t, b"k", &l, again, actual, S + 20);
            assert!(matches!(e, Err(Error::ReservationSettled)), "{e:?}");
        }
        assert_eq!(used(&look(b, t, b"k", &l, S + 30)), [10], "counted once");
    });
}

#[test]
fn a_settle_for_another_key_or_windows_is_refused_and_claims_nothing() {
    run_all("debit_mismatch", |b, t| {
        let l = metered(100);
        let r = reserve(b, t, b"k", &l, 40, S).unwrap();
        let others = [
            Limits::new(&[Limit::per_minute(100)]).unwrap(),
            metered(101),
            Limits::new(&[Limit::per_minute(100).metered(), Limit::per_hour(1000)]).unwrap(),
        ];
        let e = settle(b, t, b"other", &l, &r, 10, S + 10);
        assert!(matches!(e, Err(Error::ReservationMismatch)), "{e:?}");
        for o in &others {
            let e = settle(b, t, b"k", o, &r, 10, S + 10);
            assert!(matches!(e, Err(Error::ReservationMismatch)), "{e:?}");
        }
        let d = settle(b, t, b"k", &l, &r, 10, S + 20).unwrap();
        assert_eq!(used(&d), [10]);
    });
}

#[test]
fn an_expired_reservation_is_refused_and_its_estimate_stays() {
    run_all("debit_expired", |b, t| {
        let l = metered(100);
        let r = b
            .reserve_at(b"k", &l, 40, Duration::from_secs(30), S)
            .unwrap();
        record(t, &r);
        let r = r.reservation().unwrap().clone();
        assert_eq!(r.expires_ms(), S + 30_000);
        let e = settle(b, t, b"k", &l, &r, 10, S + 30_000);
        assert!(
            matches!(e, Err(Error::ReservationExpired { expires_ms }) if expires_ms == S + 30_000),
            "{e:?}"
        );
        assert_eq!(used(&look(b, t, b"k", &l, S + 30_001)), [40]);
        // The millisecond before, it could still be settled.
        let r2 = reserve(b, t, b"j", &l, 40, S).unwrap();
        let d = settle(b, t, b"j", &l, &r2, 10, S + 3_599_999).unwrap();
        assert_eq!(used(&d), [0], "the minute has long passed");
    });
}

#[test]
fn a_handle_parsed_back_from_text_or_bytes_settles() {
    run_all("debit_text", |b, t| {
        let l = minute_and_hour();
        let r = reserve(b, t, b"k", &l, 40, S).unwrap();
        let text: Reservation = r.to_string().parse().unwrap();
        assert_eq!(text, r);
        let d = settle(b, t, b"k", &l, &text, 25, S + 10).unwrap();
        assert_eq!(used(&d), [25, 25]);
        let r = reserve(b, t, b"k", &l, 40, S + 20).unwrap();
        let bytes = Reservation::from_bytes(&r.to_bytes()).unwrap();
        let d = settle(b, t, b"k", &l, &bytes, 60, S + 30).unwrap();
        assert_eq!(used(&d), [85, 85]);
    });
}

#[test]
fn reserve_is_all_or_nothing_and_refuses_what_it_cannot_do() {
    run_all("debit_refusals", |b, t| {
        let l = Limits::new(&[Limit::per_minute(100).metered(), Limit::per_hour(50)]).unwrap();
        reserve(b, t, b"k", &l, 50, S).unwrap();
        // The hour refuses: the minute is not charged either.
        assert!(reserve(b, t, b"k", &l, 10, S + 10).is_none());
        assert_eq!(used(&look(b, t, b"k", &l, S + 20)), [50, 50]);
        let exact = Limits::new(&[Limit::per_minute(5).exact()]).unwrap();
        let e = b.reserve_at(b"k", &exact, 1, HOUR, S);
        assert!(matches!(e, Err(Error::InvalidLimit(_))), "{e:?}");
        let e = b.reserve_at(b"k", &l, 51, HOUR, S);
        assert!(matches!(e, Err(Error::CostExceedsLimit { .. })), "{e:?}");
        let e = b.reserve_at(b"k", &l, 1, Duration::ZERO, S);
        assert!(matches!(e, Err(Error::InvalidReservation(_))), "{e:?}");
        let e = b.reserve_at(b"", &l, 1, HOUR, S);
        assert!(matches!(e, Err(Error::InvalidKey { .. })), "{e:?}");
        rec(t, "refusals");
    });
}

/// Two handles on one server (two gateway nodes): either can settle what the other reserved,
/// once.
#[test]
fn another_node_settles_once() {
    let name = "debit_two_nodes";
    let Some(url) = server::url(name) else { return };
    let prefix = server::prefix(name);
    let a = RedisStore::open(&url, RedisOptions::default().prefix(&prefix)).unwrap();
    let b = RedisStore::open(&url, RedisOptions::default().prefix(&prefix)).unwrap();
    let hyb = |clock_ms: u64| {
        let clock = tollgate::ManualClock::new(clock_ms);
        let local =
            Store::open_in_memory(Options::default().compactor(false).clock(clock)).unwrap();
        let shared = RedisStore::open(&url, RedisOptions::default().prefix(&prefix)).unwrap();
        HybridStore::new(local, shared, HybridOptions::default().background(false)).unwrap()
    };
    let c = hyb(S);
    let l = metered(100);
    let r = a.reserve_at(b"k", &l, 40, HOUR, S).unwrap();
    let r = r.reservation().unwrap().to_string();
    let r: Reservation = r.parse().unwrap();
    let d = b.settle_at(b"k", &l, &r, 70, S + 10).unwrap();
    assert_eq!(d.windows()[0].used(), 70);
    for other in [&a as &dyn Backend, &c] {
        let e = other.settle_at(b"k", &l, &r, 0, S + 20);
        assert!(matches!(e, Err(Error::ReservationSettled)), "{e:?}");
    }
    // A hybrid node reserves on the server too: the shared store sees it.
    let r = Backend::reserve_at(&c, b"k", &l, 30, HOUR, S + 30).unwrap();
    assert_eq!(r.decision().windows()[0].used(), 100);
    let d = a
        .settle_at(b"k", &l, r.reservation().unwrap(), 0, S + 40)
        .unwrap();
    assert_eq!(d.windows()[0].used(), 70);
}

/// Settles of one reservation racing from several connections: exactly one counts.
#[test]
fn racing_settles_count_once() {
    let name = "debit_race";
    let Some(url) = server::url(name) else { return };
    let prefix = server::prefix(name);
    let l = metered(1000);
    let first = RedisStore::open(&url, RedisOptions::default().prefix(&prefix)).unwrap();
    for round in 0..20u64 {
        let now = S + round * 10;
        let r = first.reserve_at(b"k", &l, 1, HOUR, now).unwrap();
        let r = Arc::new(r.reservation().unwrap().clone());
        let go = Arc::new(Barrier::new(4));
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let (r, go, l) = (Arc::clone(&r), Arc::clone(&go), l.clone());
                let s = RedisStore::open(&url, RedisOptions::default().prefix(&prefix)).unwrap();
                std::thread::spawn(move || {
                    go.wait();
                    s.settle_at(b"k", &l, &r, 2, now + 1)
                })
            })
            .collect();
        let results: Vec<_> = threads.into_iter().map(|h| h.join().unwrap()).collect();
        let ok = results.iter().filter(|r| r.is_ok()).count();
        assert_eq!(ok, 1, "round {round}: {results:?}");
        assert!(results
            .iter()
            .all(|r| r.is_ok() || matches!(r, Err(Error::ReservationSettled))));
    }
    // Each round counted its 1 and one extra unit: 2 per round.
    let d = first.peek_at(b"k", &l, S + 300).unwrap();
    assert_eq!(d.windows()[0].used(), 40);
}

// ---------------------------------------------------------------------------------------------
// Differential proptest: random reserve and settle sequences, embedded vs shared.

#[derive(Debug, Clone)]
enum Debit {
    Reserve {
        key: u8,
        estimate: u32,
        long: bool,
    },
    Settle {
        which: usize,
        actual: u32,
        other_key: bool,
    },
    Forward(u64),
    Back(u64),
}

fn debit_op() -> impl Strategy<Value = Debit> {
    prop_oneof![
        4 => (0u8..3, 0u32..7, prop::bool::weighted(0.8))
            .prop_map(|(key, estimate, long)| Debit::Reserve { key, estimate, long }),
        4 => (0usize..12, prop_oneof![0u32..12, 0u32..80], prop::bool::weighted(0.05))
            .prop_map(|(which, actual, other_key)| Debit::Settle { which, actual, other_key }),
        3 => prop_oneof![
            0u64..1_500,
            (0u64..70).prop_map(|n| n * 938),
            (0u64..70).prop_map(|n| n * 32),
            Just(61_000u64),
        ]
        .prop_map(Debit::Forward),
        1 => (0u64..3_000).prop_map(Debit::Back),
    ]
}

/// Sliding windows only (reserve refuses exact ones): a metered minute; a metered 2 s window
/// with a plain minute; a plain minute with 3-bit counters (little room for overdrafts).
fn debit_limits(key: u8) -> Limits {
    let set: &[Limit] = match key {
        0 => &[Limit::per_minute(20).metered()],
        1 => &[
            Limit::new(8, Duration::from_secs(2)).metered(),
            Limit::per_minute(30),
        ],
        _ => &[Limit::per_minute(5)],
    };
    Limits::new(set).unwrap()
}

fn replay_debit(b: &dyn Backend, ops: &[Debit]) -> Vec<String> {
    let mut now = T0 + 123;
    let mut open: Vec<(u8, Reservation)> = Vec::new();
    let mut out = Vec::new();
    for op in ops {
        match op {
            Debit::Reserve {
                key,
                estimate,
                long,
            } => {
                let ttl = if *long { HOUR } else { Duration::from_secs(2) };
                let r = b.reserve_at(&[b'k', *key], &debit_limits(*key), *estimate, ttl, now);
                match r {
                    Ok(r) => {
                        record(&mut out, &r);
                        if let Some(res) = r.into_parts().1 {
                            open.push((*key, res));
                        }
                    }
                    Err(e) => rec(&mut out, e),
                }
            }
            Debit::Settle {
                which,
                actual,
                other_key,
            } => {
                let Some((key, r)) = open.get(*which) else {
                    continue;
                };
                let k = if *other_key { b'x' } else { b'k' };
                let d = b.settle_at(&[k, *key], &debit_limits(*key), r, *actual, now);
                rec(&mut out, d);
            }
            Debit::Forward(ms) => now += ms,
            Debit::Back(ms) => now -= ms,
        }
    }
    for key in 0..3u8 {
        let r = b.reserve_at(&[b'k', key], &debit_limits(key), 0, HOUR, now);
        rec(&mut out, r.map(|r| *r.decision()));
    }
    out
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Every reserve and settle answer (decisions field by field, sub-windows, errors) and the
    /// final state of every key are the same on both, with 64 sub-windows and with 16.
    #[test]
    fn embedded_and_shared_agree_on_every_reserve_and_settle(
        ops in prop::collection::vec(debit_op(), 1..50),
        b in prop_oneof![3 => Just(64u32), 1 => Just(16u32)],
    ) {
        let Some(url) = server::url("debit_agree") else { return Ok(()) };
        let embedded = Store::open_in_memory(Options::default().compactor(false).sub_windows(b))
            .unwrap();
        let shared = RedisStore::open(
            &url,
            RedisOptions::default().prefix(server::prefix("debit_prop")).sub_windows(b),
        )
        .unwrap();
        let local = replay_debit(&embedded, &ops);
        let remote = replay_debit(&shared, &ops);
        prop_assert_eq!(local.len(), remote.len());
        for (i, (a, b)) in local.iter().zip(&remote).enumerate() {
            prop_assert_eq!(a, b, "answer {} differs", i);
        }
    }
}
