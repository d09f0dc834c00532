//! Taking back what a check counted when a later window of the same request refused it (all
//! or nothing), and what a reservation did not use: in the entry the cost was counted in, or,
//! if that entry is moving, in the copy it moves to. A frozen window refuses a take-back and
//! says so; the copy holds the count, sub-window for sub-window, once the move is published.

use super::core::Core;
use super::entry::{sliding_window, WindowsAt};
use crate::limit::{Limits, MAX_WINDOWS};
use crate::storage::segment::Entry;
use crate::window::cell::WordCell;
use crate::window::sliding;

/// How many times [`Core::take_back_moved`] looks for the moved copy before it leaves the
/// cost counted (the tries yield the thread after the first 64).
const MOVE_TRIES: u32 = 100_000;

impl Core {
    /// Take back the cost added to sliding windows (`added[i]`: the sub-window counted in).
    /// Returns the take-backs that met a frozen window (`Some(m)` where one is still owed):
    /// the entry is moving, and the copy it moves to holds the cost
    /// ([`Core::take_back_moved`] takes it back there).
    #[expect(
        clippy::indexing_slicing,
        reason = "window indexes are below limits.len() <= MAX_WINDOWS, the length of every array indexed here"
    )]
    pub(super) fn undo(
        &self,
        e: &Entry<'_>,
        at: &WindowsAt<'_>,
        limits: &Limits,
        added: &[Option<u64>; MAX_WINDOWS],
        cost: u32,
    ) -> [Option<u64>; MAX_WINDOWS] {
        let mut owed = [None; MAX_WINDOWS];
        let shapes = limits.shapes(self.b);
        for (i, m) in added.iter().enumerate().take(limits.len()) {
            let Some(m) = *m else { continue };
            if let Some(geo) = shapes.get(i) {
                if let Some(win) = sliding_window(e, at.of(i), geo) {
                    if !sliding::take_back(&win, geo, m, cost) {
                        owed[i] = Some(m);
                    }
                }
            }
        }
        owed
    }

    /// Make the take-backs `owed` (left by [`Core::undo`] on a frozen window) in the entry the
    /// key moved to, which holds the counts of every window both copies share, sub-window for
    /// sub-window: found again once the move is published (it is waited for, the epoch
    /// re-pinned between tries). Nothing is owed any more if the key is gone (unlinked: its
    /// counts went with it) or its entry now holds other windows than `limits` (moved again
    /// to another set: the window cannot be named; left counted, the stricter way), nor after
    /// [`MOVE_TRIES`] tries (a move copies one entry under its stripe's lock; a request is
    /// not held longer than that for one unit of count). `owed` is empty when it returns.
    #[cold]
    #[inline(never)]
    pub(super) fn take_back_moved(
        &self,
        hash: u64,
        key: &[u8],
        limits: &Limits,
        owed: &mut [Option<u64>; MAX_WINDOWS],
        cost: u32,
        guard: &mut crossbeam_epoch::Guard,
    ) {
        let mut spins = 0u32;
        while owed.iter().any(Option::is_some) && spins < MOVE_TRIES {
            let Some(line) = self.find(hash, key, guard) else {
                break;
            };
            let e = self.segs.entry(line);
            let Some(at) = self.windows_at(&e, limits) else {
                break;
            };
            *owed = self.undo(&e, &at, limits, owed, cost);
            if owed.iter().any(Option::is_some) {
                spins += 1;
                guard.repin();
                <std::sync::atomic::AtomicU64 as WordCell>::pause(spins);
            }
        }
        *owed = [None; MAX_WINDOWS];
    }
}

#[cfg(test)]
mod tests {
    use crate::engine::entry::sliding_window;
    use crate::engine::entry::Place;
    use crate::window::sliding::{self, Added};
    use crate::{Limit, Limits, Options, Store};

    const T0: u64 = 1_700_000_000_000;

    /// The race `take_back_moved` closes, played in order: a check counts its cost in the
    /// first window, the entry moves (its windows frozen, their counts copied), and the
    /// check's take-back (a later window refused) meets the frozen window. The cost is taken
    /// back from the copy, not left counted there.
    #[test]
    fn a_take_back_that_meets_a_moving_entry_is_made_in_its_new_copy() {
        let store = Store::open_in_memory(Options::default().compactor(false)).unwrap();
        let limits = Limits::new(&[Limit::per_minute(60), Limit::per_hour(1000)]).unwrap();
        let key = b"moving";
        assert!(store.check_at(key, &limits, 1, T0).unwrap().allowed());
        let core = &store.core;
        let hash = core.hasher.hash_one(key);
        let mut guard = crossbeam_epoch::pin();
        let line = core.find(hash, key, &guard).unwrap();
        let e = core.segs.entry(line);
        let at = core.windows_at(&e, &limits).unwrap();
        let shapes = limits.shapes(core.b);
        let geo = shapes.get(0).unwrap();
        // The check's first window counts it...
        let Added::Yes { m, .. } =
            sliding::add(&sliding_window(&e, at.of(0), geo).unwrap(), geo, T0, 1)
        else {
            panic!("room in the minute window");
        };
        // ...the entry moves (a move home takes the same path as a change of limits)...
        core.migrate(hash, line, key, Some(&limits), Place::Home(hash), &guard)
            .unwrap();
        assert_ne!(core.find(hash, key, &guard), Some(line), "moved");
        let used = || store.peek_at(key, &limits, T0).unwrap().windows()[0].used();
        assert_eq!(used(), 2, "the copy holds the count");
        // ...and its take-back meets the frozen window: owed, then made in the copy.
        let mut added = [None; crate::limit::MAX_WINDOWS];
        added[0] = Some(m);
        let mut owed = core.undo(&e, &at, &limits, &added, 1);
        assert_eq!(owed, added, "a frozen window takes nothing back");
        core.take_back_moved(hash, key, &limits, &mut owed, 1, &mut guard);
        assert_eq!(owed, [None; crate::limit::MAX_WINDOWS]);
        assert_eq!(used(), 1, "taken back from the copy");
        // The hour window was never counted here, and is left alone.
        assert_eq!(
            store.peek_at(key, &limits, T0).unwrap().windows()[1].used(),
            1
        );
    }
}
