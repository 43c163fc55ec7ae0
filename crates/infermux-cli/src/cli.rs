//! Command-line flags. Precedence: flag, then environment, then config file,
//! then the default (applied in `setup`, so `None` here means "not given").

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

#[derive(Debug, Parser)]
#[command(
    name = "infermux",
    version,
    about = "Inference router: one endpoint in front of your LLM providers",
    long_about = "Inference router: one endpoint in front of your LLM providers.\n\n\
        With no --config and no ./infermux.yml, the built-in echo provider (model \
        echo-v1) is the whole registry: no keys, no network."
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,

    #[command(flatten)]
    pub log: LogArgs,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve the HTTP API (MIST-native, OpenAI-compatible and management endpoints).
    Serve(ServeArgs),
    /// Serve the gRPC API (infermux.v1.InferMuxService, health, reflection).
    ServeGrpc(ServeGrpcArgs),
    /// Route one prompt and print the reply.
    Infer(InferArgs),
    /// Show a running server's state; exit 0 when every circuit is closed,
    /// 1 when any is open, 2 when the server cannot be reached.
    Status(RemoteArgs),
    /// List a running server's providers with their circuits and load.
    Providers(RemoteArgs),
    /// Check a config file without starting anything (no network calls).
    /// Exit 0 valid, 1 file not found, 2 malformed YAML, 3 invalid content.
    Validate(ValidateArgs),
    /// Create, list, show and revoke callers' keys on a running server.
    Keys(KeysArgs),
    /// Report spend from a running server's ledger, grouped.
    Spend(SpendArgs),
}

#[derive(Debug, Args)]
pub struct KeysArgs {
    #[command(subcommand)]
    pub action: KeysAction,

    /// The server's base URL (its management token, if any, is read from
    /// INFERMUX_MANAGEMENT_TOKEN).
    #[arg(
        long,
        global = true,
        default_value = "http://localhost:8600",
        env = "INFERMUX_SERVER"
    )]
    pub server: String,

    /// Output format.
    #[arg(long, global = true, value_enum, default_value_t = Format::Table)]
    pub format: Format,
}

#[derive(Debug, Subcommand)]
pub enum KeysAction {
    /// Make a key; its secret (imx-...) is printed once and kept nowhere.
    Create(NewKeyArgs),
    /// Every key, revoked ones included (never a secret).
    List,
    /// One key, with its spend so far and what its budgets have left.
    Show { name: String },
    /// Revoke a key: every later request with it is refused.
    Revoke { name: String },
}

#[derive(Debug, Args)]
pub struct NewKeyArgs {
    /// The key's name (letters, digits, '-', '_', '.').
    #[arg(required_unless_present = "name_flag")]
    pub name: Option<String>,
    /// The key's name, as a flag.
    #[arg(long = "name", conflicts_with = "name")]
    pub name_flag: Option<String>,
    /// The team it belongs to (from the config's teams).
    #[arg(long)]
    pub team: Option<String>,
    /// Models it may use: names or * globs, comma-separated [default: all].
    #[arg(long, value_delimiter = ',')]
    pub models: Vec<String>,
    /// Budget in US dollars per --budget-period.
    #[arg(long, visible_alias = "budget")]
    pub budget_usd: Option<f64>,
    /// daily, weekly, monthly or total.
    #[arg(long, visible_alias = "period", default_value = "total")]
    pub budget_period: String,
    /// Requests a minute at most (429 rate_limit beyond).
    #[arg(long, visible_alias = "rpm")]
    pub requests_per_minute: Option<u32>,
    /// Prompt and completion tokens a minute at most.
    #[arg(long, visible_alias = "tpm")]
    pub tokens_per_minute: Option<u64>,
    /// When the key stops working (RFC 3339, e.g. 2027-01-31T00:00:00Z).
    #[arg(long)]
    pub expires_at: Option<String>,
}

#[derive(Debug, Args)]
pub struct SpendArgs {
    /// The server's base URL (its management token, if any, is read from
    /// INFERMUX_MANAGEMENT_TOKEN).
    #[arg(long, default_value = "http://localhost:8600", env = "INFERMUX_SERVER")]
    pub server: String,
    /// What rows group by: key, team, model, provider, caller or day.
    #[arg(long, default_value = "key", value_parser = parse_group_by)]
    pub group_by: infermux::callers::GroupBy,
    /// Calls from this time on (RFC 3339).
    #[arg(long)]
    pub from: Option<String>,
    /// Calls before this time (RFC 3339).
    #[arg(long)]
    pub to: Option<String>,
    #[arg(long, value_enum, default_value_t = SpendFormat::Table)]
    pub format: SpendFormat,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum SpendFormat {
    Table,
    Json,
    Csv,
}

#[derive(Debug, Args)]
pub struct RemoteArgs {
    /// The server's base URL (its management token, if any, is read from
    /// INFERMUX_MANAGEMENT_TOKEN).
    #[arg(long, default_value = "http://localhost:8600", env = "INFERMUX_SERVER")]
    pub server: String,

    /// Output format.
    #[arg(long, value_enum, default_value_t = Format::Table)]
    pub format: Format,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    Table,
    Json,
}

#[derive(Debug, Args)]
pub struct ValidateArgs {
    /// Config file [default: ./infermux.yml].
    #[arg(long, env = "INFERMUX_CONFIG")]
    pub config: Option<PathBuf>,

    /// Reject unknown fields instead of warning about them.
    #[arg(long)]
    pub strict: bool,
}

#[derive(Debug, Args)]
pub struct LogArgs {
    /// Log line format (logs go to stderr).
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text, env = "INFERMUX_LOG_FORMAT")]
    pub log_format: LogFormat,

    /// Log level or filter directive (e.g. info, debug, infermux_http=debug).
    #[arg(
        long,
        global = true,
        default_value = "info",
        env = "INFERMUX_LOG_LEVEL"
    )]
    pub log_level: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// What both servers take: where to listen, what to route to, where spans go.
#[derive(Debug, Args)]
pub struct ServerArgs {
    /// Listen address: HOST:PORT, or :PORT for all interfaces
    /// [default: :8600 for serve, :8601 for serve-grpc].
    #[arg(long, env = "INFERMUX_ADDR")]
    pub addr: Option<String>,

    /// Config file [default: ./infermux.yml when present].
    #[arg(long, env = "INFERMUX_CONFIG")]
    pub config: Option<PathBuf>,

    /// TokenTrace base URL; spans are POSTed to {URL}/mist. Reporting is off without it.
    #[arg(long, env = "INFERMUX_TOKENTRACE")]
    pub tokentrace: Option<String>,
}

#[derive(Debug, Args)]
pub struct ServeArgs {
    #[command(flatten)]
    pub server: ServerArgs,

    /// Serving threads, each with its own runtime and listener (0 = two per core).
    #[arg(long, default_value_t = 0, env = "INFERMUX_THREADS")]
    pub threads: usize,

    /// After SIGINT/SIGTERM: how long connections are still served, every answer
    /// with Connection: close and /_infermux/health answering 503 draining (lets
    /// load balancers move traffic away first).
    #[arg(long, default_value = "0s", value_parser = parse_duration)]
    pub drain_delay: Duration,

    /// Then: how long in-flight requests may run (e.g. 30s, 500ms).
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    pub grace_period: Duration,

    /// Open connections at most; one more is answered 503 overloaded
    /// (0 = three quarters of the open-file limit, which is raised to its maximum).
    #[arg(long, default_value_t = 0, env = "INFERMUX_MAX_CONNECTIONS")]
    pub max_connections: usize,
}

#[derive(Debug, Args)]
pub struct ServeGrpcArgs {
    #[command(flatten)]
    pub server: ServerArgs,

    /// After SIGINT/SIGTERM: how long health reports NOT_SERVING while new RPCs
    /// are still accepted (lets load balancers move traffic away first).
    #[arg(long, default_value = "0s", value_parser = parse_duration)]
    pub drain_delay: Duration,

    /// Then: how long in-flight RPCs may run before the server exits.
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    pub grace_period: Duration,

    /// Interval of the server's keepalive pings on each connection (0s = off).
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    pub keepalive_interval: Duration,

    /// A connection whose keepalive ping is not answered in this time is closed.
    #[arg(long, default_value = "20s", value_parser = parse_duration)]
    pub keepalive_timeout: Duration,
}

#[derive(Debug, Args)]
pub struct InferArgs {
    /// Model name or alias (e.g. echo-v1); "auto" picks the first provider.
    #[arg(long)]
    pub model: String,

    /// The user message to send.
    #[arg(long)]
    pub prompt: String,

    /// Send to this provider, whatever the model resolves to.
    #[arg(long)]
    pub provider: Option<String>,

    /// Config file [default: ./infermux.yml when present].
    #[arg(long, env = "INFERMUX_CONFIG")]
    pub config: Option<PathBuf>,

    /// Print the full InferResponse as JSON instead of the content.
    #[arg(long)]
    pub json: bool,

    /// Give up after this long (e.g. 30s).
    #[arg(long, value_parser = parse_duration)]
    pub timeout: Option<Duration>,
}

fn parse_group_by(s: &str) -> Result<infermux::callers::GroupBy, String> {
    infermux::callers::GroupBy::parse(s)
        .ok_or_else(|| format!("\"{s}\" is not one of key, team, model, provider, caller, day"))
}

/// Parses `500ms`, `30s`, `5m`, `1h` or a bare number of seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    infermux::config::parse_duration(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("2"), Ok(Duration::from_secs(2)));
        assert_eq!(parse_duration("1.5m"), Ok(Duration::from_secs(90)));
        assert!(parse_duration("soon").is_err());
        assert!(parse_duration("5 parsecs").is_err());
        assert!(parse_duration("-1s").is_err());
    }

    #[test]
    fn flags_are_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
