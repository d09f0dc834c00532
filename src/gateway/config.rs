//! The TOML schema of a policy file, and errors that name the line.
//!
//! These are the raw, deserialized forms; [`super::Policy`] validates them and builds the
//! table. Every value that can be wrong is kept with its byte span ([`toml::Spanned`]), so a
//! validation error points at the line and column of the offending value, just as a TOML
//! syntax error does.

use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use toml::Spanned;

/// A policy file that cannot be used: unreadable, not TOML, or not a valid policy. Every
/// variant but [`PolicyError::Io`] names the line and column (1-based) of the problem.
#[derive(Debug)]
#[non_exhaustive]
pub enum PolicyError {
    /// The file could not be read.
    Io {
        /// The file.
        path: PathBuf,
        /// What the operating system said.
        source: std::io::Error,
    },
    /// Not valid TOML, an unknown key, or a value of the wrong type.
    Syntax {
        /// The file, when the policy was loaded from one.
        file: Option<PathBuf>,
        /// 1-based line of the problem.
        line: usize,
        /// 1-based column (in characters) of the problem.
        column: usize,
        /// What is wrong.
        message: String,
    },
    /// Valid TOML, but not a valid policy (a bad window, a duplicate route, an override of an
    /// unknown group, ...).
    Invalid {
        /// The file, when the policy was loaded from one.
        file: Option<PathBuf>,
        /// 1-based line of the problem.
        line: usize,
        /// 1-based column (in characters) of the problem.
        column: usize,
        /// What is wrong.
        message: String,
    },
}

impl PolicyError {
    /// The 1-based line of the problem (`None` for an I/O error).
    pub fn line(&self) -> Option<usize> {
        match self {
            PolicyError::Io { .. } => None,
            PolicyError::Syntax { line, .. } | PolicyError::Invalid { line, .. } => Some(*line),
        }
    }

    /// The 1-based column of the problem (`None` for an I/O error).
    pub fn column(&self) -> Option<usize> {
        match self {
            PolicyError::Io { .. } => None,
            PolicyError::Syntax { column, .. } | PolicyError::Invalid { column, .. } => {
                Some(*column)
            }
        }
    }

    /// The message without the location.
    pub fn message(&self) -> String {
        match self {
            PolicyError::Io { source, .. } => source.to_string(),
            PolicyError::Syntax { message, .. } | PolicyError::Invalid { message, .. } => {
                message.clone()
            }
        }
    }

    pub(crate) fn with_file(mut self, path: &Path) -> PolicyError {
        match &mut self {
            PolicyError::Io { .. } => {}
            PolicyError::Syntax { file, .. } | PolicyError::Invalid { file, .. } => {
                *file = Some(path.to_path_buf());
            }
        }
        self
    }
}

impl fmt::Display for PolicyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PolicyError::Io { path, source } => {
                write!(f, "cannot read policy {}: {source}", path.display())
            }
            PolicyError::Syntax {
                file,
                line,
                column,
                message,
            }
            | PolicyError::Invalid {
                file,
                line,
                column,
                message,
            } => match file {
                Some(p) => write!(f, "{}:{line}:{column}: {message}", p.display()),
                None => write!(f, "line {line}, column {column}: {message}"),
            },
        }
    }
}

impl std::error::Error for PolicyError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            PolicyError::Io { source, .. } => Some(source),
            _ => None,
        }
    }
}

/// Turns byte spans of one source text into line:column errors.
pub(crate) struct Locator<'a> {
    src: &'a str,
}

impl<'a> Locator<'a> {
    pub(crate) fn new(src: &'a str) -> Locator<'a> {
        Locator { src }
    }

    /// 1-based line and column (in characters) of byte offset `at`.
    pub(crate) fn line_col(&self, at: usize) -> (usize, usize) {
        let mut at = at.min(self.src.len());
        while !self.src.is_char_boundary(at) {
            at -= 1;
        }
        let before = self.src.get(..at).unwrap_or("");
        let line = before.matches('\n').count() + 1;
        let line_start = before.rfind('\n').map_or(0, |i| i + 1);
        let column = before.get(line_start..).map_or(0, |s| s.chars().count()) + 1;
        (line, column)
    }

    /// A validation error at `span`.
    pub(crate) fn invalid(&self, span: Range<usize>, message: impl Into<String>) -> PolicyError {
        let (line, column) = self.line_col(span.start);
        PolicyError::Invalid {
            file: None,
            line,
            column,
            message: message.into(),
        }
    }

    /// A TOML error (syntax, type or unknown key), located by its span.
    pub(crate) fn syntax(&self, e: &toml::de::Error) -> PolicyError {
        let (line, column) = self.line_col(e.span().map_or(0, |s| s.start));
        PolicyError::Syntax {
            file: None,
            line,
            column,
            message: e.message().trim().to_string(),
        }
    }
}

/// The whole file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawPolicy {
    #[serde(default)]
    pub settings: RawSettings,
    #[serde(default, rename = "group")]
    pub groups: Vec<RawGroup>,
    #[serde(default, rename = "override")]
    pub overrides: Vec<RawOverride>,
}

/// `[settings]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawSettings {
    pub body_style: Option<Spanned<String>>,
    pub headers: Option<Spanned<String>>,
    pub ietf_headers: Option<Spanned<bool>>,
    pub partition_key: Option<bool>,
    pub partition_key_secret: Option<Spanned<String>>,
    pub max_concurrent_per_token: Option<Spanned<u32>>,
    pub max_body_bytes: Option<Spanned<u64>>,
    pub if_match: Option<bool>,
    pub on_backend_error: Option<Spanned<String>>,
    pub backend_timeout: Option<Spanned<String>>,
    pub permit_lease: Option<Spanned<String>>,
    #[serde(default)]
    pub idempotency: RawIdempotency,
}

/// `[settings.idempotency]`, and a group's `[group.idempotency]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawIdempotency {
    pub key_format: Option<Spanned<String>>,
    pub max_key_len: Option<Spanned<u64>>,
    pub replay_header: Option<Spanned<String>>,
    pub store_statuses: Option<Vec<Spanned<toml::Value>>>,
    pub except_statuses: Option<Vec<Spanned<toml::Value>>>,
    pub replay_spends_quota: Option<bool>,
    pub replay_headers: Option<Vec<Spanned<String>>>,
    pub max_response_bytes: Option<Spanned<u64>>,
}

/// One `[[group]]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawGroup {
    pub name: Spanned<String>,
    pub route: Spanned<String>,
    pub method: Option<Spanned<String>>,
    pub windows: Spanned<Vec<Spanned<RawWindow>>>,
    pub cost: Option<Spanned<u32>>,
    pub enforce: Option<bool>,
    pub on_backend_error: Option<Spanned<String>>,
    pub idempotency: Option<RawIdempotency>,
    pub metered: Option<RawMetered>,
}

/// A group's `[group.metered]`: its cost comes from the upstream's response.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawMetered {
    pub unit: Spanned<String>,
    pub estimate: Option<Spanned<u32>>,
    pub estimate_header: Option<Spanned<String>>,
    pub usage_header: Option<Spanned<String>>,
    pub usage_trailer: Option<Spanned<String>>,
    pub reservation_ttl: Option<Spanned<String>>,
}

/// One `[[override]]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawOverride {
    pub token: Spanned<String>,
    pub group: Spanned<String>,
    pub windows: Spanned<Vec<Spanned<RawWindow>>>,
}

/// `{ limit = 60, window = "60s" }`, optionally `exact = true`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawWindow {
    pub limit: u32,
    pub window: Spanned<String>,
    #[serde(default)]
    pub exact: bool,
}

/// Parse a window length: a whole number followed by `s`, `m`, `h` or `d`.
pub(crate) fn parse_window(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let unit_s: u64 = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3_600,
        "d" => 86_400,
        _ => {
            return Err(format!(
                "invalid window {s:?}: expected a whole number followed by s, m, h or d (\"60s\", \"1h\")"
            ))
        }
    };
    let n: u64 = num
        .parse()
        .map_err(|_| format!("invalid window {s:?}: expected a whole number before the unit"))?;
    n.checked_mul(unit_s)
        .and_then(|secs| secs.checked_mul(1000))
        .ok_or_else(|| format!("invalid window {s:?}: too long"))
}

/// Parse the duration setting `key` (a window length, [`parse_window`]) that must be 1 s to
/// 1 day (`permit_lease`, `reservation_ttl`); a bad value fails with its line.
pub(crate) fn parse_day_at_most(
    v: &Spanned<String>,
    key: &str,
    loc: &Locator<'_>,
) -> Result<std::time::Duration, PolicyError> {
    let ms = parse_window(v.get_ref())
        .map_err(|why| loc.invalid(v.span(), why.replace("window", key)))?;
    if !(1_000..=86_400_000).contains(&ms) {
        return Err(loc.invalid(v.span(), format!("{key} must be 1 s to 1 day")));
    }
    Ok(std::time::Duration::from_millis(ms))
}

/// Format a window length the way a config writes it (`60s` stays `60s`, `3600s` is `1h`).
pub(crate) fn format_window(ms: u64) -> String {
    if !ms.is_multiple_of(1000) {
        return format!("{ms}ms");
    }
    let s = ms / 1000;
    if s >= 86_400 && s.is_multiple_of(86_400) {
        format!("{}d", s / 86_400)
    } else if s >= 3_600 && s.is_multiple_of(3_600) {
        format!("{}h", s / 3_600)
    } else if s > 60 && s.is_multiple_of(60) {
        format!("{}m", s / 60)
    } else {
        format!("{s}s")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_parse_with_suffixes() {
        assert_eq!(parse_window("60s"), Ok(60_000));
        assert_eq!(parse_window("1m"), Ok(60_000));
        assert_eq!(parse_window("1h"), Ok(3_600_000));
        assert_eq!(parse_window("2d"), Ok(172_800_000));
        for bad in [
            "",
            "60",
            "s",
            "60x",
            "1.5h",
            "-1s",
            "60 s",
            "99999999999999999999d",
        ] {
            assert!(parse_window(bad).is_err(), "{bad:?}");
        }
        assert_eq!(format_window(60_000), "60s");
        assert_eq!(format_window(3_600_000), "1h");
        assert_eq!(format_window(120_000), "2m");
        assert_eq!(format_window(86_400_000), "1d");
        assert_eq!(format_window(1_500), "1500ms");
    }

    #[test]
    fn line_and_column_count_characters() {
        let l = Locator::new("a = 1\nbé = \"x\"\n");
        assert_eq!(l.line_col(0), (1, 1));
        assert_eq!(l.line_col(6), (2, 1));
        // After the two-byte 'é', column counts characters.
        assert_eq!(l.line_col(9), (2, 3));
        assert_eq!(l.line_col(8), (2, 2)); // inside 'é': snapped back
        assert_eq!(l.line_col(1_000), (3, 1));
    }
}
