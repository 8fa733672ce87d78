//! Log throughput and latency against batch size, next to a raw baseline measured in the
//! same run on the same disk: aligned `O_DIRECT` writes of the same size plus `fdatasync`,
//! no framing, into a file prepared like a log segment.
//!
//! Usage: `log-bench [--dir DIR] [--seconds S] [--sizes 128,4096,65536,...] [--no-zero-fill] [--dsync]`
//! (sizes are bytes of payload per flush; DIR defaults to a directory under /tmp; `--dsync`
//! opens the log's segments with `O_DSYNC` like the server's default, otherwise the log syncs
//! with `fdatasync`; the raw side always writes then syncs with `fdatasync`).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use bytes::Bytes;
use conclave_engine::log::segment::prepare_segment;
use conclave_engine::log::{Entry, Log, LogOptions};
use glommio::{LocalExecutorBuilder, Placement};

const GROUPS: u32 = 8;
const ENTRY_PAYLOAD: usize = 256;
const RAW_FILE_BYTES: u64 = 64 << 20;

struct Config {
    dir: PathBuf,
    seconds: f64,
    sizes: Vec<usize>,
    zero_fill: bool,
    dsync: bool,
}

/// What one measured loop did.
struct Run {
    bytes: u64,
    elapsed: Duration,
    latencies_ns: Vec<u64>,
}

impl Run {
    fn record(&mut self, took: Duration, bytes: usize) {
        self.latencies_ns.push(took.as_nanos() as u64);
        self.bytes += bytes as u64;
        self.elapsed += took;
    }

    /// Bytes per second of time spent in this side's operations.
    fn mib_per_s(&self) -> f64 {
        self.bytes as f64 / self.elapsed.as_secs_f64() / (1 << 20) as f64
    }

    fn percentile_us(&mut self, p: f64) -> f64 {
        self.latencies_ns.sort_unstable();
        let at = ((self.latencies_ns.len() as f64 - 1.0) * p).round() as usize;
        self.latencies_ns.get(at).copied().unwrap_or(0) as f64 / 1000.0
    }
}

fn parse_args() -> Result<Config, String> {
    let mut config = Config {
        dir: std::env::temp_dir().join(format!("conclave-log-bench-{}", std::process::id())),
        seconds: 2.0,
        sizes: vec![128, 4096, 16 << 10, 64 << 10, 256 << 10, 1 << 20],
        zero_fill: true,
        dsync: false,
    };
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let mut value = || args.next().ok_or(format!("{flag} needs a value"));
        match flag.as_str() {
            "--dir" => config.dir = PathBuf::from(value()?),
            "--seconds" => config.seconds = value()?.parse().map_err(|e| format!("--seconds: {e}"))?,
            "--sizes" => {
                config.sizes =
                    value()?.split(',').map(|s| s.parse::<usize>().map_err(|e| format!("--sizes: {e}"))).collect::<Result<_, _>>()?
            }
            "--no-zero-fill" => config.zero_fill = false,
            "--dsync" => config.dsync = true,
            other => return Err(format!("unknown argument {other}")),
        }
    }
    Ok(config)
}

/// The raw baseline: a file prepared exactly like a log segment, written with aligned
/// direct writes at increasing offsets, each followed by `fdatasync`.
struct Raw {
    file: glommio::io::DmaFile,
    path: PathBuf,
    offset: u64,
}

impl Raw {
    async fn new(dir: &Path, zero_fill: bool) -> Raw {
        let prepared = prepare_segment(dir, u64::MAX, RAW_FILE_BYTES, zero_fill, false).await.expect("raw file");
        Raw { file: prepared.file, path: prepared.path, offset: 0 }
    }

    /// Writes one batch of `size` bytes (rounded up to the block) and syncs it.
    async fn op(&mut self, size: usize, into: &mut Run) {
        let align = self.file.alignment() as usize;
        let len = size.div_ceil(align) * align;
        let op = Instant::now();
        let mut buffer = self.file.alloc_dma_buffer(len);
        buffer.as_bytes_mut().fill(0x5A);
        self.file.write_at(buffer, self.offset).await.expect("raw write");
        self.file.fdatasync().await.expect("raw fdatasync");
        into.record(op.elapsed(), size);
        self.offset = (self.offset + len as u64) % (RAW_FILE_BYTES - len as u64);
    }

    async fn remove(self) {
        self.file.close().await.expect("close raw file");
        std::fs::remove_file(&self.path).expect("remove raw file");
    }
}

/// The log under test, fed batches of `size` payload bytes spread over several groups.
struct LogLoad {
    log: Log,
    payload: Bytes,
    next: [u64; GROUPS as usize],
    group: usize,
}

impl LogLoad {
    async fn new(dir: &Path, zero_fill: bool, dsync: bool) -> LogLoad {
        let options = LogOptions { zero_fill_segments: zero_fill, dsync_writes: dsync, tail_cache_bytes: 8 << 20, ..LogOptions::default() };
        let (log, _) = Log::open(dir, options).await.expect("open log");
        let payload = Bytes::from(vec![0xA5u8; ENTRY_PAYLOAD]);
        // The first append creates the first segment; the next one is then prepared.
        log.append(GROUPS, vec![Entry::new(1, 1, 0, payload.clone())]).await.expect("warm-up append");
        log.wait_prepared().await;
        LogLoad { log, payload, next: [1; GROUPS as usize], group: 0 }
    }

    /// Appends `size` payload bytes over several groups, then syncs them.
    async fn op(&mut self, size: usize, into: &mut Run) {
        let per_entry = size.min(ENTRY_PAYLOAD);
        let entries_per_flush = size.div_ceil(per_entry);
        let per_group = entries_per_flush.div_ceil(GROUPS as usize).max(1);
        let payload = self.payload.slice(..per_entry);
        let op = Instant::now();
        let mut left = entries_per_flush;
        while left > 0 {
            let take = left.min(per_group);
            let first = self.next[self.group];
            let batch: Vec<Entry> = (first..first + take as u64).map(|i| Entry::new(i, 1, 0, payload.clone())).collect();
            self.log.append_entries(self.group as u32, batch).expect("append");
            self.next[self.group] += take as u64;
            self.group = (self.group + 1) % GROUPS as usize;
            left -= take;
        }
        self.log.sync().await.expect("sync");
        into.record(op.elapsed(), entries_per_flush * per_entry);
    }
}

fn empty_run() -> Run {
    Run { bytes: 0, elapsed: Duration::ZERO, latencies_ns: Vec::new() }
}

/// Alternates one raw operation and one log operation, so both see the same disk weather
/// (this machine's disk is shared and its flush latency swings by 10x from second to second).
async fn measure(dir: &Path, n: usize, size: usize, seconds: f64, zero_fill: bool, dsync: bool) -> (Run, Run) {
    let mut raw = Raw::new(dir, zero_fill).await;
    let log_dir = dir.join(format!("log-{n}"));
    let mut load = LogLoad::new(&log_dir, zero_fill, dsync).await;
    glommio::timer::sleep(Duration::from_millis(300)).await;
    let (mut raw_run, mut log_run) = (empty_run(), empty_run());
    let started = Instant::now();
    while started.elapsed().as_secs_f64() < seconds {
        raw.op(size, &mut raw_run).await;
        load.op(size, &mut log_run).await;
    }
    raw.remove().await;
    load.log.close().await.expect("close log");
    std::fs::remove_dir_all(&log_dir).expect("remove log dir");
    (raw_run, log_run)
}

/// Fills 96 MiB of log (a full 64 MiB segment and half of the next) and times reopening it.
async fn recovery_time(dir: &Path, zero_fill: bool) {
    const FILL: usize = 96;
    let mut load = LogLoad::new(dir, zero_fill, false).await;
    let mut sink = empty_run();
    for _ in 0..FILL {
        load.op(1 << 20, &mut sink).await;
    }
    load.log.close().await.expect("close log");
    let options = LogOptions { zero_fill_segments: zero_fill, ..LogOptions::default() };
    let started = Instant::now();
    let (log, recovery) = Log::open(dir, options).await.expect("reopen log");
    let took = started.elapsed();
    let entries: usize = recovery.groups.values().map(|g| g.entries.len()).sum();
    println!(
        "recovery: {FILL} MiB of payload, {} records, {entries} entries, {} segments: {:.0} ms",
        recovery.records,
        recovery.segments,
        took.as_secs_f64() * 1000.0
    );
    drop(recovery);
    log.close().await.expect("close log");
}

fn main() {
    let config = match parse_args() {
        Ok(config) => config,
        Err(error) => {
            eprintln!("log-bench: {error}");
            std::process::exit(2);
        }
    };
    std::fs::create_dir_all(&config.dir).expect("create bench dir");
    let executor = LocalExecutorBuilder::new(Placement::Unbound)
        .io_memory(2 << 20)
        .make()
        .expect("glommio executor (check `ulimit -l` against io_memory)");
    executor.run(async move {
        conclave_engine::log::segment::settle_iopoll_probe(&config.dir).await.expect("probe");
        println!(
            "{:>9} | {:>10} {:>9} {:>9} | {:>10} {:>9} {:>9} | {:>7} {:>7}",
            "batch B", "raw MiB/s", "raw p50", "raw p99", "log MiB/s", "log p50", "log p99", "thr %", "p50 x"
        );
        for (n, &size) in config.sizes.iter().enumerate() {
            let (mut raw, mut log) = measure(&config.dir, n, size, config.seconds, config.zero_fill, config.dsync).await;
            let (raw_p50, log_p50) = (raw.percentile_us(0.5), log.percentile_us(0.5));
            println!(
                "{:>9} | {:>10.2} {:>7.0}us {:>7.0}us | {:>10.2} {:>7.0}us {:>7.0}us | {:>6.0}% {:>7.2}",
                size,
                raw.mib_per_s(),
                raw_p50,
                raw.percentile_us(0.99),
                log.mib_per_s(),
                log_p50,
                log.percentile_us(0.99),
                100.0 * log.mib_per_s() / raw.mib_per_s(),
                log_p50 / raw_p50,
            );
        }
        recovery_time(&config.dir.join("recovery"), config.zero_fill).await;
        let _ = std::fs::remove_dir_all(&config.dir);
    });
}
