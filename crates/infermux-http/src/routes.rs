//! The handlers: extract, delegate to the router, render.

use std::fmt::Write as _;
use std::sync::Arc;

use axum::extract::State;
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use infermux::envelope::{self, Envelope, MessageType};
use infermux::router::{RequestContext, Routed};
use infermux::{Error, ErrorKind, InferRequest, TraceContext, json};
use serde::Serialize;

use crate::AppState;
use crate::error::ApiError;
use crate::extract::{Caller, JsonBytes};

type Shared = State<Arc<AppState>>;

/// `POST /infer`: a bare `InferRequest` in, a bare `InferResponse` out.
pub async fn infer(
    State(state): Shared,
    Caller(ctx): Caller,
    JsonBytes(body): JsonBytes,
) -> Result<Answer, ApiError> {
    infer_body(&state, ctx?, body).await
}

/// `POST /infer` once its body is read (the connection front calls this
/// directly).
pub(crate) async fn infer_body(
    state: &AppState,
    ctx: RequestContext,
    body: bytes::Bytes,
) -> Result<Answer, ApiError> {
    let req: InferRequest = json::from_slice(&body)?;
    let ctx = RequestContext {
        dialect: "mist",
        ..ctx
    };
    let routed = state.router.call(&req, &ctx).await?;
    let body = json::to_vec(&routed.response)
        .map_err(|e| Error::internal(format!("cannot encode the response: {e}")))?;
    Ok(json_response(body, routed))
}

/// `POST /mist`: an `infer.request` envelope in, an `infer.response` envelope out,
/// continuing the caller's trace (from `traceparent`, or the payload's
/// `meta.traceparent`).
pub async fn mist(
    State(state): Shared,
    Caller(ctx): Caller,
    JsonBytes(body): JsonBytes,
) -> Result<Answer, ApiError> {
    mist_body(&state, ctx?, body).await
}

/// `POST /mist` once its body is read (the connection front calls this
/// directly).
pub(crate) async fn mist_body(
    state: &AppState,
    ctx: RequestContext,
    body: bytes::Bytes,
) -> Result<Answer, ApiError> {
    let message = Envelope::decode(&body, MessageType::InferRequest)?;
    let req: InferRequest = message.payload_as()?;
    let ctx = RequestContext {
        trace: ctx.trace.or_else(|| {
            req.meta
                .get("traceparent")
                .and_then(|v| TraceContext::from_traceparent(v))
        }),
        dialect: "mist",
        ..ctx
    };
    let routed = state.router.call(&req, &ctx).await?;
    let body = envelope::encode("infermux", MessageType::InferResponse, &routed.response)?;
    Ok(json_response(body, routed))
}

static PROVIDER: HeaderName = HeaderName::from_static("x-infermux-provider");
static MODEL: HeaderName = HeaderName::from_static("x-infermux-model");
static COST: HeaderName = HeaderName::from_static("x-infermux-cost");
static LATENCY: HeaderName = HeaderName::from_static("x-infermux-latency-ms");
static PROMPT_TOKENS: HeaderName = HeaderName::from_static("x-infermux-prompt-tokens");
static COMPLETION_TOKENS: HeaderName = HeaderName::from_static("x-infermux-completion-tokens");
static TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
pub(crate) static USAGE_ESTIMATED: HeaderName =
    HeaderName::from_static("x-infermux-usage-estimated");
static STRATEGY: HeaderName = HeaderName::from_static("x-infermux-strategy");
static ROUTE_GROUP: HeaderName = HeaderName::from_static("x-infermux-route-group");
static CACHED_TOKENS: HeaderName = HeaderName::from_static("x-infermux-cached-tokens");
static REASONING_TOKENS: HeaderName = HeaderName::from_static("x-infermux-reasoning-tokens");
static BUDGET_REMAINING: HeaderName = HeaderName::from_static("x-infermux-budget-remaining");
pub(crate) static UPSTREAM_REQUEST_ID: HeaderName =
    HeaderName::from_static("x-infermux-upstream-request-id");

/// A budget's remaining dollars as a header value (as Rust writes an `f64`).
fn budget_text(left: f64) -> String {
    format!("{}", left.max(0.0))
}

/// `X-Infermux-Budget-Remaining`, when a budget applies (the answers that
/// are not [`RoutedJson`]: streams, embeddings).
pub(crate) fn budget_header(headers: &mut HeaderMap, left: Option<f64>) {
    if let Some(left) = left
        && let Ok(v) = HeaderValue::from_str(&budget_text(left))
    {
        headers.insert(BUDGET_REMAINING.clone(), v);
    }
}

/// The headers of a routed stream's 200 answer, in every dialect: the
/// event-stream content type and the call's `X-Infermux-*` headers.
pub(crate) fn stream_headers(routed: &infermux::router::RoutedStream) -> HeaderMap {
    let mut headers = HeaderMap::new();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    route_headers(&mut headers, &routed.provider, &routed.upstream_model);
    budget_header(&mut headers, routed.budget_remaining);
    strategy_headers(&mut headers, routed.strategy, routed.route_group.as_deref());
    if let Some(v) = routed
        .upstream_request_id()
        .and_then(|id| HeaderValue::from_str(id).ok())
    {
        headers.insert(UPSTREAM_REQUEST_ID.clone(), v);
    }
    headers
}

/// A routed call's 200 JSON answer with its `X-Infermux-*` headers, before
/// it becomes a response: the connection front writes it straight to the
/// socket; axum gets it as a [`Response`]. Both write the headers
/// [`RoutedJson::headers`] lists, so they cannot differ.
pub(crate) struct RoutedJson {
    pub body: Vec<u8>,
    pub routed: Routed,
}

impl RoutedJson {
    /// Every `X-Infermux-*` header of the call, and its `traceparent`, as
    /// names and values (values that are not valid in a header are left
    /// out).
    pub(crate) fn headers(&self, mut each: impl FnMut(&HeaderName, &[u8])) {
        let routed = &self.routed;
        let r = &routed.response;
        // Names from the config may hold what a header cannot; numbers and
        // hex ids always fit.
        let mut text = |name: &HeaderName, value: &str| {
            if is_header_value(value.as_bytes()) {
                each(name, value.as_bytes());
            }
        };
        text(&PROVIDER, &r.provider);
        text(&MODEL, &routed.upstream_model);
        text(&STRATEGY, routed.strategy.as_str());
        if let Some(group) = &routed.route_group {
            text(&ROUTE_GROUP, group);
        }
        // As Rust writes an `f64`: the shortest text that reads back the same.
        // No price configured, the common case for self-hosted models, skips
        // the float formatter.
        if r.cost_usd == 0.0 {
            text(&COST, "0");
        } else {
            let mut cost = String::with_capacity(24);
            let _ = write!(cost, "{}", r.cost_usd);
            text(&COST, &cost);
        }
        if r.usage_estimated {
            text(&USAGE_ESTIMATED, "true");
        }
        let mut digits = [0u8; 20];
        each(&LATENCY, decimal(r.latency_ms, &mut digits));
        each(&PROMPT_TOKENS, decimal(r.tokens_in, &mut digits));
        each(&COMPLETION_TOKENS, decimal(r.tokens_out, &mut digits));
        if r.tokens_cached > 0 {
            each(&CACHED_TOKENS, decimal(r.tokens_cached, &mut digits));
        }
        if r.tokens_reasoning > 0 {
            each(&REASONING_TOKENS, decimal(r.tokens_reasoning, &mut digits));
        }
        if let Some(id) = &r.upstream_request_id
            && is_header_value(id.as_bytes())
        {
            each(&UPSTREAM_REQUEST_ID, id.as_bytes());
        }
        if let Some(left) = routed.budget_remaining {
            each(&BUDGET_REMAINING, budget_text(left).as_bytes());
        }
        each(
            &TRACEPARENT,
            &routed.trace.traceparent_bytes(routed.span_id),
        );
    }
}

impl IntoResponse for RoutedJson {
    fn into_response(self) -> Response {
        let mut headers = HeaderMap::with_capacity(12);
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        self.headers(|name, value| {
            if let Ok(v) = HeaderValue::from_bytes(value) {
                headers.insert(name.clone(), v);
            }
        });
        let mut resp = Response::new(axum::body::Body::from(self.body));
        *resp.headers_mut() = headers;
        resp
    }
}

/// What a hot route's handler answers: a routed call's JSON, or any response.
#[expect(
    clippy::large_enum_variant,
    reason = "one per request, moved once: boxing would allocate for each"
)]
pub(crate) enum Answer {
    Routed(RoutedJson),
    Response(Response),
}

impl IntoResponse for Answer {
    fn into_response(self) -> Response {
        match self {
            Answer::Routed(r) => r.into_response(),
            Answer::Response(r) => r,
        }
    }
}

/// A 200 JSON answer with the `X-Infermux-*` headers of a routed call.
pub(crate) fn json_response(body: Vec<u8>, routed: Routed) -> Answer {
    Answer::Routed(RoutedJson { body, routed })
}

/// Whether `v` may be a header value as written here (visible ASCII, spaces
/// and tabs: what `HeaderValue::from_str` accepts).
fn is_header_value(v: &[u8]) -> bool {
    v.iter().all(|&b| b == b'\t' || (0x20..0x7f).contains(&b))
}

/// `n` in decimal, written into the end of `digits`; the digits written.
pub(crate) fn decimal(n: u64, digits: &mut [u8; 20]) -> &[u8] {
    let mut i = digits.len();
    let mut n = n;
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            return &digits[i..];
        }
    }
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
pub async fn health(State(state): State<Arc<AppState>>) -> Response {
    // Draining: load balancers should stop sending traffic here.
    let (status, body) = if state.shared.closing() {
        (StatusCode::SERVICE_UNAVAILABLE, r#"{"status":"draining"}"#)
    } else {
        (StatusCode::OK, r#"{"status":"ok"}"#)
    };
    (
        status,
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        body,
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
