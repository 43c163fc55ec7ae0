//! Plain-HTTP upstreams (`http://` base URLs: vLLM, Ollama, llama.cpp, a
//! sidecar on the same host): HTTP/1.1 connections that the calling task drives
//! itself, with a hand-written client.
//!
//! A general client (reqwest, hyper's) runs each connection in a task of its
//! own, or at least behind a dispatch channel, and keeps every header in maps;
//! on a loopback or same-rack upstream that machinery, not the network, is
//! most of what a proxied call costs. Here the request's own task writes the
//! request in one write, parses the answer's head with `httparse`, and reads
//! the body (by `Content-Length`, chunked, or to the end of the connection)
//! from the same buffer; idle connections wait in a pool of the thread that
//! used them last.
//!
//! A connection taken from the pool is checked first (a peer that closed it,
//! or sent something unasked, is noticed then without a system call: tokio
//! knows the socket has not become readable). A request is sent again on a
//! fresh connection only when it provably never left: the reused
//! connection refused its very first byte. Once any byte was written the
//! upstream may have read the whole request and started (and billed) the
//! work, so a close before the answer is a failed attempt, never a silent
//! second POST. Idle connections are closed after [`IDLE_TIMEOUT`] by a
//! sweeper, not only when the next request looks at the pool.
//!
//! Answers are read strictly (RFC 9112): a head with both `Content-Length`
//! and `Transfer-Encoding`, a length or chunk size that is not bare digits,
//! chunked coding on HTTP/1.0, a `101`, or a framing error anywhere in the
//! body fails the exchange, and that connection is never used again.

use std::collections::VecDeque;
use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Waker};
use std::time::{Duration, Instant};

use bytes::{Buf, Bytes, BytesMut};
use http::header::{self, HeaderValue};
use infermux::ProviderError;
use tokio::io::{AsyncReadExt, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;

/// How long a connection may wait in the pool.
const IDLE_TIMEOUT: Duration = Duration::from_secs(90);
/// Idle connections kept per upstream per thread.
const MAX_IDLE: usize = 256;
/// The largest answer head accepted.
const MAX_HEAD: usize = 64 * 1024;
/// The most header lines an answer may have.
const MAX_HEADERS: usize = 100;
/// The longest chunk-size or trailer line accepted.
const MAX_LINE: usize = 8 * 1024;
/// Request bodies up to this size go out in the same write as the head.
const COALESCE: usize = 64 * 1024;

/// Why an exchange with a plain upstream failed.
#[derive(Debug)]
pub enum Error {
    /// The upstream closed the connection before its answer was complete.
    Closed,
    Io(io::Error),
    /// What arrived is not HTTP/1.1 as it should be.
    Malformed(String),
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Error::Closed => f.write_str("the connection closed before the answer was complete"),
            Error::Io(e) => write!(f, "{e}"),
            Error::Malformed(m) => f.write_str(m),
        }
    }
}

fn malformed(what: &str) -> Error {
    Error::Malformed(format!("an invalid HTTP answer: {what}"))
}

/// One HTTP/1.1 connection and what was read from it but not used yet.
struct Conn {
    tcp: TcpStream,
    buf: BytesMut,
}

impl Conn {
    fn new(tcp: TcpStream) -> Conn {
        Conn {
            tcp,
            buf: BytesMut::with_capacity(8 * 1024),
        }
    }

    /// Whether an idle connection can take a request now: nothing is waiting
    /// to be read on it (no close, no unasked bytes). tokio remembers that the
    /// socket was drained, so this is usually not a system call.
    fn usable(&self) -> bool {
        if !self.buf.is_empty() {
            return false;
        }
        let mut cx = Context::from_waker(Waker::noop());
        let mut byte = [0u8; 1];
        self.tcp
            .poll_peek(&mut cx, &mut ReadBuf::new(&mut byte))
            .is_pending()
    }

    /// Reads more into the buffer; 0 at the end of the connection.
    async fn fill(&mut self) -> io::Result<usize> {
        if self.buf.capacity() - self.buf.len() < 1024 {
            self.buf.reserve(8 * 1024);
        }
        self.tcp.read_buf(&mut self.buf).await
    }
}

struct Idle {
    conn: Conn,
    since: Instant,
}

/// Idle connections by upstream, oldest first. A list: a process has a few
/// upstreams, and scanning a few ids beats hashing one.
#[derive(Default)]
struct Pools(Vec<(u64, VecDeque<Idle>)>);

impl Pools {
    fn get_mut(&mut self, id: u64) -> Option<&mut VecDeque<Idle>> {
        self.0.iter_mut().find(|(i, _)| *i == id).map(|(_, c)| c)
    }

    fn entry(&mut self, id: u64) -> &mut VecDeque<Idle> {
        let at = match self.0.iter().position(|(i, _)| *i == id) {
            Some(at) => at,
            None => {
                self.0.push((id, VecDeque::new()));
                self.0.len() - 1
            }
        };
        &mut self.0[at].1
    }
}

/// One thread's idle connections. Behind a mutex only so that its sweeper
/// can close the expired ones: the thread that owns it is the only other
/// user, so locking it costs two uncontended atomic operations.
#[derive(Default)]
struct Shard {
    pools: Mutex<Pools>,
    /// Whether a sweeper task looks after this shard.
    swept: AtomicBool,
}

thread_local! {
    /// This thread's idle connections.
    static IDLE: Arc<Shard> = Arc::default();
}

/// How often a sweeper looks.
const SWEEP_EVERY: Duration = Duration::from_secs(5);

impl Shard {
    /// Starts this shard's sweeper on the current Tokio runtime unless one
    /// runs: every [`SWEEP_EVERY`] it closes the connections that waited
    /// longer than [`IDLE_TIMEOUT`] or that their upstream closed. (An
    /// upstream that closes idle connections, as uvicorn does after 5 s,
    /// would otherwise leave them half-closed until this thread's next
    /// call to it.) It ends with the shard's thread, or with its runtime.
    fn ensure_sweeper(self: &Arc<Self>) {
        if self.swept.load(Ordering::Relaxed) {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        if self.swept.swap(true, Ordering::AcqRel) {
            return;
        }
        /// Lets a later call start another sweeper once this one ends.
        struct Running(Weak<Shard>);
        impl Drop for Running {
            fn drop(&mut self) {
                if let Some(shard) = self.0.upgrade() {
                    shard.swept.store(false, Ordering::Release);
                }
            }
        }
        let running = Running(Arc::downgrade(self));
        runtime.spawn(async move {
            let mut tick = tokio::time::interval(SWEEP_EVERY);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let Some(shard) = running.0.upgrade() else {
                    return;
                };
                shard.sweep(Instant::now());
            }
        });
    }

    /// Closes the idle connections that expired by `now` or whose upstream
    /// closed them.
    fn sweep(&self, now: Instant) {
        let Ok(mut pools) = self.pools.lock() else {
            return;
        };
        for (_, conns) in &mut pools.0 {
            expire(conns, now);
            conns.retain(|c| c.conn.usable());
        }
    }
}

/// Drops the connections that waited too long (from the front: the oldest).
fn expire(conns: &mut VecDeque<Idle>, now: Instant) {
    while conns
        .front()
        .is_some_and(|c| now.duration_since(c.since) >= IDLE_TIMEOUT)
    {
        conns.pop_front();
    }
}

/// One plain-HTTP upstream (scheme, host and port of a provider's base URL).
#[derive(Debug)]
pub struct Plain {
    id: u64,
    host: String,
    port: u16,
    /// The `Host` header: `host[:port]` as the base URL wrote it.
    authority: String,
    connect_timeout: Duration,
}

/// An answer whose head has arrived; its body is read by the same task.
pub struct Response {
    pub status: http::StatusCode,
    /// Whether its `Content-Type` is `text/event-stream` (the one thing
    /// callers read of its headers).
    pub event_stream: bool,
    /// The upstream's `x-request-id` or `request-id` header.
    pub request_id: Option<Box<str>>,
    pub body: Body,
}

impl Plain {
    /// `url` is an `http://` URL; its host and port are the upstream.
    /// `timeout` bounds connecting (at most 10 s).
    pub fn new(url: &url::Url, timeout: Duration) -> Result<Plain, String> {
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let host = url.host_str().ok_or("the URL has no host")?;
        let port = url.port_or_known_default().ok_or("the URL has no port")?;
        let authority = match url.port() {
            Some(port) => format!("{host}:{port}"),
            None => host.to_owned(),
        };
        if HeaderValue::from_str(&authority).is_err() {
            return Err(format!(
                "the host \"{authority}\" is not a valid Host header"
            ));
        }
        // `[::1]` in a URL; the socket address wants it bare.
        let host = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        Ok(Plain {
            id: NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
            host,
            port,
            authority,
            connect_timeout: timeout.min(Duration::from_secs(10)),
        })
    }

    /// Sends `req` (its URI's path and query; the `Host` header is this
    /// upstream's) and waits for the answer's head. A connection that fails
    /// is a [`ProviderError`]; any answer, even an error status, is returned.
    pub async fn send(
        &self,
        req: http::Request<Bytes>,
        provider: &str,
    ) -> Result<Response, ProviderError> {
        let (wire, rest) = {
            let (parts, body) = req.into_parts();
            self.encode(&parts, body)
        };
        // Connecting is boxed: it is the rare path, and its future would
        // otherwise make every call's future larger (and slower to move).
        let (mut conn, mut reused) = match self.take() {
            Some(conn) => (conn, true),
            None => (Box::pin(self.connect(provider)).await?, false),
        };
        loop {
            match exchange(&mut conn, &wire, &rest).await {
                Ok(head) => return Ok(self.response(conn, head)),
                // The pooled connection refused the request's first byte:
                // the upstream cannot have seen it, so a fresh one gets it.
                Err(Failed::Unsent(_)) if reused => {
                    conn = Box::pin(self.connect(provider)).await?;
                    reused = false;
                }
                // Anything else may have reached the upstream: sending it
                // again could run (and bill) the call twice.
                Err(Failed::Unsent(e) | Failed::Sent(e)) => {
                    return Err(transport_error(&e, provider));
                }
            }
        }
    }

    /// The request's bytes: the head, with the body when it is small (one
    /// write), and the rest of the body apart.
    fn encode(&self, parts: &http::request::Parts, body: Bytes) -> (Vec<u8>, Bytes) {
        use std::io::Write as _;
        let inline = body.len() <= COALESCE;
        let mut w = Vec::with_capacity(256 + if inline { body.len() } else { 0 });
        w.extend_from_slice(parts.method.as_str().as_bytes());
        w.push(b' ');
        w.extend_from_slice(
            parts
                .uri
                .path_and_query()
                .map_or("/", |pq| pq.as_str())
                .as_bytes(),
        );
        w.extend_from_slice(b" HTTP/1.1\r\nhost: ");
        w.extend_from_slice(self.authority.as_bytes());
        w.extend_from_slice(b"\r\n");
        for (name, value) in &parts.headers {
            if matches!(
                *name,
                header::HOST
                    | header::CONTENT_LENGTH
                    | header::TRANSFER_ENCODING
                    | header::CONNECTION
            ) {
                continue;
            }
            w.extend_from_slice(name.as_str().as_bytes());
            w.extend_from_slice(b": ");
            w.extend_from_slice(value.as_bytes());
            w.extend_from_slice(b"\r\n");
        }
        if !body.is_empty() || !matches!(parts.method, http::Method::GET | http::Method::HEAD) {
            let _ = write!(w, "content-length: {}\r\n", body.len());
        }
        w.extend_from_slice(b"\r\n");
        if inline {
            w.extend_from_slice(&body);
            (w, Bytes::new())
        } else {
            (w, body)
        }
    }

    fn response(&self, conn: Conn, head: Head) -> Response {
        let mut body = Body {
            conn: Some(conn),
            framing: head.framing,
            keep_alive: head.keep_alive,
            pool: self.id,
            failed: None,
        };
        // A body already complete (none, or all in the head's read) frees
        // the connection now.
        body.settle();
        Response {
            status: head.status,
            event_stream: head.event_stream,
            request_id: head.request_id,
            body,
        }
    }

    fn take(&self) -> Option<Conn> {
        // `try_with`: a thread tearing down its thread-locals has no pool.
        IDLE.try_with(|idle| {
            let mut idle = idle.pools.lock().ok()?;
            let conns = idle.get_mut(self.id)?;
            expire(conns, Instant::now());
            // The most recently used first: the likeliest to be alive.
            while let Some(c) = conns.pop_back() {
                if c.conn.usable() {
                    return Some(c.conn);
                }
            }
            None
        })
        .ok()
        .flatten()
    }

    async fn connect(&self, provider: &str) -> Result<Conn, ProviderError> {
        let cannot =
            || ProviderError::Unavailable(format!("cannot connect to provider \"{provider}\""));
        let tcp = tokio::time::timeout(
            self.connect_timeout,
            TcpStream::connect((self.host.as_str(), self.port)),
        )
        .await
        .map_err(|_| {
            ProviderError::Timeout(format!(
                "provider \"{provider}\" did not accept a connection in time"
            ))
        })?
        .map_err(|_| cannot())?;
        tcp.set_nodelay(true).map_err(|_| cannot())?;
        Ok(Conn::new(tcp))
    }
}

/// A failed exchange: the connection took no byte of the request (it was
/// closed or reset before the request went out), or the failure came after
/// some of it was written, when the upstream may have read it all.
enum Failed {
    Unsent(Error),
    Sent(Error),
}

/// An upstream request id worth passing on: short printable ASCII.
pub fn request_id_of(value: &[u8]) -> Option<Box<str>> {
    let ok = !value.is_empty() && value.len() <= 200 && value.iter().all(|b| b.is_ascii_graphic());
    ok.then(|| String::from_utf8_lossy(value).into())
}

/// A transport failure as the contract's: the upstream's fault, retryable.
pub fn transport_error(e: &Error, provider: &str) -> ProviderError {
    ProviderError::Unavailable(format!("provider \"{provider}\": {e}"))
}

/// An answer's head, parsed.
struct Head {
    status: http::StatusCode,
    event_stream: bool,
    request_id: Option<Box<str>>,
    framing: Framing,
    keep_alive: bool,
}

/// Writes the request and reads until the answer's head has arrived
/// (skipping `1xx` interim answers).
async fn exchange(conn: &mut Conn, wire: &[u8], rest: &[u8]) -> Result<Head, Failed> {
    let mut sent = 0usize;
    for part in [wire, rest] {
        let mut part = part;
        while !part.is_empty() {
            match conn.tcp.write(part).await {
                Ok(0) => {
                    let e = Error::Io(io::ErrorKind::WriteZero.into());
                    return Err(if sent == 0 {
                        Failed::Unsent(e)
                    } else {
                        Failed::Sent(e)
                    });
                }
                Ok(n) => {
                    sent += n;
                    part = &part[n..];
                }
                Err(e) if sent == 0 => return Err(Failed::Unsent(Error::Io(e))),
                Err(e) => return Err(Failed::Sent(Error::Io(e))),
            }
        }
    }
    loop {
        if !conn.buf.is_empty() {
            match parse_head(&mut conn.buf).map_err(Failed::Sent)? {
                // Nothing here asks to switch protocols.
                Some(head) if head.status == http::StatusCode::SWITCHING_PROTOCOLS => {
                    return Err(Failed::Sent(malformed(
                        "an unasked 101 Switching Protocols",
                    )));
                }
                Some(head) if head.status.is_informational() => continue,
                Some(head) => return Ok(head),
                None if conn.buf.len() > MAX_HEAD => {
                    return Err(Failed::Sent(malformed("a head larger than 64 KiB")));
                }
                None => {}
            }
        }
        match conn.fill().await {
            Ok(0) => return Err(Failed::Sent(Error::Closed)),
            Ok(_) => {}
            Err(e) => return Err(Failed::Sent(Error::Io(e))),
        }
    }
}

/// Parses an answer's head off the front of `buf`; `None` until it is whole.
fn parse_head(buf: &mut BytesMut) -> Result<Option<Head>, Error> {
    // Few slots first (each is zeroed per parse); an answer with more
    // headers is parsed again with room for all.
    let mut few = [httparse::EMPTY_HEADER; 16];
    let parsed = match parse_head_in(buf, &mut few) {
        Err(Error::Malformed(m)) if m.ends_with(TOO_MANY) => {
            parse_head_in(buf, &mut vec![httparse::EMPTY_HEADER; MAX_HEADERS])
        }
        parsed => parsed,
    }?;
    Ok(parsed.map(|(head, len)| {
        buf.advance(len);
        head
    }))
}

/// How httparse says an answer has more headers than slots.
const TOO_MANY: &str = "too many headers";

/// A head and its length, parsed with `slots` for its header lines.
fn parse_head_in<'b>(
    buf: &'b [u8],
    slots: &mut [httparse::Header<'b>],
) -> Result<Option<(Head, usize)>, Error> {
    let mut resp = httparse::Response::new(slots);
    let len = match resp.parse(buf) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => return Err(malformed(TOO_MANY)),
        Err(e) => return Err(malformed(&e.to_string())),
    };
    let code = resp.code.unwrap_or(0);
    let status = http::StatusCode::from_u16(code).map_err(|_| malformed("a bad status code"))?;
    let http11 = resp.version == Some(1);
    let mut keep_alive = http11;
    let mut length: Option<u64> = None;
    let mut coded = None;
    let mut event_stream = false;
    let mut request_id = None;
    for h in resp.headers.iter() {
        // Only the headers that frame the body and the content type are
        // read; the others are not kept.
        let name = h.name;
        if name.eq_ignore_ascii_case("content-length") {
            // Bare digits only: `+5`, `5, 5` or `0x5` frame nothing here.
            let n = Some(h.value.trim_ascii())
                .filter(|v| !v.is_empty() && v.len() <= 19 && v.iter().all(u8::is_ascii_digit))
                .and_then(|v| std::str::from_utf8(v).ok()?.parse::<u64>().ok())
                .ok_or_else(|| malformed("a bad content-length"))?;
            if length.is_some_and(|l| l != n) {
                return Err(malformed("two different content-lengths"));
            }
            length = Some(n);
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            if !http11 {
                return Err(malformed("a transfer-encoding on HTTP/1.0"));
            }
            // Chunked only when it is the last coding applied (of the last
            // such header: codings add up in order).
            let last = h.value.rsplit(|&b| b == b',').next().unwrap_or_default();
            coded = Some(last.trim_ascii().eq_ignore_ascii_case(b"chunked"));
        } else if name.eq_ignore_ascii_case("connection") {
            for token in h.value.split(|&b| b == b',') {
                let token = token.trim_ascii();
                if token.eq_ignore_ascii_case(b"close") {
                    keep_alive = false;
                } else if token.eq_ignore_ascii_case(b"keep-alive") && !http11 {
                    keep_alive = true;
                }
            }
        } else if name.eq_ignore_ascii_case("content-type") {
            event_stream = is_event_stream(Some(h.value));
        } else if name.eq_ignore_ascii_case("x-request-id")
            || name.eq_ignore_ascii_case("request-id")
        {
            request_id = request_id_of(h.value);
        }
    }
    let framing = if status.is_informational()
        || status == http::StatusCode::NO_CONTENT
        || status == http::StatusCode::NOT_MODIFIED
    {
        Framing::Length(0)
    } else {
        match (coded, length) {
            // Which one frames the body is what a smuggling attack plays on.
            (Some(_), Some(_)) => {
                return Err(malformed("both content-length and transfer-encoding"));
            }
            (Some(true), None) => Framing::Chunked(Chunk::Size),
            // A coding other than chunked: the body runs to the close.
            (Some(false), None) | (None, None) => {
                keep_alive = false;
                Framing::Eof
            }
            (None, Some(n)) => Framing::Length(n),
        }
    };
    let head = Head {
        status,
        event_stream,
        request_id,
        framing,
        keep_alive,
    };
    Ok(Some((head, len)))
}

/// Whether a `Content-Type` value is an event stream's.
pub fn is_event_stream(content_type: Option<&[u8]>) -> bool {
    content_type.is_some_and(|v| v.starts_with(b"text/event-stream"))
}

/// How an answer's body ends.
#[derive(Clone)]
enum Framing {
    /// This many bytes are left.
    Length(u64),
    Chunked(Chunk),
    /// At the end of the connection.
    Eof,
    Done,
}

/// Where a chunked body's reader is.
#[derive(Clone)]
enum Chunk {
    /// At a chunk-size line.
    Size,
    /// In a chunk, this many bytes left.
    Data(u64),
    /// At the CRLF after a chunk's data.
    DataEnd,
    /// After the last chunk: trailer lines, then an empty line.
    Trailers,
}

/// What one decoding step gave.
enum Step {
    Data(Bytes),
    /// More bytes must be read first.
    More,
    /// A state change; go on.
    Again,
    End,
}

impl Framing {
    /// One step over what is buffered.
    fn step(&mut self, buf: &mut BytesMut) -> Result<Step, Error> {
        Ok(match self {
            Framing::Done | Framing::Length(0) => {
                *self = Framing::Done;
                Step::End
            }
            _ if buf.is_empty() => Step::More,
            Framing::Length(left) => {
                let data = take(buf, left);
                if *left == 0 {
                    *self = Framing::Done;
                }
                Step::Data(data)
            }
            Framing::Eof => Step::Data(buf.split().freeze()),
            Framing::Chunked(chunk) => match chunk {
                Chunk::Data(left) => {
                    let data = take(buf, left);
                    if *left == 0 {
                        *chunk = Chunk::DataEnd;
                    }
                    Step::Data(data)
                }
                Chunk::DataEnd => {
                    if buf.len() < 2 {
                        return Ok(Step::More);
                    }
                    if &buf[..2] != b"\r\n" {
                        return Err(malformed("a chunk not followed by CRLF"));
                    }
                    buf.advance(2);
                    *chunk = Chunk::Size;
                    Step::Again
                }
                Chunk::Size => {
                    let Some(line) = line(buf)? else {
                        return Ok(Step::More);
                    };
                    let size = chunk_size(&line)?;
                    *chunk = if size == 0 {
                        Chunk::Trailers
                    } else {
                        Chunk::Data(size)
                    };
                    Step::Again
                }
                Chunk::Trailers => match line(buf)? {
                    None => Step::More,
                    Some(line) if line.is_empty() => {
                        *self = Framing::Done;
                        Step::End
                    }
                    Some(_trailer) => Step::Again,
                },
            },
        })
    }

    /// Whether the next step reads body bytes (rather than framing).
    fn at_data(&self) -> bool {
        matches!(
            self,
            Framing::Length(1..) | Framing::Eof | Framing::Chunked(Chunk::Data(_))
        )
    }
}

/// A chunk-size line's size: 1 to 16 hex digits, then nothing or (after
/// optional white space) `;` and extensions, which are ignored.
fn chunk_size(line: &[u8]) -> Result<u64, Error> {
    let digits = line.iter().take_while(|b| b.is_ascii_hexdigit()).count();
    let after = line[digits..].trim_ascii_start();
    if digits == 0 || digits > 16 || !(after.is_empty() || after[0] == b';') {
        return Err(malformed("a bad chunk size"));
    }
    line[..digits]
        .iter()
        .try_fold(0u64, |n, &b| {
            let d = (b as char).to_digit(16)?;
            n.checked_mul(16)?.checked_add(u64::from(d))
        })
        .ok_or_else(|| malformed("a bad chunk size"))
}

/// Up to `left` bytes off the front of `buf`.
fn take(buf: &mut BytesMut, left: &mut u64) -> Bytes {
    let n = usize::try_from(*left).map_or(buf.len(), |l| l.min(buf.len()));
    *left -= n as u64;
    buf.split_to(n).freeze()
}

/// A CRLF-ended line off the front of `buf` (without its CRLF); `None` until
/// it is whole.
fn line(buf: &mut BytesMut) -> Result<Option<BytesMut>, Error> {
    match buf.windows(2).position(|w| w == b"\r\n") {
        Some(at) => {
            let line = buf.split_to(at);
            buf.advance(2);
            Ok(Some(line))
        }
        None if buf.len() > MAX_LINE => Err(malformed("a chunk line too long")),
        None => Ok(None),
    }
}

/// Fuzzing entry: parses `data` as an upstream answer (head, then body
/// framing) and checks what must hold for any input: no panic; no more body
/// bytes than were given; and the body decoded from one buffer equals the
/// body decoded as the bytes trickle in `piece` at a time, with the same end.
#[cfg(feature = "fuzzing")]
pub fn fuzz_answer(data: &[u8]) {
    let piece = usize::from(data.first().copied().unwrap_or(1).max(1));
    let mut buf = BytesMut::from(data);
    let Ok(Some(head)) = parse_head(&mut buf) else {
        return;
    };
    let rest = buf.freeze();
    let decode = |piece: usize| {
        let mut framing = head.framing.clone();
        let mut buf = BytesMut::new();
        let mut body = Vec::new();
        let mut fed = 0;
        loop {
            match framing.step(&mut buf) {
                Ok(Step::Data(d)) => body.extend_from_slice(&d),
                Ok(Step::Again) => {}
                Ok(Step::End) => return (body, "end"),
                Ok(Step::More) if fed < rest.len() => {
                    let n = piece.min(rest.len() - fed);
                    buf.extend_from_slice(&rest[fed..fed + n]);
                    fed += n;
                }
                Ok(Step::More) => return (body, "more"),
                Err(_) => return (body, "error"),
            }
        }
    };
    let whole = decode(rest.len().max(1));
    assert!(whole.0.len() <= rest.len(), "more body than input");
    let trickled = decode(piece);
    assert_eq!(whole, trickled, "pieces of {piece} decode otherwise");
}

/// A body read whole, or cut at a limit.
pub enum Collected {
    Whole(Bytes),
    /// Its first `limit` bytes; the body was longer.
    Cut(Bytes),
}

/// Gathers a body's pieces up to a limit, without a copy when it comes in
/// one piece (the common case).
pub struct Gather {
    first: Option<Bytes>,
    rest: Vec<u8>,
    left: usize,
}

impl Gather {
    pub fn new(limit: usize) -> Gather {
        Gather {
            first: None,
            rest: Vec::new(),
            left: limit,
        }
    }

    /// Adds a piece; false once the limit is passed (what fits is kept).
    pub fn push(&mut self, mut piece: Bytes) -> bool {
        let over = piece.len() > self.left;
        if over {
            piece.truncate(self.left);
        }
        self.left -= piece.len();
        match &self.first {
            None => self.first = Some(piece),
            Some(f) => {
                if self.rest.is_empty() {
                    self.rest.extend_from_slice(f);
                }
                self.rest.extend_from_slice(&piece);
            }
        }
        !over
    }

    pub fn finish(self) -> Bytes {
        match self.first {
            Some(_) if !self.rest.is_empty() => Bytes::from(self.rest),
            Some(f) => f,
            None => Bytes::new(),
        }
    }
}

/// An answer's body, read by the task that holds it. Once it is complete its
/// connection goes back to the pool of the thread that finished it. Dropping
/// it before then closes the connection, which is how an abandoned call
/// cancels the upstream's work.
pub struct Body {
    conn: Option<Conn>,
    framing: Framing,
    keep_alive: bool,
    pool: u64,
    /// A framing error found ahead of the reader (while settling): its
    /// next read gets it, never a clean end.
    failed: Option<Error>,
}

impl Body {
    /// The next piece of the body; `None` at its end. A failure is the last
    /// item.
    pub async fn chunk(&mut self) -> Option<Result<Bytes, Error>> {
        loop {
            let Some(conn) = self.conn.as_mut() else {
                return self.failed.take().map(Err);
            };
            match self.framing.step(&mut conn.buf) {
                Ok(Step::Data(data)) => {
                    // The last of the body: the connection is free now,
                    // whether or not the reader asks again.
                    self.settle();
                    return Some(Ok(data));
                }
                Ok(Step::Again) => continue,
                Ok(Step::End) => {
                    self.release();
                    return None;
                }
                Ok(Step::More) => {}
                Err(e) => {
                    self.conn = None;
                    return Some(Err(e));
                }
            }
            match conn.fill().await {
                Ok(0) if matches!(self.framing, Framing::Eof) => {
                    self.framing = Framing::Done;
                    self.conn = None;
                    return None;
                }
                Ok(0) => {
                    self.conn = None;
                    return Some(Err(Error::Closed));
                }
                Ok(_) => {}
                Err(e) => {
                    self.conn = None;
                    return Some(Err(Error::Io(e)));
                }
            }
        }
    }

    /// The body, read to its end or until it passes `limit` bytes.
    pub async fn collect(mut self, limit: usize) -> Result<Collected, Error> {
        let mut gather = Gather::new(limit);
        while let Some(chunk) = self.chunk().await {
            if !gather.push(chunk?) {
                // The rest is not read: the connection goes with it.
                self.conn = None;
                return Ok(Collected::Cut(gather.finish()));
            }
        }
        Ok(Collected::Whole(gather.finish()))
    }

    /// Reads the body's framing as far as the buffered bytes go without
    /// reaching body bytes; if that is its end, pools the connection.
    fn settle(&mut self) {
        let Some(conn) = &mut self.conn else {
            return;
        };
        while !self.framing.at_data() {
            match self.framing.step(&mut conn.buf) {
                Ok(Step::Again) => {}
                Ok(Step::End) => return self.release(),
                // (`at_data` keeps body bytes out of here.)
                Ok(Step::Data(_) | Step::More) => return,
                Err(e) => {
                    self.conn = None;
                    self.failed = Some(e);
                    return;
                }
            }
        }
    }

    /// The body is complete: pool the connection, unless the answer closes
    /// it or left bytes no one asked for.
    fn release(&mut self) {
        let Some(conn) = self.conn.take() else {
            return;
        };
        if !self.keep_alive || !conn.buf.is_empty() {
            return;
        }
        let pool = self.pool;
        let _ = IDLE.try_with(|shard| {
            shard.ensure_sweeper();
            let Ok(mut idle) = shard.pools.lock() else {
                return;
            };
            let conns = idle.entry(pool);
            let now = Instant::now();
            expire(conns, now);
            if conns.len() < MAX_IDLE {
                conns.push_back(Idle { conn, since: now });
            }
        });
    }
}

impl Drop for Body {
    /// A reader that stops at the end of what it wanted (an event stream's
    /// last event) may leave only the body's framing unread: if its end is
    /// already here, the connection is still good and goes back to the pool.
    /// Anything else closes it, which cancels the upstream's work.
    fn drop(&mut self) {
        self.settle();
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests")]

    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use futures_util::StreamExt;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    use super::*;
    use crate::http::{MAX_ANSWER, Upstream};

    /// A raw HTTP/1.1 server on loopback: `serve` gets each accepted
    /// connection and its number (from 1). Returns the base URL and the
    /// number of connections accepted so far.
    async fn server<F, Fut>(serve: F) -> (String, Arc<AtomicUsize>)
    where
        F: Fn(TcpStream, usize) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let accepted = Arc::new(AtomicUsize::new(0));
        let count = accepted.clone();
        tokio::spawn(async move {
            while let Ok((sock, _)) = listener.accept().await {
                let n = count.fetch_add(1, Ordering::SeqCst) + 1;
                tokio::spawn(serve(sock, n));
            }
        });
        (url, accepted)
    }

    /// Reads one request (head and `Content-Length` body); `None` at EOF.
    async fn read_request(sock: &mut TcpStream) -> Option<String> {
        let mut buf = Vec::new();
        let mut byte = [0u8; 1];
        while !buf.ends_with(b"\r\n\r\n") {
            if sock.read(&mut byte).await.ok()? == 0 {
                return None;
            }
            buf.push(byte[0]);
        }
        let head = String::from_utf8(buf).unwrap();
        let len = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length: "))
            .map_or(0, |v| v.trim().parse::<usize>().unwrap());
        let mut body = vec![0u8; len];
        sock.read_exact(&mut body).await.ok()?;
        Some(head + &String::from_utf8(body).unwrap())
    }

    fn ok(body: &str) -> String {
        format!(
            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
            body.len()
        )
    }

    fn post(url: &str, body: &str) -> crate::http::Request {
        http::Request::post(format!("{url}/v1/chat/completions"))
            .header("content-type", "application/json")
            .body(Bytes::from(body.to_owned()))
            .unwrap()
    }

    fn upstream(url: &str, timeout: Duration) -> Upstream {
        Upstream::new("local", url, timeout).unwrap()
    }

    fn pooled(url: &str, timeout: Duration) -> Upstream {
        Upstream::pooled("local", url, timeout).unwrap()
    }

    /// Both transports: behaviour the contract fixes must not depend on the
    /// base URL's scheme.
    type Make = fn(&str, Duration) -> Upstream;
    const TRANSPORTS: [(&str, Make); 2] = [("plain", upstream), ("pooled", pooled)];

    #[tokio::test]
    async fn one_connection_serves_call_after_call() {
        for (transport, make) in TRANSPORTS {
            let requests = Arc::new(Mutex::new(Vec::new()));
            let seen = requests.clone();
            let (url, accepted) = server(move |mut sock, _| {
                let seen = seen.clone();
                async move {
                    while let Some(req) = read_request(&mut sock).await {
                        seen.lock().unwrap().push(req);
                        sock.write_all(ok(r#"{"n":1}"#).as_bytes()).await.unwrap();
                    }
                }
            })
            .await;
            let up = make(&url, Duration::from_secs(5));
            for _ in 0..5 {
                let answer = up.call(post(&url, r#"{"x":1}"#)).await.unwrap();
                assert_eq!(answer.status, 200);
                assert_eq!(&answer.body[..], br#"{"n":1}"#);
            }
            assert_eq!(accepted.load(Ordering::SeqCst), 1, "{transport}");
            let requests = requests.lock().unwrap();
            assert_eq!(requests.len(), 5);
            let host = url.trim_start_matches("http://");
            assert!(
                requests[0].starts_with("POST /v1/chat/completions HTTP/1.1\r\n"),
                "{transport}: {}",
                requests[0]
            );
            assert!(
                requests[0].contains(&format!("host: {host}\r\n")),
                "{transport}"
            );
            assert!(requests[0].contains("content-length: 7\r\n"), "{transport}");
            assert!(requests[0].ends_with(r#"{"x":1}"#), "{transport}");
        }
    }

    use std::sync::Mutex;

    #[tokio::test]
    async fn a_connection_closed_while_idle_or_by_its_answer_is_replaced() {
        // Connection 1 answers and closes quietly; connection 2 answers with
        // `connection: close`; connection 3 keeps going.
        let (url, accepted) = server(|mut sock, n| async move {
            while read_request(&mut sock).await.is_some() {
                let reply = match n {
                    1 => ok("{}"),
                    2 => "HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 2\r\n\r\n{}"
                        .to_owned(),
                    _ => ok("{}"),
                };
                sock.write_all(reply.as_bytes()).await.unwrap();
                if n <= 2 {
                    return;
                }
            }
        })
        .await;
        let up = upstream(&url, Duration::from_secs(5));
        for _ in 0..4 {
            let answer = up.call(post(&url, "{}")).await.unwrap();
            assert_eq!(answer.status, 200);
            // Let the close reach this side before the next call.
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 3);
    }

    #[tokio::test]
    async fn an_answer_cut_short_is_an_error_and_the_next_call_succeeds() {
        for (transport, make) in TRANSPORTS {
            let (url, _) = server(|mut sock, n| async move {
                while read_request(&mut sock).await.is_some() {
                    if n == 1 {
                        let head = "HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\n{\"partial\"";
                        sock.write_all(head.as_bytes()).await.unwrap();
                        return;
                    }
                    sock.write_all(ok("{}").as_bytes()).await.unwrap();
                }
            })
            .await;
            let up = make(&url, Duration::from_secs(5));
            let err = up.call(post(&url, "{}")).await.err().unwrap();
            assert!(
                matches!(&err, ProviderError::Unavailable(m) if m.contains("\"local\"")),
                "{transport}: {err:?}"
            );
            assert_eq!(up.call(post(&url, "{}")).await.unwrap().status, 200);
        }
    }

    #[tokio::test]
    async fn chunked_bodies_arrive_piece_by_piece_and_reads_time_out() {
        for (transport, make) in TRANSPORTS {
            let (tx, rx) = tokio::sync::oneshot::channel::<()>();
            let rx = Arc::new(Mutex::new(Some(rx)));
            let (url, _) = server(move |mut sock, _| {
                let rx = rx.lock().unwrap().take();
                async move {
                    read_request(&mut sock).await.unwrap();
                    let head = "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n";
                    sock.write_all(head.as_bytes()).await.unwrap();
                    sock.write_all(b"6\r\ndata: \r\n").await.unwrap();
                    // The second piece only once the first was read.
                    rx.unwrap().await.unwrap();
                    sock.write_all(b"3\r\nhi\n\r\n").await.unwrap();
                    // Then nothing: the read deadline ends the stream.
                    tokio::time::sleep(Duration::from_secs(30)).await;
                }
            })
            .await;
            let up = make(&url, Duration::from_millis(300));
            let mut resp = up.open(post(&url, "{}")).await.unwrap();
            assert_eq!(resp.status, 200);
            assert_eq!(&resp.body.next().await.unwrap().unwrap()[..], b"data: ");
            tx.send(()).unwrap();
            assert_eq!(&resp.body.next().await.unwrap().unwrap()[..], b"hi\n");
            let started = Instant::now();
            let err = resp.body.next().await.unwrap().err().unwrap();
            assert!(
                matches!(err, ProviderError::Timeout(_)),
                "{transport}: {err:?}"
            );
            assert!(started.elapsed() < Duration::from_secs(10));
            assert!(resp.body.next().await.is_none(), "{transport}");
        }
    }

    #[tokio::test]
    async fn a_silent_upstream_times_out_and_a_closed_port_is_unavailable() {
        for (transport, make) in TRANSPORTS {
            let (url, _) = server(|mut sock, _| async move {
                read_request(&mut sock).await;
                tokio::time::sleep(Duration::from_secs(30)).await;
            })
            .await;
            let up = make(&url, Duration::from_millis(200));
            let err = up.call(post(&url, "{}")).await.err().unwrap();
            assert!(
                matches!(err, ProviderError::Timeout(_)),
                "{transport}: {err:?}"
            );

            let closed = {
                let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
                format!("http://{}", l.local_addr().unwrap())
            };
            let up = make(&closed, Duration::from_secs(5));
            let err = up.call(post(&closed, "{}")).await.err().unwrap();
            assert!(
                matches!(&err, ProviderError::Unavailable(m) if m.contains("cannot connect")),
                "{transport}: {err:?}"
            );
        }
    }

    #[tokio::test]
    async fn error_statuses_are_classified_by_the_contract() {
        for (transport, make) in TRANSPORTS {
            let (url, _) = server(|mut sock, _| async move {
                let mut n = 0;
                while read_request(&mut sock).await.is_some() {
                    n += 1;
                    let (status, body) = match n {
                        1 => (
                            "400 Bad Request",
                            r#"{"error":{"message":"bad tool schema"}}"#,
                        ),
                        2 => (
                            "429 Too Many Requests",
                            r#"{"error":{"message":"slow down"}}"#,
                        ),
                        _ => ("503 Service Unavailable", "<html>down</html>"),
                    };
                    let reply = format!(
                        "HTTP/1.1 {status}\r\ncontent-length: {}\r\n\r\n{body}",
                        body.len()
                    );
                    sock.write_all(reply.as_bytes()).await.unwrap();
                }
            })
            .await;
            let up = make(&url, Duration::from_secs(5));
            let err = up.call_ok(post(&url, "{}")).await.err().unwrap();
            assert!(
                matches!(&err, ProviderError::Rejected { status: 400, message } if message == "bad tool schema"),
                "{transport}: {err:?}"
            );
            let err = up.call_ok(post(&url, "{}")).await.err().unwrap();
            assert!(
                matches!(&err, ProviderError::RateLimited(m) if m.contains("slow down")),
                "{transport}: {err:?}"
            );
            let err = up.call_stream(post(&url, "{}")).await.err().unwrap();
            assert!(
                matches!(&err, ProviderError::Unavailable(m) if m.contains("503") && m.contains("<html>down</html>")),
                "{transport}: {err:?}"
            );
        }
    }

    #[tokio::test]
    async fn dropping_a_body_midway_closes_its_connection() {
        for (transport, make) in TRANSPORTS {
            let (closed_tx, closed_rx) = tokio::sync::oneshot::channel::<()>();
            let closed_tx = Arc::new(Mutex::new(Some(closed_tx)));
            let (url, accepted) = server(move |mut sock, _| {
                let closed_tx = closed_tx.lock().unwrap().take();
                async move {
                    read_request(&mut sock).await.unwrap();
                    let head = "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n2\r\nhi\r\n";
                    sock.write_all(head.as_bytes()).await.unwrap();
                    let mut rest = Vec::new();
                    let _ = sock.read_to_end(&mut rest).await;
                    if let Some(tx) = closed_tx {
                        let _ = tx.send(());
                    }
                }
            })
            .await;
            let up = make(&url, Duration::from_secs(5));
            let mut resp = up.open(post(&url, "{}")).await.unwrap();
            assert_eq!(&resp.body.next().await.unwrap().unwrap()[..], b"hi");
            drop(resp);
            tokio::time::timeout(Duration::from_secs(5), closed_rx)
                .await
                .unwrap_or_else(|_| panic!("{transport}: the upstream saw its connection close"))
                .unwrap();
            assert_eq!(accepted.load(Ordering::SeqCst), 1);
        }
    }

    #[tokio::test]
    async fn a_stream_read_to_its_last_byte_leaves_its_connection_pooled() {
        // Odd requests get a sized body, even ones a chunked body whose end
        // comes with its last piece; the reader stops at the last piece.
        let (url, accepted) = server(|mut sock, _| async move {
            let mut n = 0;
            while read_request(&mut sock).await.is_some() {
                n += 1;
                let reply = if n % 2 == 1 {
                    "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncontent-length: 14\r\n\r\ndata: [DONE]\n\n"
                } else {
                    "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\ne\r\ndata: [DONE]\n\n\r\n0\r\n\r\n"
                };
                sock.write_all(reply.as_bytes()).await.unwrap();
            }
        })
        .await;
        let up = upstream(&url, Duration::from_secs(5));
        for _ in 0..4 {
            let mut resp = up.open(post(&url, "{}")).await.unwrap();
            let piece = resp.body.next().await.unwrap().unwrap();
            assert_eq!(&piece[..], b"data: [DONE]\n\n");
            drop(resp);
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn answers_framed_every_way_are_read_whole() {
        // One connection: an interim 100 before a sized answer, a chunked one
        // with an extension and a trailer, a 204; then a body that runs to
        // the close, which ends that connection.
        let (url, accepted) = server(|mut sock, _| async move {
            let mut n = 0;
            while read_request(&mut sock).await.is_some() {
                n += 1;
                let reply = match n {
                    1 => "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}",
                    2 => "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n3;x=1\r\nabc\r\n2\r\nde\r\n0\r\nx-trailer: 1\r\n\r\n",
                    3 => "HTTP/1.1 204 No Content\r\n\r\n",
                    _ => "HTTP/1.1 200 OK\r\n\r\nto the end",
                };
                sock.write_all(reply.as_bytes()).await.unwrap();
                if n == 4 {
                    return;
                }
            }
        })
        .await;
        let up = upstream(&url, Duration::from_secs(5));
        let bodies = ["{}", "abcde", ""];
        for want in bodies {
            let answer = up.call(post(&url, "{}")).await.unwrap();
            assert_eq!(std::str::from_utf8(&answer.body).unwrap(), want);
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 1);
        let answer = up.call(post(&url, "{}")).await.unwrap();
        assert_eq!(&answer.body[..], b"to the end");
        // That connection ended with its body: the next call needs another.
        up.call(post(&url, "{}")).await.unwrap();
        assert_eq!(accepted.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn answers_that_are_not_http_as_asked_are_unavailable() {
        // Garbage, and an upgrade nothing asked for (even one followed by a
        // good answer).
        for (raw, says) in [
            (&b"SSH-2.0-OpenSSH_9.6\r\n\r\n"[..], "invalid HTTP answer"),
            (
                &b"HTTP/1.1 101 Switching Protocols\r\nupgrade: h2c\r\n\r\nHTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}"[..],
                "101",
            ),
        ] {
            let (url, _) = server(move |mut sock, _| async move {
                read_request(&mut sock).await;
                sock.write_all(raw).await.unwrap();
            })
            .await;
            let err = upstream(&url, Duration::from_secs(5))
                .call(post(&url, "{}"))
                .await
                .err()
                .unwrap();
            assert!(
                matches!(&err, ProviderError::Unavailable(m) if m.contains(says)),
                "{says}: {err:?}"
            );
        }
    }

    #[tokio::test]
    async fn a_request_the_upstream_read_is_never_sent_again() {
        // Connection 1 answers once, then reads the next request whole and
        // closes without a word: the upstream may be running (and billing)
        // that call, so it must not arrive a second time anywhere. Unary
        // calls and streams alike, on both transports.
        for (transport, make) in TRANSPORTS {
            for stream in [false, true] {
                let posts = Arc::new(AtomicUsize::new(0));
                let seen = posts.clone();
                let (url, accepted) = server(move |mut sock, n| {
                    let seen = seen.clone();
                    async move {
                        while read_request(&mut sock).await.is_some() {
                            let k = seen.fetch_add(1, Ordering::SeqCst);
                            if n == 1 && k == 1 {
                                return;
                            }
                            sock.write_all(ok("{}").as_bytes()).await.unwrap();
                        }
                    }
                })
                .await;
                let up = make(&url, Duration::from_secs(5));
                up.call(post(&url, "{}")).await.unwrap();
                let err = if stream {
                    up.call_stream(post(&url, "{}")).await.err().unwrap()
                } else {
                    up.call(post(&url, "{}")).await.err().unwrap()
                };
                assert!(
                    matches!(&err, ProviderError::Unavailable(_)),
                    "{transport} stream={stream}: {err:?}"
                );
                assert_eq!(
                    posts.load(Ordering::SeqCst),
                    2,
                    "{transport} stream={stream}: the second POST arrived twice"
                );
                assert_eq!(accepted.load(Ordering::SeqCst), 1, "{transport}");
            }
        }
    }

    #[tokio::test]
    async fn a_pooled_connection_reset_before_the_request_left_is_replaced_once() {
        // Connection 1 answers once, then resets (RST, not FIN). The next
        // request cannot go out on it (the pool check or the first write
        // sees the reset), so it goes once, on a fresh connection.
        let (reset_tx, reset_rx) = tokio::sync::oneshot::channel::<()>();
        let reset_tx = Arc::new(Mutex::new(Some(reset_tx)));
        let posts = Arc::new(AtomicUsize::new(0));
        let seen = posts.clone();
        let (url, accepted) = server(move |mut sock, n| {
            let seen = seen.clone();
            let reset_tx = reset_tx.lock().unwrap().take();
            async move {
                while read_request(&mut sock).await.is_some() {
                    seen.fetch_add(1, Ordering::SeqCst);
                    sock.write_all(ok(&format!("{{\"n\":{n}}}")).as_bytes())
                        .await
                        .unwrap();
                    if n == 1 {
                        sock.set_zero_linger().unwrap();
                        drop(sock);
                        reset_tx.unwrap().send(()).unwrap();
                        return;
                    }
                }
            }
        })
        .await;
        let up = upstream(&url, Duration::from_secs(5));
        assert_eq!(
            &up.call(post(&url, "{}")).await.unwrap().body[..],
            br#"{"n":1}"#
        );
        reset_rx.await.unwrap();
        let answer = up.call(post(&url, "{}")).await.unwrap();
        assert_eq!(&answer.body[..], br#"{"n":2}"#);
        assert_eq!(posts.load(Ordering::SeqCst), 2);
        assert_eq!(accepted.load(Ordering::SeqCst), 2);

        // A fresh connection that closes unanswered is not tried again.
        let (url, accepted) = server(|mut sock, _| async move {
            read_request(&mut sock).await;
        })
        .await;
        let err = upstream(&url, Duration::from_secs(5))
            .call(post(&url, "{}"))
            .await
            .err()
            .unwrap();
        assert!(
            matches!(&err, ProviderError::Unavailable(m) if m.contains("closed")),
            "{err:?}"
        );
        assert_eq!(accepted.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn an_endless_answer_is_cut_at_the_limit() {
        // A 200 whose chunked body never ends, and a 500 whose body never
        // ends: neither is buffered without bound.
        for (transport, make) in TRANSPORTS {
            for status in ["200 OK", "500 Internal Server Error"] {
                let (url, _) = server(move |mut sock, _| async move {
                    read_request(&mut sock).await;
                    let head = format!(
                        "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\n\r\n"
                    );
                    sock.write_all(head.as_bytes()).await.unwrap();
                    let piece = format!("10000\r\n{}\r\n", "x".repeat(0x10000));
                    // Far more than any limit; it stops when the client closes.
                    for _ in 0..(2 * MAX_ANSWER / 0x10000) {
                        if sock.write_all(piece.as_bytes()).await.is_err() {
                            return;
                        }
                    }
                })
                .await;
                let up = make(&url, Duration::from_secs(20));
                let err = up
                    .call_json::<serde_json::Value>(post(&url, "{}"))
                    .await
                    .err()
                    .unwrap();
                if status.starts_with("200") {
                    assert!(
                        matches!(&err, ProviderError::Unavailable(m) if m.contains("larger than 64 MiB")),
                        "{transport}: {err:?}"
                    );
                } else {
                    assert!(
                        matches!(&err, ProviderError::Unavailable(m) if m.contains("500") && m.len() < 1024),
                        "{transport}: {err:?}"
                    );
                }
            }
        }
    }

    #[tokio::test]
    async fn a_framing_error_after_a_whole_json_body_fails_the_call() {
        // The JSON is complete, then the chunked framing breaks: the answer
        // cannot be trusted (what else was on that connection?).
        for tail in ["0\r\nx", "zz\r\n\r\n", "2\r\n{}XX"] {
            let (url, accepted) = server(move |mut sock, _| async move {
                read_request(&mut sock).await.unwrap();
                let reply = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\n\r\n2\r\n{{}}\r\n{tail}"
                );
                sock.write_all(reply.as_bytes()).await.unwrap();
                // Hold the connection open so only the framing decides.
                tokio::time::sleep(Duration::from_millis(200)).await;
            })
            .await;
            let up = upstream(&url, Duration::from_millis(100));
            let err = up.call(post(&url, "{}")).await.err().unwrap();
            assert!(
                matches!(
                    &err,
                    ProviderError::Unavailable(_) | ProviderError::Timeout(_)
                ),
                "{tail:?}: {err:?}"
            );
            assert_eq!(accepted.load(Ordering::SeqCst), 1);
        }
    }

    #[test]
    fn heads_that_frame_doubtfully_are_refused() {
        for raw in [
            "HTTP/1.1 200 OK\r\ncontent-length: 2\r\ntransfer-encoding: chunked\r\n\r\n",
            "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\ncontent-length: 2\r\n\r\n",
            "HTTP/1.0 200 OK\r\ntransfer-encoding: chunked\r\n\r\n",
            "HTTP/1.1 200 OK\r\ncontent-length: +2\r\n\r\n",
            "HTTP/1.1 200 OK\r\ncontent-length: 2, 2\r\n\r\n",
            "HTTP/1.1 200 OK\r\ncontent-length: 0x2\r\n\r\n",
            "HTTP/1.1 200 OK\r\ncontent-length: -1\r\n\r\n",
            "HTTP/1.1 200 OK\r\ncontent-length: 99999999999999999999\r\n\r\n",
            "HTTP/1.1 200 OK\r\ncontent-length: 2\r\ncontent-length: 3\r\n\r\n",
        ] {
            let mut buf = BytesMut::from(raw.as_bytes());
            assert!(
                matches!(parse_head(&mut buf), Err(Error::Malformed(_))),
                "{raw:?}"
            );
        }
        // The same value twice is one length.
        let mut buf = BytesMut::from(
            &b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\ncontent-length: 2\r\n\r\n"[..],
        );
        assert!(matches!(
            parse_head(&mut buf).unwrap().unwrap().framing,
            Framing::Length(2)
        ));
    }

    #[test]
    fn chunk_sizes_are_bare_hex() {
        for (line, size) in [
            ("0", Some(0)),
            ("1f", Some(31)),
            ("A;name=value", Some(10)),
            ("a ;ext", Some(10)),
            ("ffffffffffffffff", Some(u64::MAX)),
            ("+a", None),
            (" a", None),
            ("-1", None),
            ("0x1", None),
            ("", None),
            ("a b", None),
            ("10000000000000000", None),
        ] {
            assert_eq!(chunk_size(line.as_bytes()).ok(), size, "{line:?}");
        }
    }

    #[tokio::test]
    async fn an_idle_connection_its_upstream_closed_is_swept_without_a_next_call() {
        // The upstream answers, then closes its side (as uvicorn does to a
        // connection idle for 5 s) and waits to see infermux close too. No
        // further call comes: only the sweeper can notice.
        let (closed_tx, closed_rx) = tokio::sync::oneshot::channel::<()>();
        let closed_tx = Arc::new(Mutex::new(Some(closed_tx)));
        let (url, _) = server(move |mut sock, _| {
            let closed_tx = closed_tx.lock().unwrap().take();
            async move {
                read_request(&mut sock).await.unwrap();
                sock.write_all(ok("{}").as_bytes()).await.unwrap();
                sock.shutdown().await.unwrap();
                let mut rest = Vec::new();
                let _ = sock.read_to_end(&mut rest).await;
                let _ = closed_tx.unwrap().send(());
            }
        })
        .await;
        let up = upstream(&url, Duration::from_secs(5));
        up.call(post(&url, "{}")).await.unwrap();
        tokio::time::timeout(3 * SWEEP_EVERY, closed_rx)
            .await
            .expect("the sweeper closed the half-closed idle connection")
            .unwrap();
    }

    #[tokio::test]
    async fn a_large_request_body_arrives_whole() {
        let (url, _) = server(|mut sock, _| async move {
            let req = read_request(&mut sock).await.unwrap();
            let body = req.split("\r\n\r\n").nth(1).unwrap();
            let reply = ok(&format!("{{\"len\":{}}}", body.len()));
            sock.write_all(reply.as_bytes()).await.unwrap();
        })
        .await;
        let big = format!("{{\"x\":\"{}\"}}", "y".repeat(200_000));
        let answer = upstream(&url, Duration::from_secs(5))
            .call(post(&url, &big))
            .await
            .unwrap();
        assert_eq!(
            std::str::from_utf8(&answer.body).unwrap(),
            format!("{{\"len\":{}}}", big.len())
        );
    }

    #[test]
    fn heads_with_many_headers_parse_up_to_the_limit() {
        let head = |n: usize| {
            let mut raw = String::from("HTTP/1.1 200 OK\r\n");
            for i in 0..n {
                raw += &format!("x-h{i}: {i}\r\n");
            }
            raw + "content-type: application/json\r\ncontent-length: 2\r\n\r\n{}"
        };
        let mut buf = BytesMut::from(head(40).as_bytes());
        let parsed = parse_head(&mut buf).unwrap().unwrap();
        assert!(!parsed.event_stream);
        assert!(matches!(parsed.framing, Framing::Length(2)));
        assert_eq!(&buf[..], b"{}");
        let mut buf = BytesMut::from(head(MAX_HEADERS).as_bytes());
        assert!(
            matches!(parse_head(&mut buf), Err(Error::Malformed(m)) if m.contains("too many headers"))
        );
    }

    #[test]
    fn the_host_header_and_socket_address_come_from_the_base_url() {
        let plain =
            |u: &str| Plain::new(&url::Url::parse(u).unwrap(), Duration::from_secs(1)).unwrap();
        let p = plain("http://localhost/v1");
        assert_eq!((p.host.as_str(), p.port), ("localhost", 80));
        assert_eq!(p.authority, "localhost");
        let p = plain("http://[::1]:8000/v1");
        assert_eq!((p.host.as_str(), p.port), ("::1", 8000));
        assert_eq!(p.authority, "[::1]:8000");
        let p = plain("http://vllm.internal:8000");
        assert_eq!((p.host.as_str(), p.port), ("vllm.internal", 8000));
        assert_eq!(p.authority, "vllm.internal:8000");
        assert_eq!(p.connect_timeout, Duration::from_secs(1));
    }

    #[tokio::test]
    async fn an_ipv6_upstream_is_reached() {
        let Ok(listener) = TcpListener::bind("[::1]:0").await else {
            // No IPv6 loopback on this machine: an IPv6 upstream is then
            // unreachable, and says so as the contract's error.
            let url = "http://[::1]:9";
            let err = upstream(url, Duration::from_secs(5))
                .call(post(url, "{}"))
                .await
                .err()
                .unwrap();
            assert!(
                matches!(&err, ProviderError::Unavailable(m) if m.contains("cannot connect")),
                "{err:?}"
            );
            return;
        };
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move {
            let (mut sock, _) = listener.accept().await.unwrap();
            let req = read_request(&mut sock).await.unwrap();
            assert!(req.contains("host: [::1]:"), "{req}");
            sock.write_all(ok("{}").as_bytes()).await.unwrap();
        });
        let up = upstream(&url, Duration::from_secs(5));
        assert_eq!(up.call(post(&url, "{}")).await.unwrap().status, 200);
    }
}
