//! `infermux serve`: the HTTP server.

use std::process::ExitCode;

use crate::cli::ServeArgs;
use crate::setup;

pub fn run(args: ServeArgs) -> Result<ExitCode, String> {
    setup::run_server(
        &args.server,
        "HTTP",
        |c| c.listen.as_deref(),
        ":8600",
        |listener, router| {
            infermux_http::serve(
                listener,
                infermux_http::app(router),
                setup::shutdown_signal(),
                args.grace_period,
            )
        },
    )
}
