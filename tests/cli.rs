//! The `tollgate` command, run as a process.
#![cfg(feature = "cli")]

mod common;

use std::process::Command;

use common::{temp_store, T0};
use tollgate::{Begin, Fingerprint, IdempotencyKey, Limit, Limits, Options, Store, StoredResponse};

/// Exit code, standard output and standard error of one run.
fn run(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_tollgate"))
        .args(args)
        .output()
        .expect("run tollgate");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).to_string(),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

fn json(text: &str) -> serde_json::Value {
    serde_json::from_str(text.trim())
        .unwrap_or_else(|e| panic!("not one JSON document ({e}): {text}"))
}

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
        "--no-huge-pages",
        "--data",
        dir.path().to_str().unwrap(),
    ]);
    assert!(ok, "{out}");
    assert!(
        out.contains("requests in") && out.contains("p99.9"),
        "{out}"
    );
    assert!(out.contains("(no huge pages)"), "{out}");
    // The keyed requests' own percentiles, on a line of their own.
    assert!(out.contains("keyed requests ("), "{out}");
}

/// Rounds in turns: each round has its table, the order alternates, and the last table gives
/// every peer's ratio round by round and the median.
#[cfg(feature = "bench")]
#[test]
fn a_bench_of_rounds_gives_each_ratio_and_the_median() {
    let dir = tempfile::tempdir().unwrap();
    let (ok, out) = tollgate(&[
        "bench",
        "--seconds",
        "0.2",
        "--tokens",
        "1000",
        "--threads",
        "1",
        "--rounds",
        "3",
        "--redis",
        "127.0.0.1:1",
        "--data",
        dir.path().to_str().unwrap(),
    ]);
    assert!(ok, "{out}");
    assert!(out.contains("0.2 s per engine, 3 rounds"), "{out}");
    assert!(out.contains("round 2 of 3 (peers first)"), "{out}");
    assert!(out.contains("round 3 of 3\n"), "{out}");
    assert_eq!(out.matches("| tollgate (1 threads) |").count(), 3, "{out}");
    let summary = out
        .lines()
        .find(|l| l.starts_with("| governor 0.10 keyed (1 threads) |") && l.contains(", "))
        .unwrap_or_else(|| panic!("no summary row: {out}"));
    // Three ratios, then their median, which is one of them.
    let cells: Vec<&str> = summary.split('|').map(str::trim).collect();
    let ratios: Vec<&str> = cells[2].split(", ").collect();
    assert_eq!(ratios.len(), 3, "{summary}");
    assert!(ratios.contains(&cells[3]), "{summary}");
    // Zero rounds is refused.
    let (ok, out) = tollgate(&["bench", "--rounds", "0"]);
    assert!(!ok && out.contains("--rounds"), "{out}");
}

/// The floor toy runs beside governor and keeps records of the keyed POSTs it admits.
#[cfg(feature = "bench")]
#[test]
fn a_short_bench_with_the_floor_toy_runs() {
    let dir = tempfile::tempdir().unwrap();
    let (ok, out) = tollgate(&[
        "bench",
        "--seconds",
        "0.3",
        "--tokens",
        "1000",
        "--threads",
        "2",
        "--toy",
        "--redis",
        "127.0.0.1:1",
        "--data",
        dir.path().to_str().unwrap(),
    ]);
    assert!(ok, "{out}");
    assert!(out.contains("| toy floor: one miss"), "{out}");
    let begun: u64 = out
        .lines()
        .find(|l| l.contains("records begun and completed"))
        .and_then(|l| {
            l.trim()
                .strip_prefix("toy: ")?
                .split(' ')
                .next()?
                .parse()
                .ok()
        })
        .unwrap_or(0);
    assert!(begun > 0, "the toy began no record: {out}");
    // Its keyed requests' latencies on a line of their own, as tollgate's.
    assert!(out.matches("keyed requests (").count() >= 2, "{out}");
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
        // A 1000-key store is one 4 MiB segment, from 2 MiB (the header page, then a hole).
        if f[col("keys")] == "1000" {
            assert_eq!(f[col("file_bytes")], "6291456", "{line}");
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

const SUBCOMMANDS: [&str; 9] = [
    "stat",
    "verify",
    "dump",
    "inspect",
    "delete",
    "compact",
    "bench",
    "scaling",
    "completions",
];

#[test]
fn every_subcommand_explains_itself() {
    for args in [&["--help"][..], &["help"], &["-h"]] {
        let (code, out, _) = run(args);
        assert_eq!(code, 0, "{args:?}: {out}");
        for sub in SUBCOMMANDS {
            assert!(out.contains(sub), "{args:?} lists {sub}: {out}");
        }
    }
    let (code, out, _) = run(&["--version"]);
    assert_eq!(code, 0);
    assert_eq!(
        out.trim(),
        format!("tollgate {}", env!("CARGO_PKG_VERSION"))
    );
    for sub in SUBCOMMANDS {
        let (code, long, _) = run(&[sub, "--help"]);
        assert_eq!(code, 0, "{sub} --help: {long}");
        assert!(long.contains("Usage: tollgate"), "{sub}: {long}");
        assert!(
            long.contains("Example"),
            "{sub} --help has an example: {long}"
        );
        let (code, via_help, _) = run(&["help", sub]);
        assert_eq!(code, 0, "help {sub}");
        assert_eq!(via_help, long, "help {sub} is {sub} --help");
    }
    // Options with their defaults.
    let (_, out, _) = run(&["bench", "--help"]);
    assert!(
        out.contains("[default: zorio]") && out.contains("[default: 10]"),
        "{out}"
    );
    let (_, out, _) = run(&["scaling", "--help"]);
    assert!(out.contains("[default: 10000000]"), "{out}");
    let (_, out, _) = run(&["inspect", "--help"]);
    assert!(
        out.contains("--scope") && out.contains("--limit") && out.contains("--json"),
        "{out}"
    );
}

#[test]
fn usage_errors_are_one_line_and_exit_2() {
    let (dir, path) = temp_store();
    build_store(&path);
    let p = path.to_str().unwrap();
    for args in [
        &["stat", "--frob", p][..],
        &["frobnicate"],
        &["stat"],
        &["inspect", p],
        &["bench", "--threads", "many"],
    ] {
        let (code, out, err) = run(args);
        assert_eq!(code, 2, "{args:?}: {out}{err}");
        assert_eq!(err.trim().lines().count(), 1, "{args:?}: {err}");
        assert!(out.is_empty(), "{args:?}: {out}");
    }
    // The line names the help that explains the mistake: the subcommand's own, when the
    // command line names one.
    for (args, help) in [
        (&["stat", "--bogus"][..], "tollgate stat --help"),
        (&["stat", "--bogus", p], "tollgate stat --help"),
        (&["inspect", p], "tollgate inspect --help"),
        (&["bench", "--threads", "many"], "tollgate bench --help"),
        (&["frobnicate"], "tollgate --help"),
        (&["--bogus"], "tollgate --help"),
    ] {
        let (code, _, err) = run(args);
        assert_eq!(code, 2, "{args:?}: {err}");
        assert_eq!(err.lines().count(), 1, "{args:?}: {err}");
        assert!(err.contains(&format!("see '{help}'")), "{args:?}: {err}");
    }
    let (_, _, err) = run(&["stat", "--bogus"]);
    assert!(
        err.starts_with("tollgate: unexpected argument '--bogus'"),
        "{err}"
    );
    let (_, _, err) = run(&["inspect", p]);
    assert!(err.contains("not provided: <KEY> (see"), "{err}");
    let missing = dir.path().join("missing.tg");
    for sub in ["stat", "verify", "dump", "compact"] {
        let (code, out, err) = run(&[sub, missing.to_str().unwrap()]);
        assert_eq!(code, 2, "{sub}: {out}{err}");
        assert_eq!(
            err.trim(),
            format!("tollgate: {}: no such file", missing.display())
        );
    }
    assert!(!missing.exists(), "nothing created");
}

#[test]
fn completions_for_a_shell() {
    let (code, out, _) = run(&["completions", "bash"]);
    assert_eq!(code, 0);
    assert!(
        out.contains("_tollgate") && out.contains("inspect"),
        "{out}"
    );
    let (code, _, _) = run(&["completions", "tcsh-9"]);
    assert_eq!(code, 2);
}

#[test]
fn json_output_parses() {
    let (_dir, path) = temp_store();
    build_store(&path);
    let p = path.to_str().unwrap();
    let (code, out, _) = run(&["stat", p, "--json"]);
    assert_eq!(code, 0);
    let v = json(&out);
    assert_eq!(v["window_entries"]["live"], 10);
    assert_eq!(v["window_entries"]["expired"], 1);
    assert_eq!(v["idempotency_records"]["completed"], 1);
    assert_eq!(v["truncated"], false);
    let (code, out, _) = run(&["verify", p, "--json"]);
    assert_eq!(code, 0);
    let v = json(&out);
    assert_eq!(
        (v["ok"].clone(), v["entries_checked"].clone()),
        (true.into(), 12.into())
    );
    assert_eq!(v["findings"].as_array().unwrap().len(), 0);
    let (code, out, _) = run(&["dump", p, "--json"]);
    assert_eq!(code, 0);
    for line in out.lines() {
        json(line);
    }
    let (code, out, _) = run(&[
        "inspect", p, "tok-3", "--limit", "60/1m", "--limit", "1000/1h", "--json",
    ]);
    assert_eq!(code, 0, "{out}");
    let v = json(&out);
    assert_eq!(v["found"], true);
    let w = &v["windows"][0];
    assert_eq!(
        (w["limit"].clone(), w["used"].clone(), w["left"].clone()),
        (60.into(), 4.into(), 56.into())
    );
    assert_eq!(v["windows"][1]["window_ms"], 3_600_000);
    let (_, out, _) = run(&["inspect", p, "nobody", "--json"]);
    assert_eq!(json(&out)["found"], false);
    let (code, out, _) = run(&["inspect", p, KEY, "--scope", "acct", "--json"]);
    assert_eq!(code, 0, "{out}");
    let v = json(&out);
    assert_eq!(v["state"], "completed");
    assert_eq!(v["status"], 201);
    assert!(v["left_ms"].as_u64().unwrap() > 0);
}

const KEY: &str = "4d9c3a41-6bb7-4c4e-9a39-8f3c2d7e1f00";

#[test]
fn a_live_store_is_inspected_while_its_owner_holds_it() {
    let (_dir, path) = temp_store();
    build_store(&path);
    let p = path.to_str().unwrap();
    // This process holds the store open with the writer lock, as a running gateway does.
    let owner = Store::open(&path, Options::default().compactor(false)).unwrap();
    let limits = Limits::new(&[Limit::per_minute(60), Limit::per_hour(1000)]).unwrap();
    owner.check(b"live-token", &limits, 1).unwrap();
    owner.check(b"live-token", &limits, 1).unwrap();
    let before = std::fs::read(&path).unwrap();
    let (code, out, err) = run(&[
        "inspect",
        p,
        "live-token",
        "--limit",
        "60/1m",
        "--limit",
        "1000/1h",
    ]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.starts_with("live-token: 2/60 per 1m (58 left), 2/1000 per 1h (998 left)"),
        "{out}"
    );
    assert!(out.contains("sub-windows of"), "{out}");
    let (code, out, _) = run(&["inspect", p, KEY, "--scope", "acct"]);
    assert_eq!(code, 0);
    assert!(out.contains("completed with status 201"), "{out}");
    for args in [&["stat", p][..], &["verify", p], &["dump", p]] {
        let (code, out, err) = run(args);
        assert_eq!(code, 0, "{args:?}: {out}{err}");
    }
    let (_, out, _) = run(&["stat", p]);
    assert!(out.contains("window entries       11 live"), "{out}");
    assert_eq!(
        std::fs::read(&path).unwrap(),
        before,
        "the views wrote nothing"
    );
    // Changing the store needs the writer lock, and says so.
    for args in [&["compact", p][..], &["delete", p, "live-token", "--yes"]] {
        let (code, out, err) = run(args);
        assert_eq!(code, 1, "{args:?}: {out}{err}");
        assert!(
            err.contains("held open by another process") && err.contains("writer lock"),
            "{err}"
        );
    }
    assert!(owner.check(b"live-token", &limits, 1).unwrap().allowed());
}

#[test]
fn delete_one_key_or_record() {
    let (_dir, path) = temp_store();
    build_store(&path);
    let p = path.to_str().unwrap();
    let (code, out, err) = run(&["delete", p, "tok-3"]);
    assert_eq!(code, 2, "{out}{err}");
    assert!(err.contains("refusing without --yes"), "{err}");
    let (_, out, _) = run(&["inspect", p, "tok-3"]);
    assert!(out.starts_with("tok-3: 4 per 1m"), "still there: {out}");
    let (code, out, _) = run(&["delete", p, "tok-3", "--yes"]);
    assert_eq!(code, 0);
    assert!(out.contains("deleted the counters of tok-3"), "{out}");
    let (_, out, _) = run(&["inspect", p, "tok-3"]);
    assert!(out.contains("no counters"), "{out}");
    let (code, out, _) = run(&["delete", p, KEY, "--scope", "acct", "--yes"]);
    assert_eq!(code, 0);
    assert!(out.contains("deleted the idempotency record"), "{out}");
    let (_, out, _) = run(&["inspect", p, KEY, "--scope", "acct"]);
    assert!(out.contains("no idempotency record"), "{out}");
    let (_, out, _) = run(&["stat", p]);
    assert!(out.contains("window entries       9 live"), "{out}");
    let (code, _, err) = run(&["delete", p, "not-a-uuid", "--scope", "acct", "--yes"]);
    assert_eq!(code, 1, "{err}");
}

#[test]
fn verify_summarizes_a_truncated_file() {
    let (_dir, path) = temp_store();
    let store = Store::open(&path, Options::default().compactor(false)).unwrap();
    let now = store.now_ms();
    let fp = Fingerprint::of("POST", "/sms", b"{}");
    for i in 0..30u32 {
        let key =
            IdempotencyKey::parse(&format!("4d9c3a41-6bb7-4c4e-9a39-8f3c2d7e{i:04x}")).unwrap();
        let Begin::Started(l) = store.begin_at(b"acct", &key, &fp, now).unwrap() else {
            panic!()
        };
        store
            .complete_at(&l, &StoredResponse::new(200, vec![1u8; 100]), now)
            .unwrap();
    }
    store.close().unwrap();
    let len = std::fs::metadata(&path).unwrap().len();
    // A quarter of what follows the first segment's start (2 MiB, format 3) is cut off.
    let cut = len - (len - (2 << 20)) / 4;
    std::fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .unwrap()
        .set_len(cut)
        .unwrap();
    let p = path.to_str().unwrap();
    let (code, out, _) = run(&["verify", p]);
    assert_eq!(code, 1, "{out}");
    let lines: Vec<&str> = out.lines().collect();
    assert!(
        lines[0].contains("30 entries and 0 stored responses checked"),
        "{out}"
    );
    assert!(lines[1].starts_with("file cut short"), "{out}");
    assert!(out.contains("bytes affected"), "{out}");
    assert!(out.contains("      30  "), "30 findings of one kind: {out}");
    assert_eq!(
        out.lines().filter(|l| l.starts_with("  byte ")).count(),
        20,
        "{out}"
    );
    // 31 findings past the summary: the lost segment its header records, the 30 responses.
    assert!(out.contains("and 11 more like these"), "{out}");
    assert!(out.trim_end().ends_with("CORRUPT"));
    assert!(out.lines().count() < 30, "short: {out}");
    let (code, out, _) = run(&["verify", p, "--all"]);
    assert_eq!(code, 1);
    // Every finding: the lost segment and the 30 responses.
    assert_eq!(
        out.lines().filter(|l| l.starts_with("  byte ")).count(),
        31,
        "{out}"
    );
    let (code, out, _) = run(&["verify", p, "--json"]);
    assert_eq!(code, 1);
    let v = json(&out);
    assert_eq!(
        (v["ok"].clone(), v["truncated"].clone()),
        (false.into(), true.into())
    );
    assert_eq!(v["findings_total"], 31);
    assert_eq!(v["findings"].as_array().unwrap().len(), 20);
    assert_eq!(
        std::fs::metadata(&path).unwrap().len(),
        cut,
        "verify changed nothing"
    );
}

/// Versions and concurrency permits show in `stat` and `dump`, and `verify` checks them.
#[test]
fn versions_and_permits_show_in_stat_and_dump() {
    let (_dir, path) = temp_store();
    let store = Store::open(&path, Options::default().compactor(false)).unwrap();
    for _ in 0..3 {
        store.bump_version(b"/api/leads/7").unwrap();
    }
    let now = store.now_ms();
    for _ in 0..2 {
        // A day's lease: still held when the command reads the clock.
        let p = store.acquire_permit_at(b"tok", 4, 86_400_000, now).unwrap();
        assert!(p.is_some());
    }
    let epoch = store.version(b"/api/leads/7").unwrap().epoch;
    store.close().unwrap();
    let p = path.to_str().unwrap();
    let (code, out, _) = run(&["stat", p, "--json"]);
    assert_eq!(code, 0);
    let v = json(&out);
    assert_eq!(v["versions"], 1);
    assert_eq!(v["permit_entries"]["keys"], 1);
    assert_eq!(v["permit_entries"]["held"], 2);
    let (code, out, _) = run(&["verify", p, "--json"]);
    assert_eq!(code, 0, "{out}");
    assert_eq!(json(&out)["entries_checked"], 2);
    let (code, out, _) = run(&["dump", p, "--json"]);
    assert_eq!(code, 0);
    let lines: Vec<serde_json::Value> = out.lines().map(json).collect();
    let version = lines
        .iter()
        .find(|l| l["kind"] == "version")
        .expect("a version");
    assert_eq!(version["key"], "/api/leads/7");
    assert_eq!(version["number"], 3);
    assert_eq!(version["epoch"], format!("{epoch:x}"));
    let permits = lines
        .iter()
        .find(|l| l["kind"] == "permits")
        .expect("permits");
    assert_eq!(
        (permits["key"].clone(), permits["held"].clone()),
        ("tok".into(), 2.into())
    );
    assert_eq!(permits["latest_deadline_ms"], now + 86_400_000);
    assert_eq!(permits["expired"], false);
}
