//! The config file (`infermux.yml`), read in two stages: YAML → raw serde structs
//! (with `${VAR}` substitution, type errors and unknown fields reported by YAML
//! path) → a validated [`Config`] with typed durations, URLs and secrets. Every
//! error is collected before failing, each naming its field.
//!
//! The environment is read through [`Env`], so tests and `infermux validate` can
//! run without real secrets.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::path::Path;
use std::time::Duration;

use serde::Deserialize;

use crate::callers::{AuthSettings, BudgetSpec, KeySpec, Period};
use serde_json::Value;

use crate::breaker::BreakerConfig;
// Defined with what uses them (the router's strategies, the price table);
// named here too, as the config reads them.
pub use crate::cost::Price;
pub use crate::router::Strategy;

/// Where `${VAR}` values come from.
pub trait Env {
    fn var(&self, name: &str) -> Option<String>;
}

/// The process environment.
#[derive(Debug, Default, Clone, Copy)]
pub struct ProcessEnv;

impl Env for ProcessEnv {
    fn var(&self, name: &str) -> Option<String> {
        std::env::var(name).ok()
    }
}

impl Env for HashMap<String, String> {
    fn var(&self, name: &str) -> Option<String> {
        self.get(name).cloned()
    }
}

/// Why a config could not be loaded. Each kind has its `validate` exit code.
#[derive(Debug, Clone, PartialEq)]
pub enum ConfigError {
    /// The file does not exist or cannot be read (exit 1).
    NotFound(String),
    /// The file is not well-formed YAML (exit 2).
    Malformed(String),
    /// The YAML is well-formed but its content is wrong (exit 3): one message
    /// per problem, each starting with the field's path.
    Invalid(Vec<String>),
}

impl ConfigError {
    /// The exit code of `infermux validate` for this error.
    pub fn exit_code(&self) -> u8 {
        match self {
            ConfigError::NotFound(_) => 1,
            ConfigError::Malformed(_) => 2,
            ConfigError::Invalid(_) => 3,
        }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConfigError::NotFound(m) | ConfigError::Malformed(m) => f.write_str(m),
            ConfigError::Invalid(errors) => f.write_str(&errors.join("; ")),
        }
    }
}

impl std::error::Error for ConfigError {}

/// A secret (API key): never shown by `Debug` or `Display`.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: impl Into<String>) -> Self {
        Secret(s.into())
    }

    /// The secret itself, for the one place that sends it upstream.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

/// The adapter a provider uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ProviderKind {
    Echo,
    OpenAi,
    Anthropic,
    AzureOpenAi,
    Ollama,
}

impl ProviderKind {
    pub const NAMES: &'static [&'static str] =
        &["echo", "openai", "anthropic", "azure_openai", "ollama"];

    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "echo" => ProviderKind::Echo,
            "openai" => ProviderKind::OpenAi,
            "anthropic" => ProviderKind::Anthropic,
            "azure_openai" => ProviderKind::AzureOpenAi,
            "ollama" => ProviderKind::Ollama,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            ProviderKind::Echo => "echo",
            ProviderKind::OpenAi => "openai",
            ProviderKind::Anthropic => "anthropic",
            ProviderKind::AzureOpenAi => "azure_openai",
            ProviderKind::Ollama => "ollama",
        }
    }

    /// The base URL when the config gives none.
    pub fn default_base_url(self) -> Option<&'static str> {
        match self {
            ProviderKind::OpenAi => Some("https://api.openai.com/v1"),
            ProviderKind::Anthropic => Some("https://api.anthropic.com"),
            ProviderKind::Ollama => Some("http://localhost:11434/v1"),
            ProviderKind::Echo | ProviderKind::AzureOpenAi => None,
        }
    }
}

/// One provider, validated.
#[derive(Debug, Clone, PartialEq)]
pub struct ProviderConfig {
    pub name: String,
    pub kind: ProviderKind,
    pub api_key: Option<Secret>,
    /// Normalized without a trailing `/`.
    pub base_url: Option<String>,
    pub timeout: Duration,
    pub models: Vec<String>,
    /// Caller-facing alias → the model name this provider receives.
    pub model_aliases: Vec<(String, String)>,
    /// Azure's `api-version` query parameter.
    pub api_version: Option<String>,
    /// Echo only: wait this long before answering.
    pub delay: Duration,
    /// This provider's circuit breaker: the global settings with its overrides.
    pub circuit_breaker: BreakerConfig,
    pub rate_limits: crate::ratelimit::RateLimits,
    pub health_check: crate::health::HealthCheckConfig,
}

#[derive(Debug, Clone, PartialEq)]
pub struct RoutingConfig {
    pub strategy: Strategy,
    /// On a retryable failure, try the next provider that serves the model.
    pub fallback: bool,
    /// Providers one request may try, the first included.
    pub max_attempts: usize,
    /// `least_latency`: the newest sample's weight in the moving average.
    pub ewma_decay: f64,
    /// `least_latency`: successes before a provider's average counts.
    pub min_samples: u32,
    /// Models routed their own way.
    pub groups: Vec<crate::router::RouteGroup>,
    /// How long a call may take in all, fallback included, when the caller
    /// sets no deadline (`X-Infermux-Timeout`, `grpc-timeout`).
    pub request_timeout: Option<Duration>,
}

impl Default for RoutingConfig {
    fn default() -> Self {
        RoutingConfig {
            strategy: Strategy::Priority,
            fallback: true,
            max_attempts: crate::router::DEFAULT_MAX_ATTEMPTS,
            ewma_decay: 0.3,
            min_samples: 5,
            groups: Vec::new(),
            request_timeout: None,
        }
    }
}

impl RoutingConfig {
    /// Providers one request may try, fallback considered (1 when it is off).
    pub fn attempts(&self) -> usize {
        if self.fallback { self.max_attempts } else { 1 }
    }
}

/// A validated config file.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Config {
    pub listen: Option<String>,
    pub grpc_listen: Option<String>,
    /// Serve `/_infermux/*` (but `health`) here instead of on `listen`.
    pub management_listen: Option<String>,
    pub tokentrace: Option<String>,
    /// Serve HTTPS (and gRPC over TLS) with this certificate.
    pub tls: Option<TlsConfig>,
    pub providers: Vec<ProviderConfig>,
    pub routing: RoutingConfig,
    /// Provider name → model name the provider receives → price.
    pub pricing: BTreeMap<String, BTreeMap<String, Price>>,
    /// Keys, teams, budgets and limits of callers (`auth`, `teams`).
    pub auth: AuthSettings,
    /// `ledger.path`: the SQLite file (relative to the config file's folder);
    /// none: `infermux.db` beside the config file.
    pub ledger_path: Option<std::path::PathBuf>,
    /// `ledger.enabled: false`: no ledger (no rows, no spend reports, no
    /// keys made through the API); only without budgets, which would reset
    /// on every restart.
    pub ledger_disabled: bool,
    /// Unknown fields, by path (errors under `strict`, warnings otherwise).
    pub warnings: Vec<String>,
}

/// A listener's certificate chain and private key, PEM files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsConfig {
    pub cert: std::path::PathBuf,
    pub key: std::path::PathBuf,
}

// ---- stage 1: raw structs -------------------------------------------------

#[derive(Debug, Default, Deserialize)]
struct RawConfig {
    listen: Option<String>,
    grpc_listen: Option<String>,
    management_listen: Option<String>,
    tokentrace: Option<String>,
    tls: Option<RawTls>,
    #[serde(default)]
    providers: Vec<RawProvider>,
    routing: Option<RawRouting>,
    #[serde(default)]
    pricing: BTreeMap<String, BTreeMap<String, Price>>,
    circuit_breaker: Option<RawBreaker>,
    auth: Option<RawAuth>,
    #[serde(default)]
    teams: Vec<RawTeam>,
    ledger: Option<RawLedger>,
}

#[derive(Debug, Default, Deserialize)]
struct RawAuth {
    required: Option<bool>,
    default_reserve_tokens: Option<i64>,
    #[serde(default)]
    keys: Vec<RawKey>,
}

#[derive(Debug, Default, Deserialize)]
struct RawKey {
    name: Option<String>,
    key: Option<String>,
    key_sha256: Option<String>,
    team: Option<String>,
    #[serde(default)]
    models: Vec<String>,
    budget: Option<RawBudget>,
    rate_limits: Option<RawRateLimits>,
    expires_at: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
struct RawBudget {
    usd: Option<f64>,
    period: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
struct RawTeam {
    name: Option<String>,
    budget: Option<RawBudget>,
    rate_limits: Option<RawRateLimits>,
}

#[derive(Debug, Default, Deserialize)]
struct RawLedger {
    path: Option<String>,
    enabled: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
struct RawTls {
    cert: Option<String>,
    key: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
struct RawProvider {
    name: Option<String>,
    #[serde(rename = "type")]
    kind: Option<String>,
    api_key: Option<String>,
    base_url: Option<String>,
    timeout: Option<String>,
    #[serde(default)]
    models: Vec<String>,
    #[serde(default)]
    model_aliases: BTreeMap<String, String>,
    api_version: Option<String>,
    delay: Option<String>,
    circuit_breaker: Option<RawBreaker>,
    rate_limits: Option<RawRateLimits>,
    health_check: Option<RawHealthCheck>,
}

#[derive(Debug, Default, Deserialize)]
struct RawHealthCheck {
    interval: Option<String>,
    timeout: Option<String>,
    disabled: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
struct RawRateLimits {
    requests_per_minute: Option<i64>,
    tokens_per_minute: Option<i64>,
}

#[derive(Debug, Default, Clone, Deserialize)]
struct RawBreaker {
    consecutive_failures: Option<i64>,
    error_rate_threshold: Option<f64>,
    window_seconds: Option<i64>,
    min_requests: Option<i64>,
    recovery_window: Option<String>,
    recovery_backoff_multiplier: Option<f64>,
    recovery_backoff_max: Option<String>,
    treat_rate_limit_as_error: Option<bool>,
    latency_p95_ms: Option<i64>,
}

#[derive(Debug, Default, Deserialize)]
struct RawRouting {
    strategy: Option<String>,
    fallback: Option<bool>,
    max_attempts: Option<i64>,
    ewma_decay: Option<f64>,
    min_samples: Option<i64>,
    request_timeout: Option<String>,
    #[serde(default)]
    groups: Vec<RawGroup>,
}

#[derive(Debug, Default, Deserialize)]
struct RawGroup {
    name: Option<String>,
    #[serde(default)]
    models: Vec<String>,
    strategy: Option<String>,
    #[serde(default)]
    providers: Vec<String>,
}

/// The timeout of a provider call when the config gives none.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(60);

/// Azure OpenAI's `api-version` when the config gives none.
pub const DEFAULT_AZURE_API_VERSION: &str = "2024-10-21";

impl Config {
    /// Reads and validates the file at `path`.
    pub fn load(path: &Path, env: &dyn Env, strict: bool) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            ConfigError::NotFound(format!(
                "{}: cannot read the config file: {e}",
                path.display()
            ))
        })?;
        Self::parse(&text, env, strict).map_err(|e| match e {
            ConfigError::Malformed(m) => ConfigError::Malformed(format!("{}: {m}", path.display())),
            ConfigError::Invalid(list) => ConfigError::Invalid(
                list.into_iter()
                    .map(|m| format!("{}: {m}", path.display()))
                    .collect(),
            ),
            other => other,
        })
    }

    /// Parses and validates config text.
    pub fn parse(text: &str, env: &dyn Env, strict: bool) -> Result<Config, ConfigError> {
        let mut value: Value = if text.trim().is_empty() {
            Value::Object(Default::default())
        } else {
            serde_saphyr::from_str(text).map_err(|e| {
                let msg = e.to_string();
                let first = msg
                    .lines()
                    .find(|l| !l.trim().is_empty())
                    .unwrap_or("")
                    .trim()
                    .to_owned();
                ConfigError::Malformed(format!("malformed YAML: {first}"))
            })?
        };
        if value.is_null() {
            value = Value::Object(Default::default());
        }
        if !value.is_object() {
            return Err(ConfigError::Invalid(vec![
                "(top level): expected a mapping of settings".into(),
            ]));
        }
        let mut errors = Vec::new();
        substitute(&mut value, &mut String::new(), env, &mut errors);
        // Go on after substitution errors, to report everything at once; the
        // fields that failed to expand are not judged again below.
        let failed: Vec<String> = errors
            .iter()
            .filter_map(|e| e.split_once(": ").map(|(path, _)| format!("{path}:")))
            .collect();

        let mut unknown = Vec::new();
        let parsed: Result<RawConfig, _> = {
            let mut track = |path: serde_ignored::Path<'_>| unknown.push(ignored_path(&path));
            let de = serde_ignored::Deserializer::new(&value, &mut track);
            serde_path_to_error::deserialize(de)
        };
        let raw = match parsed {
            Ok(raw) => raw,
            Err(e) => {
                let path = e.path().to_string();
                let path = if path == "." {
                    "(top level)".to_owned()
                } else {
                    path
                };
                errors.push(format!("{path}: {}", e.inner()));
                return Err(ConfigError::Invalid(errors));
            }
        };
        let warnings: Vec<String> = unknown
            .iter()
            .map(|p| format!("{p}: unknown field"))
            .collect();
        if strict {
            errors.extend(warnings.iter().cloned());
        }
        let mut semantic = Vec::new();
        let config = validate(raw, warnings, &mut semantic);
        errors.extend(
            semantic
                .into_iter()
                .filter(|e| !failed.iter().any(|f| e.starts_with(f.as_str()))),
        );
        if errors.is_empty() {
            Ok(config)
        } else {
            Err(ConfigError::Invalid(errors))
        }
    }
}

fn ignored_path(path: &serde_ignored::Path<'_>) -> String {
    use serde_ignored::Path as P;
    match path {
        P::Root => String::new(),
        P::Seq { parent, index } => format!("{}[{index}]", ignored_path(parent)),
        P::Map { parent, key } => {
            let p = ignored_path(parent);
            if p.is_empty() {
                key.clone()
            } else {
                format!("{p}.{key}")
            }
        }
        P::Some { parent } | P::NewtypeStruct { parent } | P::NewtypeVariant { parent } => {
            ignored_path(parent)
        }
    }
}

/// Replaces `${VAR}`, `${VAR:-default}` and `$VAR` in every string (`$$` is a
/// literal `$`). A string that was one whole reference takes the type its value
/// reads as (`max: ${N}` with N=3 is the number 3), as YAML would.
fn substitute(v: &mut Value, path: &mut String, env: &dyn Env, errors: &mut Vec<String>) {
    match v {
        Value::String(s) if s.contains('$') => match expand(s, env) {
            Ok((out, whole)) => {
                *v = if whole {
                    retype(out)
                } else {
                    Value::String(out)
                };
            }
            Err(e) => errors.push(format!(
                "{}: {e}",
                if path.is_empty() { "(top level)" } else { path }
            )),
        },
        Value::Array(items) => {
            for (i, item) in items.iter_mut().enumerate() {
                let len = path.len();
                path.push_str(&format!("[{i}]"));
                substitute(item, path, env, errors);
                path.truncate(len);
            }
        }
        Value::Object(map) => {
            for (k, item) in map.iter_mut() {
                let len = path.len();
                if !path.is_empty() {
                    path.push('.');
                }
                path.push_str(k);
                substitute(item, path, env, errors);
                path.truncate(len);
            }
        }
        _ => {}
    }
}

fn retype(s: String) -> Value {
    if let Ok(n) = s.parse::<i64>() {
        return Value::from(n);
    }
    if let Ok(f) = s.parse::<f64>()
        && f.is_finite()
    {
        return Value::from(f);
    }
    match s.as_str() {
        "true" => Value::Bool(true),
        "false" => Value::Bool(false),
        _ => Value::String(s),
    }
}

/// Expands references in `s`; also says whether `s` was one whole reference.
fn expand(s: &str, env: &dyn Env) -> Result<(String, bool), String> {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    let mut references = 0;
    let mut literal = false;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        literal |= i > 0;
        let after = &rest[i + 1..];
        if let Some(tail) = after.strip_prefix('$') {
            out.push('$');
            literal = true;
            rest = tail;
        } else if let Some(body) = after.strip_prefix('{') {
            let end = body
                .find('}')
                .ok_or_else(|| format!("unclosed \"${{\" in \"{s}\""))?;
            let inner = &body[..end];
            let (name, default) = match inner.split_once(":-") {
                Some((n, d)) => (n, Some(d)),
                None => (inner, None),
            };
            if !valid_name(name) {
                return Err(format!(
                    "\"${{{inner}}}\" is not a valid variable reference"
                ));
            }
            match (env.var(name), default) {
                (Some(v), _) => out.push_str(&v),
                (None, Some(d)) => out.push_str(d),
                (None, None) => return Err(format!("environment variable {name} is not set")),
            }
            references += 1;
            rest = &body[end + 1..];
        } else {
            let len = after
                .char_indices()
                .find(|&(_, c)| !(c.is_ascii_alphanumeric() || c == '_'))
                .map_or(after.len(), |(j, _)| j);
            let name = &after[..len];
            if !valid_name(name) {
                // A lone `$` that starts no name is kept as it is.
                out.push('$');
                literal = true;
                rest = after;
                continue;
            }
            match env.var(name) {
                Some(v) => out.push_str(&v),
                None => return Err(format!("environment variable {name} is not set")),
            }
            references += 1;
            rest = &after[len..];
        }
    }
    literal |= !rest.is_empty();
    out.push_str(rest);
    Ok((out, references == 1 && !literal))
}

fn valid_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// Parses `500ms`, `30s`, `5m`, `1h` or a bare number of seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let value: f64 = num
        .parse()
        .map_err(|_| format!("\"{s}\" is not a duration (try 500ms, 30s, 5m)"))?;
    let secs = match unit {
        "ms" => value / 1000.0,
        "" | "s" => value,
        "m" => value * 60.0,
        "h" => value * 3600.0,
        _ => {
            return Err(format!(
                "\"{s}\": unknown unit \"{unit}\" (use ms, s, m or h)"
            ));
        }
    };
    Duration::try_from_secs_f64(secs).map_err(|_| format!("\"{s}\" is out of range"))
}

fn check_url(url: &str) -> Result<String, String> {
    let parsed = url::Url::parse(url).map_err(|e| format!("\"{url}\" is not a URL: {e}"))?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err(format!("\"{url}\": the scheme must be http or https"));
    }
    if parsed.host_str().is_none_or(str::is_empty) {
        return Err(format!("\"{url}\" has no host"));
    }
    Ok(url.trim_end_matches('/').to_owned())
}

// ---- stage 2: validation --------------------------------------------------

/// `base` with the fields `raw` sets, each checked; errors are named under `at`.
/// `rate_limits` of a provider, key or team, at the YAML path `at`.
fn rate_limits(
    raw: Option<&RawRateLimits>,
    at: &str,
    errors: &mut Vec<String>,
) -> crate::ratelimit::RateLimits {
    let mut limits = crate::ratelimit::RateLimits::default();
    let Some(r) = raw else {
        return limits;
    };
    match r.requests_per_minute {
        None => {}
        Some(n) if n >= 1 && n <= i64::from(u32::MAX) => {
            limits.requests_per_minute = Some(n as u32)
        }
        Some(n) => errors.push(format!(
            "{at}.requests_per_minute: {n} must be a whole number ≥ 1"
        )),
    }
    match r.tokens_per_minute {
        None => {}
        Some(n) if n >= 1 => limits.tokens_per_minute = Some(n as u64),
        Some(n) => errors.push(format!(
            "{at}.tokens_per_minute: {n} must be a whole number ≥ 1"
        )),
    }
    limits
}

/// A `budget` at the YAML path `at`.
fn budget(raw: Option<&RawBudget>, at: &str, errors: &mut Vec<String>) -> Option<BudgetSpec> {
    let b = raw?;
    let usd = match b.usd {
        Some(v) if v.is_finite() && v > 0.0 => Some(v),
        Some(v) => {
            errors.push(format!("{at}.usd: {v} must be a number > 0"));
            None
        }
        None => {
            errors.push(format!("{at}.usd: missing (dollars per period)"));
            None
        }
    };
    let period = match b.period.as_deref() {
        None => Some(Period::Total),
        Some(p) => match Period::parse(p) {
            Some(p) => Some(p),
            None => {
                errors.push(format!(
                    "{at}.period: unknown period \"{p}\" (expected one of daily, weekly, monthly, total)"
                ));
                None
            }
        },
    };
    Some(BudgetSpec {
        usd: usd?,
        period: period?,
    })
}

/// `auth` and `teams`: every key's secret hashed, its team known.
fn auth_settings(
    raw: Option<RawAuth>,
    teams: Vec<RawTeam>,
    errors: &mut Vec<String>,
) -> AuthSettings {
    let mut settings = AuthSettings {
        default_reserve_tokens: crate::callers::DEFAULT_RESERVE_TOKENS,
        ..AuthSettings::default()
    };
    for (i, t) in teams.into_iter().enumerate() {
        let at = format!("teams[{i}]");
        let name = t.name.unwrap_or_default();
        if !crate::callers::valid_key_name(&name) {
            errors.push(format!(
                "{at}.name: \"{name}\" must be 1-64 letters, digits, '-', '_' or '.'"
            ));
        } else if settings.teams.iter().any(|x| x.name == name) {
            errors.push(format!("{at}.name: duplicate team name \"{name}\""));
        }
        settings.teams.push(crate::callers::TeamSpec {
            budget: budget(t.budget.as_ref(), &format!("{at}.budget"), errors),
            rate_limits: rate_limits(t.rate_limits.as_ref(), &format!("{at}.rate_limits"), errors),
            name,
        });
    }
    let Some(raw) = raw else {
        return settings;
    };
    settings.required = raw.required.unwrap_or(false);
    match raw.default_reserve_tokens {
        None => {}
        Some(n) if n >= 1 => settings.default_reserve_tokens = n as u64,
        Some(n) => errors.push(format!(
            "auth.default_reserve_tokens: {n} must be a whole number ≥ 1"
        )),
    }
    for (i, k) in raw.keys.into_iter().enumerate() {
        let at = format!("auth.keys[{i}]");
        let name = k.name.unwrap_or_default();
        if !crate::callers::valid_key_name(&name) {
            errors.push(format!(
                "{at}.name: \"{name}\" must be 1-64 letters, digits, '-', '_' or '.'"
            ));
        } else if settings.keys.iter().any(|x| x.name == name) {
            errors.push(format!("{at}.name: duplicate key name \"{name}\""));
        }
        let sha256 = match (k.key.as_deref(), k.key_sha256.as_deref()) {
            (Some(secret), None)
                if secret.trim() != secret || secret.contains(char::is_whitespace) =>
            {
                errors.push(format!(
                    "{at}.key: contains whitespace (a stray space or newline from the variable?)"
                ));
                None
            }
            (Some(secret), None) if !secret.is_empty() => Some(crate::callers::hash_secret(secret)),
            (None, Some(hex)) => {
                let h = crate::callers::parse_hex(hex.trim());
                if h.is_none() {
                    errors.push(format!("{at}.key_sha256: expected 64 hex digits"));
                }
                h
            }
            (Some(_), Some(_)) => {
                errors.push(format!("{at}: give key or key_sha256, not both"));
                None
            }
            _ => {
                errors.push(format!(
                    "{at}.key: missing (the secret, usually \"${{VAR}}\", or key_sha256)"
                ));
                None
            }
        };
        if let Some(h) = sha256
            && settings.keys.iter().any(|x| x.sha256 == h)
        {
            errors.push(format!("{at}.key: the same secret as another key"));
        }
        if let Some(team) = &k.team
            && !settings.teams.iter().any(|t| t.name == *team)
        {
            errors.push(format!("{at}.team: no team is named \"{team}\""));
        }
        for (j, m) in k.models.iter().enumerate() {
            if m.trim().is_empty() {
                errors.push(format!("{at}.models[{j}]: empty model name"));
            }
        }
        let expires_at =
            k.expires_at
                .as_deref()
                .and_then(|t| match crate::callers::parse_rfc3339(t) {
                    Some(ms) => Some(ms.div_euclid(1000)),
                    None => {
                        errors.push(format!(
                        "{at}.expires_at: \"{t}\" is not an RFC 3339 time (2027-01-31T00:00:00Z)"
                    ));
                        None
                    }
                });
        settings.keys.push(KeySpec {
            budget: budget(k.budget.as_ref(), &format!("{at}.budget"), errors),
            rate_limits: rate_limits(k.rate_limits.as_ref(), &format!("{at}.rate_limits"), errors),
            name,
            sha256: sha256.unwrap_or([0; 32]),
            team: k.team,
            models: k.models,
            expires_at,
        });
    }
    settings
}

fn breaker_config(
    base: &BreakerConfig,
    raw: &RawBreaker,
    at: &str,
    errors: &mut Vec<String>,
) -> BreakerConfig {
    let mut c = base.clone();
    let mut count = |field: &str, v: Option<i64>, min: i64, into: &mut u32| {
        if let Some(n) = v {
            match u32::try_from(n) {
                Ok(n) if i64::from(n) >= min => *into = n,
                _ => errors.push(format!("{at}.{field}: {n} must be a whole number ≥ {min}")),
            }
        }
    };
    count(
        "consecutive_failures",
        raw.consecutive_failures,
        1,
        &mut c.consecutive_failures,
    );
    count("min_requests", raw.min_requests, 1, &mut c.min_requests);
    let mut window = u32::try_from(c.window.as_secs()).unwrap_or(u32::MAX);
    count("window_seconds", raw.window_seconds, 1, &mut window);
    c.window = Duration::from_secs(u64::from(window));
    if let Some(t) = raw.error_rate_threshold {
        if t > 0.0 && t <= 1.0 {
            c.error_rate_threshold = t;
        } else {
            errors.push(format!("{at}.error_rate_threshold: {t} is not in (0, 1]"));
        }
    }
    if let Some(m) = raw.recovery_backoff_multiplier {
        if (1.0..=100.0).contains(&m) {
            c.recovery_backoff_multiplier = m;
        } else {
            errors.push(format!(
                "{at}.recovery_backoff_multiplier: {m} is not in [1, 100]"
            ));
        }
    }
    let mut duration = |field: &str, v: &Option<String>, into: &mut Duration| {
        if let Some(s) = v {
            match parse_duration(s) {
                Ok(d) if !d.is_zero() => *into = d,
                Ok(_) => errors.push(format!("{at}.{field}: must be more than 0")),
                Err(e) => errors.push(format!("{at}.{field}: {e}")),
            }
        }
    };
    duration(
        "recovery_window",
        &raw.recovery_window,
        &mut c.recovery_window,
    );
    duration(
        "recovery_backoff_max",
        &raw.recovery_backoff_max,
        &mut c.recovery_backoff_max,
    );
    if let Some(b) = raw.treat_rate_limit_as_error {
        c.treat_rate_limit_as_error = b;
    }
    match raw.latency_p95_ms {
        None => {}
        Some(n) if n >= 1 => c.latency_p95_ms = Some(n as u64),
        Some(n) => errors.push(format!(
            "{at}.latency_p95_ms: {n} must be a whole number ≥ 1"
        )),
    }
    c
}

fn validate(raw: RawConfig, warnings: Vec<String>, errors: &mut Vec<String>) -> Config {
    let global_breaker = match &raw.circuit_breaker {
        Some(b) => breaker_config(&BreakerConfig::default(), b, "circuit_breaker", errors),
        None => BreakerConfig::default(),
    };
    let mut providers = Vec::with_capacity(raw.providers.len());
    let mut seen: HashMap<String, usize> = HashMap::new();
    for (i, p) in raw.providers.into_iter().enumerate() {
        let at = |field: &str| format!("providers[{i}].{field}");
        let name = match p.name.as_deref().map(str::trim) {
            Some(n) if !n.is_empty() => n.to_owned(),
            _ => {
                errors.push(format!(
                    "{}: missing (every provider needs a unique name)",
                    at("name")
                ));
                String::new()
            }
        };
        if !name.is_empty() {
            if let Some(first) = seen.get(&name) {
                errors.push(format!(
                    "{}: duplicate provider name \"{name}\" (also providers[{first}])",
                    at("name")
                ));
            } else {
                seen.insert(name.clone(), i);
            }
        }
        let kind = match p.kind.as_deref() {
            None => {
                errors.push(format!(
                    "{}: missing (expected one of {})",
                    at("type"),
                    ProviderKind::NAMES.join(", ")
                ));
                None
            }
            Some(k) => match ProviderKind::parse(k) {
                Some(kind) => Some(kind),
                None => {
                    errors.push(format!(
                        "{}: unknown provider type \"{k}\" (expected one of {})",
                        at("type"),
                        ProviderKind::NAMES.join(", ")
                    ));
                    None
                }
            },
        };
        let base_url = match p.base_url.as_deref() {
            Some(u) => match check_url(u) {
                Ok(u) => Some(u),
                Err(e) => {
                    errors.push(format!("{}: {e}", at("base_url")));
                    None
                }
            },
            None => kind
                .and_then(ProviderKind::default_base_url)
                .map(str::to_owned),
        };
        let api_key = p.api_key.filter(|k| !k.is_empty()).map(Secret::new);
        if let Some(kind) = kind {
            let hosted_default = p.base_url.is_none();
            let needs_key = match kind {
                ProviderKind::Anthropic | ProviderKind::AzureOpenAi => true,
                // Any OpenAI-compatible server may run without a key; OpenAI does not.
                ProviderKind::OpenAi => hosted_default,
                ProviderKind::Ollama | ProviderKind::Echo => false,
            };
            if needs_key && api_key.is_none() {
                errors.push(format!(
                    "{}: missing (a {} provider needs an API key)",
                    at("api_key"),
                    kind.as_str()
                ));
            }
            if kind == ProviderKind::AzureOpenAi && p.base_url.is_none() {
                errors.push(format!(
                    "{}: missing (the Azure OpenAI resource root, e.g. https://NAME.openai.azure.com)",
                    at("base_url")
                ));
            }
            if kind == ProviderKind::AzureOpenAi && p.models.is_empty() {
                errors.push(format!(
                    "{}: missing (the deployment names of this resource)",
                    at("models")
                ));
            }
        }
        let mut duration = |field: &str, v: Option<&str>, default: Duration| match v {
            None => default,
            Some(s) => match parse_duration(s) {
                Ok(d) if field == "timeout" && d.is_zero() => {
                    errors.push(format!("{}: must be more than 0", at(field)));
                    default
                }
                Ok(d) => d,
                Err(e) => {
                    errors.push(format!("{}: {e}", at(field)));
                    default
                }
            },
        };
        let timeout = duration("timeout", p.timeout.as_deref(), DEFAULT_TIMEOUT);
        let delay = duration("delay", p.delay.as_deref(), Duration::ZERO);
        let mut models = p.models;
        for (j, m) in models.iter().enumerate() {
            if m.trim().is_empty() {
                errors.push(format!("{}[{j}]: empty model name", at("models")));
            }
        }
        if kind == Some(ProviderKind::Echo) && models.is_empty() {
            models.push(crate::echo::ECHO_MODEL.to_owned());
        }
        for (alias, target) in &p.model_aliases {
            if alias.trim().is_empty() || target.trim().is_empty() {
                errors.push(format!(
                    "{}: aliases and their targets must not be empty",
                    at("model_aliases")
                ));
            }
        }
        let api_version = match (kind, p.api_version) {
            (Some(ProviderKind::AzureOpenAi), None) => Some(DEFAULT_AZURE_API_VERSION.to_owned()),
            (_, v) => v,
        };
        let circuit_breaker = match &p.circuit_breaker {
            Some(b) => breaker_config(&global_breaker, b, &at("circuit_breaker"), errors),
            None => global_breaker.clone(),
        };
        let rate_limits = rate_limits(p.rate_limits.as_ref(), &at("rate_limits"), errors);
        let mut health_check = crate::health::HealthCheckConfig {
            // Echo is always up: no need to ask it.
            disabled: kind == Some(ProviderKind::Echo),
            ..crate::health::HealthCheckConfig::default()
        };
        if let Some(h) = &p.health_check {
            for (field, value, into) in [
                ("interval", &h.interval, &mut health_check.interval),
                ("timeout", &h.timeout, &mut health_check.timeout),
            ] {
                if let Some(v) = value {
                    match parse_duration(v) {
                        Ok(d) if !d.is_zero() => *into = d,
                        Ok(_) => errors.push(format!(
                            "{}.{field}: must be more than 0",
                            at("health_check")
                        )),
                        Err(e) => errors.push(format!("{}.{field}: {e}", at("health_check"))),
                    }
                }
            }
            if let Some(d) = h.disabled {
                health_check.disabled = d;
            }
        }
        if let Some(kind) = kind {
            providers.push(ProviderConfig {
                name,
                kind,
                api_key,
                base_url,
                timeout,
                models,
                model_aliases: p.model_aliases.into_iter().collect(),
                api_version,
                delay,
                circuit_breaker,
                rate_limits,
                health_check,
            });
        }
    }

    let mut routing = RoutingConfig::default();
    if let Some(r) = raw.routing {
        if let Some(s) = r.strategy {
            match Strategy::parse(&s) {
                Some(st) => routing.strategy = st,
                None => errors.push(format!(
                    "routing.strategy: unknown strategy \"{s}\" (expected one of {})",
                    Strategy::NAMES.join(", ")
                )),
            }
        }
        if let Some(f) = r.fallback {
            routing.fallback = f;
        }
        match r.max_attempts {
            None => {}
            Some(n) if (1..=100).contains(&n) => routing.max_attempts = n as usize,
            Some(n) => errors.push(format!(
                "routing.max_attempts: {n} is not between 1 and 100"
            )),
        }
        match r.ewma_decay {
            None => {}
            Some(d) if d > 0.0 && d <= 1.0 => routing.ewma_decay = d,
            Some(d) => errors.push(format!("routing.ewma_decay: {d} is not in (0, 1]")),
        }
        match r.min_samples {
            None => {}
            Some(n) if (0..=1_000_000).contains(&n) => routing.min_samples = n as u32,
            Some(n) => errors.push(format!(
                "routing.min_samples: {n} must be a whole number from 0 to 1000000"
            )),
        }
        if let Some(t) = &r.request_timeout {
            match parse_duration(t) {
                Ok(d) if !d.is_zero() => routing.request_timeout = Some(d),
                Ok(_) => errors.push("routing.request_timeout: must be more than 0".to_owned()),
                Err(e) => errors.push(format!("routing.request_timeout: {e}")),
            }
        }
        let mut names = std::collections::HashSet::new();
        for (i, g) in r.groups.into_iter().enumerate() {
            let at = format!("routing.groups[{i}]");
            let name = match g.name.as_deref().map(str::trim) {
                Some(n) if !n.is_empty() => n.to_owned(),
                _ => {
                    errors.push(format!("{at}.name: missing"));
                    String::new()
                }
            };
            if !name.is_empty() && !names.insert(name.clone()) {
                errors.push(format!("{at}.name: duplicate group name \"{name}\""));
            }
            if g.models.is_empty() || g.models.iter().any(|m| m.trim().is_empty()) {
                errors.push(format!(
                    "{at}.models: a group needs at least one (non-empty) model name"
                ));
            }
            let strategy = g.strategy.as_deref().and_then(|st| {
                let parsed = Strategy::parse(st);
                if parsed.is_none() {
                    errors.push(format!(
                        "{at}.strategy: unknown strategy \"{st}\" (expected one of {})",
                        Strategy::NAMES.join(", ")
                    ));
                }
                parsed
            });
            for (j, p) in g.providers.iter().enumerate() {
                if !seen.contains_key(p) {
                    errors.push(format!("{at}.providers[{j}]: no provider is named \"{p}\""));
                }
            }
            routing.groups.push(crate::router::RouteGroup {
                name: name.into(),
                models: g.models,
                strategy,
                providers: g.providers,
            });
        }
    }

    for (provider, models) in &raw.pricing {
        if !seen.contains_key(provider) {
            errors.push(format!(
                "pricing.{provider}: no provider is named \"{provider}\""
            ));
        }
        for (model, price) in models {
            for (field, v) in [
                ("input_per_million", price.input_per_million),
                ("output_per_million", price.output_per_million),
            ] {
                if !(v.is_finite() && v >= 0.0) {
                    errors.push(format!(
                        "pricing.{provider}.{model}.{field}: {v} must be a number ≥ 0"
                    ));
                }
            }
        }
    }

    let mut addr = |field: &str, v: Option<String>| {
        if let Some(a) = &v
            && !a.contains(':')
        {
            errors.push(format!("{field}: \"{a}\" is not HOST:PORT or :PORT"));
        }
        v
    };
    let listen = addr("listen", raw.listen);
    let grpc_listen = addr("grpc_listen", raw.grpc_listen);
    let management_listen = addr("management_listen", raw.management_listen);
    let tokentrace = match raw.tokentrace {
        Some(t) if !t.is_empty() => match check_url(&t) {
            Ok(u) => Some(u),
            Err(e) => {
                errors.push(format!("tokentrace: {e}"));
                None
            }
        },
        _ => None,
    };

    let tls = raw.tls.and_then(|t| {
        let mut path = |field: &str, v: Option<String>| match v.as_deref().map(str::trim) {
            Some(p) if !p.is_empty() => Some(std::path::PathBuf::from(p)),
            _ => {
                errors.push(format!("tls.{field}: missing (a PEM file)"));
                None
            }
        };
        let cert = path("cert", t.cert);
        let key = path("key", t.key);
        Some(TlsConfig {
            cert: cert?,
            key: key?,
        })
    });

    let auth = auth_settings(raw.auth, raw.teams, errors);
    let ledger_enabled = raw.ledger.as_ref().and_then(|l| l.enabled).unwrap_or(true);
    if !ledger_enabled
        && (auth.keys.iter().any(|k| k.budget.is_some())
            || auth.teams.iter().any(|t| t.budget.is_some()))
    {
        errors.push(
            "ledger.enabled: false, but budgets are set: their spend would reset on every restart"
                .into(),
        );
    }
    let ledger_path = match raw.ledger.and_then(|l| l.path) {
        Some(p) if p.trim().is_empty() => {
            errors.push("ledger.path: empty (a file name, or leave it out)".into());
            None
        }
        p => p.map(std::path::PathBuf::from),
    };

    Config {
        listen,
        grpc_listen,
        management_listen,
        tokentrace,
        tls,
        providers,
        routing,
        pricing: raw.pricing,
        auth,
        ledger_path,
        ledger_disabled: !ledger_enabled,
        warnings,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    const SPEC_EXAMPLE: &str = r#"
listen: ":8600"
grpc_listen: ":8601"
tokentrace: "http://localhost:8700"
providers:
  - name: openai                 # unique
    type: openai                 # echo | openai | anthropic | azure_openai | ollama
    api_key: "${OPENAI_API_KEY}"
    base_url: "https://api.openai.com/v1"   # any OpenAI-compatible server
    timeout: 60s
    models: [gpt-4o, gpt-4o-mini]
    model_aliases: {fast: gpt-4o-mini}
  - name: anthropic
    type: anthropic
    api_key: "${ANTHROPIC_API_KEY}"
    model_aliases: {gpt-4o: claude-sonnet-4-5}
routing:
  strategy: priority             # priority | round_robin | least_latency | cost_weighted | random
  fallback: true                 # on a retryable failure, try the next eligible provider
pricing:                         # USD per million tokens; overrides the built-in table
  openai: {gpt-4o: {input_per_million: 2.5, output_per_million: 10.0}}
"#;

    fn invalid(text: &str, e: &HashMap<String, String>, strict: bool) -> Vec<String> {
        match Config::parse(text, e, strict) {
            Err(ConfigError::Invalid(list)) => list,
            other => panic!("expected Invalid, got {other:?}"),
        }
    }

    #[test]
    fn request_timeout_and_tls_are_read() {
        let text = "routing: {request_timeout: 90s}\ntls: {cert: /etc/infermux/cert.pem, key: /etc/infermux/key.pem}\n";
        let c = Config::parse(text, &env(&[]), true).unwrap();
        assert_eq!(c.routing.request_timeout, Some(Duration::from_secs(90)));
        let tls = c.tls.unwrap();
        assert_eq!(tls.cert, std::path::Path::new("/etc/infermux/cert.pem"));
        assert_eq!(tls.key, std::path::Path::new("/etc/infermux/key.pem"));
        let c = Config::parse("providers: []\n", &env(&[]), true).unwrap();
        assert_eq!((c.routing.request_timeout, c.tls), (None, None));
    }

    #[test]
    fn the_spec_example_loads() {
        let e = env(&[("OPENAI_API_KEY", "sk-1"), ("ANTHROPIC_API_KEY", "ak-2")]);
        let c = Config::parse(SPEC_EXAMPLE, &e, true).unwrap();
        assert_eq!(c.listen.as_deref(), Some(":8600"));
        assert_eq!(c.tokentrace.as_deref(), Some("http://localhost:8700"));
        assert_eq!(c.providers.len(), 2);
        let o = &c.providers[0];
        assert_eq!((o.name.as_str(), o.kind), ("openai", ProviderKind::OpenAi));
        assert_eq!(o.api_key.as_ref().unwrap().expose(), "sk-1");
        assert_eq!(o.timeout, Duration::from_secs(60));
        assert_eq!(o.models, ["gpt-4o", "gpt-4o-mini"]);
        assert_eq!(
            o.model_aliases,
            [("fast".to_owned(), "gpt-4o-mini".to_owned())]
        );
        let a = &c.providers[1];
        assert_eq!(a.base_url.as_deref(), Some("https://api.anthropic.com"));
        assert_eq!(
            c.routing,
            RoutingConfig {
                strategy: Strategy::Priority,
                fallback: true,
                max_attempts: 3,
                ewma_decay: 0.3,
                min_samples: 5,
                groups: Vec::new(),
                request_timeout: None,
            }
        );
        assert_eq!(c.pricing["openai"]["gpt-4o"].output_per_million, 10.0);
        assert!(c.warnings.is_empty());
        assert!(
            !format!("{c:?}").contains("sk-1"),
            "secrets stay out of Debug"
        );
    }

    #[test]
    fn substitution_forms() {
        let e = env(&[("A", "x"), ("N", "3")]);
        assert_eq!(expand("${A}", &e).unwrap(), ("x".into(), true));
        assert_eq!(expand("$A", &e).unwrap(), ("x".into(), true));
        assert_eq!(
            expand("pre-${A}-$A", &e).unwrap(),
            ("pre-x-x".into(), false)
        );
        assert_eq!(
            expand("${MISSING:-fallback}", &e).unwrap(),
            ("fallback".into(), true)
        );
        assert_eq!(expand("${A:-fallback}", &e).unwrap(), ("x".into(), true));
        assert_eq!(expand("cost $$5", &e).unwrap(), ("cost $5".into(), false));
        assert_eq!(expand("$ 5", &e).unwrap(), ("$ 5".into(), false));
        assert!(expand("${MISSING}", &e).unwrap_err().contains("MISSING"));
        assert!(expand("$MISSING", &e).unwrap_err().contains("MISSING"));
        assert!(expand("${A", &e).is_err());
        assert!(expand("${1A}", &e).is_err());
    }

    #[test]
    fn an_unset_variable_is_an_error_naming_it_and_the_field() {
        let errors = invalid(SPEC_EXAMPLE, &env(&[("OPENAI_API_KEY", "k")]), false);
        assert_eq!(
            errors,
            ["providers[1].api_key: environment variable ANTHROPIC_API_KEY is not set"]
        );
    }

    #[test]
    fn whole_references_take_their_value_type() {
        let text = "providers:\n  - name: e\n    type: echo\nrouting:\n  fallback: ${FB}\n";
        let c = Config::parse(text, &env(&[("FB", "false")]), true).unwrap();
        assert!(!c.routing.fallback);
    }

    #[test]
    fn semantic_errors_are_collected_with_their_paths() {
        let text = r#"
providers:
  - name: a
    type: opnai
  - name: a
    type: echo
    timeout: soon
  - type: anthropic
  - name: az
    type: azure_openai
    api_key: k
  - name: bad-url
    type: openai
    base_url: "ftp://example.com"
routing:
  strategy: fastest
  max_attempts: 0
  request_timeout: 0s
tls: {cert: cert.pem}
pricing:
  nobody: {m: {input_per_million: -1, output_per_million: 1}}
"#;
        let errors = invalid(text, &env(&[]), false);
        let want = [
            "providers[0].type: unknown provider type \"opnai\" (expected one of echo, openai, anthropic, azure_openai, ollama)",
            "providers[1].name: duplicate provider name \"a\" (also providers[0])",
            "providers[1].timeout: \"soon\" is not a duration",
            "providers[2].name: missing",
            "providers[2].api_key: missing (a anthropic provider needs an API key)",
            "providers[3].base_url: missing",
            "providers[3].models: missing",
            "providers[4].base_url: \"ftp://example.com\": the scheme must be http or https",
            "routing.strategy: unknown strategy \"fastest\"",
            "routing.max_attempts: 0 is not between 1 and 100",
            "routing.request_timeout: must be more than 0",
            "tls.key: missing (a PEM file)",
            "pricing.nobody: no provider is named \"nobody\"",
            "pricing.nobody.m.input_per_million: -1 must be a number ≥ 0",
        ];
        for w in want {
            assert!(
                errors.iter().any(|e| e.starts_with(w)),
                "missing {w:?} in {errors:#?}"
            );
        }
        assert_eq!(errors.len(), want.len(), "{errors:#?}");
    }

    #[test]
    fn breaker_settings_have_global_defaults_and_provider_overrides() {
        let text = "circuit_breaker:\n  consecutive_failures: 3\n  recovery_window: 10s\nproviders:\n  - name: a\n    type: echo\n  - name: b\n    type: echo\n    circuit_breaker: {consecutive_failures: 7, treat_rate_limit_as_error: true}\n";
        let c = Config::parse(text, &env(&[]), true).unwrap();
        assert_eq!(c.providers[0].circuit_breaker.consecutive_failures, 3);
        assert_eq!(
            c.providers[0].circuit_breaker.recovery_window,
            Duration::from_secs(10)
        );
        assert_eq!(c.providers[1].circuit_breaker.consecutive_failures, 7);
        assert_eq!(
            c.providers[1].circuit_breaker.recovery_window,
            Duration::from_secs(10),
            "inherited"
        );
        assert!(c.providers[1].circuit_breaker.treat_rate_limit_as_error);
        let bad = "circuit_breaker:\n  error_rate_threshold: 1.5\n  consecutive_failures: -1\nproviders:\n  - name: a\n    type: echo\n    circuit_breaker: {recovery_window: 0s, min_requests: 0}\n";
        let errors = invalid(bad, &env(&[]), false);
        assert_eq!(
            errors,
            [
                "circuit_breaker.consecutive_failures: -1 must be a whole number ≥ 1",
                "circuit_breaker.error_rate_threshold: 1.5 is not in (0, 1]",
                "providers[0].circuit_breaker.min_requests: 0 must be a whole number ≥ 1",
                "providers[0].circuit_breaker.recovery_window: must be more than 0",
            ]
        );
    }

    #[test]
    fn rate_limits_are_read_and_checked() {
        let text = "providers:\n  - name: a\n    type: echo\n    rate_limits: {requests_per_minute: 600, tokens_per_minute: 90000}\n";
        let c = Config::parse(text, &env(&[]), true).unwrap();
        assert_eq!(c.providers[0].rate_limits.requests_per_minute, Some(600));
        assert_eq!(c.providers[0].rate_limits.tokens_per_minute, Some(90_000));
        let bad = "providers:\n  - name: a\n    type: echo\n    rate_limits: {requests_per_minute: 0, tokens_per_minute: -5}\n";
        assert_eq!(
            invalid(bad, &env(&[]), false),
            [
                "providers[0].rate_limits.requests_per_minute: 0 must be a whole number ≥ 1",
                "providers[0].rate_limits.tokens_per_minute: -5 must be a whole number ≥ 1",
            ]
        );
    }

    #[test]
    fn callers_are_read_and_checked() {
        let text = "teams:\n  - name: web\n    budget: {usd: 100, period: monthly}\n    rate_limits: {tokens_per_minute: 5000}\nauth:\n  required: true\n  default_reserve_tokens: 256\n  keys:\n    - name: app\n      key: ${APP_KEY}\n      team: web\n      models: [\"gpt-4o*\"]\n      budget: {usd: 5, period: daily}\n      expires_at: 2027-01-31T00:00:00Z\n    - name: ci\n      key_sha256: 7f83b1657ff1fc53b92dc18148a1d65dfc2d4b1fa3d677284addd200126d9069\nledger:\n  path: spend/ledger.db\n";
        let c = Config::parse(text, &env(&[("APP_KEY", "sk-app")]), true).unwrap();
        let a = &c.auth;
        assert!(a.required);
        assert_eq!(a.default_reserve_tokens, 256);
        assert_eq!(a.keys[0].sha256, crate::callers::hash_secret("sk-app"));
        assert_eq!(a.keys[0].team.as_deref(), Some("web"));
        assert_eq!(a.keys[0].expires_at, Some(1_801_353_600));
        assert_eq!(
            a.keys[0].budget,
            Some(BudgetSpec {
                usd: 5.0,
                period: Period::Daily
            })
        );
        assert_eq!(
            a.keys[1].sha256,
            crate::callers::hash_secret("Hello World!")
        );
        assert_eq!(a.teams[0].rate_limits.tokens_per_minute, Some(5000));
        assert_eq!(
            c.ledger_path.as_deref(),
            Some(std::path::Path::new("spend/ledger.db"))
        );
        let bad = "teams:\n  - name: web\n  - name: web\nauth:\n  default_reserve_tokens: 0\n  keys:\n    - name: a b\n      key: s\n      team: ops\n      budget: {usd: -1, period: hourly}\n    - name: c\n    - name: d\n      key_sha256: beef\n      expires_at: soon\n    - name: e\n      key: s\n";
        assert_eq!(
            invalid(bad, &env(&[]), false),
            [
                "teams[1].name: duplicate team name \"web\"",
                "auth.default_reserve_tokens: 0 must be a whole number ≥ 1",
                "auth.keys[0].name: \"a b\" must be 1-64 letters, digits, '-', '_' or '.'",
                "auth.keys[0].team: no team is named \"ops\"",
                "auth.keys[0].budget.usd: -1 must be a number > 0",
                "auth.keys[0].budget.period: unknown period \"hourly\" (expected one of daily, weekly, monthly, total)",
                "auth.keys[1].key: missing (the secret, usually \"${VAR}\", or key_sha256)",
                "auth.keys[2].key_sha256: expected 64 hex digits",
                "auth.keys[2].expires_at: \"soon\" is not an RFC 3339 time (2027-01-31T00:00:00Z)",
                "auth.keys[3].key: the same secret as another key",
            ]
        );
        let odd = "auth:\n  keys:\n    - name: a\n      key: \"sk-x \"\n      budget: {usd: 0}\n";
        assert_eq!(
            invalid(odd, &env(&[]), false),
            [
                "auth.keys[0].key: contains whitespace (a stray space or newline from the variable?)",
                "auth.keys[0].budget.usd: 0 must be a number > 0",
            ]
        );
        // NaN never gets this far: the YAML reader refuses it, naming the line.
        let nan = "auth:\n  keys:\n    - name: a\n      key: s\n      budget: {usd: .nan}\n";
        assert!(
            matches!(Config::parse(nan, &env(&[]), false), Err(ConfigError::Malformed(m)) if m.contains("line 5")),
            "NaN is refused"
        );
    }

    #[test]
    fn the_ledger_can_be_off_only_without_budgets() {
        let off = "ledger: {enabled: false}\nauth:\n  keys:\n    - name: a\n      key: s\n";
        assert!(Config::parse(off, &env(&[]), true).unwrap().ledger_disabled);
        assert!(!Config::parse("", &env(&[]), true).unwrap().ledger_disabled);
        let budget = "ledger: {enabled: false}\nteams:\n  - name: t\n    budget: {usd: 1}\n";
        assert_eq!(
            invalid(budget, &env(&[]), false),
            [
                "ledger.enabled: false, but budgets are set: their spend would reset on every restart"
            ]
        );
    }

    #[test]
    fn route_groups_are_checked() {
        let text = "providers:\n  - name: a\n    type: echo\n  - name: b\n    type: echo\nrouting:\n  groups:\n    - name: fast\n      models: [echo-v1]\n      strategy: round_robin\n      providers: [a, b]\n";
        let c = Config::parse(text, &env(&[]), true).unwrap();
        let g = &c.routing.groups[0];
        assert_eq!((&*g.name, g.strategy), ("fast", Some(Strategy::RoundRobin)));
        assert_eq!(g.providers, ["a", "b"]);
        let bad = "providers:\n  - name: a\n    type: echo\nrouting:\n  groups:\n    - name: g\n      models: []\n      strategy: fastest\n      providers: [a, zz]\n    - name: g\n      models: [x]\n";
        let errors = invalid(bad, &env(&[]), false);
        assert_eq!(
            errors,
            [
                "routing.groups[0].models: a group needs at least one (non-empty) model name",
                "routing.groups[0].strategy: unknown strategy \"fastest\" (expected one of priority, round_robin, least_latency, cost_weighted, random)",
                "routing.groups[0].providers[1]: no provider is named \"zz\"",
                "routing.groups[1].name: duplicate group name \"g\"",
            ]
        );
    }

    #[test]
    fn wrong_types_name_the_path() {
        let errors = invalid(
            "providers:\n  - name: e\n    type: echo\n    models: 5\n",
            &env(&[]),
            false,
        );
        assert_eq!(errors.len(), 1);
        assert!(
            errors[0].starts_with("providers[0].models: invalid type"),
            "{errors:?}"
        );
        let errors = invalid("routing:\n  fallback: maybe\n", &env(&[]), false);
        assert!(
            errors[0].starts_with("routing.fallback: invalid type"),
            "{errors:?}"
        );
    }

    #[test]
    fn unknown_fields_warn_or_fail_under_strict() {
        let text = "providers:\n  - name: e\n    type: echo\n    colour: blue\nlisen: \":1\"\n";
        let c = Config::parse(text, &env(&[]), false).unwrap();
        assert_eq!(
            c.warnings,
            ["lisen: unknown field", "providers[0].colour: unknown field"]
        );
        let errors = invalid(text, &env(&[]), true);
        assert_eq!(
            errors,
            ["lisen: unknown field", "providers[0].colour: unknown field"]
        );
    }

    #[test]
    fn malformed_yaml_is_its_own_error() {
        let e = Config::parse("providers: [unclosed\n  - x: {", &env(&[]), false).unwrap_err();
        assert_eq!(e.exit_code(), 2, "{e}");
        assert!(e.to_string().starts_with("malformed YAML"), "{e}");
        assert!(!e.to_string().contains('\n'));
    }

    #[test]
    fn keys_and_echo_defaults() {
        let text = "providers:\n  - name: local\n    type: openai\n    base_url: http://127.0.0.1:8000/v1\n  - name: e\n    type: echo\n  - name: o\n    type: ollama\n";
        let c = Config::parse(text, &env(&[]), true).unwrap();
        assert!(
            c.providers[0].api_key.is_none(),
            "an OpenAI-compatible server may need no key"
        );
        assert_eq!(c.providers[1].models, ["echo-v1"]);
        assert_eq!(
            c.providers[2].base_url.as_deref(),
            Some("http://localhost:11434/v1")
        );
        let errors = invalid(
            "providers:\n  - name: o\n    type: openai\n",
            &env(&[]),
            false,
        );
        assert!(
            errors[0].starts_with("providers[0].api_key: missing"),
            "{errors:?}"
        );
    }

    #[test]
    fn load_reports_a_missing_file() {
        let e = Config::load(Path::new("/no/such/infermux.yml"), &ProcessEnv, false).unwrap_err();
        assert_eq!(e.exit_code(), 1);
        assert!(e.to_string().contains("/no/such/infermux.yml"));
    }
}
