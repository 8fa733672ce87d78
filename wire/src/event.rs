//! Connection events reported by the transport, shaped after the Node API's
//! `ConnectionEstablishedEvent` / `ConnectionFailedEvent` (`ConnectionInfo { address, snapshot }`).

use std::rc::Rc;

/// What happened to an outbound connection.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ConnectionEventKind {
    /// The connection is up and its handshake was accepted.
    Established,
    /// A connection attempt failed, or an established connection broke.
    Failed {
        /// Why, in words a person can act on.
        reason: String,
    },
}

/// One connection event of a peer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConnectionEvent {
    /// Established or failed.
    pub kind: ConnectionEventKind,
    /// The address dialed (`ConnectionInfo.address`).
    pub address: String,
    /// True for a connection dedicated to snapshots (`ConnectionInfo.snapshot`).
    pub snapshot: bool,
    /// The node id the connection leads to.
    pub remote_node_id: u64,
    /// The local shard that owns the connection.
    pub local_shard_id: u32,
}

/// Receives connection events; called on the shard's thread, it must not block.
pub type EventSink = Rc<dyn Fn(ConnectionEvent)>;

/// An event sink that drops every event.
pub fn ignore_events() -> EventSink {
    Rc::new(|_| {})
}
