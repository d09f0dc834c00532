//! Read sections: how the usual check reads the index and an entry without pinning the epoch.
//!
//! Why it exists: crossbeam's pin makes a locked instruction, a full fence, on x86; measured,
//! it was a fifth of a check of a hot key (PERFORMANCE.md, "A check without the epoch's pin").
//! The usual check only reads shared structures (an index table, a home directory, an entry's
//! words) and counts with compare-and-swaps on the entry. What it needs is that nothing it
//! reads is freed or handed out again while it reads. Everything that could be (a replaced
//! table, an entry's line) already waits for the epoch; it now also waits, after that, for
//! every read section that was open when its wait began: [`retire`], then [`collect`].
//!
//! The protocol (DESIGN.md, "Checks without the epoch's pin", has the argument):
//! * each thread has a slot, a sequence number that only its thread writes: odd inside a
//!   section, even outside;
//! * entering a section stores the odd number, then a compiler fence; leaving stores the even
//!   one with Release. No locked instruction, no fence the processor sees;
//! * the reclaimer, holding work retired after what it frees was unlinked, has every thread of
//!   the process run a full fence ([`sys::process_barrier`], `membarrier(2)`), then reads every
//!   slot, and runs the work once each slot it saw odd has moved on. A section that began
//!   before the barrier is seen; one that began after it sees the unlinking.
//!
//! Where the kernel does not offer the barrier (or a sandbox refuses it), readers fence
//! themselves on entry (SeqCst) and the reclaimer fences before it reads the slots: the
//! classic pairing, as costly as the pin, and as sound.
//!
//! The slots and the work are the process's, shared by every store: a section lasts a check,
//! so one store's readers hold another's work back for nanoseconds, and a thread needs one
//! slot whatever it reads.

use std::marker::PhantomData;
use std::sync::atomic::{compiler_fence, fence, AtomicU64, Ordering};
use std::sync::OnceLock;

use parking_lot::Mutex;

use super::sys;

/// Work that frees something readers may hold: run once no section open at its retiring is.
pub(crate) type Work = Box<dyn FnOnce() + Send>;

/// A read section, open until dropped: what [`super::raw::EpochCell::load`] and the look-ups of
/// the check's usual path take in place of an epoch guard. Made by [`enter`]; it stays on the
/// thread that opened it.
pub(crate) struct Section {
    /// The thread's slot and the even number that closes the section; `None` for a section
    /// inside another (the outer one closes).
    leave: Option<(&'static Slot, u64)>,
    _this_thread: PhantomData<*const ()>,
}

impl Drop for Section {
    #[inline]
    fn drop(&mut self) {
        if let Some((slot, seq)) = self.leave {
            // Every read and write of the section comes before this store.
            slot.seq.store(seq, Ordering::Release);
        }
    }
}

/// One thread's sequence number, alone on its cache line (the thread writes it twice a check).
/// Slots live as long as the process: a thread that ends hands its slot to the next one.
#[repr(align(64))]
struct Slot {
    seq: AtomicU64,
}

/// The process's slots and the work waiting for them.
struct Registry {
    /// Every slot ever made (a few per thread alive at once).
    slots: Mutex<Vec<&'static Slot>>,
    /// Slots of threads that have ended, for the next ones.
    free: Mutex<Vec<&'static Slot>>,
    queue: Mutex<Queue>,
    /// The process barrier is registered: readers need only a compiler fence.
    asymmetric: bool,
}

/// Retired work: `fresh` waits for a barrier; `waiting` for the slots in `seen` (each odd at
/// the barrier) to move on.
#[derive(Default)]
struct Queue {
    fresh: Vec<Work>,
    waiting: Vec<Work>,
    seen: Vec<(&'static Slot, u64)>,
}

static REGISTRY: OnceLock<Registry> = OnceLock::new();

fn registry() -> &'static Registry {
    REGISTRY.get_or_init(|| Registry {
        slots: Mutex::new(Vec::new()),
        free: Mutex::new(Vec::new()),
        queue: Mutex::new(Queue::default()),
        asymmetric: sys::register_process_barrier(),
    })
}

/// This thread's slot and how it fences on entry.
struct Local {
    slot: &'static Slot,
    asymmetric: bool,
}

impl Local {
    fn register() -> Local {
        let reg = registry();
        let reused = reg.free.lock().pop();
        let slot = reused.unwrap_or_else(|| {
            let slot: &'static Slot = Box::leak(Box::new(Slot {
                seq: AtomicU64::new(0),
            }));
            reg.slots.lock().push(slot);
            slot
        });
        Local {
            slot,
            asymmetric: reg.asymmetric,
        }
    }
}

impl Drop for Local {
    fn drop(&mut self) {
        // The thread is ending outside any section (a section borrows nothing from this, but
        // it cannot outlive the thread's last check).
        registry().free.lock().push(self.slot);
    }
}

thread_local! {
    static LOCAL: Local = Local::register();
}

/// Open a read section: nothing retired ([`retire`]) after this returns is freed before the
/// section is dropped. `None` if this thread has no slot now (it is being torn down): the
/// caller pins the epoch instead. A section opened inside another is the outer one's.
#[inline]
pub(crate) fn enter() -> Option<Section> {
    let (slot, asymmetric) = LOCAL.try_with(|l| (l.slot, l.asymmetric)).ok()?;
    let seq = slot.seq.load(Ordering::Relaxed);
    if seq & 1 == 1 {
        return Some(Section {
            leave: None,
            _this_thread: PhantomData,
        });
    }
    slot.seq.store(seq + 1, Ordering::Relaxed);
    if asymmetric {
        // The reclaimer's barrier orders this store before the section's loads.
        compiler_fence(Ordering::SeqCst);
    } else {
        fence(Ordering::SeqCst);
    }
    Some(Section {
        leave: Some((slot, seq + 2)),
        _this_thread: PhantomData,
    })
}

/// Hand over `work` that frees what a section may still read: it runs in a later [`collect`],
/// once every section open now has closed. What it frees must be unreachable already (and,
/// for what epoch-pinned readers also reach, past the epoch: the callers retire from the
/// epoch's deferred functions).
pub(crate) fn retire(work: Work) {
    registry().queue.lock().fresh.push(work);
}

/// Run the retired work whose sections have all closed; start the wait of the rest with a
/// barrier. Never blocks on a reader: what still waits is left for a later call. A barrier is
/// made only when work waits for one, so there are at most as many as retirements (a moved or
/// expired entry, a replaced table); measured on this VM, one costs its caller about 0.36 µs
/// and each other running thread of the process about 0.06 µs.
pub(crate) fn collect() {
    let Some(reg) = REGISTRY.get() else {
        return;
    };
    let ready = {
        let mut q = reg.queue.lock();
        let mut ready = Vec::new();
        if !q.waiting.is_empty() && moved_on(&q.seen) {
            ready = std::mem::take(&mut q.waiting);
            q.seen.clear();
        }
        if q.waiting.is_empty() && !q.fresh.is_empty() {
            if let Some(seen) = reg.open_sections() {
                let fresh = std::mem::take(&mut q.fresh);
                if moved_on(&seen) {
                    ready.extend(fresh);
                } else {
                    q.waiting = fresh;
                    q.seen = seen;
                }
            }
        }
        ready
    };
    for work in ready {
        work();
    }
}

/// Whether every slot of `seen` has left the section it was in.
fn moved_on(seen: &[(&'static Slot, u64)]) -> bool {
    seen.iter()
        .all(|(slot, seq)| slot.seq.load(Ordering::Acquire) != *seq)
}

impl Registry {
    /// After a barrier, the slots inside a section and their numbers; `None` if the barrier
    /// could not be made (the work then waits for a later try: never freed unsafely).
    fn open_sections(&self) -> Option<Vec<(&'static Slot, u64)>> {
        if self.asymmetric {
            if !sys::process_barrier() {
                return None;
            }
        } else {
            fence(Ordering::SeqCst);
        }
        let slots = self.slots.lock();
        Some(
            slots
                .iter()
                .filter_map(|&s| {
                    let seq = s.seq.load(Ordering::Acquire);
                    (seq & 1 == 1).then_some((s, seq))
                })
                .collect(),
        )
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicBool;
    use std::sync::{mpsc, Arc};

    use super::*;

    /// Retire work that sets its own flag; the flag.
    fn flagged() -> Arc<AtomicBool> {
        let ran = Arc::new(AtomicBool::new(false));
        let r = Arc::clone(&ran);
        retire(Box::new(move || r.store(true, Ordering::Release)));
        ran
    }

    /// Collect until `ran` (other tests' sections in this process may hold it back a moment:
    /// each lasts one check).
    fn collect_until(ran: &AtomicBool) {
        for _ in 0..1_000_000 {
            collect();
            if ran.load(Ordering::Acquire) {
                return;
            }
            std::thread::yield_now();
        }
        panic!("retired work never ran with no section of this test open");
    }

    fn inside() -> bool {
        LOCAL.with(|l| l.slot.seq.load(Ordering::Relaxed) & 1 == 1)
    }

    #[test]
    fn work_waits_for_a_section_open_when_it_was_retired() {
        let (entered, wait_entered) = mpsc::channel();
        let (leave, wait_leave) = mpsc::channel::<()>();
        let reader = std::thread::spawn(move || {
            let section = enter().unwrap();
            entered.send(()).unwrap();
            wait_leave.recv().unwrap();
            drop(section);
        });
        wait_entered.recv().unwrap();
        let ran = flagged();
        for _ in 0..100 {
            collect();
            assert!(!ran.load(Ordering::Acquire), "freed under an open section");
        }
        leave.send(()).unwrap();
        reader.join().unwrap();
        collect_until(&ran);
    }

    #[test]
    fn sections_nest_and_close_once() {
        assert!(!inside());
        let outer = enter().unwrap();
        drop(enter().unwrap());
        assert!(inside(), "the inner section closed the outer one");
        drop(outer);
        assert!(!inside());
    }

    #[test]
    fn a_panic_in_a_section_closes_it() {
        let r = std::panic::catch_unwind(|| {
            let _section = enter().unwrap();
            panic!("in a section");
        });
        assert!(r.is_err());
        assert!(!inside(), "a panic left the slot inside");
        collect_until(&flagged());
    }
}
