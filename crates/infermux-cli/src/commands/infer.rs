//! `infermux infer`: route one prompt through the same Router the servers use.

use std::io::Write;
use std::process::ExitCode;

use infermux::InferRequest;
use infermux::router::RequestContext;

use crate::cli::InferArgs;
use crate::setup;

pub fn run(args: InferArgs) -> Result<ExitCode, String> {
    let config = setup::load_config(args.config.as_deref())?;
    let registry = setup::registry(config.as_ref())?;
    let router = setup::router(
        config.as_ref(),
        registry,
        std::sync::Arc::new(infermux::NoopSink),
    );
    let mut req = InferRequest::prompt(args.model, args.prompt);
    req.provider = args.provider.unwrap_or_default();
    let ctx = RequestContext {
        dialect: "cli",
        trace: None,
        timeout: args.timeout,
        ..RequestContext::default()
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the async runtime: {e}"))?;
    let routed = runtime
        .block_on(router.call(&req, &ctx))
        .map_err(|e| format!("{}: {e}", e.disposition().code))?;
    let mut out = std::io::stdout().lock();
    let written = if args.json {
        serde_json::to_string_pretty(&routed.response)
            .map_err(|e| e.to_string())
            .and_then(|s| writeln!(out, "{s}").map_err(|e| e.to_string()))
    } else {
        writeln!(out, "{}", routed.response.content).map_err(|e| e.to_string())
    };
    written.map_err(|e| format!("cannot write the reply: {e}"))?;
    Ok(ExitCode::SUCCESS)
}
