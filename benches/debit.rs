//! Reserve + settle beside a check, same run: what charging the real cost after the response
//! costs on top of checking before it (`tollgate::debit`).
//!
//! One hot key with two metered windows (per minute and per day); time advances 1 ms per
//! operation, so the windows rotate as a busy key's do and never fill. Rows:
//!
//! * `check` — a check of cost 1;
//! * `reserve_settle_refund` — reserve 100, settle 40 (60 go back to the same sub-window);
//! * `reserve_settle_overdraft` — reserve 10, settle 20 (10 more counted past the estimate).
//!
//! A reserve writes a guard record and a settle claims it; the stores run without the
//! compactor (time is driven explicitly), fresh per sample, in memory.
//!
//! Run: `cargo bench --bench debit`. Figures: docs/PERFORMANCE.md.

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use tollgate::{Limit, Limits, Options, Store};

const T0: u64 = 1_700_000_000_000;
const KEY: &[u8] = b"sk_live_0123456789abcdef01234567";
const TTL: Duration = Duration::from_secs(900);

fn limits() -> Limits {
    Limits::new(&[
        Limit::per_minute(4_000_000).metered(),
        Limit::per_day(4_194_303).metered(),
    ])
    .expect("valid limits")
}

fn fresh() -> Store {
    Store::open_in_memory(Options::default().compactor(false)).expect("store")
}

fn bench(c: &mut Criterion) {
    let l = limits();
    let mut g = c.benchmark_group("debit");
    g.throughput(Throughput::Elements(1));

    g.bench_function("check", |b| {
        b.iter_custom(|iters| {
            let store = fresh();
            let start = Instant::now();
            for i in 0..iters {
                black_box(store.check_at(KEY, &l, 1, T0 + i).expect("check"));
            }
            start.elapsed()
        })
    });

    for (name, estimate, actual) in [
        ("reserve_settle_refund", 100u32, 40u32),
        ("reserve_settle_overdraft", 10, 20),
    ] {
        g.bench_function(name, |b| {
            b.iter_custom(|iters| {
                let store = fresh();
                let start = Instant::now();
                for i in 0..iters {
                    let now = T0 + i;
                    let r = store
                        .reserve_at(KEY, &l, estimate, TTL, now)
                        .expect("reserve");
                    let r = r.reservation().expect("admitted");
                    black_box(store.settle_at(KEY, &l, r, actual, now).expect("settle"));
                }
                start.elapsed()
            })
        });
    }
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
    targets = bench
}
criterion_main!(benches);
