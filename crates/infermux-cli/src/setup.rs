//! Turning flags, environment and config into a registry, a router and a listen
//! address; shared by every command.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use std::process::ExitCode;
use std::time::Duration;

use infermux::callers::{AuthSettings, Callers, Ledger};
use infermux::config::{Config, ProcessEnv};
use infermux::{EchoProvider, NoopSink, Registry, Router, SpanSink};
use infermux_ledger::SqliteLedger;
use infermux_tokentrace::{Reporter, ReporterConfig, ReporterTask};

use crate::cli::ServerArgs;

/// The config file that applies: `--config` / `INFERMUX_CONFIG`, else
/// `./infermux.yml` when it exists.
pub fn config_path(flag: Option<&Path>) -> Option<PathBuf> {
    if let Some(p) = flag {
        return Some(p.to_owned());
    }
    let default = Path::new("infermux.yml");
    default.exists().then(|| default.to_owned())
}

/// The config in force: the file named by `--config` / `INFERMUX_CONFIG`, else
/// `./infermux.yml` when present, else none (echo is then the whole registry).
pub fn load_config(flag: Option<&Path>) -> Result<Option<Config>, String> {
    let Some(path) = config_path(flag) else {
        return Ok(None);
    };
    let config = Config::load(&path, &ProcessEnv, false).map_err(|e| e.to_string())?;
    for warning in &config.warnings {
        tracing::warn!(file = %path.display(), "{warning} (ignored; `infermux validate --strict` rejects it)");
    }
    Ok(Some(config))
}

/// The providers to route to: the config's, or the echo provider alone.
pub fn registry(config: Option<&Config>) -> Result<Arc<Registry>, String> {
    let registry = match config {
        Some(config) => {
            infermux_providers::registry_from_config(config).map_err(|e| e.to_string())?
        }
        None => {
            let registry = Registry::new();
            registry
                .register(Arc::new(EchoProvider::new()))
                .map_err(|e| e.to_string())?;
            registry
        }
    };
    Ok(Arc::new(registry))
}

/// The router every command uses: the registry, span sink and the config's prices.
pub fn router(
    config: Option<&Config>,
    registry: Arc<Registry>,
    spans: Arc<dyn SpanSink>,
) -> Router {
    let router = Router::new(registry, spans);
    match config {
        Some(c) => router
            .with_pricing(infermux::cost::Pricing::new(&c.pricing))
            .with_fallback(c.routing.attempts())
            .with_strategy(c.routing.strategy)
            .with_groups(c.routing.groups.clone())
            .with_latency_tuning(c.routing.ewma_decay, c.routing.min_samples)
            .with_request_timeout(c.routing.request_timeout),
        None => router,
    }
}

/// The ledger file: `ledger.path` (relative to the config file's folder),
/// else `infermux.db` beside the config file (in the working directory when
/// there is none).
pub fn ledger_path(config: Option<&Config>, config_file: Option<&Path>) -> PathBuf {
    let dir = config_file.and_then(Path::parent).unwrap_or(Path::new(""));
    match config.and_then(|c| c.ledger_path.as_ref()) {
        Some(p) if p.is_absolute() => p.clone(),
        Some(p) => dir.join(p),
        None => dir.join("infermux.db"),
    }
}

/// The ledger and the callers (keys, teams, budgets reloaded from it) a
/// server checks and writes every call to.
pub fn callers(
    config: Option<&Config>,
    config_file: Option<&Path>,
) -> Result<(Arc<Callers>, Option<Arc<SqliteLedger>>), String> {
    let settings = config
        .map(|c| c.auth.clone())
        .unwrap_or_else(|| AuthSettings {
            default_reserve_tokens: infermux::callers::DEFAULT_RESERVE_TOKENS,
            ..AuthSettings::default()
        });
    if config.is_some_and(|c| c.ledger_disabled) {
        let callers = Callers::new(&settings, None).map_err(|e| e.to_string())?;
        tracing::info!(
            keys = callers.keys().len(),
            "callers ready; no ledger (ledger.enabled: false)"
        );
        return Ok((Arc::new(callers), None));
    }
    let path = ledger_path(config, config_file);
    let ledger = Arc::new(SqliteLedger::open(&path).map_err(|e| e.to_string())?);
    let callers = Callers::new(&settings, Some(ledger.clone() as Arc<dyn Ledger>))
        .map_err(|e| format!("{}: {e}", path.display()))?;
    tracing::info!(
        ledger = %path.display(),
        keys = callers.keys().len(),
        required = settings.required,
        "callers and ledger ready"
    );
    Ok((Arc::new(callers), Some(ledger)))
}

/// Warns about key model patterns that match no model the registry serves
/// (a typo would otherwise show only as 403s).
pub fn warn_unmatched_models(config: Option<&Config>, registry: &Registry) {
    let Some(config) = config else {
        return;
    };
    let models: Vec<String> = registry
        .entries()
        .iter()
        .flat_map(|e| e.routable_models())
        .collect();
    for (i, key) in config.auth.keys.iter().enumerate() {
        for (j, pattern) in key.models.iter().enumerate() {
            if !models
                .iter()
                .any(|m| infermux::callers::glob_match(pattern, m))
            {
                tracing::warn!(
                    "auth.keys[{i}].models[{j}]: \"{pattern}\" matches no model the providers list; key \"{}\" gets 403 for it",
                    key.name
                );
            }
        }
    }
}

/// Whether a listener on `addr` is reachable from other hosts.
fn exposed(addr: SocketAddr) -> bool {
    !addr.ip().is_loopback()
}

/// The open-connection limit: `flag`, or (0) three quarters of the
/// open-file limit, which is first raised as far as the hard limit allows
/// (the rest is left for upstream connections, the ledger and logs).
pub fn max_connections(flag: usize) -> usize {
    let files = match rlimit::increase_nofile_limit(1 << 20) {
        Ok(n) => n,
        Err(e) => {
            tracing::debug!(error = %e, "cannot read or raise the open-file limit");
            rlimit::getrlimit(rlimit::Resource::NOFILE).map_or(1024, |(soft, _)| soft)
        }
    };
    match flag {
        0 => usize::try_from(files / 4 * 3).unwrap_or(usize::MAX).max(16),
        n => n,
    }
}

/// How long queued spans may take to reach TokenTrace on shutdown.
pub const SPAN_FLUSH: Duration = Duration::from_secs(2);

/// What a server needs before it starts: config, registry, address, TokenTrace.
pub struct Prepared {
    pub config: Option<Config>,
    pub registry: Arc<Registry>,
    pub addr: String,
    pub tokentrace: Option<String>,
    pub callers: Arc<Callers>,
    pub ledger: Option<Arc<SqliteLedger>>,
}

impl Prepared {
    /// Reads the config and settles the address (flag, then environment — both
    /// through clap —, then the config file, where `listen` picks the field,
    /// then `default_addr`) and the TokenTrace URL the same way.
    pub fn new(
        args: &ServerArgs,
        listen: fn(&Config) -> Option<&str>,
        default_addr: &str,
    ) -> Result<Self, String> {
        let config = load_config(args.config.as_deref())?;
        let registry = registry(config.as_ref())?;
        warn_unmatched_models(config.as_ref(), &registry);
        let (callers, ledger) = callers(
            config.as_ref(),
            config_path(args.config.as_deref()).as_deref(),
        )?;
        let addr = args
            .addr
            .as_deref()
            .or_else(|| config.as_ref().and_then(listen));
        let addr = listen_addr(addr, default_addr)?;
        let tokentrace = args
            .tokentrace
            .clone()
            .or_else(|| config.as_ref().and_then(|c| c.tokentrace.clone()));
        Ok(Prepared {
            config,
            registry,
            addr,
            tokentrace,
            callers,
            ledger,
        })
    }

    pub fn log_listening(&self, kind: &str, local: std::net::SocketAddr) {
        let entries = self.registry.entries();
        let providers: Vec<String> = entries.iter().map(|e| e.name.to_string()).collect();
        tracing::info!(addr = %local, providers = ?providers, "infermux {kind} server listening");
        let paid: Vec<&str> = entries
            .iter()
            .filter(|e| e.provider.kind() != "echo")
            .map(|e| &*e.name)
            .collect();
        if exposed(local) && !paid.is_empty() && !self.callers.required() {
            tracing::warn!(
                addr = %local,
                providers = ?paid,
                "the inference routes are open to anyone who can reach this address, and spend these providers' keys; set auth.required with auth.keys, listen on 127.0.0.1, or put infermux behind a proxy that authenticates callers"
            );
        }
    }

    /// Starts the active health checks the config asks for, on the current
    /// runtime (they live as long as it does).
    pub fn spawn_health_checks(&self) {
        if let Some(c) = &self.config {
            let checks: Vec<(String, infermux::health::HealthCheckConfig)> = c
                .providers
                .iter()
                .map(|p| (p.name.clone(), p.health_check))
                .collect();
            let started = infermux::health::spawn_checks(&self.registry, &checks);
            tracing::debug!(providers = started.len(), "health checks started");
        }
    }

    pub fn router(&self, spans: Arc<dyn SpanSink>) -> Router {
        router(self.config.as_ref(), self.registry.clone(), spans)
            .with_callers(self.callers.clone())
    }

    /// Stores every ledger row still queued (on shutdown).
    pub fn close_ledger(&self) {
        let Some(ledger) = &self.ledger else {
            return;
        };
        match ledger.close() {
            Ok(()) => tracing::info!(ledger = %ledger.path().display(), "ledger flushed"),
            Err(e) => tracing::error!(error = %e, "ledger rows lost on shutdown"),
        }
    }

    /// The TLS acceptor the config asks for (`tls: {cert, key}`), offering
    /// the protocols `alpn` by ALPN; none without `tls`.
    pub fn tls(&self, alpn: &[&[u8]]) -> Result<Option<tokio_rustls::TlsAcceptor>, String> {
        match self.config.as_ref().and_then(|c| c.tls.as_ref()) {
            None => Ok(None),
            Some(tls) => tls_acceptor(tls, alpn).map(Some),
        }
    }
}

/// A TLS acceptor with the certificate chain and key of `tls` (PEM files);
/// errors name the file and what is wrong with it.
pub fn tls_acceptor(
    tls: &infermux::config::TlsConfig,
    alpn: &[&[u8]],
) -> Result<tokio_rustls::TlsAcceptor, String> {
    use tokio_rustls::rustls;
    use tokio_rustls::rustls::pki_types::pem::PemObject as _;
    use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let (cert, key) = (&tls.cert, &tls.key);
    let certs = CertificateDer::pem_file_iter(cert)
        .and_then(Iterator::collect::<Result<Vec<_>, _>>)
        .map_err(|e| format!("tls.cert {}: {e}", cert.display()))?;
    if certs.is_empty() {
        return Err(format!(
            "tls.cert {}: no certificate in the file",
            cert.display()
        ));
    }
    let key =
        PrivateKeyDer::from_pem_file(key).map_err(|e| format!("tls.key {}: {e}", key.display()))?;
    let mut config = rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| format!("tls: the certificate and key do not go together: {e}"))?;
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(config)))
}

/// Runs one server on a multi-threaded runtime: builds the span reporter and
/// the listener, hands the listener and a router to `serve`, and flushes spans
/// after it returns. `kind` names the server in logs.
pub fn run_server<F, Fut>(
    args: &ServerArgs,
    kind: &str,
    listen: fn(&Config) -> Option<&str>,
    default_addr: &str,
    serve: F,
) -> Result<ExitCode, String>
where
    F: FnOnce(tokio::net::TcpListener, Router, Option<tokio_rustls::TlsAcceptor>) -> Fut,
    Fut: std::future::Future<Output = std::io::Result<()>>,
{
    let prepared = Prepared::new(args, listen, default_addr)?;
    // The gRPC server's one protocol.
    let tls = prepared.tls(&[b"h2"])?;
    runtime()?.block_on(async move {
        let (spans, reporter) = spans(prepared.tokentrace.as_deref())?;
        prepared.spawn_health_checks();
        let listener = bind(&prepared.addr).await?;
        let local = listener.local_addr().map_err(|e| e.to_string())?;
        // The server (and its signal handlers) first, then the address.
        let served = serve(listener, prepared.router(spans), tls);
        prepared.log_listening(kind, local);
        served.await.map_err(|e| format!("server error: {e}"))?;
        prepared.close_ledger();
        if let Some(task) = reporter {
            task.shutdown(SPAN_FLUSH).await;
        }
        tracing::info!("stopped");
        Ok(ExitCode::SUCCESS)
    })
}

/// Where spans go: the TokenTrace reporter when a URL is given, else nowhere.
/// Must be called inside the Tokio runtime (it spawns the sender).
pub fn spans(
    tokentrace: Option<&str>,
) -> Result<(Arc<dyn SpanSink>, Option<ReporterTask>), String> {
    match tokentrace {
        Some(url) if !url.is_empty() => {
            let (reporter, task) = Reporter::spawn(ReporterConfig::new(url))
                .map_err(|e| format!("--tokentrace: {e}"))?;
            tracing::info!(url, "reporting spans to TokenTrace");
            Ok((Arc::new(reporter), Some(task)))
        }
        _ => Ok((Arc::new(NoopSink), None)),
    }
}

/// Binds `addr`, with an error that names it.
pub async fn bind(addr: &str) -> Result<tokio::net::TcpListener, String> {
    tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| format!("cannot listen on {addr}: {e}"))
}

/// A multi-threaded runtime for the servers.
pub fn runtime() -> Result<tokio::runtime::Runtime, String> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the async runtime: {e}"))
}

/// Completes on SIGINT or SIGTERM (Ctrl-C only where there are no Unix signals).
pub fn shutdown_signal() -> impl std::future::Future<Output = ()> + Send + 'static {
    // SIGTERM's handler is installed now (inside the runtime), not when the
    // future is first polled: a server that has logged its address stops
    // cleanly on a SIGTERM sent at once.
    #[cfg(unix)]
    let terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
    async move {
        let ctrl_c = async {
            if tokio::signal::ctrl_c().await.is_err() {
                std::future::pending::<()>().await;
            }
        };
        #[cfg(unix)]
        let terminate = async {
            match terminate {
                Some(mut s) => {
                    s.recv().await;
                }
                None => std::future::pending::<()>().await,
            }
        };
        #[cfg(not(unix))]
        let terminate = std::future::pending::<()>();
        tokio::select! {
            () = ctrl_c => {},
            () = terminate => {},
        }
    }
}

/// Normalizes a listen address: Go-style `:8600` means every interface.
pub fn listen_addr(flag: Option<&str>, default: &str) -> Result<String, String> {
    let addr = flag.unwrap_or(default).trim();
    if let Some(port) = addr.strip_prefix(':') {
        port.parse::<u16>()
            .map_err(|_| format!("--addr \"{addr}\": \"{port}\" is not a port number"))?;
        return Ok(format!("0.0.0.0:{port}"));
    }
    let Some((host, port)) = addr.rsplit_once(':') else {
        return Err(format!("--addr \"{addr}\": expected HOST:PORT or :PORT"));
    };
    if host.is_empty() {
        return Err(format!("--addr \"{addr}\": expected HOST:PORT or :PORT"));
    }
    port.parse::<u16>()
        .map_err(|_| format!("--addr \"{addr}\": \"{port}\" is not a port number"))?;
    if addr.parse::<SocketAddr>().is_err() && host.contains(':') && !host.starts_with('[') {
        return Err(format!(
            "--addr \"{addr}\": write IPv6 hosts in brackets, e.g. [::1]:8600"
        ));
    }
    Ok(addr.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_style_addresses() {
        assert_eq!(listen_addr(None, ":8600").unwrap(), "0.0.0.0:8600");
        assert_eq!(listen_addr(Some(":0"), ":8600").unwrap(), "0.0.0.0:0");
        assert_eq!(
            listen_addr(Some("127.0.0.1:9"), ":8600").unwrap(),
            "127.0.0.1:9"
        );
        assert_eq!(
            listen_addr(Some("localhost:9"), ":8600").unwrap(),
            "localhost:9"
        );
        assert_eq!(listen_addr(Some("[::1]:9"), ":8600").unwrap(), "[::1]:9");
        for bad in ["8600", ":http", "host:", ":99999", ":", "::1:80"] {
            assert!(listen_addr(Some(bad), ":8600").is_err(), "{bad}");
        }
    }
}
