//! The policy table: endpoint groups matched by route, per-token overrides, settings.
//!
//! Built once from a TOML file (see `docs/GATEWAY.md` for the format). Everything a request
//! needs is prebuilt at load: one [`Limits`] per group and per override, and two hash maps for
//! route matching, so matching a request and building its store key allocate nothing.

use std::collections::HashMap;
use std::fmt;
use std::path::Path;

use crate::{Limit, Limits, MAX_KEY_LEN};

use super::config::{
    parse_window, Locator, PolicyError, RawGroup, RawOverride, RawPolicy, RawWindow,
};
use super::failure::OnBackendError;
use super::idempotency::IdempotencyPolicy;
use super::metered::Metered;
use super::settings::Settings;

use toml::Spanned;

/// The longest group name, in bytes.
pub const MAX_GROUP_NAME_LEN: usize = 32;

/// The longest bearer token, in bytes: a store key is `group name`, one separator byte and the
/// token, and must fit in [`MAX_KEY_LEN`] bytes whatever the group.
pub const MAX_TOKEN_LEN: usize = MAX_KEY_LEN - 1 - MAX_GROUP_NAME_LEN;

/// The separator between the group name and the token in a store key. It cannot appear in
/// either: group names are `[A-Za-z0-9_.-]`, and a header value never holds a NUL byte.
const KEY_SEPARATOR: u8 = 0;

/// A token that cannot be used as (part of) a store key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum TokenError {
    /// The token is empty.
    Empty,
    /// The token is longer than [`MAX_TOKEN_LEN`] bytes.
    TooLong {
        /// The length of the token.
        len: usize,
        /// The longest accepted.
        max: usize,
    },
}

impl fmt::Display for TokenError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TokenError::Empty => write!(f, "empty token"),
            TokenError::TooLong { len, max } => {
                write!(
                    f,
                    "token of {len} bytes is longer than the {max} bytes accepted"
                )
            }
        }
    }
}

impl std::error::Error for TokenError {}

/// Check that `token` can be keyed: 1 to [`MAX_TOKEN_LEN`] bytes.
pub(crate) fn check_token(token: &str) -> Result<(), TokenError> {
    if token.is_empty() {
        return Err(TokenError::Empty);
    }
    if token.len() > MAX_TOKEN_LEN {
        return Err(TokenError::TooLong {
            len: token.len(),
            max: MAX_TOKEN_LEN,
        });
    }
    Ok(())
}

/// The store key of one (token, group) pair, built on the stack.
#[derive(Clone, Copy)]
pub struct RateKey {
    buf: [u8; MAX_KEY_LEN],
    len: u8,
}

impl RateKey {
    /// The key's bytes: group name, a NUL byte, the token.
    pub fn as_bytes(&self) -> &[u8] {
        self.buf.get(..usize::from(self.len)).unwrap_or(&[])
    }
}

impl fmt::Debug for RateKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "RateKey({:?})", String::from_utf8_lossy(self.as_bytes()))
    }
}

/// How a group's route matches a path.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Route {
    /// `/api/auth/login`: this path only.
    Exact(Box<str>),
    /// `/api/pbx/*`: the path `/api/pbx` and every path under `/api/pbx/`. `/*` is every
    /// path (the prefix is empty).
    Prefix(Box<str>),
}

impl Route {
    /// Parse a config route: an absolute path, or a prefix ending in `/*`.
    fn parse(s: &str) -> Result<Route, String> {
        if !s.starts_with('/') {
            return Err(format!("route {s:?} must start with '/'"));
        }
        if s.contains(['?', '#']) || s.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(format!(
                "route {s:?} must be a path: no query, fragment or whitespace"
            ));
        }
        if let Some(base) = s.strip_suffix("/*") {
            if base.contains('*') {
                return Err(format!(
                    "route {s:?}: '*' is allowed only as a final \"/*\""
                ));
            }
            return Ok(Route::Prefix(base.into()));
        }
        if s.contains('*') {
            return Err(format!(
                "route {s:?}: '*' is allowed only as a final \"/*\""
            ));
        }
        Ok(Route::Exact(s.into()))
    }
}

impl fmt::Display for Route {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Route::Exact(p) => f.write_str(p),
            Route::Prefix(p) => write!(f, "{p}/*"),
        }
    }
}

/// One endpoint group: a route, an optional method, its windows, its cost per request,
/// whether it is enforced, and the per-token overrides of its windows.
#[derive(Debug, Clone)]
pub struct Group {
    name: Box<str>,
    route: Route,
    method: Option<Box<str>>,
    limits: Limits,
    cost: u32,
    enforce: bool,
    on_backend_error: OnBackendError,
    idempotency: IdempotencyPolicy,
    metered: Option<Metered>,
    overrides: HashMap<Box<str>, Limits>,
}

impl Group {
    /// The group's name (part of every store key: renaming a group starts its counts afresh).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The group's route.
    pub fn route(&self) -> &Route {
        &self.route
    }

    /// The method the group is restricted to (upper case), if any.
    pub fn method(&self) -> Option<&str> {
        self.method.as_deref()
    }

    /// The group's windows, checked together.
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// The cost of one request (default 1). A metered group's requests cost what the
    /// upstream reports instead ([`Group::metered`]).
    pub fn cost(&self) -> u32 {
        self.cost
    }

    /// The group's metering (`[group.metered]`), when its cost comes from the upstream's
    /// response: its windows are then [`Limit::metered`], and its requests reserve an
    /// estimate and settle the usage (`docs/GATEWAY.md`, Metered groups).
    pub fn metered(&self) -> Option<&Metered> {
        self.metered.as_ref()
    }

    /// Whether the group's refusals are enforced (`enforce`, default true). `false` is shadow
    /// mode: every request is checked and counted as usual and gets the same headers, and one
    /// that would have been refused is let through and counted as a shadow refusal
    /// (`Gateway::shadow`).
    pub fn enforce(&self) -> bool {
        self.enforce
    }

    /// What the group's requests do when the backend fails (`on_backend_error`, default the
    /// settings' value).
    pub fn on_backend_error(&self) -> OnBackendError {
        self.on_backend_error
    }

    /// The group's idempotency policy: `[settings.idempotency]` changed by the keys of its
    /// `[group.idempotency]` table.
    pub fn idempotency(&self) -> &IdempotencyPolicy {
        &self.idempotency
    }

    /// The windows that apply to `token`: its override if it has one, else the group's.
    pub fn limits_for(&self, token: &str) -> &Limits {
        if self.overrides.is_empty() {
            return &self.limits;
        }
        self.overrides.get(token).unwrap_or(&self.limits)
    }

    /// Whether `token` has an override in this group.
    pub fn has_override(&self, token: &str) -> bool {
        self.overrides.contains_key(token)
    }

    /// The store key of (`token`, this group), on the stack. Fails on an empty token or one
    /// longer than [`MAX_TOKEN_LEN`] bytes.
    pub fn key(&self, token: &str) -> Result<RateKey, TokenError> {
        check_token(token)?;
        let mut buf = [0u8; MAX_KEY_LEN];
        let name = self.name.as_bytes();
        let len = name.len() + 1 + token.len();
        let parts: [&[u8]; 3] = [name, &[KEY_SEPARATOR], token.as_bytes()];
        let mut at = 0;
        for p in parts {
            if let Some(dst) = buf.get_mut(at..at + p.len()) {
                dst.copy_from_slice(p);
            }
            at += p.len();
        }
        Ok(RateKey {
            buf,
            len: len as u8,
        })
    }
}

/// Groups sharing one path: at most one without a method, and one per method.
#[derive(Debug, Clone, Default)]
struct Slot {
    any: Option<usize>,
    methods: Vec<(Box<str>, usize)>,
}

impl Slot {
    /// The group for `method` here: the method-specific one first.
    fn pick(&self, method: &str) -> Option<usize> {
        self.methods
            .iter()
            .find(|(m, _)| &**m == method)
            .map(|&(_, g)| g)
            .or(self.any)
    }
}

/// A loaded policy: groups, overrides, settings, and the route tables.
#[derive(Debug, Clone)]
pub struct Policy {
    groups: Vec<Group>,
    exact: HashMap<Box<str>, Slot>,
    prefix: HashMap<Box<str>, Slot>,
    settings: Settings,
}

impl Policy {
    /// Load a policy file. Errors name the file, line and column.
    pub fn load(path: impl AsRef<Path>) -> Result<Policy, PolicyError> {
        let path = path.as_ref();
        let src = std::fs::read_to_string(path).map_err(|source| PolicyError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        Policy::from_toml_str(&src).map_err(|e| e.with_file(path))
    }

    /// Replace this policy with the one in `path`. On error, this policy is unchanged.
    ///
    /// Counts are kept across a reload: a store key is the group's name and the token, and
    /// the store keeps the counts of a key whose limit changes, for every window length the
    /// old and new windows share. Renaming a group, changing a window's length, or switching a
    /// window between exact and bucketed starts that window's counts afresh.
    pub fn reload(&mut self, path: impl AsRef<Path>) -> Result<(), PolicyError> {
        *self = Policy::load(path)?;
        Ok(())
    }

    /// Parse a policy from TOML text. Errors name the line and column.
    pub fn from_toml_str(src: &str) -> Result<Policy, PolicyError> {
        let loc = Locator::new(src);
        let raw: RawPolicy = toml::from_str(src).map_err(|e| loc.syntax(&e))?;
        Policy::build(&raw, &loc)
    }

    fn build(raw: &RawPolicy, loc: &Locator<'_>) -> Result<Policy, PolicyError> {
        let settings = Settings::from_raw(&raw.settings, loc)?;
        let mut groups: Vec<Group> = Vec::with_capacity(raw.groups.len());
        let mut exact: HashMap<Box<str>, Slot> = HashMap::new();
        let mut prefix: HashMap<Box<str>, Slot> = HashMap::new();
        let mut names: HashMap<String, usize> = HashMap::new();
        let concurrency_item =
            settings.ietf_headers() && settings.max_concurrent_per_token().is_some();
        for rg in &raw.groups {
            let group = build_group(rg, &settings, loc)?;
            if concurrency_item && group.name() == super::ietf::CONCURRENCY_POLICY {
                return Err(loc.invalid(
                    rg.name.span(),
                    "group name \"concurrency\" is the IETF item of max_concurrent_per_token: rename the group",
                ));
            }
            if let Some(&other) = names.get(group.name()) {
                let (line, _) = loc.line_col(
                    raw.groups
                        .get(other)
                        .map_or(0, |g: &RawGroup| g.name.span().start),
                );
                return Err(loc.invalid(
                    rg.name.span(),
                    format!(
                        "group name {:?} is already used (line {line})",
                        group.name()
                    ),
                ));
            }
            let idx = groups.len();
            let (table, key) = match &group.route {
                Route::Exact(p) => (&mut exact, p.clone()),
                Route::Prefix(p) => (&mut prefix, p.clone()),
            };
            let slot = table.entry(key).or_default();
            let taken = match &group.method {
                None => slot.any.replace(idx),
                Some(m) => match slot.methods.iter().find(|(x, _)| x == m) {
                    Some(&(_, g)) => Some(g),
                    None => {
                        slot.methods.push((m.clone(), idx));
                        None
                    }
                },
            };
            if let Some(other) = taken {
                let other_name = groups.get(other).map_or("?", |g| g.name());
                return Err(loc.invalid(
                    rg.route.span(),
                    format!(
                        "route {} {}is already the route of group {other_name:?}",
                        group.route,
                        group
                            .method
                            .as_deref()
                            .map(|m| format!("with method {m} "))
                            .unwrap_or_default(),
                    ),
                ));
            }
            names.insert(group.name().to_string(), idx);
            groups.push(group);
        }
        for ro in &raw.overrides {
            apply_override(ro, &mut groups, &names, loc)?;
        }
        Ok(Policy {
            groups,
            exact,
            prefix,
            settings,
        })
    }

    /// The group of a request: the most specific match wins. An exact route beats a prefix;
    /// a longer prefix beats a shorter one; at the same route, a group restricted to the
    /// request's method beats one without a method. `None` when no group matches.
    ///
    /// Allocates nothing: one hash lookup for the exact path, then one per `/` of the path,
    /// from the longest prefix to the shortest.
    pub fn match_route(&self, method: &str, path: &str) -> Option<&Group> {
        let idx = self.match_index(method, path)?;
        self.groups.get(idx)
    }

    fn match_index(&self, method: &str, path: &str) -> Option<usize> {
        if let Some(g) = self.exact.get(path).and_then(|s| s.pick(method)) {
            return Some(g);
        }
        if self.prefix.is_empty() {
            return None;
        }
        // The path itself (`/api/pbx` matches `/api/pbx/*`), then every prefix ending before
        // a '/', longest first; the last one is "" (the route `/*`).
        if let Some(g) = self.prefix.get(path).and_then(|s| s.pick(method)) {
            return Some(g);
        }
        let bytes = path.as_bytes();
        let mut end = bytes.len();
        while end > 0 {
            end -= 1;
            if bytes.get(end) == Some(&b'/') {
                let candidate = path.get(..end).unwrap_or("");
                if let Some(g) = self.prefix.get(candidate).and_then(|s| s.pick(method)) {
                    return Some(g);
                }
            }
        }
        None
    }

    /// Every group, in file order.
    pub fn groups(&self) -> &[Group] {
        &self.groups
    }

    /// The group named `name`.
    pub fn group(&self, name: &str) -> Option<&Group> {
        self.groups.iter().find(|g| &*g.name == name)
    }

    /// The settings.
    pub fn settings(&self) -> &Settings {
        &self.settings
    }
}

/// Validate a group name: 1 to 32 bytes of `[A-Za-z0-9_.-]`.
fn check_name(name: &Spanned<String>, loc: &Locator<'_>) -> Result<(), PolicyError> {
    let n = name.get_ref();
    if n.is_empty()
        || n.len() > MAX_GROUP_NAME_LEN
        || !n
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
    {
        return Err(loc.invalid(
            name.span(),
            format!(
                "group name {n:?} must be 1 to {MAX_GROUP_NAME_LEN} characters of A-Z, a-z, 0-9, '_', '-' or '.'"
            ),
        ));
    }
    Ok(())
}

/// Build the `Limits` of a `windows = [...]` array; `metered`: of a metered group (sliding
/// windows with room for overdrafts).
fn build_limits(
    windows: &Spanned<Vec<Spanned<RawWindow>>>,
    metered: bool,
    loc: &Locator<'_>,
) -> Result<Limits, PolicyError> {
    let list = windows.get_ref();
    if list.is_empty() {
        return Err(loc.invalid(windows.span(), "windows must hold at least one window"));
    }
    if list.len() > crate::MAX_WINDOWS {
        return Err(loc.invalid(
            windows.span(),
            format!("windows holds at most {} windows", crate::MAX_WINDOWS),
        ));
    }
    let mut limits = Vec::with_capacity(list.len());
    for w in list {
        let raw = w.get_ref();
        let ms =
            parse_window(raw.window.get_ref()).map_err(|m| loc.invalid(raw.window.span(), m))?;
        let mut l = Limit::new(raw.limit, std::time::Duration::from_millis(ms));
        if raw.exact && metered {
            return Err(loc.invalid(
                w.span(),
                "a metered group's windows are sliding: exact = true cannot be settled",
            ));
        }
        if raw.exact {
            l = l.exact();
        }
        if metered {
            l = l.metered();
        }
        // Validate each window on its own, so the error points at it.
        Limits::new(&[l]).map_err(|e| loc.invalid(w.span(), e.to_string()))?;
        limits.push(l);
    }
    Limits::new(&limits).map_err(|e| loc.invalid(windows.span(), e.to_string()))
}

fn build_group(
    rg: &RawGroup,
    settings: &Settings,
    loc: &Locator<'_>,
) -> Result<Group, PolicyError> {
    check_name(&rg.name, loc)?;
    let route = Route::parse(rg.route.get_ref()).map_err(|m| loc.invalid(rg.route.span(), m))?;
    let method = match &rg.method {
        None => None,
        Some(m) => {
            let up = m.get_ref().trim().to_ascii_uppercase();
            if up.is_empty() || !up.bytes().all(|b| b.is_ascii_uppercase()) {
                return Err(loc.invalid(
                    m.span(),
                    format!(
                        "invalid method {:?}: expected a name such as \"POST\"",
                        m.get_ref()
                    ),
                ));
            }
            Some(up.into_boxed_str())
        }
    };
    let metered = match &rg.metered {
        None => None,
        Some(raw) => Some(Metered::from_raw(raw, loc)?),
    };
    let limits = build_limits(&rg.windows, metered.is_some(), loc)?;
    if let (Some(c), Some(_)) = (&rg.cost, &metered) {
        return Err(loc.invalid(
            c.span(),
            "a metered group's cost comes from the upstream: set [group.metered] estimate instead of cost",
        ));
    }
    if let (Some(m), Some(raw)) = (&metered, &rg.metered) {
        check_estimate(
            m,
            raw.estimate.as_ref().map_or(0..0, |e| e.span()),
            &limits,
            loc,
        )?;
    }
    let cost = match &rg.cost {
        None => 1,
        Some(c) => *c.get_ref(),
    };
    if cost == 0 {
        let span = rg.cost.as_ref().map_or(0..0, |c| c.span());
        return Err(loc.invalid(span, "cost must be at least 1"));
    }
    if cost > limits.min_limit() {
        let span = rg.cost.as_ref().map_or(0..0, |c| c.span());
        return Err(loc.invalid(
            span,
            format!(
                "cost {cost} is larger than the group's smallest limit {}: no request could ever be admitted",
                limits.min_limit()
            ),
        ));
    }
    Ok(Group {
        name: rg.name.get_ref().as_str().into(),
        route,
        method,
        limits,
        cost,
        enforce: rg.enforce.unwrap_or(true),
        on_backend_error: match &rg.on_backend_error {
            None => settings.on_backend_error(),
            Some(mode) => OnBackendError::from_raw(mode, loc)?,
        },
        idempotency: match &rg.idempotency {
            None => settings.idempotency().clone(),
            Some(raw) => IdempotencyPolicy::from_raw(raw, settings.idempotency(), loc)?,
        },
        metered,
        overrides: HashMap::new(),
    })
}

/// Refuse a fixed estimate above the smallest limit of `limits`: no request could be admitted.
fn check_estimate(
    m: &Metered,
    span: std::ops::Range<usize>,
    limits: &Limits,
    loc: &Locator<'_>,
) -> Result<(), PolicyError> {
    if m.estimate() > limits.min_limit() {
        return Err(loc.invalid(
            span,
            format!(
                "estimate {} is larger than the smallest limit {}: no request could ever be admitted",
                m.estimate(),
                limits.min_limit()
            ),
        ));
    }
    Ok(())
}

fn apply_override(
    ro: &RawOverride,
    groups: &mut [Group],
    names: &HashMap<String, usize>,
    loc: &Locator<'_>,
) -> Result<(), PolicyError> {
    let token = ro.token.get_ref();
    check_token(token).map_err(|e| loc.invalid(ro.token.span(), e.to_string()))?;
    if token.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(loc.invalid(
            ro.token.span(),
            "a token cannot hold whitespace or control characters",
        ));
    }
    let Some(&gi) = names.get(ro.group.get_ref().as_str()) else {
        return Err(loc.invalid(
            ro.group.span(),
            format!("override of an unknown group {:?}", ro.group.get_ref()),
        ));
    };
    let Some(group) = groups.get_mut(gi) else {
        return Err(loc.invalid(ro.group.span(), "unknown group"));
    };
    let limits = build_limits(&ro.windows, group.metered.is_some(), loc)?;
    if let Some(m) = &group.metered {
        check_estimate(m, ro.windows.span(), &limits, loc)?;
    }
    if group.cost > limits.min_limit() {
        return Err(loc.invalid(
            ro.windows.span(),
            format!(
                "the group's cost {} is larger than this override's smallest limit {}",
                group.cost,
                limits.min_limit()
            ),
        ));
    }
    if group.overrides.contains_key(token.as_str()) {
        return Err(loc.invalid(
            ro.token.span(),
            format!(
                "token {token:?} already has an override for group {:?}",
                group.name()
            ),
        ));
    }
    group.overrides.insert(token.as_str().into(), limits);
    Ok(())
}

#[cfg(test)]
#[path = "policy_tests.rs"]
mod tests;
