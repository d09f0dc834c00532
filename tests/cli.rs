//! The `tollgate` command, run as a process.
#![cfg(feature = "cli")]

mod common;

use std::process::Command;

use common::{temp_store, T0};
use tollgate::{Begin, Fingerprint, IdempotencyKey, Limit, Limits, Options, Store, StoredResponse};

fn tollgate(args: &[&str]) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_tollgate"))
        .args(args)
        .output()
        .expect("run tollgate");
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    (out.status.success(), text)
}

fn build_store(path: &std::path::Path) {
    let store = Store::open(path, Options::default().compactor(false)).unwrap();
    let now = store.now_ms();
    let limits = Limits::new(&[Limit::per_minute(60), Limit::per_hour(1000)]).unwrap();
    for i in 0..10u32 {
        for _ in 0..=i {
            store
                .check_at(format!("tok-{i}").as_bytes(), &limits, 1, now)
                .unwrap();
        }
    }
    store.check_at(b"old", &limits, 1, T0).unwrap(); // long expired
    let key = IdempotencyKey::parse("4d9c3a41-6bb7-4c4e-9a39-8f3c2d7e1f00").unwrap();
    let fp = Fingerprint::of("POST", "/sms", b"{}");
    let Begin::Started(l) = store.begin_at(b"acct", &key, &fp, now).unwrap() else {
        panic!()
    };
    store
        .complete_at(&l, &StoredResponse::new(201, vec![7u8; 3000]), now)
        .unwrap();
    store.close().unwrap();
}

#[test]
fn stat_verify_dump_compact() {
    let (_dir, path) = temp_store();
    build_store(&path);
    let p = path.to_str().unwrap();
    let (ok, out) = tollgate(&["stat", p]);
    assert!(ok, "{out}");
    assert!(
        out.contains("window entries       10 live, 1 expired"),
        "{out}"
    );
    assert!(out.contains("1 live (1 completed, 0 in flight)"), "{out}");
    let (ok, out) = tollgate(&["verify", p]);
    assert!(ok, "{out}");
    assert!(
        out.contains("12 entries and 1 stored responses checked"),
        "{out}"
    );
    let (ok, out) = tollgate(&["dump", p]);
    assert!(ok, "{out}");
    assert_eq!(out.lines().count(), 12, "{out}");
    assert!(out.contains(r#"{"kind":"windows","key":"tok-3","expired":false,"windows":[{"window_ms":60000,"mode":"bucketed","used":4},{"window_ms":3600000,"mode":"bucketed","used":4}]}"#), "{out}");
    assert!(out.contains(r#""kind":"idempotency","scope":"acct","key":"4d9c3a41-6bb7-4c4e-9a39-8f3c2d7e1f00","state":"completed""#), "{out}");
    let (ok, out) = tollgate(&["compact", p]);
    assert!(ok, "{out}");
    assert!(out.contains("expired 1 entries"), "{out}");
    let (_, out) = tollgate(&["stat", p]);
    assert!(
        out.contains("window entries       10 live, 0 expired"),
        "{out}"
    );
}

#[test]
fn verify_fails_on_a_corrupt_response() {
    let (_dir, path) = temp_store();
    build_store(&path);
    // Damage the stored response's payload (its record is the only one in the blob segment).
    let mut bytes = std::fs::read(&path).unwrap();
    let at = bytes
        .windows(4)
        .position(|w| w == b"TGBL")
        .expect("a response record");
    bytes[at + 100] ^= 0xFF;
    std::fs::write(&path, &bytes).unwrap();
    let (ok, out) = tollgate(&["verify", path.to_str().unwrap()]);
    assert!(!ok, "{out}");
    assert!(
        out.contains("checksum mismatch") && out.contains("CORRUPT"),
        "{out}"
    );
}

#[test]
fn bad_arguments_and_missing_files() {
    let (ok, out) = tollgate(&["stat", "/nonexistent/store.tg"]);
    assert!(!ok && out.contains("no such file"), "{out}");
    let (ok, _) = tollgate(&["frobnicate"]);
    assert!(!ok);
    let (ok, out) = tollgate(&["bench", "--threads", "0"]);
    assert!(!ok, "{out}");
    let (ok, out) = tollgate(&["scaling", "--runs", "0"]);
    assert!(!ok && out.contains("must be positive"), "{out}");
    let (ok, out) = tollgate(&["scaling", "--point", "10,5,1"]);
    assert!(!ok && out.contains("1 to 4 windows"), "{out}");
}

#[test]
fn a_short_bench_runs() {
    let dir = tempfile::tempdir().unwrap();
    let (ok, out) = tollgate(&[
        "bench",
        "--seconds",
        "0.5",
        "--tokens",
        "1000",
        "--threads",
        "1",
        "--no-peers",
        "--data",
        dir.path().to_str().unwrap(),
    ]);
    assert!(ok, "{out}");
    assert!(
        out.contains("requests in") && out.contains("p99.9"),
        "{out}"
    );
}

#[test]
fn a_tiny_scaling_run_writes_its_table_and_plot() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let (ok, text) = tollgate(&[
        "scaling",
        "--max-keys",
        "1000",
        "--checks",
        "2000",
        "--rounds",
        "1",
        "--runs",
        "1",
        // Never wait for a quiet machine here.
        "--retries",
        "0",
        "--out",
        out.to_str().unwrap(),
        "--data",
        dir.path().to_str().unwrap(),
    ]);
    assert!(ok, "{text}");
    let csv = std::fs::read_to_string(out.join("scaling.csv")).unwrap();
    let lines: Vec<&str> = csv.lines().collect();
    let header: Vec<&str> = lines[0].split(',').collect();
    assert_eq!(&header[..3], ["keys", "windows", "threads"], "{csv}");
    // Up to 1000 keys: 1000 keys on 1, 2 and 4 threads; 1 and 1000 keys with 1 to 4 windows.
    assert_eq!(lines.len(), 1 + 10, "{csv}");
    let col = |name: &str| header.iter().position(|h| *h == name).unwrap();
    for line in &lines[1..] {
        let f: Vec<&str> = line.split(',').collect();
        assert_eq!(f.len(), header.len(), "{line}");
        assert_eq!(
            f[col("rejected")],
            "0",
            "every timed check is admitted: {line}"
        );
        assert!(
            f[col("ns_per_check")].parse::<f64>().unwrap() > 0.0,
            "{line}"
        );
        // A 1000-key store is one 4 MiB segment and the header page.
        if f[col("keys")] == "1000" {
            assert_eq!(f[col("file_bytes")], "4198400", "{line}");
        }
    }
    let svg = std::fs::read_to_string(out.join("scaling.svg")).unwrap();
    assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
    assert!(svg.contains("bytes per key vs keys") && svg.contains("<polyline"));
    // The store files went away with their directory.
    let left: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(left, [std::ffi::OsString::from("out")]);
}
