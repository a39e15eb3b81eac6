//! Engine micro-benchmarks: committing write batches of 256-byte puts, with
//! and without a WAL sync, and point reads from the memtable and from SSTs.
//!
//! Run with `cargo bench -p concord-store --bench engine`.

mod common;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use std::hint::black_box;

use concord_store::engine::{Engine, EngineConfig, Reader, CF_DEFAULT};
use concord_store::keys;

use common::{config, user_key, VALUE_SIZE};

/// Keys written before the read benchmarks.
const POPULATED_KEYS: u64 = 100_000;

fn open() -> (tempfile::TempDir, Engine) {
    let dir = tempfile::tempdir().expect("temp dir");
    let engine = Engine::open(dir.path(), &EngineConfig::default()).expect("open engine");
    (dir, engine)
}

/// A cheap deterministic pseudo-random sequence (xorshift64).
fn next(state: &mut u64) -> u64 {
    *state ^= *state << 13;
    *state ^= *state >> 7;
    *state ^= *state << 17;
    *state
}

fn write_batch(c: &mut Criterion) {
    let (_dir, engine) = open();
    let value = vec![0xab; VALUE_SIZE];
    let mut seq = 0u64;
    let mut group = c.benchmark_group("engine/write_batch");
    for sync in [false, true] {
        let mode = if sync { "sync" } else { "nosync" };
        for n in [1u64, 16, 128] {
            group.throughput(Throughput::Elements(n));
            group.bench_function(BenchmarkId::new(mode, n), |b| {
                b.iter(|| {
                    let mut wb = engine.write_batch();
                    for _ in 0..n {
                        seq += 1;
                        wb.put_cf(CF_DEFAULT, &keys::data_key(&user_key(seq)), &value)
                            .expect("put");
                    }
                    engine.write(wb, sync).expect("write");
                })
            });
        }
    }
    group.finish();
}

fn get(c: &mut Criterion) {
    let (_dir, engine) = open();
    let value = vec![0xcd; VALUE_SIZE];
    for chunk in (0..POPULATED_KEYS).collect::<Vec<_>>().chunks(1024) {
        let mut wb = engine.write_batch();
        for n in chunk {
            wb.put_cf(CF_DEFAULT, &keys::data_key(&user_key(*n)), &value)
                .expect("put");
        }
        engine.write(wb, false).expect("write");
    }
    let mut group = c.benchmark_group("engine/get");
    let mut rng = 0x9e37_79b9_7f4a_7c15u64;
    let mut bench = |group: &mut criterion::BenchmarkGroup<_>, name: &str| {
        group.bench_function(name, |b| {
            b.iter(|| {
                let key = keys::data_key(&user_key(next(&mut rng) % POPULATED_KEYS));
                let got = engine.get_cf(CF_DEFAULT, &key).expect("get");
                assert!(black_box(got).is_some());
            })
        });
    };
    bench(&mut group, "memtable");
    engine.flush().expect("flush");
    bench(&mut group, "sst_cached");
    group.finish();
}

criterion_group! {
    name = benches;
    config = config();
    targets = write_batch, get
}
criterion_main!(benches);
