//! MIST envelope decode + validate + encode, for a 1 KiB and a 1 MiB payload.
#![allow(clippy::expect_used, reason = "benchmark inputs are fixed")]

use std::hint::black_box;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use infermux::envelope::{self, Envelope, MessageType};
use infermux::validate::validate_request;
use infermux::{InferRequest, InferResponse};

fn request_of_size(bytes: usize) -> InferRequest {
    // Content sized so the whole payload is about `bytes` long.
    InferRequest::prompt("echo-v1", "x".repeat(bytes.saturating_sub(80)))
}

fn bench(c: &mut Criterion) {
    let mut group = c.benchmark_group("envelope");
    for (label, size) in [("1KiB", 1024), ("1MiB", 1024 * 1024)] {
        let req = request_of_size(size);
        let message = envelope::encode("bench", MessageType::InferRequest, &req).expect("encode");
        group.throughput(Throughput::Bytes(message.len() as u64));
        group.bench_with_input(
            BenchmarkId::new("decode_validate", label),
            &message,
            |b, m| {
                b.iter(|| {
                    let env =
                        Envelope::decode(black_box(m), MessageType::InferRequest).expect("decode");
                    let req: InferRequest = env.payload_as().expect("payload");
                    validate_request(&req).expect("valid");
                    req
                })
            },
        );
        let resp = InferResponse {
            model: "echo-v1".into(),
            provider: "echo".into(),
            content: req.messages[0].content.clone(),
            finish_reason: "stop".into(),
            ..Default::default()
        };
        group.bench_with_input(BenchmarkId::new("encode", label), &resp, |b, r| {
            b.iter(|| {
                envelope::encode("infermux", MessageType::InferResponse, black_box(r))
                    .expect("encode")
            })
        });
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
