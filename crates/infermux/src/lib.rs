//! infermux core: the inference router, with no network edge of its own.
//!
//! A request travels through these modules, in order:
//!
//! - [`types`]: the MIST v1 wire types (`InferRequest`, `InferResponse`, `InferChunk`).
//! - [`envelope`]: the MIST message envelope (version, id, checksum, size limit).
//! - [`validate`]: the validation rules every entry point shares.
//! - [`registry`]: the providers, resolved by model name without a lock per request.
//! - [`router`]: resolve → call → account → report; the one code path that the
//!   HTTP server, the gRPC server and the CLI all call.
//! - [`provider`]: the `Provider` trait that adapters implement; [`echo`] is the
//!   built-in provider that needs no keys and no network.
//! - [`callers`]: keys, teams, budgets by reservation, per-key limits, and the
//!   [`callers::Ledger`] every routed call is written to.
//! - [`trace`]: W3C trace context and the TokenTrace span a call produces, handed to
//!   a non-blocking [`trace::SpanSink`].
//! - [`error`]: the one error type, and the one table that maps it to HTTP statuses,
//!   gRPC codes and the public `code` strings; [`redact`] keeps provider secrets
//!   out of the upstream text its messages carry.

pub mod breaker;
pub mod callers;
pub mod config;
pub mod cost;
pub mod echo;
pub mod envelope;
pub mod error;
pub mod health;
pub mod json;
pub mod metrics;
pub mod provider;
pub mod ratelimit;
pub mod raw;
pub mod redact;
pub mod registry;
pub mod router;
#[cfg(any(test, feature = "testing"))]
pub mod testing;
pub mod trace;
pub mod types;
pub mod validate;

pub use echo::EchoProvider;
pub use envelope::{Envelope, MessageType};
pub use error::{Error, ErrorKind, GrpcCode, ProviderError};
pub use provider::{CallContext, ChunkStream, Provider};
pub use registry::Registry;
pub use router::{RequestContext, Router};
pub use trace::{NoopSink, SpanSink, TraceContext, TraceSpan};
pub use types::{
    ChatMessage, EmbedRequest, EmbedResponse, InferChunk, InferRequest, InferResponse, Params,
    RawJson, Role, TokenCount, Usage,
};

/// Maximum size of one MIST message or HTTP request body, in bytes (10 MiB).
pub const MAX_MESSAGE_SIZE: usize = 10 * 1024 * 1024;
