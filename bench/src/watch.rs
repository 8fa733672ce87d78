//! The notification workloads. `watch`: per election, W watchers and a driver whose
//! leader alternately withdraws and re-enters; measured from each command's
//! acknowledgement to each watcher's notification of exactly the acknowledged state.
//! `failover`: the leader's connection is shut down; measured from the shutdown to each
//! watcher seeing the other candidate lead.
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::conclave::{ConclaveClient, Term};
use crate::config::BenchConfig;
use crate::error::BenchError;
use crate::schedule::Slot;
use crate::subscribers::Subscribers;
use crate::workload::{short_message, RunContext};

/// The watchers of one election, stopped on drop.
pub struct Watchers {
    subscribers: Subscribers<Term>,
}

impl Watchers {
    /// Starts `count` watchers of `name`, each on its own connection (spread over the
    /// endpoints from `first_caller` on), and waits for each one's first state.
    pub async fn start(ctx: &RunContext, name: &str, count: usize, first_caller: usize) -> Result<Watchers, BenchError> {
        Watchers::start_on(name, count, &ctx.config, |watcher| ctx.config.endpoint_of(first_caller + watcher).to_string()).await
    }

    /// Starts `count` watchers of `name`, watcher `w` connected to `endpoint_of(w)`, and
    /// waits for each one's first state (at most `timeout`).
    pub async fn start_on(
        name: &str,
        count: usize,
        config: &BenchConfig,
        endpoint_of: impl Fn(usize) -> String,
    ) -> Result<Watchers, BenchError> {
        let mut subscribers = Subscribers::new("watchers");
        for watcher in 0..count {
            let mut client = ConclaveClient::connect(&endpoint_of(watcher), config).await?;
            let mut stream = client.watch(name).await?;
            subscribers.spawn(|feed| async move {
                let _connection = client;
                while let Ok(Some(term)) = stream.next().await {
                    if !feed.received(term) {
                        return;
                    }
                }
            });
        }
        let mut watchers = Watchers { subscribers };
        watchers
            .wait_for(|_| true, config.request_timeout)
            .await
            .map_err(|e| BenchError::Setup(format!("first watch state of {name}: {e}")))?;
        Ok(watchers)
    }

    /// The moment each watcher first received a state matching `wanted`, waiting at most
    /// `timeout`. States not matching are skipped (earlier changes still in flight).
    pub async fn wait_for(&mut self, wanted: impl Fn(&Term) -> bool, timeout: Duration) -> Result<Vec<Instant>, BenchError> {
        self.subscribers.wait_for(wanted, timeout).await
    }
}

/// Counts notifications that arrived before the command's acknowledgement (recorded as 0).
#[derive(Default)]
pub struct NotifyCounters {
    pub before_ack: AtomicU64,
}

/// Records how long after `from` each watcher saw the state.
fn record_notifications(ctx: &RunContext, op: &'static str, from: Instant, seen: &[Instant], counters: &NotifyCounters) {
    for at in seen {
        if *at < from {
            counters.before_ack.fetch_add(1, Ordering::Relaxed);
        }
        ctx.recorder.record(op, at.saturating_duration_since(from));
    }
}

/// Two candidates of one election on their own connections, the first one leading.
async fn two_candidates(ctx: &RunContext, name: &str, first_caller: usize) -> Result<[ConclaveClient; 2], BenchError> {
    let mut first = ConclaveClient::connect(ctx.config.endpoint_of(first_caller), &ctx.config).await?;
    let mut second = ConclaveClient::connect(ctx.config.endpoint_of(first_caller + 1), &ctx.config).await?;
    let state = first.enter(name, "a").await?;
    if state.leader != "a" {
        return Err(BenchError::Setup(format!("election {name} already has leader {:?}: use a fresh --name-prefix", state.leader)));
    }
    second.enter(name, "b").await?;
    Ok([first, second])
}

/// One election prepared for the watch or failover workload: its two candidates ("a"
/// leading, "b" next) and its watchers.
pub struct WatchedElection {
    election: usize,
    candidates: [ConclaveClient; 2],
    watchers: Watchers,
}

/// Connects the candidates and watchers of `election` (not measured).
pub async fn prepare(ctx: &RunContext, election: usize) -> Result<WatchedElection, BenchError> {
    let name = &ctx.names[election];
    let per_election = ctx.config.watchers + 2;
    let candidates = two_candidates(ctx, name, election * per_election).await?;
    let watchers = Watchers::start(ctx, name, ctx.config.watchers, election * per_election + 2).await?;
    Ok(WatchedElection { election, candidates, watchers })
}

/// The driver of one election of the watch workload.
pub async fn watch_driver(ctx: Arc<RunContext>, prepared: WatchedElection, counters: Arc<NotifyCounters>) -> Result<(), BenchError> {
    let WatchedElection { election, candidates: [first, second], mut watchers } = prepared;
    let name = &ctx.names[election];
    let mut candidates = [(first, "a"), (second, "b")];
    let timeout = ctx.config.request_timeout;
    while let Slot::Go { .. } = ctx.pacer.claim() {
        let (leader, candidate) = &mut candidates[0];
        for op in ["withdraw", "enter"] {
            let sent = Instant::now();
            let result = if op == "withdraw" { leader.withdraw(name, candidate).await } else { leader.enter(name, candidate).await };
            let ack = Instant::now();
            ctx.outcome(op, sent, &result);
            let Ok(expected) = result else { continue };
            match watchers.wait_for(|t| *t == expected, timeout).await {
                Ok(seen) => record_notifications(&ctx, "notify", ack, &seen, &counters),
                Err(e) => ctx.recorder.error("notify", &short_message(&e)),
            }
        }
        candidates.swap(0, 1);
    }
    Ok(())
}

/// The driver of one election of the failover workload.
pub async fn failover_driver(ctx: Arc<RunContext>, prepared: WatchedElection) -> Result<(), BenchError> {
    let WatchedElection { election, candidates: [first, second], mut watchers } = prepared;
    let name = &ctx.names[election];
    let per_election = ctx.config.watchers + 2;
    let mut leader = (first, "a");
    let mut next = (second, "b");
    let timeout = ctx.config.request_timeout;
    let mut reconnects = 0usize;
    while let Slot::Go { .. } = ctx.pacer.claim() {
        let successor = next.1;
        let cut = Instant::now();
        leader.0.socket().shut_down();
        match watchers.wait_for(|t| t.leader == successor, timeout).await {
            Ok(seen) => {
                for at in seen {
                    ctx.recorder.record("failover", at.saturating_duration_since(cut));
                }
            }
            Err(e) => ctx.recorder.error("failover", &short_message(&e)),
        }
        // The cut candidate comes back on a new connection, last in line.
        reconnects += 1;
        let mut rejoined = ConclaveClient::connect(ctx.config.endpoint_of(election * per_election + reconnects), &ctx.config).await?;
        let again = leader.1;
        let sent = Instant::now();
        let result = rejoined.enter(name, again).await;
        ctx.outcome("enter", sent, &result);
        result?;
        watchers.wait_for(|t| t.candidates.iter().any(|c| c == again), timeout).await?;
        leader = std::mem::replace(&mut next, (rejoined, again));
    }
    Ok(())
}
