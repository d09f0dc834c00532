//! Idempotency entries: "have I seen this Idempotency-Key?"
//!
//! For a retryable POST/PATCH/DELETE carrying `Idempotency-Key: <UUID v4>`, a gateway calls
//! [`Store::begin`](crate::Store::begin) with the caller's scope (token or account), the key and
//! a [`Fingerprint`] of the request, and gets one of four answers ([`Begin`]):
//!
//! * `Started(lease)`: first time; run the handler, then [`complete`](crate::Store::complete)
//!   with its response (or [`abort`](crate::Store::abort) to let a retry run it again);
//! * `Replay(response)`: done before with the same fingerprint: send the stored response;
//! * `InFlight`: the first request is still running (HTTP 409);
//! * `Mismatch`: the key was used with a different request (HTTP 422, "Idempotency-Key was used
//!   with a different body.").
//!
//! A lease that is neither completed nor aborted expires after the in-flight timeout, so a
//! crashed handler never locks a key; the next `begin` takes the key over with a higher fencing
//! number, and a late `complete` from the first holder is refused ([`Error::LeaseLost`]).
//! Completed records live for the TTL (24 h by default) and then behave as never seen.
//!
//! # Why the fingerprint is SHA-256
//!
//! A replay hands the stored response of the *first* request to whoever presents the same key
//! and fingerprint. If two different requests could be made to share a fingerprint, a client
//! could be served a response meant for another body (another amount, another recipient).
//! Fast hashes (ahash, crc32, xxhash) are built for speed on honest input: collisions can be
//! constructed on purpose, and crc32 collides by chance once in four billion requests. SHA-256
//! is collision resistant, and at a few hundred MB/s it costs little next to a request.

mod codec;
pub(crate) mod record;

use std::fmt;
use std::time::Duration;

use sha2::{Digest, Sha256};

use crate::error::{Error, Result};

pub use codec::{Replayed, StoredResponse};

pub use crate::key::MAX_SCOPE_LEN;

/// A validated `Idempotency-Key` header value: a UUID (version 4 by [`IdempotencyKey::parse`],
/// any version by [`IdempotencyKey::parse_any_version`]), or the hash of an opaque string
/// ([`IdempotencyKey::from_opaque`]).
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct IdempotencyKey(uuid::Uuid);

impl IdempotencyKey {
    /// Parse a header value: a hyphenated UUID v4, bare (`8c6f…`) or as a quoted Structured
    /// Field string (`"8c6f…"`, as the IETF draft writes it). Anything else, including other
    /// UUID versions and the braced or URN forms, is [`Error::InvalidIdempotencyKey`] (HTTP 400).
    ///
    /// ```
    /// use tollgate::IdempotencyKey;
    /// let k = IdempotencyKey::parse("\"4d9c3a41-6bb7-4c4e-9a39-8f3c2d7e1f00\"").unwrap();
    /// assert_eq!(k, IdempotencyKey::parse("4d9c3a41-6bb7-4c4e-9a39-8f3c2d7e1f00").unwrap());
    /// assert!(IdempotencyKey::parse("not-a-uuid").is_err());
    /// ```
    pub fn parse(header: &str) -> Result<IdempotencyKey> {
        let u = parse_hyphenated(header)?;
        if u.get_version() != Some(uuid::Version::Random)
            || u.get_variant() != uuid::Variant::RFC4122
        {
            return Err(Error::InvalidIdempotencyKey("not a version 4 UUID"));
        }
        Ok(IdempotencyKey(u))
    }

    /// Parse a header value as [`IdempotencyKey::parse`] does, but accept a UUID of any
    /// version (1 to 8) of the RFC 9562 variant: time-ordered v7 keys are common. The nil and
    /// max UUIDs, and other variants, are refused.
    ///
    /// ```
    /// use tollgate::IdempotencyKey;
    /// let v7 = "01890a5d-ac96-774b-bcce-b302099a8057";
    /// assert!(IdempotencyKey::parse(v7).is_err());
    /// assert!(IdempotencyKey::parse_any_version(v7).is_ok());
    /// ```
    pub fn parse_any_version(header: &str) -> Result<IdempotencyKey> {
        let u = parse_hyphenated(header)?;
        if !(1..=8).contains(&u.get_version_num()) || u.get_variant() != uuid::Variant::RFC4122 {
            return Err(Error::InvalidIdempotencyKey(
                "not a UUID of version 1 to 8 (RFC 9562 variant)",
            ));
        }
        Ok(IdempotencyKey(u))
    }

    /// A key for an opaque client string (any bytes; a gateway checks its length and
    /// characters first): the first 16 bytes of SHA-256 over a fixed domain tag and the bytes.
    /// The same string always gives the same key, on every node of a fleet. A client could
    /// send, in a UUID-keyed group, the UUID an opaque string hashes to; keys are scoped to its
    /// own token, so it can only collide with its own requests (and the fingerprint, which
    /// holds the path, tells those apart: 422).
    ///
    /// ```
    /// use tollgate::IdempotencyKey;
    /// let a = IdempotencyKey::from_opaque(b"order-2024-0001");
    /// assert_eq!(a, IdempotencyKey::from_opaque(b"order-2024-0001"));
    /// assert_ne!(a, IdempotencyKey::from_opaque(b"order-2024-0002"));
    /// ```
    pub fn from_opaque(key: &[u8]) -> IdempotencyKey {
        let mut h = Sha256::new();
        h.update(b"tollgate opaque idempotency key\0");
        h.update(key);
        let digest: [u8; 32] = h.finalize().into();
        let mut bytes = [0u8; 16];
        bytes.copy_from_slice(digest.get(..16).unwrap_or(&[0; 16]));
        IdempotencyKey(uuid::Uuid::from_bytes(bytes))
    }

    /// A key from a UUID (must be version 4).
    pub fn from_uuid(u: uuid::Uuid) -> Result<IdempotencyKey> {
        if u.get_version() != Some(uuid::Version::Random) {
            return Err(Error::InvalidIdempotencyKey("not a version 4 UUID"));
        }
        Ok(IdempotencyKey(u))
    }

    /// A key from any 128 bits (the store's own records, e.g. reservation guards).
    pub(crate) fn from_raw(id: u128) -> IdempotencyKey {
        IdempotencyKey(uuid::Uuid::from_u128(id))
    }

    /// The UUID.
    pub fn uuid(&self) -> uuid::Uuid {
        self.0
    }
}

impl fmt::Debug for IdempotencyKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "IdempotencyKey({})", self.0.hyphenated())
    }
}

/// A header value without its optional Structured Field quotes, as a hyphenated UUID
/// (8-4-4-4-12 hex digits; no braces, no URN).
fn parse_hyphenated(header: &str) -> Result<uuid::Uuid> {
    let v = unquote(header)?;
    let b = v.as_bytes();
    if b.len() != 36 || [8, 13, 18, 23].iter().any(|&i| b.get(i) != Some(&b'-')) {
        return Err(Error::InvalidIdempotencyKey(
            "expected a hyphenated UUID (8-4-4-4-12 hex digits)",
        ));
    }
    uuid::Uuid::try_parse(v).map_err(|_| Error::InvalidIdempotencyKey("not a valid UUID"))
}

/// A header value without surrounding spaces and tabs, and without the quotes of a Structured
/// Field string (`"…"`) if it has them.
pub(crate) fn unquote(header: &str) -> Result<&str> {
    let v = header.trim_matches(|c| c == ' ' || c == '\t');
    match v.strip_prefix('"') {
        Some(rest) => rest
            .strip_suffix('"')
            .ok_or(Error::InvalidIdempotencyKey("unterminated quoted string")),
        None => Ok(v),
    }
}

/// A SHA-256 fingerprint of a request: same fingerprint, same request.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Fingerprint([u8; 32]);

impl Fingerprint {
    /// The fingerprint of a request's method, path and body (each length-prefixed, so that
    /// moving bytes between them changes the fingerprint).
    ///
    /// ```
    /// use tollgate::Fingerprint;
    /// let a = Fingerprint::of("POST", "/api/sms", br#"{"to":"+1555","text":"hi"}"#);
    /// let b = Fingerprint::of("POST", "/api/sms", br#"{"to":"+1556","text":"hi"}"#);
    /// assert_ne!(a, b);
    /// ```
    pub fn of(method: &str, path: &str, body: &[u8]) -> Fingerprint {
        let mut h = Sha256::new();
        for part in [method.as_bytes(), path.as_bytes(), body] {
            h.update((part.len() as u64).to_le_bytes());
            h.update(part);
        }
        Fingerprint(h.finalize().into())
    }

    /// A fingerprint computed elsewhere (32 bytes of a collision-resistant hash).
    pub fn from_bytes(bytes: [u8; 32]) -> Fingerprint {
        Fingerprint(bytes)
    }

    /// The fingerprint's bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

impl fmt::Debug for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Fingerprint(")?;
        for b in &self.0[..6] {
            write!(f, "{b:02x}")?;
        }
        write!(f, "…)")
    }
}

/// The answer to [`Store::begin`](crate::Store::begin).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Begin {
    /// First time: run the handler, then complete or abort the lease.
    Started(Lease),
    /// Completed before with the same fingerprint: the stored response.
    Replay(Replayed),
    /// The first request with this key is still running (HTTP 409).
    InFlight,
    /// The key was used with a different request (HTTP 422).
    Mismatch,
}

/// The right to complete or abort one run of a keyed request.
///
/// The fencing number grows every time the key is (re)started; a lease whose number is no
/// longer the key's is refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    pub(crate) key: Vec<u8>,
    pub(crate) fence: u32,
    pub(crate) fingerprint: Fingerprint,
    pub(crate) deadline_ms: u64,
}

impl Lease {
    /// The fencing number of this run.
    pub fn fence(&self) -> u32 {
        self.fence
    }

    /// When the lease expires (ms since the Unix epoch) if not completed.
    pub fn deadline_ms(&self) -> u64 {
        self.deadline_ms
    }
}

/// When `complete` returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Durability {
    /// When the response is in the mapped file (page cache): survives a process crash.
    #[default]
    Process,
    /// When the response and its entry are also flushed to disk (msync): survives power loss.
    Sync,
}

/// Idempotency settings of a store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct IdemOptions {
    pub ttl: Duration,
    pub lease: Duration,
    pub max_response: usize,
    pub durability: Durability,
}

impl Default for IdemOptions {
    fn default() -> Self {
        IdemOptions {
            ttl: Duration::from_secs(24 * 3600),
            lease: Duration::from_secs(60),
            max_response: 1 << 20,
            durability: Durability::Process,
        }
    }
}

/// The stored key of an idempotency record (scope length, scope, UUID bytes), on the stack.
pub(crate) struct RecordKey {
    buf: [u8; crate::MAX_KEY_LEN],
    len: usize,
}

impl RecordKey {
    pub(crate) fn as_bytes(&self) -> &[u8] {
        self.buf.get(..self.len).unwrap_or(&[])
    }
}

pub(crate) fn record_key(scope: &[u8], key: &IdempotencyKey) -> Result<RecordKey> {
    if scope.is_empty() || scope.len() > MAX_SCOPE_LEN {
        return Err(Error::InvalidScope { len: scope.len() });
    }
    let mut buf = [0u8; crate::MAX_KEY_LEN];
    let len = 1 + scope.len() + 16;
    let parts = [&[scope.len() as u8][..], scope, key.0.as_bytes()];
    let mut at = 0;
    for p in parts {
        if let Some(dst) = buf.get_mut(at..at + p.len()) {
            dst.copy_from_slice(p);
        }
        at += p.len();
    }
    Ok(RecordKey { buf, len })
}

#[cfg(test)]
mod tests {
    use super::*;

    const V4: &str = "4d9c3a41-6bb7-4c4e-9a39-8f3c2d7e1f00";

    #[test]
    fn keys_bare_quoted_and_refused() {
        let bare = IdempotencyKey::parse(V4).unwrap();
        assert_eq!(IdempotencyKey::parse(&format!("\"{V4}\"")).unwrap(), bare);
        assert_eq!(IdempotencyKey::parse(&V4.to_uppercase()).unwrap(), bare);
        for bad in [
            "",
            "\"",
            "\"4d9c3a41-6bb7-4c4e-9a39-8f3c2d7e1f00",
            "4d9c3a416bb74c4e9a398f3c2d7e1f00",
            "{4d9c3a41-6bb7-4c4e-9a39-8f3c2d7e1f00}",
            "urn:uuid:4d9c3a41-6bb7-4c4e-9a39-8f3c2d7e1f00",
            "4d9c3a41-6bb7-1c4e-9a39-8f3c2d7e1f00",
            "4d9c3a41-6bb7-4c4e-9a39-8f3c2d7e1fzz",
            "4d9c3a41-6bb7-4c4e-9a39-8f3c2d7e1f00x",
        ] {
            assert!(
                matches!(
                    IdempotencyKey::parse(bad),
                    Err(Error::InvalidIdempotencyKey(_))
                ),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn any_version_and_opaque_keys() {
        let v7 = "01890a5d-ac96-774b-bcce-b302099a8057";
        let v1 = "c232ab00-9414-11ec-b3c8-9f6bdeced846";
        assert!(IdempotencyKey::parse(v7).is_err());
        for ok in [V4, v7, v1, "\"01890a5d-ac96-774b-bcce-b302099a8057\""] {
            assert!(IdempotencyKey::parse_any_version(ok).is_ok(), "{ok}");
        }
        assert_eq!(
            IdempotencyKey::parse_any_version(V4).unwrap(),
            IdempotencyKey::parse(V4).unwrap()
        );
        for bad in [
            "00000000-0000-0000-0000-000000000000",
            "ffffffff-ffff-ffff-ffff-ffffffffffff",
            "01890a5d-ac96-974b-bcce-b302099a8057", // version 9
            "01890a5d-ac96-774b-cbce-b302099a8057", // Microsoft variant
            "01890a5dac96774bbcceb302099a8057",
        ] {
            assert!(IdempotencyKey::parse_any_version(bad).is_err(), "{bad}");
        }
        let a = IdempotencyKey::from_opaque(b"abc");
        assert_eq!(a, IdempotencyKey::from_opaque(b"abc"));
        assert_ne!(a, IdempotencyKey::from_opaque(b"abd"));
        assert_ne!(a, IdempotencyKey::from_opaque(b""));
    }

    #[test]
    fn fingerprint_frames_its_parts() {
        let a = Fingerprint::of("POST", "/a", b"bc");
        assert_eq!(a, Fingerprint::of("POST", "/a", b"bc"));
        assert_ne!(a, Fingerprint::of("POST", "/ab", b"c"));
        assert_ne!(a, Fingerprint::of("PATCH", "/a", b"bc"));
    }

    #[test]
    fn scopes_are_validated() {
        let k = IdempotencyKey::parse(V4).unwrap();
        assert!(matches!(
            record_key(b"", &k),
            Err(Error::InvalidScope { len: 0 })
        ));
        assert!(record_key(&[b'a'; MAX_SCOPE_LEN], &k).is_ok());
        assert!(record_key(&[b'a'; MAX_SCOPE_LEN + 1], &k).is_err());
    }
}
