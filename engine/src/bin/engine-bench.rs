//! The engine alone: three nodes' shard runtimes in one glommio executor (one core), each
//! on its own real io_uring log, talking through the in-memory network of
//! `shard::loopback` — no gRPC, no TCP. Closed-loop proposers (each with its own client
//! session) keep Enter/Withdraw commands in flight at every group's leader, and each
//! group's sessions are kept alive in one batch entry every 1.25 s, releasing the cached
//! outputs of answered commands, as the server does (a quarter of its default 5 s session
//! timeout; without them each session's output cache grows for the whole run); the report
//! gives committed commands per second, the process's CPU per command (user + system,
//! from `getrusage`, so it includes the proposers and the in-memory network) and each
//! node's counts per command (log writes, Raft messages, rounds).
//!
//! Usage: `engine-bench [--dir DIR] [--groups G] [--proposers-per-group P] [--seconds S]
//! [--tick-ms T] [--commit-notice-delay-us US]` (the last: how long leaders hold back commit
//! notices; 0, the default as in the server, for not at all).

use std::cell::{Cell, RefCell};
use std::path::PathBuf;
use std::rc::Rc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use conclave_engine::shard::loopback::{LoopbackCluster, LoopbackOptions};
use conclave_engine::shard::{CounterValues, ShardError, ShardHandle};
use conclave_engine::sm::{command, ElectionOp, Output, PrimitiveRef};
use glommio::{LocalExecutorBuilder, Placement};

struct Args {
    dir: PathBuf,
    groups: u32,
    proposers: u32,
    seconds: f64,
    tick_ms: u64,
    commit_notice_delay: Duration,
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        dir: std::env::temp_dir().join("conclave-engine-bench"),
        groups: 4,
        proposers: 64,
        seconds: 10.0,
        tick_ms: 10,
        commit_notice_delay: LoopbackOptions::default().commit_notice_delay,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or_else(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--dir" => args.dir = PathBuf::from(value()?),
            "--groups" => args.groups = value()?.parse().map_err(|e| format!("--groups: {e}"))?,
            "--proposers-per-group" => args.proposers = value()?.parse().map_err(|e| format!("--proposers-per-group: {e}"))?,
            "--seconds" => args.seconds = value()?.parse().map_err(|e| format!("--seconds: {e}"))?,
            "--tick-ms" => args.tick_ms = value()?.parse().map_err(|e| format!("--tick-ms: {e}"))?,
            "--commit-notice-delay-us" => {
                let us: u64 = value()?.parse().map_err(|e| format!("--commit-notice-delay-us: {e}"))?;
                args.commit_notice_delay = Duration::from_micros(us);
            }
            "--help" | "-h" => {
                return Err("usage: engine-bench [--dir DIR] [--groups G] [--proposers-per-group P] [--seconds S] [--tick-ms T] \
                            [--commit-notice-delay-us US]"
                    .into())
            }
            other => return Err(format!("unknown argument {other}")),
        }
    }
    if args.groups == 0 || args.proposers == 0 || args.seconds <= 0.0 || args.tick_ms == 0 {
        return Err("--groups, --proposers-per-group, --seconds and --tick-ms must be positive".into());
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

async fn bench(args: Args) -> Result<(), String> {
    let _ = std::fs::remove_dir_all(&args.dir);
    let opts = LoopbackOptions {
        groups: args.groups,
        tick: Duration::from_millis(args.tick_ms),
        commit_notice_delay: args.commit_notice_delay,
        ..LoopbackOptions::default()
    };
    let cluster = LoopbackCluster::start(&opts, &args.dir).await?;
    wait_for_leaders(&cluster, args.groups).await?;
    let stop = Rc::new(Cell::new(false));
    let committed = Rc::new(Cell::new(0u64));
    let failed = Rc::new(Cell::new(0u64));
    let mut tasks = Vec::new();
    for group in 1..=args.groups {
        let leader = cluster.leader(group).ok_or("a group lost its leader")?;
        let answered = Answered::default();
        for id in 0..args.proposers {
            let task = proposer(cluster.handle(leader), group, id, answered.clone(), stop.clone(), committed.clone(), failed.clone());
            tasks.push(glommio::spawn_local(task).detach());
        }
        tasks.push(glommio::spawn_local(keeper(cluster.handle(leader), group, answered, stop.clone())).detach());
    }
    // Warm up, then measure a window.
    glommio::timer::sleep(Duration::from_secs(1)).await;
    let nodes = cluster.node_ids();
    let counters_before: Vec<CounterValues> = nodes.iter().map(|n| cluster.counters(*n).snapshot()).collect();
    let (commands_before, cpu_before, start) = (committed.get(), cpu_time(), Instant::now());
    glommio::timer::sleep(Duration::from_secs_f64(args.seconds)).await;
    let (commands, cpu, elapsed) = (committed.get() - commands_before, cpu_time() - cpu_before, start.elapsed());
    let counters: Vec<CounterValues> =
        nodes.iter().zip(&counters_before).map(|(n, before)| cluster.counters(*n).snapshot().since(before)).collect();
    stop.set(true);
    for task in tasks {
        if let Some(Err(e)) = task.await {
            eprintln!("a proposer ended with {e}");
        }
    }
    cluster.stop().await.map_err(|e| e.to_string())?;
    let per_command = |n: u64| n as f64 / commands.max(1) as f64;
    let total = counters.iter().fold(CounterValues::default(), |acc, v| acc.plus(v));
    let other = total.messages() - total.appends_with_entries - total.commit_notices - total.append_responses;
    println!(
        "engine-bench: 3 nodes on one core, {} groups x {} proposers, {:.1} s measured",
        args.groups,
        args.proposers,
        elapsed.as_secs_f64()
    );
    println!("committed commands/s: {:.0}", commands as f64 / elapsed.as_secs_f64());
    println!("replica writes/s (commands x 3): {:.0}", 3.0 * commands as f64 / elapsed.as_secs_f64());
    println!(
        "process CPU per command: {:.2} us ({:.0}% of one core)",
        cpu.as_secs_f64() * 1e6 / commands.max(1) as f64,
        100.0 * cpu.as_secs_f64() / elapsed.as_secs_f64()
    );
    println!("failed commands: {}", failed.get());
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
    let executor = LocalExecutorBuilder::new(Placement::Fixed(0)).io_memory(8 << 20).name("engine-bench").make();
    let result = match executor {
        Ok(executor) => executor.run(bench(args)),
        Err(e) => Err(format!("cannot start the executor: {e}")),
    };
    if let Err(e) = result {
        eprintln!("engine-bench: {e}");
        std::process::exit(1);
    }
}
