//! Refusal bodies as RFC 9457 problem details (`application/problem+json`), the third
//! [`BodyStyle`](super::BodyStyle), `body_style = "problem"`.
//!
//! This file exists for the one problem type draft-ietf-httpapi-ratelimit-headers-12 defines
//! for a 429, `https://iana.org/assignments/http-problem-types#quota-exceeded`, whose
//! `violated-policies` member names every quota policy the request exceeded. tollgate knows
//! them all at once (a check evaluates every window of the group), so the body lists each
//! violated window by the name its `RateLimit` item carries ([`super::ietf::policy_name`]):
//!
//! ```text
//! {"type": "https://iana.org/assignments/http-problem-types#quota-exceeded",
//!  "title": "Request cannot be satisfied as assigned quota has been exceeded",
//!  "status": 429, "detail": "Too many requests. Retry after 25 seconds.",
//!  "code": "RATE_LIMITED", "violated-policies": ["api-60s", "api-1h"]}
//! ```
//!
//! (one line on the wire). The gateway's other refusals use the type `about:blank` with the
//! status's reason phrase as the title, the message as `detail`, and the same `code` as the
//! `error` style. The `message` and `error` styles are untouched and stay the default.

use std::fmt::Write as _;

/// The media type of a problem body.
pub const PROBLEM_JSON: &str = "application/problem+json";

/// The `title` of a quota-exceeded problem (the draft's own wording).
pub const QUOTA_EXCEEDED_TITLE: &str =
    "Request cannot be satisfied as assigned quota has been exceeded";

/// A quota-exceeded problem (a 429): `detail` the message, `violated` the names of the
/// violated policies (for the rate limit, every violated window; for the concurrency cap,
/// `"concurrency"`).
pub fn quota_exceeded<S: AsRef<str>>(code: &str, detail: &str, violated: &[S]) -> String {
    let mut s = String::with_capacity(256 + detail.len());
    s.push_str("{\"type\": ");
    push_json_str(&mut s, super::ietf::QUOTA_EXCEEDED);
    s.push_str(", \"title\": ");
    push_json_str(&mut s, QUOTA_EXCEEDED_TITLE);
    s.push_str(", \"status\": 429, \"detail\": ");
    push_json_str(&mut s, detail);
    s.push_str(", \"code\": ");
    push_json_str(&mut s, code);
    s.push_str(", \"violated-policies\": [");
    for (i, name) in violated.iter().enumerate() {
        if i > 0 {
            s.push_str(", ");
        }
        push_json_str(&mut s, name.as_ref());
    }
    s.push_str("]}");
    s
}

/// Any other refusal: type `about:blank`, the status's reason phrase as `title` (left out
/// when `status` is 0 or has none), `detail` the message, and `code`.
pub fn problem(status: u16, code: &str, detail: &str) -> String {
    let mut s = String::with_capacity(128 + detail.len());
    s.push_str("{\"type\": \"about:blank\"");
    let title = http::StatusCode::from_u16(status)
        .ok()
        .and_then(|st| st.canonical_reason());
    if let Some(title) = title {
        s.push_str(", \"title\": ");
        push_json_str(&mut s, title);
        s.push_str(&format!(", \"status\": {status}"));
    }
    s.push_str(", \"detail\": ");
    push_json_str(&mut s, detail);
    s.push_str(", \"code\": ");
    push_json_str(&mut s, code);
    s.push('}');
    s
}

/// `v` as a JSON string (quoted and escaped) at the end of `out`.
pub(crate) fn push_json_str(out: &mut String, v: &str) {
    out.push('"');
    for c in v.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if u32::from(c) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", u32::from(c));
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quota_exceeded_names_every_violated_policy() {
        let body = quota_exceeded(
            "RATE_LIMITED",
            "Too many requests. Retry after 25 seconds.",
            &["api-60s", "api-1h"],
        );
        assert_eq!(
            body,
            r#"{"type": "https://iana.org/assignments/http-problem-types#quota-exceeded", "title": "Request cannot be satisfied as assigned quota has been exceeded", "status": 429, "detail": "Too many requests. Retry after 25 seconds.", "code": "RATE_LIMITED", "violated-policies": ["api-60s", "api-1h"]}"#
        );
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["violated-policies"][1], "api-1h");
        let none: [&str; 0] = [];
        assert!(quota_exceeded("X", "d", &none).ends_with(r#""violated-policies": []}"#));
    }

    #[test]
    fn other_problems_use_about_blank() {
        assert_eq!(
            problem(401, "UNAUTHORIZED", "Missing or malformed bearer token."),
            r#"{"type": "about:blank", "title": "Unauthorized", "status": 401, "detail": "Missing or malformed bearer token.", "code": "UNAUTHORIZED"}"#
        );
        assert_eq!(
            problem(0, "C", "a \"b\""),
            r#"{"type": "about:blank", "detail": "a \"b\"", "code": "C"}"#
        );
        let v: serde_json::Value =
            serde_json::from_str(&problem(412, "PRECONDITION_FAILED", "x")).unwrap();
        assert_eq!(v["status"], 412);
    }
}
