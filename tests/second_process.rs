//! One process per file, across processes: this test binary re-runs itself as a child (as
//! `tests/crash.rs` does) that tries to open a store file the parent holds, and reports what it
//! got on stdout. `README.md`: "a second open, from this process or another, fails with
//! `Error::Locked`"; `docs/DESIGN.md`: the lock is an exclusive `flock` on the file, so the
//! kernel drops it when its holder closes the file or dies.

#![cfg(unix)]

mod common;

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::time::Duration;

use common::{temp_store, T0};
use tollgate::{Error, Limit, Limits, Options, Store};

/// The env var that makes a run of this binary a child, and the file it opens.
const CHILD_PATH: &str = "TOLLGATE_LOCK_CHILD";
/// `try`: open once, report, exit. `hold`: open, report, keep the store until stdin closes.
const CHILD_MODE: &str = "TOLLGATE_LOCK_MODE";

/// The background compactor is off: it runs on the real clock, and the counts here are made at
/// the fixed time `T0`.
fn opts() -> Options {
    Options::default().compactor(false)
}

fn limits() -> Limits {
    Limits::new(&[Limit::per_minute(10)]).unwrap()
}

fn say(line: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "@@ {line}");
    let _ = out.flush();
}

/// The child's side: open the store and report the outcome as one line.
fn child(path: &str, mode: &str) {
    match Store::open(path, opts()) {
        Ok(store) => {
            let used = store
                .peek_at(b"shared-key", &limits(), T0 + 1)
                .map(|d| d.windows()[0].used())
                .unwrap_or(u32::MAX);
            say(&format!("opened {used}"));
            if mode == "hold" {
                // Keep the store (and its lock) until the parent closes our stdin.
                let mut line = String::new();
                let _ = std::io::stdin().read_line(&mut line);
                drop(store);
                say("closed");
            }
        }
        Err(Error::Locked { path: p }) => say(&format!("locked {}", p.display())),
        Err(e) => say(&format!("error {e}")),
    }
}

/// A child and the report lines it prints (without the `@@ ` prefix), read by a thread.
struct Kid {
    child: Child,
    reports: Receiver<String>,
}

/// How long the parent waits for a child's report before it gives up (and kills the child), so
/// that a child that never answers fails the test instead of hanging it.
const PATIENCE: Duration = Duration::from_secs(60);

/// Start a child on `path`, with its stdin and stdout piped.
fn spawn(path: &Path, mode: &str) -> Kid {
    let exe = std::env::current_exe().unwrap();
    let mut child = Command::new(exe)
        .args(["--exact", "child_entry", "--nocapture", "--test-threads=1"])
        .env(CHILD_PATH, path)
        .env(CHILD_MODE, mode)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let out = child.stdout.take().unwrap();
    let (tx, reports) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            // The test harness may print "test child_entry ... " on the same line first.
            if let Some(l) = line.find("@@ ").and_then(|at| line.get(at + 3..)) {
                if tx.send(l.to_string()).is_err() {
                    break;
                }
            }
        }
    });
    Kid { child, reports }
}

impl Kid {
    /// The next report; kills the child and fails if none comes in time.
    fn next_report(&mut self) -> String {
        match self.reports.recv_timeout(PATIENCE) {
            Ok(l) => l,
            Err(e) => {
                let _ = self.child.kill();
                let _ = self.child.wait();
                panic!("no report from the child ({e:?})");
            }
        }
    }

    /// Wait for the child to exit and return its remaining reports.
    fn finish(mut self) -> Vec<String> {
        drop(self.child.stdin.take());
        let mut rest = Vec::new();
        loop {
            match self.reports.recv_timeout(PATIENCE) {
                Ok(l) => rest.push(l),
                Err(RecvTimeoutError::Disconnected) => break,
                Err(RecvTimeoutError::Timeout) => {
                    let _ = self.child.kill();
                    let _ = self.child.wait();
                    panic!("the child did not exit; reports so far: {rest:?}");
                }
            }
        }
        let status = self.child.wait().unwrap();
        assert!(status.success(), "child exited with {status}: {rest:?}");
        rest
    }
}

/// Run a `try` child to the end and return its one report.
fn try_open(path: &Path) -> String {
    let lines = spawn(path, "try").finish();
    assert_eq!(lines.len(), 1, "one report expected: {lines:?}");
    lines.into_iter().next().unwrap_or_default()
}

/// Not a test of its own: the entry point of the children (it does nothing in the parent).
#[test]
fn child_entry() {
    if let Ok(path) = std::env::var(CHILD_PATH) {
        let mode = std::env::var(CHILD_MODE).unwrap_or_default();
        child(&path, &mode);
    }
}

#[test]
fn another_process_gets_locked_while_the_parent_holds_the_file() {
    let (_dir, path) = temp_store();
    let store = Store::open(&path, opts()).unwrap();
    for _ in 0..3 {
        assert!(store
            .check_at(b"shared-key", &limits(), 1, T0)
            .unwrap()
            .allowed());
    }
    // The child gets the typed error, naming the file.
    assert_eq!(try_open(&path), format!("locked {}", path.display()));
    // A clone keeps the lock as long as it lives.
    let clone = store.clone();
    drop(store);
    assert_eq!(try_open(&path), format!("locked {}", path.display()));
    // In this process too.
    assert!(matches!(
        Store::open(&path, opts()),
        Err(Error::Locked { .. })
    ));
    // The refused opens touched nothing: the count is still there.
    assert_eq!(
        clone
            .peek_at(b"shared-key", &limits(), T0 + 1)
            .unwrap()
            .windows()[0]
            .used(),
        3
    );
    // Once the last handle is gone, a child opens it and sees the counts.
    drop(clone);
    assert_eq!(try_open_once_released(&path), "opened 3");
}

#[test]
fn the_parent_gets_locked_while_a_child_holds_the_file_and_not_after() {
    let (_dir, path) = temp_store();
    drop(Store::open(&path, opts()).unwrap());

    // A child that holds the store until told to close it.
    let mut holder = spawn(&path, "hold");
    assert_eq!(holder.next_report(), "opened 0");
    assert!(matches!(
        Store::open(&path, opts()),
        Err(Error::Locked { .. })
    ));
    // A second child is refused too.
    assert_eq!(try_open(&path), format!("locked {}", path.display()));
    // The holder closes its store (when its stdin closes): the lock goes with it.
    assert_eq!(holder.finish(), ["closed"]);
    let store = Store::open(&path, opts()).expect("lock released by the child");
    drop(store);
}

#[test]
fn a_killed_holder_leaves_no_stale_lock() {
    let (_dir, path) = temp_store();
    let mut holder = spawn(&path, "hold");
    assert_eq!(holder.next_report(), "opened 0");
    assert!(matches!(
        Store::open(&path, opts()),
        Err(Error::Locked { .. })
    ));
    // SIGKILL: no destructor runs, the kernel drops the flock with the process.
    holder.child.kill().unwrap();
    holder.child.wait().unwrap();
    // The lock is released when the process is gone; allow the kernel a moment.
    let mut opened = None;
    for _ in 0..100 {
        match Store::open(&path, opts()) {
            Ok(s) => {
                opened = Some(s);
                break;
            }
            Err(Error::Locked { .. }) => std::thread::sleep(Duration::from_millis(20)),
            Err(e) => panic!("unexpected error after the holder died: {e}"),
        }
    }
    let store = opened.expect("the lock of a killed process is released");
    assert!(store
        .check_at(b"shared-key", &limits(), 1, T0)
        .unwrap()
        .allowed());
    drop(store);
    // And a child can take it after the parent.
    assert_eq!(try_open_once_released(&path), "opened 1");
}

/// [`try_open`] after this process let go of the file. Another test of this binary may be
/// spawning a child at that moment: until that child reaches exec it holds a copy of this
/// process's descriptors, and with them the lock. So "locked" is retried for up to 2 s.
fn try_open_once_released(path: &Path) -> String {
    let mut got = String::new();
    for _ in 0..100 {
        got = try_open(path);
        if !got.starts_with("locked") {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    got
}
