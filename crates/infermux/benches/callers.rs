//! A caller's key on the hot path: `Callers::authenticate` (SHA-256 and one
//! lookup in the in-memory index) among 10 and 10,000 keys, and
//! `Callers::admit` (model list, rate limits, a budget reservation) with its
//! settlement.
#![allow(clippy::expect_used, reason = "benchmark setup")]

use std::hint::black_box;

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use infermux::callers::{
    AuthSettings, BudgetSpec, Callers, KeySpec, Period, TeamSpec, hash_secret,
};
use infermux::ratelimit::RateLimits;

fn settings(keys: usize) -> AuthSettings {
    AuthSettings {
        required: true,
        default_reserve_tokens: 4096,
        keys: (0..keys)
            .map(|i| KeySpec {
                name: format!("key-{i}"),
                sha256: hash_secret(&format!("imx-secret-number-{i:08}-of-the-bench")),
                team: Some("web".into()),
                models: vec!["gpt-4o*".into(), "claude-*".into()],
                budget: Some(BudgetSpec {
                    usd: 1e12,
                    period: Period::Monthly,
                }),
                rate_limits: RateLimits {
                    requests_per_minute: Some(u32::MAX),
                    tokens_per_minute: None,
                },
                expires_at: None,
            })
            .collect(),
        teams: vec![TeamSpec {
            name: "web".into(),
            budget: Some(BudgetSpec {
                usd: 1e12,
                period: Period::Monthly,
            }),
            rate_limits: RateLimits::default(),
        }],
    }
}

fn bench(c: &mut Criterion) {
    let mut group = c.benchmark_group("callers");
    for keys in [10usize, 10_000] {
        let callers = Callers::new(&settings(keys), None).expect("callers");
        let secret = format!("imx-secret-number-{:08}-of-the-bench", keys / 2);
        group.bench_with_input(BenchmarkId::new("authenticate", keys), &secret, |b, s| {
            b.iter(|| {
                callers
                    .authenticate(black_box(Some(s.as_str())))
                    .expect("key")
            })
        });
    }
    let callers = Callers::new(&settings(10), None).expect("callers");
    let key = callers
        .authenticate(Some("imx-secret-number-00000005-of-the-bench"))
        .expect("key")
        .expect("known");
    group.bench_function("admit_and_settle", |b| {
        b.iter(|| {
            let grant = callers
                .admit(&key, black_box("gpt-4o-mini"), 0.01)
                .expect("admitted");
            grant.settle(0.005, 100);
        })
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
