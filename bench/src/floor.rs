//! The machine's physical floor, measured in the same run as a bench: one `fdatasync` of a
//! 4 KiB overwrite inside a preallocated file (what a write-ahead log's group commit pays),
//! and one loopback TCP round trip of a small message. A replicated write on one node cannot
//! answer faster than one fdatasync plus the client's round trip.
//!
//! Beside it, for context only, the same fdatasync while three writers sync their own files
//! at once: what each log write meets when the three nodes of a loopback cluster share this
//! disk, as they do in the comparisons (the floor counts one writer alone).
use std::fs::OpenOptions;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::fs::FileExt;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::error::BenchError;
use crate::report::OpSummary;
use crate::stats::OpStats;

/// Bytes of one synced write.
pub const WRITE_BYTES: usize = 4096;
/// Writers of the shared-disk measurement: the nodes of the loopback cluster.
pub const SHARED_DISK_WRITERS: usize = 3;
/// Size of the preallocated file the writes cycle through.
const FILE_BYTES: u64 = 4 << 20;
/// Bytes of one loopback round trip's message, each way.
pub const ROUND_TRIP_BYTES: usize = 64;

/// The floor measurements.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Floor {
    /// Where the synced file lived.
    pub directory: PathBuf,
    pub fdatasync_4k: OpSummary,
    /// The same fdatasync, measured in each of `SHARED_DISK_WRITERS` threads syncing their
    /// own files at the same time (all their samples together).
    pub fdatasync_4k_shared_disk: OpSummary,
    pub loopback_round_trip: OpSummary,
    /// One fdatasync p50 plus two round-trip p50s: the floor of a single caller's
    /// Enter (client → node, the sync, node → client; two round trips leave room for the
    /// HTTP/2 exchange).
    pub enter_floor_us: f64,
    /// The shared-disk fdatasync p50 plus two round-trip p50s: the same floor when every
    /// node's log write meets the other nodes' on this one disk (context, not the target).
    pub enter_floor_shared_disk_us: f64,
}

fn sync_data(file: &std::fs::File) -> std::io::Result<()> {
    // SAFETY: fdatasync on a descriptor this function's caller owns open.
    let rc = unsafe { libc::fdatasync(file.as_raw_fd()) };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// `samples` fdatasyncs of 4 KiB overwrites in a preallocated file under `directory`.
pub fn fdatasync_latency(directory: &Path, samples: usize) -> Result<OpStats, BenchError> {
    fdatasync_latency_in(directory, 0, samples)
}

/// `samples` fdatasyncs in each of `writers` threads at once, each on its own file.
pub fn fdatasync_latency_shared(directory: &Path, writers: usize, samples: usize) -> Result<OpStats, BenchError> {
    let results: Vec<_> = std::thread::scope(|scope| {
        let threads: Vec<_> = (0..writers).map(|writer| scope.spawn(move || fdatasync_latency_in(directory, writer, samples))).collect();
        threads.into_iter().map(|thread| thread.join()).collect()
    });
    let mut all = OpStats::new();
    for result in results {
        let stats = result.map_err(|_| BenchError::Io("a writer thread panicked".into()))??;
        all.merge(&stats);
    }
    Ok(all)
}

fn fdatasync_latency_in(directory: &Path, writer: usize, samples: usize) -> Result<OpStats, BenchError> {
    let path = directory.join(format!(".conclave-bench-floor-{}-{writer}", std::process::id()));
    let file = OpenOptions::new().create(true).truncate(true).read(true).write(true).open(&path)?;
    let result = (|| {
        let zeros = vec![0u8; 1 << 20];
        for offset in (0..FILE_BYTES).step_by(zeros.len()) {
            file.write_all_at(&zeros, offset)?;
        }
        file.sync_all()?;
        let block = vec![0x5au8; WRITE_BYTES];
        let mut stats = OpStats::new();
        let slots = FILE_BYTES / WRITE_BYTES as u64;
        for i in 0..samples as u64 {
            let started = Instant::now();
            file.write_all_at(&block, (i % slots) * WRITE_BYTES as u64)?;
            sync_data(&file)?;
            stats.record(started.elapsed());
        }
        Ok::<_, std::io::Error>(stats)
    })();
    let _ = std::fs::remove_file(&path);
    Ok(result?)
}

/// `samples` round trips of a 64-byte message over loopback TCP to an echo thread.
pub fn loopback_round_trip(samples: usize) -> Result<OpStats, BenchError> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let address = listener.local_addr()?;
    let echo = std::thread::spawn(move || -> std::io::Result<()> {
        let (mut peer, _) = listener.accept()?;
        peer.set_nodelay(true)?;
        let mut buffer = [0u8; ROUND_TRIP_BYTES];
        loop {
            match peer.read_exact(&mut buffer) {
                Ok(()) => peer.write_all(&buffer)?,
                Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(()),
                Err(e) => return Err(e),
            }
        }
    });
    let mut stream = TcpStream::connect(address)?;
    stream.set_nodelay(true)?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    let message = [0xa5u8; ROUND_TRIP_BYTES];
    let mut reply = [0u8; ROUND_TRIP_BYTES];
    let mut stats = OpStats::new();
    for _ in 0..samples {
        let started = Instant::now();
        stream.write_all(&message)?;
        stream.read_exact(&mut reply)?;
        stats.record(started.elapsed());
    }
    drop(stream);
    echo.join().map_err(|_| BenchError::Io("the echo thread panicked".into()))??;
    Ok(stats)
}

/// Both floors, the disk one under `directory`.
pub fn measure(directory: &Path, fsync_samples: usize, round_trip_samples: usize) -> Result<Floor, BenchError> {
    let sync_started = Instant::now();
    let sync = fdatasync_latency(directory, fsync_samples)?;
    let sync_elapsed = sync_started.elapsed();
    let rtt_started = Instant::now();
    let rtt = loopback_round_trip(round_trip_samples)?;
    let rtt_elapsed = rtt_started.elapsed();
    let shared_started = Instant::now();
    let shared = fdatasync_latency_shared(directory, SHARED_DISK_WRITERS, fsync_samples)?;
    let shared_elapsed = shared_started.elapsed();
    let fdatasync_4k = sync.summary(sync_elapsed);
    let fdatasync_4k_shared_disk = shared.summary(shared_elapsed);
    let loopback_round_trip = rtt.summary(rtt_elapsed);
    let enter_floor_us = fdatasync_4k.p50_us + 2.0 * loopback_round_trip.p50_us;
    let enter_floor_shared_disk_us = fdatasync_4k_shared_disk.p50_us + 2.0 * loopback_round_trip.p50_us;
    Ok(Floor {
        directory: directory.to_path_buf(),
        fdatasync_4k,
        fdatasync_4k_shared_disk,
        loopback_round_trip,
        enter_floor_us,
        enter_floor_shared_disk_us,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn measures_real_syncs_and_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        let floor = measure(dir.path(), 20, 200).unwrap();
        assert_eq!(floor.fdatasync_4k.count, 20);
        assert_eq!(floor.fdatasync_4k_shared_disk.count, 20 * SHARED_DISK_WRITERS as u64);
        assert!(floor.enter_floor_shared_disk_us >= floor.fdatasync_4k_shared_disk.p50_us);
        assert_eq!(floor.loopback_round_trip.count, 200);
        assert!(floor.fdatasync_4k.p50_us > 0.0 && floor.loopback_round_trip.p50_us > 0.0);
        assert!(floor.enter_floor_us >= floor.fdatasync_4k.p50_us);
        let leftovers: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
        assert!(leftovers.is_empty(), "the synced file is removed");
    }
}
