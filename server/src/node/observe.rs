//! The node's metrics listener (`--metrics-listen`): what each shard reports to a scrape
//! ([`ShardSources`]), the scrape itself (shard 0 asks every shard over the mesh, bounded
//! in time, and adds the answers up), and the probes:
//!
//! - `GET /livez`: 200 when every shard and its runtime answer; never fails only because
//!   a partition lacks a leader.
//! - `GET /readyz`: 200 when every client partition this node serves has a leader and a
//!   linearizable read of it succeeds; 503 otherwise, one line per problem.

use std::future::Future;
use std::rc::Rc;
use std::time::Duration;

use conclave_engine::shard::{Request, RuntimeStats, ShardHandle, StorageStats, TermQuery};
use conclave_engine::sm::PrimitiveRef;
use glommio::channels::local_channel;

use crate::metrics::exposition::{self, probe_body};
use crate::metrics::http::{Handler, Response};
use crate::metrics::{NodeMetrics, PeerSnapshot, ShardCounters, ShardSnapshot};
use crate::service::ClientSessions;

use super::dispatch::{Dispatch, MetricsSource};
use super::peers::PeerNet;

/// How long a shard (and its runtime) may take to answer a scrape or a probe.
const SHARD_ANSWER_TIMEOUT: Duration = Duration::from_secs(2);
/// How long `/readyz` waits for each partition's linearizable read.
const READ_TIMEOUT: Duration = Duration::from_secs(2);
/// The election `/readyz` reads: any name does (an unknown one is a successful read).
const PROBE_ELECTION: &str = "conclave.readyz";

/// `work`'s output, or `None` once `limit` has passed.
async fn within<T>(limit: Duration, work: impl Future<Output = T>) -> Option<T> {
    futures_lite::future::or(async { Some(work.await) }, async {
        glommio::timer::sleep(limit).await;
        None
    })
    .await
}

/// Everything one shard reads its metrics from.
#[derive(Clone)]
pub struct ShardSources {
    pub shard: usize,
    pub runtime: ShardHandle,
    pub storage: Rc<StorageStats>,
    pub counters: Rc<ShardCounters>,
    pub sessions: Rc<ClientSessions>,
    pub peers: Rc<PeerNet>,
}

impl ShardSources {
    /// What the shard's [`Dispatch`] calls for each scrape.
    pub fn into_source(self) -> MetricsSource {
        Rc::new(move || {
            let sources = self.clone();
            Box::pin(async move { sources.snapshot().await })
        })
    }

    async fn runtime_stats(&self) -> Option<RuntimeStats> {
        let (tx, rx) = local_channel::new_bounded(1);
        let reply = Box::new(move |stats| {
            let _ = tx.try_send(stats);
        });
        let ask = async {
            self.runtime.send(Request::Stats { reply }).await.ok()?;
            rx.recv().await
        };
        within(SHARD_ANSWER_TIMEOUT, ask).await.flatten()
    }

    async fn snapshot(&self) -> ShardSnapshot {
        let runtime = self.runtime_stats().await;
        let rtt: std::collections::BTreeMap<u64, _> = self.peers.rtt.snapshot().into_iter().collect();
        let peers = self
            .peers
            .stats()
            .into_iter()
            .map(|(node, stats)| PeerSnapshot {
                node,
                connected: u64::from(self.counters.is_connected(node)),
                rtt: rtt.get(&node).cloned().unwrap_or_default(),
                sent_failures: stats.messages_dropped,
                connection_failures: stats.failures,
                bytes_sent: stats.bytes_sent,
            })
            .collect();
        ShardSnapshot {
            shard: self.shard,
            runtime,
            flush: self.storage.flush(),
            snapshot_save: self.storage.snapshot_save(),
            storage_failures: self.storage.failures(),
            leader_changes: self.counters.leader_changes(),
            proposals_failed: self.counters.proposals_failed(),
            watch_streams: self.counters.watch_streams(),
            client_sessions: self.sessions.open_sessions() as u64,
            keep_alive_entries: self.counters.keep_alive_entries(),
            grpc: self.counters.grpc.snapshot(),
            peers,
            edge: crate::metrics::edge::snapshot(),
        }
    }
}

/// Every shard's snapshot (`None` for a shard that did not answer in time), asked at once.
async fn gather(dispatch: &Rc<Dispatch>) -> Vec<(usize, Option<ShardSnapshot>)> {
    let asks: Vec<_> = (0..dispatch.shards)
        .map(|shard| {
            let dispatch = Rc::clone(dispatch);
            glommio::spawn_local(async move { within(SHARD_ANSWER_TIMEOUT, dispatch.shard_metrics(shard)).await.flatten() }).detach()
        })
        .collect();
    let mut answers = Vec::with_capacity(asks.len());
    for (shard, ask) in asks.into_iter().enumerate() {
        answers.push((shard, ask.await.flatten()));
    }
    answers
}

/// The shards that did not answer, or whose runtime did not.
fn silent_shards(answers: &[(usize, Option<ShardSnapshot>)]) -> Vec<String> {
    answers
        .iter()
        .filter(|(_, answer)| answer.as_ref().is_none_or(|snapshot| snapshot.runtime.is_none()))
        .map(|(shard, _)| format!("shard {shard} does not answer"))
        .collect()
}

async fn livez(dispatch: &Rc<Dispatch>) -> Response {
    let problems = silent_shards(&gather(dispatch).await);
    Response::text(if problems.is_empty() { 200 } else { 503 }, probe_body(&problems))
}

async fn readyz(dispatch: &Rc<Dispatch>, partitions: u32) -> Response {
    let mut problems = silent_shards(&gather(dispatch).await);
    let mut reads = Vec::new();
    for partition in (1..=partitions).filter(|p| !dispatch.has_left(*p)) {
        if !dispatch.serves(partition) {
            problems.push(format!("partition {partition} has no leader"));
            continue;
        }
        let dispatch = Rc::clone(dispatch);
        let read = glommio::spawn_local(async move {
            let query =
                TermQuery { session_id: None, primitive: PrimitiveRef::Name(PROBE_ELECTION.to_owned()), min_index: 0, sequence_num: 0 };
            match within(READ_TIMEOUT, dispatch.read(partition, query)).await {
                Some(Ok(_)) => None,
                Some(Err(e)) => Some(format!("partition {partition}: a linearizable read failed: {e}")),
                None => Some(format!("partition {partition}: a linearizable read did not complete within {READ_TIMEOUT:?}")),
            }
        })
        .detach();
        reads.push(read);
    }
    for read in reads {
        if let Some(problem) = read.await.flatten() {
            problems.push(problem);
        }
    }
    Response::text(if problems.is_empty() { 200 } else { 503 }, probe_body(&problems))
}

/// The metrics listener's routes, served by shard 0.
pub fn handler(dispatch: Rc<Dispatch>, node_id: u64, partitions: u32) -> Handler {
    Rc::new(move |path: String| {
        let dispatch = Rc::clone(&dispatch);
        Box::pin(async move {
            match path.as_str() {
                "/metrics" => {
                    let metrics = NodeMetrics::merge(node_id, gather(&dispatch).await);
                    Response { status: 200, content_type: exposition::CONTENT_TYPE, body: exposition::encode(metrics) }
                }
                "/livez" => livez(&dispatch).await,
                "/readyz" => readyz(&dispatch, partitions).await,
                _ => Response::text(404, "not found: this listener serves /metrics, /livez and /readyz\n"),
            }
        })
    })
}
