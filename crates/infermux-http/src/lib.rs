//! infermux's HTTP edge (axum). Handlers are thin: extract → validate → [`Router`]
//! → render. Nothing here routes, validates or accounts on its own.
//!
//! - [`app`]: the axum application; tests can drive it without a socket.
//! - [`serve`](server::serve): runs it on a listener until a shutdown future
//!   fires, then drains in-flight requests within a grace period.
//! - `extract`: the JSON body extractor (content type, 10 MiB limit, errors that
//!   name the field) and the `traceparent` header.
//! - `error`: renders [`infermux::Error`] as the contract's JSON error body.
//! - `routes`: the MIST-native endpoints and `/_infermux/health`.
//! - `openai`: the OpenAI-compatible endpoints under `/v1`.
//!
//! [`Router`]: infermux::Router

mod error;
mod extract;
mod openai;
mod routes;
pub mod server;

use std::sync::Arc;

use axum::routing::{get, post};
use infermux::Router;

pub use error::ApiError;
pub use server::serve;

/// What every handler shares.
#[derive(Debug)]
pub struct AppState {
    pub router: Router,
}

/// The HTTP application: every route of the contract, over one [`Router`].
pub fn app(router: Router) -> axum::Router {
    let state = Arc::new(AppState { router });
    axum::Router::new()
        .route("/mist", post(routes::mist))
        .route("/infer", post(routes::infer))
        .route("/providers", get(routes::providers))
        .route("/v1/chat/completions", post(openai::chat_completions))
        .route("/v1/models", get(openai::models))
        .route("/v1/embeddings", post(openai::embeddings))
        .route("/_infermux/health", get(routes::health))
        .fallback(routes::not_found)
        .method_not_allowed_fallback(routes::method_not_allowed)
        .layer(tower_http::catch_panic::CatchPanicLayer::custom(
            error::panic_response,
        ))
        .with_state(state)
}

/// The README's Rust examples, compiled and run as doctests so they cannot rot.
#[cfg(doctest)]
#[doc = include_str!("../../../README.md")]
pub struct ReadmeDoctests;
