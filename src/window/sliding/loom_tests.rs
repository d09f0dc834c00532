//! Model checks with loom of the very functions the store will run (`proto.rs`), on loom's
//! `AtomicU64` (its `WordCell` impl is in `cell.rs`): every interleaving of the threads below,
//! across a rotation of the ring, in the packed layout and the wide one (base word).

use loom::sync::atomic::AtomicU64 as LoomU64;
use loom::sync::Arc;
use loom::thread;

use super::*;

/// A small packed shape (limit 3 over 1 s, 16 sub-windows of 63 ms: one ring word) and a wide
/// one (1 000 000 over 1 s: base word and 5 ring words).
fn shapes() -> [Slide; 2] {
    [
        Slide::new(3, 1_000, 16).unwrap(),
        Slide::new(1_000_000, 1_000, 16).unwrap(),
    ]
}

/// The start of a sub-window near 2023.
fn t1(geo: &Slide) -> u64 {
    (1_700_000_000_000 / geo.g) * geo.g
}

fn model(f: impl Fn() + Sync + Send + 'static) {
    model_bounded(2, f);
}

/// Three threads with spin loops need a lower preemption bound and more branches per run.
/// Runs `f` under loom and checks that loom really explored several interleavings (loom runs
/// a model once when it sees no race to explore, which would make the test vacuous).
fn model_bounded(preemptions: usize, f: impl Fn() + Sync + Send + 'static) {
    let mut b = loom::model::Builder::new();
    b.preemption_bound = Some(preemptions);
    b.max_branches = 100_000;
    let runs = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counted = std::sync::Arc::clone(&runs);
    b.check(move || {
        counted.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        f()
    });
    let runs = runs.load(std::sync::atomic::Ordering::Relaxed);
    assert!(runs >= 5, "loom explored only {runs} interleavings");
}

fn words(geo: &Slide) -> Arc<Vec<LoomU64>> {
    Arc::new((0..geo.words()).map(|_| LoomU64::new(0)).collect())
}

fn win<'a>(w: &'a [LoomU64], geo: &Slide) -> Window<'a, LoomU64> {
    Window::new(w, geo).unwrap()
}

/// With `room` left of the limit (the rest used at t1), threads race at the given times (in
/// the next sub-window: one of them rotates the ring, under the lock; in the old one: counted
/// in the head). Exactly `room` are admitted, and the window counts each admitted request
/// once.
fn racing_adds(geo: Slide, room: u32, times: &'static [u64], preemptions: usize) {
    model_bounded(preemptions, move || {
        let w = words(&geo);
        let t = t1(&geo);
        let limit = geo.limit;
        assert!(matches!(
            add(&win(&w, &geo), &geo, t, limit - room),
            Added::Yes { .. }
        ));
        let admitted = Arc::new(LoomU64::new(0));
        let hs: Vec<_> = times
            .iter()
            .map(|&dt| {
                let now = t + dt * geo.g + dt;
                let (w, admitted) = (Arc::clone(&w), Arc::clone(&admitted));
                thread::spawn(move || {
                    if let Added::Yes { .. } = add(&win(&w, &geo), &geo, now, 1) {
                        admitted.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    }
                })
            })
            .collect();
        for h in hs {
            h.join().unwrap();
        }
        assert_eq!(
            admitted.load(std::sync::atomic::Ordering::Relaxed),
            u64::from(room)
        );
        let s = snapshot(&win(&w, &geo), &geo);
        assert_eq!(s.used(&geo, t + geo.g), u64::from(limit));
        // Rotated only if a request of the next sub-window was admitted.
        assert!(s.n == geo.sub_window(t) || s.n == geo.sub_window(t) + 1);
    });
}

// Times are given in sub-windows after t1 (0: the old one, 1: the next).

#[test]
fn two_racing_adds_across_a_rotation_never_pass_the_limit() {
    racing_adds(shapes()[0], 1, &[1, 0], 2);
}

#[test]
fn two_racing_adds_across_a_rotation_never_pass_the_limit_wide() {
    racing_adds(shapes()[1], 1, &[1, 0], 2);
}

#[test]
fn three_racing_adds_across_a_rotation_never_pass_the_limit() {
    racing_adds(shapes()[0], 2, &[1, 1, 0], 1);
}

/// One request is counted in sub-window n and taken back while another is counted in n + 1
/// (rotating the first one's count into the ring, or not yet): the take-back finds it in the
/// head or in the ring, and only the second request stays counted.
fn add_and_take_back(geo: Slide) {
    model(move || {
        let w = words(&geo);
        let t = t1(&geo);
        let w2 = Arc::clone(&w);
        let undo = thread::spawn(move || {
            let x = win(&w2, &geo);
            match add(&x, &geo, t, 1) {
                Added::Yes { m, .. } => assert!(take_back(&x, &geo, m, 1), "not frozen"),
                other => panic!("room for it: {other:?}"),
            }
        });
        let kept = add(&win(&w, &geo), &geo, t + geo.g, 1);
        assert!(matches!(kept, Added::Yes { .. }));
        undo.join().unwrap();
        let s = snapshot(&win(&w, &geo), &geo);
        assert_eq!(s.used(&geo, t + geo.g), 1);
        assert_eq!(s.count(&geo, geo.sub_window(t)), 0);
    });
}

#[test]
fn take_back_across_a_rotation() {
    add_and_take_back(shapes()[0]);
}

#[test]
fn take_back_across_a_rotation_wide() {
    add_and_take_back(shapes()[1]);
}

/// The entry moves (freeze, then copy) while two requests are counted, one of which rotates
/// the ring. The frozen copy holds every admitted request, a request that met the frozen head
/// was not counted, and nothing changes after the freeze.
#[test]
fn a_frozen_window_takes_no_more_counts() {
    let geo = shapes()[0];
    model(move || {
        let w = words(&geo);
        let t = t1(&geo);
        assert!(matches!(add(&win(&w, &geo), &geo, t, 1), Added::Yes { .. }));
        let admitted = Arc::new(LoomU64::new(0));
        let hs: Vec<_> = [t + geo.g, t]
            .into_iter()
            .map(|now| {
                let (w, admitted) = (Arc::clone(&w), Arc::clone(&admitted));
                thread::spawn(move || match add(&win(&w, &geo), &geo, now, 1) {
                    Added::Yes { .. } => {
                        admitted.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    }
                    Added::Frozen => {}
                    Added::Refused { .. } => panic!("room for both"),
                })
            })
            .collect();
        let copy = freeze(&win(&w, &geo), &geo);
        for h in hs {
            h.join().unwrap();
        }
        let a = admitted.load(std::sync::atomic::Ordering::Relaxed);
        assert_eq!(copy.used(&geo, t + geo.g), 1 + a);
        assert_eq!(snapshot(&win(&w, &geo), &geo), copy);
    });
}

/// The compactor freezes an expired window while a request arrives (and rotates it): either
/// the request is counted and the freeze fails, or the freeze wins and the request finds the
/// head frozen. Never both.
#[test]
fn the_compactor_never_unlinks_a_counted_request() {
    let geo = shapes()[0];
    model(move || {
        let w = words(&geo);
        let t = t1(&geo);
        assert!(matches!(add(&win(&w, &geo), &geo, t, 1), Added::Yes { .. }));
        let later = t + 18 * geo.g;
        let w2 = Arc::clone(&w);
        let req = thread::spawn(move || add(&win(&w2, &geo), &geo, later, 1));
        let frozen = freeze_if_expired(&win(&w, &geo), &geo, later);
        match req.join().unwrap() {
            Added::Yes { .. } => assert!(!frozen, "unlinked a window holding a request"),
            Added::Frozen => assert!(frozen),
            Added::Refused { .. } => panic!("an expired window has room"),
        }
    });
}

/// A reader (seqlock snapshot) racing with a rotation sees the words as they were before it
/// or as they are after it, never a mix. (The reader is the spawned thread: loom explores a
/// load reading an earlier or a later store when the load comes after the store in its first
/// run, not the other way round; with the reader in the main thread it ran once.)
fn reader_sees_whole_states(geo: Slide) {
    model(move || {
        let w = words(&geo);
        let t = t1(&geo);
        assert!(matches!(add(&win(&w, &geo), &geo, t, 1), Added::Yes { .. }));
        let before = snapshot(&win(&w, &geo), &geo);
        let w2 = Arc::clone(&w);
        let reader = thread::spawn(move || snapshot(&win(&w2, &geo), &geo));
        assert!(matches!(
            add(&win(&w, &geo), &geo, t + geo.g, 1),
            Added::Yes { .. }
        ));
        let seen = reader.join().unwrap();
        let after = snapshot(&win(&w, &geo), &geo);
        assert_eq!((after.n, after.cur, after.older), (before.n + 1, 1, 1));
        assert!(seen == before || seen == after, "a mixed copy: {seen:?}");
    });
}

#[test]
fn a_reader_sees_a_rotation_whole() {
    reader_sees_whole_states(shapes()[0]);
}

#[test]
fn a_reader_sees_a_rotation_whole_wide() {
    reader_sees_whole_states(shapes()[1]);
}

/// Two requests over two windows (a minute of 3 with one used, an hour of 2 with one used, the
/// hour in the wide layout): each adds to the minute, then the hour, and takes the minute
/// back if the hour refuses. One of them comes in the minute's next sub-window (it rotates the
/// minute's ring, so the other's take-back may find its count in the ring). Exactly one is
/// admitted, counted once in both windows; the refused one leaves no trace.
#[test]
fn several_windows_are_all_or_nothing_across_a_rotation() {
    let minute = Slide::new(3, 60_000, 16).unwrap();
    let hour = Slide::new(1_000_000, 3_600_000, 16).unwrap();
    assert!(hour.wide());
    model(move || {
        let (mw, hw) = (words(&minute), words(&hour));
        let t = t1(&minute);
        assert!(matches!(
            add(&win(&mw, &minute), &minute, t, 1),
            Added::Yes { .. }
        ));
        assert!(matches!(
            add(&win(&hw, &hour), &hour, t, 999_999),
            Added::Yes { .. }
        ));
        let admitted = Arc::new(LoomU64::new(0));
        let hs: Vec<_> = [t, t + minute.g]
            .into_iter()
            .map(|now| {
                let (mw, hw, admitted) = (Arc::clone(&mw), Arc::clone(&hw), Arc::clone(&admitted));
                thread::spawn(move || {
                    let m = win(&mw, &minute);
                    let Added::Yes { m: sub, .. } = add(&m, &minute, now, 1) else {
                        return;
                    };
                    match add(&win(&hw, &hour), &hour, now, 1) {
                        Added::Yes { .. } => {
                            admitted.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        }
                        _ => assert!(take_back(&m, &minute, sub, 1), "not frozen"),
                    }
                })
            })
            .collect();
        for h in hs {
            h.join().unwrap();
        }
        assert_eq!(admitted.load(std::sync::atomic::Ordering::Relaxed), 1);
        let at = t + minute.g;
        assert_eq!(snapshot(&win(&mw, &minute), &minute).used(&minute, at), 2);
        assert_eq!(snapshot(&win(&hw, &hour), &hour).used(&hour, at), 1_000_000);
    });
}

/// A take-back from the ring (under the lock) races with a freeze: the frozen copy either
/// still holds the count or does not, and nothing changes after the freeze.
#[test]
fn a_take_back_racing_a_freeze_changes_nothing_after_it() {
    let geo = shapes()[0];
    model(move || {
        let w = words(&geo);
        let t = t1(&geo);
        let Added::Yes { m, .. } = add(&win(&w, &geo), &geo, t, 1) else {
            panic!("room");
        };
        assert!(matches!(
            add(&win(&w, &geo), &geo, t + geo.g, 1),
            Added::Yes { .. }
        ));
        let w2 = Arc::clone(&w);
        let undo = thread::spawn(move || take_back(&win(&w2, &geo), &geo, m, 1));
        let copy = freeze(&win(&w, &geo), &geo);
        let took = undo.join().unwrap();
        // Taken before the freeze (the copy does not hold it), or refused by the frozen
        // window, which says so (the copy holds it, for the caller to take back there).
        let used = copy.used(&geo, t + geo.g);
        assert_eq!(used, if took { 1 } else { 2 });
        assert_eq!(snapshot(&win(&w, &geo), &geo), copy);
    });
}
