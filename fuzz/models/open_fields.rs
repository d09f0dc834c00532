// The model of the `open_fields` fuzz target, shared by the target
// (fuzz/fuzz_targets/open_fields.rs) and its regression test (tests/fuzz_regressions.rs): both
// `include!` this file after `open_bytes.rs`, whose template store and `exercise` it uses.
// Items only (no inner docs): it is pasted where it is included and uses that file's imports.
// `Arbitrary` is derived only when cargo-fuzz builds (`cfg(fuzzing)`).
//
// Where `open_bytes` writes raw bytes, which the checksums mostly catch, this target sets
// structured fields of the template (a header word, a segment header field, a word of an
// entry, a word of a response record) to chosen values, then recomputes every checksum the
// store would check (the file header's, the segment-count word's, each segment header's,
// each entry's, each response's in its record and in its entry), so that the damage reaches
// the code that parses the fields.

/// Which field an edit sets. Indexes are taken modulo what the template has.
#[cfg_attr(fuzzing, derive(Arbitrary))]
#[derive(Debug, Clone, Copy)]
enum Field {
    /// A 32-bit field of the file header's checked bytes (`slot` 0..15 at `4 * slot`).
    FileHeader(u8),
    /// The segment-count word's count (bytes 72..76).
    SegmentCount,
    /// The newest-time word (bytes 64..72).
    NewestTime,
    /// A 32-bit field of a segment header (`slot` 0..15).
    SegmentHeader { seg: u8, slot: u8 },
    /// Word `word` of the `entry`-th entry of the template, whole or one half.
    Entry { entry: u8, word: u8, half: Half },
    /// Word `word` of the completed record's response record, whole or one half.
    Response { word: u16, half: Half },
}

/// The part of a 64-bit word an edit sets.
#[cfg_attr(fuzzing, derive(Arbitrary))]
#[derive(Debug, Clone, Copy)]
enum Half {
    Whole,
    Low,
    High,
}

/// The value an edit sets its field to.
#[cfg_attr(fuzzing, derive(Arbitrary))]
#[derive(Debug, Clone, Copy)]
enum Value {
    Zero,
    One,
    /// Every bit of the field set.
    Max,
    /// The value it had, plus or minus a little.
    Plus(u8),
    Minus(u8),
    /// The number of lines in the file, plus a little: a line number past the file.
    PastFile(u8),
    /// The global line number of the edited entry or record itself.
    Itself,
    /// Any value (cut to the field's width).
    Raw(u64),
}

/// An input: up to four edits; checksums are recomputed unless `stale_crcs`.
#[cfg_attr(fuzzing, derive(Arbitrary))]
#[derive(Debug, Clone)]
struct FieldInput {
    edits: Vec<(Field, Value)>,
    stale_crcs: bool,
}

fn word_at(b: &[u8], at: usize) -> u64 {
    b.get(at..at + 8)
        .map_or(0, |s| u64::from_le_bytes(s.try_into().expect("8 bytes")))
}

fn set_word(b: &mut [u8], at: usize, v: u64) {
    if let Some(s) = b.get_mut(at..at + 8) {
        s.copy_from_slice(&v.to_le_bytes());
    }
}

fn set_u32(b: &mut [u8], at: usize, v: u32) {
    if let Some(s) = b.get_mut(at..at + 4) {
        s.copy_from_slice(&v.to_le_bytes());
    }
}

/// The entries of a file, in file order (offset, lines), read with its segment headers.
fn entries_of(b: &[u8]) -> Vec<(usize, usize)> {
    let mut out = Vec::new();
    for seg in 0..b.len().saturating_sub(SEGMENTS_START) / SEG_LEN {
        let s = SEGMENTS_START + seg * SEG_LEN;
        let class = (word_at(b, s + 8) >> 32) as usize;
        if b.get(s..s + 8) != Some(b"TGSEGMNT") || class == 0 || class > 16 {
            continue;
        }
        let mut line = 1;
        while line + class <= SEG_LEN / 64 {
            let at = s + line * 64;
            if word_at(b, at) != 0 {
                out.push((at, class));
            }
            line += class;
        }
    }
    out
}

/// File offset of global line `line` (saturating: a damaged pointer names any line).
fn line_offset(line: u64) -> usize {
    let per = (SEG_LEN / 64) as u64;
    let seg = usize::try_from(line / per).unwrap_or(usize::MAX);
    seg.saturating_mul(SEG_LEN)
        .saturating_add(SEGMENTS_START + (line % per) as usize * 64)
}

/// Global line number of file offset `at` (in a segment).
fn line_of(at: usize) -> u64 {
    ((at - SEGMENTS_START) / 64) as u64
}

/// The response record of the first completed record of `b`: its offset and its entry's.
fn response_of(b: &[u8]) -> Option<(usize, usize)> {
    entries_of(b).into_iter().find_map(|(at, _)| {
        let h = word_at(b, at);
        let state_at = at + 8 * (1 + (h as usize & 0xFF).div_ceil(8) + 4);
        let done = (h >> 16) as u8 == 2 && word_at(b, state_at) >> 61 == 2;
        let blob = line_offset(word_at(b, state_at + 8));
        (done && blob < b.len()).then_some((blob, at))
    })
}

fn apply(b: &mut [u8], field: Field, value: Value) {
    let lines = (b.len() / 64) as u64;
    // Offset and width (4 or 8 bytes) of the field, and the line the value `Itself` names.
    let (at, width, itself) = match field {
        Field::FileHeader(slot) => (4 * usize::from(slot % 15), 4, 0),
        Field::SegmentCount => (72, 4, 0),
        Field::NewestTime => (64, 8, 0),
        Field::SegmentHeader { seg, slot } => {
            let segs = (b.len() - SEGMENTS_START) / SEG_LEN;
            let s = SEGMENTS_START + usize::from(seg) % segs.max(1) * SEG_LEN;
            (s + 4 * usize::from(slot % 15), 4, line_of(s))
        }
        Field::Entry { entry, word, half } => {
            let all = entries_of(b);
            let Some(&(e, class)) = all.get(usize::from(entry) % all.len().max(1)) else {
                return;
            };
            let w = e + 8 * (usize::from(word) % (class * 8));
            match half {
                Half::Whole => (w, 8, line_of(e)),
                Half::Low => (w, 4, line_of(e)),
                Half::High => (w + 4, 4, line_of(e)),
            }
        }
        Field::Response { word, half } => {
            let Some((blob, _)) = response_of(b) else {
                return;
            };
            let w = blob + 8 * (usize::from(word) % (SEG_LEN / 8));
            match half {
                Half::Whole => (w, 8, line_of(blob)),
                Half::Low => (w, 4, line_of(blob)),
                Half::High => (w + 4, 4, line_of(blob)),
            }
        }
    };
    let mask = if width == 8 {
        u64::MAX
    } else {
        u64::from(u32::MAX)
    };
    let now = word_at(b, at) & mask;
    let v = match value {
        Value::Zero => 0,
        Value::One => 1,
        Value::Max => mask,
        Value::Plus(n) => now.wrapping_add(u64::from(n)),
        Value::Minus(n) => now.wrapping_sub(u64::from(n)),
        Value::PastFile(n) => lines + u64::from(n),
        Value::Itself => itself,
        Value::Raw(v) => v,
    } & mask;
    if width == 8 {
        set_word(b, at, v);
    } else {
        set_u32(b, at, v as u32);
    }
}

/// Recompute every checksum the store checks, over what the fields now say.
fn fix_crcs(b: &mut [u8]) {
    let crc = crc32fast::hash(&b[0..60]);
    set_u32(b, 60, crc);
    let count = crc32fast::hash(&b[72..76]);
    set_u32(b, 76, count);
    for seg in 0..(b.len() - SEGMENTS_START) / SEG_LEN {
        let s = SEGMENTS_START + seg * SEG_LEN;
        let crc = crc32fast::hash(&b[s..s + 60]);
        set_u32(b, s + 60, crc);
    }
    for (at, _) in entries_of(b) {
        let h = word_at(b, at);
        let (key_len, n, kind) = (h as usize & 0xFF, (h >> 8) as usize & 0xFF, (h >> 16) as u8);
        if key_len == 0 || key_len > 128 || n > 4 {
            continue;
        }
        let mut c = crc32fast::Hasher::new();
        c.update(&b[at..at + 4]);
        let key_at = at + 8 * if kind == 2 { 1 } else { 1 + n.div_ceil(2) };
        if kind != 2 {
            c.update(&b[at + 8..at + 8 + 4 * n]);
        }
        let Some(key) = b.get(key_at..key_at + key_len) else {
            continue;
        };
        c.update(key);
        if kind == 2 {
            let fp = at + 8 * (1 + key_len.div_ceil(8));
            c.update(b.get(fp..fp + 32).unwrap_or(&[]));
        }
        if kind == 3 {
            // A version: the epoch after the key (kind 4, permits: the key alone).
            let epoch = at + 8 * (1 + key_len.div_ceil(8));
            c.update(b.get(epoch..epoch + 8).unwrap_or(&[]));
        }
        set_u32(b, at + 4, c.finalize());
    }
    // The response: its record's crc and its entry's, over the length its head gives.
    if let Some((blob, entry)) = response_of(b) {
        let len = (word_at(b, blob) >> 32) as usize;
        if let Some(payload) = b.get(blob + 16..blob + 16 + len) {
            let crc = crc32fast::hash(payload);
            set_u32(b, blob + 8, crc);
            let h = word_at(b, entry) as usize & 0xFF;
            set_u32(b, entry + 8 * (1 + h.div_ceil(8) + 6) + 4, crc);
        }
    }
}

/// The file the input stands for: the template with its edits.
fn build_fields(input: &FieldInput, template: &[u8]) -> Vec<u8> {
    let mut b = template.to_vec();
    for &(field, value) in input.edits.iter().take(4) {
        apply(&mut b, field, value);
    }
    if !input.stale_crcs {
        fix_crcs(&mut b);
    }
    b
}

/// Open the input's file read-only, look at everything, then open and use it as the writer
/// (`open_bytes`'s `exercise`): both opens agree, and nothing panics.
fn run_fields(
    input: &FieldInput,
    dir: &Path,
    template: &[u8],
) -> Result<OpenReport, tollgate::Error> {
    let path = dir.join("fields.tg");
    std::fs::write(&path, build_fields(input, template)).expect("write the input file");
    let view = Store::open_read_only(&path, options()).map(|view| {
        let v = view.verify();
        let mut seen = 0u64;
        view.visit(T0, |_| seen += 1);
        assert_eq!(seen, v.entries, "visit and verify walk the same entries");
        for key in KEYS {
            let _ = view.inspect_key(key, None, T0);
        }
        for key in [DONE_KEY, FLIGHT_KEY] {
            let _ = view.inspect_record(SCOPE, &idem_key(key), T0);
        }
        // Space in use is counted from the file, never from a damaged length.
        let s = view.stats();
        assert!(s.blob_used_lines <= s.bytes / 64, "{s:?}");
        assert!(s.blob_live_lines <= s.bytes / 64, "{s:?}");
        view.open_report()
    });
    let opened = exercise(&path);
    match (&view, &opened) {
        (Ok(v), Ok(o)) => assert_eq!(v, o, "the read-only view and the writer disagree"),
        (Err(v), Err(o)) => assert_eq!(
            std::mem::discriminant(v),
            std::mem::discriminant(o),
            "{v:?} / {o:?}"
        ),
        _ => panic!("read-only open {view:?}, open {opened:?}"),
    }
    opened
}
