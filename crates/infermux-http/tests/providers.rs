//! Real provider adapters against fake upstreams (real HTTP servers that record
//! what they get), through the real server: the OpenAI-compatible ingress and
//! the MIST routes, translated field by field in both directions.
#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests")]

mod upstream;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use infermux::Router;
use infermux::config::Config;
use infermux::testing::RecordingSink;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use upstream::{Gateway, Reply, Upstream, data, error_message, event};

fn openai_config(u: &Upstream) -> String {
    format!(
        r#"
providers:
  - name: openai
    type: openai
    api_key: sk-test
    base_url: "{}/v1"
    timeout: 2s
    models: [gpt-4o, gpt-4o-mini]
    model_aliases: {{fast: gpt-4o-mini}}
"#,
        u.url
    )
}

fn completion(content: &str, finish: &str) -> Value {
    json!({
        "id": "chatcmpl-up", "object": "chat.completion", "created": 1, "model": "gpt-4o-mini-2024",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": finish}],
        "usage": {"prompt_tokens": 11, "completion_tokens": 7, "total_tokens": 18}
    })
}

#[tokio::test]
async fn openai_requests_and_responses_translate_field_by_field() {
    let up = Upstream::start().await;
    up.reply(Reply::Json(200, completion("Bonjour", "length")));
    let gw = Gateway::start(&openai_config(&up)).await;
    let (status, headers, body) = gw
        .chat(json!({
            "model": "fast",
            "messages": [{"role": "developer", "content": "Be brief."}, {"role": "user", "content": [{"type": "text", "text": "Hello"}]}],
            "temperature": 0.3, "max_tokens": 50, "top_p": 0.9, "stop": "END",
            "tools": [{"type": "function", "function": {"name": "f", "parameters": {}}}],
            "response_format": {"type": "json_object"}, "seed": 7, "user": "u-1"
        }))
        .await;
    assert_eq!(status, 200, "{body}");

    let seen = up.last();
    assert_eq!(seen.path_and_query, "/v1/chat/completions");
    assert_eq!(seen.header("authorization"), Some("Bearer sk-test"));
    assert!(
        seen.header("traceparent")
            .is_some_and(|t| t.starts_with("00-") && t.len() == 55)
    );
    // Same dialect (SPEC §11): the caller's JSON as sent, `model` aside —
    // `developer`, text parts, the single `stop` and every unknown field.
    let mut want = json!({
        "model": "gpt-4o-mini",
        "messages": [{"role": "developer", "content": "Be brief."}, {"role": "user", "content": [{"type": "text", "text": "Hello"}]}],
        "temperature": 0.3, "max_tokens": 50, "top_p": 0.9, "stop": "END",
        "tools": [{"type": "function", "function": {"name": "f", "parameters": {}}}],
        "response_format": {"type": "json_object"}, "seed": 7, "user": "u-1"
    });
    assert_eq!(
        seen.body, want,
        "the alias is resolved, nothing else changes"
    );
    want["model"] = json!("fast");

    assert_eq!(body["object"], "chat.completion");
    assert_eq!(body["model"], "fast", "the caller's model name comes back");
    assert_eq!(body["id"], "chatcmpl-up", "the upstream's id is kept");
    let mut answer = completion("Bonjour", "length");
    answer["model"] = json!("fast");
    assert_eq!(body, answer, "the answer is the upstream's, but for model");
    assert_eq!(
        body["choices"][0]["message"],
        json!({"role": "assistant", "content": "Bonjour"})
    );
    assert_eq!(body["choices"][0]["finish_reason"], "length");
    assert_eq!(
        body["usage"],
        json!({"prompt_tokens": 11, "completion_tokens": 7, "total_tokens": 18})
    );
    assert_eq!(headers["x-infermux-provider"], "openai");
    assert_eq!(headers["x-infermux-model"], "gpt-4o-mini");
    assert_eq!(headers["x-infermux-prompt-tokens"], "11");
    assert_eq!(headers["x-infermux-completion-tokens"], "7");
    // Built-in price of gpt-4o-mini: $0.15 in, $0.60 out per million tokens.
    let cost: f64 = headers["x-infermux-cost"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        (cost - (11.0 * 0.15 + 7.0 * 0.60) / 1e6).abs() < 1e-15,
        "{cost}"
    );

    let span = &gw.spans.spans()[0];
    assert_eq!(
        (&*span.attrs.provider, &*span.attrs.model),
        ("openai", "gpt-4o-mini")
    );
    assert_eq!((span.attrs.tokens_in, span.attrs.tokens_out), (11, 7));
    // The upstream got the span's trace.
    assert!(
        seen.header("traceparent")
            .unwrap()
            .contains(&span.trace_id.to_string())
    );
}

/// An OpenAI stream event with these `choices`.
fn choices_chunk(choices: Value) -> String {
    data(
        json!({"id": "c", "object": "chat.completion.chunk", "created": 1, "model": "m", "choices": choices}),
    )
}

/// An OpenAI stream event with one choice's delta.
fn chunk(delta: Value, finish: Value) -> String {
    choices_chunk(json!([{"index": 0, "delta": delta, "finish_reason": finish}]))
}

fn openai_stream_events() -> Vec<String> {
    vec![
        chunk(json!({"role": "assistant", "content": ""}), Value::Null),
        chunk(json!({"content": "Hel"}), Value::Null),
        chunk(json!({"content": "lo"}), Value::Null),
        chunk(json!({}), json!("stop")),
        data(
            json!({"id": "c", "object": "chat.completion.chunk", "created": 1, "model": "m", "choices": [],
                    "usage": {"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7}}),
        ),
        "data: [DONE]\n\n".to_owned(),
    ]
}

fn parse(events: &[String]) -> (String, Vec<Value>, bool) {
    let done = events.last().is_some_and(|e| e == "[DONE]");
    let values: Vec<Value> = events
        .iter()
        .filter(|e| *e != "[DONE]")
        .map(|e| serde_json::from_str(e).unwrap())
        .collect();
    let text = values
        .iter()
        .filter_map(|v| {
            v["choices"]
                .get(0)
                .and_then(|c| c["delta"]["content"].as_str())
        })
        .collect();
    (text, values, done)
}

#[tokio::test]
async fn openai_streams_pass_through_with_usage_only_when_asked() {
    let up = Upstream::start().await;
    up.always(Reply::Sse(openai_stream_events()));
    let gw = Gateway::start(&openai_config(&up)).await;
    let req = |usage: bool| {
        let mut r = json!({"model": "gpt-4o", "stream": true, "messages": [{"role": "user", "content": "Hi"}]});
        if usage {
            r["stream_options"] = json!({"include_usage": true});
        }
        r
    };

    let (text, values, done) = parse(&gw.chat_stream(req(true)).await);
    assert!(done);
    assert_eq!(text, "Hello");
    assert!(
        values
            .iter()
            .all(|v| v["object"] == "chat.completion.chunk" && v["model"] == "gpt-4o")
    );
    let usage: Vec<&Value> = values.iter().filter(|v| v.get("usage").is_some()).collect();
    assert_eq!(usage.len(), 1, "exactly one usage chunk");
    assert_eq!(usage[0]["choices"], json!([]));
    assert_eq!(
        usage[0]["usage"],
        json!({"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7})
    );
    assert_eq!(
        values.last().unwrap().get("usage"),
        usage[0].get("usage"),
        "usage comes last, before [DONE]"
    );
    assert_eq!(
        values
            .iter()
            .filter(|v| v["choices"][0]["finish_reason"] == "stop")
            .count(),
        1
    );

    let seen = up.last();
    assert_eq!(seen.body["stream"], true);
    assert_eq!(
        seen.body["stream_options"],
        json!({"include_usage": true}),
        "usage is always asked of the upstream"
    );

    let (text, values, done) = parse(&gw.chat_stream(req(false)).await);
    assert!(done);
    assert_eq!(text, "Hello");
    assert!(
        values.iter().all(|v| v.get("usage").is_none()),
        "no usage chunk unless asked"
    );
    let span = gw.spans.spans().pop().unwrap();
    assert_eq!(
        (span.attrs.tokens_in, span.attrs.tokens_out),
        (5, 2),
        "the span has the stream's usage"
    );
}

fn anthropic_config(u: &Upstream) -> String {
    format!(
        r#"
providers:
  - name: claude
    type: anthropic
    api_key: ak-test
    base_url: "{}"
    models: [claude-sonnet-4-5]
    model_aliases: {{gpt-4o: claude-sonnet-4-5}}
"#,
        u.url
    )
}

#[tokio::test]
async fn anthropic_translation_both_ways() {
    let up = Upstream::start().await;
    up.reply(Reply::Json(
        200,
        json!({
            "id": "msg_1", "type": "message", "role": "assistant", "model": "claude-sonnet-4-5",
            "content": [{"type": "text", "text": "Hello "}, {"type": "text", "text": "there"}],
            "stop_reason": "max_tokens", "usage": {"input_tokens": 12, "output_tokens": 3}
        }),
    ));
    let gw = Gateway::start(&anthropic_config(&up)).await;
    let (status, headers, body) = gw
        .chat(json!({
            "model": "gpt-4o",
            "messages": [{"role": "system", "content": "One."}, {"role": "system", "content": "Two."},
                         {"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Yo"}, {"role": "user", "content": "Again"}],
            "stop": ["X", "Y"], "temperature": 0.5, "seed": 1, "store": true, "response_format": {"type": "text"}
        }))
        .await;
    assert_eq!(status, 200, "{body}");
    let seen = up.last();
    assert_eq!(seen.path_and_query, "/v1/messages");
    assert_eq!(seen.header("x-api-key"), Some("ak-test"));
    assert_eq!(seen.header("anthropic-version"), Some("2023-06-01"));
    assert!(seen.header("authorization").is_none());
    assert_eq!(
        seen.body,
        json!({
            "model": "claude-sonnet-4-5", "max_tokens": 4096, "system": "One.\n\nTwo.",
            "messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Yo"}, {"role": "user", "content": "Again"}],
            "temperature": 0.5, "stop_sequences": ["X", "Y"]
        }),
        "system lifted, stop renamed, max_tokens defaulted, fields that cannot change the answer dropped"
    );
    assert_eq!(body["model"], "gpt-4o");
    assert_eq!(body["choices"][0]["message"]["content"], "Hello there");
    assert_eq!(body["choices"][0]["finish_reason"], "length");
    assert_eq!(
        body["usage"],
        json!({"prompt_tokens": 12, "completion_tokens": 3, "total_tokens": 15})
    );
    assert_eq!(headers["x-infermux-model"], "claude-sonnet-4-5");

    // The MIST route reaches the same adapter.
    up.reply(Reply::Json(200, json!({"type": "message", "content": [{"type": "text", "text": "ok"}],
                                     "stop_reason": "end_turn", "usage": {"input_tokens": 1, "output_tokens": 1}})));
    let resp = gw
        .post(
            "/infer",
            json!({"model": "claude-sonnet-4-5", "messages": [{"role": "user", "content": "x"}],
                                         "params": {"max_tokens": 10}}),
        )
        .await;
    let body: Value = resp.json().await.unwrap();
    assert_eq!(
        (
            body["content"].clone(),
            body["provider"].clone(),
            body["finish_reason"].clone()
        ),
        (json!("ok"), json!("claude"), json!("stop"))
    );
    assert_eq!(up.last().body["max_tokens"], 10);
}

#[tokio::test]
async fn anthropic_stream_events_become_openai_chunks() {
    let up = Upstream::start().await;
    up.always(Reply::Sse(vec![
        event("message_start", json!({"type": "message_start", "message": {"id": "m", "usage": {"input_tokens": 9, "output_tokens": 1}}})),
        event("content_block_start", json!({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}})),
        event("ping", json!({"type": "ping"})),
        event("content_block_delta", json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "Hi "}})),
        event("content_block_delta", json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "you"}})),
        event("content_block_stop", json!({"type": "content_block_stop", "index": 0})),
        event("message_delta", json!({"type": "message_delta", "delta": {"stop_reason": "end_turn"}, "usage": {"output_tokens": 4}})),
        event("message_stop", json!({"type": "message_stop"})),
    ]));
    let gw = Gateway::start(&anthropic_config(&up)).await;
    let events = gw
        .chat_stream(json!({"model": "claude-sonnet-4-5", "stream": true, "stream_options": {"include_usage": true},
                            "messages": [{"role": "user", "content": "Hi"}]}))
        .await;
    let (text, values, done) = parse(&events);
    assert!(done);
    assert_eq!(text, "Hi you");
    assert_eq!(
        values
            .iter()
            .filter(|v| v["choices"][0]["finish_reason"] == "stop")
            .count(),
        1
    );
    assert_eq!(
        values.last().unwrap()["usage"],
        json!({"prompt_tokens": 9, "completion_tokens": 4, "total_tokens": 13})
    );
    assert_eq!(up.last().body["stream"], true);
}

#[tokio::test]
async fn azure_and_ollama_addressing() {
    let up = Upstream::start().await;
    up.always(Reply::Json(200, completion("hi", "stop")));
    let gw = Gateway::start(&format!(
        r#"
providers:
  - name: azure
    type: azure_openai
    api_key: az-key
    base_url: "{0}"
    models: [prod-gpt4o]
  - name: local
    type: ollama
    base_url: "{0}/v1"
    models: [llama3]
"#,
        up.url
    ))
    .await;
    let (status, _, _) = gw
        .chat(json!({"model": "prod-gpt4o", "messages": [{"role": "user", "content": "x"}]}))
        .await;
    assert_eq!(status, 200);
    let seen = up.last();
    assert_eq!(
        seen.path_and_query,
        "/openai/deployments/prod-gpt4o/chat/completions?api-version=2024-10-21"
    );
    assert_eq!(seen.header("api-key"), Some("az-key"));
    assert!(seen.header("authorization").is_none());

    let (status, headers, _) = gw
        .chat(json!({"model": "llama3", "messages": [{"role": "user", "content": "x"}]}))
        .await;
    assert_eq!(status, 200);
    assert_eq!(
        headers["x-infermux-cost"], "0",
        "no price for a local model"
    );
    let seen = up.last();
    assert_eq!(seen.path_and_query, "/v1/chat/completions");
    assert!(
        seen.header("authorization").is_none(),
        "ollama takes no key"
    );
    assert_eq!(seen.body["model"], "llama3");
}

#[tokio::test]
async fn upstream_failures_follow_the_error_table() {
    let up = Upstream::start().await;
    let gw = Gateway::start(&openai_config(&up)).await;
    let cases = [
        (
            Reply::Json(500, json!({"error": {"message": "boom"}})),
            502,
            "upstream_error",
            "boom",
        ),
        (
            Reply::Json(503, json!({"error": {"message": "overloaded"}})),
            502,
            "upstream_error",
            "overloaded",
        ),
        (
            Reply::Json(
                401,
                json!({"error": {"message": "Incorrect API key provided"}}),
            ),
            401,
            "upstream_rejected",
            "Incorrect API key",
        ),
        (
            Reply::Json(
                400,
                json!({"error": {"message": "max_tokens is too large"}}),
            ),
            400,
            "upstream_rejected",
            "max_tokens is too large",
        ),
        (
            Reply::Json(
                404,
                json!({"error": {"message": "The model does not exist"}}),
            ),
            404,
            "upstream_rejected",
            "does not exist",
        ),
        (
            Reply::Json(429, json!({"error": {"message": "Rate limit reached"}})),
            429,
            "rate_limit",
            "Rate limit reached",
        ),
        (
            Reply::Raw(200, "application/json", "{not json".into()),
            502,
            "upstream_error",
            "unreadable",
        ),
        (
            Reply::Raw(502, "text/html", "<html>bad gateway</html>".into()),
            502,
            "upstream_error",
            "bad gateway",
        ),
        (
            Reply::Json(200, json!({"error": {"message": "quota"}})),
            502,
            "upstream_error",
            "quota",
        ),
        (
            Reply::Json(200, json!({"choices": []})),
            502,
            "upstream_error",
            "no choices",
        ),
    ];
    for (reply, status, code, text) in cases {
        up.reply(reply);
        let (got, _, body) = gw
            .chat(json!({"model": "gpt-4o", "messages": [{"role": "user", "content": "x"}]}))
            .await;
        assert_eq!(got, status, "{body}");
        assert_eq!(body["error"]["code"], code, "{body}");
        let message = error_message(&body);
        assert!(message.contains(text), "{message}");
        assert!(!message.contains("sk-test"), "no secrets in errors");
    }
    // A stream request answered without an event stream.
    up.reply(Reply::Json(200, completion("not a stream", "stop")));
    let resp = gw.post("/v1/chat/completions", json!({"model": "gpt-4o", "stream": true, "messages": [{"role": "user", "content": "x"}]})).await;
    assert_eq!(resp.status(), 502);
}

#[tokio::test]
async fn a_connection_refused_upstream_is_a_502_and_a_hang_is_a_504() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let dead = listener.local_addr().unwrap();
    drop(listener);
    let hang = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let hang_addr = hang.local_addr().unwrap();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = hang.accept().await {
            held.push(s);
        }
    });
    let gw = Gateway::start(&format!(
        r#"
providers:
  - name: dead
    type: openai
    base_url: "http://{dead}/v1"
    models: [d]
  - name: slow
    type: openai
    base_url: "http://{hang_addr}/v1"
    timeout: 300ms
    models: [s]
"#
    ))
    .await;
    let (status, _, body) = gw
        .chat(json!({"model": "d", "messages": [{"role": "user", "content": "x"}]}))
        .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (502, Some("upstream_error")),
        "{body}"
    );
    let started = Instant::now();
    let (status, _, body) = gw
        .chat(json!({"model": "s", "messages": [{"role": "user", "content": "x"}]}))
        .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (504, Some("upstream_timeout")),
        "{body}"
    );
    assert!(started.elapsed() < Duration::from_secs(3));
}

#[tokio::test]
async fn an_upstream_that_dies_mid_stream_ends_the_stream_with_an_error_event() {
    let up = Upstream::start().await;
    let mut events = openai_stream_events();
    events.truncate(2); // the role chunk and "Hel", then the connection ends
    up.always(Reply::Sse(events));
    let gw = Gateway::start(&openai_config(&up)).await;
    let events = gw.chat_stream(json!({"model": "gpt-4o", "stream": true, "messages": [{"role": "user", "content": "x"}]})).await;
    let last: Value = serde_json::from_str(events.last().unwrap()).unwrap();
    assert_eq!(last["error"]["code"], "upstream_error", "{events:?}");
    assert!(!events.iter().any(|e| e == "[DONE]"));
    assert!(
        events.iter().any(|e| e.contains("Hel")),
        "what arrived was forwarded"
    );
    let span = gw.spans.spans().pop().unwrap();
    assert_eq!(span.attrs.error_code, Some("upstream_error"));
}

#[tokio::test]
async fn a_client_that_disconnects_mid_stream_cancels_the_upstream_request() {
    let up = Upstream::start().await;
    let mut events = openai_stream_events();
    events.truncate(2);
    up.always(Reply::SseHang(events));
    let gw = Gateway::start(&openai_config(&up)).await;
    let mut resp = gw.post("/v1/chat/completions", json!({"model": "gpt-4o", "stream": true, "messages": [{"role": "user", "content": "x"}]})).await;
    let first = resp.chunk().await.unwrap().unwrap();
    assert!(String::from_utf8_lossy(&first).starts_with("data: "));
    drop(resp);
    let deadline = Instant::now() + Duration::from_secs(5);
    while up.abandoned() == 0 {
        assert!(
            Instant::now() < deadline,
            "the upstream stream was never abandoned"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    while gw.spans.spans().is_empty() {
        assert!(Instant::now() < deadline, "no span");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(gw.spans.spans()[0].attrs.error_code, Some("cancelled"));
}

#[tokio::test]
async fn a_client_that_goes_away_before_the_answer_cancels_the_upstream_request() {
    let up = Upstream::start().await;
    up.always(Reply::JsonHang);
    let gw = Gateway::start(&openai_config(&up)).await;
    let gone = gw
        .client
        .post(format!("{}/v1/chat/completions", gw.base))
        .timeout(Duration::from_millis(300))
        .json(&json!({"model": "gpt-4o", "messages": [{"role": "user", "content": "x"}]}))
        .send()
        .await;
    assert!(gone.unwrap_err().is_timeout());
    let deadline = Instant::now() + Duration::from_secs(5);
    while up.abandoned() == 0 || gw.spans.spans().is_empty() {
        assert!(
            Instant::now() < deadline,
            "the upstream call was never abandoned (or no span)"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(gw.spans.spans()[0].attrs.error_code, Some("cancelled"));
}

#[tokio::test]
async fn malformed_chat_requests_are_400s_naming_the_field() {
    let up = Upstream::start().await;
    let gw = Gateway::start(&openai_config(&up)).await;
    let cases = [
        (json!({"model": "gpt-4o", "messages": []}), "messages:"),
        (json!({"model": "gpt-4o"}), "body: missing field `messages`"),
        (
            json!({"model": "gpt-4o", "messages": "hi"}),
            "messages: invalid type",
        ),
        (
            json!({"model": "gpt-4o", "messages": [{"role": "wizard", "content": "x"}]}),
            "messages[0].role:",
        ),
        (
            json!({"model": "gpt-4o", "messages": [{"role": "user", "content": 5}]}),
            "messages[0].content: invalid type: integer `5`, expected a string or an array of content parts",
        ),
        (
            json!({"model": "gpt-4o", "messages": [{"role": "user", "content": "x"}], "n": 0}),
            "n: 0",
        ),
        (
            json!({"model": "gpt-4o", "messages": [{"role": "user", "content": "x"}], "max_tokens": -3}),
            "max_tokens: -3 is less than 1",
        ),
        (
            json!({"model": "gpt-4o", "messages": [{"role": "user", "content": "x"}], "max_completion_tokens": 0}),
            "max_completion_tokens: 0 is less than 1",
        ),
        (
            json!({"model": 5, "messages": [{"role": "user", "content": "x"}]}),
            "model: invalid type: integer `5`",
        ),
        (
            json!({"model": "gpt-4o", "messages": [{"role": "user", "content": "x"}], "stream_options": 3}),
            "stream_options: invalid type",
        ),
        (
            json!({"model": "gpt-4o", "messages": [{"role": "user", "content": "x"}], "temperature": "hot"}),
            "temperature: invalid type",
        ),
        (
            json!({"model": "gpt-4o", "messages": [{"role": "user", "content": [{"image_url": {"url": "x"}}]}]}),
            "messages[0].content[0].type:",
        ),
        (
            json!({"model": "gpt-4o", "messages": [{"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text"}]}]}),
            "messages[0].content[1].text:",
        ),
    ];
    for (req, want) in cases {
        let (status, _, body) = gw.chat(req).await;
        assert_eq!(status, 400, "{body}");
        assert_eq!(body["error"]["code"], "invalid_request");
        let message = error_message(&body);
        assert!(message.starts_with(want), "want {want:?}, got {message:?}");
    }
    assert!(
        up.seen().is_empty(),
        "nothing malformed reached the upstream"
    );
    let (status, _, body) = gw
        .chat(json!({"model": "nope", "messages": [{"role": "user", "content": "x"}]}))
        .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (404, Some("model_not_found"))
    );
}

#[tokio::test]
async fn models_lists_every_routable_model_and_alias() {
    let up = Upstream::start().await;
    let gw = Gateway::start(&openai_config(&up)).await;
    let body: Value = gw
        .client
        .get(format!("{}/v1/models", gw.base))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(body["object"], "list");
    let ids: Vec<&str> = body["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["gpt-4o", "gpt-4o-mini", "fast"]);
    assert!(
        body["data"]
            .as_array()
            .unwrap()
            .iter()
            .all(|m| m["object"] == "model" && m["owned_by"] == "openai")
    );

    // One model, as `models.retrieve` asks for it; slashes allowed in ids.
    let get = |id: &str| gw.client.get(format!("{}/v1/models/{id}", gw.base)).send();
    let resp = get("fast").await.unwrap();
    assert_eq!(resp.status(), 200);
    let one: Value = resp.json().await.unwrap();
    assert_eq!(
        one,
        json!({"id": "fast", "object": "model", "created": 0, "owned_by": "openai"})
    );
    let resp = get("meta-llama/Llama-3-8B").await.unwrap();
    assert_eq!(resp.status(), 404);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["error"]["code"], "model_not_found");
    assert!(
        error_message(&body).contains("\"meta-llama/Llama-3-8B\""),
        "{body}"
    );
}

#[tokio::test]
async fn configured_prices_override_the_built_in_table() {
    let up = Upstream::start().await;
    up.always(Reply::Json(200, completion("x", "stop")));
    let yaml = format!(
        "{}pricing:\n  openai: {{gpt-4o: {{input_per_million: 1.0, output_per_million: 3.0}}}}\n",
        openai_config(&up)
    );
    let config = Config::parse(&yaml, &HashMap::<String, String>::new(), true).unwrap();
    let registry = infermux_providers::registry_from_config(&config).unwrap();
    let spans = Arc::new(RecordingSink::default());
    let router = Router::new(Arc::new(registry), spans.clone())
        .with_pricing(infermux::cost::Pricing::new(&config.pricing));
    let resp = router
        .infer(&infermux::InferRequest::prompt("gpt-4o", "x"))
        .await
        .unwrap();
    assert!(
        (resp.cost_usd - (11.0 * 1.0 + 7.0 * 3.0) / 1e6).abs() < 1e-15,
        "{}",
        resp.cost_usd
    );
    assert!((spans.spans()[0].attrs.cost_usd - resp.cost_usd).abs() < 1e-18);
    // Not configured: the built-in price of gpt-4o-mini.
    let resp = router
        .infer(&infermux::InferRequest::prompt("fast", "x"))
        .await
        .unwrap();
    assert!((resp.cost_usd - (11.0 * 0.15 + 7.0 * 0.60) / 1e6).abs() < 1e-15);
}

#[tokio::test]
async fn missing_upstream_usage_is_estimated_with_the_tokenizer_and_flagged() {
    let up = Upstream::start().await;
    let gw = Gateway::start(&openai_config(&up)).await;
    up.reply(Reply::Json(200, json!({"choices": [{"index": 0, "message": {"role": "assistant", "content": "Hello world"}, "finish_reason": "stop"}]})));
    let resp = gw
        .post(
            "/infer",
            json!({"model": "gpt-4o", "messages": [{"role": "user", "content": "Hello world"}]}),
        )
        .await;
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["usage_estimated"], true, "{body}");
    assert_eq!(
        body["tokens_out"], 2,
        "\"Hello world\" is 2 tokens in o200k_base"
    );
    assert_eq!(body["tokens_in"], 3 + 2 + 1 + 3);
    assert!(body["cost_usd"].as_f64().unwrap() > 0.0);
    assert!(gw.spans.spans()[0].attrs.usage_estimated);

    // A stream whose upstream sends no usage: the usage chunk carries the estimate.
    let mut events = openai_stream_events();
    events.remove(4);
    up.reply(Reply::Sse(events));
    let events = gw
        .chat_stream(
            json!({"model": "gpt-4o", "stream": true, "stream_options": {"include_usage": true},
                            "messages": [{"role": "user", "content": "Hello world"}]}),
        )
        .await;
    let (text, values, done) = parse(&events);
    assert!(done);
    assert_eq!(text, "Hello");
    assert_eq!(
        values.last().unwrap()["usage"],
        json!({"prompt_tokens": 9, "completion_tokens": 1, "total_tokens": 10})
    );
    let span = gw.spans.spans().pop().unwrap();
    assert!(span.attrs.usage_estimated, "the stream's span is flagged");
    assert_eq!((span.attrs.tokens_in, span.attrs.tokens_out), (9, 1));

    // The OpenAI edge flags an estimate with a header; real usage has none.
    up.reply(Reply::Json(200, json!({"choices": [{"index": 0, "message": {"role": "assistant", "content": "Hello world"}, "finish_reason": "stop"}]})));
    let (status, headers, body) = gw
        .chat(json!({"model": "gpt-4o", "messages": [{"role": "user", "content": "Hello world"}]}))
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(headers["x-infermux-usage-estimated"], "true");
    assert_eq!(body["usage"]["completion_tokens"], 2);
    up.reply(Reply::Json(200, completion("Hi", "stop")));
    let (_, headers, _) = gw
        .chat(json!({"model": "gpt-4o", "messages": [{"role": "user", "content": "Hello world"}]}))
        .await;
    assert!(headers.get("x-infermux-usage-estimated").is_none());
    up.always(Reply::Sse(openai_stream_events()));
    gw.chat_stream(
        json!({"model": "gpt-4o", "stream": true, "messages": [{"role": "user", "content": "Hi"}]}),
    )
    .await;
    assert!(!gw.spans.spans().pop().unwrap().attrs.usage_estimated);
}

#[tokio::test]
async fn embeddings_route_to_openai_compatible_providers_only() {
    let up = Upstream::start().await;
    up.reply(Reply::Json(
        200,
        json!({
            "object": "list", "model": "text-embedding-3-small",
            "data": [{"object": "embedding", "index": 1, "embedding": [0.5, 0.25]},
                     {"object": "embedding", "index": 0, "embedding": [1.0, 0.0]}],
            "usage": {"prompt_tokens": 4, "total_tokens": 4}
        }),
    ));
    let yaml = format!(
        "{}  - name: claude\n    type: anthropic\n    api_key: k\n    base_url: \"{}\"\n    models: [claude-sonnet-4-5]\n",
        openai_config(&up).replace(
            "models: [gpt-4o, gpt-4o-mini]",
            "models: [gpt-4o, gpt-4o-mini, text-embedding-3-small]"
        ),
        up.url
    );
    let gw = Gateway::start(&yaml).await;
    let resp = gw
        .post(
            "/v1/embeddings",
            json!({"model": "text-embedding-3-small", "input": ["a", "b"], "dimensions": 2}),
        )
        .await;
    assert_eq!(resp.status(), 200);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(
        body["data"][0]["embedding"],
        json!([1.0, 0.0]),
        "ordered by index"
    );
    assert_eq!(body["data"][1]["embedding"], json!([0.5, 0.25]));
    assert_eq!(body["usage"]["prompt_tokens"], 4);
    let seen = up.last();
    assert_eq!(seen.path_and_query, "/v1/embeddings");
    assert_eq!(
        seen.body,
        json!({"model": "text-embedding-3-small", "input": ["a", "b"], "encoding_format": "float", "dimensions": 2})
    );

    let resp = gw
        .post(
            "/v1/embeddings",
            json!({"model": "claude-sonnet-4-5", "input": "a"}),
        )
        .await;
    assert_eq!(resp.status(), 400);
    let body: Value = resp.json().await.unwrap();
    assert!(
        error_message(&body).contains("does not serve embeddings"),
        "{body}"
    );
    let resp = gw
        .post(
            "/v1/embeddings",
            json!({"model": "gpt-4o", "input": [[1, 2, 3]]}),
        )
        .await;
    assert_eq!(resp.status(), 400);
}

#[tokio::test]
async fn a_failing_provider_falls_back_to_the_next_one_serving_the_model() {
    let primary = Upstream::start().await;
    let backup = Upstream::start().await;
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let dead = listener.local_addr().unwrap();
    drop(listener);
    let yaml = format!(
        r#"
providers:
  - name: dead
    type: openai
    base_url: "http://{dead}/v1"
    models: [gpt-4o]
  - name: primary
    type: openai
    base_url: "{}/v1"
    models: [gpt-4o]
  - name: backup
    type: openai
    base_url: "{}/v1"
    models: [gpt-4o]
routing:
  max_attempts: 3
"#,
        primary.url, backup.url
    );
    let gw = Gateway::start(&yaml).await;
    primary.always(Reply::Json(
        503,
        json!({"error": {"message": "overloaded"}}),
    ));
    backup.always(Reply::Json(200, completion("from backup", "stop")));
    let (status, headers, body) = gw
        .chat(json!({"model": "gpt-4o", "messages": [{"role": "user", "content": "x"}]}))
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["choices"][0]["message"]["content"], "from backup");
    assert_eq!(headers["x-infermux-provider"], "backup");
    assert_eq!((primary.seen().len(), backup.seen().len()), (1, 1));
    let span = gw.spans.spans().pop().unwrap();
    assert_eq!((&*span.attrs.provider, span.attrs.attempts), ("backup", 3));

    // Streams fall back too, before their first byte.
    backup.always(Reply::Sse(openai_stream_events()));
    let (text, _, done) = parse(
        &gw.chat_stream(json!({"model": "gpt-4o", "stream": true, "messages": [{"role": "user", "content": "x"}]}))
            .await,
    );
    assert!(done);
    assert_eq!(text, "Hello");

    // An upstream 4xx is the caller's problem: no fallback.
    primary.always(Reply::Json(
        400,
        json!({"error": {"message": "bad request"}}),
    ));
    let before = backup.seen().len();
    let (status, _, _) = gw
        .chat(json!({"model": "gpt-4o", "messages": [{"role": "user", "content": "x"}]}))
        .await;
    assert_eq!(status, 400);
    assert_eq!(backup.seen().len(), before);
}

/// The routing issue's acceptance: with two providers and the priority
/// strategy, taking the first down moves traffic to the second with no failed
/// request, its circuit opens (status API and metrics say so), and traffic
/// returns when it recovers.
#[tokio::test]
async fn traffic_moves_away_from_a_dead_provider_and_comes_back() {
    let primary = Upstream::start().await;
    let backup = Upstream::start().await;
    let yaml = format!(
        r#"
providers:
  - name: primary
    type: openai
    base_url: "{}/v1"
    models: [gpt-4o]
  - name: backup
    type: openai
    base_url: "{}/v1"
    models: [gpt-4o]
circuit_breaker:
  consecutive_failures: 2
  recovery_window: 200ms
"#,
        primary.url, backup.url
    );
    let gw = Gateway::start(&yaml).await;
    let ask =
        || gw.chat(json!({"model": "gpt-4o", "messages": [{"role": "user", "content": "x"}]}));
    let get = |path: &str| {
        let (client, url) = (gw.client.clone(), format!("{}{path}", gw.base));
        async move { client.get(url).send().await.unwrap().text().await.unwrap() }
    };
    primary.always(Reply::Json(200, completion("primary", "stop")));
    backup.always(Reply::Json(200, completion("backup", "stop")));
    let (status, headers, _) = ask().await;
    assert_eq!(
        (status, headers["x-infermux-provider"].to_str().unwrap()),
        (200, "primary")
    );

    // The primary goes down: no request fails, the circuit opens.
    primary.always(Reply::Json(500, json!({"error": {"message": "down"}})));
    for _ in 0..5 {
        let (status, headers, body) = ask().await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(headers["x-infermux-provider"], "backup");
    }
    assert_eq!(
        primary.seen().len(),
        1 + 2,
        "two failures opened the circuit; then no traffic"
    );
    let providers: Value = serde_json::from_str(&get("/_infermux/providers").await).unwrap();
    assert_eq!(providers["providers"][0]["circuit"], "open");
    assert_eq!(providers["providers"][0]["healthy"], false);
    let metrics = get("/_infermux/metrics").await;
    assert!(
        metrics.contains(r#"infermux_circuit_state{provider="primary"} 2"#),
        "{metrics}"
    );
    assert!(metrics.contains("infermux_fallbacks_total 2"), "{metrics}");

    // It recovers: after the recovery window one probe goes to it, succeeds,
    // and the traffic comes back.
    primary.always(Reply::Json(200, completion("primary", "stop")));
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let (status, headers, _) = ask().await;
        assert_eq!(status, 200);
        if headers["x-infermux-provider"] == "primary" {
            break;
        }
        assert!(Instant::now() < deadline, "traffic never came back");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (_, headers, _) = ask().await;
    assert_eq!(headers["x-infermux-provider"], "primary");
    let providers: Value = serde_json::from_str(&get("/_infermux/providers").await).unwrap();
    assert_eq!(providers["providers"][0]["circuit"], "closed");
}

#[tokio::test]
async fn a_provider_failing_its_health_check_gets_no_traffic() {
    let sick = Upstream::start().await;
    let well = Upstream::start().await;
    sick.always(Reply::Json(500, json!({"error": {"message": "sick"}})));
    well.always(Reply::Json(200, json!({"object": "list", "data": []})));
    let yaml = format!(
        "providers:\n  - name: sick\n    type: ollama\n    base_url: \"{}/v1\"\n    models: [m]\n    health_check: {{interval: 50ms}}\n  - name: well\n    type: ollama\n    base_url: \"{}/v1\"\n    models: [m]\n    health_check: {{interval: 50ms}}\n",
        sick.url, well.url
    );
    let config = Config::parse(&yaml, &HashMap::<String, String>::new(), true).unwrap();
    let registry = Arc::new(infermux_providers::registry_from_config(&config).unwrap());
    let checks: Vec<_> = config
        .providers
        .iter()
        .map(|p| (p.name.clone(), p.health_check))
        .collect();
    let handles = infermux::health::spawn_checks(&registry, &checks);
    let deadline = Instant::now() + Duration::from_secs(5);
    while registry.entries()[0]
        .healthy
        .load(std::sync::atomic::Ordering::Relaxed)
    {
        assert!(
            Instant::now() < deadline,
            "the sick provider never failed its check"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let check = sick.last();
    assert_eq!(check.path_and_query, "/v1/models", "the check lists models");
    let before = sick.seen().len();
    well.always(Reply::Json(200, completion("well", "stop")));
    let router = Router::without_spans(registry.clone());
    let resp = router
        .infer(&infermux::InferRequest::prompt("m", "x"))
        .await
        .unwrap();
    assert_eq!(resp.provider, "well");
    assert!(
        sick.seen()
            .iter()
            .skip(before)
            .all(|s| s.path_and_query == "/v1/models"),
        "only checks reached it"
    );
    handles.iter().for_each(tokio::task::JoinHandle::abort);
}

/// A tool-calling conversation as an OpenAI SDK sends it: tools offered, the
/// model's earlier call, and the tool's result.
fn tool_conversation(stream: bool) -> Value {
    json!({
        "model": "gpt-4o",
        "stream": stream,
        "tools": [{"type": "function", "function": {"name": "get_weather",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}],
        "tool_choice": "auto",
        "messages": [
            {"role": "user", "content": "Weather in Paris and Rome?"},
            {"role": "assistant", "content": null, "tool_calls": [{"id": "call_1", "type": "function",
                "function": {"name": "get_weather", "arguments": "{\"city\":\"Paris\"}"}}]},
            {"role": "tool", "tool_call_id": "call_1", "content": "18C, sunny"}
        ]
    })
}

fn rome_call() -> Value {
    json!([{"id": "call_2", "type": "function",
        "function": {"name": "get_weather", "arguments": "{\"city\":\"Rome\"}"}}])
}

#[tokio::test]
async fn tool_calls_pass_through_both_ways() {
    let up = Upstream::start().await;
    up.reply(Reply::Json(
        200,
        json!({
            "id": "chatcmpl-up", "object": "chat.completion", "created": 1, "model": "gpt-4o",
            "choices": [{"index": 0, "finish_reason": "tool_calls",
                "message": {"role": "assistant", "content": null, "tool_calls": rome_call()}}],
            "usage": {"prompt_tokens": 40, "completion_tokens": 12, "total_tokens": 52}
        }),
    ));
    let gw = Gateway::start(&openai_config(&up)).await;
    let (status, _, body) = gw.chat(tool_conversation(false)).await;
    assert_eq!(status, 200, "{body}");

    // Upstream: the conversation exactly as the caller sent it.
    let sent = tool_conversation(false);
    let seen = up.last();
    assert_eq!(seen.body["messages"], sent["messages"]);
    assert_eq!(seen.body["tools"], sent["tools"]);
    assert_eq!(seen.body["tool_choice"], "auto");

    // Caller: the model's calls, no text.
    let choice = &body["choices"][0];
    assert_eq!(choice["finish_reason"], "tool_calls");
    assert_eq!(choice["message"]["role"], "assistant");
    assert_eq!(choice["message"]["content"], Value::Null);
    assert_eq!(choice["message"]["tool_calls"], rome_call());
    assert_eq!(body["usage"]["completion_tokens"], 12);
}

#[tokio::test]
async fn streamed_tool_call_deltas_reach_the_caller_in_order() {
    let up = Upstream::start().await;
    let first = json!([{"index": 0, "id": "call_2", "type": "function",
        "function": {"name": "get_weather", "arguments": ""}}]);
    let second = json!([{"index": 0, "function": {"arguments": "{\"city\":\"Rome\"}"}}]);
    up.reply(Reply::Sse(vec![
        chunk(json!({"role": "assistant", "content": null}), Value::Null),
        chunk(json!({"tool_calls": first}), Value::Null),
        chunk(json!({"tool_calls": second}), Value::Null),
        chunk(json!({}), json!("tool_calls")),
        "data: [DONE]\n\n".to_owned(),
    ]));
    let gw = Gateway::start(&openai_config(&up)).await;
    let (_, values, done) = parse(&gw.chat_stream(tool_conversation(true)).await);
    assert!(done);
    let calls: Vec<&Value> = values
        .iter()
        .filter_map(|v| v["choices"][0]["delta"].get("tool_calls"))
        .collect();
    assert_eq!(calls, [&first, &second]);
    assert_eq!(
        values
            .iter()
            .filter(|v| v["choices"][0]["finish_reason"] == "tool_calls")
            .count(),
        1
    );
    assert_eq!(
        up.last().body["messages"],
        tool_conversation(true)["messages"]
    );
}

#[tokio::test]
async fn tool_calls_translate_to_anthropic_and_back() {
    let up = Upstream::start().await;
    up.reply(Reply::Json(
        200,
        json!({
            "id": "msg_1", "type": "message", "role": "assistant", "model": "claude-sonnet-4-5",
            "content": [{"type": "text", "text": "Checking Rome."},
                        {"type": "tool_use", "id": "toolu_2", "name": "get_weather", "input": {"city": "Rome"}}],
            "stop_reason": "tool_use", "usage": {"input_tokens": 50, "output_tokens": 20}
        }),
    ));
    let gw = Gateway::start(&anthropic_config(&up)).await;
    let mut req = tool_conversation(false);
    req["model"] = json!("claude-sonnet-4-5");
    // A second result right after the first shares its user turn.
    req["messages"][1]["tool_calls"]
        .as_array_mut()
        .unwrap()
        .push(json!({"id": "call_9", "type": "function",
            "function": {"name": "get_weather", "arguments": "{\"city\":\"Nice\"}"}}));
    req["messages"]
        .as_array_mut()
        .unwrap()
        .push(json!({"role": "tool", "tool_call_id": "call_9", "content": "20C"}));
    req["tool_choice"] = json!({"type": "function", "function": {"name": "get_weather"}});
    let (status, _, body) = gw.chat(req).await;
    assert_eq!(status, 200, "{body}");

    let seen = up.last().body;
    assert_eq!(
        seen["tools"],
        json!([{"name": "get_weather", "input_schema":
            {"type": "object", "properties": {"city": {"type": "string"}}}}])
    );
    assert_eq!(
        seen["tool_choice"],
        json!({"type": "tool", "name": "get_weather"})
    );
    assert_eq!(
        seen["messages"],
        json!([
            {"role": "user", "content": "Weather in Paris and Rome?"},
            {"role": "assistant", "content": [
                {"type": "tool_use", "id": "call_1", "name": "get_weather", "input": {"city": "Paris"}},
                {"type": "tool_use", "id": "call_9", "name": "get_weather", "input": {"city": "Nice"}}]},
            {"role": "user", "content": [
                {"type": "tool_result", "tool_use_id": "call_1", "content": "18C, sunny"},
                {"type": "tool_result", "tool_use_id": "call_9", "content": "20C"}]}
        ])
    );

    let choice = &body["choices"][0];
    assert_eq!(choice["finish_reason"], "tool_calls");
    assert_eq!(choice["message"]["content"], "Checking Rome.");
    assert_eq!(
        choice["message"]["tool_calls"],
        json!([{"id": "toolu_2", "type": "function",
            "function": {"name": "get_weather", "arguments": "{\"city\":\"Rome\"}"}}])
    );

    // Bad arguments are the caller's mistake, named; nothing is sent.
    let before = up.seen().len();
    let mut bad = tool_conversation(false);
    bad["model"] = json!("claude-sonnet-4-5");
    bad["messages"][1]["tool_calls"][0]["function"]["arguments"] = json!("{not json");
    let (status, _, body) = gw.chat(bad).await;
    assert_eq!(status, 400, "{body}");
    assert!(
        error_message(&body).starts_with("messages[1].tool_calls[0].function.arguments: not JSON"),
        "{body}"
    );
    assert_eq!(up.seen().len(), before);

    // MIST: its roles are system, user and assistant.
    let resp = gw
        .post(
            "/infer",
            json!({"model": "claude-sonnet-4-5", "messages": [{"role": "tool", "content": "x"}]}),
        )
        .await;
    assert_eq!(resp.status(), 400);
    let body: Value = resp.json().await.unwrap();
    assert!(
        error_message(&body).starts_with("messages[0].role: unknown role \"tool\""),
        "{body}"
    );
}

#[tokio::test]
async fn anthropic_tool_use_streams_as_openai_tool_call_deltas() {
    let up = Upstream::start().await;
    up.reply(Reply::Sse(vec![
        event("message_start", json!({"type": "message_start", "message": {"id": "m", "usage": {"input_tokens": 30, "output_tokens": 1}}})),
        event("content_block_start", json!({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}})),
        event("content_block_delta", json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "Let me check."}})),
        event("content_block_stop", json!({"type": "content_block_stop", "index": 0})),
        event("content_block_start", json!({"type": "content_block_start", "index": 1, "content_block": {"type": "tool_use", "id": "toolu_7", "name": "get_weather", "input": {}}})),
        event("content_block_delta", json!({"type": "content_block_delta", "index": 1, "delta": {"type": "input_json_delta", "partial_json": "{\"city\": "}})),
        event("content_block_delta", json!({"type": "content_block_delta", "index": 1, "delta": {"type": "input_json_delta", "partial_json": "\"Rome\"}"}})),
        event("content_block_stop", json!({"type": "content_block_stop", "index": 1})),
        event("message_delta", json!({"type": "message_delta", "delta": {"stop_reason": "tool_use"}, "usage": {"output_tokens": 15}})),
        event("message_stop", json!({"type": "message_stop"})),
    ]));
    let gw = Gateway::start(&anthropic_config(&up)).await;
    let mut req = tool_conversation(true);
    req["model"] = json!("claude-sonnet-4-5");
    let (text, values, done) = parse(&gw.chat_stream(req).await);
    assert!(done);
    assert_eq!(text, "Let me check.");
    let calls: Vec<&Value> = values
        .iter()
        .filter_map(|v| v["choices"][0]["delta"].get("tool_calls"))
        .collect();
    assert_eq!(
        calls,
        [
            &json!([{"index": 0, "id": "toolu_7", "type": "function", "function": {"name": "get_weather", "arguments": ""}}]),
            &json!([{"index": 0, "function": {"arguments": "{\"city\": "}}]),
            &json!([{"index": 0, "function": {"arguments": "\"Rome\"}"}}]),
        ]
    );
    assert_eq!(
        values
            .iter()
            .filter(|v| v["choices"][0]["finish_reason"] == "tool_calls")
            .count(),
        1
    );
}

#[tokio::test]
async fn image_parts_reach_openai_compatible_and_anthropic_providers() {
    let parts = json!([
        {"type": "text", "text": "What is in this picture?"},
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo=", "detail": "low"}}
    ]);
    let req =
        |model: &str| json!({"model": model, "messages": [{"role": "user", "content": parts}]});

    let up = Upstream::start().await;
    up.reply(Reply::Json(200, completion("A cat.", "stop")));
    let gw = Gateway::start(&openai_config(&up)).await;
    let (status, _, body) = gw.chat(req("gpt-4o")).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["choices"][0]["message"]["content"], "A cat.");
    assert_eq!(
        up.last().body["messages"],
        json!([{"role": "user", "content": parts}]),
        "the parts reach the upstream as sent"
    );

    // Text-only parts reach an OpenAI-dialect upstream as sent too.
    up.reply(Reply::Json(200, completion("ok", "stop")));
    let text_parts = json!([{"type": "text", "text": "Hello "}, {"type": "text", "text": "world"}]);
    let (status, _, _) = gw
        .chat(json!({"model": "gpt-4o", "messages": [{"role": "user", "content": text_parts}]}))
        .await;
    assert_eq!(status, 200);
    assert_eq!(up.last().body["messages"][0]["content"], text_parts);

    // Anthropic: image blocks, from base64 data or from a URL.
    let up = Upstream::start().await;
    up.always(Reply::Json(
        200,
        json!({"type": "message", "content": [{"type": "text", "text": "A cat."}],
        "stop_reason": "end_turn", "usage": {"input_tokens": 1, "output_tokens": 1}}),
    ));
    let gw = Gateway::start(&anthropic_config(&up)).await;
    let (status, _, body) = gw.chat(req("claude-sonnet-4-5")).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["choices"][0]["message"]["content"], "A cat.");
    assert_eq!(
        up.last().body["messages"],
        json!([{"role": "user", "content": [
            {"type": "text", "text": "What is in this picture?"},
            {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="}}
        ]}])
    );
    let (status, _, _) = gw
        .chat(
            json!({"model": "claude-sonnet-4-5", "messages": [{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}}]}]}),
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(
        up.last().body["messages"][0]["content"],
        json!([{"type": "image", "source": {"type": "url", "url": "https://example.com/cat.png"}}])
    );

    // Parts Anthropic has no block for are refused, named; nothing is sent.
    let before = up.seen().len();
    let (status, _, body) = gw
        .chat(json!({"model": "claude-sonnet-4-5", "messages": [{"role": "user", "content": [
            {"type": "text", "text": "hi"}, {"type": "input_audio", "input_audio": {"data": "x", "format": "wav"}}]}]}))
        .await;
    assert_eq!(status, 400, "{body}");
    assert!(
        error_message(&body)
            .starts_with("messages[0].content[1].type: input_audio parts are not supported"),
        "{body}"
    );
    assert_eq!(up.seen().len(), before);
}

#[tokio::test]
async fn choices_reach_the_caller_as_the_provider_sent_them() {
    // Several choices, logprobs, refusal and a reasoning model's extra field.
    let choices = json!([
        {"index": 0, "message": {"role": "assistant", "content": "Paris.", "refusal": null,
            "reasoning_content": "The capital of France..."},
         "logprobs": {"content": [{"token": "Paris", "logprob": -0.01, "top_logprobs": []}]},
         "finish_reason": "stop"},
        {"index": 1, "message": {"role": "assistant", "content": "It is Paris.", "refusal": null},
         "logprobs": null, "finish_reason": "stop"}
    ]);
    let up = Upstream::start().await;
    up.reply(Reply::Json(
        200,
        json!({"id": "chatcmpl-up", "object": "chat.completion", "created": 1, "model": "gpt-4o",
               "choices": choices, "usage": {"prompt_tokens": 8, "completion_tokens": 6, "total_tokens": 14}}),
    ));
    let gw = Gateway::start(&openai_config(&up)).await;
    let (status, _, body) = gw
        .chat(json!({"model": "gpt-4o", "n": 2, "logprobs": true,
                     "messages": [{"role": "user", "content": "Capital of France?"}]}))
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["choices"], choices);
    assert_eq!(body["model"], "gpt-4o");
    assert_eq!(body["usage"]["total_tokens"], 14);
    let seen = up.last();
    assert_eq!(
        (seen.body["n"].clone(), seen.body["logprobs"].clone()),
        (json!(2), json!(true))
    );
    assert_eq!(gw.spans.spans().pop().unwrap().attrs.finish_reason, "stop");

    // Streamed: the provider's chunks, interleaved choices included, and its
    // own first (role) chunk instead of infermux's.
    let sent = [
        json!([{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": null},
               {"index": 1, "delta": {"role": "assistant", "content": ""}, "finish_reason": null}]),
        json!([{"index": 0, "delta": {"reasoning_content": "Think."}, "finish_reason": null}]),
        json!([{"index": 1, "delta": {"content": "It is "}, "finish_reason": null}]),
        json!([{"index": 0, "delta": {"content": "Paris."}, "finish_reason": null}]),
        json!([{"index": 1, "delta": {"content": "Paris."}, "finish_reason": "stop"}]),
        json!([{"index": 0, "delta": {}, "finish_reason": "stop"}]),
    ];
    let mut events: Vec<String> = sent.iter().cloned().map(choices_chunk).collect();
    events.push(data(json!({"id": "c", "object": "chat.completion.chunk", "created": 1, "model": "m", "choices": [],
        "usage": {"prompt_tokens": 8, "completion_tokens": 5, "total_tokens": 13}})));
    events.push("data: [DONE]\n\n".to_owned());
    up.reply(Reply::Sse(events));
    let (text, values, done) = parse(
        &gw.chat_stream(json!({"model": "gpt-4o", "n": 2, "stream": true,
                               "stream_options": {"include_usage": true},
                               "messages": [{"role": "user", "content": "Capital of France?"}]}))
            .await,
    );
    assert!(done);
    assert_eq!(
        text, "It is Paris.Paris.",
        "first choice of each chunk, in order"
    );
    let got: Vec<&Value> = values
        .iter()
        .filter(|v| v["choices"] != json!([]))
        .map(|v| &v["choices"])
        .collect();
    assert_eq!(
        got,
        sent.iter().collect::<Vec<_>>(),
        "every chunk's choices verbatim, nothing added"
    );
    assert!(values.iter().all(|v| v["model"] == "gpt-4o"));
    assert_eq!(values.last().unwrap()["usage"]["total_tokens"], 13);
}

#[tokio::test]
async fn several_choices_are_refused_by_providers_that_give_one() {
    let up = Upstream::start().await;
    let gw = Gateway::start(&anthropic_config(&up)).await;
    let (status, _, body) = gw
        .chat(json!({"model": "claude-sonnet-4-5", "n": 3, "messages": [{"role": "user", "content": "x"}]}))
        .await;
    assert_eq!(status, 400, "{body}");
    assert!(error_message(&body).starts_with("n: 3"), "{body}");
    assert!(up.seen().is_empty());
}
