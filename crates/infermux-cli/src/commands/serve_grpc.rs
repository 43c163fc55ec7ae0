//! `infermux serve-grpc`: the gRPC server.

use std::process::ExitCode;

use infermux_grpc::ServerOptions;

use crate::cli::ServeGrpcArgs;
use crate::setup;

pub fn run(args: ServeGrpcArgs) -> Result<ExitCode, String> {
    let options = ServerOptions {
        keepalive_interval: args.keepalive_interval,
        keepalive_timeout: args.keepalive_timeout,
        drain_delay: args.drain_delay,
        grace: args.grace_period,
        tls: None,
    };
    setup::run_server(
        &args.server,
        "gRPC",
        |c| c.grpc_listen.as_deref(),
        ":8601",
        |listener, router, tls| {
            let options = ServerOptions { tls, ..options };
            infermux_grpc::serve(listener, router, options, setup::shutdown_signal())
        },
    )
}
