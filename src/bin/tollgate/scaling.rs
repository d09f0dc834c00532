//! `tollgate scaling`: how the cost of a check grows with the number of keys (1k to 10M), with
//! threads and with the number of windows per key, and how many bytes a key takes. Writes
//! `scaling.csv` and `scaling.svg` (a plot of four panels) to the output directory.
//!
//! Method (the figures and their reading are in `docs/PERFORMANCE.md`, "Scaling"):
//! * each measurement point (keys, windows, threads) runs in a fresh child process
//!   (`tollgate scaling --point K,W,T`), so that its RSS growth is its own: memory freed by one
//!   point cannot hide the next point's growth;
//! * the child creates a store file in the data directory (compactor off), checks every key
//!   once (the insert cost, on one thread), then times `rounds` rounds of `checks` checks per
//!   thread on keys drawn uniformly at random, and reports the median round;
//! * the whole plan runs `runs` times (3 by default) and each point reports the median of its
//!   runs, with the fastest and slowest round of all: on a shared VM one process can be much
//!   slower than the next, and interleaving the runs spreads a slow spell over every point;
//! * a point measured while other processes used more than `--max-others` cores (0.25 by
//!   default; from `/proc/stat`) is measured again once the machine is quiet (or after a
//!   minute's wait), up to `--retries` times, and the quietest attempt is kept; the CSV says
//!   how busy the machine was for each point;
//! * keys are 32 bytes built on the stack from their number: the timed loop allocates nothing
//!   and reads no key table, so the cache misses measured are the engine's own;
//! * time is explicit (`check_at`) and advances 200 ms per visit of a key on average, in 1 s
//!   jumps, far below every limit: every timed check is admitted (the count of rejections is
//!   reported, and is 0).

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::Barrier;
use std::time::{Duration, Instant};

use tollgate::{Limit, Limits, Options, Store};

use crate::plot::{self, Axis, Panel, Series};
use crate::Res;

type BoxResult<T> = Result<T, Box<dyn std::error::Error>>;

/// Start of simulated time (ms since the Unix epoch).
const T0: u64 = 1_700_000_000_000;

/// Average simulated time between two checks of one key, in ms.
const VISIT_MS: u64 = 200;

/// Key counts of the main sweep, up to `--max-keys`.
const KEY_COUNTS: [u64; 5] = [1_000, 10_000, 100_000, 1_000_000, 10_000_000];

/// Thread counts of the thread sweep (4 oversubscribes a 2-core machine on purpose).
const THREADS: [usize; 3] = [1, 2, 4];

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

/// Options of `tollgate scaling`.
#[derive(Debug, Clone, PartialEq)]
struct Config {
    max_keys: u64,
    checks: u64,
    rounds: u32,
    runs: u32,
    max_others: f64,
    retries: u32,
    out: PathBuf,
    data: PathBuf,
    /// Set in a child process: measure this one point and print it.
    point: Option<Point>,
}

/// One measurement point: keys in the store, windows per key, threads checking.
type Point = (u64, usize, usize);

/// Parse the options of `tollgate scaling` (everything after the subcommand).
fn parse(args: &[String]) -> BoxResult<Config> {
    let mut c = Config {
        max_keys: 10_000_000,
        checks: 2_000_000,
        rounds: 5,
        runs: 3,
        max_others: 0.25,
        retries: 4,
        out: PathBuf::from("tollgate-data"),
        data: std::env::temp_dir(),
        point: None,
    };
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut val = || {
            it.next()
                .cloned()
                .ok_or_else(|| format!("{a} needs a value"))
        };
        match a.as_str() {
            "--max-keys" => c.max_keys = val()?.parse()?,
            "--checks" => c.checks = val()?.parse()?,
            "--rounds" => c.rounds = val()?.parse()?,
            "--runs" => c.runs = val()?.parse()?,
            "--max-others" => c.max_others = val()?.parse()?,
            "--retries" => c.retries = val()?.parse()?,
            "--out" => c.out = val()?.into(),
            "--data" => c.data = val()?.into(),
            "--point" => {
                let v = val()?;
                let f: Vec<&str> = v.split(',').collect();
                let [k, w, t] = f.as_slice() else {
                    return Err(format!("--point wants KEYS,WINDOWS,THREADS, not {v:?}").into());
                };
                c.point = Some((k.parse()?, w.parse()?, t.parse()?));
            }
            other => return Err(format!("unknown option {other}").into()),
        }
    }
    if c.max_keys == 0 || c.checks == 0 || c.rounds == 0 || c.runs == 0 {
        return Err("max-keys, checks, rounds and runs must be positive".into());
    }
    if let Some((k, w, t)) = c.point {
        if k == 0 || !(1..=4).contains(&w) || t == 0 {
            return Err("a point needs keys > 0, 1 to 4 windows and threads > 0".into());
        }
    }
    Ok(c)
}

/// Which points the sweeps need, and which key counts each sweep uses.
#[derive(Debug, Clone, PartialEq)]
struct Plan {
    /// Key counts of the keys sweep (1 thread, 2 windows).
    keys: Vec<u64>,
    /// Key counts of the thread sweep (a small, cached set and a large one).
    thread_sets: Vec<u64>,
    /// Key counts of the windows sweep (one hot key and the large set).
    window_sets: Vec<u64>,
}

impl Plan {
    /// The plan for key counts up to `max_keys`.
    fn new(max_keys: u64) -> Plan {
        let mut keys: Vec<u64> = KEY_COUNTS
            .iter()
            .copied()
            .filter(|&k| k <= max_keys)
            .collect();
        if keys.last() != Some(&max_keys) {
            keys.push(max_keys);
        }
        let small = max_keys.min(1_000);
        let big = max_keys.min(1_000_000);
        let mut thread_sets = vec![small, big];
        thread_sets.dedup();
        let mut window_sets = vec![1, big];
        window_sets.dedup();
        Plan {
            keys,
            thread_sets,
            window_sets,
        }
    }

    /// Every distinct point, each measured once and shared by the sweeps that need it.
    fn points(&self) -> Vec<Point> {
        let mut p: Vec<Point> = self.keys.iter().map(|&k| (k, 2, 1)).collect();
        for &k in &self.thread_sets {
            p.extend(THREADS.iter().map(|&t| (k, 2, t)));
        }
        for &k in &self.window_sets {
            p.extend((1..=4).map(|w| (k, w, 1)));
        }
        let mut seen = Vec::with_capacity(p.len());
        p.retain(|x| {
            let new = !seen.contains(x);
            seen.push(*x);
            new
        });
        p
    }
}

/// What one point measured.
#[derive(Debug, Clone, PartialEq)]
struct Row {
    keys: u64,
    windows: usize,
    threads: usize,
    /// Checks per thread per round.
    checks: u64,
    rounds: u32,
    /// Processes (runs of the plan) the figures come from.
    runs: u32,
    /// Time per check on one thread (round time / checks per thread): median, and the fastest
    /// and slowest round of all runs, ns.
    ns_per_check: f64,
    ns_min: f64,
    ns_max: f64,
    /// Checks per second of all threads together in the median round, millions (the median
    /// of the runs, as for every other figure).
    mchecks_per_s: f64,
    /// Time to insert the keys (first check of each), per key, ns.
    insert_ns: f64,
    /// The store file's size after the inserts.
    file_bytes: u64,
    /// Growth of the process's resident set from before opening the store to after the
    /// inserts (mapped file pages and the in-memory index).
    rss_bytes: u64,
    /// Timed checks rejected (expected 0: the limits are never reached).
    rejected: u64,
    /// 1-minute load average when the point finished (this point's own threads included).
    load1: f64,
    /// CPU time used by everything but this process during the timed rounds (other
    /// processes, the kernel's work for them, steal), in cores: 0 on a quiet machine, up to
    /// the number of cores.
    other_cores: f64,
}

/// The CSV header, one column per field; bytes per key are derived columns.
const CSV_HEADER: &str = "keys,windows,threads,checks_per_thread,rounds,runs,ns_per_check,ns_min,ns_max,mchecks_per_s,insert_ns_per_key,file_bytes,rss_growth_bytes,file_bytes_per_key,rss_bytes_per_key,rejected,load1,other_cpu_cores";

impl Row {
    /// File size over keys.
    fn file_per_key(&self) -> f64 {
        self.file_bytes as f64 / self.keys as f64
    }

    /// RSS growth over keys.
    fn rss_per_key(&self) -> f64 {
        self.rss_bytes as f64 / self.keys as f64
    }

    /// One CSV line (no newline) in the order of [`CSV_HEADER`].
    fn to_csv(&self) -> String {
        format!(
            "{},{},{},{},{},{},{:.1},{:.1},{:.1},{:.3},{:.1},{},{},{:.1},{:.1},{},{:.2},{:.2}",
            self.keys,
            self.windows,
            self.threads,
            self.checks,
            self.rounds,
            self.runs,
            self.ns_per_check,
            self.ns_min,
            self.ns_max,
            self.mchecks_per_s,
            self.insert_ns,
            self.file_bytes,
            self.rss_bytes,
            self.file_per_key(),
            self.rss_per_key(),
            self.rejected,
            self.load1,
            self.other_cores
        )
    }

    /// Parse a line written by [`Row::to_csv`] (the derived columns are recomputed).
    fn from_csv(line: &str) -> BoxResult<Row> {
        let f: Vec<&str> = line.trim().split(',').collect();
        if f.len() != CSV_HEADER.split(',').count() {
            return Err(format!("a scaling row has {} fields: {line:?}", f.len()).into());
        }
        let g = |i: usize| f.get(i).copied().unwrap_or("");
        Ok(Row {
            keys: g(0).parse()?,
            windows: g(1).parse()?,
            threads: g(2).parse()?,
            checks: g(3).parse()?,
            rounds: g(4).parse()?,
            runs: g(5).parse()?,
            ns_per_check: g(6).parse()?,
            ns_min: g(7).parse()?,
            ns_max: g(8).parse()?,
            mchecks_per_s: g(9).parse()?,
            insert_ns: g(10).parse()?,
            file_bytes: g(11).parse()?,
            rss_bytes: g(12).parse()?,
            rejected: g(15).parse()?,
            load1: g(16).parse()?,
            other_cores: g(17).parse()?,
        })
    }
}

/// The median of `v` (the upper one of an even count; 0 for none).
fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(0.0)
}

/// One row from several runs of the same point: the median of each figure, the fastest and
/// slowest round of all, every rejection, and the busiest the machine was.
fn combine(runs: &[Row]) -> Option<Row> {
    let first = runs.first()?;
    let med = |f: fn(&Row) -> f64| median(runs.iter().map(f).collect());
    Some(Row {
        runs: runs.iter().map(|r| r.runs).sum(),
        ns_per_check: med(|r| r.ns_per_check),
        ns_min: runs.iter().map(|r| r.ns_min).fold(f64::INFINITY, f64::min),
        ns_max: runs.iter().map(|r| r.ns_max).fold(0.0, f64::max),
        mchecks_per_s: med(|r| r.mchecks_per_s),
        insert_ns: med(|r| r.insert_ns),
        file_bytes: med(|r| r.file_bytes as f64) as u64,
        rss_bytes: med(|r| r.rss_bytes as f64) as u64,
        rejected: runs.iter().map(|r| r.rejected).sum(),
        load1: runs.iter().map(|r| r.load1).fold(0.0, f64::max),
        other_cores: runs.iter().map(|r| r.other_cores).fold(0.0, f64::max),
        ..first.clone()
    })
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
fn load1() -> f64 {
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
struct OtherLoad {
    start: Option<((u64, u64), u64)>,
}

impl OtherLoad {
    fn start() -> OtherLoad {
        OtherLoad {
            start: machine_ticks().zip(own_ticks()),
        }
    }

    /// Cores' worth of CPU used by others since `start` (0 where `/proc` is unavailable).
    fn cores(&self, cores: usize) -> f64 {
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
fn measure(c: &Config, (keys, windows, threads): Point) -> BoxResult<Row> {
    let limits = limits(windows)?;
    std::fs::create_dir_all(&c.data)?;
    let path = c.data.join(format!(
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

/// Measure one point in a fresh child process (this same program).
fn measure_in_child(c: &Config, data: &std::path::Path, (k, w, t): Point) -> BoxResult<Row> {
    let out = Command::new(std::env::current_exe()?)
        .arg("scaling")
        .arg("--point")
        .arg(format!("{k},{w},{t}"))
        .arg("--checks")
        .arg(c.checks.to_string())
        .arg("--rounds")
        .arg(c.rounds.to_string())
        .arg("--data")
        .arg(data)
        .stderr(Stdio::inherit())
        .output()?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        return Err(format!("point {k} keys, {w} windows, {t} threads failed: {stdout}").into());
    }
    let line = stdout
        .lines()
        .find_map(|l| l.strip_prefix("point,"))
        .ok_or_else(|| format!("no result from the point {k},{w},{t}: {stdout}"))?;
    Row::from_csv(line)
}

/// Wait until the whole machine uses at most `max_busy` cores over 2 seconds, for at most
/// `limit`; returns the cores last seen busy.
fn wait_for_quiet(max_busy: f64, limit: Duration, cores: usize) -> f64 {
    let start = Instant::now();
    loop {
        let before = OtherLoad::start();
        std::thread::sleep(Duration::from_secs(2));
        // This process sleeps: everything counted is someone else's.
        let busy = before.cores(cores);
        if busy <= max_busy || start.elapsed() >= limit {
            return busy;
        }
    }
}

/// Measure a point in a child process; while other processes use more than `max_others`
/// cores during it, wait (up to a minute) for a quiet machine and measure again, up to
/// `retries` times. Keeps the quietest attempt.
fn measure_quietly(c: &Config, data: &std::path::Path, p: Point) -> BoxResult<Row> {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut best = measure_in_child(c, data, p)?;
    for _ in 0..c.retries {
        if best.other_cores <= c.max_others {
            break;
        }
        print!(
            "      busy machine (other processes used {:.2} cores): waiting to measure {},{},{} again ",
            best.other_cores, p.0, p.1, p.2
        );
        let waited = Instant::now();
        let busy = wait_for_quiet(c.max_others, Duration::from_secs(60), cores);
        println!(
            "({:.0} s, then {busy:.2} cores busy)",
            waited.elapsed().as_secs_f64()
        );
        let again = measure_in_child(c, data, p)?;
        if again.other_cores < best.other_cores {
            best = again;
        }
    }
    Ok(best)
}

/// Print one row of the progress table.
fn print_row(label: &str, row: &Row) {
    println!(
        "{label:>5} {:>9} {:>3} {:>3} {:>10.1} {:>11.2} {:>10.1} {:>10.1} {:>10.1} {:>6.2}{}",
        row.keys,
        row.windows,
        row.threads,
        row.ns_per_check,
        row.mchecks_per_s,
        row.insert_ns,
        row.file_per_key(),
        row.rss_per_key(),
        row.other_cores,
        if row.rejected > 0 {
            format!("  ({} rejected!)", row.rejected)
        } else {
            String::new()
        }
    );
}

/// `tollgate scaling [--max-keys N] [--checks N] [--rounds N] [--runs N] [--max-others CORES]
/// [--retries N] [--out DIR] [--data DIR]`.
pub fn run(args: &[String]) -> Res {
    let c = parse(args)?;
    if let Some(p) = c.point {
        let row = measure(&c, p)?;
        println!("point,{}", row.to_csv());
        return Ok(());
    }
    let plan = Plan::new(c.max_keys);
    let points = plan.points();
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    println!(
        "tollgate scaling: {} points x {} runs, {} checks per thread x {} rounds each; {cores} cores, load average {:.2}",
        points.len(),
        c.runs,
        c.checks,
        c.rounds,
        load1()
    );
    let data = c
        .data
        .join(format!("tollgate-scaling-{}", std::process::id()));
    std::fs::create_dir_all(&data)?;
    println!("store files under {} (removed after)", data.display());
    println!(
        "{:>5} {:>9} {:>3} {:>3} {:>10} {:>11} {:>10} {:>10} {:>10} {:>6}",
        "run",
        "keys",
        "win",
        "thr",
        "ns/check",
        "M checks/s",
        "insert ns",
        "file B/key",
        "RSS B/key",
        "others"
    );
    let mut all: Vec<Vec<Row>> = vec![Vec::with_capacity(c.runs as usize); points.len()];
    for run in 1..=c.runs {
        for (p, runs) in points.iter().zip(all.iter_mut()) {
            let row = match measure_quietly(&c, &data, *p) {
                Ok(r) => r,
                Err(e) => {
                    let _ = std::fs::remove_dir_all(&data);
                    return Err(e);
                }
            };
            print_row(&format!("{run}/{}", c.runs), &row);
            runs.push(row);
        }
    }
    let _ = std::fs::remove_dir_all(&data);
    let rows: Vec<Row> = all.iter().filter_map(|r| combine(r)).collect();
    if c.runs > 1 {
        println!("medians of the runs:");
        for r in &rows {
            print_row("all", r);
        }
    }
    std::fs::create_dir_all(&c.out)?;
    let csv_path = c.out.join("scaling.csv");
    let mut csv = String::from(CSV_HEADER);
    csv.push('\n');
    for r in &rows {
        csv.push_str(&r.to_csv());
        csv.push('\n');
    }
    std::fs::write(&csv_path, csv)?;
    let busiest = rows.iter().map(|r| r.other_cores).fold(0.0, f64::max);
    let caption = format!(
        "Each point: the median of {} run(s) (one process each) of {} rounds x {} checks per thread; bars: fastest to slowest round.\nFile-backed store, compactor off, explicit time, 32-byte keys, keys drawn uniformly. {cores} cores; other processes used up to {busiest:.2} cores during a point.",
        c.runs, c.rounds, c.checks
    );
    let svg = plot::render(
        "tollgate: the cost of a check as the store grows",
        &caption,
        &panels(&plan, &rows),
        2,
    );
    let svg_path = c.out.join("scaling.svg");
    std::fs::write(&svg_path, svg)?;
    println!(
        "load average {:.2} at the end; other processes used up to {busiest:.2} cores during a point (column \"others\"); wrote {} and {}",
        load1(),
        csv_path.display(),
        svg_path.display()
    );
    Ok(())
}

/// A point of a series: (x, y).
type Point2 = (f64, f64);

/// A spread at x: (x, low, high).
type Spread = (f64, f64, f64);

/// The colours of the first and second series of a panel.
const BLUE: &str = "#1f6fb4";
const RED: &str = "#d03a2c";

/// The four panels: cost vs keys, bytes per key vs keys, throughput vs threads, cost vs
/// windows.
fn panels(plan: &Plan, rows: &[Row]) -> Vec<Panel> {
    let find = |k: u64, w: usize, t: usize| {
        rows.iter()
            .find(|r| r.keys == k && r.windows == w && r.threads == t)
    };
    let max_of = |s: &[Series]| {
        s.iter()
            .flat_map(|s| {
                s.points
                    .iter()
                    .map(|p| p.1)
                    .chain(s.ranges.iter().map(|r| r.2))
            })
            .fold(0.0, f64::max)
    };
    // Time per check: the median and the fastest and slowest round, at `x`.
    let cost = |x: f64, r: &Row| ((x, r.ns_per_check), (x, r.ns_min, r.ns_max));
    let series = |name: String, color, below, data: Vec<(Point2, Spread)>| {
        let (points, ranges) = data.into_iter().unzip();
        Series {
            name,
            color,
            points,
            ranges,
            labels_below: below,
        }
    };
    let key_rows: Vec<&Row> = plan.keys.iter().filter_map(|&k| find(k, 2, 1)).collect();
    let (kmin, kmax) = (
        plan.keys.first().copied().unwrap_or(1) as f64,
        plan.keys.last().copied().unwrap_or(10) as f64,
    );
    let keys_axis =
        || Axis::log_decades("keys in the store (log scale)", kmin, kmax, plot::fmt_count);

    let per_key = vec![
        series(
            "existing key".into(),
            BLUE,
            true,
            key_rows.iter().map(|r| cost(r.keys as f64, r)).collect(),
        ),
        Series {
            name: "new key (the inserts)".into(),
            color: RED,
            points: key_rows
                .iter()
                .map(|r| (r.keys as f64, r.insert_ns))
                .collect(),
            ranges: vec![],
            labels_below: false,
        },
    ];
    let p1 = Panel {
        title: "ns per check vs keys (1 thread, 2 windows)".into(),
        x: keys_axis(),
        y: Axis::linear_from_zero("ns per check", max_of(&per_key) * 1.1),
        series: per_key,
        references: vec![],
    };

    let line = |name: &str, color, below, pts: Vec<(f64, f64)>| Series {
        name: name.into(),
        color,
        points: pts,
        ranges: vec![],
        labels_below: below,
    };
    let bytes = vec![
        line(
            "file size / keys",
            BLUE,
            true,
            key_rows
                .iter()
                .map(|r| (r.keys as f64, r.file_per_key()))
                .collect(),
        ),
        line(
            "RSS growth / keys",
            RED,
            false,
            key_rows
                .iter()
                .filter(|r| r.rss_bytes > 0)
                .map(|r| (r.keys as f64, r.rss_per_key()))
                .collect(),
        ),
    ];
    let (bmin, bmax) = bytes
        .iter()
        .flat_map(|s| s.points.iter().map(|p| p.1))
        .fold((64.0f64, 64.0f64), |(lo, hi), v| {
            (lo.min(v), hi.max(v * 1.5))
        });
    let p2 = Panel {
        title: "bytes per key vs keys (2 windows, 32-byte keys)".into(),
        x: keys_axis(),
        y: Axis::log_decades("bytes per key (log scale)", bmin, bmax, plot::fmt_number),
        series: bytes,
        references: vec![(64.0, "64 B: one entry line".into())],
    };

    let colors = [BLUE, RED];
    let threads: Vec<Series> = plan
        .thread_sets
        .iter()
        .zip(colors)
        .map(|(&k, color)| {
            series(
                format!("{} keys", plot::fmt_count(k as f64)),
                color,
                false,
                THREADS
                    .iter()
                    .filter_map(|&t| find(k, 2, t).map(|r| (t as f64, r)))
                    .map(|(t, r)| {
                        // Throughput of the median, slowest and fastest round.
                        let rate = |ns: f64| t * 1e3 / ns.max(1e-9);
                        ((t, r.mchecks_per_s), (t, rate(r.ns_max), rate(r.ns_min)))
                    })
                    .collect(),
            )
        })
        .collect();
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let p3 = Panel {
        title: format!("throughput vs threads (2 windows, {cores} cores)"),
        x: Axis::categories("threads", 0.6, 4.4, &[1.0, 2.0, 4.0]),
        y: Axis::linear_from_zero("million checks per second", max_of(&threads) * 1.1),
        series: threads,
        references: vec![],
    };

    let windows: Vec<Series> = plan
        .window_sets
        .iter()
        .zip(colors)
        .map(|(&k, color)| {
            series(
                if k == 1 {
                    "1 key (hot)".into()
                } else {
                    format!("{} keys", plot::fmt_count(k as f64))
                },
                color,
                false,
                (1..=4)
                    .filter_map(|w| find(k, w, 1).map(|r| cost(w as f64, r)))
                    .collect(),
            )
        })
        .collect();
    let p4 = Panel {
        title: "ns per check vs windows per key (1 thread)".into(),
        x: Axis::categories("windows per key", 0.6, 4.4, &[1.0, 2.0, 3.0, 4.0]),
        y: Axis::linear_from_zero("ns per check", max_of(&windows) * 1.1),
        series: windows,
        references: vec![],
    };
    vec![p1, p2, p3, p4]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(s: &str) -> Vec<String> {
        s.split_whitespace().map(String::from).collect()
    }

    #[test]
    fn the_full_plan_measures_each_point_once() {
        let plan = Plan::new(10_000_000);
        assert_eq!(plan.keys, KEY_COUNTS);
        assert_eq!(plan.thread_sets, [1_000, 1_000_000]);
        assert_eq!(plan.window_sets, [1, 1_000_000]);
        let p = plan.points();
        // 5 key counts, 2 sets x 2 more thread counts, 4 window counts for 1 key and 3 more
        // for 1M keys (its 2-window point is in the keys sweep).
        assert_eq!(p.len(), 5 + 4 + 4 + 3, "{p:?}");
        assert!(p.contains(&(1_000_000, 2, 4)) && p.contains(&(1, 3, 1)));
    }

    #[test]
    fn a_small_plan_stops_at_max_keys() {
        let plan = Plan::new(1_000);
        assert_eq!(plan.keys, [1_000]);
        assert_eq!(plan.thread_sets, [1_000]);
        assert_eq!(plan.window_sets, [1, 1_000]);
        assert_eq!(plan.points().len(), 3 + 4 + 3);
        assert_eq!(Plan::new(3_000_000).keys.last(), Some(&3_000_000));
        assert_eq!(Plan::new(500).keys, [500]);
    }

    #[test]
    fn rows_survive_the_csv() {
        let r = Row {
            keys: 1_000_000,
            windows: 2,
            threads: 4,
            checks: 2_000_000,
            rounds: 5,
            runs: 1,
            ns_per_check: 812.5,
            ns_min: 800.1,
            ns_max: 830.0,
            mchecks_per_s: 2.462,
            insert_ns: 512.3,
            file_bytes: 67_112_960,
            rss_bytes: 79_400_000,
            rejected: 0,
            load1: 1.25,
            other_cores: 0.5,
        };
        let line = r.to_csv();
        assert_eq!(line.split(',').count(), CSV_HEADER.split(',').count());
        assert!(line.contains(",67.1,79.4,"), "{line}");
        assert_eq!(Row::from_csv(&line).unwrap(), r);
        assert!(Row::from_csv("1,2,3").is_err());
    }

    #[test]
    fn runs_combine_into_medians_and_extremes() {
        let run = |ns: f64, lo: f64, hi: f64, others: f64| Row {
            keys: 1_000,
            windows: 2,
            threads: 1,
            checks: 10,
            rounds: 5,
            runs: 1,
            ns_per_check: ns,
            ns_min: lo,
            ns_max: hi,
            mchecks_per_s: 1e3 / ns,
            insert_ns: ns * 2.0,
            file_bytes: 4_198_400,
            rss_bytes: 300_000,
            rejected: 0,
            load1: others,
            other_cores: others,
        };
        let r = combine(&[
            run(100.0, 90.0, 120.0, 0.0),
            run(300.0, 250.0, 310.0, 0.9),
            run(150.0, 140.0, 160.0, 0.1),
        ])
        .unwrap();
        assert_eq!(r.runs, 3);
        assert_eq!((r.ns_per_check, r.ns_min, r.ns_max), (150.0, 90.0, 310.0));
        assert_eq!(r.insert_ns, 300.0);
        assert_eq!(r.mchecks_per_s, 1e3 / 150.0);
        assert_eq!(r.other_cores, 0.9);
        assert_eq!(combine(&[]), None);
    }

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

    #[test]
    fn options_parse() {
        let c = parse(&args("--max-keys 1000 --checks 10 --rounds 1 --out o")).unwrap();
        assert_eq!((c.max_keys, c.checks, c.rounds), (1000, 10, 1));
        assert_eq!(c.out, PathBuf::from("o"));
        let c = parse(&args("--point 100,3,2")).unwrap();
        assert_eq!(c.point, Some((100, 3, 2)));
        assert!(parse(&args("--point 100,5,1")).is_err());
        assert!(parse(&args("--point 100,2")).is_err());
        assert!(parse(&args("--checks 0")).is_err());
        let c = parse(&args("--max-others 2 --retries 0")).unwrap();
        assert_eq!((c.max_others, c.retries), (2.0, 0));
        assert!(parse(&args("--frob")).is_err());
    }
}
