//! Plain-HTTP upstreams (`http://` base URLs: vLLM, Ollama, llama.cpp, a
//! sidecar on the same host): HTTP/1.1 connections that the calling task drives
//! itself.
//!
//! A general client (reqwest, hyper-util's pool) runs each connection in a task
//! of its own and hands requests and responses across channels; on a loopback or
//! same-rack upstream that machinery, not the network, is most of what a proxied
//! call costs. Here the request's own task writes the request and polls the
//! connection while it waits for the response and reads its body, and idle
//! connections wait in a pool of the thread that used them last. hyper does the
//! HTTP/1.1 itself.
//!
//! A connection taken from the pool is checked first (a peer that closed it is
//! noticed then); one that fails before the request could be written is
//! replaced by a fresh connection once.

use std::cell::RefCell;
use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::{Body as _, Incoming};
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use infermux::ProviderError;
use tokio::net::TcpStream;

/// How long a connection may wait in the pool.
const IDLE_TIMEOUT: Duration = Duration::from_secs(90);
/// Idle connections kept per upstream per thread.
const MAX_IDLE: usize = 256;

type Io = TokioIo<TcpStream>;

/// One HTTP/1.1 connection: the request sender and the connection it drives.
struct Conn {
    send: http1::SendRequest<Full<Bytes>>,
    io: http1::Connection<Io, Full<Bytes>>,
}

impl Conn {
    /// Polls the connection (its I/O). `Ready` means it is finished: closed by
    /// the peer, failed, or done after a `Connection: close` exchange.
    fn poll_io(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), hyper::Error>> {
        Pin::new(&mut self.io).poll(cx)
    }

    /// Whether an idle connection can take a request now: its peer has not
    /// closed it and hyper is waiting for the next request.
    fn usable(&mut self) -> bool {
        let mut cx = Context::from_waker(Waker::noop());
        if self.poll_io(&mut cx).is_ready() {
            return false;
        }
        !self.send.is_closed() && self.send.is_ready()
    }
}

struct Idle {
    conn: Conn,
    since: Instant,
}

thread_local! {
    /// This thread's idle connections, by upstream, oldest first.
    static IDLE: RefCell<HashMap<u64, VecDeque<Idle>>> = RefCell::default();
}

/// Drops the connections that waited too long (from the front: the oldest).
fn expire(conns: &mut VecDeque<Idle>) {
    while conns
        .front()
        .is_some_and(|c| c.since.elapsed() >= IDLE_TIMEOUT)
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
    authority: http::HeaderValue,
    connect_timeout: Duration,
}

/// An answer whose head has arrived; its body is read by the same task, which
/// keeps driving the connection while it reads.
pub struct Response {
    pub status: http::StatusCode,
    pub headers: http::HeaderMap,
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
        let authority = http::HeaderValue::from_str(&authority)
            .map_err(|_| format!("the host \"{authority}\" is not a valid Host header"))?;
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

    /// Sends `req` (origin-form URI; the `Host` header is added here) and waits
    /// for the answer's head. A connection that fails or times out is a
    /// [`ProviderError`]; any answer, even an error status, is returned.
    pub async fn send(
        &self,
        mut req: http::Request<Full<Bytes>>,
        provider: &str,
    ) -> Result<Response, ProviderError> {
        req.headers_mut()
            .insert(http::header::HOST, self.authority.clone());
        let (mut conn, reused) = match self.take() {
            Some(conn) => (conn, true),
            None => (self.connect(provider).await?, false),
        };
        match exchange(&mut conn, req).await {
            Ok(resp) => Ok(self.response(conn, resp)),
            Err(Failed::NotSent(req, _)) if reused => {
                // The pooled connection died between the check and the
                // request; nothing reached the upstream, so try a fresh one.
                let mut conn = self.connect(provider).await?;
                match exchange(&mut conn, *req).await {
                    Ok(resp) => Ok(self.response(conn, resp)),
                    Err(failed) => Err(failed.into_error(provider)),
                }
            }
            Err(failed) => Err(failed.into_error(provider)),
        }
    }

    fn response(&self, conn: Conn, resp: http::Response<Incoming>) -> Response {
        let (parts, incoming) = resp.into_parts();
        Response {
            status: parts.status,
            headers: parts.headers,
            body: Body {
                conn: Some(conn),
                incoming,
                pool: self.id,
            },
        }
    }

    fn take(&self) -> Option<Conn> {
        // `try_with`: a thread tearing down its thread-locals has no pool.
        IDLE.try_with(|idle| {
            let mut idle = idle.borrow_mut();
            let conns = idle.get_mut(&self.id)?;
            expire(conns);
            // The most recently used first: the likeliest to be alive.
            while let Some(mut c) = conns.pop_back() {
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
        let (send, io) = http1::Builder::new()
            .handshake(TokioIo::new(tcp))
            .await
            .map_err(|_| cannot())?;
        Ok(Conn { send, io })
    }
}

/// A failed exchange: the request never left (and is given back), or it did.
enum Failed {
    NotSent(Box<http::Request<Full<Bytes>>>, hyper::Error),
    Sent(hyper::Error),
}

impl Failed {
    fn into_error(self, provider: &str) -> ProviderError {
        let (Failed::NotSent(_, e) | Failed::Sent(e)) = self;
        transport_error(&e, provider)
    }
}

/// hyper's failures as the contract's: all of them are the upstream's fault and
/// retryable.
pub fn transport_error(e: &hyper::Error, provider: &str) -> ProviderError {
    if e.is_incomplete_message() {
        ProviderError::Unavailable(format!(
            "provider \"{provider}\" closed the connection before answering"
        ))
    } else {
        ProviderError::Unavailable(format!("provider \"{provider}\": {e}"))
    }
}

/// Writes `req` on `conn` and drives the connection until the answer's head
/// arrives.
async fn exchange(
    conn: &mut Conn,
    req: http::Request<Full<Bytes>>,
) -> Result<http::Response<Incoming>, Failed> {
    // A pooled connection is ready (checked when taken); a fresh one takes its
    // first request at once.
    let pending = conn.send.try_send_request(req);
    let mut pending = std::pin::pin!(pending);
    let mut io_done = false;
    std::future::poll_fn(|cx| {
        if !io_done {
            // The connection writes the request and reads the answer; when it
            // finishes first, the request future reports why.
            io_done = conn.poll_io(cx).is_ready();
        }
        pending.as_mut().poll(cx)
    })
    .await
    .map_err(|mut e| match e.take_message() {
        Some(req) => Failed::NotSent(Box::new(req), e.into_error()),
        None => Failed::Sent(e.into_error()),
    })
}

/// An answer's body, read by the task that holds it. Reading it drives the
/// connection; once the body is complete the connection goes back to the pool
/// of the thread that finished it. Dropping it before then closes the
/// connection, which is how an abandoned call cancels the upstream's work.
pub struct Body {
    conn: Option<Conn>,
    incoming: Incoming,
    pool: u64,
}

impl Body {
    /// The next piece of the body; `None` at its end.
    pub fn poll_chunk(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Bytes, hyper::Error>>> {
        loop {
            if let Some(conn) = &mut self.conn
                && conn.poll_io(cx).is_ready()
            {
                // Finished (closed after this answer, or failed): what it
                // read is in `incoming`, which reports a failure itself.
                self.conn = None;
            }
            match Pin::new(&mut self.incoming).poll_frame(cx) {
                Poll::Ready(Some(Ok(frame))) => match frame.into_data() {
                    Ok(data) if data.is_empty() => continue,
                    Ok(data) => {
                        if self.incoming.is_end_stream() {
                            // The last of a sized body: the connection is
                            // free now, whether or not the reader asks again.
                            self.release(cx);
                        }
                        return Poll::Ready(Some(Ok(data)));
                    }
                    Err(_trailers) => continue,
                },
                Poll::Ready(Some(Err(e))) => {
                    self.conn = None;
                    return Poll::Ready(Some(Err(e)));
                }
                Poll::Ready(None) => {
                    self.release(cx);
                    return Poll::Ready(None);
                }
                Poll::Pending => return Poll::Pending,
            }
        }
    }

    /// The next piece of the body; `None` at its end.
    pub async fn chunk(&mut self) -> Option<Result<Bytes, hyper::Error>> {
        std::future::poll_fn(|cx| self.poll_chunk(cx)).await
    }

    /// The whole body.
    pub async fn collect(mut self) -> Result<Bytes, hyper::Error> {
        let mut first: Option<Bytes> = None;
        let mut rest: Vec<u8> = Vec::new();
        while let Some(chunk) = self.chunk().await {
            let chunk = chunk?;
            match &first {
                None => first = Some(chunk),
                Some(f) => {
                    if rest.is_empty() {
                        rest.extend_from_slice(f);
                    }
                    rest.extend_from_slice(&chunk);
                }
            }
        }
        Ok(match first {
            Some(_) if !rest.is_empty() => Bytes::from(rest),
            Some(f) => f,
            None => Bytes::new(),
        })
    }

    /// The body is complete: let the connection settle into keep-alive and
    /// pool it, unless the answer closed it.
    fn release(&mut self, cx: &mut Context<'_>) {
        let Some(mut conn) = self.conn.take() else {
            return;
        };
        if conn.poll_io(cx).is_ready() || conn.send.is_closed() {
            return;
        }
        let pool = self.pool;
        let _ = IDLE.try_with(|idle| {
            let mut idle = idle.borrow_mut();
            let conns = idle.entry(pool).or_default();
            expire(conns);
            if conns.len() < MAX_IDLE {
                conns.push_back(Idle {
                    conn,
                    since: Instant::now(),
                });
            }
        });
    }
}

impl Drop for Body {
    /// A reader that stops at the end of what it wanted (an event stream's
    /// last event) may leave only the body's end unread: if that end is
    /// already here, the connection is still good and goes back to the pool.
    /// Anything else closes it, which cancels the upstream's work.
    fn drop(&mut self) {
        if self.conn.is_none() {
            return;
        }
        let mut cx = Context::from_waker(Waker::noop());
        for _ in 0..4 {
            match self.poll_chunk(&mut cx) {
                Poll::Ready(Some(Ok(_))) => continue,
                Poll::Ready(None | Some(Err(_))) | Poll::Pending => return,
            }
        }
    }
}

impl futures_util::Stream for Body {
    type Item = Result<Bytes, hyper::Error>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.get_mut().poll_chunk(cx)
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
    use crate::http::Upstream;

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
            return; // no IPv6 loopback on this machine
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
