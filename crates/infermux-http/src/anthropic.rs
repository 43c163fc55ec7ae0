//! The Anthropic Messages API (SPEC §12): `POST /v1/messages` (unary and
//! SSE) and `POST /v1/messages/count_tokens`, so the Anthropic SDKs and the
//! tools built on them (Claude Code with `ANTHROPIC_BASE_URL`) work by
//! changing the base URL.
//!
//! A request is checked and read once, lightly: the text of each turn (for
//! validation, estimates and the echo provider) and the places of `model`
//! and `provider` in the caller's bytes. An `anthropic` provider receives
//! those bytes (SPEC §11); any other asks for the whole request, translated
//! to the OpenAI shape of the core ([`whole_request`], in `translate`).
//! Answers come back in Anthropic's shapes: a passed-through answer as the
//! upstream sent it but for `model`, a translated one written here; errors
//! in Anthropic's error shape with the statuses of SPEC §2.

mod translate;

use std::borrow::Cow;
use std::convert::Infallible;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use futures_util::StreamExt;
use infermux::router::RequestContext;
use infermux::trace::Id128;
use infermux::{ChatMessage, Error, ErrorKind, InferRequest, Params, Role, json};
use serde::Deserialize;
use serde_json::value::RawValue;

use crate::AppState;
use crate::error::ApiError;
use crate::extract::{Caller, JsonBytes};
use crate::openai::raw_string;
use crate::routes::{Answer, decimal, json_response};

/// The caller's Anthropic headers, forwarded to `anthropic` providers.
#[derive(Debug, Default)]
pub(crate) struct Versions {
    pub version: Option<Box<str>>,
    pub beta: Option<Box<str>>,
}

impl Versions {
    /// From the header values (several `anthropic-beta` lines are joined,
    /// as HTTP joins repeated headers).
    pub(crate) fn of(headers: &HeaderMap) -> Versions {
        let text = |name: &str| {
            let values: Vec<&str> = headers
                .get_all(name)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .collect();
            (!values.is_empty()).then(|| values.join(",").into_boxed_str())
        };
        Versions {
            version: text("anthropic-version"),
            beta: text("anthropic-beta"),
        }
    }

    fn headers(self) -> Vec<(&'static str, Box<str>)> {
        let mut out = Vec::new();
        if let Some(v) = self.version {
            out.push(("anthropic-version", v));
        }
        if let Some(v) = self.beta {
            out.push(("anthropic-beta", v));
        }
        out
    }
}

/// An [`Error`] on its way to an Anthropic client:
/// `{"type":"error","error":{"type","message"}}` with the status of SPEC §2.
#[derive(Debug)]
pub struct MessagesError(pub Error);

impl From<Error> for MessagesError {
    fn from(e: Error) -> Self {
        MessagesError(e)
    }
}

impl From<ApiError> for MessagesError {
    fn from(e: ApiError) -> Self {
        MessagesError(e.0)
    }
}

/// Anthropic's name for the class of `e`.
fn error_type(e: &Error) -> &'static str {
    match e.kind() {
        ErrorKind::Unauthorized => "authentication_error",
        ErrorKind::ModelNotAllowed => "permission_error",
        ErrorKind::ModelNotFound | ErrorKind::RouteNotFound => "not_found_error",
        ErrorKind::RateLimited | ErrorKind::BudgetExceeded => "rate_limit_error",
        ErrorKind::Overloaded | ErrorKind::NoHealthyProviders => "overloaded_error",
        _ => match e.disposition().http_status {
            400..=499 => "invalid_request_error",
            _ => "api_error",
        },
    }
}

/// The error object of `e`, in Anthropic's shape.
fn error_body(e: &Error) -> Vec<u8> {
    let mut out = Vec::with_capacity(96 + e.message().len());
    out.extend_from_slice(br#"{"type":"error","error":{"type":""#);
    out.extend_from_slice(error_type(e).as_bytes());
    out.extend_from_slice(br#"","message":"#);
    json::write_str(&mut out, e.message());
    out.extend_from_slice(b"}}");
    out
}

impl IntoResponse for MessagesError {
    fn into_response(self) -> Response {
        let body = error_body(&self.0);
        crate::error::respond(&self.0, body)
    }
}

/// What a Messages request is read for on every call. Fields not named
/// here (tools, thinking, cache_control, ...) go to an `anthropic`
/// provider in the caller's bytes and are read only to translate.
#[derive(Deserialize)]
struct LightRequest<'a> {
    #[serde(borrow)]
    model: Option<&'a RawValue>,
    max_tokens: Option<i64>,
    #[serde(borrow)]
    messages: Option<Vec<LightMessage<'a>>>,
    #[serde(borrow)]
    system: Option<&'a RawValue>,
    stream: Option<bool>,
    temperature: Option<f64>,
    top_p: Option<f64>,
    stop_sequences: Option<Vec<String>>,
    #[serde(borrow)]
    metadata: Option<&'a RawValue>,
    /// infermux extension: send to this provider, whatever the model
    /// resolves to (left out upstream).
    #[serde(borrow)]
    provider: Option<&'a RawValue>,
}

#[derive(Deserialize)]
struct LightMessage<'a> {
    #[serde(borrow)]
    role: Cow<'a, str>,
    content: Option<LightContent<'a>>,
}

/// A turn's content: a string, or blocks of which only the kind, the text
/// and the tool ids are read.
enum LightContent<'a> {
    Text(Cow<'a, str>),
    Blocks(Vec<LightBlock<'a>>),
}

#[derive(Deserialize)]
struct LightBlock<'a> {
    #[serde(rename = "type", borrow)]
    kind: Option<Cow<'a, str>>,
    #[serde(borrow)]
    text: Option<Cow<'a, str>>,
    #[serde(borrow)]
    id: Option<Cow<'a, str>>,
    #[serde(borrow)]
    tool_use_id: Option<Cow<'a, str>>,
}

impl<'de: 'a, 'a> Deserialize<'de> for LightContent<'a> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visit<'a>(std::marker::PhantomData<&'a ()>);
        impl<'de: 'a, 'a> serde::de::Visitor<'de> for Visit<'a> {
            type Value = LightContent<'a>;

            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a string or an array of content blocks")
            }

            fn visit_borrowed_str<E: serde::de::Error>(
                self,
                v: &'de str,
            ) -> Result<LightContent<'a>, E> {
                Ok(LightContent::Text(Cow::Borrowed(v)))
            }

            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<LightContent<'a>, E> {
                Ok(LightContent::Text(Cow::Owned(v.to_owned())))
            }

            fn visit_string<E: serde::de::Error>(self, v: String) -> Result<LightContent<'a>, E> {
                Ok(LightContent::Text(Cow::Owned(v)))
            }

            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> Result<LightContent<'a>, A::Error> {
                let mut blocks = Vec::with_capacity(seq.size_hint().unwrap_or(2));
                while let Some(b) = seq.next_element()? {
                    blocks.push(b);
                }
                Ok(LightContent::Blocks(blocks))
            }
        }
        d.deserialize_any(Visit(std::marker::PhantomData))
    }
}

/// The content block types of the Messages API a request may carry.
const BLOCK_TYPES: &[&str] = &[
    "text",
    "image",
    "document",
    "search_result",
    "tool_use",
    "tool_result",
    "thinking",
    "redacted_thinking",
    "server_tool_use",
    "web_search_tool_result",
    "web_fetch_tool_result",
    "code_execution_tool_result",
    "bash_code_execution_tool_result",
    "text_editor_code_execution_tool_result",
    "mcp_tool_use",
    "mcp_tool_result",
    "container_upload",
];

fn invalid(field: impl std::fmt::Display, what: impl std::fmt::Display) -> Error {
    Error::invalid(format!("{field}: {what}"))
}

/// The text of `system` (a string, or text blocks), checked.
fn system_text(raw: &RawValue) -> Result<String, Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum System<'a> {
        Text(String),
        Blocks(#[serde(borrow)] Vec<LightBlock<'a>>),
    }
    match serde_json::from_str::<Option<System<'_>>>(raw.get()) {
        Ok(None) => Ok(String::new()),
        Ok(Some(System::Text(t))) => Ok(t),
        Ok(Some(System::Blocks(blocks))) => {
            let mut text = String::new();
            for (j, b) in blocks.iter().enumerate() {
                match (b.kind.as_deref(), &b.text) {
                    (Some("text"), Some(t)) => {
                        if !text.is_empty() {
                            text.push('\n');
                        }
                        text.push_str(t);
                    }
                    (Some("text"), None) => {
                        return Err(invalid(format!("system[{j}].text"), "Field required"));
                    }
                    (other, _) => {
                        return Err(invalid(
                            format!("system[{j}].type"),
                            format!(
                                "system blocks must be text blocks, not {}",
                                other.unwrap_or("untyped")
                            ),
                        ));
                    }
                }
            }
            Ok(text)
        }
        Err(_) => Err(invalid(
            "system",
            "expected a string or an array of text blocks",
        )),
    }
}

impl LightRequest<'_> {
    /// Who the caller says the end user is (`metadata.user_id`).
    fn user(&self) -> Option<Arc<str>> {
        #[derive(Deserialize)]
        struct Metadata {
            user_id: Option<String>,
        }
        let m: Metadata = serde_json::from_str(self.metadata?.get()).ok()?;
        let user = m.user_id.filter(|u| !u.is_empty())?;
        Some(Arc::from(infermux::validate::truncate(&user, 256)))
    }

    /// The core request (checked as SPEC §12 says), and whether it streams.
    /// `count` is a `count_tokens` body, which has no `max_tokens`.
    fn into_core(
        self,
        body: &Bytes,
        versions: Versions,
        count: bool,
    ) -> Result<(InferRequest, bool), Error> {
        let model = raw_string("model", self.model)?;
        if self.model.is_none() {
            return Err(invalid("model", "Field required"));
        }
        let provider = raw_string("provider", self.provider)?;
        match self.max_tokens {
            None if !count => return Err(invalid("max_tokens", "Field required")),
            Some(n) if n < 1 => return Err(invalid("max_tokens", format!("{n} is less than 1"))),
            _ => {}
        }
        let Some(light) = self.messages else {
            return Err(invalid("messages", "Field required"));
        };
        let mut messages = Vec::with_capacity(light.len() + 1);
        if let Some(system) = self.system {
            let text = system_text(system)?;
            if !text.is_empty() {
                messages.push(ChatMessage::system(text));
            }
        }
        let mut previous_calls: Vec<&str> = Vec::new();
        for (i, m) in light.iter().enumerate() {
            let role = match &*m.role {
                "user" => Role::User,
                "assistant" => Role::Assistant,
                other => {
                    return Err(invalid(
                        format!("messages[{i}].role"),
                        format!(
                            "expected user or assistant, got \"{}\"",
                            infermux::validate::truncate(other, 32)
                        ),
                    ));
                }
            };
            if i == 0 && role != Role::User {
                return Err(invalid(
                    "messages[0].role",
                    "the first message must be a user message",
                ));
            }
            let mut text = String::new();
            let mut calls = Vec::new();
            match &m.content {
                None => return Err(invalid(format!("messages[{i}].content"), "Field required")),
                Some(LightContent::Text(t)) => text.push_str(t),
                Some(LightContent::Blocks(blocks)) => {
                    for (j, b) in blocks.iter().enumerate() {
                        let at = |f: &str| format!("messages[{i}].content[{j}].{f}");
                        let kind = b
                            .kind
                            .as_deref()
                            .ok_or_else(|| invalid(at("type"), "Field required"))?;
                        if !BLOCK_TYPES.contains(&kind) {
                            return Err(invalid(
                                at("type"),
                                format!(
                                    "unknown content block type \"{}\" (known: {})",
                                    infermux::validate::truncate(kind, 40),
                                    BLOCK_TYPES.join(", ")
                                ),
                            ));
                        }
                        match kind {
                            "text" => match &b.text {
                                Some(t) => text.push_str(t),
                                None => return Err(invalid(at("text"), "Field required")),
                            },
                            "tool_use" if role != Role::Assistant => {
                                return Err(invalid(
                                    at("type"),
                                    "tool_use blocks belong to assistant messages",
                                ));
                            }
                            "tool_use" => match &b.id {
                                Some(id) => calls.push(&**id),
                                None => return Err(invalid(at("id"), "Field required")),
                            },
                            "tool_result" => {
                                let id = b
                                    .tool_use_id
                                    .as_deref()
                                    .ok_or_else(|| invalid(at("tool_use_id"), "Field required"))?;
                                if role != Role::User || !previous_calls.contains(&id) {
                                    return Err(invalid(
                                        at("tool_use_id"),
                                        format!(
                                            "no tool_use block with id \"{}\" in the previous message; each tool_result must answer a tool_use of the assistant turn before it",
                                            infermux::validate::truncate(id, 64)
                                        ),
                                    ));
                                }
                            }
                            _ => {}
                        }
                    }
                }
            }
            previous_calls = calls;
            messages.push(ChatMessage::new(role, text));
        }
        let raw = infermux::raw::RawRequest::new(
            infermux::raw::Dialect::AnthropicMessages,
            body.clone(),
            self.model.and_then(|v| infermux::raw::range_in(body, v)),
            None,
            self.provider
                .and_then(|v| infermux::raw::range_in(body, v))
                .into_iter()
                .collect(),
        )
        .with_headers(versions.headers());
        let req = InferRequest {
            model,
            provider,
            messages,
            params: Params {
                temperature: self.temperature,
                max_tokens: self.max_tokens,
                top_p: self.top_p,
                stop: self.stop_sequences,
            },
            meta: Default::default(),
            extra: None,
            passthrough: Some(Arc::new(infermux::types::Passthrough {
                raw,
                whole: Some(translate::whole_request),
            })),
        };
        Ok((req, self.stream.unwrap_or(false)))
    }
}

/// Reads a Messages body: the core request, whether it streams, and the
/// context with who the caller says it is.
fn read(
    state: &AppState,
    ctx: RequestContext,
    versions: Versions,
    body: &Bytes,
    count: bool,
) -> Result<(InferRequest, bool, RequestContext), Error> {
    let parsed: LightRequest<'_> = json::from_slice(body)?;
    let caller = match &ctx.caller {
        None if state.router.callers().is_some() => parsed.user(),
        _ => None,
    };
    let (req, stream) = parsed.into_core(body, versions, count)?;
    let ctx = RequestContext {
        dialect: "anthropic",
        caller: caller.or(ctx.caller),
        ..ctx
    };
    Ok((req, stream, ctx))
}

/// `POST /v1/messages`.
pub async fn messages_route(
    State(state): State<Arc<AppState>>,
    Caller(ctx): Caller,
    headers: HeaderMap,
    body: Result<JsonBytes, ApiError>,
) -> Result<Answer, MessagesError> {
    let ctx = ctx?;
    let JsonBytes(body) = body?;
    messages(&state, ctx, Versions::of(&headers), body).await
}

/// `POST /v1/messages` once its body is read (the connection front calls
/// this directly).
pub(crate) async fn messages(
    state: &Arc<AppState>,
    ctx: RequestContext,
    versions: Versions,
    body: Bytes,
) -> Result<Answer, MessagesError> {
    let (req, stream, ctx) = read(state, ctx, versions, &body, false)?;
    if stream {
        return stream_messages(state, req, ctx).await.map(Answer::Response);
    }
    let routed = state.router.call(&req, &ctx).await?;
    let r = &routed.response;
    // Same dialect: the upstream's answer as it sent it, but for `model`.
    if let Some(raw) = &r.raw {
        let mut bytes = Vec::with_capacity(raw.body().len() + r.model.len());
        raw.write_with_model(&mut bytes, &r.model);
        return Ok(json_response(bytes, routed));
    }
    let bytes = translate::message(r);
    Ok(json_response(bytes, routed))
}

/// `POST /v1/messages/count_tokens`: `{"input_tokens": N}`, the provider's
/// own count where it has one, otherwise the tokenizer's estimate (then
/// `X-Infermux-Usage-Estimated: true`, the header every estimated count
/// carries).
pub async fn count_tokens_route(
    State(state): State<Arc<AppState>>,
    Caller(ctx): Caller,
    headers: HeaderMap,
    body: Result<JsonBytes, ApiError>,
) -> Result<Response, MessagesError> {
    let ctx = ctx?;
    let JsonBytes(body) = body?;
    let (req, _, ctx) = read(&state, ctx, Versions::of(&headers), &body, true)?;
    let count = state.router.count_tokens(&req, &ctx).await?;
    let mut digits = [0u8; 20];
    let mut out = br#"{"input_tokens":"#.to_vec();
    out.extend_from_slice(decimal(count.input_tokens, &mut digits));
    out.push(b'}');
    let mut resp = (StatusCode::OK, out).into_response();
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    if count.estimated {
        resp.headers_mut().insert(
            crate::routes::USAGE_ESTIMATED.clone(),
            HeaderValue::from_static("true"),
        );
    }
    Ok(resp)
}

/// A `msg_` id of 32 random hex digits, for an answer with none upstream.
fn message_id() -> String {
    let mut id = String::with_capacity(36);
    id.push_str("msg_");
    Id128::random().push_hex(&mut id);
    id
}

/// One SSE event, `event: <name>` and its data, appended to `out`.
fn push_event(out: &mut Vec<u8>, name: &str, data: &[u8]) {
    out.extend_from_slice(b"event: ");
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(b"\ndata: ");
    out.extend_from_slice(data);
    out.extend_from_slice(b"\n\n");
}

/// A stream's state: passed-through events go out as they came; a
/// translated stream is written as Anthropic's event sequence.
struct StreamState {
    routed: infermux::router::RoutedStream,
    model: String,
    translated: translate::Events,
    ended: bool,
}

impl StreamState {
    /// The next events (one upstream chunk can make several), or `None`
    /// at the end.
    async fn next_events(&mut self) -> Option<Bytes> {
        loop {
            if self.ended {
                return None;
            }
            let mut out = Vec::new();
            match self.routed.next().await {
                Some(Ok(c)) => match &c.raw {
                    Some(raw) => {
                        let name = raw.event.as_deref().unwrap_or("message");
                        out.reserve(raw.body().len() + 32);
                        out.extend_from_slice(b"event: ");
                        out.extend_from_slice(name.as_bytes());
                        out.extend_from_slice(b"\ndata: ");
                        raw.write_with_model(&mut out, &self.model);
                        out.extend_from_slice(b"\n\n");
                        // After `message_stop` the routed stream ends (and
                        // reports its span) at the next poll.
                    }
                    None => self.translated.chunk(&mut out, &self.model, &c),
                },
                Some(Err(e)) => {
                    // The dialect's own error event, then the end: never a
                    // clean `message_stop` after a failure.
                    self.ended = true;
                    let d = e.disposition();
                    tracing::warn!(code = d.code, error = %e, "stream failed after it started");
                    push_event(&mut out, "error", &error_body(&e));
                }
                None => {
                    self.ended = true;
                    self.translated.finish(&mut out);
                }
            }
            if !out.is_empty() {
                return Some(Bytes::from(out));
            }
        }
    }
}

async fn stream_messages(
    state: &AppState,
    req: InferRequest,
    ctx: RequestContext,
) -> Result<Response, MessagesError> {
    // Failures before the first byte are ordinary errors with their status.
    let routed = state.router.call_stream(&req, &ctx).await?;
    let headers = crate::routes::stream_headers(&routed);
    let state = StreamState {
        model: routed.model.clone(),
        routed,
        translated: translate::Events::new(message_id()),
        ended: false,
    };
    // Dropping the body (the client went away) drops the routed stream,
    // which cancels the upstream request.
    let body = futures_util::stream::unfold(state, |mut s| async move {
        let events = s.next_events().await?;
        Some((Ok::<_, Infallible>(events), s))
    });
    Ok((StatusCode::OK, headers, Body::from_stream(body)).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn core(body: &str) -> Result<InferRequest, Error> {
        let bytes = Bytes::from(body.to_owned());
        let parsed: LightRequest<'_> = json::from_slice(&bytes)?;
        parsed
            .into_core(&bytes, Versions::default(), false)
            .map(|(r, _)| r)
    }

    #[test]
    fn malformed_bodies_name_their_field() {
        let cases = [
            (
                r#"{"model":"m","messages":[{"role":"user","content":"hi"}]}"#,
                "max_tokens: Field required",
            ),
            (
                r#"{"model":"m","max_tokens":0,"messages":[{"role":"user","content":"hi"}]}"#,
                "max_tokens: 0 is less than 1",
            ),
            (
                r#"{"model":"m","max_tokens":5,"messages":[{"role":"assistant","content":"hi"}]}"#,
                "messages[0].role: the first message must be a user message",
            ),
            (
                r#"{"model":"m","max_tokens":5,"messages":[{"role":"system","content":"hi"}]}"#,
                "messages[0].role: expected user or assistant",
            ),
            (
                r#"{"model":"m","max_tokens":5,"messages":[{"role":"user","content":[{"type":"video"}]}]}"#,
                "messages[0].content[0].type: unknown content block type \"video\"",
            ),
            (
                r#"{"model":"m","max_tokens":5,"messages":[{"role":"user","content":[{"type":"tool_result","tool_use_id":"t1","content":"x"}]}]}"#,
                "messages[0].content[0].tool_use_id: no tool_use block with id \"t1\"",
            ),
            (
                r#"{"model":"m","max_tokens":5,"system":[{"type":"image"}],"messages":[{"role":"user","content":"x"}]}"#,
                "system[0].type: system blocks must be text blocks",
            ),
            (
                r#"{"model":"m","model":"n","max_tokens":5,"messages":[{"role":"user","content":"x"}]}"#,
                "duplicate field `model`",
            ),
        ];
        for (body, want) in cases {
            let e = core(body).expect_err(body);
            assert_eq!(e.kind(), ErrorKind::InvalidRequest, "{body}");
            assert!(e.message().contains(want), "{body}: {}", e.message());
        }
    }

    #[test]
    fn a_tool_result_answers_the_previous_turns_tool_use() {
        let req = core(
            r#"{"model":"m","max_tokens":5,"system":[{"type":"text","text":"Be brief.","cache_control":{"type":"ephemeral"}}],
            "messages":[{"role":"user","content":"weather?"},
            {"role":"assistant","content":[{"type":"text","text":"Looking."},{"type":"tool_use","id":"t1","name":"w","input":{}}]},
            {"role":"user","content":[{"type":"tool_result","tool_use_id":"t1","content":"sunny"},{"type":"text","text":"thanks"}]}]}"#,
        )
        .unwrap();
        let texts: Vec<(&str, &str)> = req
            .messages
            .iter()
            .map(|m| (m.role.as_str(), m.content.as_str()))
            .collect();
        assert_eq!(
            texts,
            [
                ("system", "Be brief."),
                ("user", "weather?"),
                ("assistant", "Looking."),
                ("user", "thanks")
            ]
        );
        assert_eq!(
            req.passthrough.unwrap().raw.dialect,
            infermux::raw::Dialect::AnthropicMessages
        );
    }

    #[test]
    fn errors_take_anthropics_shape_and_class() {
        let e = Error::new(ErrorKind::RateLimited, "slow down");
        let v: serde_json::Value = serde_json::from_slice(&error_body(&e)).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"type":"error","error":{"type":"rate_limit_error","message":"slow down"}})
        );
        assert_eq!(error_type(&Error::invalid("x")), "invalid_request_error");
        assert_eq!(
            error_type(&Error::new(ErrorKind::Unauthorized, "x")),
            "authentication_error"
        );
        assert_eq!(
            error_type(&Error::new(ErrorKind::Internal, "x")),
            "api_error"
        );
    }
}
