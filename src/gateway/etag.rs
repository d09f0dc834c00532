//! Versions for `If-Match`: an ETag per resource that changes on every write.
//!
//! The store's public API has no entry that can be compared-and-set (window counters count,
//! idempotency records are written once), so versions live in memory: a map from resource
//! (the request path) to a version number, sharded over 64 `parking_lot` mutexes.
//!
//! * Version numbers come from one counter that only grows, so a resource never gets back a
//!   version it had before.
//! * Every ETag carries an epoch drawn when the [`Versions`] is created: after a restart, every
//!   ETag handed out before is stale (a client gets 412 and GETs again) instead of possibly
//!   matching a resource that changed meanwhile.
//! * The map is bounded: past [`Versions::with_capacity`] entries a shard forgets one, and
//!   raises its floor (the version of every resource it does not hold) to that entry's
//!   version, so a forgotten resource's old ETag still matches if it did not change, and
//!   nothing stale ever matches.

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};

use parking_lot::Mutex;

const SHARDS: usize = 64;
/// Resources tracked by default, all shards together.
const DEFAULT_CAPACITY: usize = 1 << 20;

/// A strong entity tag: the epoch of the [`Versions`] that issued it and a version number.
/// Written `"<epoch hex>-<version>"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ETag {
    epoch: u64,
    version: u64,
}

impl ETag {
    /// The version number.
    pub fn version(&self) -> u64 {
        self.version
    }

    /// Whether `tag` (one entity tag as a client sends it, quotes included) is this one,
    /// by strong comparison: the same characters as this tag's written form (RFC 9110
    /// §8.8.3.2), so `"+a-1"` or `"a-01"` are other tags; a weak tag (`W/"..."`) never
    /// matches. Allocates nothing.
    fn is(&self, tag: &str) -> bool {
        let Some(inner) = tag.strip_prefix('"').and_then(|t| t.strip_suffix('"')) else {
            return false;
        };
        let Some((epoch, version)) = inner.split_once('-') else {
            return false;
        };
        written_as(epoch, 16, self.epoch) && written_as(version, 10, self.version)
    }

    /// The header value (`"…"`, quotes included).
    pub fn to_header_value(&self) -> http::HeaderValue {
        // Hex digits, '-' and decimal digits in quotes: always a valid header value.
        http::HeaderValue::try_from(self.to_string())
            .unwrap_or_else(|_| http::HeaderValue::from_static("\"0-0\""))
    }
}

/// Whether `s` is exactly how `{:x}` (radix 16) or `{}` (radix 10) writes `value`: its digits
/// only (lower-case hex), no sign, no leading zero.
fn written_as(s: &str, radix: u32, value: u64) -> bool {
    let canonical = s.bytes().all(|b| match radix {
        16 => b.is_ascii_digit() || (b'a'..=b'f').contains(&b),
        _ => b.is_ascii_digit(),
    }) && (s.len() == 1 || !s.starts_with('0'));
    canonical && u64::from_str_radix(s, radix).ok() == Some(value)
}

impl fmt::Display for ETag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "\"{:x}-{}\"", self.epoch, self.version)
    }
}

/// A write refused because its `If-Match` named another version (HTTP 412, "Resource has
/// changed, please GET again.").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stale {
    /// The resource's current ETag.
    pub current: ETag,
}

impl fmt::Display for Stale {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "stale If-Match: the current ETag is {}", self.current)
    }
}

impl std::error::Error for Stale {}

struct Shard {
    map: HashMap<Box<str>, u64>,
    /// The version of every resource this shard does not hold.
    floor: u64,
}

/// Resource versions for `If-Match`, in memory. See the module docs.
///
/// ```
/// use tollgate::gateway::Versions;
/// let v = Versions::new();
/// let seen = v.current("/api/leads/7");                 // a GET hands out this ETag
/// let next = v.compare_and_bump("/api/leads/7", &seen.to_string()).expect("fresh");
/// assert_ne!(next, seen);                               // every write changes it
/// let again = v.compare_and_bump("/api/leads/7", &seen.to_string()); // a stale ETag
/// assert_eq!(again.unwrap_err().current, next);         // 412
/// ```
pub struct Versions {
    epoch: u64,
    next: AtomicU64,
    shards: Vec<Mutex<Shard>>,
    per_shard: usize,
    hasher: ahash::RandomState,
}

impl fmt::Debug for Versions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Versions")
            .field("epoch", &format_args!("{:x}", self.epoch))
            .finish_non_exhaustive()
    }
}

impl Default for Versions {
    fn default() -> Self {
        Versions::new()
    }
}

impl Versions {
    /// Versions for up to about a million resources.
    pub fn new() -> Versions {
        Versions::with_capacity(DEFAULT_CAPACITY)
    }

    /// Versions keeping about `resources` resources (at least one per shard); past that, the
    /// oldest knowledge is folded into a per-shard floor, which can only cause spurious 412s,
    /// never a lost update.
    pub fn with_capacity(resources: usize) -> Versions {
        let hasher = ahash::RandomState::new();
        // A fresh epoch per instance: a random hash of the time and the instance's address.
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        let epoch = hasher.hash_one(now) | 1;
        Versions {
            epoch,
            next: AtomicU64::new(1),
            shards: (0..SHARDS)
                .map(|_| {
                    Mutex::new(Shard {
                        map: HashMap::new(),
                        floor: 0,
                    })
                })
                .collect(),
            per_shard: resources.div_ceil(SHARDS).max(1),
            hasher,
        }
    }

    fn shard(&self, resource: &str) -> Option<&Mutex<Shard>> {
        let h = self.hasher.hash_one(resource);
        self.shards.get((h >> 58) as usize % SHARDS)
    }

    fn tag(&self, version: u64) -> ETag {
        ETag {
            epoch: self.epoch,
            version,
        }
    }

    /// The current ETag of `resource` (what a GET answers).
    pub fn current(&self, resource: &str) -> ETag {
        let v = self.shard(resource).map_or(0, |s| {
            let s = s.lock();
            s.map.get(resource).copied().unwrap_or(s.floor)
        });
        self.tag(v)
    }

    /// Record a write of `resource` (without `If-Match`): a new ETag.
    pub fn bump(&self, resource: &str) -> ETag {
        let Some(shard) = self.shard(resource) else {
            return self.tag(0);
        };
        let mut s = shard.lock();
        let v = self.next.fetch_add(1, Ordering::Relaxed);
        self.put(&mut s, resource, v);
        self.tag(v)
    }

    /// A write with `If-Match: <if_match>`: when the header names the current ETag of
    /// `resource` (or is `*`), the resource gets a new version and its ETag is returned;
    /// otherwise [`Stale`] with the current ETag (HTTP 412). The compare and the bump are
    /// one step under the shard's lock, so two writers presenting the same ETag cannot both
    /// succeed.
    ///
    /// `if_match` is the header value: `*`, or a comma-separated list of entity tags. Weak
    /// tags never match (strong comparison, RFC 9110 §13.1.1).
    pub fn compare_and_bump(&self, resource: &str, if_match: &str) -> Result<ETag, Stale> {
        let Some(shard) = self.shard(resource) else {
            return Err(Stale {
                current: self.tag(0),
            });
        };
        let mut s = shard.lock();
        let current = self.tag(s.map.get(resource).copied().unwrap_or(s.floor));
        let header = if_match.trim();
        let matches = header == "*" || header.split(',').any(|t| current.is(t.trim()));
        if !matches {
            return Err(Stale { current });
        }
        let v = self.next.fetch_add(1, Ordering::Relaxed);
        self.put(&mut s, resource, v);
        Ok(self.tag(v))
    }

    fn put(&self, s: &mut Shard, resource: &str, v: u64) {
        if let Some(slot) = s.map.get_mut(resource) {
            *slot = v;
            return;
        }
        if s.map.len() >= self.per_shard {
            // Forget one resource; the floor covers it from now on.
            let victim = s.map.keys().next().cloned();
            if let Some(k) = victim {
                if let Some(old) = s.map.remove(&k) {
                    s.floor = s.floor.max(old);
                }
            }
        }
        s.map.insert(resource.into(), v);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_write_changes_the_etag_and_stale_fails() {
        let v = Versions::new();
        let e0 = v.current("/r");
        assert_eq!(v.current("/r"), e0); // reads do not change it
        let e1 = v.compare_and_bump("/r", &e0.to_string()).unwrap();
        assert_ne!(e1, e0);
        assert_eq!(v.current("/r"), e1);
        // The old ETag is stale now.
        let err = v.compare_and_bump("/r", &e0.to_string()).unwrap_err();
        assert_eq!(err.current, e1);
        // A list naming the current one matches; a weak tag never does.
        let list = format!("\"nope\", {e1}");
        let e2 = v.compare_and_bump("/r", &list).unwrap();
        assert!(v.compare_and_bump("/r", &format!("W/{e2}")).is_err());
        // A write without If-Match bumps too.
        let e3 = v.bump("/r");
        assert!(v.compare_and_bump("/r", &e2.to_string()).is_err());
        // `*` matches whatever the version.
        let e4 = v.compare_and_bump("/r", "*").unwrap();
        assert!(e4.version() > e3.version());
        // Other resources are independent.
        assert_eq!(v.current("/other"), e0);
    }

    #[test]
    fn strong_comparison_is_character_by_character() {
        let t = ETag {
            epoch: 0xab,
            version: 7,
        };
        assert!(t.is("\"ab-7\""));
        for other in [
            "\"+ab-7\"",
            "\"ab-+7\"",
            "\"0ab-7\"",
            "\"ab-07\"",
            "\"AB-7\"",
            "\"ab-7 \"",
            "ab-7",
            "W/\"ab-7\"",
            "\"ab7\"",
            "\"\"",
        ] {
            assert!(!t.is(other), "{other} matched");
        }
        let zero = ETag {
            epoch: 0,
            version: 0,
        };
        assert!(zero.is("\"0-0\""));
        assert!(!zero.is("\"00-0\""));
    }

    #[test]
    fn a_new_instance_refuses_old_etags() {
        let a = Versions::new();
        let tag = a.bump("/r");
        std::thread::sleep(std::time::Duration::from_millis(1));
        let b = Versions::new();
        assert!(b.compare_and_bump("/r", &tag.to_string()).is_err());
        for junk in ["", "\"", "\"x-1\"", "\"1-x\"", "1-1", "\"-\""] {
            assert!(a.compare_and_bump("/r", junk).is_err(), "{junk:?}");
        }
    }

    #[test]
    fn concurrent_writers_with_one_etag_one_wins() {
        let v = Versions::new();
        let tag = v.current("/r").to_string();
        let wins = AtomicU64::new(0);
        std::thread::scope(|s| {
            for _ in 0..8 {
                s.spawn(|| {
                    if v.compare_and_bump("/r", &tag).is_ok() {
                        wins.fetch_add(1, Ordering::Relaxed);
                    }
                });
            }
        });
        assert_eq!(wins.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn forgetting_never_lets_a_stale_etag_match() {
        let v = Versions::with_capacity(SHARDS); // one resource per shard
        let mut tags = Vec::new();
        for i in 0..2_000 {
            let r = format!("/r/{i}");
            let t = v.bump(&r);
            tags.push((r, t));
        }
        // Change every resource once more: each old ETag must now be refused, held or not.
        for (r, _) in &tags {
            v.bump(r);
        }
        for (r, old) in &tags {
            assert!(v.compare_and_bump(r, &old.to_string()).is_err(), "{r}");
        }
        // An unchanged resource keeps matching its last ETag while it is held.
        let t = v.bump("/fresh");
        assert!(v.compare_and_bump("/fresh", &t.to_string()).is_ok());
    }
}
