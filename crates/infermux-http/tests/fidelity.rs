//! SPEC §11 over real TCP: what reaches the upstream and what comes back, for
//! each adapter, against recording fakes shaped like the real APIs.
#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests")]

mod upstream;

use proptest::prelude::*;
use serde_json::{Value, json};
use upstream::{Gateway, Reply, Upstream, data, error_message, event};

fn openai_config(u: &Upstream) -> String {
    format!(
        r#"
providers:
  - name: openai
    type: openai
    api_key: sk-test
    base_url: "{}/v1"
    models: [gpt-5, o3]
    model_aliases: {{thinker: gpt-5}}
"#,
        u.url
    )
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
"#,
        u.url
    )
}

/// A gpt-5 answer as OpenAI sends it, usage details and all.
fn reasoning_answer() -> Value {
    json!({
        "id": "chatcmpl-up42", "object": "chat.completion", "created": 1_760_000_000,
        "model": "gpt-5-2025-08-07", "system_fingerprint": "fp_abc", "service_tier": "default",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "42", "refusal": null,
            "annotations": []}, "logprobs": null, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 1000, "completion_tokens": 300, "total_tokens": 1300,
            "prompt_tokens_details": {"cached_tokens": 800, "audio_tokens": 0},
            "completion_tokens_details": {"reasoning_tokens": 256, "audio_tokens": 0,
                "accepted_prediction_tokens": 0, "rejected_prediction_tokens": 0}}
    })
}

fn reasoning_events() -> Vec<String> {
    let chunk = |delta: Value, finish: Value| {
        data(
            json!({"id": "chatcmpl-up42", "object": "chat.completion.chunk", "created": 1_760_000_000,
            "model": "gpt-5-2025-08-07", "system_fingerprint": "fp_abc", "service_tier": "default",
            "choices": [{"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish}]}),
        )
    };
    vec![
        chunk(
            json!({"role": "assistant", "content": "", "refusal": null}),
            Value::Null,
        ),
        chunk(json!({"content": "4"}), Value::Null),
        chunk(json!({"content": "2"}), Value::Null),
        chunk(json!({}), json!("stop")),
        data(
            json!({"id": "chatcmpl-up42", "object": "chat.completion.chunk", "created": 1_760_000_000,
            "model": "gpt-5-2025-08-07", "system_fingerprint": "fp_abc", "choices": [],
            "usage": {"prompt_tokens": 1000, "completion_tokens": 300, "total_tokens": 1300,
                "prompt_tokens_details": {"cached_tokens": 800},
                "completion_tokens_details": {"reasoning_tokens": 256}}}),
        ),
        "data: [DONE]\n\n".to_owned(),
    ]
}

/// What an app built on a current SDK sends to a reasoning model.
fn reasoning_request() -> Value {
    json!({
        "model": "thinker",
        "messages": [
            {"role": "developer", "content": "Answer with a number.", "name": "rules"},
            {"role": "user", "content": [{"type": "text", "text": "6 × 7?"}]}
        ],
        "max_completion_tokens": 2000, "reasoning_effort": "high", "store": false,
        "prompt_cache_key": "k-1", "metadata": {"app": "calc"}, "verbosity": "low",
        "x_vendor_option": {"nested": [1, 2, {"deep": true}]}
    })
}

#[tokio::test]
async fn a_reasoning_model_gets_the_callers_request_as_sent() {
    let up = Upstream::start().await;
    up.always(Reply::Reasoning(reasoning_answer(), reasoning_events()));
    let gw = Gateway::start(&openai_config(&up)).await;
    let (status, headers, body) = gw.chat(reasoning_request()).await;
    assert_eq!(status, 200, "{body}");

    let mut want = reasoning_request();
    want["model"] = json!("gpt-5");
    assert_eq!(
        up.last().body,
        want,
        "every field and message field as sent, the alias resolved"
    );

    let mut answer = reasoning_answer();
    answer["model"] = json!("thinker");
    assert_eq!(
        body, answer,
        "the upstream's answer, the caller's model name"
    );
    assert_eq!(headers["x-infermux-upstream-request-id"], "req_up_123");
    assert_eq!(headers["x-infermux-cached-tokens"], "800");
    assert_eq!(headers["x-infermux-reasoning-tokens"], "256");
    assert_eq!(headers["x-infermux-prompt-tokens"], "1000");
    // gpt-5 in the pinned table: $1.25 in, $0.125 cached in, $10 out.
    let cost: f64 = headers["x-infermux-cost"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    let want_cost = (200.0 * 1.25 + 800.0 * 0.125 + 300.0 * 10.0) / 1e6;
    assert!((cost - want_cost).abs() < 1e-12, "{cost} vs {want_cost}");

    let span = gw.spans.spans().pop().unwrap();
    assert_eq!(
        (
            span.attrs.tokens_in,
            span.attrs.tokens_cached,
            span.attrs.tokens_out,
            span.attrs.tokens_reasoning
        ),
        (1000, 800, 300, 256)
    );
    assert!((span.attrs.cost_usd - want_cost).abs() < 1e-12);

    // The same app setting max_tokens gets OpenAI's own 400, unchanged.
    let mut old = reasoning_request();
    old["max_tokens"] = json!(100);
    let (status, _, body) = gw.chat(old).await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"]["code"], "upstream_rejected");
    assert!(
        error_message(&body).contains("max_completion_tokens"),
        "{body}"
    );
}

#[tokio::test]
async fn a_passed_through_stream_is_the_upstreams_events_but_for_model() {
    let up = Upstream::start().await;
    up.always(Reply::Reasoning(reasoning_answer(), reasoning_events()));
    let gw = Gateway::start(&openai_config(&up)).await;
    let mut req = reasoning_request();
    req["stream"] = json!(true);
    req["stream_options"] = json!({"include_usage": true});
    let events = gw.chat_stream(req.clone()).await;
    let sent = up.last().body;
    assert_eq!(sent["stream_options"], json!({"include_usage": true}));
    let upstream: Vec<String> = reasoning_events()
        .iter()
        .map(|e| e.trim_start_matches("data: ").trim_end().to_owned())
        .collect();
    assert_eq!(events.len(), upstream.len(), "{events:?}");
    for (got, sent) in events.iter().zip(&upstream) {
        if sent == "[DONE]" {
            assert_eq!(got, "[DONE]");
            continue;
        }
        let mut want: Value = serde_json::from_str(sent).unwrap();
        want["model"] = json!("thinker");
        assert_eq!(serde_json::from_str::<Value>(got).unwrap(), want);
    }
    let span = gw.spans.spans().pop().unwrap();
    assert_eq!(
        (span.attrs.tokens_cached, span.attrs.tokens_reasoning),
        (800, 256)
    );

    // Without include_usage the caller gets every event but the usage one,
    // while infermux still asked for it and counted it.
    req["stream_options"] = json!({"include_usage": false, "other": 1});
    let events = gw.chat_stream(req).await;
    assert_eq!(
        up.last().body["stream_options"],
        json!({"include_usage": true, "other": 1})
    );
    assert_eq!(events.len(), upstream.len() - 1);
    assert!(
        events.iter().all(|e| !e.contains("\"usage\"")),
        "{events:?}"
    );
    let span = gw.spans.spans().pop().unwrap();
    assert_eq!((span.attrs.tokens_in, span.attrs.tokens_out), (1000, 300));
}

#[tokio::test]
async fn bodies_that_cannot_be_patched_safely_are_refused() {
    let up = Upstream::start().await;
    up.always(Reply::Reasoning(reasoning_answer(), reasoning_events()));
    let gw = Gateway::start(&openai_config(&up)).await;
    for (body, want) in [
        (
            r#"{"model":"gpt-5","model":"o3","messages":[{"role":"user","content":"x"}]}"#,
            "duplicate field `model`",
        ),
        (
            r#"{"model":"gpt-5","messages":[{"role":"user","content":"x"}],"messages":[]}"#,
            "duplicate field `messages`",
        ),
    ] {
        let resp = gw
            .client
            .post(format!("{}/v1/chat/completions", gw.base))
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 400);
        let v: Value = resp.json().await.unwrap();
        assert!(error_message(&v).contains(want), "{v}");
    }
    assert!(up.seen().is_empty(), "nothing half-patched went upstream");

    // An escaped key is still `model`: replaced, not duplicated.
    let resp = gw
        .client
        .post(format!("{}/v1/chat/completions", gw.base))
        .header("content-type", "application/json")
        .body(r#"{"mod\u0065l":"thinker","messages":[{"role":"user","content":"\u00e9"}]}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(
        up.last().body,
        json!({"model": "gpt-5", "messages": [{"role": "user", "content": "é"}]})
    );

    // No Content-Type at all is a 415, like a wrong one.
    let resp = gw
        .client
        .post(format!("{}/v1/chat/completions", gw.base))
        .body(r#"{"model":"gpt-5","messages":[{"role":"user","content":"x"}]}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 415);
    let v: Value = resp.json().await.unwrap();
    assert!(error_message(&v).contains("Content-Type"), "{v}");
}

fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        (-1e6f64..1e6).prop_map(Value::from),
        ".{0,12}".prop_map(Value::from),
    ];
    leaf.prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::from),
            prop::collection::btree_map("[a-z_]{1,8}", inner, 0..4)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    /// Any object of extra fields, at the top and on a message, reaches an
    /// OpenAI-dialect upstream exactly as sent.
    #[test]
    fn arbitrary_extra_fields_survive_the_trip(
        extra in prop::collection::btree_map("x_[a-z]{1,8}", json_value(), 0..6),
        on_message in prop::collection::btree_map("m_[a-z]{1,8}", json_value(), 0..3),
    ) {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async {
            let up = Upstream::start().await;
            up.always(Reply::Reasoning(reasoning_answer(), reasoning_events()));
            let gw = Gateway::start(&openai_config(&up)).await;
            let mut message = json!({"role": "user", "content": "hi"});
            for (k, v) in &on_message {
                message[k] = v.clone();
            }
            let mut req = json!({"model": "thinker", "messages": [message]});
            for (k, v) in &extra {
                req[k] = v.clone();
            }
            let (status, _, body) = gw.chat(req.clone()).await;
            prop_assert_eq!(status, 200, "{}", body);
            req["model"] = json!("gpt-5");
            // Read back the way the fake reads what it receives (serde_json
            // parses some floats one ulp off; the bytes are the same).
            let want: Value = serde_json::from_str(&req.to_string()).unwrap();
            prop_assert_eq!(up.last().body, want);
            Ok(())
        })?;
    }
}

/// A Claude answer with thinking, a structured-output tool call and cache
/// usage, as the Messages API sends it.
fn claude_answer(content: Value, stop: &str) -> Value {
    json!({"id": "msg_01XYZ", "type": "message", "role": "assistant", "model": "claude-sonnet-4-5-20250929",
        "content": content, "stop_reason": stop, "stop_sequence": null,
        "usage": {"input_tokens": 50, "cache_read_input_tokens": 900, "cache_creation_input_tokens": 100,
            "output_tokens": 40, "service_tier": "standard"}})
}

#[tokio::test]
async fn openai_fields_become_their_anthropic_counterparts() {
    let up = Upstream::start().await;
    let gw = Gateway::start(&anthropic_config(&up)).await;
    let schema = json!({"type": "object", "properties": {"answer": {"type": "integer"}}, "required": ["answer"]});
    up.reply(Reply::Json(
        200,
        claude_answer(
            json!([
                {"type": "thinking", "thinking": "6 times 7 is 42.", "signature": "sig-1"},
                {"type": "tool_use", "id": "toolu_1", "name": "json_response", "input": {"answer": 42}}
            ]),
            "tool_use",
        ),
    ));
    let (status, headers, body) = gw
        .chat(json!({
            "model": "claude-sonnet-4-5",
            "messages": [{"role": "user", "content": "6 × 7?"}],
            "response_format": {"type": "json_schema", "json_schema": {"name": "calc", "schema": schema}},
            "reasoning_effort": "medium", "user": "user-7", "store": true, "seed": 3,
            "parallel_tool_calls": false, "max_completion_tokens": 8000
        }))
        .await;
    assert_eq!(status, 200, "{body}");
    let sent = up.last().body;
    assert_eq!(sent["tools"][0]["name"], "json_response");
    assert_eq!(sent["tools"][0]["input_schema"], schema);
    assert_eq!(
        sent["tool_choice"],
        json!({"type": "tool", "name": "json_response", "disable_parallel_tool_use": true})
    );
    assert_eq!(
        sent["thinking"],
        json!({"type": "enabled", "budget_tokens": 4096})
    );
    assert_eq!(sent["metadata"], json!({"user_id": "user-7"}));
    assert_eq!(
        sent["max_tokens"], 8000,
        "max_completion_tokens is the limit"
    );
    for dropped in [
        "store",
        "seed",
        "parallel_tool_calls",
        "response_format",
        "user",
    ] {
        assert!(sent.get(dropped).is_none(), "{dropped} in {sent}");
    }

    let message = &body["choices"][0]["message"];
    assert_eq!(
        message["content"], r#"{"answer":42}"#,
        "the forced tool's input is the answer"
    );
    assert!(message.get("tool_calls").is_none());
    assert_eq!(message["reasoning_content"], "6 times 7 is 42.");
    assert_eq!(
        message["thinking_blocks"],
        json!([{"type": "thinking", "thinking": "6 times 7 is 42.", "signature": "sig-1"}])
    );
    assert_eq!(body["choices"][0]["finish_reason"], "stop");
    assert_eq!(body["id"], "msg_01XYZ");
    assert_eq!(
        body["usage"],
        json!({"prompt_tokens": 1050, "completion_tokens": 40, "total_tokens": 1090,
            "prompt_tokens_details": {"cached_tokens": 900}, "cache_creation_input_tokens": 100})
    );
    assert_eq!(headers["x-infermux-cached-tokens"], "900");
    // claude-sonnet-4-5: $3 in, $0.30 cache read, $3.75 cache write, $15 out.
    let cost: f64 = headers["x-infermux-cost"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    let want = (50.0 * 3.0 + 900.0 * 0.30 + 100.0 * 3.75 + 40.0 * 15.0) / 1e6;
    assert!((cost - want).abs() < 1e-12, "{cost} vs {want}");
    let span = gw.spans.spans().pop().unwrap();
    assert_eq!(
        (
            span.attrs.tokens_in,
            span.attrs.tokens_cached,
            span.attrs.tokens_cache_write
        ),
        (1050, 900, 100)
    );

    // The next turn sends the thinking back with its signature.
    up.reply(Reply::Json(
        200,
        claude_answer(json!([{"type": "text", "text": "ok"}]), "end_turn"),
    ));
    let (status, _, body) = gw
        .chat(json!({"model": "claude-sonnet-4-5", "messages": [
            {"role": "user", "content": "Call f."},
            {"role": "assistant", "content": null, "thinking_blocks": message["thinking_blocks"],
             "tool_calls": [{"id": "toolu_2", "type": "function", "function": {"name": "f", "arguments": "{}"}}]},
            {"role": "tool", "tool_call_id": "toolu_2", "content": "done"}
        ]}))
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        up.last().body["messages"][1]["content"],
        json!([{"type": "thinking", "thinking": "6 times 7 is 42.", "signature": "sig-1"},
               {"type": "tool_use", "id": "toolu_2", "name": "f", "input": {}}])
    );
}

#[tokio::test]
async fn fields_that_would_change_the_answer_are_refused_by_name() {
    let up = Upstream::start().await;
    up.always(Reply::Json(
        200,
        claude_answer(json!([{"type": "text", "text": "ok"}]), "end_turn"),
    ));
    let gw = Gateway::start(&anthropic_config(&up)).await;
    let base =
        || json!({"model": "claude-sonnet-4-5", "messages": [{"role": "user", "content": "x"}]});
    for (field, value, want) in [
        (
            "logprobs",
            json!(true),
            "logprobs: anthropic providers give no log probabilities",
        ),
        ("top_logprobs", json!(3), "top_logprobs:"),
        ("frequency_penalty", json!(0.5), "frequency_penalty:"),
        ("logit_bias", json!({"50256": -100}), "logit_bias:"),
        ("modalities", json!(["text", "audio"]), "modalities:"),
        (
            "verbosity",
            json!("low"),
            "verbosity: not supported by anthropic providers",
        ),
        (
            "x_unknown",
            json!(1),
            "x_unknown: not supported by anthropic providers",
        ),
        (
            "reasoning_effort",
            json!("extreme"),
            "reasoning_effort: expected",
        ),
        (
            "response_format",
            json!({"type": "xml"}),
            "response_format.type:",
        ),
    ] {
        let mut req = base();
        req[field] = value;
        let (status, _, body) = gw.chat(req).await;
        assert_eq!(status, 400, "{field}: {body}");
        assert_eq!(body["error"]["code"], "invalid_request");
        assert!(error_message(&body).starts_with(want), "{field}: {body}");
    }
    // A thinking budget needs room under the output limit.
    let mut req = base();
    req["reasoning_effort"] = json!("high");
    req["max_tokens"] = json!(1000);
    let (status, _, body) = gw.chat(req).await;
    assert_eq!(status, 400);
    assert!(
        error_message(&body).starts_with("max_tokens: 1000 leaves no room"),
        "{body}"
    );
    assert!(up.seen().is_empty(), "no refused call reached the upstream");

    // Defaults of those fields change nothing and pass.
    let mut req = base();
    for (field, value) in [
        ("logprobs", json!(false)),
        ("frequency_penalty", json!(0)),
        ("presence_penalty", json!(0.0)),
        ("logit_bias", json!({})),
        ("modalities", json!(["text"])),
        ("prompt_cache_key", json!("k")),
        ("service_tier", json!("auto")),
    ] {
        req[field] = value;
    }
    let (status, _, body) = gw.chat(req).await;
    assert_eq!(status, 200, "{body}");
}

#[tokio::test]
async fn anthropic_thinking_and_cache_usage_stream_as_openai_chunks() {
    let up = Upstream::start().await;
    up.always(Reply::Sse(vec![
        event("message_start", json!({"type": "message_start", "message": {"id": "msg_1", "type": "message",
            "role": "assistant", "content": [], "model": "claude-sonnet-4-5", "stop_reason": null,
            "usage": {"input_tokens": 10, "cache_read_input_tokens": 500, "cache_creation_input_tokens": 0, "output_tokens": 1}}})),
        event("content_block_start", json!({"type": "content_block_start", "index": 0,
            "content_block": {"type": "thinking", "thinking": ""}})),
        event("content_block_delta", json!({"type": "content_block_delta", "index": 0,
            "delta": {"type": "thinking_delta", "thinking": "Let me think."}})),
        event("content_block_delta", json!({"type": "content_block_delta", "index": 0,
            "delta": {"type": "signature_delta", "signature": "sig"}})),
        event("content_block_stop", json!({"type": "content_block_stop", "index": 0})),
        event("content_block_start", json!({"type": "content_block_start", "index": 1,
            "content_block": {"type": "text", "text": ""}})),
        event("content_block_delta", json!({"type": "content_block_delta", "index": 1,
            "delta": {"type": "text_delta", "text": "42"}})),
        event("content_block_stop", json!({"type": "content_block_stop", "index": 1})),
        event("message_delta", json!({"type": "message_delta", "delta": {"stop_reason": "end_turn"},
            "usage": {"output_tokens": 20}})),
        event("message_stop", json!({"type": "message_stop"})),
    ]));
    let gw = Gateway::start(&anthropic_config(&up)).await;
    let events = gw
        .chat_stream(json!({"model": "claude-sonnet-4-5", "stream": true, "reasoning_effort": "low",
            "stream_options": {"include_usage": true}, "messages": [{"role": "user", "content": "?"}]}))
        .await;
    let values: Vec<Value> = events
        .iter()
        .filter(|e| *e != "[DONE]")
        .map(|e| serde_json::from_str(e).unwrap())
        .collect();
    let reasoning: String = values
        .iter()
        .filter_map(|v| v["choices"][0]["delta"]["reasoning_content"].as_str())
        .collect();
    assert_eq!(reasoning, "Let me think.");
    let text: String = values
        .iter()
        .filter_map(|v| v["choices"][0]["delta"]["content"].as_str())
        .collect();
    assert_eq!(text, "42");
    assert_eq!(
        values.last().unwrap()["usage"],
        json!({"prompt_tokens": 510, "completion_tokens": 20, "total_tokens": 530,
            "prompt_tokens_details": {"cached_tokens": 500}})
    );
    assert_eq!(
        up.last().body["thinking"],
        json!({"type": "enabled", "budget_tokens": 1024})
    );
    let span = gw.spans.spans().pop().unwrap();
    assert_eq!((span.attrs.tokens_in, span.attrs.tokens_cached), (510, 500));
}
