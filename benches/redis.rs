//! The fleet modes beside the embedded store and beside a typical hand-written sliding-window
//! Lua script (a sorted set of timestamps per key, the `tollgate bench` peer), on one
//! redis-server on loopback.
//!
//! A plain benchmark (no criterion): percentiles need every sample. For each engine, one thread
//! checks in a loop (sequential latency, every check timed) and then 50 threads (50 connections
//! for the Redis engines) check for the same time (throughput). Keys: 10 000 tokens picked at
//! random, one window of 100 per minute.
//!
//! Run: `.ci/redis-server.sh start && cargo bench --features redis --bench redis`
//! (`TOLLGATE_REDIS_URL`, default `redis://127.0.0.1:6379`; `TOLLGATE_BENCH_SECS`, default 3).
//! Figures: docs/PERFORMANCE.md.

#[allow(dead_code)]
#[path = "../src/bin/tollgate/peers.rs"]
mod peers;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tollgate::fleet::{HybridOptions, HybridStore, RedisOptions, RedisStore};
use tollgate::{Backend, Limit, Limits, Options, Store};

const TOKENS: u64 = 10_000;
const THREADS: usize = 50;

fn key(i: u64) -> [u8; 16] {
    let mut k = *b"tok_000000000000";
    let x = i.wrapping_mul(0x9E37_79B9_7F4A_7C15) % 1_000_000_000_000;
    k[4..].copy_from_slice(format!("{x:012}").as_bytes());
    k
}

/// Something that checks one key: a tollgate backend or the Lua peer.
trait Checker: Send {
    fn check(&mut self, k: &[u8]) -> bool;
}

struct Tg(Arc<dyn Backend>, Limits);

impl Checker for Tg {
    fn check(&mut self, k: &[u8]) -> bool {
        self.0
            .check(k, &self.1, 1)
            .map(|d| d.allowed())
            .unwrap_or(false)
    }
}

struct Lua {
    r: redis::Connection,
    script: redis::Script,
    n: u64,
}

impl Checker for Lua {
    fn check(&mut self, k: &[u8]) -> bool {
        self.n += 1;
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        let mut kb = b"bench-sw:".to_vec();
        kb.extend_from_slice(k);
        let member = format!("{now}-{}", self.n);
        matches!(
            self.script
                .key(kb)
                .arg(now)
                .arg(60000)
                .arg(100)
                .arg(member)
                .invoke::<i64>(&mut self.r),
            Ok(1)
        )
    }
}

struct Row {
    engine: String,
    seq_p50: u64,
    seq_p99: u64,
    seq_rate: f64,
    par_rate: f64,
}

fn pct(v: &mut [u64], p: f64) -> u64 {
    v.sort_unstable();
    v.get(((v.len() as f64 * p) as usize).min(v.len().saturating_sub(1)))
        .copied()
        .unwrap_or(0)
}

fn xorshift(x: &mut u64) -> u64 {
    *x ^= *x << 13;
    *x ^= *x >> 7;
    *x ^= *x << 17;
    *x
}

fn measure(engine: &str, secs: f64, make: &(dyn Fn() -> Box<dyn Checker> + Sync)) -> Row {
    // Sequential: one thread, every check timed.
    let mut c = make();
    let mut lat = Vec::new();
    let mut seed = 0x1234_5678_9abc_def1u64;
    let end = Instant::now() + Duration::from_secs_f64(secs);
    let start = Instant::now();
    while Instant::now() < end {
        let k = key(xorshift(&mut seed) % TOKENS);
        let t = Instant::now();
        std::hint::black_box(c.check(&k));
        lat.push(t.elapsed().as_nanos() as u64);
    }
    let seq_rate = lat.len() as f64 / start.elapsed().as_secs_f64();
    drop(c);
    // Parallel: 50 threads, each with its own checker (its own connection).
    let ops = AtomicU64::new(0);
    let t0 = Instant::now();
    std::thread::scope(|s| {
        for t in 0..THREADS {
            let ops = &ops;
            s.spawn(move || {
                let mut c = make();
                let mut seed = 0x9E37_79B9_7F4A_7C15u64 ^ (t as u64 + 1);
                let end = Instant::now() + Duration::from_secs_f64(secs);
                let mut n = 0;
                while Instant::now() < end {
                    let k = key(xorshift(&mut seed) % TOKENS);
                    std::hint::black_box(c.check(&k));
                    n += 1;
                }
                ops.fetch_add(n, Ordering::Relaxed);
            });
        }
    });
    let par_rate = ops.load(Ordering::Relaxed) as f64 / t0.elapsed().as_secs_f64();
    let row = Row {
        engine: engine.into(),
        seq_p50: pct(&mut lat, 0.5),
        seq_p99: pct(&mut lat, 0.99),
        seq_rate,
        par_rate,
    };
    println!(
        "{engine}: sequential {:.0}/s p50 {} ns p99 {} ns; {THREADS} threads {:.0}/s",
        row.seq_rate, row.seq_p50, row.seq_p99, row.par_rate
    );
    row
}

fn fmt_ns(ns: u64) -> String {
    if ns >= 1_000_000 {
        format!("{:.2} ms", ns as f64 / 1e6)
    } else if ns >= 1_000 {
        format!("{:.1} µs", ns as f64 / 1e3)
    } else {
        format!("{ns} ns")
    }
}

fn main() {
    let url =
        std::env::var("TOLLGATE_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
    let secs: f64 = std::env::var("TOLLGATE_BENCH_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(3.0);
    let limits = Limits::new(&[Limit::per_minute(100)]).unwrap();
    let run = format!("bench-{}", std::process::id());
    let opts = || {
        RedisOptions::default()
            .prefix(run.clone())
            .max_idle_connections(THREADS + 4)
    };
    if let Err(e) = RedisStore::open(&url, opts()).and_then(|s| s.ping()) {
        eprintln!("no Redis server at {url} ({e}): start one with `.ci/redis-server.sh start`");
        return;
    }
    let mut rows = Vec::new();

    let embedded: Arc<dyn Backend> = Arc::new(Store::open_in_memory(Options::default()).unwrap());
    rows.push(measure("embedded Store", secs, &|| {
        Box::new(Tg(embedded.clone(), limits.clone()))
    }));

    // One RedisStore per connection-holder: the pool opens one connection per thread.
    let shared: Arc<dyn Backend> = Arc::new(RedisStore::open(&url, opts()).unwrap());
    rows.push(measure("shared (RedisStore)", secs, &|| {
        Box::new(Tg(shared.clone(), limits.clone()))
    }));

    let hybrid: Arc<dyn Backend> = Arc::new(
        HybridStore::new(
            Store::open_in_memory(Options::default()).unwrap(),
            RedisStore::open(&url, opts().prefix(format!("{run}-h"))).unwrap(),
            HybridOptions::default()
                .batch(64)
                .flush_interval(Duration::from_millis(50)),
        )
        .unwrap(),
    );
    rows.push(measure("hybrid (HybridStore, 50 ms flush)", secs, &|| {
        Box::new(Tg(hybrid.clone(), limits.clone()))
    }));

    let addr = url
        .trim_start_matches("redis://")
        .trim_end_matches('/')
        .to_string();
    let script = redis::Script::new(peers::SLIDING_WINDOW_LUA);
    script
        .prepare_invoke()
        .load(&mut peers::connect(&addr).unwrap())
        .unwrap();
    rows.push(measure(
        "hand-written sliding-window Lua (sorted set)",
        secs,
        &|| {
            Box::new(Lua {
                r: peers::connect(&addr).unwrap(),
                script: script.clone(),
                n: 0,
            })
        },
    ));

    println!("\n| engine | sequential checks/s | p50 | p99 | {THREADS} threads: checks/s |");
    println!("|---|---:|---:|---:|---:|");
    for r in &rows {
        println!(
            "| {} | {:.0} | {} | {} | {:.0} |",
            r.engine,
            r.seq_rate,
            fmt_ns(r.seq_p50),
            fmt_ns(r.seq_p99),
            r.par_rate
        );
    }
}
