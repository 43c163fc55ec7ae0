//! Running the app on a listener, with graceful shutdown.

use std::future::Future;
use std::time::Duration;

use axum::serve::ListenerExt;
use tokio::net::TcpListener;
use tokio::sync::oneshot;

/// Serves `app` on `listener` until `shutdown` completes; then stops accepting,
/// lets in-flight requests finish for at most `grace`, and returns.
pub async fn serve(
    listener: TcpListener,
    app: axum::Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
    grace: Duration,
) -> std::io::Result<()> {
    let (draining_tx, draining_rx) = oneshot::channel::<()>();
    let listener = listener.tap_io(|tcp| {
        // Small JSON answers must not wait for Nagle's algorithm.
        let _ = tcp.set_nodelay(true);
    });
    let server = axum::serve(listener, app).with_graceful_shutdown(async move {
        shutdown.await;
        tracing::info!("shutting down: no new connections; finishing in-flight requests");
        let _ = draining_tx.send(());
    });
    let grace_elapsed = async move {
        match draining_rx.await {
            Ok(()) => tokio::time::sleep(grace).await,
            // The server ended on its own (an I/O error): nothing to wait for.
            Err(_) => std::future::pending().await,
        }
    };
    tokio::select! {
        result = server => result,
        () = grace_elapsed => {
            tracing::warn!(grace_ms = grace.as_millis() as u64, "grace period elapsed; closing the remaining connections");
            Ok(())
        }
    }
}
