// The model of the `open_bytes` fuzz target, shared by the target (fuzz/fuzz_targets/open_bytes.rs) and
// its regression test (tests/fuzz_regressions.rs): both `include!` this file, so there is
// one copy. Items only (no inner docs): it is pasted where it is included and uses that
// file's imports. `Arbitrary` is derived only when cargo-fuzz builds (`cfg(fuzzing)`).

/// A fixed "now": 2023-11-14T22:13:20Z.
const T0: u64 = 1_700_000_000_000;
/// Segment size of the template: 64 KiB, the smallest.
const SEG_SHIFT: u32 = 16;
const SEG_LEN: usize = 1 << SEG_SHIFT;
/// Where segment 0 starts (format 3: on a 2 MiB boundary, after the header page).
const SEGMENTS_START: usize = 2 << 20;
/// Keys the checks use: three are in the template, `delta` is not.
const KEYS: [&[u8]; 4] = [b"alpha", b"beta", b"gamma", b"delta"];
/// Scope and keys of the template's idempotency records: completed, in flight.
const SCOPE: &[u8] = b"tok_abc";
const DONE_KEY: &str = "4d9c3a41-6bb7-4c4e-9a39-8f3c2d7e1f00";
const FLIGHT_KEY: &str = "0b5e5b6e-2c1d-4f7a-8e3b-6a9d1c2f4e50";

/// 60 per minute and 1000 per hour.
fn two_windows() -> Limits {
    Limits::new(&[Limit::per_minute(60), Limit::per_hour(1000)]).expect("valid limits")
}

/// Exactly 5 per minute.
fn exact_five() -> Limits {
    Limits::new(&[Limit::per_minute(5).exact()]).expect("valid limits")
}

/// Exactly 3 per minute (a smaller ring for the same window).
fn exact_three() -> Limits {
    Limits::new(&[Limit::per_minute(3).exact()]).expect("valid limits")
}

fn idem_key(s: &str) -> IdempotencyKey {
    IdempotencyKey::parse(s).expect("a UUID v4")
}

fn fingerprint() -> Fingerprint {
    Fingerprint::of("POST", "/api/sms", b"{\"to\":\"+1555\"}")
}

/// The options every open uses: the defaults, without the background compactor.
fn options() -> Options {
    Options::default().compactor(false)
}

/// The bytes of the template store, written in `dir`.
fn build_template(dir: &Path) -> Vec<u8> {
    let path = dir.join("template.tg");
    let opts = options()
        .segment_size_log2(SEG_SHIFT)
        .clock(ManualClock::new(T0));
    let store = Store::open(&path, opts).expect("create the template");
    let (two, exact) = (two_windows(), exact_five());
    for i in 0..3 {
        store
            .check_at(b"alpha", &two, 1, T0 + i * 1_000)
            .expect("check alpha");
    }
    store
        .check_at(b"gamma", &two, 2, T0 + 500)
        .expect("check gamma");
    for i in 0..3 {
        store
            .check_at(b"beta", &exact, 1, T0 + i * 700)
            .expect("check beta");
    }
    let fp = fingerprint();
    let Ok(Begin::Started(lease)) = store.begin_at(SCOPE, &idem_key(DONE_KEY), &fp, T0) else {
        panic!("begin on a new key starts");
    };
    let response = StoredResponse::new(201, "sent").with_header("content-type", "text/plain");
    store
        .complete_at(&lease, &response, T0 + 20)
        .expect("complete");
    let Ok(Begin::Started(_)) = store.begin_at(SCOPE, &idem_key(FLIGHT_KEY), &fp, T0 + 30) else {
        panic!("begin on a new key starts");
    };
    store.close().expect("close the template");
    let bytes = std::fs::read(&path).expect("read the template");
    std::fs::remove_file(&path).expect("remove the template");
    assert_eq!((bytes.len() - SEGMENTS_START) % SEG_LEN, 0, "template layout");
    bytes
}

/// The file the input stands for.
fn build_file(data: &[u8], template: &[u8]) -> Vec<u8> {
    let Some((&mode, payload)) = data.split_first() else {
        return Vec::new();
    };
    let segments = (template.len() - SEGMENTS_START) / SEG_LEN;
    let at = match mode % 16 {
        0..=4 => return payload.to_vec(),
        5 => 64,
        m => {
            let k = usize::from(m - 6);
            SEGMENTS_START + (k / 2 % segments) * SEG_LEN + (k % 2) * 64
        }
    };
    let mut file = template.to_vec();
    let end = at + payload.len();
    if file.len() < end {
        file.resize(end, 0);
    }
    file[at..end].copy_from_slice(payload);
    file
}

/// A decision must describe every window of its set, sanely.
fn sane(d: &Decision, limits: &Limits) {
    assert_eq!(d.windows().len(), limits.len());
    for (w, l) in d.windows().iter().zip(limits.as_slice()) {
        assert_eq!(w.limit(), l.limit());
        assert_eq!(w.window(), l.window());
        assert!(w.remaining() <= w.limit());
    }
    if d.allowed() {
        assert!(d.retry_after().is_none());
    } else {
        assert!(d.retry_after().is_some_and(|s| s > 0));
    }
}

/// Open the file at `path` and use it: the open report, or the typed error of the open.
fn exercise(path: &Path) -> Result<OpenReport, tollgate::Error> {
    let store = Store::open(path, options())?;
    let report = store.open_report();
    assert_eq!(store.stats().entries, report.entries, "index vs report");
    // A header that says the segments are large (up to 1 GiB: a field the fuzzer sets) is
    // opened and checked, not written to: every segment the calls below grew would be a
    // fallocate of that size and a scan of it at the reopen, seconds an input (one such input
    // took 30 s and 2.2 GB against the smoke runs' 10 s timeout). The template's own
    // segments are 64 KiB.
    let large = tollgate::FileShape::of(path).is_ok_and(|s| s.segment_len > 16 << 20);
    if large {
        return Ok(report);
    }
    let (two, five, three) = (two_windows(), exact_five(), exact_three());
    for (i, key) in KEYS.iter().enumerate() {
        let t = T0 + 1_000 * i as u64;
        // First the shape the key has in the template (so what the file holds is read), then
        // the others: entries move, and exact rings are copied from 5 places to 3.
        let order: [&Limits; 6] = if *key == b"beta" {
            [&five, &two, &three, &three, &two, &five]
        } else {
            [&two, &five, &three, &three, &five, &two]
        };
        for (j, limits) in order.into_iter().enumerate() {
            let at = t + 10 * j as u64;
            if let Ok(d) = store.peek_at(key, limits, at) {
                sane(&d, limits);
            }
            if let Ok(d) = store.check_at(key, limits, 1, at) {
                sane(&d, limits);
            }
            // A clock that went backwards, then far forwards.
            if let Ok(d) = store.check_at(key, limits, 2, at - 5_000) {
                sane(&d, limits);
            }
            if let Ok(d) = store.check_at(key, limits, 1, at + 3_600_000) {
                sane(&d, limits);
            }
        }
    }
    let fp = fingerprint();
    let other = Fingerprint::of("POST", "/api/sms", b"{}");
    for (i, key) in [DONE_KEY, FLIGHT_KEY].into_iter().enumerate() {
        let key = idem_key(key);
        let t = T0 + 60_000 * i as u64;
        match store.begin_at(SCOPE, &key, &fp, t) {
            Ok(Begin::Replay(r)) => {
                let _ = (r.status(), r.headers().count(), r.body().len());
            }
            Ok(Begin::Started(lease)) => {
                let _ = store.complete_at(&lease, &StoredResponse::new(200, "again"), t + 1);
            }
            _ => {}
        }
        let _ = store.begin_at(SCOPE, &key, &other, t + 2);
        // Past the lease timeout: an in-flight record is taken over, then let go.
        if let Ok(Begin::Started(lease)) = store.begin_at(SCOPE, &key, &fp, t + 3_600_000) {
            let _ = store.abort(&lease);
        }
    }
    let _ = store.expire_now(T0 + 61_000);
    let _ = store.compact_now();
    let _ = store.expire_now(T0 + 3 * 86_400_000);
    let _ = store.compact_now();
    let _ = store.stats();
    let _ = store.open_report();
    drop(store);
    // What the first open accepted (and what the calls then wrote) reads back clean.
    let again = Store::open(path, options()).expect("a store that opened opens again");
    let r = again.open_report();
    // A segment whose header line is zero is taken for one allocated by a crash before its
    // header was written, and reused as it is: lines the new entries did not overwrite are read
    // at the next open (`tests/fixtures/fuzz/open_bytes/blank_segment_*`). Without one, every
    // entry read back was written by the store.
    if report.blank_segments == 0 {
        assert_eq!(
            r.corrupt_entries, 0,
            "corrupt entries after a reopen: {r:?}"
        );
    }
    assert_eq!(
        r.corrupt_segments, report.corrupt_segments,
        "corrupt segments after a reopen: {r:?} (first open: {report:?})"
    );
    assert_eq!(again.stats().entries, r.entries);
    Ok(report)
}

/// Write the input's file and exercise it.
fn run(data: &[u8], dir: &Path, template: &[u8]) -> Result<OpenReport, tollgate::Error> {
    let path = dir.join("input.tg");
    std::fs::write(&path, build_file(data, template)).expect("write the input file");
    exercise(&path)
}
