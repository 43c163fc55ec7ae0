//! `infermux status` and `infermux providers`: ask a running server.

use std::io::Write;
use std::process::ExitCode;
use std::time::Duration;

use serde_json::Value;

use crate::cli::{Format, RemoteArgs};

/// Exit code when the server cannot be reached.
const UNREACHABLE: u8 = 2;

fn fetch(args: &RemoteArgs, path: &str) -> Result<Value, (u8, String)> {
    call(&args.server, reqwest::Method::GET, path, None)
}

/// One management call to the server at `server`: its JSON answer, or an
/// exit code (2: unreachable) and a message.
pub(super) fn call(
    server: &str,
    method: reqwest::Method,
    path: &str,
    body: Option<&Value>,
) -> Result<Value, (u8, String)> {
    let url = format!("{}{path}", server.trim_end_matches('/'));
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| (1, format!("cannot start the async runtime: {e}")))?;
    runtime.block_on(async {
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()
            .map_err(|e| (1, e.to_string()))?;
        let mut req = client.request(method, &url);
        if let Some(body) = body {
            req = req.json(body);
        }
        if let Ok(token) = std::env::var("INFERMUX_MANAGEMENT_TOKEN") {
            req = req.bearer_auth(token);
        }
        let resp = req.send().await.map_err(|e| {
            (
                UNREACHABLE,
                format!(
                    "cannot reach {url}: {}",
                    if e.is_connect() {
                        "connection refused".to_owned()
                    } else {
                        e.to_string()
                    }
                ),
            )
        })?;
        let status = resp.status();
        let body: Value = resp
            .json()
            .await
            .map_err(|e| (UNREACHABLE, format!("{url} did not answer JSON: {e}")))?;
        if !status.is_success() {
            let message = body
                .pointer("/error/message")
                .and_then(Value::as_str)
                .unwrap_or("");
            return Err((1, format!("{url} answered {status}: {message}")));
        }
        Ok(body)
    })
}

fn table(providers: &[Value], out: &mut impl Write) -> std::io::Result<()> {
    writeln!(
        out,
        "{:<16} {:<13} {:<10} {:>10} {:>8} {:>8}  MODELS",
        "NAME", "TYPE", "CIRCUIT", "ERROR_RATE", "P95_MS", "REQ/MIN"
    )?;
    for p in providers {
        let text = |k: &str| p[k].as_str().unwrap_or("-").to_owned();
        let models: Vec<&str> = p["models"]
            .as_array()
            .map(|m| m.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        writeln!(
            out,
            "{:<16} {:<13} {:<10} {:>10.3} {:>8} {:>8}  {}",
            text("name"),
            text("type"),
            text("circuit"),
            p["error_rate"].as_f64().unwrap_or(0.0),
            p["p95_latency_ms"]
                .as_u64()
                .map_or("-".to_owned(), |v| v.to_string()),
            p["requests_last_minute"].as_u64().unwrap_or(0),
            models.join(",")
        )?;
    }
    Ok(())
}

fn print(args: &RemoteArgs, body: &Value, head: Option<String>) -> Result<(), String> {
    let mut out = std::io::stdout().lock();
    let written = match args.format {
        Format::Json => serde_json::to_string_pretty(body)
            .map_err(std::io::Error::other)
            .and_then(|s| writeln!(out, "{s}")),
        Format::Table => {
            let providers = body["providers"].as_array().cloned().unwrap_or_default();
            head.map_or(Ok(()), |h| writeln!(out, "{h}"))
                .and_then(|()| table(&providers, &mut out))
        }
    };
    written.map_err(|e| format!("cannot write the output: {e}"))
}

pub(super) fn finish(result: Result<ExitCode, (u8, String)>) -> Result<ExitCode, String> {
    match result {
        Ok(code) => Ok(code),
        Err((code, message)) => {
            eprintln!("infermux: error: {message}");
            Ok(ExitCode::from(code))
        }
    }
}

/// Exit 0 when every circuit is closed, 1 when any is open, 2 when unreachable.
pub fn status(args: RemoteArgs) -> Result<ExitCode, String> {
    finish((|| {
        let body = fetch(&args, "/_infermux/status")?;
        let open = body["open_circuits"].as_u64().unwrap_or(0);
        let head = format!(
            "status: {}  version: {}  uptime: {} s  open circuits: {open}  spans dropped: {}",
            body["status"].as_str().unwrap_or("?"),
            body["version"].as_str().unwrap_or("?"),
            body["uptime_seconds"].as_u64().unwrap_or(0),
            body["spans_dropped"].as_u64().unwrap_or(0),
        );
        print(&args, &body, Some(head)).map_err(|e| (1, e))?;
        Ok(if open == 0 {
            ExitCode::SUCCESS
        } else {
            ExitCode::from(1)
        })
    })())
}

pub fn providers(args: RemoteArgs) -> Result<ExitCode, String> {
    finish((|| {
        let body = fetch(&args, "/_infermux/providers")?;
        print(&args, &body, None).map_err(|e| (1, e))?;
        Ok(ExitCode::SUCCESS)
    })())
}
