//! The handlers: extract, delegate to the router, render.

use std::sync::Arc;

use axum::extract::State;
use axum::http::{HeaderMap, HeaderName, HeaderValue, header};
use axum::response::{IntoResponse, Response};
use infermux::envelope::{self, Envelope, MessageType};
use infermux::router::{RequestContext, Routed};
use infermux::{Error, ErrorKind, InferRequest, TraceContext, json};
use serde::Serialize;

use crate::AppState;
use crate::error::ApiError;
use crate::extract::{JsonBytes, Traceparent};

type Shared = State<Arc<AppState>>;

/// `POST /infer`: a bare `InferRequest` in, a bare `InferResponse` out.
pub async fn infer(
    State(state): Shared,
    Traceparent(trace): Traceparent,
    JsonBytes(body): JsonBytes,
) -> Result<Response, ApiError> {
    infer_body(&state, trace, body).await
}

/// `POST /infer` once its body is read (the connection front calls this
/// directly).
pub(crate) async fn infer_body(
    state: &AppState,
    trace: Option<TraceContext>,
    body: bytes::Bytes,
) -> Result<Response, ApiError> {
    let req: InferRequest = json::from_slice(&body)?;
    let routed = state.router.call(&req, &ctx(trace)).await?;
    let body = serde_json::to_vec(&routed.response)
        .map_err(|e| Error::internal(format!("cannot encode the response: {e}")))?;
    Ok(json_response(body, &routed))
}

/// `POST /mist`: an `infer.request` envelope in, an `infer.response` envelope out,
/// continuing the caller's trace (from `traceparent`, or the payload's
/// `meta.traceparent`).
pub async fn mist(
    State(state): Shared,
    Traceparent(trace): Traceparent,
    JsonBytes(body): JsonBytes,
) -> Result<Response, ApiError> {
    mist_body(&state, trace, body).await
}

/// `POST /mist` once its body is read (the connection front calls this
/// directly).
pub(crate) async fn mist_body(
    state: &AppState,
    trace: Option<TraceContext>,
    body: bytes::Bytes,
) -> Result<Response, ApiError> {
    let message = Envelope::decode(&body, MessageType::InferRequest)?;
    let req: InferRequest = message.payload_as()?;
    let trace = trace.or_else(|| {
        req.meta
            .get("traceparent")
            .and_then(|v| TraceContext::from_traceparent(v))
    });
    let routed = state.router.call(&req, &ctx(trace)).await?;
    let body = envelope::encode("infermux", MessageType::InferResponse, &routed.response)?;
    Ok(json_response(body, &routed))
}

fn ctx(trace: Option<TraceContext>) -> RequestContext {
    RequestContext {
        trace,
        timeout: None,
    }
}

static PROVIDER: HeaderName = HeaderName::from_static("x-infermux-provider");
static MODEL: HeaderName = HeaderName::from_static("x-infermux-model");
static COST: HeaderName = HeaderName::from_static("x-infermux-cost");
static LATENCY: HeaderName = HeaderName::from_static("x-infermux-latency-ms");
static PROMPT_TOKENS: HeaderName = HeaderName::from_static("x-infermux-prompt-tokens");
static COMPLETION_TOKENS: HeaderName = HeaderName::from_static("x-infermux-completion-tokens");
static TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
static USAGE_ESTIMATED: HeaderName = HeaderName::from_static("x-infermux-usage-estimated");
static STRATEGY: HeaderName = HeaderName::from_static("x-infermux-strategy");
static ROUTE_GROUP: HeaderName = HeaderName::from_static("x-infermux-route-group");

/// A 200 JSON response with the `X-Infermux-*` headers of a routed call,
/// written straight into the response's own header map.
pub(crate) fn json_response(body: Vec<u8>, routed: &Routed) -> Response {
    let mut resp = Response::new(axum::body::Body::from(body));
    let h = resp.headers_mut();
    h.reserve(12);
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    routed_headers(h, routed);
    resp
}

/// `X-Infermux-Strategy` (how the provider was chosen) and, for a model in a
/// route group, `X-Infermux-Route-Group`.
pub(crate) fn strategy_headers(
    h: &mut HeaderMap,
    strategy: infermux::config::Strategy,
    group: Option<&str>,
) {
    h.insert(
        STRATEGY.clone(),
        HeaderValue::from_static(strategy.as_str()),
    );
    if let Some(v) = group.and_then(|g| HeaderValue::from_str(g).ok()) {
        h.insert(ROUTE_GROUP.clone(), v);
    }
}

/// The `X-Infermux-Provider` and `X-Infermux-Model` headers.
pub(crate) fn route_headers(h: &mut HeaderMap, provider: &str, upstream_model: &str) {
    if let Ok(v) = HeaderValue::from_str(provider) {
        h.insert(PROVIDER.clone(), v);
    }
    if let Ok(v) = HeaderValue::from_str(upstream_model) {
        h.insert(MODEL.clone(), v);
    }
}

/// Every `X-Infermux-*` header of a completed call, and its `traceparent`.
pub(crate) fn routed_headers(h: &mut HeaderMap, routed: &Routed) {
    let r = &routed.response;
    route_headers(h, &r.provider, &routed.upstream_model);
    strategy_headers(h, routed.strategy, routed.route_group.as_deref());
    if let Ok(v) = HeaderValue::from_str(&r.cost_usd.to_string()) {
        h.insert(COST.clone(), v);
    }
    h.insert(LATENCY.clone(), HeaderValue::from(r.latency_ms));
    h.insert(PROMPT_TOKENS.clone(), HeaderValue::from(r.tokens_in));
    h.insert(COMPLETION_TOKENS.clone(), HeaderValue::from(r.tokens_out));
    if let Ok(v) = HeaderValue::from_str(&routed.trace.traceparent_for(routed.span_id)) {
        h.insert(TRACEPARENT.clone(), v);
    }
    if r.usage_estimated {
        h.insert(USAGE_ESTIMATED.clone(), HeaderValue::from_static("true"));
    }
}

#[derive(Serialize)]
struct ProviderList {
    providers: Vec<ProviderInfo>,
}

#[derive(Serialize)]
struct ProviderInfo {
    name: String,
    models: Vec<String>,
}

/// `GET /providers`: every provider with its models, in registration order.
pub async fn providers(State(state): Shared) -> Response {
    let providers = state
        .router
        .registry()
        .entries()
        .iter()
        .map(|e| ProviderInfo {
            name: e.name.to_string(),
            models: e.routable_models(),
        })
        .collect();
    axum::Json(ProviderList { providers }).into_response()
}

/// `GET /_infermux/health`.
pub async fn health() -> Response {
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        r#"{"status":"ok"}"#,
    )
        .into_response()
}

pub async fn not_found(uri: axum::http::Uri) -> ApiError {
    ApiError(Error::new(
        ErrorKind::RouteNotFound,
        format!(
            "no route for {}",
            infermux::validate::truncate(uri.path(), 128)
        ),
    ))
}

pub async fn method_not_allowed(method: axum::http::Method, uri: axum::http::Uri) -> ApiError {
    ApiError(Error::new(
        ErrorKind::MethodNotAllowed,
        format!(
            "{method} is not allowed on {}",
            infermux::validate::truncate(uri.path(), 128)
        ),
    ))
}
