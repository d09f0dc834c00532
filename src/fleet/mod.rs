//! Beyond one machine: fleet-wide quotas and idempotency on Redis or Valkey (feature `redis`).
//!
//! Two ways to share, beside the embedded [`Store`](crate::Store) (see `docs/DISTRIBUTED.md`):
//!
//! * [`RedisStore`], the **shared** mode: every check and every idempotency transition is one
//!   Lua script on the server, one round trip. The fleet never admits more than the limit
//!   (the same bound as one embedded store), at the price of a network round trip per request.
//! * [`HybridStore`], the **hybrid** mode: every node answers from its embedded store and a
//!   background thread reconciles the counts with the server in batches. Decisions cost what
//!   an embedded check costs; the fleet may admit more than the limit, by at most
//!   `(N - 1) × batch` units per window for N nodes (documented and tested).
//!
//! Versions (`If-Match`) and concurrency permits are kept on the server in both modes
//! (`coordination.rs`): they must be exact across the fleet. So are reservations
//! ([`crate::debit`], `debit.rs`): reserving and settling are one script each on the server in
//! both modes.
//!
//! Both implement [`Backend`](crate::Backend), as the embedded store does, so a gateway picks a
//! mode by configuration; `tests/conformance.rs` runs the same scenarios against all of them.
//!
//! Time is always the caller's: each script gets `now` as an argument and the server's clock
//! is used only to expire keys, with a generous margin.

mod conn;
mod coordination;
mod debit;
mod hybrid;
mod keys;
mod ledger;
mod options;
mod store;

pub use hybrid::{HybridStats, HybridStore};
pub use options::RedisOptions;
pub use options::{HybridOptions, Unreachable};
pub use store::RedisStore;
