//! `stat`, `verify`, `dump` and `compact`: the whole store at once. The first three read
//! through a read-only view (`Store::open_read_only`), so they work beside a running gateway.

use std::collections::BTreeMap;
use std::path::Path;

use serde_json::json;
use tollgate::{EntryView, Error, FileShape, Options, RecordState, Store};

use crate::{progress, Res};

/// Findings printed by `verify` without `--all`.
const FIRST_FINDINGS: usize = 20;
/// Bytes of one line, the unit of entries.
const LINE: u64 = 64;

/// A read-only view of the store at `path`.
pub fn view(path: &Path) -> Result<Store, Box<dyn std::error::Error>> {
    Ok(Store::open_read_only(path, Options::default())?)
}

/// The store at `path` with its writer lock, for `compact` and `delete`; says clearly when
/// another process holds it.
pub fn writer(path: &Path, what: &str) -> Result<Store, Box<dyn std::error::Error>> {
    match Store::open(path, Options::default().compactor(false)) {
        Ok(s) => Ok(s),
        Err(Error::Locked { .. }) => Err(format!(
            "{}: the store is held open by another process (a running gateway?); {what} needs the writer lock: stop that process first{}",
            path.display(),
            if what == "delete" {
                ", or call Store::delete_key / Store::delete_record from its admin endpoint"
            } else {
                ", or leave the work to its own compactor"
            }
        )
        .into()),
        Err(e) => Err(e.into()),
    }
}

pub fn stat(path: &Path, as_json: bool) -> Res {
    let shape = FileShape::of(path)?;
    let store = view(path)?;
    let now = store.now_ms();
    let (mut windows, mut windows_expired) = (0u64, 0u64);
    let (mut records, mut records_expired, mut in_flight, mut completed) = (0u64, 0u64, 0u64, 0u64);
    let (mut versions, mut permit_keys, mut permits_held) = (0u64, 0u64, 0u64);
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
        EntryView::Version { .. } => versions += 1,
        EntryView::Permits { held, .. } => {
            permit_keys += 1;
            permits_held += u64::from(held);
        }
    });
    let s = store.stats();
    let r = store.open_report();
    if as_json {
        let doc = json!({
            "file": path.display().to_string(),
            "size_bytes": shape.len,
            "segment_bytes": shape.segment_len,
            "segments": s.segments,
            "response_segments": s.blob_segments,
            "truncated": shape.is_truncated(),
            "partial_segment_bytes": shape.partial_bytes,
            "window_entries": {"live": windows - windows_expired, "expired": windows_expired},
            "idempotency_records": {
                "live": records - records_expired,
                "completed": completed,
                "in_flight": in_flight,
                "expired": records_expired,
            },
            "versions": versions,
            "permit_entries": {"keys": permit_keys, "held": permits_held},
            "free_lines": s.free_lines,
            "free_bytes": s.free_lines * LINE,
            "response_area": {
                "written_bytes": s.blob_used_lines * LINE,
                "live_bytes": s.blob_live_lines * LINE,
            },
            "at_open": {
                "entries": r.entries,
                "corrupt_entries": r.corrupt_entries,
                "corrupt_segments": r.corrupt_segments,
                "duplicates": r.duplicates,
                "blank_segments": r.blank_segments,
                "lost_segments": r.lost_segments,
                "missing_entries": r.missing_entries,
            },
        });
        println!("{doc}");
        return Ok(());
    }
    let mib = |b: u64| b as f64 / 1048576.0;
    println!("file                 {}", path.display());
    println!(
        "size                 {} bytes ({:.1} MiB){}",
        shape.len,
        mib(shape.len),
        if shape.is_truncated() {
            format!(
                "; CUT SHORT: {} bytes of a partial segment at the end",
                shape.partial_bytes
            )
        } else {
            String::new()
        }
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
    println!("versions             {versions}; permit entries {permit_keys} ({permits_held} held)");
    println!(
        "free space           {} lines ({:.1} MiB)",
        s.free_lines,
        mib(s.free_lines * LINE)
    );
    println!(
        "response area        {:.1} MiB written, {:.1} MiB live",
        mib(s.blob_used_lines * LINE),
        mib(s.blob_live_lines * LINE)
    );
    println!(
        "at open              {} entries, {} corrupt entries skipped, {} corrupt segments skipped, {} duplicates",
        r.entries, r.corrupt_entries, r.corrupt_segments, r.duplicates
    );
    if r.lost_segments > 0 {
        println!(
            "LOST                 {} segment(s) the header records are not in the file; {}",
            r.lost_segments,
            match r.missing_entries {
                Some(n) => format!("{n} entries the store held when it last closed are gone"),
                None => "how many entries is unknown (the store was not closed in good order)"
                    .to_string(),
            }
        );
    } else if let Some(n) = r.missing_entries.filter(|&n| n > 0) {
        println!("missing              {n} entries the store held when it last closed");
    }
    Ok(())
}

/// The kind of a finding: its message without the byte offset, so that findings group.
fn kind_of(what: &str) -> String {
    match what.strip_prefix("corrupt store at byte offset ") {
        Some(rest) => rest.split_once(": ").map_or(rest, |(_, r)| r).to_string(),
        None => what.to_string(),
    }
}

/// `tollgate verify`: `Ok(true)` when the store is clean.
pub fn verify(path: &Path, all: bool, as_json: bool) -> Result<bool, Box<dyn std::error::Error>> {
    let shape = FileShape::of(path)?;
    let pb = progress::spinner(&format!("opening {}", path.display()));
    let store = view(path)?;
    pb.finish_and_clear();
    let r = store.open_report();
    let pb = progress::bar(store.stats().segments, "verifying (segments)");
    let v = store.verify_with(|done, total| {
        pb.set_length(total);
        pb.set_position(done);
    });
    pb.finish_and_clear();
    let mut by_kind: BTreeMap<String, u64> = BTreeMap::new();
    if r.corrupt_entries > 0 {
        by_kind.insert(
            "entry failed its checks at open (skipped)".into(),
            r.corrupt_entries,
        );
    }
    if r.corrupt_segments > 0 {
        by_kind.insert(
            "segment header failed its checks at open (skipped)".into(),
            r.corrupt_segments,
        );
    }
    if shape.is_truncated() {
        by_kind.insert("file cut short (a partial segment at the end)".into(), 1);
    }
    for (_, what) in &v.problems {
        *by_kind.entry(kind_of(what)).or_default() += 1;
    }
    let corrupt: u64 = by_kind.values().sum();
    // Whole corrupt segments, the partial segment, and one line at least per corrupt entry or
    // finding: a lower bound.
    let bytes_affected = r.corrupt_segments * shape.segment_len
        + shape.partial_bytes
        + (r.corrupt_entries + v.problems.len() as u64) * LINE;
    let ok = corrupt == 0;
    let shown = if all {
        v.problems.len()
    } else {
        v.problems.len().min(FIRST_FINDINGS)
    };
    if as_json {
        let findings: Vec<_> = v
            .problems
            .iter()
            .take(shown)
            .map(|(offset, what)| json!({"offset": offset, "kind": kind_of(what), "what": what}))
            .collect();
        let doc = json!({
            "file": path.display().to_string(),
            "ok": ok,
            "entries_checked": v.entries,
            "responses_checked": v.responses,
            "corrupt": corrupt,
            "corrupt_by_kind": by_kind,
            "bytes_affected": bytes_affected,
            "truncated": shape.is_truncated(),
            "partial_segment_bytes": shape.partial_bytes,
            "findings_total": v.problems.len(),
            "findings": findings,
        });
        println!("{doc}");
        return Ok(ok);
    }
    println!(
        "{}: {} entries and {} stored responses checked",
        path.display(),
        v.entries,
        v.responses
    );
    if shape.is_truncated() {
        println!(
            "file cut short: {} bytes, {} bytes of a partial segment at the end (segments are {} bytes); what was past the cut is lost",
            shape.len, shape.partial_bytes, shape.segment_len
        );
    }
    println!("corrupt: {corrupt}; bytes affected: at least {bytes_affected}");
    for (kind, n) in &by_kind {
        println!("  {n:>8}  {kind}");
    }
    if !v.problems.is_empty() {
        println!("findings (byte offset: what failed):");
        for (offset, what) in v.problems.iter().take(shown) {
            println!("  byte {offset}: {what}");
        }
        let rest = v.problems.len() - shown;
        if rest > 0 {
            println!("  and {rest} more like these (--all prints every one)");
        }
    }
    println!("{}", if ok { "ok" } else { "CORRUPT" });
    Ok(ok)
}

/// JSON string of arbitrary bytes: UTF-8 as text, other bytes replaced (U+FFFD).
fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// The name of a record state in JSON.
pub fn state_name(state: RecordState) -> &'static str {
    match state {
        RecordState::Vacant => "vacant",
        RecordState::InFlight => "in_flight",
        RecordState::Completed => "completed",
        RecordState::Changing => "changing",
    }
}

pub fn dump(path: &Path) -> Res {
    use std::io::Write;
    let store = view(path)?;
    let now = store.now_ms();
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    let mut err = None;
    store.visit(now, |e| {
        let doc = match e {
            EntryView::Windows {
                key,
                windows,
                expired,
            } => {
                let ws: Vec<_> = windows
                    .iter()
                    .map(|w| {
                        json!({
                            "window_ms": w.window.as_millis() as u64,
                            "mode": if w.exact { "exact" } else { "bucketed" },
                            "used": w.used,
                        })
                    })
                    .collect();
                json!({"kind": "windows", "key": text(key), "expired": expired, "windows": ws})
            }
            EntryView::Idempotency {
                scope,
                key,
                state,
                fence,
                deadline_ms,
                response_len,
                expired,
            } => json!({
                "kind": "idempotency",
                "scope": text(scope),
                "key": key.hyphenated().to_string(),
                "state": state_name(state),
                "fence": fence,
                "deadline_ms": deadline_ms,
                "response_len": response_len,
                "expired": expired,
            }),
            EntryView::Version { key, epoch, number } => json!({
                "kind": "version",
                "key": text(key),
                "epoch": format!("{epoch:x}"),
                "number": number,
            }),
            EntryView::Permits {
                key,
                held,
                latest_deadline_ms,
                expired,
            } => json!({
                "kind": "permits",
                "key": text(key),
                "held": held,
                "latest_deadline_ms": latest_deadline_ms,
                "expired": expired,
            }),
        };
        if err.is_none() {
            if let Err(e) = writeln!(out, "{doc}") {
                err = Some(e);
            }
        }
    });
    let flushed = out.flush();
    match err.map_or(flushed, Err) {
        // A closed pipe (`tollgate dump f | head`) is not an error.
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(e.into()),
        _ => Ok(()),
    }
}

pub fn compact(path: &Path) -> Res {
    let store = writer(path, "compact")?;
    let before = store.stats();
    let size_before = std::fs::metadata(path)?.len();
    let pb = progress::bar(before.segments, "expiring (segments)");
    let r = store.expire_now_with(store.now_ms(), |done, total| {
        pb.set_length(total);
        pb.set_position(done);
    });
    pb.finish_and_clear();
    let pb = progress::bar(0, "compacting responses");
    let moved = store.compact_now_with(|done, total| {
        pb.set_length(total);
        pb.set_position(done);
    });
    pb.finish_and_clear();
    let pb = progress::spinner(&format!("flushing {}", path.display()));
    let after = store.stats();
    store.flush()?;
    pb.finish_and_clear();
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
