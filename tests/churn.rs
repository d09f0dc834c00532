//! File size under churn: freed space is reused and the file stays bounded.
//!
//! Kept in a test binary of its own: crossbeam-epoch is process-wide, and guards held by other
//! tests' threads would delay the reuse these tests measure.

mod common;

use std::time::Duration;

use common::{temp_store, T0};
use tollgate::{
    Begin, Clock, Fingerprint, IdempotencyKey, Limit, Limits, ManualClock, Options, Store,
    StoredResponse,
};

/// The two tests measure reuse, which a guard pinned by the other test's threads delays: run
/// them one at a time.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn minute() -> Limits {
    Limits::new(&[Limit::per_minute(10)]).unwrap()
}

fn idem_key(i: u64) -> IdempotencyKey {
    let x = (u128::from(i) + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15_F39C_C060_5CED_C835);
    IdempotencyKey::from_uuid(uuid::Builder::from_random_bytes(x.to_le_bytes()).into_uuid())
        .unwrap()
}

#[test]
fn freed_space_is_reused_so_the_file_stops_growing() {
    let _one = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let (_dir, path) = temp_store();
    let store = Store::open(
        &path,
        Options::default().compactor(false).segment_size_log2(16),
    )
    .unwrap();
    let limits = minute();
    let mut t = T0;
    let mut sizes = Vec::new();
    for round in 0..20u64 {
        for i in 0..2_000u64 {
            store
                .check_at(format!("r{round}-{i}").as_bytes(), &limits, 1, t)
                .unwrap();
        }
        t += 10 * 60_000;
        store.expire_now(t);
        sizes.push(std::fs::metadata(&path).unwrap().len());
    }
    // The live set is one round (2000 keys, about two 64 KiB segments). Without reuse the file
    // would grow by two segments a round; with it, it levels off. (A reader pinned by another
    // test thread can delay a release by a pass: allow one segment of slack.)
    assert!(
        sizes[19] <= sizes[3] + 65_536,
        "file kept growing: {sizes:?}"
    );
    assert_eq!(store.stats().entries, 0);
}

#[test]
fn churn_keeps_the_file_bounded() {
    let _one = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    // A scaled-down version of the churn run in docs/PERFORMANCE.md: a steady live set of
    // 2,000 tokens and 200 idempotency records, 200,000 distinct tokens and 20,000 records over
    // 48 simulated hours, with expire_now and compact_now every step.
    let (_dir, path) = temp_store();
    let clock = ManualClock::new(T0);
    let store = Store::open(
        &path,
        Options::default()
            .clock(clock.clone())
            .segment_size_log2(18)
            // Expiry and compaction are driven below; without the background thread only this
            // thread pins the epoch, so freed space comes back at once and the bound does not
            // depend on how busy the machine is (examples/churn.rs runs with the thread).
            .compactor(false)
            .idempotency_ttl(Duration::from_secs(600)),
    )
    .unwrap();
    let limits = Limits::new(&[Limit::per_minute(60), Limit::per_hour(1000)]).unwrap();
    let fp = Fingerprint::of("POST", "/sms", b"{}");
    let steps = 100u64;
    let step_ms = 48 * 3_600_000 / steps;
    let live_bytes = |s: &tollgate::Stats| {
        (s.entries - s.idempotency_records) * 64
            + s.idempotency_records * 128
            + s.blob_live_lines * 64
    };
    let mut peak_live = 0u64;
    for step in 0..steps {
        for i in 0..2_000u64 {
            store
                .check(format!("tok-{step}-{i}").as_bytes(), &limits, 1)
                .unwrap();
        }
        for i in 0..200u64 {
            if let Begin::Started(l) = store
                .begin(b"tok", &idem_key(step * 1_000 + i), &fp)
                .unwrap()
            {
                store
                    .complete(&l, &StoredResponse::new(200, vec![1u8; 900]))
                    .unwrap();
            }
        }
        peak_live = peak_live.max(live_bytes(&store.stats()));
        clock.advance_ms(step_ms);
        store.expire_now(clock.now_ms());
        store.compact_now();
    }
    let s = store.stats();
    let file = std::fs::metadata(&path).unwrap().len();
    // The live set peaks at about 8,000 window entries (an hour window keeps a key for up to
    // 90 minutes: four steps of keys) and 200 records with their responses. The file must stay
    // within a small multiple of that, plus a few partly used segments (one per size class and
    // the blob segment being filled).
    let bound = 4 * peak_live + 8 * (1 << 18);
    eprintln!("churn: file {file} B, peak live {peak_live} B, bound {bound} B");
    assert!(
        file <= bound,
        "file {file} B for a peak of {peak_live} B live: {s:?}"
    );
}
