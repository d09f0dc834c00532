//! One key at a time, for `Store::inspect_key`, `inspect_record`, `delete_key` and
//! `delete_record` (`src/admin.rs` has the public side and the protocol's argument): read
//! every window or the record of one key, or remove it under the protocol the compactor
//! unlinks with.

use std::sync::atomic::Ordering;
use std::time::Duration;

use super::core::Core;
use super::entry::{entry_windows, sliding_window, EntryWindows};
use crate::admin::{KeyReport, KeyWindow, RecordReport, SubWindow};
use crate::backend::check_key;
use crate::error::{Error, Result};
use crate::idempotency::record::{
    pack, unpack, IdemLayout, ResponseMeta, ST_COMPLETING, ST_DEAD, ST_DONE, ST_INFLIGHT,
};
use crate::idempotency::{record_key, IdempotencyKey};
use crate::inspect::RecordState;
use crate::limit::{Limits, Mode};
use crate::storage::format::{SegmentHeader, KIND_IDEM, KIND_WINDOWS};
use crate::window::{cell, sliding};

impl Core {
    /// Every window the store keeps for rate-limit `key` at `now_ms`: counts, reset times and
    /// the sub-window state. `limits` (the key's policy, if known) supplies the limits that
    /// the file does not keep. `None` if the store holds no counters for the key. Reads only.
    pub(crate) fn inspect_key(
        &self,
        key: &[u8],
        limits: Option<&Limits>,
        now_ms: u64,
    ) -> Result<Option<KeyReport>> {
        check_key(key)?;
        let core = self;
        let guard = crossbeam_epoch::pin();
        let hash = core.hasher.hash_one(key);
        let Some(line) = core.find_kind(hash, key, KIND_WINDOWS, &guard) else {
            return Ok(None);
        };
        let offset = core.segs.file_offset(line);
        let e = core.segs.entry(line);
        let slots = window_slots(core, line)?;
        let mut windows = Vec::with_capacity(slots.len());
        for &(at, d) in slots.iter() {
            let given = limits.and_then(|ls| {
                ls.as_slice()
                    .iter()
                    .find(|l| l.window_ms() == d.window_ms && (l.mode() == Mode::Exact) == d.exact)
                    .map(|l| l.limit())
            });
            let mut w = KeyWindow {
                window: Duration::from_millis(d.window_ms),
                exact: d.exact,
                limit: given,
                used: 0,
                left: None,
                reset_ms: now_ms,
                sub_window: Duration::ZERO,
                sub_windows: Vec::new(),
            };
            if d.exact {
                let ring = cell::read_ring(|k| e.w(k), at.head, d.cap);
                let ev = ring.eval(d.window_ms, now_ms);
                let times = ev.times.get(..ev.len as usize).unwrap_or(&[]);
                w.limit = w.limit.or(Some(d.cap));
                w.used = ev.len;
                w.reset_ms = times
                    .last()
                    .map_or(now_ms, |t| t.saturating_add(d.window_ms));
                w.sub_windows = times
                    .iter()
                    .map(|&t| SubWindow {
                        start_ms: t,
                        used: 1,
                    })
                    .collect();
            } else {
                // Judged against the policy's limit when it is given (and fits the counters).
                let width = d.slide(core.b);
                let geo = match (width, given) {
                    (Some(g), Some(l)) => g.with_limit(l).or(width),
                    (g, _) => g,
                };
                let snap = geo.and_then(|g| {
                    let win = sliding_window(&e, at, &g)?;
                    Some((sliding::snapshot(&win, &g), g))
                });
                if let Some((snap, g)) = snap {
                    let ne = snap.eff(&g, now_ms);
                    w.used = u32::try_from(snap.used(&g, now_ms)).unwrap_or(u32::MAX);
                    w.reset_ms = snap.reset_ms(&g, now_ms);
                    w.sub_window = Duration::from_millis(g.g);
                    // Newest first, the sub-windows that count now.
                    w.sub_windows = (ne.saturating_sub(u64::from(g.b))..=ne)
                        .rev()
                        .map(|m| SubWindow {
                            start_ms: m.saturating_mul(g.g),
                            used: u32::try_from(snap.count(&g, m)).unwrap_or(u32::MAX),
                        })
                        .collect();
                }
            }
            w.left = w.limit.map(|l| l.saturating_sub(w.used));
            windows.push(w);
        }
        Ok(Some(KeyReport { offset, windows }))
    }

    /// The idempotency record of `key` in `scope` at `now_ms`, or `None` if the store holds
    /// none. Reads only.
    pub(crate) fn inspect_record(
        &self,
        scope: &[u8],
        key: &IdempotencyKey,
        now_ms: u64,
    ) -> Result<Option<RecordReport>> {
        let rk = record_key(scope, key)?;
        let k = rk.as_bytes();
        let core = self;
        let guard = crossbeam_epoch::pin();
        let Some(line) = core.find_kind(core.hasher.hash_one(k), k, KIND_IDEM, &guard) else {
            return Ok(None);
        };
        let l = IdemLayout::new(k.len());
        let e = core.segs.entry(line);
        let (st, fence, dl) = unpack(e.load(l.state_at));
        let state = match st {
            ST_DONE => RecordState::Completed,
            ST_INFLIGHT => RecordState::InFlight,
            ST_COMPLETING | ST_DEAD => RecordState::Changing,
            _ => RecordState::Vacant,
        };
        let deadline_ms = dl.saturating_mul(1000);
        let done = st == ST_DONE;
        Ok(Some(RecordReport {
            offset: core.segs.file_offset(line),
            state,
            fence,
            deadline_ms,
            status: if done {
                core.read_response_at(line).ok().map(|r| r.status())
            } else {
                None
            },
            response_len: done.then(|| ResponseMeta::decode(e.load(l.state_at + 2)).len),
            expired: state == RecordState::Vacant
                || (matches!(state, RecordState::InFlight | RecordState::Completed)
                    && now_ms >= deadline_ms),
        }))
    }

    /// Remove every counter of rate-limit `key`: its next check starts from a fresh quota.
    /// Safe against checks of the same key running meanwhile (module docs). Returns whether
    /// the store held counters for the key.
    pub(crate) fn delete_key(&self, key: &[u8]) -> Result<bool> {
        check_key(key)?;
        let core = self;
        let guard = crossbeam_epoch::pin();
        let hash = core.hasher.hash_one(key);
        let mut lock = core.index.lock(hash);
        let Some(line) = core.find_kind(hash, key, KIND_WINDOWS, &guard) else {
            return Ok(false);
        };
        let slots = window_slots(core, line)?;
        let e = core.segs.entry(line);
        // Freeze every window, as a move does: from here on no check counts in this entry.
        for (at, d) in slots.iter() {
            if let Some(w) = e.w(at.head) {
                if d.exact {
                    // `false` means frozen already; otherwise the ring's lock is ours, so no
                    // check is half-way through the ring when it freezes.
                    if cell::lock_meta(w) {
                        w.fetch_or(cell::META_FROZEN, Ordering::AcqRel);
                        cell::unlock_meta(w);
                    }
                } else if let Some(win) = d
                    .slide(core.b)
                    .and_then(|geo| Some((sliding_window(&e, *at, &geo)?, geo)))
                {
                    sliding::freeze(&win.0, &win.1);
                }
            }
        }
        let lines = entry_lines(core, line)?;
        lock.remove(hash, line, &guard);
        core.clear_entry(line);
        core.live_entries.fetch_sub(1, Ordering::Relaxed);
        core.segs.release_later(line, lines, &guard);
        Ok(true)
    }

    /// Remove the idempotency record of `key` in `scope`, whatever its state: a cached
    /// response is forgotten (the next request with the key runs again), and a lease in flight
    /// is lost (its holder's `complete` fails with [`Error::LeaseLost`]). Returns whether the
    /// store held the record. A record that is being completed at this instant is waited for,
    /// up to [`DELETE_TRIES`] tries; then [`Error::Busy`].
    pub(crate) fn delete_record(&self, scope: &[u8], key: &IdempotencyKey) -> Result<bool> {
        let rk = record_key(scope, key)?;
        let k = rk.as_bytes();
        let core = self;
        let mut guard = crossbeam_epoch::pin();
        let hash = core.hasher.hash_one(k);
        let l = IdemLayout::new(k.len());
        let mut tries = 0u32;
        loop {
            let mut lock = core.records.lock(hash);
            let Some(line) = core.find_kind(hash, k, KIND_IDEM, &guard) else {
                return Ok(false);
            };
            let e = core.segs.entry(line);
            let Some(w) = e.w(l.state_at) else {
                return Err(Error::Corrupt {
                    offset: core.segs.file_offset(line),
                    reason: "idempotency entry outside its segment",
                });
            };
            let s = w.load(Ordering::Acquire);
            let (state, fence, dl) = unpack(s);
            // A completion in progress writes its response and then the state word: let it
            // finish, then remove. Not for ever: a completer that does not finish (its thread
            // stopped, or a store growing very slowly) leaves the caller an error to act on.
            if state == ST_COMPLETING
                || w.compare_exchange(
                    s,
                    pack(ST_DEAD, fence, dl),
                    Ordering::AcqRel,
                    Ordering::Acquire,
                )
                .is_err()
            {
                drop(lock);
                tries += 1;
                if tries >= DELETE_TRIES {
                    return Err(Error::Busy {
                        offset: core.segs.file_offset(line),
                    });
                }
                // Not pinned while it waits: a guard held across up to `DELETE_TRIES` yields
                // would keep the epoch from advancing, and every thread's retired memory and
                // tombstones with it (a test of home slots running beside the one that waits
                // here found a quarter of its keys at home instead of nine in ten). The line
                // is looked up again after the re-pin.
                guard.repin();
                if tries > DELETE_SPINS {
                    std::thread::yield_now();
                } else {
                    std::hint::spin_loop();
                }
                continue;
            }
            if state == ST_DONE {
                core.record_blob_dead(&e, &l);
            }
            lock.remove(hash, line, &guard);
            core.clear_entry(line);
            core.live_entries.fetch_sub(1, Ordering::Relaxed);
            core.counters.live_records.fetch_sub(1, Ordering::Relaxed);
            core.segs.release_later(line, l.lines, &guard);
            return Ok(true);
        }
    }
}

/// Tries of [`Core::delete_record`] on a record that is changing, spinning, before it yields
/// the processor between tries.
const DELETE_SPINS: u32 = 1_000;
/// Tries of [`Core::delete_record`] on a record that is changing before it gives up with
/// [`Error::Busy`]: a count, not a time, so no clock is read; with the processor yielded
/// between tries this is some tens of milliseconds or more, where a completion takes
/// microseconds (a store that grows for it, a few milliseconds).
const DELETE_TRIES: u32 = 100_000;

/// The windows of the window entry at `line`: (where its words are, descriptor) each.
fn window_slots(core: &Core, line: u64) -> Result<EntryWindows> {
    entry_windows(&core.segs.entry(line), core.b).ok_or(Error::Corrupt {
        offset: core.segs.file_offset(line),
        reason: "window descriptor",
    })
}

/// The size class (lines per entry) of the segment holding `line`.
fn entry_lines(core: &Core, line: u64) -> Result<u32> {
    let seg = core.segs.seg_of(line);
    match SegmentHeader::decode(&core.segs.read_segment_header(seg), seg as u32) {
        Ok(Some(h)) => Ok(h.entry_lines),
        _ => Err(Error::Corrupt {
            offset: core.segs.file_offset(line),
            reason: "segment header",
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::idempotency::{Begin, Fingerprint, StoredResponse};
    use crate::options::Options;
    use crate::store::Store;

    const T0: u64 = 1_700_000_040_000;

    /// The state word of the record of `key` in `scope`.
    fn state_word(store: &Store, scope: &[u8], key: &IdempotencyKey) -> (u64, usize) {
        let core = &store.core;
        let rk = record_key(scope, key).expect("record key");
        let k = rk.as_bytes();
        let guard = crossbeam_epoch::pin();
        let line = core
            .find_kind(core.hasher.hash_one(k), k, KIND_IDEM, &guard)
            .expect("the record is there");
        let at = IdemLayout::new(k.len()).state_at;
        (line, at)
    }

    #[test]
    fn delete_record_gives_up_on_a_record_stuck_mid_completion() {
        let store = Store::open_in_memory(Options::default().compactor(false)).expect("store");
        let key = IdempotencyKey::parse("4d9c3a41-6bb7-4c4e-9a39-8f3c2d7e1f00").expect("key");
        let fp = Fingerprint::of("POST", "/sms", b"{}");
        let Ok(Begin::Started(lease)) = store.begin_at(b"acct", &key, &fp, T0) else {
            panic!("a fresh key starts");
        };
        // Put the record where `complete` has it while it writes the response: claimed, the
        // state word ST_COMPLETING, and leave it there (a completer that never finishes).
        let (line, at) = state_word(&store, b"acct", &key);
        let e = store.core.segs.entry(line);
        let w = e.w(at).expect("state word");
        let before = w.load(Ordering::Acquire);
        let (state, fence, _) = unpack(before);
        assert_eq!(state, ST_INFLIGHT);
        w.store(pack(ST_COMPLETING, fence, 0), Ordering::Release);

        match store.delete_record(b"acct", &key) {
            Err(Error::Busy { offset }) => {
                assert_eq!(offset, store.core.segs.file_offset(line));
            }
            other => panic!("expected Busy, got {other:?}"),
        }
        // Nothing changed: the record is still there, still changing.
        let r = store
            .inspect_record(b"acct", &key, T0)
            .expect("inspect")
            .expect("still there");
        assert_eq!(r.state, RecordState::Changing);

        // The completion "finishes" (the lease is back in flight): the delete goes through,
        // and the lease's holder finds it lost.
        w.store(before, Ordering::Release);
        assert!(store.delete_record(b"acct", &key).expect("delete"));
        assert!(store
            .inspect_record(b"acct", &key, T0)
            .expect("inspect")
            .is_none());
        assert!(matches!(
            store.complete_at(&lease, &StoredResponse::new(201, b"x".to_vec()), T0),
            Err(Error::LeaseLost { .. })
        ));
    }
}
