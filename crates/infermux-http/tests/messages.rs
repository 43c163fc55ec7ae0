//! SPEC §12 `/v1/messages` over real TCP, against recording fakes shaped like
//! the real APIs: passed through to an Anthropic upstream (the body and
//! every event as sent but for `model`), translated both ways to an
//! OpenAI upstream, and Anthropic's error shape.
#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests")]

mod upstream;

use serde_json::{Value, json};
use upstream::{Gateway, Reply, Upstream, data, event};

fn config(anthropic: &Upstream, openai: &Upstream) -> String {
    format!(
        r#"
providers:
  - name: claude
    type: anthropic
    api_key: ak-test
    base_url: "{}"
    models: [claude-sonnet-4-5]
    model_aliases: {{sonnet: claude-sonnet-4-5}}
  - name: openai
    type: openai
    api_key: sk-test
    base_url: "{}/v1"
    models: [gpt-4o]
"#,
        anthropic.url, openai.url
    )
}

async fn both() -> (Upstream, Upstream, Gateway) {
    let a = Upstream::start().await;
    let o = Upstream::start().await;
    let g = Gateway::start(&config(&a, &o)).await;
    (a, o, g)
}

/// A request shaped like Claude Code's: system blocks with `cache_control`,
/// tools, a tool round trip, thinking, `metadata.user_id`.
fn claude_code_request(model: &str, stream: bool) -> Value {
    json!({
        "model": model, "max_tokens": 2048, "stream": stream,
        "system": [
            {"type": "text", "text": "You are Claude Code."},
            {"type": "text", "text": "Be terse.", "cache_control": {"type": "ephemeral"}}
        ],
        "messages": [
            {"role": "user", "content": [{"type": "text", "text": "What is in src?", "cache_control": {"type": "ephemeral"}}]},
            {"role": "assistant", "content": [
                {"type": "text", "text": "Let me look."},
                {"type": "tool_use", "id": "toolu_01", "name": "Bash", "input": {"command": "ls src"}}
            ]},
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_01", "content": "main.rs"}]}
        ],
        "tools": [{"name": "Bash", "description": "Runs a command", "input_schema": {
            "type": "object", "properties": {"command": {"type": "string"}}, "required": ["command"]}}],
        "tool_choice": {"type": "auto"},
        "metadata": {"user_id": "user_42"},
        "temperature": 1,
        "unknown_future_field": {"kept": [1, 2]}
    })
}

fn claude_message() -> Value {
    json!({
        "id": "msg_up_1", "type": "message", "role": "assistant", "model": "claude-sonnet-4-5-20250929",
        "content": [
            {"type": "thinking", "thinking": "src has one file", "signature": "sig=="},
            {"type": "text", "text": "src holds main.rs."}
        ],
        "stop_reason": "end_turn", "stop_sequence": null,
        "usage": {"input_tokens": 20, "output_tokens": 9, "cache_read_input_tokens": 100,
            "cache_creation_input_tokens": 5, "service_tier": "standard"}
    })
}

fn claude_events() -> Vec<String> {
    vec![
        event(
            "message_start",
            json!({"type": "message_start", "message": {
            "id": "msg_up_2", "type": "message", "role": "assistant", "model": "claude-sonnet-4-5-20250929",
            "content": [], "stop_reason": null, "stop_sequence": null,
            "usage": {"input_tokens": 20, "output_tokens": 1, "cache_read_input_tokens": 100, "cache_creation_input_tokens": 0}}}),
        ),
        event(
            "content_block_start",
            json!({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}),
        ),
        event("ping", json!({"type": "ping"})),
        event(
            "content_block_delta",
            json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "Hello"}}),
        ),
        event(
            "content_block_delta",
            json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": " there"}}),
        ),
        event(
            "content_block_stop",
            json!({"type": "content_block_stop", "index": 0}),
        ),
        event(
            "message_delta",
            json!({"type": "message_delta", "delta": {"stop_reason": "end_turn", "stop_sequence": null}, "usage": {"output_tokens": 7}}),
        ),
        event("message_stop", json!({"type": "message_stop"})),
    ]
}

async fn post(
    g: &Gateway,
    path: &str,
    body: &Value,
    headers: &[(&str, &str)],
) -> reqwest::Response {
    let mut req = g.client.post(format!("{}{path}", g.base)).json(body);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    req.send().await.unwrap()
}

/// `(event name, data)` of an SSE body.
fn events(text: &str) -> Vec<(String, Value)> {
    text.split("\n\n")
        .filter(|e| !e.trim().is_empty())
        .map(|e| {
            let mut name = String::new();
            let mut data = Value::Null;
            for line in e.lines() {
                if let Some(n) = line.strip_prefix("event: ") {
                    name = n.to_owned();
                } else if let Some(d) = line.strip_prefix("data: ") {
                    data = serde_json::from_str(d).unwrap_or_else(|_| panic!("bad data: {d}"));
                }
            }
            (name, data)
        })
        .collect()
}

fn without_model(mut v: Value) -> Value {
    v.as_object_mut().unwrap().remove("model");
    v
}

#[tokio::test]
async fn to_an_anthropic_provider_the_request_and_answer_pass_through() {
    let (a, _o, g) = both().await;
    a.reply(Reply::Json(200, claude_message()));
    let sent = claude_code_request("sonnet", false);
    let resp = post(
        &g,
        "/v1/messages",
        &sent,
        &[
            ("anthropic-version", "2023-06-01"),
            (
                "anthropic-beta",
                "prompt-caching-2024-07-31,interleaved-thinking-2025-05-14",
            ),
        ],
    )
    .await;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["x-infermux-provider"], "claude");
    let got: Value = resp.json().await.unwrap();
    // The caller gets the upstream's answer as sent but for model.
    assert_eq!(without_model(got.clone()), without_model(claude_message()));
    assert_eq!(got["model"], "sonnet");
    // The upstream got the caller's body as sent but for model.
    let seen = a.last();
    assert_eq!(seen.path_and_query, "/v1/messages");
    assert_eq!(seen.body["model"], "claude-sonnet-4-5");
    assert_eq!(without_model(seen.body.clone()), without_model(sent));
    assert_eq!(seen.header("x-api-key"), Some("ak-test"));
    assert_eq!(seen.header("anthropic-version"), Some("2023-06-01"));
    assert_eq!(
        seen.header("anthropic-beta"),
        Some("prompt-caching-2024-07-31,interleaved-thinking-2025-05-14")
    );
    // Cache tokens count as input, by kind, in the span.
    let span = g.spans.spans().pop().unwrap();
    assert_eq!(span.attrs.tokens_in, 125);
    assert_eq!(span.attrs.tokens_cached, 100);
    assert_eq!(span.attrs.tokens_cache_write, 5);
    assert_eq!(span.attrs.tokens_out, 9);
}

#[tokio::test]
async fn a_passed_through_stream_is_every_upstream_event_but_for_model() {
    let (a, _o, g) = both().await;
    a.reply(Reply::Sse(claude_events()));
    let resp = post(
        &g,
        "/v1/messages",
        &claude_code_request("claude-sonnet-4-5", true),
        &[],
    )
    .await;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-type"], "text/event-stream");
    let got = events(&resp.text().await.unwrap());
    let want = events(&claude_events().concat());
    assert_eq!(got.len(), want.len());
    for ((gn, gd), (wn, wd)) in got.iter().zip(&want) {
        assert_eq!(gn, wn);
        if gn == "message_start" {
            assert_eq!(gd["message"]["model"], "claude-sonnet-4-5");
            let (mut gd, mut wd) = (gd.clone(), wd.clone());
            gd["message"]["model"] = Value::Null;
            wd["message"]["model"] = Value::Null;
            assert_eq!(gd, wd);
        } else {
            assert_eq!(gd, wd);
        }
    }
    // An Anthropic stream carries its usage: nothing added upstream.
    assert!(a.last().body.get("stream_options").is_none());
    let span = g.spans.spans().pop().unwrap();
    assert_eq!(
        (
            span.attrs.tokens_in,
            span.attrs.tokens_out,
            span.attrs.usage_estimated
        ),
        (120, 7, false),
        "{span:?}"
    );
    assert_eq!(span.status, infermux::trace::SpanStatus::Ok, "{span:?}");
}

#[tokio::test]
async fn to_an_openai_provider_a_claude_code_request_is_translated_both_ways() {
    let (_a, o, g) = both().await;
    o.reply(Reply::Json(
        200,
        json!({"id": "chatcmpl-up", "object": "chat.completion", "created": 1, "model": "gpt-4o-2024",
            "choices": [{"index": 0, "finish_reason": "tool_calls", "message": {"role": "assistant",
                "content": "Reading it.", "tool_calls": [{"id": "call_9", "type": "function",
                "function": {"name": "Bash", "arguments": "{\"command\":\"cat src/main.rs\"}"}}]}}],
            "usage": {"prompt_tokens": 50, "completion_tokens": 12, "total_tokens": 62,
                "prompt_tokens_details": {"cached_tokens": 30}}}),
    ));
    let mut sent = claude_code_request("gpt-4o", false);
    sent.as_object_mut().unwrap().remove("unknown_future_field");
    sent["tool_choice"] = json!({"type": "any", "disable_parallel_tool_use": true});
    sent["stop_sequences"] = json!(["STOP"]);
    let resp = post(&g, "/v1/messages", &sent, &[]).await;
    assert_eq!(resp.status(), 200);
    let got: Value = resp.json().await.unwrap();
    assert_eq!(
        got,
        json!({"id": "chatcmpl-up", "type": "message", "role": "assistant", "model": "gpt-4o",
            "content": [
                {"type": "text", "text": "Reading it."},
                {"type": "tool_use", "id": "call_9", "name": "Bash", "input": {"command": "cat src/main.rs"}}
            ],
            "stop_reason": "tool_use", "stop_sequence": null,
            "usage": {"input_tokens": 20, "output_tokens": 12, "cache_read_input_tokens": 30,
                "cache_creation_input_tokens": 0}})
    );
    let up = o.last().body;
    assert_eq!(up["model"], "gpt-4o");
    assert_eq!(
        up["messages"],
        json!([
            {"role": "system", "content": "You are Claude Code.\nBe terse."},
            {"role": "user", "content": "What is in src?"},
            {"role": "assistant", "content": "Let me look.", "tool_calls": [{"id": "toolu_01",
                "type": "function", "function": {"name": "Bash", "arguments": "{\"command\":\"ls src\"}"}}]},
            {"role": "tool", "content": "main.rs", "tool_call_id": "toolu_01"}
        ])
    );
    assert_eq!(
        up["tools"],
        json!([{"type": "function", "function": {"name": "Bash", "description": "Runs a command",
            "parameters": {"type": "object", "properties": {"command": {"type": "string"}}, "required": ["command"]}}}])
    );
    assert_eq!(up["tool_choice"], "required");
    assert_eq!(up["parallel_tool_calls"], false);
    assert_eq!(up["user"], "user_42");
    assert_eq!(up["stop"], json!(["STOP"]));
    assert_eq!(up["max_tokens"], 2048);
    assert!(up.get("metadata").is_none() && up.get("system").is_none());
}

#[tokio::test]
async fn an_openai_stream_comes_back_as_anthropic_events_with_tool_use() {
    let (_a, o, g) = both().await;
    let chunk = |delta: Value, finish: Value| {
        data(
            json!({"id": "c", "object": "chat.completion.chunk", "created": 1, "model": "gpt-4o",
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}),
        )
    };
    o.reply(Reply::Sse(vec![
        chunk(json!({"role": "assistant", "content": ""}), Value::Null),
        chunk(json!({"content": "On it."}), Value::Null),
        chunk(
            json!({"tool_calls": [{"index": 0, "id": "call_1", "type": "function", "function": {"name": "Bash", "arguments": ""}}]}),
            Value::Null,
        ),
        chunk(
            json!({"tool_calls": [{"index": 0, "function": {"arguments": "{\"command\":"}}]}),
            Value::Null,
        ),
        chunk(
            json!({"tool_calls": [{"index": 0, "function": {"arguments": "\"ls\"}"}}]}),
            Value::Null,
        ),
        chunk(json!({}), json!("tool_calls")),
        data(json!({"id": "c", "object": "chat.completion.chunk", "created": 1, "model": "gpt-4o", "choices": [],
            "usage": {"prompt_tokens": 40, "completion_tokens": 11, "total_tokens": 51}})),
        "data: [DONE]\n\n".to_owned(),
    ]));
    let mut sent = claude_code_request("gpt-4o", true);
    sent.as_object_mut().unwrap().remove("unknown_future_field");
    let resp = post(&g, "/v1/messages", &sent, &[]).await;
    assert_eq!(resp.status(), 200);
    let got = events(&resp.text().await.unwrap());
    let names: Vec<&str> = got.iter().map(|(n, _)| n.as_str()).collect();
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
            "content_block_delta",
            "content_block_stop",
            "message_delta",
            "message_stop"
        ]
    );
    for (name, d) in &got {
        assert_eq!(d["type"], name.as_str(), "the data names its event");
    }
    assert_eq!(got[0].1["message"]["model"], "gpt-4o");
    assert_eq!(
        got[5].1["content_block"],
        json!({"type": "tool_use", "id": "call_1", "name": "Bash", "input": {}})
    );
    let args: String = got[6..8]
        .iter()
        .map(|(_, d)| d["delta"]["partial_json"].as_str().unwrap())
        .collect();
    assert_eq!(args, "{\"command\":\"ls\"}");
    assert_eq!(got[9].1["delta"]["stop_reason"], "tool_use");
    assert_eq!(got[9].1["usage"]["output_tokens"], 11);
    assert_eq!(got[9].1["usage"]["input_tokens"], 40);
    assert_eq!(
        o.last().body["stream_options"],
        json!({"include_usage": true})
    );
}

#[tokio::test]
async fn a_stream_that_dies_upstream_ends_with_an_error_event() {
    let (a, _o, g) = both().await;
    let mut cut = claude_events();
    cut.truncate(4);
    a.reply(Reply::Sse(cut));
    let resp = post(
        &g,
        "/v1/messages",
        &claude_code_request("sonnet", true),
        &[],
    )
    .await;
    let got = events(&resp.text().await.unwrap());
    let (name, last) = got.last().unwrap();
    assert_eq!(name, "error");
    assert_eq!(last["type"], "error");
    assert_eq!(last["error"]["type"], "api_error");
    assert!(got.iter().all(|(n, _)| n != "message_stop"));
}

#[tokio::test]
async fn errors_are_in_anthropics_shape_with_the_contracts_status() {
    let (a, o, g) = both().await;
    let cases: Vec<(Value, u16, &str, &str)> = vec![
        (
            json!({"model": "sonnet", "messages": [{"role": "user", "content": "x"}]}),
            400,
            "invalid_request_error",
            "max_tokens",
        ),
        (
            json!({"model": "sonnet", "max_tokens": 5, "messages": [{"role": "user", "content": [
                {"type": "tool_result", "tool_use_id": "nope", "content": "x"}]}]}),
            400,
            "invalid_request_error",
            "messages[0].content[0].tool_use_id",
        ),
        (
            json!({"model": "sonnet", "max_tokens": 5, "messages": [{"role": "user", "content": [{"type": "hologram"}]}]}),
            400,
            "invalid_request_error",
            "messages[0].content[0].type",
        ),
        (
            json!({"model": "no-such-model", "max_tokens": 5, "messages": [{"role": "user", "content": "x"}]}),
            404,
            "not_found_error",
            "no-such-model",
        ),
        // To an OpenAI provider, a field with no counterpart is refused.
        (
            json!({"model": "gpt-4o", "max_tokens": 5, "messages": [{"role": "user", "content": "x"}],
                "mcp_servers": [{"type": "url", "url": "https://x", "name": "x"}]}),
            400,
            "invalid_request_error",
            "mcp_servers",
        ),
    ];
    for (body, status, kind, names) in cases {
        let resp = post(&g, "/v1/messages", &body, &[]).await;
        assert_eq!(resp.status(), status, "{body}");
        let got: Value = resp.json().await.unwrap();
        assert_eq!(got["type"], "error", "{got}");
        assert_eq!(got["error"]["type"], kind, "{got}");
        let message = got["error"]["message"].as_str().unwrap();
        assert!(message.contains(names), "{message}");
    }
    // Nothing refused reached an upstream.
    assert!(a.seen().is_empty() && o.seen().is_empty());
    // A wrong content type, too, and the next good request succeeds.
    let resp = g
        .client
        .post(format!("{}/v1/messages", g.base))
        .header("content-type", "text/plain")
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 415);
    let got: Value = resp.json().await.unwrap();
    assert_eq!(got["error"]["type"], "invalid_request_error");
    a.reply(Reply::Json(200, claude_message()));
    let resp = post(
        &g,
        "/v1/messages",
        &claude_code_request("sonnet", false),
        &[],
    )
    .await;
    assert_eq!(resp.status(), 200);
}

#[tokio::test]
async fn count_tokens_asks_an_anthropic_provider_and_estimates_otherwise() {
    let (a, _o, g) = both().await;
    a.reply(Reply::Json(200, json!({"input_tokens": 1234})));
    let body = json!({"model": "sonnet", "system": "Be brief.",
        "messages": [{"role": "user", "content": "How many tokens is this?"}]});
    let resp = post(&g, "/v1/messages/count_tokens", &body, &[]).await;
    assert_eq!(resp.status(), 200);
    assert!(resp.headers().get("x-infermux-usage-estimated").is_none());
    assert_eq!(
        resp.json::<Value>().await.unwrap(),
        json!({"input_tokens": 1234})
    );
    let seen = a.last();
    assert_eq!(seen.path_and_query, "/v1/messages/count_tokens");
    assert_eq!(
        seen.body,
        json!({"model": "claude-sonnet-4-5", "system": "Be brief.",
            "messages": [{"role": "user", "content": "How many tokens is this?"}]})
    );
    // An OpenAI provider has no count endpoint: the tokenizer's estimate.
    let mut body = body;
    body["model"] = json!("gpt-4o");
    let resp = post(&g, "/v1/messages/count_tokens", &body, &[]).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["x-infermux-usage-estimated"], "true");
    let n = resp.json::<Value>().await.unwrap()["input_tokens"]
        .as_u64()
        .unwrap();
    assert!((10..40).contains(&n), "{n}");
}
