//! Reservations in flight survive a kill -9: this test binary re-runs itself as a child (as
//! `tests/coordination_crash.rs` does) that reserves estimates, settles half of them,
//! reports each handle and each settle once it returned, and then keeps checking another key
//! until the parent kills it with SIGKILL. The parent reopens the file:
//!
//! * every estimate still open is counted, every settle that returned is counted once
//!   (nothing lost, nothing twice);
//! * an open reservation settles from its text form after the restart, once; a settled one is
//!   refused with `ReservationSettled`;
//! * the file opens clean and verifies.

#![cfg(unix)]

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use tollgate::debit::Reservation;
use tollgate::{Error, Limit, Limits, Options, Store};

const T0: u64 = 1_700_000_000_000;
const CHILD: &str = "TOLLGATE_DEBIT_CRASH_CHILD";
const RESERVATIONS: u32 = 40;
const TTL: Duration = Duration::from_secs(600);

fn opts() -> Options {
    Options::default()
        .compactor(false)
        .clock(tollgate::ManualClock::new(T0))
}

fn limits() -> Limits {
    Limits::new(&[
        Limit::per_minute(100_000).metered(),
        Limit::per_day(1_000_000).metered(),
    ])
    .unwrap()
}

fn say(line: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "@@ {line}");
    let _ = out.flush();
}

fn estimate(i: u32) -> u32 {
    100 + 37 * i
}

fn actual(i: u32) -> u32 {
    // Below, equal to and above the estimate.
    estimate(i) * (i % 3) / 2 + i
}

fn child(path: &str) {
    let store = Store::open(path, opts()).expect("child opens");
    let l = limits();
    let mut open = Vec::new();
    for i in 0..RESERVATIONS {
        let r = store
            .reserve_at(b"llm-key", &l, estimate(i), TTL, T0 + u64::from(i))
            .expect("reserve");
        let r = r.reservation().expect("admitted").clone();
        say(&format!("r {i} {r}"));
        open.push(r);
    }
    for (i, r) in open.iter().enumerate().step_by(2) {
        let i = i as u32;
        store
            .settle_at(b"llm-key", &l, r, actual(i), T0 + 100 + u64::from(i))
            .expect("settle");
        say(&format!("s {i}"));
    }
    say("ready");
    let other = Limits::new(&[Limit::per_second(1_000_000)]).unwrap();
    let mut t = T0;
    loop {
        t += 1;
        let _ = store.check_at(b"busy", &other, 1, t);
    }
}

#[test]
fn child_entry() {
    if let Ok(path) = std::env::var(CHILD) {
        child(&path);
    }
}

#[test]
fn reservations_in_flight_survive_kill_9() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("debit.tg");
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
            if let Some(at) = line.find("@@ ") {
                if tx.send(line[at + 3..].to_owned()).is_err() {
                    return;
                }
            }
        }
    });
    let mut handles: Vec<Option<Reservation>> = vec![None; RESERVATIONS as usize];
    let mut settled = vec![false; RESERVATIONS as usize];
    loop {
        let line = rx
            .recv_timeout(Duration::from_secs(60))
            .expect("the child reports");
        let f: Vec<&str> = line.split(' ').collect();
        match f[0] {
            "r" => handles[f[1].parse::<usize>().unwrap()] = Some(f[2].parse().unwrap()),
            "s" => settled[f[1].parse::<usize>().unwrap()] = true,
            "ready" => break,
            other => panic!("unexpected report {other}"),
        }
    }
    // Killed as it starts checking the other key.
    kid.kill().unwrap();
    kid.wait().unwrap();

    let store = Store::open(&path, opts()).unwrap();
    assert_eq!(store.open_report().corrupt_entries, 0);
    assert!(store.verify().problems.is_empty());
    let l = limits();
    let now = T0 + 1_000;
    let used = |s: &Store| s.peek_at(b"llm-key", &l, now).unwrap().windows()[1].used();
    let expected: u32 = (0..RESERVATIONS)
        .map(|i| {
            if settled[i as usize] {
                actual(i)
            } else {
                estimate(i)
            }
        })
        .sum();
    assert_eq!(
        used(&store),
        expected,
        "open estimates and returned settles"
    );
    let mut after = expected;
    for i in 0..RESERVATIONS {
        let r = handles[i as usize].as_ref().expect("every handle reported");
        let res = store.settle_at(b"llm-key", &l, r, 0, now);
        if settled[i as usize] {
            assert!(
                matches!(res, Err(Error::ReservationSettled)),
                "{i}: {res:?}"
            );
        } else {
            res.unwrap();
            after -= estimate(i);
            assert!(matches!(
                store.settle_at(b"llm-key", &l, r, 0, now),
                Err(Error::ReservationSettled)
            ));
        }
    }
    assert_eq!(used(&store), after);
}
