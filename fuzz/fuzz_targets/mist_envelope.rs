//! The MIST envelope decoder: any bytes are an envelope or an error (a
//! missing field, a bad checksum, too large), never a panic.
#![no_main]
use infermux::envelope::{Envelope, MessageType};

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    for kind in [MessageType::InferRequest, MessageType::InferResponse] {
        let _ = Envelope::decode(data, kind);
    }
});
