//! One file per command.

mod callers;
mod infer;
mod remote;
mod serve;
mod serve_grpc;
mod validate;

use std::process::ExitCode;

use crate::cli::Command;

pub fn run(command: Command) -> Result<ExitCode, String> {
    match command {
        Command::Serve(args) => serve::run(args),
        Command::ServeGrpc(args) => serve_grpc::run(args),
        Command::Infer(args) => infer::run(args),
        Command::Validate(args) => validate::run(args),
        Command::Status(args) => remote::status(args),
        Command::Providers(args) => remote::providers(args),
        Command::Keys(args) => callers::keys(args),
        Command::Spend(args) => callers::spend(args),
    }
}
