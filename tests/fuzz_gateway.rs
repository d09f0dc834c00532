//! The `policy` and `headers` fuzz targets under plain `cargo test`: the checks live in
//! `fuzz/fuzz_targets/gateway_inputs.rs`, included here as they are (no copy), and every input
//! kept in `tests/fixtures/fuzz/{policy,headers}/` is replayed, with a sweep of generated inputs.
#![cfg(feature = "tower")]

#[path = "../fuzz/fuzz_targets/gateway_inputs.rs"]
mod gateway_inputs;

use std::path::PathBuf;

fn fixtures(target: &str) -> Vec<(String, Vec<u8>)> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/fuzz")
        .join(target);
    let mut files: Vec<(String, Vec<u8>)> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| {
            let path = e.expect("directory entry").path();
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            (name, std::fs::read(&path).expect("fixture"))
        })
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no fixtures in {}", dir.display());
    files
}

/// A small xorshift, so the sweep is the same on every run.
fn inputs(seed: u64, count: usize, len: usize) -> impl Iterator<Item = Vec<u8>> {
    let mut x = seed;
    (0..count).map(move |_| {
        (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect()
    })
}

#[test]
fn policy_inputs_kept_from_fuzzing() {
    for (name, data) in fixtures("policy") {
        eprintln!("policy/{name}");
        gateway_inputs::policy(&data);
    }
}

#[test]
fn generated_policies_route_like_the_reference() {
    // Mode bytes other than 0 mod 4 generate groups; the check compares every routed request
    // with a matcher that tries every group.
    for mut data in inputs(0x9E37_79B9_7F4A_7C15, 3_000, 96) {
        data[0] |= 1;
        gateway_inputs::policy(&data);
    }
}

#[test]
fn header_inputs_kept_from_fuzzing() {
    for (name, data) in fixtures("headers") {
        eprintln!("headers/{name}");
        gateway_inputs::headers(&data);
    }
    for data in inputs(0xD1B5_4A32_D192_ED03, 3_000, 48) {
        gateway_inputs::headers(&data);
    }
}
