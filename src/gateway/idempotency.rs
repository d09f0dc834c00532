//! Idempotency policies: which `Idempotency-Key` values a group accepts, which response
//! statuses it stores for replay, and the header marking a replay.
//!
//! `[settings.idempotency]` sets the policy of every group, and `[group.idempotency]` (the
//! same keys) changes it for one group; a key a group leaves out is the settings' value:
//!
//! ```
//! use tollgate::gateway::{KeyFormat, Policy};
//!
//! let policy = Policy::from_toml_str(r#"
//!     [settings.idempotency]
//!     key_format = "uuid"                 # any UUID version (v7 keys are common)
//!
//!     [[group]]
//!     name = "payments"
//!     route = "/api/payments/*"
//!     windows = [{ limit = 60, window = "60s" }]
//!     [group.idempotency]
//!     key_format = "opaque"               # any printable ASCII string ...
//!     max_key_len = 64                    # ... of at most 64 characters
//!     store_statuses = ["2xx"]            # a 4xx or 5xx is not stored: a retry runs again
//!     replay_header = "X-Idempotent-Replay"
//!
//!     [[group]]
//!     name = "search"
//!     route = "/api/search/*"
//!     windows = [{ limit = 60, window = "60s" }]
//! "#)?;
//! let pay = policy.group("payments").unwrap().idempotency();
//! assert_eq!(pay.key_format(), KeyFormat::Opaque { max_len: 64 });
//! assert!(pay.store_statuses().contains(201) && !pay.store_statuses().contains(404));
//! assert_eq!(pay.replay_header().as_str(), "x-idempotent-replay");
//! let search = policy.group("search").unwrap().idempotency();
//! assert_eq!(search.key_format(), KeyFormat::Uuid);
//! assert_eq!(search.replay_header().as_str(), "idempotent-replayed");
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::fmt;

use http::HeaderName;

use super::config::{Locator, PolicyError, RawIdempotency};
use crate::IdempotencyKey;

/// The longest opaque `Idempotency-Key` accepted (`key_format = "opaque"`), in bytes: the
/// default and the largest `max_key_len`. Stripe's keys are at most 255 characters too.
pub const MAX_OPAQUE_KEY_LEN: usize = 255;

/// The default cap on a response kept for replay (1 MiB, the store's default too).
const DEFAULT_MAX_RESPONSE: u64 = 1 << 20;

/// The default replay marker: `Idempotent-Replayed: true`.
const DEFAULT_REPLAY_HEADER: &str = "idempotent-replayed";

/// Response headers replayed by default: what describes the stored body and the resource.
const DEFAULT_REPLAY_HEADERS: &[&str] = &[
    "content-type",
    "content-language",
    "content-location",
    "location",
    "etag",
    "last-modified",
    "link",
    "cache-control",
    "vary",
];

/// Headers never stored for replay, whatever the allow-list says: they belong to the first
/// exchange (its date, its cookies, its rate-limit state) or to the connection.
pub(crate) const NEVER_REPLAYED: &[&str] = &[
    "date",
    "set-cookie",
    "set-cookie2",
    "x-ratelimit-limit",
    "x-ratelimit-remaining",
    "x-ratelimit-reset",
    "retry-after",
    "ratelimit",
    "ratelimit-policy",
    "idempotent-replayed",
    "content-length",
    "transfer-encoding",
    "connection",
    "keep-alive",
    "upgrade",
    "trailer",
    "te",
    "proxy-authenticate",
    "proxy-connection",
];

/// What an `Idempotency-Key` must look like (`key_format`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum KeyFormat {
    /// `"uuid-v4"` (the default): a hyphenated UUID of version 4, bare or quoted.
    #[default]
    UuidV4,
    /// `"uuid"`: a hyphenated UUID of any version 1 to 8 (v7, time-ordered, is common).
    Uuid,
    /// `"opaque"`: any string of 1 to `max_len` printable ASCII characters (0x20 to 0x7E; the
    /// quotes of a Structured Field string are removed first, as for a UUID, and so are
    /// surrounding spaces). Stored as a 128-bit hash of the string
    /// ([`IdempotencyKey::from_opaque`]).
    Opaque {
        /// The longest key accepted, 1 to [`MAX_OPAQUE_KEY_LEN`].
        max_len: usize,
    },
}

impl KeyFormat {
    /// The key of a header value, or `None` when it does not have this format (HTTP 400).
    ///
    /// ```
    /// use tollgate::gateway::KeyFormat;
    /// let v7 = "01890a5d-ac96-774b-bcce-b302099a8057";
    /// assert!(KeyFormat::UuidV4.parse(v7).is_none());
    /// assert!(KeyFormat::Uuid.parse(v7).is_some());
    /// assert!(KeyFormat::Opaque { max_len: 8 }.parse("order-42").is_some());
    /// assert!(KeyFormat::Opaque { max_len: 8 }.parse("order-420").is_none());
    /// assert!(KeyFormat::Opaque { max_len: 8 }.parse("tab\there").is_none());
    /// ```
    pub fn parse(self, header: &str) -> Option<IdempotencyKey> {
        match self {
            KeyFormat::UuidV4 => IdempotencyKey::parse(header).ok(),
            KeyFormat::Uuid => IdempotencyKey::parse_any_version(header).ok(),
            KeyFormat::Opaque { max_len } => {
                let v = crate::idempotency::unquote(header).ok()?;
                let printable = v.bytes().all(|b| (0x20..=0x7E).contains(&b));
                (printable && !v.is_empty() && v.len() <= max_len)
                    .then(|| IdempotencyKey::from_opaque(v.as_bytes()))
            }
        }
    }

    /// The message of the 400 answering a key of another format.
    pub fn requirement(self) -> String {
        match self {
            KeyFormat::UuidV4 => "Idempotency-Key must be a UUID v4.".into(),
            KeyFormat::Uuid => "Idempotency-Key must be a UUID.".into(),
            KeyFormat::Opaque { max_len } => {
                format!("Idempotency-Key must be 1 to {max_len} printable ASCII characters.")
            }
        }
    }
}

impl fmt::Display for KeyFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KeyFormat::UuidV4 => f.write_str("uuid-v4"),
            KeyFormat::Uuid => f.write_str("uuid"),
            KeyFormat::Opaque { max_len } => write!(f, "opaque (at most {max_len} characters)"),
        }
    }
}

/// A set of HTTP status codes (100 to 599), as a bitmap.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StatusSet {
    bits: [u64; 10],
}

impl StatusSet {
    /// No status.
    pub fn empty() -> StatusSet {
        StatusSet { bits: [0; 10] }
    }

    /// The default set of statuses stored for replay: every status but 5xx and 429. A 5xx or
    /// a 429 says "this did not happen, try again": storing it would replay the failure.
    pub fn default_stored() -> StatusSet {
        let mut s = StatusSet::empty();
        s.insert_range(100, 499);
        s.remove(429);
        s
    }

    /// Whether `status` is in the set.
    pub fn contains(&self, status: u16) -> bool {
        let i = usize::from(status);
        self.bits
            .get(i / 64)
            .is_some_and(|w| w & (1u64 << (i % 64)) != 0)
    }

    /// Add a status (ignored outside 100 to 599).
    pub fn insert(&mut self, status: u16) {
        if (100..=599).contains(&status) {
            let i = usize::from(status);
            if let Some(w) = self.bits.get_mut(i / 64) {
                *w |= 1u64 << (i % 64);
            }
        }
    }

    /// Remove a status.
    pub fn remove(&mut self, status: u16) {
        let i = usize::from(status);
        if let Some(w) = self.bits.get_mut(i / 64) {
            *w &= !(1u64 << (i % 64));
        }
    }

    /// Add every status from `lo` to `hi` inclusive.
    pub fn insert_range(&mut self, lo: u16, hi: u16) {
        for s in lo..=hi {
            self.insert(s);
        }
    }

    /// Parse one config item: `201`, `"201"`, `"2xx"` or `"200-299"`. Returns the range.
    pub(crate) fn parse_item(v: &toml::Value) -> Result<(u16, u16), String> {
        let shown = match v {
            toml::Value::Integer(n) => n.to_string(),
            toml::Value::String(s) => format!("{s:?}"),
            other => format!("of type {}", other.type_str()),
        };
        let bad = || {
            format!(
                "invalid status {shown}: expected a code (201), a class (\"2xx\") or a range (\"200-299\") within 100-599"
            )
        };
        let in_range = |n: u16| (100..=599).contains(&n);
        let (lo, hi) = match v {
            toml::Value::Integer(n) => {
                let n = u16::try_from(*n).map_err(|_| bad())?;
                (n, n)
            }
            toml::Value::String(s) => {
                let s = s.trim();
                if let Some(class) = s.strip_suffix("xx").or_else(|| s.strip_suffix("XX")) {
                    let d: u16 = class.parse().map_err(|_| bad())?;
                    if class.len() != 1 {
                        return Err(bad());
                    }
                    (d * 100, d * 100 + 99)
                } else if let Some((a, b)) = s.split_once('-') {
                    let a: u16 = a.trim().parse().map_err(|_| bad())?;
                    let b: u16 = b.trim().parse().map_err(|_| bad())?;
                    (a, b)
                } else {
                    let n: u16 = s.parse().map_err(|_| bad())?;
                    (n, n)
                }
            }
            _ => return Err(bad()),
        };
        if !in_range(lo) || !in_range(hi) || lo > hi {
            return Err(bad());
        }
        Ok((lo, hi))
    }
}

impl Default for StatusSet {
    fn default() -> Self {
        StatusSet::default_stored()
    }
}

/// The idempotency policy of a group (or, in `Settings`, of every group that does not change
/// it): see the module docs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdempotencyPolicy {
    key_format: KeyFormat,
    store_statuses: StatusSet,
    replay_header: HeaderName,
    replay_spends_quota: bool,
    replay_headers: Vec<HeaderName>,
    max_response_bytes: usize,
}

impl Default for IdempotencyPolicy {
    fn default() -> Self {
        IdempotencyPolicy {
            key_format: KeyFormat::UuidV4,
            store_statuses: StatusSet::default_stored(),
            replay_header: HeaderName::from_static(DEFAULT_REPLAY_HEADER),
            replay_spends_quota: false,
            replay_headers: DEFAULT_REPLAY_HEADERS
                .iter()
                .map(|h| HeaderName::from_static(h))
                .collect(),
            max_response_bytes: DEFAULT_MAX_RESPONSE as usize,
        }
    }
}

impl IdempotencyPolicy {
    /// What a key must look like (`key_format`, default `"uuid-v4"`; `max_key_len` with
    /// `"opaque"`).
    pub fn key_format(&self) -> KeyFormat {
        self.key_format
    }

    /// The statuses whose responses are stored for replay (`store_statuses` minus
    /// `except_statuses`; default every status but 5xx and 429).
    pub fn store_statuses(&self) -> &StatusSet {
        &self.store_statuses
    }

    /// The header marking a replayed response, with the value `true` (`replay_header`,
    /// default `Idempotent-Replayed`).
    pub fn replay_header(&self) -> &HeaderName {
        &self.replay_header
    }

    /// Whether a replayed response is counted against the quota (`replay_spends_quota`,
    /// default false).
    pub fn replay_spends_quota(&self) -> bool {
        self.replay_spends_quota
    }

    /// The response headers stored and replayed (`replay_headers`).
    pub fn replay_headers(&self) -> &[HeaderName] {
        &self.replay_headers
    }

    /// The largest response body kept for replay (`max_response_bytes`, default 1 MiB). A
    /// larger response is served, and its lease aborted.
    pub fn max_response_bytes(&self) -> usize {
        self.max_response_bytes
    }

    /// `base` changed by the keys `raw` sets (`[settings.idempotency]` over the defaults, or
    /// `[group.idempotency]` over the settings).
    pub(crate) fn from_raw(
        raw: &RawIdempotency,
        base: &IdempotencyPolicy,
        loc: &Locator<'_>,
    ) -> Result<IdempotencyPolicy, PolicyError> {
        let mut p = base.clone();
        if let Some(v) = raw.replay_spends_quota {
            p.replay_spends_quota = v;
        }
        if let Some(max) = &raw.max_response_bytes {
            p.max_response_bytes = usize::try_from(*max.get_ref())
                .map_err(|_| loc.invalid(max.span(), "max_response_bytes is too large"))?;
        }
        p.key_format = key_format(raw, base.key_format, loc)?;
        if raw.store_statuses.is_some() || raw.except_statuses.is_some() {
            let mut set = StatusSet::empty();
            match &raw.store_statuses {
                Some(items) => {
                    for item in items {
                        let (lo, hi) = StatusSet::parse_item(item.get_ref())
                            .map_err(|m| loc.invalid(item.span(), m))?;
                        set.insert_range(lo, hi);
                    }
                    // An explicit list stores no 429 unless `except_statuses` says otherwise.
                    if raw.except_statuses.is_none() {
                        set.remove(429);
                    }
                }
                None => set = base.store_statuses,
            }
            for item in raw.except_statuses.iter().flatten() {
                let (lo, hi) = StatusSet::parse_item(item.get_ref())
                    .map_err(|m| loc.invalid(item.span(), m))?;
                for st in lo..=hi {
                    set.remove(st);
                }
            }
            p.store_statuses = set;
        }
        if let Some(name) = &raw.replay_header {
            let h = HeaderName::from_bytes(name.get_ref().trim().as_bytes()).map_err(|_| {
                loc.invalid(
                    name.span(),
                    format!("invalid header name {:?}", name.get_ref()),
                )
            })?;
            if h.as_str() != DEFAULT_REPLAY_HEADER && NEVER_REPLAYED.contains(&h.as_str()) {
                return Err(loc.invalid(
                    name.span(),
                    format!(
                        "replay_header {:?} is a header the gateway or the connection sets",
                        h.as_str()
                    ),
                ));
            }
            p.replay_header = h;
        }
        if let Some(names) = &raw.replay_headers {
            let mut out = Vec::with_capacity(names.len());
            for n in names {
                let name = HeaderName::from_bytes(n.get_ref().trim().as_bytes()).map_err(|_| {
                    loc.invalid(n.span(), format!("invalid header name {:?}", n.get_ref()))
                })?;
                if NEVER_REPLAYED.contains(&name.as_str()) {
                    return Err(loc.invalid(
                        n.span(),
                        format!(
                            "header {:?} is never replayed: it belongs to the first exchange or to the connection",
                            name.as_str()
                        ),
                    ));
                }
                if !out.contains(&name) {
                    out.push(name);
                }
            }
            p.replay_headers = out;
        }
        Ok(p)
    }
}

/// `key_format` and `max_key_len` of `raw`, over `base`.
fn key_format(
    raw: &RawIdempotency,
    base: KeyFormat,
    loc: &Locator<'_>,
) -> Result<KeyFormat, PolicyError> {
    let format = match &raw.key_format {
        None => base,
        Some(f) => match f.get_ref().as_str() {
            "uuid-v4" => KeyFormat::UuidV4,
            "uuid" => KeyFormat::Uuid,
            "opaque" => KeyFormat::Opaque {
                max_len: MAX_OPAQUE_KEY_LEN,
            },
            other => {
                return Err(loc.invalid(
                    f.span(),
                    format!(
                        "unknown key_format {other:?}: expected \"uuid-v4\", \"uuid\" or \"opaque\""
                    ),
                ))
            }
        },
    };
    let Some(len) = &raw.max_key_len else {
        return Ok(format);
    };
    match format {
        KeyFormat::Opaque { .. } => {
            let n = *len.get_ref();
            if n == 0 || n > MAX_OPAQUE_KEY_LEN as u64 {
                return Err(loc.invalid(
                    len.span(),
                    format!("max_key_len must be 1 to {MAX_OPAQUE_KEY_LEN}"),
                ));
            }
            Ok(KeyFormat::Opaque {
                max_len: n as usize,
            })
        }
        _ => Err(loc.invalid(
            len.span(),
            format!(
                "max_key_len applies to key_format = \"opaque\" only (this one is \"{format}\")"
            ),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_stores_all_but_5xx_and_429() {
        let s = StatusSet::default_stored();
        for st in [200, 201, 204, 301, 400, 404, 409, 422, 499] {
            assert!(s.contains(st), "{st}");
        }
        for st in [429, 500, 502, 503, 599, 0, 99, 600, 65535] {
            assert!(!s.contains(st), "{st}");
        }
    }

    #[test]
    fn status_items_parse() {
        let p = |v: toml::Value| StatusSet::parse_item(&v);
        assert_eq!(p(toml::Value::Integer(201)), Ok((201, 201)));
        assert_eq!(p(toml::Value::String("2xx".into())), Ok((200, 299)));
        assert_eq!(p(toml::Value::String("200-204".into())), Ok((200, 204)));
        assert_eq!(p(toml::Value::String("404".into())), Ok((404, 404)));
        for bad in ["6xx", "0xx", "22xx", "300-200", "abc", "99", "600"] {
            assert!(p(toml::Value::String(bad.into())).is_err(), "{bad}");
        }
        assert!(p(toml::Value::Integer(-1)).is_err());
        assert!(p(toml::Value::Boolean(true)).is_err());
    }

    #[test]
    fn key_formats() {
        let v4 = "4d9c3a41-6bb7-4c4e-9a39-8f3c2d7e1f00";
        let v7 = "01890a5d-ac96-774b-bcce-b302099a8057";
        assert!(KeyFormat::UuidV4.parse(v4).is_some());
        assert!(KeyFormat::UuidV4.parse(v7).is_none());
        assert!(KeyFormat::Uuid.parse(v4).is_some());
        assert!(KeyFormat::Uuid.parse(v7).is_some());
        assert!(KeyFormat::Uuid.parse("order-1").is_none());
        let o = KeyFormat::Opaque { max_len: 10 };
        assert_eq!(o.parse("order 1"), o.parse("\"order 1\""));
        assert_eq!(o.parse("  order 1 "), o.parse("order 1"));
        assert_ne!(o.parse("order 1"), o.parse("order 2"));
        assert!(o.parse("0123456789").is_some());
        for bad in ["", "\"\"", "01234567890", "é", "a\u{7f}", "\"open"] {
            assert!(o.parse(bad).is_none(), "{bad:?}");
        }
        // An opaque string that spells a UUID is still hashed: not the UUID's key.
        assert_ne!(
            KeyFormat::Opaque { max_len: 64 }.parse(v4),
            KeyFormat::UuidV4.parse(v4)
        );
        assert_eq!(
            o.requirement(),
            "Idempotency-Key must be 1 to 10 printable ASCII characters."
        );
    }
}
