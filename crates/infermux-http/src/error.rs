//! Renders [`infermux::Error`] as the contract's HTTP error: the status from the
//! error table and `{"error": {"message", "type": "infermux_error", "code"}}`.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use infermux::{Error, ErrorKind};
use serde::Serialize;

/// An [`Error`] on its way to an HTTP client.
#[derive(Debug)]
pub struct ApiError(pub Error);

impl From<Error> for ApiError {
    fn from(e: Error) -> Self {
        ApiError(e)
    }
}

#[derive(Serialize)]
struct Body<'a> {
    error: Detail<'a>,
}

#[derive(Serialize)]
struct Detail<'a> {
    message: &'a str,
    #[serde(rename = "type")]
    kind: &'static str,
    code: &'static str,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let bytes = body(&self.0);
        respond(&self.0, bytes)
    }
}

/// The response for `e` with `body` (its rendering in the caller's dialect):
/// the status from the error table, `Retry-After` when the error has one,
/// and the one log line every failed request gets (a warning for server-side
/// failures; a caller's mistake only at debug).
pub(crate) fn respond(e: &Error, body: Vec<u8>) -> Response {
    let d = e.disposition();
    if d.http_status >= 500 {
        tracing::warn!(code = d.code, status = d.http_status, error = %e, "request failed");
    } else {
        tracing::debug!(code = d.code, status = d.http_status, error = %e, "request rejected");
    }
    let status = StatusCode::from_u16(d.http_status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut resp = (status, body).into_response();
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    if let Some(secs) = e.retry_after() {
        resp.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(secs));
    }
    resp
}

/// The contract's JSON error body for `e`.
pub(crate) fn body(e: &Error) -> Vec<u8> {
    let body = Body {
        error: Detail {
            message: e.message(),
            kind: "infermux_error",
            code: e.disposition().code,
        },
    };
    serde_json::to_vec(&body).unwrap_or_else(|_| {
        br#"{"error":{"message":"internal error","type":"infermux_error","code":"internal_error"}}"#.to_vec()
    })
}

/// What a panicking handler answers (the process and other requests live on).
pub(crate) fn panic_response(_panic: Box<dyn std::any::Any + Send + 'static>) -> Response {
    tracing::error!("a request handler panicked; answering internal_error");
    ApiError(Error::new(ErrorKind::Internal, "internal error")).into_response()
}
