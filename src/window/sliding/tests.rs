//! Unit tests of the sliding window: packing, sizes, the ErzyCall scenario, the lateness
//! table, recovery, and an eight-thread stress test on one window.

use std::sync::atomic::{AtomicU64, Ordering};

use super::*;

const T0: u64 = 1_700_000_000_000;
const MIN: u64 = 60_000;
const HOUR: u64 = 3_600_000;
const DAY: u64 = 86_400_000;

/// Fresh (all zero) words for `geo`.
pub(super) fn cells(geo: &Slide) -> Vec<AtomicU64> {
    (0..geo.words()).map(|_| AtomicU64::new(0)).collect()
}

pub(super) fn slide(limit: u32, window_ms: u64) -> Slide {
    Slide::new(limit, window_ms, DEFAULT_B).unwrap()
}

fn win<'a>(words: &'a [AtomicU64], geo: &Slide) -> Window<'a, AtomicU64> {
    Window::new(words, geo).unwrap()
}

#[test]
fn out_of_range_shapes_are_refused() {
    assert!(Slide::new(0, MIN, 64).is_none());
    assert!(Slide::new(MAX_LIMIT + 1, MIN, 64).is_none());
    assert!(Slide::new(1, 999, 64).is_none());
    assert!(Slide::new(1, MAX_WINDOW_MS + 1, 64).is_none());
    assert!(Slide::new(1, DAY + 1, 64).is_some());
    assert!(Slide::new(1, MIN, 15).is_none());
    assert!(Slide::new(1, MIN, 257).is_none());
    assert!(Slide::new(MAX_LIMIT, 1_000, 256).is_some());
    let geo = slide(60, MIN);
    let short: Vec<AtomicU64> = (0..geo.words() - 1).map(|_| AtomicU64::new(0)).collect();
    assert!(Window::new(&short, &geo).is_none());
}

/// The memory budget of issue 15: ErzyCall's pair in 19 words, one 60/min window in 11.
#[test]
fn words_per_window() {
    let rows = [
        (1u32, MIN, 2usize),
        (60, MIN, 7),
        (1_000, HOUR, 11),
        (1_000, MIN, 11),
    ];
    for (limit, w, words) in rows {
        assert_eq!(slide(limit, w).words(), words, "{limit} per {w} ms");
    }
    assert!(slide(60, MIN).words() + slide(1_000, HOUR).words() <= 19);
    assert!(slide(60, MIN).words() <= 11);
    // A million per window needs the base word: 20 ring words, head, base.
    for w in [1_000, MIN, HOUR, DAY] {
        let g = slide(1_000_000, w);
        assert!(g.wide());
        assert_eq!(g.words(), 22);
    }
    // The packed layout really holds every sub-window number up to year 9999.
    for limit in [1u32, 60, 1_000, 65_535, 1_000_000, MAX_LIMIT] {
        for w in [1_000, 1_001, MIN, HOUR, DAY] {
            for b in [MIN_B, DEFAULT_B, 100, MAX_B] {
                let g = Slide::new(limit, w, b).unwrap();
                let n = g.sub_window(MAX_TIME_MS);
                let h = g.encode(n, 0, 0);
                assert_eq!(g.head_n(h, n), n, "{limit} {w} {b}");
                if !g.wide() {
                    assert_eq!(g.head_n(h, 0), n, "{limit} {w} {b}");
                }
            }
        }
    }
}

#[test]
fn ring_counters_pack_across_word_boundaries() {
    for limit in [1u32, 3, 60, 1_000, 65_535, 1_000_000, MAX_LIMIT] {
        for b in [MIN_B, 17, DEFAULT_B, 255, MAX_B] {
            let g = Slide::new(limit, MIN, b).unwrap();
            let mut ring = [0u64; MAX_RING_WORDS];
            let val = |i: u32| (u64::from(i) * 2_654_435_761) % (u64::from(limit) + 1);
            for i in 0..b {
                g.set_slot(&mut ring, i, val(i));
            }
            for i in 0..b {
                assert_eq!(g.slot(&ring, i), val(i), "limit {limit} b {b} slot {i}");
            }
            // Nothing written past the ring.
            assert!(ring[g.ring_words()..].iter().all(|&w| w == 0));
            // Overwriting one counter leaves its neighbours alone.
            g.set_slot(&mut ring, b / 2, 0);
            for i in 0..b {
                let want = if i == b / 2 { 0 } else { val(i) };
                assert_eq!(g.slot(&ring, i), want);
            }
        }
    }
}

/// `Geometry::sub_window`'s reciprocal multiply, for every sub-window length this module
/// uses (1 000 / 256 rounded up to 86 400 000 / 16), at random and boundary times.
#[test]
fn sub_window_without_division_is_exact() {
    let mut x = 0x9E37_79B9_7F4A_7C15u64;
    let mut next = || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    for _ in 0..2_000 {
        let w = MIN_WINDOW_MS + next() % (MAX_WINDOW_MS - MIN_WINDOW_MS + 1);
        let b = MIN_B + (next() % u64::from(MAX_B - MIN_B + 1)) as u32;
        let g = Slide::new(1, w, b).unwrap();
        for t in [0, 1, g.g - 1, g.g, g.g + 1, MAX_TIME_MS, MAX_TIME_MS - 1] {
            assert_eq!(g.sub_window(t), t / g.g);
        }
        for _ in 0..200 {
            let t = next() % (MAX_TIME_MS + 1);
            assert_eq!(g.sub_window(t), t / g.g, "t {t} g {}", g.g);
            let k = t / g.g;
            for u in [k * g.g, (k * g.g).saturating_sub(1), k * g.g + g.g - 1] {
                assert_eq!(g.sub_window(u), u / g.g, "t {u} g {}", g.g);
            }
        }
    }
    // After year 9999 the clock stands still.
    let g = slide(1, MIN);
    assert_eq!(g.sub_window(u64::MAX), MAX_TIME_MS / g.g);
}

#[test]
fn a_rotation_publishes_the_words_of_every_counter_it_rewrote_and_no_other() {
    // `proto::Rewritten` against the plain definition: word `k` was rewritten when a counter
    // of some sub-window `from ..= to - 1` has a bit in it (every word past a whole ring).
    for limit in [1u32, 5, 60, 1000, 65_535, 1_000_000] {
        for b in [MIN_B, 17, DEFAULT_B, 100, MAX_B] {
            let geo = Slide::new(limit, HOUR, b).unwrap();
            let (bb, c) = (u64::from(b), u64::from(geo.c));
            for from in [0u64, 1, bb - 1, bb, 5 * bb + 3, 1_000_003] {
                for steps in [0u64, 1, 2, 3, bb / 2, bb - 1, bb, bb + 1, 3 * bb] {
                    let to = from + steps;
                    let r = proto::Rewritten::new(&geo, from, to);
                    for k in 0..geo.ring_words() {
                        let (lo, hi) = (k as u64 * 64, k as u64 * 64 + 63);
                        let plain = steps >= bb
                            || (from..to).any(|m| {
                                let bit = (m % bb) * c;
                                bit <= hi && bit + c > lo
                            });
                        assert_eq!(
                            r.holds(k),
                            plain,
                            "limit {limit} b {b} {from}..{to} word {k}"
                        );
                    }
                }
            }
        }
    }
}

#[test]
fn counts_to_the_limit_and_a_refusal_writes_nothing() {
    let geo = slide(60, MIN);
    let words = cells(&geo);
    let w = win(&words, &geo);
    for i in 0..60 {
        assert!(matches!(add(&w, &geo, T0 + i, 1), Added::Yes { .. }), "{i}");
    }
    let before: Vec<u64> = words.iter().map(|x| x.load(Ordering::Relaxed)).collect();
    // In the head's sub-window, and in a later one (a rotation would be needed), still
    // full: refused, nothing written. An empty ring is judged on the head alone, and the
    // refusal's figures come from that head: those of a copy of the whole window.
    for at in [T0 + 100, T0 + 30_000] {
        let expected = snapshot(&w, &geo).summary(&geo, 1, at);
        let Added::Refused { used: 60, seen } = add(&w, &geo, at, 1) else {
            panic!("refused at 60");
        };
        assert_eq!(seen, Some(expected), "at {at}");
        assert!(expected.retry_ms >= 1);
    }
    let after: Vec<u64> = words.iter().map(|x| x.load(Ordering::Relaxed)).collect();
    assert_eq!(before, after);
}

#[test]
fn a_refusal_judged_on_a_copy_reports_the_copys_figures() {
    let geo = slide(60, MIN);
    let words = cells(&geo);
    let w = win(&words, &geo);
    // One every 900 ms: spread over the ring, all within 53.1 s.
    for i in 0..60 {
        assert!(
            matches!(add(&w, &geo, T0 + i * 900, 1), Added::Yes { .. }),
            "{i}"
        );
    }
    // Two sub-windows after the last: a copy is needed to know what aged out.
    let at = T0 + 55_000;
    let expected = snapshot(&w, &geo).summary(&geo, 1, at);
    let Added::Refused { used: 60, seen } = add(&w, &geo, at, 1) else {
        panic!("refused at 60");
    };
    assert_eq!(seen, Some(expected));
    assert!(expected.retry_ms >= 1);
}

/// The ErzyCall client of issue 15: 60/min and 1000/h, a batch of 60 every 61 s, 17 batches.
/// Every request an exact log admits is admitted (1 000 of 1 020), for many phases of the
/// batches against the sub-window grid.
#[test]
fn erzycall_gets_everything_an_exact_log_admits() {
    let minute = slide(60, MIN);
    let hour = slide(1_000, HOUR);
    for phase in (0..HOUR).step_by(7_919).chain([0, 1, 937, 938, 56_249]) {
        let (mw, hw) = (cells(&minute), cells(&hour));
        let (m, h) = (win(&mw, &minute), win(&hw, &hour));
        let mut log: Vec<u64> = Vec::new();
        let mut admitted = 0;
        for batch in 0..17u64 {
            let t = T0 + phase + batch * 61_000;
            for _ in 0..60 {
                let exact = log.iter().filter(|&&x| x + MIN > t).count() < 60
                    && log.iter().filter(|&&x| x + HOUR > t).count() < 1_000;
                let got = match add(&m, &minute, t, 1) {
                    Added::Yes { m: sub, .. } => match add(&h, &hour, t, 1) {
                        Added::Yes { .. } => true,
                        _ => {
                            assert!(take_back(&m, &minute, sub, 1), "nothing froze");
                            false
                        }
                    },
                    _ => false,
                };
                assert_eq!(got, exact, "phase {phase} batch {batch}");
                if got {
                    log.push(t);
                    admitted += 1;
                }
            }
        }
        assert_eq!(admitted, 1_000, "phase {phase}");
        // The refused 20 left no trace in the minute window: it holds the last batch's 40.
        let t = T0 + phase + 16 * 61_000;
        assert_eq!(snapshot(&m, &minute).used(&minute, t), 40);
    }
}

/// Measured lateness: fill the window at the first millisecond of a sub-window (the worst
/// place), find the first time the full limit is admitted again with `retry_ms`, check it
/// against `add` one millisecond before and at that time, and compare with the exact log's
/// `t + W`. Prints the table of `docs/ACCURACY.md`:
/// `cargo test --lib window::sliding::tests::lateness_table -- --nocapture`.
#[test]
fn lateness_table() {
    println!("| limit | window | B | g (ms) | words | late by at most (ms) | bound ⌈W/B⌉+B |");
    println!("|---|---|---|---|---|---|---|");
    for (limit, name) in [
        (1u32, "1"),
        (60, "60"),
        (1_000, "1 000"),
        (65_535, "65 535"),
        (1_000_000, "1 000 000"),
    ] {
        for (w, wname) in [
            (1_000, "1 s"),
            (MIN, "1 min"),
            (HOUR, "1 h"),
            (DAY, "1 day"),
        ] {
            let geo = slide(limit, w);
            let mut worst = 0;
            for start in [0u64, 1, geo.g / 2, geo.g - 1] {
                let words = cells(&geo);
                let win = win(&words, &geo);
                let t = (T0 / geo.g + 1) * geo.g + start;
                assert!(matches!(add(&win, &geo, t, limit), Added::Yes { .. }));
                let retry = snapshot(&win, &geo).retry_ms(&geo, limit, t);
                let back = t + retry;
                assert!(back >= t + w, "early");
                assert!(matches!(
                    add(&win, &geo, back - 1, limit),
                    Added::Refused { .. }
                ));
                assert!(matches!(add(&win, &geo, back, limit), Added::Yes { .. }));
                worst = worst.max(back - (t + w));
            }
            let bound = w.div_ceil(64) + 64;
            assert_eq!(worst, geo.release_delay_ms(), "{limit} per {w}");
            assert!(worst <= bound);
            println!(
                "| {name} | {wname} | 64 | {} | {} | {worst} | {bound} |",
                geo.g,
                geo.words()
            );
        }
    }
}

#[test]
fn quota_comes_back_one_sub_window_at_a_time() {
    let geo = slide(64, MIN);
    let words = cells(&geo);
    let w = win(&words, &geo);
    let start = (T0 / geo.g + 1) * geo.g;
    // One request in each of 64 consecutive sub-windows.
    for i in 0..64 {
        assert!(matches!(
            add(&w, &geo, start + i * geo.g, 1),
            Added::Yes { .. }
        ));
    }
    let end = start + 63 * geo.g;
    let s = snapshot(&w, &geo);
    assert_eq!(s.used(&geo, end), 64);
    assert_eq!(s.reset_ms(&geo, end), start + (63 + 65) * geo.g);
    // The oldest leaves at start + 65 g; each next one g later.
    for k in 1..=64u64 {
        let at = start + (64 + k) * geo.g;
        assert_eq!(s.used(&geo, at - 1), 64 - (k - 1), "{k}");
        assert_eq!(s.used(&geo, at), 64 - k, "{k}");
        assert_eq!(s.retry_ms(&geo, k as u32, end), at - end);
    }
    assert!(!s.expired(&geo, start + 128 * geo.g - 1));
    assert!(s.expired(&geo, start + 128 * geo.g));
}

#[test]
fn a_clock_behind_the_head_counts_in_the_head() {
    let geo = slide(5, MIN);
    let words = cells(&geo);
    let w = win(&words, &geo);
    assert!(matches!(add(&w, &geo, T0, 3), Added::Yes { .. }));
    for back in [1, MIN, HOUR, DAY, 100 * DAY] {
        let s = snapshot(&w, &geo);
        assert_eq!(s.used(&geo, T0 - back), 3);
        assert!(!s.expired(&geo, T0 - back));
    }
    let Added::Yes { m, .. } = add(&w, &geo, T0 - DAY, 2) else {
        panic!("room for 2");
    };
    assert_eq!(m, geo.sub_window(T0));
    assert!(matches!(
        add(&w, &geo, T0 - HOUR, 1),
        Added::Refused { used: 5, .. }
    ));
}

#[test]
fn take_back_from_the_head_and_from_the_ring() {
    for limit in [10u32, 1_000_000] {
        let geo = slide(limit, 1_000);
        let words = cells(&geo);
        let w = win(&words, &geo);
        let Added::Yes { m: m1, .. } = add(&w, &geo, T0, 4) else {
            panic!()
        };
        let Added::Yes { m: m2, .. } = add(&w, &geo, T0 + 5 * geo.g, 3) else {
            panic!()
        };
        assert_eq!(m2, m1 + 5);
        assert!(take_back(&w, &geo, m2, 2));
        assert!(take_back(&w, &geo, m1, 1));
        let s = snapshot(&w, &geo);
        assert_eq!((s.count(&geo, m1), s.count(&geo, m2)), (3, 1));
        assert_eq!(s.used(&geo, T0 + 5 * geo.g), 4);
        // Never more than is there; nothing for an aged-out or future sub-window.
        assert!(take_back(&w, &geo, m1, 100));
        assert!(take_back(&w, &geo, m2 + 1, 1));
        assert!(take_back(&w, &geo, m1 - 200, 1));
        assert_eq!(snapshot(&w, &geo).used(&geo, T0 + 5 * geo.g), 1);
    }
}

#[test]
fn frozen_windows_take_nothing_and_expire_for_the_compactor() {
    let geo = slide(60, MIN);
    let words = cells(&geo);
    let w = win(&words, &geo);
    assert!(
        freeze_if_expired(&w, &geo, T0),
        "an empty window is expired"
    );
    assert_eq!(add(&w, &geo, T0, 1), Added::Frozen);
    thaw(&w);
    let Added::Yes { m, .. } = add(&w, &geo, T0, 2) else {
        panic!()
    };
    assert!(!freeze_if_expired(&w, &geo, T0 + MIN));
    let reset = snapshot(&w, &geo).reset_ms(&geo, T0);
    assert!(!freeze_if_expired(&w, &geo, reset - 1));
    assert!(
        !freeze_if_expired(&w, &geo, T0 - DAY),
        "the clock went back"
    );
    let copy = freeze(&w, &geo);
    assert!(copy.frozen());
    assert_eq!(copy.used(&geo, T0), 2);
    assert_eq!(add(&w, &geo, T0, 1), Added::Frozen);
    assert!(
        !take_back(&w, &geo, m, 2),
        "a frozen window says so: the caller takes back from the copy"
    );
    assert_eq!(
        snapshot(&w, &geo).used(&geo, T0),
        2,
        "no take-back once frozen"
    );
    thaw(&w);
    assert!(freeze_if_expired(&w, &geo, reset));
}

/// A crash mid-rotation leaves the head locked and the ring half rewritten; recovery makes
/// the window full until every request it stood for has aged out.
#[test]
fn recovery_never_under_counts_a_half_done_rotation() {
    for limit in [60u32, 1_000_000] {
        let geo = slide(limit, 1_000);
        let words = cells(&geo);
        let w = win(&words, &geo);
        let t = (T0 / geo.g) * geo.g;
        for i in 0..10 {
            assert!(matches!(add(&w, &geo, t + i * geo.g, 2), Added::Yes { .. }));
        }
        let n = geo.sub_window(t + 9 * geo.g);
        // Half a rotation to n + 3: lock, clear some ring words, maybe the base.
        let h = words[0].load(Ordering::Relaxed);
        words[0].store(h | LOCK, Ordering::Relaxed);
        let first_ring = usize::from(geo.wide()) + 1;
        words[first_ring].store(0, Ordering::Relaxed);
        if geo.wide() {
            words[1].store(n + 3, Ordering::Relaxed);
        }
        assert!(!Snap::decode(&geo, h | LOCK, 0, [0; MAX_RING_WORDS]).is_consistent(&geo));
        assert_eq!(recover(&w, &geo), Recovered::WasLocked);
        let s = snapshot(&w, &geo);
        assert!(s.is_consistent(&geo));
        assert!(s.n >= n);
        // Full until n + B + 1, when everything counted before the crash is gone anyway.
        for at in [t + 9 * geo.g, (n + u64::from(geo.b)) * geo.g + geo.g - 1] {
            let Added::Refused { used, seen } = add(&w, &geo, at, 1) else {
                panic!("refused at {at}");
            };
            assert_eq!(used, s.used(&geo, at));
            if let Some(seen) = seen {
                assert_eq!(seen, snapshot(&w, &geo).summary(&geo, 1, at));
            }
            assert!(s.used(&geo, at) >= u64::from(limit));
        }
        assert!(matches!(
            add(&w, &geo, (s.n + u64::from(geo.b) + 1) * geo.g, 1),
            Added::Yes { .. }
        ));
        // A clean head is left as it is, apart from the frozen bit.
        let before = snapshot(&w, &geo);
        words[0].fetch_or(FROZEN, Ordering::Relaxed);
        assert_eq!(recover(&w, &geo), Recovered::Clean);
        assert_eq!(snapshot(&w, &geo), before);
    }
}

/// Eight threads on one window with a shared manual clock that moves through many rotations
/// (a 1 s window of 64 sub-windows of 16 ms; each check moves the clock 0-3 ms). Every
/// admitted request is stamped with its effective time (its clock reading, or the start of
/// the sub-window it was counted in if the head was ahead): no interval of one window holds
/// more than the limit, and the final count equals the admissions still in the window.
#[test]
fn eight_threads_never_pass_the_limit() {
    const LIMIT: u32 = 40;
    let geo = slide(LIMIT, 1_000);
    let words = cells(&geo);
    let clock = AtomicU64::new(T0);
    let logs: Vec<Vec<(u64, u64, u32)>> = std::thread::scope(|sc| {
        let hs: Vec<_> = (0..8u64)
            .map(|id| {
                let (words, clock, geo) = (&words, &clock, &geo);
                sc.spawn(move || {
                    let w = win(words, geo);
                    let mut x = 0x2545_F491_4F6C_DD1Du64 ^ (id + 1).wrapping_mul(0x9E37_79B9);
                    let mut log = Vec::new();
                    for _ in 0..20_000 {
                        x ^= x << 13;
                        x ^= x >> 7;
                        x ^= x << 17;
                        let now = clock.fetch_add(x % 4, Ordering::Relaxed);
                        let cost = 1 + (x >> 8) as u32 % 3;
                        if let Added::Yes { m, .. } = add(&w, geo, now, cost) {
                            if (x >> 16).is_multiple_of(16) {
                                assert!(take_back(&w, geo, m, cost), "nothing froze");
                            } else {
                                log.push((now.max(m * geo.g), m, cost));
                            }
                        }
                    }
                    log
                })
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let mut all: Vec<(u64, u64, u32)> = logs.into_iter().flatten().collect();
    all.sort_unstable();
    // About 240 windows of 40 pass by (the clock moves 1.5 ms a check on average).
    assert!(all.len() > 2_000, "admitted {}", all.len());
    let mut lo = 0;
    let mut sum = 0u64;
    for i in 0..all.len() {
        sum += u64::from(all[i].2);
        while all[lo].0 + 1_000 <= all[i].0 {
            sum -= u64::from(all[lo].2);
            lo += 1;
        }
        assert!(
            sum <= u64::from(LIMIT),
            "{sum} in the window ending {}",
            all[i].0
        );
    }
    let end = clock.load(Ordering::Relaxed);
    let s = snapshot(&win(&words, &geo), &geo);
    let ne = s.eff(&geo, end);
    let live: u64 = all
        .iter()
        .filter(|e| e.1 + u64::from(geo.b) >= ne)
        .map(|e| u64::from(e.2))
        .sum();
    assert_eq!(s.used(&geo, end), live);
}

#[test]
fn damaged_words_are_not_consistent() {
    let geo = Slide::new(60, MIN, 17).unwrap(); // 17 × 6 bits: the second ring word has a tail
    let words = cells(&geo);
    let w = win(&words, &geo);
    assert!(matches!(add(&w, &geo, T0, 5), Added::Yes { .. }));
    assert!(matches!(add(&w, &geo, T0 + geo.g, 7), Added::Yes { .. }));
    let good = snapshot(&w, &geo);
    assert!(good.is_consistent(&geo));
    let mut bad = good;
    bad.older += 1;
    assert!(!bad.is_consistent(&geo), "older is not the ring's sum");
    let mut bad = good;
    bad.ring[1] |= 1 << 63;
    assert!(!bad.is_consistent(&geo), "a bit past the last counter");
    let mut bad = good;
    geo.set_slot(&mut bad.ring, 3, 63);
    bad.older += 63;
    assert!(!bad.is_consistent(&geo), "a counter over the limit");
    let bad = Snap::decode(&geo, good.raw | 61, good.base, good.ring);
    assert!(!bad.is_consistent(&geo), "cur over the limit");
}

#[test]
fn a_rotation_of_a_few_sub_windows_keeps_every_count() {
    // Rotations of 1 to 4 sub-windows are done on the counters they change (`rotate_in_place`),
    // including those that wrap past the ring's end: into another word, or (a one-word ring,
    // limit 2 at B = 16) into the word the first counters are in.
    for (limit, b) in [
        (2u32, 16u32),
        (1_000, 16),
        (60, 64),
        (65_535, 64),
        (1_000_000, 16),
    ] {
        let geo = Slide::new(limit, MIN, b).unwrap();
        for start_slot in [0u64, 13, u64::from(b) - 2, u64::from(b) - 1] {
            for step in 1..=5u64 {
                let words = cells(&geo);
                let w = win(&words, &geo);
                let base = (T0 / geo.g / u64::from(b)) * u64::from(b) + start_slot;
                // One in each of two sub-windows `step` apart, then a third later on.
                let t = base * geo.g;
                assert!(matches!(add(&w, &geo, t, 1), Added::Yes { .. }));
                let Added::Yes { m, used, .. } = add(&w, &geo, t + step * geo.g, 1) else {
                    panic!("room for a second");
                };
                assert_eq!(
                    (m, used),
                    (base + step, 2),
                    "limit {limit}, B {b}, step {step}"
                );
                let s = snapshot(&w, &geo);
                assert!(s.is_consistent(&geo), "{s:?}");
                assert_eq!(s.count(&geo, base), 1);
                assert_eq!(s.count(&geo, base + step), 1);
                if limit >= 3 {
                    let later = base + step + 3;
                    let Added::Yes { used, .. } = add(&w, &geo, later * geo.g, 1) else {
                        panic!("room for a third");
                    };
                    assert_eq!(used, 3);
                    assert!(snapshot(&w, &geo).is_consistent(&geo));
                }
            }
        }
    }
}

#[test]
fn the_ring_walk_sums_every_counter() {
    // `ring_sum_max` skips zero bits; it must agree with reading all `B` counters, counters
    // that straddle two words included (every width that does not divide 64).
    let mut x = 0x9E37_79B9_7F4A_7C15u64;
    for (limit, b) in [
        (1u32, 16u32),
        (60, 17),
        (1_000, 64),
        (65_535, 64),
        (1_000_000, 256),
    ] {
        let geo = Slide::new(limit, MIN, b).unwrap();
        for round in 0..200 {
            let mut ring = [0u64; MAX_RING_WORDS];
            for i in 0..b {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                // Mostly zero counters, as in a ring; some at the counter's maximum.
                if x.is_multiple_of(4) || round == 0 {
                    geo.set_slot(&mut ring, i, x >> 3);
                }
            }
            let slots: Vec<u64> = (0..b).map(|i| geo.slot(&ring, i)).collect();
            let want = (slots.iter().sum(), slots.iter().copied().max().unwrap_or(0));
            assert_eq!(geo.ring_sum_max(&ring), want, "limit {limit}, B {b}");
        }
    }
}
