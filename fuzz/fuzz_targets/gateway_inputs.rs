//! The checks behind the `policy` and `headers` fuzz targets, in one file that both the targets
//! and `tests/fuzz_gateway.rs` include (`#[path]`), so the inputs kept under
//! `tests/fixtures/fuzz/{policy,headers}/` replay the very same checks under plain `cargo test`.
//!
//! Plain bytes in, no `arbitrary`: the test crate does not depend on it.

// Each fuzz target uses half of this file.
#![allow(dead_code)]

use tollgate::gateway::{bearer_token, Policy, Versions};
use tollgate::IdempotencyKey;

/// Reads an input a byte at a time; zeros once it runs out.
struct Input<'a> {
    data: &'a [u8],
    at: usize,
}

impl<'a> Input<'a> {
    fn new(data: &'a [u8]) -> Self {
        Input { data, at: 0 }
    }

    fn byte(&mut self) -> u8 {
        let b = self.data.get(self.at).copied().unwrap_or(0);
        self.at += 1;
        b
    }

    fn pick<T: Copy>(&mut self, from: &[T]) -> T {
        from[usize::from(self.byte()) % from.len()]
    }

    fn rest(&self) -> &'a [u8] {
        self.data.get(self.at..).unwrap_or(&[])
    }
}

const SEGMENTS: &[&str] = &["api", "pbx", "auth", "login", "a", "b"];

/// `/` and 0 to 3 segments.
fn path(input: &mut Input<'_>) -> String {
    let n = input.byte() % 4;
    let mut p = String::new();
    for _ in 0..n {
        p.push('/');
        p.push_str(input.pick(SEGMENTS));
    }
    if p.is_empty() || input.byte().is_multiple_of(8) {
        p.push('/');
    }
    p
}

/// One generated group: its name, route as written, and method as written.
struct Spec {
    name: String,
    route: String,
    method: Option<&'static str>,
}

impl Spec {
    /// Whether the group takes a `method` request for `path` (the documented rules).
    fn takes(&self, method: &str, path: &str) -> bool {
        if let Some(m) = self.method {
            if !m.eq_ignore_ascii_case(method) {
                return false;
            }
        }
        match self.route.strip_suffix("/*") {
            Some(base) => {
                path == base
                    || (path.starts_with(base) && path.as_bytes().get(base.len()) == Some(&b'/'))
            }
            None => path == self.route,
        }
    }

    /// Most specific first: an exact route, then the longer prefix, then a method.
    fn rank(&self) -> (u8, usize, u8) {
        let (kind, len) = match self.route.strip_suffix("/*") {
            Some(base) => (1, usize::MAX - base.len()),
            None => (0, 0),
        };
        (kind, len, u8::from(self.method.is_none()))
    }

    /// The route and upper-cased method: two groups with the same are a load error.
    fn slot(&self) -> (String, Option<String>) {
        (
            self.route.clone(),
            self.method.map(|m| m.to_ascii_uppercase()),
        )
    }
}

/// `policy` target: a policy file either parses or gives a located error, and a parsed policy
/// routes every request to the group the documented rules pick (checked against a reference
/// that tries every group).
pub fn policy(data: &[u8]) {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    if mode % 4 == 0 {
        // Any text at all.
        let text = String::from_utf8_lossy(rest);
        if let Err(e) = Policy::from_toml_str(&text) {
            assert!(!e.message().is_empty(), "an error without a message");
            let line = e.line().unwrap_or(1);
            assert!(
                line >= 1 && line <= text.split('\n').count(),
                "line {line} outside the text: {e}"
            );
            assert!(e.column().unwrap_or(1) >= 1);
        }
        return;
    }
    // Generated groups, all valid but for possible duplicates.
    let mut input = Input::new(rest);
    let n = input.byte() % 8;
    let mut specs: Vec<Spec> = Vec::new();
    let mut text = String::new();
    for i in 0..n {
        let mut route = path(&mut input);
        if input.byte().is_multiple_of(2) {
            route = format!("{}/*", route.trim_end_matches('/'));
        }
        let method = match input.byte() % 5 {
            0 => Some("GET"),
            1 => Some("POST"),
            2 => Some("post"),
            _ => None,
        };
        let limit = 1 + u32::from(input.byte() % 100);
        text.push_str(&format!(
            "[[group]]\nname = \"g{i}\"\nroute = \"{route}\"\nwindows = [{{ limit = {limit}, window = \"60s\" }}]\n"
        ));
        if let Some(m) = method {
            text.push_str(&format!("method = \"{m}\"\n"));
        }
        specs.push(Spec {
            name: format!("g{i}"),
            route,
            method,
        });
    }
    let duplicate = specs
        .iter()
        .enumerate()
        .any(|(i, a)| specs.iter().skip(i + 1).any(|b| a.slot() == b.slot()));
    let policy = match Policy::from_toml_str(&text) {
        Ok(p) => {
            assert!(
                !duplicate,
                "two groups with one route and method loaded:\n{text}"
            );
            p
        }
        Err(e) => {
            assert!(duplicate, "a valid policy refused: {e}\n{text}");
            return;
        }
    };
    for _ in 0..8 {
        let method = input.pick(&["GET", "POST", "DELETE"]);
        let p = path(&mut input);
        let got = policy.match_route(method, &p).map(|g| g.name().to_string());
        let want = specs
            .iter()
            .filter(|s| s.takes(method, &p))
            .min_by_key(|s| s.rank())
            .map(|s| s.name.clone());
        assert_eq!(got, want, "{method} {p} routed wrong by:\n{text}");
        if let Some(g) = policy.match_route(method, &p) {
            let token = String::from_utf8_lossy(input.rest());
            let token = token.get(..token.len().min(300)).unwrap_or("");
            match g.key(token) {
                Ok(k) => {
                    assert!(k.as_bytes().starts_with(g.name().as_bytes()));
                    assert!(k.as_bytes().ends_with(token.as_bytes()));
                }
                Err(_) => {
                    assert!(token.is_empty() || token.len() > tollgate::gateway::MAX_TOKEN_LEN)
                }
            }
        }
    }
}

/// `headers` target: the request headers tollgate reads (`Idempotency-Key`, `Authorization:
/// Bearer`, `If-Match`) give a value or a refusal, never a panic, and what they accept holds up.
pub fn headers(data: &[u8]) {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let text = String::from_utf8_lossy(rest);
    match mode % 3 {
        0 => {
            // Idempotency-Key: an accepted key is a version 4 UUID, and its canonical form
            // parses back to the same key.
            if let Ok(k) = IdempotencyKey::parse(&text) {
                assert_eq!(k.uuid().get_version_num(), 4);
                let again = IdempotencyKey::parse(&k.uuid().to_string());
                assert_eq!(again.ok(), Some(k));
            }
        }
        1 => {
            // Authorization: a token is visible ASCII, non-empty, and part of the header.
            let Ok(value) = http::HeaderValue::from_bytes(rest) else {
                return;
            };
            let mut map = http::HeaderMap::new();
            map.insert(http::header::AUTHORIZATION, value);
            if let Some(t) = bearer_token(&map) {
                assert!(!t.is_empty() && t.bytes().all(|b| (0x21..=0x7E).contains(&b)));
                let header = String::from_utf8_lossy(rest);
                assert!(header.contains(t));
                assert!(header
                    .trim_start()
                    .get(..6)
                    .is_some_and(|s| s.eq_ignore_ascii_case("bearer")));
            }
        }
        _ => {
            // If-Match: the current tag (alone, or in a list) or `*` bumps the version; once
            // bumped, the same header is stale. Anything else leaves the version alone.
            let opts = tollgate::Options::default()
                .segment_size_log2(16)
                .compactor(false);
            let Ok(store) = tollgate::Store::open_in_memory(opts) else {
                return;
            };
            let versions = Versions::new(&store);
            let resource = "/api/r/1";
            let Ok(before) = versions.current(resource) else {
                return;
            };
            let written = format!("{before}");
            let names_current = text.trim() == "*" || text.split(',').any(|t| t.trim() == written);
            match versions
                .compare_and_bump(resource, &text)
                .expect("the store answers")
            {
                Ok(tag) => {
                    assert!(names_current, "{text:?} matched {written}");
                    assert_ne!(tag, before);
                    assert_eq!(versions.current(resource).ok(), Some(tag));
                    if text.trim() != "*" {
                        assert!(versions
                            .compare_and_bump(resource, &text)
                            .expect("the store answers")
                            .is_err());
                    }
                }
                Err(stale) => {
                    assert!(!names_current, "{text:?} refused, current {written}");
                    assert_eq!(stale.current, before);
                    assert_eq!(versions.current(resource).ok(), Some(before));
                }
            }
        }
    }
}
