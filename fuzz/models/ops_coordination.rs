// Versions and concurrency permits in the `ops` model (included by `ops.rs`): both stores get
// the same reads, bumps, compare-and-bumps, acquires and releases, and must answer as the
// model does. Items only, as in `ops.rs`.

/// Resources with a version, tokens with permits, and the cap of the permits.
const RESOURCES: usize = 3;
const TOKENS: usize = 2;
const PERMIT_CAP: usize = 2;

/// One slot of a permit entry: which handed-out permit holds it (if any), and its deadline.
#[derive(Debug, Clone, Copy, Default)]
struct SlotModel {
    owner: Option<usize>,
    deadline: u64,
}

/// Versions and permits as both stores must see them.
#[derive(Debug, Default)]
struct CoordModel {
    /// Per resource, once its entry exists: its number and each store's epoch (memory, file).
    versions: [Option<(u64, u64, u64)>; RESOURCES],
    /// Per token, while its permit entry exists: its first `PERMIT_CAP` slots.
    slots: [Option<[SlotModel; PERMIT_CAP]>; TOKENS],
    /// Permits handed out: token, slot, the memory store's permit, the file store's.
    handed: Vec<(usize, usize, tollgate::Permit, tollgate::Permit)>,
}

impl CoordModel {
    /// Entries the stores hold for versions and permits.
    fn entries(&self) -> u64 {
        (self.versions.iter().flatten().count() + self.slots.iter().flatten().count()) as u64
    }

    /// Unlink the permit entries with no permit held at `now`; how many.
    fn expire(&mut self, now: u64) -> u64 {
        let mut n = 0;
        for s in self.slots.iter_mut() {
            if s.is_some_and(|slots| slots.iter().all(|x| x.deadline <= now)) {
                *s = None;
                n += 1;
            }
        }
        n
    }
}

fn resource(r: usize) -> Vec<u8> {
    format!("/api/r/{r}").into_bytes()
}

fn token(t: usize) -> Vec<u8> {
    format!("tok{t}").into_bytes()
}

impl Harness {
    /// `how % 4`: read, bump, compare-and-bump with the current version, with a stale one.
    fn version_op(&mut self, res: u8, how: u8) {
        let r = res as usize % RESOURCES;
        let key = resource(r);
        self.clock.set_ms(self.now);
        let how = how % 4;
        if how != 1 && self.coord.versions[r].is_none() || how == 0 {
            let (m, f) = (
                self.mem.version(&key).expect("version (memory)"),
                self.file().version(&key).expect("version (file)"),
            );
            match self.coord.versions[r] {
                None => {
                    assert_eq!((m.number, f.number), (0, 0), "a new version");
                    assert!(m.epoch != 0 && f.epoch != 0);
                    self.coord.versions[r] = Some((0, m.epoch, f.epoch));
                }
                Some((n, me, fe)) => {
                    assert_eq!((m.epoch, m.number), (me, n), "read (memory)");
                    assert_eq!((f.epoch, f.number), (fe, n), "read (file)");
                }
            }
            if how == 0 {
                return;
            }
        }
        let mem = &self.mem;
        let file = self.file.as_ref().expect("the file store is open");
        match (how, self.coord.versions[r]) {
            (1, None) => {
                let (m, f) = (mem.bump_version(&key), file.bump_version(&key));
                let (m, f) = (m.expect("bump"), f.expect("bump"));
                assert_eq!((m.number, f.number), (1, 1));
                self.coord.versions[r] = Some((1, m.epoch, f.epoch));
            }
            (1, Some((n, me, fe))) => {
                let (m, f) = (mem.bump_version(&key), file.bump_version(&key));
                let (m, f) = (m.expect("bump"), f.expect("bump"));
                assert_eq!((m.epoch, m.number, f.epoch, f.number), (me, n + 1, fe, n + 1));
                self.coord.versions[r] = Some((n + 1, me, fe));
            }
            (2, Some((n, me, fe))) => {
                let at = |epoch| tollgate::Version { epoch, number: n };
                let m = mem.bump_version_if(&key, &at(me)).expect("bump if");
                let f = file.bump_version_if(&key, &at(fe)).expect("bump if");
                let next = |epoch| tollgate::Version { epoch, number: n + 1 };
                assert_eq!(m, tollgate::VersionBump::Bumped(next(me)));
                assert_eq!(f, tollgate::VersionBump::Bumped(next(fe)));
                self.coord.versions[r] = Some((n + 1, me, fe));
            }
            (_, Some((n, me, fe))) => {
                // Stale: the number before, or another epoch when there is none before.
                let stale = |epoch: u64| match n.checked_sub(1) {
                    Some(p) => tollgate::Version { epoch, number: p },
                    None => tollgate::Version {
                        epoch: epoch ^ 1,
                        number: n,
                    },
                };
                let m = mem.bump_version_if(&key, &stale(me)).expect("bump if");
                let f = file.bump_version_if(&key, &stale(fe)).expect("bump if");
                let now = |epoch| tollgate::Version { epoch, number: n };
                assert_eq!(m, tollgate::VersionBump::Stale(now(me)));
                assert_eq!(f, tollgate::VersionBump::Stale(now(fe)));
            }
            (_, None) => unreachable!("read first"),
        }
    }

    /// Take one of `PERMIT_CAP` permits of token `tok` for `100 × (1 + lease % 50)` ms.
    fn acquire_op(&mut self, tok: u8, lease: u8) {
        let t = tok as usize % TOKENS;
        let key = token(t);
        let now = self.now;
        self.clock.set_ms(now);
        let lease_ms = 100 * (1 + u64::from(lease % 50));
        let cap = PERMIT_CAP as u32;
        let m = self.mem.acquire_permit_at(&key, cap, lease_ms, now);
        let f = self.file().acquire_permit_at(&key, cap, lease_ms, now);
        let (m, f) = (m.expect("acquire (memory)"), f.expect("acquire (file)"));
        let slots = self.coord.slots[t].get_or_insert_with(Default::default);
        let free = slots.iter().position(|s| s.deadline <= now);
        match (free, m, f) {
            (Some(i), Some(m), Some(f)) => {
                slots[i] = SlotModel {
                    owner: Some(self.coord.handed.len()),
                    deadline: now + lease_ms,
                };
                let held = slots.iter().filter(|s| s.deadline > now).count() as u32;
                assert_eq!((m.deadline_ms(), m.held()), (now + lease_ms, held));
                assert_eq!((f.deadline_ms(), f.held()), (now + lease_ms, held));
                self.coord.handed.push((t, i, m, f));
            }
            (None, None, None) => {}
            (free, m, f) => panic!("acquire at {now}: model slot {free:?}, stores {m:?} {f:?}"),
        }
    }

    /// Give back handed-out permit `which % handed` on both stores.
    fn release_op(&mut self, which: u8) {
        if self.coord.handed.is_empty() {
            return;
        }
        let j = which as usize % self.coord.handed.len();
        let (t, i, m, f) = self.coord.handed[j].clone();
        let slot = self.coord.slots[t].as_mut().map(|s| &mut s[i]);
        let expect = slot.as_ref().is_some_and(|s| s.owner == Some(j));
        if let (true, Some(s)) = (expect, slot) {
            *s = SlotModel::default();
        }
        assert_eq!(self.mem.release_permit(&m).expect("release"), expect, "memory");
        assert_eq!(self.file().release_permit(&f).expect("release"), expect, "file");
    }

    /// After a reopen: every version as it was (same epoch), every permit still held.
    fn check_coordination(&self) {
        for (r, v) in self.coord.versions.iter().enumerate() {
            if let Some((n, _, fe)) = v {
                let got = self.file().version(&resource(r)).expect("version");
                assert_eq!((got.epoch, got.number), (*fe, *n), "version {r} after a reopen");
            }
        }
        for (t, s) in self.coord.slots.iter().enumerate() {
            if let Some(slots) = s {
                let held = slots.iter().filter(|s| s.deadline > self.now).count() as u32;
                let got = self.file().permits_held_at(&token(t), self.now);
                // Slots past the cap are never taken: the count over all 64 is the model's.
                assert_eq!(got.expect("count"), held, "permits of token {t} after a reopen");
            }
        }
    }
}
