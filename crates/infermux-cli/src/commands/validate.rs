//! `infermux validate`: check a config file; no network, no secrets needed
//! beyond the variables it names.

use std::path::PathBuf;
use std::process::ExitCode;

use infermux::config::{Config, ConfigError, ProcessEnv};

use crate::cli::ValidateArgs;

pub fn run(args: ValidateArgs) -> Result<ExitCode, String> {
    let path = args.config.unwrap_or_else(|| PathBuf::from("infermux.yml"));
    match Config::load(&path, &ProcessEnv, args.strict) {
        Ok(config) => {
            for warning in &config.warnings {
                eprintln!(
                    "infermux: warning: {}: {warning} (--strict rejects it)",
                    path.display()
                );
            }
            let names: Vec<&str> = config.providers.iter().map(|p| p.name.as_str()).collect();
            println!(
                "{}: valid ({} providers: {})",
                path.display(),
                names.len(),
                names.join(", ")
            );
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => {
            match &e {
                ConfigError::Invalid(errors) => {
                    for error in errors {
                        eprintln!("infermux: error: {error}");
                    }
                }
                other => eprintln!("infermux: error: {other}"),
            }
            Ok(ExitCode::from(e.exit_code()))
        }
    }
}
