//! `[settings]`: the 429 body style, the rate-limit headers sent, the concurrency cap,
//! idempotency storage rules, the body size cap and `If-Match`.

use http::HeaderName;

use super::config::{Locator, PolicyError, RawSettings};
use super::partition::PartitionSecret;

/// The shortest `partition_key_secret` accepted, in bytes.
pub const MIN_PARTITION_SECRET_LEN: usize = 16;

/// The default cap on a buffered request body (1 MiB).
const DEFAULT_MAX_BODY: u64 = 1 << 20;
/// The default cap on a response kept for replay (1 MiB, the store's default too).
const DEFAULT_MAX_RESPONSE: u64 = 1 << 20;

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

/// The shape of the JSON body of a 429 (and of the gateway's other error responses).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum BodyStyle {
    /// `{"message": "Too many requests. Retry after 25 seconds."}` (the default).
    #[default]
    Message,
    /// `{"error": {"code": "RATE_LIMITED", "message": "Rate limit exceeded. Retry after 12s"}}`.
    Error,
    /// RFC 9457 problem details, `application/problem+json`: a 429 over quota is of type
    /// `https://iana.org/assignments/http-problem-types#quota-exceeded` and names every
    /// violated window in `violated-policies`; other refusals are of type `about:blank`.
    Problem,
}

/// Which rate-limit fields the gateway sends (`headers` in `[settings]`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum HeaderMode {
    /// `X-RateLimit-Limit`, `X-RateLimit-Remaining`, `X-RateLimit-Reset` (the default).
    #[default]
    Legacy,
    /// `RateLimit-Policy` and `RateLimit` (draft-ietf-httpapi-ratelimit-headers-12) only.
    Ietf,
    /// Both sets.
    Both,
}

impl HeaderMode {
    /// Whether the `X-RateLimit-*` fields are sent.
    pub fn legacy(self) -> bool {
        matches!(self, HeaderMode::Legacy | HeaderMode::Both)
    }

    /// Whether `RateLimit-Policy` and `RateLimit` are sent.
    pub fn ietf(self) -> bool {
        matches!(self, HeaderMode::Ietf | HeaderMode::Both)
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
    fn parse_item(v: &toml::Value) -> Result<(u16, u16), String> {
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

/// The settings of a policy (`[settings]` and `[settings.idempotency]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    body_style: BodyStyle,
    headers: HeaderMode,
    partition_key: bool,
    partition_secret: Option<PartitionSecret>,
    max_concurrent_per_token: Option<u32>,
    max_body_bytes: usize,
    if_match: bool,
    store_statuses: StatusSet,
    replay_spends_quota: bool,
    replay_headers: Vec<HeaderName>,
    max_response_bytes: usize,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            body_style: BodyStyle::Message,
            headers: HeaderMode::Legacy,
            partition_key: false,
            partition_secret: None,
            max_concurrent_per_token: None,
            max_body_bytes: DEFAULT_MAX_BODY as usize,
            if_match: false,
            store_statuses: StatusSet::default_stored(),
            replay_spends_quota: false,
            replay_headers: DEFAULT_REPLAY_HEADERS
                .iter()
                .map(|h| HeaderName::from_static(h))
                .collect(),
            max_response_bytes: DEFAULT_MAX_RESPONSE as usize,
        }
    }
}

impl Settings {
    /// The 429 body style (`body_style = "message"`, `"error"` or `"problem"`; default
    /// `"message"`).
    pub fn body_style(&self) -> BodyStyle {
        self.body_style
    }

    /// The rate-limit fields sent (`headers = "legacy"`, `"ietf"` or `"both"`; default
    /// `"legacy"`; the older `ietf_headers = true` means `"both"`).
    pub fn headers(&self) -> HeaderMode {
        self.headers
    }

    /// Whether the IETF `RateLimit-Policy` and `RateLimit` fields are sent
    /// ([`Settings::headers`] is `"ietf"` or `"both"`).
    pub fn ietf_headers(&self) -> bool {
        self.headers.ietf()
    }

    /// Whether the IETF items carry `pk`, a keyed hash of the token (`partition_key`, default
    /// false).
    pub fn partition_key(&self) -> bool {
        self.partition_key
    }

    /// The secret of partition keys: `partition_key_secret` when set, else this process's
    /// random one ([`PartitionSecret::process`]).
    pub fn partition_secret(&self) -> &PartitionSecret {
        self.partition_secret
            .as_ref()
            .unwrap_or_else(|| PartitionSecret::process())
    }

    /// The most requests one token may have in flight (`max_concurrent_per_token`; absent: no
    /// cap; at most [`MAX_PERMITS`](crate::MAX_PERMITS)).
    pub fn max_concurrent_per_token(&self) -> Option<u32> {
        self.max_concurrent_per_token
    }

    /// The largest request body buffered for an idempotency fingerprint (`max_body_bytes`,
    /// default 1 MiB); larger gets 413.
    pub fn max_body_bytes(&self) -> usize {
        self.max_body_bytes
    }

    /// Whether the gateway keeps versions for `If-Match` (`if_match`, default false).
    pub fn if_match(&self) -> bool {
        self.if_match
    }

    /// The statuses whose responses are stored for replay (`idempotency.store_statuses` minus
    /// `idempotency.except_statuses`; default every status but 5xx and 429).
    pub fn store_statuses(&self) -> &StatusSet {
        &self.store_statuses
    }

    /// Whether a replayed response is counted against the quota
    /// (`idempotency.replay_spends_quota`, default false).
    pub fn replay_spends_quota(&self) -> bool {
        self.replay_spends_quota
    }

    /// The response headers stored and replayed (`idempotency.replay_headers`).
    pub fn replay_headers(&self) -> &[HeaderName] {
        &self.replay_headers
    }

    /// The largest response body kept for replay (`idempotency.max_response_bytes`, default
    /// 1 MiB). A larger response is served, and its lease aborted.
    pub fn max_response_bytes(&self) -> usize {
        self.max_response_bytes
    }

    /// Validate the raw `[settings]` table.
    pub(crate) fn from_raw(raw: &RawSettings, loc: &Locator<'_>) -> Result<Settings, PolicyError> {
        let mut s = Settings::default();
        if let Some(style) = &raw.body_style {
            s.body_style = match style.get_ref().as_str() {
                "message" => BodyStyle::Message,
                "error" => BodyStyle::Error,
                "problem" => BodyStyle::Problem,
                other => {
                    return Err(loc.invalid(
                        style.span(),
                        format!(
                            "unknown body_style {other:?}: expected \"message\", \"error\" or \"problem\""
                        ),
                    ))
                }
            };
        }
        s.headers = match (&raw.headers, &raw.ietf_headers) {
            (Some(_), Some(old)) => {
                return Err(loc.invalid(
                    old.span(),
                    "set either headers or ietf_headers (its older spelling), not both",
                ))
            }
            (None, Some(old)) if *old.get_ref() => HeaderMode::Both,
            (None, _) => HeaderMode::Legacy,
            (Some(mode), None) => match mode.get_ref().as_str() {
                "legacy" => HeaderMode::Legacy,
                "ietf" => HeaderMode::Ietf,
                "both" => HeaderMode::Both,
                other => {
                    return Err(loc.invalid(
                        mode.span(),
                        format!(
                        "unknown headers mode {other:?}: expected \"legacy\", \"ietf\" or \"both\""
                    ),
                    ))
                }
            },
        };
        s.partition_key = raw.partition_key.unwrap_or(false);
        if let Some(secret) = &raw.partition_key_secret {
            if secret.get_ref().len() < MIN_PARTITION_SECRET_LEN {
                return Err(loc.invalid(
                    secret.span(),
                    format!(
                        "partition_key_secret must be at least {MIN_PARTITION_SECRET_LEN} bytes long"
                    ),
                ));
            }
            s.partition_secret = Some(PartitionSecret::from_passphrase(secret.get_ref()));
        }
        s.if_match = raw.if_match.unwrap_or(false);
        if let Some(cap) = &raw.max_concurrent_per_token {
            if *cap.get_ref() == 0 {
                return Err(loc.invalid(
                    cap.span(),
                    "max_concurrent_per_token must be at least 1 (leave it out for no cap)",
                ));
            }
            if *cap.get_ref() > crate::MAX_PERMITS {
                return Err(loc.invalid(
                    cap.span(),
                    "max_concurrent_per_token must be at most 64 (MAX_PERMITS)",
                ));
            }
            s.max_concurrent_per_token = Some(*cap.get_ref());
        }
        if let Some(max) = &raw.max_body_bytes {
            s.max_body_bytes = usize::try_from(*max.get_ref())
                .map_err(|_| loc.invalid(max.span(), "max_body_bytes is too large"))?;
        }
        let idem = &raw.idempotency;
        s.replay_spends_quota = idem.replay_spends_quota.unwrap_or(false);
        if let Some(max) = &idem.max_response_bytes {
            s.max_response_bytes = usize::try_from(*max.get_ref())
                .map_err(|_| loc.invalid(max.span(), "max_response_bytes is too large"))?;
        }
        if idem.store_statuses.is_some() || idem.except_statuses.is_some() {
            let mut set = StatusSet::empty();
            match &idem.store_statuses {
                Some(items) => {
                    for item in items {
                        let (lo, hi) = StatusSet::parse_item(item.get_ref())
                            .map_err(|m| loc.invalid(item.span(), m))?;
                        set.insert_range(lo, hi);
                    }
                }
                None => set = StatusSet::default_stored(),
            }
            let except = match &idem.except_statuses {
                Some(items) => items.as_slice(),
                None => &[],
            };
            if idem.except_statuses.is_none() {
                set.remove(429);
            }
            for item in except {
                let (lo, hi) = StatusSet::parse_item(item.get_ref())
                    .map_err(|m| loc.invalid(item.span(), m))?;
                for st in lo..=hi {
                    set.remove(st);
                }
            }
            s.store_statuses = set;
        }
        if let Some(names) = &idem.replay_headers {
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
            s.replay_headers = out;
        }
        Ok(s)
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
}
