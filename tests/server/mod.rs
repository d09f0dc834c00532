//! Finding the Redis / Valkey server the shared-mode tests run against.
//!
//! The address is `TOLLGATE_REDIS_URL` (default `redis://127.0.0.1:6379`). When no server
//! answers, a test prints why it is skipped and returns; when `CI` is set it fails instead, so
//! a CI run without a server can never pass silently.
#![allow(dead_code)]

use std::sync::atomic::{AtomicU64, Ordering};

use tollgate::fleet::{RedisOptions, RedisStore};

/// The server's URL, or `None` (after printing why) when the test should be skipped.
pub fn url(test: &str) -> Option<String> {
    let url =
        std::env::var("TOLLGATE_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
    let probe = RedisStore::open(&url, RedisOptions::default()).and_then(|s| s.ping());
    match probe {
        Ok(()) => Some(url),
        Err(e) => {
            if std::env::var("CI").is_ok_and(|v| !v.is_empty() && v != "false") {
                panic!(
                    "CI is set but no Redis server answers at {url} ({e}): `.ci/run` starts one"
                );
            }
            eprintln!(
                "SKIPPED {test}: no Redis server at {url} ({e}). Start one with \
                 `.ci/redis-server.sh start` or set TOLLGATE_REDIS_URL."
            );
            None
        }
    }
}

/// A key prefix no other test (or earlier run) uses.
pub fn prefix(test: &str) -> String {
    static N: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!(
        "tgtest-{test}-{}-{nanos}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// A redis-server of the test's own, in a temporary directory, on a free loopback port, with
/// every write fsynced to its append-only file before it answers. It can be killed (SIGKILL)
/// and started again on the same files.
pub struct Dedicated {
    pub port: u16,
    dir: tempfile::TempDir,
    child: Option<std::process::Child>,
}

impl Dedicated {
    /// Start one, or `None` (after printing why) when `redis-server` is not installed outside
    /// CI. Under CI a missing binary fails the test.
    pub fn start(test: &str) -> Option<Dedicated> {
        if std::process::Command::new("redis-server")
            .arg("--version")
            .output()
            .is_err()
        {
            if std::env::var("CI").is_ok_and(|v| !v.is_empty() && v != "false") {
                panic!("CI is set but redis-server is not installed");
            }
            eprintln!(
                "SKIPPED {test}: redis-server is not installed (apt-get install redis-server)"
            );
            return None;
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("a free port");
        let mut d = Dedicated {
            port,
            dir: tempfile::tempdir().expect("temp dir"),
            child: None,
        };
        d.restart();
        Some(d)
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Start the server (again) on the same directory and wait until it answers.
    pub fn restart(&mut self) {
        let child = std::process::Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args([
                "--appendonly",
                "yes",
                "--appendfsync",
                "always",
                "--save",
                "",
            ])
            .arg("--dir")
            .arg(self.dir.path())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("redis-server starts");
        self.child = Some(child);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            let ok = RedisStore::open(&self.url(), RedisOptions::default())
                .and_then(|s| s.ping())
                .is_ok();
            if ok {
                return;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "redis-server did not answer on port {}",
                self.port
            );
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }

    /// SIGKILL the server and wait for it to be gone.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Run one command on the server (test control: CLIENT PAUSE, DBSIZE, ...).
    pub fn cmd(&self, args: &[&str]) -> redis::Value {
        let client = redis::Client::open(self.url()).expect("client");
        let mut con = client.get_connection().expect("connection");
        let mut c = redis::cmd(args[0]);
        for a in &args[1..] {
            c.arg(*a);
        }
        c.query(&mut con).expect("command runs")
    }
}

impl Drop for Dedicated {
    fn drop(&mut self) {
        self.kill();
    }
}
