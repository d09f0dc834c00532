//! Crash test: this test binary re-runs itself as a child that applies a random workload to a
//! store file and reports every operation before and after it to the parent over a pipe. The
//! parent kills the child with SIGKILL at a random moment, reopens the store and checks:
//!
//! * it opens, with no corrupt entry (a process crash loses nothing the page cache holds);
//! * every counter holds every acknowledged admitted request, and at most one more (the
//!   request in flight when the child died);
//! * every acknowledged completed idempotency record replays byte for byte; a record whose
//!   completion was in flight replays byte for byte or is still in flight, never half-written;
//!   an acknowledged abort left the key free; an acknowledged begin left it in flight.
//!
//! The workload also expires and compacts (windows that age out, records past a short TTL), so
//! kills land inside those too. The same file is reused across kills, so each run recovers on
//! top of the previous recovery. `TOLLGATE_CRASH_KILLS` sets the number of kills (default 50);
//! `tests/crash.sh N` runs N of them in release mode.
//!
//! Every other run of the workload puts window entries in home slots (`Options::home_slots`),
//! so kills land in claims of home slots, splits of home segments and moves home as well.
//!
//! Two more crashes per round (issue 20):
//!
//! * **crash during recovery** (`TOLLGATE_CRASH_DOUBLE`, default 1 per kill): after the kill,
//!   a second child opens the crashed store again and again (each open is a recovery: it clears
//!   entries, zeroes blank segments, cuts the file, records the segment count) and is killed
//!   a random 0 to 8 ms after it reaches its first open, often inside it. The checks run on
//!   the file it left.
//! * **crash during growth** (every third kill): the workload child is given a number `k`,
//!   and kills itself with SIGKILL at its `k`-th growth step, seen through the store's test
//!   hook (before or after the fallocate, the fdatasync of the new length, the write of the
//!   segment count and its fdatasync).

#![cfg(unix)]

mod common;

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::T0;
use tollgate::{
    Begin, Fingerprint, IdempotencyKey, Limit, Limits, ManualClock, Options, Store, StoredResponse,
};

const STABLE_KEYS: u64 = 48;
const TTL_S: u64 = 600;

fn options() -> Options {
    Options::default()
        .segment_size_log2(16)
        .max_response_bytes(40_000)
        .idempotency_ttl(Duration::from_secs(TTL_S))
        .lease_timeout(Duration::from_secs(60))
        .compactor_interval(Duration::from_millis(3))
        // The compactor grows the spare segment too, so kills land in its growth as well as
        // in a check's.
        .grow_ahead(true)
}

fn stable() -> Limits {
    // The longest window: its counts outlive any run of the test (a day-long window let counts
    // from the first day age out after many kills, which the test does not model).
    Limits::new(&[Limit::new(65_000, tollgate::MAX_WINDOW)]).unwrap()
}

fn churn() -> Limits {
    Limits::new(&[Limit::per_minute(5), Limit::per_hour(50)]).unwrap()
}

fn record_key(j: u64) -> IdempotencyKey {
    let x = (u128::from(j) + 7).wrapping_mul(0x9E37_79B9_7F4A_7C15_F39C_C060_5CED_C835);
    IdempotencyKey::from_uuid(uuid::Builder::from_random_bytes(x.to_le_bytes()).into_uuid())
        .unwrap()
}

fn fingerprint(j: u64) -> Fingerprint {
    Fingerprint::of("POST", "/api/sms", &j.to_le_bytes())
}

fn body(j: u64) -> Vec<u8> {
    let len = (j.wrapping_mul(2_654_435_761) % 20_000) as usize;
    (0..len)
        .map(|i| (i as u64 ^ j).wrapping_mul(31) as u8)
        .collect()
}

fn response(j: u64) -> StoredResponse {
    StoredResponse::new(200 + (j % 50) as u16, body(j)).with_header("x-record", j.to_string())
}

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

/// The child: a random workload, reporting `op` before and `OP` after each operation.
fn child(path: &str) {
    let seed: u64 = std::env::var("TOLLGATE_CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1);
    let mut now: u64 = std::env::var("TOLLGATE_CRASH_NOW")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(T0);
    let mut j: u64 = std::env::var("TOLLGATE_CRASH_J")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    // The background compactor reads the store's clock: keep it on the workload's time.
    let clock = ManualClock::new(now);
    // Home slots in every other run (`TOLLGATE_CRASH_HOME`): claims, splits and moves home
    // get killed too, and the parent, which reopens without them, reads what they left.
    let home = std::env::var_os("TOLLGATE_CRASH_HOME").is_some_and(|v| v == "1");
    let mut opts = options().clock(clock.clone()).home_slots(home);
    if let Some(k) = std::env::var("TOLLGATE_CRASH_GROWTH_STEP")
        .ok()
        .and_then(|s| s.parse().ok())
    {
        opts = opts.io_hook(std::sync::Arc::new(DieAtStep {
            step: k,
            seen: std::sync::atomic::AtomicU64::new(0),
        }));
    }
    let store = Store::open(path, opts).expect("child open");
    let (stable, churn) = (stable(), churn());
    let mut rng = Rng(seed | 1);
    let out = std::io::stdout();
    let say = |s: String| {
        let mut o = out.lock();
        let _ = writeln!(o, "@@ {s}");
        let _ = o.flush();
    };
    say(format!("T {now}"));
    for op in 0..200_000u64 {
        if op % 20 == 0 {
            now += 1_000;
            clock.set_ms(now);
            say(format!("T {now}"));
        }
        let r = rng.next() % 100;
        if r < 45 {
            let k = rng.next() % STABLE_KEYS;
            say(format!("c {k}"));
            if store
                .check_at(format!("stable-{k}").as_bytes(), &stable, 1, now)
                .expect("check")
                .allowed()
            {
                say(format!("C {k}"));
            }
        } else if r < 60 {
            let k = rng.next() % 500;
            store
                .check_at(format!("churn-{k}").as_bytes(), &churn, 1, now)
                .expect("churn");
        } else if r < 85 {
            j += 1;
            say(format!("d {j} {now}"));
            match store
                .begin_at(b"acct", &record_key(j), &fingerprint(j), now)
                .expect("begin")
            {
                Begin::Started(lease) => {
                    store
                        .complete_at(&lease, &response(j), now)
                        .expect("complete");
                    say(format!("D {j} {now}"));
                }
                other => panic!("new key {j}: {other:?}"),
            }
        } else if r < 92 {
            j += 1;
            say(format!("a {j} {now}"));
            if let Begin::Started(lease) = store
                .begin_at(b"acct", &record_key(j), &fingerprint(j), now)
                .expect("begin")
            {
                store.abort(&lease).expect("abort");
                say(format!("A {j} {now}"));
            }
        } else if r < 97 {
            j += 1;
            say(format!("f {j} {now}"));
            if let Begin::Started(_) = store
                .begin_at(b"acct", &record_key(j), &fingerprint(j), now)
                .expect("begin")
            {
                say(format!("F {j} {now}"));
            }
        } else if r < 99 {
            store.expire_now(now);
        } else {
            store.compact_now();
        }
    }
    say("END".into());
    std::process::exit(0);
}

/// Kills its process at the `step`-th point of growth: before event 1 is step 1, after it step
/// 2, before event 2 step 3, and so on.
struct DieAtStep {
    step: u64,
    seen: std::sync::atomic::AtomicU64,
}

impl DieAtStep {
    fn point(&self, event: tollgate::IoEvent) {
        let n = self.seen.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
        if n == self.step {
            let mut o = std::io::stdout().lock();
            let _ = writeln!(o, "@@ G {n} {event:?}");
            let _ = o.flush();
            // SAFETY: getpid and kill take no pointers; the signal ends this process at once,
            // as `kill -9` from outside would.
            unsafe {
                libc::kill(libc::getpid(), libc::SIGKILL);
            }
        }
    }
}

impl tollgate::IoHook for DieAtStep {
    fn before(&self, event: tollgate::IoEvent) -> std::io::Result<()> {
        self.point(event);
        Ok(())
    }

    fn after(&self, event: tollgate::IoEvent) {
        self.point(event);
    }
}

/// The second child: open the store again and again until killed (each open recovers it).
fn recovery_child(path: &str) {
    let mut o = std::io::stdout();
    // A newline first: the test harness has printed "test ... " without one.
    let _ = writeln!(o, "\n@@ S");
    let _ = o.flush();
    for _ in 0..10_000 {
        let store = Store::open(path, options().compactor(false)).expect("recovery open");
        let _ = writeln!(o, "@@ O {}", store.open_report().entries);
        let _ = o.flush();
        drop(store);
    }
    std::process::exit(0);
}

/// Crash the store while it recovers: a child opens it over and over and is killed after
/// `delay_us` after it reaches its first open. Returns whether it reached it, and how many
/// opens it finished.
fn crash_during_recovery(
    exe: &std::path::Path,
    path: &std::path::Path,
    delay_us: u64,
) -> (bool, u64) {
    let mut child = Command::new(exe)
        .args([
            "--exact",
            "crash_recovery_under_sigkill",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("TOLLGATE_CRASH_RECOVER", path)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    let reader = std::thread::spawn(move || {
        let (mut started, mut opens) = (false, 0u64);
        for l in BufReader::new(stdout).lines().map_while(Result::ok) {
            if l == "@@ S" {
                started = true;
                let _ = tx.send(());
            }
            opens += u64::from(l.starts_with("@@ O"));
        }
        (started, opens)
    });
    // Wait for the child to reach its first open (not a timing assertion: a child that never
    // gets there is killed all the same), then let it recover for a random while.
    let _ = rx.recv_timeout(Duration::from_secs(20));
    std::thread::sleep(Duration::from_micros(delay_us));
    let _ = child.kill(); // SIGKILL
    let _ = child.wait();
    reader.join().unwrap()
}

#[derive(Default)]
struct Expect {
    /// Per stable key: acknowledged admissions, and whether one more was in flight.
    counts: HashMap<u64, (u64, bool)>,
    /// Records: id -> (state, time of the operation).
    records: HashMap<u64, (char, u64)>,
    now: u64,
    next_j: u64,
}

#[test]
fn crash_recovery_under_sigkill() {
    if let Ok(path) = std::env::var("TOLLGATE_CRASH_CHILD") {
        child(&path);
        return;
    }
    if let Ok(path) = std::env::var("TOLLGATE_CRASH_RECOVER") {
        recovery_child(&path);
        return;
    }
    let doubles: u64 = std::env::var("TOLLGATE_CRASH_DOUBLE")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1);
    let (mut double_crashes, mut in_open, mut first_open_killed, mut growth_kills) =
        (0u64, 0u64, 0u64, 0u64);
    let kills: u64 = std::env::var("TOLLGATE_CRASH_KILLS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(50);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("crash.tg");
    let exe = std::env::current_exe().unwrap();
    let mut exp = Expect {
        now: T0,
        ..Default::default()
    };
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15 ^ u64::from(std::process::id()));
    let started = Instant::now();
    let (mut completed_runs, mut verified_records) = (0u64, 0u64);
    for kill in 0..kills {
        let growth_step = (kill % 3 == 2).then(|| 1 + rng.next() % 16);
        let mut child = Command::new(&exe)
            .args([
                "--exact",
                "crash_recovery_under_sigkill",
                "--nocapture",
                "--test-threads=1",
            ])
            .env("TOLLGATE_CRASH_CHILD", &path)
            .env("TOLLGATE_CRASH_SEED", rng.next().to_string())
            .env("TOLLGATE_CRASH_NOW", (exp.now + 1_000).to_string())
            .env("TOLLGATE_CRASH_J", exp.next_j.to_string())
            .env("TOLLGATE_CRASH_HOME", if kill % 2 == 1 { "1" } else { "0" })
            .env(
                "TOLLGATE_CRASH_GROWTH_STEP",
                growth_step.map_or(String::new(), |k| k.to_string()),
            )
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(l) = line.strip_prefix("@@ ") {
                    let _ = tx.send(l.to_string());
                }
            }
        });
        // Let it run a random while: from just after open to well into the workload.
        std::thread::sleep(Duration::from_millis(5 + rng.next() % 150));
        let _ = child.kill(); // SIGKILL
        let _ = child.wait();
        reader.join().unwrap();
        let mut ended = false;
        for line in rx.try_iter() {
            let mut parts = line.split(' ');
            let (tag, a, b) = (parts.next().unwrap_or(""), parts.next(), parts.next());
            let a: u64 = a.and_then(|x| x.parse().ok()).unwrap_or(0);
            let b: u64 = b.and_then(|x| x.parse().ok()).unwrap_or(0);
            match tag {
                "T" => exp.now = exp.now.max(a),
                "c" => exp.counts.entry(a).or_default().1 = true,
                "C" => {
                    let e = exp.counts.entry(a).or_default();
                    e.0 += 1;
                    e.1 = false;
                }
                "d" | "a" | "f" | "D" | "A" | "F" => {
                    exp.records
                        .insert(a, (tag.chars().next().unwrap_or('?'), b));
                    exp.next_j = exp.next_j.max(a);
                }
                "END" => ended = true,
                "G" => growth_kills += 1,
                _ => {}
            }
        }
        completed_runs += u64::from(ended);
        // Crash while recovering what that crash left, `doubles` times.
        for _ in 0..doubles {
            let (started, opens) = crash_during_recovery(&exe, &path, rng.next() % 8_000);
            double_crashes += 1;
            in_open += u64::from(started);
            first_open_killed += u64::from(started && opens == 0);
        }
        // Reopen and verify.
        let store = Store::open(&path, options().compactor(false))
            .unwrap_or_else(|e| panic!("kill {kill}: reopen failed: {e}"));
        let report = store.open_report();
        assert_eq!(
            report.corrupt_entries + report.corrupt_segments + report.lost_segments,
            0,
            "kill {kill}: {report:?}"
        );
        assert!(!report.segment_count_damaged, "kill {kill}: {report:?}");
        for (k, (acked, in_flight)) in exp.counts.iter_mut() {
            let used = u64::from(
                store
                    .peek_at(format!("stable-{k}").as_bytes(), &stable(), exp.now)
                    .unwrap()
                    .windows()[0]
                    .used(),
            );
            let max = *acked + u64::from(*in_flight);
            assert!(
                (*acked..=max).contains(&used),
                "kill {kill}: key {k} counts {used}, acknowledged {acked}, in flight {in_flight}"
            );
            // Resolve the uncertainty for the next round.
            *acked = used;
            *in_flight = false;
        }
        let verify_at = exp.now + 500;
        let mut resolved = Vec::new();
        for (&j, &(state, at)) in exp.records.iter() {
            let live = verify_at < at + TTL_S * 1000;
            let lease_live = verify_at < at + 60_000;
            let got = store
                .begin_at(b"acct", &record_key(j), &fingerprint(j), verify_at)
                .unwrap_or_else(|e| panic!("kill {kill}: record {j} ({state} at {at}): {e}"));
            match (state, &got) {
                ('D', Begin::Replay(r)) | ('d', Begin::Replay(r)) => {
                    assert_eq!(
                        r.to_response(),
                        response(j),
                        "kill {kill}: record {j} replays wrong bytes"
                    );
                    verified_records += 1;
                }
                ('D', _) if live => panic!("kill {kill}: acknowledged record {j} lost: {got:?}"),
                ('d', Begin::InFlight) if lease_live => {}
                ('F', Begin::InFlight) if lease_live => {}
                ('F', _) if lease_live => panic!("kill {kill}: acknowledged begin {j}: {got:?}"),
                ('A', Begin::Started(_)) => {}
                ('A', _) => panic!("kill {kill}: aborted {j} not free: {got:?}"),
                (_, Begin::Started(_)) | (_, Begin::InFlight)
                    if !live || !lease_live || state == 'a' || state == 'f' || state == 'd' => {}
                (s, g) => panic!("kill {kill}: record {j} in state {s}: {g:?}"),
            }
            // Leave the key as the parent found it: a lease the parent just took is aborted.
            if let Begin::Started(l) = got {
                store.abort(&l).unwrap();
            }
            if !live {
                resolved.push(j);
            }
        }
        for j in resolved {
            exp.records.remove(&j);
        }
        exp.now = verify_at;
        drop(store);
    }
    eprintln!(
        "crash test: {kills} kills in {:.1} s ({completed_runs} runs finished before the kill), {verified_records} record replays verified; {double_crashes} second kills ({in_open} while reopening in a loop, {first_open_killed} of them before the first open finished); {growth_kills} crashes at a growth step",
        started.elapsed().as_secs_f64()
    );
    if doubles > 0 && kills >= 10 {
        assert!(
            in_open > 0,
            "no second kill landed while the store was being reopened: the delays are too short"
        );
    }
    assert!(
        verified_records > 0,
        "the workload never got to complete a record"
    );
}
