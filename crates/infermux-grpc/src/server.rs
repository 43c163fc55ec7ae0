//! The gRPC server: HTTP/2 (h2c) on hyper, serving InferMuxService, the standard
//! health service and reflection (v1 and v1alpha).
//!
//! tonic's own `Server` is not used because it wraps every service in a
//! `grpc-timeout` layer that answers CANCELLED when the caller's deadline
//! elapses; here the deadline goes to the Router, which cancels the provider
//! call and answers DEADLINE_EXCEEDED as the contract says.

use std::future::Future;
use std::time::Duration;

use http::{HeaderValue, Response};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use infermux::Router;
use infermux_proto::SERVICE_NAME;
use tokio::net::TcpListener;
use tonic::service::Routes;
use tonic_health::ServingStatus;
use tower::ServiceBuilder;
use tower_http::catch_panic::CatchPanicLayer;

use crate::rpclog::RpcLogLayer;
use crate::service::InferMuxGrpc;

/// How the server keeps connections alive and drains, and whether it
/// speaks TLS.
#[derive(Clone)]
pub struct ServerOptions {
    /// The server pings each connection this often; 0 turns pings off.
    pub keepalive_interval: Duration,
    /// A connection whose ping is not answered within this time is closed.
    pub keepalive_timeout: Duration,
    /// After shutdown begins: how long health reports NOT_SERVING while new
    /// RPCs are still accepted, so load balancers can move traffic first.
    pub drain_delay: Duration,
    /// Then: how long in-flight RPCs may run before connections are dropped.
    pub grace: Duration,
    /// gRPC over TLS: every connection starts with a handshake (ALPN `h2`).
    pub tls: Option<tokio_rustls::TlsAcceptor>,
}

impl std::fmt::Debug for ServerOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerOptions")
            .field("keepalive_interval", &self.keepalive_interval)
            .field("keepalive_timeout", &self.keepalive_timeout)
            .field("drain_delay", &self.drain_delay)
            .field("grace", &self.grace)
            .field("tls", &self.tls.is_some())
            .finish()
    }
}

impl Default for ServerOptions {
    fn default() -> Self {
        ServerOptions {
            keepalive_interval: Duration::from_secs(30),
            keepalive_timeout: Duration::from_secs(20),
            drain_delay: Duration::ZERO,
            grace: Duration::from_secs(30),
            tls: None,
        }
    }
}

/// Serves the gRPC API of `router` on `listener` until `shutdown` completes, then
/// drains: health turns NOT_SERVING at once, the listener closes after
/// `drain_delay`, in-flight RPCs get `grace` to finish, and the function returns.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    options: ServerOptions,
    shutdown: impl Future<Output = ()> + Send,
) -> std::io::Result<()> {
    let (health, health_service) = tonic_health::server::health_reporter();
    health.set_service_status("", ServingStatus::Serving).await;
    health
        .set_service_status(SERVICE_NAME, ServingStatus::Serving)
        .await;

    let reflection_v1 = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(infermux_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()
        .map_err(std::io::Error::other)?;
    let reflection_v1alpha = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(infermux_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1alpha()
        .map_err(std::io::Error::other)?;

    let routes = Routes::new(InferMuxGrpc::new(router).into_server())
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .prepare();
    let service = ServiceBuilder::new()
        .layer(RpcLogLayer)
        .layer(CatchPanicLayer::custom(panic_response))
        .service(routes);

    let mut http2 = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
    http2.timer(TokioTimer::new());
    if !options.keepalive_interval.is_zero() {
        http2
            .keep_alive_interval(Some(options.keepalive_interval))
            .keep_alive_timeout(options.keepalive_timeout);
    }

    let graceful = GracefulShutdown::new();
    let mut shutdown = std::pin::pin!(shutdown);
    // Set when shutdown begins: the end of the drain delay, during which new
    // connections are still served while health says NOT_SERVING.
    let mut draining: Option<std::pin::Pin<Box<tokio::time::Sleep>>> = None;
    loop {
        tokio::select! {
            () = &mut shutdown, if draining.is_none() => {
                tracing::info!("draining: health is NOT_SERVING");
                health.set_service_status("", ServingStatus::NotServing).await;
                health.set_service_status(SERVICE_NAME, ServingStatus::NotServing).await;
                draining = Some(Box::pin(tokio::time::sleep(options.drain_delay)));
            }
            () = until(draining.as_mut()) => break,
            accepted = listener.accept() => {
                let (stream, _peer) = match accepted {
                    Ok(conn) => conn,
                    Err(e) => {
                        // Out of file descriptors and the like: back off, keep serving.
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let _ = stream.set_nodelay(true);
                let service = TowerToHyperService::new(service.clone());
                let Some(tls) = options.tls.clone() else {
                    let conn = graceful.watch(http2.serve_connection(TokioIo::new(stream), service));
                    // Tracked by `graceful`, which waits for it on shutdown.
                    tokio::spawn(async move {
                        if let Err(e) = conn.await {
                            tracing::debug!(error = %e, "connection ended with an error");
                        }
                    });
                    continue;
                };
                // The handshake in the connection's task, not in the accept loop.
                let watcher = graceful.watcher();
                let http2 = http2.clone();
                tokio::spawn(async move {
                    let stream = match tokio::time::timeout(TLS_HANDSHAKE, tls.accept(stream)).await {
                        Ok(Ok(stream)) => stream,
                        Ok(Err(e)) => return tracing::debug!(error = %e, "TLS handshake failed"),
                        Err(_) => return tracing::debug!("TLS handshake did not finish in time"),
                    };
                    let conn = http2.serve_connection(TokioIo::new(stream), service);
                    if let Err(e) = watcher.watch(conn).await {
                        tracing::debug!(error = %e, "connection ended with an error");
                    }
                });
            }
        }
    }
    drop(listener);
    tracing::info!("listener closed; finishing in-flight RPCs");
    if tokio::time::timeout(options.grace, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!(
            grace_ms = options.grace.as_millis() as u64,
            "grace period elapsed; dropping the remaining RPCs"
        );
    }
    Ok(())
}

/// How long a client may take over its TLS handshake.
const TLS_HANDSHAKE: Duration = Duration::from_secs(10);

/// Completes when `sleep` does; never when there is none.
async fn until(sleep: Option<&mut std::pin::Pin<Box<tokio::time::Sleep>>>) {
    match sleep {
        Some(s) => s.as_mut().await,
        None => std::future::pending().await,
    }
}

/// A panicking handler answers INTERNAL; the process and other RPCs live on.
fn panic_response(_panic: Box<dyn std::any::Any + Send + 'static>) -> Response<tonic::body::Body> {
    tracing::error!("an RPC handler panicked; answering INTERNAL");
    let mut resp = tonic::Status::internal("internal error").into_http::<tonic::body::Body>();
    resp.headers_mut().insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/grpc"),
    );
    resp
}
