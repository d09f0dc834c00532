//! What a day of idempotency records costs the checks: 140 000 window keys (one 60-a-minute
//! window each, `tok_…:/api/pbx/*`, 43 bytes) checked on a Zipf sequence (s = 1.1, as the
//! main job's tokens), in a file-backed store that also holds N completed idempotency
//! records (each with the main job's 200-byte response). Prints the time per check in three
//! rounds of 8M checks.
//!
//! ```sh
//! cargo run --release --example checks_beside_records -- 0        # no record
//! cargo run --release --example checks_beside_records -- 600000   # what the main job leaves
//! ```
//!
//! Time is explicit (`check_at`, `begin_at`, `complete_at`; 1 µs per check) and the compactor
//! is off, so that every run checks the same windows in the same states and only the
//! records differ. The key bytes are formatted into a reused buffer from the sequence's
//! index, so that the harness finds no key through memory of its own.
//!
//! `NO_HUGE_PAGES=1`: the store's file without huge pages (`Options::huge_pages(false)`), to
//! price the TLB misses they save against the checks.

use std::time::Instant;

use tollgate::{Begin, Fingerprint, IdempotencyKey, Limit, Limits, Options, Store, StoredResponse};

const KEYS: usize = 140_000;
const T0: u64 = 1_700_000_000_000;
const CHECKS: usize = 8_000_000;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let records: usize = match std::env::args().nth(1) {
        Some(n) => n.parse()?,
        None => 0,
    };
    let dir = std::env::temp_dir().join(format!("tollgate-records-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let path = dir.join("store.tg");
    let huge = std::env::var_os("NO_HUGE_PAGES").is_none();
    let store = Store::open(&path, Options::default().compactor(false).huge_pages(huge))?;
    let limits = Limits::new(&[Limit::per_minute(60)])?;
    let mut buf = [0u8; 64];
    for i in 0..KEYS {
        let len = key_into(&mut buf, i);
        store.check_at(&buf[..len], &limits, 1, T0)?;
    }
    let response =
        StoredResponse::new(201, vec![b'{'; 200]).with_header("content-type", "application/json");
    let fp = Fingerprint::from_bytes([0x5A; 32]);
    for i in 0..records {
        let x = (i as u128 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15_F39C_C060_5CED_C835);
        let key = IdempotencyKey::from_uuid(
            uuid::Builder::from_random_bytes(x.to_le_bytes()).into_uuid(),
        )?;
        let len = key_into(&mut buf, i % KEYS);
        if let Begin::Started(lease) = store.begin_at(&buf[..len], &key, &fp, T0)? {
            store.complete_at(&lease, &response, T0)?;
        }
    }
    let seq = zipf_sequence(KEYS, 1.1, 1 << 20);
    for round in 0..3 {
        let start = Instant::now();
        let mut admitted = 0u64;
        for i in 0..CHECKS {
            let len = key_into(&mut buf, seq[i % seq.len()] as usize);
            let now = T0 + 1_000 + ((round * CHECKS + i) / 1_000) as u64;
            admitted += u64::from(store.check_at(&buf[..len], &limits, 1, now)?.allowed());
        }
        println!(
            "records {records}{} round {round}: {:.1} ns/check, {:.1}% admitted",
            if huge { "" } else { " (no huge pages)" },
            start.elapsed().as_nanos() as f64 / CHECKS as f64,
            admitted as f64 * 100.0 / CHECKS as f64
        );
    }
    drop(store);
    std::fs::remove_dir_all(&dir)?;
    Ok(())
}

/// `n` ranks drawn from a Zipf distribution of exponent `s` over `keys` keys.
fn zipf_sequence(keys: usize, s: f64, n: usize) -> Vec<u32> {
    let mut acc = 0.0;
    let cdf: Vec<f64> = (0..keys)
        .map(|k| {
            acc += 1.0 / ((k + 1) as f64).powf(s);
            acc
        })
        .collect();
    let mut x = 0x2545_F491_4F6C_DD1Du64;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let u = (x >> 11) as f64 / (1u64 << 53) as f64 * acc;
            cdf.partition_point(|&c| c < u) as u32
        })
        .collect()
}

/// The key of rank `rank`: `tok_` and 28 hex digits of a spread of the rank, then the route.
fn key_into(buf: &mut [u8; 64], rank: usize) -> usize {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let t = (rank as u64).wrapping_mul(7919);
    buf[..4].copy_from_slice(b"tok_");
    for (k, b) in buf[4..32].iter_mut().enumerate() {
        let shift = (27 - k) * 4;
        *b = if shift < 64 {
            HEX[((t >> shift) & 15) as usize]
        } else {
            b'0'
        };
    }
    buf[32..43].copy_from_slice(b":/api/pbx/*");
    43
}
