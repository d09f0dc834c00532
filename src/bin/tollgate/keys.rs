//! `inspect` and `delete`: one key at a time (a rate-limit key, or with `--scope` an
//! idempotency record).

use std::path::Path;
use std::time::Duration;

use serde_json::json;
use tollgate::{IdempotencyKey, KeyWindow, Limit, Limits, RecordState};

use crate::look::{state_name, view, writer};
use crate::Res;

/// Parse `LIMIT/WINDOW[:exact]`: `60/1m`, `1000/1h`, `5/10s:exact`, `100/500ms`.
pub fn parse_limit(spec: &str) -> Result<Limit, String> {
    let (body, exact) = match spec.strip_suffix(":exact") {
        Some(b) => (b, true),
        None => (spec, false),
    };
    let (n, w) = body
        .split_once('/')
        .ok_or_else(|| format!("{spec:?}: want LIMIT/WINDOW, e.g. 60/1m"))?;
    let n: u32 = n
        .trim()
        .parse()
        .map_err(|_| format!("{spec:?}: the limit {n:?} is not a number"))?;
    let w = w.trim();
    let split = w.find(|c: char| !c.is_ascii_digit()).unwrap_or(w.len());
    let (num, unit) = w.split_at(split);
    let num: u64 = if num.is_empty() {
        1
    } else {
        num.parse()
            .map_err(|_| format!("{spec:?}: bad window {w:?}"))?
    };
    let ms = match unit {
        "ms" => 1,
        "s" => 1000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        _ => return Err(format!("{spec:?}: the window's unit is ms, s, m, h or d")),
    };
    let limit = Limit::new(n, Duration::from_millis(num.saturating_mul(ms)));
    // Checked as a set of one: the same rules as the policy's.
    Limits::new(&[limit]).map_err(|e| format!("{spec:?}: {e}"))?;
    Ok(if exact { limit.exact() } else { limit })
}

/// "in 1m 05s" / "2.3 s ago": a time relative to now.
fn rel(at_ms: u64, now_ms: u64) -> String {
    let fmt = |ms: u64| {
        let s = ms / 1000;
        if s >= 3600 {
            format!("{}h {:02}m", s / 3600, (s % 3600) / 60)
        } else if s >= 60 {
            format!("{}m {:02}s", s / 60, s % 60)
        } else {
            format!("{:.1} s", ms as f64 / 1000.0)
        }
    };
    if at_ms >= now_ms {
        format!("in {}", fmt(at_ms - now_ms))
    } else {
        format!("{} ago", fmt(now_ms - at_ms))
    }
}

fn window_json(w: &KeyWindow, now: u64) -> serde_json::Value {
    json!({
        "window_ms": w.window.as_millis() as u64,
        "mode": if w.exact { "exact" } else { "bucketed" },
        "limit": w.limit,
        "used": w.used,
        "left": w.left,
        "reset_ms": w.reset_ms,
        "reset_in_ms": w.reset_ms.saturating_sub(now),
        "sub_window_ms": w.sub_window.as_millis() as u64,
        "sub_windows": w.sub_windows.iter().map(|s| json!({"start_ms": s.start_ms, "used": s.used})).collect::<Vec<_>>(),
    })
}

/// The store key of rate-limit `key`: the key itself, or with a gateway group the gateway's
/// key of (token `key`, the group): the group's name, a NUL byte, the token (docs/GATEWAY.md,
/// "Tokens and keys"). A NUL cannot be typed in an argument, hence `--group`.
fn store_key(key: &str, group: Option<&str>) -> Vec<u8> {
    match group {
        Some(g) => [g.as_bytes(), &[0], key.as_bytes()].concat(),
        None => key.as_bytes().to_vec(),
    }
}

/// How a rate-limit key is named in text output.
fn label(key: &str, group: Option<&str>) -> String {
    match group {
        Some(g) => format!("{key} in group {g}"),
        None => key.to_string(),
    }
}

pub fn inspect(
    path: &Path,
    key: &str,
    scope: Option<&str>,
    group: Option<&str>,
    limits: &[Limit],
    as_json: bool,
) -> Res {
    let store = view(path)?;
    let now = store.now_ms();
    if let Some(scope) = scope {
        let ik = IdempotencyKey::parse(key)?;
        let r = store.inspect_record(scope.as_bytes(), &ik, now)?;
        if as_json {
            let doc = match r {
                None => {
                    json!({"kind": "idempotency", "scope": scope, "key": key, "found": false, "now_ms": now})
                }
                Some(r) => json!({
                    "kind": "idempotency",
                    "scope": scope,
                    "key": key,
                    "found": true,
                    "now_ms": now,
                    "offset": r.offset,
                    "state": state_name(r.state),
                    "fence": r.fence,
                    "deadline_ms": r.deadline_ms,
                    "left_ms": r.deadline_ms.saturating_sub(now),
                    "status": r.status,
                    "response_len": r.response_len,
                    "expired": r.expired,
                }),
            };
            println!("{doc}");
            return Ok(());
        }
        let Some(r) = r else {
            println!("{scope} {key}: no idempotency record (a request with this key runs)");
            return Ok(());
        };
        let what = match (r.state, r.expired) {
            (_, true) if r.state == RecordState::Vacant => {
                "aborted: the key is free (a request with it runs)".to_string()
            }
            (RecordState::InFlight, false) => format!(
                "in flight: a request holds the lease until {} (fence {}); a retry now gets 409",
                rel(r.deadline_ms, now),
                r.fence
            ),
            (RecordState::InFlight, true) => format!(
                "in flight, lease expired {} (fence {}): the next request takes the key over",
                rel(r.deadline_ms, now),
                r.fence
            ),
            (RecordState::Completed, false) => format!(
                "completed with status {}: retries replay it; expires {} ({} bytes stored, fence {})",
                r.status.map_or("unreadable".to_string(), |s| s.to_string()),
                rel(r.deadline_ms, now),
                r.response_len.unwrap_or(0),
                r.fence
            ),
            (RecordState::Completed, true) => format!(
                "completed with status {}, expired {}: the key is free",
                r.status.map_or("unreadable".to_string(), |s| s.to_string()),
                rel(r.deadline_ms, now)
            ),
            _ => "being completed or replaced at this instant: look again".to_string(),
        };
        println!("{scope} {key}: {what}");
        return Ok(());
    }
    let set = if limits.is_empty() {
        None
    } else {
        Some(Limits::new(limits)?)
    };
    let r = store.inspect_key(&store_key(key, group), set.as_ref(), now)?;
    if as_json {
        let mut doc = match r {
            None => json!({"kind": "windows", "key": key, "found": false, "now_ms": now}),
            Some(r) => json!({
                "kind": "windows",
                "key": key,
                "found": true,
                "now_ms": now,
                "offset": r.offset,
                "windows": r.windows.iter().map(|w| window_json(w, now)).collect::<Vec<_>>(),
            }),
        };
        if let (Some(g), Some(obj)) = (group, doc.as_object_mut()) {
            obj.insert("group".into(), g.into());
        }
        println!("{doc}");
        return Ok(());
    }
    let key = label(key, group);
    let Some(r) = r else {
        println!("{key}: no counters (never seen, expired, or deleted): a full quota");
        return Ok(());
    };
    let summary: Vec<String> = r
        .windows
        .iter()
        .map(|w| {
            let win = humantime(w.window);
            match (w.limit, w.left) {
                (Some(l), Some(left)) => format!("{}/{l} per {win} ({left} left)", w.used),
                _ => format!("{} per {win}", w.used),
            }
        })
        .collect();
    println!("{key}: {}", summary.join(", "));
    for w in &r.windows {
        let limit = match (w.limit, w.left) {
            (Some(l), Some(left)) => format!("limit {l}, used {}, left {left}", w.used),
            _ => format!("limit unknown (pass --limit), used {}", w.used),
        };
        println!(
            "  {} {}: {limit}, full again {}",
            humantime(w.window),
            if w.exact { "exact" } else { "bucketed" },
            rel(w.reset_ms, now)
        );
        if w.exact {
            let times: Vec<String> = w.sub_windows.iter().map(|s| rel(s.start_ms, now)).collect();
            println!(
                "    requests in the window: {}",
                if times.is_empty() {
                    "none".into()
                } else {
                    times.join(", ")
                }
            );
        } else {
            let counts: Vec<String> = w.sub_windows.iter().map(|s| s.used.to_string()).collect();
            println!(
                "    sub-windows of {}, newest first: {}",
                humantime(w.sub_window),
                counts.join(" ")
            );
        }
    }
    Ok(())
}

/// `1m`, `1h`, `10s`, `500ms`.
fn humantime(d: Duration) -> String {
    let ms = d.as_millis() as u64;
    match ms {
        0 => "0s".into(),
        _ if ms.is_multiple_of(86_400_000) => format!("{}d", ms / 86_400_000),
        _ if ms.is_multiple_of(3_600_000) => format!("{}h", ms / 3_600_000),
        _ if ms.is_multiple_of(60_000) => format!("{}m", ms / 60_000),
        _ if ms.is_multiple_of(1000) => format!("{}s", ms / 1000),
        _ => format!("{ms}ms"),
    }
}

pub fn delete(path: &Path, key: &str, scope: Option<&str>, group: Option<&str>) -> Res {
    let store = writer(path, "delete")?;
    let (found, what) = match scope {
        Some(scope) => {
            let ik = IdempotencyKey::parse(key)?;
            (
                store.delete_record(scope.as_bytes(), &ik)?,
                format!("the idempotency record {key} of scope {scope}"),
            )
        }
        None => (
            store.delete_key(&store_key(key, group))?,
            format!("the counters of {}", label(key, group)),
        ),
    };
    store.flush()?;
    if found {
        println!("deleted {what}");
    } else {
        println!("nothing to delete: the store holds no {what}");
    }
    Ok(())
}
