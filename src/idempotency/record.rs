//! The words of an idempotency record, the one place they are encoded and decoded.
//!
//! An idempotency record is an entry of kind 2 (`docs/FORMAT.md` has it byte by byte):
//!
//! ```text
//! word 0      header: key_len | 0 | kind 2 | 0 | crc32 (over header, key, fingerprint)
//! key         scope length, scope, UUID (zero padded to a word)
//! 4 words     the request's SHA-256 fingerprint
//! state       state 3 bits | fence 23 bits | deadline 38 bits (seconds since the epoch)
//! response    line of the response record (0 = none)
//! response    length u32 | crc32 u32 of the encoded response
//! ```
//!
//! The state machine that moves these words lives in the engine (`engine/records.rs`); the
//! fleet's scripts keep the same states and deadlines in Redis hashes.

use super::Fingerprint;
use crate::storage::format::{entry_crc_parts, EntryHeader, KIND_IDEM, LINE};

/// Record states (the top 3 bits of the state word): free.
pub(crate) const ST_VACANT: u64 = 0;
/// A lease is out.
pub(crate) const ST_INFLIGHT: u64 = 1;
/// Completed: a response is stored.
pub(crate) const ST_DONE: u64 = 2;
/// Replaced by a newer entry (or about to be).
pub(crate) const ST_DEAD: u64 = 3;
/// A completion under way.
pub(crate) const ST_COMPLETING: u64 = 4;
const FENCE_MASK: u64 = (1 << 23) - 1;
const DEADLINE_MASK: u64 = (1 << 38) - 1;

/// The state word of `state`, `fence` and `deadline_s`.
#[inline]
pub(crate) fn pack(state: u64, fence: u32, deadline_s: u64) -> u64 {
    (state << 61) | ((u64::from(fence) & FENCE_MASK) << 38) | (deadline_s & DEADLINE_MASK)
}

/// `(state, fence, deadline_s)` of a state word.
#[inline]
pub(crate) fn unpack(w: u64) -> (u64, u32, u64) {
    (w >> 61, ((w >> 38) & FENCE_MASK) as u32, w & DEADLINE_MASK)
}

/// Deadline in whole seconds, rounded up: `now + dur` has certainly passed at `deadline * 1000`.
pub(crate) fn deadline_s(now_ms: u64, dur_ms: u64) -> u64 {
    now_ms.saturating_add(dur_ms).div_ceil(1000) & DEADLINE_MASK
}

/// Word offsets inside an idempotency entry.
#[derive(Debug, Clone, Copy)]
pub(crate) struct IdemLayout {
    pub fp_at: usize,
    pub state_at: usize,
    pub lines: u32,
}

impl IdemLayout {
    pub(crate) fn new(key_len: usize) -> IdemLayout {
        let fp_at = 1 + key_len.div_ceil(8);
        let state_at = fp_at + 4;
        IdemLayout {
            fp_at,
            state_at,
            lines: ((state_at + 3) * 8).div_ceil(LINE) as u32,
        }
    }
}

/// The record's response word (at `state_at + 2`): the encoded response's length and crc32.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ResponseMeta {
    /// Bytes of the encoded response.
    pub len: u32,
    /// Its crc32.
    pub crc: u32,
}

impl ResponseMeta {
    /// Decode the word.
    #[inline]
    pub(crate) fn decode(word: u64) -> ResponseMeta {
        ResponseMeta {
            len: word as u32,
            crc: (word >> 32) as u32,
        }
    }

    /// The word.
    #[inline]
    pub(crate) fn encode(&self) -> u64 {
        u64::from(self.len) | (u64::from(self.crc) << 32)
    }
}

/// The crc32 of a record entry: over its header's low half, its key and its fingerprint.
pub(crate) fn record_crc(key: &[u8], fp_bytes: &[u8]) -> u32 {
    entry_crc_parts(
        EntryHeader::new(key.len(), 0, KIND_IDEM).low(),
        &[],
        &[key, fp_bytes],
    )
}

/// The fencing number after `f` (never 0).
pub(crate) fn next_fence(f: u32) -> u32 {
    let n = (u64::from(f) + 1) & FENCE_MASK;
    if n == 0 {
        1
    } else {
        n as u32
    }
}

/// The fingerprint as the four words a record stores.
pub(crate) fn fp_words(fp: &Fingerprint) -> [u64; 4] {
    let mut w = [0u64; 4];
    for (x, c) in w.iter_mut().zip(fp.as_bytes().chunks_exact(8)) {
        let mut b = [0u8; 8];
        b.copy_from_slice(c);
        *x = u64::from_le_bytes(b);
    }
    w
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_words_round_trip() {
        for (st, f, d) in [
            (ST_INFLIGHT, 1, 1_700_000_060),
            (ST_DONE, (1 << 23) - 1, DEADLINE_MASK),
            (ST_COMPLETING, 7, 0),
        ] {
            assert_eq!(unpack(pack(st, f, d)), (st, f, d));
        }
        assert_eq!(next_fence((1 << 23) - 1), 1);
        assert_eq!(deadline_s(1_500, 1_000), 3);
        assert_eq!(deadline_s(2_000, 1_000), 3);
    }

    #[test]
    fn layouts() {
        let l = IdemLayout::new(49);
        assert_eq!((l.fp_at, l.state_at, l.lines), (8, 12, 2));
        assert_eq!(IdemLayout::new(128).lines, 3);
    }
}
