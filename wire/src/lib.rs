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

pub mod backoff;
pub mod codec;
pub mod event;
pub mod frame;
pub mod handshake;
pub mod listener;
pub mod peer;
pub mod peers;
pub mod queue;

pub use backoff::{Backoff, BackoffConfig};
pub use codec::{encode_frame, framed_len, Frame, FrameBuilder, FrameDecoder, Messages, PushError, ReadError};
pub use event::{ignore_events, ConnectionEvent, ConnectionEventKind, EventSink};
pub use frame::{FrameError, FrameFlags, FrameHeader, FrameLimits, FRAME_MAGIC, FRAME_VERSION, HEADER_LEN};
pub use handshake::{check_handshake, HandshakeError, LocalIdentity, RemotePeer};
pub use listener::{bind_exclusive, Inbound, ListenerConfig, ListenerHandle, PeerListener};
pub use peer::{Peer, PeerConfig, PeerSender, PeerStats};
pub use peers::{MakePeerConfig, PeerSet};
pub use queue::{Lane, LaneLimits, SendError};
