//! Check latency while the compactor is idle and while it is busy expiring and reusing entries.
//!
//! A plain benchmark (no criterion): percentiles need every sample. One thread checks 200k
//! existing keys in a random order and times each check; in the "busy" run a second thread
//! creates short-lived keys and moves the clock so that the compactor (1 ms interval) always
//! has entries to expire. In the "backlog" run there is no second thread: 2M short-lived keys
//! are made before the timed checks and the clock moved past their window, so the compactor
//! spends the run unlinking them, and the two busy threads (checks and compactor) have a core
//! each. Each timing includes one `Instant::now()` pair (about 25 ns here).
//!
//! Run: `cargo bench --bench compactor_latency`. Figures: docs/PERFORMANCE.md.

use std::hint::black_box;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tollgate::{Clock, Limit, Limits, ManualClock, Options, Store};

const T0: u64 = 1_700_000_000_000;
const KEYS: u64 = 200_000;
const SAMPLES: usize = 2_000_000;
const BACKLOG: u64 = 2_000_000;

fn run(busy: bool, compactor: bool, backlog: bool, spin: bool) -> (Vec<u64>, tollgate::Stats) {
    let clock = ManualClock::new(T0);
    let store = Store::open_in_memory(
        Options::default()
            .clock(clock.clone())
            .compactor(compactor)
            .compactor_interval(Duration::from_millis(1)),
    )
    .unwrap();
    // Steady keys live a day: the clock moves by minutes, they never expire.
    let steady = Limits::new(&[Limit::per_day(65_000)]).unwrap();
    let short = Limits::new(&[Limit::per_minute(10)]).unwrap();
    let keys: Vec<[u8; 24]> = (0..KEYS)
        .map(|i| {
            let mut k = [b'k'; 24];
            k[..8].copy_from_slice(&i.wrapping_mul(0x9E37_79B9_7F4A_7C15).to_le_bytes());
            k
        })
        .collect();
    for k in &keys {
        store.check(k, &steady, 1).unwrap();
    }
    if backlog {
        for i in 0..BACKLOG {
            store
                .check(&(u64::MAX - i).to_le_bytes(), &short, 1)
                .unwrap();
        }
        clock.advance_ms(120_000);
    }
    let stop = Arc::new(AtomicBool::new(false));
    // A thread that only computes: the control for "two busy threads on two cores".
    let spinner = spin.then(|| {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut x = 1u64;
            while !stop.load(Ordering::Relaxed) {
                for _ in 0..10_000 {
                    x = black_box(x.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1));
                }
            }
        })
    });
    let churn = busy.then(|| {
        let (store, clock, stop, short) =
            (store.clone(), clock.clone(), stop.clone(), short.clone());
        std::thread::spawn(move || {
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                for _ in 0..5_000 {
                    i += 1;
                    store.check(&i.to_le_bytes(), &short, 1).unwrap();
                }
                clock.advance_ms(20_000);
            }
        })
    });
    let mut lat = Vec::with_capacity(SAMPLES);
    let mut x = 0x2545_F491_4F6C_DD1Du64;
    for _ in 0..SAMPLES {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let k = &keys[(x % KEYS) as usize];
        let now = clock.now_ms();
        let t = Instant::now();
        black_box(store.check_at(k, &steady, 1, now).unwrap());
        lat.push(t.elapsed().as_nanos() as u64);
    }
    stop.store(true, Ordering::Relaxed);
    for h in [churn, spinner].into_iter().flatten() {
        h.join().unwrap();
    }
    lat.sort_unstable();
    (lat, store.stats())
}

fn pct(v: &[u64], p: f64) -> u64 {
    v[((v.len() as f64 * p) as usize).min(v.len() - 1)]
}

fn main() {
    // `cargo test --benches` runs bench targets with `--test`: keep that quick.
    if std::env::args().any(|a| a == "--test") {
        return;
    }
    // The third run has the churn thread but no compactor: it tells the compactor's share of
    // the busy run's tail from the cost of three busy threads on two cores. The fourth has
    // the compactor busy on a backlog and no third thread; the fifth is its control: a second
    // thread that only computes, and no compactor.
    for (busy, compactor, backlog, spin, label) in [
        (false, true, false, false, "compactor idle"),
        (true, true, false, false, "compactor busy"),
        (true, false, false, false, "churn, no compactor"),
        (false, true, true, false, "backlog, compactor"),
        (false, false, false, true, "spinner, no compactor"),
    ] {
        let (lat, stats) = run(busy, compactor, backlog, spin);
        println!(
            "{label:<21}: check p50 {} ns, p99 {} ns, p99.9 {} ns, max {} ns, over 100 us: {}, over 1 ms: {} ({} samples; expired during run: {}, passes: {}, last pass {} us, entries left {})",
            pct(&lat, 0.50),
            pct(&lat, 0.99),
            pct(&lat, 0.999),
            lat.last().copied().unwrap_or(0),
            lat.iter().filter(|&&ns| ns > 100_000).count(),
            lat.iter().filter(|&&ns| ns > 1_000_000).count(),
            lat.len(),
            stats.expired_windows,
            stats.passes,
            stats.last_pass_micros,
            stats.entries,
        );
    }
}
