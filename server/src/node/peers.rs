//! A shard's peer transport: its listener for the same shard of other nodes (the node's
//! peer port plus the shard index) and one outbound connection per other node, carrying
//! `conclave.peer.v1.PeerMessage`s. Inbound messages go to the shard runtime in arrival
//! order; snapshot chunks travel in the connection's bulk lane so heartbeats do not wait
//! behind them.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::rc::Rc;

use conclave_engine::raft::MessageType;
use conclave_engine::shard::{Request, ShardHandle};
use conclave_proto::conclave::peer::v1::{peer_message::Body, PeerMessage};
use conclave_wire::{
    EventSink, Inbound, Lane, ListenerConfig, ListenerHandle, ListenerTls, LocalIdentity, PeerConfig, PeerListener, PeerSet, PeerTls,
    SendError,
};

use crate::config::Config;
use crate::routing::shard_port;

use super::peer_rtt::RttProbe;

/// One shard's connections to the same shard of every other node.
pub struct PeerNet {
    shard: u32,
    peers: Rc<RefCell<PeerSet<PeerMessage>>>,
    /// Each other node's host: with peer TLS, its certificate must name it.
    hosts: Rc<RefCell<BTreeMap<u64, String>>>,
    _listener: ListenerHandle,
    /// Heartbeat round trips to each peer (metrics).
    pub rtt: Rc<RttProbe>,
}

impl PeerNet {
    /// Binds this shard's peer port, starts delivering inbound messages to `runtime`, and
    /// dials every other node of `--peers`, over mutual TLS when `tls` is given. Connection
    /// events go to `events`.
    pub fn start(
        config: &Config,
        tls: Option<&PeerTls>,
        shard: u32,
        runtime: ShardHandle,
        events: EventSink,
    ) -> Result<Rc<PeerNet>, String> {
        let me = config.node_id;
        let local =
            LocalIdentity { cluster_id: config.cluster_id.clone(), node_id: u64::from(me), shard_id: shard, shard_count: config.shards };
        let own = config.peers[&me];
        let port =
            shard_port(own.port(), shard).ok_or_else(|| format!("shard {shard}: the peer port {} + {shard} is past 65535", own.port()))?;
        let address = SocketAddr::new(own.ip(), port);
        let hosts = Rc::new(RefCell::new(BTreeMap::new()));
        let known_hosts = Rc::clone(&hosts);
        let listener_config = ListenerConfig {
            tls: tls.map(|tls| ListenerTls {
                config: tls.acceptor.clone(),
                expected_host: Rc::new(move |node| known_hosts.borrow().get(&node).cloned()),
            }),
            ..ListenerConfig::new(local.clone())
        };
        let listener = PeerListener::bind(address, listener_config)
            .map_err(|e| format!("cannot listen for peers on {address} (shard {shard}): {e}"))?;
        let dialer_tls = tls.map(|tls| tls.dialer.clone());
        // Raft retransmits and forwarded requests fail on a broken connection, so nothing
        // queued for a node that is down is worth delivering late.
        let peers = PeerSet::new(events, move |node, address| PeerConfig {
            discard_while_down: true,
            tls: dialer_tls.clone(),
            ..PeerConfig::new(local.clone(), node, address)
        });
        let peers = Rc::new(RefCell::new(peers));
        let heard_from = Rc::downgrade(&peers);
        let rtt = Rc::new(RttProbe::default());
        let rtt_of_frames = Rc::clone(&rtt);
        // Each connection's reader queues its frames on the runtime's own request queue.
        let listener = listener.spawn_into(runtime.sender(), move |frame: Inbound<PeerMessage>| {
            let from = frame.from.node_id;
            // A node heard from is up: a connection to it waiting out its backoff (it was
            // down, perhaps for long) dials now rather than up to seconds later.
            if let Some(peers) = heard_from.upgrade() {
                if let Some(peer) = peers.borrow().get(from) {
                    peer.redial_now();
                }
            }
            frame.messages.iter().for_each(|message| rtt_of_frames.on_receive(from, message));
            Request::PeerFrame { from, messages: frame.messages }
        });
        let net = Rc::new(PeerNet { shard, peers, hosts, _listener: listener, rtt });
        for (&id, addr) in &config.peers {
            if id != me {
                net.set_address(u64::from(id), &addr.ip().to_string(), addr.port())?;
            }
        }
        Ok(net)
    }

    /// Makes sure node `node`, whose peer address is `host:base_port`, is dialed (at its
    /// port for this shard).
    pub fn set_address(&self, node: u64, host: &str, base_port: u16) -> Result<(), String> {
        let port = shard_port(base_port, self.shard)
            .ok_or_else(|| format!("node {node}: peer port {base_port} + shard {} is past 65535", self.shard))?;
        let address = if host.contains(':') { format!("[{host}]:{port}") } else { format!("{host}:{port}") };
        self.hosts.borrow_mut().insert(node, host.to_string());
        self.peers.borrow_mut().set_address(node, &address);
        Ok(())
    }

    /// Queues `message` for node `to`; never waits. A full queue or an unknown node drops
    /// it: Raft retransmits, and forwarded requests time out. Snapshot chunks of a Raft
    /// batch leave in the bulk lane, the rest in the ordinary one.
    pub fn send(&self, to: u64, message: PeerMessage) {
        let peers = self.peers.borrow();
        let Some(peer) = peers.get(to) else {
            tracing::debug!(to, "no connection to node; dropping a peer message");
            return;
        };
        self.rtt.on_send(to, &message);
        let (ordinary, bulk) = split_snapshots(message);
        for (lane, message) in [(Lane::Ordinary, ordinary), (Lane::Bulk, bulk)] {
            let Some(message) = message else { continue };
            match peer.try_send_in(lane, message) {
                Ok(()) => {}
                Err(SendError::Full(_)) => tracing::debug!(to, ?lane, "peer queue full; dropped a message"),
                Err(SendError::TooLarge(_, e)) => tracing::warn!(to, error = %e, "a peer message does not fit a frame"),
                Err(SendError::Closed(_) | SendError::Disconnected(_)) => {
                    tracing::trace!(to, "peer connection down; dropped a message")
                }
            }
        }
    }
}

/// Every peer's counters on this shard: (node, counters).
impl PeerNet {
    pub fn stats(&self) -> Vec<(u64, conclave_wire::PeerStats)> {
        let peers = self.peers.borrow();
        peers.node_ids().filter_map(|node| peers.get(node).map(|peer| (node, peer.sender().stats()))).collect()
    }
}

/// Splits the snapshot chunks out of a Raft batch: (everything else, the chunks).
fn split_snapshots(message: PeerMessage) -> (Option<PeerMessage>, Option<PeerMessage>) {
    let Some(Body::Raft(mut batch)) = message.body else {
        return (Some(message), None);
    };
    let is_chunk = |m: &conclave_engine::raft::Message| m.msg_type == MessageType::Snapshot as i32;
    if !batch.messages.iter().any(is_chunk) {
        return (Some(PeerMessage { body: Some(Body::Raft(batch)) }), None);
    }
    let (chunks, rest): (Vec<_>, Vec<_>) = batch.messages.drain(..).partition(is_chunk);
    let wrap = |messages: Vec<conclave_engine::raft::Message>| {
        (!messages.is_empty()).then(|| PeerMessage {
            body: Some(Body::Raft(conclave_engine::raft::MessageBatch { from: batch.from, to: batch.to, messages })),
        })
    };
    (wrap(rest), wrap(chunks))
}
