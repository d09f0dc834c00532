//! Versions and concurrency permits, on every backend: part of `tests/conformance.rs` (the
//! scenarios run through [`run`], so the embedded and the shared store must agree on every
//! recorded answer, and a hybrid node forwards both to the server).
//!
//! Epochs are random per entry and per backend, so transcripts record version numbers and
//! whether epochs agree, never the epochs themselves.

use tollgate::{Backend, Version, VersionBump};

use proptest::prelude::*;
use tollgate::fleet::{RedisOptions, RedisStore};

use super::{rec, run, server, T0};

/// The six coordination methods of `Backend`, forwarded to the field `$f` (for the wrappers
/// of `tests/conformance.rs`).
#[macro_export]
macro_rules! forward_coordination {
    ($f:tt) => {
        fn version(&self, k: &[u8]) -> tollgate::Result<tollgate::Version> {
            tollgate::Backend::version(&self.$f, k)
        }
        fn bump_version(&self, k: &[u8]) -> tollgate::Result<tollgate::Version> {
            tollgate::Backend::bump_version(&self.$f, k)
        }
        fn bump_version_if(
            &self,
            k: &[u8],
            v: &tollgate::Version,
        ) -> tollgate::Result<tollgate::VersionBump> {
            tollgate::Backend::bump_version_if(&self.$f, k, v)
        }
        fn acquire_permit_at(
            &self,
            k: &[u8],
            cap: u32,
            lease_ms: u64,
            now: u64,
        ) -> tollgate::Result<Option<tollgate::Permit>> {
            tollgate::Backend::acquire_permit_at(&self.$f, k, cap, lease_ms, now)
        }
        fn release_permit(&self, p: &tollgate::Permit) -> tollgate::Result<bool> {
            tollgate::Backend::release_permit(&self.$f, p)
        }
        fn permits_held_at(&self, k: &[u8], now: u64) -> tollgate::Result<u32> {
            tollgate::Backend::permits_held_at(&self.$f, k, now)
        }
    };
}

/// What a compare-and-bump did, without the epoch.
fn outcome(b: VersionBump) -> (&'static str, u64) {
    match b {
        VersionBump::Bumped(v) => ("bumped", v.number),
        VersionBump::Stale(v) => ("stale", v.number),
    }
}

#[test]
fn versions_read_bump_and_compare_and_bump() {
    run(
        "versions",
        |b, t, _| {
            let k: &[u8] = b"/api/leads/7";
            let v0 = b.version(k).unwrap();
            assert_eq!(v0.number, 0);
            assert_ne!(v0.epoch, 0);
            assert_eq!(b.version(k).unwrap(), v0, "a read changes nothing");
            let v1 = b.bump_version(k).unwrap();
            assert_eq!((v1.epoch, v1.number), (v0.epoch, 1));
            rec(t, v1.number);
            // The old version is stale; the current one bumps, once.
            let stale = b.bump_version_if(k, &v0).unwrap();
            assert_eq!(stale, VersionBump::Stale(v1));
            rec(t, outcome(stale));
            let bumped = b.bump_version_if(k, &v1).unwrap();
            let VersionBump::Bumped(v2) = bumped else {
                panic!("the current version bumps: {bumped:?}")
            };
            assert_eq!((v2.epoch, v2.number), (v0.epoch, 2));
            rec(t, outcome(bumped));
            let again = b.bump_version_if(k, &v1).unwrap();
            assert_eq!(again, VersionBump::Stale(v2));
            rec(t, outcome(again));
            // The right number under another epoch (a forgotten and recreated version) never
            // matches.
            let other = Version {
                epoch: v2.epoch ^ 0x10,
                number: 2,
            };
            let foreign = b.bump_version_if(k, &other).unwrap();
            assert_eq!(foreign, VersionBump::Stale(v2));
            rec(t, outcome(foreign));
            // Another key has its own version, and (almost surely) its own epoch.
            let w = b.version(b"/api/leads/8").unwrap();
            assert_eq!(w.number, 0);
            assert_ne!(w.epoch, v0.epoch);
            rec(t, w.number);
            // Bad keys are refused before anything is stored.
            assert!(b.version(b"").is_err());
            assert!(b.bump_version(&[b'k'; 129]).is_err());
            rec(t, b.version(k).unwrap().number);
        },
        true,
    );
}

#[test]
fn permits_hold_the_cap_until_released_or_their_deadline() {
    run(
        "permits",
        |b, t, _| {
            let k: &[u8] = b"tok_conc";
            let a = b.acquire_permit_at(k, 2, 1_000, T0).unwrap().expect("1st");
            let c = b.acquire_permit_at(k, 2, 1_000, T0).unwrap().expect("2nd");
            assert_eq!((a.held(), c.held(), a.deadline_ms()), (1, 2, T0 + 1_000));
            rec(t, (a.held(), c.held(), a.deadline_ms()));
            assert!(b.acquire_permit_at(k, 2, 1_000, T0).unwrap().is_none());
            assert_eq!(b.permits_held_at(k, T0).unwrap(), 2);
            // Another key has its own permits; a cap of 0 admits nothing.
            assert!(b
                .acquire_permit_at(b"other", 2, 1_000, T0)
                .unwrap()
                .is_some());
            assert!(b
                .acquire_permit_at(b"other", 0, 1_000, T0)
                .unwrap()
                .is_none());
            // A release frees the slot, once.
            assert!(b.release_permit(&a).unwrap());
            assert!(!b.release_permit(&a).unwrap());
            assert_eq!(b.permits_held_at(k, T0 + 1).unwrap(), 1);
            let d = b
                .acquire_permit_at(k, 2, 5_000, T0 + 1)
                .unwrap()
                .expect("freed");
            rec(t, d.held());
            // Nobody releases `c`: at its deadline (not a millisecond before) its slot is free.
            assert!(b
                .acquire_permit_at(k, 2, 1_000, T0 + 999)
                .unwrap()
                .is_none());
            assert_eq!(b.permits_held_at(k, T0 + 999).unwrap(), 2);
            assert_eq!(b.permits_held_at(k, T0 + 1_000).unwrap(), 1);
            let e = b
                .acquire_permit_at(k, 2, 1_000, T0 + 1_000)
                .unwrap()
                .expect("expired");
            assert_eq!(e.held(), 2);
            rec(t, e.held());
            // `c`'s slot is another permit's now: releasing `c` frees nothing.
            assert!(!b.release_permit(&c).unwrap());
            assert!(b
                .acquire_permit_at(k, 2, 1_000, T0 + 1_000)
                .unwrap()
                .is_none());
            // A larger cap admits more at once; a lower one refuses while others hold.
            let t1 = T0 + 1_000;
            let f = b
                .acquire_permit_at(k, 3, 1_000, t1)
                .unwrap()
                .expect("cap 3");
            assert!(b.acquire_permit_at(k, 1, 1_000, t1).unwrap().is_none());
            rec(t, b.permits_held_at(k, t1).unwrap());
            // Lowered to 2 with the first place free again: the permit taken under cap 3
            // still counts, so cap 2 is reached (and cap 3 is not).
            assert!(b.release_permit(&d).unwrap());
            assert!(b.acquire_permit_at(k, 2, 1_000, t1).unwrap().is_none());
            assert_eq!(b.permits_held_at(k, t1).unwrap(), 2);
            let d = b
                .acquire_permit_at(k, 3, 1_000, t1)
                .unwrap()
                .expect("cap 3");
            rec(t, d.held());
            assert!(b.release_permit(&f).unwrap());
            assert!(b.release_permit(&d).unwrap());
            assert!(b.release_permit(&e).unwrap());
            assert!(b.acquire_permit_at(k, 1, 0, T0).is_err(), "a lease of 0");
            assert!(b.acquire_permit_at(b"", 1, 1_000, T0).is_err());
        },
        true,
    );
}

/// Two handles on one server (two gateway nodes): a version bumped through one is stale
/// through the other, and one cap holds for both.
#[test]
fn two_nodes_share_versions_and_permits() {
    let Some(url) = server::url("two_nodes_share") else {
        return;
    };
    let prefix = server::prefix("two_nodes_share");
    let open = || RedisStore::open(&url, RedisOptions::default().prefix(&prefix)).unwrap();
    let (a, b2) = (open(), open());
    let k: &[u8] = b"/api/r/1";
    let seen = Backend::version(&b2, k).unwrap();
    let VersionBump::Bumped(new) = Backend::bump_version_if(&a, k, &seen).unwrap() else {
        panic!("the first writer wins");
    };
    assert_eq!(
        Backend::bump_version_if(&b2, k, &seen).unwrap(),
        VersionBump::Stale(new)
    );
    let p = Backend::acquire_permit_at(&a, b"tok", 1, 1_000, T0).unwrap();
    assert!(p.is_some());
    assert!(Backend::acquire_permit_at(&b2, b"tok", 1, 1_000, T0)
        .unwrap()
        .is_none());
    assert!(Backend::release_permit(&b2, &p.unwrap()).unwrap());
    assert!(Backend::acquire_permit_at(&b2, b"tok", 1, 1_000, T0)
        .unwrap()
        .is_some());
}

/// Two hybrid nodes (each with its own embedded store) on one server: versions and permits
/// are forwarded to it, so the nodes agree on both at once, without a sync.
#[test]
fn two_hybrid_nodes_share_versions_and_permits() {
    use tollgate::fleet::{HybridOptions, HybridStore};
    let Some(url) = server::url("two_hybrid_nodes_share") else {
        return;
    };
    let prefix = server::prefix("two_hybrid_nodes_share");
    let node = || {
        let local =
            tollgate::Store::open_in_memory(tollgate::Options::default().compactor(false)).unwrap();
        let shared = RedisStore::open(&url, RedisOptions::default().prefix(&prefix)).unwrap();
        HybridStore::new(local, shared, HybridOptions::default().background(false)).unwrap()
    };
    let (a, b) = (node(), node());
    let k: &[u8] = b"/api/r/9";
    let seen = Backend::version(&a, k).unwrap();
    assert_eq!(
        Backend::version(&b, k).unwrap(),
        seen,
        "one version, one epoch"
    );
    let VersionBump::Bumped(new) = Backend::bump_version_if(&b, k, &seen).unwrap() else {
        panic!("the first writer wins");
    };
    assert_eq!(
        Backend::bump_version_if(&a, k, &seen).unwrap(),
        VersionBump::Stale(new)
    );
    let p = Backend::acquire_permit_at(&a, b"tok", 2, 1_000, T0)
        .unwrap()
        .unwrap();
    assert!(Backend::acquire_permit_at(&b, b"tok", 2, 1_000, T0)
        .unwrap()
        .is_some());
    assert!(Backend::acquire_permit_at(&a, b"tok", 2, 1_000, T0)
        .unwrap()
        .is_none());
    assert_eq!(Backend::permits_held_at(&b, b"tok", T0).unwrap(), 2);
    assert!(Backend::release_permit(&b, &p).unwrap());
    assert!(Backend::acquire_permit_at(&b, b"tok", 2, 1_000, T0)
        .unwrap()
        .is_some());
    // Nothing of it is in the nodes' own stores.
    assert_eq!(a.local().stats().entries + b.local().stats().entries, 0);
}

/// An operation of [`coordination_answers_agree`].
#[derive(Debug, Clone)]
enum Coord {
    /// `how`: 0 read, 1 bump, 2 compare-and-bump with the last version this sequence saw of
    /// the resource (stale if another bump came since), 3 with a version never issued.
    Version {
        res: u8,
        how: u8,
    },
    Acquire {
        tok: u8,
        cap: u32,
        lease: u64,
    },
    Release {
        which: usize,
    },
    Held {
        tok: u8,
    },
    Forward(u64),
}

fn coord() -> impl Strategy<Value = Coord> {
    prop_oneof![
        3 => (0u8..3, 0u8..4).prop_map(|(res, how)| Coord::Version { res, how }),
        4 => (0u8..2, 1u32..5, 1u64..3_000)
            .prop_map(|(tok, cap, lease)| Coord::Acquire { tok, cap, lease }),
        2 => (0usize..16).prop_map(|which| Coord::Release { which }),
        1 => (0u8..2).prop_map(|tok| Coord::Held { tok }),
        2 => (0u64..2_500).prop_map(Coord::Forward),
    ]
}

/// The answers of `ops` on `b`, without epochs. A release is recorded only while its permit's
/// deadline is ahead: past it, either answer is allowed (`Backend::release_permit`).
fn replay_coord(b: &dyn Backend, ops: &[Coord]) -> Vec<String> {
    let mut now = T0;
    let mut seen: [Option<Version>; 3] = [None; 3];
    let mut permits: Vec<tollgate::Permit> = Vec::new();
    let mut out = Vec::new();
    for op in ops {
        let line = match *op {
            Coord::Version { res, how } => {
                let key = format!("/api/r/{res}").into_bytes();
                let slot = &mut seen[res as usize];
                let r = match (how, *slot) {
                    (1, _) => b.bump_version(&key).map(|v| ("bumped", v)),
                    (_, None) | (0, _) => b.version(&key).map(|v| ("read", v)),
                    (2, Some(v)) => b.bump_version_if(&key, &v).map(|x| match x {
                        VersionBump::Bumped(v) => ("bumped", v),
                        VersionBump::Stale(v) => ("stale", v),
                    }),
                    (_, Some(v)) => {
                        let never = Version {
                            epoch: v.epoch,
                            number: v.number + 1_000,
                        };
                        b.bump_version_if(&key, &never).map(|x| match x {
                            VersionBump::Bumped(v) => ("bumped", v),
                            VersionBump::Stale(v) => ("stale", v),
                        })
                    }
                };
                let (what, v) = r.unwrap();
                *slot = Some(v);
                format!("version {res} {what} {}", v.number)
            }
            Coord::Acquire { tok, cap, lease } => {
                let got = b.acquire_permit_at(&[b't', tok], cap, lease, now).unwrap();
                let line = format!(
                    "acquire {tok} {:?}",
                    got.as_ref().map(|p| (p.held(), p.deadline_ms()))
                );
                permits.extend(got);
                line
            }
            Coord::Release { which } => {
                if permits.is_empty() {
                    continue;
                }
                let p = permits.remove(which % permits.len());
                let released = b.release_permit(&p).unwrap();
                if p.deadline_ms() <= now {
                    continue;
                }
                format!("release {released}")
            }
            Coord::Held { tok } => {
                format!(
                    "held {tok} {}",
                    b.permits_held_at(&[b't', tok], now).unwrap()
                )
            }
            Coord::Forward(ms) => {
                now += ms;
                continue;
            }
        };
        out.push(line);
    }
    out
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    /// Random sequences of version and permit operations (caps changing from call to call,
    /// time moving forward) get the same answers from the embedded store and from Redis.
    #[test]
    fn coordination_answers_agree(ops in prop::collection::vec(coord(), 1..80)) {
        let Some(url) = server::url("coordination_answers_agree") else { return Ok(()) };
        let embedded = tollgate::Store::open_in_memory(
            tollgate::Options::default().compactor(false),
        )
        .unwrap();
        let prefix = server::prefix("coord-prop");
        let shared = RedisStore::open(&url, RedisOptions::default().prefix(&prefix)).unwrap();
        let local = replay_coord(&embedded, &ops);
        let remote = replay_coord(&shared, &ops);
        prop_assert_eq!(local, remote);
    }
}
