//! Growth ahead of need: with the compactor running, a file-backed store keeps a spare segment
//! grown in the background, so the check that fills a segment does not wait for the file to
//! grow and sync (`storage/segment/growth.rs`).
//!
//! The store's I/O hook names the thread of every fallocate, so the tests see who grew the
//! file. They wait for the compactor thread (a real thread) with a bounded spin on the store's
//! own figures; time itself is a manual clock, and nothing waits for a window or a TTL.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{temp_store, T0};
use tollgate::{IoEvent, IoHook, Limit, Limits, ManualClock, Options, Store};

/// Records which thread made each fallocate.
#[derive(Default)]
struct WhoGrew {
    growths: Mutex<Vec<String>>,
    /// Fail every fallocate from now on.
    fail: AtomicBool,
}

impl IoHook for WhoGrew {
    fn before(&self, event: IoEvent) -> std::io::Result<()> {
        if let IoEvent::Allocate { .. } = event {
            if self.fail.load(Ordering::SeqCst) {
                return Err(std::io::Error::from_raw_os_error(28)); // ENOSPC
            }
            let name = std::thread::current().name().unwrap_or("?").to_string();
            self.growths.lock().expect("lock").push(name);
        }
        Ok(())
    }
}

impl WhoGrew {
    fn by(&self, thread: &str) -> usize {
        let g = self.growths.lock().expect("lock");
        g.iter().filter(|n| n.as_str() == thread).count()
    }
}

fn opts(hook: &Arc<WhoGrew>, grow_ahead: bool) -> Options {
    Options::default()
        .segment_size_log2(16)
        .clock(ManualClock::new(T0))
        // The compactor wakes when a spare is wanted; its timer never fires in these tests.
        .compactor_interval(Duration::from_secs(3600))
        .grow_ahead(grow_ahead)
        .io_hook(Arc::clone(hook) as Arc<dyn IoHook>)
}

/// Wait (bounded) for the compactor thread to have grown a spare.
fn wait_for_spare(store: &Store) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while store.stats().blank_segments == 0 {
        assert!(
            Instant::now() < deadline,
            "no spare segment after 30 s: {:?}",
            store.stats()
        );
        std::thread::yield_now();
    }
}

#[test]
fn with_a_spare_no_check_grows_the_file() {
    let (_dir, path) = temp_store();
    let hook = Arc::new(WhoGrew::default());
    let limits = Limits::new(&[Limit::per_minute(60), Limit::per_hour(1000)]).expect("limits");
    let main = std::thread::current().name().unwrap_or("?").to_string();
    let keys = 3_000u32;
    {
        let store = Store::open(&path, opts(&hook, true)).expect("open");
        // The first key grows the first segment itself (an empty file has no spare) and asks
        // for a spare.
        store.check_at(b"key-0", &limits, 1, T0).expect("check");
        for i in 1..keys {
            wait_for_spare(&store);
            let d = store
                .check_at(format!("key-{i}").as_bytes(), &limits, 1, T0)
                .expect("check");
            assert!(d.allowed(), "key {i}: {d:?}");
        }
        wait_for_spare(&store);
        let s = store.stats();
        assert!(s.segments >= 5, "the keys span several segments: {s:?}");
        assert_eq!(
            hook.by(&main),
            1,
            "only the very first segment grew on a check"
        );
        assert_eq!(
            hook.by("tollgate-compactor") as u64,
            s.segments - 1,
            "every other segment was grown ahead: {s:?}"
        );
        store.close().expect("close");
    }
    // The spare left at close is a blank segment to the next open, used first; every key is
    // still counted.
    let store = Store::open(&path, Options::default().compactor(false)).expect("reopen");
    let r = store.open_report();
    assert_eq!(r.blank_segments, 1, "{r:?}");
    assert_eq!(r.corrupt_entries + r.corrupt_segments + r.lost_segments, 0);
    for i in (0..keys).step_by(97) {
        let d = store
            .peek_at(format!("key-{i}").as_bytes(), &limits, T0)
            .expect("peek");
        assert_eq!(d.windows()[0].used(), 1, "key {i}");
    }
}

#[test]
fn without_grow_ahead_the_checks_grow_the_file() {
    let (_dir, path) = temp_store();
    let hook = Arc::new(WhoGrew::default());
    let limits = Limits::new(&[Limit::per_minute(60)]).expect("limits");
    let main = std::thread::current().name().unwrap_or("?").to_string();
    let store = Store::open(&path, opts(&hook, false)).expect("open");
    for i in 0..3_000u32 {
        store
            .check_at(format!("key-{i}").as_bytes(), &limits, 1, T0)
            .expect("check");
    }
    let s = store.stats();
    assert!(s.segments >= 3, "{s:?}");
    assert_eq!(hook.by(&main) as u64, s.segments);
    assert_eq!(hook.by("tollgate-compactor"), 0);
    assert_eq!(s.blank_segments, 0, "{s:?}");
}

#[test]
fn a_spare_that_cannot_be_grown_leaves_the_checks_to_fail_as_before() {
    // A failed fallocate in the background poisons the store as a check's own would have:
    // the next write says so, with a typed error, and the file still opens with every key.
    let (_dir, path) = temp_store();
    let hook = Arc::new(WhoGrew::default());
    let limits = Limits::new(&[Limit::per_minute(60)]).expect("limits");
    {
        let store = Store::open(&path, opts(&hook, true)).expect("open");
        store.check_at(b"key-0", &limits, 1, T0).expect("check");
        wait_for_spare(&store);
        hook.fail.store(true, Ordering::SeqCst);
        // Fill the first segment and take the spare: the compactor's next growth fails.
        let mut i = 1u32;
        let deadline = Instant::now() + Duration::from_secs(30);
        while !store.is_poisoned() {
            assert!(
                Instant::now() < deadline,
                "never poisoned: {:?}",
                store.stats()
            );
            if store.stats().blank_segments > 0 {
                store
                    .check_at(format!("key-{i}").as_bytes(), &limits, 1, T0)
                    .expect("check while a spare is left");
                i += 1;
            } else {
                std::thread::yield_now();
            }
        }
        match store.check_at(b"after", &limits, 1, T0) {
            Err(tollgate::Error::Poisoned) => {}
            other => panic!("a poisoned store refuses writes: {other:?}"),
        }
    }
    let store = Store::open(&path, Options::default().compactor(false)).expect("reopen");
    let d = store.peek_at(b"key-0", &limits, T0).expect("peek");
    assert_eq!(d.windows()[0].used(), 1);
}
