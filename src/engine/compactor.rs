//! The background compactor thread: it runs expiry passes (`expire.rs`) while they keep
//! finding work and sleeps otherwise, and now and then compacts response records
//! (`blobs.rs`). Like Redis's active expiry it runs another pass at once while passes find
//! many expired entries, and it lowers its own priority so the threads answering checks go
//! first. It also faults in the segments allocations take, and grows the file's spare
//! segment when an allocation asks for one (`storage/segment/growth.rs`), so that no check
//! waits for either. Dropping the handle stops and joins it.

use std::sync::Arc;
use std::thread::JoinHandle;

use parking_lot::{Condvar, Mutex};

use super::core::Core;
use crate::options::CompactorOptions;

/// The compactor thread; stopped and joined when dropped.
pub(crate) struct CompactorHandle {
    stop: Arc<(Mutex<bool>, Condvar)>,
    thread: Option<JoinHandle<()>>,
}

impl CompactorHandle {
    /// Start the thread over `core`.
    pub(crate) fn spawn(core: Arc<Core>, opts: CompactorOptions) -> CompactorHandle {
        let stop = Arc::new((Mutex::new(false), Condvar::new()));
        if !opts.enabled {
            return CompactorHandle { stop, thread: None };
        }
        let wake = Arc::clone(&stop);
        core.segs.set_waker(
            Arc::new(move || {
                // Under the thread's lock: it looks for work under it before it sleeps, so
                // this wake-up cannot fall between the look and the sleep.
                let _held = wake.0.lock();
                wake.1.notify_one();
            }),
            opts.grow_ahead,
        );
        let flag = Arc::clone(&stop);
        let thread = std::thread::Builder::new()
            .name("tollgate-compactor".into())
            .spawn(move || run(core, flag, opts))
            .ok();
        CompactorHandle { stop, thread }
    }
}

fn run(core: Arc<Core>, stop: Arc<(Mutex<bool>, Condvar)>, opts: CompactorOptions) {
    // Background work: on a shared core, the threads answering checks go first.
    crate::storage::sys::lower_thread_priority();
    let (lock, cv) = &*stop;
    let mut tick = 0u64;
    loop {
        // Segments taken and a spare asked for while this thread was busy are seen to before
        // it sleeps. A failure poisons the store as a request's own growth would (the next
        // write reports it).
        core.segs.fault_in_taken();
        let _ = core.segs.grow_spare();
        {
            let mut stopped = lock.lock();
            if *stopped {
                return;
            }
            if !core.segs.spare_wanted() && !core.segs.fault_in_wanted() {
                cv.wait_for(&mut stopped, opts.interval);
            }
            if *stopped {
                return;
            }
        }
        core.segs.fault_in_taken();
        let _ = core.segs.grow_spare();
        // Keep going while passes find many expired entries (a quarter of what they look at),
        // checking for a stop request between passes.
        loop {
            // No operation yet since the store opened: no time to judge expiry at.
            let now = core.expiry_now();
            // A poisoned store writes nothing more, not even an unlink.
            if now == 0 || core.segs.is_poisoned() {
                break;
            }
            let r = core.expire_pass(now, opts.budget);
            if r.wrapped && r.expired == 0 {
                break;
            }
            if r.expired * 4 < r.examined.max(1) || *lock.lock() {
                break;
            }
            // Between passes (each at most `budget` entries), let a thread waiting for this
            // core run.
            std::thread::yield_now();
        }
        // What the passes freed, and what the epoch has let go since, waits for the read
        // sections last (`storage/readers.rs`): let it on, so that the space is reused without
        // waiting for the next new key.
        crate::storage::readers::collect();
        tick += 1;
        if tick.is_multiple_of(8) && !core.segs.is_poisoned() {
            core.compact_blobs(50);
        }
    }
}

impl Drop for CompactorHandle {
    fn drop(&mut self) {
        *self.stop.0.lock() = true;
        self.stop.1.notify_all();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
