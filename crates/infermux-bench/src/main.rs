//! `infermux-bench`: the measuring tools behind `bench/overhead.sh`.
//!
//! - `ttfb URL`: sends streaming chat completions one after another and reports
//!   the time to the first body byte (p50, p99).
//! - `hold-streams URL`: opens N streaming requests at once, waits until every
//!   one has its first byte, holds them open, then closes them.
//! - `slow-upstream`: an OpenAI-shaped upstream whose streams send one event and
//!   then stay open (keep-alive comments), for `hold-streams`.
//! - `agent-body`: prints an agent-sized chat completion request (long
//!   history, tool calls and their results, a dozen tool schemas), for
//!   `bench/traffic.sh`.
//! - `sse-body`: prints an OpenAI stream of N events (role, content deltas,
//!   finish, usage, `[DONE]`), for the mock upstream of `bench/traffic.sh`.

use std::time::{Duration, Instant};

use clap::{Parser, Subcommand};
use futures_util::StreamExt;

#[derive(Parser)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Time to first byte of streaming chat completions.
    Ttfb {
        /// Full URL of a chat completions endpoint.
        url: String,
        #[arg(long, default_value = "bench-model")]
        model: String,
        #[arg(long, default_value_t = 300)]
        requests: usize,
    },
    /// Hold many streaming requests open at once.
    HoldStreams {
        url: String,
        #[arg(long, default_value = "bench-slow")]
        model: String,
        #[arg(long, default_value_t = 1000)]
        streams: usize,
        /// How long to hold them once all are open, in seconds.
        #[arg(long, default_value_t = 3)]
        hold: u64,
    },
    /// Print an agent-sized chat completion request of about KB kilobytes.
    AgentBody {
        #[arg(long, default_value = "bench-model")]
        model: String,
        #[arg(long, default_value_t = 67)]
        kb: usize,
        #[arg(long)]
        stream: bool,
    },
    /// Print an OpenAI chat completion stream of EVENTS data events (with
    /// --anthropic: a Messages API stream of EVENTS events).
    SseBody {
        #[arg(long, default_value_t = 21)]
        events: usize,
        #[arg(long)]
        anthropic: bool,
    },
    /// A slow streaming upstream on ADDR.
    SlowUpstream {
        #[arg(long, default_value = "127.0.0.1:18804")]
        addr: String,
    },
}

fn body(model: &str) -> serde_json::Value {
    serde_json::json!({"model": model, "stream": true, "messages": [{"role": "user", "content": "Hello world"}]})
}

/// What a coding agent sends on a late turn: a long system prompt, a dozen
/// tool schemas, and a history of user turns, assistant tool calls and tool
/// results, grown until the body is about `kb` kilobytes.
fn agent_body(model: &str, kb: usize, stream: bool) -> serde_json::Value {
    use serde_json::json;
    let prose = "The repository holds a Rust workspace with several crates; read the \
        code before changing it, keep every public name, and run the tests after each step. ";
    let tools: Vec<_> = (0..12)
        .map(|i| {
            json!({"type": "function", "function": {
                "name": format!("tool_{i}"),
                "description": format!("Tool number {i}: {}", prose.repeat(2)),
                "parameters": {"type": "object", "properties": {
                    "path": {"type": "string", "description": "A path inside the repository."},
                    "pattern": {"type": "string", "description": "A regular expression to search for."},
                    "limit": {"type": "integer", "minimum": 1, "maximum": 1000},
                    "flags": {"type": "array", "items": {"type": "string", "enum": ["i", "m", "s"]}}
                }, "required": ["path"], "additionalProperties": false}}})
        })
        .collect();
    let mut messages = vec![json!({"role": "system", "content": prose.repeat(24)})];
    let mut body = json!({"model": model, "messages": [], "tools": tools, "tool_choice": "auto",
        "temperature": 0.2, "max_completion_tokens": 1024, "stream": stream});
    let mut turn = 0;
    while serde_json::to_vec(&body).map_or(0, |b| b.len()) < kb * 1000 {
        let id = format!("call_{turn:04}");
        messages
            .push(json!({"role": "user", "content": format!("Step {turn}: {}", prose.repeat(2))}));
        messages.push(json!({"role": "assistant", "content": null, "tool_calls": [{"id": id,
            "type": "function", "function": {"name": format!("tool_{}", turn % 12),
            "arguments": format!(r#"{{"path":"crates/infermux/src/file_{turn}.rs","limit":40}}"#)}}]}));
        messages.push(json!({"role": "tool", "tool_call_id": id,
            "content": format!("fn step_{turn}() {{\n    // {}\n}}\n", prose.repeat(3))}));
        messages.push(
            json!({"role": "assistant", "content": format!("Done with step {turn}. {prose}")}),
        );
        body["messages"] = serde_json::Value::Array(messages.clone());
        turn += 1;
    }
    body
}

/// An Anthropic Messages stream of `events` events: `message_start`,
/// `content_block_start`, `ping`, text deltas, `content_block_stop`,
/// `message_delta` and `message_stop`.
fn anthropic_sse_body(events: usize) -> String {
    use serde_json::json;
    let event = |name: &str, data: serde_json::Value| format!("event: {name}\ndata: {data}\n\n");
    let mut out = event(
        "message_start",
        json!({"type": "message_start", "message": {"id": "msg_mock", "type": "message",
            "role": "assistant", "model": "bench-claude", "content": [], "stop_reason": null,
            "stop_sequence": null, "usage": {"input_tokens": 9, "output_tokens": 1}}}),
    );
    out.push_str(&event(
        "content_block_start",
        json!({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}),
    ));
    out.push_str(&event("ping", json!({"type": "ping"})));
    for i in 0..events.saturating_sub(6) {
        out.push_str(&event(
            "content_block_delta",
            json!({"type": "content_block_delta", "index": 0,
                "delta": {"type": "text_delta", "text": format!("word{i} ")}}),
        ));
    }
    out.push_str(&event(
        "content_block_stop",
        json!({"type": "content_block_stop", "index": 0}),
    ));
    out.push_str(&event(
        "message_delta",
        json!({"type": "message_delta", "delta": {"stop_reason": "end_turn", "stop_sequence": null},
            "usage": {"output_tokens": events}}),
    ));
    out.push_str(&event("message_stop", json!({"type": "message_stop"})));
    out
}

/// An OpenAI chat completion stream of `events` data events: the role, content
/// deltas, the finish reason, and usage; then `[DONE]`.
fn sse_body(events: usize) -> String {
    let chunk = |delta: serde_json::Value, finish: serde_json::Value| {
        let c = serde_json::json!({"id": "chatcmpl-mock", "object": "chat.completion.chunk",
            "created": 1, "model": "bench-model", "system_fingerprint": "fp_mock",
            "choices": [{"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish}]});
        format!("data: {c}\n\n")
    };
    let mut out = chunk(
        serde_json::json!({"role": "assistant", "content": ""}),
        serde_json::Value::Null,
    );
    for i in 0..events.saturating_sub(3) {
        out.push_str(&chunk(
            serde_json::json!({"content": format!("word{i} ")}),
            serde_json::Value::Null,
        ));
    }
    out.push_str(&chunk(serde_json::json!({}), serde_json::json!("stop")));
    let usage = serde_json::json!({"id": "chatcmpl-mock", "object": "chat.completion.chunk",
        "created": 1, "model": "bench-model", "choices": [],
        "usage": {"prompt_tokens": 9, "completion_tokens": events, "total_tokens": events + 9}});
    out.push_str(&format!("data: {usage}\n\ndata: [DONE]\n\n"));
    out
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() as f64 * p) as usize).min(sorted.len() - 1)]
}

async fn ttfb(url: &str, model: &str, n: usize) -> Result<(), String> {
    let client = reqwest::Client::builder()
        .tcp_nodelay(true)
        .build()
        .map_err(|e| e.to_string())?;
    let body = body(model);
    let mut times = Vec::with_capacity(n);
    for i in 0..n + 20 {
        let start = Instant::now();
        let mut resp = client
            .post(url)
            .json(&body)
            .send()
            .await
            .map_err(|e| e.to_string())?;
        if !resp.status().is_success() {
            return Err(format!("{url} answered {}", resp.status()));
        }
        resp.chunk().await.map_err(|e| e.to_string())?;
        let t = start.elapsed();
        while resp.chunk().await.map_err(|e| e.to_string())?.is_some() {}
        if i >= 20 {
            times.push(t); // the first 20 warm the connection up
        }
    }
    times.sort_unstable();
    println!(
        "ttfb requests={n} p50_us={} p99_us={}",
        percentile(&times, 0.50).as_micros(),
        percentile(&times, 0.99).as_micros()
    );
    Ok(())
}

async fn hold_streams(url: &str, model: &str, n: usize, hold: u64) -> Result<(), String> {
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()
        .map_err(|e| e.to_string())?;
    let started = Instant::now();
    let opened = futures_util::stream::iter(0..n)
        .map(|_| {
            let client = client.clone();
            let body = body(model);
            async move {
                let mut resp = client
                    .post(url)
                    .json(&body)
                    .send()
                    .await
                    .map_err(|e| e.to_string())?;
                if !resp.status().is_success() {
                    return Err(format!("answered {}", resp.status()));
                }
                resp.chunk().await.map_err(|e| e.to_string())?;
                Ok::<_, String>(resp)
            }
        })
        .buffer_unordered(n)
        .collect::<Vec<_>>()
        .await;
    let failures = opened.iter().filter(|r| r.is_err()).count();
    if let Some(Err(e)) = opened.iter().find(|r| r.is_err()) {
        eprintln!("first failure: {e}");
    }
    println!(
        "open_streams={} failed={failures} opened_in_ms={}",
        n - failures,
        started.elapsed().as_millis()
    );
    // Signal readiness to the script (it samples the server's memory now).
    println!("holding");
    tokio::time::sleep(Duration::from_secs(hold)).await;
    drop(opened);
    if failures > 0 {
        return Err(format!("{failures} streams failed"));
    }
    Ok(())
}

async fn slow_upstream(addr: &str) -> Result<(), String> {
    use axum::body::Body;
    use bytes::Bytes;
    let app = axum::Router::new().fallback(|| async {
        let first = futures_util::stream::once(async {
            Ok::<_, std::convert::Infallible>(Bytes::from_static(
                b"data: {\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"hi\"},\"finish_reason\":null}]}\n\n",
            ))
        });
        let keep_alive = futures_util::stream::unfold((), |()| async {
            tokio::time::sleep(Duration::from_secs(1)).await;
            Some((Ok(Bytes::from_static(b": keep-alive\n\n")), ()))
        });
        axum::response::Response::builder()
            .header("content-type", "text/event-stream")
            .body(Body::from_stream(first.chain(keep_alive)))
            .unwrap_or_default()
    });
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| format!("{addr}: {e}"))?;
    axum::serve(listener, app).await.map_err(|e| e.to_string())
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Ttfb {
            url,
            model,
            requests,
        } => ttfb(&url, &model, requests).await,
        Command::HoldStreams {
            url,
            model,
            streams,
            hold,
        } => hold_streams(&url, &model, streams, hold).await,
        Command::SlowUpstream { addr } => slow_upstream(&addr).await,
        Command::AgentBody { model, kb, stream } => {
            println!("{}", agent_body(&model, kb, stream));
            Ok(())
        }
        Command::SseBody { events, anthropic } => {
            match anthropic {
                true => print!("{}", anthropic_sse_body(events)),
                false => print!("{}", sse_body(events)),
            }
            Ok(())
        }
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("infermux-bench: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
