//! Management endpoints under `/_infermux/`: status, providers with their
//! circuits, and manual circuit control. Every path but `health` requires
//! `Authorization: Bearer <INFERMUX_MANAGEMENT_TOKEN>` when a token is set.

use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use axum::extract::{Path, Request, State};
use axum::http::header;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use infermux::breaker::CircuitState;
use infermux::{Error, ErrorKind};
use serde::Serialize;

use crate::AppState;
use crate::error::ApiError;

/// Rejects management calls without the right bearer token (when one is
/// set). Without a token, calls that change state (circuit control, keys)
/// and reads of callers' keys and spend are answered only for loopback
/// clients: an open port must not let anyone take providers out, make
/// keys, or read who spent what.
pub async fn require_token(
    State(state): State<Arc<AppState>>,
    req: Request,
    next: Next,
) -> Response {
    let Some(token) = state.management_token.as_deref() else {
        let local = req
            .extensions()
            .get::<crate::Peer>()
            .and_then(|p| p.0)
            .is_none_or(|a| a.ip().is_loopback() || a.ip().to_canonical().is_loopback());
        // Callers' keys and spend are not for other hosts to read either.
        let path = req.uri().path();
        let private = path.starts_with("/_infermux/keys") || path == "/_infermux/spend";
        if (req.method() != http::Method::GET || private) && !local {
            return ApiError(Error::new(
                ErrorKind::Unauthorized,
                "management changes, keys and spend from another host need INFERMUX_MANAGEMENT_TOKEN set on the server and sent as Authorization: Bearer <token>",
            ))
            .into_response();
        }
        return next.run(req).await;
    };
    let path = req.uri().path();
    if !path.starts_with("/_infermux/") || path == "/_infermux/health" {
        return next.run(req).await;
    }
    let given = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    match given {
        Some(given) if constant_time_eq(given.as_bytes(), token.as_bytes()) => next.run(req).await,
        Some(_) => ApiError(Error::new(
            ErrorKind::Unauthorized,
            "the management token is wrong",
        ))
        .into_response(),
        None => ApiError(Error::new(
            ErrorKind::Unauthorized,
            "management endpoints need Authorization: Bearer <INFERMUX_MANAGEMENT_TOKEN>",
        ))
        .into_response(),
    }
}

/// Compares in time that depends on neither the contents nor the lengths:
/// the SHA-256 digests are compared, in constant time.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    use sha2::Digest as _;
    use subtle::ConstantTimeEq as _;
    let (a, b) = (sha2::Sha256::digest(a), sha2::Sha256::digest(b));
    a.ct_eq(&b).into()
}

/// RFC 3339 (UTC) of an `Instant`, through the wall clock.
fn rfc3339(at: Instant) -> String {
    let now = Instant::now();
    let wall = SystemTime::now();
    let t = if at <= now {
        wall - (now - at)
    } else {
        wall + (at - now)
    };
    let secs = t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    infermux::callers::format_rfc3339(i64::try_from(secs).unwrap_or(0).saturating_mul(1000))
}

#[derive(Serialize)]
struct ProviderStatus {
    name: String,
    #[serde(rename = "type")]
    kind: String,
    models: Vec<String>,
    healthy: bool,
    circuit: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    circuit_opened_at: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    recovery_at: Option<String>,
    error_rate: f64,
    p95_latency_ms: Option<u64>,
    requests_last_minute: u32,
    /// What is left of the rate limits this minute, when there are any.
    #[serde(skip_serializing_if = "Option::is_none")]
    rate_limit_headroom: Option<serde_json::Value>,
}

fn provider_statuses(state: &AppState) -> Vec<ProviderStatus> {
    state
        .router
        .registry()
        .entries()
        .iter()
        .map(|e| {
            let s = e.breaker.status();
            let open = s.state == CircuitState::Open;
            ProviderStatus {
                name: e.name.to_string(),
                kind: e.provider.kind().to_owned(),
                models: e.routable_models(),
                healthy: s.state != CircuitState::Open
                    && e.healthy.load(std::sync::atomic::Ordering::Relaxed),
                circuit: s.state.as_str(),
                circuit_opened_at: s.opened_at.filter(|_| open).map(rfc3339),
                recovery_at: s.recovery_at.filter(|_| open).map(rfc3339),
                error_rate: s.error_rate,
                p95_latency_ms: s.p95_latency_ms,
                requests_last_minute: s.requests_last_minute,
                rate_limit_headroom: e.limiter.as_ref().map(|l| {
                    let h = l.headroom();
                    serde_json::json!({"requests": h.requests, "tokens": h.tokens})
                }),
            }
        })
        .collect()
}

/// `GET /_infermux/providers`.
pub async fn providers(State(state): State<Arc<AppState>>) -> Response {
    axum::Json(serde_json::json!({ "providers": provider_statuses(&state) })).into_response()
}

/// `GET /_infermux/status`: the whole picture in one answer.
pub async fn status(State(state): State<Arc<AppState>>) -> Response {
    let providers = provider_statuses(&state);
    let open = providers.iter().filter(|p| p.circuit == "open").count();
    let mut body = serde_json::json!({
        "status": if open == 0 { "ok" } else { "degraded" },
        "version": env!("CARGO_PKG_VERSION"),
        "uptime_seconds": state.started.elapsed().as_secs(),
        "open_circuits": open,
        "spans_dropped": state.router.spans().dropped(),
        "providers": providers,
    });
    if let Some(callers) = state.router.callers() {
        body["keys"] = callers.keys().len().into();
        body["auth_required"] = callers.required().into();
        // Rows the ledger could not store: anything but 0 is money data lost.
        body["ledger_rows_lost"] = callers.ledger().map(|l| l.lost_rows()).into();
    }
    axum::Json(body).into_response()
}

/// `GET /_infermux/metrics`: Prometheus (OpenMetrics) text.
pub async fn metrics(State(state): State<Arc<AppState>>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        state.router.render_metrics(),
    )
        .into_response()
}

/// `POST /_infermux/providers/{name}/circuit/{open|close|reset}`.
pub async fn circuit(
    State(state): State<Arc<AppState>>,
    Path((name, action)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    let entry = state
        .router
        .registry()
        .entries()
        .into_iter()
        .find(|e| *e.name == *name)
        .ok_or_else(|| {
            Error::new(
                ErrorKind::RouteNotFound,
                format!(
                    "no provider is named \"{}\"",
                    infermux::validate::truncate(&name, 128)
                ),
            )
        })?;
    match action.as_str() {
        "open" => entry.breaker.force_open(),
        "close" => entry.breaker.force_close(),
        "reset" => entry.breaker.reset(),
        other => {
            return Err(Error::new(
                ErrorKind::RouteNotFound,
                format!(
                    "unknown circuit action \"{}\" (expected open, close or reset)",
                    infermux::validate::truncate(other, 32)
                ),
            )
            .into());
        }
    }
    tracing::info!(provider = %entry.name, action = %action, "circuit changed by hand");
    Ok(axum::Json(
        serde_json::json!({"name": *entry.name, "circuit": entry.breaker.state().as_str()}),
    )
    .into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_formats_instants() {
        let s = rfc3339(Instant::now());
        assert_eq!(s.len(), 20, "{s}");
        assert!(s.starts_with("20") && s.ends_with('Z'));
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"ab"));
    }

    /// A circuit call to `app` from `peer`, with `token` as the bearer.
    async fn circuit_call(
        app: &crate::Api,
        peer: &str,
        token: Option<&str>,
    ) -> axum::http::StatusCode {
        use tower::ServiceExt as _;
        let mut req = axum::http::Request::post("/_infermux/providers/echo/circuit/open");
        if let Some(t) = token {
            req = req.header(header::AUTHORIZATION, format!("Bearer {t}"));
        }
        let mut req = req.body(axum::body::Body::empty()).unwrap();
        req.extensions_mut()
            .insert(crate::Peer(Some(peer.parse().unwrap())));
        app.clone()
            .into_router()
            .oneshot(req)
            .await
            .unwrap()
            .status()
    }

    fn echo_router() -> infermux::Router {
        let registry = infermux::Registry::new();
        registry
            .register(Arc::new(infermux::EchoProvider::new()))
            .unwrap();
        infermux::Router::without_spans(Arc::new(registry))
    }

    #[tokio::test]
    async fn without_a_token_only_loopback_clients_change_circuits() {
        let open = crate::app(echo_router());
        assert_eq!(circuit_call(&open, "10.1.2.3:5000", None).await, 401);
        assert_eq!(circuit_call(&open, "[2001:db8::1]:5000", None).await, 401);
        assert_eq!(circuit_call(&open, "127.0.0.1:5000", None).await, 200);
        assert_eq!(circuit_call(&open, "[::1]:5000", None).await, 200);
        assert_eq!(
            circuit_call(&open, "[::ffff:127.0.0.1]:5000", None).await,
            200
        );
        // With a token, the token decides, from anywhere.
        let guarded = crate::app_with_token(echo_router(), Some("s3cret-token".into()));
        assert_eq!(circuit_call(&guarded, "10.1.2.3:5000", None).await, 401);
        assert_eq!(
            circuit_call(&guarded, "10.1.2.3:5000", Some("wrong")).await,
            401
        );
        assert_eq!(
            circuit_call(&guarded, "10.1.2.3:5000", Some("s3cret-token")).await,
            200
        );
    }
}
