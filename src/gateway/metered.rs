//! Metered groups: a request's cost is known only once the upstream has answered.
//!
//! An API in front of an LLM or a metered service charges tokens, bytes or milliseconds, and
//! learns how many from the upstream's response. A group with a `[group.metered]` table counts
//! those units: before the upstream it reserves an estimate ([`crate::debit`]), and when the
//! usage is known it settles the reservation with it (`settle.rs` does that side). This file is
//! the policy's part, which needs no HTTP server: the table's keys, their validation with the
//! line of a bad value, and reading an estimate from a request and a usage from a response.
//!
//! ```toml
//! [[group]]
//! name = "chat"
//! route = "/v1/chat/*"
//! windows = [{ limit = 1000, window = "60s" }, { limit = 50000, window = "1d" }]
//!
//! [group.metered]
//! unit = "tokens"                    # the IETF policy's `qu`
//! estimate = 200                     # reserved per request (default 0)
//! estimate_header = "x-max-tokens"   # or the request's own bound, capped at the smallest limit
//! usage_header = "x-usage-tokens"    # the usage, in the response head
//! usage_trailer = "x-usage-tokens"   # or at the end of a streamed body
//! reservation_ttl = "15m"            # how long a reservation can be settled
//! ```

use std::time::Duration;

use http::{HeaderMap, HeaderName, HeaderValue};
use toml::Spanned;

use super::config::{parse_day_at_most, Locator, PolicyError, RawMetered};
use crate::debit::DEFAULT_RESERVATION_TTL;
use crate::Limits;

/// The longest quota unit name, in bytes.
pub const MAX_UNIT_LEN: usize = 32;

/// A group's metering: its unit, how its estimate is made and where its usage is read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Metered {
    unit: Box<str>,
    estimate: u32,
    estimate_header: Option<HeaderName>,
    usage_header: Option<HeaderName>,
    usage_trailer: Option<HeaderName>,
    reservation_ttl: Duration,
}

/// What a response says of its usage.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Usage {
    /// The units it used.
    Reported(u32),
    /// It does not say.
    Missing,
    /// It says something that is not a whole number of units.
    Invalid,
}

impl Metered {
    /// The quota unit (`unit`), the `qu` of the group's items in `RateLimit-Policy`.
    pub fn unit(&self) -> &str {
        &self.unit
    }

    /// The fixed estimate (`estimate`, default 0: admitted while any quota is left, charged
    /// afterwards).
    pub fn estimate(&self) -> u32 {
        self.estimate
    }

    /// The request header carrying the request's own bound on its cost (`estimate_header`).
    pub fn estimate_header(&self) -> Option<&HeaderName> {
        self.estimate_header.as_ref()
    }

    /// The response header carrying the usage (`usage_header`).
    pub fn usage_header(&self) -> Option<&HeaderName> {
        self.usage_header.as_ref()
    }

    /// The trailer carrying the usage at the end of a streamed body (`usage_trailer`).
    pub fn usage_trailer(&self) -> Option<&HeaderName> {
        self.usage_trailer.as_ref()
    }

    /// How long a reservation can be settled (`reservation_ttl`, default
    /// [`DEFAULT_RESERVATION_TTL`]).
    pub fn reservation_ttl(&self) -> Duration {
        self.reservation_ttl
    }

    /// The estimate of a request with `headers` under `limits`: the number in
    /// `estimate_header` when it holds one, else the fixed estimate; never above the smallest
    /// limit (a larger one could never be admitted).
    pub fn estimate_for(&self, headers: &HeaderMap, limits: &Limits) -> u32 {
        let asked = self
            .estimate_header
            .as_ref()
            .and_then(|h| headers.get(h))
            .and_then(parse_units);
        asked.unwrap_or(self.estimate).min(limits.min_limit())
    }

    /// The usage `headers` (a response head) report in `usage_header`.
    pub fn usage_in_head(&self, headers: &HeaderMap) -> Usage {
        usage_in(self.usage_header.as_ref(), headers)
    }

    /// The usage `trailers` report in `usage_trailer`.
    pub fn usage_in_trailers(&self, trailers: &HeaderMap) -> Usage {
        usage_in(self.usage_trailer.as_ref(), trailers)
    }

    pub(crate) fn from_raw(raw: &RawMetered, loc: &Locator<'_>) -> Result<Metered, PolicyError> {
        let unit = raw.unit.get_ref();
        if unit.is_empty()
            || unit.len() > MAX_UNIT_LEN
            || !unit
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        {
            return Err(loc.invalid(
                raw.unit.span(),
                format!(
                    "unit {unit:?} must be 1 to {MAX_UNIT_LEN} characters of a-z, 0-9 or '-' (\"tokens\")"
                ),
            ));
        }
        let header = |h: &Option<Spanned<String>>, key: &str| match h {
            None => Ok(None),
            Some(h) => HeaderName::from_bytes(h.get_ref().trim().as_bytes())
                .map(Some)
                .map_err(|_| {
                    loc.invalid(
                        h.span(),
                        format!("{key} {:?} is not a header name", h.get_ref()),
                    )
                }),
        };
        let reservation_ttl = match &raw.reservation_ttl {
            None => DEFAULT_RESERVATION_TTL,
            Some(t) => parse_day_at_most(t, "reservation_ttl", loc)?,
        };
        Ok(Metered {
            unit: unit.as_str().into(),
            estimate: raw.estimate.as_ref().map_or(0, |e| *e.get_ref()),
            estimate_header: header(&raw.estimate_header, "estimate_header")?,
            usage_header: header(&raw.usage_header, "usage_header")?,
            usage_trailer: header(&raw.usage_trailer, "usage_trailer")?,
            reservation_ttl,
        })
    }
}

/// What `headers` say in `name` (none: [`Usage::Missing`]).
pub(crate) fn usage_in(name: Option<&HeaderName>, headers: &HeaderMap) -> Usage {
    let Some(v) = name.and_then(|h| headers.get(h)) else {
        return Usage::Missing;
    };
    match parse_units(v) {
        Some(n) => Usage::Reported(n),
        None => Usage::Invalid,
    }
}

/// A header's whole number of units (ASCII digits, whitespace around them allowed); above
/// `u32::MAX` is `u32::MAX`. `None` for anything else.
pub fn parse_units(v: &HeaderValue) -> Option<u32> {
    let s = v.to_str().ok()?.trim();
    if s.is_empty() || s.len() > 20 || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let n: u64 = s.parse().ok()?;
    Some(u32::try_from(n).unwrap_or(u32::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Limit;

    fn metered(src: &str) -> Result<Metered, PolicyError> {
        let raw: RawMetered = toml::from_str(src).expect("toml");
        Metered::from_raw(&raw, &Locator::new(src))
    }

    #[test]
    fn units_parse_and_saturate() {
        let p = |s: &'static str| parse_units(&HeaderValue::from_static(s));
        assert_eq!(p("900"), Some(900));
        assert_eq!(p(" 12 "), Some(12));
        assert_eq!(p("0"), Some(0));
        assert_eq!(p("99999999999"), Some(u32::MAX));
        for bad in ["", "-1", "1.5", "12a", "+3", "999999999999999999999"] {
            assert_eq!(p(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn the_estimate_comes_from_the_request_capped_at_the_smallest_limit() {
        let m = metered("unit = \"tokens\"\nestimate = 50\nestimate_header = \"x-max-tokens\"")
            .expect("valid");
        let limits = Limits::new(&[
            Limit::per_minute(1000).metered(),
            Limit::per_day(800).metered(),
        ])
        .expect("limits");
        let mut h = HeaderMap::new();
        assert_eq!(m.estimate_for(&h, &limits), 50);
        h.insert("x-max-tokens", HeaderValue::from_static("300"));
        assert_eq!(m.estimate_for(&h, &limits), 300);
        h.insert("x-max-tokens", HeaderValue::from_static("5000"));
        assert_eq!(m.estimate_for(&h, &limits), 800);
        h.insert("x-max-tokens", HeaderValue::from_static("lots"));
        assert_eq!(m.estimate_for(&h, &limits), 50);
    }

    #[test]
    fn usage_is_reported_missing_or_invalid() {
        let m = metered("unit = \"tokens\"\nusage_header = \"X-Usage\"\nusage_trailer = \"x-t\"")
            .expect("valid");
        let mut h = HeaderMap::new();
        assert_eq!(m.usage_in_head(&h), Usage::Missing);
        h.insert("x-usage", HeaderValue::from_static("900"));
        assert_eq!(m.usage_in_head(&h), Usage::Reported(900));
        assert_eq!(m.usage_in_trailers(&h), Usage::Missing);
        h.insert("x-usage", HeaderValue::from_static("n/a"));
        assert_eq!(m.usage_in_head(&h), Usage::Invalid);
        assert_eq!(m.reservation_ttl(), DEFAULT_RESERVATION_TTL);
        assert_eq!(m.estimate(), 0);
    }

    #[test]
    fn bad_values_name_their_line() {
        for (src, line, says) in [
            ("unit = \"Tokens\"", 1, "unit"),
            ("unit = \"\"", 1, "unit"),
            (
                "unit = \"t\"\nusage_header = \"bad header\"",
                2,
                "usage_header",
            ),
            (
                "unit = \"t\"\n\nestimate_header = \"a:b\"",
                3,
                "estimate_header",
            ),
            ("unit = \"t\"\nreservation_ttl = \"0s\"", 2, "1 s to 1 day"),
            ("unit = \"t\"\nreservation_ttl = \"2d\"", 2, "1 s to 1 day"),
            (
                "unit = \"t\"\nreservation_ttl = \"10\"",
                2,
                "reservation_ttl",
            ),
        ] {
            let e = metered(src).expect_err(src);
            assert_eq!(e.line(), Some(line), "{src}: {e}");
            assert!(e.message().contains(says), "{src}: {e}");
        }
        let ok = metered("unit = \"t\"\nreservation_ttl = \"1h\"").expect("valid");
        assert_eq!(ok.reservation_ttl(), Duration::from_secs(3600));
    }

    const GROUP: &str = "[[group]]
name = \"chat\"
route = \"/v1/*\"
windows = [{ limit = 1000, window = \"60s\" }, { limit = 50000, window = \"1d\" }]

[group.metered]
unit = \"tokens\"
estimate = 500
usage_header = \"x-usage-tokens\"
";

    #[test]
    fn a_metered_groups_windows_are_metered_and_its_overrides_too() {
        let src = format!(
            "{GROUP}\n[[override]]\ntoken = \"big\"\ngroup = \"chat\"\nwindows = [{{ limit = 9000, window = \"60s\" }}]\n"
        );
        let p = crate::gateway::Policy::from_toml_str(&src).expect("valid");
        let g = p.group("chat").expect("group");
        let m = g.metered().expect("metered");
        assert_eq!((m.unit(), m.estimate()), ("tokens", 500));
        assert!(g.limits().as_slice().iter().all(|l| l.is_metered()));
        assert!(g
            .limits_for("big")
            .as_slice()
            .iter()
            .all(|l| l.is_metered()));
        let plain = crate::gateway::Policy::from_toml_str(
            "[[group]]\nname = \"a\"\nroute = \"/*\"\nwindows = [{ limit = 5, window = \"1s\" }]",
        )
        .expect("valid");
        let a = plain.group("a").expect("group");
        assert!(a.metered().is_none() && !a.limits().as_slice()[0].is_metered());
    }

    #[test]
    fn a_metered_group_refuses_what_it_cannot_settle() {
        let cases = [
            (GROUP.replace("limit = 1000,", "limit = 1000, exact = true,"), 4, "sliding"),
            (GROUP.replace("estimate = 500", "estimate = 1001"), 8, "estimate 1001"),
            (
                GROUP.replace("route = \"/v1/*\"", "route = \"/v1/*\"\ncost = 2"),
                4,
                "cost comes from the upstream",
            ),
            (
                format!("{GROUP}\n[[override]]\ntoken = \"small\"\ngroup = \"chat\"\nwindows = [{{ limit = 100, window = \"60s\" }}]\n"),
                14,
                "estimate 500",
            ),
            (GROUP.replace("unit = \"tokens\"\n", ""), 6, "unit"),
            (
                GROUP.replace("limit = 1000,", "limit = 5000000,"),
                4,
                "metered",
            ),
        ];
        for (src, line, says) in cases {
            let e = crate::gateway::Policy::from_toml_str(&src).expect_err(&src);
            assert_eq!(e.line(), Some(line), "{src}\n=> {e}");
            assert!(e.to_string().contains(says), "{e}");
        }
    }
}
