//! `infermux serve`: the HTTP server, single-threaded runtimes, two per core.

use std::net::ToSocketAddrs;
use std::process::ExitCode;

use crate::cli::ServeArgs;
use crate::setup::{self, Prepared};

pub fn run(args: ServeArgs) -> Result<ExitCode, String> {
    let prepared = Prepared::new(&args.server, |c| c.listen.as_deref(), ":8600")?;
    let addr = prepared
        .addr
        .to_socket_addrs()
        .map_err(|e| format!("--addr \"{}\": {e}", prepared.addr))?
        .next()
        .ok_or_else(|| format!("--addr \"{}\": no address", prepared.addr))?;
    // Two per core by default: a serving thread that the kernel preempts
    // (for the application next to infermux, or anything else on the box)
    // stalls every connection it holds until it runs again; with two per
    // core the other keeps serving. Measured in docs/PERFORMANCE.md
    // ("Serving threads").
    let threads = match args.threads {
        0 => 2 * std::thread::available_parallelism().map_or(1, std::num::NonZero::get),
        n => n,
    };
    // This thread's runtime serves one listener and hosts the background work
    // (span reporting, signals).
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the async runtime: {e}"))?;
    let (spans, reporter) = rt.block_on(async {
        prepared.spawn_health_checks();
        setup::spans(prepared.tokentrace.as_deref())
    })?;
    // SO_REUSEPORT would let a second infermux share a port already in use;
    // an exclusive bind first makes "address in use" an error as usual (and
    // settles the port when the address asks for port 0).
    let addr = std::net::TcpListener::bind(addr)
        .and_then(|probe| probe.local_addr())
        .map_err(|e| format!("cannot listen on {addr}: {e}"))?;
    let first = rt
        .block_on(async { infermux_http::server::bind_reuseport(addr) })
        .map_err(|e| format!("cannot listen on {addr}: {e}"))?;
    let local = first.local_addr().map_err(|e| e.to_string())?;
    let (stop, stopped) = tokio::sync::watch::channel(false);
    // The signal handlers are installed here, before the address is logged:
    // a SIGTERM sent as soon as it is must stop the server cleanly.
    let signal = {
        let _in_runtime = rt.enter();
        setup::shutdown_signal()
    };
    rt.spawn(async move {
        signal.await;
        let _ = stop.send(true);
    });
    prepared.log_listening("HTTP", local);
    tracing::debug!(threads, "one runtime per thread");
    let token = std::env::var("INFERMUX_MANAGEMENT_TOKEN").ok();
    let max_connections = setup::max_connections(args.max_connections);
    tracing::debug!(max_connections, "open-connection limit");
    let options = infermux_http::server::ServeOptions {
        drain_delay: args.drain_delay,
        grace: args.grace_period,
        tls: prepared.tls(&[b"http/1.1"])?,
    };
    let management_addr = prepared
        .config
        .as_ref()
        .and_then(|c| c.management_listen.clone());
    let app = match management_addr {
        None => infermux_http::app_with_token(prepared.router(spans), token)
            .with_max_connections(max_connections),
        Some(management_addr) => {
            let (api, management) = infermux_http::split_apps(prepared.router(spans), token);
            let api = api.with_max_connections(max_connections);
            let addr = setup::listen_addr(Some(&management_addr), ":8602")?;
            let listener = rt.block_on(setup::bind(&addr))?;
            let local = listener.local_addr().map_err(|e| e.to_string())?;
            tracing::info!(addr = %local, "management endpoints listening");
            let mut stop = stopped.clone();
            // On this thread's runtime; it drains with the others.
            let options = options.clone();
            rt.spawn(async move {
                let shutdown = async move {
                    let _ = stop.wait_for(|s| *s).await;
                };
                let served =
                    infermux_http::server::serve_with(listener, management, shutdown, options);
                if let Err(e) = served.await {
                    tracing::error!(error = %e, "management server failed");
                }
            });
            api
        }
    };
    infermux_http::server::serve_per_core(&rt, first, threads, app, stopped, options)
        .map_err(|e| format!("server error: {e}"))?;
    prepared.close_ledger();
    if let Some(task) = reporter {
        rt.block_on(task.shutdown(setup::SPAN_FLUSH));
    }
    tracing::info!("stopped");
    Ok(ExitCode::SUCCESS)
}
