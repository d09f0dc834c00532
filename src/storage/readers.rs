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
use std::sync::atomic::{compiler_fence, fence, AtomicU64, AtomicUsize, Ordering};
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
            close(&slot.seq, seq);
        }
    }
}

/// One thread's sequence number, alone on its cache line (the thread writes it twice a check).
/// Slots live as long as the process: a thread that ends hands its slot to the next one.
#[repr(align(64))]
struct Slot {
    seq: AtomicU64,
}

/// A slot's word: std's atomic in the store, loom's in the model checks (`loom_tests`), so
/// that loom runs the very functions below.
pub(crate) trait SlotWord {
    /// Atomic load.
    fn load(&self, order: Ordering) -> u64;
    /// Atomic store.
    fn store(&self, value: u64, order: Ordering);
    /// A `SeqCst` fence of the same world (std's, or loom's).
    fn fence();
}

impl SlotWord for AtomicU64 {
    #[inline]
    fn load(&self, order: Ordering) -> u64 {
        self.load(order)
    }
    #[inline]
    fn store(&self, value: u64, order: Ordering) {
        self.store(value, order);
    }
    #[inline]
    fn fence() {
        fence(Ordering::SeqCst);
    }
}

/// Open a section on `slot`: the even number that closes it, or `None` if the slot is inside
/// a section already (the outer one closes). `asymmetric`: the reclaimer makes the barrier,
/// so a compiler fence orders the store before the section's loads; else a `SeqCst` fence.
#[inline]
fn open<W: SlotWord>(slot: &W, asymmetric: bool) -> Option<u64> {
    let seq = slot.load(Ordering::Relaxed);
    if seq & 1 == 1 {
        return None;
    }
    slot.store(seq + 1, Ordering::Relaxed);
    if asymmetric {
        compiler_fence(Ordering::SeqCst);
    } else {
        W::fence();
    }
    Some(seq + 2)
}

/// Close the section [`open`] gave `seq` for: every read and write of the section comes
/// before this store.
#[inline]
fn close<W: SlotWord>(slot: &W, seq: u64) {
    slot.store(seq, Ordering::Release);
}

/// The reclaimer's look at a slot, after its barrier: the slot's number if it is inside a
/// section.
fn inside<W: SlotWord>(slot: &W) -> Option<u64> {
    let seq = slot.load(Ordering::Acquire);
    (seq & 1 == 1).then_some(seq)
}

/// Whether the slot seen inside at `seq` has left that section since.
fn left<W: SlotWord>(slot: &W, seq: u64) -> bool {
    slot.load(Ordering::Acquire) != seq
}

/// The process's slots and the work waiting for them.
struct Registry {
    /// Every slot ever made (a few per thread alive at once).
    slots: Mutex<Vec<&'static Slot>>,
    /// Slots of threads that have ended, for the next ones.
    free: Mutex<Vec<&'static Slot>>,
    queue: Mutex<Queue>,
    /// Work in `queue`, read without its lock: a [`collect`] with nothing to do (most, on a
    /// new key's allocation) takes no lock shared by the whole process.
    queued: AtomicUsize,
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
        queued: AtomicUsize::new(0),
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
        // The thread is ending, outside any section: a section lives on the stack of one check
        // (a check from a later thread-local destructor finds no slot and pins the epoch).
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
    Some(Section {
        leave: open(&slot.seq, asymmetric).map(|seq| (slot, seq)),
        _this_thread: PhantomData,
    })
}

/// Hand over `work` that frees what a section may still read: it runs in a later [`collect`],
/// once every section open now has closed. What it frees must be unreachable already (and,
/// for what epoch-pinned readers also reach, past the epoch: the callers retire from the
/// epoch's deferred functions).
pub(crate) fn retire(work: Work) {
    let reg = registry();
    let mut q = reg.queue.lock();
    q.fresh.push(work);
    reg.queued.fetch_add(1, Ordering::Release);
}

/// Run the retired work whose sections have all closed; start the wait of the rest with a
/// barrier. Never blocks on a reader: what still waits is left for a later call. A barrier is
/// made only when work waits for one, so there are at most as many as retirements (a moved or
/// expired entry, a replaced table); measured on this VM, one costs its caller about 0.36 µs
/// and each other running thread of the process about 0.06 µs.
///
/// The barrier runs without the queue's lock: the fresh work is taken out first, and put back
/// as waiting (or as fresh, if no barrier could be made) after. Every [`retire`] takes that
/// lock, so holding it across the barrier's system call made request threads sleep on it:
/// 75 times in 4 s of the main job (2026-12-08, PERFORMANCE.md). Work retired meanwhile waits
/// for a later call, as it would have.
pub(crate) fn collect() {
    let Some(reg) = REGISTRY.get() else {
        return;
    };
    if reg.queued.load(Ordering::Acquire) == 0 {
        return;
    }
    let (mut ready, fresh) = {
        let mut q = reg.queue.lock();
        let mut ready = Vec::new();
        if !q.waiting.is_empty() && moved_on(&q.seen) {
            ready = std::mem::take(&mut q.waiting);
            q.seen.clear();
        }
        // One wait at a time, as a rule: fresh work starts its wait once the last one is over.
        let fresh = if q.waiting.is_empty() {
            std::mem::take(&mut q.fresh)
        } else {
            Vec::new()
        };
        (ready, fresh)
    };
    if !fresh.is_empty() {
        match reg.open_sections() {
            Some(seen) if moved_on(&seen) => ready.extend(fresh),
            Some(seen) => {
                // Another call may have started a wait meanwhile: the work then waits for
                // the sections of both barriers, which only ever delays it.
                let mut q = reg.queue.lock();
                q.waiting.extend(fresh);
                q.seen.extend(seen);
            }
            None => reg.queue.lock().fresh.extend(fresh),
        }
    }
    // Counted when retired, under the queue's lock, before any call could take it.
    reg.queued.fetch_sub(ready.len(), Ordering::AcqRel);
    for work in ready {
        work();
    }
}

/// Whether every slot of `seen` has left the section it was in.
fn moved_on(seen: &[(&'static Slot, u64)]) -> bool {
    seen.iter().all(|(slot, seq)| left(&slot.seq, *seq))
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
                .filter_map(|&s| inside(&s.seq).map(|seq| (s, seq)))
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

    /// Readers in sections, a writer replacing what they read and retiring the old one, and
    /// collections on every thread at once: no reader ever sees freed what it loaded inside
    /// its section, and every retired piece of work runs once.
    #[test]
    fn concurrent_retires_and_collects_never_free_what_a_section_reads() {
        const SWAPS: usize = 20_000;
        let freed: Arc<Vec<AtomicBool>> =
            Arc::new((0..=SWAPS).map(|_| AtomicBool::new(false)).collect());
        let current = Arc::new(AtomicUsize::new(0));
        let done = Arc::new(AtomicBool::new(false));
        let readers: Vec<_> = (0..2)
            .map(|_| {
                let (freed, current, done) = (freed.clone(), current.clone(), done.clone());
                std::thread::spawn(move || {
                    let mut reads = 0u64;
                    while !done.load(Ordering::Acquire) {
                        let section = enter().unwrap();
                        let i = current.load(Ordering::Acquire);
                        for _ in 0..8 {
                            assert!(!freed[i].load(Ordering::Acquire), "object {i} freed");
                        }
                        drop(section);
                        reads += 1;
                        if reads.is_multiple_of(64) {
                            collect();
                        }
                    }
                })
            })
            .collect();
        for next in 1..=SWAPS {
            let old = current.swap(next, Ordering::AcqRel);
            let f = freed.clone();
            retire(Box::new(move || {
                assert!(
                    !f[old].swap(true, Ordering::AcqRel),
                    "object {old} freed twice"
                );
            }));
            collect();
        }
        done.store(true, Ordering::Release);
        for r in readers {
            r.join().expect("a reader saw freed memory");
        }
        // Everything but the object still current is freed, once, when no section is open.
        for f in &freed[..SWAPS] {
            collect_until(f);
        }
        assert!(freed[..SWAPS].iter().all(|f| f.load(Ordering::Acquire)));
        assert!(!freed[SWAPS].load(Ordering::Acquire));
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

#[cfg(test)]
mod loom_tests {
    //! Model checks with loom of the protocol's functions ([`open`], [`close`], [`inside`],
    //! [`left`]) in the fenced flavour: loom models `SeqCst` fences, not `membarrier`, whose
    //! argument is DESIGN.md's ("Checks without the epoch's pin").

    use loom::sync::atomic::AtomicU64 as LoomU64;
    use loom::sync::Arc;
    use loom::thread;

    use super::*;

    impl SlotWord for LoomU64 {
        fn load(&self, order: Ordering) -> u64 {
            self.load(order)
        }
        fn store(&self, value: u64, order: Ordering) {
            self.store(value, order);
        }
        fn fence() {
            loom::sync::atomic::fence(Ordering::SeqCst);
        }
    }

    /// Runs `f` under loom and checks that loom explored several interleavings.
    fn model(f: impl Fn() + Sync + Send + 'static) {
        let runs = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counted = std::sync::Arc::clone(&runs);
        loom::model(move || {
            counted.fetch_add(1, Ordering::Relaxed);
            f();
        });
        assert!(
            runs.load(Ordering::Relaxed) > 1,
            "loom explored one interleaving only"
        );
    }

    /// A reader takes the linked object (0, the old one, or 1) in each of `sections` sections
    /// in a row and uses it; the reclaimer unlinks the old one, fences, looks at the reader's
    /// slot and frees the old object only if the slot was outside a section or has left the
    /// one it was seen in. Every interleaving: a reader that took the old object never sees it
    /// freed.
    fn reader_against_reclaimer(sections: usize) {
        model(move || {
            let slot = Arc::new(LoomU64::new(0));
            let linked = Arc::new(LoomU64::new(0));
            let freed = Arc::new(LoomU64::new(0));
            let reader = {
                let (slot, linked, freed) = (slot.clone(), linked.clone(), freed.clone());
                thread::spawn(move || {
                    for _ in 0..sections {
                        let seq = open(&*slot, false).unwrap();
                        if linked.load(Ordering::Acquire) == 0 {
                            assert_eq!(freed.load(Ordering::Relaxed), 0, "used after its free");
                        }
                        close(&*slot, seq);
                    }
                })
            };
            linked.store(1, Ordering::Release);
            LoomU64::fence();
            if inside(&*slot).is_none_or(|seq| left(&*slot, seq)) {
                freed.store(1, Ordering::Relaxed);
            }
            reader.join().unwrap();
        });
    }

    #[test]
    fn a_reader_in_a_section_never_sees_its_object_freed() {
        reader_against_reclaimer(1);
    }

    /// A reclaimer that saw the first section open, and then another number (the second
    /// section's, perhaps), frees the old object; the second section, opened after the
    /// reclaimer's fence in every such interleaving, never takes it.
    #[test]
    fn a_reader_s_next_section_does_not_reuse_the_wait_of_its_last() {
        reader_against_reclaimer(2);
    }
}
