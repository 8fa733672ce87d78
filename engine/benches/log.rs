//! Criterion benchmarks of the segmented log: append + sync latency against batch size next
//! to the raw baseline (aligned `O_DIRECT` write + `fdatasync` of the same size into a file
//! prepared like a segment, no framing) on the same disk, and the CPU cost of framing.
//!
//! `cargo bench -p conclave-engine --bench log`. Runs in a temporary directory under
//! `$CONCLAVE_BENCH_DIR` (default: the system temp dir; put it on the disk under test).

use std::path::PathBuf;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use conclave_engine::log::record::{Record, RecordBody};
use conclave_engine::log::segment::{prepare_segment, settle_iopoll_probe};
use conclave_engine::log::{Entry, Log, LogOptions};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use glommio::{LocalExecutorBuilder, Placement};

const RAW_BYTES: u64 = 64 << 20;
const ENTRY_PAYLOAD: usize = 256;
const GROUPS: u32 = 8;

fn bench_dir() -> tempfile::TempDir {
    let root = std::env::var_os("CONCLAVE_BENCH_DIR").map_or_else(std::env::temp_dir, PathBuf::from);
    tempfile::tempdir_in(root).expect("bench dir")
}

/// What a measurement request runs.
#[derive(Clone, Copy)]
enum Side {
    Raw,
    Log,
}

/// A glommio executor on its own thread holding the raw file and the log for the whole
/// benchmark, so files are prepared once (not per sample) and samples measure only appends.
struct Rig {
    requests: mpsc::Sender<(Side, usize, u64)>,
    replies: mpsc::Receiver<Duration>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Rig {
    fn start() -> Rig {
        let (requests, incoming) = mpsc::channel::<(Side, usize, u64)>();
        let (reply, replies) = mpsc::channel();
        let thread = std::thread::spawn(move || {
            let dir = bench_dir();
            let path = dir.path().to_path_buf();
            let executor = LocalExecutorBuilder::new(Placement::Unbound).io_memory(2 << 20).make().expect("executor");
            executor.run(async move {
                settle_iopoll_probe(&path).await.unwrap();
                let raw_file = prepare_segment(&path, 0, RAW_BYTES, true, false).await.unwrap();
                let options = LogOptions { tail_cache_bytes: 8 << 20, ..LogOptions::default() };
                let (log, _) = Log::open(path.join("log"), options).await.unwrap();
                let payload = Bytes::from(vec![0xA5u8; ENTRY_PAYLOAD]);
                log.append(GROUPS, vec![Entry::new(1, 1, 0, payload.clone())]).await.unwrap();
                log.wait_prepared().await;
                let mut next = [1u64; GROUPS as usize];
                let mut offset = 0u64;
                // Blocking here is fine: nothing else runs on this executor meanwhile.
                while let Ok((side, size, iters)) = incoming.recv() {
                    let started = Instant::now();
                    for _ in 0..iters {
                        match side {
                            Side::Raw => {
                                let len = size.div_ceil(4096) * 4096;
                                let mut buffer = raw_file.file.alloc_dma_buffer(len);
                                buffer.as_bytes_mut().fill(0x5A);
                                raw_file.file.write_at(buffer, offset).await.unwrap();
                                raw_file.file.fdatasync().await.unwrap();
                                offset = (offset + len as u64) % (RAW_BYTES - len as u64);
                            }
                            Side::Log => append_batch(&log, &payload, &mut next, size).await,
                        }
                    }
                    reply.send(started.elapsed()).unwrap();
                }
                raw_file.file.close().await.unwrap();
                log.close().await.unwrap();
            });
        });
        Rig { requests, replies, thread: Some(thread) }
    }

    fn measure(&self, side: Side, size: usize, iters: u64) -> Duration {
        self.requests.send((side, size, iters)).unwrap();
        self.replies.recv().unwrap()
    }
}

impl Drop for Rig {
    fn drop(&mut self) {
        let (closed, _) = mpsc::channel();
        self.requests = closed;
        if let Some(thread) = self.thread.take() {
            thread.join().unwrap();
        }
    }
}

/// `size` payload bytes spread over several groups, then one sync.
async fn append_batch(log: &Log, payload: &Bytes, next: &mut [u64; GROUPS as usize], size: usize) {
    let per_entry = size.min(ENTRY_PAYLOAD);
    let entries = size.div_ceil(per_entry);
    let per_group = entries.div_ceil(GROUPS as usize).max(1);
    let payload = payload.slice(..per_entry);
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

fn append_sync(c: &mut Criterion) {
    let rig = Rig::start();
    let mut group = c.benchmark_group("log_append_sync");
    group.sample_size(10).warm_up_time(Duration::from_millis(500)).measurement_time(Duration::from_secs(3));
    for size in [128usize, 4096, 64 << 10, 1 << 20] {
        group.throughput(Throughput::Bytes(size as u64));
        for (name, side) in [("raw", Side::Raw), ("log", Side::Log)] {
            group.bench_with_input(BenchmarkId::new(name, size), &size, |b, &size| b.iter_custom(|iters| rig.measure(side, size, iters)));
        }
    }
    group.finish();
}

fn framing(c: &mut Criterion) {
    let mut group = c.benchmark_group("log_framing");
    for (entries, payload) in [(1usize, 128usize), (64, 1024)] {
        let record =
            Record { group: 1, body: RecordBody::Entries((1..=entries as u64).map(|i| Entry::new(i, 1, 0, vec![7u8; payload])).collect()) };
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
