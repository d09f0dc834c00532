//! Concurrency permits: at most `cap` requests of one key in flight, each holding a permit
//! that ends at a deadline even if nobody gives it back.
//!
//! A gateway takes a permit per request of a token with a concurrency cap and releases it when
//! the request ends (`docs/GATEWAY.md`). Because the permits live in the backend, the cap
//! holds across a fleet of gateways, and because each has a deadline, a request that never
//! releases its permit (its node crashed, it was killed with `kill -9`, the network lost the
//! release) holds the slot until the deadline only.
//!
//! * Embedded ([`Store`](crate::Store)): an entry of kind 4 with [`MAX_PERMITS`] slot words;
//!   a permit is one compare-and-swap of a free or expired slot to its deadline and a
//!   generation, a release swaps it back only if it still holds that generation
//!   (`docs/FORMAT.md`).
//! * `fleet::RedisStore`: a sorted set scored by deadline, one script drops the expired
//!   members, counts and adds.

/// The largest cap a permit can be taken under: the slots an embedded permit entry holds.
pub const MAX_PERMITS: u32 = 64;

/// One request in flight under a cap, until [`Backend::release_permit`](crate::Backend) or
/// its deadline.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Permit {
    pub(crate) key: Vec<u8>,
    /// The slot (embedded); 0 in Redis.
    pub(crate) slot: u32,
    /// What the slot holds while the permit is this one (embedded: the slot word; Redis: the
    /// sorted set member).
    pub(crate) stamp: u64,
    pub(crate) deadline_ms: u64,
    pub(crate) held: u32,
}

impl Permit {
    /// The key the permit counts against.
    pub fn key(&self) -> &[u8] {
        &self.key
    }

    /// When the permit ends by itself (ms since the Unix epoch).
    pub fn deadline_ms(&self) -> u64 {
        self.deadline_ms
    }

    /// Permits of the key held just after this one was taken, this one included.
    pub fn held(&self) -> u32 {
        self.held
    }
}
