//! The HTTP edge against hostile or unlucky clients, over real TCP: more
//! connections than the limit, bodies that stall on hyper's routes, heads
//! larger than the connection front reads, and keep-alive clients that send
//! a request while the server drains.
#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests")]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use infermux::{EchoProvider, Registry, Router};
use infermux_http::server::ServeOptions;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;

fn router() -> Router {
    let registry = Registry::new();
    registry.register(Arc::new(EchoProvider::new())).unwrap();
    Router::without_spans(Arc::new(registry))
}

/// The server on 127.0.0.1:0; the sender starts its shutdown.
async fn start(
    api: infermux_http::Api,
    options: ServeOptions,
) -> (SocketAddr, oneshot::Sender<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = oneshot::channel::<()>();
    tokio::spawn(infermux_http::server::serve_with(
        listener,
        api,
        async move {
            let _ = stopped.await;
        },
        options,
    ));
    (addr, stop)
}

fn options() -> ServeOptions {
    ServeOptions {
        drain_delay: Duration::ZERO,
        grace: Duration::from_secs(5),
        tls: None,
    }
}

const INFER: &str = r#"{"model":"echo-v1","messages":[{"role":"user","content":"hi"}]}"#;

fn infer_request() -> String {
    format!(
        "POST /infer HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{INFER}",
        INFER.len()
    )
}

/// Reads one answer (head, then a `content-length` body) off `tcp`: its head
/// (lowercase) and body. `None` if the connection ends first.
async fn answer(tcp: &mut TcpStream) -> Option<(String, String)> {
    let mut buf = Vec::new();
    let mut byte = [0u8; 1];
    while !buf.ends_with(b"\r\n\r\n") {
        if tcp.read(&mut byte).await.ok()? == 0 {
            return None;
        }
        buf.push(byte[0]);
    }
    let head = String::from_utf8(buf).unwrap().to_ascii_lowercase();
    let len = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length: "))
        .map_or(0, |v| v.trim().parse::<usize>().unwrap());
    let mut body = vec![0u8; len];
    tcp.read_exact(&mut body).await.ok()?;
    Some((head, String::from_utf8(body).unwrap()))
}

/// Whether the peer closed `tcp` (EOF or reset) before `within`.
async fn closed(tcp: &mut TcpStream, within: Duration) -> bool {
    let mut rest = Vec::new();
    matches!(
        tokio::time::timeout(within, tcp.read_to_end(&mut rest)).await,
        Ok(Ok(_) | Err(_))
    )
}

#[tokio::test]
async fn connections_beyond_the_limit_get_a_503_and_the_others_are_served() {
    let (addr, _stop) = start(
        infermux_http::app(router()).with_max_connections(2),
        options(),
    )
    .await;
    let mut a = TcpStream::connect(addr).await.unwrap();
    let mut b = TcpStream::connect(addr).await.unwrap();
    // Both are served (and so counted) before the third arrives.
    for conn in [&mut a, &mut b] {
        conn.write_all(infer_request().as_bytes()).await.unwrap();
        assert!(answer(conn).await.unwrap().0.starts_with("http/1.1 200"));
    }
    let mut c = TcpStream::connect(addr).await.unwrap();
    let (head, body) = answer(&mut c).await.expect("an answer, not a reset");
    assert!(head.starts_with("http/1.1 503"), "{head}");
    assert!(head.contains("connection: close"), "{head}");
    let body: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(body["error"]["code"], "overloaded");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("2 connections")
    );
    assert!(closed(&mut c, Duration::from_secs(2)).await);
    // One leaves: a new one is served again (its slot frees as its task ends).
    drop(a);
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let mut d = TcpStream::connect(addr).await.unwrap();
        d.write_all(infer_request().as_bytes()).await.unwrap();
        let (head, _) = answer(&mut d).await.unwrap();
        if head.starts_with("http/1.1 200") {
            break;
        }
        assert!(Instant::now() < deadline, "the freed slot was never reused");
        tokio::task::yield_now().await;
    }
    // The held connection still works.
    b.write_all(infer_request().as_bytes()).await.unwrap();
    assert!(answer(&mut b).await.unwrap().0.starts_with("http/1.1 200"));
}

#[tokio::test(start_paused = true)]
async fn a_stalled_body_on_any_route_is_cut_after_30_s() {
    let (addr, _stop) = start(infermux_http::app(router()), options()).await;
    // hyper's routes (embeddings; a chunked body on a hot route) and the
    // front's (a sized body on /infer) alike.
    for head in [
        "POST /v1/embeddings HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: 100\r\n\r\n{\"in",
        "POST /infer HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\n\r\n5\r\n{\"mod\r\n",
        "POST /infer HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: 100\r\n\r\n{\"mod",
    ] {
        let mut tcp = TcpStream::connect(addr).await.unwrap();
        tcp.write_all(head.as_bytes()).await.unwrap();
        let started = tokio::time::Instant::now();
        assert!(closed(&mut tcp, Duration::from_secs(60)).await, "{head:?}");
        let waited = started.elapsed();
        assert!(
            waited >= Duration::from_secs(29) && waited <= Duration::from_secs(31),
            "{head:?}: closed after {waited:?}"
        );
    }
}

#[tokio::test]
async fn a_head_larger_than_the_front_reads_is_judged_as_hyper_judges_it() {
    let (addr, _stop) = start(infermux_http::app(router()), options()).await;
    // A 70 KB target, whole in one write: 414, as when it arrives in pieces.
    let target = format!("/infer?pad={}", "a".repeat(70 * 1024));
    for pieces in [1usize, 7] {
        let raw = format!(
            "POST {target} HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{INFER}",
            INFER.len()
        );
        let mut tcp = TcpStream::connect(addr).await.unwrap();
        for piece in raw.as_bytes().chunks(raw.len().div_ceil(pieces)) {
            tcp.write_all(piece).await.unwrap();
            tcp.flush().await.unwrap();
        }
        let (head, _) = answer(&mut tcp).await.unwrap();
        assert!(head.starts_with("http/1.1 414"), "{pieces} pieces: {head}");
    }
    // A large header (not the target) under hyper's limit is served either way.
    let raw = format!(
        "POST /infer HTTP/1.1\r\nhost: x\r\nx-pad: {}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{INFER}",
        "p".repeat(70 * 1024),
        INFER.len()
    );
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    tcp.write_all(raw.as_bytes()).await.unwrap();
    assert!(
        answer(&mut tcp)
            .await
            .unwrap()
            .0
            .starts_with("http/1.1 200")
    );
}

#[tokio::test]
async fn during_the_drain_delay_keep_alive_clients_get_answers_that_close() {
    let options = ServeOptions {
        drain_delay: Duration::from_millis(800),
        grace: Duration::from_secs(5),
        tls: None,
    };
    let (addr, stop) = start(infermux_http::app(router()), options).await;
    // Two keep-alive connections, one on the front (/infer), one that hyper
    // serves (GET /v1/models); each has answered once and waits.
    let mut front = TcpStream::connect(addr).await.unwrap();
    front.write_all(infer_request().as_bytes()).await.unwrap();
    let (head, _) = answer(&mut front).await.unwrap();
    assert!(!head.contains("connection: close"), "{head}");
    let models = "GET /v1/models HTTP/1.1\r\nhost: x\r\n\r\n";
    let mut hyper = TcpStream::connect(addr).await.unwrap();
    hyper.write_all(models.as_bytes()).await.unwrap();
    let (head, _) = answer(&mut hyper).await.unwrap();
    assert!(!head.contains("connection: close"), "{head}");

    stop.send(()).unwrap();
    // Health says draining; a new connection is still served.
    let health = "GET /_infermux/health HTTP/1.1\r\nhost: x\r\n\r\n";
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        let mut probe = TcpStream::connect(addr).await.unwrap();
        probe.write_all(health.as_bytes()).await.unwrap();
        let (head, body) = answer(&mut probe).await.unwrap();
        if head.starts_with("http/1.1 503") {
            assert_eq!(body, r#"{"status":"draining"}"#);
            assert!(head.contains("connection: close"), "{head}");
            break;
        }
        assert!(Instant::now() < deadline, "health never said draining");
        tokio::task::yield_now().await;
    }
    // The waiting connections get a whole answer, then the close.
    front.write_all(infer_request().as_bytes()).await.unwrap();
    let (head, body) = answer(&mut front).await.expect("an answer, not an EOF");
    assert!(
        head.starts_with("http/1.1 200") && head.contains("connection: close"),
        "{head}"
    );
    assert!(body.contains("echo: hi"), "{body}");
    assert!(closed(&mut front, Duration::from_secs(2)).await);
    hyper.write_all(models.as_bytes()).await.unwrap();
    let (head, body) = answer(&mut hyper).await.expect("an answer, not an EOF");
    assert!(
        head.starts_with("http/1.1 200") && head.contains("connection: close"),
        "{head}"
    );
    assert!(body.contains("echo-v1"), "{body}");
    assert!(closed(&mut hyper, Duration::from_secs(2)).await);
    // After the delay the listener is gone.
    let deadline = Instant::now() + Duration::from_secs(5);
    while TcpStream::connect(addr).await.is_ok() {
        assert!(
            Instant::now() < deadline,
            "still accepting after the drain delay"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn x_infermux_timeout_bounds_the_call_on_both_paths() {
    let registry = Registry::new();
    registry
        .register(Arc::new(
            EchoProvider::new().with_delay(Duration::from_secs(3)),
        ))
        .unwrap();
    let api = infermux_http::app(Router::without_spans(Arc::new(registry)));
    let (addr, _stop) = start(api, options()).await;
    let sized = |timeout: &str| {
        format!(
            "POST /infer HTTP/1.1\r\nhost: x\r\nx-infermux-timeout: {timeout}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{INFER}",
            INFER.len()
        )
    };
    // A chunked body takes hyper's path.
    let chunked = |timeout: &str| {
        format!(
            "POST /infer HTTP/1.1\r\nhost: x\r\nx-infermux-timeout: {timeout}\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\n\r\n{:x}\r\n{INFER}\r\n0\r\n\r\n",
            INFER.len()
        )
    };
    for raw in [sized("200ms"), chunked("200ms")] {
        let mut tcp = TcpStream::connect(addr).await.unwrap();
        let started = Instant::now();
        tcp.write_all(raw.as_bytes()).await.unwrap();
        let (head, body) = answer(&mut tcp).await.unwrap();
        assert!(head.starts_with("http/1.1 504"), "{head}");
        assert!(body.contains("upstream_timeout"), "{body}");
        assert!(started.elapsed() < Duration::from_secs(2));
    }
    for raw in [sized("soon"), chunked("0s")] {
        let mut tcp = TcpStream::connect(addr).await.unwrap();
        tcp.write_all(raw.as_bytes()).await.unwrap();
        let (head, body) = answer(&mut tcp).await.unwrap();
        assert!(head.starts_with("http/1.1 400"), "{head}");
        assert!(body.contains("X-Infermux-Timeout"), "{body}");
    }
}

/// A provider whose stream never ends (a chunk of text, always ready);
/// `dropped` turns true when its stream is dropped.
struct Endless {
    models: Vec<String>,
    dropped: Arc<std::sync::atomic::AtomicBool>,
}

struct Flag(Arc<std::sync::atomic::AtomicBool>);

impl Drop for Flag {
    fn drop(&mut self) {
        self.0.store(true, std::sync::atomic::Ordering::SeqCst);
    }
}

#[async_trait::async_trait]
impl infermux::Provider for Endless {
    fn name(&self) -> &str {
        "endless"
    }
    fn models(&self) -> &[String] {
        &self.models
    }
    async fn infer(
        &self,
        _: &infermux::CallContext<'_>,
        _: &infermux::InferRequest,
    ) -> Result<infermux::InferResponse, infermux::ProviderError> {
        Err(infermux::ProviderError::Internal("streams only".into()))
    }
    async fn infer_stream(
        &self,
        _: &infermux::CallContext<'_>,
        _: &infermux::InferRequest,
    ) -> Result<infermux::ChunkStream, infermux::ProviderError> {
        let flag = Flag(self.dropped.clone());
        Ok(Box::pin(futures_util::stream::repeat_with(move || {
            let _ = &flag;
            Ok(infermux::InferChunk {
                delta: "x".repeat(4096),
                ..Default::default()
            })
        })))
    }
}

#[tokio::test(start_paused = true)]
async fn a_client_that_stops_reading_a_stream_is_dropped_after_30_s() {
    let body = r#"{"model":"m","stream":true,"messages":[{"role":"user","content":"go"}]}"#;
    let sized = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    );
    let chunked = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\n\r\n{:x}\r\n{body}\r\n0\r\n\r\n",
        body.len()
    );
    for raw in [sized, chunked] {
        let dropped = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let registry = Registry::new();
        registry
            .register(Arc::new(Endless {
                models: vec!["m".into()],
                dropped: dropped.clone(),
            }))
            .unwrap();
        let api = infermux_http::app(Router::without_spans(Arc::new(registry)));
        let (addr, _stop) = start(api, options()).await;
        let mut tcp = TcpStream::connect(addr).await.unwrap();
        tcp.write_all(raw.as_bytes()).await.unwrap();
        // Read nothing: the server fills the socket, then waits for room.
        let started = tokio::time::Instant::now();
        while !dropped.load(std::sync::atomic::Ordering::SeqCst) {
            assert!(
                started.elapsed() < Duration::from_secs(40),
                "the stalled stream was still being written after 40 s"
            );
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        assert!(
            started.elapsed() >= Duration::from_secs(29),
            "{:?}",
            started.elapsed()
        );
        // What was written is there, then the end.
        assert!(closed(&mut tcp, Duration::from_secs(60)).await);
    }
}
