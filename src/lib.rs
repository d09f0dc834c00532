//! # tollgate
//!
//! An embedded key-value engine for API gateways: sliding-window rate-limit counters and
//! idempotency records in a memory-mapped file, asked on every request "may this token make
//! this request now?" and "have I seen this Idempotency-Key?".
//!
//! * **Exact where it matters**: the default window never admits more than its limit in any
//!   interval of the window's length, and releases quota at most one sub-window late
//!   (`docs/ACCURACY.md`); an exact mode logs timestamps for small limits.
//! * **Fast**: a check on a key that exists takes no lock and allocates nothing: a lock-free
//!   index probe and one compare-and-swap per window, on one cache line for two windows and a
//!   32-byte key.
//! * **Persistent**: counters live in a memory-mapped file; a restart (or a crash) keeps every
//!   quota, with the same reset times. Everything read back is checked (crc32) before use.
//! * **Time is injected**: every call has an `_at` form taking `now`, and the clock is
//!   replaceable ([`ManualClock`]).
//!
//! ```
//! use tollgate::{Limit, Limits, Options, Store};
//!
//! let store = Store::open_in_memory(Options::default())?;
//! // 60 per minute AND 1000 per hour, checked together.
//! let limits = Limits::new(&[Limit::per_minute(60), Limit::per_hour(1000)])?;
//! let d = store.check(b"token-abc:/api/pbx", &limits, 1)?;
//! assert!(d.allowed());
//! println!("X-RateLimit-Limit: {}", d.limit());
//! println!("X-RateLimit-Remaining: {}", d.remaining());
//! println!("X-RateLimit-Reset: {}", d.reset());
//! # Ok::<(), tollgate::Error>(())
//! ```

#![deny(missing_docs)]
#![deny(unsafe_code)]
#![deny(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
#![cfg_attr(
    test,
    allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)
)]
#![warn(unsafe_op_in_unsafe_fn)]

#[cfg(not(target_endian = "little"))]
compile_error!("tollgate's file format is little-endian; big-endian targets are not supported");

// The public face: what a gateway meets.
mod admin;
mod backend;
mod clock;
pub mod debit;
mod decision;
mod error;
pub mod idempotency;
mod inspect;
mod key;
mod limit;
mod options;
pub mod permit;
mod snapshot;
mod store;
pub mod version;

// The machinery, one level down: the engine over the storage, and the window arithmetic.
mod engine;
mod storage;
mod window;

// Beside the engine, depending on it and never the other way round.
#[cfg(feature = "redis")]
pub mod fleet;
#[cfg(feature = "gateway")]
pub mod gateway;

pub use admin::{KeyReport, KeyWindow, RecordReport, SubWindow};
pub use backend::Backend;
pub use clock::{Clock, ManualClock, SystemClock};
pub use debit::{Reservation, Reserved};
pub use decision::{Decision, WindowState};
pub use engine::{OpenReport, PassReport};
pub use error::{Error, Result};
pub use idempotency::{
    Begin, Durability, Fingerprint, IdempotencyKey, Lease, Replayed, StoredResponse, MAX_SCOPE_LEN,
};
pub use inspect::{EntryView, RecordState, VerifyReport, WindowView};
pub use key::MAX_KEY_LEN;
pub use limit::{
    Limit, Limits, Mode, MAX_BUCKETED_LIMIT, MAX_EXACT_LIMIT, MAX_METERED_LIMIT, MAX_WINDOW,
    MAX_WINDOWS, MIN_WINDOW,
};
pub use options::{OnFull, Options};
pub use permit::{Permit, MAX_PERMITS};
pub use snapshot::FileShape;
#[doc(hidden)]
pub use storage::hook::{IoEvent, IoHook};
pub use store::{Stats, Store};
pub use version::{Version, VersionBump};
