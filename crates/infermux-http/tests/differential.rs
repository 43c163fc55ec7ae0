//! The connection front and hyper must answer every request alike: the same
//! generated requests (valid, malformed, and split at every byte) go to a
//! server with the front and to one without it, over real TCP, and each
//! pair of outcomes (the status, the error code, whether the connection
//! still serves a next request) must be equal.
#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests")]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use infermux::{EchoProvider, Registry, Router};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

async fn start(front: bool) -> SocketAddr {
    let registry = Registry::new();
    registry.register(Arc::new(EchoProvider::new())).unwrap();
    let api = infermux_http::app(Router::without_spans(Arc::new(registry)));
    let api = if front { api } else { api.without_front() };
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(infermux_http::serve(
        listener,
        api,
        std::future::pending(),
        Duration::from_secs(1),
    ));
    addr
}

/// What a client sees of one request.
#[derive(Debug, PartialEq, Eq)]
struct Outcome {
    /// The status, or 0 when the connection ended (or went quiet) first.
    status: u16,
    /// The `code` of a JSON error body.
    code: Option<String>,
    /// Whether a next, valid request on the same connection is answered.
    reusable: bool,
}

const WAIT: Duration = Duration::from_millis(700);

/// Reads one answer: its status and body; `None` at EOF or after `WAIT`.
async fn read_answer(tcp: &mut TcpStream, buf: &mut Vec<u8>) -> Option<(u16, Vec<u8>)> {
    let head_end = loop {
        if let Some(at) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break at + 4;
        }
        let mut chunk = [0u8; 4096];
        match tokio::time::timeout(WAIT, tcp.read(&mut chunk)).await {
            Ok(Ok(n)) if n > 0 => buf.extend_from_slice(&chunk[..n]),
            _ => return None,
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
    let status = head.get(9..12)?.parse().ok()?;
    let chunked = head.contains("transfer-encoding: chunked");
    let len = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length: "))
        .and_then(|v| v.trim().parse::<usize>().ok());
    buf.drain(..head_end);
    let mut fill = async |buf: &mut Vec<u8>| -> bool {
        let mut chunk = [0u8; 4096];
        match tokio::time::timeout(WAIT, tcp.read(&mut chunk)).await {
            Ok(Ok(n)) if n > 0 => {
                buf.extend_from_slice(&chunk[..n]);
                true
            }
            _ => false,
        }
    };
    let body = if chunked {
        let mut body = Vec::new();
        loop {
            let Some(eol) = buf.windows(2).position(|w| w == b"\r\n") else {
                if !fill(buf).await {
                    return None;
                }
                continue;
            };
            let size = usize::from_str_radix(std::str::from_utf8(&buf[..eol]).ok()?, 16).ok()?;
            while buf.len() < eol + 2 + size + 2 {
                if !fill(buf).await {
                    return None;
                }
            }
            body.extend_from_slice(&buf[eol + 2..eol + 2 + size]);
            buf.drain(..eol + 2 + size + 2);
            if size == 0 {
                break body;
            }
        }
    } else {
        let len = len.unwrap_or(0);
        while buf.len() < len {
            if !fill(buf).await {
                return None;
            }
        }
        buf.drain(..len).collect()
    };
    Some((status, body))
}

const INFER: &str = r#"{"model":"echo-v1","messages":[{"role":"user","content":"hi"}]}"#;

fn next_request() -> String {
    format!(
        "POST /infer HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{INFER}",
        INFER.len()
    )
}

/// Sends `raw` (in pieces of `piece` bytes, each written on its own), then a
/// valid request, and reads what comes back.
async fn outcome(addr: SocketAddr, raw: &[u8], piece: usize) -> Outcome {
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    tcp.set_nodelay(true).unwrap();
    for part in raw.chunks(piece.max(1)) {
        if tcp.write_all(part).await.is_err() {
            break;
        }
        if piece < raw.len() {
            // Let each piece arrive alone.
            tokio::time::sleep(Duration::from_micros(200)).await;
        }
    }
    let mut buf = Vec::new();
    let Some((status, body)) = read_answer(&mut tcp, &mut buf).await else {
        return Outcome {
            status: 0,
            code: None,
            reusable: false,
        };
    };
    let code = serde_json::from_slice::<serde_json::Value>(&body)
        .ok()
        .and_then(|v| v["error"]["code"].as_str().map(str::to_owned));
    let reusable = tcp.write_all(next_request().as_bytes()).await.is_ok()
        && read_answer(&mut tcp, &mut buf)
            .await
            .is_some_and(|(s, _)| s == 200);
    Outcome {
        status,
        code,
        reusable,
    }
}

/// Requests of many shapes: the hot routes and others, good and bad heads,
/// every framing the front must either handle or hand over.
fn cases() -> Vec<String> {
    let chat = r#"{"model":"echo-v1","messages":[{"role":"user","content":"hi"}]}"#;
    let lines = [
        "POST /infer HTTP/1.1",
        "POST /infer?x=1 HTTP/1.1",
        "POST /v1/chat/completions HTTP/1.1",
        "POST /mist HTTP/1.1",
        "POST /nowhere HTTP/1.1",
        "GET /infer HTTP/1.1",
        "POST /infer HTTP/1.0",
        "PUT /v1/chat/completions HTTP/1.1",
    ];
    let bodies = [chat, "{", "", r#"{"model":"echo-v1","messages":[]}"#];
    let mut out = Vec::new();
    for line in lines {
        for body in bodies {
            let n = body.len();
            let heads = [
                format!("content-type: application/json\r\ncontent-length: {n}\r\n"),
                format!("content-type: text/plain\r\ncontent-length: {n}\r\n"),
                format!("content-length: {n}\r\n"),
                format!("content-type: application/json; charset=utf-8\r\ncontent-length: {n}\r\n"),
                format!(
                    "content-type: application/json\r\ncontent-length: {n}\r\nconnection: close\r\n"
                ),
                format!(
                    "content-type: application/json\r\ncontent-length: {n}\r\ncontent-length: {n}\r\n"
                ),
                format!("content-type: application/json\r\ncontent-length: +{n}\r\n"),
                "content-type: application/json\r\ntransfer-encoding: chunked\r\n".to_owned(),
                format!(
                    "content-type: application/json\r\ncontent-length: {n}\r\nx-infermux-timeout: soon\r\n"
                ),
                format!(
                    "content-type: application/json\r\ncontent-length: {n}\r\nx-infermux-timeout: 5s\r\ntraceparent: 00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01\r\n"
                ),
                format!(
                    "content-type: application/json\r\ncontent-length: {n}\r\nx-pad: {}\r\n",
                    "p".repeat(70 * 1024)
                ),
            ];
            for (i, h) in heads.iter().enumerate() {
                let body = if i == 7 {
                    if n == 0 {
                        "0\r\n\r\n".to_owned()
                    } else {
                        format!("{n:x}\r\n{body}\r\n0\r\n\r\n")
                    }
                } else {
                    body.to_owned()
                };
                out.push(format!("{line}\r\nhost: x\r\n{h}\r\n{body}"));
            }
        }
    }
    // Broken heads.
    for raw in [
        "POST /infer HTTP/1.1\r\nbad header line\r\n\r\n",
        "POST /infer HTTP/1.1\r\nhost: x\r\ncontent-length: 2\r\ncontent-length: 3\r\n\r\n{}",
        "POST  /infer HTTP/1.1\r\n\r\n",
        "POST /infer HTTP/9.9\r\ncontent-length: 0\r\n\r\n",
        "\r\n\r\n",
        "POST /infer HTTP/1.1\r\nhost: x\r\ncontent-length: 99999999999999999999\r\n\r\n",
    ] {
        out.push(raw.to_owned());
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_front_and_hyper_answer_every_request_alike() {
    let (with, without) = (start(true).await, start(false).await);
    let cases = cases();
    let mut differ = Vec::new();
    // A few at a time: each waits up to WAIT for what does not come.
    for batch in cases.chunks(16) {
        let runs = batch.iter().map(|raw| async move {
            let raw = raw.as_bytes();
            let (a, b) = tokio::join!(
                outcome(with, raw, raw.len()),
                outcome(without, raw, raw.len())
            );
            (raw, a, b)
        });
        for (raw, a, b) in futures_util::future::join_all(runs).await {
            if a != b {
                differ.push(format!(
                    "{:?}\n  front: {a:?}\n  hyper: {b:?}",
                    String::from_utf8_lossy(&raw[..raw.len().min(200)])
                ));
            }
        }
    }
    assert!(
        differ.is_empty(),
        "{} of {} differ:\n{}",
        differ.len(),
        cases.len(),
        differ.join("\n")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_split_at_every_byte_are_answered_as_whole_ones() {
    let (with, without) = (start(true).await, start(false).await);
    let good = next_request();
    let chat = r#"{"model":"echo-v1","stream":true,"messages":[{"role":"user","content":"hi"}]}"#;
    let stream = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{chat}",
        chat.len()
    );
    let bad =
        "POST /infer HTTP/1.1\r\nhost: x\r\ncontent-type: text/plain\r\ncontent-length: 1\r\n\r\n{";
    let late = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\nx-infermux-timeout: soon\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{chat}",
        chat.len()
    );
    for raw in [good.as_str(), stream.as_str(), bad, late.as_str()] {
        let whole = outcome(with, raw.as_bytes(), raw.len()).await;
        assert_eq!(
            whole,
            outcome(without, raw.as_bytes(), raw.len()).await,
            "{raw:?}"
        );
        // Split in two at every byte, and one byte at a time.
        for at in (1..raw.len()).step_by(7) {
            let mut tcp_a = raw.as_bytes().to_vec();
            let (head, tail) = tcp_a.split_at_mut(at);
            let joined = [head.to_vec(), tail.to_vec()];
            for addr in [with, without] {
                let mut tcp = TcpStream::connect(addr).await.unwrap();
                tcp.set_nodelay(true).unwrap();
                tcp.write_all(&joined[0]).await.unwrap();
                tokio::time::sleep(Duration::from_micros(300)).await;
                tcp.write_all(&joined[1]).await.unwrap();
                let mut buf = Vec::new();
                let (status, _) = read_answer(&mut tcp, &mut buf).await.expect("an answer");
                assert_eq!(status, whole.status, "split at {at}: {raw:?}");
            }
        }
        for addr in [with, without] {
            assert_eq!(
                outcome(addr, raw.as_bytes(), 1).await,
                whole,
                "byte by byte: {raw:?}"
            );
        }
    }
}
