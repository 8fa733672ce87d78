//! The connection handshake: who may talk to whom.
//!
//! The dialer sends one `conclave.wire.v1.Handshake` in a frame flagged HANDSHAKE; the
//! acceptor checks cluster id, framing version, shard id and that it is the node the dialer
//! meant to reach, and answers with one `HandshakeReply`. A refusal is logged on both sides
//! with the reason and the connection is closed.

use std::net::SocketAddr;

use bytes::BytesMut;
use conclave_proto::conclave::wire::v1::{Handshake, HandshakeReply};
use futures_lite::{AsyncRead, AsyncWrite, AsyncWriteExt};
use prost::Message;

use crate::codec::{encode_frame, FrameDecoder, ReadError};
use crate::frame::{FrameFlags, FrameLimits, FRAME_VERSION};

/// Handshake frames are tiny; this bounds what a stranger can make us buffer before it is
/// known to be a peer.
pub(crate) const HANDSHAKE_LIMITS: FrameLimits = FrameLimits { max_body_len: 4096, max_messages: 1 };

/// This shard's identity on the wire.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LocalIdentity {
    /// The cluster this node belongs to; connections across clusters are refused.
    pub cluster_id: String,
    /// This node's id.
    pub node_id: u64,
    /// This shard's id; a shard only talks to the shard with the same id on other nodes.
    pub shard_id: u32,
    /// How many shards this node runs; a peer running another number is refused (each node
    /// finds a partition's shard from it). 0 checks nothing.
    pub shard_count: u32,
}

/// The far end of an accepted connection, as it introduced itself.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RemotePeer {
    /// The dialing node.
    pub node_id: u64,
    /// The dialing shard.
    pub shard_id: u32,
    /// True when the dialer dedicated this connection to snapshots.
    pub snapshot: bool,
    /// The dialer's socket address.
    pub address: SocketAddr,
}

/// Why a handshake did not complete.
#[derive(Debug)]
pub enum HandshakeError {
    /// Reading or writing failed, or the bytes were not a valid frame.
    Read(ReadError),
    /// The other side closed the connection before the handshake completed.
    Closed,
    /// The first frame was not a well-formed handshake.
    Malformed(String),
    /// This side refused the other side's handshake (reason also sent to it).
    Refused(String),
    /// The other side refused our handshake.
    RefusedByPeer(String),
    /// The other side did not complete the handshake in time.
    TimedOut,
    /// The TLS handshake failed, or the peer's certificate was refused; says which problem.
    Tls(String),
}

impl From<std::io::Error> for HandshakeError {
    fn from(e: std::io::Error) -> Self {
        HandshakeError::Read(ReadError::Io(e))
    }
}

impl From<ReadError> for HandshakeError {
    fn from(e: ReadError) -> Self {
        HandshakeError::Read(e)
    }
}

impl std::fmt::Display for HandshakeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            HandshakeError::Read(e) => write!(f, "handshake failed: {e}"),
            HandshakeError::Closed => write!(f, "connection closed during the handshake"),
            HandshakeError::Malformed(why) => write!(f, "malformed handshake: {why}"),
            HandshakeError::Refused(why) => write!(f, "handshake refused: {why}"),
            HandshakeError::RefusedByPeer(why) => write!(f, "peer refused the handshake: {why}"),
            HandshakeError::TimedOut => write!(f, "handshake timed out"),
            HandshakeError::Tls(why) => write!(f, "TLS: {why}"),
        }
    }
}

impl std::error::Error for HandshakeError {}

/// Whether `local` accepts a connection introduced by `hello`; the error is the reason.
pub fn check_handshake(local: &LocalIdentity, hello: &Handshake) -> Result<(), String> {
    if hello.protocol_version != u32::from(FRAME_VERSION) {
        return Err(format!("node {} speaks wire protocol {}, this node speaks {FRAME_VERSION}", hello.node_id, hello.protocol_version));
    }
    if hello.cluster_id != local.cluster_id {
        return Err(format!(
            "node {} belongs to cluster {:?}, this node to cluster {:?}",
            hello.node_id, hello.cluster_id, local.cluster_id
        ));
    }
    if hello.expected_node_id != local.node_id {
        return Err(format!("node {} meant to reach node {}, but this is node {}", hello.node_id, hello.expected_node_id, local.node_id));
    }
    if hello.node_id == local.node_id {
        return Err(format!("node {} dialed itself", hello.node_id));
    }
    if hello.shard_count != 0 && local.shard_count != 0 && hello.shard_count != local.shard_count {
        return Err(format!(
            "node {} runs --shards {}, this node --shards {}: every node of a cluster must run the same number",
            hello.node_id, hello.shard_count, local.shard_count
        ));
    }
    if hello.shard_id != local.shard_id {
        return Err(format!(
            "shard {} of node {} reached shard {}, shards only talk to the same shard id",
            hello.shard_id, hello.node_id, local.shard_id
        ));
    }
    Ok(())
}

async fn write_message<S: AsyncWrite + Unpin, M: Message>(stream: &mut S, message: &M) -> std::io::Result<()> {
    let mut buffer = BytesMut::new();
    encode_frame(&mut buffer, FrameFlags::HANDSHAKE, HANDSHAKE_LIMITS, [message]).map_err(|e| {
        // Only a cluster id of kilobytes gets here: a configuration error, reported as such.
        std::io::Error::new(std::io::ErrorKind::InvalidInput, format!("handshake too large (is the cluster id sane?): {e}"))
    })?;
    stream.write_all(&buffer).await?;
    // A TLS stream may hold the record back until flushed (a no-op on a plain socket).
    stream.flush().await
}

async fn read_message<S: AsyncRead + Unpin, M: Message + Default>(stream: &mut S) -> Result<M, HandshakeError> {
    let mut decoder = FrameDecoder::new(HANDSHAKE_LIMITS);
    let frame = decoder.read_frame(stream).await?.ok_or(HandshakeError::Closed)?;
    if !frame.flags.contains(FrameFlags::HANDSHAKE) || frame.count != 1 {
        return Err(HandshakeError::Malformed(format!(
            "expected one handshake message, got a frame with flags {:#04x} and {} messages",
            frame.flags.bits(),
            frame.count
        )));
    }
    if decoder.buffered() != 0 {
        return Err(HandshakeError::Malformed("data sent before the handshake completed".into()));
    }
    let mut messages = frame.messages::<M>();
    match messages.next() {
        Some(Ok(message)) => Ok(message),
        Some(Err(e)) => Err(HandshakeError::Malformed(e.to_string())),
        None => Err(HandshakeError::Malformed("empty handshake frame".into())),
    }
}

/// The dialer's half: introduce `local`, expect `expected_node_id` to accept.
pub(crate) async fn dial<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    local: &LocalIdentity,
    expected_node_id: u64,
    snapshot: bool,
) -> Result<(), HandshakeError> {
    let hello = Handshake {
        protocol_version: u32::from(FRAME_VERSION),
        cluster_id: local.cluster_id.clone(),
        node_id: local.node_id,
        shard_id: local.shard_id,
        expected_node_id,
        snapshot,
        shard_count: local.shard_count,
    };
    write_message(stream, &hello).await?;
    let reply: HandshakeReply = read_message(stream).await?;
    if !reply.accepted {
        return Err(HandshakeError::RefusedByPeer(reply.reason));
    }
    if reply.cluster_id != local.cluster_id || reply.node_id != expected_node_id || reply.shard_id != local.shard_id {
        return Err(HandshakeError::Malformed(format!(
            "accepted by node {} shard {} of cluster {:?}, expected node {expected_node_id} shard {} of {:?}",
            reply.node_id, reply.shard_id, reply.cluster_id, local.shard_id, local.cluster_id
        )));
    }
    Ok(())
}

/// The acceptor's half: read the dialer's handshake, answer it, and return who it is.
/// `verify` adds a check of the claimed identity (over TLS: that the certificate names it).
pub(crate) async fn accept<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    local: &LocalIdentity,
    address: SocketAddr,
    verify: &dyn Fn(&Handshake) -> Result<(), String>,
) -> Result<RemotePeer, HandshakeError> {
    let hello: Handshake = read_message(stream).await?;
    let verdict = check_handshake(local, &hello).and_then(|()| verify(&hello));
    let reply = HandshakeReply {
        accepted: verdict.is_ok(),
        reason: verdict.as_ref().err().cloned().unwrap_or_default(),
        cluster_id: local.cluster_id.clone(),
        node_id: local.node_id,
        shard_id: local.shard_id,
    };
    write_message(stream, &reply).await?;
    verdict.map_err(HandshakeError::Refused)?;
    Ok(RemotePeer { node_id: hello.node_id, shard_id: hello.shard_id, snapshot: hello.snapshot, address })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn local() -> LocalIdentity {
        LocalIdentity { cluster_id: "prod".into(), node_id: 2, shard_id: 3, shard_count: 4 }
    }

    fn hello() -> Handshake {
        Handshake {
            protocol_version: u32::from(FRAME_VERSION),
            cluster_id: "prod".into(),
            node_id: 1,
            shard_id: 3,
            expected_node_id: 2,
            snapshot: false,
            shard_count: 4,
        }
    }

    #[test]
    fn accepts_a_matching_peer() {
        assert_eq!(check_handshake(&local(), &hello()), Ok(()));
    }

    #[test]
    fn a_shard_count_of_zero_is_not_checked() {
        // 0: a build that did not send it, or a side that checks nothing.
        assert_eq!(check_handshake(&local(), &Handshake { shard_count: 0, ..hello() }), Ok(()));
        let unchecked = LocalIdentity { shard_count: 0, ..local() };
        assert_eq!(check_handshake(&unchecked, &Handshake { shard_count: 7, ..hello() }), Ok(()));
    }

    #[test]
    fn refuses_each_mismatch_with_a_reason() {
        let cases = [
            (Handshake { cluster_id: "staging".into(), ..hello() }, "cluster"),
            (Handshake { protocol_version: 9, ..hello() }, "protocol"),
            (Handshake { expected_node_id: 5, ..hello() }, "meant to reach node 5"),
            (Handshake { node_id: 2, ..hello() }, "dialed itself"),
            (Handshake { shard_id: 4, ..hello() }, "same shard id"),
            (Handshake { shard_count: 2, ..hello() }, "runs --shards 2, this node --shards 4"),
        ];
        for (hello, needle) in cases {
            let reason = check_handshake(&local(), &hello).expect_err("mismatch accepted");
            assert!(reason.contains(needle), "reason {reason:?} lacks {needle:?}");
        }
    }
}
