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
    Role,
};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

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
        match (&m.role, calls) {
            (Role::System, _) => system.push(&m.content),
            (Role::Assistant, Some(calls)) => {
                let mut blocks = Vec::new();
                if !m.content.is_empty() {
                    blocks.push(json!({"type": "text", "text": m.content}));
                }
                blocks.extend(tool_use_blocks(i, calls)?);
                messages.push(WireMessage {
                    role: "assistant",
                    content: WireContent::Blocks(blocks),
                });
            }
            (Role::Assistant, None) => messages.push(WireMessage {
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
    let extra = req.extra.as_deref();
    if let Some(n) = extra.and_then(|e| e.get("n"))
        && n != 1
    {
        return Err(invalid(
            "n",
            &format!("{n}: anthropic providers give one choice"),
        ));
    }
    let tools = match extra.and_then(|e| e.get("tools")) {
        None | Some(Value::Null) => None,
        Some(tools) => Some(anthropic_tools(tools)?),
    };
    let tool_choice = match extra.and_then(|e| e.get("tool_choice")) {
        None | Some(Value::Null) => None,
        Some(choice) => Some(anthropic_tool_choice(choice)?),
    };
    Ok(MessagesRequest {
        model,
        max_tokens: req.params.max_tokens.unwrap_or(DEFAULT_MAX_TOKENS),
        messages,
        system: (!system.is_empty()).then(|| system.join("\n\n")),
        // Anthropic's range is [0, 1]; OpenAI's is [0, 2].
        temperature: req.params.temperature.map(|t| t.min(1.0)),
        top_p: req.params.top_p,
        stop_sequences: req.params.stop.as_deref(),
        stream,
        tools,
        tool_choice,
    })
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
struct MessagesResponse {
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
}

#[derive(Deserialize, Clone, Copy, Default)]
struct Usage {
    #[serde(default)]
    input_tokens: u64,
    #[serde(default)]
    output_tokens: u64,
}

#[derive(Deserialize)]
struct ApiError {
    #[serde(default)]
    message: String,
}

/// One streaming event (only the fields infermux reads).
#[derive(Deserialize)]
struct StreamEvent {
    #[serde(rename = "type")]
    kind: String,
    message: Option<StartMessage>,
    delta: Option<Delta>,
    usage: Option<Usage>,
    error: Option<ApiError>,
    index: Option<u64>,
    content_block: Option<ContentBlock>,
}

#[derive(Deserialize)]
struct StartMessage {
    usage: Option<Usage>,
}

#[derive(Deserialize)]
struct Delta {
    #[serde(rename = "type")]
    kind: Option<String>,
    text: Option<String>,
    partial_json: Option<String>,
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

    async fn infer(
        &self,
        ctx: &CallContext<'_>,
        req: &InferRequest,
    ) -> Result<InferResponse, ProviderError> {
        let body = messages_request(ctx.model, req, false)?;
        let parsed: MessagesResponse = self.upstream.call_json(self.post(ctx, &body)?).await?;
        if parsed.kind.as_deref() == Some("error") || parsed.error.is_some() {
            let message = parsed.error.map(|e| e.message).unwrap_or_default();
            return Err(ProviderError::Unavailable(format!(
                "provider \"{}\" answered 200 with an error: {message}",
                self.name
            )));
        }
        let content: String = parsed
            .content
            .iter()
            .filter(|b| b.kind == "text")
            .map(|b| b.text.as_str())
            .collect();
        let (tokens_in, tokens_out, usage_estimated) = match parsed.usage {
            Some(u) => (u.input_tokens, u.output_tokens, false),
            None => (tokens::prompt(&req.messages), tokens::count(&content), true),
        };
        Ok(InferResponse {
            content,
            tokens_in,
            tokens_out,
            finish_reason: finish_reason(parsed.stop_reason.as_deref().unwrap_or("end_turn"))
                .to_owned(),
            usage_estimated,
            tool_calls: openai_tool_calls(&parsed.content).map(std::sync::Arc::new),
            ..Default::default()
        })
    }

    async fn infer_stream(
        &self,
        ctx: &CallContext<'_>,
        req: &InferRequest,
    ) -> Result<ChunkStream, ProviderError> {
        let body = messages_request(ctx.model, req, true)?;
        let resp = self.upstream.call_stream(self.post(ctx, &body)?).await?;
        let provider = self.upstream.provider().clone();
        Ok(http::chunk_stream(resp, provider.clone(), &req.messages, {
            // Anthropic numbers content blocks; OpenAI numbers tool calls.
            let mut tool_index: Vec<u64> = Vec::new();
            move |event| {
                let parsed: StreamEvent = serde_json::from_str(&event.data).map_err(|e| {
                    ProviderError::Unavailable(format!(
                        "provider \"{provider}\" sent an unreadable stream event: {e}"
                    ))
                })?;
                let mut chunk = InferChunk::default();
                match parsed.kind.as_str() {
                    "message_start" => {
                        chunk.tokens_in = parsed
                            .message
                            .and_then(|m| m.usage)
                            .unwrap_or_default()
                            .input_tokens;
                    }
                    "content_block_start" => match parsed.content_block {
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
                            partial_json: Some(json),
                            ..
                        }) if k == "input_json_delta" => {
                            let block = parsed.index.unwrap_or_default();
                            let Some(index) = tool_index.iter().position(|&b| b == block) else {
                                return Ok(http::Step::Skip);
                            };
                            chunk.tool_calls =
                                Some(json!([{"index": index, "function": {"arguments": json}}]));
                        }
                        _ => return Ok(http::Step::Skip),
                    },
                    "message_delta" => {
                        if let Some(reason) = parsed.delta.and_then(|d| d.stop_reason) {
                            chunk.finish_reason = finish_reason(&reason).to_owned();
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
