//! Sequences of operations on an in-memory store and a file store, against a reference model.
//!
//! Both stores get the same operations at the same time (the file store through a
//! `ManualClock` and `check`/`peek`, the in-memory one through `check_at`/`peek_at`) and must
//! give equal decisions. The file store places window entries in home slots, the in-memory one
//! behind the index only. The file store can be closed (or just dropped) and reopened at any
//! point, with other `sub_windows` options (the file keeps its own); its counters must survive.
//! The background compactor is off (it would run at its own pace); an `Expire` operation runs
//! `expire_now` on both stores instead.
//!
//! Every key is checked against one fixed limit set (keys are prefixed by their set). The model
//! keeps, per window of every key, the log of admitted costs and the window's *effective time*
//! (see [`WindowModel`]), and asserts after every operation:
//!
//! * exact windows: the decision is the exact sliding log's (admit iff the costs admitted in
//!   `(t - W, t]` plus the cost fit the limit), `used` is that sum, and the retry time is the
//!   first millisecond at which the log admits;
//! * bucketed windows (`docs/ACCURACY.md`): no interval of length `W` ever holds more than the
//!   limit; `used` lies between the log's sum over `W` and over `W + release_delay`; a
//!   rejection is only issued when some window's log looking back `W + release_delay` (exact:
//!   `W`) rejects too; after the announced retry time the window has room;
//! * a rejection consumes nothing; a reopen finds every live key, no expired one and nothing
//!   corrupt;
//! * `expire_now` unlinks exactly the keys whose every window has elapsed since the store last
//!   wrote it (`K` whole sub-windows for a bucketed window, `W` after the newest admission for
//!   an exact one).
//!
//! The model is `fuzz/models/ops.rs`; `tests/fuzz_regressions.rs` replays fixed operation
//! sequences through the same file.

#![no_main]

use std::path::{Path, PathBuf};
use std::time::Duration;

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use tollgate::{Decision, Limit, Limits, ManualClock, Mode, Options, Store};

include!("../models/ops.rs");

fuzz_target!(|input: Input| {
    run(&input, cfg!(feature = "max-seen-time"));
});
