//! Helpers shared by the integration tests.
#![allow(dead_code)]

use std::path::PathBuf;

/// A fixed, realistic "now": 2023-11-14T22:13:20Z.
pub const T0: u64 = 1_700_000_000_000;

/// A temporary directory and a store path inside it.
pub fn temp_store() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("store.tg");
    (dir, path)
}

/// Exact sliding-log reference: sum of costs admitted in `(t - lookback, t]`.
pub fn used_in(log: &[(u64, u32)], t: u64, lookback: u64) -> u64 {
    log.iter()
        .filter(|&&(at, _)| at <= t && at + lookback > t)
        .map(|&(_, c)| u64::from(c))
        .sum()
}

/// The largest sum of costs in any interval of length `w` (intervals ending at an admission).
pub fn max_in_any_window(log: &[(u64, u32)], w: u64) -> u64 {
    log.iter()
        .map(|&(t, _)| used_in(log, t, w))
        .max()
        .unwrap_or(0)
}
