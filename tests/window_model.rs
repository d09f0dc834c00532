//! Model tests: tollgate's windows against an exact sliding-log reference.
//!
//! For the bucketed (default) representation the two bounds of `docs/ACCURACY.md`:
//! 1. never over-admits: admitted cost in any interval of length W is at most the limit;
//! 2. releases late by at most one sub-window: a rejection is only ever issued when an exact
//!    log looking back `W + release_delay` would reject too.
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
        1u32..120,
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
        sub_windows in 2u32..20,
        ops in ops(),
    ) {
        let store = Store::open_in_memory(Options::default().sub_windows(sub_windows)).unwrap();
        let l = Limit::new(limit, std::time::Duration::from_millis(w));
        let limits = Limits::new(&[l]).unwrap();
        let delay = store.release_delay(&l).as_millis() as u64;
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
                // The announced retry time is enough.
                let retry = d.windows()[0].retry_after_ms();
                prop_assert!(retry > 0);
                let later = store.peek_at(b"k", &limits, t + retry).unwrap();
                prop_assert!(later.windows()[0].remaining() >= cost);
            }
            prop_assert!(max_in_any_window(&log, w) <= u64::from(limit));
        }
    }

    #[test]
    fn exact_matches_the_reference_exactly(
        limit in 1u32..=32,
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
