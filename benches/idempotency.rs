//! Idempotency: begin on a new key, replay of a 1 KiB response, begin + complete with 1 KiB.
//!
//! The stores run without the background compactor: the benches drive time explicitly
//! (`check_at`), which the compactor, on the real clock, would see as long expired.
//!
//! Run: `cargo bench --bench idempotency`. Figures: docs/PERFORMANCE.md.

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use tollgate::{Begin, Fingerprint, IdempotencyKey, Options, Store, StoredResponse};

const T0: u64 = 1_700_000_000_000;

fn keys(n: usize, salt: u64) -> Vec<IdempotencyKey> {
    (0..n as u64)
        .map(|i| {
            let x = (u128::from(i) << 64 | u128::from(salt))
                .wrapping_mul(0x9E37_79B9_7F4A_7C15_F39C_C060_5CED_C835);
            IdempotencyKey::from_uuid(uuid::Builder::from_random_bytes(x.to_le_bytes()).into_uuid())
                .unwrap()
        })
        .collect()
}

fn response_1k() -> StoredResponse {
    StoredResponse::new(201, vec![b'{'; 1024 - 64])
        .with_header("content-type", "application/json")
        .with_header("location", "/api/sms/8c1f5e2a")
}

fn bench(c: &mut Criterion) {
    let fp = Fingerprint::of("POST", "/api/sms", br#"{"to":"+15550100","text":"hello"}"#);
    let resp = response_1k();
    let mut g = c.benchmark_group("idempotency");
    g.throughput(Throughput::Elements(1));

    g.bench_function("begin_new_key", |b| {
        b.iter_custom(|iters| {
            let store = Store::open_in_memory(Options::default().compactor(false)).unwrap();
            let ks = keys(iters as usize, 1);
            let start = Instant::now();
            for k in &ks {
                black_box(store.begin_at(b"tok_0123456789abcdef", k, &fp, T0).unwrap());
            }
            start.elapsed()
        })
    });

    g.bench_function("begin_complete_1KiB", |b| {
        b.iter_custom(|iters| {
            let store = Store::open_in_memory(Options::default().compactor(false)).unwrap();
            let ks = keys(iters as usize, 2);
            let start = Instant::now();
            for k in &ks {
                if let Begin::Started(l) =
                    store.begin_at(b"tok_0123456789abcdef", k, &fp, T0).unwrap()
                {
                    store.complete_at(&l, &resp, T0).unwrap();
                }
            }
            start.elapsed()
        })
    });

    // Replay: completed keys looked up in a scattered order; 64 keys stay in cache, 10k keys
    // (11 MB of responses) mostly do not.
    for (label, n) in [
        ("replay_1KiB/64_keys", 64usize),
        ("replay_1KiB/10k_keys", 10_000),
    ] {
        let store = Store::open_in_memory(Options::default().compactor(false)).unwrap();
        let ks = keys(n, 3);
        for k in &ks {
            if let Begin::Started(l) = store.begin_at(b"tok_0123456789abcdef", k, &fp, T0).unwrap()
            {
                store.complete_at(&l, &resp, T0).unwrap();
            }
        }
        let mut i = 0usize;
        g.bench_function(label, |b| {
            b.iter(|| {
                i = (i + 7919) % ks.len();
                match store
                    .begin_at(b"tok_0123456789abcdef", &ks[i], &fp, T0 + 1)
                    .unwrap()
                {
                    Begin::Replay(r) => black_box(r.body().len()),
                    _ => unreachable!("completed above"),
                }
            })
        });
    }
    g.bench_function("fingerprint_1KiB_body", |b| {
        let body = vec![b'x'; 1024];
        b.iter(|| black_box(Fingerprint::of("POST", "/api/sms", &body)))
    });
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
    targets = bench
}
criterion_main!(benches);
