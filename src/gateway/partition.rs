//! The partition key (`pk`) of the IETF fields: a keyed hash of the bearer token, never the
//! token itself.
//!
//! draft-ietf-httpapi-ratelimit-headers-12 lets a server name the quota partition a response
//! speaks about (`pk`, a Byte Sequence) and asks it to keep sensitive information out of it. A
//! bearer token is a credential: sent back as it is, it would land in every log and cache that
//! keeps response headers. So the key is
//!
//! ```text
//! pk = the first 12 bytes of HMAC-SHA-256(secret, token), written :base64:
//! ```
//!
//! 96 bits: two tokens of one gateway never share a key in practice, and the hash cannot be
//! turned back into the token or checked against a guess without the secret. The secret is
//! `partition_key_secret` from `[settings]` when set (the same key across restarts and across
//! the gateways of a fleet), else one drawn at random once per process (the same key for the
//! life of the process, across policy reloads; a new one after a restart).
//!
//! The partition a tollgate counter belongs to is (token, group): `pk` names the token, and the
//! item's name (the group and window) names the rest.

use std::fmt;
use std::sync::OnceLock;

use sha2::{Digest, Sha256};

/// The bytes of a partition key.
pub const PARTITION_KEY_LEN: usize = 12;

/// The secret behind partition keys. Its `Debug` form never shows it.
#[derive(Clone, PartialEq, Eq)]
pub struct PartitionSecret {
    key: [u8; 32],
}

impl fmt::Debug for PartitionSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("PartitionSecret(..)")
    }
}

impl PartitionSecret {
    /// The secret of a configured passphrase (`partition_key_secret`): its SHA-256.
    pub fn from_passphrase(passphrase: &str) -> PartitionSecret {
        PartitionSecret {
            key: Sha256::digest(passphrase.as_bytes()).into(),
        }
    }

    /// This process's secret, drawn at random on first use (from the operating system's
    /// generator, through `ahash`'s random seeds) and kept until the process ends.
    pub fn process() -> &'static PartitionSecret {
        static SECRET: OnceLock<PartitionSecret> = OnceLock::new();
        SECRET.get_or_init(|| {
            let mut key = [0u8; 32];
            for (i, chunk) in key.chunks_mut(8).enumerate() {
                // Every `RandomState::new()` carries fresh random keys.
                let word = ahash::RandomState::new().hash_one(i as u64);
                chunk.copy_from_slice(&word.to_le_bytes());
            }
            PartitionSecret { key }
        })
    }

    /// The partition key of `token` under this secret.
    pub fn key_of(&self, token: &str) -> PartitionKey {
        let mac = hmac_sha256(&self.key, token.as_bytes());
        let mut out = [0u8; PARTITION_KEY_LEN];
        out.copy_from_slice(
            mac.get(..PARTITION_KEY_LEN)
                .unwrap_or(&[0; PARTITION_KEY_LEN]),
        );
        PartitionKey(out)
    }
}

/// HMAC-SHA-256 (RFC 2104) with a 32-byte key.
fn hmac_sha256(key: &[u8; 32], msg: &[u8]) -> [u8; 32] {
    let mut ipad = [0x36u8; 64];
    let mut opad = [0x5cu8; 64];
    for (i, k) in key.iter().enumerate() {
        if let (Some(a), Some(b)) = (ipad.get_mut(i), opad.get_mut(i)) {
            *a ^= k;
            *b ^= k;
        }
    }
    let inner = Sha256::new()
        .chain_update(ipad)
        .chain_update(msg)
        .finalize();
    Sha256::new()
        .chain_update(opad)
        .chain_update(inner)
        .finalize()
        .into()
}

/// A token's partition key: [`PARTITION_KEY_LEN`] bytes of a keyed hash. Displays as an RFC 9651
/// Byte Sequence, `:base64:`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PartitionKey([u8; PARTITION_KEY_LEN]);

impl PartitionKey {
    /// The key's bytes.
    pub fn as_bytes(&self) -> &[u8; PARTITION_KEY_LEN] {
        &self.0
    }
}

impl fmt::Display for PartitionKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut s = String::with_capacity(2 + PARTITION_KEY_LEN.div_ceil(3) * 4);
        s.push(':');
        base64(&self.0, &mut s);
        s.push(':');
        f.write_str(&s)
    }
}

/// Standard base64 with padding (RFC 4648 section 4), as RFC 9651 Byte Sequences use.
pub(crate) fn base64(bytes: &[u8], out: &mut String) {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let sym = |i: u32| char::from(ALPHABET.get((i & 63) as usize).copied().unwrap_or(b'A'));
    for chunk in bytes.chunks(3) {
        let b = |i: usize| u32::from(chunk.get(i).copied().unwrap_or(0));
        let n = (b(0) << 16) | (b(1) << 8) | b(2);
        out.push(sym(n >> 18));
        out.push(sym(n >> 12));
        out.push(if chunk.len() > 1 { sym(n >> 6) } else { '=' });
        out.push(if chunk.len() > 2 { sym(n) } else { '=' });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_matches_rfc_4648_vectors() {
        for (input, want) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ] {
            let mut s = String::new();
            base64(input.as_bytes(), &mut s);
            assert_eq!(s, want, "{input:?}");
        }
    }

    #[test]
    fn hmac_matches_rfc_4231_case_2_shape() {
        // RFC 4231 test case 2 uses a 4-byte key ("Jefe"); HMAC pads a short key with zeros,
        // so the same key zero-padded to 32 bytes gives the same MAC.
        let mut key = [0u8; 32];
        key[..4].copy_from_slice(b"Jefe");
        let mac = hmac_sha256(&key, b"what do ya want for nothing?");
        let hex: String = mac.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(
            hex,
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn keys_hide_the_token_and_depend_on_the_secret() {
        let token = "tok_secret_abcdef";
        let a = PartitionSecret::from_passphrase("one passphrase, long enough");
        let b = PartitionSecret::from_passphrase("another passphrase, as long");
        let ka = a.key_of(token);
        assert_eq!(ka, a.key_of(token), "stable under one secret");
        assert_ne!(ka, b.key_of(token), "another secret, another key");
        assert_ne!(
            ka,
            a.key_of("tok_secret_abcdeg"),
            "another token, another key"
        );
        let shown = ka.to_string();
        assert!(shown.starts_with(':') && shown.ends_with(':'), "{shown}");
        assert_eq!(shown.len(), 2 + 16, "{shown}");
        assert!(!shown.contains(token) && !shown.contains("tok_"), "{shown}");
        assert_eq!(
            PartitionSecret::process().key_of(token),
            PartitionSecret::process().key_of(token)
        );
        assert_eq!(format!("{a:?}"), "PartitionSecret(..)");
    }
}
