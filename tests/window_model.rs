//! Model tests: tollgate's windows against an exact sliding-log reference.
//!
//! For the sliding (default) representation the two bounds of `docs/ACCURACY.md`:
//! 1. never over-admits: admitted cost in any interval of length W is at most the limit;
//! 2. releases late by at most one sub-window and the rounding of `W` into `B` whole
//!    milliseconds (`release_delay <= ceil(W/B) + B`): a rejection is only ever issued when an
//!    exact log looking back `W + release_delay` would reject too, and the announced retry is
//!    never earlier than the exact log's, nor later than it by more than `release_delay`.
//!
//! For the exact representation: the decisions equal the reference's, request for request.

mod common;

use common::{max_in_any_window, used_in, T0};
use proptest::prelude::*;
use tollgate::{Limit, Limits, Options, Store};

/// A request: time step in ms since the previous one, and its cost.
fn ops() -> impl Strategy<Value = Vec<(u64, u32)>> {
    prop::collection::vec(
        (
            prop_oneof![
                Just(0u64),
                0u64..50,
                0u64..2_000,
                0u64..20_000,
                0u64..90_000
            ],
            1u32..4,
        ),
        1..300,
    )
}

fn limit_strategy() -> impl Strategy<Value = (u32, u64)> {
    (
        prop_oneof![1u32..120, 1u32..2_000, Just(1), Just(60), Just(1_000)],
        prop_oneof![
            Just(1_000u64),
            Just(10_000),
            Just(60_000),
            1_000u64..120_000
        ],
    )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    #[test]
    fn bucketed_never_over_admits_and_is_late_by_at_most_one_sub_window(
        (limit, w) in limit_strategy(),
        sub_windows in prop_oneof![Just(64u32), 16u32..=256],
        ops in ops(),
    ) {
        let store = Store::open_in_memory(Options::default().sub_windows(sub_windows)).unwrap();
        let l = Limit::new(limit, std::time::Duration::from_millis(w));
        let limits = Limits::new(&[l]).unwrap();
        let delay = store.release_delay(&l).as_millis() as u64;
        let b = u64::from(sub_windows);
        prop_assert!(delay <= w.div_ceil(b) + b, "release delay {delay} for W {w}, B {b}");
        let mut t = T0;
        let mut log = Vec::new();
        for (dt, cost) in ops {
            t += dt;
            let cost = cost.min(limit);
            let d = store.check_at(b"k", &limits, cost, t).unwrap();
            if d.allowed() {
                log.push((t, cost));
            } else {
                let looked_back = used_in(&log, t, w + delay);
                prop_assert!(
                    looked_back + u64::from(cost) > u64::from(limit),
                    "rejected at {t} although only {looked_back} were admitted in the last {} ms",
                    w + delay
                );
                // The announced retry time is enough: never early.
                let retry = d.windows()[0].retry_after_ms();
                prop_assert!(retry > 0);
                let later = store.peek_at(b"k", &limits, t + retry).unwrap();
                prop_assert!(later.windows()[0].remaining() >= cost);
                // And never later than the exact log's by more than the release delay.
                let exact = (t..=t + w)
                    .find(|&x| used_in(&log, x, w) + u64::from(cost) <= u64::from(limit))
                    .unwrap_or(t + w);
                prop_assert!(
                    t + retry <= exact + delay,
                    "retry at {} but the exact log admits at {exact} (delay {delay})",
                    t + retry
                );
            }
            prop_assert!(max_in_any_window(&log, w) <= u64::from(limit));
        }
    }

    #[test]
    fn exact_matches_the_reference_exactly(
        limit in 1u32..=64,
        w in prop_oneof![Just(1_000u64), Just(60_000), 1_000u64..90_000],
        ops in ops(),
    ) {
        let store = Store::open_in_memory(Options::default()).unwrap();
        let limits = Limits::new(&[Limit::new(limit, std::time::Duration::from_millis(w)).exact()]).unwrap();
        let mut t = T0;
        let mut log = Vec::new();
        for (dt, cost) in ops {
            t += dt;
            let cost = cost.min(limit);
            let expect = used_in(&log, t, w) + u64::from(cost) <= u64::from(limit);
            let d = store.check_at(b"e", &limits, cost, t).unwrap();
            prop_assert_eq!(d.allowed(), expect, "at {}", t);
            if d.allowed() {
                log.push((t, cost));
                prop_assert_eq!(u64::from(d.windows()[0].used()), used_in(&log, t, w));
            } else {
                // Exact retry: the earliest time the reference admits.
                let retry = d.windows()[0].retry_after_ms();
                prop_assert!(used_in(&log, t + retry, w) + u64::from(cost) <= u64::from(limit));
                prop_assert!(used_in(&log, t + retry - 1, w) + u64::from(cost) > u64::from(limit));
            }
        }
    }

    #[test]
    fn two_windows_hold_both_bounds_and_reject_atomically(
        per_min in 1u32..100,
        per_hour in 1u32..400,
        ops in ops(),
    ) {
        let store = Store::open_in_memory(Options::default()).unwrap();
        let minute = Limit::per_minute(per_min);
        let hour = Limit::per_hour(per_hour);
        let limits = Limits::new(&[minute, hour]).unwrap();
        let dm = store.release_delay(&minute).as_millis() as u64;
        let dh = store.release_delay(&hour).as_millis() as u64;
        let mut t = T0;
        let mut log = Vec::new();
        for (dt, cost) in ops {
            t += dt * 7;
            let cost = cost.min(per_min.min(per_hour));
            let d = store.check_at(b"two", &limits, cost, t).unwrap();
            if d.allowed() {
                log.push((t, cost));
            } else {
                let c = u64::from(cost);
                let min_full = used_in(&log, t, 60_000 + dm) + c > u64::from(per_min);
                let hour_full = used_in(&log, t, 3_600_000 + dh) + c > u64::from(per_hour);
                prop_assert!(min_full || hour_full);
            }
            prop_assert!(max_in_any_window(&log, 60_000) <= u64::from(per_min));
            prop_assert!(max_in_any_window(&log, 3_600_000) <= u64::from(per_hour));
            // The hour window holds exactly what was admitted in the last hour, at least.
            let counted = u64::from(d.windows()[1].used());
            prop_assert!(counted >= used_in(&log, t, 3_600_000));
        }
    }

    /// A refusal's figures are those of a look at the same instant: the check's short paths
    /// (a window refused by its head alone, the later ones answered from theirs) report what
    /// the general snapshot of every window reports. Three windows, so that a refusal by the
    /// first, the second or the last takes each path.
    #[test]
    fn a_refusal_reports_what_a_peek_at_that_instant_reports(
        per_sec in 1u32..20,
        per_min in 1u32..100,
        per_hour in 1u32..400,
        ops in ops(),
    ) {
        let store = Store::open_in_memory(Options::default()).unwrap();
        let limits = Limits::new(&[
            Limit::per_second(per_sec),
            Limit::per_minute(per_min),
            Limit::per_hour(per_hour),
        ])
        .unwrap();
        let mut t = T0;
        for (dt, _) in ops {
            t += dt;
            let looked = store.peek_at(b"r", &limits, t).unwrap();
            let d = store.check_at(b"r", &limits, 1, t).unwrap();
            prop_assert_eq!(d.allowed(), looked.allowed());
            if !d.allowed() {
                prop_assert_eq!(d.windows(), looked.windows());
                prop_assert_eq!((d.limit(), d.remaining(), d.reset()), (looked.limit(), looked.remaining(), looked.reset()));
                prop_assert_eq!(d.retry_after(), looked.retry_after());
            }
        }
    }

    #[test]
    fn a_backwards_clock_never_admits_more(
        limit in 1u32..50,
        ops in prop::collection::vec((0u64..30_000, any::<bool>()), 1..200),
    ) {
        // The clock jumps back and forth; admissions are judged against the newest time seen
        // (the store's own notion of now), which is what the window promise is about.
        let store = Store::open_in_memory(Options::default()).unwrap();
        let limits = Limits::new(&[Limit::per_minute(limit)]).unwrap();
        let mut clock = T0;
        let mut newest: Option<u64> = None;
        let mut log = Vec::new();
        for (dt, back) in ops {
            let t = if back { clock.saturating_sub(dt * 10) } else { clock + dt };
            clock = t;
            let newest = *newest.insert(newest.map_or(t, |n: u64| n.max(t)));
            if store.check_at(b"b", &limits, 1, t).unwrap().allowed() {
                log.push((newest, 1));
            }
            prop_assert!(max_in_any_window(&log, 60_000) <= u64::from(limit));
        }
    }
}

/// The seeds' ErzyCall client (60 per minute AND 1000 per hour): a batch of 60 at the start of
/// each minute, each batch 61 s after the last, 17 batches. An exact sliding log admits 1,000
/// (every batch in full until the hour's budget runs out in the 17th); the default window
/// admits the very same requests.
#[test]
fn the_erzycall_client_gets_every_request_an_exact_log_admits() {
    let store = Store::open_in_memory(Options::default()).unwrap();
    let limits = Limits::new(&[Limit::per_minute(60), Limit::per_hour(1000)]).unwrap();
    let mut log: Vec<(u64, u32)> = Vec::new();
    let (mut admitted, mut exact_admitted) = (0, 0);
    for batch in 0..17u64 {
        let start = T0 + 123 + batch * 61_000;
        for i in 0..60u64 {
            let t = start + i * 10;
            let exact = used_in(&log, t, 60_000) < 60 && used_in(&log, t, 3_600_000) < 1000;
            let d = store.check_at(b"erzycall", &limits, 1, t).unwrap();
            assert_eq!(d.allowed(), exact, "batch {batch}, request {i}");
            if exact {
                log.push((t, 1));
                exact_admitted += 1;
            }
            admitted += u32::from(d.allowed());
        }
    }
    assert_eq!((admitted, exact_admitted), (1000, 1000));
}

/// Seconds until an exact log admits `cost` more (rounded up), from `now`.
fn exact_retry_s(log: &[(u64, u32)], now: u64, w: u64, limit: u32, cost: u32) -> u64 {
    let at = (now..=now + w)
        .find(|&t| used_in(log, t, w) + u64::from(cost) <= u64::from(limit))
        .unwrap_or(now + w);
    (at - now).div_ceil(1000)
}

/// The headers a client reads: `Retry-After` is never earlier than an exact log's and at most
/// one second later (a minute's release delay is 970 ms); `remaining` is the fewest left.
#[test]
fn retry_after_is_never_early_and_at_most_a_second_late() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("headers.tg");
    let minute = |n| Limits::new(&[Limit::per_minute(n)]).unwrap();
    let store = Store::open(&path, Options::default()).unwrap();
    // The 11th click-to-call in 10 s (10 per minute): the exact log says 50 s.
    let (c2c, mut log) = (minute(10), Vec::new());
    for i in 0..10u64 {
        assert!(store
            .check_at(b"c2c", &c2c, 1, T0 + i * 1000)
            .unwrap()
            .allowed());
        log.push((T0 + i * 1000, 1));
    }
    let d = store.check_at(b"c2c", &c2c, 1, T0 + 10_000).unwrap();
    let exact = exact_retry_s(&log, T0 + 10_000, 60_000, 10, 1);
    assert_eq!(exact, 50);
    let got = d.retry_after().unwrap();
    assert!((exact..=exact + 1).contains(&got), "{got} for {exact}");
    // A bulk call of cost 25 after 40 singles on 60 per minute: the exact log says 24 s.
    let (bulk, mut log) = (minute(60), Vec::new());
    for i in 0..40u64 {
        assert!(store
            .check_at(b"bulk", &bulk, 1, T0 + i * 1000)
            .unwrap()
            .allowed());
        log.push((T0 + i * 1000, 1));
    }
    let d = store.check_at(b"bulk", &bulk, 25, T0 + 40_000).unwrap();
    assert!(!d.allowed());
    let exact = exact_retry_s(&log, T0 + 40_000, 60_000, 60, 25);
    assert_eq!(exact, 24);
    let got = d.retry_after().unwrap();
    assert!((exact..=exact + 1).contains(&got), "{got} for {exact}");
    // After a restart at 60 of 60: the oldest leaves 500 ms later.
    for i in 40..60u64 {
        assert!(store
            .check_at(b"bulk", &bulk, 1, T0 + i * 1000)
            .unwrap()
            .allowed());
        log.push((T0 + i * 1000, 1));
    }
    store.close().unwrap();
    let store = Store::open(&path, Options::default()).unwrap();
    let now = T0 + 59_500;
    let d = store.check_at(b"bulk", &bulk, 1, now).unwrap();
    assert!(!d.allowed());
    let exact = exact_retry_s(&log, now, 60_000, 60, 1);
    assert_eq!(exact, 1);
    let got = d.retry_after().unwrap();
    assert!((exact..=exact + 1).contains(&got), "{got} for {exact}");
    // And it is enough: at now + Retry-After the request is admitted.
    assert!(store
        .check_at(b"bulk", &bulk, 1, now + got * 1000)
        .unwrap()
        .allowed());
}

/// `remaining` is the fewest units left over all windows, and `limit` and `reset` describe
/// that same window, admitted or refused.
#[test]
fn remaining_is_the_fewest_left_over_every_window() {
    let store = Store::open_in_memory(Options::default()).unwrap();
    let limits = Limits::new(&[Limit::per_minute(12), Limit::per_hour(11)]).unwrap();
    for i in 0..10u64 {
        let d = store.check_at(b"k", &limits, 1, T0 + i).unwrap();
        assert!(d.allowed());
        assert_eq!((d.limit(), d.remaining()), (11, 10 - i as u32));
    }
    // A cost of 2 is refused by the hour (1 left) although the minute has 2: the headers say
    // 1 left, of the hour's 11, with the hour's reset.
    let d = store.check_at(b"k", &limits, 2, T0 + 10).unwrap();
    assert!(!d.allowed());
    assert_eq!((d.limit(), d.remaining()), (11, 1));
    assert_eq!(d.reset(), d.windows()[1].reset());
}
