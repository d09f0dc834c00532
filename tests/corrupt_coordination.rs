//! Corrupted version entries (kind 3) and permit entries (kind 4), one field at a time, in a
//! small store file: the header's bytes, the key, the epoch (with and without the crc
//! recomputed), and the live words (a version's number, permit slots), which the crc does not
//! cover. A damaged entry is counted in `OpenReport::corrupt_entries` and never served: its
//! version comes back as a new entry (another epoch, number 0: no old ETag matches it), its
//! permits as none held. Damage the format allows (any number, any slot word) loads; a slot
//! left frozen is unfrozen. Every reopened store verifies clean and never panics.

use std::path::Path;

use tollgate::{Options, Store, Version};

const T0: u64 = 1_700_000_000_000;
const SEG_LOG2: u32 = 16;
const LINE: usize = 64;
const VKEY: &[u8] = b"/api/leads/7";
const PKEY: &[u8] = b"tok_conc_1";

fn opts() -> Options {
    Options::default()
        .segment_size_log2(SEG_LOG2)
        .compactor(false)
        .clock(tollgate::ManualClock::new(T0))
}

fn word(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().unwrap())
}

fn put(b: &mut [u8], at: usize, v: u64) {
    b[at..at + 8].copy_from_slice(&v.to_le_bytes());
}

/// The file offset of the entry of `kind` whose key is `key`.
fn find(b: &[u8], kind: u8, key: &[u8]) -> usize {
    let seg = 1usize << SEG_LOG2;
    // Segments start at 2 MiB (format 3).
    for s in 0..(b.len() - (2 << 20)) / seg {
        let base = (2 << 20) + s * seg;
        let class = u32::from_le_bytes(b[base + 12..base + 16].try_into().unwrap()) as usize;
        if class == 0 {
            continue;
        }
        let mut line = 1;
        while (line + class) * LINE <= seg {
            let at = base + line * LINE;
            line += class;
            let h = word(b, at);
            if (h >> 16) as u8 == kind
                && (h & 0xFF) as usize == key.len()
                && &b[at + 8..at + 8 + key.len()] == key
            {
                return at;
            }
        }
    }
    panic!("no entry of kind {kind}");
}

/// Recompute the crc of the entry at `at` as the store does: header low half, key, and for a
/// version its epoch.
fn fix_crc(b: &mut [u8], at: usize) {
    let h = word(b, at);
    let key_len = (h & 0xFF) as usize;
    if key_len == 0 || key_len > 128 {
        return;
    }
    let mut c = crc32fast::Hasher::new();
    c.update(&b[at..at + 4]);
    c.update(&b[at + 8..at + 8 + key_len]);
    if (h >> 16) as u8 == 3 {
        let e = at + 8 * (1 + key_len.div_ceil(8));
        c.update(&b[e..e + 8]);
    }
    b[at + 4..at + 8].copy_from_slice(&c.finalize().to_le_bytes());
}

/// A store with a version bumped to 5 and two permits held until `T0 + 30 s`; its bytes and
/// the version.
fn pristine(path: &Path) -> (Vec<u8>, Version) {
    let store = Store::open(path, opts()).unwrap();
    for _ in 0..5 {
        store.bump_version(VKEY).unwrap();
    }
    for _ in 0..2 {
        assert!(store
            .acquire_permit_at(PKEY, 4, 30_000, T0)
            .unwrap()
            .is_some());
    }
    let v = store.version(VKEY).unwrap();
    store.close().unwrap();
    (std::fs::read(path).unwrap(), v)
}

/// What a reopened store says: corrupt entries, the version, permits held at `T0`.
fn reopen(path: &Path, bytes: &[u8]) -> (u64, Version, u32) {
    std::fs::write(path, bytes).unwrap();
    let store = Store::open(path, opts()).unwrap();
    let corrupt = store.open_report().corrupt_entries;
    assert!(store.verify().problems.is_empty());
    let v = store.version(VKEY).unwrap();
    let held = store.permits_held_at(PKEY, T0).unwrap();
    (corrupt, v, held)
}

#[test]
fn version_and_permit_entries_one_field_at_a_time() {
    let dir = tempfile::tempdir().unwrap();
    let (orig, v) = pristine(&dir.path().join("p.tg"));
    let path = dir.path().join("c.tg");
    assert_eq!(reopen(&path, &orig), (0, v, 2), "the pristine file");
    let vat = find(&orig, 3, VKEY);
    let pat = find(&orig, 4, PKEY);
    let epoch_at = vat + 8 * (1 + VKEY.len().div_ceil(8));
    let slots_at = pat + 8 * (1 + PKEY.len().div_ceil(8));

    // (what, edit, the version entry survives, the permit entry survives)
    type Edit = Box<dyn Fn(&mut Vec<u8>)>;
    let mut cases: Vec<(String, Edit, bool, bool)> = Vec::new();
    for (name, at, is_version) in [("version", vat, true), ("permits", pat, false)] {
        let keep = |fine: bool| {
            if is_version {
                (fine, true)
            } else {
                (true, fine)
            }
        };
        for len in [0u8, 129, 255, 7] {
            let (kv, kp) = keep(false);
            cases.push((
                format!("{name} key length {len}"),
                Box::new(move |b| {
                    b[at] = len;
                    fix_crc(b, at);
                }),
                kv,
                kp,
            ));
        }
        for (byte, v, what) in [(1, 1u8, "windows"), (2, 9, "kind"), (3, 0xFF, "reserved")] {
            let (kv, kp) = keep(false);
            cases.push((
                format!("{name} {what} {v}"),
                Box::new(move |b| {
                    b[at + byte] = v;
                    fix_crc(b, at);
                }),
                kv,
                kp,
            ));
        }
        let (kv, kp) = keep(false);
        cases.push((
            format!("{name} crc"),
            Box::new(move |b| b[at + 5] ^= 0x40),
            kv,
            kp,
        ));
        let (kv, kp) = keep(false);
        cases.push((
            format!("{name} key byte, crc not recomputed"),
            Box::new(move |b| b[at + 9] ^= 1),
            kv,
            kp,
        ));
        let (kv, kp) = keep(false);
        cases.push((
            format!("{name} key padding"),
            Box::new(move |b| {
                b[at + 8 + 15] = 1;
                fix_crc(b, at);
            }),
            kv,
            kp,
        ));
    }
    cases.push((
        "version epoch, crc not recomputed".into(),
        Box::new(move |b| b[epoch_at] ^= 0x10),
        false,
        true,
    ));
    cases.push((
        "version epoch 0".into(),
        Box::new(move |b| {
            put(b, epoch_at, 0);
            fix_crc(b, vat);
        }),
        false,
        true,
    ));
    for (i, (what, edit, version_kept, permits_kept)) in cases.iter().enumerate() {
        let mut b = orig.clone();
        edit(&mut b);
        let (corrupt, now, held) = reopen(&path, &b);
        let want_corrupt = u64::from(!version_kept) + u64::from(!permits_kept);
        assert_eq!(corrupt, want_corrupt, "case {i}: {what}");
        if *version_kept {
            assert_eq!(now, v, "case {i}: {what}");
        } else {
            assert_eq!(now.number, 0, "case {i}: {what}: never served");
            assert_ne!(now.epoch, v.epoch, "case {i}: {what}: a new epoch");
        }
        assert_eq!(held, if *permits_kept { 2 } else { 0 }, "case {i}: {what}");
    }

    // The live words take any value: a version's number, and slot words (a frozen one is
    // unfrozen at open and still holds its permit).
    let mut b = orig.clone();
    put(&mut b, epoch_at + 8, u64::MAX - 1);
    let (corrupt, now, _) = reopen(&path, &b);
    assert_eq!((corrupt, now.epoch, now.number), (0, v.epoch, u64::MAX - 1));
    let mut b = orig.clone();
    let first = word(&b, slots_at);
    put(&mut b, slots_at, first | 1 << 63);
    put(&mut b, slots_at + 8 * 63, u64::MAX >> 1);
    let (corrupt, _, held) = reopen(&path, &b);
    assert_eq!(
        (corrupt, held),
        (0, 3),
        "frozen slot unfrozen, a far deadline held"
    );
    let store = Store::open(&path, opts()).unwrap();
    assert_eq!(word(&std::fs::read(&path).unwrap(), slots_at), first);
    drop(store);
}
