//! Versions for `If-Match`: an ETag per resource that changes on every write, kept in the
//! backend.
//!
//! [`Versions`] is a thin facade over a [`Backend`]'s versions (`crate::version`): the
//! embedded [`Store`](crate::Store) keeps them in its file (a restart, even a kill -9, keeps
//! every ETag), `fleet::RedisStore` and `fleet::HybridStore` on the server (every gateway of a
//! fleet hands out and checks the same ETags). The compare and the bump are one atomic step
//! of the backend, so two writers presenting the same ETag cannot both succeed, on one node or
//! on two.
//!
//! * An ETag is `"<epoch hex>-<version>"`: the epoch of the resource's version entry (random,
//!   drawn when the entry was created) and its number. A version the backend forgot (a new
//!   store file, a key evicted from Redis) comes back with another epoch, so no ETag issued
//!   before matches it: the client gets 412 and GETs again, never a lost update.
//! * The backend key of a resource is its path when it fits in a key
//!   ([`MAX_KEY_LEN`](crate::MAX_KEY_LEN) bytes), else `#` and the SHA-256 of the path (a path
//!   starts with `/`, so the two never meet).
//! * A resource's entry is created by its first GET or write through the gateway, and kept
//!   (versions have no TTL: `docs/GATEWAY.md`).

use std::borrow::Cow;
use std::fmt;

use sha2::{Digest, Sha256};

use crate::key::MAX_KEY_LEN;
use crate::version::{Version, VersionBump};
use crate::Backend;

/// A strong entity tag: the epoch of the resource's version entry and its version number.
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

    /// The epoch of the resource's version entry.
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// The tag of a backend version.
    pub fn of(v: Version) -> ETag {
        ETag {
            epoch: v.epoch,
            version: v.number,
        }
    }

    /// The backend version this tag names.
    fn to_version(self) -> Version {
        Version {
            epoch: self.epoch,
            number: self.version,
        }
    }

    /// The tag a client sent (quotes included), if it is one this gateway could have written:
    /// exactly the form [`ETag`]'s `Display` gives, digits and all (see [`ETag::is`]).
    fn parse(tag: &str) -> Option<ETag> {
        let inner = tag.strip_prefix('"')?.strip_suffix('"')?;
        let (epoch, version) = inner.split_once('-')?;
        let t = ETag {
            epoch: u64::from_str_radix(epoch, 16).ok()?,
            version: version.parse().ok()?,
        };
        t.is(tag).then_some(t)
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

/// Resource versions for `If-Match`, in the backend: see the module docs.
///
/// ```
/// use tollgate::gateway::Versions;
/// use tollgate::{Options, Store};
/// let store = Store::open_in_memory(Options::default())?;
/// let v = Versions::new(&store);
/// let seen = v.current("/api/leads/7")?;                 // a GET hands out this ETag
/// let next = v.compare_and_bump("/api/leads/7", &seen.to_string())?.expect("fresh");
/// assert_ne!(next, seen);                                // every write changes it
/// let again = v.compare_and_bump("/api/leads/7", &seen.to_string())?; // a stale ETag
/// assert_eq!(again.unwrap_err().current, next);          // 412
/// # Ok::<(), tollgate::Error>(())
/// ```
#[derive(Clone, Copy)]
pub struct Versions<'a> {
    backend: &'a dyn Backend,
}

impl fmt::Debug for Versions<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Versions").finish_non_exhaustive()
    }
}

/// The backend key of `resource` (module docs).
fn resource_key(resource: &str) -> Cow<'_, [u8]> {
    if !resource.is_empty() && resource.len() <= MAX_KEY_LEN {
        return Cow::Borrowed(resource.as_bytes());
    }
    let mut k = Vec::with_capacity(33);
    k.push(b'#');
    k.extend_from_slice(&Sha256::digest(resource.as_bytes()));
    Cow::Owned(k)
}

impl<'a> Versions<'a> {
    /// The versions `backend` keeps.
    pub fn new(backend: &'a dyn Backend) -> Versions<'a> {
        Versions { backend }
    }

    /// The current ETag of `resource` (what a GET answers).
    pub fn current(&self, resource: &str) -> crate::Result<ETag> {
        Ok(ETag::of(self.backend.version(&resource_key(resource))?))
    }

    /// Record a write of `resource` (without `If-Match`): a new ETag.
    pub fn bump(&self, resource: &str) -> crate::Result<ETag> {
        Ok(ETag::of(
            self.backend.bump_version(&resource_key(resource))?,
        ))
    }

    /// A write with `If-Match: <if_match>`: when the header names the current ETag of
    /// `resource` (or is `*`), the resource gets a new version and its ETag is returned;
    /// otherwise [`Stale`] with the current ETag (HTTP 412). The compare and the bump are one
    /// atomic step of the backend.
    ///
    /// `if_match` is the header value: `*`, or a comma-separated list of entity tags. Weak
    /// tags never match (strong comparison, RFC 9110 §13.1.1). One tag costs one backend
    /// call; a list of several, two (the current version is read first).
    pub fn compare_and_bump(
        &self,
        resource: &str,
        if_match: &str,
    ) -> crate::Result<Result<ETag, Stale>> {
        let key = resource_key(resource);
        let header = if_match.trim();
        if header == "*" {
            return Ok(Ok(ETag::of(self.backend.bump_version(&key)?)));
        }
        let mut named = header.split(',').filter_map(|t| ETag::parse(t.trim()));
        let (Some(first), second) = (named.next(), named.next()) else {
            let current = self.current(resource)?;
            return Ok(Err(Stale { current }));
        };
        let expected = match second {
            None => first,
            Some(second) => {
                let current = self.current(resource)?;
                let listed = [first, second]
                    .into_iter()
                    .chain(named)
                    .any(|t| t == current);
                if !listed {
                    return Ok(Err(Stale { current }));
                }
                current
            }
        };
        Ok(
            match self.backend.bump_version_if(&key, &expected.to_version())? {
                VersionBump::Bumped(v) => Ok(ETag::of(v)),
                VersionBump::Stale(v) => Err(Stale {
                    current: ETag::of(v),
                }),
            },
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Options, Store};

    fn store() -> Store {
        Store::open_in_memory(Options::default().compactor(false)).unwrap()
    }

    #[test]
    fn every_write_changes_the_etag_and_stale_fails() {
        let s = store();
        let v = Versions::new(&s);
        let e0 = v.current("/r").unwrap();
        assert_eq!(v.current("/r").unwrap(), e0); // reads do not change it
        let e1 = v.compare_and_bump("/r", &e0.to_string()).unwrap().unwrap();
        assert_ne!(e1, e0);
        assert_eq!(v.current("/r").unwrap(), e1);
        // The old ETag is stale now.
        let err = v
            .compare_and_bump("/r", &e0.to_string())
            .unwrap()
            .unwrap_err();
        assert_eq!(err.current, e1);
        // A list naming the current one matches; a weak tag never does.
        let list = format!("\"nope\", {e0}, {e1}");
        let e2 = v.compare_and_bump("/r", &list).unwrap().unwrap();
        assert!(v
            .compare_and_bump("/r", &format!("W/{e2}"))
            .unwrap()
            .is_err());
        // A list naming only old ones is stale.
        assert!(v
            .compare_and_bump("/r", &format!("{e0}, {e1}"))
            .unwrap()
            .is_err());
        // A write without If-Match bumps too.
        let e3 = v.bump("/r").unwrap();
        assert!(v.compare_and_bump("/r", &e2.to_string()).unwrap().is_err());
        // `*` matches whatever the version.
        let e4 = v.compare_and_bump("/r", "*").unwrap().unwrap();
        assert!(e4.version() > e3.version());
        // Other resources are independent.
        assert_eq!(v.current("/other").unwrap().version(), 0);
    }

    #[test]
    fn strong_comparison_is_character_by_character() {
        let t = ETag {
            epoch: 0xab,
            version: 7,
        };
        assert!(t.is("\"ab-7\""));
        assert_eq!(ETag::parse("\"ab-7\""), Some(t));
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
            assert_eq!(ETag::parse(other), None, "{other} parsed");
        }
        let zero = ETag {
            epoch: 0,
            version: 0,
        };
        assert!(zero.is("\"0-0\""));
        assert!(!zero.is("\"00-0\""));
    }

    #[test]
    fn a_new_store_refuses_old_etags_and_junk_is_stale() {
        let a = store();
        let tag = Versions::new(&a).bump("/r").unwrap();
        let b = store();
        let vb = Versions::new(&b);
        assert!(vb
            .compare_and_bump("/r", &tag.to_string())
            .unwrap()
            .is_err());
        for junk in ["", "\"", "\"x-1\"", "\"1-x\"", "1-1", "\"-\""] {
            assert!(
                vb.compare_and_bump("/r", junk).unwrap().is_err(),
                "{junk:?}"
            );
        }
    }

    #[test]
    fn a_restart_keeps_every_etag() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("v.tg");
        let opts = || Options::default().compactor(false);
        let tag = {
            let s = Store::open(&path, opts()).unwrap();
            let v = Versions::new(&s);
            v.bump("/r").unwrap();
            v.bump("/r").unwrap()
        };
        let s = Store::open(&path, opts()).unwrap();
        let v = Versions::new(&s);
        assert_eq!(v.current("/r").unwrap(), tag);
        assert!(v.compare_and_bump("/r", &tag.to_string()).unwrap().is_ok());
    }

    #[test]
    fn long_paths_are_hashed_into_a_key() {
        let s = store();
        let v = Versions::new(&s);
        let long = format!("/r/{}", "x".repeat(300));
        let other = format!("/r/{}y", "x".repeat(299));
        let t = v.bump(&long).unwrap();
        assert_eq!(v.current(&long).unwrap(), t);
        assert_eq!(v.current(&other).unwrap().version(), 0);
        assert_eq!(resource_key(&long).len(), 33);
        assert_eq!(&*resource_key("/a"), b"/a");
    }

    #[test]
    fn concurrent_writers_with_one_etag_one_wins() {
        let s = store();
        let v = Versions::new(&s);
        let tag = v.current("/r").unwrap().to_string();
        let wins = std::sync::atomic::AtomicU64::new(0);
        std::thread::scope(|sc| {
            for _ in 0..8 {
                sc.spawn(|| {
                    if v.compare_and_bump("/r", &tag).unwrap().is_ok() {
                        wins.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    }
                });
            }
        });
        assert_eq!(wins.into_inner(), 1);
    }
}
