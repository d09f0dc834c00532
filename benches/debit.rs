//! Reserve + settle beside a check, same run: what charging the real cost after the response
//! costs on top of checking before it (`tollgate::debit`).
//!
//! One hot key with two metered windows; time advances 1 ms per operation, so the windows
//! rotate as a busy key's do. Two window sets: an LLM's tokens, 1 000 per minute and 30 000 per
//! day (both in the packed layout: one word holds the sub-window number), and large limits
//! that a run never fills, 4 000 000 per second and 4 194 303 per minute (the wide layout: a
//! take-back from the head's sub-window goes under the lock). Rows; time advances 1 ms per
//! operation, so the windows rotate as a busy key's do and never fill. Rows:
//!
//! * `check/tokens`, `check/large` — a check of cost 1 (on `tokens`, keys change every 500
//!   checks so that the minute never fills);
//! * `reserve_settle_refund/tokens` — reserve 10, settle 0 (all 10 go back to the same
//!   sub-window, so the window never fills);
//! * `reserve_settle_refund/large` — reserve 10, settle 4;
//! * `reserve_settle_overdraft/large` — reserve 2, settle 3 (1 more counted past the
//!   estimate).
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
const KEY: &[u8; 32] = b"sk_live_0123456789abcdef01234567";
const TTL: Duration = Duration::from_secs(900);

fn tokens() -> Limits {
    Limits::new(&[
        Limit::per_minute(1_000).metered(),
        Limit::per_day(30_000).metered(),
    ])
    .expect("valid limits")
}

fn large() -> Limits {
    Limits::new(&[
        Limit::per_second(4_000_000).metered(),
        Limit::per_minute(4_194_303).metered(),
    ])
    .expect("valid limits")
}

/// The key of check `i`: one for every 500 checks on `tokens` (less than a minute's limit).
fn key(buf: &mut [u8; 32], i: u64) -> &[u8] {
    buf[24..].copy_from_slice(&(i / 500).to_le_bytes());
    &buf[..]
}

fn fresh() -> Store {
    Store::open_in_memory(Options::default().compactor(false)).expect("store")
}

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("debit");
    g.throughput(Throughput::Elements(1));

    for (name, l) in [("check/tokens", tokens()), ("check/large", large())] {
        g.bench_function(name, |b| {
            b.iter_custom(|iters| {
                let store = fresh();
                let mut buf = *KEY;
                let start = Instant::now();
                for i in 0..iters {
                    let k = key(&mut buf, i);
                    black_box(store.check_at(k, &l, 1, T0 + i).expect("check"));
                }
                start.elapsed()
            })
        });
    }

    for (name, l, estimate, actual) in [
        ("reserve_settle_refund/tokens", tokens(), 10u32, 0u32),
        ("reserve_settle_refund/large", large(), 10, 4),
        ("reserve_settle_overdraft/large", large(), 2, 3),
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
