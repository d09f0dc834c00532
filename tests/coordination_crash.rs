//! Versions and concurrency permits survive a kill -9 as the engine promises: this test binary
//! re-runs itself as a child (as `tests/crash.rs` and `tests/second_process.rs` do) that bumps
//! versions, takes permits and then bumps one hot version in a loop, reporting each bump on
//! stdout once it returned; the parent kills it with SIGKILL mid-loop and reopens the file.
//! Six rounds on one file, each child starting from what the last kill left, killed after a
//! different number of hot bumps.
//!
//! * every version the child reported is there, with its epoch (a restart keeps every ETag),
//!   and the hot one is the last reported or one more (a bump that returned is never lost);
//! * the dead process's permits are still held, and end at their deadline: one millisecond
//!   before it the cap refuses, at it the slots are free (time is passed explicitly: no
//!   sleeping);
//! * the file opens clean (no corrupt entry) and verifies.

#![cfg(unix)]

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use tollgate::{Options, Store, Version};

const T0: u64 = 1_700_000_000_000;
const CHILD: &str = "TOLLGATE_COORD_CRASH_CHILD";
/// The round the child runs (its time, its bumps).
const ROUND: &str = "TOLLGATE_COORD_CRASH_ROUND";
/// Kills, one per round, on the same file.
const KILLS: u64 = 6;
const LEASE_MS: u64 = 30_000;
const CAP: u32 = 3;
const RESOURCES: u64 = 20;

fn opts() -> Options {
    Options::default()
        .compactor(false)
        .clock(tollgate::ManualClock::new(T0))
}

fn say(line: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "@@ {line}");
    let _ = out.flush();
}

fn resource(i: u64) -> Vec<u8> {
    format!("/api/leads/{i}").into_bytes()
}

/// The time of round `k`: far enough from the last that its permits have all ended.
fn round_t(k: u64) -> u64 {
    T0 + k * 10 * LEASE_MS
}

/// The child of round `k`: bumps resource `i` `i` more times, takes every permit of the cap at
/// the round's time, then bumps the hot version until killed, reporting each result.
fn child(path: &str, k: u64) {
    let store = Store::open(path, opts()).expect("child opens");
    for i in 0..RESOURCES {
        let mut v = store.version(&resource(i)).expect("version");
        for _ in 0..i {
            v = store.bump_version(&resource(i)).expect("bump");
        }
        say(&format!("v {i} {} {}", v.epoch, v.number));
    }
    for _ in 0..CAP {
        let p = store
            .acquire_permit_at(b"tok_dead", CAP, LEASE_MS, round_t(k))
            .expect("backend")
            .expect("a slot");
        say(&format!("p {}", p.deadline_ms()));
    }
    loop {
        let v = store.bump_version(b"/hot").expect("bump");
        say(&format!("hot {} {}", v.epoch, v.number));
    }
}

#[test]
fn child_entry() {
    if let (Ok(path), Ok(k)) = (std::env::var(CHILD), std::env::var(ROUND)) {
        child(&path, k.parse().expect("a round"));
    }
}

/// What a child reported before it was killed.
#[derive(Default)]
struct Reports {
    versions: HashMap<u64, Version>,
    deadlines: Vec<u64>,
    hot: Option<Version>,
}

impl Reports {
    fn take(&mut self, line: &str) -> bool {
        let f: Vec<&str> = line.split(' ').collect();
        let num = |i: usize| f[i].parse::<u64>().unwrap();
        match f[0] {
            "v" => {
                let v = Version {
                    epoch: num(2),
                    number: num(3),
                };
                self.versions.insert(num(1), v);
            }
            "p" => self.deadlines.push(num(1)),
            "hot" => {
                self.hot = Some(Version {
                    epoch: num(1),
                    number: num(2),
                });
                return true;
            }
            other => panic!("unexpected report {other}"),
        }
        false
    }
}

/// Run round `k`'s child, kill it with SIGKILL after `hot_before_kill` hot bumps.
fn run_child(path: &Path, k: u64, hot_before_kill: u64) -> Reports {
    let exe = std::env::current_exe().unwrap();
    let mut kid = Command::new(exe)
        .args(["--exact", "child_entry", "--nocapture", "--test-threads=1"])
        .env(CHILD, path)
        .env(ROUND, k.to_string())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let out = kid.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            // The harness may print `test child_entry ... ` on the same line first.
            if let Some(at) = line.find("@@ ") {
                if tx.send(line[at + 3..].to_owned()).is_err() {
                    return;
                }
            }
        }
    });
    let mut r = Reports::default();
    let mut hot_seen = 0u64;
    while hot_seen < hot_before_kill {
        let line = rx
            .recv_timeout(Duration::from_secs(60))
            .expect("the child reports");
        hot_seen += u64::from(r.take(&line));
    }
    kid.kill().unwrap(); // SIGKILL, in the middle of the hot loop
    kid.wait().unwrap();
    // Reports printed before the kill may still be in the pipe: the last one counts.
    while let Ok(line) = rx.recv_timeout(Duration::from_millis(200)) {
        r.take(&line);
    }
    r
}

#[test]
fn versions_survive_kill_9_and_dead_permits_end_at_their_deadline() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("coord.tg");
    let mut epochs: HashMap<u64, u64> = HashMap::new();
    for k in 0..KILLS {
        let r = run_child(&path, k, 50 + 97 * k);
        let store = Store::open(&path, opts()).unwrap();
        let report = store.open_report();
        assert_eq!(report.corrupt_entries, 0, "round {k}: {report:?}");
        assert!(store.verify().problems.is_empty());
        assert_eq!(r.versions.len() as u64, RESOURCES);
        for (i, v) in &r.versions {
            assert_eq!(
                store.version(&resource(*i)).unwrap(),
                *v,
                "round {k}: resource {i}"
            );
            // Resource i was bumped i times a round, always under one epoch.
            assert_eq!(v.number, i * (k + 1), "round {k}: resource {i}");
            assert_eq!(*epochs.entry(*i).or_insert(v.epoch), v.epoch);
        }
        let hot = r.hot.expect("hot bumps reported");
        let now = store.version(b"/hot").unwrap();
        assert_eq!(now.epoch, hot.epoch);
        assert!(
            now.number == hot.number || now.number == hot.number + 1,
            "round {k}: reported {} before the kill, {} reopened",
            hot.number,
            now.number
        );

        let t = round_t(k);
        assert_eq!(r.deadlines, vec![t + LEASE_MS; CAP as usize]);
        let before = t + LEASE_MS - 1;
        assert_eq!(store.permits_held_at(b"tok_dead", before).unwrap(), CAP);
        assert!(store
            .acquire_permit_at(b"tok_dead", CAP, 1_000, before)
            .unwrap()
            .is_none());
        let at = t + LEASE_MS;
        assert_eq!(store.permits_held_at(b"tok_dead", at).unwrap(), 0);
        for _ in 0..CAP {
            assert!(store
                .acquire_permit_at(b"tok_dead", CAP, 1_000, at)
                .unwrap()
                .is_some());
        }
        // A clean restart keeps the new permits and the versions alike.
        store.close().unwrap();
        let store = Store::open(&path, opts()).unwrap();
        assert_eq!(store.permits_held_at(b"tok_dead", at).unwrap(), CAP);
        assert_eq!(store.version(b"/hot").unwrap(), now);
        store.close().unwrap();
    }
}
