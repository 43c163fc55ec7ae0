//! JSON decoding whose errors name the offending field, for every entry point.

use serde::Deserialize;

use crate::error::Error;
use crate::validate::truncate;

/// Decodes `bytes` as `T`. The error names the path of the bad field
/// (`messages[0].content: invalid type: ...`) or says the JSON is malformed.
pub fn from_slice<'a, T: Deserialize<'a>>(bytes: &'a [u8]) -> Result<T, Error> {
    decode(bytes, "")
}

/// Like [`from_slice`], with every field path put under `prefix` (e.g. `payload`).
pub fn from_slice_at<'a, T: Deserialize<'a>>(bytes: &'a [u8], prefix: &str) -> Result<T, Error> {
    decode(bytes, prefix)
}

/// Decodes `bytes` as `T`, with serde_json's own error (no field path).
///
/// The bytes are checked as UTF-8 once, then decoded as text: decoding bytes,
/// serde_json checks each string as it reads it, which costs more per string
/// than the whole body in one pass.
pub fn from_slice_untracked<'a, T: Deserialize<'a>>(bytes: &'a [u8]) -> serde_json::Result<T> {
    match std::str::from_utf8(bytes) {
        Ok(text) => serde_json::from_str(text),
        // serde_json says where the bad byte is.
        Err(_) => serde_json::from_slice(bytes),
    }
}

fn decode<'a, T: Deserialize<'a>>(bytes: &'a [u8], prefix: &str) -> Result<T, Error> {
    // Good input, the common case, decodes at full speed; only a failure is
    // decoded again, with the path tracked, to name the field.
    if let Ok(value) = from_slice_untracked(bytes) {
        return Ok(value);
    }
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let value = serde_path_to_error::deserialize(&mut de).map_err(|e| describe(&e, prefix))?;
    de.end()
        .map_err(|e| Error::invalid(format!("invalid JSON: {e}")))?;
    Ok(value)
}

fn describe(e: &serde_path_to_error::Error<serde_json::Error>, prefix: &str) -> Error {
    let inner = e.inner();
    // Keep messages to one short line: serde quotes the offending value, which
    // may be a huge string the caller sent.
    let detail = inner.to_string();
    let detail = truncate(&detail, 200);
    if inner.is_syntax() || inner.is_eof() || inner.is_io() {
        return Error::invalid(format!("invalid JSON: {detail}"));
    }
    let path = e.path().to_string();
    let path = match (prefix.is_empty(), path == ".") {
        (true, true) => "body".to_owned(),
        (true, false) => path,
        (false, true) => prefix.to_owned(),
        (false, false) => format!("{prefix}.{path}"),
    };
    Error::invalid(format!("{path}: {detail}"))
}

/// `value` as JSON, in a buffer with room for a typical answer from the start
/// (`serde_json::to_vec` starts at 128 bytes and grows twice for one).
pub fn to_vec<T: serde::Serialize + ?Sized>(value: &T) -> serde_json::Result<Vec<u8>> {
    let mut out = Vec::with_capacity(512);
    serde_json::to_writer(&mut out, value)?;
    Ok(out)
}

/// Appends `s` as a JSON string (quoted, escaped as serde_json escapes).
pub fn write_str(out: &mut Vec<u8>, s: &str) {
    crate::raw::write_str(out, s);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::InferRequest;

    #[test]
    fn names_the_field_with_the_wrong_type() {
        let e = from_slice::<InferRequest>(
            br#"{"model":"m","messages":[{"role":"user","content":5}]}"#,
        )
        .unwrap_err();
        assert!(
            e.message().starts_with("messages[0].content: invalid type"),
            "{e}"
        );
        let e = from_slice_at::<InferRequest>(br#"{"messages":"x"}"#, "payload").unwrap_err();
        assert!(
            e.message().starts_with("payload.messages: invalid type"),
            "{e}"
        );
    }

    #[test]
    fn reports_truncated_json_and_trailing_garbage() {
        let e = from_slice::<InferRequest>(br#"{"model":"m","mess"#).unwrap_err();
        assert!(e.message().starts_with("invalid JSON:"), "{e}");
        let e = from_slice::<InferRequest>(br#"{"messages":[]} x"#).unwrap_err();
        assert!(e.message().starts_with("invalid JSON:"), "{e}");
    }

    #[test]
    fn text_is_checked_as_utf8_once_and_decoded_whole() {
        let req = from_slice::<InferRequest>(
            r#"{"messages":[{"role":"user","content":"h\u00e9llo \"w\" 🌍 ü"}]}"#.as_bytes(),
        )
        .unwrap();
        assert_eq!(req.messages[0].content, "h\u{e9}llo \"w\" 🌍 ü");
        let mut bad = br#"{"messages":[{"role":"user","content":"x"#.to_vec();
        bad.extend_from_slice(&[0xff, 0xfe]);
        bad.extend_from_slice(br#""}]}"#);
        let e = from_slice::<InferRequest>(&bad).unwrap_err();
        assert!(
            e.message().starts_with("invalid JSON: invalid unicode"),
            "{e}"
        );
        let e = from_slice_untracked::<InferRequest>(&bad).unwrap_err();
        assert_eq!(e.column(), 41, "{e}");
    }

    #[test]
    fn reports_missing_fields() {
        let e = from_slice::<InferRequest>(br#"{"model":"m"}"#).unwrap_err();
        assert!(e.message().contains("missing field `messages`"), "{e}");
    }

    #[test]
    fn long_values_are_cut_from_messages() {
        let body = format!(
            r#"{{"messages":[{{"role":"user","content":{}}}]}}"#,
            "1".repeat(100_000)
        );
        let e = from_slice::<InferRequest>(body.as_bytes()).unwrap_err();
        assert!(e.message().len() < 300);
    }
}
