//! One shard of the node: recovers its log and groups, runs its [`ShardRuntime`], talks to
//! the same shard of the other nodes, serves the gRPC edge for the connections it is
//! given, keeps its client sessions alive, and stops gracefully when the node is told to:
//! its leaderships handed to other members first.

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use conclave_engine::log::{Log, LogOptions, SnapshotStore};
use conclave_engine::raft::RaftEvent;
use conclave_engine::shard::{load_snapshot, recover_replica, Request, RuntimeConfig, ShardEvent, ShardRuntime, ShardStorage};
use conclave_wire::ConnectionEvent;
use futures_util::{StreamExt, TryStreamExt};
use glommio::channels::channel_mesh::Full;
use glommio::channels::channel_mesh::MeshBuilder;
use glommio::channels::local_channel;
use glommio::net::TcpListener;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use crate::config::Config;
use crate::grpc::{GrpcServer, HealthService, ReflectionService, Router, ServerConfig, ServingStatus};
use crate::metrics::ShardCallObserver;
use crate::net::{release_listener, ExclusiveListener};
use crate::routing::{groups_of_shard, shard_of};
use crate::service::node::NodeApi;
use crate::service::{ClientApi, ClientSessions, DriverApi, SessionObserver};

use super::control::{NodeControlRouter, NodeEvents};
use super::dispatch::{Dispatch, MeshMessage, NodeEvent};
use super::edge_tls::EdgeTls;
use super::groups::{self, GroupControl};
use super::observe::{self, ShardSources};
use super::peers::PeerNet;
use super::registry::Registry;
use super::stop::{NodeStop, ShardStop};

/// The longest a graceful stop waits for this shard's leaderships to move elsewhere.
const HAND_OFF_WAIT: Duration = Duration::from_secs(3);

/// Snapshot files a starting shard reads at once.
const SNAPSHOT_LOADS_IN_FLIGHT: usize = 32;

/// What a shard starts from.
pub struct ShardContext {
    pub config: Config,
    pub mesh: MeshBuilder<MeshMessage, Full>,
    /// The client and admin listeners, given to shard 0 only.
    pub listeners: Option<(ExclusiveListener, ExclusiveListener)>,
    /// The metrics and probes listener, given to shard 0 only (when configured).
    pub metrics_listener: Option<ExclusiveListener>,
    /// TLS of the client and admin listeners (`None`: plaintext).
    pub edge_tls: Option<EdgeTls>,
    /// Peer TLS, loaded once for every shard (`None`: plaintext peers).
    pub peer_tls: Option<conclave_wire::PeerTls>,
    /// Tells every shard to stop (when this one fails).
    pub stop: Arc<NodeStop>,
    /// Ready once the node is told to stop.
    pub stopped: ShardStop,
}

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

/// The services every node exposes on the client listener, for health reporting.
const SERVICES: [&str; 5] = [
    "atomix.runtime.election.v1.LeaderElection",
    "atomix.runtime.election.v1.LeaderElections",
    "atomix.multiraft.v1.Partition",
    "atomix.multiraft.v1.Session",
    "atomix.multiraft.election.v1.LeaderElection",
];

pub async fn run(ctx: ShardContext) -> Result<(), String> {
    let result = serve(ctx.config.clone(), ctx.mesh, ctx.listeners, ctx.metrics_listener, ctx.edge_tls, ctx.stopped, ctx.peer_tls).await;
    // One shard failing stops the node: the others are told and stop cleanly.
    ctx.stop.stop();
    result
}

async fn serve(
    config: Config,
    mesh: MeshBuilder<MeshMessage, Full>,
    listeners: Option<(ExclusiveListener, ExclusiveListener)>,
    metrics_listener: Option<ExclusiveListener>,
    edge_tls: Option<EdgeTls>,
    stopped: ShardStop,
    peer_tls: Option<conclave_wire::PeerTls>,
) -> Result<(), String> {
    let (senders, receivers) = mesh.join().await.map_err(|e| format!("cannot join the shard mesh: {e}"))?;
    let shard = senders.peer_id();
    let shards = config.shards as usize;
    let node_id = u64::from(config.node_id);

    let dir = config.data_dir.join(format!("shard-{shard}"));
    let options = LogOptions { dsync_writes: config.log_dsync, ..LogOptions::with_segment_bytes(config.segment_bytes) };
    let (log, recovery) = Log::open(dir.join("log"), options).await.map_err(|e| format!("opening the log in {}: {e}", dir.display()))?;
    if let Some(cut) = &recovery.torn_tail {
        tracing::info!(file = %cut.file.display(), offset = cut.offset, "cut a torn log tail left by a crash");
    }
    let snapshots =
        SnapshotStore::open(dir.join("snapshots")).await.map_err(|e| format!("opening the snapshot store in {}: {e}", dir.display()))?;
    let registry = Registry::load(&dir)?;
    let left_partitions: Vec<u32> =
        groups_of_shard(shard as u32, config.shards, config.partitions).filter(|g| registry.has_left(*g)).collect();
    let seed = now_ms() ^ (node_id << 48);
    let mut replicas = std::collections::BTreeMap::new();
    let hosted = hosted_groups(&config, shard as u32, &registry)?;
    // Several snapshot files are read at once: one after another, a node recovering 10,000
    // groups waited on each file's open, size, read and close in turn (7.6 s, tuning.md).
    let loaded: Vec<_> = futures_util::stream::iter(hosted.iter().map(|(group, ..)| load_snapshot(&snapshots, *group)))
        .buffered(SNAPSHOT_LOADS_IN_FLIGHT)
        .try_collect()
        .await?;
    for ((group, membership, preferred), snapshot) in hosted.into_iter().zip(loaded) {
        let rng = ChaCha8Rng::seed_from_u64(seed ^ u64::from(group));
        let incarnation = registry.get(group).map_or(0, |record| record.incarnation);
        let cfg = groups::raft_config(&config, group, incarnation);
        let mut replica = recover_replica(cfg, membership, snapshot, recovery.groups.get(&group), rng)?;
        replica.set_preferred_leader(preferred);
        replicas.insert(group, replica);
    }
    let hosted: Vec<u32> = replicas.keys().copied().collect();
    // Recovery holds whole segment reads; the replicas copied what they need.
    drop(recovery);

    let (event_tx, event_rx) = local_channel::new_unbounded::<(u32, ShardEvent)>();
    let peer_net: Rc<RefCell<Option<Rc<PeerNet>>>> = Rc::default();
    let transport = {
        let peer_net = Rc::clone(&peer_net);
        Box::new(move |to, message| match peer_net.borrow().as_ref() {
            Some(net) => net.send(to, message),
            None => tracing::debug!(to, "peer transport not started yet; dropping a message"),
        })
    };
    let tick = config.tick;
    let storage = ShardStorage::new(log, snapshots);
    let storage_stats = storage.stats();
    let runtime = ShardRuntime::new(
        RuntimeConfig {
            snapshot_every: config.snapshot_every,
            snapshot_log_ratio: config.snapshot_log_ratio,
            compaction_tail: config.compaction_tail,
            rebalance_ticks: (config.rebalance.as_millis() / tick.as_millis().max(1)) as u64,
            follow_workload: config.follow_workload,
            // One ping per peer node per heartbeat interval; a peer silent for an election
            // timeout wakes the quiet groups it leads.
            shard: shard as u32,
            liveness_peers: config.peers.keys().map(|id| u64::from(*id)).filter(|id| *id != node_id).collect(),
            liveness_ping_ticks: u64::from(config.heartbeat_ticks),
            liveness_silence_ticks: u64::from(config.election_ticks),
            commit_notice_delay: config.commit_notice_delay,
            ..RuntimeConfig::new(node_id, tick)
        },
        replicas,
        storage,
        transport,
        Box::new(move |group, event| {
            let _ = event_tx.try_send((group, event.clone()));
        }),
        Box::new(now_ms),
    );
    let handle = runtime.handle();
    let runtime_task = glommio::spawn_local(runtime.run());

    let dispatch = Dispatch::new(shard, shards, handle.clone(), senders);
    dispatch.set_partitions(config.partitions);
    // Shard 0 gathers every shard's events for the Node API; set before the mesh is served.
    let node_events = (shard == 0).then(|| {
        let events = NodeEvents::new(node_id, &dispatch);
        let publish = Rc::clone(&events);
        dispatch.set_event_handler(Rc::new(move |event| publish.publish(event)));
        events
    });
    let (connection_tx, connection_rx) = local_channel::new_unbounded::<ConnectionEvent>();
    let net = PeerNet::start(
        &config,
        peer_tls.as_ref(),
        shard as u32,
        handle.clone(),
        Rc::new(move |event| {
            let _ = connection_tx.try_send(event);
        }),
    )?;
    *peer_net.borrow_mut() = Some(Rc::clone(&net));
    let metrics_peers = Rc::clone(&net);
    {
        // A failed connection also fails the requests forwarded over it at once.
        let dispatch = Rc::clone(&dispatch);
        let runtime = handle.clone();
        glommio::spawn_local(async move {
            while let Some(event) = connection_rx.recv().await {
                let failed = matches!(event.kind, conclave_wire::ConnectionEventKind::Failed { .. });
                if !event.snapshot {
                    dispatch.counters.peer_connection(event.remote_node_id, !failed);
                }
                if failed {
                    let _ = runtime.send(Request::PeerDown { node: event.remote_node_id }).await;
                }
                dispatch.report(NodeEvent::Connection(event));
            }
        })
        .detach();
    }
    dispatch.set_control(Rc::new(GroupControl::new(config.clone(), handle.clone(), net, registry, seed)));
    let health = HealthService::new();
    health.set_status("", ServingStatus::NotServing);
    for service in SERVICES {
        health.set_status(service, ServingStatus::NotServing);
    }
    let partitions = config.partitions;
    let update_health = {
        let dispatch = Rc::clone(&dispatch);
        let health = health.clone();
        let announced = Rc::new(Cell::new(false));
        let listen = config.listen;
        Rc::new(move || {
            let led = dispatch.serves_all();
            let status = if led { ServingStatus::Serving } else { ServingStatus::NotServing };
            health.set_status("", status);
            for service in SERVICES {
                health.set_status(service, status);
            }
            if led && shard == 0 && !announced.replace(true) {
                println!("conclave: ready: every partition has a leader; serving clients on {listen}");
            }
        })
    };
    {
        let dispatch = Rc::clone(&dispatch);
        let update_health = Rc::clone(&update_health);
        glommio::spawn_local(async move {
            while let Some((group, event)) = event_rx.recv().await {
                if let ShardEvent::Raft(RaftEvent::LeaderChanged { term, leader }) = event {
                    dispatch.counters.leader_seen(group, leader);
                    dispatch.broadcast_leader(group, term, leader);
                    update_health();
                }
                dispatch.report(NodeEvent::Group(group, event));
                // Thousands of groups starting or electing at once queue thousands of events:
                // the shard loop's turn comes between them.
                glommio::yield_if_needed().await;
            }
        })
        .detach();
    }

    let sessions = ClientSessions::new(Rc::clone(&dispatch), config.session_timeout.as_millis() as u64);
    let mut router = Router::new();
    health.register(&mut router);
    Rc::new(ClientApi { dispatch: Rc::clone(&dispatch), sessions: Rc::clone(&sessions), partitions }).register(&mut router);
    Rc::new(DriverApi { dispatch: Rc::clone(&dispatch), partitions }).register(&mut router);
    ReflectionService::register(&mut router)?;
    let edge_config = ServerConfig { handshake_timeout: config.handshake_timeout, ..ServerConfig::default() };
    let server = GrpcServer::with_observer(router, edge_config.clone(), Some(Rc::new(SessionObserver(Rc::clone(&sessions)))));
    let call_observer = Rc::new(ShardCallObserver(Rc::clone(&dispatch.counters)));
    server.set_call_observer(call_observer.clone());
    if let Some(tls) = &edge_tls {
        server.set_tls(tls.client.clone());
    }
    dispatch.set_metrics_source(
        ShardSources {
            shard,
            runtime: handle.clone(),
            storage: storage_stats,
            counters: Rc::clone(&dispatch.counters),
            sessions: Rc::clone(&sessions),
            peers: metrics_peers,
        }
        .into_source(),
    );

    let on_connection: Rc<dyn Fn(glommio::net::AcceptedTcpStream)> = {
        let server = server.clone();
        Rc::new(move |stream| server.serve_connection(stream.bind_to_executor()))
    };
    dispatch.serve_mesh(receivers, on_connection, update_health.clone());
    for group in left_partitions {
        dispatch.broadcast_hosting(group, false);
    }

    // Keep-alives of this shard's client sessions, well inside the session timeout.
    {
        let sessions = Rc::clone(&sessions);
        let interval = config.session_timeout / 4;
        glommio::spawn_local(async move {
            loop {
                glommio::timer::sleep(interval).await;
                sessions.keep_alive_all().await;
            }
        })
        .detach();
    }

    let mut releases = Vec::new();
    let admin_server = if let Some((client, admin)) = listeners {
        releases = [&client, &admin].into_iter().filter_map(|listener| listener.release_handle().ok()).collect();
        let client = client.into_glommio();
        glommio::spawn_local(accept_loop(client, server.clone(), Rc::clone(&dispatch))).detach();
        // The admin listener serves the operator's view of the node: health, the Node
        // control API and reflection.
        let mut admin_router = Router::new();
        health.register(&mut admin_router);
        if let Some(events) = &node_events {
            let control = Rc::new(NodeControlRouter { dispatch: Rc::clone(&dispatch) });
            Rc::new(NodeApi::new(control, Rc::clone(&events.hub))).register(&mut admin_router);
        }
        ReflectionService::register(&mut admin_router)?;
        let admin_server = GrpcServer::new(admin_router, edge_config);
        admin_server.set_call_observer(call_observer);
        if let Some(tls) = &edge_tls {
            admin_server.set_tls(tls.admin.clone());
        }
        if let Some(metrics) = metrics_listener {
            let handler = observe::handler(Rc::clone(&dispatch), node_id, partitions);
            glommio::spawn_local(crate::metrics::http::serve(metrics.into_glommio(), handler)).detach();
        }
        let serving = admin_server.clone();
        let admin = admin.into_glommio();
        glommio::spawn_local(async move { serving.serve(admin).await }).detach();
        Some(admin_server)
    } else {
        None
    };
    tracing::info!(shard, groups = ?hosted, "shard serving");

    let mut runtime_task = runtime_task;
    // Until the node is told to stop, or the runtime stops on its own: it hit a storage
    // failure, and the node stops rather than serve without durability.
    let runtime_ended = futures_lite::future::or(async { Some((&mut runtime_task).await) }, async {
        stopped.stopped().await;
        None
    })
    .await;
    // Graceful stop: hand this shard's leaderships to other members while still serving,
    // refuse new calls, let in-flight ones finish (the gRPC layer bounds the wait), then
    // answer whatever the runtime still holds and stop it.
    if runtime_ended.is_none() && config.peers.len() > 1 {
        hand_off(&handle, &dispatch, node_id).await;
    }
    server.shutdown();
    if let Some(admin) = &admin_server {
        admin.shutdown();
    }
    // The ports are free from here on, even while the executor still holds the sockets.
    releases.into_iter().for_each(release_listener);
    if let Some(result) = runtime_ended {
        return result.map_err(|e| format!("shard {shard} stopped serving: {e}"));
    }
    server.drained().await;
    let _ = handle.send(Request::Shutdown).await;
    runtime_task.await.map_err(|e| e.to_string())?;
    Ok(())
}

/// The groups this shard hosts at start-up, with the configuration each starts from (when
/// it has no snapshot) and its preferred leader: the client partitions of this shard
/// (`--replication` voters, the other peers observers) unless this node left them, and
/// the groups the Node API started here.
fn hosted_groups(
    config: &Config,
    shard: u32,
    registry: &Registry,
) -> Result<Vec<(u32, conclave_engine::raft::Membership, Option<u64>)>, String> {
    let me = u64::from(config.node_id);
    let mut hosted = Vec::new();
    for group in groups_of_shard(shard, config.shards, config.partitions) {
        if !registry.has_left(group) && registry.get(group).is_none() {
            hosted.push((group, groups::partition_membership(config, group)?, groups::partition_preferred_leader(config, group)));
        }
    }
    for record in registry.groups() {
        if shard_of(record.id, config.shards) != shard {
            return Err(format!(
                "group {} is recorded on shard {shard}, but shard {} owns it: was --shards changed?",
                record.id,
                shard_of(record.id, config.shards)
            ));
        }
        let spec = record.spec()?;
        hosted.push((record.id, groups::spec_membership(&spec, record.joined, me)?, None));
    }
    hosted.sort_by_key(|(group, _, _)| *group);
    Ok(hosted)
}

/// Asks the runtime to hand over every group it leads, then waits (bounded) until the
/// node's leader table shows none of this shard's groups led here.
async fn hand_off(handle: &conclave_engine::shard::ShardHandle, dispatch: &Rc<Dispatch>, node_id: u64) {
    let (tx, rx) = local_channel::new_bounded(1);
    let reply = Box::new(move |started: usize| {
        let _ = tx.try_send(started);
    });
    if handle.send(Request::HandOffLeadership { reply }).await.is_err() {
        return;
    }
    let started = rx.recv().await.unwrap_or(0);
    if started == 0 {
        return;
    }
    let deadline = std::time::Instant::now() + HAND_OFF_WAIT;
    let shard = dispatch.shard as u32;
    let shards = dispatch.shards as u32;
    while std::time::Instant::now() < deadline {
        let still_leading =
            dispatch.leaders.borrow().iter().any(|(group, (_, leader))| *leader == node_id && shard_of(*group, shards) == shard);
        if !still_leading {
            tracing::info!(shard, started, "leaderships handed over");
            return;
        }
        glommio::timer::sleep(Duration::from_millis(10)).await;
    }
    tracing::warn!(shard, "some leaderships did not move within {HAND_OFF_WAIT:?}; stopping anyway");
}

/// Accepts client connections on shard 0 and spreads them over the shards, round robin.
/// The task ends with the shard; connections accepted during a stop are refused by the
/// stopping servers.
async fn accept_loop(listener: TcpListener, server: GrpcServer, dispatch: Rc<Dispatch>) {
    let mut next = 0usize;
    loop {
        let stream = match listener.shared_accept().await {
            Ok(stream) => stream,
            Err(e) => {
                tracing::warn!(error = %e, "accepting a client connection failed");
                glommio::timer::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let target = next % dispatch.shards;
        next = next.wrapping_add(1);
        if target == dispatch.shard {
            server.serve_connection(stream.bind_to_executor());
        } else {
            dispatch.outbound().send(target, MeshMessage::Connection(stream));
        }
    }
}
