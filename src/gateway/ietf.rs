//! The IETF rate-limit fields, `RateLimit-Policy` and `RateLimit`, as
//! draft-ietf-httpapi-ratelimit-headers-12 writes them.
//!
//! This file exists because the draft's syntax and meaning moved since the fields were first
//! sent here: in -12 both fields are Structured Field Lists (RFC 9651) of Items, each Item a
//! String naming a quota policy, with parameters, and `t` is the time until *more* quota is
//! made available (no longer a reset of the whole window). Keeping the -12 rules in one place
//! (names, `t`, `pk`, the concurrency item, the violated policies of a problem body) lets the
//! legacy `X-RateLimit-*` code in [`super::headers`] stay as it was.
//!
//! ```text
//! RateLimit-Policy: "api-60s";q=60;w=60, "api-1h";q=1000;w=3600
//! RateLimit: "api-60s";r=0;t=25, "api-1h";r=940
//! ```
//!
//! * **Names.** One item per window of the request's group: the group's name when it has one
//!   window (`"pbx"`), `group-<window>` when it has several (`"api-60s"`, `"api-1h"`; the window
//!   written as in a policy file). The concurrency cap is the item `"concurrency"`.
//! * **`RateLimit-Policy`**: `q` the window's limit, `w` its length in seconds (rounded up),
//!   and for a metered group `qu`, its quota unit (`qu="tokens"`: the draft's default unit is
//!   requests); the cap as `"concurrency";q=<cap>;qu="concurrent-requests"` (no window).
//! * **`RateLimit`**: `r` what is left, `t` ([`reset_secs`]) the seconds until the window gives
//!   quota back. The cap as `"concurrency";r=<free slots>`, without `t`.
//! * **`pk`** on every item when enabled: a keyed hash of the token ([`super::PartitionKey`]).
//!
//! The legacy fields agree with these: `X-RateLimit-Limit` and `X-RateLimit-Remaining` are the
//! `q` and `r` of the binding window's item, and `Retry-After` is never earlier than any `t`.

use std::fmt::Write as _;

use http::{HeaderMap, HeaderName, HeaderValue};

use super::config::format_window;
use super::partition::PartitionKey;
use crate::{Decision, WindowState};

/// `RateLimit-Policy` (IETF draft): the quota policies, one item per window.
pub const RATELIMIT_POLICY: HeaderName = HeaderName::from_static("ratelimit-policy");
/// `RateLimit` (IETF draft): what is left of each policy, and when it resets.
pub const RATELIMIT: HeaderName = HeaderName::from_static("ratelimit");

/// The name of the concurrency cap's item.
pub const CONCURRENCY_POLICY: &str = "concurrency";

/// The quota unit of the concurrency cap's item (`qu`).
pub const CONCURRENT_REQUESTS: &str = "concurrent-requests";

/// The problem type of a refusal over quota (`application/problem+json`).
pub const QUOTA_EXCEEDED: &str = "https://iana.org/assignments/http-problem-types#quota-exceeded";

/// The per-token concurrency cap, as the fields advertise it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Concurrency {
    /// The cap (`max_concurrent_per_token`).
    pub cap: u32,
    /// The token's requests in flight now, this one included when it holds a slot.
    pub in_flight: u32,
}

/// What the fields carry beyond the windows of a decision.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Extras<'a> {
    /// The `pk` parameter of every item, if enabled.
    pub partition_key: Option<&'a PartitionKey>,
    /// The concurrency cap's item, if a cap is set.
    pub concurrency: Option<Concurrency>,
    /// A peek made at the same instant (what a request of cost 1 would get), when
    /// [`needs_refill`] says so: a window the admitted request left with nothing takes its `t`
    /// from it, the exact wait until one unit is back (rather than its full reset).
    pub refill: Option<&'a Decision>,
    /// The quota unit of the windows (`qu`), for a metered group; `None`: requests, the
    /// draft's default, left unsaid.
    pub unit: Option<&'a str>,
}

/// Whether `d` admitted a request that left a window with nothing: only then does
/// [`ratelimit_field`] use [`Extras::refill`].
pub fn needs_refill(d: &Decision) -> bool {
    d.allowed() && d.windows().iter().any(|w| w.remaining() == 0)
}

/// The policy name of window `i` of `d`, in a group named `group`: the group's name when `d`
/// has one window, `group-<window>` (`api-60s`, `api-1h`) when it has several.
pub fn policy_name(group: &str, d: &Decision, i: usize) -> String {
    let windows = d.windows();
    match windows.get(i) {
        Some(w) if windows.len() > 1 => {
            format!("{group}-{}", format_window(w.window().as_millis() as u64))
        }
        _ => group.to_string(),
    }
}

/// A window's `w`: its length in whole seconds, rounded up (at least 1, as the draft requires).
pub fn window_secs(w: &WindowState) -> u64 {
    (w.window().as_millis() as u64).div_ceil(1000).max(1)
}

/// A window's `t`: whole seconds, rounded up, until it gives quota back, or `None` when the
/// item carries no `t`.
///
/// * A window without room for the request (a violated one, or an empty one in a peek): the
///   wait until it has room, the very figure `Retry-After` is the maximum of. So no `t` is ever
///   later than `Retry-After`.
/// * On a refusal (`refused`), a window that still has room: no `t`. Its next release is not
///   known, and its full reset may be later than `Retry-After`, which the draft forbids.
/// * Otherwise, a window that has counted something: the seconds until it is back to its full
///   limit. All of its used quota is back by then, so more quota is available by then (with a
///   sliding window, some comes back sooner). [`ratelimit_field`] does better for a window left
///   with nothing, from [`Extras::refill`].
/// * A window that has counted nothing has nothing to give back: no `t`.
pub fn reset_secs(w: &WindowState, refused: bool, now_ms: u64) -> Option<u64> {
    if !w.fits() {
        Some(w.retry_after_ms().div_ceil(1000))
    } else if refused || w.used() == 0 {
        None
    } else {
        Some(w.reset_ms().saturating_sub(now_ms).div_ceil(1000))
    }
}

/// Append `s` as an RFC 9651 String: quoted, `"` and `\` escaped; other bytes outside printable
/// ASCII are left out (a policy name never holds one).
fn push_sf_string(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' | '\\' => {
                out.push('\\');
                out.push(c);
            }
            ' '..='~' => out.push(c),
            _ => {}
        }
    }
    out.push('"');
}

fn push_pk(out: &mut String, pk: Option<&PartitionKey>) {
    if let Some(pk) = pk {
        let _ = write!(out, ";pk={pk}");
    }
}

fn push_sep(out: &mut String) {
    if !out.is_empty() {
        out.push_str(", ");
    }
}

/// The value of `RateLimit-Policy`: an item per window of `d` (with `qu` when
/// [`Extras::unit`] says), then the concurrency cap's.
pub fn policy_field(group: &str, d: &Decision, extras: &Extras<'_>) -> String {
    let mut s = String::with_capacity(48 * (d.windows().len() + 1));
    for (i, w) in d.windows().iter().enumerate() {
        push_sep(&mut s);
        push_sf_string(&mut s, &policy_name(group, d, i));
        let _ = write!(s, ";q={};w={}", w.limit(), window_secs(w));
        if let Some(unit) = extras.unit {
            s.push_str(";qu=");
            push_sf_string(&mut s, unit);
        }
        push_pk(&mut s, extras.partition_key);
    }
    if let Some(c) = extras.concurrency {
        push_sep(&mut s);
        push_sf_string(&mut s, CONCURRENCY_POLICY);
        let _ = write!(s, ";q={};qu=", c.cap);
        push_sf_string(&mut s, CONCURRENT_REQUESTS);
        push_pk(&mut s, extras.partition_key);
    }
    s
}

/// The value of `RateLimit`: an item per window of `d` (`r`, and `t` by [`reset_secs`], of the
/// refill peek's window for one left with nothing), then the concurrency cap's (`r`: the slots
/// left), with `now_ms` the backend's clock.
pub fn ratelimit_field(group: &str, d: &Decision, now_ms: u64, extras: &Extras<'_>) -> String {
    let mut s = String::with_capacity(48 * (d.windows().len() + 1));
    let refused = !d.allowed();
    for (i, w) in d.windows().iter().enumerate() {
        push_sep(&mut s);
        push_sf_string(&mut s, &policy_name(group, d, i));
        let _ = write!(s, ";r={}", w.remaining());
        let refill = match extras.refill.and_then(|p| p.windows().get(i)) {
            Some(p) if !refused && w.remaining() == 0 && !p.fits() => Some(p),
            _ => None,
        };
        if let Some(t) = reset_secs(refill.unwrap_or(w), refused, now_ms) {
            let _ = write!(s, ";t={t}");
        }
        push_pk(&mut s, extras.partition_key);
    }
    if let Some(c) = extras.concurrency {
        push_sep(&mut s);
        push_sf_string(&mut s, CONCURRENCY_POLICY);
        let _ = write!(s, ";r={}", c.cap.saturating_sub(c.in_flight));
        push_pk(&mut s, extras.partition_key);
    }
    s
}

/// The names of the windows of `d` that refused the request, in order (empty when admitted):
/// the `violated-policies` of a problem body.
pub fn violated_policies(group: &str, d: &Decision) -> Vec<String> {
    if d.allowed() {
        return Vec::new();
    }
    d.windows()
        .iter()
        .enumerate()
        .filter(|(_, w)| !w.fits())
        .map(|(i, _)| policy_name(group, d, i))
        .collect()
}

/// Set `RateLimit-Policy` and `RateLimit` from `d` and `extras`.
pub fn insert(
    headers: &mut HeaderMap,
    group: &str,
    d: &Decision,
    now_ms: u64,
    extras: &Extras<'_>,
) {
    if let Ok(v) = HeaderValue::try_from(policy_field(group, d, extras)) {
        headers.insert(RATELIMIT_POLICY, v);
    }
    if let Ok(v) = HeaderValue::try_from(ratelimit_field(group, d, now_ms, extras)) {
        headers.insert(RATELIMIT, v);
    }
}

#[cfg(test)]
#[path = "ietf_tests.rs"]
mod tests;
