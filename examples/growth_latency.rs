//! The latency of first checks (new keys) on a file-backed store while it grows, with the
//! compactor growing the file ahead of need and without: the percentiles and the worst
//! check, which is where a growth's two `fdatasync` calls show.
//!
//! ```sh
//! cargo run --release --example growth_latency -- 400000 3
//! ```
//!
//! Runs alternate between the two settings (`rounds` of each), each on a fresh file of
//! `keys` new keys (ErzyCall's pair, 32-byte keys).
//!
//! A third argument, `revisits`, checks that many earlier keys (untimed) after each new one,
//! as a busy gateway's other traffic does: their pages are dirty when the file grows, which is
//! what a growth's sync would have to write back if it synced the whole file.
//!
//! ```sh
//! cargo run --release --example growth_latency -- 1000000 2 4
//! ```

use std::time::{Duration, Instant};

use tollgate::{Limit, Limits, Options, Store};

const T0: u64 = 1_700_000_000_000;

fn run(
    ahead: bool,
    keys: u64,
    revisits: u64,
    dir: &std::path::Path,
) -> Result<Vec<u64>, tollgate::Error> {
    let path = dir.join(format!("growth-{ahead}.tg"));
    let _ = std::fs::remove_file(&path);
    let opts = Options::default()
        .compactor_interval(Duration::from_secs(3600))
        .grow_ahead(ahead);
    let store = Store::open(&path, opts)?;
    let limits = Limits::new(&[Limit::per_minute(60), Limit::per_hour(1000)])?;
    let mut key = *b"growth-latency-key-0000000000000";
    let mut ns = Vec::with_capacity(keys as usize);
    for i in 0..keys {
        key[24..32].copy_from_slice(&i.to_le_bytes());
        let t = Instant::now();
        let d = store.check_at(&key, &limits, 1, T0)?;
        ns.push(t.elapsed().as_nanos() as u64);
        assert!(d.allowed());
        for r in 0..revisits {
            // An earlier key, spread over all of them (a multiplicative hash of the step).
            let j = (i * revisits + r).wrapping_mul(0x9E37_79B9_7F4A_7C15) % (i + 1);
            key[24..32].copy_from_slice(&j.to_le_bytes());
            store.check_at(&key, &limits, 1, T0)?;
        }
    }
    drop(store);
    let _ = std::fs::remove_file(&path);
    ns.sort_unstable();
    Ok(ns)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let keys: u64 = args.next().map_or(Ok(400_000), |s| s.parse())?;
    let rounds: u32 = args.next().map_or(Ok(3), |s| s.parse())?;
    let revisits: u64 = args.next().map_or(Ok(0), |s| s.parse())?;
    let dir = std::env::temp_dir().join(format!("tollgate-growth-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    println!("grow_ahead | mean ns | p50 | p99 | p99.9 | p99.99 | max ns");
    for _ in 0..rounds {
        for ahead in [false, true] {
            let ns = run(ahead, keys, revisits, &dir)?;
            let at = |q: f64| ns[((ns.len() as f64 * q) as usize).min(ns.len() - 1)];
            let mean = ns.iter().sum::<u64>() / ns.len() as u64;
            println!(
                "{ahead} | {mean} | {} | {} | {} | {} | {}",
                at(0.5),
                at(0.99),
                at(0.999),
                at(0.9999),
                ns[ns.len() - 1]
            );
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
