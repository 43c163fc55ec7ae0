//! The config loader: any text is a config or a list of errors (each naming
//! its field), never a panic, strict or not.
#![no_main]
use std::collections::HashMap;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let env: HashMap<String, String> = [("KEY".to_owned(), "sk-fuzz-0123456789".to_owned())].into();
    for strict in [false, true] {
        if let Err(e) = infermux::config::Config::parse(text, &env, strict) {
            assert!(!e.to_string().is_empty());
        }
    }
});
