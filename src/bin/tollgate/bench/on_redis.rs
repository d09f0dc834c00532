//! `tollgate bench` on Redis (feature `redis`): the workload's requests as a fixed window by
//! INCR and PEXPIRE on one connection, and as the sliding-window script a hand-written Redis
//! limiter typically runs (`peers::SLIDING_WINDOW_LUA`) on one connection and on many.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use super::{key_into, percentiles, timed, Config, Row, Workload};
use crate::peers;

/// The three Redis rows, half the seconds of the in-process engines each (at least one).
pub(super) fn bench_redis(
    c: &Config,
    w: &Arc<Workload>,
) -> Result<Vec<Row>, Box<dyn std::error::Error>> {
    let mut rows = Vec::new();
    let secs = (c.seconds / 2.0).max(1.0);
    let script = redis::Script::new(peers::SLIDING_WINDOW_LUA);
    script
        .prepare_invoke()
        .load(&mut peers::connect(&c.redis)?)?;
    for (label, conns, lua) in [
        ("redis INCR+EXPIRE, 1 connection", 1usize, false),
        ("redis sliding-window Lua, 1 connection", 1, true),
        ("redis sliding-window Lua", c.redis_conns, true),
    ] {
        let ops = Arc::new(AtomicU64::new(0));
        let failed = AtomicBool::new(false);
        let (took, samples) = timed(label, conns, secs, ops.clone(), |t, _, deadline, ops| {
            let mut lat = Vec::new();
            let Ok(mut r) = peers::connect(&c.redis) else {
                failed.store(true, Ordering::Relaxed);
                return lat;
            };
            let mut buf = [0u8; 64];
            let mut n = 0u64;
            while Instant::now() < deadline {
                let (token, ri) = w.at(t, conns, n);
                n += 1;
                let route = &w.routes[ri];
                let len = key_into(&mut buf, token, route.name);
                // Separate key spaces: the fixed-window counters are strings, the sliding
                // windows sorted sets.
                let mut kb = Vec::with_capacity(len + 3);
                kb.extend_from_slice(if lua { b"sw:" } else { b"fw:" });
                kb.extend_from_slice(&buf[..len]);
                let key = kb.as_slice();
                let t0 = Instant::now();
                let ok = if lua {
                    let now = std::time::SystemTime::now()
                        .duration_since(std::time::UNIX_EPOCH)
                        .map(|d| d.as_millis() as u64)
                        .unwrap_or(0);
                    let member = format!("{now}-{t}-{n}");
                    script
                        .key(key)
                        .arg(now)
                        .arg(60000)
                        .arg(route.per_minute)
                        .arg(member)
                        .invoke::<i64>(&mut r)
                        .map_err(|e| eprintln!("{label}: {e}"))
                        .is_ok()
                } else {
                    match redis::cmd("INCR").arg(key).query::<i64>(&mut r) {
                        Ok(1) => redis::cmd("PEXPIRE")
                            .arg(key)
                            .arg(60000)
                            .query::<i64>(&mut r)
                            .is_ok(),
                        Ok(_) => true,
                        Err(_) => false,
                    }
                };
                if !ok {
                    failed.store(true, Ordering::Relaxed);
                    break;
                }
                if n.is_multiple_of(8) {
                    lat.push(t0.elapsed().as_nanos() as u64);
                }
                ops.fetch_add(1, Ordering::Relaxed);
            }
            lat
        });
        if failed.load(Ordering::Relaxed) {
            println!("{label}: a command failed; skipped");
            continue;
        }
        let n = ops.load(Ordering::Relaxed);
        let l = percentiles(samples);
        println!(
            "{label}: {n} checks in {took:.1} s = {:.0}/s; latency p50 {} ns, p99 {} ns, p99.9 {} ns",
            n as f64 / took,
            l.0,
            l.1,
            l.2
        );
        rows.push(Row {
            engine: format!("{label} ({conns} conns)"),
            ops: n,
            secs: took,
            lat: l,
        });
    }
    Ok(rows)
}
