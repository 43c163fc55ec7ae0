//! One structured log line per RPC: method, gRPC code, latency, provider.
//! The layer also puts the one status tonic gets wrong right (see
//! [`too_large_is_resource_exhausted`]) so that the log shows what the client gets.
//!
//! The code of a successful or streaming RPC is only known from the trailers, so
//! the line is written when the response body ends (or is dropped, which means
//! the client went away: `CANCELLED`).

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Instant;

use http::{HeaderMap, Request, Response};
use http_body::{Body, Frame, SizeHint};
use tower::{Layer, Service};

#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct RpcLogLayer;

impl<S> Layer<S> for RpcLogLayer {
    type Service = RpcLog<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RpcLog { inner }
    }
}

#[derive(Debug, Clone)]
pub(crate) struct RpcLog<S> {
    inner: S,
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for RpcLog<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>> + Send,
    S::Future: Send + 'static,
    ResBody: Body + Unpin,
{
    type Response = Response<LoggedBody<ResBody>>;
    type Error = S::Error;
    type Future = BoxFuture<Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<ReqBody>) -> Self::Future {
        let mut entry = Entry {
            method: req.uri().path().to_owned(),
            started: Instant::now(),
            provider: None,
            code: None,
            done: false,
        };
        let fut = self.inner.call(req);
        Box::pin(async move {
            let mut resp = fut.await?;
            too_large_is_resource_exhausted(resp.headers_mut());
            entry.provider = resp
                .headers()
                .get("x-infermux-provider")
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned);
            // Trailers-only responses (every error of a unary call) carry the
            // status in the headers.
            entry.code = grpc_status(resp.headers());
            Ok(resp.map(|inner| LoggedBody { inner, entry }))
        })
    }
}

/// tonic answers OUT_OF_RANGE for a request over the message size limit; the
/// contract says RESOURCE_EXHAUSTED, as gRPC's reference implementations do.
fn too_large_is_resource_exhausted(headers: &mut HeaderMap) {
    let over_limit = headers.get("grpc-status").is_some_and(|v| v == "11")
        && headers
            .get("grpc-message")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|m| m.contains("message%20length%20too%20large"));
    if over_limit {
        headers.insert("grpc-status", http::HeaderValue::from_static("8"));
    }
}

fn grpc_status(headers: &HeaderMap) -> Option<i32> {
    headers.get("grpc-status")?.to_str().ok()?.parse().ok()
}

struct Entry {
    method: String,
    started: Instant,
    provider: Option<String>,
    code: Option<i32>,
    done: bool,
}

impl Entry {
    fn log(&mut self, code: i32) {
        if std::mem::replace(&mut self.done, true) {
            return;
        }
        let latency_ms = self.started.elapsed().as_secs_f64() * 1000.0;
        let provider = self.provider.as_deref().unwrap_or("");
        let code = code_name(code);
        if matches!(code, "INTERNAL" | "UNKNOWN" | "DATA_LOSS") {
            tracing::warn!(target: "infermux::rpc", method = %self.method, code, latency_ms, provider, "rpc");
        } else {
            tracing::info!(target: "infermux::rpc", method = %self.method, code, latency_ms, provider, "rpc");
        }
    }
}

/// A response body that logs the RPC when it ends.
pub(crate) struct LoggedBody<B> {
    inner: B,
    entry: Entry,
}

impl<B: Body + Unpin> Body for LoggedBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = &mut *self;
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(code) = frame.trailers_ref().and_then(grpc_status) {
                    this.entry.log(code);
                }
            }
            Poll::Ready(Some(Err(_))) => this.entry.log(13),
            Poll::Ready(None) => {
                let code = this.entry.code.unwrap_or(0);
                this.entry.log(code);
            }
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl<B> Drop for LoggedBody<B> {
    fn drop(&mut self) {
        // A trailers-only response is never polled to its end by some servers;
        // its code is known. Otherwise the client went away before the end.
        let code = self.entry.code.unwrap_or(1);
        self.entry.log(code);
    }
}

/// The canonical name of a gRPC status code.
pub(crate) fn code_name(code: i32) -> &'static str {
    match code {
        0 => "OK",
        1 => "CANCELLED",
        2 => "UNKNOWN",
        3 => "INVALID_ARGUMENT",
        4 => "DEADLINE_EXCEEDED",
        5 => "NOT_FOUND",
        6 => "ALREADY_EXISTS",
        7 => "PERMISSION_DENIED",
        8 => "RESOURCE_EXHAUSTED",
        9 => "FAILED_PRECONDITION",
        10 => "ABORTED",
        11 => "OUT_OF_RANGE",
        12 => "UNIMPLEMENTED",
        13 => "INTERNAL",
        14 => "UNAVAILABLE",
        15 => "DATA_LOSS",
        16 => "UNAUTHENTICATED",
        _ => "UNKNOWN",
    }
}
