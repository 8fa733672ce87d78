//! The node: one process, one glommio executor (shard) per core, each owning its groups,
//! its log and its share of client connections; the shards joined by a channel mesh.
//!
//! Start-up order: lock the data directory, bind the listeners (exclusively: a second
//! process on the same port or directory is refused with a clear message; ports that the
//! directory's previous, exited process still holds are waited for), then start the
//! shards. Shard 0 accepts client connections and spreads them over all shards; each shard
//! serves the gRPC edge for its connections and runs its groups. SIGTERM or SIGINT starts a
//! graceful stop: stop accepting (the client and admin ports are released at once, so a
//! restart can bind them), let in-flight calls finish (bounded), answer what is left,
//! and exit 0. Every acknowledged change is already durable in the log.

mod control;
mod dispatch;
mod edge_tls;
mod groups;
mod observe;
mod peer_rtt;
mod peers;
mod registry;
mod shard;
mod stop;

use glommio::channels::channel_mesh::MeshBuilder;
use glommio::{CpuSet, LocalExecutorBuilder, Placement};

use crate::config::Config;
use crate::net::{bind_exclusive_after, wait_until_bindable, DataDirLock, RESTART_BIND_WAIT};
use crate::routing::shard_port;

pub use dispatch::{
    CallOp, CallResult, ControlOp, Dispatch, LeaderTable, MeshMessage, NodeEvent, Outbound, WatchCallback, WatchGuard, WatchHandle,
};

/// Capacity of each shard-to-shard mesh channel.
const MESH_CHANNEL_CAPACITY: usize = 4096;

/// Loads peer TLS (when configured), checks that this node's certificate names its own
/// `--peers` address (the other nodes would refuse it otherwise), and reloads the files on
/// SIGHUP.
fn load_peer_tls(config: &Config) -> Result<Option<conclave_wire::PeerTls>, String> {
    let Some(files) = &config.peer_tls else { return Ok(None) };
    let tls = conclave_wire::PeerTls::load(&files.cert, &files.key, &files.trusted_ca).map_err(|e| format!("peer TLS: {e}"))?;
    let own = config.peers[&config.node_id].ip().to_string();
    conclave_wire::PeerTls::check_own_certificate(&files.cert, &own)
        .map_err(|e| format!("peer TLS: {e}, this node's address in --peers; the other nodes would refuse its connections"))?;
    conclave_wire::tls::reload_on_sighup(tls.holders()).map_err(|e| format!("cannot install the SIGHUP handler: {e}"))?;
    println!("conclave: peers over mutual TLS (CA {}); SIGHUP re-reads the certificates", files.trusted_ca.display());
    Ok(Some(tls))
}

/// Runs a node until it is told to stop. Returns an error a person can act on.
pub fn run(config: Config) -> Result<(), String> {
    std::fs::create_dir_all(&config.data_dir)
        .map_err(|e| format!("cannot create the data directory {}: {e}", config.data_dir.display()))?;
    let lock = DataDirLock::acquire(&config.data_dir).map_err(|e| e.to_string())?;
    // A predecessor on this data directory may have exited a moment ago, its listening
    // sockets not yet torn down: its addresses are waited for (see `crate::net`).
    let predecessor = lock.previous_holder();
    let client_listener = bind_exclusive_after(config.listen, predecessor, RESTART_BIND_WAIT).map_err(|e| format!("client API: {e}"))?;
    let admin_listener =
        bind_exclusive_after(config.admin_listen, predecessor, RESTART_BIND_WAIT).map_err(|e| format!("admin API: {e}"))?;
    let mut metrics_listener = match config.metrics_listen {
        Some(addr) => Some(bind_exclusive_after(addr, predecessor, RESTART_BIND_WAIT).map_err(|e| format!("metrics listener: {e}"))?),
        None => None,
    };
    if let Some(own) = config.peers.get(&config.node_id) {
        for shard in 0..config.shards {
            if let Some(port) = shard_port(own.port(), shard) {
                let address = std::net::SocketAddr::new(own.ip(), port);
                wait_until_bindable(address, predecessor, RESTART_BIND_WAIT)
                    .map_err(|e| format!("cannot listen for peers on {address} (shard {shard}): {e}"))?;
            }
        }
    }

    let edge_tls = match &config.edge_tls {
        Some(files) => Some(edge_tls::EdgeTls::start(files)?),
        None => None,
    };
    let peer_tls = load_peer_tls(&config)?;

    let (stop, mut shard_stops) = stop::NodeStop::install(config.shards as usize)?;

    // One shard per core, pinned, when there are enough cores; unpinned otherwise.
    let cpus: Vec<usize> = CpuSet::online().map(|set| set.into_iter().map(|c| c.cpu).collect()).unwrap_or_default();
    let pin = cpus.len() >= config.shards as usize;
    let placement_of = |index: usize| if pin { Placement::Fixed(cpus[index]) } else { Placement::Unbound };
    let mesh = MeshBuilder::full(config.shards as usize, MESH_CHANNEL_CAPACITY);
    println!(
        "conclave: node {} starting {} shard(s), {} partition(s), data in {}",
        config.node_id,
        config.shards,
        config.partitions,
        config.data_dir.display()
    );
    match &config.edge_tls {
        Some(files) => {
            println!("conclave: clients on {}, admin on {} ({})", config.listen, config.admin_listen, edge_tls::EdgeTls::describe(files))
        }
        None => println!("conclave: clients on {}, admin on {}", config.listen, config.admin_listen),
    }
    if let Some(metrics) = config.metrics_listen {
        println!("conclave: metrics and probes on http://{metrics}/metrics, /livez, /readyz");
    }
    let mut listeners = Some((client_listener, admin_listener));
    let mut handles = Vec::new();
    for (index, stopped) in shard_stops.drain(..).enumerate() {
        let placement = placement_of(index);
        let ctx = shard::ShardContext {
            config: config.clone(),
            mesh: mesh.clone(),
            listeners: if index == 0 { listeners.take() } else { None },
            metrics_listener: if index == 0 { metrics_listener.take() } else { None },
            edge_tls: edge_tls.clone(),
            peer_tls: peer_tls.clone(),
            stop: std::sync::Arc::clone(&stop),
            stopped,
        };
        let handle = LocalExecutorBuilder::new(placement)
            .name(&format!("conclave-shard-{index}"))
            .io_memory(config.io_memory_bytes)
            .spin_before_park(config.spin_before_park)
            .spawn(move || shard::run(ctx))
            .map_err(|e| format!("cannot start shard {index}: {e}"))?;
        handles.push(handle);
    }
    let mut failure = None;
    for (index, handle) in handles.into_iter().enumerate() {
        match handle.join() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                failure.get_or_insert(format!("shard {index}: {e}"));
            }
            Err(e) => {
                failure.get_or_insert(format!("shard {index} stopped abnormally: {e}"));
            }
        }
    }
    drop(lock);
    match failure {
        Some(e) => Err(e),
        None => {
            println!("conclave: node {} stopped", config.node_id);
            Ok(())
        }
    }
}
