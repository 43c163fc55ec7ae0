//! The one error type of the core, and the one table that says what each kind of
//! error means at every edge: HTTP status, gRPC code, public `code` string, whether
//! the next provider may be tried, and whether it counts against a provider's health.
//!
//! Edges render [`Error`] through [`Error::disposition`] and nothing else.

use std::borrow::Cow;
use std::fmt;

/// gRPC status codes, by their wire numbers, so the core needs no gRPC library.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(i32)]
pub enum GrpcCode {
    Ok = 0,
    Cancelled = 1,
    Unknown = 2,
    InvalidArgument = 3,
    DeadlineExceeded = 4,
    NotFound = 5,
    PermissionDenied = 7,
    ResourceExhausted = 8,
    FailedPrecondition = 9,
    Unimplemented = 12,
    Internal = 13,
    Unavailable = 14,
    Unauthenticated = 16,
}

/// What went wrong, without the message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    /// The request breaks a validation rule.
    InvalidRequest,
    /// No provider serves the requested model (or the explicit provider is unknown).
    ModelNotFound,
    /// The provider failed upstream in a way worth retrying elsewhere
    /// (5xx, connect error, reset, garbage body).
    Upstream,
    /// The provider rejected the request (upstream 4xx other than 429).
    UpstreamRejected { status: u16 },
    /// Every eligible provider is unhealthy or circuit-open.
    NoHealthyProviders,
    /// The caller's deadline or the upstream timeout elapsed.
    Timeout,
    /// The caller went away.
    Cancelled,
    /// A rate limit (ours or the upstream's 429) was hit.
    RateLimited,
    /// A spending budget is exhausted.
    BudgetExceeded,
    /// Authentication is missing or wrong.
    Unauthorized,
    /// The caller's key may not use the model it asked for.
    ModelNotAllowed,
    /// A bug, or a panic caught at the router.
    Internal,
    /// The request body or message is larger than the limit.
    PayloadTooLarge,
    /// A JSON endpoint received another content type.
    UnsupportedMediaType,
    /// No such route (HTTP only).
    RouteNotFound,
    /// The server is at its open-connection limit (HTTP only).
    Overloaded,
    /// The route exists but not for this method (HTTP only).
    MethodNotAllowed,
}

/// How one [`ErrorKind`] is rendered and handled. See [`ErrorKind::disposition`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Disposition {
    pub http_status: u16,
    pub grpc_code: GrpcCode,
    /// The `code` field of the HTTP error body.
    pub code: &'static str,
    /// Fallback may try the next eligible provider.
    pub retryable: bool,
    /// Counts as a failure of the provider (circuit breaker, error rate).
    pub provider_failure: bool,
}

impl ErrorKind {
    /// The error table. Every edge takes its status, code and policy from here.
    pub fn disposition(self) -> Disposition {
        use GrpcCode as G;
        let (http_status, grpc_code, code, retryable, provider_failure) = match self {
            ErrorKind::InvalidRequest => (400, G::InvalidArgument, "invalid_request", false, false),
            ErrorKind::ModelNotFound => (404, G::NotFound, "model_not_found", false, false),
            ErrorKind::Upstream => (502, G::Unavailable, "upstream_error", true, true),
            ErrorKind::UpstreamRejected { status } => {
                let grpc = match status {
                    400 | 422 => G::InvalidArgument,
                    401 => G::Unauthenticated,
                    403 => G::PermissionDenied,
                    404 => G::NotFound,
                    _ => G::FailedPrecondition,
                };
                (status, grpc, "upstream_rejected", false, false)
            }
            ErrorKind::NoHealthyProviders => {
                (503, G::Unavailable, "no_healthy_providers", false, false)
            }
            ErrorKind::Timeout => (504, G::DeadlineExceeded, "upstream_timeout", true, true),
            // 499 is never written to a client (the connection is gone); it only
            // labels logs and metrics.
            ErrorKind::Cancelled => (499, G::Cancelled, "cancelled", false, false),
            ErrorKind::RateLimited => (429, G::ResourceExhausted, "rate_limit", true, false),
            ErrorKind::BudgetExceeded => {
                (429, G::ResourceExhausted, "budget_exceeded", false, false)
            }
            ErrorKind::Unauthorized => (401, G::Unauthenticated, "unauthorized", false, false),
            ErrorKind::ModelNotAllowed => {
                (403, G::PermissionDenied, "model_not_allowed", false, false)
            }
            ErrorKind::Internal => (500, G::Internal, "internal_error", false, true),
            ErrorKind::PayloadTooLarge => {
                (413, G::ResourceExhausted, "payload_too_large", false, false)
            }
            ErrorKind::UnsupportedMediaType => (
                415,
                G::InvalidArgument,
                "unsupported_media_type",
                false,
                false,
            ),
            ErrorKind::RouteNotFound => (404, G::Unimplemented, "not_found", false, false),
            ErrorKind::Overloaded => (503, G::Unavailable, "overloaded", false, false),
            ErrorKind::MethodNotAllowed => {
                (405, G::Unimplemented, "method_not_allowed", false, false)
            }
        };
        Disposition {
            http_status,
            grpc_code,
            code,
            retryable,
            provider_failure,
        }
    }

    /// A short, bounded label for logs and metrics.
    pub fn label(self) -> &'static str {
        self.disposition().code
    }
}

/// An error with a public message: safe to show to callers (names the offending
/// field or model, never a secret).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Error {
    kind: ErrorKind,
    message: Cow<'static, str>,
    /// Seconds after which a refused caller may try again (`Retry-After`).
    retry_after: Option<u32>,
}

impl Error {
    pub fn new(kind: ErrorKind, message: impl Into<Cow<'static, str>>) -> Self {
        Error {
            kind,
            message: message.into(),
            retry_after: None,
        }
    }

    /// The same error, telling the caller to retry after `secs` seconds.
    pub fn with_retry_after(mut self, secs: u32) -> Self {
        self.retry_after = Some(secs);
        self
    }

    /// Seconds after which the caller may retry, when the error says.
    pub fn retry_after(&self) -> Option<u32> {
        self.retry_after
    }

    pub fn invalid(message: impl Into<Cow<'static, str>>) -> Self {
        Self::new(ErrorKind::InvalidRequest, message)
    }

    pub fn model_not_found(model: &str) -> Self {
        Self::new(
            ErrorKind::ModelNotFound,
            format!(
                "no provider serves model \"{model}\" (GET /v1/models lists the models and aliases this router serves)"
            ),
        )
    }

    pub fn internal(message: impl Into<Cow<'static, str>>) -> Self {
        Self::new(ErrorKind::Internal, message)
    }

    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    pub fn message(&self) -> &str {
        &self.message
    }

    pub fn disposition(&self) -> Disposition {
        self.kind.disposition()
    }

    /// The same error with `context: ` put before its message.
    pub fn context(self, context: &str) -> Self {
        Error {
            kind: self.kind,
            message: format!("{context}: {}", self.message).into(),
            retry_after: self.retry_after,
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Error {}

/// What a [`crate::Provider`] reports when a call fails. The router turns it into an
/// [`Error`] (see `From`), which decides fallback and rendering.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProviderError {
    /// Retryable upstream failure: 5xx, connect error, reset, unreadable body.
    #[error("{0}")]
    Unavailable(String),
    /// The upstream refused the request with a 4xx other than 429; not retried.
    #[error("upstream rejected the request ({status}): {message}")]
    Rejected { status: u16, message: String },
    /// The upstream answered 429.
    #[error("upstream rate limit: {0}")]
    RateLimited(String),
    /// The upstream did not answer in time.
    #[error("upstream timeout: {0}")]
    Timeout(String),
    /// The provider cannot take this request as it is.
    #[error("{0}")]
    InvalidRequest(String),
    /// A bug in the provider.
    #[error("{0}")]
    Internal(String),
}

impl From<ProviderError> for Error {
    fn from(e: ProviderError) -> Self {
        let kind = match &e {
            ProviderError::Unavailable(_) => ErrorKind::Upstream,
            ProviderError::Rejected { status, .. } => {
                ErrorKind::UpstreamRejected { status: *status }
            }
            ProviderError::RateLimited(_) => ErrorKind::RateLimited,
            ProviderError::Timeout(_) => ErrorKind::Timeout,
            ProviderError::InvalidRequest(_) => ErrorKind::InvalidRequest,
            ProviderError::Internal(_) => ErrorKind::Internal,
        };
        // Upstream text reaches callers, spans and logs only through here:
        // no provider secret it quotes goes further.
        Error::new(kind, crate::redact::redact(&e.to_string()).into_owned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_matches_the_contract() {
        let cases = [
            (
                ErrorKind::InvalidRequest,
                400,
                GrpcCode::InvalidArgument,
                "invalid_request",
            ),
            (
                ErrorKind::ModelNotFound,
                404,
                GrpcCode::NotFound,
                "model_not_found",
            ),
            (
                ErrorKind::Upstream,
                502,
                GrpcCode::Unavailable,
                "upstream_error",
            ),
            (
                ErrorKind::NoHealthyProviders,
                503,
                GrpcCode::Unavailable,
                "no_healthy_providers",
            ),
            (
                ErrorKind::Timeout,
                504,
                GrpcCode::DeadlineExceeded,
                "upstream_timeout",
            ),
            (
                ErrorKind::RateLimited,
                429,
                GrpcCode::ResourceExhausted,
                "rate_limit",
            ),
            (
                ErrorKind::BudgetExceeded,
                429,
                GrpcCode::ResourceExhausted,
                "budget_exceeded",
            ),
            (
                ErrorKind::Unauthorized,
                401,
                GrpcCode::Unauthenticated,
                "unauthorized",
            ),
            (
                ErrorKind::ModelNotAllowed,
                403,
                GrpcCode::PermissionDenied,
                "model_not_allowed",
            ),
            (
                ErrorKind::Internal,
                500,
                GrpcCode::Internal,
                "internal_error",
            ),
        ];
        for (kind, status, grpc, code) in cases {
            let d = kind.disposition();
            assert_eq!(
                (d.http_status, d.grpc_code, d.code),
                (status, grpc, code),
                "{kind:?}"
            );
        }
    }

    #[test]
    fn upstream_rejections_keep_status_and_map_grpc_codes() {
        let cases = [
            (400, GrpcCode::InvalidArgument),
            (422, GrpcCode::InvalidArgument),
            (401, GrpcCode::Unauthenticated),
            (403, GrpcCode::PermissionDenied),
            (404, GrpcCode::NotFound),
            (409, GrpcCode::FailedPrecondition),
        ];
        for (status, grpc) in cases {
            let d = ErrorKind::UpstreamRejected { status }.disposition();
            assert_eq!(d.http_status, status);
            assert_eq!(d.grpc_code, grpc);
            assert_eq!(d.code, "upstream_rejected");
            assert!(!d.retryable);
        }
    }

    #[test]
    fn provider_errors_map_to_kinds() {
        let e: Error = ProviderError::Rejected {
            status: 401,
            message: "bad key".into(),
        }
        .into();
        assert_eq!(e.kind(), ErrorKind::UpstreamRejected { status: 401 });
        assert!(e.message().contains("bad key"));
        let e: Error = ProviderError::Unavailable("reset".into()).into();
        assert!(e.disposition().retryable);
        let e: Error = ProviderError::RateLimited("slow down".into()).into();
        assert_eq!(e.disposition().http_status, 429);
        assert!(e.disposition().retryable);
        assert!(!e.disposition().provider_failure);
    }
}
