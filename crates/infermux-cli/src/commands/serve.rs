//! `infermux serve`: the HTTP server.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use infermux::{NoopSink, Router, SpanSink};
use infermux_tokentrace::{Reporter, ReporterConfig};

use crate::cli::ServeArgs;
use crate::setup;

/// How long queued spans may take to reach TokenTrace on shutdown.
const SPAN_FLUSH: Duration = Duration::from_secs(2);

pub fn run(args: ServeArgs) -> Result<ExitCode, String> {
    let registry = setup::registry(args.config.as_deref())?;
    let addr = setup::listen_addr(args.addr.as_deref(), ":8600")?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the async runtime: {e}"))?;
    runtime.block_on(async move {
        let (spans, reporter): (Arc<dyn SpanSink>, _) = match args.tokentrace.as_deref() {
            Some(url) if !url.is_empty() => {
                let (reporter, task) = Reporter::spawn(ReporterConfig::new(url))
                    .map_err(|e| format!("--tokentrace: {e}"))?;
                tracing::info!(url, "reporting spans to TokenTrace");
                (Arc::new(reporter), Some(task))
            }
            _ => (Arc::new(NoopSink), None),
        };
        let listener = tokio::net::TcpListener::bind(&addr)
            .await
            .map_err(|e| format!("cannot listen on {addr}: {e}"))?;
        let local = listener.local_addr().map_err(|e| e.to_string())?;
        let providers: Vec<String> = registry
            .entries()
            .iter()
            .map(|e| e.name.to_string())
            .collect();
        tracing::info!(addr = %local, providers = ?providers, "infermux HTTP server listening");
        let app = infermux_http::app(Router::new(registry, spans));
        infermux_http::serve(
            listener,
            app,
            infermux_http::server::shutdown_signal(),
            args.grace_period,
        )
        .await
        .map_err(|e| format!("server error: {e}"))?;
        if let Some(task) = reporter {
            task.shutdown(SPAN_FLUSH).await;
        }
        tracing::info!("stopped");
        Ok(ExitCode::SUCCESS)
    })
}
