//! Finding the Redis / Valkey server the shared-mode tests run against.
//!
//! The address is `TOLLGATE_REDIS_URL` (default `redis://127.0.0.1:6379`). When no server
//! answers, a test prints why it is skipped and returns; when `CI` is set it fails instead, so
//! a CI run without a server can never pass silently.
#![allow(dead_code)]

use std::sync::atomic::{AtomicU64, Ordering};

use tollgate::shared::{RedisOptions, RedisStore};

/// The server's URL, or `None` (after printing why) when the test should be skipped.
pub fn url(test: &str) -> Option<String> {
    let url =
        std::env::var("TOLLGATE_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
    let probe = RedisStore::open(&url, RedisOptions::default()).and_then(|s| s.ping());
    match probe {
        Ok(()) => Some(url),
        Err(e) => {
            if std::env::var("CI").is_ok_and(|v| !v.is_empty() && v != "false") {
                panic!(
                    "CI is set but no Redis server answers at {url} ({e}): `.ci/run` starts one"
                );
            }
            eprintln!(
                "SKIPPED {test}: no Redis server at {url} ({e}). Start one with \
                 `.ci/redis-server.sh start` or set TOLLGATE_REDIS_URL."
            );
            None
        }
    }
}

/// A key prefix no other test (or earlier run) uses.
pub fn prefix(test: &str) -> String {
    static N: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!(
        "tgtest-{test}-{}-{nanos}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}
