//! The notification workloads against etcd, with etcd's semantics: Campaign blocks until
//! the caller leads, so each election has a leader and one successor whose Campaign is in
//! flight. `watch`: the leader resigns; measured from the Resign's acknowledgement to each
//! observer (Observe) receiving the successor. `failover`: the leader's client goes silent
//! (its lease keep-alive stops and its connection closes); measured from that moment to each
//! observer receiving the successor, which etcd grants once the lease expires (TTL).
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::task::JoinHandle;

use crate::error::BenchError;
use crate::etcd::EtcdClient;
use crate::schedule::Slot;
use crate::subscribers::Subscribers;
use crate::workload::{short_message, RunContext};

/// The observers of one election (each state is the leader's name), stopped on drop.
struct Observers {
    subscribers: Subscribers<Vec<u8>>,
}

impl Observers {
    async fn start(ctx: &RunContext, name: &str, count: usize, first_caller: usize) -> Result<Observers, BenchError> {
        let mut subscribers = Subscribers::new("observers");
        for watcher in 0..count {
            let endpoint = ctx.config.endpoint_of(first_caller + watcher);
            let mut client = EtcdClient::connect(endpoint, ctx.config.request_timeout, ctx.config.lease_ttl_secs).await?;
            let mut stream = client.observe(name).await?;
            subscribers.spawn(|feed| async move {
                let _connection = client;
                while let Ok(Some(leader)) = stream.next().await {
                    if !feed.received(leader) {
                        return;
                    }
                }
            });
        }
        let mut observers = Observers { subscribers };
        observers
            .wait_for(b"a", ctx.config.request_timeout)
            .await
            .map_err(|e| BenchError::Setup(format!("first leader of {name}: {e}")))?;
        Ok(observers)
    }

    /// When each observer first received `leader`, waiting at most `timeout`.
    async fn wait_for(&mut self, leader: &[u8], timeout: Duration) -> Result<Vec<Instant>, BenchError> {
        self.subscribers.wait_for(|l| l == leader, timeout).await
    }
}

/// A Campaign in flight: it answers once its caller leads.
type PendingCampaign = JoinHandle<(EtcdClient, Result<(), BenchError>)>;

fn campaign(name: &str, mut client: EtcdClient, candidate: &'static str) -> PendingCampaign {
    let name = name.to_string();
    tokio::spawn(async move {
        let result = client.enter(&name, candidate).await;
        (client, result)
    })
}

async fn elected(pending: PendingCampaign) -> Result<EtcdClient, BenchError> {
    let (client, result) = pending.await.map_err(|e| BenchError::Protocol { op: "enter", message: format!("campaign task: {e}") })?;
    result.map(|()| client)
}

/// One election prepared for the watch or failover workload against etcd.
pub struct EtcdElection {
    election: usize,
    leader: (EtcdClient, &'static str),
    successor: (PendingCampaign, &'static str),
    observers: Observers,
}

/// Elects "a", starts "b"'s Campaign and the observers (not measured).
pub async fn prepare(ctx: &Arc<RunContext>, election: usize) -> Result<EtcdElection, BenchError> {
    let name = &ctx.names[election];
    let per_election = ctx.config.watchers + 2;
    let config = &ctx.config;
    let mut first = EtcdClient::connect(config.endpoint_of(election * per_election), config.request_timeout, config.lease_ttl_secs).await?;
    first.enter(name, "a").await?;
    let second =
        EtcdClient::connect(config.endpoint_of(election * per_election + 1), config.request_timeout, config.lease_ttl_secs).await?;
    let pending = campaign(name, second, "b");
    let observers = Observers::start(ctx, name, config.watchers, election * per_election + 2).await?;
    Ok(EtcdElection { election, leader: (first, "a"), successor: (pending, "b"), observers })
}

/// The leader resigns, the successor leads, the old leader campaigns again.
pub async fn watch_driver(ctx: Arc<RunContext>, prepared: EtcdElection) -> Result<(), BenchError> {
    let EtcdElection { election, mut leader, mut successor, mut observers } = prepared;
    let name = ctx.names[election].clone();
    let timeout = ctx.config.request_timeout;
    while let Slot::Go { .. } = ctx.pacer.claim() {
        let sent = Instant::now();
        let result = leader.0.withdraw(&name).await;
        let ack = Instant::now();
        ctx.outcome("withdraw", sent, &result);
        result?;
        match observers.wait_for(successor.1.as_bytes(), timeout).await {
            Ok(seen) => seen.iter().for_each(|at| ctx.recorder.record("notify", at.saturating_duration_since(ack))),
            Err(e) => ctx.recorder.error("notify", &short_message(&e)),
        }
        let (pending, next_name) = successor;
        let next = elected(pending).await?;
        let (old, old_name) = leader;
        successor = (campaign(&name, old, old_name), old_name);
        leader = (next, next_name);
    }
    Ok(())
}

/// The leader's client goes silent; its successor leads once its lease expires.
pub async fn failover_driver(ctx: Arc<RunContext>, prepared: EtcdElection) -> Result<(), BenchError> {
    let EtcdElection { election, leader, mut successor, mut observers } = prepared;
    let name = ctx.names[election].clone();
    let per_election = ctx.config.watchers + 2;
    let lease = Duration::from_secs(ctx.config.lease_ttl_secs as u64);
    let timeout = ctx.config.request_timeout + lease;
    let mut leader = Some(leader);
    let mut reconnects = 0usize;
    while let Slot::Go { .. } = ctx.pacer.claim() {
        let (silenced, silenced_name) = leader.take().expect("a leader between rounds");
        let cut = Instant::now();
        drop(silenced);
        match observers.wait_for(successor.1.as_bytes(), timeout).await {
            Ok(seen) => seen.iter().for_each(|at| ctx.recorder.record("failover", at.saturating_duration_since(cut))),
            Err(e) => ctx.recorder.error("failover", &short_message(&e)),
        }
        let (pending, next_name) = successor;
        let next = elected(pending).await?;
        reconnects += 1;
        let endpoint = ctx.config.endpoint_of(election * per_election + reconnects);
        let rejoined = EtcdClient::connect(endpoint, ctx.config.request_timeout, ctx.config.lease_ttl_secs).await?;
        successor = (campaign(&name, rejoined, silenced_name), silenced_name);
        leader = Some((next, next_name));
    }
    Ok(())
}
