//! The `infermux` command. `cli` holds the flags; each command has a file under
//! `commands`; errors end here as one line on stderr and a non-zero exit code.

mod cli;
mod commands;
mod logging;
mod setup;

use std::process::ExitCode;

use clap::Parser;

/// mimalloc: a call allocates and frees many small objects across the edge,
/// router and adapters; see docs/PERFORMANCE.md for the measurements. The
/// `system-allocator` feature builds with the system's instead, to compare.
#[cfg(not(feature = "system-allocator"))]
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = cli::Cli::parse();
    let _log_guard = match logging::init(&cli.log) {
        Ok(guard) => guard,
        Err(e) => {
            eprintln!("infermux: error: {e}");
            return ExitCode::from(2);
        }
    };
    match commands::run(cli.command) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("infermux: error: {e}");
            ExitCode::FAILURE
        }
    }
}
