//! One shard of the node: recovers its log and groups, runs its [`ShardRuntime`], serves the
//! gRPC edge for the connections it is given, keeps its client sessions alive, and stops
//! gracefully when the node is told to.

use std::cell::Cell;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use conclave_engine::log::{Log, LogOptions, SnapshotStore};
use conclave_engine::raft::{self, Membership, RaftEvent};
use conclave_engine::shard::{
    load_snapshot, recover_replica, Request, RuntimeConfig, ShardEvent, ShardRuntime, ShardStorage,
};
use glommio::channels::channel_mesh::MeshBuilder;
use glommio::channels::local_channel;
use glommio::channels::channel_mesh::Full;
use glommio::net::TcpListener;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use crate::config::Config;
use crate::grpc::{GrpcServer, HealthService, Router, ServerConfig, ServingStatus};
use crate::net::ExclusiveListener;
use crate::routing::groups_of_shard;
use crate::service::{ClientApi, ClientSessions, DriverApi, SessionObserver};

use super::dispatch::{Dispatch, MeshMessage};

/// What a shard starts from.
pub struct ShardContext {
    pub config: Config,
    pub mesh: MeshBuilder<MeshMessage, Full>,
    /// The client and admin listeners, given to shard 0 only.
    pub listeners: Option<(ExclusiveListener, ExclusiveListener)>,
    pub stop: Arc<AtomicBool>,
}

/// How often each shard looks at the stop flag set by the signal handler.
const STOP_POLL: Duration = Duration::from_millis(20);

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
    let result = serve(ctx.config.clone(), ctx.mesh, ctx.listeners, Arc::clone(&ctx.stop)).await;
    // One shard failing stops the node: the others see the flag and stop cleanly.
    ctx.stop.store(true, Ordering::SeqCst);
    result
}

async fn serve(
    config: Config,
    mesh: MeshBuilder<MeshMessage, Full>,
    listeners: Option<(ExclusiveListener, ExclusiveListener)>,
    stop: Arc<AtomicBool>,
) -> Result<(), String> {
    let (senders, receivers) = mesh.join().await.map_err(|e| format!("cannot join the shard mesh: {e}"))?;
    let shard = senders.peer_id();
    let shards = config.shards as usize;
    let node_id = u64::from(config.node_id);

    let dir = config.data_dir.join(format!("shard-{shard}"));
    let options = LogOptions::with_segment_bytes(config.segment_bytes);
    let (log, recovery) = Log::open(dir.join("log"), options).await.map_err(|e| format!("opening the log in {}: {e}", dir.display()))?;
    if let Some(cut) = &recovery.torn_tail {
        tracing::info!(file = %cut.file.display(), offset = cut.offset, "cut a torn log tail left by a crash");
    }
    let snapshots = SnapshotStore::open(dir.join("snapshots"))
        .await
        .map_err(|e| format!("opening the snapshot store in {}: {e}", dir.display()))?;
    let mut replicas = std::collections::BTreeMap::new();
    let seed = now_ms() ^ (node_id << 48);
    for group in groups_of_shard(shard as u32, shards as u32, config.partitions) {
        let mut raft_cfg = raft::Config::new(node_id, group);
        raft_cfg.election_ticks = config.election_ticks;
        raft_cfg.heartbeat_ticks = config.heartbeat_ticks;
        let membership = bootstrap_membership(&config)?;
        let rng = ChaCha8Rng::seed_from_u64(seed ^ u64::from(group));
        let snapshot = load_snapshot(&snapshots, group).await?;
        let replica = recover_replica(raft_cfg, membership, snapshot, recovery.groups.get(&group), rng)?;
        replicas.insert(group, replica);
    }
    let hosted: Vec<u32> = replicas.keys().copied().collect();
    // Recovery holds whole segment reads; the replicas copied what they need.
    drop(recovery);

    let (event_tx, event_rx) = local_channel::new_unbounded::<(u32, ShardEvent)>();
    let runtime = ShardRuntime::new(
        RuntimeConfig {
            node_id,
            tick: config.tick,
            request_queue: 8192,
            expiry_check: Duration::from_millis(100),
            snapshot_every: config.snapshot_every,
            compaction_tail: config.compaction_tail,
        },
        replicas,
        ShardStorage { log, snapshots },
        Box::new(move |batch| tracing::warn!(to = batch.to, "no peer transport on a single node; dropping a Raft batch")),
        Box::new(move |group, event| {
            let _ = event_tx.try_send((group, event.clone()));
        }),
        Box::new(now_ms),
    );
    let handle = runtime.handle();
    let runtime_task = glommio::spawn_local(runtime.run());

    let dispatch = Dispatch::new(shard, shards, handle.clone(), senders);
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
            let leaders = dispatch.leaders.borrow();
            let led = (1..=partitions).all(|g| leaders.get(&g).is_some_and(|(_, l)| *l != 0));
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
                    dispatch.broadcast_leader(group, term, leader);
                    update_health();
                }
            }
        })
        .detach();
    }

    let sessions = ClientSessions::new(Rc::clone(&dispatch), config.session_timeout.as_millis() as u64);
    let mut router = Router::new();
    health.register(&mut router);
    Rc::new(ClientApi { dispatch: Rc::clone(&dispatch), sessions: Rc::clone(&sessions), partitions }).register(&mut router);
    Rc::new(DriverApi { dispatch: Rc::clone(&dispatch), partitions }).register(&mut router);
    let server = GrpcServer::with_observer(router, ServerConfig::default(), Some(Rc::new(SessionObserver(Rc::clone(&sessions)))));

    let on_connection: Rc<dyn Fn(glommio::net::AcceptedTcpStream)> = {
        let server = server.clone();
        Rc::new(move |stream| server.serve_connection(stream.bind_to_executor()))
    };
    let on_leader: Rc<dyn Fn()> = update_health.clone();
    dispatch.serve_mesh(receivers, on_connection, on_leader);

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

    let admin_server = if let Some((client, admin)) = listeners {
        let client = client.into_glommio();
        glommio::spawn_local(accept_loop(client, server.clone(), Rc::clone(&dispatch))).detach();
        // The admin listener serves the operator's view of the node: health now, the Node
        // control API as it lands.
        let mut admin_router = Router::new();
        health.register(&mut admin_router);
        let admin_server = GrpcServer::new(admin_router, ServerConfig::default());
        let serving = admin_server.clone();
        let admin = admin.into_glommio();
        glommio::spawn_local(async move { serving.serve(admin).await }).detach();
        Some(admin_server)
    } else {
        None
    };
    tracing::info!(shard, groups = ?hosted, "shard serving");

    let mut runtime_task = runtime_task;
    let mut runtime_ended = None;
    while !stop.load(Ordering::SeqCst) {
        glommio::timer::sleep(STOP_POLL).await;
        // A runtime that stops on its own hit a storage failure: stop the node rather than
        // serve without durability.
        if let Some(result) = futures_lite::future::poll_once(&mut runtime_task).await {
            runtime_ended = Some(result);
            break;
        }
    }
    // Graceful stop: refuse new calls, let in-flight ones finish (the gRPC layer bounds the
    // wait), then answer whatever the runtime still holds and stop it.
    server.shutdown();
    if let Some(admin) = &admin_server {
        admin.shutdown();
    }
    if let Some(result) = runtime_ended {
        return result.map_err(|e| format!("shard {shard} stopped serving: {e}"));
    }
    server.drained().await;
    let _ = handle.send(Request::Shutdown).await;
    runtime_task.await.map_err(|e| e.to_string())?;
    Ok(())
}

/// The initial voters of every group this node hosts: the node alone on a single-node
/// deployment.
fn bootstrap_membership(config: &Config) -> Result<Membership, String> {
    if config.peers.len() != 1 {
        return Err(format!(
            "--peers lists {} nodes, but multi-node clusters are not available in this build; run a single node",
            config.peers.len()
        ));
    }
    Membership::voters([u64::from(config.node_id)]).map_err(|e| e.to_string())
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
