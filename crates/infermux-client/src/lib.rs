//! Rust client for the infermux gRPC API (`infermux.v1.InferMuxService`).
//!
//! ```no_run
//! # async fn run() -> Result<(), infermux_client::ClientError> {
//! let client = infermux_client::Client::connect("http://localhost:8601").await?;
//! let res = client.prompt("echo-v1", "Hello world").await?;
//! println!("{} ({}; {} in, {} out, ${})", res.content, res.provider, res.tokens_in, res.tokens_out, res.cost_usd);
//! # Ok(()) }
//! ```
//!
//! Calls that fail with `UNAVAILABLE` (a transient provider or connection
//! failure) are retried: at most 3 attempts in all, backing off from 100 ms,
//! doubling to at most 1 s, with jitter. `NOT_FOUND`, `INVALID_ARGUMENT`,
//! `DEADLINE_EXCEEDED` and every other code are returned at once. Each call has
//! a deadline (30 s unless set with [`Client::timeout`]; a stream, which may
//! run as long as a generation takes, 5 min) that covers all attempts and is
//! sent to the server as `grpc-timeout`, so it bounds the provider call.

use std::future::Future;
use std::time::{Duration, Instant};

pub use infermux_proto::v1 as pb;
use pb::infer_mux_service_client::InferMuxServiceClient;
use tonic::transport::{Channel, Endpoint};
pub use tonic::{Code, Streaming};

/// The deadline of a call when the caller sets none.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);
/// The deadline of a stream (the whole reply) when the caller sets none.
pub const DEFAULT_STREAM_TIMEOUT: Duration = Duration::from_secs(300);

/// A failed call, with the gRPC code that says why.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ClientError {
    /// The server answered with a non-OK status (after any retries).
    #[error("{code:?}: {message}")]
    Status { code: Code, message: String },
    /// The server could not be reached.
    #[error("cannot connect: {0}")]
    Connect(String),
    /// The URL given to [`Client::connect`] is not usable.
    #[error("invalid server URL: {0}")]
    InvalidUrl(String),
}

impl ClientError {
    /// The gRPC code: the server's, `UNAVAILABLE` for connection failures,
    /// `INVALID_ARGUMENT` for a bad URL.
    pub fn code(&self) -> Code {
        match self {
            ClientError::Status { code, .. } => *code,
            ClientError::Connect(_) => Code::Unavailable,
            ClientError::InvalidUrl(_) => Code::InvalidArgument,
        }
    }
}

impl From<tonic::Status> for ClientError {
    fn from(s: tonic::Status) -> Self {
        ClientError::Status {
            code: s.code(),
            message: s.message().to_owned(),
        }
    }
}

/// When and how often to retry `UNAVAILABLE`.
#[derive(Debug, Clone, PartialEq)]
pub struct RetryPolicy {
    /// Attempts in all, the first included.
    pub max_attempts: u32,
    pub initial_backoff: Duration,
    pub max_backoff: Duration,
    /// Each wait is lengthened by a random fraction up to this of itself
    /// (0 = no jitter), so that clients failing together do not retry together.
    pub jitter: f64,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_attempts: 3,
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(1),
            jitter: 0.2,
        }
    }
}

impl RetryPolicy {
    /// The wait before attempt `attempt + 1` (attempt counts from 1).
    pub fn backoff(&self, attempt: u32) -> Duration {
        let base = self
            .initial_backoff
            .saturating_mul(1u32 << attempt.saturating_sub(1).min(16))
            .min(self.max_backoff);
        let extra = base.mul_f64(self.jitter.clamp(0.0, 1.0) * fastrand::f64());
        (base + extra).min(self.max_backoff)
    }
}

/// What [`Client::prompt`] returns.
#[derive(Debug, Clone, PartialEq)]
pub struct PromptResult {
    pub content: String,
    pub provider: String,
    pub tokens_in: i64,
    pub tokens_out: i64,
    pub cost_usd: f64,
}

/// A connection to an infermux gRPC server. Cheap to clone; clones share the
/// connection.
#[derive(Debug, Clone)]
pub struct Client {
    inner: InferMuxServiceClient<Channel>,
    retry: RetryPolicy,
    timeout: Duration,
    stream_timeout: Duration,
}

impl Client {
    /// Connects to `url`, e.g. `http://localhost:8601`.
    pub async fn connect(url: impl Into<String>) -> Result<Client, ClientError> {
        let url = url.into();
        let endpoint = Endpoint::from_shared(url.clone())
            .map_err(|e| ClientError::InvalidUrl(format!("\"{url}\": {e}")))?
            .connect_timeout(Duration::from_secs(5))
            .tcp_nodelay(true)
            .http2_keep_alive_interval(Duration::from_secs(30))
            .keep_alive_timeout(Duration::from_secs(20));
        let channel = endpoint
            .connect()
            .await
            .map_err(|e| ClientError::Connect(format!("{url}: {e}")))?;
        Ok(Client::from_channel(channel))
    }

    /// A client over an existing channel.
    pub fn from_channel(channel: Channel) -> Client {
        Client {
            inner: InferMuxServiceClient::new(channel)
                .max_decoding_message_size(10 * 1024 * 1024)
                .max_encoding_message_size(10 * 1024 * 1024),
            retry: RetryPolicy::default(),
            timeout: DEFAULT_TIMEOUT,
            stream_timeout: DEFAULT_STREAM_TIMEOUT,
        }
    }

    /// The same client with calls bounded by `timeout` (all attempts included);
    /// streams too.
    pub fn timeout(mut self, timeout: Duration) -> Client {
        self.timeout = timeout;
        self.stream_timeout = timeout;
        self
    }

    /// The same client with another retry policy.
    pub fn retry_policy(mut self, policy: RetryPolicy) -> Client {
        self.retry = policy;
        self
    }

    /// Sends one user message to `model`.
    pub async fn prompt(&self, model: &str, text: &str) -> Result<PromptResult, ClientError> {
        let resp = self
            .infer(pb::InferRequest {
                model: model.to_owned(),
                messages: vec![pb::ChatMessage {
                    role: "user".to_owned(),
                    content: text.to_owned(),
                }],
                ..Default::default()
            })
            .await?;
        Ok(PromptResult {
            content: resp.content,
            provider: resp.provider,
            tokens_in: resp.tokens_in,
            tokens_out: resp.tokens_out,
            cost_usd: resp.cost_usd,
        })
    }

    /// Routes one request.
    pub async fn infer(&self, request: pb::InferRequest) -> Result<pb::InferResponse, ClientError> {
        self.retrying(self.timeout, |mut client, req| async move {
            client.infer(req).await.map(tonic::Response::into_inner)
        }, &request)
        .await
    }

    /// Routes one request and streams the reply; the last chunk carries usage,
    /// cost and finish reason. Opening the stream is retried like a unary call.
    pub async fn infer_stream(
        &self,
        request: pb::InferRequest,
    ) -> Result<Streaming<pb::InferChunk>, ClientError> {
        self.retrying(
            self.stream_timeout,
            |mut client, req| async move {
                client
                    .infer_stream(req)
                    .await
                    .map(tonic::Response::into_inner)
            },
            &request,
        )
        .await
    }

    /// The providers and their models, in registration order.
    pub async fn list_providers(&self) -> Result<Vec<pb::ProviderInfo>, ClientError> {
        self.retrying(
            self.timeout,
            |mut client, req| async move {
                client
                    .list_providers(req)
                    .await
                    .map(|r| r.into_inner().providers)
            },
            &pb::ListProvidersRequest {},
        )
        .await
    }

    /// Runs `call` until it succeeds, fails with a code other than UNAVAILABLE,
    /// runs out of attempts, or runs out of time.
    async fn retrying<M, T, F, Fut>(
        &self,
        timeout: Duration,
        call: F,
        message: &M,
    ) -> Result<T, ClientError>
    where
        M: Clone,
        F: Fn(InferMuxServiceClient<Channel>, tonic::Request<M>) -> Fut,
        Fut: Future<Output = Result<T, tonic::Status>>,
    {
        let deadline = Instant::now() + timeout;
        let mut attempt = 1;
        loop {
            let mut req = tonic::Request::new(message.clone());
            let left = deadline.saturating_duration_since(Instant::now());
            let outcome = if left.is_zero() {
                Err(deadline_exceeded())
            } else {
                req.set_timeout(left);
                // The server enforces the deadline; this bounds a server
                // that does not answer at all.
                tokio::time::timeout(
                    left + Duration::from_millis(50),
                    call(self.inner.clone(), req),
                )
                .await
                .unwrap_or_else(|_| Err(deadline_exceeded()))
            };
            // tonic's channel enforces the same `grpc-timeout` locally and reports
            // its expiry as CANCELLED; past our deadline, that is DEADLINE_EXCEEDED.
            let outcome = outcome.map_err(|s| {
                if s.code() == Code::Cancelled && Instant::now() >= deadline {
                    deadline_exceeded()
                } else {
                    s
                }
            });
            match outcome {
                Ok(v) => return Ok(v),
                Err(s) if s.code() == Code::Unavailable && attempt < self.retry.max_attempts => {
                    let wait = self.retry.backoff(attempt);
                    let left = deadline.saturating_duration_since(Instant::now());
                    if left <= wait {
                        return Err(s.into());
                    }
                    tokio::time::sleep(wait).await;
                    attempt += 1;
                }
                Err(s) => return Err(s.into()),
            }
        }
    }
}

fn deadline_exceeded() -> tonic::Status {
    tonic::Status::deadline_exceeded("the call's deadline elapsed")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_from_100ms_to_1s() {
        let p = RetryPolicy {
            jitter: 0.0,
            ..RetryPolicy::default()
        };
        let waits: Vec<u128> = (1..=6).map(|a| p.backoff(a).as_millis()).collect();
        assert_eq!(waits, [100, 200, 400, 800, 1000, 1000]);
    }

    #[test]
    fn jitter_lengthens_but_stays_under_the_cap() {
        let p = RetryPolicy::default();
        for _ in 0..1000 {
            let w = p.backoff(1);
            assert!(
                w >= Duration::from_millis(100) && w <= Duration::from_millis(120),
                "{w:?}"
            );
            assert!(p.backoff(5) <= Duration::from_secs(1));
        }
    }

    #[test]
    fn error_codes() {
        assert_eq!(ClientError::Connect("x".into()).code(), Code::Unavailable);
        let e: ClientError = tonic::Status::not_found("no model").into();
        assert_eq!(e.code(), Code::NotFound);
        assert_eq!(e.to_string(), "NotFound: no model");
    }
}
