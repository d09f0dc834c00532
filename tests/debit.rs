//! Reserve and settle on the embedded store (`tollgate::debit`): what a settle gives back,
//! what it overdraws, the typed refusals, the promise against an exact reference (proptest),
//! eight threads on one key, and reservations that outlive their process.

mod common;

use std::time::Duration;

use common::T0;
use proptest::prelude::*;
use tollgate::debit::{Reservation, DEFAULT_RESERVATION_TTL};
use tollgate::{Error, Limit, Limits, Options, Store};

const MIN: u64 = 60_000;
const TTL: Duration = DEFAULT_RESERVATION_TTL;

fn store() -> Store {
    Store::open_in_memory(Options::default().compactor(false)).unwrap()
}

fn tokens() -> Limits {
    Limits::new(&[
        Limit::per_minute(1_000).metered(),
        Limit::per_day(50_000).metered(),
    ])
    .unwrap()
}

fn reserve(s: &Store, key: &[u8], limits: &Limits, estimate: u32, now: u64) -> Reservation {
    let r = s.reserve_at(key, limits, estimate, TTL, now).unwrap();
    assert!(
        r.allowed(),
        "estimate {estimate} refused: {:?}",
        r.decision()
    );
    r.reservation().unwrap().clone()
}

#[test]
fn a_cost_below_the_estimate_comes_back_at_once() {
    let s = store();
    let l = tokens();
    let r = reserve(&s, b"k", &l, 500, T0);
    assert_eq!(s.peek_at(b"k", &l, T0).unwrap().remaining(), 500);
    let after = s.settle_at(b"k", &l, &r, 120, T0 + 10).unwrap();
    assert_eq!(after.remaining(), 880);
    // Both windows got it back.
    assert_eq!(after.windows()[1].used(), 120);
    // Later in the minute too: the estimate went back to the sub-window it was counted in.
    let r = reserve(&s, b"k", &l, 800, T0 + 20);
    let after = s.settle_at(b"k", &l, &r, 0, T0 + 30_000).unwrap();
    assert_eq!(after.remaining(), 880);
}

#[test]
fn nothing_comes_back_from_a_sub_window_that_left_the_window() {
    let s = store();
    let l = tokens();
    let r = reserve(&s, b"k", &l, 500, T0);
    // Past the minute (and its release delay): the minute has nothing left of it; the day
    // still holds the whole estimate, and gets the difference back.
    let later = T0 + MIN + 2_000;
    let after = s.settle_at(b"k", &l, &r, 100, later).unwrap();
    assert_eq!(after.windows()[0].used(), 0);
    assert_eq!(after.windows()[1].used(), 100);
}

#[test]
fn a_cost_above_the_estimate_is_an_overdraft_with_an_honest_retry_after() {
    let s = store();
    let l = tokens();
    let r = reserve(&s, b"k", &l, 300, T0);
    let after = s.settle_at(b"k", &l, &r, 900, T0 + 5).unwrap();
    assert_eq!(after.remaining(), 100, "900 of 1000 used");
    let r = reserve(&s, b"k", &l, 100, T0 + 10);
    let after = s.settle_at(b"k", &l, &r, 700, T0 + 20).unwrap();
    assert_eq!(after.windows()[0].used(), 1_600, "600 past the limit");
    assert_eq!(after.remaining(), 0);
    assert!(!after.allowed());
    // Refused until the usage is back under the limit, and Retry-After is never early.
    let d = s.check_at(b"k", &l, 1, T0 + 30).unwrap();
    assert!(!d.allowed());
    let wait = d.retry_after().unwrap() * 1_000;
    assert!(
        wait >= MIN - 30,
        "all of it was counted in the minute's first sub-window"
    );
    assert!(!s.check_at(b"k", &l, 1, T0 + MIN - 1).unwrap().allowed());
    assert!(s.check_at(b"k", &l, 1, T0 + 30 + wait).unwrap().allowed());
}

#[test]
fn an_overdraft_is_counted_up_to_the_counters_room() {
    let s = store();
    // Metered 1000: 12-bit counters, 4095 at most.
    let l = tokens();
    let r = reserve(&s, b"k", &l, 10, T0);
    let after = s.settle_at(b"k", &l, &r, 1_000_000, T0).unwrap();
    assert_eq!(after.windows()[0].used(), 4_095);
    // A window that is not metered has only its counters' own room: 1000 needs 10 bits.
    let plain = Limits::new(&[Limit::per_minute(1_000)]).unwrap();
    let r = reserve(&s, b"p", &plain, 10, T0);
    let after = s.settle_at(b"p", &plain, &r, 5_000, T0).unwrap();
    assert_eq!(after.windows()[0].used(), 1_023);
}

#[test]
fn an_estimate_of_zero_admits_while_quota_is_left_and_charges_afterwards() {
    let s = store();
    let l = tokens();
    let r = reserve(&s, b"k", &l, 0, T0);
    assert_eq!(r.sub_window(0), None);
    assert_eq!(s.peek_at(b"k", &l, T0).unwrap().remaining(), 1_000);
    s.settle_at(b"k", &l, &r, 999, T0 + 1).unwrap();
    let r = reserve(&s, b"k", &l, 0, T0 + 2);
    s.settle_at(b"k", &l, &r, 1, T0 + 3).unwrap();
    let refused = s.reserve_at(b"k", &l, 0, TTL, T0 + 4).unwrap();
    assert!(!refused.allowed());
    assert!(refused.reservation().is_none());
    assert!(refused.decision().retry_after().is_some());
}

#[test]
fn settling_twice_elsewhere_or_late_is_refused_and_counts_nothing() {
    let s = store();
    let l = tokens();
    let r = reserve(&s, b"k", &l, 500, T0);
    s.settle_at(b"k", &l, &r, 200, T0 + 1).unwrap();
    let used = |s: &Store| s.peek_at(b"k", &l, T0 + 2).unwrap().windows()[0].used();
    assert_eq!(used(&s), 200);
    for actual in [0, 200, 900] {
        assert!(matches!(
            s.settle_at(b"k", &l, &r, actual, T0 + 2),
            Err(Error::ReservationSettled)
        ));
    }
    assert_eq!(used(&s), 200);

    let r = reserve(&s, b"k", &l, 100, T0 + 3);
    assert!(matches!(
        s.settle_at(b"other", &l, &r, 0, T0 + 4),
        Err(Error::ReservationMismatch)
    ));
    let other_windows = Limits::new(&[Limit::per_minute(1_000).metered()]).unwrap();
    assert!(matches!(
        s.settle_at(b"k", &other_windows, &r, 0, T0 + 4),
        Err(Error::ReservationMismatch)
    ));
    let late = r.expires_ms();
    assert!(matches!(
        s.settle_at(b"k", &l, &r, 0, late),
        Err(Error::ReservationExpired { expires_ms }) if expires_ms == late
    ));
    assert_eq!(used(&s), 300, "the expired estimate stays counted");
    // A forged handle (another id) matches no guard.
    let mut bytes = r.to_bytes();
    bytes[8] ^= 1;
    let crc = crc32(&bytes[..88]);
    bytes[88..92].copy_from_slice(&crc.to_le_bytes());
    let forged = Reservation::from_bytes(&bytes).unwrap();
    assert!(matches!(
        s.settle_at(b"k", &l, &forged, 0, T0 + 5),
        Err(Error::ReservationSettled)
    ));
    // The real one still settles, from its text form.
    let text: Reservation = r.to_string().parse().unwrap();
    s.settle_at(b"k", &l, &text, 0, T0 + 5).unwrap();
    assert_eq!(used(&s), 200);
}

fn crc32(b: &[u8]) -> u32 {
    // The same crc32 (IEEE) the handle uses, bit by bit: the test does not depend on the
    // crate's choice of implementation.
    let mut c = !0u32;
    for &x in b {
        c ^= u32::from(x);
        for _ in 0..8 {
            c = if c & 1 != 0 {
                (c >> 1) ^ 0xEDB8_8320
            } else {
                c >> 1
            };
        }
    }
    !c
}

#[test]
fn bad_input_is_a_typed_error_and_touches_nothing() {
    let s = store();
    let l = tokens();
    assert!(matches!(
        s.reserve_at(b"k", &l, 1_001, TTL, T0),
        Err(Error::CostExceedsLimit { .. })
    ));
    assert!(matches!(
        s.reserve_at(b"", &l, 1, TTL, T0),
        Err(Error::InvalidKey { .. })
    ));
    for ttl in [Duration::ZERO, Duration::from_secs(2 * 86_400)] {
        assert!(matches!(
            s.reserve_at(b"k", &l, 1, ttl, T0),
            Err(Error::InvalidReservation(_))
        ));
    }
    let exact = Limits::new(&[Limit::per_minute(5).exact()]).unwrap();
    assert!(matches!(
        s.reserve_at(b"k", &exact, 1, TTL, T0),
        Err(Error::InvalidLimit(_))
    ));
    assert!(Limits::new(&[Limit::per_minute(5).exact().metered()]).is_err());
    assert!(Limits::new(&[Limit::per_minute(tollgate::MAX_METERED_LIMIT + 1).metered()]).is_err());
    assert!(Limits::new(&[Limit::per_minute(tollgate::MAX_METERED_LIMIT).metered()]).is_ok());
    assert_eq!(s.peek_at(b"k", &l, T0).unwrap().remaining(), 1_000);
    assert!(Reservation::from_bytes(&[0; 3]).is_err());
}

#[test]
fn a_reservation_outlives_its_store() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("debit.tg");
    let l = tokens();
    let text = {
        let s = Store::open(&path, Options::default().compactor(false)).unwrap();
        reserve(&s, b"k", &l, 600, T0).to_string()
    };
    let s = Store::open(&path, Options::default().compactor(false)).unwrap();
    assert_eq!(s.peek_at(b"k", &l, T0 + 1).unwrap().remaining(), 400);
    let r: Reservation = text.parse().unwrap();
    assert_eq!(
        s.settle_at(b"k", &l, &r, 100, T0 + 2).unwrap().remaining(),
        900
    );
    drop(s);
    let s = Store::open(&path, Options::default().compactor(false)).unwrap();
    assert!(matches!(
        s.settle_at(b"k", &l, &r, 100, T0 + 3),
        Err(Error::ReservationSettled)
    ));
    assert_eq!(s.peek_at(b"k", &l, T0 + 3).unwrap().remaining(), 900);
}

#[test]
fn eight_threads_on_one_key_count_every_settle_once() {
    let s = std::sync::Arc::new(store());
    let l = Limits::new(&[Limit::per_minute(1_000_000).metered()]).unwrap();
    let now = T0 + 123;
    let threads: Vec<_> = (0..8u32)
        .map(|t| {
            let (s, l) = (s.clone(), l.clone());
            std::thread::spawn(move || {
                let mut net = 0u64;
                let mut pending = Vec::new();
                for i in 0..2_000u32 {
                    let est = 1 + (i * 7 + t) % 50;
                    let r = s.reserve_at(b"hot", &l, est, TTL, now).unwrap();
                    let r = r.reservation().unwrap().clone();
                    if i % 10 == 9 {
                        // Left open: its estimate stays counted.
                        net += u64::from(est);
                        continue;
                    }
                    pending.push((r, (i * 13 + t) % 80));
                    if pending.len() == 4 {
                        for (r, actual) in pending.drain(..) {
                            // Settled twice, concurrently with the others: once counted.
                            s.settle_at(b"hot", &l, &r, actual, now).unwrap();
                            assert!(matches!(
                                s.settle_at(b"hot", &l, &r, actual, now),
                                Err(Error::ReservationSettled)
                            ));
                            net += u64::from(actual);
                        }
                    }
                }
                for (r, actual) in pending {
                    s.settle_at(b"hot", &l, &r, actual, now).unwrap();
                    net += u64::from(actual);
                }
                net
            })
        })
        .collect();
    let total: u64 = threads.into_iter().map(|t| t.join().unwrap()).sum();
    let used = s.peek_at(b"hot", &l, now).unwrap().windows()[0].used();
    assert_eq!(u64::from(used), total);
}

/// An admitted reservation: when, its estimate, and its settle (when, actual) if any.
type Admitted = (u64, u32, Option<(u64, u32)>);

/// One step of the model: reserve an estimate, settle an open reservation, or wait.
#[derive(Debug, Clone)]
enum Op {
    Reserve(u32),
    Settle { pick: usize, actual: u32 },
    Wait(u64),
}

fn op(limit: u32) -> impl Strategy<Value = Op> {
    prop_oneof![
        (0..=limit).prop_map(Op::Reserve),
        (any::<usize>(), 0..=limit.saturating_mul(3))
            .prop_map(|(pick, actual)| Op::Settle { pick, actual }),
        (0u64..20_000).prop_map(Op::Wait),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// The promise of `docs/ACCURACY.md` against an exact log: no interval of the window's
    /// length holds more than the limit plus the overdrafts settled in it. Each admitted
    /// request's usage is placed at its reservation (its estimate, or its actual cost if
    /// settled below it) and each overdraft (`actual - estimate`) at its settle.
    #[test]
    fn no_interval_holds_more_than_the_limit_plus_its_overdrafts(
        limit in 1u32..2_000,
        window_s in 1u64..120,
        metered in any::<bool>(),
        ops in (1u32..2_000).prop_flat_map(|l| prop::collection::vec(op(l), 1..120)),
    ) {
        let mut lim = Limit::new(limit, Duration::from_secs(window_s));
        if metered {
            lim = lim.metered();
        }
        let l = Limits::new(&[lim]).unwrap();
        let w = window_s * 1_000;
        let s = store();
        let mut now = T0;
        let mut log: Vec<Admitted> = Vec::new();
        let mut open: Vec<(usize, Reservation)> = Vec::new();
        for o in ops {
            match o {
                Op::Reserve(e) => {
                    let e = e.min(limit);
                    let r = s.reserve_at(b"k", &l, e, TTL, now).unwrap();
                    if let Some(r) = r.reservation() {
                        open.push((log.len(), r.clone()));
                        log.push((now, e, None));
                    }
                }
                Op::Settle { pick, actual } if !open.is_empty() => {
                    let (i, r) = open.swap_remove(pick % open.len());
                    if now >= r.expires_ms() {
                        continue;
                    }
                    s.settle_at(b"k", &l, &r, actual, now).unwrap();
                    log[i].2 = Some((now, actual));
                }
                Op::Settle { .. } => {}
                Op::Wait(d) => now += d,
            }
        }
        // Usage events: (time, units, is an overdraft).
        let mut events: Vec<(u64, u64, bool)> = Vec::new();
        for &(t, e, settled) in &log {
            match settled {
                Some((ts, a)) if a > e => {
                    events.push((t, u64::from(e), false));
                    events.push((ts, u64::from(a - e), true));
                }
                Some((_, a)) => events.push((t, u64::from(a), false)),
                None => events.push((t, u64::from(e), false)),
            }
        }
        for &(end, _, _) in &events {
            let inside = events.iter().filter(|&&(t, _, _)| t <= end && t + w > end);
            let (usage, over) = inside.fold((0, 0), |(u, o), &(_, n, is_over)| {
                (u + n, o + if is_over { n } else { 0 })
            });
            prop_assert!(
                usage <= u64::from(limit) + over,
                "interval ending at {}: usage {} > limit {} + overdrafts {}",
                end - T0, usage, limit, over
            );
        }
    }
}

#[test]
fn guard_records_go_when_settled_or_expired() {
    let s = store();
    let l = tokens();
    let settled = reserve(&s, b"k", &l, 10, T0);
    let open = reserve(&s, b"k", &l, 10, T0);
    assert_eq!(s.stats().idempotency_records, 2);
    s.settle_at(b"k", &l, &settled, 10, T0 + 1).unwrap();
    s.expire_now(T0 + 2);
    assert_eq!(
        s.stats().idempotency_records,
        1,
        "the settled guard is gone"
    );
    s.expire_now(open.expires_ms() - 1);
    assert_eq!(
        s.stats().idempotency_records,
        1,
        "the open one lives until it expires"
    );
    s.expire_now(open.expires_ms() + 1_000);
    assert_eq!(s.stats().idempotency_records, 0);
    assert!(matches!(
        s.settle_at(b"k", &l, &open, 0, open.expires_ms() + 1_000),
        Err(Error::ReservationExpired { .. })
    ));
}
