//! Power-loss simulation (issue 20, item 4), Pebble's "crash clone" done our own way.
//!
//! A `kill -9` keeps the page cache; a power cut keeps only what reached the disk. The store's
//! test hook (`Options::io_hook`) reports every msync, fdatasync and fallocate it makes; a
//! shadow file is brought up to date at exactly those points (an msync copies its range of the
//! real file, an fdatasync the whole file). At a random moment the power is cut: the image the
//! disk would hold is the shadow, plus a random subset of the 4 KiB pages written since they
//! were last synced (the kernel may have written any of them back on its own), plus, when the
//! file grew since its length was last synced, maybe the new length. The image is opened and
//! checked:
//!
//! * it opens, or fails with a typed error: never a panic;
//! * with `Durability::Sync`, every acknowledged completion replays byte for byte, and every
//!   version is the last one a bump returned, with its epoch;
//! * with the default durability, what is lost is what `docs/RELIABILITY.md` says may be lost:
//!   nothing that was in the file at the last `flush` (a count is never below its value then,
//!   a version neither below its value then nor above the last bump), and a record is never
//!   served with other bytes than its own.
//!
//! `TOLLGATE_POWER_CUTS` sets the number of cuts per durability (default 20); `tests/power_loss.sh`
//! runs more in release mode.

mod common;

use std::collections::HashMap;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use common::T0;
use tollgate::{
    Begin, Durability, Fingerprint, IdempotencyKey, IoEvent, IoHook, Limit, Limits, Options, Store,
    StoredResponse,
};

const PAGE: u64 = 4096;

/// Keeps `shadow` equal to what the disk holds: `real` as of its last sync points.
struct Shadow {
    real: PathBuf,
    shadow: Mutex<Vec<u8>>,
}

impl Shadow {
    fn copy(&self, offset: u64, len: Option<u64>) {
        let real = std::fs::read(&self.real).expect("read the real file");
        let mut shadow = self.shadow.lock().expect("shadow lock");
        match len {
            None => *shadow = real,
            Some(len) => {
                let end = (offset + len).min(real.len() as u64) as usize;
                let start = (offset as usize).min(end);
                if shadow.len() < end {
                    shadow.resize(end, 0);
                }
                shadow[start..end].copy_from_slice(&real[start..end]);
            }
        }
    }
}

impl IoHook for Shadow {
    fn after(&self, event: IoEvent) {
        match event {
            IoEvent::Msync { offset, len } => self.copy(offset, Some(len)),
            IoEvent::SyncFile => self.copy(0, None),
            IoEvent::SyncRange { offset, len } => {
                // The range and the file's length: new space reads as zeros where no page of
                // it was written back.
                let real_len = std::fs::metadata(&self.real)
                    .expect("stat the real file")
                    .len();
                {
                    let mut shadow = self.shadow.lock().expect("shadow lock");
                    if (shadow.len() as u64) < real_len {
                        shadow.resize(real_len as usize, 0);
                    }
                }
                self.copy(offset, Some(len));
            }
            _ => {}
        }
    }
}

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

/// The disk after a power cut: the shadow, and a random subset of the pages that differ.
fn power_cut(real: &Path, shadow: &Shadow, rng: &mut Rng) -> (Vec<u8>, u64) {
    let real = std::fs::read(real).expect("read");
    let mut disk = shadow.shadow.lock().expect("lock").clone();
    if real.len() > disk.len() && rng.next().is_multiple_of(2) {
        // The new length reached the disk (its blocks read as zeros unless written back).
        disk.resize(real.len(), 0);
    }
    let keep_pct = rng.next() % 101;
    let mut kept = 0;
    let pages = disk.len().min(real.len()) as u64 / PAGE;
    for p in 0..pages {
        let (a, b) = ((p * PAGE) as usize, ((p + 1) * PAGE) as usize);
        if disk[a..b] != real[a..b] && rng.next() % 100 < keep_pct {
            disk[a..b].copy_from_slice(&real[a..b]);
            kept += 1;
        }
    }
    (disk, kept)
}

fn limits() -> Limits {
    Limits::new(&[Limit::new(65_000, tollgate::MAX_WINDOW)]).expect("limits")
}

fn record_key(j: u64) -> IdempotencyKey {
    let x = (u128::from(j) + 3).wrapping_mul(0x9E37_79B9_7F4A_7C15_F39C_C060_5CED_C835);
    IdempotencyKey::from_uuid(uuid::Builder::from_random_bytes(x.to_le_bytes()).into_uuid())
        .expect("key")
}

fn fingerprint(j: u64) -> Fingerprint {
    Fingerprint::of("POST", "/pay", &j.to_le_bytes())
}

fn response(j: u64) -> StoredResponse {
    let len = (j.wrapping_mul(2_654_435_761) % 9_000) as usize;
    StoredResponse::new(
        201,
        (0..len).map(|i| (i as u64 ^ j) as u8).collect::<Vec<u8>>(),
    )
    .with_header("x-j", j.to_string())
}

#[derive(Default)]
struct Tally {
    cuts: u64,
    opened: u64,
    typed_errors: u64,
    pages_kept: u64,
    acked_records: u64,
    replayed: u64,
    lost_unsynced_records: u64,
    counts_below_ack: u64,
    acked_versions: u64,
    versions_below_ack: u64,
}

fn run(durability: Durability, cuts: u64, seed: u64) -> Tally {
    let mut t = Tally::default();
    let mut rng = Rng(seed | 1);
    for cut in 0..cuts {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("s.tg");
        let hook = Arc::new(Shadow {
            real: path.clone(),
            shadow: Mutex::new(Vec::new()),
        });
        let opts = || {
            Options::default()
                .segment_size_log2(16)
                .compactor(false)
                .durability(durability)
                .max_response_bytes(20_000)
        };
        let store = Store::open(&path, opts().io_hook(hook.clone())).expect("open");
        hook.copy(0, None); // a new file is synced when created
        let (lim, mut now) = (limits(), T0);
        // Acknowledged: counts per key, and at the last flush; completed records (and
        // whether a flush came after them).
        let mut acked: HashMap<u64, u64> = HashMap::new();
        let mut flushed: HashMap<u64, u64> = HashMap::new();
        let mut records: Vec<(u64, bool)> = Vec::new();
        // Versions: per resource, the epoch and the last number a bump returned; and as of
        // the last flush.
        let mut versions: HashMap<u64, tollgate::Version> = HashMap::new();
        let mut flushed_versions: HashMap<u64, tollgate::Version> = HashMap::new();
        let ops = 20 + rng.next() % 600;
        for op in 0..ops {
            now += 7;
            match rng.next() % 11 {
                0..=4 => {
                    let k = rng.next() % 300;
                    let d = store
                        .check_at(format!("k{k}").as_bytes(), &lim, 1, now)
                        .expect("check");
                    assert!(d.allowed());
                    *acked.entry(k).or_default() += 1;
                }
                5..=8 => {
                    let j = op + cut * 1_000_000;
                    let Begin::Started(lease) = store
                        .begin_at(b"acct", &record_key(j), &fingerprint(j), now)
                        .expect("begin")
                    else {
                        panic!("record {j} is new")
                    };
                    store
                        .complete_at(&lease, &response(j), now)
                        .expect("complete");
                    records.push((j, false));
                }
                9 => {
                    let r = rng.next() % 20;
                    let v = store
                        .bump_version(format!("/r/{r}").as_bytes())
                        .expect("bump");
                    versions.insert(r, v);
                }
                _ => {
                    store.flush().expect("flush");
                    flushed = acked.clone();
                    flushed_versions = versions.clone();
                    for r in records.iter_mut() {
                        r.1 = true;
                    }
                }
            }
        }
        // The power goes: nothing more reaches the disk.
        let (disk, kept) = power_cut(&path, &hook, &mut rng);
        drop(store);
        t.cuts += 1;
        t.pages_kept += kept;
        let image = dir.path().join("after-the-cut.tg");
        std::fs::write(&image, &disk).expect("write the image");
        let opened = catch_unwind(AssertUnwindSafe(|| Store::open(&image, opts())))
            .unwrap_or_else(|_| panic!("cut {cut}: open panicked"));
        let store = match opened {
            Ok(s) => s,
            Err(e) => {
                // Typed; and with Sync nothing acknowledged may depend on it.
                t.typed_errors += 1;
                assert!(
                    records.is_empty() && flushed.is_empty(),
                    "cut {cut}: {e:?} with acknowledged data"
                );
                continue;
            }
        };
        t.opened += 1;
        let r = store.open_report();
        assert_eq!(r.lost_segments, 0, "cut {cut}: {r:?}");
        for (k, n) in &acked {
            let used = u64::from(
                store
                    .peek_at(format!("k{k}").as_bytes(), &lim, now)
                    .expect("peek")
                    .windows()[0]
                    .used(),
            );
            let floor = flushed.get(k).copied().unwrap_or(0);
            assert!(
                (floor..=*n).contains(&used),
                "cut {cut}: key {k} counts {used}, {floor} at the last flush, {n} acknowledged"
            );
            t.counts_below_ack += u64::from(used < *n);
        }
        for (r, v) in &versions {
            t.acked_versions += 1;
            let got = store
                .version(format!("/r/{r}").as_bytes())
                .expect("version");
            t.versions_below_ack += u64::from(got != *v);
            match (durability, flushed_versions.get(r)) {
                (Durability::Sync, _) => assert_eq!(got, *v, "cut {cut}: version {r}"),
                (_, Some(f)) => assert!(
                    got.epoch == v.epoch && (f.number..=v.number).contains(&got.number),
                    "cut {cut}: version {r} is {got:?}, {f:?} at the last flush, {v:?} acknowledged"
                ),
                // Never flushed: the entry may be gone (a new epoch: no old tag matches).
                (_, None) => assert!(
                    (got.epoch == v.epoch && got.number <= v.number)
                        || (got.epoch != v.epoch && got.number == 0),
                    "cut {cut}: version {r} is {got:?}, {v:?} acknowledged, never flushed"
                ),
            }
        }
        for &(j, synced) in &records {
            t.acked_records += 1;
            let got = store.begin_at(b"acct", &record_key(j), &fingerprint(j), now + 1);
            match got {
                Ok(Begin::Replay(rep)) => {
                    assert_eq!(rep.to_response(), response(j), "cut {cut}: record {j}");
                    t.replayed += 1;
                }
                other if durability == Durability::Process && !synced => {
                    // Allowed by the default durability: a completion not flushed yet. Never
                    // another record's bytes (checked above), never a panic.
                    assert!(
                        matches!(
                            other,
                            Ok(Begin::Started(_))
                                | Ok(Begin::InFlight)
                                | Err(tollgate::Error::Corrupt { .. })
                        ),
                        "cut {cut}: record {j}: {other:?}"
                    );
                    t.lost_unsynced_records += 1;
                }
                other => panic!("cut {cut}: acknowledged record {j} ({durability:?}): {other:?}"),
            }
        }
    }
    t
}

fn cuts() -> u64 {
    std::env::var("TOLLGATE_POWER_CUTS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20)
}

fn report(what: &str, t: &Tally) {
    eprintln!(
        "power loss ({what}): {} cuts, {} opened, {} typed errors, {} unsynced pages kept; {} acknowledged records, {} replayed, {} lost (not flushed); {} key counts below acknowledged; {} versions, {} not the last acknowledged",
        t.cuts, t.opened, t.typed_errors, t.pages_kept, t.acked_records, t.replayed,
        t.lost_unsynced_records, t.counts_below_ack, t.acked_versions, t.versions_below_ack
    );
}

#[test]
fn sync_durability_survives_power_loss() {
    let t = run(Durability::Sync, cuts(), 0x5EED_0001);
    report("Durability::Sync", &t);
    assert_eq!(t.replayed, t.acked_records);
    assert!(t.acked_records > 0);
    assert!(t.acked_versions > 0);
    assert_eq!(t.versions_below_ack, 0);
}

#[test]
fn default_durability_loses_only_what_was_not_flushed() {
    let t = run(Durability::Process, cuts(), 0x5EED_0002);
    report("Durability::Process", &t);
    assert!(t.acked_records > 0);
}
