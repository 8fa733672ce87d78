//! Conclave's node-to-node wire: batched, zero-copy protobuf frames over TCP.
//!
//! Owns the frame codec (header, checksum, many length-delimited messages per frame) and the
//! peer transport (one connection per local shard and remote node, handshake, coalescing
//! writer, reconnect with backoff). It knows nothing about Raft or gRPC: every type is
//! generic over the message `M: prost::Message + Default` the server chooses as its peer
//! envelope.
//!
//! - [`codec`]: [`FrameBuilder`] / [`encode_frame`] to encode, [`FrameDecoder`] and [`Frame`]
//!   to decode; messages decoded from a [`Frame`] slice its body for their `bytes` fields.
//! - [`Peer`]: the outbound connection of one shard to one node; queue with
//!   [`PeerSender::send`] (ordinary lane) or [`PeerSender::send_bulk`] (snapshot lane).
//! - [`PeerSet`]: every outbound [`Peer`] of a shard, keyed by node id.
//! - [`PeerListener`]: the inbound side; delivers [`Inbound`] batches to a glommio channel.
//! - [`ConnectionEvent`]: established / failed, for the Node API's Watch.
//! - [`tls`]: TLS material loaded from files and reloaded as they change (shared with the
//!   server's client and admin listeners); [`PeerTls`]: mutual TLS between peers.
//!
//! Wiring one shard (inside its glommio executor), with the server's own envelope type `M`:
//!
//! ```no_run
//! use std::rc::Rc;
//! use conclave_proto::conclave::raft::v1::MessageBatch as Envelope;
//! use conclave_wire::{Inbound, ListenerConfig, LocalIdentity, PeerConfig, PeerListener, PeerSet};
//!
//! # async fn shard() -> std::io::Result<()> {
//! let local = LocalIdentity { cluster_id: "prod".into(), node_id: 1, shard_id: 0, shard_count: 1 };
//! // Inbound: frames from every remote node's shard 0, decoded in place.
//! let listener = PeerListener::bind("10.0.0.1:7100".parse().unwrap(), ListenerConfig::new(local.clone()))?;
//! let (inbound_tx, inbound_rx) = glommio::channels::local_channel::new_bounded::<Inbound<Envelope>>(256);
//! let _serving = listener.spawn(inbound_tx);
//! // Outbound: one connection per remote node; events feed the Node API's Watch.
//! let events = Rc::new(|event: conclave_wire::ConnectionEvent| println!("{event:?}"));
//! let mut peers = PeerSet::<Envelope>::new(events, move |node_id, address| PeerConfig::new(local.clone(), node_id, address));
//! peers.set_address(2, "10.0.0.2:7100");
//! if let Some(peer) = peers.get(2) {
//!     let _ = peer.try_send(Envelope { from: 1, to: 2, messages: Vec::new() });
//! }
//! while let Some(batch) = inbound_rx.recv().await {
//!     for envelope in batch.messages { let _ = (batch.from.node_id, envelope); }
//! }
//! # Ok(())
//! # }
//! ```

pub mod backoff;
pub mod codec;
pub mod event;
pub mod frame;
pub mod handshake;
pub mod listener;
pub mod peer;
pub mod peer_tls;
pub mod peers;
pub mod queue;
pub mod tls;

pub use backoff::{Backoff, BackoffConfig};
pub use codec::{encode_frame, framed_len, Frame, FrameBuilder, FrameDecoder, Messages, PushError, ReadError};
pub use event::{ignore_events, ConnectionEvent, ConnectionEventKind, EventSink};
pub use frame::{FrameError, FrameFlags, FrameHeader, FrameLimits, FRAME_MAGIC, FRAME_VERSION, HEADER_LEN};
pub use handshake::{check_handshake, HandshakeError, LocalIdentity, RemotePeer};
pub use listener::{bind_exclusive, Inbound, ListenerConfig, ListenerHandle, PeerListener};
pub use peer::{Peer, PeerConfig, PeerSender, PeerStats};
pub use peer_tls::{ExpectedHost, ListenerTls, PeerTls, PEER_ALPN};
pub use peers::{MakePeerConfig, PeerSet};
pub use queue::{Lane, LaneLimits, SendError};
