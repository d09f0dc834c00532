//! Quick start: a persistent store under `./tollgate-data`, the ErzyCall policy (60 per minute
//! AND 1000 per hour per API key), and each decision printed as the gateway's headers.
//!
//! Run it twice within a minute: the counts survive the restart.
//!
//! ```text
//! cargo run --release --example quickstart
//! ```

use std::time::Instant;

use tollgate::{Decision, Limit, Limits, Options, Store};

fn headers(d: &Decision) -> String {
    let mut s = format!(
        "X-RateLimit-Limit: {}  X-RateLimit-Remaining: {}  X-RateLimit-Reset: {}",
        d.limit(),
        d.remaining(),
        d.reset()
    );
    if let Some(r) = d.retry_after() {
        s.push_str(&format!("  Retry-After: {r}"));
    }
    s
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let path = "tollgate-data/quickstart.tg";
    let store = Store::open(path, Options::default())?;
    let report = store.open_report();
    println!(
        "opened {path}: {} entries recovered, {} corrupt skipped",
        report.entries,
        report.corrupt_entries + report.corrupt_segments
    );
    let limits = Limits::new(&[Limit::per_minute(60), Limit::per_hour(1000)])?;

    // Two well-behaved tokens and one that bursts past its minute quota.
    for token in ["key_alice", "key_bob"] {
        for _ in 0..3 {
            let d = store.check(token.as_bytes(), &limits, 1)?;
            println!("{token:<10} {}  {}", status(&d), headers(&d));
        }
    }
    let mut admitted = 0;
    let mut first_429 = None;
    for i in 1..=65 {
        let d = store.check(b"key_burst", &limits, 1)?;
        if d.allowed() {
            admitted += 1;
        } else if first_429.is_none() {
            first_429 = Some(i);
        }
        if i <= 2 || i >= 59 {
            println!("key_burst  #{i:<3} {}  {}", status(&d), headers(&d));
        } else if i == 3 {
            println!("key_burst  ...");
        }
    }
    println!(
        "key_burst: {admitted} admitted, first 429 at request {:?} (60/min AND 1000/h)",
        first_429
    );

    // How fast is a check? Time a million of them on one existing key (mostly rejected now).
    let n = 1_000_000;
    let start = Instant::now();
    for _ in 0..n {
        std::hint::black_box(store.check(b"key_burst", &limits, 1)?);
    }
    let per = start.elapsed().as_nanos() as f64 / f64::from(n);
    println!("{n} checks on one key: {per:.1} ns per check");
    let stats = store.stats();
    println!(
        "store: {} entries, {} segment(s), {} bytes on disk",
        stats.entries, stats.segments, stats.bytes
    );
    store.close()?;
    Ok(())
}

fn status(d: &Decision) -> &'static str {
    if d.allowed() {
        "200"
    } else {
        "429"
    }
}
