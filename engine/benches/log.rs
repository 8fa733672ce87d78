//! Criterion benchmarks of the segmented log: append + sync latency against batch size next
//! to the raw baseline (aligned `O_DIRECT` write + `fdatasync` of the same size into a file
//! prepared like a segment, no framing) on the same disk, and the CPU cost of framing.
//!
//! `cargo bench -p conclave-engine --bench log`. Runs in a temporary directory under
//! `$CONCLAVE_BENCH_DIR` (default: the system temp dir; put it on the disk under test).

use std::future::Future;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use bytes::Bytes;
use conclave_engine::log::record::{Record, RecordBody};
use conclave_engine::log::segment::{prepare_segment, settle_iopoll_probe};
use conclave_engine::log::{Entry, Log, LogOptions};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use glommio::{LocalExecutorBuilder, Placement};

const SEGMENT_BYTES: u64 = 16 << 20;
const ENTRY_PAYLOAD: usize = 256;
const GROUPS: u32 = 8;

fn bench_dir() -> tempfile::TempDir {
    let root = std::env::var_os("CONCLAVE_BENCH_DIR").map_or_else(std::env::temp_dir, PathBuf::from);
    tempfile::tempdir_in(root).expect("bench dir")
}

fn on_executor<F: Future<Output = Duration> + 'static>(make: impl FnOnce() -> F) -> Duration {
    LocalExecutorBuilder::new(Placement::Unbound).io_memory(2 << 20).make().expect("executor").run(make())
}

/// `iters` raw writes of `size` bytes (rounded up to 4 KiB), each followed by `fdatasync`.
fn raw(size: usize, iters: u64) -> Duration {
    let dir = bench_dir();
    let path = dir.path().to_path_buf();
    on_executor(move || async move {
        settle_iopoll_probe(&path).await.unwrap();
        let prepared = prepare_segment(&path, 0, SEGMENT_BYTES, true).await.unwrap();
        let len = size.div_ceil(4096) * 4096;
        let mut offset = 0u64;
        let started = Instant::now();
        for _ in 0..iters {
            let mut buffer = prepared.file.alloc_dma_buffer(len);
            buffer.as_bytes_mut().fill(0x5A);
            prepared.file.write_at(buffer, offset).await.unwrap();
            prepared.file.fdatasync().await.unwrap();
            offset = (offset + len as u64) % (SEGMENT_BYTES - len as u64);
        }
        let took = started.elapsed();
        prepared.file.close().await.unwrap();
        took
    })
}

/// `iters` flushes of `size` payload bytes spread over several groups, each then synced.
fn log(size: usize, iters: u64) -> Duration {
    let dir = bench_dir();
    let path = dir.path().to_path_buf();
    on_executor(move || async move {
        let options = LogOptions { tail_cache_bytes: 8 << 20, ..LogOptions::with_segment_bytes(SEGMENT_BYTES) };
        let (log, _) = Log::open(&path, options).await.unwrap();
        let per_entry = size.min(ENTRY_PAYLOAD);
        let entries = size.div_ceil(per_entry);
        let per_group = entries.div_ceil(GROUPS as usize).max(1);
        let payload = Bytes::from(vec![0xA5u8; per_entry]);
        log.append(GROUPS, vec![Entry::new(1, 1, 0, payload.clone())]).await.unwrap();
        log.wait_prepared().await;
        let mut next = [1u64; GROUPS as usize];
        let started = Instant::now();
        for _ in 0..iters {
            let mut left = entries;
            let mut group = 0;
            while left > 0 {
                let take = left.min(per_group);
                let first = next[group];
                let batch: Vec<Entry> = (first..first + take as u64).map(|i| Entry::new(i, 1, 0, payload.clone())).collect();
                log.append_entries(group as u32, batch).unwrap();
                next[group] += take as u64;
                group = (group + 1) % GROUPS as usize;
                left -= take;
            }
            log.sync().await.unwrap();
        }
        let took = started.elapsed();
        log.close().await.unwrap();
        took
    })
}

fn append_sync(c: &mut Criterion) {
    let mut group = c.benchmark_group("log_append_sync");
    group.sample_size(10).warm_up_time(Duration::from_millis(500)).measurement_time(Duration::from_secs(3));
    for size in [128usize, 4096, 64 << 10, 1 << 20] {
        group.throughput(Throughput::Bytes(size as u64));
        group.bench_with_input(BenchmarkId::new("raw", size), &size, |b, &size| b.iter_custom(|iters| raw(size, iters)));
        group.bench_with_input(BenchmarkId::new("log", size), &size, |b, &size| b.iter_custom(|iters| log(size, iters)));
    }
    group.finish();
}

fn framing(c: &mut Criterion) {
    let mut group = c.benchmark_group("log_framing");
    for (entries, payload) in [(1usize, 128usize), (64, 1024)] {
        let record = Record {
            group: 1,
            body: RecordBody::Entries((1..=entries as u64).map(|i| Entry::new(i, 1, 0, vec![7u8; payload])).collect()),
        };
        let mut buffer = vec![0u8; record.framed_len()];
        group.throughput(Throughput::Bytes(buffer.len() as u64));
        group.bench_function(BenchmarkId::new("encode", format!("{entries}x{payload}")), |b| {
            b.iter(|| record.encode_into(42, 40, &mut buffer))
        });
    }
    group.finish();
}

criterion_group!(benches, append_sync, framing);
criterion_main!(benches);
