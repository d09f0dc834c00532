//! Many threads on one store: the limit holds in every window, inserts race safely.

mod common;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Barrier, Mutex};
use std::thread;

use common::{max_in_any_window, T0};
use tollgate::{Limit, Limits, Options, Store};

const THREADS: usize = 8;

/// Eight threads hammer one key while a ninth moves the clock; every admission is recorded
/// with the time it counts at, and no interval of one window holds more than the limit.
///
/// A thread's clock reading can be stale by the time its check runs (another thread already
/// counted at a later time): the store then counts the request at the newest time it has seen
/// (docs/ACCURACY.md), which the decision's reset time gives away (`reset - window - delay`).
fn hammer_one_key(limits: Limits, checked: usize, rounds: usize) {
    let store = Store::open_in_memory(Options::default()).unwrap();
    let watched = limits.as_slice()[checked];
    let (window_ms, limit) = (watched.window_ms(), watched.limit());
    let delay = store.release_delay(&watched).as_millis() as u64;
    let now = Arc::new(AtomicU64::new(T0));
    let log = Arc::new(Mutex::new(Vec::new()));
    let barrier = Arc::new(Barrier::new(THREADS + 1));
    let mut handles = Vec::new();
    for _ in 0..THREADS {
        let (store, now, log, barrier, limits) = (
            store.clone(),
            now.clone(),
            log.clone(),
            barrier.clone(),
            limits.clone(),
        );
        handles.push(thread::spawn(move || {
            let mut mine = Vec::new();
            barrier.wait();
            for _ in 0..rounds {
                let t = now.load(Ordering::SeqCst);
                let d = store.check_at(b"hot", &limits, 1, t).unwrap();
                if d.allowed() {
                    let counted_from = d.windows()[checked].reset_ms() - window_ms - delay;
                    mine.push((t.max(counted_from), 1u32));
                }
            }
            log.lock().unwrap().extend(mine);
        }));
    }
    barrier.wait();
    for _ in 0..2_000 {
        now.fetch_add(window_ms / 200, Ordering::SeqCst);
        thread::yield_now();
    }
    for h in handles {
        h.join().unwrap();
    }
    let mut log = log.lock().unwrap().clone();
    log.sort_unstable();
    assert!(!log.is_empty());
    let worst = max_in_any_window(&log, window_ms);
    assert!(
        worst <= u64::from(limit),
        "{worst} admitted in one window, limit {limit}"
    );
}

#[test]
fn eight_threads_one_key_never_exceed_the_limit() {
    hammer_one_key(Limits::new(&[Limit::per_minute(100)]).unwrap(), 0, 20_000);
}

#[test]
fn eight_threads_one_key_two_windows() {
    let limits = Limits::new(&[Limit::per_second(50), Limit::per_minute(300)]).unwrap();
    // The per-minute bound is the one checked here; the per-second one makes windows fail
    // at different moments, exercising the undo path.
    hammer_one_key(limits, 1, 20_000);
}

#[test]
fn eight_threads_one_key_exact() {
    hammer_one_key(
        Limits::new(&[Limit::per_minute(20).exact()]).unwrap(),
        0,
        5_000,
    );
}

#[test]
fn eight_threads_insert_the_same_new_keys() {
    // Every thread races to create the same keys: each key must end with exactly one entry
    // and exactly one admission (limit 1).
    let store = Store::open_in_memory(Options::default()).unwrap();
    let limits = Limits::new(&[Limit::per_hour(1)]).unwrap();
    let admitted = Arc::new(AtomicU64::new(0));
    let barrier = Arc::new(Barrier::new(THREADS));
    let keys = 5_000u64;
    let handles: Vec<_> = (0..THREADS)
        .map(|_| {
            let (store, limits, admitted, barrier) = (
                store.clone(),
                limits.clone(),
                admitted.clone(),
                barrier.clone(),
            );
            thread::spawn(move || {
                barrier.wait();
                for k in 0..keys {
                    let key = k.to_le_bytes();
                    if store.check_at(&key, &limits, 1, T0).unwrap().allowed() {
                        admitted.fetch_add(1, Ordering::Relaxed);
                    }
                }
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
    assert_eq!(admitted.load(Ordering::Relaxed), keys);
    assert_eq!(store.stats().entries, keys);
}

#[test]
fn keys_never_see_each_others_counters_while_entries_move() {
    // Threads alternate two window shapes on their own keys (each change moves the entry) while
    // others count on theirs: every key's count is exactly its own admissions.
    let store = Store::open_in_memory(Options::default()).unwrap();
    let a = Limits::new(&[Limit::per_hour(60_000)]).unwrap();
    let b = Limits::new(&[Limit::per_hour(60_000), Limit::per_day(60_000)]).unwrap();
    let handles: Vec<_> = (0..THREADS as u64)
        .map(|id| {
            let (store, a, b) = (store.clone(), a.clone(), b.clone());
            thread::spawn(move || {
                let key = format!("key-{id}");
                for i in 0..2_000u32 {
                    let limits = if id % 2 == 0 && i % 50 == 0 && (i / 50) % 2 == 1 {
                        &b
                    } else {
                        &a
                    };
                    let d = store.check_at(key.as_bytes(), limits, 1, T0).unwrap();
                    assert!(d.allowed());
                    assert_eq!(d.windows()[0].used(), i + 1, "{key} after {i}");
                }
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
}

#[test]
fn home_slots_keep_every_count_while_segments_split_and_entries_move_home() {
    home_slots_hammer(Limits::new(&[Limit::per_hour(1_000), Limit::per_day(10_000)]).unwrap());
}

#[test]
fn home_slots_keep_every_count_with_an_exact_window() {
    // The same with a set that takes the exact path (`apply_with_exact`).
    home_slots_hammer(
        Limits::new(&[Limit::per_hour(1_000), Limit::per_minute(60).exact()]).unwrap(),
    );
}

/// Small segments (255 slots of four lines), so the home segments split again and again
/// while eight threads check the same keys, each in its own order: splits move entries,
/// checks move entries home, and every key must end with exactly one count per thread in
/// each window.
fn home_slots_hammer(limits: Limits) {
    let opts = Options::default()
        .segment_size_log2(16)
        .compactor(false)
        .home_slots(true);
    let store = Store::open_in_memory(opts).unwrap();
    let keys = 4_096u64;
    let barrier = Arc::new(Barrier::new(THREADS));
    let handles: Vec<_> = (0..THREADS as u64)
        .map(|id| {
            let (store, limits, barrier) = (store.clone(), limits.clone(), barrier.clone());
            thread::spawn(move || {
                barrier.wait();
                for i in 0..keys {
                    // A different order per thread: an odd multiplier, then a shift, is a
                    // permutation of 0..2^12.
                    let k = (i * (2 * id + 1) + id * 977) % keys;
                    let key = format!("home-key-{k:06}-abcdefghijklmnop");
                    let d = store.check_at(key.as_bytes(), &limits, 1, T0).unwrap();
                    assert!(d.allowed(), "{key}");
                }
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
    assert_eq!(store.stats().entries, keys);
    for k in 0..keys {
        let key = format!("home-key-{k:06}-abcdefghijklmnop");
        let d = store.peek_at(key.as_bytes(), &limits, T0).unwrap();
        for (i, w) in d.windows().iter().enumerate() {
            assert_eq!(w.used(), THREADS as u32, "{key}, window {i}");
        }
    }
}
