//! Unit tests of the segment table's word helpers and limits.

use super::*;

#[test]
fn a_file_holds_at_most_4_tib_of_segments() {
    assert_eq!(Segments::most_segments(22), 1 << 20);
    assert_eq!(Segments::most_segments(30), 4096);
    assert_eq!(Segments::most_segments(16) as u64 * (1 << 10), MAX_LINES);
    let segs = Segments::new(None, 30, 1 << 20);
    assert_eq!(segs.max_segments, 4096);
    assert_eq!(Segments::new(None, 22, 100).max_segments, 100);
}

#[test]
fn put_bytes_stores_little_endian_words_zero_padded_and_stops_at_the_end() {
    let bytes: Vec<u8> = (1..=20).collect();
    for len in 0..=bytes.len() {
        for at in [0usize, 1, 2] {
            let words: Vec<AtomicU64> = (0..4).map(|_| AtomicU64::new(u64::MAX)).collect();
            let e = Entry { words: &words };
            e.put_bytes(at, &bytes[..len]);
            let mut want = vec![u64::MAX; 4];
            for (i, c) in bytes[..len].chunks(8).enumerate() {
                let mut b = [0u8; 8];
                b[..c.len()].copy_from_slice(c);
                if let Some(w) = want.get_mut(at + i) {
                    *w = u64::from_le_bytes(b);
                }
            }
            let got: Vec<u64> = words.iter().map(|w| w.load(Ordering::Relaxed)).collect();
            assert_eq!(got, want, "len {len} at {at}");
        }
    }
}
