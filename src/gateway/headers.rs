//! Response headers and bodies from a [`Decision`]: the values clients already understand.
//!
//! * On every response of a rate-limited route: `X-RateLimit-Limit`, `X-RateLimit-Remaining`
//!   and `X-RateLimit-Reset` (UTC epoch seconds) of the binding window.
//! * On a 429: `Retry-After`, whole seconds rounded up ([`Decision::retry_after`]).
//! * Optionally the IETF fields of draft-ietf-httpapi-ratelimit-headers-12, one item per
//!   window: `RateLimit-Policy: "name";q=60;w=60` and `RateLimit: "name";r=42;t=18`, written
//!   by [`super::ietf`] (the thin wrappers here keep their older names).
//! * The bodies of the gateway's refusals, in each [`BodyStyle`] (the problem details of the
//!   `problem` style are written by `problem.rs`).
//!
//! ```
//! use http::HeaderMap;
//! use tollgate::gateway::headers;
//! use tollgate::{Limit, Limits, Options, Store};
//!
//! let store = Store::open_in_memory(Options::default())?;
//! let limits = Limits::new(&[Limit::per_minute(60)])?;
//! let d = store.check(b"tok", &limits, 1)?;
//! let mut h = HeaderMap::new();
//! headers::insert_rate_limit(&mut h, &d);
//! assert_eq!(h["x-ratelimit-limit"], "60");
//! assert_eq!(h["x-ratelimit-remaining"], "59");
//! assert!(h.get("retry-after").is_none());
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use http::{HeaderMap, HeaderName, HeaderValue};

use super::problem::push_json_str;
use super::settings::BodyStyle;
use super::{ietf, problem};
use crate::Decision;

/// `X-RateLimit-Limit`: the limit of the binding window.
pub const X_RATELIMIT_LIMIT: HeaderName = HeaderName::from_static("x-ratelimit-limit");
/// `X-RateLimit-Remaining`: what is left in the most restrictive window.
pub const X_RATELIMIT_REMAINING: HeaderName = HeaderName::from_static("x-ratelimit-remaining");
/// `X-RateLimit-Reset`: UTC epoch seconds at which the binding window is back to its limit.
pub const X_RATELIMIT_RESET: HeaderName = HeaderName::from_static("x-ratelimit-reset");
pub use super::ietf::{RATELIMIT, RATELIMIT_POLICY};
/// `Idempotent-Replayed: true` marks a response replayed from the idempotency store.
pub const IDEMPOTENT_REPLAYED: HeaderName = HeaderName::from_static("idempotent-replayed");
/// `Idempotency-Key`: the request header naming a retryable request.
pub const IDEMPOTENCY_KEY: HeaderName = HeaderName::from_static("idempotency-key");

/// The 429 message of the concurrency cap.
pub const TOO_MANY_CONCURRENT: &str = "Too many concurrent connections.";
/// The 412 message of a stale `If-Match`.
pub const RESOURCE_CHANGED: &str = "Resource has changed, please GET again.";
/// The 422 message of an `Idempotency-Key` reused with another request.
pub const KEY_REUSED: &str = "Idempotency-Key was used with a different body.";

/// Set `X-RateLimit-Limit`, `X-RateLimit-Remaining` and `X-RateLimit-Reset` from `d`, and
/// `Retry-After` when `d` refused the request (removed otherwise).
pub fn insert_rate_limit(headers: &mut HeaderMap, d: &Decision) {
    headers.insert(X_RATELIMIT_LIMIT, HeaderValue::from(d.limit()));
    headers.insert(X_RATELIMIT_REMAINING, HeaderValue::from(d.remaining()));
    headers.insert(X_RATELIMIT_RESET, HeaderValue::from(d.reset()));
    insert_retry_after(headers, d);
}

/// Set `Retry-After` when `d` refused the request, remove it otherwise: what
/// [`insert_rate_limit`] does besides the `X-RateLimit-*` fields (`headers = "ietf"` sends
/// no `X-RateLimit-*` field, and still `Retry-After`).
pub fn insert_retry_after(headers: &mut HeaderMap, d: &Decision) {
    match d.retry_after() {
        Some(secs) => {
            headers.insert(http::header::RETRY_AFTER, HeaderValue::from(secs));
        }
        None => {
            headers.remove(http::header::RETRY_AFTER);
        }
    }
}

/// The IETF policy name of one window of `group` ([`ietf::policy_name`]): the group's name
/// when `d` has one window, `name-<window>` (`api-60s`, `api-1h`) when it has several.
pub fn window_name(group: &str, d: &Decision, i: usize) -> String {
    ietf::policy_name(group, d, i)
}

/// `RateLimit-Policy`: `"name";q=<limit>;w=<window seconds>` for each window of `d` (no `pk`,
/// no concurrency item: see [`ietf::policy_field`] for those).
pub fn ietf_policy(group: &str, d: &Decision) -> Option<HeaderValue> {
    HeaderValue::try_from(ietf::policy_field(group, d, &ietf::Extras::default())).ok()
}

/// `RateLimit`: `"name";r=<remaining>;t=<seconds>` for each window of `d`, with `now_ms` the
/// store's clock; `t` as [`ietf::reset_secs`] gives it.
pub fn ietf_ratelimit(group: &str, d: &Decision, now_ms: u64) -> Option<HeaderValue> {
    HeaderValue::try_from(ietf::ratelimit_field(
        group,
        d,
        now_ms,
        &ietf::Extras::default(),
    ))
    .ok()
}

/// Set `RateLimit-Policy` and `RateLimit` from `d` ([`ietf::insert`] without extras).
pub fn insert_ietf(headers: &mut HeaderMap, group: &str, d: &Decision, now_ms: u64) {
    ietf::insert(headers, group, d, now_ms, &ietf::Extras::default());
}

/// The 429 body of a rate-limit refusal, `retry_after` seconds from now:
///
/// * [`BodyStyle::Message`]: `{"message": "Too many requests. Retry after 25 seconds."}`
/// * [`BodyStyle::Error`]:
///   `{"error": {"code": "RATE_LIMITED", "message": "Rate limit exceeded. Retry after 12s"}}`
/// * [`BodyStyle::Problem`]: a quota-exceeded problem naming no policy; the middleware names
///   the violated ones with [`too_many_requests_naming`].
pub fn too_many_requests(style: BodyStyle, retry_after: u64) -> String {
    let none: [&str; 0] = [];
    too_many_requests_naming(style, retry_after, &none)
}

/// [`too_many_requests`], with the names of the violated policies for the `problem` style's
/// `violated-policies` (ignored by the other styles).
pub fn too_many_requests_naming<S: AsRef<str>>(
    style: BodyStyle,
    retry_after: u64,
    violated: &[S],
) -> String {
    let unit = if retry_after == 1 {
        "second"
    } else {
        "seconds"
    };
    let message = format!("Too many requests. Retry after {retry_after} {unit}.");
    match style {
        BodyStyle::Message => error_body(style, "RATE_LIMITED", &message),
        BodyStyle::Error => error_body(
            style,
            "RATE_LIMITED",
            &format!("Rate limit exceeded. Retry after {retry_after}s"),
        ),
        BodyStyle::Problem => problem::quota_exceeded("RATE_LIMITED", &message, violated),
    }
}

/// A JSON error body in `style`: `{"message": "..."}` or
/// `{"error": {"code": "...", "message": "..."}}`; in the `problem` style a problem of type
/// `about:blank` without a status (see [`refusal_body`], which has one).
pub fn error_body(style: BodyStyle, code: &str, message: &str) -> String {
    refusal_body(style, 0, code, message)
}

/// The body of a refusal with HTTP status `status`: as [`error_body`], and in the `problem`
/// style `{"type": "about:blank", "title": <reason phrase>, "status": <status>, "detail":
/// <message>, "code": <code>}`.
pub fn refusal_body(style: BodyStyle, status: u16, code: &str, message: &str) -> String {
    let mut s = String::with_capacity(message.len() + code.len() + 40);
    match style {
        BodyStyle::Message => {
            s.push_str("{\"message\": ");
            push_json_str(&mut s, message);
            s.push('}');
        }
        BodyStyle::Error => {
            s.push_str("{\"error\": {\"code\": ");
            push_json_str(&mut s, code);
            s.push_str(", \"message\": ");
            push_json_str(&mut s, message);
            s.push_str("}}");
        }
        BodyStyle::Problem => return problem::problem(status, code, message),
    }
    s
}

/// The media type of a body in `style`: `application/json`, or `application/problem+json`
/// for [`BodyStyle::Problem`].
pub fn content_type(style: BodyStyle) -> &'static str {
    match style {
        BodyStyle::Message | BodyStyle::Error => "application/json",
        BodyStyle::Problem => problem::PROBLEM_JSON,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Limit, Limits, Options, Store};

    const T0: u64 = 1_700_000_040_000; // a whole minute

    fn decisions(limits: &Limits, n: u32, now: u64) -> Vec<Decision> {
        let store = Store::open_in_memory(Options::default()).unwrap();
        (0..n)
            .map(|_| store.check_at(b"tok", limits, 1, now).unwrap())
            .collect()
    }

    #[test]
    fn x_ratelimit_values() {
        let limits = Limits::new(&[Limit::per_minute(10)]).unwrap();
        let ds = decisions(&limits, 11, T0);
        let mut h = HeaderMap::new();
        insert_rate_limit(&mut h, &ds[0]);
        assert_eq!(h[&X_RATELIMIT_LIMIT], "10");
        assert_eq!(h[&X_RATELIMIT_REMAINING], "9");
        let reset: u64 = h[&X_RATELIMIT_RESET].to_str().unwrap().parse().unwrap();
        assert_eq!(reset, ds[0].reset());
        assert!(reset > T0 / 1000 && reset <= T0 / 1000 + 60 + 4, "{reset}");
        assert!(h.get(http::header::RETRY_AFTER).is_none());

        let refused = ds[10];
        assert!(!refused.allowed());
        insert_rate_limit(&mut h, &refused);
        assert_eq!(h[&X_RATELIMIT_REMAINING], "0");
        let retry: u64 = h[http::header::RETRY_AFTER]
            .to_str()
            .unwrap()
            .parse()
            .unwrap();
        assert_eq!(Some(retry), refused.retry_after());
        assert!((60..=64).contains(&retry), "{retry}");
        // An admitted decision afterwards clears Retry-After.
        insert_rate_limit(&mut h, &ds[1]);
        assert!(h.get(http::header::RETRY_AFTER).is_none());
    }

    #[test]
    fn retry_after_rounds_up() {
        let limits = Limits::new(&[Limit::per_minute(1).exact()]).unwrap();
        let store = Store::open_in_memory(Options::default()).unwrap();
        assert!(store.check_at(b"t", &limits, 1, T0).unwrap().allowed());
        let d = store.check_at(b"t", &limits, 1, T0 + 35_500).unwrap();
        let mut h = HeaderMap::new();
        insert_rate_limit(&mut h, &d);
        // 24.5 s left: 25 whole seconds.
        assert_eq!(h[http::header::RETRY_AFTER], "25");
        let d = store.check_at(b"t", &limits, 1, T0 + 59_001).unwrap();
        insert_rate_limit(&mut h, &d);
        // 999 ms left: one whole second.
        assert_eq!(h[http::header::RETRY_AFTER], "1");
    }

    #[test]
    fn ietf_fields() {
        let one = Limits::new(&[Limit::per_minute(60)]).unwrap();
        let d = decisions(&one, 18, T0)[17];
        let mut h = HeaderMap::new();
        insert_ietf(&mut h, "pbx", &d, T0);
        assert_eq!(h[&RATELIMIT_POLICY], "\"pbx\";q=60;w=60");
        let t = d.windows()[0].reset_ms().saturating_sub(T0).div_ceil(1000);
        assert_eq!(h[&RATELIMIT], format!("\"pbx\";r=42;t={t}").as_str());

        let two = Limits::new(&[Limit::per_minute(60), Limit::per_hour(1000)]).unwrap();
        let d = decisions(&two, 1, T0)[0];
        insert_ietf(&mut h, "api", &d, T0);
        assert_eq!(
            h[&RATELIMIT_POLICY],
            "\"api-60s\";q=60;w=60, \"api-1h\";q=1000;w=3600"
        );
        let r = h[&RATELIMIT].to_str().unwrap();
        assert!(r.starts_with("\"api-60s\";r=59;t="), "{r}");
        assert!(r.contains(", \"api-1h\";r=999;t="), "{r}");
    }

    #[test]
    fn body_styles() {
        assert_eq!(
            too_many_requests(BodyStyle::Message, 25),
            r#"{"message": "Too many requests. Retry after 25 seconds."}"#
        );
        assert_eq!(
            too_many_requests(BodyStyle::Message, 1),
            r#"{"message": "Too many requests. Retry after 1 second."}"#
        );
        assert_eq!(
            too_many_requests(BodyStyle::Error, 12),
            r#"{"error": {"code": "RATE_LIMITED", "message": "Rate limit exceeded. Retry after 12s"}}"#
        );
        assert_eq!(
            error_body(BodyStyle::Message, "X", TOO_MANY_CONCURRENT),
            r#"{"message": "Too many concurrent connections."}"#
        );
        assert_eq!(
            error_body(BodyStyle::Error, "C", "a \"quoted\"\n\\ \u{1}"),
            r#"{"error": {"code": "C", "message": "a \"quoted\"\n\\ \u0001"}}"#
        );
    }
}
