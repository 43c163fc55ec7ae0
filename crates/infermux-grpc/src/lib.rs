//! infermux's gRPC edge: `infermux.v1.InferMuxService` over the same
//! [`Router`](infermux::Router) the HTTP server and the CLI use.
//!
//! - `convert`: protobuf ↔ core types, and the one mapping of
//!   [`infermux::Error`] to a gRPC `Status` (from the core's error table).
//! - `service`: the thin handlers: extract (metadata: `traceparent`,
//!   `grpc-timeout`) → `Router` → render.
//! - `rpclog`: one structured log line per RPC (method, code, latency, provider).
//! - [`server`]: the hyper HTTP/2 server: health and reflection services,
//!   keepalive pings, panic recovery, and graceful drain.

mod convert;
mod rpclog;
pub mod server;
mod service;

pub use convert::{grpc_timeout, status_of};
pub use server::{ServerOptions, serve};
pub use service::InferMuxGrpc;
