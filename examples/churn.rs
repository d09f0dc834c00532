//! Churn: many distinct tokens and idempotency keys over 48 simulated hours, with a steady
//! live set. Prints the file size against the live set, the figures in docs/PERFORMANCE.md.
//!
//! ```text
//! cargo run --release --example churn              # 10M tokens, 1M idempotency keys
//! cargo run --release --example churn -- 0.1       # a tenth of that
//! ```

use std::time::{Duration, Instant};

use tollgate::{
    Begin, Clock, Fingerprint, IdempotencyKey, Limit, Limits, ManualClock, Options, Store,
    StoredResponse,
};

const T0: u64 = 1_700_000_000_000;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let scale: f64 = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(1.0);
    let tokens = (10_000_000.0 * scale) as u64;
    let records = (1_000_000.0 * scale) as u64;
    let steps = 48 * 60u64; // one step per simulated minute
    let dir = std::env::temp_dir().join(format!("tollgate-churn-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let path = dir.join("churn.tg");
    let clock = ManualClock::new(T0);
    let store = Store::open(
        &path,
        Options::default()
            .clock(clock.clone())
            .compactor_interval(Duration::from_millis(2)),
    )?;
    let limits = Limits::new(&[Limit::per_minute(60), Limit::per_hour(1000)])?;
    let fp = Fingerprint::of("POST", "/api/sms", b"{\"to\":\"+15550100\"}");
    let response =
        StoredResponse::new(201, vec![b'r'; 256]).with_header("content-type", "application/json");
    let start = Instant::now();
    let (mut t_done, mut r_done) = (0u64, 0u64);
    let mut peak_file = 0u64;
    for step in 0..steps {
        let t_target = tokens * (step + 1) / steps;
        while t_done < t_target {
            store.check(format!("tok_{t_done:028}").as_bytes(), &limits, 1)?;
            t_done += 1;
        }
        let r_target = records * (step + 1) / steps;
        while r_done < r_target {
            let x =
                (u128::from(r_done) + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15_F39C_C060_5CED_C835);
            let key = IdempotencyKey::from_uuid(
                uuid::Builder::from_random_bytes(x.to_le_bytes()).into_uuid(),
            )?;
            if let Begin::Started(lease) = store.begin(b"tok_account", &key, &fp)? {
                store.complete(&lease, &response)?;
            }
            r_done += 1;
        }
        clock.advance_ms(60_000);
        if step % 10 == 9 {
            store.expire_now(clock.now_ms());
            store.compact_now();
        }
        peak_file = peak_file.max(std::fs::metadata(&path)?.len());
        if step % 240 == 239 {
            let s = store.stats();
            println!(
                "hour {:>2}: {} tokens, {} records so far; live entries {}, file {:.1} MiB",
                (step + 1) / 60,
                t_done,
                r_done,
                s.entries,
                std::fs::metadata(&path)?.len() as f64 / 1048576.0
            );
        }
    }
    store.expire_now(clock.now_ms());
    store.compact_now();
    let s = store.stats();
    let file = std::fs::metadata(&path)?.len();
    // Live data: one line per window entry, the record entries' lines, and the live response
    // records' lines.
    let windows = s.entries - s.idempotency_records;
    let live = windows * 64 + s.idempotency_records * 128 + s.blob_live_lines * 64;
    println!("\n{tokens} distinct tokens and {records} idempotency keys over 48 simulated hours ({:.1} s)", start.elapsed().as_secs_f64());
    println!(
        "live at the end: {windows} window entries, {} records, {:.1} MiB of live data",
        s.idempotency_records,
        live as f64 / 1048576.0
    );
    println!(
        "file: {:.1} MiB at the end, {:.1} MiB at its peak: {:.2}x the live data",
        file as f64 / 1048576.0,
        peak_file as f64 / 1048576.0,
        file as f64 / live as f64
    );
    println!("expired: {} window entries, {} records; response records moved {}, blob segments recycled {}", s.expired_windows, s.expired_records, s.moved_records, s.recycled_segments);
    drop(store);
    std::fs::remove_dir_all(&dir)?;
    Ok(())
}
