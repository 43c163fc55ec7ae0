//! What every HTTP adapter shares: the upstream (its connections), sending,
//! and turning upstream failures into [`ProviderError`]s by the contract's
//! rules.
//!
//! Two transports sit behind [`Upstream`]: plain `http://` upstreams (local and
//! same-network servers: vLLM, Ollama, llama.cpp) get HTTP/1.1 connections the
//! calling task drives itself ([`crate::plain`]), because there the client's
//! own machinery is most of a call's cost; `https://` upstreams (hosted
//! providers) get reqwest with rustls, HTTP/2 where the server offers it.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::{Stream, StreamExt};
use infermux::validate::truncate;
use infermux::{CallContext, ProviderError};

use crate::{plain, sse};

/// The largest unary answer read from an upstream (a chat completion or a
/// batch of embeddings); a longer one is a 502, not unbounded memory.
pub const MAX_ANSWER: usize = 64 * 1024 * 1024;
/// How much of an error answer is read: enough for any error message.
pub const MAX_ERROR_BODY: usize = 64 * 1024;

/// A response body as it arrives; a transport failure or a read timeout is its
/// last item.
pub type BodyStream = Pin<Box<dyn Stream<Item = Result<Bytes, ProviderError>> + Send>>;

/// One provider's upstream: where its requests go and the connections they use.
pub struct Upstream {
    provider: Arc<str>,
    base_url: String,
    transport: Transport,
    /// A unary call's whole deadline; for streams, connecting, the answer's
    /// head and each read.
    timeout: Duration,
}

enum Transport {
    Plain(plain::Plain),
    Pooled(Clients),
}

impl std::fmt::Debug for Upstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Upstream")
            .field("base_url", &self.base_url)
            .field(
                "transport",
                &match self.transport {
                    Transport::Plain(_) => "plain",
                    Transport::Pooled(_) => "pooled",
                },
            )
            .finish_non_exhaustive()
    }
}

/// An answer read whole.
pub struct Answer {
    pub status: http::StatusCode,
    pub body: Bytes,
    /// The upstream's `x-request-id` or `request-id` header.
    pub request_id: Option<Box<str>>,
}

/// An answer whose body is still arriving.
pub struct Streaming {
    pub status: http::StatusCode,
    /// Whether its `Content-Type` is `text/event-stream` (the one thing
    /// callers read of its headers).
    pub event_stream: bool,
    pub request_id: Option<Box<str>>,
    pub body: BodyStream,
}

/// A request ready to send: an absolute URI, headers, the body.
pub type Request = http::Request<Bytes>;

impl Upstream {
    /// `base_url` is the provider's (no trailing slash); every endpoint is
    /// under it.
    pub fn new(provider: &str, base_url: &str, timeout: Duration) -> Result<Self, ProviderError> {
        let bad = |e: &dyn std::fmt::Display| {
            ProviderError::InvalidRequest(format!("provider \"{provider}\": bad base_url: {e}"))
        };
        let url = url::Url::parse(base_url).map_err(|e| bad(&e))?;
        let transport = match url.scheme() {
            "http" => Transport::Plain(plain::Plain::new(&url, timeout).map_err(|e| bad(&e))?),
            "https" => Transport::Pooled(Clients::new(timeout)?),
            other => {
                return Err(bad(&format!(
                    "unsupported scheme \"{other}\" (use http:// or https://)"
                )));
            }
        };
        Ok(Upstream {
            provider: Arc::from(provider),
            base_url: base_url.trim_end_matches('/').to_owned(),
            transport,
            timeout,
        })
    }

    /// An upstream on the pooled (reqwest) transport whatever its scheme, so
    /// tests can drive that transport against plain-HTTP servers.
    #[cfg(test)]
    pub(crate) fn pooled(
        provider: &str,
        base_url: &str,
        timeout: Duration,
    ) -> Result<Self, ProviderError> {
        Ok(Upstream {
            provider: Arc::from(provider),
            base_url: base_url.trim_end_matches('/').to_owned(),
            transport: Transport::Pooled(Clients::new(timeout)?),
            timeout,
        })
    }

    /// The provider's name, for messages.
    pub fn provider(&self) -> &Arc<str> {
        &self.provider
    }

    /// `{base_url}/{path}` (path may carry a query), parsed.
    pub fn endpoint(&self, path: &str) -> Result<http::Uri, ProviderError> {
        let url = format!("{}/{path}", self.base_url);
        url.parse().map_err(|e| {
            ProviderError::InvalidRequest(format!(
                "provider \"{}\": \"{url}\" is not a valid URL: {e}",
                self.provider
            ))
        })
    }

    /// Sends `req` and reads the whole answer, all within the provider's
    /// timeout. A connection failure or timeout is a [`ProviderError`]; any
    /// answer, even an error status, is returned.
    pub async fn call(&self, req: Request) -> Result<Answer, ProviderError> {
        match &self.transport {
            Transport::Plain(plain) => {
                let exchange = async {
                    let resp = plain.send(req, &self.provider).await?;
                    let collected = resp
                        .body
                        .collect(body_limit(resp.status))
                        .await
                        .map_err(|e| plain::transport_error(&e, &self.provider))?;
                    self.answer(resp.status, collected, resp.request_id)
                };
                tokio::time::timeout(self.timeout, exchange)
                    .await
                    .map_err(|_| self.timed_out())?
            }
            // Boxed: reqwest's futures are large, and in line they would
            // make every plain call's future as large.
            Transport::Pooled(clients) => Box::pin(self.call_pooled(clients, req)).await,
        }
    }

    async fn call_pooled(&self, clients: &Clients, req: Request) -> Result<Answer, ProviderError> {
        let mut resp = self.execute(clients, req, Some(self.timeout)).await?;
        let status = resp.status();
        let request_id = pooled_request_id(resp.headers());
        let mut gather = plain::Gather::new(body_limit(status));
        let collected = loop {
            match resp.chunk().await {
                Ok(Some(piece)) => {
                    if !gather.push(piece) {
                        break plain::Collected::Cut(gather.finish());
                    }
                }
                Ok(None) => break plain::Collected::Whole(gather.finish()),
                Err(e) => return Err(transport_error(&e, &self.provider)),
            }
        };
        self.answer(status, collected, request_id)
    }

    /// An answer read within its limit: a 2xx cut short is a failure (502);
    /// an error answer's first [`MAX_ERROR_BODY`] bytes are enough.
    fn answer(
        &self,
        status: http::StatusCode,
        collected: plain::Collected,
        request_id: Option<Box<str>>,
    ) -> Result<Answer, ProviderError> {
        match collected {
            plain::Collected::Whole(body) => Ok(Answer {
                status,
                body,
                request_id,
            }),
            plain::Collected::Cut(_) if status.is_success() => {
                Err(ProviderError::Unavailable(format!(
                    "provider \"{}\" sent an answer larger than {} MiB",
                    self.provider,
                    MAX_ANSWER >> 20
                )))
            }
            plain::Collected::Cut(body) => Ok(Answer {
                status,
                body,
                request_id,
            }),
        }
    }

    /// Sends `req` and waits for the answer's head (within the provider's
    /// timeout); the body then arrives as a stream, each read within the
    /// timeout.
    pub async fn open(&self, req: Request) -> Result<Streaming, ProviderError> {
        match &self.transport {
            Transport::Plain(plain) => {
                let resp = tokio::time::timeout(self.timeout, plain.send(req, &self.provider))
                    .await
                    .map_err(|_| self.timed_out())??;
                Ok(Streaming {
                    status: resp.status,
                    event_stream: resp.event_stream,
                    request_id: resp.request_id,
                    body: plain_stream(resp.body, self.timeout, self.provider.clone()),
                })
            }
            Transport::Pooled(clients) => {
                let resp = self.execute(clients, req, None).await?;
                let provider = self.provider.clone();
                let mut failed = false;
                Ok(Streaming {
                    status: resp.status(),
                    request_id: pooled_request_id(resp.headers()),
                    event_stream: plain::is_event_stream(
                        resp.headers()
                            .get(http::header::CONTENT_TYPE)
                            .map(http::HeaderValue::as_bytes),
                    ),
                    // Like the plain transport's: the first failure is the last item.
                    body: Box::pin(
                        resp.bytes_stream()
                            .map(move |r| r.map_err(|e| transport_error(&e, &provider)))
                            .take_while(move |r| {
                                let go = !failed;
                                failed |= r.is_err();
                                std::future::ready(go)
                            }),
                    ),
                })
            }
        }
    }

    fn timed_out(&self) -> ProviderError {
        ProviderError::Timeout(format!(
            "provider \"{}\" did not answer in time",
            self.provider
        ))
    }

    /// Sends `req` on this thread's reqwest client; `total` bounds the whole
    /// exchange, body included (the client's own timeouts bound connecting and
    /// each read).
    async fn execute(
        &self,
        clients: &Clients,
        req: Request,
        total: Option<Duration>,
    ) -> Result<reqwest::Response, ProviderError> {
        let mut req = reqwest::Request::try_from(req).map_err(|e| {
            ProviderError::Internal(format!("cannot build the upstream request: {e}"))
        })?;
        *req.timeout_mut() = total;
        clients
            .get()?
            .execute(req)
            .await
            .map_err(|e| transport_error(&e, &self.provider))
    }

    /// Sends `req` and wants a 2xx answer, read whole; anything else is the
    /// matching [`ProviderError`].
    pub async fn call_success(&self, req: Request) -> Result<Answer, ProviderError> {
        let answer = self.call(req).await?;
        if !answer.status.is_success() {
            return Err(error_from(answer.status, &answer.body, &self.provider));
        }
        Ok(answer)
    }

    /// `answer`'s body as `T` (borrowing from it), or the 502 an unreadable
    /// body is.
    pub fn read_json<'a, T: serde::Deserialize<'a>>(
        &self,
        answer: &'a Answer,
    ) -> Result<T, ProviderError> {
        infermux::json::from_slice_untracked(&answer.body).map_err(|e| {
            ProviderError::Unavailable(format!(
                "provider \"{}\" sent an unreadable body: {e}",
                self.provider
            ))
        })
    }

    /// Sends `req` and reads a 2xx JSON answer as `T`; anything else is the
    /// matching [`ProviderError`].
    pub async fn call_json<T: serde::de::DeserializeOwned>(
        &self,
        req: Request,
    ) -> Result<T, ProviderError> {
        let answer = self.call_success(req).await?;
        infermux::json::from_slice_untracked(&answer.body).map_err(|e| {
            ProviderError::Unavailable(format!(
                "provider \"{}\" sent an unreadable body: {e}",
                self.provider
            ))
        })
    }

    /// Sends `req` and wants any 2xx answer (health checks).
    pub async fn call_ok(&self, req: Request) -> Result<(), ProviderError> {
        let answer = self.call(req).await?;
        if answer.status.is_success() {
            Ok(())
        } else {
            Err(error_from(answer.status, &answer.body, &self.provider))
        }
    }

    /// Sends a streaming `req` and checks that a 2xx event stream comes back;
    /// its body is returned.
    pub async fn call_stream(&self, req: Request) -> Result<Streaming, ProviderError> {
        let resp = self.open(req).await?;
        if !resp.status.is_success() {
            let body = collect(resp.body).await;
            return Err(error_from(resp.status, &body, &self.provider));
        }
        if resp.event_stream {
            return Ok(resp);
        }
        let body = collect(resp.body).await;
        Err(ProviderError::Unavailable(format!(
            "provider \"{}\" answered a stream request without an event stream: {}",
            self.provider,
            upstream_message(&body)
        )))
    }
}

/// The request id header of a reqwest answer.
fn pooled_request_id(headers: &http::HeaderMap) -> Option<Box<str>> {
    headers
        .get("x-request-id")
        .or_else(|| headers.get("request-id"))
        .and_then(|v| plain::request_id_of(v.as_bytes()))
}

/// How much of an answer with `status` is read.
fn body_limit(status: http::StatusCode) -> usize {
    if status.is_success() {
        MAX_ANSWER
    } else {
        MAX_ERROR_BODY
    }
}

/// A request's head: `method`, `uri` and `headers`; its body comes with
/// [`json`] or [`empty`].
pub fn head(
    method: http::Method,
    uri: http::Uri,
    headers: impl IntoIterator<Item = (http::HeaderName, http::HeaderValue)>,
) -> http::Request<()> {
    let mut req = http::Request::new(());
    *req.method_mut() = method;
    *req.uri_mut() = uri;
    // Room for the key, `traceparent` and `Content-Type` from the start.
    let mut map = http::HeaderMap::with_capacity(4);
    map.extend(headers);
    *req.headers_mut() = map;
    req
}

/// Adds the call's `traceparent` (the upstream's work joins the caller's
/// trace).
pub fn with_traceparent(mut req: http::Request<()>, ctx: &CallContext<'_>) -> http::Request<()> {
    const TRACEPARENT: http::HeaderName = http::HeaderName::from_static("traceparent");
    if let Ok(v) = http::HeaderValue::from_bytes(&ctx.trace.traceparent_bytes(ctx.span_id)) {
        req.headers_mut().insert(TRACEPARENT, v);
    }
    req
}

/// `req` with `body` serialized as JSON.
pub fn json<T: serde::Serialize>(
    req: http::Request<()>,
    body: &T,
) -> Result<Request, ProviderError> {
    let body = infermux::json::to_vec(body)
        .map_err(|e| ProviderError::Internal(format!("cannot encode the upstream request: {e}")))?;
    Ok(json_bytes(req, body))
}

/// `req` with `body`, JSON already encoded.
pub fn json_bytes(req: http::Request<()>, body: Vec<u8>) -> Request {
    let mut req = req.map(|()| Bytes::from(body));
    req.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    req
}

/// `req` without a body.
pub fn empty(req: http::Request<()>) -> Request {
    req.map(|()| Bytes::new())
}

/// A plain upstream's body as a stream; each read must come within `timeout`.
fn plain_stream(body: plain::Body, timeout: Duration, provider: Arc<str>) -> BodyStream {
    Box::pin(futures_util::stream::unfold(
        (body, provider, false),
        move |(mut body, provider, done)| async move {
            if done {
                return None;
            }
            let item = match tokio::time::timeout(timeout, body.chunk()).await {
                Err(_) => Err(ProviderError::Timeout(format!(
                    "provider \"{provider}\" sent nothing for {}",
                    humantime(timeout)
                ))),
                Ok(None) => return None,
                Ok(Some(Ok(bytes))) => return Some((Ok(bytes), (body, provider, false))),
                Ok(Some(Err(e))) => Err(plain::transport_error(&e, &provider)),
            };
            Some((item, (body, provider, true)))
        },
    ))
}

fn humantime(d: Duration) -> String {
    if d.subsec_millis() == 0 {
        format!("{}s", d.as_secs())
    } else {
        format!("{}ms", d.as_millis())
    }
}

/// What is left of a body, for an error message (at most
/// [`MAX_ERROR_BODY`] of it).
async fn collect(mut body: BodyStream) -> Bytes {
    let mut gather = plain::Gather::new(MAX_ERROR_BODY);
    while let Some(Ok(bytes)) = body.next().await {
        if !gather.push(bytes) {
            break;
        }
    }
    gather.finish()
}

/// One provider's reqwest clients: one pooled client (rustls) per thread, made
/// on first use. A connection then lives on the thread that uses it, so a call
/// does not hop between threads to reach its upstream connection (the
/// connection task runs where the client made it).
#[derive(Debug)]
struct Clients {
    id: u64,
    timeout: Duration,
}

impl Clients {
    /// Checks that a client can be built with these settings.
    fn new(timeout: Duration) -> Result<Self, ProviderError> {
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        client(timeout)?;
        Ok(Clients {
            id: NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
            timeout,
        })
    }

    /// This thread's client.
    fn get(&self) -> Result<reqwest::Client, ProviderError> {
        thread_local! {
            static CLIENTS: std::cell::RefCell<std::collections::HashMap<u64, reqwest::Client>> =
                std::cell::RefCell::default();
        }
        CLIENTS.with(|clients| {
            if let Some(c) = clients.borrow().get(&self.id) {
                return Ok(c.clone());
            }
            let c = client(self.timeout)?;
            clients.borrow_mut().insert(self.id, c.clone());
            Ok(c)
        })
    }
}

/// A pooled HTTP client (rustls) for one provider. `timeout` bounds connecting
/// and each read; unary calls also get it as a total deadline.
fn client(timeout: Duration) -> Result<reqwest::Client, ProviderError> {
    reqwest::Client::builder()
        .connect_timeout(timeout.min(Duration::from_secs(10)))
        .read_timeout(timeout)
        .pool_idle_timeout(Duration::from_secs(90))
        .tcp_nodelay(true)
        .build()
        .map_err(|e| ProviderError::Internal(format!("cannot build the HTTP client: {e}")))
}

fn transport_error(e: &reqwest::Error, provider: &str) -> ProviderError {
    if e.is_timeout() {
        ProviderError::Timeout(format!("provider \"{provider}\" did not answer in time"))
    } else if e.is_connect() {
        ProviderError::Unavailable(format!("cannot connect to provider \"{provider}\""))
    } else {
        ProviderError::Unavailable(format!("provider \"{provider}\": {}", without_url(e)))
    }
}

/// reqwest's messages name the URL, which may carry a key in its query.
fn without_url(e: &reqwest::Error) -> String {
    let mut msg = e.to_string();
    if let Some(url) = e.url() {
        msg = msg.replace(url.as_str(), "(upstream)");
    }
    msg
}

/// Classifies a non-2xx answer: 429 → rate limited, other 4xx → rejected (the
/// upstream's status and message kept), 5xx and anything else → unavailable
/// (retryable).
fn error_from(status: http::StatusCode, body: &[u8], provider: &str) -> ProviderError {
    let status = status.as_u16();
    let message = upstream_message(body);
    match status {
        429 => ProviderError::RateLimited(format!("provider \"{provider}\": {message}")),
        400..=499 => ProviderError::Rejected { status, message },
        _ => ProviderError::Unavailable(format!(
            "provider \"{provider}\" answered {status}: {message}"
        )),
    }
}

/// The human message of an upstream error body: `error.message` (OpenAI,
/// Anthropic), `error` as a string (Ollama), or the start of the body.
pub fn upstream_message(body: &[u8]) -> String {
    if let Ok(v) = serde_json::from_slice::<serde_json::Value>(body) {
        if let Some(m) = v.pointer("/error/message").and_then(|m| m.as_str()) {
            return truncate(m, 500).to_owned();
        }
        if let Some(m) = v.get("error").and_then(|m| m.as_str()) {
            return truncate(m, 500).to_owned();
        }
        if let Some(m) = v.get("message").and_then(|m| m.as_str()) {
            return truncate(m, 500).to_owned();
        }
    }
    let text = String::from_utf8_lossy(body);
    let text = text.trim();
    if text.is_empty() {
        "(empty body)".to_owned()
    } else {
        truncate(text, 200).to_owned()
    }
}

/// The SSE events of a response body, as a stream. A transport failure or a
/// malformed event ends it with an error; so does a body that ends mid-event.
pub fn events(
    body: BodyStream,
    provider: Arc<str>,
) -> impl futures_util::Stream<Item = Result<sse::Event, ProviderError>> + Send {
    futures_util::stream::unfold(
        (body, sse::Decoder::new(), false),
        move |(mut body, mut decoder, done)| {
            let provider = provider.clone();
            async move {
                if done {
                    return None;
                }
                loop {
                    match decoder.next_event() {
                        Ok(Some(event)) => return Some((Ok(event), (body, decoder, false))),
                        Ok(None) => {}
                        Err(e) => {
                            let err =
                                ProviderError::Unavailable(format!("provider \"{provider}\": {e}"));
                            return Some((Err(err), (body, decoder, true)));
                        }
                    }
                    match body.next().await {
                        Some(Ok(bytes)) => decoder.push(&bytes),
                        Some(Err(err)) => return Some((Err(err), (body, decoder, true))),
                        None if decoder.remainder() > 0 => {
                            let err = ProviderError::Unavailable(format!(
                                "provider \"{provider}\" ended its stream in the middle of an event"
                            ));
                            return Some((Err(err), (body, decoder, true)));
                        }
                        None => return None,
                    }
                }
            }
        },
    )
}

/// A token count that may be `null` (some servers send it for a count they
/// do not keep) as 0.
pub(crate) fn null_as_zero<'de, D: serde::Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    Ok(<Option<u64> as serde::Deserialize>::deserialize(d)?.unwrap_or(0))
}

/// `req` whole, for a provider that translates it: a request passed in as
/// its caller's bytes of another dialect than the provider's (`own`) is
/// decoded again, tool calls and extra fields included. `None`: `req` is
/// whole already, or goes through as sent.
pub fn whole(
    req: &infermux::InferRequest,
    own: infermux::raw::Dialect,
) -> Result<Option<infermux::InferRequest>, ProviderError> {
    match req.passthrough.as_deref() {
        Some(p) if p.raw.dialect == own => Ok(None),
        Some(p) => match p.whole_request() {
            None => Ok(None),
            Some(r) => r
                .map(Some)
                .map_err(|e| ProviderError::InvalidRequest(e.message().to_owned())),
        },
        None => Ok(None),
    }
}

/// What one upstream event means for the reply (moved once per event: its
/// chunks are not boxed).
pub enum Step {
    /// A piece of the reply (empty pieces are skipped).
    Chunk(infermux::InferChunk),
    /// Nothing for the caller (pings, bookkeeping events).
    Skip,
    /// The upstream says the reply is complete.
    Done,
    /// The last piece: the reply is complete after it (an event passed
    /// through that also ends the stream, Anthropic's `message_stop`).
    Last(infermux::InferChunk),
}

type EventStream =
    std::pin::Pin<Box<dyn futures_util::Stream<Item = Result<sse::Event, ProviderError>> + Send>>;

struct ChunkState<F> {
    events: EventStream,
    parse: F,
    provider: Arc<str>,
    done: bool,
    /// For an estimate when the upstream reports no usage.
    prompt: Prompt,
    text: String,
    saw_usage: bool,
    /// Goes with the first chunk.
    request_id: Option<Box<str>>,
    /// A [`Step::Last`] went out: the stream ends at the next poll.
    ending: bool,
}

/// What a stream's prompt was, for an estimate of its tokens when the
/// upstream reports none.
pub enum Prompt {
    Messages(Vec<infermux::ChatMessage>),
    /// A body passed through: the estimate counts all of it (tools
    /// included), and nothing is copied unless the estimate is needed.
    Raw(Arc<infermux::types::Passthrough>),
}

impl Prompt {
    /// The prompt of `req`: its body when it goes through as sent.
    pub fn of(req: &infermux::InferRequest, passthrough: bool) -> Self {
        match (&req.passthrough, passthrough) {
            (Some(raw), true) => Prompt::Raw(raw.clone()),
            _ => Prompt::Messages(req.messages.clone()),
        }
    }

    fn tokens(&self) -> u64 {
        match self {
            Prompt::Messages(m) => crate::tokens::prompt(m),
            Prompt::Raw(raw) => raw_prompt_tokens(raw.body()),
        }
    }
}

/// The prompt estimate of an OpenAI request body, as
/// [`crate::tokens::prompt`] counts its messages (text parts joined).
pub fn raw_prompt_tokens(body: &[u8]) -> u64 {
    #[derive(serde::Deserialize)]
    struct Body {
        #[serde(default)]
        messages: Vec<Message>,
    }
    #[derive(serde::Deserialize)]
    struct Message {
        #[serde(default)]
        role: String,
        #[serde(default)]
        content: serde_json::Value,
    }
    let Ok(b) = infermux::json::from_slice_untracked::<Body>(body) else {
        return 0;
    };
    let messages: Vec<infermux::ChatMessage> = b
        .messages
        .into_iter()
        .map(|m| {
            let text = match m.content {
                serde_json::Value::String(s) => s,
                serde_json::Value::Array(parts) => parts
                    .iter()
                    .filter_map(|p| p.get("text").and_then(serde_json::Value::as_str))
                    .collect(),
                _ => String::new(),
            };
            infermux::ChatMessage::new(infermux::Role::parse(&m.role), text)
        })
        .collect();
    crate::tokens::prompt(&messages)
}

/// Turns an SSE response into the provider's chunk stream, `parse` reading each
/// event as it arrives. The stream ends at [`Step::Done`]; an upstream that
/// closes before it ends the stream with a retryable error, never a silently
/// truncated reply. When the upstream reported no usage by then, a last chunk
/// carries an estimate (see [`crate::tokens`]).
pub fn chunk_stream<F>(
    resp: Streaming,
    provider: Arc<str>,
    prompt: Prompt,
    parse: F,
) -> infermux::ChunkStream
where
    F: FnMut(sse::Event) -> Result<Step, ProviderError> + Send + 'static,
{
    let state = ChunkState {
        events: Box::pin(events(resp.body, provider.clone())),
        parse,
        provider,
        done: false,
        prompt,
        text: String::new(),
        saw_usage: false,
        request_id: resp.request_id,
        ending: false,
    };
    Box::pin(futures_util::stream::unfold(state, |mut s| async move {
        if s.done {
            return None;
        }
        loop {
            let step = match s.ending {
                true => Some(Ok(Step::Done)),
                false => match s.events.next().await {
                    None => None,
                    Some(Err(e)) => Some(Err(e)),
                    Some(Ok(event)) => Some((s.parse)(event)),
                },
            };
            let failure = match step {
                None => ProviderError::Unavailable(format!(
                    "provider \"{}\" closed its stream before the reply was complete",
                    s.provider
                )),
                Some(Err(e)) => e,
                Some(Ok(step)) => match (matches!(step, Step::Last(_)), step) {
                    (_, Step::Done) => {
                        s.done = true;
                        if s.saw_usage {
                            return None;
                        }
                        let estimate = infermux::InferChunk {
                            tokens_in: s.prompt.tokens(),
                            tokens_out: crate::tokens::count(&s.text),
                            usage_estimated: true,
                            ..Default::default()
                        };
                        return Some((Ok(estimate), s));
                    }
                    (_, Step::Skip) => continue,
                    (is_last, Step::Last(mut c) | Step::Chunk(mut c)) => {
                        s.ending |= is_last;
                        if c.delta.is_empty()
                            && c.finish_reason.is_empty()
                            && c.usage().is_empty()
                            && c.tool_calls.is_none()
                            && c.reasoning.is_none()
                            && c.raw.is_none()
                        {
                            continue;
                        }
                        s.saw_usage |= c.tokens_in > 0 || c.tokens_out > 0;
                        // Kept only while an estimate may still be needed.
                        if !s.saw_usage {
                            s.text.push_str(&c.delta);
                        }
                        if let Some(id) = s.request_id.take() {
                            c.upstream_request_id = Some(id.into());
                        }
                        return Some((Ok(c), s));
                    }
                },
            };
            s.done = true;
            return Some((Err(failure), s));
        }
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upstream_messages() {
        assert_eq!(
            upstream_message(br#"{"error":{"message":"bad key","type":"x"}}"#),
            "bad key"
        );
        assert_eq!(
            upstream_message(
                br#"{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}"#
            ),
            "Overloaded"
        );
        assert_eq!(
            upstream_message(br#"{"error":"model not found"}"#),
            "model not found"
        );
        assert_eq!(upstream_message(b"<html>502</html>"), "<html>502</html>");
        assert_eq!(upstream_message(b""), "(empty body)");
    }
}
