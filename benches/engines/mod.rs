//! The engines the check bench times, behind one trait: tollgate's store (file-backed, in
//! memory, its option variants, a read-only peek) and governor's keyed limiter with its
//! default hasher and with ahash; and the key bytes every engine is given, built without a
//! memory miss.

use std::hash::BuildHasher;
use std::path::Path;
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::middleware::NoOpMiddleware;
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use tollgate::{Limits, Options, Store};

use super::nonzero;

/// The multiplier that turns a key's index into its hex digits (and the harness's picks).
pub(super) const GOLDEN: u64 = 0x9E37_79B9_7F4A_7C15;

/// The key bytes of check `idx`, and the `String` governor is given.
pub(super) struct Key {
    pub(super) bytes: [u8; 32],
    string: String,
}

impl Key {
    pub(super) fn new() -> Key {
        let (bytes, string) = (
            *b"tok_0000000000000000000000000000",
            String::with_capacity(32),
        );
        Key { bytes, string }
    }

    /// `tok_` and 28 hex digits of `idx * GOLDEN` (the first 12 always zero).
    #[inline]
    pub(super) fn set(&mut self, idx: u64) {
        let v = idx.wrapping_mul(GOLDEN);
        self.bytes[16..24].copy_from_slice(&hex8((v >> 32) as u32));
        self.bytes[24..32].copy_from_slice(&hex8(v as u32));
    }

    /// The same bytes in the reused `String`.
    #[inline]
    pub(super) fn string(&mut self) -> &String {
        self.string.clear();
        self.string
            .push_str(std::str::from_utf8(&self.bytes).unwrap_or_default());
        &self.string
    }
}

/// The 8 lowercase hex digits of `x`, most significant first: each nibble spread to a byte,
/// then `'0' + d`, plus 39 where `d > 9` (`'a' - '0' - 10`).
#[inline]
fn hex8(x: u32) -> [u8; 8] {
    let mut v = u64::from(x);
    v = (v | v << 16) & 0x0000_FFFF_0000_FFFF;
    v = (v | v << 8) & 0x00FF_00FF_00FF_00FF;
    v = (v | v << 4) & 0x0F0F_0F0F_0F0F_0F0F;
    let letters = ((v + 0x0606_0606_0606_0606) >> 4) & 0x0101_0101_0101_0101;
    (v + 0x3030_3030_3030_3030 + letters * 39).to_be_bytes()
}

/// Something that checks keys: whether admitted, and a value that depends on the answer.
pub(super) trait Engine: Sync {
    fn check(&self, key: &mut Key, now_ms: u64) -> (bool, u64);

    /// A check of cost `n` (the drain's first step); whether it was admitted.
    fn take(&self, key: &mut Key, now_ms: u64, n: u32) -> bool {
        (0..n).all(|_| self.check(key, now_ms).0)
    }
}

pub(super) struct Tollgate {
    pub(super) store: Store,
    limits: Limits,
}

impl Tollgate {
    pub(super) fn file(path: &Path, limits: Limits) -> Tollgate {
        let store = Store::open(path, opts()).expect("open store");
        Tollgate { store, limits }
    }

    /// A file store with the background compactor running, as a gateway opens it, so that it
    /// grows its file ahead of need (`Options::grow_ahead`); its timer never fires during a
    /// sample, and nothing expires at the times the rows drive.
    pub(super) fn file_growing_ahead(path: &Path, limits: Limits) -> Tollgate {
        let opts = Options::default()
            .compactor_interval(Duration::from_secs(3600))
            .grow_ahead(true);
        let store = Store::open(path, opts).expect("open store");
        Tollgate { store, limits }
    }

    /// A file store with other options: home slots (one miss per cold check), or 32
    /// sub-windows per window (two-line entries for ErzyCall's pair).
    pub(super) fn file_with(path: &Path, limits: Limits, opts: Options) -> Tollgate {
        let store = Store::open(path, opts).expect("open store");
        Tollgate { store, limits }
    }

    pub(super) fn memory(limits: Limits) -> Tollgate {
        let store = Store::open_in_memory(opts()).expect("open store");
        Tollgate { store, limits }
    }
}

/// Without the background compactor: time is driven explicitly.
pub(super) fn opts() -> Options {
    Options::default().compactor(false)
}

/// The file store's other configurations, each its own engine in the rows: home slots, 32
/// sub-windows per window (quota back up to `W/32` late instead of `W/64`, half the ring
/// bytes), and both.
pub(super) fn variants() -> [(&'static str, Options); 3] {
    [
        ("tollgate-home", opts().home_slots(true)),
        ("tollgate-b32", opts().sub_windows(32)),
        ("tollgate-home-b32", opts().home_slots(true).sub_windows(32)),
    ]
}

impl Engine for Tollgate {
    #[inline]
    fn check(&self, key: &mut Key, now_ms: u64) -> (bool, u64) {
        match self.store.check_at(&key.bytes, &self.limits, 1, now_ms) {
            Ok(d) => (d.allowed(), u64::from(d.remaining())),
            Err(e) => panic!("check: {e}"),
        }
    }

    fn take(&self, key: &mut Key, now_ms: u64, n: u32) -> bool {
        match self.store.check_at(&key.bytes, &self.limits, n, now_ms) {
            Ok(d) => d.allowed(),
            Err(e) => panic!("check: {e}"),
        }
    }
}

/// A read-only peek, as a row (`peek/*`).
pub(super) struct Peek<'a>(pub(super) &'a Tollgate);

impl Engine for Peek<'_> {
    #[inline]
    fn check(&self, key: &mut Key, now_ms: u64) -> (bool, u64) {
        match self.0.store.peek_at(&key.bytes, &self.0.limits, now_ms) {
            Ok(d) => (d.allowed(), u64::from(d.remaining())),
            Err(e) => panic!("peek: {e}"),
        }
    }
}

/// governor's keyed limiter over its default `DashMap` store, with hasher `S`.
type GovLimiter<S> =
    DefaultKeyedRateLimiter<String, NoOpMiddleware<<DefaultClock as Clock>::Instant>, S>;

pub(super) struct Gov<S: BuildHasher + Clone>(GovLimiter<S>);

pub(super) fn governor(quota: Quota) -> Gov<std::hash::RandomState> {
    Gov(RateLimiter::keyed(quota))
}

pub(super) fn governor_ahash(quota: Quota) -> Gov<ahash::RandomState> {
    Gov(RateLimiter::dashmap_with_hasher(
        quota,
        ahash::RandomState::new(),
    ))
}

impl<S: BuildHasher + Clone + Send + Sync> Engine for Gov<S> {
    #[inline]
    fn check(&self, key: &mut Key, _now_ms: u64) -> (bool, u64) {
        let ok = self.0.check_key(key.string()).is_ok();
        (ok, u64::from(ok))
    }

    fn take(&self, key: &mut Key, _now_ms: u64, n: u32) -> bool {
        matches!(self.0.check_key_n(key.string(), nonzero(n)), Ok(Ok(_)))
    }
}
