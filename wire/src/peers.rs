//! The outbound connections of one shard: one [`Peer`] per remote node, keyed by node id.
//!
//! A convenience over [`Peer`] for the server: it keeps the set in step with the cluster
//! membership (add, re-address, remove) and looks peers up by node id in a `BTreeMap`, so
//! iteration order is deterministic.

use std::collections::BTreeMap;

use prost::Message;

use crate::event::EventSink;
use crate::peer::{Peer, PeerConfig};

/// Builds the configuration of the peer for `(node_id, address)`.
pub type MakePeerConfig = Box<dyn Fn(u64, &str) -> PeerConfig>;

/// Every outbound connection of one shard.
pub struct PeerSet<M> {
    events: EventSink,
    make_config: MakePeerConfig,
    peers: BTreeMap<u64, (String, Peer<M>)>,
}

impl<M: Message + 'static> PeerSet<M> {
    /// An empty set. `make_config(node_id, address)` builds the configuration of each new
    /// peer (typically `PeerConfig::new(local.clone(), node_id, address)` plus overrides);
    /// every peer reports its events to `events`.
    pub fn new(events: EventSink, make_config: impl Fn(u64, &str) -> PeerConfig + 'static) -> PeerSet<M> {
        PeerSet { events, make_config: Box::new(make_config), peers: BTreeMap::new() }
    }

    /// Makes sure a connection to `node_id` at `address` exists. A new address replaces the
    /// old connection (dropping what it had queued); the same address keeps it.
    pub fn set_address(&mut self, node_id: u64, address: &str) {
        if let Some((current, _)) = self.peers.get(&node_id) {
            if current == address {
                return;
            }
        }
        let config = (self.make_config)(node_id, address);
        assert_eq!(config.remote_node_id, node_id, "make_config built a peer for another node");
        let peer = Peer::spawn(config, self.events.clone());
        self.peers.insert(node_id, (address.to_string(), peer));
    }

    /// Closes the connection to `node_id`, dropping what it had queued.
    pub fn remove(&mut self, node_id: u64) -> bool {
        self.peers.remove(&node_id).is_some()
    }

    /// The connection to `node_id`, if there is one.
    pub fn get(&self, node_id: u64) -> Option<&Peer<M>> {
        self.peers.get(&node_id).map(|(_, peer)| peer)
    }

    /// Node ids with a connection, ascending.
    pub fn node_ids(&self) -> impl Iterator<Item = u64> + '_ {
        self.peers.keys().copied()
    }
}
