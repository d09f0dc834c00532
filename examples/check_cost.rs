//! Instructions per check, for `valgrind --tool=callgrind`: a fixed number of checks on one
//! hot key of a file-backed store, on the path named on the command line, so that the count
//! divided by the checks is the path's cost (the store's open and setup are the same for every
//! path and are measured alone with `setup`).
//!
//! ```sh
//! cargo build --release --example check_cost
//! for p in setup admit reject; do
//!   valgrind --tool=callgrind --callgrind-out-file=/tmp/cg.$p \
//!     target/release/examples/check_cost $p 100000
//! done
//! # (admit - setup) / 100000 and (reject - setup) / 100000: instructions per check
//! ```
//!
//! * `admit`: ErzyCall's pair of windows (60/min and 1000/h) kept under its limits: time moves
//!   on 4 s per check, so every check starts a new sub-window of the minute window and about
//!   one in fourteen one of the hour window (the rotation path);
//! * `admit-same`: a large quota (100 000/min and 1 000 000/h) and a clock that moves on 1 ms
//!   per check, so all but one check in 938 is counted in the head's sub-window (the
//!   one-compare-and-swap path);
//! * `reject`: the pair, drained by a burst first, then checked by a client that keeps
//!   retrying, 0.5 ms apart, for under a minute (every check refused);
//! * `reject-spread`: the same after a client that spent its minute's quota one request a
//!   second (its counts spread over the ring), retrying for under a second.
//!
//! Valgrind counts instructions, not time: the figures repeat for the same binary whatever
//! else the machine does. docs/PERFORMANCE.md has them.

use std::hint::black_box;

use tollgate::{Limit, Limits, Options, Store};

const T0: u64 = 1_700_000_000_000;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let path = args.next().unwrap_or_else(|| "admit".into());
    let n: u64 = args.next().map_or(Ok(100_000), |s| s.parse())?;
    let dir = std::env::temp_dir().join(format!("tollgate-check-cost-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let store = Store::open(dir.join("store.tg"), Options::default().compactor(false))?;
    let pair = Limits::new(&[Limit::per_minute(60), Limit::per_hour(1000)])?;
    let large = Limits::new(&[Limit::per_minute(100_000), Limit::per_hour(1_000_000)])?;
    let key = b"tok_0123456789abcdef0123456789ab";
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
        "admit-same" => {
            for i in 0..n {
                admitted += u64::from(store.check_at(key, &large, 1, T0 + i)?.allowed());
            }
        }
        "reject" => {
            while store.check_at(key, &pair, 1, T0)?.allowed() {}
            for i in 0..n {
                admitted += u64::from(store.check_at(key, &pair, 1, T0 + i / 2)?.allowed());
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
        other => {
            return Err(format!(
                "unknown path {other:?} (setup, admit, admit-same, reject, reject-spread)"
            )
            .into())
        }
    }
    black_box(admitted);
    eprintln!("{path}: {n} checks, {admitted} admitted");
    drop(store);
    std::fs::remove_dir_all(&dir)?;
    Ok(())
}
