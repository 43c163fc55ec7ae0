//! The HTTP server over real TCP: every endpoint, validation rule and error
//! mapping, spans to a real in-test collector, and graceful shutdown.
#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests")]

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::routing::post;
use futures_util::StreamExt;
use infermux::envelope::{self, Envelope, MessageType};
use infermux::testing::{FakeProvider, Step};
use infermux::{
    EchoProvider, InferRequest, InferResponse, ProviderError, Registry, Router, SpanSink,
};
use infermux_tokentrace::{Reporter, ReporterConfig};
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

struct Server {
    addr: SocketAddr,
    client: reqwest::Client,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<std::io::Result<()>>,
}

impl Server {
    async fn start(router: Router) -> Server {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(infermux_http::serve(
            listener,
            infermux_http::app(router),
            async move {
                let _ = stopped.await;
            },
            Duration::from_secs(5),
        ));
        Server {
            addr,
            client: reqwest::Client::new(),
            stop: Some(stop),
            task,
        }
    }

    async fn echo() -> Server {
        Server::start(Router::without_spans(echo_registry())).await
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    async fn post_json(
        &self,
        path: &str,
        body: &Value,
    ) -> (u16, reqwest::header::HeaderMap, Value) {
        let resp = self
            .client
            .post(self.url(path))
            .json(body)
            .send()
            .await
            .unwrap();
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let text = resp.text().await.unwrap();
        let value = serde_json::from_str(&text).unwrap_or_else(|_| panic!("not JSON: {text}"));
        (status, headers, value)
    }

    async fn post_raw(&self, path: &str, content_type: &str, body: Vec<u8>) -> (u16, Value) {
        let resp = self
            .client
            .post(self.url(path))
            .header("content-type", content_type)
            .body(body)
            .send()
            .await
            .unwrap();
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap();
        (
            status,
            serde_json::from_str(&text).unwrap_or_else(|_| panic!("not JSON: {text}")),
        )
    }
}

fn echo_registry() -> Arc<Registry> {
    let r = Registry::new();
    r.register(Arc::new(EchoProvider::new())).unwrap();
    Arc::new(r)
}

fn hello(model: &str) -> Value {
    json!({"model": model, "messages": [{"role": "user", "content": "Hello"}]})
}

/// Asserts the contract's error body and returns its message.
fn assert_error(status: u16, body: &Value, want_status: u16, want_code: &str) -> String {
    assert_eq!(status, want_status, "{body}");
    assert_eq!(body["error"]["type"], "infermux_error", "{body}");
    assert_eq!(body["error"]["code"], want_code, "{body}");
    body["error"]["message"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn infer_answers_with_echo_and_headers() {
    let s = Server::echo().await;
    let (status, headers, body) = s.post_json("/infer", &hello("echo-v1")).await;
    assert_eq!(status, 200);
    assert_eq!(
        body,
        json!({"model": "echo-v1", "provider": "echo", "content": "echo: Hello", "tokens_in": 1,
               "tokens_out": 2, "cost_usd": 0.00003, "latency_ms": body["latency_ms"], "finish_reason": "stop"})
    );
    assert!(body["latency_ms"].is_u64());
    assert_eq!(headers["x-infermux-provider"], "echo");
    assert_eq!(headers["x-infermux-model"], "echo-v1");
    assert_eq!(headers["x-infermux-strategy"], "priority");
    assert_eq!(headers["x-infermux-cost"], "0.00003");
    assert_eq!(headers["x-infermux-prompt-tokens"], "1");
    assert_eq!(headers["x-infermux-completion-tokens"], "2");
    assert!(headers.contains_key("x-infermux-latency-ms"));
    assert_eq!(headers["content-type"], "application/json");
}

#[tokio::test]
async fn auto_and_provider_name_resolve() {
    let s = Server::echo().await;
    // The body's model is the name the caller asked for; for auto, the one used.
    for (model, shown) in [("", "echo-v1"), ("auto", "echo-v1"), ("echo", "echo")] {
        let (status, headers, body) = s.post_json("/infer", &hello(model)).await;
        assert_eq!(status, 200, "{model}: {body}");
        assert_eq!(body["provider"], "echo");
        assert_eq!(body["model"], shown);
        assert_eq!(headers["x-infermux-model"], "echo-v1");
    }
    let mut req = hello("echo-v1");
    req["provider"] = json!("echo");
    let (status, _, _) = s.post_json("/infer", &req).await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn providers_and_health() {
    let s = Server::echo().await;
    let body: Value = s
        .client
        .get(s.url("/providers"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        body,
        json!({"providers": [{"name": "echo", "models": ["echo-v1"]}]})
    );
    let resp = s
        .client
        .get(s.url("/_infermux/health"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.json::<Value>().await.unwrap(), json!({"status": "ok"}));
}

#[tokio::test]
async fn mist_round_trip_with_checksums() {
    let s = Server::echo().await;
    let msg = envelope::encode(
        "app",
        MessageType::InferRequest,
        &InferRequest::prompt("echo-v1", "Hello"),
    )
    .unwrap();
    let resp = s
        .client
        .post(s.url("/mist"))
        .header("content-type", "application/json")
        .body(msg)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let bytes = resp.bytes().await.unwrap();
    let env = Envelope::decode(&bytes, MessageType::InferResponse)
        .expect("a valid infer.response envelope");
    assert_eq!(env.source, "infermux");
    assert_eq!(env.id.len(), 32);
    assert!(
        env.id
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    );
    assert_ne!(env.checksum, 0);
    let payload: InferResponse = env.payload_as().unwrap();
    assert_eq!(payload.content, "echo: Hello");
    assert_eq!(payload.provider, "echo");

    // A message without a checksum (0) is accepted too.
    let payload = r#"{"model":"echo-v1","messages":[{"role":"user","content":"Hi"}]}"#;
    let ok = format!(
        r#"{{"version":"1","id":"abc","source":"app","type":"infer.request","timestamp_ns":1,"payload":{payload},"checksum":0}}"#
    );
    let (status, _) = s
        .post_raw("/mist", "application/json", ok.into_bytes())
        .await;
    assert_eq!(status, 200);

    let bad = format!(
        r#"{{"version":"1","id":"abc","source":"app","type":"infer.request","timestamp_ns":1,"payload":{payload},"checksum":12345}}"#
    );
    let (status, body) = s
        .post_raw("/mist", "application/json", bad.into_bytes())
        .await;
    assert!(assert_error(status, &body, 400, "invalid_request").starts_with("checksum:"));
}

#[tokio::test]
async fn mist_rejects_bad_envelopes() {
    let s = Server::echo().await;
    let p = r#"{"messages":[{"role":"user","content":"Hi"}]}"#;
    let cases = [
        (format!(r#"{{"id":"a","source":"s","type":"infer.request","payload":{p}}}"#), "version: missing"),
        (format!(r#"{{"version":"1","source":"s","type":"infer.request","payload":{p}}}"#), "id: missing"),
        (format!(r#"{{"version":"1","id":"a","type":"infer.request","payload":{p}}}"#), "source: missing"),
        (format!(r#"{{"version":"1","id":"a","source":"s","payload":{p}}}"#), "type: missing"),
        (format!(r#"{{"version":"1","id":"a","source":"s","type":"infer.response","payload":{p}}}"#), "type: expected"),
        (format!(r#"{{"version":"9","id":"a","source":"s","type":"infer.request","payload":{p}}}"#), "version: unsupported"),
        (r#"{"version":"1","id":"a","source":"s","type":"infer.request","payload":{"messages":[]}}"#.to_owned(), "messages:"),
        (r#"{"version":"1","id":"a","source":"s","type":"infer.request","payload":{"messages":7}}"#.to_owned(), "payload.messages: invalid type"),
    ];
    for (msg, want) in cases {
        let (status, body) = s
            .post_raw("/mist", "application/json", msg.into_bytes())
            .await;
        let message = assert_error(status, &body, 400, "invalid_request");
        assert!(message.starts_with(want), "want {want:?}, got {message:?}");
    }
}

#[tokio::test]
async fn every_validation_rule_is_a_400_naming_the_field() {
    let s = Server::echo().await;
    let cases = [
        (json!({"model": "echo-v1", "messages": []}), "messages:"),
        (
            json!({"model": "echo-v1", "messages": [{"role": "robot", "content": "x"}]}),
            "messages[0].role:",
        ),
        (
            json!({"model": "echo-v1", "messages": [{"role": "user", "content": "x"}], "params": {"temperature": 2.5}}),
            "params.temperature:",
        ),
        (
            json!({"model": "echo-v1", "messages": [{"role": "user", "content": "x"}], "params": {"temperature": -1}}),
            "params.temperature:",
        ),
        (
            json!({"model": "echo-v1", "messages": [{"role": "user", "content": "x"}], "params": {"max_tokens": 0}}),
            "params.max_tokens:",
        ),
        (
            json!({"model": "echo-v1"}),
            "body: missing field `messages`",
        ),
        (
            json!({"model": "echo-v1", "messages": [{"role": "user", "content": 5}]}),
            "messages[0].content: invalid type",
        ),
        (json!({"model": 5, "messages": []}), "model: invalid type"),
    ];
    for (req, want) in cases {
        let (status, _, body) = s.post_json("/infer", &req).await;
        let message = assert_error(status, &body, 400, "invalid_request");
        assert!(message.starts_with(want), "want {want:?}, got {message:?}");
    }
}

#[tokio::test]
async fn unknown_model_and_provider_are_404() {
    let s = Server::echo().await;
    let (status, _, body) = s.post_json("/infer", &hello("gpt-9")).await;
    assert!(assert_error(status, &body, 404, "model_not_found").contains("gpt-9"));
    let mut req = hello("echo-v1");
    req["provider"] = json!("nowhere");
    let (status, _, body) = s.post_json("/infer", &req).await;
    assert!(assert_error(status, &body, 404, "model_not_found").contains("nowhere"));
}

#[tokio::test]
async fn provider_failures_map_to_the_error_table() {
    let fake = FakeProvider::new("fake", &["fake-1"]).script([
        Step::Fail(ProviderError::Unavailable("upstream answered 503".into())),
        Step::Fail(ProviderError::Rejected {
            status: 401,
            message: "invalid x-api-key".into(),
        }),
        Step::Fail(ProviderError::Rejected {
            status: 422,
            message: "bad schema".into(),
        }),
        Step::Fail(ProviderError::RateLimited("slow down".into())),
        Step::Fail(ProviderError::Timeout("60 s".into())),
        Step::Panic,
    ]);
    let r = Registry::new();
    r.register(Arc::new(fake)).unwrap();
    let s = Server::start(Router::without_spans(Arc::new(r))).await;
    let want = [
        (502, "upstream_error", "503"),
        (401, "upstream_rejected", "invalid x-api-key"),
        (422, "upstream_rejected", "bad schema"),
        (429, "rate_limit", "slow down"),
        (504, "upstream_timeout", "60 s"),
        (500, "internal_error", "fake"),
    ];
    for (status_want, code, text) in want {
        let (status, _, body) = s.post_json("/infer", &hello("fake-1")).await;
        let message = assert_error(status, &body, status_want, code);
        assert!(message.contains(text), "{message}");
    }
    // The panic did not take the server down: the script is spent, so it answers.
    let (status, _, body) = s.post_json("/infer", &hello("fake-1")).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["content"], "fake: Hello");
}

#[tokio::test]
async fn wrong_content_type_oversized_and_unknown_routes() {
    let s = Server::echo().await;
    let (status, body) = s
        .post_raw(
            "/infer",
            "text/plain",
            serde_json::to_vec(&hello("echo-v1")).unwrap(),
        )
        .await;
    assert!(assert_error(status, &body, 415, "unsupported_media_type").contains("text/plain"));
    let (status, _) = s
        .post_raw(
            "/infer",
            "application/json; charset=utf-8",
            serde_json::to_vec(&hello("echo-v1")).unwrap(),
        )
        .await;
    assert_eq!(status, 200);

    let big = vec![b'a'; 11 * 1024 * 1024];
    let (status, body) = s.post_raw("/infer", "application/json", big.clone()).await;
    assert_error(status, &body, 413, "payload_too_large");
    let (status, body) = s.post_raw("/mist", "application/json", big).await;
    assert_error(status, &body, 413, "payload_too_large");

    let resp = s.client.get(s.url("/nope")).send().await.unwrap();
    let status = resp.status().as_u16();
    assert_error(status, &resp.json().await.unwrap(), 404, "not_found");
    let resp = s.client.get(s.url("/infer")).send().await.unwrap();
    let status = resp.status().as_u16();
    assert_error(
        status,
        &resp.json().await.unwrap(),
        405,
        "method_not_allowed",
    );
}

#[tokio::test]
async fn a_batch_of_malformed_bodies_then_a_good_one() {
    let s = Server::echo().await;
    let huge_string = format!(
        r#"{{"model":"{}","messages":[{{"role":"user","content":"x"}}]}}"#,
        "m".repeat(5_000_000)
    );
    let bodies: Vec<Vec<u8>> = vec![
        br#"{"model":"echo-v1","messages":[{"role":"user","#.to_vec(),
        br#"{"model":"echo-v1","messages":{"role":"user"}}"#.to_vec(),
        br#"[1,2,3]"#.to_vec(),
        b"".to_vec(),
        b"null".to_vec(),
        vec![0xff, 0xfe, b'{', 0x80],
        b"{\"model\":\"echo-v1\",\"messages\":[{\"role\":\"user\",\"content\":\"\xff\xfe\"}]}".to_vec(),
        br#"{"model":"echo-v1","messages":[{"role":"user","content":"x"}],"params":{"max_tokens":"lots"}}"#.to_vec(),
        br#"{"model":"echo-v1","messages":[{"role":"user","content":"x"}],"params":{"max_tokens":1e99}}"#.to_vec(),
        br#"{"model":"echo-v1","messages":[{"role":"user","content":"x"}],"meta":{"k":1}}"#.to_vec(),
        "{\"model\":\"echo-v1\",\"messages\":[".repeat(2000).into_bytes(),
        huge_string.into_bytes(),
    ];
    for body in bodies {
        for path in ["/infer", "/mist"] {
            let (status, json) = s.post_raw(path, "application/json", body.clone()).await;
            assert!(status == 400 || status == 404, "{path}: {status} {json}");
            let message = json["error"]["message"].as_str().unwrap();
            assert!(
                !message.is_empty() && message.len() < 400 && !message.contains('\n'),
                "{message}"
            );
        }
    }
    let (status, _) = s
        .post_raw("/infer", "application/json", vec![b' '; 11 * 1024 * 1024])
        .await;
    assert_eq!(status, 413);
    let (status, _, body) = s.post_json("/infer", &hello("echo-v1")).await;
    assert_eq!(status, 200);
    assert_eq!(body["content"], "echo: Hello");
}

/// A TokenTrace stand-in: a real HTTP server that keeps every message it gets.
struct Collector {
    url: String,
    messages: Arc<Mutex<Vec<Vec<u8>>>>,
}

impl Collector {
    async fn start() -> Collector {
        let messages: Arc<Mutex<Vec<Vec<u8>>>> = Arc::default();
        let kept = messages.clone();
        let app = axum::Router::new().route(
            "/mist",
            post(move |body: axum::body::Bytes| {
                let kept = kept.clone();
                async move {
                    kept.lock().unwrap().push(body.to_vec());
                    axum::http::StatusCode::ACCEPTED
                }
            }),
        );
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });
        Collector { url, messages }
    }

    /// Waits (boundedly) until `n` messages have arrived, and returns their payloads.
    async fn spans(&self, n: usize) -> Vec<Value> {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let got = self.messages.lock().unwrap().clone();
            if got.len() >= n || Instant::now() > deadline {
                return got
                    .iter()
                    .map(|m| {
                        let env = Envelope::decode(m, MessageType::TraceSpan)
                            .expect("a valid trace.span envelope");
                        assert_eq!(env.source, "infermux");
                        serde_json::from_str(env.payload).unwrap()
                    })
                    .collect();
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

fn is_hex(v: &Value, len: usize) -> bool {
    v.as_str().is_some_and(|s| {
        s.len() == len
            && s.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    })
}

#[tokio::test]
async fn spans_reach_a_real_collector() {
    let collector = Collector::start().await;
    let (reporter, task) = Reporter::spawn(ReporterConfig::new(&collector.url)).unwrap();
    let s = Server::start(Router::new(echo_registry(), Arc::new(reporter))).await;

    let resp = s
        .client
        .post(s.url("/infer"))
        .header(
            "traceparent",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        )
        .json(&hello("echo-v1"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let echoed = resp.headers()["traceparent"].to_str().unwrap().to_owned();
    assert!(
        echoed.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-"),
        "{echoed}"
    );
    let (status, _, _) = s.post_json("/infer", &hello("no-such-model")).await;
    assert_eq!(status, 404);

    let spans = collector.spans(2).await;
    assert_eq!(spans.len(), 2, "{spans:?}");
    let ok = &spans[0];
    assert_eq!(ok["trace_id"], "4bf92f3577b34da6a3ce929d0e0e4736");
    assert_eq!(ok["parent_id"], "00f067aa0ba902b7");
    assert!(is_hex(&ok["span_id"], 32), "{ok}");
    assert!(
        echoed.contains(&ok["span_id"].as_str().unwrap()[..16]),
        "the traceparent names the span"
    );
    assert_eq!(ok["operation"], "infermux.infer");
    assert_eq!(ok["status"], "ok");
    assert!(ok["start_ns"].as_u64().unwrap() <= ok["end_ns"].as_u64().unwrap());
    let attrs = &ok["attrs"];
    assert_eq!(attrs["provider"], "echo");
    assert_eq!(attrs["model"], "echo-v1");
    assert_eq!(attrs["tokens_in"], 1);
    assert_eq!(attrs["tokens_out"], 2);
    assert_eq!(attrs["cost_usd"], 0.00003);
    assert!(attrs["latency_ms"].is_u64());
    assert_eq!(attrs["finish_reason"], "stop");

    let failed = &spans[1];
    assert_eq!(failed["status"], "error");
    assert!(is_hex(&failed["trace_id"], 32));
    assert!(failed.get("parent_id").is_none());
    assert!(
        failed["attrs"]["error"]
            .as_str()
            .unwrap()
            .contains("no-such-model")
    );
    task.shutdown(Duration::from_secs(1)).await;
}

async fn assert_requests_stay_fast(collector_url: &str) {
    let mut config = ReporterConfig::new(collector_url);
    config.queue_capacity = 8;
    config.max_in_flight = 2;
    let (reporter, _task) = Reporter::spawn(config).unwrap();
    let stats = reporter.stats().clone();
    let sink: Arc<dyn SpanSink> = Arc::new(reporter);
    let s = Server::start(Router::new(echo_registry(), sink.clone())).await;
    for _ in 0..100 {
        let started = Instant::now();
        let (status, _, _) = s.post_json("/infer", &hello("echo-v1")).await;
        assert_eq!(status, 200);
        // A reporter that waited on TokenTrace would take its 2 s send timeout.
        assert!(
            started.elapsed() < Duration::from_millis(500),
            "{:?}",
            started.elapsed()
        );
    }
    // 100 spans, a queue of 8 and 2 sends in flight that never succeed:
    // spans were dropped or failed, and counted.
    let deadline = Instant::now() + Duration::from_secs(5);
    while sink.dropped() < 90 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let lost = sink.dropped();
    assert!(lost >= 90, "lost {lost}, sent {}", stats.sent());
    assert_eq!(stats.sent(), 0);
}

#[tokio::test]
async fn a_refused_collector_does_not_slow_requests() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    assert_requests_stay_fast(&format!("http://{addr}")).await;
}

#[tokio::test]
async fn a_hanging_collector_does_not_slow_requests() {
    // Accepts connections and never answers.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((sock, _)) = listener.accept().await {
            held.push(sock);
        }
    });
    assert_requests_stay_fast(&format!("http://{addr}")).await;
}

#[tokio::test]
async fn shutdown_finishes_in_flight_requests() {
    let r = Registry::new();
    r.register(Arc::new(
        EchoProvider::new().with_delay(Duration::from_millis(400)),
    ))
    .unwrap();
    let mut s = Server::start(Router::without_spans(Arc::new(r))).await;
    let client = s.client.clone();
    let url = s.url("/infer");
    let in_flight =
        tokio::spawn(async move { client.post(url).json(&hello("echo-v1")).send().await });
    tokio::time::sleep(Duration::from_millis(100)).await;
    s.stop.take().unwrap().send(()).unwrap();
    let resp = in_flight
        .await
        .unwrap()
        .expect("the in-flight request completes");
    assert_eq!(resp.status(), 200);
    assert_eq!(
        resp.json::<Value>().await.unwrap()["content"],
        "echo: Hello"
    );
    let url = s.url("/infer");
    tokio::time::timeout(Duration::from_secs(5), s.task)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    // The listener is closed: new connections are refused.
    assert!(
        reqwest::Client::new()
            .post(url)
            .json(&hello("echo-v1"))
            .send()
            .await
            .is_err()
    );
}

/// Writes `pieces` on one raw connection, a pause between them, and reads
/// until the server closes it.
async fn raw_exchange(addr: SocketAddr, pieces: &[&str]) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut sock = tokio::net::TcpStream::connect(addr).await.unwrap();
    for piece in pieces {
        sock.write_all(piece.as_bytes()).await.unwrap();
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), sock.read_to_end(&mut out))
        .await
        .expect("the server closes the connection")
        .unwrap();
    String::from_utf8(out).unwrap()
}

/// The status codes of the answers in `raw`, in order.
fn statuses(raw: &str) -> Vec<&str> {
    raw.match_indices("HTTP/1.1 ")
        .map(|(i, _)| &raw[i + 9..i + 12])
        .collect()
}

fn raw_post(path: &str, extra: &str, body: &str) -> String {
    format!(
        "POST {path} HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n{extra}content-length: {}\r\n\r\n{body}",
        body.len()
    )
}

#[tokio::test]
async fn one_connection_carries_split_pipelined_and_mixed_requests() {
    let s = Server::echo().await;
    let infer = raw_post("/infer", "", &hello("echo-v1").to_string());
    let chat = raw_post("/v1/chat/completions", "", &hello("echo-v1").to_string());
    let last = raw_post(
        "/infer",
        "connection: close\r\n",
        &hello("echo-v1").to_string(),
    );
    // The first request in three pieces (mid-head, mid-body); then three
    // at once: a hot route, one the application serves (from there on the
    // connection is its), and a last one asking to close.
    let (a, rest) = infer.split_at(20);
    let (b, c) = rest.split_at(rest.len() - 10);
    let pipelined = format!("{chat}GET /_infermux/health HTTP/1.1\r\nhost: x\r\n\r\n{last}");
    let raw = raw_exchange(s.addr, &[a, b, c, &pipelined]).await;
    assert_eq!(statuses(&raw), ["200", "200", "200", "200"], "{raw}");
    assert_eq!(
        raw.matches(r#""content":"echo: Hello""#).count(),
        3,
        "{raw}"
    );
    assert!(raw.contains(r#"{"status":"ok"}"#), "{raw}");
    assert_eq!(raw.matches("\r\ndate: ").count(), 4, "{raw}");
    assert!(raw.contains("\r\nx-infermux-provider: echo\r\n"), "{raw}");
}

#[tokio::test]
async fn bad_requests_on_a_hot_route_leave_the_connection_usable() {
    let s = Server::echo().await;
    let wrong_type =
        "POST /infer HTTP/1.1\r\ncontent-type: text/plain\r\ncontent-length: 2\r\n\r\nhi";
    let not_json = raw_post("/v1/chat/completions", "", "{not json");
    let good = raw_post(
        "/infer",
        "connection: close\r\n",
        &hello("echo-v1").to_string(),
    );
    let raw = raw_exchange(s.addr, &[wrong_type, &not_json, &good]).await;
    assert_eq!(statuses(&raw), ["415", "400", "200"], "{raw}");
    assert!(
        raw.contains("Content-Type must be application/json"),
        "{raw}"
    );
    let last = &raw[raw.rfind("HTTP/1.1 ").unwrap()..];
    assert!(last.contains("\r\nconnection: close\r\n"), "{last}");
    assert!(last.contains("echo: Hello"), "{last}");
}

#[tokio::test]
async fn garbage_on_the_wire_gets_an_answer_or_a_close_and_the_server_goes_on() {
    let s = Server::echo().await;
    let cases: [(&str, Option<&str>); 5] = [
        // Not HTTP at all: hyper answers 400.
        ("\u{1}\u{2}garbage\r\n\r\n", Some("400")),
        // A hot route with a length that is not a number: hyper's 400.
        (
            "POST /v1/chat/completions HTTP/1.1\r\ncontent-length: abc\r\n\r\n",
            Some("400"),
        ),
        // Two lengths that disagree: hyper's 400.
        (
            "POST /infer HTTP/1.1\r\ncontent-length: 2\r\ncontent-length: 3\r\n\r\n{}",
            Some("400"),
        ),
        // A body shorter than its length, then the close: no answer.
        (
            "POST /v1/chat/completions HTTP/1.1\r\ncontent-length: 50\r\n\r\n{\"model\"",
            None,
        ),
        // A head that never ends, then the close: no answer.
        ("POST /infer HTTP/1.1\r\nx-a: b\r\n", None),
    ];
    for (raw, want) in cases {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut sock = tokio::net::TcpStream::connect(s.addr).await.unwrap();
        sock.write_all(raw.as_bytes()).await.unwrap();
        sock.shutdown().await.unwrap();
        let mut out = Vec::new();
        tokio::time::timeout(Duration::from_secs(5), sock.read_to_end(&mut out))
            .await
            .expect("the server answers or closes")
            .unwrap();
        let out = String::from_utf8_lossy(&out);
        match want {
            Some(status) => assert_eq!(statuses(&out), [status], "{raw:?}: {out}"),
            None => assert!(out.is_empty(), "{raw:?}: {out}"),
        }
    }
    let (status, _, body) = s.post_json("/v1/chat/completions", &hello("echo-v1")).await;
    assert_eq!(status, 200, "{body}");
}

/// Sends `pieces` with `pause` between them, then waits (without closing)
/// for what the server answers until it closes the connection.
async fn trickle(addr: SocketAddr, pieces: &[&str], pause: Duration) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut sock = tokio::net::TcpStream::connect(addr).await.unwrap();
    for piece in pieces {
        sock.write_all(piece.as_bytes()).await.unwrap();
        tokio::time::sleep(pause).await;
    }
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(120), sock.read_to_end(&mut out))
        .await
        .expect("the server closes the connection")
        .unwrap();
    String::from_utf8_lossy(&out).into_owned()
}

// Paused time: the runtime jumps to the next timer whenever everything waits,
// so the 30 s limits pass at once.
#[tokio::test(start_paused = true)]
async fn a_request_that_stalls_is_cut_off_after_30_seconds() {
    let s = Server::echo().await;
    let started = tokio::time::Instant::now();
    // A head that never ends, then a body that never comes whole: closed, no answer.
    let out = trickle(
        s.addr,
        &["POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\n"],
        Duration::ZERO,
    )
    .await;
    assert_eq!(out, "");
    let out = trickle(
        s.addr,
        &["POST /infer HTTP/1.1\r\ncontent-length: 100\r\n\r\n{\"model\""],
        Duration::ZERO,
    )
    .await;
    assert_eq!(out, "");
    // A head too long for the front goes to hyper, whose limit is the same.
    let long = format!(
        "GET /v1/models HTTP/1.1\r\nx-long: {}\r\n",
        "a".repeat(70_000)
    );
    let out = trickle(s.addr, &[&long], Duration::ZERO).await;
    assert!(!out.contains(" 200 "), "{out}");
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_secs(90) && waited < Duration::from_secs(100),
        "three cut-offs of 30 s each, not {waited:?}"
    );
    // Slow but whole within the limit: answered.
    let chat = raw_post(
        "/infer",
        "connection: close\r\n",
        &hello("echo-v1").to_string(),
    );
    let (a, b) = chat.split_at(30);
    let out = trickle(s.addr, &[a, b], Duration::from_secs(10)).await;
    assert_eq!(statuses(&out), ["200"], "{out}");
}

#[tokio::test]
async fn management_status_providers_and_manual_circuits() {
    let r = Registry::new();
    r.register(Arc::new(EchoProvider::new())).unwrap();
    r.register(Arc::new(FakeProvider::new("fake", &["fake-1"])))
        .unwrap();
    let s = Server::start(Router::without_spans(Arc::new(r))).await;
    let (status, _, _) = s.post_json("/infer", &hello("fake-1")).await;
    assert_eq!(status, 200);

    let get = |path: &str| {
        let client = s.client.clone();
        let url = s.url(path);
        async move {
            let resp = client.get(url).send().await.unwrap();
            (resp.status().as_u16(), resp.json::<Value>().await.unwrap())
        }
    };
    let (code, body) = get("/_infermux/providers").await;
    assert_eq!(code, 200);
    let fake = &body["providers"][1];
    assert_eq!(fake["name"], "fake");
    assert_eq!(fake["type"], "fake");
    assert_eq!(fake["models"], json!(["fake-1"]));
    assert_eq!(
        (fake["healthy"].clone(), fake["circuit"].clone()),
        (json!(true), json!("closed"))
    );
    assert_eq!(fake["requests_last_minute"], 1);
    assert_eq!(fake["error_rate"], 0.0);
    assert!(fake["p95_latency_ms"].is_u64());
    assert_eq!(body["providers"][0]["type"], "echo");

    let (code, _, body) = s
        .post_json("/_infermux/providers/fake/circuit/open", &json!({}))
        .await;
    assert_eq!((code, body["circuit"].clone()), (200, json!("open")));
    let (status, _, body) = s.post_json("/infer", &hello("fake-1")).await;
    assert_error(status, &body, 503, "no_healthy_providers");
    let (_, body) = get("/_infermux/providers").await;
    let fake = &body["providers"][1];
    assert_eq!(
        (fake["healthy"].clone(), fake["circuit"].clone()),
        (json!(false), json!("open"))
    );
    assert!(fake["circuit_opened_at"].as_str().unwrap().ends_with('Z'));
    assert!(fake["recovery_at"].is_string());
    let (_, body) = get("/_infermux/status").await;
    assert_eq!(
        (body["status"].clone(), body["open_circuits"].clone()),
        (json!("degraded"), json!(1))
    );

    let (code, _, body) = s
        .post_json("/_infermux/providers/fake/circuit/close", &json!({}))
        .await;
    assert_eq!((code, body["circuit"].clone()), (200, json!("closed")));
    let (status, _, _) = s.post_json("/infer", &hello("fake-1")).await;
    assert_eq!(status, 200);
    let (code, _, _) = s
        .post_json("/_infermux/providers/fake/circuit/reset", &json!({}))
        .await;
    assert_eq!(code, 200);

    let (code, _, body) = s
        .post_json("/_infermux/providers/nobody/circuit/open", &json!({}))
        .await;
    assert!(assert_error(code, &body, 404, "not_found").contains("nobody"));
    let (code, _, body) = s
        .post_json("/_infermux/providers/fake/circuit/explode", &json!({}))
        .await;
    assert!(assert_error(code, &body, 404, "not_found").contains("explode"));
}

#[tokio::test]
async fn the_management_token_guards_everything_but_health() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = infermux_http::app_with_token(
        Router::without_spans(echo_registry()),
        Some("s3cret".into()),
    );
    tokio::spawn(infermux_http::serve(
        listener,
        app,
        std::future::pending(),
        Duration::from_secs(1),
    ));
    let client = reqwest::Client::new();
    let url = |p: &str| format!("http://{addr}{p}");
    assert_eq!(
        client
            .get(url("/_infermux/health"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    for path in [
        "/_infermux/status",
        "/_infermux/providers",
        "/_infermux/metrics",
    ] {
        let resp = client.get(url(path)).send().await.unwrap();
        let status = resp.status().as_u16();
        assert!(
            assert_error(status, &resp.json().await.unwrap(), 401, "unauthorized")
                .contains("Bearer")
        );
        let resp = client
            .get(url(path))
            .bearer_auth("wrong")
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 401);
        let resp = client
            .get(url(path))
            .bearer_auth("s3cret")
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
    }
    let resp = client
        .post(url("/_infermux/providers/echo/circuit/open"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);
    // The routed API is not behind the token.
    let resp = client
        .post(url("/infer"))
        .json(&hello("echo-v1"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_concurrent_load_with_faults_every_request_is_answered_and_counted() {
    const REQUESTS: usize = 10_000;
    let mut rng = fastrand::Rng::with_seed(7);
    let registry = Registry::new();
    for name in ["p1", "p2", "p3"] {
        let steps: Vec<Step> = (0..REQUESTS)
            .map(|_| match rng.u8(0..10) {
                0 => Step::Fail(ProviderError::Unavailable("503".into())),
                1 => Step::Fail(ProviderError::RateLimited("429".into())),
                2 => Step::Fail(ProviderError::Rejected {
                    status: 400,
                    message: "bad".into(),
                }),
                3 => Step::Sleep(
                    Duration::from_millis(2),
                    Box::new(Step::Reply(String::new())),
                ),
                _ => Step::Reply(String::new()),
            })
            .collect();
        registry
            .register(Arc::new(FakeProvider::new(name, &["m"]).script(steps)))
            .unwrap();
    }
    let s = Server::start(Router::without_spans(Arc::new(registry))).await;
    let url = s.url("/infer");
    let client = s.client.clone();
    let statuses: Vec<u16> = futures_util::stream::iter(0..REQUESTS)
        .map(|_| {
            let client = client.clone();
            let url = url.clone();
            async move {
                let resp = tokio::time::timeout(
                    Duration::from_secs(10),
                    client.post(url).json(&hello("m")).send(),
                )
                .await
                .expect("no request hangs")
                .unwrap();
                let status = resp.status().as_u16();
                let body: Value = resp.json().await.unwrap();
                if status != 200 {
                    assert!(body["error"]["code"].is_string(), "{body}");
                }
                status
            }
        })
        .buffer_unordered(64)
        .collect()
        .await;
    assert_eq!(statuses.len(), REQUESTS);
    assert!(
        statuses
            .iter()
            .all(|s| [200, 400, 429, 502, 503].contains(s)),
        "{statuses:?}"
    );
    assert!(statuses.iter().filter(|s| **s == 200).count() > REQUESTS / 2);

    let metrics = s
        .client
        .get(s.url("/_infermux/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let counted: u64 = metrics
        .lines()
        .filter(|l| l.starts_with("infermux_requests_total{"))
        .map(|l| l.rsplit(' ').next().unwrap().parse::<u64>().unwrap())
        .sum();
    assert_eq!(
        counted, REQUESTS as u64,
        "metrics count every request exactly once"
    );
    let ok: u64 = metrics
        .lines()
        .filter(|l| l.starts_with("infermux_requests_total{") && l.contains(r#"status="ok""#))
        .map(|l| l.rsplit(' ').next().unwrap().parse::<u64>().unwrap())
        .sum();
    assert_eq!(ok, statuses.iter().filter(|s| **s == 200).count() as u64);
    assert!(metrics.contains("infermux_circuit_state{provider=\"p1\"}"));
    assert!(metrics.contains("infermux_fallbacks_total"));
}

#[tokio::test]
async fn route_group_and_strategy_headers() {
    let r = Registry::new();
    r.register(Arc::new(EchoProvider::new())).unwrap();
    r.register(Arc::new(EchoProvider::new().named("echo2")))
        .unwrap();
    let router =
        Router::without_spans(Arc::new(r)).with_groups(vec![infermux::router::RouteGroup {
            name: "echoes".into(),
            models: vec!["echo-v1".into()],
            strategy: Some(infermux::config::Strategy::RoundRobin),
            providers: vec![],
        }]);
    let s = Server::start(router).await;
    let mut providers = Vec::new();
    for _ in 0..2 {
        let (status, headers, _) = s.post_json("/v1/chat/completions", &hello("echo-v1")).await;
        assert_eq!(status, 200);
        assert_eq!(headers["x-infermux-strategy"], "round_robin");
        assert_eq!(headers["x-infermux-route-group"], "echoes");
        providers.push(headers["x-infermux-provider"].to_str().unwrap().to_owned());
    }
    providers.sort();
    assert_eq!(providers, ["echo", "echo2"]);
}

// Paused time, as above. hyper closes a keep-alive connection that waits 30 s
// for its next request (its header read timeout); the front does the same.
#[tokio::test(start_paused = true)]
async fn idle_connections_close_after_30_seconds_on_both_paths() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let s = Server::echo().await;
    let infer = raw_post("/infer", "", &hello("echo-v1").to_string());
    for first in ["GET /v1/models HTTP/1.1\r\nhost: x\r\n\r\n", infer.as_str()] {
        let started = tokio::time::Instant::now();
        let out = trickle(s.addr, &[first], Duration::ZERO).await;
        assert_eq!(statuses(&out), ["200"], "{out}");
        let waited = started.elapsed();
        assert!(
            waited >= Duration::from_secs(30) && waited < Duration::from_secs(31),
            "{first:?}: closed after {waited:?}"
        );
    }
    // A connection used every 20 s stays open; it closes 30 s after its
    // last answer.
    let mut sock = tokio::net::TcpStream::connect(s.addr).await.unwrap();
    let mut answered = 0;
    let mut buf = vec![0u8; 64 * 1024];
    for _ in 0..3 {
        sock.write_all(infer.as_bytes()).await.unwrap();
        let n = sock.read(&mut buf).await.unwrap();
        answered += statuses(&String::from_utf8_lossy(&buf[..n])).len();
        tokio::time::sleep(Duration::from_secs(20)).await;
    }
    assert_eq!(
        answered, 3,
        "every request on the busy connection was answered"
    );
    let last = tokio::time::Instant::now() - Duration::from_secs(20);
    let mut rest = Vec::new();
    tokio::time::timeout(Duration::from_secs(120), sock.read_to_end(&mut rest))
        .await
        .expect("the server closes the idle connection")
        .unwrap();
    let idle = last.elapsed();
    assert!(
        rest.is_empty() && idle >= Duration::from_secs(30) && idle < Duration::from_secs(31),
        "closed {idle:?} after the last answer"
    );
}
