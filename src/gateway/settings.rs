//! `[settings]`: the 429 body style, the rate-limit headers sent, the concurrency cap, what a
//! request does when the backend fails and the deadline of a backend call (`failure.rs`),
//! the default idempotency policy (`[settings.idempotency]`, in `idempotency.rs`), the body
//! size cap and `If-Match`.

use http::HeaderName;

use std::time::Duration;

use super::config::{Locator, PolicyError, RawSettings};
use super::failure::{parse_timeout, OnBackendError, DEFAULT_BACKEND_TIMEOUT};
use super::idempotency::{IdempotencyPolicy, StatusSet};
use super::partition::PartitionSecret;

/// The shortest `partition_key_secret` accepted, in bytes.
pub const MIN_PARTITION_SECRET_LEN: usize = 16;

/// The default cap on a buffered request body (1 MiB).
const DEFAULT_MAX_BODY: u64 = 1 << 20;

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
    on_backend_error: OnBackendError,
    backend_timeout: Duration,
    permit_lease: Option<Duration>,
    idempotency: IdempotencyPolicy,
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
            on_backend_error: OnBackendError::FailClosed,
            backend_timeout: DEFAULT_BACKEND_TIMEOUT,
            permit_lease: None,
            idempotency: IdempotencyPolicy::default(),
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

    /// What a request does when the backend fails, in every group that does not say
    /// (`on_backend_error`, default `"fail-closed"`; a group's is `Group::on_backend_error`).
    pub fn on_backend_error(&self) -> OnBackendError {
        self.on_backend_error
    }

    /// The most one backend call may take (`backend_timeout`, default 250 ms): past it the
    /// call fails and the group's `on_backend_error` applies. It is a property of the
    /// connection: give it to `fleet::RedisOptions::deadline` when opening the store (the
    /// example gateway does); a reload does not change the store already open.
    pub fn backend_timeout(&self) -> Duration {
        self.backend_timeout
    }

    /// How long a concurrency permit lasts if its request never gives it back (a crashed
    /// node): `permit_lease`, a whole number of seconds, minutes or hours (`"60s"`, `"5m"`;
    /// 1 s to 1 day). `None` when the policy does not say: the gateway's own
    /// (`Gateway::set_permit_lease`, default 60 s) applies. Make it longer than the slowest
    /// request the cap should count.
    pub fn permit_lease(&self) -> Option<Duration> {
        self.permit_lease
    }

    /// The idempotency policy of every group that does not set its own
    /// (`[settings.idempotency]`; a group's is `Group::idempotency`).
    pub fn idempotency(&self) -> &IdempotencyPolicy {
        &self.idempotency
    }

    /// The statuses stored for replay by default (`idempotency.store_statuses` minus
    /// `idempotency.except_statuses`; default every status but 5xx and 429).
    pub fn store_statuses(&self) -> &StatusSet {
        self.idempotency.store_statuses()
    }

    /// Whether a replayed response is counted against the quota by default
    /// (`idempotency.replay_spends_quota`, default false).
    pub fn replay_spends_quota(&self) -> bool {
        self.idempotency.replay_spends_quota()
    }

    /// The response headers stored and replayed by default (`idempotency.replay_headers`).
    pub fn replay_headers(&self) -> &[HeaderName] {
        self.idempotency.replay_headers()
    }

    /// The largest response body kept for replay by default
    /// (`idempotency.max_response_bytes`, default 1 MiB).
    pub fn max_response_bytes(&self) -> usize {
        self.idempotency.max_response_bytes()
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
        if let Some(mode) = &raw.on_backend_error {
            s.on_backend_error = OnBackendError::from_raw(mode, loc)?;
        }
        if let Some(t) = &raw.backend_timeout {
            s.backend_timeout = parse_timeout(t, loc)?;
        }
        if let Some(lease) = &raw.permit_lease {
            s.permit_lease = Some(super::config::parse_day_at_most(
                lease,
                "permit_lease",
                loc,
            )?);
        }
        s.idempotency =
            IdempotencyPolicy::from_raw(&raw.idempotency, &IdempotencyPolicy::default(), loc)?;
        Ok(s)
    }
}
