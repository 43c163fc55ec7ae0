//! The routing decision: candidates for a model served by 2, 10 and 100
//! providers, ordered by each strategy (`Router::choose`).
#![allow(clippy::expect_used, reason = "benchmark setup")]

use std::hint::black_box;
use std::sync::Arc;

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use infermux::config::Strategy;
use infermux::testing::FakeProvider;
use infermux::{InferRequest, Registry, Router};

fn bench(c: &mut Criterion) {
    let mut group = c.benchmark_group("routing_decision");
    let req = InferRequest::prompt("shared-model", "Hello world, a prompt of a few words");
    for providers in [2usize, 10, 100] {
        let registry = Registry::new();
        for i in 0..providers {
            registry
                .register(Arc::new(FakeProvider::new(
                    &format!("p{i}"),
                    &["shared-model"],
                )))
                .expect("register");
        }
        let registry = Arc::new(registry);
        for strategy in [
            Strategy::Priority,
            Strategy::RoundRobin,
            Strategy::LeastLatency,
            Strategy::CostWeighted,
            Strategy::Random,
        ] {
            let router = Router::without_spans(registry.clone()).with_strategy(strategy);
            group.bench_with_input(
                BenchmarkId::new(strategy.as_str(), providers),
                &req,
                |b, req| b.iter(|| router.choose(black_box(req)).expect("routes")),
            );
        }
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
