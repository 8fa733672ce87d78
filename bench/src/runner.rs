//! One run from start to end: create the elections, connect every caller (not measured),
//! start all of them at once, tick the one-second windows and the progress line, collect
//! the report and write it.
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::Barrier;

use crate::client::ElectionClient;
use crate::config::{BenchConfig, LoadMode, Target, Workload};
use crate::error::BenchError;
use crate::etcd_watch;
use crate::report::Report;
use crate::schedule::Pacer;
use crate::stats::{progress_line, Recorder};
use crate::watch::{self, NotifyCounters};
use crate::workload::{self, short_message, RunContext};

/// Connections that create the elections (and hold their leaders for `read`) in parallel.
const SETUP_CONNECTIONS: usize = 8;
/// The measured phase of a run bounded only by `operations`.
const NO_DEADLINE: Duration = Duration::from_secs(365 * 24 * 3600);

/// How one caller or driver task ended.
enum TaskEnd {
    Done,
    /// Its connections or first states could not be set up: the run is invalid.
    SetupFailed(BenchError),
    /// It stopped early during the measured phase (counted as an error of the run).
    Stopped(BenchError),
}

/// Creates every election; for `read`, also enters a holder candidate in each so every
/// GetTerm sees a leader. Returns the holders' connections, to keep for the whole run.
async fn setup_elections(config: &BenchConfig, names: &[String], hold: bool) -> Result<Vec<ElectionClient>, BenchError> {
    let connections = SETUP_CONNECTIONS.min(names.len());
    let mut tasks = Vec::with_capacity(connections);
    for connection in 0..connections {
        let config = config.clone();
        let mine: Vec<String> = names.iter().skip(connection).step_by(connections).cloned().collect();
        tasks.push(tokio::spawn(async move {
            let mut client = ElectionClient::connect(&config, connection).await?;
            for name in &mine {
                client.create(name).await?;
                if hold {
                    client.enter(name, "holder").await?;
                }
            }
            Ok::<_, BenchError>(client)
        }));
    }
    let mut holders = Vec::with_capacity(connections);
    for task in tasks {
        let client = task.await.map_err(|e| BenchError::Setup(format!("setup task: {e}")))??;
        holders.push(client);
    }
    Ok(holders)
}

/// `ready` is passed once every worker is set up; `go` once the measured phase has begun.
struct StartLine {
    ready: Barrier,
    go: Barrier,
}

impl StartLine {
    async fn wait(&self) {
        self.ready.wait().await;
        self.go.wait().await;
    }
}

/// Connects (or prepares) one worker, waits for all others and the start, then runs its loop.
async fn worker(ctx: Arc<RunContext>, index: usize, barrier: Arc<StartLine>, counters: Arc<NotifyCounters>) -> TaskEnd {
    match ctx.config.workload {
        Workload::Churn | Workload::Read | Workload::Mixed => {
            let client = ElectionClient::connect(&ctx.config, index).await;
            if client.is_err() {
                ctx.pacer.stop();
            }
            barrier.wait().await;
            let client = match client {
                Ok(client) => client,
                Err(e) => return TaskEnd::SetupFailed(e),
            };
            match ctx.config.workload {
                Workload::Churn => workload::churn_caller(ctx, index, client).await,
                Workload::Read => workload::read_caller(ctx, index, client).await,
                _ => workload::mixed_caller(ctx, index, client).await,
            }
            TaskEnd::Done
        }
        Workload::Watch | Workload::Failover if ctx.config.target == Target::Etcd => {
            let prepared = etcd_watch::prepare(&ctx, index).await;
            if prepared.is_err() {
                ctx.pacer.stop();
            }
            barrier.wait().await;
            let prepared = match prepared {
                Ok(prepared) => prepared,
                Err(e) => return TaskEnd::SetupFailed(e),
            };
            let result = if ctx.config.workload == Workload::Watch {
                etcd_watch::watch_driver(ctx, prepared).await
            } else {
                etcd_watch::failover_driver(ctx, prepared).await
            };
            match result {
                Ok(()) => TaskEnd::Done,
                Err(e) => TaskEnd::Stopped(e),
            }
        }
        Workload::Watch | Workload::Failover => {
            let prepared = watch::prepare(&ctx, index).await;
            if prepared.is_err() {
                ctx.pacer.stop();
            }
            barrier.wait().await;
            let prepared = match prepared {
                Ok(prepared) => prepared,
                Err(e) => return TaskEnd::SetupFailed(e),
            };
            let result = if ctx.config.workload == Workload::Watch {
                watch::watch_driver(ctx, prepared, counters).await
            } else {
                watch::failover_driver(ctx, prepared).await
            };
            match result {
                Ok(()) => TaskEnd::Done,
                Err(e) => TaskEnd::Stopped(e),
            }
        }
    }
}

/// What a reader needs to know to interpret the numbers of `config`'s run.
fn notes_of(config: &BenchConfig, counters: &NotifyCounters) -> Vec<String> {
    let mut notes = Vec::new();
    match config.load {
        LoadMode::Closed if matches!(config.workload, Workload::Watch | Workload::Failover) => {}
        LoadMode::Closed => notes.push(format!("closed loop: {} callers, each sends its next request when the previous one answered", config.concurrency)),
        LoadMode::Open { rate_per_sec } => notes.push(format!(
            "open loop at {rate_per_sec}/s over at most {} callers: latency is measured from each request's due time, so waiting for a free caller counts",
            config.concurrency
        )),
    }
    if config.target == Target::Etcd {
        notes.push(format!(
            "etcd: enter = Campaign (answers once the caller leads), withdraw = Resign, get_term = Leader (no leader is a valid answer), notify = Observe; one lease per connection, TTL {} s, kept alive every TTL/3",
            config.lease_ttl_secs
        ));
        if config.workload == Workload::Failover {
            notes.push("etcd failover: the leader's client goes silent (keep-alive stopped, connection closed); etcd hands leadership on when the lease expires, between 2/3 of the TTL and the TTL after the cut".into());
        }
    }
    match config.workload {
        Workload::Churn => notes.push("churn: each caller enters an election (becoming its leader), then withdraws; callers start on distinct elections".into()),
        Workload::Read => notes.push("read: GetTerm over elections that each have a leader (a holder connection entered first)".into()),
        Workload::Mixed => notes.push(format!("mixed: {}% GetTerm, the rest churn steps", config.read_percent)),
        Workload::Watch => {
            notes.push(format!(
                "watch: {} elections driven at once (concurrency is not used), {} watchers each on its own connection; notify = from the command's acknowledgement to each watcher receiving exactly the acknowledged state",
                config.elections, config.watchers
            ));
            notes.push(format!(
                "notifications that arrived before the acknowledgement (recorded as 0): {}",
                counters.before_ack.load(Ordering::Relaxed)
            ));
        }
        Workload::Failover if config.target == Target::Etcd => notes.push(format!(
            "failover: {} elections driven at once, {} observers each",
            config.elections, config.watchers
        )),
        Workload::Failover => notes.push(format!(
            "failover: {} elections driven at once, {} watchers each; failover = from shutdown(2) of the leader's client socket to each watcher receiving the state naming the next leader; enter = the cut candidate rejoining on a new connection",
            config.elections, config.watchers
        )),
    }
    notes
}

/// Runs `config` on the current tokio runtime (see [`crate::run`]).
pub async fn run_async(config: BenchConfig) -> Result<Report, BenchError> {
    config.validate().map_err(BenchError::Config)?;
    if config.kill.is_some() {
        return crate::kill::run(config).await;
    }
    let names: Vec<String> = (0..config.elections).map(|i| config.election_name(i)).collect();
    let holders = setup_elections(&config, &names, config.workload == Workload::Read).await?;
    let duration = if config.duration.is_zero() { NO_DEADLINE } else { config.duration };
    let pacer = match config.load {
        LoadMode::Closed => Pacer::closed(duration, config.operations),
        LoadMode::Open { rate_per_sec } => Pacer::open(duration, config.operations, rate_per_sec),
    };
    let workers = match config.workload {
        Workload::Watch | Workload::Failover => config.elections,
        _ => config.concurrency,
    };
    let ctx = Arc::new(RunContext { config: config.clone(), pacer, recorder: Recorder::new(), names });
    let counters = Arc::new(NotifyCounters::default());
    let barrier = Arc::new(StartLine { ready: Barrier::new(workers + 1), go: Barrier::new(workers + 1) });
    let tasks: Vec<_> =
        (0..workers).map(|index| tokio::spawn(worker(Arc::clone(&ctx), index, Arc::clone(&barrier), Arc::clone(&counters)))).collect();
    barrier.ready.wait().await;
    ctx.recorder.reset();
    let start = Instant::now();
    let server_cpu = crate::server_cpu::CpuWindow::start(&config.server_pids);
    ctx.pacer.begin_at(start);
    barrier.go.wait().await;
    let ticker = {
        let ctx = Arc::clone(&ctx);
        tokio::spawn(async move {
            for second in 1usize.. {
                tokio::time::sleep_until((start + Duration::from_secs(second as u64)).into()).await;
                let window = ctx.recorder.close_window();
                if ctx.config.progress {
                    eprintln!("{}", progress_line(second, &window));
                }
            }
        })
    };
    let mut setup_failure = None;
    for task in tasks {
        match task.await {
            Ok(TaskEnd::Done) => {}
            Ok(TaskEnd::SetupFailed(e)) => {
                setup_failure.get_or_insert(e);
            }
            Ok(TaskEnd::Stopped(e)) => ctx.recorder.error("driver", &short_message(&e)),
            Err(e) => ctx.recorder.error("driver", &format!("task ended abnormally: {e}")),
        }
    }
    let elapsed = start.elapsed();
    let server_cpu_sec = server_cpu.seconds();
    ticker.abort();
    let _ = ticker.await;
    if let Some(e) = setup_failure {
        return Err(BenchError::Setup(e.to_string()));
    }
    let last_window = ctx.recorder.close_window();
    if config.progress {
        eprintln!("{}", progress_line(elapsed.as_secs() as usize + 1, &last_window));
    }
    drop(holders);
    Report::finish(&config, elapsed, ctx.recorder.finish(), notes_of(&config, &counters), server_cpu_sec)
}
