//! Durability beyond a process crash (issue 20): a file that lost its tail, room for new keys
//! after a reopen, and a store that refuses writes after a failed sync.
//!
//! Every test drives time explicitly (`*_at` calls); none sleeps.

mod common;

use common::{temp_store, T0};
use tollgate::{Limit, Limits, Options, Store};

const DAY: u64 = 86_400_000;

fn per_minute() -> Limits {
    Limits::new(&[Limit::per_minute(10)]).expect("valid limits")
}

/// Issue 20, item 8: with `max_entries` full and every key expired, a new key gets room at the
/// first check after a reopen.
#[test]
fn a_full_store_of_expired_keys_has_room_at_once_after_a_reopen() {
    for max in [100u64, 1_000, 5_000] {
        let (_dir, path) = temp_store();
        let opts = || {
            Options::default()
                .segment_size_log2(16)
                .compactor(false)
                .max_entries(max)
        };
        let limits = per_minute();
        {
            let store = Store::open(&path, opts()).expect("open");
            for i in 0..max {
                let d = store
                    .check_at(format!("key-{i}").as_bytes(), &limits, 1, T0)
                    .expect("check");
                assert!(d.allowed() && !d.capacity_exhausted(), "key {i}: {d:?}");
            }
            let d = store
                .check_at(b"one-too-many", &limits, 1, T0)
                .expect("check");
            assert!(d.capacity_exhausted(), "{d:?}");
            store.close().expect("close");
        }
        let store = Store::open(&path, opts()).expect("reopen");
        assert_eq!(store.open_report().entries, max);
        for i in 0..100 {
            let d = store
                .check_at(format!("new-{i}").as_bytes(), &limits, 1, T0 + DAY)
                .expect("check");
            assert!(
                d.allowed() && !d.capacity_exhausted(),
                "max {max}: new key {i} after the reopen was refused: {d:?}"
            );
        }
    }
}

/// Issue 20, item 8, as it was found: 4 MiB segments (65,535 lines), and the background
/// compactor running after the reopen. It judges expiry at the newest time the store has seen
/// (before the reopen), so its passes expire nothing, but they move the shared cursor; the
/// cursor used to wander into the never-used tail of the segment, and the short pass a new key
/// runs to make room examined only empty lines there: 63 new keys were refused first.
#[test]
fn room_at_once_after_a_reopen_while_the_compactor_has_moved_the_cursor() {
    let (_dir, path) = temp_store();
    let max = 3_000u64;
    let clock = tollgate::ManualClock::new(T0);
    let opts = |compactor: bool| {
        Options::default()
            .clock(clock.clone())
            .compactor(compactor)
            .compactor_interval(std::time::Duration::from_millis(1))
            .max_entries(max)
    };
    let limits = per_minute();
    {
        let store = Store::open(&path, opts(false)).expect("open");
        for i in 0..max {
            let d = store
                .check_at(format!("key-{i}").as_bytes(), &limits, 1, T0)
                .expect("check");
            assert!(d.allowed() && !d.capacity_exhausted(), "key {i}: {d:?}");
        }
        store.close().expect("close");
    }
    clock.set_ms(T0 + DAY);
    let store = Store::open(&path, opts(true)).expect("reopen");
    // Let the compactor run passes (this waits for a thread, not for a window: no time passes
    // on the store's clock).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while store.stats().passes < 100 && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
    assert!(store.stats().passes >= 100, "{:?}", store.stats());
    assert_eq!(
        store.stats().expired_windows,
        0,
        "judged before the reopen's time"
    );
    for i in 0..100 {
        let d = store
            .check_at(format!("new-{i}").as_bytes(), &limits, 1, T0 + DAY)
            .expect("check");
        assert!(
            d.allowed() && !d.capacity_exhausted(),
            "new key {i} after the reopen was refused: {d:?}"
        );
    }
}

/// A store of 64 KiB segments with `n` window keys, closed; its bytes.
fn built_store(path: &std::path::Path, n: u32) -> Vec<u8> {
    let store = Store::open(
        path,
        Options::default().segment_size_log2(16).compactor(false),
    )
    .expect("open");
    let limits = per_minute();
    for i in 0..n {
        store
            .check_at(format!("key-{i}").as_bytes(), &limits, 1, T0)
            .expect("check");
    }
    store.close().expect("close");
    std::fs::read(path).expect("read")
}

const SEG: usize = 1 << 16;
/// Where segment 0 starts (format 3: 2 MiB, after the header page and a hole).
const SEG0: usize = 2 << 20;

/// Issue 20, item 1: a file cut at every segment boundary, and in the middle of every segment,
/// opens with the lost segments counted (and `verify` says so), or with
/// `refuse_lost_segments` is refused with `Error::Truncated` naming both counts. A file cut
/// nowhere reports nothing.
#[test]
fn truncation_at_every_segment_boundary_and_mid_segment_is_reported() {
    let (dir, path) = temp_store();
    // 1-line entries: 1023 per segment, so 5000 keys take 5 segments.
    let bytes = built_store(&path, 5_000);
    let segments = (bytes.len() - SEG0) / SEG;
    assert_eq!(segments, 5);
    let limits = per_minute();
    let probe = dir.path().join("cut.tg");
    for keep in 0..=segments {
        for extra in [0, 1, 64, SEG / 2, SEG - 1] {
            if keep == segments && extra > 0 {
                continue;
            }
            let cut = SEG0 + keep * SEG + extra;
            let what = format!("cut at {cut} ({keep} segments and {extra} bytes)");
            std::fs::write(&probe, &bytes[..cut]).expect("write");
            let refused = Store::open(
                &probe,
                Options::default()
                    .compactor(false)
                    .refuse_lost_segments(true),
            );
            let lost = (segments - keep) as u64;
            match refused {
                Err(tollgate::Error::Truncated { recorded, found }) => {
                    assert!(lost > 0, "{what}");
                    assert_eq!((recorded, found), (segments as u64, keep as u64), "{what}");
                }
                Ok(s) => {
                    assert_eq!(lost, 0, "{what}: opened");
                    drop(s);
                }
                Err(e) => panic!("{what}: {e:?}"),
            }
            // The refusal changed nothing: the default open still finds the loss.
            let store = Store::open(&probe, Options::default().compactor(false)).expect(&what);
            let r = store.open_report();
            assert_eq!(r.lost_segments, lost, "{what}");
            assert!(!r.segment_count_damaged, "{what}");
            assert_eq!(r.corrupt_entries + r.corrupt_segments, 0, "{what}");
            let v = store.verify();
            assert_eq!(
                v.problems.iter().any(|(_, p)| p.contains("lost")),
                lost > 0,
                "{what}: {v:?}"
            );
            // Keys of the segments kept read as written; the others as new. The census the
            // closed store left counts the ones gone, exactly.
            let mut gone = 0u64;
            for i in 0..5_000 {
                let used = store
                    .peek_at(format!("key-{i}").as_bytes(), &limits, T0)
                    .expect("peek")
                    .windows()[0]
                    .used();
                gone += u64::from(used == 0);
            }
            assert_eq!(gone > 0, lost > 0, "{what}");
            assert_eq!(r.missing_entries, Some(gone), "{what}");
            assert_eq!(r.entries + gone, 5_000, "{what}");
            if lost > 0 {
                let found = v
                    .problems
                    .iter()
                    .any(|(_, p)| p.contains(&format!("{gone} entries")));
                assert!(found, "{what}: verify names the entries: {v:?}");
            }
            drop(store);
            // The open that found the loss recorded what is left: the next open is clean.
            let store = Store::open(&probe, Options::default().compactor(false)).expect(&what);
            assert_eq!(store.open_report().lost_segments, 0, "{what}");
            assert_eq!(store.open_report().missing_entries, Some(0), "{what}");
            assert_eq!(
                std::fs::metadata(&probe).expect("metadata").len() as usize,
                SEG0 + keep * SEG,
                "{what}: cut back to whole segments"
            );
        }
    }
}

/// A file longer than its header records (a crash after the file grew, before the count took
/// the new segment in) is cut back to the recorded segments, and nothing is reported lost.
#[test]
fn segments_the_count_never_took_in_are_cut_off() {
    let (_dir, path) = temp_store();
    let bytes = built_store(&path, 100);
    let mut longer = bytes.clone();
    longer.resize(bytes.len() + 2 * SEG, 0);
    std::fs::write(&path, &longer).expect("write");
    let store = Store::open(&path, Options::default().compactor(false)).expect("open");
    let r = store.open_report();
    assert_eq!((r.entries, r.lost_segments, r.blank_segments), (100, 0, 0));
    drop(store);
    assert_eq!(
        std::fs::metadata(&path).expect("len").len() as usize,
        bytes.len()
    );
}

/// Fails every event that `fail` picks once `armed` is set (issue 20, item 6).
struct FailingIo {
    armed: std::sync::atomic::AtomicBool,
    fail: fn(&tollgate::IoEvent) -> bool,
    failed: std::sync::atomic::AtomicU64,
}

impl tollgate::IoHook for FailingIo {
    fn before(&self, event: tollgate::IoEvent) -> std::io::Result<()> {
        if self.armed.load(std::sync::atomic::Ordering::SeqCst) && (self.fail)(&event) {
            self.failed
                .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            return Err(std::io::Error::from_raw_os_error(libc_eio()));
        }
        Ok(())
    }
}

/// EIO, as a failing disk reports it.
fn libc_eio() -> i32 {
    5
}

fn failing(fail: fn(&tollgate::IoEvent) -> bool) -> std::sync::Arc<FailingIo> {
    std::sync::Arc::new(FailingIo {
        armed: std::sync::atomic::AtomicBool::new(false),
        fail,
        failed: std::sync::atomic::AtomicU64::new(0),
    })
}

fn is_poisoned<T: std::fmt::Debug>(r: tollgate::Result<T>) -> bool {
    matches!(r, Err(tollgate::Error::Poisoned))
}

/// Every write after the failure is refused with `Error::Poisoned`; reads still answer; a
/// reopen recovers from the file and writes again.
fn assert_poisoned_until_reopened(store: Store, path: &std::path::Path, what: &str) {
    use tollgate::{Fingerprint, IdempotencyKey};
    let limits = per_minute();
    assert!(store.is_poisoned(), "{what}");
    assert!(
        is_poisoned(store.check_at(b"counted", &limits, 1, T0 + 10)),
        "{what}: check"
    );
    assert!(
        is_poisoned(store.check_at(b"brand-new", &limits, 1, T0 + 10)),
        "{what}: new key"
    );
    let key = IdempotencyKey::parse("4d9c3a41-6bb7-4c4e-9a39-8f3c2d7e1f01").expect("key");
    let fp = Fingerprint::of("POST", "/x", b"");
    assert!(
        is_poisoned(store.begin_at(b"acct", &key, &fp, T0 + 10)),
        "{what}: begin"
    );
    assert!(is_poisoned(store.flush()), "{what}: flush");
    // Reads still answer.
    assert!(
        store.peek_at(b"counted", &limits, T0 + 10).is_ok(),
        "{what}: peek"
    );
    assert!(is_poisoned(store.close()), "{what}: close");
    let store = Store::open(
        path,
        Options::default().segment_size_log2(16).compactor(false),
    )
    .expect("reopen");
    assert!(!store.is_poisoned());
    let d = store
        .check_at(b"counted", &limits, 1, T0 + 20)
        .expect("check");
    assert!(d.allowed(), "{what}: {d:?}");
    store.flush().expect("flush after the reopen");
}

#[test]
fn a_failed_msync_of_a_sync_completion_poisons_the_store() {
    use tollgate::{Begin, Durability, Fingerprint, IdempotencyKey, StoredResponse};
    let (_dir, path) = temp_store();
    let hook = failing(|e| matches!(e, tollgate::IoEvent::Msync { .. }));
    let store = Store::open(
        &path,
        Options::default()
            .segment_size_log2(16)
            .compactor(false)
            .durability(Durability::Sync)
            .io_hook(hook.clone()),
    )
    .expect("open");
    let limits = per_minute();
    store.check_at(b"counted", &limits, 1, T0).expect("check");
    let key = IdempotencyKey::parse("4d9c3a41-6bb7-4c4e-9a39-8f3c2d7e1f00").expect("key");
    let fp = Fingerprint::of("POST", "/x", b"");
    let Ok(Begin::Started(lease)) = store.begin_at(b"acct", &key, &fp, T0) else {
        panic!("starts");
    };
    hook.armed.store(true, std::sync::atomic::Ordering::SeqCst);
    match store.complete_at(&lease, &StoredResponse::new(201, "ok"), T0) {
        Err(tollgate::Error::Io(e)) => assert_eq!(e.raw_os_error(), Some(5)),
        other => panic!("the failed msync is reported: {other:?}"),
    }
    assert!(hook.failed.load(std::sync::atomic::Ordering::SeqCst) >= 1);
    assert!(is_poisoned(store.complete_at(
        &lease,
        &StoredResponse::new(201, "ok"),
        T0
    )));
    assert!(is_poisoned(store.abort(&lease)));
    assert_poisoned_until_reopened(store, &path, "msync");
}

#[test]
fn a_failed_fallocate_while_growing_poisons_the_store() {
    let hook = failing(|e| matches!(e, tollgate::IoEvent::Allocate { .. }));
    let lens = assert_a_failed_growth_poisons(&hook, "fallocate");
    assert_eq!(lens.failed, lens.before, "the file did not grow");
    assert_eq!(lens.reopened, lens.before);
}

/// The two syncs of a growth (the new length, then the segment count) are ranged syncs, not
/// an fdatasync of the file: a failure of either is the growth's failure.
#[test]
fn a_failed_sync_while_growing_poisons_the_store() {
    // The first sync, of the new length: the count never took the new space in, so the
    // reopen cuts it off.
    let hook = failing(|e| matches!(e, tollgate::IoEvent::SyncRange { .. }));
    let lens = assert_a_failed_growth_poisons(&hook, "sync of the new length");
    assert_eq!(hook.failed.load(std::sync::atomic::Ordering::SeqCst), 1);
    assert!(lens.failed > lens.before, "allocated before the sync");
    assert_eq!(lens.reopened, lens.before, "cut off at the reopen");
    // The second, of the count (the word in the header page): the count was written, so the
    // reopen keeps the new space, blank.
    let count =
        failing(|e| matches!(e, tollgate::IoEvent::SyncRange { offset, .. } if *offset < 4096));
    let lens = assert_a_failed_growth_poisons(&count, "sync of the segment count");
    assert_eq!(count.failed.load(std::sync::atomic::Ordering::SeqCst), 1);
    assert!(lens.failed > lens.before, "allocated before the sync");
    assert_eq!(lens.reopened, lens.failed, "kept at the reopen");
}

/// The file's length before a failed growth, right after it, and after the reopen.
struct Lens {
    before: u64,
    failed: u64,
    reopened: u64,
}

/// Fill a store of small segments until a new key needs a new segment, with `hook` armed:
/// that key's check returns the injected EIO, the store keeps its segments, and every write
/// is refused until a reopen, which finds the file as the failure left it.
fn assert_a_failed_growth_poisons(hook: &std::sync::Arc<FailingIo>, what: &str) -> Lens {
    let (_dir, path) = temp_store();
    let store = Store::open(
        &path,
        Options::default()
            .segment_size_log2(16)
            .compactor(false)
            .io_hook(hook.clone()),
    )
    .expect("open");
    let limits = per_minute();
    store.check_at(b"counted", &limits, 1, T0).expect("check");
    hook.armed.store(true, std::sync::atomic::Ordering::SeqCst);
    let segments_before = store.stats().segments;
    let before = std::fs::metadata(&path).expect("len").len();
    // The keys fill the segments of their size class; the first key that needs a new segment
    // meets the failure.
    let mut failed = None;
    for i in 0..2_000 {
        match store.check_at(format!("fill-{i}").as_bytes(), &limits, 1, T0) {
            Ok(_) => {}
            Err(e) => {
                failed = Some((i, e));
                break;
            }
        }
    }
    match failed {
        Some((i, tollgate::Error::Io(e))) => {
            assert!(
                i > 0,
                "keys fitted in the existing segments before the failure"
            );
            assert_eq!(
                store.stats().segments,
                segments_before,
                "the key that needed a new segment got none"
            );
            assert_eq!(e.raw_os_error(), Some(5));
        }
        other => panic!("the failed {what} is reported: {other:?}"),
    }
    let failed = std::fs::metadata(&path).expect("len").len();
    assert_poisoned_until_reopened(store, &path, what);
    Lens {
        before,
        failed,
        reopened: std::fs::metadata(&path).expect("len").len(),
    }
}

#[test]
fn a_failed_fdatasync_of_a_flush_poisons_the_store() {
    let (_dir, path) = temp_store();
    let hook = failing(|e| matches!(e, tollgate::IoEvent::SyncFile));
    let store = Store::open(
        &path,
        Options::default()
            .segment_size_log2(16)
            .compactor(false)
            .io_hook(hook.clone()),
    )
    .expect("open");
    store
        .check_at(b"counted", &per_minute(), 1, T0)
        .expect("check");
    hook.armed.store(true, std::sync::atomic::Ordering::SeqCst);
    assert!(matches!(store.flush(), Err(tollgate::Error::Io(_))));
    assert_poisoned_until_reopened(store, &path, "fdatasync");
}

/// Issue 20, item 1: the census is only as good as the store's last goodbye. A file copied
/// while its writer runs (what a crash leaves: the writer's open erased the census) and then
/// cut opens with its lost segments counted and its lost entries unknown, and `verify` says
/// that it cannot count them.
#[test]
fn a_file_its_writer_never_left_cannot_count_its_lost_entries() {
    let (dir, path) = temp_store();
    built_store(&path, 5_000);
    let store = Store::open(
        &path,
        Options::default().segment_size_log2(16).compactor(false),
    )
    .expect("reopen");
    assert_eq!(store.open_report().missing_entries, Some(0));
    store
        .check_at(b"one more", &per_minute(), 1, T0)
        .expect("check");
    // The image of a crash now: the census was erased by this open.
    let bytes = std::fs::read(&path).expect("read");
    let probe = dir.path().join("crashed.tg");
    std::fs::write(&probe, &bytes[..SEG0 + 2 * SEG]).expect("write");
    let cut = Store::open(&probe, Options::default().compactor(false)).expect("opens");
    let r = cut.open_report();
    assert_eq!((r.lost_segments, r.missing_entries), (3, None), "{r:?}");
    let v = cut.verify();
    assert!(
        v.problems.iter().any(|(_, p)| p.contains("unknown")),
        "{v:?}"
    );
    drop(store);
}
