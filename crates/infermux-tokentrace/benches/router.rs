//! `Router::call` on a zero-delay echo provider: with spans off, and with spans
//! on through the real TokenTrace reporter posting to an in-process collector.
#![allow(clippy::expect_used, reason = "benchmark setup")]

use std::sync::Arc;

use axum::routing::post;
use criterion::{Criterion, criterion_group, criterion_main};
use infermux::router::RequestContext;
use infermux::{EchoProvider, InferRequest, Registry, Router};
use infermux_tokentrace::{Reporter, ReporterConfig};

fn registry() -> Arc<Registry> {
    let r = Registry::new();
    r.register(Arc::new(EchoProvider::new())).expect("register");
    Arc::new(r)
}

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let req = InferRequest::prompt("echo-v1", "Hello world");
    let ctx = RequestContext::default();

    let plain = Router::without_spans(registry());
    c.bench_function("router/echo/spans_off", |b| {
        b.to_async(&rt)
            .iter(|| async { plain.call(&req, &ctx).await.expect("call") })
    });

    let collector_url = rt.block_on(async {
        let app =
            axum::Router::new().route("/mist", post(|| async { axum::http::StatusCode::ACCEPTED }));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let url = format!("http://{}", listener.local_addr().expect("addr"));
        tokio::spawn(async move { axum::serve(listener, app).await });
        url
    });
    let (reporter, _task) = rt
        .block_on(async { Reporter::spawn(ReporterConfig::new(collector_url)).expect("reporter") });
    let stats = reporter.stats().clone();
    let traced = Router::new(registry(), Arc::new(reporter));
    c.bench_function("router/echo/spans_on", |b| {
        b.to_async(&rt)
            .iter(|| async { traced.call(&req, &ctx).await.expect("call") })
    });
    eprintln!(
        "spans sent {}, dropped {}, failed {}",
        stats.sent(),
        stats.dropped(),
        stats.failed()
    );
}

criterion_group!(benches, bench);
criterion_main!(benches);
