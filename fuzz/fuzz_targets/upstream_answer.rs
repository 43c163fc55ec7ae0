//! The plain-HTTP upstream client's answer parser and body framing (chunked,
//! sized, to the close), fed whole and in pieces (see `plain::fuzz_answer`).
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| infermux_providers::fuzzing::fuzz_answer(data));
