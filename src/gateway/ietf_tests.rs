//! Unit tests of `ietf.rs`, kept beside it in a file of their own.

use super::*;
use crate::gateway::headers::{self, X_RATELIMIT_LIMIT, X_RATELIMIT_REMAINING, X_RATELIMIT_RESET};
use crate::gateway::PartitionSecret;
use crate::{Limit, Limits, Options, Store};

const T0: u64 = 1_700_000_040_000; // a whole minute

/// 2 a minute and 3 an hour, both exact: every figure below follows from the timestamps.
fn two_windows() -> Limits {
    Limits::new(&[Limit::per_minute(2).exact(), Limit::per_hour(3).exact()]).unwrap()
}

/// The fields as the middleware writes them: with the refill peek when it needs one.
fn fields(store: &Store, key: &[u8], limits: &Limits, d: &Decision, now: u64) -> HeaderMap {
    let refill = needs_refill(d).then(|| store.peek_at(key, limits, now).unwrap());
    let extras = Extras {
        refill: refill.as_ref(),
        ..Extras::default()
    };
    let mut h = HeaderMap::new();
    headers::insert_rate_limit(&mut h, d);
    insert(&mut h, "api", d, now, &extras);
    h
}

fn get<'a>(h: &'a HeaderMap, name: &str) -> Option<&'a str> {
    h.get(name).map(|v| v.to_str().unwrap())
}

#[test]
fn two_window_group_admitted_and_refused() {
    let store = Store::open_in_memory(Options::default()).unwrap();
    let limits = two_windows();
    let policy = "\"api-60s\";q=2;w=60, \"api-1h\";q=3;w=3600";

    // First request: one of each used; t is each window's full reset.
    let d = store.check_at(b"k", &limits, 1, T0).unwrap();
    let h = fields(&store, b"k", &limits, &d, T0);
    assert_eq!(get(&h, "ratelimit-policy"), Some(policy));
    assert_eq!(
        get(&h, "ratelimit"),
        Some("\"api-60s\";r=1;t=60, \"api-1h\";r=2;t=3600")
    );
    assert_eq!(get(&h, "x-ratelimit-limit"), Some("2"));
    assert_eq!(get(&h, "x-ratelimit-remaining"), Some("1"));
    assert_eq!(get(&h, "retry-after"), None);

    // Ten seconds on, the minute's last unit: its t is the wait for the next one (the first
    // request's, back at T0 + 60 s), not the full reset 60 s away.
    let now = T0 + 10_000;
    let d = store.check_at(b"k", &limits, 1, now).unwrap();
    assert!(d.allowed());
    let h = fields(&store, b"k", &limits, &d, now);
    assert_eq!(get(&h, "ratelimit-policy"), Some(policy));
    assert_eq!(
        get(&h, "ratelimit"),
        Some("\"api-60s\";r=0;t=50, \"api-1h\";r=1;t=3600")
    );
    assert_eq!(get(&h, "x-ratelimit-limit"), Some("2"));
    assert_eq!(get(&h, "x-ratelimit-remaining"), Some("0"));
    assert_eq!(get(&h, "x-ratelimit-reset"), Some("1700000110"));
    assert_eq!(get(&h, "retry-after"), None);

    // Refused by the minute at T0 + 20 s: 40 s to wait. The hour still has room: no t (its
    // reset is later than Retry-After).
    let now = T0 + 20_000;
    let d = store.check_at(b"k", &limits, 1, now).unwrap();
    assert!(!d.allowed());
    let h = fields(&store, b"k", &limits, &d, now);
    assert_eq!(get(&h, "ratelimit-policy"), Some(policy));
    assert_eq!(
        get(&h, "ratelimit"),
        Some("\"api-60s\";r=0;t=40, \"api-1h\";r=1")
    );
    assert_eq!(get(&h, "retry-after"), Some("40"));
    assert_eq!(get(&h, "x-ratelimit-limit"), Some("2"));
    assert_eq!(get(&h, "x-ratelimit-remaining"), Some("0"));
    assert_eq!(violated_policies("api", &d), vec!["api-60s".to_string()]);
}

#[test]
fn every_violated_window_is_named() {
    let store = Store::open_in_memory(Options::default()).unwrap();
    let limits = Limits::new(&[Limit::per_minute(2).exact(), Limit::per_hour(2).exact()]).unwrap();
    store.check_at(b"k", &limits, 1, T0).unwrap();
    store.check_at(b"k", &limits, 1, T0 + 10_000).unwrap();
    let now = T0 + 20_000;
    let d = store.check_at(b"k", &limits, 1, now).unwrap();
    assert!(!d.allowed());
    assert_eq!(violated_policies("api", &d), vec!["api-60s", "api-1h"]);
    let h = fields(&store, b"k", &limits, &d, now);
    // Both wait: the minute 40 s, the hour until T0 + 3600 s; Retry-After is the longer.
    assert_eq!(
        get(&h, "ratelimit"),
        Some("\"api-60s\";r=0;t=40, \"api-1h\";r=0;t=3580")
    );
    assert_eq!(get(&h, "retry-after"), Some("3580"));
    // Admitted decisions name nothing; one window: the group's own name.
    let one = Limits::new(&[Limit::per_minute(1)]).unwrap();
    let d = store.check_at(b"j", &one, 1, T0).unwrap();
    assert!(violated_policies("pbx", &d).is_empty());
    let d = store.check_at(b"j", &one, 1, T0).unwrap();
    assert_eq!(violated_policies("pbx", &d), vec!["pbx"]);
}

/// A small xorshift, so the sweep is the same on every run.
struct Rng(u64);

impl Rng {
    fn next(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

/// Parse `RateLimit` into (name, r, t) items.
fn items(v: &str) -> Vec<(String, u64, Option<u64>)> {
    v.split(", ")
        .map(|item| {
            let mut parts = item.split(';');
            let name = parts.next().unwrap().trim_matches('"').to_string();
            let (mut r, mut t) = (None, None);
            for p in parts {
                match p.split_once('=') {
                    Some(("r", n)) => r = Some(n.parse().unwrap()),
                    Some(("t", n)) => t = Some(n.parse().unwrap()),
                    _ => {}
                }
            }
            (name, r.expect("r"), t)
        })
        .collect()
}

#[test]
fn t_is_never_after_retry_after_and_the_legacy_fields_agree() {
    let sets = [
        Limits::new(&[
            Limit::per_second(5),
            Limit::per_minute(20),
            Limit::per_hour(60),
        ])
        .unwrap(),
        Limits::new(&[Limit::per_minute(3).exact(), Limit::per_hour(10)]).unwrap(),
        two_windows(),
        Limits::new(&[Limit::per_minute(7)]).unwrap(),
    ];
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    let (mut refusals, mut admissions) = (0, 0);
    for (si, limits) in sets.iter().enumerate() {
        let store = Store::open_in_memory(Options::default()).unwrap();
        let mut now = T0;
        for _ in 0..600 {
            now += rng.next(4_000);
            let cost = 1 + u32::from(rng.next(4) == 0 && limits.min_limit() > 1);
            let d = store.check_at(b"k", limits, cost, now).unwrap();
            let h = fields(&store, b"k", limits, &d, now);
            let its = items(get(&h, "ratelimit").unwrap());
            assert_eq!(its.len(), d.windows().len());
            // The binding window's item says what X-RateLimit-* say.
            let b = d.windows().iter().position(|w| w == d.binding()).unwrap();
            let bind = &its[b];
            let q: u32 = get(&h, "ratelimit-policy")
                .unwrap()
                .split(", ")
                .nth(b)
                .unwrap()[..]
                .split(";q=")
                .nth(1)
                .unwrap()
                .split(';')
                .next()
                .unwrap()
                .parse()
                .unwrap();
            assert_eq!(h[&X_RATELIMIT_LIMIT], q.to_string().as_str(), "set {si}");
            assert_eq!(h[&X_RATELIMIT_REMAINING], bind.1.to_string().as_str());
            let reset: u64 = h[&X_RATELIMIT_RESET].to_str().unwrap().parse().unwrap();
            match get(&h, "retry-after") {
                Some(ra) => {
                    refusals += 1;
                    let ra: u64 = ra.parse().unwrap();
                    for (name, _, t) in &its {
                        assert!(t.is_none_or(|t| t <= ra), "set {si}: {name} t={t:?} > {ra}");
                    }
                    // Retry-After is the longest t: the wait of the longest-blocking window.
                    assert_eq!(its.iter().filter_map(|i| i.2).max(), Some(ra), "set {si}");
                    // The binding window refused, and its t is within its full reset.
                    let t = bind.2.expect("the binding window refused: it has a t");
                    assert!(now / 1000 + t <= reset + 1, "set {si}");
                }
                None => {
                    admissions += 1;
                    assert!(d.allowed());
                    // Every t is within the window's full reset.
                    for ((_, _, t), w) in its.iter().zip(d.windows()) {
                        if let Some(t) = t {
                            assert!(now + t * 1000 < w.reset_ms() + 1000, "set {si}");
                        }
                    }
                }
            }
        }
    }
    assert!(
        refusals > 100 && admissions > 100,
        "{refusals} {admissions}"
    );
}

#[test]
fn partition_key_hashes_the_token_and_concurrency_is_an_item() {
    let store = Store::open_in_memory(Options::default()).unwrap();
    let limits = Limits::new(&[Limit::per_minute(60)]).unwrap();
    let token = "tok_abcdefghijkl";
    let d = store.check_at(token.as_bytes(), &limits, 1, T0).unwrap();
    let pk = PartitionSecret::from_passphrase("the fleet's shared secret").key_of(token);
    let extras = Extras {
        partition_key: Some(&pk),
        concurrency: Some(Concurrency {
            cap: 5,
            in_flight: 2,
        }),
        refill: None,
        unit: None,
    };
    let policy = policy_field("pbx", &d, &extras);
    let rate = ratelimit_field("pbx", &d, T0, &extras);
    let t = reset_secs(&d.windows()[0], false, T0).unwrap();
    assert_eq!(
        policy,
        format!(
            "\"pbx\";q=60;w=60;pk={pk}, \"concurrency\";q=5;qu=\"concurrent-requests\";pk={pk}"
        )
    );
    assert_eq!(
        rate,
        format!("\"pbx\";r=59;t={t};pk={pk}, \"concurrency\";r=3;pk={pk}")
    );
    for field in [&policy, &rate] {
        assert!(!field.contains(token) && !field.contains("tok_"), "{field}");
    }
    // pk is an RFC 9651 Byte Sequence of 12 bytes: 16 base64 characters between colons.
    let shown = pk.to_string();
    assert_eq!(shown.len(), 18);
    assert!(shown[1..17]
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'+' || b == b'/'));
    // Over the cap (a refused slot): none left.
    let full = Extras {
        concurrency: Some(Concurrency {
            cap: 5,
            in_flight: 5,
        }),
        ..Extras::default()
    };
    assert!(ratelimit_field("pbx", &d, T0, &full).ends_with("\"concurrency\";r=0"));
}

#[test]
fn names_are_sf_strings() {
    let mut s = String::new();
    push_sf_string(&mut s, "a\"b\\c;d é");
    assert_eq!(s, r#""a\"b\\c;d ""#);
    let store = Store::open_in_memory(Options::default()).unwrap();
    let limits = Limits::new(&[Limit::per_second(5), Limit::per_hour(100)]).unwrap();
    let d = store.check_at(b"k", &limits, 1, T0).unwrap();
    assert_eq!(policy_name("g.v2_x", &d, 0), "g.v2_x-1s");
    assert_eq!(policy_name("g.v2_x", &d, 1), "g.v2_x-1h");
    // A window that counted nothing has nothing to give back: no t.
    let p = store.peek_at(b"fresh", &limits, T0).unwrap();
    assert_eq!(
        ratelimit_field("g", &p, T0, &Extras::default()),
        "\"g-1s\";r=5, \"g-1h\";r=100"
    );
}

#[test]
fn a_metered_group_says_its_unit() {
    let store = Store::open_in_memory(Options::default()).unwrap();
    let limits = Limits::new(&[
        Limit::per_minute(1000).metered(),
        Limit::per_day(50_000).metered(),
    ])
    .unwrap();
    let d = store.check_at(b"k", &limits, 900, T0).unwrap();
    let extras = Extras {
        unit: Some("tokens"),
        ..Extras::default()
    };
    assert_eq!(
        policy_field("chat", &d, &extras),
        "\"chat-60s\";q=1000;w=60;qu=\"tokens\", \"chat-1d\";q=50000;w=86400;qu=\"tokens\""
    );
    assert!(ratelimit_field("chat", &d, T0, &extras).starts_with("\"chat-60s\";r=100;"));
}
