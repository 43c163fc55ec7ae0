//! `infermux-bench`: the measuring tools behind `bench/overhead.sh`.
//!
//! - `ttfb URL`: sends streaming chat completions one after another and reports
//!   the time to the first body byte (p50, p99).
//! - `hold-streams URL`: opens N streaming requests at once, waits until every
//!   one has its first byte, holds them open, then closes them.
//! - `slow-upstream`: an OpenAI-shaped upstream whose streams send one event and
//!   then stay open (keep-alive comments), for `hold-streams`.

use std::time::{Duration, Instant};

use clap::{Parser, Subcommand};
use futures_util::StreamExt;

#[derive(Parser)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Time to first byte of streaming chat completions.
    Ttfb {
        /// Full URL of a chat completions endpoint.
        url: String,
        #[arg(long, default_value = "bench-model")]
        model: String,
        #[arg(long, default_value_t = 300)]
        requests: usize,
    },
    /// Hold many streaming requests open at once.
    HoldStreams {
        url: String,
        #[arg(long, default_value = "bench-slow")]
        model: String,
        #[arg(long, default_value_t = 1000)]
        streams: usize,
        /// How long to hold them once all are open, in seconds.
        #[arg(long, default_value_t = 3)]
        hold: u64,
    },
    /// A slow streaming upstream on ADDR.
    SlowUpstream {
        #[arg(long, default_value = "127.0.0.1:18804")]
        addr: String,
    },
}

fn body(model: &str) -> serde_json::Value {
    serde_json::json!({"model": model, "stream": true, "messages": [{"role": "user", "content": "Hello world"}]})
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() as f64 * p) as usize).min(sorted.len() - 1)]
}

async fn ttfb(url: &str, model: &str, n: usize) -> Result<(), String> {
    let client = reqwest::Client::builder()
        .tcp_nodelay(true)
        .build()
        .map_err(|e| e.to_string())?;
    let body = body(model);
    let mut times = Vec::with_capacity(n);
    for i in 0..n + 20 {
        let start = Instant::now();
        let mut resp = client
            .post(url)
            .json(&body)
            .send()
            .await
            .map_err(|e| e.to_string())?;
        if !resp.status().is_success() {
            return Err(format!("{url} answered {}", resp.status()));
        }
        resp.chunk().await.map_err(|e| e.to_string())?;
        let t = start.elapsed();
        while resp.chunk().await.map_err(|e| e.to_string())?.is_some() {}
        if i >= 20 {
            times.push(t); // the first 20 warm the connection up
        }
    }
    times.sort_unstable();
    println!(
        "ttfb requests={n} p50_us={} p99_us={}",
        percentile(&times, 0.50).as_micros(),
        percentile(&times, 0.99).as_micros()
    );
    Ok(())
}

async fn hold_streams(url: &str, model: &str, n: usize, hold: u64) -> Result<(), String> {
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()
        .map_err(|e| e.to_string())?;
    let started = Instant::now();
    let opened = futures_util::stream::iter(0..n)
        .map(|_| {
            let client = client.clone();
            let body = body(model);
            async move {
                let mut resp = client
                    .post(url)
                    .json(&body)
                    .send()
                    .await
                    .map_err(|e| e.to_string())?;
                if !resp.status().is_success() {
                    return Err(format!("answered {}", resp.status()));
                }
                resp.chunk().await.map_err(|e| e.to_string())?;
                Ok::<_, String>(resp)
            }
        })
        .buffer_unordered(n)
        .collect::<Vec<_>>()
        .await;
    let failures = opened.iter().filter(|r| r.is_err()).count();
    if let Some(Err(e)) = opened.iter().find(|r| r.is_err()) {
        eprintln!("first failure: {e}");
    }
    println!(
        "open_streams={} failed={failures} opened_in_ms={}",
        n - failures,
        started.elapsed().as_millis()
    );
    // Signal readiness to the script (it samples the server's memory now).
    println!("holding");
    tokio::time::sleep(Duration::from_secs(hold)).await;
    drop(opened);
    if failures > 0 {
        return Err(format!("{failures} streams failed"));
    }
    Ok(())
}

async fn slow_upstream(addr: &str) -> Result<(), String> {
    use axum::body::Body;
    use bytes::Bytes;
    let app = axum::Router::new().fallback(|| async {
        let first = futures_util::stream::once(async {
            Ok::<_, std::convert::Infallible>(Bytes::from_static(
                b"data: {\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"hi\"},\"finish_reason\":null}]}\n\n",
            ))
        });
        let keep_alive = futures_util::stream::unfold((), |()| async {
            tokio::time::sleep(Duration::from_secs(1)).await;
            Some((Ok(Bytes::from_static(b": keep-alive\n\n")), ()))
        });
        axum::response::Response::builder()
            .header("content-type", "text/event-stream")
            .body(Body::from_stream(first.chain(keep_alive)))
            .unwrap_or_default()
    });
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| format!("{addr}: {e}"))?;
    axum::serve(listener, app).await.map_err(|e| e.to_string())
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Ttfb {
            url,
            model,
            requests,
        } => ttfb(&url, &model, requests).await,
        Command::HoldStreams {
            url,
            model,
            streams,
            hold,
        } => hold_streams(&url, &model, streams, hold).await,
        Command::SlowUpstream { addr } => slow_upstream(&addr).await,
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("infermux-bench: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
