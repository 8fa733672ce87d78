//! The node's metrics in the OpenMetrics text format (which Prometheus scrapes), encoded by
//! `prometheus-client` from one [`NodeMetrics`]: a collector registered in a fresh registry
//! (prefix `conclave_`) for each scrape. Names and units follow etcd's where a counterpart
//! exists (`etcd_server_has_leader` → `conclave_server_has_leader`, ...); every metric is
//! listed in the README. The standard `process_*` metrics ([`super::process`]) go beside
//! them, unprefixed, as every Prometheus client library names them.

use std::fmt::Write;

use conclave_engine::raft::RaftRole;
use conclave_engine::shard::DurationHistogram;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

use crate::grpc::Code;

use super::process::{self, ProcessStats};
use super::NodeMetrics;

/// The `Content-Type` of [`encode`]'s output.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// A label set of a metric family.
type Labels = Vec<(&'static str, String)>;

/// Encodes `metrics`, and the process's own figures read now, as OpenMetrics text.
pub fn encode(metrics: NodeMetrics) -> String {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(ProcessCollector(process::read())));
    registry.sub_registry_with_prefix("conclave").register_collector(Box::new(NodeCollector(metrics)));
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &registry).expect("writing to a String cannot fail");
    text
}

#[derive(Debug)]
struct NodeCollector(NodeMetrics);

impl Collector for NodeCollector {
    fn encode(&self, mut out: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let m = &self.0;
        let e = &mut out;
        let groups = &m.runtime.groups;
        let by_group = |value: fn(&conclave_engine::shard::GroupStats) -> u64| {
            groups.iter().map(move |g| (vec![("partition", g.group.to_string())], value(g))).collect::<Vec<_>>()
        };
        gauges(
            e,
            "server_has_leader",
            "Whether this node's replica of the partition knows a leader (1) or not (0).",
            by_group(|g| u64::from(g.leader != 0)),
        )?;
        gauges(
            e,
            "server_is_leader",
            "Whether this node leads the partition (1) or not (0).",
            by_group(|g| u64::from(g.role == RaftRole::Leader)),
        )?;
        gauges(e, "server_term", "The Raft term of this node's replica of the partition.", by_group(|g| g.term))?;
        counter(e, "server_leader_changes_seen", "Changes to a new known leader seen by this node's replicas.", m.leader_changes)?;
        counter(
            e,
            "server_proposals_committed",
            "Raft entries committed: the sum of the commit indexes of this node's replicas.",
            groups.iter().map(|g| g.commit_index).sum(),
        )?;
        counter(
            e,
            "server_proposals_applied",
            "Raft entries applied: the sum of the applied indexes of this node's state machines.",
            groups.iter().map(|g| g.applied_index).sum(),
        )?;
        gauge(
            e,
            "server_proposals_pending",
            "Proposals waiting to apply: appended by this node as leader, or forwarded to a leader elsewhere.",
            groups.iter().map(|g| g.pending_proposals).sum::<u64>() + m.runtime.forwarded_pending,
        )?;
        counter(
            e,
            "server_proposals_failed",
            "Client proposals that ended in an error after retries through leader changes.",
            m.proposals_failed,
        )?;
        histogram(
            e,
            "disk_wal_fsync_duration_seconds",
            "Durable log writes (one per round of the shard loop): from submission until durable (O_DSYNC write, or write + fdatasync).",
            &m.flush,
        )?;
        histogram(e, "disk_snapshot_save_duration_seconds", "Snapshot saves: from start until the snapshot is durable.", &m.snapshot_save)?;
        counter(e, "disk_write_failures", "Log writes or snapshot saves that failed (the shard stops serving).", m.storage_failures)?;
        let peers = |value: fn(&super::PeerSnapshot) -> u64| {
            m.peers.values().map(move |p| (vec![("to", p.node.to_string())], value(p))).collect::<Vec<_>>()
        };
        let histograms: Vec<(Labels, &DurationHistogram)> = m.peers.values().map(|p| (vec![("to", p.node.to_string())], &p.rtt)).collect();
        histograms_family(
            e,
            "network_peer_round_trip_time_seconds",
            "Round trips of Raft heartbeats to each peer (heartbeat sent until its response arrived).",
            &histograms,
        )?;
        counters(e, "network_peer_sent_failures", "Messages to each peer lost in a failed write.", peers(|p| p.sent_failures))?;
        counters(
            e,
            "network_peer_connection_failures",
            "Failed connection attempts or broken connections to each peer.",
            peers(|p| p.connection_failures),
        )?;
        counters(e, "network_peer_sent_bytes", "Bytes written to each peer.", peers(|p| p.bytes_sent))?;
        let active: Vec<(Labels, u64)> =
            m.peers.values().map(|p| (vec![("local", m.node_id.to_string()), ("remote", p.node.to_string())], p.connected)).collect();
        gauges(e, "network_active_peers", "Connections to each peer that are up (one per shard when healthy).", active)?;
        let mut handled: Vec<(Labels, u64)> = Vec::new();
        let mut latency: Vec<(Labels, &DurationHistogram)> = Vec::new();
        for method in m.grpc.values() {
            let labels = vec![
                ("grpc_type", method.grpc_type().to_owned()),
                ("grpc_service", method.service.clone()),
                ("grpc_method", method.method.clone()),
            ];
            for code in Code::ALL {
                let calls = method.codes[code as usize];
                if calls > 0 {
                    let mut with_code = labels.clone();
                    with_code.push(("grpc_code", code.name().to_owned()));
                    handled.push((with_code, calls));
                }
            }
            latency.push((labels, &method.latency));
        }
        counters(e, "grpc_server_handled", "gRPC calls completed, by service, method and status code.", handled)?;
        histograms_family(
            e,
            "grpc_server_handling_seconds",
            "gRPC call latency (a stream's whole life), by service and method.",
            &latency,
        )?;
        let work = &m.runtime.work;
        for (name, help, value) in [
            ("shard_loop_rounds", "Turns of the shard loops (each handles everything that arrived since the last).", work.rounds),
            ("shard_loop_ticks", "Raft ticks the shard loops ran.", work.ticks),
            ("shard_replica_ticks", "Ticks handed to a partition's replica (only awake partitions are ticked).", work.replica_ticks),
            (
                "shard_log_writes",
                "Durable log writes (one per loop round with anything to persist, for every partition in it).",
                work.log_writes,
            ),
            ("shard_timers_armed", "Timers the shard loops armed.", work.timers_armed),
            ("shard_tasks_spawned", "Tasks the shard runtimes spawned (snapshot saves).", work.tasks_spawned),
            ("shard_snapshot_bytes", "Bytes of the partition snapshots this node took.", work.snapshot_bytes),
            ("shard_proposals", "Proposals handed to a leader replica on this node (local or forwarded).", work.proposals),
            (
                "shard_workload_transfers",
                "Leadership transfers started toward the node most of a partition's requests came through (--follow-workload).",
                work.workload_transfers,
            ),
            (
                "shard_follower_lease_reads",
                "Reads a follower or observer served under a lease from its partition's leader, without asking the leader (--follower-reads).",
                work.follower_lease_reads,
            ),
            (
                "shard_forwarded_answered_by_leader",
                "Commands forwarded to a leader elsewhere and answered with the result it sent.",
                work.forwarded_answered_by_leader,
            ),
            ("shard_peer_batches_sent", "Raft message batches sent to peers (one per peer per loop round at most).", work.batches_sent),
            (
                "shard_commit_notices_held",
                "Times a leader held back commit notices for the next append to carry (--commit-notice-delay-us).",
                work.commit_notices_held,
            ),
        ] {
            counter(e, name, help, value)?;
        }
        let messages = [
            ("append", work.appends_with_entries),
            ("commit_notice", work.commit_notices),
            ("empty_append", work.empty_appends),
            ("append_response", work.append_responses),
            ("heartbeat", work.heartbeats),
            ("heartbeat_response", work.heartbeat_responses),
            ("other", work.other_messages),
        ];
        let messages = messages.into_iter().map(|(kind, n)| (vec![("type", kind.to_owned())], n)).collect();
        counters(e, "raft_messages_sent", "Raft messages sent to peers, by type.", messages)?;
        gauge(e, "client_sessions_open", "Client sessions of the connections this node serves.", m.client_sessions)?;
        counter(
            e,
            "client_session_keepalive_entries",
            "Log entries proposed to keep this node's client sessions alive: one per partition per interval, however many sessions.",
            m.keep_alive_entries,
        )?;
        gauge(e, "watch_streams", "Watch streams open on this node.", m.watch_streams)?;
        gauge(e, "sessions", "Sessions in the state machines of the partitions this node hosts.", groups.iter().map(|g| g.sessions).sum())?;
        gauge(
            e,
            "elections",
            "Elections in the state machines of the partitions this node hosts.",
            groups.iter().map(|g| g.elections).sum(),
        )?;
        gauge(
            e,
            "election_candidates",
            "Candidates of every election of the partitions this node hosts.",
            groups.iter().map(|g| g.candidates).sum(),
        )?;
        counter(
            e,
            "election_term_changes",
            "Leader handovers of elections (the sum of their term numbers) in the partitions this node hosts.",
            groups.iter().map(|g| g.election_term_changes).sum(),
        )?;
        let edge = &m.edge;
        counter(
            e,
            "edge_unary_calls_inline",
            "Unary calls served in their connection's call table, without a task of their own.",
            edge.unary_calls_inline,
        )?;
        counter(
            e,
            "edge_call_tasks_spawned",
            "Tasks spawned for client calls (server and bidirectional streams).",
            edge.call_tasks_spawned,
        )?;
        counter(
            e,
            "edge_mesh_calls_served",
            "Proposals, reads, watches and Node API calls served for another shard of this node.",
            edge.mesh_calls_served,
        )?;
        counter(
            e,
            "edge_mesh_call_tasks_spawned",
            "Tasks spawned for proposals, reads and watches from another shard (the runtime's queue was full).",
            edge.mesh_call_tasks_spawned,
        )?;
        counter(
            e,
            "edge_deadlines_queued",
            "Call deadlines (grpc-timeout) and retry pauses put on the shards' timer queues.",
            edge.deadlines_queued,
        )?;
        counter(e, "edge_timer_arms", "Times a shard's timer-queue timer was armed or moved earlier.", edge.timer_arms)?;
        counter(e, "edge_connection_writes", "Writes to client connections.", edge.connection_writes)?;
        let shards: Vec<(Labels, u64)> = m.shards_up.iter().map(|(s, up)| (vec![("shard", s.to_string())], u64::from(*up))).collect();
        gauges(e, "shard_up", "Whether the shard and its runtime answered this scrape (1) or not (0).", shards)
    }
}

#[derive(Debug)]
struct ProcessCollector(ProcessStats);

impl Collector for ProcessCollector {
    fn encode(&self, mut out: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let p = &self.0;
        let e = &mut out;
        if let Some(seconds) = p.cpu_seconds {
            e.encode_descriptor("process_cpu_seconds", "Total user and system CPU time spent in seconds.", None, MetricType::Counter)?
                .encode_counter::<NoLabelSet, _, u64>(&seconds, None)?;
        }
        if let Some(bytes) = p.resident_memory_bytes {
            gauge(e, "process_resident_memory_bytes", "Resident memory size in bytes.", bytes)?;
        }
        if let Some(bytes) = p.virtual_memory_bytes {
            gauge(e, "process_virtual_memory_bytes", "Virtual memory size in bytes.", bytes)?;
        }
        if let Some(seconds) = p.start_time_seconds {
            e.encode_descriptor(
                "process_start_time_seconds",
                "Start time of the process since unix epoch in seconds.",
                None,
                MetricType::Gauge,
            )?
            .encode_gauge(&seconds)?;
        }
        if let Some(fds) = p.open_fds {
            gauge(e, "process_open_fds", "Number of open file descriptors.", fds)?;
        }
        if let Some(fds) = p.max_fds {
            gauge(e, "process_max_fds", "Maximum number of open file descriptors.", fds)?;
        }
        Ok(())
    }
}

fn counter(e: &mut DescriptorEncoder, name: &str, help: &str, value: u64) -> std::fmt::Result {
    e.encode_descriptor(name, help, None, MetricType::Counter)?.encode_counter::<NoLabelSet, _, u64>(&value, None)
}

fn gauge(e: &mut DescriptorEncoder, name: &str, help: &str, value: u64) -> std::fmt::Result {
    e.encode_descriptor(name, help, None, MetricType::Gauge)?.encode_gauge(&value)
}

fn counters(e: &mut DescriptorEncoder, name: &str, help: &str, rows: Vec<(Labels, u64)>) -> std::fmt::Result {
    let mut metric = e.encode_descriptor(name, help, None, MetricType::Counter)?;
    for (labels, value) in &rows {
        metric.encode_family(labels)?.encode_counter::<NoLabelSet, _, u64>(value, None)?;
    }
    Ok(())
}

fn gauges(e: &mut DescriptorEncoder, name: &str, help: &str, rows: Vec<(Labels, u64)>) -> std::fmt::Result {
    let mut metric = e.encode_descriptor(name, help, None, MetricType::Gauge)?;
    for (labels, value) in &rows {
        metric.encode_family(labels)?.encode_gauge(value)?;
    }
    Ok(())
}

fn histogram(e: &mut DescriptorEncoder, name: &str, help: &str, h: &DurationHistogram) -> std::fmt::Result {
    e.encode_descriptor(name, help, None, MetricType::Histogram)?.encode_histogram::<NoLabelSet>(h.sum_seconds, h.count, &h.buckets(), None)
}

fn histograms_family<L: EncodeLabelSet>(
    e: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    rows: &[(L, &DurationHistogram)],
) -> std::fmt::Result {
    let mut metric = e.encode_descriptor(name, help, None, MetricType::Histogram)?;
    for (labels, h) in rows {
        metric.encode_family(labels)?.encode_histogram::<NoLabelSet>(h.sum_seconds, h.count, &h.buckets(), None)?;
    }
    Ok(())
}

/// A plain-text body for the probes: one line per problem, or `ok`.
pub fn probe_body(problems: &[String]) -> String {
    let mut body = String::new();
    if problems.is_empty() {
        body.push_str("ok\n");
    }
    for problem in problems {
        let _ = writeln!(body, "{problem}");
    }
    body
}
