//! The Anthropic Messages API adapter (`POST {base_url}/v1/messages`).
//!
//! Translation: system messages are lifted (joined by a blank line) into the
//! top-level `system`; `stop` becomes `stop_sequences`; `max_tokens`, which
//! Anthropic requires, defaults to [`DEFAULT_MAX_TOKENS`]; OpenAI tool calling
//! (`tools`, `tool_choice`, `tool_calls`, `tool` messages) becomes Anthropic's
//! tools and `tool_use` / `tool_result` blocks, `image_url` parts image blocks;
//! other fields Anthropic cannot
//! take (OpenAI extras) are dropped. Back: text blocks are joined, `tool_use`
//! blocks become `tool_calls`, `stop_reason` maps to OpenAI's `finish_reason`,
//! usage is read; stream events (text and `input_json_delta`) become chunks.

use async_trait::async_trait;
use infermux::config::ProviderConfig;
use infermux::{
    CallContext, ChunkStream, InferChunk, InferRequest, InferResponse, Provider, ProviderError,
    Role, TokenCount,
};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use serde_json::{Value, json};

use crate::http::whole;
use crate::{http, tokens};

/// The `anthropic-version` header sent with every call.
pub const API_VERSION: &str = "2023-06-01";

/// `max_tokens` when the caller gives none (Anthropic requires one).
pub const DEFAULT_MAX_TOKENS: i64 = 4096;

/// An Anthropic provider.
pub struct AnthropicProvider {
    name: String,
    models: Vec<String>,
    url: ::http::Uri,
    count_url: ::http::Uri,
    models_url: ::http::Uri,
    api_key: ::http::HeaderValue,
    upstream: http::Upstream,
}

impl std::fmt::Debug for AnthropicProvider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AnthropicProvider")
            .field("name", &self.name)
            .field("upstream", &self.upstream)
            .finish_non_exhaustive()
    }
}

impl AnthropicProvider {
    pub fn from_config(c: &ProviderConfig) -> Result<Self, ProviderError> {
        let base = c
            .base_url
            .clone()
            .unwrap_or_else(|| "https://api.anthropic.com".to_owned());
        let upstream = http::Upstream::new(&c.name, &base, c.timeout)?;
        let key = c.api_key.as_ref().map(|k| k.expose()).unwrap_or_default();
        // Upstream error text that quotes it is redacted.
        infermux::redact::register(key);
        let mut api_key = ::http::HeaderValue::from_str(key).map_err(|_| {
            ProviderError::InvalidRequest(format!(
                "provider \"{}\": the API key is not a valid header value",
                c.name
            ))
        })?;
        api_key.set_sensitive(true);
        Ok(AnthropicProvider {
            name: c.name.clone(),
            models: c.models.clone(),
            url: upstream.endpoint("v1/messages")?,
            count_url: upstream.endpoint("v1/messages/count_tokens")?,
            models_url: upstream.endpoint("v1/models")?,
            api_key,
            upstream,
        })
    }

    /// A request to `uri` with the key and the API version.
    fn request(&self, method: ::http::Method, uri: ::http::Uri) -> ::http::Request<()> {
        use ::http::{HeaderName, HeaderValue};
        http::head(
            method,
            uri,
            [
                (HeaderName::from_static("x-api-key"), self.api_key.clone()),
                (
                    HeaderName::from_static("anthropic-version"),
                    HeaderValue::from_static(API_VERSION),
                ),
            ],
        )
    }

    fn post(
        &self,
        ctx: &CallContext<'_>,
        body: &MessagesRequest<'_>,
    ) -> Result<http::Request, ProviderError> {
        let req = self.request(::http::Method::POST, self.url.clone());
        http::json(http::with_traceparent(req, ctx), body)
    }

    /// A POST of the caller's own Messages body (SPEC §11) to `uri`, with
    /// the caller's `anthropic-version` and `anthropic-beta` when it sent
    /// them.
    fn post_raw(
        &self,
        ctx: &CallContext<'_>,
        uri: ::http::Uri,
        raw: &infermux::raw::RawRequest,
        body: Vec<u8>,
    ) -> http::Request {
        use ::http::{HeaderName, HeaderValue};
        let mut req = self.request(::http::Method::POST, uri);
        for (name, value) in raw.headers() {
            if let Ok(v) = HeaderValue::from_str(value) {
                req.headers_mut().insert(HeaderName::from_static(name), v);
            }
        }
        http::json_bytes(http::with_traceparent(req, ctx), body)
    }

    /// The POST for a Messages call: the caller's bytes when it speaks this
    /// API, else `req` (whole: see [`whole`]) translated; and whether it
    /// went as sent.
    fn messages_post(
        &self,
        ctx: &CallContext<'_>,
        req: &InferRequest,
        stream: bool,
    ) -> Result<(http::Request, bool), ProviderError> {
        if let Some(raw) = passthrough(req) {
            let body = raw.body_for(ctx.model, stream);
            return Ok((self.post_raw(ctx, self.url.clone(), raw, body), true));
        }
        let body = messages_request(ctx.model, req, stream)?;
        Ok((self.post(ctx, &body)?, false))
    }
}

/// The caller's body, when it is an Anthropic Messages request.
fn passthrough(req: &InferRequest) -> Option<&infermux::raw::RawRequest> {
    req.passthrough
        .as_deref()
        .map(|p| &p.raw)
        .filter(|r| r.dialect == infermux::raw::Dialect::AnthropicMessages)
}

#[derive(Serialize)]
struct MessagesRequest<'a> {
    model: &'a str,
    max_tokens: i64,
    messages: Vec<WireMessage<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    system: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    temperature: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    top_p: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    stop_sequences: Option<&'a [String]>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    stream: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    tools: Option<Vec<Value>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tool_choice: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    thinking: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    metadata: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    top_k: Option<Value>,
}

/// The tool that carries a structured answer when the caller asked for one
/// with `response_format`: the model is made to call it, and its input is
/// the answer.
pub const JSON_TOOL: &str = "json_response";

/// `reasoning_effort` as a thinking budget, in tokens.
fn thinking_budget(effort: &str) -> Option<Option<i64>> {
    match effort {
        "none" => Some(None),
        "minimal" | "low" => Some(Some(1024)),
        "medium" => Some(Some(4096)),
        "high" => Some(Some(16384)),
        _ => None,
    }
}

/// What an OpenAI request field becomes on the way to an Anthropic provider,
/// for the fields [`messages_request`] does not map itself.
enum Fate {
    /// It cannot change the answer (or has its default value): left out.
    /// docs/CONFIG.md lists these.
    Dropped,
    /// Dropping it would change the answer: a 400 naming it, saying why.
    Refused(&'static str),
}

/// The OpenAI fields with no Anthropic counterpart, by whether dropping them
/// could change the answer. `value` decides for fields whose default is
/// harmless.
fn fate(field: &str, value: &Value) -> Fate {
    let default = match value {
        Value::Null => true,
        Value::Bool(b) => !b,
        Value::Number(n) => n.as_f64() == Some(0.0),
        Value::Object(m) => m.is_empty(),
        Value::Array(a) => a.is_empty() || a == &[Value::from("text")],
        Value::String(_) => false,
    };
    match field {
        // Bookkeeping, caching and latency hints: the answer is the same.
        "store" | "metadata" | "service_tier" | "seed" | "prediction" | "prompt_cache_key"
        | "stream_options" | "safety_identifier" => Fate::Dropped,
        "logprobs" | "frequency_penalty" | "presence_penalty" | "logit_bias" | "modalities"
            if default =>
        {
            Fate::Dropped
        }
        "logprobs" | "top_logprobs" => {
            Fate::Refused("anthropic providers give no log probabilities")
        }
        "frequency_penalty" | "presence_penalty" | "logit_bias" => {
            Fate::Refused("anthropic providers have no token penalties or biases")
        }
        "modalities" | "audio" => Fate::Refused("anthropic providers answer in text only"),
        "functions" | "function_call" => Fate::Refused("use tools and tool_choice"),
        _ => Fate::Refused("not supported by anthropic providers"),
    }
}

#[derive(Serialize)]
struct WireMessage<'a> {
    role: &'static str,
    content: WireContent<'a>,
}

#[derive(Serialize)]
#[serde(untagged)]
enum WireContent<'a> {
    Text(&'a str),
    /// Content blocks: text, image, `tool_use` (the assistant's calls),
    /// `tool_result`.
    Blocks(Vec<Value>),
}

/// The Messages API request. OpenAI tool calling is translated: `tools` and
/// `tool_choice` to Anthropic's shapes, an assistant message's `tool_calls` to
/// `tool_use` blocks, `tool` messages to `tool_result` blocks of a user turn
/// (consecutive results share one). Images become image blocks; other content
/// parts are refused (a 400 naming the part): dropping them would change the
/// conversation.
fn messages_request<'a>(
    model: &'a str,
    req: &'a InferRequest,
    stream: bool,
) -> Result<MessagesRequest<'a>, ProviderError> {
    let mut system: Vec<&str> = Vec::new();
    let mut messages: Vec<WireMessage<'a>> = Vec::with_capacity(req.messages.len());
    for (i, m) in req.messages.iter().enumerate() {
        if let Some(parts) = m.parts() {
            // Images: a user turn of content blocks.
            if !matches!(m.role, Role::User) {
                return Err(invalid(
                    &format!("messages[{i}].content"),
                    "anthropic providers take images in user messages only",
                ));
            }
            messages.push(WireMessage {
                role: "user",
                content: WireContent::Blocks(content_blocks(i, parts)?),
            });
            continue;
        }
        let calls = m.extra.as_ref().and_then(|e| e.get("tool_calls"));
        let thinking = m.extra.as_ref().and_then(|e| e.get("thinking_blocks"));
        match (&m.role, calls) {
            (Role::System, _) => system.push(&m.content),
            (Role::Assistant, calls) if calls.is_some() || thinking.is_some() => {
                // Signed thinking blocks go back first, as Anthropic wants
                // them on a tool-using turn.
                let mut blocks = match thinking {
                    Some(Value::Array(b)) => b.clone(),
                    Some(_) => {
                        return Err(invalid(
                            &format!("messages[{i}].thinking_blocks"),
                            "must be an array",
                        ));
                    }
                    None => Vec::new(),
                };
                if !m.content.is_empty() {
                    blocks.push(json!({"type": "text", "text": m.content}));
                }
                if let Some(calls) = calls {
                    blocks.extend(tool_use_blocks(i, calls)?);
                }
                messages.push(WireMessage {
                    role: "assistant",
                    content: WireContent::Blocks(blocks),
                });
            }
            (Role::Assistant, _) => messages.push(WireMessage {
                role: "assistant",
                content: WireContent::Text(&m.content),
            }),
            (Role::Tool, _) => {
                let id = m
                    .extra
                    .as_ref()
                    .and_then(|e| e.get("tool_call_id"))
                    .and_then(Value::as_str)
                    .ok_or_else(|| {
                        ProviderError::InvalidRequest(format!(
                            "messages[{i}].tool_call_id: a tool message needs the id of the call it answers"
                        ))
                    })?;
                let result =
                    json!({"type": "tool_result", "tool_use_id": id, "content": m.content});
                match messages.last_mut() {
                    Some(WireMessage {
                        role: "user",
                        content: WireContent::Blocks(blocks),
                    }) if blocks.iter().all(|b| b["type"] == "tool_result") => blocks.push(result),
                    _ => messages.push(WireMessage {
                        role: "user",
                        content: WireContent::Blocks(vec![result]),
                    }),
                }
            }
            // Validation rejects other roles before a provider is called.
            (Role::User | Role::Other(_), _) => messages.push(WireMessage {
                role: "user",
                content: WireContent::Text(&m.content),
            }),
        }
    }
    let mut tools = None;
    let mut tool_choice = None;
    let mut parallel = true;
    let mut response_format = None;
    let mut thinking = None;
    let mut user = None;
    let mut top_k = None;
    for (field, value) in req.extra.iter().flat_map(|e| e.iter()) {
        match field.as_str() {
            "n" if value != 1 => {
                return Err(invalid(
                    "n",
                    &format!("{value}: anthropic providers give one choice"),
                ));
            }
            "n" => {}
            "tools" if !value.is_null() => tools = Some(anthropic_tools(value)?),
            "tool_choice" if !value.is_null() => {
                tool_choice = Some(anthropic_tool_choice(value)?);
            }
            "parallel_tool_calls" => match value {
                Value::Bool(b) => parallel = *b,
                Value::Null => {}
                _ => return Err(invalid("parallel_tool_calls", "must be a boolean")),
            },
            "response_format" => response_format = Some(value),
            "reasoning_effort" => {
                let effort = value.as_str().unwrap_or_default();
                let budget = thinking_budget(effort).ok_or_else(|| {
                    invalid(
                        "reasoning_effort",
                        "expected none, minimal, low, medium or high",
                    )
                })?;
                thinking = budget.map(|b| json!({"type": "enabled", "budget_tokens": b}));
            }
            // Anthropic's own, as litellm and others send it.
            "thinking" => thinking = Some(value.clone()),
            "top_k" => top_k = Some(value.clone()),
            "user" => match value {
                Value::String(u) => user = Some(u.clone()),
                Value::Null => {}
                _ => return Err(invalid("user", "must be a string")),
            },
            "tools" | "tool_choice" => {}
            other => {
                if let Fate::Refused(why) = fate(other, value) {
                    return Err(invalid(other, why));
                }
            }
        }
    }
    if let Some(format) = response_format {
        match structured_output(format)? {
            None => {}
            Some(tool) => {
                if tool_choice.as_ref().is_some_and(|c| c["type"] != "auto") {
                    return Err(invalid(
                        "response_format",
                        "anthropic providers give a structured answer by forcing a tool; tool_choice must be auto",
                    ));
                }
                tools.get_or_insert_with(Vec::new).push(tool);
                tool_choice = Some(json!({"type": "tool", "name": JSON_TOOL}));
            }
        }
    }
    if !parallel {
        let choice = tool_choice.get_or_insert_with(|| json!({"type": "auto"}));
        choice["disable_parallel_tool_use"] = json!(true);
    }
    let budget = thinking
        .as_ref()
        .and_then(|t| t["budget_tokens"].as_i64())
        .unwrap_or(0);
    let max_tokens = match req.params.max_tokens {
        Some(n) if budget > 0 && n <= budget => {
            return Err(invalid(
                "max_tokens",
                &format!("{n} leaves no room after a thinking budget of {budget} tokens"),
            ));
        }
        Some(n) => n,
        None => DEFAULT_MAX_TOKENS.max(budget + DEFAULT_MAX_TOKENS),
    };
    Ok(MessagesRequest {
        model,
        max_tokens,
        messages,
        system: (!system.is_empty()).then(|| system.join("\n\n")),
        // Anthropic's range is [0, 1]; OpenAI's is [0, 2].
        temperature: req.params.temperature.map(|t| t.min(1.0)),
        top_p: req.params.top_p,
        stop_sequences: req.params.stop.as_deref(),
        stream,
        tools,
        tool_choice,
        thinking,
        metadata: user.map(|u| json!({"user_id": u})),
        top_k,
    })
}

/// OpenAI's `response_format` as the tool that carries the answer: `None`
/// for plain text.
fn structured_output(format: &Value) -> Result<Option<Value>, ProviderError> {
    match format["type"].as_str() {
        None if format.is_null() => Ok(None),
        Some("text") => Ok(None),
        Some("json_object") => Ok(Some(json!({
            "name": JSON_TOOL,
            "description": "Answer with a JSON object.",
            "input_schema": {"type": "object", "additionalProperties": true},
        }))),
        Some("json_schema") => {
            let spec = &format["json_schema"];
            let schema = match &spec["schema"] {
                Value::Object(_) => spec["schema"].clone(),
                _ => {
                    return Err(invalid(
                        "response_format.json_schema.schema",
                        "must be a JSON schema object",
                    ));
                }
            };
            let mut description = String::from("Answer with JSON that matches the schema");
            if let Some(name) = spec["name"].as_str() {
                description.push_str(&format!(" \"{name}\""));
            }
            if let Some(d) = spec["description"].as_str() {
                description.push_str(": ");
                description.push_str(d);
            }
            Ok(Some(
                json!({"name": JSON_TOOL, "description": description, "input_schema": schema}),
            ))
        }
        _ => Err(invalid(
            "response_format.type",
            "expected text, json_object or json_schema",
        )),
    }
}

/// OpenAI content parts as Anthropic content blocks: text stays text;
/// `image_url` becomes an image from base64 data (a `data:` URL) or from a URL.
/// Other parts (audio, files) have no equivalent here and are refused.
fn content_blocks(i: usize, parts: &Value) -> Result<Vec<Value>, ProviderError> {
    let parts = parts.as_array().map(Vec::as_slice).unwrap_or_default();
    parts
        .iter()
        .enumerate()
        .map(|(j, p)| {
            let at = |f: &str| format!("messages[{i}].content[{j}]{f}");
            match p["type"].as_str() {
                Some("text") => Ok(json!({"type": "text", "text": p["text"]})),
                Some("image_url") => {
                    let url = p["image_url"]["url"]
                        .as_str()
                        .ok_or_else(|| invalid(&at(".image_url.url"), "must be a string"))?;
                    let source = match url.strip_prefix("data:") {
                        Some(data) => {
                            let (media_type, base64) = data
                                .split_once(";base64,")
                                .ok_or_else(|| {
                                    invalid(
                                        &at(".image_url.url"),
                                        "a data URL must be data:<media type>;base64,<data>",
                                    )
                                })?;
                            json!({"type": "base64", "media_type": media_type, "data": base64})
                        }
                        None => json!({"type": "url", "url": url}),
                    };
                    Ok(json!({"type": "image", "source": source}))
                }
                other => Err(invalid(
                    &at(".type"),
                    &format!(
                        "{} parts are not supported by anthropic providers (text and image_url are)",
                        other.unwrap_or("untyped")
                    ),
                )),
            }
        })
        .collect()
}

fn invalid(field: &str, what: &str) -> ProviderError {
    ProviderError::InvalidRequest(format!("{field}: {what}"))
}

/// An assistant message's OpenAI `tool_calls` as `tool_use` blocks; the
/// arguments (a JSON string) become the block's `input` object.
fn tool_use_blocks(i: usize, calls: &Value) -> Result<Vec<Value>, ProviderError> {
    let field = format!("messages[{i}].tool_calls");
    let calls = calls
        .as_array()
        .ok_or_else(|| invalid(&field, "must be an array"))?;
    calls
        .iter()
        .enumerate()
        .map(|(j, call)| {
            let at = |f: &str| format!("{field}[{j}].{f}");
            let id = call["id"]
                .as_str()
                .ok_or_else(|| invalid(&at("id"), "must be a string"))?;
            let name = call["function"]["name"]
                .as_str()
                .ok_or_else(|| invalid(&at("function.name"), "must be a string"))?;
            let input = match &call["function"]["arguments"] {
                Value::String(a) if a.trim().is_empty() => json!({}),
                Value::String(a) => serde_json::from_str::<Value>(a)
                    .map_err(|e| invalid(&at("function.arguments"), &format!("not JSON: {e}")))?,
                Value::Null => json!({}),
                other => other.clone(),
            };
            Ok(json!({"type": "tool_use", "id": id, "name": name, "input": input}))
        })
        .collect()
}

/// OpenAI `tools` (`{"type":"function","function":{name, description,
/// parameters}}`) as Anthropic tools (`{name, description, input_schema}`).
fn anthropic_tools(tools: &Value) -> Result<Vec<Value>, ProviderError> {
    let tools = tools
        .as_array()
        .ok_or_else(|| invalid("tools", "must be an array"))?;
    tools
        .iter()
        .enumerate()
        .map(|(j, t)| {
            let f = &t["function"];
            let name = f["name"]
                .as_str()
                .ok_or_else(|| invalid(&format!("tools[{j}].function.name"), "must be a string"))?;
            let mut tool = json!({"name": name});
            if let Some(d) = f["description"].as_str() {
                tool["description"] = json!(d);
            }
            tool["input_schema"] = match &f["parameters"] {
                Value::Null => json!({"type": "object", "properties": {}}),
                p => p.clone(),
            };
            Ok(tool)
        })
        .collect()
}

/// OpenAI `tool_choice` as Anthropic's: `auto`, `required` → `any`, `none`, or
/// one named function → `tool`.
fn anthropic_tool_choice(choice: &Value) -> Result<Value, ProviderError> {
    match choice {
        Value::String(c) if c == "auto" => Ok(json!({"type": "auto"})),
        Value::String(c) if c == "required" => Ok(json!({"type": "any"})),
        Value::String(c) if c == "none" => Ok(json!({"type": "none"})),
        _ => match choice["function"]["name"].as_str() {
            Some(name) => Ok(json!({"type": "tool", "name": name})),
            None => Err(invalid(
                "tool_choice",
                "expected auto, required, none or a function",
            )),
        },
    }
}

/// Whether the caller asked for a structured answer (`response_format`
/// json_object or json_schema), which comes as the input of [`JSON_TOOL`].
fn structured(req: &InferRequest) -> bool {
    req.extra
        .as_ref()
        .and_then(|e| e.get("response_format"))
        .and_then(|f| f["type"].as_str())
        .is_some_and(|t| t == "json_object" || t == "json_schema")
}

/// Anthropic `tool_use` blocks as OpenAI `tool_calls`.
fn openai_tool_calls(blocks: &[ContentBlock]) -> Option<Value> {
    let calls: Vec<Value> = blocks
        .iter()
        .filter(|b| b.kind == "tool_use")
        .map(|b| {
            json!({"id": b.id, "type": "function", "function": {
                "name": b.name,
                "arguments": b.input.as_ref().map_or_else(|| "{}".to_owned(), Value::to_string),
            }})
        })
        .collect();
    (!calls.is_empty()).then_some(Value::Array(calls))
}

/// Anthropic's `stop_reason` as an OpenAI `finish_reason`.
pub fn finish_reason(stop_reason: &str) -> &'static str {
    match stop_reason {
        "max_tokens" => "length",
        "tool_use" => "tool_calls",
        "refusal" => "content_filter",
        // end_turn, stop_sequence, pause_turn and anything new.
        _ => "stop",
    }
}

#[derive(Deserialize)]
struct MessagesResponse<'a> {
    /// Kept as the upstream's bytes, to be replaced in place.
    #[serde(borrow)]
    model: Option<&'a RawValue>,
    id: Option<String>,
    #[serde(rename = "type")]
    kind: Option<String>,
    #[serde(default)]
    content: Vec<ContentBlock>,
    stop_reason: Option<String>,
    usage: Option<Usage>,
    error: Option<ApiError>,
}

#[derive(Deserialize)]
struct ContentBlock {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    text: String,
    // tool_use blocks
    #[serde(default)]
    id: String,
    #[serde(default)]
    name: String,
    input: Option<Value>,
    // thinking blocks
    thinking: Option<String>,
    signature: Option<String>,
    data: Option<String>,
}

#[derive(Deserialize, Clone, Copy, Default)]
struct Usage {
    #[serde(default)]
    input_tokens: u64,
    #[serde(default)]
    output_tokens: u64,
    #[serde(default, deserialize_with = "http::null_as_zero")]
    cache_read_input_tokens: u64,
    #[serde(default, deserialize_with = "http::null_as_zero")]
    cache_creation_input_tokens: u64,
}

impl Usage {
    /// Anthropic's `input_tokens` leaves cache reads and writes out;
    /// infermux's input counts every input token.
    fn input(self) -> infermux::Usage {
        infermux::Usage {
            input: self.input_tokens
                + self.cache_read_input_tokens
                + self.cache_creation_input_tokens,
            cached_input: self.cache_read_input_tokens,
            cache_write: self.cache_creation_input_tokens,
            ..Default::default()
        }
    }
}

#[derive(Deserialize)]
struct ApiError {
    #[serde(default)]
    message: String,
}

/// One streaming event (only the fields infermux reads).
#[derive(Deserialize)]
struct StreamEvent<'a> {
    #[serde(rename = "type")]
    kind: String,
    #[serde(borrow)]
    message: Option<StartMessage<'a>>,
    delta: Option<Delta>,
    usage: Option<Usage>,
    error: Option<ApiError>,
    index: Option<u64>,
    content_block: Option<ContentBlock>,
}

#[derive(Deserialize)]
struct StartMessage<'a> {
    #[serde(borrow)]
    model: Option<&'a RawValue>,
    usage: Option<Usage>,
}

#[derive(Deserialize)]
struct Delta {
    #[serde(rename = "type")]
    kind: Option<String>,
    text: Option<String>,
    partial_json: Option<String>,
    thinking: Option<String>,
    stop_reason: Option<String>,
}

#[async_trait]
impl Provider for AnthropicProvider {
    fn name(&self) -> &str {
        &self.name
    }

    fn models(&self) -> &[String] {
        &self.models
    }

    fn kind(&self) -> &str {
        "anthropic"
    }

    /// Lists the models (`GET {base_url}/v1/models`).
    async fn health_check(&self) -> Result<(), ProviderError> {
        let req = self.request(::http::Method::GET, self.models_url.clone());
        self.upstream.call_ok(http::empty(req)).await
    }

    /// Anthropic's own count (`POST {base_url}/v1/messages/count_tokens`)
    /// of a Messages request passed through; `None` for a translated one.
    async fn count_tokens(
        &self,
        ctx: &CallContext<'_>,
        req: &InferRequest,
    ) -> Result<Option<TokenCount>, ProviderError> {
        #[derive(Deserialize)]
        struct Count {
            input_tokens: u64,
        }
        let Some(raw) = passthrough(req) else {
            return Ok(None);
        };
        let post = self.post_raw(
            ctx,
            self.count_url.clone(),
            raw,
            raw.body_for(ctx.model, false),
        );
        let count: Count = self.upstream.call_json(post).await?;
        Ok(Some(TokenCount {
            input_tokens: count.input_tokens,
            estimated: false,
        }))
    }

    async fn infer(
        &self,
        ctx: &CallContext<'_>,
        req: &InferRequest,
    ) -> Result<InferResponse, ProviderError> {
        let full = whole(req, infermux::raw::Dialect::AnthropicMessages)?;
        let req = full.as_ref().unwrap_or(req);
        let (post, passed) = self.messages_post(ctx, req, false)?;
        let answer = self.upstream.call_success(post).await?;
        let parsed: MessagesResponse<'_> = self.upstream.read_json(&answer)?;
        if parsed.kind.as_deref() == Some("error") || parsed.error.is_some() {
            let message = parsed.error.map(|e| e.message).unwrap_or_default();
            return Err(ProviderError::Unavailable(format!(
                "provider \"{}\" answered 200 with an error: {message}",
                self.name
            )));
        }
        // A structured answer came as the forced tool's input.
        let structured = parsed
            .content
            .iter()
            .find(|b| b.kind == "tool_use" && b.name == JSON_TOOL && structured(req))
            .and_then(|b| b.input.as_ref().map(Value::to_string));
        let content: String = match &structured {
            Some(json) => json.clone(),
            None => parsed
                .content
                .iter()
                .filter(|b| b.kind == "text")
                .map(|b| b.text.as_str())
                .collect(),
        };
        let reasoning: String = parsed
            .content
            .iter()
            .filter_map(|b| b.thinking.as_deref())
            .collect();
        let thinking_blocks: Vec<Value> = parsed
            .content
            .iter()
            .filter_map(|b| match b.kind.as_str() {
                "thinking" => Some(json!({"type": "thinking",
                    "thinking": b.thinking.as_deref().unwrap_or_default(),
                    "signature": b.signature.as_deref().unwrap_or_default()})),
                "redacted_thinking" => Some(json!({"type": "redacted_thinking",
                    "data": b.data.as_deref().unwrap_or_default()})),
                _ => None,
            })
            .collect();
        let mut resp = InferResponse {
            finish_reason: match structured {
                Some(_) => "stop",
                None => finish_reason(parsed.stop_reason.as_deref().unwrap_or("end_turn")),
            }
            .to_owned(),
            tool_calls: match structured {
                Some(_) => None,
                None => openai_tool_calls(&parsed.content).map(std::sync::Arc::new),
            },
            reasoning: (!reasoning.is_empty()).then_some(reasoning),
            thinking_blocks: (!thinking_blocks.is_empty())
                .then(|| std::sync::Arc::new(Value::Array(thinking_blocks))),
            upstream_id: parsed.id,
            upstream_request_id: answer.request_id.as_deref().map(str::to_owned),
            raw: passed.then(|| {
                let model = parsed
                    .model
                    .and_then(|m| infermux::raw::range_in(&answer.body, m));
                infermux::raw::RawAnswer::new(answer.body.clone(), model)
            }),
            content,
            ..Default::default()
        };
        match parsed.usage {
            Some(u) => {
                let mut usage = u.input();
                usage.output = u.output_tokens;
                resp.set_usage(usage);
            }
            None => {
                resp.tokens_in = tokens::prompt(&req.messages);
                resp.tokens_out = tokens::count(&resp.content);
                resp.usage_estimated = true;
            }
        }
        Ok(resp)
    }

    async fn infer_stream(
        &self,
        ctx: &CallContext<'_>,
        req: &InferRequest,
    ) -> Result<ChunkStream, ProviderError> {
        let full = whole(req, infermux::raw::Dialect::AnthropicMessages)?;
        let req = full.as_ref().unwrap_or(req);
        let (post, passed) = self.messages_post(ctx, req, true)?;
        let resp = self.upstream.call_stream(post).await?;
        let provider = self.upstream.provider().clone();
        let structured = structured(req);
        let prompt = http::Prompt::of(req, passed);
        Ok(http::chunk_stream(resp, provider.clone(), prompt, {
            // Anthropic numbers content blocks; OpenAI numbers tool calls.
            let mut tool_index: Vec<u64> = Vec::new();
            // The block carrying a structured answer, once it starts.
            let mut answer_block: Option<u64> = None;
            move |event| {
                let data = bytes::Bytes::from(event.data);
                let parsed: StreamEvent<'_> =
                    infermux::json::from_slice_untracked(&data).map_err(|e| {
                        ProviderError::Unavailable(format!(
                            "provider \"{provider}\" sent an unreadable stream event: {e}"
                        ))
                    })?;
                if passed {
                    return passed_event(&provider, &data, parsed);
                }
                let mut chunk = InferChunk::default();
                match parsed.kind.as_str() {
                    "message_start" => {
                        let usage = parsed.message.and_then(|m| m.usage).unwrap_or_default();
                        chunk.set_usage(usage.input());
                    }
                    "content_block_start" => match parsed.content_block {
                        Some(b) if b.kind == "tool_use" && structured && b.name == JSON_TOOL => {
                            answer_block = parsed.index;
                            return Ok(http::Step::Skip);
                        }
                        Some(b) if b.kind == "tool_use" => {
                            let index = tool_index.len();
                            tool_index.push(parsed.index.unwrap_or_default());
                            chunk.tool_calls = Some(json!([{"index": index, "id": b.id,
                                "type": "function", "function": {"name": b.name, "arguments": ""}}]));
                        }
                        _ => return Ok(http::Step::Skip),
                    },
                    "content_block_delta" => match parsed.delta {
                        Some(Delta {
                            kind: Some(k),
                            text: Some(text),
                            ..
                        }) if k == "text_delta" => chunk.delta = text,
                        Some(Delta {
                            kind: Some(k),
                            thinking: Some(text),
                            ..
                        }) if k == "thinking_delta" => chunk.reasoning = Some(text),
                        Some(Delta {
                            kind: Some(k),
                            partial_json: Some(json),
                            ..
                        }) if k == "input_json_delta" => {
                            let block = parsed.index.unwrap_or_default();
                            if answer_block == Some(block) {
                                chunk.delta = json;
                            } else {
                                let Some(index) = tool_index.iter().position(|&b| b == block)
                                else {
                                    return Ok(http::Step::Skip);
                                };
                                chunk.tool_calls = Some(
                                    json!([{"index": index, "function": {"arguments": json}}]),
                                );
                            }
                        }
                        // signature_delta and new kinds.
                        _ => return Ok(http::Step::Skip),
                    },
                    "message_delta" => {
                        if let Some(reason) = parsed.delta.and_then(|d| d.stop_reason) {
                            chunk.finish_reason = match answer_block {
                                Some(_) => "stop",
                                None => finish_reason(&reason),
                            }
                            .to_owned();
                        }
                        chunk.tokens_out = parsed.usage.unwrap_or_default().output_tokens;
                    }
                    "message_stop" => return Ok(http::Step::Done),
                    "error" => {
                        let message = parsed.error.map(|e| e.message).unwrap_or_default();
                        return Err(ProviderError::Unavailable(format!(
                            "provider \"{provider}\" failed mid-stream: {message}"
                        )));
                    }
                    // ping, content_block_stop, and new event types.
                    _ => return Ok(http::Step::Skip),
                }
                Ok(http::Step::Chunk(chunk))
            }
        }))
    }
}

/// The Messages API's stream event names.
const EVENTS: [&str; 8] = [
    "message_start",
    "content_block_start",
    "content_block_delta",
    "content_block_stop",
    "message_delta",
    "message_stop",
    "ping",
    "error",
];

/// An event of a stream passed through (SPEC §11): what infermux reads of
/// it (usage, the stop reason, the text for an estimate), with the event as
/// it came for the caller. Every event goes on, pings and block stops
/// included; `message_stop` is the last.
fn passed_event(
    provider: &str,
    data: &bytes::Bytes,
    parsed: StreamEvent<'_>,
) -> Result<http::Step, ProviderError> {
    let mut chunk = InferChunk::default();
    let mut model = None;
    match parsed.kind.as_str() {
        "message_start" => {
            if let Some(m) = parsed.message {
                chunk.set_usage(m.usage.unwrap_or_default().input());
                model = m.model.and_then(|m| infermux::raw::range_in(data, m));
            }
        }
        "content_block_delta" => match parsed.delta {
            Some(Delta {
                text: Some(text), ..
            }) => chunk.delta = text,
            Some(Delta {
                thinking: Some(text),
                ..
            }) => chunk.reasoning = Some(text),
            _ => {}
        },
        "message_delta" => {
            if let Some(reason) = parsed.delta.and_then(|d| d.stop_reason) {
                chunk.finish_reason = finish_reason(&reason).to_owned();
            }
            chunk.tokens_out = parsed.usage.unwrap_or_default().output_tokens;
        }
        "error" => {
            let message = parsed.error.map(|e| e.message).unwrap_or_default();
            return Err(ProviderError::Unavailable(format!(
                "provider \"{provider}\" failed mid-stream: {message}"
            )));
        }
        _ => {}
    }
    let mut raw = infermux::raw::RawAnswer::new(data.clone(), model);
    raw.event = Some(match EVENTS.iter().find(|&&e| e == parsed.kind) {
        Some(&name) => std::borrow::Cow::Borrowed(name),
        None => std::borrow::Cow::Owned(parsed.kind.clone()),
    });
    chunk.raw = Some(raw);
    match parsed.kind.as_str() {
        "message_stop" => Ok(http::Step::Last(chunk)),
        _ => Ok(http::Step::Chunk(chunk)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use infermux::ChatMessage;

    #[test]
    fn system_messages_are_lifted_and_stop_renamed() {
        let mut req = InferRequest::prompt("x", "Hi");
        req.messages.insert(0, ChatMessage::system("Be brief."));
        req.messages.insert(1, ChatMessage::system("Be kind."));
        req.messages
            .push(ChatMessage::new(Role::Assistant, "Hello"));
        req.params.stop = Some(vec!["END".into()]);
        req.params.temperature = Some(1.5);
        let v = serde_json::to_value(messages_request("claude-x", &req, false).unwrap()).unwrap();
        assert_eq!(v["system"], "Be brief.\n\nBe kind.");
        assert_eq!(
            v["messages"],
            serde_json::json!([{"role":"user","content":"Hi"},{"role":"assistant","content":"Hello"}])
        );
        assert_eq!(v["stop_sequences"], serde_json::json!(["END"]));
        assert_eq!(v["max_tokens"], DEFAULT_MAX_TOKENS);
        assert_eq!(v["temperature"], 1.0);
        assert!(v.get("stream").is_none());
    }

    #[test]
    fn stop_reasons() {
        assert_eq!(finish_reason("end_turn"), "stop");
        assert_eq!(finish_reason("stop_sequence"), "stop");
        assert_eq!(finish_reason("max_tokens"), "length");
        assert_eq!(finish_reason("tool_use"), "tool_calls");
    }
}
