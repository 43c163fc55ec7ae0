//! The connection front: reads HTTP/1.1 requests off each connection itself
//! and answers the API's hot routes (`POST /v1/chat/completions`, `/infer`,
//! `/mist`) by calling their handlers directly; any other request, and anything
//! unusual about one (chunked or oversized bodies, `Expect`, `Upgrade`,
//! HTTP/1.0, a head it cannot parse), hands the connection with what was read
//! of it to hyper and the axum application, which serve it from there on.
//!
//! Why: on the proxy path the general server's machinery (a header map per
//! request, the router and its extractors, boxed services, a response encoder
//! for every case) cost as much CPU as the call itself. Here a request's head
//! is parsed in place with `httparse`, the few headers the handlers read are
//! picked out, the body is a slice of the connection's buffer, and the answer
//! is written with one write (one per event for a stream).
//!
//! The behaviour is the application's: the same handlers, the same error
//! bodies, a panicking handler answers 500, a client that goes away cancels
//! its call (the read side is watched while the call runs and while a stream
//! is written), and draining closes a connection once it is idle.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::response::{IntoResponse, Response};
use bytes::{Buf, Bytes, BytesMut};
use futures_util::FutureExt;
use http_body_util::BodyExt;
use hyper_util::rt::TokioIo;
use hyper_util::service::TowerToHyperService;
use infermux::{MAX_MESSAGE_SIZE, RequestContext, TraceContext};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::watch;

use crate::error::ApiError;
use crate::routes::{Answer, RoutedJson};
use crate::{Api, AppState, anthropic, error, extract, openai, routes};

/// The largest request head read here (hyper takes a larger one over).
const MAX_HEAD: usize = 64 * 1024;
/// Header lines parsed here (hyper takes a request with more over).
const MAX_HEADERS: usize = 100;
/// What a client may send ahead (pipelined requests) while its call runs.
const MAX_AHEAD: usize = 64 * 1024;
/// How long a started request may take to arrive whole, head and body, and
/// how long a connection may wait idle for its next request before it is
/// closed (hyper's header read timeout, on the connections it serves, covers
/// both the same way).
pub(crate) const READ_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a write may wait for a client that reads nothing (a full
/// socket) before the connection is closed, on either path.
pub(crate) const WRITE_TIMEOUT: Duration = Duration::from_secs(30);

/// The routes answered here.
#[derive(Debug, Clone, Copy)]
enum Route {
    ChatCompletions,
    Messages,
    Infer,
    Mist,
}

/// A request head this front answers, with what its handler needs.
struct Head {
    route: Route,
    head_len: usize,
    body_len: usize,
    /// `Connection: close`: the connection ends after the answer.
    close: bool,
    /// A refused `Content-Type` or `X-Infermux-Timeout`, answered once the
    /// body is read.
    refused: Result<(), ApiError>,
    /// The caller's trace and deadline.
    trace: Option<TraceContext>,
    timeout: Option<Duration>,
    /// Where in the head the caller's `Authorization`, `x-api-key` and
    /// `X-Infermux-Caller` values are, for [`extract::identify`], then its
    /// `anthropic-version` and `anthropic-beta`.
    /// (start, end) in the head; (0, 0): not sent (no value starts at 0).
    who: [(u32, u32); 5],
}

enum Parsed {
    Ours(Head),
    Partial,
    /// For hyper and the application.
    Theirs,
}

/// Serves one connection until the client closes it, a draining server
/// finds it idle, or a request goes to hyper (which then serves the rest).
pub(crate) async fn connection(tcp: TcpStream, api: Api, mut draining: watch::Receiver<bool>) {
    let Some(state) = api.fast.clone() else {
        return fallback(tcp, BytesMut::new(), api.router, draining).await;
    };
    let mut conn = Conn {
        tcp,
        buf: BytesMut::with_capacity(4096),
        out: Vec::with_capacity(1024),
    };
    // Closes the connection once it has waited READ_TIMEOUT for a request.
    // One timer for the connection's life, not one per request: when it
    // fires on a connection that was busy meanwhile, it is set again for
    // READ_TIMEOUT after the connection last went idle.
    let mut idle_since = tokio::time::Instant::now();
    let idle = tokio::time::sleep_until(idle_since + READ_TIMEOUT);
    tokio::pin!(idle);
    loop {
        // Set when a started request first has to wait for more bytes.
        let mut deadline = None;
        let head = loop {
            if conn.buf.is_empty() {
                if *draining.borrow() {
                    return;
                }
                // `biased`: in the order written, without drawing a random number.
                tokio::select! {
                    biased;
                    read = conn.fill() => match read {
                        Ok(0) | Err(_) => return,
                        Ok(_) => {}
                    },
                    // Idle when the server drains: close.
                    _ = draining.changed() => return,
                    () = &mut idle => {
                        let due = idle_since + READ_TIMEOUT;
                        if tokio::time::Instant::now() < due {
                            idle.as_mut().reset(due);
                            continue;
                        }
                        tracing::debug!(
                            peer = ?conn.tcp.peer_addr().ok(),
                            timeout_s = READ_TIMEOUT.as_secs(),
                            "closing a connection idle since its last answer"
                        );
                        return;
                    }
                }
                continue;
            }
            match parse(&conn.buf) {
                Parsed::Ours(head) => break head,
                Parsed::Partial if conn.buf.len() <= MAX_HEAD => {
                    if !conn.fill_by(&mut deadline).await {
                        return;
                    }
                }
                Parsed::Partial | Parsed::Theirs => {
                    return fallback(conn.tcp, conn.buf, api.router, draining).await;
                }
            }
        };
        let total = head.head_len + head.body_len;
        // Room for the whole body at once (at most 10 MiB: `parse` checked).
        conn.buf.reserve(total.saturating_sub(conn.buf.len()));
        while conn.buf.len() < total {
            if !conn.fill_by(&mut deadline).await {
                return;
            }
        }
        let whole = conn.buf.split_to(total).freeze();
        let body = whole.slice(head.head_len..);
        let mut ctx = RequestContext {
            trace: head.trace,
            timeout: head.timeout,
            ..RequestContext::default()
        };
        let value = |i: usize| match head.who[i] {
            (0, 0) => None,
            (start, end) => whole.get(start as usize..end as usize),
        };
        let mut refused = head.refused;
        if refused.is_ok() {
            refused = extract::identify(&state, &mut ctx, value(0), value(1), value(2));
        }
        let versions = match head.route {
            Route::Messages => {
                let text = |i: usize| {
                    value(i)
                        .and_then(|v| std::str::from_utf8(v).ok())
                        .map(Box::from)
                };
                anthropic::Versions {
                    version: text(3),
                    beta: text(4),
                }
            }
            _ => anthropic::Versions::default(),
        };
        let Some(answer) = conn
            .call(&state, head.route, refused, ctx, versions, body)
            .await
        else {
            return; // the client went away: its call is dropped, so cancelled
        };
        // Once shutdown has begun, answer and close: the client reconnects
        // elsewhere instead of finding this connection gone.
        let close = head.close || *draining.borrow() || state.shared.closing();
        let written = match answer {
            Answer::Routed(routed) => conn.respond_routed(&routed, close).await,
            Answer::Response(resp) => conn.respond(resp, close).await,
        };
        if written.is_err() || close {
            let _ = conn.tcp.shutdown().await;
            return;
        }
        idle_since = tokio::time::Instant::now();
    }
}

/// Fuzzing entry: parses `data` as the front parses a connection's bytes
/// and checks what must hold for any input: no panic; a head it takes lies
/// within the input and frames a body within the limit; the same head is
/// found in the head's bytes alone; and no shorter prefix is taken as a
/// whole head.
#[cfg(feature = "fuzzing")]
pub fn fuzz_request(data: &[u8]) {
    let Parsed::Ours(head) = parse(data) else {
        return;
    };
    assert!(head.head_len <= data.len() && head.body_len <= MAX_MESSAGE_SIZE);
    match parse(&data[..head.head_len]) {
        Parsed::Ours(again) => assert_eq!(
            (again.head_len, again.body_len, again.close),
            (head.head_len, head.body_len, head.close)
        ),
        _ => panic!("the head alone is not taken"),
    }
    for cut in [head.head_len / 2, head.head_len.saturating_sub(1)] {
        assert!(
            !matches!(parse(&data[..cut]), Parsed::Ours(_)),
            "a prefix of {cut} bytes was taken as a whole head"
        );
    }
}

/// Parses a request head off the front of `buf`.
fn parse(buf: &[u8]) -> Parsed {
    // Uninitialized slots: zeroing a hundred of them costs more than parsing.
    let mut slots = [const { std::mem::MaybeUninit::uninit() }; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut []);
    let head_len = match req.parse_with_uninit_headers(buf, &mut slots) {
        // A head larger than the front reads is hyper's to judge (414 for a
        // long target), whether it came in one read or in many.
        Ok(httparse::Status::Complete(n)) if n > MAX_HEAD => return Parsed::Theirs,
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Parsed::Partial,
        Err(_) => return Parsed::Theirs,
    };
    if req.version != Some(1) || req.method != Some("POST") {
        return Parsed::Theirs;
    }
    let path = req.path.unwrap_or_default();
    let path = path.split_once('?').map_or(path, |(p, _)| p);
    let route = match path {
        "/v1/chat/completions" => Route::ChatCompletions,
        "/v1/messages" => Route::Messages,
        "/infer" => Route::Infer,
        "/mist" => Route::Mist,
        _ => return Parsed::Theirs,
    };
    let mut body_len = None;
    let mut close = false;
    let mut content_type = None;
    let mut trace = None;
    let mut timeout = None;
    let mut who = [(0, 0); 5];
    // Where a header value lies in `buf` (httparse's slices point into it;
    // the head is at most MAX_HEAD bytes, so offsets fit in a u32).
    let at = |v: &[u8]| {
        let start = (v.as_ptr() as usize).wrapping_sub(buf.as_ptr() as usize);
        let start = u32::try_from(start).unwrap_or(0);
        (start, start + u32::try_from(v.len()).unwrap_or(0))
    };
    for h in req.headers.iter() {
        let name = h.name;
        if name.eq_ignore_ascii_case("authorization") {
            who[0] = at(h.value);
        } else if name.eq_ignore_ascii_case("x-api-key") {
            who[1] = at(h.value);
        } else if name.eq_ignore_ascii_case(extract::CALLER_HEADER) {
            who[2] = at(h.value);
        } else if name.eq_ignore_ascii_case("anthropic-version") {
            who[3] = at(h.value);
        } else if name.eq_ignore_ascii_case("anthropic-beta") {
            // Several lines are one list, as HTTP joins them: hyper's turn.
            if who[4] != (0, 0) {
                return Parsed::Theirs;
            }
            who[4] = at(h.value);
        } else if name.eq_ignore_ascii_case("content-length") {
            let len = std::str::from_utf8(h.value)
                .ok()
                .filter(|v| !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()))
                .and_then(|v| v.parse::<usize>().ok());
            match (body_len, len) {
                (None, Some(len)) => body_len = Some(len),
                _ => return Parsed::Theirs, // repeated or not a number
            }
        } else if name.eq_ignore_ascii_case("content-type") {
            content_type = Some(h.value);
        } else if name.eq_ignore_ascii_case("traceparent") {
            trace = std::str::from_utf8(h.value)
                .ok()
                .and_then(TraceContext::from_traceparent);
        } else if name.eq_ignore_ascii_case(extract::TIMEOUT_HEADER) {
            timeout = Some(extract::timeout(h.value));
        } else if name.eq_ignore_ascii_case("connection") {
            for token in h.value.split(|&b| b == b',') {
                let token = token.trim_ascii();
                if token.eq_ignore_ascii_case(b"close") {
                    close = true;
                } else if token.eq_ignore_ascii_case(b"upgrade") {
                    return Parsed::Theirs;
                }
            }
        } else if name.eq_ignore_ascii_case("transfer-encoding")
            || name.eq_ignore_ascii_case("expect")
            || name.eq_ignore_ascii_case("upgrade")
        {
            return Parsed::Theirs;
        }
    }
    let timeout = timeout.transpose();
    let refused = match (extract::check_content_type(content_type), &timeout) {
        (Err(e), _) => Err(e),
        (Ok(()), Err(e)) => Err(ApiError(e.0.clone())),
        (Ok(()), Ok(_)) => Ok(()),
    };
    match body_len {
        Some(body_len) if body_len <= MAX_MESSAGE_SIZE => Parsed::Ours(Head {
            route,
            head_len,
            body_len,
            close,
            refused,
            trace,
            timeout: timeout.ok().flatten(),
            who,
        }),
        // No length (an empty body to hyper) or over the limit (a 413 there).
        _ => Parsed::Theirs,
    }
}

/// A connection served here: what was read and not yet used, and the
/// buffer answers are written from.
struct Conn {
    tcp: TcpStream,
    buf: BytesMut,
    out: Vec<u8>,
}

impl Conn {
    /// Reads more; 0 at the end of the connection.
    async fn fill(&mut self) -> io::Result<usize> {
        if self.buf.capacity() - self.buf.len() < 1024 {
            self.buf.reserve(4096);
        }
        self.tcp.read_buf(&mut self.buf).await
    }

    /// Reads more of a started request, which must be whole within
    /// [`READ_TIMEOUT`] of its first wait (`deadline`, set then). False when
    /// the connection ended, failed or ran out of time: close it.
    async fn fill_by(&mut self, deadline: &mut Option<tokio::time::Instant>) -> bool {
        let at = *deadline.get_or_insert_with(|| tokio::time::Instant::now() + READ_TIMEOUT);
        match tokio::time::timeout_at(at, self.fill()).await {
            Ok(Ok(n)) => n > 0,
            Ok(Err(_)) => false,
            Err(_) => {
                tracing::debug!(
                    peer = ?self.tcp.peer_addr().ok(),
                    timeout_s = READ_TIMEOUT.as_secs(),
                    "a request did not arrive whole in time; closing its connection"
                );
                false
            }
        }
    }

    /// Runs the route's handler while watching the client; `None` if the
    /// client went away first.
    async fn call(
        &mut self,
        state: &Arc<AppState>,
        route: Route,
        refused: Result<(), ApiError>,
        ctx: RequestContext,
        versions: anthropic::Versions,
        body: Bytes,
    ) -> Option<Answer> {
        let handler = async move {
            match (route, refused) {
                // Anthropic's error shape, refusals included.
                (Route::Messages, refused) => {
                    let answer = match refused {
                        Ok(()) => anthropic::messages(state, ctx, versions, body).await,
                        Err(e) => Err(e.into()),
                    };
                    Ok(answer.unwrap_or_else(|e| Answer::Response(e.into_response())))
                }
                (_, Err(e)) => Err(e),
                (Route::ChatCompletions, Ok(())) => openai::completions(state, ctx, body).await,
                (Route::Infer, Ok(())) => routes::infer_body(state, ctx, body).await,
                (Route::Mist, Ok(())) => routes::mist_body(state, ctx, body).await,
            }
        };
        // Boxed: the call's future is a few KB, and moving it into the
        // wrappers below copied it each time.
        let handler = std::panic::AssertUnwindSafe(Box::pin(handler)).catch_unwind();
        // The handler first: a call that completes at once never has the
        // client's side polled.
        tokio::select! {
            biased;
            answer = handler => Some(match answer {
                Ok(Ok(answer)) => answer,
                Ok(Err(e)) => Answer::Response(e.into_response()),
                Err(panic) => Answer::Response(error::panic_response(panic)),
            }),
            () = gone(&mut self.tcp, &mut self.buf) => None,
        }
    }

    /// Writes a routed call's JSON answer, head and body in one write.
    async fn respond_routed(&mut self, answer: &RoutedJson, close: bool) -> io::Result<()> {
        let out = &mut self.out;
        out.clear();
        out.extend_from_slice(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n");
        answer.headers(|name, value| {
            out.extend_from_slice(name.as_str().as_bytes());
            out.extend_from_slice(b": ");
            out.extend_from_slice(value);
            out.extend_from_slice(b"\r\n");
        });
        end_head(out, close, answer.body.len());
        out.extend_from_slice(&answer.body);
        write_out(&mut self.tcp, out).await
    }

    /// Writes `resp`: sized bodies with their head in one write, others
    /// chunked, a write per piece as it comes.
    async fn respond(&mut self, resp: Response, close: bool) -> io::Result<()> {
        let (parts, mut body) = resp.into_parts();
        self.out.clear();
        write_head(&mut self.out, &parts);
        if let Some(len) = http_body::Body::size_hint(&body).exact() {
            end_head(&mut self.out, close, len as usize);
            while let Some(frame) = body.frame().await {
                if let Ok(data) = frame.map_err(io::Error::other)?.into_data() {
                    self.out.extend_from_slice(&data);
                }
            }
            return write_out(&mut self.tcp, &self.out).await;
        }
        date_and_close(&mut self.out, close);
        self.out
            .extend_from_slice(b"transfer-encoding: chunked\r\n\r\n");
        // Pieces that are ready now (the head and a stream's first event;
        // events that came from the upstream in one read) go out in one
        // write; when none is ready, what is waiting is written at once and
        // the next piece awaited. Nothing waits for a later piece.
        loop {
            let ready = if self.out.len() < COALESCE {
                body.frame().now_or_never()
            } else {
                None
            };
            let frame = match ready {
                Some(frame) => frame,
                None => {
                    if !self.out.is_empty() {
                        write_out(&mut self.tcp, &self.out).await?;
                        self.out.clear();
                    }
                    tokio::select! {
                        biased;
                        frame = body.frame() => frame,
                        () = gone(&mut self.tcp, &mut self.buf) => {
                            return Err(io::ErrorKind::ConnectionAborted.into());
                        }
                    }
                }
            };
            match frame {
                None => {
                    self.out.extend_from_slice(b"0\r\n\r\n");
                    return write_out(&mut self.tcp, &self.out).await;
                }
                Some(frame) => match frame.map_err(io::Error::other)?.into_data() {
                    Ok(data) if !data.is_empty() => {
                        append_hex(&mut self.out, data.len());
                        self.out.extend_from_slice(b"\r\n");
                        self.out.extend_from_slice(&data);
                        self.out.extend_from_slice(b"\r\n");
                    }
                    _ => {}
                },
            }
        }
    }
}

/// Ready pieces of a streamed answer are gathered into one write up to this
/// many bytes.
const COALESCE: usize = 64 * 1024;

/// Writes `out` whole; a client that takes none of it for
/// [`WRITE_TIMEOUT`] (it stopped reading a stream, say) fails the write, and
/// its connection is closed. The timer is set only when the socket is full.
async fn write_out(tcp: &mut TcpStream, out: &[u8]) -> io::Result<()> {
    let mut write = std::pin::pin!(tcp.write_all(out));
    if let Some(done) = (&mut write).now_or_never() {
        return done;
    }
    match tokio::time::timeout(WRITE_TIMEOUT, write).await {
        Ok(done) => done,
        Err(_) => {
            tracing::debug!(
                timeout_s = WRITE_TIMEOUT.as_secs(),
                "a client read nothing of its answer in time; closing its connection"
            );
            Err(io::ErrorKind::TimedOut.into())
        }
    }
}

/// Resolves when the client closes its side (or the connection fails);
/// bytes it sends ahead meanwhile are kept, up to [`MAX_AHEAD`].
async fn gone(tcp: &mut TcpStream, buf: &mut BytesMut) {
    loop {
        if buf.len() >= MAX_AHEAD {
            return std::future::pending().await;
        }
        buf.reserve(4096);
        match tcp.read_buf(buf).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
    }
}

/// The status line and the response's headers (but the framing ones and
/// `date`, written here).
fn write_head(out: &mut Vec<u8>, parts: &http::response::Parts) {
    use http::header;
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(parts.status.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(parts.status.canonical_reason().unwrap_or("").as_bytes());
    out.extend_from_slice(b"\r\n");
    for (name, value) in &parts.headers {
        if matches!(
            *name,
            header::CONTENT_LENGTH | header::TRANSFER_ENCODING | header::CONNECTION | header::DATE
        ) {
            continue;
        }
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
}

/// `date`, `connection: close` when closing.
fn date_and_close(out: &mut Vec<u8>, close: bool) {
    out.extend_from_slice(b"date: ");
    date::append(out);
    out.extend_from_slice(b"\r\n");
    if close {
        out.extend_from_slice(b"connection: close\r\n");
    }
}

/// The end of a sized answer's head: `date`, `connection`, its length.
fn end_head(out: &mut Vec<u8>, close: bool, len: usize) {
    date_and_close(out, close);
    append_len(out, b"content-length: ", len as u64);
    out.extend_from_slice(b"\r\n\r\n");
}

/// `prefix` and `n` in decimal, without a line end.
fn append_len(out: &mut Vec<u8>, prefix: &[u8], n: u64) {
    out.extend_from_slice(prefix);
    out.extend_from_slice(routes::decimal(n, &mut [0u8; 20]));
}

/// `n` in hexadecimal (a chunk size).
fn append_hex(out: &mut Vec<u8>, n: usize) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut digits = [0u8; 16];
    let mut i = digits.len();
    let mut n = n;
    loop {
        i -= 1;
        digits[i] = HEX[n & 0xf];
        n >>= 4;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[i..]);
}

/// The `Date` header, formatted once a second per thread.
mod date {
    use std::cell::RefCell;
    use std::time::{Duration, SystemTime, UNIX_EPOCH};

    thread_local! {
        static NOW: RefCell<(u64, String)> = const { RefCell::new((u64::MAX, String::new())) };
    }

    pub(super) fn append(out: &mut Vec<u8>) {
        let now = SystemTime::now();
        let secs = now
            .duration_since(UNIX_EPOCH)
            .unwrap_or(Duration::ZERO)
            .as_secs();
        NOW.with_borrow_mut(|(at, text)| {
            if *at != secs {
                *at = secs;
                *text = httpdate::fmt_http_date(now);
            }
            out.extend_from_slice(text.as_bytes());
        });
    }
}

/// Hands the connection, with the bytes already read from it, to hyper and
/// the axum application until it ends; a drain shuts it down gracefully.
async fn fallback(
    tcp: TcpStream,
    read: BytesMut,
    router: axum::Router,
    draining: watch::Receiver<bool>,
) {
    let peer = tcp.peer_addr().ok();
    serve_hyper(tcp, peer, read, router, draining).await;
}

/// Serves a TLS connection: the handshake (within [`READ_TIMEOUT`]), then
/// hyper and the axum application for every request on it (the front reads
/// plain connections only).
pub(crate) async fn tls_connection(
    tcp: TcpStream,
    acceptor: tokio_rustls::TlsAcceptor,
    api: Api,
    draining: watch::Receiver<bool>,
) {
    let peer = tcp.peer_addr().ok();
    let tls = match tokio::time::timeout(READ_TIMEOUT, acceptor.accept(tcp)).await {
        Ok(Ok(tls)) => tls,
        Ok(Err(e)) => {
            tracing::debug!(peer = ?peer, error = %e, "TLS handshake failed");
            return;
        }
        Err(_) => {
            tracing::debug!(peer = ?peer, "TLS handshake did not finish in time");
            return;
        }
    };
    serve_hyper(tls, peer, BytesMut::new(), api.router, draining).await;
}

/// hyper and the axum application on `io` (whose first bytes, `read`, were
/// already taken off it) until the connection ends; a drain shuts it down
/// gracefully.
async fn serve_hyper<T>(
    io: T,
    peer: Option<std::net::SocketAddr>,
    read: BytesMut,
    router: axum::Router,
    mut draining: watch::Receiver<bool>,
) where
    T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let peer = crate::Peer(peer);
    let tcp = io;
    let io = TokioIo::new(Rewind {
        prefix: read.freeze(),
        tcp,
        stalled: None,
    });
    // A body that has not arrived whole READ_TIMEOUT after its head fires
    // this; the connection is then closed, as the front closes one.
    let expired = Arc::new(tokio::sync::Notify::new());
    let late = expired.clone();
    let service = tower::ServiceBuilder::new()
        .map_request(move |req: http::Request<hyper::body::Incoming>| {
            let mut req = req.map(|body| axum::body::Body::new(Deadline::new(body, late.clone())));
            req.extensions_mut().insert(peer);
            req
        })
        .service(router);
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(READ_TIMEOUT)
        .serve_connection(io, TowerToHyperService::new(service))
        .with_upgrades();
    let mut conn = std::pin::pin!(conn);
    let too_slow = || {
        tracing::debug!(
            timeout_s = READ_TIMEOUT.as_secs(),
            "a request body did not arrive whole in time; closing its connection"
        );
    };
    tokio::select! {
        _ = conn.as_mut() => return,
        () = expired.notified() => return too_slow(),
        _ = draining.wait_for(|d| *d) => {}
    }
    conn.as_mut().graceful_shutdown();
    tokio::select! {
        _ = conn.as_mut() => {}
        () = expired.notified() => too_slow(),
    }
}

/// A request body that must arrive whole within [`READ_TIMEOUT`] of its
/// head (the front's deadline, on hyper's path). Past it, the body fails
/// and `expired` fires so that the connection is closed.
struct Deadline {
    body: hyper::body::Incoming,
    until: Pin<Box<tokio::time::Sleep>>,
    expired: Arc<tokio::sync::Notify>,
}

impl Deadline {
    fn new(body: hyper::body::Incoming, expired: Arc<tokio::sync::Notify>) -> Deadline {
        Deadline {
            body,
            until: Box::pin(tokio::time::sleep(READ_TIMEOUT)),
            expired,
        }
    }
}

impl http_body::Body for Deadline {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, hyper::Error>>> {
        let this = self.get_mut();
        match Pin::new(&mut this.body).poll_frame(cx) {
            Poll::Pending => {
                if this.until.as_mut().poll(cx).is_ready() {
                    this.expired.notify_one();
                    // The connection is closed; the handler reading this
                    // body is dropped with it.
                    return Poll::Pending;
                }
                Poll::Pending
            }
            ready => ready,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}

/// A connection whose first bytes were already read: they are read again
/// first. Its writes fail once the client has taken nothing for
/// [`WRITE_TIMEOUT`].
struct Rewind<T> {
    prefix: Bytes,
    tcp: T,
    /// Set while a write waits for room.
    stalled: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl<T> Rewind<T> {
    /// What a pending write means: still waiting, or (past the deadline)
    /// an error that ends the connection.
    fn stall<R>(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<R>> {
        let timer = self
            .stalled
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(WRITE_TIMEOUT)));
        if timer.as_mut().poll(cx).is_ready() {
            return Poll::Ready(Err(io::ErrorKind::TimedOut.into()));
        }
        Poll::Pending
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Rewind<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.prefix.is_empty() {
            let n = this.prefix.len().min(buf.remaining());
            buf.put_slice(&this.prefix[..n]);
            this.prefix.advance(n);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.tcp).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Rewind<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        match Pin::new(&mut this.tcp).poll_write(cx, buf) {
            Poll::Pending => this.stall(cx),
            done => {
                this.stalled = None;
                done
            }
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        match Pin::new(&mut this.tcp).poll_write_vectored(cx, bufs) {
            Poll::Pending => this.stall(cx),
            done => {
                this.stalled = None;
                done
            }
        }
    }

    fn is_write_vectored(&self) -> bool {
        self.tcp.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().tcp).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().tcp).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests")]

    use super::*;

    fn ours(raw: &str) -> Head {
        match parse(raw.as_bytes()) {
            Parsed::Ours(head) => head,
            Parsed::Partial => panic!("partial: {raw:?}"),
            Parsed::Theirs => panic!("theirs: {raw:?}"),
        }
    }

    fn theirs(raw: &str) -> bool {
        matches!(parse(raw.as_bytes()), Parsed::Theirs)
    }

    #[test]
    fn the_hot_routes_are_parsed_here() {
        let raw = "POST /v1/chat/completions?x=1 HTTP/1.1\r\nHost: a\r\nContent-Type: application/json\r\nContent-Length: 2\r\nConnection: keep-alive, close\r\ntraceparent: 00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01\r\n\r\n{}";
        let head = ours(raw);
        assert!(matches!(head.route, Route::ChatCompletions));
        assert_eq!(head.head_len, raw.len() - 2);
        assert_eq!(head.body_len, 2);
        assert!(head.close);
        assert!(head.refused.is_ok());
        assert!(head.trace.is_some());
        let head =
            ours("POST /infer HTTP/1.1\r\ncontent-length: 0\r\ncontent-type: text/plain\r\n\r\n");
        assert!(matches!(head.route, Route::Infer));
        assert!(!head.close);
        assert!(head.refused.is_err());
        assert!(matches!(
            ours("POST /mist HTTP/1.1\r\ncontent-length: 10\r\n\r\n").route,
            Route::Mist
        ));
        assert!(matches!(
            parse(b"POST /infer HTTP/1.1\r\ncontent-len"),
            Parsed::Partial
        ));
    }

    #[test]
    fn everything_else_goes_to_hyper() {
        for raw in [
            "GET /v1/models HTTP/1.1\r\n\r\n",
            "POST /v1/embeddings HTTP/1.1\r\ncontent-length: 2\r\n\r\n",
            "POST /infer HTTP/1.0\r\ncontent-length: 2\r\n\r\n",
            "POST /infer HTTP/1.1\r\n\r\n",
            "POST /infer HTTP/1.1\r\ntransfer-encoding: chunked\r\n\r\n",
            "POST /infer HTTP/1.1\r\ncontent-length: 2\r\nexpect: 100-continue\r\n\r\n",
            "POST /infer HTTP/1.1\r\ncontent-length: 2\r\ncontent-length: 3\r\n\r\n",
            "POST /infer HTTP/1.1\r\ncontent-length: +2\r\n\r\n",
            "POST /infer HTTP/1.1\r\ncontent-length: 99999999999\r\n\r\n",
            "POST /infer HTTP/1.1\r\ncontent-length: 2\r\nconnection: upgrade\r\nupgrade: h2c\r\n\r\n",
            "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
            "POST /infer HTTP/1.1\r\nbad header\r\n\r\n",
        ] {
            assert!(theirs(raw), "{raw:?}");
        }
    }

    #[test]
    fn numbers_are_written_in_decimal_and_hex() {
        let mut out = Vec::new();
        append_len(&mut out, b"n=", 0);
        append_len(&mut out, b",", 1234567890);
        out.push(b',');
        append_hex(&mut out, 0);
        out.push(b',');
        append_hex(&mut out, 0x1f2e);
        assert_eq!(out, b"n=0,1234567890,0,1f2e");
    }
}
