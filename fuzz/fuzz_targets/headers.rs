//! `headers`: see `gateway_inputs.rs` (shared with `tests/fuzz_gateway.rs`) and `fuzz/README.md`.

#![no_main]

#[path = "gateway_inputs.rs"]
mod gateway_inputs;

libfuzzer_sys::fuzz_target!(|data: &[u8]| gateway_inputs::headers(data));
