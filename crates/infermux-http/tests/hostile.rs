//! Misbehaving upstreams against the real server over TCP: an upstream
//! that reads a request and hangs up, one whose answer never ends, one that
//! breaks HTTP framing, one that quotes the key it was sent, one without a
//! health check endpoint, and one that is down at start. Each must cost the
//! caller at most a clear error: never a second POST, unbounded memory, a
//! leaked key or a provider dropped from routing while it serves.
#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests")]

mod upstream;

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use upstream::{Gateway, Reply, Upstream, error_message};

/// A raw HTTP/1.1 upstream on loopback: `serve` gets each connection and its
/// number (from 1). Returns its URL and how many POSTs it read whole.
async fn raw<F, Fut>(serve: F) -> (String, Arc<AtomicUsize>)
where
    F: Fn(Conn, usize) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let posts = Arc::new(AtomicUsize::new(0));
    let count = posts.clone();
    tokio::spawn(async move {
        let mut n = 0;
        while let Ok((tcp, _)) = listener.accept().await {
            n += 1;
            tokio::spawn(serve(
                Conn {
                    tcp,
                    posts: count.clone(),
                },
                n,
            ));
        }
    });
    (url, posts)
}

struct Conn {
    tcp: TcpStream,
    posts: Arc<AtomicUsize>,
}

impl Conn {
    /// Reads one request whole (head and `Content-Length` body) and returns
    /// its request line; `None` at the end of the connection.
    async fn request(&mut self) -> Option<String> {
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            if self.tcp.read(&mut byte).await.ok()? == 0 {
                return None;
            }
            head.push(byte[0]);
        }
        let head = String::from_utf8(head).unwrap();
        let len = head
            .lines()
            .find_map(|l| {
                l.to_ascii_lowercase()
                    .strip_prefix("content-length: ")
                    .map(str::to_owned)
            })
            .map_or(0, |v| v.trim().parse::<usize>().unwrap());
        let mut body = vec![0u8; len];
        self.tcp.read_exact(&mut body).await.ok()?;
        let line = head.lines().next().unwrap_or_default().to_owned();
        if line.starts_with("POST") {
            self.posts.fetch_add(1, Ordering::SeqCst);
        }
        Some(line)
    }

    async fn send(&mut self, raw: &[u8]) -> bool {
        self.tcp.write_all(raw).await.is_ok()
    }
}

fn json_answer(body: &Value) -> Vec<u8> {
    let body = body.to_string();
    format!(
        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

fn completion(content: &str) -> Value {
    json!({
        "id": "chatcmpl-up", "object": "chat.completion", "created": 1, "model": "m",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}
    })
}

fn sse_answer(content: &str) -> Vec<u8> {
    let events = [
        json!({"id": "c", "object": "chat.completion.chunk", "created": 1, "model": "m",
               "choices": [{"index": 0, "delta": {"role": "assistant", "content": content}, "finish_reason": null}]}),
        json!({"id": "c", "object": "chat.completion.chunk", "created": 1, "model": "m",
               "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}),
    ];
    let mut body = String::new();
    for e in events {
        body += &format!("data: {e}\n\n");
    }
    body += "data: [DONE]\n\n";
    format!(
        "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// Two OpenAI-compatible providers of model `m`, in priority order.
fn two_providers(first: &str, second: &str) -> String {
    format!(
        "providers:\n  - name: first\n    type: openai\n    api_key: sk-first-0123456789\n    base_url: \"{first}/v1\"\n    timeout: 5s\n    models: [m]\n    health_check: {{disabled: true}}\n  - name: second\n    type: openai\n    api_key: sk-second-0123456789\n    base_url: \"{second}/v1\"\n    timeout: 5s\n    models: [m]\n    health_check: {{disabled: true}}\n"
    )
}

fn ask(stream: bool) -> Value {
    json!({"model": "m", "stream": stream, "messages": [{"role": "user", "content": "hi"}]})
}

#[tokio::test]
async fn a_post_the_upstream_read_reaches_it_once_and_fallback_takes_it_on() {
    for stream in [false, true] {
        // Connection 1 answers the first call, then reads the second whole
        // and hangs up without a word; it must not see that call again.
        let (first, posts) = raw(move |mut conn, n| async move {
            let mut k = 0;
            while conn.request().await.is_some() {
                k += 1;
                if n == 1 && k == 2 {
                    return;
                }
                let answer = if stream {
                    sse_answer("one")
                } else {
                    json_answer(&completion("one"))
                };
                conn.send(&answer).await;
            }
        })
        .await;
        let second = Upstream::start().await;
        if stream {
            second.always(Reply::Sse(vec![
                upstream::data(json!({"id": "c", "object": "chat.completion.chunk", "created": 1, "model": "m",
                    "choices": [{"index": 0, "delta": {"content": "two"}, "finish_reason": "stop"}]})),
                "data: [DONE]\n\n".into(),
            ]));
        } else {
            second.always(Reply::Json(200, completion("two")));
        }
        let gw = Gateway::start(&two_providers(&first, &second.url)).await;
        let resp = gw.post("/v1/chat/completions", ask(stream)).await;
        assert_eq!(resp.status(), 200);
        assert_eq!(resp.headers()["x-infermux-provider"], "first");
        resp.bytes().await.unwrap();
        let resp = gw.post("/v1/chat/completions", ask(stream)).await;
        assert_eq!(resp.status(), 200, "stream={stream}");
        assert_eq!(
            resp.headers()["x-infermux-provider"],
            "second",
            "stream={stream}"
        );
        let text = resp.text().await.unwrap();
        assert!(text.contains("two"), "{text}");
        assert_eq!(
            posts.load(Ordering::SeqCst),
            2,
            "stream={stream}: a POST went out twice"
        );
        assert_eq!(second.seen().len(), 1);
    }
}

#[tokio::test]
async fn with_no_other_provider_a_hang_up_after_the_request_is_a_502() {
    let (first, posts) = raw(|mut conn, n| async move {
        let mut k = 0;
        while conn.request().await.is_some() {
            k += 1;
            if n == 1 && k == 2 {
                return;
            }
            conn.send(&json_answer(&completion("one"))).await;
        }
    })
    .await;
    let yaml = format!(
        "providers:\n  - name: only\n    type: openai\n    api_key: sk-x\n    base_url: \"{first}/v1\"\n    models: [m]\n    health_check: {{disabled: true}}\n"
    );
    let gw = Gateway::start(&yaml).await;
    assert_eq!(gw.chat(ask(false)).await.0, 200);
    let (status, _, body) = gw.chat(ask(false)).await;
    assert_eq!(status, 502, "{body}");
    assert_eq!(body["error"]["code"], "upstream_error");
    assert_eq!(posts.load(Ordering::SeqCst), 2);
    // The next call gets a fresh connection and an answer.
    assert_eq!(gw.chat(ask(false)).await.0, 200);
}

#[tokio::test]
async fn an_endless_answer_is_a_502_not_unbounded_memory() {
    // A 200 whose chunked body never ends, as fast as the socket takes it.
    let (url, _) = raw(|mut conn, _| async move {
        conn.request().await;
        conn.send(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\n\r\n")
            .await;
        let piece = format!("100000\r\n{}\r\n", " ".repeat(0x100000));
        while conn.send(piece.as_bytes()).await {}
    })
    .await;
    let yaml = format!(
        "providers:\n  - name: endless\n    type: openai\n    base_url: \"{url}/v1\"\n    timeout: 30s\n    models: [m]\n    health_check: {{disabled: true}}\n"
    );
    let gw = Gateway::start(&yaml).await;
    let (status, _, body) = gw.chat(ask(false)).await;
    assert_eq!(status, 502, "{body}");
    assert!(
        error_message(&body).contains("larger than 64 MiB"),
        "{body}"
    );
}

#[tokio::test]
async fn broken_framing_after_a_whole_body_is_a_502() {
    let answer = completion("fine").to_string();
    let (url, _) = raw(move |mut conn, _| {
        let answer = answer.clone();
        async move {
            conn.request().await;
            let raw = format!(
                "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\n\r\n{:x}\r\n{answer}\r\nnot-a-size\r\n\r\n",
                answer.len()
            );
            conn.send(raw.as_bytes()).await;
            tokio::time::sleep(Duration::from_secs(5)).await;
        }
    })
    .await;
    let yaml = format!(
        "providers:\n  - name: broken\n    type: openai\n    base_url: \"{url}/v1\"\n    models: [m]\n    health_check: {{disabled: true}}\n"
    );
    let gw = Gateway::start(&yaml).await;
    let (status, _, body) = gw.chat(ask(false)).await;
    assert_eq!(status, 502, "{body}");
    assert!(error_message(&body).contains("chunk size"), "{body}");
}

#[tokio::test]
async fn upstream_text_quoting_the_key_never_reaches_the_caller() {
    let key = "sk-live-7Hq2Zx9Lm4Nb6Vc8Xd0Fg";
    let up = Upstream::start().await;
    // OpenAI's own wording, a proxy that echoes the header, a masked echo.
    up.reply(Reply::Json(
        401,
        json!({"error": {"message": format!("Incorrect API key provided: {key}. You can find your API key at https://platform.openai.com/account/api-keys."), "type": "invalid_request_error", "code": "invalid_api_key"}}),
    ));
    up.reply(Reply::Raw(
        502,
        "text/html",
        format!("<html>bad gateway; request had Authorization: Bearer {key}</html>"),
    ));
    up.reply(Reply::Json(
        401,
        json!({"error": {"message": "Incorrect API key provided: sk-live-****************Fg0Fg8Xd0Fg."}}),
    ));
    let yaml = format!(
        "providers:\n  - name: leaky\n    type: openai\n    api_key: \"{key}\"\n    base_url: \"{}/v1\"\n    models: [m]\n    health_check: {{disabled: true}}\n",
        up.url
    );
    let gw = Gateway::start(&yaml).await;
    for want in [401, 502, 401] {
        let (status, _, body) = gw.chat(ask(false)).await;
        assert_eq!(status, want, "{body}");
        let text = body.to_string();
        assert!(!text.contains(key), "the key leaked: {text}");
        assert!(!text.contains("7Hq2Zx9L"), "part of the key leaked: {text}");
        assert!(!text.contains("8Xd0Fg"), "the key's tail leaked: {text}");
        assert!(text.contains("[redacted]"), "{text}");
    }
    assert_eq!(
        up.seen()[0].header("authorization"),
        Some(&*format!("Bearer {key}"))
    );
    // The spans carry the same redacted messages.
    for span in gw.spans.spans() {
        let error = span.attrs.error.unwrap_or_default();
        assert!(
            !error.contains("7Hq2Zx9L") && !error.contains("8Xd0Fg"),
            "{error}"
        );
    }
}

#[tokio::test]
async fn a_provider_without_a_models_endpoint_serves_traffic() {
    // Many OpenAI-compatible servers answer 404 (or 401, 405) to GET
    // /models; that is no evidence of anything.
    for status in [404u16, 401, 405] {
        let up = Upstream::start().await;
        up.reply(Reply::Json(status, json!({"detail": "Not Found"})));
        up.always(Reply::Json(200, completion("served")));
        let yaml = format!(
            "providers:\n  - name: bare\n    type: ollama\n    base_url: \"{}/v1\"\n    models: [m]\n    health_check: {{interval: 50ms}}\n",
            up.url
        );
        let base = Gateway::start_checked(&yaml).await.base;
        let client = reqwest::Client::new();
        let deadline = Instant::now() + Duration::from_secs(5);
        while up.seen().is_empty() {
            assert!(Instant::now() < deadline, "no health check came");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        // Well past a few intervals: still routed, and asked only once.
        tokio::time::sleep(Duration::from_millis(300)).await;
        let resp = client
            .post(format!("{base}/v1/chat/completions"))
            .json(&ask(false))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200, "{status}");
        let checks = up
            .seen()
            .iter()
            .filter(|s| s.path_and_query == "/v1/models")
            .count();
        assert_eq!(checks, 1, "{status}: the absent endpoint was probed again");
    }
}

#[tokio::test]
async fn a_provider_down_at_start_gets_traffic_soon_after_it_comes_up() {
    let up_now = Arc::new(AtomicBool::new(false));
    let flag = up_now.clone();
    let (url, _) = raw(move |mut conn, _| {
        let flag = flag.clone();
        async move {
            while let Some(line) = conn.request().await {
                let answer = if !flag.load(Ordering::SeqCst) {
                    b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 4\r\n\r\ndown".to_vec()
                } else if line.starts_with("GET") {
                    json_answer(&json!({"object": "list", "data": []}))
                } else {
                    json_answer(&completion("up"))
                };
                conn.send(&answer).await;
            }
        }
    })
    .await;
    let yaml = format!(
        "providers:\n  - name: late\n    type: ollama\n    base_url: \"{url}/v1\"\n    models: [m]\n    health_check: {{interval: 30s}}\n"
    );
    let gw = Gateway::start_checked(&yaml).await;
    let (base, registry) = (gw.base.clone(), gw.registry.clone());
    let healthy = || registry.entries()[0].healthy.load(Ordering::Relaxed);
    let deadline = Instant::now() + Duration::from_secs(5);
    while healthy() {
        assert!(Instant::now() < deadline, "the first check never failed");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let client = reqwest::Client::new();
    let call = || {
        client
            .post(format!("{base}/v1/chat/completions"))
            .json(&ask(false))
            .send()
    };
    assert_eq!(call().await.unwrap().status(), 503);
    up_now.store(true, Ordering::SeqCst);
    let came_up = Instant::now();
    while !healthy() {
        // A 30 s interval, but checks after a failure come from 1 s on.
        assert!(
            came_up.elapsed() < Duration::from_secs(4),
            "still out after 4 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(call().await.unwrap().status(), 200);
}
