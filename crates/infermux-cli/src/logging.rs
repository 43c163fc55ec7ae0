//! Structured logs to stderr through `tracing`.

use std::io::IsTerminal;

use tracing_appender::non_blocking::WorkerGuard;
use tracing_subscriber::EnvFilter;

use crate::cli::{LogArgs, LogFormat};

/// Starts logging. Lines are written by a background thread, so a slow stderr
/// never slows a request (when its buffer is full, lines are dropped and
/// counted); keep the returned guard alive until exit so the rest is flushed.
pub fn init(args: &LogArgs) -> Result<WorkerGuard, String> {
    let filter = EnvFilter::try_new(&args.log_level)
        .map_err(|e| format!("--log-level \"{}\": {e}", args.log_level))?;
    let (writer, guard) = tracing_appender::non_blocking(std::io::stderr());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer)
        .with_ansi(std::io::stderr().is_terminal());
    let result = match args.log_format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
    result.map_err(|e| format!("cannot start logging: {e}"))?;
    Ok(guard)
}
