//! `infermux serve`: the HTTP server.

use std::process::ExitCode;
use std::time::Duration;

use infermux::Router;

use crate::cli::ServeArgs;
use crate::setup;

/// How long queued spans may take to reach TokenTrace on shutdown.
pub(crate) const SPAN_FLUSH: Duration = Duration::from_secs(2);

pub fn run(args: ServeArgs) -> Result<ExitCode, String> {
    let registry = setup::registry(args.config.as_deref())?;
    let addr = setup::listen_addr(args.addr.as_deref(), ":8600")?;
    setup::runtime()?.block_on(async move {
        let (spans, reporter) = setup::spans(args.tokentrace.as_deref())?;
        let listener = setup::bind(&addr).await?;
        let local = listener.local_addr().map_err(|e| e.to_string())?;
        let providers: Vec<String> = registry
            .entries()
            .iter()
            .map(|e| e.name.to_string())
            .collect();
        tracing::info!(addr = %local, providers = ?providers, "infermux HTTP server listening");
        let app = infermux_http::app(Router::new(registry, spans));
        infermux_http::serve(listener, app, setup::shutdown_signal(), args.grace_period)
            .await
            .map_err(|e| format!("server error: {e}"))?;
        if let Some(task) = reporter {
            task.shutdown(SPAN_FLUSH).await;
        }
        tracing::info!("stopped");
        Ok(ExitCode::SUCCESS)
    })
}
