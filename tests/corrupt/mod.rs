//! The harness of the targeted corruption tests (`tests/corrupt_fields.rs`,
//! `tests/corrupt_records.rs`): the store that gets damaged, where its fields are in the file
//! (read with the documented format, `docs/FORMAT.md`), checksums recomputed the way the store
//! computes them, and the run of a damaged copy against its exact expected outcome (`run.rs`).
#![allow(dead_code)]

pub mod run;

use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::Duration;

use crate::common::T0;
use tollgate::{
    Begin, Error, Fingerprint, IdempotencyKey, Limit, Limits, ManualClock, Options, Store,
    StoredResponse,
};

// ---------------------------------------------------------------------------------------------
// The store that gets damaged.
// ---------------------------------------------------------------------------------------------

/// 64 KiB segments, the smallest: the file is small and its layout easy to follow.
pub const SEG: usize = 1 << 16;
/// Where segment 0 starts (format 3: on a 2 MiB boundary, after the header page and a hole).
pub const SEG0: usize = 2 << 20;
pub const LINE: usize = 64;
pub const SEG_LINES: usize = SEG / LINE;
/// When everything is read: every count written (T0 to T0 + 0.5 s) is still in its window,
/// every record in its TTL.
pub const AT: u64 = T0 + 30_000;
pub const SCOPE: &[u8] = b"tok";
/// Window keys: `win-*` have two sliding windows and `wide-0` one with 13-bit counters, whose
/// sub-window numbers need a base word beside the head (the wide layout); they share a
/// segment of 3-line entries. `one-0` (one sliding window: an odd number, so half a
/// descriptor word is unused) and `exact-0` (an exact ring) share a segment of 2-line entries
/// with the idempotency records.
pub const KEYS: [&str; 9] = [
    "win-0", "win-1", "win-2", "win-3", "win-4", "win-5", "wide-0", "one-0", "exact-0",
];
/// Records 0..3 are completed (0 with the smallest response), 3 is in flight.
pub const RECORDS: usize = 4;
pub const ENTRIES: u64 = (KEYS.len() + RECORDS) as u64;

pub fn limits(key: &str) -> Limits {
    match key {
        "one-0" => Limits::new(&[Limit::per_hour(100)]),
        "exact-0" => Limits::new(&[Limit::per_minute(5).exact()]),
        "wide-0" => Limits::new(&[Limit::per_minute(5000)]),
        _ => Limits::new(&[Limit::per_minute(60), Limit::per_hour(1000)]),
    }
    .expect("valid limits")
}

pub fn opts(now: u64) -> Options {
    Options::default()
        .segment_size_log2(16)
        .max_segments(64)
        .compactor(false)
        .lease_timeout(Duration::from_secs(3600))
        .clock(ManualClock::new(now))
}

pub fn idem_key(i: usize) -> IdempotencyKey {
    IdempotencyKey::parse(&format!("4d9c3a41-6bb7-4c4e-9a39-8f3c2d7e1f0{i}")).expect("UUID v4")
}

pub fn fp(i: usize) -> Fingerprint {
    Fingerprint::of("POST", "/calls", format!("{{\"n\":{i}}}").as_bytes())
}

pub fn response(i: usize) -> StoredResponse {
    let body: Vec<u8> = (0..i * 2500).map(|j| (j * 7 + i) as u8).collect();
    StoredResponse::new(200 + i as u16, body).with_header("x-call", format!("c{i}"))
}

/// The key a record is stored under: scope length, scope, UUID.
pub fn stored_key(i: usize) -> Vec<u8> {
    let mut k = vec![SCOPE.len() as u8];
    k.extend_from_slice(SCOPE);
    k.extend_from_slice(idem_key(i).uuid().as_bytes());
    k
}

/// What a window key counts at `AT`, one number per window.
pub fn counts(store: &Store, key: &str) -> Result<Vec<u32>, Error> {
    let d = store.peek_at(key.as_bytes(), &limits(key), AT)?;
    Ok(d.windows().iter().map(|w| w.used()).collect())
}

pub struct Fixture {
    pub _dir: tempfile::TempDir,
    pub dir: PathBuf,
    pub bytes: Vec<u8>,
    pub counts: Vec<Vec<u32>>,
    pub map: FileMap,
}

pub fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("base.tg");
        let store = Store::open(&path, opts(T0)).expect("create");
        for (i, key) in KEYS.iter().enumerate() {
            for j in 0..=i as u64 % 4 + 1 {
                store
                    .check_at(key.as_bytes(), &limits(key), 1, T0 + 100 * j)
                    .expect("check");
            }
        }
        for i in 0..RECORDS {
            let Ok(Begin::Started(lease)) = store.begin_at(SCOPE, &idem_key(i), &fp(i), T0) else {
                panic!("record {i} starts");
            };
            if i < 3 {
                store
                    .complete_at(&lease, &response(i), T0 + 1)
                    .expect("complete");
            }
        }
        let counts = KEYS
            .iter()
            .map(|k| counts(&store, k).expect("peek"))
            .collect();
        store.close().expect("close");
        let bytes = std::fs::read(&path).expect("read");
        let map = parse(&bytes);
        Fixture {
            dir: dir.path().to_path_buf(),
            _dir: dir,
            bytes,
            counts,
            map,
        }
    })
}

// ---------------------------------------------------------------------------------------------
// Where things are (docs/FORMAT.md).
// ---------------------------------------------------------------------------------------------

pub fn get64(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

pub fn put32(b: &mut [u8], at: usize, v: u32) {
    b[at..at + 4].copy_from_slice(&v.to_le_bytes());
}

pub fn put64(b: &mut [u8], at: usize, v: u64) {
    b[at..at + 8].copy_from_slice(&v.to_le_bytes());
}

pub fn seg_at(seg: usize) -> usize {
    SEG0 + seg * SEG
}

pub fn line_at(line: u64) -> usize {
    seg_at(line as usize / SEG_LINES) + line as usize % SEG_LINES * LINE
}

/// An entry of the fixture: its stored key, file offset and where its words are.
#[derive(Debug, Clone)]
pub struct Ent {
    pub key: Vec<u8>,
    pub at: usize,
    /// Window entries: each window's descriptor and first state word (its head part: a
    /// sliding window's head and base words, an exact window's meta word and ring).
    pub windows: Vec<(u32, usize)>,
    /// Window entries: where each window's ring part starts (the sliding windows' counters,
    /// after every window's head part; an exact window has none, so its entry is where the
    /// next one's would be).
    pub rings: Vec<usize>,
    /// Records: the state word (then the response pointer and the length/crc word).
    pub state: usize,
}

impl Ent {
    pub fn word(&self, i: usize) -> usize {
        self.at + 8 * i
    }
}

#[derive(Debug, Default)]
pub struct FileMap {
    /// Size class of every segment (0: a response segment).
    pub classes: Vec<u32>,
    pub ents: Vec<Ent>,
}

impl FileMap {
    pub fn ent(&self, key: &[u8]) -> &Ent {
        self.ents
            .iter()
            .find(|e| e.key == key)
            .expect("key in the file")
    }

    pub fn win(&self, key: &str) -> &Ent {
        self.ent(key.as_bytes())
    }

    pub fn rec(&self, i: usize) -> &Ent {
        self.ent(&stored_key(i))
    }

    pub fn seg_of(&self, key: &[u8]) -> usize {
        (self.ent(key).at - SEG0) / SEG
    }

    /// The window keys whose entries are in segment `seg`.
    pub fn keys_in(&self, seg: usize) -> Vec<&'static str> {
        KEYS.into_iter()
            .filter(|k| self.seg_of(k.as_bytes()) == seg)
            .collect()
    }

    /// The records whose entries are in segment `seg`.
    pub fn records_in(&self, seg: usize) -> Vec<usize> {
        (0..RECORDS)
            .filter(|&i| self.seg_of(&stored_key(i)) == seg)
            .collect()
    }

    pub fn blob_seg(&self) -> usize {
        self.classes
            .iter()
            .position(|&c| c == 0)
            .expect("a response segment")
    }
}

/// A window's words at the default 64 sub-windows, as (head part, ring part): a sliding
/// window's head part is its head and a base word when the sub-window numbers do not fit the
/// head's tag, its ring 64 counters of `c` bits; an exact window's meta word and ring are all
/// head part.
pub fn window_words(d: u32) -> (usize, usize) {
    if d >> 31 == 1 {
        return (2 + (d & 0x3F) as usize, 0);
    }
    let v = u64::from((d >> 6) & 0xFF_FFFF);
    let ms = if (d >> 30) & 1 == 1 { v * 1000 } else { v };
    let c = u64::from(d & 0x3F);
    let wide = (253_402_300_799_999 / ms.div_ceil(64)) >> (62 - 2 * c) != 0;
    (1 + usize::from(wide), c as usize)
}

pub fn parse(b: &[u8]) -> FileMap {
    let mut map = FileMap::default();
    for seg in 0..(b.len() - SEG0) / SEG {
        let s = seg_at(seg);
        let class = u32::from_le_bytes(b[s + 12..s + 16].try_into().expect("4 bytes"));
        map.classes.push(class);
        let mut line = 1;
        while class > 0 && line + class as usize <= SEG_LINES {
            let at = s + line * LINE;
            line += class as usize;
            let h = get64(b, at);
            let (key_len, n, kind) = (
                (h & 0xFF) as usize,
                (h >> 8 & 0xFF) as usize,
                (h >> 16) as u8,
            );
            let key_at = if kind == 1 { 1 + n.div_ceil(2) } else { 1 };
            let mut e = Ent {
                key: b[at + 8 * key_at..at + 8 * key_at + key_len].to_vec(),
                at,
                windows: Vec::new(),
                rings: Vec::new(),
                state: 1 + key_len.div_ceil(8) + 4,
            };
            // Every window's head part after the key, then every ring part (FORMAT.md).
            let descs: Vec<u32> = (0..n)
                .map(|i| (get64(b, at + 8 * (1 + i / 2)) >> (i % 2 * 32)) as u32)
                .collect();
            let mut w = key_at + key_len.div_ceil(8);
            for &d in &descs {
                e.windows.push((d, w));
                w += window_words(d).0;
            }
            for &d in &descs {
                e.rings.push(w);
                w += window_words(d).1;
            }
            if h != 0 {
                map.ents.push(e);
            }
        }
    }
    map
}

// ---------------------------------------------------------------------------------------------
// Checksums, recomputed the way the store computes them.
// ---------------------------------------------------------------------------------------------

pub fn fix_file_crc(b: &mut [u8]) {
    let crc = crc32fast::hash(&b[0..60]);
    put32(b, 60, crc);
}

pub fn fix_seg_crc(b: &mut [u8], seg: usize) {
    let s = seg_at(seg);
    let crc = crc32fast::hash(&b[s..s + 60]);
    put32(b, s + 60, crc);
}

/// The segment-count word for `n` segments, with its crc.
pub fn count_word(n: u32) -> u64 {
    u64::from(n) | u64::from(crc32fast::hash(&n.to_le_bytes())) << 32
}

/// Recompute the crc of the entry at `at` over what its header now says it holds: the
/// header's low half, the descriptors and the key (windows), or the key and the fingerprint
/// (records), the key and the epoch (versions), the key (permits). Headers the store refuses before it reaches the crc are left as they are.
pub fn fix_entry_crc(b: &mut [u8], at: usize) {
    let h = get64(b, at);
    let (key_len, n, kind) = (
        (h & 0xFF) as usize,
        (h >> 8 & 0xFF) as usize,
        (h >> 16) as u8,
    );
    if key_len == 0 || key_len > 128 || n > 4 {
        return;
    }
    let mut c = crc32fast::Hasher::new();
    c.update(&b[at..at + 4]);
    let key_at = if kind == 2 {
        1
    } else {
        c.update(&b[at + 8..at + 8 + 4 * n]);
        1 + n.div_ceil(2)
    };
    c.update(&b[at + 8 * key_at..at + 8 * key_at + key_len]);
    if kind == 2 {
        let fp = at + 8 * (1 + key_len.div_ceil(8));
        c.update(&b[fp..fp + 32]);
    }
    if kind == 3 {
        // A version: the epoch after the key (kind 4, permits: the key alone).
        let epoch = at + 8 * (1 + key_len.div_ceil(8));
        c.update(&b[epoch..epoch + 8]);
    }
    put32(b, at + 4, c.finalize());
}

/// Edit byte `byte` of word `word` of the entry of `key`, then recompute its crc.
pub fn entry_byte(
    key: &[u8],
    word: usize,
    byte: usize,
    v: u8,
) -> impl FnOnce(&mut Vec<u8>, &FileMap) {
    let key = key.to_vec();
    move |b, m| {
        let at = m.ent(&key).word(word) + byte;
        b[at] = v;
        fix_entry_crc(b, m.ent(&key).at);
    }
}
