//! Round-trip times to peers, measured on Raft heartbeats: when a batch carrying a
//! heartbeat leaves for a node and no probe to it is outstanding, the heartbeat's group
//! and the time are noted; the first heartbeat response of that group from that node
//! closes the probe. One probe per peer at a time, so the cost is two lookups per batch.
//! The time includes the peer's turn of its shard loop, as etcd's prober does its handler.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use conclave_engine::raft::MessageType;
use conclave_engine::shard::DurationHistogram;
use conclave_proto::conclave::peer::v1::{peer_message::Body, PeerMessage};

/// A probe unanswered for this long is dropped (the heartbeat or its answer was lost).
const PROBE_EXPIRY: Duration = Duration::from_secs(5);

#[derive(Debug, Default)]
struct PeerProbe {
    /// The group and the send time of the heartbeat in flight.
    outstanding: Option<(u32, Instant)>,
    rtt: DurationHistogram,
}

/// The round-trip times of one shard's peers.
#[derive(Debug, Default)]
pub struct RttProbe {
    peers: RefCell<BTreeMap<u64, PeerProbe>>,
}

fn heartbeat_group(message: &PeerMessage, kind: MessageType) -> Option<u32> {
    let Some(Body::Raft(batch)) = &message.body else { return None };
    batch.messages.iter().find(|m| m.msg_type == kind as i32).map(|m| m.group_id)
}

impl RttProbe {
    /// `message` leaves for node `to`.
    pub fn on_send(&self, to: u64, message: &PeerMessage) {
        let mut peers = self.peers.borrow_mut();
        let probe = peers.entry(to).or_default();
        if probe.outstanding.is_some_and(|(_, at)| at.elapsed() < PROBE_EXPIRY) {
            return;
        }
        probe.outstanding = heartbeat_group(message, MessageType::Heartbeat).map(|group| (group, Instant::now()));
    }

    /// `message` arrived from node `from`.
    pub fn on_receive(&self, from: u64, message: &PeerMessage) {
        let mut peers = self.peers.borrow_mut();
        let Some(probe) = peers.get_mut(&from) else { return };
        let Some((group, at)) = probe.outstanding else { return };
        if heartbeat_group(message, MessageType::HeartbeatResponse) == Some(group) {
            probe.rtt.observe(at.elapsed());
            probe.outstanding = None;
        }
    }

    /// The round-trip histogram of every peer probed so far.
    pub fn snapshot(&self) -> Vec<(u64, DurationHistogram)> {
        self.peers.borrow().iter().map(|(node, probe)| (*node, probe.rtt.clone())).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use conclave_engine::raft::{Message, MessageBatch};

    fn batch(kind: MessageType, group: u32) -> PeerMessage {
        let message = Message { group_id: group, msg_type: kind as i32, ..Message::default() };
        PeerMessage { body: Some(Body::Raft(MessageBatch { from: 1, to: 2, messages: vec![message] })) }
    }

    #[test]
    fn a_heartbeat_and_its_response_make_one_sample() {
        let probe = RttProbe::default();
        probe.on_receive(2, &batch(MessageType::HeartbeatResponse, 7));
        probe.on_send(2, &batch(MessageType::Append, 7));
        probe.on_send(2, &batch(MessageType::Heartbeat, 7));
        probe.on_send(2, &batch(MessageType::Heartbeat, 8));
        probe.on_receive(2, &batch(MessageType::HeartbeatResponse, 8));
        assert_eq!(probe.snapshot()[0].1.count, 0, "the probe waits for group 7's response");
        probe.on_receive(2, &batch(MessageType::HeartbeatResponse, 7));
        probe.on_receive(2, &batch(MessageType::HeartbeatResponse, 7));
        let samples = probe.snapshot();
        assert_eq!((samples.len(), samples[0].0, samples[0].1.count), (1, 2, 1), "one sample, of node 2");
    }
}
