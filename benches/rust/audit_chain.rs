//! Criterion micro-benchmark of the audit hash chain (the Rust side of `symbi bench audit`).
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};

use _core::chain;

fn bench_chain(c: &mut Criterion) {
    let mut g = c.benchmark_group("audit_chain");
    for size in [64usize, 256, 1024] {
        let payloads: Vec<Vec<u8>> = (0..1000).map(|i| vec![(i % 251) as u8; size]).collect();
        g.throughput(Throughput::Elements(payloads.len() as u64));
        g.bench_with_input(BenchmarkId::new("hashes_1000", size), &payloads, |b, p| {
            b.iter(|| chain::hashes(&chain::GENESIS, 0, p).unwrap())
        });
    }
    g.finish();
}

criterion_group!(benches, bench_chain);
criterion_main!(benches);
