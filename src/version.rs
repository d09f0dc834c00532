//! Versions for compare-and-set: a number per key that only grows, and the epoch of the entry
//! that holds it.
//!
//! A gateway answers `If-Match` with them (`docs/GATEWAY.md`): a write naming the current
//! version bumps it, a write naming an older one is refused (HTTP 412). They live in the
//! backend, not in a gateway's memory, so every node of a fleet and every restart agree on
//! them: the embedded [`Store`](crate::Store) keeps them in entries of their own kind
//! (`docs/FORMAT.md`, kind 3), `fleet::RedisStore` in one hash per key, bumped by one script.
//!
//! **Why an epoch.** A version is compared by equality, so a number that went back (a store
//! file deleted, a Redis key evicted) could match a client's old tag although the resource
//! changed. Each version entry draws a random epoch when it is created and keeps it for its
//! life: a version forgotten and created again has another epoch, and no tag issued before
//! matches it. Versions have no TTL: an entry is created by the first read or write of its
//! key and lives as long as the store.

use std::sync::atomic::{AtomicU64, Ordering};

/// The version of one key: the epoch of the entry that holds it and its number.
///
/// A key never read nor written gets an entry (a fresh epoch, number 0) when it is first
/// asked for; every bump adds one to the number.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Version {
    /// Random, drawn when the key's entry was created (never 0).
    pub epoch: u64,
    /// Bumps since then.
    pub number: u64,
}

/// What a compare-and-bump found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VersionBump {
    /// The expected version was the current one: this is the new one.
    Bumped(Version),
    /// The key is at another version (this one): nothing changed.
    Stale(Version),
}

/// A random word, never 0: the epoch of a new version entry, or a concurrency permit's
/// stamp in Redis. Drawn from a fresh per-call `ahash` state (random keys from the OS at
/// first use) over the time and a process-wide counter, as the old in-memory versions drew
/// their epoch.
pub(crate) fn random_word() -> u64 {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    ahash::RandomState::new().hash_one((now, n)) | 1
}
