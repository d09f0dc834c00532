//! The `tollgate` command: look inside a store, and a load generator.
//!
//! ```text
//! tollgate stat FILE        entries by kind, live and expired, file size, segments, free space
//! tollgate verify FILE      check every entry and stored response; exit 1 on corruption
//! tollgate dump FILE        every live entry as a JSON line
//! tollgate compact FILE     expire, compact the response area, print the stats before/after
//! tollgate bench [options]  a load generator on the seed policies, with peers in the same run
//! tollgate scaling [opts]   cost per check vs keys, threads and windows; bytes per key; a plot
//! ```

mod bench;
mod peers;
mod plot;
mod scaling;

use std::process::ExitCode;

use tollgate::{EntryView, Options, RecordState, Store};

fn usage() -> ExitCode {
    eprintln!(
        "usage:\n  tollgate stat FILE\n  tollgate verify FILE\n  tollgate dump FILE\n  tollgate compact FILE\n  tollgate bench [--policy zorio|erzycall] [--tokens N] [--threads N] [--seconds S]\n                 [--zipf S] [--idempotent P] [--retries P] [--data DIR] [--no-peers]\n                 [--redis HOST:PORT] [--redis-conns N]\n  tollgate scaling [--max-keys N] [--checks N] [--rounds N] [--runs N]\n                   [--max-others CORES] [--retries N] [--out DIR] [--data DIR]"
    );
    ExitCode::from(2)
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some(cmd) = args.first() else {
        return usage();
    };
    let result = match (cmd.as_str(), args.get(1)) {
        ("bench", _) => bench::run(&args[1..]),
        ("scaling", _) => scaling::run(&args[1..]),
        ("stat", Some(f)) => stat(f),
        ("verify", Some(f)) => return verify(f),
        ("dump", Some(f)) => dump(f),
        ("compact", Some(f)) => compact(f),
        _ => return usage(),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tollgate: {e}");
            ExitCode::FAILURE
        }
    }
}

type Res = Result<(), Box<dyn std::error::Error>>;

/// Open an existing store for inspection (no background compactor).
fn open(path: &str) -> Result<Store, Box<dyn std::error::Error>> {
    if !std::path::Path::new(path).exists() {
        return Err(format!("{path}: no such file").into());
    }
    Ok(Store::open(path, Options::default().compactor(false))?)
}

fn stat(path: &str) -> Res {
    let store = open(path)?;
    let now = store.now_ms();
    let (mut windows, mut windows_expired) = (0u64, 0u64);
    let (mut records, mut records_expired, mut in_flight, mut completed) = (0u64, 0u64, 0u64, 0u64);
    store.visit(now, |e| match e {
        EntryView::Windows { expired, .. } => {
            windows += 1;
            windows_expired += u64::from(expired);
        }
        EntryView::Idempotency { state, expired, .. } => {
            records += 1;
            records_expired += u64::from(expired);
            in_flight += u64::from(state == RecordState::InFlight && !expired);
            completed += u64::from(state == RecordState::Completed && !expired);
        }
    });
    let s = store.stats();
    let r = store.open_report();
    let file = std::fs::metadata(path)?.len();
    println!("file                 {path}");
    println!(
        "size                 {file} bytes ({:.1} MiB)",
        file as f64 / 1048576.0
    );
    println!(
        "segments             {} ({} holding responses)",
        s.segments, s.blob_segments
    );
    println!(
        "window entries       {} live, {} expired (not yet reclaimed)",
        windows - windows_expired,
        windows_expired
    );
    println!(
        "idempotency records  {} live ({} completed, {} in flight), {} expired",
        records - records_expired,
        completed,
        in_flight,
        records_expired
    );
    println!(
        "free space           {} lines ({:.1} MiB)",
        s.free_lines,
        s.free_lines as f64 * 64.0 / 1048576.0
    );
    println!(
        "response area        {:.1} MiB written, {:.1} MiB live",
        s.blob_used_lines as f64 * 64.0 / 1048576.0,
        s.blob_live_lines as f64 * 64.0 / 1048576.0
    );
    println!(
        "at open              {} entries, {} corrupt entries skipped, {} corrupt segments skipped, {} duplicates",
        r.entries, r.corrupt_entries, r.corrupt_segments, r.duplicates
    );
    Ok(())
}

fn verify(path: &str) -> ExitCode {
    let store = match open(path) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("tollgate verify: {path}: {e}");
            return ExitCode::FAILURE;
        }
    };
    let r = store.open_report();
    let v = store.verify();
    println!(
        "{path}: {} entries and {} stored responses checked; at open: {} corrupt entries, {} corrupt segments",
        v.entries, v.responses, r.corrupt_entries, r.corrupt_segments
    );
    for (offset, what) in &v.problems {
        println!("  byte {offset}: {what}");
    }
    if v.problems.is_empty() && r.corrupt_entries == 0 && r.corrupt_segments == 0 {
        println!("ok");
        ExitCode::SUCCESS
    } else {
        println!("CORRUPT");
        ExitCode::FAILURE
    }
}

/// JSON string of arbitrary bytes: UTF-8 as text, other bytes as \u00XX.
fn json_str(b: &[u8]) -> String {
    let mut s = String::with_capacity(b.len() + 2);
    s.push('"');
    for ch in String::from_utf8_lossy(b).chars() {
        match ch {
            '"' => s.push_str("\\\""),
            '\\' => s.push_str("\\\\"),
            c if (c as u32) < 0x20 => s.push_str(&format!("\\u{:04x}", c as u32)),
            c => s.push(c),
        }
    }
    s.push('"');
    s
}

fn dump(path: &str) -> Res {
    let store = open(path)?;
    let now = store.now_ms();
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    let mut err = None;
    store.visit(now, |e| {
        use std::io::Write;
        let line = match e {
            EntryView::Windows { key, windows, expired } => {
                let ws: Vec<String> = windows
                    .iter()
                    .map(|w| {
                        format!(
                            "{{\"window_ms\":{},\"mode\":\"{}\",\"used\":{}}}",
                            w.window.as_millis(),
                            if w.exact { "exact" } else { "bucketed" },
                            w.used
                        )
                    })
                    .collect();
                format!("{{\"kind\":\"windows\",\"key\":{},\"expired\":{expired},\"windows\":[{}]}}", json_str(key), ws.join(","))
            }
            EntryView::Idempotency { scope, key, state, fence, deadline_ms, response_len, expired } => format!(
                "{{\"kind\":\"idempotency\",\"scope\":{},\"key\":\"{}\",\"state\":\"{}\",\"fence\":{fence},\"deadline_ms\":{deadline_ms},\"response_len\":{},\"expired\":{expired}}}",
                json_str(scope),
                key.hyphenated(),
                match state {
                    RecordState::Vacant => "vacant",
                    RecordState::InFlight => "in_flight",
                    RecordState::Completed => "completed",
                    RecordState::Changing => "changing",
                },
                response_len.map_or("null".to_string(), |n| n.to_string()),
            ),
        };
        if let Err(e) = writeln!(out, "{line}") {
            err.get_or_insert(e);
        }
    });
    match err {
        // A closed pipe (`tollgate dump f | head`) is not an error.
        Some(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(e.into()),
        _ => Ok(()),
    }
}

fn compact(path: &str) -> Res {
    let store = open(path)?;
    let before = store.stats();
    let size_before = std::fs::metadata(path)?.len();
    let r = store.expire_now(store.now_ms());
    let moved = store.compact_now();
    let after = store.stats();
    store.flush()?;
    println!(
        "expired {} entries ({} examined); moved {} stored responses; recycled {} response segments",
        r.expired, r.examined, moved, after.recycled_segments
    );
    println!(
        "entries {} -> {}; free lines {} -> {}; file {} bytes (the file is never shrunk: freed space is reused)",
        before.entries, after.entries, before.free_lines, after.free_lines, size_before
    );
    Ok(())
}
