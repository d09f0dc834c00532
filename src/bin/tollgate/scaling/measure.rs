//! The measuring side (a child process): the store, the keys, simulated time, the timed
//! rounds, and what the machine and the process used meanwhile.

use std::sync::Barrier;
use std::time::{Duration, Instant};

use tollgate::{Limit, Limits, Options, Store};

use super::row::{median, Row};
use super::{BoxResult, Config, Point};

/// Start of simulated time (ms since the Unix epoch).
const T0: u64 = 1_700_000_000_000;

/// Average simulated time between two checks of one key, in ms.
const VISIT_MS: u64 = 200;
/// The windows a key gets, the first `n` of them for `n` windows: 60 000/min, 65 535/h,
/// 10 000 per 10 s, 65 535 per 10 min. With a visit every 200 ms none is ever reached.
fn limits(n: usize) -> Result<Limits, tollgate::Error> {
    let all = [
        Limit::per_minute(60_000),
        Limit::per_hour(65_535),
        Limit::new(10_000, Duration::from_secs(10)),
        Limit::new(65_535, Duration::from_secs(600)),
    ];
    Limits::new(all.get(..n).unwrap_or(&all))
}
/// A 32-byte key for number `i`, built on the stack: a fixed prefix, the number and a
/// scrambled copy of it.
fn key(i: u64) -> [u8; 32] {
    let mut k = *b"scaling-key-v1:-________________";
    k[16..24].copy_from_slice(&i.to_le_bytes());
    k[24..32].copy_from_slice(&i.wrapping_mul(0x9E37_79B9_7F4A_7C15).to_le_bytes());
    k
}

/// xorshift64*: cheap, good enough to pick keys uniformly.
struct Rng(u64);

impl Rng {
    /// A generator for `seed` (any value, 0 included).
    fn new(seed: u64) -> Rng {
        // splitmix64 of the seed, never 0.
        let mut z = seed.wrapping_add(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        Rng((z ^ (z >> 31)) | 1)
    }

    /// The next 64 random bits.
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform in `0..n` (multiply-shift, no division).
    fn below(&mut self, n: u64) -> u64 {
        ((u128::from(self.next()) * u128::from(n)) >> 64) as u64
    }
}

/// Simulated time for one measuring thread. With `threads` threads each advancing its own
/// clock by `VISIT_MS × threads` per `keys` of its checks, a key is visited every `VISIT_MS`
/// of simulated time on average.
///
/// The clock moves in jumps of `JUMP_MS`: simulated time runs far faster than real time (a
/// hot key must not reach its limits), and a clock that moved on nearly every check would
/// have every check write the store's newest-time-seen word, shared by all threads, which a
/// real clock does once per millisecond at most. The jumps keep that write as rare as it is
/// in production.
struct SimClock {
    now: u64,
    /// Simulated ms owed, times `keys`.
    acc: u64,
    /// Added to `acc` each check.
    rate: u64,
    /// `acc` worth one jump.
    jump: u64,
}

/// Size of one step of simulated time, in ms.
const JUMP_MS: u64 = 1_000;

impl SimClock {
    /// A clock at `T0` for one of `threads` threads checking `keys` keys.
    fn new(keys: u64, threads: usize) -> SimClock {
        SimClock {
            now: T0,
            acc: 0,
            rate: VISIT_MS * threads as u64,
            jump: keys.max(1) * JUMP_MS,
        }
    }

    /// The time of the next check.
    fn tick(&mut self) -> u64 {
        self.acc += self.rate;
        while self.acc >= self.jump {
            self.acc -= self.jump;
            self.now += JUMP_MS;
        }
        self.now
    }
}

/// Resident set size of this process (`VmRSS`, Linux), or 0 where it cannot be read.
fn rss_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        })
        .map_or(0, |kib| kib * 1024)
}

/// The 1-minute load average (Linux), or 0.
pub(super) fn load1() -> f64 {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next().and_then(|v| v.parse().ok()))
        .unwrap_or(0.0)
}

/// CPU time of the whole machine from `/proc/stat` (Linux): (busy, total), in ticks, all
/// CPUs together. Busy includes steal (time the hypervisor gave to other guests).
fn machine_ticks() -> Option<(u64, u64)> {
    let s = std::fs::read_to_string("/proc/stat").ok()?;
    let line = s.lines().next()?.strip_prefix("cpu ")?;
    let v: Vec<u64> = line
        .split_whitespace()
        .map(|x| x.parse().unwrap_or(0))
        .collect();
    // user nice system idle iowait irq softirq steal (guest time is inside user).
    let field = |i: usize| v.get(i).copied().unwrap_or(0);
    let busy = field(0) + field(1) + field(2) + field(5) + field(6) + field(7);
    Some((busy, busy + field(3) + field(4)))
}

/// CPU time this process used (user + system, all threads), in the same ticks.
fn own_ticks() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the command name, which is in parentheses: state is the first, utime the
    // 12th and stime the 13th.
    let rest = &s[s.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
}

/// Watches how much CPU everything else uses while a measurement runs.
pub(super) struct OtherLoad {
    start: Option<((u64, u64), u64)>,
}

impl OtherLoad {
    pub(super) fn start() -> OtherLoad {
        OtherLoad {
            start: machine_ticks().zip(own_ticks()),
        }
    }

    /// Cores' worth of CPU used by others since `start` (0 where `/proc` is unavailable).
    pub(super) fn cores(&self, cores: usize) -> f64 {
        let (Some(((b0, t0), o0)), Some(((b1, t1), o1))) =
            (self.start, machine_ticks().zip(own_ticks()))
        else {
            return 0.0;
        };
        let total = t1.saturating_sub(t0).max(1) as f64;
        let others = (b1.saturating_sub(b0)).saturating_sub(o1.saturating_sub(o0)) as f64;
        others / total * cores as f64
    }
}

/// `checks` checks on random keys; returns (rejected, errors).
fn check_loop(
    store: &Store,
    limits: &Limits,
    keys: u64,
    checks: u64,
    rng: &mut Rng,
    clock: &mut SimClock,
) -> (u64, u64) {
    let (mut rejected, mut errors) = (0u64, 0u64);
    for _ in 0..checks {
        let k = key(rng.below(keys));
        match store.check_at(&k, limits, 1, clock.tick()) {
            Ok(d) => rejected += u64::from(!std::hint::black_box(d.allowed())),
            Err(_) => errors += 1,
        }
    }
    (rejected, errors)
}

/// One round: every thread does `checks` checks; returns the wall time and the rejections.
fn round(
    store: &Store,
    limits: &Limits,
    keys: u64,
    checks: u64,
    seed: u64,
    clocks: &mut [SimClock],
) -> BoxResult<(Duration, u64)> {
    let barrier = Barrier::new(clocks.len() + 1);
    let (wall, rejected, errors, panicked) = std::thread::scope(|s| {
        let handles: Vec<_> = clocks
            .iter_mut()
            .enumerate()
            .map(|(t, clock)| {
                let barrier = &barrier;
                s.spawn(move || {
                    let mut rng = Rng::new(seed.wrapping_mul(31).wrapping_add(t as u64));
                    barrier.wait();
                    check_loop(store, limits, keys, checks, &mut rng, clock)
                })
            })
            .collect();
        barrier.wait();
        let start = Instant::now();
        let (mut rejected, mut errors, mut panicked) = (0, 0, false);
        for h in handles {
            match h.join() {
                Ok((r, e)) => {
                    rejected += r;
                    errors += e;
                }
                Err(_) => panicked = true,
            }
        }
        (start.elapsed(), rejected, errors, panicked)
    });
    if panicked {
        return Err("a measuring thread panicked".into());
    }
    if errors > 0 {
        return Err(format!("{errors} checks returned an error").into());
    }
    Ok((wall, rejected))
}

/// Measure one point in this process.
pub(super) fn measure(c: &Config, (keys, windows, threads): Point) -> BoxResult<Row> {
    let limits = limits(windows)?;
    let dir = c.data_dir();
    std::fs::create_dir_all(&dir)?;
    let path = dir.join(format!(
        "scaling-{keys}-{windows}-{threads}-{}.tg",
        std::process::id()
    ));
    let _ = std::fs::remove_file(&path);
    let rss0 = rss_bytes();
    let store = Store::open(&path, Options::default().compactor(false))?;
    let start = Instant::now();
    for i in 0..keys {
        if !store.check_at(&key(i), &limits, 1, T0)?.allowed() {
            return Err(format!("the first check of key {i} was rejected").into());
        }
    }
    let insert_ns = start.elapsed().as_nanos() as f64 / keys as f64;
    let rss_bytes = rss_bytes().saturating_sub(rss0);
    let file_bytes = std::fs::metadata(&path)?.len();
    let entries = store.stats().entries;
    if entries != keys {
        return Err(format!("{entries} entries in the store after inserting {keys} keys").into());
    }
    let mut clocks: Vec<SimClock> = (0..threads).map(|_| SimClock::new(keys, threads)).collect();
    let mut walls = Vec::with_capacity(c.rounds as usize);
    let mut rejected = 0;
    let others = OtherLoad::start();
    for r in 0..c.rounds {
        let (wall, rej) = round(&store, &limits, keys, c.checks, u64::from(r), &mut clocks)?;
        walls.push(wall.as_nanos() as f64);
        rejected += rej;
    }
    let other_cores = others.cores(std::thread::available_parallelism().map_or(1, |n| n.get()));
    store.close()?;
    std::fs::remove_file(&path)?;
    let per = |w: f64| w / c.checks as f64;
    let fastest = walls.iter().copied().fold(f64::INFINITY, f64::min);
    let slowest = walls.iter().copied().fold(0.0, f64::max);
    let median = median(walls);
    Ok(Row {
        keys,
        windows,
        threads,
        checks: c.checks,
        rounds: c.rounds,
        runs: 1,
        ns_per_check: per(median),
        ns_min: per(fastest),
        ns_max: per(slowest),
        mchecks_per_s: (threads as u64 * c.checks) as f64 / median.max(1.0) * 1e3,
        insert_ns,
        file_bytes,
        rss_bytes,
        rejected,
        load1: load1(),
        other_cores,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_distinct_32_bytes() {
        let ks: std::collections::HashSet<[u8; 32]> = (0..10_000).map(key).collect();
        assert_eq!(ks.len(), 10_000);
    }

    #[test]
    fn random_keys_stay_in_range_and_cover_it() {
        let mut rng = Rng::new(7);
        let mut seen = [0u32; 10];
        for _ in 0..100_000 {
            let i = rng.below(10);
            assert!(i < 10);
            seen[i as usize] += 1;
        }
        // Uniform: each of the 10 values near 10 000.
        assert!(
            seen.iter().all(|&n| (9_000..11_000).contains(&n)),
            "{seen:?}"
        );
    }

    #[test]
    fn simulated_time_visits_a_key_every_200_ms_in_1_s_jumps() {
        for (keys, threads) in [(1u64, 1usize), (7, 1), (1_000, 1), (3_000, 2), (100_000, 4)] {
            let mut c = SimClock::new(keys, threads);
            let mut last = T0;
            let visits = 100;
            for _ in 0..keys * visits {
                let now = c.tick();
                assert!(now == last || now == last + JUMP_MS, "{now} after {last}");
                last = now;
            }
            let per_visit = (last - T0) as f64 / visits as f64 / threads as f64;
            assert!(
                (190.0..=200.0).contains(&per_visit),
                "{keys} keys, {threads} threads: {per_visit} ms"
            );
        }
    }

    #[test]
    fn every_window_count_is_a_valid_policy() {
        for n in 1..=4 {
            assert_eq!(limits(n).unwrap().len(), n);
        }
    }
}
