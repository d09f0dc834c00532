//! # tollgate
//!
//! An embedded key-value engine for API gateways: sliding-window rate-limit counters (and, in
//! later releases, idempotency entries) in a memory-mapped file, asked on every request "may
//! this token make this request now?".
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
#![deny(clippy::unwrap_used, clippy::expect_used)]
#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used))]
#![warn(unsafe_op_in_unsafe_fn)]

#[cfg(not(target_endian = "little"))]
compile_error!("tollgate's file format is little-endian; big-endian targets are not supported");

mod admin;
mod backend;
mod clock;
mod compactor;
mod decision;
mod error;
mod format;
#[cfg(feature = "gateway")]
pub mod gateway;
pub mod idempotency;
mod index;
mod inspect;
mod limit;
mod raw;
mod segment;
#[cfg(feature = "redis")]
pub mod shared;
mod snapshot;
mod store;
mod sys;
mod window;

pub use admin::{KeyReport, KeyWindow, RecordReport, SubWindow};
pub use backend::Backend;
pub use clock::{Clock, ManualClock, SystemClock};
pub use compactor::PassReport;
pub use decision::{Decision, WindowState};
pub use error::{Error, Result};
pub use idempotency::{
    Begin, Durability, Fingerprint, IdempotencyKey, Lease, Replayed, StoredResponse, MAX_SCOPE_LEN,
};
pub use inspect::{EntryView, RecordState, VerifyReport, WindowView};
pub use limit::{
    Limit, Limits, Mode, MAX_BUCKETED_LIMIT, MAX_EXACT_LIMIT, MAX_WINDOW, MAX_WINDOWS, MIN_WINDOW,
};
pub use snapshot::FileShape;
pub use store::{OnFull, OpenReport, Options, Stats, Store, MAX_KEY_LEN};
