//! Check latency and throughput: tollgate beside governor 0.10's keyed limiter (with its
//! default hasher and with ahash) and two floor toys, on the same key bytes in the same run.
//!
//! # Rows
//!
//! Ids are `group/engine/shape/keys`; keys: `hot` (one key), `100k`, `1M`, and `10M` with
//! `TOLLGATE_BENCH_10M=1` (minutes of setup and several GB: about 3.2 GB of store file, 1 to
//! 2 GB per governor map, 2 GB per toy table; one engine is alive at a time). The setup also
//! prints `footprint/tollgate/keys`, the store's file bytes per key.
//!
//! * `harness/{bytes,string}/{loop,chained}/1M`: the harness alone (pick an index, build its
//!   key, `black_box` it); `string` adds the copy into the reused `String` governor's
//!   `check_key(&String)` takes. Subtract `string` from governor rows, `bytes` from others.
//! * `admit/*`, checks admitted: `tollgate` (a file-backed store, as a gateway opens it),
//!   `tollgate-mem` (the same store in anonymous memory with huge pages, to show what the file
//!   costs), `tollgate-home` (the file store with `Options::home_slots`: entries found from
//!   the hash, one miss), `tollgate-b32` and `tollgate-home-b32` (the same two with
//!   `Options::sub_windows(32)`: half the ring bytes), `governor`
//!   (`DefaultKeyedRateLimiter<String>`: a `DashMap` with std's SipHash `RandomState`),
//!   `governor-ahash` (the same limiter over `DashMap<String, InMemoryState,
//!   ahash::RandomState>`, from `RateLimiter::dashmap_with_hasher`: no new dependency),
//!   `toy-one-miss` and `toy-bare` (the floors, `toys/mod.rs`), and `toy-wide` and
//!   `toy-indexed` (three-line entries as tollgate lays them out, found from the hash alone or
//!   through an index: what the index costs).
//! * `at_limit/*`, checks refused: `tollgate` and its three variants above, `governor`,
//!   `governor-ahash`.
//! * `threads/{engine}/{1-thread,2-threads}/keys` (not hot): the admit loop on 1 or 2 threads,
//!   each on its own half of the keys, one spawn per sample either way (`iter_custom`); the
//!   throughput is per check in both rows, so they compare directly.
//! * `peek/tollgate/100k`: a read-only peek. `new_key/*`: the first check of keys never seen,
//!   on a fresh store (file; memory for `tollgate-mem`; a file whose compactor grows it ahead
//!   of need for `tollgate-ahead`) or map per sample. `clock/*`: the
//!   coarse clock `Store::check` reads, `Instant::now`, governor's default (quanta) clock.
//!
//! # How it is built, and why
//!
//! * Files: the engines tollgate and governor run behind (and the key bytes) in
//!   `engines/mod.rs`, the floor toys and the harness-only engine in `toys/mod.rs`.
//! * Keys without a memory miss: each check's key is built in a reused 32-byte stack buffer,
//!   `tok_` and 28 hex digits of `idx * 0x9E3779B97F4A7C15` (as `format!("tok_{:028x}")`,
//!   checked at start-up; hex by SWAR), `idx` a hash of a counter reduced to `0..n`. A gateway
//!   has the key in cache (it just parsed the header); the old harness picked it from a
//!   `Vec<String>`: two misses per check for every engine, which pulled every ratio towards 1.
//! * Shapes: `loop` runs independent checks back to back, so the processor can overlap one
//!   check's misses with the next one's (throughput); in `chained` the next index depends on
//!   the previous answer (`remaining()` for tollgate, the bool for the others) and an
//!   `lfence` after each check keeps the next one from starting before it completes, so
//!   misses cannot overlap (latency, as a gateway doing other work between checks sees it).
//!   The dependency alone did not hold governor: its answer is a bool made by a branch, the
//!   processor ran on the predicted value, and its "chained" rows ran as fast as its loop
//!   rows (until 2026-12-07).
//! * Admit: tollgate's time is driven (`check_at`), 50 ms per round of the keys (of a thread's
//!   share in `threads/*`): every key, at every key count, is checked 20 times a simulated
//!   second, so every row has the same mix of paths: about 1 check in 19 opens a new minute
//!   sub-window (the ring rotation; 938 ms sub-windows at B = 64), 1 in 1125 a new hour
//!   sub-window, the rest count in the head (the old harness rotated the hot key every 5th
//!   check, cold keys never). Limits: `2000/min AND 100000/h`, the narrowest counters (11 and
//!   17 bits) that hold that rate (a key reaches about 1220 in a minute window's 65
//!   sub-windows, 73125 in an hour's); realistic limits (60/min AND 1000/h) cannot stay in
//!   admit at 20 checks a second. governor: one window of 10^9/s.
//! * At limit: before timing, every key is checked until refused (a check of cost 60, then
//!   single checks). tollgate: `60/min AND 1000/h`, time frozen at the drain's, so keys stay
//!   refused however long the run. governor: a burst of 60 and one cell back per hour: with
//!   `per_minute(60)` a key gets a cell back every second of governor's real clock, and a trial
//!   row at 100k keys admitted 3% of its checks (more at 1M, where keys are visited less).
//! * Fill: every key is checked twice before its rows. The second pass writes again the file
//!   pages that were cleaned while the store filled, which would cost the first 1M row a write
//!   fault per 4 KiB page (it came out about 3x slower when each growth step's fdatasync wrote
//!   back the whole file; growth syncs a few bytes since 2026-12-07, but the kernel's own
//!   writeback still cleans pages). The writeback cleans pages again during the rows, which
//!   pay that as a gateway would: at 1M keys about 0.002 faults per check; at 10M the fill
//!   passes the background-writeback threshold and the admit rows took about 0.2 faults per
//!   check (at-limit rows write none).
//! * Every check row counts its admitted checks and prints the share after the row
//!   (`admit/tollgate/loop/1M: 100.00% admitted`); an `at_limit` row above 1%, or another
//!   check row below 99%, panics: it timed the wrong path.
//! * Clocks: tollgate rows pass the time and read no clock; governor reads its quanta clock in
//!   every check. `clock/*` has both costs.
//! * No background compactor (time is driven). Files live in a temporary directory under
//!   `TOLLGATE_BENCH_DIR`, else `TMPDIR`: on tmpfs the "file" is memory.
//!
//! # Running
//!
//! ```sh
//! cargo bench --features bench --bench check              # 139 rows: about 7 minutes
//! cargo bench --features bench --bench check -- hot       # ids containing "hot"
//! cargo bench --features bench --bench check -- admit/tollgate/
//! TOLLGATE_BENCH_10M=1 cargo bench --features bench --bench check -- /10M  # 5 minutes
//! TOLLGATE_BENCH_PER_SECOND=1 cargo bench --features bench --bench check -- admit/tollgate/
//! ```
//!
//! `TOLLGATE_BENCH_PER_SECOND=1` gives the admit rows 65 535/s AND 65 535/min instead of
//! 2 000/min AND 100 000/h: a key checked every 50 ms starts a new 16 ms sub-window of the
//! per-second window on every check (a rotation of its ring each time), the costliest case of
//! issue 15's sliding window.
//!
//! A plain-text filter also skips building the engines none of whose rows it selects; a
//! filter with regex characters builds them all (criterion still runs only matching rows).
//! Criterion: 0.5 s warm-up, 1.5 s measurement, 20 samples (about 2.5 s a row). Figures and
//! the machine they came from: docs/PERFORMANCE.md.

mod engines;
mod toys;

use std::hint::black_box;
use std::num::NonZeroU32;
use std::path::Path;
use std::time::{Duration, Instant};

use criterion::measurement::WallTime;
use criterion::Throughput;
use criterion::{criterion_group, criterion_main, BenchmarkGroup, BenchmarkId, Criterion};
use engines::{governor, governor_ahash, opts, variants, Engine, Key, Peek, Tollgate, GOLDEN};
use governor::clock::{Clock, DefaultClock};
use governor::Quota;
use tollgate::{Limit, Limits, Store};
use toys::{Harness, Table, ToyBare, ToyIndexed, ToyOneMiss, ToyWide, WideTable};

const T0: u64 = 1_700_000_000_000;
/// Fractional bits of the simulated clock (`t >> FP` is in ms).
const FP: u32 = 20;
/// Simulated time per round of the keys (per key, between two of its checks on average).
const STEP_MS: u64 = 50;
/// The at-limit drain's first check (the smallest limit of the at-limit set, governor's burst).
const BURST: u32 = 60;

fn admit_limits() -> Limits {
    let set = if std::env::var("TOLLGATE_BENCH_PER_SECOND").is_ok_and(|v| v == "1") {
        [Limit::per_second(65_535), Limit::per_minute(65_535)]
    } else {
        [Limit::per_minute(2_000), Limit::per_hour(100_000)]
    };
    Limits::new(&set).expect("admit limits")
}

fn at_limit_limits() -> Limits {
    Limits::new(&[Limit::per_minute(60), Limit::per_hour(1000)]).expect("at-limit limits")
}

fn nonzero(n: u32) -> NonZeroU32 {
    NonZeroU32::new(n).expect("nonzero")
}

fn admit_quota() -> Quota {
    Quota::per_second(nonzero(1_000_000_000))
}

fn at_limit_quota() -> Quota {
    Quota::with_period(Duration::from_secs(3600))
        .expect("period")
        .allow_burst(nonzero(BURST))
}

/// The index of check `counter` in `0..n` (a hash, reduced by a multiply). `dep` (below 2^24)
/// is mixed in by the chained shape; the loop shape passes 0.
#[inline]
fn pick(counter: u64, dep: u64, n: u64) -> u64 {
    let mut z = (counter ^ (dep << 40)).wrapping_mul(GOLDEN);
    z ^= z >> 32;
    z = z.wrapping_mul(0xD6E8_FEB8_6659_FD93);
    z ^= z >> 32;
    ((u128::from(z) * u128::from(n)) >> 64) as u64
}

/// What a row expects of its checks.
#[derive(Clone, Copy, PartialEq)]
enum Want {
    Admit,
    AtLimit,
    Harness,
}

#[derive(Default, Clone, Copy)]
struct Tally {
    admitted: u64,
    total: u64,
}

/// Print the share admitted after a row; panic if the row timed the wrong path.
fn report(want: Want, id: &str, t: Tally) {
    if t.total == 0 || want == Want::Harness {
        return;
    }
    let share = 100.0 * t.admitted as f64 / t.total as f64;
    eprintln!("{id}: {share:.2}% admitted ({} checks)", t.total);
    match want {
        Want::Admit if share < 99.0 => panic!(
            "{id}: only {share:.2}% admitted: the row did not time the admit path \
             (limits too small for the time step?)"
        ),
        Want::AtLimit if share > 1.0 => panic!(
            "{id}: {share:.2}% admitted: the keys were not drained (or got quota back), \
             the row did not time the at-limit path"
        ),
        _ => {}
    }
}

/// The criterion name filter (first positional argument), when it is plain text; `None`
/// selects everything (no filter, or a regex we do not evaluate).
struct Filter(Option<String>);

impl Filter {
    fn from_args() -> Filter {
        // Criterion 0.5's options that take a value.
        const VALUED: &str = "-c --color --colour -s --save-baseline -b --baseline \
            --baseline-lenient --format --profile-time --load-baseline --sample-size \
            --warm-up-time --measurement-time --nresamples --noise-threshold \
            --confidence-level --significance-level --plotting-backend --output-format";
        let mut args = std::env::args().skip(1);
        while let Some(a) = args.next() {
            if a.starts_with('-') {
                if VALUED.split_whitespace().any(|v| v == a) {
                    args.next();
                }
                continue;
            }
            let plain = !a.contains(|ch: char| "\\.+*?()|[]{}^$".contains(ch));
            return Filter(plain.then_some(a));
        }
        Filter(None)
    }

    fn wants(&self, id: &str) -> bool {
        self.0.as_ref().is_none_or(|f| id.contains(f.as_str()))
    }
}

/// One key count's context.
struct Ctx<'a> {
    f: &'a Filter,
    label: &'static str,
    n: u64,
    dir: &'a Path,
}

impl Ctx<'_> {
    /// Whether any row of `engine` in `group` (and in `threads/*` if `threads`) is selected.
    fn wants(&self, group: &str, engine: &str, threads: bool) -> bool {
        let l = self.label;
        ["loop", "chained"]
            .iter()
            .any(|s| self.f.wants(&format!("{group}/{engine}/{s}/{l}")))
            || (threads
                && self.n > 1
                && ["1-thread", "2-threads"]
                    .iter()
                    .any(|t| self.f.wants(&format!("threads/{engine}/{t}/{l}"))))
    }
}

/// The chained shape's barrier (`lfence`): no instruction after it starts before every one
/// before it has completed, so the next check's loads cannot start while this one's are in
/// flight, whatever the engine. The data dependency (`dep`) alone did not ensure it: an
/// engine whose answer is a bool made by a branch (governor's) hands on a constant on the
/// predicted path, and the processor ran the next check on the prediction, so governor's
/// "chained" rows ran as fast as its loop rows while tollgate's, chained on `remaining()`,
/// paid their latency (PERFORMANCE.md, "A chained shape that chains every engine").
#[inline(always)]
fn serialize() {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: `lfence` needs SSE2, which every x86-64 processor has (the target's baseline);
    // it reads and writes no memory.
    unsafe {
        std::arch::x86_64::_mm_lfence()
    };
    #[cfg(not(target_arch = "x86_64"))]
    std::sync::atomic::fence(std::sync::atomic::Ordering::SeqCst);
}

/// One single-thread row: `n` keys, the simulated clock `t_fp` moved `step` per check.
fn single<E: Engine, const CHAINED: bool>(
    g: &mut BenchmarkGroup<'_, WallTime>,
    id: BenchmarkId,
    e: &E,
    (n, step): (u64, u64),
    t_fp: &mut u64,
) -> Tally {
    let (mut key, mut tally) = (Key::new(), Tally::default());
    let (mut counter, mut dep, mut t) = (0u64, 0u64, *t_fp);
    g.bench_function(id, |b| {
        b.iter(|| {
            counter += 1;
            key.set(pick(counter, if CHAINED { dep } else { 0 }, n));
            let (ok, d) = e.check(&mut key, t >> FP);
            if CHAINED {
                serialize();
            }
            t += step;
            dep = if CHAINED { d } else { black_box(d) };
            tally.admitted += u64::from(ok);
            tally.total += 1;
        })
    });
    *t_fp = t;
    tally
}

/// The `loop` and `chained` rows of `engine` in `want`'s group.
fn rows<E: Engine>(c: &mut Criterion, x: &Ctx, want: Want, engine: &str, e: &E, t_fp: &mut u64) {
    let (group, step) = match want {
        Want::Admit => ("admit", (STEP_MS << FP) / x.n),
        Want::AtLimit => ("at_limit", 0),
        Want::Harness => ("harness", 0),
    };
    let mut g = c.benchmark_group(group);
    g.throughput(Throughput::Elements(1));
    for shape in ["loop", "chained"] {
        let id = format!("{group}/{engine}/{shape}/{}", x.label);
        let bid = BenchmarkId::new(format!("{engine}/{shape}"), x.label);
        let tally = if shape == "chained" {
            single::<E, true>(&mut g, bid, e, (x.n, step), t_fp)
        } else {
            single::<E, false>(&mut g, bid, e, (x.n, step), t_fp)
        };
        report(want, &id, tally);
    }
    g.finish();
}

/// The admit loop on 1 and 2 threads, each thread on its own share of the keys.
fn threads_rows<E: Engine>(c: &mut Criterion, x: &Ctx, engine: &str, e: &E, t_fp: &mut u64) {
    if x.n < 2 {
        return;
    }
    let mut g = c.benchmark_group("threads");
    for (threads, name) in [(1u64, "1-thread"), (2, "2-threads")] {
        let id = format!("threads/{engine}/{name}/{}", x.label);
        let (share, step) = (x.n / threads, (STEP_MS << FP) * threads / x.n);
        let (mut tally, mut counter) = (Tally::default(), 0u64);
        g.throughput(Throughput::Elements(threads));
        g.bench_function(BenchmarkId::new(format!("{engine}/{name}"), x.label), |b| {
            b.iter_custom(|iters| {
                let (t0, c0) = (*t_fp, counter);
                let start = Instant::now();
                let admitted: u64 = std::thread::scope(|s| {
                    let handles: Vec<_> = (0..threads)
                        .map(|i| {
                            s.spawn(move || {
                                let (mut key, mut t, mut admitted) = (Key::new(), t0, 0u64);
                                for k in 0..iters {
                                    key.set(i * share + pick(c0 + k, 0, share));
                                    let (ok, d) = e.check(&mut key, t >> FP);
                                    (admitted, t) = (admitted + u64::from(ok), t + step);
                                    black_box(d);
                                }
                                admitted
                            })
                        })
                        .collect();
                    let joined = handles.into_iter().map(|h| h.join().expect("bench thread"));
                    joined.sum()
                });
                let elapsed = start.elapsed();
                (*t_fp, counter) = (t0 + iters * step, c0 + iters);
                tally.admitted += admitted;
                tally.total += iters * threads;
                elapsed
            })
        });
        report(Want::Admit, &id, tally);
    }
    g.finish();
}

/// Check every key twice. The first pass inserts; the second writes again the file pages
/// that were cleaned meanwhile (by the kernel's writeback; until 2026-12-07 also by each
/// growth's fdatasync), which would otherwise cost the first row one write fault per page.
fn fill<E: Engine>(x: &Ctx, engine: &str, e: &E) {
    let mut key = Key::new();
    for idx in (0..x.n).chain(0..x.n) {
        key.set(idx);
        assert!(
            e.check(&mut key, T0).0,
            "{engine}: key {idx} refused in the fill"
        );
    }
}

/// Check every key until it is refused: one check of cost `BURST`, then single checks.
fn drain<E: Engine>(x: &Ctx, engine: &str, e: &E) {
    let mut key = Key::new();
    for idx in 0..x.n {
        key.set(idx);
        assert!(
            e.take(&mut key, T0, BURST),
            "{engine}: key {idx} refused its first {BURST}"
        );
        let mut more = 0;
        while e.check(&mut key, T0).0 {
            more += 1;
            assert!(
                more < 1000,
                "{engine}: key {idx} still admitted after {BURST}+{more} checks"
            );
        }
    }
}

/// Build `engine`, fill it, then its admit rows (and thread rows if `threads`); returns the
/// engine and the simulated clock.
fn admit_rows<E: Engine>(
    c: &mut Criterion,
    x: &Ctx,
    engine: &str,
    make: impl FnOnce() -> E,
    threads: bool,
) -> (E, u64) {
    let e = make();
    fill(x, engine, &e);
    let mut t_fp = T0 << FP;
    rows(c, x, Want::Admit, engine, &e, &mut t_fp);
    if threads {
        threads_rows(c, x, engine, &e, &mut t_fp);
    }
    (e, t_fp)
}

/// Drain, then the at-limit rows (time frozen at the drain's).
fn at_limit_rows<E: Engine>(c: &mut Criterion, x: &Ctx, engine: &str, e: &E) {
    drain(x, engine, e);
    rows(c, x, Want::AtLimit, engine, e, &mut (T0 << FP));
}

/// The admit path at one key count: one engine alive at a time.
fn admit(c: &mut Criterion, x: &Ctx) {
    let peek = x.n == 100_000 && x.f.wants("peek/tollgate/100k");
    if x.wants("admit", "tollgate", true) || peek {
        let path = x.dir.join(format!("admit-{}.tg", x.label));
        let make = || Tollgate::file(&path, admit_limits());
        let (e, t_fp) = admit_rows(c, x, "tollgate", make, true);
        if x.n >= 100_000 {
            let per_key = e.store.stats().bytes as f64 / x.n as f64;
            eprintln!(
                "footprint/tollgate/{}: {per_key:.0} file bytes per key",
                x.label
            );
        }
        if x.n == 100_000 {
            let mut g = c.benchmark_group("peek");
            let id = BenchmarkId::new("tollgate", x.label);
            let tally = single::<_, false>(&mut g, id, &Peek(&e), (x.n, 0), &mut { t_fp });
            g.finish();
            report(Want::Admit, "peek/tollgate/100k", tally);
        }
        drop(e);
        let _ = std::fs::remove_file(&path);
    }
    if x.wants("admit", "tollgate-mem", false) {
        admit_rows(
            c,
            x,
            "tollgate-mem",
            || Tollgate::memory(admit_limits()),
            false,
        );
    }
    for (engine, opts) in variants() {
        if x.wants("admit", engine, true) {
            let path = x.dir.join(format!("{engine}-{}.tg", x.label));
            let make = || Tollgate::file_with(&path, admit_limits(), opts);
            let (e, _) = admit_rows(c, x, engine, make, true);
            if x.n >= 100_000 {
                let per_key = e.store.stats().bytes as f64 / x.n as f64;
                eprintln!(
                    "footprint/{engine}/{}: {per_key:.0} file bytes per key",
                    x.label
                );
            }
            drop(e);
            let _ = std::fs::remove_file(&path);
        }
    }
    if x.wants("admit", "governor", true) {
        admit_rows(c, x, "governor", || governor(admit_quota()), true);
    }
    if x.wants("admit", "governor-ahash", true) {
        admit_rows(
            c,
            x,
            "governor-ahash",
            || governor_ahash(admit_quota()),
            true,
        );
    }
    if x.wants("admit", "toy-one-miss", false) {
        admit_rows(c, x, "toy-one-miss", || ToyOneMiss(Table::new(x.n)), false);
    }
    if x.wants("admit", "toy-bare", false) {
        admit_rows(c, x, "toy-bare", || ToyBare(Table::new(x.n)), false);
    }
    if x.wants("admit", "toy-wide", false) {
        admit_rows(
            c,
            x,
            "toy-wide",
            || ToyWide(WideTable::new(x.n, false)),
            false,
        );
    }
    if x.wants("admit", "toy-indexed", false) {
        let make = || ToyIndexed(WideTable::new(x.n, true));
        admit_rows(c, x, "toy-indexed", make, false);
    }
}

/// The at-limit path at one key count.
fn at_limit(c: &mut Criterion, x: &Ctx) {
    if x.wants("at_limit", "tollgate", false) {
        let path = x.dir.join(format!("limit-{}.tg", x.label));
        let e = Tollgate::file(&path, at_limit_limits());
        at_limit_rows(c, x, "tollgate", &e);
        drop(e);
        let _ = std::fs::remove_file(&path);
    }
    for (engine, opts) in variants() {
        if x.wants("at_limit", engine, false) {
            let path = x.dir.join(format!("limit-{engine}-{}.tg", x.label));
            let e = Tollgate::file_with(&path, at_limit_limits(), opts);
            at_limit_rows(c, x, engine, &e);
            drop(e);
            let _ = std::fs::remove_file(&path);
        }
    }
    if x.wants("at_limit", "governor", false) {
        at_limit_rows(c, x, "governor", &governor(at_limit_quota()));
    }
    if x.wants("at_limit", "governor-ahash", false) {
        at_limit_rows(c, x, "governor-ahash", &governor_ahash(at_limit_quota()));
    }
}

fn counts() -> Vec<(&'static str, u64)> {
    let mut v = vec![("hot", 1), ("100k", 100_000), ("1M", 1_000_000)];
    if std::env::var("TOLLGATE_BENCH_10M").is_ok_and(|v| v == "1") {
        v.push(("10M", 10_000_000));
    }
    v
}

fn bench_checks(c: &mut Criterion) {
    let mut key = Key::new();
    for idx in [0u64, 1, 7, 1 << 20, 9_999_999, u64::MAX] {
        key.set(idx);
        let want = format!("tok_{:028x}", idx.wrapping_mul(GOLDEN));
        assert_eq!(key.string().as_str(), want, "key bytes of {idx}");
    }
    let base = std::env::var_os("TOLLGATE_BENCH_DIR").map_or_else(std::env::temp_dir, Into::into);
    let dir = tempfile::Builder::new()
        .prefix("tollgate-bench-")
        .tempdir_in(base)
        .expect("temporary directory");
    let f = Filter::from_args();
    let x = Ctx {
        f: &f,
        label: "1M",
        n: 1_000_000,
        dir: dir.path(),
    };
    rows(c, &x, Want::Harness, "bytes", &Harness::<false>, &mut 0);
    rows(c, &x, Want::Harness, "string", &Harness::<true>, &mut 0);
    for (label, n) in counts() {
        let x = Ctx { label, n, ..x };
        admit(c, &x);
        at_limit(c, &x);
    }
    bench_new_key(c, dir.path());
}

/// The first check of `iters` keys never seen, on `e`.
fn first_checks<E: Engine>(e: &E, iters: u64, tally: &mut Tally) -> Duration {
    let mut key = Key::new();
    let start = Instant::now();
    for idx in 0..iters {
        key.set(idx);
        tally.admitted += u64::from(e.check(&mut key, T0).0);
    }
    let elapsed = start.elapsed();
    tally.total += iters;
    elapsed
}

/// One `new_key` row: `run(iters, tally)` times the first check of `iters` new keys.
fn new_keys(
    g: &mut BenchmarkGroup<'_, WallTime>,
    name: &str,
    mut run: impl FnMut(u64, &mut Tally) -> Duration,
) {
    let mut tally = Tally::default();
    g.bench_function(name, |b| b.iter_custom(|iters| run(iters, &mut tally)));
    report(Want::Admit, &format!("new_key/{name}"), tally);
}

fn bench_new_key(c: &mut Criterion, dir: &Path) {
    let mut g = c.benchmark_group("new_key");
    g.throughput(Throughput::Elements(1));
    let mut sample = 0u32;
    new_keys(&mut g, "tollgate", |iters, tally| {
        sample += 1;
        let path = dir.join(format!("new-key-{sample}.tg"));
        let elapsed = first_checks(&Tollgate::file(&path, admit_limits()), iters, tally);
        let _ = std::fs::remove_file(&path);
        elapsed
    });
    new_keys(&mut g, "tollgate-ahead", |iters, tally| {
        sample += 1;
        let path = dir.join(format!("new-key-{sample}.tg"));
        let engine = Tollgate::file_growing_ahead(&path, admit_limits());
        let elapsed = first_checks(&engine, iters, tally);
        drop(engine);
        let _ = std::fs::remove_file(&path);
        elapsed
    });
    new_keys(&mut g, "tollgate-mem", |iters, tally| {
        first_checks(&Tollgate::memory(admit_limits()), iters, tally)
    });
    new_keys(&mut g, "governor", |iters, tally| {
        first_checks(&governor(admit_quota()), iters, tally)
    });
    new_keys(&mut g, "governor-ahash", |iters, tally| {
        first_checks(&governor_ahash(admit_quota()), iters, tally)
    });
    g.finish();
}

fn bench_clock(c: &mut Criterion) {
    let mut g = c.benchmark_group("clock");
    g.bench_function("tollgate_coarse", |b| {
        let store = Store::open_in_memory(opts()).expect("store");
        b.iter(|| black_box(store.now_ms()))
    });
    g.bench_function("instant_now", |b| b.iter(|| black_box(Instant::now())));
    g.bench_function("governor_default", |b| {
        let clock = DefaultClock::default();
        b.iter(|| black_box(clock.now()))
    });
    g.finish();
}

fn config() -> Criterion {
    Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_millis(1500))
        .sample_size(20)
}

criterion_group! {
    name = benches;
    config = config();
    targets = bench_clock, bench_checks
}
criterion_main!(benches);
