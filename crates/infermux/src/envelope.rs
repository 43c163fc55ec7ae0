//! The MIST message envelope: version, id, source, type, timestamp, payload and an
//! optional CRC-32 of the payload's raw bytes.

use std::borrow::Cow;
use std::io::Write;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::error::{Error, ErrorKind};
use crate::trace::{Id128, now_ns};
use crate::{MAX_MESSAGE_SIZE, json};

/// The protocol version this build speaks.
pub const VERSION: &str = "1";

/// The `type` of a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MessageType {
    InferRequest,
    InferResponse,
    TraceSpan,
}

impl MessageType {
    pub fn as_str(self) -> &'static str {
        match self {
            MessageType::InferRequest => "infer.request",
            MessageType::InferResponse => "infer.response",
            MessageType::TraceSpan => "trace.span",
        }
    }
}

/// A decoded envelope, borrowing its strings and raw payload from the input.
#[derive(Debug, Clone, PartialEq)]
pub struct Envelope<'a> {
    pub version: Cow<'a, str>,
    pub id: Cow<'a, str>,
    pub source: Cow<'a, str>,
    pub message_type: MessageType,
    pub timestamp_ns: u64,
    /// The payload's JSON text exactly as it appeared in the message.
    pub payload: &'a str,
    pub checksum: u32,
}

#[derive(Deserialize)]
struct Wire<'a> {
    #[serde(borrow, default)]
    version: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    id: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    source: Option<Cow<'a, str>>,
    #[serde(borrow, default, rename = "type")]
    message_type: Option<Cow<'a, str>>,
    #[serde(default)]
    timestamp_ns: Option<u64>,
    #[serde(borrow, default)]
    payload: Option<&'a RawValue>,
    #[serde(default)]
    checksum: Option<u32>,
}

impl<'a> Envelope<'a> {
    /// Decodes and checks an envelope of type `expected`: size limit, required
    /// fields, version, type and (when non-zero) the payload checksum.
    pub fn decode(bytes: &'a [u8], expected: MessageType) -> Result<Self, Error> {
        if bytes.len() > MAX_MESSAGE_SIZE {
            return Err(Error::new(
                ErrorKind::PayloadTooLarge,
                format!(
                    "message is {} bytes; the limit is {MAX_MESSAGE_SIZE}",
                    bytes.len()
                ),
            ));
        }
        let wire: Wire<'a> = json::from_slice(bytes)?;

        let version = required(wire.version, "version")?;
        let id = required(wire.id, "id")?;
        let source = required(wire.source, "source")?;
        let type_name = required(wire.message_type, "type")?;
        if version != VERSION {
            return Err(Error::invalid(format!(
                "version: unsupported version \"{}\" (expected \"{VERSION}\")",
                crate::validate::truncate(&version, 16)
            )));
        }
        if type_name != expected.as_str() {
            return Err(Error::invalid(format!(
                "type: expected \"{}\", got \"{}\"",
                expected.as_str(),
                crate::validate::truncate(&type_name, 32)
            )));
        }
        let payload = wire
            .payload
            .ok_or_else(|| Error::invalid("payload: missing"))?
            .get();
        let checksum = wire.checksum.unwrap_or(0);
        if checksum != 0 {
            let actual = crc32fast::hash(payload.as_bytes());
            if actual != checksum {
                return Err(Error::invalid(format!(
                    "checksum: {checksum} does not match the payload (CRC-32 {actual})"
                )));
            }
        }
        Ok(Envelope {
            version,
            id,
            source,
            message_type: expected,
            timestamp_ns: wire.timestamp_ns.unwrap_or(0),
            payload,
            checksum,
        })
    }

    /// Decodes the payload as `T`; errors name the field under `payload`.
    pub fn payload_as<T: DeserializeOwned>(&self) -> Result<T, Error> {
        json::from_slice_at(self.payload.as_bytes(), "payload")
    }
}

fn required<'a>(v: Option<Cow<'a, str>>, field: &str) -> Result<Cow<'a, str>, Error> {
    match v {
        Some(s) if !s.is_empty() => Ok(s),
        _ => Err(Error::invalid(format!("{field}: missing"))),
    }
}

/// Encodes `payload` as a new message from `source`, with a fresh id, the current
/// time and the payload's CRC-32.
pub fn encode<T: Serialize>(
    source: &str,
    message_type: MessageType,
    payload: &T,
) -> Result<Vec<u8>, Error> {
    let payload = serde_json::to_vec(payload)
        .map_err(|e| Error::internal(format!("cannot encode payload: {e}")))?;
    encode_raw(source, message_type, &payload)
}

/// Encodes an already-serialized JSON payload. `payload` must be valid JSON.
pub fn encode_raw(
    source: &str,
    message_type: MessageType,
    payload: &[u8],
) -> Result<Vec<u8>, Error> {
    let checksum = crc32fast::hash(payload);
    let mut out = Vec::with_capacity(payload.len() + 160 + source.len());
    let write = |out: &mut Vec<u8>| -> std::io::Result<()> {
        out.extend_from_slice(br#"{"version":"1","id":""#);
        write!(out, "{}", Id128::random())?;
        out.extend_from_slice(br#"","source":"#);
        serde_json::to_writer(&mut *out, source)?;
        write!(
            out,
            r#","type":"{}","timestamp_ns":{},"payload":"#,
            message_type.as_str(),
            now_ns()
        )?;
        out.extend_from_slice(payload);
        write!(out, r#","checksum":{checksum}}}"#)?;
        Ok(())
    };
    write(&mut out).map_err(|e| Error::internal(format!("cannot encode message: {e}")))?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::InferRequest;

    fn request_message(payload: &str, checksum: u32) -> String {
        format!(
            r#"{{"version":"1","id":"0123456789abcdef0123456789abcdef","source":"app","type":"infer.request","timestamp_ns":5,"payload":{payload},"checksum":{checksum}}}"#
        )
    }

    #[test]
    fn round_trips_with_a_checksum() {
        let req = InferRequest::prompt("echo-v1", "Hello");
        let bytes = encode("app", MessageType::InferRequest, &req).unwrap();
        let env = Envelope::decode(&bytes, MessageType::InferRequest).unwrap();
        assert_eq!(env.source, "app");
        assert_eq!(env.id.len(), 32);
        assert!(
            env.id
                .bytes()
                .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
        );
        assert_ne!(env.checksum, 0);
        assert!(env.timestamp_ns > 1_700_000_000_000_000_000);
        assert_eq!(env.payload_as::<InferRequest>().unwrap(), req);
    }

    #[test]
    fn checksum_covers_the_raw_payload_bytes() {
        // Whitespace inside the payload is part of the checksummed bytes.
        let payload = r#"{ "model": "echo-v1", "messages": [{"role":"user","content":"Hi"}] }"#;
        let good = crc32fast::hash(payload.as_bytes());
        let msg = request_message(payload, good);
        Envelope::decode(msg.as_bytes(), MessageType::InferRequest).unwrap();
        let msg = request_message(payload, good ^ 1);
        let e = Envelope::decode(msg.as_bytes(), MessageType::InferRequest).unwrap_err();
        assert!(e.message().starts_with("checksum:"), "{e}");
        // Zero means "no checksum".
        let msg = request_message(payload, 0);
        Envelope::decode(msg.as_bytes(), MessageType::InferRequest).unwrap();
    }

    #[test]
    fn rejects_missing_fields_wrong_type_and_version() {
        let cases = [
            (
                r#"{"id":"a","source":"s","type":"infer.request","payload":{}}"#,
                "version: missing",
            ),
            (
                r#"{"version":"1","source":"s","type":"infer.request","payload":{}}"#,
                "id: missing",
            ),
            (
                r#"{"version":"1","id":"a","type":"infer.request","payload":{}}"#,
                "source: missing",
            ),
            (
                r#"{"version":"1","id":"a","source":"s","payload":{}}"#,
                "type: missing",
            ),
            (
                r#"{"version":"1","id":"a","source":"s","type":"infer.request"}"#,
                "payload: missing",
            ),
            (
                r#"{"version":"2","id":"a","source":"s","type":"infer.request","payload":{}}"#,
                "version: unsupported",
            ),
            (
                r#"{"version":"1","id":"a","source":"s","type":"trace.span","payload":{}}"#,
                "type: expected",
            ),
            (
                r#"{"version":1,"id":"a","source":"s","type":"infer.request","payload":{}}"#,
                "version: invalid type",
            ),
            (r#"{"version":"1""#, "invalid JSON"),
        ];
        for (msg, want) in cases {
            let e = Envelope::decode(msg.as_bytes(), MessageType::InferRequest).unwrap_err();
            assert_eq!(e.kind(), ErrorKind::InvalidRequest);
            assert!(e.message().starts_with(want), "{msg}: {e}");
        }
    }

    #[test]
    fn rejects_oversized_messages() {
        let big = vec![b' '; MAX_MESSAGE_SIZE + 1];
        let e = Envelope::decode(&big, MessageType::InferRequest).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::PayloadTooLarge);
    }
}
