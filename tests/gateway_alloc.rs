//! Matching a request to its group, building its store key, picking its windows and checking
//! an existing key allocate nothing: counted with a global allocator that counts the
//! allocations of the current thread.
#![cfg(feature = "gateway")]

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use tollgate::gateway::Policy;
use tollgate::{Options, Store};

struct Counting;

thread_local! {
    static ALLOCS: Cell<u64> = const { Cell::new(0) };
}

// SAFETY: every call is forwarded unchanged to the system allocator; the counter is a
// const-initialized thread-local `Cell`, which itself never allocates.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let _ = ALLOCS.try_with(|c| c.set(c.get() + 1));
        // SAFETY: the caller upholds `GlobalAlloc::alloc`'s contract, passed on as is.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` was allocated by `System` with `layout` (see `alloc`).
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let _ = ALLOCS.try_with(|c| c.set(c.get() + 1));
        // SAFETY: as for `dealloc`, and the caller upholds `realloc`'s contract.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn allocations<T>(f: impl FnOnce() -> T) -> (T, u64) {
    let before = ALLOCS.with(Cell::get);
    let out = f();
    (out, ALLOCS.with(Cell::get) - before)
}

#[test]
fn matching_keying_and_checking_allocate_nothing() {
    // The counter counts.
    let (v, n) = allocations(|| vec![1u8; 3]);
    assert_eq!((v.len(), n), (3, 1));
    let src = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/examples/policies/zorio.toml"
    ))
    .expect("policy file");
    let policy = Policy::from_toml_str(&src).expect("policy");
    let store = Store::open_in_memory(Options::default()).expect("store");
    let requests = [
        ("POST", "/api/pbx/calls/click-to-call"),
        ("GET", "/api/pbx/calls/42/recording"),
        ("GET", "/api/telesales/leads/7"),
        ("POST", "/api/auth/login"),
        ("POST", "/api/auth/refresh"),
        ("GET", "/health"),
        ("GET", "/"),
    ];
    let tokens = ["tok_abc", "zorio_enterprise_demo"];
    // Create the keys first: a new key allocates its entry.
    for (m, p) in requests {
        if let Some(g) = policy.match_route(m, p) {
            for t in tokens {
                let k = g.key(t).expect("key");
                store
                    .check(k.as_bytes(), g.limits_for(t), g.cost())
                    .expect("check");
            }
        }
    }
    let (matched, n) = allocations(|| {
        let mut matched = 0;
        for _ in 0..100 {
            for (m, p) in requests {
                if let Some(g) = policy.match_route(m, p) {
                    for t in tokens {
                        let k = g.key(t).expect("key");
                        let d = store
                            .check(k.as_bytes(), g.limits_for(t), g.cost())
                            .expect("check");
                        matched += usize::from(d.limit() > 0);
                    }
                }
            }
        }
        matched
    });
    assert_eq!(matched, 100 * 5 * tokens.len());
    assert_eq!(n, 0, "{n} allocations on the request path");
}
