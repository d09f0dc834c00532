//! `tollgate bench`: a db_bench-style load generator on the seed policies.
//!
//! Tokens are drawn from a Zipf distribution (a few hot tokens, a long tail), routes by weight
//! from the policy's endpoint groups; a share of the POST requests carry an Idempotency-Key,
//! some of them retries of a recent key (which replay). Each thread samples the latency of one
//! operation in eight. The same token and route sequence then runs on governor's keyed limiter
//! and, when a server answers, on Redis, so the figures are side by side from one run.
//!
//! Fair to every engine: the requests are drawn before any engine runs (each thread walks its
//! own stretch of one sequence), each request's key is written into a reused buffer without
//! the formatting machinery, and governor gets it in a reused `String`: no engine's figure
//! carries a Zipf draw, a format or an allocation per check. tollgate's figure includes its
//! idempotency work (begin and complete on a share of the POSTs); the peers check only.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tollgate::{Begin, Fingerprint, IdempotencyKey, Options, Store, StoredResponse};

use crate::progress;
use crate::Res;
use workload::{key_into, policy, KeyDraw, Rng, Workload};

#[cfg(feature = "redis")]
mod on_redis;
#[cfg(feature = "bench")]
mod toy;
#[cfg(feature = "bench")]
mod toy_records;
mod workload;

/// Options of `tollgate bench`.
#[derive(Debug, Clone, clap::Args)]
#[command(
    after_help = "Peers: governor's keyed limiter is measured in the same run when the \
command is built with the cargo feature `bench`, Redis (through the `redis` crate) with the \
feature `redis` and a server answering at --redis.\n\n\
Example:\n  tollgate bench --policy erzycall --threads 2 --seconds 5"
)]
pub struct Config {
    /// The seed policy to drive: zorio or erzycall.
    #[arg(long, default_value = "zorio", value_parser = ["zorio", "erzycall"])]
    policy: String,
    /// Distinct tokens (drawn from a Zipf distribution).
    #[arg(long, default_value_t = 100_000, value_name = "N")]
    tokens: usize,
    /// Threads making requests.
    #[arg(long, default_value_t = 2, value_name = "N")]
    threads: usize,
    /// How long each engine runs (in each round).
    #[arg(long, default_value_t = 10.0, value_name = "S")]
    seconds: f64,
    /// Rounds of every engine, in turns, the order alternating (tollgate first, then the peers
    /// first): a machine's speed drifts between phases, so the ratios of several rounds, and
    /// their median, say more than one.
    #[arg(long, default_value_t = 1, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=100))]
    rounds: u32,
    /// The Zipf exponent of the token distribution.
    #[arg(long, default_value_t = 1.1, value_name = "S")]
    zipf: f64,
    /// Share of POST requests that carry an Idempotency-Key.
    #[arg(long, default_value_t = 0.3, value_name = "P")]
    idempotent: f64,
    /// Share of keyed requests that retry a recent key (and replay).
    #[arg(long, default_value_t = 0.1, value_name = "P")]
    retries: f64,
    /// Directory of the store file (bench.tg, made afresh).
    #[arg(long, default_value = "tollgate-data", value_name = "DIR")]
    data: String,
    /// Measure tollgate alone.
    #[arg(long = "no-peers", action = clap::ArgAction::SetFalse)]
    peers: bool,
    /// Also run the floor toy (feature `bench`): a check that finds a key's counter from its
    /// hash with one miss and counts one fixed window, on the same requests as the peers.
    #[arg(long)]
    toy: bool,
    /// Open tollgate's store with home slots (`Options::home_slots`): a key not in cache is
    /// found from its hash with one miss instead of two, for more bytes per key.
    #[arg(long = "home-slots")]
    home_slots: bool,
    /// Open tollgate's store with a spare segment grown ahead of need
    /// (`Options::grow_ahead`): the file's growth on the compactor's thread, not a request's.
    #[arg(long = "grow-ahead")]
    grow_ahead: bool,
    /// Open tollgate's store without huge pages for its file (`Options::huge_pages(false)`):
    /// fewer TLB misses are traded for the kernel's cost of new 2 MiB pages as the file grows,
    /// which depends on the host (docs/PERFORMANCE.md).
    #[arg(long = "no-huge-pages", action = clap::ArgAction::SetFalse)]
    huge_pages: bool,
    /// The Redis server of the Redis peer.
    #[arg(
        long,
        env = "TOLLGATE_REDIS",
        default_value = "127.0.0.1:6379",
        value_name = "HOST:PORT"
    )]
    redis: String,
    /// Connections of the Redis peer's many-connection run.
    #[arg(long = "redis-conns", default_value_t = 50, value_name = "N")]
    redis_conns: usize,
}

impl Config {
    /// The checks clap cannot express.
    fn validate(&self) -> Res {
        if self.tokens == 0 || self.threads == 0 || self.seconds.is_nan() || self.seconds <= 0.0 {
            return Err("tokens, threads and seconds must be positive".into());
        }
        Ok(())
    }
}

#[derive(Default)]
struct Totals {
    allowed: AtomicU64,
    rejected: AtomicU64,
    started: AtomicU64,
    replayed: AtomicU64,
    conflicts: AtomicU64,
}

/// One thread's share of the [`Totals`], counted in plain integers and added once at the end:
/// a shared counter bumped on every request would bounce its cache line between the threads
/// inside the timed region (governor's loop counts the same way).
#[derive(Default)]
struct Counts {
    allowed: u64,
    rejected: u64,
    started: u64,
    replayed: u64,
    conflicts: u64,
}

impl Totals {
    fn add(&self, c: &Counts) {
        self.allowed.fetch_add(c.allowed, Ordering::Relaxed);
        self.rejected.fetch_add(c.rejected, Ordering::Relaxed);
        self.started.fetch_add(c.started, Ordering::Relaxed);
        self.replayed.fetch_add(c.replayed, Ordering::Relaxed);
        self.conflicts.fetch_add(c.conflicts, Ordering::Relaxed);
    }
}

/// Latency samples, each tagged with [`KEYED`] if its request was keyed: the percentiles of
/// all of them (the figure compared across engines), and the keyed ones' share and
/// percentiles, if there are any.
struct Latencies {
    all: (u64, u64, u64),
    keyed: Option<(f64, (u64, u64, u64))>,
}

impl Latencies {
    fn of(samples: Vec<u64>) -> Latencies {
        let keyed: Vec<u64> = samples
            .iter()
            .filter(|&&s| s & KEYED != 0)
            .map(|&s| s & !KEYED)
            .collect();
        let share = keyed.len() as f64 / samples.len().max(1) as f64;
        Latencies {
            keyed: (!keyed.is_empty()).then(|| (share, percentiles(keyed))),
            all: percentiles(samples.into_iter().map(|s| s & !KEYED).collect()),
        }
    }

    /// The keyed requests' own line (check, begin and complete or replay), if any.
    fn print_keyed(&self) {
        if let Some((share, k)) = self.keyed {
            println!(
                "  keyed requests ({:.1}% of those timed): latency p50 {} ns, p99 {} ns, p99.9 {} ns",
                share * 100.0,
                k.0,
                k.1,
                k.2
            );
        }
    }
}

fn percentiles(mut v: Vec<u64>) -> (u64, u64, u64) {
    if v.is_empty() {
        return (0, 0, 0);
    }
    v.sort_unstable();
    let p = |q: f64| v[((v.len() as f64 * q) as usize).min(v.len() - 1)];
    (p(0.5), p(0.99), p(0.999))
}

fn progress(label: &str, start: Instant, secs: f64, ops: &AtomicU64, stop: &AtomicBool) {
    let pb = progress::bar((secs * 10.0).ceil() as u64, label);
    let mut last = 0u64;
    while !stop.load(Ordering::Relaxed) {
        std::thread::sleep(Duration::from_millis(100));
        let t = start.elapsed().as_secs_f64().min(secs);
        let n = ops.load(Ordering::Relaxed);
        pb.set_position((t * 10.0) as u64);
        pb.set_message(format!("{:.2} M ops/s", (n - last) as f64 / 0.1 / 1e6));
        last = n;
    }
    pb.finish_and_clear();
}

/// The top bit of a latency sample: the request carried an Idempotency-Key (its time includes
/// the begin and the complete or the replay).
const KEYED: u64 = 1 << 63;

/// Run `f(thread, rng, deadline)` on `threads` threads for `secs` with a progress line.
fn timed<F>(label: &str, threads: usize, secs: f64, ops: Arc<AtomicU64>, f: F) -> (f64, Vec<u64>)
where
    F: Fn(usize, &mut Rng, Instant, &AtomicU64) -> Vec<u64> + Sync,
{
    let stop = AtomicBool::new(false);
    let start = Instant::now();
    let deadline = start + Duration::from_secs_f64(secs);
    let mut samples = Vec::new();
    std::thread::scope(|s| {
        let p = s.spawn(|| progress(label, start, secs, &ops, &stop));
        let hs: Vec<_> = (0..threads)
            .map(|t| {
                let (f, ops) = (&f, &ops);
                s.spawn(move || {
                    let mut rng =
                        Rng(0x9E37_79B9_7F4A_7C15
                            ^ (t as u64 + 1).wrapping_mul(0x2545_F491_4F6C_DD1D));
                    f(t, &mut rng, deadline, ops)
                })
            })
            .collect();
        for h in hs {
            samples.extend(h.join().unwrap_or_default());
        }
        stop.store(true, Ordering::Relaxed);
        let _ = p.join();
    });
    (start.elapsed().as_secs_f64(), samples)
}

struct Row {
    engine: String,
    ops: u64,
    secs: f64,
    lat: (u64, u64, u64),
}

pub fn run(c: &Config) -> Res {
    c.validate()?;
    let w = Arc::new(Workload::new(policy(&c.policy)?, c.tokens, c.zipf));
    std::fs::create_dir_all(&c.data)?;
    let rounds = if c.rounds > 1 {
        format!(" per engine, {} rounds", c.rounds)
    } else {
        String::new()
    };
    println!(
        "tollgate bench: policy {}, {} tokens (Zipf s={}), {} threads, {} s{rounds}; {:.0}% of POSTs keyed, {:.0}% of those retries",
        c.policy, c.tokens, c.zipf, c.threads, c.seconds, c.idempotent * 100.0, c.retries * 100.0
    );
    let mut all = Vec::new();
    for r in 0..c.rounds {
        // Every other round the peers go first, so that neither side always runs on the
        // machine as the other left it.
        let peers_first = c.peers && r % 2 == 1;
        if c.rounds > 1 {
            let order = if peers_first { " (peers first)" } else { "" };
            println!("\nround {} of {}{order}", r + 1, c.rounds);
        }
        let mut rows = Vec::new();
        if peers_first {
            peers_into(c, &w, &mut rows)?;
        }
        rows.insert(0, bench_tollgate(c, &w)?);
        if c.peers && !peers_first {
            peers_into(c, &w, &mut rows)?;
        }
        if c.peers {
            print_table(&rows);
        }
        all.push(rows);
    }
    if c.rounds > 1 && c.peers {
        print_rounds(&all);
    }
    Ok(())
}

/// Throughput, as a row reports it.
fn rate(r: &Row) -> f64 {
    r.ops as f64 / r.secs.max(1e-9)
}

/// The table of one round: every engine beside tollgate (the first row).
fn print_table(rows: &[Row]) {
    let Some(base) = rows.first().map(rate) else {
        return;
    };
    println!(
        "\n| engine (checks only for peers) | checks/s | p50 | p99 | p99.9 | tollgate ÷ engine |"
    );
    println!("|---|---|---|---|---|---|");
    for r in rows {
        println!(
            "| {} | {:.0} | {} ns | {} ns | {} ns | {:.2}× |",
            r.engine,
            rate(r),
            r.lat.0,
            r.lat.1,
            r.lat.2,
            base / rate(r).max(1e-9)
        );
    }
}

/// tollgate's throughput over each peer's, round by round, and the median.
fn print_rounds(all: &[Vec<Row>]) {
    let Some(first) = all.first() else {
        return;
    };
    println!("\n| tollgate ÷ engine | each round | median |");
    println!("|---|---|---|");
    for peer in first.iter().skip(1) {
        let mut ratios: Vec<f64> = all
            .iter()
            .filter_map(|rows| {
                let base = rate(rows.first()?);
                let other = rows.iter().skip(1).find(|r| r.engine == peer.engine)?;
                Some(base / rate(other).max(1e-9))
            })
            .collect();
        let each: Vec<String> = ratios.iter().map(|x| format!("{x:.2}×")).collect();
        ratios.sort_by(f64::total_cmp);
        let mid = ratios.len() / 2;
        let median = match ratios.len() {
            0 => f64::NAN,
            n if n % 2 == 1 => ratios[mid],
            _ => (ratios[mid - 1] + ratios[mid]) / 2.0,
        };
        println!("| {} | {} | {median:.2}× |", peer.engine, each.join(", "));
    }
}

/// tollgate's run of one round, on a store made afresh: prints its lines, returns its row.
fn bench_tollgate(c: &Config, w: &Arc<Workload>) -> Result<Row, Box<dyn std::error::Error>> {
    let path = format!("{}/bench.tg", c.data.trim_end_matches('/'));
    let _ = std::fs::remove_file(&path);
    let store = Store::open(
        &path,
        Options::default()
            .home_slots(c.home_slots)
            .grow_ahead(c.grow_ahead)
            .huge_pages(c.huge_pages),
    )?;
    println!(
        "store: {path}{}{}",
        if c.home_slots { " (home slots)" } else { "" },
        if c.huge_pages { "" } else { " (no huge pages)" }
    );
    let totals = Arc::new(Totals::default());
    let ops = Arc::new(AtomicU64::new(0));
    let response =
        StoredResponse::new(201, vec![b'{'; 200]).with_header("content-type", "application/json");
    let (secs, samples) = timed(
        "tollgate",
        c.threads,
        c.seconds,
        ops.clone(),
        |t, rng, deadline, ops| {
            let mut lat = Vec::new();
            let mut buf = [0u8; 64];
            let mut keys = KeyDraw::new(t);
            let mut counts = Counts::default();
            let mut n = 0u64;
            while Instant::now() < deadline {
                for _ in 0..256 {
                    let (token, ri) = w.at(t, c.threads, n);
                    n += 1;
                    let route = &w.routes[ri];
                    let len = key_into(&mut buf, token, route.name);
                    let sample = n.is_multiple_of(8);
                    let t0 = sample.then(Instant::now);
                    let mut keyed = false;
                    let Ok(d) = store.check(&buf[..len], &route.limits, 1) else {
                        continue;
                    };
                    if d.allowed() {
                        counts.allowed += 1;
                        if route.post && rng.unit() < c.idempotent {
                            let (scope_token, k) = keys.draw(rng, token, c.retries);
                            let Ok(key) = IdempotencyKey::from_uuid(
                                uuid::Builder::from_random_bytes(k.to_le_bytes()).into_uuid(),
                            ) else {
                                continue;
                            };
                            keyed = true;
                            let mut sbuf = [0u8; 64];
                            let slen = key_into(&mut sbuf, scope_token, "");
                            let fp = Fingerprint::from_bytes([0x5A; 32]);
                            match store.begin(&sbuf[..slen], &key, &fp) {
                                Ok(Begin::Started(lease)) => {
                                    let _ = store.complete(&lease, &response);
                                    counts.started += 1;
                                    keys.begun(rng, scope_token, k);
                                }
                                Ok(Begin::Replay(_)) => {
                                    counts.replayed += 1;
                                }
                                Ok(_) => {
                                    counts.conflicts += 1;
                                }
                                Err(_) => {}
                            }
                        }
                    } else {
                        counts.rejected += 1;
                    }
                    if let Some(t0) = t0 {
                        let ns = (t0.elapsed().as_nanos() as u64).min(!KEYED);
                        lat.push(if keyed { ns | KEYED } else { ns });
                    }
                }
                ops.fetch_add(256, Ordering::Relaxed);
            }
            totals.add(&counts);
            lat
        },
    );
    let n = ops.load(Ordering::Relaxed);
    let lat = Latencies::of(samples);
    let tl = lat.all;
    let stats = store.stats();
    let file = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
    println!(
        "tollgate: {n} requests in {secs:.1} s = {:.2} M/s; latency p50 {} ns, p99 {} ns, p99.9 {} ns",
        n as f64 / secs / 1e6,
        tl.0,
        tl.1,
        tl.2
    );
    println!(
        "  decisions: {} admitted, {} rejected (429); idempotency: {} started+completed, {} replayed, {} in flight/mismatch",
        totals.allowed.load(Ordering::Relaxed),
        totals.rejected.load(Ordering::Relaxed),
        totals.started.load(Ordering::Relaxed),
        totals.replayed.load(Ordering::Relaxed),
        totals.conflicts.load(Ordering::Relaxed),
    );
    lat.print_keyed();
    println!(
        "  store: {} entries ({} idempotency records), {} segments, file {:.1} MiB",
        stats.entries,
        stats.idempotency_records,
        stats.segments,
        file as f64 / 1048576.0
    );
    store.close()?;
    Ok(Row {
        engine: format!("tollgate ({} threads)", c.threads),
        ops: n,
        secs,
        lat: tl,
    })
}

/// Run the peers this command was built with, in the same run, adding their rows.
fn peers_into(c: &Config, w: &Arc<Workload>, rows: &mut Vec<Row>) -> Res {
    #[cfg(feature = "bench")]
    {
        rows.push(bench_governor(c, w));
        if c.toy {
            rows.push(toy::bench(c, w));
        }
    }
    #[cfg(not(feature = "bench"))]
    println!("governor: not built into this command (cargo feature `bench`: `cargo run --release --features bench -- bench`); skipped.");
    #[cfg(feature = "redis")]
    match crate::peers::connect(&c.redis) {
        Ok(con) => {
            drop(con);
            rows.extend(on_redis::bench_redis(c, w)?);
        }
        Err(e) => println!(
            "redis: not reachable at {} ({e}); skipped. Start one with `.ci/redis-server.sh start`.",
            c.redis
        ),
    }
    #[cfg(not(feature = "redis"))]
    println!("redis: not built into this command (cargo feature `redis`); skipped.");
    let _ = (c, w, &rows);
    Ok(())
}

#[cfg(feature = "bench")]
fn bench_governor(c: &Config, w: &Arc<Workload>) -> Row {
    use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
    use std::num::NonZeroU32;

    // One keyed limiter per route, on the route's per-minute limit; keys are the same strings.
    let limiters: Vec<DefaultKeyedRateLimiter<String>> = w
        .routes
        .iter()
        .map(|r| {
            RateLimiter::keyed(Quota::per_minute(
                NonZeroU32::new(r.per_minute).unwrap_or(NonZeroU32::MIN),
            ))
        })
        .collect();
    // One reused String per thread (governor's keyed limiter takes `&String`), filled before
    // the timed check: no allocation per check, as tollgate makes none.
    checks_peer(
        (
            "governor",
            format!("governor 0.10 keyed ({} threads)", c.threads),
        ),
        c,
        w,
        |_| String::new(),
        |key: &mut String, bytes| {
            key.clear();
            key.push_str(std::str::from_utf8(bytes).unwrap_or_default());
        },
        |key, ri, _, _| (limiters[ri].check_key(key).is_ok(), false),
        drop,
    )
}

/// Run a peer that checks in process, on every thread, over the workload's requests, under
/// `label` (the progress line) and `engine` (its row): `init` makes a thread's state (from its
/// index), `fill` prepares it from the key's bytes outside the timed check, `check` (route
/// index, token, key bytes) answers. Prints and returns its row; `done` gets each thread's
/// state at the end.
#[cfg(feature = "bench")]
fn checks_peer<S>(
    (label, engine): (&str, String),
    c: &Config,
    w: &Arc<Workload>,
    init: impl Fn(usize) -> S + Sync,
    fill: impl Fn(&mut S, &[u8]) + Sync,
    check: impl Fn(&mut S, usize, usize, &[u8]) -> (bool, bool) + Sync,
    done: impl Fn(S) + Sync,
) -> Row {
    let ops = Arc::new(AtomicU64::new(0));
    let admitted_all = AtomicU64::new(0);
    let (secs, samples) = timed(
        label,
        c.threads,
        c.seconds,
        ops.clone(),
        |t, _, deadline, ops| {
            let mut lat = Vec::new();
            let mut buf = [0u8; 64];
            let mut state = init(t);
            let mut n = 0u64;
            let mut admitted = 0u64;
            while Instant::now() < deadline {
                for _ in 0..256 {
                    let (token, ri) = w.at(t, c.threads, n);
                    n += 1;
                    let len = key_into(&mut buf, token, w.routes[ri].name);
                    fill(&mut state, &buf[..len]);
                    let sample = n.is_multiple_of(8);
                    let t0 = sample.then(Instant::now);
                    let (ok, keyed) = check(&mut state, ri, token, &buf[..len]);
                    admitted += u64::from(std::hint::black_box(ok));
                    if let Some(t0) = t0 {
                        let ns = (t0.elapsed().as_nanos() as u64).min(!KEYED);
                        lat.push(if keyed { ns | KEYED } else { ns });
                    }
                }
                ops.fetch_add(256, Ordering::Relaxed);
            }
            admitted_all.fetch_add(admitted, Ordering::Relaxed);
            done(state);
            lat
        },
    );
    let n = ops.load(Ordering::Relaxed);
    let lat = Latencies::of(samples);
    let l = lat.all;
    println!(
        "{label}: {n} checks in {secs:.1} s = {:.2} M/s; latency p50 {} ns, p99 {} ns, p99.9 {} ns; {:.1}% admitted",
        n as f64 / secs / 1e6,
        l.0,
        l.1,
        l.2,
        admitted_all.load(Ordering::Relaxed) as f64 * 100.0 / n.max(1) as f64
    );
    lat.print_keyed();
    Row {
        engine,
        ops: n,
        secs,
        lat: l,
    }
}
