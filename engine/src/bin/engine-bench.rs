//! The engine alone: three nodes' shard runtimes talking through the in-memory network of
//! `shard::loopback` — no gRPC, no TCP — each on its own real io_uring log. With
//! `--cores N` (default 1) there are N glommio executors, one pinned to each of the first
//! N CPUs, and executor `i` runs shard `i` of each of the three nodes: its own share of the
//! groups, its own three logs, its own in-memory network, as a node with N shards places
//! its groups (a group's replicas are shards of the same index, so no message crosses
//! cores). Closed-loop proposers (each with its own client session) keep Enter/Withdraw
//! commands in flight at every group's leader, and each group's sessions are kept alive in
//! one batch entry every 1.25 s, releasing the cached outputs of answered commands, as the
//! server does (a quarter of its default 5 s session timeout; without them each session's
//! output cache grows for the whole run). All executors measure the same window; the report
//! gives committed commands per second, the process's CPU per command (user + system, from
//! `getrusage`, so it includes the proposers and the in-memory network) and the counts per
//! command over all nodes (log writes, Raft messages, rounds).
//!
//! Usage: `engine-bench [--dir DIR] [--cores N] [--groups G] [--proposers-per-group P]
//! [--seconds S] [--tick-ms T] [--commit-notice-delay-us US] [--snapshot-every N]
//! [--snapshot-log-ratio R] [--compaction-tail N]` (`--groups` counts all groups, split
//! between the cores; `--commit-notice-delay-us`: how long leaders hold back commit
//! notices, 0, the default as in the server, for not at all; the last three as the
//! server's flags, with its defaults 10,000, 1 and 1,000: each group snapshots and compacts
//! its log as it would there; `--snapshot-every 0` never snapshots).

use std::cell::{Cell, RefCell};
use std::path::PathBuf;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use conclave_engine::shard::loopback::{LoopbackCluster, LoopbackOptions};
use conclave_engine::shard::{CounterValues, ShardError, ShardHandle};
use conclave_engine::sm::{command, ElectionOp, Output, PrimitiveRef};
use glommio::{LocalExecutorBuilder, Placement};

#[derive(Clone)]
struct Args {
    dir: PathBuf,
    cores: usize,
    groups: u32,
    proposers: u32,
    seconds: f64,
    tick_ms: u64,
    commit_notice_delay: Duration,
    snapshot_every: u64,
    snapshot_log_ratio: u64,
    compaction_tail: u64,
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        dir: std::env::temp_dir().join("conclave-engine-bench"),
        cores: 1,
        groups: 4,
        proposers: 64,
        seconds: 10.0,
        tick_ms: 10,
        commit_notice_delay: LoopbackOptions::default().commit_notice_delay,
        snapshot_every: 10_000,
        snapshot_log_ratio: 1,
        compaction_tail: 1_000,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or_else(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--dir" => args.dir = PathBuf::from(value()?),
            "--cores" => args.cores = value()?.parse().map_err(|e| format!("--cores: {e}"))?,
            "--groups" => args.groups = value()?.parse().map_err(|e| format!("--groups: {e}"))?,
            "--proposers-per-group" => args.proposers = value()?.parse().map_err(|e| format!("--proposers-per-group: {e}"))?,
            "--seconds" => args.seconds = value()?.parse().map_err(|e| format!("--seconds: {e}"))?,
            "--tick-ms" => args.tick_ms = value()?.parse().map_err(|e| format!("--tick-ms: {e}"))?,
            "--commit-notice-delay-us" => {
                let us: u64 = value()?.parse().map_err(|e| format!("--commit-notice-delay-us: {e}"))?;
                args.commit_notice_delay = Duration::from_micros(us);
            }
            "--snapshot-every" => args.snapshot_every = value()?.parse().map_err(|e| format!("--snapshot-every: {e}"))?,
            "--snapshot-log-ratio" => args.snapshot_log_ratio = value()?.parse().map_err(|e| format!("--snapshot-log-ratio: {e}"))?,
            "--compaction-tail" => args.compaction_tail = value()?.parse().map_err(|e| format!("--compaction-tail: {e}"))?,
            "--help" | "-h" => {
                return Err(
                    "usage: engine-bench [--dir DIR] [--cores N] [--groups G] [--proposers-per-group P] [--seconds S] [--tick-ms T] \
                            [--commit-notice-delay-us US] [--snapshot-every N] [--snapshot-log-ratio R] [--compaction-tail N]"
                        .into(),
                )
            }
            other => return Err(format!("unknown argument {other}")),
        }
    }
    if args.cores == 0 || args.groups == 0 || args.proposers == 0 || args.seconds <= 0.0 || args.tick_ms == 0 {
        return Err("--cores, --groups, --proposers-per-group, --seconds and --tick-ms must be positive".into());
    }
    if args.groups < args.cores as u32 {
        return Err(format!("--groups ({}) must give every core at least one group (--cores {})", args.groups, args.cores));
    }
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    if args.cores > cpus {
        return Err(format!("--cores {} is more than the {cpus} CPUs this process may use", args.cores));
    }
    Ok(args)
}

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

/// Process CPU time (user + system) so far.
fn cpu_time() -> Duration {
    // SAFETY: getrusage only writes the struct it is given.
    let usage = unsafe {
        let mut usage: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_SELF, &mut usage);
        usage
    };
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, (t.tv_usec as u32) * 1000);
    tv(usage.ru_utime) + tv(usage.ru_stime)
}

/// Waits until every group has a leader all nodes know.
async fn wait_for_leaders(cluster: &LoopbackCluster, groups: u32) -> Result<(), String> {
    let start = Instant::now();
    loop {
        let led = (1..=groups).all(|g| cluster.leader(g).is_some_and(|l| cluster.all_know(g, l)));
        if led {
            return Ok(());
        }
        if start.elapsed() > Duration::from_secs(30) {
            return Err("groups did not elect leaders within 30 s".into());
        }
        glommio::timer::sleep(Duration::from_millis(5)).await;
    }
}

/// How often each group's sessions are kept alive (the server's interval at its default
/// session timeout).
const KEEP_ALIVE_INTERVAL: Duration = Duration::from_millis(1_250);

/// Each session of a group and the last sequence number it had answered.
type Answered = Rc<RefCell<Vec<(u64, u64)>>>;

/// One closed-loop proposer: opens a session at its group's leader, then alternates Enter
/// and Withdraw of its own candidate until `stop`, counting committed commands and noting
/// in `answered` what its keep-alives may release.
async fn proposer(
    leader: ShardHandle,
    group: u32,
    id: u32,
    answered: Answered,
    stop: Rc<Cell<bool>>,
    committed: Rc<Cell<u64>>,
    failed: Rc<Cell<u64>>,
) -> Result<(), ShardError> {
    let opened = leader.propose(group, command::open_session(now_ms(), 600_000)).await?;
    let Ok(Output::SessionOpened { session_id }) = opened.result else {
        return Err(ShardError::Invalid(format!("open session: {:?}", opened.result)));
    };
    let slot = {
        let mut answered = answered.borrow_mut();
        answered.push((session_id, 0));
        answered.len() - 1
    };
    let election = format!("election-{}", id % 8);
    let candidate = format!("candidate-{group}-{id}");
    let created = leader.propose(group, command::create_primitive(now_ms(), session_id, 1, &election)).await?;
    if let Err(e) = created.result {
        return Err(ShardError::Invalid(format!("create {election}: {e}")));
    }
    let mut seq = 1;
    while !stop.get() {
        seq += 1;
        let op = if seq % 2 == 0 { ElectionOp::Enter } else { ElectionOp::Withdraw };
        let cmd = command::election(now_ms(), session_id, seq, PrimitiveRef::Name(election.clone()), op, &candidate);
        match leader.propose(group, cmd).await {
            Ok(c) if c.result.is_ok() => committed.set(committed.get() + 1),
            _ => failed.set(failed.get() + 1),
        }
        answered.borrow_mut()[slot].1 = seq;
    }
    Ok(())
}

/// Keeps a group's sessions alive until `stop`: one batch entry per interval.
async fn keeper(leader: ShardHandle, group: u32, answered: Answered, stop: Rc<Cell<bool>>) -> Result<(), ShardError> {
    while !stop.get() {
        glommio::timer::sleep(KEEP_ALIVE_INTERVAL).await;
        let sessions = answered.borrow().clone();
        for batch in sessions.chunks(command::MAX_KEEP_ALIVE_BATCH) {
            let kept = leader.propose(group, command::keep_alive_batch(now_ms(), batch)).await?;
            if let Err(e) = kept.result {
                return Err(ShardError::Invalid(format!("keep-alive: {e}")));
            }
        }
    }
    Ok(())
}

/// What the executors share: how many are ready to be measured, whether one failed, and
/// the measured window once every one is ready.
#[derive(Default)]
struct Window {
    ready: AtomicUsize,
    aborted: AtomicBool,
    bounds: OnceLock<(Instant, Instant)>,
}

/// What one executor measured over the window.
struct CoreReport {
    commands: u64,
    failed: u64,
    counters: CounterValues,
}

/// Sleeps this executor until `at`.
async fn sleep_until(at: Instant) {
    let left = at.saturating_duration_since(Instant::now());
    if !left.is_zero() {
        glommio::timer::sleep(left).await;
    }
}

/// One executor's share: shard `core` of each node, hosting `groups` groups under its own
/// directory, loaded until the window ends.
async fn bench_core(args: Args, core: usize, groups: u32, window: Arc<Window>) -> Result<CoreReport, String> {
    let dir = args.dir.join(format!("core{core}"));
    let opts = LoopbackOptions {
        groups,
        tick: Duration::from_millis(args.tick_ms),
        commit_notice_delay: args.commit_notice_delay,
        snapshot_every: args.snapshot_every,
        snapshot_log_ratio: args.snapshot_log_ratio,
        compaction_tail: args.compaction_tail,
        ..LoopbackOptions::default()
    };
    let cluster = LoopbackCluster::start(&opts, &dir).await?;
    wait_for_leaders(&cluster, groups).await?;
    let stop = Rc::new(Cell::new(false));
    let committed = Rc::new(Cell::new(0u64));
    let failed = Rc::new(Cell::new(0u64));
    let mut tasks = Vec::new();
    for group in 1..=groups {
        let leader = cluster.leader(group).ok_or("a group lost its leader")?;
        let answered = Answered::default();
        for id in 0..args.proposers {
            let task = proposer(cluster.handle(leader), group, id, answered.clone(), stop.clone(), committed.clone(), failed.clone());
            tasks.push(glommio::spawn_local(task).detach());
        }
        tasks.push(glommio::spawn_local(keeper(cluster.handle(leader), group, answered, stop.clone())).detach());
    }
    window.ready.fetch_add(1, Ordering::SeqCst);
    let (start, end) = loop {
        if let Some(bounds) = window.bounds.get() {
            break *bounds;
        }
        if window.aborted.load(Ordering::SeqCst) {
            stop.set(true);
            return Err("another core failed".into());
        }
        glommio::timer::sleep(Duration::from_millis(5)).await;
    };
    sleep_until(start).await;
    let nodes = cluster.node_ids();
    let counters_before: Vec<CounterValues> = nodes.iter().map(|n| cluster.counters(*n).snapshot()).collect();
    let (commands_before, failed_before) = (committed.get(), failed.get());
    sleep_until(end).await;
    let (commands, failed_in_window) = (committed.get() - commands_before, failed.get() - failed_before);
    let counters = nodes
        .iter()
        .zip(&counters_before)
        .map(|(n, before)| cluster.counters(*n).snapshot().since(before))
        .fold(CounterValues::default(), |acc, v| acc.plus(&v));
    stop.set(true);
    for task in tasks {
        if let Some(Err(e)) = task.await {
            eprintln!("core {core}: a proposer ended with {e}");
        }
    }
    cluster.stop().await.map_err(|e| e.to_string())?;
    Ok(CoreReport { commands, failed: failed_in_window, counters })
}

/// Groups of core `core` when `groups` are split as evenly as can be over `cores`.
fn groups_of_core(groups: u32, cores: usize, core: usize) -> u32 {
    let cores = cores as u32;
    groups / cores + u32::from((core as u32) < groups % cores)
}

fn bench(args: Args) -> Result<(), String> {
    let _ = std::fs::remove_dir_all(&args.dir);
    let window = Arc::new(Window::default());
    let mut executors = Vec::new();
    for core in 0..args.cores {
        let (args, shared) = (args.clone(), Arc::clone(&window));
        let groups = groups_of_core(args.groups, args.cores, core);
        let spawned = LocalExecutorBuilder::new(Placement::Fixed(core)).io_memory(8 << 20).name(&format!("engine-bench-{core}")).spawn(
            move || async move {
                let report = bench_core(args, core, groups, Arc::clone(&shared)).await;
                if report.is_err() {
                    shared.aborted.store(true, Ordering::SeqCst);
                }
                report
            },
        );
        match spawned {
            Ok(handle) => executors.push(handle),
            Err(e) => {
                window.aborted.store(true, Ordering::SeqCst);
                eprintln!("engine-bench: cannot start executor {core}: {e}");
            }
        }
    }
    // Once every executor has its leaders and proposers, warm up for a second, then
    // measure the same window on all of them.
    let mut cpu_window = None;
    let setup_deadline = Instant::now() + Duration::from_secs(120);
    while !window.aborted.load(Ordering::SeqCst) {
        if Instant::now() > setup_deadline {
            // An executor that died without reporting (a panic) never gets ready.
            window.aborted.store(true, Ordering::SeqCst);
            eprintln!("engine-bench: not every core was ready within 120 s");
            break;
        }
        if window.ready.load(Ordering::SeqCst) == args.cores {
            let start = Instant::now() + Duration::from_secs(1);
            let end = start + Duration::from_secs_f64(args.seconds);
            let _ = window.bounds.set((start, end));
            std::thread::sleep(start.saturating_duration_since(Instant::now()));
            let cpu_before = cpu_time();
            std::thread::sleep(end.saturating_duration_since(Instant::now()));
            cpu_window = Some((cpu_time() - cpu_before, end - start));
            break;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let mut reports = Vec::new();
    let mut errors = Vec::new();
    for (core, handle) in executors.into_iter().enumerate() {
        match handle.join() {
            Ok(Ok(report)) => reports.push(report),
            Ok(Err(e)) => errors.push(format!("core {core}: {e}")),
            Err(e) => errors.push(format!("core {core}: the executor failed: {e}")),
        }
    }
    let Some((cpu, elapsed)) = cpu_window.filter(|_| errors.is_empty()) else {
        if errors.is_empty() {
            errors.push("the run was aborted before its window".into());
        }
        return Err(errors.join("; "));
    };
    let commands: u64 = reports.iter().map(|r| r.commands).sum();
    let failed: u64 = reports.iter().map(|r| r.failed).sum();
    let total = reports.iter().fold(CounterValues::default(), |acc, r| acc.plus(&r.counters));
    let per_command = |n: u64| n as f64 / commands.max(1) as f64;
    let other = total.messages() - total.appends_with_entries - total.commit_notices - total.append_responses;
    let per_core: Vec<String> = reports.iter().map(|r| format!("{:.0}", r.commands as f64 / elapsed.as_secs_f64())).collect();
    println!(
        "engine-bench: 3 nodes, {} core(s) (shard i of each node on core i), {} groups x {} proposers, snapshot every {} entries (log ratio {}), {:.1} s measured",
        args.cores,
        args.groups,
        args.proposers,
        args.snapshot_every,
        args.snapshot_log_ratio,
        elapsed.as_secs_f64()
    );
    println!("committed commands/s: {:.0} (per core: {})", commands as f64 / elapsed.as_secs_f64(), per_core.join(", "));
    println!("replica writes/s (commands x 3): {:.0}", 3.0 * commands as f64 / elapsed.as_secs_f64());
    println!(
        "process CPU per command: {:.2} us ({:.0}% of {} core(s))",
        cpu.as_secs_f64() * 1e6 / commands.max(1) as f64,
        100.0 * cpu.as_secs_f64() / elapsed.as_secs_f64() / args.cores as f64,
        args.cores
    );
    println!("failed commands: {failed}");
    println!(
        "snapshots: {} taken, {:.1} MB in all, {:.1} bytes per command",
        total.tasks_spawned,
        total.snapshot_bytes as f64 / 1e6,
        per_command(total.snapshot_bytes)
    );
    println!(
        "per command, all nodes: log writes {:.4}, appends {:.4}, commit notices {:.4}, append responses {:.4}, other messages {:.4}, peer batches {:.4}, loop rounds {:.4}",
        per_command(total.log_writes),
        per_command(total.appends_with_entries),
        per_command(total.commit_notices),
        per_command(total.append_responses),
        per_command(other),
        per_command(total.batches_sent),
        per_command(total.rounds),
    );
    Ok(())
}

fn main() {
    let args = match parse_args() {
        Ok(args) => args,
        Err(e) => {
            eprintln!("{e}");
            std::process::exit(2);
        }
    };
    if let Err(e) = bench(args) {
        eprintln!("engine-bench: {e}");
        std::process::exit(1);
    }
}
