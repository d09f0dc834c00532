//! Check latency and throughput, tollgate beside governor's keyed limiter in the same run.
//!
//! Workloads (32-byte keys, one thread unless named):
//! * `admit/*`: a quota so large that nearly every check is admitted (tollgate: 60000/min AND
//!   65535/h, time advanced 200 ms per check per key; governor: one window of 1e9/s);
//! * `at_limit/*`: 60 per minute on the real clock, so nearly every check is a rejection
//!   (tollgate: 60/min AND 1000/h; governor: 60/min);
//! * `*/hot`, `*/100k`, `*/1M`: one key, or keys drawn in a random order from 100k or 1M;
//! * `two_threads/*`: two threads on disjoint halves of the keys, and the same loop on one
//!   thread over all of them, so that their throughputs compare (criterion's throughput line
//!   is per check in both);
//! * `new_key`: the first check of a key never seen;
//! * `peek`: a read-only peek on an existing key;
//! * `clock/*`: the cost of reading each clock.
//!
//! The stores run without the background compactor: the benches drive time explicitly
//! (`check_at`), which the compactor, on the real clock, would see as long expired.
//!
//! Run: `cargo bench --bench check`. Figures and the machine they came from: docs/PERFORMANCE.md.

use std::hint::black_box;
use std::num::NonZeroU32;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use tollgate::{Limit, Limits, Options, Store};

const T0: u64 = 1_700_000_000_000;

fn keys(n: usize) -> Vec<String> {
    // 32 ASCII bytes, like an API token.
    (0..n as u64)
        .map(|i| format!("tok_{:028x}", i.wrapping_mul(0x9E37_79B9_7F4A_7C15)))
        .collect()
}

/// A random visiting order over `n` keys (xorshift, fixed seed).
fn order(n: usize) -> Vec<u32> {
    let mut x = 0x2545_F491_4F6C_DD1Du64;
    (0..1 << 20)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x % n as u64) as u32
        })
        .collect()
}

fn admit_limits() -> Limits {
    Limits::new(&[Limit::per_minute(60_000), Limit::per_hour(65_535)]).unwrap()
}

fn at_limit_limits() -> Limits {
    Limits::new(&[Limit::per_minute(60), Limit::per_hour(1000)]).unwrap()
}

fn governor_admit() -> DefaultKeyedRateLimiter<String> {
    RateLimiter::keyed(Quota::per_second(NonZeroU32::new(1_000_000_000).unwrap()))
}

fn governor_at_limit() -> DefaultKeyedRateLimiter<String> {
    RateLimiter::keyed(Quota::per_minute(NonZeroU32::new(60).unwrap()))
}

fn rss_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| {
            s.split_whitespace()
                .nth(1)
                .and_then(|p| p.parse::<u64>().ok())
        })
        .map_or(0, |pages| pages * 4096)
}

struct Fixture {
    keys: Vec<String>,
    order: Vec<u32>,
    store: Store,
    gov_admit: DefaultKeyedRateLimiter<String>,
    gov_limit: DefaultKeyedRateLimiter<String>,
}

fn fixture(n: usize) -> Fixture {
    let keys = keys(n);
    let order = order(n);
    let rss0 = rss_bytes();
    let store = Store::open_in_memory(Options::default().compactor(false)).unwrap();
    let admit = admit_limits();
    let limit = at_limit_limits();
    for k in &keys {
        store.check_at(k.as_bytes(), &admit, 1, T0).unwrap();
    }
    let rss1 = rss_bytes();
    let stats = store.stats();
    let gov_admit = governor_admit();
    for k in &keys {
        let _ = gov_admit.check_key(k);
    }
    let rss2 = rss_bytes();
    let gov_limit = governor_at_limit();
    for k in &keys {
        let _ = gov_limit.check_key(k);
    }
    // The at-limit tollgate keys live in the same store under another prefix-free key set.
    for k in &keys {
        let mut kb = k.clone().into_bytes();
        kb[0] = b'L';
        store.check(&kb, &limit, 1).unwrap();
    }
    if n >= 100_000 {
        eprintln!(
            "footprint n={n}: tollgate {:.1} B/key in segments (2 windows, 32-byte keys), RSS +{:.1} B/key; governor RSS +{:.1} B/key",
            (stats.segments * (1 << 22)) as f64 / n as f64,
            (rss1 - rss0) as f64 / n as f64,
            (rss2 - rss1) as f64 / n as f64,
        );
    }
    Fixture {
        keys,
        order,
        store,
        gov_admit,
        gov_limit,
    }
}

fn bench_existing(c: &mut Criterion) {
    for (label, n) in [("hot", 1usize), ("100k", 100_000), ("1M", 1_000_000)] {
        let f = fixture(n);
        let admit = admit_limits();
        let limit = at_limit_limits();
        let limit_keys: Vec<Vec<u8>> = f
            .keys
            .iter()
            .map(|k| {
                let mut kb = k.clone().into_bytes();
                kb[0] = b'L';
                kb
            })
            .collect();
        let mask = f.order.len() - 1;

        let mut g = c.benchmark_group("admit");
        g.throughput(Throughput::Elements(1));
        let mut i = 0usize;
        let mut t = T0;
        g.bench_function(BenchmarkId::new("tollgate", label), |b| {
            b.iter(|| {
                i += 1;
                let k = &f.keys[f.order[i & mask] as usize];
                // 200 ms per check and key on average: the quota is never reached, even counting
                // the hour window's 2-hour span (65535 needs 16-bit counters, so K = 2).
                t += 200 / n as u64 + u64::from(i.is_multiple_of(n));
                black_box(
                    f.store
                        .check_at(k.as_bytes(), &admit, 1, t)
                        .unwrap()
                        .allowed(),
                )
            })
        });
        g.bench_function(BenchmarkId::new("governor", label), |b| {
            b.iter(|| {
                i += 1;
                let k = &f.keys[f.order[i & mask] as usize];
                black_box(f.gov_admit.check_key(k).is_ok())
            })
        });
        g.finish();

        let mut g = c.benchmark_group("at_limit");
        g.throughput(Throughput::Elements(1));
        g.bench_function(BenchmarkId::new("tollgate", label), |b| {
            b.iter(|| {
                i += 1;
                let k = &limit_keys[f.order[i & mask] as usize];
                black_box(f.store.check(k, &limit, 1).unwrap().allowed())
            })
        });
        g.bench_function(BenchmarkId::new("governor", label), |b| {
            b.iter(|| {
                i += 1;
                let k = &f.keys[f.order[i & mask] as usize];
                black_box(f.gov_limit.check_key(k).is_ok())
            })
        });
        g.finish();

        if n > 1 {
            two_threads(c, label, &f);
        }
        if n == 100_000 {
            let mut g = c.benchmark_group("peek");
            g.bench_function("tollgate/100k", |b| {
                b.iter(|| {
                    i += 1;
                    let k = &f.keys[f.order[i & mask] as usize];
                    black_box(
                        f.store
                            .peek_at(k.as_bytes(), &admit, t)
                            .unwrap()
                            .remaining(),
                    )
                })
            });
            g.finish();
        }
    }
}

/// `threads` threads (1 or 2), each on its share of the keys (even and odd when two), each
/// making `iters` checks; one spawn per sample either way, so that the two rows differ only
/// in the number of threads. With `store`, tollgate checks; without, governor.
fn run_threads(
    threads: u64,
    iters: u64,
    keys: &[String],
    order: &[u32],
    store: Option<&Store>,
    gov: &DefaultKeyedRateLimiter<String>,
) -> Duration {
    let start = Instant::now();
    std::thread::scope(|s| {
        for share in 0..threads {
            s.spawn(move || {
                let admit = admit_limits();
                let mask = order.len() - 1;
                let n = keys.len() as u64;
                // Each key is visited every n checks in all, as in the one-thread rows: a thread
                // moves its time on by `threads` steps of the one-thread rows per check.
                let mut t = T0 + 10_000_000 * (share + 1);
                for i in 0..iters as usize {
                    let raw = u64::from(order[i & mask]);
                    let idx = if threads == 1 {
                        raw % n
                    } else {
                        (raw & !1 | share) % n
                    };
                    let k = &keys[idx as usize];
                    match store {
                        Some(store) => {
                            t += threads * 200 / n + u64::from((i as u64).is_multiple_of(n));
                            black_box(store.check_at(k.as_bytes(), &admit, 1, t).unwrap());
                        }
                        None => {
                            black_box(gov.check_key(k).is_ok());
                        }
                    }
                }
            });
        }
    });
    start.elapsed()
}

/// Two threads, each on its own half of the keys (time per two checks, one per thread), beside
/// the same loop on one thread (time per check), for the scaling ratio.
fn two_threads(c: &mut Criterion, label: &str, f: &Fixture) {
    let mut g = c.benchmark_group("two_threads");
    let (keys, order, store, gov) = (&f.keys[..], &f.order[..], &f.store, &f.gov_admit);
    for (threads, name) in [(1u64, "one thread"), (2, "two threads")] {
        g.throughput(Throughput::Elements(threads));
        g.bench_function(BenchmarkId::new(format!("tollgate, {name}"), label), |b| {
            b.iter_custom(|iters| run_threads(threads, iters, keys, order, Some(store), gov))
        });
        g.bench_function(BenchmarkId::new(format!("governor, {name}"), label), |b| {
            b.iter_custom(|iters| run_threads(threads, iters, keys, order, None, gov))
        });
    }
    g.finish();
}

fn bench_new_key(c: &mut Criterion) {
    let mut g = c.benchmark_group("new_key");
    g.throughput(Throughput::Elements(1));
    let admit = admit_limits();
    g.bench_function("tollgate", |b| {
        b.iter_custom(|iters| {
            let store = Store::open_in_memory(Options::default().compactor(false)).unwrap();
            let keys = keys(iters as usize);
            let start = Instant::now();
            for k in &keys {
                black_box(store.check_at(k.as_bytes(), &admit, 1, T0).unwrap());
            }
            start.elapsed()
        })
    });
    g.bench_function("governor", |b| {
        b.iter_custom(|iters| {
            let gov = governor_admit();
            let keys = keys(iters as usize);
            let start = Instant::now();
            for k in &keys {
                black_box(gov.check_key(k).is_ok());
            }
            start.elapsed()
        })
    });
    g.finish();
}

fn bench_clock(c: &mut Criterion) {
    let mut g = c.benchmark_group("clock");
    g.bench_function("tollgate_coarse", |b| {
        let store = Store::open_in_memory(Options::default().compactor(false)).unwrap();
        b.iter(|| black_box(store.now_ms()))
    });
    g.bench_function("instant_now", |b| b.iter(|| black_box(Instant::now())));
    g.finish();
}

fn config() -> Criterion {
    Criterion::default()
        .warm_up_time(Duration::from_millis(700))
        .measurement_time(Duration::from_secs(2))
        .sample_size(30)
}

criterion_group! {
    name = benches;
    config = config();
    targets = bench_clock, bench_existing, bench_new_key
}
criterion_main!(benches);
