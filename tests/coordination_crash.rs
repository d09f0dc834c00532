//! Versions and concurrency permits survive a kill -9 as the engine promises: this test binary
//! re-runs itself as a child (as `tests/crash.rs` and `tests/second_process.rs` do) that bumps
//! versions, takes permits and then bumps one hot version in a loop, reporting each bump on
//! stdout once it returned; the parent kills it with SIGKILL mid-loop and reopens the file.
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
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use tollgate::{Options, Store, Version};

const T0: u64 = 1_700_000_000_000;
const CHILD: &str = "TOLLGATE_COORD_CRASH_CHILD";
const LEASE_MS: u64 = 30_000;
const CAP: u32 = 3;
const RESOURCES: u64 = 20;
/// Hot bumps the parent waits for before the kill.
const HOT_BEFORE_KILL: u64 = 300;

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

/// The child: versions, permits, then a hot version bumped until killed.
fn child(path: &str) {
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
            .acquire_permit_at(b"tok_dead", CAP, LEASE_MS, T0)
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
    if let Ok(path) = std::env::var(CHILD) {
        child(&path);
    }
}

#[test]
fn versions_survive_kill_9_and_dead_permits_end_at_their_deadline() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("coord.tg");
    let exe = std::env::current_exe().unwrap();
    let mut kid = Command::new(exe)
        .args(["--exact", "child_entry", "--nocapture", "--test-threads=1"])
        .env(CHILD, &path)
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
    let mut versions = HashMap::new();
    let mut deadlines = Vec::new();
    let mut hot: Option<Version> = None;
    let mut hot_seen = 0u64;
    while hot_seen < HOT_BEFORE_KILL {
        let line = rx
            .recv_timeout(Duration::from_secs(60))
            .expect("the child reports");
        let f: Vec<&str> = line.split(' ').collect();
        let num = |i: usize| f[i].parse::<u64>().unwrap();
        match f[0] {
            "v" => {
                versions.insert(
                    num(1),
                    Version {
                        epoch: num(2),
                        number: num(3),
                    },
                );
            }
            "p" => deadlines.push(num(1)),
            "hot" => {
                hot = Some(Version {
                    epoch: num(1),
                    number: num(2),
                });
                hot_seen += 1;
            }
            other => panic!("unexpected report {other}"),
        }
    }
    kid.kill().unwrap(); // SIGKILL, in the middle of the hot loop
    kid.wait().unwrap();
    // Reports printed before the kill may still be in the pipe: the last one counts.
    while let Ok(line) = rx.recv_timeout(Duration::from_millis(200)) {
        let f: Vec<&str> = line.split(' ').collect();
        if f[0] == "hot" {
            hot = Some(Version {
                epoch: f[1].parse().unwrap(),
                number: f[2].parse().unwrap(),
            });
        }
    }

    let store = Store::open(&path, opts()).unwrap();
    let r = store.open_report();
    assert_eq!(r.corrupt_entries, 0, "{r:?}");
    assert!(store.verify().problems.is_empty());
    assert_eq!(versions.len() as u64, RESOURCES);
    for (i, v) in &versions {
        assert_eq!(store.version(&resource(*i)).unwrap(), *v, "resource {i}");
    }
    let hot = hot.expect("hot bumps reported");
    let now = store.version(b"/hot").unwrap();
    assert_eq!(now.epoch, hot.epoch);
    assert!(
        now.number == hot.number || now.number == hot.number + 1,
        "reported {} after the kill, {} reopened",
        hot.number,
        now.number
    );

    assert_eq!(deadlines, vec![T0 + LEASE_MS; CAP as usize]);
    let before = T0 + LEASE_MS - 1;
    assert_eq!(store.permits_held_at(b"tok_dead", before).unwrap(), CAP);
    assert!(store
        .acquire_permit_at(b"tok_dead", CAP, 1_000, before)
        .unwrap()
        .is_none());
    let at = T0 + LEASE_MS;
    assert_eq!(store.permits_held_at(b"tok_dead", at).unwrap(), 0);
    for _ in 0..CAP {
        assert!(store
            .acquire_permit_at(b"tok_dead", CAP, 1_000, at)
            .unwrap()
            .is_some());
    }
    // A second restart keeps the new permits and the versions alike.
    store.close().unwrap();
    let store = Store::open(&path, opts()).unwrap();
    assert_eq!(store.permits_held_at(b"tok_dead", at).unwrap(), CAP);
    assert_eq!(store.version(b"/hot").unwrap(), now);
}
