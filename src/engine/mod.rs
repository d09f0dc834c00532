//! The engine: windows, idempotency records, versions and concurrency permits kept in entries
//! of the mapped segments.
//!
//! One [`Core`] per open store holds the state (`core.rs`); each part of the engine is a file
//! that adds its methods to it:
//!
//! | file | what it does |
//! |---|---|
//! | `core.rs` | the state every part shares, and its construction |
//! | `seen.rs` | the newest-time word in the header page (clock steps back, expiry bound) |
//! | `lookup.rs` | key → entry: the lock-free probe, insert under a stripe lock, room checks |
//! | `homing.rs` | window entries in their home slots: probe, claim, split, move home |
//! | `entry.rs` | the window entry codec: write, read its layout, check it at open |
//! | `check.rs` | the check path: count in every window all or nothing, peek, decisions |
//! | `moves.rs` | moving an entry to a new set of windows (freeze, copy, switch) |
//! | `takeback.rs` | taking back a refused request's cost, in the entry's new copy if it moved |
//! | `recovery.rs` | rebuilding the index from the segments when a file is opened |
//! | `records.rs` | the idempotency state machine on record entries and response blobs |
//! | `debit.rs` | reserve an estimate, settle the actual cost: give back or overdraw |
//! | `versions.rs` | version entries: read, bump, compare-and-bump (`If-Match`) |
//! | `permits.rs` | concurrency permit entries: acquire, release, count, unlink |
//! | `expire.rs` | expiry passes: unlink what is past its window or TTL |
//! | `blobs.rs` | response compaction and recycling of blob segments |
//! | `compactor.rs` | the background thread that runs expiry and compaction |
//! | `counters.rs` | the bookkeeping the store and the compactor share |
//! | `inspect.rs` | walking live entries for `visit`, `verify` and the command |
//! | `admin.rs` | one key at a time: inspect or delete a key's counters or one record |
//!
//! The public [`Store`](crate::Store) is a short facade over this module.

mod admin;
mod blobs;
mod check;
mod compactor;
mod core;
mod counters;
mod debit;
mod entry;
mod expire;
mod homing;
mod inspect;
mod lookup;
mod moves;
mod permits;
mod records;
mod recovery;
mod seen;
mod takeback;
mod versions;

pub(crate) use self::compactor::CompactorHandle;
pub(crate) use self::core::{Core, Parts};
pub use self::expire::PassReport;
pub use self::recovery::OpenReport;
