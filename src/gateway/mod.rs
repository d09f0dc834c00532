//! Gateway integration: a policy table loaded from TOML, rate-limit headers, a per-token
//! concurrency cap and versions for `If-Match` (both kept by the backend, so a fleet shares
//! them), and (feature `tower`) a tower middleware usable from axum and hyper.
//!
//! Feature `gateway` gives the parts that need no HTTP server plumbing: [`Policy`] (endpoint
//! groups matched by route, per-token overrides, settings), [`headers`] (the header values and
//! 429 bodies of a [`Decision`](crate::Decision)), [`ietf`] (the `RateLimit-Policy` and
//! `RateLimit` fields of draft-ietf-httpapi-ratelimit-headers-12), [`PartitionKey`] (their
//! `pk`: a keyed hash of the token), [`problem`] (RFC 9457 refusal bodies),
//! [`ConcurrencyLimiter`] and [`Versions`], and [`Metered`] (a group whose cost is the
//! upstream's reported usage: tokens, bytes). Feature `tower` adds `Gateway`, `GatewayLayer` and
//! `GatewayService` (the middleware), `ShadowLog` (what groups in shadow mode would have
//! refused) and `Metering` (metered groups' usage readers and settle counts).
//!
//! ```
//! use tollgate::gateway::Policy;
//!
//! let policy = Policy::from_toml_str(r#"
//!     [[group]]
//!     name = "pbx"
//!     route = "/api/pbx/*"
//!     windows = [{ limit = 60, window = "60s" }]
//! "#)?;
//! let group = policy.match_route("GET", "/api/pbx/calls").expect("matched");
//! assert_eq!(group.name(), "pbx");
//! let key = group.key("tok_abc")?; // the store key for (token, group), on the stack
//! assert!(key.as_bytes().len() <= tollgate::MAX_KEY_LEN);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! The whole story (config file format, matching rules, headers, problem bodies, shadow mode,
//! idempotency, the replay-quota decision, metered groups, the concurrency cap and `If-Match`) is in
//! `docs/GATEWAY.md`.

mod concurrency;
mod config;
mod etag;
mod failure;
pub mod headers;
mod idempotency;
pub mod ietf;
mod metered;
mod partition;
mod policy;
pub mod problem;
mod settings;

#[cfg(feature = "tower")]
mod answer;
#[cfg(feature = "tower")]
mod body;
#[cfg(feature = "tower")]
pub mod metrics;
#[cfg(feature = "tower")]
mod middleware;
#[cfg(feature = "tower")]
mod rate;
#[cfg(feature = "tower")]
mod settle;
#[cfg(feature = "tower")]
mod shadow;

pub use concurrency::{ConcurrencyGuard, ConcurrencyLimiter, DEFAULT_PERMIT_LEASE};
pub use config::PolicyError;
pub use etag::{ETag, Stale, Versions};
#[cfg(feature = "tower")]
pub use failure::{BackendFailure, FailureLog, Fallback};
pub use failure::{
    OnBackendError, DEFAULT_BACKEND_TIMEOUT, MAX_BACKEND_TIMEOUT, TOLLGATE_DEGRADED,
};
pub use idempotency::{IdempotencyPolicy, KeyFormat, StatusSet, MAX_OPAQUE_KEY_LEN};
pub use metered::{parse_units, Metered, Usage, MAX_UNIT_LEN};
pub use partition::{PartitionKey, PartitionSecret, PARTITION_KEY_LEN};
pub use policy::{Group, Policy, RateKey, Route, TokenError, MAX_GROUP_NAME_LEN, MAX_TOKEN_LEN};
pub use settings::{BodyStyle, HeaderMode, Settings, MIN_PARTITION_SECRET_LEN};

#[cfg(feature = "tower")]
pub use body::{BoxError, GatewayBody};
#[cfg(feature = "tower")]
pub use middleware::{bearer_token, Gateway, GatewayFuture, GatewayLayer, GatewayService};
#[cfg(feature = "tower")]
pub use settle::Metering;
#[cfg(feature = "tower")]
pub use shadow::{ShadowLog, ShadowRefusal};
