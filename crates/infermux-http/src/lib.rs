//! infermux's HTTP edge (axum). Handlers are thin: extract → validate → [`Router`]
//! → render. Nothing here routes, validates or accounts on its own.
//!
//! - [`app`]: the application ([`Api`]): the axum router, and the state the
//!   connection front answers the hot routes with.
//! - [`serve`](server::serve): runs it on a listener until a shutdown future
//!   fires, then drains in-flight requests within a grace period.
//! - `front`: reads each connection's requests itself and calls the hot
//!   routes' handlers directly; everything else goes to hyper and axum.
//! - `extract`: the JSON body extractor (content type, 10 MiB limit, errors that
//!   name the field) and the `traceparent` header.
//! - `error`: renders [`infermux::Error`] as the contract's JSON error body.
//! - `routes`: the MIST-native endpoints and `/_infermux/health`.
//! - `openai`: the OpenAI-compatible endpoints under `/v1`.
//! - `anthropic`: the Anthropic Messages API (`/v1/messages`, its
//!   `count_tokens`), passed through or translated.
//! - `management`: `/_infermux/status`, `providers`, circuit control, the token.
//! - `keys`: callers' keys (`/_infermux/keys`) and spend reports
//!   (`/_infermux/spend`), from the router's callers and ledger.
//!
//! [`Router`]: infermux::Router

mod anthropic;
mod error;
mod extract;
mod front;
mod keys;
mod management;
mod openai;
mod routes;
pub mod server;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use axum::routing::{get, post};
use infermux::Router;

pub use error::ApiError;

/// Entry points for the fuzz targets (`fuzz/`); not a stable API.
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzzing {
    pub use crate::front::fuzz_request;
}
pub use server::serve;

/// What every handler shares.
#[derive(Debug)]
pub struct AppState {
    pub router: Router,
    /// Bearer token for `/_infermux/*` (but `health`); none means open.
    pub management_token: Option<String>,
    pub started: std::time::Instant,
    /// What the servers of this application share (drain, connections).
    pub(crate) shared: Arc<Shared>,
}

/// The client's address, in the extensions of requests hyper serves.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Peer(pub Option<std::net::SocketAddr>);

/// What every server of one application shares, whichever thread serves it.
#[derive(Debug)]
pub(crate) struct Shared {
    /// Shutdown has begun: answers carry `Connection: close` and health
    /// says `draining` (503), while new connections are still served.
    closing: AtomicBool,
    /// Open connections, against `max_connections`.
    open: AtomicUsize,
    max_connections: AtomicUsize,
}

impl Default for Shared {
    fn default() -> Self {
        Shared {
            closing: AtomicBool::new(false),
            open: AtomicUsize::new(0),
            max_connections: AtomicUsize::new(usize::MAX),
        }
    }
}

impl Shared {
    pub(crate) fn closing(&self) -> bool {
        self.closing.load(Ordering::Relaxed)
    }

    pub(crate) fn start_closing(&self) {
        self.closing.store(true, Ordering::Relaxed);
    }

    /// A slot for one more connection, if the limit allows.
    pub(crate) fn admit(self: &Arc<Self>) -> Option<ConnectionSlot> {
        let max = self.max_connections.load(Ordering::Relaxed);
        let was = self.open.fetch_add(1, Ordering::AcqRel);
        let slot = ConnectionSlot(self.clone());
        (was < max).then_some(slot)
    }

    pub(crate) fn max_connections(&self) -> usize {
        self.max_connections.load(Ordering::Relaxed)
    }
}

/// One open connection, counted until it is dropped.
pub(crate) struct ConnectionSlot(Arc<Shared>);

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::AcqRel);
    }
}

/// An application to serve: the axum router with every route, and, when it
/// serves the API, the state [`serve`] answers the hot routes with directly
/// (`POST /v1/chat/completions`, `/infer`, `/mist`: the same handlers, without
/// the router in between).
#[derive(Clone)]
pub struct Api {
    router: axum::Router,
    fast: Option<Arc<AppState>>,
    shared: Arc<Shared>,
}

impl Api {
    /// The axum router alone (every route; no fast path).
    pub fn into_router(self) -> axum::Router {
        self.router
    }

    /// The same application with the connection front off: hyper and axum
    /// serve every request (the same handlers; what the front must match,
    /// and a way to rule it out).
    pub fn without_front(mut self) -> Self {
        self.fast = None;
        self
    }

    /// At most `n` connections open at once, over every server of this
    /// application (and of the application split from it); one more is
    /// answered 503 `overloaded` and closed. Unlimited by default.
    pub fn with_max_connections(self, n: usize) -> Self {
        self.shared
            .max_connections
            .store(n.max(1), Ordering::Relaxed);
        self
    }
}

impl From<axum::Router> for Api {
    /// Any axum application, served by hyper alone.
    fn from(router: axum::Router) -> Self {
        Api {
            router,
            fast: None,
            shared: Arc::default(),
        }
    }
}

/// The HTTP application: every route of the contract, over one [`Router`],
/// with the management endpoints open.
pub fn app(router: Router) -> Api {
    app_with_token(router, None)
}

/// The HTTP application with the management endpoints behind a bearer token
/// (`INFERMUX_MANAGEMENT_TOKEN`) when `management_token` is set.
pub fn app_with_token(router: Router, management_token: Option<String>) -> Api {
    let state = state(router, management_token);
    Api {
        router: finish(api_routes().merge(management_routes(&state)), state.clone()),
        shared: state.shared.clone(),
        fast: Some(state),
    }
}

/// The HTTP application split in two: the API (with `/_infermux/health`), and
/// the management endpoints, to be served on their own address
/// (`management_listen`).
pub fn split_apps(router: Router, management_token: Option<String>) -> (Api, Api) {
    let state = state(router, management_token);
    let management = axum::Router::new()
        .route("/_infermux/health", get(routes::health))
        .merge(management_routes(&state));
    let api = Api {
        router: finish(api_routes(), state.clone()),
        fast: Some(state.clone()),
        shared: state.shared.clone(),
    };
    let management = Api {
        router: finish(management, state.clone()),
        fast: None,
        shared: state.shared.clone(),
    };
    (api, management)
}

fn state(router: Router, management_token: Option<String>) -> Arc<AppState> {
    Arc::new(AppState {
        router,
        management_token: management_token.filter(|t| !t.is_empty()),
        started: std::time::Instant::now(),
        shared: Arc::default(),
    })
}

fn api_routes() -> axum::Router<Arc<AppState>> {
    axum::Router::new()
        .route("/mist", post(routes::mist))
        .route("/infer", post(routes::infer))
        .route("/providers", get(routes::providers))
        .route("/v1/chat/completions", post(openai::chat_completions))
        .route("/v1/messages", post(anthropic::messages_route))
        .route(
            "/v1/messages/count_tokens",
            post(anthropic::count_tokens_route),
        )
        .route("/v1/models", get(openai::models))
        .route("/v1/models/{*model}", get(openai::model))
        .route("/v1/embeddings", post(openai::embeddings))
        .route("/_infermux/health", get(routes::health))
}

/// The management routes, behind the token check (a route layer: the API's
/// hot path does not pass through it).
fn management_routes(state: &Arc<AppState>) -> axum::Router<Arc<AppState>> {
    axum::Router::new()
        .route("/_infermux/status", get(management::status))
        .route("/_infermux/providers", get(management::providers))
        .route("/_infermux/metrics", get(management::metrics))
        .route(
            "/_infermux/providers/{name}/circuit/{action}",
            post(management::circuit),
        )
        .route("/_infermux/keys", post(keys::create).get(keys::list))
        .route(
            "/_infermux/keys/{name}",
            get(keys::show).delete(keys::revoke),
        )
        .route("/_infermux/spend", get(keys::spend))
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            management::require_token,
        ))
}

fn finish(routes: axum::Router<Arc<AppState>>, state: Arc<AppState>) -> axum::Router {
    routes
        .fallback(routes::not_found)
        .method_not_allowed_fallback(routes::method_not_allowed)
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            close_while_closing,
        ))
        .layer(tower_http::catch_panic::CatchPanicLayer::custom(
            error::panic_response,
        ))
        .with_state(state)
}

/// Once shutdown has begun, every answer says `Connection: close` (hyper
/// then closes the connection after it), as the connection front does: a
/// client on a keep-alive connection gets its answer, then reconnects
/// elsewhere, instead of finding the connection gone.
async fn close_while_closing(
    axum::extract::State(state): axum::extract::State<Arc<AppState>>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    let mut resp = next.run(req).await;
    if state.shared.closing() {
        resp.headers_mut().insert(
            http::header::CONNECTION,
            http::HeaderValue::from_static("close"),
        );
    }
    resp
}

/// The README's Rust examples, compiled and run as doctests so they cannot rot.
#[cfg(doctest)]
#[doc = include_str!("../../../README.md")]
pub struct ReadmeDoctests;
