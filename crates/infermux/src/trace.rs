//! W3C trace context and the TokenTrace span each routed call produces.
//!
//! Ids are kept as integers on the hot path and rendered as lowercase hex only when
//! a span is serialized, which happens off the request path (see [`SpanSink`]).

use std::fmt;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Serialize, Serializer};

/// The operation name of every span infermux reports.
pub const OPERATION: &str = "infermux.infer";

/// A 128-bit id rendered as 32 lowercase hex digits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Id128(pub u128);

impl Id128 {
    /// A fresh random, non-zero id.
    pub fn random() -> Self {
        loop {
            let v = fastrand::u128(..);
            if v != 0 {
                return Id128(v);
            }
        }
    }

    /// The upper 64 bits: the W3C `parent-id` this id stands for in a `traceparent`.
    pub fn high64(self) -> u64 {
        (self.0 >> 64) as u64
    }
}

impl Id128 {
    /// Appends the 32 hex digits to `out` (no formatting machinery: ids are
    /// rendered on the request path, in headers and completion ids).
    pub fn push_hex(self, out: &mut String) {
        out.push_str(std::str::from_utf8(&self.hex()).unwrap_or_default());
    }

    /// The 32 hex digits, as ASCII bytes.
    pub fn hex(self) -> [u8; 32] {
        let mut digits = [0u8; 32];
        hex_into(&mut digits, self.0);
        digits
    }
}

/// Fills `out` (an even length, at most 32) with the low hex digits of `v`,
/// lowercase, zero-padded: a byte at a time, two digits from one lookup each.
fn hex_into(out: &mut [u8], v: u128) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let bytes = v.to_be_bytes();
    let skip = bytes.len().saturating_sub(out.len() / 2);
    for (pair, b) in out.chunks_exact_mut(2).zip(&bytes[skip..]) {
        pair[0] = HEX[usize::from(b >> 4)];
        pair[1] = HEX[usize::from(b & 0xf)];
    }
}

impl fmt::Display for Id128 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut s = String::with_capacity(32);
        self.push_hex(&mut s);
        f.write_str(&s)
    }
}

impl Serialize for Id128 {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// A 64-bit W3C parent id rendered as 16 lowercase hex digits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Id64(pub u64);

impl fmt::Display for Id64 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

impl Serialize for Id64 {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// The trace a request belongs to: taken from an incoming `traceparent`, or new.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TraceContext {
    pub trace_id: Id128,
    /// The caller's span, when the request came with a `traceparent`.
    pub parent_id: Option<Id64>,
    pub sampled: bool,
}

impl TraceContext {
    /// A new trace with no parent.
    pub fn new_root() -> Self {
        TraceContext {
            trace_id: Id128::random(),
            parent_id: None,
            sampled: true,
        }
    }

    /// Parses a W3C `traceparent` header value (`00-<32 hex>-<16 hex>-<2 hex>`).
    /// Returns `None` for anything malformed or with all-zero ids, as the W3C
    /// specification asks: the caller then starts a new trace.
    pub fn from_traceparent(value: &str) -> Option<Self> {
        let value = value.trim();
        let mut parts = value.split('-');
        let version = parts.next()?;
        let trace = parts.next()?;
        let parent = parts.next()?;
        let flags = parts.next()?;
        if version.len() != 2 || version == "ff" || !is_lower_hex(version) {
            return None;
        }
        // Version 00 has exactly four fields; later versions may append more.
        if version == "00" && parts.next().is_some() {
            return None;
        }
        if trace.len() != 32 || parent.len() != 16 || flags.len() != 2 {
            return None;
        }
        if !is_lower_hex(trace) || !is_lower_hex(parent) || !is_lower_hex(flags) {
            return None;
        }
        let trace_id = u128::from_str_radix(trace, 16).ok()?;
        let parent_id = u64::from_str_radix(parent, 16).ok()?;
        let flags = u8::from_str_radix(flags, 16).ok()?;
        if trace_id == 0 || parent_id == 0 {
            return None;
        }
        Some(TraceContext {
            trace_id: Id128(trace_id),
            parent_id: Some(Id64(parent_id)),
            sampled: flags & 1 == 1,
        })
    }

    /// The `traceparent` value to send downstream for a call made by `span_id`.
    pub fn traceparent_for(&self, span_id: Id128) -> String {
        std::str::from_utf8(&self.traceparent_bytes(span_id))
            .unwrap_or_default()
            .to_owned()
    }

    /// [`traceparent_for`](Self::traceparent_for) as ASCII bytes, without
    /// an allocation.
    pub fn traceparent_bytes(&self, span_id: Id128) -> [u8; 55] {
        let mut b = [0u8; 55];
        b[..3].copy_from_slice(b"00-");
        hex_into(&mut b[3..35], self.trace_id.0);
        b[35] = b'-';
        hex_into(&mut b[36..52], u128::from(span_id.high64()));
        b[52..].copy_from_slice(if self.sampled { b"-01" } else { b"-00" });
        b
    }
}

fn is_lower_hex(s: &str) -> bool {
    s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// Nanoseconds since the Unix epoch, by the wall clock.
pub fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// Whether a call succeeded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SpanStatus {
    Ok,
    Error,
}

/// What a span says about the call.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct SpanAttrs {
    pub provider: std::sync::Arc<str>,
    pub model: std::sync::Arc<str>,
    pub tokens_in: u64,
    pub tokens_out: u64,
    /// Input tokens read from the provider's prompt cache (part of `tokens_in`).
    #[serde(skip_serializing_if = "is_zero")]
    pub tokens_cached: u64,
    /// Input tokens written to the prompt cache (part of `tokens_in`).
    #[serde(skip_serializing_if = "is_zero")]
    pub tokens_cache_write: u64,
    /// Output tokens spent reasoning (part of `tokens_out`).
    #[serde(skip_serializing_if = "is_zero")]
    pub tokens_reasoning: u64,
    pub cost_usd: f64,
    pub latency_ms: u64,
    pub finish_reason: String,
    /// Providers tried for this call (more than 1 when fallback moved it).
    pub attempts: u32,
    /// The token counts are an estimate: the provider reported no usage.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub usage_estimated: bool,
    /// Public error message, on failure.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Bounded error label (the `code` of the error table), on failure.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error_code: Option<&'static str>,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

impl SpanAttrs {
    /// Sets every token count from `u`.
    pub fn set_usage(&mut self, u: crate::types::Usage) {
        self.tokens_in = u.input;
        self.tokens_out = u.output;
        self.tokens_cached = u.cached_input;
        self.tokens_cache_write = u.cache_write;
        self.tokens_reasoning = u.reasoning;
    }

    /// Token counts by kind.
    pub fn usage(&self) -> crate::types::Usage {
        crate::types::Usage {
            input: self.tokens_in,
            output: self.tokens_out,
            cached_input: self.tokens_cached,
            cache_write: self.tokens_cache_write,
            reasoning: self.tokens_reasoning,
        }
    }
}

/// The TokenTrace span of one routed call: the payload of a `trace.span` message.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TraceSpan {
    pub trace_id: Id128,
    pub span_id: Id128,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub parent_id: Option<Id64>,
    pub operation: &'static str,
    pub start_ns: u64,
    pub end_ns: u64,
    pub status: SpanStatus,
    pub attrs: SpanAttrs,
}

/// Where finished spans go. Implementations must never block or fail the caller:
/// a span that cannot be queued is dropped and counted.
pub trait SpanSink: Send + Sync + 'static {
    fn report(&self, span: TraceSpan);

    /// Spans dropped so far because the sink could not keep up or deliver them.
    fn dropped(&self) -> u64 {
        0
    }
}

/// A sink that discards every span: reporting is off.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoopSink;

impl SpanSink for NoopSink {
    fn report(&self, _span: TraceSpan) {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_valid_traceparent() {
        let tc = TraceContext::from_traceparent(
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        )
        .unwrap();
        assert_eq!(tc.trace_id.to_string(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(tc.parent_id.unwrap().to_string(), "00f067aa0ba902b7");
        assert!(tc.sampled);
    }

    #[test]
    fn rejects_malformed_traceparents() {
        for bad in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
            "zz-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        ] {
            assert_eq!(TraceContext::from_traceparent(bad), None, "{bad}");
        }
    }

    #[test]
    fn outgoing_traceparent_names_the_span() {
        let tc = TraceContext {
            trace_id: Id128(0xabc),
            parent_id: None,
            sampled: true,
        };
        let span = Id128(0x0123_4567_89ab_cdef_0000_0000_0000_0001);
        assert_eq!(
            tc.traceparent_for(span),
            "00-00000000000000000000000000000abc-0123456789abcdef-01"
        );
        let back = TraceContext::from_traceparent(&tc.traceparent_for(span)).unwrap();
        assert_eq!(back.trace_id, tc.trace_id);
        let unsampled = TraceContext {
            sampled: false,
            ..tc
        };
        assert!(
            unsampled
                .traceparent_for(span)
                .ends_with("-0123456789abcdef-00")
        );
        assert_eq!(
            Id128(0x0123_4567_89ab_cdef_fedc_ba98_7654_3210).to_string(),
            "0123456789abcdeffedcba9876543210"
        );
        assert_eq!(
            Id128(u128::MAX).to_string(),
            "ffffffffffffffffffffffffffffffff"
        );
    }

    #[test]
    fn span_serializes_ids_as_lowercase_hex_and_numbers_as_numbers() {
        let span = TraceSpan {
            trace_id: Id128(0xAB),
            span_id: Id128::random(),
            parent_id: Some(Id64(0xCD)),
            operation: OPERATION,
            start_ns: 1,
            end_ns: 2,
            status: SpanStatus::Ok,
            attrs: SpanAttrs {
                provider: "echo".into(),
                model: "echo-v1".into(),
                tokens_in: 3,
                tokens_out: 4,
                tokens_cached: 2,
                cost_usd: 0.5,
                latency_ms: 7,
                finish_reason: "stop".into(),
                attempts: 1,
                ..Default::default()
            },
        };
        let v = serde_json::to_value(&span).unwrap();
        assert_eq!(v["trace_id"], "000000000000000000000000000000ab");
        assert_eq!(v["parent_id"], "00000000000000cd");
        assert_eq!(v["span_id"].as_str().unwrap().len(), 32);
        assert_eq!(v["status"], "ok");
        assert_eq!(v["attrs"]["tokens_in"], 3);
        assert_eq!(v["attrs"]["cost_usd"], 0.5);
        assert_eq!(v["attrs"]["tokens_cached"], 2);
        assert!(
            v["attrs"].get("tokens_reasoning").is_none(),
            "zero kinds are left out"
        );
        assert!(v["attrs"].get("error").is_none());
    }
}
