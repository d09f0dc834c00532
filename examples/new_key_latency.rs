//! The latency of first checks (new keys) on a store in anonymous memory, where no file grows:
//! what an index's resizes cost the check that meets them.
//!
//! ```sh
//! cargo run --release --example new_key_latency -- 1000000 3
//! ```
//!
//! Each round checks `keys` new keys (ErzyCall's pair, 32-byte keys) on a fresh store, one
//! thread, explicit time, the compactor off, and prints the percentiles of one check.

use std::time::Instant;

use tollgate::{Limit, Limits, Options, Store};

const T0: u64 = 1_700_000_000_000;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let keys: u64 = args.next().map_or(Ok(1_000_000), |s| s.parse())?;
    let rounds: u32 = args.next().map_or(Ok(3), |s| s.parse())?;
    if keys == 0 {
        return Err("keys must be at least 1".into());
    }
    let limits = Limits::new(&[Limit::per_minute(60), Limit::per_hour(1000)])?;
    println!("mean ns | p50 | p99 | p99.9 | p99.99 | max ns | time in checks over 10 us");
    for _ in 0..rounds {
        let store = Store::open_in_memory(Options::default().compactor(false))?;
        let mut ns = Vec::with_capacity(keys as usize);
        let mut key = *b"new-key-latency-0000000000000000";
        for i in 0..keys {
            let mut n = i;
            for b in key[16..].iter_mut().rev() {
                *b = b'0' + (n % 10) as u8;
                n /= 10;
            }
            let t = Instant::now();
            let d = store.check_at(&key, &limits, 1, T0)?;
            ns.push(t.elapsed().as_nanos() as u64);
            assert!(d.allowed(), "a new key is admitted");
        }
        let slow: u64 = ns.iter().filter(|&&n| n > 10_000).sum();
        let mean = ns.iter().sum::<u64>() / keys;
        ns.sort_unstable();
        let at = |q: f64| ns[((ns.len() as f64 * q) as usize).min(ns.len() - 1)];
        println!(
            "{mean} | {} | {} | {} | {} | {} | {:.1} ms",
            at(0.5),
            at(0.99),
            at(0.999),
            at(0.9999),
            ns.last().copied().unwrap_or(0),
            slow as f64 / 1e6
        );
    }
    Ok(())
}
