//! kill -9 in the middle of writing: a child process (this test binary, running the
//! ignored `child_writer` entry point) appends as fast as it can and prints every
//! acknowledgement; the parent SIGKILLs it at a random moment, reopens the log, and checks
//! that every acknowledged entry is there, byte for byte. Repeated over several kills.

use std::collections::BTreeMap;
use std::future::Future;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use conclave_engine::log::{Entry, Log, LogOptions};
use glommio::{LocalExecutorBuilder, Placement};

const CHILD_DIR: &str = "CONCLAVE_LOG_KILL_CHILD_DIR";
const GROUPS: u32 = 6;

fn run<F: Future<Output = ()> + 'static>(make: impl FnOnce() -> F) {
    LocalExecutorBuilder::new(Placement::Unbound).io_memory(1 << 20).make().expect("executor").run(make());
}

fn options() -> LogOptions {
    LogOptions::with_segment_bytes(256 << 10)
}

fn payload(group: u32, index: u64) -> Bytes {
    Bytes::from(format!("{group}:{index}:").repeat(1 + (index % 40) as usize))
}

/// The writer run in the child process; only meaningful with `CONCLAVE_LOG_KILL_CHILD_DIR`.
#[test]
#[ignore = "entry point of the child process of acknowledged_entries_survive_sigkill"]
fn child_writer() {
    let dir = std::env::var(CHILD_DIR).expect("run by acknowledged_entries_survive_sigkill");
    run(move || async move {
        let (log, recovery) = Log::open(&dir, options()).await.expect("child opens the log");
        let deadline = Instant::now() + Duration::from_secs(20);
        let writers: Vec<_> = (0..GROUPS)
            .map(|group| {
                let log = log.clone();
                let mut next = recovery.groups.get(&group).map_or(1, |g| g.last_index() + 1);
                glommio::spawn_local(async move {
                    while Instant::now() < deadline {
                        let batch: Vec<Entry> = (next..next + 1 + next % 3).map(|i| Entry::new(i, 1, 0, payload(group, i))).collect();
                        let last = batch.last().unwrap().index;
                        log.append(group, batch.as_slice()).await.expect("append");
                        println!("ACK {group} {last}");
                        next = last + 1;
                    }
                })
            })
            .collect();
        for writer in writers {
            writer.await;
        }
    });
}

fn run_child_and_kill(dir: &Path, kill_after_acks: usize) -> BTreeMap<u32, u64> {
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args(["--ignored", "--exact", "child_writer", "--nocapture", "--test-threads=1"])
        .env(CHILD_DIR, dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn child");
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut acked = BTreeMap::new();
    let mut seen = 0;
    let started = Instant::now();
    while seen < kill_after_acks && started.elapsed() < Duration::from_secs(15) {
        let Some(Ok(line)) = lines.next() else { break };
        if let Some((group, index)) = parse_ack(&line) {
            acked.insert(group, index);
            seen += 1;
        }
    }
    child.kill().expect("SIGKILL the child");
    // Acknowledgements already printed were durable before they were printed.
    for line in lines.map_while(Result::ok) {
        if let Some((group, index)) = parse_ack(&line) {
            acked.insert(group, index);
        }
    }
    child.wait().unwrap();
    assert!(seen > 0, "the child acknowledged nothing");
    acked
}

fn parse_ack(line: &str) -> Option<(u32, u64)> {
    let mut words = line.strip_prefix("ACK ")?.split(' ');
    Some((words.next()?.parse().ok()?, words.next()?.parse().ok()?))
}

#[test]
fn acknowledged_entries_survive_sigkill() {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("log");
    let mut acked_total: BTreeMap<u32, u64> = BTreeMap::new();
    for (round, kill_after) in [150usize, 700, 1500].into_iter().enumerate() {
        for (group, index) in run_child_and_kill(&dir, kill_after) {
            acked_total.insert(group, index);
        }
        let dir = dir.clone();
        let acked = acked_total.clone();
        run(move || async move {
            let (log, recovery) = Log::open(&dir, options()).await.expect("reopen after kill");
            for (group, last_acked) in &acked {
                let recovered = &recovery.groups[group];
                assert!(recovered.last_index() >= *last_acked, "round {round}: group {group} lost acknowledged entries");
                for entry in recovered.entries.iter().take(*last_acked as usize) {
                    assert_eq!(entry.payload, payload(*group, entry.index), "round {round}: group {group}");
                }
                assert_eq!(recovered.entries.len() as u64, recovered.last_index(), "dense from 1");
            }
            log.close().await.unwrap();
        });
    }
}
