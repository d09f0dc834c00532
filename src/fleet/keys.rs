//! Key names on the server.
//!
//! Every key of one token (its windows, its hybrid counters) and every idempotency record of
//! one scope carries the same hash tag, `{r:<key>}` (or `{h:<hex>}` when the key holds a brace),
//! so each script touches keys of one Redis Cluster slot:
//!
//! ```text
//! <prefix>:{r:tok_abc}:w:60000:s     sliding window of 60 s      "g,n,cur,c1,..,cB"
//! <prefix>:{r:tok_abc}:w:300000:e    exact window of 5 min       "t1,t2,.."
//! <prefix>:{r:tok_abc}:h:60000:938   hybrid counters (g = 938)   hash: sub-window -> count
//! <prefix>:{r:tok_abc}:h:seen        hybrid: last batch applied per node
//! <prefix>:{r:tok_abc}:i:<uuid>      idempotency record          hash (begin.lua)
//! <prefix>:{r:/api/leads/7}:v        version (If-Match)          hash {e, n} (version.lua)
//! <prefix>:{r:tok_abc}:c             concurrency permits         sorted set (permit.lua)
//! <prefix>:{r:tok_abc}:d:<id>         open reservation's guard    string (reserve.lua)
//! ```
//!
//! A reservation's guard carries its key's tag, so that the debit scripts touch it and the
//! key's windows in one slot.

use crate::limit::{Limit, Mode};

/// The hash-tagged base of every key of `key`: `<prefix>:{r:<key>}` or `<prefix>:{h:<hex>}`.
pub(crate) fn base(prefix: &str, key: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(prefix.len() + 6 + key.len() * 2);
    out.extend_from_slice(prefix.as_bytes());
    if key.iter().any(|&b| b == b'{' || b == b'}') {
        out.extend_from_slice(b":{h:");
        for b in key {
            out.extend_from_slice(format!("{b:02x}").as_bytes());
        }
    } else {
        out.extend_from_slice(b":{r:");
        out.extend_from_slice(key);
    }
    out.push(b'}');
    out
}

/// The key of one window of `key` in the shared store.
pub(crate) fn window(base: &[u8], l: &Limit) -> Vec<u8> {
    let mut k = base.to_vec();
    // `s` (sliding) rather than the old bucketed word's `b`: a state of the old format is
    // never read as one of the new.
    let mode = if l.mode() == Mode::Exact { 'e' } else { 's' };
    k.extend_from_slice(format!(":w:{}:{mode}", l.window_ms()).as_bytes());
    k
}

/// The key of one window's counters in the hybrid store (sub-windows of `g` ms).
pub(crate) fn hybrid(base: &[u8], window_ms: u64, g: u64) -> Vec<u8> {
    let mut k = base.to_vec();
    k.extend_from_slice(format!(":h:{window_ms}:{g}").as_bytes());
    k
}

/// The key of the hybrid store's per-node batch numbers for `key`.
pub(crate) fn hybrid_seen(base: &[u8]) -> Vec<u8> {
    let mut k = base.to_vec();
    k.extend_from_slice(b":h:seen");
    k
}

/// The key of `key`'s version (a hash: epoch and number).
pub(crate) fn version(prefix: &str, key: &[u8]) -> Vec<u8> {
    let mut k = base(prefix, key);
    k.extend_from_slice(b":v");
    k
}

/// The key of `key`'s concurrency permits (a sorted set scored by deadline).
pub(crate) fn permits(prefix: &str, key: &[u8]) -> Vec<u8> {
    let mut k = base(prefix, key);
    k.extend_from_slice(b":c");
    k
}

/// The key of the guard of reservation `id` of `key`'s windows (`base`): `<base>:d:<id>`, the
/// id in 32 hex digits.
pub(crate) fn guard(base: &[u8], id: u128) -> Vec<u8> {
    let mut k = base.to_vec();
    k.extend_from_slice(format!(":d:{id:032x}").as_bytes());
    k
}

/// The key of an idempotency record, from the record key a [`crate::Lease`] holds (scope
/// length, scope, UUID bytes). `None` if it is not shaped so.
pub(crate) fn record(prefix: &str, record_key: &[u8]) -> Option<Vec<u8>> {
    let (&len, rest) = record_key.split_first()?;
    let scope = rest.get(..usize::from(len))?;
    let uuid = rest.get(usize::from(len)..)?;
    if uuid.len() != 16 {
        return None;
    }
    let mut k = base(prefix, scope);
    k.extend_from_slice(b":i:");
    for b in uuid {
        k.extend_from_slice(format!("{b:02x}").as_bytes());
    }
    Some(k)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_hash_tag_per_key() {
        assert_eq!(base("tg", b"tok_a"), b"tg:{r:tok_a}".to_vec());
        // A brace in the key would end the tag early: hex instead.
        assert_eq!(base("tg", b"a}b"), b"tg:{h:617d62}".to_vec());
        let w = window(&base("tg", b"t"), &Limit::per_minute(5));
        assert_eq!(w, b"tg:{r:t}:w:60000:s".to_vec());
        let e = window(&base("tg", b"t"), &Limit::per_minute(5).exact());
        assert_eq!(e, b"tg:{r:t}:w:60000:e".to_vec());
        let mut rk = vec![3u8];
        rk.extend_from_slice(b"tok");
        rk.extend_from_slice(&[0xab; 16]);
        let r = record("tg", &rk).unwrap();
        assert!(r.starts_with(b"tg:{r:tok}:i:abab"));
        assert!(record("tg", &rk[..10]).is_none());
        let d = guard(&base("tg", b"t"), 0xab);
        assert_eq!(d, format!("tg:{{r:t}}:d:{:032x}", 0xab).into_bytes());
    }
}
