//! Instructions per check, for `valgrind --tool=callgrind`: a fixed number of checks on one
//! hot key of a file-backed store, on the path named on the command line, so that the count
//! divided by the checks is the path's cost (the store's open and setup are the same for every
//! path and are measured alone with `setup`).
//!
//! ```sh
//! cargo build --release --example check_cost
//! for p in setup admit reject reject-spread; do
//!   valgrind --tool=callgrind --callgrind-out-file=/tmp/cg.$p \
//!     target/release/examples/check_cost $p 100000
//! done
//! valgrind --tool=callgrind --callgrind-out-file=/tmp/cg.admit-same \
//!   target/release/examples/check_cost admit-same 4000
//! # (path - setup) / checks: instructions per check
//! ```
//!
//! * `admit`: ErzyCall's pair of windows (60/min and 1000/h) kept under its limits: time moves
//!   on 4 s per check, so every check starts a new sub-window of the minute window and about
//!   one in fourteen one of the hour window (the rotation path);
//! * `admit-same`: 4095/min and 16 383/h (the largest limits whose windows keep the packed
//!   layout, with no base word) and a clock that stands still, so every check is counted in
//!   the head's sub-window (the one-compare-and-swap path); every 4000 checks the clock jumps
//!   an hour on, so that both windows start afresh (one check in 4000 rotates);
//! * `admit-second`: 65 535/s and 65 535/min (the limits issue 15's cost comparison with
//!   format 1 uses) with 50 ms between checks, as a key of the criterion bench's 1M-key admit
//!   rows sees them: every check steps the per-second window about three sub-windows on (a
//!   rotation of a wide window, with its base word) and one in nineteen the minute window;
//! * `chain-allowed`, `chain-remaining`: `admit-same` with each check's time depending on
//!   the previous check's answer (whether admitted, or `remaining()`): its latency to that
//!   answer, not its throughput (wall time; the same instructions as `admit-same`);
//! * `admit-exact`: an exact window (5 a minute, Zorio's login route), every check admitted
//!   and its ring rewritten under the entry's lock;
//! * `reject`: the pair, drained by a burst first, then checked by a client that keeps
//!   retrying, 0.5 ms apart, for under a minute (every check refused);
//! * `reject-now`: the same burst, then refused with the clock still (in the head's
//!   sub-window, as the criterion bench's at-limit rows);
//! * `reject-spread`: the same after a client that spent its minute's quota one request a
//!   second (its counts spread over the ring), retrying for under a second.
//!
//! * `begin`: N idempotency records begun on new keys (the scope is the hot key), as a
//!   keyed POST's first `begin` makes them;
//! * `begin-complete`: the same, each completed with a 200-byte response (the main job's).
//!
//! * `footprint`: N keys (32 bytes each) checked once on ErzyCall's pair: the file's bytes and
//!   the growth of the resident set per key (the mapped pages and the in-memory index).
//! * `open`: the same N keys, the store closed, then opened again: the time the open takes
//!   (reading and checking every entry, rebuilding the index), best of three opens, and the
//!   growth of the resident set per key across each open (the pages read, the index). With
//!   `CHECK_COST_NO_CENSUS=1` each open finds no census, as after a crash.
//!
//! Valgrind counts instructions, not time: the figures repeat for the same binary whatever
//! else the machine does. docs/PERFORMANCE.md has them.

use std::hint::black_box;

use tollgate::{Begin, Fingerprint, IdempotencyKey, Limit, Limits, Options, Store, StoredResponse};

const T0: u64 = 1_700_000_000_000;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let path = args.next().unwrap_or_else(|| "admit".into());
    let n: u64 = args.next().map_or(Ok(100_000), |s| s.parse())?;
    let dir = std::env::temp_dir().join(format!("tollgate-check-cost-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    if path == "open" {
        let res = open_time(&dir, n);
        std::fs::remove_dir_all(&dir)?;
        return res;
    }
    // `CHECK_COST_MEMORY=1`: the same store in anonymous memory, to compare.
    let store = if std::env::var_os("CHECK_COST_MEMORY").is_some() {
        Store::open_in_memory(Options::default().compactor(false))?
    } else {
        // `CHECK_COST_HOME=1`: with home slots (`Options::home_slots`).
        Store::open(dir.join("store.tg"), options())?
    };
    let started = std::time::Instant::now();
    let pair = Limits::new(&[Limit::per_minute(60), Limit::per_hour(1000)])?;
    let large = Limits::new(&[Limit::per_minute(4095), Limit::per_hour(16_383)])?;
    // `CHECK_COST_KEY_LEN=41`: a key of another length (1 to 64 bytes), as the main job's
    // `tok_…:route` keys are (a length that is not a multiple of 8 has a partial last word).
    let full = *b"tok_0123456789abcdef0123456789ab:/api/pbx/calls/click-to-call/xy";
    let len = std::env::var("CHECK_COST_KEY_LEN")
        .ok()
        .and_then(|l| l.parse::<usize>().ok())
        .filter(|l| (1..=full.len()).contains(l))
        .unwrap_or(32);
    let key = &full[..len];
    // The key exists on every path, as a gateway's busy token does.
    store.check_at(key, &large, 1, T0)?;
    store.check_at(key, &pair, 1, T0)?;
    let mut admitted = 0u64;
    match path.as_str() {
        "setup" => {}
        "admit" => {
            for i in 0..n {
                admitted += u64::from(store.check_at(key, &pair, 1, T0 + i * 4_000)?.allowed());
            }
        }
        "admit-second" => {
            let second = Limits::new(&[Limit::per_second(65_535), Limit::per_minute(65_535)])?;
            for i in 0..n {
                admitted += u64::from(store.check_at(key, &second, 1, T0 + i * 50)?.allowed());
            }
        }
        "admit-same" => {
            for i in 0..n {
                // Every 4000 checks, a time more than an hour on: both windows start afresh.
                let t = T0 + (i / 4000) * 3_700_000;
                admitted += u64::from(store.check_at(key, &large, 1, t)?.allowed());
            }
        }
        "chain-allowed" | "chain-remaining" => {
            // `admit-same`, each check's time depending on the previous check's answer (its
            // bool, or its `remaining()`, the header a gateway writes): the latency of a
            // check to that answer, as the criterion bench's chained rows see it. `zero` is 0
            // at run time, which the compiler cannot know: the dependency stays.
            let zero = black_box(0u64);
            let mut prev = 0u64;
            for i in 0..n {
                let t = T0 + (i / 4000) * 3_700_000 + (prev & zero);
                let d = store.check_at(key, &large, 1, t)?;
                admitted += u64::from(d.allowed());
                prev = if path == "chain-allowed" {
                    u64::from(d.allowed())
                } else {
                    u64::from(d.remaining())
                };
            }
        }
        "admit-exact" => {
            // Zorio's login route: 5 a minute, exact, one check every 12.001 s (every check
            // admitted, and each rewrites the ring under the entry's lock).
            let login = Limits::new(&[Limit::per_minute(5).exact()])?;
            for i in 0..n {
                admitted += u64::from(store.check_at(key, &login, 1, T0 + i * 12_001)?.allowed());
            }
        }
        "reject" => {
            while store.check_at(key, &pair, 1, T0)?.allowed() {}
            for i in 0..n {
                admitted += u64::from(store.check_at(key, &pair, 1, T0 + i / 2)?.allowed());
            }
        }
        "footprint" => {
            let rss0 = rss_bytes();
            admitted = fill(&store, &pair, n)?;
            let file = std::fs::metadata(dir.join("store.tg")).map_or(0, |m| m.len());
            eprintln!(
                "footprint: {n} keys, file {:.1} B/key, RSS growth {:.1} B/key",
                file as f64 / n as f64,
                rss_bytes().saturating_sub(rss0) as f64 / n as f64
            );
        }
        "reject-now" => {
            while store.check_at(key, &pair, 1, T0)?.allowed() {}
            for _ in 0..n {
                admitted += u64::from(store.check_at(key, &pair, 1, T0)?.allowed());
            }
        }
        "reject-spread" => {
            let mut t = T0 + 60_000;
            while store.check_at(key, &pair, 1, t)?.allowed() {
                t += 1_000;
            }
            for i in 0..n {
                admitted += u64::from(store.check_at(key, &pair, 1, t + i / 200)?.allowed());
            }
        }
        "begin" | "begin-complete" => {
            let fp = Fingerprint::from_bytes([0x5A; 32]);
            let resp = StoredResponse::new(201, vec![b'{'; 200])
                .with_header("content-type", "application/json");
            for i in 0..n {
                if let Begin::Started(lease) = store.begin_at(key, &idempotency_key(i)?, &fp, T0)? {
                    admitted += 1;
                    if path == "begin-complete" {
                        store.complete_at(&lease, &resp, T0)?;
                    }
                }
            }
        }
        other => {
            return Err(format!(
                "unknown path {other:?} (setup, admit, admit-second, admit-same, admit-exact, chain-allowed, chain-remaining, reject, reject-now, reject-spread, begin, begin-complete, footprint, open)"
            )
            .into())
        }
    }
    black_box(admitted);
    eprintln!(
        "{path}: {n} checks, {admitted} admitted, {:.1} ns per check (setup included)",
        started.elapsed().as_nanos() as f64 / n.max(1) as f64
    );
    drop(store);
    std::fs::remove_dir_all(&dir)?;
    Ok(())
}

/// The `i`-th of a sequence of distinct random-looking UUID v4 keys (built in a few
/// instructions, inside the measured loop).
fn idempotency_key(i: u64) -> Result<IdempotencyKey, tollgate::Error> {
    let x = (u128::from(i) << 64 | 7).wrapping_mul(0x9E37_79B9_7F4A_7C15_F39C_C060_5CED_C835);
    IdempotencyKey::from_uuid(uuid::Builder::from_random_bytes(x.to_le_bytes()).into_uuid())
}

/// The file-backed store's options: `CHECK_COST_HOME=1` for home slots
/// (`Options::home_slots`), `CHECK_COST_B=32` for another number of sub-windows per window
/// (`Options::sub_windows`).
fn options() -> Options {
    let home = std::env::var_os("CHECK_COST_HOME").is_some();
    let opts = Options::default().compactor(false).home_slots(home);
    match std::env::var("CHECK_COST_B")
        .ok()
        .and_then(|b| b.parse().ok())
    {
        Some(b) => opts.sub_windows(b),
        None => opts,
    }
}

/// Check `n` distinct 32-byte keys once each on `limits`; how many were admitted.
fn fill(store: &Store, limits: &Limits, n: u64) -> Result<u64, tollgate::Error> {
    let mut k = *b"tok_0123456789abcdef0123456789ab";
    let mut admitted = 0;
    for i in 0..n {
        let hex = format!("{:028x}", i.wrapping_mul(0x9E37_79B9_7F4A_7C15));
        k[4..].copy_from_slice(hex.as_bytes());
        admitted += u64::from(store.check_at(&k, limits, 1, T0)?.allowed());
    }
    Ok(admitted)
}

/// `open`: fill a store with `n` keys, close it, and time three opens of the file.
fn open_time(dir: &std::path::Path, n: u64) -> Result<(), Box<dyn std::error::Error>> {
    let path = dir.join("store.tg");
    let pair = Limits::new(&[Limit::per_minute(60), Limit::per_hour(1000)])?;
    let store = Store::open(&path, options())?;
    let started = std::time::Instant::now();
    fill(&store, &pair, n)?;
    let filled = started.elapsed();
    drop(store);
    let len = std::fs::metadata(&path).map_or(0, |m| m.len());
    let mut best = std::time::Duration::MAX;
    // `CHECK_COST_NO_CENSUS=1`: each open finds the file as a crash leaves it, without the
    // census (FORMAT.md: 16 bytes at 80, zero), so the index cannot be sized first and grows
    // as the entries come.
    let no_census = std::env::var("CHECK_COST_NO_CENSUS").is_ok_and(|v| v == "1");
    for _ in 0..3 {
        if no_census {
            use std::os::unix::fs::FileExt;
            let f = std::fs::OpenOptions::new().write(true).open(&path)?;
            f.write_all_at(&[0u8; 16], 80)?;
        }
        let rss0 = rss_bytes();
        let started = std::time::Instant::now();
        let store = Store::open(&path, options())?;
        let took = started.elapsed();
        let grown = rss_bytes().saturating_sub(rss0);
        best = best.min(took);
        let report = store.open_report();
        eprintln!(
            "open: {n} keys, file {:.1} MiB, {} entries loaded, open {:.3} s (fill {:.1} s), RSS growth {:.1} B/key",
            len as f64 / (1 << 20) as f64,
            report.entries,
            took.as_secs_f64(),
            filled.as_secs_f64(),
            grown as f64 / n.max(1) as f64
        );
        drop(store);
    }
    eprintln!("open: best {:.3} s", best.as_secs_f64());
    Ok(())
}

/// The resident set of this process, in bytes (0 if /proc says nothing).
fn rss_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| s.split_whitespace().nth(1)?.parse::<u64>().ok())
        .map_or(0, |pages| pages * 4096)
}
