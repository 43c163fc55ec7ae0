//! A small gRPC load generator built on the client crate: C concurrent callers
//! each sending unary `Infer` calls back to back for D seconds over one HTTP/2
//! connection per caller group, then req/s and latency percentiles.
//!
//! ```sh
//! cargo run --release --example grpc_load -p infermux-client -- http://127.0.0.1:8601 64 10
//! ```
#![allow(
    clippy::expect_used,
    reason = "a command-line tool; failing loudly is right"
)]

use std::time::{Duration, Instant};

use infermux_client::{Client, pb};

#[tokio::main]
async fn main() {
    let mut args = std::env::args().skip(1);
    let url = args
        .next()
        .unwrap_or_else(|| "http://127.0.0.1:8601".to_owned());
    let concurrency: usize = args
        .next()
        .map_or(64, |v| v.parse().expect("concurrency: a number"));
    let seconds: u64 = args
        .next()
        .map_or(10, |v| v.parse().expect("seconds: a number"));
    // Several connections, as real clients spread over; 8 callers share one.
    let connections = concurrency.div_ceil(8).max(1);
    let mut clients = Vec::with_capacity(connections);
    for _ in 0..connections {
        clients.push(Client::connect(url.clone()).await.expect("connect"));
    }
    let request = pb::InferRequest {
        model: "echo-v1".into(),
        messages: vec![pb::ChatMessage {
            role: "user".into(),
            content: "Hello world".into(),
        }],
        ..Default::default()
    };
    // Warm up every connection.
    for c in &clients {
        c.infer(request.clone()).await.expect("warm-up call");
    }
    let end = Instant::now() + Duration::from_secs(seconds);
    let started = Instant::now();
    let mut tasks = Vec::with_capacity(concurrency);
    for i in 0..concurrency {
        let client = clients[i % connections].clone();
        let request = request.clone();
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            let mut errors = 0u64;
            while Instant::now() < end {
                let t = Instant::now();
                match client.infer(request.clone()).await {
                    Ok(_) => latencies.push(t.elapsed()),
                    Err(_) => errors += 1,
                }
            }
            (latencies, errors)
        }));
    }
    let mut all = Vec::new();
    let mut errors = 0;
    for t in tasks {
        let (l, e) = t.await.expect("caller task");
        all.extend(l);
        errors += e;
    }
    let elapsed = started.elapsed().as_secs_f64();
    all.sort_unstable();
    let pct = |p: f64| {
        all.get(((all.len() as f64 * p) as usize).min(all.len().saturating_sub(1)))
            .copied()
            .unwrap_or_default()
    };
    println!(
        "c={concurrency} connections={connections} calls={} errors={errors} rps={:.0} p50={:?} p90={:?} p99={:?}",
        all.len(),
        all.len() as f64 / elapsed,
        pct(0.50),
        pct(0.90),
        pct(0.99)
    );
}
