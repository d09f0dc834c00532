//! Bytes as the little-endian words an entry stores them in: a key, a fingerprint, a stored
//! response. Entries are read and written a word at a time (atomics: a reader may race a
//! writer), so every run of bytes crosses that boundary here, without a call to `memcpy`
//! for the pieces (a copy through a slice of unknown length compiles to one).

/// `bytes` as the little-endian words an entry stores them in, the last one zero padded:
/// `put(slot, word)` for each, into the slots `out` gives in order (as many as it has).
/// Whole words are moved as words: a copy of each 8-byte piece through a slice of unknown
/// length was a call to `memcpy`, some 30 of them for a stored response (callgrind).
#[inline]
pub(crate) fn le_words<S>(
    bytes: &[u8],
    out: impl IntoIterator<Item = S>,
    mut put: impl FnMut(S, u64),
) {
    let (whole, _) = bytes.as_chunks::<8>();
    let mut slots = out.into_iter();
    for (c, slot) in whole.iter().zip(slots.by_ref()) {
        put(slot, u64::from_le_bytes(*c));
    }
    if let (Some(last), Some(slot)) = (le_tail(bytes), slots.next()) {
        put(slot, last);
    }
}

/// The last word [`le_words`] makes of `bytes` when their length is not a multiple of 8:
/// the `len % 8` bytes after the whole words, zero padded (`None` if there are none). Read
/// as the 8 bytes that end the slice, shifted, where the slice is that long: a copy of the
/// piece through a slice of unknown length was a call to `memcpy` on every look-up of a key
/// whose length is not a multiple of 8 (0.5 % of the main job's time, `perf`, 2026-12-07).
#[inline]
pub(crate) fn le_tail(bytes: &[u8]) -> Option<u64> {
    let rest = bytes.len() % 8;
    if rest == 0 {
        return None;
    }
    let end = bytes
        .len()
        .checked_sub(8)
        .and_then(|at| bytes.get(at..))
        .and_then(|b| <[u8; 8]>::try_from(b).ok());
    Some(match end {
        Some(b) => u64::from_le_bytes(b) >> (8 * (8 - rest)),
        None => short_word(bytes),
    })
}

/// The word of fewer than 8 bytes (a key that short is rare: kept out of the look-up's way).
#[cold]
#[inline(never)]
fn short_word(bytes: &[u8]) -> u64 {
    bytes.iter().rev().fold(0, |v, &b| (v << 8) | u64::from(b))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The words, made the plain way: whole 8-byte pieces, then the rest zero padded.
    fn reference(bytes: &[u8]) -> Vec<u64> {
        bytes
            .chunks(8)
            .map(|c| {
                let mut b = [0u8; 8];
                b[..c.len()].copy_from_slice(c);
                u64::from_le_bytes(b)
            })
            .collect()
    }

    #[test]
    fn words_and_tail_match_the_plain_packing_at_every_length() {
        let bytes: Vec<u8> = (1..=40u8).map(|b| b.wrapping_mul(37)).collect();
        for len in 0..=bytes.len() {
            let b = &bytes[..len];
            let want = reference(b);
            let mut got = vec![0u64; want.len()];
            le_words(b, got.iter_mut(), |w, v| *w = v);
            assert_eq!(got, want, "length {len}");
            let tail = le_tail(b);
            if len % 8 == 0 {
                assert_eq!(tail, None, "length {len}");
            } else {
                assert_eq!(tail, want.last().copied(), "length {len}");
            }
        }
    }

    #[test]
    fn fewer_slots_than_words_stop_the_packing() {
        let mut got = [0u64; 1];
        le_words(&[7u8; 20], got.iter_mut(), |w, v| *w = v);
        assert_eq!(got, [u64::from_le_bytes([7; 8])]);
    }
}
