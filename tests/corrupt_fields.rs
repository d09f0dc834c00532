//! Corrupted structures, one field at a time: the file header and its live words, segment
//! headers, window entries and their state words. Every length, offset, count and size class
//! the store reads from these is set to a value past the file, the maximum of its type, zero
//! where zero is invalid, or (for positions) one that points back at itself or at an earlier
//! element; where a checksum covers the field it is recomputed after the edit, so the damage
//! gets past the check and reaches the code that parses the field.
//!
//! `tests/corruption.rs` damages files at random (flips, cuts, zeroed pages); these are the
//! targeted cases it reaches only by chance. Records and their responses are in
//! `tests/corrupt_records.rs`; the harness is `tests/corrupt/`. A real store is built once with
//! the public API (window keys of four shapes, completed and in-flight idempotency records),
//! closed, and for every case a copy is edited, then opened by `FileShape::of`,
//! `Store::open_read_only` and `Store::open`, and used: peeks, `begin`, `verify`, `visit`,
//! `inspect_key`, `inspect_record`, new writes, an expiry sweep, record deletes and response
//! compaction, and a second open. Each case states its exact outcome: the error variant, or
//! the whole `OpenReport` and which keys and records it loses; every other key must keep its
//! exact counts and every other record its response. Each case runs on a thread of its own
//! with a deadline (an endless walk fails it instead of hanging the run), under an allocator
//! that records the largest allocation the thread makes: none may be larger than the file.

mod common;
mod corrupt;

use corrupt::run::{case, run, Rec, Want};
use corrupt::*;

#[test]
fn the_undamaged_copy_reads_back_exactly() {
    let f = fixture();
    // One segment of 3-line entries (`win-*`, `wide-0`), one of 2-line entries (`one-0`,
    // `exact-0`, the records), one of responses.
    let mut classes = f.map.classes.clone();
    classes.sort_unstable();
    assert_eq!(classes, [0, 2, 3], "{:?}", f.map);
    assert_eq!(f.map.seg_of(b"one-0"), f.map.seg_of(&stored_key(0)));
    assert_eq!(f.map.seg_of(b"wide-0"), f.map.seg_of(b"win-0"));
    assert_eq!(f.counts[2], [4, 4], "win-2: four checks in both windows");
    // wide-0's window: a head part of head and base word, a ring of 13 words of 13-bit
    // counters.
    let (d, _) = f.map.win("wide-0").windows[0];
    assert_eq!(window_words(d), (2, 13), "{d:#x}");
    run(vec![case("nothing", Want::clean(), |_, _| {})]);
}

/// The file header's fields (crc recomputed) and its two live words.
#[test]
fn file_header_fields() {
    let field = |what: &str, at: usize, v: u32, want: Want| {
        case(format!("header {what} = {v:#x}"), want, move |b, _| {
            put32(b, at, v);
            fix_file_crc(b);
        })
    };
    let count = |what: &str, word: u64, want: Want| {
        case(format!("segment count {what}"), want, move |b, _| {
            put64(b, 72, word)
        })
    };
    let lost = |n: u64| Want::clean().report(|r| r.lost_segments = n);
    let damaged = || Want::clean().report(|r| r.segment_count_damaged = true);
    let mut cases = vec![
        field("seg_shift", 16, u32::MAX, Want::err("Corrupt")),
        field("seg_shift", 16, 0, Want::err("Corrupt")),
        field("seg_shift", 16, 31, Want::err("Corrupt")),
        field("sub_windows", 20, u32::MAX, Want::err("Corrupt")),
        field("sub_windows", 20, 0, Want::err("Corrupt")),
        field("header length", 12, u32::MAX, Want::err("Corrupt")),
        field("header length", 12, 0, Want::err("Corrupt")),
        field("version", 8, u32::MAX, Want::err("UnsupportedVersion")),
        field("version", 8, 0, Want::err("UnsupportedVersion")),
        // Another valid B: every sliding window's layout changes, so no sliding entry fits its
        // size class any more; the exact ring and the records do not depend on B.
        field(
            "sub_windows",
            20,
            16,
            Want::clean().skipped(&KEYS[..8], &[], 8),
        ),
        case("creation time = u64::MAX", Want::clean(), |b, _| {
            put64(b, 24, u64::MAX);
            fix_file_crc(b);
        }),
        // The newest time seen: a bound only, never a count.
        case("newest time = u64::MAX", Want::clean(), |b, _| {
            put64(b, 64, u64::MAX)
        }),
        case("newest time = 0", Want::clean(), |b, _| put64(b, 64, 0)),
        count("past the file (4 of 3)", count_word(4), lost(1)),
        count(
            "= 2^20, the most a store holds",
            count_word(1 << 20),
            lost((1 << 20) - 3),
        ),
        // More than a store can hold: damage, though it passes the crc (all ones does too:
        // the crc32 of four 0xFF bytes is 0xFFFF_FFFF).
        count("= 2^20 + 1", count_word((1 << 20) + 1), damaged()),
        count("all ones", u64::MAX, damaged()),
        count("= u32::MAX, stale crc", u64::from(u32::MAX), damaged()),
        count("= 0, stale crc", 0, damaged()),
        // Below the segments the file holds, which are in use: the count is wrong, not the
        // file (a crash leaves at most blank segments past the count).
        count("= 0", count_word(0), damaged()),
        count("= 2 of 3", count_word(2), damaged()),
    ];
    let refuse = |what: &str, word: u64| {
        let want = Want {
            refuse_lost: true,
            ..Want::err("Truncated")
        };
        count(&format!("{what}, refuse_lost_segments"), word, want)
    };
    cases.push(refuse("past the file (4 of 3)", count_word(4)));
    cases.push(refuse("= 2^20", count_word(1 << 20)));
    run(cases);
}

/// Entry headers whose first word is not zero, at every `class` lines of segment `seg`: what
/// open finds when it reads the segment in that size class.
fn heads(b: &[u8], seg: usize, class: usize) -> u64 {
    (1..=SEG_LINES - class)
        .step_by(class)
        .filter(|l| get64(b, seg_at(seg) + l * LINE) != 0)
        .count() as u64
}

/// Segment headers (crc recomputed): index, size class, version, magic.
#[test]
fn segment_header_fields() {
    let f = fixture();
    let m = &f.map;
    let (wins, mixed, blobs) = (m.seg_of(b"win-0"), m.seg_of(b"one-0"), m.blob_seg());
    // The keys and records of segment `seg` are not loaded; `corrupt` entries are counted.
    let lose = |seg: usize, corrupt: u64| {
        Want::clean().skipped(&m.keys_in(seg), &m.records_in(seg), corrupt)
    };
    // What skipping a segment loses: its entries. A response segment's records are still
    // read through their pointers, and checked by their crc.
    let skipped = |seg: usize| lose(seg, 0).report(|r| r.corrupt_segments = 1);
    // The response segment's contents gone: every completed record's response is refused.
    let responses_gone = |mut want: Want| {
        want.records = [Rec::Refused, Rec::Refused, Rec::Refused, Rec::InFlight];
        want
    };
    let mut cases = Vec::new();
    for seg in [wins, mixed, blobs] {
        let field = |what: &str, at: usize, v: u32, want: Want| {
            case(
                format!("segment {seg} {what} = {v:#x}"),
                want,
                move |b, _| {
                    put32(b, seg_at(seg) + at, v);
                    fix_seg_crc(b, seg);
                },
            )
        };
        // A position past the file, the next segment's, and another segment's.
        for index in [u32::MAX, seg as u32 + 1, (seg as u32 + 2) % 3] {
            cases.push(field("index", 8, index, skipped(seg)));
        }
        cases.push(field("entry lines", 12, u32::MAX, skipped(seg)));
        cases.push(field("entry lines", 12, 17, skipped(seg)));
        cases.push(field("version", 16, 0, skipped(seg)));
        cases.push(field("version", 16, u32::MAX, skipped(seg)));
        cases.push(case(
            format!("segment {seg} magic"),
            skipped(seg),
            move |b, _| {
                b[seg_at(seg)] ^= 1;
            },
        ));
    }
    // Another size class: the entries are read at the wrong places, every one is corrupt.
    let b = &f.bytes;
    for (seg, class) in [(wins, 1), (wins, 2), (wins, 16), (mixed, 1), (mixed, 3)] {
        let want = lose(seg, heads(b, seg, class));
        cases.push(case(
            format!("segment {seg} class {class}"),
            want,
            move |b, _| {
                put32(b, seg_at(seg) + 12, class as u32);
                fix_seg_crc(b, seg);
            },
        ));
    }
    // The response segment read as entries: each record head is one corrupt entry, and its
    // response is lost with it.
    let want = responses_gone(lose(blobs, heads(b, blobs, 1)));
    cases.push(case("response segment class 1", want, move |b, _| {
        put32(b, seg_at(blobs) + 12, 1);
        fix_seg_crc(b, blobs);
    }));
    // An entry segment read as a response segment: its first line is not a record, so the
    // segment is not one, and is skipped.
    for seg in [wins, mixed] {
        cases.push(case(
            format!("segment {seg} class 0"),
            skipped(seg),
            move |b, _| {
                put32(b, seg_at(seg) + 12, 0);
                fix_seg_crc(b, seg);
            },
        ));
    }
    // A zero header line: a segment whose header was never written, zeroed whole and reused.
    for seg in [wins, mixed, blobs] {
        let mut want = lose(seg, 0).report(|r| r.blank_segments = 1);
        if seg == blobs {
            want = responses_gone(want);
        }
        cases.push(case(
            format!("segment {seg} header zeroed"),
            want,
            move |b, _| {
                b[seg_at(seg)..seg_at(seg) + LINE].fill(0);
            },
        ));
    }
    run(cases);
}

/// Window entry headers, descriptors and key padding (crc recomputed).
#[test]
fn window_entry_fields() {
    let mut cases = Vec::new();
    for key in ["win-2", "one-0", "exact-0"] {
        let k = key.as_bytes();
        let lose = || Want::lose_key(key);
        // Key length: zero, past the longest key, the maximum, and past the entry.
        for len in [0, 129, 255, 128] {
            cases.push(case(
                format!("{key} key length {len}"),
                lose(),
                entry_byte(k, 0, 0, len),
            ));
        }
        for n in [0, 3, 5, 255] {
            cases.push(case(
                format!("{key} windows {n}"),
                lose(),
                entry_byte(k, 0, 1, n),
            ));
        }
        for kind in [0, 2, 3, 255] {
            cases.push(case(
                format!("{key} kind {kind}"),
                lose(),
                entry_byte(k, 0, 2, kind),
            ));
        }
        cases.push(case(
            format!("{key} reserved"),
            lose(),
            entry_byte(k, 0, 3, 0xFF),
        ));
        // Padding after the key (no crc covers it).
        cases.push(case(format!("{key} key padding"), lose(), move |b, m| {
            b[m.win(key).word(m.win(key).windows.len().div_ceil(2) + 1) + key.len()] = 1;
        }));
    }
    // A key that takes the rest of the entry (64 bytes): the entry still fits its two lines,
    // and with its crc recomputed it is a valid entry of another key (whose bytes are the old
    // key and its zero state words). Nothing can tell it from one written so: `exact-0` reads
    // as never seen, and nothing is counted (the new key's ring is empty: the sweep unlinks
    // it).
    let other = Want {
        lost_keys: vec!["exact-0"],
        expires: 1,
        ..Want::clean()
    };
    cases.push(case(
        "exact-0 key length 64",
        other,
        entry_byte(b"exact-0", 0, 0, 64),
    ));
    // Descriptors: zero, the maximum, a window past 180 days, counter widths 0, 63 and 24
    // (valid, but the entry no longer fits its size class), an exact ring of 64 places.
    let d = fixture().map.win("win-2").windows[0].0;
    let long = 1 << 30 | 0xFF_FFFF << 6 | 6;
    let exact64 = 1 << 31 | (d & !0x3F) | 63;
    for v in [
        0,
        u32::MAX,
        long,
        d & !0x3F,
        d | 0x3F,
        d & !0x3F | 24,
        exact64,
    ] {
        let want = Want::lose_key("win-2");
        cases.push(case(
            format!("win-2 descriptor {v:#x}"),
            want,
            move |b, m| {
                put32(b, m.win("win-2").word(1), v);
                fix_entry_crc(b, m.win("win-2").at);
            },
        ));
    }
    // The unused half of an odd entry's last descriptor word (no crc covers it).
    cases.push(case(
        "one-0 unused descriptor half",
        Want::lose_key("one-0"),
        |b, m| {
            put32(b, m.win("one-0").word(1) + 4, u32::MAX);
        },
    ));
    run(cases);
}

/// Window state words (no crc covers them: they change on every request).
#[test]
fn window_state_words() {
    let m = &fixture().map;
    let ring = m.win("exact-0").windows[0].1;
    let head = m.win("win-2").windows[0].1;
    let base = m.win("wide-0").windows[0].1 + 1;
    let state = |what: &str, key: &'static str, word: usize, v: u64| {
        let want = Want::lose_key(key);
        case(format!("{key} {what} = {v:#x}"), want, move |b, m| {
            put64(b, m.win(key).word(word), v);
        })
    };
    let mut cases = vec![
        // An exact ring's head: its capacity, past any ring, and every bit set; a time past
        // the year 10000.
        state("ring head", "exact-0", ring, 5),
        state("ring head", "exact-0", ring, u64::from(u32::MAX)),
        state("ring meta", "exact-0", ring, u64::MAX),
        state("ring time", "exact-0", ring + 1, u64::MAX),
        // A sliding window's counters not adding up to its head.
        state("sliding head", "win-2", head, 0),
        state("sliding ring", "win-2", m.win("win-2").rings[0], u64::MAX),
        // The wide layout's base word (the full sub-window number) must agree with the tag.
        state("base", "wide-0", base, u64::MAX),
        state("base", "wide-0", base, 0),
    ];
    // Locked (and frozen): a crash mid-rotation, as open sees it. The window counts full at
    // its sub-window, never less: the 6-bit counter's maximum, 63, plus the 3 checks in the
    // older sub-window.
    let full = Want {
        counts: vec![("win-2", vec![66, 4])],
        ..Want::clean()
    };
    cases.push(case("win-2 sliding head = u64::MAX", full, move |b, m| {
        put64(b, m.win("win-2").word(head), u64::MAX);
    }));
    run(cases);
}

/// The same key twice (a crash while an entry moved): one copy is kept.
#[test]
fn duplicate_entries() {
    let copy = |key: Vec<u8>, frozen: bool| {
        move |b: &mut Vec<u8>, m: &FileMap| {
            let e = m.ent(&key);
            // The first free place of its size class after the last entry of its segment.
            let seg = (e.at - SEG0) / SEG;
            let class = m.classes[seg] as usize * LINE;
            let last = m
                .ents
                .iter()
                .filter(|x| (x.at - SEG0) / SEG == seg)
                .map(|x| x.at);
            let to = last.max().expect("entries") + class;
            b.copy_within(e.at..e.at + class, to);
            if frozen {
                let head = e.windows[0].1 * 8;
                b[to + head + 7] |= 0x80;
            }
        }
    };
    let dup = || Want::clean().report(|r| r.duplicates = 1);
    run(vec![
        case("win-2 twice", dup(), copy(b"win-2".to_vec(), false)),
        case(
            "win-2 twice, the copy frozen",
            dup(),
            copy(b"win-2".to_vec(), true),
        ),
        case("record 1 twice", dup(), copy(stored_key(1), false)),
    ]);
}
