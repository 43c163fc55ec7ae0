//! `infermux serve-grpc`: the gRPC server.

use std::process::ExitCode;

use infermux::Router;
use infermux_grpc::ServerOptions;

use super::serve::SPAN_FLUSH;
use crate::cli::ServeGrpcArgs;
use crate::setup;

pub fn run(args: ServeGrpcArgs) -> Result<ExitCode, String> {
    let registry = setup::registry(args.config.as_deref())?;
    let addr = setup::listen_addr(args.addr.as_deref(), ":8601")?;
    setup::runtime()?.block_on(async move {
        let (spans, reporter) = setup::spans(args.tokentrace.as_deref())?;
        let listener = setup::bind(&addr).await?;
        let local = listener.local_addr().map_err(|e| e.to_string())?;
        let providers: Vec<String> = registry
            .entries()
            .iter()
            .map(|e| e.name.to_string())
            .collect();
        tracing::info!(addr = %local, providers = ?providers, "infermux gRPC server listening");
        let options = ServerOptions {
            keepalive_interval: args.keepalive_interval,
            keepalive_timeout: args.keepalive_timeout,
            drain_delay: args.drain_delay,
            grace: args.grace_period,
        };
        infermux_grpc::serve(
            listener,
            Router::new(registry, spans),
            options,
            setup::shutdown_signal(),
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
