//! The connection front's request-head parser (see `front::fuzz_request`).
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| infermux_http::fuzzing::fuzz_request(data));
