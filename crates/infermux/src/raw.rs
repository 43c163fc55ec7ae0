//! Bodies that go through as they were sent (SPEC §11): a caller's request for
//! a provider of its own dialect, and that provider's answer for the caller.
//! Each is kept as bytes with the byte ranges of the few values infermux
//! changes (`model`, `stream_options`, infermux's own `provider`), found while
//! the body was decoded; what goes out is the body with those ranges
//! replaced, never the body decoded and encoded again.

use std::ops::Range;

use bytes::Bytes;
use serde_json::value::RawValue;

/// The API a caller or a provider speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    /// OpenAI chat completions (also Azure OpenAI, Ollama and every
    /// OpenAI-compatible server).
    OpenAiChat,
    /// Anthropic Messages.
    AnthropicMessages,
}

/// Where `value` lies in `body`, when it is a slice of it (a value decoded
/// from `body` with a borrowing decoder).
pub fn range_in(body: &[u8], value: &RawValue) -> Option<Range<usize>> {
    let text = value.get().as_bytes();
    let start = (text.as_ptr() as usize).checked_sub(body.as_ptr() as usize)?;
    let end = start.checked_add(text.len())?;
    (end <= body.len()).then_some(start..end)
}

/// A caller's request body, for a provider of the same dialect.
#[derive(Debug, Clone, PartialEq)]
pub struct RawRequest {
    pub dialect: Dialect,
    body: Bytes,
    /// The top-level `model` value, if the body has one.
    model: Option<Range<usize>>,
    /// The top-level `stream_options` value, if any.
    stream_options: Option<Range<usize>>,
    /// Members infermux reads and the provider must not see (the `provider`
    /// extension), by the ranges of their values.
    strip: Vec<Range<usize>>,
    /// Request headers of the caller's that a provider of its dialect
    /// receives too (`anthropic-version`, `anthropic-beta`), as sent.
    headers: Vec<(&'static str, Box<str>)>,
}

/// Appends `s` as a JSON string (quoted, escaped as serde_json escapes).
pub(crate) fn write_str(out: &mut Vec<u8>, s: &str) {
    let mut ser = serde_json::Serializer::new(out);
    // Writing a string into a Vec cannot fail.
    let _ = serde::Serializer::serialize_str(&mut ser, s);
}

impl RawRequest {
    /// `body` with the ranges (found by [`range_in`]) of its top-level
    /// `model` and `stream_options` values, and of the values of members to
    /// leave out upstream.
    pub fn new(
        dialect: Dialect,
        body: Bytes,
        model: Option<Range<usize>>,
        stream_options: Option<Range<usize>>,
        strip: Vec<Range<usize>>,
    ) -> Self {
        RawRequest {
            dialect,
            body,
            model,
            stream_options,
            strip,
            headers: Vec::new(),
        }
    }

    /// The same body, with caller headers a provider of its dialect
    /// receives as sent.
    pub fn with_headers(mut self, headers: Vec<(&'static str, Box<str>)>) -> Self {
        self.headers = headers;
        self
    }

    /// The caller's headers for a provider of its dialect.
    pub fn headers(&self) -> &[(&'static str, Box<str>)] {
        &self.headers
    }

    /// The body as it was received.
    pub fn body(&self) -> &[u8] {
        &self.body
    }

    /// The body as it was received, shared.
    pub fn body_bytes(&self) -> Bytes {
        self.body.clone()
    }

    /// The body for a provider receiving `model`: the caller's bytes with
    /// `model` replaced (or added) and, for an OpenAI stream,
    /// `stream_options.include_usage` set so the call can be counted
    /// (Anthropic streams always carry their usage).
    pub fn body_for(&self, model: &str, stream: bool) -> Vec<u8> {
        let stream = stream && self.dialect == Dialect::OpenAiChat;
        let body = &self.body[..];
        let mut edits: Vec<Edit> = Vec::with_capacity(2 + self.strip.len());
        let mut quoted = Vec::with_capacity(model.len() + 2);
        write_str(&mut quoted, model);
        match &self.model {
            Some(r) => edits.push(Edit::replace(r.clone(), quoted)),
            None => edits.push(Edit::insert_member(body, b"model", quoted)),
        }
        if stream {
            match &self.stream_options {
                Some(r) => {
                    if let Some(options) = with_include_usage(&body[r.clone()]) {
                        edits.push(Edit::replace(r.clone(), options));
                    }
                }
                None => edits.push(Edit::insert_member(
                    body,
                    b"stream_options",
                    br#"{"include_usage":true}"#.to_vec(),
                )),
            }
        }
        for r in &self.strip {
            edits.push(Edit::remove_member(body, r.clone()));
        }
        apply(body, edits)
    }
}

/// `options` (a JSON object) with `include_usage: true`; `None` when it
/// already says so (or is not an object: the provider then answers for it).
fn with_include_usage(options: &[u8]) -> Option<Vec<u8>> {
    let mut map: serde_json::Map<String, serde_json::Value> =
        serde_json::from_slice(options).ok()?;
    if map.get("include_usage") == Some(&serde_json::Value::Bool(true)) {
        return None;
    }
    map.insert("include_usage".to_owned(), serde_json::Value::Bool(true));
    serde_json::to_vec(&map).ok()
}

/// A provider's answer (a unary body, or one stream event's data) as it sent
/// it, with the range of its top-level `model` value.
#[derive(Debug, Clone, PartialEq)]
pub struct RawAnswer {
    body: Bytes,
    model: Option<Range<usize>>,
    /// A stream's usage-only event (no choices): forwarded only to a caller
    /// that asked for usage.
    pub only_usage: bool,
    /// The SSE event's name, for dialects that name their events
    /// (Anthropic's `event: content_block_delta`; the known names are not
    /// allocated for each event).
    pub event: Option<std::borrow::Cow<'static, str>>,
}

impl RawAnswer {
    pub fn new(body: Bytes, model: Option<Range<usize>>) -> Self {
        RawAnswer {
            body,
            model,
            only_usage: false,
            event: None,
        }
    }

    /// The answer as the provider sent it.
    pub fn body(&self) -> &[u8] {
        &self.body
    }

    /// Appends the answer to `out` with its `model` (if it has one) replaced
    /// by `model`, the name the caller asked for.
    pub fn write_with_model(&self, out: &mut Vec<u8>, model: &str) {
        let Some(r) = &self.model else {
            out.extend_from_slice(&self.body);
            return;
        };
        out.reserve(self.body.len() + model.len());
        out.extend_from_slice(&self.body[..r.start]);
        write_str(out, model);
        out.extend_from_slice(&self.body[r.end..]);
    }

    /// Like [`RawAnswer::write_with_model`], with `member` (`"key":value`)
    /// added last to the top-level object: what infermux adds to an answer
    /// that lacked it (an estimated `usage`).
    pub fn write_with_member(&self, out: &mut Vec<u8>, model: &str, member: &[u8]) {
        let start = out.len();
        self.write_with_model(out, model);
        let body = &out[start..];
        let Some(close) = body.iter().rposition(|&b| b == b'}') else {
            return;
        };
        let empty = body[..close]
            .iter()
            .rfind(|b| !b.is_ascii_whitespace())
            .is_none_or(|&b| b == b'{');
        let at = start + close;
        let mut insert = Vec::with_capacity(member.len() + 1);
        if !empty {
            insert.push(b',');
        }
        insert.extend_from_slice(member);
        out.splice(at..at, insert);
    }

    /// The answer with `model` replaced, as a new buffer.
    pub fn with_model(&self, model: &str) -> Vec<u8> {
        let mut out = Vec::new();
        self.write_with_model(&mut out, model);
        out
    }
}

/// One change to a body: `range` replaced by `with`.
struct Edit {
    range: Range<usize>,
    with: Vec<u8>,
}

impl Edit {
    fn replace(range: Range<usize>, with: Vec<u8>) -> Self {
        Edit { range, with }
    }

    /// A new member `"key":value` first in the top-level object.
    fn insert_member(body: &[u8], key: &[u8], value: Vec<u8>) -> Self {
        let open = body.iter().position(|&b| b == b'{').map_or(0, |i| i + 1);
        let empty = body[open..]
            .iter()
            .find(|b| !b.is_ascii_whitespace())
            .is_none_or(|&b| b == b'}');
        let mut with = Vec::with_capacity(key.len() + value.len() + 4);
        with.push(b'"');
        with.extend_from_slice(key);
        with.extend_from_slice(b"\":");
        with.extend_from_slice(&value);
        if !empty {
            with.push(b',');
        }
        Edit {
            range: open..open,
            with,
        }
    }

    /// The member whose value is `value` removed, key and one comma with
    /// it. The key is a string that holds no quote (infermux's own field
    /// names), so its opening quote is the first one before its closing one.
    fn remove_member(body: &[u8], value: Range<usize>) -> Self {
        let before = |mut i: usize, skip_ws: bool| {
            while skip_ws && i > 0 && body[i - 1].is_ascii_whitespace() {
                i -= 1;
            }
            i
        };
        // value ← ws ← ':' ← ws ← '"' key '"'
        let colon = before(value.start, true).saturating_sub(1);
        let close = before(colon, true).saturating_sub(1);
        let open = body[..close]
            .iter()
            .rposition(|&b| b == b'"')
            .unwrap_or(close);
        // A comma after the member goes with it; else the one before it.
        let mut end = value.end;
        while end < body.len() && body[end].is_ascii_whitespace() {
            end += 1;
        }
        let range = if body.get(end) == Some(&b',') {
            open..end + 1
        } else {
            let start = before(open, true);
            if start > 0 && body[start - 1] == b',' {
                start - 1..value.end
            } else {
                open..value.end
            }
        };
        Edit {
            range,
            with: Vec::new(),
        }
    }
}

/// `body` with `edits` (non-overlapping) applied.
fn apply(body: &[u8], mut edits: Vec<Edit>) -> Vec<u8> {
    edits.sort_by_key(|e| (e.range.start, e.range.end));
    let grow: usize = edits.iter().map(|e| e.with.len()).sum();
    let mut out = Vec::with_capacity(body.len() + grow);
    let mut at = 0;
    for e in edits {
        if e.range.start < at {
            continue;
        }
        out.extend_from_slice(&body[at..e.range.start]);
        out.extend_from_slice(&e.with);
        at = e.range.end;
    }
    out.extend_from_slice(&body[at..]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;
    use serde_json::{Value, json};

    #[derive(Deserialize)]
    struct Probe<'a> {
        #[serde(borrow)]
        model: Option<&'a RawValue>,
        #[serde(borrow)]
        stream_options: Option<&'a RawValue>,
        #[serde(borrow)]
        provider: Option<&'a RawValue>,
    }

    fn raw(body: &str) -> RawRequest {
        let bytes = Bytes::copy_from_slice(body.as_bytes());
        let p: Probe<'_> = serde_json::from_slice(&bytes).unwrap();
        let at = |v: Option<&RawValue>| v.and_then(|v| range_in(&bytes, v));
        let strip = at(p.provider).into_iter().collect();
        RawRequest::new(
            Dialect::OpenAiChat,
            bytes.clone(),
            at(p.model),
            at(p.stream_options),
            strip,
        )
    }

    fn out(r: &RawRequest, model: &str, stream: bool) -> Value {
        let body = r.body_for(model, stream);
        serde_json::from_slice(&body)
            .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&body)))
    }

    #[test]
    fn only_model_changes_and_the_rest_is_the_callers_bytes() {
        let body = r#"{ "model" : "fast", "messages":[{"role":"developer","content":"x"}], "max_completion_tokens": 5, "zz": {"a":[1,2]} }"#;
        let r = raw(body);
        let sent = r.body_for("gpt-5-mini", false);
        assert_eq!(
            String::from_utf8(sent).unwrap(),
            body.replace(r#""fast""#, r#""gpt-5-mini""#)
        );
    }

    #[test]
    fn a_missing_model_is_added_and_names_are_escaped() {
        let r = raw(r#"{"messages":[]}"#);
        assert_eq!(
            out(&r, "a\"b", false),
            json!({"model": "a\"b", "messages": []})
        );
        let r = raw(r#"{}"#);
        assert_eq!(out(&r, "m", false), json!({"model": "m"}));
    }

    #[test]
    fn streams_ask_for_usage_whatever_the_caller_said() {
        for (body, want) in [
            (
                r#"{"model":"m","stream":true}"#,
                json!({"include_usage": true}),
            ),
            (
                r#"{"model":"m","stream":true,"stream_options":{"include_usage":false,"x":1}}"#,
                json!({"include_usage": true, "x": 1}),
            ),
            (
                r#"{"model":"m","stream":true,"stream_options":{"include_usage":true}}"#,
                json!({"include_usage": true}),
            ),
        ] {
            assert_eq!(out(&raw(body), "n", true)["stream_options"], want, "{body}");
        }
        assert!(
            out(&raw(r#"{"model":"m"}"#), "n", false)
                .get("stream_options")
                .is_none()
        );
    }

    #[test]
    fn the_provider_extension_is_left_out_wherever_it_is() {
        for body in [
            r#"{"provider":"p","model":"m","messages":[]}"#,
            r#"{"model":"m", "provider" : "p" , "messages":[]}"#,
            r#"{"model":"m","messages":[],"provider":"p"}"#,
            r#"{"model":"m","messages":[] , "provider":"p" }"#,
        ] {
            assert_eq!(
                out(&raw(body), "n", false),
                json!({"model": "n", "messages": []}),
                "{body}"
            );
        }
    }

    #[test]
    fn answers_change_only_their_model() {
        let body = Bytes::from_static(
            br#"{"id":"chatcmpl-9","model":"gpt-4o-2024-08-06","system_fingerprint":"fp_1","choices":[]}"#,
        );
        #[derive(Deserialize)]
        struct M<'a> {
            #[serde(borrow)]
            model: &'a RawValue,
        }
        let m: M<'_> = serde_json::from_slice(&body).unwrap();
        let a = RawAnswer::new(body.clone(), range_in(&body, m.model));
        assert_eq!(
            String::from_utf8(a.with_model("fast")).unwrap(),
            r#"{"id":"chatcmpl-9","model":"fast","system_fingerprint":"fp_1","choices":[]}"#
        );
        assert_eq!(
            RawAnswer::new(body.clone(), None).with_model("x"),
            body.to_vec()
        );
    }

    #[test]
    fn a_member_is_added_last() {
        let a = RawAnswer::new(
            Bytes::from_static(br#"{"id":"x","model":"m"} "#),
            Some(18..21),
        );
        let mut out = Vec::new();
        a.write_with_member(&mut out, "n", br#""usage":{"prompt_tokens":1}"#);
        assert_eq!(
            serde_json::from_slice::<Value>(&out).unwrap(),
            json!({"id": "x", "model": "n", "usage": {"prompt_tokens": 1}})
        );
        let a = RawAnswer::new(Bytes::from_static(b"{ }"), None);
        let mut out = Vec::new();
        a.write_with_member(&mut out, "n", br#""k":1"#);
        assert_eq!(
            serde_json::from_slice::<Value>(&out).unwrap(),
            json!({"k": 1})
        );
    }

    #[test]
    fn a_value_from_another_buffer_has_no_range() {
        let body = br#"{"model":"m"}"#;
        let other: Box<RawValue> = serde_json::from_str(r#""m""#).unwrap();
        assert_eq!(range_in(body, &other), None);
    }
}
