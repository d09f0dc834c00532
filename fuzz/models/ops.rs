// The model of the `ops` fuzz target, shared by the target (fuzz/fuzz_targets/ops.rs) and
// its regression test (tests/fuzz_regressions.rs): both `include!` this file, so there is
// one copy. Items only (no inner docs): it is pasted where it is included and uses that
// file's imports. `Arbitrary` is derived only when cargo-fuzz builds (`cfg(fuzzing)`).

/// A fixed "now": 2023-11-14T22:13:20Z.
const T0: u64 = 1_700_000_000_000;
const KEYS_PER_SET: usize = 8;
const SETS: usize = 4;

#[cfg_attr(fuzzing, derive(Arbitrary))]
#[derive(Debug, Clone, Copy)]
enum Op {
    /// Count a request of cost `1 + cost % 3` for key `key % 8` of set `set % 4`.
    Check { set: u8, key: u8, cost: u8 },
    /// Peek (what a request of cost 1 would get).
    Peek { set: u8, key: u8 },
    /// A check of cost 0: reports, counts nothing.
    Probe { set: u8, key: u8 },
    /// Move the clock forward by `step(ms, scale)`.
    Advance { ms: u8, scale: u8 },
    /// Move the clock backwards by `step(ms, scale)`.
    Back { ms: u8, scale: u8 },
    /// Close (or drop) the file store and open it again with `16 + sub_windows % 241`.
    Reopen { close: bool, sub_windows: u8 },
    /// `expire_now` on both stores at the current time.
    Expire,
    /// Read, bump or compare-and-bump resource `res % RESOURCES` (`ops_coordination.rs`).
    Version { res: u8, how: u8 },
    /// Take a permit of token `tok % TOKENS` (`ops_coordination.rs`).
    Acquire { tok: u8, lease: u8 },
    /// Give back a permit handed out before (`ops_coordination.rs`).
    Release { which: u8 },
}

include!("ops_coordination.rs");

#[cfg_attr(fuzzing, derive(Arbitrary))]
#[derive(Debug)]
struct Input {
    /// `sub_windows` of both stores: `16 + sub_windows % 241`.
    sub_windows: u8,
    ops: Vec<Op>,
}

/// The fixed limit sets: a bucketed window, two bucketed windows, an exact window, and a
/// bucketed window with an exact one. Every limit is at least 3, the largest cost.
fn limit_sets() -> [Limits; SETS] {
    let s = Duration::from_secs;
    [
        Limits::new(&[Limit::new(7, s(10))]),
        Limits::new(&[Limit::new(6, s(10)), Limit::new(20, s(60))]),
        Limits::new(&[Limit::new(5, s(3)).exact()]),
        Limits::new(&[Limit::new(4, s(5)), Limit::new(3, s(2)).exact()]),
    ]
    .map(|l| l.expect("valid limits"))
}

/// Key `k` of set `s`: distinct per set, 10 to 101 bytes long (entries of several sizes).
fn key(s: usize, k: usize) -> Vec<u8> {
    let mut key = format!("set{s}/key{k}/").into_bytes();
    key.resize(key.len() + 13 * k, b'x');
    key
}

/// A clock step: `ms` times 1, 10, 100 or 1000 (up to 255 s), so that steps of every size
/// against windows of 2 s to 60 s are as easy to reach.
fn step(ms: u8, scale: u8) -> u64 {
    u64::from(ms) * 10u64.pow(u32::from(scale % 4))
}

/// `(K, s)` of a sliding window (`docs/ACCURACY.md`): a check counts `K = B + 1` sub-windows
/// of `s = ceil(W / B)` ms (its own and the `B` before it), whatever the limit.
fn geometry(window_ms: u64, sub_windows: u32) -> (u64, u64) {
    (
        u64::from(sub_windows) + 1,
        window_ms.div_ceil(u64::from(sub_windows)),
    )
}

/// The sub-windows an `Input` or `Reopen` byte stands for: 16 to 256.
fn sub_windows_of(byte: u8) -> u32 {
    16 + u32::from(byte) % 241
}

/// Sum of the costs in `log` admitted in `(t - lookback, t]`.
fn used_in(log: &[(u64, u32)], t: u64, lookback: u64) -> u64 {
    log.iter()
        .filter(|&&(at, _)| at <= t && at + lookback > t)
        .map(|&(_, c)| u64::from(c))
        .sum()
}

/// One window of one key.
///
/// A clock that goes backwards is treated as standing still at the newest time the window's
/// state was written at (`src/clock.rs`): `eff(now) = max(now, upd)`. Admissions are logged at
/// their effective time. The state of a bucketed window is written when a request is admitted,
/// and also when a later window of the set refuses and the count is taken back (the word is
/// then re-encoded at its newest time, or zeroed if nothing is left in it, which forgets that
/// time: the log starts again). An exact window's state is written only on admissions.
///
/// With the `max-seen-time` feature `upd` is instead the newest time any check of the key was
/// made at, admitted or not (`wrote` still follows the store's writes).
#[derive(Debug, Clone)]
struct WindowModel {
    limit: u32,
    window_ms: u64,
    exact: bool,
    delay_ms: u64,
    /// Counters and sub-window length of a bucketed window.
    k: u64,
    s: u64,
    /// The floor of the effective time.
    upd: Option<u64>,
    /// When the store last wrote the window's state (`None`: never, or zeroed).
    wrote: Option<u64>,
    log: Vec<(u64, u32)>,
}

impl WindowModel {
    fn eff(&self, now: u64) -> u64 {
        self.upd.map_or(now, |u| u.max(now))
    }

    /// Exact sliding log: units admitted in the last `W` at `t`.
    fn used(&self, t: u64) -> u64 {
        used_in(&self.log, t, self.window_ms)
    }

    /// The log looking back `W + release_delay`: what a bucketed window may still count.
    fn used_late(&self, t: u64) -> u64 {
        used_in(&self.log, t, self.window_ms + self.delay_ms)
    }

    fn fits(&self, t: u64, cost: u32) -> bool {
        self.used(t) + u64::from(cost) <= u64::from(self.limit)
    }

    fn fits_late(&self, t: u64, cost: u32) -> bool {
        self.used_late(t) + u64::from(cost) <= u64::from(self.limit)
    }

    /// The store wrote the window's state at `now` (or at its own newer time).
    fn written(&mut self, now: u64) {
        self.wrote = Some(self.wrote.map_or(now, |t| t.max(now)));
    }

    /// Whether `expire_now(now)` finds the window elapsed.
    fn expired(&self, now: u64) -> bool {
        match self.wrote {
            None => true,
            Some(t) if self.exact => t + self.window_ms <= now,
            Some(t) => now / self.s >= t / self.s + self.k,
        }
    }

    /// Forget everything: the state was unlinked or zeroed.
    fn reset(&mut self) {
        self.upd = None;
        self.wrote = None;
        self.log.clear();
    }
}

struct Model {
    /// Per set, per key index: the windows of the key.
    keys: Vec<Vec<Vec<WindowModel>>>,
    /// Keys with an entry in the index: checked with a cost of at least 1, not expired since.
    live: Vec<Vec<bool>>,
    /// Keys that ever had an entry.
    created: Vec<Vec<bool>>,
}

impl Model {
    fn new(sets: &[Limits; SETS], store: &Store, sub_windows: u32) -> Model {
        let keys = sets
            .iter()
            .map(|limits| {
                let windows: Vec<WindowModel> = limits
                    .as_slice()
                    .iter()
                    .map(|l| {
                        let exact = l.mode() == Mode::Exact;
                        let delay_ms = store.release_delay(l).as_millis() as u64;
                        let (k, s) = geometry(l.window_ms(), sub_windows);
                        if !exact {
                            assert_eq!(delay_ms, k * s - l.window_ms(), "release delay of {l:?}");
                        }
                        WindowModel {
                            limit: l.limit(),
                            window_ms: l.window_ms(),
                            exact,
                            delay_ms,
                            k,
                            s,
                            upd: None,
                            wrote: None,
                            log: Vec::new(),
                        }
                    })
                    .collect();
                vec![windows; KEYS_PER_SET]
            })
            .collect();
        Model {
            keys,
            live: vec![vec![false; KEYS_PER_SET]; SETS],
            created: vec![vec![false; KEYS_PER_SET]; SETS],
        }
    }

    fn count(flags: &[Vec<bool>]) -> u64 {
        flags.iter().flatten().filter(|&&b| b).count() as u64
    }
}

/// Check the per-window state of a decision of cost `cost` at `now` against the model (before
/// an admission is logged: `admitted` adds `cost` to the expected count).
fn check_windows(ws: &[WindowModel], d: &Decision, cost: u32, now: u64, admitted: bool) {
    assert_eq!(d.windows().len(), ws.len());
    for (i, (w, got)) in ws.iter().zip(d.windows()).enumerate() {
        let t = w.eff(now);
        assert_eq!(got.limit(), w.limit);
        assert_eq!(got.window().as_millis() as u64, w.window_ms);
        let extra = if admitted { u64::from(cost) } else { 0 };
        let used = u64::from(got.used());
        if w.exact {
            assert_eq!(
                used,
                w.used(t) + extra,
                "exact window {i}: used at effective time {t}"
            );
            if !admitted {
                assert_eq!(got.fits(), w.fits(t, cost), "exact window {i}: fits at {t}");
            }
        } else {
            assert!(
                used >= w.used(t) + extra,
                "bucketed window {i} under-counts at {t}: {used} < {} + {extra}",
                w.used(t)
            );
            assert!(
                used <= w.used_late(t) + extra,
                "bucketed window {i} counts more than the last W + delay at {t}: {used} > {} + {extra}",
                w.used_late(t)
            );
        }
        assert_eq!(got.fits(), got.retry_after_ms() == 0);
    }
    if d.allowed() {
        assert!(d.windows().iter().all(|w| w.fits()));
        assert!(d.retry_after().is_none());
    } else {
        assert!(
            !d.windows().iter().all(|w| w.fits()),
            "rejected, yet every window fits"
        );
        assert!(d.retry_after().is_some_and(|s| s > 0));
    }
}

/// Check a rejection of `cost` at `now` against the model: a window must justify it, and each
/// refusing window's retry time must be enough (exact: exactly enough).
fn check_rejection(
    ws: &[WindowModel],
    d: &Decision,
    limits: &Limits,
    store: &Store,
    key: &[u8],
    cost: u32,
    now: u64,
) {
    assert!(
        ws.iter().any(|w| !w.fits_late(w.eff(now), cost)),
        "rejected cost {cost} at {now}, but no window's log looking back W + delay is full: {ws:?}"
    );
    if ws.iter().all(|w| w.exact) {
        assert!(
            ws.iter().any(|w| !w.fits(w.eff(now), cost)),
            "exact windows rejected cost {cost} at {now}, but the exact log admits: {ws:?}"
        );
    }
    for (i, (w, got)) in ws.iter().zip(d.windows()).enumerate() {
        if got.fits() {
            continue;
        }
        let retry = got.retry_after_ms();
        let later = store
            .peek_at(key, limits, now + retry)
            .expect("peek at the retry time");
        let room = later.windows()[i].remaining();
        assert!(
            room >= cost,
            "window {i}: only {room} left {retry} ms later, at the announced retry time"
        );
        if w.exact {
            assert!(
                w.fits(w.eff(now + retry), cost),
                "exact window {i}: retry too early"
            );
            let before = now + retry - 1;
            if before >= w.eff(now) {
                assert!(
                    !w.fits(before, cost),
                    "exact window {i}: retry {retry} ms is late"
                );
            }
        }
    }
}

struct Harness {
    sets: [Limits; SETS],
    mem: Store,
    file: Option<Store>,
    path: PathBuf,
    clock: ManualClock,
    sub_windows: u32,
    now: u64,
    model: Model,
    /// The model's effective time is the newest time any check was made at (the
    /// `max-seen-time` feature) rather than the newest time the window was written at.
    max_seen_time: bool,
    /// Versions and permits.
    coord: CoordModel,
}

impl Harness {
    /// The file store puts window entries in home slots (`Options::home_slots`, small
    /// segments, so they split); the in-memory store does not: placement must not change a
    /// decision.
    fn file_options(&self, sub_windows: u32) -> Options {
        Options::default()
            .sub_windows(sub_windows)
            .segment_size_log2(16)
            .compactor(false)
            .home_slots(true)
            .clock(self.clock.clone())
    }

    fn file(&self) -> &Store {
        self.file.as_ref().expect("the file store is open")
    }

    fn check(&mut self, s: usize, k: usize, cost: u32) -> Decision {
        let limits = &self.sets[s];
        let key = key(s, k);
        let now = self.now;
        self.clock.set_ms(now);
        let d = self
            .mem
            .check_at(&key, limits, cost, now)
            .expect("check (memory)");
        let f = self.file().check(&key, limits, cost).expect("check (file)");
        assert_eq!(d, f, "memory and file stores disagree");
        if cost > 0 {
            self.model.live[s][k] = true;
            self.model.created[s][k] = true;
        }
        let ws = &mut self.model.keys[s][k];
        if cost == 0 {
            assert!(d.allowed(), "a check of cost 0 is always allowed");
            check_windows(ws, &d, 0, now, false);
            return d;
        }
        if d.allowed() {
            for w in ws.iter() {
                assert!(
                    w.fits(w.eff(now), cost),
                    "admitted cost {cost} at {now}: over the limit of a window: {w:?}"
                );
            }
            check_windows(ws, &d, cost, now, true);
            for w in ws.iter_mut() {
                let t = w.eff(now);
                w.log.push((t, cost));
                w.upd = Some(t);
                w.written(now);
                // The log is in time order: the intervals the new entry is in end at it.
                assert!(
                    w.used(t) <= u64::from(w.limit),
                    "over-admission: {} in {} ms ending at {t}, limit {}",
                    w.used(t),
                    w.window_ms,
                    w.limit
                );
            }
        } else {
            check_windows(ws, &d, cost, now, false);
            check_rejection(ws, &d, limits, &self.mem, &key, cost, now);
            // Bucketed windows before the first refusing bucketed one (all of them if an exact
            // window refused) took the cost and gave it back: their words were re-encoded, or
            // zeroed if nothing was left in them.
            let first_refusing = ws
                .iter()
                .zip(d.windows())
                .position(|(w, got)| !w.exact && !got.fits())
                .unwrap_or(ws.len());
            for (w, got) in ws.iter_mut().zip(d.windows()).take(first_refusing) {
                if w.exact {
                    continue;
                }
                if got.used() == 0 {
                    // Nothing left: the window is expired (the compactor may unlink it), but
                    // it keeps its sub-window, the floor of its time.
                    let floor = w.eff(now);
                    w.reset();
                    if !self.max_seen_time {
                        w.upd = Some(floor);
                    }
                } else {
                    w.written(now);
                    if !self.max_seen_time {
                        w.upd = Some(w.eff(now));
                    }
                }
            }
            if self.max_seen_time {
                for w in ws.iter_mut() {
                    w.upd = Some(w.eff(now));
                }
            }
        }
        d
    }

    fn peek(&mut self, s: usize, k: usize) {
        let limits = &self.sets[s];
        let key = key(s, k);
        let now = self.now;
        self.clock.set_ms(now);
        let d = self.mem.peek_at(&key, limits, now).expect("peek (memory)");
        let f = self.file().peek(&key, limits).expect("peek (file)");
        assert_eq!(d, f, "memory and file stores disagree");
        let ws = &self.model.keys[s][k];
        check_windows(ws, &d, 1, now, false);
        if !d.allowed() {
            check_rejection(ws, &d, limits, &self.mem, &key, 1, now);
        }
    }

    fn reopen(&mut self, close: bool, sub_windows: u32) {
        let store = self.file.take().expect("the file store is open");
        if close {
            store.close().expect("close");
        } else {
            drop(store);
        }
        let opts = self.file_options(sub_windows);
        let store = Store::open(&self.path, opts).expect("reopen");
        let r = store.open_report();
        let live = Model::count(&self.model.live) + self.coord.entries();
        let created = Model::count(&self.model.created);
        assert_eq!(
            (r.corrupt_entries, r.corrupt_segments, r.blank_segments),
            (0, 0, 0),
            "open report after a reopen: {r:?}"
        );
        // Expired entries are not brought back.
        assert_eq!(
            (r.entries, r.duplicates),
            (live, 0),
            "open report after a reopen: {r:?} ({created} keys ever created)"
        );
        assert_eq!(store.stats().entries, r.entries);
        // The file keeps the precision it was created with.
        for limits in &self.sets {
            for l in limits.as_slice() {
                assert_eq!(store.release_delay(l), self.mem.release_delay(l));
            }
        }
        self.file = Some(store);
        self.check_coordination();
    }

    fn expire(&mut self) {
        let now = self.now;
        self.clock.set_ms(now);
        let mut expect = 0;
        for (s, keys) in self.model.keys.iter_mut().enumerate() {
            for (k, ws) in keys.iter_mut().enumerate() {
                if self.model.live[s][k] && ws.iter().all(|w| w.expired(now)) {
                    expect += 1;
                    self.model.live[s][k] = false;
                    ws.iter_mut().for_each(WindowModel::reset);
                }
            }
        }
        expect += self.coord.expire(now);
        let m = self.mem.expire_now(now);
        let f = self.file().expire_now(now);
        assert_eq!(
            m.expired, expect,
            "expire_now({now}) on the memory store: {m:?}"
        );
        assert_eq!(
            f.expired, expect,
            "expire_now({now}) on the file store: {f:?}"
        );
        let entries = Model::count(&self.model.live) + self.coord.entries();
        assert_eq!(self.mem.stats().entries, entries);
        assert_eq!(self.file().stats().entries, entries);
    }

    fn apply(&mut self, op: Op) {
        let idx = |set: u8, key: u8| (set as usize % SETS, key as usize % KEYS_PER_SET);
        match op {
            Op::Check { set, key, cost } => {
                let (s, k) = idx(set, key);
                self.check(s, k, 1 + u32::from(cost) % 3);
            }
            Op::Peek { set, key } => {
                let (s, k) = idx(set, key);
                self.peek(s, k);
            }
            Op::Probe { set, key } => {
                let (s, k) = idx(set, key);
                self.check(s, k, 0);
            }
            Op::Advance { ms, scale } => self.now += step(ms, scale),
            Op::Back { ms, scale } => {
                self.now = self.now.saturating_sub(step(ms, scale));
            }
            Op::Reopen { close, sub_windows } => {
                self.reopen(close, sub_windows_of(sub_windows));
            }
            Op::Expire => self.expire(),
            Op::Version { res, how } => self.version_op(res, how),
            Op::Acquire { tok, lease } => self.acquire_op(tok, lease),
            Op::Release { which } => self.release_op(which),
        }
    }
}

impl Harness {
    /// Both stores, empty, with `sub_windows`; the file store in `dir`.
    fn new(dir: &Path, sub_windows: u32, max_seen_time: bool) -> Harness {
        let mem_opts = Options::default()
            .sub_windows(sub_windows)
            .segment_size_log2(16)
            .compactor(false);
        let mem = Store::open_in_memory(mem_opts).expect("in-memory store");
        let sets = limit_sets();
        let model = Model::new(&sets, &mem, sub_windows);
        let mut h = Harness {
            sets,
            mem,
            file: None,
            path: dir.join("ops.tg"),
            clock: ManualClock::new(T0),
            sub_windows,
            now: T0,
            model,
            max_seen_time,
            coord: CoordModel::default(),
        };
        let file = Store::open(&h.path, h.file_options(sub_windows)).expect("file store");
        h.file = Some(file);
        h
    }
}

/// tmpfs when there is one: the store syncs when it creates a file.
fn temp_dir() -> tempfile::TempDir {
    if Path::new("/dev/shm").is_dir() {
        tempfile::tempdir_in("/dev/shm")
    } else {
        tempfile::tempdir()
    }
    .expect("temp dir")
}

fn run(input: &Input, max_seen_time: bool) {
    let dir = temp_dir();
    let sub_windows = sub_windows_of(input.sub_windows);
    let mut h = Harness::new(dir.path(), sub_windows, max_seen_time);
    for &op in &input.ops {
        h.apply(op);
    }
    // Everything survives a last reopen.
    h.reopen(false, h.sub_windows);
}
