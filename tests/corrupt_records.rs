//! Corrupted idempotency records and responses, one field at a time: a record's header, key
//! and state word, its response pointer and length, and the response record's head, owner and
//! encoding. Each is set to a value past the file, the maximum of its type, zero where zero is
//! invalid, or (for pointers) one that points back at itself or at another element; the
//! entry's crc, and for the encoding both the record's and the entry's, are recomputed after
//! the edit so that the damage reaches the code that parses the field.
//!
//! The harness (`tests/corrupt/`) and what every case goes through are described in
//! `tests/corrupt_fields.rs`, which covers the file header, segments and window entries.

mod common;
mod corrupt;

use corrupt::run::{case, run, Rec, Want};
use corrupt::*;

/// Record entry headers and keys (crc recomputed), and state words (no crc).
#[test]
fn record_entry_fields() {
    let mut cases = Vec::new();
    for i in [1, 3] {
        let k = stored_key(i);
        let lose = || Want::lose_record(i);
        // Key length: zero, past the longest key, the maximum, past the entry, one short.
        for len in [0, 129, 255, 128, 19] {
            cases.push(case(
                format!("record {i} key length {len}"),
                lose(),
                entry_byte(&k, 0, 0, len),
            ));
        }
        cases.push(case(
            format!("record {i} windows 1"),
            lose(),
            entry_byte(&k, 0, 1, 1),
        ));
        for kind in [0, 1, 3, 255] {
            cases.push(case(
                format!("record {i} kind {kind}"),
                lose(),
                entry_byte(&k, 0, 2, kind),
            ));
        }
        cases.push(case(
            format!("record {i} reserved"),
            lose(),
            entry_byte(&k, 0, 3, 0xFF),
        ));
        // The scope's length (the key's first byte): zero, past the key, the maximum, and one
        // that does not add up to the key's length.
        for scope in [0, 200, 255, 2] {
            let what = format!("record {i} scope length {scope}");
            cases.push(case(what, lose(), entry_byte(&k, 1, 0, scope)));
        }
        // State words: states 5 to 7 are not states.
        for v in [5u64 << 61, u64::MAX] {
            let k = k.clone();
            cases.push(case(
                format!("record {i} state {v:#x}"),
                lose(),
                move |b, m| {
                    put64(b, m.ent(&k).word(m.ent(&k).state), v);
                },
            ));
        }
    }
    // A completed record's deadline at its maximum: it never expires, and replays.
    cases.push(case("record 1 deadline max", Want::clean(), |b, m| {
        let at = m.rec(1).word(m.rec(1).state);
        let v = get64(b, at) | ((1 << 38) - 1);
        put64(b, at, v);
    }));
    // And at zero: expired, so `begin` starts it again.
    let mut over = Want::clean();
    over.records[1] = Rec::Over;
    cases.push(case("record 1 deadline 0", over, |b, m| {
        let at = m.rec(1).word(m.rec(1).state);
        let v = get64(b, at) & !((1 << 38) - 1);
        put64(b, at, v);
    }));
    run(cases);
}

/// Where record `i`'s response record starts in the file.
fn blob_of(b: &[u8], m: &FileMap, i: usize) -> usize {
    line_at(get64(b, m.rec(i).word(m.rec(i).state + 1)))
}

/// A record's response pointer and response length (no crc covers them: they are checked
/// against the response record when it is replayed).
#[test]
fn response_pointers() {
    let f = fixture();
    let m = &f.map;
    // The global line number of record `i`'s entry.
    let entry_line = |i: usize| ((m.rec(i).at - SEG0) / LINE) as u64;
    let blob_seg = m.blob_seg() as u64 * SEG_LINES as u64;
    let other = get64(&f.bytes, m.rec(2).word(m.rec(2).state + 1));
    let pointer = |what: &str, v: u64| {
        case(
            format!("record 1 response pointer {what}"),
            Want::bad(1),
            move |b, m| {
                put64(b, m.rec(1).word(m.rec(1).state + 1), v);
            },
        )
    };
    let mut cases = vec![
        pointer("0", 0),
        pointer("u64::MAX", u64::MAX),
        pointer("past the file", 3 * SEG_LINES as u64 + 1),
        pointer("past the segment table", 1000 * SEG_LINES as u64 + 1),
        pointer("to its own entry", entry_line(1)),
        pointer("to an earlier entry", entry_line(0)),
        pointer("to its segment's header", blob_seg),
        pointer("to another record's response", other),
    ];
    let length = |what: &str, f: fn(u64) -> u64| {
        case(
            format!("record 1 response length {what}"),
            Want::bad(1),
            move |b, m| {
                let at = m.rec(1).word(m.rec(1).state + 2);
                let v = f(get64(b, at));
                put64(b, at, v);
            },
        )
    };
    cases.push(length("0", |w| w & !0xFFFF_FFFF));
    cases.push(length("u32::MAX", |w| w | 0xFFFF_FFFF));
    cases.push(length("one more", |w| w + 1));
    cases.push(length("crc changed", |w| w ^ 1 << 32));
    // A record that would cross the end of its segment: the real response's head (length and
    // crc) copied to the segment's last line, and the pointer moved there.
    cases.push(case(
        "record 1 response crossing its segment",
        Want::bad(1),
        |b, m| {
            let from = blob_of(b, m, 1);
            let last = seg_at(m.blob_seg()) + SEG - LINE;
            b.copy_within(from..from + 16, last);
            let line = (m.blob_seg() * SEG_LINES + SEG_LINES - 1) as u64;
            put64(b, m.rec(1).word(m.rec(1).state + 1), line);
        },
    ));
    run(cases);
}

/// Response records: their head (magic, length, crc, owner) and their payload, with both
/// crcs (the record's and its entry's) recomputed so that the encoding itself is parsed.
#[test]
fn response_records() {
    let head = |i: usize, what: &str, word: usize, f: fn(u64) -> u64, want: Want| {
        case(format!("record {i} response {what}"), want, move |b, m| {
            let at = blob_of(b, m, i) + 8 * word;
            let v = f(get64(b, at));
            put64(b, at, v);
        })
    };
    // Record 1's head is not a record's any more: the scan of the segment for free space
    // ends there (nothing after it is reused), and record 2 after it is still read through
    // its pointer. Record 0's is the first of its segment: a segment that does not start with
    // a record is not a response segment, and is skipped as corrupt (its records are still
    // read through their pointers).
    let first = || Want::bad(0).report(|r| r.corrupt_segments = 1);
    let cases = vec![
        head(
            1,
            "length u32::MAX",
            0,
            |w| w | 0xFFFF_FFFF << 32,
            Want::bad(1),
        ),
        head(1, "length 0", 0, |w| w & 0xFFFF_FFFF, Want::bad(1)),
        head(1, "length one more", 0, |w| w + (1 << 32), Want::bad(1)),
        head(1, "magic", 0, |w| w ^ 1, Want::bad(1)),
        // A zero head: the scan ends there, and the records after it are not overwritten.
        head(1, "head zeroed", 0, |_| 0, Want::bad(1)),
        head(1, "crc", 1, |w| w ^ 1, Want::bad(1)),
        head(0, "length u32::MAX", 0, |w| w | 0xFFFF_FFFF << 32, first()),
        head(0, "magic", 0, |w| w ^ 1, first()),
        head(0, "head zeroed", 0, |_| 0, Want::bad(0)),
    ];
    let mut cases = cases;
    // The owner (the record entry a response belongs to, followed by compaction): past the
    // file, zero, the response's own line, another record. Record 0's response is the one
    // compaction moves; a wrong owner keeps it where it is, still read through its pointer.
    let owner = |what: &str, v: fn(&FileMap) -> u64| {
        case(
            format!("record 0 response owner {what}"),
            Want::clean(),
            move |b, m| {
                let at = blob_of(b, m, 0) + 8;
                let w = get64(b, at) & 0xFFFF_FFFF | v(m) << 32;
                put64(b, at, w);
            },
        )
    };
    cases.push(owner("past the file", |_| u64::from(u32::MAX)));
    cases.push(owner("0", |_| 0));
    cases.push(owner("itself", |m| (m.blob_seg() * SEG_LINES + 1) as u64));
    cases.push(owner("record 2", |m| ((m.rec(2).at - SEG0) / LINE) as u64));
    // The encoding, both crcs fixed: status u16, header count u16, name length u16, name
    // ("x-call"), value length u32, value ("c1"), body length u32, body.
    let payload = |what: &str, at: usize, v: &'static [u8]| {
        case(
            format!("record 1 response {what}"),
            Want::bad(1),
            move |b, m| {
                let blob = blob_of(b, m, 1);
                let len = (get64(b, blob) >> 32) as usize;
                b[blob + 16 + at..blob + 16 + at + v.len()].copy_from_slice(v);
                let crc = crc32fast::hash(&b[blob + 16..blob + 16 + len]);
                put32(b, blob + 8, crc);
                put32(b, m.rec(1).word(m.rec(1).state + 2) + 4, crc);
            },
        )
    };
    cases.push(payload("header count u16::MAX", 2, &[0xFF; 2]));
    cases.push(payload("header count 0", 2, &[0; 2]));
    cases.push(payload("name length u16::MAX", 4, &[0xFF; 2]));
    cases.push(payload("name not UTF-8", 6, &[0xFF]));
    cases.push(payload("value length u32::MAX", 12, &[0xFF; 4]));
    cases.push(payload("body length u32::MAX", 18, &[0xFF; 4]));
    cases.push(payload("body length 0", 18, &[0; 4]));
    run(cases);
}
