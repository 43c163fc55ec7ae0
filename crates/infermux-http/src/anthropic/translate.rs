//! Messages API ↔ the core's OpenAI shape, for providers of another dialect
//! (SPEC §11, §12): every field with a counterpart is mapped; one that has
//! none and would change the answer is refused with a 400 naming it; the
//! few that cannot change it are dropped, as docs/CONFIG.md lists.

use std::sync::Arc;

use bytes::Bytes;
use infermux::{ChatMessage, Error, InferChunk, InferRequest, InferResponse, Role, json};
use serde_json::{Map, Value, json};

use super::invalid;

/// What to do about a field that cannot be translated.
const ELSEWHERE: &str =
    "leave it out, or send this model to an anthropic provider (where the request passes as sent)";

/// Anthropic's `thinking` budget as OpenAI's `reasoning_effort`: the
/// nearest of the budgets the other direction uses (1024, 4096, 16384).
fn effort(budget: i64) -> &'static str {
    match budget {
        ..4096 => "low",
        4096..16384 => "medium",
        _ => "high",
    }
}

/// The whole Messages request as the core's OpenAI-shaped request, for a
/// provider that translates: system as a system message, content blocks as
/// content parts, `tool_use`/`tool_result` as tool calls and tool messages,
/// tools as functions.
pub(crate) fn whole_request(body: &Bytes) -> Result<InferRequest, Error> {
    let top: Map<String, Value> = json::from_slice(body)?;
    let mut req = InferRequest::default();
    let mut extra = Map::new();
    let mut system = None;
    let mut turns = None;
    let mut parallel = true;
    for (field, value) in top {
        match field.as_str() {
            "model" => req.model = value.as_str().unwrap_or_default().to_owned(),
            "provider" => req.provider = value.as_str().unwrap_or_default().to_owned(),
            "max_tokens" => req.params.max_tokens = value.as_i64(),
            "temperature" => req.params.temperature = value.as_f64(),
            "top_p" => req.params.top_p = value.as_f64(),
            "stop_sequences" => {
                req.params.stop = serde_json::from_value(value)
                    .map_err(|_| invalid("stop_sequences", "must be an array of strings"))?;
            }
            // The stream's shape is the edge's business.
            "stream" => {}
            "system" => system = Some(value),
            "messages" => turns = Some(value),
            // vLLM and other OpenAI-compatible servers take it; OpenAI
            // itself refuses it, by name: not a silent drop.
            "top_k" => {
                extra.insert(field, value);
            }
            "metadata" => {
                if let Some(user) = value.get("user_id").and_then(Value::as_str) {
                    extra.insert("user".to_owned(), Value::from(user));
                }
            }
            "tools" => {
                extra.insert("tools".to_owned(), tools(&value)?);
            }
            "tool_choice" => {
                let (choice, one_at_a_time) = tool_choice(&value)?;
                parallel = !one_at_a_time;
                extra.insert("tool_choice".to_owned(), choice);
            }
            "thinking" => match value["type"].as_str() {
                Some("enabled") => {
                    let budget = value["budget_tokens"].as_i64().ok_or_else(|| {
                        invalid("thinking.budget_tokens", "Field required (an integer)")
                    })?;
                    extra.insert("reasoning_effort".to_owned(), Value::from(effort(budget)));
                }
                Some("disabled") => {}
                _ => return Err(invalid("thinking.type", "expected enabled or disabled")),
            },
            // A latency and capacity hint: the answer is the same.
            "service_tier" => {}
            other => {
                return Err(invalid(
                    other,
                    format!("has no counterpart for OpenAI-dialect providers; {ELSEWHERE}"),
                ));
            }
        }
    }
    if !parallel {
        extra.insert("parallel_tool_calls".to_owned(), Value::Bool(false));
    }
    if let Some(system) = system {
        let text = match system {
            Value::String(s) => s,
            Value::Array(blocks) => blocks
                .iter()
                .filter_map(|b| b["text"].as_str())
                .collect::<Vec<_>>()
                .join("\n"),
            _ => String::new(),
        };
        if !text.is_empty() {
            req.messages.push(ChatMessage::system(text));
        }
    }
    let turns = match turns {
        Some(Value::Array(t)) => t,
        _ => return Err(invalid("messages", "Field required")),
    };
    for (i, turn) in turns.iter().enumerate() {
        match turn["role"].as_str() {
            Some("assistant") => req.messages.push(assistant(i, &turn["content"])?),
            _ => user(i, &turn["content"], &mut req.messages)?,
        }
    }
    req.extra = (!extra.is_empty()).then(|| Arc::new(extra));
    Ok(req)
}

fn with_extra(role: Role, text: String, extra: Map<String, Value>) -> ChatMessage {
    ChatMessage {
        role,
        content: text,
        extra: (!extra.is_empty()).then(|| Arc::new(extra)),
    }
}

/// A user turn: its `tool_result` blocks become tool messages (first: they
/// answer the assistant turn before), the rest one user message of content
/// parts.
fn user(i: usize, content: &Value, out: &mut Vec<ChatMessage>) -> Result<(), Error> {
    let blocks = match content {
        Value::String(s) => {
            out.push(ChatMessage::user(s.clone()));
            return Ok(());
        }
        Value::Array(b) => b,
        _ => return Err(invalid(format!("messages[{i}].content"), "Field required")),
    };
    let mut parts = Vec::new();
    let mut text = String::new();
    for (j, b) in blocks.iter().enumerate() {
        let at = |f: &str| format!("messages[{i}].content[{j}]{f}");
        match b["type"].as_str().unwrap_or_default() {
            "text" => {
                let t = b["text"].as_str().unwrap_or_default();
                text.push_str(t);
                parts.push(json!({"type": "text", "text": t}));
            }
            "image" => parts.push(image_part(&at(".source"), &b["source"])?),
            "document" => parts.push(document_part(&at(".source"), b)?),
            "tool_result" => {
                let result = tool_result_text(&at(".content"), &b["content"])?;
                let mut extra = Map::new();
                extra.insert("tool_call_id".to_owned(), b["tool_use_id"].clone());
                out.push(with_extra(Role::Tool, result, extra));
            }
            other => {
                return Err(invalid(
                    at(".type"),
                    format!(
                        "{other} blocks cannot be translated for OpenAI-dialect providers; {ELSEWHERE}"
                    ),
                ));
            }
        }
    }
    if parts.is_empty() {
        return Ok(());
    }
    let mut extra = Map::new();
    if parts.iter().any(|p| p["type"] != "text") {
        extra.insert("content".to_owned(), Value::Array(parts));
    }
    out.push(with_extra(Role::User, text, extra));
    Ok(())
}

/// An assistant turn: text joined, `tool_use` blocks as `tool_calls`.
/// Thinking blocks are left out: OpenAI's chat API takes no reasoning back
/// (docs/CONFIG.md).
fn assistant(i: usize, content: &Value) -> Result<ChatMessage, Error> {
    let blocks = match content {
        Value::String(s) => return Ok(ChatMessage::new(Role::Assistant, s.clone())),
        Value::Array(b) => b,
        _ => return Err(invalid(format!("messages[{i}].content"), "Field required")),
    };
    let mut text = String::new();
    let mut calls = Vec::new();
    for (j, b) in blocks.iter().enumerate() {
        match b["type"].as_str().unwrap_or_default() {
            "text" => text.push_str(b["text"].as_str().unwrap_or_default()),
            "tool_use" => calls.push(json!({
                "id": b["id"],
                "type": "function",
                "function": {"name": b["name"], "arguments": b["input"].to_string()},
            })),
            "thinking" | "redacted_thinking" => {}
            other => {
                return Err(invalid(
                    format!("messages[{i}].content[{j}].type"),
                    format!(
                        "{other} blocks cannot be translated for OpenAI-dialect providers; {ELSEWHERE}"
                    ),
                ));
            }
        }
    }
    let mut extra = Map::new();
    if !calls.is_empty() {
        extra.insert("tool_calls".to_owned(), Value::Array(calls));
    }
    Ok(with_extra(Role::Assistant, text, extra))
}

/// An image block's source as an OpenAI `image_url` part.
fn image_part(at: &str, source: &Value) -> Result<Value, Error> {
    let url = match source["type"].as_str() {
        Some("base64") => format!(
            "data:{};base64,{}",
            source["media_type"].as_str().unwrap_or("image/png"),
            source["data"].as_str().unwrap_or_default()
        ),
        Some("url") => source["url"].as_str().unwrap_or_default().to_owned(),
        _ => {
            return Err(invalid(
                format!("{at}.type"),
                "OpenAI-dialect providers take base64 and url images",
            ));
        }
    };
    Ok(json!({"type": "image_url", "image_url": {"url": url}}))
}

/// A document block as a `file` part (a base64 PDF) or text (a plain-text
/// document).
fn document_part(at: &str, block: &Value) -> Result<Value, Error> {
    let source = &block["source"];
    match source["type"].as_str() {
        Some("base64") => {
            let mut file = json!({"file_data": format!(
                "data:{};base64,{}",
                source["media_type"].as_str().unwrap_or("application/pdf"),
                source["data"].as_str().unwrap_or_default()
            )});
            if let Some(title) = block["title"].as_str() {
                file["filename"] = Value::from(title);
            }
            Ok(json!({"type": "file", "file": file}))
        }
        Some("text") => Ok(json!({"type": "text", "text": source["data"]})),
        _ => Err(invalid(
            format!("{at}.type"),
            "OpenAI-dialect providers take base64 and text documents",
        )),
    }
}

/// A `tool_result`'s content as a tool message's text. (`is_error` has no
/// OpenAI counterpart; the result's own text says what failed.)
fn tool_result_text(at: &str, content: &Value) -> Result<String, Error> {
    match content {
        Value::Null => Ok(String::new()),
        Value::String(s) => Ok(s.clone()),
        Value::Array(blocks) => {
            let mut text = String::new();
            for (k, b) in blocks.iter().enumerate() {
                match b["type"].as_str() {
                    Some("text") => text.push_str(b["text"].as_str().unwrap_or_default()),
                    other => {
                        return Err(invalid(
                            format!("{at}[{k}].type"),
                            format!(
                                "OpenAI-dialect tool results are text only, not {}",
                                other.unwrap_or("untyped")
                            ),
                        ));
                    }
                }
            }
            Ok(text)
        }
        _ => Err(invalid(at, "expected a string or text blocks")),
    }
}

/// Anthropic tools as OpenAI functions. Server tools (web search, code
/// execution, ...) run at Anthropic and have no counterpart.
fn tools(value: &Value) -> Result<Value, Error> {
    let list = value
        .as_array()
        .ok_or_else(|| invalid("tools", "must be an array"))?;
    let mut out = Vec::with_capacity(list.len());
    for (j, t) in list.iter().enumerate() {
        if let Some(kind) = t["type"].as_str()
            && kind != "custom"
        {
            return Err(invalid(
                format!("tools[{j}].type"),
                format!(
                    "the server tool {kind} has no counterpart for OpenAI-dialect providers; {ELSEWHERE}"
                ),
            ));
        }
        let name = t["name"]
            .as_str()
            .ok_or_else(|| invalid(format!("tools[{j}].name"), "Field required"))?;
        let mut function = json!({"name": name});
        if let Some(d) = t["description"].as_str() {
            function["description"] = Value::from(d);
        }
        function["parameters"] = match &t["input_schema"] {
            Value::Object(_) => t["input_schema"].clone(),
            _ => {
                return Err(invalid(
                    format!("tools[{j}].input_schema"),
                    "Field required",
                ));
            }
        };
        out.push(json!({"type": "function", "function": function}));
    }
    Ok(Value::Array(out))
}

/// Anthropic's `tool_choice` as OpenAI's, and whether it asks for one tool
/// call at a time (`disable_parallel_tool_use`).
fn tool_choice(value: &Value) -> Result<(Value, bool), Error> {
    let one = value["disable_parallel_tool_use"]
        .as_bool()
        .unwrap_or(false);
    let choice = match value["type"].as_str() {
        Some("auto") => json!("auto"),
        Some("any") => json!("required"),
        Some("none") => json!("none"),
        Some("tool") => {
            let name = value["name"]
                .as_str()
                .ok_or_else(|| invalid("tool_choice.name", "Field required"))?;
            json!({"type": "function", "function": {"name": name}})
        }
        _ => {
            return Err(invalid(
                "tool_choice.type",
                "expected auto, any, tool or none",
            ));
        }
    };
    Ok((choice, one))
}

/// OpenAI's `finish_reason` as Anthropic's `stop_reason`.
fn stop_reason(finish: &str) -> &'static str {
    match finish {
        "length" => "max_tokens",
        "tool_calls" | "function_call" => "tool_use",
        "content_filter" => "refusal",
        _ => "end_turn",
    }
}

/// Anthropic's usage: `input_tokens` leaves cache reads and writes out.
fn usage(u: infermux::Usage) -> Value {
    json!({
        "input_tokens": u.input.saturating_sub(u.cached_input + u.cache_write),
        "output_tokens": u.output,
        "cache_creation_input_tokens": u.cache_write,
        "cache_read_input_tokens": u.cached_input,
    })
}

/// A tool call's arguments (a JSON string) as a `tool_use` input.
fn input_of(arguments: &Value) -> Value {
    match arguments {
        Value::String(s) if s.trim().is_empty() => json!({}),
        Value::String(s) => serde_json::from_str(s).unwrap_or_else(|_| Value::String(s.clone())),
        Value::Null => json!({}),
        other => other.clone(),
    }
}

/// A translated answer as a Messages API `message`.
pub(crate) fn message(r: &InferResponse) -> Vec<u8> {
    let mut content = Vec::new();
    if let Some(reasoning) = r.reasoning.as_deref().filter(|t| !t.is_empty()) {
        content.push(json!({"type": "thinking", "thinking": reasoning, "signature": ""}));
    }
    if !r.content.is_empty() {
        content.push(json!({"type": "text", "text": r.content}));
    }
    for call in r
        .tool_calls
        .as_deref()
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        content.push(json!({
            "type": "tool_use",
            "id": call["id"],
            "name": call["function"]["name"],
            "input": input_of(&call["function"]["arguments"]),
        }));
    }
    let id = r.upstream_id.clone().unwrap_or_else(super::message_id);
    let answer = json!({
        "id": id,
        "type": "message",
        "role": "assistant",
        "model": r.model,
        "content": content,
        "stop_reason": stop_reason(&r.finish_reason),
        "stop_sequence": null,
        "usage": usage(r.usage()),
    });
    json::to_vec(&answer).unwrap_or_default()
}

/// The kind of the content block a translated stream has open.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Block {
    Text,
    Thinking,
    /// A `tool_use` block, for the OpenAI tool call of this index.
    Tool(u64),
}

/// A translated stream, written as Anthropic's event sequence:
/// `message_start`, `ping`, for each block `content_block_start`, its
/// deltas and `content_block_stop`, then `message_delta` with the stop
/// reason and usage, and `message_stop`.
pub(crate) struct Events {
    id: String,
    started: bool,
    /// The open block and its index.
    open: Option<(Block, u64)>,
    next_index: u64,
    stop_reason: &'static str,
    usage: infermux::Usage,
}

impl Events {
    pub(crate) fn new(id: String) -> Events {
        Events {
            id,
            started: false,
            open: None,
            next_index: 0,
            stop_reason: "end_turn",
            usage: infermux::Usage::default(),
        }
    }

    fn event(out: &mut Vec<u8>, name: &str, data: &Value) {
        super::push_event(out, name, &json::to_vec(data).unwrap_or_default());
    }

    fn start(&mut self, out: &mut Vec<u8>, model: &str) {
        if self.started {
            return;
        }
        self.started = true;
        let message = json!({"type": "message_start", "message": {
            "id": self.id, "type": "message", "role": "assistant", "model": model,
            "content": [], "stop_reason": null, "stop_sequence": null,
            "usage": usage(self.usage),
        }});
        Events::event(out, "message_start", &message);
        Events::event(out, "ping", &json!({"type": "ping"}));
    }

    fn close(&mut self, out: &mut Vec<u8>) {
        if let Some((_, index)) = self.open.take() {
            Events::event(
                out,
                "content_block_stop",
                &json!({"type": "content_block_stop", "index": index}),
            );
        }
    }

    /// The index of an open block of `kind`, opening it (with `start` as
    /// its `content_block`) if another is open.
    fn block(&mut self, out: &mut Vec<u8>, kind: Block, start: impl FnOnce() -> Value) -> u64 {
        match self.open {
            Some((open, index)) if open == kind => index,
            _ => {
                self.close(out);
                let index = self.next_index;
                self.next_index += 1;
                self.open = Some((kind, index));
                Events::event(
                    out,
                    "content_block_start",
                    &json!({"type": "content_block_start", "index": index, "content_block": start()}),
                );
                index
            }
        }
    }

    fn delta(out: &mut Vec<u8>, index: u64, delta: Value) {
        Events::event(
            out,
            "content_block_delta",
            &json!({"type": "content_block_delta", "index": index, "delta": delta}),
        );
    }

    /// The events of one chunk of a translated stream.
    pub(crate) fn chunk(&mut self, out: &mut Vec<u8>, model: &str, c: &InferChunk) {
        self.usage += c.usage();
        self.start(out, model);
        if let Some(text) = c.reasoning.as_deref().filter(|t| !t.is_empty()) {
            let index = self.block(
                out,
                Block::Thinking,
                || json!({"type": "thinking", "thinking": "", "signature": ""}),
            );
            Events::delta(
                out,
                index,
                json!({"type": "thinking_delta", "thinking": text}),
            );
        }
        if !c.delta.is_empty() {
            let index = self.block(out, Block::Text, || json!({"type": "text", "text": ""}));
            Events::delta(out, index, json!({"type": "text_delta", "text": c.delta}));
        }
        for call in c
            .tool_calls
            .as_ref()
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let n = call["index"].as_u64().unwrap_or(0);
            let index = self.block(out, Block::Tool(n), || {
                json!({"type": "tool_use", "id": call["id"], "name": call["function"]["name"], "input": {}})
            });
            if let Some(args) = call["function"]["arguments"]
                .as_str()
                .filter(|a| !a.is_empty())
            {
                Events::delta(
                    out,
                    index,
                    json!({"type": "input_json_delta", "partial_json": args}),
                );
            }
        }
        if !c.finish_reason.is_empty() {
            self.stop_reason = stop_reason(&c.finish_reason);
        }
    }

    /// The closing events of a translated stream that ended well.
    pub(crate) fn finish(&mut self, out: &mut Vec<u8>) {
        if !self.started {
            // Nothing came (a passed-through stream never gets here).
            return;
        }
        self.close(out);
        Events::event(
            out,
            "message_delta",
            &json!({"type": "message_delta",
                "delta": {"stop_reason": self.stop_reason, "stop_sequence": null},
                "usage": usage(self.usage)}),
        );
        Events::event(out, "message_stop", &json!({"type": "message_stop"}));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn whole(body: Value) -> Result<InferRequest, Error> {
        whole_request(&Bytes::from(body.to_string()))
    }

    #[test]
    fn a_claude_code_request_becomes_openai_chat() {
        let req = whole(json!({
            "model": "claude-sonnet-4-5", "max_tokens": 1000, "stream": true,
            "system": [{"type": "text", "text": "You are Claude Code.", "cache_control": {"type": "ephemeral"}}],
            "messages": [
                {"role": "user", "content": [{"type": "text", "text": "list files", "cache_control": {"type": "ephemeral"}}]},
                {"role": "assistant", "content": [
                    {"type": "thinking", "thinking": "hmm", "signature": "s"},
                    {"type": "tool_use", "id": "toolu_1", "name": "Bash", "input": {"command": "ls"}}]},
                {"role": "user", "content": [
                    {"type": "tool_result", "tool_use_id": "toolu_1", "content": [{"type": "text", "text": "a.rs"}], "is_error": false},
                    {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "AAAA"}}]}
            ],
            "tools": [{"name": "Bash", "description": "Run", "input_schema": {"type": "object"}}],
            "tool_choice": {"type": "auto", "disable_parallel_tool_use": true},
            "thinking": {"type": "enabled", "budget_tokens": 4096},
            "metadata": {"user_id": "user_abc"},
            "stop_sequences": ["END"], "temperature": 0.5, "top_k": 5
        }))
        .unwrap();
        let roles: Vec<&str> = req.messages.iter().map(|m| m.role.as_str()).collect();
        assert_eq!(roles, ["system", "user", "assistant", "tool", "user"]);
        assert_eq!(req.messages[0].content, "You are Claude Code.");
        let calls = &req.messages[2].extra.as_ref().unwrap()["tool_calls"];
        assert_eq!(
            calls,
            &json!([{"id": "toolu_1", "type": "function",
                "function": {"name": "Bash", "arguments": "{\"command\":\"ls\"}"}}])
        );
        assert_eq!(req.messages[3].content, "a.rs");
        assert_eq!(
            req.messages[3].extra.as_ref().unwrap()["tool_call_id"],
            "toolu_1"
        );
        assert_eq!(
            req.messages[4].parts().unwrap(),
            &json!([{"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}])
        );
        let extra = req.extra.unwrap();
        assert_eq!(
            extra["tools"],
            json!([{"type": "function", "function": {"name": "Bash", "description": "Run",
                "parameters": {"type": "object"}}}])
        );
        assert_eq!(extra["tool_choice"], "auto");
        assert_eq!(extra["parallel_tool_calls"], false);
        assert_eq!(extra["reasoning_effort"], "medium");
        assert_eq!(extra["user"], "user_abc");
        assert_eq!(extra["top_k"], 5);
        assert_eq!(req.params.stop, Some(vec!["END".to_owned()]));
        assert_eq!(req.params.max_tokens, Some(1000));
    }

    #[test]
    fn fields_without_a_counterpart_are_refused_by_name() {
        let base =
            json!({"model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": "x"}]});
        let cases = [
            (
                "mcp_servers",
                json!([{"type": "url", "url": "https://x"}]),
                "mcp_servers",
            ),
            (
                "tools",
                json!([{"type": "web_search_20250305", "name": "web_search"}]),
                "tools[0].type",
            ),
            ("thinking", json!({"type": "sometimes"}), "thinking.type"),
        ];
        for (field, value, named) in cases {
            let mut body = base.clone();
            body[field] = value;
            let e = whole(body).expect_err(field);
            assert!(e.message().starts_with(named), "{field}: {}", e.message());
        }
        let e = whole(json!({"model": "m", "max_tokens": 5, "messages": [
            {"role": "user", "content": [{"type": "search_result", "source": "s"}]}]}))
        .unwrap_err();
        assert!(
            e.message().starts_with("messages[0].content[0].type"),
            "{}",
            e.message()
        );
    }

    #[test]
    fn a_translated_stream_is_anthropics_event_sequence() {
        let mut events = Events::new("msg_x".into());
        let mut out = Vec::new();
        let text = InferChunk {
            delta: "Hi".into(),
            ..Default::default()
        };
        events.chunk(&mut out, "claude", &text);
        let call = InferChunk {
            tool_calls: Some(
                json!([{"index": 0, "id": "c1", "function": {"name": "f", "arguments": "{\"a\""}}]),
            ),
            ..Default::default()
        };
        events.chunk(&mut out, "claude", &call);
        let end = InferChunk {
            finish_reason: "tool_calls".into(),
            tokens_in: 10,
            tokens_out: 4,
            tokens_cached: 6,
            ..Default::default()
        };
        events.chunk(&mut out, "claude", &end);
        events.finish(&mut out);
        let text = String::from_utf8(out).unwrap();
        let names: Vec<&str> = text
            .split("\n\n")
            .filter(|e| !e.is_empty())
            .map(|e| e.lines().next().unwrap().trim_start_matches("event: "))
            .collect();
        assert_eq!(
            names,
            [
                "message_start",
                "ping",
                "content_block_start",
                "content_block_delta",
                "content_block_stop",
                "content_block_start",
                "content_block_delta",
                "content_block_stop",
                "message_delta",
                "message_stop"
            ]
        );
        let last_delta: Value = text
            .split("\n\n")
            .find(|e| e.starts_with("event: message_delta"))
            .and_then(|e| e.split_once("data: "))
            .map(|(_, d)| serde_json::from_str(d).unwrap())
            .unwrap();
        assert_eq!(last_delta["delta"]["stop_reason"], "tool_use");
        assert_eq!(
            last_delta["usage"],
            json!({"input_tokens": 4, "output_tokens": 4, "cache_creation_input_tokens": 0, "cache_read_input_tokens": 6})
        );
    }
}
