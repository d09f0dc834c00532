//! Unit tests of `policy.rs`, kept beside it in a file of their own.

use super::*;
use crate::{ManualClock, Options, Store};

const ZORIO: &str = include_str!("../../examples/policies/zorio.toml");
const ERZYCALL: &str = include_str!("../../examples/policies/erzycall.toml");

fn name<'a>(p: &'a Policy, method: &str, path: &str) -> Option<&'a str> {
    p.match_route(method, path).map(|g| g.name())
}

#[test]
fn seed_policies_load() {
    let z = Policy::from_toml_str(ZORIO).unwrap();
    assert_eq!(z.groups().len(), 6);
    let limit_of = |path: &str| {
        let g = z.match_route("POST", path).unwrap();
        let l = g.limits().as_slice()[0];
        assert_eq!(l.window_ms(), 60_000);
        l.limit()
    };
    assert_eq!(limit_of("/api/pbx/calls/click-to-call"), 10);
    assert_eq!(limit_of("/api/pbx/extensions"), 60);
    assert_eq!(limit_of("/api/telesales/leads"), 120);
    assert_eq!(limit_of("/api/autocall/campaigns"), 120);
    assert_eq!(limit_of("/api/auth/login"), 5);
    assert_eq!(limit_of("/api/auth/refresh"), 30);
    let login = z.match_route("POST", "/api/auth/login").unwrap();
    assert_eq!(login.limits().as_slice()[0].mode(), crate::Mode::Exact);

    let e = Policy::from_toml_str(ERZYCALL).unwrap();
    let g = e.match_route("GET", "/v1/anything").unwrap();
    let l = g.limits().as_slice();
    assert_eq!((l[0].limit(), l[0].window_ms()), (60, 60_000));
    assert_eq!((l[1].limit(), l[1].window_ms()), (1000, 3_600_000));
}

#[test]
fn most_specific_route_wins() {
    let p = Policy::from_toml_str(
        r#"
        [[group]]
        name = "all"
        route = "/*"
        windows = [{ limit = 1000, window = "60s" }]
        [[group]]
        name = "pbx"
        route = "/api/pbx/*"
        windows = [{ limit = 60, window = "60s" }]
        [[group]]
        name = "pbx-calls"
        route = "/api/pbx/calls/*"
        windows = [{ limit = 30, window = "60s" }]
        [[group]]
        name = "pbx-calls-post"
        route = "/api/pbx/calls/*"
        method = "post"
        windows = [{ limit = 20, window = "60s" }]
        [[group]]
        name = "c2c"
        route = "/api/pbx/calls/click-to-call"
        windows = [{ limit = 10, window = "60s" }]
        [[group]]
        name = "c2c-delete"
        route = "/api/pbx/calls/click-to-call"
        method = "DELETE"
        windows = [{ limit = 5, window = "60s" }]
        [[group]]
        name = "hangup"
        route = "/api/pbx/calls/hangup"
        method = "POST"
        windows = [{ limit = 5, window = "60s" }]
        "#,
    )
    .unwrap();
    // Exact over any prefix; method-specific over method-less at the same route.
    assert_eq!(
        name(&p, "POST", "/api/pbx/calls/click-to-call"),
        Some("c2c")
    );
    assert_eq!(
        name(&p, "DELETE", "/api/pbx/calls/click-to-call"),
        Some("c2c-delete")
    );
    // A longer prefix over a shorter; a method-specific prefix over the method-less one.
    assert_eq!(name(&p, "GET", "/api/pbx/calls/42"), Some("pbx-calls"));
    assert_eq!(
        name(&p, "POST", "/api/pbx/calls/42"),
        Some("pbx-calls-post")
    );
    assert_eq!(name(&p, "GET", "/api/pbx/extensions"), Some("pbx"));
    // The prefix's own path matches it; a sibling sharing the text does not.
    assert_eq!(name(&p, "GET", "/api/pbx"), Some("pbx"));
    assert_eq!(name(&p, "GET", "/api/pbx/"), Some("pbx"));
    assert_eq!(name(&p, "GET", "/api/pbxfoo"), Some("all"));
    // An exact route restricted to another method falls through to the prefixes.
    assert_eq!(name(&p, "GET", "/api/pbx/calls/hangup"), Some("pbx-calls"));
    assert_eq!(name(&p, "POST", "/api/pbx/calls/hangup"), Some("hangup"));
    assert_eq!(name(&p, "GET", "/"), Some("all"));
    assert_eq!(name(&p, "GET", ""), Some("all"));
    assert_eq!(name(&p, "GET", "/health"), Some("all"));
    // Methods are compared as sent (upper case).
    assert_eq!(name(&p, "post", "/api/pbx/calls/42"), Some("pbx-calls"));
}

#[test]
fn no_match_without_a_catch_all() {
    let p = Policy::from_toml_str(ZORIO).unwrap();
    assert_eq!(name(&p, "GET", "/health"), None);
    assert_eq!(name(&p, "GET", "/api"), None);
    assert_eq!(name(&p, "GET", "/api/auth/login/extra"), Some("auth"));
}

fn err(src: &str) -> PolicyError {
    match Policy::from_toml_str(src) {
        Ok(_) => panic!("accepted:\n{src}"),
        Err(e) => e,
    }
}

#[test]
fn errors_name_the_line() {
    let cases: &[(&str, usize, &str)] = &[
        // TOML syntax error.
        ("[[group]]\nname = \"a\"\nroute = \"/a\nwindows = []\n", 3, ""),
        // Unknown key.
        (
            "[[group]]\nname = \"a\"\nroute = \"/a\"\nwindow = [{ limit = 1, window = \"1s\" }]\n",
            4,
            "unknown field",
        ),
        // Wrong type.
        (
            "[settings]\nietf_headers = \"yes\"\n",
            2,
            "",
        ),
        // Bad window unit.
        (
            "[[group]]\nname = \"a\"\nroute = \"/a\"\nwindows = [\n  { limit = 1, window = \"60x\" },\n]\n",
            5,
            "invalid window",
        ),
        // Exact above 64.
        (
            "[[group]]\nname = \"a\"\nroute = \"/a\"\n\nwindows = [{ limit = 65, window = \"60s\", exact = true }]\n",
            5,
            "at most 64",
        ),
        // Duplicate route.
        (
            "[[group]]\nname = \"a\"\nroute = \"/a/*\"\nwindows = [{ limit = 1, window = \"1s\" }]\n[[group]]\nname = \"b\"\nroute = \"/a/*\"\nwindows = [{ limit = 1, window = \"1s\" }]\n",
            7,
            "already the route",
        ),
        // Duplicate name.
        (
            "[[group]]\nname = \"a\"\nroute = \"/a\"\nwindows = [{ limit = 1, window = \"1s\" }]\n[[group]]\nname = \"a\"\nroute = \"/b\"\nwindows = [{ limit = 1, window = \"1s\" }]\n",
            6,
            "line 2",
        ),
        // Bad route.
        (
            "[[group]]\nname = \"a\"\nroute = \"/a/*/b\"\nwindows = [{ limit = 1, window = \"1s\" }]\n",
            3,
            "'*'",
        ),
        // Cost above the limit.
        (
            "[[group]]\nname = \"a\"\nroute = \"/a\"\nwindows = [{ limit = 5, window = \"1m\" }]\ncost = 6\n",
            5,
            "cost 6",
        ),
        // Override of an unknown group.
        (
            "[[group]]\nname = \"a\"\nroute = \"/a\"\nwindows = [{ limit = 5, window = \"1m\" }]\n\n[[override]]\ntoken = \"t\"\ngroup = \"nope\"\nwindows = [{ limit = 50, window = \"1m\" }]\n",
            8,
            "unknown group",
        ),
        // Bad body style.
        ("[settings]\n\nbody_style = \"xml\"\n", 3, "body_style"),
        // A header that is never replayed.
        (
            "[settings.idempotency]\nreplay_headers = [\"content-type\",\n  \"set-cookie\"]\n",
            3,
            "never replayed",
        ),
        // Bad status.
        ("[settings.idempotency]\nstore_statuses = [\"2xx\", 700]\n", 2, "invalid status"),
        // Unknown headers mode.
        ("[settings]\nbody_style = \"error\"\nheaders = \"rfc\"\n", 3, "unknown headers mode"),
        // Both spellings of the header mode.
        ("[settings]\nheaders = \"both\"\nietf_headers = true\n", 3, "not both"),
        // A partition key secret too short to be one.
        ("[settings]\npartition_key = true\npartition_key_secret = \"short\"\n", 3, "at least 16"),
        // enforce is a bool.
        (
            "[[group]]\nname = \"a\"\nroute = \"/a\"\nwindows = [{ limit = 1, window = \"1s\" }]\nenforce = \"no\"\n",
            5,
            "",
        ),
        // The concurrency cap's IETF item name, taken by a group.
        (
            "[settings]\nheaders = \"ietf\"\nmax_concurrent_per_token = 3\n[[group]]\nname = \"concurrency\"\nroute = \"/a\"\nwindows = [{ limit = 1, window = \"1s\" }]\n",
            5,
            "concurrency",
        ),
        // An unknown body style names the new one too.
        ("[settings]\nbody_style = \"problem+json\"\n", 2, "\"problem\""),
    ];
    for (src, line, needle) in cases {
        let e = err(src);
        assert_eq!(e.line(), Some(*line), "{src}\n=> {e}");
        assert!(e.to_string().contains(needle), "{e}");
        assert!(
            e.to_string().starts_with(&format!("line {line}, column ")),
            "{e}"
        );
    }
}

#[test]
fn header_modes_shadow_groups_and_problem_bodies() {
    use crate::gateway::{BodyStyle, HeaderMode};
    let settings = |src: &str| Policy::from_toml_str(src).unwrap().settings().clone();
    assert_eq!(settings("").headers(), HeaderMode::Legacy);
    assert!(!settings("").ietf_headers());
    assert!(!settings("").partition_key());
    assert_eq!(
        settings("[settings]\nietf_headers = true").headers(),
        HeaderMode::Both
    );
    assert_eq!(
        settings("[settings]\nietf_headers = false").headers(),
        HeaderMode::Legacy
    );
    for (name, mode) in [
        ("legacy", HeaderMode::Legacy),
        ("ietf", HeaderMode::Ietf),
        ("both", HeaderMode::Both),
    ] {
        let s = settings(&format!("[settings]\nheaders = \"{name}\""));
        assert_eq!(s.headers(), mode);
        assert_eq!(s.ietf_headers(), mode.ietf());
    }
    assert!(HeaderMode::Both.legacy() && !HeaderMode::Ietf.legacy());
    let s = settings("[settings]\nbody_style = \"problem\"\npartition_key = true");
    assert_eq!(s.body_style(), BodyStyle::Problem);
    assert!(s.partition_key());
    // Without a configured secret: the process's; with one: the same key in every process.
    assert_eq!(
        s.partition_secret(),
        crate::gateway::PartitionSecret::process()
    );
    let shared = "[settings]\npartition_key = true\npartition_key_secret = \"0123456789abcdef\"";
    let (a, b) = (settings(shared), settings(shared));
    assert_eq!(
        a.partition_secret().key_of("tok"),
        b.partition_secret().key_of("tok")
    );
    assert_ne!(
        a.partition_secret(),
        crate::gateway::PartitionSecret::process()
    );
    assert!(!format!("{a:?}").contains("0123456789abcdef"));

    let p = Policy::from_toml_str(
        r#"
        [[group]]
        name = "new-limit"
        route = "/api/new/*"
        windows = [{ limit = 5, window = "60s" }]
        enforce = false
        [[group]]
        name = "old-limit"
        route = "/api/old/*"
        windows = [{ limit = 5, window = "60s" }]
        enforce = true
        [[group]]
        name = "concurrency"
        route = "/api/c/*"
        windows = [{ limit = 5, window = "60s" }]
        "#,
    )
    .unwrap();
    assert!(!p.group("new-limit").unwrap().enforce());
    assert!(p.group("old-limit").unwrap().enforce());
    // Enforced by default; the name "concurrency" is free without IETF headers and a cap.
    assert!(p.group("concurrency").unwrap().enforce());
}

#[test]
fn load_names_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");
    std::fs::write(&path, "[[group]]\nname = 1\n").unwrap();
    let e = Policy::load(&path).unwrap_err();
    assert!(matches!(e, PolicyError::Syntax { line: 2, .. }), "{e:?}");
    assert!(
        e.to_string().starts_with(&format!("{}:2:", path.display())),
        "{e}"
    );
    let missing = Policy::load(dir.path().join("missing.toml")).unwrap_err();
    assert!(matches!(missing, PolicyError::Io { .. }));
}

const WITH_OVERRIDES: &str = r#"
    [[group]]
    name = "pbx"
    route = "/api/pbx/*"
    windows = [{ limit = 60, window = "60s" }]

    [[group]]
    name = "bulk"
    route = "/api/pbx/bulk"
    method = "POST"
    windows = [{ limit = 100, window = "60s" }]
    cost = 10

    [[override]]
    token = "tok_enterprise"
    group = "pbx"
    windows = [{ limit = 600, window = "60s" }, { limit = 10000, window = "1h" }]
"#;

#[test]
fn overrides_apply_to_their_token_and_group_only() {
    let p = Policy::from_toml_str(WITH_OVERRIDES).unwrap();
    let pbx = p.group("pbx").unwrap();
    assert_eq!(pbx.limits_for("tok_enterprise").as_slice()[0].limit(), 600);
    assert_eq!(pbx.limits_for("tok_enterprise").len(), 2);
    assert!(pbx.has_override("tok_enterprise"));
    assert_eq!(pbx.limits_for("tok_other").as_slice()[0].limit(), 60);
    let bulk = p.group("bulk").unwrap();
    assert_eq!(bulk.limits_for("tok_enterprise").as_slice()[0].limit(), 100);

    // Through a store: the override's windows are the ones counted.
    let store = Store::open_in_memory(Options::default().clock(ManualClock::new(T0))).unwrap();
    let key = pbx.key("tok_enterprise").unwrap();
    let d = store
        .check(key.as_bytes(), pbx.limits_for("tok_enterprise"), pbx.cost())
        .unwrap();
    assert_eq!((d.limit(), d.remaining()), (600, 599));
    let key = pbx.key("tok_other").unwrap();
    let d = store
        .check(key.as_bytes(), pbx.limits_for("tok_other"), pbx.cost())
        .unwrap();
    assert_eq!((d.limit(), d.remaining()), (60, 59));

    // A duplicate override is refused, naming its line.
    let dup = format!(
        "{WITH_OVERRIDES}\n[[override]]\ntoken = \"tok_enterprise\"\ngroup = \"pbx\"\nwindows = [{{ limit = 1, window = \"1s\" }}]\n"
    );
    let e = err(&dup);
    assert!(e.to_string().contains("already has an override"), "{e}");
    let line = dup
        .lines()
        .position(|l| l.contains("token = \"tok_enterprise\""))
        .unwrap();
    let second = dup
        .lines()
        .enumerate()
        .filter(|(_, l)| l.contains("token = \"tok_enterprise\""))
        .nth(1)
        .unwrap()
        .0;
    assert!(second > line);
    assert_eq!(e.line(), Some(second + 1));
}

const T0: u64 = 1_700_000_040_000;

#[test]
fn cost_counts_in_every_window() {
    let p = Policy::from_toml_str(WITH_OVERRIDES).unwrap();
    let bulk = p.match_route("POST", "/api/pbx/bulk").unwrap();
    assert_eq!(bulk.cost(), 10);
    assert_eq!(p.match_route("GET", "/api/pbx/bulk").unwrap().cost(), 1);
    let store = Store::open_in_memory(Options::default()).unwrap();
    let key = bulk.key("tok").unwrap();
    for i in 1..=10u32 {
        let d = store
            .check_at(key.as_bytes(), bulk.limits_for("tok"), bulk.cost(), T0)
            .unwrap();
        assert!(d.allowed());
        assert_eq!(d.remaining(), 100 - 10 * i);
    }
    let d = store
        .check_at(key.as_bytes(), bulk.limits_for("tok"), bulk.cost(), T0)
        .unwrap();
    assert!(!d.allowed());
    // A zero cost is refused at load.
    let e = err("[[group]]\nname = \"a\"\nroute = \"/a\"\nwindows = [{ limit = 5, window = \"1m\" }]\ncost = 0\n");
    assert_eq!(e.line(), Some(5));
}

#[test]
fn keys_are_on_the_stack_and_bounded() {
    let p = Policy::from_toml_str(ZORIO).unwrap();
    let g = p.group("pbx").unwrap();
    let k = g.key("tok_abc").unwrap();
    assert_eq!(k.as_bytes(), b"pbx\0tok_abc");
    // Another group, same token: another key.
    let other = p.group("telesales").unwrap().key("tok_abc").unwrap();
    assert_ne!(k.as_bytes(), other.as_bytes());
    let longest = "t".repeat(MAX_TOKEN_LEN);
    let name32 = "g".repeat(MAX_GROUP_NAME_LEN);
    let p32 = Policy::from_toml_str(&format!(
        "[[group]]\nname = \"{name32}\"\nroute = \"/*\"\nwindows = [{{ limit = 5, window = \"1m\" }}]\n"
    ))
    .unwrap();
    let k = p32.groups()[0].key(&longest).unwrap();
    assert_eq!(k.as_bytes().len(), MAX_KEY_LEN);
    let store = Store::open_in_memory(Options::default()).unwrap();
    store
        .check(k.as_bytes(), p32.groups()[0].limits(), 1)
        .unwrap();
    assert_eq!(
        g.key(&format!("{longest}x")).unwrap_err(),
        TokenError::TooLong {
            len: MAX_TOKEN_LEN + 1,
            max: MAX_TOKEN_LEN
        }
    );
    assert_eq!(g.key("").unwrap_err(), TokenError::Empty);
    // A too-long group name is refused at load.
    let e = err(&format!(
        "[[group]]\nname = \"{name32}x\"\nroute = \"/*\"\nwindows = [{{ limit = 5, window = \"1m\" }}]\n"
    ));
    assert_eq!(e.line(), Some(2));
}

#[test]
fn reload_keeps_the_counts_made() {
    let dir = tempfile::tempdir().unwrap();
    let policy_path = dir.path().join("policy.toml");
    let v1 = "[[group]]\nname = \"pbx\"\nroute = \"/api/pbx/*\"\nwindows = [{ limit = 60, window = \"60s\" }]\n";
    std::fs::write(&policy_path, v1).unwrap();
    let clock = ManualClock::new(T0);
    let store = Store::open(
        dir.path().join("store.tg"),
        Options::default().clock(clock.clone()),
    )
    .unwrap();
    let mut policy = Policy::load(&policy_path).unwrap();
    for _ in 0..30 {
        let g = policy.match_route("GET", "/api/pbx/x").unwrap();
        let k = g.key("tok").unwrap();
        assert!(store.check(k.as_bytes(), g.limits(), 1).unwrap().allowed());
    }
    clock.advance_ms(5_000);
    // Raise the limit, same window length: the 30 made stay counted.
    std::fs::write(&policy_path, v1.replace("limit = 60", "limit = 100")).unwrap();
    policy.reload(&policy_path).unwrap();
    let g = policy.match_route("GET", "/api/pbx/x").unwrap();
    let k = g.key("tok").unwrap();
    let d = store.check(k.as_bytes(), g.limits(), 1).unwrap();
    assert_eq!((d.limit(), d.remaining()), (100, 69));
    // Lower it under the count: refused at once.
    std::fs::write(&policy_path, v1.replace("limit = 60", "limit = 20")).unwrap();
    policy.reload(&policy_path).unwrap();
    let g = policy.match_route("GET", "/api/pbx/x").unwrap();
    let d = store.check(k.as_bytes(), g.limits(), 1).unwrap();
    assert!(!d.allowed());
    assert_eq!(d.limit(), 20);
    // Add an hour window beside it: the minute window keeps its count.
    std::fs::write(
        &policy_path,
        v1.replace(
            "windows = [{ limit = 60, window = \"60s\" }]",
            "windows = [{ limit = 50, window = \"60s\" }, { limit = 1000, window = \"1h\" }]",
        ),
    )
    .unwrap();
    policy.reload(&policy_path).unwrap();
    let g = policy.match_route("GET", "/api/pbx/x").unwrap();
    let d = store.check(k.as_bytes(), g.limits(), 1).unwrap();
    assert!(d.allowed());
    assert_eq!(d.windows()[0].used(), 32);
    assert_eq!(d.windows()[1].used(), 1);
    // A bad file leaves the policy as it was.
    std::fs::write(&policy_path, "[[group]]\nname = \n").unwrap();
    assert!(policy.reload(&policy_path).is_err());
    assert_eq!(policy.group("pbx").unwrap().limits().len(), 2);
    // And the counts survive reopening the store too.
    drop(store);
    let store = Store::open(dir.path().join("store.tg"), Options::default().clock(clock)).unwrap();
    let g = policy.group("pbx").unwrap();
    let d = store.peek(k.as_bytes(), g.limits()).unwrap();
    assert_eq!(d.windows()[0].used(), 32);
}

#[test]
fn groups_change_the_idempotency_policy_of_the_settings() {
    use crate::gateway::KeyFormat;
    let p = Policy::from_toml_str(
        r#"
[settings.idempotency]
key_format = "uuid"
replay_header = "X-Replayed"

[[group]]
name = "inherits"
route = "/a/*"
windows = [{ limit = 5, window = "1m" }]

[[group]]
name = "own"
route = "/b/*"
windows = [{ limit = 5, window = "1m" }]
[group.idempotency]
key_format = "opaque"
max_key_len = 40
store_statuses = ["2xx"]

[[group]]
name = "all"
route = "/c/*"
windows = [{ limit = 5, window = "1m" }]
[group.idempotency]
store_statuses = ["100-599"]
except_statuses = []

[[group]]
name = "never-5xx"
route = "/d/*"
windows = [{ limit = 5, window = "1m" }]
idempotency = { except_statuses = ["5xx"], replay_header = "Idempotent-Replayed" }
"#,
    )
    .unwrap();
    let idem = |g: &str| p.group(g).unwrap().idempotency().clone();
    assert_eq!(p.settings().idempotency().key_format(), KeyFormat::Uuid);
    assert_eq!(idem("inherits"), *p.settings().idempotency());
    assert_eq!(idem("inherits").replay_header().as_str(), "x-replayed");
    let own = idem("own");
    assert_eq!(own.key_format(), KeyFormat::Opaque { max_len: 40 });
    assert_eq!(own.replay_header().as_str(), "x-replayed");
    assert!(own.store_statuses().contains(200) && !own.store_statuses().contains(404));
    let all = idem("all");
    assert!(all.store_statuses().contains(500) && all.store_statuses().contains(429));
    let never = idem("never-5xx");
    assert!(never.store_statuses().contains(404) && !never.store_statuses().contains(503));
    assert!(!never.store_statuses().contains(429));
    assert_eq!(never.replay_header().as_str(), "idempotent-replayed");
    assert_eq!(never.key_format(), KeyFormat::Uuid);

    let group = |extra: &str| {
        format!("[[group]]\nname = \"a\"\nroute = \"/a\"\nwindows = [{{ limit = 1, window = \"1s\" }}]\n[group.idempotency]\n{extra}\n")
    };
    let cases: &[(String, usize, &str)] = &[
        (group("key_format = \"ulid\""), 6, "unknown key_format"),
        (
            group("key_format = \"uuid\"\nmax_key_len = 12"),
            7,
            "opaque",
        ),
        (
            group("key_format = \"opaque\"\nmax_key_len = 0"),
            7,
            "1 to 255",
        ),
        (
            group("key_format = \"opaque\"\nmax_key_len = 256"),
            7,
            "1 to 255",
        ),
        (
            group("replay_header = \"bad header\""),
            6,
            "invalid header name",
        ),
        (group("replay_header = \"Retry-After\""), 6, "replay_header"),
        (group("store_statuses = [\"9xx\"]"), 6, "invalid status"),
        (group("stored = [\"2xx\"]"), 6, "unknown field"),
        (
            "[settings.idempotency]\nkey_format = 4\n".to_string(),
            2,
            "",
        ),
    ];
    for (src, line, needle) in cases {
        let e = err(src);
        assert_eq!(e.line(), Some(*line), "{src}\n=> {e}");
        assert!(e.to_string().contains(needle), "{e}");
    }
}

#[test]
fn groups_choose_what_a_backend_failure_does() {
    use crate::gateway::{OnBackendError, DEFAULT_BACKEND_TIMEOUT};
    use std::time::Duration;
    let p = Policy::from_toml_str(
        "[[group]]\nname = \"a\"\nroute = \"/a\"\nwindows = [{ limit = 1, window = \"1s\" }]\n",
    )
    .unwrap();
    assert_eq!(p.settings().on_backend_error(), OnBackendError::FailClosed);
    assert_eq!(p.settings().backend_timeout(), DEFAULT_BACKEND_TIMEOUT);
    assert_eq!(
        p.group("a").unwrap().on_backend_error(),
        OnBackendError::FailClosed
    );
    let p = Policy::from_toml_str(
        r#"
[settings]
on_backend_error = "local-only"
backend_timeout = "40ms"

[[group]]
name = "inherits"
route = "/a"
windows = [{ limit = 1, window = "1s" }]

[[group]]
name = "open"
route = "/b"
windows = [{ limit = 1, window = "1s" }]
on_backend_error = "fail-open"
"#,
    )
    .unwrap();
    assert_eq!(p.settings().backend_timeout(), Duration::from_millis(40));
    assert_eq!(
        p.group("inherits").unwrap().on_backend_error(),
        OnBackendError::LocalOnly
    );
    assert_eq!(
        p.group("open").unwrap().on_backend_error(),
        OnBackendError::FailOpen
    );

    let cases: &[(&str, usize, &str)] = &[
        ("[settings]\non_backend_error = \"fail-soft\"\n", 2, "unknown on_backend_error"),
        ("[settings]\n\nbackend_timeout = \"0ms\"\n", 3, "1 ms to 60 s"),
        ("[settings]\nbackend_timeout = \"1m\"\n", 2, "invalid backend_timeout"),
        ("[settings]\nbackend_timeout = 250\n", 2, ""),
        (
            "[[group]]\nname = \"a\"\nroute = \"/a\"\nwindows = [{ limit = 1, window = \"1s\" }]\non_backend_error = \"open\"\n",
            5,
            "\"fail-open\", \"fail-closed\" or \"local-only\"",
        ),
    ];
    for (src, line, needle) in cases {
        let e = err(src);
        assert_eq!(e.line(), Some(*line), "{src}\n=> {e}");
        assert!(e.to_string().contains(needle), "{e}");
    }
}

#[test]
fn the_permit_lease_is_a_setting_of_the_policy() {
    use std::time::Duration;
    let p = Policy::from_toml_str("[settings]\nmax_concurrent_per_token = 3\n").unwrap();
    assert_eq!(p.settings().permit_lease(), None);
    let p =
        Policy::from_toml_str("[settings]\nmax_concurrent_per_token = 3\npermit_lease = \"5m\"\n")
            .unwrap();
    assert_eq!(p.settings().permit_lease(), Some(Duration::from_secs(300)));
    // The gateway's concurrency facade takes the policy's lease over its own.
    #[cfg(feature = "tower")]
    {
        let store = Store::open_in_memory(Options::default()).unwrap();
        let gw = crate::gateway::Gateway::new(store, p);
        gw.set_permit_lease(Duration::from_secs(7));
        assert_eq!(gw.concurrency().lease(), Duration::from_secs(300));
        let without = "[settings]\nmax_concurrent_per_token = 3\n";
        gw.set_policy(Policy::from_toml_str(without).unwrap());
        assert_eq!(gw.concurrency().lease(), Duration::from_secs(7));
    }

    let cases: &[(&str, usize, &str)] = &[
        ("[settings]\n\npermit_lease = \"0s\"\n", 3, "1 s to 1 day"),
        ("[settings]\npermit_lease = \"2d\"\n", 2, "1 s to 1 day"),
        (
            "[settings]\npermit_lease = \"90\"\n",
            2,
            "invalid permit_lease",
        ),
        ("[settings]\npermit_lease = 90\n", 2, ""),
    ];
    for (src, line, needle) in cases {
        let e = err(src);
        assert_eq!(e.line(), Some(*line), "{src}\n=> {e}");
        assert!(e.to_string().contains(needle), "{e}");
    }
}
