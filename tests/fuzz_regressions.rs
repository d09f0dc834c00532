//! The fuzz targets' regressions and fixed inputs (`fuzz/`), run by plain `cargo test`: no
//! nightly, no cargo-fuzz.
//!
//! * `open_bytes`: every file of `tests/fixtures/fuzz/open_bytes/` is an input of the target
//!   (its first byte says how the store file is built from the rest). Each goes through the
//!   target's logic (no panic), and the ones named in `open_bytes::expected` must give
//!   the outcome written there.
//! * `ops`: the target's inputs are decoded by the `arbitrary` crate, which the main crate does
//!   not depend on; each input kept in `tests/fixtures/fuzz/ops/` is written out here instead as
//!   an explicit operation sequence of the same name (`ops::sequences`), run through the
//!   target's model, next to a few hand-written sequences.
//! * `open_fields`: structured edits with checksums recomputed (the target's model runs over
//!   `open_bytes`'s template): fixed edits with their outcome, and every field with every
//!   kind of value.
//!
//! They run the targets' own models: `fuzz/models/` holds them, and the targets and this file
//! `include!` the same files (`the_fuzz_targets_include_the_shared_models`). Tests marked `#[ignore]` state
//! behaviour that differs from what the docs promise, found while fuzzing; run them with
//! `cargo test --test fuzz_regressions -- --ignored`.

use std::path::{Path, PathBuf};

fn fixtures_dir(target: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/fuzz")
        .join(target)
}

/// The fixture files of `target` (name, bytes), by name.
fn fixtures(target: &str) -> Vec<(String, Vec<u8>)> {
    let mut files: Vec<(String, Vec<u8>)> = std::fs::read_dir(fixtures_dir(target))
        .expect("fixtures directory")
        .map(|e| {
            let e = e.expect("directory entry");
            let name = e.file_name().to_string_lossy().into_owned();
            (name, std::fs::read(e.path()).expect("read a fixture"))
        })
        .collect();
    files.sort();
    files
}

mod open_bytes {
    use std::path::Path;

    use tollgate::{
        Begin, Decision, Fingerprint, IdempotencyKey, Limit, Limits, ManualClock, OpenReport,
        Options, Store, StoredResponse,
    };

    include!("../fuzz/models/open_bytes.rs");

    /// The outcome of a fixture.
    #[derive(Debug)]
    enum Expect {
        /// Opens, with this report.
        Opens(OpenReport),
        NotAStore,
        UnsupportedVersion(u32),
    }

    /// A fixture made from the template, whose header page carries the census of the five
    /// entries the closed template held: every entry not loaded is reported missing.
    fn opens(entries: u64, corrupt_entries: u64, corrupt_segments: u64, blank: u64) -> Expect {
        Expect::Opens(OpenReport {
            entries,
            corrupt_entries,
            corrupt_segments,
            duplicates: 0,
            blank_segments: blank,
            missing_entries: Some(5 - entries),
            ..OpenReport::default()
        })
    }

    /// What each known fixture gives. The template (mode bytes 6..=15) holds `alpha` and
    /// `gamma` in segment 0, `beta` and the two idempotency records in segment 1, the response
    /// record in segment 2.
    fn expected(name: &str) -> Option<Expect> {
        Some(match name {
            // The 64 header bytes of a store with 64 KiB segments, and nothing else: the
            // segment-count word (bytes 72..80) is missing, so it cannot be trusted.
            "valid_empty_store" => Expect::Opens(OpenReport {
                segment_count_damaged: true,
                ..OpenReport::default()
            }),
            // The template as it is.
            "template_five_entries" => opens(5, 0, 0, 0),
            // Segment 0's magic overwritten: the segment is skipped whole.
            "corrupt_segment_header" => opens(3, 0, 1, 0),
            // The key length of `beta`'s entry changed: its crc fails.
            "corrupt_entry_crc" => opens(4, 1, 0, 0),
            // A header page recording one segment, and 1000 bytes of it: cut back to no
            // segment, and the lost segment reported.
            "truncated_store" => Expect::Opens(OpenReport {
                lost_segments: 1,
                ..OpenReport::default()
            }),
            // A valid header of format version 4 (this build reads version 3).
            "unsupported_version" => Expect::UnsupportedVersion(4),
            // Segment 0's header line zeroed, with other bytes in the segment (found by the
            // fuzzer; see `a_stale_entry_of_a_blank_segment_is_not_served`).
            "blank_segment_garbage_lines" => opens(3, 0, 0, 1),
            // Segment 0's header line zeroed, a valid entry for `omega` at line 100.
            "blank_segment_stale_entry" => opens(3, 0, 0, 1),
            "not_a_store" => Expect::NotAStore,
            _ => return None,
        })
    }

    /// Inputs the fuzzing found to panic in the store: run by `known_crashes_do_not_panic`
    /// (ignored until they are fixed), skipped by `fixtures_open_as_expected`.
    const KNOWN_CRASHES: [&str; 1] = [
        // The five timestamps of `beta`'s exact ring set to u64::MAX (`ms + 1` of
        // u64::MAX - 1): timestamps are not covered by the entry's crc nor checked at open, and
        // `Ring::eval` adds the window to them (src/window/exact.rs:45, "attempt to add with
        // overflow" with overflow checks; without them the sum wraps and the key is never
        // limited again).
        "exact_ring_max_timestamp",
    ];

    #[test]
    fn fixtures_open_as_expected() {
        let dir = tempfile::tempdir().expect("temp dir");
        let template = build_template(dir.path());
        let files = super::fixtures("open_bytes");
        for (name, data) in &files {
            if KNOWN_CRASHES.contains(&name.as_str()) {
                continue;
            }
            let got = run(data, dir.path(), &template);
            match (expected(name), &got) {
                (None, _) => {}
                (Some(Expect::Opens(want)), Ok(r)) => assert_eq!(r, &want, "{name}"),
                (Some(Expect::NotAStore), Err(tollgate::Error::NotAStore { .. })) => {}
                (
                    Some(Expect::UnsupportedVersion(v)),
                    Err(tollgate::Error::UnsupportedVersion { found, .. }),
                ) if *found == v => {}
                (Some(want), _) => panic!("{name}: expected {want:?}, got {got:?}"),
            }
        }
        // Every outcome written above has its file.
        for name in [
            "valid_empty_store",
            "template_five_entries",
            "corrupt_segment_header",
            "corrupt_entry_crc",
            "truncated_store",
            "unsupported_version",
            "blank_segment_garbage_lines",
            "blank_segment_stale_entry",
        ]
        .into_iter()
        .chain(KNOWN_CRASHES)
        {
            assert!(
                files.iter().any(|(n, _)| n == name),
                "fixture {name} is missing"
            );
        }
    }

    #[test]
    fn known_crashes_do_not_panic() {
        let dir = tempfile::tempdir().expect("temp dir");
        let template = build_template(dir.path());
        for (name, data) in super::fixtures("open_bytes") {
            if KNOWN_CRASHES.contains(&name.as_str()) {
                eprintln!("fixture {name}");
                let _ = run(&data, dir.path(), &template);
            }
        }
    }

    /// Not a fixture file: bytes that are no store.
    #[test]
    fn short_garbage_is_not_a_store() {
        let dir = tempfile::tempdir().expect("temp dir");
        let template = build_template(dir.path());
        assert!(matches!(expected("not_a_store"), Some(Expect::NotAStore)));
        for data in [&b"\x00hello"[..], b"\x01TOLLGATE", b"\x03TOLL"] {
            let got = run(data, dir.path(), &template);
            assert!(
                matches!(got, Err(tollgate::Error::NotAStore { .. })),
                "{data:?}: {got:?}"
            );
        }
    }

    /// `docs/FORMAT.md`: a segment whose header fails its checks is skipped whole and none of
    /// its entries is ever served. A header line of zeros is taken instead for a segment
    /// allocated by a crash before its header was written (whose body is zero too), and reused
    /// as it is: the entries it still holds are served after the next open.
    #[test]
    fn a_stale_entry_of_a_blank_segment_is_not_served() {
        let dir = tempfile::tempdir().expect("temp dir");
        let template = build_template(dir.path());
        let (_, data) = super::fixtures("open_bytes")
            .into_iter()
            .find(|(n, _)| n == "blank_segment_stale_entry")
            .expect("the fixture");
        let first = run(&data, dir.path(), &template).expect("opens");
        assert_eq!(first.blank_segments, 1);
        // `run` used the store (segment 0 got reused) and opened it again; once more:
        let store = Store::open(dir.path().join("input.tg"), options()).expect("opens");
        let d = store
            .peek_at(b"omega", &two_windows(), T0 + 1_000)
            .expect("peek");
        assert_eq!(
            d.windows()[0].used(),
            0,
            "the entry of a segment whose header was lost is served: {d:?}"
        );
    }
}

// `open_bytes`'s model is included for its template and `exercise`; its input builder and
// runner are not used here.
#[allow(dead_code)]
mod open_fields {
    use std::path::Path;

    use tollgate::{
        Begin, Decision, Fingerprint, IdempotencyKey, Limit, Limits, ManualClock, OpenReport,
        Options, Store, StoredResponse,
    };

    include!("../fuzz/models/open_bytes.rs");
    include!("../fuzz/models/open_fields.rs");

    /// The index of the template's entry whose key is `key` (records: its stored key ends
    /// with the UUID's bytes).
    fn entry_index(template: &[u8], key: &[u8]) -> u8 {
        let i = entries_of(template)
            .iter()
            .position(|&(at, _)| template[at..at + 64].windows(key.len()).any(|w| w == key));
        i.expect("the key's entry") as u8
    }

    /// The fields whose damage was found by `tests/corrupt_fields.rs` and
    /// `tests/corrupt_records.rs`, with their checksums recomputed, and their outcome.
    #[test]
    fn structured_edits_open_as_expected() {
        let dir = tempfile::tempdir().expect("temp dir");
        let template = build_template(dir.path());
        let done = entry_index(&template, idem_key(DONE_KEY).uuid().as_bytes());
        let edit = |field, value| FieldInput {
            edits: vec![(field, value)],
            stale_crcs: false,
        };
        // The template was closed holding five entries, and its census says so: an entry an
        // edit makes the open skip is reported missing (unless the edit is to the census).
        let report = |f: fn(&mut OpenReport)| {
            let mut r = OpenReport {
                entries: 5,
                ..OpenReport::default()
            };
            f(&mut r);
            r.missing_entries = Some(5 - r.entries);
            Ok::<_, &str>(r)
        };
        let entry = |word, half| Field::Entry {
            entry: done,
            word,
            half,
        };
        // The record's key (scope length, "tok_abc", UUID: 24 bytes) is words 1..4, its
        // fingerprint words 4..8, its state word 8, response pointer 9, length and crc 10.
        let cases = [
            // A count below the segments in use, or above what a store holds (all ones
            // passes its crc): damaged, and nothing is cut off.
            (
                edit(Field::SegmentCount, Value::Zero),
                report(|r| r.segment_count_damaged = true),
            ),
            (
                edit(Field::SegmentCount, Value::Max),
                report(|r| r.segment_count_damaged = true),
            ),
            (
                edit(Field::SegmentCount, Value::Plus(1)),
                report(|r| r.lost_segments = 1),
            ),
            // A record key whose scope length points past the key.
            (
                edit(entry(1, Half::Low), Value::Raw(0xC8)),
                report(|r| (r.entries, r.corrupt_entries) = (4, 1)),
            ),
            // A response length at its maximum: refused at replay, never counted as space.
            (edit(entry(10, Half::Low), Value::Max), report(|_| {})),
            // An entry segment that says it holds responses.
            (
                edit(Field::SegmentHeader { seg: 0, slot: 3 }, Value::Zero),
                report(|r| (r.entries, r.corrupt_segments) = (3, 1)),
            ),
            (edit(Field::FileHeader(4), Value::Max), Err("Corrupt")),
            (
                FieldInput {
                    edits: vec![(Field::FileHeader(4), Value::Max)],
                    stale_crcs: true,
                },
                Err("NotAStore"),
            ),
        ];
        for (input, want) in cases {
            let got = run_fields(&input, dir.path(), &template);
            let got = got.map_err(|e| match e {
                tollgate::Error::Corrupt { .. } => "Corrupt",
                tollgate::Error::NotAStore { .. } => "NotAStore",
                _ => "other",
            });
            assert_eq!(got, want, "{input:?}");
        }
    }

    /// Every field kind with every kind of value, one edit at a time: no panic, and the
    /// model's rules hold (both opens agree, a second open finds nothing new).
    #[test]
    fn every_field_with_every_value() {
        let dir = tempfile::tempdir().expect("temp dir");
        let template = build_template(dir.path());
        let values = [
            Value::Zero,
            Value::One,
            Value::Max,
            Value::Plus(1),
            Value::Minus(1),
            Value::PastFile(1),
            Value::Itself,
            Value::Raw(0x8000_0001_0000_0040),
        ];
        let mut fields = vec![Field::SegmentCount, Field::NewestTime];
        fields.extend((0..15).map(Field::FileHeader));
        for seg in 0..3 {
            fields.extend((2..5).map(|slot| Field::SegmentHeader { seg, slot }));
        }
        let entries = entries_of(&template).len() as u8;
        for entry in 0..entries {
            for word in 0..16 {
                fields.push(Field::Entry {
                    entry,
                    word,
                    half: Half::Whole,
                });
            }
            fields.push(Field::Entry {
                entry,
                word: 0,
                half: Half::Low,
            });
        }
        fields.extend((0..4).map(|word| Field::Response {
            word,
            half: Half::Low,
        }));
        fields.push(Field::Response {
            word: 1,
            half: Half::High,
        });
        for &field in &fields {
            for &value in &values {
                let input = FieldInput {
                    edits: vec![(field, value)],
                    stale_crcs: false,
                };
                let _ = run_fields(&input, dir.path(), &template);
            }
        }
    }
}

mod ops {
    use std::path::{Path, PathBuf};
    use std::time::Duration;

    use tollgate::{Decision, Limit, Limits, ManualClock, Mode, Options, Store};

    include!("../fuzz/models/ops.rs");

    /// The input of `tests/fixtures/fuzz/ops/max_seen_time_exact_window`.
    const MAX_SEEN_SUB_WINDOWS: u8 = 35;

    fn max_seen_ops() -> Vec<Op> {
        vec![
            check(MIXED, 3, 3),
            advance(2_550),
            check(MIXED, 3, 3),
            back(98_000),
            check(MIXED, 3, 1),
        ]
    }

    const BUCKETED: u8 = 0;
    const TWO: u8 = 1;
    const EXACT: u8 = 2;
    const MIXED: u8 = 3;

    /// A check of cost `cost` (1 to 3).
    fn check(set: u8, key: u8, cost: u8) -> Op {
        Op::Check {
            set,
            key,
            cost: cost - 1,
        }
    }

    fn probe(set: u8, key: u8) -> Op {
        Op::Probe { set, key }
    }

    fn peek(set: u8, key: u8) -> Op {
        Op::Peek { set, key }
    }

    /// `ms` as `step(m, scale)`.
    fn as_step(ms: u64) -> (u8, u8) {
        (0u8..4)
            .find_map(|scale| {
                let unit = 10u64.pow(u32::from(scale));
                let m = u8::try_from(ms / unit).ok()?;
                ms.is_multiple_of(unit).then_some((m, scale))
            })
            .unwrap_or_else(|| panic!("{ms} ms is not a step"))
    }

    fn advance(ms: u64) -> Op {
        let (ms, scale) = as_step(ms);
        Op::Advance { ms, scale }
    }

    fn back(ms: u64) -> Op {
        let (ms, scale) = as_step(ms);
        Op::Back { ms, scale }
    }

    /// Reopen with `sub_windows` (2 to 31).
    fn reopen(close: bool, sub_windows: u8) -> Op {
        Op::Reopen {
            close,
            sub_windows: sub_windows - 2,
        }
    }

    /// The operation sequences: the inputs of `tests/fixtures/fuzz/ops/` (same names, as the
    /// target decodes them), then hand-written ones.
    fn sequences() -> Vec<(&'static str, Input)> {
        vec![
            // Found by the fuzzer with the `max-seen-time` feature (by an earlier version of
            // `Op`; the file holds the same operations encoded for this one): the exact window
            // of a mixed set after a rejection at a later time and a clock step back. Holds the
            // store's model; see `exact_window_stands_still_at_the_newest_time_seen`.
            (
                "max_seen_time_exact_window",
                Input {
                    sub_windows: MAX_SEEN_SUB_WINDOWS,
                    ops: max_seen_ops(),
                },
            ),
            // Found by the fuzzer: an expiry, the clock back before it, then a reopen that
            // brought the expired entry back with its counts (see
            // `an_expired_key_stays_forgotten_after_a_reopen`).
            (
                "expire_back_reopen",
                Input {
                    sub_windows: 93,
                    ops: vec![
                        Op::Check {
                            set: 143,
                            key: 143,
                            cost: 143,
                        },
                        Op::Advance {
                            ms: 136,
                            scale: 143,
                        },
                        Op::Expire,
                        Op::Back {
                            ms: 211,
                            scale: 143,
                        },
                        Op::Reopen {
                            close: true,
                            sub_windows: 130,
                        },
                        Op::Check {
                            set: 143,
                            key: 143,
                            cost: 0,
                        },
                    ],
                },
            ),
            (
                "counters_survive_reopens",
                Input {
                    sub_windows: 14,
                    ops: vec![
                        check(EXACT, 0, 2),
                        advance(500),
                        check(EXACT, 0, 3),
                        check(BUCKETED, 1, 3),
                        check(BUCKETED, 1, 3),
                        reopen(true, 5),
                        check(EXACT, 0, 1),
                        check(BUCKETED, 1, 2),
                        peek(BUCKETED, 1),
                        advance(2_600),
                        check(EXACT, 0, 2),
                        reopen(false, 31),
                        advance(8_000),
                        peek(BUCKETED, 1),
                        check(BUCKETED, 1, 3),
                    ],
                },
            ),
            (
                "backwards_clock_everywhere",
                Input {
                    sub_windows: 30,
                    ops: vec![
                        check(MIXED, 2, 3),
                        check(TWO, 3, 3),
                        check(TWO, 3, 3),
                        advance(9_000),
                        check(TWO, 3, 2),
                        back(60_000),
                        check(MIXED, 2, 1),
                        check(TWO, 3, 1),
                        probe(MIXED, 2),
                        advance(1_500),
                        check(EXACT, 5, 3),
                        back(100),
                        check(EXACT, 5, 3),
                        peek(EXACT, 5),
                        advance(200_000),
                        check(TWO, 3, 3),
                    ],
                },
            ),
            (
                "expiry_then_new_counts",
                Input {
                    sub_windows: 6,
                    ops: vec![
                        check(BUCKETED, 0, 3),
                        check(EXACT, 1, 1),
                        Op::Expire,
                        advance(4_000),
                        Op::Expire,
                        advance(20_000),
                        Op::Expire,
                        check(BUCKETED, 0, 1),
                        reopen(true, 16),
                        back(50_000),
                        check(EXACT, 1, 3),
                        peek(BUCKETED, 0),
                    ],
                },
            ),
            // Versions and permits (`fuzz/models/ops_coordination.rs`): reads, bumps, a
            // compare-and-bump current and stale, permits up to the cap and past their
            // deadlines, releases (of a permit held, released, replaced, of an unlinked
            // entry), expiry, reopens and the clock going back over deadlines.
            (
                "versions_and_permits",
                Input {
                    sub_windows: 48,
                    ops: vec![
                        version(0, 0),
                        version(0, 2),
                        version(0, 3),
                        version(1, 1),
                        version(2, 3),
                        acquire(0, 9),
                        acquire(0, 4),
                        acquire(0, 4),
                        acquire(1, 0),
                        Op::Release { which: 0 },
                        Op::Release { which: 0 },
                        acquire(0, 0),
                        reopen(false, 16),
                        version(0, 1),
                        advance(600),
                        acquire(0, 0),
                        Op::Release { which: 1 },
                        Op::Expire,
                        advance(1_000),
                        Op::Expire,
                        Op::Release { which: 2 },
                        acquire(0, 49),
                        back(1_700),
                        acquire(0, 1),
                        acquire(1, 1),
                        reopen(true, 16),
                        version(0, 2),
                        version(2, 2),
                        Op::Release { which: 5 },
                        advance(10_000),
                        Op::Expire,
                        reopen(true, 16),
                    ],
                },
            ),
        ]
    }

    fn version(res: u8, how: u8) -> Op {
        Op::Version { res, how }
    }

    fn acquire(tok: u8, lease: u8) -> Op {
        Op::Acquire { tok, lease }
    }

    #[test]
    fn sequences_hold_the_model() {
        for (name, input) in sequences() {
            eprintln!("sequence {name}");
            run(&input, false);
        }
    }

    /// Every input kept for the target has its sequence.
    #[test]
    fn every_fixture_has_a_sequence() {
        let names: Vec<&str> = sequences().iter().map(|(n, _)| *n).collect();
        for (name, _) in super::fixtures("ops") {
            assert!(
                names.contains(&name.as_str()),
                "tests/fixtures/fuzz/ops/{name} has no sequence in `sequences()`"
            );
        }
    }

    /// Two bucketed windows: the hour refuses after the minute took the cost; the minute gives
    /// it back and, empty, forgets its time; then a request from a clock 9 s behind is counted
    /// at its own time.
    #[test]
    fn a_refusal_by_the_second_window_gives_the_first_its_cost_back() {
        let dir = temp_dir();
        let mut h = Harness::new(dir.path(), 16, false);
        let (two, k) = (TWO as usize, 0);
        for _ in 0..3 {
            for _ in 0..2 {
                assert!(h.check(two, k, 3).allowed());
            }
            h.apply(advance(11_000));
        }
        h.apply(advance(1_000));
        // 18 in the hour, nothing left in the minute: the hour refuses 3.
        let d = h.check(two, k, 3);
        assert!(!d.allowed());
        assert!(d.windows()[0].fits() && !d.windows()[1].fits(), "{d:?}");
        assert_eq!(d.windows()[0].used(), 0);
        h.apply(back(9_000));
        assert!(h.check(two, k, 1).allowed());
        assert!(h.check(two, k, 1).allowed());
        assert!(!h.check(two, k, 1).allowed(), "the hour is full");
        h.apply(reopen(true, 16));
        assert!(!h.check(two, k, 1).allowed(), "the hour is still full");
    }

    // The `max-seen-time` model of the ops target (a backwards clock stands still at the newest
    // time a key was *checked* at) is not what tollgate does: it stands still at the newest
    // time a request was *counted* at (docs/ACCURACY.md). That input is kept as a fixture for
    // the fuzz feature, not run here.

    /// The compactor's docs: an expired window entry "is indistinguishable from a key never
    /// seen". Its bytes stay in the file until the line is reused; the next open must not
    /// load it again (it did until the unlink cleared the entry's header, in
    /// `src/compactor.rs`; the `expire_back_reopen` sequence is how the fuzzing met it).
    #[test]
    fn an_expired_key_stays_forgotten_after_a_reopen() {
        let dir = temp_dir();
        let path = dir.path().join("expired.tg");
        let opts = || {
            Options::default()
                .compactor(false)
                .segment_size_log2(16)
                .clock(ManualClock::new(T0))
        };
        let limits = &limit_sets()[BUCKETED as usize];
        let store = Store::open(&path, opts()).expect("open");
        for _ in 0..7 {
            assert!(store
                .check_at(b"k", limits, 1, T0)
                .expect("check")
                .allowed());
        }
        assert_eq!(store.expire_now(T0 + 20_000).expired, 1);
        assert_eq!(store.stats().entries, 0);
        let d = store.peek_at(b"k", limits, T0 + 1).expect("peek");
        assert_eq!(d.windows()[0].used(), 0, "forgotten before the reopen");
        store.close().expect("close");
        let store = Store::open(&path, opts()).expect("reopen");
        let d = store.peek_at(b"k", limits, T0 + 1).expect("peek");
        assert_eq!(
            (store.open_report().entries, d.windows()[0].used()),
            (0, 0),
            "the expired entry is back: {:?}",
            store.open_report()
        );
    }
}

/// The fuzz targets run the models this file runs: each includes its shared model file and
/// holds no copy of it. Skipped if `fuzz/` is not there.
#[test]
fn the_fuzz_targets_include_the_shared_models() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let targets = root.join("fuzz/fuzz_targets");
    if !targets.is_dir() {
        return;
    }
    for target in ["open_bytes", "open_fields", "ops"] {
        let src = std::fs::read_to_string(targets.join(format!("{target}.rs")))
            .expect("read a fuzz target");
        let model = std::fs::read_to_string(root.join(format!("fuzz/models/{target}.rs")))
            .expect("read a fuzz model");
        let include = format!("include!(\"../models/{target}.rs\");");
        assert_eq!(
            src.matches(include.as_str()).count(),
            1,
            "{target}.rs includes its model once"
        );
        // No item of the model is defined again in the target.
        for line in model
            .lines()
            .filter(|l| l.starts_with("fn ") || l.starts_with("struct "))
        {
            let head = line.split('(').next().unwrap_or(line);
            assert!(!src.contains(head), "{target}.rs defines `{head}` again");
        }
    }
}
