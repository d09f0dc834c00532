//! Behaviour of a store through its public API: decisions, headers, bad input, persistence.

mod common;

use std::time::Duration;

use common::{temp_store, T0};
use tollgate::{Error, Limit, Limits, ManualClock, Options, Store};

fn erzycall() -> Limits {
    Limits::new(&[Limit::per_minute(60), Limit::per_hour(1000)]).expect("valid limits")
}

#[test]
fn sixty_per_minute_then_429_with_headers() {
    let store = Store::open_in_memory(Options::default()).unwrap();
    let limits = erzycall();
    for i in 0..60 {
        let d = store.check_at(b"tok", &limits, 1, T0 + i * 100).unwrap();
        assert!(d.allowed(), "request {i}");
        assert_eq!(d.limit(), 60);
        assert_eq!(d.remaining(), 59 - i as u32);
        assert!(d.retry_after().is_none());
        assert_eq!(d.windows().len(), 2);
        assert_eq!(d.windows()[1].used(), i as u32 + 1);
    }
    let d = store.check_at(b"tok", &limits, 1, T0 + 6_000).unwrap();
    assert!(!d.allowed());
    assert_eq!(d.limit(), 60);
    assert_eq!(d.remaining(), 0);
    let retry = d.retry_after().expect("retry-after on a rejection");
    // The first requests came at T0; they leave the minute window between 60 s and 60 s plus
    // one sub-window after that.
    let delay = store.release_delay(&Limit::per_minute(60)).as_millis() as u64;
    let earliest = (T0 + 60_000 - (T0 + 6_000)).div_ceil(1000);
    let latest = (T0 + 60_000 + delay - (T0 + 6_000)).div_ceil(1000);
    assert!(
        (earliest..=latest).contains(&retry),
        "retry {retry} not in {earliest}..={latest}"
    );
    // A rejected request consumed nothing: the hour window still holds 60.
    assert_eq!(d.windows()[1].used(), 60);
    // Reset is when the window is back to its full limit, in epoch seconds.
    assert!(d.reset() >= (T0 + 60_000) / 1000);
    // Retrying at the announced time is admitted.
    let d2 = store
        .check_at(b"tok", &limits, 1, T0 + 6_000 + retry * 1000)
        .unwrap();
    assert!(d2.allowed());
}

#[test]
fn retry_after_names_the_longest_violated_window() {
    let store = Store::open_in_memory(Options::default()).unwrap();
    let limits = Limits::new(&[Limit::per_minute(5), Limit::per_hour(6)]).unwrap();
    let mut t = T0;
    for _ in 0..5 {
        assert!(store.check_at(b"k", &limits, 1, t).unwrap().allowed());
    }
    t += 120_000;
    assert!(store.check_at(b"k", &limits, 1, t).unwrap().allowed());
    // Minute window is free again, the hour window is full.
    let d = store.check_at(b"k", &limits, 1, t + 1).unwrap();
    assert!(!d.allowed());
    assert_eq!(d.limit(), 6);
    assert!(d.retry_after().unwrap() > 3000, "the hour window binds");
    assert!(d.windows()[0].fits());
    assert!(!d.windows()[1].fits());
}

#[test]
fn cost_counts_in_every_window_and_rejections_consume_nothing() {
    let store = Store::open_in_memory(Options::default()).unwrap();
    let limits = erzycall();
    assert!(store.check_at(b"bulk", &limits, 50, T0).unwrap().allowed());
    let d = store.check_at(b"bulk", &limits, 11, T0).unwrap();
    assert!(!d.allowed());
    let d = store.check_at(b"bulk", &limits, 10, T0).unwrap();
    assert!(d.allowed());
    assert_eq!(d.remaining(), 0);
    assert_eq!(d.windows()[1].used(), 60);
}

#[test]
fn keys_are_independent() {
    let store = Store::open_in_memory(Options::default()).unwrap();
    let limits = Limits::new(&[Limit::per_minute(1)]).unwrap();
    assert!(store.check_at(b"a", &limits, 1, T0).unwrap().allowed());
    assert!(!store.check_at(b"a", &limits, 1, T0).unwrap().allowed());
    assert!(store.check_at(b"b", &limits, 1, T0).unwrap().allowed());
    // Keys that share a prefix, or differ in length only, are different keys.
    assert!(store.check_at(b"aa", &limits, 1, T0).unwrap().allowed());
    let long = [7u8; tollgate::MAX_KEY_LEN];
    assert!(store.check_at(&long, &limits, 1, T0).unwrap().allowed());
    assert!(!store.check_at(&long, &limits, 1, T0).unwrap().allowed());
    assert!(store
        .check_at(&long[..127], &limits, 1, T0)
        .unwrap()
        .allowed());
    assert_eq!(store.stats().entries, 5);
}

#[test]
fn peek_reads_without_counting() {
    let store = Store::open_in_memory(Options::default()).unwrap();
    let limits = Limits::new(&[Limit::per_minute(2)]).unwrap();
    let d = store.peek_at(b"p", &limits, T0).unwrap();
    assert!(d.allowed());
    assert_eq!(d.remaining(), 2);
    assert_eq!(store.stats().entries, 0, "a peek creates nothing");
    store.check_at(b"p", &limits, 1, T0).unwrap();
    for _ in 0..3 {
        let d = store.peek_at(b"p", &limits, T0).unwrap();
        assert!(d.allowed());
        assert_eq!(d.remaining(), 1);
    }
    store.check_at(b"p", &limits, 1, T0).unwrap();
    let d = store.peek_at(b"p", &limits, T0).unwrap();
    assert!(!d.allowed());
    assert!(d.retry_after().is_some());
    // Cost 0 is a peek too.
    let d = store.check_at(b"p", &limits, 0, T0).unwrap();
    assert_eq!(d.remaining(), 0);
}

#[test]
fn exact_mode_for_small_limits() {
    let store = Store::open_in_memory(Options::default()).unwrap();
    let login = Limits::new(&[Limit::per_minute(5).exact()]).unwrap();
    for i in 0..5 {
        assert!(store
            .check_at(b"login", &login, 1, T0 + i * 1000)
            .unwrap()
            .allowed());
    }
    let d = store.check_at(b"login", &login, 1, T0 + 10_000).unwrap();
    assert!(!d.allowed());
    assert_eq!(d.retry_after(), Some(50));
    assert_eq!(d.reset(), (T0 + 4_000 + 60_000) / 1000);
    assert!(!store
        .check_at(b"login", &login, 1, T0 + 59_999)
        .unwrap()
        .allowed());
    assert!(store
        .check_at(b"login", &login, 1, T0 + 60_000)
        .unwrap()
        .allowed());
    assert_eq!(
        store.release_delay(&Limit::per_minute(5).exact()),
        Duration::ZERO
    );
}

#[test]
fn mixed_exact_and_bucketed_windows_are_all_or_nothing() {
    let store = Store::open_in_memory(Options::default()).unwrap();
    let limits = Limits::new(&[Limit::per_hour(100), Limit::per_minute(3).exact()]).unwrap();
    for _ in 0..3 {
        assert!(store.check_at(b"m", &limits, 1, T0).unwrap().allowed());
    }
    let d = store.check_at(b"m", &limits, 1, T0).unwrap();
    assert!(!d.allowed());
    assert_eq!(
        d.windows()[0].used(),
        3,
        "the refused request left the hour window alone"
    );
}

#[test]
fn clock_moving_backwards_never_refills() {
    let clock = ManualClock::new(T0);
    let store = Store::open_in_memory(Options::default().clock(clock.clone())).unwrap();
    let limits = Limits::new(&[Limit::per_minute(3), Limit::per_minute(2).exact()]);
    assert!(limits.is_err(), "same window length twice is refused");
    let limits = Limits::new(&[Limit::per_minute(3)]).unwrap();
    for _ in 0..3 {
        assert!(store.check(b"c", &limits, 1).unwrap().allowed());
    }
    for back in [1_000, 3_600_000, 7 * 86_400_000] {
        clock.set_ms(T0 - back);
        assert!(
            !store.check(b"c", &limits, 1).unwrap().allowed(),
            "back {back} ms"
        );
    }
    // Jumping forward by days frees the quota.
    clock.set_ms(T0 + 3 * 86_400_000);
    assert!(store.check(b"c", &limits, 1).unwrap().allowed());
}

#[test]
fn changing_a_limit_keeps_the_counts() {
    let store = Store::open_in_memory(Options::default()).unwrap();
    let small = Limits::new(&[Limit::per_minute(10)]).unwrap();
    let big = Limits::new(&[Limit::per_minute(1000)]).unwrap();
    for _ in 0..10 {
        assert!(store.check_at(b"r", &small, 1, T0).unwrap().allowed());
    }
    // Raising the limit (wider counters) keeps the 10 already counted.
    let d = store.check_at(b"r", &big, 1, T0).unwrap();
    assert!(d.allowed());
    assert_eq!(d.windows()[0].used(), 11);
    // Lowering it again: 11 > 10, so refused.
    assert!(!store.check_at(b"r", &small, 1, T0).unwrap().allowed());
    // A different window set moves the entry, keeping the shared minute window.
    let two = Limits::new(&[Limit::per_minute(20), Limit::per_hour(100)]).unwrap();
    let d = store.check_at(b"r", &two, 1, T0).unwrap();
    assert!(d.allowed());
    assert_eq!(d.windows()[0].used(), 12);
    assert_eq!(d.windows()[1].used(), 1);
    // And an exact window's ring follows a changed limit.
    let e3 = Limits::new(&[Limit::per_minute(3).exact()]).unwrap();
    let e2 = Limits::new(&[Limit::per_minute(2).exact()]).unwrap();
    for _ in 0..2 {
        assert!(store.check_at(b"x", &e3, 1, T0).unwrap().allowed());
    }
    assert!(!store.check_at(b"x", &e2, 1, T0).unwrap().allowed());
    assert_eq!(store.stats().entries, 2);
}

#[test]
fn bad_input_is_a_typed_error_and_harms_nothing() {
    let store = Store::open_in_memory(Options::default()).unwrap();
    let limits = Limits::new(&[Limit::per_minute(5)]).unwrap();
    assert!(store.check_at(b"ok", &limits, 1, T0).unwrap().allowed());
    assert!(matches!(
        store.check_at(b"", &limits, 1, T0),
        Err(Error::InvalidKey { len: 0 })
    ));
    let too_long = vec![b'x'; tollgate::MAX_KEY_LEN + 1];
    assert!(matches!(
        store.check_at(&too_long, &limits, 1, T0),
        Err(Error::InvalidKey { .. })
    ));
    assert!(matches!(
        store.check_at(b"ok", &limits, 6, T0),
        Err(Error::CostExceedsLimit { cost: 6, limit: 5 })
    ));
    assert!(matches!(
        store.peek_at(b"", &limits, T0),
        Err(Error::InvalidKey { .. })
    ));
    assert!(Limits::new(&[Limit::per_minute(0)]).is_err());
    assert!(Limits::new(&[Limit::new(1, Duration::ZERO)]).is_err());
    assert!(matches!(
        Store::open_in_memory(Options::default().sub_windows(1)),
        Err(Error::InvalidOptions(_))
    ));
    let d = store.peek_at(b"ok", &limits, T0).unwrap();
    assert_eq!(d.remaining(), 4, "the good key is untouched");
}

#[test]
fn reopen_keeps_counts_and_reset_times() {
    let (_dir, path) = temp_store();
    let limits = erzycall();
    let before = {
        let store = Store::open(&path, Options::default()).unwrap();
        let mut last = None;
        for i in 0..59 {
            last = Some(store.check_at(b"token-59", &limits, 1, T0 + i).unwrap());
        }
        store.close().unwrap();
        last.unwrap()
    };
    assert_eq!(before.remaining(), 1);
    let store = Store::open(&path, Options::default()).unwrap();
    assert_eq!(store.open_report().entries, 1);
    let d = store.peek_at(b"token-59", &limits, T0 + 100).unwrap();
    assert_eq!(d.remaining(), 1);
    assert_eq!(d.reset(), before.reset());
    // Drop without close keeps them too.
    assert!(store
        .check_at(b"token-59", &limits, 1, T0 + 200)
        .unwrap()
        .allowed());
    drop(store);
    let store = Store::open(&path, Options::default()).unwrap();
    let d = store.check_at(b"token-59", &limits, 1, T0 + 300).unwrap();
    assert!(!d.allowed());
    assert_eq!(d.reset(), before.reset());
}

#[test]
fn reopen_keeps_many_keys_across_segments() {
    let (_dir, path) = temp_store();
    let limits = erzycall();
    let exact = Limits::new(&[Limit::per_minute(4).exact()]).unwrap();
    let n = 5_000u32;
    {
        let store = Store::open(&path, Options::default().segment_size_log2(16)).unwrap();
        for i in 0..n {
            let key = format!("tok-{i}");
            for _ in 0..(i % 7) {
                store.check_at(key.as_bytes(), &limits, 1, T0).unwrap();
            }
            store
                .check_at(format!("x-{i}").as_bytes(), &exact, 1, T0)
                .unwrap();
        }
        assert!(store.stats().segments > 4, "spans several segments");
    }
    let store = Store::open(&path, Options::default()).unwrap();
    let r = store.open_report();
    assert_eq!(r.corrupt_entries + r.corrupt_segments + r.duplicates, 0);
    for i in 0..n {
        let key = format!("tok-{i}");
        let d = store.peek_at(key.as_bytes(), &limits, T0 + 1).unwrap();
        assert_eq!(d.windows()[0].used(), i % 7, "{key}");
        let d = store
            .peek_at(format!("x-{i}").as_bytes(), &exact, T0 + 1)
            .unwrap();
        assert_eq!(d.windows()[0].used(), 1);
    }
}

#[test]
fn a_second_open_is_locked() {
    let (_dir, path) = temp_store();
    let store = Store::open(&path, Options::default()).unwrap();
    match Store::open(&path, Options::default()) {
        Err(Error::Locked { path: p }) => assert_eq!(p, path),
        other => panic!("expected Locked, got {other:?}"),
    }
    drop(store);
    Store::open(&path, Options::default()).expect("lock released on drop");
}

#[test]
fn store_is_send_sync_and_clones_share() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<Store>();
    let store = Store::open_in_memory(Options::default()).unwrap();
    let limits = Limits::new(&[Limit::per_minute(1)]).unwrap();
    let other = store.clone();
    assert!(store.check_at(b"s", &limits, 1, T0).unwrap().allowed());
    assert!(!other.check_at(b"s", &limits, 1, T0).unwrap().allowed());
}

/// One `Limits` used with stores of different `sub_windows` (it keeps the shapes of the first
/// non-default one it meets, and works the others out each time): every store decides as it
/// does with a `Limits` of its own.
#[test]
fn one_limit_set_serves_stores_of_every_sub_window_count() {
    let shared = erzycall();
    for b in [32, 16, 64, 128, 32] {
        let with_shared = Store::open_in_memory(Options::default().sub_windows(b)).unwrap();
        let with_own = Store::open_in_memory(Options::default().sub_windows(b)).unwrap();
        let own = erzycall();
        let mut t = T0;
        for i in 0..200u64 {
            // Bursts, then pauses of a few seconds: counts spread over several sub-windows.
            t += if i % 40 == 39 { 7_000 } else { 15 };
            let cost = 1 + (i % 3) as u32;
            let a = with_shared.check_at(b"k", &shared, cost, t).unwrap();
            let o = with_own.check_at(b"k", &own, cost, t).unwrap();
            assert_eq!(a, o, "B = {b}, check {i}");
        }
        // The bound on how late quota comes back is this store's own.
        let minute = Limit::per_minute(60);
        let g = 60_000u64.div_ceil(u64::from(b));
        assert_eq!(
            with_shared.release_delay(&minute),
            Duration::from_millis((u64::from(b) + 1) * g - 60_000),
            "B = {b}"
        );
    }
}
