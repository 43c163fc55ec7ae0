//! Request extractors whose rejections are the contract's JSON errors.

use axum::body::Body;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::{header, request::Parts};
use bytes::{Bytes, BytesMut};
use http_body_util::BodyExt;
use std::sync::Arc;
use std::time::Duration;

use infermux::{Error, ErrorKind, MAX_MESSAGE_SIZE, RequestContext, TraceContext};

use crate::AppState;
use crate::error::ApiError;

/// How much of an oversized body is read and thrown away before answering 413,
/// so that the client sees the answer rather than a reset. Past this the
/// connection is simply closed.
const DRAIN_LIMIT: usize = 4 * MAX_MESSAGE_SIZE;

/// The raw bytes of a JSON request body: the content type checked and the size
/// limited to [`MAX_MESSAGE_SIZE`]. Decoding is left to the handler, so that it
/// can decode into the type (and with the error paths) it needs.
#[derive(Debug)]
pub struct JsonBytes(pub Bytes);

impl<S: Send + Sync> FromRequest<S> for JsonBytes {
    type Rejection = ApiError;

    async fn from_request(req: Request, _state: &S) -> Result<Self, Self::Rejection> {
        if let Err(e) = check_content_type(
            req.headers()
                .get(header::CONTENT_TYPE)
                .map(axum::http::HeaderValue::as_bytes),
        ) {
            // Read first, as the connection front does: the connection then
            // serves the next request.
            drain(req.into_body()).await;
            return Err(e);
        }
        let declared = req
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        let body = read_limited(req.into_body(), declared).await?;
        Ok(JsonBytes(body))
    }
}

/// Refuses a `Content-Type` that is not JSON, or none (SPEC §11).
pub(crate) fn check_content_type(value: Option<&[u8]>) -> Result<(), ApiError> {
    let Some(value) = value else {
        return Err(ApiError(Error::new(
            ErrorKind::UnsupportedMediaType,
            "Content-Type must be application/json, and the request has none",
        )));
    };
    if value.eq_ignore_ascii_case(b"application/json") {
        return Ok(());
    }
    let mime = std::str::from_utf8(value)
        .unwrap_or("")
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    if mime == "application/json" || (mime.starts_with("application/") && mime.ends_with("+json")) {
        return Ok(());
    }
    Err(ApiError(Error::new(
        ErrorKind::UnsupportedMediaType,
        format!(
            "Content-Type must be application/json, got \"{}\"",
            infermux::validate::truncate(&mime, 64)
        ),
    )))
}

fn too_large(size: Option<u64>) -> ApiError {
    let msg = match size {
        Some(n) => format!("request body is {n} bytes; the limit is {MAX_MESSAGE_SIZE}"),
        None => format!("request body exceeds the limit of {MAX_MESSAGE_SIZE} bytes"),
    };
    ApiError(Error::new(ErrorKind::PayloadTooLarge, msg))
}

async fn read_limited(mut body: Body, declared: Option<u64>) -> Result<Bytes, ApiError> {
    let limit = MAX_MESSAGE_SIZE as u64;
    if declared.is_some_and(|n| n > limit) {
        drain(body).await;
        return Err(too_large(declared));
    }
    let mut first: Option<Bytes> = None;
    let mut rest: Option<BytesMut> = None;
    let mut total = 0usize;
    while let Some(frame) = body.frame().await {
        let frame = frame
            .map_err(|e| ApiError(Error::invalid(format!("cannot read the request body: {e}"))))?;
        let Ok(data) = frame.into_data() else {
            continue;
        };
        total += data.len();
        if total > MAX_MESSAGE_SIZE {
            drain(body).await;
            return Err(too_large(None));
        }
        match (&mut first, &mut rest) {
            (None, _) => first = Some(data),
            (Some(f), None) => {
                let mut buf = BytesMut::with_capacity(f.len() + data.len());
                buf.extend_from_slice(f);
                buf.extend_from_slice(&data);
                rest = Some(buf);
            }
            (Some(_), Some(buf)) => buf.extend_from_slice(&data),
        }
    }
    Ok(match (first, rest) {
        (_, Some(buf)) => buf.freeze(),
        (Some(f), None) => f,
        (None, None) => Bytes::new(),
    })
}

/// Reads and discards what is left of a body, up to [`DRAIN_LIMIT`].
async fn drain(mut body: Body) {
    let mut seen = 0usize;
    while let Some(Ok(frame)) = body.frame().await {
        if let Ok(data) = frame.into_data() {
            seen += data.len();
            if seen > DRAIN_LIMIT {
                break;
            }
        }
    }
}

/// What the caller's headers say about its call: its W3C trace context
/// (`traceparent`, if valid) and its deadline (`X-Infermux-Timeout`). A bad
/// deadline is kept for the handler to answer once the body is read (as the
/// connection front answers it), so the connection serves the next request.
#[derive(Debug)]
pub struct Caller(pub Result<RequestContext, ApiError>);

impl FromRequestParts<Arc<AppState>> for Caller {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &Arc<AppState>,
    ) -> Result<Self, Self::Rejection> {
        let timeout = match parts
            .headers
            .get(TIMEOUT_HEADER)
            .map(|v| timeout(v.as_bytes()))
            .transpose()
        {
            Ok(t) => t,
            Err(e) => return Ok(Caller(Err(e))),
        };
        let mut ctx = RequestContext {
            trace: parts
                .headers
                .get("traceparent")
                .and_then(|v| v.to_str().ok())
                .and_then(TraceContext::from_traceparent),
            timeout,
            ..RequestContext::default()
        };
        let header = |name: &str| parts.headers.get(name).map(|v| v.as_bytes());
        if let Err(e) = identify(
            state,
            &mut ctx,
            header("authorization"),
            header("x-api-key"),
            header(CALLER_HEADER),
        ) {
            return Ok(Caller(Err(e)));
        }
        Ok(Caller(Ok(ctx)))
    }
}

/// The header a caller names itself with, for attribution.
pub(crate) const CALLER_HEADER: &str = "x-infermux-caller";

/// The secret a caller presents: `Authorization: Bearer <key>` (what the
/// OpenAI SDKs send) or else `x-api-key: <key>` (the Anthropic SDKs).
pub(crate) fn presented_key<'a>(
    authorization: Option<&'a [u8]>,
    api_key: Option<&'a [u8]>,
) -> Option<&'a str> {
    let bearer = authorization.and_then(|v| {
        let v = v.trim_ascii();
        (v.len() > 7 && v[..7].eq_ignore_ascii_case(b"bearer ")).then(|| v[7..].trim_ascii())
    });
    bearer
        .or(api_key.map(<[u8]>::trim_ascii))
        .and_then(|v| std::str::from_utf8(v).ok())
        .filter(|v| !v.is_empty())
}

/// Checks the caller's key (when the router has callers) and notes who it
/// is: the key and the `X-Infermux-Caller` name go into `ctx`. A missing,
/// unknown, expired or revoked key is 401 where the contract says so.
pub(crate) fn identify(
    state: &AppState,
    ctx: &mut RequestContext,
    authorization: Option<&[u8]>,
    api_key: Option<&[u8]>,
    caller: Option<&[u8]>,
) -> Result<(), ApiError> {
    let Some(callers) = state.router.callers() else {
        return Ok(());
    };
    ctx.key = callers.authenticate(presented_key(authorization, api_key))?;
    ctx.caller = caller
        .and_then(|c| std::str::from_utf8(c.trim_ascii()).ok())
        .filter(|c| !c.is_empty())
        .map(|c| Arc::from(infermux::validate::truncate(c, 256)));
    Ok(())
}

/// The header a caller sets its deadline with.
pub(crate) const TIMEOUT_HEADER: &str = "x-infermux-timeout";

/// An `X-Infermux-Timeout` value: a duration (`30s`, `1500ms`, `2m`) or a
/// bare number of seconds, more than zero.
pub(crate) fn timeout(value: &[u8]) -> Result<Duration, ApiError> {
    let bad = |why: &str| {
        ApiError(Error::invalid(format!(
            "X-Infermux-Timeout: {why} (give a duration such as 30s or 1500ms)"
        )))
    };
    let text = std::str::from_utf8(value).map_err(|_| bad("not text"))?;
    match infermux::config::parse_duration(text.trim()) {
        Ok(d) if !d.is_zero() => Ok(d),
        Ok(_) => Err(bad("must be more than 0")),
        Err(_) => Err(bad(&format!(
            "\"{}\" is not a duration",
            infermux::validate::truncate(text, 32)
        ))),
    }
}
