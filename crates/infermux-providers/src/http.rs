//! What every HTTP adapter shares: the client, sending, and turning upstream
//! failures into [`ProviderError`]s by the contract's rules.

use std::time::Duration;

use futures_util::StreamExt;
use infermux::ProviderError;
use infermux::validate::truncate;

use crate::sse;

/// One provider's HTTP clients: one pooled client (rustls) per thread, made on
/// first use. A connection then lives on the thread that uses it, so a call does
/// not hop between threads to reach its upstream connection (the connection
/// task runs where the client made it).
#[derive(Debug)]
pub struct Clients {
    id: u64,
    timeout: Duration,
}

impl Clients {
    /// Checks that a client can be built with these settings.
    pub fn new(timeout: Duration) -> Result<Self, ProviderError> {
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        client(timeout)?;
        Ok(Clients {
            id: NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
            timeout,
        })
    }

    /// This thread's client.
    pub fn get(&self) -> Result<reqwest::Client, ProviderError> {
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
pub fn client(timeout: Duration) -> Result<reqwest::Client, ProviderError> {
    reqwest::Client::builder()
        .connect_timeout(timeout.min(Duration::from_secs(10)))
        .read_timeout(timeout)
        .pool_idle_timeout(Duration::from_secs(90))
        .tcp_nodelay(true)
        .build()
        .map_err(|e| ProviderError::Internal(format!("cannot build the HTTP client: {e}")))
}

/// Sends `req`; a connection failure or timeout is a [`ProviderError`], any
/// answer (even an error status) is returned.
pub async fn send(
    req: reqwest::RequestBuilder,
    provider: &str,
) -> Result<reqwest::Response, ProviderError> {
    req.send().await.map_err(|e| transport_error(&e, provider))
}

pub fn transport_error(e: &reqwest::Error, provider: &str) -> ProviderError {
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

/// Reads a non-2xx answer and classifies it: 429 → rate limited, other 4xx →
/// rejected (the upstream's status and message kept), 5xx and anything else →
/// unavailable (retryable).
pub async fn error_from(resp: reqwest::Response, provider: &str) -> ProviderError {
    let status = resp.status().as_u16();
    let body = resp.bytes().await.unwrap_or_default();
    let message = upstream_message(&body);
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

/// Sends `req` and reads a 2xx JSON answer as `T`; anything else is the
/// matching [`ProviderError`].
pub async fn call_json<T: serde::de::DeserializeOwned>(
    req: reqwest::RequestBuilder,
    provider: &str,
) -> Result<T, ProviderError> {
    let resp = send(req, provider).await?;
    if !resp.status().is_success() {
        return Err(error_from(resp, provider).await);
    }
    json_body(resp, provider).await
}

/// Sends `req` and wants any 2xx answer (health checks).
pub async fn call_ok(req: reqwest::RequestBuilder, provider: &str) -> Result<(), ProviderError> {
    let resp = send(req, provider).await?;
    if resp.status().is_success() {
        Ok(())
    } else {
        Err(error_from(resp, provider).await)
    }
}

/// Sends a streaming `req` and checks that a 2xx event stream comes back.
pub async fn call_stream(
    req: reqwest::RequestBuilder,
    provider: &str,
) -> Result<reqwest::Response, ProviderError> {
    let resp = send(req, provider).await?;
    if !resp.status().is_success() {
        return Err(error_from(resp, provider).await);
    }
    expect_event_stream(resp, provider).await
}

/// Parses a 2xx JSON body; garbage is a retryable upstream failure.
pub async fn json_body<T: serde::de::DeserializeOwned>(
    resp: reqwest::Response,
    provider: &str,
) -> Result<T, ProviderError> {
    let bytes = resp
        .bytes()
        .await
        .map_err(|e| transport_error(&e, provider))?;
    serde_json::from_slice(&bytes).map_err(|e| {
        ProviderError::Unavailable(format!(
            "provider \"{provider}\" sent an unreadable body: {e}"
        ))
    })
}

/// Checks that a 2xx answer to a streaming request really is an event stream.
pub async fn expect_event_stream(
    resp: reqwest::Response,
    provider: &str,
) -> Result<reqwest::Response, ProviderError> {
    let is_sse = resp
        .headers()
        .get(reqwest::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("text/event-stream"));
    if is_sse {
        return Ok(resp);
    }
    let body = resp.bytes().await.unwrap_or_default();
    Err(ProviderError::Unavailable(format!(
        "provider \"{provider}\" answered a stream request without an event stream: {}",
        upstream_message(&body)
    )))
}

/// The SSE events of a response body, as a stream. A transport failure or a
/// malformed event ends it with an error; so does a body that ends mid-event.
pub fn events(
    resp: reqwest::Response,
    provider: String,
) -> impl futures_util::Stream<Item = Result<sse::Event, ProviderError>> + Send {
    let body = resp.bytes_stream();
    futures_util::stream::unfold(
        (Box::pin(body), sse::Decoder::new(), false),
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
                        Some(Err(e)) => {
                            let err = transport_error(&e, &provider);
                            return Some((Err(err), (body, decoder, true)));
                        }
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

/// What one upstream event means for the reply.
pub enum Step {
    /// A piece of the reply (empty pieces are skipped).
    Chunk(infermux::InferChunk),
    /// Nothing for the caller (pings, bookkeeping events).
    Skip,
    /// The upstream says the reply is complete.
    Done,
}

type EventStream =
    std::pin::Pin<Box<dyn futures_util::Stream<Item = Result<sse::Event, ProviderError>> + Send>>;

struct ChunkState<F> {
    events: EventStream,
    parse: F,
    provider: String,
    done: bool,
    /// For an estimate when the upstream reports no usage.
    prompt: Vec<infermux::ChatMessage>,
    text: String,
    saw_usage: bool,
}

/// Turns an SSE response into the provider's chunk stream, `parse` reading each
/// event as it arrives. The stream ends at [`Step::Done`]; an upstream that
/// closes before it ends the stream with a retryable error, never a silently
/// truncated reply. When the upstream reported no usage by then, a last chunk
/// carries an estimate (see [`crate::tokens`]).
pub fn chunk_stream<F>(
    resp: reqwest::Response,
    provider: String,
    prompt: &[infermux::ChatMessage],
    parse: F,
) -> infermux::ChunkStream
where
    F: FnMut(&sse::Event) -> Result<Step, ProviderError> + Send + 'static,
{
    let state = ChunkState {
        events: Box::pin(events(resp, provider.clone())),
        parse,
        provider,
        done: false,
        prompt: prompt.to_vec(),
        text: String::new(),
        saw_usage: false,
    };
    Box::pin(futures_util::stream::unfold(state, |mut s| async move {
        if s.done {
            return None;
        }
        loop {
            let failure = match s.events.next().await {
                None => ProviderError::Unavailable(format!(
                    "provider \"{}\" closed its stream before the reply was complete",
                    s.provider
                )),
                Some(Err(e)) => e,
                Some(Ok(event)) => match (s.parse)(&event) {
                    Ok(Step::Done) => {
                        s.done = true;
                        if s.saw_usage {
                            return None;
                        }
                        let estimate = infermux::InferChunk {
                            tokens_in: crate::tokens::prompt(&s.prompt),
                            tokens_out: crate::tokens::count(&s.text),
                            ..Default::default()
                        };
                        return Some((Ok(estimate), s));
                    }
                    Ok(Step::Skip) => continue,
                    Ok(Step::Chunk(c)) => {
                        if c.delta.is_empty()
                            && c.finish_reason.is_empty()
                            && c.tokens_in == 0
                            && c.tokens_out == 0
                        {
                            continue;
                        }
                        s.saw_usage |= c.tokens_in > 0 || c.tokens_out > 0;
                        s.text.push_str(&c.delta);
                        return Some((Ok(c), s));
                    }
                    Err(e) => e,
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
