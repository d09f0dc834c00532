//! One key at a time (inspect, delete) and read-only views of a store another handle holds.

mod common;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use common::{temp_store, T0};
use tollgate::{
    Begin, Error, FileShape, Fingerprint, IdempotencyKey, Limit, Limits, ManualClock, Options,
    RecordState, Store, StoredResponse,
};

const KEY: &str = "4d9c3a41-6bb7-4c4e-9a39-8f3c2d7e1f00";

fn limits() -> Limits {
    Limits::new(&[
        Limit::per_minute(60),
        Limit::new(5, std::time::Duration::from_secs(10)).exact(),
    ])
    .unwrap()
}

fn opts() -> Options {
    Options::default()
        .compactor(false)
        .clock(ManualClock::new(T0))
}

#[test]
fn inspect_key_reports_every_window() {
    let store = Store::open_in_memory(opts()).unwrap();
    let ls = limits();
    for i in 0..3 {
        store.check_at(b"tok", &ls, 1, T0 + i * 1000).unwrap();
    }
    let now = T0 + 2500;
    let r = store.inspect_key(b"tok", Some(&ls), now).unwrap().unwrap();
    assert_eq!(r.windows.len(), 2);
    let minute = &r.windows[0];
    assert_eq!(minute.window.as_secs(), 60);
    assert!(!minute.exact);
    assert_eq!(
        (minute.limit, minute.used, minute.left),
        (Some(60), 3, Some(57))
    );
    assert!(minute.reset_ms > now && minute.reset_ms <= T0 + 2000 + 60_000 + 60_000);
    assert_eq!(minute.sub_windows.iter().map(|s| s.used).sum::<u32>(), 3);
    assert!(!minute.sub_window.is_zero());
    // Newest first, each starting one sub-window before the previous.
    let s = minute.sub_window.as_millis() as u64;
    for pair in minute.sub_windows.windows(2) {
        assert_eq!(pair[0].start_ms, pair[1].start_ms + s);
    }
    let exact = &r.windows[1];
    assert!(exact.exact);
    assert_eq!((exact.limit, exact.used, exact.left), (Some(5), 3, Some(2)));
    let times: Vec<u64> = exact.sub_windows.iter().map(|s| s.start_ms).collect();
    assert_eq!(times, [T0, T0 + 1000, T0 + 2000]);
    assert_eq!(exact.reset_ms, T0 + 2000 + 10_000);
    // Without the policy a bucketed window's limit is unknown; an exact one knows its own.
    let r = store.inspect_key(b"tok", None, now).unwrap().unwrap();
    assert_eq!((r.windows[0].limit, r.windows[0].left), (None, None));
    assert_eq!(r.windows[1].limit, Some(5));
    assert!(store.inspect_key(b"nobody", None, now).unwrap().is_none());
    assert!(matches!(
        store.inspect_key(b"", None, now),
        Err(Error::InvalidKey { .. })
    ));
}

#[test]
fn delete_key_gives_a_fresh_quota_and_leaves_other_keys() {
    let store = Store::open_in_memory(opts()).unwrap();
    let ls = limits();
    for _ in 0..5 {
        store.check_at(b"tok", &ls, 1, T0).unwrap();
        store.check_at(b"other", &ls, 1, T0).unwrap();
    }
    assert!(!store.check_at(b"tok", &ls, 1, T0).unwrap().allowed());
    assert!(store.delete_key(b"tok").unwrap());
    assert!(!store.delete_key(b"tok").unwrap(), "gone already");
    assert!(store.inspect_key(b"tok", None, T0).unwrap().is_none());
    assert_eq!(store.stats().entries, 1);
    let d = store.check_at(b"tok", &ls, 1, T0).unwrap();
    assert!(d.allowed());
    assert_eq!(d.remaining(), 4);
    assert!(!store.check_at(b"other", &ls, 1, T0).unwrap().allowed());
}

#[test]
fn delete_key_during_checks_of_the_key() {
    // Checks on one key run while it is deleted over and over: no check fails, and after the
    // last delete the key's count is exactly the checks admitted since. The two threads make
    // 30 000 checks in all, under the limit of 60 000 whatever the deletes do, and each waits
    // after every 1 000 of its checks for the deleting thread's next attempt: the interleaving
    // is forced by the threads' own progress, not by how the scheduler runs them (with the
    // deletes left to run freely, a deleting thread that lost its core for a few
    // milliseconds let the checks pass the limit, and the test failed or spun).
    const CHECKS: u64 = 15_000;
    let store = Store::open_in_memory(opts()).unwrap();
    let ls = Limits::new(&[Limit::per_minute(60_000)]).unwrap();
    let attempts = Arc::new(AtomicU64::new(0));
    let running = Arc::new(AtomicU64::new(2));
    let workers: Vec<_> = (0..2)
        .map(|_| {
            let (store, ls, attempts, running) =
                (store.clone(), ls.clone(), attempts.clone(), running.clone());
            std::thread::spawn(move || {
                for i in 0..CHECKS {
                    assert!(store.check_at(b"hot", &ls, 1, T0).unwrap().allowed());
                    if i % 1_000 == 999 {
                        let seen = attempts.load(Ordering::Acquire);
                        while attempts.load(Ordering::Acquire) == seen {
                            std::thread::yield_now();
                        }
                    }
                }
                running.fetch_sub(1, Ordering::AcqRel);
            })
        })
        .collect();
    let mut deleted = 0;
    while running.load(Ordering::Acquire) > 0 {
        deleted += u32::from(store.delete_key(b"hot").unwrap());
        attempts.fetch_add(1, Ordering::AcqRel);
    }
    for w in workers {
        w.join().unwrap();
    }
    // At least the attempt each waiting worker saw came after its own checks made the key.
    assert!(deleted > 0);
    // Quiet now: one delete, then a known number of checks.
    store.delete_key(b"hot").unwrap();
    for _ in 0..7 {
        store.check_at(b"hot", &ls, 1, T0).unwrap();
    }
    let r = store.inspect_key(b"hot", Some(&ls), T0).unwrap().unwrap();
    assert_eq!(r.windows[0].used, 7);
    assert_eq!(store.stats().entries, 1);
}

fn complete(store: &Store, scope: &[u8], status: u16) -> IdempotencyKey {
    let key = IdempotencyKey::parse(KEY).unwrap();
    let fp = Fingerprint::of("POST", "/sms", b"{}");
    let Begin::Started(l) = store.begin_at(scope, &key, &fp, T0).unwrap() else {
        panic!("a fresh key starts")
    };
    store
        .complete_at(&l, &StoredResponse::new(status, b"cached".to_vec()), T0)
        .unwrap();
    key
}

#[test]
fn inspect_and_delete_a_record() {
    let store = Store::open_in_memory(opts().idempotency_ttl(std::time::Duration::from_secs(3600)))
        .unwrap();
    let key = complete(&store, b"acct", 502);
    let r = store
        .inspect_record(b"acct", &key, T0 + 1000)
        .unwrap()
        .unwrap();
    assert_eq!(r.state, RecordState::Completed);
    assert_eq!(r.status, Some(502));
    assert!(r.deadline_ms >= T0 + 3_600_000 && !r.expired);
    assert!(store.inspect_record(b"other", &key, T0).unwrap().is_none());
    // The cached 502 is forgotten: the next request with the key runs again.
    assert!(store.delete_record(b"acct", &key).unwrap());
    assert!(!store.delete_record(b"acct", &key).unwrap());
    assert!(store.inspect_record(b"acct", &key, T0).unwrap().is_none());
    let fp = Fingerprint::of("POST", "/sms", b"{}");
    assert!(matches!(
        store.begin_at(b"acct", &key, &fp, T0).unwrap(),
        Begin::Started(_)
    ));
    assert_eq!(store.stats().idempotency_records, 1);
}

#[test]
fn deleting_a_record_in_flight_loses_its_lease() {
    let store = Store::open_in_memory(opts()).unwrap();
    let key = IdempotencyKey::parse(KEY).unwrap();
    let fp = Fingerprint::of("POST", "/sms", b"{}");
    let Begin::Started(l) = store.begin_at(b"acct", &key, &fp, T0).unwrap() else {
        panic!()
    };
    let r = store.inspect_record(b"acct", &key, T0).unwrap().unwrap();
    assert_eq!(r.state, RecordState::InFlight);
    assert!(r.deadline_ms > T0);
    assert!(store.delete_record(b"acct", &key).unwrap());
    let err = store
        .complete_at(&l, &StoredResponse::new(200, vec![]), T0)
        .unwrap_err();
    assert!(matches!(err, Error::LeaseLost { .. }), "{err}");
}

#[test]
fn a_read_only_view_opens_a_held_store_and_writes_nothing() {
    let (_dir, path) = temp_store();
    let owner = Store::open(&path, opts()).unwrap();
    let ls = limits();
    for _ in 0..4 {
        owner.check_at(b"tok", &ls, 1, T0).unwrap();
    }
    complete(&owner, b"acct", 201);
    owner.flush().unwrap();
    assert!(matches!(
        Store::open(&path, opts()),
        Err(Error::Locked { .. })
    ));
    let before = std::fs::read(&path).unwrap();
    let view = Store::open_read_only(&path, opts()).unwrap();
    let r = view.inspect_key(b"tok", Some(&ls), T0).unwrap().unwrap();
    assert_eq!(r.windows[0].used, 4);
    let key = IdempotencyKey::parse(KEY).unwrap();
    assert_eq!(
        view.inspect_record(b"acct", &key, T0)
            .unwrap()
            .unwrap()
            .status,
        Some(201)
    );
    assert!(view.verify().problems.is_empty());
    // Changes through the view stay in it.
    view.check_at(b"tok", &ls, 1, T0).unwrap();
    assert!(view.delete_key(b"tok").unwrap());
    drop(view);
    assert_eq!(
        std::fs::read(&path).unwrap(),
        before,
        "the file is unchanged"
    );
    assert_eq!(
        owner
            .inspect_key(b"tok", None, T0)
            .unwrap()
            .unwrap()
            .windows[0]
            .used,
        4
    );
    // The owner keeps working.
    assert!(owner.check_at(b"tok", &ls, 1, T0).unwrap().allowed());
}

#[test]
fn a_read_only_view_does_not_repair_a_truncated_file() {
    let (_dir, path) = temp_store();
    let store = Store::open(&path, opts()).unwrap();
    let ls = limits();
    store.check_at(b"tok", &ls, 1, T0).unwrap();
    complete(&store, b"acct", 200);
    store.close().unwrap();
    let full = std::fs::metadata(&path).unwrap().len();
    let shape = FileShape::of(&path).unwrap();
    assert!(!shape.is_truncated() && shape.segments >= 2, "{shape:?}");
    let cut = full - shape.segment_len / 2;
    std::fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .unwrap()
        .set_len(cut)
        .unwrap();
    let shape = FileShape::of(&path).unwrap();
    assert!(shape.is_truncated());
    assert_eq!(shape.partial_bytes, shape.segment_len / 2);
    let view = Store::open_read_only(&path, opts()).unwrap();
    assert!(!view.verify().problems.is_empty(), "the cut-off response");
    drop(view);
    assert_eq!(
        std::fs::metadata(&path).unwrap().len(),
        cut,
        "not truncated further"
    );
    assert!(matches!(
        Store::open_read_only(path.with_extension("missing"), opts()),
        Err(Error::Io(_))
    ));
}

/// The calls a progress hook received.
type Calls = std::rc::Rc<std::cell::RefCell<Vec<(u64, u64)>>>;

/// A progress hook that records its calls.
fn recorded() -> (Calls, impl FnMut(u64, u64)) {
    let calls = Calls::default();
    let c = std::rc::Rc::clone(&calls);
    (calls, move |done, total| c.borrow_mut().push((done, total)))
}

#[test]
fn verify_expire_and_compact_report_their_position() {
    // Small segments (64 KiB), so that thousands of entries and responses span many.
    let clock = ManualClock::new(T0);
    let store = Store::open_in_memory(
        Options::default()
            .compactor(false)
            .clock(clock.clone())
            .segment_size_log2(16)
            .idempotency_ttl(std::time::Duration::from_secs(60)),
    )
    .unwrap();
    let ls = limits();
    for i in 0..9000u32 {
        store
            .check_at(format!("tok-{i}").as_bytes(), &ls, 1, T0)
            .unwrap();
    }
    let fp = Fingerprint::of("POST", "/sms", b"{}");
    for i in 0..200u32 {
        let key =
            IdempotencyKey::parse(&format!("4d9c3a41-6bb7-4c4e-9a39-8f3c2d7e{i:04x}")).unwrap();
        let Begin::Started(l) = store.begin_at(b"acct", &key, &fp, T0).unwrap() else {
            panic!("a fresh key starts")
        };
        store
            .complete_at(&l, &StoredResponse::new(201, vec![7u8; 2000]), T0)
            .unwrap();
    }
    let segments = store.stats().segments;
    assert!(segments > 4, "the store spans many segments: {segments}");

    // verify: once per segment, in order, ending at the total; the same report as verify().
    let (calls, hook) = recorded();
    let report = store.verify_with(hook);
    assert_eq!(report, store.verify());
    assert_eq!(report.entries, 9200);
    let expected: Vec<(u64, u64)> = (1..=segments).map(|d| (d, segments)).collect();
    assert_eq!(*calls.borrow(), expected);

    // expire: several steps (4096 entries each: 9200 take three), never backwards, ending at (total, total).
    let (calls, hook) = recorded();
    let r = store.expire_now_with(T0 + 3_600_000, hook);
    assert_eq!(r.expired, 9200, "every window and record has expired");
    let calls = calls.borrow().clone();
    assert_eq!(calls.last(), Some(&(segments, segments)), "{calls:?}");
    assert_eq!(calls.len(), 3, "{calls:?}");
    assert!(
        calls
            .windows(2)
            .all(|w| w[0].0 <= w[1].0 && w[0].1 == w[1].1),
        "{calls:?}"
    );

    // compact: one call per response segment emptied, 1 to total.
    let (calls, hook) = recorded();
    let moved = store.compact_now_with(hook);
    assert_eq!(moved, 0, "every response is dead: nothing to move");
    let calls = calls.borrow().clone();
    let total = calls.first().map_or(0, |c| c.1);
    assert!(
        total >= 2,
        "the responses spanned several segments: {calls:?}"
    );
    let expected: Vec<(u64, u64)> = (1..=total).map(|d| (d, total)).collect();
    assert_eq!(calls, expected);
    // Nothing left to compact: no call.
    let (calls, hook) = recorded();
    store.compact_now_with(hook);
    assert!(calls.borrow().is_empty());
}
