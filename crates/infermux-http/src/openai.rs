//! The OpenAI-compatible API: `POST /v1/chat/completions` (plain and SSE
//! streaming), `GET /v1/models`. Any OpenAI SDK works by changing its base URL.
//!
//! Requests are translated to the core `InferRequest` (unknown fields ride along
//! in `extra` for OpenAI-compatible providers); responses are rendered in
//! OpenAI's shapes from the Router's result.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use futures_util::StreamExt;
use infermux::router::RequestContext;
use infermux::trace::Id128;
use infermux::{ChatMessage, Error, InferRequest, Params, Role, json};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use serde_json::{Map, Value};

use crate::AppState;
use crate::error::ApiError;
use crate::extract::{Caller, JsonBytes};
use crate::routes::{Answer, decimal, json_response};

/// A chat completion request, as OpenAI defines it. `model`,
/// `stream_options` and `provider` are kept as the caller's bytes: their
/// places in the body are what pass-through (SPEC §11) changes.
#[derive(Debug, Default)]
struct ChatCompletionRequest<'de> {
    model: Option<&'de RawValue>,
    messages: Vec<OaiMessage<'de>>,
    temperature: Option<f64>,
    max_tokens: Option<i64>,
    max_completion_tokens: Option<i64>,
    top_p: Option<f64>,
    stop: Option<Stop>,
    stream: bool,
    stream_options: Option<&'de RawValue>,
    n: Option<i64>,
    /// infermux extension: send to this provider, whatever the model resolves to.
    provider: Option<&'de RawValue>,
    /// Everything else (tools, response_format, seed, user, ...), as sent.
    extra: Vec<(String, &'de RawValue)>,
}

/// A key of the request object: a field [`ChatCompletionRequest`] names, or
/// another (kept in `extra`).
#[derive(Clone, Copy)]
enum ChatField {
    Model,
    Messages,
    Temperature,
    MaxTokens,
    MaxCompletionTokens,
    TopP,
    Stop,
    Stream,
    StreamOptions,
    N,
    Provider,
}

impl ChatField {
    const ALL: [ChatField; 11] = [
        ChatField::Model,
        ChatField::Messages,
        ChatField::Temperature,
        ChatField::MaxTokens,
        ChatField::MaxCompletionTokens,
        ChatField::TopP,
        ChatField::Stop,
        ChatField::Stream,
        ChatField::StreamOptions,
        ChatField::N,
        ChatField::Provider,
    ];

    fn name(self) -> &'static str {
        match self {
            ChatField::Model => "model",
            ChatField::Messages => "messages",
            ChatField::Temperature => "temperature",
            ChatField::MaxTokens => "max_tokens",
            ChatField::MaxCompletionTokens => "max_completion_tokens",
            ChatField::TopP => "top_p",
            ChatField::Stop => "stop",
            ChatField::Stream => "stream",
            ChatField::StreamOptions => "stream_options",
            ChatField::N => "n",
            ChatField::Provider => "provider",
        }
    }
}

enum ChatKey {
    Field(ChatField),
    Other(String),
}

impl<'de> Deserialize<'de> for ChatKey {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visit;
        impl serde::de::Visitor<'_> for Visit {
            type Value = ChatKey;

            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a field name")
            }

            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<ChatKey, E> {
                Ok(match ChatField::ALL.into_iter().find(|f| f.name() == v) {
                    Some(field) => ChatKey::Field(field),
                    None => ChatKey::Other(v.to_owned()),
                })
            }
        }
        d.deserialize_identifier(Visit)
    }
}

/// Decoded by hand: `#[serde(flatten)]` for `extra` would buffer the whole
/// request (every message) into an intermediate tree and decode it again.
/// Named fields decode straight into place; the rest land in `extra`.
impl<'de> Deserialize<'de> for ChatCompletionRequest<'de> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visit;
        impl<'de> serde::de::Visitor<'de> for Visit {
            type Value = ChatCompletionRequest<'de>;

            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a chat completion request object")
            }

            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<ChatCompletionRequest<'de>, A::Error> {
                use serde::de::Error as _;
                let mut r = ChatCompletionRequest::default();
                let mut seen = [false; ChatField::ALL.len()];
                while let Some(key) = map.next_key::<ChatKey>()? {
                    let field = match key {
                        ChatKey::Field(field) => field,
                        ChatKey::Other(name) => {
                            let value = map.next_value()?;
                            r.extra.push((name, value));
                            continue;
                        }
                    };
                    if std::mem::replace(&mut seen[field as usize], true) {
                        return Err(A::Error::duplicate_field(field.name()));
                    }
                    match field {
                        ChatField::Model => r.model = map.next_value()?,
                        ChatField::Messages => r.messages = map.next_value()?,
                        ChatField::Temperature => r.temperature = map.next_value()?,
                        ChatField::MaxTokens => r.max_tokens = map.next_value()?,
                        ChatField::MaxCompletionTokens => {
                            r.max_completion_tokens = map.next_value()?;
                        }
                        ChatField::TopP => r.top_p = map.next_value()?,
                        ChatField::Stop => r.stop = map.next_value()?,
                        ChatField::Stream => r.stream = map.next_value()?,
                        ChatField::StreamOptions => r.stream_options = map.next_value()?,
                        ChatField::N => r.n = map.next_value()?,
                        ChatField::Provider => r.provider = map.next_value()?,
                    }
                }
                if !seen[ChatField::Messages as usize] {
                    return Err(A::Error::missing_field("messages"));
                }
                Ok(r)
            }
        }
        d.deserialize_map(Visit)
    }
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum Stop {
    One(String),
    Many(Vec<String>),
}

#[derive(Debug, Deserialize)]
struct StreamOptions {
    #[serde(default)]
    include_usage: bool,
}

/// A string field kept as its JSON text, decoded (every dialect's `model`
/// and `provider`).
pub(crate) fn raw_string(field: &str, raw: Option<&RawValue>) -> Result<String, Error> {
    match raw {
        None => Ok(String::new()),
        Some(raw) => match serde_json::from_str::<Option<String>>(raw.get()) {
            Ok(s) => Ok(s.unwrap_or_default()),
            Err(e) => Err(Error::invalid(format!("{field}: {e}"))),
        },
    }
}

#[derive(Debug, Deserialize)]
struct OaiMessage<'a> {
    role: String,
    #[serde(default)]
    content: Option<Content>,
    // Tool calling, carried to the provider as sent (named fields rather than
    // a flattened map: flattening slows every message's decoding down). Kept
    // as the caller's bytes: they become values only for a provider that
    // translates them.
    #[serde(borrow)]
    tool_calls: Option<&'a RawValue>,
    #[serde(borrow)]
    tool_call_id: Option<&'a RawValue>,
    #[serde(borrow)]
    name: Option<&'a RawValue>,
    // An assistant turn's reasoning, sent back: as text, and as Anthropic's
    // signed thinking blocks.
    #[serde(borrow)]
    reasoning_content: Option<&'a RawValue>,
    #[serde(borrow)]
    thinking_blocks: Option<&'a RawValue>,
}

/// A value kept as JSON text, as a value.
fn value_of(raw: &RawValue) -> Value {
    serde_json::from_str(raw.get()).unwrap_or(Value::Null)
}

#[derive(Debug)]
enum Content {
    Text(String),
    Parts(Vec<Value>),
}

/// Decoded by hand: an untagged enum buffers every message's content and
/// copies it again into the variant that fits.
impl<'de> Deserialize<'de> for Content {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visit;
        impl<'de> serde::de::Visitor<'de> for Visit {
            type Value = Content;

            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a string or an array of content parts")
            }

            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Content, E> {
                Ok(Content::Text(v.to_owned()))
            }

            fn visit_string<E: serde::de::Error>(self, v: String) -> Result<Content, E> {
                Ok(Content::Text(v))
            }

            fn visit_seq<A: serde::de::SeqAccess<'de>>(self, seq: A) -> Result<Content, A::Error> {
                Vec::deserialize(serde::de::value::SeqAccessDeserializer::new(seq))
                    .map(Content::Parts)
            }
        }
        d.deserialize_any(Visit)
    }
}

/// The text of a message's content parts, joined; checks that every part has
/// a `type` and every text part its `text`.
fn parts_text(i: usize, parts: &[Value]) -> Result<String, Error> {
    let mut text = String::new();
    for (j, p) in parts.iter().enumerate() {
        match p.get("type").and_then(Value::as_str) {
            Some("text") => match p.get("text").and_then(Value::as_str) {
                Some(t) => text.push_str(t),
                None => {
                    return Err(Error::invalid(format!(
                        "messages[{i}].content[{j}].text: a text part needs a string text"
                    )));
                }
            },
            Some(_) => {}
            None => {
                return Err(Error::invalid(format!(
                    "messages[{i}].content[{j}].type: every content part needs a string type"
                )));
            }
        }
    }
    Ok(text)
}

impl ChatCompletionRequest<'_> {
    /// The core request, or the first problem, naming its field. `body` is
    /// the bytes `self` was decoded from: it goes to OpenAI-dialect
    /// providers as it is, but for `model`. With `full` false the fields
    /// only a translating provider reads (`extra`, the messages' tool calls)
    /// are left out: such a provider asks for them ([`whole_request`]).
    /// The `user` field: who the caller says the end user is, for the ledger.
    fn user(&self) -> Option<Arc<str>> {
        let (_, v) = self.extra.iter().find(|(k, _)| k == "user")?;
        let user: String = serde_json::from_str(v.get()).ok()?;
        (!user.is_empty()).then(|| Arc::from(infermux::validate::truncate(&user, 256)))
    }

    fn into_core(self, body: &Bytes, full: bool) -> Result<(InferRequest, bool, bool), Error> {
        let model = raw_string("model", self.model)?;
        let provider = raw_string("provider", self.provider)?;
        let include_usage = match self.stream_options {
            None => false,
            Some(raw) => match serde_json::from_str::<Option<StreamOptions>>(raw.get()) {
                Ok(o) => o.is_some_and(|o| o.include_usage),
                Err(e) => return Err(Error::invalid(format!("stream_options: {e}"))),
            },
        };
        for (field, n) in [
            ("max_tokens", self.max_tokens),
            ("max_completion_tokens", self.max_completion_tokens),
        ] {
            if let Some(n) = n
                && n < 1
            {
                return Err(Error::invalid(format!("{field}: {n} is less than 1")));
            }
        }
        let at = |v: Option<&RawValue>| v.and_then(|v| infermux::raw::range_in(body, v));
        let passthrough = infermux::raw::RawRequest::new(
            infermux::raw::Dialect::OpenAiChat,
            body.clone(),
            at(self.model),
            at(self.stream_options),
            at(self.provider).into_iter().collect(),
        );
        let mut extra = Map::new();
        if full {
            for (k, v) in &self.extra {
                extra.insert(k.clone(), value_of(v));
            }
        }
        match self.n {
            None | Some(1) => {}
            Some(n) if n < 1 => return Err(Error::invalid(format!("n: {n} is less than 1"))),
            // Several choices: OpenAI-compatible providers give them; others
            // refuse.
            Some(n) => {
                extra.insert("n".to_owned(), Value::from(n));
            }
        }
        let mut messages = Vec::with_capacity(self.messages.len());
        for (i, m) in self.messages.into_iter().enumerate() {
            let role = match m.role.as_str() {
                // OpenAI's newer name for system instructions.
                "developer" => Role::System,
                "tool" => Role::Tool,
                other => Role::parse(other),
            };
            let mut extra = Map::new();
            for (key, value) in [
                ("tool_calls", m.tool_calls),
                ("tool_call_id", m.tool_call_id),
                ("name", m.name),
                ("reasoning_content", m.reasoning_content),
                ("thinking_blocks", m.thinking_blocks),
            ] {
                if let Some(v) = value
                    && full
                {
                    extra.insert(key.to_owned(), value_of(v));
                }
            }
            let content = match m.content {
                None => String::new(),
                Some(Content::Text(t)) => t,
                Some(Content::Parts(parts)) => {
                    let text = parts_text(i, &parts)?;
                    if full && parts.iter().any(|p| p["type"] != "text") {
                        // Images, audio, files: the parts go upstream as sent;
                        // `content` keeps their text for estimates and echo.
                        extra.insert("content".to_owned(), Value::Array(parts));
                    }
                    text
                }
            };
            messages.push(ChatMessage {
                role,
                content,
                extra: (!extra.is_empty()).then(|| Arc::new(extra)),
            });
        }
        let stop = match self.stop {
            None => None,
            Some(Stop::One(s)) => Some(vec![s]),
            Some(Stop::Many(v)) => Some(v),
        };
        let req = InferRequest {
            model,
            provider,
            messages,
            params: Params {
                temperature: self.temperature,
                max_tokens: self.max_tokens.or(self.max_completion_tokens),
                top_p: self.top_p,
                stop,
            },
            meta: Default::default(),
            extra: (!extra.is_empty()).then(|| Arc::new(extra)),
            passthrough: Some(Arc::new(infermux::types::Passthrough {
                raw: passthrough,
                whole: Some(whole_request),
            })),
        };
        Ok((req, self.stream, include_usage))
    }
}

/// The whole core request of an OpenAI body, tool calls and extra fields
/// included, for a provider that translates it.
fn whole_request(body: &Bytes) -> Result<InferRequest, Error> {
    let parsed: ChatCompletionRequest<'_> = json::from_slice(body)?;
    parsed.into_core(body, true).map(|(req, _, _)| req)
}

/// A `chat.completion` object, or a `chat.completion.chunk`, written field by
/// field: every unary answer and every streamed event is one, and serde's
/// general path cost several times as much for these fixed shapes.
/// `choices` is JSON: ours, or an OpenAI-compatible provider's as it sent
/// them.
fn write_completion(
    out: &mut Vec<u8>,
    object: &str,
    id: &str,
    created: u64,
    model: &str,
    choices: &[u8],
    usage: Option<infermux::Usage>,
) {
    let mut digits = [0u8; 20];
    out.reserve(192 + model.len() + choices.len());
    out.extend_from_slice(br#"{"id":""#);
    out.extend_from_slice(id.as_bytes());
    out.extend_from_slice(br#"","object":""#);
    out.extend_from_slice(object.as_bytes());
    out.extend_from_slice(br#"","created":"#);
    out.extend_from_slice(decimal(created, &mut digits));
    out.extend_from_slice(br#","model":"#);
    json::write_str(out, model);
    out.extend_from_slice(br#","choices":"#);
    out.extend_from_slice(choices);
    if let Some(u) = usage {
        out.push(b',');
        write_usage(out, u);
    }
    out.push(b'}');
}

/// `"usage":{...}` of OpenAI's shape, with the details of every token kind
/// that is not zero.
fn write_usage(out: &mut Vec<u8>, u: infermux::Usage) {
    let mut digits = [0u8; 20];
    {
        out.extend_from_slice(br#""usage":{"prompt_tokens":"#);
        out.extend_from_slice(decimal(u.input, &mut digits));
        out.extend_from_slice(br#","completion_tokens":"#);
        out.extend_from_slice(decimal(u.output, &mut digits));
        out.extend_from_slice(br#","total_tokens":"#);
        out.extend_from_slice(decimal(u.input + u.output, &mut digits));
        // OpenAI's details; cache writes as Anthropic names them (OpenAI
        // has no field for them).
        if u.cached_input > 0 {
            out.extend_from_slice(br#","prompt_tokens_details":{"cached_tokens":"#);
            out.extend_from_slice(decimal(u.cached_input, &mut digits));
            out.push(b'}');
        }
        if u.reasoning > 0 {
            out.extend_from_slice(br#","completion_tokens_details":{"reasoning_tokens":"#);
            out.extend_from_slice(decimal(u.reasoning, &mut digits));
            out.push(b'}');
        }
        if u.cache_write > 0 {
            out.extend_from_slice(br#","cache_creation_input_tokens":"#);
            out.extend_from_slice(decimal(u.cache_write, &mut digits));
        }
        out.push(b'}');
    }
}

/// The unary answer's body.
fn chat_completion(
    id: &str,
    created: u64,
    model: &str,
    choices: &[u8],
    usage: infermux::Usage,
) -> Vec<u8> {
    let mut out = Vec::new();
    write_completion(
        &mut out,
        "chat.completion",
        id,
        created,
        model,
        choices,
        Some(usage),
    );
    out
}

#[derive(Serialize)]
struct Choice<'a> {
    index: u32,
    message: Message<'a>,
    finish_reason: &'a str,
    logprobs: Option<()>,
}

#[derive(Serialize)]
struct Message<'a> {
    role: &'static str,
    /// `null` when the model only called tools, as OpenAI answers.
    content: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tool_calls: Option<&'a Value>,
    /// The model's reasoning (Anthropic thinking), as OpenAI-compatible
    /// servers name it.
    #[serde(skip_serializing_if = "Option::is_none")]
    reasoning_content: Option<&'a str>,
    /// Anthropic's thinking blocks with their signatures, which a caller
    /// sends back on the next turn of a tool-using conversation.
    #[serde(skip_serializing_if = "Option::is_none")]
    thinking_blocks: Option<&'a Value>,
}

#[derive(Serialize)]
struct ChunkChoice<'a> {
    index: u32,
    delta: Delta<'a>,
    finish_reason: Option<&'a str>,
    logprobs: Option<()>,
}

#[derive(Serialize, Default)]
struct Delta<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    role: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    content: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tool_calls: Option<&'a Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    reasoning_content: Option<&'a str>,
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// `chatcmpl-` and 32 random hex digits, on the stack.
struct CompletionId([u8; 41]);

impl CompletionId {
    fn new() -> Self {
        let mut id = [0u8; 41];
        id[..9].copy_from_slice(b"chatcmpl-");
        id[9..].copy_from_slice(&Id128::random().hex());
        CompletionId(id)
    }

    fn as_str(&self) -> &str {
        std::str::from_utf8(&self.0).unwrap_or_default()
    }
}

fn completion_id() -> String {
    CompletionId::new().as_str().to_owned()
}

/// `POST /v1/chat/completions`.
pub async fn chat_completions(
    State(state): State<Arc<AppState>>,
    Caller(ctx): Caller,
    JsonBytes(body): JsonBytes,
) -> Result<Answer, ApiError> {
    completions(&state, ctx?, body).await
}

/// `POST /v1/chat/completions` once its body is read (the connection front
/// calls this directly).
pub(crate) async fn completions(
    state: &Arc<AppState>,
    ctx: RequestContext,
    body: Bytes,
) -> Result<Answer, ApiError> {
    let parsed: ChatCompletionRequest<'_> = json::from_slice(&body)?;
    let caller = match &ctx.caller {
        None if state.router.callers().is_some() => parsed.user(),
        _ => None,
    };
    let (req, stream, include_usage) = parsed.into_core(&body, false)?;
    let ctx = RequestContext {
        dialect: "openai",
        caller: caller.or(ctx.caller),
        ..ctx
    };
    if stream {
        return stream_completion(state, req, ctx, include_usage)
            .await
            .map(Answer::Response);
    }
    let routed = state.router.call(&req, &ctx).await?;
    let r = &routed.response;
    // Same dialect: the upstream's answer as it sent it, but for `model`.
    if let Some(raw) = &r.raw {
        let mut bytes = Vec::with_capacity(raw.body().len() + r.model.len());
        if r.usage_estimated {
            // The upstream sent no usage: the estimate is added (and flagged
            // by a header).
            let mut usage = Vec::with_capacity(96);
            write_usage(&mut usage, r.usage());
            raw.write_with_member(&mut bytes, &r.model, &usage);
        } else {
            raw.write_with_model(&mut bytes, &r.model);
        }
        return Ok(json_response(bytes, routed));
    }
    let choices = [Choice {
        index: 0,
        message: Message {
            role: "assistant",
            content: (!r.content.is_empty() || r.tool_calls.is_none())
                .then_some(r.content.as_str()),
            tool_calls: r.tool_calls.as_deref(),
            reasoning_content: r.reasoning.as_deref(),
            thinking_blocks: r.thinking_blocks.as_deref(),
        },
        finish_reason: &r.finish_reason,
        logprobs: None,
    }];
    let choices = json::to_vec(&choices)
        .map_err(|e| Error::internal(format!("cannot encode the response: {e}")))?;
    let ours;
    let id = match &r.upstream_id {
        Some(id) => id.as_str(),
        None => {
            ours = CompletionId::new();
            ours.as_str()
        }
    };
    let bytes = chat_completion(id, unix_now(), &r.model, &choices, r.usage());
    Ok(json_response(bytes, routed))
}

fn sse_event<T: Serialize>(value: &T) -> Bytes {
    let mut out = Vec::with_capacity(256);
    out.extend_from_slice(b"data: ");
    // Serializing our own types cannot fail; an empty object keeps the stream valid.
    if serde_json::to_writer(&mut out, value).is_err() {
        out.extend_from_slice(b"{}");
    }
    out.extend_from_slice(b"\n\n");
    Bytes::from(out)
}

/// Where a streamed completion is.
enum Phase {
    First,
    Chunks,
    Usage,
    Done,
    End,
}

struct StreamState {
    routed: infermux::router::RoutedStream,
    id: String,
    created: u64,
    model: String,
    include_usage: bool,
    usage: infermux::Usage,
    /// The upstream's own usage event went to the caller.
    usage_sent: bool,
    phase: Phase,
    /// The first item (chunk, failure or end), read before the first event
    /// is chosen.
    pending: Option<Option<Result<infermux::InferChunk, Error>>>,
}

impl StreamState {
    fn chunk(&self, delta: Delta<'_>, finish_reason: Option<&str>) -> Bytes {
        let choices = [ChunkChoice {
            index: 0,
            delta,
            finish_reason,
            logprobs: None,
        }];
        // Serializing our own types cannot fail; no choices keep the event valid.
        let choices = json::to_vec(&choices).unwrap_or_else(|_| b"[]".to_vec());
        self.event(&choices, None)
    }

    /// An upstream event as it came, but for `model`.
    fn raw_event(&self, raw: &infermux::raw::RawAnswer) -> Bytes {
        let mut out = Vec::with_capacity(raw.body().len() + self.model.len() + 8);
        out.extend_from_slice(b"data: ");
        raw.write_with_model(&mut out, &self.model);
        out.extend_from_slice(b"\n\n");
        Bytes::from(out)
    }

    /// `data: ` and a `chat.completion.chunk` of this stream.
    fn event(&self, choices: &[u8], usage: Option<infermux::Usage>) -> Bytes {
        let mut out = Vec::with_capacity(256 + choices.len());
        out.extend_from_slice(b"data: ");
        let object = "chat.completion.chunk";
        write_completion(
            &mut out,
            object,
            &self.id,
            self.created,
            &self.model,
            choices,
            usage,
        );
        out.extend_from_slice(b"\n\n");
        Bytes::from(out)
    }

    /// The next SSE event, or `None` at the end. Each provider chunk is
    /// forwarded as soon as it arrives.
    async fn next_event(&mut self) -> Option<Bytes> {
        loop {
            match self.phase {
                Phase::First => {
                    self.phase = Phase::Chunks;
                    // A stream passed through sends its own first chunk (the
                    // role) too.
                    let first = self.routed.next().await;
                    let theirs = matches!(&first, Some(Ok(c)) if c.raw.is_some());
                    self.pending = Some(first);
                    if theirs {
                        continue;
                    }
                    return Some(self.chunk(
                        Delta {
                            role: Some("assistant"),
                            content: Some(""),
                            ..Default::default()
                        },
                        None,
                    ));
                }
                Phase::Chunks => match match self.pending.take() {
                    Some(first) => first,
                    None => self.routed.next().await,
                } {
                    Some(Ok(c)) => {
                        self.usage += c.usage();
                        if let Some(raw) = &c.raw {
                            if raw.only_usage {
                                if !self.include_usage {
                                    continue;
                                }
                                self.usage_sent = true;
                            }
                            return Some(self.raw_event(raw));
                        }
                        let finish =
                            (!c.finish_reason.is_empty()).then_some(c.finish_reason.as_str());
                        if c.delta.is_empty()
                            && finish.is_none()
                            && c.tool_calls.is_none()
                            && c.reasoning.is_none()
                        {
                            continue;
                        }
                        let content = (!c.delta.is_empty()).then_some(c.delta.as_str());
                        return Some(self.chunk(
                            Delta {
                                role: None,
                                content,
                                tool_calls: c.tool_calls.as_ref(),
                                reasoning_content: c.reasoning.as_deref(),
                            },
                            finish,
                        ));
                    }
                    Some(Err(e)) => {
                        // An error event, then the end — without [DONE], so
                        // clients know the reply is incomplete.
                        self.phase = Phase::End;
                        let d = e.disposition();
                        tracing::warn!(code = d.code, error = %e, "stream failed after it started");
                        return Some(sse_event(&serde_json::json!({
                            "error": {"message": e.message(), "type": "infermux_error", "code": d.code}
                        })));
                    }
                    None => {
                        self.phase = if self.include_usage && !self.usage_sent {
                            Phase::Usage
                        } else {
                            Phase::Done
                        };
                    }
                },
                Phase::Usage => {
                    self.phase = Phase::Done;
                    return Some(self.event(b"[]", Some(self.usage)));
                }
                Phase::Done => {
                    self.phase = Phase::End;
                    return Some(Bytes::from_static(b"data: [DONE]\n\n"));
                }
                Phase::End => return None,
            }
        }
    }
}

async fn stream_completion(
    state: &AppState,
    req: InferRequest,
    ctx: RequestContext,
    include_usage: bool,
) -> Result<Response, ApiError> {
    // Failures before the first byte (validation, unknown model, the provider
    // refusing the call) are ordinary JSON errors with their status.
    let routed = state.router.call_stream(&req, &ctx).await?;
    let headers = crate::routes::stream_headers(&routed);
    let state = StreamState {
        id: completion_id(),
        created: unix_now(),
        model: routed.model.clone(),
        routed,
        include_usage,
        usage: infermux::Usage::default(),
        usage_sent: false,
        phase: Phase::First,
        pending: None,
    };
    // Dropping the body (the client went away) drops the routed stream, which
    // cancels the upstream request.
    let body = futures_util::stream::unfold(state, |mut s| async move {
        let event = s.next_event().await?;
        Some((Ok::<_, Infallible>(event), s))
    });
    Ok((StatusCode::OK, headers, Body::from_stream(body)).into_response())
}

#[derive(Serialize)]
struct ModelList {
    object: &'static str,
    data: Vec<ModelEntry>,
}

#[derive(Serialize)]
struct ModelEntry {
    id: String,
    object: &'static str,
    created: u64,
    owned_by: String,
}

/// Every routable model and alias, each once, the first provider serving it
/// as its owner.
fn model_entries(state: &AppState) -> Vec<ModelEntry> {
    let mut seen = std::collections::HashSet::new();
    let mut data = Vec::new();
    for e in state.router.registry().entries() {
        for id in e.routable_models() {
            if seen.insert(id.clone()) {
                data.push(ModelEntry {
                    id,
                    object: "model",
                    created: 0,
                    owned_by: e.name.to_string(),
                });
            }
        }
    }
    data
}

/// `GET /v1/models`: every routable model and alias, first provider wins.
pub async fn models(State(state): State<Arc<AppState>>) -> Response {
    axum::Json(ModelList {
        object: "list",
        data: model_entries(&state),
    })
    .into_response()
}

/// `GET /v1/models/{model}`: one model, as OpenAI's `models.retrieve` reads it;
/// a 404 `model_not_found` when nothing routes it.
pub async fn model(
    State(state): State<Arc<AppState>>,
    axum::extract::Path(id): axum::extract::Path<String>,
) -> Result<Response, ApiError> {
    model_entries(&state)
        .into_iter()
        .find(|m| m.id == id)
        .map(|m| axum::Json(m).into_response())
        .ok_or_else(|| Error::model_not_found(&id).into())
}

/// An embeddings request, as OpenAI defines it.
#[derive(Debug, Deserialize)]
struct EmbeddingsRequest {
    #[serde(default)]
    model: String,
    input: EmbeddingInput,
    #[serde(default)]
    encoding_format: Option<String>,
    #[serde(default)]
    provider: String,
    #[serde(flatten)]
    extra: Map<String, Value>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum EmbeddingInput {
    One(String),
    Many(Vec<String>),
    /// Token arrays: accepted by OpenAI, not by infermux.
    Tokens(#[expect(dead_code, reason = "matched only to be refused")] Vec<serde::de::IgnoredAny>),
}

#[derive(Serialize)]
struct EmbeddingList<'a> {
    object: &'static str,
    data: Vec<EmbeddingEntry>,
    model: &'a str,
    usage: EmbeddingUsage,
}

#[derive(Serialize)]
struct EmbeddingEntry {
    object: &'static str,
    index: usize,
    embedding: Value,
}

#[derive(Serialize)]
struct EmbeddingUsage {
    prompt_tokens: u64,
    total_tokens: u64,
}

/// `POST /v1/embeddings`: routed to embedding-capable providers. Answers floats,
/// or little-endian f32 in base64 when `encoding_format` is `base64` (the
/// official SDKs ask for that by default).
pub async fn embeddings(
    State(state): State<Arc<AppState>>,
    Caller(ctx): Caller,
    JsonBytes(body): JsonBytes,
) -> Result<Response, ApiError> {
    use base64::Engine;

    let ctx = RequestContext {
        dialect: "openai",
        ..ctx?
    };
    let parsed: EmbeddingsRequest = json::from_slice(&body)?;
    let input = match parsed.input {
        EmbeddingInput::One(s) => vec![s],
        EmbeddingInput::Many(v) => v,
        EmbeddingInput::Tokens(_) => {
            return Err(Error::invalid("input: token arrays are not supported (send text)").into());
        }
    };
    let base64 = match parsed.encoding_format.as_deref() {
        None | Some("float") => false,
        Some("base64") => true,
        Some(other) => {
            return Err(Error::invalid(format!(
                "encoding_format: \"{}\" is not float or base64",
                infermux::validate::truncate(other, 32)
            ))
            .into());
        }
    };
    let req = infermux::EmbedRequest {
        model: parsed.model,
        provider: parsed.provider,
        input,
        extra: (!parsed.extra.is_empty()).then(|| Arc::new(parsed.extra)),
    };
    let (resp, upstream_model) = state.router.embed(&req, &ctx).await?;
    let data = resp
        .embeddings
        .iter()
        .enumerate()
        .map(|(index, v)| EmbeddingEntry {
            object: "embedding",
            index,
            embedding: if base64 {
                let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
                Value::String(base64::engine::general_purpose::STANDARD.encode(bytes))
            } else {
                Value::from(v.clone())
            },
        })
        .collect();
    let list = EmbeddingList {
        object: "list",
        data,
        model: &resp.model,
        usage: EmbeddingUsage {
            prompt_tokens: resp.tokens_in,
            total_tokens: resp.tokens_in,
        },
    };
    let bytes = serde_json::to_vec(&list)
        .map_err(|e| Error::internal(format!("cannot encode the response: {e}")))?;
    let mut headers = HeaderMap::new();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    crate::routes::route_headers(&mut headers, &resp.provider, &upstream_model);
    if let Ok(v) = HeaderValue::from_str(&resp.cost_usd.to_string()) {
        headers.insert("x-infermux-cost", v);
    }
    headers.insert(
        "x-infermux-prompt-tokens",
        HeaderValue::from(resp.tokens_in),
    );
    headers.insert("x-infermux-latency-ms", HeaderValue::from(resp.latency_ms));
    crate::routes::budget_header(&mut headers, ctx.budget_remaining());
    Ok((StatusCode::OK, headers, bytes).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode(body: &str) -> Result<ChatCompletionRequest<'_>, Error> {
        json::from_slice(body.as_bytes())
    }

    #[test]
    fn named_fields_decode_in_place_and_the_rest_go_to_extra() {
        let r = decode(
            r#"{"seed":7,"model":"m","messages":[{"role":"user","content":"hi"}],"stream":true,
               "tools":[{"type":"function"}],"n":2,"provider":"p","stop":"x","top_p":0.5}"#,
        )
        .unwrap();
        let text = |v: Option<&RawValue>| v.map(|v| v.get().to_owned());
        assert_eq!(
            (text(r.model), text(r.provider)),
            (Some(r#""m""#.to_owned()), Some(r#""p""#.to_owned()))
        );
        assert_eq!(r.messages.len(), 1);
        assert!(r.stream);
        assert_eq!((r.n, r.top_p), (Some(2), Some(0.5)));
        assert!(matches!(r.stop, Some(Stop::One(ref s)) if s == "x"));
        assert_eq!(r.extra.len(), 2, "{:?}", r.extra);
        let extra: Map<String, Value> = r
            .extra
            .iter()
            .map(|(k, v)| (k.clone(), value_of(v)))
            .collect();
        assert_eq!(extra["seed"], 7);
        assert_eq!(extra["tools"][0]["type"], "function");
    }

    #[test]
    fn completions_are_written_as_openai_shapes_them() {
        let body = chat_completion(
            "chatcmpl-1",
            1_700_000_000,
            "gpt-\"4o\"\n\u{e9}",
            br#"[{"index":0,"message":{"role":"assistant","content":"hi"},"finish_reason":"stop"}]"#,
            infermux::Usage::new(12, 30),
        );
        let v: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(
            v,
            serde_json::json!({
                "id": "chatcmpl-1",
                "object": "chat.completion",
                "created": 1_700_000_000,
                "model": "gpt-\"4o\"\n\u{e9}",
                "choices": [{"index": 0, "message": {"role": "assistant", "content": "hi"}, "finish_reason": "stop"}],
                "usage": {"prompt_tokens": 12, "completion_tokens": 30, "total_tokens": 42},
            })
        );
        assert!(
            body.starts_with(br#"{"id":"chatcmpl-1","object":"chat.completion","created":1700000000,"model":"gpt-\"4o\"\n"#),
            "{}",
            String::from_utf8_lossy(&body)
        );
    }

    #[test]
    fn chunks_are_written_as_openai_shapes_them() {
        let mut out = Vec::new();
        let choices = br#"[{"index":0,"delta":{"content":"Hi"},"finish_reason":null}]"#;
        let object = "chat.completion.chunk";
        write_completion(&mut out, object, "chatcmpl-2", 7, "m", choices, None);
        let v: Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"id": "chatcmpl-2", "object": "chat.completion.chunk", "created": 7,
                "model": "m", "choices": [{"index": 0, "delta": {"content": "Hi"}, "finish_reason": null}]})
        );
        out.clear();
        write_completion(
            &mut out,
            object,
            "chatcmpl-2",
            7,
            "m",
            b"[]",
            Some(infermux::Usage::new(3, 4)),
        );
        let v: Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["choices"], serde_json::json!([]));
        assert_eq!(
            v["usage"],
            serde_json::json!({"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7})
        );
    }

    #[test]
    fn request_objects_are_checked_as_derive_would() {
        for (body, want) in [
            (r#"{"model":"m"}"#, "body: missing field `messages`"),
            (
                r#"{"messages":[],"model":"a","model":"b"}"#,
                "body: duplicate field `model`",
            ),
            (r#"[1]"#, "body: invalid type: sequence"),
            (
                r#"{"messages":[],"stream":null}"#,
                "stream: invalid type: null",
            ),
            (
                r#"{"messages":[{"role":"user","content":"x"}],"x":}"#,
                "invalid JSON",
            ),
        ] {
            let message = decode(body).unwrap_err().to_string();
            assert!(
                message.starts_with(want),
                "{body}: want {want:?}, got {message:?}"
            );
        }
    }
}
